"""JWT per CDS Hooks 2.0 §security, over HTTP: good and bad tokens, 401 with one generic text (the
reason is in the log)."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from joserfc import jwk

from cds_tpi.service.config import Issuer
from conftest import ISSUER, hook_request, issuer_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def service(start_service, evaluator, signer):
    return start_service(evaluator, issuers=issuer_for(signer))


def _call(service, token: str | None, path: str = "/cds-services/tpi-order-sign", body=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return service.post(path, body if body is not None else hook_request("order-sign"), headers=headers)


@pytest.fixture
def reason(caplog):
    """The logged reason of a 401, after checking that the caller read only the generic text."""
    from cds_tpi.service.auth import REJECTED

    def read(r) -> str:
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert [i["diagnostics"] for i in r.json()["issue"]] == [REJECTED]
        assert REJECTED in r.headers["www-authenticate"]
        refusals = [x for x in caplog.records if getattr(x, "fields", {}).get("event") == "unauthorized"]
        assert refusals, "the 401 was not logged"
        return refusals[-1].fields["reason"]
    return read


def test_good_token_is_accepted_on_every_endpoint(service, signer):
    url = service.url + "/cds-services/tpi-order-sign"
    answer = _call(service, signer.token(url))
    assert answer.status_code == 200
    r = service.get("/cds-services", headers={"Authorization": f"Bearer {signer.token(service.url + '/cds-services')}"})
    assert r.status_code == 200
    card = answer.json()["cards"][0]["uuid"]  # feedback must name a card this service issued
    feedback = {"feedback": [{"card": card, "outcome": "accepted", "outcomeTimestamp": "2025-01-01T10:00:00Z"}]}
    r = _call(service, signer.token(url + "/feedback"), "/cds-services/tpi-order-sign/feedback", feedback)
    assert r.status_code == 200
    assert service.get("/health").status_code == 200  # health and openapi stay open
    assert service.get("/openapi.json").status_code == 200


def test_rs256_and_es256_keys_work(start_service, evaluator, tmp_path, signer):
    rsa = jwk.RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}, private=True)
    ec256 = jwk.ECKey.generate_key("P-256", parameters={"kid": "ec-256"}, private=True)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [rsa.as_dict(private=False), ec256.as_dict(private=False)]}))  # no "use"
    service = start_service(evaluator, issuers=(Issuer(iss="https://other.example", jwks_file=str(jwks)),))
    url = service.url + "/cds-services/tpi-order-sign"
    for key, kid, alg in ((rsa, "rsa-1", "RS384"), (rsa, "rsa-1", "RS256"), (ec256, "ec-256", "ES256")):
        token = signer.token(url, iss="https://other.example", key=key, alg=alg, header={"kid": kid})
        assert _call(service, token).status_code == 200, alg


def test_missing_header(service, reason):
    assert "Authorization" in reason(_call(service, None))
    assert "Authorization" in reason(service.get("/cds-services"))


def test_wrong_key(service, signer, reason):
    other = jwk.ECKey.generate_key("P-384", private=True)
    assert "signature" in reason(_call(service, signer.token(service.url + "/cds-services/tpi-order-sign", key=other)))


def test_wrong_aud(service, signer, reason):
    assert "aud" in reason(_call(service, signer.token(service.url + "/cds-services/tpi-patient-view")))
    assert "aud" in reason(_call(service, signer.token("https://elsewhere.example/cds-services/tpi-order-sign")))


def test_expired(service, signer, reason):
    token = signer.token(service.url + "/cds-services/tpi-order-sign", iat_offset=-600, lifetime=300)
    assert "expired" in reason(_call(service, token))


def test_issued_in_the_future(service, signer, reason):
    token = signer.token(service.url + "/cds-services/tpi-order-sign", iat_offset=600)
    assert "iat" in reason(_call(service, token))


def test_too_long_lived(service, signer, reason):
    token = signer.token(service.url + "/cds-services/tpi-order-sign", lifetime=86_400)
    assert "exp" in reason(_call(service, token))


def test_replayed_jti(service, signer, reason):
    token = signer.token(service.url + "/cds-services/tpi-order-sign")
    assert _call(service, token).status_code == 200
    assert "replay" in reason(_call(service, token))
    # a new token reusing the jti is a replay too
    again = signer.token(service.url + "/cds-services/tpi-order-sign", jti=json.loads(
        base64.urlsafe_b64decode(token.split(".")[1] + "==="))["jti"])
    assert "replay" in reason(_call(service, again))


def test_alg_none(service, reason):
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": service.url + "/cds-services/tpi-order-sign", "iat": now, "exp": now + 60,
              "jti": uuid.uuid4().hex}
    for token in (f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'ehr-key-1'})}.{b64(claims)}.",
                  f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'ehr-key-1'})}.{b64(claims)}"):
        why = reason(_call(service, token))
        assert "alg" in why or "compact" in why


def test_hmac_is_refused(service, signer, reason):
    secret = jwk.OctKey.generate_key(256, parameters={"kid": "ehr-key-1"})
    token = signer.token(service.url + "/cds-services/tpi-order-sign", key=secret, alg="HS256")
    assert "HS256" in reason(_call(service, token))


def test_untrusted_issuer(service, signer, reason):
    token = signer.token(service.url + "/cds-services/tpi-order-sign", iss="https://evil.example")
    assert "issuer" in reason(_call(service, token))


def test_unknown_kid_and_missing_claims(service, signer, reason):
    url = service.url + "/cds-services/tpi-order-sign"
    assert "kid" in reason(_call(service, signer.token(url, header={"kid": "nope"})))
    assert "jti" in reason(_call(service, signer.token(url, jti="")))
    for claim in ("jti", "exp", "iat", "aud"):
        assert claim in reason(_call(service, signer.token(url, drop=(claim,))))


def test_garbage_tokens(service):
    for token in ("abc", "a.b.c", "Zm9v.YmFy.YmF6", "..", "x" * 5000):
        assert _call(service, token).status_code == 401


def test_jwks_url_issuer(start_service, evaluator, signer, fhir_stub):
    """Keys from a JWKS URL (served here by a tiny app) are fetched, cached and used."""
    from conftest import ThreadServer
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    hits = []

    async def jwks(request):
        hits.append(1)
        return Response(signer.jwks_file.read_bytes(), media_type="application/json")

    keys = ThreadServer(Starlette(routes=[Route("/jwks.json", jwks)])).start()
    try:
        service = start_service(evaluator, issuers=(Issuer(iss=ISSUER, jwks_url=keys.url + "/jwks.json"),))
        url = service.url + "/cds-services/tpi-order-sign"
        assert _call(service, signer.token(url)).status_code == 200
        assert _call(service, signer.token(url)).status_code == 200
        assert len(hits) == 1  # cached
    finally:
        keys.stop()
