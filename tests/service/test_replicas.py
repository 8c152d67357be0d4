"""Issue 9 item 17: the service is stateless apart from its database. Two `cds-tpi serve` processes
on different loopback ports share one PostgreSQL database, as replicas behind a load balancer
would: a JWT id used on one is refused on the other, feedback sent to one is counted by
`cds-tpi stats`, a card issued by one takes feedback on the other, and a load run across both has
no errors."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from cds_tpi.service.storage import normalise_url
from conftest import ISSUER, free_port, hook_request, stop_process, wait_http

pytestmark = pytest.mark.timeout(300)

LOAD_REQUESTS = 300
LOAD_CONCURRENCY = 8


@pytest.fixture(scope="module")
def shared_database(postgres_cluster) -> str:
    name = "replicas_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(normalise_url(postgres_cluster.url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return postgres_cluster.url.rsplit("/", 1)[0] + "/" + name


class Replica:
    def __init__(self, tmp_path, name: str, database_url: str, jwks_file: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp_path / f"{name}.yaml"
        config.write_text(json.dumps({  # JSON is YAML
            "issuers": [{"iss": ISSUER, "jwks_file": jwks_file}], "public_base_url": self.url,
            "database_url": database_url}))
        self.log = tmp_path / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from cds_tpi.cli import main; main()", "serve", "--port", str(self.port),
             "--config", str(config)], stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, shared_database, signer):
    tmp_path = tmp_path_factory.mktemp("replicas")
    started = [Replica(tmp_path, name, shared_database, str(signer.jwks_file)) for name in ("a", "b")]
    try:
        for r in started:
            try:
                wait_http(r.url + "/health", timeout=90, proc=r.proc)
            except (RuntimeError, TimeoutError) as e:  # a replica that cannot start is a failure
                raise AssertionError(f"{e}\n{r.log.read_text()}") from e
        yield started
    finally:
        for r in started:
            r.stop()


def _auth(signer, url: str, **kwargs) -> dict:
    return {"Authorization": f"Bearer {signer.token(url, **kwargs)}"}


def test_a_jti_used_on_one_replica_is_refused_on_the_other(replicas, signer):
    a, b = replicas
    jti = uuid.uuid4().hex
    first = httpx.get(a.url + "/cds-services", headers=_auth(signer, a.url + "/cds-services", jti=jti), timeout=30)
    assert first.status_code == 200, first.text
    replay = httpx.get(b.url + "/cds-services", headers=_auth(signer, b.url + "/cds-services", jti=jti), timeout=30)
    assert replay.status_code == 401  # one generic text to the caller; the replica's log says why
    deadline = time.monotonic() + 5
    while "jti was already used (replay)" not in b.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "jti was already used (replay)" in b.log.read_text()


def test_feedback_on_one_replica_for_a_card_of_the_other_is_in_stats(replicas, signer, shared_database):
    a, b = replicas
    call = a.url + "/cds-services/tpi-order-sign"
    cards = httpx.post(call, json=hook_request("order-sign"), headers=_auth(signer, call), timeout=30).json()["cards"]
    card = next(c for c in cards if c["source"]["topic"]["code"] == "anticoagulant")
    reason = card["overrideReasons"][0]
    feedback = b.url + "/cds-services/tpi-order-sign/feedback"
    body = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T10:00:00Z",
                          "overrideReason": {"reason": reason}}]}
    # sent at once: the card may still be in replica a's audit queue; replica b waits for it
    r = httpx.post(feedback, json=body, headers=_auth(signer, feedback), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 1
    unknown = {"feedback": [{**body["feedback"][0], "card": str(uuid.uuid4())}]}
    assert httpx.post(feedback, json=unknown, headers=_auth(signer, feedback), timeout=30).status_code == 404
    stats = subprocess.run([sys.executable, "-c", "from cds_tpi.cli import main; main()", "stats",
                            "--database-url", shared_database, "--format", "json"],
                           capture_output=True, text=True, timeout=60)
    assert stats.returncode == 0, stats.stderr
    rows = {row["rule"]: row for row in json.loads(stats.stdout)}
    assert rows["anticoagulant"]["overridden"] >= 1
    assert {"reason": reason["display"], "count": 1} in rows["anticoagulant"]["topOverrideReasons"]


def test_a_load_run_across_both_replicas_has_no_errors(replicas, signer):
    """Round robin over both replicas, each call with its own JWT (a jti is single-use)."""
    latencies: list[float] = []
    errors: list[str] = []

    async def run() -> float:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(LOAD_REQUESTS):
            queue.put_nowait(i)

        async def client(http: httpx.AsyncClient) -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                replica = replicas[i % 2]
                url = replica.url + "/cds-services/tpi-order-sign"
                started = time.perf_counter()
                try:
                    r = await http.post(url, json=hook_request("order-sign"), headers=_auth(signer, url))
                    if r.status_code != 200 or not r.json()["cards"]:
                        errors.append(f"{replica.url}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(f"{replica.url}: {type(e).__name__}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=30) as http:
            await asyncio.gather(*(client(http) for _ in range(LOAD_CONCURRENCY)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"\nreplicas load: {LOAD_REQUESTS} calls, concurrency {LOAD_CONCURRENCY}, 2 replicas x 1 worker, "
          f"PostgreSQL: {LOAD_REQUESTS / elapsed:.0f}/s, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"errors {len(errors)}")
    assert errors == []
    for r in replicas:
        assert r.proc.poll() is None, r.log.read_text()
