"""`cds-tpi explain`: why each rule fired or did not, for each input."""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from ..errors import CdsTpiError
from ..explain import explain as explain_evaluation, format_text
from ..fhir.read import read_bytes
from .evaluate import _parse_now, add_order, unknown_types
from .options import expand_inputs, fhir_version_option, format_option, injectates_of, load_evaluator, max_bytes_option, read_input, rules_option


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--rule", "rule_id", default=None, metavar="ID", help="Explain this rule only (default: every rule).")
@format_option
@click.option("--injectate", default=None, metavar="NAME[:DOSE],...",
              help="Synthesize the draft TPI order's injectate for inputs without one, as for evaluate.")
@click.option("--site", "sites", multiple=True, metavar="MUSCLE", help="Injection site for the synthesized order (repeatable).")
@click.option("--now", "now_text", default=None, metavar="DATE",
              help="Evaluate as of this date (ISO 8601); default: the current time.")
@fhir_version_option
@rules_option
@max_bytes_option
def explain(paths, rule_id, fmt, injectate, sites, now_text, fhir_version, rules_dir: Path | None, max_bytes: int) -> None:
    """Explain, for every rule, why it fired or why not.

    For a rule that fired: the facts each pattern matched and the FHIR resource each came from. For
    one that did not: the nearest candidate facts and the condition each failed, and the data that
    was missing. Inputs and options are those of `evaluate`.
    Exit status: 0 explained, 1 an input could not be read, 2 usage error.
    """

    now = _parse_now(now_text)
    injectates = injectates_of(injectate)
    files = expand_inputs(paths)
    evaluator = load_evaluator(rules_dir, fhir_version, injectates)
    if rule_id is not None and rule_id not in {r.id for r in evaluator.rules}:
        known = ", ".join(sorted(r.id for r in evaluator.rules))
        raise click.BadParameter(f"no rule '{rule_id}' (rules: {known})", param_hint="'--rule'")
    results: dict[str, dict] = {}  # a failed input: {"error": {"message": ...}}, as evaluate's JSON
    failed = 0
    for name in files:
        try:
            doc = read_bytes(read_input(name, max_bytes), name, max_bytes)
            gaps = unknown_types(doc, fhir_version)  # as evaluate does: a mistyped resourceType is a gap
            if injectate or sites:
                doc, note = add_order(doc, evaluator, injectate, sites)
                if note:
                    click.echo(f"{name}: note: {note}", err=True)
            result = evaluator.evaluate_document(doc, gaps=gaps, now=now, all_facts=True)
        except (OSError, CdsTpiError) as e:
            message = f"cannot read: {e.strerror or e}" if isinstance(e, OSError) else e.message
            click.echo(f"{name}: error: {message}", err=True)
            results[name] = {"error": {"message": message}}
            failed += 1
            continue
        results[name] = explain_evaluation(evaluator.rules, result.facts, result.findings, evaluator.book.terminology, rule_id)
    if fmt == "json":
        body = next(iter(results.values())) if len(files) == 1 and results else results
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        for name, explanation in results.items():
            if "error" in explanation:  # said on stderr
                continue
            for line in format_text(name, explanation):
                click.echo(line)
    if failed:
        raise click.exceptions.Exit(1)
