//! The simulation of several sidecars sharing one store: two or three engines on one
//! [`MemDb`] that models the PostgreSQL store's leases (claims raise an epoch, renewals
//! extend and report losses, releases look for inbox rows, turn commits are fenced by the
//! epoch held, leases expire on the manual clock) and queues every commit's notices per
//! engine. Nothing runs in real time: the cluster loop's pieces (`claim_pass`,
//! `on_notices`, `renew`) are steps, like starts, raised events, worker answers, clock jumps,
//! notice deliveries and drops (a drop may leave a `Notice::Missed`, or nothing: the poll
//! and the renewals must cover), engines freezing and resuming, dying (their leases expire)
//! and joining. After every step, once all tasks have settled:
//!
//! 1. every committed inbox row of an instance whose lease is live is held by its holder's
//!    scheduler in exactly one place, unless another sidecar committed it after the
//!    holder's last read of that inbox (its notice, the poll or a renewal brings it in);
//!    an instance whose lease is free or expired is claimable;
//! 2. no two engines with valid leases on one instance hold pending events of it. (Unlike
//!    the single-engine simulation, a holder may keep an event pending that the store no
//!    longer has: a claim or an inbox reload reads the snapshot, a turn of the same
//!    sidecar that was out commits and consumes a row, and the snapshot is applied after;
//!    the next turn's commit then conflicts and resyncs. Known, costs one wasted turn.)
//! 3. no event is committed to an execution's history twice (fencing);
//! 4. each engine's scheduler is consistent (`Scheduler::audit`), and an activity is in
//!    one place in each scheduler (its valid holder's included).
//!
//! At the end the faults stop, the engines deliver their notices, renew and claim until
//! everything has run, and every instance must finish with the output its history implies.
//!
//! `DURO_SIM_CLUSTER_SCHEDULES` (default 3,000) sets how many seeds run; `DURO_SIM_SEED`
//! replays one seed and prints its steps.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use duro_proto::*;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::mem_store::{self, MemDb, MemStore};
use super::{event_name, expected_output, options, ManualClock, Sim, Worker, MAX_INSTANCES};
use crate::core::{is_terminal, NewInstance};
use crate::engine::scheduler::{Audit, StreamRules};
use crate::engine::{Clock, Engine, Outgoing};
use crate::store::{Leases, Notice};

/// Instances completed over all schedules (reported with the fencing counts).
static COMPLETED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long a lease lasts without renewal.
const LEASE_MS: i64 = 3_000;
const MAX_NODES: usize = 3;

/// One sidecar: its engine, its side of the store, its workers and its cluster loop's state.
struct Node {
    name: String,
    engine: Engine,
    store: Arc<MemStore>,
    workers: Vec<Worker>,
    /// Future visible times armed by notices (the loop's `armed`).
    armed: Arc<Mutex<BTreeSet<i64>>>,
    /// The cluster loop runs one piece at a time.
    looping: Arc<tokio::sync::Mutex<()>>,
    /// A frozen sidecar (SIGSTOP) takes no steps; its leases run out meanwhile.
    frozen: bool,
}

struct Cluster {
    rng: Arc<Mutex<StdRng>>,
    clock: Arc<ManualClock>,
    db: Arc<MemDb>,
    nodes: Vec<Node>,
    next_node: u32,
    instances: BTreeSet<String>,
    next_instance: u32,
    terminated: HashSet<String>,
    raised: u64,
    trace: Vec<String>,
    verbose: bool,
}

/// Which cluster loop piece a step runs.
#[derive(Debug, Clone, Copy)]
enum LoopStep {
    /// The fallback poll, an armed time or a wanted claim: a claim pass.
    Claim,
    /// A burst of notices, then a claim if they ask for one.
    Notices,
    /// A renewal (give-back included), then a claim.
    Renew,
}

impl Cluster {
    async fn new(seed: u64, verbose: bool) -> Result<Cluster, String> {
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        let clock = Arc::new(ManualClock(AtomicI64::new(1_700_000_000_000)));
        let db = MemDb::shared(rng.clone(), 3, clock.clone(), LEASE_MS);
        let mut c = Cluster {
            rng,
            clock,
            db,
            nodes: Vec::new(),
            next_node: 0,
            instances: BTreeSet::new(),
            next_instance: 0,
            terminated: HashSet::new(),
            raised: 0,
            trace: Vec::new(),
            verbose,
        };
        let n = 2 + c.roll(2);
        for _ in 0..n {
            c.join().await?;
        }
        Ok(c)
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

    /// A new sidecar joins the hub (with one worker).
    async fn join(&mut self) -> Result<(), String> {
        self.next_node += 1;
        let name = format!("n{}", self.next_node);
        let store = Arc::new(self.db.join(&name));
        let engine = Engine::start_clustered_with_clock(store.clone(), store.clone(), options(), self.clock.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.nodes.push(Node {
            name: name.clone(),
            engine,
            store,
            workers: Vec::new(),
            armed: Default::default(),
            looping: Default::default(),
            frozen: false,
        });
        self.note(format!("{name} joins"));
        self.connect(self.nodes.len() - 1);
        Ok(())
    }

    fn connect(&mut self, n: usize) {
        let rules = StreamRules {
            max_orchestrations: 1 + self.roll(3),
            max_activities: 1 + self.roll(3),
            filters: None,
            ..Default::default()
        };
        let (id, rx) = self.nodes[n].engine.open_stream(rules);
        self.nodes[n].workers.push(Worker { id, rx, held: Vec::new() });
    }

    /// A sidecar that is running (not frozen), if any.
    fn pick_running(&self) -> Option<usize> {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|n| !self.nodes[*n].frozen).collect();
        (!running.is_empty()).then(|| running[self.roll(running.len())])
    }

    fn pick_instance(&self) -> Option<String> {
        let n = self.instances.len();
        (n > 0).then(|| self.instances.iter().nth(self.roll(n)).cloned()).flatten()
    }

    fn pull(&mut self, n: usize, w: usize) {
        while let Ok(Outgoing::Item(item)) = self.nodes[n].workers[w].rx.try_recv() {
            self.nodes[n].workers[w].held.push(*item);
        }
    }

    /// Runs one piece of a sidecar's cluster loop on its own task (it interleaves with the
    /// other calls of the step, one piece per sidecar at a time).
    fn spawn_loop_step(&mut self, n: usize, step: LoopStep, all: bool) {
        let node = &self.nodes[n];
        let (engine, store, armed, looping) =
            (node.engine.clone(), node.store.clone(), node.armed.clone(), node.looping.clone());
        let batch: Vec<Notice> = match step {
            LoopStep::Notices => {
                let mut t = self.db.tables.lock();
                let queue = t.notices.entry(node.name.clone()).or_default();
                let take = match queue.len() {
                    0 => 0,
                    len if all => len,
                    len => 1 + self.rng.lock().gen_range(0..len),
                };
                queue.drain(..take).collect()
            }
            _ => Vec::new(),
        };
        if matches!(step, LoopStep::Notices) && batch.is_empty() {
            return;
        }
        let what = format!("{} runs {step:?} {batch:?}", node.name);
        self.note(what);
        tokio::spawn(async move {
            let _one = looping.lock().await;
            let leases: &dyn Leases = &*store;
            let mut want = true;
            match step {
                LoopStep::Claim => {}
                LoopStep::Notices => {
                    let mut set = std::mem::take(&mut *armed.lock());
                    want = engine.on_notices(leases, batch, &mut set).await;
                    armed.lock().extend(set);
                }
                LoopStep::Renew => engine.renew(leases).await,
            }
            let now = engine.now();
            {
                let mut set = armed.lock();
                while set.first().is_some_and(|t| *t <= now) {
                    set.pop_first();
                    want = true;
                }
            }
            if want {
                engine.claim_pass(leases).await;
            }
        });
    }

    /// Loses some of a sidecar's undelivered notices; a reconnecting listener says so.
    fn drop_notices(&mut self, n: usize) {
        let name = self.nodes[n].name.clone();
        let missed = self.roll(2) == 0;
        let lost = {
            let mut t = self.db.tables.lock();
            let queue = t.notices.entry(name.clone()).or_default();
            if queue.is_empty() {
                return;
            }
            let mut rng = self.rng.lock();
            let from = rng.gen_range(0..queue.len());
            let to = rng.gen_range(from..queue.len()) + 1;
            let lost: Vec<Notice> = queue.drain(from..to).collect();
            if missed {
                queue.insert(from, Notice::Missed);
            }
            lost
        };
        self.note(format!("{name} loses notices {lost:?} (missed notice: {missed})"));
    }

    /// Runs one random action; several run before the engines are allowed to settle.
    async fn act(&mut self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return self.join().await;
        }
        let Some(n) = self.pick_running() else { return Ok(()) };
        let engine = self.nodes[n].engine.clone();
        let name = self.nodes[n].name.clone();
        match self.roll(100) {
            0..=8 => {
                let (id, replace) = match self.pick_instance() {
                    Some(id) if self.instances.len() >= MAX_INSTANCES || self.roll(4) == 0 => (id, true),
                    _ => {
                        self.next_instance += 1;
                        (format!("i{}", self.next_instance), false)
                    }
                };
                let input = self.roll(1000) as u32;
                self.note(format!("{name}: start {id} input {input} (over an existing id: {replace})"));
                self.instances.insert(id.clone());
                let execution_id = format!("{id}-e{}", self.rng.lock().gen::<u32>());
                let new = NewInstance::simple(&id, &execution_id, "Sim", Some(input.to_string()), self.now());
                let reuse = super::random_reuse(self.roll(2) == 0);
                tokio::spawn(async move {
                    let _ = engine.create_instance(new, reuse).await;
                });
            }
            9..=19 => {
                let Some(id) = self.pick_instance() else { return Ok(()) };
                self.raised += 1;
                let input = format!("g{}", self.raised);
                self.note(format!("{name}: raise go {input} on {id}"));
                tokio::spawn(async move {
                    let _ = engine.raise_event(&id, "go".into(), Some(input)).await;
                });
            }
            20..=45 => {
                if self.nodes[n].workers.is_empty() {
                    return Ok(());
                }
                let w = self.roll(self.nodes[n].workers.len());
                self.pull(n, w);
                let held = self.nodes[n].workers[w].held.len();
                if held == 0 {
                    return Ok(());
                }
                let pick = self.roll(held);
                let item = self.nodes[n].workers[w].held.swap_remove(pick);
                let wid = self.nodes[n].workers[w].id;
                let kind = match &item.request {
                    Some(work_item::Request::OrchestratorRequest(r)) => format!("turn of {}", r.instance_id),
                    Some(work_item::Request::ActivityRequest(a)) => format!(
                        "activity {} of {}",
                        a.task_id,
                        a.orchestration_instance.as_ref().map(|i| i.instance_id.as_str()).unwrap_or_default()
                    ),
                    _ => "item".into(),
                };
                match self.roll(20) {
                    0 => {
                        self.note(format!("{name}: worker {wid} abandons {kind}"));
                        engine.abandon(&item.completion_token);
                    }
                    1 => {
                        self.note(format!("{name}: worker {wid} answers {kind} twice"));
                        Sim::answer(&engine, item.clone());
                        Sim::answer(&engine, item);
                    }
                    2..=4 => {
                        self.note(format!("{name}: worker {wid} holds on to {kind} for now"));
                        self.nodes[n].workers[w].held.insert(0, item);
                    }
                    _ => {
                        self.note(format!("{name}: worker {wid} answers {kind}"));
                        Sim::answer(&engine, item);
                    }
                }
            }
            46..=49 if self.nodes[n].workers.len() < 2 => {
                self.connect(n);
                let id = self.nodes[n].workers.last().map(|w| w.id).unwrap_or_default();
                self.note(format!("{name}: worker {id} connects"));
                self.spawn_loop_step(n, LoopStep::Claim, false);
            }
            50..=52 if !self.nodes[n].workers.is_empty() => {
                let pick = self.roll(self.nodes[n].workers.len());
                let w = self.nodes[n].workers.swap_remove(pick);
                self.note(format!("{name}: worker {} disconnects holding {} items", w.id, w.held.len()));
                engine.close_stream(w.id);
            }
            53..=58 => {
                let ms = 1 + self.roll(1_500) as i64;
                self.advance(ms);
            }
            59..=60 => {
                let ms = LEASE_MS + 1 + self.roll(1_000) as i64;
                self.advance(ms);
            }
            61..=68 => self.spawn_loop_step(n, LoopStep::Claim, false),
            69..=80 => self.spawn_loop_step(n, LoopStep::Notices, false),
            81..=83 => self.drop_notices(n),
            84..=88 => self.spawn_loop_step(n, LoopStep::Renew, false),
            89..=90 => {
                let Some(id) = self.pick_instance() else { return Ok(()) };
                self.note(format!("{name}: terminate {id}"));
                self.terminated.insert(id.clone());
                tokio::spawn(async move {
                    let _ = engine.terminate(&id, Some("\"stop\"".into()), false).await;
                });
            }
            91 => {
                let Some(id) = self.pick_instance() else { return Ok(()) };
                self.note(format!("{name}: suspend {id}"));
                tokio::spawn(async move {
                    let _ = engine.suspend(&id, None).await;
                });
            }
            92 => {
                let Some(id) = self.pick_instance() else { return Ok(()) };
                self.note(format!("{name}: resume {id}"));
                tokio::spawn(async move {
                    let _ = engine.resume(&id, None).await;
                });
            }
            93..=94 => {
                // Freeze one sidecar (never the last running one), or wake a frozen one.
                if let Some(f) = self.nodes.iter().position(|x| x.frozen) {
                    let f_name = self.nodes[f].name.clone();
                    self.note(format!("{f_name} resumes"));
                    self.nodes[f].frozen = false;
                    self.nodes[f].engine.fire_due_timers();
                } else if self.nodes.len() > 1 {
                    self.note(format!("{name} freezes"));
                    self.nodes[n].frozen = true;
                }
            }
            95..=96 if self.nodes.len() < MAX_NODES => self.join().await?,
            97 => {
                let node = self.nodes.swap_remove(n);
                self.note(format!("{name} is killed"));
                node.store.kill();
                node.engine.shutdown();
            }
            98 => {
                let node = self.nodes.swap_remove(n);
                self.note(format!("{name} shuts down gracefully"));
                node.engine.shutdown();
                node.engine.release_leases().await;
                node.store.kill();
            }
            _ => {}
        }
        Ok(())
    }

    fn advance(&mut self, ms: i64) {
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
        self.note(format!("clock +{ms} ms"));
        for node in self.nodes.iter().filter(|n| !n.frozen) {
            node.engine.fire_due_timers();
        }
    }

    async fn settle(&self) -> Result<(), String> {
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..100_000 {
            if metrics.num_alive_tasks() == 0 {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
        Err(format!("engine tasks never settle ({} alive)", metrics.num_alive_tasks()))
    }

    fn check(&self) -> Result<(), String> {
        let now = self.now();
        let t = self.db.tables.lock();
        // The sidecar whose lease on an instance is live, and the epoch it knows of.
        let holder = |instance: &str| -> Option<usize> {
            let lease = &t.instances.get(instance)?.lease;
            let owner = lease.owner.as_deref()?;
            if lease.until_ms < now {
                return None;
            }
            let n = self.nodes.iter().position(|x| x.name == owner)?;
            let held = self.nodes[n].store.node().and_then(|x| x.held.lock().get(instance).copied());
            (held == Some(lease.epoch)).then_some(n)
        };
        let mut audits: Vec<Audit> = Vec::with_capacity(self.nodes.len());
        for (n, node) in self.nodes.iter().enumerate() {
            let audit = node.engine.inner.sched.lock().audit();
            // A sidecar whose lease another sidecar voided (a replacement of the instance, or a
            // takeover after expiry) learns it only at its renewal, a notice or a fenced commit;
            // meanwhile it may hold a later event behind a start row it does not know. Its
            // commits are fenced, and its renewal or a claim rebuilds the instance.
            let stale_gate = |p: &String| {
                p.contains("waits for a start event that is nowhere")
                    && p.split('\'').nth(1).is_some_and(|id| holder(id) != Some(n))
            };
            let problems: Vec<&String> = audit.problems.iter().filter(|p| !stale_gate(p)).collect();
            if let Some(p) = problems.first() {
                return Err(format!("{} scheduler: {p} (and {} more)", node.name, problems.len() - 1));
            }
            for (id, places) in &audit.activities {
                if places.len() != 1 {
                    return Err(format!("{}: activity {id} is held {places:?}", node.name));
                }
            }
            audits.push(audit);
        }
        // (1) committed rows are with the holder, or on their way to it.
        for (id, row) in &t.inbox {
            let Some(n) = holder(&row.instance_id) else { continue };
            let name = &self.nodes[n].name;
            match audits[n].events.get(id) {
                Some((instance, places)) if places.len() == 1 && *instance == row.instance_id => {}
                Some((_, places)) => {
                    return Err(format!("inbox row {id} of '{}' is held {places:?} by {name}", row.instance_id))
                }
                None => {
                    let seen = t.snapshots.get(&(name.clone(), row.instance_id.clone())).copied().unwrap_or(0);
                    if row.origin == *name || *id <= seen {
                        return Err(format!(
                            "inbox row {id} of '{}' ({:?}, from {}) is committed but its lease holder {name} (which \
                             read its inbox through row {seen}) holds it nowhere",
                            row.instance_id,
                            row.event.event_type.as_ref().map(event_name),
                            row.origin,
                        ));
                    }
                }
            }
        }
        // (2) one valid holder with pending events per instance; it holds nothing gone.
        let mut pending_at: std::collections::HashMap<&str, Vec<&str>> = Default::default();
        for (n, audit) in audits.iter().enumerate() {
            let name = &self.nodes[n].name;
            for (id, (instance, places)) in &audit.events {
                if holder(instance) != Some(n) {
                    continue;
                }
                if places.contains(&"pending") {
                    let at = pending_at.entry(instance.as_str()).or_default();
                    if !at.contains(&name.as_str()) {
                        at.push(name);
                    }
                }
                // An event gone from the store may still be pending here: a reload or a claim
                // read the inbox before a turn of this sidecar consumed the row and applied
                // the snapshot after (see the module doc); the next turn's commit conflicts
                // and resyncs. Only a valid holder's rows that are nowhere are a loss.
                let _ = id;
            }
        }
        if let Some((instance, at)) = pending_at.iter().find(|(_, at)| at.len() > 1) {
            return Err(format!("'{instance}' has pending events on {at:?}, each with a valid lease"));
        }
        // (4) an activity leased to a sidecar is in its scheduler.
        for (id, lease) in &t.activity_leases {
            let (Some(owner), true) = (lease.owner.as_deref(), t.activities.contains_key(id)) else { continue };
            let Some(n) = self.nodes.iter().position(|x| x.name == owner) else { continue };
            let held = self.nodes[n].store.node().and_then(|x| x.held_activities.lock().get(id).copied());
            if lease.until_ms >= now && held == Some(lease.epoch) && !audits[n].activities.contains_key(id) {
                return Err(format!("activity {id} is leased to {owner}, whose scheduler does not hold it"));
            }
        }
        // (3) nothing committed twice.
        for (id, inst) in &t.instances {
            expected_output(&inst.history).map_err(|e| format!("'{id}': {e}"))?;
        }
        Ok(())
    }

    /// The store's instances and every sidecar's view of them (failure reports).
    fn dump(&self) -> String {
        let t = self.db.tables.lock();
        let mut out = format!("at {}:\n", self.now());
        for (id, i) in &t.instances {
            let rows: Vec<String> = t
                .inbox
                .iter()
                .filter(|(_, r)| r.instance_id == *id)
                .map(|(k, r)| {
                    format!("{k}:{}@{}", r.event.event_type.as_ref().map(event_name).unwrap_or_default(), r.origin)
                })
                .collect();
            let history: Vec<String> =
                i.history.iter().map(|e| e.event_type.as_ref().map(event_name).unwrap_or_default()).collect();
            out += &format!("  '{id}' {:?} {:?} rows {rows:?} history {history:?}\n", i.status, i.lease);
            for n in &self.nodes {
                let held = n.store.node().and_then(|x| x.held.lock().get(id).copied());
                let seen = t.snapshots.get(&(n.name.clone(), id.clone()));
                out += &format!(
                    "    {} held {held:?} read through {seen:?}: {}\n",
                    n.name,
                    n.engine.inner.sched.lock().describe(id)
                );
            }
        }
        out
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
        if self.verbose && std::env::var("DURO_SIM_DUMP").is_ok() {
            eprintln!("{}", self.dump());
        }
        self.check()
    }

    /// Stops the faults and drives every instance to its end.
    async fn finish(&mut self) -> Result<(), String> {
        self.note("faults stop".into());
        for node in &mut self.nodes {
            node.frozen = false;
        }
        if self.nodes.is_empty() {
            self.join().await?;
        }
        for n in 0..self.nodes.len() {
            if self.nodes[n].workers.is_empty() {
                self.connect(n);
            }
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
                let engine = self.nodes[self.roll(self.nodes.len())].engine.clone();
                let _ = engine.resume(&id, None).await;
                let _ = engine.raise_event(&id, "go".into(), Some(input)).await;
            }
            for step in [LoopStep::Notices, LoopStep::Renew] {
                for n in 0..self.nodes.len() {
                    if matches!(step, LoopStep::Notices) {
                        // Every notice, in one burst.
                        let mut t = self.db.tables.lock();
                        let queue = t.notices.entry(self.nodes[n].name.clone()).or_default();
                        let all = std::mem::take(queue);
                        queue.push(Notice::Missed);
                        queue.extend(all);
                    }
                    self.spawn_loop_step(n, step, true);
                    self.settle().await?;
                }
            }
            for n in 0..self.nodes.len() {
                for w in 0..self.nodes[n].workers.len() {
                    self.pull(n, w);
                    for item in std::mem::take(&mut self.nodes[n].workers[w].held) {
                        Sim::answer(&self.nodes[n].engine, item);
                    }
                }
            }
            self.settle().await?;
            self.advance(LEASE_MS / 3);
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
                let views: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("{}: {}", n.name, n.engine.inner.sched.lock().describe(id)))
                    .collect();
                format!("'{id}' {:?} lease {:?} with inbox rows {rows:?}; schedulers: {views:?}", i.status, i.lease)
            })
            .collect();
        Err(format!("stranded at {}: {}", self.now(), stuck.join("; ")))
    }

    fn check_outputs(&self) -> Result<(), String> {
        let t = self.db.tables.lock();
        for (id, inst) in &t.instances {
            match inst.status {
                OrchestrationStatus::Completed => {
                    COMPLETED.fetch_add(1, Ordering::Relaxed);
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

/// Runs one schedule; the error names the step that broke an invariant.
fn run_schedule(seed: u64, steps: usize, verbose: bool) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut sim = Cluster::new(seed, verbose).await?;
        for step in 0..steps {
            if let Err(e) = sim.step().await {
                if verbose {
                    eprintln!("{}", sim.dump());
                }
                let tail: Vec<&String> = sim.trace.iter().rev().take(20).collect();
                return Err(format!("step {step}: {e}\n  last actions (newest first): {tail:#?}"));
            }
        }
        sim.finish().await.map_err(|e| {
            let tail: Vec<&String> = sim.trace.iter().rev().take(20).collect();
            format!("after {steps} steps: {e}\n  last actions (newest first): {tail:#?}")
        })
    })
}

#[test]
fn cluster_schedules_hold_their_invariants() {
    let steps = 80;
    let schedules = super::explore("DURO_SIM_CLUSTER_SCHEDULES", 3_000, "engine::sim::cluster", steps, run_schedule);
    eprintln!(
        "{schedules} cluster schedules of {steps} steps explored, every invariant held after every step \
         ({} instances claimed, {} turn commits fenced, {} instances completed)",
        mem_store::CLAIMED.load(Ordering::Relaxed),
        mem_store::FENCED.load(Ordering::Relaxed),
        COMPLETED.load(Ordering::Relaxed)
    );
}
