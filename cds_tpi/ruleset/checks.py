"""Checks of one rule beyond the schema: names, references, value sets, params, templates.

Returns (json_path, message) pairs and never raises, so lint can report every problem at once.
"""

from __future__ import annotations

from jinja2 import TemplateError

from .. import templates
from .facttypes import FACT_FIELDS, VALUESET_FIELDS
from .compile import as_ops
from .model import Rule




def check_rule(rule: Rule, terminology) -> list[tuple[list, str]]:
    problems: list[tuple[list, str]] = []
    all_patterns: dict[str, str] = {}
    for alt in rule.alternatives:
        names_so_far: dict[str, str] = {}
        base = ["when", alt.index, "match"]
        if all(p.absent for p in alt.patterns):
            problems.append((["when", alt.index], "an alternative needs at least one pattern that is not absent"))
        for p in alt.patterns:
            path = base + [p.name]
            fields = FACT_FIELDS[p.fact]
            _check_where(p.where, fields, names_so_far, rule, terminology, path + ["where"], problems)
            if p.min_count is not None:
                if p.absent:
                    problems.append((path + ["min_count"], "min_count makes no sense on an absent pattern"))
                _check_value(p.min_count, names_so_far, rule, path + ["min_count"], problems)
            if not p.absent:
                names_so_far[p.name] = p.fact
            if all_patterns.setdefault(p.name, p.fact) != p.fact:
                problems.append((path, f"pattern '{p.name}' is a {p.fact} here but a {all_patterns[p.name]} elsewhere"))
        if alt.note:
            _check_template(alt.note, rule, all_patterns, ["when", alt.index, "note"], problems)
    card = rule.card
    for key in ("summary", "detail"):
        _check_template(card[key], rule, all_patterns, ["card", key], problems)
    for i, s in enumerate(card.get("suggestions", [])):
        sp = ["card", "suggestions", i]
        _check_template(s["label"], rule, all_patterns, sp + ["label"], problems)
        if "requires" in s and s["requires"] not in all_patterns:
            problems.append((sp + ["requires"], f"unknown pattern '{s['requires']}'"))
        for j, a in enumerate(s["actions"]):
            ap = sp + ["actions", j]
            extra = {}
            if "for_each" in a:
                if a["for_each"] not in all_patterns:
                    problems.append((ap + ["for_each"], f"unknown pattern '{a['for_each']}'"))
                    continue
                extra["item"] = _sample_fact(all_patterns[a["for_each"]])
            for key in ("description", "resource_id", "target", "note"):
                if key in a:
                    _check_template(a[key], rule, all_patterns, ap + [key], problems, extra)
            for text in _strings(a.get("resource", {})):
                _check_template(text, rule, all_patterns, ap + ["resource"], problems, extra)
    return problems


def _check_where(where, fields, names_so_far, rule, terminology, path, problems, inside_or=False):
    for key, cond in where.items():
        if key == "or":
            for i, sub in enumerate(cond):
                _check_where(sub, fields, names_so_far, rule, terminology, path + ["or", i], problems, True)
            continue
        if inside_or and isinstance(cond, dict) and "none" in cond:
            problems.append((path + [key, "none"], "'none' cannot be used inside 'or' (it is compiled to a probe rule)"))
        if key not in fields:
            problems.append((path + [key], f"unknown field '{key}' (known: {', '.join(sorted(fields))})"))
            continue
        ops = as_ops(cond)
        for op, value in ops.items():
            if op in ("any", "all", "none", "in") and key in VALUESET_FIELDS:
                for i, name in enumerate(value):
                    if terminology is None or terminology.resolve(name) is None:
                        problems.append((path + [key, op, i], f"unknown value set '{name}'"))
            elif op not in ("in", "any", "all", "none", "exists"):
                _check_value(value, names_so_far, rule, path + [key, op], problems)
                if key in VALUESET_FIELDS and isinstance(value, str) and value != "unknown" and terminology and terminology.resolve(value) is None:
                    problems.append((path + [key, op], f"unknown value set '{value}'"))


def _check_value(value, names_so_far, rule, path, problems):
    if isinstance(value, dict):
        if "param" in value and value["param"] not in rule.params:
            problems.append((path, f"unknown param '{value['param']}' (declare it under params)"))
        elif "ref" in value:
            pat, _, fld = value["ref"].partition(".")
            if pat not in names_so_far:
                problems.append((path, f"ref '{value['ref']}': no earlier (present) pattern '{pat}' in this alternative"))
            elif fld not in FACT_FIELDS[names_so_far[pat]]:
                problems.append((path, f"ref '{value['ref']}': a {names_so_far[pat]} fact has no field '{fld}'"))
        elif "mul" in value:
            for v in value["mul"]:
                _check_value(v, names_so_far, rule, path, problems)


def _sample_fact(fact_type: str) -> dict:
    sample = {f: 1 for f in FACT_FIELDS[fact_type]}
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
        problems.append((path, f"template error{where}: {e}"))


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
