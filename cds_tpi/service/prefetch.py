"""Complete the prefetch: missing keys are fetched from `fhirServer` with the call's bearer token.

Per CDS Hooks 2.0: a missing key = not fetched by the EHR (fetch it); null = no data exists; an
OperationOutcome value = the EHR failed to get it (treat as missing). Searchset `next` links are
followed with bounds. Required keys that cannot be had give 412; optional ones become `gaps`
(notes for the engine's missing-data card). Nothing here logs or returns a URL: they hold the
patient id.

Security (issue 10): fetches go only to allowed FHIR servers at checked addresses (outbound.py); one
budget of bytes (decompressed) and entries per call across all keys and pages; a bounded number of
requests in flight per FHIR server; in open mode every key that could not be had after a request
was attempted reads "could not be fetched from the FHIR server" (a caller must not learn what
listens on a port: closed, silent, 404, 401 read the same); a JWT-authenticated caller is told the
reason (timed out, refused access, not found, too large); the details go to the log without URLs.
The keys are fetched concurrently within the call's one time budget; each key's reason is its own
(the keys that were answered are used)."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
import orjson

from cds_tpi.service.config import Issuer, ServiceConfig, is_loopback
from cds_tpi.service.discovery import PREFETCH, PrefetchKey
from cds_tpi.service.hooks import HookCall
from cds_tpi.service.metrics import observe_fallback
from cds_tpi.service.outbound import FhirClient, allowed_fhir_base, path_refusal
from cds_tpi.service.outcomes import HttpError

FHIR_JSON = "application/fhir+json"
log = logging.getLogger(__name__)

# What the caller is told (the log has the detail)
NOT_FETCHED = "could not be fetched from the FHIR server"
TIMED_OUT = "FHIR server timed out"
TOO_LARGE = "FHIR data too large for this service's limits"
NOT_ALLOWED = "fhirServer is not an allowed FHIR server for this service"
_DECODE_STEP = 1 << 16  # bytes decompressed per step (gzip expands up to ~1000x)


class FetchFailed(Exception):
    """A prefetch key could not be fetched; the message is a short reason without URLs or ids (for
    the caller), `detail` what happened (for the log, also without URLs or ids)."""

    def __init__(self, reason: str, detail: str | None = None, *, contacted: bool = True):
        super().__init__(reason)
        self.detail = detail or reason
        self.contacted = contacted  # False: refused before any request (no fhirServer, not allowed)


@dataclass(frozen=True)
class Prefetched:
    """The completed prefetch (a new dict; the request is not mutated) and notes of optional data lost."""

    prefetch: dict[str, Any]
    gaps: tuple[str, ...]
    fetched: tuple[str, ...]  # keys fetched (wholly or further pages) from the FHIR server


def new_client(config: ServiceConfig) -> FhirClient:
    """The shared FHIR client: short timeouts, no redirects (a redirect could leave the FHIR host),
    checked addresses, per-host limits (outbound.py)."""
    return FhirClient(connect_timeout=config.fhir_connect_timeout, read_timeout=config.fhir_read_timeout,
                      per_host=config.fhir_max_connections_per_host, ca_file=config.fhir_ca_file)


def fetch_refusal(fhir_server: str, config: ServiceConfig, issuer: Issuer | None) -> str | None:
    """Why the service will not fetch from `fhir_server` for a caller of `issuer`, or None."""
    bases = (*config.allowed_fhir_servers, *(issuer.fhir_servers if issuer else ()))
    # loopback FHIR servers by default only for a service that itself listens on loopback: one that
    # listens on a public address (open mode with allow_unauthenticated) must not let anyone on the
    # network reach this machine's loopback listeners through it; there, only the allow-list
    open_loopback = not config.auth_enabled and not config.allowed_fhir_servers and is_loopback(config.host)
    return allowed_fhir_base(fhir_server, bases, allow_http=config.fhir_allow_http, open_loopback=open_loopback)


def render(template: str, patient_id: str) -> str:
    """Replace the 2.0 prefetch token (only `{{context.patientId}}` is used) with the URL-encoded id."""
    return template.replace("{{context.patientId}}", quote(patient_id, safe=""))


async def complete_prefetch(call: HookCall, client: FhirClient, config: ServiceConfig,
                            keys: Sequence[PrefetchKey] | None = None, issuer: Issuer | None = None) -> Prefetched:
    """Fill the prefetch keys we need (`keys`: the templates discovery advertises; default, those of
    the bundled rules); raises HttpError(412) when required data cannot be had."""
    keys = PREFETCH if keys is None else keys
    given = call.request.get("prefetch") or {}
    if all(_complete_as_given(given, k.key) for k in keys):  # the usual call: nothing to fetch
        return Prefetched(dict(given), (), ())
    deadline = asyncio.get_running_loop().time() + config.fhir_total_timeout
    fetcher = _Fetcher(call, client, config, deadline, issuer)
    results = await asyncio.gather(*(fetcher.resolve(key, given) for key in keys))
    prefetch = {k: v for k, v in given.items() if k not in {p.key for p in keys}}  # foreign keys pass through
    gaps: list[str] = []
    failed: list[str] = []
    fetched: list[str] = []
    for key, (status, value) in zip(keys, results):
        if status == "failed":
            if key.required:
                failed.append(f"required prefetch '{key.key}' ({key.label}): {value}")
            else:
                gaps.append(f"{key.label}: {value}")  # head: why (facts.gap_parts)
            continue
        if status == "fetched":
            fetched.append(key.key)
        prefetch[key.key] = value
    observe_fallback(call.fhir_server, zip(keys, results))
    if failed:
        raise HttpError(412, "; ".join(failed), issues=failed)
    return Prefetched(prefetch, tuple(gaps), tuple(fetched))


def _complete_as_given(given: dict, key: str) -> bool:
    """The key was sent and needs no fetch: null (looked up, none), or a value that is neither an
    OperationOutcome nor a searchset with a next page (`_Fetcher._resolve` fetches the rest)."""
    if key not in given:
        return False
    value = given[key]
    return value is None or (isinstance(value, dict) and value.get("resourceType") != "OperationOutcome"
                             and _next_link(value) is None)


class _Fetcher:
    def __init__(self, call: HookCall, client: FhirClient, config: ServiceConfig, deadline: float,
                 issuer: Issuer | None = None):
        self.call = call
        self.client = client
        self.config = config
        self.deadline = deadline
        # identity: a gzip bomb is not decoded; a server that compresses anyway is decoded within the budget
        self.headers = {"Accept": FHIR_JSON, "Accept-Encoding": "identity"}
        if call.access_token:
            self.headers["Authorization"] = f"Bearer {call.access_token}"
        self.origin = _origin(call.fhir_server) if call.fhir_server else None
        self.base_path = urlsplit(call.fhir_server).path.rstrip("/") if call.fhir_server else ""
        self.refusal = fetch_refusal(call.fhir_server, config, issuer) if call.fhir_server else None
        self.bytes_left = config.fhir_max_bytes_per_call  # shared by every key and page of this call
        self.entries_left = config.fhir_max_entries_per_call
        # Open mode: anyone may call and name a loopback fhirServer, so whatever happened once a
        # request was attempted (closed port, silence, 404, 401, garbage, too much) reads the same to
        # the caller: no port map. A JWT-authenticated caller names only its issuer's or the allowed
        # FHIR servers and is told the reason (timed out, refused access, not found, too large ...).
        self.detailed = config.auth_enabled

    async def resolve(self, key: PrefetchKey, given: dict) -> tuple[str, Any]:
        """("given" | "fetched", value) or ("failed", reason)."""
        try:
            async with asyncio.timeout_at(self.deadline):
                return await self._resolve(key, given)
        except TimeoutError:
            log.warning("FHIR fetch of prefetch key %s timed out: the call's %.1f s budget ran out", key.key,
                        self.config.fhir_total_timeout)
            return "failed", TIMED_OUT if self.detailed else NOT_FETCHED
        except FetchFailed as e:
            reason = str(e) if self.detailed or not e.contacted else NOT_FETCHED
            if e.detail != reason:
                log.warning("FHIR fetch of prefetch key %s failed: %s", key.key,
                            e.detail if e.detail == str(e) else f"{e} ({e.detail})")
            return "failed", reason

    async def _resolve(self, key: PrefetchKey, given: dict) -> tuple[str, Any]:
        if _complete_as_given(given, key.key):
            return "given", given[key.key]
        if key.key in given:
            value = given[key.key]
            if value.get("resourceType") != "OperationOutcome":
                # a partial searchset from the EHR: fetch the rest of its pages
                self._require_server("the EHR sent only the first page")
                return "fetched", await self._pages(value, pages=1)
            self._require_server("the EHR reported an error fetching it")
        else:
            self._require_server("not sent and no fhirServer to fetch it from")
        url = f"{self.call.fhir_server}/{render(key.query, self.call.patient_id)}"
        expected = key.query.split("?", 1)[0].split("/", 1)[0]
        if "?" not in key.query:  # a read
            return "fetched", await self._get(url, expected)
        return "fetched", await self._pages(await self._get(url, "Bundle"), pages=1)

    def _require_server(self, why: str) -> None:
        if not self.call.fhir_server:
            raise FetchFailed(why, contacted=False)
        if self.refusal is not None:
            raise FetchFailed(NOT_ALLOWED, f"fhirServer {self.refusal}", contacted=False)

    async def _pages(self, bundle: dict, pages: int) -> dict:
        entries = list(_entries(bundle))
        seen: set[str] = set()
        while (link := _next_link(bundle)) is not None:
            url = urljoin(self.call.fhir_server + "/", link)
            path = urlsplit(url).path
            if _origin(url) != self.origin or not (path == self.base_path or path.startswith(self.base_path + "/")):
                raise FetchFailed("a next link pointed to another host or outside fhirServer; not followed")
            if (why := path_refusal(path)) is not None:  # %2e%2e, ..%2f, ..;/ could leave fhirServer on the server
                raise FetchFailed("a next link pointed outside fhirServer; not followed", f"next link: {why}")
            if url in seen:
                raise FetchFailed("the FHIR server's next links loop")
            if pages >= self.config.fhir_max_pages:
                raise FetchFailed(f"more than {self.config.fhir_max_pages} result pages")
            seen.add(url)
            bundle = await self._get(url, "Bundle")  # counts its entries against the call's budget
            entries += _entries(bundle)
            pages += 1
        merged: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if entries:
            merged["entry"] = entries
        return merged

    def _count_entries(self, bundle: dict) -> None:
        self.entries_left -= len(_entries(bundle))
        if self.entries_left < 0:
            raise FetchFailed(TOO_LARGE, f"more than {self.config.fhir_max_entries_per_call} entries in one call")

    def _failed(self, detail: str, reason: str = NOT_FETCHED) -> FetchFailed:
        return FetchFailed(reason, detail)  # the detail is logged with the key; no URL: it holds the patient id

    async def _get(self, url: str, resource_type: str) -> dict:
        try:
            async with self.client.host_slot(url), self.client.stream("GET", url, headers=self.headers) as response:
                if response.status_code != 200:
                    raise self._failed(f"HTTP {response.status_code}", _status_reason(response.status_code))
                body = await self._read(response)
        except httpx.TimeoutException:
            raise self._failed("timeout", TIMED_OUT) from None
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
            raise self._failed(f"unreachable ({type(e).__name__})") from None  # its text may quote the URL
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise self._failed("invalid JSON") from None
        if not isinstance(data, dict) or data.get("resourceType") != resource_type:
            raise self._failed(f"something other than a {resource_type}")
        if resource_type == "Bundle" and not isinstance(data.get("entry", []), list):
            raise self._failed("a malformed Bundle")
        if resource_type == "Bundle":
            self._count_entries(data)
        return data

    async def _read(self, response: httpx.Response) -> bytes:
        """The body within the call's byte budget, counted after decompression (gzip/deflate decoded
        here in bounded steps; other encodings refused)."""
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
            raise self._failed(f"content-encoding {encoding[:20]!r}")
        decoder = zlib.decompressobj(47) if encoding not in ("identity", "") else None  # 47: gzip or zlib header
        body = bytearray()

        def take(piece: bytes) -> None:
            self.bytes_left -= len(piece)
            if self.bytes_left < 0:
                raise self._failed(f"over the call's budget of {self.config.fhir_max_bytes_per_call} bytes", TOO_LARGE)
            body.extend(piece)

        try:
            async for chunk in response.aiter_raw():
                if decoder is None:
                    take(chunk)
                    continue
                while chunk:  # bounded steps: never more than _DECODE_STEP bytes decoded at once
                    if self.bytes_left < 0:  # spent by another key of this call
                        raise self._failed("the call's byte budget is spent", TOO_LARGE)
                    take(decoder.decompress(chunk, _DECODE_STEP))  # (a max_length of 0 would mean "no limit")
                    chunk = decoder.unconsumed_tail
            while decoder is not None and (piece := decoder.decompress(b"", _DECODE_STEP)):
                take(piece)  # output still pending inside the decoder
        except zlib.error:
            raise self._failed("undecodable compressed body") from None
        return bytes(body)


def _status_reason(status: int) -> str:
    if status in (401, 403):
        return f"FHIR server refused access (HTTP {status})"
    if status == 404:
        return "not found on the FHIR server"
    return NOT_FETCHED


def _next_link(bundle: dict) -> str | None:
    if bundle.get("resourceType") != "Bundle":
        return None
    links = bundle.get("link")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        port = -1
    return parts.scheme, parts.hostname, port



def _entries(bundle: dict) -> list:
    entries = bundle.get("entry")
    return entries if isinstance(entries, list) else []
