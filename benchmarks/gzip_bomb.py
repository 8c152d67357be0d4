"""Memory of the service when a FHIR server answers every prefetch key with a gzip bomb (issue 10
item 5). A loopback FHIR stub sends, for each of the seven keys, `--megabytes` MB of JSON
gzip-compressed (about 1/1000 of that on the wire) although the service asked for identity; a
one-worker service (default config, its own process) fetches all seven keys for each of `--calls`
calls. Prints the answers and the service's peak resident memory (VmHWM) before and after.

    python benchmarks/gzip_bomb.py --megabytes 200 --calls 4
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from _service import SERVER, free_port, wait  # noqa: E402 (benchmarks/ is on sys.path)

DATA = Path(__file__).resolve().parent.parent / "tests" / "service" / "data"

def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--calls", type=int, default=4)
    args = parser.parse_args()
    bomb = gzip.compress(b'{"resourceType":"Bundle","type":"searchset","entry":[]' + b" " * (args.megabytes << 20) + b"}", 9)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            try:
                self.wfile.write(bomb)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *a: object) -> None:
            pass

    stub = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), f"sqlite:///{tmp}/b.sqlite3"])
        try:
            url = f"http://127.0.0.1:{port}"
            wait(url + "/health", proc)
            before = peak_rss_mb(proc.pid)
            request = {
                "hook": "order-sign", "hookInstance": str(uuid.uuid4()),
                "context": {"userId": "Practitioner/dr-1", "patientId": "tpi-pat-1",
                            "draftOrders": json.loads((DATA / "draft-orders.json").read_text())},
                "fhirServer": f"http://127.0.0.1:{stub.server_address[1]}/fhir",
                "fhirAuthorization": {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                      "scope": "patient/*.read", "subject": "cds-tpi"},
            }
            print(f"bomb: {len(bomb)} bytes on the wire, {args.megabytes} MB decoded, per key (7 keys)")
            for _ in range(args.calls):
                t0 = time.monotonic()
                r = httpx.post(url + "/cds-services/tpi-order-sign", json=request, timeout=60)
                print(f"call: HTTP {r.status_code} in {time.monotonic() - t0:.2f} s: "
                      f"{r.json()['issue'][0]['diagnostics'][:110] if r.status_code != 200 else 'cards'}")
            print(f"service peak RSS: {before:.0f} MB before, {peak_rss_mb(proc.pid):.0f} MB after")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            stub.shutdown()


if __name__ == "__main__":
    main()
