"""External events: buffering, ordering, timeouts, orchestration-to-orchestration events."""

from __future__ import annotations

from datetime import timedelta

from durabletask import task
from durabletask.client import OrchestrationStatus
from harness import wait_for_custom_status, wait_for_status

TIMEOUT = 30


def test_event_raised_before_orchestration_waits_is_buffered(client, run_worker):
    def buffered_act(_: task.ActivityContext, x: int) -> int:
        return x + 1

    def buffered_orch(ctx: task.OrchestrationContext, _):
        # Do some work first so that the event certainly arrives before the wait starts.
        a = yield ctx.call_activity(buffered_act, input=1)
        yield ctx.create_timer(timedelta(seconds=1))
        ev = yield ctx.wait_for_external_event("early")
        return [a, ev]

    with run_worker(orchestrators=[buffered_orch], activities=[buffered_act]):
        iid = client.schedule_new_orchestration(buffered_orch)
        client.raise_orchestration_event(iid, "early", data={"v": 7})
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == [2, {"v": 7}]


def test_event_raised_before_any_worker_runs(client, run_worker):
    def noworker_event_orch(ctx: task.OrchestrationContext, _):
        v = yield ctx.wait_for_external_event("ping")
        return v

    iid = client.schedule_new_orchestration(noworker_event_orch)
    client.raise_orchestration_event(iid, "ping", data="pong")
    with run_worker(orchestrators=[noworker_event_orch]):
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == "pong"


def test_several_events_same_name_delivered_in_order(client, run_worker):
    def ordered_events_orch(ctx: task.OrchestrationContext, count: int):
        got = []
        for _ in range(count):
            v = yield ctx.wait_for_external_event("item")
            got.append(v)
        return got

    with run_worker(orchestrators=[ordered_events_orch]):
        iid = client.schedule_new_orchestration(ordered_events_orch, input=6)
        for i in range(6):
            client.raise_orchestration_event(iid, "item", data=i)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == [0, 1, 2, 3, 4, 5]


def test_events_with_different_names(client, run_worker):
    def named_events_orch(ctx: task.OrchestrationContext, _):
        # wait in an order different from the order the events are raised
        c = yield ctx.wait_for_external_event("C")
        a = yield ctx.wait_for_external_event("A")
        b = yield ctx.wait_for_external_event("B")
        return [a, b, c]

    with run_worker(orchestrators=[named_events_orch]):
        iid = client.schedule_new_orchestration(named_events_orch)
        client.raise_orchestration_event(iid, "A", data="a")
        client.raise_orchestration_event(iid, "B", data="b")
        client.raise_orchestration_event(iid, "C", data="c")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == ["a", "b", "c"]


def test_event_without_payload(client, run_worker):
    def nopayload_orch(ctx: task.OrchestrationContext, _):
        v = yield ctx.wait_for_external_event("signal")
        return {"value": v}

    with run_worker(orchestrators=[nopayload_orch]):
        iid = client.schedule_new_orchestration(nopayload_orch)
        client.raise_orchestration_event(iid, "signal")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == {"value": None}


def _wait_with_timeout_orch(ctx: task.OrchestrationContext, timeout_s: float):
    ev = ctx.wait_for_external_event("reply")
    timer = ctx.create_timer(timedelta(seconds=timeout_s))
    winner = yield task.when_any([ev, timer])
    if winner is ev:
        timer.cancel()
        return {"timed_out": False, "reply": ev.get_result()}
    ev.cancel()
    return {"timed_out": True}


def test_wait_for_event_with_timeout_expires(client, run_worker):
    def evt_timeout_expire_orch(ctx, timeout_s):
        return (yield from _wait_with_timeout_orch(ctx, timeout_s))

    with run_worker(orchestrators=[evt_timeout_expire_orch]):
        iid = client.schedule_new_orchestration(evt_timeout_expire_orch, input=2)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == {"timed_out": True}


def test_wait_for_event_with_timeout_event_arrives(client, run_worker):
    def evt_timeout_arrive_orch(ctx, timeout_s):
        return (yield from _wait_with_timeout_orch(ctx, timeout_s))

    with run_worker(orchestrators=[evt_timeout_arrive_orch]):
        iid = client.schedule_new_orchestration(evt_timeout_arrive_orch, input=30)
        wait_for_status(client, iid, [OrchestrationStatus.RUNNING])
        client.raise_orchestration_event(iid, "reply", data=[1, 2])
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == {"timed_out": False, "reply": [1, 2]}


def test_event_after_timed_out_wait_reaches_later_wait(client, run_worker):
    """An event arriving after a wait timed out (and was cancelled) completes a later wait."""
    def late_evt_orch(ctx: task.OrchestrationContext, _):
        ev = ctx.wait_for_external_event("late")
        timer = ctx.create_timer(timedelta(seconds=1))
        first = yield task.when_any([ev, timer])
        first_result = "event" if first is ev else "timeout"
        if first is timer:
            ev.cancel()  # otherwise the abandoned wait would swallow the next "late" event
        ctx.set_custom_status("waiting-again")
        again = yield ctx.wait_for_external_event("late")
        return [first_result, again]

    with run_worker(orchestrators=[late_evt_orch]):
        iid = client.schedule_new_orchestration(late_evt_orch)
        wait_for_custom_status(client, iid, "waiting-again")
        client.raise_orchestration_event(iid, "late", data="finally")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == ["timeout", "finally"]


def test_send_event_between_orchestrations(client, run_worker):
    def se_receiver_orch(ctx: task.OrchestrationContext, _):
        first = yield ctx.wait_for_external_event("greeting")
        second = yield ctx.wait_for_external_event("greeting")
        return [first, second]

    def se_sender_orch(ctx: task.OrchestrationContext, target: str):
        ctx.send_event(target, "greeting", data={"from": ctx.instance_id})
        # replay after the send: the EventSent history must not resend it
        yield ctx.create_timer(timedelta(milliseconds=200))
        ctx.send_event(target, "greeting", data="second")
        return "sent"

    with run_worker(orchestrators=[se_receiver_orch, se_sender_orch]):
        rid = client.schedule_new_orchestration(se_receiver_orch)
        wait_for_status(client, rid, [OrchestrationStatus.RUNNING])
        sid = client.schedule_new_orchestration(se_sender_orch, input=rid)
        sstate = client.wait_for_orchestration_completion(sid, timeout=TIMEOUT)
        rstate = client.wait_for_orchestration_completion(rid, timeout=TIMEOUT)

    assert sstate is not None and sstate.runtime_status == OrchestrationStatus.COMPLETED
    assert sstate.get_output() == "sent"
    assert rstate is not None
    assert rstate.runtime_status == OrchestrationStatus.COMPLETED, rstate.failure_details
    assert rstate.get_output() == [{"from": sid}, "second"]


def test_send_event_to_missing_instance_is_dropped(client, run_worker):
    def se_missing_orch(ctx: task.OrchestrationContext, target: str):
        ctx.send_event(target, "nobody-listens", data=1)
        yield ctx.create_timer(timedelta(milliseconds=100))
        return "done"

    with run_worker(orchestrators=[se_missing_orch]):
        sid = client.schedule_new_orchestration(se_missing_orch, input="no-such-instance-xyz-123")
        state = client.wait_for_orchestration_completion(sid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == "done"
    assert client.get_orchestration_state("no-such-instance-xyz-123") is None
