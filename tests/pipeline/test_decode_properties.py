"""Property-based: whatever bytes arrive, decode_image returns a clean image or raises one of
the project's typed errors (AlphacutError subclasses), never a bare exception or a warning.

Inputs: random bytes, and small valid images of every accepted format with bytes flipped,
overwritten, inserted, deleted or cut off. Example counts are bounded so the module runs in
a few seconds (about 700 decodes).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from alphacut.errors import AlphacutError
from alphacut.pipeline.decode import decode_image

# Small enough that no mutated header can make the decoder allocate much before the check.
MAX_PIXELS = 250_000
BOUNDED = settings(
    max_examples=300,
    deadline=None,  # a loaded CI machine is slow, not wrong
    database=None,  # no .hypothesis folder in the work tree
    suppress_health_check=[HealthCheck.too_slow],
)


def _picture(mode: str, size: tuple[int, int] = (24, 16)) -> Image.Image:
    rng = np.random.default_rng(len(mode))
    rgba = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rgba[..., 3] > 100, 255, 0)  # some transparent pixels
    return Image.fromarray(rgba, "RGBA").convert(mode)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _animated_gif() -> bytes:
    frames = [_picture("P"), _picture("P").rotate(90)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], transparency=0)
    return buffer.getvalue()


def _seed_images() -> dict[str, bytes]:
    """One or more valid files per format the decoder accepts."""
    seeds: dict[str, Callable[[], bytes]] = {
        "png-rgba": lambda: _encode(_picture("RGBA"), "PNG"),
        "png-palette": lambda: _encode(_picture("P"), "PNG", transparency=0),
        "png-16bit": lambda: _encode(_picture("L").convert("I;16"), "PNG"),
        "jpeg": lambda: _encode(_picture("RGB"), "JPEG", quality=80),
        "jpeg-progressive-exif": lambda: _encode(
            _picture("RGB"), "JPEG", progressive=True, exif=_orientation_exif()
        ),
        "jpeg-cmyk": lambda: _encode(_picture("CMYK"), "JPEG"),
        "gif-animated": _animated_gif,
        "bmp": lambda: _encode(_picture("RGB"), "BMP"),
        "bmp-rle": lambda: _encode(_picture("P"), "BMP"),
        "tiff-raw": lambda: _encode(_picture("RGBA"), "TIFF"),
        "tiff-lzw": lambda: _encode(_picture("RGB"), "TIFF", compression="tiff_lzw"),
        "tiff-deflate-16bit": lambda: _encode(
            _picture("L").convert("I;16"), "TIFF", compression="tiff_adobe_deflate"
        ),
        "ico": lambda: _encode(_picture("RGBA"), "ICO", sizes=[(16, 16)]),
    }
    if features.check("webp"):
        seeds["webp-lossy"] = lambda: _encode(_picture("RGB"), "WEBP", quality=70)
        seeds["webp-lossless-alpha"] = lambda: _encode(_picture("RGBA"), "WEBP", lossless=True)
    if features.check("avif"):
        seeds["avif"] = lambda: _encode(_picture("RGB"), "AVIF", quality=50)
    try:
        import pillow_heif  # type: ignore[import-not-found,unused-ignore]

        pillow_heif.register_heif_opener()
        seeds["heic"] = lambda: _encode(_picture("RGB"), "HEIF", quality=50)
    except ImportError:
        pass
    return {name: make() for name, make in seeds.items()}


def _orientation_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: decode applies it
    return exif.tobytes()


SEEDS = _seed_images()


def check_decode(data: bytes) -> None:
    """The property: a loaded RGB/RGBA image, or an AlphacutError subclass; nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would escape to the caller's log
        try:
            image = decode_image(data, MAX_PIXELS)
        except AlphacutError as exc:
            assert type(exc) is not AlphacutError, "a specific subclass, e.g. InvalidImage"
            assert exc.message and 400 <= exc.status_code < 500
            return
    assert image.mode in ("RGB", "RGBA")
    assert 0 < image.width * image.height <= MAX_PIXELS
    image.getpixel((0, 0))  # fully loaded: no lazy decoding left to fail later


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_image_decodes(name: str) -> None:
    image = decode_image(SEEDS[name], MAX_PIXELS)
    assert image.mode in ("RGB", "RGBA")


@BOUNDED
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    check_decode(data)


@BOUNDED
@given(st.sampled_from(sorted(SEEDS)), st.binary(max_size=64))
def test_random_bytes_after_a_real_header(name: str, tail: bytes) -> None:
    """A valid file's first bytes, then garbage: gets past every format sniffer."""
    seed = SEEDS[name]
    check_decode(seed[: min(len(seed), 32)] + tail)


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**32), st.integers(1, 255)),
    st.tuples(st.just("overwrite"), st.integers(0, 2**32), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.integers(0, 2**32), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 2**32), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 2**32), st.just(0)),
)


def mutate(data: bytes, mutations: list[tuple[str, int, object]]) -> bytes:
    buffer = bytearray(data)
    for kind, where, what in mutations:
        at = where % (len(buffer) + 1)
        if kind == "flip" and at < len(buffer):
            assert isinstance(what, int)
            buffer[at] ^= what
        elif kind == "overwrite":
            assert isinstance(what, bytes)
            buffer[at : at + len(what)] = what
        elif kind == "insert":
            assert isinstance(what, bytes)
            buffer[at:at] = what
        elif kind == "delete":
            assert isinstance(what, int)
            del buffer[at : at + what]
        elif kind == "truncate":
            del buffer[at:]
    return bytes(buffer)


@settings(BOUNDED, max_examples=400)
@given(st.sampled_from(sorted(SEEDS)), st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_real_images(name: str, mutations: list[tuple[str, int, object]]) -> None:
    check_decode(mutate(SEEDS[name], mutations))
