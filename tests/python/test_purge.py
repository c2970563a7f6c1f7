"""Purging instance data: single instance, refusal for running instances, recursive, by filter."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import grpc
import pytest
from durabletask import task
from durabletask.client import OrchestrationStatus
from harness import new_id, wait_for_status

TIMEOUT = 30


def test_purge_completed_instance(client, run_worker):
    def purge_done_orch(ctx: task.OrchestrationContext, x: int):
        return x + 1

    with run_worker(orchestrators=[purge_done_orch]):
        iid = client.schedule_new_orchestration(purge_done_orch, input=1)
        st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert st is not None and st.runtime_status == OrchestrationStatus.COMPLETED

    result = client.purge_orchestration(iid)
    assert result.deleted_instance_count == 1
    assert result.is_complete in (None, True)
    assert client.get_orchestration_state(iid) is None

    # purging again finds nothing
    try:
        again = client.purge_orchestration(iid)
        assert again.deleted_instance_count == 0
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e


def test_purged_instance_id_can_be_reused(client, run_worker):
    def purge_reuse_orch(ctx: task.OrchestrationContext, x: int):
        return x * 2

    iid = new_id("purge-reuse")
    with run_worker(orchestrators=[purge_reuse_orch]):
        client.schedule_new_orchestration(purge_reuse_orch, input=1, instance_id=iid)
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert client.purge_orchestration(iid).deleted_instance_count == 1
        client.schedule_new_orchestration(purge_reuse_orch, input=21, instance_id=iid)
        st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert st is not None and st.runtime_status == OrchestrationStatus.COMPLETED
    assert st.get_output() == 42
    history = client.get_orchestration_history(iid)
    # only the new run's history remains
    started = [e for e in history if type(e).__name__ == "ExecutionStartedEvent"]
    assert len(started) == 1 and started[0].input == "21"


def test_purge_running_instance_is_refused(client, run_worker):
    def purge_running_orch(ctx: task.OrchestrationContext, _):
        v = yield ctx.wait_for_external_event("go")
        return v

    with run_worker(orchestrators=[purge_running_orch]):
        iid = client.schedule_new_orchestration(purge_running_orch)
        wait_for_status(client, iid, [OrchestrationStatus.RUNNING])
        try:
            res = client.purge_orchestration(iid)
            assert res.deleted_instance_count == 0
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        st = client.get_orchestration_state(iid)
        assert st is not None and st.runtime_status == OrchestrationStatus.RUNNING
        # and it still works afterwards
        client.raise_orchestration_event(iid, "go", data="still alive")
        done = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert done is not None and done.get_output() == "still alive"


def test_purge_unknown_instance(client):
    try:
        res = client.purge_orchestration(new_id("purge-unknown"))
        assert res.deleted_instance_count == 0
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e


@pytest.mark.duro_only  # not implemented by the in-memory reference backend
def test_purge_recursive_removes_sub_orchestrations(client, run_worker):
    def purge_rec_child(ctx: task.OrchestrationContext, x: int):
        return x

    def purge_rec_parent(ctx: task.OrchestrationContext, child_id: str):
        r = yield ctx.call_sub_orchestrator(purge_rec_child, input=7, instance_id=child_id)
        return r

    child_id = new_id("purge-child")
    with run_worker(orchestrators=[purge_rec_parent, purge_rec_child]):
        pid = client.schedule_new_orchestration(purge_rec_parent, input=child_id)
        st = client.wait_for_orchestration_completion(pid, timeout=TIMEOUT)
        assert st is not None and st.get_output() == 7
    assert client.get_orchestration_state(child_id) is not None

    res = client.purge_orchestration(pid, recursive=True)
    assert res.deleted_instance_count == 2
    assert client.get_orchestration_state(pid) is None
    assert client.get_orchestration_state(child_id) is None


def test_purge_by_filter(client, run_worker):
    def pf_ok_orch(ctx: task.OrchestrationContext, x: int):
        return x

    def pf_fail_orch(ctx: task.OrchestrationContext, _):
        raise RuntimeError("nope")

    def pf_wait_orch(ctx: task.OrchestrationContext, _):
        yield ctx.wait_for_external_event("go")

    window_start = datetime.now(timezone.utc) - timedelta(milliseconds=5)
    with run_worker(orchestrators=[pf_ok_orch, pf_fail_orch, pf_wait_orch]):
        ok_ids = [client.schedule_new_orchestration(pf_ok_orch, input=i) for i in range(3)]
        fail_id = client.schedule_new_orchestration(pf_fail_orch)
        wait_id = client.schedule_new_orchestration(pf_wait_orch)
        for iid in ok_ids + [fail_id]:
            client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        wait_for_status(client, wait_id, [OrchestrationStatus.RUNNING])
        window_end = datetime.now(timezone.utc) + timedelta(seconds=1)

        # Only COMPLETED instances created inside the window.
        res = client.purge_orchestrations_by(created_time_from=window_start, created_time_to=window_end,
                                             runtime_status=[OrchestrationStatus.COMPLETED])
        assert res.deleted_instance_count == 3
        for iid in ok_ids:
            assert client.get_orchestration_state(iid) is None
        assert client.get_orchestration_state(fail_id).runtime_status == OrchestrationStatus.FAILED
        assert client.get_orchestration_state(wait_id).runtime_status == OrchestrationStatus.RUNNING

        # Without a status filter only terminal instances are purged; the running one stays.
        res2 = client.purge_orchestrations_by(created_time_from=window_start, created_time_to=window_end)
        assert res2.deleted_instance_count == 1
        assert client.get_orchestration_state(fail_id) is None
        assert client.get_orchestration_state(wait_id).runtime_status == OrchestrationStatus.RUNNING

        client.terminate_orchestration(wait_id)
        client.wait_for_orchestration_completion(wait_id, timeout=TIMEOUT)


def test_purge_by_filter_outside_window_deletes_nothing(client, run_worker):
    def pf_window_orch(ctx: task.OrchestrationContext, _):
        return 1

    with run_worker(orchestrators=[pf_window_orch]):
        iid = client.schedule_new_orchestration(pf_window_orch)
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    future = datetime.now(timezone.utc) + timedelta(hours=1)
    res = client.purge_orchestrations_by(created_time_from=future,
                                         runtime_status=[OrchestrationStatus.COMPLETED])
    assert res.deleted_instance_count == 0
    assert client.get_orchestration_state(iid) is not None
