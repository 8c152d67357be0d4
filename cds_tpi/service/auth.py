"""JWT bearer authentication per CDS Hooks 2.0 §security, with joserfc.

Every call (discovery, service, feedback) carries `Authorization: Bearer <JWT>` signed by a
trusted issuer. We check: alg in ES384/RS384/ES256/RS256 (never `none` or HMAC), `typ` JWT, a
`kid` found in the issuer's configured JWK Set (the `jku` header is ignored: keys come only from
configuration), the signature, `iss` allow-listed, `aud` equal to the exact URL called, `exp`/`iat`
with a small leeway, a bounded lifetime, and `jti` not seen before. Every refusal is the same 401
text to the caller (`REJECTED`: a caller learns nothing about which issuers, kids or key types
exist, nor whether a trusted issuer's JWK Set is reachable); the reason is logged (app.py
`_log_refusal`); neither the token nor its claims are ever logged."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
from joserfc import jwk, jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError

from cds_tpi.service.config import ALLOWED_JWT_ALGORITHMS, Issuer, ServiceConfig
from cds_tpi.service.outcomes import HttpError

log = logging.getLogger(__name__)

_KTY_FOR_ALG = {"ES256": "EC", "ES384": "EC", "RS256": "RSA", "RS384": "RSA"}
_JWKS_MIN_REFRESH_SECONDS = 30.0


# The one text of every JWT refusal (the reason goes to the log only)
REJECTED = "JWT rejected: the bearer token is missing or not valid for this service"


class Unauthorized(HttpError):
    """A 401 with the generic text; `reason` (for the log, never the token) says why."""

    def __init__(self, reason: str):
        super().__init__(401, REJECTED, headers={
            "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{REJECTED}"'})
        self.reason = reason


def unauthorized(reason: str) -> Unauthorized:
    """The 401 for a refused token: the caller reads REJECTED, the log `reason`."""
    return Unauthorized(reason)


class JtiStore:
    """Seen (iss, jti) pairs until they expire: in memory for this process, and optionally in a
    shared store (the database) so a replay to another worker is caught too."""

    def __init__(self, shared: Callable[[str, str, int], bool] | None = None):
        self._seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._shared = shared
        self.shared_failures = 0

    def claim(self, iss: str, jti: str, exp: int) -> bool:
        """Record a jti; False when it was seen before (a replay)."""
        now = int(time.time())
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: v for k, v in self._seen.items() if v >= now}
            if (iss, jti) in self._seen:
                return False
            self._seen[(iss, jti)] = exp
        if self._shared is None:
            return True
        try:
            return self._shared(iss, jti, exp)
        except Exception as e:
            # fail closed: a per-process check would let a replay through on another worker
            self.shared_failures += 1
            with self._lock:
                self._seen.pop((iss, jti), None)
            log.warning("jti store unavailable (%s); call refused with 503", type(e).__name__)
            raise HttpError(503, "the token replay check is unavailable; retry later",
                            headers={"Retry-After": "5"}) from None


MAX_JTI_LENGTH = 256  # the jwt_jti column (storage.py)


@dataclass
class _KeySource:
    issuer: Issuer
    keys: dict[str, dict] = field(default_factory=dict)  # kid -> JWK
    fetched_at: float = 0.0
    failed_at: float = -1e9  # last failed JWKS fetch (negative cache)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one JWKS fetch in flight per issuer


class JwtVerifier:
    """Verifies CDS Hooks bearer JWTs against the configured issuers."""

    def __init__(self, config: ServiceConfig, jti_store: JtiStore,
                 http_get: Callable[[str], Awaitable[bytes]] | None = None):
        self.config = config
        self.jti_store = jti_store
        self._http_get = http_get or _http_get
        self._sources = {i.iss: _KeySource(i) for i in config.issuers}
        for source in self._sources.values():
            if source.issuer.jwks_file:
                try:
                    source.keys = _parse_jwks(Path(source.issuer.jwks_file).read_bytes())
                except (OSError, ValueError) as e:
                    raise ValueError(f"issuer {source.issuer.iss}: cannot read JWKS file: {e}") from e

    async def verify(self, authorization: str | None, audience: str) -> dict[str, Any]:
        """Return the verified claims, or raise Unauthorized (401; also when a trusted issuer's JWK Set
        cannot be fetched: a 503 there would tell which issuers are trusted)."""
        if not authorization:
            raise unauthorized("an 'Authorization: Bearer <JWT>' header is required")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("the Authorization header must be 'Bearer <JWT>'")
        header, claims = _peek(token)
        alg = header.get("alg")
        if alg not in ALLOWED_JWT_ALGORITHMS:
            raise unauthorized(f"alg {alg!r} is not allowed (use one of {', '.join(ALLOWED_JWT_ALGORITHMS)})")
        if str(header.get("typ", "")).upper() != "JWT":
            raise unauthorized("header typ must be 'JWT'")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise unauthorized("header kid is required")
        iss = claims.get("iss")
        source = self._sources.get(iss) if isinstance(iss, str) else None
        if source is None:
            raise unauthorized("iss is not a trusted issuer")
        key = await self._key(source, kid, alg)
        try:
            verified = jwt.decode(token, key, algorithms=[alg]).claims
        except BadSignatureError:
            raise unauthorized("bad signature") from None
        except JoseError as e:
            raise unauthorized(f"invalid token ({e.error})") from None
        self._check_claims(verified, iss, audience)
        if not isinstance(verified["jti"], str) or len(verified["jti"]) > MAX_JTI_LENGTH:
            raise unauthorized(f"jti must be a string of at most {MAX_JTI_LENGTH} characters")
        # the shared store is a database round trip: off the event loop
        if not await anyio.to_thread.run_sync(self.jti_store.claim, iss, verified["jti"], int(verified["exp"])):
            raise unauthorized("jti was already used (replay)")
        return verified

    def _check_claims(self, claims: dict, iss: str, audience: str) -> None:
        registry = jwt.JWTClaimsRegistry(
            leeway=self.config.jwt_leeway_seconds,
            iss={"essential": True, "value": iss},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except MissingClaimError as e:
            raise unauthorized(f"missing claim(s): {e.description}") from None
        except ExpiredTokenError:
            raise unauthorized("token expired (exp)") from None
        except InvalidClaimError as e:
            if e.claim == "aud":
                raise unauthorized("aud does not equal the URL called") from None
            raise unauthorized(f"invalid claim {e.claim}: {e.description}") from None
        now = time.time()
        if claims["exp"] - now > self.config.jwt_max_lifetime_seconds + self.config.jwt_leeway_seconds:
            raise unauthorized(f"exp is more than {self.config.jwt_max_lifetime_seconds} s ahead")
        if now - claims["iat"] > self.config.jwt_max_lifetime_seconds + self.config.jwt_leeway_seconds:
            raise unauthorized("iat is too old")

    def issuer_of(self, claims: dict | None) -> Issuer | None:
        """The configured issuer of verified claims."""
        source = self._sources.get(claims.get("iss")) if claims else None
        return source.issuer if source else None

    def _needs_fetch(self, source: _KeySource, kid: str) -> bool:
        now = time.monotonic()
        if now - source.failed_at < _JWKS_MIN_REFRESH_SECONDS:
            return False  # negative cache: a failing JWKS URL is not hammered by every call
        stale = now - source.fetched_at
        return stale > self.config.jwks_cache_seconds or (kid not in source.keys and stale > _JWKS_MIN_REFRESH_SECONDS)

    async def _key(self, source: _KeySource, kid: str, alg: str) -> jwk.Key:
        url = source.issuer.jwks_url
        if url and self._needs_fetch(source, kid):
            async with source.lock:  # one fetch in flight; the others wait for its result
                if self._needs_fetch(source, kid):
                    try:
                        source.keys = _parse_jwks(await self._http_get(url))
                        source.fetched_at = time.monotonic()
                    except Exception as e:
                        source.failed_at = time.monotonic()
                        log.warning("JWKS of issuer %s unavailable: %s", source.issuer.iss, type(e).__name__)
        jwk_dict = source.keys.get(kid)
        if jwk_dict is None and url and not source.keys:
            raise unauthorized("the trusted issuer's JWK Set cannot be fetched now")
        if jwk_dict is None:
            raise unauthorized("no key with this kid in the issuer's JWK Set")
        if jwk_dict.get("kty") != _KTY_FOR_ALG[alg]:
            raise unauthorized(f"key type {jwk_dict.get('kty')!r} does not fit alg {alg}")
        try:
            return jwk.import_key(jwk_dict)
        except (JoseError, ValueError, TypeError):
            raise unauthorized("the issuer's key for this kid is unusable") from None


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def _peek(token: str) -> tuple[dict, dict]:
    """Header and claims before verification (only to pick the issuer and key)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise unauthorized("not a compact JWS (three dot-separated parts)")
    try:
        header, claims = _b64json(parts[0]), _b64json(parts[1])
    except (ValueError, binascii.Error, UnicodeEncodeError, orjson.JSONDecodeError):
        raise unauthorized("malformed JWT") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise unauthorized("malformed JWT")
    return header, claims


def _parse_jwks(data: bytes) -> dict[str, dict]:
    """kid -> JWK of the signature keys in a JWK Set (keys marked `use: enc` are left out)."""
    jwks = orjson.loads(data)
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("not a JWK Set (no 'keys' array)")
    return {k["kid"]: k for k in jwks["keys"]
            if isinstance(k, dict) and isinstance(k.get("kid"), str) and k.get("use", "sig") == "sig"}


async def _http_get(url: str) -> bytes:
    async with httpx.AsyncClient(timeout=httpx.Timeout(3.0, connect=2.0), follow_redirects=False,
                                 trust_env=False) as client:
        response = await client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.content
