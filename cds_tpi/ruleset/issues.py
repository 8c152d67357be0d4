"""Rule errors as data: an Issue has a location (file, line, and the element's JSON path), a
message and a severity. Checks return Issues and never raise; only the CLI formats them."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Location:
    """Where a problem is: a file, the 1-based line in it (0 when unknown), and the JSON path of the
    element inside the document (for a rule file, e.g. ("when", 0, "match", "drug", "where"))."""

    file: str = ""
    line: int = 0
    pointer: tuple = ()

    def __str__(self) -> str:
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        return self.file


@dataclass(frozen=True)
class Issue:
    """One problem in the rules: `str(issue)` is the lint line `file:line: message`."""

    location: Location
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        where = str(self.location)
        return f"{where}: {self.message}" if where else self.message

    def at(self, file: str, line: int) -> "Issue":
        """The same issue, placed in a file at a line (checks know only the JSON path)."""
        return replace(self, location=replace(self.location, file=file, line=line))


def issue(pointer, message: str, severity: str = ERROR) -> Issue:
    """An issue at a JSON path inside the document being checked (file and line filled in later)."""
    return Issue(Location(pointer=tuple(pointer)), message, severity)


_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<message>.*)$", re.S)


def from_text(text: str) -> Issue:
    """An Issue from a `file:line: message` line (what the value set and record-policy loaders write)."""
    m = _LINE.match(text)
    if m:
        return Issue(Location(m["file"], int(m["line"])), m["message"])
    file, sep, message = text.partition(": ")
    return Issue(Location(file), message) if sep else Issue(Location(), text)
