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
from .facttypes import FACT_FIELDS
from .issues import Issue, Location, from_text
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
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        """The error issues as lint lines, `file:line: message`."""
        return [str(i) for i in self.issues if i.severity == "error"]

    def add(self, file, line: int, message: str) -> None:
        self.issues.append(Issue(Location(str(file), line), message))

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
        book.add(directory, 0, "rules directory not found")
        return _finish(book, strict)
    lines: list[str] = []  # the value set and record-policy loaders write `file:line: message` lines
    book.terminology = load_terminology(directory / "valuesets", lines)
    book.records = load_record_policy(directory / POLICY_FILE, book.terminology, lines)
    book.issues += [from_text(line) for line in lines]
    seen: dict[str, str] = {}
    files = sorted(p for p in directory.glob("*.y*ml") if p.name != POLICY_FILE)
    if not files:
        book.add(directory, 0, "no rule files (*.yaml)")
    for path in files:
        rule = _load_rule(path, book)
        if rule is None:
            continue
        if rule.id in seen:
            book.add(path, 1, f"rule id '{rule.id}' is already used by {seen[rule.id]}")
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
        book.add(path, 1, f"cannot read: {e}")
        return None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        book.add(path, mark.line + 1 if mark else 1, f"YAML error: {getattr(e, 'problem', e)}")
        return None
    if not isinstance(doc, dict):
        book.add(path, 1, "a rule file must be a mapping")
        return None
    schema_errors = sorted(_VALIDATOR.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    for err in schema_errors:
        where = "/".join(str(p) for p in err.absolute_path) or "(top)"
        msg = err.message if len(err.message) < 200 else err.message[:200] + "…"
        book.add(path, line_of(doc, list(err.absolute_path)), f"{where}: {msg}")
    # The parts the schema found no error in are still checked, so one lint run reports everything.
    broken = [tuple(e.absolute_path) for e in schema_errors]
    rule, complete = _build_rule(to_plain(doc), path, broken)
    problems = [i for i in check_rule(rule, book.terminology)
                if complete or not (i.location.pointer[:1] == ("card",) or i.location.pointer[-1:] == ("note",))]
    for i in problems:
        book.issues.append(i.at(str(path), line_of(doc, list(i.location.pointer))))
    if isinstance(doc.get("id"), str) and path.stem != rule.id:
        book.add(path, line_of(doc, ["id"]), f"rule id '{rule.id}' must match the file name '{path.stem}'")
    return None if problems or schema_errors else rule


def _inside(pointer: tuple, broken: list[tuple]) -> bool:
    """Is a schema error at or below this element?"""
    return any(b[:len(pointer)] == pointer for b in broken)


def _build_rule(plain: dict, path: Path, broken: list[tuple]) -> tuple[Rule, bool]:
    """The rule model of a file; with schema errors, of the parts without one (a pattern with an
    error keeps its name and fact type but no conditions). complete: every pattern's fact type is
    known, so templates can be checked against the pattern names."""
    alternatives, complete = [], True
    when = plain.get("when") if isinstance(plain.get("when"), list) else []
    for i, alt in enumerate(when):
        match = alt.get("match") if isinstance(alt, dict) else None
        if not isinstance(match, dict):
            complete = False
            continue
        patterns = []
        for name, p in match.items():
            if not isinstance(p, dict) or p.get("fact") not in FACT_FIELDS:
                complete = False
                continue
            ok = not _inside(("when", i, "match", name), broken)
            patterns.append(Pattern(name, p["fact"], p.get("where", {}) if ok else {}, p.get("absent") is True,
                                    p.get("min_count") if ok else None))
        alternatives.append(Alternative(i, tuple(patterns), *(alt.get(k) if not _inside(("when", i, k), broken) else None
                                                             for k in ("indicator", "note"))))
    card = plain.get("card") if isinstance(plain.get("card"), dict) and not _inside(("card",), broken) else {}
    params = plain.get("params") if isinstance(plain.get("params"), dict) else {}
    rule = Rule(
        id=plain["id"] if isinstance(plain.get("id"), str) else path.stem,
        title=str(plain.get("title", "")),
        indicator=plain.get("indicator", "info"),
        alternatives=tuple(alternatives),
        card=card,
        sources=tuple(plain.get("sources") or ()),
        params=params,
        description=plain.get("description", ""),
        policy=plain.get("policy", ""),
        path=str(path),
    )
    return rule, complete
