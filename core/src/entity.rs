//! Durable entities: the pure state machine of one entity.
//!
//! An entity (`@<name lower-case>@<key>`) owns an optional serialized state, a FIFO queue
//! of requests (operations signaled or called by clients, orchestrations and other
//! entities; lock requests; unlocks), an optional lock owner (an orchestration inside a
//! critical section) and at most one batch of operations in flight to a worker.
//!
//! The shell ([`EntityState::next_step`]) asks what to do next: run a batch of operations
//! on a worker, or apply a lock step the sidecar decides itself (grant a lock and forward
//! the request along its lock set, or release a lock). [`EntityState::complete_batch`]
//! turns a worker's batch result into the effects to commit in one transaction: the new
//! state, the consumed queue rows and the messages to send (replies to callers, signals
//! to other entities, new orchestrations). Nothing here reads a clock or does I/O.

use std::collections::VecDeque;

use duro_proto::history_event::EventType;
use duro_proto::*;
use thiserror::Error;

use crate::events;
use crate::time::{from_ms, to_ms};

/// Most operations one batch carries.
pub const MAX_BATCH_OPERATIONS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EntityError {
    #[error("entity id '{0}' is not of the form '@<name>@<key>'")]
    BadId(String),
    #[error("entity id is {0} bytes long; the limit is {limit}", limit = crate::MAX_INSTANCE_ID_LEN)]
    TooLong(usize),
    #[error("entity message is not an entity operation, lock or unlock: {0}")]
    BadMessage(String),
}

/// An entity's id: its name (lower case) and key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityId {
    pub name: String,
    pub key: String,
}

impl EntityId {
    /// Parses `@name@key`; the name is folded to lower case (entity names are
    /// case-insensitive), the key is kept as given.
    pub fn parse(id: &str) -> Result<EntityId, EntityError> {
        if id.len() > crate::MAX_INSTANCE_ID_LEN {
            return Err(EntityError::TooLong(id.len()));
        }
        let rest = id.strip_prefix('@').ok_or_else(|| EntityError::BadId(id.into()))?;
        let (name, key) = rest.split_once('@').ok_or_else(|| EntityError::BadId(id.into()))?;
        if name.is_empty() || name.chars().any(char::is_control) || key.chars().any(char::is_control) {
            return Err(EntityError::BadId(id.into()));
        }
        Ok(EntityId { name: name.to_lowercase(), key: key.into() })
    }
}

impl std::fmt::Display for EntityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "@{}@{}", self.name, self.key)
    }
}

/// Where a call's result goes.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyTo {
    pub instance_id: String,
    pub execution_id: Option<String>,
}

/// One queued request.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // operations are by far the most common request
pub enum Request {
    /// A signal or a call; `event` is the original `entityOperationSignaled` /
    /// `entityOperationCalled` (sent to workers as is in `entityRequestV2`).
    Operation {
        request_id: String,
        operation: String,
        input: Option<String>,
        reply_to: Option<ReplyTo>,
        event: HistoryEvent,
    },
    /// An orchestration asks for this entity's lock (position `position` of `lock_set`).
    /// `requested_at_ms` is when the orchestration's turn sent it (kept when the request is
    /// forwarded along the lock set), so a request older than its owner's current execution
    /// can be told apart after a restart.
    Lock { critical_section_id: String, lock_set: Vec<String>, position: usize, owner: String, requested_at_ms: i64 },
    /// The lock owner leaves its critical section.
    Unlock { critical_section_id: String, owner: String },
}

impl Request {
    /// Reads a queued entity message.
    pub fn from_event(event: &HistoryEvent) -> Result<Request, EntityError> {
        match &event.event_type {
            Some(EventType::EntityOperationSignaled(s)) => Ok(Request::Operation {
                request_id: s.request_id.clone(),
                operation: s.operation.clone(),
                input: s.input.clone(),
                reply_to: None,
                event: event.clone(),
            }),
            Some(EventType::EntityOperationCalled(c)) => Ok(Request::Operation {
                request_id: c.request_id.clone(),
                operation: c.operation.clone(),
                input: c.input.clone(),
                reply_to: c
                    .parent_instance_id
                    .clone()
                    .filter(|p| !p.is_empty())
                    .map(|instance_id| ReplyTo { instance_id, execution_id: c.parent_execution_id.clone() }),
                event: event.clone(),
            }),
            Some(EventType::EntityLockRequested(l)) => Ok(Request::Lock {
                critical_section_id: l.critical_section_id.clone(),
                lock_set: l.lock_set.clone(),
                position: usize::try_from(l.position)
                    .map_err(|_| EntityError::BadMessage("negative position".into()))?,
                owner: l.parent_instance_id.clone().unwrap_or_default(),
                requested_at_ms: event.timestamp.as_ref().map(to_ms).unwrap_or(0),
            }),
            Some(EventType::EntityUnlockSent(u)) => Ok(Request::Unlock {
                critical_section_id: u.critical_section_id.clone(),
                owner: u.parent_instance_id.clone().unwrap_or_default(),
            }),
            other => Err(EntityError::BadMessage(format!("{other:?}"))),
        }
    }

    /// The orchestration this request comes from, if it is one (calls, locks, unlocks).
    fn is_from(&self, owner: &str) -> bool {
        match self {
            Request::Operation { reply_to, .. } => reply_to.as_ref().is_some_and(|r| r.instance_id == owner),
            Request::Lock { owner: o, .. } | Request::Unlock { owner: o, .. } => o == owner,
        }
    }
}

/// A queued request with the id of the store row that holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub id: i64,
    pub request: Request,
}

/// The entity's lock.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Lock {
    #[default]
    Free,
    /// Held by orchestration `owner` for critical section `critical_section_id`.
    Held { owner: String, critical_section_id: String },
}

impl Lock {
    pub fn owner(&self) -> Option<&str> {
        match self {
            Lock::Free => None,
            Lock::Held { owner, .. } => Some(owner),
        }
    }
}

/// Whether a batch is with a worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BatchState {
    #[default]
    Idle,
    /// These queue rows are with a worker; nothing else runs until they come back.
    InFlight { ids: Vec<i64> },
}

/// A message an entity step sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// An event for an orchestration's inbox (a call's result, a lock grant).
    ToOrchestration { instance_id: String, execution_id: Option<String>, event: HistoryEvent },
    /// A request for an entity's queue, visible from `visible_at_ms`.
    ToEntity { entity_id: String, visible_at_ms: i64, event: HistoryEvent },
    /// A new orchestration an operation started.
    StartOrchestration {
        instance_id: String,
        name: String,
        version: Option<String>,
        input: Option<String>,
        scheduled_start_ms: Option<i64>,
    },
}

/// Everything one entity step changes, committed in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    /// Queue rows consumed.
    pub consumed: Vec<i64>,
    /// The entity's state afterwards (`None`: no state).
    pub state: Option<String>,
    pub lock: Lock,
    pub outgoing: Vec<Outgoing>,
}

/// What the shell should do next for an entity.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing runnable: the queue is empty, a batch is in flight, or every queued request
    /// waits for the lock owner.
    Wait,
    /// Send these operations to a worker as one batch.
    Run(Vec<Queued>),
    /// The sidecar applies a lock step itself.
    Apply(Effects),
}

/// One entity as the dispatcher knows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntityState {
    pub id: String,
    pub state: Option<String>,
    pub lock: Lock,
    pub queue: VecDeque<Queued>,
    pub batch: BatchState,
}

/// One operation's result from a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    Success(Option<String>),
    Failure(TaskFailureDetails),
}

/// A worker's result for a batch, in operation order.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    /// Results of the first `results.len()` operations of the batch; operations without a
    /// result stay queued and run in a later batch.
    pub results: Vec<OpResult>,
    pub actions: Vec<OperationAction>,
    pub state: Option<String>,
}

impl EntityState {
    pub fn new(id: impl Into<String>) -> EntityState {
        EntityState { id: id.into(), ..EntityState::default() }
    }

    /// Adds a request to the queue in row-id (commit) order, whatever order the shell
    /// learns of commits in. A row already queued is not added twice.
    pub fn enqueue(&mut self, queued: Queued) {
        let at = self.queue.partition_point(|q| q.id < queued.id);
        if self.queue.get(at).is_some_and(|q| q.id == queued.id) {
            return;
        }
        self.queue.insert(at, queued);
    }

    /// Whether the entity holds nothing worth keeping: no state, no lock, no queue.
    pub fn is_empty(&self) -> bool {
        self.state.is_none() && self.lock == Lock::Free && self.queue.is_empty() && self.batch == BatchState::Idle
    }

    /// What to do next. Does not change the entity: the shell commits `Apply` effects and
    /// then calls [`EntityState::applied`], or leases a `Run` batch with
    /// [`EntityState::start_batch`].
    pub fn next_step(&self) -> Step {
        if self.batch != BatchState::Idle {
            return Step::Wait;
        }
        let owner = self.lock.owner();
        // A locked entity serves only its owner; other requests keep their place. An unlock for
        // a section that does not hold the lock changes nothing whenever it runs, so it never
        // waits (under contention these would pile up behind later holders).
        let stale_unlock = |r: &Request| {
            matches!(r, Request::Unlock { critical_section_id, .. }
                if !matches!(&self.lock, Lock::Held { critical_section_id: c, .. } if c == critical_section_id))
        };
        let mut eligible =
            self.queue.iter().filter(|q| owner.is_none_or(|o| q.request.is_from(o)) || stale_unlock(&q.request));
        let Some(first) = eligible.next() else { return Step::Wait };
        match &first.request {
            Request::Operation { .. } => {
                let mut ops = vec![first.clone()];
                for q in eligible {
                    if ops.len() >= MAX_BATCH_OPERATIONS || !matches!(q.request, Request::Operation { .. }) {
                        break;
                    }
                    ops.push(q.clone());
                }
                Step::Run(ops)
            }
            Request::Lock { critical_section_id, lock_set, position, owner: requester, requested_at_ms } => {
                let mut outgoing = Vec::new();
                let next = position + 1;
                match lock_set.get(next) {
                    Some(target) => outgoing.push(Outgoing::ToEntity {
                        entity_id: target.clone(),
                        visible_at_ms: 0,
                        event: lock_requested_event(critical_section_id, lock_set, next, requester, *requested_at_ms),
                    }),
                    None => outgoing.push(Outgoing::ToOrchestration {
                        instance_id: requester.clone(),
                        execution_id: None,
                        event: events::sidecar_event(
                            0,
                            EventType::EntityLockGranted(EntityLockGrantedEvent {
                                critical_section_id: critical_section_id.clone(),
                            }),
                        ),
                    }),
                }
                Step::Apply(Effects {
                    consumed: vec![first.id],
                    state: self.state.clone(),
                    lock: Lock::Held { owner: requester.clone(), critical_section_id: critical_section_id.clone() },
                    outgoing,
                })
            }
            Request::Unlock { critical_section_id, .. } => {
                // An unlock for a section that does not hold the lock (already released,
                // e.g. by the owner ending) is consumed and changes nothing.
                let releases =
                    matches!(&self.lock, Lock::Held { critical_section_id: c, .. } if c == critical_section_id);
                Step::Apply(Effects {
                    consumed: vec![first.id],
                    state: self.state.clone(),
                    lock: if releases { Lock::Free } else { self.lock.clone() },
                    outgoing: Vec::new(),
                })
            }
        }
    }

    /// Marks a `Run` batch as leased to a worker.
    pub fn start_batch(&mut self, ops: &[Queued]) {
        self.batch = BatchState::InFlight { ids: ops.iter().map(|q| q.id).collect() };
    }

    /// The batch came back without a result (abandoned, worker gone, whole-batch failure):
    /// its operations stay queued, in place, and run again.
    pub fn abandon_batch(&mut self) {
        self.batch = BatchState::Idle;
    }

    /// Applies committed effects to the in-memory entity.
    pub fn applied(&mut self, effects: &Effects) {
        self.queue.retain(|q| !effects.consumed.contains(&q.id));
        self.state = effects.state.clone();
        self.lock = effects.lock.clone();
        if let BatchState::InFlight { ids } = &self.batch {
            if ids.iter().any(|id| effects.consumed.contains(id)) {
                self.batch = BatchState::Idle;
            }
        }
    }

    /// Releases the lock if `owner` holds it (the owner ended); the effects to commit.
    pub fn release_owner(&self, owner: &str) -> Option<Effects> {
        (self.lock.owner() == Some(owner)).then(|| Effects {
            consumed: Vec::new(),
            state: self.state.clone(),
            lock: Lock::Free,
            outgoing: Vec::new(),
        })
    }

    /// Turns a worker's result for the in-flight batch `ops` into effects: consumed rows,
    /// the new state (absent = deleted), replies to callers and the operations' actions.
    pub fn complete_batch(&self, ops: &[Queued], outcome: BatchOutcome, now_ms: i64) -> Effects {
        let mut outgoing = Vec::new();
        let mut consumed = Vec::new();
        for (q, result) in ops.iter().zip(outcome.results) {
            consumed.push(q.id);
            let Request::Operation { request_id, reply_to: Some(reply), .. } = &q.request else { continue };
            let kind = match result {
                OpResult::Success(output) => EventType::EntityOperationCompleted(EntityOperationCompletedEvent {
                    request_id: request_id.clone(),
                    output,
                }),
                OpResult::Failure(f) => EventType::EntityOperationFailed(EntityOperationFailedEvent {
                    request_id: request_id.clone(),
                    failure_details: Some(f),
                }),
            };
            outgoing.push(Outgoing::ToOrchestration {
                instance_id: reply.instance_id.clone(),
                execution_id: reply.execution_id.clone(),
                event: events::sidecar_event(now_ms, kind),
            });
        }
        for action in outcome.actions {
            use duro_proto::operation_action::OperationActionType as A;
            match action.operation_action_type {
                Some(A::SendSignal(s)) => {
                    let visible = s.scheduled_time.as_ref().map(to_ms).unwrap_or(now_ms);
                    let event = events::sidecar_event(
                        now_ms,
                        EventType::EntityOperationSignaled(EntityOperationSignaledEvent {
                            request_id: format!("{}:{}:{}", self.id, ops.first().map(|q| q.id).unwrap_or(0), action.id),
                            operation: s.name,
                            scheduled_time: s.scheduled_time,
                            input: s.input,
                            target_instance_id: Some(s.instance_id.clone()),
                        }),
                    );
                    outgoing.push(Outgoing::ToEntity { entity_id: s.instance_id, visible_at_ms: visible, event });
                }
                Some(A::StartNewOrchestration(o)) => outgoing.push(Outgoing::StartOrchestration {
                    instance_id: o.instance_id,
                    name: o.name,
                    version: o.version,
                    input: o.input,
                    scheduled_start_ms: o.scheduled_time.as_ref().map(to_ms),
                }),
                None => {}
            }
        }
        Effects { consumed, state: outcome.state, lock: self.lock.clone(), outgoing }
    }
}

/// An `entityLockRequested` event for position `position` of `lock_set`, stamped with the
/// time the orchestration sent the request.
pub fn lock_requested_event(
    critical_section_id: &str,
    lock_set: &[String],
    position: usize,
    owner: &str,
    requested_at_ms: i64,
) -> HistoryEvent {
    events::sidecar_event(
        requested_at_ms,
        EventType::EntityLockRequested(EntityLockRequestedEvent {
            critical_section_id: critical_section_id.into(),
            lock_set: lock_set.to_vec(),
            position: i32::try_from(position).unwrap_or(i32::MAX),
            parent_instance_id: Some(owner.into()),
        }),
    )
}

/// A client's signal (`SignalEntity`) as a queue event.
pub fn signal_event(
    request_id: &str,
    operation: &str,
    input: Option<String>,
    scheduled_ms: Option<i64>,
    now_ms: i64,
) -> HistoryEvent {
    events::sidecar_event(
        now_ms,
        EventType::EntityOperationSignaled(EntityOperationSignaledEvent {
            request_id: request_id.into(),
            operation: operation.into(),
            scheduled_time: scheduled_ms.map(from_ms),
            input,
            target_instance_id: None,
        }),
    )
}

/// Where an orchestration's `sendEntityMessage` goes and what the entity queues.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityMessage {
    pub entity_id: String,
    pub visible_at_ms: i64,
    pub event: HistoryEvent,
}

/// Routes an orchestration's `sendEntityMessage` action (the history copy is the action's
/// event with `eventId` = action id). `caller` is the orchestration's instance and
/// execution; calls get it as their reply address.
pub fn route_action(
    action: &SendEntityMessageAction,
    caller_instance: &str,
    caller_execution: &str,
    now_ms: i64,
) -> Result<(HistoryEvent, EntityMessage), EntityError> {
    use duro_proto::send_entity_message_action::EntityMessageType as M;
    let (kind, target, visible_at_ms) = match action.entity_message_type.clone() {
        Some(M::EntityOperationSignaled(mut s)) => {
            let target = s.target_instance_id.clone().unwrap_or_default();
            let visible = s.scheduled_time.as_ref().map(to_ms).unwrap_or(now_ms).max(now_ms);
            s.target_instance_id = Some(target.clone());
            (EventType::EntityOperationSignaled(s), target, visible)
        }
        Some(M::EntityOperationCalled(mut c)) => {
            let target = c.target_instance_id.clone().unwrap_or_default();
            let visible = c.scheduled_time.as_ref().map(to_ms).unwrap_or(now_ms).max(now_ms);
            if c.parent_instance_id.as_deref().unwrap_or_default().is_empty() {
                c.parent_instance_id = Some(caller_instance.into());
            }
            if c.parent_execution_id.is_none() {
                c.parent_execution_id = Some(caller_execution.into());
            }
            (EventType::EntityOperationCalled(c), target, visible)
        }
        Some(M::EntityLockRequested(mut l)) => {
            if l.parent_instance_id.as_deref().unwrap_or_default().is_empty() {
                l.parent_instance_id = Some(caller_instance.into());
            }
            let position =
                usize::try_from(l.position).map_err(|_| EntityError::BadMessage("negative lock position".into()))?;
            let target = l
                .lock_set
                .get(position)
                .cloned()
                .ok_or_else(|| EntityError::BadMessage("lock request position is outside its lock set".into()))?;
            (EventType::EntityLockRequested(l), target, now_ms)
        }
        Some(M::EntityUnlockSent(mut u)) => {
            let target = u.target_instance_id.clone().unwrap_or_default();
            if u.parent_instance_id.as_deref().unwrap_or_default().is_empty() {
                u.parent_instance_id = Some(caller_instance.into());
            }
            (EventType::EntityUnlockSent(u), target, now_ms)
        }
        None => return Err(EntityError::BadMessage("sendEntityMessage without a message".into())),
    };
    let entity = EntityId::parse(&target)?;
    if let EventType::EntityLockRequested(l) = &kind {
        for id in &l.lock_set {
            EntityId::parse(id)?;
        }
    }
    let event = events::sidecar_event(now_ms, kind);
    Ok((event.clone(), EntityMessage { entity_id: entity.to_string(), visible_at_ms, event }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(id: i64, op: &str) -> Queued {
        let event = signal_event(&format!("r{id}"), op, Some(id.to_string()), None, 0);
        Queued { id, request: Request::from_event(&event).expect("signal") }
    }

    fn call(id: i64, op: &str, caller: &str) -> Queued {
        let event = events::sidecar_event(
            0,
            EventType::EntityOperationCalled(EntityOperationCalledEvent {
                request_id: format!("r{id}"),
                operation: op.into(),
                parent_instance_id: Some(caller.into()),
                parent_execution_id: Some("x".into()),
                ..Default::default()
            }),
        );
        Queued { id, request: Request::from_event(&event).expect("call") }
    }

    fn lock(id: i64, owner: &str, set: &[&str], position: usize) -> Queued {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let event = lock_requested_event(&format!("cs-{owner}"), &set, position, owner, 0);
        Queued { id, request: Request::from_event(&event).expect("lock") }
    }

    fn unlock(id: i64, owner: &str) -> Queued {
        let event = events::sidecar_event(
            0,
            EventType::EntityUnlockSent(EntityUnlockSentEvent {
                critical_section_id: format!("cs-{owner}"),
                parent_instance_id: Some(owner.into()),
                target_instance_id: Some("@a@1".into()),
            }),
        );
        Queued { id, request: Request::from_event(&event).expect("unlock") }
    }

    fn ids(step: &Step) -> Vec<i64> {
        match step {
            Step::Run(ops) => ops.iter().map(|q| q.id).collect(),
            Step::Apply(e) => e.consumed.clone(),
            Step::Wait => Vec::new(),
        }
    }

    fn entity(queue: Vec<Queued>) -> EntityState {
        let mut e = EntityState::new("@a@1");
        for q in queue {
            e.enqueue(q);
        }
        e
    }

    fn run_all(e: &mut EntityState, state: Option<&str>) -> Effects {
        let Step::Run(ops) = e.next_step() else { panic!("expected a batch") };
        e.start_batch(&ops);
        let results = ops.iter().map(|_| OpResult::Success(Some("1".into()))).collect();
        let fx =
            e.complete_batch(&ops, BatchOutcome { results, actions: Vec::new(), state: state.map(String::from) }, 5);
        e.applied(&fx);
        fx
    }

    #[test]
    fn ids_parse_with_lower_case_names_and_keep_keys() {
        let id = EntityId::parse("@Counter@MyKey").expect("valid");
        assert_eq!((id.name.as_str(), id.key.as_str()), ("counter", "MyKey"));
        assert_eq!(id.to_string(), "@counter@MyKey");
        assert_eq!(EntityId::parse("@c@").expect("empty key").key, "");
        assert_eq!(EntityId::parse("@c@a@b").expect("@ in key").key, "a@b");
        for bad in ["counter@k", "@counter", "@@k", "", "@c\u{1}@k"] {
            assert!(EntityId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("@c@{}", "k".repeat(crate::MAX_INSTANCE_ID_LEN));
        assert_eq!(EntityId::parse(&long), Err(EntityError::TooLong(long.len())));
    }

    #[test]
    fn operations_run_in_fifo_batches_one_at_a_time() {
        let mut e = entity(vec![signal(1, "add"), signal(2, "add"), signal(3, "get")]);
        let step = e.next_step();
        assert_eq!(ids(&step), vec![1, 2, 3]);
        let Step::Run(ops) = step else { unreachable!() };
        e.start_batch(&ops);
        e.enqueue(signal(4, "add"));
        assert_eq!(e.next_step(), Step::Wait, "a second batch while one is in flight");
        let results = vec![OpResult::Success(None); 3];
        let fx = e.complete_batch(&ops, BatchOutcome { results, actions: vec![], state: Some("3".into()) }, 9);
        assert_eq!(fx.consumed, vec![1, 2, 3]);
        e.applied(&fx);
        assert_eq!(e.state.as_deref(), Some("3"));
        assert_eq!(ids(&e.next_step()), vec![4]);
    }

    #[test]
    fn requests_queue_in_commit_order_once() {
        let mut e = entity(vec![signal(3, "c"), signal(1, "a"), signal(2, "b"), signal(1, "a")]);
        assert_eq!(e.queue.iter().map(|q| q.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        e.enqueue(signal(0, "z"));
        assert_eq!(ids(&e.next_step()), vec![0, 1, 2, 3]);
    }

    #[test]
    fn batches_are_capped() {
        let e = entity((0..250).map(|i| signal(i, "add")).collect());
        assert_eq!(ids(&e.next_step()).len(), MAX_BATCH_OPERATIONS);
    }

    #[test]
    fn an_abandoned_batch_runs_again_unchanged() {
        let mut e = entity(vec![signal(1, "add"), signal(2, "add")]);
        let Step::Run(ops) = e.next_step() else { panic!() };
        e.start_batch(&ops);
        e.abandon_batch();
        assert_eq!(ids(&e.next_step()), vec![1, 2]);
        assert_eq!(e.state, None);
    }

    #[test]
    fn partial_results_leave_the_rest_queued() {
        let mut e = entity(vec![signal(1, "a"), signal(2, "b"), signal(3, "c")]);
        let Step::Run(ops) = e.next_step() else { panic!() };
        e.start_batch(&ops);
        let fx = e.complete_batch(
            &ops,
            BatchOutcome { results: vec![OpResult::Success(None)], actions: vec![], state: Some("s".into()) },
            0,
        );
        e.applied(&fx);
        assert_eq!(ids(&e.next_step()), vec![2, 3]);
    }

    #[test]
    fn calls_get_results_or_failures_signals_get_nothing() {
        let mut e = entity(vec![call(1, "ok", "o1"), signal(2, "s"), call(3, "boom", "o2")]);
        let Step::Run(ops) = e.next_step() else { panic!() };
        e.start_batch(&ops);
        let failure = events::failure("ValueError", "boom", false);
        let results =
            vec![OpResult::Success(Some("42".into())), OpResult::Success(None), OpResult::Failure(failure.clone())];
        let fx = e.complete_batch(&ops, BatchOutcome { results, actions: vec![], state: None }, 7);
        assert_eq!(fx.outgoing.len(), 2);
        match &fx.outgoing[0] {
            Outgoing::ToOrchestration { instance_id, execution_id, event } => {
                assert_eq!((instance_id.as_str(), execution_id.as_deref()), ("o1", Some("x")));
                assert!(matches!(&event.event_type, Some(EventType::EntityOperationCompleted(c))
                    if c.request_id == "r1" && c.output.as_deref() == Some("42")));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&fx.outgoing[1], Outgoing::ToOrchestration { instance_id, event, .. }
            if instance_id == "o2" && matches!(&event.event_type, Some(EventType::EntityOperationFailed(f))
                if f.failure_details.as_ref() == Some(&failure))));
        assert_eq!(fx.state, None, "absent state deletes it");
    }

    #[test]
    fn actions_become_signals_and_new_orchestrations() {
        use duro_proto::operation_action::OperationActionType as A;
        let mut e = entity(vec![signal(1, "go")]);
        let Step::Run(ops) = e.next_step() else { panic!() };
        e.start_batch(&ops);
        let actions = vec![
            OperationAction {
                id: 0,
                operation_action_type: Some(A::SendSignal(SendSignalAction {
                    instance_id: "@b@2".into(),
                    name: "ping".into(),
                    scheduled_time: Some(from_ms(1000)),
                    ..Default::default()
                })),
            },
            OperationAction {
                id: 1,
                operation_action_type: Some(A::StartNewOrchestration(StartNewOrchestrationAction {
                    instance_id: "o".into(),
                    name: "Orch".into(),
                    ..Default::default()
                })),
            },
        ];
        let fx =
            e.complete_batch(&ops, BatchOutcome { results: vec![OpResult::Success(None)], actions, state: None }, 10);
        assert!(
            matches!(&fx.outgoing[0], Outgoing::ToEntity { entity_id, visible_at_ms: 1000, .. } if entity_id == "@b@2")
        );
        assert!(
            matches!(&fx.outgoing[1], Outgoing::StartOrchestration { instance_id, name, .. } if instance_id == "o" && name == "Orch")
        );
    }

    #[test]
    fn a_lock_is_granted_forwarded_along_the_lock_set_and_finally_reported() {
        let set = ["@a@1", "@b@2"];
        let e = entity(vec![lock(1, "o", &set, 0)]);
        let Step::Apply(fx) = e.next_step() else { panic!() };
        assert_eq!(fx.lock, Lock::Held { owner: "o".into(), critical_section_id: "cs-o".into() });
        assert!(matches!(&fx.outgoing[..], [Outgoing::ToEntity { entity_id, event, .. }]
            if entity_id == "@b@2" && matches!(&event.event_type, Some(EventType::EntityLockRequested(l)) if l.position == 1)));
        let last = entity(vec![lock(1, "o", &set, 1)]);
        let Step::Apply(fx) = last.next_step() else { panic!() };
        assert!(matches!(&fx.outgoing[..], [Outgoing::ToOrchestration { instance_id, event, .. }]
            if instance_id == "o" && matches!(&event.event_type, Some(EventType::EntityLockGranted(g)) if g.critical_section_id == "cs-o")));
    }

    #[test]
    fn a_locked_entity_serves_only_its_owner_and_others_keep_their_place() {
        let mut e = entity(vec![lock(1, "o", &["@a@1"], 0), signal(2, "other"), lock(3, "p", &["@a@1"], 0)]);
        let Step::Apply(fx) = e.next_step() else { panic!() };
        e.applied(&fx);
        assert_eq!(e.next_step(), Step::Wait, "only the owner's requests run while it holds the lock");
        e.enqueue(call(4, "inside", "o"));
        assert_eq!(ids(&e.next_step()), vec![4]);
        run_all(&mut e, Some("v"));
        e.enqueue(unlock(5, "o"));
        let Step::Apply(fx) = e.next_step() else { panic!() };
        assert_eq!(fx.lock, Lock::Free);
        e.applied(&fx);
        assert_eq!(ids(&e.next_step()), vec![2], "the signal queued before p's lock request runs first");
        run_all(&mut e, Some("v2"));
        let Step::Apply(fx) = e.next_step() else { panic!() };
        assert_eq!(fx.lock.owner(), Some("p"));
    }

    #[test]
    fn a_stale_unlock_is_consumed_at_once_even_while_another_section_holds_the_lock() {
        let mut e = entity(vec![lock(1, "o", &["@a@1"], 0)]);
        let Step::Apply(fx) = e.next_step() else { panic!() };
        e.applied(&fx);
        // "p" held the lock earlier (its section was released when it ended); its unlock
        // arrives now, while "o" holds the lock, behind a signal that must wait.
        e.enqueue(signal(2, "waits"));
        e.enqueue(unlock(3, "p"));
        let Step::Apply(fx) = e.next_step() else { panic!("the stale unlock runs") };
        assert_eq!(fx.consumed, vec![3]);
        assert_eq!(fx.lock.owner(), Some("o"), "it releases nothing");
        e.applied(&fx);
        assert_eq!(e.next_step(), Step::Wait, "the signal still waits for o's section");
    }

    #[test]
    fn a_batch_stops_at_a_lock_request() {
        let e = entity(vec![signal(1, "a"), lock(2, "o", &["@a@1"], 0), signal(3, "b")]);
        assert_eq!(ids(&e.next_step()), vec![1]);
    }

    #[test]
    fn releasing_an_ended_owner_frees_the_lock_and_stale_unlocks_change_nothing() {
        let mut e = entity(vec![lock(1, "o", &["@a@1"], 0)]);
        let Step::Apply(fx) = e.next_step() else { panic!() };
        e.applied(&fx);
        assert!(e.release_owner("someone-else").is_none());
        let fx = e.release_owner("o").expect("owner holds it");
        e.applied(&fx);
        assert_eq!(e.lock, Lock::Free);
        e.enqueue(unlock(2, "o"));
        let Step::Apply(fx) = e.next_step() else { panic!() };
        assert_eq!((fx.consumed.clone(), fx.lock.clone()), (vec![2], Lock::Free));
        e.applied(&fx);
        assert!(e.is_empty());
    }

    #[test]
    fn orchestration_actions_route_to_entities_with_reply_addresses() {
        use duro_proto::send_entity_message_action::EntityMessageType as M;
        let call = SendEntityMessageAction {
            entity_message_type: Some(M::EntityOperationCalled(EntityOperationCalledEvent {
                request_id: "r".into(),
                operation: "get".into(),
                target_instance_id: Some("@Counter@k".into()),
                parent_instance_id: Some("orch".into()),
                ..Default::default()
            })),
        };
        let (history, msg) = route_action(&call, "orch", "exec", 50).expect("routed");
        assert_eq!((msg.entity_id.as_str(), msg.visible_at_ms), ("@counter@k", 50));
        assert_eq!(history, msg.event);
        let Request::Operation { reply_to, .. } = Request::from_event(&msg.event).expect("queued") else { panic!() };
        assert_eq!(reply_to, Some(ReplyTo { instance_id: "orch".into(), execution_id: Some("exec".into()) }));
        let bad = SendEntityMessageAction {
            entity_message_type: Some(M::EntityOperationSignaled(EntityOperationSignaledEvent {
                target_instance_id: Some("no-at-sign".into()),
                ..Default::default()
            })),
        };
        assert!(route_action(&bad, "orch", "exec", 0).is_err());
        let lock = SendEntityMessageAction {
            entity_message_type: Some(M::EntityLockRequested(EntityLockRequestedEvent {
                critical_section_id: "cs".into(),
                lock_set: vec!["@a@1".into(), "@b@1".into()],
                position: 0,
                parent_instance_id: None,
            })),
        };
        let (_, msg) = route_action(&lock, "orch", "exec", 0).expect("lock");
        assert_eq!(msg.entity_id, "@a@1");
        assert!(matches!(Request::from_event(&msg.event), Ok(Request::Lock { owner, .. }) if owner == "orch"));
    }
}
