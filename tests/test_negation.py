"""Text negation (terminology.affirmed): a cue denies only the concept it governs, within its sentence.

A negated concept is not matched by TEXT (coded matches always count). Audit 7 item 3: "Cellulitis of
lower back, not improving" and "Pregnancy at 24 weeks, no complications" were read as negated because
"not" / "no" appeared anywhere in the text."""

from __future__ import annotations

import time

import pytest

from cds_tpi.ruleset import load_rulebook
from cds_tpi.terminology import compile_cues

from .conftest import NOW, RULES

INFECTION, PREGNANCY = "skin-soft-tissue-infections", "pregnancy"


@pytest.fixture(scope="module")
def book():
    return load_rulebook(RULES)


@pytest.fixture(scope="module")
def cues(book):
    return compile_cues(book.records.text_negation_cues)


def _matched(book, cues, text) -> frozenset[str]:
    term = book.terminology
    return term.match([], term.affirmed(text, cues)).all


def test_the_value_sets_named_here_exist(book):
    assert {INFECTION, PREGNANCY} <= set(book.terminology.defs)


NEGATED = [
    ("No cellulitis", INFECTION),
    ("no cellulitis of the lower back", INFECTION),
    ("Not pregnant", PREGNANCY),
    ("Patient is not pregnant", PREGNANCY),
    ("Denies pregnancy", PREGNANCY),
    ("Negative for cellulitis", INFECTION),
    ("History of cellulitis (2019)", INFECTION),
    ("h/o cellulitis", INFECTION),
    ("No history of cellulitis", INFECTION),
    ("No evidence of cellulitis", INFECTION),
    ("No signs of abscess", INFECTION),
    ("Without cellulitis", INFECTION),
    ("Cellulitis ruled out", INFECTION),
    ("Cellulitis, resolved", INFECTION),
    ("Cellulitis resolved 2019", INFECTION),
    ("Pregnancy: no", PREGNANCY),
    ("Ruled out cellulitis", INFECTION),
    ("Resolved cellulitis of back", INFECTION),
    ("NO CELLULITIS", INFECTION),
    ("Pregnancy ruled out, no complications", PREGNANCY),
    ("Sepsis workup: cellulitis ruled out, discharged home", INFECTION),
    ("Cellulitis (resolved)", INFECTION),
]


@pytest.mark.parametrize("text,vs", NEGATED)
def test_a_cue_before_the_concept_or_ending_its_sentence_negates_it(book, cues, text, vs):
    assert vs not in _matched(book, cues, text)
    assert vs in _matched(book, (), text)  # the concept is there without negation


AFFIRMED = [
    ("Cellulitis of lower back, not improving on Keflex", INFECTION),
    ("Cellulitis not improving", INFECTION),
    ("Pregnancy at 24 weeks, no complications", PREGNANCY),
    ("Pregnant, no complications", PREGNANCY),
    ("Pregnancy, not high risk", PREGNANCY),
    ("Cellulitis of back without abscess", INFECTION),       # "without" governs abscess, not cellulitis
    ("No fever. Cellulitis of lower back", INFECTION),        # the cue is in another sentence
    ("No, cellulitis is present", INFECTION),                 # punctuation between the cue and the concept
    ("Cellulitis, not resolved", INFECTION),                  # a negated cue does not negate
    ("Cellulitis, not ruled out", INFECTION),
    ("Abscess of back; no drainage", INFECTION),
    ("Pregnant (no prenatal care)", PREGNANCY),
    ("Cellulitis, no improvement", INFECTION),
    ("Cellulitis of back, fever ruled out", INFECTION),       # the post cue denies only its own clause
    ("Cellulitis of back. Pregnancy ruled out", INFECTION),
]


@pytest.mark.parametrize("text,vs", AFFIRMED)
def test_a_cue_that_governs_another_word_does_not_negate_the_concept(book, cues, text, vs):
    assert vs in _matched(book, cues, text)


def test_only_the_governed_concept_is_dropped(book, cues):
    # "No pregnancy" is denied, the cellulitis after it is not
    got = _matched(book, cues, "No pregnancy. Cellulitis of lower back")
    assert INFECTION in got and PREGNANCY not in got
    # "Abscess of back without cellulitis": the abscess is there (the same value set still matches)
    assert INFECTION in _matched(book, cues, "Abscess of back without cellulitis")


def test_nothing_denied_gives_the_text_unchanged(book, cues):
    text = "Cellulitis of lower back, not improving on Keflex"
    assert book.terminology.affirmed(text, cues) == [text]
    assert book.terminology.affirmed("", cues) == []


def test_negation_is_linear_on_long_and_hostile_texts(book, cues):
    term = book.terminology
    for text in ("no " * 200_000, "not " * 100_000 + "cellulitis", "no cellulitis, " * 50_000,
                 "(" * 300_000, "[" * 100_000 + "no cellulitis", "1" * 300_000 + " resolved", ". " * 200_000):
        start = time.perf_counter()
        term.affirmed(text, cues)
        assert time.perf_counter() - start < 0.5, text[:20]


# -- whole evaluations: text-only conditions (EHR problem lists coded by IMO only) -----------------

PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01", "gender": "female"}
TPI = {"resourceType": "ServiceRequest", "id": "tpi", "status": "draft", "intent": "order", "subject": {"reference": "Patient/p1"},
       "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "20552"}]},
       "bodySite": [{"text": "left lumbar paraspinals"}]}
STEROID = {"resourceType": "MedicationRequest", "id": "tri", "status": "draft", "intent": "order",
           "subject": {"reference": "Patient/p1"}, "basedOn": [{"reference": "ServiceRequest/tpi"}],
           "medicationCodeableConcept": {"text": "triamcinolone acetonide 40 mg/mL injection"},
           "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 40, "unit": "mg", "code": "mg"}}]}]}


def _problem(text):
    return {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://e-imo.com/products/problem-it", "code": "IMO1"}], "text": text},
            "onsetDateTime": "2026-11-18"}


def _rules(evaluator, text):
    ev = evaluator.evaluate_resources([PATIENT, _problem(text)], draft_orders=[TPI, STEROID], now=NOW)
    return {c["source"]["topic"]["code"] for c in ev.cards}


@pytest.mark.parametrize("text,rule,fires", [
    ("Cellulitis of lower back, not improving on Keflex", "local-infection", True),
    ("No cellulitis of lower back", "local-infection", False),
    ("Pregnancy at 24 weeks, no complications", "pregnancy-steroid", True),
    ("Not pregnant", "pregnancy-steroid", False),
])
def test_text_only_problems(evaluator, text, rule, fires):
    assert (rule in _rules(evaluator, text)) is fires
