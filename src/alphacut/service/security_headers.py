"""Security headers on every answer: the web page holds an API key field, so it must not be
framed, leak its URL or run scripts from anywhere but this server."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The page runs only its own script and stylesheet and calls the API on this server (or on
# ALPHACUT_PUBLIC_URL, where its output links point); it previews the image URL a user types,
# from anywhere (an image cannot run code), and blob:/data: images.
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src * data: blob:; "
    "connect-src 'self'{extra}; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Swagger UI (/docs) starts itself with an inline script and inline styles.
_DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# JSON answers and output files: nothing to run, nothing to embed them in.
_API_CSP = "default-src 'none'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'"


class SecurityHeaders:
    def __init__(self, app: ASGIApp, public_url: str = "") -> None:
        self.app = app
        extra = f" {public_url}" if public_url else ""
        self.page_csp = _PAGE_CSP.format(extra=extra)

    def _policy(self, path: str) -> str:
        if path == "/" or path.startswith("/ui/"):
            return self.page_csp
        if path == "/docs" or path.startswith("/docs-assets/"):
            return _DOCS_CSP
        return _API_CSP

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self._policy(scope.get("path", ""))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", policy)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        await self.app(scope, receive, send_with_headers)
