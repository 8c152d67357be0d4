"""JSON Schemas (draft 2020-12) for what cds-tpi sends - CDS Hooks 2.0 responses and discovery documents -
and for the CDS Hooks requests it accepts (the service's 400 validation and its OpenAPI document).

CDS Hooks 2.0 has no official schema; these are written from the specification (see
shared/cds-hooks/README.md) and shipped as package data so the tests and the code use the same ones.

    from cds_tpi.schemas import validator, errors
    validator("cds-hooks-response").validate(response)      # raises jsonschema.ValidationError
    errors("cds-hooks-discovery", doc)                        # ["$.services[0].id: ...", ...]
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from jsonschema import Draft202012Validator

NAMES = ("cds-hooks-response", "cds-hooks-discovery", "cds-hooks-request")


def _file(name: str) -> str:
    name = name.removesuffix(".json").removesuffix(".schema")
    if name not in NAMES:
        raise KeyError(f"unknown schema {name!r} (one of {', '.join(NAMES)})")
    return f"{name}.schema.json"


@functools.lru_cache(maxsize=None)
def _load_text(name: str) -> str:
    return resources.files(__package__).joinpath(_file(name)).read_text(encoding="utf-8")


def load_schema(name: str) -> dict:
    """The schema as a dict (a fresh copy: callers may modify it)."""
    return json.loads(_load_text(name))


@functools.lru_cache(maxsize=None)
def validator(name: str) -> Draft202012Validator:
    """A cached validator for the schema (the schema itself is checked once, here)."""
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def errors(name: str, instance) -> list[str]:
    """Every violation as `json-path: message`, in a stable order; [] when the instance is valid."""
    found = sorted(validator(name).iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [f"{e.json_path}: {e.message}" for e in found]
