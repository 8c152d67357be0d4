"""Issue 9 item 14: feedback is checked against the cards this service issued (remembered in the
database with the override reasons each offered): an unknown card is 404, a reason the card did not
offer is 400, and nothing of a refused call is stored."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from cds_tpi.service.storage import SCHEMA_VERSION, AuditRecord, Storage, metadata
from conftest import hook_request

pytestmark = pytest.mark.timeout(120)

FB = "/cds-services/tpi-order-sign/feedback"


def _item(card: str, reason: dict | None = None, comment: str | None = None) -> dict:
    item = {"card": card, "outcome": "overridden" if reason or comment else "accepted",
            "outcomeTimestamp": "2026-11-25T10:00:00Z"}
    if reason or comment:
        item["overrideReason"] = {k: v for k, v in (("reason", reason), ("userComment", comment)) if v}
    return item


def _stored(storage: Storage) -> int:
    with storage.engine.connect() as conn:
        return conn.execute(sa.text("select count(*) from feedback")).scalar()


@pytest.fixture
def issued(start_service, evaluator):
    """A live service and the anticoagulant card it just issued (feedback is sent at once: the card
    may still be in the audit queue)."""
    service = start_service(evaluator)
    cards = service.post("/cds-services/tpi-order-sign", hook_request("order-sign")).json()["cards"]
    return service, next(c for c in cards if c["source"]["topic"]["code"] == "anticoagulant")


def test_feedback_on_an_offered_reason_right_after_the_card_is_stored(issued):
    service, card = issued
    r = service.post(FB, {"feedback": [_item(card["uuid"], card["overrideReasons"][1])]})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 1
    comment_only = service.post(FB, {"feedback": [{**_item(card["uuid"], comment="patient declined"),
                                                   "outcomeTimestamp": "2026-11-25T10:05:00Z"}]})
    assert comment_only.status_code == 200, comment_only.text


def test_unknown_card_is_404_with_an_operation_outcome(issued):
    service, card = issued
    body = {"feedback": [_item(card["uuid"]), _item(str(uuid.uuid4()))]}
    r = service.post(FB, body)
    assert r.status_code == 404, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-found" and outcome["issue"][0]["expression"] == ["feedback[1].card"]
    assert _stored(service.storage) == 0  # the known card's entry is not stored either


def test_a_card_of_another_service_is_unknown_here(issued):
    service, card = issued
    r = service.post("/cds-services/tpi-patient-view/feedback", {"feedback": [_item(card["uuid"])]})
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("reason", [
    {"system": "https://cds-tpi.example.org/CodeSystem/override-reason", "code": "not-offered"},
    {"system": "https://other.example.org/override", "code": "therapy-held"},  # an offered code, another system
])
def test_an_override_reason_the_card_did_not_offer_is_400(issued, reason):
    service, card = issued
    r = service.post(FB, {"feedback": [_item(card["uuid"], reason)]})
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["feedback[0].overrideReason.reason"]
    assert "therapy-held" in issue["diagnostics"]  # says what the card offered
    assert _stored(service.storage) == 0


def test_a_card_that_offered_no_reason_takes_none(start_service, evaluator):
    service = start_service(evaluator)
    cards = service.post("/cds-services/tpi-order-sign", hook_request("order-sign")).json()["cards"]
    plain = next((c for c in cards if not c.get("overrideReasons")), None)
    if plain is None:
        pytest.skip("every card of the sample offers override reasons")
    reason = {"system": "https://cds-tpi.example.org/CodeSystem/override-reason", "code": "therapy-held"}
    r = service.post(FB, {"feedback": [_item(plain["uuid"], reason)]})
    assert r.status_code == 400 and "offered: none" in r.text


def test_issued_cards_and_reasons_in_storage(tmp_path):
    storage = Storage(f"sqlite:///{tmp_path}/s.sqlite3")
    storage.create_schema()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    storage.write_audits([AuditRecord(datetime.now(timezone.utc), "tpi-order-sign", None, 200, "evaluated", 1.0,
                                      ("r1",), ((a, "r1", "warning"), (b, "r2", "info")),
                                      ((a, "sys", "c1"), (a, "sys", "c2")))])
    assert storage.issued_cards("tpi-order-sign", [a, b, "nope"]) == {
        a: frozenset({("sys", "c1"), ("sys", "c2")}), b: frozenset()}
    assert storage.issued_cards("tpi-patient-view", [a]) == {}


def test_a_version_1_database_is_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path}/v1.sqlite3"
    engine = sa.create_engine(url)
    metadata.create_all(engine, tables=[t for t in metadata.sorted_tables if t.name != "card_override_reason"])
    with engine.begin() as conn:
        conn.execute(sa.text("insert into schema_version (version) values (1)"))
    engine.dispose()
    storage = Storage(url)
    storage.create_schema()
    with storage.engine.connect() as conn:
        assert conn.execute(sa.text("select version from schema_version")).scalar() == SCHEMA_VERSION
    assert storage.issued_cards("tpi-order-sign", ["x"]) == {}


def test_audit_flush_waits_only_for_records_queued_before_it(tmp_path):
    import threading
    import time as _time

    from cds_tpi.service.audit import AuditWriter

    class SlowStorage:
        def __init__(self):
            self.written = []

        def write_audits(self, batch):
            _time.sleep(0.05)
            self.written += batch

    storage = SlowStorage()
    writer = AuditWriter(storage, max_batch=1, linger_seconds=0).start()
    record = AuditRecord(datetime.now(timezone.utc), "tpi-order-sign", None, 200, "evaluated", 1.0)
    writer.submit(record)
    stop = threading.Event()

    def keep_submitting():  # a busy service: the queue never empties
        while not stop.is_set():
            writer.submit(record)
            _time.sleep(0.01)

    feeder = threading.Thread(target=keep_submitting)
    feeder.start()
    try:
        assert writer.flush(timeout=2.0)
        assert len(storage.written) >= 1
    finally:
        stop.set()
        feeder.join()
        writer.close()
