"""The mask cache: lossless entries, LRU eviction within a byte bound, concurrent use, corrupt
entries as misses, and results bit-identical with and without it (tiny and real model)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alphacut.config import Settings
from alphacut.engine import Engine
from alphacut.models.mask_cache import (
    CachedProbability,
    CacheStats,
    CorruptEntry,
    DiskMaskCache,
    WriteBehindCache,
    decode_entry,
    encode_entry,
    mask_cache_key,
    model_identity,
    open_mask_cache,
)
from alphacut.models.registry import BUILTIN_MODELS
from alphacut.pipeline.options import RemoveOptions, make_options
from alphacut.pipeline.remove import remove_background
from tests.conftest import PHOTOS, real_settings, requires_real_model, subject_image

SIDE = 64


def _map(seed: int, side: int = SIDE) -> np.ndarray:
    """A probability-like map with the bits a model gives: saturated areas and soft edges."""
    rng = np.random.default_rng(seed)
    values = rng.random((side, side), dtype=np.float32)
    values[: side // 3] = 0.0
    values[-side // 4 :] = np.float32(1.0) - np.float32(1e-7)
    return values


def _key(seed: int) -> str:
    return mask_cache_key("test-model", "normal", np.full((4, 4, 3), seed, np.uint8))


def _entry_size(seed: int = 0) -> int:
    return len(encode_entry(_key(seed), _map(seed)))


def test_entries_round_trip_bit_for_bit() -> None:
    prob = _map(1)
    prob[5, 5] = np.float32(np.finfo(np.float32).tiny / 4)  # a subnormal survives too
    back = decode_entry(_key(1), encode_entry(_key(1), prob))
    assert back.dtype == np.float32 and back.shape == prob.shape
    assert back.tobytes() == prob.tobytes()
    assert back.flags.writeable  # downstream steps may work in place


def test_key_follows_pixels_model_and_quality() -> None:
    pixels = np.zeros((8, 6, 3), np.uint8)
    key = mask_cache_key("m", "normal", pixels)
    changed = pixels.copy()
    changed[7, 5, 2] = 1
    assert mask_cache_key("m", "normal", pixels.copy()) == key
    assert mask_cache_key("m", "normal", changed) != key
    assert mask_cache_key("m", "high", pixels) != key
    assert mask_cache_key("other", "normal", pixels) != key
    # Same bytes, other shape: a different picture.
    assert mask_cache_key("m", "normal", pixels.reshape(6, 8, 3)) != key


@pytest.mark.parametrize(
    "damage",
    ["empty", "header-only", "truncated", "flipped-payload", "flipped-checksum", "garbage"],
)
def test_a_damaged_entry_is_a_miss_and_is_removed(tmp_path: Path, damage: str) -> None:
    cache = DiskMaskCache(tmp_path, 10**9)
    key = _key(2)
    cache.put(key, _map(2))
    path = tmp_path / f"{key}.mask"
    data = bytearray(path.read_bytes())
    header = len(encode_entry(key, np.zeros((1, 1), np.float32))) - 9  # zlib of 4 zero bytes: 9
    if damage == "empty":
        data = bytearray()
    elif damage == "header-only":
        data = data[:header]
    elif damage == "truncated":
        data = data[: len(data) - 7]
    elif damage == "flipped-payload":
        data[header + len(data[header:]) // 2] ^= 0x10
    elif damage == "flipped-checksum":
        data[header - 1] ^= 0x01
    else:
        data = bytearray(os.urandom(len(data)))
    path.write_bytes(bytes(data))
    assert cache.get(key) is None
    assert not path.exists()
    assert cache.stats().misses == 1 and cache.stats().hits == 0


def test_an_entry_under_another_key_is_refused() -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(_key(4), encode_entry(_key(3), _map(3)))


def test_least_recently_used_goes_first_within_the_byte_bound(tmp_path: Path) -> None:
    size = max(_entry_size(seed) for seed in range(4))
    cache = DiskMaskCache(tmp_path, 3 * size)
    for seed in range(3):
        cache.put(_key(seed), _map(seed))
    # Make the write order unambiguous (file times can be coarse), then use entry 0.
    for seed in range(3):
        os.utime(tmp_path / f"{_key(seed)}.mask", ns=(10**18 + seed, 10**18 + seed))
    assert cache.get(_key(0)) is not None  # now the most recently used
    cache.put(_key(3), _map(3))
    assert cache.get(_key(1)) is None  # the least recently used went
    for seed in (0, 2, 3):
        got = cache.get(_key(seed))
        assert got is not None and got.tobytes() == _map(seed).tobytes()
    stats = cache.stats()
    assert stats.entries == 3 and stats.bytes <= 3 * size


def test_the_byte_bound_holds_for_many_writes(tmp_path: Path) -> None:
    size = _entry_size()
    cache = DiskMaskCache(tmp_path, int(4.5 * size))
    for seed in range(12):
        cache.put(_key(seed), _map(seed))
        assert cache.stats().bytes <= 4.5 * size
    assert cache.stats().entries == 4
    # An entry larger than the whole cache is not stored (it would evict everything).
    DiskMaskCache(tmp_path / "small", 100).put(_key(0), _map(0))
    assert not (tmp_path / "small").exists() or not list((tmp_path / "small").iterdir())


def test_size_zero_turns_the_cache_off(tiny_settings: Settings) -> None:
    assert open_mask_cache(tiny_settings.home / "masks", 0) is None
    settings = tiny_settings.model_copy(update={"cache_bytes": 0})
    engine = Engine(settings, warm_up=False)
    try:
        image, _ = subject_image()
        engine.remove(image)
        engine.remove(image)
        assert engine.mask_cache is None
        assert engine.runner().items_run == 2
        assert not (settings.home / "cache" / "masks").exists()
    finally:
        engine.close()


def test_a_write_that_fails_leaves_the_answer_right(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    cache = DiskMaskCache(blocker / "masks", 10**9)
    cache.put(_key(5), _map(5))  # no exception
    assert cache.get(_key(5)) is None


def _hammer(folder: Path, max_bytes: int, worker: int, rounds: int) -> list[str]:
    """Put and get entries 0..7 in turn; return the problems seen (wrong maps)."""
    cache = DiskMaskCache(folder, max_bytes)
    problems = []
    for i in range(rounds):
        seed = (i * 3 + worker) % 8
        cache.put(_key(seed), _map(seed))
        got = cache.get(_key((seed + 1) % 8))
        if got is not None and got.tobytes() != _map((seed + 1) % 8).tobytes():
            problems.append(f"worker {worker}: wrong map for entry {(seed + 1) % 8}")
    return problems


def test_threads_share_one_cache_safely(tmp_path: Path) -> None:
    max_bytes = 3 * _entry_size()  # small, so that eviction races with reads
    problems: list[str] = []
    threads = [
        threading.Thread(target=lambda w=w: problems.extend(_hammer(tmp_path, max_bytes, w, 40)))
        for w in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    assert DiskMaskCache(tmp_path, max_bytes).stats().bytes <= max_bytes
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_two_processes_share_one_folder_safely(tmp_path: Path) -> None:
    max_bytes = 3 * _entry_size()
    context = multiprocessing.get_context("spawn")  # no fork of a threaded test process
    with context.Pool(2) as pool:
        results = pool.starmap(_hammer, [(tmp_path, max_bytes, w, 60) for w in range(2)])
    assert results == [[], []]
    assert DiskMaskCache(tmp_path, max_bytes).stats().bytes <= max_bytes


OPTION_SETS = [
    {},
    {"only_mask": True},
    {"only_mask": True, "inverse_mask": True},
    {"post_process_mask": True},
    {"alpha_matting": True},
    {"bg_color": "#33cc55"},
    {"crop": True, "crop_margin": "10px"},
    {"mask_quality": "high"},
]


def _uncached(engine: Engine, image: Image.Image, options: RemoveOptions) -> np.ndarray:
    output = remove_background(image, engine.runner().predict, options).output
    return output


def test_cached_results_are_bit_identical_on_the_tiny_model(tiny_settings: Settings) -> None:
    engine = Engine(tiny_settings, warm_up=False)
    try:
        image, _ = subject_image(160, 120)
        assert engine.mask_cache is not None
        for fields in OPTION_SETS:
            options = make_options(**fields)
            first = engine.remove(image, options).output
            runs = engine.runner().items_run
            again = engine.remove(image.copy(), options).output  # another object, same pixels
            assert engine.runner().items_run == runs, f"model ran again for {fields}"
            plain = _uncached(engine, image, options)
            assert first.tobytes() == again.tobytes() == plain.tobytes(), fields
        stats = engine.mask_cache.stats()
        # One miss per mask quality; the other option sets all hit.
        assert (stats.hits, stats.misses) == (2 * len(OPTION_SETS) - 2, 2)
    finally:
        engine.close()


def test_the_cache_survives_a_restart(tiny_settings: Settings) -> None:
    image, _ = subject_image()
    first = Engine(tiny_settings, warm_up=False)
    try:
        expected = first.remove(image).output
    finally:
        first.close()
    second = Engine(tiny_settings, warm_up=False)
    try:
        assert second.remove(image).output.tobytes() == expected.tobytes()
        assert second.runner().items_run == 0
    finally:
        second.close()


def test_replaced_weights_do_not_reuse_entries(tiny_settings: Settings, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(tiny_settings.model_dir, model_dir)
    settings = tiny_settings.model_copy(update={"model_dir": model_dir})
    image, _ = subject_image()
    for round_ in range(2):
        engine = Engine(settings, warm_up=False)
        try:
            engine.remove(image)
            assert engine.runner().items_run == 1, f"round {round_}: the model did not run"
        finally:
            engine.close()
        weights = engine.spec().runtime_path(model_dir)
        stat = weights.stat()
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "new" weights


@pytest.mark.real_model
@requires_real_model
def test_cached_results_are_bit_identical_on_the_real_model(tmp_path: Path) -> None:
    engine = Engine(real_settings(tmp_path), warm_up=False)
    try:
        image = Image.open(PHOTOS / "animal-1.jpg").convert("RGB")
        cold = engine.remove(image, make_options(only_mask=True)).output
        cutout = make_options(bg_color="#ffffff", post_process_mask=True)
        hit = engine.remove(image, cutout).output
        assert engine.runner().items_run == 1
        plain = remove_background(image, engine.runner().predict, cutout).output
        assert hit.tobytes() == plain.tobytes()
        mask_again = engine.remove(image, make_options(only_mask=True)).output
        assert mask_again.tobytes() == cold.tobytes()
        assert engine.runner().items_run == 2  # only the uncached comparison ran the model
    finally:
        engine.close()


class _SlowCache:
    """A ``MaskCache`` whose writes take a while, recording what was written."""

    def __init__(self) -> None:
        self.entries: dict[str, np.ndarray] = {}
        self.release = threading.Event()

    def get(self, key: str) -> np.ndarray | None:
        return self.entries.get(key)

    def put(self, key: str, probability: np.ndarray) -> None:
        self.release.wait(10)
        self.entries[key] = probability

    def stats(self) -> CacheStats:
        return CacheStats(0, 0, sum(p.nbytes for p in self.entries.values()), len(self.entries))


def test_write_behind_serves_a_waiting_map_and_bounds_what_waits() -> None:
    inner = _SlowCache()
    cache = WriteBehindCache(inner, max_pending=2)
    first, second, third = _map(1), _map(2), _map(3)
    cache.put("a", first)
    first[0, 0] = 0.123  # the caller goes on with its map: the cache kept a copy
    assert inner.entries == {}  # not written yet: the request did not wait for it
    waiting = cache.get("a")
    assert waiting is not None and waiting[0, 0] != np.float32(0.123)
    cache.put("b", second)
    cache.put("c", third)  # two maps wait already: this one is dropped, never wrong
    inner.release.set()
    cache.flush()
    assert set(inner.entries) == {"a", "b"}
    assert cache.get("c") is None
    stats = cache.stats()
    assert stats.hits == 1 and stats.entries == 2


def _waiting_source(
    tmp_path: Path, fail_first: bool = False
) -> tuple[CachedProbability, list[int], threading.Event]:
    """A ``CachedProbability`` whose model blocks until released and counts its runs."""
    runs: list[int] = []
    release = threading.Event()

    def predict(image: Image.Image) -> np.ndarray:
        runs.append(1)
        assert release.wait(20)
        if fail_first and len(runs) == 1:
            raise RuntimeError("the model failed")
        return _map(7)

    return CachedProbability(DiskMaskCache(tmp_path, 1 << 20), predict, "test-model"), runs, release


def _ask_together(source: CachedProbability, release: threading.Event, count: int) -> list[object]:
    """``count`` threads ask for one picture's map; released once all but the first wait."""
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    rgb = np.asarray(image)
    answers: list[object] = [None] * count

    def ask(i: int) -> None:
        try:
            answers[i] = source(image, rgb, "normal")
        except RuntimeError as exc:
            answers[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while True:
        with source._lock:
            if any(f.waiters == count - 1 for f in source._flights.values()):
                break
        assert time.monotonic() < deadline, "the requests did not wait for the first"
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(20)
    return answers


def test_requests_for_a_map_being_computed_wait_for_it(tmp_path: Path) -> None:
    """A retry (or the mask asked for with the cutout) while the model runs does not run it
    again: it waits and takes the same map, counted as a hit."""
    source, runs, release = _waiting_source(tmp_path)
    answers = _ask_together(source, release, 4)
    assert len(runs) == 1
    for answer in answers:
        assert isinstance(answer, np.ndarray)
        np.testing.assert_array_equal(answer, _map(7))
    assert len({id(answer) for answer in answers}) == 4  # each caller may change its own
    stats = source.cache.stats()
    assert (stats.hits, stats.misses) == (3, 1)
    assert source._flights == {}


def test_when_the_first_request_fails_the_waiting_ones_run_the_model(tmp_path: Path) -> None:
    source, runs, release = _waiting_source(tmp_path, fail_first=True)
    answers = _ask_together(source, release, 3)
    assert sum(isinstance(answer, RuntimeError) for answer in answers) == 1
    maps = [answer for answer in answers if isinstance(answer, np.ndarray)]
    assert len(maps) == 2
    assert len(runs) == 2  # one of the two waiting requests ran it again, not both
    for answer in maps:
        np.testing.assert_array_equal(answer, _map(7))
    assert source._flights == {}


def test_the_model_identity_follows_what_shapes_the_output(tmp_path: Path) -> None:
    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"weights")
    spec = BUILTIN_MODELS["medium"]
    identity = model_identity(spec, weights, ["CPUExecutionProvider"])
    # A new description or licence text in a release leaves every kept map usable.
    retold = replace(spec, description="other words", licence="other text", built_from="x")
    assert model_identity(retold, weights, ["CPUExecutionProvider"]) == identity
    for changed in (
        replace(spec, input_size=640),
        replace(spec, mean=(0.5, 0.5, 0.5)),
        replace(spec, output_transform="sigmoid"),
    ):
        assert model_identity(changed, weights, ["CPUExecutionProvider"]) != identity
    assert model_identity(spec, weights, ["CUDAExecutionProvider"]) != identity
