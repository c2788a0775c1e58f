"""Schema migrations: one schema on both databases, and a job database written by the release
before migrations existed is adopted with every row, then works as any other."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from typer.testing import CliRunner

from alphacut.cli import app
from alphacut.jobs.database import create_database_engine, sqlite_url
from alphacut.jobs.migrate import (
    DatabaseNotReady,
    current_revision,
    head_revision,
    upgrade_database,
)
from alphacut.jobs.schema import metadata
from alphacut.jobs.store import FAILED, QUEUED, RUNNING, SUCCESS, SQLJobStore
from tests.conftest import subject_image
from tests.jobhelpers import submit_and_wait, wait_done
from tests.services import find_postgres, scratch_postgres_database

# The schema exactly as the SQLite store of release 0.1.0 created it (store.py's _SCHEMA,
# run with executescript on every start), before migrations existed.
RELEASE_0_1_SCHEMA = """
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


def schema_differences(url: str) -> list[object]:
    """What separates the database's schema from the one the store queries (empty: nothing)."""
    engine = create_database_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), metadata))
    finally:
        engine.dispose()


def test_a_new_database_gets_the_one_schema(database_url):
    """``database_url`` was created by the migrations, on SQLite and on PostgreSQL."""
    assert schema_differences(database_url) == []
    engine = create_database_engine(database_url)
    assert current_revision(engine) == head_revision()
    assert upgrade_database(engine) == head_revision()  # again: nothing to do
    engine.dispose()


def write_release_0_1_database(path: Path, queued_request: dict[str, object]) -> dict[str, int]:
    """A jobs.sqlite3 as release 0.1.0 left it: one job in each state, ids by name."""
    now = time.time()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(RELEASE_0_1_SCHEMA)
    rows = {
        "finished": (SUCCESS, json.dumps({"outputs": ["1.png"]}), None, None, "delivered", now),
        "failed": (FAILED, None, "broken", 500, None, None),
        # Left running by a server that was killed: its pid is gone.
        "running": (RUNNING, None, None, None, None, None),
        "queued": (QUEUED, None, None, None, None, None),
    }
    ids = {}
    for name, (status, result, error, error_status, webhook, webhook_at) in rows.items():
        request = queued_request if name == "queued" else {**queued_request, "file_name": name}
        if name == "finished":
            request = {**request, "webhook": "http://127.0.0.1:9/hook"}
        cursor = db.execute(
            "INSERT INTO jobs (status, owner, created_at, request, result, error, error_status, "
            "webhook_status, webhook_next_at, worker, lease_until, attempts, webhook_attempts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                status,
                "",
                now,
                json.dumps(request),
                result,
                error,
                error_status,
                webhook,
                webhook_at,
                f"{socket.gethostname()}:999999999" if status == RUNNING else None,
                now + 3600 if status == RUNNING else None,
                int(status != QUEUED),
                json.dumps([{"attempt": 1, "status_code": 200}]) if webhook else "[]",
            ),
        )
        ids[name] = int(cursor.lastrowid or 0)
    # An expired job, deleted by the release's cleanup: its id must not be given again.
    expired = db.execute(
        "INSERT INTO jobs (status, owner, created_at, request) VALUES (?, '', ?, '{}')",
        (SUCCESS, now),
    )
    db.execute("DELETE FROM jobs WHERE id = ?", (expired.lastrowid,))
    db.close()
    return ids


def test_a_release_0_1_database_is_adopted_with_its_jobs(
    tiny_settings, live_server, file_server, tmp_path
):
    base, root = file_server
    subject_image()[0].save(root / "adopt-subject.png")
    # A real job record, as the service writes it, for the old database's queued job.
    template_server = live_server(tiny_settings)
    done = submit_and_wait(template_server.url, {"image": f"{base}/adopt-subject.png"})
    template = template_server.state.store.get(done["id"])
    assert template is not None

    home = tmp_path / "old-home"
    (home / "inputs").mkdir(parents=True)
    input_path = home / "inputs" / "old.input"
    input_path.write_bytes((root / "adopt-subject.png").read_bytes())
    request = {**template.request, "input_path": str(input_path), "file_name": "old.png"}
    ids = write_release_0_1_database(home / "jobs.sqlite3", request)
    before = sqlite3.connect(home / "jobs.sqlite3").execute("SELECT * FROM jobs").fetchall()

    settings = tiny_settings.model_copy(
        update={"home": home, "database_url": sqlite_url(home / "jobs.sqlite3")}
    )
    server = live_server(settings)  # opens, migrates, requeues the dead worker's job, runs
    store = server.state.store
    assert current_revision(store.engine) == head_revision()
    # The queued job and the one the killed server was running both run now.
    for name in ("queued", "running"):
        body = wait_done(server.url, ids[name])
        assert body["status"] == "success", body
    assert store.get(ids["finished"]).result == {"outputs": ["1.png"]}
    finished = store.get(ids["finished"])
    assert finished.webhook_status == "delivered"
    assert finished.webhook_attempts == [{"attempt": 1, "status_code": 200}]
    failed = store.get(ids["failed"])
    assert (failed.status, failed.error, failed.error_status) == (FAILED, "broken", 500)
    assert store.get(ids["running"]).attempts == 2
    # Every row kept, column by column, but for the two that ran since.
    after = {
        row[0]: row for row in sqlite3.connect(home / "jobs.sqlite3").execute("SELECT * FROM jobs")
    }
    for row in before:
        if row[0] not in (ids["queued"], ids["running"]):
            assert after[row[0]] == row
    assert store.create("", request).id == ids["queued"] + 2  # no id reused
    # The one difference alembic sees is none: an INTEGER PRIMARY KEY is SQLite's rowid, which
    # is never NULL, whether or not the table says NOT NULL.
    changes = schema_differences(settings.database_url)
    assert [(op[0], op[2], op[3]) for [op] in changes] == [("modify_nullable", "jobs", "id")]


def test_alphacut_db_upgrade_creates_the_schema(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("ALPHACUT_"):
            monkeypatch.delenv(name)
    url = sqlite_url(tmp_path / "cli" / "jobs.sqlite3")
    monkeypatch.setenv("ALPHACUT_DATABASE_URL", url)
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"at revision {head_revision()}" in result.output
    assert schema_differences(url) == []


@pytest.fixture
def empty_postgres_database():
    server, reason = find_postgres()
    if server is None:
        pytest.skip(reason)
    with scratch_postgres_database(server) as url:
        yield url


def test_postgresql_is_upgraded_by_the_operator_not_by_a_server(empty_postgres_database):
    url = empty_postgres_database
    with pytest.raises(DatabaseNotReady, match="run `alphacut db upgrade`"):
        SQLJobStore(url)
    engine = create_database_engine(url)
    assert upgrade_database(engine) == head_revision()
    engine.dispose()
    store = SQLJobStore(url)
    assert store.create("o", {}).id == 1
    store.close()


def test_an_unsupported_database_url_is_refused_clearly():
    from alphacut.errors import SettingsError

    with pytest.raises(SettingsError, match="unsupported database 'mysql'"):
        create_database_engine("mysql://user@localhost/jobs")
