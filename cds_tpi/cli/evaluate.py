"""`cds-tpi evaluate`: cards for each input file."""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import click
import orjson

from ..errors import CdsTpiError, InputError
from ..fhir.read import Document, Located, read_bytes
from ..fhir.validate import model_class, unknown_type_message, version_hint
from ..order import parse_injectates, synthesize
from ..ruleset.model import SEVERITY
from .options import expand_inputs, fhir_version_option, injectates_of, load_evaluator, max_bytes_option, read_input, rules_option

_MARK = {"critical": "CRITICAL", "warning": "WARNING ", "info": "INFO    "}


def _parse_now(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not an ISO date or date-time (e.g. 2026-11-24)", param_hint="--now")
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def add_order(doc: Document, evaluator, injectate: str | None, sites: tuple[str, ...]) -> tuple[Document, str | None]:
    """doc with a synthesized TPI order added, unless it has one (then a note says so)."""
    doc = doc.with_drafts(evaluator.is_tpi, evaluator.book.records)
    if evaluator.is_tpi_order([loc.resource for loc in doc.draft_orders]):
        return doc, "already has a trigger point injection order; --injectate/--site ignored"
    patient = next((loc.resource for loc in doc.resources
                    if isinstance(loc.resource, dict) and loc.resource.get("resourceType") == "Patient"), None)
    patient_ref = f"Patient/{patient['id']}" if patient and isinstance(patient.get("id"), str) else None
    if patient_ref is None and doc.request and isinstance(doc.request.get("context"), dict):
        pid = doc.request["context"].get("patientId")
        patient_ref = f"Patient/{pid}" if isinstance(pid, str) else None
    order = synthesize(parse_injectates(injectate) if injectate else [], list(sites), patient_ref, evaluator.book.terminology,
                       evaluator.book.records, evaluator.fhir_version)
    located = [Located(f"--injectate/--site[{i}]", r) for i, r in enumerate(order)]
    return replace(doc, draft_orders=doc.draft_orders + located), None


@dataclass
class Outcome:
    """What one input gave: a CDS Hooks response and its findings, or the error that stopped it."""

    name: str
    response: dict | None = None
    findings: list = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def reasons(self, rule_id: str) -> list[str]:
        """The rendered notes of a rule's finding (for missing-data: what was not checked, and why)."""
        return [n for f in self.findings if f.rule_id == rule_id for n in f.notes]


def unknown_types(doc: Document, version: str) -> list[str]:
    """Resources whose resourceType is not a FHIR resource type of `version` (a typo such as
    'MedicationStatment' would otherwise be ignored without a word). A single such resource as the
    whole input is an InputError; inside a bundle each is returned as a gap for the missing-data card."""
    found = []
    for loc in doc.resources + (doc.draft_orders or []):
        rt = loc.resource.get("resourceType") if isinstance(loc.resource, dict) else None
        if isinstance(rt, str) and model_class(rt, version) is None:
            if doc.kind == "resource":
                raise InputError(unknown_type_message(rt, version), doc.name)
            where = "" if loc.location == "$" else f" at {loc.location}"
            found.append(f"a record{where} was ignored: {unknown_type_message(rt, version)}")
    return found


def _version_note(doc: Document, version: str) -> str | None:
    """'N skipped resource(s) look like FHIR R5: try --fhir-version R5', when they do."""
    from ..pipeline import READ_TYPES

    other, count = None, 0
    for loc in doc.resources + (doc.draft_orders or []):
        r = loc.resource
        if isinstance(r, dict) and r.get("resourceType") in READ_TYPES:
            hint = version_hint(r, version)
            if hint:
                count += 1
                other = "R5" if version == "R4" else "R4"
    if not count:
        return None
    return (f"{count} resource(s) skipped as invalid FHIR {version} {'is' if count == 1 else 'are'} valid FHIR "
            f"{other}: this looks like {other} data; try --fhir-version {other}")


def evaluate_one(name: str, evaluator, *, max_bytes: int, injectate: str | None, sites: tuple[str, ...],
                 now, fhir_version: str) -> Outcome:
    """Read, evaluate and explain one input; every failure becomes the Outcome's error, never a raise."""
    out = Outcome(name)
    try:
        doc = read_bytes(read_input(name, max_bytes), name, max_bytes)
        gaps = unknown_types(doc, fhir_version)
        out.notes += gaps
        if injectate or sites:
            doc, note = add_order(doc, evaluator, injectate, sites)
            if note:
                out.notes.append(note)
        result = evaluator.evaluate_document(doc, gaps=gaps, now=now)
    except OSError as e:
        out.error = f"cannot read: {e.strerror or e}"
        return out
    except CdsTpiError as e:
        out.error = e.message
        return out
    if result.skipped:
        hint = _version_note(doc, fhir_version)
        if hint:
            out.notes.append(hint)
    out.response, out.findings = result.response, list(result.findings)
    return out


_MD_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]*)\)")
_MD_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")


def plain(markdown: str) -> str:
    """A line of card markdown for a terminal: **bold** unmarked, [label](url) as 'label <url>',
    backslash escapes (record text is markdown-escaped in cards) undone."""
    text = _MD_LINK.sub(lambda m: f"{m.group(1)} <{m.group(2)}>", markdown)
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", text)
    return _MD_ESCAPE.sub(r"\1", text)


def _text(o: Outcome, verbose: bool, echo) -> None:
    cards = o.response["cards"]
    echo(f"== {o.name}: {len(cards)} card(s)")
    pad = " " * 11
    for c in cards:
        rule_id = c["source"]["topic"]["code"]
        echo(f"  {_MARK[c['indicator']]} {rule_id}: {c['summary']}")
        if verbose:
            detail = c.get("detail") or ""
            for line in detail.splitlines():
                if line.strip():
                    echo(f"{pad}  {plain(line.strip())}")
            for link in c.get("links", []):
                if link["url"] not in detail:  # the detail's "Sources:" line names most of them already
                    echo(f"{pad}  link: {link['label']} <{link['url']}>")
        elif rule_id == "missing-data":
            # The reasons are the point of this card: without them "data missing" says nothing.
            for reason in o.reasons(rule_id):
                echo(f"{pad}  not checked: {plain(reason)}")
        for s in c.get("suggestions", []):
            echo(f"{pad}  suggestion: {s['label']}")


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True,
              help="text: one line per card; json: the CDS Hooks response(s); html: a self-contained report page.")
@click.option("-v", "--verbose", is_flag=True, help="Text output: each card's detail lines and links too.")
@click.option("--fail-on", type=click.Choice(["critical", "warning", "info"]), default=None,
              help="Exit with status 3 when any card is at least this severe (for scripted checks).")
@click.option("--injectate", default=None, metavar="NAME[:DOSE],...",
              help="Synthesize the draft TPI order's injectate for inputs without one, e.g. lidocaine:50mg,triamcinolone:40mg.")
@click.option("--site", "sites", multiple=True, metavar="MUSCLE",
              help="Injection site for the synthesized order (repeatable), e.g. --site trapezius.")
@click.option("--now", "now_text", default=None, metavar="DATE",
              help="Evaluate as of this date (ISO 8601); default: the current time.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr when it is a terminal (default: on for more than 10 files).")
@fhir_version_option
@rules_option
@max_bytes_option
def evaluate(paths, fmt, verbose, fail_on, injectate, sites, now_text, progress, fhir_version, rules_dir: Path | None,
             max_bytes: int) -> None:
    """Evaluate FHIR inputs and print CDS Hooks cards.

    PATHS are files or directories (searched for *.json and *.ndjson); '-' reads stdin. An input
    may be a Bundle, a single resource, NDJSON, or a CDS Hooks request with prefetch.

    With --format json a single input prints the exact CDS Hooks response ({"cards": [...]});
    several inputs print an object mapping each input to its response, or to {"error": {...}} when
    it could not be read. --format html prints one self-contained HTML page.
    Errors and notes go to stderr, results to stdout.

    Exit status: 3 when --fail-on's threshold is met (even if another input failed), else 1 when an
    input could not be read, else 0; 2 for a usage error.
    """
    from ..pipeline import freeze_startup_objects

    now = _parse_now(now_text)
    injectates = injectates_of(injectate)
    files = expand_inputs(paths)
    evaluator = load_evaluator(rules_dir, fhir_version, injectates)
    freeze_startup_objects()
    outcomes: list[Outcome] = []
    # click draws a bar only on a terminal; elsewhere it would print its label alone: no bar at all there.
    show_progress = (progress if progress is not None else len(files) > 10) and sys.stderr.isatty()
    bar = (click.progressbar(files, label="evaluating", file=sys.stderr, show_pos=True) if show_progress
           else contextlib.nullcontext(files))
    with bar as items:
        for name in items:
            o = evaluate_one(name, evaluator, max_bytes=max_bytes, injectate=injectate, sites=sites, now=now,
                             fhir_version=fhir_version)
            for note in o.notes:
                click.echo(f"{name}: note: {note}", err=True)
            if o.error:
                click.echo(f"{name}: error: {o.error}", err=True)
            outcomes.append(o)
    _print(outcomes, fmt, verbose, fhir_version, now)
    worst = max((SEVERITY[c["indicator"]] for o in outcomes if o.response for c in o.response["cards"]), default=-1)
    if fail_on and worst >= SEVERITY[fail_on]:
        raise click.exceptions.Exit(3)  # the finding a script asked about outranks an unreadable input
    if any(o.error for o in outcomes):
        raise click.exceptions.Exit(1)


def _print(outcomes: list[Outcome], fmt: str, verbose: bool, fhir_version: str, now) -> None:
    ok = [o for o in outcomes if o.response is not None]
    failed = len(outcomes) - len(ok)
    if fmt == "json":
        if len(outcomes) == 1:
            if ok:
                click.echo(orjson.dumps(ok[0].response, option=orjson.OPT_INDENT_2).decode())
            return
        click.echo(orjson.dumps({o.name: o.response if o.response is not None else {"error": {"message": o.error}}
                                 for o in outcomes}, option=orjson.OPT_INDENT_2).decode())
    elif fmt == "html":
        from ..report import html_report

        click.echo(html_report(outcomes, fhir_version=fhir_version, now=now), nl=False)
    else:
        for o in ok:
            _text(o, verbose, click.echo)
        total = sum(len(o.response["cards"]) for o in ok)
        click.echo(f"{len(ok)} input(s) evaluated, {total} card(s)" + (f", {failed} input(s) failed" if failed else ""))
