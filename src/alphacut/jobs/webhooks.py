"""Signed webhook delivery with retries.

Each delivery carries ``X-Alphacut-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`` so a
receiver can check that it came from this server and is fresh. Failed deliveries (network error
or non-2xx) are retried with exponential backoff and jitter; every attempt is recorded on the job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from pathlib import Path
from typing import Any

from alphacut.errors import FetchError
from alphacut.io.fetch import FetchPolicy, post_json
from alphacut.jobs.store import Job, SQLiteJobStore

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Alphacut-Signature"


def load_or_create_secret(configured: str, home: Path) -> str:
    """The configured secret, or one generated once and kept in ``$ALPHACUT_HOME``."""
    if configured:
        return configured
    path = home / "webhook_secret"
    if path.is_file():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    path.write_text(secret)
    path.chmod(0o600)
    log.info("generated a webhook signing secret in %s (set ALPHACUT_WEBHOOK_SECRET to choose)",
             path)
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

    With base 10 s and 6 attempts the retries span about 15 minutes.
    """
    return base * (3 ** (attempt - 1)) * random.uniform(0.75, 1.25)


class WebhookSender:
    def __init__(self, store: SQLiteJobStore, secret: str, policy: FetchPolicy,
                 max_attempts: int = 6, backoff_base: float = 10.0, timeout: float = 30.0):
        self.store = store
        self.secret = secret
        self.policy = policy
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.timeout = timeout

    def schedule(self, job: Job) -> None:
        """Called when a job ends: queue its first delivery now."""
        if job.request.get("webhook") and job.webhook_status is None:
            self.store.record_webhook(job.id, "pending", None, time.time())

    def deliver_due(self, payload_for: Any) -> int:
        """Attempt every due delivery once; ``payload_for(job)`` builds the JSON body."""
        delivered = 0
        for job in self.store.due_webhooks(time.time()):
            self.attempt(job, payload_for(job))
            delivered += 1
        return delivered

    def attempt(self, job: Job, payload: dict[str, Any]) -> bool:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)}
        number = len(job.webhook_attempts) + 1
        record: dict[str, Any] = {"attempt": number, "at": time.time()}
        try:
            status = post_json(job.request["webhook"], body, headers, self.policy, self.timeout)
            record["status_code"] = status
            ok = 200 <= status < 300
        except FetchError as exc:
            record["error"] = exc.message
            ok = False
        if ok:
            self.store.record_webhook(job.id, "delivered", record, None)
        elif number >= self.max_attempts:
            log.warning("webhook for job %s failed after %d attempts", job.id, number)
            self.store.record_webhook(job.id, "failed", record, None)
        else:
            retry_at = time.time() + backoff_delay(number, self.backoff_base)
            self.store.record_webhook(job.id, "pending", record, retry_at)
        return ok
