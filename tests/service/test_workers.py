"""`cds-tpi serve --workers 2` as a real process under concurrent load (benchmarks/load.py's client):

- concurrent requests (16 clients; every fhir_samples CDS Hooks request and every sample Bundle
  wrapped as an order-sign request) give exactly the results - HTTP status, rule id and indicator
  of each card - of the same requests sent one by one;
- a worker SIGKILLed while requests are in flight does not take the service down: the other worker
  keeps answering, uvicorn's supervisor starts a replacement (asserted from the process table and
  its log), a bounded number of requests fail (only those on the killed worker's connections), then
  none; killing the other original worker afterwards shows the replacement answers too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, free_port, hook_request, stop_process, wait_http
from tests.cdshooks import assert_cds_response

pytestmark = pytest.mark.timeout(180)

CONCURRENCY = 16


def _load_module():
    spec = importlib.util.spec_from_file_location("cds_tpi_load", REPO / "benchmarks" / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


load = _load_module()


def _items() -> list[tuple[str, str, dict]]:
    """fhir_samples (requests as they are, bundles wrapped) plus the service tests' four hooks."""
    items = load.sample_requests(REPO / "fhir_samples")
    for hook, service in load.SERVICE_FOR_HOOK.items():
        items.append((f"service-data-{hook}", service, hook_request(hook)))
    return items


def _validate(name: str, status: int, body: bytes) -> None:
    assert status == 200, (name, status)
    assert_cds_response(json.loads(body))


class Serve:
    def __init__(self, tmp_path: Path, workers: int = 2):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "serve.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from cds_tpi.cli.serve import serve; serve()", "--port", str(self.port),
             "--workers", str(workers), "--database-url", f"sqlite:///{tmp_path}/serve.sqlite3"],
            cwd=tmp_path, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
        wait_http(self.url + "/health", timeout=60, proc=self.proc)
        self.wait_ready(workers)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, n: int, timeout: float = 60) -> None:
        """Until `n` engines have reported ready in the log (one line per worker start)."""
        deadline = time.monotonic() + timeout
        while self.log().count("cds-tpi service ready") < n:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{n} workers not ready:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def workers(self) -> list[psutil.Process]:
        """The uvicorn worker processes: the parent's children started by multiprocessing spawn."""
        workers = []
        for child in psutil.Process(self.proc.pid).children():
            try:  # a killed worker stays a zombie until the supervisor reaps it: not a worker
                if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                    workers.append(child)
            except psutil.Error:  # exited (or became a zombie) between the listing and the look
                pass
        return workers

    def listening(self) -> dict[int, set[str]]:
        """Per worker pid: the kernel sockets ("socket:[inode]") it listens on at the service port. One
        socket shared by the workers shows the same inode in each."""
        return {w.pid: {os.readlink(f"/proc/{w.pid}/fd/{c.fd}") for c in w.net_connections("tcp")
                        if c.status == psutil.CONN_LISTEN and c.laddr.port == self.port}
                for w in self.workers()}

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@pytest.fixture
def serve2(tmp_path):
    s = Serve(tmp_path)
    yield s
    s.stop()


def test_concurrent_requests_give_the_results_of_the_same_requests_one_by_one(serve2):
    items = _items()
    assert len(items) >= 50
    expected = asyncio.run(load.one_by_one(serve2.url, items))
    assert all(r[0] == 200 for r in expected.values()), {k: v for k, v in expected.items() if v[0] != 200}
    assert sum(1 for r in expected.values() if r[1]) >= 30  # most samples give cards: the comparison has teeth
    total = 4 * len(items)  # every request 4 times, interleaved across 16 clients (and the workers the kernel picks)
    report = asyncio.run(load.run(serve2.url, CONCURRENCY, total, 0, items, expected=expected,
                                  validate=_validate, quiet=True))
    assert len(report.outcomes) == total
    assert report.errors == {}, report.summary()
    assert {o.name for o in report.outcomes} == set(expected)


def test_each_worker_listens_on_a_socket_of_its_own_and_new_connections_reach_both(serve2):
    """SO_REUSEPORT (cli/serve.py WorkerListener): the kernel spreads connections over the workers; with one
    shared socket a burst of connections was often all taken by one worker."""
    sockets = list(serve2.listening().values())
    assert len(sockets) == 2 and all(len(s) == 1 for s in sockets) and sockets[0] != sockets[1], sockets
    import socket  # noqa: PLC0415

    clients = [socket.create_connection(("127.0.0.1", serve2.port)) for _ in range(32)]
    try:
        deadline = time.monotonic() + 10
        while True:  # each worker's accepted connections (asyncio accepts them without a request)
            established = {w.pid: sum(1 for c in w.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED
                                      and c.laddr.port == serve2.port) for w in serve2.workers()}
            if sum(established.values()) == 32 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # 32 connections hashed over 2 sockets: all on one worker has probability 2**-31
        assert sum(established.values()) == 32 and min(established.values()) > 0, established
    finally:
        for c in clients:
            c.close()


class Background:
    """load.run in a thread until stopped; `report.outcomes` grows as it goes."""

    def __init__(self, url: str, items, expected):
        self.report = load.Report()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(load.run(
            url, 8, 10**9, 0, items, timeout=10, expected=expected, stop=self.stop_event, quiet=True,
            report=self.report, validate=_validate)), daemon=True)
        self.thread.start()

    def ok_since(self, t: float) -> int:
        return sum(1 for o in list(self.report.outcomes) if o.started >= t and not o.error)

    def wait_ok(self, n: int, since: float, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.ok_since(since) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {n} good answers: {self.report.errors}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


def test_a_worker_killed_mid_request_does_not_take_the_service_down(serve2):
    items = [(n, s, b) for n, s, b in _items() if b["hook"] == "order-sign"][:12]
    expected = asyncio.run(load.one_by_one(serve2.url, items))
    original = serve2.workers()
    assert len(original) == 2, (original, serve2.log()[-3000:])
    background = Background(serve2.url, items, expected)
    try:
        background.wait_ok(100, since=0)
        kills, replaced_after = [], []
        for victim in original:  # first one original worker, then (after its replacement is up) the other
            before = {p.pid for p in serve2.workers()}
            t_kill = time.perf_counter()
            os.kill(victim.pid, signal.SIGKILL)
            kills.append(t_kill)
            # the survivor keeps answering while the dead worker is replaced
            background.wait_ok(20, since=t_kill + 0.5)
            deadline = time.monotonic() + 30
            while not ({p.pid for p in serve2.workers()} - before - {victim.pid}):
                assert time.monotonic() < deadline, "no replacement worker was started"
                time.sleep(0.1)
            serve2.wait_ready(2 + len(kills))  # the replacement has loaded its engine
            t_ready = time.perf_counter()
            replaced_after.append(round(t_ready - t_kill, 1))
            background.wait_ok(50, since=t_ready)
        t_end = time.perf_counter()
        time.sleep(1.0)
    finally:
        background.stop()
    outcomes = list(background.report.outcomes)
    assert serve2.proc.poll() is None, "the parent process died"
    assert len(serve2.workers()) == 2 and not {p.pid for p in original} & {p.pid for p in serve2.workers()}
    sockets = list(serve2.listening().values())  # each replacement bound a listening socket of its own
    assert len(sockets) == 2 and all(len(s) == 1 for s in sockets) and sockets[0] != sockets[1], sockets
    log = serve2.log()
    for victim in original:
        assert f"Child process [{victim.pid}] died" in log
    assert "Traceback" not in log
    # wrong answers: never; failed requests: only around each kill, a bounded number
    assert not [o for o in outcomes if o.error in ("mismatch", "invalid")], background.report.errors
    failed = [o for o in outcomes if o.error]
    assert not [o for o in failed if o.ended < kills[0]], "errors before any kill"
    for i, t_kill in enumerate(kills):
        window_end = kills[i + 1] if i + 1 < len(kills) else t_end + 10
        around = [o for o in failed if t_kill <= o.ended < window_end]
        # at most two per client connection (8): the one it had open on the killed worker, and a reconnect the
        # kernel queued on the killed worker's own listening socket (cli/serve.py WorkerListener) in the instant
        # before it closed: Linux resets those unless net.ipv4.tcp_migrate_req=1 (measured: 5-13 per kill)
        assert len(around) <= 16, (i, [o.error for o in around])
        late = [o for o in around if o.started > t_kill + 2.0]
        assert not late, f"requests started > 2 s after kill {i} failed: {[o.error for o in late]}"
    print(f"\nworker kill: {len(outcomes)} requests, {len(failed)} failed ({background.report.errors}), "
          f"all others correct; replacement worker ready {replaced_after} s after each kill")
