"""A worker process dies (SIGKILL) in the middle of an activity: the work is redelivered to
another worker instance that serves the same activity, and the orchestration completes."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from durabletask import task
from durabletask.client import OrchestrationStatus

TIMEOUT = 60
HERE = Path(__file__).resolve().parent


def test_killed_worker_mid_activity_is_replaced_by_another(client, run_worker, sidecar, tmp_path):
    def failover_slow_activity(_: task.ActivityContext, x: int) -> int:
        return x * 3

    def failover_orch(ctx: task.OrchestrationContext, x: int):
        return (yield ctx.call_activity("failover_slow_activity", input=x))

    marker = tmp_path / "started"
    doomed = subprocess.Popen([sys.executable, str(HERE / "failover_worker.py"), sidecar.address, str(marker)])
    try:
        with run_worker(orchestrators=[failover_orch]):
            iid = client.schedule_new_orchestration(failover_orch, input=5)
            deadline = time.time() + TIMEOUT
            while not marker.exists():
                assert time.time() < deadline, "the first worker never started the activity"
                assert doomed.poll() is None, "the first worker died early"
                time.sleep(0.05)
            doomed.kill()
            doomed.wait(timeout=10)
            state = client.get_orchestration_state(iid)
            assert state is not None and state.runtime_status == OrchestrationStatus.RUNNING
            with run_worker(activities=[failover_slow_activity]):
                state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    finally:
        if doomed.poll() is None:
            doomed.kill()

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.serialized_output == "15"
