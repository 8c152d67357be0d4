"""Card text templates (Jinja2, sandboxed, strict): what a rule's summary, detail and actions say."""

from __future__ import annotations

import functools

from jinja2 import StrictUndefined, TemplateSyntaxError, pass_context
from jinja2.sandbox import SandboxedEnvironment


def _label(fact: dict, short: bool) -> str:
    name = str(fact.get("name") or fact.get("ref") or "unnamed record")
    # Sites are named in free text as a rule; for drugs and diagnoses a name-only match is worth saying.
    if fact.get("t") not in ("site", "order") and fact.get("text_only") and not set(fact.get("vs", ())) - set(fact.get("text_only", ())):
        name += " (by name)" if short else " (matched by name only, no recognised code)"
    return name


@pass_context
def names(context, facts, sep: str = ", ") -> str:
    """Distinct display names of matched facts, joined; flags those matched by text only."""
    short = bool(context.get("short_labels"))
    seen: list[str] = []
    for f in facts or ():
        label = _label(f, short) if isinstance(f, dict) else str(f)
        if label not in seen:
            seen.append(label)
    if len(seen) <= 1:
        return "".join(seen)
    return sep.join(seen[:-1]) + " and " + seen[-1]


def refs(facts) -> list[str]:
    """Distinct references of matched facts, in order."""
    out: list[str] = []
    for f in facts or ():
        r = f.get("ref") if isinstance(f, dict) else None
        if r and r not in out:
            out.append(r)
    return out


def days(value) -> str:
    """'1 day' / 'N days'."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        return "an unknown number of days"
    return f"{n} day" if n == 1 else f"{n} days"


@functools.lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(names=names, refs=refs, days=days)
    return env


@functools.lru_cache(maxsize=2048)
def compile_template(source: str):
    """Compiled template (cached); raises TemplateSyntaxError."""
    return environment().from_string(source)


def render(source: str, context: dict) -> str:
    return compile_template(source).render(context).strip()


__all__ = ["render", "compile_template", "TemplateSyntaxError", "names", "refs"]
