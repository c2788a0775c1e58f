"""A real cluster for the distributed-mode tests: PostgreSQL and Redis (from
``scripts/services.sh`` or the machine's own), the S3 store (SeaweedFS, from the script),
``alphacut worker`` processes, API servers.

Each cluster gets a scratch PostgreSQL database, a broker key prefix (``ALPHACUT_BROKER_PREFIX``)
and a bucket prefix of its own, so test sessions run side by side on one Redis and one bucket
without taking each other's jobs. Inputs and outputs go through the bucket, as in production.
Skipped, loudly, with the reason, when PostgreSQL, Redis or the S3 store cannot be reached.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alphacut.config import Settings
from tests.conftest import write_tiny_model
from tests.jobhelpers import SECRET
from tests.s3helpers import S3Service
from tests.services import EXPORTED, find_postgres, scratch_postgres_database

_REDIS_CANDIDATES = [
    url
    for url in (EXPORTED.get("ALPHACUT_BROKER_URL", ""), "redis://127.0.0.1:6379/0")
    if url.startswith("redis://")
]


def find_redis() -> tuple[str | None, str]:
    """(URL of a reachable Redis server without its database number, or None; why not)."""
    try:
        from redis import Redis
    except ImportError:
        return None, "redis is not installed (make setup installs it: the distributed extra)"
    problems = []
    for url in _REDIS_CANDIDATES:
        client = Redis.from_url(url, socket_connect_timeout=2)
        try:
            client.ping()
            return url.rsplit("/", 1)[0], ""
        except Exception as exc:
            problems.append(f"{url}: {exc}")
        finally:
            client.close()
    hint = 'run `eval "$(scripts/services.sh start)"`'
    return None, f"no Redis server reachable ({hint}): " + "; ".join(problems)


def settings_environment(settings: Settings) -> dict[str, str]:
    """The ``ALPHACUT_*`` variables that give a process these settings."""
    values = settings.model_dump(mode="json")
    env = {}
    for name in settings.model_fields_set | {"home", "model_dir", "output_dir", "database_url"}:
        value = values[name]
        if isinstance(value, list):
            value = ",".join(value)
        env[f"ALPHACUT_{name.upper()}"] = str(value)
    return env


@dataclass
class WorkerProcess:
    """``alphacut worker`` in a subprocess, its log in a file; ``env`` adds variables (the S3
    credentials of a store of its own, say). Like every worker, it runs the beat unless
    ``beat`` is false (one beat at a time sends the passes)."""

    settings: Settings
    log: Path
    queue: str = "cpu"
    concurrency: int = 1
    beat: bool = True
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        cli = Path(sys.executable).with_name("alphacut")
        args = [str(cli), "worker", "--queue", self.queue, "--concurrency", str(self.concurrency)]
        if not self.beat:
            args.append("--no-beat")
        env = {**os.environ, **settings_environment(self.settings), **self.env}
        with self.log.open("ab") as out:
            # A session of its own: kill() reaches its pool and beat processes too.
            self.proc = subprocess.Popen(
                args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            if " ready." in self.log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise AssertionError("worker did not become ready:\n" + self.log.read_text())

    def kill(self) -> None:
        """SIGKILL to the worker and every process it started, as when its machine dies."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Celery's cold shutdown: no grace for running jobs (the tests have none running).
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Cluster:
    settings: Settings  # what API nodes and workers share
    folder: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_workers(self, count: int, **options: object) -> list[WorkerProcess]:
        started = [
            WorkerProcess(
                self.settings,
                self.folder / f"worker{len(self.workers) + i}.log",
                **options,  # type: ignore[arg-type]
            )
            for i in range(count)
        ]
        for worker in started:
            worker.wait_ready()
        self.workers += started
        return started

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def beat_holder(self) -> WorkerProcess | None:
        """The worker whose beat holds the lock, i.e. sends the periodic passes (the lock's
        value names its main process: alphacut.jobs.beat.holder_token)."""
        from redis import Redis

        from alphacut.jobs.beat import lock_key
        from alphacut.jobs.celery_app import create_celery

        prefix = create_celery(self.settings).conf.redbeat_key_prefix
        client = Redis.from_url(self.settings.broker_url)
        try:
            token = client.get(lock_key(prefix))
        finally:
            client.close()
        pid = int(token.decode().split(":")[1]) if token else None
        return next((worker for worker in self.workers if worker.proc.pid == pid), None)


@pytest.fixture(scope="session")
def cluster_services() -> Iterator[tuple[str, str]]:
    """(scratch PostgreSQL database URL at the current schema, Redis URL)."""
    postgres, why = find_postgres()
    if postgres is None:
        pytest.skip(f"DISTRIBUTED MODE NOT TESTED: {why}")
    redis_server, why = find_redis()
    if redis_server is None:
        pytest.skip(f"DISTRIBUTED MODE NOT TESTED: {why}")
    from alphacut.jobs.database import create_database_engine
    from alphacut.jobs.migrate import upgrade_database

    with scratch_postgres_database(postgres) as url:
        engine = create_database_engine(url)
        upgrade_database(engine)
        engine.dispose()
        yield url, f"{redis_server}/0"


@contextmanager
def cluster_bucket(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The settings that put a cluster's inputs and outputs under a prefix of its own in the
    real S3 bucket; the prefix is emptied afterwards. Skips, loudly, without an S3 gateway."""
    try:
        service: S3Service = request.getfixturevalue("s3_service")
    except pytest.skip.Exception as exc:
        pytest.skip(f"DISTRIBUTED MODE NOT TESTED: {exc.msg}")
    prefix = f"test-cluster-{secrets.token_hex(4)}"
    try:
        yield {
            "storage_url": f"s3://{service.bucket}/{prefix}/outputs",
            "s3_endpoint_url": service.endpoint,
        }
    finally:
        service.delete_prefix(prefix + "/")


def cluster_settings(folder: Path, database_url: str, broker_url: str, **extra: object) -> Settings:
    """Tiny-model settings (``extra`` overrides them) for every node of a test cluster sharing
    ``folder``."""
    write_tiny_model(folder / "models")
    values: dict[str, object] = {
        "home": folder / "home",
        "output_dir": folder / "outputs",
        "model_dir": folder / "models",
        "model": "tiny",
        "url_allowlist": ("127.0.0.1",),
        "sync_wait": 60.0,
        "database_url": database_url,
        "broker_url": broker_url,
        "webhook_secret": SECRET,
        "webhook_backoff": 0.5,
        "broker_prefix": f"test-{secrets.token_hex(4)}:",
    }
    return Settings(**{**values, **extra})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def shared_cluster(
    cluster_services: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Cluster]:
    """Two tiny-model workers (one with the beat) for the whole session, with S3 storage;
    API servers are started per test with ``cluster.settings``."""
    folder = tmp_path_factory.mktemp("cluster")
    with cluster_bucket(request) as storage:
        cluster = Cluster(cluster_settings(folder, *cluster_services, **storage), folder)
        try:
            cluster.start_workers(1, beat=True)
            cluster.start_workers(1)
            yield cluster
        finally:
            cluster.stop_workers()


# The modes the HTTP contract tests run in: in-process workers, and an API node of a cluster.
MODES = ["embedded", "distributed"]


@pytest.fixture(params=MODES)
def mode_settings(request: pytest.FixtureRequest, tiny_settings: Settings) -> Settings:
    """The tiny-model settings of one server, in each mode: in-process workers (local storage),
    or an API node of the session's cluster (PostgreSQL, Celery on Redis, S3 storage)."""
    if request.param == "embedded":
        return tiny_settings
    cluster: Cluster = request.getfixturevalue("shared_cluster")
    # Fresh tables, as an embedded server's own database would be: no jobs (the queue-time
    # estimate, for one, starts from no history), no API keys (one left by a keys test would
    # close the API to the next test), no rate counters, ids from 1. The workers are idle
    # between tests.
    import sqlalchemy as sa

    from alphacut.jobs.database import create_database_engine
    from alphacut.jobs.schema import metadata

    tables = ", ".join(table.name for table in metadata.sorted_tables)
    engine = create_database_engine(cluster.settings.database_url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY"))
    engine.dispose()
    return cluster.settings
