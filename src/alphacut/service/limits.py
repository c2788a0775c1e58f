"""Limits on what one client can make the server hold: body size and time, slow headers,
connections.

``RequestLimits`` (ASGI middleware) counts the body as it arrives, before anything parses it
or checks the key, and gives it a deadline; ``uvicorn_options`` bounds what happens before
the application sees a request (header time, header size, idle connections) and counts the
connections and requests in progress, whose excess ``ConnectionLimit`` answers in JSON.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

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
# Set (True) in the scope of a request that arrived over ALPHACUT_MAX_CONNECTIONS.
OVER_CONNECTION_LIMIT = "alphacut.over_connection_limit"
# Set (the size) in the scope of a request whose request line and headers exceed
# MAX_HEADER_BYTES: h11 bounds only what it buffers between reads, so headers that arrive in
# one read (a single 120 KiB write) passed.
HEADERS_TOO_LARGE = "alphacut.headers_too_large"
# Seconds a client over the connection limit is told to wait: requests in progress turn over
# quickly, and idle keep-alive connections close within ALPHACUT_KEEP_ALIVE_TIMEOUT.
CONNECTION_LIMIT_RETRY_AFTER = 1


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


class HeadersTooLarge(AlphacutError):
    status_code = 431
    headers = _CLOSE


class HostNotAllowed(AlphacutError):
    status_code = 400


class TooManyConnections(AlphacutError):
    """ALPHACUT_MAX_CONNECTIONS reached: 503 with ``retry_after``, and the connection closes
    (as uvicorn's own limit did), which frees one."""

    status_code = 503
    retry_after = CONNECTION_LIMIT_RETRY_AFTER
    headers = {**_CLOSE, "Retry-After": str(CONNECTION_LIMIT_RETRY_AFTER)}


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
            await refuse(
                self.settings,
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
            await refuse(self.settings, scope, receive, send, self._too_large())
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


async def refuse(
    settings: Settings, scope: Scope, receive: Receive, send: Send, error: AlphacutError
) -> None:
    """Answer ``error`` as the API's JSON error, before the application has read the body."""
    status = 200 if settings.errors_http_200 else error.status_code
    body: dict[str, Any] = {"status": "error", "message": error.message}
    retry_after: int | None = getattr(error, "retry_after", None)
    if retry_after is not None:
        body["retry_after"] = retry_after
    # Connection: close, since the unread body would otherwise be taken as the next request.
    headers = {**_CLOSE, **getattr(error, "headers", {})}
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


class ConnectionLimit:
    """Answers a request that arrived over ALPHACUT_MAX_CONNECTIONS (marked by the protocol
    from ``uvicorn_options``) with the API's JSON 503 instead of uvicorn's plain-text one, and
    one whose headers are over MAX_HEADER_BYTES with a JSON 431, and one for a Host not in
    ALPHACUT_ALLOWED_HOSTS with a JSON 400."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get(HEADERS_TOO_LARGE):
            size = scope[HEADERS_TOO_LARGE]
            error: AlphacutError = HeadersTooLarge(
                f"the request line and headers take {size} bytes; the limit is {MAX_HEADER_BYTES}"
            )
            await refuse(self.settings, scope, receive, send, error)
            return
        if scope["type"] == "http" and not host_allowed(scope, self.settings.allowed_hosts):
            error = HostNotAllowed(
                "this server does not answer to that Host (ALPHACUT_ALLOWED_HOSTS)"
            )
            await refuse(self.settings, scope, receive, send, error)
            return
        if scope["type"] == "http" and scope.get(OVER_CONNECTION_LIMIT):
            limit = self.settings.max_connections
            error = TooManyConnections(
                f"the server is at its limit of {limit} connections or requests in progress "
                f"(ALPHACUT_MAX_CONNECTIONS); retry in {CONNECTION_LIMIT_RETRY_AFTER} s"
            )
            await refuse(self.settings, scope, receive, send, error)
            return
        await self.app(scope, receive, send)


class _LimitedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers, and the count of
    connections and requests in progress for ALPHACUT_MAX_CONNECTIONS.

    uvicorn itself waits forever for the first request's headers, and its keep-alive timer
    restarts on every byte, so a client dripping a byte at a time could hold a connection
    indefinitely. The deadline starts when the connection opens and after each response.

    The connection limit is uvicorn's ``limit_concurrency`` check, made at the same moment
    (when a request's headers are parsed, its task just created), but instead of answering
    in plain text it marks the request, which ``ConnectionLimit`` answers in JSON.
    """

    header_timeout = 10.0
    max_connections = 1000
    _header_deadline: asyncio.TimerHandle | None = None
    _waiting_cycle: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._check_new_request()

    def on_response_complete(self) -> None:
        # Armed first: handling a pipelined request inside may start the next cycle at once.
        self._arm_header_deadline()
        super().on_response_complete()
        self._check_new_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm()
        self._waiting_cycle = self.cycle
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _check_new_request(self) -> None:
        # Each event handling parses at most one request's headers on a connection (h11
        # pauses the next pipelined one until this one's answer is complete).
        if self.cycle is self._waiting_cycle:
            return
        self._waiting_cycle = self.cycle  # a new request's headers were parsed
        self._disarm()
        size = header_bytes(cast(Scope, self.cycle.scope))
        if size > MAX_HEADER_BYTES:
            self.cycle.scope[HEADERS_TOO_LARGE] = size  # type: ignore[literal-required]
        # uvicorn's own test (h11_impl.handle_events) made just before the request's task was
        # added: this connection counts, the request's own task does not.
        if (
            len(self.connections) >= self.max_connections
            or len(self.tasks) - 1 >= self.max_connections
        ):
            self.cycle.scope[OVER_CONNECTION_LIMIT] = True  # type: ignore[literal-required]
            self.logger.warning("Exceeded ALPHACUT_MAX_CONNECTIONS (%d).", self.max_connections)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


# Health checks come from orchestrators by the pod's or container's address.
_HOST_FREE_PATHS = frozenset({"/healthz", "/readyz"})


def host_allowed(scope: Scope, allowed: tuple[str, ...]) -> bool:
    """Whether the request's Host (port dropped) matches ``allowed``; always, when empty."""
    if not allowed or scope.get("path") in _HOST_FREE_PATHS:
        return True
    host = Headers(scope=scope).get("host", "").strip().lower()
    if host.startswith("["):  # [::1]:7000
        host = host[: host.find("]") + 1]
    else:
        host = host.rsplit(":", 1)[0]
    for pattern in allowed:
        pattern = pattern.lower()
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def header_bytes(scope: Scope) -> int:
    """The size of a request's request line and headers as sent (give or take a separator)."""
    line = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope["query_string"])
    return line + 12 + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` bounding slow clients."""
    protocol = type(
        "LimitedProtocol",
        (_LimitedProtocol,),
        {"header_timeout": settings.header_timeout, "max_connections": settings.max_connections},
    )
    return {
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        # Off: the protocol above makes uvicorn's check itself, so that ConnectionLimit can
        # answer in JSON; uvicorn's would refuse the same requests first, in plain text.
        "limit_concurrency": None,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }
