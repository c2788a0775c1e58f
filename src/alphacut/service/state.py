"""Everything a running server holds, created once in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field

from fastapi import Request

from alphacut.config import Settings
from alphacut.engine import Engine
from alphacut.errors import ShuttingDown
from alphacut.io.s3_mask_cache import storage_mask_cache
from alphacut.io.sources import fetch_policy
from alphacut.io.storage import Storage, open_storage
from alphacut.jobs.cleanup import delete_expired
from alphacut.jobs.keys import KeyStore, load_pepper
from alphacut.jobs.ratelimits import RateCounter
from alphacut.jobs.results import OutputLink, output_link, proxy_link, webhook_payload
from alphacut.jobs.runner import JobRunner
from alphacut.jobs.store import JobStore, SQLJobStore
from alphacut.jobs.webhooks import WebhookSender, load_or_create_secret
from alphacut.jobs.worker import WorkerPool
from alphacut.service.access import AccessControl, Principal

log = logging.getLogger(__name__)


@dataclass
class ServiceState:
    settings: Settings
    engine: Engine
    store: JobStore
    storage: Storage
    pool: JobRunner  # in-process WorkerPool, or CeleryDispatcher (ALPHACUT_BROKER_URL)
    webhooks: WebhookSender
    access: AccessControl  # API keys and rate limits
    background: list[asyncio.Task[None]] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    # Set when a job ends, so its webhook goes out now rather than at the next poll.
    webhook_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # time.monotonic() by which running jobs must be done; set when the shutdown begins.
    shutdown_deadline: float | None = None
    # Builds output URLs: /outputs/ on this server, or presigned S3 URLs.
    output_link: OutputLink = proxy_link

    @classmethod
    def create(cls, settings: Settings, engine: Engine | None = None) -> ServiceState:
        storage = open_storage(settings)
        # The mask cache follows the storage: with S3, one cache in the bucket for the cluster
        # (an API node's engine runs no model, but its /metrics show the shared cache's size).
        engine = engine or Engine(settings, mask_cache=storage_mask_cache(settings, storage))
        store = SQLJobStore(settings.database_url)
        webhooks = WebhookSender(
            store,
            load_or_create_secret(settings.webhook_secret, settings.home),
            fetch_policy(settings),
            settings.webhook_attempts,
            settings.webhook_backoff,
        )
        # The store itself queues a finished job's webhook; the callback only wakes the sender.
        pool: JobRunner
        if settings.broker_url:
            from alphacut.jobs.dispatch import CeleryDispatcher  # the distributed extra

            pool = CeleryDispatcher(settings, store)
        else:
            pool = WorkerPool(settings, store, engine, storage)
        access = AccessControl(
            settings,
            KeyStore(store.engine, load_pepper(settings.key_pepper, settings.home)),
            RateCounter(store.engine),
        )
        state = cls(settings, engine, store, storage, pool, webhooks, access)
        state.output_link = output_link(settings, storage)
        pool.add_finished_listener(lambda job: state.webhook_wakeup.set())
        return state

    def authenticate(self, key: str) -> Principal:
        """Check the API key (401 if refused): who is calling, and their limits. Runs database
        queries (cached for a second): call it off the event loop."""
        return self.access.authenticate(key)

    def owner_of(self, key: str) -> str:
        """Check the API key; jobs are owned by a hash of it (keys are never stored)."""
        return self.access.authenticate(key).owner

    def eta_for(self, job_id: int) -> float:
        """Seconds until the job is done: mean job time x (jobs ahead / workers + itself).

        A job's measured time includes waiting for the shared model, so mean / workers is
        the rate at which the queue drains. Runs store queries: call it off the event loop.
        """
        mean = self.store.mean_generation_time() or 3.0
        ahead = self.store.queue_position(job_id)
        # At least 0.1 s: "processing" with an eta that rounds to 0.0 reads as "never".
        return max(0.1, mean * (ahead / max(1, self.settings.workers) + 1))

    def retry_after(self, pending: int) -> int:
        """Whole seconds until a key with ``pending`` unfinished jobs has room again (>= 1)."""
        mean = self.store.mean_generation_time() or 3.0
        return int(mean * pending / max(1, self.settings.workers)) + 1

    @property
    def shutting_down(self) -> bool:
        return self.shutdown_deadline is not None

    def begin_shutdown(self) -> None:
        """Stop taking jobs (requests get 503) and start the grace period; idempotent."""
        if self.shutdown_deadline is not None:
            return
        self.shutdown_deadline = time.monotonic() + self.settings.shutdown_grace
        log.info(
            "shutting down: no new jobs; running ones get %.0f s to finish, queued ones wait "
            "for the next start",
            self.settings.shutdown_grace,
        )
        self.pool.begin_drain()

    def end_grace(self) -> None:
        """Cut the grace short (a second signal): jobs still running are left to the next start."""
        self.begin_shutdown()
        self.shutdown_deadline = time.monotonic()

    def grace_left(self) -> float:
        if self.shutdown_deadline is None:
            return self.settings.shutdown_grace
        return max(0.0, self.shutdown_deadline - time.monotonic())

    def check_accepting(self) -> None:
        """Raise ``ShuttingDown`` (503) once the shutdown has begun, or the runner's error
        (503) if it cannot take a job now (a cluster's broker is down)."""
        if self.shutting_down:
            # By then this server is gone; a restarted one (or another replica) takes the job.
            raise ShuttingDown(
                "the server is shutting down and takes no new jobs; retry shortly",
                int(self.grace_left()) + 1,
            )
        self.pool.check_accepting()

    async def drain(self) -> bool:
        """Begin the shutdown if needed and wait (within the grace) until no job runs; True
        if none does."""
        self.begin_shutdown()
        return await self.pool.wait_idle(self.grace_left())

    def base_url(self, request: Request) -> str:
        return self.settings.public_url or str(request.base_url).rstrip("/")

    async def start(self) -> None:
        # A server without keys is warned about by `alphacut serve`, which knows the address it
        # listens on (no warning on loopback); the app does not.
        if self.settings.broker_url:
            # A cluster: the workers load the models and run jobs and webhooks, the beat
            # runs the cleanup.
            await self.pool.start()
            return
        # Load the default model before serving, so /healthz means "ready to remove".
        await asyncio.to_thread(self.engine.runner)
        await self.pool.start()
        self.background = [
            asyncio.create_task(self._webhook_loop()),
            asyncio.create_task(self._cleanup_loop()),
        ]

    async def stop(self) -> None:
        # Drain before anything else stops: a job finishing in the grace still sends its
        # webhook through the loop below.
        await self.drain()
        await self.pool.stop(self.grace_left())
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        self.webhooks.close()
        self.engine.close()

    async def _webhook_loop(self) -> None:
        # Polls as well as waking on finished jobs: retries come due on their own, and another
        # process sharing the store may finish jobs too.
        poll = min(1.0, self.settings.webhook_backoff / 4)
        while True:
            self.webhook_wakeup.clear()
            try:
                payload = functools.partial(webhook_payload, link=self.output_link)
                await asyncio.to_thread(self.webhooks.deliver_due, payload)
            except Exception:
                log.exception("webhook delivery pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.webhook_wakeup.wait(), poll)

    async def _cleanup_loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.cleanup)
            except Exception:
                log.exception("cleanup failed")
            await asyncio.sleep(self.settings.cleanup_interval)

    def cleanup(self, now: float | None = None) -> int:
        """Delete expired outputs together with their jobs (see ``delete_expired``), then
        outputs a crash between the two deletes left behind."""
        removed = delete_expired(self.store, self.storage, now)
        return removed + self.storage.cleanup_expired(now or time.time())
