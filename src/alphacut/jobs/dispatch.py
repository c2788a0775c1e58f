"""The API node's side of the distributed mode: jobs go to ``alphacut worker`` processes
through Celery on Redis, and finished jobs come back as Redis pub/sub messages.

``CeleryDispatcher`` is the service's ``JobRunner`` when ``ALPHACUT_BROKER_URL`` is set: the
request handler picks the job's queue (``queue_for``: cpu or gpu, by the workers' models and
backlog) and creates the job in the store as always, ``submit`` sends its task there, and
``wait_for`` sleeps until a worker announces the job on the done channel (one subscription per
API node, shared by all its waiting requests), re-reading the store only when woken, and every
few seconds as a safety net for an announcement lost in a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from PIL import Image
from redis import Redis
from redis.exceptions import RedisError

from alphacut.config import IMAGE_QUEUES, Settings
from alphacut.errors import BrokerUnavailable
from alphacut.jobs.celery_app import (
    OPS_QUEUE,
    connect_broker,
    create_celery,
    done_channel,
    send_job,
)
from alphacut.jobs.store import Job, JobStore
from alphacut.jobs.worker_models import ClusterModels, live_workers, queue_backlog

log = logging.getLogger(__name__)

# How long a client is told to wait when the broker is down, in seconds.
BROKER_RETRY_AFTER = 5
# Seconds between broker pings while a request could be refused; and the safety-net re-read
# of the store by a waiting request.
HEALTH_INTERVAL = 1.0
STORE_RECHECK = 5.0


class CeleryDispatcher:
    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.celery = create_celery(settings)
        self.broker: Redis = connect_broker(settings)
        self.channel = done_channel(settings)
        self.models = ClusterModels(
            self.broker, settings.broker_prefix, settings.default_queue, settings.model_dir
        )
        self.running = 0  # an API node runs no job itself
        self.broker_error: str | None = None  # the last failure, while the broker is down
        self._finished_listeners: list[Callable[[Job], None]] = []
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._subscriber: threading.Thread | None = None
        self._health: asyncio.Task[None] | None = None

    # --- JobRunner ----------------------------------------------------------------------

    def offer_decoded(self, key: str, image: Image.Image) -> None:
        """The worker is another process: it decodes the stored input itself."""

    def discard_decoded(self, key: str) -> None:
        pass

    def add_finished_listener(self, listener: Callable[[Job], None]) -> None:
        """``listener(job)`` runs on the event loop for each job a request here waited for."""
        self._finished_listeners.append(listener)

    def check_accepting(self) -> None:
        if self.broker_error is not None:
            raise BrokerUnavailable(
                f"the job queue is unavailable ({self.broker_error}); retry shortly",
                BROKER_RETRY_AFTER,
            )

    def check_model(self, model: str) -> None:
        """422 unless ``model`` is installed here or on a live worker of this node's queue
        (with no live worker there, any model the registry knows: the job waits)."""
        self.models.check(model)

    def queue_for(self, model: str) -> str:
        """The queue a job for ``model`` goes to: ``ALPHACUT_DEFAULT_QUEUE``, or with ``auto``
        the one the live workers' models and backlog pick (blocking: off the loop)."""
        return self.models.queue_for(model)

    async def submit(self, job: Job) -> None:
        """Send the job's task; if the broker refuses, the job fails at once (it was never
        accepted: the client gets 503 and retries) rather than run later unannounced. If even
        that fails (the store is down too), the job stays queued and the beat sends it once
        the broker is back: it is accepted after all, and the client is answered
        "processing" (never a 503 for a job that will run)."""
        try:
            await asyncio.to_thread(
                send_job,
                self.celery,
                self.broker,
                self.settings.broker_prefix,
                job.id,
                job.attempts,
                # Chosen when the job was created (a job from before routing: the pinned one).
                job.request.get("queue") or self.settings.worker_queue,
            )
        except Exception as exc:
            self._broker_down(exc)
            try:
                await asyncio.to_thread(
                    self.store.fail, job.id, "the job queue was unavailable; not run", 503
                )
            except Exception as failing:
                log.warning(
                    "job %s: not sent, nor failed (%s): queued for the beat", job.id, failing
                )
                return
            raise BrokerUnavailable(
                f"the job queue is unavailable ({self.broker_error}); retry shortly",
                BROKER_RETRY_AFTER,
            ) from exc

    async def wait_for(self, job_id: int, timeout: float) -> Job | None:
        """The job once done, or None if still unfinished after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        try:
            while True:
                job = await asyncio.to_thread(self.store.get, job_id)
                if job is not None and job.done:
                    for listener in self._finished_listeners:
                        listener(job)
                    return job
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(asyncio.shield(future), min(left, STORE_RECHECK))
                except TimeoutError:
                    continue
                # Woken: a worker announced it (or the subscription reconnected).
                future = asyncio.get_running_loop().create_future()
                self._waiters.setdefault(job_id, []).append(future)
        finally:
            self._forget(job_id, future)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._ping)
        self._subscriber = threading.Thread(
            target=self._listen, name="alphacut-done-channel", daemon=True
        )
        self._subscriber.start()
        self._health = asyncio.create_task(self._watch_broker())

    def begin_drain(self) -> None:
        """Nothing runs here: waiting requests go on waiting (within the grace)."""

    async def wait_idle(self, timeout: float) -> bool:
        return True

    async def stop(self, grace: float) -> None:
        self._stop.set()
        if self._subscriber is not None:  # it reads the connection closed below
            # Wake it from its one-second read now (listeners skip a message that is no id).
            with contextlib.suppress(RedisError, OSError):
                await asyncio.to_thread(self.broker.publish, self.channel, "stop")
            await asyncio.to_thread(self._subscriber.join, 5.0)
        if self._health is not None:
            self._health.cancel()
            await asyncio.gather(self._health, return_exceptions=True)
        self.broker.close()

    def health_problems(self) -> list[str]:
        """For /readyz: what keeps this node from accepting jobs (blocking: off the loop)."""
        self._ping()
        return [] if self.broker_error is None else [f"broker unreachable: {self.broker_error}"]

    # --- cluster metrics ----------------------------------------------------------------

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting in each queue (Redis list lengths; blocking)."""
        return queue_backlog(self.broker, self.settings.broker_prefix, (*IMAGE_QUEUES, OPS_QUEUE))

    def live_workers(self) -> int:
        """Worker nodes whose announcement is live, all queues (blocking)."""
        return len(live_workers(self.broker, self.settings.broker_prefix))

    # --- internals ----------------------------------------------------------------------

    def _forget(self, job_id: int, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(job_id, [])
        if future in waiters:
            waiters.remove(future)
        if not waiters:
            self._waiters.pop(job_id, None)

    def _wake(self, job_id: int | None) -> None:
        """On the loop: wake the requests waiting for ``job_id`` (None: all of them)."""
        ids = list(self._waiters) if job_id is None else [job_id]
        for waiting in ids:
            for future in self._waiters.get(waiting, []):
                if not future.done():
                    future.set_result(None)

    def _wake_threadsafe(self, job_id: int | None) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake, job_id)

    def _broker_down(self, exc: BaseException) -> None:
        if self.broker_error is None:
            log.warning("broker unreachable: %s", exc)
        self.broker_error = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0]

    def _ping(self) -> None:
        try:
            self.broker.ping()
        except Exception as exc:
            self._broker_down(exc)
        else:
            if self.broker_error is not None:
                log.info("broker reachable again")
            self.broker_error = None

    async def _watch_broker(self) -> None:
        while True:
            await asyncio.to_thread(self._ping)
            await asyncio.sleep(HEALTH_INTERVAL)

    def _listen(self) -> None:
        """The subscriber thread: one subscription for the node, reconnecting until stopped."""
        while not self._stop.is_set():
            pubsub = self.broker.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                # Announcements may have been missed while disconnected: re-check everyone.
                self._wake_threadsafe(None)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        self._wake_threadsafe(int(message["data"]))
                    except (TypeError, ValueError):
                        continue
            except (RedisError, OSError) as exc:
                self._broker_down(exc)
                self._stop.wait(HEALTH_INTERVAL)
            finally:
                try:
                    pubsub.close()
                except (RedisError, OSError):
                    pass
