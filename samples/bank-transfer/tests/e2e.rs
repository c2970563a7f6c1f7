//! Runs `Transfer` and `Audit` on the real `duro` binary: many concurrent transfers between a
//! few accounts keep the total, never overdraw, and every audit sees a consistent total.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bank_transfer::{account, TransferOutcome, TransferRequest, AUDIT, INSUFFICIENT_FUNDS, TRANSFER};
use duro_sdk::{Client, OrchestrationStatus};
use duro_testkit::{sdk, Sidecar};

const WAIT: Duration = Duration::from_secs(120);
const ACCOUNTS: [&str; 4] = ["a", "b", "c", "d"];
const OPENING: i64 = 100;

async fn balance(client: &Client, key: &str) -> i64 {
    let found = client.get_entity(&account(key), true).await.unwrap();
    found.and_then(|m| m.state::<i64>().unwrap()).unwrap_or(0)
}

async fn wait_until_opened(client: &Client, key: &str, expected: i64) {
    for _ in 0..600 {
        if balance(client, key).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("account {key} never reached {expected}");
}

/// Waits until the account is unlocked with nothing queued. Right after the last transfer
/// completes, its unlocks (and older ones queued behind later lock holders) may still be
/// on their way through the account's queue.
async fn wait_until_idle(client: &Client, key: &str) {
    let mut last = None;
    for _ in 0..200 {
        let m = client.get_entity(&account(key), false).await.unwrap().unwrap();
        if m.locked_by.is_none() && m.backlog_queue_size == 0 {
            return;
        }
        last = Some((m.locked_by, m.backlog_queue_size));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("account {key} is left locked or busy: {last:?}");
}

async fn finish<T: serde::de::DeserializeOwned>(client: &Client, id: &str) -> T {
    let state = client.wait_for_completion(id, WAIT).await.unwrap();
    assert_eq!(state.status, OrchestrationStatus::Completed, "{state:?}");
    state.output().unwrap()
}

/// A small deterministic generator (no extra dependency): the same transfers on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transfers_keep_the_total_and_never_overdraw() {
    let duro = Sidecar::builder().start();
    // Two workers: entity batches and orchestration turns are spread over both.
    let workers = [
        sdk::start_worker(&duro, bank_transfer::register).await,
        sdk::start_worker(&duro, bank_transfer::register).await,
    ];
    let client = Client::connect(duro.endpoint()).await.unwrap();
    for key in ACCOUNTS {
        client.signal_entity(&account(key), "deposit", OPENING).await.unwrap();
    }
    for key in ACCOUNTS {
        wait_until_opened(&client, key, OPENING).await;
    }
    let total = OPENING * ACCOUNTS.len() as i64;

    // 60 transfers (one bound to be declined) with an audit after every tenth, all at once.
    let mut rng = Lcg(42);
    let mut transfers = Vec::new();
    let mut audits = Vec::new();
    for i in 0..60 {
        let from = ACCOUNTS[rng.below(4) as usize];
        let to = ACCOUNTS[(ACCOUNTS.iter().position(|k| *k == from).unwrap() + 1 + rng.below(3) as usize) % 4];
        let amount = if i == 30 { 10 * total } else { 1 + rng.below(120) as i64 };
        let request = TransferRequest { from: from.into(), to: to.into(), amount };
        let id = client.start_orchestration(TRANSFER, &request).await.unwrap();
        transfers.push((request, id));
        if i % 10 == 9 {
            audits.push(client.start_orchestration(AUDIT, ACCOUNTS).await.unwrap());
        }
    }

    // Every transfer either moved its amount or was declined for insufficient funds.
    let mut expected: BTreeMap<&str, i64> = ACCOUNTS.iter().map(|k| (*k, OPENING)).collect();
    let (mut completed, mut declined) = (0, 0);
    for (request, id) in &transfers {
        match finish::<TransferOutcome>(&client, id).await {
            TransferOutcome::Completed { from_balance, to_balance } => {
                assert!(from_balance >= 0 && to_balance >= 0, "{request:?}: {from_balance}, {to_balance}");
                *expected.get_mut(request.from.as_str()).unwrap() -= request.amount;
                *expected.get_mut(request.to.as_str()).unwrap() += request.amount;
                completed += 1;
            }
            TransferOutcome::Declined { reason } => {
                assert!(reason.starts_with(INSUFFICIENT_FUNDS), "{request:?}: {reason}");
                declined += 1;
            }
        }
    }
    assert!(completed > 0 && declined > 0, "completed {completed}, declined {declined}");

    // Each audit read all balances at one instant: the total is intact, nothing negative.
    for id in &audits {
        let balances: BTreeMap<String, i64> = finish(&client, id).await;
        assert_eq!(balances.len(), ACCOUNTS.len());
        assert_eq!(balances.values().sum::<i64>(), total, "audit {id}: {balances:?}");
        assert!(balances.values().all(|b| *b >= 0), "audit {id}: {balances:?}");
    }

    // At the end: each balance is its opening plus what the completed transfers moved.
    let mut sum = 0;
    for key in ACCOUNTS {
        let b = balance(&client, key).await;
        assert!(b >= 0, "account {key}: {b}");
        assert_eq!(b, expected[key], "account {key}");
        wait_until_idle(&client, key).await;
        sum += b;
    }
    assert_eq!(sum, total);
    for w in workers {
        w.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overdraft_is_declined_and_moves_nothing() {
    let duro = Sidecar::builder().start();
    let worker = sdk::start_worker(&duro, bank_transfer::register).await;
    let client = Client::connect(duro.endpoint()).await.unwrap();
    client.signal_entity(&account("x"), "deposit", 50).await.unwrap();
    let request = TransferRequest { from: "x".into(), to: "y".into(), amount: 80 };
    let id = client.start_orchestration(TRANSFER, &request).await.unwrap();
    assert_eq!(
        finish::<TransferOutcome>(&client, &id).await,
        TransferOutcome::Declined { reason: format!("{INSUFFICIENT_FUNDS}: balance 50 < 80") }
    );
    assert_eq!(balance(&client, "x").await, 50);
    assert!(client.get_entity(&account("y"), true).await.unwrap().is_none(), "y was never credited");

    let request = TransferRequest { from: "x".into(), to: "y".into(), amount: 20 };
    let id = client.start_orchestration(TRANSFER, &request).await.unwrap();
    assert_eq!(
        finish::<TransferOutcome>(&client, &id).await,
        TransferOutcome::Completed { from_balance: 30, to_balance: 20 }
    );
    worker.shutdown().await.unwrap();
}
