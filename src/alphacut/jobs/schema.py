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

# Managed API keys (`alphacut keys ...`, jobs/keys.py): only a peppered hash of each key is kept.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", JobId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text(), nullable=False, server_default=sa.text("''")),
    # Hex HMAC-SHA256 of the key with the server's pepper (ALPHACUT_KEY_PEPPER).
    sa.Column("key_hash", sa.Text(), nullable=False, unique=True),
    # Per-key limits; NULL means the server's default (the matching ALPHACUT_* setting).
    sa.Column("queue_limit", sa.Integer()),
    sa.Column("rate_limit", sa.Integer()),  # requests per minute
    sa.Column("megapixel_limit", Seconds),  # megapixels per minute
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("last_used_at", Seconds),
    sa.Column("revoked_at", Seconds),
    # Ids are never reused: a revoked key's id must not come to name a new key.
    sqlite_autoincrement=True,
)

# Rate-limit counters shared by every server on the database (jobs/ratelimits.py): one row per
# owner (hash of the key) and minute since the epoch.
rate_windows = sa.Table(
    "rate_windows",
    metadata,
    sa.Column("owner", sa.Text(), primary_key=True),
    sa.Column("minute", sa.BigInteger(), primary_key=True),
    sa.Column("requests", sa.Integer(), nullable=False, server_default=sa.text("0")),
    sa.Column("pixels", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
)
