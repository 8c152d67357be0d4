"""CDS Hooks 2.0 feedback: validate `{"feedback": [...]}` into items for storage."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timezone
from typing import Any

from cds_tpi.service.hooks import parse_json_object
from cds_tpi.service.outcomes import HttpError
from cds_tpi.service.audit import AuditWriter
from cds_tpi.service.storage import FeedbackItem, Storage

OUTCOMES = ("accepted", "overridden")
MAX_ITEMS = 1000


def parse_feedback(body: bytes) -> list[FeedbackItem]:
    """Validate a feedback body; 400 naming the field at fault."""
    data = parse_json_object(body)
    entries = data.get("feedback")
    if not isinstance(entries, list) or not entries:
        raise HttpError(400, "required: a non-empty array", "feedback")
    if len(entries) > MAX_ITEMS:
        raise HttpError(400, f"at most {MAX_ITEMS} entries per call", "feedback")
    return [_item(entry, f"feedback[{i}]") for i, entry in enumerate(entries)]


# How long feedback waits for a card it does not find yet: the card may have been issued moments ago
# and still be in an audit queue, here (flushed first) or on another replica (written within ~0.1 s).
ISSUED_WAIT_SECONDS = 1.0


async def issued_cards(storage: Storage, audit: AuditWriter, service: str,
                       items: list[FeedbackItem]) -> dict[str, frozenset[tuple[str, str]]]:
    """The cards these feedback items name that `service` issued, with their offered override reasons."""
    wanted = {f.card_uuid for f in items}
    issued = await asyncio.to_thread(storage.issued_cards, service, sorted(wanted))
    if len(issued) == len(wanted):
        return issued
    await asyncio.to_thread(audit.flush)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ISSUED_WAIT_SECONDS
    while True:
        issued = await asyncio.to_thread(storage.issued_cards, service, sorted(wanted))
        if len(issued) == len(wanted) or loop.time() >= deadline:
            return issued
        await asyncio.sleep(0.1)


def check_issued(items: list[FeedbackItem], issued: dict[str, frozenset[tuple[str, str]]], service: str) -> None:
    """Feedback must be about a card this service issued (404 otherwise) and name, as override
    reason, one the card offered (400 otherwise). `issued`: card uuid -> offered (system, code)."""
    unknown = [i for i, f in enumerate(items) if f.card_uuid not in issued]
    if unknown:
        more = f" ({len(unknown) - 1} more entries name unknown cards)" if len(unknown) > 1 else ""
        raise HttpError(404, f"no card with this id was issued by {service}{more}", f"feedback[{unknown[0]}].card")
    for i, f in enumerate(items):
        if f.override_code is not None and (f.override_system, f.override_code) not in issued[f.card_uuid]:
            offered = ", ".join(f"{system}|{code}" for system, code in sorted(issued[f.card_uuid])) or "none"
            raise HttpError(400, f"this card did not offer this override reason (offered: {offered})",
                            f"feedback[{i}].overrideReason.reason")


def _item(entry: Any, at: str) -> FeedbackItem:
    if not isinstance(entry, dict):
        raise HttpError(400, "must be an object", at)
    card = _string(entry, "card", at, max_len=64)
    outcome = _string(entry, "outcome", at)
    if outcome not in OUTCOMES:
        raise HttpError(400, f"must be one of {', '.join(OUTCOMES)}", f"{at}.outcome")
    timestamp = _timestamp(_string(entry, "outcomeTimestamp", at), f"{at}.outcomeTimestamp")
    accepted: tuple[str, ...] = ()
    suggestions = entry.get("acceptedSuggestions")
    if suggestions is not None:
        if not isinstance(suggestions, list):
            raise HttpError(400, "must be an array", f"{at}.acceptedSuggestions")
        ids = []
        for j, suggestion in enumerate(suggestions):
            if not isinstance(suggestion, dict):
                raise HttpError(400, "must be an object", f"{at}.acceptedSuggestions[{j}]")
            ids.append(_string(suggestion, "id", f"{at}.acceptedSuggestions[{j}]", max_len=64))
        accepted = tuple(ids)
    system = code = display = comment = None
    override = entry.get("overrideReason")
    if override is not None:
        where = f"{at}.overrideReason"
        if not isinstance(override, dict):
            raise HttpError(400, "must be an object", where)
        reason = override.get("reason")
        if reason is not None:
            if not isinstance(reason, dict):
                raise HttpError(400, "must be a Coding", f"{where}.reason")
            system = _string(reason, "system", f"{where}.reason", max_len=256)
            code = _string(reason, "code", f"{where}.reason", max_len=128)
            display = _optional_string(reason, "display", f"{where}.reason", max_len=512)
        comment = _optional_string(override, "userComment", where, max_len=4000)
    return FeedbackItem(card, outcome, timestamp, accepted, system, code, display, comment)


def _string(obj: dict, name: str, at: str, max_len: int = 10_000) -> str:
    value = obj.get(name)
    if value is None:
        raise HttpError(400, "required field is missing", f"{at}.{name}")
    if not isinstance(value, str) or not value.strip():
        raise HttpError(400, "must be a non-empty string", f"{at}.{name}")
    if len(value) > max_len:
        raise HttpError(400, f"longer than {max_len} characters", f"{at}.{name}")
    return value


def _optional_string(obj: dict, name: str, at: str, max_len: int) -> str | None:
    return None if obj.get(name) is None else _string(obj, name, at, max_len)


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _timestamp(value: str, at: str) -> str:
    """RFC 3339 date-time (with offset), normalised to UTC so equal instants compare equal."""
    m = _RFC3339.fullmatch(value)
    if not m:
        raise HttpError(400, "must be an RFC 3339 date-time with a time zone", at)
    fraction = (m.group(7) or ".0")[:7]  # Python keeps microseconds
    offset = "+00:00" if m.group(8) in ("Z", "z") else m.group(8)
    text = f"{m.group(1)}-{m.group(2)}-{m.group(3)}T{m.group(4)}:{m.group(5)}:{min(int(m.group(6)), 59):02d}"
    try:
        parsed = datetime.fromisoformat(f"{text}{fraction.ljust(7, '0')}{offset}")
    except ValueError:
        raise HttpError(400, "must be an RFC 3339 date-time with a time zone", at) from None
    return parsed.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
