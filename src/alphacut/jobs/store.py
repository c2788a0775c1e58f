"""The job store interface and its embedded SQLite (WAL) implementation.

The interface is deliberately small (create, claim, finish, fail, get, list-by-status, plus
webhook bookkeeping) so a distributed backend can stand in for SQLite. Jobs are claimed with a
lease: a worker that dies (kill -9, power loss) stops renewing it, and the job becomes
claimable again. A restarted server also takes back at once the jobs that a dead process on the
same host was running.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

QUEUED, RUNNING, SUCCESS, FAILED = "queued", "running", "success", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    status TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    lease_until REAL,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    request TEXT NOT NULL,
    result TEXT,
    error TEXT,
    error_status INTEGER,
    generation_time REAL,
    expires_at REAL,
    webhook_status TEXT,
    webhook_attempts TEXT NOT NULL DEFAULT '[]',
    webhook_next_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, id);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, status);
"""

# Set in the same UPDATE that ends a job, so a crash between "job done" and "webhook queued"
# cannot lose the delivery. Takes one parameter: the time the first attempt is due.
_WEBHOOK_DUE = (
    "webhook_status = CASE WHEN json_extract(request, '$.webhook') IS NOT NULL "
    "AND webhook_status IS NULL THEN 'pending' ELSE webhook_status END, "
    "webhook_next_at = CASE WHEN json_extract(request, '$.webhook') IS NOT NULL "
    "AND webhook_status IS NULL THEN ? ELSE webhook_next_at END"
)


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


class JobStore(Protocol):
    def create(self, owner: str, request: dict[str, Any]) -> Job: ...
    def claim(self, worker: str, lease_seconds: float) -> Job | None: ...
    def renew(self, job_id: int, worker: str, lease_seconds: float) -> None: ...
    def finish(
        self, job_id: int, result: dict[str, Any], generation_time: float, expires_at: float | None
    ) -> None: ...
    def fail(self, job_id: int, message: str, status_code: int) -> None: ...
    def get(self, job_id: int) -> Job | None: ...
    def list_by_status(self, status: str, limit: int = 1000) -> list[Job]: ...


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SQLiteJobStore:
    """Thread-safe; one connection per thread, WAL so readers never block the writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across process crashes in WAL mode (fsync at checkpoints).
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @staticmethod
    def _to_job(row: sqlite3.Row | None) -> Job | None:
        if row is None:
            return None
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

    def create(self, owner: str, request: dict[str, Any]) -> Job:
        now = time.time()
        cur = self._conn().execute(
            "INSERT INTO jobs (status, owner, created_at, request) VALUES (?, ?, ?, ?)",
            (QUEUED, owner, now, json.dumps(request)),
        )
        job = self.get(int(cur.lastrowid or 0))
        assert job is not None
        return job

    def claim(self, worker: str, lease_seconds: float) -> Job | None:
        now = time.time()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT id FROM jobs WHERE status = ? OR (status = ? AND lease_until < ?) "
                "ORDER BY id LIMIT 1",
                (QUEUED, RUNNING, now),
            ).fetchone()
            if row is None:
                conn.execute("COMMIT")
                return None
            conn.execute(
                "UPDATE jobs SET status = ?, worker = ?, started_at = ?, lease_until = ?, "
                "attempts = attempts + 1 WHERE id = ?",
                (RUNNING, worker, now, now + lease_seconds, row["id"]),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return self.get(row["id"])

    def renew(self, job_id: int, worker: str, lease_seconds: float) -> None:
        self._conn().execute(
            "UPDATE jobs SET lease_until = ? WHERE id = ? AND worker = ? AND status = ?",
            (time.time() + lease_seconds, job_id, worker, RUNNING),
        )

    def requeue_dead_local(self, own: str | None = None) -> int:
        """Give back jobs whose worker process on this host no longer exists.

        ``own`` is the caller's identity; call this before the caller starts working, so its
        RUNNING jobs belong to an earlier process that had the same pid (in a container the
        server is often pid 1 after every restart, and a live pid would not look dead).
        """
        host = socket.gethostname()
        requeued = 0
        for job in self.list_by_status(RUNNING):
            name, _, pid = (job.worker or "").rpartition(":")
            stale = job.worker == own or (pid.isdigit() and not _pid_alive(int(pid)))
            if name == host and stale:
                self._conn().execute(
                    "UPDATE jobs SET status = ?, worker = NULL, lease_until = NULL "
                    "WHERE id = ? AND status = ?",
                    (QUEUED, job.id, RUNNING),
                )
                requeued += 1
        return requeued

    def finish(
        self, job_id: int, result: dict[str, Any], generation_time: float, expires_at: float | None
    ) -> None:
        now = time.time()
        self._conn().execute(
            "UPDATE jobs SET status = ?, result = ?, generation_time = ?, finished_at = ?, "
            f"expires_at = ?, lease_until = NULL, {_WEBHOOK_DUE} WHERE id = ?",
            (SUCCESS, json.dumps(result), generation_time, now, expires_at, now, job_id),
        )

    def fail(self, job_id: int, message: str, status_code: int) -> None:
        now = time.time()
        self._conn().execute(
            "UPDATE jobs SET status = ?, error = ?, error_status = ?, finished_at = ?, "
            f"lease_until = NULL, {_WEBHOOK_DUE} WHERE id = ?",
            (FAILED, message, status_code, now, now, job_id),
        )

    def get(self, job_id: int) -> Job | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._to_job(row)

    def list_by_status(self, status: str, limit: int = 1000) -> list[Job]:
        rows = (
            self._conn()
            .execute("SELECT * FROM jobs WHERE status = ? ORDER BY id LIMIT ?", (status, limit))
            .fetchall()
        )
        return [job for row in rows if (job := self._to_job(row)) is not None]

    def count_by_status(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        return {status: count for status, count in rows.fetchall()}

    def pending_for_owner(self, owner: str) -> int:
        row = (
            self._conn()
            .execute(
                "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN (?, ?)",
                (owner, QUEUED, RUNNING),
            )
            .fetchone()
        )
        return int(row[0])

    def queue_position(self, job_id: int) -> int:
        """How many unfinished jobs are ahead of this one (0 = it is next or running)."""
        row = (
            self._conn()
            .execute(
                "SELECT COUNT(*) FROM jobs WHERE id < ? AND status IN (?, ?)",
                (job_id, QUEUED, RUNNING),
            )
            .fetchone()
        )
        return int(row[0])

    def record_webhook(
        self, job_id: int, status: str, attempt: dict[str, Any] | None, next_at: float | None
    ) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT webhook_attempts FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            attempts = json.loads(row[0] or "[]") if row else []
            if attempt is not None:
                attempts.append(attempt)
            conn.execute(
                "UPDATE jobs SET webhook_status = ?, webhook_attempts = ?, webhook_next_at = ? "
                "WHERE id = ?",
                (status, json.dumps(attempts), next_at, job_id),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def take_due_webhooks(self, now: float, lease_seconds: float, limit: int = 100) -> list[Job]:
        """Due deliveries, each pushed ``lease_seconds`` ahead so no other poll takes it too.

        The attempt's outcome sets the real next time; if the sender dies mid-attempt the
        lease runs out and the delivery is tried again.
        """
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE webhook_status = 'pending' AND webhook_next_at <= ? "
                "ORDER BY webhook_next_at LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE jobs SET webhook_next_at = ? WHERE id = ?",
                [(now + lease_seconds, row["id"]) for row in rows],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return [job for row in rows if (job := self._to_job(row)) is not None]

    def expired(self, now: float, limit: int = 500) -> list[Job]:
        rows = (
            self._conn()
            .execute(
                "SELECT * FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ? "
                "AND (webhook_status IS NULL OR webhook_status != 'pending') LIMIT ?",
                (now, limit),
            )
            .fetchall()
        )
        return [job for row in rows if (job := self._to_job(row)) is not None]

    def delete(self, job_id: int) -> None:
        self._conn().execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def mean_generation_time(self, last: int = 50) -> float | None:
        row = (
            self._conn()
            .execute(
                "SELECT AVG(generation_time) FROM (SELECT generation_time FROM jobs "
                "WHERE status = ? ORDER BY id DESC LIMIT ?)",
                (SUCCESS, last),
            )
            .fetchone()
        )
        return float(row[0]) if row and row[0] is not None else None
