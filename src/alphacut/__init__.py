"""alphacut: self-hostable background removal and masks.

The public API is what ``__all__`` lists; every other module is internal and may change::

    from alphacut import remove, new_session
    session = new_session()                       # loads the model once
    cutout_png = remove(open("photo.jpg", "rb").read(), session=session)

Names are imported on first use, so ``import alphacut`` stays light (no ONNX Runtime, no httpx)
and the library works without the server extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "remove": "alphacut.library",
    "new_session": "alphacut.library",
    "Session": "alphacut.library",
    "RemoveOptions": "alphacut.pipeline.options",
    "InvalidOptions": "alphacut.pipeline.options",
    "Settings": "alphacut.config",
    "load_settings": "alphacut.config",
    "AlphacutError": "alphacut.errors",
    "Client": "alphacut.client",
    "AsyncClient": "alphacut.client",
    "RemovalResult": "alphacut.client",
    "AlphacutClientError": "alphacut.client",
    "AlphacutAPIError": "alphacut.client",
    "AlphacutTimeout": "alphacut.client",
}
__all__ = [
    "AlphacutAPIError",
    "AlphacutClientError",
    "AlphacutError",
    "AlphacutTimeout",
    "AsyncClient",
    "Client",
    "InvalidOptions",
    "RemovalResult",
    "RemoveOptions",
    "Session",
    "Settings",
    "__version__",
    "load_settings",
    "new_session",
    "remove",
]

if TYPE_CHECKING:
    from alphacut.client import (
        AlphacutAPIError,
        AlphacutClientError,
        AlphacutTimeout,
        AsyncClient,
        Client,
        RemovalResult,
    )
    from alphacut.config import Settings, load_settings
    from alphacut.errors import AlphacutError
    from alphacut.library import Session, new_session, remove
    from alphacut.pipeline.options import InvalidOptions, RemoveOptions


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alphacut' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
