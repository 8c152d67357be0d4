"""Feedback and audit records in a real database through SQLAlchemy 2 (Core).

SQLite file by default; PostgreSQL for a `postgresql://` URL (psycopg 3 driver). The schema is
created on start; `schema_version` records its version so later changes can migrate forward.
Nothing stored identifies a patient and no token is stored."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

SCHEMA_VERSION = 3  # 2: card_override_reason (the override reasons each issued card offered); 3: audit.caller

metadata = sa.MetaData()

schema_version = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, primary_key=True))

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("hook_instance", sa.String(64), nullable=True),
    sa.Column("status", sa.Integer, nullable=False),  # HTTP status answered
    sa.Column("outcome", sa.String(32), nullable=False),  # evaluated | not-applicable | rejected | error
    sa.Column("rule_ids", sa.Text, nullable=False, default=""),  # rules fired, space-separated
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("caller", sa.String(600), nullable=True),  # the verified JWT's iss (and sub); null in open mode
)

audit_card = sa.Table(
    "audit_card",
    metadata,
    sa.Column("audit_id", sa.Integer, sa.ForeignKey("audit.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("card_uuid", sa.String(64), primary_key=True),
    sa.Column("rule_id", sa.String(128), nullable=True, index=True),
    sa.Column("indicator", sa.String(16), nullable=False),
    sa.Index("ix_audit_card_uuid", "card_uuid"),
)

# The override reasons each issued card offered: feedback naming another reason is refused (400).
card_override_reason = sa.Table(
    "card_override_reason",
    metadata,
    sa.Column("card_uuid", sa.String(64), primary_key=True),
    sa.Column("system", sa.String(256), primary_key=True),
    sa.Column("code", sa.String(128), primary_key=True),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("card_uuid", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("outcome_timestamp", sa.String(40), nullable=False),  # RFC 3339, normalised to UTC
    sa.Column("accepted_suggestions", sa.Text, nullable=True),  # JSON array of suggestion uuids
    sa.Column("override_system", sa.String(256), nullable=True),
    sa.Column("override_code", sa.String(128), nullable=True),
    sa.Column("override_display", sa.String(512), nullable=True),
    sa.Column("user_comment", sa.Text, nullable=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_once"),
)

jwt_jti = sa.Table(
    "jwt_jti",
    metadata,
    sa.Column("iss", sa.String(512), primary_key=True),
    sa.Column("jti", sa.String(256), primary_key=True),
    sa.Column("exp", sa.BigInteger, nullable=False, index=True),
)


@dataclass(frozen=True)
class AuditRecord:
    """One service call, without patient identifiers or tokens."""

    at: datetime
    service: str
    hook_instance: str | None
    status: int
    outcome: str
    duration_ms: float
    rule_ids: tuple[str, ...] = ()
    cards: tuple[tuple[str, str | None, str], ...] = ()  # (uuid, rule id, indicator)
    override_reasons: tuple[tuple[str, str, str], ...] = ()  # (card uuid, system, code) offered
    caller: str | None = None  # "iss" or "iss sub" of the verified JWT


@dataclass(frozen=True)
class FeedbackItem:
    """One validated feedback entry."""

    card_uuid: str
    outcome: str
    outcome_timestamp: str
    accepted_suggestions: tuple[str, ...] = ()
    override_system: str | None = None
    override_code: str | None = None
    override_display: str | None = None
    user_comment: str | None = None


@dataclass(frozen=True)
class RuleStats:
    """Per-rule counts for `cds-tpi stats`."""

    rule_id: str
    shown: int
    accepted: int
    overridden: int
    top_override_reasons: tuple[tuple[str, int], ...]


def normalise_url(url: str) -> str:
    """postgresql:// and postgres:// use the psycopg 3 driver; other URLs are kept."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redact_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return sa.engine.make_url(normalise_url(url)).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


class Storage:
    """The service's database: create the schema, write audit and feedback, read stats."""

    def __init__(self, url: str):
        self.url = normalise_url(url)
        self.dialect = self.url.split(":", 1)[0].split("+", 1)[0]
        kwargs: dict[str, Any] = {"future": True}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"timeout": 10}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=5,
                          connect_args={"connect_timeout": 5})
        self.engine: Engine = sa.create_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    def create_schema(self) -> None:
        """Create missing tables and record the schema version (idempotent; safe to race)."""
        try:
            metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.DBAPIError:
            # another worker created them between the check and the CREATE: check again
            metadata.create_all(self.engine, checkfirst=True)
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            if found is None:
                try:
                    conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
                except IntegrityError:
                    pass
            elif found > SCHEMA_VERSION:
                raise RuntimeError(f"database schema version {found} is newer than this program ({SCHEMA_VERSION})")
            elif found < SCHEMA_VERSION:  # 1 -> 2 only added a table, which create_all made; 3: a column
                conn.execute(schema_version.update().values(version=SCHEMA_VERSION))
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """ALTER TABLE for columns added after a table was created (create_all adds only tables)."""
        if "caller" in {c["name"] for c in sa.inspect(self.engine).get_columns("audit")}:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE audit ADD COLUMN caller VARCHAR(600)"))
        except sa.exc.DBAPIError:  # another worker added it first
            if "caller" not in {c["name"] for c in sa.inspect(self.engine).get_columns("audit")}:
                raise

    def check_writable(self) -> None:
        """Raise when the database accepts reads but not writes (e.g. a read-only SQLite file):
        rewrites the schema_version row with its own value, in a committed transaction."""
        with self.engine.begin() as conn:
            conn.execute(schema_version.update().values(version=schema_version.c.version))

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()

    def write_audits(self, records: Sequence[AuditRecord]) -> None:
        """Insert audit rows and their cards, all in one transaction."""
        if not records:
            return
        with self.engine.begin() as conn:
            ids = conn.execute(
                audit.insert().returning(audit.c.id, sort_by_parameter_order=True),
                [{"at": r.at, "service": r.service, "hook_instance": r.hook_instance, "status": r.status,
                  "outcome": r.outcome, "rule_ids": " ".join(r.rule_ids), "duration_ms": r.duration_ms,
                  "caller": r.caller[:600] if r.caller else None}
                 for r in records],
            ).scalars().all()
            cards = [{"audit_id": audit_id, "card_uuid": u, "rule_id": rule, "indicator": i}
                     for audit_id, r in zip(ids, records) for u, rule, i in r.cards]
            if cards:
                conn.execute(audit_card.insert(), cards)
            reasons = {(u, system, code) for r in records for u, system, code in r.override_reasons}
            if reasons:
                insert = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(card_override_reason)
                conn.execute(insert.on_conflict_do_nothing(),
                             [{"card_uuid": u, "system": system, "code": code} for u, system, code in sorted(reasons)])

    def write_audit(self, record: AuditRecord) -> None:
        """Insert one audit row and its cards."""
        self.write_audits([record])

    def store_feedback(self, service: str, items: Sequence[FeedbackItem]) -> int:
        """Insert feedback idempotently (same card+outcome+timestamp = one row); returns rows added."""
        now = datetime.now(timezone.utc)
        rows = [
            {
                "service": service, "card_uuid": f.card_uuid, "outcome": f.outcome,
                "outcome_timestamp": f.outcome_timestamp,
                "accepted_suggestions": json.dumps(list(f.accepted_suggestions)) if f.accepted_suggestions else None,
                "override_system": f.override_system, "override_code": f.override_code,
                # userComment is free text a clinician types: it may name the patient, so it is not
                # stored (the column stays for old rows; issue 10)
                "override_display": f.override_display, "user_comment": None, "received_at": now,
            }
            for f in items
        ]
        if not rows:
            return 0
        insert = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(feedback)
        statement = (insert.on_conflict_do_nothing(index_elements=["card_uuid", "outcome", "outcome_timestamp"])
                     .returning(feedback.c.id))
        added = 0
        with self.engine.begin() as conn:
            for row in rows:  # one by one: a returned id = a new row, none = a duplicate (both dialects)
                added += len(conn.execute(statement, row).all())
        return added

    def issued_cards(self, service: str, card_uuids: Sequence[str]) -> dict[str, frozenset[tuple[str, str]]]:
        """The cards among `card_uuids` that `service` issued, each with the override reasons
        (system, code) it offered."""
        wanted = sorted(set(card_uuids))
        if not wanted:
            return {}
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(audit_card.c.card_uuid).distinct()
                .select_from(audit_card.join(audit, audit.c.id == audit_card.c.audit_id))
                .where(audit.c.service == service, audit_card.c.card_uuid.in_(wanted))).scalars().all()
            offered: dict[str, set[tuple[str, str]]] = {u: set() for u in found}
            if found:
                for u, system, code in conn.execute(
                        sa.select(card_override_reason.c.card_uuid, card_override_reason.c.system,
                                  card_override_reason.c.code).where(card_override_reason.c.card_uuid.in_(found))):
                    offered[u].add((system, code))
        return {u: frozenset(r) for u, r in offered.items()}

    def claim_jti(self, iss: str, jti: str, exp: int) -> bool:
        """Record a JWT id; False if it is already there (a replay). Expired ids are purged."""
        with self.engine.begin() as conn:
            conn.execute(jwt_jti.delete().where(jwt_jti.c.exp < int(datetime.now(timezone.utc).timestamp()) - 3600))
            insert = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(jwt_jti)
            statement = insert.on_conflict_do_nothing(index_elements=["iss", "jti"]).returning(jwt_jti.c.jti)
            return len(conn.execute(statement, {"iss": iss, "jti": jti, "exp": exp}).all()) == 1

    def rule_stats(self, top: int = 3) -> list[RuleStats]:
        """Per rule: cards shown, accepted, overridden and the most frequent override reasons."""
        rule = sa.func.coalesce(audit_card.c.rule_id, "(none)")
        with self.engine.connect() as conn:
            shown = dict(conn.execute(sa.select(rule, sa.func.count()).group_by(rule)).all())
            outcome_counts: dict[tuple[str, str], int] = {}
            joined = audit_card.join(feedback, feedback.c.card_uuid == audit_card.c.card_uuid)
            # a card counts once per outcome even when its feedback was sent at several times
            per_card = (sa.select(rule.label("rule"), feedback.c.outcome, audit_card.c.card_uuid)
                        .select_from(joined).distinct().subquery())
            for r, outcome, n in conn.execute(
                sa.select(per_card.c.rule, per_card.c.outcome, sa.func.count())
                .group_by(per_card.c.rule, per_card.c.outcome)
            ):
                outcome_counts[(r, outcome)] = n
            reason = sa.func.coalesce(feedback.c.override_display, feedback.c.override_code, "(no reason given)")
            reasons: dict[str, list[tuple[str, int]]] = {}
            for r, text, n in conn.execute(
                sa.select(rule, reason, sa.func.count()).select_from(joined)
                .where(feedback.c.outcome == "overridden").group_by(rule, reason)
                .order_by(rule, sa.func.count().desc(), reason)
            ):
                reasons.setdefault(r, []).append((text, n))
        return [
            RuleStats(r, shown[r], outcome_counts.get((r, "accepted"), 0), outcome_counts.get((r, "overridden"), 0),
                      tuple(reasons.get(r, [])[:top]))
            for r in sorted(shown)
        ]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets several uvicorn workers read while one writes; busy_timeout waits for the lock
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
