//! Runs `JobMonitor` once (a pretend job that completes at the 3rd check, every 2 s) against
//! the sidecar at `DURO_ADDRESS` (default `http://127.0.0.1:4001`).

use std::sync::Arc;
use std::time::Duration;

use duro_sdk::{Client, Worker};
use monitor::{CountdownJob, MonitorInput, MonitorResult};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".into());
    let mut worker = Worker::new(address.clone());
    monitor::register(&mut worker, Arc::new(CountdownJob::new(3)));
    let worker = worker.start()?;
    let client = Client::connect(address).await?;
    let input = MonitorInput {
        job_id: "job-1".into(),
        interval_seconds: 2,
        max_duration_seconds: 60,
        expires_at: None,
        checks: 0,
    };
    let id = client.start_orchestration(monitor::ORCHESTRATION, &input).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(90)).await?;
    println!("{:?}", state.output::<MonitorResult>()?);
    worker.shutdown().await?;
    Ok(())
}
