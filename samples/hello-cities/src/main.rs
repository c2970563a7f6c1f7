//! Runs `HelloCities` once against the sidecar at `DURO_ADDRESS` (default `http://127.0.0.1:4001`).

use std::time::Duration;

use duro_sdk::{Client, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".into());
    let mut worker = Worker::new(address.clone());
    hello_cities::register(&mut worker);
    let worker = worker.start()?;
    let client = Client::connect(address).await?;
    let id = client.start_orchestration(hello_cities::ORCHESTRATION, ()).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(30)).await?;
    for greeting in state.output::<Vec<String>>()? {
        println!("{greeting}");
    }
    worker.shutdown().await?;
    Ok(())
}
