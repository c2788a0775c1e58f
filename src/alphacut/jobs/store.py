"""The job store interface and its SQL implementation (SQLite embedded, or PostgreSQL).

The interface is deliberately small (create, claim, finish, fail, get, list-by-status, plus
webhook bookkeeping) so every node of a cluster can share one database. Jobs are claimed with a
lease: a worker that dies (kill -9, power loss) stops renewing it, and the job becomes
claimable again. A restarted server also takes back at once the jobs that a dead process on the
same host was running.

Claims are atomic with any number of workers: on PostgreSQL the claiming SELECT locks the row
and skips rows other claimers hold (``FOR UPDATE SKIP LOCKED``); on SQLite a write transaction
takes the database's write lock at BEGIN (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, RowMapping

from alphacut.health import pid_alive
from alphacut.jobs.database import WRITE, create_database_engine, display_url, sqlite_url
from alphacut.jobs.migrate import check_database_current, upgrade_database
from alphacut.jobs.schema import jobs

__all__ = [
    "FAILED",
    "QUEUED",
    "RUNNING",
    "SUCCESS",
    "ClaimableJob",
    "Job",
    "JobStore",
    "SQLJobStore",
    "sqlite_url",
    "worker_identity",
]

QUEUED, RUNNING, SUCCESS, FAILED = "queued", "running", "success", "failed"


@dataclass
class Job:
    id: int
    status: str
    owner: str  # hash of the API key that created the job ("" when the server is open)
    created_at: float
    request: dict[str, Any]
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    attempts: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    error_status: int | None = None
    generation_time: float | None = None
    expires_at: float | None = None
    webhook_status: str | None = None
    webhook_attempts: list[dict[str, Any]] = field(default_factory=list)
    webhook_next_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status in (SUCCESS, FAILED)


@dataclass(frozen=True)
class ClaimableJob:
    """A job that no worker holds (``JobStore.claimable``): its id, claims so far, and the
    queue its API node sent it to (None on jobs from before nodes recorded it)."""

    id: int
    attempts: int
    queue: str | None


class JobStore(Protocol):
    """What the workers, the webhook sender and the service use."""

    def create(
        self, owner: str, request: dict[str, Any], max_pending: int | None = None
    ) -> Job: ...
    def claim(self, worker: str, lease_seconds: float) -> Job | None: ...
    def claim_id(self, job_id: int, worker: str, lease_seconds: float) -> Job | None: ...
    def claimable(
        self, now: float, queued_before: float, limit: int = 1000
    ) -> list[ClaimableJob]: ...
    def renew(self, job_id: int, worker: str, lease_seconds: float) -> None: ...
    def hold_for_retry(self, job_id: int, worker: str, seconds: float) -> None: ...
    def requeue_dead_local(self, own: str | None = None) -> int: ...
    def finish(
        self, job_id: int, result: dict[str, Any], generation_time: float, expires_at: float | None
    ) -> None: ...
    def fail(self, job_id: int, message: str, status_code: int) -> None: ...
    def get(self, job_id: int) -> Job | None: ...
    def list_by_status(self, status: str, limit: int = 1000) -> list[Job]: ...
    def count_by_status(self) -> dict[str, int]: ...
    def pending_for_owner(self, owner: str) -> int: ...
    def queue_position(self, job_id: int) -> int: ...
    def record_webhook(
        self, job_id: int, status: str, attempt: dict[str, Any] | None, next_at: float | None
    ) -> None: ...
    def take_due_webhooks(
        self, now: float, lease_seconds: float, limit: int = 100
    ) -> list[Job]: ...
    def take_webhook(self, job_id: int, now: float, lease_seconds: float) -> Job | None: ...
    def due_webhook_ids(self, now: float, limit: int = 1000) -> list[int]: ...
    def expired(self, now: float, limit: int = 500) -> list[Job]: ...
    def delete(self, job_id: int) -> None: ...
    def mean_generation_time(self, last: int = 50) -> float | None: ...


class QueueFull(Exception):
    """The owner already has as many unfinished jobs as it may."""

    def __init__(self, pending: int) -> None:
        super().__init__(f"{pending} unfinished jobs")
        self.pending = pending


# The first key of the two-key PostgreSQL advisory locks on an owner's queue (any fixed number,
# other than the migrations' lock).
OWNER_LOCK_SPACE = 7_001


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone_from_this_host(worker: str | None, own: str | None = None) -> bool:
    """True if ``worker`` (a ``worker_identity()``) is a process of this host that no longer
    runs, or is ``own`` (the caller's identity, reused by a restarted process)."""
    name, _, pid = (worker or "").rpartition(":")
    if name != socket.gethostname():
        return False
    return worker == own or (pid.isdigit() and not pid_alive(int(pid)))


def _take_statement(*conditions: sa.ColumnElement[bool]) -> sa.Update:
    """UPDATE of the job ``:job_id`` to RUNNING under ``:taker``'s lease (one more attempt),
    where ``conditions`` hold, RETURNING the job. Built once: building costs more than a run."""
    return (
        jobs.update()
        .where(jobs.c.id == sa.bindparam("job_id"), *conditions)
        .values(
            status=RUNNING,
            worker=sa.bindparam("taker"),
            started_at=sa.bindparam("now"),
            lease_until=sa.bindparam("lease_until"),
            attempts=jobs.c.attempts + 1,
        )
        .returning(*jobs.c)
    )


_TAKE = _take_statement()
# A queued job is taken in one statement: the row lock makes it atomic among claimers.
_TAKE_QUEUED = _take_statement(jobs.c.status == QUEUED)


def _take(
    connection: sa.Connection,
    job_id: int,
    worker: str,
    now: float,
    lease_seconds: float,
    statement: sa.Update = _TAKE,
) -> Job | None:
    """Mark ``job_id`` RUNNING under ``worker``'s lease with ``statement``; the job, or None
    if the statement's conditions did not hold."""
    values = {"job_id": job_id, "taker": worker, "now": now, "lease_until": now + lease_seconds}
    row = connection.execute(statement, values).mappings().first()
    return None if row is None else _to_job(row)


# Built once: get() runs for every fetch and every waiting request, and building a statement
# costs more than SQLite takes to run it.
_BY_ID = jobs.select().where(jobs.c.id == sa.bindparam("job_id"))


def _to_job(row: RowMapping) -> Job:
    return Job(
        id=row["id"],
        status=row["status"],
        owner=row["owner"],
        created_at=row["created_at"],
        request=json.loads(row["request"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        worker=row["worker"],
        attempts=row["attempts"],
        result=json.loads(row["result"]) if row["result"] else None,
        error=row["error"],
        error_status=row["error_status"],
        generation_time=row["generation_time"],
        expires_at=row["expires_at"],
        webhook_status=row["webhook_status"],
        webhook_attempts=json.loads(row["webhook_attempts"] or "[]"),
        webhook_next_at=row["webhook_next_at"],
    )


class SQLJobStore:
    """Thread-safe; each call takes a pooled connection for one short transaction.

    ``url`` is an ``ALPHACUT_DATABASE_URL``. A SQLite database is brought to the current schema
    on opening (the embedded server owns its file); a PostgreSQL one must already be there
    (``alphacut db upgrade``), else DatabaseNotReady. ``migrate`` overrides that choice.
    """

    def __init__(self, url: str, *, migrate: bool | None = None) -> None:
        self.url = display_url(url)
        self.engine: Engine = create_database_engine(url)
        self._postgres = self.engine.dialect.name == "postgresql"
        if migrate if migrate is not None else not self._postgres:
            upgrade_database(self.engine)
        else:
            check_database_current(self.engine)
        # Whether the request named a webhook: set in the same UPDATE that ends a job, so a
        # crash between "job done" and "webhook queued" cannot lose the delivery.
        if self._postgres:
            self._requests_webhook = sa.literal_column("(request::jsonb ->> 'webhook')").is_not(
                None
            )
        else:
            self._requests_webhook = sa.func.json_extract(jobs.c.request, "$.webhook").is_not(None)
        # The queue its API node sent the job to (request["queue"]; absent on older jobs).
        self._requested_queue: sa.ColumnElement[Any]
        if self._postgres:
            self._requested_queue = sa.literal_column("(request::jsonb ->> 'queue')")
        else:
            self._requested_queue = sa.func.json_extract(jobs.c.request, "$.queue")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """For one statement (on SQLite it runs without BEGIN, in autocommit mode)."""
        with self.engine.connect() as connection:
            yield connection

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One transaction, committed when the block ends without an exception."""
        with self.engine.connect() as connection:
            connection.execution_options(**WRITE)
            with connection.begin():
                yield connection

    def _webhook_due(self, first_attempt_at: float) -> dict[str, Any]:
        """The SET clauses that queue the job's webhook, if it asked for one, once."""
        newly_due = sa.and_(self._requests_webhook, jobs.c.webhook_status.is_(None))
        return {
            "webhook_status": sa.case((newly_due, "pending"), else_=jobs.c.webhook_status),
            "webhook_next_at": sa.case((newly_due, first_attempt_at), else_=jobs.c.webhook_next_at),
        }

    def create(self, owner: str, request: dict[str, Any], max_pending: int | None = None) -> Job:
        """A new queued job; QueueFull if ``owner`` already has ``max_pending`` unfinished jobs.

        The count and the insert are one transaction that holds the owner's lock (SQLite: the
        write lock BEGIN IMMEDIATE takes; PostgreSQL: an advisory lock on the owner), so
        requests sent at once, to one server or many, cannot all pass the same count."""
        insert = (
            jobs.insert()
            .values(status=QUEUED, owner=owner, created_at=time.time(), request=json.dumps(request))
            .returning(*jobs.c)
        )
        with self._writing() as connection:
            if max_pending is not None:
                if self._postgres:
                    lock = sa.text("SELECT pg_advisory_xact_lock(:space, hashtext(:owner))")
                    connection.execute(lock, {"space": OWNER_LOCK_SPACE, "owner": owner})
                pending = connection.execute(
                    sa.select(sa.func.count())
                    .select_from(jobs)
                    .where(jobs.c.owner == owner, jobs.c.status.in_((QUEUED, RUNNING)))
                ).scalar_one()
                if pending >= max_pending:
                    raise QueueFull(int(pending))
            return _to_job(connection.execute(insert).mappings().one())

    def claim(self, worker: str, lease_seconds: float) -> Job | None:
        now = time.time()
        claimable = (
            sa.select(jobs.c.id)
            .where(
                sa.or_(
                    jobs.c.status == QUEUED,
                    sa.and_(jobs.c.status == RUNNING, jobs.c.lease_until < now),
                )
            )
            .order_by(jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)  # nothing on SQLite: BEGIN IMMEDIATE locks
        )
        with self._writing() as connection:
            job_id = connection.execute(claimable).scalar()
            if job_id is None:
                return None
            return _take(connection, job_id, worker, now, lease_seconds)

    def claim_id(self, job_id: int, worker: str, lease_seconds: float) -> Job | None:
        """Claim one given job (a Celery task names it): None if it is done, missing, or
        running under another worker's live lease. A RUNNING job whose worker process on this
        host is gone is taken over at once, without waiting for its lease to run out."""
        now = time.time()
        with self._writing() as connection:
            # The usual case, a queued job, in one round trip; the rest below.
            taken = _take(connection, job_id, worker, now, lease_seconds, _TAKE_QUEUED)
            if taken is not None:
                return taken
            row = (
                connection.execute(
                    sa.select(jobs.c.status, jobs.c.worker, jobs.c.lease_until)
                    .where(jobs.c.id == job_id)
                    .with_for_update()  # nothing on SQLite: BEGIN IMMEDIATE locks
                )
                .mappings()
                .first()
            )
            if row is None or row["status"] not in (QUEUED, RUNNING):
                return None
            # The job's own worker may take it back: a process runs one task at a time, so its
            # earlier attempt has ended (say, on a database outage) without recording an end.
            if (
                row["status"] == RUNNING
                and (row["lease_until"] or 0) >= now
                and row["worker"] != worker
            ):
                if not _gone_from_this_host(row["worker"]):
                    return None
            return _take(connection, job_id, worker, now, lease_seconds)

    def claimable(self, now: float, queued_before: float, limit: int = 1000) -> list[ClaimableJob]:
        """The jobs a worker could claim now: queued since before ``queued_before`` (a younger
        one may still be on its way to the broker from its API node), or running on an
        expired lease."""
        query = (
            sa.select(jobs.c.id, jobs.c.attempts, self._requested_queue)
            .where(
                sa.or_(
                    sa.and_(jobs.c.status == QUEUED, jobs.c.created_at < queued_before),
                    sa.and_(jobs.c.status == RUNNING, jobs.c.lease_until < now),
                )
            )
            # Expired leases first: a dead worker's job must not wait behind a long backlog
            # of queued jobs, whose messages are mostly still in their queues.
            .order_by(sa.case((jobs.c.status == RUNNING, 0), else_=1), jobs.c.id)
            .limit(limit)
        )
        with self._reading() as connection:
            return [
                ClaimableJob(int(job_id), int(attempts), queue)
                for job_id, attempts, queue in connection.execute(query)
            ]

    def renew(self, job_id: int, worker: str, lease_seconds: float) -> None:
        with self._writing() as connection:
            connection.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.status == RUNNING)
                .values(lease_until=time.time() + lease_seconds)
            )

    def hold_for_retry(self, job_id: int, worker: str, seconds: float) -> None:
        """Keep ``worker``'s claim on a RUNNING job for ``seconds`` more, and take back the
        attempt it counted: the job will be tried again (its storage was unavailable), and
        that is no worker's death, which ``attempts`` counts against MAX_JOB_ATTEMPTS."""
        with self._writing() as connection:
            connection.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.status == RUNNING)
                .values(lease_until=time.time() + seconds, attempts=jobs.c.attempts - 1)
            )

    def requeue_dead_local(self, own: str | None = None) -> int:
        """Give back jobs whose worker process on this host no longer exists.

        ``own`` is the caller's identity; call this before the caller starts working, so its
        RUNNING jobs belong to an earlier process that had the same pid (in a container the
        server is often pid 1 after every restart, and a live pid would not look dead).
        """
        requeued = 0
        for job in self.list_by_status(RUNNING):
            if _gone_from_this_host(job.worker, own):
                with self._writing() as connection:
                    # Still that worker's: its lease may have run out and another node claimed it.
                    connection.execute(
                        jobs.update()
                        .where(
                            jobs.c.id == job.id,
                            jobs.c.status == RUNNING,
                            jobs.c.worker == job.worker,
                        )
                        .values(status=QUEUED, worker=None, lease_until=None)
                    )
                requeued += 1
        return requeued

    def finish(
        self, job_id: int, result: dict[str, Any], generation_time: float, expires_at: float | None
    ) -> None:
        now = time.time()
        with self._writing() as connection:
            connection.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(
                    status=SUCCESS,
                    result=json.dumps(result),
                    generation_time=generation_time,
                    finished_at=now,
                    expires_at=expires_at,
                    lease_until=None,
                    **self._webhook_due(now),
                )
            )

    def fail(self, job_id: int, message: str, status_code: int) -> None:
        now = time.time()
        with self._writing() as connection:
            connection.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(
                    status=FAILED,
                    error=message,
                    error_status=status_code,
                    finished_at=now,
                    lease_until=None,
                    **self._webhook_due(now),
                )
            )

    def get(self, job_id: int) -> Job | None:
        with self._reading() as connection:
            row = connection.execute(_BY_ID, {"job_id": job_id}).mappings().first()
        return _to_job(row) if row is not None else None

    def _select_jobs(self, query: sa.Select[Any]) -> list[Job]:
        with self._reading() as connection:
            return [_to_job(row) for row in connection.execute(query).mappings()]

    def list_by_status(self, status: str, limit: int = 1000) -> list[Job]:
        return self._select_jobs(
            jobs.select().where(jobs.c.status == status).order_by(jobs.c.id).limit(limit)
        )

    def count_by_status(self) -> dict[str, int]:
        query = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        with self._reading() as connection:
            return {status: count for status, count in connection.execute(query)}

    def _count(self, *conditions: sa.ColumnElement[bool]) -> int:
        query = sa.select(sa.func.count()).select_from(jobs).where(*conditions)
        with self._reading() as connection:
            return int(connection.execute(query).scalar_one())

    def pending_for_owner(self, owner: str) -> int:
        return self._count(jobs.c.owner == owner, jobs.c.status.in_((QUEUED, RUNNING)))

    def queue_position(self, job_id: int) -> int:
        """How many unfinished jobs are ahead of this one (0 = it is next or running)."""
        return self._count(jobs.c.id < job_id, jobs.c.status.in_((QUEUED, RUNNING)))

    def record_webhook(
        self, job_id: int, status: str, attempt: dict[str, Any] | None, next_at: float | None
    ) -> None:
        with self._writing() as connection:
            # Read-modify-write of the attempts list: the row stays locked until the update.
            stored = connection.execute(
                sa.select(jobs.c.webhook_attempts).where(jobs.c.id == job_id).with_for_update()
            ).scalar()
            attempts = json.loads(stored or "[]")
            if attempt is not None:
                attempts.append(attempt)
            connection.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(
                    webhook_status=status,
                    webhook_attempts=json.dumps(attempts),
                    webhook_next_at=next_at,
                )
            )

    def take_due_webhooks(self, now: float, lease_seconds: float, limit: int = 100) -> list[Job]:
        """Due deliveries, each pushed ``lease_seconds`` ahead so no other poll takes it too.

        The attempt's outcome sets the real next time; if the sender dies mid-attempt the
        lease runs out and the delivery is tried again.
        """
        due = (
            jobs.select()
            .where(jobs.c.webhook_status == "pending", jobs.c.webhook_next_at <= now)
            .order_by(jobs.c.webhook_next_at)
            .limit(limit)
            .with_for_update(skip_locked=True)  # another node's poll takes the others
        )
        with self._writing() as connection:
            taken = [_to_job(row) for row in connection.execute(due).mappings()]
            if taken:
                connection.execute(
                    jobs.update()
                    .where(jobs.c.id.in_([job.id for job in taken]))
                    .values(webhook_next_at=now + lease_seconds)
                )
        return taken

    def take_webhook(self, job_id: int, now: float, lease_seconds: float) -> Job | None:
        """``take_due_webhooks`` for one job: the job if its delivery is due and no one else
        holds it, its next time pushed ``lease_seconds`` ahead; else None."""
        due = (
            jobs.select()
            .where(
                jobs.c.id == job_id,
                jobs.c.webhook_status == "pending",
                jobs.c.webhook_next_at <= now,
            )
            .with_for_update(skip_locked=True)
        )
        with self._writing() as connection:
            row = connection.execute(due).mappings().first()
            if row is None:
                return None
            connection.execute(
                jobs.update().where(jobs.c.id == job_id).values(webhook_next_at=now + lease_seconds)
            )
            return _to_job(row)

    def due_webhook_ids(self, now: float, limit: int = 1000) -> list[int]:
        query = (
            sa.select(jobs.c.id)
            .where(jobs.c.webhook_status == "pending", jobs.c.webhook_next_at <= now)
            .order_by(jobs.c.webhook_next_at)
            .limit(limit)
        )
        with self._reading() as connection:
            return [int(job_id) for job_id in connection.execute(query).scalars()]

    def expired(self, now: float, limit: int = 500) -> list[Job]:
        return self._select_jobs(
            jobs.select()
            .where(
                jobs.c.expires_at.is_not(None),
                jobs.c.expires_at <= now,
                sa.or_(jobs.c.webhook_status.is_(None), jobs.c.webhook_status != "pending"),
            )
            .limit(limit)
        )

    def delete(self, job_id: int) -> None:
        with self._writing() as connection:
            connection.execute(jobs.delete().where(jobs.c.id == job_id))

    def mean_generation_time(self, last: int = 50) -> float | None:
        recent = (
            sa.select(jobs.c.generation_time)
            .where(jobs.c.status == SUCCESS)
            .order_by(jobs.c.id.desc())
            .limit(last)
            .subquery()
        )
        with self._reading() as connection:
            mean = connection.execute(sa.select(sa.func.avg(recent.c.generation_time))).scalar()
        return float(mean) if mean is not None else None
