//! Runs `HelloCities` on the real `duro` binary.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use duro_sdk::Client;
use duro_testkit::{sdk, Sidecar};

#[tokio::test(flavor = "multi_thread")]
async fn greets_three_cities_in_order() {
    let duro = Sidecar::builder().allow_loopback_http().start();
    let worker = sdk::start_worker(&duro, hello_cities::register).await;
    let client = Client::connect(duro.endpoint()).await.unwrap();
    let id = client.start_orchestration(hello_cities::ORCHESTRATION, ()).await.unwrap();
    let state = client.wait_for_completion(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(state.output::<Vec<String>>().unwrap(), ["Hello, Tokyo!", "Hello, Seattle!", "Hello, London!"]);
    worker.shutdown().await.unwrap();
}
