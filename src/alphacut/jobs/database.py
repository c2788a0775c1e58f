"""The SQLAlchemy engine of the job database: SQLite (embedded, the default) or PostgreSQL.

Connection set-up lives here, once, for the store and the migrations alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from alphacut.errors import SettingsError

# Names SQLAlchemy would give to the psycopg2 driver; alphacut ships psycopg 3.
_POSTGRES_ALIASES = {"postgres", "postgresql"}
# Passed to Connection.execution_options: the transaction will write, so on SQLite it takes
# the write lock at BEGIN (waiting up to the busy timeout) instead of failing mid-way when
# another writer got there between its read and its write.
WRITE = {"alphacut_write": True}


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def parse_database_url(url: str) -> URL:
    """The URL with its driver made explicit; SettingsError for a database alphacut cannot use."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise SettingsError(f"ALPHACUT_DATABASE_URL is not a database URL: {url!r}") from None
    if parsed.drivername in _POSTGRES_ALIASES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise SettingsError(
            f"ALPHACUT_DATABASE_URL: unsupported database {parsed.drivername!r} "
            "(use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/NAME)"
        )
    return parsed


def display_url(url: str | URL) -> str:
    """For logs and messages: the password is masked."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def database_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says PostgreSQL could not be reached or dropped the connection (a
    restart, a network cut): the operation may work if tried again, so it is no job's fault.
    SQLite's errors (a locked file) are not among them."""
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    return type(exc.orig).__module__.startswith("psycopg")


def create_database_engine(url: str) -> Engine:
    parsed = parse_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    try:
        import psycopg  # noqa: F401  (imported to give a clear message when missing)
    except ImportError:
        raise SettingsError(
            "ALPHACUT_DATABASE_URL names PostgreSQL, which needs the psycopg driver: "
            "pip install 'alphacut[distributed]'"
        ) from None
    # pre_ping: a connection left in the pool across a database restart is replaced, not
    # handed to a worker that would fail its next claim.
    return sa.create_engine(parsed, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:":
        # Jobs hold clients' webhook URLs and output names: private to the server's user.
        # SQLite gives the -wal and -shm files the database file's mode.
        path = Path(url.database)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    # Many threads (workers, webhook senders, request handlers) each hold a connection for a
    # statement or two; beyond the pool, extra connections are opened and closed as needed.
    engine = sa.create_engine(
        url,
        connect_args={"timeout": 30, "check_same_thread": False},
        pool_size=16,
        max_overflow=-1,
    )

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # The sqlite3 module's own transaction handling is off: BEGIN is sent by _begin below,
        # so a write transaction can be BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        # NORMAL is durable across process crashes in WAL mode (fsync at checkpoints).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        # A read is one statement, consistent on its own in SQLite's autocommit mode: no
        # BEGIN/ROLLBACK round trip for it.
        if connection.get_execution_options().get("alphacut_write", False):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
