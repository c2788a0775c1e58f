"""Issue 20, items 3 and 4 over real HTTP: a request whose decoded input or computed output
would be over ALPHACUT_MAX_PIXELS gets a 413 JSON answer naming the size and the limit,
without the memory that size would take and without a traceback, in both modes (embedded, and
an API node of the session's cluster, whose worker computes the output)."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import httpx

from tests.conftest import LiveServer

ENDPOINT = "/api/v5/removebg_mask"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def reset_peak() -> int | None:
    """Reset this process's peak RSS (the server runs in it) and return the RSS now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status("VmRSS")
    except (OSError, LookupError):
        return None


def peak_growth(before: int | None) -> float:
    return 0.0 if before is None else (_status("VmHWM") - before) / 2**20


def chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def bilevel_png(width: int, height: int, white: bool) -> bytes:
    """A 1-bit PNG by hand: a few hundred bytes for millions of pixels."""
    row = b"\0" + (b"\xff" if white else b"\0") * ((width + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(row * height, 9))
        + chunk(b"IEND", b"")
    )


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_a_crop_margin_canvas_over_the_limit_is_a_413(live_server, mode_settings, tracebacks):
    """crop_margin 500 around the whole of a white 1x60000 PNG (197 bytes): a 1001x61000
    output, 2.5 s and +469 MB before this check; now refused before the canvas exists. The
    tiny model calls white pixels subject, so the subject's box is the whole image."""
    server: LiveServer = live_server(mode_settings)
    image = data_uri(bilevel_png(1, 60_000, white=True))
    before = reset_peak()
    response = httpx.post(
        server.url + ENDPOINT,
        json={"key": "", "image": image, "crop": True, "crop_margin": 500},
        timeout=120,
    )
    grown = peak_growth(before)
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["status"] == "error"
    assert "1001x61000 = 61061000 pixels" in body["message"]
    assert "the limit is 50000000 pixels" in body["message"]
    assert grown < 100, f"peak RSS grew by {grown:.0f} MB"
    # The same image with a margin that fits is an ordinary request.
    response = httpx.post(
        server.url + ENDPOINT,
        json={"key": "", "image": image, "crop": True, "crop_margin": 20, "only_mask": True},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "success"
    assert not tracebacks


def test_an_icon_hiding_a_huge_png_is_a_cheap_413(live_server, mode_settings, tracebacks):
    """A 16x16 icon entry holding a 13000x13000 PNG: Pillow decoded it inside Image.open
    (+161 MB for this 1-bit one, +644 MB for an RGBA one) before the 413; now its header is
    read first."""
    server: LiveServer = live_server(mode_settings)
    png = bilevel_png(13000, 13000, white=False)
    icon = struct.pack("<HHH", 0, 1, 1) + struct.pack(
        "<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22
    )
    before = reset_peak()
    response = httpx.post(
        server.url + ENDPOINT,
        data={"key": ""},
        files={"image": ("icon.ico", icon + png, "image/x-icon")},
        timeout=120,
    )
    grown = peak_growth(before)
    assert response.status_code == 413, response.text
    assert response.json() == {
        "status": "error",
        "message": "icon entry 1 (a PNG) is 13000x13000 = 169000000 pixels; "
        "the limit is 50000000 pixels",
    }
    assert grown < 60, f"peak RSS grew by {grown:.0f} MB"
    assert not tracebacks
