"""Issue 9 item 16: GET /metrics in Prometheus text format (prometheus-client): calls by service and
status, latency histogram, cards by rule and indicator, FHIR fallback fetches and failures, feedback
outcomes; off by default, protected by a bearer token when configured; summed over workers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, full_prefetch, hook_request, wait_http

pytestmark = pytest.mark.timeout(180)

TOKEN = "scrape-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FHIR_AUTH = {"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read", "subject": "s"}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(snapshot: dict, name: str, **labels: str) -> float:
    return snapshot.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_off_by_default(start_service, fake_evaluator):
    service = start_service(fake_evaluator)
    r = service.get("/metrics")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_metrics_need_the_configured_token(start_service, fake_evaluator):
    service = start_service(fake_evaluator, metrics_enabled=True, metrics_token=TOKEN)
    assert service.get("/metrics").status_code == 401
    assert service.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = service.get("/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "cds_tpi_calls_total" in r.text


def test_calls_cards_fallback_and_feedback_are_counted(start_service, evaluator, fhir_stub):
    service = start_service(evaluator, metrics_enabled=True, allowed_fhir_servers=(fhir_stub.url,),
                            fhir_allow_http=True, fhir_total_timeout=2.0)
    before = samples(service.get("/metrics").text)

    cards = service.post("/cds-services/tpi-order-sign", hook_request("order-sign")).json()["cards"]
    anticoagulant = next(c for c in cards if c["source"]["topic"]["code"] == "anticoagulant")
    assert service.post("/cds-services/tpi-order-sign", {"bad": 1}).status_code == 400
    prefetch = full_prefetch()
    del prefetch["observations"]  # optional: fetched from the stub, or failed
    for mode in ("ok", "error500"):
        request = hook_request("order-sign", prefetch=prefetch, fhirServer=fhir_stub.base(mode),
                               fhirAuthorization=FHIR_AUTH)
        assert service.post("/cds-services/tpi-order-sign", request).status_code == 200
    fb = "/cds-services/tpi-order-sign/feedback"
    entry = {"card": anticoagulant["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z",
             "overrideReason": {"reason": anticoagulant["overrideReasons"][0]}}
    assert service.post(fb, {"feedback": [entry]}).status_code == 200
    assert service.post(fb, {"feedback": [entry]}).status_code == 200  # a duplicate
    unknown = {**entry, "card": str(uuid.uuid4()), "outcome": "accepted"}
    del unknown["overrideReason"]
    assert service.post(fb, {"feedback": [unknown]}).status_code == 404

    after = samples(service.get("/metrics").text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("cds_tpi_calls_total", service="tpi-order-sign", status="200") == 3
    assert delta("cds_tpi_calls_total", service="tpi-order-sign", status="400") == 1
    assert delta("cds_tpi_call_duration_seconds_count", service="tpi-order-sign") == 4
    assert delta("cds_tpi_call_duration_seconds_bucket", service="tpi-order-sign", le="+Inf") == 4
    assert delta("cds_tpi_cards_total", rule="anticoagulant", indicator=anticoagulant["indicator"]) == 3
    assert delta("cds_tpi_fhir_fallback_fetches_total", key="observations") == 1
    assert delta("cds_tpi_fhir_fallback_failures_total", key="observations") == 1
    assert delta("cds_tpi_feedback_total", service="tpi-order-sign", outcome="overridden", result="stored") == 1
    assert delta("cds_tpi_feedback_total", service="tpi-order-sign", outcome="overridden", result="duplicate") == 1
    assert delta("cds_tpi_feedback_total", service="tpi-order-sign", outcome="accepted", result="unknown-card") == 1


def test_metrics_are_summed_over_workers(tmp_path):
    config = tmp_path / "service.yaml"
    config.write_text(f"metrics_enabled: true\nmetrics_token: {TOKEN}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    metrics_dir = tmp_path / "metrics"  # an operator's directory (kept, emptied at start)
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # an earlier run's file: removed, not summed
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cds_tpi.cli import main; main()", "serve", "--port", str(port), "--workers", "2",
         "--config", str(config), "--database-url", f"sqlite:///{tmp_path}/m.sqlite3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        wait_http(url + "/health", timeout=90, proc=proc)
        with httpx.Client(timeout=30) as client:
            for _ in range(40):
                # a new connection each time, so that both workers answer some
                r = httpx.post(url + "/cds-services/tpi-patient-view", json=hook_request("patient-view"), timeout=30)
                assert r.status_code == 200, r.text
            for _ in range(6):  # whichever worker answers, the totals are the same
                snapshot = samples(client.get(url + "/metrics", headers=AUTH).text)
                assert value(snapshot, "cds_tpi_calls_total", service="tpi-patient-view", status="200") == 40
                assert value(snapshot, "cds_tpi_call_duration_seconds_count", service="tpi-patient-view") == 40
        # both workers counted (one file per process and metric type)
        assert len({p.name.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}) == 2
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out
