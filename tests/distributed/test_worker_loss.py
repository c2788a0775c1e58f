"""Losing a whole worker, the beat's included, on the real services (PostgreSQL, Redis, the S3
bucket) and real ``alphacut worker`` processes; and the beat's re-send pass, which finds the
jobs no live worker will run: past a grace period, to their own queue, and those whose
message a dead worker held (docs/scaling.md, "What survives what").
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from redis import Redis

import tests.distributed.test_cluster_processes as cluster_processes
from alphacut.config import Settings
from alphacut.io.storage import open_storage
from alphacut.jobs.celery_app import (
    BEAT_LOOP_SECONDS,
    REQUEUE_INTERVAL,
    SEND_GRACE_SECONDS,
    create_celery,
    record_receiver,
    requeue_pass,
    send_job,
)
from alphacut.jobs.database import create_database_engine
from alphacut.jobs.migrate import upgrade_database
from alphacut.jobs.schema import jobs
from alphacut.jobs.store import RUNNING, SUCCESS, SQLJobStore
from alphacut.jobs.worker import LEASE_SECONDS
from alphacut.jobs.worker_models import ANNOUNCE_TTL, WorkerAnnouncement, announce
from tests.cluster import Cluster, WorkerProcess, find_redis
from tests.conftest import LiveServer
from tests.jobhelpers import post, wait_until
from tests.services import find_postgres, scratch_postgres_database

own_cluster = cluster_processes.own_cluster  # a database, broker prefix and bucket of its own

# Seconds a message takes from the pass to a free worker's claim, on a loaded test machine.
DELIVERY_SLACK = 5.0
# The bounds docs/scaling.md states, from a worker's SIGKILL to its jobs' next claim: a job it
# was running, once its lease has run out; a message it held unstarted, once its announcement
# has expired (the beat's takeover, within BEAT_LOCK_SECONDS, fits in either).
RUNNING_JOB_BOUND = LEASE_SECONDS + REQUEUE_INTERVAL + BEAT_LOOP_SECONDS
HELD_MESSAGE_BOUND = ANNOUNCE_TTL + REQUEUE_INTERVAL + BEAT_LOOP_SECONDS


# --- the re-send pass, on its own ------------------------------------------------------


@dataclass
class PassSetup:
    store: SQLJobStore
    broker: Redis
    settings: Settings

    def job(self, age: float = 0.0, **request: object) -> int:
        """A queued job created ``age`` seconds ago, with no message."""
        job_id = self.store.create("", {"image": "x.png", **request}).id
        with self.store.engine.begin() as connection:
            connection.execute(
                jobs.update().where(jobs.c.id == job_id).values(created_at=time.time() - age)
            )
        return job_id

    def resend(self) -> int:
        app = create_celery(self.settings)
        return requeue_pass(app, self.broker, self.store, self.settings)

    def waiting(self, queue: str) -> list[int]:
        """The job ids of the messages waiting in ``queue``."""
        raw = self.broker.lrange(self.settings.broker_prefix + queue, 0, -1)
        return sorted(int(json.loads(m)["headers"]["argsrepr"].strip("[](),")) for m in raw)


@pytest.fixture
def requeue_setup() -> Iterator[PassSetup]:
    postgres, why = find_postgres()
    redis_server, why_not = find_redis()
    if postgres is None or redis_server is None:
        pytest.skip(f"DISTRIBUTED MODE NOT TESTED: {why or why_not}")
    with scratch_postgres_database(postgres) as url:
        engine = create_database_engine(url)
        upgrade_database(engine)
        engine.dispose()
        prefix = f"test-{secrets.token_hex(4)}:"
        settings = Settings(database_url=url, broker_url=f"{redis_server}/0", broker_prefix=prefix)
        store = SQLJobStore(url)
        broker = Redis.from_url(settings.broker_url)
        try:
            yield PassSetup(store, broker, settings)
        finally:
            store.close()
            for key in broker.scan_iter(match=f"{prefix}*"):
                broker.delete(key)
            broker.close()


def test_a_job_younger_than_the_grace_is_left_to_its_api_node(requeue_setup):
    fresh = requeue_setup.job()  # created moments ago; its node may be about to send it
    old = requeue_setup.job(age=SEND_GRACE_SECONDS + 1)  # its node died before sending it
    assert requeue_setup.resend() == 1
    assert requeue_setup.waiting("cpu") == [old]
    assert requeue_setup.resend() == 0  # marked sent: not again
    assert requeue_setup.waiting("cpu") == [old] and fresh != old


def test_a_lost_job_goes_back_to_its_own_queue(requeue_setup):
    gpu = requeue_setup.job(age=60, queue="gpu")
    cpu = requeue_setup.job(age=60, queue="cpu")
    unrecorded = requeue_setup.job(age=60)  # from a node that did not record the queue
    assert requeue_setup.resend() == 3
    assert requeue_setup.waiting("gpu") == [gpu]
    assert requeue_setup.waiting("cpu") == [cpu, unrecorded]


def test_a_message_held_by_a_dead_worker_is_sent_again_once(requeue_setup):
    setup = requeue_setup
    app = create_celery(setup.settings)
    prefix = setup.settings.broker_prefix
    held_by_dead, held_by_live, in_queue = (setup.job(age=60) for _ in range(3))
    for job_id in (held_by_dead, held_by_live, in_queue):
        send_job(app, setup.broker, prefix, job_id, 0, "cpu")  # as the API node did
    setup.broker.delete(prefix + "cpu")  # taken off the queue by workers (or still there)
    announce(setup.broker, prefix, WorkerAnnouncement("alive@host", "cpu", ("tiny",)))
    record_receiver(setup.broker, prefix, held_by_dead, "gone@host")  # no announcement
    record_receiver(setup.broker, prefix, held_by_live, "alive@host")
    assert setup.resend() == 1
    assert setup.waiting("cpu") == [held_by_dead]
    assert setup.resend() == 0  # not again while the new message waits to be received


# --- real workers -----------------------------------------------------------------------


def _accepted(url: str, body: dict[str, object]) -> int:
    response = post(url, body)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


def _busy_image(root: Path) -> str:
    """A picture that keeps a tiny-model worker busy for a few seconds (with matting)."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(root / "slow.png")
    return "slow.png"


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _running_on(store: SQLJobStore, worker: WorkerProcess) -> int | None:
    """A job that one of ``worker``'s pool processes is running now, if any."""
    for job in store.list_by_status(RUNNING):
        pid = int((job.worker or "x:0").rsplit(":", 1)[1])
        if _parent_pid(pid) == worker.proc.pid:
            return job.id
    return None


def _kill_while_running(store: SQLJobStore, worker: WorkerProcess) -> tuple[int, float]:
    """SIGKILL ``worker`` (all its processes) while it runs a job: (the job, when)."""
    deadline = time.time() + 60
    while (job_id := _running_on(store, worker)) is None:
        assert time.time() < deadline, "the worker ran no job"
        time.sleep(0.05)
    worker.kill()
    return job_id, time.time()


def test_killing_any_worker_of_three_loses_no_job(own_cluster: Cluster, file_server):
    """The beat holder, then another worker, each SIGKILLed mid-job: the third takes the
    beat over, and every one of 12 jobs completes, each of the two killed ones claimed again
    within the documented bound and the others claimed once."""
    base, root = file_server
    image = _busy_image(root)
    own_cluster.start_workers(3)
    wait_until(lambda: own_cluster.beat_holder() is not None, timeout=30, what="a beat holder")
    holder = own_cluster.beat_holder()
    assert holder is not None
    other, survivor = (w for w in own_cluster.workers if w is not holder)
    store = SQLJobStore(own_cluster.settings.database_url)
    try:
        roomy = own_cluster.settings.model_copy(update={"max_queued_per_key": 12})
        with LiveServer(roomy) as api:
            body = {"image": f"{base}/{image}", "alpha_matting": True, "instant_response": True}
            ids = [_accepted(api.url, {**body, "track_id": i}) for i in range(12)]
            killed = [_kill_while_running(store, holder), _kill_while_running(store, other)]
            wait_until(
                lambda: all(store.get(job_id).done for job_id in ids),
                timeout=RUNNING_JOB_BOUND + 90,
                what="every job done",
            )
        wait_until(lambda: own_cluster.beat_holder() is survivor, timeout=5, what="takeover")
        outputs = open_storage(own_cluster.settings)
        lost = {job_id: at for job_id, at in killed}
        for job_id in ids:
            job = store.get(job_id)
            assert job.status == SUCCESS, job
            assert outputs.exists(job.result["outputs"][0])
            assert job.attempts == (2 if job_id in lost else 1), job
            if job_id in lost:
                assert job.started_at - lost[job_id] <= RUNNING_JOB_BOUND + DELIVERY_SLACK
                assert _parent_pid(int(job.worker.rsplit(":", 1)[1])) == survivor.proc.pid
    finally:
        store.close()


def _scalar(store: SQLJobStore, query: sa.TextClause) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def test_a_message_a_dead_worker_held_unstarted_is_sent_again(own_cluster: Cluster, file_server):
    """A worker takes a job's message and dies before its pool process claims the job (held
    here by a row lock): the message stays unacknowledged in Redis for the 2 h visibility
    timeout, and the surviving worker's beat sends the job again once the dead one's
    announcement has expired."""
    base, root = file_server
    image = _busy_image(root)
    store = SQLJobStore(own_cluster.settings.database_url)
    locker = create_database_engine(own_cluster.settings.database_url)
    try:
        with LiveServer(own_cluster.settings) as api:
            body = {"image": f"{base}/{image}", "instant_response": True}
            job_id = _accepted(api.url, body)  # waits in the queue: no worker yet
            with locker.connect() as connection:
                transaction = connection.begin()
                connection.execute(
                    sa.select(jobs.c.id).where(jobs.c.id == job_id).with_for_update()
                )
                (victim,) = own_cluster.start_workers(1, beat=False)
                waiting = sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                wait_until(  # another connection: a transaction sees one snapshot of it
                    lambda: _scalar(store, waiting) > 0,
                    timeout=60,
                    what="the victim's claim, blocked on the row lock",
                )
                own_cluster.start_workers(1)  # the survivor, with the beat
                victim.kill()
                killed_at = time.time()
                transaction.rollback()
            wait_until(lambda: store.get(job_id).done, timeout=HELD_MESSAGE_BOUND + 60, what="done")
        job = store.get(job_id)
        assert job.status == SUCCESS and job.attempts == 1, job
        assert job.started_at - killed_at <= HELD_MESSAGE_BOUND + DELIVERY_SLACK
    finally:
        locker.dispose()
        store.close()
