"""Where an image comes from: a data URI, an http(s) URL (under the fetch policy) or a file.

The server accepts the first two only (it never reads its own files for a client); the CLI and
the library accept paths as well.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from alphacut.config import Settings
from alphacut.errors import ImageTooLarge, InvalidRequest
from alphacut.io.fetch import FetchPolicy, fetch_url

_DATA_URI = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_REMOTE = re.compile(r"^https?://", re.IGNORECASE)


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        allowlist=settings.url_allowlist,
        max_bytes=settings.max_download_bytes,
        total_timeout=settings.fetch_timeout,
    )


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    match = _DATA_URI.match(uri)
    if match is None:
        raise InvalidRequest("image data URI must look like data:image/<type>;base64,<data>", 400)
    payload = uri[match.end() :]
    if len(payload) * 3 // 4 > max_bytes:
        raise ImageTooLarge(f"image is larger than the {max_bytes // (1024 * 1024)} MB limit")
    try:
        return base64.b64decode(payload.strip(), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("image data URI is not valid base64", 400) from exc


def read_image_source(
    source: str, settings: Settings, *, allow_files: bool = False
) -> tuple[bytes, str]:
    """The bytes ``source`` names, and what meta reports for it ("data-uri", the URL, or the
    path). Blocking: the server runs it in a thread."""
    value = source.strip()
    if value.lower().startswith("data:"):
        return decode_data_uri(value, settings.max_download_bytes), "data-uri"
    if _REMOTE.match(value):
        return fetch_url(value, fetch_policy(settings)).content, value
    if not allow_files:
        raise InvalidRequest("image must be an http(s) URL or a data:image/...;base64, URI", 400)
    path = Path(value).expanduser()
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}", 400) from exc
