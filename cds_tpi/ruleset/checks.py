"""Checks of one rule beyond the schema: names, references, value sets, params, templates.

Returns Issues located by JSON path (the loader adds file and line) and never raises, so lint can
report every problem at once. Each condition operator checks itself (conditions.py).
"""

from __future__ import annotations

from jinja2 import TemplateError

from .. import templates
from .conditions import CheckContext, check_conditions, parse_value
from .facttypes import FACT_FIELDS, LIST_FIELDS
from .issues import Issue, issue
from .model import Rule


def check_rule(rule: Rule, terminology) -> list[Issue]:
    """Every problem of a rule whose file passed the schema."""
    problems: list[Issue] = []
    all_patterns: dict[str, str] = {}
    for alt in rule.alternatives:
        names_so_far: dict[str, str] = {}
        base = ["when", alt.index, "match"]
        if all(p.absent for p in alt.patterns):
            problems.append(issue(["when", alt.index], "an alternative needs at least one pattern that is not absent"))
        for p in alt.patterns:
            path = base + [p.name]
            ctx = CheckContext(rule.params, terminology, frozenset(FACT_FIELDS[p.fact]), dict(names_so_far))
            problems += check_conditions(p.conditions, ctx, tuple(path + ["where"]))
            if p.min_count is not None:
                if p.absent:
                    problems.append(issue(path + ["min_count"], "min_count makes no sense on an absent pattern"))
                problems += parse_value(p.min_count).check(ctx, tuple(path + ["min_count"]))
            if not p.absent:
                names_so_far[p.name] = p.fact
            if all_patterns.setdefault(p.name, p.fact) != p.fact:
                problems.append(issue(path, f"pattern '{p.name}' is a {p.fact} here but a {all_patterns[p.name]} elsewhere"))
        if alt.note:
            _check_template(alt.note, rule, all_patterns, ["when", alt.index, "note"], problems)
    card = rule.card
    for key in ("summary", "detail"):
        if key in card:  # a card with schema errors is not checked further
            _check_template(card[key], rule, all_patterns, ["card", key], problems)
    for i, s in enumerate(card.get("suggestions", [])):
        sp = ["card", "suggestions", i]
        _check_template(s["label"], rule, all_patterns, sp + ["label"], problems)
        if "requires" in s and s["requires"] not in all_patterns:
            problems.append(issue(sp + ["requires"], f"unknown pattern '{s['requires']}'"))
        for j, a in enumerate(s["actions"]):
            ap = sp + ["actions", j]
            extra = {}
            if "for_each" in a:
                if a["for_each"] not in all_patterns:
                    problems.append(issue(ap + ["for_each"], f"unknown pattern '{a['for_each']}'"))
                    continue
                extra["item"] = _sample_fact(all_patterns[a["for_each"]])
            for key in ("description", "resource_id", "target", "note"):
                if key in a:
                    _check_template(a[key], rule, all_patterns, ap + [key], problems, extra)
            for text in _strings(a.get("resource", {})):
                _check_template(text, rule, all_patterns, ap + ["resource"], problems, extra)
    return problems


def _sample_fact(fact_type: str) -> dict:
    sample = {f: (["sample"] if f in LIST_FIELDS else 1) for f in FACT_FIELDS[fact_type]}
    sample.update(t=fact_type, ref=f"{fact_type.title()}/sample", name=f"sample {fact_type}", vs=["x"], text_only=[])
    return sample


def sample_context(rule: Rule, patterns: dict[str, str]) -> dict:
    ctx = {name: [_sample_fact(ft)] for name, ft in patterns.items()}
    ctx.update(params=dict(rule.params), notes=["sample note"], rule={"id": rule.id, "title": rule.title},
               patient={"ref": "Patient/sample", "name": "sample"}, policy=rule.policy)
    return ctx


def _check_template(source, rule, patterns, path, problems, extra=None):
    try:
        templates.render(source, {**sample_context(rule, patterns), **(extra or {})})
    except TemplateError as e:
        line = getattr(e, "lineno", None)
        where = f" (template line {line})" if line else ""
        problems.append(issue(path, f"template error{where}: {e}"))


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
