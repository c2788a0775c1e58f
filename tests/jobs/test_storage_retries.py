"""A job whose storage (an S3 bucket) is unavailable is retried with backoff, not failed, up to
a bounded time; then it fails with 503 and says so. And an accepted job is never answered with
an error because the store fails while its request waits.

The Celery task's retries (``_run_job``, with a stand-in for the bound task) and the embedded
mode's in-place retries (a live server) both run here on small patched constants; the real
outage, SeaweedFS stopped for 10 s under a cluster, is tests/distributed/test_outages.py's.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from alphacut.errors import StorageUnavailable
from alphacut.jobs import celery_tasks, worker
from alphacut.jobs.store import FAILED, RUNNING, SQLJobStore, sqlite_url
from alphacut.jobs.worker import WorkerPool, storage_retry_delay
from tests.conftest import free_port, subject_image
from tests.jobhelpers import post, wait_done

UNAVAILABLE = "the output storage (s3://bucket/outputs) is unreachable: injected"


def test_the_backoff_doubles_up_to_its_cap_and_stops_at_the_bound():
    since = 1000.0
    delays = [storage_retry_delay(failures, since, since) for failures in range(1, 8)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    limit = worker.STORAGE_RETRY_LIMIT_SECONDS
    assert limit == 600.0  # documented in docs/scaling.md and docs/reliability.md
    assert storage_retry_delay(20, since, since + limit - 5) == pytest.approx(5.0)  # not past it
    assert storage_retry_delay(20, since, since + limit) is None


class Retried(Exception):
    """What the stand-in task's ``retry`` returns, to be raised, as Celery's Retry is."""


class RecordingTask:
    """The bound Celery task as ``_run_job`` uses it: ``retry`` records what it was asked."""

    def __init__(self) -> None:
        self.retries: list[tuple[float, dict[str, Any]]] = []

    def retry(
        self, countdown: float, exc: Exception | None = None, kwargs: dict[str, Any] | None = None
    ) -> Retried:
        self.retries.append((countdown, dict(kwargs or {})))
        return Retried()


class UnreachableStorage:
    """A storage that cannot be reached (no input read ever works)."""

    def read_input(self, reference: str) -> bytes:
        raise StorageUnavailable(UNAVAILABLE)

    def delete_input(self, reference: str) -> None:
        pass


def test_the_celery_task_retries_a_storage_outage_then_fails_the_job_with_503(
    tmp_path: Path, tiny_settings, short_storage_retries, monkeypatch: pytest.MonkeyPatch
):
    store = SQLJobStore(sqlite_url(tmp_path / "jobs.sqlite3"))
    pool = WorkerPool(tiny_settings, store, engine=None, storage=UnreachableStorage())  # type: ignore[arg-type]
    published: list[str] = []
    rt = SimpleNamespace(
        settings=tiny_settings,
        store=store,
        pool=pool,
        broker=SimpleNamespace(publish=lambda channel, message: published.append(message)),
        channel="done",
    )
    monkeypatch.setattr(celery_tasks, "missing_on_worker", lambda *args: None)
    job = store.create("", {"input_path": "s3://bucket/_inputs/x.input", "model": "tiny"})
    task = RecordingTask()
    kwargs: dict[str, Any] = {}
    started = time.monotonic()
    while True:
        try:
            outcome = celery_tasks._run_job(task, rt, job.id, **kwargs)  # type: ignore[arg-type]
            break
        except Retried:
            countdown, kwargs = task.retries[-1]
            # RUNNING under this process's lease until the retry is due, and not counted as a
            # worker's death (more retries than MAX_JOB_ATTEMPTS here).
            assert store.get(job.id).status == RUNNING  # type: ignore[union-attr]
            time.sleep(countdown)
    elapsed = time.monotonic() - started
    assert outcome == "ran"
    countdowns = [countdown for countdown, _ in task.retries]
    assert countdowns[:3] == pytest.approx([0.05, 0.1, 0.2], abs=0.01)
    assert all(countdown <= 0.2 + 1e-9 for countdown in countdowns)
    assert len(countdowns) > celery_tasks.MAX_JOB_ATTEMPTS
    assert [kw["storage_failures"] for _, kw in task.retries] == list(range(1, len(countdowns) + 1))
    assert len({kw["storage_failing_since"] for _, kw in task.retries}) == 1
    assert 0.6 <= elapsed < 5
    failed = store.get(job.id)
    assert failed is not None and failed.status == FAILED and failed.error_status == 503
    assert failed.error == f"{UNAVAILABLE}; gave up after retrying for 1 s"
    assert published == [str(job.id)]  # its waiters are told


def test_a_fresh_message_after_many_storage_retries_is_not_taken_for_dead_workers(
    tmp_path: Path, tiny_settings, short_storage_retries, monkeypatch: pytest.MonkeyPatch
):
    """Each storage retry gives its attempt back: a message the beat sends afresh (its worker
    died during the wait), with no retry count, finds the attempts of one claim only."""
    store = SQLJobStore(sqlite_url(tmp_path / "jobs.sqlite3"))
    pool = WorkerPool(tiny_settings, store, engine=None, storage=UnreachableStorage())  # type: ignore[arg-type]
    rt = SimpleNamespace(
        settings=tiny_settings,
        store=store,
        pool=pool,
        broker=SimpleNamespace(publish=lambda channel, message: None),
        channel="done",
    )
    monkeypatch.setattr(celery_tasks, "missing_on_worker", lambda *args: None)
    monkeypatch.setattr(worker, "STORAGE_RETRY_LIMIT_SECONDS", 60.0)  # not given up here
    job = store.create("", {"input_path": "s3://bucket/_inputs/x.input", "model": "tiny"})
    task, kwargs = RecordingTask(), {}
    for _ in range(celery_tasks.MAX_JOB_ATTEMPTS + 2):
        with pytest.raises(Retried):
            celery_tasks._run_job(task, rt, job.id, **kwargs)  # type: ignore[arg-type]
        countdown, kwargs = task.retries[-1]
        time.sleep(countdown)
    assert store.get(job.id).attempts == 0  # type: ignore[union-attr]
    # The fresh message: no storage_failures; the storage still fails, so it retries again
    # rather than fail the job as "stopped its worker process repeatedly".
    with pytest.raises(Retried):
        celery_tasks._run_job(task, rt, job.id)  # type: ignore[arg-type]
    assert store.get(job.id).status == RUNNING  # type: ignore[union-attr]


@pytest.fixture
def subject_url(file_server) -> str:
    base, root = file_server
    subject_image()[0].save(root / "storage-retries.png")
    return f"{base}/storage-retries.png"


def _failing_writes(server: Any, failures: int | None) -> list[float]:
    """Make the server's output writes raise StorageUnavailable ``failures`` times (None: for
    good); returns the times of the failed writes."""
    storage = server.state.pool.storage
    real_write = storage.write_output
    failed: list[float] = []

    def write_output(*args: Any) -> str:
        if failures is None or len(failed) < failures:
            failed.append(time.monotonic())
            raise StorageUnavailable(UNAVAILABLE)
        return real_write(*args)

    storage.write_output = write_output  # the instance attribute shadows the method
    return failed


def test_the_embedded_mode_retries_in_place_and_the_job_succeeds(
    live_server, tiny_settings, subject_url, short_storage_retries
):
    server = live_server(tiny_settings, workers=1)
    failed = _failing_writes(server, failures=3)
    answer = post(server.url, {"image": subject_url})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "success" and len(failed) == 3
    waits = [later - earlier for earlier, later in zip(failed, failed[1:], strict=False)]
    assert waits[0] >= 0.05 and waits[1] >= 0.1  # backoff, not a busy loop
    assert httpx.get(body["output"][0], timeout=30).status_code == 200


def test_the_embedded_mode_fails_the_job_with_503_after_the_bound(
    live_server, tiny_settings, subject_url, short_storage_retries
):
    server = live_server(tiny_settings, workers=1)
    failed = _failing_writes(server, failures=None)
    answer = post(server.url, {"image": subject_url})
    assert answer.status_code == 503, answer.text
    message = answer.json()["message"]
    assert message == f"{UNAVAILABLE}; gave up after retrying for 1 s"
    assert failed[-1] - failed[0] >= 0.5 and len(failed) >= 3


def test_an_accepted_job_is_answered_processing_when_the_store_fails_while_it_waits(
    live_server, tiny_settings, subject_url
):
    """Embedded mode: the store fails at the end of the request's wait; the job runs on."""
    server = live_server(tiny_settings, workers=1, sync_wait=1.0)
    store, engine = server.state.store, server.state.engine
    real_get, real_remove = store.get, engine.remove
    store_down, job_may_run = threading.Event(), threading.Event()

    def get(job_id: int) -> Any:
        if store_down.is_set():
            raise RuntimeError("injected: the job store is unreachable")
        return real_get(job_id)

    def remove(*args: Any, **kwargs: Any) -> Any:
        store_down.set()  # the job was created and claimed: its request waits for it
        job_may_run.wait(30)
        return real_remove(*args, **kwargs)

    store.get, engine.remove = get, remove
    try:
        answer = post(server.url, {"image": subject_url}, timeout=60)
    finally:
        store_down.clear()
        job_may_run.set()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "processing", body
    assert body["fetch_result"] == f"{server.url}/api/v5/fetch/{body['id']}"
    assert wait_done(server.url, body["id"], timeout=60)["status"] == "success"


def test_a_job_the_broker_refused_is_failed_or_else_kept_for_the_beat(tiny_settings, tmp_path):
    """Distributed mode: a job whose task cannot be sent is failed (the client gets 503: never
    accepted); when the store cannot fail it either, it stays queued (the beat sends it once
    the broker is back) and submit returns: the client is answered "processing"."""
    from alphacut.errors import BrokerUnavailable
    from alphacut.jobs.dispatch import CeleryDispatcher
    from alphacut.jobs.store import QUEUED

    no_broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    store = SQLJobStore(sqlite_url(tmp_path / "jobs.sqlite3"))
    dispatcher = CeleryDispatcher(tiny_settings.model_copy(update={"broker_url": no_broker}), store)
    try:
        refused = store.create("", {"input_path": "x.input"})
        with pytest.raises(BrokerUnavailable):
            asyncio.run(dispatcher.submit(refused))
        assert store.get(refused.id).status == FAILED  # type: ignore[union-attr]

        def fail(*args: Any) -> None:
            raise RuntimeError("injected: the job store is unreachable")

        kept = store.create("", {"input_path": "y.input"})
        store.fail = fail  # type: ignore[method-assign]
        asyncio.run(dispatcher.submit(kept))
        assert store.get(kept.id).status == QUEUED  # type: ignore[union-attr]
    finally:
        dispatcher.broker.close()
