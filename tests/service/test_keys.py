"""Managed API keys and per-key rate limits over real HTTP: the CLI's keys take effect on a
running server without a restart, limits hold across two server processes on one database.
The HTTP tests run in both modes (``mode_settings``): embedded, and an API node of the session's
cluster (tests/cluster.py)."""

from __future__ import annotations

import hashlib
import io
import json
import time

import httpx
import pytest
import sqlalchemy as sa
from PIL import Image
from typer.testing import CliRunner

from alphacut.cli import app
from alphacut.jobs.database import create_database_engine
from alphacut.jobs.migrate import upgrade_database
from alphacut.jobs.schema import jobs
from alphacut.jobs.store import SQLJobStore
from tests.conftest import PHOTOS, free_port, real_settings, requires_real_model, subject_image
from tests.jobhelpers import ServerProcess
from tests.services import find_postgres, scratch_postgres_database

REMOVE = "/api/v5/removebg_mask"


def png(width: int = 200, height: int = 150) -> bytes:
    buffer = io.BytesIO()
    subject_image(width, height)[0].save(buffer, format="PNG")
    return buffer.getvalue()


def remove(url: str, key: str, image: bytes | None = None) -> httpx.Response:
    return httpx.post(
        url + REMOVE,
        data={"key": key},
        files={"image": ("a.png", image or png(), "image/png")},
        timeout=150,
    )


def keys_cli(settings, *args: str) -> str:
    """``alphacut keys ...`` against the server's home and database; its stdout."""
    env = {"ALPHACUT_HOME": str(settings.home), "ALPHACUT_DATABASE_URL": settings.database_url}
    result = CliRunner().invoke(app, ["keys", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def eventually(check, seconds: float = 3.0) -> None:
    """The server caches key lookups for about a second: wait that long for a change."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the change did not reach the server in time"
        time.sleep(0.1)


def fresh_minute() -> None:
    """Rate windows are calendar minutes: start a test well inside one, so it cannot roll over."""
    left = 60 - time.time() % 60
    if left < 10:
        time.sleep(left + 0.1)


def test_cli_keys_take_effect_without_restart(live_server, mode_settings):
    server = live_server(mode_settings)
    assert remove(server.url, "").status_code == 200  # no keys anywhere: open, as before
    key = keys_cli(mode_settings, "create", "--name", "ci", "--queue-limit", "4").strip()
    eventually(lambda: remove(server.url, "").status_code == 401)
    assert remove(server.url, "made-up").status_code == 401
    answer = remove(server.url, key)
    assert answer.status_code == 200 and answer.json()["status"] == "success"
    assert "X-RateLimit-Limit" not in answer.headers  # no rate limit: no headers

    listed = keys_cli(mode_settings, "list")
    assert key not in listed
    header, row = listed.splitlines()
    assert header.split() == ["id", "name", "queue", "req/min", "MP/min", "created"] + [
        "last",
        "used",
        "revoked",
    ]
    assert row.split()[:5] == ["1", "ci", "4", "default", "default"]
    assert "UTC" in row and row.rstrip().endswith("-")  # used, not revoked

    assert keys_cli(mode_settings, "revoke", "1").strip() == "key 1 revoked"
    eventually(lambda: remove(server.url, key).status_code == 401)
    assert remove(server.url, key).json() == {
        "status": "error",
        "message": "invalid or missing API key",
    }
    # Revoking the last key does not open the server again.
    assert remove(server.url, "").status_code == 401
    assert keys_cli(mode_settings, "list").splitlines()[1].split()[-2:] != ["-"]


def test_revoke_of_an_unknown_id_fails(tiny_settings):
    env = {"ALPHACUT_HOME": str(tiny_settings.home)}
    result = CliRunner().invoke(app, ["keys", "revoke", "7"], env=env)
    assert result.exit_code == 1 and "no key with id 7" in result.output


def test_bootstrap_keys_work_beside_managed_ones(live_server, mode_settings):
    server = live_server(mode_settings, api_keys=("boot",))
    managed = keys_cli(mode_settings, "create").strip()
    assert remove(server.url, "boot").status_code == 200
    eventually(lambda: remove(server.url, managed).status_code == 200)
    assert remove(server.url, "").status_code == 401


def test_jobs_from_before_the_upgrade_stay_fetchable(live_server, tiny_settings):
    """A database at revision 0001 with a job made by key "old-key" (owner = sha256[:32]);
    after the upgrade the same key, beside a managed key, still fetches it."""
    engine = create_database_engine(tiny_settings.database_url)
    upgrade_database(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            jobs.insert().values(
                status="failed",
                owner=hashlib.sha256(b"old-key").hexdigest()[:32],
                created_at=time.time(),
                request=json.dumps({"meta": {}}),
                error="from before",
                error_status=422,
            )
        )
    engine.dispose()
    server = live_server(tiny_settings, api_keys=("old-key",))
    keys_cli(tiny_settings, "create")
    fetched = httpx.post(server.url + "/api/v5/fetch/1", json={"key": "old-key"}, timeout=30)
    assert fetched.json()["message"] == "from before"
    other = keys_cli(tiny_settings, "create").strip()
    eventually(
        lambda: httpx.post(server.url + "/api/v5/fetch/1", json={"key": other}).status_code == 200
    )
    hidden = httpx.post(server.url + "/api/v5/fetch/1", json={"key": other}).json()
    assert hidden["message"] != "from before"  # another key's job is "not found"


def test_request_rate_limit_and_headers(live_server, mode_settings):
    server = live_server(mode_settings)
    key = keys_cli(mode_settings, "create", "--rate", "2").strip()
    fresh_minute()
    first, second = remove(server.url, key), remove(server.url, key)
    assert first.status_code == second.status_code == 200
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert [first.headers["X-RateLimit-Remaining"], second.headers["X-RateLimit-Remaining"]] == [
        "1",
        "0",
    ]
    reset = int(first.headers["X-RateLimit-Reset"])
    assert reset % 60 == 0 and 0 < reset - time.time() <= 60
    refused = remove(server.url, key)
    assert refused.status_code == 429
    body = refused.json()
    assert body["status"] == "error" and "2 requests per minute" in body["message"]
    assert 1 <= body["retry_after"] <= 60
    assert refused.headers["Retry-After"] == str(body["retry_after"])
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.headers["X-RateLimit-Reset"] == str(reset)
    # A refused request is not counted; fetch is not rate-limited.
    access = server.state.access
    assert access.counter.usage(access.authenticate(key).owner).requests == 2


def test_megapixel_limit_counts_decoded_pixels(live_server, mode_settings):
    server = live_server(mode_settings, megapixel_limit=0.1)  # the default for every key
    fresh_minute()
    image = png(200, 150)  # 30,000 pixels
    assert [remove(server.url, "", image).status_code for _ in range(3)] == [200, 200, 200]
    refused = remove(server.url, "", image)  # 120,000 > 100,000
    assert refused.status_code == 429
    assert "0.1 megapixels per minute" in refused.json()["message"]
    assert "Retry-After" in refused.headers
    assert "X-RateLimit-Limit" not in refused.headers  # that header is the request rate's
    too_big = remove(server.url, "", png(400, 300))  # 0.12 MP: never fits a 0.1 MP minute
    assert too_big.status_code == 413 and "megapixels" in too_big.json()["message"]


def test_no_limits_set_writes_no_counters(live_server, mode_settings):
    server = live_server(mode_settings)
    assert remove(server.url, "").status_code == 200
    engine = create_database_engine(mode_settings.database_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM rate_windows")).scalar() == 0
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_database(request, tmp_path):
    """(home, database URL) for two servers: SQLite in the home, or a scratch PostgreSQL."""
    home = tmp_path / "home"
    if request.param == "sqlite":
        yield home, f"sqlite:///{home / 'jobs.sqlite3'}"
        return
    server, reason = find_postgres()
    if server is None:
        pytest.skip(reason)
    with scratch_postgres_database(server) as url:
        engine = create_database_engine(url)
        upgrade_database(engine)
        engine.dispose()
        yield home, url


def test_limits_hold_across_two_server_processes(
    shared_database, tiny_model_dir, tmp_path, tiny_settings
):
    home, url = shared_database
    settings = tiny_settings.model_copy(update={"home": home, "database_url": url})
    SQLJobStore(url).close()  # the schema, before the CLI and both servers use it
    key = keys_cli(settings, "create", "--rate", "3", "--megapixels", "1").strip()
    env = {
        "ALPHACUT_MODEL_DIR": str(tiny_model_dir),
        "ALPHACUT_MODEL": "tiny",
        "ALPHACUT_DATABASE_URL": url,
    }
    servers = [ServerProcess(home, tmp_path / f"server{n}.log", free_port(), env) for n in range(2)]
    try:
        for server in servers:
            server.wait_ready()
        fresh_minute()
        answers = [remove(servers[n % 2].url, key) for n in range(4)]
        assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert remove(servers[0].url, key).status_code == 429
        assert remove(servers[1].url, "nokey").status_code == 401
    finally:
        for server in servers:
            server.stop()
    engine = create_database_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT requests, pixels FROM rate_windows")).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [(3, 3 * 200 * 150)]


@pytest.mark.real_model
@requires_real_model
def test_real_photo_counts_its_megapixels(live_server, tmp_path):
    """The real model on a real photo: the decoded photo's pixels are what is counted."""
    photo = (PHOTOS / "animal-1.jpg").read_bytes()
    width, height = Image.open(PHOTOS / "animal-1.jpg").size  # 1000 x 667
    server = live_server(real_settings(tmp_path / "home"), megapixel_limit=1.0)
    fresh_minute()
    answer = httpx.post(
        server.url + REMOVE,
        data={"key": ""},
        files={"image": ("animal.jpg", photo, "image/jpeg")},
        timeout=300,
    )
    assert answer.status_code == 200 and answer.json()["status"] == "success"
    usage = server.state.access.counter.usage("")
    assert (usage.requests, usage.pixels) == (1, width * height)
    refused = httpx.post(
        server.url + REMOVE,
        data={"key": ""},
        files={"image": ("animal.jpg", photo, "image/jpeg")},
        timeout=300,
    )
    assert refused.status_code == 429
    assert f"({width * height / 1e6:.1f} used)" in refused.json()["message"]
