"""Soak (a script, not a test): N in-process evaluations of the fhir_samples inputs, in rotation.

Prints resident memory after 1,000 evaluations and after N (default 100,000) and the growth; checks
every answer against the first evaluation of the same input (rule ids and indicators); and shows
that durable-rules keeps no state: every evaluation's session is deleted (`get_state` of recent
session ids fails with "SID not found"), and the host still takes more than 1,024 new sessions
(durable's state cache size, where a leak of live sessions would make it fail) after the run.

    python benchmarks/soak.py [--evaluations 100000] [--max-growth-mb 10]

Exit status 0 when memory growth is under --max-growth-mb, every answer matched and no session
state was left; 1 otherwise. The quick CI version is tests/test_soak.py.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from cds_tpi.engine import RULESET
from cds_tpi.fhir.read import read_bytes
from cds_tpi.pipeline import Evaluator

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "fhir_samples"
DURABLE_STATE_CACHE = 1024  # durable-rules' default state cache: live sessions beyond it break the engine


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> str:
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        mem = f"{kb / 2**20:.1f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return (f"{platform.machine()}, {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {mem}, "
            f"Python {platform.python_version()}, {platform.platform()}")


def load_inputs(directory: Path = SAMPLES) -> list[tuple[str, bytes, datetime]]:
    """Every sample input (bytes) with the date its sidecar evaluates it at."""
    out = []
    for path in sorted(directory.glob("*")):
        if path.suffix not in (".json", ".ndjson"):
            continue
        side = yaml.safe_load(path.with_name(path.stem + ".expected.yaml").read_text())
        d = side["now"]
        out.append((path.name, path.read_bytes(), datetime(d.year, d.month, d.day, tzinfo=timezone.utc)))
    return out


def answer(evaluator: Evaluator, data: bytes, name: str, now: datetime) -> tuple:
    result = evaluator.evaluate_document(read_bytes(data, name), now=now)
    return tuple(sorted((c["source"]["topic"]["code"], c["indicator"]) for c in result.cards))


def live_sessions(evaluator: Evaluator, sids) -> list[str]:
    """Session ids whose durable state still exists (get_state succeeds); [] when all were deleted."""
    live = []
    for sid in sids:
        try:
            evaluator.engine._host.get_state(RULESET, str(sid))
        except Exception:  # noqa: BLE001 - durable: "Could not get state, error code: 309" (SID not found)
            continue
        live.append(str(sid))
    return live


def last_sid(evaluator: Evaluator) -> int:
    # Engine._sids is an itertools.count; its repr holds the next value.
    return int(repr(evaluator.engine._sids)[len("count("):-1]) - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evaluations", type=int, default=100_000)
    ap.add_argument("--max-growth-mb", type=float, default=10.0)
    args = ap.parse_args()
    n = max(args.evaluations, 1_000)

    inputs = load_inputs()
    evaluator = Evaluator.load()
    expected = {name: answer(evaluator, data, name, now) for name, data, now in inputs}
    print(f"machine: {machine()}")
    print(f"inputs: {len(inputs)} fhir_samples, in rotation; {n:,} evaluations")

    mismatches = 0
    started = time.perf_counter()
    rss_1000 = None
    checkpoints = []
    for i in range(n):
        name, data, now = inputs[i % len(inputs)]
        if answer(evaluator, data, name, now) != expected[name]:
            mismatches += 1
            if mismatches <= 5:
                print(f"  MISMATCH at evaluation {i + 1}: {name}", file=sys.stderr)
        done = i + 1
        if done == 1_000:
            gc.collect()
            rss_1000 = rss_mib()
        if done % max(n // 10, 1) == 0:
            gc.collect()
            checkpoints.append((done, rss_mib()))
            print(f"  {done:>9,} evaluations  RSS {checkpoints[-1][1]:7.1f} MiB  "
                  f"{done / (time.perf_counter() - started):7.0f} evaluations/s", flush=True)
    seconds = time.perf_counter() - started
    gc.collect()
    rss_n = rss_mib()
    growth = rss_n - rss_1000

    sessions = last_sid(evaluator)
    recent = range(max(1, sessions - 999), sessions + 1)
    live = live_sessions(evaluator, recent)

    # More than the state cache's worth of new sessions after the run: each still answers the same.
    extra_ok = 0
    for i in range(DURABLE_STATE_CACHE + 100):
        name, data, now = inputs[i % len(inputs)]
        extra_ok += answer(evaluator, data, name, now) == expected[name]
    extra_live = live_sessions(evaluator, range(sessions + 1, last_sid(evaluator) + 1))

    print(f"time: {seconds:.1f} s, {n / seconds:.0f} evaluations/s ({seconds / n * 1e3:.2f} ms each)")
    print(f"resident memory after 1,000 evaluations: {rss_1000:.1f} MiB; after {n:,}: {rss_n:.1f} MiB; "
          f"growth {growth:+.1f} MiB (limit {args.max_growth_mb} MiB)")
    print(f"answers different from the first evaluation of the same input: {mismatches}")
    print(f"durable-rules sessions opened: {sessions:,}; of the last {len(recent):,}, still holding state: {len(live)} "
          f"(get_state fails with 'SID not found' for the others)")
    print(f"after the run: {DURABLE_STATE_CACHE + 100:,} more sessions (durable state cache: {DURABLE_STATE_CACHE:,}), "
          f"{extra_ok:,} answered as before, {len(extra_live)} still holding state")
    ok = growth < args.max_growth_mb and mismatches == 0 and not live and not extra_live \
        and extra_ok == DURABLE_STATE_CACHE + 100
    print("RESULT:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
