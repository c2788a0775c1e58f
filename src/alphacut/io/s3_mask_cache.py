"""The mask cache of a cluster: entries in the storage's S3 bucket, shared by every worker.

Each worker keeping its own disk cache would run the model again for a photo that another
worker already saw; with S3 storage (``ALPHACUT_STORAGE_URL=s3://...``) the engines of
``alphacut worker`` and of an embedded ``alphacut serve`` keep their maps here instead, at
``PREFIX/_cache/masks/<key>.mask``, in the self-checking format of ``encode_entry``.

* A PUT is atomic per object: a reader sees a whole entry or none. A damaged, truncated or
  foreign object fails ``decode_entry`` and is a miss (and is deleted).
* ``get`` and ``put`` never raise: an unreachable or refusing store is logged and the map is
  computed (a miss) or simply not kept. They try once, without the storage's retries: a miss
  costs one inference, retries with backoff would cost more.
* Bounded by ``ALPHACUT_CACHE_BYTES``. S3 keeps no access time, so eviction is by age: oldest
  ``LastModified`` first (first in, first out). A hit does not refresh its entry: that would be
  a server-side copy of ~1.3 MB per hit, and the pattern the cache serves (the same photo again
  within minutes, with other options) is well served by FIFO. Listing the prefix costs one
  request per 1000 entries, so it is not done on every put: each process keeps a running
  estimate of the bytes it added since its last listing, and lists and trims when the estimate
  says the budget is exceeded, or every ``trim_every`` puts (other workers add entries too).
  Between passes the bucket may exceed the budget by what the workers put meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from alphacut.models.mask_cache import (
    CacheStats,
    CorruptEntry,
    LookupCounter,
    MaskCache,
    WriteBehindCache,
    decode_entry,
    encode_entry,
    open_mask_cache,
)

if TYPE_CHECKING:
    from alphacut.config import Settings
    from alphacut.io.s3 import S3Storage
    from alphacut.io.storage import Storage

log = logging.getLogger(__name__)

CACHE_DIR = "_cache/masks"
_SUFFIX = ".mask"
# A listing+trim pass at least every this many puts of one process.
TRIM_EVERY_PUTS = 32
# stats() lists the prefix again (without trimming) when its figures are older than this, so a
# node that never puts (an API node) still reports the shared cache's size.
STATS_MAX_AGE_SECONDS = 300.0


class S3MaskCache:
    """A ``MaskCache`` in an S3 bucket, at most ``max_bytes`` in all, oldest entries out."""

    def __init__(
        self, storage: S3Storage, max_bytes: int, *, trim_every: int = TRIM_EVERY_PUTS
    ) -> None:
        self.client: Any = storage.client
        self.bucket = storage.bucket
        self.root = storage._key(CACHE_DIR) + "/"
        self.max_bytes = max_bytes
        self.trim_every = max(1, trim_every)
        self._storage = storage
        self._lock = threading.Lock()
        self._trim_lock = threading.Lock()
        self.lookups = LookupCounter()
        # From the last listing (None: not listed yet), and this process's puts since.
        self._listed_bytes: int | None = None
        self._listed_entries = 0
        self._listed_at = 0.0
        self._added_bytes = 0
        self._puts_since_listing = 0

    def _object(self, key: str) -> str:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return f"{self.root}{key}{_SUFFIX}"

    def _is_missing(self, exc: Exception) -> bool:
        return self._storage._is_missing(exc)

    def get(self, key: str) -> np.ndarray | None:
        name = self._object(key)
        probability = None
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=name)
            body = answer["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            probability = decode_entry(key, data)
        except CorruptEntry as exc:
            log.warning("mask cache entry %s is damaged (%s); treating it as a miss", key, exc)
            self._delete(name)
        except Exception as exc:
            if not self._is_missing(exc):
                log.warning("cannot read the mask cache entry %s: %s", name, exc)
        return self.lookups.count(probability)

    def put(self, key: str, probability: np.ndarray) -> None:
        name = self._object(key)
        data = encode_entry(key, probability)
        if len(data) > self.max_bytes:
            return
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=name, Body=data, ContentType="application/octet-stream"
            )
        except Exception as exc:
            log.warning("cannot write the mask cache entry %s: %s", name, exc)
            return
        with self._lock:
            self._added_bytes += len(data)
            self._puts_since_listing += 1
            due = (
                self._listed_bytes is None
                or self._listed_bytes + self._added_bytes > self.max_bytes
                or self._puts_since_listing >= self.trim_every
            )
        if due:
            self.trim()

    def stats(self) -> CacheStats:
        if time.monotonic() - self._listed_at > STATS_MAX_AGE_SECONDS:
            self._list_and_trim(trim=False)
        with self._lock:
            return CacheStats(
                self.lookups.hits,
                self.lookups.misses,
                self._listed_bytes or 0,
                self._listed_entries,
            )

    def trim(self) -> None:
        """List the entries and delete the oldest until they fit in ``max_bytes``."""
        self._list_and_trim(trim=True)

    def _list_and_trim(self, trim: bool) -> None:
        if not self._trim_lock.acquire(blocking=False):
            return  # another thread of this process is listing right now
        try:
            entries = self._list()
            if entries is None:
                return
            total = sum(size for _, size, _ in entries)
            count = len(entries)
            if trim and total > self.max_bytes:
                stale: list[str] = []
                for _, size, name in sorted(entries):
                    if total <= self.max_bytes:
                        break
                    stale.append(name)
                    total -= size
                    count -= 1
                self._delete_many(stale)
            with self._lock:
                self._listed_bytes, self._listed_entries = total, count
                self._listed_at = time.monotonic()
                self._added_bytes = 0
                self._puts_since_listing = 0
        finally:
            self._trim_lock.release()

    def _list(self) -> list[tuple[float, int, str]] | None:
        """(LastModified, size, key) of every entry, or None if the store cannot be listed."""
        entries: list[tuple[float, int, str]] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.root
            )
            for page in pages:
                for item in page.get("Contents", []):
                    if item["Key"].endswith(_SUFFIX):
                        stamp = item["LastModified"].timestamp()
                        entries.append((stamp, int(item["Size"]), item["Key"]))
        except Exception as exc:
            log.warning("cannot list the mask cache in s3://%s/%s: %s", self.bucket, self.root, exc)
            return None
        return entries

    def _delete(self, name: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except Exception:
            pass  # the damaged entry stays a miss

    def _delete_many(self, names: list[str]) -> None:
        for start in range(0, len(names), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": name} for name in names[start : start + 1000]]
            try:
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as exc:
                log.warning("cannot evict mask cache entries: %s", exc)
                return


def storage_mask_cache(settings: Settings, storage: Storage) -> MaskCache | None:
    """The mask cache that goes with ``storage``: in the bucket for S3 storage (one cache for
    the whole cluster), else on disk under the home folder; None when ``cache_bytes`` is 0."""
    from alphacut.io.s3 import S3Storage

    if settings.cache_bytes <= 0:
        return None
    cache: MaskCache | None
    if isinstance(storage, S3Storage):
        cache = S3MaskCache(storage, settings.cache_bytes)
    else:
        cache = open_mask_cache(settings.home / "cache" / "masks", settings.cache_bytes)
    # A server's or worker's requests do not wait for the entry to be written.
    return WriteBehindCache(cache) if cache is not None else None
