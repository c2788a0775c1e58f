"""The container health check (``alphacut.health``: ``python3 -m alphacut.health`` in the
image's HEALTHCHECK, ``alphacut healthcheck`` from the CLI): a worker by its heartbeat file, an
API node by /healthz, and the heartbeat file a real ``alphacut worker`` writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from alphacut import health
from alphacut.cli import app
from alphacut.config import load_settings
from alphacut.jobs.worker_models import WorkerHeartbeat

ROOT = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_beat(home: Path, pid: int, age: float = 0.0, host: str | None = None) -> Path:
    path = health.heartbeat_path(home, pid, host)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "name": f"alphacut-cpu-{pid}@h", "queue": "cpu", "time": time.time()}
    record["time"] -= age
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def api_server() -> Iterator[tuple[str, dict[str, int]]]:
    """A stand-in API on a free loopback port: /healthz answers ``status["code"]``."""
    status = {"code": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            code = status["code"] if self.path == "/healthz" else 404
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", status
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the worker's check ----------------------------------------------------------------------


def test_a_fresh_heartbeat_of_a_live_worker_is_healthy(tmp_path: Path):
    health.write_heartbeat(health.heartbeat_path(tmp_path), "alphacut-cpu-1@h", "cpu", True)
    result = health.check("worker", home=tmp_path)
    assert result.healthy, result.message
    assert "alphacut-cpu-1@h (cpu) alive" in result.message


def test_a_stale_heartbeat_is_unhealthy(tmp_path: Path):
    write_beat(tmp_path, os.getpid(), age=90)
    result = health.check("worker", home=tmp_path, max_age=60)
    assert not result.healthy
    assert "last beat 90 s ago (more than 60 s)" in result.message
    assert health.check("worker", home=tmp_path, max_age=120).healthy


def test_the_heartbeat_of_a_dead_process_or_another_host_does_not_count(tmp_path: Path):
    write_beat(tmp_path, dead_pid())
    write_beat(tmp_path, os.getpid(), host="another-machine")
    result = health.check("worker", home=tmp_path)
    assert not result.healthy
    assert "no live worker heartbeat" in result.message


def test_one_hung_worker_of_two_makes_the_host_unhealthy(tmp_path: Path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_beat(tmp_path, os.getpid())
        write_beat(tmp_path, sleeper.pid, age=300)
        result = health.check("worker", home=tmp_path)
        assert not result.healthy and f"(pid {sleeper.pid}) last beat 300 s ago" in result.message
    finally:
        sleeper.kill()
        sleeper.wait()
    assert health.check("worker", home=tmp_path).healthy  # the dead one no longer counts


def test_a_broken_heartbeat_file_is_ignored(tmp_path: Path):
    path = health.heartbeat_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert not health.check("worker", home=tmp_path).healthy


def test_clear_dead_heartbeats_removes_only_the_dead_processes_files(tmp_path: Path):
    alive = write_beat(tmp_path, os.getpid())
    dead = write_beat(tmp_path, dead_pid())
    elsewhere = write_beat(tmp_path, dead_pid(), host="another-machine")
    health.clear_dead_heartbeats(tmp_path)
    assert alive.exists() and not dead.exists()
    assert elsewhere.exists()  # another host's processes are not ours to judge


def test_the_heartbeat_thread_writes_the_file_even_when_the_broker_is_down(tmp_path: Path):
    class DownBroker:
        def pipeline(self) -> Any:
            raise ConnectionError("broker down")

    path = health.heartbeat_path(tmp_path)
    heartbeat = WorkerHeartbeat(
        DownBroker(),  # type: ignore[arg-type]
        "p:",
        "alphacut-cpu-1@h",
        "cpu",
        tmp_path / "models",
        interval=0.05,
        health_file=path,
    )
    heartbeat.start()
    try:
        first = json.loads(path.read_text())
        assert first["announced"] is False and first["name"] == "alphacut-cpu-1@h"
        deadline = time.time() + 10
        while json.loads(path.read_text())["time"] == first["time"] and time.time() < deadline:
            time.sleep(0.02)
        assert json.loads(path.read_text())["time"] > first["time"]  # refreshed by the thread
        result = health.check("worker", home=tmp_path)
        assert result.healthy and "last announcement on the broker failed" in result.message
    finally:
        heartbeat.stop()
    assert not path.exists()  # a worker that stops takes its file with it


def test_a_heartbeat_file_that_cannot_be_written_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    heartbeat = WorkerHeartbeat(
        object(),  # type: ignore[arg-type]
        "p:",
        "w",
        "cpu",
        tmp_path,
        health_file=blocked / "health" / "worker.json",
    )
    heartbeat._write_health(True)
    heartbeat._write_health(True)
    assert sum("could not write the heartbeat file" in r.message for r in caplog.records) == 1


# --- the API's check and the roles -----------------------------------------------------------


def test_the_api_check_asks_healthz(api_server: tuple[str, dict[str, int]], tmp_path: Path):
    base, status = api_server
    result = health.check("api", url=f"{base}/healthz", home=tmp_path)
    assert result.healthy, result.message
    status["code"] = 503
    result = health.check("api", url=f"{base}/healthz", home=tmp_path)
    assert not result.healthy and "answered 503" in result.message


def test_the_api_check_by_port_fails_fast_with_nothing_listening(tmp_path: Path):
    started = time.monotonic()
    result = health.check("api", port=closed_port(), timeout=2, home=tmp_path)
    assert not result.healthy and result.message.startswith("no API at http://127.0.0.1:")
    assert time.monotonic() - started < 2


def test_auto_takes_the_workers_check_where_a_worker_beats(
    api_server: tuple[str, dict[str, int]], tmp_path: Path
):
    base, _ = api_server
    url = f"{base}/healthz"
    assert "API healthy" in health.check(url=url, home=tmp_path).message
    write_beat(tmp_path, os.getpid(), age=600)  # a hung worker: the API's answer is no excuse
    result = health.check(url=url, home=tmp_path)
    assert not result.healthy and "last beat 600 s ago" in result.message
    assert health.check("api", url=url, home=tmp_path).healthy


def test_an_unknown_role_is_unhealthy(tmp_path: Path):
    result = health.check("database", home=tmp_path)
    assert not result.healthy and "role must be one of auto, api, worker" in result.message


def test_the_home_folder_is_the_settings_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for value in (str(tmp_path / "home"), "", "~/alphacut-home"):
        monkeypatch.setenv("ALPHACUT_HOME", value)
        assert health.home_folder() == load_settings().home
    monkeypatch.delenv("ALPHACUT_HOME")
    assert health.home_folder() == load_settings().home


# --- the two commands ------------------------------------------------------------------------


def test_alphacut_healthcheck(
    api_server: tuple[str, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    base, _ = api_server
    monkeypatch.setenv("ALPHACUT_HOME", str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(app, ["healthcheck", "--url", f"{base}/healthz"])
    assert result.exit_code == 0 and "healthy: API healthy" in result.output
    result = runner.invoke(app, ["healthcheck", "--role", "worker"])
    assert result.exit_code == 1 and "unhealthy: no live worker heartbeat" in result.output
    write_beat(tmp_path, os.getpid())
    result = runner.invoke(app, ["healthcheck"])
    assert result.exit_code == 0 and "healthy: worker" in result.output
    result = runner.invoke(app, ["healthcheck", "--role", "nobody"])
    assert result.exit_code == 1 and "--role must be auto, api or worker" in result.output


def test_the_cli_command_and_the_module_take_the_same_flags_and_defaults():
    import click
    from typer.main import get_command

    group: Any = get_command(app)
    command: click.Command = group.commands["healthcheck"]
    cli = {param.name: param.default for param in command.params}
    module = vars(health.build_parser().parse_args([]))
    assert (
        cli
        == module
        == {
            "role": "auto",
            "port": health.DEFAULT_PORT,
            "url": None,
            "max_age": health.DEFAULT_MAX_AGE,
            "timeout": health.DEFAULT_TIMEOUT,
        }
    )
    flags = {opt for param in command.params for opt in param.opts}
    module_flags = {o for a in health.build_parser()._actions for o in a.option_strings}
    assert flags == module_flags - {"-h", "--help"}


def test_python_m_alphacut_health_is_light_and_exits_by_health(tmp_path: Path):
    env = {**os.environ, "ALPHACUT_HOME": str(tmp_path)}
    light = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, alphacut.health; "
            "heavy = {'numpy', 'pydantic', 'cv2', 'typer', 'onnxruntime'} & set(sys.modules); "
            "sys.exit(sorted(heavy) or 0)",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert light.returncode == 0, light.stderr
    command = [sys.executable, "-m", "alphacut.health", "--port", str(closed_port())]
    down = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1 and down.stdout.startswith("unhealthy: no API at"), down
    write_beat(tmp_path, os.getpid())
    up = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert up.returncode == 0 and up.stdout.startswith("healthy: worker"), up


# --- a real worker ---------------------------------------------------------------------------


def test_a_real_worker_beats_and_its_check_follows_it(
    cluster_services: tuple[str, str], tmp_path: Path
):
    from tests.cluster import WorkerProcess, cluster_settings

    settings = cluster_settings(tmp_path, *cluster_services)
    assert not health.check("worker", home=settings.home).healthy
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        deadline = time.time() + 10  # the file is written as the worker reports ready
        while not health.read_heartbeats(settings.home) and time.time() < deadline:
            time.sleep(0.1)
        beats = health.read_heartbeats(settings.home)
        assert [beat.pid for beat in beats] == [worker.proc.pid]
        assert beats[0].name.startswith("alphacut-cpu-") and beats[0].announced is True
        result = health.check(home=settings.home)  # auto: this host runs a worker
        assert result.healthy and "(cpu) alive" in result.message, result.message
    finally:
        worker.stop()
    result = health.check("worker", home=settings.home)
    assert not result.healthy and "no live worker heartbeat" in result.message
