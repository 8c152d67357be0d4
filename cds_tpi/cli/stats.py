"""`cds-tpi stats`: per rule, cards shown, accepted, overridden and the top override reasons."""

from __future__ import annotations

import click
import orjson

from cds_tpi.errors import InputError
from cds_tpi.service.config import default_database_url, load_config, sqlite_file


@click.command("stats")
@click.option("--database-url", default=None, envvar="CDS_TPI_DATABASE_URL", show_envvar=True,
              help="SQLAlchemy URL of the service database (default: database_url of --config, else SQLite in the "
                   "per-user data directory: $XDG_DATA_HOME/cds-tpi/cds-tpi.sqlite3, ~/.local/share/cds-tpi/ on Linux).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              envvar="CDS_TPI_CONFIG", show_envvar=True, help="The service's config file (for its database_url).")
@click.option("--top", type=click.IntRange(1, 20), default=3, show_default=True, help="Override reasons shown per rule.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def stats(database_url: str | None, config_file: str | None, top: int, fmt: str) -> None:
    """Card statistics from the service's audit and feedback records (read only: never creates a database)."""
    from .serve import require_service_extra  # noqa: PLC0415

    require_service_extra()
    import sqlalchemy  # noqa: PLC0415

    from cds_tpi.service.storage import Storage, redact_url  # noqa: PLC0415

    if database_url is None:
        try:
            database_url = load_config(config_file).database_url if config_file else default_database_url()
        except InputError as e:
            raise click.BadParameter(str(e), param_hint="--config") from e
    db_file = sqlite_file(database_url)
    if db_file is not None and not db_file.is_file():
        # SQLite would create an empty file here and then fail on the missing tables.
        raise click.ClickException(f"no service database at {db_file}: `cds-tpi serve` creates it on its first start "
                                   "(or pass --database-url / set CDS_TPI_DATABASE_URL)")
    try:
        storage = Storage(database_url)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError) as e:
        raise click.BadParameter(f"not a database URL SQLAlchemy can open ({_reason(e)})",
                                 param_hint="--database-url") from e
    try:
        rows = storage.rule_stats(top=top)
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise click.ClickException(f"cannot read {redact_url(database_url)}: {_reason(e)}") from e
    finally:
        storage.dispose()
    if fmt == "json":
        click.echo(orjson.dumps([
            {"rule": r.rule_id, "shown": r.shown, "accepted": r.accepted, "overridden": r.overridden,
             "topOverrideReasons": [{"reason": text, "count": n} for text, n in r.top_override_reasons]}
            for r in rows], option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        click.echo("no cards recorded yet")
        return
    width = max(len("rule"), *(len(_printable(r.rule_id)) for r in rows))
    click.echo(f"{'rule':<{width}}  {'shown':>6}  {'accepted':>8}  {'overridden':>10}  top override reasons")
    for r in rows:
        reasons = "; ".join(f"{_printable(text)} ({n})" for text, n in r.top_override_reasons) or "-"
        click.echo(f"{_printable(r.rule_id):<{width}}  {r.shown:>6}  {r.accepted:>8}  {r.overridden:>10}  {reasons}")


def _reason(e: Exception) -> str:
    """The database's own first line ("no such table: audit", "connection refused"), with the
    exception's class: what went wrong, not only its type. Never the URL's password (the drivers'
    messages name host, port and user, not the password)."""
    orig = getattr(e, "orig", None) or e
    first = (str(orig).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {_printable(first)}" if first else type(e).__name__


def _printable(text: object) -> str:
    """Stored strings come from callers: terminal escapes, newlines (forged rows) and bidi controls
    are shown escaped, never sent to the terminal."""
    return "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   for c in str(text))


if __name__ == "__main__":
    stats()
