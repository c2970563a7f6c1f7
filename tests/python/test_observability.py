"""Operations endpoints under a workload run by the official SDK: /metrics counts exactly the
work items the SDK's worker ran, /stats agrees, /readyz and /healthz answer."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import harness
import pytest
from durabletask import task
from durabletask.client import OrchestrationStatus

TIMEOUT = 30
FAN_OUT = 5
RUNS = 3


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _sample(text: str, line_start: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line[len(line_start) + 1:].split(" ")[0])
    return None


@pytest.mark.duro_only
def test_metrics_count_what_the_official_sdk_ran(tmp_path: Path):
    if harness.backend_kind() == "inmemory":
        pytest.skip("needs a real duro")
    http_port = harness.free_port()
    sc = harness.SidecarProcess(db_path=tmp_path / "duro.db", log_path=tmp_path / "duro.log",
                                extra_args=["--http-listen", f"127.0.0.1:{http_port}"])
    sc.start()
    try:
        assert _get(http_port, "/healthz") == (200, '{"status":"alive"}')
        status, body = _get(http_port, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True, body

        def obs_square(ctx: task.ActivityContext, x: int) -> int:
            return x * x

        def obs_fan_out(ctx: task.OrchestrationContext, n: int):
            results = yield task.when_all([ctx.call_activity(obs_square, input=i) for i in range(n)])
            return sum(results)

        c = harness.make_client(sc.address)
        with harness.running_worker(sc.address, orchestrators=[obs_fan_out], activities=[obs_square]):
            ids = [c.schedule_new_orchestration(obs_fan_out, input=FAN_OUT) for _ in range(RUNS)]
            for iid in ids:
                state = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
                assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED
                assert state.serialized_output == str(sum(i * i for i in range(FAN_OUT)))
            status, text = _get(http_port, "/metrics")
            assert status == 200, text
        activities = RUNS * FAN_OUT
        expected = {
            'duro_work_items_dispatched_total{kind="activity",name="obs_square"}': activities,
            'duro_work_items_completed_total{kind="activity",name="obs_square",outcome="ok"}': activities,
            'duro_activity_duration_seconds_count{name="obs_square"}': activities,
            'duro_instances{status="completed"}': RUNS,
            'duro_queue_depth{kind="activity"}': 0,
            "duro_worker_streams": 1,
        }
        for line, want in expected.items():
            assert _sample(text, line) == want, f"{line} in\n{text}"
        # Fan-in: results arrive while turns run, so a run takes 2 to FAN_OUT + 1 turns; every
        # turn sent is answered.
        turns = _sample(text, 'duro_work_items_dispatched_total{kind="orchestration",name="obs_fan_out"}')
        assert turns is not None and 2 * RUNS <= turns <= (FAN_OUT + 1) * RUNS, text
        assert _sample(text, 'duro_work_items_completed_total{kind="orchestration",name="obs_fan_out",outcome="ok"}') \
            == turns
        assert re.search(r"^# TYPE duro_store_commit_duration_seconds histogram$", text, re.M)

        status, body = _get(http_port, "/stats")
        stats = json.loads(body)
        assert status == 200
        assert stats["instances"]["completed"] == RUNS
        assert stats["completed"]["activity"] == activities
        assert stats["dispatched"]["orchestration"] == turns
    finally:
        sc.stop()
