"""Benchmark (a script, not a test): where the time of one warm evaluation goes, stage by stage.

The 100-resource order-sign request of benchmarks/evaluate.py is evaluated N times in-process with
each stage wrapped in a timer: read (bytes -> Document, orjson.loads included), accept (validation
cache look-ups, the newest results), the one-patient check, facts, engine, findings, cards. Prints
the median per evaluation and its ratio to orjson.loads of the same bytes, measured in this run.

    python benchmarks/stages.py [--evaluations 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
import sys

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import build_request  # noqa: E402

from cds_tpi import pipeline  # noqa: E402
from cds_tpi.fhir.read import read_bytes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evaluations", type=int, default=1000)
    args = ap.parse_args()
    data = orjson.dumps(build_request())
    ev = pipeline.Evaluator.load()
    pipeline.freeze_startup_objects()
    times: dict[str, list[float]] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times.setdefault(name, []).append(time.perf_counter() - t)
        return wrapper

    # (instance attributes and module globals of pipeline: the Evaluator looks them up at each call)
    ev._accept_all = timed("accept", ev._accept_all)
    ev._match = timed("engine", ev._match)
    pipeline.patient_problems = timed("one patient", pipeline.patient_problems)
    pipeline.collect = timed("findings", pipeline.collect)
    pipeline.cards_for = timed("cards", pipeline.cards_for)
    make_builder = ev._builder

    def builder(*a, **k):
        b = make_builder(*a, **k)
        b.build = timed("facts", b.build)
        return b

    ev._builder = builder
    read = timed("read", read_bytes)
    evaluate = timed("whole evaluation", lambda: ev.evaluate_document(read(data, "bench")))
    for i in range(args.evaluations + 200):
        if i == 200:  # warmed up
            times.clear()
        evaluate()
    loads = []
    for _ in range(1000):
        t = time.perf_counter()
        orjson.loads(data)
        loads.append(time.perf_counter() - t)
    t_loads = statistics.median(loads)
    print(f"orjson.loads        {t_loads * 1e3:7.3f} ms")
    for name, samples in times.items():
        per_eval = statistics.median(samples) * len(samples) / args.evaluations  # accept runs twice a call
        print(f"{name:19s} {per_eval * 1e3:7.3f} ms  {per_eval / t_loads:5.1f}x")


if __name__ == "__main__":
    main()
