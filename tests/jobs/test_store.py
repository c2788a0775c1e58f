"""The job store (on SQLite and on PostgreSQL) and the cleanup rules, without HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from alphacut.jobs.schema import jobs
from alphacut.jobs.store import QUEUED, RUNNING, SUCCESS, QueueFull, SQLJobStore, worker_identity
from alphacut.jobs.webhooks import load_or_create_secret
from alphacut.service.responses import NOT_FOUND_BODY, fetch_body
from alphacut.service.state import ServiceState

REQUEST = {
    "webhook": None,
    "file_name": "a.png",
    "base_url": "http://x",
    "meta": {},
    "temp": False,
    "base64": False,
}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claim_order_and_lease(store):
    first, second = store.create("o", REQUEST), store.create("o", REQUEST)
    claimed = store.claim("w1", lease_seconds=60)
    assert claimed.id == first.id and claimed.status == RUNNING and claimed.attempts == 1
    assert store.claim("w2", lease_seconds=60).id == second.id
    assert store.claim("w3", lease_seconds=60) is None
    # A worker that stops renewing its lease loses the job to the next claimer.
    store.renew(first.id, "w1", lease_seconds=-1)
    again = store.claim("w3", lease_seconds=60)
    assert again.id == first.id and again.worker == "w3" and again.attempts == 2


def test_requeue_dead_local(store):
    host = socket.gethostname()
    ids = {}
    for name, worker in [
        ("dead", f"{host}:{dead_pid()}"),
        ("alive", f"{host}:{os.getppid()}"),
        ("own", worker_identity()),
        ("elsewhere", f"other-host:{dead_pid()}"),
    ]:
        ids[name] = store.create("o", REQUEST).id
        assert store.claim(worker, lease_seconds=600).id == ids[name]
    assert store.requeue_dead_local(own=worker_identity()) == 2
    status = {name: store.get(job_id).status for name, job_id in ids.items()}
    # A dead local pid, or our own identity before we started: requeued. A live process, or
    # another host (we cannot see its processes: its lease decides), keeps the job.
    assert status == {"dead": QUEUED, "own": QUEUED, "alive": RUNNING, "elsewhere": RUNNING}
    assert store.get(ids["dead"]).worker is None


def test_ending_a_job_queues_its_webhook(store):
    with_hook = store.create("o", {**REQUEST, "webhook": "http://127.0.0.1/hook"})
    without = store.create("o", REQUEST)
    failing = store.create("o", {**REQUEST, "webhook": "http://127.0.0.1/hook"})
    before = time.time()
    store.finish(with_hook.id, {"outputs": ["a.png"]}, 1.0, None)
    store.finish(without.id, {"outputs": ["b.png"]}, 1.0, None)
    store.fail(failing.id, "broken", 500)
    for job_id in (with_hook.id, failing.id):
        job = store.get(job_id)
        assert job.webhook_status == "pending" and job.webhook_next_at >= before
    assert store.get(without.id).webhook_status is None
    taken = store.take_due_webhooks(time.time(), lease_seconds=60)
    assert {job.id for job in taken} == {with_hook.id, failing.id}
    assert store.take_due_webhooks(time.time(), lease_seconds=60) == []  # leased
    store.record_webhook(with_hook.id, "delivered", {"attempt": 1, "status_code": 200}, None)
    assert store.get(with_hook.id).webhook_attempts == [{"attempt": 1, "status_code": 200}]


def test_fetch_bodies(store):
    job = store.create("o", {**REQUEST, "webhook": "http://127.0.0.1/hook"})
    body = fetch_body(store.get(job.id), eta=2.345)
    assert body == {
        "status": "processing",
        "id": job.id,
        "message": body["message"],
        "eta": 2.3,
        "output": [],
        "webhook_status": "waiting",
    }
    store.fail(job.id, "the job's input was lost", 500)
    assert fetch_body(store.get(job.id), 0) == {
        "status": "failed",
        "id": job.id,
        "message": "the job's input was lost",
        "webhook_status": "pending",
    }
    assert NOT_FOUND_BODY == {
        "status": "failed",
        "id": "",
        "message": "Request not found",
        "output": "",
    }


def test_cleanup_deletes_expired_outputs_with_their_rows(tiny_settings, database_url):
    state = ServiceState.create(tiny_settings.model_copy(update={"database_url": database_url}))
    store, storage = state.store, state.storage
    try:
        now = time.time()

        def finished(temp: bool, expires_at: float | None, webhook: str | None = None) -> int:
            job = store.create("o", {**REQUEST, "temp": temp, "webhook": webhook})
            relative = storage.write_output(f"{job.id}.png", b"png", temp, False)
            store.finish(job.id, {"outputs": [relative]}, 1.0, expires_at)
            return job.id

        expired = finished(True, now - 1)
        kept_forever = finished(False, None)
        not_yet = finished(True, now + 3600)
        hook_pending = finished(True, now - 1, webhook="http://127.0.0.1/hook")
        running = store.create("o", REQUEST).id
        store.claim("w", 60)

        assert state.cleanup(now) == 1
        assert store.get(expired) is None
        assert not (storage.root / "temp" / f"{expired}.png").exists()
        # Still fetchable, so still on disk: no expiry, not expired yet, a webhook still to
        # deliver (its payload carries the URL), or not finished at all.
        for job_id in (kept_forever, not_yet, hook_pending):
            job = store.get(job_id)
            assert job is not None and job.status == SUCCESS
            assert storage.resolve(job.result["outputs"][0]) is not None
        assert store.get(running).status == RUNNING
        store.record_webhook(hook_pending, "failed", None, None)
        assert state.cleanup(now) == 1 and store.get(hook_pending) is None
        assert store.get(kept_forever).status == SUCCESS
    finally:
        state.webhooks.close()


def test_claims_skip_rows_another_transaction_holds(store):
    if store.engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite locks the whole database per claim")
    first, second = store.create("o", REQUEST), store.create("o", REQUEST)
    with store.engine.connect() as other, other.begin():
        # Another node in the middle of claiming the first job: this claim takes the next.
        other.execute(sa.select(jobs.c.id).where(jobs.c.id == first.id).with_for_update())
        assert store.claim("w", lease_seconds=60).id == second.id
    assert store.claim("w", lease_seconds=60).id == first.id


# Run by each claiming process: threads claim and finish until the queue is empty, starting
# together at a given time so that every claimer competes for the same rows.
CLAIMER = """
import json, sys, threading, time
from alphacut.jobs.store import SQLJobStore
url, name, threads, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
store = SQLJobStore(url)
claimed = []
def work(worker):
    while (job := store.claim(worker, lease_seconds=600)) is not None:
        claimed.append([job.id, worker])
        store.finish(job.id, {"outputs": []}, 0.0, None)
workers = [threading.Thread(target=work, args=(f"{name}-{n}",)) for n in range(threads)]
time.sleep(max(0.0, start_at - time.time()))
for thread in workers: thread.start()
for thread in workers: thread.join()
print(json.dumps(claimed))
"""


def test_many_claimers_take_each_job_exactly_once(store, database_url):
    job_ids = {store.create("o", REQUEST).id for _ in range(240)}
    start_at = str(time.time() + 4)  # after every process has imported and connected
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, database_url, f"p{n}", "3", start_at],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    claims = []
    for claimer in claimers:
        out, _ = claimer.communicate(timeout=120)
        assert claimer.returncode == 0
        claims += json.loads(out)
    claimed_ids = [job_id for job_id, _ in claims]
    assert sorted(claimed_ids) == sorted(job_ids)  # every job, none twice
    assert len({worker for _, worker in claims}) > 1  # they did compete
    assert store.count_by_status() == {SUCCESS: len(job_ids)}
    assert {job.attempts for job in store.list_by_status(SUCCESS)} == {1}


def test_queue_limit_holds_for_requests_sent_at_once(database_url: str) -> None:
    """16 creates at once for an owner allowed 2 unfinished jobs: exactly 2 are made (count and
    insert are one locked transaction), on SQLite and PostgreSQL, with a store per thread as
    servers on one database have; other owners are not held up by it."""
    stores = [SQLJobStore(database_url) for _ in range(16)]
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def create(store: SQLJobStore) -> None:
        barrier.wait()
        try:
            store.create("o", REQUEST, max_pending=2)
            outcomes.append("created")
        except QueueFull as full:
            assert full.pending >= 2
            outcomes.append("refused")

    threads = [threading.Thread(target=create, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(outcomes) == ["created"] * 2 + ["refused"] * 14
        assert stores[0].pending_for_owner("o") == 2
        assert stores[0].create("other", REQUEST, max_pending=2).owner == "other"
    finally:
        for store in stores:
            store.close()


def test_sqlite_database_and_home_are_private(tmp_path: Path) -> None:
    """jobs.sqlite3 (webhook URLs, output names) and the secrets are 0600 in a 0700 home."""
    home = tmp_path / "home"
    store = SQLJobStore(f"sqlite:///{home / 'jobs.sqlite3'}")
    try:
        store.create("o", REQUEST)
        assert (home.stat().st_mode & 0o777) == 0o700
        for name in ("jobs.sqlite3", "jobs.sqlite3-wal"):
            assert (home / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        store.close()
    # The key pepper and the webhook secret are created the same way.
    secret_home = tmp_path / "secrets"
    load_or_create_secret("", secret_home, "key_pepper", "ALPHACUT_KEY_PEPPER")
    assert (secret_home.stat().st_mode & 0o777) == 0o700
    assert ((secret_home / "key_pepper").stat().st_mode & 0o777) == 0o600
