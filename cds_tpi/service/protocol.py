"""uvicorn's HTTP protocol (httptools) with a deadline for the request headers (slow clients).

uvicorn closes idle keep-alive connections but has no limit on how long a client may take to send
its request line and headers: a few hundred connections that send a header byte now and then hold
the worker's connections for ever (and, with `limit_concurrency`, turn every other caller away with
503). Here a connection must complete each request's headers within `header_read_timeout` seconds
of opening, or of the request's first byte; otherwise it is closed. The body has its own deadline
(`body_read_timeout`, in app.py). A reverse proxy in front should still enforce both."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

CONFIG_ENV = "CDS_TPI_SERVICE_CONFIG"  # set by `cds-tpi serve` for its workers (see app.app_from_environment)
DEFAULT_HEADER_READ_TIMEOUT = 10.0


def configured_header_timeout() -> float:
    """header_read_timeout of the service config handed to the workers, else the default."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        return DEFAULT_HEADER_READ_TIMEOUT
    from cds_tpi.service.config import ServiceConfig  # noqa: PLC0415

    return ServiceConfig.from_json(raw).header_read_timeout


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request headers are not complete in time."""

    header_timeout: float | None = None  # None: read from the environment once per process

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._start_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()  # a keep-alive connection's next request

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        self._cancel_header_timer()
        cls = type(self)
        if cls.header_timeout is None:
            cls.header_timeout = configured_header_timeout()
        self._header_timer = self.loop.call_later(cls.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        timer: Any = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
