"""The tasks ``alphacut worker`` runs: jobs, webhook deliveries, and the beat's periodic passes.

Each worker process builds one ``WorkerRuntime`` (store, storage, engine, in-process pool) the
first time it needs it, after the fork, and keeps it: models load once per process. A job runs
through ``WorkerPool.process``, the embedded mode's own code.

Tasks are idempotent by job id: a task first claims its job in the store (``claim_id``), so a
job that is done, or running under another live worker, is not run again; a re-run writes the
output under the name the API node chose when it created the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery.signals import setup_logging, task_received, worker_ready, worker_shutdown
from redis import Redis

from alphacut.config import Settings, load_settings
from alphacut.engine import Engine
from alphacut.errors import StorageUnavailable
from alphacut.health import clear_dead_heartbeats, heartbeat_path
from alphacut.io.s3_mask_cache import storage_mask_cache
from alphacut.io.sources import fetch_policy
from alphacut.io.storage import open_storage
from alphacut.jobs.celery_app import (
    CLEANUP,
    DELIVER_DUE_WEBHOOKS,
    DELIVER_WEBHOOK,
    JOB_HARD_TIME_LIMIT,
    JOB_SOFT_TIME_LIMIT,
    REQUEUE,
    RUN_JOB,
    configure_worker_logging,
    connect_broker,
    create_celery,
    done_channel,
    record_receiver,
    requeue_pass,
)
from alphacut.jobs.cleanup import delete_expired
from alphacut.jobs.database import database_unreachable
from alphacut.jobs.results import OutputLink, output_link, webhook_payload
from alphacut.jobs.store import Job, SQLJobStore
from alphacut.jobs.webhooks import WebhookSender, load_or_create_secret
from alphacut.jobs.worker import (
    DATABASE_RETRY_SECONDS,
    LEASE_SECONDS,
    WorkerPool,
    storage_retry_delay,
)
from alphacut.jobs.worker_models import WorkerHeartbeat, missing_on_worker

log = logging.getLogger(__name__)

# A job whose worker died this many times (e.g. the OOM killer, every time) fails instead of
# taking down worker after worker.
MAX_JOB_ATTEMPTS = 3

# The worker's settings, from the ALPHACUT_* environment (read once, before the pool forks).
_settings: Settings | None = None


def worker_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


@dataclass
class WorkerRuntime:
    settings: Settings
    store: SQLJobStore
    pool: WorkerPool
    webhooks: WebhookSender
    broker: Redis
    channel: str
    # The links the API nodes hand out (/outputs/ on them, or presigned), for webhooks.
    link: OutputLink

    @classmethod
    def create(cls, settings: Settings) -> WorkerRuntime:
        store = SQLJobStore(settings.database_url)
        storage = open_storage(settings)  # local folders, or the cluster's S3 bucket
        # One job at a time per process (Celery's concurrency is the process count), so the
        # in-process pool is only used for its "run one job" code.
        # The mask cache follows the storage: with S3, one cache in the bucket for the cluster.
        engine = Engine(settings, warm_up=False, mask_cache=storage_mask_cache(settings, storage))
        pool = WorkerPool(settings, store, engine, storage)
        webhooks = WebhookSender(
            store,
            load_or_create_secret(settings.webhook_secret, settings.home),
            fetch_policy(settings),
            settings.webhook_attempts,
            settings.webhook_backoff,
            parallel=1,
        )
        broker = connect_broker(settings)
        link = output_link(settings, storage)
        return cls(settings, store, pool, webhooks, broker, done_channel(settings), link)


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> WorkerRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = WorkerRuntime.create(worker_settings())
        return _runtime


celery_app = create_celery(worker_settings())

# The queue this `alphacut worker` takes images from (set by the CLI before Celery starts),
# and the announcement of its models on the broker (docs/scaling.md).
_serving_queue: str | None = None
_heartbeat: WorkerHeartbeat | None = None


def serve_queue(queue: str) -> None:
    global _serving_queue
    _serving_queue = queue


def serving_queue() -> str:
    return _serving_queue or worker_settings().worker_queue


@setup_logging.connect  # type: ignore[untyped-decorator]
def _setup_logging(loglevel: int | None = None, **_: Any) -> None:
    """Celery's logging set-up: a receiver replaces it, root-logger hijack and text format
    included, with the JSON lines of ``alphacut serve`` (``--loglevel`` sets the level)."""
    configure_worker_logging(loglevel or logging.INFO)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before it reports ready: announce its models."""
    global _heartbeat
    settings = worker_settings()
    name = getattr(sender, "hostname", None) or f"alphacut-{os.getpid()}@{socket.gethostname()}"
    # The heartbeat file of the container's health check (alphacut.health), beside those
    # left by this host's workers that died, which go.
    clear_dead_heartbeats(settings.home)
    _heartbeat = WorkerHeartbeat(
        connect_broker(settings),
        settings.broker_prefix,
        name,
        serving_queue(),
        settings.model_dir,
        health_file=heartbeat_path(settings.home),
    )
    _heartbeat.start()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


_receipts: Redis | None = None  # the main process's broker client for receiver records


@task_received.connect  # type: ignore[untyped-decorator]
def _record_receipt(request: Any = None, **_: Any) -> None:
    """In the worker's main process, as it takes a job's message (before a pool process runs
    it): record this node as the job's receiver, so that the beat re-sends the job if this
    worker dies first (requeue_unsent)."""
    global _receipts
    if request is None or request.name != RUN_JOB or not request.args:
        return
    settings = worker_settings()
    try:
        if _receipts is None:
            _receipts = connect_broker(settings)
        record_receiver(_receipts, settings.broker_prefix, int(request.args[0]), request.hostname)
    except Exception:  # the job still runs; only a death before it starts would wait longer
        log.warning("could not record the receipt of job %s", request.args[0], exc_info=True)


def _announce_done(rt: WorkerRuntime, job_id: int) -> None:
    """Tell the API nodes (their waiting requests) that the job ended."""
    try:
        rt.broker.publish(rt.channel, str(job_id))
    except Exception:  # the waiters fall back to reading the store: log, never fail the job
        log.warning("could not announce the end of job %s", job_id, exc_info=True)


def _renew_until(rt: WorkerRuntime, job_id: int, stop: threading.Event) -> None:
    while not stop.wait(LEASE_SECONDS / 4):
        try:
            rt.store.renew(job_id, rt.pool.identity, LEASE_SECONDS)
        except Exception:
            log.warning("lease renewal of job %s failed", job_id, exc_info=True)


@celery_app.task(  # type: ignore[untyped-decorator]
    name=RUN_JOB,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    soft_time_limit=JOB_SOFT_TIME_LIMIT,
    time_limit=JOB_HARD_TIME_LIMIT,
)
def run_job(
    task: Any, job_id: int, storage_failures: int = 0, storage_failing_since: float = 0.0
) -> str:
    """Run one job; returns what happened (for the worker's log). The retries of a job whose
    storage was unavailable say how often and since when (Unix time) it was."""
    rt = runtime()
    try:
        return _run_job(task, rt, job_id, storage_failures, storage_failing_since)
    except Exception as exc:
        if not database_unreachable(exc):
            raise
        # The job stays in the store as it was (queued, or running under this process's
        # lease, which the retry's claim takes over): run it again once the database is back.
        log.warning(
            "job %s: the job database is unreachable; retrying in %s s",
            job_id,
            DATABASE_RETRY_SECONDS,
        )
        raise task.retry(countdown=DATABASE_RETRY_SECONDS, exc=exc) from exc


def _run_job(
    task: Any,
    rt: WorkerRuntime,
    job_id: int,
    storage_failures: int = 0,
    storage_failing_since: float = 0.0,
) -> str:
    job = rt.store.claim_id(job_id, rt.pool.identity, LEASE_SECONDS)
    if job is None:
        current = rt.store.get(job_id)
        if current is None or current.done:
            _announce_done(rt, job_id)  # harmless twice; wakes a waiter that missed it
            return "already done"
        # Another worker holds a live lease: look again once it could have run out (if that
        # worker died, its lease does; if not, the job is done by then and this ends).
        raise task.retry(countdown=LEASE_SECONDS)
    model = job.request.get("model") or rt.settings.model
    missing = missing_on_worker(model, rt.settings.model_dir, serving_queue())
    if job.attempts > MAX_JOB_ATTEMPTS:
        rt.store.fail(job_id, "the job stopped its worker process repeatedly; not retried", 500)
    elif missing is not None:
        # Failed, not retried: another worker of this queue could lack it too (API nodes
        # accept only models a live worker announces, but one may have gone since).
        log.warning("job %s: %s", job_id, missing)
        rt.store.fail(job_id, missing, 503)
    else:
        stop = threading.Event()
        renewer = threading.Thread(target=_renew_until, args=(rt, job_id, stop), daemon=True)
        renewer.start()
        try:
            # Raises only when the database or the storage is unavailable: other failures
            # are on the job.
            rt.pool.process(job)
        except StorageUnavailable as exc:
            stop.set()  # the lease is now the retry's (below)
            renewer.join()
            _retry_storage(task, rt, job, exc, storage_failures + 1, storage_failing_since)
        finally:
            stop.set()
    _announce_done(rt, job_id)
    rt.pool.discard_inputs(rt.store.get(job_id))
    if job.request.get("webhook"):
        celery_app.send_task(DELIVER_WEBHOOK, args=[job_id])
    return "ran"


def _retry_storage(
    task: Any,
    rt: WorkerRuntime,
    job: Job,
    exc: StorageUnavailable,
    failures: int,
    failing_since: float,
) -> None:
    """Retry a job whose storage is unavailable after a backoff (``storage_retry_delay``); once
    the retry time is spent, fail it (503).

    The job stays RUNNING under this process's lease until the retry is due, so no other
    worker takes it meanwhile; the retry may run in another pool process, which can claim it
    then. Should the beat re-send it once the lease is over (a late retry, a dead worker), the
    duplicate is harmless: claims are atomic, and a second claimer waits for the first."""
    now = time.time()
    failing_since = failing_since or now
    delay = storage_retry_delay(failures, failing_since, now)
    if delay is None:
        rt.pool.fail_storage_unavailable(job, exc)
        return
    # Its attempt given back: a fresh message (the beat's, after a worker loss) that claims
    # the job later must not count the storage's failures as deaths of workers.
    rt.store.hold_for_retry(job.id, rt.pool.identity, delay)
    log.warning("job %s: %s; retrying in %.0f s", job.id, exc.message, delay)
    retry = {"storage_failures": failures, "storage_failing_since": failing_since}
    raise task.retry(countdown=delay, exc=exc, kwargs=retry) from exc


@celery_app.task(name=DELIVER_WEBHOOK)  # type: ignore[untyped-decorator]
def deliver_webhook(job_id: int) -> None:
    """One delivery attempt of the job's webhook, if it is due and no one else is on it; a
    failed attempt schedules the next one on the sender's backoff."""
    rt = runtime()
    job = rt.store.take_webhook(job_id, time.time(), rt.webhooks.timeout + 30.0)
    if job is None:
        return
    rt.webhooks.attempt(job, webhook_payload(job, rt.link))
    after = rt.store.get(job_id)
    if after is not None and after.webhook_status == "pending" and after.webhook_next_at:
        countdown = max(0.0, after.webhook_next_at - time.time())
        celery_app.send_task(DELIVER_WEBHOOK, args=[job_id], countdown=countdown)


@celery_app.task(name=DELIVER_DUE_WEBHOOKS)  # type: ignore[untyped-decorator]
def deliver_due_webhooks() -> int:
    """Beat: send a delivery task for every due webhook (one whose task was lost, e.g. with a
    worker); a duplicate task finds the delivery taken and does nothing."""
    rt = runtime()
    due = rt.store.due_webhook_ids(time.time())
    for job_id in due:
        celery_app.send_task(DELIVER_WEBHOOK, args=[job_id])
    return len(due)


@celery_app.task(name=CLEANUP)  # type: ignore[untyped-decorator]
def cleanup_expired() -> int:
    """Beat: delete expired outputs with their jobs, once per cluster."""
    rt = runtime()
    removed = delete_expired(rt.store, rt.pool.storage)
    return removed + rt.pool.storage.cleanup_expired(time.time())


@celery_app.task(name=REQUEUE)  # type: ignore[untyped-decorator]
def requeue_unsent() -> int:
    """Beat: send again, each to its own queue, the jobs that a worker could claim and that
    no live worker will run: no message for their current attempt (the broker lost it, an
    API node died before sending it, their worker died and the lease ran out), or one held by
    a worker that died (celery_app.resend_lost). Queued jobs younger than
    SEND_GRACE_SECONDS are left to their API node."""
    rt = runtime()
    sent = requeue_pass(celery_app, rt.broker, rt.store, rt.settings)
    if sent:
        log.info("requeued %d job(s) that no live worker held", sent)
    return sent
