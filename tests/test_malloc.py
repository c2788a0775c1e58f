"""glibc malloc tuning: applied on glibc, never over the user's own settings."""

from __future__ import annotations

import platform

import pytest

from alphacut.malloc import tune_malloc


def test_explicit_environment_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert tune_malloc() is False


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt settings exist on glibc only",
)
def test_applies_on_glibc(monkeypatch):
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert tune_malloc() is True
