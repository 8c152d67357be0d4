"""The facts the rules can match: type -> fields. The facts stage emits exactly these; lint checks rules against them."""

COMMON = {"t", "fid", "ref", "name", "vs", "text_only"}

FACT_FIELDS: dict[str, set[str]] = {
    "patient": COMMON | {"age_years", "sex"},
    "medication": COMMON | {"status", "source"},
    "injectate": COMMON | {"dose_mg", "dose_text", "order"},
    "order": COMMON | {"code"},
    "site": COMMON | {"region", "order"},
    "condition": COMMON | {"region", "status", "onset_days"},
    "allergy": COMMON | {"criticality", "verification", "status"},
    "observation": COMMON | {"value", "unit", "age_days", "latest_in", "code"},
    "procedure": COMMON | {"age_days", "used_vs", "status"},
    "inventory": {"t", "fid", "checked", "medications", "allergies", "conditions", "procedures", "observations",
                  "patient", "orders", "injectates", "sites"},
    "gap": {"t", "fid", "ref", "name"},
}

# Fields holding value set ids (lint checks that the ids named against them exist).
VALUESET_FIELDS = {"vs", "text_only", "used_vs", "latest_in", "region"}
