"""Real-shaped Synthea R4 bundles: no crash, and the expected cards for known patients."""

from __future__ import annotations

import pytest

from cds_tpi.cli.evaluate import add_order
from cds_tpi.fhir.read import read_bytes

from .cdshooks import assert_cds_response
from .conftest import NOW, SYNTHEA

FILES = sorted(SYNTHEA.glob("*.json")) if SYNTHEA.is_dir() else []
pytestmark = pytest.mark.skipif(
    not FILES, reason=f"Synthea R4 bundles not found at {SYNTHEA} (set CDS_TPI_SYNTHEA to their directory)")


def _evaluate(evaluator, path, injectate=None, site=()):
    doc = read_bytes(path.read_bytes(), path.name)
    if injectate or site:
        doc, note = add_order(doc, evaluator, injectate, site)
        assert note is None
    result = evaluator.evaluate_document(doc, now=NOW)
    assert_cds_response(result.response)
    assert not result.skipped, result.skipped  # Synthea data is valid R4
    return result


def _file(prefix):
    return next(p for p in FILES if p.name.startswith(prefix))


@pytest.mark.parametrize("path", FILES, ids=[p.name.split("_")[0] + "_" + p.name.split("_")[1] for p in FILES])
def test_every_bundle_evaluates_with_and_without_an_order(evaluator, path):
    _evaluate(evaluator, path)
    _evaluate(evaluator, path, "lidocaine:50mg,triamcinolone:40mg", ("trapezius",))


@pytest.mark.parametrize("prefix", ["Adalberto_Hartmann", "Adan_Portillo", "Austin_Spencer"])
def test_active_warfarin_or_clopidogrel_gives_anticoagulant(evaluator, prefix):
    result = _evaluate(evaluator, _file(prefix))
    card = next(c for c in result.cards if c["source"]["topic"]["code"] == "anticoagulant")
    assert card["indicator"] == "warning"
    assert "Warfarin" in card["summary"] or "Clopidogrel" in card["summary"]


def test_stopped_clopidogrel_does_not_count(evaluator):
    # Alejandro Riojas: clopidogrel status "stopped" only.
    assert "anticoagulant" not in _evaluate(evaluator, _file("Alejandro_Riojas")).rule_ids


def test_diabetic_patient_with_steroid_gets_diabetes_steroid(evaluator):
    path = _file("Dirk_Kuhlman")
    with_steroid = _evaluate(evaluator, path, "lidocaine:50mg,triamcinolone:40mg", ("gluteus medius",))
    card = next(c for c in with_steroid.cards if c["source"]["topic"]["code"] == "diabetes-steroid")
    assert card["indicator"] == "warning"
    assert card["suggestions"][0]["actions"][0] == {
        "type": "delete", "description": "Remove triamcinolone from the injectate",
        "resourceId": "MedicationRequest/cli-injectate-2"}
    without = _evaluate(evaluator, path, "lidocaine:50mg", ("gluteus medius",))
    assert "diabetes-steroid" not in without.rule_ids


@pytest.mark.parametrize("prefix", ["Adalberto_Hartmann", "Jordan_Cruickshank", "Leonardo_Gerlach"])
def test_prediabetes_is_not_diabetes(evaluator, prefix):
    result = _evaluate(evaluator, _file(prefix), "lidocaine:50mg,triamcinolone:40mg", ("gluteus medius",))
    assert "diabetes-steroid" not in result.rule_ids
