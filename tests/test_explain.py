"""`cds-tpi explain`: a fired rule shows the facts and FHIR refs that made it fire; a rule that did
not fire shows the nearest candidate facts and the condition each failed, or what else kept it."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cds_tpi.cli import cli
from cds_tpi.explain import explain, missing_data, nearest
from cds_tpi.ruleset.conditions import Env
from cds_tpi.ruleset.model import Pattern

from .conftest import SAMPLES

NOW = "2026-11-24"


def _run(*args):
    return CliRunner().invoke(cli, ["explain", "--now", NOW, *args])


def _json(sample, rule):
    result = _run("--rule", rule, "--format", "json", str(SAMPLES / sample))
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert [r["id"] for r in body["rules"]] == [rule]
    return body["rules"][0], body


def test_a_fired_rule_shows_its_facts_and_their_resources():
    rule, _ = _json("anticoagulant-clopidogrel-order-sign.json", "anticoagulant")
    assert rule["fired"] and rule["indicator"] == "warning"
    alt = rule["alternatives"][0]
    assert alt["fired"]
    assert [f["ref"] for f in alt["patterns"][0]["matched"]] == ["MedicationRequest/medrx-clopi"]


def test_a_fired_join_shows_both_sides():
    rule, _ = _json("local-infection-upper-back-trapezius.json", "local-infection")
    alt = next(a for a in rule["alternatives"] if a["fired"])
    matched = {p["name"]: p["matched"] for p in alt["patterns"]}
    assert matched["infection"][0]["ref"] == "Condition/cond-cellulitis"
    assert matched["site"][0]["ref"] == "ServiceRequest/sr-tpi"
    assert matched["infection"][0]["values"]["region"] == matched["site"][0]["values"]["region"]


def test_a_rule_that_did_not_fire_names_the_failed_condition_of_the_nearest_candidate():
    rule, _ = _json("repeat-interval-20-days-negative.json", "repeat-interval")
    assert not rule["fired"]
    alt = rule["alternatives"][0]
    assert not alt["fired"] and "no procedure fact meets 'previous'" in alt["reason"]
    best = alt["patterns"][0]["candidates"][0]
    assert best["ref"] == "Procedure/proc-tpi-prev"
    assert (best["passed"], best["of"]) == (2, 3)
    assert [f["condition"] for f in best["failed"]] == ["age_days < param min_days (= 7)"]
    assert best["failed"][0]["actual"] == "age_days is 20"


def test_min_count_not_reached_is_the_reason():
    rule, _ = _json("steroid-frequency-three-previous-negative.json", "steroid-frequency")
    assert not rule["fired"]
    assert "matched 3 record(s); at least 4 needed" in rule["alternatives"][0]["reason"]


def test_text_output_and_missing_data():
    result = _run("--rule", "anticoagulant", str(SAMPLES / "anticoagulant-clopidogrel-order-sign.json"))
    assert result.exit_code == 0, result.output
    assert "FIRED (warning)   anticoagulant" in result.output
    assert 'drug (medication) = MedicationRequest/medrx-clopi "Clopidogrel 75 mg tablet"' in result.output
    assert "records given: medications 4" in result.output
    result = _run("--rule", "bleeding-disorder", str(SAMPLES / "anticoagulant-clopidogrel-order-sign.json"))
    assert "not fired         bleeding-disorder" in result.output
    assert "failed: vs has any of [bleeding-disorders] (vs is [])" in result.output


def test_every_rule_by_default_and_unknown_rule_is_a_usage_error():
    result = _run("--format", "json", str(SAMPLES / "clean-patient.json"))
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["rules"]) >= 14
    result = _run("--rule", "no-such-rule", str(SAMPLES / "clean-patient.json"))
    assert result.exit_code == 2 and "no rule 'no-such-rule'" in result.output


def test_json_with_several_inputs_includes_the_failed_ones(tmp_path):
    """As evaluate's JSON: a failed input is an error object, not left out."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    good = SAMPLES / "anticoagulant-warfarin.json"
    result = CliRunner().invoke(cli, ["explain", "--now", NOW, "--format", "json", "--rule", "anticoagulant",
                                      str(bad), str(good)])
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert list(body) == [str(bad), str(good)]
    assert "not valid JSON" in body[str(bad)]["error"]["message"]
    assert [r["id"] for r in body[str(good)]["rules"]] == ["anticoagulant"]
    assert f"{bad}: error:" in result.stderr


def test_unreadable_input_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = _run(str(bad))
    assert result.exit_code == 1 and "bad.json: error:" in result.output


def test_absent_pattern_blocked_by_a_fact():
    rules = []
    from cds_tpi.ruleset.model import Alternative, Rule

    rules.append(Rule("r", "r", "info", (Alternative(0, (Pattern("o", "order"), Pattern("s", "site", absent=True))),), {}, ()))
    facts = [{"t": "order", "fid": 1, "ref": "ServiceRequest/a"}, {"t": "site", "fid": 2, "ref": "ServiceRequest/a", "name": "x"},
             {"t": "gap", "fid": 3, "name": "Observations could not be read"},
             {"t": "inventory", "fid": 4, "orders": 1, "sites": 1, "checked": ["procedures"]}]
    out = explain(rules, facts, [], None)
    alt = out["rules"][0]["alternatives"][0]
    assert "'s' must be absent" in alt["reason"]
    assert [p.get("blocked_by") for p in alt["patterns"] if p["name"] == "s"][0][0]["fid"] == 2
    assert missing_data(facts) == {"gaps": ["Observations could not be read"], "inventory": {"orders": 1, "sites": 1},
                                   "checked": ["procedures"]}


def test_nearest_ranks_by_conditions_passed():
    p = Pattern("x", "observation", {"value": {"gt": 5}, "unit": "kg", "age_days": {"lte": 30}})
    facts = [{"t": "observation", "fid": 1, "value": 1, "unit": "g", "age_days": 90},
             {"t": "observation", "fid": 2, "value": 1, "unit": "kg", "age_days": 3},
             {"t": "observation", "fid": 3, "value": 9, "unit": "g", "age_days": 90}]
    ranked = nearest(p, facts, Env({}), limit=2)
    assert [(c["fid"], c["passed"]) for c in ranked] == [(2, 2), (3, 1)]
    assert ranked[0]["failed"] == [{"condition": "value > 5", "actual": "value is 1"}]


def test_nearest_prefers_the_right_kind_of_fact_on_a_tie():
    rule, _ = _json("bleeding-disorder-old-inr-negative.json", "bleeding-disorder")
    inr = rule["alternatives"][1]
    best = inr["patterns"][0]["candidates"][0]
    assert best["ref"] == "Observation/obs-inr-ok"
    assert [f["condition"] for f in best["failed"]] == ["value > param inr_max (= 3.0)"]
    assert best["failed"][0]["actual"] == "value is 2.5"


def test_synthesized_order_as_for_evaluate(tmp_path):
    bundle = json.loads((SAMPLES / "clean-patient.json").read_text())
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"].get("status") != "draft"]
    path = tmp_path / "no-order.json"
    path.write_text(json.dumps(bundle))
    result = _run("--rule", "thoracic-site", "--format", "json", "--injectate", "lidocaine:50mg", "--site", "trapezius", str(path))
    assert result.exit_code == 0, result.output
    alt = json.loads(result.output)["rules"][0]["alternatives"][0]
    assert alt["fired"] and alt["patterns"][0]["matched"][0]["name"].lower().startswith("trapezius")
    result = _run("--injectate", "nosuchdrug:5mg", str(path))
    assert result.exit_code == 2 and "--injectate" in result.output
