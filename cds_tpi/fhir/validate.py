"""Validate FHIR resources with fhir.resources (R4 through the R4B models, or R5).

fhir.resources validation costs ~100x a JSON parse, so results are cached by the resource's
exact content: the same resource sent again (order-select then order-sign) is validated once.
fhir.resources does not check codes against required bindings; the handful of status codes the
rules depend on are checked here.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

VERSIONS = ("R4", "R5")

# Required bindings (FHIR R4) of the elements whose codes decide whether a record counts.
_STATUS_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("MedicationRequest", "status"): frozenset(
        "active on-hold cancelled completed entered-in-error stopped draft unknown".split()
    ),
    ("MedicationStatement", "status"): frozenset(
        "active completed entered-in-error intended stopped on-hold unknown not-taken recorded".split()
    ),
    ("MedicationAdministration", "status"): frozenset(
        "in-progress not-done on-hold completed entered-in-error stopped unknown".split()
    ),
    ("Procedure", "status"): frozenset(
        "preparation in-progress not-done on-hold stopped completed entered-in-error unknown".split()
    ),
    ("Observation", "status"): frozenset(
        "registered preliminary final amended corrected cancelled entered-in-error unknown".split()
    ),
    ("ValueSet", "status"): frozenset("draft active retired unknown".split()),
    ("ServiceRequest", "status"): frozenset(
        "draft active on-hold revoked completed entered-in-error unknown".split()
    ),
}


@dataclass(frozen=True)
class Issue:
    """One validation problem: element path and message."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@functools.lru_cache(maxsize=None)
def model_class(resource_type: str, version: str = "R4"):
    """The fhir.resources model class for a resource type, or None if the type does not exist."""
    if version == "R4":
        from fhir.resources.R4B import get_fhir_model_class
    elif version == "R5":
        from fhir.resources import get_fhir_model_class
    else:
        raise ValueError(f"unknown FHIR version {version!r} (use one of {', '.join(VERSIONS)})")
    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, AttributeError, KeyError):
        return None


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = str(part)
            if part.startswith("function-") or part in ("__root__",):
                continue
            out += ("." if out else "") + part
    return out


def _message(err: dict) -> str:
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown element"
    if kind == "missing":
        return "required element missing"
    m = re.match(r"(\w+) value string does not match spec regex", msg)
    if m:  # fhir.resources' wording for a malformed date, dateTime, id, code ...
        return f"invalid {m.group(1)[0].lower() + m.group(1)[1:]}"
    return msg.splitlines()[0][:200].rstrip(".")


class _DigestCache:
    """A bounded, thread-safe LRU keyed by a digest of JSON content (not the content itself: a few
    huge resources must not pin memory)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(obj: Any, version: str) -> tuple[bytes, str] | None:
        """Digest of obj as sent (key order kept), or None when it is not serialisable JSON."""
        try:
            return hashlib.blake2b(orjson.dumps(obj), digest_size=16).digest(), version
        except TypeError:
            return None

    def get(self, key):
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            if len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_resources = _DigestCache(20_000)  # one resource -> its issues
_lists = _DigestCache(2_000)       # a whole list (a prefetch searchset sent again) -> issues of each


def validate_resource(resource: Any, version: str = "R4") -> tuple[Issue, ...]:
    """Every problem fhir.resources (and our binding checks) finds in one resource; () when valid."""
    if not isinstance(resource, dict):
        return (Issue("", "not a JSON object"),)
    key = _DigestCache.key(resource, version)
    if key is None:
        return (Issue("", "not serialisable JSON"),)
    issues = _resources.get(key)
    if issues is None:
        issues = _validate(resource, version)
        _resources.put(key, issues)
    return issues


def validate_resources(resources: list, version: str = "R4") -> list[tuple[Issue, ...]]:
    """validate_resource for each; a whole list seen before costs one digest lookup."""
    key = _DigestCache.key(resources, version) if len(resources) > 1 else None
    issues = _lists.get(key) if key is not None else None
    if issues is None:
        issues = [validate_resource(r, version) for r in resources]
        if key is not None:
            _lists.put(key, issues)
    return issues


def clear_cache() -> None:
    """Forget cached validation results (benchmarks measure cold validation with it)."""
    _resources.clear()
    _lists.clear()


def _validate(resource: dict, version: str) -> tuple[Issue, ...]:
    rt = resource.get("resourceType")
    if not isinstance(rt, str):
        return (Issue("resourceType", "missing or not a string"),)
    cls = model_class(rt, version)
    if cls is None:
        return (Issue("resourceType", f"'{rt}' is not a FHIR {version} resource type"),)
    issues: list[Issue] = []
    try:
        cls.model_validate(resource)
    except ValidationError as e:
        seen = set()
        for err in e.errors():
            issue = Issue(_path(err.get("loc", ())), _message(err))
            if issue not in seen:
                seen.add(issue)
                issues.append(issue)
    except (ValueError, TypeError, RecursionError) as e:  # fhir.resources raises a few of these directly
        issues.append(Issue("", f"invalid: {str(e).splitlines()[0][:200]}"))
    for (rtype, element), allowed in _STATUS_CODES.items():
        # (a status that is not a string at all - a list, an object - is not hashable: not in `allowed` either)
        if rtype == rt and element in resource and not (isinstance(resource[element], str) and resource[element] in allowed):
            issues.append(Issue(element, f"'{str(resource[element])[:100]}' is not a valid {rt}.{element} code"))
    return tuple(issues)
