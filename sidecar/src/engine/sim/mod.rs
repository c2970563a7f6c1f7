//! A seeded, model-based randomized test of the engine and scheduler together.
//!
//! Each schedule builds an engine on an in-memory store ([`mem_store`]) with a manual
//! clock on a single-threaded runtime, then runs random steps: starts (also over a
//! finished id), raised events, worker answers (some abandoned, some whose caller is gone
//! after the first poll, some repeated), stream connects and drops, clock jumps that fire
//! timers and expire leases, terminate/suspend/resume, and crashes (the engine is rebuilt
//! from the store). Several calls run at once and the store pauses a seeded number of
//! times around each change, so commits and scheduler updates interleave differently per
//! seed. After every step, once all engine tasks have settled, the invariants are checked:
//!
//! - every committed inbox row is held by the scheduler in exactly one place (pending,
//!   leased or waiting for its time), and every committed activity likewise;
//! - the scheduler's own bookkeeping is consistent (see `Scheduler::audit`);
//! - no event was committed to an execution's history twice.
//!
//! At the end the faults stop and every instance must finish with the exact output its
//! history implies: work that is committed but never dispatched fails the schedule.
//!
//! `DURO_SIM_SCHEDULES` (default 10,000) sets how many seeds run, `DURO_SIM_SEED` replays
//! one seed and prints its steps.

mod cluster;
mod mem_store;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use duro_proto::history_event::EventType;
use duro_proto::orchestrator_action::OrchestratorActionType;
use duro_proto::*;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::core::time::{from_ms, to_ms};
use mem_store::MemDb;

struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

const MAX_INSTANCES: usize = 5;
const TIMER_DELAY_MS: i64 = 500;

struct Worker {
    id: StreamId,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    held: Vec<WorkItem>,
}

struct Sim {
    rng: Arc<Mutex<StdRng>>,
    clock: Arc<ManualClock>,
    db: Arc<MemDb>,
    engine: Engine,
    workers: Vec<Worker>,
    instances: BTreeSet<String>,
    next_instance: u32,
    terminated: HashSet<String>,
    raised: u64,
    trace: Vec<String>,
    verbose: bool,
    /// The scheduler's payload budget in this schedule (small ones force payloads to be
    /// read back from the store).
    payload_budget: usize,
    /// Starts whose caller was told "created": they must survive every crash.
    acknowledged: Arc<Mutex<Vec<String>>>,
    /// Timers due within this are held in memory, later ones read from the store as the
    /// clock advances (short ones leave most timers in the store until near their time).
    horizon_ms: u64,
}

/// Crashes, across the schedules of a run, that took back pipelined writes not yet durable.
static CRASHES_LOSING_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn options() -> EngineOptions {
    EngineOptions {
        scheduler: SchedulerOptions {
            // Poison detection is not what this explores: abandons must not fail instances.
            max_attempts: u32::MAX,
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            turn_lease_ms: 2_000,
            ..SchedulerOptions::default()
        },
        ..EngineOptions::default()
    }
}

// ----- the orchestration every instance runs -------------------------------------------------

/// Replays an instance's events and answers with the actions not yet in its history:
/// call `Double(input)`, then a timer, then wait for an event `go`; the output is
/// `"<activity result>|<first go input>"`.
fn orchestrate(past: &[HistoryEvent], new: &[HistoryEvent]) -> Vec<OrchestratorAction> {
    let all: Vec<&HistoryEvent> = past.iter().chain(new).collect();
    let mut input = None;
    let mut first_turn_ms = None;
    let (mut scheduled, mut timer_created, mut fired) = (false, false, false);
    let (mut result, mut go) = (None, None);
    for e in &all {
        match &e.event_type {
            Some(EventType::ExecutionStarted(s)) => input = s.input.clone(),
            Some(EventType::OrchestratorStarted(_)) => {
                first_turn_ms = first_turn_ms.or(e.timestamp.as_ref().map(to_ms));
            }
            Some(EventType::TaskScheduled(_)) if e.event_id == 0 => scheduled = true,
            Some(EventType::TaskCompleted(c)) if c.task_scheduled_id == 0 => result = result.or(c.result.clone()),
            Some(EventType::TimerCreated(_)) if e.event_id == 1 => timer_created = true,
            Some(EventType::TimerFired(f)) if f.timer_id == 1 => fired = true,
            Some(EventType::EventRaised(r)) if r.name == "go" => go = go.or(Some(r.input.clone().unwrap_or_default())),
            _ => {}
        }
    }
    let action = |id, a| OrchestratorAction { id, orchestrator_action_type: Some(a) };
    let mut actions = Vec::new();
    if !scheduled {
        let task = ScheduleTaskAction { name: "Double".into(), input, ..Default::default() };
        actions.push(action(0, OrchestratorActionType::ScheduleTask(task)));
    }
    let Some(result) = result else { return actions };
    if !timer_created {
        let at = first_turn_ms.unwrap_or(0) + TIMER_DELAY_MS;
        actions.push(action(1, OrchestratorActionType::CreateTimer(CreateTimerAction { fire_at: Some(from_ms(at)) })));
    }
    if let (true, Some(go)) = (fired, go) {
        let done = CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::Completed as i32,
            result: Some(format!("{result}|{go}")),
            ..Default::default()
        };
        actions.push(action(2, OrchestratorActionType::CompleteOrchestration(done)));
    }
    actions
}

fn double(input: Option<&str>) -> String {
    let n: i64 = input.and_then(|s| s.parse().ok()).unwrap_or(0);
    (n * 2).to_string()
}

/// The output an instance's history implies, and problems with the history itself.
fn expected_output(history: &[HistoryEvent]) -> Result<Option<String>, String> {
    let (mut input, mut go) = (None, None);
    let mut seen_raised = HashSet::new();
    let (mut completed, mut fired, mut started) = (0, 0, 0);
    for e in history {
        match &e.event_type {
            Some(EventType::ExecutionStarted(s)) => {
                started += 1;
                input = s.input.clone();
            }
            Some(EventType::TaskCompleted(_)) => completed += 1,
            Some(EventType::TimerFired(_)) => fired += 1,
            Some(EventType::EventRaised(r)) => {
                let v = r.input.clone().unwrap_or_default();
                if !seen_raised.insert(v.clone()) {
                    return Err(format!("event {v} committed twice"));
                }
                go = go.or(Some(v));
            }
            _ => {}
        }
    }
    if started > 1 || completed > 1 || fired > 1 {
        return Err(format!("duplicate delivery: {started} starts, {completed} results, {fired} timers fired"));
    }
    Ok(go.map(|g| format!("{}|{g}", double(input.as_deref()))))
}

// ----- the simulation -------------------------------------------------------------------------

impl Sim {
    async fn new(seed: u64, verbose: bool) -> Result<Sim, String> {
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        let clock = Arc::new(ManualClock(AtomicI64::new(1_700_000_000_000)));
        let db = MemDb::new(rng.clone(), 3);
        let payload_budget = [0, 400, 64 << 20][rng.lock().gen_range(0..3)];
        let horizon_ms = [300, 700, 86_400_000][rng.lock().gen_range(0..3)];
        let engine = Sim::boot(&db, &clock, payload_budget, horizon_ms).await?;
        let mut sim = Sim {
            rng,
            clock,
            db,
            engine,
            workers: Vec::new(),
            instances: BTreeSet::new(),
            next_instance: 0,
            terminated: HashSet::new(),
            raised: 0,
            trace: Vec::new(),
            verbose,
            payload_budget,
            acknowledged: Default::default(),
            horizon_ms,
        };
        sim.connect();
        Ok(sim)
    }

    async fn boot(
        db: &Arc<MemDb>,
        clock: &Arc<ManualClock>,
        payload_budget: usize,
        horizon_ms: u64,
    ) -> Result<Engine, String> {
        let store: Arc<dyn Store> = Arc::new(db.handle());
        let mut opts = options();
        opts.scheduler.max_payload_bytes = payload_budget;
        opts.timer_horizon = std::time::Duration::from_millis(horizon_ms);
        Engine::start_with_clock(store, opts, Vec::new(), clock.clone()).await.map_err(|e| e.to_string())
    }

    fn roll(&self, n: usize) -> usize {
        self.rng.lock().gen_range(0..n)
    }

    fn note(&mut self, s: String) {
        if self.verbose {
            eprintln!("  {s}");
        }
        self.trace.push(s);
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn connect(&mut self) {
        let rules = StreamRules {
            max_orchestrations: 1 + self.roll(3),
            max_activities: 1 + self.roll(3),
            filters: None,
            ..Default::default()
        };
        let (id, rx) = self.engine.open_stream(rules);
        self.workers.push(Worker { id, rx, held: Vec::new() });
    }

    fn pick_instance(&self) -> Option<String> {
        let n = self.instances.len();
        (n > 0).then(|| self.instances.iter().nth(self.roll(n)).cloned()).flatten()
    }

    fn new_instance(&self, id: &str, input: u32) -> NewInstance {
        let execution_id = format!("{id}-e{}", self.rng.lock().gen::<u32>());
        NewInstance::simple(id, &execution_id, "Sim", Some(input.to_string()), self.now())
    }

    /// Takes one worker's queued items off its stream.
    fn pull(&mut self, w: usize) {
        while let Ok(Outgoing::Item(item)) = self.workers[w].rx.try_recv() {
            self.workers[w].held.push(*item);
        }
    }

    /// The answer a correct worker gives to an item.
    fn answer(engine: &Engine, item: WorkItem) -> tokio::task::JoinHandle<()> {
        let engine = engine.clone();
        tokio::spawn(async move {
            let token = item.completion_token;
            match item.request {
                Some(work_item::Request::OrchestratorRequest(r)) => {
                    let actions = orchestrate(&r.past_events, &r.new_events);
                    let resp = OrchestratorResponse {
                        instance_id: r.instance_id,
                        actions,
                        completion_token: token,
                        ..Default::default()
                    };
                    let _ = engine.complete_orchestration(resp).await;
                }
                Some(work_item::Request::ActivityRequest(a)) => {
                    let instance_id = a.orchestration_instance.map(|i| i.instance_id).unwrap_or_default();
                    let resp = ActivityResponse {
                        instance_id,
                        task_id: a.task_id,
                        result: Some(double(a.input.as_deref())),
                        failure_details: None,
                        completion_token: token,
                    };
                    let _ = engine.complete_activity(resp).await;
                }
                _ => {}
            }
        })
    }

    /// Runs one random action; several run before the engine is allowed to settle.
    async fn act(&mut self) -> Result<(), String> {
        let engine = self.engine.clone();
        match self.roll(100) {
            0..=11 => {
                let (id, replace) = match self.pick_instance() {
                    Some(id) if self.instances.len() >= MAX_INSTANCES || self.roll(4) == 0 => (id, true),
                    _ => {
                        self.next_instance += 1;
                        (format!("i{}", self.next_instance), false)
                    }
                };
                if self.instances.len() >= MAX_INSTANCES && !replace {
                    return Ok(());
                }
                let input = self.roll(1000) as u32;
                self.note(format!("start {id} input {input} (over an existing id: {replace})"));
                self.instances.insert(id.clone());
                let new = self.new_instance(&id, input);
                // Half the restarts also replace a live instance (terminated first): its
                // turn or activity in flight must then fail to commit.
                let reuse = random_reuse(self.roll(2) == 0);
                let acknowledged = self.acknowledged.clone();
                tokio::spawn(async move {
                    if let Ok(CreateResult::Created(_)) = engine.create_instance(new, reuse).await {
                        acknowledged.lock().push(id);
                    }
                });
            }
            12..=25 => {
                let Some(id) = self.pick_instance() else { return Ok(()) };
                self.raised += 1;
                let input = format!("g{}", self.raised);
                self.note(format!("raise go {input} on {id}"));
                tokio::spawn(async move {
                    let _ = engine.raise_event(&id, "go".into(), Some(input)).await;
                });
            }
            26..=60 => {
                if self.workers.is_empty() {
                    return Ok(());
                }
                let w = self.roll(self.workers.len());
                self.pull(w);
                let held = self.workers[w].held.len();
                if held == 0 {
                    return Ok(());
                }
                let pick = self.roll(held);
                let item = self.workers[w].held.swap_remove(pick);
                let how = self.roll(20);
                let kind = match &item.request {
                    Some(work_item::Request::OrchestratorRequest(r)) => format!("turn of {}", r.instance_id),
                    Some(work_item::Request::ActivityRequest(a)) => format!(
                        "activity {} of {}",
                        a.task_id,
                        a.orchestration_instance.as_ref().map(|i| i.instance_id.as_str()).unwrap_or_default()
                    ),
                    _ => "item".into(),
                };
                match how {
                    0 => {
                        self.note(format!("worker {} abandons {kind}", self.workers[w].id));
                        engine.abandon(&item.completion_token);
                    }
                    1 => {
                        self.note(format!("worker {} answers {kind}, caller gone after one poll", self.workers[w].id));
                        let h = Sim::answer(&engine, item);
                        drop(h);
                    }
                    2 => {
                        self.note(format!("worker {} answers {kind} twice", self.workers[w].id));
                        Sim::answer(&engine, item.clone());
                        Sim::answer(&engine, item);
                    }
                    3 => {
                        // A slow worker: it answers later, perhaps after its turn's lease
                        // expired (activities have no lease timeout while connected).
                        self.note(format!("worker {} holds on to {kind} for now", self.workers[w].id));
                        self.workers[w].held.insert(0, item);
                    }
                    _ => {
                        self.note(format!("worker {} answers {kind}", self.workers[w].id));
                        Sim::answer(&engine, item);
                    }
                }
            }
            61..=66 => {
                if self.workers.len() < 3 {
                    self.connect();
                    let id = self.workers.last().map(|w| w.id).unwrap_or_default();
                    self.note(format!("worker {id} connects"));
                }
            }
            67..=71 => {
                if !self.workers.is_empty() {
                    let w = self.workers.swap_remove(self.roll(self.workers.len()));
                    self.note(format!("worker {} disconnects holding {} items", w.id, w.held.len()));
                    engine.close_stream(w.id);
                }
            }
            72..=83 => {
                let ms = 1 + self.roll(3_000) as i64;
                self.clock.0.fetch_add(ms, Ordering::SeqCst);
                self.note(format!("clock +{ms} ms"));
                self.advance_horizon().await;
                engine.fire_due_timers();
            }
            84..=87 => {
                let Some(id) = self.pick_instance() else { return Ok(()) };
                self.note(format!("terminate {id}"));
                self.terminated.insert(id.clone());
                tokio::spawn(async move {
                    let _ = engine.terminate(&id, Some("\"stop\"".into()), false).await;
                });
            }
            88..=92 => {
                let Some(id) = self.pick_instance() else { return Ok(()) };
                self.note(format!("suspend {id}"));
                tokio::spawn(async move {
                    let _ = engine.suspend(&id, None).await;
                });
            }
            93..=97 => {
                let Some(id) = self.pick_instance() else { return Ok(()) };
                self.note(format!("resume {id}"));
                tokio::spawn(async move {
                    let _ = engine.resume(&id, None).await;
                });
            }
            _ => self.crash().await?,
        }
        Ok(())
    }

    /// What the engine's horizon task does when its time comes: reads the timers of the next
    /// window from the store, at once or (to interleave with commits) on a task of its own.
    async fn advance_horizon(&mut self) {
        let engine = self.engine.clone();
        let span = i64::try_from(self.horizon_ms).unwrap_or(i64::MAX);
        if self.roll(2) == 0 {
            self.note("read the next timer window".into());
            engine.load_timers(span).await;
        } else {
            self.note("read the next timer window (concurrently)".into());
            tokio::spawn(async move {
                engine.load_timers(span).await;
            });
        }
    }

    /// Kills the engine at an arbitrary point and starts a new one on the same store.
    async fn crash(&mut self) -> Result<(), String> {
        self.engine.shutdown();
        // Pipelined writes handed on but not yet durable are gone with the process.
        let lost = self.db.lose_unsynced();
        if lost {
            CRASHES_LOSING_WRITES.fetch_add(1, Ordering::Relaxed);
        }
        self.note(format!("crash and restart (pipelined writes lost: {lost})"));
        {
            let t = self.db.tables.lock();
            if let Some(id) = self.acknowledged.lock().iter().find(|id| !t.instances.contains_key(*id)) {
                return Err(format!("the start of '{id}' was acknowledged, but the crash took it back"));
            }
        }
        self.workers.clear();
        self.engine = Sim::boot(&self.db, &self.clock, self.payload_budget, self.horizon_ms).await?;
        self.connect();
        Ok(())
    }

    /// Lets every engine task run to its end.
    async fn settle(&self) -> Result<(), String> {
        let metrics = tokio::runtime::Handle::current().metrics();
        for i in 0..100_000 {
            if metrics.num_alive_tasks() == 0 {
                return Ok(());
            }
            if i % 64 == 63 {
                // The writer's next COMMIT: tasks waiting for durability go on.
                self.db.sync();
            }
            tokio::task::yield_now().await;
        }
        Err(format!("engine tasks never settle ({} alive)", metrics.num_alive_tasks()))
    }

    fn check(&self) -> Result<(), String> {
        let audit = self.engine.inner.sched.lock().audit();
        if let Some(p) = audit.problems.first() {
            return Err(format!("scheduler: {p} (and {} more)", audit.problems.len() - 1));
        }
        // Timers after the horizon (or in the window being read) are in the store only.
        let held_through = self.engine.inner.sched.lock().held_through();
        let t = self.db.tables.lock();
        for (id, row) in &t.inbox {
            match audit.events.get(id) {
                Some((instance, places)) if places.len() == 1 && *instance == row.instance_id => {}
                None if row.visible_at_ms > held_through => {}
                Some((_, places)) => return Err(format!("inbox row {id} of '{}' is held {places:?}", row.instance_id)),
                None => {
                    return Err(format!(
                        "inbox row {id} of '{}' ({:?}) is committed but neither pending, leased nor waiting",
                        row.instance_id,
                        row.event.event_type.as_ref().map(event_name)
                    ))
                }
            }
        }
        for (id, (instance, places)) in &audit.events {
            if !t.inbox.contains_key(id) && places.iter().any(|p| *p != "leased") {
                return Err(format!("event {id} of '{instance}' is {places:?} but not in the store"));
            }
        }
        for id in t.activities.keys() {
            match audit.activities.get(id) {
                Some(places) if places.len() == 1 => {}
                other => return Err(format!("activity {id} is held {other:?}")),
            }
        }
        for (id, inst) in &t.instances {
            expected_output(&inst.history).map_err(|e| format!("'{id}': {e}"))?;
        }
        Ok(())
    }

    async fn step(&mut self) -> Result<(), String> {
        let calls = 1 + self.roll(3);
        for _ in 0..calls {
            self.act().await?;
            for _ in 0..self.roll(4) {
                tokio::task::yield_now().await;
            }
        }
        self.settle().await?;
        self.check()
    }

    /// Stops the faults and drives every instance to its end.
    async fn finish(&mut self) -> Result<(), String> {
        self.note("faults stop".into());
        if self.workers.is_empty() {
            self.connect();
        }
        for _ in 0..40 {
            let live: Vec<String> = {
                let t = self.db.tables.lock();
                self.instances
                    .iter()
                    .filter(|id| t.instances.get(*id).is_some_and(|i| !is_terminal(i.status)))
                    .cloned()
                    .collect()
            };
            if live.is_empty() {
                return self.check_outputs();
            }
            for id in live {
                self.raised += 1;
                let input = format!("g{}", self.raised);
                let _ = self.engine.resume(&id, None).await;
                let _ = self.engine.raise_event(&id, "go".into(), Some(input)).await;
            }
            for w in 0..self.workers.len() {
                self.pull(w);
                for item in std::mem::take(&mut self.workers[w].held) {
                    Sim::answer(&self.engine, item);
                }
            }
            self.settle().await?;
            self.clock.0.fetch_add(5_000, Ordering::SeqCst);
            self.advance_horizon().await;
            self.engine.fire_due_timers();
            self.settle().await?;
            self.check()?;
        }
        let t = self.db.tables.lock();
        let stuck: Vec<String> = t
            .instances
            .iter()
            .filter(|(_, i)| !is_terminal(i.status))
            .map(|(id, i)| {
                let rows: Vec<i64> = t.inbox.iter().filter(|(_, r)| r.instance_id == *id).map(|(k, _)| *k).collect();
                let view = self.engine.inner.sched.lock().describe(id);
                let history: Vec<String> = i
                    .history
                    .iter()
                    .map(|e| format!("{}#{}", e.event_type.as_ref().map(event_name).unwrap_or_default(), e.event_id))
                    .collect();
                format!("'{id}' {:?} with inbox rows {rows:?}; history {history:?}; scheduler: {view}", i.status)
            })
            .collect();
        let first = self.engine.inner.sched.lock().next_wakeup_ms();
        Err(format!("stranded at {} (next wake-up {first:?}): {}", self.now(), stuck.join("; ")))
    }

    fn check_outputs(&self) -> Result<(), String> {
        let t = self.db.tables.lock();
        for (id, inst) in &t.instances {
            match inst.status {
                OrchestrationStatus::Completed => {
                    let expected = expected_output(&inst.history)?;
                    if inst.output != expected {
                        return Err(format!("'{id}' output {:?}, its history implies {expected:?}", inst.output));
                    }
                }
                OrchestrationStatus::Terminated if self.terminated.contains(id) => {}
                other => return Err(format!("'{id}' ended {other:?} with output {:?}", inst.output)),
            }
        }
        Ok(())
    }
}

fn event_name(e: &EventType) -> String {
    let debug = format!("{e:?}");
    debug.split('(').next().unwrap_or_default().to_string()
}

/// Runs one schedule; the error names the step that broke an invariant.
fn run_schedule(seed: u64, steps: usize, verbose: bool) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut sim = Sim::new(seed, verbose).await?;
        for step in 0..steps {
            if let Err(e) = sim.step().await {
                let tail: Vec<&String> = sim.trace.iter().rev().take(12).collect();
                return Err(format!("step {step}: {e}\n  last actions (newest first): {tail:#?}"));
            }
        }
        sim.finish().await.map_err(|e| format!("after {steps} steps: {e}"))
    })
}

/// The id-reuse policy of a random start: the default (finished ids only), or one that also
/// replaces a live instance (terminating it first), whose turn or activity in flight must
/// then fail to commit.
pub(super) fn random_reuse(default: bool) -> IdReuse {
    if default {
        return IdReuse::terminal();
    }
    IdReuse::Replace(vec![
        OrchestrationStatus::Pending,
        OrchestrationStatus::Running,
        OrchestrationStatus::Suspended,
        OrchestrationStatus::Completed,
        OrchestrationStatus::Terminated,
    ])
}

/// Runs `schedule(seed, steps, verbose)` for many seeds split over the cores (each schedule
/// has its own single-threaded runtime) and panics with the smallest failing seed: how many
/// from `$count_var` (default `default_count`), from `$DURO_SIM_BASE`; with `$DURO_SIM_SEED`
/// only that seed, its steps printed. Returns how many schedules ran.
pub(super) fn explore(
    count_var: &str,
    default_count: u64,
    replay_filter: &str,
    steps: usize,
    schedule: fn(u64, usize, bool) -> Result<(), String>,
) -> u64 {
    if let Some(seed) = std::env::var("DURO_SIM_SEED").ok().and_then(|s| s.parse::<u64>().ok()) {
        if let Err(e) = schedule(seed, steps, true) {
            panic!("seed {seed}: {e}");
        }
        return 1;
    }
    let schedules: u64 = std::env::var(count_var).ok().and_then(|s| s.parse().ok()).unwrap_or(default_count);
    let base: u64 = std::env::var("DURO_SIM_BASE").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let threads = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
    let failures: Vec<(u64, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                scope.spawn(move || {
                    (base + k..base + schedules)
                        .step_by(threads as usize)
                        .find_map(|seed| schedule(seed, steps, false).err().map(|e| (seed, e)))
                })
            })
            .collect();
        workers.into_iter().filter_map(|w| w.join().ok().flatten()).collect()
    });
    if let Some((seed, e)) = failures.into_iter().min_by_key(|(seed, _)| *seed) {
        panic!("seed {seed} (replay: DURO_SIM_SEED={seed} cargo test -p duro --lib {replay_filter}): {e}");
    }
    schedules
}

#[test]
fn random_schedules_keep_every_committed_event_in_exactly_one_place() {
    let steps = 60;
    let schedules = explore("DURO_SIM_SCHEDULES", 10_000, "engine::sim", steps, run_schedule);
    let lost = CRASHES_LOSING_WRITES.load(Ordering::Relaxed);
    eprintln!(
        "{schedules} random schedules of {steps} steps explored, every invariant held after every step; \
         {lost} crashes took back pipelined writes that were not durable yet"
    );
    assert!(schedules < 1_000 || lost > 0, "no crash ever hit a pipelined write in flight: the model is not exercised");
}

/// A poison activity whose failure cannot be recorded (the store is failing) is not
/// dropped from dispatch: it is tried again after a back-off and, once the store works,
/// its orchestration receives the failure.
#[test]
fn a_poison_activity_whose_failure_cannot_be_recorded_is_retried() {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(7)));
        let db = MemDb::new(rng, 0);
        let clock = Arc::new(ManualClock(AtomicI64::new(1_700_000_000_000)));
        let mut opts = options();
        opts.scheduler.max_attempts = 1;
        let store: Arc<dyn Store> = Arc::new(db.handle());
        let engine = Engine::start_with_clock(store, opts, Vec::new(), clock.clone()).await.expect("engine");
        let settle = || async {
            for _ in 0..10_000 {
                tokio::task::yield_now().await;
            }
        };
        let rules = StreamRules { max_orchestrations: 10, max_activities: 10, filters: None, ..Default::default() };
        let (first, mut rx) = engine.open_stream(rules.clone());
        let now = clock.now_ms();
        let new = NewInstance::simple("p", "p-e", "Sim", Some("1".into()), now);
        engine.create_instance(new, IdReuse::terminal()).await.expect("created");
        settle().await;
        let Ok(Outgoing::Item(turn)) = rx.try_recv() else { panic!("no first turn") };
        Sim::answer(&engine, *turn);
        settle().await;
        assert!(rx.try_recv().is_ok(), "the activity was dispatched");
        // The worker dies holding it: one lost delivery is the limit here.
        engine.close_stream(first);
        db.fail_writes.store(true, Ordering::SeqCst);
        let (_second, mut rx) = engine.open_stream(rules);
        settle().await;
        let audit = engine.inner.sched.lock().audit();
        assert_eq!(audit.activities.len(), 1, "the activity is still held for a retry: {audit:?}");
        db.fail_writes.store(false, Ordering::SeqCst);
        clock.0.fetch_add(options().scheduler.backoff_max_ms, Ordering::SeqCst);
        engine.fire_due_timers();
        settle().await;
        let Ok(Outgoing::Item(turn)) = rx.try_recv() else { panic!("the failure never reached the orchestration") };
        let Some(work_item::Request::OrchestratorRequest(r)) = turn.request else { panic!("not a turn") };
        assert!(r.new_events.iter().any(|e| matches!(e.event_type, Some(EventType::TaskFailed(_)))));
    });
}
