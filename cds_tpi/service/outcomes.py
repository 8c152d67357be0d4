"""HTTP errors of the service and their FHIR OperationOutcome bodies."""

from __future__ import annotations

from cds_tpi.errors import CdsTpiError

# HTTP status -> OperationOutcome.issue.code (http://hl7.org/fhir/issue-type)
_ISSUE_CODE = {400: "invalid", 401: "login", 404: "not-found", 405: "not-supported", 412: "not-found",
               413: "too-long", 415: "not-supported", 500: "exception", 503: "transient"}


class HttpError(CdsTpiError):
    """An answer other than 200. `location` names the request field at fault (e.g. `context.userId`).
    Messages must never hold patient identifiers or tokens: they are logged and sent back."""

    def __init__(self, status: int, message: str, location: str = "", *, issues: list[str] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message, location)
        self.status = status
        self.issues = issues or [str(self)]
        self.headers = headers or {}

    def outcome(self) -> dict:
        """The OperationOutcome body for this error."""
        return operation_outcome(self.status, self.issues, self.location)


def operation_outcome(status: int, messages: list[str], location: str = "") -> dict:
    """A FHIR OperationOutcome with one error issue per message."""
    issue_code = _ISSUE_CODE.get(status, "processing")
    issues = []
    for message in messages:
        issue = {"severity": "error", "code": issue_code, "diagnostics": message}
        if location:
            issue["expression"] = [location]
        issues.append(issue)
    return {"resourceType": "OperationOutcome", "issue": issues}
