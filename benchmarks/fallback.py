"""FHIR fallback timings against the test FHIR server (medplum, tests/fhirserver) under load (issue 9
item 12): how long a call takes when all seven prefetch keys are fetched from the FHIR server, with
`--concurrency` callers at once, and how many calls run out of the default budget (412).

    npm ci --prefix tests/fhirserver
    python benchmarks/fallback.py --requests 400 --concurrency 16

It starts the FHIR server and a one-worker service (default config: fhir_total_timeout etc.) on
loopback, sends order-sign calls without prefetch, and prints p50/p90/p99/max of the whole call,
the count of 200 and 412 answers, and the FHIR server's own latency for one key at the same load
(a direct Observation search, same number of clients).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from _service import SERVER, free_port, wait  # noqa: E402 (benchmarks/ is on sys.path)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "service" / "data"

def request(fhir: str, token: str) -> bytes:
    return json.dumps({
        "hook": "order-sign", "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": "tpi-pat-1",
                    "draftOrders": json.loads((DATA / "draft-orders.json").read_text())},
        "fhirServer": fhir,
        "fhirAuthorization": {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                              "scope": "patient/*.read", "subject": "cds-tpi"},
    }).encode()


async def drive(url: str, bodies: list[bytes], concurrency: int, headers: dict | None = None,
                method: str = "POST") -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(bodies)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                if method == "POST":
                    r = await client.post(url, content=body, headers={"Content-Type": "application/json"})
                else:
                    r = await client.get(url, headers=headers)
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(latencies), statuses


def summary(name: str, latencies: list[float], statuses: dict[int, int]) -> None:
    q = statistics.quantiles(latencies, n=100)
    print(f"{name}: p50 {q[49]:.0f} ms  p90 {q[89]:.0f} ms  p99 {q[98]:.0f} ms  max {latencies[-1]:.0f} ms  "
          f"statuses {dict(sorted(statuses.items()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    token = "bench-" + uuid.uuid4().hex
    fhir_port, service_port = free_port(), free_port()
    fhir = subprocess.Popen(["node", "server.mjs", str(fhir_port), str(DATA / "patient-bundle.json")],
                            cwd=REPO / "tests" / "fhirserver", env={**os.environ, "FHIR_TOKEN": token},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        service = subprocess.Popen([sys.executable, "-c", SERVER, str(service_port), f"sqlite:///{tmp}/b.sqlite3"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            fhir_url, service_url = f"http://127.0.0.1:{fhir_port}", f"http://127.0.0.1:{service_port}"
            wait(fhir_url + "/metadata", fhir)
            wait(service_url + "/health", service)
            call = f"{service_url}/cds-services/tpi-order-sign"
            asyncio.run(drive(call, [request(fhir_url, token)] * 20, 4))  # warm-up
            latencies, statuses = asyncio.run(drive(call, [request(fhir_url, token)] * args.requests, args.concurrency))
            summary(f"service call, all 7 keys from the FHIR server, {args.concurrency} clients", latencies, statuses)
            search = f"{fhir_url}/Observation?patient=tpi-pat-1&_count=100"
            latencies, statuses = asyncio.run(drive(search, [b""] * args.requests, args.concurrency,
                                                    headers={"Authorization": f"Bearer {token}"}, method="GET"))
            summary(f"FHIR server alone, one Observation search, {args.concurrency} clients", latencies, statuses)
        finally:
            service.terminate()
            fhir.terminate()
            service.wait(timeout=10)
            fhir.wait(timeout=10)


if __name__ == "__main__":
    main()
