"""The audit trail writer: records are queued by the request path and written in batches by one
thread, so the clinical answer never waits for (or fails with) the database. A failed batch is
logged and counted; records still queued at shutdown are flushed."""

from __future__ import annotations

import logging
import queue
import time
import threading

from cds_tpi.service.storage import AuditRecord, Storage

log = logging.getLogger("cds_tpi.service")

_STOP = object()


class AuditWriter:
    """Batches audit records into the database from a background thread."""

    def __init__(self, storage: Storage, max_batch: int = 500, max_queue: int = 50_000, linger_seconds: float = 0.05):
        self.linger_seconds = linger_seconds
        self.storage = storage
        self.max_batch = max_batch
        self.failures = 0  # records not written
        self._submitted = 0  # records queued so far (the event loop's thread)
        self._processed = 0  # records written or failed so far (the writer thread; FIFO)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="cds-tpi-audit", daemon=True)

    def start(self) -> AuditWriter:
        self._thread.start()
        return self

    def submit(self, record: AuditRecord) -> None:
        """Queue a record; never blocks (a full queue counts as a failure)."""
        try:
            self._queue.put_nowait(record)
            self._submitted += 1
        except queue.Full:
            self._failed(1, "queue full")

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until every record queued before this call has been written (or failed), however
        many are queued after it; False on timeout. Feedback uses it: a card issued a moment ago
        may still be in this queue."""
        target = self._submitted
        deadline = time.monotonic() + timeout
        while self._processed < target:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [] if item is _STOP else [item]
            stop = item is _STOP
            if not stop:
                # Linger briefly so that under load one commit carries many rows (a commit costs an
                # fsync and holds the GIL-bound driver); close() still flushes at once.
                time.sleep(self.linger_seconds)
            while not stop and len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                try:
                    self.storage.write_audits(batch)
                except Exception as e:  # never let the audit break the service
                    self._failed(len(batch), type(e).__name__)
            self._processed += len(batch)
            if stop:
                return

    def _failed(self, n: int, why: str) -> None:
        self.failures += n
        log.error("%d audit row(s) not written: %s; %d so far", n, why, self.failures)


def card_rows(cards: list[dict]) -> tuple[tuple[tuple[str, str | None, str], ...], tuple[tuple[str, str, str], ...]]:
    """The audit rows of the cards answered: (uuid, rule id, indicator) per card, and
    (card uuid, system, code) per override reason a card offered (feedback is checked against them)."""
    rows = []
    reasons = []
    for card in cards:
        topic = (card.get("source") or {}).get("topic") or {}
        uuid = str(card.get("uuid", ""))
        rows.append((uuid, topic.get("code"), str(card.get("indicator", ""))))
        for reason in card.get("overrideReasons") or ():
            if isinstance(reason, dict) and reason.get("code"):
                reasons.append((uuid, str(reason.get("system", "")), str(reason["code"])))
    return tuple(rows), tuple(reasons)
