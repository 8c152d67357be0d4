"""Missing prefetch keys fetched from fhirServer: the real medplum FHIR server and a fault stub."""

from __future__ import annotations

import time

import pytest

from conftest import PATIENT_ID, full_prefetch, hook_request

pytestmark = pytest.mark.timeout(120)

AUTH = {"token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read", "subject": "cds-tpi"}


def _codes(response) -> set[str]:
    return {c["source"]["topic"]["code"] for c in response.json()["cards"]}


def _missing_detail(response) -> str:
    return " ".join(c.get("detail", "") + c["summary"] for c in response.json()["cards"]
                    if c["source"]["topic"]["code"] == "missing-data")


@pytest.fixture
def service(start_service, evaluator):
    return start_service(evaluator, fhir_read_timeout=0.5, fhir_connect_timeout=0.5, fhir_total_timeout=1.5)


def with_server(request: dict, base: str, token: str = "stub-token") -> dict:
    return {**request, "fhirServer": base, "fhirAuthorization": {**AUTH, "access_token": token}}


# --- the real FHIR server (medplum) ----------------------------------------------------------------

def test_absent_prefetch_is_fetched_from_the_fhir_server(service, medplum):
    request = with_server(hook_request("order-sign"), medplum.url, medplum.token)
    del request["prefetch"]
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 200, r.text
    assert "anticoagulant" in _codes(r)  # warfarin came from the server


def test_partial_prefetch_fetches_only_missing_keys(service, medplum):
    prefetch = full_prefetch()
    del prefetch["medicationRequests"]
    prefetch["conditions"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    request = with_server(hook_request("order-sign", prefetch=prefetch), medplum.url, medplum.token)
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 200, r.text
    assert "anticoagulant" in _codes(r)


def test_same_cards_from_prefetch_and_from_the_fhir_server(service, medplum):
    sent = service.post("/cds-services/tpi-order-sign", hook_request("order-sign")).json()["cards"]
    request = with_server(hook_request("order-sign"), medplum.url, medplum.token)
    del request["prefetch"]
    fetched = service.post("/cds-services/tpi-order-sign", request).json()["cards"]
    assert sorted(c["summary"] for c in sent) == sorted(c["summary"] for c in fetched)


def test_wrong_fhir_token_gives_412(service, medplum, caplog):
    request = with_server(hook_request("order-sign"), medplum.url, "wrong-token")
    del request["prefetch"]
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 412
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "could not be fetched" in r.text and "wrong-token" not in r.text and PATIENT_ID not in r.text
    assert "refused access" in caplog.text and "wrong-token" not in caplog.text  # open mode: the reason is logged


def test_unknown_patient_on_the_fhir_server_gives_412(service, medplum):
    request = with_server(hook_request("order-sign"), medplum.url, medplum.token)
    request["context"]["patientId"] = "no-such-patient"
    del request["prefetch"]
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 412 and "'patient'" in r.text


# --- no FHIR server ----------------------------------------------------------------------------

def test_required_data_missing_without_fhir_server_is_412_naming_the_keys(service):
    prefetch = full_prefetch()
    del prefetch["patient"], prefetch["allergies"]
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign", prefetch=prefetch))
    assert r.status_code == 412
    diagnostics = [i["diagnostics"] for i in r.json()["issue"]]
    assert len(diagnostics) == 2 and any("'patient'" in d for d in diagnostics) and any("'allergies'" in d for d in diagnostics)


def test_optional_data_missing_gives_a_missing_data_card(service):
    prefetch = full_prefetch()
    del prefetch["procedures"], prefetch["observations"]
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign", prefetch=prefetch))
    assert r.status_code == 200
    detail = _missing_detail(r)
    assert "procedures of the last 12 months" in detail and "INR" in detail


# --- the fault-injecting stub ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["slow", "error500", "garbage", "wrongtype"])
def test_fhir_server_faults_give_412_within_the_budget(service, fhir_stub, mode):
    request = with_server(hook_request("order-sign"), fhir_stub.base(mode))
    del request["prefetch"]
    started = time.monotonic()
    r = service.post("/cds-services/tpi-order-sign", request)
    assert time.monotonic() - started < 3.0
    assert r.status_code == 412, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("mode", "reason"), [
    ("slow", "timed out"), ("error500", "could not be fetched"), ("garbage", "could not be fetched"),
    ("loop", "loop"), ("foreign", "another host"), ("endless", "pages"),
])
def test_optional_data_lost_to_faults_gives_a_missing_data_card(service, fhir_stub, mode, reason, caplog):
    prefetch = full_prefetch()
    del prefetch["procedures"]
    started = time.monotonic()
    r = service.post("/cds-services/tpi-order-sign", with_server(hook_request("order-sign", prefetch=prefetch),
                                                                 fhir_stub.base(mode)))
    assert time.monotonic() - started < 3.0
    assert r.status_code == 200, r.text
    assert "anticoagulant" in _codes(r)
    detail = _missing_detail(r)
    # open mode: the caller reads the generic text, the log the reason
    assert "procedures of the last 12 months: could not be fetched from the FHIR server" in detail, detail
    assert any("key procedures" in m and reason in m for m in caplog.messages), caplog.messages


def test_next_pages_are_followed_and_the_token_sent(service, fhir_stub):
    fhir_stub.state.requests.clear()
    prefetch = full_prefetch()
    del prefetch["conditions"]
    r = service.post("/cds-services/tpi-order-sign",
                     with_server(hook_request("order-sign", prefetch=prefetch), fhir_stub.base("pages"), "tok-123"))
    assert r.status_code == 200, r.text
    seen = [(path, auth) for path, auth in fhir_stub.state.requests if "/Condition" in path]
    assert len(seen) == 3 and all(auth == "Bearer tok-123" for _, auth in seen)
    assert f"patient={PATIENT_ID}" in seen[0][0]


def test_a_first_page_in_the_prefetch_gets_its_next_pages_fetched(service, fhir_stub):
    fhir_stub.state.requests.clear()
    prefetch = full_prefetch()
    prefetch["conditions"]["link"] = [{"relation": "next", "url": f"{fhir_stub.base('pages')}/Condition?page=2"}]
    r = service.post("/cds-services/tpi-order-sign",
                     with_server(hook_request("order-sign", prefetch=prefetch), fhir_stub.base("pages")))
    assert r.status_code == 200
    assert len([p for p, _ in fhir_stub.state.requests if "/Condition" in p]) == 2


def test_a_first_page_without_fhir_server_is_incomplete_required_data(service, fhir_stub):
    prefetch = full_prefetch()
    prefetch["conditions"]["link"] = [{"relation": "next", "url": f"{fhir_stub.base('pages')}/Condition?page=2"}]
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign", prefetch=prefetch))
    assert r.status_code == 412 and "first page" in r.text
