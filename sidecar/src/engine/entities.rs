//! Entity dispatch: the shell around [`crate::core::entity`].
//!
//! The store is the truth (`entities` rows and `entity_messages` queue rows); this module
//! keeps, for every entity with queued requests or a lock, its [`EntityState`] in memory,
//! rebuilt from the store at start-up. Flow: a committed request (client signal, an
//! orchestration's `sendEntityMessage`, another entity's signal) is added to its entity's
//! queue; [`Engine::pump_entities`] asks each idle entity for its next step and either
//! leases a batch of operations to a worker stream (`entityRequestV2`) or commits a lock
//! step itself; a worker's `CompleteEntityTask` goes through
//! [`EntityState::complete_batch`] and commits in one transaction (state, consumed rows,
//! replies, signals, new orchestrations). Only after the commit is memory updated and the
//! replies handed to the orchestration scheduler. A batch whose stream closes, that is
//! abandoned, or whose worker reports a whole-batch failure runs again after a back-off.
//!
//! Locks of orchestrations that end are released here. A lock belongs to one execution of
//! its owner, named by its critical section id (each execution makes its own): when an
//! execution ends (a terminal turn, a replacement, a restart under the same id, a lock grant
//! that finds no live owner) the sections of its held locks and queued lock requests are
//! marked ended; held ones are released and queued ones are dropped when they reach the head
//! of a queue. A rewound instance (the same execution, live again) gets its pending requests
//! back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use duro_proto::*;
use tokio::sync::mpsc;

use super::scheduler::{Outgoing as StreamItem, StreamId, StreamRules};
use super::{detached, Engine, EngineError};
use crate::core::entity::{
    self, BatchOutcome, Effects, EntityId, EntityState, Lock, OpResult, Outgoing, Queued, Request, Step,
};
use crate::core::{events, is_terminal, NewInstance, StartSpec};
use crate::store::*;

/// Back-off before a batch that came back without a result runs again.
const RETRY_MS: i64 = 1_000;

/// Whether an entity's stored state and lock have been read into its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Not read yet: nothing is dispatched for it (its state would be missing).
    No,
    Loading,
    Yes,
}

struct Slot {
    entity: EntityState,
    load: Load,
    /// Not dispatched before this time (after an abandoned or failed batch).
    retry_at: i64,
    /// A lock step is being committed by the sidecar.
    applying: bool,
    /// Deliveries of the current batch that came back without a result.
    attempts: u32,
}

struct EntityStream {
    sender: mpsc::UnboundedSender<StreamItem>,
    cap: usize,
    /// Entity names this stream serves; `None`: all.
    names: Option<HashSet<String>>,
    /// Entity names this stream (which sent no filters) answered "not registered" for.
    rejected: HashSet<String>,
    in_flight: usize,
}

struct EntityLease {
    entity_id: String,
    stream: StreamId,
    ops: Vec<Queued>,
    completing: bool,
}

/// Whether this sidecar dispatches entities. One process on its own store always does; on a
/// task hub shared by several sidecars exactly one (the holder of the hub's entity lease)
/// does, so an operation is not run by two sidecars' workers at once. Commits stay safe even
/// when two briefly overlap: a batch commits only if every queue row it consumed still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityRole {
    Sole,
    Leader,
    Follower,
}

/// In-memory entity dispatch state (behind the engine's mutex).
pub(super) struct EntityDispatch {
    slots: HashMap<String, Slot>,
    streams: BTreeMap<StreamId, EntityStream>,
    leases: HashMap<String, EntityLease>,
    /// Requests not visible yet (scheduled signals), by (visible_at, row id).
    delayed: BTreeMap<(i64, i64), QueuedEntityMessage>,
    /// Critical sections of executions that ended while holding (or asking for) entity
    /// locks: their locks are released, their lock requests dropped.
    ended_sections: HashSet<String>,
    /// When the timer task will wake next (`None`: it sleeps without a deadline).
    armed_at: Option<i64>,
    /// Deliveries without a result after which a batch's operations fail (poison).
    max_attempts: u32,
    /// The newest queue row added per entity in memory, so a refresh from the store (a
    /// shared task hub, where other sidecars queue requests) adds only rows not seen yet. It
    /// outlives the entity's slot: a refresh whose snapshot was read before the entity
    /// consumed its rows and went idle must not bring those rows back. Rows of one entity
    /// commit in id order (every insert holds the entity's row lock), so a floor is enough.
    /// Bounded: an entity evicted from it is one whose rows were consumed long ago.
    seen: lru::LruCache<String, i64>,
}

/// Entities whose newest seen queue row is remembered, at most (see `EntityDispatch::seen`).
const SEEN_ENTITIES: usize = 100_000;

impl Default for EntityDispatch {
    fn default() -> Self {
        EntityDispatch {
            slots: HashMap::new(),
            streams: BTreeMap::new(),
            leases: HashMap::new(),
            delayed: BTreeMap::new(),
            ended_sections: HashSet::new(),
            armed_at: None,
            max_attempts: 0,
            seen: lru::LruCache::new(std::num::NonZeroUsize::new(SEEN_ENTITIES).unwrap_or(std::num::NonZeroUsize::MIN)),
        }
    }
}

/// Work `assign` found that needs an async commit.
struct LockStep {
    entity_id: String,
    effects: Effects,
}

impl EntityDispatch {
    pub(super) fn new(max_attempts: u32) -> EntityDispatch {
        EntityDispatch { max_attempts: max_attempts.max(1), ..EntityDispatch::default() }
    }

    /// Forgets every entity, lease and queued request; keeps the connected streams (with
    /// nothing in flight). Batches out at workers then complete as unknown.
    fn reset(&mut self) {
        let streams = std::mem::take(&mut self.streams);
        *self = EntityDispatch::new(self.max_attempts);
        self.streams = streams;
        for s in self.streams.values_mut() {
            s.in_flight = 0;
        }
    }

    fn slot(&mut self, entity_id: &str) -> &mut Slot {
        self.slots.entry(entity_id.to_string()).or_insert_with(|| Slot {
            entity: EntityState::new(entity_id),
            load: Load::No,
            retry_at: 0,
            applying: false,
            attempts: 0,
        })
    }

    /// Adds committed queue rows (delayed ones wait for their time).
    fn add_messages(&mut self, messages: Vec<QueuedEntityMessage>, now: i64) {
        for m in messages {
            let seen = self.seen.get_or_insert_mut(m.entity_id.clone(), || 0);
            *seen = (*seen).max(m.id);
            if m.visible_at_ms > now {
                self.delayed.insert((m.visible_at_ms, m.id), m);
                continue;
            }
            match Request::from_event(&m.event) {
                Ok(request) => self.slot(&m.entity_id).entity.enqueue(Queued { id: m.id, request }),
                Err(e) => {
                    tracing::warn!(entity = %m.entity_id, row = m.id, error = %e, "unreadable entity request ignored")
                }
            }
        }
    }

    /// Moves delayed requests whose time has come into their queues.
    fn fire_due(&mut self, now: i64) {
        let due: Vec<(i64, i64)> = self.delayed.range(..=(now, i64::MAX)).map(|(k, _)| *k).collect();
        let mut ready = Vec::with_capacity(due.len());
        for k in due {
            if let Some(m) = self.delayed.remove(&k) {
                ready.push(QueuedEntityMessage { visible_at_ms: now, ..m });
            }
        }
        self.add_messages(ready, now);
    }

    /// Whether the timer task must be woken to re-arm for an earlier wake-up.
    fn needs_rearm(&self) -> bool {
        match (self.next_wake(), self.armed_at) {
            (Some(next), Some(armed)) => next < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn next_wake(&self) -> Option<i64> {
        let delayed = self.delayed.keys().next().map(|(at, _)| *at);
        let retry =
            self.slots.values().filter(|s| !s.entity.queue.is_empty()).map(|s| s.retry_at).filter(|t| *t > 0).min();
        match (delayed, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn pick_stream(&self, name: &str) -> Option<StreamId> {
        self.streams
            .iter()
            .filter(|(_, s)| {
                s.in_flight < s.cap && s.names.as_ref().is_none_or(|n| n.contains(name)) && !s.rejected.contains(name)
            })
            .min_by_key(|(_, s)| s.in_flight)
            .map(|(id, _)| *id)
    }

    /// Leases every runnable batch to a stream and returns the lock steps to commit and
    /// the entities whose stored state must be read first.
    fn assign(&mut self, now: i64) -> (Vec<LockStep>, Vec<String>) {
        let mut loads = Vec::new();
        for (id, s) in self.slots.iter_mut() {
            if s.load == Load::No && s.retry_at <= now {
                s.load = Load::Loading;
                loads.push(id.clone());
            }
        }
        let mut steps = Vec::new();
        let ids: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.load == Load::Yes
                    && !s.applying
                    && s.entity.batch == entity::BatchState::Idle
                    && s.retry_at <= now
                    && (!s.entity.queue.is_empty() || held_section(&s.entity.lock, &self.ended_sections).is_some())
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let Some(slot) = self.slots.get(&id) else { continue };
            // An ended owner's lock is released before anything else.
            if let Some(owner) = held_section(&slot.entity.lock, &self.ended_sections).and(slot.entity.lock.owner()) {
                if let Some(effects) = slot.entity.release_owner(owner) {
                    steps.push(LockStep { entity_id: id.clone(), effects });
                    self.slot(&id).applying = true;
                    continue;
                }
            }
            match slot.entity.next_step() {
                Step::Wait => {}
                Step::Apply(mut effects) => {
                    // A lock request of an execution that has ended is dropped, not granted.
                    if effects.lock != slot.entity.lock && held_section(&effects.lock, &self.ended_sections).is_some() {
                        effects.lock = slot.entity.lock.clone();
                        effects.outgoing.clear();
                    }
                    steps.push(LockStep { entity_id: id.clone(), effects });
                    self.slot(&id).applying = true;
                }
                Step::Run(ops) if slot.attempts >= self.max_attempts => {
                    // Delivered again and again without a result: its operations fail
                    // (callers get the failure) instead of being retried forever.
                    let failure = events::failure(
                        "DuroPoisonWorkItem",
                        format!(
                            "the entity batch was delivered {} times without a result (abandoned, failed as a whole, or \
                             its worker disconnected each time); Duro failed its operations",
                            slot.attempts
                        ),
                        true,
                    );
                    tracing::warn!(entity = %id, attempts = slot.attempts, ops = ops.len(), "poison entity batch failed");
                    let outcome = BatchOutcome {
                        results: ops.iter().map(|_| OpResult::Failure(failure.clone())).collect(),
                        actions: Vec::new(),
                        state: slot.entity.state.clone(),
                    };
                    let effects = slot.entity.complete_batch(&ops, outcome, now);
                    steps.push(LockStep { entity_id: id.clone(), effects });
                    self.slot(&id).applying = true;
                }
                Step::Run(ops) => {
                    let name = EntityId::parse(&id).map(|e| e.name).unwrap_or_default();
                    let Some(stream_id) = self.pick_stream(&name) else { continue };
                    let token = format!("e-{}", uuid::Uuid::new_v4().simple());
                    let item = WorkItem {
                        request: Some(work_item::Request::EntityRequestV2(EntityRequest {
                            instance_id: id.clone(),
                            execution_id: String::new(),
                            entity_state: slot.entity.state.clone(),
                            operation_requests: ops.iter().map(|q| operation_event(&q.request)).collect(),
                        })),
                        completion_token: token.clone(),
                    };
                    let Some(stream) = self.streams.get_mut(&stream_id) else { continue };
                    stream.in_flight += 1;
                    // A dead stream's removal gives the lease back; nothing to do here.
                    let _ = stream.sender.send(StreamItem::Item(Box::new(item)));
                    tracing::debug!(entity = %id, ops = ops.len(), stream = stream_id, "dispatching entity batch");
                    let slot = self.slot(&id);
                    slot.entity.start_batch(&ops);
                    slot.retry_at = 0;
                    self.leases.insert(token, EntityLease { entity_id: id, stream: stream_id, ops, completing: false });
                }
            }
        }
        (steps, loads)
    }

    /// Ends a lease without a result: its operations run again after `delay_ms`. A
    /// `counted` give-back (abandon, stream loss, whole-batch failure) moves the batch
    /// towards the poison limit; a rerouting or the sidecar's own failure does not.
    /// Returns the entity's new count when it was counted, for the store.
    fn give_back(&mut self, token: &str, now: i64, delay_ms: i64, counted: bool) -> Option<(String, u32)> {
        let lease = self.leases.remove(token)?;
        if let Some(s) = self.streams.get_mut(&lease.stream) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        let slot = self.slot(&lease.entity_id);
        slot.entity.abandon_batch();
        slot.retry_at = if delay_ms > 0 { now + delay_ms } else { 0 };
        if counted {
            slot.attempts += 1;
            return Some((lease.entity_id, slot.attempts));
        }
        None
    }

    /// Applies a committed step to memory.
    fn applied(&mut self, entity_id: &str, effects: &Effects, result: EntityCommitResult, now: i64) {
        let slot = self.slot(entity_id);
        slot.entity.applied(effects);
        slot.applying = false;
        slot.retry_at = 0;
        slot.attempts = 0;
        // An idle entity leaves memory (its state is in the store and is read again when a
        // request arrives); a locked one stays, so ended owners' locks can be found.
        let e = &slot.entity;
        if e.queue.is_empty() && e.lock == Lock::Free && e.batch == entity::BatchState::Idle {
            self.slots.remove(entity_id);
        }
        self.add_messages(result.queued, now);
        for owner in &result.gone_owners {
            self.end_owner(owner);
        }
        self.prune_ended_sections();
    }

    /// An execution of `instance_id` ended (or was replaced): every lock it holds and every
    /// lock request it has queued, as far as memory knows them, belong to ended sections.
    /// A new execution's requests come later, with sections of their own.
    fn end_owner(&mut self, instance_id: &str) {
        let mut ended = Vec::new();
        for s in self.slots.values() {
            if let Lock::Held { owner, critical_section_id } = &s.entity.lock {
                if owner == instance_id {
                    ended.push(critical_section_id.clone());
                }
            }
            for q in &s.entity.queue {
                if let Request::Lock { owner, critical_section_id, .. } = &q.request {
                    if owner == instance_id {
                        ended.push(critical_section_id.clone());
                    }
                }
            }
        }
        self.ended_sections.extend(ended);
    }

    /// A rewound instance is live again on the same execution: its queued lock requests
    /// sent since `since_ms` (its execution's creation) are granted again in turn.
    fn resume_owner(&mut self, instance_id: &str, since_ms: i64) {
        for s in self.slots.values() {
            for q in &s.entity.queue {
                if let Request::Lock { owner, critical_section_id, requested_at_ms, .. } = &q.request {
                    if owner == instance_id && *requested_at_ms >= since_ms {
                        self.ended_sections.remove(critical_section_id);
                    }
                }
            }
        }
    }

    /// Whether an orchestration holds, or waits for, a lock of an entity in memory.
    fn involves(&self, instance_id: &str) -> bool {
        self.slots.values().any(|s| {
            s.entity.lock.owner() == Some(instance_id)
                || s.entity
                    .queue
                    .iter()
                    .any(|q| matches!(&q.request, Request::Lock { owner, .. } if owner == instance_id))
        })
    }

    /// Forgets ended sections that no entity knows any more.
    fn prune_ended_sections(&mut self) {
        if self.ended_sections.is_empty() {
            return;
        }
        let mut known = HashSet::new();
        for s in self.slots.values() {
            if let Lock::Held { critical_section_id, .. } = &s.entity.lock {
                known.insert(critical_section_id.clone());
            }
            for q in &s.entity.queue {
                if let Request::Lock { critical_section_id, .. } = &q.request {
                    known.insert(critical_section_id.clone());
                }
            }
        }
        for m in self.delayed.values() {
            if let Ok(Request::Lock { critical_section_id, .. }) = Request::from_event(&m.event) {
                known.insert(critical_section_id);
            }
        }
        self.ended_sections.retain(|c| known.contains(c));
    }
}

/// The critical section of a held lock if it has ended.
fn held_section<'a>(lock: &'a Lock, ended: &HashSet<String>) -> Option<&'a str> {
    match lock {
        Lock::Held { critical_section_id, .. } if ended.contains(critical_section_id) => Some(critical_section_id),
        _ => None,
    }
}

/// Whether an operation failed because the worker has no entity of that name (Python:
/// `...EntityNotRegisteredError`; others say "not registered").
fn rejects_as_unregistered(r: &OperationResult) -> bool {
    use duro_proto::operation_result::ResultType;
    match &r.result_type {
        Some(ResultType::Failure(f)) => f.failure_details.as_ref().is_some_and(|f| {
            f.error_type.ends_with("NotRegisteredError")
                || f.error_message.to_ascii_lowercase().contains("not registered")
        }),
        _ => false,
    }
}

/// The event a worker sees for a queued operation.
fn operation_event(request: &Request) -> HistoryEvent {
    match request {
        Request::Operation { event, .. } => event.clone(),
        // Only operations are batched.
        Request::Lock { .. } | Request::Unlock { .. } => HistoryEvent::default(),
    }
}

impl Engine {
    /// Rebuilds entity dispatch from the store (`initial`: nothing runs yet, the snapshot is
    /// the truth) or, when it runs already, adds the queue rows it has not seen (other
    /// sidecars of a shared hub queue requests too), and finds locks held by ended owners.
    pub(super) async fn recover_entities(&self, initial: bool) -> Result<(), StoreError> {
        let recovered = self.inner.store.recover_entities().await?;
        let now = self.now();
        // Every lock and lock request: (owner, critical section, sent at; `None` for a held lock).
        let mut sections: Vec<(String, String, Option<i64>)> = Vec::new();
        let count = recovered.len();
        {
            let mut d = self.inner.entities.lock();
            for r in recovered {
                let id = r.record.entity_id.clone();
                if let (Some(owner), Some(section)) = (&r.record.lock_owner, &r.record.lock_section) {
                    sections.push((owner.clone(), section.clone(), None));
                }
                for m in &r.messages {
                    if let Ok(Request::Lock { owner, critical_section_id, requested_at_ms, .. }) =
                        Request::from_event(&m.event)
                    {
                        sections.push((owner, critical_section_id, Some(requested_at_ms)));
                    }
                }
                let floor = d.seen.peek(&id).copied().unwrap_or(0);
                let fresh: Vec<QueuedEntityMessage> = r.messages.into_iter().filter(|m| m.id > floor).collect();
                if initial {
                    let slot = d.slot(&id);
                    slot.load = Load::Yes;
                    slot.attempts = r.delivery_attempts;
                    slot.entity.state = r.record.state.clone();
                    if let (Some(owner), Some(section)) = (r.record.lock_owner.clone(), r.record.lock_section.clone()) {
                        slot.entity.lock = Lock::Held { owner, critical_section_id: section };
                    }
                } else if fresh.is_empty() {
                    // Nothing new: the snapshot's state and lock may be older than memory.
                    continue;
                }
                // A refresh creates a slot for new rows only, and reads the entity's state and
                // lock again before it runs (`Load::No`): the snapshot may predate commits.
                d.add_messages(fresh, now);
            }
        }
        // A section has ended when its owner has ended or is gone, or (for a request, which
        // carries its time) when the owner's current execution was created after it was sent.
        let mut live: HashMap<String, Option<i64>> = HashMap::new();
        let mut ended = Vec::new();
        for (owner, section, sent_at) in sections {
            let created = match live.get(&owner) {
                Some(c) => *c,
                None => {
                    let c = match self.inner.store.load_instance(&owner).await? {
                        Some(rec) if !is_terminal(rec.status) => Some(rec.created_at_ms),
                        _ => None,
                    };
                    live.insert(owner.clone(), c);
                    c
                }
            };
            match (created, sent_at) {
                (None, _) => ended.push(section),
                (Some(created), Some(sent)) if sent > 0 && sent < created => ended.push(section),
                _ => {}
            }
        }
        self.inner.entities.lock().ended_sections.extend(ended);
        tracing::debug!(entities = count, "read entities from the store");
        self.pump_entities();
        Ok(())
    }

    /// Whether this sidecar dispatches entities: always on a store of its own; on a shared
    /// hub only while it holds the hub's entity lease (see [`EntityRole`]).
    pub(super) fn dispatches_entities(&self) -> bool {
        *self.inner.entity_role.lock() != EntityRole::Follower
    }

    /// Takes or gives up entity dispatch on a shared hub. A new leader starts from the store;
    /// one that steps down forgets everything (batches out at workers complete as stale).
    pub(super) async fn set_entity_leader(&self, lead: bool) {
        let was = {
            let mut role = self.inner.entity_role.lock();
            let was = *role;
            *role = if lead { EntityRole::Leader } else { EntityRole::Follower };
            was
        };
        match (was, lead) {
            (EntityRole::Follower, true) => {
                tracing::info!("this sidecar now dispatches the task hub's entities");
                self.inner.entities.lock().reset();
                if let Err(e) = self.recover_entities(true).await {
                    tracing::warn!(error = %e, "could not read entities; retrying at the next renewal");
                    *self.inner.entity_role.lock() = EntityRole::Follower;
                }
            }
            (EntityRole::Leader, false) => {
                tracing::info!("another sidecar dispatches the task hub's entities now");
                self.inner.entities.lock().reset();
            }
            _ => {}
        }
    }

    /// Sleeps until the next scheduled signal or retry, then dispatches.
    pub(super) async fn entity_timer_loop(self) {
        let mut shutdown = self.shutdown_signal();
        loop {
            let next = {
                let mut d = self.inner.entities.lock();
                d.armed_at = d.next_wake();
                d.armed_at
            };
            let sleep = match next {
                Some(at) => Duration::from_millis(u64::try_from(at - self.now()).unwrap_or(0)),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.inner.entity_timer.notified() => {}
                _ = shutdown.changed() => return,
            }
            let now = self.now();
            self.inner.entities.lock().fire_due(now);
            self.pump_entities();
        }
    }

    /// Hook for [`Engine::open_stream`]: the stream serves entities too.
    pub(super) fn entity_stream_opened(
        &self,
        id: StreamId,
        rules: &StreamRules,
        max_entities: usize,
        sender: mpsc::UnboundedSender<StreamItem>,
    ) {
        let names =
            rules.filters.as_ref().map(|f| f.entities.iter().map(|e| e.name.to_lowercase()).collect::<HashSet<_>>());
        let stream = EntityStream { sender, cap: max_entities, names, rejected: HashSet::new(), in_flight: 0 };
        self.inner.entities.lock().streams.insert(id, stream);
    }

    /// Hook for [`Engine::close_stream`]: its batches run again elsewhere.
    pub(super) fn entity_stream_closed(&self, id: StreamId) {
        let now = self.now();
        let mut d = self.inner.entities.lock();
        d.streams.remove(&id);
        let lost: Vec<String> =
            d.leases.iter().filter(|(_, l)| l.stream == id && !l.completing).map(|(t, _)| t.clone()).collect();
        let counts: Vec<(String, u32)> = lost.iter().filter_map(|token| d.give_back(token, now, 0, true)).collect();
        drop(d);
        self.persist_entity_attempts(counts);
    }

    /// Writes entity batches' delivery-attempt counts to the store (off the caller's path; a
    /// lost write only means poison detection counts a few deliveries fewer after a crash).
    fn persist_entity_attempts(&self, counts: Vec<(String, u32)>) {
        if counts.is_empty() {
            return;
        }
        let store = self.inner.store.clone();
        tokio::spawn(async move {
            for (entity_id, n) in counts {
                if let Err(e) = store.record_entity_attempts(entity_id.clone(), n).await {
                    tracing::warn!(entity = %entity_id, error = %e, "could not record entity delivery attempts");
                }
            }
        });
    }

    /// Hook for turn commits, replacements and restarts: an execution of this orchestration
    /// ended; its locks are released and its queued lock requests dropped.
    pub(super) fn entity_owner_ended(&self, instance_id: &str) {
        self.inner.entities.lock().end_owner(instance_id);
    }

    /// Hook for rewind: the instance is live again on the same execution (created at
    /// `created_at_ms`); its queued lock requests are granted in turn. Locks it held when it
    /// failed were released then and are not taken again.
    pub(super) fn entity_owner_rewound(&self, instance_id: &str, created_at_ms: i64) {
        self.inner.entities.lock().resume_owner(instance_id, created_at_ms);
        self.pump_entities();
    }

    /// On a shared hub: another sidecar changed an orchestration's status. If it holds or
    /// asks for a lock here and has ended, its locks are released.
    pub(super) async fn entity_owner_changed(&self, instance_id: &str) {
        if !self.dispatches_entities() || !self.inner.entities.lock().involves(instance_id) {
            return;
        }
        match self.inner.store.load_instance(instance_id).await {
            Ok(Some(r)) if !is_terminal(r.status) => {}
            Ok(_) => {
                self.entity_owner_ended(instance_id);
                self.pump_entities();
            }
            Err(e) => tracing::warn!(instance = %instance_id, error = %e, "could not check an entity lock owner"),
        }
    }

    /// Whether an orchestration holds an entity lock (SkipGracefulOrchestrationTerminations
    /// leaves such instances alone).
    pub fn holds_entity_locks(&self, instance_id: &str) -> bool {
        self.inner.entities.lock().slots.values().any(|s| s.entity.lock.owner() == Some(instance_id))
    }

    /// Hook for commits that queued entity requests.
    pub(super) fn entity_messages_committed(&self, messages: Vec<QueuedEntityMessage>) {
        if messages.is_empty() || !self.dispatches_entities() {
            return;
        }
        let now = self.now();
        let rearm = {
            let mut d = self.inner.entities.lock();
            d.add_messages(messages, now);
            d.needs_rearm()
        };
        if rearm {
            self.inner.entity_timer.notify_one();
        }
    }

    /// Leases runnable batches and starts the lock steps the sidecar commits itself.
    pub(super) fn pump_entities(&self) {
        let now = self.now();
        let (steps, loads, rearm) = {
            let mut d = self.inner.entities.lock();
            let (steps, loads) = d.assign(now);
            (steps, loads, d.needs_rearm())
        };
        if rearm {
            self.inner.entity_timer.notify_one();
        }
        for id in loads {
            let engine = self.clone();
            tokio::spawn(async move { engine.load_entity(id).await });
        }
        for step in steps {
            let engine = self.clone();
            tokio::spawn(async move { engine.commit_lock_step(step).await });
        }
    }

    /// Reads an entity's stored state and lock into its slot, then dispatches.
    async fn load_entity(&self, entity_id: String) {
        let selection = EntitySelection {
            id: Some(entity_id.clone()),
            include_transient: true,
            page_size: 1,
            ..EntitySelection::default()
        };
        match self.inner.store.query_entities(&selection).await {
            Ok(rows) => {
                let mut d = self.inner.entities.lock();
                let slot = d.slot(&entity_id);
                if let Some(r) = rows.into_iter().next() {
                    slot.entity.state = r.state;
                    slot.entity.lock = match (r.lock_owner, r.lock_section) {
                        (Some(owner), Some(critical_section_id)) => Lock::Held { owner, critical_section_id },
                        _ => Lock::Free,
                    };
                }
                slot.load = Load::Yes;
            }
            Err(e) => {
                tracing::warn!(entity = %entity_id, error = %e, "could not read an entity; retrying later");
                let now = self.now();
                let mut d = self.inner.entities.lock();
                let slot = d.slot(&entity_id);
                slot.load = Load::No;
                slot.retry_at = now + RETRY_MS;
            }
        }
        self.pump_entities();
    }

    /// A step of the entity found its queue different from memory (`Conflict`: a consumed
    /// row is gone): its in-memory view is dropped and read again from the store. Safe then:
    /// nothing of it is in flight, and only this dispatcher consumes its rows.
    async fn reload_entity(&self, entity_id: &str) {
        {
            let mut d = self.inner.entities.lock();
            if d.leases.values().any(|l| l.entity_id == entity_id) {
                return;
            }
            d.slots.remove(entity_id);
            d.seen.pop(entity_id);
            d.delayed.retain(|_, m| m.entity_id != entity_id);
        }
        if let Err(e) = self.recover_entities(false).await {
            tracing::warn!(entity = %entity_id, error = %e, "could not read an entity again; the next notice retries");
        }
    }

    async fn commit_lock_step(&self, step: LockStep) {
        let now = self.now();
        let commit = EntityCommit {
            entity_id: step.entity_id.clone(),
            effects: step.effects.clone(),
            starts: Vec::new(),
            now_ms: now,
        };
        match self.inner.store.commit_entity(commit).await {
            Ok(result) => self.after_entity_commit(&step.entity_id, &step.effects, result),
            Err(e) => {
                tracing::warn!(entity = %step.entity_id, error = %e, "entity lock step not committed; retrying later");
                {
                    let mut d = self.inner.entities.lock();
                    let slot = d.slot(&step.entity_id);
                    slot.applying = false;
                    slot.retry_at = now + RETRY_MS;
                }
                if matches!(e, StoreError::Conflict(_)) {
                    self.reload_entity(&step.entity_id).await;
                }
                self.inner.entity_timer.notify_one();
            }
        }
    }

    fn after_entity_commit(&self, entity_id: &str, effects: &Effects, result: EntityCommitResult) {
        let now = self.now();
        let delivered = result.delivered.clone();
        self.inner.entities.lock().applied(entity_id, effects, result, now);
        if !delivered.is_empty() {
            let mut s = self.inner.sched.lock();
            for d in delivered.into_iter().filter(|d| self.admits(&d.instance_id)) {
                s.add_event(d, now);
            }
        }
        self.pump();
    }

    // ----- worker API --------------------------------------------------------------------

    /// Commits a worker's entity batch result. Runs to the end even if the caller stops
    /// waiting.
    pub async fn complete_entity(&self, result: EntityBatchResult) -> Result<(), EngineError> {
        let engine = self.clone();
        detached(async move { engine.complete_entity_now(result).await }).await
    }

    async fn complete_entity_now(&self, r: EntityBatchResult) -> Result<(), EngineError> {
        let now = self.now();
        tracing::debug!(
            results = r.results.len(),
            actions = r.actions.len(),
            failed = r.failure_details.is_some(),
            "entity batch result received"
        );
        let token = r.completion_token.clone();
        let (entity_id, ops, snapshot) = {
            let mut d = self.inner.entities.lock();
            let Some(lease) = d.leases.get_mut(&token).filter(|l| !l.completing) else {
                return Err(EngineError::NotFound(
                    "unknown or stale entity completion token: the batch was completed, abandoned or redelivered"
                        .into(),
                ));
            };
            if r.failure_details.is_some() || r.requires_state {
                let why = r.failure_details.as_ref().map(|f| f.error_message.clone()).unwrap_or_default();
                tracing::info!(entity = %lease.entity_id, error = %why, requires_state = r.requires_state, "entity batch failed as a whole; it runs again");
                let delay = if r.requires_state { 0 } else { RETRY_MS };
                let counted = d.give_back(&token, now, delay, !r.requires_state);
                drop(d);
                self.persist_entity_attempts(counted.into_iter().collect());
                self.inner.entity_timer.notify_one();
                self.pump_entities();
                return Ok(());
            }
            if !r.results.is_empty() && r.results.iter().all(rejects_as_unregistered) {
                // A worker without filters that does not host this entity: route the batch
                // to another stream instead of failing its operations.
                let (stream, entity_id) = (lease.stream, lease.entity_id.clone());
                let name = EntityId::parse(&entity_id).map(|e| e.name).unwrap_or_default();
                tracing::info!(entity = %entity_id, stream, "a worker does not host this entity; routing it elsewhere");
                if let Some(s) = d.streams.get_mut(&stream) {
                    s.rejected.insert(name);
                }
                d.give_back(&token, now, 0, false);
                drop(d);
                self.pump_entities();
                return Ok(());
            }
            lease.completing = true;
            let (entity_id, ops) = (lease.entity_id.clone(), lease.ops.clone());
            let snapshot = d.slot(&entity_id).entity.clone();
            (entity_id, ops, snapshot)
        };
        let results = r
            .results
            .into_iter()
            .take(ops.len())
            .map(|res| {
                use duro_proto::operation_result::ResultType;
                match res.result_type {
                    Some(ResultType::Failure(f)) => OpResult::Failure(f.failure_details.unwrap_or_else(|| {
                        events::failure("EntityOperationFailed", "the entity operation failed without details", false)
                    })),
                    Some(ResultType::Success(s)) => OpResult::Success(s.result),
                    None => OpResult::Success(None),
                }
            })
            .collect();
        let effects =
            snapshot.complete_batch(&ops, BatchOutcome { results, actions: r.actions, state: r.entity_state }, now);
        let starts = effects
            .outgoing
            .iter()
            .filter_map(|o| match o {
                Outgoing::StartOrchestration { instance_id, name, version, input, scheduled_start_ms } => {
                    let id = if instance_id.is_empty() {
                        uuid::Uuid::new_v4().simple().to_string()
                    } else {
                        instance_id.clone()
                    };
                    Some(NewInstance {
                        spec: StartSpec {
                            instance_id: id,
                            execution_id: uuid::Uuid::new_v4().simple().to_string(),
                            name: name.clone(),
                            version: version.clone(),
                            input: input.clone(),
                            scheduled_start_ms: *scheduled_start_ms,
                            ..StartSpec::default()
                        },
                        created_at_ms: now,
                        visible_at_ms: scheduled_start_ms.unwrap_or(now).max(now),
                        parent_task: None,
                    })
                }
                _ => None,
            })
            .collect();
        let commit = EntityCommit { entity_id: entity_id.clone(), effects: effects.clone(), starts, now_ms: now };
        match self.inner.store.commit_entity(commit).await {
            Ok(result) => {
                {
                    let mut d = self.inner.entities.lock();
                    if let Some(lease) = d.leases.remove(&token) {
                        if let Some(s) = d.streams.get_mut(&lease.stream) {
                            s.in_flight = s.in_flight.saturating_sub(1);
                        }
                    }
                }
                self.after_entity_commit(&entity_id, &effects, result);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(entity = %entity_id, error = %e, "entity batch not committed; it runs again");
                self.inner.entities.lock().give_back(&token, now, RETRY_MS, false);
                if matches!(e, StoreError::Conflict(_)) {
                    self.reload_entity(&entity_id).await;
                }
                self.inner.entity_timer.notify_one();
                Err(e.into())
            }
        }
    }

    /// Gives an entity batch back for redelivery after a back-off. Unknown tokens are fine.
    pub fn abandon_entity(&self, token: &str) {
        let now = self.now();
        let counted = self.inner.entities.lock().give_back(token, now, RETRY_MS, true);
        self.persist_entity_attempts(counted.into_iter().collect());
        self.inner.entity_timer.notify_one();
    }

    // ----- client API --------------------------------------------------------------------

    /// Queues a signal for an entity (`SignalEntity`), visible at `scheduled_ms` if later.
    pub async fn signal_entity(
        &self,
        entity_id: &str,
        operation: String,
        input: Option<String>,
        request_id: String,
        scheduled_ms: Option<i64>,
    ) -> Result<(), EngineError> {
        let id = EntityId::parse(entity_id).map_err(|e| EngineError::InvalidArgument(e.to_string()))?.to_string();
        if operation.is_empty() {
            return Err(EngineError::InvalidArgument("the operation name (name) is required".into()));
        }
        let now = self.now();
        let visible = scheduled_ms.unwrap_or(now).max(now);
        let event = entity::signal_event(&request_id, &operation, input, scheduled_ms.filter(|t| *t > now), now);
        let message = entity::EntityMessage { entity_id: id, visible_at_ms: visible, event };
        let engine = self.clone();
        detached(async move {
            let queued = engine.inner.store.enqueue_entity(vec![message], now).await?;
            engine.entity_messages_committed(queued);
            engine.pump_entities();
            Ok(())
        })
        .await
    }

    pub async fn query_entities(&self, filter: &EntitySelection) -> Result<Vec<EntityRecord>, EngineError> {
        Ok(self.inner.store.query_entities(filter).await?)
    }

    /// One entity's record, `None` if it has no row.
    pub async fn get_entity(&self, entity_id: &str) -> Result<Option<EntityRecord>, EngineError> {
        let id = EntityId::parse(entity_id).map_err(|e| EngineError::InvalidArgument(e.to_string()))?.to_string();
        let filter =
            EntitySelection { id: Some(id), include_transient: true, page_size: 1, ..EntitySelection::default() };
        Ok(self.inner.store.query_entities(&filter).await?.into_iter().next())
    }

    /// `CleanEntityStorage` over one page of entities (after `after_id`): removes empty
    /// entities and releases locks whose owners have ended. Returns (removed, released,
    /// next page's cursor).
    pub async fn clean_entities(
        &self,
        after_id: Option<String>,
        remove_empty: bool,
        release_orphaned_locks: bool,
        page_size: u32,
    ) -> Result<(u32, u32, Option<String>), EngineError> {
        let filter = EntitySelection { include_transient: true, page_size, after_id, ..EntitySelection::default() };
        let page = self.inner.store.query_entities(&filter).await?;
        let next = (page.len() as u32 >= page_size).then(|| page.last().map(|r| r.entity_id.clone())).flatten();
        let mut released = 0;
        if release_orphaned_locks {
            for r in &page {
                let Some(owner) = &r.lock_owner else { continue };
                let ended = match self.inner.store.load_instance(owner).await? {
                    Some(rec) => is_terminal(rec.status),
                    None => true,
                };
                if ended {
                    released += 1;
                    self.inner.entities.lock().end_owner(owner);
                }
            }
            if released > 0 {
                self.pump_entities();
            }
        }
        let mut removed = 0;
        if remove_empty {
            let empty: Vec<String> = {
                let d = self.inner.entities.lock();
                page.iter()
                    .filter(|r| r.state.is_none() && r.lock_owner.is_none() && r.backlog == 0)
                    .filter(|r| !d.slots.contains_key(&r.entity_id))
                    .map(|r| r.entity_id.clone())
                    .collect()
            };
            if !empty.is_empty() {
                removed = self.inner.store.remove_empty_entities(empty).await?;
            }
        }
        Ok((removed, released, next))
    }
}

#[cfg(test)]
mod tests {
    //! Entity dispatch against a real SQLite store and an in-process worker stream.

    use super::*;
    use crate::engine::EngineOptions;
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use std::sync::Arc;

    struct Harness {
        engine: Engine,
        rx: mpsc::UnboundedReceiver<StreamItem>,
        stream: StreamId,
        _dir: tempfile::TempDir,
    }

    async fn harness() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("duro.db"), SqliteOptions::default()).await.expect("store");
        let engine = Engine::start(Arc::new(store), EngineOptions::default(), Vec::new()).await.expect("engine");
        let rules = StreamRules { max_orchestrations: 10, max_activities: 10, filters: None, ..Default::default() };
        let (stream, rx) = engine.open_stream_with_entities(rules, 10);
        Harness { engine, rx, stream, _dir: dir }
    }

    impl Harness {
        async fn next_batch(&mut self) -> (EntityRequest, String) {
            match tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await {
                Ok(Some(StreamItem::Item(item))) => match item.request {
                    Some(work_item::Request::EntityRequestV2(r)) => (r, item.completion_token),
                    other => panic!("expected an entity work item, got {other:?}"),
                },
                other => panic!("no entity work item within 5 s: {other:?}"),
            }
        }

        async fn nothing_for(&mut self, ms: u64) {
            let got = tokio::time::timeout(Duration::from_millis(ms), self.rx.recv()).await;
            assert!(got.is_err(), "unexpected work item: {got:?}");
        }

        async fn signal(&self, id: &str, op: &str, input: &str) {
            let request_id = uuid::Uuid::new_v4().to_string();
            self.engine.signal_entity(id, op.into(), Some(input.into()), request_id, None).await.expect("signaled");
        }
    }

    impl Harness {
        /// The next orchestrator work item (entity items in between are a test failure).
        async fn next_turn(&mut self) -> (OrchestratorRequest, String) {
            match tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await {
                Ok(Some(StreamItem::Item(item))) => match item.request {
                    Some(work_item::Request::OrchestratorRequest(r)) => (r, item.completion_token),
                    other => panic!("expected an orchestrator work item, got {other:?}"),
                },
                other => panic!("no orchestrator work item within 5 s: {other:?}"),
            }
        }

        async fn start(&mut self, id: &str, reuse: IdReuse) -> String {
            let new =
                NewInstance::simple(id, &uuid::Uuid::new_v4().simple().to_string(), "Orch", None, self.engine.now());
            let created = self.engine.create_instance(new, reuse).await.expect("created");
            assert!(matches!(created, CreateResult::Created(_)), "{created:?}");
            let (turn, token) = self.next_turn().await;
            assert_eq!(turn.instance_id, id);
            token
        }

        async fn answer_turn(&self, id: &str, token: String, actions: Vec<OrchestratorAction>) {
            let response =
                OrchestratorResponse { instance_id: id.into(), actions, completion_token: token, ..Default::default() };
            self.engine.complete_orchestration(response).await.expect("turn committed");
        }
    }

    fn lock_action(section: &str, entity: &str) -> OrchestratorAction {
        use duro_proto::send_entity_message_action::EntityMessageType as M;
        OrchestratorAction {
            id: 1,
            orchestrator_action_type: Some(orchestrator_action::OrchestratorActionType::SendEntityMessage(
                SendEntityMessageAction {
                    entity_message_type: Some(M::EntityLockRequested(EntityLockRequestedEvent {
                        critical_section_id: section.into(),
                        lock_set: vec![entity.into()],
                        position: 0,
                        parent_instance_id: None,
                    })),
                },
            )),
        }
    }

    fn unlock_action(section: &str, entity: &str) -> OrchestratorAction {
        use duro_proto::send_entity_message_action::EntityMessageType as M;
        OrchestratorAction {
            id: 2,
            orchestrator_action_type: Some(orchestrator_action::OrchestratorActionType::SendEntityMessage(
                SendEntityMessageAction {
                    entity_message_type: Some(M::EntityUnlockSent(EntityUnlockSentEvent {
                        critical_section_id: section.into(),
                        parent_instance_id: None,
                        target_instance_id: Some(entity.into()),
                    })),
                },
            )),
        }
    }

    fn granted(turn: &OrchestratorRequest) -> Vec<String> {
        turn.new_events
            .iter()
            .filter_map(|e| match &e.event_type {
                Some(history_event::EventType::EntityLockGranted(g)) => Some(g.critical_section_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// An instance that waited for a lock, was terminated and restarted under the same id is
    /// a new owner: the old execution's request is dropped, the new one's is granted. Before,
    /// both were dropped (the id counted as ended) and the new execution waited forever.
    #[tokio::test]
    async fn a_restarted_waiter_is_a_new_owner() {
        let mut h = harness().await;
        let token = h.start("a", IdReuse::terminal()).await;
        h.answer_turn("a", token, vec![lock_action("cs-a", "@c@k")]).await;
        let (turn, a_token) = h.next_turn().await;
        assert_eq!(granted(&turn), ["cs-a"]);
        let token = h.start("b", IdReuse::terminal()).await;
        h.answer_turn("b", token, vec![lock_action("cs-b1", "@c@k")]).await;
        h.engine.terminate("b", None, false).await.expect("terminated");
        let done = h.engine.wait_for("b", is_terminal);
        tokio::time::timeout(Duration::from_secs(5), done).await.expect("b ended").expect("read");
        h.engine.restart("b", None).await.expect("restarted");
        let (_, token) = h.next_turn().await;
        h.answer_turn("b", token, vec![lock_action("cs-b2", "@c@k")]).await;
        // a leaves its critical section: the lock passes over b's old request to its new one.
        h.answer_turn("a", a_token, vec![unlock_action("cs-a", "@c@k")]).await;
        let (turn, _) = h.next_turn().await;
        assert_eq!((turn.instance_id.as_str(), granted(&turn)), ("b", vec!["cs-b2".to_string()]));
        let rec = h.engine.get_entity("@c@k").await.expect("read").expect("row");
        assert_eq!((rec.lock_owner.as_deref(), rec.lock_section.as_deref()), (Some("b"), Some("cs-b2")));
    }

    /// Replacing a running instance that holds a lock (a client start with a replaceable
    /// RUNNING status) releases the lock: the new execution is not its owner. Before, the lock
    /// stayed held under the id and other requests waited.
    #[tokio::test]
    async fn a_replaced_holder_releases_its_locks() {
        let mut h = harness().await;
        let token = h.start("a", IdReuse::terminal()).await;
        h.answer_turn("a", token, vec![lock_action("cs-a", "@c@k")]).await;
        let (turn, token) = h.next_turn().await;
        assert_eq!(granted(&turn), ["cs-a"]);
        h.answer_turn("a", token, Vec::new()).await;
        assert!(h.engine.holds_entity_locks("a"));
        let replace = IdReuse::Replace(vec![OrchestrationStatus::Running, OrchestrationStatus::Pending]);
        let token = h.start("a", replace).await;
        h.answer_turn("a", token, Vec::new()).await;
        h.signal("@c@k", "add", "1").await;
        let (req, _) = h.next_batch().await;
        assert_eq!(req.instance_id, "@c@k", "the signal runs: nobody holds the lock");
        let rec = h.engine.get_entity("@c@k").await.expect("read").expect("row");
        assert_eq!(rec.lock_owner, None);
    }

    fn success(output: Option<&str>) -> OperationResult {
        OperationResult {
            result_type: Some(operation_result::ResultType::Success(OperationResultSuccess {
                result: output.map(String::from),
                ..Default::default()
            })),
        }
    }

    fn answer(token: String, results: Vec<OperationResult>, state: Option<&str>) -> EntityBatchResult {
        EntityBatchResult {
            results,
            entity_state: state.map(String::from),
            completion_token: token,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_signal_runs_as_a_batch_and_its_state_is_stored() {
        let mut h = harness().await;
        h.signal("@Counter@a", "add", "1").await;
        let (req, token) = h.next_batch().await;
        assert_eq!(req.instance_id, "@counter@a");
        assert_eq!(req.entity_state, None);
        assert_eq!(req.operation_requests.len(), 1);
        h.engine.complete_entity(answer(token.clone(), vec![success(None)], Some("1"))).await.expect("completed");
        let rec = h.engine.get_entity("@counter@a").await.expect("read").expect("exists");
        assert_eq!((rec.state.as_deref(), rec.backlog), (Some("1"), 0));
        let again = h.engine.complete_entity(answer(token, vec![success(None)], Some("2"))).await;
        assert!(matches!(again, Err(EngineError::NotFound(_))), "a repeated token is refused: {again:?}");
        h.signal("@counter@a", "add", "2").await;
        let (req, _) = h.next_batch().await;
        assert_eq!(req.entity_state.as_deref(), Some("1"), "the next batch starts from the stored state");
    }

    #[tokio::test]
    async fn one_batch_at_a_time_and_later_signals_wait_for_it() {
        let mut h = harness().await;
        h.signal("@c@k", "add", "1").await;
        let (_, token) = h.next_batch().await;
        h.signal("@c@k", "add", "2").await;
        h.signal("@c@k", "add", "3").await;
        h.nothing_for(200).await;
        h.engine.complete_entity(answer(token, vec![success(None)], Some("1"))).await.expect("completed");
        let (req, _) = h.next_batch().await;
        assert_eq!(req.operation_requests.len(), 2, "the two waiting signals form the next batch");
    }

    #[tokio::test]
    async fn a_closed_stream_redelivers_its_batch_and_a_failed_batch_runs_again() {
        let mut h = harness().await;
        h.signal("@c@k", "add", "1").await;
        let (_, token) = h.next_batch().await;
        h.engine.close_stream(h.stream);
        let rules = StreamRules { max_orchestrations: 10, max_activities: 10, filters: None, ..Default::default() };
        let (stream, rx) = h.engine.open_stream_with_entities(rules, 10);
        (h.stream, h.rx) = (stream, rx);
        let (req, token2) = h.next_batch().await;
        assert_ne!(token, token2);
        assert_eq!(req.operation_requests.len(), 1);
        let stale = h.engine.complete_entity(answer(token, vec![success(None)], Some("x"))).await;
        assert!(matches!(stale, Err(EngineError::NotFound(_))));
        let failed = EntityBatchResult {
            failure_details: Some(events::failure("Boom", "whole batch failed", false)),
            ..answer(token2, Vec::new(), None)
        };
        h.engine.complete_entity(failed).await.expect("accepted");
        let (req, _) = h.next_batch().await;
        assert_eq!(req.operation_requests.len(), 1, "the failed batch runs again");
        assert_eq!(h.engine.get_entity("@c@k").await.expect("read").and_then(|r| r.state), None);
    }

    #[tokio::test]
    async fn entity_filters_route_by_entity_name() {
        let mut h = harness().await;
        h.engine.close_stream(h.stream);
        let filters = WorkItemFilters {
            entities: vec![duro_proto::EntityFilter { name: "Cart".into() }],
            ..WorkItemFilters::default()
        };
        let rules =
            StreamRules { max_orchestrations: 10, max_activities: 10, filters: Some(filters), ..Default::default() };
        let (stream, rx) = h.engine.open_stream_with_entities(rules, 10);
        (h.stream, h.rx) = (stream, rx);
        h.signal("@counter@k", "add", "1").await;
        h.nothing_for(200).await;
        h.signal("@cart@k", "add", "1").await;
        let (req, _) = h.next_batch().await;
        assert_eq!(req.instance_id, "@cart@k", "only the listed entity name reaches this stream");
    }

    #[tokio::test]
    async fn a_batch_abandoned_again_and_again_fails_as_poison() {
        let mut h = harness().await;
        let attempts = h.engine.options().scheduler.max_attempts;
        h.signal("@c@p", "add", "1").await;
        for _ in 0..attempts {
            let (_, token) = h.next_batch().await;
            h.engine.abandon_entity(&token);
            // The back-off is 1 s: let it pass without waiting for it in real time.
            let mut d = h.engine.inner.entities.lock();
            d.slot("@c@p").retry_at = 0;
            drop(d);
            h.engine.pump_entities();
        }
        h.nothing_for(300).await;
        let rec = h.engine.get_entity("@c@p").await.expect("read").expect("row");
        assert_eq!((rec.backlog, rec.state), (0, None), "the poison batch was consumed, the state kept");
        h.signal("@c@p", "add", "2").await;
        let (req, _) = h.next_batch().await;
        assert_eq!(req.operation_requests.len(), 1, "later requests run normally");
    }

    /// The poison count of an entity batch survives a restart: two abandoned deliveries
    /// before it and one after reach a limit of three. Before, a restart started it from zero.
    #[tokio::test]
    async fn entity_delivery_attempts_survive_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("duro.db");
        let mut opts = EngineOptions::default();
        opts.scheduler.max_attempts = 3;
        let rules = StreamRules { max_orchestrations: 10, max_activities: 10, filters: None, ..Default::default() };
        {
            let store = SqliteStore::open(&path, SqliteOptions::default()).await.expect("store");
            let engine = Engine::start(Arc::new(store), opts.clone(), Vec::new()).await.expect("engine");
            let (stream, rx) = engine.open_stream_with_entities(rules.clone(), 10);
            let mut h = Harness { engine, rx, stream, _dir: tempfile::tempdir().expect("unused") };
            h.signal("@c@p", "add", "1").await;
            for _ in 0..2 {
                let (_, token) = h.next_batch().await;
                h.engine.abandon_entity(&token);
                h.engine.inner.entities.lock().slot("@c@p").retry_at = 0;
                h.engine.pump_entities();
            }
            let _ = h.next_batch().await; // the third delivery is still out when the sidecar stops
            tokio::time::sleep(Duration::from_millis(200)).await;
            h.engine.shutdown();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let store = SqliteStore::open(&path, SqliteOptions::default()).await.expect("reopened");
        let engine = Engine::start(Arc::new(store), opts, Vec::new()).await.expect("engine");
        let (stream, rx) = engine.open_stream_with_entities(rules, 10);
        let mut h = Harness { engine, rx, stream, _dir: dir };
        let (_, token) = h.next_batch().await;
        h.engine.abandon_entity(&token);
        h.engine.inner.entities.lock().slot("@c@p").retry_at = 0;
        h.engine.pump_entities();
        h.nothing_for(300).await;
        let rec = h.engine.get_entity("@c@p").await.expect("read").expect("row");
        assert_eq!(rec.backlog, 0, "the third delivery without a result failed the batch as poison");
    }

    #[tokio::test]
    async fn bad_ids_and_empty_operations_are_refused() {
        let h = harness().await;
        let bad = h.engine.signal_entity("no-at", "op".into(), None, "r".into(), None).await;
        assert!(matches!(bad, Err(EngineError::InvalidArgument(_))));
        let empty = h.engine.signal_entity("@a@b", String::new(), None, "r".into(), None).await;
        assert!(matches!(empty, Err(EngineError::InvalidArgument(_))));
    }

    #[tokio::test]
    async fn a_scheduled_signal_waits_for_its_time() {
        let mut h = harness().await;
        let at = h.engine.now() + 400;
        h.engine.signal_entity("@c@later", "add".into(), None, "r".into(), Some(at)).await.expect("signaled");
        h.nothing_for(250).await;
        let (req, _) = h.next_batch().await;
        assert_eq!(req.instance_id, "@c@later");
        assert!(h.engine.now() >= at);
    }
}
