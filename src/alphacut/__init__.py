"""alphacut: self-hostable background removal and masks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The HTTP client is imported on first use, so `import alphacut` stays light (no httpx, PIL).
_CLIENT_NAMES = frozenset(
    {
        "Client",
        "AsyncClient",
        "AlphacutAPIError",
        "AlphacutClientError",
        "AlphacutTimeout",
        "RemovalResult",
    }
)
__all__ = [
    "AlphacutAPIError",
    "AlphacutClientError",
    "AlphacutTimeout",
    "AsyncClient",
    "Client",
    "RemovalResult",
    "__version__",
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


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from alphacut import client

        return getattr(client, name)
    raise AttributeError(f"module 'alphacut' has no attribute {name!r}")
