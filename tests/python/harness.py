"""Process harness and small helpers for the Duro Python compatibility suite.

The suite talks to a real ``duro`` sidecar process over gRPC using the official
``durabletask`` SDK (client + worker), exactly as an application would.

Environment variables:

* ``DURO_BIN``: path of the sidecar binary (default ``<repo>/target/debug/duro``).
* ``DURO_TEST_LOG_LEVEL``: value for duro's ``--log-level`` (default ``info``).
* ``DURO_TEST_BACKEND``: ``duro`` (default) or ``inmemory``. ``inmemory`` runs the
  suite against the SDK's own in-memory reference backend
  (``durabletask.testing``) instead of Duro. It exists only to check that the
  tests use the SDK correctly; tests that need a real process (restarts,
  SIGTERM) are skipped there.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
from durabletask import client as dt_client
from durabletask import worker as dt_worker

REPO_ROOT = Path(__file__).resolve().parents[2]

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 300

log = logging.getLogger("duro.tests")

# Safety net: never leave a sidecar behind if pytest dies without running teardown.
_LIVE_PROCS: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_LIVE_PROCS):
        if p.poll() is None:
            p.kill()


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def duro_bin() -> Path:
    override = os.environ.get("DURO_BIN")
    return Path(override) if override else REPO_ROOT / "target" / "debug" / "duro"


def backend_kind() -> str:
    return os.environ.get("DURO_TEST_BACKEND", "duro").strip().lower() or "duro"


def free_port() -> int:
    """Ask the kernel for a currently unused TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")
        time.sleep(interval)


def new_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class SidecarProcess:
    """A real ``duro`` process bound to one port and one SQLite file.

    ``restart()`` keeps both, so the same clients/workers can reconnect and the
    same durable state is reopened.
    """

    restartable = True

    def __init__(self, db_path: Path, log_path: Path, port: int | None = None,
                 extra_args: Iterable[str] = ()):
        self.db_path = Path(db_path)
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_returncode: int | None = None
        self.last_stop_was_kill = False
        self.starts = 0

    # -- public API ---------------------------------------------------------

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def store_args(self) -> list[str]:
        """``--db``: the SQLite file, or with ``DURO_TEST_STORE=postgres`` a task hub of its
        own on ``$DURO_TEST_PG_URL`` (kept across restarts, like the file)."""
        if os.environ.get("DURO_TEST_STORE") != "postgres":
            return ["--db", str(self.db_path)]
        if not hasattr(self, "hub"):
            self.hub = f"py_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        return ["--db", os.environ["DURO_TEST_PG_URL"], "--task-hub", self.hub]

    def command(self) -> list[str]:
        return [str(duro_bin()), "--listen", f"127.0.0.1:{self.port}",
                *self.store_args(), "--log-level", os.environ.get("DURO_TEST_LOG_LEVEL", "info"),
                *self.extra_args]

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        binary = duro_bin()
        if not binary.exists():
            raise RuntimeError(
                f"duro binary not found at {binary}; build it with `cargo build -p duro` "
                f"or point DURO_BIN at it")
        if self.is_running():
            raise RuntimeError("sidecar already running")
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as f:
            f.write(f"\n===== [harness] start #{self.starts}: {' '.join(self.command())}\n".encode())
            env = dict(os.environ)
            env.setdefault("RUST_BACKTRACE", "1")
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                env=env)
        _LIVE_PROCS.add(self.proc)
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.last_returncode = rc
                self.proc = None
                raise RuntimeError(
                    f"duro exited with code {rc} during startup\n{self.log_tail()}")
            if port_accepts(self.port):
                return
            if time.monotonic() >= deadline:
                self.stop(timeout=5)
                raise RuntimeError(
                    f"duro did not accept TCP connections on 127.0.0.1:{self.port} within "
                    f"{timeout}s\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the process, SIGKILL it if it has not exited after ``timeout``.

        Returns the exit code (negative = killed by that signal)."""
        proc = self.proc
        if proc is None:
            return self.last_returncode
        self.last_stop_was_kill = False
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.last_stop_was_kill = True
                proc.kill()
                proc.wait(timeout=10)
                self._append_log(f"===== [harness] duro ignored SIGTERM for {timeout}s; killed\n")
        self.last_returncode = proc.returncode
        _LIVE_PROCS.discard(proc)
        self._append_log(f"===== [harness] duro exited with code {proc.returncode}\n")
        self.proc = None
        # the port must be free again before a restart can bind it
        wait_until(lambda: not port_accepts(self.port, timeout=0.2), timeout=10,
                   message=f"port {self.port} to be released")
        return self.last_returncode

    def kill(self) -> None:
        """SIGKILL (crash simulation)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.last_returncode = self.proc.returncode
            self._append_log("===== [harness] duro SIGKILLed by test\n")
        self.proc = None

    def restart(self, timeout: float = START_TIMEOUT_S) -> int | None:
        rc = self.stop()
        self.start(timeout=timeout)
        return rc

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_text(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
        text = _ANSI.sub("", self.log_text(offset))
        all_lines = text.splitlines()
        if len(all_lines) > lines:
            skipped = len(all_lines) - lines
            all_lines = [f"... ({skipped} earlier lines in {self.log_path})"] + all_lines[-lines:]
        return "\n".join(all_lines)

    # -- internals ------------------------------------------------------------

    def _append_log(self, line: str) -> None:
        with contextlib.suppress(OSError), open(self.log_path, "ab") as f:
            f.write(line.encode())


class InMemorySidecar:
    """The SDK's in-memory reference backend behind the same interface (self-check only)."""

    restartable = False

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self._backend: Any = None
        self.log_path = None

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        from durabletask.testing import create_test_backend
        self._backend = create_test_backend(port=self.port)
        wait_until(lambda: port_accepts(self.port), timeout=timeout, message="in-memory backend")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        if self._backend is not None:
            self._backend.stop(grace=1)
            self._backend = None
        return 0

    def restart(self, timeout: float = START_TIMEOUT_S) -> int | None:
        raise NotImplementedError("the in-memory backend loses its state on restart")

    def is_running(self) -> bool:
        return self._backend is not None

    def log_size(self) -> int:
        return 0

    def log_tail(self, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
        return "(in-memory backend: no process log)"


# ---------------------------------------------------------------------------
# SDK helpers
# ---------------------------------------------------------------------------

def make_client(address: str) -> dt_client.TaskHubGrpcClient:
    return dt_client.TaskHubGrpcClient(host_address=address,
                                       logger=logging.getLogger("duro.tests.client"))


@contextlib.contextmanager
def running_worker(address: str, *, orchestrators: Iterable[Callable[..., Any]] = (),
                   activities: Iterable[Callable[..., Any]] = (),
                   **worker_kwargs: Any) -> Iterator[dt_worker.TaskHubGrpcWorker]:
    """Start a ``TaskHubGrpcWorker`` with the given functions registered; stop it on exit."""
    worker_kwargs.setdefault("logger", logging.getLogger("duro.tests.worker"))
    w = dt_worker.TaskHubGrpcWorker(host_address=address, **worker_kwargs)
    for fn in orchestrators:
        w.add_orchestrator(fn)
    for fn in activities:
        w.add_activity(fn)
    w.start()
    try:
        yield w
    finally:
        w.stop()


def _get_state_tolerant(c: dt_client.TaskHubGrpcClient, instance_id: str,
                        fetch_payloads: bool) -> dt_client.OrchestrationState | None:
    """get_orchestration_state, treating UNAVAILABLE (channel reconnecting after a
    sidecar restart) as "not yet" rather than an error."""
    try:
        return c.get_orchestration_state(instance_id, fetch_payloads=fetch_payloads)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
            return None
        raise


def wait_for_status(c: dt_client.TaskHubGrpcClient, instance_id: str,
                    statuses: Iterable[dt_client.OrchestrationStatus], *,
                    timeout: float = 30, fetch_payloads: bool = True) -> dt_client.OrchestrationState:
    wanted = set(statuses)

    def check() -> Any:
        st = _get_state_tolerant(c, instance_id, fetch_payloads)
        return st if st is not None and st.runtime_status in wanted else None

    return wait_until(check, timeout=timeout, interval=0.1,
                      message=f"{instance_id} to reach {sorted(s.name for s in wanted)}")


def wait_for_custom_status(c: dt_client.TaskHubGrpcClient, instance_id: str, expected: Any, *,
                           timeout: float = 30) -> dt_client.OrchestrationState:
    def check() -> Any:
        st = _get_state_tolerant(c, instance_id, True)
        return st if st is not None and st.get_custom_status() == expected else None

    return wait_until(check, timeout=timeout, interval=0.1,
                      message=f"{instance_id} custom status == {expected!r}")


def assert_stays(predicate: Callable[[], bool], *, duration: float, interval: float = 0.1,
                 message: str = "condition") -> None:
    """Assert that ``predicate`` holds continuously for ``duration`` seconds."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert predicate(), f"{message} stopped holding"
        time.sleep(interval)
