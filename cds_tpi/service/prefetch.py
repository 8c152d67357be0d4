"""Complete the prefetch: missing keys are fetched from `fhirServer` with the call's bearer token.

Per CDS Hooks 2.0: a missing key = not fetched by the EHR (fetch it); null = no data exists; an
OperationOutcome value = the EHR failed to get it (treat as missing). Searchset `next` links are
followed with bounds. Required keys that cannot be had give 412; optional ones become `gaps`
(notes for the engine's missing-data card). Nothing here logs or returns a URL: they hold the
patient id."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
import orjson

from cds_tpi.service.config import ServiceConfig
from cds_tpi.service.discovery import PREFETCH, PrefetchKey
from cds_tpi.service.hooks import HookCall
from cds_tpi.service.outcomes import HttpError

FHIR_JSON = "application/fhir+json"


class FetchFailed(Exception):
    """A prefetch key could not be fetched; the message is a short reason without URLs or ids."""


@dataclass(frozen=True)
class Prefetched:
    """The completed prefetch (a new dict; the request is not mutated) and notes of optional data lost."""

    prefetch: dict[str, Any]
    gaps: tuple[str, ...]
    fetched: tuple[str, ...]  # keys fetched (wholly or further pages) from the FHIR server


def new_client(config: ServiceConfig) -> httpx.AsyncClient:
    """The shared FHIR client: short timeouts, no redirects (a redirect could leave the FHIR host)."""
    timeout = httpx.Timeout(config.fhir_read_timeout, connect=config.fhir_connect_timeout)
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False,
                             limits=httpx.Limits(max_connections=100, max_keepalive_connections=20))


def render(template: str, patient_id: str) -> str:
    """Replace the 2.0 prefetch token (only `{{context.patientId}}` is used) with the URL-encoded id."""
    return template.replace("{{context.patientId}}", quote(patient_id, safe=""))


async def complete_prefetch(call: HookCall, client: httpx.AsyncClient, config: ServiceConfig,
                            keys: Sequence[PrefetchKey] | None = None) -> Prefetched:
    """Fill the prefetch keys we need (`keys`: the templates discovery advertises; default, those of
    the bundled rules); raises HttpError(412) when required data cannot be had."""
    keys = PREFETCH if keys is None else keys
    given = call.request.get("prefetch") or {}
    deadline = asyncio.get_running_loop().time() + config.fhir_total_timeout
    fetcher = _Fetcher(call, client, config, deadline)
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
                gaps.append(f"{key.label} ({value})")
            continue
        if status == "fetched":
            fetched.append(key.key)
        prefetch[key.key] = value
    if failed:
        raise HttpError(412, "; ".join(failed), issues=failed)
    return Prefetched(prefetch, tuple(gaps), tuple(fetched))


class _Fetcher:
    def __init__(self, call: HookCall, client: httpx.AsyncClient, config: ServiceConfig, deadline: float):
        self.call = call
        self.client = client
        self.config = config
        self.deadline = deadline
        self.headers = {"Accept": FHIR_JSON}
        if call.access_token:
            self.headers["Authorization"] = f"Bearer {call.access_token}"
        self.origin = _origin(call.fhir_server) if call.fhir_server else None

    async def resolve(self, key: PrefetchKey, given: dict) -> tuple[str, Any]:
        """("given" | "fetched", value) or ("failed", reason)."""
        try:
            async with asyncio.timeout_at(self.deadline):
                return await self._resolve(key, given)
        except TimeoutError:
            return "failed", "FHIR server timed out"
        except FetchFailed as e:
            return "failed", str(e)

    async def _resolve(self, key: PrefetchKey, given: dict) -> tuple[str, Any]:
        if key.key in given:
            value = given[key.key]
            if value is None:
                return "given", None
            if value.get("resourceType") != "OperationOutcome":
                if _next_link(value) is None:
                    return "given", value
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
            raise FetchFailed(why)

    async def _pages(self, bundle: dict, pages: int) -> dict:
        entries = list(_entries(bundle))
        seen: set[str] = set()
        while (link := _next_link(bundle)) is not None:
            url = urljoin(self.call.fhir_server + "/", link)
            if _origin(url) != self.origin:
                raise FetchFailed("a next link pointed to another host; not followed")
            if url in seen:
                raise FetchFailed("the FHIR server's next links loop")
            if pages >= self.config.fhir_max_pages:
                raise FetchFailed(f"more than {self.config.fhir_max_pages} result pages")
            seen.add(url)
            bundle = await self._get(url, "Bundle")
            entries += _entries(bundle)
            pages += 1
        merged: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if entries:
            merged["entry"] = entries
        return merged

    async def _get(self, url: str, resource_type: str) -> dict:
        limit = self.config.max_body_bytes * 2
        try:
            async with self.client.stream("GET", url, headers=self.headers) as response:
                if response.status_code != 200:
                    raise FetchFailed(_status_reason(response.status_code))
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise FetchFailed("FHIR server response too large")
        except httpx.TimeoutException:
            raise FetchFailed("FHIR server timed out") from None
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
            raise FetchFailed(f"FHIR server unreachable ({type(e).__name__})") from None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FetchFailed("FHIR server sent invalid JSON") from None
        if not isinstance(data, dict) or data.get("resourceType") != resource_type:
            raise FetchFailed(f"FHIR server sent something other than a {resource_type}")
        if resource_type == "Bundle" and not isinstance(data.get("entry", []), list):
            raise FetchFailed("FHIR server sent a malformed Bundle")
        return data


def _status_reason(status: int) -> str:
    if status in (401, 403):
        return f"FHIR server refused access (HTTP {status})"
    if status == 404:
        return "not found on the FHIR server"
    return f"FHIR server answered HTTP {status}"


def _next_link(bundle: dict) -> str | None:
    if bundle.get("resourceType") != "Bundle":
        return None
    for link in bundle.get("link") or ():
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
