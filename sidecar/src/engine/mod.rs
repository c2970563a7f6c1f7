//! The imperative shell around the core: runs turns, commits them, dispatches work.
//!
//! Flow of one turn: an inbox commit makes an instance ready in the [`Scheduler`]; `pump`
//! leases it to a worker stream (or to the sidecar for control turns); the turn is built
//! from the history cache (or the store) and sent; the worker's response goes through the
//! pure [`crate::core::turn::decide`]; the outcome commits in one transaction; only then
//! are activities, timers and messages handed to the scheduler and waiters notified.

pub mod builtin;
pub mod cache;
pub mod cluster;
pub mod entities;
pub mod scheduler;
pub mod waiters;

#[cfg(test)]
mod sim;

use std::sync::Arc;
use std::time::Duration;

use duro_proto::history_event::EventType;
use duro_proto::*;
use parking_lot::Mutex;
use prost::Message as _;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};

use crate::ambient::now_ms;
use crate::core::turn::{self, TurnError, TurnInput, WorkerDecision};
use crate::core::{self, control, events, is_terminal, InstanceInfo, Message, NewInstance, TurnOutcome};
use crate::store::*;
use cache::SharedHistory;
use scheduler::*;
use waiters::Waiters;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller exceeded a limit (the message names it and what to do).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("the sidecar is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub scheduler: SchedulerOptions,
    /// In-flight cap per stream and kind when the worker sends none.
    pub default_stream_cap: usize,
    /// Instances whose history stays cached in memory.
    pub cache_instances: usize,
    /// Estimated bytes of cached history, at most.
    pub cache_bytes: usize,
    /// Largest orchestrator work item sent; larger ones fail the instance.
    pub max_work_item_bytes: usize,
    /// History bytes above which a worker that declared history streaming gets the history
    /// by `StreamInstanceHistory` rather than in the work item.
    pub stream_history_above: usize,
    /// Interval of health pings on an idle work-item stream.
    pub ping_interval: Duration,
    /// Longest a `WaitFor*` call blocks before answering DEADLINE_EXCEEDED.
    pub max_wait: Duration,
    /// Events raised by clients (RaiseEvent) that may wait in one instance's inbox;
    /// more answer RESOURCE_EXHAUSTED until the instance consumes some.
    pub max_inbox_events: usize,
    /// Sharing the store with other sidecars (used only with [`Engine::start_shared`]).
    pub cluster: cluster::ClusterOptions,
    /// Durable timers due within this are held in memory; later ones stay in the store and
    /// are read as their time comes near (half this ahead), when the store can
    /// ([`Store::recover_through`]; SQLite). Instances waiting on long timers then cost
    /// nothing in memory.
    pub timer_horizon: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            scheduler: SchedulerOptions::default(),
            default_stream_cap: 1000,
            cache_instances: 10_000,
            cache_bytes: 128 * 1024 * 1024,
            max_work_item_bytes: 4 * 1024 * 1024 - 64 * 1024,
            stream_history_above: STREAM_HISTORY_ABOVE,
            ping_interval: Duration::from_secs(30),
            max_wait: Duration::from_secs(3600),
            max_inbox_events: 10_000,
            cluster: cluster::ClusterOptions::default(),
            timer_horizon: Duration::from_secs(60),
        }
    }
}

/// By default, a worker that declared `WORKER_CAPABILITY_HISTORY_STREAMING` gets a turn's history
/// by `StreamInstanceHistory` once it is larger than this (as the .NET host does), or whenever
/// it would not fit in the work item; smaller histories travel in the work item, which saves
/// the worker a round trip.
pub const STREAM_HISTORY_ABOVE: usize = 1024 * 1024;

struct Inner {
    store: Arc<dyn Store>,
    builtins: std::collections::HashMap<String, Arc<dyn builtin::BuiltinActivity>>,
    sched: Mutex<Scheduler>,
    cache: Mutex<cache::HistoryCache>,
    waiters: Waiters,
    opts: EngineOptions,
    timer: Notify,
    shutdown: watch::Sender<bool>,
    clock: Arc<dyn Clock>,
    entities: Mutex<entities::EntityDispatch>,
    entity_timer: Notify,
    /// Leases in a store shared with other sidecars; `None` with a store of its own.
    leases: Option<Arc<dyn Leases>>,
    /// Wakes the cluster loop for a claim.
    claim_wanted: Notify,
    entity_role: Mutex<entities::EntityRole>,
}

/// Where the engine reads the time: the system clock, or a test's manual clock.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Rebuilds dispatch state from the store and starts the timer loop.
    ///
    /// `builtins` are activities the sidecar runs itself; they are never sent to workers.
    pub async fn start(
        store: Arc<dyn Store>,
        opts: EngineOptions,
        builtins: Vec<Arc<dyn builtin::BuiltinActivity>>,
    ) -> Result<Engine, EngineError> {
        Engine::start_shared(store, None, opts, builtins).await
    }

    /// Like [`Engine::start`]; with `leases` the store is shared with other sidecars and the
    /// engine runs only what it claims (see [`cluster`]).
    pub async fn start_shared(
        store: Arc<dyn Store>,
        leases: Option<Arc<dyn Leases>>,
        opts: EngineOptions,
        builtins: Vec<Arc<dyn builtin::BuiltinActivity>>,
    ) -> Result<Engine, EngineError> {
        let engine = Engine::start_inner(store, leases.clone(), opts, builtins, Arc::new(SystemClock)).await?;
        tokio::spawn(engine.clone().timer_loop());
        if engine.inner.sched.lock().timer_horizon().is_some() {
            tokio::spawn(engine.clone().horizon_loop());
        }
        let shared = leases.is_some();
        if let Some(leases) = leases {
            tokio::spawn(engine.clone().cluster_loop(leases));
        }
        if !shared {
            // On a shared hub the entity leader reads them (see `cluster`).
            engine.recover_entities(true).await?;
        }
        tokio::spawn(engine.clone().entity_timer_loop());
        engine.pump_entities();
        Ok(engine)
    }

    /// Like [`Engine::start`], with time read from `clock` and no timer task: the caller
    /// fires due timers itself with [`Engine::fire_due_timers`] (deterministic tests).
    #[cfg(test)]
    pub(crate) async fn start_with_clock(
        store: Arc<dyn Store>,
        opts: EngineOptions,
        builtins: Vec<Arc<dyn builtin::BuiltinActivity>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, EngineError> {
        Engine::start_inner(store, None, opts, builtins, clock).await
    }

    /// Like [`Engine::start_shared`] with `leases`, with time read from `clock` and neither a
    /// timer task nor the cluster loop: the caller runs their steps itself
    /// ([`Engine::fire_due_timers`], [`Engine::claim_pass`], [`Engine::on_notices`],
    /// [`Engine::renew`]), as the cluster simulation does.
    #[cfg(test)]
    pub(crate) async fn start_clustered_with_clock(
        store: Arc<dyn Store>,
        leases: Arc<dyn Leases>,
        opts: EngineOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, EngineError> {
        Engine::start_inner(store, Some(leases), opts, Vec::new(), clock).await
    }

    async fn start_inner(
        store: Arc<dyn Store>,
        leases: Option<Arc<dyn Leases>>,
        opts: EngineOptions,
        builtins: Vec<Arc<dyn builtin::BuiltinActivity>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, EngineError> {
        let mut sched = Scheduler::new(opts.scheduler.clone());
        // On a shared store, work enters by claims only; recovering everything would run
        // other sidecars' instances. Timers due after the horizon stay in the store.
        let horizon = clock.now_ms().saturating_add(i64::try_from(opts.timer_horizon.as_millis()).unwrap_or(i64::MAX));
        let recovered = match &leases {
            None => match store.recover_through(horizon).await? {
                Some(r) => {
                    sched.set_timer_horizon(horizon);
                    r
                }
                None => store.recover().await?,
            },
            Some(_) => Recovered::default(),
        };
        let builtins: std::collections::HashMap<String, Arc<dyn builtin::BuiltinActivity>> =
            builtins.into_iter().map(|b| (b.name().to_string(), b)).collect();
        sched.set_builtin_names(builtins.keys().cloned());
        let now = clock.now_ms();
        let (inbox, activities) = (recovered.inbox.len(), recovered.activities.len());
        for d in recovered.inbox {
            sched.add_event(d, now);
        }
        for a in recovered.activities {
            sched.add_activity(a);
        }
        for a in &recovered.attempts {
            sched.restore_attempts(a);
        }
        if leases.is_none() {
            tracing::info!(inbox, activities, "recovered pending work from the store");
        }
        let (shutdown, _) = watch::channel(false);
        let max_attempts = opts.scheduler.max_attempts;
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                builtins,
                sched: Mutex::new(sched),
                cache: Mutex::new(cache::HistoryCache::new(opts.cache_instances, opts.cache_bytes)),
                waiters: Waiters::default(),
                opts,
                timer: Notify::new(),
                shutdown,
                clock,
                entities: Mutex::new(entities::EntityDispatch::new(max_attempts)),
                entity_timer: Notify::new(),
                entity_role: Mutex::new(match leases {
                    None => entities::EntityRole::Sole,
                    Some(_) => entities::EntityRole::Follower,
                }),
                leases,
                claim_wanted: Notify::new(),
            }),
        };
        engine.pump();
        Ok(engine)
    }

    fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    pub fn options(&self) -> &EngineOptions {
        &self.inner.opts
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Tells streams and waiters to end (streams end with UNAVAILABLE).
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    pub fn stats(&self) -> SchedulerStats {
        self.inner.sched.lock().stats()
    }

    /// The latest checkpoints of an instance's built-in activities in flight, by task id.
    pub fn builtin_progress(&self, instance_id: &str) -> Vec<(i32, String)> {
        self.inner.sched.lock().builtin_progress(instance_id)
    }

    /// The scheduler's figures and its connected streams, read under one lock (the dashboard's
    /// live view).
    pub fn live_snapshot(&self) -> LiveSnapshot {
        let sched = self.inner.sched.lock();
        LiveSnapshot { stats: sched.stats(), streams: sched.stream_views() }
    }

    // ----- dispatch loop ---------------------------------------------------------------

    async fn timer_loop(self) {
        let mut shutdown = self.shutdown_signal();
        loop {
            let next = self.inner.sched.lock().arm_timer();
            let sleep = match next {
                Some(at) => Duration::from_millis(u64::try_from(at - self.now()).unwrap_or(0)),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.inner.timer.notified() => {}
                _ = shutdown.changed() => return,
            }
            self.fire_due_timers();
        }
    }

    /// Reads durable timers from the store window by window, half a horizon ahead of their
    /// time (see [`EngineOptions::timer_horizon`]).
    async fn horizon_loop(self) {
        let mut shutdown = self.shutdown_signal();
        let span = i64::try_from(self.inner.opts.timer_horizon.as_millis()).unwrap_or(i64::MAX).max(2);
        loop {
            let Some(horizon) = self.inner.sched.lock().timer_horizon() else { return };
            let wait = u64::try_from(horizon - span / 2 - self.now()).unwrap_or(0);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = shutdown.changed() => return,
            }
            if !self.load_timers(span).await {
                return;
            }
        }
    }

    /// Advances the timer horizon and reads the timers of the new window; `false` at shutdown.
    pub(crate) async fn load_timers(&self, span_ms: i64) -> bool {
        let Some((after, through)) = self.inner.sched.lock().begin_timer_load(self.now(), span_ms) else {
            return true;
        };
        let mut shutdown = self.shutdown_signal();
        loop {
            match self.inner.store.load_timers(after, through).await {
                Ok(snapshot) => {
                    let snapshot = snapshot.unwrap_or_default();
                    let rows = snapshot.rows.len();
                    self.inner.sched.lock().finish_timer_load(snapshot.rows, snapshot.watermark, self.now());
                    tracing::debug!(after, through, rows, "read durable timers due soon");
                    // Also re-arms the timer task if a row is due before what it sleeps until.
                    self.pump();
                    return true;
                }
                // Shutting down, or the store is gone (its writer stopped): nothing to retry.
                Err(StoreError::Closed) => return false,
                Err(_) if *shutdown.borrow() => return false,
                Err(e) => {
                    // The window stays open (rows of it registered meanwhile wait); try again.
                    tracing::warn!(error = %e, "could not read durable timers; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return false,
                    }
                }
            }
        }
    }

    /// Moves every wake-up due by now into the queues and dispatches.
    pub(crate) fn fire_due_timers(&self) {
        let poisoned = self.inner.sched.lock().fire_due(self.now());
        self.persist_attempts();
        self.run_assignments(poisoned);
        self.pump();
    }

    /// Writes changed delivery-attempt counts to the store (off the caller's path; a lost
    /// write only means poison detection counts a few deliveries fewer after a crash).
    fn persist_attempts(&self) {
        let counts = self.inner.sched.lock().take_attempt_log();
        if counts.is_empty() {
            return;
        }
        let store = self.inner.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.record_attempts(counts).await {
                tracing::warn!(error = %e, "could not record delivery attempts");
            }
        });
    }

    /// Hands out every lease that can start now.
    fn pump(&self) {
        let now = self.now();
        let (assignments, rearm) = {
            let mut s = self.inner.sched.lock();
            let all = s.assign(now);
            let mut rest = Vec::new();
            for a in all {
                match a {
                    Assignment::Activity { token, stream, mut request, activity_id } => {
                        tracing::debug!(activity_id, stream, name = %request.name, "dispatching activity");
                        crate::metrics::dispatched(crate::metrics::ACTIVITY, &request.name, &token);
                        crate::otel::activity_dispatched(&token, &mut request);
                        let item = WorkItem {
                            request: Some(work_item::Request::ActivityRequest(request)),
                            completion_token: token.clone(),
                        };
                        // A dead stream's removal releases this lease; nothing to do here.
                        s.send(&token, stream, item);
                    }
                    other => rest.push(other),
                }
            }
            (rest, s.take_timer_dirty())
        };
        if rearm {
            self.inner.timer.notify_one();
        }
        self.run_assignments(assignments);
        self.pump_entities();
    }

    fn run_assignments(&self, assignments: Vec<Assignment>) {
        for a in assignments {
            let engine = self.clone();
            match a {
                Assignment::Turn(lease) => {
                    tracing::debug!(instance = %lease.instance_id, kind = ?lease.kind, events = lease.events.len(), "dispatching turn");
                    // Every log line of the turn names its instance and, once known, trace.
                    let span = tracing::info_span!(parent: None, "turn", instance = %lease.instance_id, trace_id = tracing::field::Empty);
                    tokio::spawn(tracing::Instrument::instrument(async move { engine.run_turn(lease).await }, span));
                }
                Assignment::Builtin { token, activity_id, mut request, progress } => {
                    crate::metrics::dispatched(crate::metrics::ACTIVITY, &request.name, &token);
                    crate::otel::activity_dispatched(&token, &mut request);
                    tokio::spawn(async move { engine.run_builtin(token, activity_id, request, progress).await });
                }
                Assignment::PoisonActivity { activity_id, request, attempts } => {
                    tokio::spawn(async move { engine.fail_activity(activity_id, request, attempts).await });
                }
                Assignment::Activity { .. } => {}
            }
        }
    }

    async fn run_builtin(&self, token: String, activity_id: i64, request: ActivityRequest, progress: Option<String>) {
        let Some(b) = self.inner.builtins.get(&request.name).cloned() else {
            self.release(&token, Release::Failed);
            return;
        };
        let sched = Arc::downgrade(&self.inner);
        let checkpoint = builtin::Checkpoint {
            store: self.inner.store.clone(),
            activity_id,
            on_saved: Arc::new(move |id, p| {
                if let Some(inner) = sched.upgrade() {
                    inner.sched.lock().set_activity_progress(id, p);
                }
            }),
        };
        let instance = request.orchestration_instance.clone().unwrap_or_default();
        let task_id = request.task_id;
        let outcome = b.run(builtin::BuiltinCall { request, progress, checkpoint }).await;
        let (result, failure_details) = match outcome {
            Ok(r) => (r, None),
            Err(f) => (None, Some(f)),
        };
        let resp = ActivityResponse {
            instance_id: instance.instance_id,
            task_id,
            result,
            failure_details,
            completion_token: token.clone(),
        };
        if let Err(e) = self.complete_activity(resp).await {
            tracing::warn!(error = %e, "built-in activity result not recorded; it will run again");
        }
    }

    async fn fail_activity(&self, activity_id: i64, request: ActivityRequest, attempts: u32) {
        let instance = request.orchestration_instance.clone().unwrap_or_default();
        let now = self.now();
        let failure = events::failure(
            "DuroPoisonWorkItem",
            format!(
                "activity '{}' (task {}) was delivered {attempts} times without a result (abandoned or its worker \
                 disconnected each time); Duro gave up on it",
                request.name, request.task_id
            ),
            true,
        );
        tracing::warn!(instance = %instance.instance_id, activity = %request.name, attempts, "poison activity failed");
        crate::metrics::poison(crate::metrics::ACTIVITY);
        let msg = Message::now(
            instance.instance_id.clone(),
            instance.execution_id.clone(),
            events::task_failed(now, request.task_id, failure),
            now,
        );
        match self.inner.store.complete_activity(activity_id, msg).await {
            Ok(delivered) => {
                if let Some(leases) = &self.inner.leases {
                    leases.activity_done(activity_id);
                }
                if let Some(d) = delivered.filter(|d| self.admits(&d.instance_id)) {
                    self.inner.sched.lock().add_event(d, now);
                    self.pump();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record a poison activity's failure; trying again after a back-off");
                let queued = QueuedActivity { id: activity_id, request, progress: None };
                self.inner.sched.lock().restore_poison_activity(queued, attempts, self.now());
                self.inner.timer.notify_one();
            }
        }
    }

    // ----- instance state and cache -----------------------------------------------------

    /// The instance's current execution and history, from the cache or the store. The
    /// history is a snapshot sharing the cache's memory: no event is copied.
    async fn instance_state(&self, instance_id: &str) -> Result<Option<(InstanceInfo, SharedHistory)>, StoreError> {
        if let Some(state) = self.inner.cache.lock().get(instance_id) {
            return Ok(Some(state));
        }
        let Some(rec) = self.inner.store.load_instance(instance_id).await? else { return Ok(None) };
        let history = SharedHistory::from(self.inner.store.load_history(instance_id).await?);
        let info = rec.info();
        self.inner.cache.lock().put(info.clone(), history.clone());
        Ok(Some((info, history)))
    }

    fn invalidate(&self, instance_id: &str) {
        self.inner.cache.lock().remove(instance_id);
    }

    /// Applies a committed outcome to the cached state (or drops it when unsure).
    fn update_cache(&self, info: &InstanceInfo, history_len: usize, outcome: &TurnOutcome) {
        self.inner.cache.lock().apply(info, history_len, outcome);
    }

    // ----- turns ---------------------------------------------------------------------------

    async fn run_turn(&self, lease: TurnLease) {
        let now = self.now();
        let state = match self.instance_state(&lease.instance_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(instance = %lease.instance_id, error = %e, "could not load instance for a turn");
                self.release(&lease.token, Release::Later);
                return;
            }
        };
        let Some((info, history)) = state.filter(|(info, _)| !is_terminal(info.status)) else {
            // Gone or finished, as far as the cache knows: the leased events may be stale
            // rows, or a replacing execution's. The store decides which.
            self.invalidate(&lease.instance_id);
            self.resync_after_stale_turn(&lease.token, &lease.instance_id).await;
            return;
        };
        if let TurnKind::Worker(_) = lease.kind {
            // The scheduler dispatched on what it knew; the instance's status is read here,
            // under the lease, where no other turn can change it.
            let has_start = lease.events.iter().any(|((p, _), _)| *p == core::Priority::Start);
            let gate = match info.status {
                OrchestrationStatus::Pending if !has_start => Some(Gate::AwaitingStart),
                OrchestrationStatus::Suspended => Some(Gate::Suspended),
                _ => None,
            };
            if let Some(gate) = gate {
                tracing::debug!(instance = %info.instance_id, ?gate, "turn held: the instance cannot run yet");
                self.inner.sched.lock().hold_turn(&lease.token, gate);
                self.pump();
                return;
            }
        }
        // Events for another execution (results and timers of a previous generation) and
        // wake-up markers are consumed without being shown.
        let mut always_consumed = Vec::new();
        let mut live = Vec::new();
        let mut has_marker = false;
        for (key, p) in lease.events {
            if p.execution_id.as_ref().is_some_and(|e| *e != info.execution_id) {
                always_consumed.push(p.inbox_id);
            } else if p.kind == EventKind::WakeUp {
                has_marker = true;
                always_consumed.push(p.inbox_id);
            } else {
                live.push((key, p));
            }
        }
        // Payloads held back by the memory budget are read from the store now; a row that
        // is gone means the turn was built on a stale view.
        let bodies = match self.event_bodies(&lease.instance_id, &live).await {
            Ok(Some(bodies)) => bodies,
            Ok(None) => {
                self.resync_after_stale_turn(&lease.token, &lease.instance_id).await;
                return;
            }
            Err(e) => {
                tracing::error!(instance = %lease.instance_id, error = %e, "could not read the turn's events");
                self.release(&lease.token, Release::Later);
                return;
            }
        };
        match lease.kind {
            TurnKind::Control => {
                let outcome = control::apply_control(&info, &history.to_vec(), &bodies, now);
                let mut consumed = always_consumed;
                consumed.extend(live.iter().map(|(_, p)| p.inbox_id));
                self.commit(&lease.token, &info, history.len(), outcome, consumed, now).await;
            }
            TurnKind::Poison => {
                let failure = events::failure(
                    "DuroPoisonWorkItem",
                    format!(
                        "the orchestration's turn was delivered {} times without being completed (abandoned, rejected, \
                         or its worker disconnected each time); Duro failed the instance instead of retrying forever",
                        lease.attempts
                    ),
                    true,
                );
                tracing::warn!(instance = %info.instance_id, attempts = lease.attempts, "poison orchestration failed");
                crate::metrics::poison(crate::metrics::ORCHESTRATION);
                self.fail_turn(&lease.token, &info, history.len(), failure, now).await;
            }
            TurnKind::Worker(stream) => {
                if live.is_empty() && !has_marker {
                    // Only stale rows: consume them without running the orchestrator.
                    let outcome = TurnOutcome::unchanged(info.status, 0);
                    self.commit(&lease.token, &info, history.len(), outcome, always_consumed, now).await;
                    return;
                }
                let mut request = OrchestratorRequest {
                    instance_id: info.instance_id.clone(),
                    execution_id: Some(info.execution_id.clone()),
                    past_events: Vec::new(),
                    new_events: vec![events::orchestrator_started(now)],
                    entity_parameters: None,
                    requires_history_streaming: false,
                    properties: Default::default(),
                    // The worker's orchestration span (id, start) from earlier turns: one span per execution.
                    orchestration_trace_context: info.trace_context.clone(),
                };
                let limit = self.inner.opts.max_work_item_bytes;
                // The history's encoded size is kept by the cache: sizing walks no history.
                let past_bytes = history.wire_bytes();
                let fields: Vec<usize> = bodies.iter().map(cache::field_bytes).collect();
                let mut size = request.encoded_len();
                // Streamed when large, or when carrying it would crowd the new events out of
                // the work item (or not fit at all).
                let streaming = self.inner.sched.lock().streams_history(stream)
                    && (past_bytes > self.inner.opts.stream_history_above
                        || size + past_bytes + fields.iter().sum::<usize>() > limit);
                if streaming {
                    // The worker fetches the history with StreamInstanceHistory, served from
                    // this turn's snapshot (`TurnContext::history`).
                    request.requires_history_streaming = true;
                } else {
                    // The one copy of the history a turn makes: the work item carries it.
                    request.past_events = history.to_vec();
                    size += past_bytes;
                }
                // A burst of large events is split across turns: this one takes the events
                // that fit (at least one); the rest wait for the next turn.
                let mut shown = Vec::with_capacity(live.len());
                let mut deferred = Vec::new();
                for (((key, _), event), field) in live.iter().zip(bodies).zip(fields) {
                    if shown.is_empty() || (deferred.is_empty() && size + field <= limit) {
                        size += field;
                        shown.push(*key);
                        request.new_events.push(event);
                    } else {
                        deferred.push(*key);
                    }
                }
                if size > limit {
                    let why = if streaming {
                        "its new events (the first of them alone) are too large".to_string()
                    } else {
                        format!(
                            "its history is {past_bytes} bytes and the worker did not declare \
                             WORKER_CAPABILITY_HISTORY_STREAMING (workers that do, such as Duro's Rust SDK and .NET, \
                             fetch large histories with StreamInstanceHistory)"
                        )
                    };
                    let failure = events::failure(
                        "DuroWorkItemTooLarge",
                        format!(
                            "the orchestration's work item is {size} bytes, above the limit of {limit} bytes \
                             (--max-work-item-bytes); {why}"
                        ),
                        true,
                    );
                    self.fail_turn(&lease.token, &info, history.len(), failure, now).await;
                    return;
                }
                if !deferred.is_empty() {
                    tracing::debug!(instance = %info.instance_id, shown = shown.len(), deferred = deferred.len(), "events split across turns to stay under the work-item limit");
                }
                let name = info.name.clone();
                if let Some(id) = crate::otel::orchestration_trace_id(history.iter(), &request.new_events) {
                    tracing::Span::current().record("trace_id", tracing::field::display(&id));
                }
                crate::otel::turn_dispatched(
                    &lease.token,
                    &name,
                    &info.instance_id,
                    history.iter(),
                    &request.new_events,
                );
                let ctx = TurnContext {
                    info,
                    history_len: history.len(),
                    shown,
                    deferred,
                    new_events: request.new_events.clone(),
                    always_consumed,
                    // Kept for the worker to stream (see `history_for`), else not at all.
                    history: if streaming { history } else { SharedHistory::default() },
                };
                let item = WorkItem {
                    request: Some(work_item::Request::OrchestratorRequest(request)),
                    completion_token: lease.token.clone(),
                };
                let sent = self.inner.sched.lock().send_turn(&lease.token, stream, ctx, item);
                if sent {
                    crate::metrics::dispatched(crate::metrics::ORCHESTRATION, &name, &lease.token);
                } else {
                    crate::otel::released(&lease.token);
                }
                tracing::debug!(instance = %lease.instance_id, stream, sent, streaming, "orchestrator work item sent");
            }
        }
    }

    /// The events of a turn in order, from memory or (for payloads the budget held back)
    /// from the store. `None` when a row is gone.
    async fn event_bodies(
        &self,
        instance_id: &str,
        live: &[(EventKey, PendingEvent)],
    ) -> Result<Option<Vec<HistoryEvent>>, StoreError> {
        let missing: Vec<i64> = live.iter().filter(|(_, p)| p.payload.is_none()).map(|(_, p)| p.inbox_id).collect();
        let mut loaded: std::collections::HashMap<i64, HistoryEvent> = if missing.is_empty() {
            Default::default()
        } else {
            self.inner.store.load_events(instance_id, &missing).await?.into_iter().collect()
        };
        let mut bodies = Vec::with_capacity(live.len());
        for (_, p) in live {
            match p.event() {
                Some(e) => bodies.push(e.clone()),
                None => match loaded.remove(&p.inbox_id) {
                    Some(e) => bodies.push(e),
                    None => return Ok(None),
                },
            }
        }
        Ok(Some(bodies))
    }

    async fn fail_turn(
        &self,
        token: &str,
        info: &InstanceInfo,
        history_len: usize,
        failure: TaskFailureDetails,
        now: i64,
    ) {
        let outcome = control::fail(info, failure, now);
        self.commit(token, info, history_len, outcome, Vec::new(), now).await;
    }

    /// Commits a turn the sidecar decided itself (control, poison, stale rows).
    async fn commit(
        &self,
        token: &str,
        info: &InstanceInfo,
        history_len: usize,
        outcome: TurnOutcome,
        consumed: Vec<i64>,
        now: i64,
    ) {
        if !self.inner.sched.lock().begin_internal_completion(token) {
            return;
        }
        self.commit_owned(token, info, history_len, outcome, consumed, Vec::new(), now).await;
    }

    /// Commits a turn whose lease is already marked completing.
    #[allow(clippy::too_many_arguments)]
    async fn commit_owned(
        &self,
        token: &str,
        info: &InstanceInfo,
        history_len: usize,
        outcome: TurnOutcome,
        consumed: Vec<i64>,
        unconsumed: Vec<(EventKey, PendingEvent)>,
        now: i64,
    ) {
        let suspended = outcome.status == OrchestrationStatus::Suspended && outcome.continue_as_new.is_none();
        // Waiters only care about status changes; waking them on every turn costs a read each.
        let status_changed = outcome.status != info.status || outcome.continue_as_new.is_some();
        let commit = TurnCommit {
            instance_id: info.instance_id.clone(),
            execution_id: info.execution_id.clone(),
            history_len,
            consumed,
            outcome,
            now_ms: now,
        };
        let committed = {
            let _span = crate::otel::commit_span(token, "turn");
            self.inner.store.commit_turn_pipelined(commit.clone()).await
        };
        match committed {
            Ok((result, durable)) => {
                self.update_cache(info, history_len, &commit.outcome);
                let admitted: Vec<Delivered> =
                    result.delivered.into_iter().filter(|d| self.admits(&d.instance_id)).collect();
                {
                    let mut s = self.inner.sched.lock();
                    s.finish_turn(token, unconsumed, suspended, result.finished_through);
                    if let Some(next) = &commit.outcome.continue_as_new {
                        s.forget_other_executions(&info.instance_id, &next.spec.execution_id);
                    }
                    if self.admits_activities() {
                        for a in result.activities {
                            s.add_activity(a);
                        }
                    }
                    for d in admitted {
                        s.add_event(d, now);
                    }
                }
                // What the turn scheduled is dispatched now, while its commit is on its way
                // to disk; whoever waits for the status hears of it only once it is durable.
                self.pump();
                if let Err(e) = durable.wait().await {
                    tracing::error!(instance = %info.instance_id, error = %e, "a pipelined turn commit failed; the store stops");
                    return;
                }
                if commit.outcome.is_terminal() {
                    crate::otel::orchestration_ended(token, commit.outcome.status);
                }
                // Entity dispatch reads entities from the store: it learns of the turn's
                // requests (and of a finished owner's locks) once they are there.
                let entity_work = !result.entity_messages.is_empty() || commit.outcome.is_terminal();
                self.entity_messages_committed(result.entity_messages);
                if commit.outcome.is_terminal() {
                    self.entity_owner_ended(&info.instance_id);
                }
                if entity_work {
                    self.pump();
                }
                if status_changed {
                    self.inner.waiters.notify(&info.instance_id);
                    self.announce_status(&info.instance_id);
                }
            }
            Err(e) if cluster::is_lease_lost(&e) && self.holds_again(&info.instance_id) => {
                // The turn was fenced by an older epoch, but a claim of this sidecar took the
                // instance back while it was out: the lease is not lost. The claim's resync
                // left the turn's rows to the turn; rebuild them from the store.
                tracing::info!(instance = %info.instance_id, "turn of an earlier lease dropped; the instance was claimed again");
                self.invalidate(&info.instance_id);
                self.resync_after_stale_turn(token, &info.instance_id).await;
            }
            Err(e) if cluster::is_lease_lost(&e) => {
                self.inner.sched.lock().finish_turn(token, Vec::new(), false, None);
                self.lease_lost(&info.instance_id);
                self.pump();
            }
            Err(StoreError::Conflict(_)) => {
                tracing::info!(instance = %info.instance_id, "instance changed during its turn; the turn is dropped");
                self.invalidate(&info.instance_id);
                self.resync_after_stale_turn(token, &info.instance_id).await;
            }
            Err(e) => {
                tracing::error!(instance = %info.instance_id, error = %e, "turn commit failed; the turn will be retried");
                self.invalidate(&info.instance_id);
                self.release(token, Release::Later);
            }
        }
    }

    /// Ends a turn that ran on a stale view without committing it, and rebuilds the
    /// instance's pending events from the store, so nothing committed is dropped and
    /// nothing already consumed comes back.
    async fn resync_after_stale_turn(&self, token: &str, instance_id: &str) {
        match self.inner.store.load_inbox(instance_id).await {
            Ok(snapshot) => {
                let mut s = self.inner.sched.lock();
                s.finish_turn(token, Vec::new(), false, None);
                s.resync(instance_id, snapshot.rows, snapshot.watermark, self.now());
            }
            Err(e) => {
                tracing::error!(instance = %instance_id, error = %e, "could not reload the instance's inbox; the turn will be retried");
                self.release(token, Release::Later);
                return;
            }
        }
        self.pump();
    }

    fn release(&self, token: &str, why: Release) {
        crate::metrics::released(token);
        let poisoned = self.inner.sched.lock().release(token, why, self.now());
        self.persist_attempts();
        self.run_assignments(poisoned);
        self.pump();
    }

    // ----- worker API ------------------------------------------------------------------------

    /// Registers a work-item stream; work for it arrives on the receiver.
    pub fn open_stream(&self, rules: StreamRules) -> (StreamId, mpsc::UnboundedReceiver<Outgoing>) {
        let cap = self.inner.opts.default_stream_cap;
        self.open_stream_with_entities(rules, cap)
    }

    /// Registers a work-item stream that also takes up to `max_entities` entity batches.
    pub fn open_stream_with_entities(
        &self,
        rules: StreamRules,
        max_entities: usize,
    ) -> (StreamId, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let entity_rules = rules.clone();
        let id = self.inner.sched.lock().add_stream(rules, tx.clone());
        self.entity_stream_opened(id, &entity_rules, max_entities, tx);
        tracing::info!(stream = id, "work-item stream connected");
        self.pump();
        self.want_claim();
        (id, rx)
    }

    /// Removes a stream; its leases go back to the queues for other streams.
    pub fn close_stream(&self, id: StreamId) {
        let poisoned = self.inner.sched.lock().remove_stream(id, self.now());
        self.entity_stream_closed(id);
        self.persist_attempts();
        tracing::info!(stream = id, "work-item stream disconnected; its work is redelivered");
        self.run_assignments(poisoned);
        self.pump();
    }

    /// Commits a worker's orchestrator response. Runs to the end even if the caller
    /// stops waiting (see [`detached`]).
    pub async fn complete_orchestration(&self, resp: OrchestratorResponse) -> Result<(), EngineError> {
        let engine = self.clone();
        let span = completion_span("turn_completion", &resp.instance_id, &resp.completion_token);
        detached(tracing::Instrument::instrument(async move { engine.complete_orchestration_now(resp).await }, span))
            .await
    }

    async fn complete_orchestration_now(&self, resp: OrchestratorResponse) -> Result<(), EngineError> {
        let token = if resp.completion_token.is_empty() {
            self.inner.sched.lock().turn_token_of(&resp.instance_id)
        } else {
            Some(resp.completion_token.clone())
        };
        let Some(token) = token else {
            return Err(EngineError::NotFound(format!(
                "no orchestration work item in flight for '{}'",
                resp.instance_id
            )));
        };
        tracing::debug!(instance = %resp.instance_id, actions = resp.actions.len(), "orchestrator response received");
        let is_partial = resp.is_partial;
        let requires_history = resp.requires_history;
        let decision = WorkerDecision {
            actions: Vec::new(),
            custom_status: resp.custom_status,
            num_events_processed: resp.num_events_processed,
            trace_context: resp.orchestration_trace_context,
        };
        let completion = self.inner.sched.lock().begin_turn_completion(&token, resp.actions, is_partial);
        let flight = match completion {
            None => {
                return Err(EngineError::NotFound(
                    "unknown or stale completion token: the work item was completed, abandoned or redelivered".into(),
                ))
            }
            Some(Completion::Partial) => return Ok(()),
            Some(Completion::TooLarge(bytes)) => {
                self.release(&token, Release::Failed);
                return Err(EngineError::ResourceExhausted(format!(
                    "the orchestrator response for '{}' is {bytes} bytes or more in its chunks, above the limit of {} \
                     bytes; schedule fewer or smaller actions per turn (the work item is redelivered)",
                    resp.instance_id, self.inner.opts.scheduler.max_response_bytes
                )));
            }
            Some(Completion::Complete(f)) => f,
        };
        let Some(ctx) = flight.context else {
            return Err(EngineError::NotFound("the work item was not dispatched yet".into()));
        };
        if rejects_as_unregistered(&flight.actions, &ctx.info.name)
            && self.inner.sched.lock().reject_and_release(&token, self.now())
        {
            tracing::info!(orchestration = %ctx.info.name, "a worker without filters does not serve this orchestration; routing it elsewhere");
            self.pump();
            return Ok(());
        }
        if requires_history {
            // Duro sends the full history, or has the worker stream it
            // (`requiresHistoryStreaming`): a worker that still asks for it is broken. Redeliver after a back-off, counted, so it cannot spin the sidecar
            // and ends as a poison work item if it never stops.
            tracing::warn!(instance = %ctx.info.instance_id, "the worker asked for history it was already sent; redelivering after a back-off");
            self.release(&token, Release::Failed);
            return Ok(());
        }
        let now = self.now();
        let decision = WorkerDecision { actions: flight.actions, ..decision };
        let mut new_id = crate::ambient::new_execution_id;
        let input = TurnInput { instance: &ctx.info, new_events: &ctx.new_events, now_ms: now };
        let mut outcome = match turn::decide(input, decision, &mut new_id) {
            Ok(mut o) => {
                self.mask_builtin_inputs(&mut o);
                o
            }
            Err(TurnError::Invalid(msg)) => {
                tracing::warn!(instance = %ctx.info.instance_id, error = %msg, "rejected an orchestrator response");
                self.release(&token, Release::Failed);
                return Err(EngineError::InvalidArgument(format!("invalid orchestrator response: {msg}")));
            }
            Err(e @ (TurnError::Unsupported(_) | TurnError::BadInstanceId(_))) => {
                let (error_type, msg) = match e {
                    TurnError::BadInstanceId(m) => ("DuroInvalidInstanceId", m),
                    TurnError::Unsupported(m) | TurnError::Invalid(m) => ("DuroUnsupportedAction", m),
                };
                let failure = events::failure(error_type, msg, true);
                let mut o = control::fail(&ctx.info, failure, now);
                o.consumed_new_events = ctx.shown.len();
                o
            }
        };
        let n = outcome.consumed_new_events.min(ctx.shown.len());
        let by_key: std::collections::HashMap<EventKey, PendingEvent> = flight.events.into_iter().collect();
        let mut consumed = ctx.always_consumed.clone();
        let mut unconsumed = Vec::new();
        for (i, key) in ctx.shown.iter().enumerate() {
            let Some(p) = by_key.get(key) else { continue };
            if i < n {
                consumed.push(p.inbox_id);
            } else {
                unconsumed.push((*key, p.clone()));
            }
        }
        unconsumed.extend(ctx.deferred.iter().filter_map(|key| by_key.get(key).map(|p| (*key, p.clone()))));
        crate::otel::stamp_activities(&token, &mut outcome.activities);
        // The turn's history snapshot is done with: dropping it leaves the cache's open
        // segment unshared, so applying the outcome appends in place.
        let ctx = TurnContext { history: SharedHistory::default(), ..*ctx };
        self.commit_owned(&token, &ctx.info, ctx.history_len, outcome, consumed, unconsumed, now).await;
        crate::metrics::completed(crate::metrics::ORCHESTRATION, &ctx.info.name, &token, true);
        Ok(())
    }

    /// Masks secrets in the history copy of built-in activities' inputs (a user's
    /// `Authorization` header on a durable HTTP call); the activity itself keeps them.
    fn mask_builtin_inputs(&self, outcome: &mut TurnOutcome) {
        if self.inner.builtins.is_empty() {
            return;
        }
        for e in &mut outcome.append {
            let Some(EventType::TaskScheduled(t)) = &mut e.event_type else { continue };
            let Some(b) = self.inner.builtins.get(&t.name) else { continue };
            if let Some(masked) = t.input.as_deref().and_then(|i| b.history_input(i)) {
                t.input = Some(masked);
            }
        }
    }

    /// Commits an activity's result. Runs to the end even if the caller stops waiting.
    pub async fn complete_activity(&self, resp: ActivityResponse) -> Result<(), EngineError> {
        let engine = self.clone();
        let span = completion_span("activity_completion", &resp.instance_id, &resp.completion_token);
        detached(tracing::Instrument::instrument(async move { engine.complete_activity_now(resp).await }, span)).await
    }

    async fn complete_activity_now(&self, resp: ActivityResponse) -> Result<(), EngineError> {
        tracing::debug!(instance = %resp.instance_id, task = resp.task_id, failed = resp.failure_details.is_some(), "activity response received");
        let token = if resp.completion_token.is_empty() {
            self.inner.sched.lock().activity_token_of(&resp.instance_id, resp.task_id)
        } else {
            Some(resp.completion_token.clone())
        };
        let Some(token) = token else {
            return Err(EngineError::NotFound(format!(
                "no activity work item in flight for '{}' task {}",
                resp.instance_id, resp.task_id
            )));
        };
        let (activity_id, request) = {
            let mut s = self.inner.sched.lock();
            let Some(id) = s.begin_activity_completion(&token) else {
                return Err(EngineError::NotFound(
                    "unknown or stale completion token: the activity was completed, abandoned or redelivered".into(),
                ));
            };
            let request = s.activity_request(id).cloned();
            (id, request)
        };
        let Some(request) = request else {
            self.inner.sched.lock().finish_activity(&token, true, self.now());
            return Ok(());
        };
        if resp.failure_details.as_ref().is_some_and(|f| not_registered(f, &request.name))
            && self.inner.sched.lock().reject_and_release(&token, self.now())
        {
            tracing::info!(activity = %request.name, "a worker without filters does not serve this activity; routing it elsewhere");
            self.pump();
            return Ok(());
        }
        let now = self.now();
        let instance = request.orchestration_instance.clone().unwrap_or_default();
        let ok = resp.failure_details.is_none();
        let event = match resp.failure_details {
            Some(f) => events::task_failed(now, request.task_id, f),
            None => events::task_completed(now, request.task_id, resp.result),
        };
        let msg = Message::now(instance.instance_id, instance.execution_id, event, now);
        let committed = {
            let _span = crate::otel::commit_span(&token, "activity result");
            self.inner.store.complete_activity_pipelined(activity_id, msg).await
        };
        match committed {
            Ok((delivered, durable)) => {
                crate::metrics::completed(crate::metrics::ACTIVITY, &request.name, &token, ok);
                if let Some(leases) = &self.inner.leases {
                    leases.activity_done(activity_id);
                }
                {
                    let mut s = self.inner.sched.lock();
                    s.finish_activity(&token, true, now);
                    if let Some(d) = delivered.filter(|d| self.admits(&d.instance_id)) {
                        s.add_event(d, now);
                    }
                }
                // The next turn is dispatched while the result's commit is on its way to
                // disk; the worker hears "done" only once it is durable.
                self.pump();
                Ok(durable.wait().await?)
            }
            Err(e) => {
                self.inner.sched.lock().finish_activity(&token, false, now);
                self.pump();
                Err(e.into())
            }
        }
    }

    /// Gives a work item back for redelivery after a back-off. Unknown tokens are fine.
    pub fn abandon(&self, token: &str) {
        self.release(token, Release::Failed);
    }

    // ----- client API ---------------------------------------------------------------------------

    /// Creates an instance. Runs to the end even if the caller stops waiting.
    pub async fn create_instance(&self, new: NewInstance, reuse: IdReuse) -> Result<CreateResult, EngineError> {
        let engine = self.clone();
        detached(async move { engine.create_instance_now(new, reuse).await }).await
    }

    async fn create_instance_now(&self, new: NewInstance, reuse: IdReuse) -> Result<CreateResult, EngineError> {
        let id = new.spec.instance_id.clone();
        // A new instance's state is known without a read: seed the cache with it, so its
        // first turn does not go to the store.
        let fresh = new.info();
        let (result, durable) = self.inner.store.create_instance_pipelined(new, reuse).await?;
        if let CreateResult::Created(created) = &result {
            // Entity locks and lock requests under this id belong to an execution that has
            // ended (a replaced one, or one purged earlier): the new execution is a new owner.
            if created.replaced.is_some() {
                self.execution_replaced(&id);
            } else {
                self.entity_owner_ended(&id);
            }
            self.inner.cache.lock().put(fresh, SharedHistory::default());
            let now = self.now();
            let mut s = self.inner.sched.lock();
            if self.inner.leases.is_none() {
                // Everything the scheduler holds of a replaced execution is gone from the store.
                s.replace_execution(created.start.clone(), now);
            } else {
                // A new instance is claimed through its notice; a replaced one's lease ended.
                s.disown(&id);
            }
            // A terminated instance's notice to its parent.
            for d in created.delivered.iter().filter(|d| self.admits(&d.instance_id)) {
                s.add_event(d.clone(), now);
            }
        }
        // The first turn is dispatched while the start's commit is on its way to disk; the
        // client (and whoever waits for the instance) hears of it only once it is durable.
        self.pump();
        durable.wait().await?;
        self.inner.waiters.notify(&id);
        Ok(result)
    }

    pub async fn get_instance(&self, instance_id: &str) -> Result<Option<InstanceRecord>, EngineError> {
        Ok(self.inner.store.load_instance(instance_id).await?)
    }

    pub async fn history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, EngineError> {
        Ok(self.inner.store.load_history(instance_id).await?)
    }

    /// The history `StreamInstanceHistory` serves: for a worker processing a work item, the
    /// snapshot its dispatched turn was built on (what `pastEvents` would have carried; the
    /// first request takes it); otherwise the current execution's committed history, from the
    /// cache when it holds the instance (while a turn is out, that is the same history: only
    /// its commit changes it). `Ok(None)`: no such instance; `NotFound` when `execution_id` names an
    /// execution that is not current.
    pub async fn history_for(
        &self,
        instance_id: &str,
        execution_id: Option<&str>,
        for_work_item: bool,
    ) -> Result<Option<SharedHistory>, EngineError> {
        let wrong = |exec: &str| {
            EngineError::NotFound(format!("execution '{exec}' of instance '{instance_id}' is no longer current"))
        };
        if for_work_item {
            let turn = self.inner.sched.lock().take_turn_history(instance_id, execution_id);
            if let Some(history) = turn {
                return Ok(Some(history));
            }
        }
        // A client reads the store: the cache may be ahead of it (a pipelined turn not yet
        // durable) or behind it (an instance another sidecar of a shared hub moved on).
        let cached = if for_work_item { self.inner.cache.lock().get(instance_id) } else { None };
        let (current, history) = match cached {
            Some((info, history)) => (info.execution_id, history),
            None => {
                let Some(rec) = self.inner.store.load_instance(instance_id).await? else { return Ok(None) };
                (rec.execution_id, SharedHistory::from(self.inner.store.load_history(instance_id).await?))
            }
        };
        match execution_id {
            Some(e) if e != current => Err(wrong(e)),
            _ => Ok(Some(history)),
        }
    }

    /// Blocks until `done(status)` holds, the instance is missing (`None`), or the
    /// sidecar shuts down. Woken by commits, never by polling.
    pub async fn wait_for(
        &self,
        instance_id: &str,
        done: impl Fn(OrchestrationStatus) -> bool,
    ) -> Result<Option<InstanceRecord>, EngineError> {
        let mut shutdown = self.shutdown_signal();
        loop {
            let notify = self.inner.waiters.subscribe(instance_id);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.inner.store.load_instance(instance_id).await? {
                None => return Ok(None),
                Some(r) if done(r.status) => return Ok(Some(r)),
                Some(_) => {}
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = shutdown.changed() => return Err(EngineError::ShuttingDown),
            }
        }
    }

    /// Delivers an event to a live instance; finished instances drop it.
    /// Runs to the end even if the caller stops waiting.
    pub async fn send_message(&self, message: Message) -> Result<bool, EngineError> {
        let engine = self.clone();
        detached(async move { engine.send_message_now(message).await }).await
    }

    async fn send_message_now(&self, message: Message) -> Result<bool, EngineError> {
        let target = message.target.clone();
        let (delivered, durable) = self.inner.store.enqueue_pipelined(message).await?;
        match delivered {
            Some(d) => {
                if self.admits(&d.instance_id) {
                    self.inner.sched.lock().add_event(d, self.now());
                    self.pump();
                }
                // Acknowledged only once durable (the turn it starts may already run).
                durable.wait().await?;
                Ok(true)
            }
            None => {
                if self.inner.store.load_instance(&target).await?.is_none() {
                    return Err(EngineError::NotFound(format!("no orchestration instance '{target}'")));
                }
                Ok(false)
            }
        }
    }

    pub async fn raise_event(
        &self,
        instance_id: &str,
        name: String,
        input: Option<String>,
    ) -> Result<bool, EngineError> {
        let pending = self.inner.sched.lock().pending_count(instance_id);
        let cap = self.inner.opts.max_inbox_events;
        if pending >= cap {
            return Err(EngineError::ResourceExhausted(format!(
                "instance '{instance_id}' has {pending} events waiting in its inbox, the limit (--max-inbox-events {cap}); \
                 retry after it has consumed some"
            )));
        }
        let now = self.now();
        self.send_message(Message::now(instance_id, None, events::event_raised(now, name, input), now)).await
    }

    pub async fn terminate(
        &self,
        instance_id: &str,
        output: Option<String>,
        recursive: bool,
    ) -> Result<(), EngineError> {
        let now = self.now();
        let Some(rec) = self.inner.store.load_instance(instance_id).await? else { return Ok(()) };
        if is_terminal(rec.status) {
            if recursive {
                // Children of a finished parent may still run (durabletask-go#25).
                let history = self.inner.store.load_history(instance_id).await?;
                for m in control::terminate_children(&history, output.clone(), now) {
                    let child = m.target.clone();
                    if let Err(e) = self.send_message(m).await {
                        tracing::debug!(child = %child, error = %e, "child not terminated");
                    }
                }
            }
            return Ok(());
        }
        let msg = Message::now(instance_id, None, events::execution_terminated(now, output, recursive), now);
        match self.send_message(msg).await {
            Ok(_) | Err(EngineError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn suspend(&self, instance_id: &str, reason: Option<String>) -> Result<(), EngineError> {
        let now = self.now();
        self.control(instance_id, events::execution_suspended(now, reason), now).await
    }

    pub async fn resume(&self, instance_id: &str, reason: Option<String>) -> Result<(), EngineError> {
        let now = self.now();
        self.control(instance_id, events::execution_resumed(now, reason), now).await
    }

    async fn control(&self, instance_id: &str, event: HistoryEvent, now: i64) -> Result<(), EngineError> {
        let Some(rec) = self.inner.store.load_instance(instance_id).await? else {
            return Err(EngineError::NotFound(format!("no orchestration instance '{instance_id}'")));
        };
        if is_terminal(rec.status) {
            return Err(EngineError::FailedPrecondition(format!(
                "instance '{instance_id}' has finished ({})",
                rec.status.as_str_name()
            )));
        }
        self.send_message(Message::now(instance_id, None, event, now)).await.map(|_| ())
    }

    pub async fn query(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>, EngineError> {
        Ok(self.inner.store.query_instances(filter).await?)
    }

    pub async fn list_completed(&self, filter: &CompletedFilter) -> Result<Vec<(i64, String)>, EngineError> {
        Ok(self.inner.store.list_completed_ids(filter).await?)
    }

    pub async fn count_by_status(&self) -> Result<Vec<(OrchestrationStatus, u64)>, EngineError> {
        Ok(self.inner.store.count_by_status().await?)
    }

    /// Runs to the end even if the caller stops waiting.
    pub async fn purge(&self, selection: PurgeSelection, recursive: bool) -> Result<u32, EngineError> {
        let engine = self.clone();
        detached(async move { engine.purge_now(selection, recursive).await }).await
    }

    async fn purge_now(&self, selection: PurgeSelection, recursive: bool) -> Result<u32, EngineError> {
        if let PurgeSelection::Ids(ids) = &selection {
            for id in ids {
                self.invalidate(id);
            }
        }
        let n = self.inner.store.purge(selection, recursive).await?;
        if n > 0 {
            self.inner.cache.lock().clear();
        }
        Ok(n)
    }

    /// Runs to the end even if the caller stops waiting.
    pub async fn restart(&self, instance_id: &str, new_id: Option<String>) -> Result<String, EngineError> {
        let (engine, id) = (self.clone(), instance_id.to_string());
        detached(async move { engine.restart_now(&id, new_id).await }).await
    }

    async fn restart_now(&self, instance_id: &str, new_id: Option<String>) -> Result<String, EngineError> {
        let now = self.now();
        match self.inner.store.restart(instance_id, new_id, now).await? {
            RestartResult::NotFound => Err(EngineError::NotFound(format!("no orchestration instance '{instance_id}'"))),
            RestartResult::NotTerminal(s) => Err(EngineError::FailedPrecondition(format!(
                "instance '{instance_id}' is {} and can only be restarted under its own id once it has finished",
                s.as_str_name()
            ))),
            RestartResult::Restarted(d) => {
                let id = d.instance_id.clone();
                self.invalidate(&id);
                // The new execution is a new owner: the old one's lock requests are not its own.
                self.execution_replaced(&id);
                if self.inner.leases.is_none() {
                    self.inner.sched.lock().replace_execution(*d, now);
                } else {
                    self.inner.sched.lock().disown(&id);
                }
                self.inner.waiters.notify(&id);
                self.pump();
                Ok(id)
            }
        }
    }

    /// Runs to the end even if the caller stops waiting.
    pub async fn rewind(&self, instance_id: &str, reason: Option<String>) -> Result<(), EngineError> {
        let (engine, id) = (self.clone(), instance_id.to_string());
        detached(async move { engine.rewind_now(&id, reason).await }).await
    }

    async fn rewind_now(&self, instance_id: &str, reason: Option<String>) -> Result<(), EngineError> {
        let now = self.now();
        match self.inner.store.rewind(instance_id, reason.clone(), now).await? {
            RewindResult::NotFound => Err(EngineError::NotFound(format!("no orchestration instance '{instance_id}'"))),
            RewindResult::NotFailed(s) => Err(EngineError::FailedPrecondition(format!(
                "instance '{instance_id}' is {}; only FAILED instances can be rewound",
                s.as_str_name()
            ))),
            RewindResult::Rewound { wake } => {
                // Failed children are not rewound in place: replay re-creates them, and a
                // finished child's id is reused for its new run.
                self.invalidate(instance_id);
                // The same execution runs on: lock requests it is still waiting for count again.
                if let Ok(Some(rec)) = self.inner.store.load_instance(instance_id).await {
                    self.entity_owner_rewound(instance_id, rec.created_at_ms);
                }
                if self.admits(instance_id) {
                    self.inner.sched.lock().add_event(*wake, now);
                }
                self.inner.waiters.notify(instance_id);
                self.pump();
                Ok(())
            }
        }
    }
}

/// The log span of a worker's answer: its instance and, when Duro traces it, the trace id.
fn completion_span(what: &'static str, instance_id: &str, token: &str) -> tracing::Span {
    let span = match what {
        "turn_completion" => {
            tracing::info_span!("turn_completion", instance = %instance_id, trace_id = tracing::field::Empty)
        }
        _ => tracing::info_span!("activity_completion", instance = %instance_id, trace_id = tracing::field::Empty),
    };
    if let Some(id) = crate::otel::trace_id(token) {
        span.record("trace_id", tracing::field::display(&id));
    }
    span
}

/// Runs `work` on its own task and waits for it. A gRPC handler's future is dropped when
/// its client disconnects; if that happened between a commit and the scheduler update
/// after it, a lease would stay "completing" forever or committed work would never be
/// dispatched. On its own task the work always runs to the end; only the reply is lost.
async fn detached<T, F>(work: F) -> Result<T, EngineError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, EngineError>> + Send + 'static,
{
    tokio::spawn(work).await.map_err(|e| EngineError::Store(StoreError::Task(format!("engine task failed: {e}"))))?
}

/// Whether a failure says the worker has no function of that name (SDKs that send no
/// work-item filters answer this way: Python `...ActivityNotRegisteredError`,
/// `...OrchestratorNotRegisteredError`; others say "not registered" in the message).
fn not_registered(f: &TaskFailureDetails, name: &str) -> bool {
    f.error_type.ends_with("NotRegisteredError")
        || (f.error_message.to_ascii_lowercase().contains("not registered") && f.error_message.contains(name))
}

/// Whether a turn's only answer is "this orchestrator is not registered here".
fn rejects_as_unregistered(actions: &[OrchestratorAction], name: &str) -> bool {
    use duro_proto::orchestrator_action::OrchestratorActionType as A;
    match actions {
        [OrchestratorAction { orchestrator_action_type: Some(A::CompleteOrchestration(c)), .. }] => {
            c.orchestration_status == OrchestrationStatus::Failed as i32
                && c.failure_details.as_ref().is_some_and(|f| not_registered(f, name))
        }
        _ => false,
    }
}

/// The status a waiter for "started" waits for.
pub fn is_started(status: OrchestrationStatus) -> bool {
    status != OrchestrationStatus::Pending
}

pub use core::is_terminal as is_finished;

#[cfg(test)]
mod tests {
    //! The engine against a real SQLite store and an in-process worker stream.

    use super::*;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use duro_proto::orchestrator_action::OrchestratorActionType;

    struct Harness {
        engine: Engine,
        rx: mpsc::UnboundedReceiver<Outgoing>,
        _dir: tempfile::TempDir,
    }

    async fn harness() -> Harness {
        harness_with(EngineOptions::default()).await
    }

    async fn harness_with(opts: EngineOptions) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("duro.db"), SqliteOptions::default()).await.expect("store");
        let engine = Engine::start(Arc::new(store), opts, Vec::new()).await.expect("engine");
        let (_, rx) = engine.open_stream(StreamRules {
            max_orchestrations: 100,
            max_activities: 100,
            filters: None,
            ..Default::default()
        });
        Harness { engine, rx, _dir: dir }
    }

    impl Harness {
        async fn next_item(&mut self) -> WorkItem {
            let got = tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await;
            match got {
                Ok(Some(Outgoing::Item(item))) => *item,
                Ok(None) => panic!("stream closed"),
                Err(_) => panic!("no work item within 5 s: work is stranded"),
            }
        }

        async fn next_turn(&mut self) -> (OrchestratorRequest, String) {
            let item = self.next_item().await;
            match item.request {
                Some(work_item::Request::OrchestratorRequest(r)) => (r, item.completion_token),
                other => panic!("expected an orchestrator work item, got {other:?}"),
            }
        }

        async fn next_activity(&mut self) -> (ActivityRequest, String) {
            let item = self.next_item().await;
            match item.request {
                Some(work_item::Request::ActivityRequest(r)) => (r, item.completion_token),
                other => panic!("expected an activity work item, got {other:?}"),
            }
        }
    }

    fn new_instance(id: &str) -> NewInstance {
        NewInstance::simple(id, &uuid::Uuid::new_v4().simple().to_string(), "Orch", None, now_ms())
    }

    fn schedule_task(id: i32) -> OrchestratorAction {
        OrchestratorAction {
            id,
            orchestrator_action_type: Some(OrchestratorActionType::ScheduleTask(ScheduleTaskAction {
                name: "Act".into(),
                ..Default::default()
            })),
        }
    }

    fn respond(instance_id: &str, token: String, actions: Vec<OrchestratorAction>) -> OrchestratorResponse {
        OrchestratorResponse { instance_id: instance_id.into(), actions, completion_token: token, ..Default::default() }
    }

    /// Polls a call once, then drops it: what tonic does to a handler whose client
    /// disconnected while it awaited its commit.
    async fn abandon_after_first_poll<T: std::fmt::Debug>(call: impl std::future::Future<Output = T>) {
        use futures::FutureExt as _;
        if let Some(r) = call.now_or_never() {
            panic!("the call finished at its first poll: {r:?}");
        }
    }

    #[tokio::test]
    async fn a_start_whose_caller_disconnects_still_runs() {
        let mut h = harness().await;
        abandon_after_first_poll(h.engine.create_instance(new_instance("i"), IdReuse::terminal())).await;
        let (turn, _) = h.next_turn().await;
        assert_eq!(turn.instance_id, "i");
    }

    #[tokio::test]
    async fn an_orchestrator_completion_whose_caller_disconnects_still_commits() {
        let mut h = harness().await;
        h.engine.create_instance(new_instance("i"), IdReuse::terminal()).await.expect("created");
        let (_, token) = h.next_turn().await;
        abandon_after_first_poll(h.engine.complete_orchestration(respond("i", token, vec![schedule_task(0)]))).await;
        let (activity, _) = h.next_activity().await;
        assert_eq!(activity.name, "Act");
    }

    #[tokio::test]
    async fn an_activity_completion_whose_caller_disconnects_still_delivers_its_result() {
        let mut h = harness().await;
        h.engine.create_instance(new_instance("i"), IdReuse::terminal()).await.expect("created");
        let (_, token) = h.next_turn().await;
        h.engine.complete_orchestration(respond("i", token, vec![schedule_task(0)])).await.expect("turn");
        let (_, token) = h.next_activity().await;
        let resp = ActivityResponse {
            instance_id: "i".into(),
            task_id: 0,
            result: Some("\"done\"".into()),
            failure_details: None,
            completion_token: token,
        };
        abandon_after_first_poll(h.engine.complete_activity(resp)).await;
        let (turn, _) = h.next_turn().await;
        let completed = turn.new_events.iter().any(|e| matches!(e.event_type, Some(EventType::TaskCompleted(_))));
        assert!(completed, "the next turn carries the activity's result: {:?}", turn.new_events);
    }

    /// A worker that answers every turn with `requires_history` must not make the
    /// sidecar redeliver in a hot loop: the redelivery waits out a back-off.
    #[tokio::test]
    async fn a_worker_that_keeps_asking_for_history_is_backed_off() {
        let mut h = harness().await;
        h.engine.create_instance(new_instance("i"), IdReuse::terminal()).await.expect("created");
        let (_, token) = h.next_turn().await;
        let resp = OrchestratorResponse { requires_history: true, ..respond("i", token, Vec::new()) };
        h.engine.complete_orchestration(resp).await.expect("answered");
        let again = tokio::time::timeout(Duration::from_millis(300), h.rx.recv()).await;
        assert!(again.is_err(), "redelivered at once: {again:?}");
    }

    /// Five 1.5 KB events that arrive together under a 4 KB work-item limit: before,
    /// one turn carried them all and the instance failed as too large; now the next turn
    /// carries the ones that fit, and the orchestration can finish on them.
    #[tokio::test]
    async fn a_burst_of_large_events_is_split_across_turns() {
        let mut h = harness_with(EngineOptions { max_work_item_bytes: 4096, ..EngineOptions::default() }).await;
        h.engine.create_instance(new_instance("i"), IdReuse::terminal()).await.expect("created");
        let (_, token) = h.next_turn().await;
        for n in 0..5 {
            let payload = format!("\"{n}{}\"", "x".repeat(1500));
            h.engine.raise_event("i", "big".into(), Some(payload)).await.expect("raised");
        }
        h.engine.complete_orchestration(respond("i", token, Vec::new())).await.expect("first turn");
        let (turn, token) = h.next_turn().await;
        let raised = turn.new_events.iter().filter(|e| matches!(e.event_type, Some(EventType::EventRaised(_)))).count();
        assert!((1..5).contains(&raised), "the turn carries the events that fit, not all five: {raised}");
        let done = OrchestratorAction {
            id: 0,
            orchestrator_action_type: Some(OrchestratorActionType::CompleteOrchestration(
                CompleteOrchestrationAction {
                    orchestration_status: OrchestrationStatus::Completed as i32,
                    result: Some("\"done\"".into()),
                    ..Default::default()
                },
            )),
        };
        h.engine.complete_orchestration(respond("i", token, vec![done])).await.expect("final turn");
        let rec = h.engine.get_instance("i").await.expect("read").expect("exists");
        assert_eq!((rec.status, rec.failure), (OrchestrationStatus::Completed, None));
    }

    async fn recv_item(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> WorkItem {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Outgoing::Item(item))) => *item,
            other => panic!("no work item: {other:?}"),
        }
    }

    /// Delivery attempts survive a restart: two abandoned deliveries before it and one
    /// after reach a limit of three, and the instance fails as poison. Before, the count
    /// started again from zero after every restart.
    #[tokio::test]
    async fn delivery_attempts_survive_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("duro.db");
        let mut opts = EngineOptions::default();
        opts.scheduler.max_attempts = 3;
        opts.scheduler.backoff_base_ms = 1;
        opts.scheduler.backoff_max_ms = 1;
        let rules = StreamRules { max_orchestrations: 10, max_activities: 10, filters: None, ..Default::default() };
        {
            let store = SqliteStore::open(&path, SqliteOptions::default()).await.expect("store");
            let engine = Engine::start(Arc::new(store), opts.clone(), Vec::new()).await.expect("engine");
            let (_, mut rx) = engine.open_stream(rules.clone());
            engine.create_instance(new_instance("p"), IdReuse::terminal()).await.expect("created");
            for _ in 0..2 {
                let item = recv_item(&mut rx).await;
                engine.abandon(&item.completion_token);
            }
            // Let the count reach the store, then stop this engine and release the file.
            tokio::time::sleep(Duration::from_millis(200)).await;
            engine.shutdown();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let store = SqliteStore::open(&path, SqliteOptions::default()).await.expect("reopened");
        let engine = Engine::start(Arc::new(store), opts, Vec::new()).await.expect("engine");
        let (_, mut rx) = engine.open_stream(rules);
        let item = recv_item(&mut rx).await;
        engine.abandon(&item.completion_token);
        let failed = engine.wait_for("p", is_finished);
        let rec = tokio::time::timeout(Duration::from_secs(5), failed).await.expect("finished").expect("read");
        let rec = rec.expect("exists");
        assert_eq!(rec.status, OrchestrationStatus::Failed);
        assert_eq!(rec.failure.map(|f| f.error_type).as_deref(), Some("DuroPoisonWorkItem"));
    }

    /// With no memory for payloads at all, turns still carry every event intact: the
    /// engine reads the payloads from the store.
    #[tokio::test]
    async fn payloads_not_kept_in_memory_are_read_from_the_store() {
        let mut opts = EngineOptions::default();
        opts.scheduler.max_payload_bytes = 0;
        let mut h = harness_with(opts).await;
        h.engine.create_instance(new_instance("i"), IdReuse::terminal()).await.expect("created");
        let (turn, token) = h.next_turn().await;
        assert!(turn.new_events.iter().any(|e| matches!(e.event_type, Some(EventType::ExecutionStarted(_)))));
        h.engine.complete_orchestration(respond("i", token, Vec::new())).await.expect("turn");
        h.engine.raise_event("i", "go".into(), Some("\"payload\"".into())).await.expect("raised");
        let (turn, _) = h.next_turn().await;
        let input = turn.new_events.iter().find_map(|e| match &e.event_type {
            Some(EventType::EventRaised(r)) => r.input.clone(),
            _ => None,
        });
        assert_eq!(input.as_deref(), Some("\"payload\""));
        assert_eq!(h.engine.stats().payload_bytes, 0);
    }

    /// Issue 13's race end to end: an event raised while the start turn is in flight.
    #[tokio::test]
    async fn an_event_raised_during_the_first_turn_gets_a_turn() {
        let mut h = harness().await;
        for round in 0..50 {
            let id = format!("i{round}");
            h.engine.create_instance(new_instance(&id), IdReuse::terminal()).await.expect("created");
            let (_, token) = h.next_turn().await;
            let raise = h.engine.raise_event(&id, "go".into(), None);
            let complete = h.engine.complete_orchestration(respond(&id, token, Vec::new()));
            let (raised, completed) = tokio::join!(raise, complete);
            raised.expect("raised");
            completed.expect("completed");
            let (turn, _) = h.next_turn().await;
            assert_eq!(turn.instance_id, id);
        }
    }
}
