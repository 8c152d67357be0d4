"""CDS Hooks 2.0 request validation, hook/service matching and the gate deciding whether to evaluate.

Only the CDS Hooks envelope is checked here; FHIR resources inside it are the engine's business
(invalid ones are skipped there and named in a missing-data card)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from cds_tpi.service.discovery import SERVICES, Service
from cds_tpi.order import appointment_as_orders
from cds_tpi.service.outcomes import HttpError

# The same patterns are stated in the OpenAPI document (openapi.py), which a fuzzer relies on. They
# must mean the same in Python `re` and in ECMA 262 (JSON Schema's dialect): no `\s` / `\S` (Python's
# include U+001C-U+001F and U+0085, ECMA's do not; a fuzzer found it); whitespace is spelt out below
# as exactly Python's str.isspace() set, which `str.strip()` in the validators uses too.
WHITESPACE_CLASS = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NONBLANK_PATTERN = f"[^{WHITESPACE_CLASS}]"  # a string that is not all whitespace (str.strip() non-empty)
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
FHIR_ID_PATTERN = r"^(?!\.+$)[A-Za-z0-9\-.]{1,64}$"  # not "." or "..": a path segment, not an id
_PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3})"
FHIR_SERVER_PATTERN = r"^https?://[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,252}[A-Za-z0-9])?(?::" + _PORT + r")?(?:/[^" + WHITESPACE_CLASS + r"?#]*)?$"
ACCESS_TOKEN_PATTERN = r"^[\x21-\x7e]+$"
_ACCESS_TOKEN = re.compile(ACCESS_TOKEN_PATTERN)
_UUID = re.compile(UUID_PATTERN)
_FHIR_ID = re.compile(FHIR_ID_PATTERN)
_FHIR_SERVER = re.compile(FHIR_SERVER_PATTERN)

# context fields each hook requires beyond userId and patientId, and their JSON kinds
_HOOK_CONTEXT: dict[str, dict[str, str]] = {
    "order-select": {"selections": "string-list", "draftOrders": "bundle"},
    "order-sign": {"draftOrders": "bundle"},
    "appointment-book": {"appointments": "bundle"},
    "patient-view": {},
}
_FHIR_AUTHORIZATION = ("access_token", "token_type", "expires_in", "scope", "subject")


class TpiClassifier(Protocol):
    """The part of the Evaluator the gate needs."""

    def is_tpi_order(self, resources: list[dict]) -> bool: ...


@dataclass(frozen=True)
class HookCall:
    """A validated service call. `request` is the parsed body; it is not mutated."""

    service: Service
    request: dict[str, Any]
    hook_instance: str
    patient_id: str
    fhir_server: str | None
    access_token: str | None


def find_service(service_id: str) -> Service:
    """The service for a URL segment, or 404."""
    try:
        return SERVICES[service_id]
    except KeyError:
        raise HttpError(404, f"no CDS service {service_id!r}; see GET /cds-services") from None


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object (400 otherwise)."""
    if not body.strip():
        raise HttpError(400, "empty request body; a JSON object is required")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise HttpError(400, f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "request body must be a JSON object")
    return data


def parse_call(service: Service, body: bytes) -> HookCall:
    """Validate a `POST /cds-services/{id}` body; 400 naming the first field at fault."""
    request = parse_json_object(body)
    hook = _field(request, "hook", str, "hook")
    if hook != service.hook:
        raise HttpError(400, f"hook {hook!r} does not match service {service.id} (expects {service.hook!r})", "hook")
    hook_instance = _field(request, "hookInstance", str, "hookInstance")
    if not _UUID.fullmatch(hook_instance):
        raise HttpError(400, "must be a UUID", "hookInstance")
    context = _field(request, "context", dict, "context")
    _field(context, "userId", str, "context.userId")
    patient_id = _field(context, "patientId", str, "context.patientId")
    if not _FHIR_ID.fullmatch(patient_id):
        raise HttpError(400, "must be a FHIR id ([A-Za-z0-9-.]{1,64})", "context.patientId")
    if "encounterId" in context and context["encounterId"] is not None:
        _field(context, "encounterId", str, "context.encounterId")
    for name, kind in _HOOK_CONTEXT[service.hook].items():
        if kind == "bundle":
            _bundle(context, name, f"context.{name}")
        else:
            values = _field(context, name, list, f"context.{name}")
            if not all(isinstance(v, str) and v.strip() for v in values):
                raise HttpError(400, "must be a list of references like 'ServiceRequest/1'", f"context.{name}")
    fhir_server = _fhir_server(request)
    access_token = _fhir_authorization(request, fhir_server)
    _prefetch(request)
    return HookCall(service, request, hook_instance, patient_id, fhir_server, access_token)


def orders_to_check(call: HookCall) -> list[dict] | None:
    """The draft resources whose being a TPI decides whether to evaluate; None = always evaluate."""
    context = call.request["context"]
    hook = call.service.hook
    if hook == "order-select":
        selected = set(context["selections"])
        return [r for r in bundle_resources(context["draftOrders"]) if _reference(r) in selected]
    if hook == "order-sign":
        return bundle_resources(context["draftOrders"])
    if hook == "appointment-book":
        return [r for a in bundle_resources(context["appointments"]) for r in appointment_as_orders(a)]
    return None


def should_evaluate(call: HookCall, classifier: TpiClassifier) -> bool:
    """order-select: a selected order is a TPI; order-sign: any draft is; appointment-book: an
    appointment is for a TPI; patient-view: always."""
    orders = orders_to_check(call)
    return orders is None or (bool(orders) and classifier.is_tpi_order(orders))


def bundle_resources(bundle: dict) -> list[dict]:
    """The resources of a Bundle's entries (entries without a resource object are skipped)."""
    return [e["resource"] for e in bundle.get("entry") or () if isinstance(e.get("resource"), dict)]


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _reference(resource: dict) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


_KIND_NAMES = {str: "a string", dict: "an object", list: "an array"}


def _field(obj: dict, name: str, kind: type, location: str) -> Any:
    if name not in obj or obj[name] is None:
        raise HttpError(400, "required field is missing", location)
    value = obj[name]
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise HttpError(400, f"must be {_KIND_NAMES[kind]}" + (" (non-empty)" if kind is str else ""), location)
    return value


def _bundle(obj: dict, name: str, location: str) -> dict:
    bundle = _field(obj, name, dict, location)
    if bundle.get("resourceType") != "Bundle":
        raise HttpError(400, "must be a FHIR Bundle", location)
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise HttpError(400, "must be an array", f"{location}.entry")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise HttpError(400, "must be an object", f"{location}.entry[{i}]")
    return bundle


def _fhir_server(request: dict) -> str | None:
    if request.get("fhirServer") is None:
        if request.get("fhirAuthorization") is not None:
            raise HttpError(400, "required when fhirAuthorization is present", "fhirServer")
        return None
    url = _field(request, "fhirServer", str, "fhirServer")
    if not _FHIR_SERVER.fullmatch(url):
        raise HttpError(400, "must be an absolute http(s) URL (host[:port][/path], no query)", "fhirServer")
    return url.rstrip("/")


def _fhir_authorization(request: dict, fhir_server: str | None) -> str | None:
    auth = request.get("fhirAuthorization")
    if auth is None:
        return None
    auth = _field(request, "fhirAuthorization", dict, "fhirAuthorization")
    for name in _FHIR_AUTHORIZATION:
        location = f"fhirAuthorization.{name}"
        if name == "expires_in":
            if name not in auth:
                raise HttpError(400, "required field is missing", location)
            if isinstance(auth[name], bool) or not isinstance(auth[name], (int, float)):
                raise HttpError(400, "must be a number", location)
        else:
            _field(auth, name, str, location)
    if auth["token_type"].lower() != "bearer":
        raise HttpError(400, "must be 'Bearer'", "fhirAuthorization.token_type")
    if not _ACCESS_TOKEN.fullmatch(auth["access_token"]):
        # it goes into an HTTP header: anything else cannot be sent (and was reported as an
        # unreachable FHIR server, a 412, before a fuzzer found it)
        raise HttpError(400, "must be printable ASCII without spaces (RFC 6750 token)", "fhirAuthorization.access_token")
    if auth.get("patient") is not None:
        _field(auth, "patient", str, "fhirAuthorization.patient")
    return auth["access_token"]


def _prefetch(request: dict) -> None:
    prefetch = request.get("prefetch")
    if prefetch is None:
        return
    if not isinstance(prefetch, dict):
        raise HttpError(400, "must be an object", "prefetch")
    for key, value in prefetch.items():
        if value is not None and not (isinstance(value, dict) and isinstance(value.get("resourceType"), str)):
            raise HttpError(400, "must be a FHIR resource or null", f"prefetch.{key}")
