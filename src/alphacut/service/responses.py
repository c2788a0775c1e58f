"""Response bodies, shaped exactly like the hosted API's."""

from __future__ import annotations

from typing import Any

from alphacut.jobs.store import FAILED, SUCCESS, Job

PROCESSING_MESSAGE = (
    "Request processing in background, you can fetch the result using fetch_result."
)
PROCESSING_TIP = (
    'Your image is processing in the background; POST {"key": ...} to fetch_result, '
    "or wait for the webhook if you set one."
)


def output_urls(job: Job, relatives: list[str]) -> list[str]:
    base = job.request["base_url"]
    return [f"{base}/outputs/{relative}" for relative in relatives]


def future_links(job: Job) -> list[str]:
    name = job.request["file_name"]
    if job.request["base64"]:
        name = name.rsplit(".", 1)[0] + ".base64"
    return output_urls(job, [f"temp/{name}" if job.request["temp"] else name])


def success_body(job: Job) -> dict[str, Any]:
    assert job.result is not None
    body: dict[str, Any] = {
        "status": "success",
        "generationTime": float(job.generation_time or 0.0),
        "id": job.id,
        "output": output_urls(job, job.result["outputs"]),
        "meta": job.request["meta"],
    }
    if "foreground" in job.result:  # known only once the mask exists; null: no subject found
        body["meta"] = {**body["meta"], "foreground": job.result["foreground"]}
    return body


def processing_body(job: Job, eta: float, fetch_url: str) -> dict[str, Any]:
    return {
        "status": "processing",
        "id": job.id,
        "eta": round(eta, 1),
        "message": PROCESSING_MESSAGE,
        "messege": PROCESSING_MESSAGE,
        "tip": PROCESSING_TIP,
        "fetch_result": fetch_url,
        "future_links": future_links(job),
        "output": [],
        "meta": job.request["meta"],
    }


def failed_body(job: Job) -> dict[str, Any]:
    return {"status": "failed", "id": job.id, "message": job.error or "processing failed"}


def fetch_body(job: Job, eta: float) -> dict[str, Any]:
    if job.status == SUCCESS:
        body = success_body(job)
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


def webhook_payload(job: Job) -> dict[str, Any]:
    track_id = job.request.get("track_id")
    if job.status == SUCCESS:
        body = success_body(job)
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
