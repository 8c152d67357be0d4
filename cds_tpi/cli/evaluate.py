"""`cds-tpi evaluate`: cards for each input file."""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import click
import orjson

from ..errors import CdsTpiError, InputError
from ..fhir.read import Document, Located, read_bytes
from ..orders import parse_injectates, synthesize
from ..ruleset.model import SEVERITY
from .options import expand_inputs, fhir_version_option, format_option, max_bytes_option, read_input, rules_option

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
    doc = doc.with_drafts()
    if evaluator.is_tpi_order([loc.resource for loc in doc.draft_orders]):
        return doc, "already has a trigger point injection order; --injectate/--site ignored"
    patient = next((loc.resource for loc in doc.resources
                    if isinstance(loc.resource, dict) and loc.resource.get("resourceType") == "Patient"), None)
    patient_ref = f"Patient/{patient['id']}" if patient and isinstance(patient.get("id"), str) else None
    if patient_ref is None and doc.request and isinstance(doc.request.get("context"), dict):
        pid = doc.request["context"].get("patientId")
        patient_ref = f"Patient/{pid}" if isinstance(pid, str) else None
    order = synthesize(parse_injectates(injectate) if injectate else [], list(sites), patient_ref, evaluator.book.terminology)
    located = [Located(f"--injectate/--site[{i}]", r) for i, r in enumerate(order)]
    return replace(doc, draft_orders=doc.draft_orders + located), None


def _text(name: str, response: dict, out) -> None:
    cards = response["cards"]
    out(f"== {name}: {len(cards)} card(s)")
    for c in cards:
        out(f"  {_MARK[c['indicator']]} {c['source']['topic']['code']}: {c['summary']}")
        for s in c.get("suggestions", []):
            out(f"             suggestion: {s['label']}")


@click.command()
@click.argument("paths", nargs=-1, required=True)
@format_option
@click.option("--fail-on", type=click.Choice(["critical", "warning", "info"]), default=None,
              help="Exit with status 3 when any card is at least this severe (for scripted checks).")
@click.option("--injectate", default=None, metavar="NAME[:DOSE],...",
              help="Synthesize the draft TPI order's injectate for inputs without one, e.g. lidocaine:50mg,triamcinolone:40mg.")
@click.option("--site", "sites", multiple=True, metavar="MUSCLE",
              help="Injection site for the synthesized order (repeatable), e.g. --site trapezius.")
@click.option("--now", "now_text", default=None, metavar="DATE",
              help="Evaluate as of this date (ISO 8601); default: the current time.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: on for more than 10 files).")
@fhir_version_option
@rules_option
@max_bytes_option
def evaluate(paths, fmt, fail_on, injectate, sites, now_text, progress, fhir_version, rules_dir: Path | None,
             max_bytes: int) -> None:
    """Evaluate FHIR inputs and print CDS Hooks cards.

    PATHS are files or directories (searched for *.json and *.ndjson); '-' reads stdin. An input
    may be a Bundle, a single resource, NDJSON, or a CDS Hooks request with prefetch.

    With --format json a single input prints the exact CDS Hooks response ({"cards": [...]});
    several inputs print an object mapping each input to its response.
    Exit status: 0 evaluated, 1 an input could not be read, 2 usage error, 3 --fail-on threshold met.
    """
    from ..pipeline import Evaluator, freeze_startup_objects

    now = _parse_now(now_text)
    if injectate is not None:
        try:
            parse_injectates(injectate)
        except InputError as e:
            raise click.BadParameter(e.message, param_hint="--injectate") from None
    files = expand_inputs(paths)
    evaluator = Evaluator.load(rules_dir, fhir_version)
    freeze_startup_objects()
    responses: dict[str, dict] = {}
    failures = 0
    worst = -1
    show_progress = progress if progress is not None else len(files) > 10
    with click.progressbar(files, label="evaluating", file=sys.stderr,
                           show_pos=True) if show_progress else _nullbar(files) as bar:
        for name in bar:
            try:
                doc = read_bytes(read_input(name, max_bytes), name, max_bytes)
                if injectate or sites:
                    doc, note = add_order(doc, evaluator, injectate, sites)
                    if note:
                        click.echo(f"{name}: note: {note}", err=True)
                result = evaluator.evaluate_document(doc, now=now)
            except OSError as e:
                click.echo(f"{name}: error: cannot read: {e.strerror or e}", err=True)
                failures += 1
                continue
            except CdsTpiError as e:
                click.echo(f"{name}: error: {e.message}", err=True)
                failures += 1
                continue
            responses[name] = result.response
            for c in result.cards:
                worst = max(worst, SEVERITY[c["indicator"]])
    if fmt == "json":
        if len(files) == 1 and responses:
            click.echo(orjson.dumps(next(iter(responses.values())), option=orjson.OPT_INDENT_2).decode())
        elif len(files) > 1:
            click.echo(orjson.dumps(responses, option=orjson.OPT_INDENT_2).decode())
    else:
        for name, response in responses.items():
            _text(name, response, click.echo)
        total = sum(len(r["cards"]) for r in responses.values())
        click.echo(f"{len(responses)} input(s) evaluated, {total} card(s)" + (f", {failures} input(s) failed" if failures else ""))
    if failures:
        raise click.exceptions.Exit(1)
    if fail_on and worst >= SEVERITY[fail_on]:
        raise click.exceptions.Exit(3)


class _nullbar:
    def __init__(self, items):
        self.items = items

    def __enter__(self):
        return self.items

    def __exit__(self, *exc):
        return False
