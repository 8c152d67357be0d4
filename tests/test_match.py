"""Python evaluation of whole rules (cds_tpi/ruleset/match.py), the engine's semantics in small cases
(tests/test_oracle.py compares it with durable-rules at large)."""

from __future__ import annotations

from cds_tpi.ruleset.match import evaluate_rule
from cds_tpi.ruleset.model import Alternative, Pattern, Rule


def rule(*alts, params=None):
    return Rule("r", "r", "info", tuple(Alternative(i, tuple(a)) for i, a in enumerate(alts)), {}, (), params or {})


def fids(result):
    return result.alternatives, {k: [f["fid"] for f in v] for k, v in result.bindings.items()}


INFECTION = {"t": "condition", "fid": 1, "ref": "Condition/1", "region": "neck", "vs": ["infection"]}
NECK = {"t": "site", "fid": 2, "ref": "ServiceRequest/1", "region": "neck"}
BACK = {"t": "site", "fid": 3, "ref": "ServiceRequest/1", "region": "back"}


def test_patterns_hold_jointly_through_a_ref():
    r = rule([Pattern("i", "condition", {"vs": {"any": ["infection"]}}), Pattern("s", "site", {"region": {"ref": "i.region"}})])
    assert fids(evaluate_rule(r, [INFECTION, NECK, BACK], None)) == ((0,), {"i": [1], "s": [2]})
    assert not evaluate_rule(r, [INFECTION, BACK], None).fired


def test_absent_blocks_given_the_other_patterns():
    r = rule([Pattern("i", "condition"), Pattern("s", "site", {"region": {"ref": "i.region"}}, absent=True)])
    assert not evaluate_rule(r, [INFECTION, NECK], None).fired
    assert evaluate_rule(r, [INFECTION, BACK], None).fired      # a site elsewhere does not block
    assert evaluate_rule(r, [INFECTION], None).fired


def test_none_holds_for_a_missing_list_and_blocks_a_member():
    r = rule([Pattern("d", "injectate", {"vs": {"none": ["epinephrine"]}})])
    assert evaluate_rule(r, [{"t": "injectate", "fid": 1}], None).fired
    assert not evaluate_rule(r, [{"t": "injectate", "fid": 1, "vs": ["epinephrine"]}], None).fired


def test_a_fact_is_not_bound_twice_in_one_combination():
    r = rule([Pattern("a", "procedure"), Pattern("b", "procedure")])
    assert not evaluate_rule(r, [{"t": "procedure", "fid": 1}], None).fired
    assert fids(evaluate_rule(r, [{"t": "procedure", "fid": 1}, {"t": "procedure", "fid": 2}], None)) == (
        (0,), {"a": [1, 2], "b": [1, 2]})


def test_min_count_counts_distinct_records_over_alternatives_separately():
    r = rule([Pattern("p", "procedure", min_count={"param": "n"})], [Pattern("p", "procedure", {"status": "done"})],
             params={"n": 2})
    two_facts_one_record = [{"t": "procedure", "fid": 1, "ref": "Procedure/1"}, {"t": "procedure", "fid": 2, "ref": "Procedure/1"}]
    assert not evaluate_rule(r, two_facts_one_record, None).fired
    two_records = [{"t": "procedure", "fid": 1, "ref": "Procedure/1"}, {"t": "procedure", "fid": 2, "ref": "Procedure/2", "status": "done"}]
    assert fids(evaluate_rule(r, two_records, None)) == ((0, 1), {"p": [1, 2]})
