"""Helpers for the job tests: polling fetch, a webhook receiver on loopback, reading
``/metrics``, and ``alphacut serve`` as a real process."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from alphacut.config import load_settings
from alphacut.jobs.store import SQLJobStore, sqlite_url
from alphacut.jobs.webhooks import SIGNATURE_HEADER, verify

SECRET = "test-webhook-secret"
SUCCESS_KEYS = {"status", "generationTime", "id", "output", "meta"}
PROCESSING_KEYS = {
    "status",
    "id",
    "eta",
    "message",
    "messege",
    "tip",
    "fetch_result",
    "future_links",
    "output",
    "meta",
}
NOT_FOUND = {"status": "failed", "id": "", "message": "Request not found", "output": ""}


def post(
    base_url: str, body: dict[str, Any], path: str = "/api/v5/removebg_mask", timeout: float = 180
) -> httpx.Response:
    return httpx.post(base_url + path, json=body, timeout=timeout)


def fetch(
    base_url: str, job_id: int | str, key: str = "", path: str = "/api/v5/fetch/{id}"
) -> dict[str, Any]:
    response = httpx.post(base_url + path.format(id=job_id), json={"key": key}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_done(
    base_url: str,
    job_id: int,
    key: str = "",
    timeout: float = 180,
    seen: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Poll fetch until the job is no longer "processing"; ``seen`` collects the bodies."""
    deadline = time.time() + timeout
    while True:
        body = fetch(base_url, job_id, key)
        if seen is not None:
            seen.append(body)
        if body["status"] != "processing":
            return body
        assert time.time() < deadline, f"job {job_id} still processing after {timeout} s"
        time.sleep(0.1)


def submit_and_wait(base_url: str, body: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
    """The success body whether the server answered at once or with "processing" (slow CPU)."""
    response = post(base_url, body, timeout=timeout)
    assert response.status_code == 200, response.text
    answer = response.json()
    if answer["status"] == "processing":
        answer = wait_done(base_url, answer["id"], body.get("key", ""), timeout)
    assert answer["status"] == "success", answer
    return answer


def scrape(server) -> dict[tuple[str, tuple], float]:
    response = httpx.get(server.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name.startswith("alphacut_"), family.name
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class WebhookReceiver:
    """Records every delivery (signature checked with ``verify``); answers 500 to the first
    ``fail_first`` deliveries and ``then`` afterwards."""

    def __init__(self, secret: str = SECRET, fail_first: int = 0, then: int = 200) -> None:
        self.calls: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                header = self.headers.get(SIGNATURE_HEADER, "")
                code = 500 if len(receiver.calls) < fail_first else then
                receiver.calls.append(
                    {
                        "verified": verify(secret, body, header),
                        "header": header,
                        "payload": json.loads(body),
                        "answered": code,
                        "at": time.time(),
                    }
                )
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def open_job_store(home: Path) -> SQLJobStore:
    """The job store of a server whose home is ``home``, to read alongside it (WAL)."""
    return SQLJobStore(sqlite_url(home / "jobs.sqlite3"))


class ServerProcess:
    """``alphacut serve`` in a subprocess; its log goes to a file the test can read.

    ``env`` adds or overrides ``ALPHACUT_*`` variables (the real model, one worker by default);
    ``args`` are more options of ``alphacut serve`` (``--workers 2``).
    """

    def __init__(
        self,
        home: Path,
        log: Path,
        port: int,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            "ALPHACUT_HOME": str(home),
            "ALPHACUT_MODEL_DIR": str(load_settings().model_dir),
            "ALPHACUT_URL_ALLOWLIST": "127.0.0.1",
            "ALPHACUT_WORKERS": "1",
            **(env or {}),
        }
        cli = Path(sys.executable).with_name("alphacut")
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(cli), "serve", "--port", str(self.port), *args],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not become ready:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=150)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
