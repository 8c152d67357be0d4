"""Feedback over HTTP (idempotent, 503 when it cannot be stored) and the audit record of each call."""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

from cds_tpi.service.storage import Storage
from conftest import PATIENT_ID, hook_request

pytestmark = pytest.mark.timeout(120)


def _feedback(card: str, outcome: str = "overridden", ts: str = "2025-03-01T12:00:00+01:00",
              reason: dict | None = None) -> dict:
    item = {"card": card, "outcome": outcome, "outcomeTimestamp": ts}
    if outcome == "overridden":
        item["overrideReason"] = {"reason": reason or {"system": "https://cds-tpi.example.org/override", "code": "therapy-held",
                                                       "display": "Anticoagulant already held"}, "userComment": "held 3 days"}
    else:
        item["acceptedSuggestions"] = [{"id": str(uuid.uuid4())}]
    return {"feedback": [item]}


def _rows(storage: Storage, sql: str):
    with storage.engine.connect() as conn:
        return conn.execute(sa.text(sql)).all()


def _wait_rows(storage: Storage, sql: str, n: int, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:  # the audit row is written after the response is sent
        rows = _rows(storage, sql)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_feedback_is_stored_once_and_counted_in_stats(start_service, evaluator, request, db):
    kwargs = {} if db == "sqlite" else {"database_url": request.getfixturevalue("postgres_url")}
    service = start_service(evaluator, **kwargs)
    cards = service.post("/cds-services/tpi-order-sign", hook_request("order-sign")).json()["cards"]
    card = next(c for c in cards if c["source"]["topic"]["code"] == "anticoagulant")
    reason = card["overrideReasons"][0]  # as a client sends it: one of the reasons the card offered
    body = _feedback(card["uuid"], reason=reason)
    first = service.post("/cds-services/tpi-order-sign/feedback", body)
    assert first.status_code == 200 and first.json() == {"received": 1, "stored": 1, "duplicates": 0}
    again = service.post("/cds-services/tpi-order-sign/feedback", body)
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    same_instant = _feedback(card["uuid"], ts="2025-03-01T11:00:00Z", reason=reason)  # the same instant, in UTC
    assert service.post("/cds-services/tpi-order-sign/feedback", same_instant).json()["duplicates"] == 1
    _wait_rows(service.storage, "select * from audit_card", len(cards))
    stats = {s.rule_id: s for s in service.storage.rule_stats()}
    assert stats["anticoagulant"].overridden >= 1
    assert (reason["display"], 1) in stats["anticoagulant"].top_override_reasons


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda b: b.update(feedback=[]), "feedback"),
    (lambda b: b["feedback"][0].pop("card"), "feedback[0].card"),
    (lambda b: b["feedback"][0].update(outcome="ignored"), "feedback[0].outcome"),
    (lambda b: b["feedback"][0].update(outcomeTimestamp="yesterday"), "feedback[0].outcomeTimestamp"),
    (lambda b: b["feedback"][0].update(outcomeTimestamp="2025-03-01T12:00:00"), "feedback[0].outcomeTimestamp"),
    (lambda b: b["feedback"][0]["overrideReason"].update(reason={"code": "x"}), "feedback[0].overrideReason.reason.system"),
])
def test_bad_feedback_is_400_naming_the_field(start_service, fake_evaluator, mutate, field):
    service = start_service(fake_evaluator)
    body = _feedback(str(uuid.uuid4()))
    mutate(body)
    r = service.post("/cds-services/tpi-order-sign/feedback", body)
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == [field]


def test_feedback_is_503_when_the_database_cannot_store_it(start_service, fake_evaluator, tmp_path):
    service = start_service(fake_evaluator)
    card = service.post("/cds-services/tpi-order-sign", hook_request("order-sign")).json()["cards"][0]
    _wait_rows(service.storage, "select * from audit_card", 1)
    with service.storage.engine.begin() as conn:
        conn.execute(sa.text("drop table feedback"))
    r = service.post("/cds-services/tpi-order-sign/feedback", _feedback(card["uuid"], outcome="accepted"))
    assert r.status_code == 503 and r.json()["resourceType"] == "OperationOutcome"
    assert r.headers.get("retry-after")


def test_audit_row_per_call_without_patient_ids_or_tokens(start_service, evaluator):
    service = start_service(evaluator)
    token = "secret-access-token-123"
    ok = hook_request("order-sign")
    ok["fhirServer"] = "http://127.0.0.1:9/fhir"
    ok["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 60, "scope": "s", "subject": "c"}
    cards = service.post("/cds-services/tpi-order-sign", ok).json()["cards"]
    service.post("/cds-services/tpi-order-sign", b"{bad json")
    not_tpi = hook_request("order-select")
    not_tpi["context"]["selections"] = []
    service.post("/cds-services/tpi-order-select", not_tpi)
    rows = _wait_rows(service.storage, "select service, hook_instance, status, outcome, rule_ids, duration_ms from audit", 3)
    by_outcome = {r.outcome: r for r in rows}
    assert set(by_outcome) == {"evaluated", "rejected", "not-applicable"}
    evaluated = by_outcome["evaluated"]
    assert evaluated.hook_instance == ok["hookInstance"] and evaluated.status == 200 and evaluated.duration_ms > 0
    assert "anticoagulant" in evaluated.rule_ids.split()
    assert by_outcome["rejected"].status == 400
    card_rows = _wait_rows(service.storage, "select card_uuid, rule_id, indicator from audit_card", len(cards))
    assert {(r.card_uuid, r.indicator) for r in card_rows} == {(c["uuid"], c["indicator"]) for c in cards}
    dump = "\n".join(str(tuple(r)) for table in ("audit", "audit_card")
                     for r in _rows(service.storage, f"select * from {table}"))
    assert PATIENT_ID not in dump and token not in dump


def test_audit_failure_does_not_block_the_answer(start_service, evaluator):
    service = start_service(evaluator)
    with service.storage.engine.begin() as conn:
        conn.execute(sa.text("drop table audit_card"))
        conn.execute(sa.text("drop table audit"))
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign"))
    assert r.status_code == 200 and r.json()["cards"]
    deadline = time.monotonic() + 5
    while service.get("/health").json()["auditFailures"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service.get("/health").json()["auditFailures"] == 1
