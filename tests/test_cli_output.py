"""What the CLI prints, and where: details under -v, missing-data reasons, failed inputs in JSON,
stderr for errors, FHIR-worded validation errors, R4/R5 hints, --injectate names (issue 9 items 6-9,
issue 7 item 8)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cds_tpi.cli import cli

from .cdshooks import assert_cds_response
from .conftest import SAMPLES

WARFARIN = SAMPLES / "anticoagulant-warfarin.json"
NO_ALLERGIES = SAMPLES / "missing-data-no-allergy-list.json"
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-01"}


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def _bundle(*resources):
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


# --- 6. text output --------------------------------------------------------------------------

def test_verbose_shows_each_cards_detail_lines():
    plain = run("evaluate", "--now", "2026-11-24", str(WARFARIN))
    verbose = run("evaluate", "--now", "2026-11-24", "-v", str(WARFARIN))
    assert plain.exit_code == verbose.exit_code == 0
    phrase = "Anticoagulants and P2Y12"  # a sentence of the anticoagulant card's detail
    assert phrase not in plain.stdout
    assert phrase in verbose.stdout
    detail_line = next(ln for ln in verbose.stdout.splitlines() if phrase in ln)
    assert detail_line.startswith(" " * 13)  # indented under its card
    assert "**" not in verbose.stdout and "](" not in verbose.stdout  # markdown read as plain text
    assert "StatPearls: Trigger Point Injection <https://" in verbose.stdout


def test_plain_text_of_card_markdown():
    from cds_tpi.cli.evaluate import plain

    assert plain("takes **Warfarin** ([label](https://x.org/a))") == "takes Warfarin (label <https://x.org/a>)"
    assert plain(r"Dr \*Star\* \_x\_") == "Dr *Star* _x_"


def test_missing_data_reasons_are_always_shown():
    r = run("evaluate", "--now", "2026-11-24", str(NO_ALLERGIES))
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    i = next(n for n, ln in enumerate(lines) if "missing-data:" in ln)
    assert lines[i + 1].strip().startswith("not checked: ")
    assert "allergy checks were not done" in lines[i + 1]


def test_each_gap_is_named_once():
    """A skipped record is named once in the missing-data card, with why it was skipped (the note
    printed each gap's head twice: '... was skipped: ... was skipped: invalid FHIR R4')."""
    sample = SAMPLES / "missing-data-invalid-resource.json"
    r = run("evaluate", "-v", "--now", "2026-11-24", str(sample))
    assert r.exit_code == 0
    line = next(ln for ln in r.stdout.splitlines() if "medstmt-import-17" in ln and "invalid FHIR" in ln)
    assert line.count("medstmt-import-17") == 1 and line.count("was skipped") == 1
    assert "was skipped: invalid FHIR R4, effectiveDateTime: invalid dateTime" in line


# --- 7. JSON with failed inputs, --fail-on precedence ------------------------------------------

def test_json_several_inputs_include_failed_ones_as_error_objects(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "Bundle",')
    r = run("evaluate", "--format", "json", "--now", "2026-11-24", str(WARFARIN), str(broken))
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert list(out) == [str(WARFARIN), str(broken)]
    assert_cds_response(out[str(WARFARIN)])
    assert out[str(broken)] == {"error": {"message": out[str(broken)]["error"]["message"]}}
    assert "not valid JSON" in out[str(broken)]["error"]["message"]
    assert f"{broken}: error: not valid JSON" in r.stderr


def test_fail_on_keeps_exit_3_when_another_input_failed(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    r = run("evaluate", "--format", "json", "--fail-on", "warning", "--now", "2026-11-24", str(WARFARIN), str(broken))
    assert r.exit_code == 3
    r = run("evaluate", "--fail-on", "critical", "--now", "2026-11-24", str(WARFARIN), str(broken))
    assert r.exit_code == 1  # threshold not met: the failed input decides


# --- 8. stderr / stdout, no doubled messages, no stray progress line ---------------------------

def test_errors_go_to_stderr_data_to_stdout(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    r = run("evaluate", "--now", "2026-11-24", str(WARFARIN), str(broken))
    assert "error" not in r.stdout and "broken.json: error:" in r.stderr
    assert "anticoagulant" in r.stdout and "anticoagulant" not in r.stderr
    r = run("validate", str(broken))
    assert r.exit_code == 1
    assert "broken.json: error: not valid JSON" in r.stderr and "error:" not in r.stdout
    assert "1 file(s), 0 resource(s) checked" in r.stdout


def test_lint_findings_and_summary_on_stdout(tmp_path):
    r = run("rules", "lint")
    assert r.exit_code == 0 and ": ok" in r.stdout and r.stderr == ""
    r = run("rules", "lint", str(tmp_path / "nope"))
    assert r.exit_code == 1 and r.stderr == ""
    assert "rules directory not found" in r.stdout and "1 error(s)" in r.stdout


def test_injectate_error_names_the_option_once(tmp_path):
    r = run("evaluate", "--injectate", "lidocaine:fifty", str(WARFARIN))
    assert r.exit_code == 2
    assert r.stderr.count("--injectate") == 1, r.stderr
    assert "cannot read 'lidocaine:fifty'" in r.stderr


def test_no_progress_line_off_a_terminal():
    r = run("evaluate", "--progress", "--now", "2026-11-24", str(SAMPLES))
    assert r.exit_code == 0, r.output
    assert "evaluating" not in r.output


# --- issue 7 item 8: --injectate names the value sets do not know -----------------------------

def test_unknown_injectate_is_a_usage_error_with_known_agents_and_close_spellings():
    r = run("evaluate", "--injectate", "lidocaien:50mg,triamcinolone:40mg", str(WARFARIN))
    assert r.exit_code == 2
    err = r.stderr
    assert "'lidocaien' is not a medication the rules know" in err
    assert "Did you mean lidocaine" in err
    # known agents come from the value sets (text patterns and displays), by value set title
    for known in ("bupivacaine", "triamcinolone", "kenalog", "sodium chloride"):
        assert known in err
    assert "Local anesthetics" in err or "local-anesthetics" in err


@pytest.mark.parametrize("spec", ["Kenalog-40:40mg", "xylocaine", "normal saline", "Lidocaine hydrochloride:20mg"])
def test_injectate_names_the_value_sets_know_are_accepted(spec):
    r = run("evaluate", "--injectate", spec, "--site", "trapezius", "--now", "2026-11-24", str(WARFARIN))
    assert r.exit_code == 0, r.output


def test_unknown_injectate_without_close_spelling():
    r = run("evaluate", "--injectate", "xyzzy", str(WARFARIN))
    assert r.exit_code == 2
    assert "'xyzzy' is not a medication" in r.stderr and "Did you mean" not in r.stderr


# --- 9. validation errors in FHIR's terms -----------------------------------------------------

def _condition(**extra):
    c = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}
    c.update(extra)
    return c


@pytest.mark.parametrize("extra,path,message", [
    ({"code": {"coding": ["abc"]}}, "code.coding[0]", 'expected a Coding object, got a string ("abc")'),
    ({"code": {"coding": [5]}}, "code.coding[0]", "expected a Coding object, got a number (5)"),
    ({"code": "abc"}, "code", 'expected a CodeableConcept object, got a string ("abc")'),
    ({"code": {"coding": {"code": "x"}}}, "code.coding", "expected an array (this element repeats), got an object"),
    ({"code": {"coding": [{"code": "x"}, None]}}, "code.coding",
     "item [1] is null: expected a Coding object (FHIR arrays hold no nulls)"),
    ({"note": [{"text": "a"}, "b"]}, "note[1]", 'expected an Annotation object, got a string ("b")'),
    ({"_onsetDateTime": 5}, "_onsetDateTime",
     "expected a primitive-element extension (id, extension) object, got a number (5)"),
    ({"subject": "Patient/p1"}, "subject", 'expected a Reference object, got a string ("Patient/p1")'),
    ({"code": {"coding": [{"code": "x", "cod": "y"}]}}, "code.coding[0].cod",
     "unknown element (Condition.code.coding has no 'cod')"),
    ({"code": {"text": ""}}, "code.text", "empty string: FHIR has no empty values; leave the element out"),
    ({"onsetDateTime": "2020-01-01", "onsetString": "childhood"}, "",
     "only one of onsetAge, onsetDateTime, onsetPeriod, onsetRange, onsetString may be given (a choice element, [x])"),
    ({"subject": {"reference": "Patient/p1"}, "evidence": [{"detail": [{}]}], "id": "c 1"}, "id",
     "invalid id \"c 1\": only letters, digits, '-' and '.'"),
])
def test_validation_errors_speak_fhir(tmp_path, extra, path, message):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(_bundle(PATIENT, _condition(**extra))))
    r = run("validate", str(f))
    assert r.exit_code == 1
    label = "Condition/c1" if path != "id" else "Condition/c 1"
    assert ": ".join(x for x in (f"entry[1] {label}", path, message) if x) in r.stdout, r.stdout
    assert "instance of" not in r.stdout and ".root" not in r.stdout and "Invalid JSON" not in r.stdout


def test_encounter_class_as_r5_array_says_it_looks_like_r5(tmp_path):
    enc = {"resourceType": "Encounter", "id": "e1", "status": "completed",
           "class": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}]}]}
    f = tmp_path / "e.json"
    f.write_text(json.dumps(enc))
    r = run("validate", str(f))
    assert r.exit_code == 1
    assert "Encounter/e1: class: expected a Coding object, got an array" in r.stdout
    assert "this looks like FHIR R5 (it is valid R5): try --fhir-version R5" in r.stdout
    assert run("validate", "--fhir-version", "R5", str(f)).exit_code == 0


R5_STATEMENT = {"resourceType": "MedicationStatement", "id": "ms5", "status": "recorded",
                "subject": {"reference": "Patient/p1"},
                "medication": {"concept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                       "code": "855332", "display": "warfarin sodium 5 MG Oral Tablet"}]}}}
R4_STATEMENT = {"resourceType": "MedicationStatement", "id": "ms4", "status": "active",
                "subject": {"reference": "Patient/p1"},
                "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                          "code": "855332", "display": "warfarin sodium 5 MG Oral Tablet"}]}}


def test_r5_data_read_as_r4_gets_a_hint_in_validate_and_evaluate(tmp_path):
    f = tmp_path / "r5.json"
    f.write_text(json.dumps(_bundle(PATIENT, R5_STATEMENT)))
    r = run("validate", "--format", "json", str(f))
    errors = json.loads(r.stdout)["errors"]
    assert errors and all(e["hint"].startswith("this looks like FHIR R5") for e in errors)
    r = run("evaluate", "--now", "2026-11-24", str(f))
    assert "this looks like R5 data; try --fhir-version R5" in r.stderr
    assert "anticoagulant" in run("evaluate", "--fhir-version", "R5", "--now", "2026-11-24", str(f)).stdout


def test_r4_data_read_as_r5_gets_the_opposite_hint(tmp_path):
    f = tmp_path / "r4.json"
    f.write_text(json.dumps(_bundle(PATIENT, R4_STATEMENT)))
    r = run("validate", "--fhir-version", "R5", str(f))
    assert "this looks like FHIR R4 (it is valid R4): try --fhir-version R4" in r.stdout


def test_mistyped_resource_type_is_an_error_in_evaluate(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"resourceType": "Patiant", "id": "p1"}))
    for command in ("evaluate", "validate"):
        r = run(command, str(f))
        assert r.exit_code == 1, (command, r.output)
        assert "'Patiant' is not a FHIR R4 resource type (did you mean Patient?)" in r.output


def test_mistyped_resource_type_inside_a_bundle_is_named(tmp_path):
    typo = dict(R4_STATEMENT, resourceType="MedicationStatment")
    f = tmp_path / "b.json"
    f.write_text(json.dumps(_bundle(PATIENT, typo)))
    r = run("evaluate", "--format", "json", "--now", "2026-11-24", str(f))
    assert r.exit_code == 0
    cards = {c["source"]["topic"]["code"]: c for c in json.loads(r.stdout)["cards"]}
    assert "did you mean MedicationStatement?" in cards["missing-data"]["detail"]
    assert "entry[1]" in r.stderr and "MedicationStatment" in r.stderr


def test_truncated_json_reports_the_line_where_it_ends(tmp_path):
    text = json.dumps(_bundle(PATIENT, R4_STATEMENT), indent=2)
    cut = text[: text.index('"medicationCodeableConcept"')]
    f = tmp_path / "cut.json"
    f.write_text(cut)
    line = cut.count("\n") + 1
    r = run("evaluate", str(f))
    assert r.exit_code == 1
    assert f"not valid JSON: line {line}, column" in r.stderr
    assert "truncated" in r.stderr


def test_ndjson_error_names_the_files_line(tmp_path):
    f = tmp_path / "x.ndjson"
    f.write_text(json.dumps(PATIENT) + "\n\n" + '{"resourceType": "Condition",\n')
    r = run("evaluate", str(f))
    assert r.exit_code == 1
    assert "line 3, column" in r.stderr  # the blank line counts


def test_size_limit_reports_real_size_and_the_option(tmp_path):
    f = tmp_path / "big.json"
    f.write_text(json.dumps(_bundle(PATIENT, *[dict(R4_STATEMENT, id=f"m{i}") for i in range(40)])))
    size = f.stat().st_size
    r = run("evaluate", "--max-bytes", "1000", str(f))
    assert r.exit_code == 1
    assert f"input is {size:,} bytes, over the limit of 1,000 bytes (raise it with --max-bytes)" in r.stderr
    r = run("evaluate", "--max-bytes", "1000", "-", input=f.read_text())
    assert f"input is {size:,} bytes, over the limit of 1,000 bytes (raise it with --max-bytes)" in r.stderr
