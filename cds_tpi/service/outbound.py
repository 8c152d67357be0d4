"""Where the service may connect when it fetches from a caller's `fhirServer` (SSRF guard).

`fhirServer` and the bearer token come from the caller. Without a guard the service is an open
proxy that sends the EHR's access token anywhere. Three layers:

1. **Allow-list** (`allowed_fhir_base`): the URL must start with a configured FHIR base URL (scheme,
   host and port equal, path at a `/` boundary): `allowed_fhir_servers` for every caller plus the
   `fhir_servers` of the JWT issuer that signed the call. Open mode (no issuers) with no list, when
   the service itself listens on a loopback address: loopback hosts on any port, nothing else (open
   mode on a public address: nothing but the list).
2. **Scheme**: https only, except loopback hosts or `fhir_allow_http: true`.
3. **Addresses, checked at connect time** (`GuardedBackend`, an httpcore network backend): the host
   name is resolved by us and the connection goes to a checked address, so a DNS answer cannot
   point an allowed name at a forbidden address between the check and the connect. Never:
   unspecified (0.0.0.0, ::), multicast, link-local (169.254.0.0/16 with cloud metadata, fe80::/10),
   reserved; loopback only for a loopback host name. Private networks are allowed (a hospital's FHIR
   server usually lives in one): the allow-list decides which of their hosts.

Per-host concurrency is bounded too (`FhirClient.host_slot`): callers pointing at one slow server
cannot take every outbound connection from the others."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpcore
import httpx

from cds_tpi.service.config import is_loopback

log = logging.getLogger(__name__)


class AddressRefused(httpcore.ConnectError):
    """The connection target resolved to an address the service never connects to."""


def address_refusal(address: str, host: str) -> str | None:
    """Why the service must not connect to `address` (resolved from `host`), or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if is_loopback(host) else "a loopback address for a non-loopback name"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_reserved:
        return "a reserved address"
    return None


class _Base:
    """One allowed FHIR base URL, parsed."""

    def __init__(self, url: str):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname.lower()
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = parts.path.rstrip("/")

    def admits(self, scheme: str, host: str, port: int, path: str) -> bool:
        return (scheme, host, port) == (self.scheme, self.host, self.port) and (
            path == self.path or path.startswith(self.path + "/"))


def check_base_url(url: str, allow_http: bool) -> None:
    """Validate one configured FHIR base URL (ValueError with the reason)."""
    base = _Base(url)
    if base.scheme == "http" and not allow_http and not is_loopback(base.host):
        raise ValueError(f"{url!r}: http is allowed only for loopback hosts (or set fhir_allow_http)")


def allowed_fhir_base(url: str, bases: Iterable[str], *, open_loopback: bool, allow_http: bool) -> str | None:
    """Why `url` may not be fetched from, or None when it may (see the module docstring)."""
    parts = urlsplit(url)
    try:
        scheme, host = parts.scheme, (parts.hostname or "").lower()
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return "not a valid URL"
    if scheme not in ("http", "https") or not host:
        return "not an http(s) URL"
    if scheme == "http" and not allow_http and not is_loopback(host):
        return "http is not allowed for a non-loopback FHIR server (https only)"
    path = parts.path.rstrip("/")
    if (why := path_refusal(parts.path)) is not None:
        return why
    if open_loopback and is_loopback(host):
        return None
    for base in bases:
        if _Base(base).admits(scheme, host, port, path):
            return None
    return "not an allowed FHIR server for this caller"


_ENCODED_SEPARATORS = ("%2e", "%2f", "%5c")  # . / \ percent-encoded (compared lower-case)


def path_refusal(path: str) -> str | None:
    """Why a fhirServer (or `next` link) path is refused, or None. The allow-list compares paths as
    sent; a server (or a proxy in front of it) that decodes or normalises them could resolve
    `/fhir/%2e%2e/admin`, `..%2f`, `..;/` (a `;` path parameter) or a backslash to a path outside
    the allowed base. So: no backslash, no percent-encoded dot, slash or backslash (also encoded
    twice: `%252e`), and no segment that is `.` or `..` as sent, after percent-decoding, or before
    its `;` parameters."""
    if "\\" in path:
        return "a backslash in the path"
    for segment in path.split("/"):
        decoded = segment
        for _ in range(4):  # %25 decodes to %: look through repeated encodings
            lower = decoded.lower()
            if any(code in lower for code in _ENCODED_SEPARATORS):
                return "a percent-encoded dot, slash or backslash in the path"
            if "%" not in decoded:
                break
            decoded = unquote(decoded)
        else:
            return "a path encoded more than three times"
        if "\\" in decoded:
            return "a backslash in the path"
        if decoded.split(";", 1)[0] in (".", ".."):
            return "dot segments in the path"
    return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address check of layer 3 in front of every connect."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None):
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        with anyio.fail_after(timeout):
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            reason = address_refusal(str(address), host)
            if reason is not None:  # one bad answer refuses the name: no picking among them
                log.warning("FHIR fetch refused: the server name resolved to %s", reason)
                raise AddressRefused(f"address refused: {reason}")
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(str(address), port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        raise last or httpcore.ConnectError("no address")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not used")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool built on `GuardedBackend`. TLS: the public CAs
    (certifi) plus `ca_file` (a hospital's own CA), host names verified."""

    def __init__(self, limits: httpx.Limits, ca_file: str | None = None):
        super().__init__(limits=limits, trust_env=False)
        ssl_context = httpx.create_ssl_context(trust_env=False)
        if ca_file:
            ssl_context.load_verify_locations(cafile=ca_file)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend())


class FhirClient:
    """The per-process client for FHIR fallback fetches: httpx with the guarded transport, no
    redirects, no proxies from the environment, and at most `per_host` requests in flight per
    FHIR server (scheme, host, port)."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, per_host: int, max_connections: int = 100,
                 ca_file: str | None = None):
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=20)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
                                      follow_redirects=False, trust_env=False,
                                      transport=_GuardedTransport(limits, ca_file))
        self.per_host = per_host
        self._slots: dict[tuple[str, str, int], asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def host_slot(self, url: str) -> AsyncIterator[None]:
        """Wait for one of the `per_host` request slots of `url`'s server."""
        parts = urlsplit(url)
        key = (parts.scheme, (parts.hostname or "").lower(), parts.port or 0)
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) > 1000:  # idle servers are forgotten
                self._slots = {k: s for k, s in self._slots.items() if s.locked()}
            slot = self._slots[key] = asyncio.Semaphore(self.per_host)
        async with slot:
            yield

    def stream(self, method: str, url: str, **kwargs: Any):
        return self.http.stream(method, url, **kwargs)

    async def __aenter__(self) -> FhirClient:
        await self.http.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.__aexit__(*exc)
