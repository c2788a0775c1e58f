"""Per-owner request and pixel counters in the job database, shared by every server on it.

Fixed one-minute windows: one row per owner and minute since the epoch. A request is counted
with a single conditional UPSERT (``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` under the limit,
``RETURNING`` the new totals), so concurrent requests on any number of processes never push a
window past its limits. On SQLite the statement runs in a ``BEGIN IMMEDIATE`` transaction, on
PostgreSQL the conflicting row's lock serialises it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from alphacut.jobs.database import WRITE
from alphacut.jobs.schema import rate_windows

__all__ = ["WINDOW_SECONDS", "RateCounter", "WindowUsage"]

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class WindowUsage:
    """What an owner has used in the current window, and when (epoch seconds) it ends."""

    requests: int
    pixels: int
    resets_at: float

    def seconds_left(self, now: float) -> int:
        """Whole seconds until the window ends, at least 1 (a Retry-After value)."""
        return max(1, math.ceil(self.resets_at - now))


class RateCounter:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._pruned_minute = -1  # the minute this process last removed old windows

    def usage(self, owner: str, now: float | None = None) -> WindowUsage:
        now = time.time() if now is None else now
        with self.engine.connect() as connection:
            return self._usage(connection, owner, int(now // WINDOW_SECONDS))

    def try_count(
        self,
        owner: str,
        pixels: int,
        max_requests: int | None,
        max_pixels: int | None,
        now: float | None = None,
    ) -> tuple[bool, WindowUsage]:
        """Count one request of ``pixels`` if the window stays within both limits (None: no
        limit). Returns whether it was counted and the window's usage after the attempt."""
        now = time.time() if now is None else now
        minute = int(now // WINDOW_SECONDS)
        table = rate_windows
        within = [
            condition
            for condition in (
                table.c.requests + 1 <= max_requests if max_requests is not None else None,
                table.c.pixels + pixels <= max_pixels if max_pixels is not None else None,
            )
            if condition is not None
        ]
        upsert = (
            self._insert(table)
            .values(owner=owner, minute=minute, requests=1, pixels=pixels)
            .on_conflict_do_update(
                index_elements=[table.c.owner, table.c.minute],
                set_={"requests": table.c.requests + 1, "pixels": table.c.pixels + pixels},
                where=sa.and_(sa.true(), *within),
            )
            .returning(table.c.requests, table.c.pixels)
        )
        with self.engine.connect() as connection:
            connection.execution_options(**WRITE)
            with connection.begin():
                counted = connection.execute(upsert).first()
                if self._pruned_minute != minute:
                    # Old windows are never read again; the first count of each minute in a
                    # process removes them.
                    connection.execute(table.delete().where(table.c.minute < minute - 1))
                    self._pruned_minute = minute
                if counted is None:
                    return False, self._usage(connection, owner, minute)
        resets_at = float((minute + 1) * WINDOW_SECONDS)
        return True, WindowUsage(int(counted.requests), int(counted.pixels), resets_at)

    @staticmethod
    def _usage(connection: Connection, owner: str, minute: int) -> WindowUsage:
        row = connection.execute(
            sa.select(rate_windows.c.requests, rate_windows.c.pixels).where(
                rate_windows.c.owner == owner, rate_windows.c.minute == minute
            )
        ).first()
        resets_at = float((minute + 1) * WINDOW_SECONDS)
        if row is None:
            return WindowUsage(0, 0, resets_at)
        return WindowUsage(int(row.requests), int(row.pixels), resets_at)
