"""Many instances processed concurrently by more than one connected worker."""

from __future__ import annotations

import collections
import threading
import time

import pytest
from durabletask import task
from durabletask.client import OrchestrationStatus
from harness import new_id

N_INSTANCES = 50
N_STEPS = 5


@pytest.mark.timeout(300)
def test_many_instances_two_workers(client, run_worker):
    lock = threading.Lock()
    executed = collections.Counter()  # (instance_id, step) -> executions
    per_worker = collections.Counter()  # worker tag -> activities executed

    def make_functions(tag: str):
        def scale_step_act(actx: task.ActivityContext, inp: dict) -> int:
            with lock:
                executed[(actx.orchestration_id, inp["step"])] += 1
                per_worker[tag] += 1
            return inp["value"] * 2 + inp["step"]

        def scale_chain_orch(ctx: task.OrchestrationContext, seed: int):
            value = seed
            for step in range(N_STEPS):
                value = yield ctx.call_activity(scale_step_act, input={"value": value, "step": step})
            return {"seed": seed, "value": value}

        return scale_chain_orch, scale_step_act

    def expected(seed: int) -> int:
        v = seed
        for step in range(N_STEPS):
            v = v * 2 + step
        return v

    orch_a, act_a = make_functions("A")
    orch_b, act_b = make_functions("B")
    prefix = new_id("scale")
    t0 = time.monotonic()
    with run_worker(orchestrators=[orch_a], activities=[act_a]), \
            run_worker(orchestrators=[orch_b], activities=[act_b]):
        ids = [client.schedule_new_orchestration(orch_a, input=i, instance_id=f"{prefix}-{i}")
               for i in range(N_INSTANCES)]
        states = {iid: client.wait_for_orchestration_completion(iid, timeout=120) for iid in ids}
    elapsed = time.monotonic() - t0

    failures = {iid: (s.runtime_status if s else None, s.failure_details if s else None)
                for iid, s in states.items()
                if s is None or s.runtime_status != OrchestrationStatus.COMPLETED}
    assert not failures, f"{len(failures)} instances did not complete: {list(failures.items())[:5]}"
    for i, iid in enumerate(ids):
        assert states[iid].get_output() == {"seed": i, "value": expected(i)}, iid

    assert len(executed) == N_INSTANCES * N_STEPS
    dupes = {k: v for k, v in executed.items() if v != 1}
    assert not dupes, f"activities executed more than once without any failure: {list(dupes.items())[:5]}"
    print(f"\n{N_INSTANCES}x{N_STEPS} completed in {elapsed:.1f}s; activities per worker: {dict(per_worker)}")
