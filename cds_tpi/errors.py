"""One error root for cds-tpi; every error carries where it happened."""

from __future__ import annotations


class CdsTpiError(Exception):
    """Base error. `location` is a file:line, a FHIR element path, or empty."""

    def __init__(self, message: str, location: str = ""):
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class InputError(CdsTpiError):
    """Input that is not usable at all (not JSON, not FHIR, empty, too big, binary)."""


class RuleError(CdsTpiError):
    """A rule or value set file is invalid."""


class EngineError(CdsTpiError):
    """The rules engine failed while evaluating (never swallowed)."""
