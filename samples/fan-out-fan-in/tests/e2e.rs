//! Runs `FanOutFanIn` on the real `duro` binary.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use duro_sdk::Client;
use duro_testkit::{sdk, Sidecar};
use fan_out_fan_in::Summary;

#[tokio::test(flavor = "multi_thread")]
async fn processes_documents_in_parallel() {
    let duro = Sidecar::builder().allow_loopback_http().start();
    let worker = sdk::start_worker(&duro, fan_out_fan_in::register).await;
    let client = Client::connect(duro.endpoint()).await.unwrap();
    let started = Instant::now();
    let id = client.start_orchestration(fan_out_fan_in::ORCHESTRATION, 30u32).await.unwrap();
    let state = client.wait_for_completion(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(state.output::<Summary>().unwrap(), Summary { documents: 30, total_words: (1..=30).sum() });
    // 30 activities of 100 ms each: in sequence that would take 3 s.
    assert!(started.elapsed() < Duration::from_secs(3), "not parallel: {:?}", started.elapsed());
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_documents() {
    let duro = Sidecar::builder().allow_loopback_http().start();
    let worker = sdk::start_worker(&duro, fan_out_fan_in::register).await;
    let client = Client::connect(duro.endpoint()).await.unwrap();
    let id = client.start_orchestration(fan_out_fan_in::ORCHESTRATION, 0u32).await.unwrap();
    let state = client.wait_for_completion(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(state.output::<Summary>().unwrap(), Summary { documents: 0, total_words: 0 });
    worker.shutdown().await.unwrap();
}
