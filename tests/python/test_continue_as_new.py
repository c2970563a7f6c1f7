"""continue_as_new: eternal-style loops, carried-over events."""

from __future__ import annotations

from datetime import timedelta

from durabletask import task
from durabletask.client import OrchestrationStatus
from harness import wait_for_custom_status, wait_for_status

TIMEOUT = 30


def test_continue_as_new_counter(client, run_worker):
    def can_counter_orch(ctx: task.OrchestrationContext, state: dict):
        if state["n"] < state["limit"]:
            ctx.continue_as_new({"n": state["n"] + 1, "limit": state["limit"]})
            return None
        return {"final": state["n"], "instance": ctx.instance_id}

    with run_worker(orchestrators=[can_counter_orch]):
        iid = client.schedule_new_orchestration(can_counter_orch, input={"n": 0, "limit": 10})
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == {"final": 10, "instance": iid}
    # The instance keeps its id; its input is the one of the last generation.
    assert state.instance_id == iid
    assert state.get_input() == {"n": 10, "limit": 10}


def test_continue_as_new_with_activity_and_timer_each_generation(client, run_worker):
    def can_work_act(_: task.ActivityContext, x: int) -> int:
        return x + 10

    def can_work_orch(ctx: task.OrchestrationContext, acc: list):
        if len(acc) >= 4:
            return acc
        v = yield ctx.call_activity(can_work_act, input=len(acc))
        yield ctx.create_timer(timedelta(milliseconds=100))
        ctx.continue_as_new(acc + [v])

    with run_worker(orchestrators=[can_work_orch], activities=[can_work_act]):
        iid = client.schedule_new_orchestration(can_work_orch, input=[])
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == [10, 11, 12, 13]


def test_continue_as_new_save_events_keeps_unprocessed_events(client, run_worker):
    def can_events_orch(ctx: task.OrchestrationContext, received: list):
        v = yield ctx.wait_for_external_event("item")
        received = received + [v]
        if len(received) < 5:
            ctx.continue_as_new(received, save_events=True)
            return None
        return received

    with run_worker(orchestrators=[can_events_orch]):
        iid = client.schedule_new_orchestration(can_events_orch, input=[])
        # Raise all events at once: most arrive while an earlier generation is still
        # running and must be carried into the next generation, in order.
        for i in range(5):
            client.raise_orchestration_event(iid, "item", data=i)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == [0, 1, 2, 3, 4]


def test_continue_as_new_events_raised_between_generations(client, run_worker):
    """Events raised one at a time while the loop is waiting are each handled by a fresh generation."""
    def can_serial_orch(ctx: task.OrchestrationContext, total: int):
        ctx.set_custom_status({"total": total})
        v = yield ctx.wait_for_external_event("add")
        if v is None:
            return total
        ctx.continue_as_new(total + v, save_events=True)

    with run_worker(orchestrators=[can_serial_orch]):
        iid = client.schedule_new_orchestration(can_serial_orch, input=0)
        expected = 0
        for v in (5, 7, 11):
            client.raise_orchestration_event(iid, "add", data=v)
            expected += v
            # wait until that generation has started and published its total
            wait_for_custom_status(client, iid, {"total": expected})
            st = wait_for_status(client, iid, [OrchestrationStatus.RUNNING])
            assert st.get_input() == expected
        client.raise_orchestration_event(iid, "add", data=None)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == 23
