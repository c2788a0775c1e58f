"""Limits on what one client can make the server hold: body size and time, slow headers,
connections.

``RequestLimits`` (ASGI middleware) counts the body as it arrives, before anything parses it
or checks the key, and gives it a deadline; ``uvicorn_options`` bounds what happens before
the application sees a request (header time, header size, idle and total connections).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from alphacut.config import Settings
from alphacut.errors import AlphacutError

# Form fields besides the image (key, options, a webhook URL) fit easily in this.
BODY_SLACK_BYTES = 1024 * 1024
# h11's own default: the request line and all headers together.
MAX_HEADER_BYTES = 16 * 1024


_CLOSE = {"Connection": "close"}


class BodyTooLarge(AlphacutError):
    status_code = 413
    headers = _CLOSE


class BodyTimeout(AlphacutError):
    status_code = 408
    headers = _CLOSE


class UnsupportedEncoding(AlphacutError):
    status_code = 415


class ClientDisconnected(AlphacutError):
    """The client went away before its body arrived: nobody reads the answer, but the access
    log and the metrics count it as 499 (nginx's "client closed request"), not as a 500."""

    status_code = 499
    headers = _CLOSE


def max_body_bytes(settings: Settings) -> int:
    """``ALPHACUT_MAX_BODY_BYTES``, or by default room for the largest image as base64."""
    if settings.max_body_bytes:
        return settings.max_body_bytes
    return settings.max_download_bytes * 4 // 3 + BODY_SLACK_BYTES


class RequestLimits:
    """Refuses compressed bodies (415) and bodies over the cap (413, by Content-Length at
    once, else when the count passes it), and bounds the time to receive the body (408)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.limit = max_body_bytes(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            # A decoded size cap would have to inflate as it streams; nobody needs to send it.
            await self._refuse(
                scope,
                receive,
                send,
                UnsupportedEncoding(
                    f"content-encoding {encoding!r} is not supported; send the body uncompressed"
                ),
            )
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send, self._too_large())
            return
        await self.app(scope, self._counting(receive), send)

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(f"the request body is larger than the {self.limit} byte limit")

    def _counting(self, receive: Receive) -> Receive:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.body_timeout
        received, complete = 0, False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body: disconnect notices, no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise BodyTimeout(
                    f"the request body did not arrive within {self.settings.body_timeout:g} s"
                ) from None
            if message["type"] == "http.disconnect":
                complete = True
                raise ClientDisconnected("the client disconnected while sending the body")
            received += len(message.get("body", b""))
            if received > self.limit:
                raise self._too_large()
            complete = not message.get("more_body", False)
            return message

        return limited_receive

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, error: AlphacutError
    ) -> None:
        status = 200 if self.settings.errors_http_200 else error.status_code
        # Connection: close, since the unread body would otherwise be taken as the next request.
        response = JSONResponse(
            {"status": "error", "message": error.message},
            status_code=status,
            headers=_CLOSE,
        )
        await response(scope, receive, send)


class _HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers.

    uvicorn itself waits forever for the first request's headers, and its keep-alive timer
    restarts on every byte, so a client dripping a byte at a time could hold a connection
    indefinitely. The deadline starts when the connection opens and after each response.
    """

    header_timeout = 10.0
    _header_deadline: asyncio.TimerHandle | None = None
    _waiting_cycle: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._disarm_if_headers_arrived()

    def on_response_complete(self) -> None:
        # Armed first: handling a pipelined request inside may start the next cycle at once.
        self._arm_header_deadline()
        super().on_response_complete()
        self._disarm_if_headers_arrived()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm()
        self._waiting_cycle = self.cycle
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_if_headers_arrived(self) -> None:
        if self.cycle is not self._waiting_cycle:  # a new request's headers were parsed
            self._disarm()

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` bounding slow clients."""
    protocol = type(
        "HeaderDeadlineProtocol",
        (_HeaderDeadlineProtocol,),
        {"header_timeout": settings.header_timeout},
    )
    return {
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }
