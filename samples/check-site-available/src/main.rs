//! `check-site-available URL`: checks URL once through the sidecar at `DURO_ADDRESS`
//! (default `http://127.0.0.1:4001`).

use std::time::Duration;

use check_site_available::SiteStatus;
use duro_sdk::{Client, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".into());
    let url = std::env::args().nth(1).unwrap_or_else(|| "https://example.org/".into());
    let mut worker = Worker::new(address.clone());
    check_site_available::register(&mut worker);
    let worker = worker.start()?;
    let client = Client::connect(address).await?;
    let id = client.start_orchestration(check_site_available::ORCHESTRATION, &url).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(300)).await?;
    println!("{:?}", state.output::<SiteStatus>()?);
    worker.shutdown().await?;
    Ok(())
}
