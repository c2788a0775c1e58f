"""The job database under test: SQLite in a temporary folder, or PostgreSQL in a database of
its own on the server ``tests/services.py`` finds (skipped, with the reason, when none is)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from alphacut.jobs.database import create_database_engine, sqlite_url
from alphacut.jobs.migrate import upgrade_database
from alphacut.jobs.schema import metadata
from alphacut.jobs.store import SQLJobStore
from tests.services import find_postgres, scratch_postgres_database

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this test session on a PostgreSQL server, at the current schema."""
    server, reason = find_postgres()
    if server is None:
        pytest.skip(reason)
    with scratch_postgres_database(server) as url:
        engine = create_database_engine(url)
        upgrade_database(engine)
        engine.dispose()
        yield url


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty job database at the current schema, each test on both databases."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "jobs.sqlite3")
        engine = create_database_engine(url)
        upgrade_database(engine)
    else:
        url = request.getfixturevalue("postgres_url")
        engine = create_database_engine(url)
        with engine.begin() as connection:
            tables = ", ".join(table.name for table in metadata.sorted_tables)
            connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY"))
    engine.dispose()
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[SQLJobStore]:
    store = SQLJobStore(database_url)
    yield store
    store.close()
