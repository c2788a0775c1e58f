"""The job table as the store queries it; the migrations in ``migrations/`` create it.

One definition for SQLite and PostgreSQL. It matches the schema the SQLite store created before
migrations existed, so adopting such a database needs no change to its table (see
``migrations/versions/v0001_jobs.py``).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# BIGINT on PostgreSQL; on SQLite only the exact type INTEGER makes the key an alias of the rowid.
JobId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Double precision everywhere; spelled REAL on SQLite, as the pre-migration schema has it.
Seconds = sa.Float().with_variant(sa.REAL(), "sqlite")

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", JobId, primary_key=True, autoincrement=True),
    sa.Column("status", sa.Text(), nullable=False),
    # Hash of the API key that created the job ("" when the server is open).
    sa.Column("owner", sa.Text(), nullable=False),
    # Times are seconds since the epoch, as time.time() gives them.
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("started_at", Seconds),
    sa.Column("finished_at", Seconds),
    sa.Column("lease_until", Seconds),
    sa.Column("worker", sa.Text()),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    # JSON documents, kept as text: the store reads and writes them whole.
    sa.Column("request", sa.Text(), nullable=False),
    sa.Column("result", sa.Text()),
    sa.Column("error", sa.Text()),
    sa.Column("error_status", sa.Integer()),
    sa.Column("generation_time", Seconds),
    sa.Column("expires_at", Seconds),
    sa.Column("webhook_status", sa.Text()),
    sa.Column("webhook_attempts", sa.Text(), nullable=False, server_default=sa.text("'[]'")),
    sa.Column("webhook_next_at", Seconds),
    # Ids only grow, never reused after a delete (SQLite's AUTOINCREMENT; a sequence elsewhere):
    # an output URL handed out for a deleted job must never name a new one.
    sqlite_autoincrement=True,
)
sa.Index("jobs_status", jobs.c.status, jobs.c.id)
sa.Index("jobs_owner", jobs.c.owner, jobs.c.status)
