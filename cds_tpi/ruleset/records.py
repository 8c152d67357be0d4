"""Record policy (rules/records.yaml): which records count as current, what a TPI order is, units."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from .yamlfile import line_of, load_yaml, to_plain

_STATUS_LIST = {"type": "array", "items": {"type": "string"}, "minItems": 1}
_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["tpi_order_valuesets", "injectate_valuesets", "region_valuesets", "dose_units", "observation_units", "resources"],
    "properties": {
        "tpi_order_valuesets": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "injectate_valuesets": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "region_valuesets": {"type": "array", "items": {"type": "string"}},
        "text_negation_cues": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "dose_units": {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0}},
        "observation_units": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "additionalProperties": False, "required": ["unit", "factor"],
                "properties": {"unit": {"type": "string"}, "factor": {"type": "number", "exclusiveMinimum": 0}},
            },
        },
        "resources": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "status": _STATUS_LIST,
                    "clinical_status": _STATUS_LIST,
                    "missing_clinical_status_counts": {"type": "boolean"},
                    "exclude_verification": _STATUS_LIST,
                    "exclude_abated": {"type": "boolean"},
                    "exclude_ended_period": {"type": "boolean"},
                },
            },
        },
    },
}


@dataclass(frozen=True)
class ResourcePolicy:
    status: frozenset[str] | None = None
    clinical_status: frozenset[str] | None = None
    missing_clinical_status_counts: bool = True
    exclude_verification: frozenset[str] = frozenset()
    exclude_abated: bool = False
    exclude_ended_period: bool = False


_ANY = ResourcePolicy()


@dataclass(frozen=True)
class RecordPolicy:
    tpi_order_valuesets: tuple[str, ...]
    injectate_valuesets: tuple[str, ...]
    region_valuesets: tuple[str, ...]
    dose_units: dict
    observation_units: dict
    resources: dict = field(default_factory=dict)
    text_negation_cues: tuple[str, ...] = ()

    def for_type(self, resource_type: str) -> ResourcePolicy:
        return self.resources.get(resource_type, _ANY)


def load_record_policy(path: Path, terminology, errors: list[str]) -> RecordPolicy | None:
    """Load and check records.yaml; errors go to `errors` with file:line."""
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as e:
        errors.append(f"{path}:1: cannot read record policy: {e.strerror or e}")
        return None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        errors.append(f"{path}:{mark.line + 1 if mark else 1}: YAML error: {getattr(e, 'problem', e)}")
        return None
    bad = False
    for err in jsonschema.Draft202012Validator(_SCHEMA).iter_errors(doc):
        errors.append(f"{path}:{line_of(doc, list(err.absolute_path))}: {'/'.join(map(str, err.absolute_path)) or '(top)'}: {err.message}")
        bad = True
    if bad:
        return None
    for key in ("tpi_order_valuesets", "injectate_valuesets", "region_valuesets"):
        for i, name in enumerate(doc[key]):
            if terminology is None or terminology.resolve(name) is None:
                errors.append(f"{path}:{line_of(doc, [key, i])}: unknown value set '{name}'")
                bad = True
    if bad:
        return None
    plain = to_plain(doc)
    resolve = terminology.resolve
    resources = {}
    for rt, p in plain["resources"].items():
        resources[rt] = ResourcePolicy(
            status=frozenset(p["status"]) if "status" in p else None,
            clinical_status=frozenset(p["clinical_status"]) if "clinical_status" in p else None,
            missing_clinical_status_counts=p.get("missing_clinical_status_counts", True),
            exclude_verification=frozenset(p.get("exclude_verification", ())),
            exclude_abated=p.get("exclude_abated", False),
            exclude_ended_period=p.get("exclude_ended_period", False),
        )
    return RecordPolicy(
        tpi_order_valuesets=tuple(resolve(n) for n in plain["tpi_order_valuesets"]),
        injectate_valuesets=tuple(resolve(n) for n in plain["injectate_valuesets"]),
        region_valuesets=tuple(resolve(n) for n in plain["region_valuesets"]),
        dose_units=plain["dose_units"],
        observation_units=plain["observation_units"],
        resources=resources,
        text_negation_cues=tuple(plain.get("text_negation_cues", ())),
    )
