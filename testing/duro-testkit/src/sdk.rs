//! Rust SDK (`duro-sdk`) workers and clients against a test [`Sidecar`] (feature `sdk`):
//! used by the SDK's own tests and the samples' tests.

use std::time::Duration;

use duro_sdk::{Client, Worker, WorkerHandle, WorkerOptions};

use crate::Sidecar;

/// How long a worker may take to open its work-item stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Worker options that keep tests fast: quick reconnects and a short grace period.
pub fn worker_options() -> WorkerOptions {
    WorkerOptions::default()
        .with_reconnect_delays(Duration::from_millis(50), Duration::from_millis(500))
        .with_shutdown_timeout(Duration::from_secs(5))
}

/// A worker for `sidecar` with [`worker_options`], not started yet.
pub fn worker(sidecar: &Sidecar) -> Worker {
    Worker::new(sidecar.endpoint()).with_options(worker_options())
}

/// Starts `worker` and waits until its work-item stream is open; panics otherwise.
pub async fn start(worker: Worker) -> WorkerHandle {
    let handle = worker.start().unwrap_or_else(|e| panic!("cannot start the worker: {e}"));
    assert!(
        handle.wait_until_connected(CONNECT_TIMEOUT).await,
        "the worker did not connect within {CONNECT_TIMEOUT:?}"
    );
    handle
}

/// Starts a worker for `sidecar` with what `register` adds (a sample's `register`
/// function, say) and waits until it is connected.
pub async fn start_worker(sidecar: &Sidecar, register: impl FnOnce(&mut Worker)) -> WorkerHandle {
    let mut w = worker(sidecar);
    register(&mut w);
    start(w).await
}

/// A client of `sidecar`; panics if it cannot connect.
pub async fn client(sidecar: &Sidecar) -> Client {
    Client::connect(sidecar.endpoint())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", sidecar.endpoint()))
}
