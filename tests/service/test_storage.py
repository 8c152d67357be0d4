"""Storage against SQLite and against a real PostgreSQL cluster started by the fixture."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from cds_tpi.service.storage import SCHEMA_VERSION, AuditRecord, FeedbackItem, Storage, normalise_url, redact_url

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.sqlite3"
    else:
        base = request.getfixturevalue("postgres_url")
        # a fresh schema per test: a new database on the same cluster
        name = "t_" + uuid.uuid4().hex[:12]
        admin = sa.create_engine(normalise_url(base), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        admin.dispose()
        url = base.rsplit("/", 1)[0] + "/" + name
    store = Storage(url)
    store.create_schema()
    yield store
    store.dispose()


def _audit(cards=(), rules=()) -> AuditRecord:
    return AuditRecord(datetime.now(timezone.utc), "tpi-order-sign", str(uuid.uuid4()), 200, "evaluated", 4.2,
                       tuple(rules), tuple(cards))


def test_schema_creation_is_idempotent(storage):
    storage.create_schema()
    storage.create_schema()
    with storage.engine.connect() as conn:
        assert conn.execute(sa.text("select version from schema_version")).scalar() == SCHEMA_VERSION


def test_feedback_is_idempotent(storage):
    card = str(uuid.uuid4())
    item = FeedbackItem(card, "overridden", "2025-01-01T10:00:00.000000Z", override_system="s", override_code="c",
                        override_display="Held already")
    assert storage.store_feedback("tpi-order-sign", [item, item]) == 1
    assert storage.store_feedback("tpi-order-sign", [item]) == 0
    later = FeedbackItem(card, "overridden", "2025-01-01T10:05:00.000000Z")
    assert storage.store_feedback("tpi-order-sign", [later]) == 1
    with storage.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from feedback")).scalar() == 2


def test_stats_per_rule(storage):
    c1, c2, c3 = (str(uuid.uuid4()) for _ in range(3))
    storage.write_audit(_audit([(c1, "anticoagulant", "warning"), (c2, "missing-data", "info")],
                               ["anticoagulant", "missing-data"]))
    storage.write_audit(_audit([(c3, "anticoagulant", "warning")], ["anticoagulant"]))
    storage.write_audit(_audit())  # a call without cards
    storage.store_feedback("tpi-order-sign", [
        FeedbackItem(c1, "overridden", "2025-01-01T10:00:00.000000Z", override_system="s", override_code="held",
                     override_display="Held already"),
        FeedbackItem(c1, "overridden", "2025-01-01T11:00:00.000000Z", override_system="s", override_code="held",
                     override_display="Held already"),
        FeedbackItem(c3, "accepted", "2025-01-01T10:00:00.000000Z", accepted_suggestions=("s1",)),
    ])
    stats = {s.rule_id: s for s in storage.rule_stats()}
    assert (stats["anticoagulant"].shown, stats["anticoagulant"].accepted, stats["anticoagulant"].overridden) == (2, 1, 1)
    assert stats["anticoagulant"].top_override_reasons == (("Held already", 2),)
    assert (stats["missing-data"].shown, stats["missing-data"].accepted) == (1, 0)


def test_jti_claims(storage):
    assert storage.claim_jti("iss", "j1", 4_000_000_000)
    assert not storage.claim_jti("iss", "j1", 4_000_000_000)
    assert storage.claim_jti("other-iss", "j1", 4_000_000_000)


def test_url_normalisation_and_redaction():
    assert normalise_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalise_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
    assert "secret" not in redact_url("postgresql://u:secret@h/db")
