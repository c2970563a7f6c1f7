//! `restart-vm SUBSCRIPTION RESOURCE_GROUP VM`: restarts a VM through the sidecar at
//! `DURO_ADDRESS` (default `http://127.0.0.1:4001`), which must run with a managed identity.

use std::time::Duration;

use duro_sdk::{Client, Worker};
use restart_vm::VmRef;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".into());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [subscription_id, resource_group, vm_name] =
        <[String; 3]>::try_from(args).map_err(|_| "usage: restart-vm SUBSCRIPTION RESOURCE_GROUP VM")?;
    let vm = VmRef { subscription_id, resource_group, vm_name, arm_base_url: std::env::var("ARM_BASE_URL").ok() };
    let mut worker = Worker::new(address.clone());
    restart_vm::register(&mut worker);
    let worker = worker.start()?;
    let client = Client::connect(address).await?;
    let id = client.start_orchestration(restart_vm::ORCHESTRATION, &vm).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(3600)).await?;
    println!("restart finished: HTTP {}", state.output::<u16>()?);
    worker.shutdown().await?;
    Ok(())
}
