"""Every error answers ``{"status": "error", "message": ...}``; never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from alphacut.errors import (
    AlphacutError,
    DatabaseUnavailable,
    ShuttingDown,
    StorageUnavailable,
    TooManyJobs,
)

log = logging.getLogger(__name__)

# Seconds a client is told to wait when the job database does not answer: a restart of
# PostgreSQL takes a few.
DATABASE_RETRY_AFTER = 5


def error_response(
    request: Request,
    status_code: int,
    message: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"status": "error", "message": message, **(extra or {})}
    # Some clients of the hosted API only read the body; they can ask for HTTP 200 always.
    if request.app.state.settings.errors_http_200:
        status_code = 200
    return JSONResponse(body, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AlphacutError)
    async def _alphacut_error(request: Request, exc: AlphacutError) -> JSONResponse:
        # A refusal that waiting cures (429, a draining server, a service that is down) says
        # how long to wait, in the body and in Retry-After.
        if isinstance(exc, TooManyJobs | ShuttingDown | StorageUnavailable):
            return error_response(
                request,
                exc.status_code,
                exc.message,
                {"retry_after": exc.retry_after},
                # A rate limit's refusal adds its X-RateLimit-* headers.
                {"Retry-After": str(exc.retry_after), **getattr(exc, "headers", {})},
            )
        # The body limits' errors close the connection: the rest of the body is never read.
        headers: dict[str, str] | None = getattr(exc, "headers", None)
        return error_response(request, exc.status_code, exc.message, headers=headers)

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    async def _database_down(request: Request, exc: sa.exc.DBAPIError) -> JSONResponse:
        # A database that is down is the client's cue to retry, not a bug: 503, no traceback.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        log.warning("job database unavailable on %s: %s", request.url.path, reason)
        unavailable = DatabaseUnavailable(
            "the job database is unavailable; retry shortly", DATABASE_RETRY_AFTER
        )
        return await _alphacut_error(request, unavailable)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error_response(request, 422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(
            request, exc.status_code, message, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, 500, "internal server error")
