"""Prometheus metrics (`GET /metrics`, text format) with the `prometheus-client` library.

With several uvicorn workers every worker counts in its own process; `cds-tpi serve` then points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers start, each worker's values go to
files there, and whichever worker answers `/metrics` sums them (the library's multiprocess mode).
The environment variable must be set before `prometheus_client` is imported: this module is
imported only by the app, which `cds-tpi serve` loads after setting it.

Labels hold service ids, HTTP statuses, rule ids, indicators, prefetch key names and feedback
outcomes: a small fixed set, never a patient, a token or anything a caller chooses freely.

`/metrics` is off unless `metrics_enabled`; with `metrics_token` it requires
`Authorization: Bearer <metrics_token>` (a scraper's static token; CDS Hooks JWTs are single-use).
"""

from __future__ import annotations

import hmac
import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from starlette.requests import Request
from starlette.responses import Response

from cds_tpi.service.outcomes import HttpError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CALLS = Counter("cds_tpi_calls_total", "CDS service calls answered, by service and HTTP status",
                ["service", "status"])
LATENCY = Histogram("cds_tpi_call_duration_seconds", "Time to answer a CDS service call", ["service"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
CARDS = Counter("cds_tpi_cards_total", "Cards answered, by rule and indicator", ["rule", "indicator"])
FHIR_FETCHES = Counter("cds_tpi_fhir_fallback_fetches_total",
                       "Prefetch keys fetched from the EHR's FHIR server (not sent in the request)", ["key"])
FHIR_FAILURES = Counter("cds_tpi_fhir_fallback_failures_total",
                        "Prefetch keys the FHIR server could not deliver (timeout, error, refused, too large)", ["key"])
FEEDBACK = Counter("cds_tpi_feedback_total", "Feedback entries, by service, outcome and result",
                   ["service", "outcome", "result"])


def observe_call(service: str, status: int, seconds: float, cards: Iterable[tuple[str, str | None, str]]) -> None:
    """One answered call and its cards ((uuid, rule id, indicator) as in the audit rows)."""
    CALLS.labels(service, str(status)).inc()
    LATENCY.labels(service).observe(seconds)
    for _uuid, rule, indicator in cards:
        CARDS.labels(rule or "(none)", indicator).inc()


def observe_fallback(fhir_server: str | None, results: Iterable[tuple[Any, tuple[str, Any]]]) -> None:
    """Per prefetch key (a PrefetchKey and its ("given" | "fetched" | "failed", value) result): a
    fetch from the FHIR server, or a failure of one. Without a fhirServer nothing was attempted."""
    if not fhir_server:
        return
    for key, (status, _value) in results:
        if status == "fetched":
            FHIR_FETCHES.labels(key.key).inc()
        elif status == "failed":
            FHIR_FAILURES.labels(key.key).inc()


def observe_feedback(service: str, items: Iterable[Any], added: int) -> None:
    """Feedback entries stored; the first `added` are new, the rest duplicates (store order is kept)."""
    for i, item in enumerate(items):
        FEEDBACK.labels(service, item.outcome, "stored" if i < added else "duplicate").inc()


def observe_feedback_refused(service: str, items: Iterable[Any], status: int) -> None:
    """Feedback entries of a call refused after validation (404 unknown card, 400 reason not offered)."""
    result = {404: "unknown-card", 400: "reason-not-offered"}.get(status, f"refused-{status}")
    for item in items:
        FEEDBACK.labels(service, item.outcome, result).inc()


def render() -> bytes:
    """The exposition text: all workers' values in multiprocess mode, this process's otherwise."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    from prometheus_client import REGISTRY  # noqa: PLC0415

    return generate_latest(REGISTRY)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: 404 when off; 401 without the configured bearer token."""
    config = request.app.state.service.config
    if not config.metrics_enabled:
        raise HttpError(404, "metrics are off (metrics_enabled in the service configuration)")
    if config.metrics_token:
        given = request.headers.get("authorization", "")
        expected = f"Bearer {config.metrics_token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HttpError(401, "metrics require 'Authorization: Bearer <metrics_token>'",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    return Response(render(), media_type=CONTENT_TYPE_LATEST)


def prepare_multiprocess_dir() -> str | None:
    """For `cds-tpi serve --workers N` (N > 1), before the workers start: a fresh, empty directory
    in PROMETHEUS_MULTIPROC_DIR (files of an earlier run would be summed in). An operator's own
    directory is kept but emptied. Returns the directory to remove at exit (None if the operator's)."""
    own = os.environ.get(MULTIPROC_ENV)
    if own:
        os.makedirs(own, exist_ok=True)
        for name in os.listdir(own):
            if name.endswith(".db"):
                os.remove(os.path.join(own, name))
        return None
    path = tempfile.mkdtemp(prefix="cds-tpi-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_multiprocess_dir(path: str | None) -> None:
    """Remove the directory made by prepare_multiprocess_dir."""
    if path:
        shutil.rmtree(path, ignore_errors=True)
