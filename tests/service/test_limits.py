"""Issue 12's findings over real HTTP: every hostile request gets a 4xx JSON answer, no
traceback, and bounded memory; slow clients are cut off. The HTTP tests run in both modes:
embedded, and an API node of the session's cluster (tests/cluster.py)."""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from alphacut.logs import QUIET_LIBRARY_LOGGERS, configure_logging
from alphacut.service.limits import max_body_bytes
from tests.cluster import MODES
from tests.conftest import LiveServer, make_tiny_settings, png_data_uri, subject_image
from tests.jobhelpers import WebhookReceiver, fetch, wait_until

KEY = "right-key"


@pytest.fixture(scope="module", params=MODES)
def server(request, tmp_path_factory, tiny_model_dir) -> Iterator[LiveServer]:
    """One server per mode for the module's tests that need no settings of their own: their
    requests cannot disturb each other, and a cluster's API node takes a second to start."""
    if request.param == "embedded":
        home = tmp_path_factory.mktemp("limits") / "home"
        settings = make_tiny_settings(home, tiny_model_dir).model_copy(
            update={"webhook_backoff": 0.2}  # the cluster's workers retry after 0.5 s
        )
    else:
        settings = request.getfixturevalue("shared_cluster").settings
    with LiveServer(settings.model_copy(update={"api_keys": (KEY,)})) as server:
        yield server


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def raw_request(url: str, head: bytes, body_chunks: Iterable[bytes] = ()) -> bytes:
    """Send ``head`` and the chunks on one socket (stopping when the server hangs up) and
    return whatever the server answered."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered early and closed: that is the point
            pass
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except OSError:
            pass
    return answer


def status_and_json(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return status, json.loads(body)


# 1. Bodies are capped as they stream, before the key is checked.


def test_declared_oversized_body_is_refused_before_it_is_read(server, tracebacks):
    limit = max_body_bytes(server.settings)
    chunk = b"x" * 65536
    total = 3 * limit
    head = (
        f"POST /api/v5/removebg_mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {total}\r\n\r\n"
    ).encode()
    before = rss_bytes()
    answer = raw_request(server.url, head, (chunk for _ in range(total // len(chunk))))
    grown = rss_bytes() - before
    status, body = status_and_json(answer)
    assert status == 413 and body["status"] == "error" and "limit" in body["message"]
    assert grown < 8 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB"
    assert not tracebacks


def test_chunked_oversized_body_with_a_wrong_key_stops_at_the_cap(
    live_server, mode_settings, tracebacks
):
    cap = 1024 * 1024
    server = live_server(mode_settings, api_keys=(KEY,), max_body_bytes=cap)
    chunk = b"x" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    head = (
        b"POST /api/v5/removebg_mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    before = rss_bytes()
    answer = raw_request(server.url, head, (framed for _ in range(60 * 16)))  # 60 MB
    grown = rss_bytes() - before
    status, body = status_and_json(answer)
    assert status == 413, body
    assert grown < 8 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB"
    assert not tracebacks


def test_compressed_bodies_are_refused(server, tracebacks):
    response = httpx.post(
        server.url + "/api/v5/removebg_mask",
        content=b"\x1f\x8b" + b"\0" * 20,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 415 and response.json()["status"] == "error"
    assert not tracebacks


def test_body_that_arrives_too_slowly_gets_408(live_server, mode_settings, tracebacks):
    server = live_server(mode_settings, body_timeout=0.5)

    def drip() -> Iterator[bytes]:
        yield b'{"key": "'
        time.sleep(1.5)
        yield b'"}'

    head = (
        b"POST /api/v5/removebg_mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 11\r\n\r\n"
    )
    status, body = status_and_json(raw_request(server.url, head, drip()))
    assert status == 408 and "did not arrive" in str(body["message"])
    assert not tracebacks


# 2 and 12. One image limit however it arrives; big data URIs fit in form fields.


def test_multipart_upload_has_the_image_size_limit(live_server, mode_settings, tracebacks):
    server = live_server(mode_settings, max_download_bytes=100_000)
    response = httpx.post(
        server.url + "/api/v5/removebg_mask",
        data={"key": ""},
        files={"image": ("big.png", b"\x89PNG" + b"\0" * 150_000, "image/png")},
    )
    assert response.status_code == 413, response.text
    assert "limit" in response.json()["message"]
    assert not tracebacks


@pytest.mark.parametrize("encoding", ["form", "multipart"])
def test_data_uri_over_a_megabyte_in_a_form_field(server, encoding, tracebacks):
    image, _ = subject_image(1200, 1000)
    # Noise, so the PNG is well over the 1 MB that starlette allows a field by default.
    image = Image.frombytes("RGB", image.size, os.urandom(image.width * image.height * 3))
    uri = png_data_uri(image)
    assert len(uri) > 1024 * 1024
    fields = {"key": KEY, "image": uri, "only_mask": "true"}
    url = server.url + "/api/v5/removebg_mask"
    if encoding == "form":
        response = httpx.post(url, data=fields, timeout=120)
    else:
        response = httpx.post(url, data=fields, files={"unused": ("x", b"x")}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "success"
    assert not tracebacks


# 3 and 4. JSON Python cannot hold, numbers out of range: 400/422 with or without a key.


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"key": "", "image": "x", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"key": "", "seed": ' + b"9" * 5000 + b"}",
    ],
    ids=["deep", "deep-field", "long-int"],
)
def test_json_python_cannot_hold_is_a_400(server, raw, tracebacks):
    response = httpx.post(
        server.url + "/api/v5/removebg_mask",
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith("malformed JSON body")
    assert not tracebacks


HUGE = [float("inf"), "inf", "-inf", "nan", "1e999", "1e400", 10**400, "9" * 400, -(10**400)]
NUMERIC_FIELDS = [
    "alpha_matting_foreground_threshold",
    "alpha_matting_background_threshold",
    "alpha_matting_erode_size",
    "quality",
    "scale",
    "seed",
    "crop_margin",
]


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_non_finite_or_huge_numbers_are_a_422(server, field, tracebacks):
    image, _ = subject_image(40, 30)
    uri = png_data_uri(image)
    for value in HUGE:
        # inf and nan as JSON (Python writes Infinity/NaN, which json.loads reads back).
        body = json.dumps({"key": KEY, "image": uri, "format": "webp", field: value})
        response = httpx.post(
            server.url + "/api/v5/removebg_mask",
            content=body.replace("Infinity", "1e400") if value == float("inf") else body,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code in (400, 422), (field, value, response.text)
        assert field in response.json()["message"]
    assert not tracebacks


# 5. Output paths the file system refuses.


@pytest.mark.parametrize("path", ["%00", "a%00b.png", "a" * 5000, "/".join(["b" * 250] * 20)])
def test_odd_output_paths_are_404(server, path, tracebacks):
    response = httpx.get(f"{server.url}/outputs/{path}")
    assert response.status_code == 404
    assert response.json() == {"status": "error", "message": "output not found"}
    assert not tracebacks


# 6. Redirects to a scheme without a host.


@pytest.fixture
def redirector() -> Iterator[str]:
    """A loopback server answering every GET and POST with 302 to the Location in its path."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", self.path[1:])
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize("location", ["http:foo", "javascript:alert(1)", "https:x"])
@pytest.mark.parametrize("field", ["image", "bg_image"])
def test_redirect_to_a_url_without_host_is_a_4xx(server, redirector, location, field, tracebacks):
    image, _ = subject_image(40, 30)
    uri = png_data_uri(image)
    body = {"key": KEY, "image": uri, field: f"{redirector}/{location}"}
    response = httpx.post(server.url + "/api/v5/removebg_mask", json=body, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    assert "redirect" in response.json()["message"] or "host" in response.json()["message"]
    assert not tracebacks


def test_webhook_redirect_to_a_url_without_host_is_a_recorded_failure(
    tiny_settings, redirector, caplog
):
    from alphacut.io.sources import fetch_policy
    from alphacut.jobs.webhooks import WebhookSender

    caplog.set_level(logging.INFO)

    class Store:
        recorded: list[tuple[str, dict[str, object]]] = []

        def record_webhook(self, job_id, status, record, retry_at) -> None:
            self.recorded.append((status, record))

    class Job:
        id = 1
        webhook_attempts: list[object] = []
        request = {"webhook": f"{redirector}/http:foo"}

    store = Store()
    sender = WebhookSender(store, "secret", fetch_policy(tiny_settings), max_attempts=1)
    try:
        assert sender.attempt(Job(), {"status": "success"}) is False
    finally:
        sender.close()
    status, record = store.recorded[0]
    assert status == "failed" and "redirected to an invalid URL" in str(record["error"])
    assert not [r for r in caplog.records if r.exc_info]


# 7. A client that goes away mid-body.


def test_client_disconnect_mid_body_is_a_499_without_traceback(server, tracebacks, caplog):
    head = (
        b"POST /api/v5/removebg_mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + b'{"key": "' + b"x" * 1000)
        time.sleep(0.3)
    deadline = time.time() + 10
    while time.time() < deadline:
        lines = [r for r in caplog.records if r.name == "alphacut.access"]
        if lines:
            break
        time.sleep(0.05)
    assert [r.getMessage() for r in lines] == ["POST /api/v5/removebg_mask 499"]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'route="/api/v5/removebg_mask",status="499"' in metrics
    assert 'status="500"' not in metrics
    assert not tracebacks


# 8. No query strings (signatures, tokens) in the logs.


def test_fetch_and_webhook_urls_do_not_reach_the_logs(request, server, file_server, caplog):
    base, root = file_server
    image, _ = subject_image(40, 30)
    image.save(root / "secret-test.png")
    root_logger = logging.getLogger()
    saved = root_logger.handlers[:], root_logger.level
    levels = {name: logging.getLogger(name).level for name in QUIET_LIBRARY_LOGGERS}
    # A failed attempt, then a delivered one: no retry outlives the test.
    with WebhookReceiver(fail_first=1) as receiver:
        try:
            configure_logging("info")
            root_logger.addHandler(caplog.handler)
            body = {
                "key": KEY,
                "image": f"{base}/secret-test.png?X-Amz-Signature=SECRET1",
                "webhook": f"{receiver.url}?token=SECRET2",
            }
            response = httpx.post(server.url + "/api/v5/removebg_mask", json=body, timeout=60)
            assert response.status_code == 200, response.text
            wait_until(lambda: len(receiver.calls) == 2, what="a retried webhook delivery")
            job_id = response.json()["id"]
            wait_until(
                lambda: fetch(server.url, job_id, key=KEY).get("webhook_status") == "delivered",
                what="the delivery recorded",
            )
        finally:
            root_logger.handlers[:], _ = saved
            root_logger.setLevel(saved[1])
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
    assert "SECRET" not in caplog.text
    assert any(r.name == "alphacut.access" for r in caplog.records)
    if server.settings.broker_url:  # the webhook went from a worker: its log, not this process's
        logs: list[Path] = [w.log for w in request.getfixturevalue("shared_cluster").workers]
        text = "".join(log.read_text(errors="replace") for log in logs)
        assert "SECRET1" not in text and "SECRET2" not in text


# 9. Metric labels come from a known set.


def test_made_up_methods_share_one_metrics_label(server):
    for method in ("FOO", "BAR", "X" * 50):
        httpx.request(method, server.url + "/healthz")
    metrics = httpx.get(server.url + "/metrics").text
    assert "FOO" not in metrics and "BAR" not in metrics
    assert 'method="other",route="/healthz"' in metrics


# 10. Security headers on the page, the API and outputs.


def test_security_headers(server, tracebacks):
    for path in ("/", "/api/v5/fetch/1", "/outputs/none.png", "/docs", "/openapi.json"):
        response = (
            httpx.post(server.url + path, json={})
            if path.startswith("/api")
            else httpx.get(server.url + path)
        )
        headers = response.headers
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["X-Frame-Options"] == "DENY", path
        assert headers["Referrer-Policy"] == "no-referrer", path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path
    page = httpx.get(server.url + "/").headers["Content-Security-Policy"]
    assert "script-src 'self';" in page and "unsafe-inline" not in page


# 11. Slow clients cannot hold connections.


def test_connections_that_never_finish_their_headers_are_closed(live_server, mode_settings):
    server = live_server(mode_settings, header_timeout=1.0)
    host, port = server.url.removeprefix("http://").split(":")
    sockets = [socket.create_connection((host, int(port))) for _ in range(20)]
    started = time.monotonic()
    try:
        for sock in sockets:
            sock.sendall(b"POST /api/v5/removebg_mask HTTP/1.1\r\nHost: x\r\n")
            sock.settimeout(10)
        for sock in sockets:
            # Dripping a header line now and then does not restart the deadline.
            sock.sendall(b"X-Slow: 1\r\n")
        for sock in sockets:
            assert sock.recv(1024) == b""  # closed by the server
    finally:
        for sock in sockets:
            sock.close()
    assert time.monotonic() - started < 5
    # The server still answers at once.
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_a_keep_alive_connection_gets_a_header_deadline_for_each_request(
    live_server, mode_settings
):
    server = live_server(mode_settings, header_timeout=1.0, keep_alive_timeout=30)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):  # the whole first answer: headers and JSON body
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        assert sock.recv(1024) == b""
        assert time.monotonic() - started < 5


# 13. alphacut serve warns about an open server.


def test_serve_warns_on_a_public_address_without_keys() -> None:
    from alphacut.cli import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("example.com")


def test_managed_keys_count_as_keys_for_the_warning(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from alphacut.cli import _managed_keys_exist, app
    from alphacut.config import load_settings

    monkeypatch.setenv("ALPHACUT_HOME", str(tmp_path))
    monkeypatch.delenv("ALPHACUT_DATABASE_URL", raising=False)
    assert not _managed_keys_exist(load_settings())
    created = CliRunner().invoke(app, ["keys", "create", "--name", "ops"])
    assert created.exit_code == 0, created.output
    assert _managed_keys_exist(load_settings())
