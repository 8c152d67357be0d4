"""Discovery, every hook, gating and every bad-input case, over real HTTP to uvicorn on loopback."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from cds_tpi.service.discovery import PREFETCH
from conftest import PATIENT_ID, SERVICE_FOR_HOOK, hook_request

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def service(start_service, evaluator):
    return start_service(evaluator)


def test_discovery_lists_four_services_with_2_0_prefetch_tokens(service):
    r = service.get("/cds-services")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    services = {s["id"]: s for s in r.json()["services"]}
    assert {i: s["hook"] for i, s in services.items()} == {
        "tpi-order-select": "order-select", "tpi-order-sign": "order-sign",
        "tpi-appointment-book": "appointment-book", "tpi-patient-view": "patient-view"}
    for s in services.values():
        assert s["description"] and s["title"]
        assert set(s["prefetch"]) == {p.key for p in PREFETCH}
        for query in s["prefetch"].values():
            assert "{{context.patientId}}" in query and "{{Patient.id}}" not in query and "date=ge" not in query
        assert "patient, medicationRequests, conditions, allergies" in s["usageRequirements"]
    observations = services["tpi-order-sign"]["prefetch"]["observations"]
    for code in ("29463-7", "777-3", "26515-7", "6301-6", "34714-6", "4548-4"):
        assert f"http://loinc.org|{code}" in observations
    assert observations.endswith("&_sort=-date")


def test_health_and_openapi(service):
    health = service.get("/health").json()
    assert health["status"] == "ok" and health["auth"] == "off"
    doc = service.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {"/health", "/openapi.json", "/cds-services"} | {
        f"/cds-services/{s}" for s in SERVICE_FOR_HOOK.values()} | {
        f"/cds-services/{s}/feedback" for s in SERVICE_FOR_HOOK.values()}


def test_openapi_request_schemas_accept_our_sample_requests(service):
    jsonschema = pytest.importorskip("jsonschema")
    doc = service.get("/openapi.json").json()
    for hook, service_id in SERVICE_FOR_HOOK.items():
        schema = doc["paths"][f"/cds-services/{service_id}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        schema = {**schema, "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(hook_request(hook))
        bad = hook_request(hook)
        bad["hookInstance"] = "not-a-uuid"
        assert not jsonschema.Draft202012Validator(schema).is_valid(bad)


@pytest.mark.parametrize("hook", list(SERVICE_FOR_HOOK))
def test_every_hook_answers_cards_with_complete_prefetch(service, hook):
    r = service.post(f"/cds-services/{SERVICE_FOR_HOOK[hook]}", hook_request(hook))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    cards = r.json()["cards"]
    codes = {c["source"]["topic"]["code"] for c in cards}
    assert "anticoagulant" in codes  # warfarin in the prefetch
    for card in cards:
        assert card["uuid"] and card["indicator"] in ("info", "warning", "critical") and card["source"]["label"]


def test_same_cards_as_the_engine_called_directly(service, evaluator):
    request = hook_request("order-sign")
    over_http = service.post("/cds-services/tpi-order-sign", request).json()["cards"]
    direct = evaluator.evaluate_request(request).response["cards"]
    strip = lambda cards: sorted((c["summary"], c["indicator"], c.get("detail")) for c in cards)  # noqa: E731
    assert strip(over_http) == strip(direct)


def test_order_select_without_a_tpi_selected_gives_no_cards(service):
    request = hook_request("order-select")
    drafts = request["context"]["draftOrders"]
    drafts["entry"].append({"resource": {"resourceType": "ServiceRequest", "id": "lab-1", "status": "draft", "intent": "order",
                                         "subject": {"reference": f"Patient/{PATIENT_ID}"}, "code": {"text": "CBC"}}})
    request["context"]["selections"] = ["ServiceRequest/lab-1"]
    r = service.post("/cds-services/tpi-order-select", request)
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_order_select_of_the_tpis_injectate_is_evaluated(service):
    """Selecting the lidocaine of a TPI order (basedOn it) is a selection in a TPI: its checks run."""
    request = hook_request("order-select")
    request["context"]["selections"] = ["MedicationRequest/lido-1"]
    r = service.post("/cds-services/tpi-order-select", request)
    assert r.status_code == 200 and r.json()["cards"]


def test_order_sign_without_a_tpi_draft_gives_no_cards(service):
    request = hook_request("order-sign")
    request["context"]["draftOrders"]["entry"] = [{"resource": {
        "resourceType": "ServiceRequest", "id": "lab-1", "status": "draft", "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT_ID}"}, "code": {"text": "CBC"}}}]
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_order_sign_of_the_injectate_alone_based_on_an_order_not_sent_is_evaluated(service):
    """The lidocaine draft is basedOn the TPI order, which is not in draftOrders (signed earlier, on hold):
    evaluated, not silently skipped (audit 4)."""
    request = hook_request("order-sign")
    request["context"]["draftOrders"]["entry"] = request["context"]["draftOrders"]["entry"][1:]
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 200 and r.json()["cards"]


def test_appointment_not_for_a_tpi_gives_no_cards(service):
    request = hook_request("appointment-book")
    request["context"]["appointments"]["entry"][0]["resource"]["serviceType"] = [{"text": "Annual check-up"}]
    r = service.post("/cds-services/tpi-appointment-book", request)
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_extension_anywhere_is_accepted(service):
    ext = {"com.example.ehr": {"anything": [1, 2]}}
    request = hook_request("order-sign", extension=ext)
    request["context"]["extension"] = ext
    request["prefetch"]["patient"]["extension"] = [{"url": "http://example.org/x", "valueString": "y"}]
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 200, r.text


def test_null_prefetch_values_mean_no_data(service):
    prefetch = {k: None for k in ("medicationRequests", "medicationStatements", "conditions", "allergies",
                                  "procedures", "observations")}
    prefetch["patient"] = hook_request("order-sign")["prefetch"]["patient"]
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign", prefetch=prefetch))
    assert r.status_code == 200
    assert "anticoagulant" not in {c["source"]["topic"]["code"] for c in r.json()["cards"]}


def test_invalid_fhir_in_prefetch_is_skipped_and_named(service):
    request = hook_request("order-sign")
    request["prefetch"]["allergies"]["entry"][0]["resource"]["clinicalStatus"] = "active"  # must be a CodeableConcept
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 200, r.text
    missing = [c for c in r.json()["cards"] if c["source"]["topic"]["code"] == "missing-data"]
    assert missing and "AllergyIntolerance" in json.dumps(missing)


# --- bad input ---------------------------------------------------------------------------------

def _issue(r: httpx.Response) -> dict:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def test_malformed_json_is_400(service):
    r = service.post("/cds-services/tpi-order-sign", b'{"hook": "order-sign",')
    assert r.status_code == 400 and "malformed JSON" in _issue(r)["diagnostics"]


@pytest.mark.parametrize("body", [b"", b"[]", b"42", b"null"])
def test_non_object_body_is_400(service, body):
    assert service.post("/cds-services/tpi-order-sign", body).status_code == 400


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.pop("hook"), "hook"),
        (lambda r: r.pop("hookInstance"), "hookInstance"),
        (lambda r: r.update(hookInstance="1234"), "hookInstance"),
        (lambda r: r.pop("context"), "context"),
        (lambda r: r.update(context={}), "context.userId"),
        (lambda r: r["context"].pop("patientId"), "context.patientId"),
        (lambda r: r["context"].update(patientId="../../etc"), "context.patientId"),
        (lambda r: r["context"].update(userId=7), "context.userId"),
        (lambda r: r["context"].pop("draftOrders"), "context.draftOrders"),
        (lambda r: r["context"].update(draftOrders={"resourceType": "Patient"}), "context.draftOrders"),
        (lambda r: r["context"]["draftOrders"].update(entry=[1]), "context.draftOrders.entry[0]"),
        (lambda r: r.update(fhirAuthorization={"access_token": "x", "token_type": "Bearer", "expires_in": 300,
                                               "scope": "patient/*.read", "subject": "cds"}), "fhirServer"),
        (lambda r: r.update(fhirServer="ftp://x", fhirAuthorization=None), "fhirServer"),
        (lambda r: r.update(fhirServer="http://fhir.example.org", fhirAuthorization={"token_type": "Bearer"}),
         "fhirAuthorization.access_token"),
        (lambda r: r.update(fhirServer="http://fhir.example.org", fhirAuthorization={
            "access_token": "x", "token_type": "MAC", "expires_in": 1, "scope": "s", "subject": "s"}),
         "fhirAuthorization.token_type"),
        (lambda r: r.update(prefetch=[]), "prefetch"),
        (lambda r: r["prefetch"].update(patient="Patient/1"), "prefetch.patient"),
    ],
)
def test_wrong_or_missing_field_is_400_naming_it(service, mutate, field):
    request = hook_request("order-sign")
    mutate(request)
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 400, r.text
    issue = _issue(r)
    assert issue["expression"] == [field], issue
    assert field in issue["diagnostics"]


def test_hook_must_match_the_service(service):
    r = service.post("/cds-services/tpi-order-sign", hook_request("patient-view"))
    assert r.status_code == 400
    assert _issue(r)["expression"] == ["hook"] and "tpi-order-sign" in _issue(r)["diagnostics"]


def test_unknown_service_is_404(service):
    assert service.post("/cds-services/nope", hook_request("order-sign")).status_code == 404
    assert service.post("/cds-services/nope/feedback", {"feedback": []}).status_code == 404
    r = service.get("/no/such/path")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_wrong_method_is_405_with_an_outcome(service):
    r = service.get("/cds-services/tpi-order-sign")
    assert r.status_code == 405 and r.json()["resourceType"] == "OperationOutcome"


def test_body_over_the_limit_is_413_by_header_and_by_stream(start_service, evaluator):
    service = start_service(evaluator, max_body_bytes=10_000)
    big = hook_request("order-sign")
    big["context"]["note"] = "x" * 20_000
    r = service.post("/cds-services/tpi-order-sign", big)
    assert r.status_code == 413 and _issue(r)["code"] == "too-long"

    def chunks():  # no Content-Length: chunked transfer, the limit is enforced while reading
        for _ in range(50):
            yield b" " * 1000

    r = httpx.post(service.url + "/cds-services/tpi-order-sign", content=chunks(),
                   headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413


def test_default_body_limit_is_5_mb(service):
    assert service.config.max_body_bytes == 5 * 1024 * 1024
    r = service.post("/cds-services/tpi-order-sign", b" " * (5 * 1024 * 1024 + 1))
    assert r.status_code == 413


def test_engine_failure_is_an_operation_outcome_not_a_traceback(start_service, fake_evaluator):
    fake_evaluator.raise_error = RuntimeError(f"boom about {PATIENT_ID}")
    service = start_service(fake_evaluator)
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign"))
    assert r.status_code == 500
    assert r.json()["resourceType"] == "OperationOutcome" and PATIENT_ID not in r.text


def test_cors_preflight_and_headers(start_service, evaluator):
    service = start_service(evaluator, allowed_origins=("*",))  # open mode allows no origin by default (issue 10)
    r = httpx.options(service.url + "/cds-services/tpi-order-sign", headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 200
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    r = service.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert r.headers["access-control-allow-origin"] in ("*", "https://sandbox.cds-hooks.org")


def test_empty_selection_in_order_select_gives_no_cards(service):
    request = hook_request("order-select")
    request["context"]["selections"] = []
    r = service.post("/cds-services/tpi-order-select", request)
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_hook_instance_is_any_uuid(service):
    request = hook_request("patient-view")
    request["hookInstance"] = str(uuid.uuid1()).upper()
    assert service.post("/cds-services/tpi-patient-view", request).status_code == 200
