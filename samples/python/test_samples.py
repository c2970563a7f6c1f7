"""Runs the Python samples against a real duro binary."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import fan_out_fan_in
import hello_cities
import pytest
from durabletask import client, worker
from durabletask.client import OrchestrationStatus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def address():
    binary = os.environ.get("DURO_BIN", str(REPO / "target" / "debug" / "duro"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{port}", "--db", f"{d}/duro.db", "--http-listen", "off"],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.time() < deadline, "duro did not start"
                time.sleep(0.05)
        yield f"localhost:{port}"
        proc.terminate()
        proc.wait(timeout=20)


def run(address, register, orchestrator, payload=None):
    w = worker.TaskHubGrpcWorker(host_address=address)
    register(w)
    w.start()
    try:
        c = client.TaskHubGrpcClient(host_address=address)
        iid = c.schedule_new_orchestration(orchestrator, input=payload)
        return c.wait_for_orchestration_completion(iid, timeout=60)
    finally:
        w.stop()


def test_hello_cities_greets_in_order(address):
    state = run(address, hello_cities.register, hello_cities.hello_cities)
    assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED
    assert json.loads(state.serialized_output) == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]


def test_fan_out_fan_in_sums_the_counts(address):
    state = run(address, fan_out_fan_in.register, fan_out_fan_in.word_count, fan_out_fan_in.DOCUMENTS)
    assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED
    assert json.loads(state.serialized_output) == sum(len(d.split()) for d in fan_out_fan_in.DOCUMENTS)
