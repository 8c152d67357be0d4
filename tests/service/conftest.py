"""Fixtures for the HTTP service tests: live uvicorn servers on loopback, the medplum FHIR server,
a fault-injecting FHIR stub, a throwaway PostgreSQL cluster, and JWT helpers."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
import uvicorn
from joserfc import jwk, jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cds_tpi.service.app import create_app
from cds_tpi.service.config import Issuer, ServiceConfig
from cds_tpi.service.storage import Storage

HERE = Path(__file__).parent
DATA = HERE / "data"
REPO = HERE.parent.parent
FHIR_SERVER_DIR = REPO / "tests" / "fhirserver"
PATIENT_ID = "tpi-pat-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a server process: SIGTERM, then SIGKILL when it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- sample data ---------------------------------------------------------------------------------

def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def patient_resources() -> dict[str, dict]:
    return {e["resource"]["id"]: e["resource"] for e in load("patient-bundle.json")["entry"]}


def searchset(*resources: dict) -> dict:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if resources:
        bundle["entry"] = [{"resource": r} for r in resources]
    return bundle


def full_prefetch() -> dict:
    r = patient_resources()
    return {
        "patient": r["tpi-pat-1"],
        "medicationRequests": searchset(r["warfarin-1"]),
        "medicationStatements": None,
        "conditions": searchset(r["cond-1"]),
        "allergies": searchset(r["allergy-1"]),
        "procedures": None,
        "observations": searchset(r["inr-1"]),
    }


def hook_request(hook: str, *, prefetch: dict | None = None, **extra: Any) -> dict:
    """A valid CDS Hooks request for `hook` about the sample patient with a TPI draft order."""
    drafts = load("draft-orders.json")
    context: dict[str, Any] = {"userId": "Practitioner/dr-1", "patientId": PATIENT_ID}
    if hook == "order-select":
        context.update(selections=["ServiceRequest/tpi-1"], draftOrders=drafts)
    elif hook == "order-sign":
        context["draftOrders"] = drafts
    elif hook == "appointment-book":
        context["appointments"] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
            "resourceType": "Appointment", "id": "appt-1", "status": "proposed",
            "serviceType": [{"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "20553"}],
                             "text": "Trigger point injections"}],
            "participant": [{"actor": {"reference": f"Patient/{PATIENT_ID}"}, "status": "needs-action"}]}}]}
    request = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context,
               "prefetch": full_prefetch() if prefetch is None else prefetch}
    request.update(extra)
    return request


SERVICE_FOR_HOOK = {"order-select": "tpi-order-select", "order-sign": "tpi-order-sign",
                    "appointment-book": "tpi-appointment-book", "patient-view": "tpi-patient-view"}


# --- evaluators ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def evaluator():
    """The real engine (one per test process, as in a uvicorn worker)."""
    from cds_tpi.pipeline import Evaluator

    return Evaluator.load()


@dataclass
class _FakeFinding:
    rule_id: str
    indicator: str


class FakeEvaluation:
    def __init__(self, request: dict, gaps: list[str]):
        self.request = request
        self.gaps = gaps
        self.cards = [{"uuid": str(uuid.uuid4()), "summary": "fake", "indicator": "warning",
                       "source": {"label": "fake", "topic": {"system": "x", "code": "fake-rule"}}}]
        if gaps:
            self.cards.append({"uuid": str(uuid.uuid4()), "summary": "missing data", "indicator": "info",
                               "detail": "\n".join(gaps),
                               "source": {"label": "fake", "topic": {"system": "x", "code": "missing-data"}}})
        self.findings = [_FakeFinding(c["source"]["topic"]["code"], c["indicator"]) for c in self.cards]
        self.response = {"cards": self.cards}


class FakeEvaluator:
    """Records the requests it sees; a draft is a TPI when its code is CPT 20552/20553."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.checked: list[tuple[str, ...]] = []  # the `checked` record lists of each call
        self.raise_error: Exception | None = None

    def may_be_tpi_order(self, resources: list[dict]) -> bool:
        return any(c.get("code") in ("20552", "20553")
                   for r in resources if r.get("resourceType") == "ServiceRequest"
                   for c in (r.get("code") or {}).get("coding", []))

    def evaluate_request(self, request: dict, *, gaps=(), checked=(), now=None) -> FakeEvaluation:
        if self.raise_error:
            raise self.raise_error
        self.requests.append(copy.deepcopy(request))
        self.checked.append(tuple(checked))
        return FakeEvaluation(request, list(gaps))


@pytest.fixture
def fake_evaluator() -> FakeEvaluator:
    return FakeEvaluator()


# --- live servers --------------------------------------------------------------------------------

class ThreadServer:
    """A uvicorn server for an ASGI app in a background thread, on a free loopback port."""

    def __init__(self, app: Any):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class LiveService:
    url: str
    config: ServiceConfig
    storage: Storage
    app: Starlette

    def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return httpx.post(self.url + path, content=content, headers=headers, timeout=kwargs.pop("timeout", 15), **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=15, **kwargs)

    @property
    def state(self):
        return self.app.state.service


@pytest.fixture
def start_service(tmp_path) -> Callable[..., LiveService]:
    """Factory: start the service app (real uvicorn, loopback) with a config and evaluator."""
    servers: list[ThreadServer] = []

    def start(evaluator: Any, *, storage: Storage | None = None, port: int | None = None, **config: Any) -> LiveService:
        config.setdefault("database_url", f"sqlite:///{tmp_path}/service-{len(servers)}.sqlite3")
        if config.get("issuers") and not config.get("public_base_url"):  # required with issuers: the JWT aud
            port = port or free_port()
            config["public_base_url"] = f"http://127.0.0.1:{port}"
        cfg = ServiceConfig(**config)
        store = storage or Storage(cfg.database_url)
        app = create_app(cfg, evaluator=evaluator, storage=store)
        server = ThreadServer(app)
        if port is not None:
            server.port = port
            server.server.config.port = port
        servers.append(server.start())
        return LiveService(server.url, cfg, store, app)

    yield start
    for s in servers:
        s.stop()


# --- the medplum FHIR server (real implementation) -----------------------------------------------

NODE_MIN = (20, 19)  # tests/fhirserver/package.json "engines" (medplum 4.5)


def _skip_or_fail(reason: str) -> None:
    """Skip a test that needs Node; under CI=true fail instead (.ci/run installs Node)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}, and CI must run the FHIR server tests (.ci/run installs Node >= 20.19)")
    pytest.skip(reason)


def _node_version(node: str) -> tuple[int, int] | None:
    done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    try:
        major, minor = done.stdout.strip().lstrip("v").split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _npm_install() -> None:
    if (FHIR_SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        _skip_or_fail("npm is not installed: cannot install the medplum FHIR test server")
    command = [npm, "ci" if (FHIR_SERVER_DIR / "package-lock.json").exists() else "install", "--no-audit", "--no-fund"]
    done = subprocess.run(command, cwd=FHIR_SERVER_DIR, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"npm install failed in {FHIR_SERVER_DIR}:\n{done.stderr[-2000:]}")


@dataclass
class FhirServer:
    url: str
    token: str


@pytest.fixture(scope="session")
def medplum() -> FhirServer:
    """medplum's FhirRouter + MemoryRepository behind tests/fhirserver/server.mjs, loaded with the
    sample patient, requiring a bearer token."""
    node = shutil.which("node")
    if node is None:
        _skip_or_fail("node is not installed: cannot run the medplum FHIR test server")
    version = _node_version(node)
    if version is None or version < NODE_MIN:
        _skip_or_fail(f"node {'.'.join(map(str, version or ()))or '?'} is older than "
                      f"{'.'.join(map(str, NODE_MIN))}, which the medplum FHIR test server needs")
    _npm_install()
    token = "fhir-access-token-" + uuid.uuid4().hex
    port = free_port()
    proc = subprocess.Popen([node, "server.mjs", str(port), str(DATA / "patient-bundle.json")], cwd=FHIR_SERVER_DIR,
                            env={**os.environ, "FHIR_TOKEN": token}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/metadata", timeout=30, proc=proc)
        yield FhirServer(f"http://127.0.0.1:{port}", token)
    finally:
        stop_process(proc, timeout=5)


# --- a fault-injecting FHIR stub ----------------------------------------------------------------

class StubState:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []  # (path+query, Authorization)


def _as_patient(resource: dict, patient_id: str) -> dict:
    """resource with its subject/patient reference pointing to Patient/patient_id."""
    out = dict(resource)
    for key in ("subject", "patient"):
        if isinstance(out.get(key), dict) and str(out[key].get("reference", "")).startswith("Patient/"):
            out[key] = {**out[key], "reference": f"Patient/{patient_id}"}
    return out


def _stub_app(state: StubState) -> Starlette:
    """FHIR base `{url}/{mode}`; modes: ok, slow, error500, garbage, wrongtype, loop, foreign, endless, pages."""
    resources = patient_resources()

    async def handle(request: Request) -> Response:
        mode = request.path_params["mode"]
        rest = request.path_params["rest"]
        state.requests.append((f"/{mode}/{rest}?{request.url.query}", request.headers.get("authorization")))
        resource_type = rest.split("/")[0]
        if mode == "slow":
            await asyncio.sleep(30)
        if mode == "error500":
            return JSONResponse({"resourceType": "OperationOutcome", "issue": []}, status_code=500)
        if mode == "garbage":
            return Response(b"<html>\x00\xff not json", media_type="application/fhir+json")
        if mode == "wrongtype":
            return JSONResponse({"resourceType": "Basic"})
        # The stub holds one patient's records and answers them as the asked-for patient's: the service
        # refuses records of another patient, so a read of Patient/X is Patient X, a search for patient=X
        # gives records whose subject is Patient/X.
        if "/" in rest:  # a read
            found = next((r for r in resources.values() if r["resourceType"] == resource_type), None)
            if found and resource_type == "Patient":
                found = {**found, "id": rest.split("/", 1)[1]}
            return JSONResponse(found) if found else JSONResponse({"resourceType": "OperationOutcome"}, status_code=404)
        asked = request.query_params.get("patient") or request.query_params.get("subject")
        records = {k: _as_patient(r, asked.rsplit("/", 1)[-1]) for k, r in resources.items()} if asked else resources
        page = int(request.query_params.get("page", "1"))
        matches = [r for r in records.values() if r["resourceType"] == resource_type]
        bundle = {"resourceType": "Bundle", "type": "searchset"}
        if mode == "pages":  # three pages, one resource each (the same resource, different ids)
            bundle["entry"] = [{"resource": {**m, "id": f"{m['id']}-p{page}"}} for m in matches]
            if page < 3:
                bundle["link"] = [{"relation": "next", "url": f"{request.base_url}{mode}/{rest}?page={page + 1}"}]
            return JSONResponse(bundle)
        if matches:
            bundle["entry"] = [{"resource": m} for m in matches]
        if mode == "loop":
            bundle["link"] = [{"relation": "next", "url": str(request.url)}]
        elif mode == "foreign":
            bundle["link"] = [{"relation": "next", "url": "http://other-host.invalid/fhir/next"}]
        elif mode == "endless":
            bundle["link"] = [{"relation": "next", "url": f"{request.base_url}{mode}/{rest}?page={page + 1}"}]
        return JSONResponse(bundle)

    return Starlette(routes=[Route("/{mode}/{rest:path}", handle)])


@dataclass
class FhirStub:
    url: str
    state: StubState

    def base(self, mode: str) -> str:
        return f"{self.url}/{mode}"


@pytest.fixture(scope="session")
def fhir_stub() -> FhirStub:
    state = StubState()
    server = ThreadServer(_stub_app(state)).start()
    yield FhirStub(server.url, state)
    server.server.force_exit = True
    server.stop()


# --- PostgreSQL from the Debian packages -------------------------------------------------------

def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and (Path(found).parent / "initdb").exists() else None


@dataclass
class PostgresCluster:
    """The throwaway cluster: its URL, and stop/start for fault tests (same port and data after a start)."""

    url: str
    bindir: Path
    datadir: Path
    log_file: Path
    options: str
    run_as: list[str]

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.run_as, *args], capture_output=True, text=True, timeout=120)

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop (fast: disconnects clients, like a service restart; immediate: like a crash)."""
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {done.stderr.strip()}")

    def start(self) -> None:
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.log_file), "-w",
                         "-t", "60", "-o", self.options, "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}")

    def is_running(self) -> bool:
        return self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status").returncode == 0


@pytest.fixture(scope="session")
def postgres_cluster() -> PostgresCluster:
    """A throwaway PostgreSQL cluster on a free loopback port; skipped (with the reason) only when
    the server binaries are absent or the cluster cannot start."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="cds-tpi-pg-"))
    datadir, sockdir = root / "data", root / "sock"
    sockdir.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as an unprivileged user
        user = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(root, user)
        shutil.chown(sockdir, user)
        run_as = ["runuser", "-u", user, "--"] if shutil.which("runuser") else ["su", user, "-s", "/bin/sh", "-c"]
        if run_as[0] == "su":
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    port = free_port()
    log_file = root / "server.log"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*run_as, *args], capture_output=True, text=True, timeout=120)

    init = run(str(bindir / "initdb"), "-D", str(datadir), "-U", "cds", "--auth=trust", "-E", "UTF8", "--no-sync")
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[-500:]}")
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockdir} -c fsync=off"
    cluster = PostgresCluster(f"postgresql://cds@127.0.0.1:{port}/cdstpi", bindir, datadir, log_file, options, run_as)
    try:
        cluster.start()
    except RuntimeError as e:
        detail = log_file.read_text()[-500:] if log_file.exists() else str(e)
        pytest.skip(f"PostgreSQL did not start: {detail.strip()}")
    try:
        created = run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "cds", "cdstpi")
        if created.returncode != 0:
            pytest.skip(f"createdb failed: {created.stderr.strip()}")
        yield cluster
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster) -> str:
    """The URL of the throwaway cluster's `cdstpi` database."""
    return postgres_cluster.url


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# --- JWT helpers ---------------------------------------------------------------------------------

ISSUER = "https://ehr.example.org"


@dataclass
class Signer:
    """An issuer's signing key; its public JWKS is written to `jwks_file`."""

    key: Any
    kid: str
    alg: str
    jwks_file: Path

    def token(self, aud: str, *, iss: str = ISSUER, alg: str | None = None, key: Any = None, lifetime: int = 300,
              iat_offset: int = 0, jti: str | None = None, header: dict | None = None, drop: tuple[str, ...] = (),
              **claims: Any) -> str:
        now = int(time.time()) + iat_offset
        payload = {"iss": iss, "aud": aud, "iat": now, "exp": now + lifetime,
                   "jti": uuid.uuid4().hex if jti is None else jti, **claims}
        for name in drop:
            del payload[name]
        head = {"alg": alg or self.alg, "kid": self.kid, "typ": "JWT", **(header or {})}
        return jwt.encode(head, payload, key or self.key, algorithms=[head["alg"]])


@pytest.fixture(scope="session")
def signer(tmp_path_factory) -> Signer:
    key = jwk.ECKey.generate_key("P-384", parameters={"kid": "ehr-key-1"}, private=True)
    jwks_file = tmp_path_factory.mktemp("jwks") / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [{**key.as_dict(private=False), "use": "sig", "alg": "ES384"}]}))
    return Signer(key, "ehr-key-1", "ES384", jwks_file)


def issuer_for(signer: Signer) -> tuple[Issuer, ...]:
    return (Issuer(iss=ISSUER, jwks_file=str(signer.jwks_file)),)
