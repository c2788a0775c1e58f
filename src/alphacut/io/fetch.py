"""Fetch image URLs and POST webhooks without letting API callers reach internal services (SSRF).

For every hop we parse the URL with httpx's own parser (so the URL we check is the URL we
request), resolve the host once, refuse any non-public address unless the host is allow-listed,
and then connect to exactly the addresses we checked through a pinned httpcore network backend.
A DNS answer that changes between check and connect (DNS rebinding) therefore cannot steer us
elsewhere. The request URL itself is left untouched, so the Host header, TLS SNI and certificate
verification all still use the original hostname.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass

import httpx

from alphacut.config import DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_DOWNLOAD_BYTES
from alphacut.errors import FetchError, ImageTooLarge
from alphacut.io.pinned import norm_host, pinned_client

__all__ = ["FetchPolicy", "FetchedResource", "check_url", "fetch_url", "post_json"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Hostnames are restricted to plain DNS characters (IDNs arrive punycoded from httpx); anything
# else (spaces, percent escapes, ...) is a parser-confusion attempt or a typo, not a real host.
_HOSTNAME_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
# NAT64 (RFC 6052) addresses are translated to the IPv4 address in their low 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_USER_AGENT = "alphacut-fetch/1"
# Ask for an uncompressed body: max_bytes then bounds what we actually hold in memory, and a
# small gzip bomb cannot expand inside a single decoded chunk.
_GET_HEADERS = {
    "Accept": "image/*,*/*;q=0.8",
    "Accept-Encoding": "identity",
    "User-Agent": _USER_AGENT,
}


@dataclass(frozen=True)
class FetchPolicy:
    """What a fetch may reach and how much it may cost."""

    # "host" or "host:port" ("[::1]:8080" for IPv6); listed hosts skip the public-address check.
    allowlist: tuple[str, ...] = ()
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    connect_timeout: float = 5.0
    total_timeout: float = DEFAULT_FETCH_TIMEOUT
    max_redirects: int = 5

    def __post_init__(self) -> None:
        # A bad policy is an operator mistake: fail loudly at startup, not per request.
        object.__setattr__(self, "allowlist", tuple(self.allowlist))
        if min(self.max_bytes, self.connect_timeout, self.total_timeout) <= 0:
            raise ValueError("max_bytes and timeouts must be positive")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        _parse_allowlist(self.allowlist)


@dataclass(frozen=True)
class FetchedResource:
    url: str  # final URL after redirects
    content: bytes
    content_type: str | None


@dataclass(frozen=True)
class _Target:
    """A URL that passed the checks, with the exact addresses we are allowed to connect to."""

    url: httpx.URL
    host: str  # ASCII host as httpcore will see it: punycode, no IPv6 brackets
    port: int
    addresses: tuple[str, ...]


@functools.lru_cache(maxsize=64)
def _parse_allowlist(entries: tuple[str, ...]) -> frozenset[tuple[str, int | None]]:
    """Allow-list entries as (normalised host, port or None for any port)."""
    parsed: set[tuple[str, int | None]] = set()
    for entry in entries:
        raw = entry.strip()
        if raw.count(":") > 1 and not raw.startswith("["):
            raw = f"[{raw}]"  # a bare IPv6 address, which cannot carry a port
        try:
            split = urllib.parse.urlsplit(f"//{raw}")
            host, port = split.hostname or "", split.port  # .port raises on a bad port
            host = host if host.isascii() else host.encode("idna").decode("ascii")
        except (ValueError, UnicodeError):
            raise ValueError(f"bad allow-list entry {entry!r}") from None
        if not host or port == 0 or split.path or split.username is not None:
            raise ValueError(f"bad allow-list entry {entry!r}")
        parsed.add((norm_host(host), port))
    return frozenset(parsed)


def _is_public(ip: IPAddress | str) -> bool:
    """True only for globally routable unicast addresses."""
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip)
        except ValueError:
            return False
    if isinstance(ip, ipaddress.IPv6Address):
        # These IPv6 forms carry an IPv4 destination; judge the IPv4 host they really reach.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _is_public(embedded)
        if ip.is_site_local:  # deprecated fec0::/10, not covered by is_private
            return False
    elif ip in _CGNAT:  # shared address space; explicit since is_global varies across versions
        return False
    # is_global alone lets multicast (and NAT64 on some versions) through, so spell it all out.
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


# How an operator allows an internal image or webhook server; names the setting, nothing more
# about the address than the message before it.
_ALLOWLIST_HINT = "; to allow it, add host:port to ALPHACUT_URL_ALLOWLIST (see docs/safety.md)"


def _resolve(host: str, port: int) -> list[str]:
    """All TCP addresses of ``host``. Module-level so tests can substitute a fake resolver."""
    addresses: list[str] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in addresses:
            addresses.append(str(sockaddr[0]))
    return addresses


def _prepare(url: str | httpx.URL, policy: FetchPolicy, label: str) -> _Target:
    """Validate the URL syntactically, resolve it once and check every address."""
    if isinstance(url, str):
        if len(url) > 8192:
            raise FetchError(f"invalid {label}: URL is too long")
        try:
            parsed = httpx.URL(url.strip())
        except (httpx.InvalidURL, ValueError, TypeError):
            raise FetchError(f"invalid {label}: the URL could not be parsed") from None
    else:
        parsed = url
    scheme = parsed.scheme
    if scheme not in _DEFAULT_PORTS:
        if not scheme:
            raise FetchError(f"invalid {label}: it must start with http:// or https://")
        raise FetchError(f"invalid {label}: scheme {scheme!r} is not allowed; use http or https")
    if parsed.userinfo:
        raise FetchError(f"invalid {label}: credentials (user:password@) in URLs are not allowed")
    try:
        host = parsed.raw_host.decode("ascii")
    except UnicodeDecodeError:
        raise FetchError(f"invalid {label}: the host is not valid") from None
    if not host:
        raise FetchError(f"invalid {label}: the URL has no host")
    port = parsed.port or _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise FetchError(f"invalid {label}: port must be between 1 and 65535")

    allow = _parse_allowlist(policy.allowlist)
    allowed = (norm_host(host), None) in allow or (norm_host(host), port) in allow
    if ":" in host and "%" in host:  # IPv6 zone IDs name a local interface, not a server
        raise FetchError(f"invalid {label}: IPv6 zone IDs are not allowed")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
        if ":" in host or len(host) > 253 or not _HOSTNAME_RE.match(host.lower()):
            raise FetchError(f"invalid {label}: the host is not valid") from None
    if literal is not None:
        # An IP literal needs no DNS, so it is refused before anything touches the network.
        if not allowed and not _is_public(literal):
            raise FetchError(f"{label} refused: {host} is not a public address{_ALLOWLIST_HINT}")
        return _Target(parsed, host, port, (str(literal),))

    try:
        addresses = _resolve(host, port)
    except (OSError, UnicodeError):
        addresses = []
    if not addresses:
        raise FetchError(f"{label} refused: could not resolve host {host!r}")
    # Refuse if ANY address is internal: otherwise an attacker publishes one public and one
    # private record and hopes we connect to the second. The address itself is not echoed
    # back, so the API does not leak internal DNS data.
    if not allowed and not all(_is_public(address) for address in addresses):
        raise FetchError(
            f"{label} refused: host {host!r} resolves to a non-public "
            f"(private, loopback, link-local or reserved) address{_ALLOWLIST_HINT}"
        )
    return _Target(parsed, host, port, tuple(addresses))


def _network_error(
    exc: httpx.HTTPError, target: _Target, what: str, limit: float, connect: float, deadline: float
) -> FetchError:
    """Turn an httpx failure into a short, user-facing message (no tracebacks, no IPs)."""
    if isinstance(exc, httpx.TimeoutException):
        # Judge by the clock, not the exception type: any timeout at the deadline is "total".
        if isinstance(exc, httpx.ConnectTimeout) and time.monotonic() < deadline - 0.05:
            return FetchError(f"timed out connecting to {target.host} after {connect:g} s")
        return FetchError(f"timed out {what} after {limit:g} s")
    if isinstance(exc, httpx.ConnectError):
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return FetchError(f"{what} failed: TLS certificate of {target.host} is not valid")
        return FetchError(f"{what} failed: could not connect to {target.host}")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return FetchError(f"{what} failed: {target.host} sent an invalid HTTP response")
    return FetchError(f"{what} failed: network error talking to {target.host}")


def check_url(url: str, policy: FetchPolicy, *, label: str = "URL") -> None:
    """Validate ``url`` (scheme, host, resolved addresses) without connecting to it."""
    _prepare(url, policy, label)


def fetch_url(url: str, policy: FetchPolicy) -> FetchedResource:
    """GET ``url`` following at most ``policy.max_redirects`` redirects, each one re-checked."""
    what, deadline = "fetching image", time.monotonic() + policy.total_timeout
    current: str | httpx.URL = url
    for hop in range(policy.max_redirects + 1):
        # Each hop is checked from scratch: a public URL may redirect to an internal one.
        target = _prepare(current, policy, "image URL" if hop == 0 else "redirect target")
        if time.monotonic() >= deadline:  # DNS can be slow; it counts against the deadline too
            raise FetchError(f"timed out {what} after {policy.total_timeout:g} s")
        try:
            result = _get_once(target, policy, deadline)
        except httpx.InvalidURL:
            # httpx builds the next request for any 3xx, even with redirects off, and its
            # InvalidURL (a Location such as "http:foo") is no HTTPError.
            raise FetchError(
                "could not fetch image: upstream redirected to an invalid URL", 422
            ) from None
        except httpx.HTTPError as exc:
            raise _network_error(
                exc, target, what, policy.total_timeout, policy.connect_timeout, deadline
            ) from None
        if isinstance(result, FetchedResource):
            return result
        current = result
    raise FetchError(
        f"could not fetch image: too many redirects (more than {policy.max_redirects})", 422
    )


def _get_once(target: _Target, policy: FetchPolicy, deadline: float) -> FetchedResource | httpx.URL:
    """One GET: the resource, or the next URL when the upstream redirects."""
    with (
        pinned_client(
            target.host, target.port, target.addresses, deadline, policy.connect_timeout
        ) as client,
        client.stream("GET", target.url, headers=_GET_HEADERS) as response,
    ):
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise FetchError(
                    f"could not fetch image: upstream answered HTTP {status} "
                    "without a Location header",
                    422,
                )
            try:
                return target.url.join(location.strip())
            except (httpx.InvalidURL, ValueError, TypeError):
                raise FetchError(
                    "could not fetch image: upstream redirected to an invalid URL", 422
                ) from None
        if not 200 <= status < 300:
            # 422, not 5xx: the upstream is the client's choice, so its failure is theirs.
            raise FetchError(f"could not fetch image: upstream answered HTTP {status}", 422)
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            # We asked for identity; decoding anyway would let a few hundred bytes of nested
            # gzip grow into gigabytes before the byte limit below could see them.
            raise FetchError(
                f"could not fetch image: upstream sent a compressed body "
                f"(Content-Encoding: {encoding[:40]}) although asked for identity",
                422,
            )
        limit = policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > limit:
            raise ImageTooLarge(f"image is larger than the {limit} byte limit")
        body = bytearray()
        for chunk in response.iter_raw():  # as sent: never decoded, so the limit is on memory
            body += chunk
            if len(body) > limit:  # stop reading now; never buffer more than limit + 1 chunk
                raise ImageTooLarge(f"image is larger than the {limit} byte limit")
        return FetchedResource(str(target.url), bytes(body), response.headers.get("content-type"))


def post_json(
    url: str,
    body: bytes,
    headers: dict[str, str],
    policy: FetchPolicy,
    timeout: float = 30.0,
) -> int:
    """POST ``body`` to ``url`` under the same SSRF rules and return the HTTP status.

    Redirects are not followed (their 3xx status is returned): re-POSTing a webhook to wherever
    the receiver points would be surprising. The response body is never read.
    """
    what, deadline = "delivering webhook", time.monotonic() + timeout
    target = _prepare(url, policy, "webhook URL")
    # httpx.Headers merges case-insensitively, so a caller's "content-type" replaces ours.
    sent = httpx.Headers({"Content-Type": "application/json", "User-Agent": _USER_AGENT})
    sent.update(headers)
    try:
        with (
            pinned_client(
                target.host, target.port, target.addresses, deadline, policy.connect_timeout
            ) as client,
            client.stream("POST", target.url, content=body, headers=sent) as response,
        ):
            return response.status_code
    except httpx.InvalidURL:  # a 3xx whose Location httpx cannot parse (see fetch_url)
        raise FetchError(f"{what} failed: the receiver redirected to an invalid URL") from None
    except httpx.HTTPError as exc:
        raise _network_error(exc, target, what, timeout, policy.connect_timeout, deadline) from None
