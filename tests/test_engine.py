"""The durable-rules wrapper: state deleted, exceptions surfaced, results stable, thread-safe."""

from __future__ import annotations

import threading

import pytest

from cds_tpi.engine import Engine
from cds_tpi.errors import EngineError

DEFS = {
    "r#0": {"all": [{"o": {"t": "order"}}, {"d": {"$and": [{"t": "drug"}, {"$iany": {"vs": {"$i": "ac"}}}]}}]},
    # A join between patterns, as the rules use them: equality with another fact's field. (An ordering
    # comparison or product against another fact's field - this fixture had one - segfaults durable-rules
    # now and then; lint refuses it and tests/test_oracle.py keeps the crash in a subprocess.)
    "x#0": {"all": [{"s": {"t": "site"}}, {"c": {"$and": [{"t": "condition"}, {"region": {"s": "region"}}]}}]},
}


@pytest.fixture(scope="module")
def eng():
    return Engine(DEFS)


def _names(matches):
    return sorted(m.rule for m in matches)


def test_fires_once_per_combination_and_binds_facts(eng):
    facts = [{"t": "order", "fid": 1}, {"t": "drug", "fid": 2, "vs": ["ac"]}, {"t": "drug", "fid": 3, "vs": ["ac", "b"]},
             {"t": "drug", "fid": 4, "vs": ["b"]}, {"t": "unrelated", "fid": 5}]
    matches = eng.run(facts)
    assert _names(matches) == ["r#0", "r#0"]
    assert sorted(m.bindings["d"]["fid"] for m in matches if m.rule == "r#0") == [2, 3]
    assert all("sid" not in f for m in matches for f in m.bindings.values())


def test_join_between_facts(eng):
    facts = [{"t": "order", "fid": 1}, {"t": "site", "fid": 2, "region": "back"}, {"t": "condition", "fid": 3, "region": "back"},
             {"t": "condition", "fid": 4, "region": "leg"}]
    matches = eng.run(facts)
    assert _names(matches) == ["x#0"]  # the back condition joins the back site, the leg one does not
    assert matches[0].bindings["c"]["fid"] == 3


def test_state_is_deleted_after_every_evaluation(eng):
    # Without delete_state the engine raises MemoryError after 1,024 live sessions.
    for _ in range(1500):
        eng.run([{"t": "order", "fid": 1}, {"t": "drug", "fid": 2, "vs": ["ac"]}])
    assert _names(eng.run([{"t": "order", "fid": 1}, {"t": "drug", "fid": 2, "vs": ["ac"]}])) == ["r#0"]


def test_a_failure_while_the_firings_are_taken_is_raised_not_swallowed(eng, monkeypatch):
    """durable runs no Python action of ours (Engine._assert takes each firing from its C engine),
    so nothing is swallowed into durable's session state: an error is an EngineError, the session
    is deleted and the engine keeps working."""
    from durable import engine as durable_engine

    def boom(*a):
        raise RuntimeError("failed on purpose")

    with monkeypatch.context() as patch:
        patch.setattr(durable_engine.durable_rules_engine, "complete_and_start_action", boom)
        with pytest.raises(EngineError, match="failed on purpose"):
            eng.run([{"t": "order", "fid": 1}, {"t": "drug", "fid": 2, "vs": ["ac"]}])
    assert _names(eng.run([{"t": "order", "fid": 1}, {"t": "drug", "fid": 2, "vs": ["ac"]}])) == ["r#0"]  # still works


def test_facts_alike_but_for_fid_fire_every_combination_of_distinct_facts():
    """durable is sent one fact of a group alike but for fid - two for a rule with two patterns of
    that type - and each firing is expanded to every combination of distinct facts: the firings
    are those of every fact sent."""
    from itertools import permutations

    two = Engine({"two#0": {"all": [{"a": {"t": "m"}}, {"b": {"$and": [{"t": "m"}, {"v": {"a": "v"}}]}}]},
                  "one#0": {"all": [{"o": {"t": "o"}}, {"a": {"$and": [{"t": "m"}, {"v": 1}]}}]}})
    facts = [{"t": "m", "fid": i, "v": 1} for i in (1, 2, 3)] + [{"t": "m", "fid": 4, "v": 2}, {"t": "m", "fid": 5, "v": 2}]
    facts += [{"t": "o", "fid": 6}, {"t": "o", "fid": 7}]
    got = sorted((m.rule, tuple((k, f["fid"]) for k, f in sorted(m.bindings.items()))) for m in two.run(facts))
    expected = sorted([("two#0", (("a", a), ("b", b))) for a, b in permutations([1, 2, 3], 2)]
                      + [("two#0", (("a", a), ("b", b))) for a, b in permutations([4, 5], 2)]
                      + [("one#0", (("a", a), ("o", o))) for a in (1, 2, 3) for o in (6, 7)])
    assert got == expected
    assert all(f is next(g for g in facts if g["fid"] == f["fid"]) for m in two.run(facts) for f in m.bindings.values())


def test_the_engine_is_sent_what_rules_read_and_binds_the_facts_given():
    """engine_view: fields no pattern of the type reads are left out, list values no rule names too
    (so facts differing only in them are sent once), a field another pattern refers to stays, and a
    fact no pattern could match is not sent; the bindings are the facts given."""
    from cds_tpi.ruleset.compile import compile_rules, engine_view
    from cds_tpi.ruleset.model import Alternative, Pattern, Rule

    class Terms:
        def resolve(self, name):
            return name

    rules = [Rule("ac", "ac", "info", (Alternative(0, (Pattern("d", "medication", {"vs": {"any": ["ac"]}}),
                                                       Pattern("c", "condition", {"status": {"ref": "d.status"}}))),),
                  {}, (), {})]
    view = engine_view(rules, Terms())
    warfarin = {"t": "medication", "fid": 1, "ref": "M/1", "vs": ["2.16.840.1", "ac", "other"], "text_only": ["ac"],
                "status": "active"}
    assert view(warfarin) == {"t": "medication", "vs": ["ac"], "status": "active"}
    assert view({"t": "medication", "fid": 2, "vs": ["other"]}) is None  # no value set a rule names
    assert view({"t": "order", "fid": 3}) is None                         # no pattern of its type
    facts = [warfarin, dict(warfarin, fid=2, ref="M/2", vs=["ac"]), dict(warfarin, fid=3, status="stopped"),
             {"t": "condition", "fid": 4, "status": "active", "vs": ["x"]}]
    engine = Engine(compile_rules(rules, Terms()), view)
    matches = engine.run(facts)
    assert sorted((m.bindings["d"]["fid"], m.bindings["c"]["fid"]) for m in matches) == [(1, 4), (2, 4)]
    assert all(any(f is g for g in facts) for m in matches for f in m.bindings.values())


def test_a_join_on_a_number_matches_it_however_it_is_spelled():
    """durable's equality join does not match 70 with 70.0 (tests/test_oracle.py,
    test_known_engine_difference_in_joins); engine_view sends an integral float as the integer, so a
    rule joining two facts on a number fires as the Python evaluation says it should."""
    from cds_tpi.ruleset.compile import compile_rules, engine_view
    from cds_tpi.ruleset.model import Alternative, Pattern, Rule

    class Terms:
        def resolve(self, name):
            return name

    rules = [Rule("same-weight", "w", "info", (Alternative(0, (Pattern("a", "observation", {"value": {"exists": True}}),
                                                              Pattern("b", "dose", {"weight_kg": {"ref": "a.value"}}))),),
                  {}, (), {})]
    view = engine_view(rules, Terms())
    assert view({"t": "dose", "fid": 1, "weight_kg": 70.0}) == {"t": "dose", "weight_kg": 70}
    assert type(view({"t": "dose", "fid": 1, "weight_kg": 70.0})["weight_kg"]) is int
    assert view({"t": "dose", "fid": 1, "weight_kg": 70.5})["weight_kg"] == 70.5
    assert type(view({"t": "dose", "fid": 1, "weight_kg": 1e300})["weight_kg"]) is float  # beyond exact integers
    with_view = Engine(compile_rules(rules, Terms()), view)
    as_is = Engine(compile_rules(rules, Terms()))
    facts = [{"t": "observation", "fid": 1, "value": 70}, {"t": "dose", "fid": 2, "weight_kg": 70.0}]
    assert _names(with_view.run(facts)) == ["same-weight#0"]
    assert _names(as_is.run(facts)) == []  # durable as it is: the join misses (the pinned difference)


def test_bad_definition_is_an_engine_error():
    with pytest.raises(EngineError):
        Engine({"bad#0": {"all": [{"m": {"$nosuchop": {"t": 1}}}]}})


def test_concurrent_calls_give_the_sequential_results(eng):
    inputs = [[{"t": "order", "fid": 1}] + [{"t": "drug", "fid": 10 + j, "vs": ["ac"]} for j in range(i % 4)] for i in range(40)]
    expected = [_names(eng.run(f)) for f in inputs]
    results: list = [None] * len(inputs)

    def work(k):
        for i in range(k, len(inputs), 4):
            results[i] = _names(eng.run(inputs[i]))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


def test_absent_patterns_do_not_depend_on_fact_order(evaluator):
    """`absent` is compiled to probe rules, so a later fact in the batch still blocks the finding."""
    import random

    from cds_tpi.findings import collect

    facts = [
        {"t": "condition", "fid": 1, "ref": "Condition/c", "name": "Cellulitis of left leg", "vs": ["skin-soft-tissue-infections"],
         "text_only": [], "region": "region-lower-limb", "status": "active", "recorded_as": "problem list, active, undated"},
        {"t": "site", "fid": 2, "ref": "ServiceRequest/o", "order": "ServiceRequest/o", "name": "deltoid", "vs": ["region-upper-limb"],
         "text_only": [], "region": "region-upper-limb"},
        {"t": "inventory", "fid": 3, "medications": 1, "allergies": 1, "conditions": 1, "procedures": 1, "observations": 1, "patient": 1, "orders": 0, "injectates": 0, "sites": 1, "checked": [], "unread_sites": [], "unread_site_count": 0},
    ]
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(facts)
        findings = collect(evaluator.engine.run(facts), evaluator.rules)
        assert [f.rule_id for f in findings] == [], "a site in another region is present: no local-infection finding"
    without_site = [f for f in facts if f["t"] != "site"]
    findings = collect(evaluator.engine.run(without_site), evaluator.rules)
    assert [(f.rule_id, f.indicator) for f in findings] == [("local-infection", "warning")]


@pytest.mark.parametrize("facts", [
    [{"t": "x", "fid": 1, "c": []}],
    [{"t": "x", "fid": 1, "c": ["b"]}],
    [{"t": "x", "fid": 1}],
    [],
], ids=["empty-list", "no-match", "missing-field", "no-facts"])
def test_sessions_in_which_nothing_fires_do_not_crash_the_process(facts):
    """durable-rules segfaulted in delete_state/get_state when no action ran in a session; run in
    a child process so that a regression fails this test instead of killing the test run."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from cds_tpi.engine import Engine\n"
        "e = Engine({'n#0': {'all': [{'m': {'$and': [{'t': 'x'}, {'$iany': {'c': {'$i': 'a'}}}]}}]},\n"
        "            'm#0': {'all': [{'m': {'$and': [{'t': 'x'}, {'$iall': {'c': {'$neq': {'$i': 'a'}}}}]}}]}})\n"
        "facts = json.loads(sys.argv[1])\n"
        "print(json.dumps([sorted(m.rule for m in e.run(facts)) for _ in range(3)]))\n"
    )
    p = subprocess.run([sys.executable, "-c", code, json.dumps(facts)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"engine process died: {p.returncode} {p.stderr[-300:]}"
    runs = json.loads(p.stdout)
    assert runs[0] == runs[1] == runs[2]


def test_a_ruleset_refused_now_and_then_is_created_again(monkeypatch):
    """durable-rules rarely refuses a valid ruleset ("error code: 102"); the same definitions are
    accepted the next time. The refusal comes from the C engine, after durable's Python side has
    already taken each rule's "run" out of the dict it was given: the next attempt must start from
    fresh definitions (it failed with KeyError 'run' in CI). A ruleset refused every time is an
    EngineError."""
    from durable import engine as durable_engine

    from cds_tpi import engine as eng

    definitions = {"r": {"all": [{"m": {"t": "x"}}]}}
    original = durable_engine.durable_rules_engine.create_ruleset
    calls = []

    def refuse_first(name, rules):
        calls.append(rules)
        if len(calls) == 1:
            raise Exception("Could not create ruleset, error code: 102")
        return original(name, rules)

    monkeypatch.setattr(durable_engine.durable_rules_engine, "create_ruleset", refuse_first)
    e = eng.Engine(definitions)
    assert len(calls) == 2 and calls[0] == calls[1]  # the same rules, sent again
    assert [m.rule for m in e.run([{"t": "x", "fid": 1}])] == ["r"]
    assert definitions == {"r": {"all": [{"m": {"t": "x"}}]}}  # the caller's definitions untouched

    def refuse(name, rules):
        raise Exception("Could not create ruleset, error code: 102")

    monkeypatch.setattr(durable_engine.durable_rules_engine, "create_ruleset", refuse)
    with pytest.raises(EngineError, match="error code: 102"):
        eng.Engine(definitions)
