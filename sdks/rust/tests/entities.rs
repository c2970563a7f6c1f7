//! Durable entities end to end against the real `duro` binary: client signals and reads,
//! calls with results and failures from orchestrations, critical sections serializing
//! competing orchestrations, and entities that signal entities and start orchestrations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{start_sidecar, start_worker, SdkClient, WAIT};
use duro_sdk::{
    Client, EntityContext, EntityId, EntityQuery, Failure, OrchestrationContext, OrchestrationStatus, Registry,
    TaskError,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

async fn counter(ctx: EntityContext) -> Result<i64, Failure> {
    let value: i64 = ctx.state_or_default()?;
    match ctx.operation() {
        "add" => {
            let amount: i64 = ctx.input()?;
            ctx.set_state(&(value + amount))?;
            Ok(value + amount)
        }
        "get" => Ok(value),
        "fail" => {
            ctx.set_state(&(value + 1000))?; // rolled back
            Err(Failure::new("ValueError", "counter refused"))
        }
        "forward" => {
            // Signals another counter and starts an orchestration, once this succeeds.
            let target: String = ctx.input()?;
            ctx.signal_entity(&EntityId::new("Counter", target), "add", value)?;
            ctx.start_orchestration("ReadCounter", ctx.id().key())?;
            Ok(value)
        }
        other => Err(Failure::new("UnknownOperation", other)),
    }
}

async fn account(ctx: EntityContext) -> Result<i64, Failure> {
    let balance: i64 = ctx.state_or_default()?;
    match ctx.operation() {
        "deposit" => {
            let amount: i64 = ctx.input()?;
            ctx.set_state(&(balance + amount))?;
            Ok(balance + amount)
        }
        "withdraw" => {
            let amount: i64 = ctx.input()?;
            if balance < amount {
                return Err(Failure::new("InsufficientFunds", format!("balance {balance} < {amount}")));
            }
            ctx.set_state(&(balance - amount))?;
            Ok(balance - amount)
        }
        "balance" => Ok(balance),
        other => Err(Failure::new("UnknownOperation", other)),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Transfer {
    from: String,
    to: String,
    amount: i64,
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_entity("Counter", counter);
    r.add_entity("Account", account);
    r.add_orchestrator("CounterCalls", |ctx: OrchestrationContext, key: String| async move {
        let id = EntityId::new("Counter", key);
        ctx.signal_entity(&id, "add", 5)?;
        let after: i64 = ctx.call_entity(&id, "add", 2).await?;
        let now: i64 = ctx.call_entity(&id, "get", ()).await?;
        Ok::<_, Failure>((after, now))
    });
    r.add_orchestrator("FailingCall", |ctx: OrchestrationContext, key: String| async move {
        match ctx.call_entity::<i64>(&EntityId::new("Counter", key), "fail", ()).await {
            Err(TaskError::Failed { details, .. }) => Ok::<_, Failure>(format!("caught {details}")),
            other => Ok(format!("not raised: {other:?}")),
        }
    });
    r.add_orchestrator("ReadCounter", |ctx: OrchestrationContext, key: String| async move {
        Ok::<_, Failure>(ctx.call_entity::<i64>(&EntityId::new("Counter", key), "get", ()).await?)
    });
    r.add_orchestrator("Transfer", |ctx: OrchestrationContext, t: Transfer| async move {
        let (from, to) = (EntityId::new("Account", &t.from), EntityId::new("Account", &t.to));
        let _section = ctx.lock_entities([&from, &to]).await?;
        let balance: i64 = ctx.call_entity(&from, "balance", ()).await?;
        if balance < t.amount {
            return Ok::<_, Failure>(false);
        }
        // A pause inside the critical section: a competing transfer must wait for it.
        ctx.create_timer(Duration::from_millis(300)).await?;
        ctx.call_entity::<i64>(&from, "withdraw", t.amount).await?;
        ctx.call_entity::<i64>(&to, "deposit", t.amount).await?;
        Ok(true)
    });
    r.add_orchestrator("HoldLock", |ctx: OrchestrationContext, key: String| async move {
        let _section = ctx.lock_entities([&EntityId::new("Account", key)]).await?;
        ctx.set_custom_status("locked");
        ctx.wait_for_external_event::<()>("release").await?;
        Ok::<_, Failure>(())
    });
    r
}

/// Polls the entity until its state is `expected` (or panics after 60 s).
async fn wait_for_state(client: &Client, id: &EntityId, expected: i64) {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        last = client.get_entity(id, true).await.unwrap().and_then(|m| m.state::<i64>().unwrap());
        if last == Some(expected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} has state {last:?}, expected {expected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hundred_concurrent_signals_are_each_applied_once() {
    let sidecar = start_sidecar();
    let client = sidecar.client().await;
    let id = EntityId::new("Counter", "burst");
    // 10 clients × 10 signals, all stored before any worker runs.
    let senders: Vec<_> = (0..10)
        .map(|_| {
            let (client, id) = (client.clone(), id.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    client.signal_entity(&id, "add", 1).await.unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    assert!(client.get_entity(&id, true).await.unwrap().is_none(), "no worker yet: no state");
    let page = client.query_entities(&EntityQuery::new().with_id_prefix("@counter@").with_transient(true)).await;
    assert_eq!(page.unwrap().entities[0].backlog_queue_size, 100);

    let worker = start_worker(&sidecar, registry()).await;
    wait_for_state(&client, &id, 100).await;
    // It stays at 100: no signal is applied twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = client.get_entity(&id, false).await.unwrap().expect("exists");
    assert_eq!(m.serialized_state, None, "state not asked for");
    assert_eq!(m.backlog_queue_size, 0);
    assert_eq!(m.locked_by, None);
    assert!(m.last_modified.is_some());
    assert_eq!(client.get_entity(&id, true).await.unwrap().unwrap().state::<i64>().unwrap(), Some(100));

    // Unknown entities do not exist; queries page by prefix with or without state.
    assert!(client.get_entity(&EntityId::new("Counter", "missing"), true).await.unwrap().is_none());
    for i in 1..=5 {
        client.signal_entity(&EntityId::new("counter", format!("q-{i}")), "add", i).await.unwrap();
    }
    for i in 1..=5 {
        wait_for_state(&client, &EntityId::new("Counter", format!("q-{i}")), i).await;
    }
    let q = EntityQuery::new().with_id_prefix("@Counter@q-").with_state(true).with_page_size(2);
    let first = client.query_entities(&q).await.unwrap();
    assert_eq!(first.entities.len(), 2);
    assert!(first.continuation_token.is_some());
    let all = client.query_all_entities(q).await.unwrap();
    let mut states: Vec<i64> = all.iter().map(|m| m.state::<i64>().unwrap().unwrap()).collect();
    states.sort();
    assert_eq!(states, [1, 2, 3, 4, 5]);
    assert!(all.iter().all(|m| m.id.name() == "counter"));
    let without = client.query_all_entities(EntityQuery::new().with_id_prefix("@counter@q-")).await.unwrap();
    assert!(without.len() == 5 && without.iter().all(|m| m.serialized_state.is_none()));
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orchestrations_signal_and_call_entities_and_see_failures() {
    let sidecar = start_sidecar();
    let worker = start_worker(&sidecar, registry()).await;
    let client = sidecar.client().await;

    let id = client.start_orchestration("CounterCalls", "calls").await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.status, OrchestrationStatus::Completed, "{done:?}");
    assert_eq!(done.output::<(i64, i64)>().unwrap(), (7, 7));

    // A failing call raises in the orchestration; the entity's state is unchanged.
    let counter = EntityId::new("Counter", "f");
    client.signal_entity(&counter, "add", 1).await.unwrap();
    wait_for_state(&client, &counter, 1).await;
    let id = client.start_orchestration("FailingCall", "f").await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<String>().unwrap(), "caught ValueError: counter refused");
    assert_eq!(client.get_entity(&counter, true).await.unwrap().unwrap().state::<i64>().unwrap(), Some(1));

    // An operation signals another entity and starts an orchestration.
    client.signal_entity(&counter, "forward", "g").await.unwrap();
    let target = EntityId::new("Counter", "g");
    wait_for_state(&client, &target, 1).await;
    let started = client
        .query_all(duro_sdk::InstanceQuery::new().with_payloads(true))
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "ReadCounter");
    let started = started.expect("the entity started ReadCounter");
    let done = client.wait_for_completion(&started.instance_id, WAIT).await.unwrap();
    assert_eq!(done.output::<i64>().unwrap(), 1);
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_transfers_are_serialized_by_locks() {
    let sidecar = start_sidecar();
    let worker = start_worker(&sidecar, registry()).await;
    let client = sidecar.client().await;
    let (a, b) = (EntityId::new("Account", "a"), EntityId::new("Account", "b"));
    client.signal_entity(&a, "deposit", 100).await.unwrap();
    wait_for_state(&client, &a, 100).await;
    // Both would see 100 and withdraw 80 if they were not serialized.
    let transfer = Transfer { from: "a".into(), to: "b".into(), amount: 80 };
    let ids = [
        client.start_orchestration("Transfer", &transfer).await.unwrap(),
        client.start_orchestration("Transfer", &transfer).await.unwrap(),
    ];
    let mut outcomes = Vec::new();
    for id in &ids {
        let done = client.wait_for_completion(id, WAIT).await.unwrap();
        assert_eq!(done.status, OrchestrationStatus::Completed, "{done:?}");
        outcomes.push(done.output::<bool>().unwrap());
    }
    outcomes.sort();
    assert_eq!(outcomes, [false, true]);
    assert_eq!(client.get_entity(&a, true).await.unwrap().unwrap().state::<i64>().unwrap(), Some(20));
    assert_eq!(client.get_entity(&b, true).await.unwrap().unwrap().state::<i64>().unwrap(), Some(80));

    // While an orchestration holds the lock, signals wait; they run once it is released.
    let holder = client.start_orchestration("HoldLock", "a").await.unwrap();
    common::poll_until(&client, &holder, |m| m.custom_status::<Value>().ok() == Some(Value::from("locked"))).await;
    let m = client.get_entity(&a, false).await.unwrap().unwrap();
    assert_eq!(m.locked_by.as_deref(), Some(holder.as_str()));
    client.signal_entity(&a, "deposit", 5).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.get_entity(&a, true).await.unwrap().unwrap().state::<i64>().unwrap(), Some(20));
    client.raise_event(&holder, "release", ()).await.unwrap();
    client.wait_for_completion(&holder, WAIT).await.unwrap();
    wait_for_state(&client, &a, 25).await;
    assert_eq!(client.get_entity(&a, false).await.unwrap().unwrap().locked_by, None);
    worker.shutdown().await.unwrap();
}
