"""Card text templates (Jinja2, sandboxed, strict): what a rule's summary, detail and actions say.

Every value a template prints (`{{ ... }}`) comes from the record or is computed from it, so it is
made safe where it is printed, by the environment's `finalize` (no rule template can forget it):

- markdown (card detail, local policy): one line, control and bidi characters dropped, at most
  VALUE_MAX characters, `<` `>` `&` as HTML entities, markdown punctuation backslash-escaped (no
  links, images, emphasis, code, tables; no list, heading or quote at the start of a value), and the
  schemes `javascript:`, `vbscript:`, `data:<type>/` removed.
- text (summary, suggestion labels, action descriptions, notes): one line, control and bidi
  characters dropped, capped. Plain text for the EHR to show as text.
- raw (resource ids and references inside suggested FHIR resources): one line, capped.

The template's own literal text (the rule author's markdown) is not touched.
"""

from __future__ import annotations

import functools
import re

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes, pass_context
from jinja2.runtime import LoopContext
from jinja2.sandbox import SandboxedEnvironment


def _label(fact: dict, short: bool) -> str:
    name = str(fact.get("name") or fact.get("ref") or "unnamed record")
    # Sites are named in free text as a rule; for drugs and diagnoses a name-only match is worth saying.
    # (every value set matched by name only: issuperset stops at the first coded one, where the
    # difference of two sets was built for every fact of a drug list; a coded drug 0.57 -> 0.30 us)
    text_only = fact.get("text_only")
    if text_only and fact.get("t") not in ("site", "order") and set(text_only).issuperset(fact.get("vs", ())):
        name += " (by name)" if short else " (matched by name only, no recognised code)"
    return name


@pass_context
def names(context, facts, sep: str = ", ") -> str:
    """Distinct display names of matched facts, joined; flags those matched by text only."""
    # (`in` first: Context.get of a missing name raises and catches a KeyError, ~1 us; notes and details
    # have no short_labels)
    short = "short_labels" in context and bool(context["short_labels"])
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


def headline(text) -> str:
    """The part of a note before its first ': ' outside parentheses ("allergies (none recorded)",
    "dose of lidocaine (no usable dose in mg)" of "dose of lidocaine (no usable dose in mg: 1 vial):
    ..."), for a card summary; a parenthesis cut short is closed."""
    text = str(text)
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == ":" and text[i + 1:i + 2] == " " and depth == 0:
            return text[:i].strip()
    head = text.split(": ", 1)[0].strip()
    return head + ")" * max(0, head.count("(") - head.count(")"))


VALUE_MAX = 300  # characters of one printed value (a list of names included)
RAW_MAX = 256

# C0/C1 controls, DEL, line/paragraph separators, zero-width and bidi controls (U+202A-E, U+2066-9):
# a value stays on its line and reads as it is stored.
_INVISIBLE_CHARS = "\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]+")
_SPACES = re.compile(r"[ \t]{2,}")
_MD_PUNCT_CHARS = r"\\`*_~\[\]|{}"
_MD_PUNCT = re.compile(f"([{_MD_PUNCT_CHARS}])")
# a list, heading or setext marker only when a space or the end follows ("- x", "# x", "1. x"), so
# numbers ("350.0", "-5") and words read as written
_MD_LINE_START = re.compile(r"^(\s*)([#+\-=]+|\d+[.)])(?=\s|$)")
_BAD_SCHEME = re.compile(r"(?i)\b(?:javascript|vbscript|livescript)\s*:|\bdata\s*:\s*[a-z]+/[a-z0-9.+-]*")
# Every character one of the markdown steps after one_line could change: markdown punctuation, the
# HTML specials and the colon every unsafe scheme has. Most values (drug and condition names, dates,
# references) hold none, and one search tells (measured: markdown_escape of a drug name 3.5 -> 0.8 us;
# 16 values a request).
_MD_ACTIVE = re.compile(f"[{_MD_PUNCT_CHARS}&<>:]")


class MarkdownSafe(str):
    """Markdown already made safe: a rule note rendered by `render` (its values escaped, the rule
    author's own markdown kept). Printed as it is in markdown; unescaped in text."""


def one_line(value, limit: int = VALUE_MAX) -> str:
    """`value` as text on one line: controls and bidi characters become spaces, at most `limit` chars."""
    text = "" if value is None else str(value)
    # (a tab is invisible, so with no invisible character only a double space is left for _SPACES)
    if _INVISIBLE.search(text) or "  " in text:
        text = _SPACES.sub(" ", _INVISIBLE.sub(" ", text))
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# Printed values repeat within a request and across requests (a drug's or a condition's name, a date, a
# reference), so the escaping of a short str is memoised (measured: markdown_escape of a condition name
# 0.85 -> 0.15 us, plain_text 0.45 -> 0.15 us; ~30 printed values a benchmark request). Only values of at
# most VALUE_MAX characters are kept, at most _MEMO_SIZE of them.
_MEMO_SIZE = 2048


def _memoised(escape):
    """`escape` (a pure function of its value) with its result for a short str kept."""
    memo = functools.lru_cache(maxsize=_MEMO_SIZE)(escape)

    @functools.wraps(escape)
    def escape_value(value):
        # (type is str: a MarkdownSafe note, a number, None are not kept)
        return memo(value) if type(value) is str and len(value) <= VALUE_MAX else escape(value)

    return escape_value


@_memoised
def markdown_escape(value) -> str:
    """`value` safe inside GitHub-flavoured markdown and HTML (see the module docstring)."""
    if isinstance(value, MarkdownSafe):
        return value
    text = one_line(value)
    if _MD_ACTIVE.search(text):
        text = _BAD_SCHEME.sub("(link removed) ", text)
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        text = _MD_PUNCT.sub(r"\\\1", text)
    return _MD_LINE_START.sub(_escape_marker, text, count=1)


def _escape_marker(m: re.Match) -> str:
    marker = m.group(2)  # "1." -> "1\." (a backslash before a digit is no escape in markdown)
    return m.group(1) + (marker[:-1] + "\\" + marker[-1] if marker[0].isdigit() else "\\" + marker)


_ESCAPED = re.compile(r"\\([\\`*_~\[\]|{}#+\-=.)])")


@_memoised
def plain_text(value) -> str:
    """Text for a plain-text field: one line, capped; a markdown note's escapes undone."""
    text = one_line(value)
    if "\\" in text or "&" in text:
        text = _ESCAPED.sub(r"\1", text).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text


_FINALIZE = {"markdown": markdown_escape, "text": plain_text, "raw": lambda v: one_line(v, RAW_MAX)}

_DICT_ATTRIBUTES = frozenset(dir(dict))
# the loop variable's properties, all numbers or booleans (loop.last, loop.index, ...)
_LOOP_PROPERTIES = frozenset({"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth", "depth0"})


class _Sandbox(SandboxedEnvironment):
    """The sandbox, reading `fact.name` of a plain dict (facts, params) as its item at once.

    The sandbox reads `x.key` as getattr first and the item only after an AttributeError; for a key
    that is no attribute of dict (`items`, `get` stay the methods, as the sandbox checks them) the item
    is what it returns in the end. Measured: 1.2 -> 0.3 us a lookup, ~20 lookups a request.

    A for loop's `loop.last` (`loop.index`, ...) is a public property of Jinja's own LoopContext, a
    number or a boolean: the sandbox allows it after checking the name and the value (measured 1.1 ->
    0.3 us a lookup; one an iteration of a note's loop)."""

    def getattr(self, obj, attribute):
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES and attribute in obj:
            return obj[attribute]
        if type(obj) is LoopContext and attribute in _LOOP_PROPERTIES:
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)


@functools.lru_cache(maxsize=3)
def environment(kind: str = "markdown") -> SandboxedEnvironment:
    """The template environment for one kind of output: markdown, text or raw (see above)."""
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True,
                   finalize=_FINALIZE[kind])
    env.filters.update(names=names, refs=refs, days=days, headline=headline)
    return env


@functools.lru_cache(maxsize=2048)
def compile_template(source: str, kind: str = "markdown"):
    """Compiled template (cached); raises TemplateSyntaxError."""
    return environment(kind).from_string(source)


@functools.lru_cache(maxsize=2048)
def variables(source: str) -> frozenset[str]:
    """Every name a template reads: its context's variables, globals (range, namespace, ...) and the
    names it sets itself (loop variables); raises TemplateSyntaxError."""
    return frozenset(n.name for n in environment().parse(source).find_all(nodes.Name) if n.ctx == "load")


@functools.lru_cache(maxsize=2048)
def _prepared(source: str, kind: str):
    """The compiled template, with the globals it reads (range, namespace, ...) as one plain dict.

    Template.render merges all globals into every context through a ChainMap (a third of a short
    template's rendering time), and new_context makes a set of the template's globals for each
    context: iterating the ChainMap was half its time (3.7 -> 1.7 us). Most rule templates read no
    global, and their context is then used as it is (2.4 -> 2.1 us a render)."""
    template = compile_template(source, kind)
    template.globals = {k: v for k, v in template.globals.items() if k in variables(source)}
    return template


def render(source: str, context: dict, kind: str = "markdown") -> str:
    """Render a rule template; every printed value is made safe for `kind` (markdown, text, raw)."""
    if "{" not in source:  # no expression, statement or comment: the rule author's text as it is
        text = source.strip()
    else:
        # what Template.render does, with the globals merged from a plain dict (Jinja2 API:
        # new_context(shared=True) takes the variables as given, globals included; the context is
        # only read)
        template = _prepared(source, kind)
        env = template.environment
        ctx = {**template.globals, **context} if template.globals else context
        try:
            text = env.concat(template.root_render_func(template.new_context(ctx, shared=True)))
        except Exception:
            env.handle_exception()
        text = text.strip()
    return MarkdownSafe(text) if kind == "markdown" else text


__all__ = ["render", "compile_template", "variables", "TemplateSyntaxError", "names", "refs", "markdown_escape", "one_line", "MarkdownSafe"]
