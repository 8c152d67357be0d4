"""`cds-tpi rules lint|list`: check and list the rules of a directory."""

from __future__ import annotations

from pathlib import Path

import click

from ..ruleset import load_rulebook
from ..ruleset.load import default_rules_dir


@click.group()
def rules() -> None:
    """Check or list the declarative rules."""


@rules.command()
@click.argument("directory", required=False, type=click.Path(path_type=Path))
def lint(directory: Path | None) -> None:
    """Report every error in the rules and value sets of DIRECTORY (default: bundled rules/), with file:line.

    Also compiles the rules for durable-rules. Exit status 1 when anything is wrong.
    """
    book = load_rulebook(directory, strict=False)
    errors = list(book.errors)
    if not errors:
        from ..pipeline import Evaluator

        try:
            Evaluator(book)
        except Exception as e:  # noqa: BLE001 - reported as a lint error, not a crash
            errors.append(f"{book.directory}: the rules do not compile for durable-rules: {e}")
    # The problems are what lint was asked for (its data): stdout, like the summary, so that
    # `cds-tpi rules lint | grep` sees them all; only a lint that cannot run goes to stderr (main()).
    for e in errors:
        click.echo(e)
    n_vs = len(book.terminology.defs) if book.terminology else 0
    click.echo(f"{len(book.rules)} rule(s), {n_vs} value set(s) in {book.directory}: "
               + ("ok" if not errors else f"{len(errors)} error(s)"))
    if errors:
        raise click.exceptions.Exit(1)


@rules.command(name="list")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
def list_rules(directory: Path | None) -> None:
    """Print id, default indicator and title of every rule."""
    book = load_rulebook(directory or default_rules_dir())
    width = max((len(r.id) for r in book.rules), default=2)
    for r in sorted(book.rules, key=lambda r: r.id):
        click.echo(f"{r.id:<{width}}  {r.indicator:<8}  {r.title}")
