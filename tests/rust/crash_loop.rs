//! Crash loop (issue 13): `kill -9` the real sidecar 50 times at random moments under mixed load
//! (activity chains, durable timers, external events, fan-out, sub-orchestrations), restarting it
//! on the same SQLite file each time. A Rust SDK worker (`duro-sdk`) stays up and reconnects;
//! the driver's calls retry across restarts. Every orchestration must complete with its exact
//! expected output, none may fail, and work must resume within 5 s of the last restart.
//!
//! Randomness is seeded: the seed is printed; `DURO_CRASH_LOOP_SEED` replays a run,
//! `DURO_CRASH_LOOP_KILLS` changes the number of kills (default 50).
//!
//! Recovery time = from the moment the last restarted sidecar accepts connections until the
//! first committed orchestration turn of an instance created before that restart (observed by
//! polling QueryInstances every 20 ms for `lastUpdatedAt` ≥ the restart). The time until every
//! orchestration is complete is printed too.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use duro_proto::{OrchestrationState, OrchestrationStatus};
use duro_sdk::{
    when_all, ActivityContext, ClientError, Failure, OrchestrationContext, StartOptions, Worker, WorkerOptions,
};
use duro_tests::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

const N: u64 = 40;
const PREFIX: &str = "mix-";
const RECOVERY_LIMIT: Duration = Duration::from_secs(5);

// ----- pure functions: the activities, and the expected output computed from them ---------

fn step(x: u64) -> u64 {
    x * 3 + 1
}

fn square(x: u64) -> u64 {
    x * x
}

/// Payload of instance `i`'s external event "go".
fn event_value(i: u64) -> u64 {
    i * 7 + 5
}

/// Durable timer of instance `i`: 1–2 s.
fn timer_ms(i: u64) -> u64 {
    1000 + (i * 137) % 1000
}

/// The child orchestration: one activity, plus 1000.
fn child_output(x: u64) -> u64 {
    step(x) + 1000
}

fn expected(i: u64) -> String {
    let c = step(step(step(i)));
    let ev = event_value(i);
    let fan: u64 = (0..5).map(|k| square(c + ev + k) + 1).sum();
    let child = child_output(fan % 1000);
    format!("{i}|{c}|{ev}|{fan}|{child}")
}

fn instance_id(i: u64) -> String {
    format!("{PREFIX}{i:02}")
}

// ----- the worker --------------------------------------------------------------------------

#[derive(Default)]
struct Counts {
    step: AtomicU64,
    square: AtomicU64,
    /// When the worker started each activity or orchestrator execution (per-restart figures).
    work: Mutex<Vec<Instant>>,
}

impl Counts {
    fn work(&self) {
        self.work.lock().expect("lock").push(Instant::now());
    }
}

/// Activities take 10–69 ms (derived from the input, so re-runs take as long), so kills also
/// land while activities are running.
async fn busy(x: u64) {
    tokio::time::sleep(Duration::from_millis(10 + x % 60)).await;
}

fn worker(endpoint: String, counts: Arc<Counts>) -> Worker {
    // Quick reconnects: the sidecar is back within a few hundred ms each time (the SDK's default
    // backoff grows to 15 s, which would dominate the recovery time after 50 restarts in a row).
    let options = WorkerOptions::default().with_reconnect_delays(Duration::from_millis(50), Duration::from_millis(500));
    let mut w = Worker::new(endpoint).with_options(options);
    let (c1, c2, c3, c4) = (counts.clone(), counts.clone(), counts.clone(), counts);
    w.add_activity("Step", move |_ctx: ActivityContext, x: u64| {
        c1.step.fetch_add(1, Ordering::SeqCst);
        c1.work();
        async move {
            busy(x).await;
            Ok::<_, Failure>(step(x))
        }
    })
    .add_activity("SquarePlusOne", move |_ctx: ActivityContext, x: u64| {
        c2.square.fetch_add(1, Ordering::SeqCst);
        c2.work();
        async move {
            busy(x).await;
            Ok::<_, Failure>(square(x) + 1)
        }
    })
    .add_orchestrator("Child", move |ctx: OrchestrationContext, x: u64| {
        c3.work();
        async move {
            let s: u64 = ctx.call_activity("Step", x).await?;
            Ok::<_, Failure>(s + 1000)
        }
    })
    .add_orchestrator("Mixed", move |ctx: OrchestrationContext, i: u64| {
        c4.work();
        async move {
            let a: u64 = ctx.call_activity("Step", i).await?;
            let b: u64 = ctx.call_activity("Step", a).await?;
            let c: u64 = ctx.call_activity("Step", b).await?;
            ctx.create_timer(Duration::from_millis(timer_ms(i))).await?;
            let ev: u64 = ctx.wait_for_external_event("go").await?;
            let tasks: Vec<_> = (0..5).map(|k| ctx.call_activity::<u64>("SquarePlusOne", c + ev + k)).collect();
            let fan: u64 = when_all(tasks).await?.iter().sum();
            let child: u64 = ctx.call_sub_orchestration("Child", fan % 1000).await?;
            Ok::<_, Failure>(format!("{i}|{c}|{ev}|{fan}|{child}"))
        }
    });
    w
}

// ----- driver helpers ------------------------------------------------------------------------

/// Retries `f` until it succeeds (the sidecar may be down or restarting); panics after 90 s.
async fn retry<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match f().await {
            Ok(()) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "{what} still failing after 90 s: {e}");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    }
}

fn to_system_time(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t.as_ref()?;
    let d = Duration::new(u64::try_from(t.seconds).ok()?, u32::try_from(t.nanos).ok()?);
    Some(SystemTime::UNIX_EPOCH + d)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_50_kills_under_mixed_load_all_complete_exactly() {
    let seed: u64 = std::env::var("DURO_CRASH_LOOP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let kills: usize = std::env::var("DURO_CRASH_LOOP_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(50).max(3);
    eprintln!("crash loop: seed {seed} (DURO_CRASH_LOOP_SEED={seed} replays it), {kills} kills, {N} orchestrations");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = test_dir();
    let mut sidecar = Sidecar::builder().dir(dir.path()).start();
    let client = duro_sdk::Client::connect_lazy(sidecar.endpoint()).expect("client");
    let counts = Arc::new(Counts::default());
    let handle = worker(sidecar.endpoint(), counts.clone()).start().expect("worker");

    // Instance i is started in the window before kill start_at[i] and its event raised in the
    // window before kill raise_at[i]: starts spread over the loop up to kill `kills - 2`, so
    // instances are mid-flight (timers of 1–2 s at least) when the last kills land.
    let last_window = kills - 2;
    let start_at: Vec<usize> = (0..N).map(|i| ((i as usize + 1) * (last_window + 1)) / N as usize - 1).collect();
    let raise_at: Vec<usize> = start_at.iter().map(|&s| (s + rng.gen_range(0..=4)).min(last_window)).collect();

    let mut driver = tokio::task::JoinSet::new();
    let mut uptimes = Vec::new();
    let mut restart_times = Vec::new();
    let (mut kill_at, mut restarted_at) = (Vec::new(), Vec::new());
    let t_loop = Instant::now();
    let mut last_restart = (Instant::now(), SystemTime::now());
    for k in 0..kills {
        // This window's driver calls run concurrently with the kill below and retry across it.
        for i in 0..N {
            if start_at[i as usize] == k {
                let client = client.clone();
                driver.spawn(async move {
                    let id = instance_id(i);
                    retry(&format!("start {id}"), || async {
                        let opts = StartOptions::new().with_instance_id(id.clone());
                        match client.start_orchestration_with("Mixed", i, opts).await {
                            Ok(_) | Err(ClientError::AlreadyExists(_)) => Ok(()),
                            Err(e) => Err(e),
                        }
                    })
                    .await;
                    id
                });
            }
        }
        for i in 0..N {
            if raise_at[i as usize] == k {
                let client = client.clone();
                driver.spawn(async move {
                    let id = instance_id(i);
                    // Wait until the start has committed: an event for an unknown instance is refused.
                    retry(&format!("raise {id}"), || async {
                        client.get_orchestration(&id, false).await?.ok_or_else(|| ClientError::NotFound(id.clone()))?;
                        // A raise committed but unacknowledged before a kill is sent again: the
                        // orchestration waits for one "go" event and ignores the extra copy.
                        client.raise_event(&id, "go", event_value(i)).await
                    })
                    .await;
                    id
                });
            }
        }
        let up = Duration::from_millis(rng.gen_range(50..=400));
        uptimes.push(up);
        tokio::time::sleep(up).await;
        let wall = SystemTime::now();
        let t = Instant::now();
        kill_at.push(t);
        sidecar.restart(); // kill -9, then start again on the same port and database
        restart_times.push(t.elapsed());
        last_restart = (Instant::now(), wall);
        restarted_at.push(last_restart.0);
    }
    let loop_time = t_loop.elapsed();
    let (t_restart, restart_wall) = last_restart;
    // A fresh connection to the last sidecar (the helpers below panic on a failed call).
    let raw = sidecar.client().await;

    // After the last restart: the first committed turn of an instance created before it, and
    // the time until all N orchestrations are complete.
    let mut first_progress = None;
    let mut incomplete_at_restart = None;
    let all_done = loop {
        let states = query_all(&raw, PREFIX, &[]).await;
        let parents: Vec<&OrchestrationState> = states.iter().filter(|s| !s.instance_id.contains(':')).collect();
        let done = parents.iter().filter(|s| status_of(s) == OrchestrationStatus::Completed).count();
        if incomplete_at_restart.is_none() {
            incomplete_at_restart = Some(N as usize - done);
        }
        if first_progress.is_none() {
            let progressed = states.iter().any(|s| {
                to_system_time(&s.created_timestamp).is_some_and(|c| c < restart_wall)
                    && to_system_time(&s.last_updated_timestamp).is_some_and(|u| u >= restart_wall)
            });
            if progressed {
                first_progress = Some(t_restart.elapsed());
            }
        }
        if parents.len() == N as usize
            && parents
                .iter()
                .all(|s| status_of(s) != OrchestrationStatus::Running && status_of(s) != OrchestrationStatus::Pending)
        {
            break Some(t_restart.elapsed());
        }
        if t_restart.elapsed() > Duration::from_secs(60) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while let Some(r) = driver.join_next().await {
        r.expect("driver task");
    }

    // Results: every parent COMPLETED with its exact output, every child COMPLETED, none failed.
    let states = query_all(&raw, PREFIX, &[]).await;
    let mut bad = Vec::new();
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for s in &states {
        *by_status.entry(format!("{:?}", status_of(s))).or_default() += 1;
        if status_of(s) != OrchestrationStatus::Completed {
            bad.push(format!("{}: {:?} failure {:?}", s.instance_id, status_of(s), s.failure_details));
            continue;
        }
        if !s.instance_id.contains(':') {
            let i: u64 = s.instance_id[PREFIX.len()..].parse().expect("index");
            let want = serde_json::to_string(&expected(i)).expect("json");
            if s.output.as_deref() != Some(want.as_str()) {
                bad.push(format!("{}: output {:?}, expected {want}", s.instance_id, s.output));
            }
        }
    }
    let parents = states.iter().filter(|s| !s.instance_id.contains(':')).count();
    let children = states.len() - parents;

    // Per restart, worker side: from the restart to the first work item the worker started
    // (before the next kill; the last restart's window runs until all were complete).
    let work = counts.work.lock().expect("lock").clone();
    let mut first_work = Vec::new();
    for (k, &r) in restarted_at.iter().enumerate() {
        let end = kill_at.get(k + 1).copied().unwrap_or_else(Instant::now);
        if let Some(w) = work.iter().filter(|&&w| w >= r && w < end).min() {
            first_work.push(*w - r);
        }
    }
    let idle_windows = restarted_at.len() - first_work.len();
    let (steps, squares) = (counts.step.load(Ordering::SeqCst), counts.square.load(Ordering::SeqCst));
    let mut rt = restart_times.clone();
    let mut up = uptimes.clone();
    eprintln!(
        "crash loop: seed {seed}; {} kills, {} restarts in {:.1} s; uptime before each kill min/median/max {:?}/{:?}/{:?}; \
         restart (kill -9 to listening) min/median/max {:?}/{:?}/{:?}",
        kills,
        kills,
        loop_time.as_secs_f64(),
        up.iter().min().copied().unwrap_or_default(),
        median(&mut up),
        up.iter().max().copied().unwrap_or_default(),
        rt.iter().min().copied().unwrap_or_default(),
        median(&mut rt),
        rt.iter().max().copied().unwrap_or_default(),
    );
    let fw_min = first_work.iter().min().copied().unwrap_or_default();
    let fw_max = first_work.iter().max().copied().unwrap_or_default();
    let fw_med = if first_work.is_empty() { Duration::ZERO } else { median(&mut first_work) };
    eprintln!(
        "crash loop: per restart, restart to first work item at the worker min/median/max {fw_min:?}/{fw_med:?}/{fw_max:?} \
         ({} restarts; {idle_windows} up-windows ended by the next kill before the worker got any work)",
        restarted_at.len()
    );
    eprintln!(
        "crash loop: after the last restart {} of {N} orchestrations were incomplete; first committed turn after {:?}; all complete after {:?}",
        incomplete_at_restart.unwrap_or(0),
        first_progress,
        all_done
    );
    eprintln!(
        "crash loop: activity executions Step {steps} (minimum {}), SquarePlusOne {squares} (minimum {}): re-runs after kills {}; instances by status {by_status:?}",
        4 * N,
        5 * N,
        (steps + squares).saturating_sub(9 * N)
    );

    assert!(
        bad.is_empty() && all_done.is_some(),
        "seed {seed}: {} instances wrong, failed or unfinished (limit: 60 s after the last restart):\n{}\nlog tail:\n{}",
        bad.len(),
        bad.join("\n"),
        sidecar.log_tail(60)
    );
    assert_eq!(parents, N as usize, "seed {seed}: parents");
    assert_eq!(children, N as usize, "seed {seed}: one child per parent, got {children}");
    assert!(
        incomplete_at_restart.unwrap_or(0) > 0,
        "seed {seed}: every orchestration finished before the last restart; recovery was not exercised"
    );
    let first = first_progress.unwrap_or_else(|| panic!("seed {seed}: no progress observed after the last restart"));
    assert!(
        first <= RECOVERY_LIMIT,
        "seed {seed}: work resumed {first:?} after the last restart (limit {RECOVERY_LIMIT:?})"
    );
    handle.shutdown().await.expect("worker shutdown");
}
