"""Load driver for a running cds-tpi service (not a test).

Bounded concurrent clients on loopback post a typical order-sign request (full prefetch: patient,
active warfarin, a condition, an allergy, an INR; a TPI draft with lidocaine) for a fixed number
of requests, then print p50/p99 latency, throughput and the error count.

    cds-tpi serve --workers 2 &
    python benchmarks/load.py --url http://127.0.0.1:8080 --concurrency 16 --requests 4000

Target on 2 cores: p99 <= 100 ms at 16 concurrent clients, 0 errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

from urllib.parse import urlsplit

DATA = Path(__file__).resolve().parent.parent / "tests" / "service" / "data"


def typical_request() -> dict:
    """An order-sign request with complete prefetch (no FHIR fallback)."""
    resources = {e["resource"]["id"]: e["resource"] for e in json.loads((DATA / "patient-bundle.json").read_text())["entry"]}

    def searchset(*ids: str) -> dict:
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": resources[i]} for i in ids]}

    return {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": "tpi-pat-1",
                    "draftOrders": json.loads((DATA / "draft-orders.json").read_text())},
        "prefetch": {"patient": resources["tpi-pat-1"], "medicationRequests": searchset("warfarin-1"),
                     "medicationStatements": None, "conditions": searchset("cond-1"),
                     "allergies": searchset("allergy-1"), "procedures": None, "observations": searchset("inr-1")},
    }


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams. httpx costs a few ms of CPU per
    request, and the load driver shares the server's two cores: a heavy client measures itself."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed by server")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def run(url: str, concurrency: int, total: int, warmup: int, body: dict, token: str | None,
              timeout: float = 30.0) -> int:
    parsed = urlsplit(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the load driver only targets loopback addresses")
    path = parsed.path.rstrip("/") + "/cds-services/tpi-order-sign"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    latencies: list[float] = []
    errors: dict[str, int] = {}
    remaining = total + warmup

    async def client() -> None:
        nonlocal remaining
        conn = Connection(parsed.hostname, parsed.port or 80)
        try:
            while remaining > 0:  # single-threaded event loop: no lock needed between awaits
                remaining -= 1
                measured = remaining < total
                payload = json.dumps({**body, "hookInstance": str(uuid.uuid4())}).encode()
                started = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(conn.post(path, payload, headers), timeout)
                    ok = status == 200 and "cards" in json.loads(data)
                    kind = "" if ok else f"HTTP {status}"
                except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                    kind = type(e).__name__
                    conn.close()
                elapsed = (time.perf_counter() - started) * 1000
                if measured:
                    latencies.append(elapsed)
                    if kind:
                        errors[kind] = errors.get(kind, 0) + 1
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    n_err = sum(errors.values())
    print(f"requests {len(latencies)} (+{warmup} warm-up) concurrency {concurrency}")
    print(f"p50 {q[49]:.1f} ms  p90 {q[89]:.1f} ms  p99 {q[98]:.1f} ms  max {latencies[-1]:.1f} ms")
    print(f"throughput {(total + warmup) / wall:.0f} req/s")
    print(f"errors {n_err}" + (f" {errors}" if errors else ""))
    return 1 if n_err else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="service base URL (loopback)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--request", type=Path, help="a CDS Hooks order-sign request JSON (default: built-in sample)")
    parser.add_argument("--token", help="bearer JWT, when the service has issuers configured")
    args = parser.parse_args()
    body = json.loads(args.request.read_text()) if args.request else typical_request()
    sys.exit(asyncio.run(run(args.url, args.concurrency, args.requests, args.warmup, body, args.token)))


if __name__ == "__main__":
    main()
