"""Issue 9 item 13: CORS for browser clients (the CDS Hooks Sandbox) on every answer: WWW-Authenticate
readable by the page, CORS headers on an unexpected 500, discovery with a trailing slash served."""

from __future__ import annotations

import httpx
import pytest

from conftest import hook_request, issuer_for

pytestmark = pytest.mark.timeout(120)

ORIGIN = {"Origin": "https://sandbox.cds-hooks.org"}


def _exposed(response) -> set[str]:
    return {h.strip().lower() for h in response.headers.get("access-control-expose-headers", "").split(",")}


def test_a_401_lets_the_page_read_www_authenticate(start_service, fake_evaluator, signer):
    service = start_service(fake_evaluator, issuers=issuer_for(signer))
    r = service.get("/cds-services", headers=ORIGIN)
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "*"
    assert "www-authenticate" in _exposed(r) and "retry-after" in _exposed(r)
    assert r.headers["www-authenticate"].startswith("Bearer ")


def test_an_unexpected_500_carries_cors_headers(start_service, fake_evaluator):
    service = start_service(fake_evaluator, allowed_origins=("*",))  # open mode: no CORS origin unless configured
    audit = service.state.audit
    service.state.audit = None  # /health now fails outside any handler: CatchAll answers
    try:
        r = service.get("/health", headers=ORIGIN)
    finally:
        service.state.audit = audit
    assert r.status_code == 500 and r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["access-control-allow-origin"] == "*"
    fake_evaluator.raise_error = RuntimeError("engine bug")  # a 500 answered by the service handler
    r = service.post("/cds-services/tpi-order-sign", hook_request("order-sign"), headers=ORIGIN)
    assert r.status_code == 500 and r.headers["access-control-allow-origin"] == "*"


def test_discovery_with_a_trailing_slash_is_served_not_redirected(start_service, fake_evaluator):
    service = start_service(fake_evaluator, allowed_origins=("*",))  # open mode: no CORS origin unless configured
    plain = service.get("/cds-services", headers=ORIGIN)
    slash = service.get("/cds-services/", headers=ORIGIN, follow_redirects=False)
    assert slash.status_code == 200 and slash.json() == plain.json()
    assert slash.headers["access-control-allow-origin"] == "*"
    preflight = httpx.options(service.url + "/cds-services/", timeout=15, headers={
        **ORIGIN, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200


def test_a_trailing_slash_with_jwt_auth_uses_the_url_called_as_audience(start_service, fake_evaluator, signer):
    service = start_service(fake_evaluator, issuers=issuer_for(signer))
    url = service.url + "/cds-services/"
    r = service.get("/cds-services/", headers={"Authorization": f"Bearer {signer.token(url)}"})
    assert r.status_code == 200, r.text


def test_a_hook_call_and_feedback_with_a_trailing_slash_are_served_not_redirected(start_service, fake_evaluator, signer):
    """POST /cds-services/{id}/ and .../feedback/ answer as without the slash (a 307 would make the
    client re-send the body, and some drop it or the Authorization header on a redirect)."""
    service = start_service(fake_evaluator, issuers=issuer_for(signer))
    url = service.url + "/cds-services/tpi-order-sign/"
    r = service.post("/cds-services/tpi-order-sign/", hook_request("order-sign"),
                     headers={"Authorization": f"Bearer {signer.token(url)}"}, follow_redirects=False)
    assert r.status_code == 200, r.text
    assert "cards" in r.json()
    feedback_url = service.url + "/cds-services/tpi-order-sign/feedback/"
    r = service.post("/cds-services/tpi-order-sign/feedback/", {"feedback": []},
                     headers={"Authorization": f"Bearer {signer.token(feedback_url)}"}, follow_redirects=False)
    plain_url = service.url + "/cds-services/tpi-order-sign/feedback"
    plain = service.post("/cds-services/tpi-order-sign/feedback", {"feedback": []},
                         headers={"Authorization": f"Bearer {signer.token(plain_url)}"})
    assert r.status_code == plain.status_code and r.status_code in (200, 400), (r.status_code, r.text)
    assert r.json() == plain.json()
