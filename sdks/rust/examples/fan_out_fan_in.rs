//! Fan-out/fan-in: an orchestration runs many activities in parallel and aggregates them.
//!
//! Start a sidecar (`cargo run -p duro`), then `cargo run -p duro-sdk --example fan_out_fan_in`.
//! The sidecar address defaults to `http://127.0.0.1:4001`; set `DURO_ADDRESS` to change it.

use std::time::Duration;

use duro_sdk::{when_all, ActivityContext, Client, OrchestrationContext, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".to_string());

    let mut worker = Worker::new(address.clone());
    worker
        .add_orchestrator("FanOutFanIn", |ctx: OrchestrationContext, count: u64| async move {
            // Fan out: every activity is scheduled before any is awaited.
            let tasks: Vec<_> = (1..=count).map(|n| ctx.call_activity::<u64>("Square", n)).collect();
            ctx.set_custom_status(format!("waiting for {count} squares"));
            // Fan in.
            let squares = when_all(tasks).await?;
            Ok(squares.iter().sum::<u64>())
        })
        .add_activity("Square", |_ctx: ActivityContext, n: u64| async move {
            tokio::time::sleep(Duration::from_millis(50)).await; // pretend to work
            Ok(n * n)
        });
    let worker = worker.start()?;

    let client = Client::connect(address).await?;
    let id = client.start_orchestration("FanOutFanIn", 20u64).await?;
    println!("started orchestration {id}");
    let state = client.wait_for_completion(&id, Duration::from_secs(60)).await?;
    let total: u64 = state.output()?;
    println!("sum of squares 1..=20 = {total}");
    assert_eq!(total, (1..=20u64).map(|n| n * n).sum::<u64>());

    worker.shutdown().await?;
    Ok(())
}
