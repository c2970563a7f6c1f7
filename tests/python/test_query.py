"""Instance queries: get_all_orchestration_states (QueryInstances) and list_instance_ids."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import durabletask.internal.orchestrator_service_pb2 as pb
import durabletask.internal.orchestrator_service_pb2_grpc as stubs
import grpc
import pytest
from durabletask import task
from durabletask.client import OrchestrationQuery, OrchestrationStatus
from google.protobuf import wrappers_pb2
from harness import new_id, wait_for_status

TIMEOUT = 30


@pytest.fixture
def population(client, run_worker):
    """3 completed, 1 failed and 2 running instances sharing a unique id prefix."""
    prefix = new_id("q") + "-"

    def q_ok_orch(ctx: task.OrchestrationContext, x: int):
        return x * 100

    def q_fail_orch(ctx: task.OrchestrationContext, _):
        raise RuntimeError("query-fail")

    def q_wait_orch(ctx: task.OrchestrationContext, _):
        v = yield ctx.wait_for_external_event("go")
        return v

    t_before = datetime.now(timezone.utc) - timedelta(milliseconds=5)
    with run_worker(orchestrators=[q_ok_orch, q_fail_orch, q_wait_orch]):
        ids = {"completed": [], "failed": [], "running": []}
        for i in range(3):
            ids["completed"].append(client.schedule_new_orchestration(
                q_ok_orch, input=i, instance_id=f"{prefix}ok-{i}"))
        ids["failed"].append(client.schedule_new_orchestration(q_fail_orch, instance_id=f"{prefix}fail-0"))
        for i in range(2):
            ids["running"].append(client.schedule_new_orchestration(
                q_wait_orch, input=i, instance_id=f"{prefix}wait-{i}"))
        for iid in ids["completed"] + ids["failed"]:
            client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        for iid in ids["running"]:
            wait_for_status(client, iid, [OrchestrationStatus.RUNNING])
        t_after = datetime.now(timezone.utc) + timedelta(milliseconds=5)

        yield {"prefix": prefix, "ids": ids, "t_before": t_before, "t_after": t_after}

        for iid in ids["running"]:
            client.terminate_orchestration(iid)
        for iid in ids["running"]:
            client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)


def _all_ids(p):
    return sorted(sum(p["ids"].values(), []))


def test_query_by_instance_id_prefix(client, population):
    states = client.get_all_orchestration_states(OrchestrationQuery(instance_id_prefix=population["prefix"]))
    assert sorted(s.instance_id for s in states) == _all_ids(population)
    by_id = {s.instance_id: s for s in states}
    for iid in population["ids"]["completed"]:
        assert by_id[iid].runtime_status == OrchestrationStatus.COMPLETED
        assert by_id[iid].name == "q_ok_orch"
    assert by_id[population["ids"]["failed"][0]].runtime_status == OrchestrationStatus.FAILED
    assert by_id[population["ids"]["failed"][0]].failure_details is not None
    for iid in population["ids"]["running"]:
        assert by_id[iid].runtime_status == OrchestrationStatus.RUNNING


def test_query_by_runtime_status(client, population):
    prefix = population["prefix"]
    running = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, runtime_status=[OrchestrationStatus.RUNNING]))
    assert sorted(s.instance_id for s in running) == sorted(population["ids"]["running"])

    terminal = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix,
        runtime_status=[OrchestrationStatus.COMPLETED, OrchestrationStatus.FAILED]))
    assert sorted(s.instance_id for s in terminal) == sorted(
        population["ids"]["completed"] + population["ids"]["failed"])

    none = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, runtime_status=[OrchestrationStatus.SUSPENDED]))
    assert none == []


def test_query_by_created_time(client, population):
    prefix = population["prefix"]
    inside = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, created_time_from=population["t_before"],
        created_time_to=population["t_after"]))
    assert sorted(s.instance_id for s in inside) == _all_ids(population)

    later = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, created_time_from=population["t_after"] + timedelta(seconds=1)))
    assert later == []

    earlier = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, created_time_to=population["t_before"]))
    assert earlier == []

    # created_time filter without a prefix: everything in the window is ours
    window = client.get_all_orchestration_states(OrchestrationQuery(
        created_time_from=population["t_before"], created_time_to=population["t_after"]))
    assert set(_all_ids(population)) <= {s.instance_id for s in window}


def test_query_fetch_inputs_and_outputs(client, population):
    prefix = population["prefix"]
    with_payloads = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix + "ok-", fetch_inputs_and_outputs=True))
    assert sorted((s.get_input(), s.get_output()) for s in with_payloads) == [(0, 0), (1, 100), (2, 200)]

    without = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix + "ok-", fetch_inputs_and_outputs=False))
    assert len(without) == 3
    assert all(s.serialized_input is None and s.serialized_output is None for s in without)


def test_query_paging_with_continuation(client, population, sidecar):
    prefix = population["prefix"]
    # The client follows continuation tokens itself: all 6 come back in pages of 2.
    paged = client.get_all_orchestration_states(OrchestrationQuery(
        instance_id_prefix=prefix, max_instance_count=2))
    assert sorted(s.instance_id for s in paged) == _all_ids(population)

    # Check the raw protocol: page size respected, token returned until exhausted, no duplicates.
    with grpc.insecure_channel(sidecar.address) as ch:
        stub = stubs.TaskHubSidecarServiceStub(ch)
        seen: list[str] = []
        token = None
        pages = 0
        while True:
            q = pb.InstanceQuery(
                instanceIdPrefix=wrappers_pb2.StringValue(value=prefix), maxInstanceCount=2,
                continuationToken=wrappers_pb2.StringValue(value=token) if token is not None else None)
            resp = stub.QueryInstances(pb.QueryInstancesRequest(query=q), timeout=10)
            pages += 1
            assert len(resp.orchestrationState) <= 2
            seen += [s.instanceId for s in resp.orchestrationState]
            if resp.HasField("continuationToken") and resp.continuationToken.value:
                token = resp.continuationToken.value
                assert pages < 10, "continuation never ends"
            else:
                break
    assert sorted(seen) == _all_ids(population)
    assert len(seen) == len(set(seen))
    assert pages >= 3


def test_list_instance_ids_paging(client, population):
    # list_instance_ids returns terminal instances only, ordered by completion time, paged.
    mine = set(population["ids"]["completed"] + population["ids"]["failed"])
    collected: list[str] = []
    token = None
    pages = 0
    while True:
        page = client.list_instance_ids(completed_time_from=population["t_before"], page_size=2,
                                        continuation_token=token)
        pages += 1
        assert len(page.items) <= 2
        collected += page.items
        token = page.continuation_token
        if not token:
            break
        assert pages < 50
    assert mine <= set(collected)
    assert not set(population["ids"]["running"]) & set(collected), "running instances are not terminal"
    assert len(collected) == len(set(collected))

    failed_only = client.list_instance_ids(runtime_status=[OrchestrationStatus.FAILED],
                                              completed_time_from=population["t_before"], page_size=100)
    assert population["ids"]["failed"][0] in failed_only.items
    assert not mine.difference(population["ids"]["failed"]) & set(failed_only.items)


def test_query_page_exactly_full_is_the_last_page(client, population, sidecar):
    # 6 instances in pages of 3 (and one page of 6): the last full page carries no continuation
    # token, so a client following tokens never fetches an extra empty page.
    prefix = population["prefix"]
    with grpc.insecure_channel(sidecar.address) as ch:
        stub = stubs.TaskHubSidecarServiceStub(ch)
        for size, expected_pages in ((3, 2), (6, 1)):
            token = None
            pages: list[list[str]] = []
            while True:
                q = pb.InstanceQuery(
                    instanceIdPrefix=wrappers_pb2.StringValue(value=prefix), maxInstanceCount=size,
                    continuationToken=wrappers_pb2.StringValue(value=token) if token is not None else None)
                resp = stub.QueryInstances(pb.QueryInstancesRequest(query=q), timeout=10)
                pages.append([s.instanceId for s in resp.orchestrationState])
                if not (resp.HasField("continuationToken") and resp.continuationToken.value):
                    break
                token = resp.continuationToken.value
                assert len(pages) < 10, "continuation never ends"
            assert [len(p) for p in pages] == [size] * expected_pages, pages
            assert sorted(sum(pages, [])) == _all_ids(population)


def test_list_instance_ids_page_exactly_full_is_the_last_page(client, population):
    # As the official SDK's test_list_instance_ids_paginates_terminal_instances: two terminal
    # instances in pages of one give two pages, the second without a continuation token.
    window = dict(runtime_status=[OrchestrationStatus.FAILED, OrchestrationStatus.COMPLETED],
                  completed_time_from=population["t_before"], completed_time_to=population["t_after"])
    first = client.list_instance_ids(**window, page_size=2)
    second = client.list_instance_ids(**window, page_size=2, continuation_token=first.continuation_token)
    assert len(first.items) == 2 and len(second.items) == 2
    assert second.continuation_token is None, "a full last page must not promise another"
    assert set(first.items + second.items) == set(population["ids"]["completed"] + population["ids"]["failed"])

    failed = client.list_instance_ids(**{**window, "runtime_status": [OrchestrationStatus.FAILED]}, page_size=1)
    assert failed.items == population["ids"]["failed"]
    assert failed.continuation_token is None
