//! `duro-bench`: the load driver of Duro's benchmark suite on the Rust SDK (`duro-sdk`).
//!
//! One process holds the SDK client (starts orchestrations, waits for them, raises events, signals
//! entities) and `-workers K` SDK workers (each its own gRPC connection) that run the orchestrators,
//! the activity and the counter entity below. It runs the scenarios of the Go driver (`bench/driver`)
//! that make sense here, checks every output (a wrong or missing result fails the run: exit status 1)
//! and prints one JSON object in the Go driver's shape, with `"driver": "rust-sdk"` and the entity
//! figures added (see [`Output`]).
//!
//! Flags are the Go driver's, written `-flag value`, `--flag value` or `--flag=value`: `-addr`,
//! `-scenario`, `-n`, `-m`, `-concurrency`, `-workers`, `-sidecar-pid`, `-sidecar`, `-name`,
//! `-timer-ms`, `-timeout` (seconds, or with a unit: `20s`, `3m`), `-prefix`, `-out`, and
//! `-max-work-items` (the workers' caps on orchestrator turns and on activities in flight) and
//! `-threads` (the driver's tokio worker threads; default one per core).
//!
//! Scenarios (instance `I`'s output is a value only that instance can produce):
//!
//! | Scenario | What | Checked |
//! |---|---|---|
//! | `sequence` | `M` chained activities `Inc` | `I+M` |
//! | `fanout` | `M` parallel `Inc(I+j)`, summed | `M·I + M(M+1)/2` |
//! | `timers` | `M` sequential timers of `-timer-ms` | `I+M` |
//! | `events` | waits for event `go`, raised (payload `3I`) once the instance runs | `4I` |
//! | `start-burst` | `N` starts as fast as `-concurrency` callers allow, then drain (as `sequence`) | `I+M` |
//! | `entities` | `M` sequential `call_entity(Counter/<prefix>-I, "add", I+1)` from an orchestration | each call's result `(j+1)(I+1)`, output `M(I+1)` |
//! | `entity-signals` | `N` client signals `add(i+1)` spread over `M` counters, then every counter read until it holds its sum | each counter's state |
//!
//! `work_items` counts what the workers ran: orchestrator turns, activity executions and entity
//! operations. `latency_ms` is per orchestration (start call → completion returned); for
//! `entity-signals` it is per signal call (the signal stored, as the client sees it).

use std::collections::HashMap;
use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duro_sdk::{
    when_all, ActivityContext, Client, EntityContext, EntityId, Failure, OrchestrationContext, OrchestrationStatus,
    StartOptions, Worker, WorkerHandle, WorkerOptions,
};
use serde::{Deserialize, Serialize};

const SCENARIOS: &[&str] = &["sequence", "fanout", "timers", "events", "start-burst", "entities", "entity-signals"];

/// The command line (see the module documentation).
#[derive(Debug, Clone)]
struct Args {
    addr: String,
    scenario: String,
    n: usize,
    m: usize,
    concurrency: usize,
    workers: usize,
    sidecar_pid: u32,
    sidecar: String,
    name: String,
    timer_ms: u64,
    timeout: Duration,
    prefix: String,
    out: Option<String>,
    max_work_items: usize,
    /// Tokio worker threads of the driver (0: one per core).
    threads: usize,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut a = Args {
            addr: "127.0.0.1:4001".into(),
            scenario: "sequence".into(),
            n: 100,
            m: 5,
            concurrency: 32,
            workers: 1,
            sidecar_pid: 0,
            sidecar: String::new(),
            name: String::new(),
            timer_ms: 10,
            timeout: Duration::from_secs(240),
            prefix: String::new(),
            out: None,
            max_work_items: 1000,
            threads: 0,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let flag = arg.trim_start_matches('-');
            if flag == "h" || flag == "help" {
                return Err(USAGE.to_string());
            }
            let (key, value) = match flag.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (flag.to_string(), it.next().ok_or_else(|| format!("flag {arg} needs a value"))?),
            };
            let num = |v: &str| v.parse::<usize>().map_err(|e| format!("-{key} {v}: {e}"));
            match key.as_str() {
                "addr" => a.addr = value,
                "scenario" => a.scenario = value,
                "n" => a.n = num(&value)?,
                "m" => a.m = num(&value)?,
                "concurrency" => a.concurrency = num(&value)?,
                "workers" => a.workers = num(&value)?,
                "sidecar-pid" => a.sidecar_pid = value.parse().map_err(|e| format!("-sidecar-pid {value}: {e}"))?,
                "sidecar" => a.sidecar = value,
                "name" => a.name = value,
                "timer-ms" => a.timer_ms = num(&value)? as u64,
                "timeout" => a.timeout = parse_duration(&value)?,
                "prefix" => a.prefix = value,
                "out" => a.out = Some(value),
                "max-work-items" => a.max_work_items = num(&value)?,
                "threads" => a.threads = num(&value)?,
                _ => return Err(format!("unknown flag {arg}\n{USAGE}")),
            }
        }
        if !SCENARIOS.contains(&a.scenario.as_str()) {
            return Err(format!("unknown scenario {:?} (one of {})", a.scenario, SCENARIOS.join(", ")));
        }
        if a.n < 1 || a.concurrency < 1 || a.workers < 1 || a.max_work_items < 1 {
            return Err("need -n >= 1, -concurrency >= 1, -workers >= 1, -max-work-items >= 1".into());
        }
        if a.scenario == "entity-signals" && a.m < 1 {
            return Err("entity-signals needs -m >= 1 (the number of counters)".into());
        }
        if a.name.is_empty() {
            a.name = a.scenario.clone();
        }
        if a.prefix.is_empty() {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            a.prefix = format!("{}-{nanos}", a.scenario);
        }
        Ok(a)
    }
}

const USAGE: &str =
    "usage: duro-bench -addr HOST:PORT -scenario sequence|fanout|timers|events|start-burst|entities|entity-signals \
-n N -m M -concurrency C [-workers K] [-sidecar-pid PID] [-sidecar LABEL] [-name RUN] [-timer-ms MS] [-timeout 4m] \
[-prefix P] [-out FILE] [-max-work-items 1000] [-threads 0]";

fn parse_duration(v: &str) -> Result<Duration, String> {
    let bad = |e: std::num::ParseFloatError| format!("-timeout {v}: {e}");
    let secs = if let Some(ms) = v.strip_suffix("ms") {
        ms.parse::<f64>().map_err(bad)? / 1000.0
    } else if let Some(s) = v.strip_suffix('s') {
        s.parse::<f64>().map_err(bad)?
    } else if let Some(m) = v.strip_suffix('m') {
        m.parse::<f64>().map_err(bad)? * 60.0
    } else {
        v.parse::<f64>().map_err(bad)?
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("-timeout {v}: {e}"))
}

/// Nearest-rank percentiles in milliseconds (as the Go driver).
#[derive(Debug, Default, Serialize)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

/// What one run prints: the Go driver's `Result` plus `driver` and the entity figures.
#[derive(Debug, Default, Serialize)]
struct Output {
    name: String,
    sidecar: String,
    /// Always `rust-sdk`: which load driver wrote this (the Go driver writes none).
    driver: String,
    scenario: String,
    n: usize,
    m: usize,
    concurrency: usize,
    workers: usize,
    completed: usize,
    failed: usize,
    wall_seconds: f64,
    orchestrations_per_sec: f64,
    /// Orchestrator turns + activity executions + entity operations run by the workers.
    work_items: u64,
    work_items_per_sec: f64,
    activity_runs: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    work_items_per_worker: Vec<u64>,
    /// Entity operations run by the workers (`entities`, `entity-signals`).
    #[serde(skip_serializing_if = "is_zero")]
    entity_operations: u64,
    /// Entity operations checked ÷ wall seconds.
    #[serde(skip_serializing_if = "is_zero_f")]
    operations_per_sec: f64,
    latency_ms: Percentiles,
    #[serde(skip_serializing_if = "is_zero_f")]
    start_per_sec: f64,
    sidecar_peak_rss_bytes: u64,
    sidecar_cpu_seconds: f64,
    sidecar_runqueue_wait_seconds: f64,
    driver_cpu_seconds: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

fn is_zero_f(x: &f64) -> bool {
    *x == 0.0
}

/// Input of every orchestration: `i` the instance's index, `m` the steps, `delay_ms` the timer
/// length, `key` the counter entity's key (`entities`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Input {
    i: i64,
    m: i64,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    key: String,
}

/// Work the workers ran, in total and per worker connection.
#[derive(Debug, Default)]
struct Counters {
    turns: AtomicU64,
    activities: AtomicU64,
    entity_ops: AtomicU64,
    per_worker: Vec<AtomicU64>,
}

impl Counters {
    fn count(&self, worker: usize, what: &AtomicU64) {
        what.fetch_add(1, Ordering::Relaxed);
        if let Some(w) = self.per_worker.get(worker) {
            w.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One SDK worker with the scenarios' orchestrators, the activity and the counter entity; every
/// function it runs counts in `counters`.
fn worker(addr: &str, counters: &Arc<Counters>, k: usize, max_items: usize) -> Worker {
    let opts = WorkerOptions { max_concurrent_entities: max_items, ..WorkerOptions::default() }
        .with_concurrency(max_items, max_items);
    let mut w = Worker::new(addr).with_options(opts);
    let c = counters.clone();
    w.add_orchestrator("Sequence", move |ctx: OrchestrationContext, input: Input| {
        c.count(k, &c.turns);
        async move {
            let mut x = input.i;
            for _ in 0..input.m {
                x = ctx.call_activity::<i64>("Inc", x).await?;
            }
            Ok(x)
        }
    });
    let c = counters.clone();
    w.add_orchestrator("FanOut", move |ctx: OrchestrationContext, input: Input| {
        c.count(k, &c.turns);
        async move {
            let tasks: Vec<_> = (0..input.m).map(|j| ctx.call_activity::<i64>("Inc", input.i + j)).collect();
            Ok(when_all(tasks).await?.iter().sum::<i64>())
        }
    });
    let c = counters.clone();
    w.add_orchestrator("Timers", move |ctx: OrchestrationContext, input: Input| {
        c.count(k, &c.turns);
        async move {
            for _ in 0..input.m {
                ctx.create_timer(Duration::from_millis(input.delay_ms)).await?;
            }
            Ok(input.i + input.m)
        }
    });
    let c = counters.clone();
    w.add_orchestrator("Events", move |ctx: OrchestrationContext, input: Input| {
        c.count(k, &c.turns);
        async move {
            let v: i64 = ctx.wait_for_external_event("go").await?;
            Ok(v + input.i)
        }
    });
    let c = counters.clone();
    w.add_orchestrator("EntityCalls", move |ctx: OrchestrationContext, input: Input| {
        c.count(k, &c.turns);
        async move {
            let counter = EntityId::new("Counter", input.key.clone());
            let mut v = 0;
            for j in 0..input.m {
                v = ctx.call_entity::<i64>(&counter, "add", input.i + 1).await?;
                let want = (j + 1) * (input.i + 1);
                if v != want {
                    return Err(Failure::new("WrongValue", format!("call {j} returned {v}, want {want}")));
                }
            }
            Ok(v)
        }
    });
    let c = counters.clone();
    w.add_activity("Inc", move |_ctx: ActivityContext, x: i64| {
        c.count(k, &c.activities);
        async move { Ok(x + 1) }
    });
    let c = counters.clone();
    w.add_entity("Counter", move |ctx: EntityContext| {
        c.count(k, &c.entity_ops);
        async move {
            let value: i64 = ctx.state_or_default()?;
            match ctx.operation() {
                "add" => {
                    let v = value + ctx.input::<i64>()?;
                    ctx.set_state(&v)?;
                    Ok(v)
                }
                "get" => Ok(value),
                other => Err(Failure::new("UnknownOperation", other)),
            }
        }
    });
    w
}

/// The run's shared state: the client, the checks' results.
struct Run {
    args: Args,
    client: Client,
    deadline: Instant,
    latencies: Mutex<Vec<Duration>>,
    failed: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Run {
    fn id(&self, i: usize) -> String {
        format!("{}-{i}", self.args.prefix)
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut errs) = self.errors.lock() {
            if errs.len() < 10 {
                errs.push(what);
            }
        }
    }

    fn ok(&self, latency: Duration) {
        if let Ok(mut l) = self.latencies.lock() {
            l.push(latency);
        }
    }

    /// The orchestrator, input and expected output of instance `i`.
    fn orchestration(&self, i: usize) -> (&'static str, Input, i64) {
        let (ii, m) = (i as i64, self.args.m as i64);
        let mut input = Input { i: ii, m, ..Input::default() };
        match self.args.scenario.as_str() {
            "sequence" | "start-burst" => ("Sequence", input, ii + m),
            "fanout" => ("FanOut", input, m * ii + m * (m + 1) / 2),
            "timers" => {
                input.delay_ms = self.args.timer_ms;
                ("Timers", input, ii + m)
            }
            "entities" => {
                input.key = self.id(i);
                ("EntityCalls", input, m * (ii + 1))
            }
            _ => ("Events", input, 4 * ii),
        }
    }

    async fn start(&self, i: usize) -> bool {
        let (name, input, _) = self.orchestration(i);
        let opts = StartOptions::new().with_instance_id(self.id(i));
        match tokio::time::timeout(self.remaining(), self.client.start_orchestration_with(name, input, opts)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                self.fail(format!("{}: start: {e}", self.id(i)));
                false
            }
            Err(_) => false, // counted as missing at the end
        }
    }

    /// Waits for instance `i` to finish, checks its output and records the latency since `t0`.
    async fn finish(&self, i: usize, t0: Instant) {
        let (_, _, want) = self.orchestration(i);
        let id = self.id(i);
        match self.client.wait_for_completion(&id, self.remaining()).await {
            Err(e) => self.fail(format!("{id}: wait: {e}")),
            Ok(state) if state.status != OrchestrationStatus::Completed => {
                self.fail(format!("{id}: status {:?}, failure {:?}", state.status, state.failure_details))
            }
            Ok(state) => match state.output::<i64>() {
                Ok(v) if v == want => self.ok(t0.elapsed()),
                Ok(v) => self.fail(format!("{id}: output {v}, want {want}")),
                Err(e) => self.fail(format!("{id}: output {:?}: {e}", state.serialized_output)),
            },
        }
    }

    async fn raise(&self, i: usize) -> bool {
        let id = self.id(i);
        if let Err(e) = self.client.wait_for_start(&id, self.remaining()).await {
            self.fail(format!("{id}: wait for start: {e}"));
            return false;
        }
        match self.client.raise_event(&id, "go", 3 * i as i64).await {
            Ok(()) => true,
            Err(e) => {
                self.fail(format!("{id}: raise: {e}"));
                false
            }
        }
    }

    /// `entity-signals`: signal `i` adds `i+1` to counter `i mod M`.
    fn counter(&self, e: usize) -> EntityId {
        EntityId::new("Counter", format!("{}-c{e}", self.args.prefix))
    }

    async fn signal(&self, i: usize) {
        let t0 = Instant::now();
        let counter = self.counter(i % self.args.m);
        match self.client.signal_entity(&counter, "add", i as i64 + 1).await {
            Ok(()) => self.ok(t0.elapsed()),
            Err(e) => self.fail(format!("signal {i}: {e}")),
        }
    }

    /// Reads counter `e` until it holds the sum of its signals' inputs; returns whether it did.
    async fn check_counter(&self, e: usize) -> bool {
        let want: i64 = (e..self.args.n).step_by(self.args.m).map(|i| i as i64 + 1).sum();
        let counter = self.counter(e);
        let mut last = None;
        while !self.remaining().is_zero() {
            match self.client.get_entity(&counter, true).await {
                Ok(Some(meta)) => match meta.state::<i64>() {
                    Ok(Some(v)) if v == want => return true,
                    Ok(v) => last = v,
                    Err(err) => {
                        self.fail(format!("{counter}: state: {err}"));
                        return false;
                    }
                },
                Ok(None) => {}
                Err(err) => {
                    self.fail(format!("{counter}: get: {err}"));
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.fail(format!("{counter}: state {last:?}, want {want} (timed out)"));
        false
    }
}

/// Calls `f(i)` for every `i` in `0..n` on `concurrency` tasks; returns when all are done.
async fn each<F, Fut>(run: &Arc<Run>, n: usize, f: F)
where
    F: Fn(Arc<Run>, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..run.args.concurrency.min(n) {
        let (run, next, f) = (run.clone(), next.clone(), f.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || run.remaining().is_zero() {
                    break;
                }
                f(run.clone(), i).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn execute(run: &Arc<Run>, out: &mut Output) {
    let n = run.args.n;
    match run.args.scenario.as_str() {
        "sequence" | "fanout" | "timers" | "entities" => {
            each(run, n, |run, i| async move {
                let t0 = Instant::now();
                if run.start(i).await {
                    run.finish(i, t0).await;
                }
            })
            .await
        }
        "events" => {
            each(run, n, |run, i| async move {
                let t0 = Instant::now();
                if run.start(i).await && run.raise(i).await {
                    run.finish(i, t0).await;
                }
            })
            .await
        }
        "start-burst" => {
            let t0 = Instant::now();
            let started: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
            let s = started.clone();
            each(run, n, move |run, i| {
                let s = s.clone();
                async move {
                    let t = Instant::now();
                    if run.start(i).await {
                        if let Ok(mut s) = s.lock() {
                            s.insert(i, t);
                        }
                    }
                }
            })
            .await;
            out.start_per_sec = round(n as f64 / t0.elapsed().as_secs_f64(), 1);
            let started = Arc::new(started.lock().map(|s| s.clone()).unwrap_or_default());
            each(run, n, move |run, i| {
                let started = started.clone();
                async move {
                    if let Some(t) = started.get(&i) {
                        run.finish(i, *t).await;
                    }
                }
            })
            .await;
        }
        _ => {
            // entity-signals: all signals, then every counter read until it holds its sum.
            each(run, n, |run, i| async move { run.signal(i).await }).await;
            let counters = run.args.m;
            let verified = Arc::new(AtomicUsize::new(0));
            let v = verified.clone();
            each(run, counters, move |run, e| {
                let v = v.clone();
                async move {
                    if run.check_counter(e).await {
                        v.fetch_add((e..run.args.n).step_by(run.args.m).count(), Ordering::Relaxed);
                    }
                }
            })
            .await;
            out.completed = verified.load(Ordering::Relaxed);
        }
    }
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    match rt.enable_all().build() {
        Ok(rt) => rt.block_on(drive(args)),
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn drive(args: Args) -> ExitCode {
    let addr = if args.addr.contains("://") { args.addr.clone() } else { format!("http://{}", args.addr) };
    let counters = Arc::new(Counters {
        per_worker: (0..args.workers).map(|_| AtomicU64::new(0)).collect(),
        ..Counters::default()
    });
    let mut handles: Vec<WorkerHandle> = Vec::new();
    for k in 0..args.workers {
        match worker(&addr, &counters, k, args.max_work_items).start() {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("worker {k}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for (k, h) in handles.iter().enumerate() {
        if !h.wait_until_connected(Duration::from_secs(20)).await {
            eprintln!("worker {k} did not connect to {addr}");
            return ExitCode::FAILURE;
        }
    }
    let client = match Client::connect(addr.clone()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connect {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };

    let pid = args.sidecar_pid;
    let run = Arc::new(Run {
        deadline: Instant::now() + args.timeout,
        args: args.clone(),
        client,
        latencies: Mutex::default(),
        failed: AtomicUsize::new(0),
        errors: Mutex::default(),
    });
    let mut out = Output {
        name: args.name.clone(),
        sidecar: args.sidecar.clone(),
        driver: "rust-sdk".into(),
        scenario: args.scenario.clone(),
        n: args.n,
        m: args.m,
        concurrency: args.concurrency,
        workers: args.workers,
        ..Output::default()
    };
    let (cpu0, rq0, self0) = (proc_cpu(pid), runqueue_wait(pid), proc_cpu(std::process::id()));
    let t0 = Instant::now();
    execute(&run, &mut out).await;
    let wall = t0.elapsed().as_secs_f64();

    let mut latencies = run.latencies.lock().map(|l| l.clone()).unwrap_or_default();
    let signals = args.scenario == "entity-signals";
    if !signals {
        out.completed = latencies.len();
    }
    out.failed = args.n.saturating_sub(out.completed);
    let mut errors = run.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let missing = out.failed.saturating_sub(run.failed.load(Ordering::Relaxed));
    if missing > 0 && !signals {
        errors.push(format!("{missing} orchestrations not checked (timeout)"));
    }
    out.wall_seconds = round(wall, 3);
    if !signals {
        out.orchestrations_per_sec = round(out.completed as f64 / wall, 1);
    }
    let (turns, acts, ops) = (
        counters.turns.load(Ordering::Relaxed),
        counters.activities.load(Ordering::Relaxed),
        counters.entity_ops.load(Ordering::Relaxed),
    );
    out.work_items = turns + acts + ops;
    out.work_items_per_sec = round(out.work_items as f64 / wall, 1);
    out.activity_runs = acts;
    out.entity_operations = ops;
    if args.scenario == "entities" {
        out.operations_per_sec = round((out.completed * args.m) as f64 / wall, 1);
    } else if signals {
        out.operations_per_sec = round(out.completed as f64 / wall, 1);
    }
    if args.workers > 1 {
        out.work_items_per_worker = counters.per_worker.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    }
    out.latency_ms = percentiles(&mut latencies);
    out.sidecar_peak_rss_bytes = proc_status_kb(pid, "VmHWM") * 1024;
    out.sidecar_cpu_seconds = round(proc_cpu(pid) - cpu0, 2);
    out.sidecar_runqueue_wait_seconds = round(runqueue_wait(pid) - rq0, 2);
    out.driver_cpu_seconds = round(proc_cpu(std::process::id()) - self0, 2);
    out.errors = errors;

    let json = serde_json::to_string_pretty(&out).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    println!("{json}");
    if let Some(path) = &args.out {
        if let Err(e) = std::fs::write(path, format!("{json}\n")) {
            eprintln!("write {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    for h in handles {
        h.abort();
    }
    if out.failed > 0 || out.completed != args.n {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn percentiles(ds: &mut [Duration]) -> Percentiles {
    if ds.is_empty() {
        return Percentiles::default();
    }
    ds.sort();
    let at = |q: f64| {
        let k = ((q * ds.len() as f64 + 0.999_999) as usize).saturating_sub(1).min(ds.len() - 1);
        round(ds[k].as_secs_f64() * 1000.0, 2)
    };
    Percentiles { p50: at(0.50), p95: at(0.95), p99: at(0.99), max: at(1.0) }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// utime+stime of a process in seconds (`/proc/<pid>/stat` fields 14 and 15, USER_HZ = 100).
fn proc_cpu(pid: u32) -> f64 {
    if pid == 0 {
        return 0.0;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The command name may contain spaces: the fields after it start past the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |k: usize| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / 100.0
}

/// A `kB` field of `/proc/<pid>/status`.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    if pid == 0 {
        return 0;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Run-queue wait of a process's threads in seconds (second field of `schedstat`, ns).
fn runqueue_wait(pid: u32) -> f64 {
    if pid == 0 {
        return 0.0;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ns as f64 / 1e9
}
