"""Basic orchestration + activity semantics: empty orchestration, chaining, fan-out/fan-in,
failures, retries, payload round-trips and history."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from durabletask import history, task
from durabletask.client import OrchestrationStatus
from harness import wait_for_status

TIMEOUT = 30


def test_empty_orchestration(client, run_worker):
    calls = []

    def empty_orch(ctx: task.OrchestrationContext, _):
        calls.append(ctx.instance_id)

    with run_worker(orchestrators=[empty_orch]):
        iid = client.schedule_new_orchestration(empty_orch)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.instance_id == iid
    assert state.name == "empty_orch"
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.failure_details is None
    assert state.serialized_input is None
    assert state.serialized_output is None
    assert state.serialized_custom_status is None
    assert iid in calls
    assert state.created_at <= state.last_updated_at


def test_input_output_roundtrip(client, run_worker):
    payload = {"text": "héllo wörld ✓ 日本", "n": 42, "f": 1.5, "nested": {"list": [1, None, True]},
               "quote": "a \"quoted\" \\ string\n"}

    def echo_orch(ctx: task.OrchestrationContext, inp):
        return {"received": inp, "instance": ctx.instance_id}

    with run_worker(orchestrators=[echo_orch]):
        iid = client.schedule_new_orchestration(echo_orch, input=payload)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.get_input() == payload
    assert state.get_output() == {"received": payload, "instance": iid}


def test_activity_sequence(client, run_worker):
    def seq_add_suffix(_: task.ActivityContext, s: str) -> str:
        return s + "!"

    def seq_double(_: task.ActivityContext, n: int) -> int:
        return n * 2

    def seq_orch(ctx: task.OrchestrationContext, start: int):
        values = [start]
        cur = start
        for _ in range(5):
            cur = yield ctx.call_activity(seq_double, input=cur)
            values.append(cur)
        text = yield ctx.call_activity(seq_add_suffix, input=f"total={sum(values)}")
        return {"values": values, "text": text}

    with run_worker(orchestrators=[seq_orch], activities=[seq_double, seq_add_suffix]):
        iid = client.schedule_new_orchestration(seq_orch, input=3)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_input() == 3
    assert state.get_output() == {"values": [3, 6, 12, 24, 48, 96], "text": "total=189!"}


def test_activity_context_ids(client, run_worker):
    def ctx_info_act(actx: task.ActivityContext, _):
        return {"orchestration_id": actx.orchestration_id, "task_id": actx.task_id}

    def ctx_info_orch(ctx: task.OrchestrationContext, _):
        a = yield ctx.call_activity(ctx_info_act)
        b = yield ctx.call_activity(ctx_info_act)
        return [a, b]

    with run_worker(orchestrators=[ctx_info_orch], activities=[ctx_info_act]):
        iid = client.schedule_new_orchestration(ctx_info_orch)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED
    a, b = state.get_output()
    assert a["orchestration_id"] == iid and b["orchestration_id"] == iid
    assert a["task_id"] != b["task_id"]


def test_fan_out_fan_in(client, run_worker):
    lock = threading.Lock()
    seen: list[int] = []

    def fan_square(_: task.ActivityContext, n: int) -> int:
        with lock:
            seen.append(n)
        return n * n

    def fan_orch(ctx: task.OrchestrationContext, count: int):
        tasks = [ctx.call_activity(fan_square, input=i) for i in range(count)]
        results = yield task.when_all(tasks)
        return {"sum": sum(results), "results": results}

    n = 40
    with run_worker(orchestrators=[fan_orch], activities=[fan_square]):
        iid = client.schedule_new_orchestration(fan_orch, input=n)
        state = client.wait_for_orchestration_completion(iid, timeout=60)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    out = state.get_output()
    # when_all preserves task order regardless of completion order
    assert out["results"] == [i * i for i in range(n)]
    assert out["sum"] == sum(i * i for i in range(n))
    assert sorted(seen) == list(range(n)), "every activity must run exactly once"


def test_activity_failure_fails_orchestration(client, run_worker):
    def fail_boom(_: task.ActivityContext, what: str):
        raise ValueError(f"boom: {what}")

    def fail_orch(ctx: task.OrchestrationContext, _):
        yield ctx.call_activity(fail_boom, input="disk on fire")
        return "unreachable"

    with run_worker(orchestrators=[fail_orch], activities=[fail_boom]):
        iid = client.schedule_new_orchestration(fail_orch)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.serialized_output is None
    fd = state.failure_details
    assert fd is not None
    # The orchestration fails with the SDK's TaskFailedError wrapping the activity's error.
    assert fd.error_type == "durabletask.task.TaskFailedError"
    assert "boom: disk on fire" in fd.message
    assert fd.stack_trace


def test_activity_failure_caught_by_orchestration(client, run_worker):
    def caught_boom(_: task.ActivityContext, _2):
        raise KeyError("missing-thing")

    def caught_compensate(_: task.ActivityContext, n: int) -> str:
        return f"compensated-{n}"

    def caught_orch(ctx: task.OrchestrationContext, _):
        try:
            yield ctx.call_activity(caught_boom)
            return {"ok": True}
        except task.TaskFailedError as e:
            comp = yield ctx.call_activity(caught_compensate, input=1)
            return {"ok": False, "error_type": e.details.error_type, "message": e.details.message,
                    "comp": comp}

    with run_worker(orchestrators=[caught_orch], activities=[caught_boom, caught_compensate]):
        iid = client.schedule_new_orchestration(caught_orch)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    out = state.get_output()
    assert out["ok"] is False
    assert out["error_type"].endswith("KeyError")
    assert "missing-thing" in out["message"]
    assert out["comp"] == "compensated-1"


def test_activity_retry_policy_eventually_succeeds(client, run_worker):
    lock = threading.Lock()
    attempts: list[int] = []

    def retry_flaky(_: task.ActivityContext, succeed_on: int) -> str:
        with lock:
            attempts.append(1)
            n = len(attempts)
        if n < succeed_on:
            raise RuntimeError(f"transient failure #{n}")
        return f"succeeded on attempt {n}"

    policy = task.RetryPolicy(first_retry_interval=timedelta(milliseconds=500),
                              max_number_of_attempts=5, backoff_coefficient=1.0)

    def retry_orch(ctx: task.OrchestrationContext, succeed_on: int):
        result = yield ctx.call_activity(retry_flaky, input=succeed_on, retry_policy=policy)
        return result

    with run_worker(orchestrators=[retry_orch], activities=[retry_flaky]):
        iid = client.schedule_new_orchestration(retry_orch, input=3)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.get_output() == "succeeded on attempt 3"
    assert len(attempts) == 3


def test_activity_retry_policy_exhausted(client, run_worker):
    lock = threading.Lock()
    attempts: list[int] = []

    def exhaust_always_fails(_: task.ActivityContext, _2):
        with lock:
            attempts.append(1)
        raise RuntimeError("still broken")

    policy = task.RetryPolicy(first_retry_interval=timedelta(milliseconds=300),
                              max_number_of_attempts=3, backoff_coefficient=2.0,
                              max_retry_interval=timedelta(seconds=2))

    def exhaust_orch(ctx: task.OrchestrationContext, _):
        yield ctx.call_activity(exhaust_always_fails, retry_policy=policy)

    with run_worker(orchestrators=[exhaust_orch], activities=[exhaust_always_fails]):
        iid = client.schedule_new_orchestration(exhaust_orch)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.failure_details is not None
    assert "still broken" in state.failure_details.message
    assert len(attempts) == 3


def test_activity_no_worker_serves_waits_for_one(client, run_worker):
    """A worker that sends no work-item filters answers "not registered" for an activity it
    lacks; Duro routes the activity away from it and it waits for a worker that serves it,
    instead of failing the orchestration."""
    def elsewhere_activity(_: task.ActivityContext, x: int) -> int:
        return x * 10

    def elsewhere_orch(ctx: task.OrchestrationContext, x: int):
        return (yield ctx.call_activity("elsewhere_activity", input=x))

    with run_worker(orchestrators=[elsewhere_orch]):
        iid = client.schedule_new_orchestration(elsewhere_orch, input=4)
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        time.sleep(2)
        state = client.get_orchestration_state(iid)
        assert state is not None
        assert state.runtime_status == OrchestrationStatus.RUNNING, state.failure_details
        with run_worker(activities=[elsewhere_activity]):
            state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.serialized_output == "40"


def test_orchestrator_exception_fails_orchestration(client, run_worker):
    def raising_orch(ctx: task.OrchestrationContext, _):
        raise ValueError("orchestrator code is broken")

    with run_worker(orchestrators=[raising_orch]):
        iid = client.schedule_new_orchestration(raising_orch)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.failure_details is not None
    assert state.failure_details.error_type.endswith("ValueError")
    assert state.failure_details.message == "orchestrator code is broken"


def test_pending_until_a_worker_connects(client, run_worker):
    def late_worker_act(_: task.ActivityContext, x: int) -> int:
        return x + 1

    def late_worker_orch(ctx: task.OrchestrationContext, x: int):
        y = yield ctx.call_activity(late_worker_act, input=x)
        return y

    iid = client.schedule_new_orchestration(late_worker_orch, input=41)
    state = client.get_orchestration_state(iid)
    assert state is not None
    assert state.runtime_status == OrchestrationStatus.PENDING
    assert state.name == "late_worker_orch"
    assert state.get_input() == 41

    with run_worker(orchestrators=[late_worker_orch], activities=[late_worker_act]):
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.get_output() == 42


def test_orchestration_history(client, run_worker):
    def hist_act(_: task.ActivityContext, x: int) -> int:
        return x * 10

    def hist_orch(ctx: task.OrchestrationContext, x: int):
        y = yield ctx.call_activity(hist_act, input=x)
        return y

    with run_worker(orchestrators=[hist_orch], activities=[hist_act]):
        iid = client.schedule_new_orchestration(hist_orch, input=4)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert state is not None and state.get_output() == 40
        events = client.get_orchestration_history(iid)

    kinds = [type(e) for e in events]
    assert history.ExecutionStartedEvent in kinds
    assert history.TaskScheduledEvent in kinds
    assert history.TaskCompletedEvent in kinds
    assert history.ExecutionCompletedEvent in kinds
    # causal order
    assert kinds.index(history.ExecutionStartedEvent) < kinds.index(history.TaskScheduledEvent) \
        < kinds.index(history.TaskCompletedEvent) < kinds.index(history.ExecutionCompletedEvent)
    started = next(e for e in events if isinstance(e, history.ExecutionStartedEvent))
    assert started.name == "hist_orch"


def test_wait_for_status_helper_sanity(client, run_worker):
    """get_orchestration_state observes RUNNING while an orchestration awaits an event."""
    def running_probe_orch(ctx: task.OrchestrationContext, _):
        v = yield ctx.wait_for_external_event("go")
        return v

    with run_worker(orchestrators=[running_probe_orch]):
        iid = client.schedule_new_orchestration(running_probe_orch)
        st = wait_for_status(client, iid, [OrchestrationStatus.RUNNING])
        assert st.runtime_status == OrchestrationStatus.RUNNING
        client.raise_orchestration_event(iid, "go", data="went")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None and state.get_output() == "went"


def test_orchestrator_no_worker_serves_waits_for_one(client, run_worker):
    """Same routing rule for orchestrators: a filterless worker lacking the orchestrator
    does not fail it; the turn waits for a worker that has it."""
    def unrelated_orch(ctx: task.OrchestrationContext, _):
        return "unrelated"

    def served_later_orch(ctx: task.OrchestrationContext, x: int):
        return x + 1

    with run_worker(orchestrators=[unrelated_orch]):
        iid = client.schedule_new_orchestration("served_later_orch", input=1)
        time.sleep(2)
        state = client.get_orchestration_state(iid)
        assert state is not None
        assert state.runtime_status == OrchestrationStatus.PENDING, state.failure_details
        with run_worker(orchestrators=[served_later_orch]):
            state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)

    assert state is not None
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.serialized_output == "2"
