"""Validate FHIR resources with fhir.resources (R4 through the R4B models, or R5).

fhir.resources validation costs ~100x a JSON parse, so results are cached by the resource's
exact content: the same resource sent again (order-select then order-sign) is validated once.
fhir.resources does not check codes against required bindings; the handful of status codes the
rules depend on are checked here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import re
import threading
import types
import typing
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from fhir_core.utils import is_list_type
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
        cls = get_fhir_model_class(resource_type)
    except (ValueError, AttributeError, KeyError):
        return None
    # Datatypes (Coding, Quantity ...) are models too, but not resources: no resourceType may name them.
    return cls if any(base.__name__ == "Resource" for base in cls.__mro__) else None


@functools.lru_cache(maxsize=4)
def _type_modules(version: str) -> tuple[str, ...]:
    """Lower-case names of the fhir.resources modules of a version (one per resource or datatype)."""
    import pkgutil

    import fhir.resources
    import fhir.resources.R4B

    package = fhir.resources.R4B if version == "R4" else fhir.resources
    return tuple(m.name for m in pkgutil.iter_modules(package.__path__) if not m.ispkg)


def close_resource_types(name: str, version: str = "R4") -> list[str]:
    """Resource type names of `version` spelled like `name` ('Patiant' -> ['Patient'])."""
    import difflib

    package = "fhir.resources.R4B" if version == "R4" else "fhir.resources"
    out = []
    for module in difflib.get_close_matches(name.lower(), _type_modules(version), n=3, cutoff=0.75):
        try:
            mod = importlib.import_module(f"{package}.{module}")
        except ImportError:
            continue
        cls = next((v for k, v in vars(mod).items() if k.lower() == module and isinstance(v, type)), None)
        if cls is not None and model_class(cls.__name__, version) is cls and cls.__name__ != name:
            out.append(cls.__name__)
    return out


def unknown_type_message(name: str, version: str = "R4") -> str:
    """"'Patiant' is not a FHIR R4 resource type (did you mean Patient?)"."""
    close = close_resource_types(name, version)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"'{name}' is not a FHIR {version} resource type{hint}"


def _path(loc: tuple[Any, ...]) -> str:
    """A FHIR element path from a pydantic error location (pydantic's own steps dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = str(part)
            if part.startswith("function-") or part in ("__root__", "root"):
                continue
            out += ("." if out else "") + part
    return out


def _json_kind(value: Any) -> str:
    """How a JSON value reads to a FHIR author: 'a string ("abc")', 'a number (5)', 'an array' ..."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f'a string ("{shown}")'
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return "a value of another kind"


def _unwrap(annotation: Any) -> Any:
    """The element type inside Optional[...] / List[...] / Annotated[...]."""
    while True:
        args = typing.get_args(annotation)
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            annotation = next((a for a in args if a is not type(None)), annotation)
        elif origin in (list, typing.Annotated) or (origin is not None and args):
            annotation = args[0]
        else:
            return annotation


def _expected_type(model: Any, loc: tuple[Any, ...]) -> str | None:
    """The FHIR datatype expected at a pydantic error location ('CodeableConcept', 'Reference' ...),
    found by walking the fhir.resources model's fields; None when it cannot be told."""
    cls = model
    found = None
    for part in loc:
        if isinstance(part, int) or part in ("root", "__root__") or str(part).startswith("function-"):
            continue
        fields = getattr(cls, "model_fields", None)
        if not fields:
            return None
        field = next((f for n, f in fields.items() if (f.alias or n) == part or n == part), None)
        if field is None:
            return None
        t = _unwrap(field.annotation)
        klass = getattr(t, "_model_klass", None)
        if isinstance(klass, str):  # fhir_core's lazy type: the class's dotted path
            found = klass.rsplit(".", 1)[-1]
            try:
                module, _, name = klass.rpartition(".")
                cls = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                return found
        elif isinstance(t, type):
            found, cls = t.__name__, t
        else:
            return None
    return found


# pydantic error types for JSON values of the wrong kind -> what FHIR's JSON format wants there.
_WANTS = {
    "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "decimal_type": "a number", "decimal_parsing": "a number",
    "list_type": "an array (this element repeats)", "dict_type": "a JSON object", "model_type": "a JSON object",
    "date_from_datetime_inexact": "a date string (YYYY, YYYY-MM or YYYY-MM-DD)", "date_type": "a date string",
    "datetime_type": "a dateTime string", "string_too_short": "a non-empty string",
}


def _a(word: Any) -> str:
    """'a Coding', 'an Annotation'."""
    word = str(word)
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


# fhir.resources class names that are no FHIR datatype name
_FHIR_NAMES = {"FHIRPrimitiveExtension": "primitive-element extension (id, extension)"}


def _fhir_name(name: str) -> str:
    return _FHIR_NAMES.get(name, name)


def _message(err: dict, model: Any = None) -> str:
    """One pydantic error in FHIR's terms: what the element should be, and what it was."""
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    kind = err.get("type", "")
    given = err.get("input", None)
    if kind == "extra_forbidden":
        loc = [p for p in err.get("loc", ()) if p not in ("root", "__root__")]
        parent = ".".join(str(p) for p in loc[:-1] if not isinstance(p, int))
        owner = ".".join(x for x in (getattr(model, "__name__", ""), parent) if x)
        return f"unknown element ({owner} has no '{loc[-1]}')" if owner and loc else "unknown element"
    if kind in ("missing", "model_field_validation.missing"):
        return "required element missing"
    m = re.match(r"Any of one field value is expected from this list \[(.*)\], but got multiple", msg)
    if m:  # a choice element ([x]) given in two types
        names = [n.strip(" '\"") for n in m.group(1).split(",")]
        return f"only one of {', '.join(names)} may be given (a choice element, [x])"
    if kind == "string_pattern_mismatch":
        # FHIR primitive patterns (https://hl7.org/fhir/R4/datatypes.html#primitive)
        if given == "" or (isinstance(given, str) and not given.strip()):
            return "empty string: FHIR has no empty values; leave the element out"
        if (err.get("ctx") or {}).get("pattern") == r"^[A-Za-z0-9\-.]+$":
            return f"invalid id \"{str(given)[:64]}\": only letters, digits, '-' and '.'"
        return f"{_json_kind(given)} does not match the FHIR pattern {(err.get('ctx') or {}).get('pattern')}"
    if kind == "model_validation_format" or (kind == "json_invalid" and isinstance(given, str)):
        # fhir_core reads a string where an object belongs as JSON text ("Invalid JSON: expected value
        # at line 1 column 1") and names other values "the instance of Coding": say it as FHIR would.
        ctx = err.get("ctx") or {}
        wanted = ctx.get("model_class") if isinstance(ctx.get("model_class"), str) else None
        wanted = wanted or (_expected_type(model, tuple(err.get("loc", ()))) if model is not None else None)
        if "resource_type" in ctx:
            return f'expected {_a(ctx.get("model_name"))} resource, got {_a(ctx.get("resource_type"))}'
        return f"expected {_a(_fhir_name(wanted)) if wanted else 'a JSON'} object, got {_json_kind(given)}"
    if kind == "list_type" and isinstance(given, list):  # an array holding null: fhir.resources says "array"
        nulls = [i for i, v in enumerate(given) if v is None]
        wanted = _expected_type(model, tuple(err.get("loc", ()))) if model is not None else None
        if nulls:
            item = f"{_a(_fhir_name(wanted))} object" if wanted else "a value"
            return f"item [{nulls[0]}] is null: expected {item} (FHIR arrays hold no nulls)"
    if kind in _WANTS:
        return f"expected {_WANTS[kind]}, got {_json_kind(given)}"
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
        """Digest of obj as sent (key order kept), or None when it is not serialisable JSON. SHA-256: with
        the SHA instructions of current x86 and ARM CPUs twice as fast as BLAKE2b (the 45 records of the
        benchmark request, 17 kB: 9.8 against 18.4 us, measured), and hashing is half of a warm look-up."""
        try:
            return hashlib.sha256(orjson.dumps(obj)).digest(), version
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


def validate_resource(resource: Any, version: str = "R4", _elements: dict | None = None) -> tuple[Issue, ...]:
    """Every problem fhir.resources (and our binding checks) finds in one resource; () when valid.
    `_elements`: the elements of other records validated already (validate_resources; _with_valid_elements)."""
    if not isinstance(resource, dict):
        return (Issue("", "not a JSON object"),)
    key = _DigestCache.key(resource, version)
    if key is None:
        return (Issue("", "not serialisable JSON"),)
    issues = _resources.get(key)
    if issues is None:
        issues = _validate(resource, version, _elements)
        _resources.put(key, issues)
    return issues


def validate_resources(resources: list, version: str = "R4") -> list[tuple[Issue, ...]]:
    """validate_resource for each; a whole list seen before costs one digest lookup. The records of one
    list share the elements they repeat (the patient reference, status codes, the codes of one test)."""
    key = _DigestCache.key(resources, version) if len(resources) > 1 else None
    issues = _lists.get(key) if key is not None else None
    if issues is None:
        elements: dict = {}
        issues = [validate_resource(r, version, elements) for r in resources]
        if key is not None:
            _lists.put(key, issues)
    return issues


def clear_cache() -> None:
    """Forget cached validation results (benchmarks measure cold validation with it)."""
    _resources.clear()
    _lists.clear()


@functools.lru_cache(maxsize=None)
def _element_models(cls) -> dict[str, tuple[Any, bool]]:
    """JSON name -> (model class, repeats) of each element of a model that fhir_core validates by a model
    of its own, whatever its place: the datatypes (CodeableConcept, Reference ...) and backbone elements;
    not `contained` and the other elements that hold any resource (their model is the resource's type)."""
    out = {}
    for name, field in cls.model_fields.items():
        t = _unwrap(field.annotation)
        if isinstance(t, type) and issubclass(t, FhirBase) and not issubclass(t, FhirElementOrResourceBase):
            out[field.alias or name] = (t.get_model_klass(), is_list_type(field))
    return out


_INVALID = object()


def _valid_element(value: Any, model, elements: dict) -> Any:
    """The model instance of a JSON object valid as `model` (validated once per `elements`), else the value
    as it came (then the whole resource's validation names its problems at their paths)."""
    if not isinstance(value, dict):
        return value
    try:
        key = (model, orjson.dumps(value))
    except TypeError:
        return value
    hit = elements.get(key)
    if hit is None:
        try:
            hit = model.model_validate(value)
        except (ValidationError, ValueError, TypeError, RecursionError):
            hit = _INVALID
        elements[key] = hit
    return value if hit is _INVALID else hit


def _with_valid_elements(resource: dict, cls, elements: dict) -> dict:
    """The resource with each element that is valid by itself replaced by its model instance, which
    fhir_core accepts as it is (fhir_core.types.FhirBase.fhir_model_validator: an instance of the expected
    model is not validated again). An element is validated by its own model wherever it sits, so the
    verdict and the messages are the same as the resource's own; what changes is that an element the
    records of one call repeat is validated once: a new patient's 52 records of the benchmark request
    took 3.3 ms, 2.0 ms so (measured)."""
    models = _element_models(cls)
    out = {}
    for name, value in resource.items():
        spec = models.get(name)
        if spec is not None:
            model, repeats = spec
            if not repeats:
                value = _valid_element(value, model, elements)
            elif isinstance(value, list):
                value = [_valid_element(v, model, elements) for v in value]
        out[name] = value
    return out


def _validate(resource: dict, version: str, elements: dict | None = None) -> tuple[Issue, ...]:
    rt = resource.get("resourceType")
    if not isinstance(rt, str):
        return (Issue("resourceType", "missing or not a string"),)
    cls = model_class(rt, version)
    if cls is None:
        return (Issue("resourceType", unknown_type_message(rt, version)),)
    issues: list[Issue] = []
    try:
        cls.model_validate(resource if elements is None else _with_valid_elements(resource, cls, elements))
    except ValidationError as e:
        seen = set()
        for err in e.errors():
            issue = Issue(_path(err.get("loc", ())), _message(err, cls))
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


def version_hint(resource: Any, version: str) -> str | None:
    """For a resource that is invalid in `version`: 'this looks like FHIR R5' when it is valid in the
    other version (R4 data sent as R5 or the reverse is the commonest cause of unknown elements:
    medicationCodeableConcept in R4, medication.concept in R5); None otherwise."""
    other = "R5" if version == "R4" else "R4"
    if not isinstance(resource, dict) or not validate_resource(resource, version):
        return None
    if model_class(str(resource.get("resourceType")), other) is None or validate_resource(resource, other):
        return None
    return f"this looks like FHIR {other} (it is valid {other})"
