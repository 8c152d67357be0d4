"""What counts as current (rules/records.yaml) and one patient per evaluation."""

from __future__ import annotations

from datetime import date

import pytest

from cds_tpi.errors import InputError
from cds_tpi.facts import condition_record, is_current
from cds_tpi.fhir.patient import patient_problems
from cds_tpi.fhir.read import read_object
from cds_tpi.ruleset import load_rulebook

from .conftest import NOW, RULES

RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
WARFARIN = {"coding": [{"system": RX, "code": "855332", "display": "warfarin sodium 5 MG Oral Tablet"}]}
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}
TODAY = date(2026, 11, 24)


@pytest.fixture(scope="module")
def policy():
    return load_rulebook(RULES).records


@pytest.mark.parametrize("intent,reported,counts", [
    ("order", False, True), ("original-order", False, True), ("instance-order", False, True),
    ("proposal", False, False), ("plan", False, False), ("plan", True, True)])
def test_medication_request_intent(policy, intent, reported, counts):
    mr = {"resourceType": "MedicationRequest", "status": "active", "intent": intent}
    if reported:
        mr["reportedBoolean"] = True
    assert is_current(mr, policy.for_type("MedicationRequest"), TODAY) is counts


@pytest.mark.parametrize("status,counts", [("active", True), ("intended", False), ("on-hold", True),
                                           ("completed", False), ("not-taken", False), ("unknown", True)])
def test_medication_statement_status(policy, status, counts):
    assert is_current({"resourceType": "MedicationStatement", "status": status},
                      policy.for_type("MedicationStatement"), TODAY) is counts


def _bundle(*resources):
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def _cellulitis(onset: str, **extra):
    return {"resourceType": "Condition", "id": "dx1", "subject": {"reference": "Patient/p1"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
            "code": {"coding": [{"system": ICD, "code": "L03.311"}], "text": "Cellulitis of abdominal wall"},
            "onsetDateTime": onset, **extra}


def _rules(evaluator, *resources):
    return {c["source"]["topic"]["code"]: c for c in evaluator.evaluate_document(read_object(_bundle(PATIENT, *resources)), now=NOW).cards}


def test_old_encounter_diagnosis_of_an_acute_infection_is_history(evaluator):
    assert "local-infection" not in _rules(evaluator, _cellulitis("2024-03-02"))


def test_recent_encounter_diagnosis_counts_and_the_card_says_what_it_is(evaluator):
    cards = _rules(evaluator, _cellulitis("2026-11-10"))
    card = cards["local-infection"]
    assert "encounter diagnosis, no clinical status, dated 2026-11-10" in card["detail"]
    assert "problem list" not in card["detail"].lower()


def test_old_acute_condition_on_the_problem_list_follows_its_status(evaluator):
    active = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
    problem_list = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}]
    assert "local-infection" in _rules(evaluator, _cellulitis("2024-03-02", clinicalStatus=active, category=problem_list))
    # an encounter diagnosis marked active is not a problem-list entry: the window applies (audit 4 w02)
    assert "local-infection" not in _rules(evaluator, _cellulitis("2024-03-02", clinicalStatus=active))


def test_acute_encounter_diagnosis_is_dated_by_its_latest_date(evaluator):
    """An old onset recorded recently is current (the latest of onset and recordedDate); both old: history."""
    assert "local-infection" in _rules(evaluator, _cellulitis("2026-09-15", recordedDate="2026-11-22"))
    assert "local-infection" not in _rules(evaluator, _cellulitis("2026-09-15", recordedDate="2026-09-16"))


def test_undated_acute_condition_without_status_still_counts(evaluator):
    c = _cellulitis("2026-01-01")
    del c["onsetDateTime"]
    assert "local-infection" in _rules(evaluator, c)


def test_condition_record_words():
    assert condition_record(_cellulitis("x"), date(2026, 11, 10)) == "encounter diagnosis, no clinical status, dated 2026-11-10"
    pl = {"category": [{"coding": [{"code": "problem-list-item"}]}], "clinicalStatus": {"coding": [{"code": "active"}]}}
    assert condition_record(pl, None) == "problem list, active, undated"


def test_intended_statement_gives_no_anticoagulant_card(evaluator):
    ms = {"resourceType": "MedicationStatement", "id": "ms1", "status": "intended", "subject": {"reference": "Patient/p1"},
          "medicationCodeableConcept": WARFARIN}
    assert "anticoagulant" not in _rules(evaluator, ms)


def test_proposal_gives_no_anticoagulant_card_but_a_reported_plan_does(evaluator):
    mr = {"resourceType": "MedicationRequest", "id": "mr1", "status": "active", "intent": "proposal",
          "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": WARFARIN}
    assert "anticoagulant" not in _rules(evaluator, mr)
    assert "anticoagulant" in _rules(evaluator, dict(mr, intent="plan", reportedBoolean=True))


# -- one patient -------------------------------------------------------------------------------------

def _located(*resources):
    return read_object(_bundle(*resources)).resources


def test_records_of_another_patient_are_named():
    other = {"resourceType": "Condition", "id": "c2", "subject": {"reference": "https://ehr.example/fhir/Patient/p2"}}
    pid, problems = patient_problems(_located(PATIENT, other), None)
    assert pid == "p1" and problems == ["Condition/c2 (at entry[1]) belongs to Patient/p2"]


def test_an_appointment_of_another_patient_is_named():
    """appointment-book: the Appointment's patient is a participant's actor (audit 4: another patient's
    appointment was evaluated with the context patient's record)."""
    appt = {"resourceType": "Appointment", "id": "a1", "status": "proposed",
            "participant": [{"actor": {"reference": "Practitioner/dr1"}, "status": "accepted"},
                            {"actor": {"reference": "Patient/other-9"}, "status": "needs-action"}]}
    _, problems = patient_problems(_located(PATIENT, appt), None)
    assert problems == ["Appointment/a1 (at entry[1]) belongs to Patient/other-9"]
    own = dict(appt, participant=[{"actor": {"reference": "Patient/p1"}, "status": "needs-action"}])
    assert patient_problems(_located(PATIENT, own), None) == ("p1", [])


MRN = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"  # an Epic-style MRN system


@pytest.mark.parametrize("value,problem", [("E1234", False), (" E1234 ", False), ("E9999", True)])
def test_an_identifier_only_subject_is_compared_with_the_patients_identifiers(value, problem):
    patient = dict(PATIENT, identifier=[{"system": MRN, "value": "E1234"}])
    cond = {"resourceType": "Condition", "id": "c2", "subject": {"identifier": {"system": MRN, "value": value}}}
    _, problems = patient_problems(_located(patient, cond), None)
    assert problems == ([f"Condition/c2 (at entry[1]) belongs to the patient with identifier {MRN}|{value}, not to Patient/p1"]
                        if problem else [])


def test_an_identifier_in_a_system_the_patient_lacks_is_not_judged():
    patient = dict(PATIENT, identifier=[{"system": MRN, "value": "E1234"}])
    cond = {"resourceType": "Condition", "id": "c2", "subject": {"identifier": {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "1"}}}
    assert patient_problems(_located(patient, cond), None) == ("p1", [])


def test_two_patients_in_one_bundle_are_an_error():
    _, problems = patient_problems(_located(PATIENT, dict(PATIENT, id="p2")), None)
    assert problems and "2 patients" in problems[0]


def test_urn_references_resolve_to_the_patient():
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111", "resource": PATIENT},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222", "resource": {
            "resourceType": "Condition", "id": "c1", "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}}}]}
    assert patient_problems(read_object(bundle).resources, None) == ("p1", [])


def test_evaluation_refuses_mixed_records(evaluator):
    other = {"resourceType": "MedicationRequest", "id": "m9", "status": "active", "intent": "order",
             "subject": {"reference": "Patient/p2"}, "medicationCodeableConcept": WARFARIN}
    with pytest.raises(InputError, match="MedicationRequest/m9 .* belongs to Patient/p2"):
        evaluator.evaluate_document(read_object(_bundle(PATIENT, other)), now=NOW)


def test_request_context_patient_decides(evaluator):
    request = {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
               "context": {"userId": "Practitioner/u", "patientId": "p2"}, "prefetch": {"patient": PATIENT}}
    with pytest.raises(InputError, match="Patient/p1 .* is not the patient of the request"):
        evaluator.evaluate_request(request, now=NOW)


def test_cli_exits_1_for_mixed_records(tmp_path):
    import json

    from click.testing import CliRunner

    from cds_tpi.cli import cli

    other = {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p2"}, "code": {"text": "x"}}
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(_bundle(PATIENT, other)))
    result = CliRunner().invoke(cli, ["evaluate", "--now", "2026-11-24", str(path)])
    assert result.exit_code == 1
    assert "belongs to Patient/p2" in result.output


@pytest.mark.parametrize("system,code", [
    ("urn:oid:2.16.840.1.113883.6.90", "L03.312"), ("http://hl7.org/fhir/sid/icd-10-cm", "L03312"),
    ("http://hl7.org/fhir/sid/icd-10-cm", "l03.312"), ("http://hl7.org/fhir/sid/icd-10-cm/", "L03.312")])
def test_code_systems_as_ehrs_send_them(system, code):
    term = load_rulebook(RULES).terminology
    assert "skin-soft-tissue-infections" in term.match([(system, code)], []).all
    assert "skin-soft-tissue-infections" in term.match([("urn:oid:2.16.840.1.113883.6.96", "128045006")], []).all


def test_a_negation_cue_never_vetoes_a_coded_match(evaluator):
    preg = {"resourceType": "Condition", "id": "preg", "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "77386006"}],
                     "text": "Pregnancy, not yet delivered; no complications"}}
    from cds_tpi.pipeline import Evaluator  # noqa: F401 - the session evaluator is used

    steroid = {"resourceType": "MedicationRequest", "id": "s1", "status": "draft", "intent": "order",
               "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": {"text": "triamcinolone acetonide 40 mg/mL"}}
    tpi = {"resourceType": "ServiceRequest", "id": "tpi", "status": "draft", "intent": "order", "subject": {"reference": "Patient/p1"},
           "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "20552"}]}, "bodySite": [{"text": "gluteus medius"}]}
    ev = evaluator.evaluate_resources([PATIENT, preg], draft_orders=[tpi, dict(steroid, basedOn=[{"reference": "ServiceRequest/tpi"}])], now=NOW)
    assert "pregnancy-steroid" in ev.rule_ids


def _administration(reason: str, when: str = "2026-11-21", status: str = "completed") -> dict:
    return {"resourceType": "MedicationAdministration", "id": "ma1", "status": status, "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": {"text": "triamcinolone acetonide 40 mg/mL injection"}, "effectiveDateTime": when,
            "reasonCode": [{"text": reason}], "dosage": {"route": {"text": "Intramuscular"}, "dose": {"value": 40, "unit": "mg"}}}


@pytest.mark.parametrize("reason,status,card", [
    ("Trigger point injection, left trapezius", "completed", True),   # a past TPI recorded only as an administration
    ("Allergic rhinitis", "completed", False),                        # an IM steroid shot for something else
    ("Trigger point injection, left trapezius", "not-done", False)])
def test_a_past_tpi_recorded_only_as_an_administration_counts(evaluator, reason, status, card):
    tpi = {"resourceType": "ServiceRequest", "id": "tpi", "status": "draft", "intent": "order", "subject": {"reference": "Patient/p1"},
           "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "20552"}]}, "bodySite": [{"text": "gluteus medius"}]}
    ev = evaluator.evaluate_resources([PATIENT, _administration(reason, status=status)], draft_orders=[tpi], now=NOW)
    assert ("repeat-interval" in ev.rule_ids) is card


LOINC = "http://loinc.org"


def _lab(code: str, oid: str = "o1", **value):
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": "2026-11-20", **value}


def _observation_facts(evaluator, *resources):
    from cds_tpi.facts import FactBuilder, Inputs
    book = load_rulebook(RULES)
    return FactBuilder(book.terminology, book.records, NOW).build(Inputs(record=[PATIENT, *resources]))


@pytest.mark.parametrize("value,expected", [
    ({"valueQuantity": {"value": 45000, "unit": "/mm3"}}, (45.0, "10*9/L", None)),
    ({"valueQuantity": {"value": 45000, "unit": "cells/uL"}}, (45.0, "10*9/L", None)),
    ({"valueQuantity": {"value": 45, "unit": "x10E3/uL"}}, (45.0, "10*9/L", None)),
    ({"valueQuantity": {"value": 45, "unit": "10^9/L"}}, (45.0, "10*9/L", None)),
    ({"valueQuantity": {"value": 45, "unit": "k/ul"}}, (45.0, "10*9/L", None)),
    ({"valueString": "<10"}, (10.0, "10*9/L", "<")),
    ({"valueString": "≥ 150 K/uL"}, (150.0, "10*9/L", ">=")),
    ({"valueQuantity": {"value": 20, "comparator": "<", "unit": "K/uL"}}, (20.0, "10*9/L", "<")),
])
def test_platelet_units_and_bounds_are_normalised(evaluator, value, expected):
    facts = _observation_facts(evaluator, _lab("777-3", **value))
    obs = next(f for f in facts if f["t"] == "observation")
    assert (obs.get("value"), obs.get("unit"), obs.get("comparator")) == expected
    assert not [f for f in facts if f["t"] == "gap"]


@pytest.mark.parametrize("value,why", [
    ({"valueQuantity": {"value": 45, "unit": "per HPF"}}, "cannot be converted"),
    ({"valueQuantity": {"value": 45000}}, "no unit"),
    ({"valueString": "clumped"}, "not a number"),
    ({}, "no value"),
])
def test_unreadable_newest_platelet_count_is_a_gap(evaluator, value, why):
    facts = _observation_facts(evaluator, _lab("777-3", **value))
    assert "value" not in next(f for f in facts if f["t"] == "observation")
    gaps = [f for f in facts if f["t"] == "gap"]
    assert len(gaps) == 1 and why in gaps[0]["why"] and "Observation/o1" in gaps[0]["what"]


@pytest.mark.parametrize("unit,value,kg", [("KG", 40, 40.0), ("Kg", 40, 40.0), ("kilograms", 40, 40.0), ("LBS", 88.2, 40.0068),
                                          ("pounds", 88.2, 40.0068), ("[lb_av]", 88.2, 40.0068), ("oz", 1411, 40.0012), ("g", 40000, 40.0)])
def test_weight_units_are_normalised_to_kg(evaluator, unit, value, kg):
    facts = _observation_facts(evaluator, _lab("8335-2", valueQuantity={"value": value, "unit": unit}))
    obs = next(f for f in facts if f["t"] == "observation")
    assert (obs.get("value"), obs.get("unit")) == (kg, "kg")


# -- HbA1c in IFCC units (audit 2 r14, r15) and quantitative hCG (r13): value-set units ---------------------
@pytest.mark.parametrize("code,value,expected", [
    ("59261-8", {"valueQuantity": {"value": 75, "unit": "mmol/mol", "system": "http://unitsofmeasure.org", "code": "mmol/mol"}}, (9.013, "%")),
    ("4548-4", {"valueQuantity": {"value": 38, "unit": "mmol/mol"}}, (5.6282, "%")),     # IFCC units under the NGSP code
    ("4548-4", {"valueQuantity": {"value": 48, "unit": "mmol/mol"}}, (6.543, "%")),      # 48 mmol/mol is the 6.5 % threshold
    ("4548-4", {"valueString": "48 mmol/mol H"}, (6.543, "%")),
    ("4548-4", {"valueQuantity": {"value": 7.2, "unit": "%"}}, (7.2, "%")),
    ("4548-4", {"valueQuantity": {"value": 7.2, "unit": "% "}}, (7.2, "%")),
    ("21198-7", {"valueQuantity": {"value": 15230, "unit": "m[IU]/mL"}}, (15230.0, "[IU]/L")),
    ("21198-7", {"valueQuantity": {"value": 30, "unit": "mIU/mL"}}, (30.0, "[IU]/L")),
    ("19080-1", {"valueQuantity": {"value": 30, "unit": "IU/L"}}, (30.0, "[IU]/L")),
])
def test_value_set_units_convert_with_factor_and_offset(evaluator, code, value, expected):
    """records.yaml observation_values units: a conversion only that value set's results get (HbA1c mmol/mol ->
    % by the NGSP-IFCC master equation, % = 0.09148 x mmol/mol + 2.152: not a pure factor)."""
    facts = _observation_facts(evaluator, _lab(code, **value))
    obs = next(f for f in facts if f["t"] == "observation")
    assert (obs.get("value"), obs.get("unit")) == expected
    assert not [f for f in facts if f["t"] == "gap"]


@pytest.mark.parametrize("code,value,why", [
    ("4548-4", {"valueQuantity": {"value": 7.2, "unit": "mg/dL"}}, "cannot be converted to %"),
    ("4548-4", {"valueQuantity": {"value": 7.2}}, "no unit"),                 # % or mmol/mol: not guessed
    ("21198-7", {"valueQuantity": {"value": 3.1, "unit": "pmol/L"}}, "cannot be converted to [IU]/L"),
])
def test_an_hba1c_or_hcg_in_another_unit_is_named_not_compared(evaluator, code, value, why):
    facts = _observation_facts(evaluator, _lab(code, **value))
    assert "value" not in next(f for f in facts if f["t"] == "observation")
    gaps = [f for f in facts if f["t"] == "gap"]
    assert len(gaps) == 1 and why in gaps[0]["why"]


def test_mmol_per_mol_is_converted_for_hba1c_only(evaluator):
    """The offset conversion belongs to the hba1c value set; observation_units (read for every set) does not
    know mmol/mol, so no other analyte is ever converted with HbA1c's equation."""
    book = load_rulebook(RULES)
    assert not any(u.replace(" ", "").lower() == "mmol/mol" for u in book.records.observation_units)
    assert book.records.observation_values["hba1c"]["units"]["mmol/mol"] == {"factor": 0.09148, "offset": 2.152}


def _kenalog_order():
    tpi = {"resourceType": "ServiceRequest", "id": "tpi", "status": "draft", "intent": "order", "subject": {"reference": "Patient/p1"},
           "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "20552"}]}, "bodySite": [{"text": "gluteus medius"}]}
    steroid = {"resourceType": "MedicationRequest", "id": "s1", "status": "draft", "intent": "order", "subject": {"reference": "Patient/p1"},
               "medicationCodeableConcept": {"text": "triamcinolone acetonide 40 mg/mL"}, "basedOn": [{"reference": "ServiceRequest/tpi"}]}
    return [tpi, steroid]


@pytest.mark.parametrize("mmol,card", [(75, True), (48, True), (47, False), (38, False)])
def test_hba1c_in_mmol_per_mol_against_the_percent_threshold(evaluator, mmol, card):
    lab = _lab("59261-8", valueQuantity={"value": mmol, "unit": "mmol/mol"})
    ev = evaluator.evaluate_resources([PATIENT, lab], draft_orders=_kenalog_order(), now=NOW)
    assert ("diabetes-steroid" in ev.rule_ids) is card


SCT = "http://snomed.info/sct"


@pytest.mark.parametrize("records,card", [
    ([_lab("21198-7", valueQuantity={"value": 15230, "unit": "m[IU]/mL"})], True),
    ([_lab("21198-7", valueQuantity={"value": 25, "unit": "mIU/mL"})], True),                  # the cut-off itself counts
    ([_lab("21198-7", valueQuantity={"value": 12, "unit": "mIU/mL"})], False),                 # equivocal: not counted
    ([_lab("21198-7", valueQuantity={"value": 30, "comparator": "<", "unit": "mIU/mL"})], False),  # a bound below
    ([_lab("21198-7", valueString=">1000 mIU/mL")], True),
    ([_lab("21198-7", valueQuantity={"value": 15230, "unit": "m[IU]/mL"}) | {"effectiveDateTime": "2026-10-01"}], False),  # over 30 days
    # a newer negative qualitative test or 'not pregnant' status wins over the quantitative result
    ([_lab("21198-7", valueQuantity={"value": 15230, "unit": "m[IU]/mL"}) | {"effectiveDateTime": "2026-11-10"},
      _lab("2106-3", "o2", valueCodeableConcept={"coding": [{"system": SCT, "code": "260385009"}]})], False),
    ([_lab("21198-7", valueQuantity={"value": 15230, "unit": "m[IU]/mL"}) | {"effectiveDateTime": "2026-11-10"},
      _lab("11449-6", "o2", valueCodeableConcept={"coding": [{"system": SCT, "code": "60001007"}]})], False),
    # ... and an older negative does not
    ([_lab("21198-7", valueQuantity={"value": 15230, "unit": "m[IU]/mL"}),
      _lab("2106-3", "o2", valueCodeableConcept={"coding": [{"system": SCT, "code": "260385009"}]}) | {"effectiveDateTime": "2026-11-10"}], True),
])
def test_a_quantitative_hcg_counts_as_a_pregnancy_test(evaluator, records, card):
    ev = evaluator.evaluate_resources([PATIENT, *records], draft_orders=_kenalog_order(), now=NOW)
    assert ("pregnancy-steroid" in ev.rule_ids) is card


@pytest.mark.parametrize("answer,card", [("77386006", True), ("60001007", False)])
def test_pregnancy_status_under_the_older_loinc_11449_6(evaluator, answer, card):
    status = _lab("11449-6", valueCodeableConcept={"coding": [{"system": SCT, "code": answer}]})
    ev = evaluator.evaluate_resources([PATIENT, status], draft_orders=_kenalog_order(), now=NOW)
    assert ("pregnancy-steroid" in ev.rule_ids) is card


# -- a plan that is a home medication (audit-3 m17) ----------------------------------------------------

MR_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"


@pytest.mark.parametrize("intent,category,counts", [
    ("plan", "community", True), ("plan", "patientspecified", True), ("proposal", "community", True),
    ("plan", "inpatient", False), ("plan", "outpatient", False), ("plan", "discharge", False), ("plan", None, False)])
def test_a_plan_of_a_home_medication_category_counts(policy, intent, category, counts):
    mr = {"resourceType": "MedicationRequest", "status": "active", "intent": intent}
    if category:
        mr["category"] = [{"coding": [{"system": MR_CATEGORY, "code": category}]}]
    assert is_current(mr, policy.for_type("MedicationRequest"), TODAY) is counts


def test_a_category_in_unvalidated_json_does_not_crash(policy):
    for category in ("community", [None, "x", {"coding": "community"}], {"coding": [{"code": "community"}]}):
        is_current({"resourceType": "MedicationRequest", "status": "active", "intent": "plan", "category": category},
                   policy.for_type("MedicationRequest"), TODAY)


def test_a_community_plan_gives_the_anticoagulant_card_and_an_inpatient_plan_does_not(evaluator):
    mr = {"resourceType": "MedicationRequest", "id": "mr1", "status": "active", "intent": "plan",
          "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": WARFARIN,
          "category": [{"coding": [{"system": MR_CATEGORY, "code": "community"}]}]}
    assert "anticoagulant" in _rules(evaluator, mr)
    inpatient = dict(mr, category=[{"coding": [{"system": MR_CATEGORY, "code": "inpatient"}]}])
    assert "anticoagulant" not in _rules(evaluator, inpatient)


# -- long-term anticoagulant use as a diagnosis (audit-3 m15) -----------------------------------------

def _z7901(**extra):
    return {"resourceType": "Condition", "id": "z", "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": ICD, "code": "Z79.01", "display": "Long term (current) use of anticoagulants"}]},
            # on the problem list: an active entry there follows its status (an encounter diagnosis of 400 days
            # ago would be past its 365-day window, records.yaml condition_windows)
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
            "recordedDate": "2025-10-20", **extra}


def test_z79_01_with_no_anticoagulant_listed_warns_and_says_so(evaluator):
    card = _rules(evaluator, _z7901())["anticoagulant"]
    assert card["indicator"] == "warning"
    assert "Long term (current) use of anticoagulants" in card["summary"] and "patient takes" not in card["summary"]
    assert "the medication list shows no anticoagulant" in card["detail"]


def test_z79_01_beside_a_listed_anticoagulant_names_the_drug(evaluator):
    mr = {"resourceType": "MedicationRequest", "id": "mr1", "status": "active", "intent": "order",
          "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": WARFARIN}
    card = _rules(evaluator, _z7901(), mr)["anticoagulant"]
    assert "patient takes warfarin" in card["summary"] and "shows no anticoagulant" not in card["detail"]


def test_resolved_z79_01_and_z79_02_give_no_anticoagulant_card(evaluator):
    resolved = _z7901(clinicalStatus={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]})
    assert "anticoagulant" not in _rules(evaluator, resolved)
    antiplatelet = _z7901(code={"coding": [{"system": ICD, "code": "Z79.02", "display": "Long term (current) use of antithrombotics/antiplatelets"}]})
    assert "anticoagulant" not in _rules(evaluator, antiplatelet)


# -- acute systemic infections (audit-3b i20, i21) -----------------------------------------------------

def _pneumonia(onset: str, code: str = "J18.9", text: str = "Pneumonia, unspecified organism"):
    return _cellulitis(onset, code={"coding": [{"system": ICD, "code": code}], "text": text})


def test_a_recent_pneumonia_encounter_diagnosis_is_a_systemic_infection_warning(evaluator):
    card = _rules(evaluator, _pneumonia("2026-11-22"))["systemic-infection"]
    assert card["indicator"] == "warning" and "Pneumonia" in card["summary"]


def test_an_old_pneumonia_encounter_diagnosis_is_history(evaluator):
    assert "systemic-infection" not in _rules(evaluator, _pneumonia("2026-09-25"))


@pytest.mark.parametrize("code,text,fires", [
    ("U07.1", "COVID-19", True), ("J11.1", "Influenza", True),
    ("Z23", "Need for influenza vaccination", False), ("Z20.822", "Exposure to COVID-19", False),
    ("U09.9", "Post COVID-19 condition", False)])
def test_influenza_and_covid_but_not_vaccination_or_exposure(evaluator, code, text, fires):
    assert ("systemic-infection" in _rules(evaluator, _pneumonia("2026-11-22", code, text))) is fires


# -- condition windows (records.yaml condition_windows; audit 4 w02, w03, w05, w06, w18, w29, w30) -------------

ACTIVE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
PROBLEM_LIST = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}]


def _dx(onset: str, code: str, text: str, **extra):
    return _cellulitis(onset, code={"coding": [{"system": ICD, "code": code}], "text": text}, **extra)


def test_an_old_encounter_diagnosis_marked_active_is_still_history(evaluator):
    """EHRs send encounter diagnoses with clinicalStatus active for ever (w02, w30): the window applies."""
    assert "local-infection" not in _rules(evaluator, _cellulitis("2024-11-02", clinicalStatus=ACTIVE))
    assert "systemic-infection" not in _rules(evaluator, _dx("2025-09-01", "J18.9", "Pneumonia, unspecified organism", clinicalStatus=ACTIVE))
    card = _rules(evaluator, _cellulitis("2026-11-18", clinicalStatus=ACTIVE))["local-infection"]
    assert "encounter diagnosis, active, dated 2026-11-18" in card["detail"]


def test_a_condition_with_no_category_is_not_on_the_problem_list(evaluator):
    c = _cellulitis("2024-11-02", clinicalStatus=ACTIVE)
    del c["category"]
    assert "local-infection" not in _rules(evaluator, c)


def test_a_problem_list_entry_with_a_status_follows_it_however_old(evaluator):
    assert "local-infection" in _rules(evaluator, _cellulitis("2024-11-02", clinicalStatus=ACTIVE, category=PROBLEM_LIST))
    plt = _dx("2020-01-01", "D69.6", "Thrombocytopenia, unspecified", clinicalStatus=ACTIVE, category=PROBLEM_LIST)
    card = _rules(evaluator, plt)["bleeding-disorder"]
    assert card["indicator"] == "critical" and "problem list, active" in card["detail"]
    # on the problem list with no status: unknown, windowed like an encounter diagnosis
    assert "bleeding-disorder" not in _rules(evaluator, _dx("2020-01-01", "D69.6", "Thrombocytopenia", category=PROBLEM_LIST))


def test_window_lookup_is_pure(policy):
    from cds_tpi.facts import condition_window
    enc = _cellulitis("2026-01-01", clinicalStatus=ACTIVE)
    assert condition_window(enc, ["skin-soft-tissue-infections"], policy) == 30
    assert condition_window(enc, ["thrombocytopenia", "bleeding-disorders"], policy) == 365
    assert condition_window(enc, ["diabetes", "gestational-diabetes"], policy) == 300
    assert condition_window(enc, ["diabetes"], policy) is None
    assert condition_window(dict(enc, category=PROBLEM_LIST), ["thrombocytopenia"], policy) is None
    assert condition_window({"category": PROBLEM_LIST}, ["thrombocytopenia"], policy) == 365   # no status


@pytest.mark.parametrize("code,text,rule", [
    ("D69.6", "Thrombocytopenia, unspecified", "bleeding-disorder"),
    ("D68.32", "Hemorrhagic disorder due to extrinsic circulating anticoagulants", "bleeding-disorder"),
    ("D68.4", "Acquired coagulation factor deficiency", "bleeding-disorder"),
    ("Z79.01", "Long term (current) use of anticoagulants", "anticoagulant")])
def test_transient_bleeding_conditions_count_for_a_year_as_encounter_diagnoses(evaluator, code, text, rule):
    assert rule in _rules(evaluator, _dx("2026-03-01", code, text, clinicalStatus=ACTIVE))
    assert rule not in _rules(evaluator, _dx("2025-09-01", code, text))
    assert rule not in _rules(evaluator, _dx("2023-05-01", code, text, clinicalStatus=ACTIVE))


@pytest.mark.parametrize("code,text", [("D66", "Hereditary factor VIII deficiency"), ("D68.0", "Von Willebrand's disease")])
def test_hereditary_bleeding_disorders_are_never_windowed(evaluator, code, text):
    assert _rules(evaluator, _dx("2015-01-01", code, text))["bleeding-disorder"]["indicator"] == "critical"


def test_gestational_diabetes_counts_only_for_a_pregnancy(evaluator):
    gdm = lambda onset: _dx(onset, "O24.410", "Gestational diabetes mellitus in pregnancy, diet controlled")  # noqa: E731
    facts_old = _condition_vs(evaluator, gdm("2023-08-01"))
    facts_new = _condition_vs(evaluator, gdm("2026-06-01"))
    assert facts_old == [] and "diabetes" in facts_new[0]
    # by name only (a SNOMED-only or free-text record) alike
    assert _condition_vs(evaluator, _cellulitis("2023-08-01", code={"text": "Gestational diabetes"})) == []


def _condition_vs(evaluator, *conditions):
    from cds_tpi.facts import FactBuilder, Inputs
    facts = FactBuilder(evaluator.book.terminology, evaluator.book.records, NOW).build(Inputs(record=[PATIENT, *conditions]))
    return [f["vs"] for f in facts if f["t"] == "condition"]
