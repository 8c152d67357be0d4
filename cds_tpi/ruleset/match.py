"""Rules evaluated in Python against a fact list, with the engine's semantics (for `cds-tpi explain`
and the differential oracle; the service and CLI cards come from durable-rules, never from here).

The semantics mirrored (compile.py and findings.py): an alternative holds for every combination of
distinct facts, one per present pattern in the order written, in which each fact meets its
pattern's conditions given the facts bound before it (`ref`); a combination is dropped when some
other fact meets an `absent` pattern given the combination; an alternative fires when a
combination is left and each pattern with `min_count` bound at least that many distinct records
over those combinations. A rule fires when one of its alternatives does.
"""

from __future__ import annotations

from dataclasses import dataclass

from .compile import resolve_value
from .conditions import Env
from .model import Alternative, Pattern, Rule


def holds(p: Pattern, fact: dict, env: Env) -> bool:
    """Does this fact meet every condition of the pattern (its type included)?"""
    return fact.get("t") == p.fact and all(c.evaluate(fact, env) for c in p.conditions)


def combinations(alt: Alternative, facts: list[dict], env: Env) -> list[dict]:
    """Every combination (pattern name -> fact) for which the alternative's present patterns hold
    jointly and no absent pattern is met; min_count is not applied here."""
    present = [p for p in alt.patterns if not p.absent]
    absent = [p for p in alt.patterns if p.absent]
    by_type: dict[str, list[dict]] = {}
    for f in facts:
        by_type.setdefault(f.get("t"), []).append(f)
    out: list[dict] = []

    def extend(i: int, env: Env, used: frozenset) -> None:
        if i == len(present):
            bound = env.bindings or {}
            if not any(_met(p, by_type.get(p.fact, []), env, used) for p in absent):
                out.append(dict(bound))
            return
        p = present[i]
        for f in by_type.get(p.fact, []):
            if f["fid"] not in used and holds(p, f, env):
                extend(i + 1, env.bind(p.name, f), used | {f["fid"]})

    extend(0, Env(env.params, env.terminology, {}), frozenset())
    return out


def _met(p: Pattern, candidates: list[dict], env: Env, used: frozenset) -> bool:
    return any(f["fid"] not in used and holds(p, f, env) for f in candidates)


def blockers(p: Pattern, facts: list[dict], env: Env) -> list[dict]:
    """The facts that meet an absent pattern given the bindings in env (those keeping it from holding)."""
    used = {f["fid"] for f in (env.bindings or {}).values()}
    return [f for f in facts if f["fid"] not in used and holds(p, f, env)]


def distinct_records(facts: list[dict]) -> int:
    """How many records the facts come from (min_count counts records, not facts)."""
    return len({f.get("ref") or f["fid"] for f in facts})


@dataclass(frozen=True)
class RuleResult:
    """What Python evaluation says of one rule: the alternatives that fired, and per pattern name
    the facts bound over them (distinct, in fact order) - the shape of a Finding."""

    rule: Rule
    alternatives: tuple[int, ...]
    bindings: dict
    combos: dict  # alternative index -> combinations (before min_count)

    @property
    def fired(self) -> bool:
        return bool(self.alternatives)


def bound_facts(combos: list[dict]) -> dict[str, list[dict]]:
    """Pattern name -> the distinct facts bound to it over the combinations, in fact order."""
    out: dict[str, dict] = {}
    for combo in combos:
        for name, fact in combo.items():
            out.setdefault(name, {})[fact["fid"]] = fact
    return {name: [facts[k] for k in sorted(facts)] for name, facts in out.items()}


def min_count_met(alt: Alternative, rule: Rule, bound: dict[str, list[dict]]) -> bool:
    return all(p.min_count is None or distinct_records(bound.get(p.name, [])) >= resolve_value(p.min_count, rule)
               for p in alt.patterns)


def evaluate_rule(rule: Rule, facts: list[dict], terminology) -> RuleResult:
    """The rule against a fact list, as the engine and findings.collect would decide it."""
    env = Env(rule.params, terminology)
    fired: list[int] = []
    merged: dict[str, dict] = {}
    all_combos = {}
    for alt in rule.alternatives:
        combos = combinations(alt, facts, env)
        all_combos[alt.index] = combos
        bound = bound_facts(combos)
        if not combos or not min_count_met(alt, rule, bound):
            continue
        fired.append(alt.index)
        for name, fs in bound.items():
            for f in fs:
                merged.setdefault(name, {})[f["fid"]] = f
    bindings = {name: [fs[k] for k in sorted(fs)] for name, fs in merged.items()}
    return RuleResult(rule, tuple(fired), bindings, all_combos)


def evaluate_rules(rules: list[Rule], facts: list[dict], terminology) -> list[RuleResult]:
    """Every rule against the facts (fired or not), in rule order."""
    return [evaluate_rule(r, facts, terminology) for r in rules]
