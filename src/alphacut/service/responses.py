"""Response bodies, shaped exactly like the hosted API's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alphacut.jobs.store import FAILED, SUCCESS, Job

# The URL of one of a job's outputs, from its path relative to the outputs.
OutputLink = Callable[[Job, str], str]

PROCESSING_MESSAGE = (
    "Request processing in background, you can fetch the result using fetch_result."
)
PROCESSING_TIP = (
    'Your image is processing in the background; POST {"key": ...} to fetch_result, '
    "or wait for the webhook if you set one."
)


def proxy_link(job: Job, relative: str) -> str:
    """The output served by the API node at /outputs/ (the default)."""
    return f"{job.request['base_url']}/outputs/{relative}"


def output_urls(job: Job, relatives: list[str], link: OutputLink = proxy_link) -> list[str]:
    return [link(job, relative) for relative in relatives]


def future_links(job: Job, link: OutputLink = proxy_link) -> list[str]:
    name = job.request["file_name"]
    if job.request["base64"]:
        name = name.rsplit(".", 1)[0] + ".base64"
    return output_urls(job, [f"temp/{name}" if job.request["temp"] else name], link)


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


def processing_body(
    job: Job, eta: float, fetch_url: str, link: OutputLink = proxy_link
) -> dict[str, Any]:
    return {
        "status": "processing",
        "id": job.id,
        "eta": round(eta, 1),
        "message": PROCESSING_MESSAGE,
        "messege": PROCESSING_MESSAGE,
        "tip": PROCESSING_TIP,
        "fetch_result": fetch_url,
        "future_links": future_links(job, link),
        "output": [],
        "meta": job.request["meta"],
    }


def failed_body(job: Job) -> dict[str, Any]:
    return {"status": "failed", "id": job.id, "message": job.error or "processing failed"}


def fetch_body(job: Job, eta: float, link: OutputLink = proxy_link) -> dict[str, Any]:
    if job.status == SUCCESS:
        body = success_body(job, link)
    elif job.status == FAILED:
        body = failed_body(job)
    else:
        body = {
            "status": "processing",
            "id": job.id,
            "message": PROCESSING_MESSAGE,
            "eta": round(eta, 1),
            "output": [],
        }
    if job.request.get("webhook"):
        body["webhook_status"] = job.webhook_status or "waiting"
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


NOT_FOUND_BODY: dict[str, Any] = {
    "status": "failed",
    "id": "",
    "message": "Request not found",
    "output": "",
}
