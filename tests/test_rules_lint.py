"""`cds-tpi rules lint`: the bundled rules are clean; each kind of mistake is reported with file:line."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from cds_tpi.cli import cli

from .conftest import RULES


def _edit(path, old: str, new: str) -> None:
    """Replace the first `old` in a rules file of the copy with `new` (`old` must be there: test setup)."""
    text = path.read_text()
    assert old in text, f"test setup: '{old}' not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def _lint(path):
    return CliRunner().invoke(cli, ["rules", "lint", str(path)])


def test_bundled_rules_lint_clean():
    result = _lint(RULES)
    assert result.exit_code == 0, result.output
    assert "14 rule(s)" in result.output


def test_rules_list_prints_every_rule():
    result = CliRunner().invoke(cli, ["rules", "list"])
    assert result.exit_code == 0
    ids = [line.split()[0] for line in result.output.splitlines()]
    assert ids == sorted(["anticoagulant", "bleeding-disorder", "local-infection", "systemic-infection", "allergy-anesthetic",
                          "allergy-steroid", "latex-allergy", "diabetes-steroid", "steroid-frequency", "repeat-interval",
                          "thoracic-site", "anesthetic-dose", "missing-data", "pregnancy-steroid"])


@pytest.fixture
def rules_copy(tmp_path):
    dst = tmp_path / "rules"
    shutil.copytree(RULES, dst)
    return dst


BREAKAGES = [
    # (file, old text, new text, expected line, expected message part)
    ("anticoagulant.yaml", "drug: {fact: medication,", "drug: {fact: medicine,", 18, "when/0/match/drug/fact"),
    ("anticoagulant.yaml", "vs: {any: [anticoagulants, p2y12-inhibitors]}", "vs: {any: [anticoagulantz]}", 22, "unknown value set 'anticoagulantz'"),
    ("anticoagulant.yaml", "where: {vs:", "where: {colour: red, vs:", 18, "unknown field 'colour'"),
    ("anticoagulant.yaml", "patient takes {{ drug | names }}{%", "patient takes {{ drug | names }{%", 40, "template error"),
    ("anticoagulant.yaml", "patient takes {{ drug | names }}{%", "patient takes {{ drugs | names }}{%", 40, "'drugs' is undefined"),
    ("anticoagulant.yaml", "indicator: warning", "indicator: severe", 3, "indicator"),
    ("anticoagulant.yaml", "id: anticoagulant", "id: anticoagulants", 1, "must match the file name"),
    ("anticoagulant.yaml", "title: Anticoagulant", "title: Anticoagulant\ntitle: again", 3, "duplicate key"),
    ("bleeding-disorder.yaml", "value: {gt: {param: inr_max}}", "value: {gt: {param: inr_maximum}}", 18, "unknown param 'inr_maximum'"),
    ("local-infection.yaml", "{ref: infection.region}", "{ref: infektion.region}", 22, "no earlier (present) pattern 'infektion'"),
]


@pytest.mark.parametrize("fname,old,new,line,message", BREAKAGES, ids=[b[4][:30] for b in BREAKAGES])
def test_lint_reports_file_line_and_reason(rules_copy, fname, old, new, line, message):
    path = rules_copy / fname
    _edit(path, old, new)
    result = _lint(rules_copy)
    assert result.exit_code == 1
    hits = [ln for ln in result.output.splitlines() if ln.startswith(f"{path}:{line}:") and message in ln]
    assert hits, result.output


def test_lint_reports_every_error_at_once(rules_copy):
    for fname in ("anticoagulant.yaml", "systemic-infection.yaml"):
        p = rules_copy / fname
        p.write_text(p.read_text().replace("fact: condition", "fact: nonsense").replace("fact: medication", "fact: nonsense"))
    result = _lint(rules_copy)
    assert result.exit_code == 1
    assert "anticoagulant.yaml:" in result.output and "systemic-infection.yaml:" in result.output


def test_lint_reports_broken_value_sets(rules_copy):
    (rules_copy / "valuesets" / "latex.json").write_text('{"resourceType": "ValueSet", "id": 5,\n  "url": }')
    (rules_copy / "valuesets" / "saline.json").write_text(
        '{"resourceType": "ValueSet", "id": "saline", "url": "https://x/saline", "status": "bogus-status",\n'
        ' "compose": {"include": [{"valueSet": ["https://nowhere/ValueSet/none"]}]}}')
    result = _lint(rules_copy)
    assert result.exit_code == 1
    out = result.output
    assert "latex.json:2: not valid JSON" in out
    assert "saline.json" in out and "status" in out
    assert "includes unknown value set https://nowhere/ValueSet/none" in out


def test_lint_of_a_missing_directory(tmp_path):
    result = _lint(tmp_path / "nope")
    assert result.exit_code == 1
    assert "rules directory not found" in result.output


def test_none_inside_or_is_reported(rules_copy):
    path = rules_copy / "anticoagulant.yaml"
    _edit(path, "where: {vs: {any: [anticoagulants, p2y12-inhibitors], none: [heparin-flush]}}",
          "where: {or: [{vs: {none: [anticoagulants]}}, {status: active}]}")
    result = _lint(rules_copy)
    assert result.exit_code == 1
    assert f"{path}:18:" in result.output and "'none' cannot be used inside 'or'" in result.output


def test_lint_reports_every_error_of_every_file(rules_copy):
    """Schema errors do not hide the other errors of the same file; every file is reported."""
    bleeding = rules_copy / "bleeding-disorder.yaml"
    for old, new in [("indicator: critical", "indicator: severe"),                                       # schema
                     ("{vs: {any: [bleeding-disorders], none: [thrombocytopenia]}}",
                      "{vs: {any: [bleeding-disorderz], none: [thrombocytopenia]}}"),                      # value set
                     ("value: {gt: {param: inr_max}}", "value: {gt: {param: inr_maximum}}")]:            # param
        _edit(bleeding, old, new)
    anticoagulant = rules_copy / "anticoagulant.yaml"
    anticoagulant.write_text(anticoagulant.read_text().replace("vs: {any: [anticoagulants, p2y12-inhibitors]}",
                                                               "vs: {any: [anticoagulantz]}, colour: red"))
    result = _lint(rules_copy)
    assert result.exit_code == 1
    lines = result.output.splitlines()

    def line_of(path, needle):
        return next(n for n, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)

    expected = [
        f"{bleeding}:{line_of(bleeding, 'indicator: severe')}: indicator: 'severe' is not one of",
        f"{bleeding}:{line_of(bleeding, 'bleeding-disorderz')}: unknown value set 'bleeding-disorderz'",
        f"{bleeding}:{line_of(bleeding, 'inr_maximum')}: unknown param 'inr_maximum'",
        f"{anticoagulant}:{line_of(anticoagulant, 'anticoagulantz')}: unknown value set 'anticoagulantz'",
        f"{anticoagulant}:{line_of(anticoagulant, 'colour')}: unknown field 'colour'",
    ]
    for want in expected:
        assert any(ln.startswith(want) for ln in lines), (want, result.output)
    assert "5 error(s)" in result.output


def test_rulebook_issues_are_data(rules_copy):
    from cds_tpi.ruleset import load_rulebook

    p = rules_copy / "bleeding-disorder.yaml"
    p.write_text(p.read_text().replace("value: {gt: {param: inr_max}}", "value: {gt: {param: inr_maximum}}", 1))
    book = load_rulebook(rules_copy, strict=False)
    (issue,) = book.issues
    assert issue.location.file == str(p) and issue.location.line == 18 and issue.severity == "error"
    assert issue.location.pointer[:3] == ("when", 1, "match")
    assert str(issue) == f"{p}:18: unknown param 'inr_maximum' (declare it under params)"


def test_lint_refuses_a_coded_unit_no_table_converts(rules_copy):
    path = rules_copy / "records.yaml"
    _edit(path, '"258773002": mL', '"258773002": millilitres-per-vial')
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if '"258773002"' in ln)
    result = _lint(rules_copy)
    assert result.exit_code == 1
    assert any(ln.startswith(f"{path}:{line}:") and "'millilitres-per-vial' is in no dose_units" in ln
               for ln in result.output.splitlines()), result.output


@pytest.mark.parametrize("new,message", [
    ('"mmol/mol": {factor: 0, offset: 2.152}', "0 is less than or equal to the minimum"),
    ('"mmol/mol": {factor: 0.09148, offset: "2.152"}', "is not of type 'number'"),
    ('"%": {factor: 0.09148, offset: 2.152}', "is the unit the results are compared in"),
])
def test_lint_checks_a_value_set_unit_conversion(rules_copy, new, message):
    path = rules_copy / "records.yaml"
    _edit(path, '"mmol/mol": {factor: 0.09148, offset: 2.152}', new)
    result = _lint(rules_copy)
    assert result.exit_code == 1
    assert message in result.output, result.output
