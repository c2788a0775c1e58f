"""A finished job's result as clients see it, without HTTP: the links to its outputs (through
``/outputs/`` on an API node, or presigned S3 URLs), the success body and the webhook payload.

The API nodes answer with these, and the embedded server's webhook loop and the cluster's
``deliver_webhook`` task send them, so every path hands out the same links.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from alphacut.config import Settings
from alphacut.io.storage import Storage
from alphacut.jobs.store import SUCCESS, Job

# The URL of one of a job's outputs, from its path relative to the outputs.
OutputLink = Callable[[Job, str], str]


def proxy_link(job: Job, relative: str) -> str:
    """The output served by the API node at /outputs/ (the default)."""
    return f"{job.request['base_url']}/outputs/{relative}"


def output_link(settings: Settings, storage: Storage) -> OutputLink:
    """How results link to outputs: through /outputs/ on the API node, or presigned."""
    if settings.output_urls != "presigned":
        return proxy_link
    from alphacut.io.s3 import S3Storage

    if not isinstance(storage, S3Storage):  # Settings refuses presigned without s3://
        raise TypeError("presigned output URLs need S3 storage")
    s3 = storage

    def presigned_link(job: Job, relative: str) -> str:
        # Valid while the output is kept: until the job expires (a finished job knows when),
        # else for its TTL from now; "kept for ever" gets S3's maximum, 7 days.
        if job.expires_at is not None:
            lifetime = job.expires_at - time.time()
        else:
            ttl = settings.temp_ttl if job.request["temp"] else settings.output_ttl
            lifetime = ttl if ttl > 0 else float("inf")
        return s3.presigned_url(relative, lifetime)

    return presigned_link


def output_urls(job: Job, relatives: list[str], link: OutputLink = proxy_link) -> list[str]:
    return [link(job, relative) for relative in relatives]


def success_body(job: Job, link: OutputLink = proxy_link) -> dict[str, Any]:
    assert job.result is not None
    body: dict[str, Any] = {
        "status": "success",
        "generationTime": float(job.generation_time or 0.0),
        "id": job.id,
        "output": output_urls(job, job.result["outputs"], link),
        "meta": job.request["meta"],
    }
    if "foreground" in job.result:  # known only once the mask exists; null: no subject found
        body["meta"] = {**body["meta"], "foreground": job.result["foreground"]}
    return body


def webhook_payload(job: Job, link: OutputLink = proxy_link) -> dict[str, Any]:
    track_id = job.request.get("track_id")
    if job.status == SUCCESS:
        body = success_body(job, link)
        return {
            "status": "success",
            "id": job.id,
            "output": body["output"],
            "generationTime": body["generationTime"],
            "track_id": track_id,
            "meta": body["meta"],
        }
    return {
        "status": "failed",
        "id": job.id,
        "message": job.error or "processing failed",
        "track_id": track_id,
    }
