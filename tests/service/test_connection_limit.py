"""ALPHACUT_MAX_CONNECTIONS over real HTTP: a request over the limit gets the API's JSON 503
with ``retry_after`` and ``Retry-After`` (not uvicorn's plain-text one), whatever it asks for,
and is counted in /metrics; requests admitted before keep going, and once connections close
the server answers again."""

from __future__ import annotations

import json
import socket

import httpx

from tests.conftest import LiveServer
from tests.jobhelpers import wait_until

# A body the route reads in two parts: the request stays in progress between them.
BODY = json.dumps({"image": "data:image/png;base64,AAAA"}).encode()


def _connect(server: LiveServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 answer with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int({k.lower(): v for k, v in headers.items()}["content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), body


def _assert_over_limit(response: httpx.Response, status: int = 503) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "1"
    assert response.headers["connection"] == "close"
    body = response.json()
    assert body["status"] == "error" and body["retry_after"] == 1
    assert "ALPHACUT_MAX_CONNECTIONS" in body["message"]
    # Answered by the application: its other headers are there too.
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "x-request-id" in response.headers


def test_requests_over_the_connection_limit_get_a_json_503_until_connections_close(
    live_server, tiny_settings
) -> None:
    server = live_server(tiny_settings, max_connections=3, keep_alive_timeout=30)
    state = server.server.server_state
    idle = _connect(server)  # a keep-alive connection between requests
    busy = _connect(server)  # a request in progress, waiting for the rest of its body
    try:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_answer(idle)[0] == 200
        busy.sendall(
            b"POST /api/v5/removebg_mask HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
            + BODY[:10]
        )
        wait_until(lambda: len(state.tasks) == 1, 10, "the held request to start")
        assert len(state.connections) == 2

        # A third connection is at the limit (its own counts, as in uvicorn): every path,
        # the API, the web page and its assets, health and metrics, gets the same JSON 503.
        _assert_over_limit(httpx.post(server.url + "/api/v5/removebg_mask", json={}))
        for path in ("/", "/ui/app.js", "/healthz", "/metrics", "/no-such-page"):
            _assert_over_limit(httpx.get(server.url + path))
        # With a third connection open (nothing sent yet), a request on one that was already
        # open is over the limit too, and its connection is closed after the answer.
        with _connect(server):
            wait_until(lambda: len(state.connections) == 3, 10, "the third connection")
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, body = _read_answer(idle)
            assert status == 503 and json.loads(body)["retry_after"] == 1
            assert idle.recv(1024) == b""

        # The request admitted before the limit was reached goes on to its own answer.
        busy.sendall(BODY[10:])
        status, body = _read_answer(busy)
        assert status != 503 and json.loads(body)["status"] == "error", body
    finally:
        idle.close()
        busy.close()

    wait_until(lambda: not state.connections, 10, "the held connections to close")
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/").status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    # Refused before routing, so under the one label for paths that were not matched.
    assert 'alphacut_http_requests_total{method="GET",route="unmatched",status="503"} 6.0' in (
        metrics
    ), metrics


def test_the_over_limit_answer_follows_errors_http_200(live_server, tiny_settings) -> None:
    server = live_server(tiny_settings, max_connections=1, errors_http_200=True)
    # With a limit of 1, any connection is at it: every request is refused.
    _assert_over_limit(httpx.get(server.url + "/healthz"), status=200)
