"""Load driver for a running cds-tpi service (not a test).

Bounded concurrent clients on loopback post CDS Hooks requests for a fixed number of requests,
then print p50/p99 latency, throughput and the error count. By default every request is a typical
order-sign request (full prefetch: patient, active warfarin, a condition, an allergy, an INR; a
TPI draft with lidocaine). `--mix DIR` cycles through every sample of DIR instead (CDS Hooks
requests as they are; FHIR Bundles wrapped as order-sign requests, or patient-view when they hold
no draft order). `--check` first sends each distinct request once, one by one, and then requires
every concurrent answer to give exactly the same result (HTTP status, and rule id + indicator of
every card); `--check-against FILE` takes those results from FILE (written by `--write-expected`).

    cds-tpi serve --workers 2 &
    python benchmarks/load.py --url http://127.0.0.1:8080 --concurrency 16 --requests 4000
    python benchmarks/load.py --concurrency 16 --requests 20000 --mix fhir_samples --check
    python benchmarks/load.py --serve 2 --requests 20000 --mix fhir_samples --check   # starts its own server

`--serve N` starts `cds-tpi serve --workers N` on a free loopback port with a throwaway SQLite
database, waits for every worker, runs, prints the workers' resident memory before and after, and
stops it.

Target on 2 cores (issue 8): p99 <= 50 ms at 16 concurrent clients on 2 workers (`--serve 2`), 0 errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DATA = Path(__file__).resolve().parent.parent / "tests" / "service" / "data"
SERVICE_FOR_HOOK = {"order-select": "tpi-order-select", "order-sign": "tpi-order-sign",
                    "appointment-book": "tpi-appointment-book", "patient-view": "tpi-patient-view"}


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


# prefetch key of each resource type when a plain Bundle is wrapped as a CDS Hooks request
_PREFETCH_KEY = {"MedicationRequest": "medicationRequests", "MedicationStatement": "medicationStatements",
                 "Condition": "conditions", "AllergyIntolerance": "allergies", "Procedure": "procedures",
                 "Observation": "observations"}


def wrap_bundle(bundle: dict) -> dict:
    """A FHIR Bundle as the CDS Hooks request an EHR would send: resources with status `draft` are
    `context.draftOrders` (order-sign), the others go to the prefetch key of their type (a searchset
    each, entries kept with their fullUrl so urn:uuid references still resolve; other types under
    `other`); absent keys are null ("no such data"). No draft: a patient-view request."""
    drafts, keyed, other, patient = [], {}, [], None
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        rtype = resource.get("resourceType")
        if resource.get("status") == "draft":
            drafts.append(entry)
        elif rtype == "Patient" and patient is None:
            patient = resource
        elif rtype in _PREFETCH_KEY:
            keyed.setdefault(_PREFETCH_KEY[rtype], []).append(entry)
        else:
            other.append(entry)
    prefetch: dict = {"patient": patient}
    for key in _PREFETCH_KEY.values():
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": keyed[key]} if key in keyed else None
    if other:
        prefetch["other"] = {"resourceType": "Bundle", "type": "collection", "entry": other}
    patient_id = (patient or {}).get("id") or "unknown-patient"
    context: dict = {"userId": "Practitioner/load-test", "patientId": patient_id}
    hook = "patient-view"
    if drafts:
        hook = "order-sign"
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": drafts}
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": prefetch}


def sample_requests(directory: Path) -> list[tuple[str, str, dict]]:
    """(name, service id, request) for every JSON sample in `directory`, sorted by name: CDS Hooks
    requests as they are, Bundles wrapped (`wrap_bundle`). Other inputs (NDJSON, single resources)
    are skipped."""
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("hook") in SERVICE_FOR_HOOK:
            request = data
        elif isinstance(data, dict) and data.get("resourceType") == "Bundle":
            request = wrap_bundle(data)
        else:
            continue
        out.append((path.stem, SERVICE_FOR_HOOK[request["hook"]], request))
    return out


def result_of(status: int, payload: bytes) -> list:
    """What must not change between one-by-one and concurrent calls: the HTTP status and, per card,
    rule id (source.topic.code) and indicator, in the order sent."""
    if status != 200:
        return [status]
    cards = json.loads(payload)["cards"]
    return [status, [[(c.get("source", {}).get("topic") or {}).get("code"), c.get("indicator")] for c in cards]]


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


@dataclass
class Outcome:
    """One measured request: when it started/ended (perf_counter s), which sample, what went wrong ('' = ok)."""

    started: float
    ended: float
    name: str
    error: str


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    wall: float = 0.0
    warmup: int = 0
    concurrency: int = 0

    @property
    def errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            if o.error:
                counts[o.error] = counts.get(o.error, 0) + 1
        return counts

    def summary(self) -> str:
        latencies = sorted((o.ended - o.started) * 1000 for o in self.outcomes)
        q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
        errors = self.errors
        return "\n".join([
            f"requests {len(latencies)} (+{self.warmup} warm-up) concurrency {self.concurrency}",
            f"p50 {q[49]:.1f} ms  p90 {q[89]:.1f} ms  p99 {q[98]:.1f} ms  max {latencies[-1]:.1f} ms",
            f"throughput {(len(latencies) + self.warmup) / self.wall:.0f} req/s",
            f"errors {sum(errors.values())}" + (f" {errors}" if errors else ""),
        ])


def _check_loopback(url: str):
    parsed = urlsplit(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the load driver only targets loopback addresses")
    return parsed


async def one_by_one(url: str, items: list[tuple[str, str, dict]], token: str | None = None,
                     timeout: float = 30.0) -> dict[str, list]:
    """Each request once, sequentially, on one connection: {name: result_of(...)}."""
    parsed = _check_loopback(url)
    conn = Connection(parsed.hostname, parsed.port or 80)
    headers = _headers(token)
    results = {}
    try:
        for name, service, body in items:
            payload = json.dumps({**body, "hookInstance": str(uuid.uuid4())}).encode()
            status, data = await asyncio.wait_for(conn.post(_path(parsed, service), payload, headers), timeout)
            results[name] = json.loads(json.dumps(result_of(status, data)))  # tuples -> lists, as in a file
    finally:
        conn.close()
    return results


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _path(parsed, service: str) -> str:
    return parsed.path.rstrip("/") + f"/cds-services/{service}"


async def run(url: str, concurrency: int, total: int, warmup: int, items: list[tuple[str, str, dict]] | dict,
              token: str | None = None, timeout: float = 30.0, expected: dict[str, list] | None = None,
              stop=None, quiet: bool = False, report: Report | None = None,
              validate: Callable[[str, int, bytes], None] | None = None) -> Report:
    """`total` measured requests (after `warmup`) from `concurrency` clients; request i is
    items[i % len(items)]. With `expected`, an answer whose result differs is an error
    ("mismatch"); `validate(name, status, body)` may raise AssertionError ("invalid"). `stop` (an
    object with `is_set()`, e.g. a threading.Event) ends the run early; `report` is filled as the
    run goes (for a caller watching from another thread)."""
    if isinstance(items, dict):  # a single request body (the old interface)
        items = [("request", "tpi-order-sign", items)]
    parsed = _check_loopback(url)
    headers = _headers(token)
    encoded = [(name, _path(parsed, service), body) for name, service, body in items]
    report = report if report is not None else Report()
    report.warmup, report.concurrency = warmup, concurrency
    issued = 0

    async def client() -> None:
        nonlocal issued
        conn = Connection(parsed.hostname, parsed.port or 80)
        try:
            while issued < total + warmup and not (stop and stop.is_set()):
                i = issued  # single-threaded event loop: no lock needed between awaits
                issued += 1
                name, path, body = encoded[i % len(encoded)]
                payload = json.dumps({**body, "hookInstance": str(uuid.uuid4())}).encode()
                started = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(conn.post(path, payload, headers), timeout)
                    if status != 200 and (expected is None or name not in expected):
                        kind = f"HTTP {status}"
                    elif expected is not None and name in expected:
                        kind = "" if json.loads(json.dumps(result_of(status, data))) == expected[name] else "mismatch"
                    else:
                        kind = "" if "cards" in json.loads(data) else "no cards"
                    if not kind and validate is not None:
                        try:
                            validate(name, status, data)
                        except AssertionError:
                            kind = "invalid"
                except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                    kind = type(e).__name__
                    conn.close()
                if i >= warmup:
                    report.outcomes.append(Outcome(started, time.perf_counter(), name, kind))
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    report.wall = time.perf_counter() - started
    if not quiet:
        print(report.summary())
    return report


class Served:
    """`cds-tpi serve --workers N` on a free loopback port, in a temporary directory."""

    def __init__(self, workers: int):
        import socket
        import subprocess
        import tempfile

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.TemporaryDirectory(prefix="cds-tpi-load-")
        self.log = Path(self.dir.name) / "serve.log"
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from cds_tpi.cli.serve import serve; serve()", "--port", str(self.port),
             "--workers", str(workers), "--log-level", "warning",
             "--database-url", f"sqlite:///{self.dir.name}/load.sqlite3"],
            cwd=self.dir.name, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while self._ready() < workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"cds-tpi serve did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def _ready(self) -> int:
        """Workers whose engine is loaded: each logs the no-issuers warning at the end of its start-up."""
        if not self._health():
            return 0
        return self.log.read_text(errors="replace").count("NO JWT ISSUERS CONFIGURED")

    def _health(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def worker_pids(self) -> list[int]:
        try:
            import psutil
        except ImportError:
            return []
        pids = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except psutil.Error:
                pass
        return pids

    def rss_mb(self) -> list[float]:
        import psutil

        return [round(psutil.Process(pid).memory_info().rss / 2**20, 1) for pid in self.worker_pids()]

    def cpu_seconds(self) -> list[float]:
        """CPU time (user + system) each worker has used: how the kernel spread the connections."""
        import psutil

        return [round(sum(psutil.Process(pid).cpu_times()[:2]), 1) for pid in self.worker_pids()]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.kill()
        self._log.close()
        self.dir.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="service base URL (loopback)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--request", type=Path, help="a CDS Hooks order-sign request JSON (default: built-in sample)")
    parser.add_argument("--mix", type=Path, metavar="DIR",
                        help="cycle through every sample in DIR (e.g. fhir_samples): requests as they are, bundles wrapped")
    parser.add_argument("--check", action="store_true",
                        help="send each distinct request once, one by one, first; every concurrent answer must match")
    parser.add_argument("--check-against", type=Path, metavar="FILE", help="expected results (JSON, see --write-expected)")
    parser.add_argument("--write-expected", type=Path, metavar="FILE", help="write the one-by-one results to FILE")
    parser.add_argument("--token", help="bearer JWT, when the service has issuers configured")
    parser.add_argument("--serve", type=int, metavar="N", help="start `cds-tpi serve --workers N` for the run")
    args = parser.parse_args()
    served = Served(args.serve) if args.serve else None
    if served:
        args.url = served.url
        time.sleep(1.0)
        print(f"cds-tpi serve --workers {args.serve} on {served.url}; worker RSS MB at start {served.rss_mb()}")
    try:
        code = _main(args)
        if served:
            print(f"worker RSS MB at end {served.rss_mb()}; worker CPU s {served.cpu_seconds()}")
    finally:
        if served:
            served.stop()
    sys.exit(code)


def _main(args) -> int:
    if args.mix:
        items = sample_requests(args.mix)
    else:
        body = json.loads(args.request.read_text()) if args.request else typical_request()
        items = [(args.request.stem if args.request else "typical", SERVICE_FOR_HOOK[body["hook"]], body)]
    expected = None
    if args.check_against:
        expected = json.loads(args.check_against.read_text())
    elif args.check or args.write_expected:
        expected = asyncio.run(one_by_one(args.url, items, args.token))
        if args.write_expected:
            args.write_expected.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
        print(f"one by one: {len(expected)} distinct requests, "
              f"{sum(1 for r in expected.values() if r[0] == 200)} answered 200")
    report = asyncio.run(run(args.url, args.concurrency, args.requests, args.warmup, items, args.token,
                             expected=expected if (args.check or args.check_against) else None))
    return 1 if report.errors else 0


if __name__ == "__main__":
    main()
