//! Runs `FanOutFanIn` once against the sidecar at `DURO_ADDRESS` (default `http://127.0.0.1:4001`).

use std::time::Duration;

use duro_sdk::{Client, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".into());
    let count: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut worker = Worker::new(address.clone());
    fan_out_fan_in::register(&mut worker);
    let worker = worker.start()?;
    let client = Client::connect(address).await?;
    let id = client.start_orchestration(fan_out_fan_in::ORCHESTRATION, count).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(60)).await?;
    println!("{:?}", state.output::<fan_out_fan_in::Summary>()?);
    worker.shutdown().await?;
    Ok(())
}
