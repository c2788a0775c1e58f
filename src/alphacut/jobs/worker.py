"""In-process workers: claim jobs from the store and run the pipeline off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PIL import Image

from alphacut.config import Settings
from alphacut.engine import Engine
from alphacut.errors import AlphacutError, InvalidRequest, StorageUnavailable
from alphacut.io.storage import Storage
from alphacut.jobs.budget import PixelBudget
from alphacut.jobs.database import database_unreachable
from alphacut.jobs.store import FAILED, SUCCESS, Job, JobStore, worker_identity
from alphacut.pipeline.decode import decode_image
from alphacut.pipeline.encode import encode_image
from alphacut.pipeline.options import RemoveOptions
from alphacut.pipeline.remove import RemoveResult

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
# Seconds before work that found the job database unreachable is tried again.
DATABASE_RETRY_SECONDS = 2
HANDOFF_MAX_PIXELS = 64_000_000  # about 190 MB of decoded RGB waiting for workers
# A job whose storage (an S3 bucket) is unavailable is not failed but tried again after 2, 4,
# 8 ... s, at most 30 s apart, until this long after its first storage failure (an S3 restart
# lasts seconds, a failover minutes); then it fails with 503 (docs/scaling.md).
STORAGE_RETRY_FIRST_SECONDS = 2.0
STORAGE_RETRY_MAX_SECONDS = 30.0
STORAGE_RETRY_LIMIT_SECONDS = 600.0


def storage_retry_delay(failures: int, failing_since: float, now: float) -> float | None:
    """Seconds to wait before trying a job again after its ``failures``-th storage failure in a
    row, the first at ``failing_since``; None once the retry time is spent: fail the job."""
    left = failing_since + STORAGE_RETRY_LIMIT_SECONDS - now
    if left <= 0:
        return None
    backoff = STORAGE_RETRY_FIRST_SECONDS * 2.0 ** max(0, failures - 1)
    return min(backoff, STORAGE_RETRY_MAX_SECONDS, left)


def options_from_record(request: dict[str, Any]) -> RemoveOptions:
    """The job's processing options (jobs queued by the previous release keep the output
    options apart, under "compose", "format" and "quality")."""
    fields = dict(request["options"])
    legacy = dict(request.get("compose") or {})
    legacy.pop("bg_image_path", None)
    if "format" in request:
        legacy.update(format=request["format"], quality=request.get("quality"))
    if background_path(request):
        legacy.setdefault("bg_image", "stored")
    return RemoveOptions.model_validate({**legacy, **fields})


def background_path(request: dict[str, Any]) -> str | None:
    """The stored bg_image's storage reference (a path, or an S3 object's URL)."""
    legacy = request.get("compose") or {}
    path: str | None = request.get("bg_image_path") or legacy.get("bg_image_path")
    return path


def delete_inputs(storage: Storage, request: dict[str, Any]) -> None:
    """Delete a finished job's stored input and bg_image."""
    storage.delete_input(request["input_path"])
    bg_path = background_path(request)
    if bg_path:
        storage.delete_input(bg_path)


def load_background(
    request: dict[str, Any], max_pixels: int, storage: Storage
) -> Image.Image | None:
    # The request handler already fetched and checked the background; decode it again here
    # rather than keep it in memory while the job waits.
    path = background_path(request)
    return decode_image(storage.read_input(path), max_pixels) if path else None


class WorkerPool:
    """``settings.workers`` concurrent jobs; inference itself is single-flight in the runner,
    so extra workers only overlap decoding/encoding with another job's inference."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        engine: Engine,
        storage: Storage,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.storage = storage
        # Called on the event loop with each job that ended: keep them cheap.
        self.finished_listeners: list[Callable[[Job], None]] = []
        self.identity = worker_identity()
        self.concurrency = max(1, settings.workers)
        self.budget = PixelBudget(settings.max_inflight_pixels)
        self.executor = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="alphacut-job"
        )
        # Images decoded by the request handler, handed over to skip a second decode. Bounded
        # by pixels, not count: eight 50 MP images would hold over a gigabyte.
        self.handoff: dict[str, Image.Image] = {}  # keyed by input path
        self._wakeup = asyncio.Event()
        # Set by the drain (shutdown): no new claims, and a wait for storage ends.
        self._draining = asyncio.Event()
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[Future[None]] = set()
        self._running_ids: set[int] = set()
        self.running = 0
        # Set once the grace has run out with jobs still running: those stay RUNNING in the
        # store (the next start requeues them) rather than fail because the engine closed.
        self.abandoned = False

    @property
    def draining(self) -> bool:
        """Draining (shutdown): no new claims; queued jobs stay queued for the next start."""
        return self._draining.is_set()

    def offer_decoded(self, key: str, image: Image.Image) -> None:
        """Keep a decoded input for the worker if the memory budget allows."""
        used = sum(held.width * held.height for held in list(self.handoff.values()))
        if used + image.width * image.height <= HANDOFF_MAX_PIXELS:
            self.handoff[key] = image

    def add_finished_listener(self, listener: Callable[[Job], None]) -> None:
        """``listener(job)`` runs on the event loop after each job ends."""
        self.finished_listeners.append(listener)

    def discard_decoded(self, key: str) -> None:
        """Drop a decoded input offered for a job that was not created after all."""
        self.handoff.pop(key, None)

    async def start(self) -> None:
        requeued = await asyncio.to_thread(self.store.requeue_dead_local, self.identity)
        if requeued:
            log.info("resuming %d job(s) left running by a stopped server", requeued)
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(self.concurrency)]

    def begin_drain(self) -> None:
        """Claim no more jobs; let running ones go on. Requests waiting for a job that is not
        running answer "processing" now (fetch finds it after the restart)."""
        self._draining.set()
        self._wakeup.set()  # idle loops see the flag and end
        for job_id in list(self._waiters):
            if job_id not in self._running_ids:
                self._wake_waiters(job_id)

    async def wait_idle(self, timeout: float) -> bool:
        """After ``begin_drain``: wait until the worker loops have ended, i.e. no job runs or
        is being claimed, at most ``timeout`` seconds; True if they have."""
        unfinished = [task for task in self._tasks if not task.done()]
        if unfinished:
            await asyncio.wait(unfinished, timeout=max(0.0, timeout))
        return all(task.done() for task in self._tasks)

    async def stop(self, grace: float) -> None:
        """Drain: running jobs get ``grace`` seconds to finish and write their result; any
        still running then stay RUNNING in the store and the next start requeues them."""
        self.begin_drain()
        # Cancelling a task does not stop its thread: let running jobs end (and write their
        # result) before the caller closes the engine under them.
        if not await self.wait_idle(grace):
            self.abandoned = True
            log.warning(
                "shutdown grace over with %d job(s) still running: the next start runs them again",
                self.running,
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    def notify(self) -> None:
        self._wakeup.set()

    def check_accepting(self) -> None:
        """In-process workers can always take a job (the drain is checked by the state)."""

    def check_model(self, model: str) -> None:
        """422 unless ``model`` is installed here: this process runs it (blocking: stats
        files)."""
        if not self.engine.spec(model).is_installed(self.settings.model_dir):
            raise InvalidRequest(f"model {model!r} is not installed on this server", 422)

    def queue_for(self, model: str) -> None:
        """In-process workers take every job: no queue."""

    async def submit(self, job: Job) -> None:
        """A job was created in the store: wake an idle worker loop to claim it."""
        self.notify()

    def health_problems(self) -> list[str]:
        return []

    async def wait_for(self, job_id: int, timeout: float) -> Job | None:
        """The job once done, or None if still unfinished after ``timeout`` seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        try:
            job = await asyncio.to_thread(self.store.get, job_id)
            if job is not None and job.done:
                return job
            if self.draining and job_id not in self._running_ids:
                timeout = 0  # it will not run before the restart
            if timeout > 0:
                try:
                    await asyncio.wait_for(asyncio.shield(future), timeout)
                except TimeoutError:
                    pass
            job = await asyncio.to_thread(self.store.get, job_id)
            return job if job is not None and job.done else None
        finally:
            waiters = self._waiters.get(job_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(job_id, None)

    def _wake_waiters(self, job_id: int) -> None:
        for future in self._waiters.get(job_id, []):
            if not future.done():
                future.set_result(None)

    async def _loop(self) -> None:
        while not self.draining:
            try:
                await self._claim_and_run()
            except Exception as exc:
                # A PostgreSQL outage (or any failure around a job) must not end this loop
                # for good: the job stays RUNNING under its lease, and is claimed again.
                if database_unreachable(exc):
                    log.warning("the job database is unreachable; claiming again shortly")
                else:
                    log.exception("the worker loop failed; claiming again shortly")
                await asyncio.sleep(DATABASE_RETRY_SECONDS)

    async def _claim_and_run(self) -> None:
        """Claim one job and run it; or wait a little for one."""
        job = await asyncio.to_thread(self.store.claim, self.identity, LEASE_SECONDS)
        if job is None:
            self._wakeup.clear()
            try:
                # Poll now and then too: another process may add jobs to the store.
                await asyncio.wait_for(self._wakeup.wait(), timeout=1.0)
            except TimeoutError:
                pass
            return
        # A job claimed while the drain began still runs: it is RUNNING in the store now.
        self.running += 1
        self._running_ids.add(job.id)
        renew = asyncio.create_task(self._renew_lease(job.id))
        try:
            await self._process_retrying_storage(job)
        except Exception:  # process() records failures itself; this is a last resort
            log.exception("job %s crashed", job.id)
        finally:
            renew.cancel()
            self.running -= 1
            self._running_ids.discard(job.id)
        self._wake_waiters(job.id)
        finished = await asyncio.to_thread(self.store.get, job.id)
        await asyncio.to_thread(self.discard_inputs, finished)
        if finished is not None and finished.done:  # not one a drain left waiting
            for listener in self.finished_listeners:
                listener(finished)

    async def _process_in_thread(self, job: Job) -> None:
        running = self.executor.submit(self.process, job)
        self._inflight.add(running)
        running.add_done_callback(self._inflight.discard)
        await asyncio.wrap_future(running)

    async def _process_retrying_storage(self, job: Job) -> None:
        """``process`` the job; while its storage is unavailable, try again in place on the
        Celery task's schedule (``storage_retry_delay``), the lease renewed all along, then
        fail it. A drain ends the wait: the job stays RUNNING and the next start runs it."""
        failures, failing_since = 0, 0.0
        while True:
            try:
                await self._process_in_thread(job)
                return
            except StorageUnavailable as exc:
                failures += 1
                if failures == 1:
                    failing_since = time.time()
                delay = storage_retry_delay(failures, failing_since, time.time())
                if delay is None:
                    await asyncio.to_thread(self.fail_storage_unavailable, job, exc)
                    return
                log.warning("job %s: %s; trying again in %.0f s", job.id, exc.message, delay)
                try:
                    await asyncio.wait_for(self._draining.wait(), timeout=delay)
                    return
                except TimeoutError:
                    pass

    def fail_storage_unavailable(self, job: Job, exc: StorageUnavailable) -> None:
        """Fail a job whose storage stayed unavailable for ``STORAGE_RETRY_LIMIT_SECONDS``."""
        log.error("job %s: storage unavailable for too long; failing it: %s", job.id, exc)
        message = f"{exc.message}; gave up after retrying for {STORAGE_RETRY_LIMIT_SECONDS:.0f} s"
        self.store.fail(job.id, message, StorageUnavailable.status_code)

    async def _renew_lease(self, job_id: int) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 4)
            try:
                await asyncio.to_thread(self.store.renew, job_id, self.identity, LEASE_SECONDS)
            except Exception:  # a database blip: the next renewal may pass, the lease is long
                log.warning("lease renewal of job %s failed", job_id, exc_info=True)

    def _record_failure(self, job: Job, exc: Exception) -> None:
        if self.abandoned:
            # The shutdown closed the engine under this job: not its fault, so leave it
            # RUNNING for the next start instead of failing it.
            log.warning("job %s interrupted by the shutdown; the next start runs it", job.id)
        elif isinstance(exc, AlphacutError):
            self.store.fail(job.id, exc.message, exc.status_code)
        elif isinstance(exc, FileNotFoundError):
            self.store.fail(job.id, "the job's input was lost", 500)
        else:
            log.error("job %s failed", job.id, exc_info=exc)
            self.store.fail(job.id, "internal error while processing the image", 500)

    def process(self, job: Job) -> None:
        """Run one job to SUCCESS or FAILED; raises only when the job database is unreachable,
        or ``StorageUnavailable`` when its input or output could not be read or written: the
        caller tries it again later (``storage_retry_delay``)."""
        request = job.request
        started = time.perf_counter()
        input_path = request["input_path"]  # a storage reference: a path, or an S3 object
        try:
            image = self.handoff.pop(input_path, None)
            reading = 0.0  # the stored input read and decoded again: what a handoff saves
            if image is None:
                image = decode_image(self.storage.read_input(input_path), self.settings.max_pixels)
                reading = time.perf_counter() - started
            with self.budget.hold(image.width * image.height):
                options = options_from_record(request)
                result: RemoveResult = self.engine.remove(
                    image,
                    options,
                    model=request.get("model"),
                    background=load_background(request, self.settings.max_pixels, self.storage),
                )
                t = time.perf_counter()
                data = encode_image(
                    result.output,
                    options.format,
                    options.quality,
                    self.settings.png_compress_level,
                )
                result.timings["encode"] = time.perf_counter() - t
                if reading:
                    result.timings["input"] = reading
                timings, foreground = result.timings, result.foreground
                del result  # the encoded bytes are what is kept: free the arrays now
            relative = self.storage.write_output(
                request["file_name"], data, request["temp"], request["base64"]
            )
            generation_time = time.perf_counter() - started
            ttl = self.settings.temp_ttl if request["temp"] else self.settings.output_ttl
            self.store.finish(
                job.id,
                {
                    "outputs": [relative],
                    "timings": timings,
                    "width": image.width,
                    "height": image.height,
                    "foreground": foreground.as_dict() if foreground else None,
                },
                generation_time,
                time.time() + ttl if ttl > 0 else None,
            )
        except Exception as exc:
            if database_unreachable(exc) or isinstance(exc, StorageUnavailable):
                # The outage is not the job's fault (and with the database, nothing can be
                # recorded now): it stays RUNNING under this lease and the caller retries it.
                # A PUT is atomic: a failed output write leaves no partial object.
                raise
            self._record_failure(job, exc)
        finally:
            self.handoff.pop(input_path, None)

    def discard_inputs(self, job: Job | None) -> None:
        """Delete the stored inputs of ``job`` (as read after ``process``) if it ended. Called
        after its waiters were told: a storage round trip need not delay the answer."""
        if job is not None and job.status in (SUCCESS, FAILED):
            delete_inputs(self.storage, job.request)
