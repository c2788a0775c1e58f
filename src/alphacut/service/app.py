"""The FastAPI application factory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from alphacut import __version__
from alphacut.config import Settings
from alphacut.engine import Engine
from alphacut.service.errors import install_error_handlers
from alphacut.service.logs import request_id_var
from alphacut.service.routes import router
from alphacut.service.state import ServiceState

STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState.create(settings, engine)
        app.state.service = state
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="alphacut",
        version=__version__,
        description="Background removal and masks, compatible with the hosted "
        "removebg_mask API (POST /api/v5/removebg_mask).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(router)

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        try:
            response = await call_next(request)
        finally:
            request_id_var.reset(token)
        response.headers["X-Request-Id"] = rid
        return response

    if settings.web_ui and (STATIC_DIR / "index.html").is_file():
        app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")

        @app.get("/", include_in_schema=False)
        async def index() -> RedirectResponse:
            return RedirectResponse("/ui/")

    return app
