from __future__ import annotations

import io
import random
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from alphacut.errors import AlphacutError, ImageTooLarge, InvalidImage
from alphacut.pipeline import decode as decode_mod
from alphacut.pipeline.decode import decode_image, has_transparency


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def raw_png(width: int, height: int, depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand, for bit depths/sizes Pillow will not write cheaply."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    idat = zlib.compress(rows) if rows is not None else b"\x78\x9c"  # header-only stream
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def noise(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def px(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = img.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 6) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# --- plain modes and formats -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "ICO"])
def test_formats_decode_to_rgb(fmt: str) -> None:
    src = Image.new("RGB", (32, 32), (200, 30, 40))
    out = decode_image(encode(src, fmt))
    assert out.mode == "RGB"
    assert out.size == (32, 32)
    assert close(px(out, (16, 16)), (200, 30, 40), tol=12)


def test_rgb_png_exact_and_detached() -> None:
    src = noise()
    out = decode_image(encode(src, "PNG"))
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(src))
    assert not isinstance(out, ImageFile.ImageFile)  # fully loaded, not file-backed


def test_rgba_keeps_alpha() -> None:
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., 0] = 255
    arr[..., 3] = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = decode_image(encode(Image.fromarray(arr, "RGBA"), "PNG"))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out), arr)


def test_opaque_rgba_becomes_rgb() -> None:
    out = decode_image(encode(Image.new("RGBA", (8, 8), (1, 2, 3, 255)), "PNG"))
    assert out.mode == "RGB"
    assert px(out, (0, 0)) == (1, 2, 3)


def test_la_to_rgba() -> None:
    out = decode_image(encode(Image.new("LA", (4, 4), (90, 40)), "PNG"))
    assert out.mode == "RGBA"
    assert px(out, (0, 0)) == (90, 90, 90, 40)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_grayscale_l(fmt: str) -> None:
    out = decode_image(encode(Image.new("L", (8, 8), 77), fmt))
    assert out.mode == "RGB"
    assert close(px(out, (3, 3)), (77, 77, 77), tol=2)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_one_bit(fmt: str) -> None:
    src = Image.new("1", (16, 16), 0)
    src.paste(1, (0, 0, 8, 16))
    out = decode_image(encode(src, fmt))
    assert out.mode == "RGB"
    assert px(out, (2, 2)) == (255, 255, 255)
    assert px(out, (12, 2)) == (0, 0, 0)


def palette_image() -> Image.Image:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.paste(0, (0, 0, 4, 8))
    return img


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF"])
def test_palette_without_transparency(fmt: str) -> None:
    out = decode_image(encode(palette_image(), fmt))
    assert out.mode == "RGB"
    assert px(out, (1, 1)) == (255, 0, 0)
    assert px(out, (6, 1)) == (0, 255, 0)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt: str) -> None:
    out = decode_image(encode(palette_image(), fmt, transparency=0))
    assert out.mode == "RGBA"
    assert px(out, (1, 1))[3] == 0
    assert px(out, (6, 1)) == (0, 255, 0, 255)


def test_palette_with_unused_transparent_index_is_rgb() -> None:
    # tRNS names index 2, which no pixel uses: nothing is actually transparent.
    out = decode_image(encode(palette_image(), "PNG", transparency=2))
    assert out.mode == "RGB"


def test_pa_tiff() -> None:
    pa = palette_image().convert("PA")
    pa.putalpha(Image.new("L", (8, 8), 128))
    out = decode_image(encode(pa, "TIFF"))
    assert out.mode == "RGBA"
    assert px(out, (1, 1)) == (255, 0, 0, 128)


def test_rgb_colour_key_transparency() -> None:
    src = Image.new("RGB", (4, 4), (10, 20, 30))
    src.putpixel((0, 0), (1, 2, 3))
    out = decode_image(encode(src, "PNG", transparency=(1, 2, 3)))
    assert out.mode == "RGBA"
    assert px(out, (0, 0))[3] == 0
    assert px(out, (1, 1)) == (10, 20, 30, 255)


def test_cmyk_jpeg_adobe_inverted() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as probe:  # Pillow writes inverted Adobe CMYK
        assert probe.mode == "CMYK" and "adobe" in probe.info
    out = decode_image(data)
    assert out.mode == "RGB"
    assert close(px(out, (8, 8)), (255, 0, 0), tol=10)


def test_cmyk_tiff() -> None:
    out = decode_image(encode(Image.new("CMYK", (4, 4), (255, 0, 255, 0)), "TIFF"))
    assert out.mode == "RGB"
    assert px(out, (0, 0)) == (0, 255, 0)


def test_ycbcr_tiff() -> None:
    src = Image.new("RGB", (8, 8), (200, 100, 50)).convert("YCbCr")
    data = encode(src, "TIFF")
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.mode == "YCbCr"
    out = decode_image(data)
    assert out.mode == "RGB"
    assert close(px(out, (0, 0)), (200, 100, 50), tol=4)


# --- high bit depth ----------------------------------------------------------------------

RAMP16 = np.array([[0, 255, 256, 4096], [32768, 40000, 65280, 65535]], dtype=np.uint16)
RAMP16_8BIT = (RAMP16 >> 8).astype(np.uint8)


def gray(out: Image.Image) -> np.ndarray:
    assert out.mode == "RGB"
    arr = np.asarray(out)
    assert np.array_equal(arr[..., 0], arr[..., 2])
    return arr[..., 0]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_gray_little_endian(fmt: str) -> None:
    data = encode(Image.fromarray(RAMP16), fmt)
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.mode.startswith("I;16")
    assert np.array_equal(gray(decode_image(data)), RAMP16_8BIT)


def test_16bit_gray_big_endian_tiff() -> None:
    src = Image.frombytes("I;16B", (4, 2), RAMP16.astype(">u2").tobytes())
    data = encode(src, "TIFF")
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.mode == "I;16B"
    assert np.array_equal(gray(decode_image(data)), RAMP16_8BIT)


def test_16bit_gray_png_by_hand() -> None:
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in RAMP16)
    out = decode_image(raw_png(4, 2, 16, 0, rows))
    assert np.array_equal(gray(out), RAMP16_8BIT)


def test_48bit_rgb_png() -> None:
    row = b"\x00" + struct.pack(">6H", 0xFFFF, 0x8000, 0x0010, 0x0000, 0x00FF, 0xFF00)
    out = decode_image(raw_png(2, 1, 16, 2, row))
    assert out.mode == "RGB"
    assert px(out, (0, 0)) == (255, 128, 0)
    assert px(out, (1, 0)) == (0, 0, 255)


def test_int32_tiff() -> None:
    small = np.array([[0, 65535, 32768, -5]], dtype=np.int32)  # 16-bit data in an int32
    out = decode_image(encode(Image.fromarray(small), "TIFF"))
    assert list(gray(out)[0]) == [0, 255, 128, 0]
    big = np.array([[0, 2**31 - 1, 2**30, 70000]], dtype=np.int32)
    out = decode_image(encode(Image.fromarray(big), "TIFF"))
    assert list(gray(out)[0]) == [0, 255, 128, 0]


def test_float_tiff_clips() -> None:
    arr = np.array([[-3.0, 0.0, 127.6, 300.0, np.nan]], dtype=np.float32)
    data = encode(Image.fromarray(arr, "F"), "TIFF")
    assert list(gray(decode_image(data))[0]) == [0, 0, 128, 255, 0]


def test_float_tiff_unit_range_is_scaled() -> None:
    arr = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    data = encode(Image.fromarray(arr, "F"), "TIFF")
    assert list(gray(decode_image(data))[0]) == [0, 128, 255]


# --- animation, orientation, metadata ----------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_uses_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50)
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.is_animated
    out = decode_image(data)
    assert out.mode == "RGB"
    assert close(px(out, (8, 8)), (255, 0, 0), tol=12)


def test_exif_orientation_6_rotates_clockwise() -> None:
    src = Image.new("RGB", (80, 40), (255, 255, 255))
    src.paste((255, 0, 0), (0, 0, 20, 20))  # marker at top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(src, "JPEG", exif=exif, quality=95))
    assert out.size == (40, 80)
    # Orientation 6 = rotate 90 degrees clockwise for display: top-left goes to top-right.
    assert close(px(out, (30, 10)), (255, 0, 0), tol=20)
    assert close(px(out, (10, 10)), (255, 255, 255), tol=20)
    assert "exif" not in out.info


def test_icc_profile_kept_for_rgb_only() -> None:
    profile = b"fake-icc-profile-bytes"
    out = decode_image(encode(Image.new("RGB", (4, 4)), "PNG", icc_profile=profile))
    assert out.info == {"icc_profile": profile}
    out = decode_image(encode(Image.new("L", (4, 4)), "PNG", icc_profile=profile))
    assert out.info == {}


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif() -> None:
    out = decode_image(encode(Image.new("RGB", (32, 32), (20, 200, 60)), "AVIF", quality=90))
    assert out.mode == "RGB" and close(px(out, (16, 16)), (20, 200, 60), tol=14)


def test_heif_when_plugin_installed() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    src = Image.new("RGB", (64, 64), (30, 60, 220))
    try:
        data = encode(src, "HEIF", quality=90)
    except (OSError, KeyError, ValueError) as e:
        pytest.skip(f"no HEIF encoder: {e}")
    out = decode_image(data)
    assert out.size == (64, 64) and close(px(out, (32, 32)), (30, 60, 220), tol=14)


_FRESH_DECODE = """
import sys
from pathlib import Path
from alphacut.pipeline.decode import decode_image
decode_image(Path(sys.argv[1]).read_bytes())
loaded = sorted(m for m in sys.modules if m.startswith("PIL.") and m.endswith("Plugin"))
print("pillow_heif" in sys.modules, " ".join(loaded))
if len(sys.argv) > 2:
    print(decode_image(Path(sys.argv[2]).read_bytes()).size)
"""


def test_a_fresh_process_loads_only_the_wanted_decoders(tmp_path: Path) -> None:
    """A JPEG loads neither pillow-heif nor Pillow's other plugins (PDF, EPS, ...: slow to
    import and never offered client bytes); a HEIF file still decodes in the same process."""
    jpeg = tmp_path / "a.jpg"
    jpeg.write_bytes(encode(Image.new("RGB", (8, 8)), "JPEG"))
    heif = tmp_path / "a.heic"
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    try:
        heif.write_bytes(encode(Image.new("RGB", (64, 48), (30, 60, 220)), "HEIF", quality=90))
    except (OSError, KeyError, ValueError):
        heif = None  # no HEIF encoder here: check the JPEG only
    args = [str(jpeg)] + ([str(heif)] if heif else [])
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_DECODE, *args], capture_output=True, text=True, check=True
    )
    lines = done.stdout.splitlines()
    heif_loaded, plugins = lines[0].split(" ", 1)
    assert heif_loaded == "False"
    names = set(plugins.split())
    assert "PIL.JpegImagePlugin" in names and "PIL.TiffImagePlugin" in names
    assert not names & {"PIL.PdfImagePlugin", "PIL.EpsImagePlugin", "PIL.PsdImagePlugin"}
    if heif:
        assert lines[1] == "(64, 48)"


def test_works_without_pillow_heif(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # makes the import fail
    decode_mod._allowed_formats.cache_clear()
    try:
        formats = set(decode_mod._allowed_formats(heif=True))  # the failing import is taken
        assert {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"} <= formats
        assert decode_image(encode(Image.new("RGB", (4, 4)), "PNG")).mode == "RGB"
        # HEIF-looking bytes (ftyp at byte 4) are then just not an image we can read.
        with pytest.raises(InvalidImage):
            decode_image(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    finally:
        decode_mod._allowed_formats.cache_clear()


# --- size limits -------------------------------------------------------------------------


def test_pixel_limit_boundary() -> None:
    data = encode(Image.new("RGB", (100, 50)), "PNG")
    assert decode_image(data, max_pixels=5000).size == (100, 50)
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, max_pixels=4999)
    assert info.value.status_code == 413


@pytest.mark.parametrize(
    ("side", "max_pixels"),
    [
        (4000, 10_000_000),  # below Pillow's thresholds: only our own check fires
        (10000, 10_000_000),  # between 1x and 2x Image.MAX_IMAGE_PIXELS: Pillow warns
        (20000, 10_000_000),  # beyond 2x MAX_IMAGE_PIXELS: Pillow's DecompressionBombError
        (30000, 10**10),  # Pillow's error even though our own limit would allow it
    ],
)
def test_bomb_header_rejected_fast_and_quiet(side: int, max_pixels: int) -> None:
    data = raw_png(side, side, 1, 0, None)  # header claims a huge image; ~60 bytes
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        with pytest.raises(ImageTooLarge):
            decode_image(data, max_pixels=max_pixels)
        assert time.perf_counter() - start < 1.0
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == limit_before


# --- invalid input -----------------------------------------------------------------------

SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01garbage\xff" * 20,
        b"hello, this is a plain text file\n" * 10,
        SVG,
        b"<!DOCTYPE html><html><body>Not Found</body></html>",
        b"%PDF-1.4\n%fake\n",
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # must not reach Ghostscript
    ],
    ids=["garbage", "text", "svg", "html", "pdf", "eps"],
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(InvalidImage) as info:
        decode_image(data)
    assert str(info.value) == decode_mod.NOT_AN_IMAGE
    assert info.value.status_code == 415


@pytest.mark.parametrize("fmt", ["PPM", "PCX", "TGA"])
def test_unsupported_formats_rejected(fmt: str) -> None:
    with pytest.raises(InvalidImage, match="not a supported image"):
        decode_image(encode(Image.new("RGB", (8, 8)), fmt))


def test_empty() -> None:
    with pytest.raises(InvalidImage):
        decode_image(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_truncated(fmt: str) -> None:
    data = encode(noise((96, 96)), fmt)
    with pytest.raises(InvalidImage) as info:
        decode_image(data[: len(data) // 2])
    assert str(info.value) == decode_mod.CORRUPT


def test_truncated_header_is_corrupt_not_foreign() -> None:
    data = encode(noise(), "PNG")
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        decode_image(data[:20])


def test_load_truncated_images_left_alone() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = encode(noise((96, 96)), "JPEG")
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's metadata chatter on bad files
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP", "ICO"])
def test_fuzzed_bytes_only_raise_alphacut_errors(fmt: str) -> None:
    # Whatever a client sends, the outcome is an image or one of our errors.
    base = encode(palette_image() if fmt == "GIF" else noise((24, 24)), fmt)
    rng = random.Random(fmt)
    for _ in range(150):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(1, len(data))]
        try:
            out = decode_image(bytes(data), max_pixels=1_000_000)
        except AlphacutError:
            continue
        assert out.mode in ("RGB", "RGBA")


# --- has_transparency --------------------------------------------------------------------


def test_has_transparency() -> None:
    assert not has_transparency(Image.new("RGB", (2, 2)))
    assert not has_transparency(Image.new("RGBA", (2, 2), (0, 0, 0, 255)))
    assert has_transparency(Image.new("RGBA", (2, 2), (0, 0, 0, 254)))
    assert has_transparency(Image.new("LA", (2, 2), (0, 0)))
    assert not has_transparency(palette_image())
    # Fresh images each time: converting P with transparency may touch the palette.
    for index, expected in ((0, True), (7, False)):  # 7 is not used by any pixel
        p = palette_image()
        p.info["transparency"] = index
        assert has_transparency(p) is expected


def test_damaged_tiffs_are_refused_without_a_word_on_stderr() -> None:
    """libtiff prints the details of a damaged TIFF to stderr, and Pillow's TIFF plugin warns
    ("Truncated File Read"): a server's log would get lines no request owns. decode_image
    refuses such data with its own error and nothing else. A fresh process: libtiff writes to
    file descriptor 2, and pytest would catch the warnings."""
    import subprocess

    script = """
import io
import numpy as np
from PIL import Image
from alphacut.errors import InvalidImage
from alphacut.pipeline.decode import decode_image

photo = Image.fromarray((np.random.default_rng(0).random((200, 300, 3)) * 255).astype("uint8"))
refused = 0
for compression in ("tiff_lzw", "tiff_deflate", "jpeg", "packbits"):
    out = io.BytesIO()
    photo.save(out, format="TIFF", compression=compression)
    data = out.getvalue()
    damaged = bytearray(data)
    damaged[len(data) // 3 : len(data) // 3 + 200] = b"\\xff" * 200
    for sample in (data[: len(data) // 2], data[:-50], bytes(damaged)):
        try:
            decode_image(sample, 10**8)
        except InvalidImage:
            refused += 1
print(refused)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 8  # most of the 12 are refused (some damage still decodes)
    assert proc.stderr == ""
