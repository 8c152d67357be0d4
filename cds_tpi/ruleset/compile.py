"""Compile rules to durable-rules ruleset definitions (plain JSON-able dicts; the engine adds actions).

Each operator compiles itself (conditions.py); this module assembles patterns, alternatives and the
probe rules of negations. Grammar mapping (rules/README.md has the user view):
  field: v / {eq: v}   -> {field: v}            {ne: v} -> {"$neq": {field: v}}
  {lt|lte|gt|gte: v}   -> {"$lt": {field: v}}    {in: [a, b]} -> {"$or": [{field: a}, {field: b}]}
  {any: [a, b]}        -> array field holds a or b   {all: [a, b]} -> holds both
  {none: [a, b]}       -> holds neither: a probe rule (see compile_rules), never durable's $iall
  {exists: true/false} -> {"$ex"/"$nex": {field: 1}}
  values: literal | {param: p} (inlined at compile time) | {ref: pattern.field} | {mul: [x, y]}
  absent: true         -> NOT compiled to durable's "$not": that fires as soon as the positive facts
                          arrive, before a later fact in the same batch could block it (so the result
                          depended on fact order), and it crashed the C engine (segfault) when the
                          negated fact type was used nowhere else. Instead each absent pattern becomes a
                          probe rule "<id>#<alt>!<n>" = the positive patterns + that pattern; findings
                          keeps a main firing only if no probe fired with the same positive facts.
"""

from __future__ import annotations

import functools
from typing import Callable

from .conditions import Condition, Env, merge_reads, parse_value
from .model import Rule


def durable_name(rule_id: str, alt_index: int, probe: int | None = None) -> str:
    return f"{rule_id}#{alt_index}" + (f"!{probe}" if probe is not None else "")


@functools.lru_cache(maxsize=4096)
def split_name(name: str) -> tuple[str, int, int | None]:
    """(rule id, alternative index, probe index or None). Memoised: findings.collect splits the name of
    every firing (~19 a benchmark request, 0.27 -> 0.07 us each), and there are only as many names as
    the compiled ruleset has rules."""
    rule_id, _, rest = name.rpartition("#")
    alt, _, probe = rest.partition("!")
    return rule_id, int(alt), int(probe) if probe else None


def compile_rules(rules: list[Rule], terminology) -> dict[str, dict]:
    """{durable rule name: definition}; params are inlined, value set names resolved to ids.

    Negations never reach durable-rules: an `absent` pattern and a `none` condition each become a
    probe rule (the alternative with the negated part stated positively); findings drop a main
    firing when a probe fired on the same facts. durable's `$not` depended on fact order, and its
    `$iall` is false for an empty list and crashed the engine in some sessions.
    """
    out: dict[str, dict] = {}
    for rule in rules:
        for alt in rule.alternatives:
            present = [p for p in alt.patterns if not p.absent]
            main = [{p.name: _pattern(p.fact, positive(p.conditions), rule, terminology)} for p in present]
            out[durable_name(rule.id, alt.index)] = {"all": main}
            probes = [main + [{p.name: _pattern(p.fact, p.conditions, rule, terminology)}] for p in alt.patterns if p.absent]
            for i, p in enumerate(present):
                for conds in blocking_variants(p.conditions):
                    probes.append(main[:i] + [{p.name: _pattern(p.fact, conds, rule, terminology)}] + main[i + 1:])
            for n, probe in enumerate(probes):
                out[durable_name(rule.id, alt.index, n)] = {"all": probe}
    return out


def positive(conds: tuple[Condition, ...]) -> tuple[Condition, ...]:
    """The conditions without the negations (those are checked by probe rules)."""
    return tuple(c for c in conds if not c.blocking())


def blocking_variants(conds: tuple[Condition, ...]) -> list[tuple[Condition, ...]]:
    """One condition list per probe of a pattern's negations: the positive conditions with one
    blocking condition in the negation's place ("holds none of a, b" is blocked by a fact holding
    a, and by one holding b)."""
    out = []
    for i, c in enumerate(conds):
        for block in c.blocking():
            out.append(positive(conds[:i]) + (block,) + positive(conds[i + 1:]))
    return out


def resolve_value(value, rule: Rule):
    """A compile-time value as written in a rule: literal or param (refs and arithmetic stay symbolic)."""
    return parse_value(value).resolve(Env(rule.params)) if isinstance(value, dict) and "param" in value else value


def _pattern(fact_type: str, conds: tuple[Condition, ...], rule: Rule, terminology) -> dict:
    terms = [{"t": fact_type}] + [c.compile(rule.params, terminology) for c in conds]
    return terms[0] if len(terms) == 1 else {"$and": _flatten(terms)}


def _flatten(terms: list[dict]) -> list[dict]:
    """Nested $and lifted into their parent: durable-rules dropped a sibling $gt with a reference
    expression when a nested $and stood beside it (found by a sample; see tests/test_engine.py)."""
    out = []
    for t in terms:
        if set(t) == {"$and"}:
            out += _flatten(t["$and"])
        else:
            out.append(t)
    return out


def prefilter(rules: list[Rule]):
    """A predicate that drops facts no pattern could ever match (a sound shortcut, not a rule).

    Per fact type: the constraints every pattern of that type shares (each condition names its own,
    `Condition.shared`: a value set condition on `vs`, or a literal equality; none inside an `or`).
    A fact that fails one of them cannot match any pattern, so the engine need not see it. Types no
    rule mentions are dropped too.
    """
    shared: dict[str, dict] = {}
    for rule in rules:
        for alt in rule.alternatives:
            for p in alt.patterns:
                mine = dict(filter(None, (c.shared() for c in p.conditions)))
                if p.fact not in shared:
                    shared[p.fact] = mine
                else:
                    shared[p.fact] = {k: v for k, v in shared[p.fact].items() if mine.get(k, object()) == v}

    def keep(fact: dict) -> bool:
        need = shared.get(fact["t"])
        if need is None:
            return False
        for field, value in need.items():
            if value == "non-empty":
                if not fact.get(field):
                    return False
            elif fact.get(field) != value:
                return False
        return True

    keep.shared = shared  # type: ignore[attr-defined] - read by the facts stage (latest-only observations)
    return keep


def engine_view(rules: list[Rule], terminology) -> Callable[[dict], dict | None]:
    """What the engine is sent of a fact: a new dict of the fields some pattern of its type reads
    (`t` always, never `fid`: the engine adds it), where a list field that those patterns only test
    for members (`any`, `all`, `none`) holds only the values they name; None when no pattern could
    match what is left (`prefilter`: a medication none of whose value sets a rule names).

    No outcome changes: a field read any other way (a comparison, `exists`, a `ref` from another
    pattern) is sent whole, and a list keeps every value a rule tests for. durable-rules' time grows
    with every property it parses and every list element each of its tests of the fact's type reads
    (a medication with seven value set ids cost it 11.5 us, with one 3.6 us). On the 100-resource
    benchmark request the facts sent shrink from 3.7 to 1.8 kB (value set OIDs beside the names rules
    use, lists no pattern of the type reads), one fact fewer is sent (a body weight result), and
    durable's part of Evaluator._match from 0.20 to 0.16 ms.
    """
    could_match = prefilter(rules)
    readings: dict[str, list[dict]] = {}
    for rule in rules:
        for alt in rule.alternatives:
            fact_of = {p.name: p.fact for p in alt.patterns}
            for p in alt.patterns:
                readings.setdefault(p.fact, [{"t": None}])
                for c in p.conditions:
                    readings[p.fact].append(c.reads(terminology))
                    for name, field in c.refs():  # (a ref names an earlier pattern; else: read everywhere)
                        for fact_type in [fact_of[name]] if name in fact_of else set(fact_of.values()):
                            readings.setdefault(fact_type, [{"t": None}]).append({field: None})
    plans = {fact_type: tuple((field, None if values is None else values.__contains__)
                              for field, values in sorted(merge_reads(r).items()) if field != "fid")
             for fact_type, r in readings.items()}

    def view(fact: dict) -> dict | None:
        plan = plans.get(fact["t"])
        if plan is None:
            return None
        shown = {}
        for field, named in plan:
            if field in fact:
                value = fact[field]
                if named and isinstance(value, list):
                    value = list(filter(named, value))
                elif type(value) is float and value.is_integer() and abs(value) <= _EXACT_INTEGERS:
                    value = int(value)  # one spelling of a number: see _EXACT_INTEGERS
                shown[field] = value
        return shown if could_match(shown) else None

    return view


# durable-rules' equality join (`ref`) does not match an integer with the equal float (0 and 0.0, a
# weight of 70 and 70.0), where a literal (`eq: 0`) and Python's == do (tests/test_oracle.py,
# test_known_engine_difference_in_joins): a rule joining two facts on a number could miss a pair whose
# values are spelled differently, a silent no-card. The engine is sent an integral float as the integer
# (up to 2**53, where every integer is exactly a float), so joins agree with the Python evaluation.
_EXACT_INTEGERS = 2 ** 53
