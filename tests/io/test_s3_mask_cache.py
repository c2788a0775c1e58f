"""The shared mask cache in the real SeaweedFS S3 bucket of scripts/services.sh (no mocks):
lossless entries, damaged objects as misses, eviction oldest first within the byte bound,
concurrent use, an unreachable store as a miss, and which cache each storage gets."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from alphacut.config import Settings
from alphacut.engine import Engine
from alphacut.io.s3 import S3Storage
from alphacut.io.s3_mask_cache import CACHE_DIR, S3MaskCache, storage_mask_cache
from alphacut.io.storage import open_storage
from alphacut.models.mask_cache import DiskMaskCache, WriteBehindCache, encode_entry
from alphacut.pipeline.options import make_options
from tests.conftest import free_port, subject_image
from tests.models.test_mask_cache import _entry_size, _key, _map
from tests.s3helpers import FaultyS3Proxy, S3Service, s3_settings


@pytest.fixture
def storage(s3_service: S3Service, s3_prefix: str, tmp_path) -> S3Storage:
    opened = open_storage(s3_settings(Settings(home=tmp_path), s3_service, s3_prefix))
    assert isinstance(opened, S3Storage)
    return opened


def _object(prefix: str, seed: int) -> str:
    return f"{prefix}/{CACHE_DIR}/{_key(seed)}.mask"


def _cached(service: S3Service, prefix: str) -> list[str]:
    return sorted(service.keys(f"{prefix}/{CACHE_DIR}/"))


def test_entries_round_trip_bit_for_bit(storage, s3_service, s3_prefix) -> None:
    cache = S3MaskCache(storage, 10**9)
    assert cache.get(_key(1)) is None
    cache.put(_key(1), _map(1))
    assert _cached(s3_service, s3_prefix) == [_object(s3_prefix, 1)]
    got = S3MaskCache(storage, 10**9).get(_key(1))  # another process's view
    assert got is not None and got.dtype == np.float32
    assert got.tobytes() == _map(1).tobytes()
    assert cache.get(_key(1)) is not None
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (1, 1)
    assert (stats.bytes, stats.entries) == (_entry_size(1), 1)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "foreign", "empty"])
def test_a_damaged_object_is_a_miss_and_is_deleted(storage, s3_service, s3_prefix, damage) -> None:
    cache = S3MaskCache(storage, 10**9)
    cache.put(_key(2), _map(2))
    client, name = s3_service.client(), _object(s3_prefix, 2)
    data = client.get_object(Bucket=s3_service.bucket, Key=name)["Body"].read()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data = data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
    elif damage == "foreign":
        data = encode_entry(_key(3), _map(2))  # a whole entry, but for another key
    else:
        data = b""
    client.put_object(Bucket=s3_service.bucket, Key=name, Body=data)
    assert cache.get(_key(2)) is None
    assert _cached(s3_service, s3_prefix) == []
    assert cache.stats().misses == 1 and cache.stats().hits == 0


def test_the_oldest_entries_go_first_within_the_byte_bound(storage, s3_service, s3_prefix) -> None:
    cache = S3MaskCache(storage, int(2.5 * _entry_size()), trim_every=1)
    for seed in range(4):
        if seed:
            time.sleep(1.1)  # LastModified has a resolution of one second
        cache.put(_key(seed), _map(seed))
    assert _cached(s3_service, s3_prefix) == sorted(_object(s3_prefix, s) for s in (2, 3))
    assert cache.get(_key(0)) is None and cache.get(_key(3)) is not None
    assert cache.stats().entries == 2


def test_the_running_estimate_keeps_the_bound_without_listing_every_put(
    storage, s3_service, s3_prefix
) -> None:
    size = _entry_size()
    cache = S3MaskCache(storage, int(4.5 * size), trim_every=1000)
    listings = 0
    original = cache._list

    def counting_list():  # type: ignore[no-untyped-def]
        nonlocal listings
        listings += 1
        return original()

    cache._list = counting_list  # type: ignore[method-assign]
    for seed in range(12):
        cache.put(_key(seed), _map(seed))
        assert len(_cached(s3_service, s3_prefix)) <= 5  # 4 entries, and one put since
    assert len(_cached(s3_service, s3_prefix)) <= 4
    assert listings < 12
    # An entry larger than the whole cache is not stored (it would evict everything). Its own
    # size: entries differ by a few bytes, and one that fits would be stored and trimmed only
    # if its LastModified second ties with older ones.
    S3MaskCache(storage, _entry_size(20) - 1).put(_key(20), _map(20))
    assert _object(s3_prefix, 20) not in _cached(s3_service, s3_prefix)


def test_threads_share_one_cache_safely(storage, s3_service, s3_prefix) -> None:
    cache = S3MaskCache(storage, 3 * _entry_size(), trim_every=2)
    problems: list[str] = []

    def hammer(worker: int) -> None:
        for i in range(12):
            seed = (i * 3 + worker) % 6
            cache.put(_key(seed), _map(seed))
            other = (seed + 1) % 6
            got = cache.get(_key(other))
            if got is not None and got.tobytes() != _map(other).tobytes():
                problems.append(f"worker {worker}: wrong map for entry {other}")

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    cache.trim()
    assert len(_cached(s3_service, s3_prefix)) <= 3
    stats = cache.stats()
    assert stats.hits + stats.misses == 4 * 12


def test_an_unreachable_store_is_a_miss_and_a_put_is_a_no_op(
    s3_service, s3_prefix, tmp_path, caplog
) -> None:
    settings = s3_settings(Settings(home=tmp_path), s3_service, s3_prefix)
    closed = open_storage(
        settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    )
    assert isinstance(closed, S3Storage)
    cache = S3MaskCache(closed, 10**9)
    with caplog.at_level(logging.WARNING):
        cache.put(_key(4), _map(4))  # no exception
        assert cache.get(_key(4)) is None
        stats = cache.stats()
    assert (stats.hits, stats.misses, stats.bytes) == (0, 1, 0)
    assert "cannot write the mask cache" in caplog.text
    assert "cannot read the mask cache" in caplog.text

    # Connections cut mid-request, as a network fault would.
    with FaultyS3Proxy(s3_service.endpoint, rb"^(GET|PUT) /[^ ]*/_cache/") as proxy:
        faulty = open_storage(settings.model_copy(update={"s3_endpoint_url": proxy.endpoint}))
        assert isinstance(faulty, S3Storage)
        cache = S3MaskCache(faulty, 10**9)
        cache.put(_key(5), _map(5))
        assert cache.get(_key(5)) is None
        assert proxy.cuts >= 2
    assert _cached(s3_service, s3_prefix) == []


def test_the_cache_follows_the_storage(s3_service, s3_prefix, tmp_path, tiny_settings) -> None:
    local = Settings(home=tmp_path)
    on_disk = storage_mask_cache(local, open_storage(local))
    # Servers and workers write behind their requests, into the cache that goes with the storage.
    assert isinstance(on_disk, WriteBehindCache) and isinstance(on_disk.cache, DiskMaskCache)
    remote = s3_settings(local, s3_service, s3_prefix)
    in_bucket = storage_mask_cache(remote, open_storage(remote))
    assert isinstance(in_bucket, WriteBehindCache) and isinstance(in_bucket.cache, S3MaskCache)
    off = remote.model_copy(update={"cache_bytes": 0})
    assert storage_mask_cache(off, open_storage(off)) is None

    # An engine given the S3 cache keeps its maps in the bucket, not under its home folder.
    settings = s3_settings(tiny_settings, s3_service, s3_prefix)
    engine = Engine(
        settings, warm_up=False, mask_cache=storage_mask_cache(settings, open_storage(settings))
    )
    try:
        image = subject_image()[0]
        first = engine.remove(image, make_options(only_mask=True)).output
        assert isinstance(engine.mask_cache, WriteBehindCache)
        engine.mask_cache.flush()
        assert len(_cached(s3_service, s3_prefix)) == 1
        again = Engine(
            settings, warm_up=False, mask_cache=storage_mask_cache(settings, open_storage(settings))
        )
        try:
            assert (
                again.remove(image, make_options(only_mask=True)).output.tobytes()
                == first.tobytes()
            )
            assert again.mask_cache is not None and again.mask_cache.stats().hits == 1
        finally:
            again.close()
        assert not (settings.home / "cache" / "masks").exists()
    finally:
        engine.close()
