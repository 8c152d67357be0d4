"""Schemathesis against our own OpenAPI document (GET /openapi.json) of a live service.

Real uvicorn on loopback, the real engine, SQLite. Every operation of the document is fuzzed with
valid (positive) and invalid (negative) requests; checked by schemathesis: no 5xx, status code,
content type and body conform to the document, invalid requests are rejected; checked here: no
request takes longer than `SLOW` (the HTTP client gives up after `REQUEST_TIMEOUT`: a hang fails),
200 answers of the services are valid CDS Hooks responses. A fhirServer the fuzzer invents is
replaced by the loopback FHIR stub before sending: nothing leaves 127.0.0.1.

Budget: EXAMPLES per operation and mode (the module runs in well under 90 s on 2 cores);
CDS_TPI_FUZZ=long runs 400 and random seeds; CDS_TPI_FUZZ_EXAMPLES=N sets the number exactly.
(schemathesis' lazy `from_fixture` does not work with pytest 9, so the cases are drawn with
hypothesis from `operation.as_strategy()`.)
"""

from __future__ import annotations

import os
import re
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from cds_tpi.service.app import create_app
from cds_tpi.service.config import ServiceConfig
from cds_tpi.service.request_schema import FHIR_SERVER_PATTERN
from cds_tpi.service.openapi import openapi_document
from cds_tpi.service.storage import Storage
from conftest import ThreadServer, free_port, issuer_for
from tests.cdshooks import assert_cds_response

LONG = os.environ.get("CDS_TPI_FUZZ") == "long"
EXAMPLES = int(os.environ.get("CDS_TPI_FUZZ_EXAMPLES") or (400 if LONG else 12))
REQUEST_TIMEOUT = 10.0  # seconds; a request still unanswered then is a hang
SLOW = 5.0  # FHIR fetches are bounded at 1.5 s here, the engine takes milliseconds

pytestmark = pytest.mark.timeout(3600 if LONG else 120)

_FHIR_SERVER = re.compile(FHIR_SERVER_PATTERN)
# 412 is a documented answer to a well-formed call (the data it needs is neither sent nor fetchable),
# so a schema-valid request may get it; everything else is schemathesis' default.
CONFIG = schemathesis.Config.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2xx", "401", "403", "404", "412"]}}})
# the operations, from the same document the live service serves (checked in the test)
OPERATIONS = [f"{method.upper()} {path}" for path, ops in openapi_document()["paths"].items() for method in ops]


def _start(tmp_path_factory, evaluator, **config):
    port = free_port()
    if config.get("issuers"):  # the JWT aud: required with issuers
        config["public_base_url"] = f"http://127.0.0.1:{port}"
    config = ServiceConfig(database_url=f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/fuzz.sqlite3",
                           fhir_read_timeout=0.5, fhir_connect_timeout=0.5, fhir_total_timeout=1.5, **config)
    store = Storage(config.database_url)
    server = ThreadServer(create_app(config, evaluator=evaluator, storage=store))
    server.port = server.server.config.port = port
    server.start()
    return server, store


@pytest.fixture(scope="module")
def live(tmp_path_factory, evaluator, fhir_stub):
    """Auth off (no issuers): the document's bearer scheme is "required when issuers are configured"."""
    server, store = _start(tmp_path_factory, evaluator)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=CONFIG, timeout=10)
    yield server.url, schema, fhir_stub
    server.stop()
    store.dispose()


@pytest.fixture(scope="module")
def live_jwt(tmp_path_factory, evaluator, fhir_stub, signer):
    """Auth on: every case carries a fresh valid JWT; schemathesis also re-sends it without/with a bad one."""
    server, store = _start(tmp_path_factory, evaluator, issuers=issuer_for(signer))
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=CONFIG, timeout=10)
    yield server.url, schema, fhir_stub
    server.stop()
    store.dispose()


def _keep_on_loopback(case, stub) -> None:
    """A fhirServer the service would call is replaced by the loopback stub (same validity)."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("fhirServer"), str) and _FHIR_SERVER.fullmatch(body["fhirServer"]):
        body["fhirServer"] = stub.base("ok")


# GET operations have no parameters or body: nothing to make invalid
CASES = [(label, mode) for label in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode is GenerationMode.POSITIVE or label.startswith("POST")]


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label}-{mode}" for label, mode in CASES])
def test_operation_survives_fuzzing(live, label, mode):
    url, schema, stub = live
    operation = schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served /openapi.json"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck), print_blob=True)
    def fuzz(case):
        _keep_on_loopback(case, stub)
        started = time.monotonic()
        response = case.call_and_validate(base_url=url, timeout=REQUEST_TIMEOUT)
        _check(label, operation, response, time.monotonic() - started)

    fuzz()


JWT_OPERATIONS = [label for label in OPERATIONS if label not in ("GET /health", "GET /openapi.json")]


@pytest.mark.parametrize("label", JWT_OPERATIONS)
def test_operation_with_jwt_survives_fuzzing(live_jwt, signer, label):
    url, schema, stub = live_jwt
    operation = schema.find_operation_by_label(label)

    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    @settings(max_examples=max(3, EXAMPLES // 3), deadline=None, derandomize=not LONG, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck), print_blob=True)
    def fuzz(case):
        _keep_on_loopback(case, stub)
        token = signer.token(url + case.formatted_path)
        started = time.monotonic()
        response = case.call_and_validate(base_url=url, timeout=REQUEST_TIMEOUT,
                                          headers={"Authorization": f"Bearer {token}"})
        _check(label, operation, response, time.monotonic() - started)

    fuzz()


def _check(label, operation, response, elapsed: float) -> None:
    assert response.status_code < 500, response.text
    assert elapsed < SLOW, f"{label} took {elapsed:.1f} s"
    if operation.method.upper() == "POST" and response.status_code == 200 and "/feedback" not in label:
        assert_cds_response(response.json())


def test_every_served_operation_is_fuzzed(live):
    url, _, _ = live
    served = httpx.get(url + "/openapi.json").json()["paths"]
    assert {f"{m.upper()} {p}" for p, ops in served.items() for m in ops} == set(OPERATIONS)


# --- what the fuzzer found (regressions): the document and the validators disagreed ----------------

def _with(hook: str, **changes):
    from conftest import hook_request  # noqa: PLC0415

    request = hook_request(hook)
    for path, value in changes.items():
        target = request
        *parents, last = path.split("__")
        for p in parents:
            target = target[p]
        target[last] = value
    return request


_AUTH = {"access_token": "tok-123", "token_type": "Bearer", "expires_in": 60, "scope": "patient/*.read", "subject": "c"}
FOUND = [  # (what, hook, request, the field a 400 must name or None when the request is valid)
    # Python's \s / str.strip() count U+001C-U+001F and U+0085 as whitespace, ECMA's \s does not
    ("userId of separators only", "order-sign", _with("order-sign", context__userId="\x1c\x1f\x85"), "context.userId"),
    ("userId with a separator", "order-sign", _with("order-sign", context__userId="Practitioner/\x1fa"), None),
    ("fhirServer with a control character", "order-sign",
     _with("order-sign", fhirServer="https://ehr.example/\x1f", fhirAuthorization=_AUTH), "fhirServer"),
    # a selection of whitespace only was accepted
    ("blank selection", "order-select", _with("order-select", context__selections=["ServiceRequest/tpi-1", " \u2028"]),
     "context.selections"),
    # fhirAuthorization.patient was not checked at all
    ("fhirAuthorization.patient an object", "order-sign",
     _with("order-sign", fhirServer="http://127.0.0.1:9/fhir", fhirAuthorization={**_AUTH, "patient": {"id": "x"}}),
     "fhirAuthorization.patient"),
    ("fhirAuthorization.patient null", "order-sign",
     _with("order-sign", fhirServer="http://127.0.0.1:9/fhir", fhirAuthorization={**_AUTH, "patient": None}), None),
    # a non-ASCII access token cannot go into a header: it gave 412 "FHIR server unreachable (UnicodeEncodeError)"
    ("non-ASCII access token", "order-sign",
     _with("order-sign", fhirServer="http://127.0.0.1:9/fhir", fhirAuthorization={**_AUTH, "access_token": "tök\u00e9n"}),
     "fhirAuthorization.access_token"),
    ("access token with a space", "order-sign",
     _with("order-sign", fhirServer="http://127.0.0.1:9/fhir", fhirAuthorization={**_AUTH, "access_token": "a b"}),
     "fhirAuthorization.access_token"),
]


@pytest.mark.parametrize(("what", "hook", "request_body", "field"), FOUND, ids=[f[0] for f in FOUND])
def test_fuzz_finding_document_and_service_agree(live, what, hook, request_body, field):
    import jsonschema_rs  # noqa: PLC0415 - schemathesis' validator: ECMA-like regex, unlike Python's jsonschema

    url, _, _ = live
    doc = httpx.get(url + "/openapi.json").json()
    service_id = {"order-sign": "tpi-order-sign", "order-select": "tpi-order-select"}[hook]
    schema = doc["paths"][f"/cds-services/{service_id}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    valid_per_document = jsonschema_rs.Draft202012Validator({**schema, "components": doc["components"]}).is_valid(
        request_body)
    r = httpx.post(f"{url}/cds-services/{service_id}", json=request_body, timeout=REQUEST_TIMEOUT)
    if field is None:
        assert valid_per_document
        assert r.status_code in (200, 412), r.text
        if r.status_code == 200:
            assert_cds_response(r.json())
    else:
        assert not valid_per_document
        assert r.status_code == 400, r.text
        assert r.json()["issue"][0]["expression"] == [field]
