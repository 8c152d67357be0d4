"""Database faults: unusable at start (refuse to start), unusable mid-run (keep answering cards,
feedback 503 until it can be stored, audit failures counted and logged), and recovery (a retried
feedback is stored exactly once).

Policy (docs/reliability.md): at start an unwritable database is a deployment error an operator is
watching, so `cds-tpi serve` exits 1 with a clear message; mid-run the service is in the clinical
path, so it degrades instead of stopping.

A read-only SQLite file is made with `chattr +i` (the tests run as root, which ignores file modes;
the immutable flag also fails writes on descriptors already open). PostgreSQL is the fixture's
cluster, stopped with `pg_ctl stop -m fast` and started again on the same port.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from cds_tpi.service.storage import Storage, normalise_url
from conftest import REPO, free_port, hook_request
from tests.cdshooks import assert_cds_response

pytestmark = pytest.mark.timeout(180)

FAST = 3.0  # seconds: a 503 must come back this fast (no waiting on a dead database)


def _feedback(card: str, ts: str = "2025-03-01T12:00:00Z") -> dict:
    return {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": ts, "overrideReason": {
        "reason": {"system": "https://cds-tpi.example.org/CodeSystem/override-reason", "code": "therapy-held",
                   "display": "Held"}}}]}  # one of the reasons the anticoagulant card offers


def _count(storage: Storage, card: str) -> int:
    with storage.engine.connect() as conn:
        return conn.execute(sa.text("select count(*) from feedback where card_uuid = :c"), {"c": card}).scalar()


def _audit_rows(storage: Storage, hook_instance: str) -> int:
    with storage.engine.connect() as conn:
        return conn.execute(sa.text("select count(*) from audit where hook_instance = :h"), {"h": hook_instance}).scalar()


def _timed(fn, *args, **kwargs):
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - started


def _chattr(flag: str, *paths: Path) -> bool:
    existing = [str(p) for p in paths if p.exists()]
    if shutil.which("chattr") is None or not existing:
        return False
    return subprocess.run(["chattr", flag, *existing], capture_output=True).returncode == 0


@pytest.fixture
def immutable():
    """make(path): set the immutable flag on a SQLite file and its WAL; always cleared at teardown."""
    touched: list[Path] = []

    def make(db: Path) -> None:
        files = [db, Path(f"{db}-wal")]
        if os.geteuid() != 0 or not _chattr("+i", *files):
            pytest.skip("cannot make a file read-only for this user here (needs root and chattr on ext4/xfs)")
        touched.extend(files)

    def undo() -> None:
        _chattr("-i", *touched)
        touched.clear()

    make.undo = undo  # type: ignore[attr-defined]
    yield make
    undo()


# --- at start -----------------------------------------------------------------------------------

def _serve(tmp_path: Path, database_url: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from cds_tpi.cli.serve import serve; serve()", "--port", str(free_port()),
         "--database-url", database_url], cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)})


def test_serve_refuses_to_start_on_a_read_only_sqlite_file(tmp_path, immutable):
    db = tmp_path / "ro.sqlite3"
    store = Storage(f"sqlite:///{db}")
    store.create_schema()  # an existing, valid database ...
    store.dispose()
    immutable(db)  # ... that cannot be written
    done, elapsed = _timed(_serve, tmp_path, f"sqlite:///{db}")
    assert done.returncode == 1, done.stderr
    assert "database not usable" in done.stderr and "cannot be written" in done.stderr
    assert "readonly database" in done.stderr and "Traceback" not in done.stderr
    assert elapsed < 30


def test_serve_refuses_to_start_when_postgresql_is_down(tmp_path):
    done, elapsed = _timed(_serve, tmp_path, f"postgresql://cds@127.0.0.1:{free_port()}/cdstpi")
    assert done.returncode == 1, done.stderr
    assert "database not usable" in done.stderr and "Connection refused" in done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 30


# --- mid-run ----------------------------------------------------------------------------------

@pytest.fixture
def fresh_postgres(postgres_cluster):
    """A new database on the session cluster (isolated rows); the cluster is running afterwards."""
    name = "f_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(normalise_url(postgres_cluster.url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    yield postgres_cluster, postgres_cluster.url.rsplit("/", 1)[0] + "/" + name
    if not postgres_cluster.is_running():
        postgres_cluster.start()


@contextmanager
def _broken(db_kind: str, service, immutable, cluster):
    """The database unusable inside the block; usable again after it."""
    if db_kind == "sqlite":
        db = Path(service.config.database_url.removeprefix("sqlite:///"))
        immutable(db)
        try:
            yield
        finally:
            immutable.undo()
    else:
        cluster.stop("fast")
        try:
            yield
        finally:
            cluster.start()


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"])
def test_database_lost_mid_run(db_kind, start_service, evaluator, immutable, request, caplog):
    cluster = None
    kwargs = {}
    if db_kind == "postgresql":
        cluster, kwargs["database_url"] = request.getfixturevalue("fresh_postgres")
    service = start_service(evaluator, **kwargs)
    fb = "/cds-services/tpi-order-sign/feedback"

    # healthy: a call, its audit row, a feedback
    before = hook_request("order-sign")
    r = service.post("/cds-services/tpi-order-sign", before)
    assert r.status_code == 200
    assert_cds_response(r.json())
    card = next(c["uuid"] for c in r.json()["cards"] if c["source"]["topic"]["code"] == "anticoagulant")
    assert service.post(fb, _feedback(card)).json()["stored"] == 1
    _wait(lambda: _audit_rows(service.storage, before["hookInstance"]) == 1)
    failures_before = service.get("/health").json()["auditFailures"]

    # a card issued before the outage whose feedback arrives while the database is down
    second = hook_request("order-sign")
    lost = next(c["uuid"] for c in service.post("/cds-services/tpi-order-sign", second).json()["cards"]
                if c["source"]["topic"]["code"] == "anticoagulant")
    _wait(lambda: _audit_rows(service.storage, second["hookInstance"]) == 1)
    with caplog.at_level(logging.INFO, logger="cds_tpi.service"):
        with _broken(db_kind, service, immutable, cluster):
            # feedback: 503 + Retry-After, fast, never 200
            for _ in range(3):
                r, elapsed = _timed(service.post, fb, _feedback(lost))
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] and r.json()["resourceType"] == "OperationOutcome"
                assert elapsed < FAST, f"503 took {elapsed:.1f} s"
            # clinical answers go on, in normal time; their audit rows fail, counted in /health
            during = []
            for _ in range(3):
                call = hook_request("order-sign")
                during.append(call["hookInstance"])
                r, elapsed = _timed(service.post, "/cds-services/tpi-order-sign", call)
                assert r.status_code == 200, r.text
                assert_cds_response(r.json())
                assert "anticoagulant" in {c["source"]["topic"]["code"] for c in r.json()["cards"]}
                assert elapsed < FAST
            _wait(lambda: service.get("/health").json()["auditFailures"] >= failures_before + 3)
            health = service.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
    assert any("audit row(s) not written" in m for m in caplog.messages), caplog.messages
    assert any("feedback not stored" in m for m in caplog.messages)

    # the database is back: the client's retry is stored, exactly once
    _wait(lambda: service.post(fb, _feedback(lost)).status_code == 200, timeout=20)
    again = service.post(fb, _feedback(lost))
    assert again.status_code == 200 and again.json() == {"received": 1, "stored": 0, "duplicates": 1}
    assert _count(service.storage, lost) == 1
    assert _count(service.storage, card) == 1  # stored before the outage, not lost or doubled
    # audit writing resumed; rows of calls made during the outage were dropped (and counted), not replayed
    after = hook_request("order-sign")
    assert service.post("/cds-services/tpi-order-sign", after).status_code == 200
    _wait(lambda: _audit_rows(service.storage, after["hookInstance"]) == 1)
    assert all(_audit_rows(service.storage, h) == 0 for h in during)
    failures = service.get("/health").json()["auditFailures"]
    assert failures >= failures_before + 3


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the time limit")
        time.sleep(0.1)
