//! A client starts `CallLongRunningApi` through Duro's HTTP API and polls its status URL; the
//! orchestration calls a fake long-running API (202 + Location + Retry-After) through durable
//! HTTP. Real `duro` binary.

#![allow(clippy::unwrap_used)]

#[path = "../../support/sidecar.rs"]
mod sidecar;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Clone)]
struct Api {
    base: String,
    polls: Arc<AtomicU32>,
}

async fn start_job(State(api): State<Api>, Json(body): Json<Value>) -> impl IntoResponse {
    assert_eq!(body["n"], 21);
    (
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, format!("{}/jobs/1", api.base)),
            (header::RETRY_AFTER, "1".to_string()),
        ],
    )
}

async fn job_status(State(api): State<Api>) -> axum::response::Response {
    if api.polls.fetch_add(1, Ordering::SeqCst) < 1 {
        (
            StatusCode::ACCEPTED,
            [
                (header::LOCATION, format!("{}/jobs/1", api.base)),
                (header::RETRY_AFTER, "1".to_string()),
            ],
        )
            .into_response()
    } else {
        Json(json!({ "answer": 42 })).into_response()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn start_over_http_and_poll() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let api = Api {
        base: base.clone(),
        polls: Arc::default(),
    };
    let app = Router::new()
        .route("/jobs", post(start_job))
        .route("/jobs/1", get(job_status))
        .with_state(api.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let http_port = sidecar::free_port();
    let duro = sidecar::Sidecar::start_with(vec![
        "--http-listen".into(),
        format!("127.0.0.1:{http_port}"),
    ]);
    let worker = sidecar::start_worker(&duro, async_http_api::register).await;

    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "http://127.0.0.1:{http_port}/runtime/webhooks/durabletask/orchestrators/{}",
            async_http_api::ORCHESTRATION
        ))
        .json(&json!({ "url": format!("{base}/jobs"), "body": { "n": 21 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status_url = r.headers()[header::LOCATION.as_str()]
        .to_str()
        .unwrap()
        .to_string();

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
    assert_eq!(
        status["output"],
        json!({ "statusCode": 200, "body": { "answer": 42 } })
    );
    assert_eq!(api.polls.load(Ordering::SeqCst), 2);
    worker.shutdown().await.unwrap();
}
