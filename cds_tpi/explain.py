"""Why each rule fired or did not, for one evaluation (`cds-tpi explain`).

Whether a rule fired is the engine's answer (the evaluation's findings); the why is worked out by
evaluating the conditions in Python (ruleset/match.py, the same semantics, checked against the
engine by tests/test_oracle.py): for an alternative that fired, the facts each pattern matched and
the FHIR resource each came from; for one that did not, the first thing that kept it from firing -
a pattern no fact meets (with the nearest candidate facts, ranked by how many conditions they pass,
and the condition each failed), patterns that hold separately but not together, a fact that an
`absent` pattern says must not be there, or a `min_count` not reached - and the data that was
missing (gap facts, inventory counts). The result is plain JSON-able data; `format_text` renders it.
"""

from __future__ import annotations

from .ruleset.compile import resolve_value
from .ruleset.conditions import Env
from .ruleset.match import blockers, bound_facts, combinations, distinct_records, holds, min_count_met
from .ruleset.model import Alternative, Pattern, Rule

NEAREST = 3  # candidate facts shown for a pattern nothing matched


def explain(rules: list[Rule], facts: list[dict], findings: list, terminology, rule_id: str | None = None) -> dict:
    """The explanation of every rule (or of one) against an evaluation's facts and findings."""
    fired = {f.rule_id: f for f in findings}
    chosen = [r for r in rules if rule_id is None or r.id == rule_id]
    return {
        "rules": [_rule(r, facts, fired.get(r.id), terminology) for r in chosen],
        "missing": missing_data(facts),
    }


def missing_data(facts: list[dict]) -> dict:
    """What the record lacked: gap facts (skipped or unavailable data) and the inventory counts."""
    inventory = next((f for f in facts if f.get("t") == "inventory"), {})
    out = {
        "gaps": [f.get("name", "") for f in facts if f.get("t") == "gap"],
        "inventory": {k: v for k, v in inventory.items() if k not in ("t", "fid", "checked", "unread_sites", "unread_site_count")},
        "checked": list(inventory.get("checked", [])),
    }
    if inventory.get("unread_sites"):   # injection sites given but not read as the planned order's
        out["unread_sites"] = list(inventory["unread_sites"])
    return out


def _rule(rule: Rule, facts: list[dict], finding, terminology) -> dict:
    env = Env(rule.params, terminology)
    fired_alts = set(finding.alternatives) if finding else set()
    return {
        "id": rule.id,
        "title": rule.title,
        "fired": finding is not None,
        "indicator": finding.indicator if finding else None,
        "alternatives": [_alternative(rule, alt, facts, env, alt.index in fired_alts) for alt in rule.alternatives],
    }


def fact_summary(fact: dict, pattern: Pattern | None = None) -> dict:
    """A fact as shown: its resource `ref`, name, and the values of the fields the pattern reads."""
    out = {"fid": fact.get("fid"), "type": fact.get("t"), "ref": fact.get("ref", ""), "name": fact.get("name", "")}
    if pattern is not None:
        read = sorted({f for c in pattern.conditions for f in c.fields() if f in fact and f not in ("t", "fid")})
        out["values"] = {f: fact[f] for f in read}
    return out


def _alternative(rule: Rule, alt: Alternative, facts: list[dict], env: Env, fired: bool) -> dict:
    combos = combinations(alt, facts, env)
    bound = bound_facts(combos)
    out = {"index": alt.index, "fired": fired, "reason": "", "patterns": []}
    if fired or (combos and min_count_met(alt, rule, bound)):
        out["patterns"] = [{"name": p.name, "fact": p.fact, "absent": p.absent,
                            "matched": [fact_summary(f, p) for f in bound.get(p.name, [])]} for p in alt.patterns]
        out["reason"] = "fired" if fired else "the conditions hold but the engine did not fire it"
        return out
    out["patterns"], out["reason"] = _why_not(rule, alt, facts, env, combos, bound)
    return out


def _why_not(rule, alt, facts, env, combos, bound) -> tuple[list[dict], str]:
    present = [p for p in alt.patterns if not p.absent]
    by_type: dict[str, list[dict]] = {}
    for f in facts:
        by_type.setdefault(f.get("t"), []).append(f)
    patterns, reason, step = [], "", env
    for p in present:
        matched = [f for f in by_type.get(p.fact, []) if holds(p, f, step)]
        entry = {"name": p.name, "fact": p.fact, "absent": False, "matched": [fact_summary(f, p) for f in matched]}
        if matched:
            step = step.bind(p.name, matched[0])
        else:
            entry["candidates"] = nearest(p, by_type.get(p.fact, []), step)
            if not reason:
                reason = _none_meets(p, facts)
        patterns.append(entry)
    if not reason and not combos:
        joint = combinations(Alternative(alt.index, tuple(present)), facts, env)
        if not joint:
            reason = "each pattern is met by some fact, but no facts meet them together (a ref between patterns fails)"
        else:
            first = joint[0]
            for p in alt.patterns:
                if p.absent:
                    found = blockers(p, facts, Env(env.params, env.terminology, first))
                    if found:
                        reason = reason or f"'{p.name}' must be absent, but a {p.fact} fact meets it: " + ", ".join(
                            _label(f) for f in found)
                        patterns.append({"name": p.name, "fact": p.fact, "absent": True, "matched": [],
                                         "blocked_by": [fact_summary(f, p) for f in found]})
    if not reason:
        for p in alt.patterns:
            if p.min_count is not None:
                need = resolve_value(p.min_count, rule)
                have = distinct_records(bound.get(p.name, []))
                if have < need:
                    reason = f"'{p.name}' matched {have} record(s); at least {need} needed (min_count)"
    for p in alt.patterns:
        if p.absent and not any(e["name"] == p.name for e in patterns):
            patterns.append({"name": p.name, "fact": p.fact, "absent": True, "matched": []})
    return patterns, reason or "no combination of facts meets the alternative"


def _none_meets(p: Pattern, facts: list[dict]) -> str:
    if not any(f.get("t") == p.fact for f in facts):
        return f"no {p.fact} fact at all for '{p.name}'"
    return f"no {p.fact} fact meets '{p.name}'"


def nearest(p: Pattern, candidates: list[dict], env: Env, limit: int = NEAREST) -> list[dict]:
    """The facts of the pattern's type that pass the most of its conditions, with the ones each fails.
    Ties go to the fact that passes more of the conditions as written before its first failure (the
    first conditions usually say what kind of thing the pattern is: an INR at 2.5 is nearer to
    "latest INR above 3" than a weight is)."""
    scored = []
    for f in candidates:
        verdicts = [c.evaluate(f, env) for c in p.conditions]
        failed = [c for c, ok in zip(p.conditions, verdicts) if not ok]
        prefix = verdicts.index(False) if False in verdicts else len(verdicts)
        scored.append((len(failed), -prefix, f.get("fid", 0), f, failed))
    scored.sort(key=lambda s: s[:3])
    return [{**fact_summary(f, p), "passed": len(p.conditions) - n, "of": len(p.conditions),
             "failed": [{"condition": c.describe(env), "actual": c.why_not(f, env)} for c in failed]}
            for n, _, _, f, failed in scored[:limit]]


def _label(fact: dict) -> str:
    ref, name = fact.get("ref") or f"the {fact.get('type') or fact.get('t')} fact", fact.get("name")
    return f'{ref} "{name}"' if name else ref


def format_text(name: str, explanation: dict) -> list[str]:
    """The explanation as text lines, one block per rule."""
    lines = [f"== {name}"]
    for r in explanation["rules"]:
        head = f"FIRED ({r['indicator']})" if r["fired"] else "not fired"
        lines.append(f"{head:<18}{r['id']}: {r['title']}")
        for alt in r["alternatives"]:
            lines.append(f"  when #{alt['index']}: {alt['reason']}")
            for p in alt["patterns"]:
                kind = f"{p['fact']}, absent" if p["absent"] else p["fact"]
                for f in p["matched"]:
                    lines.append(f"    {p['name']} ({kind}) = {_label(f)}{_values(f)}")
                for f in p.get("blocked_by", []):
                    lines.append(f"    {p['name']} ({kind}) is there: {_label(f)}{_values(f)}")
                cands = p.get("candidates")
                if cands is not None and not p["matched"]:
                    if not cands:
                        lines.append(f"    {p['name']} ({kind}): no {p['fact']} fact in the record")
                    for c in cands:
                        lines.append(f"    {p['name']} ({kind}) nearest: {_label(c)} passes {c['passed']} of {c['of']}")
                        for failed in c["failed"]:
                            lines.append(f"      failed: {failed['condition']} ({failed['actual']})")
    m = explanation["missing"]
    inv = ", ".join(f"{k} {v}" for k, v in m["inventory"].items())
    lines.append(f"records given: {inv or 'none'}" + (f"; looked up: {', '.join(m['checked'])}" if m["checked"] else ""))
    for g in m["gaps"]:
        lines.append(f"missing: {g}")
    for u in m.get("unread_sites", []):
        lines.append(f"site not read: {u}")
    return lines


def _values(f: dict) -> str:
    vals = f.get("values") or {}
    return (" [" + ", ".join(f"{k}={v!r}" for k, v in vals.items()) + "]") if vals else ""
