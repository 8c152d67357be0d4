"""Read one input document: a FHIR Bundle, a single resource, NDJSON, or a CDS Hooks request.

Nothing here validates FHIR; it only finds the resources and says where each one came from
(`entry[3]`, `prefetch.medications.entry[0]`, `line 7`), so later stages can name it in errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ..errors import InputError
from .refs import normalize
from .prefetch_keys import CATEGORIES, category_of_key

DEFAULT_MAX_BYTES = 20 * 1024 * 1024


@dataclass(slots=True, eq=False)
class Located:
    """A resource and where it was found in its document: `where`, and for a Bundle's entry its index
    there (`location` says both). Compared by identity (one place of one document): comparing the whole
    resources was most of a list-membership test. Not frozen: a frozen dataclass sets each field through
    object.__setattr__, 0.39 us a record against 0.13 us (measured), a quarter of reading a 100-record
    request; nothing assigns to one after reading."""

    where: str
    resource: dict
    full_url: str | None = None
    entry: int | None = None

    @property
    def location(self) -> str:
        """'prefetch.conditions.entry[3]', '$', 'line 7': formatted when asked (a skipped record, an
        error), not for every entry read (read_object of the benchmark's 100-resource request 54 -> 43 us,
        measured)."""
        return self.where if self.entry is None else _entry_location(self.where, self.entry)


def _entry_location(where: str, index: int) -> str:
    """Where a Bundle's entry is: the Bundle's place and the entry's index."""
    return f"{where}.entry[{index}]" if where else f"entry[{index}]"


@dataclass
class Document:
    """What one input holds, by role."""

    name: str
    kind: str  # bundle | resource | ndjson | cds-hooks-request
    resources: list[Located] = field(default_factory=list)
    draft_orders: list[Located] | None = None
    request: dict | None = None
    notes: list[str] = field(default_factory=list)  # data the client said it could not give
    checked: set[str] = field(default_factory=set)  # record lists the client looked up (even if empty)

    @property
    def hook(self) -> str | None:
        return self.request.get("hook") if self.request else None

    def with_drafts(self, is_order=None, policy=None) -> "Document":
        """This document with its planned orders in `draft_orders`. A CDS Hooks request has them in
        context.draftOrders already; in any other input they are the draft ServiceRequests and
        MedicationRequests among the resources, which are moved out of `resources`, and every
        MedicationRequest basedOn one of those draft ServiceRequests that `is_order` accepts (the TPI
        order; any draft ServiceRequest when None), whatever its status unless it has ended
        (ENDED_INJECTATE_STATUS): an EHR may send the order's injectate as `active` beside the draft.

        With `policy` (rules/records.yaml, the one home of these status lists), a TPI ServiceRequest
        (`is_order`) whose status the ServiceRequest policy counts for the planned order (draft, active:
        an order signed before the CDS call, on-hold: awaiting prior authorisation) is the planned order too, with its basedOn
        MedicationRequests, unless it has been performed: a Procedure in the input basedOn it whose
        status the Procedure policy counts as done (completed, in-progress). A performed order is
        history (its Procedure is the past TPI the interval checks see). Only a Procedure that says so
        by basedOn marks it done: a Procedure in another status (preparation, not-done,
        entered-in-error) or not linked to the order does not, because reading a planned injection as
        history silences every check of it (a wrong all-clear), while reading a done one as planned
        only adds cards a clinician can dismiss."""
        if self.draft_orders is not None:
            return self
        # One pass over the resources sorts out the few the rules below read (a pass over all of them per
        # rule: the benchmark's 100 resources as a plain bundle 53 us, so 27 us, measured).
        orders, procedures = [], []
        for loc in self.resources:
            r = loc.resource
            rt = r.get("resourceType") if isinstance(r, dict) else None
            if rt == "ServiceRequest" or rt == "MedicationRequest":
                orders.append(loc)
            elif rt == "Procedure":
                procedures.append(r)
        drafts = [loc for loc in orders if is_plain_draft(loc.resource)]
        others = [loc for loc in orders if not is_plain_draft(loc.resource)]
        if policy is not None and is_order is not None:
            drafts += [loc for loc in others if _planned_order(loc, procedures, is_order, policy)]
        keys: set[str] = set()
        for loc in drafts:
            r = loc.resource
            if r.get("resourceType") == "ServiceRequest" and (is_order is None or is_order(r)):
                keys |= _keys_of(loc)
        if keys:
            drafts += [loc for loc in others if _based_on(loc.resource, keys)]
        chosen = {id(loc) for loc in drafts}
        rest = [loc for loc in self.resources if id(loc) not in chosen]
        return replace(self, resources=rest, draft_orders=drafts)


def _keys_of(loc: Located) -> set[str]:
    """The references a resource may be pointed at by: Type/id, its fullUrl (as written and normalised)."""
    r, keys = loc.resource, set()
    if isinstance(r.get("id"), str) and isinstance(r.get("resourceType"), str):
        keys.add(f"{r['resourceType']}/{r['id']}")
    if loc.full_url:
        keys.update((loc.full_url, normalize(loc.full_url)))
    return keys


def _planned_order(loc: Located, procedures: list[dict], is_order, policy) -> bool:
    """A TPI ServiceRequest (not a draft) in a status records.yaml counts for the planned order, with none
    of the Procedures basedOn it in a status records.yaml counts as done (see Document.with_drafts)."""
    r = loc.resource
    if not isinstance(r, dict) or r.get("resourceType") != "ServiceRequest":
        return False
    statuses = policy.for_type("ServiceRequest").status
    if statuses is None or _status(r) not in statuses or not is_order(r):
        return False
    keys = _keys_of(loc)
    done = policy.for_type("Procedure").status
    return not any((done is None or _status(p) in done) and _refers_to(p.get("basedOn"), keys) for p in procedures)


def _status(resource: dict) -> str | None:
    """A resource's status when it is a string (unvalidated JSON may hold a list or an object there)."""
    status = resource.get("status")
    return status if isinstance(status, str) else None


def _refers_to(references, keys: set[str]) -> bool:
    """Does a list of References point at one of these keys (Type/id or fullUrl)?"""
    for b in references if isinstance(references, list) else ():
        ref = b.get("reference") if isinstance(b, dict) else None
        if isinstance(ref, str) and (ref in keys or normalize(ref) in keys):
            return True
    return False


# A MedicationRequest in these statuses will not be given (FHIR R4 medicationrequest-status): it is not
# part of the planned order even when basedOn it. `completed` is not here: an injectate of this
# procedure recorded as already given still counts toward its dose.
ENDED_INJECTATE_STATUS = frozenset({"cancelled", "entered-in-error", "stopped"})


def _based_on(resource, keys: set[str]) -> bool:
    """A MedicationRequest that has not ended, basedOn one of these ServiceRequest references."""
    if (not isinstance(resource, dict) or resource.get("resourceType") != "MedicationRequest"
            or (isinstance(resource.get("status"), str) and resource["status"] in ENDED_INJECTATE_STATUS)):
        return False
    return _refers_to(resource.get("basedOn"), keys)


def is_plain_draft(resource) -> bool:
    """A draft ServiceRequest or MedicationRequest: part of the planned order in a plain bundle."""
    return (isinstance(resource, dict) and resource.get("status") == "draft"
            and resource.get("resourceType") in ("ServiceRequest", "MedicationRequest"))


def read_bytes(data: bytes, name: str = "<stdin>", max_bytes: int = DEFAULT_MAX_BYTES) -> Document:
    """Parse bytes into a Document, or raise InputError with one clear sentence."""
    if len(data) > max_bytes:
        raise InputError(f"input is {len(data):,} bytes, over the limit of {max_bytes:,}", name)
    if not data or data.isspace():  # (no copies of the input: it may be megabytes)
        raise InputError("input is empty", name)
    if data.find(b"\x00", 0, 8192) != -1:
        raise InputError("input is binary data, not JSON", name)
    try:
        obj = orjson.loads(data)  # orjson refuses text that is not UTF-8: decoded below only then
    except orjson.JSONDecodeError as first_error:
        try:
            text_ok = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"input is not UTF-8 text (byte {e.start})", name) from None
        lines = [(n, ln) for n, ln in enumerate(text_ok.splitlines(), 1) if ln.strip()]
        if len(lines) > 1 and _is_json_line(lines[0][1]):
            return _read_ndjson(lines, name)
        raise InputError(_json_error(first_error, len(data)), name) from None
    return read_object(obj, name)


def _is_json_line(line: str) -> bool:
    """NDJSON's first line is a whole JSON object by itself; a pretty-printed document's is not."""
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _json_error(e: orjson.JSONDecodeError, size: int) -> str:
    """'not valid JSON: line 12, column 3: <reason>', saying so when the text just stops (truncated)."""
    where = f"line {e.lineno}, column {e.colno}"
    if e.pos >= size or "end of data" in e.msg or "EOF" in e.msg:
        return f"not valid JSON: {where}: the text ends in the middle of the document (truncated?)"
    return f"not valid JSON: {where}: {e.msg}"


def read_object(obj: Any, name: str = "<input>") -> Document:
    """Classify an already-parsed JSON value."""
    if isinstance(obj, list):
        doc = Document(name, "resource-list")
        for i, item in enumerate(obj):
            _collect(item, f"[{i}]", doc.resources)
        return doc
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", name)
    if "hook" in obj and "resourceType" not in obj:
        return _read_hook_request(obj, name)
    if "resourceType" not in obj:
        raise InputError("not FHIR: the JSON object has no resourceType (and is not a CDS Hooks request)", name)
    rt = obj.get("resourceType")
    if not isinstance(rt, str) or not rt:
        raise InputError("not FHIR: resourceType is not a string", name)
    if rt == "Bundle":
        doc = Document(name, "bundle")
        _collect(obj, "", doc.resources)
        return doc
    doc = Document(name, "resource")
    _collect(obj, "", doc.resources)
    return doc


def _read_ndjson(lines: list[tuple[int, str]], name: str) -> Document:
    """One resource per non-empty line; `n` is the line's number in the file (blank lines counted)."""
    doc = Document(name, "ndjson")
    for n, line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise InputError(f"line {n}, column {e.colno}: not valid JSON ({e.msg})", name) from None
        if not isinstance(obj, dict) or "resourceType" not in obj:
            raise InputError(f"line {n}: not a FHIR resource (no resourceType)", name)
        _collect(obj, f"line {n}", doc.resources)
    return doc


def _collect(obj: Any, where: str, out: list[Located], full_url: str | None = None,
             listing: _Listing | None = None) -> None:
    """Append obj (flattening Bundles, recursively) to out. `listing`: of a prefetch searchset, what its
    own entries (not those of a Bundle nested in it) say about the list, noted in the same pass over them
    (a pass of its own for each: read_object of the benchmark's 100-resource request 61 -> 54 us, measured)."""
    if not isinstance(obj, dict):
        out.append(Located(where or "$", {"resourceType": None, "_invalid": obj}, full_url))
        return
    if obj.get("resourceType") == "Bundle":
        entries = obj.get("entry") or []
        if not isinstance(entries, list):
            out.append(Located(where or "$", obj, full_url))
            return
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "resource" not in entry:
                # An entry without a resource (e.g. a DELETE in a transaction) carries no data.
                continue
            fu = entry.get("fullUrl")
            r = entry["resource"]
            rt = r.get("resourceType") if isinstance(r, dict) else None
            if listing is not None and (rt == "OperationOutcome" or listing.categories is not None):
                listing.note(entry, r, rt)
            if isinstance(r, dict) and rt != "Bundle":  # the usual entry, without a call
                out.append(Located(where, r, fu if isinstance(fu, str) else None, i))
            else:
                _collect(r, _entry_location(where, i), out, fu if isinstance(fu, str) else None)
        return
    out.append(Located(where or "$", obj, full_url))


def _read_hook_request(obj: dict, name: str) -> Document:
    doc = Document(name, "cds-hooks-request", request=obj)
    context = obj.get("context")
    if not isinstance(context, dict):
        raise InputError("CDS Hooks request: context must be an object", name)
    prefetch = obj.get("prefetch") or {}
    if not isinstance(prefetch, dict):
        raise InputError("CDS Hooks request: prefetch must be an object", name)
    for key, value in prefetch.items():
        if value is None:
            doc.checked |= _categories_of_key(key)  # null = the client looked and there is no data
            continue
        if isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
            doc.notes.append(f"prefetch '{key}': the EHR could not provide it (OperationOutcome)")
            continue
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            # A searchset, even an empty one, is a list the EHR looked up: the one its key declares, else
            # those its matches and its self link make up.
            declared = _categories_of_key(key)
            listing = _Listing(None if declared else set())
            _collect(value, f"prefetch.{key}", doc.resources, listing=listing)
            doc.checked |= declared or listing.categories | _categories_of_links(value)
            doc.notes += [f"prefetch '{key}': the EHR says the list may be incomplete ({said})"
                          for said in _outcome_warnings(listing.outcomes)]
            continue
        _collect(value, f"prefetch.{key}", doc.resources)
    drafts = context.get("draftOrders")
    if drafts is not None:
        doc.draft_orders = []
        _collect(drafts, "context.draftOrders", doc.draft_orders)
    appointments = context.get("appointments")
    if appointments is not None:
        _collect(appointments, "context.appointments", doc.resources)
    return doc


def _categories_of_key(key: str) -> set[str]:
    """Which record list a prefetch key this service declares holds (medicationRequests -> medications);
    none for another key (its content, an entry or the searchset's self link, may still say)."""
    category = category_of_key(key)
    return {category} if category else set()


def _list(value) -> list:
    """value when it is a JSON array, else [] (malformed bundles are reported when their entries are read)."""
    return value if isinstance(value, list) else []


@dataclass(slots=True)
class _Listing:
    """What a searchset's own entries say about the record list it is (read by _collect)."""

    categories: set[str] | None  # the lists its matches make up; None: not asked (its prefetch key says)
    outcomes: list[dict] = field(default_factory=list)  # its OperationOutcome entries

    def note(self, entry: dict, resource, resource_type) -> None:
        """Note one entry (its resource and that resource's type, whatever JSON they are)."""
        if resource_type == "OperationOutcome":
            self.outcomes.append(resource)
        elif self.categories is not None and isinstance(resource_type, str) and resource_type in CATEGORIES:
            search = entry.get("search")
            if not isinstance(search, dict) or search.get("mode", "match") == "match":
                self.categories.add(CATEGORIES[resource_type])


def _outcome_warnings(outcomes: list[dict]) -> list[str]:
    """What the OperationOutcome entries of a searchset (search.mode 'outcome') say at severity warning or
    worse: EHRs put "the client is not authorized to see some of the data" there, beside the entries they
    did return (Epic). The list is then incomplete, and missing-data must say so."""
    out = []
    for r in outcomes:
        for issue in _list(r.get("issue")):
            if isinstance(issue, dict) and issue.get("severity") in ("fatal", "error", "warning"):
                details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
                text = issue.get("diagnostics") or details.get("text") or issue.get("code") or "an issue"
                out.append(str(text)[:200])
    return list(dict.fromkeys(out))


def _categories_of_links(bundle: dict) -> set[str]:
    """The record list a searchset's self link searched ('.../Condition?patient=1' -> conditions)."""
    cats = set()
    for link in _list(bundle.get("link")):
        if isinstance(link, dict) and link.get("relation") == "self" and isinstance(link.get("url"), str):
            path = link["url"].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            if path in CATEGORIES:
                cats.add(CATEGORIES[path])
    return cats
