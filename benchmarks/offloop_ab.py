"""What running the evaluation off the event loop costs (issue 10 item 1), measured A/B.

Two single-worker services run the same code on loopback; in "inline" the engine is called on the
event loop as before issue 10 (the EvaluationRunner replaced by a direct call), in "thread" it runs
on the evaluation thread with its deadline (the shipped code). `benchmarks/load.py` drives each in
turn, interleaved (A B A B ...) so that noise from other processes on the machine hits both alike,
and the median p50/p99 of each side is printed.

    python benchmarks/offloop_ab.py --rounds 3 --requests 3000 --concurrency 16
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _service import free_port  # noqa: E402 (benchmarks/ is on sys.path)

HERE = Path(__file__).resolve().parent

SERVER = r"""
import sys, uvicorn
from cds_tpi.service import app as app_module
from cds_tpi.service.config import ServiceConfig

class InlineRunner:
    # the pre-issue-10 path: the engine on the event loop, no deadline
    timeouts = 0
    overrunning_seconds = 0.0
    def __init__(self, timeout): pass
    async def run(self, fn, *args, **kwargs): return fn(*args, **kwargs)
    def close(self): pass

mode, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "inline":
    app_module.EvaluationRunner = InlineRunner
app = app_module.create_app(ServiceConfig(port=port, database_url=db))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def start(mode: str, tmp: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, mode, str(port), f"sqlite:///{tmp}/{mode}.sqlite3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{mode} server did not start")


def run_load(url: str, requests: int, concurrency: int) -> tuple[float, float, int]:
    out = subprocess.run([sys.executable, str(HERE / "load.py"), "--url", url, "--requests", str(requests),
                          "--concurrency", str(concurrency)], capture_output=True, text=True, timeout=600).stdout
    p50 = float(re.search(r"p50 ([\d.]+) ms", out).group(1))
    p99 = float(re.search(r"p99 ([\d.]+) ms", out).group(1))
    errors = int(re.search(r"errors (\d+)", out).group(1))
    return p50, p99, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, int]]] = {"inline": [], "thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {mode: start(mode, tmp) for mode in results}
        try:
            for i in range(args.rounds):
                for mode in (("inline", "thread") if i % 2 == 0 else ("thread", "inline")):
                    result = run_load(servers[mode][1], args.requests, args.concurrency)
                    results[mode].append(result)
                    print(f"round {i + 1} {mode:6}: p50 {result[0]:.1f} ms  p99 {result[1]:.1f} ms  errors {result[2]}",
                          flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=10)
    med = {m: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for m, rs in results.items()}
    for mode, (p50, p99) in med.items():
        print(f"median {mode:6}: p50 {p50:.1f} ms  p99 {p99:.1f} ms  ({os.cpu_count()} cores, {args.concurrency} clients)")
    print(f"p99 change thread vs inline: {100.0 * (med['thread'][1] / med['inline'][1] - 1):+.1f} %")


if __name__ == "__main__":
    main()
