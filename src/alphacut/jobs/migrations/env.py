"""Alembic's entry point: runs the migrations on the connection ``alphacut.jobs.migrate`` gives.

Only online migrations on a connection passed in ``config.attributes``; the database URL and
the connection set-up (SQLite pragmas, PostgreSQL driver) stay in one place, the store's engine.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlalchemy.engine import Connection

from alphacut.jobs.schema import metadata

# Any fixed number: the key of the PostgreSQL advisory lock that serialises upgrades.
MIGRATION_LOCK = 0x616C7068

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "the job database migrations run through `alphacut db upgrade` "
        "(alphacut.jobs.migrate), which passes the connection"
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode there.
    render_as_batch=connection.dialect.name == "sqlite",
    # SQLite has transactional DDL too (the store's engine sends BEGIN itself): a migration
    # that fails half-way leaves the database as it was.
    transactional_ddl=True,
)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Two nodes running `alphacut db upgrade` at once: the second waits, then finds the
        # database at head. Released at commit.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context.run_migrations()
