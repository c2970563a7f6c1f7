//! Durable entities: a counter entity, signaled by a client and called by an orchestration.
//!
//! Start a sidecar (`cargo run -p duro`), then `cargo run -p duro-sdk --example counter_entity`.
//! The sidecar address defaults to `http://127.0.0.1:4001`; set `DURO_ADDRESS` to change it.

use std::time::Duration;

use duro_sdk::{Client, EntityContext, EntityId, Failure, OrchestrationContext, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".to_string());

    let mut worker = Worker::new(address.clone());
    worker
        .add_entity("Counter", |ctx: EntityContext| async move {
            let value: i64 = ctx.state_or_default()?;
            match ctx.operation() {
                "add" => ctx.set_state(&(value + ctx.input::<i64>()?))?,
                "get" => {}
                other => return Err(Failure::new("UnknownOperation", other)),
            }
            ctx.state_or_default::<i64>()
        })
        .add_orchestrator("AddAndRead", |ctx: OrchestrationContext, key: String| async move {
            let counter = EntityId::new("Counter", key);
            ctx.signal_entity(&counter, "add", 10)?;
            let value: i64 = ctx.call_entity(&counter, "get", ()).await?;
            Ok(value)
        });
    let worker = worker.start()?;

    let client = Client::connect(address).await?;
    let key = uuid_like_key();
    client.signal_entity(&EntityId::new("Counter", &key), "add", 5).await?;
    let id = client.start_orchestration("AddAndRead", &key).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(30)).await?;
    println!("counter {key} = {}", state.output::<i64>()?); // 15: the client's 5, then the orchestration's 10
    let counter = client.get_entity(&EntityId::new("Counter", &key), true).await?;
    println!("stored state: {:?}", counter.and_then(|c| c.serialized_state));

    worker.shutdown().await?;
    Ok(())
}

/// A fresh counter per run (entities live as long as the sidecar's store).
fn uuid_like_key() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("demo-{nanos:x}")
}
