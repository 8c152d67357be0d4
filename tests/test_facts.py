"""Facts and record policy: what counts as current, what counts as looked up, text matching limits."""

from __future__ import annotations

import copy

import pytest

from cds_tpi.fhir.read import read_object

from .conftest import NOW

RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
WARFARIN = {"coding": [{"system": RX, "code": "855332", "display": "warfarin sodium 5 MG Oral Tablet"}]}
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}


def _request(**prefetch):
    base = {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/u", "patientId": "p1"}, "prefetch": {"patient": PATIENT}}
    base["prefetch"].update(prefetch)
    return base


def _searchset(*resources):
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def _notes(evaluation):
    card = next((c for c in evaluation.cards if c["source"]["topic"]["code"] == "missing-data"), None)
    return card["detail"] if card else ""


def test_missing_prefetch_keys_are_reported_missing(evaluator):
    notes = _notes(evaluator.evaluate_request(_request(), now=NOW))
    for what in ("medications (no medication records given)", "allergies (none recorded", "problem list (no Condition records)"):
        assert what in notes


def test_null_and_empty_searchset_mean_looked_up_and_none(evaluator):
    """A null or empty medication list was looked up: nothing missing. An empty allergy or problem list
    is "none recorded" (not "no known allergies"): said, the same as when the list was not sent."""
    ev = evaluator.evaluate_request(_request(medicationRequests=None, allergies=_searchset(), conditions=None), now=NOW)
    card = next(c for c in ev.cards if c["source"]["topic"]["code"] == "missing-data")
    assert card["summary"].startswith("Not checked: allergies (none recorded")
    assert "problem list (no Condition records)" in card["summary"]
    assert "medications" not in card["detail"]
    nka = {"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/p1"},
           "code": {"coding": [{"system": "http://snomed.info/sct", "code": "716186003", "display": "No known allergy"}]}}
    problem = {"resourceType": "Condition", "id": "c9", "subject": {"reference": "Patient/p1"},
               "code": {"text": "Essential hypertension"}}
    ev = evaluator.evaluate_request(_request(medicationRequests=None, allergies=_searchset(nka), conditions=_searchset(problem)), now=NOW)
    assert "missing-data" not in ev.rule_ids


def test_operation_outcome_prefetch_is_missing_and_named(evaluator):
    oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    ev = evaluator.evaluate_request(_request(medicationRequests=oo, allergies=None, conditions=None), now=NOW)
    notes = _notes(ev)
    assert "medications (no medication records given)" in notes and "medicationRequests" in notes


@pytest.mark.parametrize("status,counts", [("active", True), ("on-hold", True), ("unknown", True),
                                           ("stopped", False), ("completed", False), ("entered-in-error", False)])
def test_medication_request_status_policy(evaluator, status, counts):
    mr = {"resourceType": "MedicationRequest", "id": "m1", "status": status, "intent": "order",
          "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": WARFARIN}
    ev = evaluator.evaluate_request(_request(medicationRequests=_searchset(mr), allergies=None, conditions=None), now=NOW)
    assert ("anticoagulant" in ev.rule_ids) is counts


def _condition(**extra):
    c = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91302008", "display": "Sepsis"}]}}
    c.update(extra)
    return c


@pytest.mark.parametrize("condition,counts", [
    (_condition(), True),
    ({k: v for k, v in _condition().items() if k != "clinicalStatus"}, True),  # unknown status is not safe
    (_condition(clinicalStatus={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]}), False),
    (_condition(verificationStatus={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "refuted"}]}), False),
    (_condition(abatementDateTime="2026-01-01"), False),
    (_condition(abatementDateTime="2027-01-01"), True),
    (_condition(code={"text": "Sepsis due to E. coli"}), True),           # text only
    (_condition(code={"text": "History of sepsis (2019)"}), False),       # negation/history cue
])
def test_condition_policy_and_text(evaluator, condition, counts):
    ev = evaluator.evaluate_request(_request(medicationRequests=None, allergies=None, conditions=_searchset(condition)), now=NOW)
    assert ("systemic-infection" in ev.rule_ids) is counts


def test_text_only_match_is_said_on_the_card(evaluator):
    mr = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
          "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": {"text": "Eliquis 5 mg tablet"}}
    ev = evaluator.evaluate_request(_request(medicationRequests=_searchset(mr), allergies=None, conditions=None), now=NOW)
    card = next(c for c in ev.cards if c["source"]["topic"]["code"] == "anticoagulant")
    assert "(by name)" in card["summary"]
    assert "matched by name only, no recognised code" in card["detail"]


def test_contained_medication_and_reference(evaluator):
    mr = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
          "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": "#med"},
          "contained": [{"resourceType": "Medication", "id": "med", "code": WARFARIN}]}
    ev = evaluator.evaluate_request(_request(medicationRequests=_searchset(mr), allergies=None, conditions=None), now=NOW)
    assert "anticoagulant" in ev.rule_ids
    dangling = copy.deepcopy(mr)
    dangling.pop("contained")
    dangling["medicationReference"] = {"reference": "Medication/nowhere"}
    ev = evaluator.evaluate_request(_request(medicationRequests=_searchset(dangling), allergies=None, conditions=None), now=NOW)
    assert "anticoagulant" not in ev.rule_ids
    assert "Medication/nowhere" in _notes(ev) and "could not be resolved" in _notes(ev)


def test_same_input_same_rule_ids(evaluator):
    req = _request(medicationRequests=None, allergies=None, conditions=_searchset(_condition()))
    assert evaluator.evaluate_request(req, now=NOW).rule_ids == evaluator.evaluate_request(copy.deepcopy(req), now=NOW).rule_ids


def test_records_no_rule_could_match_are_counted_not_built(evaluator):
    """A record of a type every rule pattern needs a value set for (condition, medication, allergy,
    procedure) that no value set knows is counted in the inventory but not built into a fact (speed:
    no rule could match it); `explain` asks for every fact (all_facts) and the cards are the same."""
    sct = "http://snomed.info/sct"
    hypertension = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                    "code": {"coding": [{"system": sct, "code": "38341003", "display": "Hypertension"}]}}
    lisinopril = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
                  "subject": {"reference": "Patient/p1"},
                  "medicationCodeableConcept": {"coding": [{"system": RX, "code": "314076", "display": "lisinopril 10 MG Oral Tablet"}]}}
    warfarin = dict(lisinopril, id="m2", medicationCodeableConcept=WARFARIN)
    request = _request(conditions=_searchset(hypertension), medicationRequests=_searchset(lisinopril, warfarin))
    lean = evaluator.evaluate_request(copy.deepcopy(request), now=NOW)
    full = evaluator.evaluate_document(read_object(copy.deepcopy(request)), now=NOW, all_facts=True)
    refs = lambda ev: {f.get("ref") for f in ev.facts}  # noqa: E731
    assert "Condition/c1" not in refs(lean) and "MedicationRequest/m1" not in refs(lean)
    assert "MedicationRequest/m2" in refs(lean)  # warfarin: a rule can match it
    assert {"Condition/c1", "MedicationRequest/m1", "MedicationRequest/m2"} <= refs(full)
    inventory = lambda ev: next(f for f in ev.facts if f["t"] == "inventory")  # noqa: E731
    assert inventory(lean)["conditions"] == inventory(full)["conditions"] == 1
    assert inventory(lean)["medications"] == inventory(full)["medications"] == 2
    strip = lambda ev: [{k: v for k, v in c.items() if k != "uuid" and k != "suggestions"} for c in ev.cards]  # noqa: E731
    assert "anticoagulant" in lean.rule_ids
    assert strip(lean) == strip(full)


def _facts_of(*resources):
    from cds_tpi.facts import FactBuilder, Inputs
    from cds_tpi.ruleset import load_rulebook

    from .conftest import RULES
    book = load_rulebook(RULES)
    return FactBuilder(book.terminology, book.records, NOW).build(Inputs(record=[PATIENT, *resources]))


def _lab(code, **value):
    return {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "effectiveDateTime": "2026-11-20", **value}


@pytest.mark.parametrize("quantity,kg", [
    ({"value": 60, "system": "http://snomed.info/sct", "code": "258683005"}, 60.0),                 # kilogram, code only
    ({"value": 60, "unit": "kg", "system": "http://snomed.info/sct", "code": "258683005"}, 60.0),
    ({"value": 60000, "unit": "g", "system": "http://snomed.info/sct", "code": "258682000"}, 60.0),
])
def test_observation_units_coded_in_snomed_are_read_like_dose_units(quantity, kg):
    """One reading of a Quantity's unit for doses and results (order.quantity_units): a SNOMED CT unit
    code through records.yaml unit_codes, never the code itself as the unit."""
    facts = _facts_of(_lab("29463-7", valueQuantity=quantity))
    obs = next(f for f in facts if f["t"] == "observation")
    assert (obs.get("value"), obs.get("unit")) == (kg, "kg")
    assert not [f for f in facts if f["t"] == "gap"]


@pytest.mark.parametrize("code,value,expected", [
    # an abnormal flag beside a text result (records.yaml result_flags) is not its unit
    ("6301-6", {"valueString": "3.4 H"}, (3.4, "{INR}", None)),
    ("6301-6", {"valueString": "3.4H"}, (3.4, "{INR}", None)),
    ("6301-6", {"valueString": "H 3.4"}, (3.4, "{INR}", None)),
    ("6301-6", {"valueString": "3.4 (H)"}, (3.4, "{INR}", None)),
    ("6301-6", {"valueString": "3.4*"}, (3.4, "{INR}", None)),
    ("6301-6", {"valueString": "3.4 HIGH"}, (3.4, "{INR}", None)),
    ("6301-6", {"valueString": "3.4 L"}, (3.4, "{INR}", None)),        # a flag never changes the value
    ("6301-6", {"valueString": "2.6 H"}, (2.6, "{INR}", None)),
    ("777-3", {"valueString": "38 L x10(3)/mcL"}, (38.0, "10*9/L", None)),
    ("777-3", {"valueString": "38 x10(3)/mcL L"}, (38.0, "10*9/L", None)),
    ("777-3", {"valueString": "45 K/uL (L)"}, (45.0, "10*9/L", None)),
    ("777-3", {"valueString": "45 K/uL*"}, (45.0, "10*9/L", None)),
    ("777-3", {"valueString": "<10 LL"}, (10.0, "10*9/L", "<")),          # the comparator is kept
    ("777-3", {"valueString": "<10"}, (10.0, "10*9/L", "<")),
    # Cerner's unit text
    ("777-3", {"valueQuantity": {"value": 38, "unit": "x10(3)/mcL"}}, (38.0, "10*9/L", None)),
    ("777-3", {"valueQuantity": {"value": 38, "unit": "x10(3)/uL"}}, (38.0, "10*9/L", None)),
])
def test_text_results_are_read_without_their_abnormal_flag(code, value, expected):
    facts = _facts_of(_lab(code, **value))
    obs = next(f for f in facts if f["t"] == "observation")
    assert (obs.get("value"), obs.get("unit"), obs.get("comparator")) == expected
    assert not [f for f in facts if f["t"] == "gap"]


@pytest.mark.parametrize("text", ["clumped H", "H", "see note (H)"])
def test_a_flag_alone_or_beside_words_is_still_not_a_number(text):
    facts = _facts_of(_lab("777-3", valueString=text))
    assert "value" not in next(f for f in facts if f["t"] == "observation")
    assert [f for f in facts if f["t"] == "gap" and "not a number" in f["why"]]


# -- the facts stage alone (FactBuilder on hand-built records) ------------------------------------------
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"


def _facts(evaluator, *record):
    from cds_tpi.facts import FactBuilder, Inputs
    return FactBuilder(evaluator.book.terminology, evaluator.book.records, NOW).build(Inputs(record=[PATIENT, *record]))


def _of(facts, t):
    return [f for f in facts if f["t"] == t]


def test_allergy_named_only_in_the_reaction_description_or_a_note(evaluator):
    other = {"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/p1"},
             "code": {"text": "Other"}, "reaction": [{"description": "Hives after lidocaine at the dentist", "manifestation": [{"text": "Hives"}]}]}
    [allergy] = _of(_facts(evaluator, other), "allergy")
    assert "lidocaine" in allergy["vs"] and allergy["name"].startswith("Other (reaction recorded: Hives after lidocaine")
    noted = dict(other, id="a2", reaction=[], note=[{"text": "Reacted to Xylocaine in 2019."}])
    assert "lidocaine" in _of(_facts(evaluator, noted), "allergy")[0]["vs"]
    denied = dict(other, id="a3", reaction=[{"description": "Denies lidocaine allergy", "manifestation": [{"text": "none"}]}])
    assert _of(_facts(evaluator, denied), "allergy")[0]["vs"] == []  # a denied clause is not read


def test_problem_list_allergy_status_is_read_as_an_allergy(evaluator):
    def cond(code, display, text=None):
        cc = {"coding": [{"system": ICD, "code": code, "display": display}]}
        if text:
            cc["text"] = text
        return {"resourceType": "Condition", "id": code, "subject": {"reference": "Patient/p1"}, "code": cc,
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "category": [{"coding": [{"code": "problem-list-item"}]}]}
    facts = _facts(evaluator, cond("Z91.040", "Latex allergy status"), cond("Z88.4", "Allergy status to anesthetic agent"),
                   cond("Z88.0", "Allergy status to penicillin"))
    by_ref = {f["ref"]: f for f in _of(facts, "allergy")}
    assert "latex" in by_ref["Condition/Z91.040"]["vs"] and "problem list" in by_ref["Condition/Z91.040"]["name"]
    assert "anesthetic-allergy-status" in by_ref["Condition/Z88.4"]["vs"]
    assert "allergy-status-conditions" not in by_ref["Condition/Z88.4"]["vs"]  # the reading, not a finding
    assert by_ref["Condition/Z88.0"]["vs"] == []  # an allergy, but to nothing a rule reads
    # a resolved problem-list allergy is not current, so not an allergy either
    resolved = cond("Z91.040", "Latex allergy status")
    resolved["clinicalStatus"]["coding"][0]["code"] = "resolved"
    assert not _of(_facts(evaluator, resolved), "allergy")


def test_a_tpi_recorded_as_procedure_and_unlinked_same_day_administration_counts_once(evaluator):
    proc = {"resourceType": "Procedure", "id": "pr1", "status": "completed", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": CPT, "code": "20552"}]}, "performedDateTime": "2026-09-25T14:00:00-05:00"}
    mar = {"resourceType": "MedicationAdministration", "id": "ma1", "status": "completed", "subject": {"reference": "Patient/p1"},
           "medicationCodeableConcept": {"text": "Triamcinolone acetonide 40 mg/mL [Kenalog]"},
           "effectiveDateTime": "2026-09-25T14:05:00-05:00", "reasonCode": [{"text": "Trigger point injection"}]}
    [procedure] = _of(_facts(evaluator, proc, mar), "procedure")
    assert procedure["ref"] == "Procedure/pr1" and "corticosteroids" in procedure["used_vs"]
    other_day = dict(mar, id="ma2", effectiveDateTime="2026-08-01T10:00:00-05:00")
    assert sorted(f["ref"] for f in _of(_facts(evaluator, proc, other_day), "procedure")) == [
        "MedicationAdministration/ma2", "Procedure/pr1"]


def test_a_procedures_own_name_says_what_was_injected(evaluator):
    proc = {"resourceType": "Procedure", "id": "pr1", "status": "completed", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": CPT, "code": "20552"}], "text": "TRIGGER POINT INJ W/ KENALOG 40 MG"},
            "performedDateTime": "2026-09-25"}
    assert "corticosteroids" in _of(_facts(evaluator, proc), "procedure")[0]["used_vs"]
    plain = dict(proc, code={"coding": [{"system": CPT, "code": "20552"}], "text": "Trigger point injection, no steroid"})
    assert "corticosteroids" not in _of(_facts(evaluator, plain), "procedure")[0]["used_vs"]


SCT_ROUTE = "http://snomed.info/sct"
TPI_ORDER = {"resourceType": "ServiceRequest", "id": "sr1", "status": "draft", "intent": "order",
             "subject": {"reference": "Patient/p1"}, "code": {"text": "Trigger point injection"},
             "bodySite": [{"text": "Right trapezius"}]}


def _draft(mid, text, route=None, dosage_text=None, based_on=False, dose=None):
    di = {}
    if route:
        di["route"] = {"coding": [{"system": SCT_ROUTE, "code": route[0], "display": route[1]}]}
    if dosage_text:
        di["text"] = dosage_text
    if dose:
        di["doseAndRate"] = [{"doseQuantity": {"value": dose[0], "unit": dose[1], "system": "http://unitsofmeasure.org", "code": dose[1]}}]
    mr = {"resourceType": "MedicationRequest", "id": mid, "status": "draft", "intent": "order",
          "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": {"text": text}}
    if di:
        mr["dosageInstruction"] = [di]
    if based_on:
        mr["basedOn"] = [{"reference": "ServiceRequest/sr1"}]
    return mr


def _injectates(*drafts):
    from cds_tpi.facts import FactBuilder, Inputs
    from cds_tpi.ruleset import load_rulebook

    from .conftest import RULES
    book = load_rulebook(RULES)
    facts = FactBuilder(book.terminology, book.records, NOW).build(Inputs(record=[PATIENT], drafts=[TPI_ORDER, *drafts]))
    return {f["ref"] for f in facts if f["t"] == "injectate"}, [f for f in facts if f["t"] == "gap"]


ORAL, TOPICAL, IM = ("26643006", "Oral route"), ("6064005", "Topical route"), ("78421000", "Intramuscular route")


@pytest.mark.parametrize("draft,counted", [
    # clearly not injected (route, form or words in non-injection-routes, none in injectable): not the TPI's injectate
    (_draft("m1", "methylPREDNISolone (MEDROL DOSEPAK) 4 mg tablet", ORAL, "Take as directed, 6-day taper"), False),
    (_draft("m1", "lidocaine (LIDODERM) 5 % patch", TOPICAL, "Apply 1 patch 12 hours on", dose=(1, "{patch}")), False),
    (_draft("m1", "prednisone 20 mg", dosage_text="20 mg PO daily x 5 days"), False),
    (_draft("m1", "prednisoLONE 15 mg/5 mL oral solution", ORAL, dose=(5, "mL")), False),   # mL, but by mouth
    # injected, or unclear: stays injectate (a false alarm is safer than a miss)
    (_draft("m1", "triamcinolone acetonide 40 mg/mL", IM), True),
    (_draft("m1", "KENALOG-40 40 mg"), True),                                                 # no route, no form
    (_draft("m1", "dexamethasone 4 mg", ORAL, "inject 1 mL at the trigger point"), True),     # conflicting: kept
    (_draft("m1", "methylprednisolone 4 mg tablet", ORAL, based_on=True), True),             # linked to the TPI order
])
def test_an_unlinked_draft_steroid_or_anesthetic_given_another_way_is_not_injectate(draft, counted):
    injectates, _ = _injectates(draft)
    assert ("MedicationRequest/m1" in injectates) is counted


def test_an_unrecognised_oral_draft_dosed_in_ml_is_not_named_as_an_unchecked_injection():
    _, gaps = _injectates(_draft("m1", "amoxicillin 400 mg/5 mL suspension", ORAL, dose=(5, "mL")))
    assert not [g for g in gaps if "not recognised" in g["what"]]
    _, gaps = _injectates(_draft("m1", "sarapin 10 mL", dose=(10, "mL")))   # unknown injection: still named
    assert [g for g in gaps if "not recognised" in g["what"]]


def test_a_draft_order_not_recognised_as_tpi_is_named_when_an_injectate_is_ordered_with_it(evaluator):
    from cds_tpi.facts import FactBuilder, Inputs
    sr = {"resourceType": "ServiceRequest", "id": "sr1", "status": "draft", "intent": "order", "subject": {"reference": "Patient/p1"},
          "code": {"text": "INJ MUSCLE 1-2 SITES"}}
    lab = dict(sr, id="lab1", code={"text": "CBC"})
    lido = {"resourceType": "MedicationRequest", "id": "mr1", "status": "draft", "intent": "order", "subject": {"reference": "Patient/p1"},
            "basedOn": [{"reference": "ServiceRequest/sr1"}], "medicationCodeableConcept": {"text": "lidocaine 1% injection"}}
    facts = FactBuilder(evaluator.book.terminology, evaluator.book.records, NOW).build(Inputs(record=[PATIENT], drafts=[sr, lab, lido]))
    gaps = [f for f in facts if f["t"] == "gap"]
    assert [g["ref"] for g in gaps] == ["ServiceRequest/sr1"]
    assert "INJ MUSCLE 1-2 SITES not recognised as a trigger point injection" in gaps[0]["what"]
    assert "lidocaine 1% injection" in gaps[0]["why"]


# -- a TPI order whose injectate is written only in its text (audit-2 r04) -------------------------------
def _order_facts(evaluator, order, *drafts, record=()):
    from cds_tpi.facts import FactBuilder, Inputs
    return FactBuilder(evaluator.book.terminology, evaluator.book.records, NOW).build(
        Inputs(record=[PATIENT, *record], drafts=[order, *drafts]))


def _tpi_with(**words):
    return dict(TPI_ORDER, **words)


@pytest.mark.parametrize("words", [
    {"orderDetail": [{"text": "Lidocaine 1% 5 mL + triamcinolone (Kenalog) 40 mg"}]},
    {"note": [{"text": "Inject lidocaine 1% 5 mL with Kenalog 40 mg"}]},
    {"patientInstruction": "Lidocaine 1% 5 mL; Kenalog 40 mg"},
    # written twice (orderDetail and note): each product once
    {"orderDetail": [{"text": "Lidocaine 1% 5 mL + triamcinolone (Kenalog) 40 mg"}],
     "note": [{"text": "Inject lidocaine 1% 5 mL with Kenalog 40 mg"}]},
])
def test_an_injectate_written_only_in_the_order_is_read_from_its_words(evaluator, words):
    facts = _order_facts(evaluator, _tpi_with(**words))
    injectates = _of(facts, "injectate")
    assert sorted(("lidocaine" in f["vs"], "corticosteroids" in f["vs"]) for f in injectates) == [(False, True), (True, False)]
    assert all(f["order"] == "ServiceRequest/sr1" and f["ref"].startswith("ServiceRequest/sr1 ") for f in injectates)
    assert all("dose_mg" not in f for f in injectates)
    [dose] = _of(facts, "dose")   # the anesthetic's dose is not read from words: said, never guessed
    assert dose["total_mg"] == 0 and dose["undosed_count"] == 1 and "not read" in dose["undosed"][0]
    assert _of(facts, "inventory")[0]["injectates"] == 2


def test_a_denied_or_unknown_product_in_the_order_text_is_not_an_injectate(evaluator):
    facts = _order_facts(evaluator, _tpi_with(note=[{"text": "No steroid. Dry needling only"}]))
    assert _of(facts, "injectate") == [] and _of(facts, "inventory")[0]["injectates"] == 0


def test_the_order_text_never_repeats_a_medication_request(evaluator):
    """A TPI with its own MedicationRequest: a note that repeats (or adds to) it is not read; an unlinked
    draft of the order set is not repeated from the text, what it does not order is read."""
    note = {"note": [{"text": "Inject lidocaine 1% 5 mL with Kenalog 40 mg"}]}
    linked = _draft("m1", "LIDOCAINE HCL 1 % IJ SOLN", IM, based_on=True, dose=(5, "mL"))
    assert [f["ref"] for f in _of(_order_facts(evaluator, _tpi_with(**note), linked), "injectate")] == ["MedicationRequest/m1"]
    unlinked = _draft("m1", "LIDOCAINE HCL 1 % IJ SOLN", IM, dose=(5, "mL"))
    got = _of(_order_facts(evaluator, _tpi_with(**note), unlinked), "injectate")
    assert [f["ref"] for f in got] == ["MedicationRequest/m1", "ServiceRequest/sr1 note[0]"]
    assert "corticosteroids" in got[1]["vs"] and "lidocaine" not in got[1]["vs"]


def test_an_order_with_no_injectate_at_all_is_said_by_missing_data(evaluator):
    from cds_tpi.fhir.read import read_object as read
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in (PATIENT, TPI_ORDER)]}
    ev = evaluator.evaluate_document(read(bundle, "b"), now=NOW)
    assert "injectate (not ordered as a medication" in _notes(ev)
    bundle["entry"].append({"resource": _tpi_with(id="sr2", note=[{"text": "Kenalog 40 mg"}])})
    assert "injectate (not ordered" not in _notes(evaluator.evaluate_document(read(bundle, "b"), now=NOW))


# -- a body site named by its codings: the site, with its laterality (audit-2 s09) -----------------------
SCT = "http://snomed.info/sct"
PEC_LEFT = {"coding": [{"system": SCT, "code": "60005003"}, {"system": SCT, "code": "7771000", "display": "Left"}]}


@pytest.mark.parametrize("site,name", [
    (PEC_LEFT, "Pectoralis major muscle, left"),                                  # never "Left" alone
    ({"coding": list(reversed(PEC_LEFT["coding"]))}, "Pectoralis major muscle, left"),
    (dict(PEC_LEFT, text="L pec major"), "L pec major"),                          # the record's words first
    ({"coding": [{"system": SCT, "code": "60005003", "display": "Pectoralis major structure"}]}, "Pectoralis major structure"),
    ({"coding": [{"system": SCT, "code": "123456999"}, {"system": SCT, "code": "7771000", "display": "Left"}]}, "sct 123456999, left"),
])
def test_a_coded_site_is_named_by_its_site_coding_with_the_laterality(evaluator, site, name):
    facts = _order_facts(evaluator, _tpi_with(bodySite=[site]))
    assert {f["name"] for f in _of(facts, "site")} == {name}


def test_a_condition_body_site_is_named_the_same_way(evaluator):
    cellulitis = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                  "clinicalStatus": {"coding": [{"code": "active"}]}, "code": {"text": "Cellulitis"}, "bodySite": [PEC_LEFT]}
    [cond] = {f["ref"]: f for f in _facts(evaluator, cellulitis) if f["t"] == "condition"}.values()
    assert cond["site"] == "Pectoralis major muscle, left"


# -- a panel's components are results of their own (audit 2 x25: an INR sent inside a PT/INR panel) ---------
def _panel(oid="o1", when="2026-11-22", inr=4.2, status="final", **extra):
    return {"resourceType": "Observation", "id": oid, "status": status, "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "34528-0", "display": "PT panel"}], "text": "PROTIME/INR"},
            "effectiveDateTime": when, **extra,
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "5902-2", "display": "Prothrombin time (PT)"}]},
                 "valueQuantity": {"value": 41.0, "unit": "s"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "6301-6", "display": "INR"}]},
                 **({"valueQuantity": {"value": inr, "unit": "{INR}", "system": "http://unitsofmeasure.org", "code": "{INR}"}}
                    if inr is not None else {"dataAbsentReason": {"text": "clotted"}})}]}


def test_a_panel_component_is_a_result_of_its_own_named_by_its_observation():
    facts = _facts_of(_panel())
    obs = [f for f in facts if f["t"] == "observation"]
    assert len(obs) == 1  # the panel's own code is in no value set; its INR component is
    inr = obs[0]
    assert inr["ref"] == "Observation/o1 component 2"
    assert "PROTIME/INR" in inr["name"] and "inr" in inr["latest_in"]
    assert (inr["value"], inr["unit"], inr["date"], inr["age_days"]) == (4.2, "{INR}", "2026-11-22", 2)
    assert next(f for f in facts if f["t"] == "inventory")["observations"] == 1


def test_a_component_competes_with_standalone_results_for_the_newest():
    older = _lab("6301-6", valueQuantity={"value": 1.1, "unit": "{INR}"}) | {"id": "o2", "effectiveDateTime": "2026-11-10"}
    newer = _lab("6301-6", valueQuantity={"value": 1.1, "unit": "{INR}"}) | {"id": "o2", "effectiveDateTime": "2026-11-23"}
    latest = lambda facts: [f["ref"] for f in facts if f["t"] == "observation" and f["latest_in"]]  # noqa: E731
    assert latest(_facts_of(_panel(), older)) == ["Observation/o1 component 2"]
    assert latest(_facts_of(_panel(), newer)) == ["Observation/o2"]


def test_a_component_without_a_value_is_named_as_not_read():
    facts = _facts_of(_panel(inr=None))
    gaps = [f for f in facts if f["t"] == "gap"]
    assert len(gaps) == 1 and "Observation/o1 component 2" in gaps[0]["what"] and "no value" in gaps[0]["why"]


def test_a_component_follows_its_observations_status():
    assert not [f for f in _facts_of(_panel(status="entered-in-error")) if f["t"] == "observation"]


def test_the_pipeline_reads_validates_and_ranks_a_panel_by_its_components(evaluator):
    """pipeline._lab_sets: a panel whose component is in a value set is read (not dropped as a result no
    value set knows), validated, and its component can be the newest result of that value set."""
    plain = _lab("6301-6", valueQuantity={"value": 1.0, "unit": "{INR}"})
    assert "inr" in evaluator._lab_sets(_panel()) and evaluator._lab_sets(_panel()) == evaluator._lab_sets(plain)
    older = plain | {"id": "o2", "effectiveDateTime": "2026-11-12", "valueQuantity": {"value": 1.0, "unit": "{INR}"}}
    ev = evaluator.evaluate_resources([PATIENT, older, _panel()], now=NOW)
    assert "bleeding-disorder" in ev.rule_ids
    card = next(c for c in ev.cards if c["source"]["topic"]["code"] == "bleeding-disorder")
    assert "Observation/o1 component 2" in card["detail"]
    # the newest INR is the panel's 1.1: the older standalone 4.2 is not compared
    high_old = plain | {"id": "o2", "effectiveDateTime": "2026-11-12", "valueQuantity": {"value": 4.2, "unit": "{INR}"}}
    assert "bleeding-disorder" not in evaluator.evaluate_resources([PATIENT, high_old, _panel(inr=1.1)], now=NOW).rule_ids
    # an invalid panel is named and skipped like any invalid newest result
    bad = _panel()
    bad["component"][1]["valueQuantity"]["value"] = "4.2 H"  # a decimal must be a JSON number
    ev = evaluator.evaluate_resources([PATIENT, bad], now=NOW)
    assert "bleeding-disorder" not in ev.rule_ids and any("Observation/o1" in s for s in ev.skipped)


# -- the injection site written elsewhere than bodySite; a site that was not read (audit-3b s11, s12, o09) ---

_CELLULITIS_BACK = {"resourceType": "Condition", "id": "cel", "subject": {"reference": "Patient/p1"},
                    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                    "code": {"text": "Cellulitis of upper back"}}


def _site_facts(evaluator, *drafts, record=()):
    from cds_tpi.facts import FactBuilder, Inputs
    facts = FactBuilder(evaluator.book.terminology, evaluator.book.records, NOW).build(
        Inputs(record=[PATIENT, *record], drafts=list(drafts)))
    return _of(facts, "site"), _of(facts, "inventory")[0]


def _no_site_order(**extra):
    sr = {k: v for k, v in TPI_ORDER.items() if k != "bodySite"}
    sr.update(extra)
    return sr


def _lido(site=None, based_on="ServiceRequest/sr1"):
    mr = _draft("m1", "lidocaine 1% injection", IM, dose=(5, "mL"))
    if based_on:
        mr["basedOn"] = [{"reference": based_on}]
    if site:
        mr["dosageInstruction"][0]["site"] = site
    return mr


def test_a_site_written_only_on_the_injectate_dosage_is_the_orders_site(evaluator):
    """audit-3b s11: no bodySite; the MedicationRequest basedOn the order has dosageInstruction.site."""
    sites, inventory = _site_facts(evaluator, _no_site_order(), _lido({"text": "Right upper trapezius"}))
    assert sites and "region-upper-back-shoulder" in {s["region"] for s in sites}
    assert sites[0]["name"] == "Right upper trapezius (written in MedicationRequest/m1 dosageInstruction.site)"
    assert sites[0]["order"] == "ServiceRequest/sr1" and inventory["sites"] == len(sites)
    # an unlinked draft's dosage site is not the order's
    sites, _ = _site_facts(evaluator, _no_site_order(), _lido({"text": "Right upper trapezius"}, based_on=None))
    assert not sites


def test_a_site_written_only_in_the_orders_words_is_read_from_them(evaluator):
    """audit-3b s12: the sites only in orderDetail and note; denied words and non-site words are not sites."""
    order = _no_site_order(orderDetail=[{"text": "Sites: bilateral rhomboids and L levator scapulae"}],
                           note=[{"text": "TPI to bilat rhomboids, L levator scap. US guidance."}])
    sites, _ = _site_facts(evaluator, order, _lido())
    assert sites and "region-upper-back-shoulder" in {s["region"] for s in sites}
    assert any(s["name"] == "Sites: bilateral rhomboids (written in the order's orderDetail)" for s in sites)
    assert len({s["name"] for s in sites}) == 2        # the note repeats the rhomboids: counted once
    # a bodySite wins: the words are not read then
    sites, _ = _site_facts(evaluator, dict(order, bodySite=[{"text": "Left gluteus medius"}]), _lido())
    assert [s["name"] for s in sites] == ["Left gluteus medius"]
    # a denied site ("no rhomboids") is no site; words no region value set knows are none either
    sites, inventory = _site_facts(evaluator, _no_site_order(note=[{"text": "no rhomboids; US guidance"}]), _lido())
    assert not sites and inventory["sites"] == 0


def test_local_infection_says_no_site_only_when_none_is_given(evaluator):
    """audit-3b o09: 'no injection site is given' was said of an order whose bodySite was not read. A TPI
    order with a bodySite that is not the planned order, or an order the injectate is basedOn that is not in
    the input, is named instead."""
    def note(*drafts, record=()):
        ev = evaluator.evaluate_resources([PATIENT, _CELLULITIS_BACK, *record], draft_orders=list(drafts), now=NOW)
        card = next(c for c in ev.cards if c["source"]["topic"]["code"] == "local-infection")
        return card["indicator"], card["detail"]
    indicator, detail = note(_no_site_order(), _lido())
    assert indicator == "warning" and "no injection site is given" in detail
    revoked = dict(TPI_ORDER, id="sr1", status="revoked", bodySite=[{"text": "Left rhomboid major"}])
    indicator, detail = note(revoked, _lido())
    assert indicator == "warning" and "no injection site is given" not in detail
    assert "ServiceRequest/sr1 (status revoked) has the injection site Left rhomboid major but was not read" in detail
    indicator, detail = note(_lido(based_on="ServiceRequest/elsewhere"))
    assert "ServiceRequest/elsewhere, the order MedicationRequest/m1 is basedOn, is not in the input" in detail


# -- an ingredient reference that cannot be resolved (audit-3 m12) ------------------------------------

_DABI_MED = {"resourceType": "Medication", "id": "med-dabi",
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "00597-0135-60"}]},
             "ingredient": [{"itemReference": {"reference": "Substance/sub-dabi"},
                             "strength": {"numerator": {"value": 150, "unit": "mg"}, "denominator": {"value": 1, "unit": "capsule"}}}]}
_DABI_SUB = {"resourceType": "Substance", "id": "sub-dabi",
             "code": {"coding": [{"system": RX, "code": "1037042", "display": "dabigatran etexilate"}]}}
_DABI_MR = {"resourceType": "MedicationRequest", "id": "mr-dabi", "status": "active", "intent": "order",
            "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": "Medication/med-dabi"}}


def test_an_ingredient_substance_is_read_and_an_unresolved_one_is_a_gap(evaluator):
    """An NDC-only Medication whose ingredient is a Substance reference: the Substance is read (pipeline
    READ_TYPES) and says it is dabigatran; without it, a gap says what it contains is not known."""
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in (PATIENT, _DABI_MR, _DABI_MED, _DABI_SUB)]}
    ev = evaluator.evaluate_document(read_object(bundle, "b"), now=NOW)
    assert "anticoagulant" in ev.rule_ids
    assert not [f for f in ev.facts if f["t"] == "gap" and "ingredient" in f["what"]]
    bundle["entry"] = bundle["entry"][:-1]
    ev = evaluator.evaluate_document(read_object(bundle, "b"), now=NOW)
    assert "anticoagulant" not in ev.rule_ids
    gaps = [f for f in ev.facts if f["t"] == "gap" and f["what"] == "ingredient of Medication/med-dabi not found"]
    assert len(gaps) == 1 and "Substance/sub-dabi could not be resolved" in gaps[0]["why"]
    assert "what it contains is not known" in gaps[0]["why"]
    assert "ingredient of Medication/med-dabi not found" in _notes(ev)


def test_an_invalid_substance_is_skipped_and_named(evaluator):
    bad = dict(_DABI_SUB, code="dabigatran")   # a CodeableConcept sent as a string
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in (PATIENT, _DABI_MR, _DABI_MED, bad)]}
    ev = evaluator.evaluate_document(read_object(bundle, "b"), now=NOW)
    assert any("Substance/sub-dabi" in s for s in ev.skipped)
    assert "Substance/sub-dabi" in _notes(ev)


# -- labs sent with a local code only (audit-3 b07) ----------------------------------------------------

LOCAL_LAB = "urn:oid:1.2.840.114350.1.13.284.2.7.2.768282"


def _local_lab(oid: str, code: dict, **value) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2026-11-21T09:30:00-05:00", "code": code, **value}


def _lab_facts(evaluator, *labs):
    ev = evaluator.evaluate_document(read_object({"resourceType": "Bundle", "type": "collection",
                                                  "entry": [{"resource": r} for r in (PATIENT, *labs)]}), now=NOW)
    return ev, {f["ref"]: f for f in ev.facts if f["t"] == "observation"}


def test_a_lab_with_a_local_code_only_is_read_by_the_words_of_its_code(evaluator):
    ev, facts = _lab_facts(
        evaluator,
        _local_lab("plt", {"coding": [{"system": LOCAL_LAB, "code": "1525870", "display": "PLATELET COUNT"}], "text": "PLATELET COUNT"},
             valueQuantity={"value": 22, "unit": "K/uL"}),
        _local_lab("inr", {"coding": [{"system": LOCAL_LAB, "code": "1525871", "display": "PT-INR"}], "text": "INR"},
             valueQuantity={"value": 4.6}))
    assert facts["Observation/plt"]["vs"] == ["platelet-count"] and facts["Observation/plt"]["text_only"] == ["platelet-count"]
    assert facts["Observation/plt"]["value"] == 22.0
    assert facts["Observation/inr"]["vs"] == ["inr"] and facts["Observation/inr"]["value"] == 4.6
    card = next(c for c in ev.cards if c["source"]["topic"]["code"] == "bleeding-disorder")
    assert card["indicator"] == "critical" and "4.6" in card["detail"] and "22" in card["detail"]


@pytest.mark.parametrize("code", [
    {"coding": [{"system": LOCAL_LAB, "code": "9"}], "text": "INR goal"},                       # a goal, not a result
    {"coding": [{"system": LOCAL_LAB, "code": "9"}], "text": "Platelet function assay"},         # not a count
    {"coding": [{"system": LOCAL_LAB, "code": "9"}], "text": "Mean platelet volume"},
    {"coding": [{"system": "http://loinc.org", "code": "34167-7",                              # LOINC: by its code alone
                 "display": "Platelets Large [Presence] in Blood by Automated count"}]},
    {"coding": [{"system": LOCAL_LAB, "code": "9"}], "text": "Weight-bearing status"},           # 'weight' alone is no pattern
])
def test_words_that_are_not_the_result_do_not_make_a_lab(evaluator, code):
    _, facts = _lab_facts(evaluator, _local_lab("x", code, valueString="2-3"))
    assert not set(facts.get("Observation/x", {}).get("vs", ())) & {"platelet-count", "inr", "hba1c", "body-weight"}


def test_a_local_pt_inr_panel_is_read_through_its_inr_component(evaluator):
    panel = _local_lab("panel", {"coding": [{"system": LOCAL_LAB, "code": "77"}], "text": "PT/INR"},
                 component=[{"code": {"text": "PT"}, "valueQuantity": {"value": 38, "unit": "s"}},
                            {"code": {"text": "INR"}, "valueQuantity": {"value": 3.9}}])
    ev, facts = _lab_facts(evaluator, panel)
    assert "Observation/panel" not in facts  # the panel has no value of its own: no 'not read' gap for it
    assert facts["Observation/panel component 2"]["value"] == 3.9
    assert "bleeding-disorder" in {c["source"]["topic"]["code"] for c in ev.cards}
    assert "Observation/panel (" not in _notes(ev)


# -- gestational age (audit-3 p06, p07) ----------------------------------------------------------------

KENALOG = {"resourceType": "MedicationRequest", "id": "k1", "status": "draft", "intent": "order", "subject": {"reference": "Patient/p1"},
           "medicationCodeableConcept": {"coding": [{"system": RX, "code": "1085754"}], "text": "KENALOG-40 40 MG/ML IJ SUSP"}}


def _ga(when: str, oid: str = "ga", **value) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": when, "code": {"coding": [{"system": "http://loinc.org", "code": "49051-6"}]},
            **(value or {"valueQuantity": {"value": 25, "unit": "wk"}})}


def _pregnancy_card(evaluator, *records):
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in (PATIENT, KENALOG, *records)]}
    return "pregnancy-steroid" in {c["source"]["topic"]["code"] for c in evaluator.evaluate_document(read_object(bundle), now=NOW).cards}


def test_a_recent_gestational_age_is_a_current_pregnancy(evaluator):
    assert _pregnancy_card(evaluator, _ga("2026-11-22"))
    assert _pregnancy_card(evaluator, _ga("2026-11-19", valueString="18w 3d"))
    assert not _pregnancy_card(evaluator, _ga("2026-05-08"))  # 200 days old


def test_a_newer_negative_pregnancy_test_wins_over_a_gestational_age(evaluator):
    negative = {"resourceType": "Observation", "id": "hcg", "status": "final", "subject": {"reference": "Patient/p1"},
                "effectiveDateTime": "2026-11-23", "code": {"coding": [{"system": "http://loinc.org", "code": "2106-3"}]},
                "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260385009", "display": "Negative"}]}}
    assert not _pregnancy_card(evaluator, _ga("2026-11-10"), negative)
    assert _pregnancy_card(evaluator, _ga("2026-11-24"), negative)


def _cond(cid, code, when, status=None):
    r = {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p1"},
         "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]}, "onsetDateTime": when}
    if status:
        r["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]}
    return r


def test_a_condition_knows_what_was_recorded_after_it():
    """later_vs / later_result_vs: what followed a diagnosis, so a rule needs no date join (audit 4 w20:
    'Pregnancy' left active, a delivery and a negative hCG after it)."""
    hcg = dict(_lab("2106-3", valueCodeableConcept={"text": "Negative"}), effectiveDateTime="2026-11-14")
    facts = _facts_of(_cond("preg", "Z34.90", "2024-06-07", "active"), _cond("del", "O80", "2025-02-02"), hcg)
    preg = next(f for f in facts if f["ref"] == "Condition/preg")
    assert "pregnancy-ended" in preg["later_vs"] and "pregnancy-negative-answer" in preg["later_result_vs"]
    delivery = next(f for f in facts if f["ref"] == "Condition/del")
    assert "pregnancy" not in delivery["later_vs"]  # the pregnancy is older


def test_a_deceased_patient_is_a_patient_fact_field():
    from cds_tpi.facts import FactBuilder, Inputs
    from cds_tpi.ruleset import load_rulebook

    from .conftest import RULES
    book = load_rulebook(RULES)
    for patient, want in [(dict(PATIENT, deceasedDateTime="2024-03-02T10:00:00Z"), (True, "2024-03-02")),
                          (dict(PATIENT, deceasedBoolean=True), (True, None)),
                          (dict(PATIENT, deceasedBoolean=False), (None, None))]:
        facts = FactBuilder(book.terminology, book.records, NOW).build(Inputs(record=[patient]))
        p = next(f for f in facts if f["t"] == "patient")
        assert (p.get("deceased"), p.get("deceased_date")) == want


# -- allergy type (audit 4 w13) ---------------------------------------------------------------------------------

def test_allergy_type_is_read_from_r4_code_and_r5_codeable_concept(evaluator):
    base = {"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "8640", "display": "prednisone"}]}}
    r4 = dict(base, id="a1", type="intolerance")
    r5 = dict(base, id="a2", type={"coding": [{"system": "http://hl7.org/fhir/allergy-intolerance-type", "code": "allergy"}]})
    none = dict(base, id="a3")
    types = {f["ref"]: f["type"] for f in _of(_facts(evaluator, r4, r5, none), "allergy")}
    assert types == {"AllergyIntolerance/a1": "intolerance", "AllergyIntolerance/a2": "allergy", "AllergyIntolerance/a3": "unknown"}


def test_a_medication_sent_only_as_an_unknown_code_is_named_not_identified(evaluator):
    """A current medication coded only by a product code no value set lists, with no display or text,
    cannot be told apart from an anticoagulant: a gap names it (audit 5: it was dropped silently). A
    named unknown drug (lisinopril) or a known code is not a gap."""
    from cds_tpi.facts import FactBuilder, Inputs
    coded = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
             "subject": {"reference": "Patient/p1"},
             "medicationCodeableConcept": {"coding": [{"system": RX, "code": "1549683"}]}}
    named = dict(coded, id="m2", medicationCodeableConcept={"coding": [{"system": RX, "code": "314076"}], "text": "lisinopril 10 mg"})
    known = dict(coded, id="m3", medicationCodeableConcept={"coding": [{"system": RX, "code": "855332"}]})
    facts = FactBuilder(evaluator.book.terminology, evaluator.book.records, NOW).build(Inputs(record=[PATIENT, coded, named, known]))
    gaps = [f for f in facts if f["t"] == "gap"]
    assert [g["ref"] for g in gaps] == ["MedicationRequest/m1"] and "not identified" in gaps[0]["what"]


def test_who_icd10_is_read_as_icd10cm(evaluator):
    term = evaluator.book.terminology
    assert "bleeding-disorders" in term.match([("http://hl7.org/fhir/sid/icd-10", "D68.0")], []).all
    assert "bleeding-disorders" in term.match([("urn:oid:2.16.840.1.113883.6.3", "D680")], []).all
