"""SSRF-safe fetching, against real HTTP servers on 127.0.0.1 only (never any other address)."""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import pytest

from alphacut.errors import FetchError, ImageTooLarge
from alphacut.io import fetch, pinned
from alphacut.io.fetch import FetchPolicy, check_url, fetch_url, post_json
from alphacut.io.pinned import PinnedBackend

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
LOOPBACK = ("127.0.0.1",)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(302, headers={"Location": location})

    def _stream(self, chunks: int, chunk: bytes, pause: float) -> None:
        """A body without Content-Length, written piecewise (the client may hang up early)."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        try:
            for _ in range(chunks):
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass

    def do_GET(self) -> None:
        path = self.path
        if path == "/image":
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif path == "/missing":
            self._send(404, b"nope")
        elif path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            self._redirect("/image" if left == 0 else f"/chain/{left - 1}")
        elif path == "/loop":
            self._redirect("/loop")
        elif path.startswith("/to-port/"):
            self._redirect(f"http://127.0.0.1:{path.rsplit('/', 1)[1]}/image")
        elif path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif path == "/to-ftp":
            self._redirect("ftp://127.0.0.1/image")
        elif path == "/no-location":
            self._send(302)
        elif path == "/big":
            self._stream(64, b"x" * 16384, 0)  # 1 MiB, no Content-Length
        elif path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(50 * 1024 * 1024))
            self.end_headers()
        elif path == "/slow":
            time.sleep(3)
            self._send(200, PNG)
        elif path == "/drip":
            self._stream(40, b"x", 0.1)  # each read is quick; only a total deadline stops it
        elif path == "/echo-host":
            self._send(200, self.headers.get("Host", "").encode())
        else:
            self._send(404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append((self.path, dict(self.headers.items()), body))
        self._send(500 if self.path == "/hook-500" else 204)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    received: list[tuple[str, dict[str, str], bytes]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up on /slow, /big... are expected


@contextlib.contextmanager
def _start(ssl_context: ssl.SSLContext | None = None) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.received = []
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    with _start() as running:
        yield running


@pytest.fixture(scope="module")
def other_server() -> Iterator[_Server]:
    with _start() as running:
        yield running


@pytest.fixture
def base(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def port(server: _Server) -> int:
    return int(server.server_address[1])


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every address we dial, and make dialing anything but loopback a test failure."""
    dialed: list[str] = []
    real = httpcore.SyncBackend.connect_tcp

    def guarded(self: httpcore.SyncBackend, host: str, port: int, **kwargs: Any) -> Any:
        assert ipaddress.ip_address(host).is_loopback, f"test tried to connect to {host}"
        dialed.append(host)
        return real(self, host, port, **kwargs)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", guarded)
    return dialed


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Replace the module's resolver with a table; lookups are recorded under "calls"."""
    table: dict[str, list[str]] = {"calls": []}

    def resolve(host: str, port: int) -> list[str]:
        table["calls"].append(host)
        if host not in table:
            raise socket.gaierror("not in fake DNS")
        return table[host]

    monkeypatch.setattr(fetch, "_resolve", resolve)
    return table


# --------------------------------------------------------------------------- address policy


def test_loopback_refused_without_allowlist(base: str, connections: list[str]) -> None:
    with pytest.raises(FetchError, match="not a public address") as info:
        fetch_url(f"{base}/image", FetchPolicy())
    assert info.value.status_code == 400
    with pytest.raises(FetchError, match="resolves to a non-public"):
        fetch_url(f"http://localhost:{base.rsplit(':', 1)[1]}/image", FetchPolicy())
    assert connections == []


def test_allowlisted_host(base: str) -> None:
    got = fetch_url(f"{base}/image", FetchPolicy(allowlist=LOOPBACK))
    assert got.content == PNG
    assert got.content_type == "image/png"
    assert got.url == f"{base}/image"


def test_allowlisted_host_and_port(base: str, port: int) -> None:
    got = fetch_url(f"{base}/image", FetchPolicy(allowlist=(f"127.0.0.1:{port}",)))
    assert got.content == PNG


def test_allowlist_for_another_port_refuses(base: str, port: int) -> None:
    policy = FetchPolicy(allowlist=(f"127.0.0.1:{port + 1 if port < 65535 else 1}",))
    with pytest.raises(FetchError, match="not a public address"):
        fetch_url(f"{base}/image", policy)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://", "no host"),
        ("http:///path", "no host"),
        ("ftp://example.com/a.png", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("example.com/a.png", "http:// or https://"),
        ("", "http:// or https://"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://example.com:99999/", "port"),
        ("http://exa mple.com/", "host is not valid"),
        ("http://[fe80::1%25eth0]/", "zone"),
    ],
)
def test_bad_urls(url: str, fragment: str, connections: list[str]) -> None:
    with pytest.raises(FetchError, match="invalid image URL") as info:
        fetch_url(url, FetchPolicy())
    assert fragment in str(info.value)
    assert info.value.status_code == 400
    assert connections == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://[::1]/",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://[64:ff9b::7f00:1]/",
        "https://[2002:7f00:1::]/",
    ],
)
def test_non_public_literals_refused_before_any_connection(
    url: str, connections: list[str], fake_dns: dict[str, list[str]]
) -> None:
    with pytest.raises(FetchError, match="not a public address"):
        fetch_url(url, FetchPolicy())
    assert connections == [] and fake_dns["calls"] == []  # no DNS, no dial


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.1"])
def test_numeric_host_spellings_resolve_and_are_refused(host: str) -> None:
    with pytest.raises(FetchError, match="non-public"):
        check_url(f"http://{host}/", FetchPolicy())


def test_any_private_address_in_the_answer_refuses(
    fake_dns: dict[str, list[str]], connections: list[str]
) -> None:
    fake_dns["mixed.test"] = ["93.184.216.34", "10.1.2.3"]
    with pytest.raises(FetchError, match="resolves to a non-public") as info:
        check_url("http://mixed.test/", FetchPolicy(), label="webhook URL")
    assert "10.1.2.3" not in str(info.value)  # internal DNS data is not echoed back
    assert str(info.value).startswith("webhook URL refused")
    fake_dns["public.test"] = ["93.184.216.34", "2606:2800:220:1::1"]
    check_url("https://public.test/hook", FetchPolicy())  # passes; nothing is dialed
    assert connections == []


def test_refusals_name_the_allowlist_and_its_doc(
    fake_dns: dict[str, list[str]], connections: list[str]
) -> None:
    """A newcomer whose image server is on a private address learns the setting that allows
    it, and where it is explained; the message shows nothing more of the address than before
    (the literal as typed; a name's addresses never)."""
    hint = "; to allow it, add host:port to ALPHACUT_URL_ALLOWLIST (see docs/safety.md)"
    with pytest.raises(FetchError) as literal:
        fetch_url("http://10.1.2.3:8081/a.png", FetchPolicy())
    assert str(literal.value) == "image URL refused: 10.1.2.3 is not a public address" + hint
    fake_dns["images.internal"] = ["192.168.7.9", "fd00::7"]
    with pytest.raises(FetchError) as named:
        check_url("http://images.internal:8081/a.png", FetchPolicy(), label="webhook URL")
    assert str(named.value).startswith("webhook URL refused: host 'images.internal' resolves")
    assert str(named.value).endswith(hint)
    assert "192.168" not in str(named.value) and "fd00" not in str(named.value)
    assert connections == []
    # The doc the message names explains the setting (the path is relative to the repository).
    safety = Path(__file__).resolve().parents[2] / "docs" / "safety.md"
    assert "`ALPHACUT_URL_ALLOWLIST` lists hosts or `host:port`" in safety.read_text()
    # With the address on the allowlist the same URL passes.
    check_url("http://images.internal:8081/a.png", FetchPolicy(allowlist=("images.internal:8081",)))


def test_unresolvable_host(fake_dns: dict[str, list[str]]) -> None:
    with pytest.raises(FetchError, match="could not resolve host 'nowhere.test'"):
        check_url("http://nowhere.test/", FetchPolicy())


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("::ffff:10.0.0.1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("100.127.255.255", False),
        ("255.255.255.255", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert fetch._is_public(ipaddress.ip_address(address)) is public


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        FetchPolicy(allowlist=("host:notaport",))
    with pytest.raises(ValueError):
        FetchPolicy(max_bytes=0)
    allowed = fetch._parse_allowlist(("[::1]:8080", "::1", "Example.COM.", "localhost:8081"))
    assert allowed == {("::1", 8080), ("::1", None), ("example.com", None), ("localhost", 8081)}


# --------------------------------------------------------------------------- HTTP behaviour


def test_upstream_error_names_the_status(base: str) -> None:
    with pytest.raises(FetchError) as info:
        fetch_url(f"{base}/missing", FetchPolicy(allowlist=LOOPBACK))
    assert str(info.value) == "could not fetch image: upstream answered HTTP 404"
    assert 400 <= info.value.status_code < 500


def test_redirect_chain_is_followed(base: str) -> None:
    got = fetch_url(f"{base}/chain/4", FetchPolicy(allowlist=LOOPBACK))  # exactly 5 redirects
    assert got.content == PNG
    assert got.url == f"{base}/image"


def test_redirect_loop_is_cut(base: str) -> None:
    with pytest.raises(FetchError, match="too many redirects"):
        fetch_url(f"{base}/loop", FetchPolicy(allowlist=LOOPBACK))
    with pytest.raises(FetchError, match="too many redirects"):
        fetch_url(f"{base}/chain/1", FetchPolicy(allowlist=LOOPBACK, max_redirects=1))


def test_redirect_to_other_port_is_rechecked(
    base: str, port: int, other_server: _Server, connections: list[str]
) -> None:
    other = other_server.server_address[1]
    with pytest.raises(FetchError, match="redirect target refused"):
        fetch_url(f"{base}/to-port/{other}", FetchPolicy(allowlist=(f"127.0.0.1:{port}",)))
    assert len(connections) == 1  # only the first hop was dialed
    # With the host allow-listed for any port, the same redirect is fine.
    got = fetch_url(f"{base}/to-port/{other}", FetchPolicy(allowlist=LOOPBACK))
    assert got.url == f"http://127.0.0.1:{other}/image"


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/to-metadata", "169.254.169.254 is not a public address"),
        ("/to-ftp", "scheme 'ftp'"),
        ("/no-location", "without a Location header"),
    ],
)
def test_bad_redirects(base: str, path: str, fragment: str) -> None:
    with pytest.raises(FetchError, match=fragment):
        fetch_url(f"{base}{path}", FetchPolicy(allowlist=LOOPBACK))


def test_streamed_body_over_limit(base: str) -> None:
    with pytest.raises(ImageTooLarge) as info:
        fetch_url(f"{base}/big", FetchPolicy(allowlist=LOOPBACK, max_bytes=100_000))
    assert info.value.status_code == 413


def test_declared_length_over_limit_fails_early(base: str) -> None:
    started = time.monotonic()
    with pytest.raises(ImageTooLarge):
        fetch_url(f"{base}/big-declared", FetchPolicy(allowlist=LOOPBACK, max_bytes=1000))
    assert time.monotonic() - started < 1


def test_slow_upstream_times_out(base: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_url(f"{base}/slow", FetchPolicy(allowlist=LOOPBACK, total_timeout=0.5))
    assert str(info.value) == "timed out fetching image after 0.5 s"
    assert info.value.status_code == 400
    assert time.monotonic() - started < 1.5


def test_total_deadline_covers_a_dripping_body(base: str) -> None:
    # Each read returns within 0.1 s, so only a whole-fetch deadline can stop this.
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out fetching image after 0.6 s"):
        fetch_url(f"{base}/drip", FetchPolicy(allowlist=LOOPBACK, total_timeout=0.6))
    assert time.monotonic() - started < 1.5


def test_connection_refused_is_a_client_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and is now closed
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(FetchError, match="could not connect to 127.0.0.1") as info:
        fetch_url(f"http://127.0.0.1:{closed}/image", FetchPolicy(allowlist=LOOPBACK))
    assert info.value.status_code == 400


# --------------------------------------------------------------------------- DNS pinning


def test_connection_uses_the_single_checked_resolution(
    port: int, monkeypatch: pytest.MonkeyPatch, connections: list[str]
) -> None:
    """DNS rebinding: the name answers loopback once, then would fail. We must not ask again."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real(host, *args, **kwargs)
        asked.append(host)
        if len(asked) > 1:
            raise socket.gaierror("second lookup: the rebinding answer")
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    got = fetch_url(f"http://rebind.test:{port}/echo-host", FetchPolicy(allowlist=("rebind.test",)))
    assert got.content == f"rebind.test:{port}".encode()  # Host header keeps the name
    assert asked == ["rebind.test"]
    assert connections == ["127.0.0.1"]


def test_resolver_called_once_per_hop(
    port: int, fake_dns: dict[str, list[str]], connections: list[str]
) -> None:
    # The system resolver cannot resolve *.test, so success proves we dial the pinned address.
    fake_dns["rebind.test"] = ["127.0.0.1"]
    got = fetch_url(f"http://rebind.test:{port}/chain/2", FetchPolicy(allowlist=("rebind.test",)))
    assert got.url == f"http://rebind.test:{port}/image"
    assert fake_dns["calls"] == ["rebind.test"] * 4  # 3 redirects + the final GET
    assert connections == ["127.0.0.1"] * 4


def test_pinned_backend_refuses_other_destinations() -> None:
    backend = PinnedBackend("a.test", 80, ("127.0.0.1",), time.monotonic() + 5, 1.0)
    with pytest.raises(httpcore.ConnectError):
        backend.connect_tcp("b.test", 80)
    with pytest.raises(httpcore.ConnectError):
        backend.connect_tcp("a.test", 81)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=rebind.test", "-addext", "subjectAltName=DNS:rebind.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_verifies_the_original_hostname(
    tls_files: tuple[Path, Path], fake_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    monkeypatch.setattr(pinned, "_ssl_context", lambda: ssl.create_default_context(cafile=cert))
    fake_dns["rebind.test"] = fake_dns["other.test"] = ["127.0.0.1"]
    policy = FetchPolicy(allowlist=("rebind.test", "other.test"))
    with _start(server_ctx) as tls_server:
        tls_port = tls_server.server_address[1]
        got = fetch_url(f"https://rebind.test:{tls_port}/echo-host", policy)
        assert got.content == f"rebind.test:{tls_port}".encode()
        # Same IP, but the certificate is not for this name: pinning must not weaken TLS.
        with pytest.raises(FetchError, match="TLS certificate of other.test is not valid"):
            fetch_url(f"https://other.test:{tls_port}/image", policy)


# --------------------------------------------------------------------------- webhooks


def test_post_json_delivers(server: _Server, base: str) -> None:
    server.received.clear()
    status = post_json(
        f"{base}/hook", b'{"ok":true}', {"X-Signature": "abc"}, FetchPolicy(allowlist=LOOPBACK)
    )
    assert status == 204
    path, headers, body = server.received[-1]
    assert (path, body) == ("/hook", b'{"ok":true}')
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Signature"] == "abc"


def test_post_json_returns_upstream_failure_status(base: str) -> None:
    assert post_json(f"{base}/hook-500", b"{}", {}, FetchPolicy(allowlist=LOOPBACK)) == 500


def test_post_json_applies_ssrf_rules(base: str, connections: list[str]) -> None:
    with pytest.raises(FetchError, match="webhook URL refused"):
        post_json(f"{base}/hook", b"{}", {}, FetchPolicy())
    with pytest.raises(FetchError, match="webhook URL refused"):
        post_json("http://169.254.169.254/", b"{}", {}, FetchPolicy())
    assert connections == []


def test_post_json_network_failure_is_fetch_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(FetchError, match="delivering webhook failed: could not connect"):
        post_json(f"http://127.0.0.1:{closed}/hook", b"{}", {}, FetchPolicy(allowlist=LOOPBACK))
