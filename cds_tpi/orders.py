"""Synthesize a draft TPI order (ServiceRequest + injectate MedicationRequests) from CLI options."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InputError

CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
_DOSE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")


@dataclass(frozen=True)
class Injectate:
    name: str
    value: float | None = None
    unit: str | None = None


def parse_injectates(spec: str) -> list[Injectate]:
    """'lidocaine:50mg,triamcinolone:40mg' -> Injectates; raises InputError naming the bad part."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, dose = part.rpartition(":")
        if not sep:
            out.append(Injectate(part))
            continue
        m = _DOSE.match(dose)
        if not name.strip() or not m:
            raise InputError(f"--injectate: cannot read '{part}' (expected NAME or NAME:DOSEUNIT, e.g. lidocaine:50mg)")
        out.append(Injectate(name.strip(), float(m.group(1)), m.group(2)))
    if not out:
        raise InputError("--injectate: no medication given")
    return out


def synthesize(injectates: list[Injectate], sites: list[str], patient_ref: str | None, terminology) -> list[dict]:
    """Draft ServiceRequest (CPT 20552, or 20553 for 3+ sites) and one draft MedicationRequest per injectate."""
    order_id = "cli-tpi-order"
    subject = {"reference": patient_ref} if patient_ref else {"display": "patient of this input"}
    code = "20553" if len(sites) >= 3 else "20552"
    sr = {
        "resourceType": "ServiceRequest", "id": order_id, "status": "draft", "intent": "order",
        "code": {"coding": [{"system": CPT, "code": code}], "text": "Trigger point injection"},
        "subject": subject,
    }
    if sites:
        sr["bodySite"] = [{"text": s} for s in sites]
    out = [sr]
    for i, inj in enumerate(injectates, 1):
        concept = terminology.find_concept(inj.name) if terminology else None
        med = {"text": inj.name}
        if concept:
            med["coding"] = [{"system": concept[0], "code": concept[1], "display": concept[2]}]
        mr = {
            "resourceType": "MedicationRequest", "id": f"cli-injectate-{i}", "status": "draft", "intent": "order",
            "medicationCodeableConcept": med, "subject": subject,
            "basedOn": [{"reference": f"ServiceRequest/{order_id}"}],
        }
        if inj.value is not None:
            mr["dosageInstruction"] = [{"doseAndRate": [{"doseQuantity": {
                "value": inj.value, "unit": inj.unit, "system": UCUM, "code": inj.unit}}]}]
        out.append(mr)
    return out
