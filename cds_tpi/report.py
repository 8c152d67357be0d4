"""A self-contained HTML report of evaluated inputs: the cards as an EHR shows them.

One page, no external resources (inline CSS, no script; a Content-Security-Policy that forbids
loading anything), one section per input. Every text that comes from a record or a rule is
escaped: card details are CDS Hooks markdown (GitHub-flavoured markdown, CDS Hooks 2.0 "Card
attributes": https://cds-hooks.hl7.org/2.0/#card-attributes) rendered with raw HTML turned off,
so markup in a patient's record shows as text; links are kept only for http(s) URLs.
"""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import urlsplit

from jinja2 import Environment
from markdown_it import MarkdownIt

from . import __version__

# CDS Hooks 2.0 card indicators, in the colours EHRs commonly use (red, amber, blue).
INDICATOR_COLOURS = {"critical": "#b3261e", "warning": "#b26a00", "info": "#1b5fad"}

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")


def _safe_url(url) -> str | None:
    """url when it is an absolute http(s) URL, else None (no javascript:, data: or relative links)."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def render_markdown(text) -> str:
    """A card's markdown detail as HTML; raw HTML in it is escaped, unsafe link targets dropped."""
    if not isinstance(text, str) or not text.strip():
        return ""
    return _md.render(text)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="cds-tpi {{ version }}">
<title>cds-tpi report: {{ outcomes | length }} input(s), {{ n_cards }} card(s)</title>
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       background: #f4f5f7; color: #1d1d1f; }
header { background: #233044; color: #fff; padding: 14px 24px; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; color: #cfd8e3; }
main { max-width: 960px; margin: 0 auto; padding: 12px 24px 40px; }
section.input { margin: 22px 0; }
section.input > h2 { font-size: 16px; margin: 0 0 8px; word-break: break-all; }
section.input > h2 .count { font-weight: normal; color: #555; }
.card { background: #fff; border: 1px solid #d7dbe0; border-left: 8px solid var(--ind); border-radius: 6px;
        margin: 10px 0; padding: 10px 14px; }
.card h3 { margin: 0 0 6px; font-size: 15px; }
.badge { display: inline-block; min-width: 64px; text-align: center; padding: 1px 8px; margin-right: 8px;
         border-radius: 4px; background: var(--ind); color: #fff; font-size: 12px; text-transform: uppercase;
         letter-spacing: .04em; vertical-align: 1px; }
.detail { color: #222; }
.detail p { margin: 6px 0; }
.suggestions, .links { margin: 8px 0 0; padding-left: 20px; }
.suggestions li { margin: 2px 0; }
.suggestion-label { font-weight: 600; }
.source { margin-top: 8px; color: #555; font-size: 13px; }
.none { color: #2e7d32; background: #fff; border: 1px solid #d7dbe0; border-radius: 6px; padding: 10px 14px; }
.input-error { background: #fff4f4; border: 1px solid #e3b5b1; border-radius: 6px; padding: 10px 14px; color: #8c1d18; }
code { background: #eef0f3; padding: 0 3px; border-radius: 3px; }
</style>
</head>
<body>
<header>
<h1>Trigger point injection safety check</h1>
<p>{{ outcomes | length }} input(s), {{ n_cards }} card(s){% if n_failed %}, {{ n_failed }} input(s) failed{% endif %}
 &middot; FHIR {{ fhir_version }} &middot; as of {{ as_of }} &middot; cds-tpi {{ version }}</p>
</header>
<main>
{% for o in outcomes %}
<section class="input" id="input-{{ loop.index }}" data-input="{{ o.name }}">
<h2>{{ o.name }} {% if o.response is not none %}<span class="count">&middot; {{ o.response.cards | length }} card(s)</span>{% endif %}</h2>
{% if o.error %}
<div class="input-error" role="alert"><strong>Not evaluated:</strong> {{ o.error }}</div>
{% elif not o.response.cards %}
<div class="none">No cards: nothing in this record calls for a warning about the planned injection.</div>
{% else %}
{% for c in o.response.cards %}
<article class="card card-{{ c.indicator }}" data-indicator="{{ c.indicator }}" data-rule="{{ c.source.topic.code if c.source.topic else '' }}"
         style="--ind: {{ colours[c.indicator] }}">
<h3><span class="badge">{{ c.indicator }}</span>{{ c.summary }}</h3>
{% if c.detail %}<div class="detail">{{ markdown(c.detail) }}</div>{% endif %}
{% if c.suggestions %}
<ul class="suggestions">
{% for s in c.suggestions %}<li><span class="suggestion-label">Suggestion: {{ s.label }}</span>
{% if s.actions %}<ul>{% for a in s.actions %}<li>{{ a.type }}: {{ a.description }}</li>{% endfor %}</ul>{% endif %}</li>
{% endfor %}
</ul>
{% endif %}
{% if c.links %}
<ul class="links">
{% for l in c.links %}<li>{% set href = safe_url(l.url) %}{% if href %}<a href="{{ href }}" rel="noopener noreferrer">{{ l.label }}</a>{% else %}{{ l.label }} ({{ l.url }}){% endif %}</li>
{% endfor %}
</ul>
{% endif %}
<div class="source">Source: {% set href = safe_url(c.source.url) %}{% if href %}<a href="{{ href }}" rel="noopener noreferrer">{{ c.source.label }}</a>{% else %}{{ c.source.label }}{% endif %}
{% if c.source.topic %} &middot; rule <code>{{ c.source.topic.code }}</code>{% endif %}</div>
</article>
{% endfor %}
{% endif %}
</section>
{% endfor %}
</main>
</body>
</html>
"""

_env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_env.globals.update(safe_url=_safe_url)
_template = _env.from_string(_TEMPLATE)


def html_report(outcomes, *, fhir_version: str = "R4", now: datetime | None = None) -> str:
    """The HTML page for evaluated inputs (objects with name, response or error)."""
    from markupsafe import Markup

    n_cards = sum(len(o.response["cards"]) for o in outcomes if o.response is not None)
    as_of = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    return _template.render(
        outcomes=outcomes, n_cards=n_cards, n_failed=sum(1 for o in outcomes if o.response is None),
        fhir_version=fhir_version, as_of=as_of, version=__version__, colours=INDICATOR_COLOURS,
        markdown=lambda text: Markup(render_markdown(text)),  # already escaped by markdown-it (html off)
    )
