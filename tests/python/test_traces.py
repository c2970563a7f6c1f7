"""One trace end to end with the official SDK's OpenTelemetry support: a client span starts an
orchestration; the SDK's spans (create, orchestration, activity) and Duro's spans (exported over
OTLP/HTTP to a receiver this test runs) share the client's trace id, with the parent links the
protocol implies:

    client-request                                      (the test's span)
    └─ create_orchestration:obs_traced                  (SDK client)
       ├─ orchestration:obs_traced                      (SDK worker, one span over all turns)
       │  └─ activity:obs_hello  × 2                    (SDK worker, scheduling; its context goes
       │     │                                           with the scheduleTask action)
       │     └─ activity obs_hello                      (Duro: dispatch to committed result)
       │        └─ activity:obs_hello                   (SDK worker, running it; Duro's span as parent)
       ├─ orchestration obs_traced                      (Duro: the execution's life, start to end)
       ├─ turn obs_traced  × 4                          (Duro: dispatch to committed answer)
       │  └─ store commit                               (Duro: committing the answer)
       └─ timer                                         (Duro: from the turn creating it to its firing)

Duro's log lines of a turn carry the instance id and the trace id.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

otel_trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
sdk_export = pytest.importorskip("opentelemetry.sdk.trace.export")
trace_service_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
metrics_service_pb2 = pytest.importorskip("opentelemetry.proto.collector.metrics.v1.metrics_service_pb2")

import harness  # noqa: E402
from durabletask import task  # noqa: E402
from durabletask.client import OrchestrationStatus  # noqa: E402

TIMEOUT = 30


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: spans on /v1/traces, metric points on /v1/metrics."""

    spans: list[dict] = []
    points: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path.endswith("/v1/metrics"):
            mreq = metrics_service_pb2.ExportMetricsServiceRequest()
            mreq.ParseFromString(body)
            for rm in mreq.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        data = m.sum.data_points if m.HasField("sum") else m.gauge.data_points
                        for p in data:
                            value = p.as_int if p.HasField("as_int") else p.as_double
                            attrs = {a.key: a.value.string_value for a in p.attributes}
                            _Receiver.points.append({"name": m.name, "value": value, "attrs": attrs})
            out = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        else:
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        _Receiver.spans.append({"name": s.name, "trace_id": s.trace_id.hex(),
                                                "span_id": s.span_id.hex(), "parent": s.parent_span_id.hex()})
            out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def _sdk_exporter():
    """The SDK's spans, collected in memory (one provider per process)."""
    provider = otel_trace.get_tracer_provider()
    if not isinstance(provider, sdk_trace.TracerProvider):
        provider = sdk_trace.TracerProvider()
        otel_trace.set_tracer_provider(provider)
    exporter = in_memory.InMemorySpanExporter()
    provider.add_span_processor(sdk_export.SimpleSpanProcessor(exporter))
    return exporter


def _tree(spans: list[dict]) -> str:
    by_parent: dict[str, list[dict]] = {}
    ids = {s["span_id"] for s in spans}
    for s in spans:
        by_parent.setdefault(s["parent"] if s["parent"] in ids else "", []).append(s)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for s in by_parent.get(parent, []):
            lines.append(f"{'  ' * depth}{s['name']}  [{s['origin']}]")
            walk(s["span_id"], depth + 1)

    walk("", 0)
    return "\n".join(lines)


@pytest.mark.duro_only
def test_one_trace_from_the_client_span_through_duro_and_the_sdk_worker(tmp_path: Path, monkeypatch):
    if harness.backend_kind() == "inmemory":
        pytest.skip("needs a real duro")
    _Receiver.spans = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.setenv("DURO_TEST_LOG_LEVEL", "duro=debug,info")
    exporter = _sdk_exporter()
    sc = harness.SidecarProcess(db_path=tmp_path / "duro.db", log_path=tmp_path / "duro.log")
    sc.start()
    try:
        def obs_hello(ctx: task.ActivityContext, name: str) -> str:
            return f"Hello {name}!"

        def obs_traced(ctx: task.OrchestrationContext, _):
            a = yield ctx.call_activity(obs_hello, input="Tokyo")
            yield ctx.create_timer(timedelta(milliseconds=300))
            b = yield ctx.call_activity(obs_hello, input="London")
            return [a, b]

        tracer = otel_trace.get_tracer("duro-tests")
        c = harness.make_client(sc.address)
        with harness.running_worker(sc.address, orchestrators=[obs_traced], activities=[obs_hello]):
            with tracer.start_as_current_span("client-request") as root:
                iid = c.schedule_new_orchestration(obs_traced)
            state = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
            assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED
    finally:
        sc.stop()  # flushes Duro's batch exporter
    trace_id = format(root.get_span_context().trace_id, "032x")
    deadline = time.monotonic() + 10
    while len([s for s in _Receiver.spans if s["name"].startswith("activity ")]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    server.shutdown()

    sdk_spans = [{"name": s.name, "trace_id": format(s.context.trace_id, "032x"),
                  "span_id": format(s.context.span_id, "016x"),
                  "parent": format(s.parent.span_id, "016x") if s.parent else "", "origin": "sdk"}
                 for s in exporter.get_finished_spans()
                 if format(s.context.trace_id, "032x") == trace_id]
    duro_spans = [dict(s, origin="duro") for s in _Receiver.spans]
    picture = _tree(sdk_spans + duro_spans)
    print("\n" + picture)

    assert duro_spans, "Duro exported no spans"
    assert all(s["trace_id"] == trace_id for s in duro_spans), picture

    def one(spans: list[dict], name: str) -> dict:
        found = [s for s in spans if s["name"] == name]
        assert len(found) == 1, f"{name}: {len(found)} in\n{picture}"
        return found[0]

    create = one(sdk_spans, "create_orchestration:obs_traced")
    orchestration = one(sdk_spans, "orchestration:obs_traced")
    turns = [s for s in duro_spans if s["name"] == "turn obs_traced"]
    duro_activities = [s for s in duro_spans if s["name"] == "activity obs_hello"]
    sdk_activities = [s for s in sdk_spans if s["name"] == "activity:obs_hello"]
    assert create["parent"] == format(root.get_span_context().span_id, "016x"), picture
    assert len(turns) == 4 and all(t["parent"] == create["span_id"] for t in turns), picture
    life = one(duro_spans, "orchestration obs_traced")
    assert life["parent"] == create["span_id"], picture
    timer = one(duro_spans, "timer")
    assert timer["parent"] == create["span_id"], picture
    commits = [s for s in duro_spans if s["name"] == "store commit"]
    work = {s["span_id"] for s in turns + [a for a in duro_spans if a["name"] == "activity obs_hello"]}
    assert len(commits) == 6 and {c["parent"] for c in commits} == work, picture
    # One SDK orchestration span over all turns: Duro sent its id back every turn.
    assert orchestration["parent"] == create["span_id"], picture
    assert len(duro_activities) == 2, picture
    assert len(sdk_activities) == 4, picture
    by_id = {a["span_id"]: a for a in sdk_activities}
    for a in duro_activities:
        scheduling = by_id.get(a["parent"])
        assert scheduling is not None and scheduling["parent"] == orchestration["span_id"], picture
        running = [s for s in sdk_activities if s["parent"] == a["span_id"]]
        assert len(running) == 1, picture
    log = (tmp_path / "duro.log").read_text()
    tagged = [line for line in log.splitlines() if f"instance={iid}" in line and f"trace_id={trace_id}" in line]
    assert any("orchestrator work item sent" in line for line in tagged), log[-3000:]
    assert any("activity response received" in line for line in tagged), log[-3000:]


@pytest.mark.duro_only
def test_counters_and_gauges_are_exported_as_otlp_metrics(tmp_path: Path, monkeypatch):
    if harness.backend_kind() == "inmemory":
        pytest.skip("needs a real duro")
    _Receiver.points = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
    sc = harness.SidecarProcess(db_path=tmp_path / "duro.db", log_path=tmp_path / "duro.log")
    sc.start()
    try:
        def obs_metered(ctx: task.OrchestrationContext, _):
            return "done"

        c = harness.make_client(sc.address)
        with harness.running_worker(sc.address, orchestrators=[obs_metered]):
            ids = [c.schedule_new_orchestration(obs_metered) for _ in range(3)]
            for iid in ids:
                state = c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
                assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED

            def latest(name: str, **attrs: str) -> float | None:
                found = [p["value"] for p in _Receiver.points if p["name"] == name and p["attrs"] == attrs]
                return found[-1] if found else None

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if (latest("duro.work_items_completed", kind="orchestration") or 0) >= 3 and (
                    latest("duro.instances", status="completed") or 0
                ) >= 3:
                    break
                time.sleep(0.1)
            assert latest("duro.work_items_completed", kind="orchestration") == 3, _Receiver.points[-20:]
            assert latest("duro.work_items_dispatched", kind="orchestration") == 3, _Receiver.points[-20:]
            assert latest("duro.instances", status="completed") == 3, _Receiver.points[-20:]
            assert latest("duro.worker_streams") == 1, _Receiver.points[-20:]
    finally:
        sc.stop()
        server.shutdown()
