"""Durable timers: relative and absolute fire times, timers in the past, races with events."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from durabletask import task
from durabletask.client import OrchestrationStatus

TIMEOUT = 30


def _iso(dt: datetime) -> str:
    return dt.isoformat()


def test_short_timer(client, run_worker):
    def short_timer_orch(ctx: task.OrchestrationContext, seconds: float):
        before = ctx.current_utc_datetime
        fire_at = before + timedelta(seconds=seconds)
        yield ctx.create_timer(fire_at)
        return {"before": _iso(before), "fire_at": _iso(fire_at), "after": _iso(ctx.current_utc_datetime)}

    with run_worker(orchestrators=[short_timer_orch]):
        t0 = time.monotonic()
        iid = client.schedule_new_orchestration(short_timer_orch, input=2)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        elapsed = time.monotonic() - t0

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    out = state.get_output()
    before, fire_at, after = (datetime.fromisoformat(out[k]) for k in ("before", "fire_at", "after"))
    # The timer must not fire early: the replay that observes it runs at/after fire_at.
    assert after >= fire_at, out
    assert elapsed >= 1.9, f"timer of 2s completed after only {elapsed:.2f}s"
    assert elapsed < 15, f"timer of 2s took {elapsed:.2f}s"


def test_relative_timer_timedelta(client, run_worker):
    def rel_timer_orch(ctx: task.OrchestrationContext, _):
        start = ctx.current_utc_datetime
        yield ctx.create_timer(timedelta(seconds=1))
        yield ctx.create_timer(timedelta(seconds=1))
        return (ctx.current_utc_datetime - start).total_seconds()

    with run_worker(orchestrators=[rel_timer_orch]):
        iid = client.schedule_new_orchestration(rel_timer_orch)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() >= 2.0


def test_timer_in_the_past_fires_promptly(client, run_worker):
    def past_timer_orch(ctx: task.OrchestrationContext, _):
        yield ctx.create_timer(ctx.current_utc_datetime - timedelta(minutes=5))
        return "fired"

    with run_worker(orchestrators=[past_timer_orch]):
        t0 = time.monotonic()
        iid = client.schedule_new_orchestration(past_timer_orch)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        elapsed = time.monotonic() - t0

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == "fired"
    assert elapsed < 5, f"past-due timer took {elapsed:.2f}s to fire"


def test_parallel_timers_fire_in_order(client, run_worker):
    def par_timers_orch(ctx: task.OrchestrationContext, _):
        t3 = ctx.create_timer(timedelta(seconds=3))
        t1 = ctx.create_timer(timedelta(seconds=1))
        t2 = ctx.create_timer(timedelta(seconds=2))
        order = []
        pending = {"t1": t1, "t2": t2, "t3": t3}
        while pending:
            winner = yield task.when_any(list(pending.values()))
            for name, t in list(pending.items()):
                if t is winner:
                    order.append(name)
                    del pending[name]
        return order

    with run_worker(orchestrators=[par_timers_orch]):
        iid = client.schedule_new_orchestration(par_timers_orch)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == ["t1", "t2", "t3"]


def test_when_any_timer_wins_over_event(client, run_worker):
    def race_timer_orch(ctx: task.OrchestrationContext, _):
        ev = ctx.wait_for_external_event("approval")
        timer = ctx.create_timer(timedelta(seconds=2))
        winner = yield task.when_any([ev, timer])
        return "timeout" if winner is timer else f"approved:{ev.get_result()}"

    with run_worker(orchestrators=[race_timer_orch]):
        t0 = time.monotonic()
        iid = client.schedule_new_orchestration(race_timer_orch)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        elapsed = time.monotonic() - t0

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == "timeout"
    assert elapsed >= 1.9


def test_when_any_event_wins_over_timer(client, run_worker):
    def race_event_orch(ctx: task.OrchestrationContext, _):
        ev = ctx.wait_for_external_event("approval")
        timer = ctx.create_timer(timedelta(seconds=60))
        winner = yield task.when_any([ev, timer])
        if winner is ev:
            timer.cancel()
            return f"approved:{ev.get_result()}"
        return "timeout"

    with run_worker(orchestrators=[race_event_orch]):
        t0 = time.monotonic()
        iid = client.schedule_new_orchestration(race_event_orch)
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        client.raise_orchestration_event(iid, "approval", data="alice")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        elapsed = time.monotonic() - t0

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == "approved:alice"
    assert elapsed < 30, "the event must complete the orchestration without waiting for the 60s timer"
