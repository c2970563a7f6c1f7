//! The Rust side of the polyglot sample: a worker with one activity, `shout_rust`.
//! The Rust SDK always sends work-item filters, so it receives only that activity.

use duro_sdk::{ActivityContext, Failure, Worker};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    text: String,
}

#[derive(Serialize)]
struct Output {
    shouted: String,
    runtime: &'static str,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "127.0.0.1:4001".into());
    let address = if address.starts_with("http") { address } else { format!("http://{address}") };
    let mut worker = Worker::new(address.clone());
    worker.add_activity("shout_rust", |_ctx: ActivityContext, input: Input| async move {
        Ok::<_, Failure>(Output { shouted: input.text.to_uppercase(), runtime: "rust" })
    });
    let handle = worker.start()?;
    println!("rust-worker: listening on {address} for activity shout_rust");
    tokio::signal::ctrl_c().await.ok();
    handle.shutdown().await?;
    Ok(())
}
