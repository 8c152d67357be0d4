"""`cds-tpi validate`: FHIR validation of files, with file, resource and element path per error."""

from __future__ import annotations

import orjson
import click

from ..errors import InputError
from ..fhir.read import DEFAULT_MAX_BYTES, read_bytes
from ..fhir.refs import ref_key
from ..fhir.validate import validate_resource, version_hint
from .options import expand_inputs, fhir_version_option, format_option, max_bytes_option, read_input


def validate_file(name: str, version: str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[int, list[dict]]:
    """(number of resources, problems) for one input file."""
    try:
        doc = read_bytes(read_input(name, max_bytes), name, max_bytes)
    except OSError as e:
        return 0, [{"file": name, "location": "", "resource": "", "path": "", "message": f"cannot read: {e.strerror or e}",
                    "unreadable": True}]
    except InputError as e:
        return 0, [{"file": name, "location": "", "resource": "", "path": "", "message": e.message, "unreadable": True}]
    problems = []
    located = doc.resources + (doc.draft_orders or [])
    for loc in located:
        r = loc.resource
        label = ref_key(r) if isinstance(r, dict) else None
        label = label or (r.get("resourceType") if isinstance(r, dict) and isinstance(r.get("resourceType"), str) else "?")
        issues = validate_resource(r, version)
        hint = version_hint(r, version) if issues else None
        for issue in issues:
            where = loc.location if loc.location != "$" else ""
            problem = {"file": name, "location": where, "resource": label, "path": issue.path, "message": issue.message}
            if hint:
                problem["hint"] = f"{hint}: try --fhir-version {'R5' if version == 'R4' else 'R4'}"
            problems.append(problem)
    return len(located), problems


@click.command()
@click.argument("paths", nargs=-1, required=True)
@fhir_version_option
@format_option
@max_bytes_option
def validate(paths: tuple[str, ...], fhir_version: str, fmt: str, max_bytes: int) -> None:
    """Validate FHIR files (Bundle, resource, NDJSON or CDS Hooks request) with fhir.resources.

    PATHS are files or directories (searched for *.json and *.ndjson); '-' reads stdin.
    Problems go to stdout (file, entry, resource, element path, reason), files that cannot be read
    to stderr. Exit status: 0 all valid, 1 any invalid or unreadable, 2 usage error.
    """
    files = expand_inputs(paths)
    all_problems, n_resources, bad_files = [], 0, 0
    for name in files:
        count, problems = validate_file(name, fhir_version, max_bytes)
        n_resources += count
        bad_files += bool(problems)
        all_problems += problems
        for p in problems:
            if p.get("unreadable"):  # the file could not be checked at all: an error, on stderr
                click.echo(f"{p['file']}: error: {p['message']}", err=True)
    if fmt == "json":
        click.echo(orjson.dumps({"files": len(files), "resources": n_resources, "invalid_files": bad_files,
                                 "errors": all_problems}, option=orjson.OPT_INDENT_2).decode())
    else:
        # Validation problems are this command's findings (data): stdout, one line each, then the
        # resource's R4/R5 hint once.
        hinted = set()
        for p in all_problems:
            if p.get("unreadable"):
                continue
            where = " ".join(x for x in (p.get("location", ""), p["resource"]) if x)
            click.echo(": ".join(x for x in (p["file"], where, p["path"], p["message"]) if x))
            key = (p["file"], p.get("location"), p["resource"])
            if p.get("hint") and key not in hinted:
                hinted.add(key)
                click.echo(": ".join(x for x in (p["file"], where, "hint", p["hint"]) if x))
        status = "all valid" if not all_problems else f"{len(all_problems)} error(s) in {bad_files} file(s)"
        click.echo(f"{len(files)} file(s), {n_resources} resource(s) checked against FHIR {fhir_version}: {status}")
    if all_problems:
        raise click.exceptions.Exit(1)
