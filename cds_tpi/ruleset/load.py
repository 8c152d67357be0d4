"""Load rules/ (rule YAML, value sets, record policy), check everything, report every error with file:line."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from ..errors import RuleError
from ..terminology import Terminology, load_terminology
from .checks import check_rule
from .model import Alternative, Pattern, Rule
from .records import RecordPolicy, load_record_policy
from .yamlfile import line_of, load_yaml, to_plain

_SCHEMA = json.loads(resources.files(__package__).joinpath("rule.schema.json").read_text(encoding="utf-8"))
_VALIDATOR = jsonschema.Draft202012Validator(_SCHEMA)

POLICY_FILE = "records.yaml"


def default_rules_dir() -> Path:
    """rules/ of a source checkout, else the copy installed with the package (`cds_tpi_rules`)."""
    checkout = Path(__file__).resolve().parents[2] / "rules"
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec("cds_tpi_rules")  # a data-only (namespace) package in the wheel
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location).is_dir():
            return Path(location)
    return checkout


@dataclass
class RuleBook:
    """Everything in a rules directory, checked."""

    directory: Path
    rules: list[Rule] = field(default_factory=list)
    terminology: Terminology | None = None
    records: RecordPolicy | None = None
    errors: list[str] = field(default_factory=list)

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)


def load_rulebook(directory: Path | None = None, *, strict: bool = True) -> RuleBook:
    """Load and check a rules directory. strict: raise RuleError listing the errors; else collect them."""
    directory = Path(directory) if directory else default_rules_dir()
    book = RuleBook(directory)
    if not directory.is_dir():
        book.errors.append(f"{directory}: rules directory not found")
        return _finish(book, strict)
    book.terminology = load_terminology(directory / "valuesets", book.errors)
    book.records = load_record_policy(directory / POLICY_FILE, book.terminology, book.errors)
    seen: dict[str, str] = {}
    files = sorted(p for p in directory.glob("*.y*ml") if p.name != POLICY_FILE)
    if not files:
        book.errors.append(f"{directory}: no rule files (*.yaml)")
    for path in files:
        rule = _load_rule(path, book)
        if rule is None:
            continue
        if rule.id in seen:
            book.errors.append(f"{path}:1: rule id '{rule.id}' is already used by {seen[rule.id]}")
            continue
        seen[rule.id] = str(path)
        book.rules.append(rule)
    return _finish(book, strict)


def _finish(book: RuleBook, strict: bool) -> RuleBook:
    if strict and book.errors:
        more = f"\n(+{len(book.errors) - 20} more)" if len(book.errors) > 20 else ""
        raise RuleError("invalid rules:\n" + "\n".join(book.errors[:20]) + more)
    return book


def _load_rule(path: Path, book: RuleBook) -> Rule | None:
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        book.errors.append(f"{path}:1: cannot read: {e}")
        return None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        book.errors.append(f"{path}:{line}: YAML error: {getattr(e, 'problem', e)}")
        return None
    if not isinstance(doc, dict):
        book.errors.append(f"{path}:1: a rule file must be a mapping")
        return None
    schema_errors = sorted(_VALIDATOR.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    for err in schema_errors:
        where = "/".join(str(p) for p in err.absolute_path) or "(top)"
        msg = err.message if len(err.message) < 200 else err.message[:200] + "…"
        book.errors.append(f"{path}:{line_of(doc, list(err.absolute_path))}: {where}: {msg}")
    if schema_errors:
        return None
    plain = to_plain(doc)
    alternatives = []
    for i, alt in enumerate(plain["when"]):
        patterns = tuple(
            Pattern(name, p["fact"], p.get("where", {}), bool(p.get("absent", False)), p.get("min_count"))
            for name, p in alt["match"].items()
        )
        alternatives.append(Alternative(i, patterns, alt.get("indicator"), alt.get("note")))
    rule = Rule(
        id=plain["id"],
        title=plain["title"],
        indicator=plain["indicator"],
        alternatives=tuple(alternatives),
        card=plain["card"],
        sources=tuple(plain["sources"]),
        params=plain.get("params", {}),
        description=plain.get("description", ""),
        policy=plain.get("policy", ""),
        path=str(path),
    )
    problems = check_rule(rule, book.terminology)
    for json_path, message in problems:
        book.errors.append(f"{path}:{line_of(doc, json_path)}: {message}")
    if path.stem != rule.id:
        book.errors.append(f"{path}:{line_of(doc, ['id'])}: rule id '{rule.id}' must match the file name '{path.stem}'")
    return None if problems else rule
