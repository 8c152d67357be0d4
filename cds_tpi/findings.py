"""Engine matches -> findings: one per rule, with every fact each pattern matched."""

from __future__ import annotations

from dataclasses import dataclass

from .engine import Match
from .ruleset.compile import resolve_value, split_name
from .ruleset.model import SEVERITY, Rule
from . import templates


@dataclass(frozen=True)
class Finding:
    """A rule that holds for this patient and order, with what made it hold."""

    rule: Rule
    indicator: str
    bindings: dict          # pattern name -> [facts], distinct, in fact order
    notes: tuple[str, ...]  # rendered notes of the alternatives that fired
    alternatives: tuple[int, ...]

    @property
    def rule_id(self) -> str:
        return self.rule.id


def _fids(bindings: dict) -> frozenset:
    return frozenset((name, fact["fid"]) for name, fact in bindings.items())


def _fid_order(fact: dict):
    return fact.get("fid", 0)


def _add_distinct(into: dict, facts) -> None:
    """Add facts to `into` ({fid: fact}) whose fid it does not hold yet: the first of each fid is kept."""
    for f in facts:
        into.setdefault(f.get("fid"), f)


def _in_fid_order(by_fid: dict) -> list[dict]:
    """The distinct facts in fid order (fact order); a stable sort, so the first seen leads a tie."""
    return sorted(by_fid.values(), key=_fid_order)


def _bound(combos: list[dict]) -> dict[str, list[dict]]:
    """Pattern name -> the distinct facts it matched over all firings of one alternative, in fact order."""
    bound: dict[str, dict] = {}
    for combo in combos:
        for name, fact in combo.items():
            bound.setdefault(name, {}).setdefault(fact.get("fid"), fact)
    return {name: _in_fid_order(facts) for name, facts in bound.items()}


def collect(matches: list[Match], rules: list[Rule]) -> list[Finding]:
    """Group firings by rule; drop alternatives whose min_count is not reached."""
    by_rule: dict[str, dict[int, list[dict]]] = {}
    # For each alternative: the sets of positive facts for which an absent pattern was found after all.
    blocked: dict[tuple[str, int], list[frozenset]] = {}
    for m in matches:
        rule_id, alt, probe = split_name(m.rule)
        if probe is None:
            by_rule.setdefault(rule_id, {}).setdefault(alt, []).append(m.bindings)
        else:
            blocked.setdefault((rule_id, alt), []).append(_fids(m.bindings))
    for (rule_id, alt), probes in blocked.items():
        combos = by_rule.get(rule_id, {}).get(alt)
        if combos:
            by_rule[rule_id][alt] = [c for c in combos if not any(_fids(c) <= p for p in probes)]
    findings = []
    for rule in rules:
        alts = by_rule.get(rule.id)
        if not alts:
            continue
        merged: dict[str, dict] = {}  # pattern name -> {fid: fact}
        fired, notes, indicator = [], [], None
        for alt in rule.alternatives:
            combos = alts.get(alt.index)
            if not combos:
                continue
            bound = _bound(combos)
            if any(p.min_count is not None and len({f.get("ref") or f["fid"] for f in bound.get(p.name, [])}) < resolve_value(p.min_count, rule)
                   for p in alt.patterns):
                continue
            fired.append(alt.index)
            alt_indicator = alt.indicator or rule.indicator
            if indicator is None or SEVERITY[alt_indicator] > SEVERITY[indicator]:
                indicator = alt_indicator
            for name, facts in bound.items():
                _add_distinct(merged.setdefault(name, {}), facts)
            if alt.note:
                ctx = {name: [] for name in rule.pattern_names}
                ctx.update(bound, params=rule.params, rule={"id": rule.id, "title": rule.title})
                note = templates.render(alt.note, ctx)  # MarkdownSafe: its values escaped
                if note and note not in notes:
                    notes.append(note)
        if fired:
            bindings = {name: _in_fid_order(facts) for name, facts in merged.items()}
            findings.append(Finding(rule, indicator, bindings, tuple(notes), tuple(fired)))
    return findings
