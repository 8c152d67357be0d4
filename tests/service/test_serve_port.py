"""Issue 9 item 15: `cds-tpi serve` on a port in use says so in one line, exits 1, and never logs
"service ready" first."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from conftest import free_port, wait_http

pytestmark = pytest.mark.timeout(120)


def _serve(tmp_path, port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from cds_tpi.cli import main; main()", "serve", "--port", str(port),
         "--database-url", f"sqlite:///{tmp_path}/serve.sqlite3", *args],
        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_clear_line_and_exit_1(tmp_path, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(tmp_path, port, "--workers", workers)
    assert done.returncode == 1, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == [f"Error: cannot listen on 127.0.0.1:{port}: the port is already in use (choose another with --port)"]
    assert "service ready" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_bound_port_serves(tmp_path, workers):
    """Also with 2 workers, whose listening sockets are SO_REUSEPORT (cli/serve.py WorkerListener): a second
    service of the same user must be refused, not join them on the port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cds_tpi.cli import main; main()", "serve", "--port", str(port),
         "--database-url", f"sqlite:///{tmp_path}/serve.sqlite3", "--workers", workers],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        second = _serve(tmp_path, port, "--workers", workers)  # a second server on the same port
        assert second.returncode == 1 and "already in use" in second.stderr
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "service ready" in out
