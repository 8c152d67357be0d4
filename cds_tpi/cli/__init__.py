"""The `cds-tpi` command: validate and evaluate FHIR inputs, check rules, serve CDS Hooks."""

from __future__ import annotations

import logging
import os
import sys

import click

from .. import __version__
from ..errors import CdsTpiError
from .evaluate import evaluate
from .explain import explain
from .rules import rules
from .validate import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cds-tpi")
def cli() -> None:
    """Check a planned trigger point injection against a patient's FHIR record; answer with CDS Hooks cards."""


cli.add_command(validate)
cli.add_command(evaluate)
cli.add_command(explain)
cli.add_command(rules)

try:  # the HTTP service's commands
    from .serve import serve
    from .stats import stats

    cli.add_command(serve)
    cli.add_command(stats)
except ImportError as e:  # pragma: no cover - only while the service is not installed
    logging.getLogger(__name__).debug("service commands unavailable: %s", e)


def main() -> None:
    """Console entry point: domain errors become one line and a non-zero exit, never a traceback."""
    try:
        cli.main(standalone_mode=True)
    except CdsTpiError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - the last line of defence: no tracebacks for users
        if os.environ.get("CDS_TPI_DEBUG"):
            raise
        click.echo(f"internal error: {type(e).__name__}: {e} (set CDS_TPI_DEBUG=1 for details)", err=True)
        sys.exit(70)
