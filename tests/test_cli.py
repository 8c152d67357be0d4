"""The `cds-tpi` CLI: exit codes, error lines (never a traceback), output formats."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cds_tpi.cli import cli

from .cdshooks import assert_cds_response
from .conftest import SAMPLES

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-01"}


def _bundle(*resources):
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:0000000{i}-0000-4000-8000-000000000000", "resource": r} for i, r in enumerate(resources)]}


def _ms(rid, **extra):
    r = {"resourceType": "MedicationStatement", "id": rid, "status": "active", "subject": {"reference": "Patient/p1"},
         "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "855332",
                                                   "display": "warfarin sodium 5 MG Oral Tablet"}]}}
    r.update(extra)
    return r


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_bundle(PATIENT, _ms("ms0"))))
    bad = tmp_path / "bundle.json"
    bad.write_text(json.dumps(_bundle(PATIENT, _ms("ms0"), _ms("ms1"), _ms("ms2"), _ms("ms1x", id="ms1", effectiveDateTime="2024-13-45"))))
    return tmp_path, good, bad


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def response_of(r) -> dict:
    """The CDS Hooks response a `--format json` run printed for its single input, checked by the shared helper."""
    response = json.loads(r.stdout)
    assert_cds_response(response)
    return response


def test_validate_valid_file(files):
    _, good, _ = files
    r = run("validate", str(good))
    assert r.exit_code == 0, r.output
    assert "1 file(s), 2 resource(s) checked against FHIR R4: all valid" in r.output


def test_validate_reports_file_entry_resource_and_element(files):
    _, _, bad = files
    r = run("validate", str(bad))
    assert r.exit_code == 1
    line = next(ln for ln in r.output.splitlines() if "effectiveDateTime" in ln)
    assert line.startswith(f"{bad}: entry[4] MedicationStatement/ms1: effectiveDateTime: ")
    assert "1 error(s) in 1 file(s)" in r.output


def test_validate_json_format_and_directories(files):
    tmp, _, bad = files
    r = run("validate", "--format", "json", str(tmp))
    assert r.exit_code == 1
    report = json.loads(r.output)
    assert report["files"] == 2 and report["invalid_files"] == 1
    assert report["errors"][0]["resource"] == "MedicationStatement/ms1"
    assert report["errors"][0]["path"] == "effectiveDateTime"


def test_validate_usage_errors_exit_2(tmp_path):
    assert run("validate", str(tmp_path / "missing.json")).exit_code == 2
    assert run("validate").exit_code == 2
    assert run("validate", str(tmp_path)).exit_code == 2  # an empty directory


@pytest.mark.parametrize("content,message", [
    (b"", "input is empty"),
    (b"   \n", "input is empty"),
    (b"{not json", "not valid JSON"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary data"),
    (b"\xff\xfe\x00t", "binary data"),
    (b"[1, 2", "not valid JSON"),
    (b'{"hello": "world"}', "not FHIR"),
    (b'"just a string"', "expected a JSON object"),
    (b'{"resourceType": 42}', "resourceType is not a string"),
])
@pytest.mark.parametrize("command", ["validate", "evaluate"])
def test_bad_input_gives_one_clear_line(tmp_path, content, message, command):
    f = tmp_path / "input.json"
    f.write_bytes(content)
    r = run(command, str(f))
    assert r.exit_code == 1
    assert message in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("command", ["validate", "evaluate"])
def test_huge_input_is_refused(tmp_path, command):
    f = tmp_path / "big.json"
    f.write_text(json.dumps(_bundle(*[_ms(f"m{i}") for i in range(50)])))
    r = run(command, "--max-bytes", "1000", str(f))
    assert r.exit_code == 1 and "over the limit of 1,000" in r.output


def test_bad_file_does_not_stop_the_others(files):
    tmp, good, _ = files
    (tmp / "zz-broken.json").write_text("{")
    r = run("evaluate", "--now", "2026-11-24", str(tmp))
    assert r.exit_code == 1
    assert "zz-broken.json: error: not valid JSON" in r.output
    assert "anticoagulant" in r.output  # good.json and bundle.json were still evaluated


def test_evaluate_json_single_input_is_exact_cds_hooks_response(files):
    _, good, _ = files
    r = run("evaluate", "--format", "json", "--now", "2026-11-24", str(good))
    assert r.exit_code == 0
    response = response_of(r)
    assert list(response) == ["cards"]
    assert "anticoagulant" in [c["source"]["topic"]["code"] for c in response["cards"]]


def test_evaluate_json_several_inputs_maps_each_to_a_valid_response():
    r = run("evaluate", "--format", "json", "--now", "2026-11-24", str(SAMPLES))
    assert r.exit_code == 0, r.output
    responses = json.loads(r.stdout)
    assert len(responses) == len(list(SAMPLES.glob("*.json")) + list(SAMPLES.glob("*.ndjson")))
    for response in responses.values():
        assert_cds_response(response)


def test_evaluate_json_stdin_is_a_valid_response(files):
    _, good, _ = files
    r = run("evaluate", "--format", "json", "--now", "2026-11-24", "-", input=good.read_text())
    assert r.exit_code == 0
    assert "anticoagulant" in [c["source"]["topic"]["code"] for c in response_of(r)["cards"]]


def test_evaluate_stdin_and_fail_on(files):
    _, good, _ = files
    r = run("evaluate", "--fail-on", "warning", "-", input=good.read_text())
    assert r.exit_code == 3
    r = run("evaluate", "--fail-on", "critical", "-", input=good.read_text())
    assert r.exit_code == 0


def test_evaluate_skips_invalid_resource_and_says_so(files):
    _, _, bad = files
    r = run("evaluate", "--format", "json", "--now", "2026-11-24", str(bad))
    cards = {c["source"]["topic"]["code"]: c for c in response_of(r)["cards"]}
    assert "anticoagulant" in cards  # the valid warfarin statements still count
    assert "MedicationStatement/ms1" in cards["missing-data"]["detail"]
    assert "effectiveDateTime" in cards["missing-data"]["detail"]


def test_injectate_and_site_synthesize_an_order(files):
    _, good, _ = files
    r = run("evaluate", "--format", "json", "--now", "2026-11-24", "--injectate", "lidocaine:400mg,triamcinolone:40mg",
            "--site", "trapezius", str(good))
    ids = {c["source"]["topic"]["code"]: c["indicator"] for c in response_of(r)["cards"]}
    assert ids["anesthetic-dose"] == "critical"
    assert ids["thoracic-site"] == "info"


@pytest.mark.parametrize("spec", ["lidocaine:fifty", ":50mg", "lidocaine:50", ","])
def test_bad_injectate_is_a_usage_error(files, spec):
    _, good, _ = files
    r = run("evaluate", "--injectate", spec, str(good))
    assert r.exit_code == 2
    assert "--injectate" in r.output


def test_bad_now_is_a_usage_error(files):
    _, good, _ = files
    assert run("evaluate", "--now", "yesterday", str(good)).exit_code == 2


def test_r5_is_selectable(tmp_path):
    cond = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91302008", "display": "Sepsis"}]}}
    f = tmp_path / "r5.json"
    f.write_text(json.dumps(_bundle(PATIENT, cond)))
    r = run("evaluate", "--fhir-version", "R5", "--format", "json", str(f))
    assert "systemic-infection" in r.output
    response_of(r)
    r4_only = tmp_path / "r4.json"
    r4_only.write_text(json.dumps(_bundle(PATIENT, _ms("ms0"))))
    # medicationCodeableConcept is R4 only: under R5 the statement is skipped and named
    r = run("evaluate", "--fhir-version", "R5", "--format", "json", str(r4_only))
    assert "MedicationStatement/ms0" in r.output and "anticoagulant" not in json.dumps(
        [c["source"]["topic"]["code"] for c in response_of(r)["cards"]])


def test_console_script_never_prints_a_traceback(tmp_path):
    f = tmp_path / "x.json"
    f.write_bytes(b"\x00\x01")
    p = subprocess.run([sys.executable, "-c", "from cds_tpi.cli import main; main()", "evaluate", str(f)],
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and "binary" in p.stderr


def test_progress_bar_for_many_files(tmp_path):
    for i, sample in enumerate(sorted(SAMPLES.glob("*.json"))[:12]):
        (tmp_path / f"{i:02}.json").write_bytes(sample.read_bytes())
    r = run("evaluate", "--progress", "--now", "2026-11-24", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "12 input(s) evaluated" in r.output
    assert "evaluating" not in r.output  # CliRunner's stderr is not a terminal: no bar, no stray label


def test_records_of_another_patient_fail_that_input_only(tmp_path):
    """Class 9 of issue 7 in the CLI: the input mixing patients is an error (exit 1), the others are
    still evaluated."""
    refused = Path(__file__).parent / "refused_samples" / "ehr-patient-identifier-subject-other-mrn.json"
    r = run("evaluate", "--now", "2026-11-24", str(refused), str(SAMPLES / "anticoagulant-warfarin.json"))
    assert r.exit_code == 1
    assert "records of another patient, refused: MedicationRequest/medrx-warfarin" in r.stderr
    assert "anticoagulant" in r.stdout
