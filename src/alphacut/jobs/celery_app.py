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
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from redis import Redis

from alphacut.config import Settings
from alphacut.logs import configure_logging

# Queues: images go to `cpu` or `gpu` (ALPHACUT_DEFAULT_QUEUE, or `alphacut worker --queue`);
# webhook deliveries and the periodic passes go to `ops`, which every worker also consumes,
# so a webhook never waits behind a backlog of images.
IMAGE_QUEUES = ("cpu", "gpu")
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
# How often the beat re-sends queued jobs that have no message (Redis lost it, an API node
# died between creating the job and sending it) and re-checks due webhook deliveries.
REQUEUE_INTERVAL = 30.0
# How long a "sent" marker lives: a queued job whose marker is gone is sent again.
SENT_MARKER_SECONDS = VISIBILITY_TIMEOUT
# Redis pub/sub channel on which workers announce finished jobs (payload: the job id).
DONE_CHANNEL = "alphacut:jobs-done"


def sent_marker_key(prefix: str, job_id: int, attempts: int) -> str:
    """Set when a job's message is sent, per claim attempt: a job that was claimed and lost
    its worker (attempts grew) gets a new message even though the first one was sent."""
    return f"{prefix}alphacut:sent:{job_id}:{attempts}"


def send_job(
    app: Celery,
    broker: Redis,
    prefix: str,
    job_id: int,
    attempts: int,
    queue: str,
    *,
    once: bool = False,
) -> bool:
    """Send the job's task to ``queue`` and mark it sent; with ``once``, only if no message
    was marked sent for this attempt yet. True if sent."""
    key = sent_marker_key(prefix, job_id, attempts)
    if once and not broker.set(key, "1", nx=True, ex=SENT_MARKER_SECONDS):
        return False
    app.send_task(RUN_JOB, args=[job_id], queue=queue)
    if not once:
        broker.set(key, "1", ex=SENT_MARKER_SECONDS)
    return True


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
        "task_default_queue": settings.default_queue,
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
        "beat_schedule": {
            "cleanup-expired-outputs": {"task": CLEANUP, "schedule": settings.cleanup_interval},
            "requeue-unsent-jobs": {"task": REQUEUE, "schedule": REQUEUE_INTERVAL},
            "deliver-due-webhooks": {
                "task": DELIVER_DUE_WEBHOOKS,
                "schedule": max(1.0, min(REQUEUE_INTERVAL, settings.webhook_backoff / 2)),
            },
        },
    }
    app.conf.update(config)
    return app
