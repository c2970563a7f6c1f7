//! OpenTelemetry traces of the real `duro` binary, exported over OTLP/HTTP to a receiver this
//! test runs (axum + the OTLP protobuf messages): a start request's `parentTraceContext`
//! becomes the parent of every turn's span, the activities a turn schedules are children of
//! that turn's span, and the worker receives Duro's activity span as its parent; all in the
//! client's trace.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use duro_proto::{CreateInstanceRequest, OrchestrationStatus, TraceContext};
use duro_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const ACTIVITIES: usize = 2;

/// An OTLP/HTTP trace receiver on a free loopback port; the spans it got.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let store = store.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        store.lock().expect("lock").extend(ss.spans);
                    }
                }
                ExportTraceServiceResponse::default().encode_to_vec()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (format!("http://{addr}"), spans)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_and_activities_join_the_clients_trace() {
    let (endpoint, spans) = receiver().await;
    let dir = test_dir();
    let mut sidecar = Sidecar::builder()
        .dir(dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_SERVICE_NAME", "duro-under-test")
        .start();
    let client = sidecar.client().await;
    let seen: Arc<Mutex<Vec<Option<TraceContext>>>> = Arc::default();
    let seen_by_worker = seen.clone();
    let worker = RawWorker::start(sidecar.endpoint(), sum_orchestrator(ACTIVITIES), move |req| {
        seen_by_worker.lock().expect("lock").push(req.parent_trace_context.clone());
        add_activity(req)
    });
    let start = CreateInstanceRequest {
        instance_id: "traced".into(),
        name: "Sum".into(),
        input: Some("1".into()),
        parent_trace_context: Some(TraceContext {
            trace_parent: format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"),
            ..Default::default()
        }),
        ..Default::default()
    };
    client.clone().start_instance(start).await.expect("start");
    let s = wait_completion(&client, "traced", Duration::from_secs(30)).await;
    assert_eq!(status_of(&s), OrchestrationStatus::Completed);
    worker.stop().await;
    // A clean shutdown flushes what the batch exporter holds.
    assert!(sidecar.terminate(), "clean shutdown");

    let deadline = Instant::now() + Duration::from_secs(10);
    let (turns, activities) = loop {
        let all = spans.lock().expect("lock").clone();
        let named = |prefix: &str| all.iter().filter(|s| s.name.starts_with(prefix)).cloned().collect::<Vec<_>>();
        let (turns, activities) = (named("turn Sum"), named("activity Add"));
        if turns.len() > ACTIVITIES && activities.len() >= ACTIVITIES && !named("orchestration Sum").is_empty() {
            break (turns, activities);
        }
        assert!(Instant::now() < deadline, "spans received: {:?}", all.iter().map(|s| &s.name).collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(turns.len(), ACTIVITIES + 1, "one span per turn");
    let all = spans.lock().expect("lock").clone();
    let life: Vec<_> = all.iter().filter(|s| s.name == "orchestration Sum").collect();
    assert_eq!(life.len(), 1, "one span over the execution's life");
    assert_eq!(hex(&life[0].parent_span_id), CLIENT_SPAN, "the execution's span is a child of the client's");
    assert!(
        turns.iter().all(|t| t.start_time_unix_nano >= life[0].start_time_unix_nano
            && t.end_time_unix_nano <= life[0].end_time_unix_nano + 1_000_000),
        "the execution's span covers its turns"
    );
    assert_eq!(activities.len(), ACTIVITIES, "one span per activity");
    let turn_ids: HashSet<String> = turns.iter().map(|s| hex(&s.span_id)).collect();
    for t in &turns {
        assert_eq!(hex(&t.trace_id), TRACE_ID, "turn in the client's trace");
        assert_eq!(hex(&t.parent_span_id), CLIENT_SPAN, "turn parented to the client's span");
        assert!(t.end_time_unix_nano >= t.start_time_unix_nano);
    }
    let mut activity_ids = HashSet::new();
    for a in &activities {
        assert_eq!(hex(&a.trace_id), TRACE_ID, "activity in the client's trace");
        assert!(turn_ids.contains(&hex(&a.parent_span_id)), "activity parented to the turn that scheduled it");
        activity_ids.insert(hex(&a.span_id));
    }
    // The worker got Duro's activity span as its parent.
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), ACTIVITIES);
    for tc in seen {
        let tp = tc.expect("the activity request carries a trace context").trace_parent;
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[1], TRACE_ID);
        assert!(activity_ids.contains(parts[2]), "{tp} is not one of Duro's activity spans");
    }
}
