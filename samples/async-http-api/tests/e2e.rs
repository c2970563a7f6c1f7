//! A client starts `CallLongRunningApi` through Duro's HTTP API and polls its status URL; the
//! orchestration calls the sample's long-running API (202 + Location + Retry-After) through
//! durable HTTP; its custom status ends as "done". Real `duro` binary.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use async_http_api::lro_api::LroApi;
use axum::http::header;
use duro_testkit::{sdk, Sidecar};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn start_over_http_and_poll() {
    // The long-running API shipped with the sample (src/lro_api.rs).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let api = LroApi::default();
    tokio::spawn(async_http_api::lro_api::serve(listener, api.clone()));

    let duro = Sidecar::builder().allow_loopback_http().http_api().start();
    let http_port = duro.http_port();
    let worker = sdk::start_worker(&duro, async_http_api::register).await;

    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "http://127.0.0.1:{http_port}/runtime/webhooks/durabletask/orchestrators/{}",
            async_http_api::ORCHESTRATION
        ))
        .json(&json!({ "url": format!("{base}/jobs"), "body": { "seconds": 1 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status_url = r.headers()[header::LOCATION.as_str()].to_str().unwrap().to_string();

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let r = http.get(&status_url).send().await.unwrap();
        let code = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if body["runtimeStatus"] == "Completed" {
            assert_eq!(code, 200);
            break body;
        }
        assert_eq!(code, 202, "{body}");
        assert!(Instant::now() < deadline, "never completed: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["output"]["statusCode"], 200, "{status}");
    assert_eq!(status["output"]["body"]["status"], "done", "{status}");
    assert_eq!(status["output"]["body"]["input"], json!({ "seconds": 1 }));
    assert_eq!(status["output"]["body"]["result"], json!({ "answer": 42 }));
    assert_eq!(status["customStatus"], "done", "{status}");
    assert!(api.polls() >= 1, "the status URL was never polled");
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_shipped_api_answers_202_then_200_and_404_for_unknown_jobs() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async_http_api::lro_api::serve(listener, LroApi::default()));
    let http = reqwest::Client::new();
    let r = http.post(format!("{base}/jobs")).json(&json!({ "seconds": 1 })).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()[header::RETRY_AFTER.as_str()], "1");
    let location = r.headers()[header::LOCATION.as_str()].to_str().unwrap().to_string();
    assert_eq!(location, format!("{base}/jobs/1"));
    assert_eq!(http.get(&location).send().await.unwrap().status(), 202);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let done = http.get(&location).send().await.unwrap();
    assert_eq!(done.status(), 200);
    let body: Value = done.json().await.unwrap();
    assert_eq!(body["status"], "done");
    assert_eq!(http.get(format!("{base}/jobs/9")).send().await.unwrap().status(), 404);
}
