//! Runs the worker for `CallLongRunningApi` against the sidecar at `DURO_ADDRESS` (default
//! `http://127.0.0.1:4001`) until Ctrl-C; start instances through Duro's HTTP API (README).

use duro_sdk::Worker;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".into());
    let mut worker = Worker::new(address);
    async_http_api::register(&mut worker);
    worker
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
