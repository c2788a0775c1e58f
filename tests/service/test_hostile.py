"""Issue 20's findings over real HTTP, against ``alphacut serve`` in a process of its own so that
its peak memory can be read: every hostile request gets a JSON 4xx with the usual headers, no
traceback, and raises the server's peak RSS by less than 100 MB."""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import free_port, png_data_uri, subject_image
from tests.jobhelpers import ServerProcess
from tests.pipeline.test_decode_bounds import HOSTILE as HOSTILE_FILES

# What one hostile request may add to the server's peak RSS.
PEAK_GROWTH_LIMIT = 100 * 1024 * 1024
# bench/reliability.py sets this to a file that collects each measured growth (JSON lines).
PEAK_REPORT = os.environ.get("ALPHACUT_PEAK_REPORT")
SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options")
KEY = "right-key"
REMOVEBG = "/api/v5/removebg_mask"


class Server(ServerProcess):
    def peak_growth(self, send: object) -> tuple[int, object]:
        """Resets the server's peak RSS, calls ``send()``, and returns how far the peak rose
        above the RSS before, with what ``send`` returned."""
        status = Path(f"/proc/{self.proc.pid}/status")
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

        def read(field: str) -> int:
            line = next(x for x in status.read_text().splitlines() if x.startswith(field))
            return int(line.split()[1]) * 1024

        before = read("VmRSS:")
        result = send()  # type: ignore[operator]
        growth = read("VmHWM:") - before
        if PEAK_REPORT:
            test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
            with open(PEAK_REPORT, "a") as report:
                report.write(json.dumps({"test": test, "bytes": growth}) + "\n")
        return growth, result


def _serve(root: Path, tiny_model_dir: Path, **env: str) -> Iterator[Server]:
    """``alphacut serve`` on the tiny model in ``root``; no traceback may reach its log."""
    process = Server(
        root / "home",
        root / "server.log",
        free_port(),
        {"ALPHACUT_MODEL": "tiny", "ALPHACUT_MODEL_DIR": str(tiny_model_dir), **env},
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
    log = (root / "server.log").read_text()
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("hostile")
    yield from _serve(root, tiny_model_dir, ALPHACUT_API_KEYS=KEY, ALPHACUT_WORKERS="1")


def assert_json_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert body["status"] == "error" and body["message"]
    for name in (*SECURITY_HEADERS, "x-request-id"):
        assert name in response.headers, name
    return body


def raw_post(url: str, path: str, body: bytes) -> httpx.Response:
    return httpx.post(
        url + path, content=body, headers={"Content-Type": "application/json"}, timeout=60
    )


@pytest.mark.parametrize(
    "path", ["/api/v5/removebg_mask", "/api/v5/fetch/1", "/api/v4/dreambooth/fetch"]
)
@pytest.mark.parametrize(
    "body",
    [
        b'{"key": "\\ud800", "image": "x"}',
        b'{"key": "k", "image": "\\udfff"}',
        b'{"\\ud83d": 1, "key": "k"}',
        b'{"key": "k", "webhook": ["a", {"b": "\\ud800x"}]}',
    ],
)
def test_strings_that_are_not_unicode_are_a_400_before_the_key(server, path, body) -> None:
    """A lone surrogate escape (any field, key or value, any depth) was a 500 with a traceback
    and a closed connection; now a 400 on a connection that stays usable."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        growth, response = server.peak_growth(
            lambda: client.post(path, content=body, headers={"Content-Type": "application/json"})
        )
        assert growth < PEAK_GROWTH_LIMIT, growth / 2**20
        message = assert_json_error(response, 400)["message"]
        assert "not valid Unicode" in str(message)
        assert client.get("/healthz").status_code == 200  # same connection, still open


def test_a_body_of_empty_objects_costs_little_and_is_refused(server) -> None:
    """31 MiB of ``{}`` with no key took 815 MB to parse; now refused on a count of the raw
    bytes before parsing."""
    body = b'{"image": [' + b"{}," * (31 * 1024 * 1024 // 3) + b'{}], "key": ""}'
    growth, response = server.peak_growth(
        lambda: raw_post(server.url, "/api/v5/removebg_mask", body)
    )
    assert_json_error(response, 400)
    assert "values" in response.json()["message"]
    assert growth < PEAK_GROWTH_LIMIT, growth / 2**20


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=6)
            | st.dictionaries(st.text(max_size=8), children, max_size=6)
        ),
        max_leaves=60,
    ),
    st.integers(1, 4000),
)
def test_any_json_body_without_a_valid_key_is_a_cheap_4xx(server, value, repeat) -> None:
    """Hypothesis over the structure of bodies with no valid key, repeated up to the body cap:
    a JSON 4xx (401, 400 or 422), never more than 100 MB of peak memory."""
    body = json.dumps({"key": "wrong", "items": [value] * repeat}).encode()
    growth, response = server.peak_growth(
        lambda: raw_post(server.url, "/api/v5/removebg_mask", body)
    )
    assert 400 <= response.status_code < 500, response.text[:200]
    assert response.json()["status"] == "error"
    assert growth < PEAK_GROWTH_LIMIT, growth / 2**20


def test_headers_over_16_kib_in_one_write_are_a_431(server) -> None:
    """h11 bounds only what it buffers between reads: a 120 KiB header block sent in one write
    was answered 200."""
    head = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: "
        + b"a" * (120 * 1024)
        + b"\r\n\r\n"
    )

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    growth, answer = server.peak_growth(send)
    assert growth < PEAK_GROWTH_LIMIT, growth / 2**20
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 431"), status_line
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["status"] == "error" and "16384" in body["message"]
    # Just under the limit is still answered.
    assert httpx.get(server.url + "/healthz", headers={"X-Filler": "a" * 15000}).status_code == 200


class _Compressed(http.server.BaseHTTPRequestHandler):
    """Answers with a small body that ``Content-Encoding: gzip, gzip, gzip`` would inflate to
    64 MiB, whatever Accept-Encoding asked for (set by the fixture)."""

    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Encoding", "gzip, gzip, gzip")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def compressing_upstream() -> Iterator[str]:
    _Compressed.body = gzip.compress(gzip.compress(gzip.compress(bytes(64 * 2**20), 9), 9), 9)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Compressed)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/bomb.png"
    httpd.shutdown()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, tiny_model_dir) -> Iterator[Server]:
    """An open server that may fetch from loopback (for the compressing upstream)."""
    yield from _serve(tmp_path_factory.mktemp("hostile-open"), tiny_model_dir)


@pytest.mark.parametrize("field", ["image", "bg_image"])
def test_compressed_upstream_answers_are_refused_undecoded(
    open_server, compressing_upstream, field
) -> None:
    """An upstream that gzips although asked for identity: refused with 422 before a byte is
    inflated (a 13 KB answer had grown the server by 2 GB), for the image and bg_image."""
    image, _ = subject_image()
    body = {"key": "", "image": png_data_uri(image), field: compressing_upstream}

    def send() -> httpx.Response:
        return httpx.post(open_server.url + "/api/v5/removebg_mask", json=body, timeout=60)

    growth, response = open_server.peak_growth(send)
    message = assert_json_error(response, 422)["message"]
    assert "Content-Encoding: gzip" in str(message)
    assert growth < PEAK_GROWTH_LIMIT, growth / 2**20


def test_an_unexpected_error_is_a_json_500_with_every_header(
    live_server, tiny_settings, monkeypatch, caplog
) -> None:
    """500s came from Starlette's outermost middleware: no security headers, no request id,
    and the connection closed. Now they are answered inside, like every other answer."""
    from alphacut.service import routes

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(routes, "read_image_source", broken)
    server = live_server(tiny_settings)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(REMOVEBG, json={"key": "", "image": "https://example.com/a.png"})
        assert_json_error(response, 500)
        assert response.json()["message"] == "internal server error"
        assert client.get("/healthz").status_code == 200
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and "a bug" in str(logged[0].exc_info[1])


def test_allowed_hosts(live_server, tiny_settings) -> None:
    """ALPHACUT_ALLOWED_HOSTS: other Host headers get a JSON 400; health checks answer any."""
    server = live_server(tiny_settings, allowed_hosts=("cutouts.example.com", "*.example.org"))
    for host, status in [
        ("cutouts.example.com", 200),
        ("cutouts.example.com:7000", 200),
        ("a.b.example.org", 200),
        ("127.0.0.1", 400),
        ("evil.com", 400),
        ("example.org", 400),
        ("cutouts.example.com.evil.com", 400),
    ]:
        response = httpx.get(server.url + "/openapi.json", headers={"Host": host})
        assert response.status_code == status, host
        if status == 400:
            assert_json_error(response, 400)
    assert httpx.get(server.url + "/healthz", headers={"Host": "10.0.0.7:7000"}).status_code == 200


def test_made_up_keys_on_an_open_server_share_the_no_key_limits(live_server, tiny_settings):
    """An open server with a rate limit: once the shared window is used up, inventing a key
    gets no fresh one (6 of 6 were accepted before)."""
    server = live_server(tiny_settings, rate_limit=2)
    image, _ = subject_image()
    uri = png_data_uri(image)
    answers = [
        httpx.post(server.url + REMOVEBG, json={"key": key, "image": uri}, timeout=60)
        for key in ["", "a", "made-up-1", "made-up-2", "made-up-3"]
    ]
    assert [a.status_code for a in answers] == [200, 200, 429, 429, 429]
    assert answers[2].json()["status"] == "error" and "retry_after" in answers[2].json()


def _solid_png_uri(width: int, height: int) -> str:
    return png_data_uri(Image.new("RGB", (width, height), (200, 30, 30)))


def test_bg_image_pixels_count_toward_the_megapixel_rate(live_server, tiny_settings, file_server):
    """A tiny image with a 0.6 MP background, against 1 MP a minute: the second is refused
    (all three were accepted when only the image counted)."""
    base, folder = file_server
    Image.new("RGB", (1000, 600)).save(folder / "bg-600k.png")
    server = live_server(tiny_settings, megapixel_limit=1.0)
    image, _ = subject_image()
    body = {"key": "", "image": png_data_uri(image), "bg_image": f"{base}/bg-600k.png"}
    codes = [httpx.post(server.url + REMOVEBG, json=body, timeout=60).status_code for _ in range(3)]
    assert codes == [200, 429, 429]


def test_images_refused_for_size_are_not_decoded_and_count_as_requests(live_server, tiny_settings):
    """Ten 42 MP images against 3 requests and 0.5 MP a minute gave ten 413s after decoding
    each (11.9 s of CPU); now the header says 413 for three, counted, and the rest get 429."""
    server = live_server(tiny_settings, rate_limit=3, megapixel_limit=0.5)
    big = _solid_png_uri(7000, 6000)
    answers = [
        httpx.post(server.url + REMOVEBG, json={"key": "", "image": big}, timeout=60)
        for _ in range(10)
    ]
    assert [a.status_code for a in answers] == [413] * 3 + [429] * 7
    assert "megapixels" in answers[0].json()["message"]
    assert answers[3].headers["X-RateLimit-Remaining"] == "0"


@pytest.mark.parametrize("name", ["ico-png-13000", "tiff-last-page-huge", "gif-screen-13000"])
def test_container_formats_over_the_pixel_limit_cost_little(server, name) -> None:
    """A 16x16 icon holding a 13000x13000 PNG cost 2.5 s and +646 MB before its 413; a huge
    last TIFF page or GIF screen was decoded. Over HTTP with a valid key: 413 from the bytes'
    declared sizes, the server's peak RSS barely moves."""
    data = HOSTILE_FILES[name]()
    body = {"key": KEY, "image": "data:image/png;base64," + base64.b64encode(data).decode()}

    def send() -> httpx.Response:
        return httpx.post(server.url + REMOVEBG, json=body, timeout=60)

    growth, response = server.peak_growth(send)
    assert "limit" in str(assert_json_error(response, 413)["message"])
    assert growth < PEAK_GROWTH_LIMIT, growth / 2**20
