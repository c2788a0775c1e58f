"""What ``alphacut keys create|list|revoke`` needs besides printing: the key store, a table."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from alphacut.config import Settings
from alphacut.errors import AlphacutError
from alphacut.jobs.keys import KeyStore, ManagedKey, load_pepper


@contextmanager
def open_key_store(settings: Settings, fail: Callable[[str], NoReturn]) -> Iterator[KeyStore]:
    """The key store on ``ALPHACUT_DATABASE_URL``, opened as the server opens it (a SQLite file
    is brought to the current schema; PostgreSQL must be: `alphacut db upgrade`)."""
    from alphacut.jobs.store import SQLJobStore

    try:
        store = SQLJobStore(settings.database_url)
    except AlphacutError as exc:
        fail(exc.message)
    try:
        yield KeyStore(store.engine, load_pepper(settings.key_pepper, settings.home))
    finally:
        store.close()


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def _limit(value: float | None) -> str:
    if value is None:
        return "default"
    return "none" if value == 0 else f"{value:g}"


def format_keys(keys: list[ManagedKey]) -> str:
    if not keys:
        return "no managed keys (create one with `alphacut keys create`)"
    rows = [("id", "name", "queue", "req/min", "MP/min", "created", "last used", "revoked")]
    rows += [
        (
            str(key.id),
            key.name or "-",
            _limit(key.queue_limit),
            _limit(key.rate_limit),
            _limit(key.megapixel_limit),
            _when(key.created_at),
            _when(key.last_used_at),
            _when(key.revoked_at),
        )
        for key in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
