"""The CDS Hooks 2.0 response and discovery schemas (cds_tpi/schemas) accept what the specification
allows and reject each thing it does not, so that `assert_cds_response` cannot silently pass a bad card."""

from __future__ import annotations

import copy

import pytest
from jsonschema import Draft202012Validator

from cds_tpi.schemas import NAMES, errors, load_schema, validator
from cds_tpi.service.discovery import discovery_document

from .cdshooks import assert_cds_response, assert_discovery

UUID = "1f0e2c54-7c0b-4d1e-9a57-3c5d0f6b2a11"
SYSTEM = "https://cds-tpi.example.org/CodeSystem/rule"


def full_card() -> dict:
    """A card using every field CDS Hooks 2.0 defines."""
    return {
        "uuid": UUID,
        "summary": "Active anticoagulant: warfarin",
        "detail": "Hold or manage **warfarin** before the injection.",
        "indicator": "warning",
        "source": {"label": "cds-tpi", "url": "https://cds-tpi.example.org", "icon": "https://cds-tpi.example.org/icon.png",
                   "topic": {"system": SYSTEM, "code": "anticoagulant", "display": "Anticoagulant"}},
        "suggestions": [{
            "label": "Remove the steroid", "uuid": UUID, "isRecommended": True,
            "actions": [
                {"type": "delete", "description": "Remove triamcinolone", "resourceId": "MedicationRequest/tri-1"},
                {"type": "create", "description": "Order an INR",
                 "resource": {"resourceType": "ServiceRequest", "status": "draft", "intent": "order",
                              "code": {"coding": [{"system": "http://loinc.org", "code": "6301-6"}]}}},
                {"type": "update", "description": "Add a note",
                 "resource": {"resourceType": "ServiceRequest", "id": "tpi-1", "note": [{"text": "latex-free"}]}},
            ],
        }],
        "selectionBehavior": "at-most-one",
        "overrideReasons": [{"system": SYSTEM, "code": "managed", "display": "Already managed"}],
        "links": [
            {"label": "Guideline", "url": "https://example.org/guideline", "type": "absolute"},
            {"label": "App", "url": "https://app.example.org/launch", "type": "smart", "appContext": "order=tpi-1",
             "autolaunchable": False},
        ],
    }


def full_response() -> dict:
    return {"cards": [full_card()],
            "systemActions": [{"type": "update", "description": "Annotate",
                               "resource": {"resourceType": "ServiceRequest", "id": "tpi-1", "status": "draft"}}]}


def _apply(doc: dict, path: str, value) -> dict:
    """doc with the element at a dotted path (list indexes as numbers) set to value, or deleted when value is DELETE."""
    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = doc
    for p in parents:
        target = target[p]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


DELETE = object()

# (what is wrong, path, value) -- each must be rejected by the response schema.
BAD_RESPONSES = [
    ("no cards", "cards", DELETE),
    ("cards is null", "cards", None),
    ("cards is an object", "cards", {}),
    ("unknown top-level field", "warnings", ["x"]),
    ("systemActions empty", "systemActions", []),
    ("systemActions null", "systemActions", None),
    ("extension empty", "extension", {}),
    ("card is a string", "cards.0", "card"),
    ("card without summary", "cards.0.summary", DELETE),
    ("summary of 140 chars", "cards.0.summary", "x" * 140),
    ("summary empty", "cards.0.summary", ""),
    ("summary null", "cards.0.summary", None),
    ("card without indicator", "cards.0.indicator", DELETE),
    ("indicator in upper case", "cards.0.indicator", "WARNING"),
    ("indicator 'hard-stop'", "cards.0.indicator", "hard-stop"),
    ("card without source", "cards.0.source", DELETE),
    ("source without label", "cards.0.source.label", DELETE),
    ("source label empty", "cards.0.source.label", ""),
    ("source url relative", "cards.0.source.url", "/guideline"),
    ("source topic without code", "cards.0.source.topic.code", DELETE),
    ("source topic without system", "cards.0.source.topic.system", DELETE),
    ("source topic a string", "cards.0.source.topic", "anticoagulant"),
    ("uuid not a uuid", "cards.0.uuid", "card-1"),
    ("uuid null", "cards.0.uuid", None),
    ("detail empty", "cards.0.detail", ""),
    ("detail null", "cards.0.detail", None),
    ("unknown card field", "cards.0.severity", "high"),
    ("missing selectionBehavior with suggestions", "cards.0.selectionBehavior", DELETE),
    ("selectionBehavior 'all'", "cards.0.selectionBehavior", "all"),
    ("suggestions empty", "cards.0.suggestions", []),
    ("suggestion without label", "cards.0.suggestions.0.label", DELETE),
    ("suggestion uuid not a uuid", "cards.0.suggestions.0.uuid", "s1"),
    ("isRecommended a string", "cards.0.suggestions.0.isRecommended", "true"),
    ("actions empty", "cards.0.suggestions.0.actions", []),
    ("action type CREATE", "cards.0.suggestions.0.actions.1.type", "CREATE"),
    ("action type Delete", "cards.0.suggestions.0.actions.0.type", "Delete"),
    ("action type 'remove'", "cards.0.suggestions.0.actions.0.type", "remove"),
    ("action without type", "cards.0.suggestions.0.actions.1.type", DELETE),
    ("action without description", "cards.0.suggestions.0.actions.1.description", DELETE),
    ("action description empty", "cards.0.suggestions.0.actions.1.description", ""),
    ("resource as a string", "cards.0.suggestions.0.actions.1.resource", '{"resourceType": "ServiceRequest"}'),
    ("create without resource", "cards.0.suggestions.0.actions.1.resource", DELETE),
    ("update without resource", "cards.0.suggestions.0.actions.2.resource", DELETE),
    ("resource without resourceType", "cards.0.suggestions.0.actions.1.resource.resourceType", DELETE),
    ("resource empty", "cards.0.suggestions.0.actions.1.resource", {}),
    ("resource with an empty element", "cards.0.suggestions.0.actions.1.resource.note", []),
    ("resource with a null element", "cards.0.suggestions.0.actions.1.resource.intent", None),
    ("resource with an empty string", "cards.0.suggestions.0.actions.1.resource.intent", ""),
    ("delete without resourceId", "cards.0.suggestions.0.actions.0.resourceId", DELETE),
    ("delete resourceId a urn", "cards.0.suggestions.0.actions.0.resourceId", "urn:uuid:" + UUID),
    ("delete resourceId a bare id", "cards.0.suggestions.0.actions.0.resourceId", "tri-1"),
    ("delete with a resource", "cards.0.suggestions.0.actions.0.resource", {"resourceType": "MedicationRequest"}),
    ("overrideReasons empty", "cards.0.overrideReasons", []),
    ("overrideReason without display", "cards.0.overrideReasons.0.display", DELETE),
    ("overrideReason without code", "cards.0.overrideReasons.0.code", DELETE),
    ("overrideReason a string", "cards.0.overrideReasons.0", "managed"),
    ("links empty", "cards.0.links", []),
    ("link without type", "cards.0.links.0.type", DELETE),
    ("link type 'relative'", "cards.0.links.0.type", "relative"),
    ("link without url", "cards.0.links.0.url", DELETE),
    ("link url relative", "cards.0.links.0.url", "guideline.html"),
    ("link without label", "cards.0.links.0.label", DELETE),
    ("appContext on an absolute link", "cards.0.links.0.appContext", "x=1"),
    ("appContext empty", "cards.0.links.1.appContext", ""),
    ("autolaunchable a string", "cards.0.links.1.autolaunchable", "no"),
    ("systemAction type CREATE", "systemActions.0.type", "CREATE"),
    ("systemAction resource a string", "systemActions.0.resource", "ServiceRequest/tpi-1"),
    ("extension on a card is empty", "cards.0.extension", {}),
    ("extension a list", "cards.0.source.extension", ["x"]),
]


def test_schemas_are_valid_draft_2020_12_and_ship_as_package_data():
    for name in NAMES:
        schema = load_schema(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)
        assert validator(name) is validator(name)  # cached


def test_a_card_with_every_field_is_valid():
    assert errors("cds-hooks-response", full_response()) == []
    assert_cds_response({"cards": [full_card()]})


def test_no_cards_is_valid():
    assert_cds_response({"cards": []})


@pytest.mark.parametrize("path", ["extension", "cards.0.extension", "cards.0.source.extension", "cards.0.source.topic.extension",
                                  "cards.0.suggestions.0.extension", "cards.0.suggestions.0.actions.0.extension",
                                  "cards.0.overrideReasons.0.extension", "cards.0.links.0.extension",
                                  "systemActions.0.extension"])
def test_extension_is_accepted_on_every_object(path):
    doc = _apply(full_response(), path, {"example.org/trace": {"id": "abc"}})
    assert errors("cds-hooks-response", doc) == []


def test_optional_fields_may_be_omitted():
    card = {"summary": "x", "indicator": "info", "source": {"label": "cds-tpi"}}
    assert errors("cds-hooks-response", {"cards": [card]}) == []
    card = dict(card, suggestions=[{"label": "Do nothing"}], selectionBehavior="any")
    assert errors("cds-hooks-response", {"cards": [card]}) == []


def test_summary_of_139_chars_is_accepted_and_counted_in_characters():
    assert errors("cds-hooks-response", _apply(full_response(), "cards.0.summary", "é" * 139)) == []
    assert errors("cds-hooks-response", _apply(full_response(), "cards.0.summary", "é" * 140))


@pytest.mark.parametrize("what,path,value", BAD_RESPONSES, ids=[b[0] for b in BAD_RESPONSES])
def test_response_schema_rejects(what, path, value):
    bad = _apply(full_response(), path, value)
    assert errors("cds-hooks-response", bad), f"schema accepted: {what}"
    with pytest.raises(AssertionError):
        assert_cds_response(bad)


def test_response_schema_rejects_non_objects():
    for bad in (None, [], "cards", 1, {"cards": [None]}, {"cards": [[]]}):
        assert errors("cds-hooks-response", bad)


# --- discovery ---------------------------------------------------------------------------------

def full_discovery() -> dict:
    return {"services": [{"hook": "order-sign", "title": "TPI", "description": "Checks a TPI order", "id": "tpi-order-sign",
                          "prefetch": {"patient": "Patient/{{context.patientId}}"}, "usageRequirements": "Send prefetch"}]}


BAD_DISCOVERY = [
    ("no services", "services", DELETE),
    ("services null", "services", None),
    ("unknown top-level field", "version", "2.0"),
    ("service without hook", "services.0.hook", DELETE),
    ("service without id", "services.0.id", DELETE),
    ("service without description", "services.0.description", DELETE),
    ("hook empty", "services.0.hook", ""),
    ("id with a slash", "services.0.id", "tpi/order-sign"),
    ("id empty", "services.0.id", ""),
    ("title null", "services.0.title", None),
    ("title empty", "services.0.title", ""),
    ("prefetch empty", "services.0.prefetch", {}),
    ("prefetch a list", "services.0.prefetch", ["Patient/{{context.patientId}}"]),
    ("prefetch query not a string", "services.0.prefetch.patient", {"url": "Patient/1"}),
    ("prefetch query empty", "services.0.prefetch.patient", ""),
    ("usageRequirements empty", "services.0.usageRequirements", ""),
    ("unknown service field", "services.0.enabled", True),
    ("extension empty", "services.0.extension", {}),
]


def test_the_service_discovery_document_is_valid():
    assert_discovery(discovery_document())


def test_discovery_minimal_and_empty_are_valid():
    assert_discovery({"services": []})
    assert_discovery({"services": [{"hook": "patient-view", "description": "d", "id": "pv"}]})
    assert_discovery(_apply(full_discovery(), "services.0.extension", {"example.org/x": 1}))
    assert_discovery(_apply(full_discovery(), "extension", {"example.org/x": 1}))


@pytest.mark.parametrize("what,path,value", BAD_DISCOVERY, ids=[b[0] for b in BAD_DISCOVERY])
def test_discovery_schema_rejects(what, path, value):
    bad = _apply(full_discovery(), path, value)
    assert errors("cds-hooks-discovery", bad), f"schema accepted: {what}"
    with pytest.raises(AssertionError):
        assert_discovery(bad)


def test_discovery_helper_rejects_duplicate_service_ids():
    doc = full_discovery()
    doc["services"].append(dict(doc["services"][0]))
    with pytest.raises(AssertionError):
        assert_discovery(doc)
