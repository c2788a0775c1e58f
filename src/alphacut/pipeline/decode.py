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
import re
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from alphacut.errors import ImageTooLarge, InvalidImage

__all__ = ["declared_size", "decode_image", "has_transparency"]

_T = TypeVar("_T")

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


def _too_large(width: int, height: int, max_pixels: int, what: str = "image") -> ImageTooLarge:
    return ImageTooLarge(
        f"{what} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
    )


# --- declared sizes and structure, checked before Pillow reads the file -------------------
#
# Image.open reads only headers for most formats, but not all: Pillow's ICO plugin decodes the
# largest icon inside Image.open, and the directory's 1-byte sizes say nothing of an embedded
# PNG's real size. Other files cost memory or time before any pixel: Pillow walks JPEG
# segments, PNG chunks and GIF extension blocks in Python, one Python object each; libwebp
# allocates a record per chunk; a TIFF tile is decoded whole, however small the image. So the
# bytes are walked here first (headers only, bounded work) and a file is refused with
# ImageTooLarge when any frame, page or entry it declares is over the pixel limit, or when its
# structure is beyond the bounds below. Damaged structure is left to Pillow, which refuses it.

#: Frames (GIF, APNG, animated WebP), pages (TIFF), entries (ICO) or images (HEIF) in one file.
MAX_FRAMES = 10_000
#: PNG chunks or WebP chunks; PNG files get one more per 4 KiB (IDAT chunks of big files).
MAX_CHUNKS = 65_536
#: GIF data sub-blocks: up to 255 bytes each, so one per 128 bytes of the file on top of this.
MAX_GIF_BLOCKS = 65_536
#: PNG text chunks (tEXt, zTXt, iTXt): Pillow keeps each as a Python string.
MAX_PNG_TEXTS = 1024
#: Compressed PNG chunks besides image data (zTXt, compressed iTXt, iCCP): up to 1 MB each
#: once Pillow inflates them.
MAX_PNG_INFLATED = 16
#: JPEG segments (markers with a length), and scans: libjpeg decodes a progressive JPEG's
#: every scan over the whole image, so 20,000 tiny scans on 4 MP cost a minute of CPU.
MAX_JPEG_SEGMENTS = 4096
MAX_JPEG_SCANS = 64
#: Bytes between JPEG markers (junk, fill bytes, stray restart markers): before the first scan,
#: Pillow skips them one Python call at a time.
MAX_JPEG_STRAY = 1 << 18
#: TIFF: entries in one page's directory, and strips or tiles of one page (Pillow makes a
#: Python object per strip of an uncompressed page and decodes each one by one).
MAX_TIFF_ENTRIES = 4096
MAX_TIFF_STRIPS = 65_536


class _Budget:
    """A count of structure items that refuses the file beyond ``limit``."""

    __slots__ = ("left", "limit", "what")

    def __init__(self, limit: int, what: str) -> None:
        self.left = self.limit = limit
        self.what = what

    def spend(self, items: int = 1) -> None:
        self.left -= items
        if self.left < 0:
            raise _too_many(self.what, self.limit)


def _too_many(what: str, limit: int) -> ImageTooLarge:
    return ImageTooLarge(f"the image has more {what} than the limit of {limit}")


def _check_pixels(what: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels, what)


def _check_structure(data: bytes, max_pixels: int) -> None:
    """Refuse ``data`` (ImageTooLarge) if a frame, page or entry it declares is over
    ``max_pixels`` or its structure is over the bounds above; reads headers only."""
    try:
        if data.startswith(_PNG_MAGIC):
            _check_png(data, 0, max_pixels, _Budget(MAX_CHUNKS + len(data) // 4096, "PNG chunks"))
        elif data.startswith(b"\xff\xd8"):
            _check_jpeg(data, max_pixels)
        elif data.startswith((b"GIF87a", b"GIF89a")):
            _check_gif(data, max_pixels)
        elif data.startswith(b"\x00\x00\x01\x00"):
            _check_ico(data, max_pixels)
        elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            _check_tiff(data, max_pixels)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            _check_webp(data, max_pixels)
    except (IndexError, ValueError, struct.error):
        # The structure is damaged where the walk stopped: Pillow stops there too (or reads
        # less), and answers for the file itself.
        pass


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})


def _check_png(
    data: bytes, start: int, max_pixels: int, chunks: _Budget, what: str = "PNG image"
) -> None:
    """Every PNG chunk up to IEND: IHDR, each APNG frame (fcTL) and their count, text."""
    pos = start + 8
    texts = inflated = frames = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks.spend()
        body = pos + 8
        if kind == b"IHDR":
            width, height = struct.unpack_from(">II", data, body)
            _check_pixels(what, width, height, max_pixels)
        elif kind == b"acTL":
            declared = struct.unpack_from(">I", data, body)[0]
            if declared > MAX_FRAMES:
                raise _too_many("frames", MAX_FRAMES)
        elif kind == b"fcTL":
            frames += 1
            if frames > MAX_FRAMES:
                raise _too_many("frames", MAX_FRAMES)
            width, height = struct.unpack_from(">II", data, body + 4)
            _check_pixels(f"APNG frame {frames}", width, height, max_pixels)
        elif kind in _PNG_TEXT:
            texts += 1
            if texts > MAX_PNG_TEXTS:
                raise _too_many("PNG text chunks", MAX_PNG_TEXTS)
            if kind == b"zTXt" or (kind == b"iTXt" and _itxt_compressed(data, body, length)):
                inflated += 1
        elif kind == b"iCCP":
            inflated += 1
        elif kind == b"IEND":
            return
        if inflated > MAX_PNG_INFLATED:
            raise _too_many("compressed PNG text or profile chunks", MAX_PNG_INFLATED)
        pos = body + length + 4


def _itxt_compressed(data: bytes, body: int, length: int) -> bool:
    keyword_end = data.find(b"\0", body, body + min(length, 80))
    return keyword_end >= 0 and data[keyword_end + 1 : keyword_end + 2] == b"\x01"


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# The next marker in entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart
# marker (RST0-7) nor another fill 0xFF.
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_FILL = re.compile(rb"\xff+")


def _check_jpeg(data: bytes, max_pixels: int) -> None:
    """The first JPEG's markers up to its EOI: SOF sizes, the segment and scan counts, and the
    bytes between markers (Pillow skips them one Python call at a time before the first scan)."""
    pos, segments, scans, stray = 2, 0, 0, 0
    while True:
        if data[pos] != 0xFF:  # junk between segments: skipped, as Pillow does
            found = data.find(b"\xff", pos)
            if found < 0:
                return
            stray += found - pos
            pos = found
        fill = _JPEG_FILL.match(data, pos)
        if fill is None:
            return
        stray += fill.end() - pos - 1  # fill bytes before the marker
        pos = fill.end() - 1
        marker = data[pos + 1]
        if marker == 0x00 or 0xD0 <= marker <= 0xD7:
            stray += 2  # a stuffed zero or a restart marker outside entropy-coded data
            pos += 2
        elif marker == 0xD9:  # EOI: later images (MPO frames) are never decoded
            return
        else:
            segments += 1
            if segments > MAX_JPEG_SEGMENTS:
                raise _too_many("JPEG segments", MAX_JPEG_SEGMENTS)
            if marker in (0x01, 0xD8):  # TEM, SOI: no length
                pos += 2
                continue
            if marker in _SOF_MARKERS:
                height, width = struct.unpack_from(">HH", data, pos + 5)
                _check_pixels("JPEG image", width, height, max_pixels)
            pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
            if marker == 0xDA:  # SOS: entropy-coded data follows, up to the next marker
                scans += 1
                if scans > MAX_JPEG_SCANS:
                    raise _too_many("JPEG scans", MAX_JPEG_SCANS)
                next_marker = _JPEG_NEXT_MARKER.search(data, pos)
                if next_marker is None:
                    return
                pos = next_marker.start()
        if stray > MAX_JPEG_STRAY:
            raise _too_many("bytes between JPEG markers", MAX_JPEG_STRAY)


def _check_gif(data: bytes, max_pixels: int) -> None:
    """The logical screen and every frame: Pillow grows the canvas to fit a frame that
    extends past the screen, so each frame's extent counts."""
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    _check_pixels("GIF screen", width, height, max_pixels)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks = _Budget(MAX_GIF_BLOCKS + len(data) // 128, "GIF data blocks")
    frames = 0
    while pos < len(data):
        kind = data[pos]
        if kind == 0x21:  # extension: a label, then data sub-blocks
            pos = _skip_gif_blocks(data, pos + 2, blocks)
        elif kind == 0x2C:  # image descriptor
            left, top, frame_w, frame_h, flags = struct.unpack_from("<HHHHB", data, pos + 1)
            frames += 1
            if frames > MAX_FRAMES:
                raise _too_many("frames", MAX_FRAMES)
            width, height = max(width, left + frame_w), max(height, top + frame_h)
            _check_pixels(f"GIF frame {frames}", width, height, max_pixels)
            # Local colour table, then the LZW minimum code size, then the data sub-blocks.
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1
            pos = _skip_gif_blocks(data, pos, blocks)
        else:  # the trailer (0x3B), or damage
            return


def _skip_gif_blocks(data: bytes, pos: int, blocks: _Budget) -> int:
    while size := data[pos]:
        blocks.spend()
        pos += size + 1
    return pos + 1


def _check_ico(data: bytes, max_pixels: int) -> None:
    """Every icon directory entry, by the header of the image it holds (a PNG's IHDR, a
    BMP's info header): the directory's own 1-byte width and height can say 16x16 for a
    13000x13000 PNG, which Pillow decodes inside Image.open."""
    count = struct.unpack_from("<H", data, 4)[0]
    if count > MAX_FRAMES:
        raise _too_many("icon entries", MAX_FRAMES)
    chunks = _Budget(MAX_CHUNKS + len(data) // 4096, "PNG chunks")  # shared by all entries
    for index in range(count):
        try:
            _check_icon(data, index, max_pixels, chunks)
        except (IndexError, ValueError, struct.error):
            continue  # a damaged entry: Pillow may still pick another one


def _check_icon(data: bytes, index: int, max_pixels: int, chunks: _Budget) -> None:
    what = f"icon entry {index + 1}"
    offset = struct.unpack_from("<I", data, 6 + 16 * index + 12)[0]
    if data.startswith(_PNG_MAGIC, offset):
        # Pillow reads the PNG from there to its IEND, whatever the entry's size says.
        _check_png(data, offset, max_pixels, chunks, f"{what} (a PNG)")
        return
    # A DIB: a BITMAPCOREHEADER (12 bytes) or a later header, with the XOR and AND masks
    # one above the other (twice the icon's height).
    if struct.unpack_from("<I", data, offset)[0] == 12:
        width, height = struct.unpack_from("<HH", data, offset + 4)
    else:
        width, height = struct.unpack_from("<ii", data, offset + 4)
    _check_pixels(what, abs(width), abs(height) // 2, max_pixels)


def _check_tiff(data: bytes, max_pixels: int) -> None:
    """Every page (IFD) of the chain: its size, tile size and number of strips or tiles."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")  # BigTIFF: 8-byte counts and offsets
    word = order + ("Q" if big else "I")
    count_format = order + ("Q" if big else "H")
    entry_size = 20 if big else 12
    offset = struct.unpack_from(word, data, 8 if big else 4)[0]
    seen: set[int] = set()
    while offset and offset not in seen:  # Pillow also stops at a loop
        seen.add(offset)
        if len(seen) > MAX_FRAMES:
            raise _too_many("TIFF pages", MAX_FRAMES)
        entries = struct.unpack_from(count_format, data, offset)[0]
        if entries > MAX_TIFF_ENTRIES:
            raise _too_many("tags in a TIFF page", MAX_TIFF_ENTRIES)
        first = offset + struct.calcsize(count_format)
        # Every entry's tag in one call: a 2-byte tag, then the rest of the entry skipped.
        tags = struct.unpack_from(order + f"H{entry_size - 2}x" * entries, data, first)
        at = {tag: first + i * entry_size for i, tag in enumerate(tags) if tag in _TIFF_TAGS}
        values = {tag: _tiff_value(data, order, big, where) for tag, where in at.items()}
        page = f"TIFF page {len(seen)}"
        _check_pixels(page, values.get(256, 0), values.get(257, 0), max_pixels)
        _check_pixels(f"a tile of {page}", values.get(322, 0), values.get(323, 0), max_pixels)
        for offsets_tag in (273, 324):  # StripOffsets, TileOffsets: one per strip or tile
            if offsets_tag in at:
                strips = struct.unpack_from(word, data, at[offsets_tag] + 4)[0]
                if strips > MAX_TIFF_STRIPS:
                    raise _too_many(f"strips or tiles in {page}", MAX_TIFF_STRIPS)
        offset = struct.unpack_from(word, data, first + entries * entry_size)[0]


# ImageWidth, ImageLength, StripOffsets, TileWidth, TileLength, TileOffsets
_TIFF_TAGS = frozenset({256, 257, 273, 322, 323, 324})
_TIFF_TYPES = {1: "B", 3: "H", 4: "I"}


def _tiff_value(data: bytes, order: str, big: bool, entry: int) -> int:
    """The first value of the IFD entry at ``entry``: BYTE, SHORT, LONG (or BigTIFF's LONG8);
    0 for other types, which Pillow would not take as a size either."""
    kind = struct.unpack_from(order + "H", data, entry + 2)[0]
    fmt = "Q" if big and kind == 16 else _TIFF_TYPES.get(kind)
    if fmt is None:
        return 0
    return int(struct.unpack_from(order + fmt, data, entry + (12 if big else 8))[0])


def _check_webp(data: bytes, max_pixels: int) -> None:
    """Every RIFF chunk: the VP8X canvas, each animation frame (ANMF), a still image's own
    size; libwebp keeps a record for each chunk and frame."""
    end = min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
    pos, chunks, frames = 12, 0, 0
    while pos + 8 <= end:
        kind, size = struct.unpack_from("<4sI", data, pos)
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise _too_many("WebP chunks", MAX_CHUNKS)
        body = pos + 8
        if kind == b"VP8X":
            canvas = data[body + 4 : body + 10]
            width, height = (int.from_bytes(canvas[i : i + 3], "little") + 1 for i in (0, 3))
            _check_pixels("WebP canvas", width, height, max_pixels)
        elif kind == b"ANMF":
            frames += 1
            if frames > MAX_FRAMES:
                raise _too_many("frames", MAX_FRAMES)
            dims = data[body + 6 : body + 12]
            width, height = (int.from_bytes(dims[i : i + 3], "little") + 1 for i in (0, 3))
            _check_pixels(f"WebP frame {frames}", width, height, max_pixels)
        elif kind == b"VP8 " and data[body + 3 : body + 6] == b"\x9d\x01\x2a":
            width, height = struct.unpack_from("<HH", data, body + 6)
            _check_pixels("WebP image", width & 0x3FFF, height & 0x3FFF, max_pixels)
        elif kind == b"VP8L" and data[body] == 0x2F:
            bits = struct.unpack_from("<I", data, body + 1)[0]
            width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            _check_pixels("WebP image", width, height, max_pixels)
        pos = body + size + (size & 1)


def _check_opened(img: Image.Image, max_pixels: int) -> None:
    """What only the opened file tells: HEIF's other top-level images (libheif has parsed
    them; only the primary one is decoded), and AVIF's frame count."""
    heif = getattr(img, "_heif_file", None)
    if heif is not None:
        if len(heif) > MAX_FRAMES:
            raise _too_many("images", MAX_FRAMES)
        for index in range(len(heif)):
            width, height = heif[index].size
            _check_pixels(f"HEIF image {index + 1}", width, height, max_pixels)
    elif img.format == "AVIF" and int(getattr(img, "n_frames", 1)) > MAX_FRAMES:
        raise _too_many("frames", MAX_FRAMES)


def decode_image(data: bytes, max_pixels: int = 50_000_000) -> Image.Image:
    """Decode ``data`` into a loaded, EXIF-oriented image in mode ``RGB`` or ``RGBA``.

    ``RGBA`` is returned only when the source actually has a transparent pixel. Animated
    GIF/WebP/APNG and multi-page TIFF yield their first frame; the others are never decoded.
    The pixel limit applies to every frame, page or entry the file declares, checked from the
    bytes before Pillow reads them, with the structure bounds above (Pillow's own
    decompression-bomb error, at 2x ``Image.MAX_IMAGE_PIXELS``, also maps to
    ``ImageTooLarge``).

    Raises ``InvalidImage`` for empty, non-image, unsupported or corrupt data and
    ``ImageTooLarge`` when a declared width*height exceeds ``max_pixels`` or the structure
    exceeds a bound.
    """
    return _opened(data, max_pixels, _load)


def declared_size(data: bytes, max_pixels: int = 50_000_000) -> tuple[int, int]:
    """The width and height ``data`` declares, from its headers alone, with the checks and
    errors of ``decode_image`` but no pixel decoded: what a request costs can be counted, or
    refused, before the work of decoding it."""
    return _opened(data, max_pixels, lambda img: img.size)


def _load(img: Image.Image) -> Image.Image:
    # Decode now, inside _opened's try, so truncation surfaces here and not later in the
    # pipeline. LOAD_TRUNCATED_IMAGES stays False: a half-grey image is a bad result.
    img.load()
    return _normalize(img)


def _opened(data: bytes, max_pixels: int, use: Callable[[Image.Image], _T]) -> _T:
    """``use(img)`` on ``data`` opened by Pillow once every check has passed; Pillow's many
    exceptions become InvalidImage or ImageTooLarge."""
    if not data:
        raise InvalidImage("the image data is empty")
    formats = _allowed_formats(heif=data[4:8] == b"ftyp")
    _silence_decoder_warnings()
    try:
        _check_structure(data, max_pixels)
        with Image.open(io.BytesIO(data), formats=formats) as img:
            _check_opened(img, max_pixels)
            width, height = img.size
            if width * height > max_pixels:
                raise _too_large(width, height, max_pixels)
            return use(img)
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
