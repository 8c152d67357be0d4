"""The read stage (cds_tpi/fhir/read.py): which record lists a CDS Hooks request shows were looked up,
from the prefetch keys this service declares (cds_tpi/fhir/prefetch_keys.py), never from key names."""

from __future__ import annotations

import pytest

from cds_tpi.fhir.prefetch_keys import CATEGORIES, KEYS, category_of_key
from cds_tpi.fhir.read import read_object
from cds_tpi.service.discovery import default_prefetch_keys


def _request(prefetch: dict) -> dict:
    return {"hook": "order-sign", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/1", "patientId": "p1", "draftOrders": {"resourceType": "Bundle", "entry": []}},
            "prefetch": prefetch}


@pytest.mark.parametrize("spec", KEYS, ids=lambda s: s.key)
def test_a_declared_key_that_is_null_was_looked_up(spec):
    doc = read_object(_request({spec.key: None}), "req")
    assert doc.checked == {CATEGORIES[spec.resource_type]}


def test_an_empty_searchset_under_a_declared_key_was_looked_up():
    doc = read_object(_request({"conditions": {"resourceType": "Bundle", "type": "searchset", "total": 0}}), "req")
    assert doc.checked == {"conditions"}


def test_a_key_this_service_does_not_declare_is_not_guessed_from_its_name():
    """'problemList': null used to count as the conditions looked up (its name has 'problem'); a null
    of a key we never asked for says nothing, so the missing-data card still names the problem list."""
    doc = read_object(_request({"problemList": None, "myMedications": None}), "req")
    assert doc.checked == set()


def test_an_undeclared_key_is_read_by_its_content():
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": 0,
              "link": [{"relation": "self", "url": "https://ehr.example.org/fhir/AllergyIntolerance?patient=p1"}]}
    assert read_object(_request({"allergyList": bundle}), "req").checked == {"allergies"}


def test_discovery_declares_exactly_these_keys_with_their_record_lists():
    assert [(k.key, k.records) for k in default_prefetch_keys()] == [(s.key, category_of_key(s.key)) for s in KEYS]
    assert category_of_key("problemList") is None
