"""The facts the rules can match: type -> fields. The facts stage emits exactly these; lint checks rules against them."""

COMMON = {"t", "fid", "ref", "name", "vs", "text_only"}

FACT_FIELDS: dict[str, set[str]] = {
    "patient": COMMON | {"age_years", "sex", "deceased", "deceased_date"},
    "medication": COMMON | {"status", "source"},
    "injectate": COMMON | {"dose_mg", "dose_text", "order"},
    "order": COMMON | {"code"},
    "site": COMMON | {"region", "order"},
    "condition": COMMON | {"region", "region_name", "site", "site_vs", "status", "onset_days", "recorded_as",
                           # (dated conditions) value sets of conditions, and answer value sets of newest results,
                           # dated after it
                           "later_vs", "later_result_vs"},
    "allergy": COMMON | {"criticality", "verification", "status", "type"},
    "observation": COMMON | {"value", "unit", "comparator", "value_vs", "age_days", "date", "latest_in", "code"},
    "procedure": COMMON | {"age_days", "date", "site", "used_vs", "status"},
    "inventory": {"t", "fid", "checked", "medications", "allergies", "conditions", "procedures", "observations",
                  "patient", "orders", "injectates", "sites", "unread_sites", "unread_site_count"},
    "gap": {"t", "fid", "ref", "name", "what", "why"},
    # one per local anesthetic (and with a vasoconstrictor or not) in the draft orders, doses summed
    "dose": COMMON | {"orders", "total_mg", "parts", "undosed", "undosed_count", "vasoconstrictor", "weight_kg", "weight_window_days",
                      "limit_mg", "limit_text", "fraction",
                      # without a weight: the mg/kg of the maximum, and child / age_years (under records.yaml
                      # anesthetic_limits adult_min_age_years) or age_unknown (no birth date)
                      "mg_per_kg", "child", "age_years", "age_unknown"},
    # when several anesthetics are ordered: the sum of each one's fraction of its maximum (additive toxicity)
    "dose-total": COMMON | {"classes", "fraction", "parts"},
}

# Fields holding value set ids (lint checks that the ids named against them exist).
VALUESET_FIELDS = {"vs", "text_only", "used_vs", "latest_in", "value_vs", "site_vs", "region", "later_vs",
                   "later_result_vs"}

# Fields holding lists (of value set ids or of strings); every other field is a scalar.
LIST_FIELDS = VALUESET_FIELDS - {"region"} | {"checked", "orders", "parts", "undosed", "unread_sites"}
