"""Client-side API semantics: custom status, state reads, waits with timeouts,
scheduled start, instance-id collisions and the id-reuse policy."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import durabletask.internal.orchestrator_service_pb2 as pb
import grpc
import pytest
from durabletask import task
from durabletask.client import OrchestrationStatus
from harness import assert_stays, new_id, wait_for_custom_status, wait_for_status

TIMEOUT = 30


def test_custom_status_set_and_read(client, run_worker):
    def cs_orch(ctx: task.OrchestrationContext, _):
        ctx.set_custom_status({"stage": "waiting", "progress": 0.5})
        v = yield ctx.wait_for_external_event("continue")
        ctx.set_custom_status({"stage": "done", "got": v})
        return "ok"

    with run_worker(orchestrators=[cs_orch]):
        iid = client.schedule_new_orchestration(cs_orch)
        st = wait_for_custom_status(client, iid, {"stage": "waiting", "progress": 0.5})
        assert st.runtime_status == OrchestrationStatus.RUNNING
        client.raise_orchestration_event(iid, "continue", data=3)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_custom_status() == {"stage": "done", "got": 3}
    assert state.get_output() == "ok"


def test_custom_status_plain_string(client, run_worker):
    def cs_str_orch(ctx: task.OrchestrationContext, _):
        ctx.set_custom_status("foobaz")

    with run_worker(orchestrators=[cs_str_orch]):
        iid = client.schedule_new_orchestration(cs_str_orch)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.serialized_custom_status == '"foobaz"'


def test_get_state_with_and_without_payloads(client, run_worker):
    def payload_orch(ctx: task.OrchestrationContext, inp):
        return {"echo": inp}

    with run_worker(orchestrators=[payload_orch]):
        iid = client.schedule_new_orchestration(payload_orch, input={"a": 1})
        done = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert done is not None and done.runtime_status == OrchestrationStatus.COMPLETED

    full = client.get_orchestration_state(iid, fetch_payloads=True)
    assert full is not None
    assert full.instance_id == iid
    assert full.name == "payload_orch"
    assert full.runtime_status == OrchestrationStatus.COMPLETED
    assert full.get_input() == {"a": 1}
    assert full.get_output() == {"echo": {"a": 1}}

    slim = client.get_orchestration_state(iid, fetch_payloads=False)
    assert slim is not None
    assert slim.instance_id == iid
    assert slim.name == "payload_orch"
    assert slim.runtime_status == OrchestrationStatus.COMPLETED
    assert slim.serialized_input is None
    assert slim.serialized_output is None
    assert slim.created_at == full.created_at


def test_get_state_unknown_instance_is_none(client):
    assert client.get_orchestration_state(new_id("does-not-exist")) is None
    assert client.get_orchestration_state(new_id("does-not-exist"), fetch_payloads=False) is None


def test_wait_for_start_returns_running_state(client, run_worker):
    def wfs_orch(ctx: task.OrchestrationContext, _):
        v = yield ctx.wait_for_external_event("go")
        return v

    with run_worker(orchestrators=[wfs_orch]):
        iid = client.schedule_new_orchestration(wfs_orch, input="in")
        st = client.wait_for_orchestration_start(iid, timeout=TIMEOUT, fetch_payloads=True)
        assert st is not None
        assert st.instance_id == iid
        assert st.runtime_status == OrchestrationStatus.RUNNING
        assert st.get_input() == "in"
        client.raise_orchestration_event(iid, "go", data=1)
        done = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert done is not None and done.get_output() == 1


def test_wait_for_completion_timeout_raises(client, run_worker):
    def never_ending_orch(ctx: task.OrchestrationContext, _):
        yield ctx.wait_for_external_event("never")

    with run_worker(orchestrators=[never_ending_orch]):
        iid = client.schedule_new_orchestration(never_ending_orch)
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            client.wait_for_orchestration_completion(iid, timeout=2)
        elapsed = time.monotonic() - t0
        assert 1.5 <= elapsed < 10, f"timeout of 2s took {elapsed:.2f}s"
        # the wait must not have changed the instance
        st = client.get_orchestration_state(iid)
        assert st is not None and st.runtime_status == OrchestrationStatus.RUNNING
        client.terminate_orchestration(iid)
        st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert st is not None and st.runtime_status == OrchestrationStatus.TERMINATED


def test_wait_for_start_timeout_raises_when_no_worker(client, run_worker):
    def wfs_noworker_orch(ctx: task.OrchestrationContext, _):
        return "ran"

    iid = client.schedule_new_orchestration(wfs_noworker_orch)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        client.wait_for_orchestration_start(iid, timeout=2)
    assert time.monotonic() - t0 < 10
    st = client.get_orchestration_state(iid)
    assert st is not None and st.runtime_status == OrchestrationStatus.PENDING

    with run_worker(orchestrators=[wfs_noworker_orch]):
        st = client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        assert st is not None
        assert st.runtime_status in (OrchestrationStatus.RUNNING, OrchestrationStatus.COMPLETED)
        done = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert done is not None and done.get_output() == "ran"


def test_wait_for_completion_of_already_completed_returns_immediately(client, run_worker):
    def quick_orch(ctx: task.OrchestrationContext, _):
        return 5

    with run_worker(orchestrators=[quick_orch]):
        iid = client.schedule_new_orchestration(quick_orch)
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    t0 = time.monotonic()
    st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert time.monotonic() - t0 < 5
    assert st is not None and st.get_output() == 5


@pytest.mark.duro_only  # not implemented by the in-memory reference backend
def test_scheduled_start_time(client, run_worker):
    def sched_orch(ctx: task.OrchestrationContext, _):
        return ctx.current_utc_datetime.isoformat()

    delay = 4.0
    with run_worker(orchestrators=[sched_orch]):
        start_at = datetime.now(timezone.utc) + timedelta(seconds=delay)
        iid = client.schedule_new_orchestration(sched_orch, start_at=start_at)
        t0 = time.monotonic()
        st = client.get_orchestration_state(iid)
        assert st is not None and st.runtime_status == OrchestrationStatus.PENDING

        with pytest.raises(TimeoutError):
            client.wait_for_orchestration_start(iid, timeout=1)
        # stays PENDING until shortly before the scheduled time
        assert_stays(lambda: client.get_orchestration_state(iid).runtime_status == OrchestrationStatus.PENDING,
                     duration=max(0.0, delay - 1.0 - (time.monotonic() - t0)),
                     message="PENDING before the scheduled start time")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        elapsed = time.monotonic() - t0

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert elapsed >= delay - 0.5, f"started after {elapsed:.2f}s, scheduled for {delay}s"
    ran_at = datetime.fromisoformat(state.get_output()).replace(tzinfo=timezone.utc)
    assert ran_at >= start_at - timedelta(milliseconds=500)


def test_duplicate_instance_id_of_running_orchestration_is_rejected(client, run_worker):
    def dup_orch(ctx: task.OrchestrationContext, inp):
        v = yield ctx.wait_for_external_event("go")
        return [inp, v]

    iid = new_id("dup")
    with run_worker(orchestrators=[dup_orch]):
        assert client.schedule_new_orchestration(dup_orch, input="first", instance_id=iid) == iid
        wait_for_status(client, iid, [OrchestrationStatus.RUNNING])
        with pytest.raises(grpc.RpcError) as ei:
            client.schedule_new_orchestration(dup_orch, input="second", instance_id=iid)
        assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS, ei.value
        # the running instance is untouched
        client.raise_orchestration_event(iid, "go", data="ev")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == ["first", "ev"]


def test_duplicate_instance_id_of_pending_orchestration_is_rejected(client, run_worker):
    def dup_pending_orch(ctx: task.OrchestrationContext, inp):
        return inp

    iid = new_id("dup-pending")
    client.schedule_new_orchestration(dup_pending_orch, instance_id=iid, input=1)
    with pytest.raises(grpc.RpcError) as ei:
        client.schedule_new_orchestration(dup_pending_orch, instance_id=iid, input=2)
    assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS, ei.value
    st = client.get_orchestration_state(iid)
    assert st is not None and st.get_input() == 1
    with run_worker(orchestrators=[dup_pending_orch]):
        done = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert done is not None and done.get_output() == 1


def test_reuse_policy_replaces_completed_instance(client, run_worker):
    def reuse_orch(ctx: task.OrchestrationContext, inp):
        return f"run:{inp}"

    iid = new_id("reuse")
    policy = pb.OrchestrationIdReusePolicy(replaceableStatus=[
        pb.ORCHESTRATION_STATUS_COMPLETED, pb.ORCHESTRATION_STATUS_FAILED,
        pb.ORCHESTRATION_STATUS_TERMINATED])
    with run_worker(orchestrators=[reuse_orch]):
        client.schedule_new_orchestration(reuse_orch, input=1, instance_id=iid)
        first = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert first is not None and first.get_output() == "run:1"

        assert client.schedule_new_orchestration(reuse_orch, input=2, instance_id=iid,
                                                 reuse_id_policy=policy) == iid
        second = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert second is not None
    assert second.runtime_status == OrchestrationStatus.COMPLETED
    assert second.get_input() == 2
    assert second.get_output() == "run:2"


def test_reuse_policy_without_running_status_rejects_running_instance(client, run_worker):
    def reuse_running_orch(ctx: task.OrchestrationContext, inp):
        v = yield ctx.wait_for_external_event("go")
        return [inp, v]

    iid = new_id("reuse-running")
    policy = pb.OrchestrationIdReusePolicy(replaceableStatus=[
        pb.ORCHESTRATION_STATUS_COMPLETED, pb.ORCHESTRATION_STATUS_FAILED])
    with run_worker(orchestrators=[reuse_running_orch]):
        client.schedule_new_orchestration(reuse_running_orch, input="a", instance_id=iid)
        wait_for_status(client, iid, [OrchestrationStatus.RUNNING])
        with pytest.raises(grpc.RpcError) as ei:
            client.schedule_new_orchestration(reuse_running_orch, input="b", instance_id=iid,
                                              reuse_id_policy=policy)
        assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS, ei.value
        client.raise_orchestration_event(iid, "go", data=0)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None and state.get_output() == ["a", 0]


def test_raise_event_to_unknown_instance_fails(client):
    with pytest.raises(grpc.RpcError) as ei:
        client.raise_orchestration_event(new_id("nobody"), "ev", data=1)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND, ei.value


def test_reuse_policy_replacing_live_instances_must_list_terminated(client, run_worker):
    # Replacing a live instance terminates it, so a replaceableStatus list that allows live
    # statuses but excludes TERMINATED is contradictory: refused as the managed scheduler does.
    def reuse_contradiction_orch(ctx: task.OrchestrationContext, inp):
        v = yield ctx.wait_for_external_event("go")
        return [inp, v]

    iid = new_id("reuse-contradiction")
    contradictory = pb.OrchestrationIdReusePolicy(replaceableStatus=[
        pb.ORCHESTRATION_STATUS_COMPLETED, pb.ORCHESTRATION_STATUS_FAILED,
        pb.ORCHESTRATION_STATUS_CANCELED, pb.ORCHESTRATION_STATUS_SUSPENDED])
    with run_worker(orchestrators=[reuse_contradiction_orch]):
        client.schedule_new_orchestration(reuse_contradiction_orch, input="a", instance_id=iid)
        wait_for_status(client, iid, [OrchestrationStatus.RUNNING])
        client.suspend_orchestration(iid)
        wait_for_status(client, iid, [OrchestrationStatus.SUSPENDED])
        with pytest.raises(grpc.RpcError) as ei:
            client.schedule_new_orchestration(reuse_contradiction_orch, input="b", instance_id=iid,
                                              reuse_id_policy=contradictory)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value
        assert ei.value.details() == ("Invalid reusable statuses: cannot exclude 'Terminated' "
                                      "while also allowing reuse of running instances")
        st = client.get_orchestration_state(iid)
        assert st is not None and st.runtime_status == OrchestrationStatus.SUSPENDED
        assert st.get_input() == "a"

        # With TERMINATED listed the same replacement is consistent and happens.
        consistent = pb.OrchestrationIdReusePolicy(replaceableStatus=[
            pb.ORCHESTRATION_STATUS_SUSPENDED, pb.ORCHESTRATION_STATUS_TERMINATED])
        client.schedule_new_orchestration(reuse_contradiction_orch, input="c", instance_id=iid,
                                          reuse_id_policy=consistent)
        wait_for_status(client, iid, [OrchestrationStatus.RUNNING])
        client.raise_orchestration_event(iid, "go", data=1)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None and state.get_output() == ["c", 1]
