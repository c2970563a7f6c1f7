//! `RestartVm` against a fake ARM endpoint (202 + Location, then 200) and a fake IMDS token
//! endpoint; the real `duro` binary runs with `--identity-source imds --identity-endpoint …`.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use duro_sdk::Client;
use duro_testkit::{sdk, Sidecar};
use restart_vm::VmRef;
use serde_json::json;

const TOKEN: &str = "fake-arm-token";

#[derive(Clone, Default)]
struct Fake {
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn record(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
}

async fn imds(State(f): State<Fake>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return (StatusCode::BAD_REQUEST, "Metadata header required").into_response();
    }
    f.record(format!("token for {}", q.get("resource").cloned().unwrap_or_default()));
    Json(json!({
        "access_token": TOKEN,
        "expires_in": "3599",
        "expires_on": "1999999999",
        "resource": q.get("resource"),
        "token_type": "Bearer",
    }))
    .into_response()
}

fn bearer_ok(headers: &HeaderMap) -> bool {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

async fn restart(State(f): State<Fake>, headers: HeaderMap) -> Response {
    if !bearer_ok(&headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"code": "AuthenticationFailed"}}))).into_response();
    }
    f.record("restart".into());
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("{}/operations/op-1", f.base)), (header::RETRY_AFTER, "1".to_string())],
    )
        .into_response()
}

async fn operation(State(f): State<Fake>) -> Response {
    let polls = {
        let mut log = f.log.lock().unwrap();
        log.push("poll".into());
        log.iter().filter(|s| *s == "poll").count()
    };
    if polls < 2 {
        (
            StatusCode::ACCEPTED,
            [(header::LOCATION, format!("{}/operations/op-1", f.base)), (header::RETRY_AFTER, "1".to_string())],
        )
            .into_response()
    } else {
        StatusCode::OK.into_response()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_with_a_managed_identity_token() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let fake = Fake { base: base.clone(), log: Arc::default() };
    let app = Router::new()
        .route("/metadata/identity/oauth2/token", get(imds))
        .route(
            "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.Compute/virtualMachines/vm-1/restart",
            post(restart),
        )
        .route("/operations/op-1", get(operation))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let duro = Sidecar::builder()
        .allow_loopback_http()
        .args(["--identity-source", "imds", "--identity-endpoint", &format!("{base}/metadata/identity/oauth2/token")])
        .start();
    let worker = sdk::start_worker(&duro, restart_vm::register).await;
    let client = Client::connect(duro.endpoint()).await.unwrap();
    let vm = VmRef {
        subscription_id: "sub-1".into(),
        resource_group: "rg-1".into(),
        vm_name: "vm-1".into(),
        arm_base_url: Some(base),
    };
    let id = client.start_orchestration(restart_vm::ORCHESTRATION, &vm).await.unwrap();
    let state = client.wait_for_completion(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(state.output::<u16>().unwrap(), 200, "{state:?}");

    let log = fake.log.lock().unwrap().clone();
    assert!(log[0].starts_with("token for https://management.core.windows.net"), "{log:?}");
    assert!(log.contains(&"restart".to_string()), "{log:?}");
    assert_eq!(log.iter().filter(|s| *s == "poll").count(), 2, "{log:?}");
    // The token never enters the history.
    let history_text = format!("{state:?}");
    assert!(!history_text.contains(TOKEN));
    worker.shutdown().await.unwrap();
}
