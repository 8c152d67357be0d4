"""Service configuration: a frozen dataclass read from a YAML or TOML file plus CLI overrides."""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import yaml

from cds_tpi.errors import InputError

APP_NAME = "cds-tpi"


def default_database_url() -> str:
    """SQLite in the per-user data directory (platformdirs: $XDG_DATA_HOME/cds-tpi, by default
    ~/.local/share/cds-tpi/cds-tpi.sqlite3 on Linux), not the current directory: `stats` run
    elsewhere must find the same database. Read when a config is built, never at import."""
    from platformdirs import user_data_path

    return f"sqlite:///{user_data_path(APP_NAME, appauthor=False) / 'cds-tpi.sqlite3'}"


def sqlite_file(url: str) -> Path | None:
    """The file of a sqlite:/// URL (None for other databases and for in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
    return Path(path) if path and path != ":memory:" else None
ALLOWED_JWT_ALGORITHMS = ("ES384", "RS384", "ES256", "RS256")


@dataclass(frozen=True)
class Issuer:
    """A trusted JWT issuer (`iss`) and where its public keys are: a JWKS URL or a JWKS file."""

    iss: str
    jwks_url: str | None = None
    jwks_file: str | None = None
    # FHIR base URLs this issuer's EHR may name as `fhirServer` (besides allowed_fhir_servers)
    fhir_servers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.iss:
            raise InputError("issuer without 'iss'", "issuers")
        if bool(self.jwks_url) == bool(self.jwks_file):
            raise InputError(f"issuer {self.iss!r}: give exactly one of jwks_url, jwks_file", "issuers")
        object.__setattr__(self, "fhir_servers", tuple(self.fhir_servers or ()))


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the HTTP service needs; passed in, never read from the environment at import."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    database_url: str = dataclasses.field(default_factory=default_database_url)
    issuers: tuple[Issuer, ...] = ()
    allow_unauthenticated: bool = False
    # The external base URL (scheme://host[:port][/prefix]) clients call; the JWT `aud` must equal
    # it plus the path. Unset = taken from the request (fine on loopback, set it behind a proxy).
    public_base_url: str | None = None
    max_body_bytes: int = 5 * 1024 * 1024
    evaluation_timeout: float = 5.0  # seconds per call for the engine (queue wait included): then 503
    fhir_connect_timeout: float = 1.0
    fhir_read_timeout: float = 2.0
    fhir_total_timeout: float = 3.0  # budget for all FHIR fallback fetches of one call
    fhir_max_pages: int = 10  # searchset pages followed per prefetch key
    # SSRF guard (service/outbound.py): FHIR base URLs any caller may name as fhirServer (each issuer
    # may add its own); open mode with none: loopback only, and only when `host` is loopback (open on a
    # public address: nothing without this list). https only, except loopback or this flag.
    allowed_fhir_servers: tuple[str, ...] = ()
    fhir_allow_http: bool = False
    fhir_ca_file: str | None = None  # PEM CA certificates trusted for FHIR servers, besides the public CAs
    fhir_max_connections_per_host: int = 8  # FHIR requests in flight per server, all calls together
    fhir_max_bytes_per_call: int = 8 * 1024 * 1024  # all fallback fetches of one call, decompressed
    fhir_max_entries_per_call: int = 10_000
    # Host header values served; empty = public_base_url's host (required with issuers), or the
    # loopback names and `host` in open mode
    allowed_hosts: tuple[str, ...] = ()
    header_read_timeout: float = 10.0  # seconds to receive a request's line and headers (protocol.py)
    body_read_timeout: float = 10.0  # seconds to receive a request body (slow clients)
    limit_concurrency: int = 200  # uvicorn: connections + tasks per worker, then 503
    timeout_keep_alive: int = 5  # uvicorn: seconds an idle keep-alive connection is kept
    # CORS origins; None = "*" when issuers are configured (every call then needs a JWT), none in
    # open mode (a web page must not drive an unauthenticated service)
    allowed_origins: tuple[str, ...] | None = None
    jwt_leeway_seconds: int = 30
    jwt_max_lifetime_seconds: int = 3600  # bounds the jti replay store
    jwks_cache_seconds: int = 300
    rules_dir: str | None = None
    # GET /metrics (Prometheus text): off by default; with a token, scrapers must send
    # "Authorization: Bearer <metrics_token>"
    metrics_enabled: bool = False
    metrics_token: str | None = None

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0:
            raise InputError("must be > 0", "max_body_bytes")
        if self.workers < 1:
            raise InputError("must be >= 1", "workers")
        if self.fhir_max_pages < 1:
            raise InputError("must be >= 1", "fhir_max_pages")
        for name in ("fhir_max_connections_per_host", "fhir_max_bytes_per_call", "fhir_max_entries_per_call",
                     "limit_concurrency"):
            if getattr(self, name) < 1:
                raise InputError("must be >= 1", name)
        if self.issuers and not self.public_base_url:
            raise InputError("required when issuers are configured: the JWT aud is checked against it, "
                             "never against the Host header", "public_base_url")
        from cds_tpi.service.outbound import check_base_url  # noqa: PLC0415

        for where, urls in [("allowed_fhir_servers", self.allowed_fhir_servers),
                            *((f"issuers[{i.iss}].fhir_servers", i.fhir_servers) for i in self.issuers)]:
            for url in urls:
                try:
                    check_base_url(url, self.fhir_allow_http)
                except ValueError as e:
                    raise InputError(str(e), where) from None

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """The CORS origins in effect (see allowed_origins)."""
        if self.allowed_origins is not None:
            return self.allowed_origins
        return ("*",) if self.issuers else ()

    @property
    def trusted_hosts(self) -> tuple[str, ...]:
        """Host header values served (see allowed_hosts)."""
        if self.allowed_hosts:
            return self.allowed_hosts
        if self.public_base_url:
            # the public name, and the loopback names for probes on the machine itself (a container's
            # HEALTHCHECK calls http://127.0.0.1:PORT/health): the JWT aud comes from public_base_url,
            # not from Host, and a DNS-rebinding page sends its own name, never these
            return (urlsplit(self.public_base_url).hostname or "", "127.0.0.1", "localhost", "::1")
        if not is_loopback(self.host):  # open and public (--allow-unauthenticated): anyone may call anyway
            return ("*",)
        return ("127.0.0.1", "localhost", "::1")  # a DNS-rebinding web page sends its own name

    @property
    def auth_enabled(self) -> bool:
        """JWT checking is on when at least one issuer is configured."""
        return bool(self.issuers)

    def to_json(self) -> bytes:
        """Serialise (for handing the config to uvicorn worker processes)."""
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> ServiceConfig:
        """Inverse of `to_json`."""
        return from_mapping(orjson.loads(data))


_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


def is_loopback(host: str | None) -> bool:
    """True for `localhost` and loopback IP literals (127.0.0.0/8, ::1, also as `[::1]`): the one
    test of "this host is this machine", for where the service listens and where it connects."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def from_mapping(data: dict[str, Any], location: str = "config") -> ServiceConfig:
    """Build a config from a plain mapping; unknown keys are an error naming the key."""
    if not isinstance(data, dict):
        raise InputError("config must be a mapping", location)
    names = {f.name for f in dataclasses.fields(ServiceConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"unknown config key(s): {', '.join(unknown)}", location)
    values = dict(data)
    if "issuers" in values:
        raw = values["issuers"] or []
        if not isinstance(raw, list) or not all(isinstance(i, dict) for i in raw):
            raise InputError("issuers must be a list of mappings", location)
        try:
            values["issuers"] = tuple(Issuer(**{k: tuple(v) if k == "fhir_servers" and isinstance(v, list) else v
                                                for k, v in i.items()}) for i in raw)
        except TypeError as e:
            raise InputError(f"issuers: {e}", location) from e
    for name in ("allowed_origins", "allowed_fhir_servers", "allowed_hosts"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    try:
        return ServiceConfig(**values)
    except TypeError as e:
        raise InputError(str(e), location) from e


def load_config(path: str | Path | None = None, **overrides: Any) -> ServiceConfig:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file, then apply non-None overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            data = tomllib.loads(text) if p.suffix == ".toml" else (yaml.safe_load(text) or {})
        except (OSError, tomllib.TOMLDecodeError, yaml.YAMLError) as e:
            raise InputError(f"cannot read config: {e}", str(p)) from e
        if not isinstance(data, dict):
            raise InputError("config must be a mapping", str(p))
        # relative JWKS files are relative to the config file
        for issuer in data.get("issuers") or []:
            if isinstance(issuer, dict) and issuer.get("jwks_file"):
                issuer["jwks_file"] = str((p.parent / issuer["jwks_file"]).resolve())
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(data, str(path) if path else "config")
