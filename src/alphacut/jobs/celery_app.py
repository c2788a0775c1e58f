"""The Celery application of the distributed mode (``ALPHACUT_BROKER_URL=redis://...``).

API nodes only send tasks by name (they never import the task code or load a model); the
``alphacut worker`` processes import ``alphacut.jobs.celery_tasks``, which registers them.

Reliability settings (Celery's "Using Redis" and task-acknowledgement docs):

- ``task_acks_late``: a job's message is acknowledged after the task ran, not when a worker
  took it, so a worker that dies mid-job leaves the message to be delivered again;
- ``task_reject_on_worker_lost``: when a pool process is killed (SIGKILL, the OOM killer) the
  message is put back on the queue at once instead of being acknowledged as failed;
- ``worker_prefetch_multiplier=1``: a worker process holds one message at a time, so a busy
  worker does not sit on jobs an idle one could run;
- the Redis transport's ``visibility_timeout`` (a message not acknowledged within it is
  delivered again) is longer than the hard time limit of a job, so a job that is still running
  is never handed to a second worker by the broker (the store's claim guards that too).

The periodic passes (cleanup, re-sends, due webhooks) come from Celery beat, which every
``alphacut worker`` runs: RedBeat keeps the schedule in Redis and a Redis lock lets one beat
at a time send the passes (``alphacut.jobs.beat``); when its worker dies, another takes over
within ``BEAT_LOCK_SECONDS``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery
from redis import Redis

from alphacut.config import Settings
from alphacut.jobs.store import ClaimableJob, JobStore
from alphacut.jobs.worker_models import live_workers
from alphacut.logs import configure_logging

# Queues: images go to `cpu` or `gpu` (ALPHACUT_DEFAULT_QUEUE, or `alphacut worker --queue`);
# webhook deliveries and the periodic passes go to `ops`, which every worker also consumes,
# so a webhook never waits behind a backlog of images.
OPS_QUEUE = "ops"

RUN_JOB = "alphacut.run_job"
DELIVER_WEBHOOK = "alphacut.deliver_webhook"
CLEANUP = "alphacut.cleanup_expired"
REQUEUE = "alphacut.requeue_unsent"
DELIVER_DUE_WEBHOOKS = "alphacut.deliver_due_webhooks"
# The beat's periodic passes: each run is logged at debug level (QuietPeriodicTasks).
PERIODIC_TASKS = frozenset({CLEANUP, REQUEUE, DELIVER_DUE_WEBHOOKS})

# A job that runs longer than this is stopped (it fails with a time-limit error); the broker
# re-delivers an unacknowledged message only after the visibility timeout, well beyond it.
JOB_SOFT_TIME_LIMIT = 20 * 60
JOB_HARD_TIME_LIMIT = 25 * 60
VISIBILITY_TIMEOUT = 2 * 3600
# How often the beat re-sends the jobs no live worker will run (resend_lost) and re-checks
# due webhook deliveries: one indexed query and two Redis round trips, so it can be often.
REQUEUE_INTERVAL = 5.0
# A queued job younger than this is not re-sent: its API node may not have sent it yet (it
# creates the job, then sends it). Covers a slow broker and modest clock skew between nodes.
SEND_GRACE_SECONDS = 10.0
# How long a "sent" marker lives: a queued job whose marker is gone is sent again.
SENT_MARKER_SECONDS = VISIBILITY_TIMEOUT
# The beat: each worker's scheduler wakes at least this often (Celery's
# beat_max_loop_interval), and the lock that lets one of them send the passes lapses this long
# after its holder stops renewing it (its worker died), when another beat takes it.
BEAT_LOOP_SECONDS = 1.0
BEAT_LOCK_SECONDS = 10
# Redis pub/sub channel on which workers announce finished jobs (payload: the job id).
DONE_CHANNEL = "alphacut:jobs-done"


def sent_marker_key(prefix: str, job_id: int, attempts: int) -> str:
    """Set when a job's message is sent, per claim attempt: a job that was claimed and lost
    its worker (attempts grew) gets a new message even though the first one was sent."""
    return f"{prefix}alphacut:sent:{job_id}:{attempts}"


def receiver_key(prefix: str, job_id: int) -> str:
    """The worker node that last received a message of the job (its Celery node name, as it
    announces itself: worker_models.py)."""
    return f"{prefix}alphacut:received:{job_id}"


def send_job(
    app: Celery, broker: Redis, prefix: str, job_id: int, attempts: int, queue: str
) -> None:
    """Send the job's task to ``queue`` and mark it sent for this attempt."""
    app.send_task(RUN_JOB, args=[job_id], queue=queue)
    broker.set(sent_marker_key(prefix, job_id, attempts), "1", ex=SENT_MARKER_SECONDS)


def record_receiver(broker: Redis, prefix: str, job_id: int, node: str) -> None:
    """Note ``node`` as the job's receiver: a message it reserved stays unacknowledged in
    Redis until the visibility timeout if it dies, so resend_lost must know whose it is."""
    broker.set(receiver_key(prefix, job_id), node, ex=SENT_MARKER_SECONDS)


def requeue_pass(app: Celery, broker: Redis, store: JobStore, settings: Settings) -> int:
    """The beat's re-send pass (the requeue_unsent task): the claimable jobs past the grace,
    through resend_lost; returns how many were sent."""
    now = time.time()
    claimable = store.claimable(now, queued_before=now - SEND_GRACE_SECONDS)
    return resend_lost(app, broker, settings.broker_prefix, claimable, settings.worker_queue)


def resend_lost(
    app: Celery, broker: Redis, prefix: str, jobs: list[ClaimableJob], default_queue: str
) -> int:
    """Send each of ``jobs`` (claimable, past the grace: ``JobStore.claimable``) again that no
    live worker will run, to its own queue; returns how many were sent. A job is sent when

    - no message was marked sent for its current attempt: the broker lost it, its API node
      died before sending it, or the worker running it died and its lease ran out (the claim
      counted a new attempt);
    - or its message went to a worker node whose announcement has expired: it died holding
      the message reserved, which Redis hands out again only after the visibility timeout.

    A duplicate message is harmless (the task claims the job in the store first). Each job
    is marked sent, and its dead receiver forgotten, only once its message went out: a pass
    that fails half-way leaves the rest for the next one."""
    if not jobs:
        return 0
    markers = [sent_marker_key(prefix, job.id, job.attempts) for job in jobs]
    receivers = [receiver_key(prefix, job.id) for job in jobs]
    with broker.pipeline(transaction=False) as pipe:
        pipe.mget(markers)
        pipe.mget(receivers)
        marked, received = pipe.execute()
    live: set[str] | None = None  # read once, if any job has a receiver
    sent = 0
    for job, marker, receiver, was_sent, node in zip(
        jobs, markers, receivers, marked, received, strict=True
    ):
        if was_sent is None:
            broker.delete(receiver)  # an earlier attempt's: the new message gets its own
        else:
            if node is None:
                continue  # sent, not received yet: it waits in its queue
            if live is None:
                live = {worker.name for worker in live_workers(broker, prefix)}
            if node.decode() in live:
                continue
        app.send_task(RUN_JOB, args=[job.id], queue=job.queue or default_queue)
        broker.set(marker, "1", ex=SENT_MARKER_SECONDS)
        if was_sent is not None:  # the dead receiver, unless a live one took the new message
            broker.register_script(FORGET_RECEIVER)(keys=[receiver], args=[node])
        sent += 1
    return sent


# Deletes a receiver record only if it still names the given node (compare-and-delete).
FORGET_RECEIVER = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def connect_broker(settings: Settings) -> Redis:
    """A Redis client on the broker, for pub/sub, markers and queue lengths; short timeouts,
    so a broker that is down is reported in seconds rather than hanging a request."""
    return Redis.from_url(
        settings.broker_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=15
    )


def done_channel(settings: Settings) -> str:
    """The channel of this cluster: pub/sub ignores Redis's database numbers, so two clusters
    sharing one Redis server (tests, staging) must not hear each other."""
    database = settings.broker_url.rsplit("/", 1)[-1].split("?", 1)[0]
    return f"{settings.broker_prefix}{DONE_CHANNEL}:{database or '0'}"


class QuietPeriodicTasks(logging.Filter):
    """Celery logs every run of every task at info level: "Scheduler: Sending due task" (the
    beat), "Task ... received" and "Task ... succeeded in ..." (the worker). The periodic
    passes run every second or few, so for them these lines go to debug level; jobs, webhook
    deliveries, what a pass did ("requeued 2 job(s)...") and every failure are left as they
    are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not _names_periodic_task(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _names_periodic_task(record: logging.LogRecord) -> bool:
    data = getattr(record, "data", None)  # "received" and "succeeded" carry the task's fields
    if isinstance(data, dict):
        name = data.get("name")
        return isinstance(name, str) and name in PERIODIC_TASKS
    args = record.args if isinstance(record.args, tuple) else ()
    return record.name == "celery.beat" and any(
        isinstance(arg, str) and arg in PERIODIC_TASKS for arg in args
    )


def configure_worker_logging(level: str | int = "info") -> None:
    """The logging of ``alphacut serve`` (JSON lines on stderr, same fields, same quieted
    libraries) for a worker, its pool processes and its beat, with the periodic passes'
    per-run lines at debug level. Connected to Celery's ``setup_logging`` signal, which also
    keeps Celery from installing its own handlers and text format."""
    configure_logging(level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(QuietPeriodicTasks())


def create_celery(settings: Settings) -> Celery:
    app = Celery("alphacut", broker=settings.broker_url, set_as_current=False)
    config: dict[str, Any] = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT,
            # Queues, unacknowledged messages and control channels, all under the prefix.
            **({"global_keyprefix": settings.broker_prefix} if settings.broker_prefix else {}),
        },
        "broker_connection_retry_on_startup": True,
        # No result backend: results live in the job store, and the API nodes learn of them
        # through DONE_CHANNEL.
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.worker_queue,
        "task_routes": {
            DELIVER_WEBHOOK: {"queue": OPS_QUEUE},
            CLEANUP: {"queue": OPS_QUEUE},
            REQUEUE: {"queue": OPS_QUEUE},
            DELIVER_DUE_WEBHOOKS: {"queue": OPS_QUEUE},
        },
        # A broker that is down fails a send within about a second (the API answers 503).
        "broker_connection_timeout": 2,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        # Every worker runs the beat; one at a time sends the passes (alphacut.jobs.beat).
        "beat_scheduler": "alphacut.jobs.beat:ClusterScheduler",
        "beat_max_loop_interval": BEAT_LOOP_SECONDS,
        "redbeat_redis_url": settings.broker_url,
        "redbeat_redis_options": {"socket_connect_timeout": 2, "socket_timeout": 5},
        # The schedule and the lock of this cluster only (several may share one Redis).
        "redbeat_key_prefix": f"{settings.broker_prefix}alphacut:beat:",
        # RedBeat's own lock kills its beat on a lost lock or a broker blip: ClusterScheduler
        # takes the lock itself, under the same key, with this timeout.
        "redbeat_lock_key": None,
        "redbeat_lock_timeout": BEAT_LOCK_SECONDS,
        "beat_schedule": {
            name: {
                "task": task,
                "schedule": interval,
                # A pass not started by its next run is dropped (the next one does its work):
                # while every worker is busy, passes do not pile up in the ops queue.
                "options": {"expires": interval},
            }
            for name, task, interval in (
                ("cleanup-expired-outputs", CLEANUP, settings.cleanup_interval),
                ("requeue-unsent-jobs", REQUEUE, REQUEUE_INTERVAL),
                (
                    "deliver-due-webhooks",
                    DELIVER_DUE_WEBHOOKS,
                    max(1.0, min(REQUEUE_INTERVAL, settings.webhook_backoff / 2)),
                ),
            )
        },
    }
    app.conf.update(config)
    return app
