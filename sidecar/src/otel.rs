//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when the standard environment
//! asks for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`;
//! `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS` and the other `OTEL_*` variables as the
//! SDK reads them). Off otherwise: the global tracer is then a no-op and nothing is recorded.
//!
//! Owns: the tracer provider, and the spans Duro records around work it hands out:
//! - `turn {name}` per turn, from sending the work item to committing the answer, a child of
//!   the client's `parentTraceContext` (the start request's, kept in the `executionStarted`
//!   event);
//! - `orchestration {name}` over an execution's life (its start to the commit of the turn
//!   that ends it), a sibling of its turns, with the final status;
//! - `activity {name}` per activity, from sending to committing the result, a child of the
//!   `parentTraceContext` of its `scheduleTask` action, or, when the worker sent none, of the
//!   turn that scheduled it. The worker receives Duro's activity span as the request's
//!   `parentTraceContext`, so its own spans join the same trace.
//!
//! - `timer` per durable timer, from the turn that created it to its firing (recorded when the
//!   turn that receives `timerFired` is dispatched);
//! - `store commit` under a turn or activity span, over committing its answer.
//!
//! Spans are kept by completion token between dispatch and completion (bounded like the
//! metrics' in-flight table) and end as `error` when the lease ends without an answer.

use std::collections::HashMap;
use std::sync::LazyLock;

use duro_proto::history_event::EventType;
use duro_proto::{ActivityRequest, HistoryEvent, TraceContext};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{global, Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use parking_lot::Mutex;

/// Spans of work items in flight, at most (older ones are dropped unended beyond it).
const MAX_IN_FLIGHT: usize = 100_000;

static IN_FLIGHT: LazyLock<Mutex<HashMap<String, global::BoxedSpan>>> = LazyLock::new(Default::default);

/// What a turn in flight knows of its orchestration, for the orchestration's own span when
/// the turn finishes it: the client's context (its parent), when it started, name, instance.
struct TurnOf {
    parent: Context,
    started: Option<std::time::SystemTime>,
    name: String,
    instance_id: String,
}

static TURNS: LazyLock<Mutex<HashMap<String, TurnOf>>> = LazyLock::new(Default::default);

/// The configured exporter; flushes what is buffered when shut down.
pub struct Otel {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Otel {
    /// Sends the spans still buffered (bounded by the exporter's timeout).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OpenTelemetry: flushing spans at shutdown failed");
        }
    }
}

/// The OTLP HTTP client: the reqwest client Duro already uses, driven on the tokio runtime
/// (the batch exporter runs on a thread of its own, outside the runtime).
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let call = async move {
            let (parts, body) = request.into_parts();
            let mut rb = http.request(parts.method, parts.uri.to_string()).body(body);
            for (k, v) in &parts.headers {
                rb = rb.header(k, v);
            }
            let resp = rb.send().await?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        };
        let (status, bytes) = self.runtime.spawn(call).await??;
        Ok(http::Response::builder().status(status).body(bytes)?)
    }
}

/// The OTLP exporters' HTTP client (traces and metrics). Must run inside the tokio runtime.
pub(crate) fn http_client() -> Result<impl opentelemetry_http::HttpClient + 'static, String> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| format!("no tokio runtime: {e}"))?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))?;
    Ok(Client { http, runtime })
}

/// The resource of Duro's telemetry: `service.name` from `OTEL_SERVICE_NAME`, else `duro`.
pub(crate) fn resource() -> opentelemetry_sdk::Resource {
    let service = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "duro".into());
    opentelemetry_sdk::Resource::builder().with_service_name(service).build()
}

/// Whether the environment configures a trace exporter.
pub fn configured() -> bool {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
        && !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Installs the exporter when [`configured`]; `Ok(None)` when traces are off. Must run
/// inside the tokio runtime.
pub fn init() -> Result<Option<Otel>, String> {
    if !configured() {
        return Ok(None);
    }
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(http_client()?)
        .build()
        .map_err(|e| format!("invalid OpenTelemetry exporter configuration (OTEL_EXPORTER_OTLP_*): {e}"))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    tracing::info!("OpenTelemetry traces are exported over OTLP/HTTP");
    Ok(Some(Otel { provider }))
}

/// The OpenTelemetry context of a protocol trace context (W3C `traceparent`, `tracestate`).
fn context_of(tc: Option<&TraceContext>) -> Context {
    let Some(tc) = tc.filter(|tc| !tc.trace_parent.is_empty()) else { return Context::new() };
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), tc.trace_parent.clone());
    if let Some(state) = tc.trace_state.as_ref().filter(|s| !s.is_empty()) {
        carrier.insert("tracestate".to_string(), state.clone());
    }
    use opentelemetry::propagation::TextMapPropagator as _;
    TraceContextPropagator::new().extract(&carrier)
}

/// The protocol trace context of a span (`None` when it is not recording: traces are off).
fn trace_context_of(span: &global::BoxedSpan) -> Option<TraceContext> {
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    let trace_parent = format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8());
    let state = sc.trace_state().header();
    // `spanID` is deprecated but still read by older SDKs.
    Some(TraceContext {
        trace_parent,
        span_id: sc.span_id().to_string(),
        trace_state: (!state.is_empty()).then_some(state),
    })
}

fn remember(token: &str, span: global::BoxedSpan) {
    let mut in_flight = IN_FLIGHT.lock();
    if in_flight.len() >= MAX_IN_FLIGHT {
        in_flight.clear();
    }
    in_flight.insert(token.to_string(), span);
}

/// The client's trace context of an execution: its `executionStarted` event's (found near the
/// start of the history or of the new events).
fn client_trace_context<'a>(
    past: impl Iterator<Item = &'a HistoryEvent>,
    new: &'a [HistoryEvent],
) -> Option<&'a TraceContext> {
    past.take(3).chain(new.iter().take(3)).find_map(|e| match &e.event_type {
        Some(EventType::ExecutionStarted(s)) => s.parent_trace_context.as_ref(),
        _ => None,
    })
}

/// The trace id of an orchestration: the one of the client's `parentTraceContext` on start
/// (so log lines carry it whether or not Duro exports spans).
pub fn orchestration_trace_id<'a>(
    past: impl Iterator<Item = &'a HistoryEvent>,
    new: &'a [HistoryEvent],
) -> Option<String> {
    let tp = &client_trace_context(past, new)?.trace_parent;
    let id = tp.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_ascii_lowercase())
}

/// A turn was sent to a worker (`past`: its history, walked only when exporting).
pub fn turn_dispatched<'a>(
    token: &str,
    name: &str,
    instance_id: &str,
    past: impl Iterator<Item = &'a HistoryEvent> + Clone,
    new: &'a [HistoryEvent],
) {
    if !configured_now() {
        return;
    }
    let tracer = global::tracer("duro");
    let parent = context_of(client_trace_context(past.clone(), new));
    let span = tracer
        .span_builder(format!("turn {name}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("durabletask.type", "orchestration"),
            KeyValue::new("durabletask.task.name", name.to_string()),
            KeyValue::new("durabletask.task.instance_id", instance_id.to_string()),
            KeyValue::new("durabletask.turn.new_events", new.len() as i64),
        ])
        .start_with_context(&tracer, &parent);
    timers_fired(&tracer, &parent, instance_id, past.clone(), new);
    let started = past.chain(new).find_map(|e| match (&e.event_type, &e.timestamp) {
        (Some(EventType::ExecutionStarted(_)), Some(t)) => Some(system_time(t)),
        _ => None,
    });
    let mut turns = TURNS.lock();
    if turns.len() >= MAX_IN_FLIGHT {
        turns.clear();
    }
    turns.insert(
        token.to_string(),
        TurnOf { parent: parent.clone(), started, name: name.to_string(), instance_id: instance_id.to_string() },
    );
    drop(turns);
    remember(token, span);
}

/// A worker's turn ended its orchestration (committed): the `orchestration {name}` span over
/// the execution's life, from its start to now, a child of the client's context (a sibling of
/// the turn spans), with the final status.
pub fn orchestration_ended(token: &str, status: duro_proto::OrchestrationStatus) {
    if !configured_now() {
        return;
    }
    let Some(turn) = TURNS.lock().remove(token) else { return };
    let tracer = global::tracer("duro");
    let mut builder = tracer.span_builder(format!("orchestration {}", turn.name)).with_kind(SpanKind::Server);
    if let Some(at) = turn.started {
        builder = builder.with_start_time(at);
    }
    let mut span = builder
        .with_attributes([
            KeyValue::new("durabletask.type", "orchestration"),
            KeyValue::new("durabletask.task.name", turn.name),
            KeyValue::new("durabletask.task.instance_id", turn.instance_id),
            KeyValue::new("durabletask.runtime_status", status.as_str_name()),
        ])
        .start_with_context(&tracer, &turn.parent);
    if status != duro_proto::OrchestrationStatus::Completed {
        span.set_status(Status::error(status.as_str_name()));
    }
    span.end();
}

/// One `timer` span per durable timer that fires in this turn: from the turn that created it
/// (`timerCreated`) to its firing (`timerFired`), a sibling of the turn spans.
fn timers_fired<'a>(
    tracer: &global::BoxedTracer,
    parent: &Context,
    instance_id: &str,
    past: impl Iterator<Item = &'a HistoryEvent> + Clone,
    new: &'a [HistoryEvent],
) {
    for fired in new {
        let Some(EventType::TimerFired(f)) = &fired.event_type else { continue };
        let created = past
            .clone()
            .chain(new)
            .find(|e| e.event_id == f.timer_id && matches!(e.event_type, Some(EventType::TimerCreated(_))));
        let (Some(start), Some(end)) = (created.and_then(|c| c.timestamp.as_ref()), f.fire_at.as_ref()) else {
            continue;
        };
        let mut span = tracer
            .span_builder("timer")
            .with_kind(SpanKind::Internal)
            .with_start_time(system_time(start))
            .with_attributes([
                KeyValue::new("durabletask.type", "timer"),
                KeyValue::new("durabletask.task.instance_id", instance_id.to_string()),
                KeyValue::new("durabletask.task.task_id", i64::from(f.timer_id)),
                KeyValue::new("durabletask.fire_at", crate::core::time::to_ms(end)),
            ])
            .start_with_context(tracer, parent);
        span.end_with_timestamp(system_time(end).max(system_time(start)));
    }
}

fn system_time(t: &prost_types::Timestamp) -> std::time::SystemTime {
    let ms = u64::try_from(crate::core::time::to_ms(t)).unwrap_or(0);
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

/// A child span of a work item's span over committing its answer to the store (waiting for
/// the group commit included); ends when dropped.
pub fn commit_span(token: &str, writes: &'static str) -> Option<global::BoxedSpan> {
    if !configured_now() {
        return None;
    }
    let in_flight = IN_FLIGHT.lock();
    let parent = in_flight.get(token)?;
    let cx = Context::new().with_remote_span_context(parent.span_context().clone());
    let tracer = global::tracer("duro");
    Some(
        tracer
            .span_builder("store commit")
            .with_kind(SpanKind::Internal)
            .with_attributes([KeyValue::new("duro.store.write", writes)])
            .start_with_context(&tracer, &cx),
    )
}

/// The trace id of a work item's span, for log lines (`None` when tracing is off or the
/// item has no span).
pub fn trace_id(token: &str) -> Option<String> {
    if !configured_now() {
        return None;
    }
    let in_flight = IN_FLIGHT.lock();
    let sc = in_flight.get(token)?.span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// A turn's answer is about to commit: the activities it schedules without a trace context
/// of their own become children of the turn's span.
pub fn stamp_activities(token: &str, activities: &mut [ActivityRequest]) {
    if activities.iter().all(|a| a.parent_trace_context.is_some()) {
        return;
    }
    let in_flight = IN_FLIGHT.lock();
    let Some(tc) = in_flight.get(token).and_then(trace_context_of) else { return };
    for a in activities.iter_mut().filter(|a| a.parent_trace_context.is_none()) {
        a.parent_trace_context = Some(tc.clone());
    }
}

/// An activity is sent to a worker (or run by the sidecar): its span starts, and the request
/// carries it as the worker's parent.
pub fn activity_dispatched(token: &str, request: &mut ActivityRequest) {
    if !configured_now() {
        return;
    }
    let tracer = global::tracer("duro");
    let parent = context_of(request.parent_trace_context.as_ref());
    let instance = request.orchestration_instance.as_ref().map(|o| o.instance_id.clone()).unwrap_or_default();
    let span = tracer
        .span_builder(format!("activity {}", request.name))
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("durabletask.type", "activity"),
            KeyValue::new("durabletask.task.name", request.name.clone()),
            KeyValue::new("durabletask.task.instance_id", instance),
            KeyValue::new("durabletask.task.task_id", i64::from(request.task_id)),
        ])
        .start_with_context(&tracer, &parent);
    if let Some(tc) = trace_context_of(&span) {
        request.parent_trace_context = Some(tc);
    }
    remember(token, span);
}

/// A work item's answer committed (`ok`: not a failure).
pub fn completed(token: &str, ok: bool) {
    if !configured_now() {
        return;
    }
    TURNS.lock().remove(token);
    if let Some(mut span) = IN_FLIGHT.lock().remove(token) {
        if !ok {
            span.set_status(Status::error("the task failed"));
        }
        span.end();
    }
}

/// A lease ended without a committed answer.
pub fn released(token: &str) {
    if !configured_now() {
        return;
    }
    TURNS.lock().remove(token);
    if let Some(mut span) = IN_FLIGHT.lock().remove(token) {
        span.set_status(Status::error("abandoned or redelivered"));
        span.end();
    }
}

/// Whether a provider was installed (cheap; spans are skipped otherwise).
fn configured_now() -> bool {
    static ON: LazyLock<bool> = LazyLock::new(configured);
    *ON
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_becomes_the_parent_context() {
        let tc = TraceContext {
            trace_parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            span_id: String::new(),
            trace_state: Some("congo=t61rcWkgMzE".into()),
        };
        let cx = context_of(Some(&tc));
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote() && sc.is_sampled());
        assert!(!context_of(None).span().span_context().is_valid());
        let bad = TraceContext { trace_parent: "garbage".into(), span_id: String::new(), trace_state: None };
        assert!(!context_of(Some(&bad)).span().span_context().is_valid());
    }
}
