"""Managed API keys in the job database: created, listed and revoked by ``alphacut keys``.

A key is shown once, when it is created; the database keeps only its HMAC-SHA256 with a
server-side pepper (``ALPHACUT_KEY_PEPPER``, else a secret file in ``$ALPHACUT_HOME``), so a copy
of the database alone cannot be used to find or check keys. Jobs stay owned by ``owner_id(key)``,
the unpeppered hash alphacut has always used, so jobs made before keys were managed keep their
owner.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Engine, RowMapping

from alphacut.jobs.database import WRITE
from alphacut.jobs.schema import api_keys
from alphacut.jobs.webhooks import load_or_create_secret

__all__ = ["KeyStore", "ManagedKey", "load_pepper", "new_key", "owner_id"]

KEY_PREFIX = "ac_"


def owner_id(key: str) -> str:
    """The owner of the jobs a key creates ("" for no key): unchanged since the first release."""
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else ""


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe, with a prefix that says what it is."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def load_pepper(configured: str, home: Path) -> str:
    return load_or_create_secret(configured, home, "key_pepper", "ALPHACUT_KEY_PEPPER")


@dataclass(frozen=True)
class ManagedKey:
    id: int
    name: str
    queue_limit: int | None  # None: the server's default
    rate_limit: int | None  # requests per minute
    megapixel_limit: float | None  # megapixels per minute
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _to_key(row: RowMapping) -> ManagedKey:
    return ManagedKey(
        id=row["id"],
        name=row["name"],
        queue_limit=row["queue_limit"],
        rate_limit=row["rate_limit"],
        megapixel_limit=row["megapixel_limit"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


class KeyStore:
    """The ``api_keys`` table on the job store's engine; thread-safe, one short query a call."""

    def __init__(self, engine: Engine, pepper: str) -> None:
        if not pepper:
            raise ValueError("the key pepper must not be empty")
        self.engine = engine
        self._pepper = pepper.encode()

    def hash_key(self, key: str) -> str:
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).hexdigest()

    def create(
        self,
        name: str = "",
        *,
        queue_limit: int | None = None,
        rate_limit: int | None = None,
        megapixel_limit: float | None = None,
    ) -> tuple[ManagedKey, str]:
        """A new key: its record, and the key itself (never stored: show it to the user once)."""
        key = new_key()
        insert = (
            api_keys.insert()
            .values(
                name=name,
                key_hash=self.hash_key(key),
                queue_limit=queue_limit,
                rate_limit=rate_limit,
                megapixel_limit=megapixel_limit,
                created_at=time.time(),
            )
            .returning(*api_keys.c)
        )
        with self.engine.connect() as connection:
            connection.execution_options(**WRITE)
            with connection.begin():
                record = _to_key(connection.execute(insert).mappings().one())
        return record, key

    def list(self) -> list[ManagedKey]:
        with self.engine.connect() as connection:
            rows = connection.execute(api_keys.select().order_by(api_keys.c.id)).mappings()
            return [_to_key(row) for row in rows]

    def find(self, key: str) -> ManagedKey | None:
        """The record of ``key`` (revoked or not), or None for a key never issued."""
        digest = self.hash_key(key)
        query = api_keys.select().where(api_keys.c.key_hash == digest)
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        # The index lookup is on a peppered hash, so its timing tells an attacker nothing about
        # any real key; the final check is constant-time all the same.
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        return _to_key(row)

    def any_issued(self) -> bool:
        """Whether any key was ever created: from then on the server requires keys, even when
        every key is revoked (revoking the last key must not open the server)."""
        with self.engine.connect() as connection:
            return connection.execute(sa.select(sa.exists(api_keys.select()))).scalar() is True

    def revoke(self, key_id: int) -> ManagedKey | None:
        """Revoke the key (a second revoke keeps the first time); None if there is no such id."""
        update = (
            api_keys.update()
            .where(api_keys.c.id == key_id)
            .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, time.time()))
            .returning(*api_keys.c)
        )
        with self.engine.connect() as connection:
            connection.execution_options(**WRITE)
            with connection.begin():
                row = connection.execute(update).mappings().first()
        return _to_key(row) if row is not None else None

    def touch(self, key_id: int, now: float | None = None) -> None:
        """Record that the key was used (the caller throttles this: it is a write)."""
        with self.engine.connect() as connection:
            connection.execution_options(**WRITE)
            with connection.begin():
                connection.execute(
                    api_keys.update()
                    .where(api_keys.c.id == key_id)
                    .values(last_used_at=now if now is not None else time.time())
                )
