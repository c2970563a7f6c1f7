"""Sub-orchestrations: explicit ids, output propagation, failure propagation, fan-out."""

from __future__ import annotations

import threading

import pytest
from durabletask import task
from durabletask.client import OrchestrationStatus
from harness import new_id

TIMEOUT = 30


def test_sub_orchestration_with_explicit_id_and_output(client, run_worker):
    def sub_out_act(_: task.ActivityContext, s: str) -> str:
        return s.upper()

    def sub_out_child(ctx: task.OrchestrationContext, s: str):
        up = yield ctx.call_activity(sub_out_act, input=s)
        return {"child": ctx.instance_id, "value": up}

    def sub_out_parent(ctx: task.OrchestrationContext, child_id: str):
        r = yield ctx.call_sub_orchestrator(sub_out_child, input="hello", instance_id=child_id)
        return {"from_child": r, "me": ctx.instance_id}

    child_id = new_id("child")
    with run_worker(orchestrators=[sub_out_parent, sub_out_child], activities=[sub_out_act]):
        pid = client.schedule_new_orchestration(sub_out_parent, input=child_id)
        pstate = client.wait_for_orchestration_completion(pid, timeout=TIMEOUT)
        cstate = client.get_orchestration_state(child_id)

    assert pstate is not None
    assert pstate.runtime_status == OrchestrationStatus.COMPLETED, pstate.failure_details
    assert pstate.get_output() == {
        "from_child": {"child": child_id, "value": "HELLO"},
        "me": pid,
    }
    # The child is a first-class instance, visible to the client under the explicit id.
    assert cstate is not None
    assert cstate.instance_id == child_id
    assert cstate.name == "sub_out_child"
    assert cstate.runtime_status == OrchestrationStatus.COMPLETED
    assert cstate.get_input() == "hello"
    assert cstate.get_output()["value"] == "HELLO"


@pytest.mark.duro_only  # not implemented by the in-memory reference backend
def test_sub_orchestration_sees_parent_instance_id(client, run_worker):
    def sub_parent_id_child(ctx: task.OrchestrationContext, _):
        return ctx.parent_instance_id

    def sub_parent_id_parent(ctx: task.OrchestrationContext, _):
        r = yield ctx.call_sub_orchestrator(sub_parent_id_child)
        return {"child_saw": r, "me": ctx.instance_id, "my_parent": ctx.parent_instance_id}

    with run_worker(orchestrators=[sub_parent_id_parent, sub_parent_id_child]):
        pid = client.schedule_new_orchestration(sub_parent_id_parent)
        state = client.wait_for_orchestration_completion(pid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == {"child_saw": pid, "me": pid, "my_parent": None}


def test_sub_orchestration_by_name_with_generated_id(client, run_worker):
    def sub_name_child(ctx: task.OrchestrationContext, n: int):
        return n * 3

    def sub_name_parent(ctx: task.OrchestrationContext, n: int):
        r = yield ctx.call_sub_orchestrator("sub_name_child", input=n)
        return r + 1

    with run_worker(orchestrators=[sub_name_parent, sub_name_child]):
        pid = client.schedule_new_orchestration(sub_name_parent, input=5)
        state = client.wait_for_orchestration_completion(pid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == 16


def test_sub_orchestration_failure_is_catchable(client, run_worker):
    def sub_fail_child(ctx: task.OrchestrationContext, _):
        raise RuntimeError("child exploded")

    def sub_fail_parent(ctx: task.OrchestrationContext, child_id: str):
        try:
            yield ctx.call_sub_orchestrator(sub_fail_child, instance_id=child_id)
            return {"caught": False}
        except task.TaskFailedError as e:
            return {"caught": True, "message": e.details.message, "type": e.details.error_type}

    child_id = new_id("failchild")
    with run_worker(orchestrators=[sub_fail_parent, sub_fail_child]):
        pid = client.schedule_new_orchestration(sub_fail_parent, input=child_id)
        pstate = client.wait_for_orchestration_completion(pid, timeout=TIMEOUT)
        cstate = client.get_orchestration_state(child_id)

    assert pstate is not None
    assert pstate.runtime_status == OrchestrationStatus.COMPLETED, pstate.failure_details
    out = pstate.get_output()
    assert out["caught"] is True
    assert "child exploded" in out["message"]
    assert cstate is not None
    assert cstate.runtime_status == OrchestrationStatus.FAILED
    assert cstate.failure_details is not None
    assert "child exploded" in cstate.failure_details.message
    assert cstate.failure_details.error_type.endswith("RuntimeError")


def test_sub_orchestration_failure_uncaught_fails_parent(client, run_worker):
    def sub_uncaught_child(ctx: task.OrchestrationContext, _):
        raise ValueError("bad child input")

    def sub_uncaught_parent(ctx: task.OrchestrationContext, _):
        yield ctx.call_sub_orchestrator(sub_uncaught_child)
        return "unreachable"

    with run_worker(orchestrators=[sub_uncaught_parent, sub_uncaught_child]):
        pid = client.schedule_new_orchestration(sub_uncaught_parent)
        state = client.wait_for_orchestration_completion(pid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.failure_details is not None
    assert "bad child input" in state.failure_details.message


def test_sub_orchestration_fan_out(client, run_worker):
    lock = threading.Lock()
    count = [0]

    def sub_fan_act(_: task.ActivityContext, _2):
        with lock:
            count[0] += 1

    def sub_fan_child(ctx: task.OrchestrationContext, k: int):
        for _ in range(3):
            yield ctx.call_activity(sub_fan_act)
        return k * k

    def sub_fan_parent(ctx: task.OrchestrationContext, n: int):
        results = yield task.when_all([ctx.call_sub_orchestrator(sub_fan_child, input=i) for i in range(n)])
        return results

    with run_worker(orchestrators=[sub_fan_parent, sub_fan_child], activities=[sub_fan_act]):
        pid = client.schedule_new_orchestration(sub_fan_parent, input=8)
        state = client.wait_for_orchestration_completion(pid, timeout=60)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == [i * i for i in range(8)]
    assert count[0] == 24


def test_nested_sub_orchestrations(client, run_worker):
    def nested_level(ctx: task.OrchestrationContext, depth: int):
        if depth == 0:
            return ["leaf"]
        below = yield ctx.call_sub_orchestrator(nested_level, input=depth - 1)
        return [f"level{depth}"] + below

    with run_worker(orchestrators=[nested_level]):
        pid = client.schedule_new_orchestration(nested_level, input=3)
        state = client.wait_for_orchestration_completion(pid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == ["level3", "level2", "level1", "leaf"]
