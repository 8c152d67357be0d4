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
        "injectable_valuesets": {"type": "array", "items": {"type": "string"}},
        "non_injection_valuesets": {"type": "array", "items": {"type": "string"}},
        "allergy_condition_valuesets": {"type": "array", "items": {"type": "string"}},
        "region_valuesets": {"type": "array", "items": {"type": "string"}},
        "text_negation_cues": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "result_flags": {"type": "array", "items": {"type": "string", "minLength": 1}},
        # labs sent with a local code only: also recognised by their words, for these value sets
        "observation_text_match": {
            "type": "object", "additionalProperties": False, "required": ["valuesets"],
            "properties": {"valuesets": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                           "unless_coded_in": {"type": "array", "items": {"type": "string", "minLength": 1}}},
        },
        # a dose written per injection site: the words that say so, and the words a count of sites is written with
        "per_site_dose": {
            "type": "object", "additionalProperties": False, "required": ["per_site_words", "count_words"],
            "properties": {"per_site_words": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
                           "count_words": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}},
        },
        "dose_units": {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0}},
        "volume_units": {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0}},
        # coded units of systems other than UCUM: system -> code -> the UCUM unit it names
        "unit_codes": {"type": "object", "additionalProperties": {
            "type": "object", "additionalProperties": {"type": "string", "minLength": 1}}},
        # conditions that count only for a while when recorded as an encounter diagnosis (not on the problem
        # list) or with no clinicalStatus: value sets -> days from the condition's latest date
        "condition_windows": {
            "type": "array", "minItems": 1,
            "items": {"type": "object", "additionalProperties": False, "required": ["valuesets", "window_days"],
                      "properties": {"valuesets": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                     "window_days": {"type": "integer", "minimum": 0}}},
        },
        "anesthetic_limits": {
            "type": "object", "additionalProperties": False,
            "required": ["weight_valueset", "weight_max_age_days", "anesthetic_valuesets", "vasoconstrictor_valueset", "agents"],
            "properties": {
                "weight_valueset": {"type": "string"},
                "weight_max_age_days": {"type": "integer", "minimum": 0},
                "adult_min_age_years": {"type": "integer", "minimum": 0},
                "anesthetic_valuesets": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "vasoconstrictor_valueset": {"type": "string"},
                "agents": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["valueset", "mg_per_kg", "max_mg"],
                    "properties": {
                        "valueset": {"type": "string"},
                        "mg_per_kg": {"type": "number", "exclusiveMinimum": 0},
                        "max_mg": {"type": "number", "exclusiveMinimum": 0},
                        "with_vasoconstrictor": {
                            "type": "object", "additionalProperties": False, "required": ["mg_per_kg", "max_mg"],
                            "properties": {"mg_per_kg": {"type": "number", "exclusiveMinimum": 0},
                                           "max_mg": {"type": "number", "exclusiveMinimum": 0}}},
                    }}},
            },
        },
        "observation_units": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "additionalProperties": False, "required": ["unit", "factor"],
                "properties": {"unit": {"type": "string"}, "factor": {"type": "number", "exclusiveMinimum": 0}},
            },
        },
        "observation_values": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "additionalProperties": False, "required": ["unit"],
                "properties": {
                    "unit": {"type": "string"},
                    "unitless_max": {"type": "number", "exclusiveMinimum": 0},
                    # units only this value set's results are also sent in, as value x factor + offset in `unit`
                    # (HbA1c mmol/mol -> %: not a pure factor, and not true of other analytes in mmol/mol)
                    "units": {
                        "type": "object",
                        "propertyNames": {"minLength": 1},
                        "additionalProperties": {
                            "type": "object", "additionalProperties": False, "required": ["factor"],
                            "properties": {"factor": {"type": "number", "exclusiveMinimum": 0},
                                           "offset": {"type": "number"}},
                        },
                    },
                },
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
                    "exclude_intent": _STATUS_LIST,
                    "reported_counts": {"type": "boolean"},
                    # an excluded intent still counts for a request of one of these categories (home medication)
                    "reported_categories": _STATUS_LIST,
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
    exclude_intent: frozenset[str] = frozenset()
    reported_counts: bool = False   # an excluded intent still counts when the record is reported (reportedBoolean/Reference)
    reported_categories: frozenset[str] = frozenset()   # ... or when its category is one of these (community: a home medication)


@dataclass(frozen=True)
class AgentLimit:
    """Maximum dose of one local anesthetic (plain, and with a vasoconstrictor when given)."""

    valueset: str
    mg_per_kg: float
    max_mg: float
    with_vasoconstrictor: tuple[float, float] | None = None   # (mg_per_kg, max_mg)


@dataclass(frozen=True)
class AnestheticLimits:
    weight_valueset: str
    weight_max_age_days: int
    anesthetic_valuesets: tuple[str, ...]
    vasoconstrictor_valueset: str
    agents: tuple[AgentLimit, ...]
    # below this age (years) the maximum needs a weight: the adult cap alone is no check (dose facts: child)
    adult_min_age_years: int | None = None


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
    volume_units: dict = field(default_factory=dict)
    injectable_valuesets: tuple[str, ...] = ()
    non_injection_valuesets: tuple[str, ...] = ()   # a route / form / word that says a draft is not injected
    allergy_condition_valuesets: tuple[str, ...] = ()  # a Condition in one of these is also read as an allergy
    # (value sets, window_days): a Condition in one of the value sets that is not on the problem list, or has no
    # clinicalStatus, counts only while its latest date is within window_days (records.yaml condition_windows)
    condition_windows: tuple[tuple[frozenset[str], int], ...] = ()
    anesthetic_limits: AnestheticLimits | None = None
    observation_values: dict = field(default_factory=dict)   # value set id -> {unit, unitless_max?, units?: {unit: {factor, offset?}}}
    unit_codes: dict = field(default_factory=dict)           # system -> code -> UCUM unit (SNOMED CT 258773002 -> mL)
    result_flags: frozenset[str] = frozenset()              # abnormal flags beside a text result, lower case ("h", "(h)" is read as "h")
    observation_text_valuesets: frozenset[str] = frozenset()  # labs also recognised by their words (observation_text_match)
    observation_text_unless: frozenset[str] = frozenset()     # ... unless coded in one of these systems (LOINC)
    per_site_words: tuple[str, ...] = ()   # dosage words saying the dose is per injection site ("per site", "each")
    site_count_words: tuple[str, ...] = () # words a number of sites is written with ("6 sites", "4 TPs")


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
    named = [([key, i], name) for key in ("tpi_order_valuesets", "injectate_valuesets", "region_valuesets", "injectable_valuesets", "non_injection_valuesets",
                                          "allergy_condition_valuesets")
             for i, name in enumerate(doc.get(key, ()))]
    windowed: dict[str, int] = {}
    for i, win in enumerate(doc.get("condition_windows", ())):
        for j, n in enumerate(win["valuesets"]):
            named.append((["condition_windows", i, "valuesets", j], n))
            if n in windowed:
                # one window per value set: a condition's window must not depend on the order of this list
                errors.append(f"{path}:{line_of(doc, ['condition_windows', i, 'valuesets', j])}: condition_windows: "
                              f"value set '{n}' already has a window (condition_windows[{windowed[n]}])")
                bad = True
            windowed.setdefault(n, i)
    if "observation_text_match" in doc:
        named += [(["observation_text_match", "valuesets", i], n) for i, n in enumerate(doc["observation_text_match"]["valuesets"])]
    if "anesthetic_limits" in doc:
        lim = doc["anesthetic_limits"]
        named += [(["anesthetic_limits", k], lim[k]) for k in ("weight_valueset", "vasoconstrictor_valueset")]
        named += [(["anesthetic_limits", "anesthetic_valuesets", i], n) for i, n in enumerate(lim["anesthetic_valuesets"])]
        named += [(["anesthetic_limits", "agents", i, "valueset"], a["valueset"]) for i, a in enumerate(lim["agents"])]
    named += [(["observation_values", n], n) for n in doc.get("observation_values", {})]
    # a value set's own conversions (value x factor + offset) are for units other than the one it compares in
    for n, spec in doc.get("observation_values", {}).items():
        for unit in spec.get("units", {}):
            if unit.replace(" ", "").lower() == spec["unit"].replace(" ", "").lower():
                errors.append(f"{path}:{line_of(doc, ['observation_values', n, 'units', unit])}: observation_values/{n}/units: "
                              f"'{unit}' is the unit the results are compared in ('{spec['unit']}'), not one to convert from")
                bad = True
    for where, name in named:
        if terminology is None or terminology.resolve(name) is None:
            errors.append(f"{path}:{line_of(doc, where)}: unknown value set '{name}'")
            bad = True
    # a coded unit must name a unit some table converts (dose, volume or observation units)
    known_units = (set(doc["dose_units"]) | set(doc.get("volume_units", {})) | set(doc["observation_units"])
                   | {c["unit"] for c in doc["observation_units"].values()})
    for system, codes in doc.get("unit_codes", {}).items():
        for code, unit in codes.items():
            if unit not in known_units:
                errors.append(f"{path}:{line_of(doc, ['unit_codes', system, code])}: unit_codes/{system}/{code}: "
                              f"'{unit}' is in no dose_units, volume_units or observation_units table")
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
            exclude_intent=frozenset(p.get("exclude_intent", ())),
            reported_counts=p.get("reported_counts", False),
            reported_categories=frozenset(p.get("reported_categories", ())),
        )
    limits = None
    if "anesthetic_limits" in plain:
        lim = plain["anesthetic_limits"]
        limits = AnestheticLimits(
            weight_valueset=resolve(lim["weight_valueset"]),
            weight_max_age_days=lim["weight_max_age_days"],
            anesthetic_valuesets=tuple(resolve(n) for n in lim["anesthetic_valuesets"]),
            vasoconstrictor_valueset=resolve(lim["vasoconstrictor_valueset"]),
            agents=tuple(AgentLimit(resolve(a["valueset"]), float(a["mg_per_kg"]), float(a["max_mg"]),
                                    (float(a["with_vasoconstrictor"]["mg_per_kg"]), float(a["with_vasoconstrictor"]["max_mg"]))
                                    if "with_vasoconstrictor" in a else None) for a in lim["agents"]),
            adult_min_age_years=lim.get("adult_min_age_years"),
        )
    return RecordPolicy(
        tpi_order_valuesets=tuple(resolve(n) for n in plain["tpi_order_valuesets"]),
        injectate_valuesets=tuple(resolve(n) for n in plain["injectate_valuesets"]),
        region_valuesets=tuple(resolve(n) for n in plain["region_valuesets"]),
        dose_units=plain["dose_units"],
        observation_units=plain["observation_units"],
        resources=resources,
        text_negation_cues=tuple(plain.get("text_negation_cues", ())),
        volume_units=plain.get("volume_units", {}),
        injectable_valuesets=tuple(resolve(n) for n in plain.get("injectable_valuesets", ())),
        non_injection_valuesets=tuple(resolve(n) for n in plain.get("non_injection_valuesets", ())),
        allergy_condition_valuesets=tuple(resolve(n) for n in plain.get("allergy_condition_valuesets", ())),
        condition_windows=tuple((frozenset(resolve(n) for n in w["valuesets"]), int(w["window_days"]))
                                for w in plain.get("condition_windows", ())),
        anesthetic_limits=limits,
        observation_values={resolve(n): v for n, v in plain.get("observation_values", {}).items()},
        unit_codes=plain.get("unit_codes", {}),
        result_flags=frozenset(f.lower() for f in plain.get("result_flags", ())),
        observation_text_valuesets=frozenset(resolve(n) for n in plain.get("observation_text_match", {}).get("valuesets", ())),
        observation_text_unless=frozenset(plain.get("observation_text_match", {}).get("unless_coded_in", ())),
        per_site_words=tuple(plain.get("per_site_dose", {}).get("per_site_words", ())),
        site_count_words=tuple(plain.get("per_site_dose", {}).get("count_words", ())),
    )
