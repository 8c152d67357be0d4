"""Issue 7 item 10: discovery's prefetch templates come from rules/records.yaml (the loaded
RecordPolicy), so every status the policy counts as current is fetched; each key declares the record
list it is."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from urllib.parse import parse_qs

import httpx
import pytest

from cds_tpi.fhir.prefetch_keys import CATEGORIES
from cds_tpi.ruleset import load_rulebook
from cds_tpi.ruleset.records import ResourcePolicy
from cds_tpi.service.discovery import checked_records, prefetch_keys
from conftest import (FHIR_SERVER_DIR, NODE_MIN, PATIENT_ID, _node_version, _npm_install, _skip_or_fail, free_port,
                      hook_request, patient_resources, wait_http)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def policy():
    return load_rulebook().records


def _params(query: str) -> dict[str, list[str]]:
    return parse_qs(query.split("?", 1)[1]) if "?" in query else {}


def _reachable(query: str, status: str) -> bool:
    """Would a FHIR search with this query return a record of this status? (FHIR: comma = OR)"""
    values = _params(query).get("status")
    return values is None or any(status in v.split(",") for v in values)


def test_every_current_status_is_reachable_through_the_prefetch(policy):
    keys = prefetch_keys(policy)
    searched = {k.resource_type for k in keys}
    for resource_type, rp in policy.resources.items():
        if resource_type == "ServiceRequest":  # the order itself comes in context.draftOrders
            continue
        if resource_type == "MedicationAdministration":
            # read when sent (a bundle, a prefetch an EHR fills itself); not a key of its own: an optional
            # key most EHRs leave empty would put a missing-data note on nearly every call
            continue
        assert resource_type in searched, f"{resource_type} is in records.yaml but no prefetch key fetches it"
        for key in (k for k in keys if k.resource_type == resource_type):
            for status in rp.status or ():
                assert _reachable(key.query, status), f"{key.key}: status {status} is current but not fetched"
            if rp.clinical_status is not None and rp.missing_clinical_status_counts:
                assert "clinical-status" not in _params(key.query), f"{key.key} would drop records without a status"


def test_on_hold_medication_orders_are_fetched(policy):
    query = {k.key: k.query for k in prefetch_keys(policy)}["medicationRequests"]
    assert _reachable(query, "on-hold") and _reachable(query, "active") and _reachable(query, "unknown")
    assert not _reachable(query, "stopped") and not _reachable(query, "entered-in-error")


def test_templates_follow_a_changed_policy(policy):
    changed = dataclasses.replace(policy, resources={
        **policy.resources,
        "MedicationRequest": ResourcePolicy(status=frozenset({"active", "completed"})),
        "Procedure": ResourcePolicy(),  # no status restriction: no filter
        "Condition": ResourcePolicy(clinical_status=frozenset({"active"}), missing_clinical_status_counts=False),
    })
    query = {k.key: k.query for k in prefetch_keys(changed)}
    assert _params(query["medicationRequests"])["status"] == ["active,completed"]
    assert "status" not in _params(query["procedures"]) and query["procedures"].endswith("&_sort=-date")
    assert _params(query["conditions"])["clinical-status"] == ["active"]


def test_each_key_declares_its_record_list(policy):
    for key in prefetch_keys(policy):
        assert key.resource_type and key.query.startswith(key.resource_type)
        assert key.records == CATEGORIES[key.resource_type]
    keys = prefetch_keys(policy)
    assert checked_records(keys, {"medicationRequests": None, "conditions": {"resourceType": "Bundle"},
                                  "allergies": {"resourceType": "OperationOutcome"}}) == ("conditions", "medications")


def test_the_service_passes_the_declared_record_lists(start_service, fake_evaluator):
    service = start_service(fake_evaluator)
    prefetch = {"patient": patient_resources()["tpi-pat-1"], "medicationRequests": None, "conditions": None,
                "allergies": {"resourceType": "Bundle", "type": "searchset"}}
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign", prefetch=prefetch))
    assert r.status_code == 200, r.text
    assert fake_evaluator.checked[-1] == ("allergies", "conditions", "medications")


def test_discovery_serves_the_policy_statuses(start_service, evaluator):
    service = start_service(evaluator)
    for path in ("/cds-services", "/cds-services/"):
        r = service.get(path)
        assert r.status_code == 200, path
        prefetch = r.json()["services"][0]["prefetch"]
        assert "status=active,on-hold,unknown" in prefetch["medicationRequests"]


# --- end to end: an on-hold warfarin order on a real FHIR server -----------------------------------

@pytest.fixture(scope="module")
def fhir_with_on_hold_warfarin(tmp_path_factory):
    """medplum's FHIR server holding the sample patient whose warfarin order is on hold (held for
    the procedure) and a stopped aspirin order."""
    node = shutil.which("node")
    if node is None:
        _skip_or_fail("node is not installed: cannot run the medplum FHIR test server")
    version = _node_version(node)
    if version is None or version < NODE_MIN:
        _skip_or_fail(f"node {version} is older than {NODE_MIN}, which the medplum FHIR test server needs")
    _npm_install()
    resources = patient_resources()
    warfarin = {**resources["warfarin-1"], "status": "on-hold"}
    entries = [r for k, r in resources.items() if k != "warfarin-1"] + [warfarin]
    seed = tmp_path_factory.mktemp("fhir") / "on-hold.json"
    seed.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in entries]}))
    port = free_port()
    proc = subprocess.Popen([node, "server.mjs", str(port), str(seed)], cwd=FHIR_SERVER_DIR,
                            env={**os.environ, "FHIR_TOKEN": "t0ken"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/metadata", timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_on_hold_warfarin_from_the_fhir_server_gives_the_anticoagulant_card(start_service, evaluator,
                                                                            fhir_with_on_hold_warfarin):
    # the server filters by status: the old template (status=active) would not have seen the order
    old = httpx.get(f"{fhir_with_on_hold_warfarin}/MedicationRequest?patient={PATIENT_ID}&status=active",
                    headers={"Authorization": "Bearer t0ken"}, timeout=10).json()
    assert not old.get("entry"), old
    service = start_service(evaluator)
    request = hook_request("order-sign")
    del request["prefetch"]
    request.update(fhirServer=fhir_with_on_hold_warfarin, fhirAuthorization={
        "access_token": "t0ken", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
        "subject": "cds-tpi"})
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 200, r.text
    codes = {c["source"]["topic"]["code"] for c in r.json()["cards"]}
    assert "anticoagulant" in codes, r.text
    assert PATIENT_ID not in json.dumps([c.get("summary") for c in r.json()["cards"]])


def test_the_observations_search_asks_for_every_loinc_code_the_rules_read():
    """The observation codes come from the value sets the rules' observation patterns and the dose
    policy's weight read (they were six codes written in discovery.py: a code added to inr.json was
    never fetched); the codes written there before are among them."""
    from cds_tpi.service.discovery import LOINC, default_prefetch_keys

    book = load_rulebook()
    query = {k.key: k.query for k in default_prefetch_keys()}["observations"]
    asked = {c.split("|", 1)[1] for c in _params(query)["code"][0].split(",")}
    for vid in ("platelet-count", "inr", "hba1c", "body-weight", "pregnancy-status-observations", "pregnancy-tests", "hcg-quantitative"):
        codes = {code for system, code in book.terminology.codes_of(book.terminology.resolve(vid) or vid) if system == LOINC}
        assert codes and codes <= asked, vid
    assert {"29463-7", "777-3", "26515-7", "6301-6", "34714-6", "4548-4"} <= asked
    # audit 2: the older pregnancy status code, HbA1c in IFCC units, quantitative serum hCG
    assert {"82810-3", "11449-6", "59261-8", "21198-7"} <= asked
    # answer codes (value_vs: LA6576-8 'Positive', LA15173-0 'Pregnant') are no observation's code
    assert not {c for c in asked if c.startswith("LA")}, sorted(asked)
