"""Pure helpers for FHIR datatypes (R4 and R5): dates, CodeableConcept / CodeableReference, references.

They read JSON as it came (validated or not): a value of the wrong JSON type is "nothing", never a crash.
"""

from __future__ import annotations

import re
from datetime import date

from .text import bounded_text

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def parse_date(value) -> date | None:
    """The (first) day of a FHIR date/dateTime/instant; None when unparsable."""
    if not isinstance(value, str):
        return None
    if len(value) >= 10 and value[4] == "-" and value[7] == "-":
        try:
            return date.fromisoformat(value[:10])  # the common full date / dateTime
        except ValueError:
            pass
    m = _DATE.match(value)
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1))
    except ValueError:
        return None


def codeable(cc) -> tuple[list[tuple[str, str]], list[str]]:
    """(system, code) pairs and texts of a CodeableConcept (R4) or CodeableReference (R5)."""
    if not isinstance(cc, dict):
        return [], []
    if "concept" in cc and isinstance(cc["concept"], dict):  # R5 CodeableReference
        cc = cc["concept"]
    codes, texts = [], []
    # its text first: what the clinician entered or saw ("Cellulitis of left buttock"), which a card
    # names before a coding's display ("Cellulitis of buttock")
    if cc.get("text"):
        texts.append(bounded_text(str(cc["text"])))
    codings = cc.get("coding")
    for c in codings if isinstance(codings, list) else ():
        if isinstance(c, dict):
            if isinstance(c.get("system"), str) and c["system"] and c.get("code"):
                codes.append((c["system"], str(c["code"])))
            if c.get("display"):
                texts.append(bounded_text(str(c["display"])))
    return codes, texts


def display(cc, fallback: str = "", parsed=None) -> str:
    """Text of a CodeableConcept, else its first display, else system code."""
    if isinstance(cc, dict) and isinstance(cc.get("concept"), dict):
        cc = cc["concept"]
    if isinstance(cc, dict) and cc.get("text"):
        return bounded_text(str(cc["text"]))
    codes, texts = parsed if parsed is not None else codeable(cc)
    return texts[0] if texts else (f"{codes[0][0].rsplit('/', 1)[-1]} {codes[0][1]}" if codes else fallback)


def coding_code(cc) -> str | None:
    """The first code of a CodeableConcept (e.g. a clinicalStatus)."""
    if isinstance(cc, dict):
        codings = cc.get("coding")
        for c in codings if isinstance(codings, list) else ():
            if isinstance(c, dict) and c.get("code"):
                return str(c["code"])
    return None


def printable(text: str) -> str:
    """text with lone surrogates written as \\udXXX escapes. Names of skipped records come from input that
    was not valid (e.g. a Python dict holding "\\ud800"); durable-rules rejects such strings, and no JSON
    encoder writes them as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
