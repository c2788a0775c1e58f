"""What a file may declare before any pixel is decoded (issue 20, item 3).

Every frame, page or entry a file declares is checked against the pixel limit before Pillow
decodes (or, for ICO, even opens) it, and structures that cost memory or time before any pixel
(chunk floods, thousands of frames or scans) are refused. Two layers:

- hostile files with real declared sizes (13000x13000 inside a 16x16 icon, a huge last TIFF
  page, 10 million GIF comment blocks...): each is refused with ``ImageTooLarge`` (413) in
  well under 0.5 s of CPU and a few MB of peak memory, measured in this process (peak RSS,
  reset through /proc/self/clear_refs);
- Hypothesis over each container's declared sizes, frame counts and nesting, on small valid
  files made by Pillow and a small limit: refused exactly when some frame, page, entry or
  count is over it, decoded otherwise.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from alphacut.errors import ImageTooLarge, InvalidImage
from alphacut.pipeline import decode as decode_mod
from alphacut.pipeline.decode import decode_image
from tests.pipeline.test_decode import encode, png_chunk

LIMIT = 50_000_000  # ALPHACUT_MAX_PIXELS's default
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE_CPU_SECONDS = 0.5
HOSTILE_PEAK_MB = 40

webp = pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")


# --- building files ------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_MAGIC + b"".join(png_chunk(kind, payload) for kind, payload in chunks)


def bilevel_png(width: int, height: int, extra: bytes = b"", pixels: bool = True) -> bytes:
    """A black 1-bit PNG by hand: tiny even at 13000x13000, 169 MB once decoded. ``extra``
    goes before IDAT; without ``pixels`` the image data is an empty zlib stream."""
    row = b"\0" * (1 + (width + 7) // 8)
    idat = zlib.compress(row * height, 9) if pixels else zlib.compress(b"")
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        PNG_MAGIC
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def apng(width: int, height: int, frames: int, frame_size: tuple[int, int] | None = None) -> bytes:
    """A PNG with an acTL declaring ``frames`` and one fcTL of ``frame_size``."""
    fw, fh = frame_size or (width, height)
    actl = png_chunk(b"acTL", struct.pack(">II", frames, 0))
    fctl = png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, fw, fh, 0, 0, 1, 10, 0, 0))
    return bilevel_png(width, height, actl + fctl, pixels=False)


def ico(entries: list[tuple[int, int, bytes]], kind: int = 1) -> bytes:
    """An icon file (``kind`` 2: a cursor) of (directory width, directory height, payload)."""
    head = struct.pack("<HHH", 0, kind, len(entries))
    offset = 6 + 16 * len(entries)
    directory, payloads = b"", b""
    for width, height, payload in entries:
        where = offset + len(payloads)
        directory += struct.pack(
            "<BBBBHHII", width & 255, height & 255, 0, 0, 1, 32, len(payload), where
        )
        payloads += payload
    return head + directory + payloads


def dib(width: int, height: int, pixel_bytes: int = 0) -> bytes:
    """A BITMAPINFOHEADER as icons hold it (the height counts the AND mask too)."""
    header = struct.pack("<IiiHHIIiiII", 40, width, 2 * height, 1, 32, 0, 0, 0, 0, 0, 0)
    return header + b"\0" * pixel_bytes


def icon_payload(image: Image.Image, bitmap: bool) -> bytes:
    """The one entry of an ICO Pillow writes for ``image`` (a PNG, or a DIB)."""
    data = encode(image, "ICO", sizes=[image.size], bitmap_format="bmp" if bitmap else "png")
    size, offset = struct.unpack_from("<II", data, 6 + 8)
    return data[offset : offset + size]


def tiff(
    pages: list[tuple[int, int]],
    *,
    big: bool = False,
    tile: tuple[int, int] | None = None,
    strips: int = 1,
    extra_tags: int = 0,
) -> bytes:
    """Pages of 8-bit grey, uncompressed, written by hand (classic or BigTIFF); only small
    pages get their pixels. ``strips`` strips (or tiles) per page; ``extra_tags`` unknown
    tags per page."""
    word = "<Q" if big else "<I"
    out = bytearray(b"II+\x00" + struct.pack("<HHQ", 8, 0, 0) if big else b"II*\x00\0\0\0\0")
    next_at = 8 if big else 4
    for width, height in pages:
        data_at = len(out)
        small = width * height <= 1 << 16
        out += b"\x80" * (width * height if small else 16)
        rows = -(-height // strips)  # rows per strip
        offsets = [data_at + i * rows * width for i in range(strips)]
        counts = [min(rows, height - i * rows) * width for i in range(strips)]
        arrays_at = len(out)
        out += struct.pack(f"<{strips}{word[1]}", *offsets)
        out += struct.pack(f"<{strips}{word[1]}", *counts)
        if strips > 1:
            offsets_value, counts_value = arrays_at, arrays_at + strips * struct.calcsize(word)
        else:
            offsets_value, counts_value = offsets[0], counts[0]
        entries = [(256, width), (257, height), (258, 8), (259, 1), (262, 1), (277, 1)]
        if tile:
            entries += [(322, tile[0]), (323, tile[1]), (324, offsets_value)]
            entries += [(325, counts_value)]
        else:
            entries += [(273, offsets_value), (278, rows), (279, counts_value)]
        entries += [(40000 + i, 0) for i in range(extra_tags)]
        if len(out) % 2:
            out += b"\0"
        ifd_at = len(out)
        out += struct.pack("<Q" if big else "<H", len(entries))
        for tag, value in sorted(entries):
            n = strips if tag in (273, 279, 324, 325) else 1
            if big:  # LONG8 values
                out += struct.pack("<HHQQ", tag, 16, n, value)
            else:
                out += struct.pack("<HHII", tag, 4, n, value)
        struct.pack_into(word, out, next_at, ifd_at)
        next_at = len(out)
        out += struct.pack(word, 0)
    return bytes(out)


def deflate_tiled_tiff(width: int, height: int, tile: int) -> bytes:
    """A small 8-bit grey page in one deflate-compressed ``tile`` x ``tile`` tile, whose data
    really inflates to the whole tile (libtiff decodes a tile whole, whatever the page)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * tile
    data = b"".join(compressor.compress(row * 256) for _ in range(tile // 256))
    data += compressor.flush()
    entries = [(256, width), (257, height), (258, 8), (259, 8), (262, 1), (277, 1)]
    entries += [(322, tile), (323, tile), (324, 0), (325, len(data))]
    data_at = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, value in entries:
        ifd += struct.pack("<HHII", tag, 4, 1, data_at if tag == 324 else value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + data


def gif(
    screen: tuple[int, int], frames: list[tuple[int, int, int, int]], middle: bytes = b""
) -> bytes:
    """A GIF by hand: a 2-colour table, then ``middle`` (extension blocks), then frames of
    (left, top, width, height) with a one-code LZW stream each."""
    head = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    body = b"".join(
        b"\x2c" + struct.pack("<HHHHB", *frame, 0) + b"\x02\x02\x4c\x01\x00" for frame in frames
    )
    return head + middle + body + b";"


def gif_from_frames(screen: tuple[int, int], frames: list[tuple[int, int, int, int]]) -> bytes:
    """A valid GIF: Pillow encodes each (left, top, width, height) frame alone with one
    shared palette; the frames are joined under a logical screen of ``screen``."""
    palette = [0, 0, 0, 255, 255, 255] + [0] * 762
    head, parts = b"", []
    for index, (left, top, width, height) in enumerate(frames):
        image = Image.new("P", (width, height), index % 2)
        image.putpalette(palette)
        data = encode(image, "GIF", optimize=False)
        at = 13 + 768  # Pillow writes the header, a 256-colour table, then the frame
        assert data[at] == 0x2C
        frame = bytearray(data[at:-1])
        struct.pack_into("<HH", frame, 1, left, top)
        parts.append(bytes(frame))
        head = data[:at]
    header = bytearray(head)
    struct.pack_into("<HH", header, 6, *screen)
    return bytes(header) + b"".join(parts) + b";"


def u24(value: int) -> bytes:
    return value.to_bytes(3, "little")


def riff(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def webp_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)


def webp_canvas(width: int, height: int, frames: int = 0, unknown: int = 0) -> bytes:
    """A VP8X WebP of a ``width`` x ``height`` canvas: ``frames`` 1x1 animation frames (or a
    1x1 still image), after ``unknown`` empty unknown chunks."""
    still = encode(Image.new("RGB", (1, 1)), "WEBP", lossless=True)[12:]  # its VP8L chunk
    flags = 0x02 if frames else 0
    body = webp_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + u24(width - 1) + u24(height - 1))
    body += b"abcd\0\0\0\0" * unknown
    if frames:
        body += webp_chunk(b"ANIM", b"\0" * 6)
        header = u24(0) + u24(0) + u24(0) + u24(0) + u24(100) + b"\0"
        body += webp_chunk(b"ANMF", header + still) * frames
    else:
        body += still
    return riff(body)


def webp_vp8l(width: int, height: int) -> bytes:
    """A simple (no VP8X) lossless WebP header declaring ``width`` x ``height``."""
    bits = (width - 1) | (height - 1) << 14
    return riff(webp_chunk(b"VP8L", b"\x2f" + struct.pack("<I", bits) + b"\0" * 16))


def jpeg() -> bytes:
    return encode(Image.new("RGB", (16, 16), (90, 120, 200)), "JPEG")


def jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(jpeg())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def jpeg_with_segments(count: int) -> bytes:
    """A JPEG with exactly ``count`` segments (markers with a length) up to its first scan's
    header included: Pillow's own, then empty APP5 segments."""
    data = jpeg()
    pos, own = 2, 1  # the SOS
    while data[pos + 1] != 0xDA:
        own += 1
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return b"\xff\xd8" + b"\xff\xe5\x00\x02" * (count - own) + data[2:]


def jpeg_with_junk(count: int) -> bytes:
    """A JPEG with ``count`` zero bytes after its first segment: Pillow skips them one read
    at a time."""
    data = jpeg()
    end = 4 + struct.unpack_from(">H", data, 4)[0]
    return data[:end] + b"\0" * count + data[end:]


def progressive_jpeg(extra_scans: int, size: tuple[int, int] = (64, 64)) -> bytes:
    """A progressive JPEG whose last scan is repeated ``extra_scans`` times: libjpeg decodes
    each one over the whole image (a 296 KB file of 20,000 cost 70 s of CPU on 4 MP)."""
    data = encode(Image.new("RGB", size, (120, 30, 200)), "JPEG", progressive=True)
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * extra_scans + b"\xff\xd9"


def heif(sizes: list[tuple[int, int]]) -> bytes:
    pillow_heif = pytest.importorskip("pillow_heif")
    images = [Image.new("RGB", size, (20 * i, 90, 160)) for i, size in enumerate(sizes)]
    container = pillow_heif.from_pillow(images[0])
    for image in images[1:]:
        container.add_from_pillow(image)
    buffer = io.BytesIO()
    try:
        container.save(buffer, quality=50)
    except (OSError, KeyError, ValueError) as exc:
        pytest.skip(f"no HEIF encoder: {exc}")
    return buffer.getvalue()


def heif_declaring(width: int, height: int) -> bytes:
    """A small HEIC whose image-size box (ispe) declares ``width`` x ``height``."""
    data = bytearray(heif([(64, 64)]))
    at = data.index(b"ispe")
    struct.pack_into(">II", data, at + 8, width, height)
    return bytes(data)


# --- measuring -----------------------------------------------------------------------------


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


@contextmanager
def peak_memory() -> Iterator[Callable[[], float | None]]:
    """Peak resident memory added inside the block, in MB (None where Linux cannot reset the
    peak): VmHWM is reset through /proc/self/clear_refs, then compared with VmRSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before: int | None = _status("VmRSS")
    except (OSError, LookupError):
        before = None
    result: list[float | None] = [None]
    yield lambda: result[0]
    if before is not None:
        result[0] = (_status("VmHWM") - before) / 2**20


def cost(data: bytes, max_pixels: int = LIMIT) -> tuple[BaseException | None, float, float | None]:
    """decode_image's outcome on ``data``: the exception (None if it decoded), CPU seconds,
    peak MB."""
    outcome: BaseException | None = None
    with peak_memory() as peak:
        started = time.process_time()
        try:
            decode_image(data, max_pixels)
        except Exception as exc:  # the test looks at it
            outcome = exc
        cpu = time.process_time() - started
    return outcome, cpu, peak()


# --- hostile files with real declared sizes ------------------------------------------------

HOSTILE: dict[str, Callable[[], bytes]] = {
    # ICO: the directory says 16x16; Pillow decoded the PNG inside Image.open (641 KB RGBA
    # version: 2.1 s, +644 MB before the 413).
    "ico-png-13000": lambda: ico([(16, 16, bilevel_png(13000, 13000))]),
    "ico-second-entry-png": lambda: ico(
        [(16, 16, icon_payload(Image.new("RGBA", (16, 16)), False))]
        + [(16, 16, bilevel_png(13000, 13000))]
    ),
    "ico-dib-10000": lambda: ico([(16, 16, dib(10000, 10000, 1 << 16))]),
    "ico-png-with-text-flood": lambda: ico(
        [(16, 16, bilevel_png(4, 4, png_chunk(b"tEXt", b"k\0v") * 100_000))]
    ),
    # TIFF: pages after the first, tiles, strips, tags.
    "tiff-last-page-huge": lambda: tiff([(16, 16)] * 3 + [(13000, 13000)]),
    "bigtiff-last-page-huge": lambda: tiff([(16, 16), (13000, 13000)], big=True),
    "tiff-10001-pages": lambda: tiff([(1, 1)] * 10_001),
    "tiff-huge-tile": lambda: tiff([(16, 16)], tile=(8192, 8192)),
    "tiff-deflate-huge-tile": lambda: deflate_tiled_tiff(16, 16, 8192),  # 256 MB if decoded
    "tiff-65537-strips": lambda: tiff([(1, 65537)], strips=65537),
    "tiff-4097-tags": lambda: tiff([(4, 4)], extra_tags=4097),
    # GIF: screen, first and later frames, frame count, comment blocks (Pillow: 4.5 s, +849 MB).
    "gif-screen-13000": lambda: gif((13000, 13000), [(0, 0, 1, 1)]),
    "gif-frame-13000": lambda: gif((16, 16), [(0, 0, 13000, 13000)]),
    "gif-second-frame-13000": lambda: gif((16, 16), [(0, 0, 1, 1), (0, 0, 13000, 13000)]),
    "gif-10001-frames": lambda: gif((16, 16), [(0, 0, 1, 1)] * 10_001),
    "gif-comment-flood": lambda: gif(
        (4, 4), [(0, 0, 1, 1)], b"\x21\xfe" + b"\x01x" * 10**7 + b"\0"
    ),
    # PNG and APNG.
    "png-13000": lambda: bilevel_png(13000, 13000),
    "apng-2e31-frames": lambda: apng(16, 16, 2**31 - 1),
    "apng-frame-13000": lambda: apng(16, 16, 1, (13000, 13000)),
    "png-2M-chunks": lambda: bilevel_png(
        4, 4, png_chunk(b"abCd", b"") * 2_000_000
    ),  # 10 s, +228 MB
    "png-1025-texts": lambda: bilevel_png(
        4, 4, b"".join(png_chunk(b"tEXt", b"k%d\0v" % i) for i in range(1025))
    ),
    "png-ztxt-bombs": lambda: bilevel_png(
        4,
        4,
        b"".join(
            png_chunk(b"zTXt", b"k%d\0\0" % i + zlib.compress(b"\0" * 10**6, 9)) for i in range(80)
        ),
    ),
    # JPEG: size, segments (Pillow: 18 s, +650 MB), scans (70 s of CPU), stray bytes.
    "jpeg-13000": lambda: jpeg_with_size(13000, 13000),
    "jpeg-5M-segments": lambda: b"\xff\xd8" + b"\xff\xe5\x00\x02" * 5_000_000 + jpeg()[2:],
    "jpeg-20000-scans": lambda: progressive_jpeg(20_000, (2000, 2000)),
    "jpeg-junk-after-app0": lambda: jpeg_with_junk(20_000_000),
    # HEIF: the image-size box.
    "heif-13000": lambda: heif_declaring(13000, 13000),
}
WEBP_HOSTILE: dict[str, Callable[[], bytes]] = {
    "webp-canvas-13000": lambda: webp_canvas(13000, 13000),
    "webp-animated-canvas-13000": lambda: webp_canvas(13000, 13000, frames=2),
    "webp-vp8l-16383": lambda: webp_vp8l(16383, 16383),
    "webp-300k-frames": lambda: webp_canvas(16, 16, frames=300_000),  # +49 MB in libwebp
    "webp-2M-chunks": lambda: webp_canvas(1, 1, unknown=2_000_000),  # +87 MB in libwebp
}


# The child measures each file: glibc's malloc there returns every freed block over 64 KiB to
# the system, so memory freed earlier (the test's own big byte strings) cannot hide a peak.
_MEASURE = """
import io, json, sys, time
from pathlib import Path
from PIL import Image
from alphacut.pipeline.decode import decode_image
from tests.pipeline.test_decode import encode, png_chunk

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

for fmt in ("PNG", "GIF", "TIFF", "ICO", "JPEG", "WEBP", "BMP"):  # load the plugins first
    buffer = io.BytesIO()
    try:
        Image.new("RGB", (4, 4)).save(buffer, fmt)
        decode_image(buffer.getvalue())
    except Exception:
        pass
for path in sys.argv[2:]:
    data = Path(path).read_bytes()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = status("VmRSS")
    except OSError:
        before = None
    started = time.process_time()
    try:
        decode_image(data, int(sys.argv[1]))
        error = None
    except Exception as exc:
        error = exc
    cpu = time.process_time() - started
    peak = None if before is None else (status("VmHWM") - before) / 2**20
    print(json.dumps({
        "name": Path(path).name,
        "error": type(error).__name__ if error else None,
        "status": getattr(error, "status_code", None),
        "message": getattr(error, "message", str(error)),
        "cpu": cpu,
        "peak": peak,
    }))
"""


@pytest.fixture(scope="module")
def hostile_costs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """Every hostile file decoded once in a fresh process: outcome, CPU seconds, peak MB."""
    folder = tmp_path_factory.mktemp("hostile")
    files = {**HOSTILE, **(WEBP_HOSTILE if features.check("webp") else {})}
    for name, make in files.items():
        (folder / name).write_bytes(make())
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(LIMIT), *(str(folder / name) for name in files)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    return {result["name"]: result for result in results}


def _check_refused_cheaply(result: dict[str, object]) -> None:
    assert result["error"] == "ImageTooLarge" and result["status"] == 413, result
    assert "limit" in str(result["message"])
    cpu, peak = result["cpu"], result["peak"]
    assert isinstance(cpu, float) and cpu < HOSTILE_CPU_SECONDS, f"{cpu} s of CPU"
    if peak is not None:  # None: this kernel cannot reset the peak
        assert isinstance(peak, float) and peak < HOSTILE_PEAK_MB, f"+{peak:.0f} MB"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_refused_cheaply(name: str, hostile_costs: dict[str, dict]) -> None:
    _check_refused_cheaply(hostile_costs[name])


@webp
@pytest.mark.parametrize("name", sorted(WEBP_HOSTILE))
def test_hostile_webp_is_refused_cheaply(name: str, hostile_costs: dict[str, dict]) -> None:
    _check_refused_cheaply(hostile_costs[name])


def test_refusals_name_the_frame_and_the_limit(hostile_costs: dict[str, dict]) -> None:
    assert hostile_costs["ico-second-entry-png"]["message"] == (
        "icon entry 2 (a PNG) is 13000x13000 = 169000000 pixels; the limit is 50000000 pixels"
    )
    message = str(hostile_costs["tiff-last-page-huge"]["message"])
    assert message.startswith("TIFF page 4 is 13000x13000")
    message = str(hostile_costs["gif-10001-frames"]["message"])
    assert message == "the image has more frames than the limit of 10000"


def test_a_cursor_is_not_an_image_we_read() -> None:
    """CUR shares ICO's layout, but no plugin for it is offered client bytes: 415, cheaply."""
    outcome, cpu, peak = cost(ico([(16, 16, bilevel_png(13000, 13000))], kind=2))
    assert isinstance(outcome, InvalidImage) and outcome.status_code == 415
    assert cpu < HOSTILE_CPU_SECONDS and (peak is None or peak < HOSTILE_PEAK_MB)


def test_damaged_structures_are_left_to_pillow() -> None:
    """A walk that meets damage stops quietly; Pillow then says what is wrong (415)."""
    for data in (
        ico([(16, 16, b"\x89PNG\r\n\x1a\n")]),  # a PNG entry cut after its signature
        tiff([(4, 4)])[:12],
        gif((4, 4), [(0, 0, 1, 1)])[:20],
        b"\xff\xd8\xff\xe0\x00",
        PNG_MAGIC + b"\0\0\0\x0dIHDR",
    ):
        with pytest.raises(InvalidImage):
            decode_image(data)


# --- limits at their boundary ----------------------------------------------------------------


def test_every_page_frame_and_entry_is_checked_at_the_limit() -> None:
    """Exactly at the limit decodes; one pixel over is refused, whichever frame it is."""
    pages = [Image.new("L", (8, 8)), Image.new("L", (20, 10))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert decode_image(data, 200).size == (8, 8)
    with pytest.raises(ImageTooLarge, match="TIFF page 2 is 20x10"):
        decode_image(data, 199)
    data = gif_from_frames((8, 8), [(0, 0, 8, 8), (4, 2, 16, 6)])  # the canvas grows to 20x8
    assert decode_image(data, 160).size == (8, 8)
    with pytest.raises(ImageTooLarge, match="GIF frame 2 is 20x8"):
        decode_image(data, 159)
    small = icon_payload(Image.new("RGBA", (8, 8), (9, 9, 9, 255)), bitmap=False)
    data = ico([(8, 8, small), (1, 1, icon_payload(Image.new("RGBA", (30, 10)), bitmap=True))])
    assert decode_image(data, 300).size == (8, 8)
    with pytest.raises(ImageTooLarge, match=r"icon entry 2 is 30x10"):
        decode_image(data, 299)


@pytest.mark.parametrize(
    ("constant", "make", "limit"),
    [
        ("MAX_PNG_TEXTS", lambda n: bilevel_png(4, 4, png_chunk(b"tEXt", b"k\0v") * n), 5),
        (
            "MAX_PNG_INFLATED",
            lambda n: bilevel_png(4, 4, png_chunk(b"zTXt", b"k\0\0" + zlib.compress(b"v")) * n),
            3,
        ),
        ("MAX_CHUNKS", lambda n: bilevel_png(4, 4, png_chunk(b"abCd", b"") * (n - 3)), 50),
        ("MAX_JPEG_SCANS", lambda n: progressive_jpeg(n - 10), 12),  # Pillow writes 10 scans
        ("MAX_JPEG_SEGMENTS", jpeg_with_segments, 30),
        ("MAX_JPEG_STRAY", jpeg_with_junk, 100),
        ("MAX_TIFF_STRIPS", lambda n: tiff([(1, n)], strips=n), 40),
        ("MAX_FRAMES", lambda n: tiff([(2, 2)] * n), 6),
        ("MAX_FRAMES", lambda n: gif_from_frames((4, 4), [(0, 0, 4, 4)] * n), 6),
        ("MAX_FRAMES", lambda n: ico([(4, 4, bilevel_png(4, 4))] * n), 6),
    ],
)
def test_structure_limits_boundary(
    monkeypatch: pytest.MonkeyPatch, constant: str, make: Callable[[int], bytes], limit: int
) -> None:
    """At a bound the file decodes; one item more is refused (bounds made small here).
    MAX_CHUNKS counts IHDR, IDAT and IEND too: the PNG has ``n - 3`` more."""
    monkeypatch.setattr(decode_mod, constant, limit)
    assert decode_image(make(limit), LIMIT).mode in ("RGB", "RGBA")
    with pytest.raises(ImageTooLarge, match=f"limit of {limit}"):
        decode_image(make(limit + 1), LIMIT)


def test_gif_data_blocks_are_bounded_by_the_file_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIF data sub-blocks hold up to 255 bytes: a file may have MAX_GIF_BLOCKS plus one per
    128 bytes of itself; 1-byte blocks (a comment of 10 million: +849 MB in Pillow) exceed it."""
    monkeypatch.setattr(decode_mod, "MAX_GIF_BLOCKS", 0)
    image = gif_from_frames((4, 4), [(0, 0, 4, 4)])
    comment = b"\x21\xfe" + (b"\xff" + b"c" * 255) * 20 + b"\0"  # 20 full blocks
    at = 13 + 768
    assert decode_image(image[:at] + comment + image[at:]).size == (4, 4)
    comment = b"\x21\xfe" + b"\x01c" * 1000 + b"\0"
    with pytest.raises(ImageTooLarge, match="more GIF data blocks"):
        decode_image(image[:at] + comment + image[at:])


@webp
def test_webp_frame_and_chunk_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_mod, "MAX_FRAMES", 4)
    assert decode_image(webp_canvas(2, 2, frames=4)).size == (2, 2)
    with pytest.raises(ImageTooLarge, match="more frames"):
        decode_image(webp_canvas(2, 2, frames=5))
    monkeypatch.setattr(decode_mod, "MAX_CHUNKS", 10)
    assert decode_image(webp_canvas(1, 1, unknown=8)).size == (1, 1)  # + VP8X and VP8L
    with pytest.raises(ImageTooLarge, match="more WebP chunks"):
        decode_image(webp_canvas(1, 1, unknown=9))


def test_heif_checks_every_image() -> None:
    data = heif([(16, 16), (40, 24), (8, 8)])
    assert decode_image(data, 960).size == (16, 16)  # the primary image only is decoded
    with pytest.raises(ImageTooLarge, match="HEIF image 2 is 40x24"):
        decode_image(data, 959)


def test_legitimate_multi_frame_files_decode_their_first_frame() -> None:
    """Pillow-made animations and multi-page files stay within every bound."""
    frames = [Image.new("RGB", (32, 24), (40 * i, 200, 90)) for i in range(5)]
    files = {
        "GIF": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "PNG": encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "TIFF": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "ICO": encode(Image.new("RGBA", (64, 64), (5, 5, 5, 255)), "ICO"),
    }
    if features.check("webp"):
        files["WEBP"] = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    for fmt, data in files.items():
        assert decode_image(data, 64 * 64).size in ((32, 24), (64, 64)), fmt


# --- Hypothesis: declared sizes, counts and nesting ------------------------------------------

PROPERTIES = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
sides = st.integers(1, 48)
sizes = st.tuples(sides, sides)
limits = st.integers(1, 2500)


def check(data: bytes, max_pixels: int, refused: bool) -> None:
    """Refused with ImageTooLarge exactly when ``refused``; otherwise a decoded image."""
    if refused:
        with pytest.raises(ImageTooLarge) as info:
            decode_image(data, max_pixels)
        assert info.value.status_code == 413
    else:
        image = decode_image(data, max_pixels)
        assert image.mode in ("RGB", "RGBA") and image.width * image.height <= max_pixels


@PROPERTIES
@given(st.lists(sizes, min_size=1, max_size=4), limits)
def test_tiff_pages(pages: list[tuple[int, int]], max_pixels: int) -> None:
    images = [Image.new("L", size, 90) for size in pages]
    data = encode(images[0], "TIFF", save_all=True, append_images=images[1:])
    check(data, max_pixels, any(w * h > max_pixels for w, h in pages))


@PROPERTIES
@given(st.lists(sizes, min_size=1, max_size=4), st.booleans(), limits)
def test_tiff_pages_by_hand(pages: list[tuple[int, int]], big: bool, max_pixels: int) -> None:
    """Classic and BigTIFF headers written by hand, with a few strips per page."""
    check(tiff(pages, big=big), max_pixels, any(w * h > max_pixels for w, h in pages))


@PROPERTIES
@given(
    sizes,
    st.lists(
        st.tuples(st.integers(0, 24), st.integers(0, 24), sides, sides), min_size=1, max_size=4
    ),
    limits,
)
def test_gif_frames(
    screen: tuple[int, int], frames: list[tuple[int, int, int, int]], max_pixels: int
) -> None:
    """Frames may reach past the logical screen: Pillow grows the canvas to hold them."""
    width, height = screen
    refused = width * height > max_pixels
    for left, top, frame_w, frame_h in frames:
        width, height = max(width, left + frame_w), max(height, top + frame_h)
        refused = refused or width * height > max_pixels
    check(gif_from_frames(screen, frames), max_pixels, refused)


@PROPERTIES
@given(sizes, st.integers(1, 4), limits, st.integers(1, 4))
def test_animated_png(size: tuple[int, int], frames: int, max_pixels: int, max_frames: int) -> None:
    images = [Image.new("RGB", size, (60 * i, 20, 200)) for i in range(frames)]
    data = encode(images[0], "PNG", save_all=True, append_images=images[1:], default_image=False)
    with mock.patch.object(decode_mod, "MAX_FRAMES", max_frames):
        refused = size[0] * size[1] > max_pixels or frames > max_frames
        check(data, max_pixels, refused)


@PROPERTIES
@given(sizes, sizes, limits)
def test_apng_frame_control(
    canvas: tuple[int, int], frame: tuple[int, int], max_pixels: int
) -> None:
    """An fcTL frame larger than its canvas is damaged APNG (Pillow refuses it) unless it is
    over the limit: then it is refused as too large."""
    data = apng(*canvas, 1, frame)
    over = canvas[0] * canvas[1] > max_pixels or frame[0] * frame[1] > max_pixels
    if over:
        check(data, max_pixels, True)
    else:
        with pytest.raises(InvalidImage):  # no pixel data in these files
            decode_image(data, max_pixels)


@webp
@PROPERTIES
@given(sizes, st.integers(1, 4), limits, st.integers(1, 4))
def test_animated_webp(
    size: tuple[int, int], frames: int, max_pixels: int, max_frames: int
) -> None:
    images = [Image.new("RGB", size, (60 * i, 20, 200)) for i in range(frames)]
    data = encode(images[0], "WEBP", save_all=True, append_images=images[1:], lossless=True)
    with mock.patch.object(decode_mod, "MAX_FRAMES", max_frames):
        refused = size[0] * size[1] > max_pixels or frames > max_frames
        check(data, max_pixels, refused)


icon_entries = st.lists(
    st.tuples(st.integers(0, 255), st.integers(0, 255), sizes, st.sampled_from(["png", "bmp"])),
    min_size=1,
    max_size=4,
)


@PROPERTIES
@given(icon_entries, limits)
def test_ico_entries(entries: list[tuple[int, int, tuple[int, int], str]], max_pixels: int) -> None:
    """The directory's sizes are random (they lie); each entry's own header counts."""
    payloads = [
        (dir_w, dir_h, icon_payload(Image.new("RGBA", size, (9, 99, 199, 255)), kind == "bmp"))
        for dir_w, dir_h, size, kind in entries
    ]
    refused = any(w * h > max_pixels for _, _, (w, h), _ in entries)
    check(ico(payloads), max_pixels, refused)


@PROPERTIES
@given(st.lists(st.tuples(sizes, st.integers(0, 3)), min_size=1, max_size=3), limits)
def test_ico_holding_animated_pngs(
    entries: list[tuple[tuple[int, int], int]], max_pixels: int
) -> None:
    """Nesting: icons whose PNGs are APNGs; each APNG's frames count too."""
    payloads, refused = [], False
    for (width, height), extra in entries:
        images = [Image.new("RGBA", (width, height), (i, 9, 9, 255)) for i in range(1 + extra)]
        payload = encode(images[0], "PNG", save_all=True, append_images=images[1:])
        payloads.append((width, height, payload))
        refused = refused or width * height > max_pixels
    check(ico(payloads), max_pixels, refused)


@PROPERTIES
@given(st.integers(1, 65535), st.integers(1, 65535), st.integers(1, 10**6))
def test_jpeg_declared_size(width: int, height: int, max_pixels: int) -> None:
    """The SOF's size, up to 65535x65535: over the limit is refused; within it the file is
    a 16x16 JPEG that claims more, so it decodes only if the size is its own."""
    data = jpeg_with_size(width, height)
    if width * height > max_pixels:
        check(data, max_pixels, True)
    else:
        try:
            decode_image(data, max_pixels)
        except InvalidImage:
            pass


@webp
@PROPERTIES
@given(st.integers(1, 2**24), st.integers(1, 2**24), st.integers(1, 10**6))
def test_webp_declared_canvas(width: int, height: int, max_pixels: int) -> None:
    data = webp_canvas(width, height)
    if width * height > max_pixels:
        outcome, _, peak = cost(data, max_pixels)
        assert isinstance(outcome, ImageTooLarge)
        assert peak is None or peak < HOSTILE_PEAK_MB
    else:
        try:
            decode_image(data, max_pixels)
        except InvalidImage:  # a 1x1 image in a larger canvas: libwebp refuses it
            pass


@settings(PROPERTIES, max_examples=10)
@given(st.lists(st.tuples(st.integers(8, 40), st.integers(8, 40)), min_size=1, max_size=3), limits)
def test_heif_images(images: list[tuple[int, int]], max_pixels: int) -> None:
    data = heif(images)
    check(data, max_pixels, any(w * h > max_pixels for w, h in images))


@PROPERTIES
@given(
    st.sampled_from(["png", "gif", "tiff", "ico", "jpeg"]),
    st.integers(13_000, 65_535),
    st.integers(13_000, 65_535),
)
def test_huge_declared_sizes_cost_nothing(kind: str, width: int, height: int) -> None:
    """Sizes far over the default limit, in whichever header of each format: refused
    before any allocation."""
    data = {
        "png": lambda: bilevel_png(width, height, pixels=False),
        "gif": lambda: gif((16, 16), [(0, 0, 1, 1), (0, 0, width, height)]),
        "tiff": lambda: tiff([(4, 4), (width, height)]),
        "ico": lambda: ico([(0, 0, bilevel_png(width, height, pixels=False))]),
        "jpeg": lambda: jpeg_with_size(width, height),
    }[kind]()
    outcome, cpu, peak = cost(data)
    assert isinstance(outcome, ImageTooLarge)
    assert cpu < HOSTILE_CPU_SECONDS and (peak is None or peak < HOSTILE_PEAK_MB)
