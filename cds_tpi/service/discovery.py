"""The four CDS services this plugin offers and the prefetch templates they ask the EHR for."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from cds_tpi.fhir.prefetch_keys import CATEGORIES, KEYS as _KEYS

if TYPE_CHECKING:
    from cds_tpi.ruleset.records import RecordPolicy

LOINC = "http://loinc.org"


@dataclass(frozen=True)
class PrefetchKey:
    """One prefetch template. Required keys missing and not fetchable give 412; optional ones a
    missing-data card (`label` names the data in it, never the query, which holds the patient id).
    `resource_type` is what the key holds (a read of it, or a search for it) and `records` the record
    list it is (medications, conditions, allergies, procedures, observations, patient): declared
    here, never guessed from the key's name."""

    key: str
    query: str
    required: bool
    label: str
    resource_type: str = ""
    records: str = ""


def _listed_valuesets(conditions, terminology, fields=None) -> set[str]:
    """The value set ids that value-set conditions on `fields` (default: every value-set field)
    name (inside `or` too)."""
    from cds_tpi.ruleset.conditions import Or, _Listed  # noqa: PLC0415
    from cds_tpi.ruleset.facttypes import VALUESET_FIELDS  # noqa: PLC0415

    out: set[str] = set()
    for c in conditions:
        if isinstance(c, Or):
            for alt in c.alternatives:
                out |= _listed_valuesets(alt, terminology, fields)
        elif isinstance(c, _Listed) and c.field in (VALUESET_FIELDS if fields is None else fields):
            out.update(v for v in c.ids(terminology, strict=False) if v)
    return out


def observation_codes(book: Any) -> tuple[str, ...]:
    """The LOINC codes of every value set an observation pattern of the rules reads, and of the
    weight value set of the dose policy (rules/records.yaml): the observations search fetches
    exactly what the rules can use, so a code added to a value set is fetched too. Only the fields
    that say what an observation is (vs, latest_in) are read: value_vs names answer codes
    (LA6576-8 'Positive'), which are no observation's code."""
    vids: set[str] = set()
    for rule in book.rules:
        for alt in rule.alternatives:
            for p in alt.patterns:
                if p.fact == "observation":
                    vids |= _listed_valuesets(p.conditions, book.terminology, {"vs", "latest_in"})
    limits = getattr(book.records, "anesthetic_limits", None)
    if limits is not None:
        vids.add(limits.weight_valueset)
    return tuple(sorted({code for vid in vids for system, code in book.terminology.codes_of(vid) if system == LOINC}))


def status_filter(policy: RecordPolicy | None, resource_type: str) -> str:
    """The search parameters that fetch exactly the records `rules/records.yaml` may count as
    current for this type, e.g. `&status=active,on-hold,unknown` (FHIR: a comma is OR). A status
    the policy counts must never be filtered out (an on-hold warfarin order is still
    anticoagulation), so: `status` when the policy lists statuses; `clinical-status` only when a
    record without one does not count (a search on it would drop those); otherwise no filter."""
    if policy is None:
        return ""
    rp = policy.for_type(resource_type)
    params = ""
    if rp.status is not None:
        params += "&status=" + ",".join(sorted(rp.status))
    if rp.clinical_status is not None and not rp.missing_clinical_status_counts:
        params += "&clinical-status=" + ",".join(sorted(rp.clinical_status))
    return params


def prefetch_keys(policy: RecordPolicy | None, observation_codes: tuple[str, ...] = ()) -> tuple[PrefetchKey, ...]:
    """The prefetch templates for a record policy (the loaded rules/records.yaml) and the LOINC codes
    of the observations the rules read (see `observation_codes`)."""
    keys = []
    for spec in _KEYS:
        if spec.search is None:
            query = f"{spec.resource_type}/{{{{context.patientId}}}}"
        else:
            search = spec.search
            if spec.resource_type == "Observation" and observation_codes:  # none given: every observation
                search += "&code=" + ",".join(f"{LOINC}|{c}" for c in observation_codes)
            query = f"{spec.resource_type}?{search}{status_filter(policy, spec.resource_type)}{spec.sort}"
        keys.append(PrefetchKey(spec.key, query, spec.required, spec.label, spec.resource_type,
                                CATEGORIES[spec.resource_type]))
    return tuple(keys)


@lru_cache(maxsize=1)
def default_prefetch_keys() -> tuple[PrefetchKey, ...]:
    """The templates for the bundled rules (used when the evaluator does not carry its own policy)."""
    from cds_tpi.ruleset import load_rulebook  # noqa: PLC0415 - loads the value sets once

    book = load_rulebook()
    return prefetch_keys(book.records, observation_codes(book))


def prefetch_keys_for(evaluator: Any) -> tuple[PrefetchKey, ...]:
    """The templates for the rules and record policy this evaluator applies (`evaluator.book`)."""
    book = getattr(evaluator, "book", None)
    if getattr(book, "records", None) is None:
        return default_prefetch_keys()
    return prefetch_keys(book.records, observation_codes(book))


def checked_records(keys: tuple[PrefetchKey, ...], prefetch: dict[str, Any]) -> tuple[str, ...]:
    """The record lists known to have been looked up: our keys whose value is null (no data) or a
    Bundle (a searchset, even an empty one). Taken from each key's declared `records`."""
    return tuple(sorted({k.records for k in keys if k.key in prefetch and (
        prefetch[k.key] is None or (isinstance(prefetch[k.key], dict)
                                    and prefetch[k.key].get("resourceType") == "Bundle"))}))


def record_sources(keys: tuple[PrefetchKey, ...], sent: dict[str, Any], fetched: Any) -> dict[str, list[str]]:
    """For the call's log: which of our keys the EHR sent in `prefetch`, which were fetched from its
    FHIR server (wholly or further pages), and which are missing (neither). Key names only."""
    fetched = set(fetched)
    out: dict[str, list[str]] = {"prefetch": [], "fhir": [], "missing": []}
    for k in keys:
        out["fhir" if k.key in fetched else "prefetch" if k.key in sent else "missing"].append(k.key)
    return out


def __getattr__(name: str) -> Any:
    # `PREFETCH` (the bundled rules' templates) is computed on first use: it loads the rules.
    if name == "PREFETCH":
        return default_prefetch_keys()
    raise AttributeError(name)


@dataclass(frozen=True)
class Service:
    """A CDS service: its id (the URL segment), the hook it answers and its discovery text."""

    id: str
    hook: str
    title: str
    description: str


SERVICES: dict[str, Service] = {
    s.id: s
    for s in (
        Service(
            "tpi-order-select",
            "order-select",
            "Trigger point injection: early check",
            "When a trigger point injection order is selected, checks it against the patient's "
            "medications, allergies, conditions, recent procedures and labs.",
        ),
        Service(
            "tpi-order-sign",
            "order-sign",
            "Trigger point injection: check before signing",
            "Before a trigger point injection order is signed, checks the full order (injectate, "
            "dose, muscles) against the patient's data.",
        ),
        Service(
            "tpi-appointment-book",
            "appointment-book",
            "Trigger point injection: check when booking",
            "When an appointment for a trigger point injection is booked, warns of what needs "
            "preparing (e.g. anticoagulation management).",
        ),
        Service(
            "tpi-patient-view",
            "patient-view",
            "Trigger point injection: standing contraindications",
            "When the chart opens, shows standing contraindications and cautions for trigger "
            "point injections in general.",
        ),
    )
}


def discovery_document(keys: tuple[PrefetchKey, ...] | None = None) -> dict:
    """The `GET /cds-services` response body (`keys`: default, the bundled rules' templates)."""
    keys = default_prefetch_keys() if keys is None else keys
    prefetch = {p.key: p.query for p in keys}
    return {
        "services": [
            {
                "hook": s.hook,
                "title": s.title,
                "description": s.description,
                "id": s.id,
                "prefetch": prefetch,
                "usageRequirements": usage_requirements(keys),
            }
            for s in SERVICES.values()
        ]
    }


def usage_requirements(keys: tuple[PrefetchKey, ...]) -> str:
    """Discovery's `usageRequirements` text: which keys are required, which optional."""
    return (
        "Prefetch keys " + ", ".join(p.key for p in keys if p.required)
        + " are required: send them or send fhirServer and fhirAuthorization so the service can fetch "
        "them (otherwise 412). Keys " + ", ".join(p.key for p in keys if not p.required)
        + " are optional: when absent and not fetchable, a missing-data card says what was not checked."
    )
