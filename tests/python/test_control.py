"""Management operations on running/finished instances: terminate, suspend/resume,
restart and rewind."""

from __future__ import annotations

import threading

import grpc
import pytest
from durabletask import task
from durabletask.client import OrchestrationStatus
from harness import assert_stays, new_id, wait_for_status, wait_until

TIMEOUT = 30


# ---------------------------------------------------------------------------
# terminate
# ---------------------------------------------------------------------------

def test_terminate_running_orchestration(client, run_worker):
    def term_orch(ctx: task.OrchestrationContext, _):
        v = yield ctx.wait_for_external_event("never-raised")
        return v

    with run_worker(orchestrators=[term_orch]):
        iid = client.schedule_new_orchestration(term_orch)
        st = client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        assert st is not None and st.runtime_status == OrchestrationStatus.RUNNING
        client.terminate_orchestration(iid, output={"reason": "operator said so"})
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert state is not None
        assert state.runtime_status == OrchestrationStatus.TERMINATED
        assert state.get_output() == {"reason": "operator said so"}

        # an event raised after termination must not revive it
        try:
            client.raise_orchestration_event(iid, "never-raised", data="late")
        except grpc.RpcError:
            pass  # rejecting events for terminal instances is acceptable too
        assert_stays(lambda: client.get_orchestration_state(iid).runtime_status == OrchestrationStatus.TERMINATED,
                     duration=1.0, message="TERMINATED after a late event")
    final = client.get_orchestration_state(iid)
    assert final is not None and final.get_output() == {"reason": "operator said so"}


def test_terminate_pending_orchestration(client, run_worker):
    def term_pending_orch(ctx: task.OrchestrationContext, _):
        v = yield ctx.wait_for_external_event("never-raised")
        return v

    iid = client.schedule_new_orchestration(term_pending_orch, input=1)
    st = client.get_orchestration_state(iid)
    assert st is not None and st.runtime_status == OrchestrationStatus.PENDING
    client.terminate_orchestration(iid, output="cancelled before start")
    # A sidecar may apply the termination on its own or on the next work item.
    with run_worker(orchestrators=[term_pending_orch]):
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert state is not None
    assert state.runtime_status == OrchestrationStatus.TERMINATED
    assert state.get_output() == "cancelled before start"


@pytest.mark.duro_only  # the in-memory reference backend does not implement recursive terminate
def test_terminate_recursive_terminates_children(client, run_worker):
    def term_rec_child(ctx: task.OrchestrationContext, _):
        v = yield ctx.wait_for_external_event("never-raised")
        return v

    def term_rec_parent(ctx: task.OrchestrationContext, child_id: str):
        v = yield ctx.call_sub_orchestrator(term_rec_child, instance_id=child_id)
        return v

    child_id = new_id("term-child")
    with run_worker(orchestrators=[term_rec_parent, term_rec_child]):
        pid = client.schedule_new_orchestration(term_rec_parent, input=child_id)
        wait_for_status(client, child_id, [OrchestrationStatus.RUNNING])
        client.terminate_orchestration(pid, output="stop all", recursive=True)
        pstate = client.wait_for_orchestration_completion(pid, timeout=TIMEOUT)
        cstate = client.wait_for_orchestration_completion(child_id, timeout=TIMEOUT)

    assert pstate is not None and pstate.runtime_status == OrchestrationStatus.TERMINATED
    assert pstate.get_output() == "stop all"
    assert cstate is not None and cstate.runtime_status == OrchestrationStatus.TERMINATED


def test_terminate_non_recursive_leaves_child_running(client, run_worker):
    def term_nonrec_child(ctx: task.OrchestrationContext, _):
        v = yield ctx.wait_for_external_event("finish")
        return f"child:{v}"

    def term_nonrec_parent(ctx: task.OrchestrationContext, child_id: str):
        v = yield ctx.call_sub_orchestrator(term_nonrec_child, instance_id=child_id)
        return v

    child_id = new_id("nonrec-child")
    with run_worker(orchestrators=[term_nonrec_parent, term_nonrec_child]):
        pid = client.schedule_new_orchestration(term_nonrec_parent, input=child_id)
        wait_for_status(client, child_id, [OrchestrationStatus.RUNNING])
        client.terminate_orchestration(pid, recursive=False)
        pstate = client.wait_for_orchestration_completion(pid, timeout=TIMEOUT)
        assert pstate is not None and pstate.runtime_status == OrchestrationStatus.TERMINATED
        cst = client.get_orchestration_state(child_id)
        assert cst is not None and cst.runtime_status == OrchestrationStatus.RUNNING
        client.raise_orchestration_event(child_id, "finish", data="x")
        cstate = client.wait_for_orchestration_completion(child_id, timeout=TIMEOUT)

    assert cstate is not None
    assert cstate.runtime_status == OrchestrationStatus.COMPLETED
    assert cstate.get_output() == "child:x"
    # the child's completion does not revive the terminated parent
    assert client.get_orchestration_state(pid).runtime_status == OrchestrationStatus.TERMINATED


# ---------------------------------------------------------------------------
# suspend / resume
# ---------------------------------------------------------------------------

def test_suspend_resume_with_event_raised_while_suspended(client, run_worker):
    def susp_orch(ctx: task.OrchestrationContext, _):
        v = yield ctx.wait_for_external_event("data")
        return {"got": v}

    with run_worker(orchestrators=[susp_orch]):
        iid = client.schedule_new_orchestration(susp_orch)
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        client.suspend_orchestration(iid, reason="maintenance")
        st = wait_for_status(client, iid, [OrchestrationStatus.SUSPENDED], timeout=10)
        assert st.runtime_status == OrchestrationStatus.SUSPENDED

        client.raise_orchestration_event(iid, "data", data=42)
        with pytest.raises(TimeoutError):
            client.wait_for_orchestration_completion(iid, timeout=2)
        st = client.get_orchestration_state(iid)
        assert st is not None and st.runtime_status == OrchestrationStatus.SUSPENDED

        client.resume_orchestration(iid, reason="maintenance over")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == {"got": 42}


def test_suspend_holds_back_activity_progress(client, run_worker):
    release = threading.Event()
    lock = threading.Lock()
    calls: list[str] = []

    def susp_step_act(_: task.ActivityContext, name: str) -> str:
        with lock:
            calls.append(name)
        if name == "first":
            release.wait(20)
        return name

    def susp_steps_orch(ctx: task.OrchestrationContext, _):
        a = yield ctx.call_activity(susp_step_act, input="first")
        b = yield ctx.call_activity(susp_step_act, input="second")
        return [a, b]

    with run_worker(orchestrators=[susp_steps_orch], activities=[susp_step_act]):
        iid = client.schedule_new_orchestration(susp_steps_orch)
        wait_until(lambda: "first" in calls, timeout=TIMEOUT, message="first activity to start")
        client.suspend_orchestration(iid)
        wait_for_status(client, iid, [OrchestrationStatus.SUSPENDED], timeout=10)
        release.set()  # the first activity finishes while the orchestration is suspended
        # ... but its result must not advance the orchestration
        assert_stays(lambda: "second" not in calls, duration=2.0,
                     message="no new activity scheduled while suspended")
        assert client.get_orchestration_state(iid).runtime_status == OrchestrationStatus.SUSPENDED
        client.resume_orchestration(iid)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == ["first", "second"]


# ---------------------------------------------------------------------------
# restart
# ---------------------------------------------------------------------------

def test_restart_with_same_instance_id(client, run_worker):
    lock = threading.Lock()
    runs: list[str] = []

    def restart_act(_: task.ActivityContext, who: str) -> str:
        with lock:
            runs.append(who)
        return f"Hello, {who}!"

    def restart_orch(ctx: task.OrchestrationContext, who: str):
        r = yield ctx.call_activity(restart_act, input=who)
        return r

    with run_worker(orchestrators=[restart_orch], activities=[restart_act]):
        iid = client.schedule_new_orchestration(restart_orch, input="World")
        first = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert first is not None and first.get_output() == "Hello, World!"

        new = client.restart_orchestration(iid)
        assert new == iid
        second = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert second is not None
    assert second.runtime_status == OrchestrationStatus.COMPLETED, second.failure_details
    assert second.get_input() == "World"
    assert second.get_output() == "Hello, World!"
    assert runs == ["World", "World"], "the restarted instance must run from scratch"


def test_restart_with_new_instance_id(client, run_worker):
    def restart_new_orch(ctx: task.OrchestrationContext, n: int):
        return {"n": n, "id": ctx.instance_id}

    with run_worker(orchestrators=[restart_new_orch]):
        iid = client.schedule_new_orchestration(restart_new_orch, input=9)
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        new = client.restart_orchestration(iid, restart_with_new_instance_id=True)
        assert new and new != iid
        state = client.wait_for_orchestration_completion(new, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.name == "restart_new_orch"
    assert state.get_output() == {"n": 9, "id": new}
    old = client.get_orchestration_state(iid)
    assert old is not None and old.get_output() == {"n": 9, "id": iid}


def test_restart_of_running_or_unknown_instance_fails(client, run_worker):
    def restart_running_orch(ctx: task.OrchestrationContext, _):
        yield ctx.wait_for_external_event("go")

    with run_worker(orchestrators=[restart_running_orch]):
        iid = client.schedule_new_orchestration(restart_running_orch)
        wait_for_status(client, iid, [OrchestrationStatus.RUNNING])
        with pytest.raises(grpc.RpcError) as ei:
            client.restart_orchestration(iid)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION, ei.value
        with pytest.raises(grpc.RpcError) as ei2:
            client.restart_orchestration(new_id("restart-unknown"))
        assert ei2.value.code() == grpc.StatusCode.NOT_FOUND, ei2.value
        client.terminate_orchestration(iid)
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)


# ---------------------------------------------------------------------------
# rewind
# ---------------------------------------------------------------------------

def test_rewind_failed_orchestration(client, run_worker):
    lock = threading.Lock()
    calls = {"good": 0, "flaky": 0}
    broken = {"value": True}

    def rewind_good_act(_: task.ActivityContext, x: str) -> str:
        with lock:
            calls["good"] += 1
        return f"good:{x}"

    def rewind_flaky_act(_: task.ActivityContext, x: str) -> str:
        with lock:
            calls["flaky"] += 1
        if broken["value"]:
            raise RuntimeError("dependency down")
        return f"flaky:{x}"

    def rewind_orch(ctx: task.OrchestrationContext, x: str):
        a = yield ctx.call_activity(rewind_good_act, input=x)
        b = yield ctx.call_activity(rewind_flaky_act, input=x)
        return [a, b]

    with run_worker(orchestrators=[rewind_orch], activities=[rewind_good_act, rewind_flaky_act]):
        iid = client.schedule_new_orchestration(rewind_orch, input="x")
        failed = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert failed is not None and failed.runtime_status == OrchestrationStatus.FAILED
        assert "dependency down" in failed.failure_details.message

        broken["value"] = False
        client.rewind_orchestration(iid, reason="dependency is back")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.failure_details is None
    assert state.get_output() == ["good:x", "flaky:x"]
    assert calls["good"] == 1, "successful activities are replayed from history, not re-run"
    assert calls["flaky"] == 2


def test_rewind_of_non_failed_instance_fails(client, run_worker):
    def rewind_ok_orch(ctx: task.OrchestrationContext, _):
        return "fine"

    with run_worker(orchestrators=[rewind_ok_orch]):
        iid = client.schedule_new_orchestration(rewind_ok_orch)
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as ei:
        client.rewind_orchestration(iid)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION, ei.value
    with pytest.raises(grpc.RpcError) as ei2:
        client.rewind_orchestration(new_id("rewind-unknown"))
    assert ei2.value.code() == grpc.StatusCode.NOT_FOUND, ei2.value
    st = client.get_orchestration_state(iid)
    assert st is not None and st.runtime_status == OrchestrationStatus.COMPLETED
