//! Integration tests against the real `duro` binary: client, worker and every context
//! operation end to end. Build the sidecar first: `cargo build -p duro`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{poll_until, start_sidecar, start_worker, SdkClient, Sidecar, WAIT};
use duro_sdk::{
    ActivityContext, ClientError, DurableHttpRequest, DurableHttpResponse, Failure, InstanceQuery,
    OrchestrationContext, OrchestrationStatus, PurgeFilter, Registry, RetryPolicy, ReusePolicy, StartOptions,
    SubOrchestrationOptions, TaskError,
};
use serde_json::{json, Value};

fn base_registry() -> Registry {
    let mut r = Registry::new();
    r.add_activity("Echo", |_ctx: ActivityContext, v: Value| async move { Ok::<_, Failure>(v) });
    r.add_activity("Add", |_ctx: ActivityContext, (a, b): (i64, i64)| async move { Ok::<_, Failure>(a + b) });
    r.add_activity("Fail", |_ctx: ActivityContext, msg: String| async move { Err::<(), _>(Failure::new("Boom", msg)) });
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn activities_in_sequence_and_client_basics() {
    let sidecar = start_sidecar();
    let mut r = base_registry();
    r.add_orchestrator("Seq", |ctx: OrchestrationContext, start: i64| async move {
        let a: i64 = ctx.call_activity("Add", (start, 1)).await?;
        let b: i64 = ctx.call_activity("Add", (a, 10)).await?;
        let echoed: Value = ctx.call_activity("Echo", json!({"sum": b, "instance": ctx.instance_id()})).await?;
        Ok::<_, Failure>(echoed)
    });
    let worker = start_worker(&sidecar, r).await;
    let client = sidecar.client().await;

    let opts = StartOptions::new().with_instance_id("seq-1").with_tag("team", "sdk");
    let id = client.start_orchestration_with("Seq", 5, opts).await.unwrap();
    assert_eq!(id, "seq-1");
    let started = client.wait_for_start(&id, WAIT).await.unwrap();
    assert_ne!(started.status, OrchestrationStatus::Pending);
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.status, OrchestrationStatus::Completed, "{done:?}");
    assert_eq!(done.output::<Value>().unwrap(), json!({"sum": 16, "instance": "seq-1"}));
    assert_eq!(done.input::<i64>().unwrap(), 5);
    assert_eq!(done.tags.get("team").map(String::as_str), Some("sdk"));
    assert!(done.completed_at.is_some());

    // get_orchestration with and without payloads; unknown ids.
    let state = client.get_orchestration(&id, false).await.unwrap().unwrap();
    assert_eq!(state.name, "Seq");
    assert!(state.serialized_output.is_none());
    assert!(client.get_orchestration("nope", true).await.unwrap().is_none());
    assert!(matches!(client.wait_for_completion("nope", Duration::from_secs(5)).await, Err(ClientError::NotFound(_))));

    // Reuse policies: a finished id is rejected by `never`, replaced by `replace_terminal`.
    let never = StartOptions::new().with_instance_id("seq-1").with_reuse_policy(ReusePolicy::never());
    let err = client.start_orchestration_with("Seq", 1, never).await.unwrap_err();
    assert!(matches!(err, ClientError::AlreadyExists(_)), "{err:?}");
    let replace = StartOptions::new().with_instance_id("seq-1").with_reuse_policy(ReusePolicy::replace_terminal());
    client.start_orchestration_with("Seq", 100, replace).await.unwrap();
    let done = client.wait_for_completion("seq-1", WAIT).await.unwrap();
    assert_eq!(done.output::<Value>().unwrap()["sum"], 111);
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_retries_and_failure_details() {
    let sidecar = start_sidecar();
    let attempts = Arc::new(AtomicU32::new(0));
    let mut r = base_registry();
    let counter = attempts.clone();
    r.add_activity("Flaky", move |_ctx: ActivityContext, succeed_on: u32| {
        let counter = counter.clone();
        async move {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            if n < succeed_on {
                return Err(Failure::new("Transient", format!("attempt {n} failed")));
            }
            Ok::<_, Failure>(n)
        }
    });
    r.add_orchestrator("Retry", |ctx: OrchestrationContext, succeed_on: u32| async move {
        let policy = RetryPolicy::new(4, Duration::from_millis(200)).with_backoff_coefficient(2.0);
        Ok::<_, Failure>(ctx.call_activity_with_retry::<u32>("Flaky", succeed_on, &policy).await?)
    });
    r.add_orchestrator("Handled", |ctx: OrchestrationContext, _: ()| async move {
        match ctx.call_activity::<()>("Fail", "handled").await {
            Err(TaskError::Failed { details, .. }) => Ok::<_, Failure>(format!("caught {}", details.error_type)),
            other => Ok(format!("unexpected {other:?}")),
        }
    });
    r.add_orchestrator("Unhandled", |ctx: OrchestrationContext, _: ()| async move {
        ctx.call_activity::<()>("Fail", "unhandled").await?;
        Ok::<_, Failure>(())
    });
    let worker = start_worker(&sidecar, r).await;
    let client = sidecar.client().await;

    let id = client.start_orchestration("Retry", 3u32).await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<u32>().unwrap(), 3, "third attempt succeeds");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);

    let id = client.start_orchestration("Handled", ()).await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<String>().unwrap(), "caught Boom");

    let id = client.start_orchestration("Unhandled", ()).await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.status, OrchestrationStatus::Failed);
    match done.output::<()>() {
        Err(ClientError::OrchestrationFailed { details, .. }) => {
            assert_eq!(details.error_type, "TaskFailedError");
            assert!(details.error_message.contains("unhandled"), "{details:?}");
            assert_eq!(details.inner_failure.unwrap().error_type, "Boom");
        }
        other => panic!("expected a failure, got {other:?}"),
    }

    // Retries exhausted: the orchestration fails.
    attempts.store(0, Ordering::SeqCst);
    let id = client.start_orchestration("Retry", 10u32).await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.status, OrchestrationStatus::Failed);
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_events_and_when_any() {
    let sidecar = start_sidecar();
    let mut r = base_registry();
    r.add_orchestrator("Timer", |ctx: OrchestrationContext, _: ()| async move {
        let t0 = ctx.current_utc_datetime();
        ctx.create_timer(Duration::from_millis(1500)).await?;
        Ok::<_, Failure>((ctx.current_utc_datetime() - t0).num_milliseconds())
    });
    r.add_orchestrator("Events", |ctx: OrchestrationContext, _: ()| async move {
        // The events are raised before this timer fires, so they are buffered.
        ctx.create_timer(Duration::from_millis(1500)).await?;
        let a: String = ctx.wait_for_external_event("step").await?;
        let b: String = ctx.wait_for_external_event("STEP").await?;
        let c = ctx.wait_for_external_event_with_timeout::<String>("never", Duration::from_millis(500)).await;
        let c = matches!(c, Err(TaskError::Timeout { .. }));
        Ok::<_, Failure>(format!("{a}{b} timeout={c}"))
    });
    r.add_orchestrator("Race", |ctx: OrchestrationContext, timeout_ms: u64| async move {
        let approval = ctx.wait_for_external_event::<String>("Approve");
        let timer = ctx.create_timer(Duration::from_millis(timeout_ms)).map(|()| "timed out".to_string());
        let (winner, result) = ctx.when_any(vec![approval, timer]).await;
        Ok::<_, Failure>(format!("{winner}:{}", result?))
    });
    let worker = start_worker(&sidecar, r).await;
    let client = sidecar.client().await;

    let timer = client.start_orchestration("Timer", ()).await.unwrap();
    let events = client.start_orchestration("Events", ()).await.unwrap();
    client.wait_for_start(&events, WAIT).await.unwrap();
    client.raise_event(&events, "Step", "a").await.unwrap();
    client.raise_event(&events, "step", "b").await.unwrap();
    let race_timeout = client.start_orchestration("Race", 500u64).await.unwrap();
    let race_event = client.start_orchestration("Race", 60_000u64).await.unwrap();
    client.wait_for_start(&race_event, WAIT).await.unwrap();
    client.raise_event(&race_event, "approve", "yes").await.unwrap();

    let elapsed: i64 = client.wait_for_completion(&timer, WAIT).await.unwrap().output().unwrap();
    assert!(elapsed >= 1500, "the orchestration clock moved {elapsed} ms");
    let out: String = client.wait_for_completion(&events, WAIT).await.unwrap().output().unwrap();
    assert_eq!(out, "ab timeout=true");
    let out: String = client.wait_for_completion(&race_timeout, WAIT).await.unwrap().output().unwrap();
    assert_eq!(out, "1:timed out");
    let out: String = client.wait_for_completion(&race_event, WAIT).await.unwrap().output().unwrap();
    assert_eq!(out, "0:yes");
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sub_orchestrations_with_id_and_retry() {
    let sidecar = start_sidecar();
    let child_runs = Arc::new(AtomicU32::new(0));
    let mut r = base_registry();
    r.add_orchestrator("Child", |ctx: OrchestrationContext, n: i64| async move {
        let parent = ctx.parent().map(|p| p.instance_id).unwrap_or_default();
        Ok::<_, Failure>(json!({"double": n * 2, "id": ctx.instance_id(), "parent": parent}))
    });
    let runs = child_runs.clone();
    r.add_activity("CountRun", move |_ctx: ActivityContext, _: ()| {
        let runs = runs.clone();
        async move { Ok::<_, Failure>(runs.fetch_add(1, Ordering::SeqCst) + 1) }
    });
    r.add_orchestrator("FlakyChild", |ctx: OrchestrationContext, _: ()| async move {
        let run: u32 = ctx.call_activity("CountRun", ()).await?;
        if run < 2 {
            return Err(Failure::new("ChildFailed", format!("run {run}")));
        }
        Ok::<_, Failure>(run)
    });
    r.add_orchestrator("Parent", |ctx: OrchestrationContext, _: ()| async move {
        let a: Value = ctx.call_sub_orchestration("Child", 1).await?;
        let opts = SubOrchestrationOptions::new().with_instance_id(format!("{}-named", ctx.instance_id()));
        let b: Value = ctx.call_sub_orchestration_with_options("Child", 2, opts).await?;
        let retry = SubOrchestrationOptions::new()
            .with_instance_id(format!("{}-flaky", ctx.instance_id()))
            .with_retry(RetryPolicy::new(3, Duration::from_millis(100)));
        let c: u32 = ctx.call_sub_orchestration_with_options("FlakyChild", (), retry).await?;
        Ok::<_, Failure>(json!([a, b, c]))
    });
    let worker = start_worker(&sidecar, r).await;
    let client = sidecar.client().await;
    let id = client.start_orchestration_with("Parent", (), StartOptions::new().with_instance_id("p1")).await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.status, OrchestrationStatus::Completed, "{done:?}");
    assert_eq!(
        done.output::<Value>().unwrap(),
        json!([{"double": 2, "id": "p1:0000", "parent": "p1"}, {"double": 4, "id": "p1-named", "parent": "p1"}, 2])
    );
    let child = client.get_orchestration("p1-named", false).await.unwrap().unwrap();
    assert_eq!(child.parent_instance_id.as_deref(), Some("p1"));
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_as_new_custom_status_and_uuid() {
    let sidecar = start_sidecar();
    let mut r = base_registry();
    // Counts events across generations; unprocessed events are carried over.
    r.add_orchestrator("Counter", |ctx: OrchestrationContext, total: i64| async move {
        ctx.set_custom_status(json!({"total": total}));
        let n: i64 = ctx.wait_for_external_event("add").await?;
        if n == 0 {
            return Ok::<_, Failure>(total);
        }
        ctx.continue_as_new(total + n, true);
        Ok(0)
    });
    r.add_orchestrator("Uuids", |ctx: OrchestrationContext, _: ()| async move {
        let a = ctx.new_uuid();
        let _: Value = ctx.call_activity("Echo", a.to_string()).await?;
        let b = ctx.new_uuid();
        // The status is recomputed on every replay: it must be identical each time.
        ctx.set_custom_status(json!([a.to_string(), b.to_string()]));
        Ok::<_, Failure>(vec![a.to_string(), b.to_string()])
    });
    let worker = start_worker(&sidecar, r).await;
    let client = sidecar.client().await;

    let id = client.start_orchestration("Counter", 0i64).await.unwrap();
    client.wait_for_start(&id, WAIT).await.unwrap();
    for n in [1i64, 2, 3, 4, 0] {
        client.raise_event(&id, "add", n).await.unwrap();
    }
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<i64>().unwrap(), 10, "{done:?}");
    assert_eq!(done.custom_status::<Value>().unwrap(), json!({"total": 10}));

    let id = client.start_orchestration("Uuids", ()).await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    let ids: Vec<uuid::Uuid> = done.output().unwrap();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(ids[0].get_version_num(), 5);
    assert_eq!(done.custom_status::<Vec<uuid::Uuid>>().unwrap(), ids);
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminate_suspend_resume() {
    let sidecar = start_sidecar();
    let mut r = base_registry();
    r.add_orchestrator("Waiter", |ctx: OrchestrationContext, _: ()| async move {
        let v: String = ctx.wait_for_external_event("go").await?;
        Ok::<_, Failure>(v)
    });
    r.add_orchestrator("ParentOfWaiter", |ctx: OrchestrationContext, _: ()| async move {
        let opts = SubOrchestrationOptions::new().with_instance_id(format!("{}-child", ctx.instance_id()));
        let v: String = ctx.call_sub_orchestration_with_options("Waiter", (), opts).await?;
        Ok::<_, Failure>(v)
    });
    let worker = start_worker(&sidecar, r).await;
    let client = sidecar.client().await;

    // Recursive terminate reaches the child.
    let opts = StartOptions::new().with_instance_id("tp");
    client.start_orchestration_with("ParentOfWaiter", (), opts).await.unwrap();
    let child = poll_until(&client, "tp-child", |m| m.status == OrchestrationStatus::Running).await;
    assert_eq!(child.status, OrchestrationStatus::Running);
    client.terminate("tp", "stopped", true).await.unwrap();
    let parent = client.wait_for_completion("tp", WAIT).await.unwrap();
    assert_eq!(parent.status, OrchestrationStatus::Terminated);
    assert_eq!(parent.serialized_output.as_deref(), Some("\"stopped\""));
    let child = client.wait_for_completion("tp-child", WAIT).await.unwrap();
    assert_eq!(child.status, OrchestrationStatus::Terminated);

    // Suspend holds events; resume delivers them.
    let id = client.start_orchestration("Waiter", ()).await.unwrap();
    client.wait_for_start(&id, WAIT).await.unwrap();
    client.suspend(&id, Some("maintenance")).await.unwrap();
    // The sidecar applies the suspension asynchronously, right after the call.
    poll_until(&client, &id, |m| m.status == OrchestrationStatus::Suspended).await;
    client.raise_event(&id, "go", "after resume").await.unwrap();
    let err = client.wait_for_completion(&id, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    client.resume(&id, None).await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<String>().unwrap(), "after resume");

    // Control operations on unknown instances.
    assert!(matches!(client.suspend("unknown", None).await, Err(ClientError::NotFound(_))));
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn query_purge_restart_rewind() {
    let sidecar = start_sidecar();
    let fail_next = Arc::new(AtomicU32::new(1));
    let mut r = base_registry();
    let gate = fail_next.clone();
    r.add_activity("FailOnce", move |_ctx: ActivityContext, _: ()| {
        let gate = gate.clone();
        async move {
            if gate.swap(0, Ordering::SeqCst) == 1 {
                return Err(Failure::new("Transient", "first run fails"));
            }
            Ok::<_, Failure>("recovered".to_string())
        }
    });
    r.add_orchestrator("Rewindable", |ctx: OrchestrationContext, _: ()| async move {
        let a: i64 = ctx.call_activity("Add", (1, 1)).await?;
        let b: String = ctx.call_activity("FailOnce", ()).await?;
        Ok::<_, Failure>(format!("{a} {b}"))
    });
    r.add_orchestrator("Quick", |_ctx: OrchestrationContext, n: u32| async move { Ok::<_, Failure>(n) });
    let worker = start_worker(&sidecar, r).await;
    let client = sidecar.client().await;

    // Rewind a failed instance.
    let id = client.start_orchestration("Rewindable", ()).await.unwrap();
    let failed = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(failed.status, OrchestrationStatus::Failed);
    client.rewind(&id, Some("fixed")).await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<String>().unwrap(), "2 recovered", "{done:?}");
    let err = client.rewind(&id, None).await.unwrap_err();
    assert!(matches!(err, ClientError::FailedPrecondition(_)), "{err:?}");

    // Query with filters and paging.
    for i in 0..7u32 {
        let opts = StartOptions::new().with_instance_id(format!("q-{i}"));
        client.start_orchestration_with("Quick", i, opts).await.unwrap();
    }
    for i in 0..7u32 {
        client.wait_for_completion(&format!("q-{i}"), WAIT).await.unwrap();
    }
    let query = InstanceQuery::new()
        .with_instance_id_prefix("q-")
        .with_statuses([OrchestrationStatus::Completed])
        .with_page_size(3)
        .with_payloads(true);
    let first = client.query(&query).await.unwrap();
    assert_eq!(first.instances.len(), 3);
    assert!(first.continuation_token.is_some());
    let all = client.query_all(query.clone()).await.unwrap();
    let mut ids: Vec<_> = all.iter().map(|m| m.instance_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, (0..7).map(|i| format!("q-{i}")).collect::<Vec<_>>());
    assert!(all.iter().all(|m| m.serialized_output.is_some()));
    let none = client.query(&InstanceQuery::new().with_statuses([OrchestrationStatus::Suspended])).await.unwrap();
    assert!(none.instances.is_empty() && none.continuation_token.is_none());

    // Restart with the same id and with a new one.
    let same = client.restart("q-3", false).await.unwrap();
    assert_eq!(same, "q-3");
    assert_eq!(client.wait_for_completion("q-3", WAIT).await.unwrap().output::<u32>().unwrap(), 3);
    let fresh = client.restart("q-4", true).await.unwrap();
    assert_ne!(fresh, "q-4");
    assert_eq!(client.wait_for_completion(&fresh, WAIT).await.unwrap().output::<u32>().unwrap(), 4);
    assert!(matches!(client.restart("unknown", false).await, Err(ClientError::NotFound(_))));

    // Purge one, then by filter.
    assert_eq!(client.purge("q-0", false).await.unwrap(), 1);
    assert!(client.get_orchestration("q-0", false).await.unwrap().is_none());
    assert_eq!(client.purge("q-0", false).await.unwrap(), 0);
    let purged = client
        .purge_by_filter(PurgeFilter { statuses: vec![OrchestrationStatus::Completed], ..Default::default() }, false)
        .await
        .unwrap();
    assert!(purged >= 7, "purged {purged}");
    assert!(client.query(&InstanceQuery::new().with_instance_id_prefix("q-")).await.unwrap().instances.is_empty());
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_start_time() {
    let sidecar = start_sidecar();
    let mut r = base_registry();
    r.add_orchestrator("Now", |ctx: OrchestrationContext, _: ()| async move {
        Ok::<_, Failure>(ctx.current_utc_datetime().timestamp_millis())
    });
    let worker = start_worker(&sidecar, r).await;
    let client = sidecar.client().await;
    let start_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let id = client.start_orchestration_with("Now", (), StartOptions::new().with_start_time(start_at)).await.unwrap();
    let pending = client.get_orchestration(&id, false).await.unwrap().unwrap();
    assert_eq!(pending.status, OrchestrationStatus::Pending);
    let ran_at: i64 = client.wait_for_completion(&id, WAIT).await.unwrap().output().unwrap();
    assert!(ran_at >= start_at.timestamp_millis(), "ran at {ran_at}, scheduled for {}", start_at.timestamp_millis());
    worker.shutdown().await.unwrap();
}

/// What the test's HTTP endpoint answers: 202 + `Location: /status` for `/start`, else 200 with
/// an echo of the request. Shared by the local server and the worker-side stand-in.
fn http_answer(method: &str, path: &str, content_type: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
    if path.ends_with("/start") {
        let headers =
            vec![("Location".to_string(), "/status".to_string()), ("Retry-After".to_string(), "1".to_string())];
        return (202, headers, String::new());
    }
    let echo = json!({"method": method, "path": path, "contentType": content_type, "body": body});
    (200, vec![("Content-Type".to_string(), "application/json".to_string())], echo.to_string())
}

/// A minimal HTTP/1.1 server on 127.0.0.1 for sidecars that run `BuiltIn::HttpActivity`
/// themselves. Returns its base URL.
async fn local_http_server() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let header_end = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
                let mut lines = head.lines();
                let mut first = lines.next().unwrap_or_default().split_whitespace();
                let (method, path) =
                    (first.next().unwrap_or_default().to_string(), first.next().unwrap_or_default().to_string());
                let header = |name: &str| {
                    head.lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_string())
                };
                let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                while buf.len() < header_end + length {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[header_end..]).to_string();
                let (status, headers, content) =
                    http_answer(&method, &path, &header("content-type").unwrap_or_default(), &body);
                let mut response =
                    format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", content.len());
                for (k, v) in headers {
                    response.push_str(&format!("{k}: {v}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(&content);
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_http_schedules_the_builtin_http_activity() {
    let sidecar = start_sidecar();
    let base = local_http_server().await;
    let mut r = base_registry();
    // Stand-in for sidecars without a built-in `BuiltIn::HttpActivity` (a sidecar that has
    // one runs it itself against the local server and never dispatches it to workers).
    r.add_activity("BuiltIn::HttpActivity", move |_ctx: ActivityContext, request: DurableHttpRequest| async move {
        let path = request.uri.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_default();
        let content_type = request.headers.get("Content-Type").and_then(|v| v.first()).cloned().unwrap_or_default();
        let (status, headers, content) =
            http_answer(&request.method, &path, &content_type, request.content.as_deref().unwrap_or_default());
        Ok::<_, Failure>(DurableHttpResponse {
            status_code: status,
            headers: headers.into_iter().map(|(k, v)| (k, vec![v])).collect(),
            content: Some(content),
        })
    });
    r.add_orchestrator("Http", |ctx: OrchestrationContext, uri: String| async move {
        let req = DurableHttpRequest::post(uri, "{\"x\":1}")
            .with_header("Content-Type", "application/json")
            .with_timeout(Duration::from_secs(5));
        let resp: DurableHttpResponse = ctx.call_http(req).await?;
        let echo: Value = resp.json()?;
        Ok::<_, Failure>(json!({"status": resp.status_code, "type": resp.header("content-type"), "echo": echo}))
    });
    let worker = start_worker(&sidecar, r).await;
    let client = sidecar.client().await;

    let uri = format!("{base}/v1/orders");
    let id = client.start_orchestration("Http", &uri).await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    let out: Value = done.output().unwrap();
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["type"], "application/json");
    assert_eq!(
        out["echo"],
        json!({"method": "POST", "path": "/v1/orders", "contentType": "application/json", "body": "{\"x\":1}"})
    );
    // The history holds the built-in activity with the request JSON.
    let scheduled = scheduled_inputs(&sidecar, &id, "BuiltIn::HttpActivity").await;
    assert_eq!(
        serde_json::from_str::<Value>(&scheduled[0]).unwrap(),
        json!({"method": "POST", "uri": uri, "headers": {"Content-Type": "application/json"},
            "content": "{\"x\":1}", "tokenSource": null, "asynchronousPatternEnabled": true, "timeout": "00:00:05"})
    );

    // The 202 pattern: polled (by the SDK on durable timers, or by the sidecar) until done.
    let id = client.start_orchestration("Http", format!("{base}/v1/start")).await.unwrap();
    let out: Value = client.wait_for_completion(&id, WAIT).await.unwrap().output().unwrap();
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!((out["echo"]["method"].as_str(), out["echo"]["path"].as_str()), (Some("GET"), Some("/status")));
    worker.shutdown().await.unwrap();
}

/// Inputs of the `taskScheduled` events named `name` in an instance's history.
async fn scheduled_inputs(sidecar: &Sidecar, instance_id: &str, name: &str) -> Vec<String> {
    use duro_sdk::proto::history_event::EventType;
    let mut raw = duro_sdk::proto::TaskHubSidecarServiceClient::connect(sidecar.endpoint()).await.unwrap();
    let mut stream = raw
        .stream_instance_history(duro_sdk::proto::StreamInstanceHistoryRequest {
            instance_id: instance_id.to_string(),
            execution_id: None,
            for_work_item_processing: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut inputs = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        for e in chunk.events {
            if let Some(EventType::TaskScheduled(t)) = e.event_type {
                if t.name == name {
                    inputs.push(t.input.unwrap_or_default());
                }
            }
        }
    }
    inputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_determinism_after_a_code_change_fails_the_orchestration() {
    let sidecar = start_sidecar();
    let mut v1 = base_registry();
    v1.add_orchestrator("Evolving", |ctx: OrchestrationContext, _: ()| async move {
        let _: Value = ctx.call_activity("Echo", 1).await?;
        ctx.set_custom_status("waiting");
        let _: String = ctx.wait_for_external_event("continue").await?;
        Ok::<_, Failure>(())
    });
    let worker = start_worker(&sidecar, v1).await;
    let client = sidecar.client().await;
    let id = client.start_orchestration("Evolving", ()).await.unwrap();
    // Wait until the activity has completed and the orchestration waits for the event.
    poll_until(&client, &id, |m| m.serialized_custom_status.as_deref() == Some("\"waiting\"")).await;
    worker.shutdown().await.unwrap();

    let mut v2 = base_registry();
    v2.add_orchestrator("Evolving", |ctx: OrchestrationContext, _: ()| async move {
        let _: i64 = ctx.call_activity("Add", (1, 2)).await?; // changed: different activity at id 0
        let _: String = ctx.wait_for_external_event("continue").await?;
        Ok::<_, Failure>(())
    });
    let worker = start_worker(&sidecar, v2).await;
    client.raise_event(&id, "continue", "now").await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.status, OrchestrationStatus::Failed);
    let details = done.failure_details.unwrap();
    assert_eq!(details.error_type, "NonDeterminismError");
    assert!(details.error_message.contains(r#"taskScheduled "Echo" (id 0)"#), "{}", details.error_message);
    assert!(details.error_message.contains(r#"scheduleTask "Add" (id 0)"#), "{}", details.error_message);
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_event_between_instances_and_is_replaying() {
    let sidecar = start_sidecar();
    let first_runs = Arc::new(AtomicU32::new(0));
    let mut r = base_registry();
    r.add_orchestrator("Receiver", |ctx: OrchestrationContext, _: ()| async move {
        let greeting: String = ctx.wait_for_external_event("Greeting").await?;
        Ok::<_, Failure>(greeting)
    });
    r.add_orchestrator("Sender", |ctx: OrchestrationContext, target: String| async move {
        ctx.send_event(&target, "greeting", format!("hello from {}", ctx.instance_id()));
        Ok::<_, Failure>(())
    });
    let counter = first_runs.clone();
    r.add_orchestrator("Steps", move |ctx: OrchestrationContext, _: ()| {
        let counter = counter.clone();
        async move {
            // Code that runs again on every replay: count only first executions.
            for i in 0..3i64 {
                if !ctx.is_replaying() {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let _: i64 = ctx.call_activity("Add", (i, 1)).await?;
            }
            if !ctx.is_replaying() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, Failure>(())
        }
    });
    let worker = start_worker(&sidecar, r).await;
    let client = sidecar.client().await;

    let receiver = client.start_orchestration("Receiver", ()).await.unwrap();
    client.wait_for_start(&receiver, WAIT).await.unwrap();
    let opts = StartOptions::new().with_instance_id("sender-1");
    let sender = client.start_orchestration_with("Sender", &receiver, opts).await.unwrap();
    client.wait_for_completion(&sender, WAIT).await.unwrap();
    let done = client.wait_for_completion(&receiver, WAIT).await.unwrap();
    assert_eq!(done.output::<String>().unwrap(), "hello from sender-1");

    let id = client.start_orchestration("Steps", ()).await.unwrap();
    client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(first_runs.load(Ordering::SeqCst), 4, "each step ran once outside replay");
    worker.shutdown().await.unwrap();
}
