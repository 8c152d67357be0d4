"""The CDS Hooks request schema (cds_tpi/schemas/cds-hooks-request.schema.json), one per hook, and
the first problem of a request against it as a 400's message and field.

The same schema is the OpenAPI document's request body (openapi.py) and the validation of
`POST /cds-services/{id}` (hooks.py), so the two cannot drift apart. A schema's `description` is
the message for a value it rejects (the nearest one on the way to the failing keyword, located at
that schema's element); a missing field is "required field is missing" at the field. When a
request has several problems, the one named is the first in the order the schema lists the fields.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache

from jsonschema import Draft202012Validator, ValidationError, validators

from cds_tpi.schemas import load_schema

_SCHEMA = load_schema("cds-hooks-request")
_DEFS = _SCHEMA["$defs"]
NONBLANK_PATTERN = _DEFS["nonblank"]["pattern"]  # a string that is not all whitespace (str.strip() non-empty)
UUID_PATTERN = _SCHEMA["properties"]["hookInstance"]["pattern"]
FHIR_ID_PATTERN = _DEFS["context"]["properties"]["patientId"]["pattern"]
FHIR_SERVER_PATTERN = _SCHEMA["properties"]["fhirServer"]["pattern"]
ACCESS_TOKEN_PATTERN = _DEFS["fhirAuthorization"]["properties"]["access_token"]["pattern"]
_TYPE_NAMES = {"string": "a string", "object": "an object", "array": "an array", "number": "a number",
               "integer": "an integer", "boolean": "a boolean", "null": "null"}


def _inline(node, defs: dict):
    """The schema with every local `$ref` replaced by a copy of its target (no `$defs` left)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].removeprefix("#/$defs/")]
            return _inline({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
        return {k: _inline(v, defs) for k, v in node.items() if k not in ("$defs", "$comment")}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


@lru_cache(maxsize=None)
def _request_schema(hook: str) -> dict:
    defs = _SCHEMA["$defs"]
    if hook not in defs["hookContext"]:
        raise KeyError(f"no request schema for hook {hook!r}")
    schema = _inline(_SCHEMA, defs)
    extra = _inline(defs["hookContext"][hook], defs)
    context = schema["properties"]["context"]
    context["required"] = context["required"] + extra["required"]
    context["properties"] = {**context["properties"], **extra["properties"]}
    schema["properties"]["hook"] = {**schema["properties"]["hook"], "const": hook}
    del schema["$schema"], schema["$id"]
    return schema


def request_schema(hook: str) -> dict:
    """The request body schema of a hook, self-contained (a fresh copy: callers may change it)."""
    return copy.deepcopy(_request_schema(hook))


@lru_cache(maxsize=None)
def _ecma(pattern: str) -> re.Pattern:
    """A pattern as ECMA 262 reads it (JSON Schema's dialect): a final `$` is the end of the string
    (Python's also matches before a final newline: "<uuid>\\n" would pass), `\\d` is ASCII."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern, re.ASCII)


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _ecma(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = validators.extend(Draft202012Validator, {"pattern": _pattern})


@lru_cache(maxsize=None)
def _validator(hook: str) -> tuple[Draft202012Validator, dict]:
    schema = _request_schema(hook)
    Draft202012Validator.check_schema(schema)
    return _Validator(schema), _field_order(schema)


def _field_order(schema: dict) -> dict[tuple, int]:
    """Each field path the schema names -> its rank in the order the schema lists them."""
    order: dict[tuple, int] = {}

    def walk(node: dict, path: tuple) -> None:
        for name, sub in (node.get("properties") or {}).items():
            order.setdefault(path + (name,), len(order))
            if isinstance(sub, dict):
                walk(sub, path + (name,))
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], path + ("*",))
        for key in ("then",):
            if isinstance(node.get(key), dict):
                walk(node[key], path)

    walk(schema, ())
    return order


def _located(error: ValidationError, schema: dict) -> tuple[tuple, str]:
    """(instance path, message) of one error, by the rules in the module docstring."""
    instance_path = tuple(error.absolute_path)
    if error.validator == "required":
        missing = next((name for name in error.validator_value if name not in error.instance), None)
        return instance_path + (missing,), "required field is missing"
    # Walk the schema path to the failing keyword, noting the last schema with a description and
    # how many instance steps had been taken there.
    node, depth, found = schema, 0, None
    if isinstance(node, dict) and "description" in node:
        found = (0, node["description"])
    keys = list(error.absolute_schema_path)
    i = 0
    while i < len(keys) - 1:
        key = keys[i]
        if key in ("properties", "patternProperties") and i + 1 < len(keys):
            node, depth, i = node[key][keys[i + 1]], depth + 1, i + 2
        elif key in ("items", "additionalProperties"):
            node, depth, i = node[key], depth + 1, i + 1
        elif key in ("then", "else", "if", "not"):
            node, i = node[key], i + 1
        elif key in ("allOf", "anyOf", "oneOf", "prefixItems") and i + 1 < len(keys):
            node, i = node[key][keys[i + 1]], i + 2
            depth += 1 if key == "prefixItems" else 0
        else:
            break
        if isinstance(node, dict) and "description" in node:
            found = (depth, node["description"])
    if found is not None:
        return instance_path[:found[0]], found[1]
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return instance_path, "must be " + " or ".join(_TYPE_NAMES.get(t, t) for t in expected)
    return instance_path, error.message


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def first_problem(hook: str, request) -> tuple[str, str] | None:
    """(field, message) of the request's first problem against the hook's schema, or None if valid."""
    validator, order = _validator(hook)
    problems = [_located(e, validator.schema) for e in validator.iter_errors(request)]
    if not problems:
        return None

    def rank(item) -> list:
        key, generic = [], ()
        for part in item[0]:
            if isinstance(part, int):
                key.append(part)
                generic += ("*",)
                continue
            generic = generic + (part,) if generic + (part,) in order else generic + ("*",)
            key.append(order.get(generic, len(order)))
        return key

    path, message = min(problems, key=rank)
    return _dotted(path), message
