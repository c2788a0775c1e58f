"""The library API: ``remove()`` and ``new_session()``, as rembg users expect them.

``remove(data, **options)`` takes encoded bytes, a PIL image or a numpy array and returns the
same kind: the encoded output file, a PIL image, or an array (HxW mask, HxWx4 RGBA cutout,
HxWx3 over an opaque background). Options are the fields of ``RemoveOptions``, validated by
that one definition, so a bad value raises ``InvalidOptions`` with the API's message.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar, overload

import numpy as np
from PIL import Image

from alphacut.config import Settings, load_settings
from alphacut.engine import Engine
from alphacut.pipeline.decode import decode_image, image_from_array, normalize_image
from alphacut.pipeline.encode import encode_image
from alphacut.pipeline.options import RemoveOptions, make_options

ImageT = TypeVar("ImageT", bytes, Image.Image, np.ndarray)


class Session:
    """One loaded model, reused across calls (loading ISNet takes seconds). Thread-safe."""

    def __init__(self, model: str | None = None, settings: Settings | None = None) -> None:
        if settings is None:
            settings = load_settings()
            if "cache_bytes" not in settings.model_fields_set:
                # A library keeps no files behind unless asked: the mask cache on disk (the
                # server's default) is on only with ALPHACUT_CACHE_BYTES or given settings.
                settings = settings.model_copy(update={"cache_bytes": 0})
        self.settings = settings
        self.model = model or self.settings.model
        # A one-shot caller pays no warm-up inference; the first call is the warm-up.
        self._engine = Engine(self.settings, warm_up=False)

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session(model={self.model!r})"


def new_session(model: str | None = None, settings: Settings | None = None) -> Session:
    """A session for ``model`` (default: ``ALPHACUT_MODEL``, else "medium"). Without
    ``settings``, they are read from the ``ALPHACUT_*`` environment variables."""
    return Session(model, settings)


_default_sessions: dict[str | None, Session] = {}
_default_lock = threading.Lock()


def _default_session(model: str | None) -> Session:
    with _default_lock:
        session = _default_sessions.get(model)
        if session is None:
            session = _default_sessions[model] = Session(model)
        return session


@overload
def remove(
    data: bytes | bytearray | memoryview,
    *,
    session: Session | None = ...,
    options: RemoveOptions | None = ...,
    **fields: Any,
) -> bytes: ...
@overload
def remove(
    data: Image.Image,
    *,
    session: Session | None = ...,
    options: RemoveOptions | None = ...,
    **fields: Any,
) -> Image.Image: ...
@overload
def remove(
    data: np.ndarray,
    *,
    session: Session | None = ...,
    options: RemoveOptions | None = ...,
    **fields: Any,
) -> np.ndarray: ...
def remove(
    data: bytes | bytearray | memoryview | Image.Image | np.ndarray,
    *,
    session: Session | None = None,
    options: RemoveOptions | None = None,
    **fields: Any,
) -> bytes | Image.Image | np.ndarray:
    """Remove the background of ``data``; the result is of the same kind.

    Options come as keyword arguments (``only_mask=True``, ``bg_color="#fff"``) or as a
    ``RemoveOptions``; ``bg_image`` may be a file path, an http(s) URL or a data URI. Without
    ``session``, one per model is created on first use and kept.
    """
    if options is not None and fields:
        raise TypeError("pass options either as RemoveOptions or as keyword arguments, not both")
    opts = options if options is not None else make_options(**fields)
    session = session or _default_session(None)
    settings = session.settings
    if isinstance(data, bytes | bytearray | memoryview):
        image = decode_image(bytes(data), settings.max_pixels)
    elif isinstance(data, Image.Image):
        image = normalize_image(data, settings.max_pixels)
    elif isinstance(data, np.ndarray):
        image = image_from_array(data, settings.max_pixels)
    else:
        raise TypeError(f"data must be bytes, a PIL image or a numpy array, not {type(data)}")
    background = load_background(opts, settings)
    result = session._engine.remove(image, opts, model=session.model, background=background)
    if isinstance(data, np.ndarray):
        return result.output
    if isinstance(data, Image.Image):
        return Image.fromarray(result.output)
    return encode_image(result.output, opts.format, opts.quality, settings.png_compress_level)


def load_background(options: RemoveOptions, settings: Settings) -> Image.Image | None:
    """``options.bg_image`` (a path, an http(s) URL or a data URI), decoded; None if unset."""
    if options.bg_image is None:
        return None
    # Imported here: the URL fetcher pulls in httpx (~0.1 s), which a call without a
    # background image, such as a one-shot `alphacut remove`, never needs.
    from alphacut.io.sources import read_image_source

    source, _ = read_image_source(options.bg_image, settings, allow_files=True)
    return decode_image(source, settings.max_pixels)
