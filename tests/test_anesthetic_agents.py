"""Local anesthetics other than lidocaine (ropivacaine, mepivacaine, bupivacaine): each has its own
maximum (rules/records.yaml anesthetic_limits), a product coded only by its RxNorm code is converted
from mL to mg with THAT anesthetic's own strength, and all of them add up in the combined load. The
code-only property test also runs over every lidocaine product (Xylocaine SBDs included), and an
anesthetic with no maximum (chloroprocaine) is recognised but never given a guessed dose or limit."""

from __future__ import annotations

import re

import pytest

from cds_tpi import order as planned
from cds_tpi.ruleset import load_rulebook

from .conftest import RULES

RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
AGENTS = ("ropivacaine", "mepivacaine", "bupivacaine", "lidocaine")


@pytest.fixture(scope="module")
def book():
    return load_rulebook(RULES)


def _limit(book, agent):
    return next(a for a in book.records.anesthetic_limits.agents if a.valueset == agent)


def _doses(book, product, ml):
    return planned.agent_doses(product, planned.Dose(ml=ml, text=f"{ml} mL"), "MedicationRequest/x",
                               book.terminology, book.records)


def test_every_product_code_with_a_strength_uses_its_own_anesthetics_strength(book):
    """For every RxNorm product of the ropivacaine / mepivacaine / bupivacaine / lidocaine value sets whose name
    gives a strength: coded only by its code (no display, no text, no ingredients), 9 mL is 9 x the
    mg/mL written next to that anesthetic in the name, never the epinephrine's, the fentanyl's, the
    pack volume ('100 ML ...') or another number. A product of two anesthetics (bupivacaine +
    lidocaine) gives each its own mg, from its own part of the name."""
    term = book.terminology
    limited = [a.valueset for a in book.records.anesthetic_limits.agents]
    checked = []
    for agent in AGENTS:
        for system, code, display in term.defs[agent].displays:
            if system not in (RX, NDC) or not re.search(r"\d MG/ML", display, re.I):
                continue
            name = term.display_of(system, code)
            assert name == display
            want = {}
            for part in name.split(" / "):
                for named in term.match([], [part]).all & set(limited):
                    conc = float(re.search(r"(\d+(?:\.\d+)?) MG/ML", part, re.I).group(1))
                    want[named] = pytest.approx(9 * conc)
            assert agent in want, name
            vs = term.match([(system, code)], []).all          # the code alone
            assert set(want) <= vs and "local-anesthetics" in vs
            got = {d.agent.valueset: d.mg for d in _doses(book, planned.Product("", vs, (name,)), 9) if d.agent}
            assert got == want, name
            checked.append(code)
            if system == NDC:   # an NDC is also sent as 11 digits without hyphens (as stored) or hyphenated
                assert set(want) <= term.match([(system, f"{code[:5]}-{code[5:9]}-{code[9:]}")], []).all, code
    # mepivacaine + epinephrine 1012792 (NEMSIS); Naropin 1734478, 1734348 and bupivacaine 1724884,
    # 1725082 (MIMIC-IV map); fentanyl + ropivacaine 1233685-1233687 (OMTK); bupivacaine + lidocaine
    # 1012108 (VSAC 1021.73): valuesets/README.md "Product codes (issue 7)"
    assert {"1012792", "1734478", "1734348", "1724884", "1725082", "1233685", "1233686", "1233687",
            "1012108"} <= set(checked)
    # Xylocaine SBDs 1010035, 1737563, 1737567, 1737569, Xylocaine with Epinephrine 1010755, 1010763,
    # 1010844 (40 MG/ML) and 1737744 (500 ML ... 4 MG/ML: 4, not 500) from the MIMIC-IV map
    assert {"1010035", "1737563", "1737567", "1737569", "1010755", "1010763", "1010844", "1737744"} <= set(checked)
    # NDC-only products, named in the value sets by their MIMIC-IV map RxNorm names (valuesets/README.md "NDC
    # codes"): Hospira lidocaine 1% vial 00409427601, Xylocaine with Epinephrine 1% 63323048257, Naropin
    # 0.5% 00186086347, bupivacaine 0.5% 00409116202
    assert {"00409427601", "63323048257", "00186086347", "00409116202"} <= set(checked)


@pytest.mark.parametrize("code,want", [("1010755", 90), ("1010763", 180)])
def test_xylocaine_with_epinephrine_code_only_is_lidocaine_with_epinephrine(book, code, want):
    """Xylocaine with Epinephrine SBDs (MIMIC-IV map) coded only by the code: 9 mL is lidocaine's own
    10 / 20 mg/mL, never epinephrine's 0.01 mg/mL, and the with-epinephrine limit applies."""
    term = book.terminology
    vs = term.match([(RX, code)], []).all
    assert {"lidocaine", "epinephrine", "local-anesthetics-amide", "local-anesthetics"} <= vs
    name = term.display_of(RX, code)
    doses = [d for d in _doses(book, planned.Product("", vs, (name,)), 9) if d.agent]
    assert [(d.agent.valueset, d.mg, d.with_vasoconstrictor) for d in doses] == [("lidocaine", pytest.approx(want), True)]


def test_chloroprocaine_code_only_is_a_local_anesthetic_without_a_maximum(book):
    """Nesacaine 1794186 '20 ML chloroprocaine hydrochloride 20 MG/ML Injection [Nesacaine]' (MIMIC-IV
    map), coded only by its code: an ester local anesthetic of the injectate (never an unrecognised
    medication); the dose policy has no chloroprocaine maximum, so it is one dose with no agent and no
    mg (missing-data names it) - never checked against another anesthetic's limit, never 20 x mL."""
    term = book.terminology
    limited = {a.valueset for a in book.records.anesthetic_limits.agents}
    vs = term.match([(RX, "1794186")], []).all
    assert {"local-anesthetics-ester", "local-anesthetics"} <= vs and not vs & limited
    name = term.display_of(RX, "1794186")
    assert name == "20 ML chloroprocaine hydrochloride 20 MG/ML Injection [Nesacaine]"
    doses = _doses(book, planned.Product("", vs, (name,)), 9)
    assert [(d.agent, d.mg) for d in doses] == [(None, None)]


@pytest.mark.parametrize("code,agent", [("35780", "ropivacaine"), ("1815", "bupivacaine"),
                                        ("371160", "bupivacaine")])
def test_ingredient_and_strengthless_codes_are_recognised_and_never_guessed(book, code, agent):
    """The ingredients (35780 ropivacaine, 1815 bupivacaine) and the dose form group 371160
    'bupivacaine Injectable Solution' name no strength: coded only by the code the product is that
    anesthetic (so missing-data names it, it is never an unrecognised medication), and mL are not
    turned into mg with a guessed strength."""
    term = book.terminology
    vs = term.match([(RX, code)], []).all
    assert agent in vs and "local-anesthetics" in vs
    name = term.display_of(RX, code)
    doses = [d for d in _doses(book, planned.Product("", vs, (name,)), 9) if d.agent]
    assert [d.agent.valueset for d in doses] == [agent]
    assert doses[0].mg is None


@pytest.mark.parametrize("name,ml,agent,mg", [
    ("ROPIVACAINE 0.5 % (5 MG/ML) INJECTION SOLUTION", 30, "ropivacaine", 150),
    ("Naropin 0.2% injection", 40, "ropivacaine", 80),
    ("ropivacaine hydrochloride 7.5 MG/ML Injection", 10, "ropivacaine", 75),
    ("MEPIVACAINE (PF) 1 % (10 MG/ML) INJECTION SOLUTION", 20, "mepivacaine", 200),
    ("Polocaine-MPF 2% injection", 10, "mepivacaine", 200),
    ("epinephrine 0.01 MG/ML / mepivacaine hydrochloride 20 MG/ML Injectable Solution", 5, "mepivacaine", 100),
    ("Sensorcaine 0.25% injection", 20, "bupivacaine", 50),
])
def test_names_give_each_anesthetics_own_strength(book, name, ml, agent, mg):
    term = book.terminology
    vs = term.match([], [name]).all
    got = {d.agent.valueset: d.mg for d in _doses(book, planned.Product(name, vs, (name,)), ml) if d.agent}
    assert got == {agent: pytest.approx(mg)}


def test_ropivacaine_and_mepivacaine_have_a_maximum_and_no_made_up_epinephrine_limit(book):
    ropi, mepi = _limit(book, "ropivacaine"), _limit(book, "mepivacaine")
    assert (ropi.mg_per_kg, ropi.max_mg, ropi.with_vasoconstrictor) == (3, 200, None)
    assert (mepi.mg_per_kg, mepi.max_mg, mepi.with_vasoconstrictor) == (7, 400, None)
    # with epinephrine the plain limit applies (the sources give none higher)
    d = planned.AgentDose(mepi, "mepivacaine with epinephrine", "MedicationRequest/m", True, 450, "450 mg")
    facts, _ = planned.dose_facts([d], 80.0, book.records)
    assert facts[0]["limit_mg"] == 400 and facts[0]["fraction"] > 1
    d = planned.AgentDose(ropi, "ropivacaine", "MedicationRequest/r", False, 150, "150 mg")
    facts, _ = planned.dose_facts([d], 40.0, book.records)
    assert facts[0]["limit_mg"] == 120            # 3 mg/kg x 40 kg, under the 200 mg cap


def test_every_limited_anesthetic_adds_to_the_combined_load(book):
    doses = [planned.AgentDose(_limit(book, a), a, f"MedicationRequest/{a}", False, mg, f"{mg} mg")
             for a, mg in (("lidocaine", 100), ("ropivacaine", 60), ("mepivacaine", 120), ("bupivacaine", 35))]
    facts, total = planned.dose_facts(doses, 80.0, book.records)
    assert all(f["fraction"] < 1 for f in facts)
    assert total["classes"] == 4
    assert total["fraction"] == pytest.approx(100 / 300 + 60 / 200 + 120 / 400 + 35 / 175, rel=1e-3)
