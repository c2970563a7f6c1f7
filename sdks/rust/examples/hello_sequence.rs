//! Function chaining: an orchestration calls one activity after another.
//!
//! Start a sidecar (`cargo run -p duro`), then `cargo run -p duro-sdk --example hello_sequence`.
//! The sidecar address defaults to `http://127.0.0.1:4001`; set `DURO_ADDRESS` to change it.

use std::time::Duration;

use duro_sdk::{ActivityContext, Client, OrchestrationContext, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".to_string());

    let mut worker = Worker::new(address.clone());
    worker
        .add_orchestrator("HelloSequence", |ctx: OrchestrationContext, _input: ()| async move {
            let mut greetings = Vec::new();
            for city in ["Tokyo", "Seattle", "London"] {
                greetings.push(ctx.call_activity::<String>("SayHello", city).await?);
            }
            Ok(greetings)
        })
        .add_activity("SayHello", |_ctx: ActivityContext, city: String| async move { Ok(format!("Hello, {city}!")) });
    let worker = worker.start()?;

    let client = Client::connect(address).await?;
    let id = client.start_orchestration("HelloSequence", ()).await?;
    println!("started orchestration {id}");
    let state = client.wait_for_completion(&id, Duration::from_secs(30)).await?;
    let greetings: Vec<String> = state.output()?;
    println!("{:?} → {greetings:?}", state.status);

    worker.shutdown().await?;
    Ok(())
}
