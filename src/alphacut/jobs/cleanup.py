"""Deletion of expired outputs: run by ``alphacut serve`` (embedded) or, in a cluster, once
per cluster by the Celery beat (``alphacut worker --beat``)."""

from __future__ import annotations

import time
from typing import Protocol

from alphacut.jobs.store import JobStore


class OutputDeleter(Protocol):
    def delete_output(self, relative: str) -> None: ...


def delete_expired(store: JobStore, storage: OutputDeleter, now: float | None = None) -> int:
    """Delete expired outputs together with their jobs; returns how many jobs went.

    The row goes first: from then on fetch answers "not found", so no client is ever handed a
    URL whose file is gone. Jobs with a webhook still to deliver are kept (the webhook carries
    the URL). A crash between the two deletes leaks one file, never a dangling URL.
    """
    removed = 0
    for job in store.expired(now or time.time()):
        store.delete(job.id)
        for relative in (job.result or {}).get("outputs", []):
            storage.delete_output(relative)
        removed += 1
    return removed
