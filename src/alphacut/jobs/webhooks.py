"""Signed webhook delivery with retries.

Each delivery carries ``X-Alphacut-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`` so a
receiver can check that it came from this server and is fresh. Failed deliveries (network error
or non-2xx) are retried with exponential backoff and jitter; every attempt is recorded on the job.
The store queues the first delivery in the same write that ends the job, so none is lost.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alphacut.errors import FetchError
from alphacut.io.fetch import FetchPolicy, post_json
from alphacut.jobs.store import Job, JobStore

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Alphacut-Signature"


def load_or_create_secret(
    configured: str,
    home: Path,
    file_name: str = "webhook_secret",
    setting: str = "ALPHACUT_WEBHOOK_SECRET",
) -> str:
    """The configured secret, or one generated once and kept in ``$ALPHACUT_HOME/file_name``.

    Created atomically (written aside, then linked into place, mode 0600): two processes
    starting together end up with the same secret, and none reads a half-written file.
    """
    if configured:
        return configured
    path = home / file_name
    if path.is_file():
        return path.read_text().strip()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    draft = home / f".{file_name}.{secrets.token_hex(8)}"
    draft.touch(mode=0o600)
    try:
        draft.write_text(secret)
        os.link(draft, path)  # fails if another process created it first: theirs wins
    except FileExistsError:
        return path.read_text().strip()
    finally:
        draft.unlink()
    path.chmod(0o600)
    log.info("generated a secret in %s (set %s to choose)", path, setting)
    return secret


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, tolerance: float = 300.0) -> bool:
    """Receiver-side check (also used by the tests and shown in the README)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def backoff_delay(attempt: int, base: float) -> float:
    """Delay after the ``attempt``-th failure: base * 3^(n-1), +-25% jitter.

    With the default base of 7.5 s and 6 attempts the five waits are about 7.5 s, 22.5 s,
    67.5 s, 202.5 s and 607.5 s: the last attempt comes about 15 minutes after the first.
    The jitter keeps many jobs that failed together from retrying in lockstep.
    """
    return float(base * (3 ** (attempt - 1)) * random.uniform(0.75, 1.25))


class WebhookSender:
    """Delivers due webhooks on a few threads, so one slow receiver cannot hold up the rest."""

    def __init__(
        self,
        store: JobStore,
        secret: str,
        policy: FetchPolicy,
        max_attempts: int = 6,
        backoff_base: float = 7.5,
        timeout: float = 30.0,
        parallel: int = 4,
    ):
        self.store = store
        self.secret = secret
        self.policy = policy
        self.max_attempts = max_attempts
        # Called after each delivery attempt with (job, delivered, final): metrics count them.
        self.attempt_listeners: list[Callable[[Job, bool, bool], None]] = []
        self.backoff_base = backoff_base
        self.timeout = timeout
        self.parallel = parallel
        self._executor = ThreadPoolExecutor(
            max_workers=parallel, thread_name_prefix="alphacut-webhook"
        )
        self._lock = threading.Lock()
        self._inflight = 0

    def deliver_due(self, payload_for: Callable[[Job], dict[str, Any]]) -> int:
        """Start every due delivery that a free thread can take; returns how many started.

        ``payload_for(job)`` builds the JSON body. Only as many jobs are taken as there are
        free threads: a taken job is leased, and a lease must not run out while it waits.
        """
        with self._lock:
            free = self.parallel - self._inflight
        if free <= 0:
            return 0
        # The lease outlasts the attempt's own time limit, so nobody retries it meanwhile.
        jobs = self.store.take_due_webhooks(time.time(), self.timeout + 30.0, free)
        for job in jobs:
            with self._lock:
                self._inflight += 1
            self._executor.submit(self._run, job, payload_for)
        return len(jobs)

    def _run(self, job: Job, payload_for: Callable[[Job], dict[str, Any]]) -> None:
        try:
            self.attempt(job, payload_for(job))
        except Exception:  # the attempt records its own errors; this is a last resort
            log.exception("webhook delivery for job %s crashed", job.id)
        finally:
            with self._lock:
                self._inflight -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def add_attempt_listener(self, listener: Callable[[Job, bool, bool], None]) -> None:
        """``listener(job, delivered, final)`` runs after each delivery attempt."""
        self.attempt_listeners.append(listener)

    def attempt(self, job: Job, payload: dict[str, Any]) -> bool:
        """One delivery; records it on the job and schedules the next try (or gives up)."""
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)}
        number = len(job.webhook_attempts) + 1
        started = time.time()
        record: dict[str, Any] = {"attempt": number, "at": started}
        try:
            status = post_json(job.request["webhook"], body, headers, self.policy, self.timeout)
            record["status_code"] = status
            ok = 200 <= status < 300
        except FetchError as exc:
            record["error"] = exc.message
            ok = False
        except Exception as exc:  # anything else still counts as a failed attempt, recorded
            log.exception("webhook for job %s", job.id)
            record["error"] = f"{type(exc).__name__}: {exc}"
            ok = False
        record["seconds"] = round(time.time() - started, 3)
        if ok:
            self.store.record_webhook(job.id, "delivered", record, None)
        elif number >= self.max_attempts:
            log.warning("webhook for job %s failed after %d attempts", job.id, number)
            self.store.record_webhook(job.id, "failed", record, None)
        else:
            retry_at = time.time() + backoff_delay(number, self.backoff_base)
            self.store.record_webhook(job.id, "pending", record, retry_at)
        for listener in self.attempt_listeners:
            listener(job, ok, number >= self.max_attempts)
        return ok
