"""A cache of the model's probability maps, so that the model never runs twice on one picture.

Clients ask for the same photo again with other options (the cutout, then the mask; another
background colour; a retry after a timeout). Everything after the model's probability map is
cheap next to the model, so the map is kept, keyed by what determines it:

* the decoded RGB pixels, hashed (not the uploaded bytes): every entry point (HTTP bytes, the
  worker's already-decoded image, the CLI, library PIL images and arrays) reaches the model
  through these pixels, so they are exactly its input, whatever decoder, EXIF handling or
  plugin produced them; hashing them costs ~0.3 ms per megapixel;
* the model: its spec (name, input size, normalisation, output transform), the weights file's
  size and mtime, the ONNX Runtime version, the providers and the CPU fingerprint (an optimised
  graph's kernels depend on the CPU, so the last bits of a map may too);
* the mask-quality mode and ``PIPELINE_VERSION``.

Entries are stored losslessly (float32, byte-shuffled then zlib: ~1.3 MB for a 1024^2 map
instead of 4 MiB), so a cached result is bit-identical to an uncached one. ``MaskCache`` is the
interface (get/put/stats) that a shared-storage backend can implement with the same
``encode_entry``/``decode_entry`` format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import PIL
from PIL import Image

from alphacut.models.registry import ModelSpec
from alphacut.models.session import cpu_fingerprint
from alphacut.pipeline.remove import Predictor, predict_probability

log = logging.getLogger(__name__)

# Bump whenever preprocessing, the output transform or predict_probability change what a map
# holds for the same pixels: older entries then simply stop being found.
PIPELINE_VERSION = 1

_MAGIC = b"alphacut-mask\x00v1"
# magic, key (hex sha256), dtype (numpy str), height, width, payload length, sha256 of the map.
_HEADER = struct.Struct("<16s64s8sIIQ32s")
_ZLIB_LEVEL = 1  # level 6 is 4-6x slower for 8% smaller entries
_SUFFIX = ".mask"
# A temporary file this old was left by a killed process; a live write takes milliseconds.
_STALE_TEMP_SECONDS = 3600.0


@dataclass(frozen=True)
class CacheStats:
    hits: int  # lookups answered by this process's cache object
    misses: int
    bytes: int  # size of all entries in the store
    entries: int


class MaskCache(Protocol):
    """Where probability maps are kept. ``get`` never raises for a bad or missing entry (it is a
    miss), and ``put`` never raises for a failed write (the result is still right)."""

    def get(self, key: str) -> np.ndarray | None: ...

    def put(self, key: str, probability: np.ndarray) -> None: ...

    def stats(self) -> CacheStats: ...


class LookupCounter:
    """The hits and misses of one cache object's lookups (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def count(self, probability: np.ndarray | None) -> np.ndarray | None:
        """Count a lookup's result (None is a miss) and return it."""
        with self._lock:
            if probability is None:
                self.misses += 1
            else:
                self.hits += 1
        return probability


class CorruptEntry(ValueError):
    """An entry that is truncated, damaged or not for the key asked."""


def encode_entry(key: str, probability: np.ndarray) -> bytes:
    """One self-checking entry: a header (shape, dtype, checksum) and the lossless map."""
    if probability.ndim != 2:
        raise ValueError(f"a probability map is 2-D, not {probability.shape}")
    array = np.ascontiguousarray(probability)
    raw = array.data.cast("B")
    # Byte-shuffling (all first bytes of the floats, then all second bytes...) groups the
    # slowly varying exponent bytes: zlib then compresses a map to ~30% instead of ~45%.
    shuffled = np.ascontiguousarray(array.view(np.uint8).reshape(-1, array.itemsize).T)
    payload = zlib.compress(shuffled.data.cast("B"), _ZLIB_LEVEL)
    header = _HEADER.pack(
        _MAGIC,
        key.encode("ascii"),
        array.dtype.str.encode("ascii"),
        array.shape[0],
        array.shape[1],
        len(payload),
        hashlib.sha256(raw).digest(),
    )
    return header + payload


def decode_entry(key: str, data: bytes) -> np.ndarray:
    """The map stored by ``encode_entry``; CorruptEntry unless every check passes."""
    if len(data) < _HEADER.size:
        raise CorruptEntry("shorter than its header")
    magic, stored_key, dtype_name, height, width, length, checksum = _HEADER.unpack_from(data)
    if magic != _MAGIC or stored_key != key.encode("ascii"):
        raise CorruptEntry("not an entry for this key")
    if len(data) != _HEADER.size + length:
        raise CorruptEntry("truncated")
    try:
        dtype = np.dtype(dtype_name.rstrip(b"\x00").decode("ascii"))
        shuffled = zlib.decompress(data[_HEADER.size :])
    except (TypeError, ValueError, UnicodeDecodeError, zlib.error) as exc:
        raise CorruptEntry(str(exc)) from None
    if len(shuffled) != height * width * dtype.itemsize:
        raise CorruptEntry("size does not match its shape")
    planes = np.frombuffer(shuffled, np.uint8).reshape(dtype.itemsize, height * width)
    array: np.ndarray = np.ascontiguousarray(planes.T).view(dtype).reshape(height, width)
    if hashlib.sha256(array.data.cast("B")).digest() != checksum:
        raise CorruptEntry("checksum mismatch")
    return array


def model_identity(spec: ModelSpec, weights: Path, providers: list[str]) -> str:
    """Everything about the model and runtime that can change its output for the same pixels.

    The weights are identified by size and mtime, not hashed: hashing 170 MB at every start
    would cost a third of a second; replacing the file changes its mtime.
    """
    stat = weights.stat()
    # The spec's fields that shape the output; not its description, licence or origin, which
    # may change (a release adding a field) without changing a map.
    shaping = {
        "name": spec.name,
        "input_size": spec.input_size,
        "mean": spec.mean,
        "std": spec.std,
        "output_transform": spec.output_transform,
    }
    parts = [
        json.dumps(shaping, sort_keys=True),
        f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}",
        f"ort {ort.__version__}",
        f"pillow {PIL.__version__}",
        ",".join(providers),
        cpu_fingerprint(),
    ]
    return "|".join(parts)


def mask_cache_key(identity: str, quality: str, rgb: np.ndarray) -> str:
    """The key of the map that the model ``identity`` gives for these RGB pixels (HxWx3)."""
    digest = hashlib.sha256(
        f"v{PIPELINE_VERSION}|{identity}|{quality}|{rgb.shape}|{rgb.dtype.str}|".encode()
    )
    # hashlib releases the GIL on large buffers: other requests keep running meanwhile.
    digest.update(np.ascontiguousarray(rgb).data.cast("B"))
    return digest.hexdigest()


class DiskMaskCache:
    """Entries as files in one folder, at most ``max_bytes`` in all, least recently used out.

    Safe with many threads and processes sharing the folder: entries are written to a
    temporary file and renamed into place (a reader sees a whole entry or none), a read bumps
    the file's mtime (the LRU clock, as atime is often not kept), and eviction tolerates files
    that another process deleted first.
    """

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.lookups = LookupCounter()
        self._write_failed = False

    def _path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.folder / f"{key}{_SUFFIX}"

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
            probability = decode_entry(key, data)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("cannot read the mask cache entry %s: %s", path, exc)
            probability = None
        except CorruptEntry as exc:
            log.warning("mask cache entry %s is damaged (%s); treating it as a miss", key, exc)
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # a read-only store: the entry stays a miss
            probability = None
        if probability is not None:
            try:
                os.utime(path)  # now the most recently used
            except OSError:
                pass  # evicted meanwhile: the map read is still whole and right
        return self.lookups.count(probability)

    def put(self, key: str, probability: np.ndarray) -> None:
        path = self._path(key)
        data = encode_entry(key, probability)
        if len(data) > self.max_bytes:
            return
        temp_name = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=self.folder)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(temp_name, path)
            temp_name = None
            self._evict()
        except OSError as exc:
            if not self._write_failed:  # once: a full disk would otherwise log every request
                log.warning("cannot write the mask cache in %s: %s", self.folder, exc)
                self._write_failed = True
        finally:
            if temp_name is not None:
                Path(temp_name).unlink(missing_ok=True)

    def stats(self) -> CacheStats:
        entries = self._scan()
        hits, misses = self.lookups.hits, self.lookups.misses
        return CacheStats(hits, misses, sum(size for _, size, _ in entries), len(entries))

    def _scan(self) -> list[tuple[int, int, Path]]:
        """(mtime_ns, size, path) of every entry; removes temporary files left by dead writers."""
        entries: list[tuple[int, int, Path]] = []
        try:
            listing = list(os.scandir(self.folder))
        except FileNotFoundError:
            return entries
        now = time.time()
        for item in listing:
            try:
                stat = item.stat()
            except FileNotFoundError:
                continue  # deleted by another process since the listing
            if item.name.endswith(_SUFFIX):
                entries.append((stat.st_mtime_ns, stat.st_size, Path(item.path)))
            elif item.name.endswith(".tmp") and now - stat.st_mtime > _STALE_TEMP_SECONDS:
                Path(item.path).unlink(missing_ok=True)
        return entries

    def _evict(self) -> None:
        """Delete least recently used entries until the folder fits in ``max_bytes``.

        Every put scans the folder (a few hundred entries at the default size: about a
        millisecond, next to seconds of inference), so entries written by other processes
        count too.
        """
        entries = self._scan()
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda entry: (entry[0], entry[2].name)):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


def open_mask_cache(folder: Path, max_bytes: int) -> MaskCache | None:
    """The on-disk cache in ``folder``, or None when ``max_bytes`` is 0 (caching off)."""
    return DiskMaskCache(folder, max_bytes) if max_bytes > 0 else None


class WriteBehindCache:
    """A ``MaskCache`` whose writes happen on one background thread: encoding an entry (~27 ms
    for a 1024^2 map) and writing it (a file, or an S3 PUT of ~1.2 MB) leave the request's
    path. A map waiting to be written is served from memory, so a follow-up request right after
    still finds it; beyond ``max_pending`` waiting maps a put is dropped (a later request
    computes the map again: a cache may forget, never answer wrongly)."""

    def __init__(self, cache: MaskCache, max_pending: int = 4) -> None:
        self.cache = cache
        self.max_pending = max_pending
        self._pending: dict[str, np.ndarray] = {}
        self._pending_hits = 0
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="alphacut-mask-cache")

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            waiting = self._pending.get(key)
            if waiting is not None:
                self._pending_hits += 1
                return waiting.copy()  # callers may change their map in place
        return self.cache.get(key)

    def put(self, key: str, probability: np.ndarray) -> None:
        with self._lock:
            if key in self._pending or len(self._pending) >= self.max_pending:
                return
            # A copy: the caller goes on with its map and may change it in place.
            self._pending[key] = probability.copy()
        self._writer.submit(self._write, key)

    def _write(self, key: str) -> None:
        try:
            self.cache.put(key, self._pending[key])  # never raises (MaskCache's contract)
        finally:
            with self._lock:
                del self._pending[key]

    def flush(self) -> None:
        """Wait until every map put so far is written (the writer takes them in order)."""
        self._writer.submit(lambda: None).result()

    def stats(self) -> CacheStats:
        self.flush()  # the figures then include every entry put so far
        inner = self.cache.stats()
        with self._lock:
            hits = inner.hits + self._pending_hits
        return CacheStats(hits, inner.misses, inner.bytes, inner.entries)


class _Flight:
    """One map being computed, and the requests for the same key that wait for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.waiters = 0
        self.result: np.ndarray | None = None  # a copy for the waiters; None if it failed


class CachedProbability:
    """A ``ProbabilitySource``: the map from ``cache`` when this model has already seen these
    pixels at this mask quality, otherwise from the model (and then kept).

    Requests for a key whose map is being computed wait for it instead of running the model
    again (a client's retry after a timeout, or the cutout and its mask asked for at once).
    """

    def __init__(self, cache: MaskCache, predict: Predictor, identity: str) -> None:
        self.cache = cache
        self.predict = predict
        self.identity = identity
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()

    def __call__(self, rgb_image: Image.Image, rgb: np.ndarray, quality: str) -> np.ndarray:
        key = mask_cache_key(self.identity, quality, rgb)
        while True:
            with self._lock:
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    leading = True
                else:
                    flight.waiters += 1
                    leading = False
            if leading:
                return self._lead(key, flight, rgb_image, quality)
            flight.done.wait()
            if flight.result is not None:
                # From the cache where it kept the map (a hit in its figures), else the run's.
                kept = self.cache.get(key)
                return kept if kept is not None else flight.result.copy()
            # The run failed (its own caller got the error): one of the waiting requests runs
            # the model again, the others wait for that run.

    def _lead(self, key: str, flight: _Flight, rgb_image: Image.Image, quality: str) -> np.ndarray:
        probability = None
        try:
            probability = self.cache.get(key)
            if probability is None:
                probability = predict_probability(rgb_image, self.predict, quality)
                self.cache.put(key, probability)
            return probability
        finally:
            try:
                with self._lock:
                    del self._flights[key]  # later requests start a flight of their own
                    waiting = flight.waiters
                if waiting and probability is not None:
                    flight.result = probability.copy()  # the caller may change its map
            finally:
                flight.done.set()  # whatever happened: no request waits for ever
