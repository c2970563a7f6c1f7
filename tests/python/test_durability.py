"""Durability across sidecar restarts (same SQLite file), and graceful shutdown on SIGTERM.

Each test runs its own sidecar process (``isolated_sidecar``) so restarting it
does not disturb other tests."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import harness
import pytest
from durabletask import task
from durabletask.client import OrchestrationStatus
from harness import new_id, wait_for_custom_status, wait_for_status, wait_until

TIMEOUT = 30
pytestmark = pytest.mark.restarts


def test_sigterm_is_graceful(isolated_sidecar):
    sc = isolated_sidecar
    c = harness.make_client(sc.address)
    try:
        iid = c.schedule_new_orchestration("sigterm_probe_orch_unregistered")
        assert c.get_orchestration_state(iid) is not None
    finally:
        c.close()
    t0 = time.monotonic()
    rc = sc.stop(timeout=15)
    took = time.monotonic() - t0
    assert not sc.last_stop_was_kill, "duro did not exit within 15s of SIGTERM"
    assert rc == 0, f"duro exited with code {rc} on SIGTERM (expected a clean 0)"
    assert took < 15


def test_orchestrations_survive_restart(isolated_sidecar, run_worker):
    sc = isolated_sidecar
    lock = threading.Lock()
    calls: list[tuple[str, str]] = []

    def dur_record_act(actx: task.ActivityContext, phase: str) -> str:
        with lock:
            calls.append((actx.orchestration_id, phase))
        return f"{phase}-done"

    def dur_wait_orch(ctx: task.OrchestrationContext, n: int):
        before = yield ctx.call_activity(dur_record_act, input="before")
        ctx.set_custom_status("waiting")
        ev = yield ctx.wait_for_external_event("resume")
        after = yield ctx.call_activity(dur_record_act, input="after")
        ctx.set_custom_status("finished")
        return {"n": n, "before": before, "event": ev, "after": after}

    def dur_done_orch(ctx: task.OrchestrationContext, n: int):
        return n * 7

    c = harness.make_client(sc.address)
    try:
        with run_worker(address=sc.address, orchestrators=[dur_wait_orch, dur_done_orch],
                        activities=[dur_record_act]):
            waiting = [c.schedule_new_orchestration(dur_wait_orch, input=i, instance_id=new_id(f"dur{i}"))
                       for i in range(6)]
            done_id = c.schedule_new_orchestration(dur_done_orch, input=6)
            for iid in waiting:
                wait_for_custom_status(c, iid, "waiting")
            assert c.wait_for_orchestration_completion(done_id, timeout=TIMEOUT).get_output() == 42
            # events for half of them are raised before the restart while no worker is attached
        for iid in waiting[:3]:
            c.raise_orchestration_event(iid, "resume", data=f"pre-restart:{iid}")
        # the sidecar must have them durably stored: restart it on the same db
        rc = sc.restart()
        assert not sc.last_stop_was_kill, "duro did not shut down within the deadline on SIGTERM"
        assert rc == 0, f"duro exit code {rc} on SIGTERM"
    finally:
        c.close()

    c = harness.make_client(sc.address)
    try:
        # state is intact after the restart, before any worker connects
        for i, iid in enumerate(waiting):
            st = c.get_orchestration_state(iid)
            assert st is not None, f"{iid} lost across restart"
            assert st.runtime_status == OrchestrationStatus.RUNNING
            assert st.get_input() == i
            assert st.get_custom_status() == "waiting"
        done = c.get_orchestration_state(done_id)
        assert done is not None and done.runtime_status == OrchestrationStatus.COMPLETED
        assert done.get_output() == 42

        for iid in waiting[3:]:
            c.raise_orchestration_event(iid, "resume", data=f"post-restart:{iid}")
        with run_worker(address=sc.address, orchestrators=[dur_wait_orch, dur_done_orch],
                        activities=[dur_record_act]):
            states = {iid: c.wait_for_orchestration_completion(iid, timeout=TIMEOUT) for iid in waiting}
    finally:
        c.close()

    for i, iid in enumerate(waiting):
        st = states[iid]
        assert st is not None and st.runtime_status == OrchestrationStatus.COMPLETED, (iid, st)
        tag = "pre-restart" if i < 3 else "post-restart"
        assert st.get_output() == {"n": i, "before": "before-done", "event": f"{tag}:{iid}",
                                   "after": "after-done"}
        assert st.get_custom_status() == "finished"
    # activities that completed before the restart were not re-executed
    for iid in waiting:
        assert calls.count((iid, "before")) == 1, (iid, calls)
        assert calls.count((iid, "after")) == 1, (iid, calls)


def test_timer_survives_restart(isolated_sidecar, run_worker):
    sc = isolated_sidecar

    def dur_timer_orch(ctx: task.OrchestrationContext, seconds: int):
        fire_at = ctx.current_utc_datetime + timedelta(seconds=seconds)
        ctx.set_custom_status("timer-set")
        yield ctx.create_timer(fire_at)
        return {"fire_at": fire_at.isoformat(), "woke": ctx.current_utc_datetime.isoformat()}

    c = harness.make_client(sc.address)
    try:
        with run_worker(address=sc.address, orchestrators=[dur_timer_orch]):
            iid = c.schedule_new_orchestration(dur_timer_orch, input=4)
            wait_for_custom_status(c, iid, "timer-set")
        sc.restart()
    finally:
        c.close()

    c = harness.make_client(sc.address)
    try:
        with run_worker(address=sc.address, orchestrators=[dur_timer_orch]):
            st = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    finally:
        c.close()
    assert st is not None and st.runtime_status == OrchestrationStatus.COMPLETED, st
    out = st.get_output()
    assert out["woke"] >= out["fire_at"]


def test_pending_and_scheduled_instances_survive_restart(isolated_sidecar, run_worker):
    sc = isolated_sidecar

    def dur_pending_orch(ctx: task.OrchestrationContext, x: int):
        return x + 1

    c = harness.make_client(sc.address)
    try:
        iid = c.schedule_new_orchestration(dur_pending_orch, input=1)
        assert c.get_orchestration_state(iid).runtime_status == OrchestrationStatus.PENDING
        sc.restart()
    finally:
        c.close()
    c = harness.make_client(sc.address)
    try:
        st = c.get_orchestration_state(iid)
        assert st is not None and st.runtime_status == OrchestrationStatus.PENDING
        with run_worker(address=sc.address, orchestrators=[dur_pending_orch]):
            st = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    finally:
        c.close()
    assert st is not None and st.runtime_status == OrchestrationStatus.COMPLETED
    assert st.get_output() == 2


def test_connected_worker_reconnects_after_restart(isolated_sidecar, run_worker):
    """The same worker and client objects keep working across a sidecar restart
    (same port); work in flight at shutdown is not lost."""
    sc = isolated_sidecar
    release = threading.Event()
    lock = threading.Lock()
    act_runs: list[int] = []

    def recon_slow_act(_: task.ActivityContext, x: int) -> int:
        with lock:
            act_runs.append(x)
        release.wait(20)
        return x * 3

    def recon_orch(ctx: task.OrchestrationContext, x: int):
        a = yield ctx.call_activity(recon_slow_act, input=x)
        b = yield ctx.wait_for_external_event("more")
        return a + b

    c = harness.make_client(sc.address)
    try:
        with run_worker(address=sc.address, orchestrators=[recon_orch], activities=[recon_slow_act]):
            iid = c.schedule_new_orchestration(recon_orch, input=5)
            wait_until(lambda: act_runs, timeout=TIMEOUT, message="activity to start")
            sc.restart()          # activity still running inside the worker
            release.set()
            wait_for_status(c, iid, [OrchestrationStatus.RUNNING], timeout=TIMEOUT)

            def raise_when_possible():
                try:
                    c.raise_orchestration_event(iid, "more", data=100)
                    return True
                except Exception:  # channel may still be reconnecting
                    return False

            wait_until(raise_when_possible, timeout=TIMEOUT, interval=0.5, message="raise event after restart")
            st = c.wait_for_orchestration_completion(iid, timeout=60)
    finally:
        c.close()

    assert st is not None and st.runtime_status == OrchestrationStatus.COMPLETED, st
    assert st.get_output() == 115
    assert len(act_runs) >= 1


def test_sigkill_crash_recovery(isolated_sidecar, run_worker):
    """Even without a graceful shutdown, committed state survives (SQLite durability)."""
    sc = isolated_sidecar

    def crash_orch(ctx: task.OrchestrationContext, x: int):
        ctx.set_custom_status("waiting")
        v = yield ctx.wait_for_external_event("go")
        return x + v

    c = harness.make_client(sc.address)
    try:
        with run_worker(address=sc.address, orchestrators=[crash_orch]):
            iid = c.schedule_new_orchestration(crash_orch, input=10)
            wait_for_custom_status(c, iid, "waiting")
        c.raise_orchestration_event(iid, "go", data=5)
        sc.kill()
        sc.start()
    finally:
        c.close()
    c = harness.make_client(sc.address)
    try:
        with run_worker(address=sc.address, orchestrators=[crash_orch]):
            st = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    finally:
        c.close()
    assert st is not None and st.runtime_status == OrchestrationStatus.COMPLETED
    assert st.get_output() == 15
