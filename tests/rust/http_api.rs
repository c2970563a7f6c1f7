//! The HTTP management API (Durable Functions webhook routes) of the real `duro` binary,
//! driven with a real HTTP client: every route and status code, the 202 → 200 polling flow,
//! paging, authentication, signed status links, and bad input.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use duro_proto::history_event::EventType;
use duro_proto::{ActivityRequest, OrchestrationStatus, OrchestratorAction, OrchestratorRequest};
use duro_tests::*;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

const BASE: &str = "/runtime/webhooks/durabletask";
const KEY: &str = "test-system-key-0123456789";
const LINK_KEY_NEW: &str = "link-key-new-0123456789";
const LINK_KEY_OLD: &str = "link-key-old-0123456789";
const DEADLINE: Duration = Duration::from_secs(20);

// ----- harness ------------------------------------------------------------------------------

/// A sidecar with its HTTP API on a free loopback port.
struct Api {
    sidecar: Sidecar,
    http_port: u16,
    client: reqwest::Client,
    _dir: TestDir,
}

impl Api {
    fn start(extra: &[&str]) -> Api {
        let dir = test_dir();
        let sidecar = Sidecar::builder().dir(dir.path()).http_api().args(extra).start();
        Api { http_port: sidecar.http_port(), sidecar, client: new_client(), _dir: dir }
    }

    /// Restarts the binary on the same ports and database (a new client: pooled
    /// connections died with the old process).
    fn restart(&mut self) {
        self.sidecar.restart();
        self.client = new_client();
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{BASE}{path}", self.origin())
    }

    fn worker(&self) -> RawWorker {
        RawWorker::start(self.sidecar.endpoint(), test_orchestrator, test_activity(Arc::new(AtomicUsize::new(0))))
    }

    async fn get(&self, path: &str) -> Resp {
        send(self.client.get(self.url(path))).await
    }

    async fn post(&self, path: &str) -> Resp {
        send(self.client.post(self.url(path))).await
    }

    async fn post_json(&self, path: &str, body: &str) -> Resp {
        send(self.client.post(self.url(path)).header("content-type", "application/json").body(body.to_string())).await
    }

    async fn delete(&self, path: &str) -> Resp {
        send(self.client.delete(self.url(path))).await
    }

    /// GETs `url` until it answers 200 (or `DEADLINE`).
    async fn poll_done(&self, url: &str) -> Resp {
        let end = Instant::now() + DEADLINE;
        loop {
            let r = send(self.client.get(url)).await;
            if r.status != 202 || Instant::now() > end {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// GETs the status until `runtimeStatus` is `want`.
    async fn wait_runtime_status(&self, id: &str, want: &str) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let r = self.get(&format!("/instances/{id}")).await;
            let body = r.json();
            if body["runtimeStatus"] == want {
                return body;
            }
            assert!(Instant::now() < end, "'{id}' stayed {body}; log:\n{}", self.sidecar.log_tail(30));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn new_client() -> reqwest::Client {
    // No connection reuse: after a 413 the server may close a connection the pool would
    // otherwise hand to the next request (IncompleteMessage).
    reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(0).build().expect("client")
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.text))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().expect("ascii header").to_string())
    }

    fn content_type_is_json(&self) -> bool {
        self.header("content-type").is_some_and(|c| c.starts_with("application/json"))
    }

    /// An error answer: the status, a JSON body with `Message` and the stable `Code`.
    #[track_caller]
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{:?}", self.text);
        assert!(self.content_type_is_json(), "{:?}", self.headers);
        let b = self.json();
        assert_eq!(b["Code"], code, "{b}");
        assert!(b["Message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
    }
}

async fn send(rb: reqwest::RequestBuilder) -> Resp {
    let r = rb.send().await.expect("HTTP request failed");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    Resp { status, headers, text }
}

/// `2018-02-28T05:18:49Z`: UTC, second precision, literal Z.
fn is_second_precision_utc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

// ----- the test worker ------------------------------------------------------------------------

fn orchestration_name(req: &OrchestratorRequest) -> String {
    all_events(req)
        .find_map(|e| match &e.event_type {
            Some(EventType::ExecutionStarted(s)) => Some(s.name.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// `Echo` returns its input; `Fail` fails; `WaitEvent` completes with the data of the first
/// `approve` event; `Hello` calls `SayHello`; `Flaky` calls `FlakyAct` and fails if it fails.
fn test_orchestrator(req: &OrchestratorRequest) -> Vec<OrchestratorAction> {
    let input = orchestration_input(req);
    let mut scheduled = false;
    let mut completed = None;
    let mut failed = None;
    let mut approved = None;
    for e in all_events(req) {
        match &e.event_type {
            Some(EventType::TaskScheduled(_)) => scheduled = true,
            Some(EventType::TaskCompleted(c)) => completed = Some(c.result.clone()),
            Some(EventType::TaskFailed(f)) => failed = f.failure_details.clone(),
            Some(EventType::EventRaised(r)) if r.name == "approve" && approved.is_none() => {
                approved = Some(r.input.clone())
            }
            _ => {}
        }
    }
    match orchestration_name(req).as_str() {
        "Echo" => vec![complete(0, OrchestrationStatus::Completed, input)],
        "Fail" => vec![fail(0, "BoomError", "boom")],
        "WaitEvent" => match approved {
            Some(data) => vec![complete(0, OrchestrationStatus::Completed, data)],
            None => Vec::new(),
        },
        "Hello" | "Flaky" => {
            if let Some(f) = failed {
                vec![fail(1, &f.error_type, &format!("activity failed: {}", f.error_message))]
            } else if let Some(result) = completed {
                vec![complete(1, OrchestrationStatus::Completed, result)]
            } else if scheduled {
                Vec::new()
            } else if orchestration_name(req) == "Hello" {
                vec![schedule_task(0, "SayHello", input)]
            } else {
                vec![schedule_task(0, "FlakyAct", None)]
            }
        }
        _ => Vec::new(),
    }
}

/// `SayHello("x")` → `"Hello, x!"`; `FlakyAct` fails on its first call only.
fn test_activity(calls: Arc<AtomicUsize>) -> impl Fn(&ActivityRequest) -> Result<String, String> + Send + Sync {
    move |req: &ActivityRequest| match req.name.as_str() {
        "SayHello" => {
            let name: String = req.input.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
            Ok(json!(format!("Hello, {name}!")).to_string())
        }
        "FlakyAct" => {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err("transient".into())
            } else {
                Ok("\"recovered\"".into())
            }
        }
        other => Err(format!("unknown activity {other}")),
    }
}

// ----- the async HTTP pattern -------------------------------------------------------------------

#[tokio::test]
async fn start_poll_raise_event_and_finish_like_a_browser() {
    let api = Api::start(&[]);
    let _w = api.worker();

    let r = api.post_json("/orchestrators/WaitEvent", r#"{"order": 42}"#).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.header("retry-after").as_deref(), Some("10"));
    assert!(r.content_type_is_json());
    let body = r.json();
    let id = body["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 32, "generated ids are 32 hex digits: {id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // Field order and every link of the check-status payload.
    let keys = [
        "id",
        "statusQueryGetUri",
        "sendEventPostUri",
        "terminatePostUri",
        "purgeHistoryDeleteUri",
        "restartPostUri",
        "suspendPostUri",
        "resumePostUri",
    ];
    let positions: Vec<usize> = keys.iter().map(|k| r.text.find(&format!("\"{k}\"")).expect(k)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "field order: {}", r.text);
    let inst = api.url(&format!("/instances/{id}"));
    assert_eq!(body["statusQueryGetUri"], inst);
    assert_eq!(body["sendEventPostUri"], format!("{inst}/raiseEvent/{{eventName}}"));
    assert_eq!(body["terminatePostUri"], format!("{inst}/terminate?reason={{text}}"));
    assert_eq!(body["purgeHistoryDeleteUri"], inst);
    assert_eq!(body["restartPostUri"], format!("{inst}/restart"));
    assert_eq!(body["suspendPostUri"], format!("{inst}/suspend?reason={{text}}"));
    assert_eq!(body["resumePostUri"], format!("{inst}/resume?reason={{text}}"));
    let location = r.header("location").expect("Location");
    assert_eq!(location, inst);

    // While it runs: 202, Location = the request URL, Retry-After 5, the status object.
    let r = send(api.client.get(&location)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.header("location").as_deref(), Some(location.as_str()));
    assert_eq!(r.header("retry-after").as_deref(), Some("5"));
    let s = r.json();
    assert!(s["runtimeStatus"] == "Running" || s["runtimeStatus"] == "Pending", "{s}");
    assert_eq!(s["name"], "WaitEvent");
    assert_eq!(s["instanceId"], id.as_str());
    assert_eq!(s["input"], json!({"order": 42}));
    assert_eq!(s["output"], Value::Null);
    assert_eq!(s["customStatus"], Value::Null);
    assert!(s.get("historyEvents").is_none());
    let order =
        ["name", "instanceId", "runtimeStatus", "input", "customStatus", "output", "createdTime", "lastUpdatedTime"];
    let positions: Vec<usize> = order.iter().map(|k| r.text.find(&format!("\"{k}\"")).expect(k)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "field order: {}", r.text);
    assert!(is_second_precision_utc(s["createdTime"].as_str().expect("createdTime")), "{s}");
    assert!(is_second_precision_utc(s["lastUpdatedTime"].as_str().expect("lastUpdatedTime")), "{s}");
    // A Location with a query string is echoed exactly.
    let with_query = format!("{location}?showInput=false");
    let r = send(api.client.get(&with_query)).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("location").as_deref(), Some(with_query.as_str()));
    assert_eq!(r.json()["input"], Value::Null);

    // The end user answers through sendEventPostUri.
    let send_event = body["sendEventPostUri"].as_str().expect("uri").replace("{eventName}", "approve");
    let r = send(api.client.post(&send_event).header("content-type", "application/json").body(r#"{"ok":true}"#)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(r.text.is_empty());

    let r = api.poll_done(&location).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let s = r.json();
    assert_eq!(s["runtimeStatus"], "Completed");
    assert_eq!(s["output"], json!({"ok": true}));
    assert!(r.header("location").is_none());

    // Finished: events and control operations answer 410.
    api.post_json(&format!("/instances/{id}/raiseEvent/approve"), "1").await.assert_error(410, "DURO-2010");
    api.post(&format!("/instances/{id}/terminate")).await.assert_error(410, "DURO-2010");
    api.post(&format!("/instances/{id}/suspend")).await.assert_error(410, "DURO-2010");
    api.post(&format!("/instances/{id}/resume")).await.assert_error(410, "DURO-2010");
    api.post(&format!("/instances/{id}/rewind")).await.assert_error(410, "DURO-2010");
}

#[tokio::test]
async fn wait_for_completion_on_start() {
    let api = Api::start(&[]);
    let _w = api.worker();

    // Completes within the timeout: 200 with the output only.
    let r = api.post_json("/orchestrators/Echo?timeout=15&pollingInterval=1", r#"{"a": [1, 2]}"#).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"a": [1, 2]}));

    // Does not finish in time: the 202 check-status response.
    let r = api.post("/orchestrators/WaitEvent/w1?timeout=0.3&pollingInterval=0.1").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json()["id"], "w1");
    assert!(r.header("location").is_some());

    // Failed: the status response (200, or 500 when asked), output = the failure message.
    let r = api.post("/orchestrators/Fail?timeout=15&pollingInterval=1").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let s = r.json();
    assert_eq!(s["runtimeStatus"], "Failed");
    assert_eq!(s["output"], "boom");
    let r = api.post("/orchestrators/Fail?timeout=15&pollingInterval=1&returnInternalServerErrorOnFailure=true").await;
    assert_eq!(r.status, 500, "{}", r.text);
    let failed_id = r.json()["instanceId"].as_str().expect("id").to_string();
    assert_eq!(r.json()["output"], "boom");
    let r = api.get(&format!("/instances/{failed_id}")).await;
    assert_eq!(r.status, 200);
    let r = api.get(&format!("/instances/{failed_id}?returnInternalServerErrorOnFailure=true")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["runtimeStatus"], "Failed");
    // The flag is carried into the status link.
    let r = api.post("/orchestrators/WaitEvent?returnInternalServerErrorOnFailure=true").await;
    assert!(r.json()["statusQueryGetUri"].as_str().expect("uri").ends_with("?returnInternalServerErrorOnFailure=true"));

    // Only one of the two parameters: no waiting.
    let r = api.post("/orchestrators/WaitEvent?timeout=30").await;
    assert_eq!(r.status, 202);
    // pollingInterval larger than timeout, or not a number: 400.
    api.post("/orchestrators/Echo?timeout=1&pollingInterval=2").await.assert_error(400, "DURO-2001");
    api.post("/orchestrators/Echo?timeout=abc&pollingInterval=1").await.assert_error(400, "DURO-2001");
    api.post("/orchestrators/Echo?timeout=-1&pollingInterval=0").await.assert_error(400, "DURO-2001");
}

// ----- status, history, list ------------------------------------------------------------------

#[tokio::test]
async fn status_options_and_history() {
    let api = Api::start(&[]);
    let _w = api.worker();
    let r = api.post_json("/orchestrators/Hello/h1?timeout=15&pollingInterval=1", r#""Tokyo""#).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!("Hello, Tokyo!"));

    let s = api.get("/instances/h1").await.json();
    assert_eq!(s["input"], "Tokyo");
    assert_eq!(s["output"], "Hello, Tokyo!");
    assert!(s.get("historyEvents").is_none());
    assert_eq!(api.get("/instances/h1?showInput=false").await.json()["input"], Value::Null);

    let r = api.get("/instances/h1?showHistory=true").await;
    assert_eq!(r.status, 200);
    let h = r.json()["historyEvents"].as_array().expect("historyEvents").clone();
    let types: Vec<&str> = h.iter().map(|e| e["EventType"].as_str().expect("EventType")).collect();
    assert_eq!(types, ["ExecutionStarted", "TaskCompleted", "ExecutionCompleted"], "{h:?}");
    assert_eq!(h[0]["FunctionName"], "Hello");
    assert_eq!(h[0]["Input"], "Tokyo");
    assert_eq!(h[1]["FunctionName"], "SayHello");
    assert!(h[1]["ScheduledTime"].is_string());
    assert!(h[1]["Timestamp"].as_str().expect("Timestamp").ends_with('Z'));
    assert!(h[1].get("Result").is_none(), "results only with showHistoryOutput");
    assert_eq!(h[2]["OrchestrationStatus"], "Completed");
    assert!(h[2].get("Result").is_none());
    assert!(h.iter().all(|e| e.get("EventId").is_none()));

    let h = api.get("/instances/h1?showHistory=true&showHistoryOutput=true&showInput=false").await.json();
    let h = h["historyEvents"].as_array().expect("historyEvents");
    assert_eq!(h[1]["Result"], "Hello, Tokyo!");
    assert_eq!(h[2]["Result"], "Hello, Tokyo!");
    assert!(h[0].get("Input").is_none());

    // Query names are case-insensitive, operation segments too.
    let h = api.get("/instances/h1?SHOWHISTORY=True").await.json();
    assert!(h["historyEvents"].is_array());
    assert_eq!(api.get("/Instances/h1/").await.status, 200);

    // A failed activity: TaskFailed merged with its scheduling, the failure as output.
    let r = api.post("/orchestrators/Flaky/f1?timeout=15&pollingInterval=1").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let s = api.get("/instances/f1?showHistory=true").await.json();
    assert_eq!(s["runtimeStatus"], "Failed");
    assert_eq!(s["output"], "activity failed: transient");
    let failed =
        s["historyEvents"].as_array().expect("history").iter().find(|e| e["EventType"] == "TaskFailed").cloned();
    let failed = failed.expect("a TaskFailed row");
    assert_eq!(failed["FunctionName"], "FlakyAct");
    assert_eq!(failed["Reason"], "transient");
}

#[tokio::test]
async fn an_exactly_full_last_page_ends_paging() {
    let api = Api::start(&[]);
    for i in 0..6 {
        assert_eq!(api.post(&format!("/orchestrators/Paged/full-{i}")).await.status, 202);
    }
    let first = api.get("/instances?instanceIdPrefix=full-&top=3").await;
    let token = first.header("x-ms-continuation-token").expect("a second page exists");
    assert!(!token.is_empty());
    let second = send(
        api.client.get(api.url("/instances?instanceIdPrefix=full-&top=3")).header("x-ms-continuation-token", &token),
    )
    .await;
    assert_eq!(second.json().as_array().map(Vec::len), Some(3));
    assert_eq!(
        second.header("x-ms-continuation-token").as_deref(),
        Some(""),
        "the last page is full, but nothing follows it: no token (was: a token leading to an empty page)"
    );
}

#[tokio::test]
async fn list_filters_and_pages_with_the_continuation_header() {
    let api = Api::start(&[]);
    let before = api.get("/instances").await;
    assert_eq!(before.status, 200);
    assert_eq!(before.json(), json!([]));
    assert_eq!(before.header("x-ms-continuation-token").as_deref(), Some(""));

    for i in 0..7 {
        assert_eq!(api.post_json(&format!("/orchestrators/Paged/pg-{i}"), &i.to_string()).await.status, 202);
    }
    for i in 0..2 {
        assert_eq!(api.post(&format!("/orchestrators/Other/other-{i}")).await.status, 202);
    }

    // Page through with top=3, echoing the continuation header.
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut rb = api.client.get(api.url("/instances?instanceIdPrefix=pg-&top=3"));
        if let Some(t) = &token {
            rb = rb.header("x-ms-continuation-token", t);
        }
        let r = send(rb).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let page = r.json();
        let page = page.as_array().expect("array");
        assert!(page.len() <= 3);
        for s in page {
            assert!(s.get("historyEvents").is_none());
            assert_eq!(s["runtimeStatus"], "Pending");
            ids.push(s["instanceId"].as_str().expect("id").to_string());
        }
        pages += 1;
        assert!(pages < 10, "paging does not end");
        match r.header("x-ms-continuation-token") {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    ids.sort();
    assert_eq!(ids, (0..7).map(|i| format!("pg-{i}")).collect::<Vec<_>>());
    assert!(pages >= 3);

    let count = |v: Value| v.as_array().expect("array").len();
    assert_eq!(count(api.get("/instances/").await.json()), 9);
    assert_eq!(count(api.get("/instances?runtimeStatus=Pending").await.json()), 9);
    assert_eq!(count(api.get("/instances?runtimeStatus=Completed,Failed").await.json()), 0);
    assert_eq!(count(api.get("/instances?runtimeStatus=Completed&runtimeStatus=Pending").await.json()), 9);
    // Names are case-sensitive; unknown entries are dropped (no filter left = all).
    assert_eq!(count(api.get("/instances?runtimeStatus=pending").await.json()), 9);
    assert_eq!(count(api.get("/instances?createdTimeFrom=2999-01-01T00:00:00Z").await.json()), 0);
    assert_eq!(count(api.get("/instances?createdTimeTo=2000-01-01T00:00:00Z").await.json()), 0);
    assert_eq!(count(api.get("/instances?createdTimeFrom=2000-01-01&createdTimeTo=2999-01-01").await.json()), 9);
    let s = api.get("/instances?instanceIdPrefix=pg-3&showInput=false").await.json();
    assert_eq!(s[0]["instanceId"], "pg-3");
    assert_eq!(s[0]["input"], Value::Null);
    assert_eq!(api.get("/instances?instanceIdPrefix=pg-3").await.json()[0]["input"], 3);

    api.get("/instances?createdTimeFrom=yesterday").await.assert_error(400, "DURO-2001");
    let r = send(api.client.get(api.url("/instances")).header("x-ms-continuation-token", "***")).await;
    r.assert_error(400, "DURO-2001");
}

// ----- control operations ----------------------------------------------------------------------

#[tokio::test]
async fn terminate_suspend_resume_restart_and_rewind() {
    let api = Api::start(&[]);
    let _w = api.worker();

    // Suspend holds events; resume delivers them.
    assert_eq!(api.post("/orchestrators/WaitEvent/s1").await.status, 202);
    api.wait_runtime_status("s1", "Running").await;
    assert_eq!(api.post("/instances/s1/suspend?reason=pause").await.status, 202);
    let s = api.wait_runtime_status("s1", "Suspended").await;
    assert_eq!(s["output"], Value::Null);
    let r = api.get("/instances/s1").await;
    assert_eq!(r.status, 202, "a suspended instance is not finished");
    assert_eq!(api.post("/instances/s1/SUSPEND").await.status, 202, "suspend is idempotent");
    assert_eq!(api.post_json("/instances/s1/raiseEvent/approve", r#""yes""#).await.status, 202);
    assert_eq!(api.post("/instances/s1/resume?reason=go").await.status, 202);
    let r = api.poll_done(&api.url("/instances/s1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["output"], "yes");

    // Terminate: the reason becomes the output.
    assert_eq!(api.post("/orchestrators/WaitEvent/t1").await.status, 202);
    api.wait_runtime_status("t1", "Running").await;
    let r = api.post("/instances/t1/terminate?reason=no%20longer%20needed").await;
    assert_eq!(r.status, 202, "{}", r.text);
    let s = api.wait_runtime_status("t1", "Terminated").await;
    assert_eq!(s["output"], "no longer needed");
    assert_eq!(api.get("/instances/t1").await.status, 200);

    // Restart with the same id: the check-status payload of that id, running again.
    let r = api.post("/instances/t1/restart?restartWithNewInstanceId=false").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json()["id"], "t1");
    api.wait_runtime_status("t1", "Running").await;
    // Restart of a live instance: 409.
    api.post("/instances/t1/restart?restartWithNewInstanceId=false").await.assert_error(409, "DURO-2011");
    api.post("/instances/t1/terminate").await;
    api.wait_runtime_status("t1", "Terminated").await;
    // Restart with a new id (the default), waiting for completion.
    let r = api.post("/orchestrators/Echo/e1?timeout=15&pollingInterval=1").await;
    assert_eq!(r.status, 200);
    let r = api.post("/instances/e1/restart?timeout=15&pollingInterval=1").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api.post("/instances/e1/restart").await;
    assert_eq!(r.status, 202);
    let new_id = r.json()["id"].as_str().expect("id").to_string();
    assert_ne!(new_id, "e1");
    assert_eq!(new_id.len(), 32);
    // Restart of an unknown id: 400, as Durable Functions.
    api.post("/instances/nope/restart").await.assert_error(400, "DURO-2001");

    // Rewind: only failed instances; the failed activity runs again and succeeds.
    assert_eq!(api.post("/orchestrators/WaitEvent/r0").await.status, 202);
    api.wait_runtime_status("r0", "Running").await;
    api.post("/instances/r0/rewind").await.assert_error(409, "DURO-2011");
    let r = api.post("/orchestrators/Flaky/r1?timeout=15&pollingInterval=1").await;
    assert_eq!(r.json()["runtimeStatus"], "Failed", "{}", r.text);
    let r = api.post("/instances/r1/rewind?reason=fixed").await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = api.poll_done(&api.url("/instances/r1")).await;
    assert_eq!(r.json()["runtimeStatus"], "Completed", "{}", r.text);
    assert_eq!(r.json()["output"], "recovered");
}

#[tokio::test]
async fn purge_one_and_by_filter() {
    let api = Api::start(&[]);
    let _w = api.worker();
    assert_eq!(api.post("/orchestrators/WaitEvent/p1").await.status, 202);
    api.wait_runtime_status("p1", "Running").await;
    api.delete("/instances/p1").await.assert_error(409, "DURO-2011");
    api.post("/instances/p1/terminate").await;
    api.wait_runtime_status("p1", "Terminated").await;
    let r = api.delete("/instances/p1").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"instancesDeleted": 1}));
    api.get("/instances/p1").await.assert_error(404, "DURO-2008");
    api.delete("/instances/p1").await.assert_error(404, "DURO-2008");

    for id in ["q1", "q2", "q3"] {
        assert_eq!(api.post(&format!("/orchestrators/Echo/{id}?timeout=15&pollingInterval=1")).await.status, 200);
    }
    assert_eq!(api.post("/orchestrators/WaitEvent/q4").await.status, 202);
    api.delete("/instances").await.assert_error(400, "DURO-2001");
    api.delete("/instances?createdTimeFrom=garbage").await.assert_error(400, "DURO-2001");
    api.delete("/instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Failed")
        .await
        .assert_error(404, "DURO-2008");
    let r = api.delete("/instances?createdTimeFrom=2000-01-01T00:00:00Z&runtimeStatus=Completed").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"instancesDeleted": 3}));
    api.delete("/instances?createdTimeFrom=2000-01-01T00:00:00Z").await.assert_error(404, "DURO-2008");
    // The live instance was not purged.
    assert_eq!(api.get("/instances/q4").await.status, 202);
}

/// The attack: a web page the user happens to visit posts to the open loopback API from their
/// browser (a simple form POST needs no CORS preflight). The browser names the page's origin,
/// and the API refuses; clients that are not browsers send no `Origin` and are unaffected.
#[tokio::test]
async fn a_web_page_cannot_drive_the_api_from_a_browser() {
    let api = Api::start(&[]);
    let _w = api.worker();
    assert_eq!(api.post("/orchestrators/WaitEvent/victim").await.status, 202);
    api.wait_runtime_status("victim", "Running").await;
    let terminate = api.url("/instances/victim/terminate");
    let from_evil = api.client.post(&terminate).header("origin", "https://evil.example");
    send(from_evil).await.assert_error(403, "DURO-2017");
    let fetch_metadata = api.client.post(&terminate).header("sec-fetch-site", "cross-site");
    send(fetch_metadata).await.assert_error(403, "DURO-2017");
    let start = api.client.post(api.url("/orchestrators/Echo/evil-start")).header("origin", "null");
    send(start).await.assert_error(403, "DURO-2017");
    api.get("/instances/evil-start").await.assert_error(404, "DURO-2008");
    // Reads stay open to pages (the API answers no CORS headers, so a page cannot read them).
    assert_eq!(
        send(api.client.get(api.url("/instances/victim")).header("origin", "https://evil.example")).await.status,
        202
    );
    api.wait_runtime_status("victim", "Running").await;
    // The API's own origin (a same-origin page) and non-browser clients still change things.
    let same = api.client.post(&terminate).header("origin", api.origin()).header("sec-fetch-site", "same-origin");
    assert_eq!(send(same).await.status, 202);
    api.wait_runtime_status("victim", "Terminated").await;
}

// ----- authentication --------------------------------------------------------------------------

#[tokio::test]
async fn system_key_is_required_when_configured() {
    let api = Api::start(&["--http-system-key", KEY, "--http-exact-links"]);
    api.get("/instances").await.assert_error(401, "DURO-2005");
    api.post("/orchestrators/Echo").await.assert_error(401, "DURO-2005");
    api.get("/instances/x").await.assert_error(401, "DURO-2005");
    api.get("/instances?code=wrong").await.assert_error(401, "DURO-2005");
    let r = send(api.client.get(api.url("/instances")).header("x-functions-key", "wrong")).await;
    r.assert_error(401, "DURO-2005");
    // A right key in the query does not rescue a wrong header.
    let r = send(api.client.get(api.url(&format!("/instances?code={KEY}"))).header("x-functions-key", "x")).await;
    r.assert_error(401, "DURO-2005");

    let r = send(api.client.post(api.url("/orchestrators/Echo/k1")).header("x-functions-key", KEY)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    // Generated links carry the key, as Durable Functions' do.
    let b = r.json();
    let inst = api.url("/instances/k1");
    assert_eq!(b["statusQueryGetUri"], format!("{inst}?code={KEY}"));
    assert_eq!(b["terminatePostUri"], format!("{inst}/terminate?reason={{text}}&code={KEY}"));
    assert_eq!(r.header("location"), Some(format!("{inst}?code={KEY}")));
    let r = api.get(&format!("/instances/k1?code={KEY}")).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = api.get(&format!("/instances?CODE={KEY}")).await;
    assert_eq!(r.status, 200);
    // The OpenAPI document is public.
    assert_eq!(api.get("/openapi.json").await.status, 200);
}

#[test]
fn refuses_an_open_api_on_a_non_loopback_address() {
    let dir = test_dir();
    let port = free_port();
    let out = std::process::Command::new(duro_bin())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("0.0.0.0:{port}")])
        .arg("--db")
        .arg(dir.path().join("d.db"))
        .env_remove("DURO_SYSTEM_KEY")
        .env_remove("DURO_HTTP_INSECURE")
        .output()
        .expect("run duro");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address") && err.contains("DURO_SYSTEM_KEY"), "{err}");
    assert!(!dir.path().join("d.db").exists(), "refused before opening the store");

    // --http-insecure overrides; a key makes it fine too.
    for extra in [vec!["--http-insecure"], vec!["--http-system-key", KEY]] {
        let listen = format!("0.0.0.0:{}", free_port());
        let mut args = vec!["--http-listen", listen.as_str()];
        args.extend(extra);
        let sub = test_dir();
        let mut s = Sidecar::builder().dir(sub.path()).args(&args).start();
        assert!(s.terminate(), "clean shutdown");
    }
}

#[test]
fn an_explicit_http_address_that_is_taken_is_fatal() {
    let dir = test_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = std::process::Command::new(duro_bin())
        .args(["--listen", &format!("127.0.0.1:{}", free_port()), "--http-listen", &addr])
        .arg("--db")
        .arg(dir.path().join("d.db"))
        .output()
        .expect("run duro");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen for HTTP"));
}

// ----- signed status links ------------------------------------------------------------------

/// A link signature for execution `exec` of instance `id` (the sidecar's format).
fn sign(key: &str, id: &str, exec: &str, ops: &str, exp: i64) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
    m.update(format!("duro-link-v2\n{}:{id}\n{}:{exec}\n{ops}\n{exp}", id.len(), exec.len()).as_bytes());
    URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
}

/// The current execution id of `id`, from its `executionStarted` event.
async fn execution_id(api: &Api, id: &str) -> String {
    let client = api.sidecar.client().await;
    for e in history(&client, id).await {
        if let Some(EventType::ExecutionStarted(s)) = e.event_type {
            return s.orchestration_instance.expect("instance").execution_id.expect("execution id");
        }
    }
    panic!("no executionStarted for {id}");
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

#[tokio::test]
async fn signed_links_grant_one_instance_without_the_key() {
    let keys = format!("{LINK_KEY_NEW},{LINK_KEY_OLD}");
    let mut api = Api::start(&["--http-system-key", KEY, "--http-link-keys", &keys]);
    let w = api.worker();
    let hdr = |rb: reqwest::RequestBuilder| rb.header("x-functions-key", KEY);

    let r = send(hdr(api.client.post(
        api.url("/orchestrators/WaitEvent/sl1?signedLinks=true&signedLinkOps=status,raiseEvent&signedLinkTtl=600"),
    )))
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.header("retry-after").as_deref(), Some("10"));
    assert!(!r.text.contains(KEY), "signed links never carry the management key: {}", r.text);
    let b = r.json();
    assert_eq!(b["id"], "sl1");
    let status_link = b["statusQueryGetUri"].as_str().expect("status link").to_string();
    assert_eq!(r.header("location"), Some(status_link.clone()));
    assert!(status_link.starts_with(&api.url("/instances/sl1?")));
    assert!(b.get("terminatePostUri").is_none());
    let expires = b["expiresAt"].as_str().expect("expiresAt");
    assert!(is_second_precision_utc(expires));
    let event_link = b["sendEventPostUri"].as_str().expect("event link").replace("{eventName}", "approve");

    // The end client polls without a key; it gets the status, never the history.
    let r = send(api.client.get(&status_link)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.header("location"), Some(status_link.clone()));
    let r = send(api.client.get(format!("{status_link}&showHistory=true"))).await;
    assert!(r.json().get("historyEvents").is_none());

    // Tampered signature, expiry or operations; another instance; other routes.
    let tampered = {
        let (head, sig) = status_link.rsplit_once("sig=").expect("sig");
        let first = if sig.starts_with('A') { "B" } else { "A" };
        format!("{head}sig={first}{}", &sig[1..])
    };
    send(api.client.get(&tampered)).await.assert_error(401, "DURO-2006");
    let exp_pos = status_link.find("exp=").expect("exp") + 4;
    let mut later = status_link.clone();
    later.replace_range(exp_pos..exp_pos + 1, "9");
    send(api.client.get(&later)).await.assert_error(401, "DURO-2006");
    send(api.client.get(status_link.replace("ops=status%2CraiseEvent", "ops=status")))
        .await
        .assert_error(401, "DURO-2006");
    assert_eq!(send(hdr(api.client.post(api.url("/orchestrators/WaitEvent/sl2")))).await.status, 202);
    send(api.client.get(status_link.replace("/instances/sl1?", "/instances/sl2?")))
        .await
        .assert_error(401, "DURO-2006");
    let query = status_link.split_once('?').expect("query").1.to_string();
    send(api.client.post(api.url(&format!("/instances/sl1/terminate?{query}")))).await.assert_error(403, "DURO-2007");
    send(api.client.get(api.url(&format!("/instances?{query}")))).await.assert_error(403, "DURO-2007");
    send(api.client.delete(api.url(&format!("/instances/sl1?{query}")))).await.assert_error(403, "DURO-2007");
    send(api.client.get(api.url("/instances/sl1"))).await.assert_error(401, "DURO-2005");

    // A status-only link cannot raise events.
    let r = send(hdr(api.client.post(api.url("/instances/sl2/signedLinks")))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let only_status = r.json();
    assert!(only_status.get("sendEventPostUri").is_none());
    let q2 = only_status["statusQueryGetUri"].as_str().expect("link").split_once('?').expect("q").1.to_string();
    let r = send(
        api.client
            .post(api.url(&format!("/instances/sl2/raiseEvent/approve?{q2}")))
            .header("content-type", "application/json")
            .body("1"),
    )
    .await;
    r.assert_error(403, "DURO-2007");
    assert_eq!(send(api.client.get(only_status["statusQueryGetUri"].as_str().expect("link"))).await.status, 202);

    // Expired (validly signed) and signed with an unknown key.
    let exec = execution_id(&api, "sl1").await;
    let past = unix_now() - 10;
    let expired = api
        .url(&format!("/instances/sl1?ops=status&exp={past}&sig={}", sign(LINK_KEY_NEW, "sl1", &exec, "status", past)));
    let r = send(api.client.get(&expired)).await;
    r.assert_error(401, "DURO-2006");
    assert!(r.json()["Message"].as_str().expect("msg").contains("expired"));
    let future = unix_now() + 600;
    let foreign = api.url(&format!(
        "/instances/sl1?ops=status&exp={future}&sig={}",
        sign("some-other-key-0123456789", "sl1", &exec, "status", future)
    ));
    send(api.client.get(&foreign)).await.assert_error(401, "DURO-2006");
    // Rotation: a link signed with the older key still verifies.
    let old = api.url(&format!(
        "/instances/sl1?ops=status&exp={future}&sig={}",
        sign(LINK_KEY_OLD, "sl1", &exec, "status", future)
    ));
    assert_eq!(send(api.client.get(&old)).await.status, 202);
    // Our reconstruction of the format signs exactly like the sidecar's first key.
    assert!(status_link.contains(&sign(
        LINK_KEY_NEW,
        "sl1",
        &exec,
        "status,raiseEvent",
        status_link[exp_pos..].split('&').next().expect("exp").parse().expect("exp")
    )));

    // Links survive a restart (configured keys); the end client raises the event and polls.
    w.stop().await;
    api.restart();
    let _w = api.worker();
    let r = send(api.client.post(&event_link).header("content-type", "application/json").body(r#""approved""#)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = api.poll_done(&status_link).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["output"], "approved");
    // Finished: the event link answers 410.
    send(api.client.post(&event_link).header("content-type", "application/json").body("1"))
        .await
        .assert_error(410, "DURO-2010");
}

// ----- bad input ------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_gets_4xx_with_a_json_body() {
    let api = Api::start(&["--http-max-body-bytes", "1024"]);

    // Malformed JSON.
    api.post_json("/orchestrators/Echo", "{nope").await.assert_error(400, "DURO-2002");
    api.post_json("/orchestrators/Echo", "[1, 2").await.assert_error(400, "DURO-2002");
    let r = send(api.client.post(api.url("/orchestrators/Echo")).body(vec![0xff, 0xfe, 0x00])).await;
    r.assert_error(400, "DURO-2002");
    // Oversized bodies: 413 with JSON, declared or not.
    let big = format!("\"{}\"", "x".repeat(2000));
    api.post_json("/orchestrators/Echo", &big).await.assert_error(413, "DURO-2004");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..20).map(|_| Ok(vec![b' '; 100])).collect();
    let r = send(
        api.client.post(api.url("/orchestrators/Echo")).body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
    )
    .await;
    r.assert_error(413, "DURO-2004");
    // Within the limit it works, and an empty body means no input.
    let r = api.post_json("/orchestrators/Echo/small", r#"{"fits": true}"#).await;
    assert_eq!(r.status, 202);
    let r = api.post("/orchestrators/Echo/empty").await;
    assert_eq!(r.status, 202);
    assert_eq!(api.get("/instances/empty").await.json()["input"], Value::Null);

    // Instance ids Durable Functions refuses.
    api.post("/orchestrators/Echo/@bad").await.assert_error(400, "DURO-2001");
    api.post("/orchestrators/Echo/a%2Fb").await.assert_error(400, "DURO-2001");
    api.post("/orchestrators/Echo/a%23b").await.assert_error(400, "DURO-2001");
    api.post("/orchestrators/Echo/a%07b").await.assert_error(400, "DURO-2001");
    api.post(&format!("/orchestrators/Echo/{}", "x".repeat(257))).await.assert_error(400, "DURO-2001");
    api.post("/instances/%FF").await.assert_error(400, "DURO-2001");
    // An id in use by a live instance.
    api.post("/orchestrators/Echo/small").await.assert_error(409, "DURO-2011");

    // raiseEvent needs application/json and valid JSON.
    let r = send(api.client.post(api.url("/instances/small/raiseEvent/e")).body("1")).await;
    r.assert_error(400, "DURO-2003");
    let r =
        send(api.client.post(api.url("/instances/small/raiseEvent/e")).header("content-type", "text/plain").body("1"))
            .await;
    r.assert_error(400, "DURO-2003");
    api.post_json("/instances/small/raiseEvent/e", "{x").await.assert_error(400, "DURO-2002");
    let r = send(
        api.client
            .post(api.url("/instances/small/raiseEvent/e"))
            .header("content-type", "application/json; charset=utf-8")
            .body("{\"ok\": 1}"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    api.post_json("/instances/small/raiseEvent/e", &big).await.assert_error(413, "DURO-2004");

    // Unknown instances: 404 on every instance route.
    api.get("/instances/ghost").await.assert_error(404, "DURO-2008");
    api.delete("/instances/ghost").await.assert_error(404, "DURO-2008");
    api.post_json("/instances/ghost/raiseEvent/e", "1").await.assert_error(404, "DURO-2008");
    for op in ["terminate", "suspend", "resume", "rewind", "signedLinks"] {
        api.post(&format!("/instances/ghost/{op}")).await.assert_error(404, "DURO-2008");
    }

    // Unknown routes and wrong methods: 404 (as Durable Functions), with a JSON body.
    api.get("/nothing").await.assert_error(404, "DURO-2009");
    api.get("/instances/ghost/terminate").await.assert_error(404, "DURO-2009");
    api.post("/instances/ghost/explode").await.assert_error(404, "DURO-2009");
    api.get("/orchestrators/Echo").await.assert_error(404, "DURO-2009");
    send(api.client.put(api.url("/instances"))).await.assert_error(404, "DURO-2009");
    send(api.client.get(format!("{}/", api.origin()))).await.assert_error(404, "DURO-2009");

    // Bad link parameters.
    api.post("/orchestrators/Echo?signedLinks=true&signedLinkOps=terminate").await.assert_error(400, "DURO-2001");
    api.post("/orchestrators/Echo?signedLinks=true&signedLinkTtl=0").await.assert_error(400, "DURO-2001");
    send(api.client.get(api.url("/instances/small?sig=abc"))).await.assert_error(401, "DURO-2006");

    // Entities: bad input and unknown entities.
    api.get("/entities/counter/k").await.assert_error(404, "DURO-2008");
    api.post("/entities/counter/k").await.assert_error(400, "DURO-2001");
    api.delete("/entities/counter/k").await.assert_error(404, "DURO-2009");
    let plain = api.client.post(api.url("/entities/counter/k?op=add")).header("content-type", "text/plain").body("1");
    send(plain).await.assert_error(400, "DURO-2003");
    api.post_json("/entities/counter/k?op=add", "{not json").await.assert_error(400, "DURO-2002");
}

/// An entity signaled over HTTP runs on a worker; its state is then read and listed over HTTP.
#[tokio::test]
async fn entities_are_signaled_read_and_listed_over_http() {
    use duro_proto::{operation_result, EntityBatchResult, OperationResult, OperationResultSuccess};
    let api = Api::start(&[]);
    assert_eq!(api.post_json("/entities/Counter/k1?op=add", "5").await.status, 202);
    assert_eq!(api.post("/entities/counter/k2?op=add").await.status, 202);
    assert_eq!(api.get("/entities").await.json(), json!([]), "entities without state are not listed");
    let client = api.sidecar.client().await;
    let mut stream = open_stream(&client, Default::default()).await;
    for _ in 0..2 {
        let item = next_work(&mut stream, DEADLINE).await.expect("an entity batch");
        let Some(duro_proto::work_item::Request::EntityRequestV2(req)) = &item.request else {
            panic!("expected an entity work item: {item:?}")
        };
        let input = match &req.operation_requests[0].event_type {
            Some(EventType::EntityOperationSignaled(s)) => s.input.clone(),
            other => panic!("expected a signal: {other:?}"),
        };
        let state = if req.instance_id == "@counter@k1" { input } else { Some("{\"n\":1}".to_string()) };
        let result = EntityBatchResult {
            results: vec![OperationResult {
                result_type: Some(operation_result::ResultType::Success(OperationResultSuccess::default())),
            }],
            entity_state: state,
            completion_token: item.completion_token.clone(),
            ..Default::default()
        };
        client.clone().complete_entity_task(result).await.expect("completed");
    }
    let r = api.get("/entities/counter/k1").await;
    assert_eq!((r.status, r.text.as_str()), (200, "5"));
    assert!(r.content_type_is_json());
    let page = api.get("/entities/COUNTER?fetchState=true&top=1").await;
    assert_eq!(
        page.json(),
        json!([{"entityId": {"name": "counter", "key": "k1"}, "lastOperationTime": page.json()[0]["lastOperationTime"], "state": 5}])
    );
    let token = page.header("x-ms-continuation-token").expect("a second page");
    let next =
        send(api.client.get(api.url("/entities/counter?fetchState=true")).header("x-ms-continuation-token", token))
            .await;
    assert_eq!(next.json()[0]["state"], json!({"n": 1}));
    assert!(next.header("x-ms-continuation-token").unwrap_or_default().is_empty(), "the last page has no token");
    assert_eq!(api.get("/entities/other").await.json(), json!([]));
}

// ----- URLs, OpenAPI, shutdown --------------------------------------------------------------------

#[tokio::test]
async fn links_follow_the_host_and_forwarded_headers_only_when_trusted() {
    let api = Api::start(&[]);
    let r = send(
        api.client
            .post(api.url("/orchestrators/Echo/u1"))
            .header("host", "example.test:8080")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["statusQueryGetUri"], format!("http://example.test:8080{BASE}/instances/u1"));
    // An id with characters that need escaping is escaped in links.
    let r = api.post("/orchestrators/Echo/a%20b%2Bc").await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json()["id"], "a b+c");
    assert_eq!(r.json()["statusQueryGetUri"], api.url("/instances/a%20b%2Bc"));
    assert_eq!(send(api.client.get(r.json()["statusQueryGetUri"].as_str().expect("uri"))).await.status, 202);

    let trusted = Api::start(&["--http-trust-forwarded"]);
    let r = send(
        trusted
            .client
            .post(trusted.url("/orchestrators/Echo/u2"))
            .header("x-forwarded-host", "api.example.com")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(r.json()["statusQueryGetUri"], format!("https://api.example.com{BASE}/instances/u2"));
    // A forwarded host that could inject into URLs is ignored.
    let r = send(trusted.client.post(trusted.url("/orchestrators/Echo/u3")).header("x-forwarded-host", "a/b?c")).await;
    assert_eq!(r.json()["statusQueryGetUri"], trusted.url("/instances/u3"));

    let public = Api::start(&["--http-public-url", "https://gw.example.com/duro/"]);
    let r = public.post("/orchestrators/Echo/u4").await;
    assert_eq!(r.json()["statusQueryGetUri"], format!("https://gw.example.com/duro{BASE}/instances/u4"));
}

#[tokio::test]
async fn serves_its_openapi_document() {
    let api = Api::start(&[]);
    let r = api.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    assert!(r.content_type_is_json());
    assert_eq!(r.text, include_str!("../../sidecar/openapi.json"));
    let doc = r.json();
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for path in [
        "/orchestrators/{functionName}",
        "/orchestrators/{functionName}/{instanceId}",
        "/instances",
        "/instances/{instanceId}",
        "/instances/{instanceId}/raiseEvent/{eventName}",
        "/instances/{instanceId}/terminate",
        "/instances/{instanceId}/suspend",
        "/instances/{instanceId}/resume",
        "/instances/{instanceId}/rewind",
        "/instances/{instanceId}/restart",
        "/entities/{entityName}/{entityKey}",
    ] {
        assert!(doc["paths"].get(format!("{BASE}{path}")).is_some(), "{path} is documented");
    }
}

#[tokio::test]
async fn shutdown_ends_waiting_requests() {
    let mut api = Api::start(&[]);
    let client = api.client.clone();
    let url = api.url("/orchestrators/WaitEvent/sd1?timeout=60&pollingInterval=1");
    let waiting = tokio::spawn(async move { client.post(url).send().await.map(|r| r.status().as_u16()) });
    let end = Instant::now() + DEADLINE;
    while api.get("/instances/sd1").await.status != 202 {
        assert!(Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let clean = tokio::task::spawn_blocking(move || {
        let ok = api.sidecar.terminate();
        (ok, api)
    })
    .await
    .expect("join");
    assert!(clean.0, "duro exits cleanly; log:\n{}", clean.1.sidecar.log_tail(30));
    assert!(started.elapsed() < Duration::from_secs(15), "shutdown did not wait for the 60 s request");
    // A 503, or the connection closed: both end the request.
    if let Ok(status) = waiting.await.expect("join") {
        assert_eq!(status, 503);
    }
}
