"""Free text taken from records (names, `text`, `display`, dose text): one cap for everyone.

A record's text reaches regular expressions (value-set text matching, dose parsing) and card
templates. Bounding it once, where it is read, keeps every later step linear in a small number and
keeps a 5 MB `display` from costing more than a short one. The cap is far above any real drug,
diagnosis or site name."""

from __future__ import annotations

MAX_TEXT_CHARS = 1000


def bounded_text(value: object, limit: int = MAX_TEXT_CHARS) -> str:
    """`value` as a string of at most `limit` characters (non-strings give ""). The cut is plain:
    a name that long is not a name a rule can match anyway."""
    if not isinstance(value, str):
        return ""
    return value if len(value) <= limit else value[:limit]


__all__ = ["MAX_TEXT_CHARS", "bounded_text"]
