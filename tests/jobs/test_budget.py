"""The workers' pixel budget: big images take turns, small ones share, nothing waits forever."""

from __future__ import annotations

import threading
import time

from alphacut.config import load_settings
from alphacut.jobs.budget import PixelBudget


def _run(budget: PixelBudget, pixels: int, log: list[str], name: str, hold: float) -> None:
    with budget.hold(pixels):
        log.append(f"{name}+")
        time.sleep(hold)
        log.append(f"{name}-")


def test_two_big_images_take_turns_and_small_ones_share():
    budget = PixelBudget(100)
    log: list[str] = []
    threads = [
        threading.Thread(target=_run, args=(budget, 60, log, name, 0.2)) for name in ("a", "b")
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert log == ["a+", "a-", "b+", "b-"]  # b waited for a
    assert budget.used == 0

    log.clear()
    threads = [
        threading.Thread(target=_run, args=(budget, 40, log, name, 0.2)) for name in ("c", "d")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert log[:2] in (["c+", "d+"], ["d+", "c+"])  # both fit: they overlapped


def test_an_image_larger_than_the_budget_runs_alone():
    budget = PixelBudget(100)
    log: list[str] = []
    _run(budget, 10_000, log, "huge", 0.0)
    assert log == ["huge+", "huge-"] and budget.used == 0


def test_a_failing_job_gives_its_pixels_back():
    budget = PixelBudget(100)
    try:
        with budget.hold(80):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert budget.used == 0


def test_zero_disables_the_budget_and_the_setting_reads_the_environment(monkeypatch):
    budget = PixelBudget(0)
    with budget.hold(10**9), budget.hold(10**9):
        assert budget.used == 0
    monkeypatch.setenv("ALPHACUT_MAX_INFLIGHT_PIXELS", "5000000")
    assert load_settings().max_inflight_pixels == 5_000_000
