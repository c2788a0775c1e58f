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


def test_a_replacement_that_fails_to_start_is_retried_with_backoff_while_the_rest_serve():
    """Only a first start that fails stops the node: a process started in place of one that
    died (the database down at that moment, say) is retried, each time later, and the other
    processes serve on. Stand-in processes: a sleeper serves, ``sys.exit(3)`` fails to start."""
    import multiprocessing
    import socket
    import sys
    import threading
    import time

    from alphacut.config import Settings
    from alphacut.service import server as server_module

    context = multiprocessing.get_context("spawn")
    supervisor = server_module.ProcessSupervisor(Settings(), socket.socket(), "info", {})
    started: list[tuple[float, multiprocessing.process.BaseProcess]] = []

    def start() -> multiprocessing.process.BaseProcess:
        serving = len(started) < 2  # the two first processes serve; every later one fails
        child = context.Process(
            target=time.sleep if serving else sys.exit, args=(120,) if serving else (3,)
        )
        child.start()
        started.append((time.monotonic(), child))
        return child

    supervisor._start = start  # type: ignore[method-assign]
    outcome: dict[str, object] = {}

    def drive() -> None:
        wait_until(lambda: len(started) == 2, timeout=30, what="two processes")
        os.kill(started[0][1].pid or 0, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(5.0)
        outcome["starts"] = [at - killed_at for at, _ in started[2:]]
        outcome["other alive"] = started[1][1].is_alive()
        supervisor.received.append(signal.SIGTERM)

    previous = {sig: signal.getsignal(sig) for sig in server_module.FORWARDED_SIGNALS}
    driver = threading.Thread(target=drive)
    driver.start()
    try:
        status = supervisor.run(2)
    finally:
        driver.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert status == 0  # stopped by the signal, not by the failed starts
    assert outcome["other alive"] is True
    starts = outcome["starts"]
    assert isinstance(starts, list)
    # After the kill: 1 s, then 2 s more, then 4 s more (the last one after the signal).
    assert len(starts) == 2, starts
    assert 0.8 < starts[0] < 2.0 and 2.6 < starts[1] < 4.5, starts
