"""What the service benchmarks share: a loopback port, a one-worker service in a child process, and
waiting for a URL to answer. (Benchmarks are scripts: `python benchmarks/<name>.py` puts this
directory on sys.path.)"""

from __future__ import annotations

import socket
import subprocess
import time

import httpx

# A one-worker service on 127.0.0.1: argv = port, database URL.
SERVER = r"""
import sys, uvicorn
from cds_tpi.service.app import create_app
from cds_tpi.service.config import ServiceConfig
port, db = int(sys.argv[1]), sys.argv[2]
uvicorn.run(create_app(ServiceConfig(port=port, database_url=db)), host="127.0.0.1", port=port, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until `url` answers; exits the benchmark when the process died or the time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")
