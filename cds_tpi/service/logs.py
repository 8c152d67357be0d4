"""Log lines as JSON objects (`cds-tpi serve --log-format json`), one per line, for log collectors.

Each line has time (UTC, RFC 3339), level, logger and message; a record logged with
`extra={"fields": {...}}` (the call and 401 lines of app.py) adds those fields. What is logged is
the same as in text form: never an access token, a JWT or a patient identifier."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update({k: v for k, v in fields.items() if k not in data})
        if record.exc_info and record.exc_info[0] is not None:
            data["exception"] = record.exc_info[0].__name__  # the type only: a message may quote patient data
        return orjson.dumps(data, default=str).decode()
