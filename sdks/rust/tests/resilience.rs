//! Worker restarts, sidecar restarts, graceful shutdown and load, against the real `duro`
//! binary. Build the sidecar first: `cargo build -p duro`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{poll_until, start_sidecar, start_worker, start_worker_with, test_options, SdkClient, WAIT};
use duro_sdk::{when_all, ActivityContext, Failure, OrchestrationContext, OrchestrationStatus, Registry, StartOptions};

fn waiting_registry() -> Registry {
    let mut r = Registry::new();
    r.add_activity("Upper", |_ctx: ActivityContext, s: String| async move { Ok::<_, Failure>(s.to_uppercase()) });
    r.add_orchestrator("TimerThenEvent", |ctx: OrchestrationContext, n: u32| async move {
        ctx.set_custom_status("waiting");
        ctx.create_timer(Duration::from_secs(2)).await?;
        let word: String = ctx.wait_for_external_event("word").await?;
        let upper: String = ctx.call_activity("Upper", format!("{word}-{n}")).await?;
        Ok::<_, Failure>(upper)
    });
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_restart_while_orchestrations_wait_on_timers_and_events() {
    let sidecar = start_sidecar();
    let client = sidecar.client().await;
    let first = start_worker(&sidecar, waiting_registry()).await;
    let ids: Vec<String> = (0..20).map(|i| format!("wait-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        client
            .start_orchestration_with("TimerThenEvent", i as u32, StartOptions::new().with_instance_id(id.clone()))
            .await
            .unwrap();
    }
    for id in &ids {
        poll_until(&client, id, |m| m.serialized_custom_status.as_deref() == Some("\"waiting\"")).await;
    }
    // Stop the worker while every orchestration waits on its timer.
    first.shutdown().await.unwrap();
    // Timers fire and events arrive while no worker is connected.
    for id in &ids[..10] {
        client.raise_event(id, "word", "early").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = start_worker(&sidecar, waiting_registry()).await;
    for id in &ids[10..] {
        client.raise_event(id, "word", "late").await.unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let done = client.wait_for_completion(id, WAIT).await.unwrap();
        let word = if i < 10 { "EARLY" } else { "LATE" };
        assert_eq!(done.output::<String>().unwrap(), format!("{word}-{i}"), "{done:?}");
    }
    second.shutdown().await.unwrap();
}

fn slow_registry(runs: Arc<AtomicU32>, finished: Arc<AtomicU32>) -> Registry {
    let mut r = Registry::new();
    r.add_activity("Slow", move |_ctx: ActivityContext, ms: u64| {
        let runs = runs.clone();
        let finished = finished.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            finished.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Failure>(ms)
        }
    });
    r.add_orchestrator("CallSlow", |ctx: OrchestrationContext, ms: u64| async move {
        let v: u64 = ctx.call_activity("Slow", ms).await?;
        Ok::<_, Failure>(v)
    });
    r
}

async fn wait_for_count(counter: &AtomicU32, at_least: u32) {
    let deadline = Instant::now() + WAIT;
    while counter.load(Ordering::SeqCst) < at_least {
        assert!(Instant::now() < deadline, "counter stuck at {}", counter.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_finishes_in_flight_activities() {
    let sidecar = start_sidecar();
    let client = sidecar.client().await;
    let (runs, finished) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let first = start_worker(&sidecar, slow_registry(runs.clone(), finished.clone())).await;
    let id = client.start_orchestration("CallSlow", 1500u64).await.unwrap();
    wait_for_count(&runs, 1).await;
    // The activity is running: a graceful shutdown lets it finish and report its result.
    first.shutdown().await.unwrap();
    assert_eq!(finished.load(Ordering::SeqCst), 1, "the in-flight activity finished before shutdown returned");
    let second = start_worker(&sidecar, slow_registry(runs.clone(), finished.clone())).await;
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<u64>().unwrap(), 1500);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the activity ran exactly once");
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_abandons_work_that_outlives_the_grace_period() {
    let sidecar = start_sidecar();
    let client = sidecar.client().await;
    let (runs, finished) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let options = test_options().with_shutdown_timeout(Duration::from_millis(300));
    let first = start_worker_with(&sidecar, slow_registry(runs.clone(), finished.clone()), options).await;
    let id = client.start_orchestration("CallSlow", 3000u64).await.unwrap();
    wait_for_count(&runs, 1).await;
    let t = Instant::now();
    first.shutdown().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "shutdown waited {:?}", t.elapsed());
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    // The abandoned activity is dispatched again to the next worker.
    let second = start_worker(&sidecar, slow_registry(runs.clone(), finished.clone())).await;
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<u64>().unwrap(), 3000);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashed_worker_work_is_redelivered() {
    let sidecar = start_sidecar();
    let client = sidecar.client().await;
    let (runs, finished) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let first = start_worker(&sidecar, slow_registry(runs.clone(), finished.clone())).await;
    let id = client.start_orchestration("CallSlow", 2000u64).await.unwrap();
    wait_for_count(&runs, 1).await;
    first.abort();
    let second = start_worker(&sidecar, slow_registry(runs.clone(), finished.clone())).await;
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<u64>().unwrap(), 2000);
    assert!(runs.load(Ordering::SeqCst) >= 2, "the activity was dispatched again");
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_reconnects_after_the_sidecar_restarts() {
    let mut sidecar = start_sidecar();
    let client = sidecar.client().await;
    let worker = start_worker(&sidecar, waiting_registry()).await;
    let id = client.start_orchestration("TimerThenEvent", 7u32).await.unwrap();
    poll_until(&client, &id, |m| m.serialized_custom_status.as_deref() == Some("\"waiting\"")).await;
    sidecar.restart();
    // The worker notices, backs off and reconnects to the new process.
    assert!(worker.wait_until_connected(WAIT).await);
    let client = sidecar.client().await;
    client.raise_event(&id, "word", "again").await.unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<String>().unwrap(), "AGAIN-7");
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn five_hundred_orchestrations_of_ten_activities() {
    const ORCHESTRATIONS: u64 = 500;
    const ACTIVITIES: u64 = 10;
    let sidecar = start_sidecar();
    let mut r = Registry::new();
    r.add_activity("Mul", |_ctx: ActivityContext, (a, b): (u64, u64)| async move { Ok::<_, Failure>(a * b) });
    r.add_orchestrator("Chain", |ctx: OrchestrationContext, n: u64| async move {
        // Five activities in sequence, then five in parallel.
        let mut acc = 0u64;
        for i in 0..ACTIVITIES / 2 {
            acc += ctx.call_activity::<u64>("Mul", (n, i)).await?;
        }
        let parallel = (ACTIVITIES / 2..ACTIVITIES).map(|i| ctx.call_activity::<u64>("Mul", (n, i)));
        acc += when_all(parallel).await?.iter().sum::<u64>();
        Ok::<_, Failure>(acc)
    });
    let worker = start_worker(&sidecar, r).await;
    let client = sidecar.client().await;
    let started = Instant::now();
    let mut starts = Vec::new();
    for n in 0..ORCHESTRATIONS {
        let client = client.clone();
        starts.push(tokio::spawn(async move {
            client.start_orchestration_with("Chain", n, StartOptions::new().with_instance_id(format!("load-{n}"))).await
        }));
    }
    for s in starts {
        s.await.unwrap().unwrap();
    }
    let mut waits = Vec::new();
    for n in 0..ORCHESTRATIONS {
        let client = client.clone();
        waits.push(tokio::spawn(async move {
            let state = client.wait_for_completion(&format!("load-{n}"), Duration::from_secs(240)).await?;
            Ok::<_, duro_sdk::ClientError>((n, state))
        }));
    }
    let expected_factor: u64 = (0..ACTIVITIES).sum();
    for w in waits {
        let (n, state) = w.await.unwrap().unwrap();
        assert_eq!(state.status, OrchestrationStatus::Completed, "{state:?}");
        assert_eq!(state.output::<u64>().unwrap(), n * expected_factor);
    }
    eprintln!("{ORCHESTRATIONS} orchestrations x {ACTIVITIES} activities completed in {:?}", started.elapsed());
    worker.shutdown().await.unwrap();
}
