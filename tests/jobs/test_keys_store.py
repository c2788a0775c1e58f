"""Managed keys and rate-limit counters in the job database, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from alphacut.jobs import keys as keys_module
from alphacut.jobs.keys import KeyStore, load_pepper, owner_id
from alphacut.jobs.ratelimits import RateCounter
from alphacut.jobs.schema import api_keys

PEPPER = "test-pepper"


@pytest.fixture
def key_store(store):
    return KeyStore(store.engine, PEPPER)


def test_only_a_peppered_hash_is_stored(key_store, store):
    record, key = key_store.create("ci", queue_limit=3, rate_limit=60, megapixel_limit=12.5)
    assert key.startswith("ac_") and len(key) > 40
    with store.engine.connect() as connection:
        rows = [dict(row) for row in connection.execute(api_keys.select()).mappings()]
    assert len(rows) == 1
    stored = " ".join(str(value) for value in rows[0].values())
    assert key not in stored and key[3:] not in stored
    assert rows[0]["key_hash"] == hmac.new(PEPPER.encode(), key.encode(), "sha256").hexdigest()
    # The plain sha256 (the jobs' owner id) is not a way in either.
    assert hashlib.sha256(key.encode()).hexdigest() not in stored
    assert (record.name, record.queue_limit, record.rate_limit, record.megapixel_limit) == (
        "ci",
        3,
        60,
        12.5,
    )


def test_find_revoke_and_list(key_store):
    assert not key_store.any_issued()
    first, first_key = key_store.create("first")
    second, _ = key_store.create()
    assert key_store.any_issued()
    assert key_store.find(first_key) == first
    assert key_store.find(first_key + "x") is None
    assert KeyStore(key_store.engine, "another-pepper").find(first_key) is None
    revoked = key_store.revoke(first.id)
    assert revoked is not None and revoked.revoked
    assert key_store.revoke(first.id).revoked_at == revoked.revoked_at  # the first time stays
    assert key_store.find(first_key).revoked
    assert key_store.revoke(999) is None
    key_store.touch(second.id, now=1234.0)
    listed = key_store.list()
    assert [key.id for key in listed] == [first.id, second.id]
    assert listed[1].last_used_at == 1234.0 and not listed[1].revoked


def test_lookup_compares_in_constant_time(key_store, monkeypatch):
    _, key = key_store.create()
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    assert key_store.find(key) is not None
    assert compared == [(key_store.hash_key(key), key_store.hash_key(key))]


def test_owner_id_is_unchanged():
    # Jobs created before managed keys are owned by this: it must never change.
    assert owner_id("k1") == hashlib.sha256(b"k1").hexdigest()[:32]
    assert owner_id("") == ""


def test_pepper_file_is_created_once_and_private(tmp_path):
    home = tmp_path / "home"
    pepper = load_pepper("", home)
    path = home / "key_pepper"
    assert path.read_text() == pepper and len(pepper) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_pepper("", home) == pepper
    assert load_pepper("configured", home) == "configured"
    assert [p.name for p in home.iterdir()] == ["key_pepper"]  # no draft left behind


def test_counter_holds_both_limits(store):
    counter = RateCounter(store.engine)
    now = 600.0 * 60 + 1  # the start of a minute
    assert counter.try_count("o", 100, 3, 250, now)[0]
    assert counter.try_count("o", 100, 3, 250, now)[0]
    counted, usage = counter.try_count("o", 100, 3, 250, now)  # 300 pixels > 250
    assert not counted and (usage.requests, usage.pixels) == (2, 200)
    assert counter.try_count("o", 50, 3, 250, now)[0]  # fits exactly
    counted, usage = counter.try_count("o", 0, 3, None, now)  # 4th request > 3
    assert not counted and usage.requests == 3 and usage.resets_at == 601 * 60
    assert counter.try_count("other", 100, 3, 250, now)[0]  # owners are counted apart
    # The next minute starts afresh, and the first count in it removes old windows.
    later = now + 120
    assert counter.try_count("o", 100, 3, 250, later)[0]
    assert counter.usage("o", now).requests == 0  # pruned
    assert counter.usage("o", later).requests == 1


# Each process counts as fast as it can from a common start time; prints how many it got.
COUNTER = """
import sys, time
from alphacut.jobs.database import create_database_engine
from alphacut.jobs.ratelimits import RateCounter
url, start_at, now = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
counter = RateCounter(create_database_engine(url))
time.sleep(max(0.0, start_at - time.time()))
print(sum(counter.try_count("shared", 10, 25, 2000, now)[0] for _ in range(40)))
"""


def test_counters_hold_across_processes(store, database_url):
    """Four processes, 160 attempts at a limit of 25 requests (and 200 images of 10 pixels):
    exactly the limit is counted, on SQLite (BEGIN IMMEDIATE) and PostgreSQL (UPSERT)."""
    start_at, now = str(time.time() + 3), str(1000.0 * 60)
    counters = [
        subprocess.Popen(
            [sys.executable, "-c", COUNTER, database_url, start_at, now],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    counted = []
    for process in counters:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        counted.append(json.loads(out))
    assert sum(counted) == 25
    usage = RateCounter(store.engine).usage("shared", float(now))
    assert (usage.requests, usage.pixels) == (25, 250)
    with store.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM rate_windows")).scalar() == 1
