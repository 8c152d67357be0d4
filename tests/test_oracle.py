"""Differential oracle: the Python evaluation of the rules (cds_tpi/ruleset/match.py, built on each
operator's `evaluate`) and durable-rules (the compiled ruleset, then findings.collect) agree on
which rules fire, through which alternatives, and on which facts each pattern bound.

Three sources of facts: every sample record in fhir_samples/ through the whole pipeline (its
prefilter and slimmed facts included); generated records, mixed from parts of up to three samples;
and generated fact lists, drawn from the rules themselves: every value set id, literal and param
value a condition names (and numbers just around the params), so thresholds, joins (`ref`),
negations (`absent`, `none`) and `min_count` are all reached. Besides the bundled rules, a few synthetic rules
cover the operators no bundled rule uses (`in`, `or`, `mul`, two patterns of one fact type). Joins
are equalities: comparing with a ref (`gt: {ref: ...}`) crashes durable-rules, see the end of this
module (lint refuses it).

Budget: a few hundred derandomized examples in CI; `CDS_TPI_FUZZ=long` runs thousands, randomized.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path
from datetime import datetime, timezone

import pytest
import yaml
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from cds_tpi.engine import Engine
from cds_tpi.errors import InputError
from cds_tpi.fhir.read import Document, read_bytes
from cds_tpi.findings import collect
from cds_tpi.ruleset import load_rulebook
from cds_tpi.ruleset.compile import compile_rules, engine_view
from cds_tpi.ruleset.conditions import Comparison, Env, In, Or, _ListOp
from cds_tpi.ruleset.facttypes import FACT_FIELDS
from cds_tpi.ruleset.match import evaluate_rules
from cds_tpi.ruleset.model import Alternative, Pattern, Rule

from .conftest import RULES, SAMPLES

LONG = os.environ.get("CDS_TPI_FUZZ", "").lower() == "long"
BUDGET = settings(max_examples=4000 if LONG else 300, derandomize=not LONG, database=None, deadline=None,
                  print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

BOOK = load_rulebook(RULES)


def _synthetic() -> list[Rule]:
    """Rules for the operators and shapes the bundled rules do not use."""
    def rule(rid, *alts, params=None):
        return Rule(rid, rid, "info", tuple(Alternative(i, tuple(a)) for i, a in enumerate(alts)), {}, (), params or {})

    return [
        rule("syn-in-or",
             [Pattern("c", "condition", {"status": {"in": ["active", "recurrence"]},
                                         "or": [{"onset_days": {"lt": 30}}, {"vs": {"any": ["sepsis"]}, "region": "unknown"}]})]),
        rule("syn-two-of-a-type",
             [Pattern("a", "medication", {"vs": {"any": ["anticoagulants"]}}),
              Pattern("b", "medication", {"status": {"ref": "a.status"}})]),
        rule("syn-exists-none",
             [Pattern("o", "order"), Pattern("i", "injectate", {"dose_mg": {"exists": False}, "vs": {"none": ["lidocaine", "corticosteroids"]}}),
              Pattern("s", "site", {"region": {"ref": "o.code"}}, absent=True)]),
        rule("syn-min-count",
             [Pattern("p", "procedure", {"age_days": {"lte": {"param": "window"}}}, min_count={"param": "n"})],
             [Pattern("p", "procedure", {"used_vs": {"all": ["corticosteroids", "local-anesthetics"]}}),
              Pattern("q", "procedure", {"age_days": {"ref": "p.age_days"}, "status": {"ne": "active"}}),
              Pattern("r", "procedure", {"age_days": {"gt": {"mul": [{"param": "window"}, 2]}}})],
             params={"window": 100, "n": 2}),
    ]


# Notes are left out: the oracle is about matching (notes are templates over what matched).
RULES_UNDER_TEST = [replace(r, alternatives=tuple(replace(a, note=None) for a in r.alternatives))
                    for r in BOOK.rules + _synthetic()]


@pytest.fixture(scope="module")
def engine():
    """The engine as the pipeline builds it: sent of each fact only what the rules read (list values
    no rule names, such as the generator's "something-else", left out: engine_view)."""
    return Engine(compile_rules(RULES_UNDER_TEST, BOOK.terminology), engine_view(RULES_UNDER_TEST, BOOK.terminology))


def _pools() -> dict[str, list]:
    """Per field: the values conditions name (value set ids resolved, params inlined), and numbers
    around each numeric one."""
    pools: dict[str, set] = {}
    pools["@list"], pools["@ref"] = set(), set()
    env_of = {r.id: Env(r.params, BOOK.terminology) for r in RULES_UNDER_TEST}

    def walk(conds, rule):
        for c in conds:
            if isinstance(c, Or):
                for sub in c.alternatives:
                    walk(sub, rule)
            elif isinstance(c, _ListOp):
                pools.setdefault(c.field, set()).update(c.ids(BOOK.terminology, strict=False))
                pools["@list"].add(c.field)
            elif isinstance(c, In):
                pools.setdefault(c.field, set()).update(c.values)
            elif isinstance(c, Comparison):
                pools["@ref"] |= c.value.ref_fields()
                v = c._expected(env_of[rule.id])
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    pools.setdefault(c.field, set()).update({v, v - 1, v + 1, v + 0.5, 0})
                elif isinstance(v, str):
                    pools.setdefault(c.field, set()).add(v)

    for rule in RULES_UNDER_TEST:
        for alt in rule.alternatives:
            for p in alt.patterns:
                walk(p.conditions, rule)
    for f in pools["@list"]:
        pools[f].add("something-else")
    return {k: sorted(v, key=repr) for k, v in pools.items()}


POOLS = _pools()
NUMBERS = st.one_of(st.integers(-5, 400), st.floats(0, 400, allow_nan=False).map(lambda x: round(x, 2)))
LIST_FIELDS = set(POOLS["@list"])
READ = {f for f in POOLS if not f.startswith("@")}  # fields some condition reads
# Fields another pattern refers to are always present (durable fails on a reference to a missing
# field; the facts stage always writes the fields rules refer to); any other field may be absent.
REQUIRED = set(POOLS["@ref"])
TYPES = sorted({p.fact for r in RULES_UNDER_TEST for a in r.alternatives for p in a.patterns})


def _field_value(field: str):
    pool = POOLS.get(field, [])
    if field in LIST_FIELDS:
        return st.lists(st.sampled_from(pool), max_size=4, unique=True)
    nums = [v for v in pool if isinstance(v, (int, float))]
    strs = [v for v in pool if isinstance(v, str)]
    options = []
    if nums:
        options += [st.sampled_from(nums), NUMBERS]
    if strs:
        options += [st.sampled_from(strs + ["other"])]
    if field == "region":
        options = [st.sampled_from(strs + ["unknown", "20553"])]
    return st.one_of(*options) if options else st.sampled_from(["x", "y"])


@st.composite
def fact(draw, fid: int):
    t = draw(st.sampled_from(TYPES))
    out = {"t": t, "fid": fid}
    if "ref" in FACT_FIELDS[t]:
        out["ref"] = f"{t.title()}/r{draw(st.integers(0, 4))}"
    for field in sorted(FACT_FIELDS[t] & READ - {"t", "fid", "ref"}):
        if field in REQUIRED or draw(st.integers(0, 3)):
            # (a joined number may be spelled 1 or 1.0: durable's join tells them apart, Python's == does
            # not; engine_view sends one spelling - test_known_engine_difference_in_joins)
            out[field] = draw(_field_value(field))
    return out


@st.composite
def fact_lists(draw):
    n = draw(st.integers(0, 20))
    facts = [draw(fact(fid)) for fid in range(1, n + 1)]
    # Copies of some facts, alike but for fid (a record's repeated prescriptions): durable is sent
    # one of such a group - or as many as a rule has patterns of the type - and each firing expanded.
    for i in draw(st.lists(st.integers(0, n - 1), max_size=6)) if n else []:
        facts.insert(draw(st.integers(0, len(facts))), dict(facts[i], fid=len(facts) + 1))
    return facts


def _summary(results) -> dict:
    return {rid: (tuple(alts), {name: sorted(f["fid"] for f in facts) for name, facts in bindings.items()})
            for rid, alts, bindings in results}


# In the long mode each fact list is written here before the engine sees it: a durable-rules crash
# (a segfault kills the test process, hypothesis cannot shrink it) leaves its input behind.
LAST_FACTS = Path(tempfile.gettempdir()) / "cds-tpi-oracle-last-facts.json"


@BUDGET
@given(facts=fact_lists())
def test_python_evaluation_agrees_with_the_engine(engine, facts):
    note(f"facts: {facts}")
    if LONG:
        LAST_FACTS.write_text(json.dumps(facts))
    by_engine = _summary((f.rule_id, f.alternatives, f.bindings) for f in collect(engine.run(facts), RULES_UNDER_TEST))
    by_python = _summary((r.rule.id, r.alternatives, r.bindings)
                         for r in evaluate_rules(RULES_UNDER_TEST, facts, BOOK.terminology) if r.fired)
    assert by_python == by_engine


def test_the_generator_reaches_firings(engine):
    """The oracle is only as good as its examples: most rules must fire on some generated list."""
    fired: set[str] = set()

    # 800 lists (about 8 s): at 200 the count sat at the threshold and moved with any new fact field
    # (12 of 18 fired; 17 of 18 at 800), so an unrelated change failed CI.
    @settings(BUDGET, max_examples=max(800, BUDGET.max_examples))
    @given(facts=fact_lists())
    def run(facts):
        fired.update(r.rule.id for r in evaluate_rules(RULES_UNDER_TEST, facts, BOOK.terminology) if r.fired)

    run()
    assert len(fired) >= len(RULES_UNDER_TEST) * 2 // 3, sorted(fired)


SAMPLE_FILES = sorted(p for p in SAMPLES.glob("*") if p.suffix in (".json", ".ndjson"))


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.name for p in SAMPLE_FILES])
def test_python_evaluation_agrees_on_every_sample_record(path, evaluator):
    """Over the facts real records give (the pipeline's prefilter and slimmed facts included): the
    findings of the pipeline equal the Python evaluation of the full fact list."""
    now = yaml.safe_load(path.with_name(path.name.rsplit(".", 1)[0] + ".expected.yaml").read_text())["now"]
    result = evaluator.evaluate_document(read_bytes(path.read_bytes(), path.name),
                                         now=datetime(now.year, now.month, now.day, tzinfo=timezone.utc))
    by_engine = _summary((f.rule_id, f.alternatives, f.bindings) for f in result.findings)
    by_python = _summary((r.rule.id, r.alternatives, r.bindings)
                         for r in evaluate_rules(evaluator.rules, result.facts, evaluator.book.terminology) if r.fired)
    assert by_python == by_engine


def _sample_documents():
    out = []
    for path in SAMPLE_FILES:
        try:
            out.append(read_bytes(path.read_bytes(), path.name).with_drafts())
        except InputError:
            continue
    return out


DOCUMENTS = _sample_documents()
NOW = datetime(2026, 11, 24, tzinfo=timezone.utc)


@st.composite
def records(draw):
    """A record made of parts of up to three sample records: a random subset of each one's
    resources and of its planned order (so an allergy of one meets the injectate of another)."""
    resources, drafts = [], []
    for n, doc in enumerate(draw(st.lists(st.sampled_from(DOCUMENTS), min_size=1, max_size=3))):
        resources += [_one_patient(loc, n) for loc in doc.resources if draw(st.integers(0, 3))]
        drafts += [_one_patient(loc, n) for loc in doc.draft_orders or [] if draw(st.integers(0, 3))]
    return Document("generated", "bundle", resources=[r for r in resources if r], draft_orders=[d for d in drafts if d])


def _one_patient(loc, n):
    """The record as one patient's, Patient/p: the Patient resource of the first sample only, and every
    subject/patient reference pointed at it (the pipeline refuses records of several patients)."""
    r = loc.resource
    if not isinstance(r, dict):
        return loc
    if r.get("resourceType") == "Patient":
        return replace(loc, resource={**r, "id": "p"}) if n == 0 else None
    fixed = {k: ({"reference": "Patient/p"} if k in ("subject", "patient") and isinstance(v, dict) else v) for k, v in r.items()}
    return replace(loc, resource=fixed) if fixed != r else loc


@settings(BUDGET, max_examples=max(50, BUDGET.max_examples // 3))
@given(doc=records())
def test_python_evaluation_agrees_on_generated_records(evaluator, doc):
    result = evaluator.evaluate_document(doc, now=NOW)
    note(f"facts: {result.facts}")
    by_engine = _summary((f.rule_id, f.alternatives, f.bindings) for f in result.findings)
    by_python = _summary((r.rule.id, r.alternatives, r.bindings)
                         for r in evaluate_rules(evaluator.rules, result.facts, evaluator.book.terminology) if r.fired)
    assert by_python == by_engine


def test_known_engine_difference_in_joins():
    """What the oracle found: durable's equality join (`ref`) does not match an integer with the
    equal float (0 and 0.0, 1 and 1.0), which Python's == does; a literal (`eq: 0`) matches both.
    The engine is therefore sent an integral float as the integer (compile.engine_view), and the
    oracle's facts spell joined numbers both ways. When this fails, durable changed."""
    e = Engine({"j#0": {"all": [{"p": {"t": "a"}}, {"q": {"$and": [{"t": "b"}, {"v": {"p": "v"}}]}}]},
                "lit#0": {"all": [{"x": {"$and": [{"t": "c"}, {"v": 0}]}}]}})
    assert [m.rule for m in e.run([{"t": "a", "fid": 1, "v": 0}, {"t": "b", "fid": 2, "v": 0.0}])] == []
    assert [m.rule for m in e.run([{"t": "a", "fid": 1, "v": 1.0}, {"t": "b", "fid": 2, "v": 1}])] == []
    assert [m.rule for m in e.run([{"t": "a", "fid": 1, "v": 0}, {"t": "b", "fid": 2, "v": 0}])] == ["j#0"]
    assert [m.rule for m in e.run([{"t": "c", "fid": 1, "v": 0.0}])] == ["lit#0"]


# What the oracle found: durable-rules segfaults on the first evaluation with these two rules
# (minimised from generated examples): a join on another fact's field by $gt (also $lt, $neq) that
# is false (0.1 > 0.5) while another two-pattern rule is defined. Whether it crashes depends on the
# rule names and on the process's hash seed (2 runs in 3); equality joins never crashed. So lint
# refuses a comparison with a ref (conditions.Comparison.joins_safely), the bundled rules join only
# by equality (local-infection), and the synthetic rules above do too. Run in a subprocess under a
# crashing hash seed; when this stops crashing (engine fixed or replaced) the test fails and the
# restriction can be lifted. The crash needs durable's own stdlib-json serialisation: with the
# orjson serialisation cds_tpi.engine gives durable (compact JSON) the same rules did not crash
# under 12 of 12 hash seeds, against 11 of 12 with stdlib json; the cause inside the C engine is not
# known, so the restriction stays and this test runs durable as shipped.
ENGINE_CRASH = textwrap.dedent("""
    import json
    from cds_tpi.engine import Engine
    import durable.engine
    durable.engine.json = json  # durable as shipped (cds_tpi.engine hands it orjson)
    defs = {
        "syn-exists-none#0!2": {"all": [{"o": {"t": "order"}},
                                        {"i": {"$and": [{"t": "injectate"}, {"$iany": {"vs": {"$i": "corticosteroids"}}}]}}]},
        "syn-min-count#1": {"all": [{"p": {"$and": [{"t": "procedure"}, {"$iany": {"used_vs": {"$i": "corticosteroids"}}}]}},
                                    {"q": {"$and": [{"t": "observation"}, {"$gt": {"age_days": {"p": "age_days"}}}]}}]},
    }
    Engine(defs).run([{"t": "procedure", "fid": 1, "age_days": 0.5, "used_vs": ["corticosteroids"]},
                      {"t": "observation", "fid": 2, "age_days": 0.1}])
    print("no crash")
""")


def test_known_engine_crash_found_by_the_oracle():
    done = subprocess.run([sys.executable, "-c", ENGINE_CRASH], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    assert done.returncode != 0 and "no crash" not in done.stdout, "durable-rules no longer crashes here: update the note"
    python = evaluate_rules([Rule("crash", "crash", "info", (Alternative(0, (
        Pattern("p", "procedure", {"used_vs": {"any": ["corticosteroids"]}}),
        Pattern("q", "observation", {"age_days": {"gt": {"ref": "p.age_days"}}}))),), {}, ())],
        [{"t": "procedure", "fid": 1, "age_days": 0.5, "used_vs": ["vs-x"]}, {"t": "observation", "fid": 2, "age_days": 0.1}],
        BOOK.terminology)
    assert not python[0].fired
