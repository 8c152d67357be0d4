"""Evaluation off the event loop, with a per-call deadline.

The engine is CPU work and not thread-safe (durable-rules: one Host per process, see engine.py), so
each worker process runs it on one dedicated thread: calls are evaluated one at a time, as before,
but the event loop stays free for discovery, health, feedback and the FHIR fetches of other calls.
A call that is not evaluated within `evaluation_timeout` seconds (queue wait included) is answered
503 with Retry-After; if it was still queued it is dropped, never run. The deadline covers the
whole call's CPU work: parsing and validating the body (on a thread-pool thread, `parse_within`:
a 5 MB body is seconds of jsonschema), the gate and the evaluation; the FHIR fetches have their
own budget (fhir_total_timeout). A thread cannot be killed:
an evaluation that overran keeps the thread until it ends, and `/health` reports it so an
orchestrator can replace the worker. The thread is a daemon, so a worker told to stop is not held
up by it (a ThreadPoolExecutor's threads are joined at exit)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from cds_tpi.service.outcomes import HttpError

log = logging.getLogger(__name__)
T = TypeVar("T")


class EvaluationRunner:
    """One thread per process that runs engine calls, each bounded by a deadline."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="cds-tpi-eval", daemon=True)
        self._thread.start()
        self._running_since: float | None = None
        self.timeouts = 0

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn = item
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up while it was queued
            try:
                future.set_result(fn())
            except BaseException as e:  # handed to the caller
                future.set_exception(e)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the evaluation thread; HttpError 503 when the deadline passes."""
        return await self.run_within(self.timeout, fn, *args, **kwargs)

    async def run_within(self, seconds: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """As `run`, with what is left of the call's deadline (`seconds`) instead of all of it."""
        work: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((work, functools.partial(self._timed, fn, *args, **kwargs)))
        future = asyncio.wrap_future(work)  # cancelling it (the deadline) cancels queued work
        try:
            return await asyncio.wait_for(future, max(seconds, 0.0))
        except TimeoutError:
            raise self.deadline_passed("evaluation") from None

    async def parse_within(self, seconds: float, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (request parsing and validation: orjson + jsonschema on a body of up to
        max_body_bytes, seconds of CPU) on a worker thread of the thread pool, not on the event loop;
        HttpError 503 when `seconds` pass (the thread finishes its bounded work and is dropped)."""
        try:
            return await asyncio.wait_for(run_in_threadpool(fn, *args), max(seconds, 0.0))
        except TimeoutError:
            raise self.deadline_passed("request validation") from None

    def deadline_passed(self, step: str) -> HttpError:
        self.timeouts += 1
        log.error("evaluation deadline of %.1f s passed (in %s); answered 503", self.timeout, step)
        return HttpError(503, f"the evaluation did not finish within {self.timeout:g} s; retry later",
                         headers={"Retry-After": "5"})

    def _timed(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._running_since = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self._running_since = None

    @property
    def overrunning_seconds(self) -> float:
        """How long the current evaluation has run past the deadline (0 when none has)."""
        since = self._running_since
        if since is None:
            return 0.0
        return max(0.0, time.monotonic() - since - self.timeout)

    def close(self) -> None:
        """Stop taking work; an evaluation still running is not waited for."""
        self._queue.put(None)
