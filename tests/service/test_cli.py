"""`cds-tpi serve` as a real process (workers, security defaults, logs without PHI) and `cds-tpi stats`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import httpx
import pytest
from click.testing import CliRunner

from cds_tpi.cli.serve import build_config, serve
from cds_tpi.cli.stats import stats
from conftest import PATIENT_ID, REPO, free_port, hook_request, stop_process, wait_http

pytestmark = pytest.mark.timeout(180)


def _serve(tmp_path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cds_tpi.cli.serve import serve; serve()", "--port", str(port),
         "--database-url", f"sqlite:///{tmp_path}/serve.sqlite3", *args],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", timeout=60, proc=proc)
    except Exception:
        proc.kill()
        raise AssertionError((tmp_path / "serve.log").read_text())
    return proc, url


def _stop(proc: subprocess.Popen) -> None:
    stop_process(proc, timeout=15)


def test_refuses_a_public_host_without_issuers():
    result = CliRunner().invoke(serve, ["--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2 and "--allow-unauthenticated" in result.output


def test_allow_unauthenticated_and_issuer_config_pass_the_check(tmp_path, signer):
    assert build_config(None, host="0.0.0.0", allow_unauthenticated=True).host == "0.0.0.0"
    config_file = tmp_path / "service.yaml"
    config_file.write_text(f"issuers:\n  - iss: https://ehr.example.org\n    jwks_file: {signer.jwks_file}\n"
                           "public_base_url: https://cds.example.org\n"
                           "max_body_bytes: 1000\nallowed_origins: [https://sandbox.cds-hooks.org]\n")
    config = build_config(str(config_file), host="0.0.0.0")
    assert config.auth_enabled and config.max_body_bytes == 1000
    toml = tmp_path / "service.toml"
    toml.write_text('database_url = "sqlite:///x.db"\nfhir_read_timeout = 1.5\n')
    assert build_config(str(toml)).fhir_read_timeout == 1.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_key: 1\n")
    result = CliRunner().invoke(serve, ["--config", str(bad)])
    assert result.exit_code == 2 and "no_such_key" in result.output


def test_serve_with_two_workers_and_logs_without_tokens_or_patient_ids(tmp_path, medplum):
    proc, url = _serve(tmp_path, "--workers", "2", "--log-level", "debug")
    try:
        request = hook_request("order-sign")
        del request["prefetch"]
        request["fhirServer"] = medplum.url
        request["fhirAuthorization"] = {"access_token": medplum.token, "token_type": "Bearer", "expires_in": 300,
                                        "scope": "patient/*.read", "subject": "cds-tpi"}
        for _ in range(4):  # reaches both workers
            r = httpx.post(url + "/cds-services/tpi-order-sign", json=request, timeout=30)
            assert r.status_code == 200, r.text
            assert "anticoagulant" in {c["source"]["topic"]["code"] for c in r.json()["cards"]}
            request["hookInstance"] = str(uuid.uuid4())
        bad = httpx.post(url + "/cds-services/tpi-order-sign", json={**request, "fhirServer": "http://127.0.0.1:9"},
                         timeout=30)
        assert bad.status_code == 412
    finally:
        _stop(proc)
    log = (tmp_path / "serve.log").read_text()
    assert "NO JWT ISSUERS CONFIGURED" in log
    assert "call service=tpi-order-sign" in log
    assert medplum.token not in log
    assert PATIENT_ID not in log
    assert log.count("cds-tpi service ready") == 2  # one engine per worker


def test_stats_command(tmp_path):
    from datetime import datetime, timezone

    from cds_tpi.service.storage import AuditRecord, FeedbackItem, Storage

    url = f"sqlite:///{tmp_path}/stats.sqlite3"
    store = Storage(url)
    store.create_schema()
    store.write_audit(AuditRecord(datetime.now(timezone.utc), "tpi-order-sign", str(uuid.uuid4()), 200, "evaluated",
                                  3.0, ("anticoagulant",), (("c1", "anticoagulant", "warning"),)))
    store.store_feedback("tpi-order-sign", [FeedbackItem("c1", "overridden", "2025-01-01T00:00:00.000000Z",
                                                         override_system="s", override_code="held",
                                                         override_display="Held already")])
    store.dispose()
    result = CliRunner().invoke(stats, ["--database-url", url])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("anticoagulant"))
    assert line.split()[1:4] == ["1", "0", "1"] and "Held already (1)" in line
    as_json = CliRunner().invoke(stats, ["--database-url", url, "--format", "json"])
    assert '"overridden": 1' in as_json.output
    empty = CliRunner().invoke(stats, ["--database-url", f"sqlite:///{tmp_path}/empty.sqlite3"])
    assert empty.exit_code == 1 and "no service database at" in empty.output
    assert not (tmp_path / "empty.sqlite3").exists()  # a read-only command creates nothing


def test_stats_errors_say_what_went_wrong(tmp_path):
    """A database without the tables says which table is missing; a URL no driver can open is a usage
    error (exit 2, was an internal error, exit 70); a refused connection says so, password hidden."""
    empty = tmp_path / "old.sqlite3"
    empty.touch()
    r = CliRunner().invoke(stats, ["--database-url", f"sqlite:///{empty}"])
    assert r.exit_code == 1 and "no such table" in r.output
    r = CliRunner().invoke(stats, ["--database-url", "bogus://x"])
    assert r.exit_code == 2 and "--database-url" in r.output and "bogus" in r.output
    r = CliRunner().invoke(stats, ["--database-url", "postgresql://cds:secretpw@127.0.0.1:1/x"])
    assert r.exit_code == 1 and "refused" in r.output.lower() and "secretpw" not in r.output
