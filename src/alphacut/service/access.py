"""Who may call the API, and how much: API keys (bootstrap and managed) and per-key rate limits.

Managed keys (``alphacut keys``) live in the job database and are looked up on each request
through a cache that holds an answer for about a second, so a key created or revoked by the CLI
takes effect on every running server within that time, without a restart. Keys from
``ALPHACUT_API_KEYS`` keep working, with the default limits. With neither, the server is open.
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass

from alphacut.config import Settings
from alphacut.errors import ImageTooLarge, TooManyJobs, Unauthorized
from alphacut.jobs.keys import KeyStore, ManagedKey, owner_id
from alphacut.jobs.ratelimits import RateCounter, WindowUsage

__all__ = ["AccessControl", "Principal", "RateLimited"]

# How long a key lookup (and "are keys required?") is trusted: the time a CLI change takes to
# reach a running server.
CACHE_SECONDS = 1.0
# Bounds the cache's memory under a flood of made-up keys: past it, the cache starts afresh.
CACHE_ENTRIES = 10_000
# A key's last-used time is written at most this often per process (each write is a transaction).
TOUCH_EVERY = 60.0


@dataclass(frozen=True)
class Principal:
    """The caller of one request: the owner of its jobs and the limits that apply to it."""

    owner: str
    key_id: int | None  # the managed key's id; None for a bootstrap key or an open server
    queue_limit: int
    rate_limit: int  # requests per minute, 0 = none
    megapixel_limit: float  # megapixels per minute, 0 = none

    @property
    def max_pixels(self) -> int | None:
        return round(self.megapixel_limit * 1_000_000) if self.megapixel_limit > 0 else None

    @property
    def max_requests(self) -> int | None:
        return self.rate_limit if self.rate_limit > 0 else None

    @property
    def limited(self) -> bool:
        return self.max_requests is not None or self.max_pixels is not None


class RateLimited(TooManyJobs):
    """429 for a key over its per-minute limits; carries the X-RateLimit-* headers."""

    def __init__(self, message: str, retry_after: int, headers: dict[str, str]) -> None:
        super().__init__(message, retry_after)
        self.headers = headers


class AccessControl:
    def __init__(self, settings: Settings, keys: KeyStore, counter: RateCounter) -> None:
        self.settings = settings
        self.keys = keys
        self.counter = counter
        self._lock = threading.Lock()
        self._found: dict[str, tuple[float, ManagedKey | None]] = {}  # by peppered hash
        self._issued: tuple[float, bool] = (-1.0, False)
        self._touched: dict[int, float] = {}

    # --- keys ---------------------------------------------------------------------------

    def keys_required(self) -> bool:
        if self.settings.api_keys:
            return True
        with self._lock:
            checked_at, issued = self._issued
        if time.monotonic() - checked_at > CACHE_SECONDS:
            issued = self.keys.any_issued()
            with self._lock:
                self._issued = (time.monotonic(), issued)
        return issued

    def authenticate(self, key: str) -> Principal:
        """The caller presenting ``key`` ("" for none); Unauthorized (401) for a key that is
        unknown or revoked while keys are required. Runs database queries: call off the loop."""
        if key and self._is_bootstrap(key):
            return self._principal(key, None)
        managed = self._find(key) if key else None
        if managed is not None and not managed.revoked:
            self._touch(managed.id)
            return self._principal(key, managed)
        if self.keys_required():
            raise Unauthorized("invalid or missing API key")
        # An open server: whatever key is sent, the caller is "no key", so made-up keys cannot
        # open fresh rate windows or queues (and get no jobs of their own either).
        return self._principal("", None)

    def _is_bootstrap(self, key: str) -> bool:
        # Every entry is compared, in constant time, so the answer's timing says nothing.
        presented = key.encode()
        matches = [hmac.compare_digest(presented, k.encode()) for k in self.settings.api_keys]
        return any(matches)

    def _find(self, key: str) -> ManagedKey | None:
        digest = self.keys.hash_key(key)
        now = time.monotonic()
        with self._lock:
            cached = self._found.get(digest)
        if cached is not None and now - cached[0] <= CACHE_SECONDS:
            return cached[1]
        found = self.keys.find(key)
        with self._lock:
            if len(self._found) >= CACHE_ENTRIES:
                self._found.clear()
            self._found[digest] = (time.monotonic(), found)
        return found

    def _touch(self, key_id: int) -> None:
        now = time.monotonic()
        with self._lock:
            due = now - self._touched.get(key_id, -TOUCH_EVERY) >= TOUCH_EVERY
            if due:
                self._touched[key_id] = now
        if due:
            self.keys.touch(key_id)

    def _principal(self, key: str, managed: ManagedKey | None) -> Principal:
        settings = self.settings
        # A key's own limit where it has one (0 included: explicitly none), else the setting.
        queue_limit = managed.queue_limit if managed else None
        rate_limit = managed.rate_limit if managed else None
        megapixel_limit = managed.megapixel_limit if managed else None
        return Principal(
            owner=owner_id(key),
            key_id=managed.id if managed else None,
            queue_limit=settings.max_queued_per_key if queue_limit is None else queue_limit,
            rate_limit=settings.rate_limit if rate_limit is None else rate_limit,
            megapixel_limit=(
                settings.megapixel_limit if megapixel_limit is None else megapixel_limit
            ),
        )

    # --- rate limits ----------------------------------------------------------------------

    def check_rate(self, principal: Principal) -> WindowUsage | None:
        """Before any work: 429 if the key's window is already used up. Counts nothing."""
        if not principal.limited:
            return None
        now = time.time()
        usage = self.counter.usage(principal.owner, now)
        self._refuse_if_over(principal, usage, 0, now)
        return usage

    def admit(self, principal: Principal, pixels: int) -> WindowUsage | None:
        """Count an accepted request of ``pixels`` (its image and background, as declared)
        against the key's window, atomically across every server on the database; 429 if it
        does not fit, 413 (counted as a request) if it never could."""
        if not principal.limited:
            return None
        max_pixels = principal.max_pixels
        if max_pixels is not None and pixels > max_pixels:
            self.count_refused(principal)
            raise ImageTooLarge(
                f"the image has {pixels / 1e6:.1f} megapixels, more than this key may send in "
                f"a minute ({principal.megapixel_limit:g}); send a smaller image"
            )
        now = time.time()
        counted, usage = self.counter.try_count(
            principal.owner, pixels, principal.max_requests, max_pixels, now
        )
        if not counted:
            self._refuse_if_over(principal, usage, pixels, now)
            # Over only by this image's pixels after all (the precise test is the UPSERT's).
            raise self._refusal(principal, usage, now, "megapixels")
        return usage

    def count_refused(self, principal: Principal) -> None:
        """Count a request refused for its size against the key's request rate (no pixels),
        so that refusals cost the sender like any request; 429 once the window is full."""
        if principal.max_requests is None:
            return
        now = time.time()
        counted, usage = self.counter.try_count(
            principal.owner, 0, principal.max_requests, None, now
        )
        if not counted:
            raise self._refusal(principal, usage, now, "requests")

    def _refuse_if_over(
        self, principal: Principal, usage: WindowUsage, pixels: int, now: float
    ) -> None:
        """429 if one more request (of ``pixels``; 0: not known yet) would not fit."""
        if principal.max_requests is not None and usage.requests >= principal.max_requests:
            raise self._refusal(principal, usage, now, "requests")
        max_pixels = principal.max_pixels
        if max_pixels is not None:
            over = usage.pixels + pixels > max_pixels if pixels else usage.pixels >= max_pixels
            if over:
                raise self._refusal(principal, usage, now, "megapixels")

    def _refusal(
        self, principal: Principal, usage: WindowUsage, now: float, what: str
    ) -> RateLimited:
        retry_after = usage.seconds_left(now)
        if what == "requests":
            message = f"rate limit: {principal.rate_limit} requests per minute for this key"
        else:
            message = (
                f"rate limit: {principal.megapixel_limit:g} megapixels per minute for this key "
                f"({usage.pixels / 1e6:.1f} used)"
            )
        headers = {"Retry-After": str(retry_after), **self.headers(principal, usage)}
        return RateLimited(f"{message}; retry in {retry_after} s", retry_after, headers)

    @staticmethod
    def headers(principal: Principal, usage: WindowUsage | None) -> dict[str, str]:
        """X-RateLimit-Limit/Remaining/Reset for the request-rate limit (none without one).

        Reset is the Unix time the window ends, as remove.bg and GitHub send it.
        """
        if usage is None or principal.max_requests is None:
            return {}
        return {
            "X-RateLimit-Limit": str(principal.max_requests),
            "X-RateLimit-Remaining": str(max(0, principal.max_requests - usage.requests)),
            "X-RateLimit-Reset": str(int(usage.resets_at)),
        }
