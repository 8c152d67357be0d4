"""Soak and concurrency, in-process (the quick CI version of benchmarks/soak.py, which runs 100,000).

- 3,000 evaluations of the fhir_samples in rotation: resident memory grows < 10 MB, every answer is
  the first evaluation's answer for the same input, and no durable-rules session keeps state.
- 4 threads evaluating every sample concurrently give exactly the answers of the same inputs run one
  by one (rule ids and indicators).
"""

from __future__ import annotations

import gc
import os
import random
import threading
from datetime import datetime, timezone

import pytest
import yaml

from cds_tpi.engine import RULESET
from cds_tpi.fhir.read import read_bytes

from .cdshooks import assert_cds_response
from .conftest import SAMPLES

EVALUATIONS = 3_000
MAX_GROWTH_MB = 10.0


def _inputs():
    out = []
    for path in sorted(SAMPLES.glob("*")):
        if path.suffix in (".json", ".ndjson"):
            d = yaml.safe_load(path.with_name(path.stem + ".expected.yaml").read_text())["now"]
            out.append((path.name, path.read_bytes(), datetime(d.year, d.month, d.day, tzinfo=timezone.utc)))
    return out


INPUTS = _inputs()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def answer(evaluator, name, data, now, check=False):
    result = evaluator.evaluate_document(read_bytes(data, name), now=now)
    if check:
        assert_cds_response(result.response)
    return tuple(sorted((c["source"]["topic"]["code"], c["indicator"]) for c in result.cards))


@pytest.fixture(scope="module")
def sequential(evaluator):
    """The answer for each sample, evaluated one by one (and checked by the shared helper)."""
    return {name: answer(evaluator, name, data, now, check=True) for name, data, now in INPUTS}


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc to read resident memory")
def test_3000_evaluations_keep_memory_flat_and_answers_identical(evaluator, sequential):
    for i in range(len(INPUTS) * 5):  # warm-up: caches, templates, allocator arenas
        answer(evaluator, *INPUTS[i % len(INPUTS)])
    gc.collect()
    before = rss_mb()
    first_sid = int(repr(evaluator.engine._sids)[len("count("):-1])
    different = []
    for i in range(EVALUATIONS):
        name, data, now = INPUTS[i % len(INPUTS)]
        if answer(evaluator, name, data, now) != sequential[name]:
            different.append((i, name))
    gc.collect()
    growth = rss_mb() - before
    assert not different, f"answers changed on repetition: {different[:5]}"
    assert growth < MAX_GROWTH_MB, f"resident memory grew {growth:.1f} MB over {EVALUATIONS:,} evaluations"
    # Every session this test opened was deleted: durable has no state for any of them.
    last_sid = int(repr(evaluator.engine._sids)[len("count("):-1]) - 1
    assert last_sid - first_sid + 1 >= EVALUATIONS
    live = []
    for sid in range(first_sid, last_sid + 1, 7):
        try:
            evaluator.engine._host.get_state(RULESET, str(sid))
            live.append(sid)
        except Exception:  # noqa: BLE001 - "Could not get state, error code: 309": SID not found
            pass
    assert not live, f"durable sessions still holding state: {live[:10]}"


def test_four_threads_give_exactly_the_sequential_answers(evaluator, sequential):
    rounds = 3
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(k: int):
        order = list(INPUTS) * rounds
        random.Random(k).shuffle(order)  # each thread its own order
        got = []
        try:
            start.wait()
            for name, data, now in order:
                got.append((name, answer(evaluator, name, data, now)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        results[k] = got

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, errors
    assert sum(len(v) for v in results.values()) == 4 * rounds * len(INPUTS)
    wrong = [(k, name, got) for k, items in results.items() for name, got in items if got != sequential[name]]
    assert not wrong, f"concurrent answers differ from sequential ones: {wrong[:5]}"
