"""The prefetch keys this service declares in discovery and the record list each one holds: the one
home of that knowledge. Discovery builds its templates from `KEYS` (service/discovery.py); reading a
CDS Hooks request (fhir/read.py) knows from it which list a key that is null or an empty searchset
says was looked up. Nothing is guessed from a key's name: an unknown key is read by its content."""

from __future__ import annotations

from dataclasses import dataclass

# Record lists by the resource types that make them up (the `checked` field of the inventory fact).
CATEGORIES = {
    "MedicationRequest": "medications", "MedicationStatement": "medications", "AllergyIntolerance": "allergies",
    "Condition": "conditions", "Procedure": "procedures", "Observation": "observations", "Patient": "patient",
}


@dataclass(frozen=True)
class KeySpec:
    """A prefetch key of this service: the record list it holds, and how discovery asks for it."""

    key: str
    resource_type: str
    search: str | None  # None = a read of Patient/{{context.patientId}}
    required: bool
    label: str
    sort: str = ""  # appended after the status filter


# 2.0 tokens only ({{context.patientId}}); no date token exists, so the procedure search is
# unfiltered by date and the engine keeps the last 12 months itself. The status filters are not
# written here: they come from rules/records.yaml (see `status_filter`).
KEYS: tuple[KeySpec, ...] = (
    KeySpec("patient", "Patient", None, True, "patient demographics"),
    KeySpec("medicationRequests", "MedicationRequest", "patient={{context.patientId}}", True,
             "current medication orders"),
    KeySpec("medicationStatements", "MedicationStatement", "patient={{context.patientId}}", False,
             "current medication statements (home medications)"),
    KeySpec("conditions", "Condition", "patient={{context.patientId}}", True, "conditions"),
    KeySpec("allergies", "AllergyIntolerance", "patient={{context.patientId}}", True, "allergies"),
    KeySpec("procedures", "Procedure", "patient={{context.patientId}}", False,
             "procedures of the last 12 months", "&_sort=-date"),
    # `&code=` and the codes are added from the rules' observation value sets (observation_codes)
    KeySpec("observations", "Observation", "patient={{context.patientId}}", False,
             "recent weight, platelets, INR and HbA1c", "&_sort=-date"),
)


# prefetch key -> the record list it holds (read for every prefetch key of every request)
_CATEGORY_OF_KEY = {spec.key: CATEGORIES[spec.resource_type] for spec in KEYS}


def category_of_key(key: str) -> str | None:
    """The record list a declared prefetch key holds (medicationRequests -> medications), else None."""
    return _CATEGORY_OF_KEY.get(key)
