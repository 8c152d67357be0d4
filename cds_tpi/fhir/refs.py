"""Resolve FHIR references inside one evaluation: `#contained`, `urn:uuid:…`, `Type/id`, absolute URLs."""

from __future__ import annotations

import functools
import re

_TYPE_ID = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def ref_key(resource: dict) -> str | None:
    """`Type/id` of a resource, or None when it has no id."""
    rid = resource.get("id")
    rt = resource.get("resourceType")
    if isinstance(rid, str) and isinstance(rt, str):
        return f"{rt}/{rid}"
    return None


def normalize(reference: str) -> str:
    """`Type/id` for relative or absolute references; other strings unchanged."""
    if len(reference) > 256:  # (not memoised: a huge string must not be pinned in memory)
        return _normalize(reference)
    return _normalize_memo(reference)


def _normalize(reference: str) -> str:
    m = _TYPE_ID.search(reference)
    return f"{m.group(1)}/{m.group(2)}" if m else reference


# The same fullUrls and references come back with every call about a patient (order-select, then
# order-sign); the regex search is most of a ResourceIndex.add.
_normalize_memo = functools.lru_cache(maxsize=8192)(_normalize)


class ResourceIndex:
    """Look-up of every resource in an evaluation by fullUrl and by Type/id."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict] = {}

    def add(self, resource: dict, full_url: str | None = None) -> None:
        key = ref_key(resource)
        if key:
            self._by_key.setdefault(key, resource)
        if full_url:
            self._by_key.setdefault(full_url, resource)
            if not full_url.startswith("urn:"):
                self._by_key.setdefault(normalize(full_url), resource)

    def resolve(self, reference: object, container: dict | None = None) -> dict | None:
        """The referenced resource, or None when it is not in this evaluation."""
        if isinstance(reference, dict):
            reference = reference.get("reference")
        if not isinstance(reference, str) or not reference:
            return None
        if reference.startswith("#"):
            if container:
                for c in container.get("contained") or []:
                    if isinstance(c, dict) and c.get("id") == reference[1:]:
                        return c
            return None
        hit = self._by_key.get(reference)
        if hit is None and not reference.startswith("urn:"):
            hit = self._by_key.get(normalize(reference))
        return hit

    def key_for(self, reference: object) -> str | None:
        """Stable `Type/id` for a reference (resolved where possible)."""
        target = self.resolve(reference)
        if target is not None:
            return ref_key(target)
        if isinstance(reference, dict):
            reference = reference.get("reference")
        return normalize(reference) if isinstance(reference, str) else None
