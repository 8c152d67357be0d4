"""Compile rules to durable-rules ruleset definitions (plain JSON-able dicts; the engine adds actions).

Grammar mapping (rules/README.md has the user view):
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

from ..errors import RuleError
from .facttypes import VALUESET_FIELDS
from .model import Pattern, Rule

_CMP = {"lt": "$lt", "lte": "$lte", "gt": "$gt", "gte": "$gte", "ne": "$neq"}


def durable_name(rule_id: str, alt_index: int, probe: int | None = None) -> str:
    return f"{rule_id}#{alt_index}" + (f"!{probe}" if probe is not None else "")


def split_name(name: str) -> tuple[str, int, int | None]:
    """(rule id, alternative index, probe index or None)."""
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
            main = [{p.name: _pattern(_without_none(p), rule, terminology)} for p in present]
            out[durable_name(rule.id, alt.index)] = {"all": main}
            probes = [main + [{p.name: _pattern(p, rule, terminology)}] for p in alt.patterns if p.absent]
            for i, p in enumerate(present):
                for field, ids in _nones(p):
                    for one in ids:  # "holds none of a, b" is blocked by a probe holding a, and one holding b
                        positive = _require(_without_none(p), field, one)
                        probes.append(main[:i] + [{p.name: _pattern(positive, rule, terminology)}] + main[i + 1:])
            for n, probe in enumerate(probes):
                out[durable_name(rule.id, alt.index, n)] = {"all": probe}
    return out


def _nones(p: Pattern) -> list[tuple[str, list]]:
    return [(f, as_ops(c)["none"]) for f, c in (p.where or {}).items() if f != "or" and "none" in as_ops(c)]


def _without_none(p: Pattern) -> Pattern:
    """The pattern with its `none` conditions left out."""
    where = {}
    for f, c in (p.where or {}).items():
        ops = as_ops(c) if f != "or" else None
        if ops is not None and "none" in ops:
            rest = {k: v for k, v in ops.items() if k != "none"}
            if rest:
                where[f] = rest
        else:
            where[f] = c
    return Pattern(p.name, p.fact, where, p.absent, p.min_count)


def _require(p: Pattern, field: str, value: str) -> Pattern:
    """The pattern with one more element its list field must hold (an `all` condition)."""
    ops = dict(as_ops(p.where[field])) if field in p.where else {}
    ops["all"] = list(ops.get("all", [])) + [value]
    return Pattern(p.name, p.fact, {**p.where, field: ops}, p.absent, p.min_count)


def resolve_value(value, rule: Rule):
    """A compile-time value: literal or param (refs and arithmetic stay symbolic)."""
    if isinstance(value, dict) and "param" in value:
        return rule.params[value["param"]]
    return value


def _pattern(p: Pattern, rule: Rule, terminology) -> dict:
    terms = [{"t": p.fact}]
    if p.where:
        terms += _where(p.where, rule, terminology)
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


def _where(where: dict, rule: Rule, terminology) -> list[dict]:
    terms: list[dict] = []
    for field, cond in where.items():
        if field == "or":
            alts = []
            for sub in cond:
                sub_terms = _where(sub, rule, terminology)
                alts.append(sub_terms[0] if len(sub_terms) == 1 else {"$and": sub_terms})
            terms.append({"$or": alts})
            continue
        ops = as_ops(cond)
        for op, value in ops.items():
            terms.append(_term(field, op, value, rule, terminology))
    return terms


def as_ops(cond) -> dict:
    """A condition as {op: value}: a bare value (literal, param, ref, mul) means eq."""
    if isinstance(cond, dict) and not (set(cond) & {"param", "ref", "mul"}):
        return cond
    return {"eq": cond}


def _vs(name, terminology) -> str:
    vid = terminology.resolve(name) if terminology else None
    if vid is None:
        raise RuleError(f"unknown value set '{name}'")
    return vid


def _term(field: str, op: str, value, rule: Rule, terminology) -> dict:
    if op == "exists":
        return {"$ex" if value else "$nex": {field: 1}}
    if op == "in":
        return {"$or": [{field: v} for v in value]} if len(value) > 1 else {field: value[0]}
    if op == "none":
        raise RuleError(f"rule {rule.id}: 'none' is only allowed at the top level of a pattern's where")
    if op in ("any", "all"):
        ids = [_vs(v, terminology) for v in value] if field in VALUESET_FIELDS else list(value)
        if op == "all":
            terms = [{"$iany": {field: {"$i": v}}} for v in ids]
            return terms[0] if len(terms) == 1 else {"$and": terms}
        if op == "any":
            inner = {"$or": [{"$i": v} for v in ids]} if len(ids) > 1 else {"$i": ids[0]}
            return {"$iany": {field: inner}}
    expr = _expr(value, rule)
    if field == "region" and isinstance(expr, str):
        expr = _vs(expr, terminology) if expr != "unknown" else expr
    if op == "eq":
        return {field: expr}
    if op in _CMP:
        return {_CMP[op]: {field: expr}}
    raise RuleError(f"rule {rule.id}: unknown operator '{op}'")


def _expr(value, rule: Rule):
    if isinstance(value, dict):
        if "param" in value:
            return rule.params[value["param"]]
        if "ref" in value:
            pat, _, fld = value["ref"].partition(".")
            return {pat: fld}
        if "mul" in value:
            left, right = (_expr(v, rule) for v in value["mul"])
            if not isinstance(left, dict) and isinstance(right, dict):
                left, right = right, left
            return {"$mul": {"$l": left, "$r": right}}
    return value


def prefilter(rules: list[Rule]):
    """A predicate that drops facts no pattern could ever match (a sound shortcut, not a rule).

    Per fact type: the constraints every pattern of that type shares (a value set condition on
    `vs`, or the same literal equality, outside any `or`). A fact that fails one of them cannot
    match any pattern, so the engine need not see it. Types no rule mentions are dropped too.
    """
    shared: dict[str, dict] = {}
    for rule in rules:
        for alt in rule.alternatives:
            for p in alt.patterns:
                mine = {}
                for field, cond in (p.where or {}).items():
                    if field == "or":
                        continue
                    ops = as_ops(cond)
                    if field in VALUESET_FIELDS and ("any" in ops or "all" in ops):
                        mine[field] = "non-empty"
                    elif set(ops) == {"eq"} and isinstance(ops["eq"], (bool, str, int, float)):
                        mine[field] = ops["eq"]
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


def referenced_fields(rules: list[Rule]) -> frozenset[str]:
    """Every fact field some pattern reads (plus t and fid): the engine needs no other field."""
    fields = {"t", "fid"}

    def walk(where):
        for field, cond in (where or {}).items():
            if field == "or":
                for sub in cond:
                    walk(sub)
                continue
            fields.add(field)
            for value in as_ops(cond).values():
                collect_refs(value)

    def collect_refs(value):
        if isinstance(value, dict):
            if "ref" in value:
                fields.add(value["ref"].partition(".")[2])
            for v in value.get("mul", ()):
                collect_refs(v)

    for rule in rules:
        for alt in rule.alternatives:
            for p in alt.patterns:
                walk(p.where)
    return frozenset(fields)
