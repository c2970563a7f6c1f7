//! Helpers of the SDK's integration tests. Starting `duro` (building it if needed, free
//! ports, temporary store, logs, restart) is `duro-testkit`'s; this adds the SDK's view.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use duro_sdk::{Client, Registry, WorkerHandle, WorkerOptions};
pub use duro_testkit::sdk::worker_options as test_options;
use duro_testkit::sdk::{self};
pub use duro_testkit::Sidecar;

/// A sidecar for the SDK's tests: durable HTTP may call the tests' fakes on loopback.
pub fn start_sidecar() -> Sidecar {
    Sidecar::builder().allow_loopback_http().start()
}

/// An SDK client of a test sidecar.
#[allow(async_fn_in_trait)]
pub trait SdkClient {
    async fn client(&self) -> Client;
}

impl SdkClient for Sidecar {
    async fn client(&self) -> Client {
        sdk::client(self).await
    }
}

/// Starts a worker with `registry` and waits until its stream is open.
pub async fn start_worker(sidecar: &Sidecar, registry: Registry) -> WorkerHandle {
    sdk::start(sdk::worker(sidecar).with_registry(registry)).await
}

pub async fn start_worker_with(sidecar: &Sidecar, registry: Registry, options: WorkerOptions) -> WorkerHandle {
    sdk::start(sdk::worker(sidecar).with_options(options).with_registry(registry)).await
}

pub const WAIT: Duration = Duration::from_secs(60);

/// Polls the instance until `done` holds (or panics after 60 s): for conditions the sidecar
/// cannot wait on, like "the child exists" or "the custom status says X".
pub async fn poll_until(
    client: &Client,
    instance_id: &str,
    done: impl Fn(&duro_sdk::OrchestrationMetadata) -> bool,
) -> duro_sdk::OrchestrationMetadata {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(m) = client.get_orchestration(instance_id, true).await.expect("get") {
            if done(&m) {
                return m;
            }
        }
        assert!(Instant::now() < deadline, "instance '{instance_id}' never reached the expected state");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
