//! Runs `CheckSiteAvailable` on the real `duro` binary against a local web server.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use check_site_available::SiteStatus;
use duro_sdk::Client;
use duro_testkit::{sdk, Sidecar};

async fn check(client: &Client, url: &str) -> SiteStatus {
    let id = client.start_orchestration(check_site_available::ORCHESTRATION, url).await.unwrap();
    let state = client.wait_for_completion(&id, Duration::from_secs(60)).await.unwrap();
    state.output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_up_and_down_sites() {
    let app = Router::new()
        .route("/up", get(|| async { "hello" }))
        .route("/down", get(|| async { (StatusCode::NOT_FOUND, "gone") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let duro = Sidecar::builder().allow_loopback_http().start();
    let worker = sdk::start_worker(&duro, check_site_available::register).await;
    let client = Client::connect(duro.endpoint()).await.unwrap();

    let up = check(&client, &format!("{base}/up")).await;
    assert!(up.available, "{up:?}");
    assert_eq!(up.status_code, Some(200));

    let down = check(&client, &format!("{base}/down")).await;
    assert!(!down.available);
    assert_eq!(down.status_code, Some(404));

    // Nothing listens there: the durable HTTP call fails; the orchestration reports it.
    let port = duro_testkit::free_port();
    let unreachable = check(&client, &format!("http://127.0.0.1:{port}/")).await;
    assert!(!unreachable.available);
    assert_eq!(unreachable.status_code, None);
    assert!(unreachable.error.is_some());
    worker.shutdown().await.unwrap();
}
