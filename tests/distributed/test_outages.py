"""Service outages in a running cluster: Redis stopped for 5 s, then PostgreSQL restarted.

Each test starts the server it stops itself, from the installed binaries, on a free loopback
port in its own folder (never the machine's own services), plus an API process and a worker
process with the tiny model. While the service is down, new requests get a JSON 503 with
``retry_after``; every job accepted before the outage completes; the queue drains afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.cluster import Cluster, cluster_settings, settings_environment
from tests.conftest import free_port, subject_image
from tests.jobhelpers import ServerProcess, fetch, post, wait_done, wait_until
from tests.services import find_postgres, scratch_postgres_database

OUTAGE_SECONDS = 5.0


class OwnRedis:
    """``redis-server`` in the foreground on a fixed port, so it can stop and start again."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("OUTAGE TEST NOT RUN: no redis-server installed")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port)]
        args += ["--dir", str(self.folder), "--save", "", "--appendonly", "no"]
        with (self.folder / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        from redis import Redis

        client = Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            wait_until(lambda: _answers(client.ping), timeout=20, what="redis-server")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (initdb into a temp folder, pg_ctl on a free
    port); as root, its binaries run as the ``postgres`` user, as scripts/services.sh does."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            pytest.skip("OUTAGE TEST NOT RUN: no PostgreSQL binaries in /usr/lib/postgresql")
        self.bin = Path(found[-1]).parent
        if os.geteuid() == 0 and not _user_exists("postgres"):
            pytest.skip("OUTAGE TEST NOT RUN: as root, PostgreSQL needs a postgres user")
        # Not under pytest's tmp_path: the postgres user cannot enter root's private folder.
        self.folder = Path(tempfile.mkdtemp(prefix="alphacut-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.folder / "data"), "-U", "postgres", "-A", "trust")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        command = [*self.as_user, str(self.bin / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{tool} failed: {done.stdout}{done.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}"
        data, log = str(self.folder / "data"), str(self.folder / "postgres.log")
        self._run("pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "start", "-o", options)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [
                *self.as_user,
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.folder / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _answers(call: Callable[[], object]) -> bool:
    try:
        call()
        return True
    except Exception:
        return False


def _upgraded(url: str) -> str:
    from alphacut.jobs.database import create_database_engine
    from alphacut.jobs.migrate import upgrade_database

    engine = create_database_engine(url)
    upgrade_database(engine)
    engine.dispose()
    return url


def _slow_image(root: Path) -> dict[str, object]:
    """A request body that keeps a tiny-model worker busy for a second or so (matting)."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(root / "busy.png")
    return {"alpha_matting": True, "instant_response": True}


def _start(cluster: Cluster, file_root: Path) -> ServerProcess:
    subject_image()[0].save(file_root / "outage.png")
    api = ServerProcess(
        cluster.settings.home,
        cluster.folder / "api.log",
        free_port(),
        env=settings_environment(cluster.settings),
    )
    cluster.start_workers(1, beat=True)
    api.wait_ready()
    return api


def _accept(api: ServerProcess, body: dict[str, object], count: int) -> list[int]:
    """Ids of ``count`` accepted jobs, most of them still queued (else the test proves
    nothing)."""
    ids = []
    for index in range(count):
        response = post(api.url, {**body, "track_id": index}, timeout=30)
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    unfinished = [job_id for job_id in ids if fetch(api.url, job_id)["status"] == "processing"]
    assert len(unfinished) >= count // 2, "the jobs finished before the outage began"
    return ids


def _refused_during_outage(api: ServerProcess, body: dict[str, object], seconds: float) -> int:
    """Send requests for ``seconds``; each must be a JSON 503 with retry_after once the API
    node has noticed the outage (the first may still be accepted). Returns how many were
    refused."""
    refused = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = post(api.url, body, timeout=30)
        if response.status_code == 200 and not refused:
            continue  # sent before the node noticed; it must complete like the others
        assert response.status_code == 503, response.text
        answer = response.json()
        assert answer["status"] == "error" and answer["retry_after"] > 0, answer
        assert "Traceback" not in response.text
        assert response.headers["Retry-After"] == str(answer["retry_after"])
        refused += 1
        time.sleep(0.3)
    return refused


def _drains(api: ServerProcess, ids: list[int], url: str) -> None:
    """Every job completes, and the cluster takes and runs new ones."""
    wait_until(
        lambda: httpx.get(api.url + "/readyz", timeout=10).status_code == 200,
        timeout=60,
        what="/readyz 200 after the outage",
    )
    for job_id in ids:
        done = wait_done(api.url, job_id, timeout=180)
        assert done["status"] == "success", done
    after = post(api.url, {"image": url}, timeout=120).json()
    if after["status"] == "processing":
        after = wait_done(api.url, after["id"], timeout=120)
    assert after["status"] == "success", after


@pytest.fixture
def postgres_server() -> str:
    server, why = find_postgres()
    if server is None:
        pytest.skip(f"OUTAGE TEST NOT RUN: {why}")
    return server


def test_redis_stopped_for_5_seconds(postgres_server, tmp_path, file_server):
    base, root = file_server
    redis_server = OwnRedis(tmp_path)
    with scratch_postgres_database(postgres_server) as database:
        cluster = Cluster(
            cluster_settings(tmp_path, _upgraded(database), redis_server.url), tmp_path
        )
        api = _start(cluster, root)
        try:
            busy = {"image": f"{base}/busy.png", **_slow_image(root)}
            ids = _accept(api, busy, 6)  # queued in Redis when it stops
            redis_server.stop()
            refused = _refused_during_outage(api, {"image": f"{base}/outage.png"}, OUTAGE_SECONDS)
            assert refused >= 3
            assert httpx.get(api.url + "/readyz", timeout=10).status_code == 503
            redis_server.start()
            _drains(api, ids, f"{base}/outage.png")
        finally:
            api.stop()
            cluster.stop_workers()
            redis_server.stop()


def test_postgres_restarted(tmp_path, file_server, cluster_services):
    base, root = file_server
    _, broker = cluster_services  # the session's Redis; the database is the test's own
    postgres = OwnPostgres()
    try:
        cluster = Cluster(cluster_settings(tmp_path, _upgraded(postgres.url), broker), tmp_path)
        api = _start(cluster, root)
        try:
            busy = {"image": f"{base}/busy.png", **_slow_image(root)}
            ids = _accept(api, busy, 6)
            postgres.stop()
            refused = _refused_during_outage(api, {"image": f"{base}/outage.png"}, OUTAGE_SECONDS)
            assert refused >= 3
            postgres.start()
            _drains(api, ids, f"{base}/outage.png")
        finally:
            api.stop()
            cluster.stop_workers()
    finally:
        postgres.remove()
