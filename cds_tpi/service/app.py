"""The ASGI app: `create_app(config) -> Starlette`. The request path, in order:

    CatchAll (any unexpected exception -> 500 OperationOutcome, logged without PHI)
    -> CORS (browser clients such as the CDS Hooks Sandbox; answers preflights)
    -> route: /health, /openapi.json, GET /cds-services, POST /cds-services/{id}[/feedback]
       -> find the service (404) -> JWT (401) -> read the body within the limit (413)
       -> validate the CDS Hooks request on a worker thread (400) -> gate (is it a TPI?) -> complete the prefetch
          from fhirServer (412) -> engine -> cards
    -> the audit row, queued for a background writer (a failure is logged and counted, never blocks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cds_tpi import __version__
from cds_tpi.errors import InputError
from cds_tpi.service import metrics
from cds_tpi.service.audit import AuditWriter, card_rows
from cds_tpi.service.auth import JtiStore, JwtVerifier
from cds_tpi.service.config import ServiceConfig
from cds_tpi.service.discovery import (PrefetchKey, checked_records, discovery_document, prefetch_keys_for,
                                      record_sources)
from cds_tpi.service.evaluation import EvaluationRunner
from cds_tpi.service.feedback import check_issued, issued_cards, parse_feedback
from cds_tpi.service.hooks import find_service, parse_call, should_evaluate
from cds_tpi.service.openapi import openapi_document
from cds_tpi.service.outcomes import HttpError, operation_outcome
from cds_tpi.service.prefetch import complete_prefetch, new_client
from cds_tpi.service.storage import AuditRecord, Storage, redact_url

log = logging.getLogger("cds_tpi.service")


class Evaluation(Protocol):
    response: dict
    findings: list
    cards: list[dict]


class Evaluator(Protocol):
    """What the service needs of `cds_tpi.pipeline.Evaluator` (not thread-safe: called synchronously)."""

    def may_be_tpi_order(self, resources: list[dict]) -> bool: ...

    def warm_up(self) -> Any: ...

    def evaluate_request(self, request: dict, *, gaps: list[str] = ..., checked: Any = ..., now: Any = ...) -> Evaluation: ...


class JSONResponse(Response):
    """application/json rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@dataclass
class ServiceState:
    """Per-process state built in the lifespan (one engine per uvicorn worker)."""

    config: ServiceConfig
    evaluator: Evaluator
    storage: Storage
    verifier: JwtVerifier | None
    http: Any  # httpx.AsyncClient for FHIR fallback fetches
    audit: AuditWriter
    runner: EvaluationRunner  # the engine's thread, with the per-call deadline
    prefetch_keys: tuple[PrefetchKey, ...] = ()  # from the evaluator's record policy (records.yaml)


def create_app(config: ServiceConfig, *, evaluator: Evaluator | None = None, storage: Storage | None = None) -> Starlette:
    """Build the service app. `evaluator` / `storage` default to the real engine and the configured database."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = storage or Storage(config.database_url)
        await run_in_threadpool(store.create_schema)
        engine = evaluator or _load_evaluator(config)
        _warm_up(engine)
        if evaluator is None:
            from cds_tpi.pipeline import freeze_startup_objects  # noqa: PLC0415

            freeze_startup_objects()
        verifier = JwtVerifier(config, JtiStore(store.claim_jti)) if config.auth_enabled else None
        if verifier is None:
            log.warning("!!! NO JWT ISSUERS CONFIGURED: the CDS service accepts calls from anyone "
                        "who can reach %s:%s. Configure 'issuers' for production. !!!", config.host, config.port)
        audit = AuditWriter(store).start()
        runner = EvaluationRunner(config.evaluation_timeout)
        async with new_client(config) as http:
            app.state.service = ServiceState(config, engine, store, verifier, http, audit, runner,
                                             prefetch_keys=prefetch_keys_for(engine))
            log.info("cds-tpi service ready (database %s, auth %s)", redact_url(config.database_url),
                     "JWT" if verifier else "OFF")
            try:
                yield
            finally:
                runner.close()
                await run_in_threadpool(audit.close)
                if storage is None:
                    store.dispose()

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/cds-services", discovery, methods=["GET"]),
        Route("/cds-services/", discovery, methods=["GET"]),  # served, not redirected (CORS preflights fail on a 307)
        Route("/cds-services/{service_id}", call_service, methods=["POST"]),
        Route("/cds-services/{service_id}/feedback", call_feedback, methods=["POST"]),
        # a trailing slash is served too: a 307 to the slash-less URL would make a client re-POST
        # (or drop the body and the Authorization header, as some do on redirects)
        Route("/cds-services/{service_id}/", call_service, methods=["POST"]),
        Route("/cds-services/{service_id}/feedback/", call_feedback, methods=["POST"]),
    ]
    # CORS outermost, so that every answer carries its headers, CatchAll's 500 included; a browser
    # client may read WWW-Authenticate (why a JWT was refused) and Retry-After (when to retry a 503).
    middleware = [
        Middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                   allow_headers=["Authorization", "Content-Type"], expose_headers=list(EXPOSE_HEADERS), max_age=600),
        Middleware(CatchAll),
        # the Host header must name this service (a DNS-rebinding page sends its own name)
        Middleware(TrustedHostMiddleware, allowed_hosts=list(config.trusted_hosts), www_redirect=False),
    ]
    _quiet_http_client_logs()
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={HTTPException: _http_exception, HttpError: _http_error})


def app_from_environment() -> Starlette:
    """uvicorn factory for worker processes: the config comes from CDS_TPI_SERVICE_CONFIG (JSON),
    set by `cds-tpi serve`."""
    import os

    return create_app(ServiceConfig.from_json(os.environ["CDS_TPI_SERVICE_CONFIG"]))


def _load_evaluator(config: ServiceConfig) -> Evaluator:
    from cds_tpi.pipeline import Evaluator as RealEvaluator  # noqa: PLC0415 - heavy; loaded once per worker

    return RealEvaluator.load(rules_dir=config.rules_dir)


def _warm_up(engine: Evaluator) -> None:
    """One evaluation at start-up, so the first clinical call does not pay for lazy imports and caches."""
    try:
        engine.warm_up()
    except Exception as e:
        log.warning("engine warm-up failed: %s", type(e).__name__)


def _state(request: Request) -> ServiceState:
    return request.app.state.service


# --- endpoints ---------------------------------------------------------------------------------

async def health(request: Request) -> Response:
    """Liveness: the engine is loaded; reports auth mode, audit write failures and evaluation
    deadlines missed. 503 while an evaluation overruns its deadline (the worker should be replaced)."""
    st = _state(request)
    stuck = st.runner.overrunning_seconds > 0
    return JSONResponse({"status": "stuck" if stuck else "ok", "version": __version__,
                         "auth": "jwt" if st.verifier else "off", "auditFailures": st.audit.failures,
                         "evaluationTimeouts": st.runner.timeouts}, status_code=503 if stuck else 200)


async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 document of these endpoints, as configured (JWT required or not)."""
    return JSONResponse(openapi_document(auth_enabled=_state(request).verifier is not None))


async def discovery(request: Request) -> Response:
    """GET /cds-services."""
    await _authenticate(request)
    return JSONResponse(discovery_document(_state(request).prefetch_keys))


def _parse_and_gate(service, body: bytes, evaluator) -> tuple[Any, bool]:
    """The call and whether it is to be evaluated, in one thread hop. The gate (is a draft a TPI?)
    reads only the value sets, never durable-rules, so it need not wait for the evaluation thread."""
    call = parse_call(service, body)
    return call, should_evaluate(call, evaluator)


async def call_service(request: Request) -> Response:
    """POST /cds-services/{id}: validate, gate, complete the prefetch, evaluate, answer cards."""
    st = _state(request)
    start = time.perf_counter()
    service = find_service(request.path_params["service_id"])  # unknown: 404, not audited
    hook_instance = None
    status, outcome, evaluation, claims = 500, "error", None, None
    records: dict[str, list[str]] = {}  # key names by source, for the log (never values or URLs)
    try:
        claims = await _authenticate(request)
        body_bytes = await _read_body(request, st.config.max_body_bytes)
        # one deadline (evaluation_timeout) for the call's CPU work: parse + validate, gate, evaluate;
        # the FHIR fetches in between have their own budget and are not counted here
        budget = _Budget(st.config.evaluation_timeout)
        with budget:  # orjson + jsonschema on up to max_body_bytes, and the gate: off the event loop
            call, applicable = await st.runner.parse_within(budget.left, _parse_and_gate, service, body_bytes,
                                                            st.evaluator)
        del body_bytes
        hook_instance = call.hook_instance
        if not applicable:
            status, outcome, body = 200, "not-applicable", {"cards": []}
        else:
            prefetched = await complete_prefetch(call, st.http, st.config, st.prefetch_keys,
                                                 issuer=st.verifier.issuer_of(claims) if st.verifier else None)
            records = record_sources(st.prefetch_keys, call.request.get("prefetch") or {}, prefetched.fetched)
            try:
                with budget:
                    evaluation = await st.runner.run_within(budget.left, st.evaluator.evaluate_request,
                                                            {**call.request, "prefetch": prefetched.prefetch},
                                                            gaps=list(prefetched.gaps),
                                                            checked=checked_records(st.prefetch_keys,
                                                                                    prefetched.prefetch))
            except InputError as e:
                raise HttpError(400, e.message, e.location) from None
            status, outcome, body = 200, "evaluated", evaluation.response
        response = JSONResponse(body)
    except HttpError as e:
        status, outcome = e.status, ("precondition-failed" if e.status == 412 else "rejected")
        _log_refusal(request, e)
        response = _error_response(e)
    except ClientDisconnect:  # the caller went away while sending: nothing to answer, not a 500
        status, outcome = 499, "client-disconnected"
        response = Response(status_code=499)
    except Exception as e:  # an engine or service bug: answer and audit it, log without PHI
        _log_unexpected(e, request.method, request.url.path)
        response = JSONResponse(operation_outcome(500, [INTERNAL_ERROR]), status_code=500)
    finally:
        duration_ms = (time.perf_counter() - start) * 1000.0
        record = AuditRecord(
            at=datetime.now(timezone.utc), service=service.id, hook_instance=hook_instance, status=status,
            outcome=outcome, duration_ms=round(duration_ms, 3),
            rule_ids=tuple(dict.fromkeys(str(f.rule_id) for f in evaluation.findings)) if evaluation else (),
            cards=card_rows(evaluation.cards)[0] if evaluation else (),
            override_reasons=card_rows(evaluation.cards)[1] if evaluation else (),
            caller=_caller(claims),
        )
        log.info("call service=%s hookInstance=%s status=%s outcome=%s cards=%d prefetch=%s fhir=%s missing=%s "
                 "%.1fms", service.id, hook_instance, status, outcome, len(record.cards),
                 *(",".join(records.get(s, ())) or "-" for s in ("prefetch", "fhir", "missing")), duration_ms,
                 extra={"fields": {"event": "call", "service": service.id, "hookInstance": hook_instance,
                                   "status": status, "outcome": outcome, "cards": len(record.cards),
                                   "durationMs": round(duration_ms, 1), **{f"records_{s}": v for s, v in records.items()}}})
    metrics.observe_call(service.id, status, duration_ms / 1000.0, record.cards)
    st.audit.submit(record)
    return response


async def call_feedback(request: Request) -> Response:
    """POST /cds-services/{id}/feedback: store idempotently; 503 when the database cannot."""
    st = _state(request)
    service = find_service(request.path_params["service_id"])
    await _authenticate(request)
    items = await run_in_threadpool(parse_feedback, await _read_body(request, st.config.max_body_bytes))  # off the loop
    try:
        issued = await issued_cards(st.storage, st.audit, service.id, items)
    except Exception as e:
        log.error("feedback not stored: database error %s (looking up its cards)", type(e).__name__)
        raise HttpError(503, "feedback could not be stored; retry later", headers={"Retry-After": "5"}) from None
    try:
        check_issued(items, issued, service.id)  # 404 unknown card, 400 an override reason it did not offer
    except HttpError as e:
        metrics.observe_feedback_refused(service.id, items, e.status)
        raise
    try:
        added = await run_in_threadpool(st.storage.store_feedback, service.id, items)
    except Exception as e:
        log.error("feedback not stored: database error %s", type(e).__name__)
        raise HttpError(503, "feedback could not be stored; retry later", headers={"Retry-After": "5"}) from None
    log.info("feedback service=%s entries=%d new=%d", service.id, len(items), added)
    metrics.observe_feedback(service.id, items, added)
    return JSONResponse({"received": len(items), "stored": added, "duplicates": len(items) - added})


# --- request steps -------------------------------------------------------------------------------

class _Budget:
    """Seconds of a call's deadline left, spent only inside `with budget:` blocks (the CPU steps)."""

    def __init__(self, seconds: float):
        self.left = seconds
        self._since = 0.0

    def __enter__(self) -> "_Budget":
        self._since = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.left -= time.monotonic() - self._since


def _caller(claims: dict | None) -> str | None:
    """Who called, for the audit row: the verified JWT's iss, and its sub when there is one."""
    if not claims:
        return None
    return " ".join(str(claims[k]) for k in ("iss", "sub") if isinstance(claims.get(k), str))


async def _authenticate(request: Request) -> dict | None:
    """The verified JWT claims (None in open mode). The audience is public_base_url + path, never
    the Host header (config requires public_base_url with issuers)."""
    st = _state(request)
    if st.verifier is None:
        return None
    base = str(st.config.public_base_url).rstrip("/")
    return await st.verifier.verify(request.headers.get("authorization"), base + request.url.path)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (header or stream), with 408
    when it is not received within body_read_timeout, and 415 unless it is declared JSON (a web page
    can POST text/plain with no CORS preflight)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (media_type.startswith("application/") and media_type.endswith("+json")):
        raise HttpError(415, "Content-Type must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HttpError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise HttpError(413, f"request body larger than {limit} bytes")
    body = bytearray()
    timeout = _state(request).config.body_read_timeout
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise HttpError(413, f"request body larger than {limit} bytes")
    except TimeoutError:
        raise HttpError(408, f"request body not received within {timeout:g} s", headers={"Connection": "close"}) from None
    return bytes(body)


# --- errors -------------------------------------------------------------------------------------

def _error_response(e: HttpError) -> Response:
    return JSONResponse(e.outcome(), status_code=e.status, headers=e.headers)


async def _http_error(request: Request, e: Exception) -> Response:
    assert isinstance(e, HttpError)
    if e.status >= 500:
        log.warning("%s %s -> %s", request.method, request.url.path, e.status)
    _log_refusal(request, e)
    return _error_response(e)


def _log_refusal(request: Request, e: HttpError) -> None:
    """A 401 is logged with its reason (the caller reads one generic text; the reasons of auth.py
    name no token, claim value or patient)."""
    if e.status == 401:
        reason = getattr(e, "reason", e.message)
        log.warning("401 on %s %s: %s", request.method, request.url.path, reason,
                    extra={"fields": {"event": "unauthorized", "path": request.url.path, "reason": reason}})


async def _http_exception(request: Request, e: Exception) -> Response:
    assert isinstance(e, HTTPException)
    return JSONResponse(operation_outcome(e.status_code, [str(e.detail)]), status_code=e.status_code,
                        headers=dict(e.headers or {}))


class CatchAll:
    """Outermost guard: an unexpected exception becomes a 500 OperationOutcome. The log names the
    exception type and where it was raised, never its message (it may quote patient data)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as e:
            _log_unexpected(e, scope.get("method"), scope.get("path"))
            if started:
                return
            body = orjson.dumps(operation_outcome(500, [INTERNAL_ERROR]))
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


INTERNAL_ERROR = "internal error; the server log has the details"
EXPOSE_HEADERS = ("WWW-Authenticate", "Retry-After")


def _log_unexpected(e: BaseException, method: Any, path: Any) -> None:
    """Log type and the raising frames (file:line), not the message: it may quote patient data."""
    frames = traceback.extract_tb(e.__traceback__)[-3:]
    where = " <- ".join(f"{f.filename}:{f.lineno}" for f in reversed(frames)) or "?"
    log.error("unexpected %s at %s on %s %s", type(e).__name__, where, method, path)


def _quiet_http_client_logs() -> None:
    # httpx logs every request URL at INFO: our FHIR URLs carry the patient id
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
