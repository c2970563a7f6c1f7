"""connect_client/new_worker against a Duro that requires an API token (--api-token)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator

import duro
import grpc
import pytest
from conftest import REPO, free_port, wait_port
from durabletask import client as dt_client
from durabletask import task

TOKEN = "py-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def guarded() -> Iterator[str]:
    binary = os.environ.get("DURO_BIN") or str(REPO / "target" / "debug" / "duro")
    if not os.path.exists(binary):
        pytest.skip(f"duro binary not found at {binary} (cargo build -p duro)")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="duro-py-token-")
    with open(os.path.join(tmp, "duro.log"), "w") as log:
        proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{port}", "--db", os.path.join(tmp, "duro.db"),
             "--http-listen", "off", "--api-token", TOKEN],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_port(port)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def hello(ctx: task.OrchestrationContext, name: str) -> str:
    return f"hello {name}"


def test_without_the_token_calls_are_refused(guarded: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DURO_API_TOKEN", raising=False)
    c = duro.connect_client(guarded)
    with pytest.raises(grpc.RpcError) as e:
        c.schedule_new_orchestration(hello, input="x")
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_with_the_token_client_and_worker_are_accepted(guarded: str) -> None:
    with duro.new_worker(guarded, api_token=TOKEN) as w:
        w.add_orchestrator(hello)
        w.start()
        c = duro.connect_client(guarded, api_token=TOKEN)
        iid = c.schedule_new_orchestration(hello, input="duro")
        st = c.wait_for_orchestration_completion(iid, timeout=30)
        assert st is not None
        assert st.runtime_status == dt_client.OrchestrationStatus.COMPLETED
        assert st.serialized_output == '"hello duro"'
