"""Fixtures: a real Duro sidecar on free ports, a worker, and a local HTTP server."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not listening")


class Duro:
    def __init__(self, grpc_port: int, http_port: int):
        self.address = f"127.0.0.1:{grpc_port}"
        self.http_url = f"http://127.0.0.1:{http_port}"


@pytest.fixture(scope="session")
def sidecar() -> Iterator[Duro]:
    binary = os.environ.get("DURO_BIN") or str(REPO / "target" / "debug" / "duro")
    if not Path(binary).exists():
        pytest.skip(f"duro binary not found at {binary} (cargo build -p duro)")
    gport, hport = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="duro-py-")
    log = open(os.path.join(tmp, "duro.log"), "w")
    proc = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{gport}", "--db", os.path.join(tmp, "duro.db"),
         "--http-listen", f"127.0.0.1:{hport}", "--durable-http-default-poll-interval-ms", "100",
         # The durable HTTP targets of the tests are on loopback, refused by default.
         "--http-allow", "127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_port(gport)
        wait_port(hport)
        yield Duro(gport, hport)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


class _State:
    def __init__(self) -> None:
        self.polls = 0
        self.requests: list[tuple[str, str, dict[str, str], str]] = []


@pytest.fixture()
def http_server() -> Iterator[tuple[str, _State]]:
    """``POST /start`` → 202 + Location ``/status``; ``/status`` → 202 twice, then 200 JSON."""
    state = _State()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            state.requests.append((self.command, self.path, dict(self.headers.items()), body))
            if self.path.startswith("/start"):
                self.send_response(202)
                self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/status")
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path.startswith("/status"):
                state.polls += 1
                if state.polls < 3:
                    self.send_response(202)
                    self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/status")
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    out = b'{"done": true}'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("X-Test", "yes")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        do_GET = do_POST = do_PUT = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", state
    finally:
        server.shutdown()
        server.server_close()
