"""The four CDS services this plugin offers and the prefetch templates they ask the EHR for."""

from __future__ import annotations

from dataclasses import dataclass

LOINC = "http://loinc.org"
# weight; platelets; INR; HbA1c
OBSERVATION_CODES = ("29463-7", "777-3", "26515-7", "6301-6", "34714-6", "4548-4")


@dataclass(frozen=True)
class PrefetchKey:
    """One prefetch template. Required keys missing and not fetchable give 412; optional ones a
    missing-data card (`label` names the data in it, never the query, which holds the patient id)."""

    key: str
    query: str
    required: bool
    label: str


# 2.0 tokens only ({{context.patientId}}); no date token exists, so the procedure search is
# unfiltered and the engine keeps the last 12 months itself.
PREFETCH: tuple[PrefetchKey, ...] = (
    PrefetchKey("patient", "Patient/{{context.patientId}}", True, "patient demographics"),
    PrefetchKey(
        "medicationRequests",
        "MedicationRequest?patient={{context.patientId}}&status=active",
        True,
        "active medication orders",
    ),
    PrefetchKey(
        "medicationStatements",
        "MedicationStatement?patient={{context.patientId}}&status=active",
        False,
        "active medication statements (home medications)",
    ),
    PrefetchKey("conditions", "Condition?patient={{context.patientId}}", True, "conditions"),
    PrefetchKey("allergies", "AllergyIntolerance?patient={{context.patientId}}", True, "allergies"),
    PrefetchKey(
        "procedures",
        "Procedure?patient={{context.patientId}}&_sort=-date",
        False,
        "procedures of the last 12 months",
    ),
    PrefetchKey(
        "observations",
        "Observation?patient={{context.patientId}}&code="
        + ",".join(f"{LOINC}|{c}" for c in OBSERVATION_CODES)
        + "&_sort=-date",
        False,
        "recent weight, platelets, INR and HbA1c",
    ),
)


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


def discovery_document() -> dict:
    """The `GET /cds-services` response body."""
    prefetch = {p.key: p.query for p in PREFETCH}
    return {
        "services": [
            {
                "hook": s.hook,
                "title": s.title,
                "description": s.description,
                "id": s.id,
                "prefetch": prefetch,
                "usageRequirements": USAGE_REQUIREMENTS,
            }
            for s in SERVICES.values()
        ]
    }


USAGE_REQUIREMENTS = (
    "Prefetch keys "
    + ", ".join(p.key for p in PREFETCH if p.required)
    + " are required: send them or send fhirServer and fhirAuthorization so the service can fetch "
    "them (otherwise 412). Keys "
    + ", ".join(p.key for p in PREFETCH if not p.required)
    + " are optional: when absent and not fetchable, a missing-data card says what was not checked."
)
