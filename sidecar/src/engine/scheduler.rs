//! Dispatch state: which instances and activities are ready, which worker stream holds
//! which lease, and what wakes up when. Pure bookkeeping with no I/O and no clock of its
//! own, so it is tested directly.
//!
//! Invariants:
//! - an instance has at most one turn leased at a time;
//! - an event is either pending on its instance, held by exactly one lease, or scheduled
//!   to become visible later; never two of these at once;
//! - a lease's token is unique and unguessable, and dies when completed or released.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use duro_proto::{ActivityRequest, GetWorkItemsRequest, HistoryEvent, OrchestratorAction, WorkItemFilters};
use tokio::sync::mpsc;

use crate::core::{is_control_event, Priority};
use crate::store::{Attempts, Delivered, QueuedActivity, Served, Target};

pub type StreamId = u64;
pub type EventKey = (Priority, i64);

/// An inbox event in memory. Its payload is kept while the scheduler's payload budget
/// (`max_payload_bytes`) allows; beyond it only what dispatch needs (the event's kind)
/// stays, and the engine reads the payload from the store when it builds the turn.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEvent {
    pub inbox_id: i64,
    pub execution_id: Option<String>,
    pub kind: EventKind,
    pub payload: Option<Payload>,
}

impl PendingEvent {
    /// The event, if its payload is in memory.
    pub fn event(&self) -> Option<&HistoryEvent> {
        self.payload.as_ref().map(|p| &p.0.event)
    }
}

/// What dispatch needs to know of an event without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Terminate, suspend or resume: applied by the sidecar itself.
    Control,
    /// A wake-up row (`orchestratorStarted`): runs a turn, never shown.
    WakeUp,
    Other,
}

impl EventKind {
    fn of(event: &HistoryEvent) -> EventKind {
        if is_control_event(event) {
            EventKind::Control
        } else if matches!(event.event_type, Some(duro_proto::history_event::EventType::OrchestratorStarted(_))) {
            EventKind::WakeUp
        } else {
            EventKind::Other
        }
    }
}

/// A payload held in memory, counted against the budget until its last copy is dropped.
#[derive(Clone)]
pub struct Payload(std::sync::Arc<Charged>);

struct Charged {
    event: HistoryEvent,
    bytes: usize,
    meter: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.meter.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.0.event == other.0.event
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.0.bytes)
    }
}

/// What a stream task sends to its worker.
#[derive(Debug)]
pub enum Outgoing {
    Item(Box<duro_proto::WorkItem>),
}

/// A worker stream's routing rules.
#[derive(Debug, Clone, Default)]
pub struct StreamRules {
    pub max_orchestrations: usize,
    pub max_activities: usize,
    pub filters: Option<WorkItemFilters>,
    /// The worker declared `WORKER_CAPABILITY_HISTORY_STREAMING`: it can fetch a turn's
    /// history with `StreamInstanceHistory`, so large histories are not sent in the work item.
    pub history_streaming: bool,
}

/// Most work items of one kind a stream may hold at once, whatever the worker asks for.
/// A stream's channel holds only leased items, so this also bounds what waits in it for a
/// worker that stops reading.
pub const MAX_STREAM_CAP: usize = 10_000;

impl StreamRules {
    /// Reads a stream request; `0` (unspecified) caps become `default_cap`, larger ones
    /// are held to [`MAX_STREAM_CAP`].
    pub fn from_request(req: &GetWorkItemsRequest, default_cap: usize) -> StreamRules {
        let cap = |v: i32| if v > 0 { (v as usize).min(MAX_STREAM_CAP) } else { default_cap.min(MAX_STREAM_CAP) };
        StreamRules {
            max_orchestrations: cap(req.max_concurrent_orchestration_work_items),
            max_activities: cap(req.max_concurrent_activity_work_items),
            filters: req.work_item_filters.clone(),
            history_streaming: req.capabilities.contains(&(duro_proto::WorkerCapability::HistoryStreaming as i32)),
        }
    }

    pub fn accepts_orchestration(&self, name: &str, version: Option<&str>) -> bool {
        match &self.filters {
            None => true,
            Some(f) => f.orchestrations.iter().any(|o| o.name == name && version_ok(&o.versions, version)),
        }
    }

    pub fn accepts_activity(&self, name: &str, version: Option<&str>) -> bool {
        match &self.filters {
            None => true,
            Some(f) => f.activities.iter().any(|a| a.name == name && version_ok(&a.versions, version)),
        }
    }
}

fn version_ok(versions: &[String], version: Option<&str>) -> bool {
    versions.is_empty() || versions.iter().any(|v| v == version.unwrap_or(""))
}

struct StreamSlot {
    rules: StreamRules,
    sender: mpsc::UnboundedSender<Outgoing>,
    orchestrations: usize,
    activities: usize,
    /// Names this stream (which sent no filters) answered "not registered" for.
    rejected_orchestrations: HashSet<String>,
    rejected_activities: HashSet<String>,
}

impl StreamSlot {
    fn takes_orchestration(&self, name: &str, version: Option<&str>) -> bool {
        self.orchestrations < self.rules.max_orchestrations
            && self.rules.accepts_orchestration(name, version)
            && !self.rejected_orchestrations.contains(name)
    }

    fn takes_activity(&self, name: &str, version: Option<&str>) -> bool {
        self.activities < self.rules.max_activities
            && self.rules.accepts_activity(name, version)
            && !self.rejected_activities.contains(name)
    }
}

/// An instance's pending events in key order: a sorted vector, the map operations the
/// scheduler uses. An instance rarely has more than a few events pending, and a burst of
/// raised events leaves many instances with one each: a `BTreeMap` allocates a whole node
/// (about 700 bytes) for one entry, this one allocation of its size.
#[derive(Debug, Default)]
struct Pending(Vec<(EventKey, PendingEvent)>);

impl Pending {
    /// Adds an event, replacing one with the same key.
    fn insert(&mut self, key: EventKey, event: PendingEvent) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.0[i].1 = event,
            Err(i) => self.0.insert(i, (key, event)),
        }
    }

    fn remove(&mut self, key: &EventKey) -> Option<PendingEvent> {
        let i = self.0.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(self.0.remove(i).1)
    }

    fn extend(&mut self, events: impl IntoIterator<Item = (EventKey, PendingEvent)>) {
        for (k, e) in events {
            self.insert(k, e);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&EventKey, &PendingEvent) -> bool) {
        self.0.retain(|(k, e)| keep(k, e));
    }

    fn iter(&self) -> impl Iterator<Item = (&EventKey, &PendingEvent)> {
        self.0.iter().map(|(k, e)| (k, e))
    }

    fn keys(&self) -> impl Iterator<Item = &EventKey> {
        self.0.iter().map(|(k, _)| k)
    }

    fn values(&self) -> impl Iterator<Item = &PendingEvent> {
        self.0.iter().map(|(_, e)| e)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoIterator for Pending {
    type Item = (EventKey, PendingEvent);
    type IntoIter = std::vec::IntoIter<(EventKey, PendingEvent)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[derive(Default)]
struct InstanceSlot {
    name: String,
    version: Option<String>,
    pending: Pending,
    dispatch: Dispatch,
    gate: Gate,
    /// Every inbox row of this instance up to this id is accounted for (registered, or
    /// known to be deleted): a registration at or below it arrives late and is ignored.
    known_through: i64,
    /// Every inbox row of this instance up to this id is deleted from the store (the
    /// execution finished or was replaced): a store snapshot read earlier cannot bring
    /// one back. Never above `known_through`.
    deleted_through: i64,
    attempts: u32,
    not_before_ms: i64,
}

impl InstanceSlot {
    fn has_control(&self) -> bool {
        self.pending.values().any(|p| p.kind == EventKind::Control)
    }

    fn has_start(&self) -> bool {
        self.pending.keys().any(|(p, _)| *p == Priority::Start)
    }

    fn idle(&self) -> bool {
        self.pending.is_empty() && !self.dispatch.is_leased()
    }

    /// Whether the gate holds the pending events back (control events pass any gate).
    fn held(&self) -> bool {
        match self.gate {
            Gate::Open => false,
            Gate::AwaitingStart => !self.has_start(),
            Gate::Suspended => true,
        }
    }
}

/// Where an instance stands with respect to its turns. The transitions, and the only
/// places they happen:
///
/// - `Idle → Ready`: work arrives or a turn ends with work left (`enqueue_instance`; the id
///   is pushed on `ready` exactly when this transition happens);
/// - `Ready → Idle`: popped from `ready` and not runnable now (held by its gate, waiting for
///   its backoff time: a gate change or a wake-up enqueues it again), or nothing pending;
/// - `Ready → Parked`: popped, but no connected stream takes its orchestration (the id is
///   pushed on `parked` exactly then, so it is parked at most once);
/// - `Parked → Ready`: a stream connects or frees capacity (`unpark`);
/// - `Idle | Ready | Parked → Leased`: a turn goes out (`lease_turn`; control and poison
///   turns may overtake a queued worker turn, leaving a stale queue entry that is skipped);
/// - `Leased → Idle`: the turn finished, was held back by its gate or was given back.
///
/// Entries of `ready`/`parked` whose slot is no longer `Ready`/`Parked` are stale and skipped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Dispatch {
    #[default]
    Idle,
    Ready,
    Parked,
    /// A turn with this lease token is out.
    Leased(String),
}

impl Dispatch {
    fn is_leased(&self) -> bool {
        matches!(self, Dispatch::Leased(_))
    }

    fn token(&self) -> Option<&str> {
        match self {
            Dispatch::Leased(t) => Some(t),
            _ => None,
        }
    }
}

/// What holds an instance's worker turns back.
///
/// Only the engine closes a gate, and only from the store's truth read while it held the
/// instance's lease (no other turn can change the status then). An arrival never closes
/// one: the status it was committed against may be stale by the time it is registered
/// (the instance may have started or resumed in between), and trusting it strands events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gate {
    /// Turns may run; the engine checks the instance's status when it builds one.
    #[default]
    Open,
    /// The execution has not started: only its start event (or a control event) opens it.
    AwaitingStart,
    /// The instance is suspended: only control events run.
    Suspended,
}

struct ActivitySlot {
    request: ActivityRequest,
    leased: Option<String>,
    attempts: u32,
    progress: Option<String>,
}

/// How many dropped slots' `known_through` marks are remembered.
const RECENT_SLOTS: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(4096) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};

/// How many timer windows read from the store are remembered (see `loaded_windows`).
const LOADED_WINDOWS: usize = 64;

/// Where a registration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A commit's rows, added after it (possibly late: another path may have added them).
    Commit,
    /// A snapshot of the instance's rows that replaces the scheduler's view of them.
    Resync,
    /// A window of timers read from the store as the horizon advanced.
    Load,
}

/// A window of timers `(after_ms, through_ms]` being read from the store.
struct TimerLoad {
    after_ms: i64,
    through_ms: i64,
    /// Rows of the window registered while it is read: added with the read's rows
    /// (the read may hold them too).
    gap: Vec<Delivered>,
}

impl TimerLoad {
    fn holds(&self, at_ms: i64) -> bool {
        at_ms > self.after_ms && at_ms <= self.through_ms
    }
}

/// The pseudo-stream of activities the sidecar runs itself (real streams start at 1).
pub const BUILTIN_STREAM: StreamId = 0;

/// Who runs a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnKind {
    /// A worker runs the orchestrator code.
    Worker(StreamId),
    /// The sidecar applies terminate/suspend/resume itself.
    Control,
    /// The sidecar fails the instance: its turns kept failing.
    Poison,
}

/// A lease handed out by [`Scheduler::assign`].
#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    Turn(TurnLease),
    Activity {
        token: String,
        stream: StreamId,
        activity_id: i64,
        request: ActivityRequest,
    },
    /// An activity the sidecar runs itself (never sent to a worker).
    Builtin {
        token: String,
        activity_id: i64,
        request: ActivityRequest,
        progress: Option<String>,
    },
    /// An activity that keeps failing; the engine fails its task.
    PoisonActivity {
        activity_id: i64,
        request: ActivityRequest,
        attempts: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TurnLease {
    pub token: String,
    pub instance_id: String,
    pub kind: TurnKind,
    /// The events of the turn in order (for control turns: only control events).
    pub events: Vec<(EventKey, PendingEvent)>,
    pub attempts: u32,
}

/// What the engine remembers about a turn between dispatch and completion.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnContext {
    pub info: crate::core::InstanceInfo,
    /// History length when the turn was built.
    pub history_len: usize,
    /// The new events as sent, `orchestratorStarted` first.
    pub new_events: Vec<HistoryEvent>,
    /// Keys of the events shown to the worker, aligned with `new_events[1..]`.
    pub shown: Vec<EventKey>,
    /// Keys of leased events held back for the next turn (they did not fit this one).
    pub deferred: Vec<EventKey>,
    /// Inbox rows consumed whatever the worker answers (stale results, wake-ups).
    pub always_consumed: Vec<i64>,
    /// The history the turn was built on (a snapshot sharing the cache's segments) when the
    /// work item did not carry it, until the worker's `StreamInstanceHistory` takes it
    /// (empty otherwise: a turn keeps no history it does not need).
    pub history: super::cache::SharedHistory,
}

/// Whether a lease's result is being committed. `Out → Completing` when a completion (or
/// the sidecar's own control/poison result) is accepted (`begin_completion`); back to `Out`
/// only in `reject_and_release`, just before the lease is released. A commit that fails
/// releases the lease (`release`) or resyncs the instance; it never reopens it. A
/// `Completing` lease is not expired and not taken away with its stream: its commit decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeasePhase {
    Out,
    Completing,
}

impl LeasePhase {
    /// `Out → Completing`; false when a completion is already being committed.
    fn begin_completion(&mut self) -> bool {
        let out = *self == LeasePhase::Out;
        *self = LeasePhase::Completing;
        out
    }
}

enum Lease {
    Turn {
        instance_id: String,
        stream: Option<StreamId>,
        events: Vec<(EventKey, PendingEvent)>,
        phase: LeasePhase,
        partial: Vec<OrchestratorAction>,
        /// Encoded bytes of `partial`, bounded by `max_response_bytes`.
        partial_bytes: usize,
        expires: Option<(i64, u64)>,
        context: Option<Box<TurnContext>>,
        /// Events of this lease whose rows are known to be gone (a replacing execution
        /// deleted them, or a resync did not find them): never given back to pending. A
        /// commit that tries to consume one conflicts.
        stale: HashSet<i64>,
    },
    Activity {
        activity_id: i64,
        stream: StreamId,
        phase: LeasePhase,
    },
}

/// Something due at a point in time.
#[derive(Debug, Clone, PartialEq)]
pub enum Wake {
    Event(Box<(String, Target, EventKey, PendingEvent)>),
    Instance(String),
    Activity(i64),
    LeaseExpiry(String),
}

/// Why a lease is given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The worker asked for it (abandon) or answered wrongly: counts as a failed attempt
    /// and is retried after a back-off.
    Failed,
    /// The stream carrying it closed or the lease timed out: counts as a failed attempt,
    /// retried at once.
    Lost,
    /// Retry at once, no attempt counted (the work was routed to the wrong stream).
    Retry,
    /// The sidecar itself failed (a store error): retried after a back-off, no attempt
    /// counted, so a database that keeps failing neither spins nor poisons the work.
    Later,
}

/// Dispatch configuration.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub max_attempts: u32,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    pub turn_lease_ms: i64,
    /// Largest orchestrator response accepted, all chunks together (encoded bytes).
    pub max_response_bytes: usize,
    /// Event payloads kept in memory, at most (estimated bytes); beyond it events wait
    /// as stubs and their payloads are read from the store when their turn is built.
    pub max_payload_bytes: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            max_attempts: 10,
            backoff_base_ms: 1000,
            backoff_max_ms: 60_000,
            turn_lease_ms: 300_000,
            max_response_bytes: 64 * 1024 * 1024,
            max_payload_bytes: 64 * 1024 * 1024,
        }
    }
}

pub struct Scheduler {
    opts: SchedulerOptions,
    streams: BTreeMap<StreamId, StreamSlot>,
    next_stream: StreamId,
    rr: StreamId,
    instances: HashMap<String, InstanceSlot>,
    ready: VecDeque<String>,
    /// Instances with a control event or out of attempts: the sidecar runs their turn
    /// itself, so worker capacity must never hold them back.
    ready_control: VecDeque<String>,
    parked: Vec<String>,
    activities: HashMap<i64, ActivitySlot>,
    ready_activities: VecDeque<i64>,
    parked_activities: Vec<i64>,
    builtin_names: HashSet<String>,
    ready_builtin: VecDeque<i64>,
    /// `known_through` of recently dropped slots, so that a registration that arrives
    /// after its instance finished (its commit raced the finishing turn) is ignored. An
    /// optimisation only: a stale event that gets through is caught when its turn runs.
    recent_through: lru::LruCache<String, (i64, i64)>,
    leases: HashMap<String, Lease>,
    wakeups: BTreeMap<(i64, u64), Wake>,
    /// Keys of each instance's `Wake::Event` entries, so forgetting an instance's timers
    /// does not scan every wake-up.
    instance_wakes: HashMap<String, BTreeSet<(i64, u64)>>,
    /// Each instance's activities, so forgetting them or finding one by task id (workers
    /// that send no completion token) does not scan every activity.
    instance_activities: HashMap<String, BTreeSet<i64>>,
    wake_seq: u64,
    /// The wake-up time the timer task sleeps until (`i64::MAX`: none).
    armed_ms: i64,
    /// A wake-up earlier than `armed_ms` was scheduled: the timer task must re-arm.
    timer_dirty: bool,
    /// Delivery-attempt counts that changed, for the engine to persist.
    attempt_log: Vec<Attempts>,
    /// Bytes of event payloads held in memory (pending, waiting and leased).
    payload_meter: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Turn leases that timed out, since start (metrics).
    leases_expired: u64,
    /// Inbox rows visible after this (durable timers due later) are not held: the store
    /// keeps them and the engine reads them window by window as the horizon advances
    /// (`begin_timer_load`), so instances waiting on long timers cost no memory.
    /// `i64::MAX`: every row is held (a store that cannot read by due time).
    horizon_ms: i64,
    /// The window being read from the store, if any.
    timer_load: Option<TimerLoad>,
    /// Recently read windows `(after_ms, through_ms, watermark)`: a commit's row in one of
    /// them at or below its watermark was read by it, so a late registration is a copy.
    loaded_windows: VecDeque<(i64, i64, i64)>,
    /// Rows beyond the horizon held because they were visible already (the horizon lagged
    /// behind the clock), by inbox id with their time: their window's read leaves them out.
    held_early: HashMap<i64, i64>,
}

/// A completion that matched a live lease.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnInFlight {
    pub instance_id: String,
    pub events: Vec<(EventKey, PendingEvent)>,
    pub actions: Vec<OrchestratorAction>,
    pub context: Option<Box<TurnContext>>,
}

/// What happens to a partial (chunked) orchestrator response.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// More chunks follow; nothing to commit yet.
    Partial,
    /// The whole response is in: commit it.
    Complete(TurnInFlight),
    /// The chunks exceed `max_response_bytes` (this many so far); nothing is kept.
    TooLarge(usize),
}

impl Scheduler {
    pub fn new(opts: SchedulerOptions) -> Scheduler {
        Scheduler {
            opts,
            streams: BTreeMap::new(),
            next_stream: 1,
            rr: 0,
            instances: HashMap::new(),
            ready: VecDeque::new(),
            ready_control: VecDeque::new(),
            parked: Vec::new(),
            activities: HashMap::new(),
            ready_activities: VecDeque::new(),
            parked_activities: Vec::new(),
            builtin_names: HashSet::new(),
            ready_builtin: VecDeque::new(),
            recent_through: lru::LruCache::new(RECENT_SLOTS),
            leases: HashMap::new(),
            wakeups: BTreeMap::new(),
            instance_wakes: HashMap::new(),
            instance_activities: HashMap::new(),
            wake_seq: 0,
            armed_ms: i64::MAX,
            timer_dirty: false,
            attempt_log: Vec::new(),
            payload_meter: Default::default(),
            leases_expired: 0,
            horizon_ms: i64::MAX,
            timer_load: None,
            loaded_windows: VecDeque::new(),
            held_early: HashMap::new(),
        }
    }

    fn new_token(&mut self) -> String {
        // 128 bits from the OS-seeded CSPRNG (`rand::random` uses `ThreadRng`): unguessable, and
        // a collision among live leases is as likely as guessing one.
        format!("{:032x}", rand::random::<u128>())
    }

    // ----- streams -------------------------------------------------------------------

    pub fn add_stream(&mut self, rules: StreamRules, sender: mpsc::UnboundedSender<Outgoing>) -> StreamId {
        let id = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(
            id,
            StreamSlot {
                rules,
                sender,
                orchestrations: 0,
                activities: 0,
                rejected_orchestrations: HashSet::new(),
                rejected_activities: HashSet::new(),
            },
        );
        self.unpark();
        id
    }

    /// Removes a stream and releases every lease it held.
    pub fn remove_stream(&mut self, id: StreamId, now_ms: i64) -> Vec<Assignment> {
        self.streams.remove(&id);
        let mut lost: Vec<((i64, &str), String)> = self
            .leases
            .iter()
            .filter_map(|(t, l)| match l {
                Lease::Turn { stream, phase: LeasePhase::Out, instance_id, .. } if *stream == Some(id) => {
                    Some(((-1, instance_id.as_str()), t.clone()))
                }
                Lease::Activity { stream, phase: LeasePhase::Out, activity_id } if *stream == id => {
                    Some(((*activity_id, ""), t.clone()))
                }
                _ => None,
            })
            .collect();
        // Release in a fixed order (the map's is random), so a simulation replays.
        lost.sort_unstable();
        let tokens: Vec<String> = lost.into_iter().map(|(_, t)| t).collect();
        let mut poisoned = Vec::new();
        for t in tokens {
            poisoned.extend(self.release(&t, Release::Lost, now_ms));
        }
        poisoned
    }

    /// Events of `instance_id` visible and waiting for a turn (its inbox, timers not due excepted).
    pub fn pending_count(&self, instance_id: &str) -> usize {
        self.instances.get(instance_id).map_or(0, |s| s.pending.len())
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    fn unpark(&mut self) {
        for id in std::mem::take(&mut self.parked) {
            if let Some(slot) = self.instances.get_mut(&id) {
                if slot.dispatch == Dispatch::Parked {
                    slot.dispatch = Dispatch::Ready;
                    self.ready.push_back(id);
                }
            }
        }
        self.ready_activities.extend(self.parked_activities.drain(..));
    }

    // ----- arrivals ------------------------------------------------------------------

    /// Adds a committed inbox row: pending now, or a wake-up at its visible time.
    pub fn add_event(&mut self, d: Delivered, now_ms: i64) {
        if d.inbox_id <= self.known_through(&d.instance_id) {
            // Registered already by a resync, or deleted: this copy arrives late.
            return;
        }
        self.register(d, now_ms, Origin::Commit);
    }

    fn register(&mut self, d: Delivered, now_ms: i64, origin: Origin) {
        let at = d.visible_at_ms;
        if origin != Origin::Load {
            if let Some(load) = self.timer_load.as_mut().filter(|l| l.holds(at)) {
                load.gap.push(d);
                return;
            }
        }
        if origin == Origin::Commit
            && self
                .loaded_windows
                .iter()
                .any(|(after, through, mark)| at > *after && at <= *through && d.inbox_id <= *mark)
        {
            // Its window's read found it (or it is gone): this copy arrives late.
            return;
        }
        if at > self.horizon_ms {
            if at > now_ms {
                // Due after the horizon: the store keeps it until its window is read.
                return;
            }
            // Visible already while the horizon lags behind the clock (its read is late):
            // held now, and left out of its window's read.
            self.held_early.insert(d.inbox_id, at);
        }
        let key = (d.priority, d.inbox_id);
        let kind = EventKind::of(&d.event);
        let payload = self.charge(d.event);
        let pending = PendingEvent { inbox_id: d.inbox_id, execution_id: d.execution_id, kind, payload };
        if d.visible_at_ms > now_ms {
            let instance_id = d.instance_id.clone();
            let seq = self.schedule(d.visible_at_ms, Wake::Event(Box::new((d.instance_id, d.target, key, pending))));
            self.instance_wakes.entry(instance_id).or_default().insert((d.visible_at_ms, seq));
            return;
        }
        self.add_visible(d.instance_id, &d.target, key, pending);
    }

    /// Keeps a payload in memory if the budget allows.
    fn charge(&self, event: HistoryEvent) -> Option<Payload> {
        use std::sync::atomic::Ordering::Relaxed;
        let bytes = prost::Message::encoded_len(&event) + 64;
        let held = self.payload_meter.fetch_add(bytes, Relaxed);
        if held + bytes > self.opts.max_payload_bytes {
            self.payload_meter.fetch_sub(bytes, Relaxed);
            return None;
        }
        Some(Payload(std::sync::Arc::new(Charged { event, bytes, meter: self.payload_meter.clone() })))
    }

    fn add_visible(&mut self, instance_id: String, target: &Target, key: EventKey, event: PendingEvent) {
        let slot = self.slot(&instance_id);
        if slot.name.is_empty() {
            slot.name = target.name.clone();
            slot.version = target.version.clone();
        }
        slot.pending.insert(key, event);
        self.enqueue_instance(&instance_id);
    }

    /// Inbox ids of the instance up to this one are accounted for; see `known_through`.
    fn known_through(&self, instance_id: &str) -> i64 {
        match self.instances.get(instance_id) {
            Some(slot) => slot.known_through,
            None => self.recent_through.peek(instance_id).map_or(0, |(known, _)| *known),
        }
    }

    /// An instance's slot, created if missing (remembering a dropped slot's mark).
    fn slot(&mut self, instance_id: &str) -> &mut InstanceSlot {
        if !self.instances.contains_key(instance_id) {
            let (known_through, deleted_through) = self.recent_through.pop(instance_id).unwrap_or_default();
            let slot = InstanceSlot { known_through, deleted_through, ..Default::default() };
            self.instances.insert(instance_id.to_string(), slot);
        }
        self.instances.entry(instance_id.to_string()).or_default()
    }

    /// Names of activities the sidecar runs itself instead of dispatching them.
    pub fn set_builtin_names(&mut self, names: impl IntoIterator<Item = String>) {
        self.builtin_names = names.into_iter().collect();
    }

    /// Adds a committed activity to dispatch. One held here already stays as it is: on a
    /// shared store a claim can take back an activity whose lease ran out while it was out
    /// at a worker here (or queued here); that worker's result still completes it.
    pub fn add_activity(&mut self, a: QueuedActivity) {
        if self.activities.contains_key(&a.id) {
            return;
        }
        if let Some(of) = a.request.orchestration_instance.as_ref() {
            self.instance_activities.entry(of.instance_id.clone()).or_default().insert(a.id);
        }
        self.activities
            .insert(a.id, ActivitySlot { request: a.request, leased: None, attempts: 0, progress: a.progress });
        self.requeue_activity(a.id);
    }

    fn requeue_activity(&mut self, id: i64) {
        let Some(slot) = self.activities.get(&id) else { return };
        if self.builtin_names.contains(&slot.request.name) {
            self.ready_builtin.push_back(id);
        } else {
            self.ready_activities.push_back(id);
        }
    }

    fn enqueue_instance(&mut self, instance_id: &str) {
        let max_attempts = self.opts.max_attempts;
        if let Some(slot) = self.instances.get_mut(instance_id) {
            if !slot.dispatch.is_leased() && (slot.has_control() || slot.attempts >= max_attempts) {
                self.ready_control.push_back(instance_id.to_string());
            }
            if slot.dispatch == Dispatch::Idle && !slot.pending.is_empty() {
                slot.dispatch = Dispatch::Ready;
                self.ready.push_back(instance_id.to_string());
            }
        }
    }

    fn schedule(&mut self, at_ms: i64, wake: Wake) -> u64 {
        if at_ms < self.armed_ms {
            self.timer_dirty = true;
        }
        self.wake_seq += 1;
        self.wakeups.insert((at_ms, self.wake_seq), wake);
        self.wake_seq
    }

    // ----- timers beyond the horizon ----------------------------------------------------

    /// Holds only timers due by `horizon_ms`; later ones stay in the store until
    /// [`Scheduler::begin_timer_load`] reads their window. Set once, at start-up, to the
    /// time the store's recovery read through.
    pub fn set_timer_horizon(&mut self, horizon_ms: i64) {
        self.horizon_ms = horizon_ms;
    }

    /// Timers due after this are in the store only; `None` when every timer is held.
    pub fn timer_horizon(&self) -> Option<i64> {
        (self.horizon_ms != i64::MAX).then_some(self.horizon_ms)
    }

    /// Moves the horizon to `now_ms + span_ms` and returns the window `(after, through]`
    /// the engine must read from the store ([`Scheduler::finish_timer_load`]); `None` when
    /// every timer is held, a read is under way, or the horizon is that far already.
    pub fn begin_timer_load(&mut self, now_ms: i64, span_ms: i64) -> Option<(i64, i64)> {
        if self.horizon_ms == i64::MAX || self.timer_load.is_some() {
            return None;
        }
        let after = self.horizon_ms;
        let through = now_ms.saturating_add(span_ms);
        if through <= after {
            return None;
        }
        self.horizon_ms = through;
        self.timer_load = Some(TimerLoad { after_ms: after, through_ms: through, gap: Vec::new() });
        Some((after, through))
    }

    /// Adds a window's rows as read from the store (with the newest inbox id of that read),
    /// and the rows of the window registered while it was read, each once. Rows of
    /// instances whose rows up to theirs were deleted meanwhile are left out.
    pub fn finish_timer_load(&mut self, rows: Vec<Delivered>, watermark: i64, now_ms: i64) {
        let Some(load) = self.timer_load.take() else { return };
        let mut seen = HashSet::new();
        let (after, through) = (load.after_ms, load.through_ms);
        let in_window = |d: &Delivered| d.visible_at_ms > after && d.visible_at_ms <= through;
        let read = rows.into_iter().filter(|d| in_window(d) && !self.held_early.contains_key(&d.inbox_id));
        let rows: Vec<Delivered> = read.chain(load.gap).collect();
        self.held_early.retain(|_, at| *at > load.through_ms);
        for d in rows {
            if !seen.insert(d.inbox_id) || d.inbox_id <= self.deleted_through(&d.instance_id) {
                continue;
            }
            self.register(d, now_ms, Origin::Load);
        }
        self.loaded_windows.push_back((load.after_ms, load.through_ms, watermark));
        if self.loaded_windows.len() > LOADED_WINDOWS {
            self.loaded_windows.pop_front();
        }
    }

    /// Every row visible by this time is held (pending, leased, waiting, or waiting for the
    /// read of its window); later ones may be in the store only.
    #[cfg(test)]
    pub(crate) fn held_through(&self) -> i64 {
        self.timer_load.as_ref().map_or(self.horizon_ms, |l| l.after_ms)
    }

    /// Inbox ids of the instance up to this one are deleted; see `deleted_through`.
    fn deleted_through(&self, instance_id: &str) -> i64 {
        match self.instances.get(instance_id) {
            Some(slot) => slot.deleted_through,
            None => self.recent_through.peek(instance_id).map_or(0, |(_, deleted)| *deleted),
        }
    }

    /// When the next wake-up is due, if any.
    pub fn next_wakeup_ms(&self) -> Option<i64> {
        self.wakeups.keys().next().map(|(t, _)| *t)
    }

    /// Called by the timer task before it sleeps: records what it sleeps until.
    pub fn arm_timer(&mut self) -> Option<i64> {
        let next = self.next_wakeup_ms();
        self.armed_ms = next.unwrap_or(i64::MAX);
        self.timer_dirty = false;
        next
    }

    /// Whether the timer task must wake up to re-arm (an earlier wake-up appeared).
    pub fn take_timer_dirty(&mut self) -> bool {
        std::mem::take(&mut self.timer_dirty)
    }

    /// Moves everything due by `now_ms` into the ready queues. Returns assignments for
    /// work that became poison (expired leases past the attempt limit).
    pub fn fire_due(&mut self, now_ms: i64) -> Vec<Assignment> {
        let mut poisoned = Vec::new();
        while let Some(entry) = self.wakeups.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let wake_key = *entry.key();
            match entry.remove() {
                Wake::Event(e) => {
                    let (instance_id, target, key, event) = *e;
                    self.unindex_wake(&instance_id, wake_key);
                    self.add_visible(instance_id, &target, key, event)
                }
                Wake::Instance(id) => self.enqueue_instance(&id),
                Wake::Activity(id) => self.requeue_activity(id),
                Wake::LeaseExpiry(token) => {
                    if matches!(self.leases.get(&token), Some(Lease::Turn { phase: LeasePhase::Out, .. })) {
                        self.leases_expired += 1;
                        poisoned.extend(self.release(&token, Release::Lost, now_ms));
                    }
                }
            }
        }
        poisoned
    }

    // ----- dispatch ------------------------------------------------------------------

    /// Hands out every lease that can start now.
    pub fn assign(&mut self, now_ms: i64) -> Vec<Assignment> {
        let mut out = Vec::new();
        self.assign_turns(now_ms, &mut out);
        self.assign_activities(&mut out);
        self.assign_builtin(&mut out);
        out
    }

    /// Whether a queued activity may be leased now; one out of attempts becomes a poison
    /// assignment instead.
    fn activity_assignable(&mut self, id: i64, out: &mut Vec<Assignment>) -> bool {
        let Some(slot) = self.activities.get(&id) else { return false };
        if slot.leased.is_some() {
            return false;
        }
        if slot.attempts >= self.opts.max_attempts {
            if let Some(slot) = self.remove_activity(id) {
                out.push(Assignment::PoisonActivity {
                    activity_id: id,
                    request: slot.request,
                    attempts: slot.attempts,
                });
            }
            return false;
        }
        true
    }

    fn assign_builtin(&mut self, out: &mut Vec<Assignment>) {
        while let Some(id) = self.ready_builtin.pop_front() {
            if !self.activity_assignable(id, out) {
                continue;
            }
            let token = self.new_token();
            let Some(slot) = self.activities.get_mut(&id) else { continue };
            slot.leased = Some(token.clone());
            self.leases.insert(
                token.clone(),
                Lease::Activity { activity_id: id, stream: BUILTIN_STREAM, phase: LeasePhase::Out },
            );
            out.push(Assignment::Builtin {
                token,
                activity_id: id,
                request: slot.request.clone(),
                progress: slot.progress.clone(),
            });
        }
    }

    fn pick_stream(&mut self, mut accepts: impl FnMut(&StreamSlot) -> bool) -> Option<StreamId> {
        let after = self.streams.range(self.rr + 1..).find(|(_, s)| accepts(s)).map(|(id, _)| *id);
        let found = after.or_else(|| self.streams.range(..=self.rr).find(|(_, s)| accepts(s)).map(|(id, _)| *id));
        if let Some(id) = found {
            self.rr = id;
        }
        found
    }

    fn any_orchestration_capacity(&self) -> bool {
        self.streams.values().any(|s| s.orchestrations < s.rules.max_orchestrations)
    }

    fn assign_control_turns(&mut self, now_ms: i64, out: &mut Vec<Assignment>) {
        while let Some(id) = self.ready_control.pop_front() {
            let Some(slot) = self.instances.get(&id) else { continue };
            if slot.dispatch.is_leased() || slot.pending.is_empty() {
                continue;
            }
            let kind = if slot.attempts >= self.opts.max_attempts {
                TurnKind::Poison
            } else if slot.has_control() {
                TurnKind::Control
            } else {
                continue;
            };
            if slot.not_before_ms > now_ms {
                let at = slot.not_before_ms;
                self.schedule(at, Wake::Instance(id));
                continue;
            }
            out.push(Assignment::Turn(self.lease_turn(id, kind, now_ms)));
        }
    }

    fn assign_turns(&mut self, now_ms: i64, out: &mut Vec<Assignment>) {
        self.assign_control_turns(now_ms, out);
        let mut rounds = self.ready.len();
        while rounds > 0 {
            rounds -= 1;
            let Some(id) = self.ready.pop_front() else { break };
            let Some(slot) = self.instances.get_mut(&id) else { continue };
            if slot.dispatch != Dispatch::Ready {
                continue; // a stale entry
            }
            slot.dispatch = Dispatch::Idle;
            if slot.pending.is_empty() {
                continue;
            }
            if slot.not_before_ms > now_ms {
                let at = slot.not_before_ms;
                self.schedule(at, Wake::Instance(id));
                continue;
            }
            let poison = slot.attempts >= self.opts.max_attempts;
            let control = slot.has_control();
            let held = slot.held();
            let (name, version) = (slot.name.clone(), slot.version.clone());
            let kind = if poison {
                TurnKind::Poison
            } else if control {
                TurnKind::Control
            } else if held {
                // Held until resumed, or until the scheduled start; that event re-queues it.
                continue;
            } else {
                if !self.any_orchestration_capacity() {
                    if let Some(slot) = self.instances.get_mut(&id) {
                        slot.dispatch = Dispatch::Ready;
                    }
                    self.ready.push_front(id);
                    break;
                }
                match self.pick_stream(|s| s.takes_orchestration(&name, version.as_deref())) {
                    Some(stream) => TurnKind::Worker(stream),
                    None => {
                        if let Some(slot) = self.instances.get_mut(&id) {
                            slot.dispatch = Dispatch::Parked;
                        }
                        self.parked.push(id);
                        continue;
                    }
                }
            };
            out.push(Assignment::Turn(self.lease_turn(id, kind, now_ms)));
        }
    }

    fn lease_turn(&mut self, instance_id: String, kind: TurnKind, now_ms: i64) -> TurnLease {
        let token = self.new_token();
        let lease_ms = self.opts.turn_lease_ms;
        let Some(slot) = self.instances.get_mut(&instance_id) else {
            unreachable_slot();
            return TurnLease { token, instance_id, kind, events: Vec::new(), attempts: 0 };
        };
        let events: Vec<(EventKey, PendingEvent)> = match kind {
            TurnKind::Control => {
                let keys: Vec<EventKey> =
                    slot.pending.iter().filter(|(_, p)| p.kind == EventKind::Control).map(|(k, _)| *k).collect();
                keys.into_iter().filter_map(|k| slot.pending.remove(&k).map(|p| (k, p))).collect()
            }
            TurnKind::Worker(_) | TurnKind::Poison => std::mem::take(&mut slot.pending).into_iter().collect(),
        };
        slot.dispatch = Dispatch::Leased(token.clone());
        let attempts = slot.attempts;
        let stream = match kind {
            TurnKind::Worker(s) => {
                if let Some(st) = self.streams.get_mut(&s) {
                    st.orchestrations += 1;
                }
                Some(s)
            }
            _ => None,
        };
        let expires =
            stream.map(|_| (now_ms + lease_ms, self.schedule(now_ms + lease_ms, Wake::LeaseExpiry(token.clone()))));
        self.leases.insert(
            token.clone(),
            Lease::Turn {
                instance_id: instance_id.clone(),
                stream,
                events: events.clone(),
                phase: LeasePhase::Out,
                partial: Vec::new(),
                partial_bytes: 0,
                expires,
                context: None,
                stale: HashSet::new(),
            },
        );
        TurnLease { token, instance_id, kind, events, attempts }
    }

    fn assign_activities(&mut self, out: &mut Vec<Assignment>) {
        let mut rounds = self.ready_activities.len();
        while rounds > 0 {
            rounds -= 1;
            let Some(id) = self.ready_activities.pop_front() else { break };
            if !self.activity_assignable(id, out) {
                continue;
            }
            if !self.streams.values().any(|s| s.activities < s.rules.max_activities) {
                self.ready_activities.push_front(id);
                break;
            }
            let Some(slot) = self.activities.get(&id) else { continue };
            let (name, version) = (slot.request.name.clone(), slot.request.version.clone());
            let Some(stream) = self.pick_stream(|s| s.takes_activity(&name, version.as_deref())) else {
                self.parked_activities.push(id);
                continue;
            };
            let token = self.new_token();
            let Some(slot) = self.activities.get_mut(&id) else { continue };
            slot.leased = Some(token.clone());
            if let Some(st) = self.streams.get_mut(&stream) {
                st.activities += 1;
            }
            self.leases.insert(token.clone(), Lease::Activity { activity_id: id, stream, phase: LeasePhase::Out });
            out.push(Assignment::Activity { token, stream, activity_id: id, request: slot.request.clone() });
        }
    }

    /// Attaches a built turn to its lease and sends it; `false` if the lease or the stream
    /// is gone (the stream's removal released the lease).
    pub fn send_turn(&mut self, token: &str, stream: StreamId, ctx: TurnContext, item: duro_proto::WorkItem) -> bool {
        match self.leases.get_mut(token) {
            Some(Lease::Turn { context, .. }) => *context = Some(Box::new(ctx)),
            _ => return false,
        }
        self.send(token, stream, item)
    }

    /// Sends an item on a stream if the lease is still live; `false` if the lease or the
    /// stream is gone (the lease is then released by the stream's removal).
    pub fn send(&self, token: &str, stream: StreamId, item: duro_proto::WorkItem) -> bool {
        if !self.leases.contains_key(token) {
            return false;
        }
        match self.streams.get(&stream) {
            Some(s) => s.sender.send(Outgoing::Item(Box::new(item))).is_ok(),
            None => false,
        }
    }

    // ----- completion ----------------------------------------------------------------

    /// Matches an orchestrator response to its live lease. `None`: unknown, stale or
    /// already completing. Chunks (`is_partial`) accumulate until the last one.
    pub fn begin_turn_completion(
        &mut self,
        token: &str,
        actions: Vec<OrchestratorAction>,
        is_partial: bool,
    ) -> Option<Completion> {
        let Some(Lease::Turn { instance_id, events, phase, partial, partial_bytes, context, .. }) =
            self.leases.get_mut(token)
        else {
            return None;
        };
        if *phase == LeasePhase::Completing || context.is_none() {
            return None;
        }
        *partial_bytes += actions.iter().map(prost::Message::encoded_len).sum::<usize>();
        if *partial_bytes > self.opts.max_response_bytes {
            let total = *partial_bytes;
            *partial = Vec::new();
            return Some(Completion::TooLarge(total));
        }
        partial.extend(actions);
        if is_partial {
            return Some(Completion::Partial);
        }
        phase.begin_completion();
        Some(Completion::Complete(TurnInFlight {
            instance_id: instance_id.clone(),
            events: events.clone(),
            actions: std::mem::take(partial),
            context: context.take(),
        }))
    }

    /// Marks a control or poison turn as completing (the sidecar commits it itself).
    pub fn begin_internal_completion(&mut self, token: &str) -> bool {
        match self.leases.get_mut(token) {
            Some(Lease::Turn { phase, .. }) => phase.begin_completion(),
            _ => false,
        }
    }

    /// Ends a committed turn. `unconsumed` events return to pending (they come first,
    /// by key order); `suspended` is the instance's state after the commit. `finished`
    /// says the turn ended the execution and deleted every inbox row of the instance up
    /// to that id: those are forgotten, later ones (a replacing execution's) are kept.
    pub fn finish_turn(
        &mut self,
        token: &str,
        unconsumed: Vec<(EventKey, PendingEvent)>,
        suspended: bool,
        finished: Option<i64>,
    ) {
        let Some(Lease::Turn { instance_id, stream, expires, stale, .. }) = self.leases.remove(token) else { return };
        let unconsumed = unconsumed.into_iter().filter(|(_, p)| !stale.contains(&p.inbox_id));
        self.free_stream_turn(stream);
        if let Some(key) = expires {
            self.wakeups.remove(&key);
        }
        let Some(slot) = self.instances.get_mut(&instance_id) else { return };
        slot.dispatch = Dispatch::Idle;
        slot.attempts = 0;
        slot.gate = if suspended { Gate::Suspended } else { Gate::Open };
        if let Some(through) = finished {
            self.forget_through(&instance_id, through, None);
            return;
        }
        slot.pending.extend(unconsumed);
        self.settle(&instance_id);
    }

    /// Drops an idle slot, or queues one with work.
    fn settle(&mut self, instance_id: &str) {
        match self.instances.get(instance_id) {
            Some(slot) if slot.idle() => {
                if slot.known_through > 0 {
                    self.recent_through.put(instance_id.to_string(), (slot.known_through, slot.deleted_through));
                }
                self.instances.remove(instance_id);
            }
            Some(_) => self.enqueue_instance(instance_id),
            None => {}
        }
    }

    /// Gives a turn back without running it because the engine found, from the store's
    /// truth, that the instance is not started or is suspended: its events wait behind
    /// `gate`. No attempt is counted.
    pub fn hold_turn(&mut self, token: &str, gate: Gate) {
        let Some(Lease::Turn { instance_id, stream, events, expires, stale, .. }) = self.leases.remove(token) else {
            return;
        };
        let events = events.into_iter().filter(|(_, p)| !stale.contains(&p.inbox_id));
        self.free_stream_turn(stream);
        if let Some(key) = expires {
            self.wakeups.remove(&key);
        }
        if let Some(slot) = self.instances.get_mut(&instance_id) {
            slot.dispatch = Dispatch::Idle;
            slot.gate = gate;
            slot.pending.extend(events);
        }
        self.settle(&instance_id);
    }

    fn free_stream_turn(&mut self, stream: Option<StreamId>) {
        if let Some(st) = stream.and_then(|s| self.streams.get_mut(&s)) {
            st.orchestrations = st.orchestrations.saturating_sub(1);
            if !self.parked.is_empty() {
                self.unpark();
            }
        }
    }

    /// A new execution replaced the instance (client start over an existing id, restart):
    /// everything registered before its start row belonged to the old execution and was
    /// deleted with it. Events registered since (they can only be the new execution's)
    /// stay. A turn of the old execution in flight keeps its lease; its commit fails.
    pub fn replace_execution(&mut self, start: Delivered, now_ms: i64) {
        let keep = start.execution_id.clone();
        self.forget_through(&start.instance_id, start.inbox_id - 1, keep.as_deref());
        if let Some(slot) = self.instances.get_mut(&start.instance_id) {
            slot.gate = Gate::Open;
            slot.name = start.target.name.clone();
            slot.version = start.target.version.clone();
        }
        self.add_event(start, now_ms);
    }

    /// Forgets an instance's events with inbox ids up to `through` (pending and timers)
    /// and its queued activities of executions other than `keep_execution`. A lease in
    /// flight keeps its events.
    fn forget_through(&mut self, instance_id: &str, through: i64, keep_execution: Option<&str>) {
        let slot = self.slot(instance_id);
        slot.pending.retain(|(_, id), _| *id > through);
        slot.known_through = slot.known_through.max(through);
        slot.deleted_through = slot.deleted_through.max(through);
        let lease = slot.dispatch.token().map(str::to_string);
        if let Some(Lease::Turn { events, stale, .. }) = lease.and_then(|t| self.leases.get_mut(&t)) {
            stale.extend(events.iter().map(|(_, p)| p.inbox_id).filter(|id| *id <= through));
        }
        self.forget_wakes(instance_id, |id, _| id <= through);
        let gone: Vec<i64> = self
            .instance_activities
            .get(instance_id)
            .into_iter()
            .flatten()
            .filter(|id| {
                self.activities.get(id).is_some_and(|a| {
                    let execution = a.request.orchestration_instance.as_ref().and_then(|o| o.execution_id.as_deref());
                    a.leased.is_none() && (keep_execution.is_none() || execution != keep_execution)
                })
            })
            .copied()
            .collect();
        for id in gone {
            self.remove_activity(id);
        }
        self.settle(instance_id);
    }

    /// A continue-as-new committed: the store deleted the old executions' results and
    /// timers, so their pending events and wake-ups go too (a long timer of an eternal
    /// orchestration would otherwise stay in memory for every generation).
    pub fn forget_other_executions(&mut self, instance_id: &str, current: &str) {
        let other = |e: &Option<String>| e.as_deref().is_some_and(|e| e != current);
        if let Some(slot) = self.instances.get_mut(instance_id) {
            slot.pending.retain(|_, p| !other(&p.execution_id));
        }
        self.forget_wakes(instance_id, |_, p| other(&p.execution_id));
        self.settle(instance_id);
    }

    /// Drops an instance's timer wake-ups matching `what(inbox id, event)` (also those
    /// waiting for a timer window's read).
    fn forget_wakes(&mut self, instance_id: &str, what: impl Fn(i64, &PendingEvent) -> bool) {
        if let Some(load) = self.timer_load.as_mut() {
            load.gap.retain(|d| {
                if d.instance_id != instance_id {
                    return true;
                }
                let p = PendingEvent {
                    inbox_id: d.inbox_id,
                    execution_id: d.execution_id.clone(),
                    kind: EventKind::Other,
                    payload: None,
                };
                !what(d.inbox_id, &p)
            });
        }
        let Some(keys) = self.instance_wakes.get_mut(instance_id) else { return };
        keys.retain(|k| match self.wakeups.get(k) {
            Some(Wake::Event(e)) if what((e.2).1, &e.3) => {
                self.wakeups.remove(k);
                false
            }
            Some(Wake::Event(_)) => true,
            _ => false,
        });
        if keys.is_empty() {
            self.instance_wakes.remove(instance_id);
        }
    }

    fn unindex_wake(&mut self, instance_id: &str, key: (i64, u64)) {
        if let Some(keys) = self.instance_wakes.get_mut(instance_id) {
            keys.remove(&key);
            if keys.is_empty() {
                self.instance_wakes.remove(instance_id);
            }
        }
    }

    fn remove_activity(&mut self, id: i64) -> Option<ActivitySlot> {
        let slot = self.activities.remove(&id)?;
        if let Some(of) = slot.request.orchestration_instance.as_ref() {
            if let Some(ids) = self.instance_activities.get_mut(&of.instance_id) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.instance_activities.remove(&of.instance_id);
                }
            }
        }
        Some(slot)
    }

    // ----- sharing a store with other sidecars (see `engine::cluster`) -----------------

    /// Whether the scheduler holds nothing for an instance: no pending event, no turn out,
    /// no timer wake-up, no activity of it here. A sidecar sharing its store may then give the instance's lease back.
    pub fn is_quiet(&self, instance_id: &str) -> bool {
        !self.instances.contains_key(instance_id)
            && !self.instance_wakes.contains_key(instance_id)
            && !self.instance_activities.contains_key(instance_id)
    }

    /// Drops what the scheduler holds for an instance another sidecar runs now (its lease was
    /// lost or given back): pending events and wake-ups. `false` (nothing dropped) while a
    /// turn is out: its commit fails on the lease and the caller disowns the instance then.
    pub fn disown(&mut self, instance_id: &str) -> bool {
        if self.instances.get(instance_id).is_some_and(|s| s.dispatch.is_leased()) {
            return false;
        }
        self.forget_wakes(instance_id, |_, _| true);
        self.instances.remove(instance_id);
        self.recent_through.pop(instance_id);
        self.ready.retain(|id| id != instance_id);
        self.parked.retain(|id| id != instance_id);
        self.ready_control.retain(|id| id != instance_id);
        true
    }

    /// Drops activities another sidecar runs now (their leases were lost); those out at a
    /// worker stay until their completion (at least once: the first result counts).
    pub fn disown_activities(&mut self, ids: &[i64]) {
        for id in ids {
            if self.activities.get(id).is_some_and(|a| a.leased.is_none()) {
                self.remove_activity(*id);
                self.ready_activities.retain(|a| a != id);
                self.ready_builtin.retain(|a| a != id);
                self.parked_activities.retain(|a| a != id);
            }
        }
    }

    /// Every instance the scheduler holds something for.
    pub fn instance_ids(&self) -> Vec<String> {
        self.instances.keys().cloned().collect()
    }

    /// Activities queued here that no connected stream accepts (to give back to the hub):
    /// the parked ones, and with no stream connected at all every queued one but the
    /// built-ins (which wait in the ready queue rather than parking then).
    pub fn unserved_activities(&self) -> Vec<i64> {
        let mut out = self.parked_activities.clone();
        if self.streams.is_empty() {
            out.extend(self.ready_activities.iter().copied());
        }
        out
    }

    /// Instances with pending events that no connected stream accepts: the parked ones, and
    /// with no stream connected at all every ready one (they wait in the ready queue then).
    pub fn unserved_instances(&self) -> Vec<String> {
        let mut out = self.parked.clone();
        if self.streams.is_empty() {
            out.extend(self.ready.iter().cloned());
        }
        out
    }

    /// The orchestration and activity names the connected streams serve, for claiming shared
    /// work: every name if a stream sent no filters (less the names all such streams
    /// rejected as unregistered), else the union of the filters. Built-in activities are
    /// always served.
    pub fn served(&self) -> (Served, Served) {
        fn combine<'a>(
            streams: impl Iterator<Item = &'a StreamSlot>,
            filtered: impl Fn(&WorkItemFilters) -> Vec<String>,
            rejected: impl Fn(&StreamSlot) -> &HashSet<String>,
        ) -> Served {
            let mut names = BTreeSet::new();
            let mut unfiltered: Option<HashSet<String>> = None;
            for s in streams {
                match &s.rules.filters {
                    Some(f) => names.extend(filtered(f)),
                    None => {
                        let r = rejected(s);
                        unfiltered = Some(match unfiltered {
                            None => r.clone(),
                            Some(acc) => acc.intersection(r).cloned().collect(),
                        });
                    }
                }
            }
            match unfiltered {
                Some(except) => Served::All(except.into_iter().filter(|n| !names.contains(n)).collect()),
                None => Served::Names(names.into_iter().collect()),
            }
        }
        let orchestrations = combine(
            self.streams.values(),
            |f| f.orchestrations.iter().map(|o| o.name.clone()).collect(),
            |s| &s.rejected_orchestrations,
        );
        let mut activities = combine(
            self.streams.values(),
            |f| f.activities.iter().map(|a| a.name.clone()).collect(),
            |s| &s.rejected_activities,
        );
        match &mut activities {
            Served::All(except) => except.retain(|n| !self.builtin_names.contains(n)),
            Served::Names(names) => {
                names.extend(self.builtin_names.iter().cloned());
                names.sort();
                names.dedup();
            }
        }
        (orchestrations, activities)
    }

    /// How many more instances and activities the connected streams could take now, less
    /// what already waits here: what a claim may take from the hub.
    pub fn claim_room(&self) -> (usize, usize) {
        let (mut turns, mut activities) = (0usize, 0usize);
        for s in self.streams.values() {
            turns = turns.saturating_add(s.rules.max_orchestrations.saturating_sub(s.orchestrations));
            activities = activities.saturating_add(s.rules.max_activities.saturating_sub(s.activities));
        }
        (
            turns.saturating_sub(self.ready.len()),
            activities.saturating_sub(self.ready_activities.len()).max(if self.builtin_names.is_empty() {
                0
            } else {
                16
            }),
        )
    }

    /// Replaces what the scheduler believes is pending for an instance with the store's
    /// rows, read in one snapshot in which the newest inbox id was `watermark`. Used when
    /// the in-memory view proved wrong (a commit conflicted, the instance was found
    /// finished or gone): rows up to the watermark that are not in the store are dropped,
    /// rows registered later are kept, and the gate opens so the next turn re-checks.
    pub fn resync(&mut self, instance_id: &str, rows: Vec<Delivered>, watermark: i64, now_ms: i64) {
        let in_store: HashSet<i64> = rows.iter().map(|d| d.inbox_id).collect();
        let lease = self.instances.get(instance_id).and_then(|s| s.dispatch.token()).map(str::to_string);
        let mut leased = HashSet::new();
        if let Some(Lease::Turn { events, stale, .. }) = lease.and_then(|t| self.leases.get_mut(&t)) {
            for (_, p) in events.iter() {
                leased.insert(p.inbox_id);
                if p.inbox_id <= watermark && !in_store.contains(&p.inbox_id) {
                    stale.insert(p.inbox_id);
                }
            }
        }
        let slot = self.slot(instance_id);
        slot.pending.retain(|(_, id), _| *id > watermark);
        slot.gate = Gate::Open;
        // Rows the snapshot holds but a later deletion removed must not come back; rows
        // merely registered before (and since dropped from a conflicting lease) must.
        let floor = slot.deleted_through;
        self.forget_wakes(instance_id, |id, _| id <= watermark);
        for d in rows {
            if d.instance_id == instance_id && d.inbox_id > floor && !leased.contains(&d.inbox_id) {
                self.register(d, now_ms, Origin::Resync);
            }
        }
        // Every row up to the watermark is registered now (or left in the store beyond the
        // timer horizon); later copies arrive late.
        let slot = self.slot(instance_id);
        slot.known_through = slot.known_through.max(watermark);
        self.settle(instance_id);
    }

    /// Gives a lease back. Returns a poison assignment when an activity ran out of
    /// attempts (instances are handled by their next assignment).
    pub fn release(&mut self, token: &str, why: Release, now_ms: i64) -> Vec<Assignment> {
        let Some(lease) = self.leases.remove(token) else { return Vec::new() };
        let counted = matches!(why, Release::Failed | Release::Lost);
        let delay = |attempts: u32, base: i64, max: i64| -> i64 {
            match why {
                Release::Failed if attempts > 0 => base.saturating_mul(i64::from(attempts)).min(max),
                Release::Later => base.saturating_mul(i64::from(attempts.max(1))).min(max),
                _ => 0,
            }
        };
        match lease {
            Lease::Turn { instance_id, stream, events, expires, stale, .. } => {
                let events = events.into_iter().filter(|(_, p)| !stale.contains(&p.inbox_id));
                self.free_stream_turn(stream);
                if let Some(key) = expires {
                    self.wakeups.remove(&key);
                }
                let (base, max) = (self.opts.backoff_base_ms, self.opts.backoff_max_ms);
                if let Some(slot) = self.instances.get_mut(&instance_id) {
                    slot.dispatch = Dispatch::Idle;
                    slot.pending.extend(events);
                    if counted {
                        slot.attempts += 1;
                        self.attempt_log.push(Attempts::Instance(instance_id.clone(), slot.attempts));
                    }
                    slot.not_before_ms = now_ms + delay(slot.attempts, base, max);
                }
                // Every event of the turn may have proved stale meanwhile (a resync from
                // the store while it was out): then nothing is left to keep the slot for.
                self.settle(&instance_id);
                Vec::new()
            }
            Lease::Activity { activity_id, stream, .. } => {
                if let Some(st) = self.streams.get_mut(&stream) {
                    st.activities = st.activities.saturating_sub(1);
                }
                let (base, max) = (self.opts.backoff_base_ms, self.opts.backoff_max_ms);
                let Some(slot) = self.activities.get_mut(&activity_id) else { return Vec::new() };
                slot.leased = None;
                if counted {
                    slot.attempts += 1;
                    self.attempt_log.push(Attempts::Activity(activity_id, slot.attempts));
                }
                let wait = delay(slot.attempts, base, max);
                if wait > 0 {
                    self.schedule(now_ms + wait, Wake::Activity(activity_id));
                } else {
                    self.requeue_activity(activity_id);
                }
                Vec::new()
            }
        }
    }

    /// Matches an activity result to its live lease; returns the activity id.
    pub fn begin_activity_completion(&mut self, token: &str) -> Option<i64> {
        match self.leases.get_mut(token) {
            Some(Lease::Activity { activity_id, phase, .. }) => phase.begin_completion().then_some(*activity_id),
            _ => None,
        }
    }

    /// Ends an activity lease after its result committed (or failed to).
    pub fn finish_activity(&mut self, token: &str, committed: bool, now_ms: i64) {
        if !committed {
            self.release(token, Release::Later, now_ms);
            return;
        }
        if let Some(Lease::Activity { activity_id, stream, .. }) = self.leases.remove(token) {
            if let Some(st) = self.streams.get_mut(&stream) {
                st.activities = st.activities.saturating_sub(1);
            }
            self.remove_activity(activity_id);
            if !self.parked_activities.is_empty() {
                self.unpark();
            }
        }
    }

    /// A worker without filters answered "not registered" for this lease: remember that
    /// its stream does not serve the name, and give the work back for another stream (no
    /// attempt counted). `false` when the stream declared filters (then the answer is a
    /// real failure) or the lease is unknown.
    pub fn reject_and_release(&mut self, token: &str, now_ms: i64) -> bool {
        let (stream, name, is_activity) = match self.leases.get(token) {
            Some(Lease::Turn { stream: Some(s), instance_id, .. }) => {
                let Some(slot) = self.instances.get(instance_id) else { return false };
                (*s, slot.name.clone(), false)
            }
            Some(Lease::Activity { stream, activity_id, .. }) if *stream != BUILTIN_STREAM => {
                let Some(a) = self.activities.get(activity_id) else { return false };
                (*stream, a.request.name.clone(), true)
            }
            _ => return false,
        };
        let Some(st) = self.streams.get_mut(&stream) else { return false };
        if st.rules.filters.is_some() {
            return false;
        }
        if is_activity {
            st.rejected_activities.insert(name);
        } else {
            st.rejected_orchestrations.insert(name);
        }
        if let Some(Lease::Turn { phase, .. } | Lease::Activity { phase, .. }) = self.leases.get_mut(token) {
            *phase = LeasePhase::Out;
        }
        self.release(token, Release::Retry, now_ms);
        true
    }

    /// Whether a stream's worker fetches large histories with `StreamInstanceHistory`.
    pub fn streams_history(&self, stream: StreamId) -> bool {
        self.streams.get(&stream).is_some_and(|s| s.rules.history_streaming)
    }

    /// Hands out, once, the history snapshot a dispatched turn of the instance keeps for its
    /// worker to stream (`execution_id`: only if the turn is for that execution). Later calls
    /// find none: the store and cache hold the same history until the turn commits, so the
    /// snapshot need not outlive its one use.
    pub fn take_turn_history(
        &mut self,
        instance_id: &str,
        execution_id: Option<&str>,
    ) -> Option<super::cache::SharedHistory> {
        let token = self.instances.get(instance_id)?.dispatch.token()?;
        match self.leases.get_mut(token) {
            Some(Lease::Turn { context: Some(ctx), .. })
                if execution_id.is_none_or(|e| e == ctx.info.execution_id) && !ctx.history.is_empty() =>
            {
                Some(std::mem::take(&mut ctx.history))
            }
            _ => None,
        }
    }

    /// The live turn token of an instance (for workers that send no completion token).
    pub fn turn_token_of(&self, instance_id: &str) -> Option<String> {
        self.instances.get(instance_id).and_then(|s| s.dispatch.token()).map(str::to_string)
    }

    /// The live activity token for (instance, task id), for workers without tokens.
    pub fn activity_token_of(&self, instance_id: &str, task_id: i32) -> Option<String> {
        self.instance_activities
            .get(instance_id)?
            .iter()
            .filter_map(|id| self.activities.get(id))
            .find(|a| a.leased.is_some() && a.request.task_id == task_id)
            .and_then(|a| a.leased.clone())
    }

    /// Counts changed since the last call, to be persisted.
    pub fn take_attempt_log(&mut self) -> Vec<Attempts> {
        std::mem::take(&mut self.attempt_log)
    }

    /// Restores a count recorded before a restart (after the work itself was added).
    pub fn restore_attempts(&mut self, a: &Attempts) {
        match a {
            Attempts::Instance(id, n) => {
                if let Some(slot) = self.instances.get_mut(id) {
                    slot.attempts = slot.attempts.max(*n);
                }
                self.enqueue_instance(id);
            }
            Attempts::Activity(id, n) => {
                if let Some(slot) = self.activities.get_mut(id) {
                    slot.attempts = slot.attempts.max(*n);
                }
            }
        }
    }

    /// Puts back a poison activity whose failure could not be recorded (the store
    /// failed); it becomes poison again after the back-off.
    pub fn restore_poison_activity(&mut self, a: QueuedActivity, attempts: u32, now_ms: i64) {
        let id = a.id;
        self.add_activity(a);
        if let Some(slot) = self.activities.get_mut(&id) {
            slot.attempts = attempts;
        }
        self.ready_activities.retain(|x| *x != id);
        self.ready_builtin.retain(|x| *x != id);
        let at = now_ms + self.opts.backoff_max_ms;
        self.schedule(at, Wake::Activity(id));
    }

    /// The latest checkpoints of an instance's built-in activities, by task id (what a
    /// durable HTTP call is polling; shown by the dashboard).
    pub fn builtin_progress(&self, instance_id: &str) -> Vec<(i32, String)> {
        self.instance_activities
            .get(instance_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.activities.get(id))
            .filter_map(|a| a.progress.clone().map(|p| (a.request.task_id, p)))
            .collect()
    }

    /// Remembers a built-in activity's latest checkpoint (already persisted).
    pub fn set_activity_progress(&mut self, activity_id: i64, progress: String) {
        if let Some(slot) = self.activities.get_mut(&activity_id) {
            slot.progress = Some(progress);
        }
    }

    /// The request of a leased activity.
    pub fn activity_request(&self, activity_id: i64) -> Option<&ActivityRequest> {
        self.activities.get(&activity_id).map(|a| &a.request)
    }

    /// Counters for logs and tests.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            streams: self.streams.len(),
            instances_in_memory: self.instances.len(),
            ready_instances: self.ready.len(),
            parked_instances: self.parked.len(),
            queued_activities: self.activities.len(),
            leases: self.leases.len(),
            wakeups: self.wakeups.len(),
            payload_bytes: self.payload_meter.load(std::sync::atomic::Ordering::Relaxed),
            leases_expired: self.leases_expired,
        }
    }

    /// Instance ids with pending events that no connected stream accepts.
    pub fn parked_instances(&self) -> HashSet<String> {
        self.parked.iter().cloned().collect()
    }

    /// Each connected work-item stream: its caps, filters and what it holds now.
    pub fn stream_views(&self) -> Vec<StreamView> {
        self.streams
            .iter()
            .map(|(id, s)| StreamView {
                id: *id,
                max_orchestrations: s.rules.max_orchestrations,
                max_activities: s.rules.max_activities,
                orchestrations: s.orchestrations,
                activities: s.activities,
                filters: s.rules.filters.clone(),
            })
            .collect()
    }
}

/// One connected work-item stream, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamView {
    pub id: StreamId,
    pub max_orchestrations: usize,
    pub max_activities: usize,
    /// Orchestration turns and activities it holds now.
    pub orchestrations: usize,
    pub activities: usize,
    /// `None`: the worker sent no filters (it takes everything).
    pub filters: Option<WorkItemFilters>,
}

/// [`Scheduler::stats`] and [`Scheduler::stream_views`] read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSnapshot {
    pub stats: SchedulerStats,
    pub streams: Vec<StreamView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedulerStats {
    pub streams: usize,
    pub instances_in_memory: usize,
    pub ready_instances: usize,
    pub parked_instances: usize,
    pub queued_activities: usize,
    pub leases: usize,
    pub wakeups: usize,
    /// Estimated bytes of event payloads held in memory.
    pub payload_bytes: usize,
    /// Turn leases that timed out, since start.
    pub leases_expired: u64,
}

/// Where the scheduler holds each event and activity, and every broken internal rule:
/// what the randomized simulation checks after each step.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Audit {
    /// Inbox id → (instance, places it is held: "pending", "leased", "waiting").
    pub events: HashMap<i64, (String, Vec<&'static str>)>,
    /// Activity id → places ("leased", "queued", "waiting").
    pub activities: HashMap<i64, Vec<&'static str>>,
    pub problems: Vec<String>,
}

#[cfg(test)]
impl Scheduler {
    /// One instance's dispatch state, for failure reports.
    pub(crate) fn describe(&self, instance_id: &str) -> String {
        let Some(slot) = self.instances.get(instance_id) else { return "no slot".into() };
        let lease = slot.dispatch.token().and_then(|t| self.leases.get(t)).map(|l| match l {
            Lease::Turn { stream, phase, context, events, expires, .. } => format!(
                "turn on stream {stream:?} phase={phase:?} sent={} expires={expires:?} (wake-up kept: {}) events={:?}",
                context.is_some(),
                expires.is_some_and(|k| self.wakeups.contains_key(&k)),
                events.iter().map(|(_, p)| p.inbox_id).collect::<Vec<_>>()
            ),
            Lease::Activity { .. } => "activity?".into(),
        });
        format!(
            "gate={:?} pending={:?} lease={lease:?} attempts={} not_before={} dispatch={:?} in_ready={} streams={:?}",
            slot.gate,
            slot.pending.keys().collect::<Vec<_>>(),
            slot.attempts,
            slot.not_before_ms,
            slot.dispatch,
            self.ready.contains(&instance_id.to_string()),
            self.streams.iter().map(|(id, s)| (*id, s.orchestrations, s.rules.max_orchestrations)).collect::<Vec<_>>()
        )
    }

    pub(crate) fn audit(&self) -> Audit {
        let mut a = Audit::default();
        let place = |a: &mut Audit, instance: &str, id: i64, at: &'static str| {
            a.events.entry(id).or_insert_with(|| (instance.to_string(), Vec::new())).1.push(at);
        };
        let mut per_stream: HashMap<StreamId, (usize, usize)> = HashMap::new();
        for (token, lease) in &self.leases {
            match lease {
                Lease::Turn { instance_id, stream, events, .. } => {
                    for (_, p) in events {
                        place(&mut a, instance_id, p.inbox_id, "leased");
                    }
                    if let Some(st) = stream {
                        per_stream.entry(*st).or_default().0 += 1;
                    }
                    match self.instances.get(instance_id) {
                        Some(slot) if slot.dispatch.token() == Some(token.as_str()) => {}
                        _ => a.problems.push(format!("turn lease of '{instance_id}' not recorded on its slot")),
                    }
                }
                Lease::Activity { activity_id, stream, .. } => {
                    a.activities.entry(*activity_id).or_default().push("leased");
                    if *stream != BUILTIN_STREAM {
                        per_stream.entry(*stream).or_default().1 += 1;
                    }
                    match self.activities.get(activity_id) {
                        Some(slot) if slot.leased.as_deref() == Some(token.as_str()) => {}
                        _ => a.problems.push(format!("activity lease {activity_id} not recorded on its slot")),
                    }
                }
            }
        }
        for (id, st) in &self.streams {
            let (turns, acts) = per_stream.get(id).copied().unwrap_or_default();
            if (turns, acts) != (st.orchestrations, st.activities) {
                a.problems.push(format!(
                    "stream {id} counts ({}, {}) but holds ({turns}, {acts}) leases",
                    st.orchestrations, st.activities
                ));
            }
        }
        let instance_wakes: HashSet<&str> = self
            .wakeups
            .values()
            .filter_map(|w| match w {
                Wake::Instance(id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        for (key, w) in &self.wakeups {
            match w {
                Wake::Event(e) => {
                    place(&mut a, &e.0, (e.2).1, "waiting");
                    if !self.instance_wakes.get(&e.0).is_some_and(|k| k.contains(key)) {
                        a.problems.push(format!("timer {key:?} of '{}' missing from the index", e.0));
                    }
                }
                Wake::Activity(id) => a.activities.entry(*id).or_default().push("waiting"),
                _ => {}
            }
        }
        for d in self.timer_load.iter().flat_map(|l| &l.gap) {
            place(&mut a, &d.instance_id, d.inbox_id, "loading");
        }
        for (id, slot) in &self.instances {
            for p in slot.pending.values() {
                place(&mut a, id, p.inbox_id, "pending");
            }
            match &slot.dispatch {
                Dispatch::Leased(token) => {
                    if !self.leases.contains_key(token) {
                        a.problems.push(format!("'{id}' is marked leased by a lease that does not exist"));
                    }
                    continue;
                }
                Dispatch::Ready if !self.ready.contains(id) => {
                    a.problems.push(format!("'{id}' is marked ready but is not in the ready queue"))
                }
                Dispatch::Parked if !self.parked.contains(id) => {
                    a.problems.push(format!("'{id}' is marked parked but is not parked"))
                }
                _ => {}
            }
            if slot.pending.is_empty() {
                a.problems.push(format!("idle slot of '{id}' kept in memory"));
                continue;
            }
            let runnable = slot.has_control() || slot.attempts >= self.opts.max_attempts || !slot.held();
            let queued = matches!(slot.dispatch, Dispatch::Ready | Dispatch::Parked) || self.ready_control.contains(id);
            if runnable && !queued && !instance_wakes.contains(id.as_str()) {
                a.problems.push(format!("'{id}' has runnable events but is neither leased, queued nor waiting"));
            }
            if slot.gate == Gate::AwaitingStart && !slot.has_start() {
                let start_coming = self
                    .wakeups
                    .values()
                    .any(|w| matches!(w, Wake::Event(e) if e.0 == *id && (e.2).0 == Priority::Start));
                if !start_coming {
                    a.problems.push(format!("'{id}' waits for a start event that is nowhere"));
                }
            }
        }
        let indexed_wakes: usize = self.instance_wakes.values().map(BTreeSet::len).sum();
        let event_wakes = self.wakeups.values().filter(|w| matches!(w, Wake::Event(_))).count();
        if indexed_wakes != event_wakes {
            a.problems.push(format!("{indexed_wakes} timers indexed, {event_wakes} scheduled"));
        }
        let indexed_activities: usize = self.instance_activities.values().map(BTreeSet::len).sum();
        if indexed_activities != self.activities.len() {
            a.problems.push(format!("{indexed_activities} activities indexed, {} queued", self.activities.len()));
        }
        for (id, slot) in &self.activities {
            if slot.leased.is_none() {
                let queued = self.ready_activities.contains(id)
                    || self.parked_activities.contains(id)
                    || self.ready_builtin.contains(id);
                if queued {
                    a.activities.entry(*id).or_default().push("queued");
                }
            }
        }
        a
    }
}

fn unreachable_slot() {
    tracing::error!("scheduler lost track of an instance it was leasing; this is a bug");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events;
    use duro_proto::{OrchestrationFilter, OrchestrationInstance, OrchestrationStatus};

    const NOW: i64 = 1_000_000;

    fn opts() -> SchedulerOptions {
        SchedulerOptions {
            max_attempts: 3,
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
            turn_lease_ms: 5000,
            max_response_bytes: 1000,
            max_payload_bytes: 1 << 20,
        }
    }

    fn target(name: &str) -> Target {
        Target { name: name.into(), version: None, status: OrchestrationStatus::Running }
    }

    fn delivered(id: i64, instance: &str, name: &str, visible_at: i64, event: HistoryEvent) -> Delivered {
        Delivered {
            inbox_id: id,
            instance_id: instance.into(),
            execution_id: None,
            priority: Priority::Normal,
            visible_at_ms: visible_at,
            event,
            target: target(name),
        }
    }

    fn raised(id: i64, instance: &str) -> Delivered {
        delivered(id, instance, "Orch", NOW, events::event_raised(NOW, "e".into(), None))
    }

    fn stream(s: &mut Scheduler, rules: StreamRules) -> (StreamId, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (s.add_stream(rules, tx), rx)
    }

    fn rules(cap: usize) -> StreamRules {
        StreamRules { max_orchestrations: cap, max_activities: cap, filters: None, ..Default::default() }
    }

    fn turns(a: &[Assignment]) -> Vec<&TurnLease> {
        a.iter()
            .filter_map(|x| match x {
                Assignment::Turn(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    fn activity(id: i64, name: &str) -> QueuedActivity {
        QueuedActivity {
            id,
            request: ActivityRequest {
                name: name.into(),
                task_id: id as i32,
                orchestration_instance: Some(OrchestrationInstance { instance_id: "i".into(), execution_id: None }),
                ..Default::default()
            },
            progress: None,
        }
    }

    #[test]
    fn no_stream_no_dispatch_and_work_waits() {
        let mut s = Scheduler::new(opts());
        s.add_event(raised(1, "a"), NOW);
        assert!(s.assign(NOW).is_empty());
        let (_id, _rx) = stream(&mut s, rules(10));
        let a = s.assign(NOW);
        assert_eq!(turns(&a).len(), 1);
        assert_eq!(turns(&a)[0].instance_id, "a");
    }

    #[test]
    fn one_turn_per_instance_and_later_events_wait_for_the_next_turn() {
        let mut s = Scheduler::new(opts());
        let (sid, _rx) = stream(&mut s, rules(10));
        s.add_event(raised(1, "a"), NOW);
        let a = s.assign(NOW);
        let lease = turns(&a)[0].clone();
        assert_eq!(lease.kind, TurnKind::Worker(sid));
        s.add_event(raised(2, "a"), NOW);
        assert!(s.assign(NOW).is_empty(), "a turn is in flight");
        s.finish_turn(&lease.token, Vec::new(), false, None);
        let a = s.assign(NOW);
        let next = turns(&a)[0];
        assert_eq!(next.events.len(), 1);
        assert_eq!(next.events[0].1.inbox_id, 2);
        assert_ne!(next.token, lease.token, "every dispatch gets a fresh token");
    }

    #[test]
    fn events_are_ordered_start_then_carryover_then_arrival() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        s.add_event(raised(5, "a"), NOW);
        let mut carry = raised(9, "a");
        carry.priority = Priority::Carryover;
        s.add_event(carry, NOW);
        let mut start = raised(7, "a");
        start.priority = Priority::Start;
        s.add_event(start, NOW);
        let a = s.assign(NOW);
        let ids: Vec<i64> = turns(&a)[0].events.iter().map(|(_, p)| p.inbox_id).collect();
        assert_eq!(ids, [7, 9, 5]);
    }

    #[test]
    fn future_events_wait_for_their_time() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        s.add_event(delivered(1, "a", "Orch", NOW + 500, events::event_raised(NOW, "t".into(), None)), NOW);
        assert!(s.assign(NOW).is_empty());
        assert_eq!(s.next_wakeup_ms(), Some(NOW + 500));
        s.fire_due(NOW + 499);
        assert!(s.assign(NOW + 499).is_empty());
        s.fire_due(NOW + 500);
        assert_eq!(turns(&s.assign(NOW + 500)).len(), 1);
    }

    fn timer(id: i64, instance: &str, at: i64) -> Delivered {
        delivered(id, instance, "Orch", at, events::event_raised(NOW, "t".into(), None))
    }

    /// Inbox ids held as timer wake-ups.
    fn waiting(s: &Scheduler) -> Vec<i64> {
        let mut ids: Vec<i64> = s
            .wakeups
            .values()
            .filter_map(|w| match w {
                Wake::Event(e) => Some((e.2).1),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn timers_beyond_the_horizon_stay_in_the_store_until_their_window_is_read() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        s.set_timer_horizon(NOW + 60_000);
        s.add_event(timer(1, "a", NOW + 30_000), NOW);
        s.add_event(timer(2, "b", NOW + 86_400_000), NOW);
        assert_eq!(waiting(&s), [1], "only the timer due within the horizon is held");
        assert_eq!(s.stats().instances_in_memory, 0);
        // Not yet: the horizon is that far already.
        assert_eq!(s.begin_timer_load(NOW, 60_000), None);
        let window = s.begin_timer_load(NOW + 86_400_000 - 1000, 60_000);
        assert_eq!(window, Some((NOW + 60_000, NOW + 86_400_000 + 59_000)));
        assert_eq!(s.begin_timer_load(NOW + 86_400_000, 60_000), None, "one read at a time");
        // The store's read finds row 2 (and row 9 of a finished window's neighbour is outside it).
        s.finish_timer_load(vec![timer(2, "b", NOW + 86_400_000), timer(9, "c", NOW + 90_000_000)], 2, NOW);
        assert_eq!(waiting(&s), [1, 2]);
        s.fire_due(NOW + 86_400_000);
        let a = s.assign(NOW + 86_400_000);
        let mut fired: Vec<&str> = turns(&a).iter().map(|t| t.instance_id.as_str()).collect();
        fired.sort_unstable();
        assert_eq!(fired, ["a", "b"]);
    }

    #[test]
    fn a_row_committed_while_its_window_is_read_is_held_once() {
        let mut s = Scheduler::new(opts());
        s.set_timer_horizon(NOW + 60_000);
        let (after, through) = s.begin_timer_load(NOW + 30_000, 60_000).expect("a window");
        assert_eq!((after, through), (NOW + 60_000, NOW + 90_000));
        // Registered while the read runs: row 3 was committed before it (the read has it
        // too), row 4 after it (the read does not).
        s.add_event(timer(3, "a", NOW + 70_000), NOW);
        s.add_event(timer(4, "b", NOW + 80_000), NOW);
        assert!(waiting(&s).is_empty(), "they wait for the read");
        s.finish_timer_load(vec![timer(3, "a", NOW + 70_000)], 3, NOW);
        assert_eq!(waiting(&s), [3, 4]);
        // A late registration of a row the read found is a copy; a later row is not.
        s.add_event(timer(3, "a", NOW + 70_000), NOW);
        s.add_event(timer(5, "c", NOW + 75_000), NOW);
        assert_eq!(waiting(&s), [3, 4, 5]);
        assert!(s.audit().problems.is_empty(), "{:?}", s.audit().problems);
    }

    #[test]
    fn rows_deleted_while_their_window_is_read_do_not_come_back() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        s.set_timer_horizon(NOW + 60_000);
        s.add_event(raised(1, "a"), NOW);
        s.begin_timer_load(NOW + 30_000, 60_000).expect("a window");
        s.add_event(timer(2, "a", NOW + 70_000), NOW);
        // The instance finishes meanwhile: its rows up to 2 are deleted.
        let t = turns(&s.assign(NOW))[0].token.clone();
        s.finish_turn(&t, Vec::new(), false, Some(2));
        // The read ran before the deletion and still holds row 2.
        s.finish_timer_load(vec![timer(2, "a", NOW + 70_000)], 2, NOW);
        assert!(waiting(&s).is_empty(), "{:?}", waiting(&s));
    }

    #[test]
    fn a_resync_holds_the_timers_within_the_horizon_and_leaves_the_rest_to_the_store() {
        let mut s = Scheduler::new(opts());
        s.set_timer_horizon(NOW + 60_000);
        s.add_event(timer(1, "a", NOW + 10_000), NOW);
        s.resync("a", vec![timer(1, "a", NOW + 10_000), timer(2, "a", NOW + 3_600_000)], 2, NOW);
        assert_eq!(waiting(&s), [1]);
        // The far row is read with its window even though the resync accounted for it.
        s.begin_timer_load(NOW + 3_600_000, 60_000).expect("a window");
        s.finish_timer_load(vec![timer(2, "a", NOW + 3_600_000)], 2, NOW);
        assert_eq!(waiting(&s), [1, 2]);
    }

    #[test]
    fn an_event_visible_while_the_horizon_lags_is_held_at_once_and_not_read_again() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        s.set_timer_horizon(NOW + 1000);
        // The clock ran past the horizon (its read is late): a raised event is visible now.
        let later = NOW + 5000;
        s.add_event(delivered(1, "a", "Orch", later, events::event_raised(later, "e".into(), None)), later);
        s.add_event(timer(2, "a", later + 500), later);
        assert_eq!(s.pending_count("a"), 1, "visible: held although beyond the horizon");
        assert!(waiting(&s).is_empty(), "the timer is not visible yet: the store keeps it");
        s.begin_timer_load(later, 1000).expect("a window");
        // The read finds both rows.
        s.finish_timer_load(
            vec![
                delivered(1, "a", "Orch", later, events::event_raised(later, "e".into(), None)),
                timer(2, "a", later + 500),
            ],
            2,
            later,
        );
        assert_eq!(s.pending_count("a"), 1);
        assert_eq!(waiting(&s), [2]);
        let a = s.assign(later);
        assert_eq!(turns(&a)[0].events.len(), 1, "the event is held once");
        assert!(s.audit().problems.is_empty(), "{:?}", s.audit().problems);
    }

    /// What one instance with one pending event costs in the scheduler (a burst of raised events
    /// waiting for their turns): RSS growth over 300,000 of them. A measurement, not a check:
    /// `cargo test -p duro --lib scheduler::tests::pending_cost -- --ignored --nocapture --test-threads 1`.
    #[test]
    #[ignore]
    fn pending_cost() {
        let rss = crate::engine::cache::tests::rss_kib;
        let n = 300_000;
        let mut s = Scheduler::new(SchedulerOptions { max_payload_bytes: 0, ..opts() });
        let before = rss();
        for i in 0..n {
            s.add_event(raised(i + 1, &format!("idle-e-{i}")), NOW);
        }
        let grown = (rss() - before) * 1024;
        println!("{n} pending instances: {} B each (payloads not held)", grown / n as usize);
        // The same number of instances waiting on a 30-day timer, held (no horizon: PostgreSQL,
        // or SQLite before the horizon), with the timer's payload in memory as the budget allows.
        let mut s = Scheduler::new(SchedulerOptions { max_payload_bytes: 64 << 20, ..opts() });
        let before = rss();
        for i in 0..n {
            s.add_event(timer(i + 1, &format!("idle-t-{i}"), NOW + 30 * 86_400_000), NOW);
        }
        let grown = (rss() - before) * 1024;
        println!("{n} held timers: {} B each; beyond a horizon: none held", grown / n as usize);
    }

    #[test]
    fn without_a_horizon_every_timer_is_held() {
        let mut s = Scheduler::new(opts());
        s.add_event(timer(1, "a", NOW + 86_400_000), NOW);
        assert_eq!(waiting(&s), [1]);
        assert_eq!(s.timer_horizon(), None);
        assert_eq!(s.begin_timer_load(NOW, 60_000), None);
    }

    #[test]
    fn an_unanswered_turn_expires_is_counted_and_goes_out_again() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        s.add_event(raised(1, "a"), NOW);
        let first = turns(&s.assign(NOW))[0].token.clone();
        s.fire_due(NOW + 4999);
        assert_eq!(s.stats().leases_expired, 0);
        s.fire_due(NOW + 5000);
        assert_eq!(s.stats().leases_expired, 1);
        let a = s.assign(NOW + 5000);
        let again = turns(&a);
        assert_eq!(again.len(), 1, "the expired turn is dispatched again");
        assert_ne!(again[0].token, first);
    }

    #[test]
    fn a_workers_caps_are_held_to_the_server_maximum() {
        let req = GetWorkItemsRequest {
            max_concurrent_orchestration_work_items: i32::MAX,
            max_concurrent_activity_work_items: 0,
            ..Default::default()
        };
        let rules = StreamRules::from_request(&req, 1000);
        assert_eq!((rules.max_orchestrations, rules.max_activities), (MAX_STREAM_CAP, 1000));
    }

    #[test]
    fn payloads_beyond_the_budget_are_kept_as_stubs_and_released_when_dropped() {
        let mut s = Scheduler::new(SchedulerOptions { max_payload_bytes: 200, ..opts() });
        let big = delivered(1, "a", "Orch", NOW, events::event_raised(NOW, "e".into(), Some("x".repeat(500))));
        s.add_event(big, NOW);
        s.add_event(raised(2, "a"), NOW);
        s.add_event(delivered(3, "a", "Orch", NOW, events::execution_terminated(NOW, None, false)), NOW);
        assert!(s.stats().payload_bytes <= 200, "{}", s.stats().payload_bytes);
        let (_sid, _rx) = stream(&mut s, rules(10));
        let a = s.assign(NOW);
        let t = turns(&a)[0].clone();
        assert_eq!(t.kind, TurnKind::Control, "a stub still says what kind of event it is");
        assert!(s.begin_internal_completion(&t.token));
        s.finish_turn(&t.token, Vec::new(), false, None);
        drop((t, a));
        let a = s.assign(NOW);
        let events = &turns(&a)[0].events;
        assert!(events[0].1.payload.is_none(), "the 500-byte payload was over budget");
        assert!(events[1].1.event().is_some(), "the small one fits");
        let token = turns(&a)[0].token.clone();
        drop(a);
        s.finish_turn(&token, Vec::new(), false, None);
        assert_eq!(s.stats().payload_bytes, 0, "every copy dropped, nothing charged");
    }

    #[test]
    fn stream_caps_are_honoured() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(2));
        for i in 0..5 {
            s.add_event(raised(i, &format!("i{i}")), NOW);
        }
        let first = s.assign(NOW);
        assert_eq!(turns(&first).len(), 2);
        s.finish_turn(&turns(&first)[0].token, Vec::new(), false, Some(i64::MAX));
        assert_eq!(turns(&s.assign(NOW)).len(), 1);
    }

    #[test]
    fn filters_route_by_name_and_version() {
        let mut s = Scheduler::new(opts());
        let only_b = StreamRules {
            max_orchestrations: 10,
            max_activities: 10,
            filters: Some(WorkItemFilters {
                orchestrations: vec![OrchestrationFilter { name: "B".into(), versions: vec!["2".into()] }],
                activities: vec![],
                entities: vec![],
            }),
            history_streaming: false,
        };
        let (sid, _rx) = stream(&mut s, only_b);
        s.add_event(delivered(1, "a", "A", NOW, events::event_raised(NOW, "e".into(), None)), NOW);
        let mut b = delivered(2, "b", "B", NOW, events::event_raised(NOW, "e".into(), None));
        b.target.version = Some("2".into());
        s.add_event(b, NOW);
        let mut b1 = delivered(3, "b1", "B", NOW, events::event_raised(NOW, "e".into(), None));
        b1.target.version = Some("1".into());
        s.add_event(b1, NOW);
        let a = s.assign(NOW);
        let got: Vec<_> = turns(&a).iter().map(|t| (t.instance_id.clone(), t.kind)).collect();
        assert_eq!(got, [("b".to_string(), TurnKind::Worker(sid))]);
        assert_eq!(s.parked_instances().len(), 2);
        s.add_activity(activity(1, "Anything"));
        assert!(s.assign(NOW).is_empty(), "an empty activity filter list accepts no activity");
        // A stream that takes everything picks up what was parked.
        let (all, _rx2) = stream(&mut s, rules(10));
        let a = s.assign(NOW);
        assert_eq!(turns(&a).len(), 2);
        assert!(turns(&a).iter().all(|t| t.kind == TurnKind::Worker(all)));
        assert!(a.iter().any(|x| matches!(x, Assignment::Activity { stream, .. } if *stream == all)));
    }

    #[test]
    fn an_instance_no_stream_accepts_is_parked_once() {
        let mut s = Scheduler::new(opts());
        let only_b = StreamRules {
            max_orchestrations: 10,
            max_activities: 10,
            filters: Some(WorkItemFilters {
                orchestrations: vec![OrchestrationFilter { name: "B".into(), versions: vec![] }],
                activities: vec![],
                entities: vec![],
            }),
            history_streaming: false,
        };
        let (_sid, _rx) = stream(&mut s, only_b);
        for i in 0..5 {
            s.add_event(raised(i, "a"), NOW);
            assert!(s.assign(NOW).is_empty());
        }
        assert_eq!(s.stats().parked_instances, 1, "every arrival parked the instance again");
    }

    #[test]
    fn continue_as_new_forgets_the_old_executions_timers_and_results() {
        let mut s = Scheduler::new(opts());
        let mut timer = delivered(1, "a", "Orch", NOW + 3_600_000, events::event_raised(NOW, "t".into(), None));
        timer.execution_id = Some("old".into());
        s.add_event(timer, NOW);
        let mut result = raised(2, "a");
        result.execution_id = Some("old".into());
        s.add_event(result, NOW);
        s.add_event(raised(3, "a"), NOW);
        s.forget_other_executions("a", "new");
        assert_eq!(s.stats().wakeups, 0, "the old execution's timer is gone from memory");
        let (_sid, _rx) = stream(&mut s, rules(10));
        let a = s.assign(NOW);
        let ids: Vec<i64> = turns(&a)[0].events.iter().map(|(_, p)| p.inbox_id).collect();
        assert_eq!(ids, [3], "only the event for any execution is kept");
    }

    #[test]
    fn an_activity_claimed_back_while_out_at_a_worker_keeps_its_lease() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        s.add_activity(activity(1, "Act"));
        assert_eq!(s.assign(NOW).len(), 1);
        // Its lease in the shared store ran out and this sidecar claimed it again.
        s.add_activity(activity(1, "Act"));
        assert!(s.assign(NOW).is_empty(), "not dispatched twice");
        let audit = s.audit();
        assert!(audit.problems.is_empty(), "{:?}", audit.problems);
        assert_eq!(audit.activities.get(&1).map(Vec::len), Some(1));
    }

    #[test]
    fn lost_stream_redelivers_its_leases_to_another() {
        let mut s = Scheduler::new(opts());
        let (one, _rx1) = stream(&mut s, rules(10));
        s.add_event(raised(1, "a"), NOW);
        s.add_activity(activity(1, "Act"));
        let a = s.assign(NOW);
        assert_eq!(a.len(), 2);
        let (two, _rx2) = stream(&mut s, rules(10));
        assert!(s.assign(NOW).is_empty());
        s.remove_stream(one, NOW);
        let a = s.assign(NOW);
        assert_eq!(a.len(), 2);
        for x in &a {
            match x {
                Assignment::Turn(t) => {
                    assert_eq!(t.kind, TurnKind::Worker(two));
                    assert_eq!(t.attempts, 1);
                    assert_eq!(t.events[0].1.inbox_id, 1, "the same events come back");
                }
                Assignment::Activity { stream, activity_id, .. } => assert_eq!((*stream, *activity_id), (two, 1)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn stale_tokens_are_rejected() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        s.add_event(raised(1, "a"), NOW);
        let a = s.assign(NOW);
        let token = turns(&a)[0].token.clone();
        assert!(s.begin_turn_completion(&token, vec![], false).is_none(), "not dispatched yet");
        s.release(&token, Release::Lost, NOW);
        assert!(s.begin_turn_completion(&token, vec![], false).is_none());
        assert!(s.begin_turn_completion("forged", vec![], false).is_none());
    }

    fn dispatch(s: &mut Scheduler, lease: &TurnLease, sid: StreamId) {
        dispatch_with(s, lease, sid, Default::default());
    }

    fn dispatch_with(s: &mut Scheduler, lease: &TurnLease, sid: StreamId, history: super::super::cache::SharedHistory) {
        let ctx = TurnContext {
            info: crate::core::InstanceInfo {
                instance_id: lease.instance_id.clone(),
                execution_id: "e".into(),
                name: "Orch".into(),
                version: None,
                status: OrchestrationStatus::Running,
                input: None,
                parent: None,
                tags: Default::default(),
                trace_context: None,
            },
            history_len: 0,
            new_events: vec![],
            shown: vec![],
            deferred: vec![],
            always_consumed: vec![],
            history,
        };
        assert!(s.send_turn(&lease.token, sid, ctx, duro_proto::WorkItem::default()));
    }

    #[test]
    fn a_streaming_turns_history_is_handed_out_once_for_its_execution() {
        let mut s = Scheduler::new(opts());
        let streaming = StreamRules { history_streaming: true, ..rules(10) };
        let (sid, _rx) = stream(&mut s, streaming);
        assert!(s.streams_history(sid));
        s.add_event(raised(1, "a"), NOW);
        let a = s.assign(NOW);
        let lease = turns(&a)[0].clone();
        assert_eq!(s.take_turn_history("a", None), None, "not dispatched yet");
        let history = super::super::cache::SharedHistory::from(vec![events::event_raised(NOW, "x".into(), None)]);
        dispatch_with(&mut s, &lease, sid, history.clone());
        assert_eq!(s.take_turn_history("a", Some("other")), None, "another execution");
        assert_eq!(s.take_turn_history("a", Some("e")), Some(history));
        assert_eq!(s.take_turn_history("a", Some("e")), None, "taken once; later requests read the store");
        assert_eq!(s.take_turn_history("b", None), None);
        let (plain, _rx2) = stream(&mut s, rules(10));
        assert!(!s.streams_history(plain));
    }

    #[test]
    fn completion_is_accepted_once_and_chunks_accumulate() {
        let mut s = Scheduler::new(opts());
        let (sid, mut rx) = stream(&mut s, rules(10));
        s.add_event(raised(1, "a"), NOW);
        let a = s.assign(NOW);
        let lease = turns(&a)[0].clone();
        dispatch(&mut s, &lease, sid);
        assert!(rx.try_recv().is_ok(), "the work item went out on the stream");
        let action = |id| OrchestratorAction { id, ..Default::default() };
        assert_eq!(s.begin_turn_completion(&lease.token, vec![action(1)], true), Some(Completion::Partial));
        match s.begin_turn_completion(&lease.token, vec![action(2)], false) {
            Some(Completion::Complete(f)) => {
                assert_eq!(f.actions.iter().map(|a| a.id).collect::<Vec<_>>(), [1, 2]);
                assert!(f.context.is_some());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.begin_turn_completion(&lease.token, vec![], false).is_none(), "second completion refused");
        // A stream loss while completing does not take the turn away.
        s.remove_stream(sid, NOW);
        assert_eq!(s.stats().leases, 1);
    }

    #[test]
    fn chunks_beyond_the_response_limit_are_refused_and_dropped() {
        let mut s = Scheduler::new(opts());
        let (sid, _rx) = stream(&mut s, rules(10));
        s.add_event(raised(1, "a"), NOW);
        let a = s.assign(NOW);
        let lease = turns(&a)[0].clone();
        dispatch(&mut s, &lease, sid);
        let big = |id| OrchestratorAction {
            id,
            orchestrator_action_type: Some(duro_proto::orchestrator_action::OrchestratorActionType::ScheduleTask(
                duro_proto::ScheduleTaskAction { name: "x".repeat(400), ..Default::default() },
            )),
        };
        assert_eq!(s.begin_turn_completion(&lease.token, vec![big(1), big(2)], true), Some(Completion::Partial));
        match s.begin_turn_completion(&lease.token, vec![big(3)], true) {
            Some(Completion::TooLarge(bytes)) => assert!(bytes > 1000),
            other => panic!("a third chunk passes the 1000-byte limit: {other:?}"),
        }
    }

    #[test]
    fn abandoned_turns_back_off_then_become_poison() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        s.add_event(raised(1, "a"), NOW);
        let mut now = NOW;
        for attempt in 0..3 {
            let a = s.assign(now);
            let t = turns(&a);
            assert_eq!(t.len(), 1, "attempt {attempt}");
            assert_eq!(t[0].kind, TurnKind::Worker(1));
            let token = t[0].token.clone();
            s.release(&token, Release::Failed, now);
            assert!(s.assign(now).is_empty(), "backs off after a failure");
            now += 1000;
            s.fire_due(now);
        }
        let a = s.assign(now);
        assert_eq!(turns(&a)[0].kind, TurnKind::Poison);
    }

    #[test]
    fn poison_activity_is_reported_not_redelivered() {
        let mut s = Scheduler::new(opts());
        s.add_activity(activity(9, "Crashy"));
        let mut now = NOW;
        for _ in 0..3 {
            let (sid, _rx) = stream(&mut s, rules(10));
            let a = s.assign(now);
            assert!(matches!(&a[..], [Assignment::Activity { activity_id: 9, .. }]));
            s.remove_stream(sid, now);
            now += 1;
        }
        let (_sid, _rx) = stream(&mut s, rules(10));
        let a = s.assign(now);
        assert!(matches!(&a[..], [Assignment::PoisonActivity { activity_id: 9, attempts: 3, .. }]));
    }

    #[test]
    fn control_events_run_without_a_worker_and_suspension_holds_events() {
        let mut s = Scheduler::new(opts());
        s.add_event(raised(1, "a"), NOW);
        s.add_event(delivered(2, "a", "Orch", NOW, events::execution_suspended(NOW, None)), NOW);
        let a = s.assign(NOW);
        let t = turns(&a)[0].clone();
        assert_eq!(t.kind, TurnKind::Control);
        assert_eq!(t.events.iter().map(|(_, p)| p.inbox_id).collect::<Vec<_>>(), [2], "only control events");
        assert!(s.begin_internal_completion(&t.token));
        s.finish_turn(&t.token, Vec::new(), true, None);
        let (_sid, _rx) = stream(&mut s, rules(10));
        assert!(s.assign(NOW).is_empty(), "suspended: event 1 is held");
        s.add_event(delivered(3, "a", "Orch", NOW, events::execution_resumed(NOW, None)), NOW);
        let a = s.assign(NOW);
        let t = turns(&a)[0].clone();
        assert_eq!(t.kind, TurnKind::Control);
        assert!(s.begin_internal_completion(&t.token));
        s.finish_turn(&t.token, Vec::new(), false, None);
        let a = s.assign(NOW);
        assert!(matches!(turns(&a)[0].kind, TurnKind::Worker(_)));
        assert_eq!(turns(&a)[0].events[0].1.inbox_id, 1, "the held event is delivered after resume");
    }

    #[test]
    fn events_for_an_instance_not_yet_started_wait_for_its_start() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        let mut start = raised(1, "a");
        start.priority = Priority::Start;
        start.visible_at_ms = NOW + 1000;
        start.target.status = OrchestrationStatus::Pending;
        s.add_event(start, NOW);
        let mut early = raised(2, "a");
        early.target.status = OrchestrationStatus::Pending;
        s.add_event(early, NOW);
        // The arrival's snapshot is not trusted: a turn is leased and the engine, reading
        // the store, finds the execution not started and holds the event behind the gate.
        let a = s.assign(NOW);
        assert_eq!(turns(&a).len(), 1);
        s.hold_turn(&turns(&a)[0].token, Gate::AwaitingStart);
        assert!(s.assign(NOW).is_empty(), "no turn without executionStarted");
        s.add_event(raised(3, "a"), NOW);
        assert!(s.assign(NOW).is_empty(), "later arrivals wait behind the same gate");
        s.fire_due(NOW + 1000);
        let a = s.assign(NOW + 1000);
        let ids: Vec<i64> = turns(&a)[0].events.iter().map(|(_, p)| p.inbox_id).collect();
        assert_eq!(ids, [1, 2, 3], "start first, then the early events");
        let token = turns(&a)[0].token.clone();
        s.finish_turn(&token, Vec::new(), false, None);
        s.add_event(raised(4, "a"), NOW + 1000);
        assert_eq!(turns(&s.assign(NOW + 1000)).len(), 1, "started: later events run at once");
    }

    /// Issue 13's stranding race: an event committed while the start turn was in flight
    /// (its snapshot says PENDING) is registered only after that turn finished and the
    /// instance's slot was dropped. It must still get a turn.
    #[test]
    fn an_arrival_registered_after_the_start_turn_finished_is_not_stranded() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        let mut start = raised(1, "a");
        start.priority = Priority::Start;
        start.target.status = OrchestrationStatus::Pending;
        s.add_event(start, NOW);
        let a = s.assign(NOW);
        let token = turns(&a)[0].token.clone();
        // The event commits now, against the PENDING instance...
        let mut event = raised(2, "a");
        event.target.status = OrchestrationStatus::Pending;
        // ...the start turn commits and finishes; the slot is idle and dropped...
        s.finish_turn(&token, Vec::new(), false, None);
        assert_eq!(s.stats().instances_in_memory, 0);
        // ...and only then is the event registered.
        s.add_event(event, NOW);
        let a = s.assign(NOW);
        assert_eq!(turns(&a).len(), 1, "the event gets a turn");
        assert_eq!(turns(&a)[0].events[0].1.inbox_id, 2);
    }

    /// Same race with suspension: the event committed while the instance was suspended
    /// and is registered after the resume turn dropped the slot.
    #[test]
    fn an_arrival_registered_after_a_resume_is_not_held() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        let mut event = raised(2, "a");
        event.target.status = OrchestrationStatus::Suspended;
        s.add_event(event, NOW);
        let a = s.assign(NOW);
        assert_eq!(turns(&a).len(), 1, "dispatched; the engine checks the status");
    }

    #[test]
    fn a_replacing_execution_keeps_only_events_registered_after_its_start() {
        let mut s = Scheduler::new(opts());
        s.add_event(raised(1, "a"), NOW);
        s.add_event(delivered(2, "a", "Orch", NOW + 5000, events::event_raised(NOW, "timer".into(), None)), NOW);
        // An event of the new execution registered before the create finished.
        s.add_event(raised(5, "a"), NOW);
        let mut start = raised(4, "a");
        start.priority = Priority::Start;
        start.execution_id = Some("new".into());
        s.replace_execution(start, NOW);
        assert_eq!(s.stats().wakeups, 0, "the old execution's timer is gone");
        let (_sid, _rx) = stream(&mut s, rules(10));
        let a = s.assign(NOW);
        let ids: Vec<i64> = turns(&a)[0].events.iter().map(|(_, p)| p.inbox_id).collect();
        assert_eq!(ids, [4, 5]);
    }

    #[test]
    fn resync_replaces_the_view_with_the_stores_rows() {
        let mut s = Scheduler::new(opts());
        s.add_event(raised(1, "a"), NOW);
        s.add_event(raised(2, "a"), NOW);
        s.add_event(raised(9, "a"), NOW);
        // The store holds 2 and 3 (1 is gone, 3 was never registered); 9 is newer than
        // the snapshot and stays.
        s.resync("a", vec![raised(2, "a"), raised(3, "a")], 8, NOW);
        let (_sid, _rx) = stream(&mut s, rules(10));
        let a = s.assign(NOW);
        let ids: Vec<i64> = turns(&a)[0].events.iter().map(|(_, p)| p.inbox_id).collect();
        assert_eq!(ids, [2, 3, 9]);
    }

    #[test]
    fn a_turn_given_back_after_a_resync_emptied_it_leaves_no_slot() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        s.add_event(raised(1, "a"), NOW);
        let a = s.assign(NOW);
        let token = turns(&a)[0].token.clone();
        // While the turn is out, the store shows the row gone (another sidecar ran it).
        s.resync("a", Vec::new(), 1, NOW);
        s.release(&token, Release::Lost, NOW);
        let audit = s.audit();
        assert!(audit.problems.is_empty(), "{:?}", audit.problems);
        assert!(s.is_quiet("a"), "nothing is held for the instance");
    }

    #[test]
    fn control_turns_are_not_held_back_by_missing_worker_capacity() {
        let mut s = Scheduler::new(opts());
        for i in 0..3 {
            s.add_event(raised(i, &format!("waiting{i}")), NOW);
        }
        assert!(s.assign(NOW).is_empty(), "no worker: nothing to run");
        s.add_event(delivered(9, "waiting2", "Orch", NOW, events::execution_terminated(NOW, None, false)), NOW);
        let a = s.assign(NOW);
        let t = turns(&a);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].instance_id.as_str(), t[0].kind), ("waiting2", TurnKind::Control));
    }

    #[test]
    fn unregistered_names_are_routed_away_from_filterless_streams() {
        let mut s = Scheduler::new(opts());
        let (first, _rx1) = stream(&mut s, rules(10));
        s.add_activity(activity(1, "OnlyElsewhere"));
        let a = s.assign(NOW);
        let token = match &a[..] {
            [Assignment::Activity { token, stream, .. }] => {
                assert_eq!(*stream, first);
                token.clone()
            }
            other => panic!("unexpected {other:?}"),
        };
        assert!(s.begin_activity_completion(&token).is_some());
        assert!(s.reject_and_release(&token, NOW));
        assert!(s.assign(NOW).is_empty(), "the only stream does not serve it: the activity waits");
        let (second, _rx2) = stream(&mut s, rules(10));
        match &s.assign(NOW)[..] {
            [Assignment::Activity { stream, activity_id: 1, .. }] => assert_eq!(*stream, second),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_stream_with_filters_cannot_reject_what_it_declared() {
        let mut s = Scheduler::new(opts());
        let declared = StreamRules {
            max_orchestrations: 10,
            max_activities: 10,
            filters: Some(WorkItemFilters {
                orchestrations: vec![],
                activities: vec![duro_proto::ActivityFilter { name: "A".into(), versions: vec![] }],
                entities: vec![],
            }),
            history_streaming: false,
        };
        let (_sid, _rx) = stream(&mut s, declared);
        s.add_activity(activity(1, "A"));
        let a = s.assign(NOW);
        let Assignment::Activity { token, .. } = &a[0] else { panic!("expected an activity") };
        assert!(s.begin_activity_completion(token).is_some());
        assert!(!s.reject_and_release(token, NOW));
    }

    #[test]
    fn builtin_activities_never_reach_a_worker() {
        let mut s = Scheduler::new(opts());
        s.set_builtin_names(["BuiltIn::HttpActivity".to_string()]);
        let (_sid, _rx) = stream(&mut s, rules(10));
        let mut a = activity(1, "BuiltIn::HttpActivity");
        a.progress = Some("{\"poll\":1}".into());
        s.add_activity(a);
        s.add_activity(activity(2, "Normal"));
        let got = s.assign(NOW);
        assert_eq!(got.len(), 2);
        let builtin = got.iter().find_map(|x| match x {
            Assignment::Builtin { activity_id, progress, token, .. } => {
                Some((*activity_id, progress.clone(), token.clone()))
            }
            _ => None,
        });
        let (id, progress, token) = builtin.expect("the built-in activity is run by the sidecar");
        assert_eq!((id, progress.as_deref()), (1, Some("{\"poll\":1}")));
        assert!(got.iter().any(|x| matches!(x, Assignment::Activity { activity_id: 2, .. })));
        // A failed run goes back to the built-in queue, never to a stream.
        s.release(&token, Release::Retry, NOW);
        assert!(matches!(&s.assign(NOW)[..], [Assignment::Builtin { activity_id: 1, .. }]));
    }

    #[test]
    fn finished_instances_are_forgotten_with_their_timers_and_activities() {
        let mut s = Scheduler::new(opts());
        let (_sid, _rx) = stream(&mut s, rules(10));
        s.add_event(raised(1, "i"), NOW);
        s.add_event(delivered(2, "i", "Orch", NOW + 10_000, events::event_raised(NOW, "t".into(), None)), NOW);
        let a = s.assign(NOW);
        let t = turns(&a)[0].clone();
        s.add_activity(activity(4, "Queued"));
        s.finish_turn(&t.token, Vec::new(), false, Some(i64::MAX));
        let st = s.stats();
        assert_eq!((st.instances_in_memory, st.wakeups, st.queued_activities, st.leases), (0, 0, 0, 0));
    }
}

#[cfg(test)]
mod timer_tests {
    use super::*;
    use crate::core::events;
    use duro_proto::OrchestrationStatus;

    fn future_event(id: i64, at: i64) -> Delivered {
        Delivered {
            inbox_id: id,
            instance_id: "i".into(),
            execution_id: None,
            priority: Priority::Normal,
            visible_at_ms: at,
            event: events::event_raised(0, "t".into(), None),
            target: Target { name: "O".into(), version: None, status: OrchestrationStatus::Running },
        }
    }

    #[test]
    fn timer_task_is_woken_only_for_an_earlier_wakeup() {
        let mut s = Scheduler::new(SchedulerOptions::default());
        assert_eq!(s.arm_timer(), None);
        assert!(!s.take_timer_dirty(), "nothing scheduled, nothing to wake");
        s.add_event(future_event(1, 5_000), 0);
        assert!(s.take_timer_dirty(), "first wake-up needs the timer");
        assert_eq!(s.arm_timer(), Some(5_000));
        s.add_event(future_event(2, 9_000), 0);
        assert!(!s.take_timer_dirty(), "a later wake-up does not disturb the armed timer");
        s.add_event(future_event(3, 1_000), 0);
        assert!(s.take_timer_dirty(), "an earlier wake-up re-arms");
        assert_eq!(s.arm_timer(), Some(1_000));
    }
}
