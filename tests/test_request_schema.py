"""One JSON Schema for the CDS Hooks request (cds_tpi/schemas/cds-hooks-request.schema.json): the
service's 400 validation and its OpenAPI request bodies both come from it."""

from __future__ import annotations

import copy
import uuid

import pytest
from jsonschema import Draft202012Validator

from cds_tpi.service.discovery import SERVICES
from cds_tpi.service.hooks import parse_call
from cds_tpi.service.openapi import openapi_document
from cds_tpi.service.outcomes import HttpError
from cds_tpi.service.request_schema import first_problem, request_schema

HOOKS = ("order-select", "order-sign", "appointment-book", "patient-view")
BUNDLE = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "ServiceRequest", "id": "1"}}]}


def request(hook: str, **extra) -> dict:
    context = {"userId": "Practitioner/1", "patientId": "p-1"}
    context.update({"order-select": {"selections": ["ServiceRequest/1"], "draftOrders": BUNDLE},
                    "order-sign": {"draftOrders": BUNDLE}, "appointment-book": {"appointments": BUNDLE}}.get(hook, {}))
    return copy.deepcopy({"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": {"patient": None},
                          **extra})


@pytest.mark.parametrize("hook", HOOKS)
def test_the_openapi_request_body_is_the_validation_schema(hook):
    service = next(s for s in SERVICES.values() if s.hook == hook)
    body = openapi_document()["paths"][f"/cds-services/{service.id}"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == request_schema(hook)
    Draft202012Validator.check_schema(body["schema"])
    assert first_problem(hook, request(hook)) is None


AUTH = {"access_token": "tok", "token_type": "bearer", "expires_in": 60, "scope": "s", "subject": "c"}


@pytest.mark.parametrize("change,field,message", [
    (lambda r: r.pop("hookInstance"), "hookInstance", "required field is missing"),
    (lambda r: r.update(hookInstance=str(uuid.uuid4()) + "\n"), "hookInstance", "must be a UUID"),  # ECMA's $, not Python's
    (lambda r: r["context"].update(patientId="p\u0661"), "context.patientId", "must be a FHIR id"),
    (lambda r: r["context"].update(userId=" \x1c"), "context.userId", "must be a non-empty string"),
    (lambda r: r["context"].update(draftOrders={"resourceType": "Patient"}), "context.draftOrders", "must be a FHIR Bundle"),
    (lambda r: r["context"]["draftOrders"].update(entry=[{}, 3]), "context.draftOrders.entry[1]", "must be an object"),
    (lambda r: r.update(fhirAuthorization=AUTH), "fhirServer", "required field is missing"),
    (lambda r: r.update(fhirServer="http://x.org:\u0661"), "fhirServer", "must be an absolute http(s) URL"),
    (lambda r: r.update(fhirServer="http://x.org", fhirAuthorization={**AUTH, "expires_in": True}),
     "fhirAuthorization.expires_in", "must be a number"),
    (lambda r: r["prefetch"].update(patient="Patient/1"), "prefetch.patient", "must be a FHIR resource or null"),
    # several problems: the first in the schema's order of fields is named
    (lambda r: (r.update(hookInstance="x"), r.pop("context")), "hookInstance", "must be a UUID"),
    (lambda r: (r["context"].pop("patientId"), r["context"].update(userId=5)), "context.userId", "must be a non-empty string"),
])
def test_first_problem_names_the_field_and_the_reason(change, field, message):
    r = request("order-sign")
    change(r)
    got = first_problem("order-sign", r)
    assert got is not None and got[0] == field and got[1].startswith(message), got


def test_parse_call_answers_400_from_the_schema_and_reads_a_valid_call():
    service = next(s for s in SERVICES.values() if s.hook == "order-sign")
    with pytest.raises(HttpError) as e:
        parse_call(service, b'{"hook": "order-sign", "hookInstance": "x", "context": {}}')
    assert (e.value.status, e.value.location, e.value.message) == (400, "hookInstance", "must be a UUID")
    with pytest.raises(HttpError) as e:
        parse_call(service, b'{"hook": "patient-view"}')
    assert e.value.location == "hook" and service.id in e.value.message
    import orjson

    call = parse_call(service, orjson.dumps(request("order-sign", fhirServer="http://x.org/fhir/", fhirAuthorization=AUTH)))
    assert (call.patient_id, call.fhir_server, call.access_token) == ("p-1", "http://x.org/fhir", "tok")
