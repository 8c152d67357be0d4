"""Findings -> CDS Hooks 2.0 cards: summary, markdown detail, source with topic, suggestions, overrides, links.

Optional fields are omitted rather than sent empty; cards are sorted critical, warning, info.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import templates
from .findings import Finding
from .ruleset.model import SEVERITY, Rule

TOPIC_SYSTEM = "https://cds-tpi.example.org/CodeSystem/rule"
OVERRIDE_SYSTEM = "https://cds-tpi.example.org/CodeSystem/override-reason"
SOURCE_LABEL = "cds-tpi trigger point injection safety check"
SUMMARY_MAX = 139
# what a template may read and still say the same on every card of its rule
_RULE_VARIABLES = frozenset({"params", "rule", "policy"})


@dataclass(frozen=True)
class CardParts:
    """What every card of one rule says alike, worked out once per rule (Rule.card_parts; measured: 3 to
    9 us a card of the benchmark request's 30-50, most of it the local policy's rendering)."""

    policy: str | None                # the local policy rendered, when it reads only the rule (its params)
    sources: str                      # the detail's closing line, "Sources: [label](url); ..."
    override_reasons: tuple[dict, ...]
    links: tuple[dict, ...]

    @classmethod
    def of(cls, rule: Rule) -> CardParts:
        policy = None
        if rule.policy and templates.variables(rule.policy) <= _RULE_VARIABLES:
            policy = templates.render(rule.policy, _rule_context(rule))
        return cls(
            policy=policy,
            sources="Sources: " + "; ".join(f"[{s['label']}]({s['url']})" for s in rule.sources),
            override_reasons=tuple({"system": r.get("system", OVERRIDE_SYSTEM), "code": r["code"], "display": r["display"]}
                                   for r in rule.card.get("override_reasons", [])),
            links=tuple({"label": s["label"], "url": s["url"], "type": "absolute"} for s in rule.sources),
        )


def _rule_context(rule: Rule) -> dict:
    return {"params": rule.params, "rule": {"id": rule.id, "title": rule.title}, "policy": rule.policy}


def _uuid4_text(raw: bytes) -> str:
    """16 random bytes as an RFC 4122 version-4 UUID: str(uuid.UUID(bytes=raw, version=4)) without the
    UUID object (the version nibble 4, the variant bits 10)."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def random_uuids(batch: int = 8):
    """Random version-4 UUIDs for cards and suggestions (CDS Hooks: each unique), `batch` from one
    os.urandom call (uuid.uuid4 makes one call and one UUID object each: measured, an id takes a third
    of the time; 6 ids a benchmark request, 30 -> 10 us on a busy machine)."""
    while True:
        raw = os.urandom(16 * batch)
        for i in range(0, len(raw), 16):
            yield _uuid4_text(raw[i:i + 16])


def _context(f: Finding, patient: dict | None) -> dict:
    ctx = {name: [] for name in f.rule.pattern_names}
    ctx.update(f.bindings)
    ctx.update(_rule_context(f.rule), notes=list(f.notes), patient=patient or {"ref": "", "name": "patient"})
    return ctx


def _without_empty(obj, render=None):
    """A copy of FHIR JSON without empty values ("", [], {}, null members), which FHIR JSON forbids and
    CDS Hooks responses must not carry. fhir.resources accepts some of them (e.g. `"reference": ""`),
    so a draft echoed back in an update action is cleaned. Nulls inside arrays (primitive extension
    alignment) are kept.

    With `render`, every string is a template, rendered before it is tested (a create action's resource:
    rendering and cleaning in one walk, measured 9 -> 6 us for thoracic-site's ServiceRequest)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            v = _without_empty(v, render)
            if v is not None and v != "" and v != [] and v != {}:
                out[k] = v
        return out
    if isinstance(obj, list):
        items = [_without_empty(v, render) for v in obj]
        return [v for v in items if v != "" and v != [] and v != {}]
    if render is not None and isinstance(obj, str):
        return render(obj)
    return obj


class _CannotDelete(Exception):
    """A delete action whose target is not a draft order with an id (a draft sent only with a urn:uuid
    fullUrl, an injectate read from the order's text): the suggestion cannot be carried out as a whole."""


def _actions(spec: dict, ctx: dict, drafts: dict[str, dict]) -> list[dict]:
    items = ctx.get(spec["for_each"], []) if "for_each" in spec else [None]
    out = []
    for item in items:
        action = _action(spec, dict(ctx, item=item) if item is not None else ctx, drafts)
        if action is not None:
            out.append(action)
    return out


def _action(spec: dict, c: dict, drafts: dict[str, dict]) -> dict | None:
    """One action for one item; None for an update whose target is no draft of the request. What decides
    whether there is an action is rendered first: a description is rendered only to be shown."""
    kind = spec["type"]
    if kind == "delete":
        rid = templates.render(spec["resource_id"], c, "raw")
        if not rid or rid not in drafts:
            # Only a draft order with an id can be removed. A suggestion that cannot remove what it
            # says it replaces must not be offered at all: accepting "Replace lidocaine with saline"
            # would add the saline and leave the lidocaine (audit 4: drafts with no id).
            raise _CannotDelete(rid)
        what = {"resourceId": rid}
    elif kind == "create":
        # (a template whose value is unknown - e.g. no valid Patient, so no subject - renders empty)
        what = {"resource": _without_empty(spec["resource"], lambda source: templates.render(source, c, "raw"))}
    else:  # update: the draft with a note added
        target = drafts.get(templates.render(spec["target"], c, "raw"))
        if target is None:
            return None
        resource = _without_empty(target)  # a copy: every dict and list is new, the values are immutable JSON
        resource["note"] = list(resource.get("note") or []) + [{"text": templates.render(spec["note"], c, "text")}]
        what = {"resource": resource}
    return {"type": kind, "description": templates.render(spec["description"], c, "text"), **what}


def card_for(f: Finding, drafts: dict[str, dict], patient: dict | None = None, uuids=None) -> dict:
    """One CDS Hooks card for one finding (uuids: where its ids come from, random_uuids() by default)."""
    rule, parts, ctx = f.rule, f.rule.card_parts, _context(f, patient)
    uuids = uuids or random_uuids(batch=4)
    summary = templates.render(rule.card["summary"], dict(ctx, short_labels=True), "text")
    if len(summary) > SUMMARY_MAX:
        summary = summary[: SUMMARY_MAX - 1].rstrip() + "…"
    detail = templates.render(rule.card["detail"], ctx)
    if rule.policy:
        policy = parts.policy if parts.policy is not None else templates.render(rule.policy, ctx)
        detail += f"\n\n_Local policy:_ {policy}"
    detail += "\n\n" + parts.sources
    card = {
        "uuid": next(uuids),
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
        sug = {"label": templates.render(s["label"], ctx, "text"), "uuid": next(uuids), "actions": actions}
        if "is_recommended" in s:
            sug["isRecommended"] = s["is_recommended"]
        suggestions.append(sug)
    if suggestions:
        card["selectionBehavior"] = rule.card.get("selection_behavior", "at-most-one")
        card["suggestions"] = suggestions
    if parts.override_reasons:
        card["overrideReasons"] = [dict(r) for r in parts.override_reasons]
    card["links"] = [dict(link) for link in parts.links]  # copies: a card is the caller's to change
    return card


def cards_for(findings: list[Finding], drafts: dict[str, dict], patient: dict | None = None) -> list[dict]:
    """Cards for all findings, most severe first (stable within a severity)."""
    uuids = random_uuids()
    cards = [card_for(f, drafts, patient, uuids) for f in findings]
    return sorted(cards, key=lambda c: -SEVERITY[c["indicator"]])
