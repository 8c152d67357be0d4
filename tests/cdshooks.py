"""One shared assertion: a response is a well-formed CDS Hooks 2.0 response (checklist in shared/cds-hooks).

`assert_cds_response` checks a response against cds_tpi/schemas/cds-hooks-response.schema.json and
then cds-tpi's own stricter rules (card uuids always set, cards sorted, one card per rule, ...);
`assert_discovery` checks a discovery document. Every response the CLI or the service produces in
a test goes through one of them.
"""

from __future__ import annotations

import uuid

from cds_tpi.schemas import errors as schema_errors

INDICATORS = {"info", "warning", "critical"}


def _no_empty(obj, path="$"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert v is not None and v != "" and v != [] and v != {}, f"{path}.{k} is empty or null (omit it instead)"
            _no_empty(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _no_empty(v, f"{path}[{i}]")


def assert_schema(name: str, instance) -> None:
    """`instance` is valid against the named cds_tpi schema; the message lists every violation."""
    problems = schema_errors(name, instance)
    assert not problems, f"not a valid {name} document:\n  " + "\n  ".join(problems)


def assert_discovery(doc: dict) -> None:
    """A CDS Hooks 2.0 discovery document (GET /cds-services), as cds-tpi sends it."""
    assert_schema("cds-hooks-discovery", doc)
    for service in doc["services"]:  # "services": [] is allowed; nothing else may be empty
        _no_empty(service)
    ids = [s["id"] for s in doc["services"]]
    assert len(ids) == len(set(ids)), f"service ids must be unique: {ids}"


def assert_cds_response(response: dict) -> None:
    assert_schema("cds-hooks-response", response)
    assert set(response) <= {"cards", "systemActions"}, response.keys()
    assert isinstance(response["cards"], list)
    for card in response["cards"]:
        _no_empty(card)
        uuid.UUID(card["uuid"])
        assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140, card["summary"]
        assert card["indicator"] in INDICATORS
        src = card["source"]
        assert src["label"]
        assert src["topic"]["code"] and src["topic"]["system"]
        if "suggestions" in card:
            assert card["selectionBehavior"] in ("at-most-one", "any")
            for s in card["suggestions"]:
                assert s["label"]
                uuid.UUID(s["uuid"])
                for a in s.get("actions", []):
                    assert a["type"] in ("create", "update", "delete"), a["type"]
                    assert a["description"]
                    if a["type"] == "delete":
                        assert "/" in a["resourceId"] and not a["resourceId"].startswith("urn:")
                    else:
                        assert isinstance(a["resource"], dict) and a["resource"]["resourceType"]
        for r in card.get("overrideReasons", []):
            assert r["code"] and r["display"] and r["system"]
        for link in card.get("links", []):
            assert link["label"] and link["url"].startswith("http") and link["type"] in ("absolute", "smart")
    order = {"critical": 0, "warning": 1, "info": 2}
    ranks = [order[c["indicator"]] for c in response["cards"]]
    assert ranks == sorted(ranks), "cards must be sorted critical -> warning -> info"
    ids = [c["source"]["topic"]["code"] for c in response["cards"]]
    assert len(ids) == len(set(ids)), f"one card per rule: {ids}"
