"""CDS Hooks 2.0 request validation, hook/service matching and the gate deciding whether to evaluate.

Only the CDS Hooks envelope is checked here; FHIR resources inside it are the engine's business
(invalid ones are skipped there and named in a missing-data card)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from cds_tpi.service.discovery import SERVICES, Service
from cds_tpi.order import appointment_as_orders
from cds_tpi.fhir.refs import normalize
from cds_tpi.service.outcomes import HttpError
# The request's shape (fields, kinds, patterns, each hook's context) is one JSON Schema,
# cds_tpi/schemas/cds-hooks-request.schema.json: it is both this validation and the OpenAPI
# document's request body (request_schema.py).
from cds_tpi.service.request_schema import first_problem


class TpiClassifier(Protocol):
    """The part of the Evaluator the gate needs."""

    def may_be_tpi_order(self, resources: list[dict]) -> bool: ...


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
    """Validate a `POST /cds-services/{id}` body against the hook's request schema; 400 naming the
    first field at fault."""
    request = parse_json_object(body)
    hook = request.get("hook")
    if isinstance(hook, str) and hook.strip() and hook != service.hook:
        raise HttpError(400, f"hook {hook!r} does not match service {service.id} (expects {service.hook!r})", "hook")
    problem = first_problem(service.hook, request)
    if problem is not None:
        field, message = problem
        raise HttpError(400, message, field)
    auth = request.get("fhirAuthorization")
    fhir_server = request.get("fhirServer")
    return HookCall(service, request, request["hookInstance"], request["context"]["patientId"],
                    fhir_server.rstrip("/") if fhir_server else None, auth["access_token"] if auth else None)


def orders_to_check(call: HookCall) -> list[dict] | None:
    """The draft resources whose being a TPI decides whether to evaluate; None = always evaluate."""
    context = call.request["context"]
    hook = call.service.hook
    if hook == "order-select":
        return _selected(context["draftOrders"], context["selections"])
    if hook == "order-sign":
        return bundle_resources(context["draftOrders"])
    if hook == "appointment-book":
        return [r for a in bundle_resources(context["appointments"]) for r in appointment_as_orders(a)]
    return None


def should_evaluate(call: HookCall, classifier: TpiClassifier) -> bool:
    """order-select: a selected order is a TPI; order-sign: any draft is; appointment-book: an
    appointment is for a TPI; patient-view: always. A procedure order not recognised as a TPI that has
    a local anesthetic or steroid ordered with it is evaluated too (the answer says it was not
    recognised: never silence for what may be a TPI under a local code)."""
    orders = orders_to_check(call)
    return orders is None or (bool(orders) and classifier.may_be_tpi_order(orders))


def bundle_resources(bundle: dict) -> list[dict]:
    """The resources of a Bundle's entries (entries without a resource object are skipped)."""
    return [e["resource"] for e in bundle.get("entry") or () if isinstance(e.get("resource"), dict)]


def _reference(resource: dict) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _selected(draft_orders: dict, selections: list[str]) -> list[dict]:
    """The selected drafts, and the drafts they are basedOn (a selected lidocaine order belongs to the
    TPI order it is basedOn). A selection names its draft as `Type/id`, or by the entry's fullUrl
    (`urn:uuid:...`, an absolute URL), as EHRs whose drafts have no id send it."""
    wanted = {normalize(s) for s in selections} | set(selections)
    entries = [e for e in draft_orders.get("entry") or () if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    keys = []
    for e in entries:
        full_url = e.get("fullUrl") if isinstance(e.get("fullUrl"), str) else None
        keys.append({_reference(e["resource"])} | ({full_url, normalize(full_url)} if full_url else set()))
    chosen = [i for i, k in enumerate(keys) if k & wanted]
    based_on = {normalize(b["reference"]) if not b["reference"].startswith("urn:") else b["reference"]
                for i in chosen for b in entries[i]["resource"].get("basedOn") or ()
                if isinstance(b, dict) and isinstance(b.get("reference"), str)}
    chosen += [i for i, k in enumerate(keys) if i not in chosen and k & based_on]
    return [entries[i]["resource"] for i in sorted(chosen)]
