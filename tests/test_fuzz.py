"""Property-based fuzzing (hypothesis) of the engine in-process: FHIR-like input in, CDS Hooks cards out.

Inputs are the fhir_samples, mutated (wrong types, missing fields, unknown fields, deep nesting,
huge strings, odd unicode - NUL, RTL marks, lone surrogates as escaped JSON -, duplicated ids,
dangling references, R5-shaped fields in R4 input, non-dict entries), and CDS Hooks requests built
from scratch. The properties:

1. `Evaluator.evaluate_document(read_object(x))`, and `read_bytes` of x serialized, either return a
   response valid against cds_tpi/schemas/cds-hooks-response.schema.json (and serialisable), or
   raise `cds_tpi.errors.InputError` - never any other exception.
2. The same input always gives the same rule ids and indicators (evaluated twice, from a fresh read).
3. A finding is never lost because an unrelated resource was malformed: garbage added to a sample
   leaves every card of the sample as it was, and the `missing-data` card names each skipped record.

Budget: the default profile ("cds-tpi-fuzz") is small and derandomized (the same examples on every
run, no example database), so CI is deterministic and this module takes well under 90 s on 2 cores.
A longer, randomized run (20x the examples) is selected with the environment variable

    CDS_TPI_FUZZ=long /tmp/venv/bin/python -m pytest tests/test_fuzz.py

(under tox, pass the variable through: it is not in tox.ini's pass_env). On a failure, hypothesis
prints the shrunk input and a `@reproduce_failure` blob.
"""

from __future__ import annotations

import copy
import threading
import json
import os
from datetime import datetime, timezone

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from cds_tpi.errors import InputError
from cds_tpi.fhir.read import read_bytes, read_object
from cds_tpi.fhir.validate import clear_cache, validate_resource, validate_resources
from cds_tpi.pipeline import READ_TYPES

from .cdshooks import assert_cds_response
from .conftest import SAMPLES

# -- budget ---------------------------------------------------------------------------------------
LONG = os.environ.get("CDS_TPI_FUZZ", "").lower() == "long"
settings.register_profile(
    "cds-tpi-fuzz", max_examples=150, derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
settings.register_profile("cds-tpi-fuzz-long", settings.get_profile("cds-tpi-fuzz"), max_examples=3000, derandomize=False)
PROFILE = settings.get_profile("cds-tpi-fuzz-long" if LONG else "cds-tpi-fuzz")


def budget(weight: float = 1.0) -> settings:
    """The module's profile with `weight` times its number of examples (not loaded globally, so
    other hypothesis users in the same run - schemathesis - keep their own settings)."""
    return settings(PROFILE, max_examples=max(1, int(PROFILE.max_examples * weight)))


# -- the samples ------------------------------------------------------------------------------------
def _load_samples():
    out = []
    for path in sorted(SAMPLES.glob("*")):
        if path.suffix == ".json":
            obj = json.loads(path.read_text())
        elif path.suffix == ".ndjson":
            obj = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            continue
        side = yaml.safe_load(path.with_name(path.stem + ".expected.yaml").read_text())
        d = side["now"]
        out.append((path.name, obj, datetime(d.year, d.month, d.day, tzinfo=timezone.utc),
                    sorted((c["rule"], c["indicator"]) for c in side["cards"])))
    return out


SAMPLE_LIST = _load_samples()
# Samples with at least one finding other than missing-data (the "card X" of property 3).
WITH_FINDINGS = [s for s in SAMPLE_LIST if any(r != "missing-data" for r, _ in s[3])]


def resource_slots(obj, path=()):
    """Paths (tuples of keys) to every resource inside a sample: bundle entries, prefetch values,
    draft orders, appointments; the root for a single resource. Not below 40 nested bundles."""
    out = []
    if len(path) > 160:
        return out
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            out += resource_slots(item, path + (i,))
    elif isinstance(obj, dict) and "hook" in obj and "resourceType" not in obj:
        for key, value in (obj.get("prefetch") or {}).items():
            out += resource_slots(value, path + ("prefetch", key))
        for key in ("draftOrders", "appointments"):
            if isinstance((obj.get("context") or {}).get(key), dict):
                out += resource_slots(obj["context"][key], path + ("context", key))
    elif isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
        for i, entry in enumerate(obj.get("entry") or []):
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                out += resource_slots(entry["resource"], path + ("entry", i, "resource"))
    elif isinstance(obj, dict):
        out.append(path)
    return out


def bundles_in(obj, path=()):
    """Paths to every Bundle (or resource list) where a resource can be added."""
    out = []
    if len(path) > 160:
        return out
    if isinstance(obj, list):
        out.append(path)
    elif isinstance(obj, dict) and "hook" in obj and "resourceType" not in obj:
        for key, value in (obj.get("prefetch") or {}).items():
            out += bundles_in(value, path + ("prefetch", key))
        if isinstance((obj.get("context") or {}).get("draftOrders"), dict):
            out += bundles_in(obj["context"]["draftOrders"], path + ("context", "draftOrders"))
    elif isinstance(obj, dict) and obj.get("resourceType") == "Bundle" and isinstance(obj.get("entry"), list):
        out.append(path)
    return out


def get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def put(obj, path, value):
    if not path:
        return value
    get(obj, path[:-1])[path[-1]] = value
    return obj


# -- strategies -------------------------------------------------------------------------------------
ODD = ["\x00", "\x01", "\u202e", "\u200f", "\u202b", "\u2066", "\ufeff", "\u0301", "\u200b", "\U0001f489", "\uffff",
       "אבג", "مرحبا", "\n", "\t", "\\", '"', "{{ 7*7 }}", "{% if %}", "<script>", "**", "|", "e\u0301", "İ", "ß"]
odd_text = st.lists(st.sampled_from(ODD) | st.text(max_size=4), max_size=5).map("".join)
# Lone surrogates: Python strings that are not valid Unicode scalar values (JSON text can escape them).
surrogate_text = st.builds(lambda a, s, b: a + s + b, odd_text, st.sampled_from(["\ud800", "\udfff", "\udc00\ud800"]), odd_text)
keys = st.sampled_from(["id", "code", "status", "coding", "system", "display", "text", "reference", "value", "resourceType",
                        "entry", "resource", "extension", "url", "valueString", "meta", "contained", "note", "x"]) | odd_text
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | odd_text | st.sampled_from(["active", "draft", "Patient/p1", "urn:uuid:0", "2026-11-24", "", "#x"]))
garbage = st.recursive(scalars, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(keys, ch, max_size=3), max_leaves=10)


def deep(depth: int, kind: str):
    v = "bottom"
    for _ in range(depth):
        v = {"extension": [{"url": "https://x.example.org", "extension": v}]} if kind == "extension" else (
            [v] if kind == "list" else {"a": v})
    return v


def nested_bundle(depth: int, inner):
    b = inner
    for _ in range(depth):
        b = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": b}]}
    return b


huge = st.builds(lambda n, c: c * n, st.sampled_from([10_000, 200_000, 1_000_000]), st.sampled_from(["a", "é", "\u202e", "0"]))
R5_SHAPES = {
    "MedicationRequest": ("medication", {"concept": {"text": "warfarin"}}),
    "MedicationStatement": ("medication", {"concept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "855332"}]}}),
    "Condition": ("participant", [{"actor": {"reference": "Practitioner/x"}}]),
    "AllergyIntolerance": ("participant", [{"actor": {"reference": "Practitioner/x"}}]),
    "Procedure": ("occurrenceDateTime", "2026-01-01"),
    "Observation": ("instantiatesReference", {"reference": "ObservationDefinition/x"}),
    "ServiceRequest": ("bodyStructure", {"reference": "BodyStructure/x"}),
    "Patient": ("link", [{"other": {"reference": "RelatedPerson/x"}, "type": "seealso"}]),
}
DANGLING = ["Patient/does-not-exist", "Medication/nope", "urn:uuid:6f1a5c2e-0000-4000-8000-000000000000", "#missing",
            "https://elsewhere.example.org/fhir/Medication/x", "ServiceRequest/tpi-nope", "", "Patient/", "/", 42]


@st.composite
def mutated_sample(draw, samples=SAMPLE_LIST):
    """A fhir_sample with 1-4 mutations; returns (name, obj, now)."""
    name, original, now, _ = draw(st.sampled_from(samples))
    obj = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 4))):
        obj = draw(mutation(obj))
    return name, obj, now


@st.composite
def mutation(draw, obj):
    try:
        return draw(_mutation(obj))
    except RecursionError:  # copying or walking a deeply nested input in this test code, not the engine
        return obj


@st.composite
def _mutation(draw, obj):
    slots = resource_slots(obj)
    op = draw(st.sampled_from(["set", "delete", "unknown", "deep", "huge", "odd", "dup", "dangling", "r5", "entries",
                               "resourceType", "replace", "nested-bundle", "inner"]))
    note(f"mutation: {op}")
    if not slots:
        return obj
    path = draw(st.sampled_from(slots))
    r = get(obj, path)
    fields = sorted(k for k in r if isinstance(k, str)) if isinstance(r, dict) else []
    if not isinstance(r, dict):
        return obj
    if op == "set" and fields:
        r[draw(st.sampled_from(fields))] = draw(garbage)
    elif op == "delete" and fields:
        del r[draw(st.sampled_from(fields))]
    elif op == "unknown":
        r[draw(odd_text.filter(bool))] = draw(garbage)
    elif op == "deep":
        r[draw(st.sampled_from(fields + ["extension", "note"]))] = deep(draw(st.integers(10, 1500)),
                                                                     draw(st.sampled_from(["extension", "list", "dict"])))
    elif op == "huge":
        r[draw(st.sampled_from(["id", "text", "note", "status"] + fields))] = draw(huge) if draw(st.booleans()) else [{"text": draw(huge)}]
    elif op == "odd":
        target = draw(st.sampled_from(["id", "gender", "status", "birthDate"] + fields))
        r[target] = draw(odd_text | surrogate_text)
        if "code" in r and isinstance(r["code"], dict):
            r["code"]["text"] = draw(odd_text)
    elif op == "dup":
        # the same id twice (a copy, possibly changed) in the same bundle
        dup = copy.deepcopy(r)
        if draw(st.booleans()) and fields:
            dup[draw(st.sampled_from(fields))] = draw(garbage)
        places = bundles_in(obj)
        if places:
            _add(get(obj, draw(st.sampled_from(places))), dup)
    elif op == "dangling":
        ref = draw(st.sampled_from(DANGLING))
        for key in ("subject", "patient", "medicationReference", "partOf", "basedOn"):
            if key in r or draw(st.booleans()):
                r[key] = [{"reference": ref}] if key in ("partOf", "basedOn") else {"reference": ref}
    elif op == "r5":
        key, value = R5_SHAPES.get(str(r.get("resourceType")), ("medication", {"concept": {"text": "x"}}))
        r[key] = copy.deepcopy(value)
        if draw(st.booleans()):
            r.pop("medicationCodeableConcept", None)
            r.pop("performedDateTime", None)
    elif op == "entries":
        places = bundles_in(obj)
        if places:
            target = get(obj, draw(st.sampled_from(places)))
            junk = draw(st.lists(st.sampled_from([1, "x", None, [], {}, {"resource": 5}, {"resource": None},
                                                  {"resource": []}, {"fullUrl": 7, "resource": {"resourceType": "Basic"}},
                                                  {"resource": {"no": "type"}}]) | garbage, min_size=1, max_size=4))
            for j in junk:
                if isinstance(target, list):
                    target.insert(draw(st.integers(0, len(target))), j)
                else:
                    target["entry"].insert(draw(st.integers(0, len(target["entry"]))), j)
    elif op == "resourceType":
        r["resourceType"] = draw(st.sampled_from(["", "patient", "Foo", 42, None, ["Patient"], "Bundle", "OperationOutcome",
                                                  "DomainResource", "Patient "]) | odd_text)
    elif op == "replace":
        obj = put(obj, path, draw(garbage))
    elif op == "nested-bundle":
        obj = put(obj, path, nested_bundle(draw(st.integers(1, 1200)), r))
    elif op == "inner" and fields:
        # somewhere inside the resource (a coding, a quantity, ...): a wrong type or a missing field
        node = r
        for _ in range(draw(st.integers(1, 4))):
            children = ([v for v in node.values() if isinstance(v, (dict, list))] if isinstance(node, dict)
                        else [v for v in node if isinstance(v, (dict, list))])
            if not children:
                break
            node = draw(st.sampled_from(children))
        if isinstance(node, dict) and node:
            k = draw(st.sampled_from(sorted(node)))
            if draw(st.booleans()):
                node[k] = draw(garbage)
            else:
                del node[k]
        elif isinstance(node, list) and node:
            node[draw(st.integers(0, len(node) - 1))] = draw(garbage)
    return obj


def _add(container, resource, position=None):
    if isinstance(container, list):
        container.insert(len(container) if position is None else position, resource)
    else:
        entries = container["entry"]
        entries.insert(len(entries) if position is None else min(position, len(entries)),
                       {"fullUrl": f"urn:uuid:{len(entries):08d}-dead-4bad-8bad-000000000000", "resource": resource})


PIECES = [get(obj, p) for _, obj, _, _ in SAMPLE_LIST for p in resource_slots(obj)]  # every sample resource


@st.composite
def hook_request(draw):
    """A CDS Hooks request from scratch: valid-looking or not, with prefetch from the samples or garbage."""
    resource = st.sampled_from(PIECES).map(copy.deepcopy)
    searchset = st.lists(resource | garbage, max_size=5).map(
        lambda rs: {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in rs]})
    prefetch_value = (st.none() | resource | searchset | garbage
                      | st.just({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})
                      | st.sampled_from([{"resourceType": "Bundle", "entry": 5}, {"resourceType": "Bundle", "entry": "abc"},
                                         {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Condition"}, "search": "x"}]},
                                         {"resourceType": "Bundle", "entry": [], "link": 7},
                                         {"resourceType": "Bundle", "entry": [], "link": ["x", {"relation": "self", "url": 3}]},
                                         {"resourceType": "Bundle", "entry": [], "link": [{"relation": "self", "url": "https://h/fhir/Condition?x"}]}]))
    draft = st.lists(resource | garbage, max_size=4).map(
        lambda rs: {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in rs]})
    context = st.fixed_dictionaries(
        {"userId": st.just("Practitioner/u1") | garbage, "patientId": st.just("p1") | garbage},
        optional={"draftOrders": draft | garbage, "selections": st.lists(odd_text, max_size=2) | garbage,
                  "appointments": draft | garbage, "encounterId": garbage, "extension": garbage},
    )
    req = draw(st.fixed_dictionaries(
        {"hook": st.sampled_from(["order-sign", "order-select", "appointment-book", "patient-view", "ORDER-SIGN"]) | garbage},
        optional={"hookInstance": st.uuids().map(str) | garbage, "context": context | garbage,
                  "prefetch": st.dictionaries(st.sampled_from(["patient", "medicationRequests", "medicationStatements", "conditions",
                                                               "allergies", "procedures", "observations"]) | odd_text,
                                              prefetch_value, max_size=6) | garbage,
                  "fhirServer": garbage, "fhirAuthorization": garbage, "extension": garbage},
    ))
    return req


# -- the checks -------------------------------------------------------------------------------------
def outcome(evaluator, obj, now, *, as_bytes: bool = False, dumps=None):
    """('error', message) for InputError, else ('ok', [(rule, indicator)...], evaluation). Anything else propagates."""
    try:
        doc = read_bytes(dumps(obj), "fuzz") if as_bytes else read_object(obj, "fuzz")
        result = evaluator.evaluate_document(doc, now=now)
    except InputError as e:
        assert str(e).strip(), "an InputError must say what is wrong"
        return ("error", type(e).__name__), None
    assert_cds_response(result.response)
    orjson.dumps(result.response)  # what the CLI and the service send must serialise
    return ("ok", sorted((c["source"]["topic"]["code"], c["indicator"]) for c in result.cards)), result


def check(evaluator, obj, now, **kw):
    first, result = outcome(evaluator, obj, now, **kw)
    second, _ = outcome(evaluator, obj, now, **kw)
    assert first == second, "the same input gave different rule ids"
    return first, result


def json_bytes(obj, ensure_ascii: bool) -> bytes:
    # ensure_ascii escapes lone surrogates (\ud800), which JSON parsers must then reject or decode.
    return json.dumps(obj, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


# -- property 1 + 2: valid cards or a clear error, the same every time ------------------------------
@budget(1.5)
@given(mutated_sample())
def test_mutated_samples_give_valid_cards_or_a_clear_error(evaluator, case):
    _, obj, now = case
    check(evaluator, obj, now)


@budget(1.0)
@given(mutated_sample(), st.booleans(), st.booleans())
def test_mutated_samples_as_bytes_give_valid_cards_or_a_clear_error(evaluator, case, ensure_ascii, surrogates):
    _, obj, now = case
    if surrogates:  # an odd string with lone surrogates somewhere in the first resource
        slots = resource_slots(obj)
        if slots and isinstance(get(obj, slots[0]), dict):
            get(obj, slots[0])["id"] = "a\ud800b"
    try:
        data = json_bytes(obj, ensure_ascii)
    except RecursionError:
        assume(False)  # deeper than Python's json can write; read_bytes would see orjson's depth limit anyway
    got, _ = check(evaluator, data, now, as_bytes=True, dumps=lambda b: b)
    if not surrogates:
        # The same input read from bytes or from objects gives the same answer.
        try:
            same = orjson.loads(data) == obj
        except (orjson.JSONDecodeError, RecursionError):
            same = False
        if same:
            assert outcome(evaluator, obj, now)[0] == got


@budget(1.0)
@given(hook_request())
def test_cds_hooks_requests_give_valid_cards_or_a_clear_error(evaluator, request):
    now = datetime(2026, 11, 24, tzinfo=timezone.utc)
    check(evaluator, request, now)
    try:
        data = orjson.dumps(request)
    except TypeError:  # integers over 64 bits
        return
    check(evaluator, data, now, as_bytes=True, dumps=lambda b: b)


@budget(0.5)
@given(mutated_sample())
def test_r4_input_under_r5_gives_valid_cards_or_a_clear_error(evaluator_r5, case):
    _, obj, now = case
    check(evaluator_r5, obj, now)


@pytest.mark.parametrize("name,obj,now,expected", SAMPLE_LIST, ids=[s[0] for s in SAMPLE_LIST])
def test_every_sample_unchanged_gives_its_cards_twice(evaluator, name, obj, now, expected):
    got, _ = check(evaluator, obj, now)
    assert got == ("ok", expected)


# -- validating records together is validating each alone ----------------------------------------
@budget(0.5)
@given(mutated_sample(), st.sampled_from(["R4", "R5"]))
def test_records_validated_together_get_the_issues_each_gets_alone(case, version):
    """validate_resources validates an element its records repeat once and hands fhir.resources the model
    instance (validate._with_valid_elements); each record's issues must be those fhir.resources gives it
    alone, element by element (a fhir_core that validated instances again, or differently, shows here)."""
    _, obj, _ = case
    records = [get(obj, path) for path in resource_slots(obj)]
    clear_cache()
    together = validate_resources(records, version)
    clear_cache()
    assert together == [validate_resource(r, version) for r in records]


# -- property 3: a finding is never lost because an unrelated resource was malformed ----------------
INVALIDATORS = [
    ("code", 42), ("code", "not a CodeableConcept"), ("status", "BOGUS"), ("subject", "Patient/p1"),
    ("unknownElement", {"x": 1}), ("meta", []), ("id", "bad id with spaces"), ("text", {"status": 7}),
    ("clinicalStatus", {"coding": "active"}), ("birthDate", "2026-13-45"), ("extension", [{"url": 5}]),
]


@st.composite
def junk_resource(draw, n: int):
    """An invalid resource of a type the engine reads (so it is validated, skipped and named), or a non-resource."""
    kind = draw(st.sampled_from(["typed", "typed", "typed", "non-dict"]))
    if kind == "non-dict":
        return draw(st.sampled_from([1, "x", [], ["Patient"], True, 2.5])), None
    rt = draw(st.sampled_from(sorted(READ_TYPES - {"Observation"})))  # unknown Observations are not read at all
    rid = f"junk-{n}"
    r = {"resourceType": rt, "id": rid}
    for _ in range(draw(st.integers(0, 3))):
        r[draw(keys.filter(lambda k: k not in ("resourceType", "id")))] = draw(garbage)
    key, value = draw(st.sampled_from(INVALIDATORS))
    if key == "id":
        key = "unknownElement"  # keep the id findable
    r[key] = value
    r["zzUnknown"] = draw(garbage)  # fhir.resources forbids unknown elements: always invalid
    return r, f"{rt}/{rid}"


@budget(1.5)
@given(st.sampled_from(WITH_FINDINGS), st.data())
def test_a_finding_is_never_lost_to_an_unrelated_malformed_resource(evaluator, sample, data):
    name, original, now, expected = sample
    obj = copy.deepcopy(original)
    places = bundles_in(obj)
    assume(places)
    named = []
    for n in range(data.draw(st.integers(1, 4), label="junk count")):
        junk, ref = data.draw(junk_resource(n))
        place = data.draw(st.sampled_from(places), label="where")
        container = get(obj, place)
        size = len(container) if isinstance(container, list) else len(container["entry"])
        _add(container, junk, data.draw(st.integers(0, size), label="position"))
        named.append(ref or "not a FHIR resource")
    if isinstance(obj, dict) and "prefetch" in obj and data.draw(st.booleans(), label="junk prefetch key"):
        obj["prefetch"]["junk"] = data.draw(st.sampled_from([[1, 2], "x", 5, {"resourceType": "Bundle", "entry": "x"}]))
    got, result = check(evaluator, obj, now)
    assert got[0] == "ok", f"{name}: garbage made the whole input unreadable"
    findings = [c for c in expected if c[0] != "missing-data"]
    assert [c for c in got[1] if c[0] != "missing-data"] == findings, f"{name}: a finding changed"
    missing = next(c for c in result.cards if c["source"]["topic"]["code"] == "missing-data")
    for ref in named:
        assert ref in missing["detail"], f"{name}: missing-data does not name {ref}"


# -- regressions: engine bugs the fuzzer found (each fixed in cds_tpi/, see the comment) --------------
NOW = datetime(2026, 11, 24, tzinfo=timezone.utc)


def sample(name: str):
    _, obj, now, expected = next(s for s in SAMPLE_LIST if s[0] == name)
    return copy.deepcopy(obj), now, expected


def resource(obj, rid: str) -> dict:
    return next(get(obj, p) for p in resource_slots(obj) if get(obj, p).get("id") == rid)


def cards_of(evaluator, obj, now) -> dict:
    got, result = check(evaluator, obj, now)
    assert got[0] == "ok", got
    return {c["source"]["topic"]["code"]: c for c in result.cards}


@pytest.mark.parametrize("status", [{"coding": "active"}, ["active"], [], {}])
def test_regression_unhashable_status_is_skipped_and_named(evaluator, status):
    # fhir/validate.py: the status binding check did `status not in allowed` -> TypeError: unhashable type.
    obj, now, expected = sample("anticoagulant-warfarin.json")
    resource(obj, "medrx-lisin")["status"] = status
    cards = cards_of(evaluator, obj, now)
    assert cards["anticoagulant"]["indicator"] == "warning"
    assert "MedicationRequest/medrx-lisin" in cards["missing-data"]["detail"]


@pytest.mark.parametrize("bundle", [
    {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": ["Condition"]}}]},
    {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Condition"}, "search": "match"}]},
    {"resourceType": "Bundle", "type": "searchset", "entry": 5},
    {"resourceType": "Bundle", "type": "searchset", "entry": [], "link": 7},
])
def test_regression_malformed_prefetch_bundle_does_not_crash(evaluator, bundle):
    # fhir/read.py (_Listing, _categories_of_links; was _categories_of_bundle): entry/link/search/resourceType of the wrong JSON type -> TypeError/AttributeError.
    obj, now, expected = sample("latex-allergy-order-sign.json")
    obj["prefetch"]["conditions"] = bundle
    cards = cards_of(evaluator, obj, now)
    assert cards["latex-allergy"]["indicator"] == "warning"


def test_regression_empty_values_in_a_draft_are_not_echoed_in_an_update_action(evaluator):
    # cards.py: the draft copied into an update action kept the empty values fhir.resources accepts
    # (`"category": []`, `"subject": {}`, `"bodySite": [{}, ...]`), so the response carried them.
    obj, now, expected = sample("latex-allergy-order-sign.json")
    order = resource(obj, "sr-tpi")
    order.update(category=[], subject={}, note=[])
    order["bodySite"].append({})
    cards = cards_of(evaluator, obj, now)
    action = cards["latex-allergy"]["suggestions"][0]["actions"][0]
    assert action["type"] == "update"
    assert "subject" not in action["resource"] and "category" not in action["resource"]
    assert {} not in action["resource"]["bodySite"]
    assert action["resource"]["note"] == [{"text": "LATEX ALLERGY: use latex-free gloves and supplies."}]


def test_regression_create_action_without_a_valid_patient_has_no_empty_subject(evaluator):
    # cards.py: with the Patient skipped as invalid, `subject: {reference: "{{ patient.ref }}"}` rendered "".
    obj, now, expected = sample("thoracic-site-rhomboid.json")
    resource(obj, "pat-9102")["id"] = ""
    cards = cards_of(evaluator, obj, now)
    action = cards["thoracic-site"]["suggestions"][0]["actions"][0]
    assert action["type"] == "create" and "subject" not in action["resource"]
    assert "not a FHIR resource" in cards["missing-data"]["detail"] or "Patient" in cards["missing-data"]["detail"]


def test_regression_anesthetic_without_any_dose_is_named_not_a_crash(evaluator):
    # facts.py: an injectate without dosageInstruction had no dose_text field; missing-data's template
    # `{% if d.dose_text %}` then raised jinja2 UndefinedError (templates render strictly).
    obj, now, expected = sample("anesthetic-dose-lidocaine-absolute-max.json")
    del resource(obj, "mr-lido")["dosageInstruction"]
    cards = cards_of(evaluator, obj, now)
    assert "anesthetic-dose" not in cards
    assert "no usable dose in mg" in cards["missing-data"]["detail"]
    assert "(ordered as" not in cards["missing-data"]["detail"]


def test_regression_lone_surrogates_in_a_skipped_record_do_not_break_the_engine(evaluator):
    # facts.py: a record skipped as invalid is named in a gap fact; a lone surrogate in its id (possible
    # in a dict parsed by json.loads) made durable-rules fail ("pyAssertFacts Invalid argument").
    obj, now, expected = sample("anticoagulant-warfarin.json")
    resource(obj, "medrx-lisin")["id"] = "a\ud800b"
    obj["entry"].append({"resource": "\udfff"})
    cards = cards_of(evaluator, obj, now)
    assert cards["anticoagulant"]["indicator"] == "warning"
    # (markdown-escaped in the card: the backslash of the escape is itself escaped)
    assert "MedicationRequest/a\\\\ud800b" in cards["missing-data"]["detail"]


def test_regression_durable_host_runs_no_background_dispatch_threads(evaluator):
    # engine.py: durable's Host polls every ruleset from two timer threads (every 0.2 s) and runs queued
    # actions there, outside the engine lock, swallowing errors. In a slow evaluation that thread took
    # actions of the running session: a finding went missing ("error code: 307" in the log only).
    host = evaluator.engine._host
    assert not hasattr(host, "_d_timer") and not hasattr(host, "_t_timer")
    assert not [t for t in threading.enumerate() if getattr(t, "function", None) is not None
                and getattr(t.function, "__qualname__", "").startswith("Host._run")]


def test_regression_slow_evaluation_keeps_every_finding(evaluator):
    # The input the fuzzer found: a skipped record whose id is 1,000,000 RTL marks makes a 3 MB gap fact,
    # each evaluation takes > 0.1 s, and with the dispatch threads ~1 in 10 lost steroid-frequency.
    obj, now, expected = sample("steroid-frequency-four-previous.json")
    resource(obj, "allergy-nka")["id"] = "\u202e" * 1_000_000
    for _ in range(20):
        got, result = check(evaluator, obj, now)
        assert ("steroid-frequency", "warning") in got[1]


@pytest.mark.parametrize("code", [
    {"coding": [{"system": [None], "code": "29463-7"}]},
    {"coding": [{"system": {"url": "http://loinc.org"}, "code": "29463-7"}]},
    {"coding": 5},
    {"coding": {"system": "http://loinc.org", "code": "29463-7"}},
])
def test_regression_observation_code_of_the_wrong_shape_is_skipped_not_a_crash(evaluator, evaluator_r5, code):
    # facts.py (_codeable): the pipeline asks whether an Observation is one the rules read *before* it is
    # validated; a coding system that is a list made the terminology look-up fail (unhashable type).
    for ev in (evaluator, evaluator_r5):
        obj, now, expected = sample("anticoagulant-warfarin.json")
        resource(obj, "obs-weight")["code"] = code
        cards = cards_of(ev, obj, now)
        if ev is evaluator:
            assert cards["anticoagulant"]["indicator"] == "warning"
