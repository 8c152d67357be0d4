"""The read stage (cds_tpi/fhir/read.py): which record lists a CDS Hooks request shows were looked up,
from the prefetch keys this service declares (cds_tpi/fhir/prefetch_keys.py), never from key names."""

from __future__ import annotations

import pytest

from cds_tpi.fhir.prefetch_keys import CATEGORIES, KEYS, category_of_key
from cds_tpi.fhir.read import read_object
from cds_tpi.service.discovery import default_prefetch_keys


def _request(prefetch: dict) -> dict:
    return {"hook": "order-sign", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/1", "patientId": "p1", "draftOrders": {"resourceType": "Bundle", "entry": []}},
            "prefetch": prefetch}


@pytest.mark.parametrize("spec", KEYS, ids=lambda s: s.key)
def test_a_declared_key_that_is_null_was_looked_up(spec):
    doc = read_object(_request({spec.key: None}), "req")
    assert doc.checked == {CATEGORIES[spec.resource_type]}


def test_an_empty_searchset_under_a_declared_key_was_looked_up():
    doc = read_object(_request({"conditions": {"resourceType": "Bundle", "type": "searchset", "total": 0}}), "req")
    assert doc.checked == {"conditions"}


def test_a_key_this_service_does_not_declare_is_not_guessed_from_its_name():
    """'problemList': null used to count as the conditions looked up (its name has 'problem'); a null
    of a key we never asked for says nothing, so the missing-data card still names the problem list."""
    doc = read_object(_request({"problemList": None, "myMedications": None}), "req")
    assert doc.checked == set()


def test_an_undeclared_key_is_read_by_its_content():
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": 0,
              "link": [{"relation": "self", "url": "https://ehr.example.org/fhir/AllergyIntolerance?patient=p1"}]}
    assert read_object(_request({"allergyList": bundle}), "req").checked == {"allergies"}


def test_discovery_declares_exactly_these_keys_with_their_record_lists():
    assert [(k.key, k.records) for k in default_prefetch_keys()] == [(s.key, category_of_key(s.key)) for s in KEYS]
    assert category_of_key("problemList") is None


# -- the planned order of a plain bundle (Document.with_drafts) ---------------------------------------

_CPT = "http://www.ama-assn.org/go/cpt"


def _tpi_sr(status="active", sid="sr-tpi"):
    return {"resourceType": "ServiceRequest", "id": sid, "status": status, "intent": "order",
            "code": {"coding": [{"system": _CPT, "code": "20553"}], "text": "TRIGGER POINT INJECTION"},
            "subject": {"reference": "Patient/p1"}, "bodySite": [{"text": "Left gluteus medius"}]}


def _kenalog(status="active", based_on="ServiceRequest/sr-tpi"):
    mr = {"resourceType": "MedicationRequest", "id": "mr-kenalog", "status": status, "intent": "order",
          "subject": {"reference": "Patient/p1"},
          "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1085754"}],
                                        "text": "KENALOG-40 40 MG/ML IJ SUSP"},
          "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 40, "unit": "mg"}}]}]}
    if based_on:
        mr["basedOn"] = [{"reference": based_on}]
    return mr


_DIABETES = {"resourceType": "Condition", "id": "dm", "subject": {"reference": "Patient/p1"},
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}]}}
_PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01"}


def _bundle(*resources):
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def _planned(evaluator, *resources):
    doc = read_object(_bundle(*resources), "b").with_drafts(evaluator.is_tpi, evaluator.book.records)
    return sorted(f"{loc.resource['resourceType']}/{loc.resource.get('id')}" for loc in doc.draft_orders)


@pytest.mark.parametrize("status,planned", [("active", True), ("draft", True), ("completed", False), ("revoked", False),
                                            ("on-hold", True), ("entered-in-error", False), ("unknown", False)])
def test_a_tpi_order_in_a_status_records_yaml_counts_is_the_planned_order(evaluator, status, planned):
    """audit-2 r11: a TPI ServiceRequest sent 'active' (signed) in a plain bundle was read as history
    and its Kenalog as a home medication: no card. The statuses come from records.yaml ServiceRequest."""
    got = _planned(evaluator, _PATIENT, _tpi_sr(status), _kenalog())
    assert got == (["MedicationRequest/mr-kenalog", "ServiceRequest/sr-tpi"] if planned else [])
    assert (status in evaluator.book.records.for_type("ServiceRequest").status) is planned


@pytest.mark.parametrize("proc_status,planned", [("completed", False), ("in-progress", False),
                                                 ("preparation", True), ("not-done", True), ("entered-in-error", True)])
def test_a_tpi_order_performed_by_a_procedure_based_on_it_is_history(evaluator, proc_status, planned):
    """A Procedure basedOn the active order in a status records.yaml counts as done means it was done;
    any other Procedure status does not (reading a planned order as history would silence its checks)."""
    done = {"resourceType": "Procedure", "id": "proc1", "status": proc_status, "subject": {"reference": "Patient/p1"},
            "code": {"text": "Trigger point injection"}, "basedOn": [{"reference": "ServiceRequest/sr-tpi"}],
            "performedDateTime": "2026-11-20"}
    got = _planned(evaluator, _PATIENT, _tpi_sr("active"), _kenalog(), done)
    assert ("ServiceRequest/sr-tpi" in got) is planned


def test_an_active_order_that_is_not_a_tpi_and_a_draft_one_keep_their_reading(evaluator):
    cbc = {"resourceType": "ServiceRequest", "id": "cbc", "status": "active", "intent": "order",
           "subject": {"reference": "Patient/p1"}, "code": {"text": "CBC"}}
    assert _planned(evaluator, _PATIENT, cbc, _kenalog(based_on="ServiceRequest/cbc")) == []
    # without a policy (tests, tools): only drafts, as before
    doc = read_object(_bundle(_PATIENT, _tpi_sr("active"), _kenalog()), "b").with_drafts(evaluator.is_tpi)
    assert doc.draft_orders == []


def _both_front_doors(evaluator, status):
    """(plain bundle evaluation, CDS Hooks order-sign evaluation) of a diabetic patient's TPI order in
    `status` with its Kenalog."""
    from .conftest import NOW
    plain = evaluator.evaluate_document(read_object(_bundle(_PATIENT, _DIABETES, _tpi_sr(status), _kenalog()), "b"), now=NOW)
    hook = {"hook": "order-sign", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/u", "patientId": "p1", "draftOrders": _bundle(_tpi_sr(status), _kenalog())},
            "prefetch": {"patient": _PATIENT, "conditions": _bundle(_DIABETES)}}
    return plain, evaluator.evaluate_document(read_object(hook, "h"), now=NOW)


@pytest.mark.parametrize("status", ["active", "on-hold"])
def test_a_planned_tpi_order_gives_the_same_cards_from_both_front_doors(evaluator, status):
    """The plain bundle and the CDS Hooks order-sign request of the same order agree: active, and on hold
    (audit-3b o04/o09: awaiting prior authorisation, still planned by records.yaml ServiceRequest
    statuses): its Kenalog is the injectate, and the service gate evaluates it."""
    plain, hooked = _both_front_doors(evaluator, status)
    assert "diabetes-steroid" in plain.rule_ids
    assert sorted(plain.rule_ids) == sorted(hooked.rule_ids)
    assert evaluator.is_tpi_order([_tpi_sr(status), _kenalog()])


def test_a_revoked_tpi_order_stays_history(evaluator):
    from .conftest import NOW
    revoked = evaluator.evaluate_document(read_object(_bundle(_PATIENT, _DIABETES, _tpi_sr("revoked"), _kenalog()), "b"), now=NOW)
    assert not any(f["t"] == "order" for f in revoked.facts)


def test_an_outcome_entry_of_a_searchset_says_the_list_may_be_incomplete():
    """Epic puts an OperationOutcome entry (search.mode outcome) in a searchset when some records were
    withheld: the list is not complete, and missing-data must say so (audit 4, HTTP)."""
    from cds_tpi.fhir.read import read_object
    allergies = {"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/p1"},
                      "code": {"text": "Penicillin"}}, "search": {"mode": "match"}},
        {"resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "warning", "code": "suppressed", "diagnostics": "The client is not authorized to see some of the data"}]},
         "search": {"mode": "outcome"}}]}
    request = {"hook": "patient-view", "hookInstance": "x", "context": {"userId": "Practitioner/u", "patientId": "p1"},
               "prefetch": {"allergies": allergies}}
    doc = read_object(request)
    assert doc.notes == ["prefetch 'allergies': the EHR says the list may be incomplete (The client is not authorized to see some of the data)"]
    informational = dict(allergies, entry=[allergies["entry"][0], {"resource": {"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "diagnostics": "2 results"}]}, "search": {"mode": "outcome"}}])
    assert read_object(dict(request, prefetch={"allergies": informational})).notes == []
