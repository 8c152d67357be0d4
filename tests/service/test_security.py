"""Issue 10: attacks on the running service (uvicorn on loopback) and the answers they must now get."""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path
import copy
import time

import httpx
import pytest

from conftest import PATIENT_ID, FakeEvaluator, free_port, hook_request

pytestmark = pytest.mark.timeout(120)


# --- 1. regex backtracking / evaluation on the event loop ---------------------------------------------

class SpinningEvaluator(FakeEvaluator):
    """An evaluation that burns CPU for `seconds` (what a quadratic regex on 5 MB would do)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def evaluate_request(self, request, **kwargs):
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            sum(range(1000))
        return super().evaluate_request(request, **kwargs)


def test_a_slow_evaluation_does_not_block_other_requests_and_meets_its_deadline(start_service):
    service = start_service(SpinningEvaluator(3.0), evaluation_timeout=1.0)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        slow = pool.submit(service.post, "/cds-services/tpi-order-sign", hook_request("order-sign"))
        time.sleep(0.2)
        t0 = time.monotonic()
        discovery = service.get("/cds-services")
        discovery_seconds = time.monotonic() - t0
        answer = slow.result()
        slow_seconds = time.monotonic() - started
    assert discovery.status_code == 200
    assert discovery_seconds < 0.5, f"discovery waited {discovery_seconds:.2f} s behind an evaluation"
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert "did not finish within 1 s" in answer.text
    assert slow_seconds < 2.0
    health = service.get("/health")  # the evaluation still overruns: the worker says so
    assert health.status_code == 503 and health.json()["status"] == "stuck"
    assert health.json()["evaluationTimeouts"] == 1


def _large_body(keys: int = 150_000) -> bytes:
    """A valid order-sign request of ~4.5 MB: the audit's 150,000 extra prefetch keys (foreign keys
    pass through; jsonschema validates each)."""
    request = hook_request("order-sign")
    request["prefetch"].update({f"k{i}": {"resourceType": "X"} for i in range(keys)})
    return json.dumps(request, separators=(",", ":")).encode()


def test_large_valid_bodies_are_parsed_off_the_event_loop(start_service, fake_evaluator):
    """parse_call (orjson + jsonschema: ~1-2 s of CPU for 4.5 MB) ran on the event loop: /health
    waited seconds behind each large call. Now it answers within 1 s while four of them are parsed."""
    service = start_service(fake_evaluator, evaluation_timeout=60.0)
    body = _large_body()
    assert len(body) > 4_000_000

    def post():
        return httpx.post(service.url + "/cds-services/tpi-order-sign", content=body, timeout=120,
                          headers={"Content-Type": "application/json"}).status_code

    latencies = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(post) for _ in range(4)]
        time.sleep(0.3)
        with httpx.Client(timeout=30) as client:
            while not all(c.done() for c in calls):
                t0 = time.monotonic()
                assert client.get(service.url + "/health").status_code == 200
                latencies.append(time.monotonic() - t0)
                time.sleep(0.05)
        assert [c.result() for c in calls] == [200] * 4
    assert len(latencies) >= 3, latencies  # /health was polled while the bodies were parsed
    assert max(latencies) < 1.0, f"/health took {max(latencies):.2f} s during the parses"


def test_the_call_deadline_covers_parsing(start_service, fake_evaluator):
    """evaluation_timeout bounds parse + evaluate: a body whose validation alone takes longer gets the
    evaluation deadline's 503, and nothing is evaluated."""
    service = start_service(fake_evaluator, evaluation_timeout=0.2)
    t0 = time.monotonic()
    r = httpx.post(service.url + "/cds-services/tpi-order-sign", content=_large_body(), timeout=60,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
    assert "did not finish within 0.2 s" in r.text
    assert time.monotonic() - t0 < 1.5
    assert not fake_evaluator.requests
    assert service.get("/health").json()["evaluationTimeouts"] == 1
    assert service.post("/cds-services/tpi-order-sign", hook_request("order-sign")).status_code == 200


def _draft_dosed_in_ml(text: str) -> dict:
    request = hook_request("order-sign")
    drafts = request["context"]["draftOrders"]
    for entry in drafts["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "MedicationRequest":
            resource.setdefault("medicationCodeableConcept", {})["text"] = text
            resource["dosageInstruction"] = [{"text": text, "doseAndRate": [
                {"doseQuantity": {"value": 5, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"}}]}]
    return request


@pytest.mark.parametrize("text", [
    "[" * 40_000,                             # the value-set text matcher's bracketed asides
    "a [b " * 10_000,
    "1" * 20_000 + "[" * 20_000,              # the audit's request: digits (percent / mg/mL patterns) and brackets
    "1" * 40_000,
    "9" * 20_000 + " mg/" + "9" * 20_000 + "%",
])
def test_long_digit_and_bracket_text_is_answered_quickly(start_service, evaluator, text):
    """The audit's 40 KB request (a draft dosed in mL whose text is a long run of digits and
    brackets) took 30 s and froze the worker; now it is answered at once."""
    service = start_service(evaluator)
    request = _draft_dosed_in_ml(text)
    request["prefetch"]["conditions"]["entry"][0]["resource"]["code"]["text"] = text
    t0 = time.monotonic()
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 3.0


def test_record_text_is_capped_before_matching():
    from cds_tpi.fhir.text import MAX_TEXT_CHARS, bounded_text

    assert bounded_text("x" * (MAX_TEXT_CHARS * 5)) == "x" * MAX_TEXT_CHARS
    assert bounded_text(None) == "" and bounded_text(5) == ""
    from cds_tpi.terminology import _words

    t0 = time.monotonic()
    _words("1" * 200_000 + "[" * 200_000)
    assert time.monotonic() - t0 < 0.1
    assert _words("trapezius [any part except buttock] muscle") == ["trapezius", "muscle"]


# --- 2. patient mixing --------------------------------------------------------------------------------

def test_a_condition_of_another_patient_in_the_prefetch_is_400_naming_it(start_service, evaluator):
    """One patient per call: an order-sign whose conditions searchset holds a Condition of another
    patient is refused (400 naming the record and the patient), never evaluated with it mixed in."""
    service = start_service(evaluator)
    request = hook_request("order-sign")
    condition = request["prefetch"]["conditions"]["entry"][0]["resource"]
    condition["subject"] = {"reference": "Patient/other-patient"}
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 400, r.text
    text = " ".join(_diagnostics(r))
    assert "another patient" in text and "Patient/other-patient" in text, text
    assert f"Condition/{condition['id']}" in text, text


# --- 4. record text in card markdown -------------------------------------------------------------

EVIL = ("<script>alert(1)</script>\n# Forged heading\n[click](javascript:alert(1)) "
        "![x](http://evil.example/pixel.png) <img src=x onerror=alert(1)> *bold* | t | \u202egnp.exe ")


def test_record_text_is_escaped_one_line_and_capped_in_cards(start_service, evaluator):
    service = start_service(evaluator)
    request = hook_request("order-sign")
    warfarin = request["prefetch"]["medicationRequests"]["entry"][0]["resource"]
    concept = warfarin["medicationCodeableConcept"]
    concept["text"] = EVIL + "x" * 5000
    for coding in concept["coding"]:
        coding["display"] = EVIL + "x" * 5000
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 200, r.text
    card = next(c for c in r.json()["cards"] if c["source"]["topic"]["code"] == "anticoagulant")
    detail, summary = card["detail"], card["summary"]
    for forbidden in ("<script", "<img", "](javascript", "javascript:", "![x](", "\n# Forged", "\u202e", "*bold*"):
        assert forbidden not in detail, forbidden
    assert "&lt;script&gt;" in detail and "\\[click\\]" in detail and "\\*bold\\*" in detail
    line = next(li for li in detail.splitlines() if "medication list" in li)
    assert len(line) < 500  # the 5 KB name was capped
    assert "\n" not in summary and "\u202e" not in summary and len(summary) <= 140
    for suggestion in card.get("suggestions", []):
        assert "\n" not in suggestion["label"]


def test_markdown_escape_units():
    from cds_tpi.templates import markdown_escape, plain_text

    assert markdown_escape("# heading") == "\\# heading"
    assert markdown_escape("1. item") == "1\\. item"
    assert markdown_escape("a\n\n- b") == "a - b"  # one line: no list can start
    assert markdown_escape("[a](data:text/html;base64,xx)") == "\\[a\\]((link removed) ;base64,xx)"
    assert markdown_escape("vbscript:x") == "(link removed) x"
    assert markdown_escape("x" * 1000).endswith("…") and len(markdown_escape("x" * 1000)) == 300
    assert plain_text("a\\*b &lt;c&gt;\n\td") == "a*b <c> d"


# --- a FHIR stub for the outbound attacks ----------------------------------------------------------

class Stub:
    """A loopback FHIR server: base `{url}/{mode}`; records every request it gets.
    modes: ok; slowobs / slowallergy (that search sleeps 10 s); slow (everything sleeps 10 s);
    gzipbomb (Observation: 20 MB of zeros gzip-compressed to ~20 KB, sent although identity was asked);
    manyentries (Observation: 3,000 entries); statusNNN (every request answered HTTP NNN); nextescapeN (Condition: a `next` link with ESCAPING_PATHS[N]); twopages (Condition: two pages of 600 entries, `next` link)."""

    def __init__(self) -> None:
        import asyncio
        import gzip

        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        from conftest import ThreadServer, patient_resources

        self.requests: list[tuple[str, dict]] = []
        resources = patient_resources()
        bomb = gzip.compress(b'{"resourceType":"Bundle","type":"searchset","entry":[]' + b" " * 20_000_000 + b"}", 9)

        async def handle(request):
            mode, rest = request.path_params["mode"], request.path_params["rest"]
            self.requests.append((f"/{mode}/{rest}", dict(request.headers)))
            resource_type = rest.split("/")[0]
            if mode == "slow" or (mode == "slowobs" and resource_type == "Observation") or (
                    mode == "slowallergy" and resource_type == "AllergyIntolerance"):
                await asyncio.sleep(10)
            if mode.startswith("status"):
                return JSONResponse({"resourceType": "OperationOutcome"}, int(mode[len("status"):]))
            if (mode == "gzipbomb" and resource_type == "Observation") or mode == "allbombs":
                return Response(bomb, media_type="application/fhir+json", headers={"Content-Encoding": "gzip"})
            if "/" in rest:
                found = next((r for r in resources.values() if r["resourceType"] == resource_type), None)
                return JSONResponse(found) if found else JSONResponse({"resourceType": "OperationOutcome"}, 404)
            matches = [r for r in resources.values() if r["resourceType"] == resource_type]
            if mode == "manyentries" and resource_type == "Observation":
                matches = [{**matches[0], "id": f"obs-{i}"} for i in range(3000)] if matches else []
            bundle = {"resourceType": "Bundle", "type": "searchset"}
            if mode.startswith("nextescape") and resource_type == "Condition" and matches:
                form = ESCAPING_PATHS[int(mode[len("nextescape"):])]
                bundle["entry"] = [{"resource": matches[0]}]
                bundle["link"] = [{"relation": "next", "url": f"{self.base(mode)}/{form}admin/Condition?page=2"}]
                return JSONResponse(bundle)
            if mode == "twopages" and resource_type == "Condition" and matches:
                page = request.query_params.get("page", "1")
                bundle["entry"] = [{"resource": {**matches[0], "id": f"c{page}-{i}"}} for i in range(600)]
                if page == "1":
                    bundle["link"] = [{"relation": "next", "url": f"{self.base('twopages')}/Condition?page=2"}]
                return JSONResponse(bundle)
            if matches:
                bundle["entry"] = [{"resource": m} for m in matches]
            return JSONResponse(bundle)

        self.server = ThreadServer(Starlette(routes=[Route("/{mode}/{rest:path}", handle)])).start()
        self.port = self.server.port

    def base(self, mode: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{mode}"

    def stop(self) -> None:
        self.server.server.force_exit = True
        self.server.stop()


@pytest.fixture(scope="module")
def stub():
    s = Stub()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stub_b():
    s = Stub()
    yield s
    s.stop()


AUTH = {"access_token": "secret-ehr-token", "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/*.read", "subject": "cds-tpi"}


def fallback_request(base: str, *, keep: tuple[str, ...] = ()) -> dict:
    """An order-sign request whose prefetch (except `keep`) must be fetched from `base`."""
    request = hook_request("order-sign")
    request["prefetch"] = {k: v for k, v in request["prefetch"].items() if k in keep}
    return {**request, "fhirServer": base, "fhirAuthorization": AUTH}


def _diagnostics(r) -> list[str]:
    return [i["diagnostics"] for i in r.json()["issue"]]


def _missing(r) -> str:
    return " ".join(c.get("detail", "") for c in r.json()["cards"] if c["source"]["topic"]["code"] == "missing-data")


# --- 3. SSRF: fhirServer is no longer an open proxy ------------------------------------------------

def test_only_allowed_fhir_servers_are_fetched_from(start_service, evaluator, stub):
    service = start_service(evaluator, allowed_fhir_servers=(stub.base("ok"),))
    assert service.post("/cds-services/tpi-order-sign", fallback_request(stub.base("ok"))).status_code == 200
    before = len(stub.requests)
    for target in (stub.base("admin"),                              # same host, another path
                   stub.base("ok/../admin"),                        # dot segments
                   f"http://127.0.0.1:{free_port()}/ok",            # another port: no port scanning
                   f"http://2130706433:{stub.port}/ok",             # decimal IP
                   f"http://localhost:{stub.port}/ok",              # another name for the host
                   "http://169.254.169.254/latest/meta-data",       # cloud metadata
                   "https://attacker.example/fhir"):
        r = service.post("/cds-services/tpi-order-sign", fallback_request(target))
        assert r.status_code == 412, (target, r.text)
        assert all("not an allowed FHIR server" in d for d in _diagnostics(r)), (target, _diagnostics(r))
    assert len(stub.requests) == before  # nothing was sent, least of all the EHR's token


# path forms a server (or its proxy) may decode or normalise into a path outside the allowed base
ESCAPING_PATHS = ["%2e%2e/", "%2E%2E/", "..%2f", "..%2F", "..;/", "..;x=1/", ".%2e/", "%252e%252e/", "..%5c", "..\\",
                  "%2fadmin/", ".;/"]


@pytest.mark.parametrize("form", ESCAPING_PATHS)
@pytest.mark.parametrize("listed", [True, False], ids=["allow-list", "open-loopback"])
def test_encoded_dot_segments_in_fhir_server_are_refused(start_service, evaluator, stub, form, listed):
    service = start_service(evaluator, **({"allowed_fhir_servers": (stub.base("ok"),)} if listed else {}))
    before = len(stub.requests)
    r = service.post("/cds-services/tpi-order-sign", fallback_request(f"{stub.base('ok')}/{form}admin"))
    assert r.status_code == 412, (form, r.text)
    assert all("not an allowed FHIR server" in d for d in _diagnostics(r)), (form, _diagnostics(r))
    assert len(stub.requests) == before


@pytest.mark.parametrize("form", ESCAPING_PATHS)
def test_encoded_dot_segments_in_next_links_are_not_followed(start_service, fake_evaluator, stub, form, caplog):
    service = start_service(fake_evaluator)
    mode = f"nextescape{ESCAPING_PATHS.index(form)}"
    before = len(stub.requests)
    r = service.post("/cds-services/tpi-order-sign", fallback_request(stub.base(mode)))
    assert r.status_code == 412, (form, r.text)
    assert any("'conditions'" in d for d in _diagnostics(r))
    conditions = [path for path, _ in stub.requests[before:] if "Condition" in path]
    assert len(conditions) == 1, conditions  # the first page only
    assert "next link" in caplog.text


def test_path_refusal_units():
    from cds_tpi.service.outbound import allowed_fhir_base, path_refusal

    for path in ("/fhir", "/fhir/R4", "/fhir/a.b/c", "/fhir/%41b", "/fhir/..x/y", "/fhir/a;b"):
        assert path_refusal(path) is None, path
    for form in ESCAPING_PATHS + ["../", "./"]:
        assert path_refusal(f"/fhir/{form}admin") is not None, form
        assert allowed_fhir_base(f"http://h.example/fhir/{form}admin", ["http://h.example/fhir"],
                                 open_loopback=False, allow_http=True) is not None, form
    assert allowed_fhir_base("http://h.example/fhir/R4", ["http://h.example/fhir"], open_loopback=False,
                             allow_http=True) is None


def test_open_mode_fetches_from_loopback_only_by_default(start_service, evaluator, stub):
    service = start_service(evaluator)
    assert service.post("/cds-services/tpi-order-sign", fallback_request(stub.base("ok"))).status_code == 200
    for target in ("http://10.0.0.1/fhir", "http://fhir.example.org/fhir", "https://fhir.example.org/fhir"):
        r = service.post("/cds-services/tpi-order-sign", fallback_request(target))
        assert r.status_code == 412 and "not an allowed FHIR server" in r.text, target


def test_open_mode_on_a_public_address_fetches_from_no_loopback_server(start_service, evaluator, stub):
    """host 0.0.0.0 with allow_unauthenticated (the server here still binds 127.0.0.1): anyone on the
    network could reach this machine's loopback listeners through fhirServer, so only the allow-list
    is fetched from."""
    service = start_service(evaluator, host="0.0.0.0", allow_unauthenticated=True)
    before = len(stub.requests)
    for target in (stub.base("ok"), stub.base("ok", host="localhost")):
        r = service.post("/cds-services/tpi-order-sign", fallback_request(target))
        assert r.status_code == 412 and "not an allowed FHIR server" in r.text, (target, r.text)
    assert len(stub.requests) == before
    listed = start_service(evaluator, host="0.0.0.0", allow_unauthenticated=True, allowed_fhir_servers=(stub.base("ok"),))
    assert listed.post("/cds-services/tpi-order-sign", fallback_request(stub.base("ok"))).status_code == 200


def test_an_issuer_fetches_only_from_its_own_fhir_servers(start_service, evaluator, stub, stub_b, signer):
    from cds_tpi.service.config import Issuer

    issuer = Issuer(iss="https://ehr.example.org", jwks_file=str(signer.jwks_file), fhir_servers=(stub.base("ok"),))
    service = start_service(evaluator, issuers=(issuer,))
    url = service.url + "/cds-services/tpi-order-sign"

    def call(base):
        return service.post("/cds-services/tpi-order-sign", fallback_request(base),
                            headers={"Authorization": f"Bearer {signer.token(url)}"})

    assert call(stub.base("ok")).status_code == 200
    before = len(stub_b.requests)
    r = call(stub_b.base("ok"))  # loopback, but not this issuer's: open-mode defaults do not apply
    assert r.status_code == 412 and "not an allowed FHIR server" in r.text
    assert len(stub_b.requests) == before


def test_addresses_are_checked_when_connecting(start_service, evaluator, stub):
    """0.0.0.0 reaches local listeners on Linux: an allowed entry naming it still gets no connection."""
    service = start_service(evaluator, allowed_fhir_servers=(f"http://0.0.0.0:{stub.port}/ok",), fhir_allow_http=True)
    before = len(stub.requests)
    r = service.post("/cds-services/tpi-order-sign", fallback_request(f"http://0.0.0.0:{stub.port}/ok"))
    assert r.status_code == 412 and "could not be fetched" in r.text
    assert len(stub.requests) == before


def test_address_policy_units():
    from cds_tpi.service.outbound import address_refusal

    assert address_refusal("169.254.169.254", "metadata.example") == "a link-local address"
    assert address_refusal("127.0.0.1", "evil.example") is not None   # DNS pointing a name at loopback
    assert address_refusal("::ffff:127.0.0.1", "evil.example") is not None
    assert address_refusal("0.0.0.0", "x.example") == "an unspecified address"
    assert address_refusal("224.0.0.1", "x.example") == "a multicast address"
    assert address_refusal("127.0.0.1", "localhost") is None
    assert address_refusal("10.1.2.3", "fhir.hospital.example") is None  # intranet FHIR servers are normal


def test_https_only_except_loopback_or_the_flag():
    from cds_tpi.errors import InputError
    from cds_tpi.service.config import ServiceConfig

    with pytest.raises(InputError, match="http is allowed only for loopback"):
        ServiceConfig(allowed_fhir_servers=("http://fhir.example.org/r4",))
    assert ServiceConfig(allowed_fhir_servers=("http://fhir.example.org/r4",), fhir_allow_http=True)
    assert ServiceConfig(allowed_fhir_servers=("http://127.0.0.1:9/r4", "https://fhir.example.org/r4"))


@pytest.mark.parametrize("patient_id", ["..", ".", "...", ""])
def test_path_segment_patient_ids_are_refused_before_any_fetch(start_service, evaluator, stub, patient_id):
    service = start_service(evaluator)
    before = len(stub.requests)
    request = fallback_request(stub.base("ok"))
    request["context"]["patientId"] = patient_id
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 400 and "context.patientId" in r.text
    assert len(stub.requests) == before


def test_412_texts_do_not_map_ports(start_service, evaluator, stub, caplog):
    """Open mode: a closed port, a listener that never answers, an HTTP server answering 404 and one
    answering 401 read the same to the caller, key by key (the log says what happened)."""
    import socket

    service = start_service(evaluator, fhir_total_timeout=1.5, fhir_read_timeout=1.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(50)  # connections are accepted by the kernel and never answered
    try:
        targets = {"closed": f"http://127.0.0.1:{free_port()}/fhir", "silent": f"http://127.0.0.1:{silent.getsockname()[1]}/fhir",
                   "404": stub.base("status404"), "401": stub.base("status401"), "403": stub.base("status403")}
        texts = {}
        for name, target in targets.items():
            r = service.post("/cds-services/tpi-order-sign", fallback_request(target))
            assert r.status_code == 412, (name, r.text)
            texts[name] = _diagnostics(r)
    finally:
        silent.close()
    assert all(t == texts["closed"] for t in texts.values()), texts
    for d in texts["closed"]:
        assert d.endswith(": could not be fetched from the FHIR server"), d
        for leak in ("unreachable", "Error", "timed out", "not found", "refused", "HTTP"):
            assert leak not in d, d
    assert "HTTP 404" in caplog.text and "HTTP 401" in caplog.text  # the detail is in the log


def test_an_authenticated_caller_is_told_why_its_fhir_server_failed(start_service, evaluator, stub, signer):
    from cds_tpi.service.config import Issuer

    issuer = Issuer(iss="https://ehr.example.org", jwks_file=str(signer.jwks_file),
                    fhir_servers=(stub.base("status404"), stub.base("status401")))
    service = start_service(evaluator, issuers=(issuer,))
    url = service.url + "/cds-services/tpi-order-sign"
    for mode, reason in (("status404", "not found on the FHIR server"), ("status401", "refused access (HTTP 401)")):
        r = service.post("/cds-services/tpi-order-sign", fallback_request(stub.base(mode)),
                         headers={"Authorization": f"Bearer {signer.token(url)}"})
        assert r.status_code == 412 and all(d.endswith(reason) for d in _diagnostics(r)), _diagnostics(r)


# --- 5. memory amplification -----------------------------------------------------------------------

def test_a_gzip_bomb_is_not_decoded_beyond_the_budget(start_service, evaluator, stub, caplog):
    service = start_service(evaluator, fhir_max_bytes_per_call=2_000_000)
    r = service.post("/cds-services/tpi-order-sign", fallback_request(stub.base("gzipbomb")))
    assert r.status_code == 200, r.text  # observations are optional: a missing-data card says so
    assert "could not be fetched" in _missing(r)  # open mode: generic; the log says why
    assert any("key observations" in m and "too large" in m for m in caplog.messages)
    assert stub.requests[-1][1].get("accept-encoding") == "identity"


def test_gzip_bombs_on_every_key_share_one_budget(start_service, evaluator, stub, caplog):
    """Seven bombs at once: each key stops at the shared budget, none decodes beyond it (a key that
    found the budget spent by another once decoded without limit: zlib's max_length 0 = no limit)."""
    service = start_service(evaluator, fhir_max_bytes_per_call=1_000_000)
    r = service.post("/cds-services/tpi-order-sign", fallback_request(stub.base("allbombs")))
    assert r.status_code == 412
    keys = [d.split("'")[1] for d in _diagnostics(r)]
    too_large = [m for m in caplog.messages if "FHIR data too large for this service's limits" in m]
    assert all(any(f"key {k} " in m for m in too_large) for k in keys), caplog.messages


def test_entries_are_budgeted_per_call(start_service, evaluator, stub, caplog):
    service = start_service(evaluator, fhir_max_entries_per_call=1000)
    r = service.post("/cds-services/tpi-order-sign", fallback_request(stub.base("manyentries")))
    assert r.status_code == 200 and "INR" in _missing(r)
    assert any("key observations" in m and "more than 1000 entries" in m for m in caplog.messages)
    caplog.clear()
    ok = start_service(evaluator).post("/cds-services/tpi-order-sign", fallback_request(stub.base("manyentries")))
    assert ok.status_code == 200 and "could not be fetched" not in _missing(ok)
    assert not any("entries" in m for m in caplog.messages)


def test_entries_of_follow_on_pages_are_counted_once(start_service, fake_evaluator, stub, caplog):
    """Two Condition pages of 600 entries fit a budget of 1,500 (page 2 was counted twice: 412)."""
    service = start_service(fake_evaluator, fhir_max_entries_per_call=1500)
    r = service.post("/cds-services/tpi-order-sign", fallback_request(stub.base("twopages")))
    assert r.status_code == 200, r.text
    conditions = fake_evaluator.requests[-1]["prefetch"]["conditions"]
    assert len(conditions["entry"]) == 1200
    tight = start_service(fake_evaluator, fhir_max_entries_per_call=1100)  # and the budget still holds
    r = tight.post("/cds-services/tpi-order-sign", fallback_request(stub.base("twopages")))
    assert r.status_code == 412 and "'conditions'" in r.text
    assert any("key conditions" in m and "more than 1100 entries" in m for m in caplog.messages)


# --- 6. one shared outbound pool / issue 9 item 12: concurrent fetches, the key that timed out -------------

def test_callers_of_a_slow_fhir_server_do_not_starve_another(start_service, fake_evaluator, stub, stub_b):
    service = start_service(fake_evaluator, fhir_total_timeout=3.0, fhir_read_timeout=3.0,
                            fhir_max_connections_per_host=4)
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        slow = [pool.submit(service.post, "/cds-services/tpi-order-sign", fallback_request(stub.base("slow")))
                for _ in range(40)]
        time.sleep(0.5)
        t0 = time.monotonic()
        good = service.post("/cds-services/tpi-order-sign", fallback_request(stub_b.base("ok")))
        good_seconds = time.monotonic() - t0
        assert all(f.result().status_code == 412 for f in slow)
    assert good.status_code == 200, good.text
    assert good_seconds < 1.5


def test_keys_are_fetched_concurrently_and_a_timeout_names_its_own_key(start_service, evaluator, stub, caplog):
    service = start_service(evaluator, fhir_total_timeout=1.5, fhir_read_timeout=5.0)
    t0 = time.monotonic()
    r = service.post("/cds-services/tpi-order-sign", fallback_request(stub.base("slowobs")))
    seconds = time.monotonic() - t0
    assert r.status_code == 200, r.text  # the six keys answered are used
    missing = _missing(r)
    lost = [line for line in missing.splitlines() if "could not be fetched" in line]  # open mode: generic text
    assert len(lost) == 1 and "INR" in lost[0], missing  # observations, and only they
    assert [m.split()[5] for m in caplog.messages if "timed out" in m] == ["observations"]  # the log says why
    assert seconds < 3.0  # one budget for all keys, not one per key
    r = service.post("/cds-services/tpi-order-sign", fallback_request(stub.base("slowallergy")))
    assert r.status_code == 412
    assert _diagnostics(r) == ["required prefetch 'allergies' (allergies): could not be fetched from the FHIR server"]


# --- 7. slow clients ---------------------------------------------------------------------------------

def test_a_body_that_never_arrives_gets_408_and_discovery_still_answers(start_service, fake_evaluator):
    import socket

    service = start_service(fake_evaluator, body_read_timeout=1.0)
    sockets = []
    try:
        for _ in range(20):  # half-open calls: headers promise 1000 bytes that never come
            s = socket.create_connection(("127.0.0.1", int(service.url.rsplit(":", 1)[1])), timeout=5)
            s.sendall(b"POST /cds-services/tpi-order-sign HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            sockets.append(s)
        t0 = time.monotonic()
        assert service.get("/cds-services").status_code == 200
        assert time.monotonic() - t0 < 0.5
        answer = sockets[0].recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    finally:
        for s in sockets:
            s.close()


def test_serve_closes_slow_header_connections_and_keeps_serving(tmp_path):
    """`cds-tpi serve` itself: 150 connections that send a request line and a header byte now and then
    (slowloris) are closed after header_read_timeout; discovery answers during and after."""
    import socket
    import subprocess
    import sys

    from conftest import REPO, wait_http

    port = free_port()
    (tmp_path / "service.yaml").write_text("header_read_timeout: 1.0\nbody_read_timeout: 1.0\nlimit_concurrency: 100\n")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", "from cds_tpi.cli.serve import serve; serve()", "--port", str(port),
                             "--database-url", f"sqlite:///{tmp_path}/s.sqlite3", "--config", str(tmp_path / "service.yaml")],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    sockets = []
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /cds-services HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
            sockets.append(s)
        time.sleep(1.5)
        closed = 0
        for s in sockets:
            s.settimeout(0.2)
            try:
                closed += s.recv(100) == b""
            except ConnectionResetError:
                closed += 1
            except socket.timeout:  # still open
                pass
        assert closed == len(sockets), f"{closed} of {len(sockets)} slow-header connections closed"
        r = httpx.get(f"http://127.0.0.1:{port}/cds-services", timeout=5)
        assert r.status_code == 200
    finally:
        for s in sockets:
            s.close()
        proc.terminate()
        proc.wait(timeout=15)


# --- 8. aud from the Host header / trusted hosts --------------------------------------------------

def test_issuers_require_public_base_url():
    from cds_tpi.errors import InputError
    from cds_tpi.service.config import Issuer, ServiceConfig

    with pytest.raises(InputError, match="public_base_url"):
        ServiceConfig(issuers=(Issuer(iss="https://ehr.example.org", jwks_file="k.json"),))


def test_a_token_for_another_service_sent_with_its_host_is_refused(start_service, fake_evaluator, signer, caplog):
    from conftest import issuer_for

    service = start_service(fake_evaluator, issuers=issuer_for(signer))
    other = "http://other-cds.example.org/cds-services/tpi-order-sign"  # minted for another CDS service
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign"),
                     headers={"Authorization": f"Bearer {signer.token(other)}", "Host": "other-cds.example.org"})
    assert r.status_code == 400 and "host" in r.text.lower()  # untrusted Host
    with caplog.at_level("WARNING", logger="cds_tpi.service"):
        r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign"),
                         headers={"Authorization": f"Bearer {signer.token(other)}"})
    assert r.status_code == 401 and "aud does not equal the URL called" in caplog.text  # the log says why


def test_a_dns_rebinding_host_is_refused_in_open_mode(start_service, fake_evaluator):
    service = start_service(fake_evaluator)
    assert service.get("/cds-services", headers={"Host": "attacker.example"}).status_code == 400
    assert service.get("/cds-services", headers={"Host": "localhost"}).status_code == 200


# --- 9. the low ones ---------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_a_post_that_is_not_json_is_415(start_service, fake_evaluator, content_type):
    service = start_service(fake_evaluator)
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(service.url + "/cds-services/tpi-order-sign", content=json.dumps(hook_request("order-sign")),
                   headers=headers, timeout=15)
    assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome"
    assert not fake_evaluator.requests


def test_open_mode_allows_no_cors_origin_by_default(start_service, fake_evaluator):
    service = start_service(fake_evaluator)
    r = httpx.options(service.url + "/cds-services/tpi-order-sign", timeout=15, headers={
        "Origin": "https://attacker.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_a_numeric_bundle_link_is_not_a_500(start_service, evaluator):
    service = start_service(evaluator)
    request = hook_request("order-sign")
    request["prefetch"]["conditions"]["link"] = 5
    r = service.post("/cds-services/tpi-order-sign", request)
    assert r.status_code == 200, r.text  # the malformed link is ignored


def test_a_replay_check_that_cannot_reach_the_database_fails_closed(start_service, fake_evaluator, signer):
    from conftest import issuer_for

    service = start_service(fake_evaluator, issuers=issuer_for(signer))
    url = service.url + "/cds-services/tpi-order-sign"

    def broken(*args):
        raise RuntimeError("database down")

    service.state.verifier.jti_store._shared = broken
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign"),
                     headers={"Authorization": f"Bearer {signer.token(url)}"})
    assert r.status_code == 503 and r.headers["retry-after"]


def test_an_overlong_jti_is_refused(start_service, fake_evaluator, signer, caplog):
    from conftest import issuer_for

    service = start_service(fake_evaluator, issuers=issuer_for(signer))
    url = service.url + "/cds-services/tpi-order-sign"
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign"),
                     headers={"Authorization": f"Bearer {signer.token(url, jti='j' * 300)}"})
    assert r.status_code == 401 and "jti must be a string of at most 256" in caplog.text


def test_every_jwt_refusal_reads_the_same(start_service, fake_evaluator, signer, caplog):
    """Untrusted iss, unknown kid, a known kid with a key type that does not fit alg, a trusted issuer
    whose JWK Set cannot be fetched (was 503: told which issuers are trusted), a bad signature, an
    expired token, no header: one 401 text and one WWW-Authenticate; the log says why, never the token."""
    from joserfc import jwk

    from cds_tpi.service.auth import REJECTED
    from cds_tpi.service.config import Issuer
    from conftest import issuer_for

    jwks_down = Issuer(iss="https://ehr2.example.org", jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    service = start_service(fake_evaluator, issuers=(*issuer_for(signer), jwks_down))
    url = service.url + "/cds-services/tpi-order-sign"
    rsa = jwk.RSAKey.generate_key(2048, private=True)
    tokens = {
        "iss is not a trusted issuer": signer.token(url, iss="https://untrusted.example"),
        "no key with this kid": signer.token(url, header={"kid": "nope"}),
        "does not fit alg RS256": signer.token(url, alg="RS256", key=rsa),  # kid ehr-key-1 is an EC key
        "JWK Set cannot be fetched": signer.token(url, iss="https://ehr2.example.org", header={"kid": "x"}),
        "bad signature": signer.token(url, key=jwk.ECKey.generate_key("P-384", private=True)),
        "expired": signer.token(url, iat_offset=-1000),
        "Authorization": None,
    }
    answers = []
    with caplog.at_level("WARNING", logger="cds_tpi.service"):
        for why, token in tokens.items():
            caplog.clear()
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign"), headers=headers)
            assert r.status_code == 401, (why, r.text)
            answers.append((r.text, r.headers["www-authenticate"], r.headers.get("retry-after")))
            assert why in caplog.text, (why, caplog.text)
            assert not token or token not in caplog.text and token.split(".")[1] not in caplog.text
    assert all(a == answers[0] for a in answers), answers
    assert REJECTED in answers[0][0] and answers[0][2] is None
    for leak in ("kid", "key type", "issuer", "JWK", "EC", "RS256", "expired", "signature"):
        assert leak not in answers[0][0] + answers[0][1], leak


def test_a_failing_jwks_url_is_fetched_once_not_per_call(start_service, fake_evaluator, signer):
    from cds_tpi.service.config import Issuer

    service = start_service(fake_evaluator, issuers=(Issuer(iss="https://ehr.example.org",
                                                            jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json"),))
    fetches = []
    verifier = service.state.verifier

    async def failing_get(url):
        fetches.append(url)
        raise OSError("refused")

    verifier._http_get = failing_get
    url = service.url + "/cds-services/tpi-order-sign"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: service.post(
            "/cds-services/tpi-order-sign", hook_request("order-sign"),
            headers={"Authorization": f"Bearer {signer.token(url)}"}).status_code, range(16)))
    assert set(answers) == {401}  # the generic 401: a 503 told which issuers are trusted
    assert len(fetches) == 1


def test_a_client_that_disconnects_is_not_audited_as_a_500(start_service, fake_evaluator):
    import socket

    service = start_service(fake_evaluator)
    s = socket.create_connection(("127.0.0.1", int(service.url.rsplit(":", 1)[1])), timeout=5)
    s.sendall(b"POST /cds-services/tpi-order-sign HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    time.sleep(0.2)
    s.close()
    import sqlalchemy as sa

    deadline = time.monotonic() + 5
    rows = []
    while time.monotonic() < deadline and not rows:
        time.sleep(0.2)
        with service.storage.engine.connect() as conn:
            rows = conn.execute(sa.text("select status, outcome from audit")).all()
    assert [tuple(r) for r in rows] == [(499, "client-disconnected")]


def test_user_comments_are_not_stored_and_stats_escape_stored_text(start_service, evaluator, tmp_path):
    import sqlalchemy as sa
    from click.testing import CliRunner

    from cds_tpi.cli.stats import stats

    service = start_service(evaluator, database_url=f"sqlite:///{tmp_path}/stats.sqlite3")
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign"))
    card = next(c for c in r.json()["cards"] if c.get("overrideReasons"))
    reason = card["overrideReasons"][0]
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2025-03-01T12:00:00Z",
            "overrideReason": {"reason": reason, "userComment": f"patient {PATIENT_ID} said so"}}
    deadline = time.monotonic() + 5
    while True:  # the card is known once its audit row is written
        f = service.post("/cds-services/tpi-order-sign/feedback", {"feedback": [item]})
        if f.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert f.status_code == 200, f.text
    with service.storage.engine.begin() as conn:
        assert conn.execute(sa.text("select user_comment from feedback")).all() == [(None,)]
        # a row forged straight into the database (or by an older version): escapes, a newline, bidi
        conn.execute(sa.text("update feedback set override_display = :d"),
                     {"d": "\x1b[2J\x1b[31mforged\nrule-x  999  0  0\u202e"})
    out = CliRunner().invoke(stats, ["--database-url", service.config.database_url])
    assert out.exit_code == 0, out.output
    assert "\x1b" not in out.output and "\u202e" not in out.output
    assert "\\x1b[2J" in out.output and "\\x0arule-x" in out.output


def test_the_audit_row_names_the_caller(start_service, fake_evaluator, signer):
    import sqlalchemy as sa

    from conftest import issuer_for

    service = start_service(fake_evaluator, issuers=issuer_for(signer))
    url = service.url + "/cds-services/tpi-order-sign"
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign"),
                     headers={"Authorization": f"Bearer {signer.token(url)}"})
    assert r.status_code == 200
    deadline, rows = time.monotonic() + 5, []
    while not rows and time.monotonic() < deadline:
        time.sleep(0.2)
        with service.storage.engine.connect() as conn:
            rows = conn.execute(sa.text("select caller from audit")).all()
    assert rows == [("https://ehr.example.org",)]


def test_an_old_audit_table_gets_the_caller_column(tmp_path):
    import sqlalchemy as sa

    from cds_tpi.service.storage import Storage

    url = f"sqlite:///{tmp_path}/old.sqlite3"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # schema 2's audit table
        conn.execute(sa.text("create table audit (id integer primary key, at timestamp not null, service varchar(64) "
                             "not null, hook_instance varchar(64), status integer not null, outcome varchar(32) not null, "
                             "rule_ids text not null, duration_ms float not null)"))
        conn.execute(sa.text("create table schema_version (version integer primary key)"))
        conn.execute(sa.text("insert into schema_version values (2)"))
    engine.dispose()
    storage = Storage(url)
    storage.create_schema()
    storage.create_schema()  # idempotent
    assert "caller" in {c["name"] for c in sa.inspect(storage.engine).get_columns("audit")}
    storage.dispose()


def test_the_evaluation_thread_does_not_hold_a_stopping_worker():
    import asyncio

    from cds_tpi.service.evaluation import EvaluationRunner
    from cds_tpi.service.outcomes import HttpError

    runner = EvaluationRunner(0.2)
    assert runner._thread.daemon

    async def main():
        ran = []
        slow = asyncio.ensure_future(runner.run(time.sleep, 0.6))
        queued = asyncio.ensure_future(runner.run(ran.append, "queued"))
        for task in (slow, queued):
            with pytest.raises(HttpError):
                await task
        await asyncio.sleep(0.6)
        assert ran == []  # dropped at its deadline, never run
        assert await runner.run(lambda: 42) == 42
    asyncio.run(main())
    runner.close()


# --- TLS to the FHIR server through the guarded connections -------------------------------------------

def _self_signed(tmp_path, name: str) -> tuple[str, str]:
    """A self-signed certificate for `name` (also its CA): (cert file, key file)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    san = [x509.DNSName(name)] + ([x509.IPAddress(ipaddress.ip_address(name))] if name[0].isdigit() else [])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1)).add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@pytest.mark.parametrize(("cert_name", "expected"), [("localhost", 200), ("fhir.other.example", 412)])
def test_https_fhir_servers_are_verified_against_the_configured_ca(start_service, evaluator, tmp_path, cert_name, expected):
    """https through the address-checking connections: the certificate must be valid for the name
    in fhirServer (a certificate for another name is refused), with a hospital CA from fhir_ca_file."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from conftest import ThreadServer, patient_resources

    resources = patient_resources()

    async def handle(request):
        rest = request.path_params["rest"]
        kind = rest.split("/")[0]
        matches = [r for r in resources.values() if r["resourceType"] == kind]
        if "/" in rest:
            return JSONResponse(matches[0]) if matches else JSONResponse({"resourceType": "OperationOutcome"}, 404)
        return JSONResponse({"resourceType": "Bundle", "type": "searchset", **({"entry": [{"resource": m} for m in matches]}
                                                                                 if matches else {})})

    cert, key = _self_signed(tmp_path, cert_name)
    server = ThreadServer(Starlette(routes=[Route("/fhir/{rest:path}", handle)]))
    server.server.config.ssl_certfile, server.server.config.ssl_keyfile = cert, key
    server.start()
    try:
        base = f"https://localhost:{server.port}/fhir"
        service = start_service(evaluator, allowed_fhir_servers=(base,), fhir_ca_file=cert)
        r = service.post("/cds-services/tpi-order-sign", fallback_request(base))
        assert r.status_code == expected, r.text
    finally:
        server.server.force_exit = True
        server.stop()


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("LOCALHOST", True), ("localhost.", True), ("ip6-localhost", True), ("127.0.0.1", True),
    ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("10.0.0.1", False),
    ("localhost.example.org", False), ("example.org", False), ("", False), (None, False)])
def test_one_loopback_test_for_listening_and_connecting(host, loopback):
    """config.is_loopback is the only home of "this host is this machine" (serve's open-mode check,
    the FHIR fallback's http:// and address checks)."""
    from cds_tpi.service import config, outbound

    assert config.is_loopback(host) is loopback
    assert outbound.is_loopback is config.is_loopback
