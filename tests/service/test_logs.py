"""Issue 9 item 11: each call's log line says which prefetch keys came from the request and which
from the FHIR server; each 401 is logged with its reason; never a token or a patient id; JSON lines
on request (`--log-format json`)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import httpx
import pytest

from cds_tpi.service.logs import JsonFormatter
from conftest import PATIENT_ID, free_port, full_prefetch, hook_request, issuer_for, wait_http

pytestmark = pytest.mark.timeout(120)

TOKEN = "fhir-access-token-do-not-log-42"


def _call_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cds_tpi.service" and r.getMessage().startswith("call ")]


def _assert_clean(caplog, *secrets: str) -> None:
    text = "\n".join(r.getMessage() + json.dumps(getattr(r, "fields", {}), default=str) for r in caplog.records)
    for secret in secrets:
        assert secret not in text


def test_call_lines_say_where_the_records_came_from(start_service, evaluator, fhir_stub, caplog):
    service = start_service(evaluator)
    with caplog.at_level(logging.INFO, logger="cds_tpi.service"):
        assert service.post("/cds-services/tpi-order-sign", hook_request("order-sign")).status_code == 200
        prefetch = full_prefetch()
        del prefetch["medicationRequests"], prefetch["observations"]
        request = hook_request("order-sign", prefetch=prefetch, fhirServer=fhir_stub.base("ok"), fhirAuthorization={
            "access_token": TOKEN, "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
            "subject": "cds-tpi"})
        assert service.post("/cds-services/tpi-order-sign", request).status_code == 200
    sent, fetched = _call_lines(caplog)[-2:]
    assert "prefetch=patient,medicationRequests,medicationStatements,conditions,allergies,procedures,observations" \
        in sent.getMessage() and "fhir=- missing=-" in sent.getMessage()
    assert "fhir=medicationRequests,observations" in fetched.getMessage()
    assert fetched.fields["records_fhir"] == ["medicationRequests", "observations"]
    assert "medicationRequests" not in fetched.fields["records_prefetch"]
    _assert_clean(caplog, PATIENT_ID, TOKEN)


def test_each_401_is_logged_with_its_reason_and_never_the_token(start_service, fake_evaluator, signer, caplog):
    service = start_service(fake_evaluator, issuers=issuer_for(signer))
    aud = service.config.public_base_url.rstrip("/") + "/cds-services"
    expired = signer.token(aud, iat_offset=-1000, lifetime=300)
    wrong_aud = signer.token(aud + "/elsewhere")
    with caplog.at_level(logging.INFO, logger="cds_tpi.service"):
        assert service.get("/cds-services").status_code == 401
        assert service.get("/cds-services", headers={"Authorization": f"Bearer {expired}"}).status_code == 401
        assert service.get("/cds-services", headers={"Authorization": f"Bearer {wrong_aud}"}).status_code == 401
        call = service.post("/cds-services/tpi-order-sign", hook_request("order-sign"),
                            headers={"Authorization": f"Bearer {expired}"})
        assert call.status_code == 401
    refusals = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "unauthorized"]
    reasons = [r.fields["reason"] for r in refusals]
    assert len(refusals) == 4, [r.getMessage() for r in caplog.records]
    assert "Authorization" in reasons[0]
    assert "expired" in reasons[1]
    assert "aud" in reasons[2] and "aud" in reasons[3]  # the call's URL is not the token's audience
    assert "POST /cds-services/tpi-order-sign" in refusals[3].getMessage()
    assert all(r.levelno == logging.WARNING and "401 on " in r.getMessage() for r in refusals)
    _assert_clean(caplog, expired, wrong_aud, expired.split(".")[1], PATIENT_ID)


def test_json_formatter_adds_the_fields():
    record = logging.LogRecord("cds_tpi.service", logging.INFO, __file__, 1, "call %s", ("x",), None)
    record.fields = {"event": "call", "status": 200, "message": "not overwritten"}
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "call x" and line["level"] == "info" and line["status"] == 200
    assert line["time"].endswith("Z") and line["logger"] == "cds_tpi.service"


def test_serve_with_json_logs(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cds_tpi.cli import main; main()", "serve", "--port", str(port),
         "--database-url", f"sqlite:///{tmp_path}/logs.sqlite3", "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        r = httpx.post(f"http://127.0.0.1:{port}/cds-services/tpi-order-sign", json=hook_request("order-sign"), timeout=30)
        assert r.status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]  # every line is JSON
    call = next(line for line in lines if line.get("event") == "call")
    assert call["status"] == 200 and call["records_prefetch"] and call["records_fhir"] == []
    assert any("service ready" in line["message"] for line in lines)
    assert PATIENT_ID not in out
