//! Durable HTTP run by the sidecar (`BuiltIn::HttpActivity`), end to end: the real `duro`
//! binary, a raw-protocol worker whose orchestration schedules the built-in activity, and
//! real HTTP servers on loopback (the target, and fake identity endpoints).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use duro_proto::history_event::EventType;
use duro_proto::{OrchestrationState, OrchestrationStatus, OrchestratorAction, OrchestratorRequest};
use duro_tests::*;
use serde_json::{json, Value};

const HTTP_ACTIVITY: &str = "BuiltIn::HttpActivity";
const WAIT: Duration = Duration::from_secs(60);
/// The fake servers of these tests live on loopback, which durable HTTP refuses by default.
const ALLOW_LOOPBACK: [&str; 2] = ["--http-allow", "127.0.0.1"];

// ----- the orchestration ------------------------------------------------------------------

/// Orchestration input: a JSON array of durable HTTP requests. Runs them one after the
/// other as `BuiltIn::HttpActivity` and completes with the array of their results (parsed),
/// or fails with the first failure's errorType and message.
fn http_orchestrator(req: &OrchestratorRequest) -> Vec<OrchestratorAction> {
    let calls: Vec<Value> = orchestration_input(req).and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    let n = calls.len() as i32;
    let mut results: BTreeMap<i32, Value> = BTreeMap::new();
    let mut scheduled: BTreeSet<i32> = BTreeSet::new();
    for e in all_events(req) {
        match &e.event_type {
            Some(EventType::TaskScheduled(_)) => {
                scheduled.insert(e.event_id);
            }
            Some(EventType::TaskCompleted(c)) => {
                let v = c.result.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or(Value::Null);
                results.insert(c.task_scheduled_id, v);
            }
            Some(EventType::TaskFailed(f)) => {
                let d = f.failure_details.clone().unwrap_or_default();
                return vec![fail(n + 1, &d.error_type, &d.error_message)];
            }
            Some(EventType::ExecutionCompleted(_)) => return Vec::new(),
            _ => {}
        }
    }
    let done = results.len() as i32;
    if done < n {
        if scheduled.contains(&done) {
            return Vec::new();
        }
        return vec![schedule_task(done, HTTP_ACTIVITY, Some(calls[done as usize].to_string()))];
    }
    let out = Value::Array(results.into_values().collect());
    vec![complete(n, OrchestrationStatus::Completed, Some(out.to_string()))]
}

/// A worker running [`http_orchestrator`]; its activity callback counts calls (the
/// built-in activity must never reach a worker).
fn start_worker(sidecar: &Sidecar) -> (RawWorker, Arc<AtomicUsize>) {
    let activity_calls = Arc::new(AtomicUsize::new(0));
    let c = activity_calls.clone();
    let worker = RawWorker::start(sidecar.endpoint(), http_orchestrator, move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        Err("the built-in HTTP activity was dispatched to a worker".into())
    });
    (worker, activity_calls)
}

async fn run(client: &Client, id: &str, calls: Value) -> OrchestrationState {
    start(client, "HttpOrchestration", id, Some(&calls.to_string())).await.expect("start");
    wait_completion(client, id, WAIT).await
}

fn output(state: &OrchestrationState) -> Value {
    assert_eq!(status_of(state), OrchestrationStatus::Completed, "instance failed: {:?}", state.failure_details);
    serde_json::from_str(state.output.as_deref().expect("output")).expect("output JSON")
}

fn failure(state: &OrchestrationState) -> (String, String) {
    assert_eq!(status_of(state), OrchestrationStatus::Failed, "expected a failure, output {:?}", state.output);
    let d = state.failure_details.clone().expect("failure details");
    (d.error_type, d.error_message)
}

// ----- fake servers -----------------------------------------------------------------------

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// The target: records what it was asked, answers the 202 pattern.
#[derive(Default)]
struct Target {
    posts: AtomicUsize,
    polls: AtomicUsize,
    /// While set (and not released), polls keep answering 202.
    hold: AtomicBool,
    release: AtomicBool,
    /// (method path, Authorization header) of every request.
    seen: Mutex<Vec<(String, Option<String>)>>,
}

impl Target {
    fn record(&self, what: &str, h: &HeaderMap) {
        let auth = h.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
        self.seen.lock().expect("lock").push((what.to_string(), auth));
    }

    fn seen(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn target_server(t: Arc<Target>) -> String {
    let app = Router::new()
        .route(
            "/plain",
            get(|State(t): State<Arc<Target>>, h: HeaderMap| async move {
                t.record("GET /plain", &h);
                ([("content-type", "text/plain"), ("x-answer", "42")], "plain body")
            }),
        )
        .route(
            "/api/jobs",
            post(|State(t): State<Arc<Target>>, h: HeaderMap, body: String| async move {
                t.record("POST /api/jobs", &h);
                t.posts.fetch_add(1, Ordering::SeqCst);
                assert_eq!(body, r#"{"job":1}"#);
                // Relative Location, no Retry-After: the sidecar's default interval applies.
                (StatusCode::ACCEPTED, [("location", "status/1")], "accepted")
            }),
        )
        .route(
            "/api/status/1",
            get(|State(t): State<Arc<Target>>, h: HeaderMap| async move {
                t.record("GET /api/status/1", &h);
                let n = t.polls.fetch_add(1, Ordering::SeqCst);
                let hold = t.hold.load(Ordering::SeqCst) && !t.release.load(Ordering::SeqCst);
                if hold || n == 0 {
                    return (StatusCode::ACCEPTED, [("retry-after", "1")], "running").into_response();
                }
                Json(json!({"done": true, "polls": n + 1})).into_response()
            }),
        )
        .route("/big", get(|| async { "x".repeat(5000) }))
        .route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        )
        .with_state(t);
    format!("http://{}", serve(app).await)
}

/// Query, `Metadata` header and `X-IDENTITY-HEADER` header of one token request.
type Asked = (BTreeMap<String, String>, Option<String>, Option<String>);

/// A fake identity endpoint (IMDS or App Service): one token per process, counted.
#[derive(Default)]
struct Identity {
    token: String,
    calls: AtomicUsize,
    /// (query, Metadata header, X-IDENTITY-HEADER header) of every call.
    seen: Mutex<Vec<Asked>>,
}

async fn identity_token(
    State(id): State<Arc<Identity>>,
    Query(q): Query<BTreeMap<String, String>>,
    h: HeaderMap,
) -> Response {
    id.calls.fetch_add(1, Ordering::SeqCst);
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    id.seen.lock().expect("lock").push((q.clone(), header("metadata"), header("x-identity-header")));
    let expires_on =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 3600;
    Json(json!({
        "access_token": id.token,
        "expires_in": "3600",
        "expires_on": expires_on.to_string(),
        "resource": q.get("resource"),
        "token_type": "Bearer",
    }))
    .into_response()
}

async fn identity_server(id: Arc<Identity>) -> String {
    let app = Router::new()
        .route("/metadata/identity/oauth2/token", get(identity_token))
        .route("/msi/token", get(identity_token))
        .with_state(id);
    format!("http://{}", serve(app).await)
}

/// Every file of the store (database, WAL, shared memory) as bytes.
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir") {
        let entry = entry.expect("entry");
        if entry.file_name().to_string_lossy().starts_with("duro.db") {
            out.extend(std::fs::read(entry.path()).expect("read store file"));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

// ----- tests --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_get_completes_with_the_response() {
    let dir = test_dir();
    let target = Arc::new(Target::default());
    let base = target_server(target.clone()).await;
    let sidecar = Sidecar::builder().dir(dir.path()).args(ALLOW_LOOPBACK).start();
    let (worker, activity_calls) = start_worker(&sidecar);
    let client = sidecar.client().await;

    let state = run(&client, "plain", json!([{"method": "GET", "uri": format!("{base}/plain")}])).await;
    let out = output(&state);
    let resp = &out[0];
    assert_eq!(resp["statusCode"], 200, "{resp}");
    assert_eq!(resp["content"], "plain body");
    assert_eq!(resp["headers"]["content-type"], "text/plain");
    assert_eq!(resp["headers"]["x-answer"], "42");
    assert_eq!(activity_calls.load(Ordering::SeqCst), 0, "the built-in activity never reaches a worker");
    assert_eq!(target.seen(), vec![("GET /plain".to_string(), None)]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_202_is_polled_at_the_relative_location() {
    let dir = test_dir();
    let target = Arc::new(Target::default());
    let base = target_server(target.clone()).await;
    let sidecar = Sidecar::builder()
        .dir(dir.path())
        .args(["--http-allow", "127.0.0.1", "--durable-http-default-poll-interval-ms", "200"])
        .start();
    let (worker, activity_calls) = start_worker(&sidecar);
    let client = sidecar.client().await;

    let req = json!([{"method": "POST", "uri": format!("{base}/api/jobs"), "content": "{\"job\":1}",
                      "headers": {"Content-Type": "application/json"}}]);
    let state = run(&client, "poll", req).await;
    let out = output(&state);
    assert_eq!(out[0]["statusCode"], 200, "{out}");
    let body: Value = serde_json::from_str(out[0]["content"].as_str().expect("content")).expect("json body");
    assert_eq!(body, json!({"done": true, "polls": 2}));
    assert_eq!(target.posts.load(Ordering::SeqCst), 1, "the POST is made exactly once");
    assert_eq!(target.polls.load(Ordering::SeqCst), 2, "202 (Retry-After: 1), then 200");
    assert_eq!(activity_calls.load(Ordering::SeqCst), 0);
    // Polling happens inside the one activity: no timers, one task in the history.
    let kinds = kinds(&history(&client, "poll").await);
    assert_eq!(kinds.iter().filter(|k| **k == "taskScheduled").count(), 1, "{kinds:?}");
    assert!(!kinds.contains(&"timerCreated"), "{kinds:?}");
    worker.stop().await;
}

/// The dashboard shows a call that is polling: which task, how many polls, when the next one
/// goes out, and the Location without its query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_call_that_is_polling() {
    let dir = test_dir();
    let target = Arc::new(Target::default());
    target.hold.store(true, Ordering::SeqCst);
    let base = target_server(target.clone()).await;
    let sidecar = Sidecar::builder()
        .dir(dir.path())
        .http_api()
        .args(["--http-allow", "127.0.0.1", "--durable-http-default-poll-interval-ms", "100"])
        .start();
    let (worker, _) = start_worker(&sidecar);
    let client = sidecar.client().await;
    let req = json!([{"method": "POST", "uri": format!("{base}/api/jobs"), "content": "{\"job\":1}"}]);
    start(&client, "HttpOrchestration", "shown", Some(&req.to_string())).await.expect("start");
    let page_url = format!("{}/dashboard/instances/shown", sidecar.http_url());
    let deadline = tokio::time::Instant::now() + WAIT;
    let page = loop {
        let page = reqwest::get(&page_url).await.expect("dashboard").text().await.expect("page");
        if page.contains("durable-http") && target.polls.load(Ordering::SeqCst) >= 2 {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "no polling shown; log:\n{}", sidecar.log_tail(40));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(page.contains("Task #0: poll "), "{page}");
    assert!(page.contains(&format!("{base}/api/status/1")), "the polled Location is shown: {page}");
    target.release.store(true, Ordering::SeqCst);
    let state = wait_completion(&client, "shown", WAIT).await;
    assert_eq!(output(&state)[0]["statusCode"], 200);
    let page = reqwest::get(&page_url).await.expect("dashboard").text().await.expect("page");
    assert!(!page.contains("id=\"durable-http\""), "a finished call is no longer listed as polling");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_resumes_after_kill9_without_repeating_the_post() {
    let dir = test_dir();
    let target = Arc::new(Target::default());
    target.hold.store(true, Ordering::SeqCst);
    let base = target_server(target.clone()).await;
    let mut sidecar = Sidecar::builder()
        .dir(dir.path())
        .args(["--http-allow", "127.0.0.1", "--durable-http-default-poll-interval-ms", "100"])
        .start();
    let (worker, _) = start_worker(&sidecar);
    let client = sidecar.client().await;

    let req = json!([{"method": "POST", "uri": format!("{base}/api/jobs"), "content": "{\"job\":1}"}]);
    start(&client, "HttpOrchestration", "crash", Some(&req.to_string())).await.expect("start");
    let deadline = tokio::time::Instant::now() + WAIT;
    while target.polls.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no polling; log:\n{}", sidecar.log_tail(40));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sidecar.kill9();
    let polls_before = target.polls.load(Ordering::SeqCst);
    assert_eq!(target.posts.load(Ordering::SeqCst), 1);
    target.release.store(true, Ordering::SeqCst);
    sidecar.restart();

    let client = sidecar.client().await;
    let state = wait_completion(&client, "crash", WAIT).await;
    let out = output(&state);
    assert_eq!(out[0]["statusCode"], 200, "{out}");
    assert_eq!(target.posts.load(Ordering::SeqCst), 1, "the POST is not repeated after the restart");
    assert!(target.polls.load(Ordering::SeqCst) > polls_before, "polling resumed");
    assert!(sidecar.log_text().contains("resuming durable HTTP polling"), "log:\n{}", sidecar.log_tail(40));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_token_is_attached_cached_and_never_stored() {
    let dir = test_dir();
    let target = Arc::new(Target::default());
    let base = target_server(target.clone()).await;
    let token = format!("tok-SECRET-{}", uuid::Uuid::new_v4().simple());
    let identity = Arc::new(Identity { token: token.clone(), ..Default::default() });
    let id_base = identity_server(identity.clone()).await;
    let imds = format!("{id_base}/metadata/identity/oauth2/token");
    let mut sidecar = Sidecar::builder()
        .dir(dir.path())
        .args([
            "--http-allow",
            "127.0.0.1",
            "--identity-source",
            "imds",
            "--identity-endpoint",
            &imds,
            "--durable-http-default-poll-interval-ms",
            "100",
        ])
        .start();
    let (worker, _) = start_worker(&sidecar);
    let client = sidecar.client().await;

    let ts = json!({"kind": "AzureManagedIdentity", "resource": "https://management.core.windows.net/.default"});
    let req = json!([
        {"method": "POST", "uri": format!("{base}/api/jobs"), "content": "{\"job\":1}", "tokenSource": ts},
        {"method": "GET", "uri": format!("{base}/plain"), "tokenSource": ts},
    ]);
    let state = run(&client, "token", req).await;
    let out = output(&state);
    assert_eq!(out[0]["statusCode"], 200, "{out}");
    assert_eq!(out[1]["statusCode"], 200, "{out}");

    let bearer = format!("Bearer {token}");
    let seen = target.seen();
    let whats: Vec<&str> = seen.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(whats, vec!["POST /api/jobs", "GET /api/status/1", "GET /api/status/1", "GET /plain"]);
    for (what, auth) in &seen {
        assert_eq!(auth.as_deref(), Some(bearer.as_str()), "{what} without the bearer token");
    }
    assert_eq!(identity.calls.load(Ordering::SeqCst), 1, "one token, cached across both calls and the polls");
    let (q, metadata, _) = identity.seen.lock().expect("lock")[0].clone();
    assert_eq!(q.get("api-version").map(String::as_str), Some("2018-02-01"));
    assert_eq!(q.get("resource").map(String::as_str), Some("https://management.core.windows.net"));
    assert_eq!(metadata.as_deref(), Some("true"));

    worker.stop().await;
    assert!(sidecar.terminate(), "clean shutdown");
    assert!(!contains(&store_bytes(dir.path()), &token), "the token is in the SQLite files");
    let log = sidecar.log_text();
    assert!(!log.is_empty());
    assert!(!log.contains(&token), "the token is in the sidecar log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_service_identity_endpoint_serves_tokens() {
    let dir = test_dir();
    let target = Arc::new(Target::default());
    let base = target_server(target.clone()).await;
    let token = format!("app-svc-{}", uuid::Uuid::new_v4().simple());
    let identity = Arc::new(Identity { token: token.clone(), ..Default::default() });
    let id_base = identity_server(identity.clone()).await;
    let endpoint = format!("{id_base}/msi/token");
    let sidecar = Sidecar::builder()
        .dir(dir.path())
        .args([
            "--http-allow",
            "127.0.0.1",
            "--identity-source",
            "app-service",
            "--app-service-identity-endpoint",
            &endpoint,
            "--app-service-identity-header",
            "hdr-value",
            "--identity-client-id",
            "uami-1",
        ])
        .start();
    let (worker, _) = start_worker(&sidecar);
    let client = sidecar.client().await;

    let req = json!([{"uri": format!("{base}/plain"), "tokenSource": {"kind": "AzureManagedIdentity", "resource": "https://vault.azure.net"}}]);
    let out = output(&run(&client, "app-service", req).await);
    assert_eq!(out[0]["statusCode"], 200);
    assert_eq!(target.seen(), vec![("GET /plain".to_string(), Some(format!("Bearer {token}")))]);
    let (q, _, header) = identity.seen.lock().expect("lock")[0].clone();
    assert_eq!(q.get("api-version").map(String::as_str), Some("2019-08-01"));
    assert_eq!(q.get("resource").map(String::as_str), Some("https://vault.azure.net"));
    assert_eq!(q.get("client_id").map(String::as_str), Some("uami-1"));
    assert_eq!(header.as_deref(), Some("hdr-value"));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_clear() {
    let dir = test_dir();
    let target = Arc::new(Target::default());
    let base = target_server(target.clone()).await;
    let sidecar = Sidecar::builder()
        .dir(dir.path())
        .args(["--http-allow", "127.0.0.1", "--durable-http-max-response-bytes", "1000"])
        .start();
    let (worker, _) = start_worker(&sidecar);
    let client = sidecar.client().await;

    // SSRF: the metadata address is not the configured identity endpoint's business.
    let (t, m) = failure(&run(&client, "ssrf", json!([{"uri": "http://169.254.169.254/metadata/instance"}])).await);
    assert_eq!(t, "DuroHttpBlockedAddress", "{m}");
    assert!(m.contains("169.254.169.254"), "{m}");
    let (t, _) = failure(
        &run(&client, "ssrf-name", json!([{"uri": "http://metadata.google.internal/computeMetadata/v1/"}])).await,
    );
    assert_eq!(t, "DuroHttpBlockedAddress");

    let (t, m) = failure(&run(&client, "big", json!([{"uri": format!("{base}/big")}])).await);
    assert_eq!(t, "DuroHttpResponseTooLarge", "{m}");
    assert!(m.contains("1000 bytes"), "{m}");

    let started = std::time::Instant::now();
    let (t, m) = failure(&run(&client, "hang", json!([{"uri": format!("{base}/hang"), "timeout": "00:00:01"}])).await);
    assert_eq!(t, "DuroHttpTimeout", "{m}");
    assert!(started.elapsed() < Duration::from_secs(20), "the timeout took {:?}", started.elapsed());

    let (t, m) = failure(&run(&client, "invalid", json!([{"method": "GET", "headers": {}}])).await);
    assert_eq!(t, "DuroHttpInvalidRequest");
    assert!(m.contains("'uri'"), "{m}");

    // The sidecar stays healthy: a good call still works.
    let out = output(&run(&client, "after", json!([{"uri": format!("{base}/plain")}])).await);
    assert_eq!(out[0]["statusCode"], 200);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_authorization_header_is_sent_but_history_records_it_masked() {
    let dir = test_dir();
    let target = Arc::new(Target::default());
    let base = target_server(target.clone()).await;
    let sidecar = Sidecar::builder().dir(dir.path()).args(ALLOW_LOOPBACK).start();
    let (worker, _) = start_worker(&sidecar);
    let client = sidecar.client().await;

    let secret = format!("Basic SECRET-{}", uuid::Uuid::new_v4().simple());
    let req = json!([{
        "method": "GET",
        "uri": format!("{base}/plain"),
        "headers": {"Authorization": secret, "Cookie": ["a=1", "b=2"], "X-Trace": "keep-me"},
    }]);
    let state = run(&client, "user-auth", req).await;
    assert_eq!(output(&state)[0]["statusCode"], 200);
    assert_eq!(
        target.seen(),
        vec![("GET /plain".to_string(), Some(secret.clone()))],
        "the target gets the header as given"
    );

    let mut chunks = client
        .clone()
        .stream_instance_history(duro_proto::StreamInstanceHistoryRequest {
            instance_id: "user-auth".into(),
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner();
    let mut scheduled = Vec::new();
    let mut all = String::new();
    while let Some(chunk) = chunks.message().await.expect("chunk") {
        for e in chunk.events {
            // This test's orchestration gets its requests as input: executionStarted holds
            // them as the client sent them. Every event the sidecar writes must not.
            if !matches!(e.event_type, Some(EventType::ExecutionStarted(_))) {
                all.push_str(&format!("{e:?}"));
            }
            if let Some(EventType::TaskScheduled(t)) = e.event_type {
                scheduled.push(t);
            }
        }
    }
    assert_eq!(scheduled.len(), 1);
    let recorded: Value = serde_json::from_str(scheduled[0].input.as_deref().expect("input")).expect("json");
    let headers = &recorded["headers"];
    assert_eq!(headers["Authorization"], "[redacted]", "{recorded}");
    assert_eq!(headers["Cookie"], json!(["[redacted]", "[redacted]"]));
    assert_eq!(headers["X-Trace"], "keep-me");
    assert!(!all.contains("SECRET-"), "the secret is somewhere in the history");
    worker.stop().await;
}
