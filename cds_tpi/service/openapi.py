"""The OpenAPI 3.1 document of the service. The request bodies of the hooks are the request schema
that hooks.py validates with (cds_tpi/schemas/cds-hooks-request.schema.json); the feedback schema is
written to match feedback.py exactly (a fuzzer runs against the document, so every constraint the
validators enforce is stated here)."""

from __future__ import annotations

from functools import lru_cache

from cds_tpi import __version__
from cds_tpi.service.discovery import SERVICES
from cds_tpi.service.feedback import MAX_ITEMS, OUTCOMES
from cds_tpi.service.request_schema import NONBLANK_PATTERN
from cds_tpi.service.request_schema import request_schema

_NONBLANK = {"type": "string", "pattern": NONBLANK_PATTERN}
_JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_ERRORS = {
    "400": "Malformed JSON or a missing / wrong field (named in the OperationOutcome); for feedback, also an "
           "override reason the card did not offer",
    "401": "JWT missing or rejected (one text for every reason; the service log has the reason)",
    "404": "Unknown service; for feedback, also a card this service never issued",
    "408": "The body was not received within body_read_timeout",
    "413": "Body over the configured limit",
    "415": "Content-Type is not JSON (application/json or application/*+json)",
    "503": "A dependency (database, issuer keys) is unavailable",
}


def _responses(codes: list[str], ok: dict) -> dict:
    out = {"200": ok}
    for code in codes:
        description = _ERRORS.get(code) or {
            "412": "Required prefetch data was neither sent nor fetchable from fhirServer",
            "500": "Internal error",
        }[code]
        out[code] = {"description": description, "content": {_JSON: {"schema": _ref("OperationOutcome")}}}
    return out


@lru_cache(maxsize=2)
def openapi_document(auth_enabled: bool = True) -> dict:
    """The document (cached: treat it as read-only). `auth_enabled=False` describes a service run
    without JWT issuers: no operation requires the bearer scheme (and none answers 401)."""
    security = [{"cdsHooksJwt": []}] if auth_enabled else []

    def codes(*listed: str) -> list[str]:
        return [c for c in listed if auth_enabled or c != "401"]

    paths: dict = {
        "/health": {"get": {"operationId": "health", "summary": "Liveness", "security": [],
                            "responses": {"200": {"description": "Up", "content": {_JSON: {"schema": {"type": "object"}}}},
                                          "503": {"description": "An evaluation overran its deadline: replace this worker",
                                                  "content": {_JSON: {"schema": {"type": "object"}}}}}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "content": {_JSON: {"schema": {"type": "object"}}}}}}},
        "/cds-services": {"get": {
            "operationId": "discovery", "summary": "CDS Hooks discovery", "security": security,
            "responses": _responses(codes("401", "503"), {"description": "The services",
                                                     "content": {_JSON: {"schema": _ref("Discovery")}}}),
        }},
    }
    for service in SERVICES.values():
        op = service.id.replace("-", "_")
        paths[f"/cds-services/{service.id}"] = {"post": {
            "operationId": op, "summary": service.title, "description": service.description, "security": security,
            "requestBody": {"required": True, "content": {_JSON: {"schema": request_schema(service.hook)}}},
            "responses": _responses(codes("400", "401", "408", "412", "413", "415", "500", "503"),
                                    {"description": "Cards", "content": {_JSON: {"schema": _ref("CdsResponse")}}}),
        }}
        paths[f"/cds-services/{service.id}/feedback"] = {"post": {
            "operationId": f"{op}_feedback", "summary": f"Feedback on {service.id} cards", "security": security,
            "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("Feedback")}}},
            "responses": _responses(codes("400", "401", "404", "408", "413", "415", "503"),
                                    {"description": "Stored (idempotent)",
                                     "content": {_JSON: {"schema": _ref("FeedbackReceipt")}}}),
        }}
    coding = {"type": "object", "required": ["system", "code"],
              "properties": {"system": {**_NONBLANK, "maxLength": 256}, "code": {**_NONBLANK, "maxLength": 128},
                             "display": {"type": ["string", "null"], "pattern": NONBLANK_PATTERN, "maxLength": 512}}}
    schemas = {
        "Discovery": {"type": "object", "required": ["services"], "properties": {"services": {"type": "array", "items": {
            "type": "object", "required": ["hook", "description", "id"],
            "properties": {"hook": {"type": "string"}, "title": {"type": "string"}, "description": {"type": "string"},
                           "id": {"type": "string"}, "prefetch": {"type": "object", "additionalProperties": {"type": "string"}},
                           "usageRequirements": {"type": "string"}}}}}},
        "CdsResponse": {"type": "object", "required": ["cards"], "properties": {
            "cards": {"type": "array", "items": _ref("Card")}, "systemActions": {"type": "array", "items": {"type": "object"}}}},
        "Card": {"type": "object", "required": ["uuid", "summary", "indicator", "source"], "properties": {
            "uuid": {"type": "string"}, "summary": {"type": "string", "maxLength": 140}, "detail": {"type": "string"},
            "indicator": {"enum": ["info", "warning", "critical"]},
            "source": {"type": "object", "required": ["label"], "properties": {
                "label": {"type": "string"}, "url": {"type": "string"}, "icon": {"type": "string"},
                "topic": {"type": "object", "required": ["code"], "properties": {"system": {"type": "string"}, "code": {"type": "string"}}}}},
            "suggestions": {"type": "array", "items": {"type": "object", "required": ["label"]}},
            "selectionBehavior": {"enum": ["at-most-one", "any"]},
            "overrideReasons": {"type": "array", "items": {"type": "object", "required": ["code"]}},
            "links": {"type": "array", "items": {"type": "object", "required": ["label", "url", "type"]}}}},
        "Feedback": {"type": "object", "required": ["feedback"], "properties": {"feedback": {
            "type": "array", "minItems": 1, "maxItems": MAX_ITEMS, "items": {
                "type": "object", "required": ["card", "outcome", "outcomeTimestamp"], "properties": {
                    "card": {**_NONBLANK, "maxLength": 64},
                    "outcome": {"enum": list(OUTCOMES)},
                    "outcomeTimestamp": {"type": "string", "format": "date-time"},
                    "acceptedSuggestions": {"type": ["array", "null"], "items": {
                        "type": "object", "required": ["id"], "properties": {"id": {**_NONBLANK, "maxLength": 64}}}},
                    "overrideReason": {"type": ["object", "null"], "properties": {
                        "reason": {"oneOf": [{"type": "null"}, coding]},
                        "userComment": {"type": ["string", "null"], "pattern": NONBLANK_PATTERN, "maxLength": 4000}}}}}}}},
        "FeedbackReceipt": {"type": "object", "required": ["received", "stored", "duplicates"], "properties": {
            "received": {"type": "integer"}, "stored": {"type": "integer"}, "duplicates": {"type": "integer"}}},
        "OperationOutcome": {"type": "object", "required": ["resourceType", "issue"], "properties": {
            "resourceType": {"const": "OperationOutcome"},
            "issue": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["severity", "code"], "properties": {
                "severity": {"type": "string"}, "code": {"type": "string"}, "diagnostics": {"type": "string"},
                "expression": {"type": "array", "items": {"type": "string"}}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "cds-tpi CDS Hooks 2.0 service", "version": __version__,
                 "description": "Checks a planned trigger point injection against FHIR data; answers with CDS Hooks cards."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"cdsHooksJwt": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "CDS Hooks 2.0 JWT (ES384/RS384/ES256/RS256); required when issuers are configured"}}},
    }

