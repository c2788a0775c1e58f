"""Schema migrations of the job database (Alembic, run from code: no alembic.ini).

``alphacut db upgrade`` and the embedded (SQLite) server call ``upgrade_database``; a server on
PostgreSQL calls ``check_database_current`` instead, so a shared schema changes only when an
operator runs the upgrade.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from alphacut.errors import AlphacutError
from alphacut.jobs.database import WRITE

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class DatabaseNotReady(AlphacutError):
    """The job database's schema is not the one this version of alphacut uses."""

    status_code = 503


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "the migrations have no head"
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty or a pre-migration database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_database(engine: Engine, revision: str = "head") -> str | None:
    """Apply the migrations up to ``revision``; returns the revision the database is then at.

    Safe to run from several processes at once: on PostgreSQL the migration holds an advisory
    lock (migrations/env.py); on SQLite the transaction takes the write lock.
    """
    with engine.connect() as connection:
        connection.execution_options(**WRITE)
        command.upgrade(_config(connection), revision)
        connection.commit()
    return current_revision(engine)


def check_database_current(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise DatabaseNotReady(
            f"the job database is at schema revision {current or 'none'}, this alphacut needs "
            f"{head}: run `alphacut db upgrade` (with the same ALPHACUT_DATABASE_URL)"
        )
