"""``alphacut serve --workers N``: N server processes of an API node sharing its port (the
distributed mode only), each draining on SIGTERM, and the exit status of a failed start."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
from typer.testing import CliRunner

import tests.distributed.test_cluster_processes as cluster_processes
from alphacut.cli import app
from tests.cluster import Cluster, settings_environment
from tests.conftest import free_port
from tests.jobhelpers import ServerProcess, wait_until

own_cluster = cluster_processes.own_cluster  # a fixture: a database and broker prefix of its own

STARTUP_FAILURE = 3


def serve(cluster: Cluster, log: Path, processes: int, **env: str) -> ServerProcess:
    return ServerProcess(
        cluster.settings.home,
        log,
        free_port(),
        env={**settings_environment(cluster.settings), **env},
        args=("--workers", str(processes)),
    )


def test_more_than_one_process_needs_the_distributed_mode(monkeypatch, tmp_path):
    monkeypatch.delenv("ALPHACUT_BROKER_URL", raising=False)
    monkeypatch.setenv("ALPHACUT_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code == 1, result.output
    assert "--workers above 1 needs the distributed mode (ALPHACUT_BROKER_URL)" in result.output
    assert not (tmp_path / "home").exists()  # refused before anything started


def test_two_processes_each_answer_and_each_drains_on_sigterm(own_cluster, tmp_path):
    server = serve(own_cluster, tmp_path / "serve.log", 2)
    try:
        server.wait_ready()
        wait_until(
            lambda: server.log.read_text().count("Application startup complete") == 2,
            timeout=60,
            what="both processes started",
        )
        found = re.search(r"serving with 2 processes: \[(\d+), (\d+)\]", server.log.read_text())
        assert found, server.log.read_text()
        pids = [int(pid) for pid in found.groups()]
        # Each one alone answers on the shared port, so both take requests.
        for stopped in pids:
            os.kill(stopped, signal.SIGSTOP)
            try:
                for _ in range(5):  # a new connection each
                    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
            finally:
                os.kill(stopped, signal.SIGCONT)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.log.read_text()
        log = server.log.read_text()
        assert log.count("shutting down: no new jobs") == 2, log  # each process drained
        for pid in pids:
            assert f"Finished server process [{pid}]" in log
    finally:
        server.stop()


def test_a_process_that_fails_to_start_stops_the_node_with_status_3(own_cluster, tmp_path):
    missing = own_cluster.settings.database_url.rsplit("/", 1)[0] + "/alphacut_no_such_database"
    server = serve(own_cluster, tmp_path / "serve.log", 2, ALPHACUT_DATABASE_URL=missing)
    try:
        assert server.proc.wait(timeout=90) == STARTUP_FAILURE, server.log.read_text()
        assert "failed to start: stopping" in server.log.read_text()
    finally:
        server.stop()
