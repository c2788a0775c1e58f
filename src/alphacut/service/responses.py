"""Response bodies, shaped exactly like the hosted API's (a job's result, its output links and
the webhook payload are built in ``alphacut.jobs.results``, which the workers use too)."""

from __future__ import annotations

from typing import Any

from alphacut.jobs.results import OutputLink, output_urls, proxy_link, success_body
from alphacut.jobs.store import FAILED, SUCCESS, Job

PROCESSING_MESSAGE = (
    "Request processing in background, you can fetch the result using fetch_result."
)
PROCESSING_TIP = (
    'Your image is processing in the background; POST {"key": ...} to fetch_result, '
    "or wait for the webhook if you set one."
)


def future_links(job: Job, link: OutputLink = proxy_link) -> list[str]:
    name = job.request["file_name"]
    if job.request["base64"]:
        name = name.rsplit(".", 1)[0] + ".base64"
    return output_urls(job, [f"temp/{name}" if job.request["temp"] else name], link)


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


NOT_FOUND_BODY: dict[str, Any] = {
    "status": "failed",
    "id": "",
    "message": "Request not found",
    "output": "",
}
