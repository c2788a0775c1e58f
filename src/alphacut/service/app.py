"""The FastAPI application factory."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from alphacut import __version__
from alphacut.config import Settings
from alphacut.engine import Engine
from alphacut.logs import request_id_var
from alphacut.service.error_handlers import error_response, install_error_handlers
from alphacut.service.examples import restore_null_examples
from alphacut.service.limits import ConnectionLimit, RequestLimits
from alphacut.service.metrics import Metrics
from alphacut.service.metrics import router as metrics_router
from alphacut.service.routes import router
from alphacut.service.security_headers import SecurityHeaders
from alphacut.service.state import ServiceState

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger(__name__)


class AlphacutAPI(FastAPI):
    def openapi(self) -> dict[str, Any]:
        # FastAPI drops null examples ("webhook": null...); put them back. Built once, cached.
        if self.openapi_schema is None:
            self.openapi_schema = restore_null_examples(super().openapi())
        return self.openapi_schema


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState.create(settings, engine)
        app.state.service = state
        app.state.metrics.bind(state)
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = AlphacutAPI(
        title="alphacut",
        version=__version__,
        description="Background removal and masks, compatible with the hosted "
        "removebg_mask API (POST /api/v5/removebg_mask).",
        lifespan=lifespan,
        docs_url=None,  # served below from local files: many deployments have no internet
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()  # per app: tests build many apps in one process
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(metrics_router)
    # Inside the request-id middleware, so its refusals are logged and counted too.
    app.add_middleware(RequestLimits, settings=settings)
    # Outside the body limits (a request over ALPHACUT_MAX_CONNECTIONS is refused first), and
    # also inside the request-id middleware, so its JSON 503s are logged and counted.
    app.add_middleware(ConnectionLimit, settings=settings)

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        started, status = time.perf_counter(), 500
        try:
            try:
                response = await call_next(request)
            except Exception:
                # Answered here rather than by Starlette's outermost error middleware, so that
                # a 500 carries the request id and the security headers like every answer, is
                # logged once with its id, and keeps the connection open.
                log.exception("unhandled error on %s", request.url.path)
                response = error_response(request, 500, "internal server error")
            status = response.status_code
        finally:
            # Inside the request id's context, so the access-log line carries it.
            app.state.metrics.observe_request(request, status, time.perf_counter() - started)
            request_id_var.reset(token)
        response.headers["X-Request-Id"] = rid
        return response

    app.add_middleware(SecurityHeaders, public_url=settings.public_url)

    _install_local_docs(app)

    if settings.web_ui and (STATIC_DIR / "index.html").is_file():
        # The page lives at / and loads its assets relatively (ui/app.js), so it also works
        # behind a reverse proxy that serves alphacut under a path prefix.
        app.mount("/ui", StaticFiles(directory=STATIC_DIR), name="ui")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app


def _install_local_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package instead of FastAPI's CDN links."""
    import swagger_ui_bundle

    app.mount(
        "/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets"
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="docs-assets/swagger-ui-bundle.js",
            swagger_css_url="docs-assets/swagger-ui.css",
            swagger_favicon_url="docs-assets/favicon-32x32.png",
        )
