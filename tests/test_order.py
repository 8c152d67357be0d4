"""order.py: strengths of each anesthetic in a product, doses from volumes, sums per agent and the
additive fraction across agents; the synthesized order (R4 and R5)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_tpi import order as planned
from cds_tpi.ruleset import load_rulebook

from .conftest import NOW, RULES

RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def book():
    return load_rulebook(RULES)


def _product(book, texts, ingredients=()):
    term = book.terminology
    vs = term.match([], list(texts)).all
    ings = tuple((term.match([], [t]).all, s) for t, s in ingredients)
    return planned.Product(texts[0], vs, tuple(texts), ings)


def _mg(book, texts, ml, ingredients=()):
    p = _product(book, texts, ingredients)
    return {d.agent.valueset: d.mg for d in planned.agent_doses(p, planned.Dose(ml=ml, text=f"{ml} mL"), "MedicationRequest/x",
                                                              book.terminology, book.records) if d.agent}


@pytest.mark.parametrize("name,ml,want", [
    # RxNorm names list ingredients alphabetically: epinephrine's strength comes first and must not be used
    ("epinephrine 0.01 MG/ML / lidocaine hydrochloride 10 MG/ML Injectable Solution", 20, {"lidocaine": 200}),
    ("epinephrine 0.005 MG/ML / lidocaine hydrochloride 20 MG/ML Injectable Solution", 10, {"lidocaine": 200}),
    ("bupivacaine hydrochloride 2.5 MG/ML / epinephrine 0.005 MG/ML Injectable Solution", 30, {"bupivacaine": 75}),
    ("LIDOCAINE 1% INJ", 15, {"lidocaine": 150}),
    ("Lidocaine HCl 2% and Epinephrine 1:100,000 Injection", 10, {"lidocaine": 200}),
    ("LIDOCAINE-EPINEPHRINE 1 %-1:200,000 INJECTION SOLUTION", 10, {"lidocaine": 100}),
    ("bupivacaine 0.25 % injection", 20, {"bupivacaine": 50}),
    ("Marcaine 0.5% with epinephrine 1:200,000", 10, {"bupivacaine": 50}),
    ("lidocaine 10 mg per mL", 3, {"lidocaine": 30}),
])
def test_volume_uses_the_anesthetics_own_strength(book, name, ml, want):
    assert _mg(book, [name], ml) == pytest.approx(want)


@pytest.mark.parametrize("name", [
    "lidocaine with epinephrine 10 MG/ML",          # one mg/mL and two ingredients, no separation: whose?
    "lidocaine injection",                           # no strength at all
    "lidocaine 1% / bupivacaine 0.5%",               # two anesthetics: each component is read...
])
def test_a_strength_that_cannot_be_tied_to_the_agent_is_unknown(book, name):
    got = _mg(book, [name], 10)
    if " / " in name:
        assert got == {"lidocaine": 100, "bupivacaine": 50}
    else:
        assert got["lidocaine"] is None


def test_ingredient_strength_wins_and_is_matched_to_its_ingredient(book):
    ings = [("epinephrine", {"numerator": {"value": 0.01, "unit": "mg", "code": "mg", "system": UCUM},
                             "denominator": {"value": 1, "unit": "mL", "code": "mL", "system": UCUM}}),
            ("lidocaine hydrochloride", {"numerator": {"value": 10, "unit": "mg", "code": "mg", "system": UCUM},
                                         "denominator": {"value": 1, "unit": "mL", "code": "mL", "system": UCUM}})]
    assert _mg(book, ["Xylocaine-MPF with epinephrine"], 12, ings) == {"lidocaine": 120}
    pct = [("bupivacaine", {"numerator": {"value": 0.25, "unit": "%"}, "denominator": {"value": 1, "unit": "1"}})]
    assert _mg(book, ["Sensorcaine"], 40, pct) == {"bupivacaine": 100}


def test_every_value_set_product_with_a_strength_is_read_from_its_code_alone(book):
    """Property over the value sets: a product coded with only its RxNorm code (no display, no text)
    dosed in mL gets mg = mL x the strength written next to THAT anesthetic in the product's name."""
    term, policy = book.terminology, book.records
    checked = 0
    for agent in policy.anesthetic_limits.agents:
        for system, code, disp in term.defs[agent.valueset].displays:
            if system != RX or "MG/ML" not in disp.upper():
                continue
            name = term.display_of(system, code)
            assert name
            # independent reading: the " / "-separated part that names the agent
            part = next(p for p in name.split(" / ") if agent.valueset in term.match([], [p]).all)
            conc = float(re.search(r"(\d+(?:\.\d+)?) MG/ML", part, re.I).group(1))
            vs = term.match([(system, code)], [name]).all
            product = planned.Product("", vs, (name,))
            doses = planned.agent_doses(product, planned.Dose(ml=7, text="7 mL"), "MedicationRequest/x", term, policy)
            got = {d.agent.valueset: d.mg for d in doses if d.agent}
            assert got[agent.valueset] == pytest.approx(7 * conc), name
            checked += 1
    # the value sets carry lidocaine products with strengths in their names (four so far): the property is not empty
    assert checked >= 4


_agents = st.sampled_from([("lidocaine hydrochloride", "lidocaine"), ("bupivacaine hydrochloride", "bupivacaine")])
_conc = st.sampled_from([2.5, 5, 7.5, 10, 15, 20])
_epi = st.sampled_from([0.005, 0.01, 0.02])


@settings(max_examples=150, deadline=None)
@given(agent=_agents, conc=_conc, epi=_epi, ml=st.integers(1, 60), percent=st.booleans())
def test_generated_combination_names_never_use_the_vasoconstrictor_strength(book, agent, conc, epi, ml, percent):
    ingredient, vs = agent
    if percent:
        name = f"{ingredient.split()[0].upper()}-EPINEPHRINE {conc / 10:g} %-1:{int(1 / epi * 1000):,} INJECTION"
    else:  # RxNorm order: alphabetical
        parts = sorted([f"{ingredient} {conc:g} MG/ML", f"epinephrine {epi:g} MG/ML"])
        name = " / ".join(parts) + " Injectable Solution"
    p = _product(book, [name])
    doses = planned.agent_doses(p, planned.Dose(ml=ml, text=f"{ml} mL"), "MedicationRequest/x", book.terminology, book.records)
    assert [(d.agent.valueset, d.with_vasoconstrictor) for d in doses] == [(vs, True)]
    assert doses[0].mg == pytest.approx(ml * conc)


# -- a product that names two anesthetics: final concentrations or a mixture of stock solutions --------

@pytest.mark.parametrize("name,want", [
    # audit-2 r05: 20 mL of a 1:1 mixture is 10 mL of each stock solution (100 mg + 25 mg), never 20 mL of each
    ("lidocaine 1% / bupivacaine 0.25% 1:1 mixture", {"lidocaine": 100, "bupivacaine": 25}),
    ("Lidocaine 1% and bupivacaine 0.5% 50:50 mix", {"lidocaine": 100, "bupivacaine": 50}),
    ("bupivacaine 0.25% + lidocaine 2% 1:3", {"bupivacaine": 12.5, "lidocaine": 300}),
    ("lidocaine 1% with epinephrine 1:100,000 + bupivacaine 0.25%, 1:1 mixture", {"lidocaine": 100, "bupivacaine": 25}),
    # a mixture whose ratio is not stated: each share unknown (missing-data names it), never the whole volume x each
    ("lidocaine 1% + bupivacaine 0.25%", {"lidocaine": None, "bupivacaine": None}),
    ("lidocaine 1% / bupivacaine 0.25% mixture", {"lidocaine": None, "bupivacaine": None}),
    # RxNorm SCD 1012108 lists the FINAL concentration of each ingredient: the whole volume x each is right
    ("bupivacaine hydrochloride 3.75 MG/ML / lidocaine hydrochloride 10 MG/ML Injectable Solution",
     {"lidocaine": 200, "bupivacaine": 75}),
])
def test_a_mixture_of_stock_solutions_is_split_by_its_ratio(book, name, want):
    assert _mg(book, [name], 20) == pytest.approx(want)


def test_a_mixture_with_no_ratio_says_why_its_dose_is_unknown(book):
    p = _product(book, ["lidocaine 1% + bupivacaine 0.25%"])
    doses = planned.agent_doses(p, planned.Dose(ml=20, text="20 mL"), "MedicationRequest/x", book.terminology, book.records)
    assert all(d.mg is None and "mixing ratio is not stated" in d.how for d in doses)
    facts, total = planned.dose_facts(doses, 60.0, book.records)
    assert total is None and all(f["undosed_count"] == 1 and f["total_mg"] == 0 for f in facts)


def test_a_coded_final_concentration_name_wins_over_a_mixture_name(book):
    """A product whose code's display (or value-set name) is the RxNorm final-concentration name is read
    with it, whatever its local text says."""
    texts = ["LIDO 1%/BUPI 0.375% MIX", "bupivacaine hydrochloride 3.75 MG/ML / lidocaine hydrochloride 10 MG/ML Injectable Solution"]
    assert _mg(book, texts, 10) == pytest.approx({"lidocaine": 100, "bupivacaine": 37.5})


def test_medication_ingredient_strengths_are_per_ml_of_the_final_product_even_in_a_mixture(book):
    ml10 = {"value": 1, "unit": "mL", "code": "mL", "system": UCUM}
    ings = [("lidocaine hydrochloride", {"numerator": {"value": 5, "unit": "mg", "code": "mg", "system": UCUM}, "denominator": ml10}),
            ("bupivacaine hydrochloride", {"numerator": {"value": 1.25, "unit": "mg", "code": "mg", "system": UCUM}, "denominator": ml10})]
    assert _mg(book, ["lidocaine 1% / bupivacaine 0.25% 1:1 mixture"], 20, ings) == pytest.approx({"lidocaine": 100, "bupivacaine": 25})


_stock = st.sampled_from([("lidocaine", [0.5, 1, 1.5, 2]), ("bupivacaine", [0.25, 0.5, 0.75]),
                          ("ropivacaine", [0.2, 0.5, 0.75]), ("mepivacaine", [1, 1.5, 2])])


@settings(max_examples=200, deadline=None)
@given(pair=st.lists(_stock, min_size=2, max_size=2, unique_by=lambda s: s[0]), data=st.data(),
       ratio=st.tuples(st.integers(1, 9), st.integers(1, 9)), ml=st.integers(1, 60),
       sep=st.sampled_from([" / ", " + ", " and ", ", "]), marker=st.sampled_from(["mixture", "mix", ""]))
def test_generated_mixtures_split_the_volume_by_their_ratio(book, pair, data, ratio, ml, sep, marker):
    """Property: a name of two stock solutions with a mixing ratio gives each anesthetic its share of the
    volume (volume x its part of the ratio x its stock strength); the shares never add up to more than the
    volume (never the whole volume x each stock strength)."""
    (a, a_pcts), (b, b_pcts) = pair
    pa, pb = data.draw(st.sampled_from(a_pcts)), data.draw(st.sampled_from(b_pcts))
    name = f"{a} {pa:g}%{sep}{b} {pb:g}% {ratio[0]}:{ratio[1]} {marker}".strip()
    got = _mg(book, [name], ml)
    want = {a: ml * ratio[0] / sum(ratio) * pa * 10, b: ml * ratio[1] / sum(ratio) * pb * 10}
    assert got == pytest.approx(want, abs=1e-3), name  # mg are rounded to 0.001
    assert got[a] / (pa * 10) + got[b] / (pb * 10) == pytest.approx(ml, abs=1e-2)


def _dose(book, agent, mg, vaso=False, name=None):
    limit = next(a for a in book.records.anesthetic_limits.agents if a.valueset == agent)
    return planned.AgentDose(limit, name or agent, f"MedicationRequest/{agent}{mg}", vaso, mg, f"{mg} mg")


def test_orders_of_one_agent_are_summed(book):
    facts, total = planned.dose_facts([_dose(book, "lidocaine", 200), _dose(book, "lidocaine", 150)], 80.0, book.records)
    assert len(facts) == 1 and total is None
    assert facts[0]["total_mg"] == 350 and facts[0]["limit_mg"] == 300 and facts[0]["fraction"] > 1
    assert len(facts[0]["orders"]) == 2


def test_lidocaine_and_bupivacaine_are_additive(book):
    # 200/300 + 100/175 = 1.24: each under its own maximum, together above
    facts, total = planned.dose_facts([_dose(book, "lidocaine", 200), _dose(book, "bupivacaine", 100)], 80.0, book.records)
    assert all(f["fraction"] < 1 for f in facts)
    assert total["classes"] == 2 and total["fraction"] == pytest.approx(200 / 300 + 100 / 175, rel=1e-3)
    assert len(total["parts"]) == 2


def test_bupivacaine_with_epinephrine_has_its_own_limit(book):
    facts, _ = planned.dose_facts([_dose(book, "bupivacaine", 200, vaso=True)], 90.0, book.records)
    assert facts[0]["limit_mg"] == 225          # 3 mg/kg x 90 = 270, capped at 225
    facts, _ = planned.dose_facts([_dose(book, "bupivacaine", 200, vaso=True)], 60.0, book.records)
    assert facts[0]["limit_mg"] == 180          # 3 mg/kg x 60
    facts, _ = planned.dose_facts([_dose(book, "bupivacaine", 200)], None, book.records)
    assert facts[0]["limit_mg"] == 175 and "weight_kg" not in facts[0]


def test_unknown_dose_is_listed_not_dropped(book):
    unknown = planned.AgentDose(_dose(book, "lidocaine", 1).agent, "lidocaine 1 vial", "MedicationRequest/v", False, None, "1 vial")
    facts, _ = planned.dose_facts([_dose(book, "lidocaine", 100), unknown], 70.0, book.records)
    assert facts[0]["undosed_count"] == 1 and "1 vial" in facts[0]["undosed"][0] and facts[0]["total_mg"] == 100


def test_an_anesthetic_without_a_limit_is_named_with_its_dose_not_as_undosed(book):
    """An anesthetic the dose policy has no maximum for (agent None) has a dose that was read; it is
    named by the 'maximum dose ... none in the dose policy' note with what was ordered, not as
    'no usable dose in mg'."""
    other = planned.AgentDose(None, "chloroprocaine", "MedicationRequest/c", False, None, "300 mg")
    facts, _ = planned.dose_facts([other], 70.0, book.records)
    assert facts[0]["undosed"] == [] and "limit_mg" not in facts[0]
    assert facts[0]["parts"] == ["chloroprocaine: 300 mg"]


def test_regexes_are_linear_on_long_digit_runs(book):
    import time

    text = "1" * 200_000 + "[" * 50_000 + " mg/mL %"
    start = time.perf_counter()
    planned.strengths_in(text, book.records)
    assert time.perf_counter() - start < 0.5


# -- whole evaluations ---------------------------------------------------------------------------

def _bundle(*resources):
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01"}
WEIGHT = {"resourceType": "Observation", "id": "w", "status": "final", "subject": {"reference": "Patient/p1"},
          "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}, "effectiveDateTime": "2026-11-01",
          "valueQuantity": {"value": 70, "unit": "kg", "system": UCUM, "code": "kg"}}
TPI = {"resourceType": "ServiceRequest", "id": "tpi", "status": "draft", "intent": "order", "subject": {"reference": "Patient/p1"},
       "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "20552"}]},
       "bodySite": [{"text": "left gluteus medius"}]}


def _med(mid, text, value, unit, **extra):
    return {"resourceType": "MedicationRequest", "id": mid, "status": "draft", "intent": "order",
            "subject": {"reference": "Patient/p1"}, "basedOn": [{"reference": "ServiceRequest/tpi"}],
            "medicationCodeableConcept": {"text": text},
            "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}]}],
            **extra}


def _card(ev, rule):
    return next((c for c in ev.cards if c["source"]["topic"]["code"] == rule), None)


def test_two_lidocaine_orders_in_one_order_set_are_summed(evaluator):
    ev = evaluator.evaluate_resources([PATIENT, WEIGHT], draft_orders=[
        TPI, _med("m1", "lidocaine 1% injection", 20, "mL"), _med("m2", "lidocaine 1% injection", 15, "mL")], now=NOW)
    card = _card(ev, "anesthetic-dose")
    assert card and card["indicator"] == "critical"
    assert "350 mg" in card["detail"] and "315 mg" in card["detail"]   # 4.5 mg/kg x 70 kg


def test_combined_anesthetics_card_shows_each_part(evaluator):
    ev = evaluator.evaluate_resources([PATIENT, WEIGHT], draft_orders=[
        TPI, _med("m1", "lidocaine 1% injection", 20, "mL"), _med("m2", "bupivacaine 0.5% injection", 25, "mL")], now=NOW)
    card = _card(ev, "anesthetic-dose")
    assert card and card["indicator"] == "critical"
    assert "additive" in card["detail"] and "lidocaine 200 mg" in card["detail"] and "bupivacaine 125 mg" in card["detail"]


def test_under_every_limit_gives_no_dose_card(evaluator):
    ev = evaluator.evaluate_resources([PATIENT, WEIGHT], draft_orders=[
        TPI, _med("m1", "lidocaine 1% injection", 5, "mL"), _med("m2", "bupivacaine 0.25% injection", 5, "mL")], now=NOW)
    assert _card(ev, "anesthetic-dose") is None


def test_a_volume_that_cannot_be_converted_is_said(evaluator):
    ev = evaluator.evaluate_resources([PATIENT, WEIGHT], draft_orders=[TPI, _med("m1", "Xylocaine injection", 10, "mL")], now=NOW)
    card = _card(ev, "missing-data")
    assert card and "dose of lidocaine (no usable dose in mg: Xylocaine injection (10 mL" in card["detail"]


def test_an_unrecognised_draft_medication_of_the_order_is_named(evaluator):
    ev = evaluator.evaluate_resources([PATIENT, WEIGHT], draft_orders=[TPI, _med("m1", "Zylocort 40", 1, "mL")], now=NOW)
    card = _card(ev, "missing-data")
    assert card and "Zylocort 40" in card["detail"] and "anesthetic and steroid checks are incomplete" in card["detail"]


def test_an_unrecognised_site_never_silences_the_site_checks(evaluator):
    cellulitis = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                  "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                  "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "L03.311"}], "text": "Cellulitis of abdominal wall"},
                  "bodySite": [{"text": "abdominal wall"}]}
    order = dict(TPI, bodySite=[{"text": "Area 51 of the body"}])
    ev = evaluator.evaluate_resources([PATIENT, WEIGHT, cellulitis], draft_orders=[order, _med("m1", "lidocaine 1%", 5, "mL")], now=NOW)
    infection = _card(ev, "local-infection")
    assert infection and infection["indicator"] == "warning" and "not recognised" in infection["detail"]
    thoracic = _card(ev, "thoracic-site")
    assert thoracic and thoracic["summary"].startswith("Cannot tell whether injection site Area 51")


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_synthesized_order_is_valid_fhir(book, version):
    from cds_tpi.fhir.validate import validate_resources

    order = planned.synthesize([planned.Injectate("lidocaine", 50, "mg"), planned.Injectate("triamcinolone", 40, "mg")],
                               ["left trapezius", "right trapezius", "left rhomboid"], "Patient/p1",
                               book.terminology, book.records, version)
    assert [list(issues) for issues in validate_resources(order, version)] == [[] for _ in order]
    code = order[0]["code"]["concept"] if version == "R5" else order[0]["code"]
    assert code["coding"][0]["code"] == "20553"   # 3 or more muscles, from tpi-procedures.json


def test_r5_cli_order_is_evaluated_not_skipped(evaluator_r5):
    from cds_tpi.fhir.read import Located, read_object

    order = planned.synthesize([planned.Injectate("lidocaine", 400, "mg")], ["gluteus medius"], "Patient/p1",
                               evaluator_r5.book.terminology, evaluator_r5.book.records, "R5")
    doc = read_object([PATIENT], "r5")
    doc.draft_orders = [Located(f"[{i}]", r) for i, r in enumerate(order)]
    ev = evaluator_r5.evaluate_document(doc, now=NOW)
    assert not ev.skipped
    assert _card(ev, "anesthetic-dose")["indicator"] == "critical"


@pytest.mark.parametrize("text,tpi", [
    ("INJECT TRIGGER POINTS 1 OR 2", True), ("PR INJ TRIGGER POINT 1/2 MUSCL", True), ("TPI 3+ muscles", True),
    ("Trigger pt injection", True), ("Physical therapy evaluation", False), ("Joint injection, knee", False)])
def test_tpi_orders_as_ehrs_name_them(book, text, tpi):
    order = {"resourceType": "ServiceRequest", "status": "draft", "intent": "order",
             "code": {"coding": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.696580", "code": "12345"}], "text": text}}
    assert planned.is_tpi(order, book.terminology, book.records) is tpi


# -- several dosageInstructions / doseAndRate entries (audit 7 item 1) -------------------------------

def _q(value, unit):
    return {"doseQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def _dosed(*dosages):
    return {"resourceType": "MedicationRequest", "dosageInstruction": list(dosages)}


def test_every_dosage_instruction_is_summed(book):
    dose = planned.ordered_dose(_dosed(*[{"doseAndRate": [_q(15, "mL")]}] * 3), book.records)
    assert dose.ml == 45 and dose.text == "15 mL + 15 mL + 15 mL"
    p = _product(book, ["lidocaine 1% injection"])
    (d,) = planned.agent_doses(p, dose, "MedicationRequest/x", book.terminology, book.records)
    assert d.mg == 450


def test_dose_and_rate_entries_of_one_instruction_are_one_dose_not_a_sum(book):
    # Epic writes the same dose as 'admin amount' (mL) and 'calculated' (mg): counted once, the larger
    dose = planned.ordered_dose(_dosed({"doseAndRate": [_q(10, "mL"), _q(100, "mg")]},
                                       {"doseAndRate": [_q(10, "mL"), _q(100, "mg")]}), book.records)
    p = _product(book, ["lidocaine 1% injection"])
    (d,) = planned.agent_doses(p, dose, "MedicationRequest/x", book.terminology, book.records)
    assert d.mg == 200
    # mL and mg that disagree: the larger counts
    dose = planned.ordered_dose(_dosed({"doseAndRate": [_q(10, "mL"), _q(150, "mg")]}), book.records)
    (d,) = planned.agent_doses(p, dose, "MedicationRequest/x", book.terminology, book.records)
    assert d.mg == 150


def test_dose_range_counts_at_its_high_end(book):
    rng = {"doseRange": {"low": {"value": 5, "unit": "mL", "code": "mL"}, "high": {"value": 20, "unit": "mL", "code": "mL"}}}
    assert planned.ordered_dose(_dosed({"doseAndRate": [rng]}, {"doseAndRate": [rng]}), book.records).ml == 40
    low_only = {"doseRange": {"low": {"value": 5, "unit": "mL", "code": "mL"}}}
    assert planned.ordered_dose(_dosed({"doseAndRate": [low_only]}), book.records).ml == 5


def test_an_unreadable_instruction_beside_readable_ones_is_named_and_the_rest_counted(book):
    dose = planned.ordered_dose(_dosed({"doseAndRate": [_q(35, "mL")]}, {"doseAndRate": [_q(1, "vial")]}), book.records)
    p = _product(book, ["lidocaine 1% injection"])
    counted, unknown = planned.agent_doses(p, dose, "MedicationRequest/x", book.terminology, book.records)
    assert counted.mg == 350 and unknown.mg is None and "1 vial" in unknown.how
    facts, _ = planned.dose_facts([counted, unknown], 70, book.records)
    assert facts[0]["total_mg"] == 350 and facts[0]["undosed_count"] == 1


def test_three_dosages_in_one_draft_order_give_the_dose_card(evaluator):
    mr = _med("m1", "lidocaine 1% injection", 15, "mL")
    mr["dosageInstruction"] = mr["dosageInstruction"] * 3
    ev = evaluator.evaluate_resources([PATIENT, WEIGHT], draft_orders=[TPI, mr], now=NOW)
    card = _card(ev, "anesthetic-dose")
    assert card and card["indicator"] == "critical" and "450 mg" in card["detail"]


# -- an injectate basedOn the planned TPI order, whatever its status (audit 7 item 2) ----------------

def _doc(*resources):
    import orjson

    from cds_tpi.fhir.read import read_bytes
    return read_bytes(orjson.dumps(_bundle(*resources)), "t.json")


@pytest.mark.parametrize("status,part", [("active", True), ("on-hold", True), ("unknown", True), ("completed", True),
                                         ("draft", True), ("cancelled", False), ("stopped", False), ("entered-in-error", False)])
def test_a_medication_request_based_on_the_draft_tpi_is_part_of_the_order(evaluator, status, part):
    mr = dict(_med("m1", "lidocaine 1% injection", 40, "mL"), status=status)
    doc = _doc(PATIENT, WEIGHT, TPI, mr).with_drafts(evaluator.is_tpi)
    assert (mr in [loc.resource for loc in doc.draft_orders]) is part
    assert (mr in [loc.resource for loc in doc.resources]) is not part
    ev = evaluator.evaluate_document(_doc(PATIENT, WEIGHT, TPI, mr), now=NOW)
    assert (_card(ev, "anesthetic-dose") is not None) is part


def test_based_on_a_draft_that_is_not_a_tpi_stays_in_the_record(evaluator):
    other = dict(TPI, id="lab", code={"text": "CBC with differential"})
    apixaban = dict(_med("m1", "apixaban 5 mg tablet", 5, "mg"), status="active",
                    basedOn=[{"reference": "ServiceRequest/lab"}])
    doc = _doc(PATIENT, WEIGHT, TPI, other, apixaban).with_drafts(evaluator.is_tpi)
    assert apixaban in [loc.resource for loc in doc.resources]
    assert _card(evaluator.evaluate_document(_doc(PATIENT, WEIGHT, TPI, other, apixaban), now=NOW), "anticoagulant")


def test_based_on_by_full_url_and_absolute_reference(evaluator):
    import orjson

    from cds_tpi.fhir.read import read_bytes
    mr = dict(_med("m1", "lidocaine 1% injection", 40, "mL"), status="active",
              basedOn=[{"reference": "urn:uuid:5b1c6a3e-0000-4000-8000-000000000001"}])
    bundle = _bundle(PATIENT, WEIGHT, TPI, mr)
    bundle["entry"][2]["fullUrl"] = "urn:uuid:5b1c6a3e-0000-4000-8000-000000000001"
    doc = read_bytes(orjson.dumps(bundle), "t.json").with_drafts(evaluator.is_tpi)
    assert mr in [loc.resource for loc in doc.draft_orders]
    mr2 = dict(mr, basedOn=[{"reference": "https://ehr.example.org/fhir/ServiceRequest/tpi"}])
    doc = _doc(PATIENT, WEIGHT, TPI, mr2).with_drafts(evaluator.is_tpi)
    assert mr2 in [loc.resource for loc in doc.draft_orders]


SCT = "http://snomed.info/sct"


@pytest.mark.parametrize("quantity,mg,ml", [
    # Cerner / Oracle Health: the unit coded in SNOMED CT, the human unit as text (records.yaml unit_codes)
    ({"value": 25, "unit": "mL", "system": SCT, "code": "258773002"}, None, 25),
    ({"value": 400, "unit": "mg", "system": SCT, "code": "258684004"}, 400, None),
    ({"value": 0.5, "system": SCT, "code": "258682000"}, 500, None),          # gram, code only
    ({"value": 250, "system": SCT, "code": "258685003"}, 0.25, None),         # microgram, code only
    ({"value": 0.02, "system": SCT, "code": "258770004"}, None, 20),          # litre, code only
    # a SNOMED code no table knows: the unit text is still read
    ({"value": 20, "unit": "mL", "system": SCT, "code": "999999999"}, None, 20),
    # a UCUM code, or a code with no system, is a unit
    ({"value": 20, "code": "mL"}, None, 20),
    ({"value": 20, "system": UCUM, "code": "mg"}, 20, None),
    # a code of a system that is neither UCUM nor in unit_codes is not a unit; its text is
    ({"value": 20, "unit": "mL", "system": "urn:oid:2.16.840.1.113883.6.999", "code": "mg"}, None, 20),
])
def test_dose_units_are_read_from_a_ucum_or_mapped_code_and_the_unit_text(book, quantity, mg, ml):
    dose = planned.ordered_dose(_dosed({"doseAndRate": [{"doseQuantity": quantity}]}), book.records)
    assert (dose.mg, dose.ml) == (mg, ml)


def test_a_snomed_unit_code_is_never_read_as_the_unit_itself(book):
    # the audit's a01: 25 mL of 2 % lidocaine coded 258773002 was "no usable dose"; it is 500 mg
    dose = planned.ordered_dose(_dosed({"doseAndRate": [{"doseQuantity": {
        "value": 25, "unit": "mL", "system": SCT, "code": "258773002"}}]}), book.records)
    p = _product(book, ["lidocaine hydrochloride 20 MG/ML Injectable Solution"])
    (d,) = planned.agent_doses(p, dose, "MedicationRequest/x", book.terminology, book.records)
    assert d.mg == 500 and dose.text == "25 mL"
    # an unknown SNOMED unit with no text: unread, and named with its code (not silently 0)
    dose = planned.ordered_dose(_dosed({"doseAndRate": [{"doseQuantity": {"value": 2, "system": SCT, "code": "732936001"}}]}),
                                book.records)
    assert dose.mg is None and dose.ml is None and "732936001" in dose.text


def test_a_code_and_a_unit_text_that_disagree_count_the_larger_dose(book):
    dose = planned.ordered_dose(_dosed({"doseAndRate": [{"doseQuantity": {
        "value": 25, "unit": "mL", "system": SCT, "code": "258684004"}}]}), book.records)
    assert (dose.mg, dose.ml) == (25, 25)
    p = _product(book, ["lidocaine 2% injection"])
    (d,) = planned.agent_doses(p, dose, "MedicationRequest/x", book.terminology, book.records)
    assert d.mg == 500


def test_dose_range_and_ingredient_strength_read_snomed_units_too(book):
    rng = {"doseRange": {"low": {"value": 5, "unit": "mL", "system": SCT, "code": "258773002"},
                         "high": {"value": 30, "unit": "mL", "system": SCT, "code": "258773002"}}}
    assert planned.ordered_dose(_dosed({"doseAndRate": [rng]}), book.records).ml == 30
    strength = {"numerator": {"value": 10, "system": SCT, "code": "258684004"},
                "denominator": {"value": 1, "system": SCT, "code": "258773002"}}
    p = _product(book, ["Xylocaine"], [("lidocaine", strength)])
    assert planned.agent_strength(p, "lidocaine", set(), book.terminology, book.records) == (10.0, "ingredient strength")


# -- the service gate: a procedure order not recognised as a TPI, with an injectate ordered with it -----

def _sr(sid, text):
    return {"resourceType": "ServiceRequest", "id": sid, "status": "draft", "intent": "order",
            "code": {"coding": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.696580", "code": "PRO1"}], "text": text}}


def _mr(mid, based_on, **medication):
    return {"resourceType": "MedicationRequest", "id": mid, "status": "draft", "intent": "order",
            "basedOn": [{"reference": based_on}], **medication}


@pytest.mark.parametrize("medication,expected", [
    ({"medicationCodeableConcept": {"text": "LIDOCAINE HCL 1 % IJ SOLN"}}, True),
    ({"medicationReference": {"reference": "#m1"},
      "contained": [{"resourceType": "Medication", "id": "m1",
                     "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1085754"}]}}]}, True),
    ({"medicationReference": {"reference": "Medication/x", "display": "Kenalog-40 injection"}}, True),
    ({"medicationCodeableConcept": {"text": "Ondansetron 4 mg ODT"}}, False),
])
def test_an_unrecognised_procedure_order_with_an_injectate_may_be_a_tpi(book, medication, expected):
    drafts = [_sr("sr1", "INJ MUSCLE 1-2 SITES"), _mr("mr1", "ServiceRequest/sr1", **medication)]
    found = planned.unrecognised_injection_orders(drafts, book.terminology, book.records)
    assert [o["id"] for o in found] == (["sr1"] if expected else [])


def test_a_lab_order_beside_an_unlinked_injectate_is_not_an_injection_order(book):
    lab = _sr("lab1", "CBC")
    lido = {"resourceType": "MedicationRequest", "id": "mr1", "status": "draft", "intent": "order",
            "medicationCodeableConcept": {"text": "lidocaine 1% injection"}}
    assert planned.unrecognised_injection_orders([lab, lido], book.terminology, book.records) == []
    # a recognised TPI is not "unrecognised"
    tpi = _sr("sr2", "Trigger point injection")
    assert planned.unrecognised_injection_orders([tpi, _mr("mr2", "ServiceRequest/sr2", medicationCodeableConcept={"text": "lidocaine"})],
                                                 book.terminology, book.records) == []


def test_the_service_gate_evaluates_an_unrecognised_injection_order(evaluator):
    """order-sign with only a locally coded injection order and lidocaine basedOn it: evaluated (the
    answer names the order as not recognised), where it used to get no answer at all."""
    from cds_tpi.service.hooks import HookCall, should_evaluate
    from cds_tpi.service.discovery import SERVICES
    service = next(s for s in SERVICES.values() if s.hook == "order-sign")
    drafts = [_sr("sr1", "INJ MUSCLE 1-2 SITES"), _mr("mr1", "ServiceRequest/sr1", medicationCodeableConcept={"text": "lidocaine 1%"})]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in drafts]}
    call = HookCall(service, {"context": {"draftOrders": bundle}}, "x", "p1", None, None)
    assert should_evaluate(call, evaluator)
    lab_only = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": _sr("lab1", "CBC")}]}
    assert not should_evaluate(HookCall(service, {"context": {"draftOrders": lab_only}}, "x", "p1", None, None), evaluator)


@pytest.mark.parametrize("selections,drafts,expected", [
    (["ServiceRequest/sr1"], [{"fullUrl": "urn:uuid:a", "resource": _sr("sr1", "Trigger point injection")}], True),
    (["urn:uuid:a"], [{"fullUrl": "urn:uuid:a", "resource": {k: v for k, v in _sr("sr1", "Trigger point injection").items() if k != "id"}}], True),
    (["https://ehr.example.org/fhir/ServiceRequest/sr1"], [{"resource": _sr("sr1", "Trigger point injection")}], True),
    # the selected lidocaine order belongs to the TPI order it is basedOn
    (["MedicationRequest/mr1"], [{"resource": _sr("sr1", "Trigger point injection")},
                                 {"resource": _mr("mr1", "ServiceRequest/sr1", medicationCodeableConcept={"text": "lidocaine"})}], True),
    (["ServiceRequest/lab1"], [{"resource": _sr("sr1", "Trigger point injection")}, {"resource": _sr("lab1", "CBC")}], False),
])
def test_order_select_gate_finds_the_selected_drafts(evaluator, selections, drafts, expected):
    """order-select evaluates when a selected draft - named by Type/id, by its entry's fullUrl, or an
    absolute URL - is a TPI or belongs to one (audit-2 r10: a draft selected by its urn:uuid got no answer)."""
    from cds_tpi.service.hooks import HookCall, should_evaluate
    from cds_tpi.service.discovery import SERVICES
    service = next(s for s in SERVICES.values() if s.hook == "order-select")
    context = {"selections": selections, "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": drafts}}
    assert should_evaluate(HookCall(service, {"context": context}, "x", "p1", None, None), evaluator) is expected


@pytest.mark.parametrize("extra,expected", [
    ({"note": [{"text": "lidocaine 1% inj for TPI - bilateral upper trapezius"}]}, True),
    ({"reasonCode": [{"text": "Trigger point injection"}]}, True),
    ({"dosageInstruction": [{"text": "inject 3 mL into each trigger point"}]}, True),
    ({"note": [{"text": "for laceration repair"}]}, False),
    ({}, False),
])
def test_an_injectate_ordered_alone_for_a_tpi_is_evaluated(book, evaluator, extra, expected):
    """order-sign whose draftOrders hold only the injectate, saying it is for a TPI (audit-3b o06/o07):
    the service evaluates it (dose, allergy and steroid checks) instead of answering no cards."""
    lido = {"resourceType": "MedicationRequest", "id": "mr1", "status": "draft", "intent": "order",
            "medicationCodeableConcept": {"text": "LIDOCAINE HCL 1 % IJ SOLN"}, **extra}
    assert bool(planned.injectates_for_tpi([lido], book.terminology, book.records)) is expected
    assert evaluator.may_be_tpi_order([lido]) is expected
    ondansetron = dict(lido, medicationCodeableConcept={"text": "ondansetron 4 mg"})
    assert not planned.injectates_for_tpi([ondansetron], book.terminology, book.records)


def _per_site_order(ml, text=None, timing=None):
    di = {"doseAndRate": [{"doseQuantity": {"value": ml, "unit": "mL", "system": UCUM, "code": "mL"}}]}
    if text is not None:
        di["text"] = text
    if timing is not None:
        di["timing"] = {"repeat": timing}
    return {"resourceType": "MedicationRequest", "id": "mr1", "status": "draft", "intent": "order", "dosageInstruction": [di]}


@pytest.mark.parametrize("ml,text,timing,want", [
    (5, "5 mL per site x 6 sites", None, 30),                     # audit-3b d08
    (3, "3 mL each trigger point, 6 trigger points", {"count": 6}, 18),   # audit-3b d12: counted once, not 6 x 6
    (3, None, {"count": 6}, 18),                                  # timing.repeat.count alone
    (3, None, {"count": 2, "countMax": 6}, 18),                   # a range of counts: the most
    (3, "3 mL each to 4 TPs", None, 12),
    (2, "2 mL per trigger point to 4 trigger points", None, 8),
    (5, "6 x 5 mL", None, 30),
    (5, "5 mL x 6", None, 30),
    (30, "5 mL per site x 6 sites", None, 30),                    # the ordered amount is already the total
    (5, "5 mL total divided among 6 sites", None, 5),             # not a per-site dose: the amount is the total
    (5, "lidocaine 1% with epinephrine 1:100,000, 5 mL", None, 5),
])
def test_a_dose_per_site_is_multiplied_by_the_number_of_sites(book, ml, text, timing, want):
    """audit-3b d08/d12 (wrong all-clears): a dose written per site or repeated by timing.repeat.count is
    the amount times the count (records.yaml per_site_dose words)."""
    dose = planned.ordered_dose(_per_site_order(ml, text, timing), book.records)
    assert dose.ml == pytest.approx(want)
    assert not dose.unread


@pytest.mark.parametrize("text", ["5 mL per site", "5 mL to each trigger point, bilateral trapezius", "5 mL each, six sites",
                                  "5 mL per site x 600"])   # not a number of injection sites
def test_a_dose_per_site_without_a_count_is_never_the_whole_dose(book, text):
    """A per-site dose whose number of sites is not stated (in digits): one site is counted and the
    total is named as unknown (missing-data), never read as the whole dose."""
    dose = planned.ordered_dose(_per_site_order(5, text), book.records)
    assert dose.ml == 5 and "for one site" in dose.text
    assert len(dose.unread) == 1 and "the dose is per site and the number of sites is not stated" in dose.unread[0]
    product = _product(book, ["lidocaine hydrochloride 20 MG/ML Injectable Solution"])
    parts = planned.agent_doses(product, dose, "MedicationRequest/mr1", book.terminology, book.records)
    assert [d.mg for d in parts] == [100, None]


def test_the_per_site_words_are_data(book):
    """The words come from records.yaml per_site_dose: without them "5 mL per site x 6" is one amount."""
    from dataclasses import replace
    policy = replace(book.records, per_site_words=(), site_count_words=())
    assert planned.ordered_dose(_per_site_order(5, "5 mL per site x 6 sites"), policy).ml == 5
    assert planned.ordered_dose(_per_site_order(3, None, {"count": 6}), policy).ml == 18   # the timing count is FHIR, not words


@pytest.mark.parametrize("name,ml,want", [
    # a compounded "X IN Y n%": the percent after "in" is the lidocaine's (audit 4 w28: 5 mL -> 50 mg)
    ("TRIAMCINOLONE 40 MG IN LIDOCAINE 1% 5 ML (COMPOUNDED TPI MIXTURE)", 5, {"lidocaine": 50}),
    ("bupivacaine 2.5 mg/mL in sodium chloride 0.9%", 10, {"bupivacaine": 25}),
])
def test_a_strength_after_in_belongs_to_the_product_named_after_it(book, name, ml, want):
    assert _mg(book, [name], ml) == pytest.approx(want)


def test_a_childs_dose_without_a_weight_is_marked_not_checked(book):
    """No usable weight: the absolute (adult) maximum is the limit; for a child (under records.yaml
    anesthetic_limits adult_min_age_years) the fact says child, so anesthetic-dose warns (audit 4)."""
    adult_age = book.records.anesthetic_limits.adult_min_age_years
    assert adult_age == 18
    (child,), _ = planned.dose_facts([_dose(book, "lidocaine", 250)], None, book.records, 7)
    assert child["child"] is True and child["age_years"] == 7 and child["mg_per_kg"] == 4.5 and child["limit_mg"] == 300
    (adult,), _ = planned.dose_facts([_dose(book, "lidocaine", 250)], None, book.records, adult_age)
    assert "child" not in adult and "age_unknown" not in adult
    (unknown,), _ = planned.dose_facts([_dose(book, "lidocaine", 250)], None, book.records, None)
    assert unknown["age_unknown"] is True and "child" not in unknown
    (weighed,), _ = planned.dose_facts([_dose(book, "lidocaine", 250)], 20.0, book.records, 7)
    assert weighed["limit_mg"] == 90 and weighed["fraction"] > 1 and "child" not in weighed


def test_an_injectate_based_on_an_order_not_in_the_request_is_evaluated(book, evaluator):
    """order-sign whose draftOrders hold lidocaine and Kenalog basedOn a ServiceRequest that is not among
    them (signed earlier, on hold): evaluated (audit 4: the service answered no cards, the CLI warned)."""
    kenalog = _mr("mr1", "ServiceRequest/sr-tpi", medicationCodeableConcept={"text": "KENALOG-40 40 MG/ML IJ SUSP"})
    assert planned.injectates_of_absent_orders([kenalog], book.terminology, book.records) == [kenalog]
    assert evaluator.may_be_tpi_order([kenalog])
    # the order it is basedOn is in the request (and not a TPI, with nothing else): not this case
    assert planned.injectates_of_absent_orders([_sr("sr-tpi", "CBC"), kenalog], book.terminology, book.records) == []
    ondansetron = _mr("mr2", "ServiceRequest/sr-x", medicationCodeableConcept={"text": "ondansetron 4 mg"})
    assert not evaluator.may_be_tpi_order([ondansetron])
