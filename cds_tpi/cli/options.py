"""Options shared by several commands, and input file discovery."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import InputError

fhir_version_option = click.option(
    "--fhir-version", type=click.Choice(["R4", "R5"]), default="R4", show_default=True,
    help="FHIR version of the input (R4 is read with the R4B models).")
format_option = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format.")
rules_option = click.option(
    "--rules", "rules_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Rules directory (default: the rules/ folder of this installation).")

max_bytes_option = click.option(
    "--max-bytes", type=click.IntRange(min=1), default=20 * 1024 * 1024, show_default=True,
    help="Refuse inputs larger than this many bytes.")

INPUT_SUFFIXES = (".json", ".ndjson")


def expand_inputs(paths: tuple[str, ...]) -> list[str]:
    """Files from paths; directories are searched recursively for *.json and *.ndjson. '-' is stdin."""
    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append(p)
            continue
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix in INPUT_SUFFIXES)
            if not found:
                raise click.UsageError(f"{p}: no *.json or *.ndjson files in this directory")
            out += found
        elif path.exists():
            out.append(str(path))
        else:
            raise click.UsageError(f"{p}: no such file or directory")
    return out


def read_input(name: str, max_bytes: int) -> bytes:
    """Bytes of a file or stdin; InputError with the real size when over --max-bytes."""
    if name == "-":
        data = sys.stdin.buffer.read(max_bytes + 1)
        if len(data) > max_bytes:  # stdin's size is unknown until read: the rest is counted, not kept
            size = len(data)
            while chunk := sys.stdin.buffer.read(1 << 20):
                size += len(chunk)
            raise InputError(f"input is {size:,} bytes, over the limit of {max_bytes:,} bytes (raise it with --max-bytes)",
                             name)
        return data
    size = os.stat(name).st_size
    if size > max_bytes:
        raise InputError(f"input is {size:,} bytes, over the limit of {max_bytes:,} bytes (raise it with --max-bytes)",
                         name)
    with open(name, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # the file grew since stat, or is a device
        raise InputError(f"input is over the limit of {max_bytes:,} bytes (raise it with --max-bytes)", name)
    return data


def injectates_of(injectate: str | None):
    """The --injectate option as Injectates (None when not given); a usage error naming the bad part.
    The option's name is said once, by click ("Invalid value for '--injectate': ...")."""
    from ..order import parse_injectates  # noqa: PLC0415

    if injectate is None:
        return None
    try:
        return parse_injectates(injectate)
    except InputError as e:
        raise click.BadParameter(e.message.removeprefix("--injectate: "), param_hint="'--injectate'") from None


def load_evaluator(rules_dir, fhir_version: str, injectates):
    """The Evaluator of a command, with the --injectate names checked against its value sets (a usage
    error names an unknown one)."""
    from ..pipeline import Evaluator  # noqa: PLC0415 - heavy: loaded once, after the options are read
    from .injectate import check_injectates  # noqa: PLC0415

    evaluator = Evaluator.load(rules_dir, fhir_version)
    if injectates:
        check_injectates([i.name for i in injectates], evaluator.book)
    return evaluator
