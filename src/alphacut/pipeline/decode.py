"""Turn uploaded bytes into a clean 8-bit RGB/RGBA Pillow image, or a user-facing error.

Everything a client sends passes through here, so the contract is strict: the result is
either a fully loaded ``RGB``/``RGBA`` image or an ``AlphacutError`` subclass — no Pillow
exception, warning or half-decoded image may leak out.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from alphacut.errors import ImageTooLarge, InvalidImage

__all__ = ["decode_image", "has_transparency"]

NOT_AN_IMAGE = "the data is not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF)"
CORRUPT = "image file is truncated or corrupt"

# Only these plugins may look at client bytes. Letting Pillow try every plugin would
# expose rarely-audited parsers, and EPS would even shell out to Ghostscript.
# MPO is what Pillow calls most phone-camera JPEGs (they embed a multi-picture index).
_WANTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO", "AVIF", "HEIF")

# Magic numbers of the formats above: if the bytes start like one of them but Pillow
# cannot even parse the header, the file is damaged rather than of the wrong type.
_MAGICS = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"\x00\x00\x01\x00",
)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


# The Pillow modules of those formats, imported by name: ``Image.init()`` would import all 40-odd
# plugins (0.06-0.2 s of a one-shot command's start).
_PLUGINS = (
    "JpegImagePlugin",
    "MpoImagePlugin",
    "PngImagePlugin",
    "WebPImagePlugin",
    "GifImagePlugin",
    "BmpImagePlugin",
    "TiffImagePlugin",
    "IcoImagePlugin",
    "AvifImagePlugin",
)


@functools.cache
def _allowed_formats(heif: bool = False) -> tuple[str, ...]:
    """Import the wanted plugins once and return the format IDs Pillow really has; ``heif``:
    with pillow-heif's opener too (HEIF/AVIF files only: ISO-BMFF, ``ftyp`` at byte 4).

    ``Image.open(formats=...)`` calls ``Image.init()`` for an ID with no registered plugin, so
    the list must be filtered against what this installation provides.
    """
    if heif:
        try:
            import pillow_heif  # type: ignore[import-not-found,unused-ignore]

            pillow_heif.register_heif_opener()
            # Older pillow-heif also decodes AVIF; prefer Pillow's own decoder when present.
            register_avif = getattr(pillow_heif, "register_avif_opener", None)
            if register_avif is not None and "AVIF" not in Image.OPEN:
                register_avif()
        except Exception:  # an optional plugin must never break core formats
            pass
    for plugin in _PLUGINS:
        try:
            importlib.import_module(f"PIL.{plugin}")
        except ImportError:  # a plugin this Pillow lacks (AVIF before Pillow 11.2)
            pass
    _quiet_libtiff()
    return tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)


# Warnings Pillow raises while it reads client bytes: the decompression-bomb warning (between
# 1x and 2x its global MAX_IMAGE_PIXELS, inside Image.open, before our own limit applies) and
# its plugins' notes on damaged data ("Truncated File Read", "Corrupt EXIF data"), which
# decode_image turns into its own error anyway.
_DECODER_WARNINGS = ((Image.DecompressionBombWarning, ""), (UserWarning, r"PIL\."))


def _silence_decoder_warnings() -> None:
    # ``warnings.catch_warnings`` is not thread-safe, so install process-wide filters instead,
    # re-inserting them only if something (e.g. pytest) pushed them off the top.
    top = warnings.filters[: 2 * len(_DECODER_WARNINGS)]
    for category, module in _DECODER_WARNINGS:
        if not any(
            entry[0] == "ignore"
            and entry[2] is category
            and getattr(entry[3], "pattern", entry[3] or "") == module
            for entry in top
        ):
            warnings.filterwarnings("ignore", category=category, module=module)


def _quiet_libtiff() -> None:
    """Take away libtiff's default error and warning handlers, which print the details of a
    damaged TIFF straight to stderr ("ZIPDecode: Decoding error ...") outside any log; Pillow
    still gets libtiff's failures and decode_image answers them as corrupt data."""
    try:
        maps = Path("/proc/self/maps").read_text()  # Linux: the libtiff Pillow has loaded
    except OSError:
        return
    libraries = {
        fields[5]
        for fields in (line.split(maxsplit=5) for line in maps.splitlines())
        if len(fields) == 6 and "libtiff" in fields[5].rsplit("/", 1)[-1]
    }
    for path in libraries:
        try:
            library = ctypes.CDLL(path)  # the copy already loaded, not a second one
            for name in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
                set_handler = getattr(library, name)
                set_handler.restype = ctypes.c_void_p
                set_handler.argtypes = [ctypes.c_void_p]
                set_handler(None)
        except (OSError, AttributeError):
            continue


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
    )


def decode_image(data: bytes, max_pixels: int = 50_000_000) -> Image.Image:
    """Decode ``data`` into a loaded, EXIF-oriented image in mode ``RGB`` or ``RGBA``.

    ``RGBA`` is returned only when the source actually has a transparent pixel. Animated
    GIF/WebP and multi-page TIFF yield their first frame. The pixel limit is checked from
    the header before any pixel data is decoded (Pillow's own decompression-bomb error,
    at 2x ``Image.MAX_IMAGE_PIXELS``, also maps to ``ImageTooLarge``).

    Raises ``InvalidImage`` for empty, non-image, unsupported or corrupt data and
    ``ImageTooLarge`` when width*height exceeds ``max_pixels``.
    """
    if not data:
        raise InvalidImage("the image data is empty")
    formats = _allowed_formats(heif=data[4:8] == b"ftyp")
    _silence_decoder_warnings()
    try:
        with Image.open(io.BytesIO(data), formats=formats) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise _too_large(width, height, max_pixels)
            # Decode now, inside this try, so truncation surfaces here and not later in the
            # pipeline. LOAD_TRUNCATED_IMAGES stays False: a half-grey image is a bad result.
            img.load()
            return _normalize(img)
    except (ImageTooLarge, InvalidImage):
        raise
    except Image.DecompressionBombError as e:
        # Pillow refuses > 2x its global limit inside Image.open, before our check runs;
        # report the limit that actually applied.
        pillow_limit = Image.MAX_IMAGE_PIXELS
        limit = max_pixels if pillow_limit is None else min(max_pixels, 2 * pillow_limit)
        raise ImageTooLarge(f"image is too large; the limit is {limit} pixels") from e
    except UnidentifiedImageError as e:
        if data.startswith(_MAGICS) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise InvalidImage(CORRUPT) from e
        raise InvalidImage(NOT_AN_IMAGE) from e
    except MemoryError:
        # Not the client's fault once the pixel limit has passed: let it be a server error.
        raise
    except Exception as e:  # OSError, SyntaxError, struct.error, EOFError...
        # Pillow reports damaged data through many exception types; to the client they
        # all mean the same thing.
        raise InvalidImage(CORRUPT) from e


def normalize_image(image: Image.Image, max_pixels: int = 50_000_000) -> Image.Image:
    """An image given in memory (the library's PIL input), as ``decode_image`` would return
    it: 8-bit RGB, or RGBA when a pixel is transparent; 16-bit and float modes are scaled."""
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)
    try:
        image.load()
        return _to_rgb_or_rgba(image)
    except (OSError, ValueError) as exc:
        raise InvalidImage(f"cannot use this image (mode {image.mode}): {exc}") from exc


def image_from_array(array: np.ndarray, max_pixels: int = 50_000_000) -> Image.Image:
    """A numpy image (HxW, HxWx1, HxWx3 RGB or HxWx4 RGBA; uint8, uint16, bool or float in
    0..1 or 0..255) as 8-bit RGB or RGBA."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InvalidImage(f"an image array is HxW, HxWx3 or HxWx4, not {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        if array.dtype.kind not in "uif":
            raise InvalidImage(f"image arrays are uint8, uint16, bool or float, not {array.dtype}")
        array = _high_depth_to_uint8(array)
    height, width = array.shape[:2]
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)
    return normalize_image(Image.fromarray(np.ascontiguousarray(array)), max_pixels)


def _normalize(img: Image.Image) -> Image.Image:
    """Orient and convert a loaded image to 8-bit RGB/RGBA with minimal ``info``."""
    icc = img.info.get("icc_profile") if img.mode in ("RGB", "RGBA") else None
    try:
        oriented = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF should not reject otherwise good pixels
        oriented = img.copy()

    # exif_transpose returns a new image, so ``out`` never shares the file-backed object.
    out = _to_rgb_or_rgba(oriented)
    # Drop EXIF/XMP/comments (possibly megabytes, and EXIF orientation is already applied).
    # Keep an RGB ICC profile: it still describes the pixels (e.g. Display P3 phone photos);
    # a CMYK or grey profile would no longer match the converted data.
    out.info = {"icc_profile": icc} if icc else {}
    return out


def _to_rgb_or_rgba(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # Pillow's own convert("L") clips these at 255 instead of scaling, which turns
        # most 16-bit photos white; scale explicitly. Any tRNS key is lost (very rare).
        return Image.fromarray(_high_depth_to_uint8(np.asarray(img)), "L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        # Covers RGBA/LA/PA, P with a tRNS palette entry, and L/RGB with a colour key.
        rgba = img.convert("RGBA")  # also un-premultiplies RGBa/La
        if _min_alpha(rgba.getchannel("A")) < 255:
            return rgba
        return rgba.convert("RGB")  # an all-opaque alpha channel carries no information
    if mode == "RGB":
        return img
    # 1, L, P, CMYK (Pillow already undid Adobe inversion while decoding), YCbCr, LAB...
    return img.convert("RGB")


def _high_depth_to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        # Float images are either 0..1 (normalised) or 0..255; the former would be all
        # black if clipped as-is, so scale it up.
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    # Integers: mode I;16* is 16-bit by definition. Mode I (32-bit signed) usually holds
    # 16-bit data too (e.g. from TIFF writers), so scale as 16-bit when it fits and use the
    # full positive 31-bit range otherwise. Negative values carry no brightness: clip.
    values = np.clip(arr.astype(np.int64), 0, None)
    shift = 8 if arr.dtype.itemsize <= 2 or values.max(initial=0) <= 0xFFFF else 23
    return (values >> shift).astype(np.uint8)


def has_transparency(img: Image.Image) -> bool:
    """True if any pixel of ``img`` is not fully opaque (alpha band or tRNS transparency)."""
    if img.mode in _ALPHA_MODES:
        alpha = img.getchannel(img.getbands()[-1])
    elif "transparency" in img.info:
        try:
            alpha = img.convert("RGBA").getchannel("A")
        except (ValueError, OSError):  # a mode Pillow cannot convert has no usable alpha
            return False
    else:
        return False
    return _min_alpha(alpha) < 255


def _min_alpha(alpha: Image.Image) -> int:
    """The lowest value of a single-band image (its extrema are ints for 8-bit bands)."""
    low = alpha.getextrema()[0]
    return int(low[0] if isinstance(low, tuple) else low)
