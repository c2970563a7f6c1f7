//! Load tool of `bench/idle.sh` (not a sample): many idle orchestrations through the real sidecar.
//!
//! ```text
//! idle_load create <n> <prefix>   # n/2 instances waiting on event "go", n/2 on a 30-day timer;
//!                                 # returns when the worker has run every first turn
//! idle_load raise <n> <prefix>    # raises "go" for the n/2 event instances; returns when the
//!                                 # worker has run every instance's last turn
//! ```
//!
//! Instance ids are `<prefix>-e-<i>` (event) and `<prefix>-t-<i>` (timer). Both commands run a Rust
//! SDK worker (the instances need one to reach their waiting state and to finish) and keep
//! `DURO_IDLE_CONCURRENCY` (default 256) client calls in flight on one connection. They print one
//! line of `key=value` figures (times in ms since the Unix epoch) for the script.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duro_sdk::{Client, OrchestrationContext, StartOptions, Worker, WorkerOptions};

const TIMER: Duration = Duration::from_secs(30 * 86_400);

fn epoch_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// Runs `f(i)` for `i` in `0..n` with `concurrency` calls in flight.
async fn each<F, Fut>(n: u64, concurrency: usize, f: F) -> u64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let f = Arc::new(f);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, failed, f) = (next.clone(), failed.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if !f(i).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    failed.load(Ordering::Relaxed)
}

async fn wait_for(counter: &AtomicU64, target: u64, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (cmd, n, prefix) = match args.as_slice() {
        [_, cmd, n, prefix] => (cmd.clone(), n.parse::<u64>()?, prefix.clone()),
        _ => return Err("usage: idle_load create|raise <n> <prefix>".into()),
    };
    let address = std::env::var("DURO_ADDRESS").unwrap_or_else(|_| "http://127.0.0.1:4001".to_string());
    let concurrency: usize = std::env::var("DURO_IDLE_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let (events, timers) = (n / 2, n - n / 2);

    // First turns run (both kinds) and event instances finished, counted by the worker.
    let first = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut worker = Worker::new(address.clone()).with_options(
        WorkerOptions::default().with_concurrency(1000, 100).with_shutdown_timeout(Duration::from_secs(5)),
    );
    let (f1, d1) = (first.clone(), done.clone());
    worker.add_orchestrator("IdleEvent", move |ctx: OrchestrationContext, input: u64| {
        let (first, done) = (f1.clone(), d1.clone());
        async move {
            if !ctx.is_replaying() {
                first.fetch_add(1, Ordering::Relaxed);
            }
            let v: u64 = ctx.wait_for_external_event("go").await?;
            if !ctx.is_replaying() {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(v + input)
        }
    });
    let f2 = first.clone();
    worker.add_orchestrator("IdleTimer", move |ctx: OrchestrationContext, input: u64| {
        let first = f2.clone();
        async move {
            if !ctx.is_replaying() {
                first.fetch_add(1, Ordering::Relaxed);
            }
            ctx.create_timer(TIMER).await?;
            Ok(input)
        }
    });
    let worker = worker.start()?;
    let client = Client::connect(address).await?;

    match cmd.as_str() {
        "create" => {
            let started = Instant::now();
            let (c, p) = (client.clone(), prefix.clone());
            let failed = each(n, concurrency, move |i| {
                let (c, p) = (c.clone(), p.clone());
                async move {
                    let (name, id) = if i < events {
                        ("IdleEvent", format!("{p}-e-{i}"))
                    } else {
                        ("IdleTimer", format!("{p}-t-{i}"))
                    };
                    let r = c.start_orchestration_with(name, i, StartOptions::new().with_instance_id(id)).await;
                    if let Err(e) = &r {
                        eprintln!("start {i}: {e}");
                    }
                    r.is_ok()
                }
            })
            .await;
            let start_s = started.elapsed().as_secs_f64();
            let ok = wait_for(&first, n, Duration::from_secs(1800)).await;
            let all_s = started.elapsed().as_secs_f64();
            println!(
                "created={n} events={events} timers={timers} failed={failed} first_turns={} start_s={start_s:.2} \
                 ready_s={all_s:.2} starts_per_s={:.0}",
                first.load(Ordering::Relaxed),
                n as f64 / start_s
            );
            if failed > 0 || !ok {
                return Err("not every instance started and ran its first turn".into());
            }
        }
        "raise" => {
            let begin_ms = epoch_ms();
            let started = Instant::now();
            let (c, p) = (client.clone(), prefix.clone());
            let failed = each(events, concurrency, move |i| {
                let (c, p) = (c.clone(), p.clone());
                async move {
                    let r = c.raise_event(&format!("{p}-e-{i}"), "go", 3 * i).await;
                    if let Err(e) = &r {
                        eprintln!("raise {i}: {e}");
                    }
                    r.is_ok()
                }
            })
            .await;
            let raise_s = started.elapsed().as_secs_f64();
            let ok = wait_for(&done, events, Duration::from_secs(1800)).await;
            let all_s = started.elapsed().as_secs_f64();
            println!(
                "raised={events} failed={failed} finished_turns={} begin_ms={begin_ms} raise_s={raise_s:.2} \
                 worker_done_s={all_s:.2}",
                done.load(Ordering::Relaxed)
            );
            if failed > 0 || !ok {
                return Err("not every event instance finished".into());
            }
        }
        other => return Err(format!("unknown command {other}").into()),
    }
    // Let the last completions reach the sidecar before the worker goes.
    worker.shutdown().await?;
    Ok(())
}
