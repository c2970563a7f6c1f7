//! Operations endpoints of the real `duro` binary: `/healthz`, `/readyz` and the gRPC
//! health service follow the store's ability to commit; `/metrics` and `/stats` count
//! exactly what a real workload ran, and need the system key when one is set.

use std::time::{Duration, Instant};

use duro_proto::OrchestrationStatus;
use duro_tests::*;
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const KEY: &str = "observability-test-key-0123456789";

struct Ops {
    sidecar: Sidecar,
    origin: String,
    http: reqwest::Client,
    dir: TestDir,
}

impl Ops {
    fn start(extra: &[&str]) -> Ops {
        let dir = test_dir();
        let sidecar = Sidecar::builder().dir(dir.path()).http_api().args(extra).start();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        Ops { origin: sidecar.http_url(), sidecar, http, dir }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut rb = self.http.get(format!("{}{path}", self.origin));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().await.expect("HTTP request");
        let status = r.status().as_u16();
        (status, r.text().await.expect("body"))
    }

    async fn readyz(&self) -> (u16, Value) {
        let (status, body) = self.get("/readyz", &[]).await;
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz not JSON ({e}): {body}")))
    }

    async fn grpc_health(&self, service: &str) -> ServingStatus {
        let channel = tonic::transport::Endpoint::from_shared(self.sidecar.endpoint())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut c = HealthClient::new(channel);
        let r = c.check(HealthCheckRequest { service: service.into() }).await.expect("grpc.health.v1 Check");
        r.into_inner().status()
    }

    /// Polls `/readyz` until its status is `want` (the probe result is reused for 1 s).
    async fn wait_ready(&self, want: u16) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.readyz().await;
            if status == want {
                return body;
            }
            assert!(Instant::now() < deadline, "/readyz stayed {status} {body}, wanted {want}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_grpc(&self, want: ServingStatus) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.grpc_health("").await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "grpc.health.v1 stayed {got:?}, wanted {want:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn chattr(flag: &str, path: &std::path::Path) -> bool {
    std::process::Command::new("chattr").arg(flag).arg(path).status().is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_no_key_and_readiness_follows_the_store_s_ability_to_commit() {
    let ops = Ops::start(&["--http-system-key", KEY]);
    // No key needed, and nothing but the checks' states in the answer.
    let (status, body) = ops.get("/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"alive"}"#));
    let body = ops.wait_ready(200).await;
    assert_eq!(body, serde_json::json!({"ready": true, "store": "ok", "grpc": "ok", "running": "ok"}));
    assert_eq!(ops.grpc_health("").await, ServingStatus::Serving);
    assert_eq!(ops.grpc_health("TaskHubSidecarService").await, ServingStatus::Serving);

    // A disk that refuses writes: the WAL made immutable (EPERM on every write of it).
    let wal = ops.dir.path().join("duro.db-wal");
    if !chattr("+i", &wal) {
        eprintln!("skipped the unwritable-store half: cannot make {} immutable (needs root and chattr)", wal.display());
        return;
    }
    let failing = ops.wait_ready(503).await;
    let undo = chattr("-i", &wal);
    assert!(undo, "cannot undo chattr +i on {}", wal.display());
    assert_eq!(failing, serde_json::json!({"ready": false, "store": "failing", "grpc": "ok", "running": "ok"}));
    let log = ops.sidecar.log_text();
    assert!(log.contains("readiness: the store cannot commit"), "{log}");
    // Documented behaviour: the process keeps running and is ready again once commits succeed.
    ops.wait_ready(200).await;
    ops.wait_grpc(ServingStatus::Serving).await;
    let client = ops.sidecar.client().await;
    start(&client, "After", "after-recovery", None).await.expect("a start commits after the store recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_reports_not_serving_while_the_store_cannot_commit() {
    let ops = Ops::start(&[]);
    ops.wait_grpc(ServingStatus::Serving).await;
    let wal = ops.dir.path().join("duro.db-wal");
    if !chattr("+i", &wal) {
        eprintln!("skipped: cannot make {} immutable (needs root and chattr)", wal.display());
        return;
    }
    // The gRPC status is refreshed every 5 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = ops.grpc_health("").await;
    while got != ServingStatus::NotServing && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        got = ops.grpc_health("").await;
    }
    assert!(chattr("-i", &wal), "cannot undo chattr +i on {}", wal.display());
    assert_eq!(got, ServingStatus::NotServing);
    ops.wait_grpc(ServingStatus::Serving).await;
}

/// The value of the sample `line_start` (name and labels exactly) in a text exposition.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_exactly_what_a_workload_ran_and_need_the_key() {
    const INSTANCES: usize = 12;
    const ACTIVITIES: usize = 3;
    let ops = Ops::start(&["--http-system-key", KEY]);
    let client = ops.sidecar.client().await;
    let worker = RawWorker::start(ops.sidecar.endpoint(), sum_orchestrator(ACTIVITIES), add_activity);
    for i in 0..INSTANCES {
        start(&client, "Sum", &format!("m-{i}"), Some(&i.to_string())).await.expect("start");
    }
    for i in 0..INSTANCES {
        let s = wait_completion(&client, &format!("m-{i}"), Duration::from_secs(30)).await;
        assert_eq!(status_of(&s), OrchestrationStatus::Completed);
    }

    // The key is required when one is set: header, query or bearer.
    let (status, _) = ops.get("/metrics", &[]).await;
    assert_eq!(status, 401);
    let (status, _) = ops.get("/metrics", &[("authorization", "Bearer wrong")]).await;
    assert_eq!(status, 401);
    let (status, _) = ops.get("/stats", &[]).await;
    assert_eq!(status, 401);
    let (status, _) = ops.get(&format!("/metrics?code={KEY}"), &[]).await;
    assert_eq!(status, 200);
    let (status, _) = ops.get("/metrics", &[("x-functions-key", KEY)]).await;
    assert_eq!(status, 200);
    let bearer = format!("Bearer {KEY}");
    let (status, text) = ops.get("/metrics", &[("authorization", bearer.as_str())]).await;
    assert_eq!(status, 200, "{text}");

    let turns = (INSTANCES * (ACTIVITIES + 1)) as f64;
    let activities = (INSTANCES * ACTIVITIES) as f64;
    let expect = [
        (r#"duro_work_items_dispatched_total{kind="orchestration",name="Sum"}"#, turns),
        (r#"duro_work_items_completed_total{kind="orchestration",name="Sum",outcome="ok"}"#, turns),
        (&format!(r#"duro_work_items_dispatched_total{{kind="activity",name="{ADD}"}}"#), activities),
        (&format!(r#"duro_work_items_completed_total{{kind="activity",name="{ADD}",outcome="ok"}}"#), activities),
        (r#"duro_turn_duration_seconds_count{name="Sum"}"#, turns),
        (&format!(r#"duro_activity_duration_seconds_count{{name="{ADD}"}}"#), activities),
        (r#"duro_instances{status="completed"}"#, INSTANCES as f64),
        (r#"duro_instances{status="running"}"#, 0.0),
        (r#"duro_queue_depth{kind="orchestration"}"#, 0.0),
        (r#"duro_queue_depth{kind="activity"}"#, 0.0),
        ("duro_worker_streams", 1.0),
        ("duro_leases_expired_total", 0.0),
        ("duro_store_commit_failures_total", 0.0),
    ];
    for (line, want) in expect {
        assert_eq!(sample(&text, line), Some(want), "{line} in\n{text}");
    }
    // Every acknowledged write went through a group commit: starts, turns, results.
    let writes = sample(&text, "duro_store_commit_group_size_sum").expect("group size sum");
    assert!(writes >= (INSTANCES as f64) + turns + activities, "{writes} writes in\n{text}");
    let groups = sample(&text, "duro_store_commit_duration_seconds_count").expect("commit count");
    assert!(groups >= 1.0 && groups <= writes, "{groups} groups for {writes} writes");

    let (status, stats) = ops.get("/stats", &[("x-functions-key", KEY)]).await;
    assert_eq!(status, 200, "{stats}");
    let stats: Value = serde_json::from_str(&stats).expect("stats JSON");
    assert_eq!(stats["instances"]["completed"], INSTANCES);
    assert_eq!(stats["completed"]["activity"], INSTANCES * ACTIVITIES);
    assert_eq!(stats["dispatched"]["orchestration"], INSTANCES * (ACTIVITIES + 1));
    assert_eq!(stats["workerStreams"], 1);

    worker.stop().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = ops.get("/metrics", &[("x-functions-key", KEY)]).await;
        if sample(&text, "duro_worker_streams") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the stream gauge did not drop to 0:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_open_serves_metrics_without_the_key_but_not_the_api() {
    let ops = Ops::start(&["--http-system-key", KEY, "--metrics-open"]);
    let (status, text) = ops.get("/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(text.contains("# TYPE duro_store_commit_group_size histogram"), "{text}");
    assert_eq!(sample(&text, "duro_worker_streams"), Some(0.0), "{text}");
    let (status, _) = ops.get("/runtime/webhooks/durabletask/instances", &[]).await;
    assert_eq!(status, 401, "--metrics-open opens nothing else");
    let (status, _) = ops.get("/healthz/", &[]).await;
    assert_eq!(status, 200);
    let r = ops.http.post(format!("{}/readyz", ops.origin)).send().await.expect("POST");
    assert_eq!(r.status().as_u16(), 405);
}

/// The orchestration trace context a worker sends (`OrchestratorResponse.orchestrationTraceContext`:
/// the span id and start of the SDK's one span per orchestration) comes back with every later
/// turn of that execution, from the cache and, after a restart, from the store. Without it the
/// Python and JS SDKs start a new orchestration span every turn and their spans do not join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_orchestration_trace_context_comes_back_with_every_turn() {
    use duro_proto::{GetWorkItemsRequest, OrchestrationTraceContext, OrchestratorResponse, RaiseEventRequest};
    let dir = test_dir();
    let mut sidecar = Sidecar::builder().dir(dir.path()).start();
    let client = sidecar.client().await;
    let traced = OrchestrationTraceContext {
        span_id: Some("00f067aa0ba902b7".into()),
        span_start_time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
    };
    start(&client, "Traced", "traced-1", None).await.expect("start");
    let mut stream = open_stream(&client, GetWorkItemsRequest::default()).await;
    let wait = Duration::from_secs(20);
    let item = next_work(&mut stream, wait).await.expect("first turn");
    assert_eq!(orchestrator_request(&item).orchestration_trace_context, None, "nothing before the worker sends one");
    let resp = OrchestratorResponse {
        instance_id: "traced-1".into(),
        actions: vec![schedule_task(0, ADD, Some("1".into()))],
        completion_token: item.completion_token.clone(),
        orchestration_trace_context: Some(traced.clone()),
        ..Default::default()
    };
    client.clone().complete_orchestrator_task(resp).await.expect("complete turn 1");
    let item = next_work(&mut stream, wait).await.expect("activity");
    let act = activity_request(&item).clone();
    let done = duro_proto::ActivityResponse {
        instance_id: "traced-1".into(),
        task_id: act.task_id,
        result: Some("2".into()),
        completion_token: item.completion_token.clone(),
        ..Default::default()
    };
    client.clone().complete_activity_task(done).await.expect("complete activity");
    let item = next_work(&mut stream, wait).await.expect("second turn");
    assert_eq!(orchestrator_request(&item).orchestration_trace_context, Some(traced.clone()), "from the cache");
    // The second answer carries none (as Java's later chunks): the stored one stays.
    complete_turn(&client, &item, Vec::new()).await.expect("complete turn 2");
    drop(stream);

    sidecar.restart();
    let client = sidecar.client().await;
    let mut stream = open_stream(&client, GetWorkItemsRequest::default()).await;
    let raise = RaiseEventRequest { instance_id: "traced-1".into(), name: "go".into(), ..Default::default() };
    client.clone().raise_event(raise).await.expect("raise");
    let item = next_work(&mut stream, wait).await.expect("third turn");
    assert_eq!(orchestrator_request(&item).orchestration_trace_context, Some(traced), "from the store");
    complete_turn(&client, &item, vec![complete(1, OrchestrationStatus::Completed, Some("2".into()))])
        .await
        .expect("complete turn 3");
    let s = wait_completion(&client, "traced-1", wait).await;
    assert_eq!(status_of(&s), OrchestrationStatus::Completed);
}
