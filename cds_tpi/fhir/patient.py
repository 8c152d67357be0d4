"""One patient per evaluation: records that belong to another patient are refused, never mixed in.

The patient is the request's `context.patientId`, else the only Patient of the input. A record's
patient is its `subject` or `patient` reference (relative, absolute, or a `urn:uuid:` fullUrl of a
Patient in the same input). A reference that cannot be resolved to a Patient id is not judged.
"""

from __future__ import annotations

from .read import Located
from .refs import normalize, ref_key

_SUBJECT_FIELDS = ("subject", "patient")
_SHOWN = 5


def _patient_id(reference, by_url: dict) -> str | None:
    """The Patient id a reference points to, or None when it is not (or not known to be) a Patient."""
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str) or not ref or ref.startswith("#"):
        return None
    target = by_url.get(ref)
    if isinstance(target, dict):  # a fullUrl of this input (urn:uuid:...)
        return target.get("id") if target.get("resourceType") == "Patient" and isinstance(target.get("id"), str) else None
    key = normalize(ref)
    return key.split("/", 1)[1] if key.startswith("Patient/") else None


def patient_problems(located: list[Located], patient_id: str | None) -> tuple[str | None, list[str]]:
    """(the patient id, what does not belong to it). Problems: two Patients in one input, a Patient
    other than `patient_id`, records whose subject/patient is another patient."""
    index = {loc.full_url: loc.resource for loc in located if loc.full_url}
    patients = {}
    for loc in located:
        r = loc.resource
        if isinstance(r, dict) and r.get("resourceType") == "Patient" and isinstance(r.get("id"), str):
            patients.setdefault(r["id"], loc.location)
    problems = []
    if patient_id is None:
        if len(patients) > 1:
            return None, [f"the input holds {len(patients)} patients ({', '.join(f'Patient/{p}' for p in sorted(patients))}); "
                          "evaluate one patient at a time"]
        patient_id = next(iter(patients), None)
    else:
        problems += [f"Patient/{p} (at {where}) is not the patient of the request (Patient/{patient_id})"
                     for p, where in patients.items() if p != patient_id]
    seen: set[str] = set()
    own = f"Patient/{patient_id}" if patient_id else None
    for loc in located:
        r = loc.resource
        if not isinstance(r, dict) or r.get("resourceType") == "Patient":
            continue
        for fld in _SUBJECT_FIELDS:
            value = r.get(fld)
            if value is None or (own and isinstance(value, dict) and value.get("reference") == own):
                continue  # the common case, decided without parsing
            pid = _patient_id(value, index)
            if pid is None:
                continue
            if patient_id is None:
                seen.add(pid)
            elif pid != patient_id:
                problems.append(f"{ref_key(r) or r.get('resourceType')} (at {loc.location}) belongs to Patient/{pid}")
    if patient_id is None and len(seen) > 1:
        problems.append(f"the records belong to {len(seen)} patients ({', '.join(f'Patient/{p}' for p in sorted(seen))})")
    return patient_id, problems


def describe(problems: list[str]) -> str:
    shown = "; ".join(problems[:_SHOWN]) + (f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else "")
    return f"records of another patient, refused: {shown}"
