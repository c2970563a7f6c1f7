//! Opens two accounts and runs three transfers (one is declined) against the sidecar at
//! `DURO_ADDRESS` (default `http://127.0.0.1:4001`), then audits the balances.

use std::time::Duration;

use bank_transfer::{account, TransferOutcome, TransferRequest, AUDIT, TRANSFER};
use duro_sdk::{Client, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".into());
    let mut worker = Worker::new(address.clone());
    bank_transfer::register(&mut worker);
    let worker = worker.start()?;
    let client = Client::connect(address).await?;

    // Open alice's account with 100 the first time (entities live on in the sidecar's store).
    if client.get_entity(&account("alice"), false).await?.is_none() {
        client.signal_entity(&account("alice"), "deposit", 100).await?;
    }
    let transfers = [("alice", "bob", 30), ("bob", "alice", 10), ("alice", "bob", 1000)];
    for (from, to, amount) in transfers {
        let request = TransferRequest { from: from.into(), to: to.into(), amount };
        let id = client.start_orchestration(TRANSFER, &request).await?;
        let state = client.wait_for_completion(&id, Duration::from_secs(30)).await?;
        let outcome: TransferOutcome = state.output()?;
        println!("{from} -> {to} {amount}: {outcome:?}");
    }
    let id = client.start_orchestration(AUDIT, ["alice", "bob"]).await?;
    let state = client.wait_for_completion(&id, Duration::from_secs(30)).await?;
    println!("balances: {:?}", state.output::<std::collections::BTreeMap<String, i64>>()?);
    worker.shutdown().await?;
    Ok(())
}
