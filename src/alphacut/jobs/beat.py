"""The beat of a cluster: every ``alphacut worker`` runs one, and one at a time sends the
periodic passes, so that losing any worker loses nothing.

RedBeat keeps the schedule in Redis (under ``{broker prefix}alphacut:beat:``, with each pass's
last run), so a beat that takes over goes on where the last one stopped. Which beat sends is
decided by a Redis lock (``{prefix}alphacut:beat::lock``) that the holder renews at every loop
(``BEAT_LOOP_SECONDS``) and that lapses ``BEAT_LOCK_SECONDS`` after its holder stops; the other
beats try to take it at every loop.

RedBeat's own lock is switched off (``redbeat_lock_key=None``): its beat dies when the lock
was lost or Redis did not answer (sibson/redbeat#230, #285), so a broker outage would leave a
cluster with no beat at all. This scheduler takes the lock itself and, on any Redis error,
tries again at the next loop.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

from redbeat import RedBeatScheduler  # type: ignore[import-untyped]
from redbeat.schedulers import get_redis  # type: ignore[import-untyped]
from redis.exceptions import LockNotOwnedError, RedisError

log = logging.getLogger(__name__)


def lock_key(key_prefix: str) -> str:
    """The lock's key: where RedBeat's own would be, under the cluster's RedBeat prefix."""
    return key_prefix + ":lock"


def holder_token() -> str:
    """The lock's value while held: ``host:pid:random``, the pid being the worker's main
    process (the embedded beat is its child), so an operator sees which worker sends."""
    return f"{socket.gethostname()}:{os.getppid()}:{uuid.uuid4().hex}"


class ClusterScheduler(RedBeatScheduler):  # type: ignore[misc]
    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.cluster_lock = get_redis(app).lock(
            lock_key(app.redbeat_conf.key_prefix), timeout=self.lock_timeout
        )
        self.holding = False
        self.installed = False  # the schedule's entries, written by each new holder
        self.failing = False  # Redis errors are logged once per outage

    def setup_schedule(self) -> None:
        """Nothing at start: a beat that holds no lock touches no entry (see _hold)."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One loop: hold (or try to take) the lock, then, if held, send the due passes.
        Returns the seconds until the next loop."""
        try:
            if not self._hold():
                return float(self.max_interval)
            if not self.installed:
                # The static entries, keeping each one's last run from the previous holder.
                super().setup_schedule()
                self.installed = True
            interval = float(super().tick(*args, **kwargs))
        except RedisError as exc:
            if not self.failing:
                log.warning("beat: the broker does not answer (%s); trying again", exc)
            self.failing = True
            return float(self.max_interval)
        if self.failing:
            log.info("beat: the broker answers again")
        self.failing = False
        return interval

    def _hold(self) -> bool:
        if self.holding:
            try:
                self.cluster_lock.extend(self.lock_timeout, replace_ttl=True)
            except LockNotOwnedError:
                # This beat stalled past the lock's timeout: another one may send by now.
                log.warning("beat: lost the beat lock; this worker no longer sends the passes")
                self.holding = False
        if not self.holding and self.cluster_lock.acquire(blocking=False, token=holder_token()):
            log.info("beat: this worker now sends the cluster's periodic passes")
            self.holding, self.installed = True, False
        return self.holding

    def close(self) -> None:
        """On shutdown, hand the lock over at once rather than after its timeout."""
        if self.holding:
            try:
                self.cluster_lock.release()
            except RedisError:  # LockNotOwnedError included
                pass  # it lapses by itself
            self.holding = False
        super().close()
