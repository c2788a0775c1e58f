"""HTTP routes: removebg_mask (every path clients call), fetch, outputs, health."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from alphacut.errors import AlphacutError, ImageTooLarge, InvalidRequest, TooManyJobs
from alphacut.io.fetch import check_url
from alphacut.io.sources import fetch_policy, read_image_source
from alphacut.jobs.results import success_body
from alphacut.jobs.store import Job, QueueFull
from alphacut.logs import job_id_var
from alphacut.pipeline.decode import declared_size, decode_image
from alphacut.pipeline.encode import FORMATS
from alphacut.service.examples import (
    ERROR_MESSAGES,
    FAILED_EXAMPLE,
    FETCH_PROCESSING_EXAMPLE,
    NOT_FOUND_EXAMPLE,
    PROCESSING_EXAMPLE,
    REQUEST_EXAMPLES,
    SUCCESS_EXAMPLE,
    json_examples,
)
from alphacut.service.metrics import observe_stage
from alphacut.service.outputs import output_response
from alphacut.service.parsing import read_body, validate
from alphacut.service.responses import (
    NOT_FOUND_BODY,
    fetch_body,
    processing_body,
)
from alphacut.service.schemas import (
    ErrorResponse,
    FetchRequest,
    ProcessingResponse,
    RemoveBgRequest,
    SuccessResponse,
)
from alphacut.service.state import ServiceState

log = logging.getLogger(__name__)

router = APIRouter()

REMOVEBG_PATHS = (
    "/api/v5/removebg_mask",
    "/api/v6/image_editing/removebg_mask",
    "/api/v1/image_editing/removebg_mask",
    "/api/v1/enterprise/image_editing/removebg_mask",
)
FETCH_BY_PATH = (
    "/api/v5/fetch/{job_id}",
    "/api/v3/fetch/{job_id}",
    "/api/v6/image_editing/fetch/{job_id}",
    "/api/v1/image_editing/fetch/{job_id}",
    "/api/v1/enterprise/image_editing/fetch/{job_id}",
)
FETCH_BY_BODY = ("/api/v4/dreambooth/fetch", "/api/v1/enterprise/fetch")
# The eta of an accepted job when the store cannot say (it is unreachable): about when a
# fetch is worth trying, like the retry_after of a 503.
FALLBACK_ETA_SECONDS = 5.0

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {
        "model": ErrorResponse,
        "description": text,
        "content": {"application/json": {"example": {"status": "error", "message": message}}},
    }
    for code, (text, message) in ERROR_MESSAGES.items()
}
REMOVEBG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Done (success), or still running (processing: fetch it later)",
        "content": json_examples(success=SUCCESS_EXAMPLE, processing=PROCESSING_EXAMPLE),
    },
    **ERROR_RESPONSES,
}
FETCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The job's state; a job that failed, or is unknown to this key, "
        "answers status failed",
        "content": json_examples(
            fetch_success=SUCCESS_EXAMPLE,
            fetch_processing=FETCH_PROCESSING_EXAMPLE,
            fetch_failed=FAILED_EXAMPLE,
            fetch_not_found=NOT_FOUND_EXAMPLE,
        ),
    },
    401: ERROR_RESPONSES[401],
}


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def _meta(
    req: RemoveBgRequest,
    image_url: str,
    file_name: str,
    seed: int,
    size: tuple[int, int],
    model: str,
    bg_url: str | None,
) -> dict[str, Any]:
    """meta exactly as the hosted API: mixed "0"/"1", "yes"/"no" and boolean types.

    After "temp" come alphacut's additions: every other processing option as the API spells
    it, and "foreground" once the job is done (see responses.success_body).
    """
    hosted = {
        "alpha_matting": "1" if req.alpha_matting else "0",
        "alpha_matting_background_threshold": req.alpha_matting_background_threshold,
        "alpha_matting_erode_size": req.alpha_matting_erode_size,
        "alpha_matting_foreground_threshold": req.alpha_matting_foreground_threshold,
        "base64": "yes" if req.base64 else "no",
        "file_prefix": file_name,
        "image_url": image_url,
        "instant_response": "yes" if req.instant_response else "no",
        "inverse_mask": req.inverse_mask,
        "only_mask": req.only_mask,
        "outdir": "outputs",
        "post_process_mask": "1" if req.post_process_mask else "0",
        "seed": seed,
        "temp": "yes" if req.temp else "no",
    }
    options = req.options().model_dump(mode="json", exclude=set(hosted))
    return {
        **hosted,
        "model": model,
        "width": size[0],
        "height": size[1],
        **options,
        "bg_image": bg_url,
    }


async def _queue_full(state: ServiceState, pending: int) -> TooManyJobs:
    retry = await asyncio.to_thread(state.retry_after, pending)
    return TooManyJobs(f"too many queued jobs for this key ({pending}); retry later", retry)


async def _fetch_background(
    request: Request, req: RemoveBgRequest, state: ServiceState
) -> tuple[bytes, str, int] | None:
    """bg_image's bytes (same SSRF rules as ``image``), what meta reports for it, and the pixels
    it declares, or None without one; a bad one fails the request rather than the job."""
    if req.bg_image is None:
        return None
    try:
        started = time.perf_counter()
        data, url = await asyncio.to_thread(read_image_source, req.bg_image, state.settings)
        observe_stage(request, "fetch", time.perf_counter() - started)
        width, height = await asyncio.to_thread(declared_size, data, state.settings.max_pixels)
    except AlphacutError as exc:
        raise AlphacutError(f"bg_image: {exc.message}", exc.status_code) from exc
    return data, url, width * height


async def _save_background(
    background: tuple[bytes, str, int] | None, state: ServiceState, file_id: str
) -> tuple[str | None, str | None]:
    """Decode bg_image now (a corrupt one fails the request, not the job) and keep it for the
    worker. Returns its storage reference and what meta reports for it."""
    if background is None:
        return None, None
    data, url, _ = background
    try:
        await asyncio.to_thread(decode_image, data, state.settings.max_pixels)
    except AlphacutError as exc:
        raise AlphacutError(f"bg_image: {exc.message}", exc.status_code) from exc
    reference = await asyncio.to_thread(state.storage.save_input, f"{file_id}.bg", data)
    return reference, url


async def _removebg_mask(request: Request, response: Response, state: StateDep) -> dict[str, Any]:
    request.state.api_endpoint = "removebg_mask"  # for the metrics, by body status
    state.check_accepting()  # first: a draining server reads no body
    settings = state.settings
    fields, upload = await read_body(request)
    req: RemoveBgRequest = validate(RemoveBgRequest, fields)
    principal = await asyncio.to_thread(state.authenticate, req.key)
    owner = principal.owner
    # Refused early (nothing counted) when the key's minute is already used up.
    await asyncio.to_thread(state.access.check_rate, principal)
    model = req.model or settings.model
    # Here, or on the cluster's live workers (an API node needs no model file).
    await asyncio.to_thread(state.pool.check_model, model)
    if req.webhook:
        await asyncio.to_thread(check_url, req.webhook, fetch_policy(settings), label="webhook")
    pending = await asyncio.to_thread(state.store.pending_for_owner, owner)
    if pending >= principal.queue_limit:
        raise await _queue_full(state, pending)
    if upload is not None:
        data, image_url = upload, "upload"
    else:
        started = time.perf_counter()
        data, image_url = await asyncio.to_thread(read_image_source, req.image, settings)
        if image_url != "data-uri":
            observe_stage(request, "fetch", time.perf_counter() - started)
    # The sizes the image and bg_image declare, read from their headers: what the request
    # costs is counted, or refused, before either is decoded.
    try:
        width, height = await asyncio.to_thread(declared_size, data, settings.max_pixels)
    except ImageTooLarge:
        await asyncio.to_thread(state.access.count_refused, principal)
        raise
    background = await _fetch_background(request, req, state)
    pixels = width * height + (background[2] if background else 0)
    # Accepted: counted against the key's per-minute requests and megapixels (or 429).
    usage = await asyncio.to_thread(state.access.admit, principal, pixels)
    response.headers.update(state.access.headers(principal, usage))
    started = time.perf_counter()
    image = await asyncio.to_thread(decode_image, data, settings.max_pixels)
    observe_stage(request, "decode", time.perf_counter() - started)
    file_id = str(uuid.uuid4())
    file_name = f"{file_id}.{FORMATS[req.format][0]}"
    bg_path, bg_url = await _save_background(background, state, file_id)
    # A path on this machine, or an object in the bucket a worker elsewhere reads.
    input_path = await asyncio.to_thread(state.storage.save_input, f"{file_id}.input", data)
    seed = req.seed if req.seed is not None else random.randint(0, 2**32 - 1)
    # A cluster's cpu or gpu queue, kept with the job so a re-send goes to the same one.
    queue = await asyncio.to_thread(state.pool.queue_for, model)
    job_request = {
        # bg_image as meta reports it: the worker reads the stored copy, never the URL again.
        "options": req.options().model_copy(update={"bg_image": bg_url}).model_dump(mode="json"),
        "model": model,
        "file_name": file_name,
        "input_path": input_path,
        "temp": req.temp,
        "base64": req.base64,
        "webhook": req.webhook,
        "track_id": req.track_id,
        "base_url": state.base_url(request),
        "bg_image_path": bg_path,
        "meta": _meta(req, image_url, file_name, seed, image.size, model, bg_url),
        "queue": queue,
    }
    state.pool.offer_decoded(input_path, image)
    try:
        job = await asyncio.to_thread(state.store.create, owner, job_request, principal.queue_limit)
    except QueueFull as full:  # the early check above passed, but others got there first
        state.pool.discard_decoded(input_path)
        for stored in (input_path, bg_path):
            if stored is not None:
                await asyncio.to_thread(state.storage.delete_input, stored)
        raise await _queue_full(state, full.pending) from None
    except BaseException:
        state.pool.discard_decoded(input_path)
        raise
    request.state.job_id = job.id  # for the access log
    job_id_var.set(job.id)  # and any other log line of this request
    await state.pool.submit(job)
    # instant_response always answers "processing", even if a fast job is already done, so
    # such clients see one flow; the job is in the store either way, so a client that goes
    # away during the wait (or a cancelled handler) loses nothing: fetch still finds it.
    done = None if req.instant_response else await _wait_or_none(state, job.id)
    if done is None:
        eta = await _eta_or_fallback(state, job.id)
        fetch = f"{job_request['base_url']}/api/v5/fetch/{job.id}"
        request.state.api_status = "processing"
        return processing_body(job, eta, fetch, state.output_link)
    if done.status == "failed":
        raise AlphacutError(done.error or "processing failed", done.error_status or 500)
    request.state.api_status = "success"
    return success_body(done, state.output_link)


async def _wait_or_none(state: ServiceState, job_id: int) -> Job | None:
    """The accepted job once done within the sync wait, else None: also when the store or
    the broker fails meanwhile. The job is in the store and runs, so the client is answered
    "processing" with its fetch link, never an error it would retry as a new job."""
    try:
        return await state.pool.wait_for(job_id, state.settings.sync_wait)
    except Exception as exc:
        log.warning("job %s: cannot wait for it (%s); answering processing", job_id, exc)
        return None


async def _eta_or_fallback(state: ServiceState, job_id: int) -> float:
    try:
        return await asyncio.to_thread(state.eta_for, job_id)
    except Exception as exc:  # an accepted job: a store failure is no reason for an error
        log.warning("job %s: no eta from the store (%s)", job_id, exc)
        return FALLBACK_ETA_SECONDS


for _path in REMOVEBG_PATHS:
    router.add_api_route(
        _path,
        _removebg_mask,
        methods=["POST"],
        tags=["removebg_mask"],
        summary="Remove the background of an image and create its mask",
        response_model=SuccessResponse | ProcessingResponse,
        responses=REMOVEBG_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": RemoveBgRequest.model_json_schema(),
                        "examples": REQUEST_EXAMPLES,
                    },
                    "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
                    "multipart/form-data": {"schema": {"type": "object"}},
                },
            }
        },
        include_in_schema=_path == REMOVEBG_PATHS[0] or _path == REMOVEBG_PATHS[1],
    )


async def _fetch(state: ServiceState, key: str, raw_id: Any) -> dict[str, Any]:
    owner = await asyncio.to_thread(state.owner_of, key)
    try:
        job_id = int(str(raw_id).strip())
    except (TypeError, ValueError):
        return NOT_FOUND_BODY
    if not 0 < job_id < 2**63:  # SQLite integers are 64-bit; a bigger one would raise
        return NOT_FOUND_BODY
    job = await asyncio.to_thread(state.store.get, job_id)
    if job is None or job.owner != owner:
        return NOT_FOUND_BODY  # another key's job is "not found", not "forbidden": no oracle
    eta = 0.0 if job.done else await asyncio.to_thread(state.eta_for, job.id)
    return fetch_body(job, eta, state.output_link)


async def _fetch_by_path(job_id: str, request: Request, state: StateDep) -> dict[str, Any]:
    request.state.api_endpoint = "fetch"
    fields, _ = await read_body(request) if await request.body() else ({}, None)
    req: FetchRequest = validate(FetchRequest, fields)
    body = await _fetch(state, req.key, job_id)
    request.state.api_status = body["status"]
    return body


async def _fetch_by_body(request: Request, state: StateDep) -> dict[str, Any]:
    request.state.api_endpoint = "fetch"
    fields, _ = await read_body(request)
    req: FetchRequest = validate(FetchRequest, fields)
    if req.request_id is None:
        raise InvalidRequest("request_id is required", 400)
    body = await _fetch(state, req.key, req.request_id)
    request.state.api_status = body["status"]
    return body


_FETCH_BODY_DOC = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": FetchRequest.model_json_schema(),
                "examples": {
                    "by_path": {"summary": "fetch/{id}: the key only", "value": {"key": ""}},
                    "by_body": {
                        "summary": "request_id in the body (dreambooth/enterprise paths)",
                        "value": {"key": "", "request_id": 2},
                    },
                },
            }
        },
    }
}
for _path in FETCH_BY_PATH:
    router.add_api_route(
        _path,
        _fetch_by_path,
        methods=["POST"],
        tags=["fetch"],
        summary="Fetch the result of a queued request",
        response_model=None,  # documented by FETCH_RESPONSES' examples
        responses=FETCH_RESPONSES,
        openapi_extra=_FETCH_BODY_DOC,
        include_in_schema=_path == FETCH_BY_PATH[0],
    )
for _path in FETCH_BY_BODY:
    router.add_api_route(
        _path,
        _fetch_by_body,
        methods=["POST"],
        tags=["fetch"],
        summary="Fetch a result by request_id in the body",
        response_model=None,
        responses=FETCH_RESPONSES,
        openapi_extra=_FETCH_BODY_DOC,
    )


@router.get("/outputs/{relative:path}", tags=["outputs"], summary="Download an output file")
async def get_output(relative: str, state: StateDep) -> Response:
    return await output_response(state.storage, relative)


@router.get(
    "/healthz", tags=["operations"], summary="Liveness: the server answers", response_model=None
)
async def healthz(state: StateDep) -> dict[str, Any]:
    return {"status": "ok", "models": state.engine.loaded_models}


@router.get("/readyz", tags=["operations"], summary="Readiness: model loaded, store reachable")
async def readyz(state: StateDep) -> Response:
    problems = []
    if state.shutting_down:  # so a load balancer sends new work elsewhere
        problems.append("shutting down")
    if not state.settings.broker_url and not state.engine.loaded_models:
        problems.append("model not loaded")  # a cluster's API node loads none: workers do
    problems += await asyncio.to_thread(state.pool.health_problems)
    try:
        await asyncio.to_thread(state.store.count_by_status)
    except Exception as exc:  # any store failure means "not ready"
        problems.append(f"job store unreachable: {exc}")
    try:
        await asyncio.to_thread(state.storage.check_ready)
    except Exception as exc:  # an S3 bucket that does not answer
        problems.append(f"output storage unreachable: {exc}")
    if problems:
        return JSONResponse({"status": "error", "message": "; ".join(problems)}, status_code=503)
    return JSONResponse({"status": "ok"})
