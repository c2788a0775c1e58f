"""The network layer of safe fetching: an httpx client pinned to addresses checked beforehand.

``fetch.py`` decides which addresses a URL may reach; this module makes sure the connection
goes exactly there (no second DNS lookup an attacker could answer differently) and that the
whole exchange ends by one deadline, however slowly the server drips its bytes.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx


def norm_host(host: str) -> str:
    """Canonical form used to compare hosts: lowercase, no trailing dot, compressed IP."""
    host = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


class DeadlineStream(httpcore.NetworkStream):
    """Clamps every socket timeout to the fetch-wide deadline.

    httpx timeouts are per operation: without this, a server dripping a byte per second would
    keep a fetch alive forever.
    """

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _budget(self, timeout: float | None, exc: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise exc("total time limit reached")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._budget(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        budget = self._budget(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, budget), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class PinnedBackend(httpcore.NetworkBackend):
    """Connects only to the checked addresses of one checked host:port, never re-resolving."""

    def __init__(
        self,
        host: str,
        port: int,
        addresses: tuple[str, ...],
        deadline: float,
        connect_timeout: float,
    ) -> None:
        self._host, self._port, self._addresses = host, port, addresses
        self._deadline = deadline
        self._connect_timeout = connect_timeout
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if norm_host(host) != norm_host(self._host) or port != self._port:
            # Cannot happen with one client per hop; guards against a future change reusing it.
            raise httpcore.ConnectError("destination does not match the checked URL")
        options = list(socket_options) if socket_options is not None else None
        last_error: Exception = httpcore.ConnectError("no address to connect to")
        for address in self._addresses:  # same fallback order as getaddrinfo gave
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ConnectTimeout("total time limit reached")
            try:
                stream = self._inner.connect_tcp(
                    address,
                    port,
                    timeout=min(self._connect_timeout, left),
                    local_address=local_address,
                    socket_options=options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
                continue
            return DeadlineStream(stream, self._deadline)
        raise last_error


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle is the slow part, and SSLContext is safe to share.
    return httpx.create_ssl_context()


class PinnedTransport(httpx.HTTPTransport):
    def __init__(self, backend: PinnedBackend) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False)
        # httpx has no public hook for a network backend, but HTTPTransport.handle_request only
        # talks to self._pool, so swap in a pool that dials through the pinned backend.
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(), max_connections=1, network_backend=backend
        )


def pinned_client(
    host: str, port: int, addresses: tuple[str, ...], deadline: float, connect_timeout: float
) -> httpx.Client:
    """A one-hop client that dials only ``addresses`` for ``host:port`` (a fresh pin per hop
    means every redirect is checked on its own), within the fetch-wide ``deadline``."""
    left = max(deadline - time.monotonic(), 0.001)
    backend = PinnedBackend(host, port, addresses, deadline, connect_timeout)
    # trust_env=False: an environment proxy would resolve the host itself, undoing the pin.
    return httpx.Client(
        transport=PinnedTransport(backend),
        timeout=httpx.Timeout(left, connect=min(connect_timeout, left)),
        follow_redirects=False,
        trust_env=False,
    )
