"""`cds-tpi stats`: per rule, cards shown, accepted, overridden and the top override reasons."""

from __future__ import annotations

import click
import orjson

from cds_tpi.service.config import DEFAULT_DATABASE_URL


@click.command("stats")
@click.option("--database-url", default=DEFAULT_DATABASE_URL, show_default=True, help="SQLAlchemy URL of the service database.")
@click.option("--top", type=click.IntRange(1, 20), default=3, show_default=True, help="Override reasons shown per rule.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def stats(database_url: str, top: int, fmt: str) -> None:
    """Card statistics from the service's audit and feedback records."""
    import sqlalchemy  # noqa: PLC0415

    from cds_tpi.service.storage import Storage, redact_url  # noqa: PLC0415

    storage = Storage(database_url)
    try:
        rows = storage.rule_stats(top=top)
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise click.ClickException(f"cannot read {redact_url(database_url)}: {type(e).__name__}") from e
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
    width = max(len("rule"), *(len(r.rule_id) for r in rows))
    click.echo(f"{'rule':<{width}}  {'shown':>6}  {'accepted':>8}  {'overridden':>10}  top override reasons")
    for r in rows:
        reasons = "; ".join(f"{text} ({n})" for text, n in r.top_override_reasons) or "-"
        click.echo(f"{r.rule_id:<{width}}  {r.shown:>6}  {r.accepted:>8}  {r.overridden:>10}  {reasons}")


if __name__ == "__main__":
    stats()
