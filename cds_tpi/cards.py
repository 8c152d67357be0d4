"""Findings -> CDS Hooks 2.0 cards: summary, markdown detail, source with topic, suggestions, overrides, links.

Optional fields are omitted rather than sent empty; cards are sorted critical, warning, info.
"""

from __future__ import annotations

import copy
import uuid

from . import templates
from .findings import Finding
from .ruleset.model import SEVERITY

TOPIC_SYSTEM = "https://cds-tpi.example.org/CodeSystem/rule"
OVERRIDE_SYSTEM = "https://cds-tpi.example.org/CodeSystem/override-reason"
SOURCE_LABEL = "cds-tpi trigger point injection safety check"
SUMMARY_MAX = 139


def _context(f: Finding, patient: dict | None) -> dict:
    ctx = {p.name: [] for a in f.rule.alternatives for p in a.patterns}
    ctx.update(f.bindings)
    ctx.update(params=f.rule.params, notes=list(f.notes), rule={"id": f.rule.id, "title": f.rule.title},
               patient=patient or {"ref": "", "name": "patient"}, policy=f.rule.policy)
    return ctx


def _render_obj(obj, ctx):
    if isinstance(obj, str):
        return templates.render(obj, ctx, "raw")
    if isinstance(obj, dict):
        return {k: _render_obj(v, ctx) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_render_obj(v, ctx) for v in obj]
    return obj


def _without_empty(obj):
    """A copy of FHIR JSON without empty values ("", [], {}, null members), which FHIR JSON forbids and
    CDS Hooks responses must not carry. fhir.resources accepts some of them (e.g. `"reference": ""`),
    so a draft echoed back in an update action is cleaned. Nulls inside arrays (primitive extension
    alignment) are kept."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            v = _without_empty(v)
            if v is not None and v != "" and v != [] and v != {}:
                out[k] = v
        return out
    if isinstance(obj, list):
        items = [_without_empty(v) for v in obj]
        return [v for v in items if v != "" and v != [] and v != {}]
    return obj


class _CannotDelete(Exception):
    """A delete action whose target is not a draft order with an id (a draft sent only with a urn:uuid
    fullUrl, an injectate read from the order's text): the suggestion cannot be carried out as a whole."""


def _actions(spec: dict, ctx: dict, drafts: dict[str, dict]) -> list[dict]:
    items = ctx.get(spec["for_each"], []) if "for_each" in spec else [None]
    out = []
    for item in items:
        c = dict(ctx, item=item) if item is not None else ctx
        action = {"type": spec["type"], "description": templates.render(spec["description"], c, "text")}
        if spec["type"] == "delete":
            rid = templates.render(spec["resource_id"], c, "raw")
            if not rid or rid not in drafts:
                # Only a draft order with an id can be removed. A suggestion that cannot remove what it
                # says it replaces must not be offered at all: accepting "Replace lidocaine with saline"
                # would add the saline and leave the lidocaine (audit 4: drafts with no id).
                raise _CannotDelete(rid)
            action["resourceId"] = rid
        elif spec["type"] == "create":
            # (a template whose value is unknown - e.g. no valid Patient, so no subject - renders empty)
            action["resource"] = _without_empty(_render_obj(spec["resource"], c))
        else:  # update: the draft with a note added
            target = drafts.get(templates.render(spec["target"], c, "raw"))
            if target is None:
                continue
            resource = _without_empty(copy.deepcopy(target))
            resource["note"] = list(resource.get("note") or []) + [{"text": templates.render(spec["note"], c, "text")}]
            action["resource"] = resource
        out.append(action)
    return out


def card_for(f: Finding, drafts: dict[str, dict], patient: dict | None = None) -> dict:
    """One CDS Hooks card for one finding."""
    rule, ctx = f.rule, _context(f, patient)
    summary = templates.render(rule.card["summary"], dict(ctx, short_labels=True), "text")
    if len(summary) > SUMMARY_MAX:
        summary = summary[: SUMMARY_MAX - 1].rstrip() + "…"
    detail = templates.render(rule.card["detail"], ctx)
    if rule.policy:
        detail += f"\n\n_Local policy:_ {templates.render(rule.policy, ctx)}"
    detail += "\n\nSources: " + "; ".join(f"[{s['label']}]({s['url']})" for s in rule.sources)
    card = {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "detail": detail,
        "indicator": f.indicator,
        "source": {
            "label": SOURCE_LABEL,
            "url": rule.sources[0]["url"],
            "topic": {"system": TOPIC_SYSTEM, "code": rule.id, "display": rule.title},
        },
    }
    suggestions = []
    for s in rule.card.get("suggestions", []):
        if s.get("requires") and not ctx.get(s["requires"]):
            continue
        try:
            actions = [a for spec in s["actions"] for a in _actions(spec, ctx, drafts)]
        except _CannotDelete:
            continue
        if not actions:
            continue
        sug = {"label": templates.render(s["label"], ctx, "text"), "uuid": str(uuid.uuid4()), "actions": actions}
        if "is_recommended" in s:
            sug["isRecommended"] = s["is_recommended"]
        suggestions.append(sug)
    if suggestions:
        card["selectionBehavior"] = rule.card.get("selection_behavior", "at-most-one")
        card["suggestions"] = suggestions
    reasons = [{"system": r.get("system", OVERRIDE_SYSTEM), "code": r["code"], "display": r["display"]}
               for r in rule.card.get("override_reasons", [])]
    if reasons:
        card["overrideReasons"] = reasons
    card["links"] = [{"label": s["label"], "url": s["url"], "type": "absolute"} for s in rule.sources]
    return card


def cards_for(findings: list[Finding], drafts: dict[str, dict], patient: dict | None = None) -> list[dict]:
    """Cards for all findings, most severe first (stable within a severity)."""
    cards = [card_for(f, drafts, patient) for f in findings]
    return sorted(cards, key=lambda c: -SEVERITY[c["indicator"]])
