//! The replay engine: turns (past events, new events, registered orchestrator) into the
//! turn's actions and custom status. Pure: no I/O, no clock, no tokio.
//!
//! How a turn runs:
//!
//! 1. Every event of `pastEvents` (replaying) and then of `newEvents` is applied in order.
//!    `orchestratorStarted` advances the deterministic clock; `executionStarted` creates the
//!    orchestrator's future; results (`taskCompleted`, `timerFired`, …) complete the slot of
//!    the task with that `taskScheduledId`/`timerId`; `eventRaised` goes to the oldest waiter
//!    of that name (case-insensitive) or is buffered.
//! 2. After each event the orchestrator future is polled (on a flag waker, no executor) until
//!    it stalls. Each durable call it makes appends an action with the next id (0, 1, 2, … in
//!    code order).
//! 3. An action-derived history event (`taskScheduled`, `timerCreated`,
//!    `subOrchestrationInstanceCreated`, `eventSent`, and for entities `entityOperationSignaled`,
//!    `entityOperationCalled`, `entityLockRequested`, `entityUnlockSent`) must match the action
//!    the code produced with that id (same kind, same name or target); otherwise the
//!    orchestration fails with a `NonDeterminismError` naming both.
//!    Entity results are matched by their request id (`entityOperationCompleted` /
//!    `entityOperationFailed`) and lock grants by critical-section id (`entityLockGranted`);
//!    both ids come from [`OrchestrationContext::new_uuid`], so they are the same on replay.
//! 4. Actions not yet in the history are the turn's output, followed by
//!    `completeOrchestration` once the orchestrator returned, called `continue_as_new`, was
//!    terminated or failed.
//!
//! Suspension buffers every event except `executionResumed`/`executionTerminated` until the
//! orchestration is resumed. Unknown or irrelevant event kinds are ignored.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use duro_proto::history_event::EventType;
use duro_proto::orchestrator_action::OrchestratorActionType;
use duro_proto::send_entity_message_action::EntityMessageType;
use duro_proto::{
    CompleteOrchestrationAction, EventRaisedEvent, HistoryEvent, OrchestrationStatus, OrchestratorAction,
    OrchestratorRequest, OrchestratorResponse,
};
use futures::future::LocalBoxFuture;
use futures::task::ArcWake;

use crate::context::{OrchestrationContext, ParentOrchestration};
use crate::error::FailureDetails;
use crate::registry::{ErasedResult, Registry};
use crate::task::{self, Outcome, SlotRef};
use crate::time;

/// Error type recorded when replay finds the code and the history disagree.
pub const NON_DETERMINISM_ERROR: &str = "NonDeterminismError";
/// Error type recorded when the orchestrator name is not registered.
pub const NOT_REGISTERED_ERROR: &str = "OrchestratorNotRegisteredError";
/// Error type recorded when the orchestrator function panicked.
pub const PANIC_ERROR: &str = "OrchestratorPanic";

/// Safety valve against futures that wake themselves forever.
const MAX_POLLS_PER_EVENT: usize = 100_000;

/// The result of one turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayOutput {
    /// New actions in id order; a `completeOrchestration` action, if any, is last.
    pub actions: Vec<OrchestratorAction>,
    /// The custom status, if the orchestrator set one (absent = leave unchanged).
    pub custom_status: Option<String>,
}

impl ReplayOutput {
    /// The `completeOrchestration` action, if the orchestration finished in this turn.
    pub fn completion(&self) -> Option<&CompleteOrchestrationAction> {
        self.actions.iter().rev().find_map(|a| match &a.orchestrator_action_type {
            Some(OrchestratorActionType::CompleteOrchestration(c)) => Some(c),
            _ => None,
        })
    }

    /// The completion status, if the orchestration finished in this turn.
    pub fn status(&self) -> Option<OrchestrationStatus> {
        self.completion().and_then(|c| OrchestrationStatus::try_from(c.orchestration_status).ok())
    }
}

/// Runs one orchestration turn: replays `past_events`, applies `new_events`, and returns the
/// new actions and custom status. Deterministic: the same inputs give the same output.
///
/// ```
/// use duro_sdk::{replay, OrchestrationContext, Registry};
/// use duro_sdk::testing::HistoryBuilder;
///
/// let mut registry = Registry::new();
/// registry.add_orchestrator("Greet", |ctx: OrchestrationContext, name: String| async move {
///     let greeting: String = ctx.call_activity("SayHello", &name).await?;
///     Ok(greeting)
/// });
///
/// // First turn: the orchestration starts and schedules the activity (action id 0).
/// let mut history = HistoryBuilder::new();
/// let new = history.start_turn().execution_started("Greet", Some("\"Tokyo\"")).take_new();
/// let out = replay::execute(&registry, "instance-1", history.past(), &new);
/// assert_eq!(out.actions.len(), 1);
/// history.commit_turn(&new, &out.actions);
///
/// // Second turn: the activity completed; the orchestration completes with its result.
/// let new = history.start_turn().task_completed(0, Some("\"Hello, Tokyo!\"")).take_new();
/// let out = replay::execute(&registry, "instance-1", history.past(), &new);
/// assert_eq!(out.completion().and_then(|c| c.result.as_deref()), Some("\"Hello, Tokyo!\""));
/// ```
pub fn execute(
    registry: &Registry,
    instance_id: &str,
    past_events: &[HistoryEvent],
    new_events: &[HistoryEvent],
) -> ReplayOutput {
    Engine::new(registry, instance_id).run(past_events, new_events)
}

/// Runs one turn for an `OrchestratorRequest` and builds the `OrchestratorResponse` (without
/// its completion token).
pub fn execute_request(registry: &Registry, request: &OrchestratorRequest) -> OrchestratorResponse {
    let out = execute(registry, &request.instance_id, &request.past_events, &request.new_events);
    OrchestratorResponse {
        instance_id: request.instance_id.clone(),
        actions: out.actions,
        custom_status: out.custom_status,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// State shared with the orchestration context
// ---------------------------------------------------------------------------------------------

/// A raised event not yet claimed by a waiter.
#[derive(Debug, Clone)]
pub(crate) struct BufferedEvent {
    pub(crate) name: String,
    pub(crate) input: Option<String>,
}

struct Waiter {
    id: u64,
    key: String,
    slot: SlotRef,
}

/// The orchestration's critical section: the entities it asked to lock (sorted, distinct).
#[derive(Debug, Clone)]
pub(crate) struct SectionState {
    pub(crate) id: String,
    pub(crate) entities: Vec<String>,
    /// `entityLockGranted` arrived: every entity of the set is locked.
    pub(crate) granted: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct ContinueAsNew {
    pub(crate) input: Option<String>,
    pub(crate) preserve_unprocessed_events: bool,
}

/// Everything the orchestration context reads and writes during a turn.
pub(crate) struct ReplayState {
    pub(crate) instance_id: String,
    pub(crate) execution_id: Option<String>,
    pub(crate) name: String,
    pub(crate) version: Option<String>,
    pub(crate) parent: Option<ParentOrchestration>,
    pub(crate) current_time: DateTime<Utc>,
    pub(crate) is_replaying: bool,
    pub(crate) custom_status: Option<String>,
    pub(crate) continue_as_new: Option<ContinueAsNew>,
    pub(crate) uuid_counter: u64,
    next_action_id: i32,
    pending_actions: BTreeMap<i32, OrchestratorAction>,
    open_tasks: HashMap<i32, SlotRef>,
    buffered_events: VecDeque<BufferedEvent>,
    waiters: VecDeque<Waiter>,
    next_waiter_id: u64,
    /// Entity calls awaiting `entityOperationCompleted`/`Failed`, by request id.
    entity_calls: HashMap<String, SlotRef>,
    /// Lock requests awaiting `entityLockGranted`, by critical-section id.
    lock_requests: HashMap<String, SlotRef>,
    /// The critical section requested or held, if any.
    pub(crate) critical_section: Option<SectionState>,
    /// The engine is dropping the orchestrator future at the end of the turn: drop handlers
    /// must not record actions (a critical section's guard would otherwise unlock).
    pub(crate) tearing_down: bool,
}

pub(crate) fn event_key(name: &str) -> String {
    name.to_lowercase()
}

impl ReplayState {
    fn new(instance_id: &str) -> Self {
        ReplayState {
            instance_id: instance_id.to_string(),
            execution_id: None,
            name: String::new(),
            version: None,
            parent: None,
            current_time: time::epoch(),
            is_replaying: true,
            custom_status: None,
            continue_as_new: None,
            uuid_counter: 0,
            next_action_id: 0,
            pending_actions: BTreeMap::new(),
            open_tasks: HashMap::new(),
            buffered_events: VecDeque::new(),
            waiters: VecDeque::new(),
            next_waiter_id: 0,
            entity_calls: HashMap::new(),
            lock_requests: HashMap::new(),
            critical_section: None,
            tearing_down: false,
        }
    }

    /// Records an entity call and opens a slot for its result, keyed by its request id.
    pub(crate) fn schedule_entity_call(&mut self, kind: OrchestratorActionType, request_id: &str) -> SlotRef {
        self.push_action(kind);
        let slot = task::new_slot();
        self.entity_calls.insert(request_id.to_string(), slot.clone());
        slot
    }

    /// Records a lock request and opens a slot for its grant, keyed by the critical section.
    pub(crate) fn schedule_lock(&mut self, kind: OrchestratorActionType, critical_section_id: &str) -> SlotRef {
        self.push_action(kind);
        let slot = task::new_slot();
        self.lock_requests.insert(critical_section_id.to_string(), slot.clone());
        slot
    }

    /// Records a new action and opens a slot for its result.
    pub(crate) fn schedule(&mut self, kind: OrchestratorActionType) -> (i32, SlotRef) {
        let id = self.push_action(kind);
        let slot = task::new_slot();
        self.open_tasks.insert(id, slot.clone());
        (id, slot)
    }

    /// The id the next action will get.
    pub(crate) fn pending_id_preview(&self) -> i32 {
        self.next_action_id
    }

    /// Records a new action that has no result (e.g. `sendEvent`).
    pub(crate) fn push_action(&mut self, kind: OrchestratorActionType) -> i32 {
        let id = self.next_action_id;
        self.next_action_id += 1;
        self.pending_actions.insert(id, OrchestratorAction { id, orchestrator_action_type: Some(kind) });
        id
    }

    /// Takes the oldest buffered event with this name, if any.
    pub(crate) fn take_buffered_event(&mut self, name: &str) -> Option<BufferedEvent> {
        let key = event_key(name);
        let pos = self.buffered_events.iter().position(|e| event_key(&e.name) == key)?;
        self.buffered_events.remove(pos)
    }

    /// Queues a waiter for the next event with this name.
    pub(crate) fn add_waiter(&mut self, name: &str) -> (u64, SlotRef) {
        let id = self.next_waiter_id;
        self.next_waiter_id += 1;
        let slot = task::new_slot();
        self.waiters.push_back(Waiter { id, key: event_key(name), slot: slot.clone() });
        (id, slot)
    }

    /// Removes a waiter that no longer wants an event (timed out or dropped).
    pub(crate) fn remove_waiter(&mut self, id: u64) {
        self.waiters.retain(|w| w.id != id);
    }

    fn deliver_event(&mut self, name: String, input: Option<String>) {
        let key = event_key(&name);
        match self.waiters.iter().position(|w| w.key == key) {
            Some(pos) => {
                if let Some(w) = self.waiters.remove(pos) {
                    task::complete(&w.slot, Ok(input));
                }
            }
            None => self.buffered_events.push_back(BufferedEvent { name, input }),
        }
    }

    fn open_task(&self, id: i32) -> Option<SlotRef> {
        self.open_tasks.get(&id).cloned()
    }
}

// ---------------------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct WakeFlag(AtomicBool);

impl ArcWake for WakeFlag {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.store(true, Ordering::SeqCst);
    }
}

/// How the execution ended in this turn.
enum Finish {
    /// The orchestrator function returned.
    Returned(ErasedResult),
    /// `continue_as_new` was called (and the function did not fail).
    ContinuedAsNew(ContinueAsNew),
    /// `executionTerminated`: complete TERMINATED with this output.
    Terminated(Option<String>),
    /// The engine itself failed the orchestration (non-determinism, panic, not registered).
    Broken(FailureDetails),
}

struct Engine<'r> {
    registry: &'r Registry,
    state: Rc<RefCell<ReplayState>>,
    root: Option<LocalBoxFuture<'static, ErasedResult>>,
    flag: Arc<WakeFlag>,
    finish: Option<Finish>,
    suspended: bool,
    suspended_events: Vec<HistoryEvent>,
    /// `eventRaised` events seen after the orchestration finished in this turn (carried over
    /// on continue-as-new with `preserve_unprocessed_events`).
    late_events: Vec<BufferedEvent>,
}

fn non_determinism(message: String) -> FailureDetails {
    FailureDetails {
        error_type: NON_DETERMINISM_ERROR.into(),
        error_message: format!(
            "non-deterministic orchestration: {message}. The orchestrator code no longer matches the recorded \
             history; was it changed while instances were running?"
        ),
        stack_trace: None,
        inner_failure: None,
        is_non_retriable: true,
    }
}

/// `kind "name" (id N)` of an action-derived history event.
fn describe_event(id: i32, e: &EventType) -> String {
    match e {
        EventType::TaskScheduled(t) => format!("taskScheduled \"{}\" (id {id})", t.name),
        EventType::TimerCreated(_) => format!("timerCreated (id {id})"),
        EventType::SubOrchestrationInstanceCreated(s) => {
            format!("subOrchestrationInstanceCreated \"{}\" (id {id})", s.name)
        }
        EventType::EventSent(s) => format!("eventSent \"{}\" (id {id})", s.name),
        EventType::EntityOperationSignaled(e) => format!(
            "entityOperationSignaled \"{}\" to {} (id {id})",
            e.operation,
            e.target_instance_id.as_deref().unwrap_or("?")
        ),
        EventType::EntityOperationCalled(e) => format!(
            "entityOperationCalled \"{}\" on {} (id {id})",
            e.operation,
            e.target_instance_id.as_deref().unwrap_or("?")
        ),
        EventType::EntityLockRequested(e) => format!("entityLockRequested of {:?} (id {id})", e.lock_set),
        EventType::EntityUnlockSent(e) => {
            format!("entityUnlockSent to {} (id {id})", e.target_instance_id.as_deref().unwrap_or("?"))
        }
        _ => format!("event (id {id})"),
    }
}

/// `kind "name" (id N)` of an action.
fn describe_action(a: &OrchestratorAction) -> String {
    let id = a.id;
    match &a.orchestrator_action_type {
        Some(OrchestratorActionType::ScheduleTask(t)) => {
            format!("scheduleTask \"{}\" (id {id})", t.name)
        }
        Some(OrchestratorActionType::CreateTimer(_)) => format!("createTimer (id {id})"),
        Some(OrchestratorActionType::CreateSubOrchestration(s)) => {
            format!("createSubOrchestration \"{}\" (id {id})", s.name)
        }
        Some(OrchestratorActionType::SendEvent(s)) => format!("sendEvent \"{}\" (id {id})", s.name),
        Some(OrchestratorActionType::CompleteOrchestration(_)) => {
            format!("completeOrchestration (id {id})")
        }
        Some(OrchestratorActionType::TerminateOrchestration(_)) => {
            format!("terminateOrchestration (id {id})")
        }
        Some(OrchestratorActionType::SendEntityMessage(m)) => match &m.entity_message_type {
            Some(EntityMessageType::EntityOperationSignaled(e)) => {
                format!("signal \"{}\" to {} (id {id})", e.operation, e.target_instance_id.as_deref().unwrap_or("?"))
            }
            Some(EntityMessageType::EntityOperationCalled(e)) => {
                format!("call \"{}\" on {} (id {id})", e.operation, e.target_instance_id.as_deref().unwrap_or("?"))
            }
            Some(EntityMessageType::EntityLockRequested(e)) => format!("lock of {:?} (id {id})", e.lock_set),
            Some(EntityMessageType::EntityUnlockSent(e)) => {
                format!("unlock of {} (id {id})", e.target_instance_id.as_deref().unwrap_or("?"))
            }
            None => format!("sendEntityMessage (id {id})"),
        },
        Some(OrchestratorActionType::RewindOrchestration(_)) => {
            format!("rewindOrchestration (id {id})")
        }
        None => format!("empty action (id {id})"),
    }
}

/// Whether the action is the one that produced this history event.
fn action_matches(event: &EventType, action: &OrchestratorAction) -> bool {
    match (event, &action.orchestrator_action_type) {
        (EventType::TaskScheduled(e), Some(OrchestratorActionType::ScheduleTask(a))) => e.name == a.name,
        (EventType::TimerCreated(_), Some(OrchestratorActionType::CreateTimer(_))) => true,
        (EventType::SubOrchestrationInstanceCreated(e), Some(OrchestratorActionType::CreateSubOrchestration(a))) => {
            e.name == a.name
        }
        (EventType::EventSent(e), Some(OrchestratorActionType::SendEvent(a))) => {
            e.name == a.name && a.instance.as_ref().is_none_or(|i| i.instance_id == e.instance_id)
        }
        (event, Some(OrchestratorActionType::SendEntityMessage(m))) => match (event, &m.entity_message_type) {
            (EventType::EntityOperationSignaled(e), Some(EntityMessageType::EntityOperationSignaled(a))) => {
                e.operation == a.operation && same_target(&e.target_instance_id, &a.target_instance_id)
            }
            (EventType::EntityOperationCalled(e), Some(EntityMessageType::EntityOperationCalled(a))) => {
                e.operation == a.operation && same_target(&e.target_instance_id, &a.target_instance_id)
            }
            (EventType::EntityLockRequested(e), Some(EntityMessageType::EntityLockRequested(a))) => {
                e.lock_set == a.lock_set
            }
            (EventType::EntityUnlockSent(e), Some(EntityMessageType::EntityUnlockSent(a))) => {
                same_target(&e.target_instance_id, &a.target_instance_id)
            }
            _ => false,
        },
        _ => false,
    }
}

/// Whether an entity event and an action name the same entity (an absent side matches).
fn same_target(history: &Option<String>, code: &Option<String>) -> bool {
    match (history, code) {
        (Some(h), Some(c)) => h == c,
        _ => true,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

impl<'r> Engine<'r> {
    fn new(registry: &'r Registry, instance_id: &str) -> Self {
        Engine {
            registry,
            state: Rc::new(RefCell::new(ReplayState::new(instance_id))),
            root: None,
            flag: Arc::new(WakeFlag(AtomicBool::new(true))),
            finish: None,
            suspended: false,
            suspended_events: Vec::new(),
            late_events: Vec::new(),
        }
    }

    fn run(mut self, past: &[HistoryEvent], new: &[HistoryEvent]) -> ReplayOutput {
        let all = past.iter().map(|e| (true, e)).chain(new.iter().map(|e| (false, e)));
        for (replaying, event) in all {
            if self.finish.is_some() {
                self.after_finish(event);
                continue;
            }
            self.state.borrow_mut().is_replaying = replaying;
            self.handle(event);
        }
        if self.finish.is_none() && self.root.is_none() {
            self.finish = Some(Finish::Broken(FailureDetails::new(
                "InvalidHistory",
                "the orchestration history has no executionStarted event",
            )));
        }
        // Events still held by a suspension stay unprocessed; carry raised ones over if needed.
        for e in std::mem::take(&mut self.suspended_events) {
            if let Some(EventType::EventRaised(r)) = &e.event_type {
                self.late_events.push(BufferedEvent { name: r.name.clone(), input: r.input.clone() });
            }
        }
        // Drop the orchestrator future before reading the state (its drop may unregister
        // waiters); a critical section dropped now is not left by the code, so no unlock.
        self.state.borrow_mut().tearing_down = true;
        self.root = None;
        self.output()
    }

    fn after_finish(&mut self, event: &HistoryEvent) {
        if let Some(EventType::EventRaised(r)) = &event.event_type {
            self.late_events.push(BufferedEvent { name: r.name.clone(), input: r.input.clone() });
        }
    }

    fn handle(&mut self, event: &HistoryEvent) {
        let Some(kind) = &event.event_type else {
            return;
        };
        if self.suspended && !matches!(kind, EventType::ExecutionResumed(_) | EventType::ExecutionTerminated(_)) {
            self.suspended_events.push(event.clone());
            return;
        }
        match kind {
            EventType::ExecutionSuspended(_) => self.suspended = true,
            EventType::ExecutionResumed(_) => {
                self.suspended = false;
                for e in std::mem::take(&mut self.suspended_events) {
                    if self.finish.is_some() {
                        self.after_finish(&e);
                    } else {
                        self.handle(&e);
                    }
                }
            }
            _ => {
                if let Err(details) = self.apply(event, kind) {
                    self.finish = Some(Finish::Broken(details));
                    return;
                }
                self.poll_root();
            }
        }
    }

    /// Applies one (non-suspension) event to the state.
    fn apply(&mut self, event: &HistoryEvent, kind: &EventType) -> Result<(), FailureDetails> {
        match kind {
            EventType::OrchestratorStarted(_) => {
                if let Some(ts) = &event.timestamp {
                    self.state.borrow_mut().current_time = time::from_timestamp(ts);
                }
            }
            EventType::ExecutionStarted(started) => {
                if self.root.is_some() {
                    tracing::warn!("ignoring a second executionStarted event");
                    return Ok(());
                }
                {
                    let mut s = self.state.borrow_mut();
                    s.name = started.name.clone();
                    s.version = started.version.clone();
                    if let Some(inst) = &started.orchestration_instance {
                        if !inst.instance_id.is_empty() {
                            s.instance_id = inst.instance_id.clone();
                        }
                        s.execution_id = inst.execution_id.clone();
                    }
                    s.parent = started.parent_instance.as_ref().map(|p| ParentOrchestration {
                        name: p.name.clone(),
                        instance_id: p
                            .orchestration_instance
                            .as_ref()
                            .map(|i| i.instance_id.clone())
                            .unwrap_or_default(),
                        execution_id: p.orchestration_instance.as_ref().and_then(|i| i.execution_id.clone()),
                        task_scheduled_id: p.task_scheduled_id,
                    });
                }
                let Some(f) = self.registry.orchestrator(&started.name) else {
                    return Err(FailureDetails {
                        is_non_retriable: true,
                        ..FailureDetails::new(
                            NOT_REGISTERED_ERROR,
                            format!("no orchestrator named '{}' is registered with this worker", started.name),
                        )
                    });
                };
                let ctx = OrchestrationContext::from_state(self.state.clone());
                self.root = Some(f(ctx, started.input.clone()));
                self.flag.0.store(true, Ordering::SeqCst);
            }
            EventType::ExecutionTerminated(t) => {
                self.finish = Some(Finish::Terminated(t.input.clone()));
            }
            EventType::TaskScheduled(_)
            | EventType::TimerCreated(_)
            | EventType::SubOrchestrationInstanceCreated(_)
            | EventType::EventSent(_)
            | EventType::EntityOperationSignaled(_)
            | EventType::EntityOperationCalled(_)
            | EventType::EntityLockRequested(_)
            | EventType::EntityUnlockSent(_) => self.match_action(event.event_id, kind)?,
            EventType::EntityOperationCompleted(c) => self.deliver_entity_result(&c.request_id, Ok(c.output.clone())),
            EventType::EntityOperationFailed(f) => self.deliver_entity_result(
                &f.request_id,
                Err(f.failure_details.clone().map(FailureDetails::from_proto).unwrap_or_else(|| {
                    FailureDetails::new("EntityOperationFailed", "the entity operation failed without failure details")
                })),
            ),
            EventType::EntityLockGranted(g) => self.deliver_lock_grant(&g.critical_section_id),
            EventType::TaskCompleted(c) => self.deliver(c.task_scheduled_id, Ok(c.result.clone()), "taskCompleted"),
            EventType::TaskFailed(f) => self.deliver(
                f.task_scheduled_id,
                Err(f.failure_details.clone().map(FailureDetails::from_proto).unwrap_or_else(|| {
                    FailureDetails::new("TaskFailed", "the activity failed without failure details")
                })),
                "taskFailed",
            ),
            EventType::SubOrchestrationInstanceCompleted(c) => {
                self.deliver(c.task_scheduled_id, Ok(c.result.clone()), "subOrchestrationInstanceCompleted")
            }
            EventType::SubOrchestrationInstanceFailed(f) => self.deliver(
                f.task_scheduled_id,
                Err(f.failure_details.clone().map(FailureDetails::from_proto).unwrap_or_else(|| {
                    FailureDetails::new(
                        "SubOrchestrationFailed",
                        "the sub-orchestration failed without failure details",
                    )
                })),
                "subOrchestrationInstanceFailed",
            ),
            EventType::TimerFired(t) => self.deliver(t.timer_id, Ok(None), "timerFired"),
            EventType::EventRaised(r) => self.state.borrow_mut().deliver_event(r.name.clone(), r.input.clone()),
            // orchestratorCompleted, executionCompleted, executionRewound, genericEvent,
            // historyState and continueAsNew carry nothing this SDK needs.
            other => {
                tracing::trace!(kind = ?std::mem::discriminant(other), "ignoring history event")
            }
        }
        Ok(())
    }

    fn match_action(&mut self, id: i32, kind: &EventType) -> Result<(), FailureDetails> {
        let mut s = self.state.borrow_mut();
        match s.pending_actions.get(&id) {
            None => Err(non_determinism(format!(
                "history has {} but the orchestrator code produced no action with id {id} at this point",
                describe_event(id, kind)
            ))),
            Some(action) if !action_matches(kind, action) => Err(non_determinism(format!(
                "history has {} but the orchestrator code produced {}",
                describe_event(id, kind),
                describe_action(action)
            ))),
            Some(_) => {
                s.pending_actions.remove(&id);
                Ok(())
            }
        }
    }

    fn deliver(&mut self, id: i32, outcome: Outcome, kind: &str) {
        let slot = self.state.borrow().open_task(id);
        match slot {
            Some(slot) => {
                if !task::complete(&slot, outcome) {
                    tracing::debug!(id, kind, "ignoring a second result for a completed task");
                }
            }
            None => tracing::warn!(id, kind, "ignoring a result for a task the orchestrator never scheduled"),
        }
    }

    fn deliver_entity_result(&mut self, request_id: &str, outcome: Outcome) {
        let slot = self.state.borrow_mut().entity_calls.remove(request_id);
        match slot {
            Some(slot) => {
                task::complete(&slot, outcome);
            }
            None => tracing::warn!(request_id, "ignoring an entity result for a call the orchestrator never made"),
        }
    }

    fn deliver_lock_grant(&mut self, critical_section_id: &str) {
        let slot = {
            let mut s = self.state.borrow_mut();
            if let Some(cs) = s.critical_section.as_mut().filter(|cs| cs.id == critical_section_id) {
                cs.granted = true;
            }
            s.lock_requests.remove(critical_section_id)
        };
        match slot {
            Some(slot) => {
                task::complete(&slot, Ok(None));
            }
            None => tracing::warn!(critical_section_id, "ignoring a lock grant the orchestrator never asked for"),
        }
    }

    fn poll_root(&mut self) {
        let waker = futures::task::waker(self.flag.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..MAX_POLLS_PER_EVENT {
            let Some(root) = self.root.as_mut() else {
                return;
            };
            if !self.flag.0.swap(false, Ordering::SeqCst) {
                break;
            }
            match catch_unwind(AssertUnwindSafe(|| root.as_mut().poll(&mut cx))) {
                Ok(Poll::Pending) => {}
                Ok(Poll::Ready(result)) => {
                    let can = self.state.borrow_mut().continue_as_new.take();
                    self.finish = Some(match (result, can) {
                        (Ok(_), Some(can)) => Finish::ContinuedAsNew(can),
                        (result, _) => Finish::Returned(result),
                    });
                    self.root = None;
                    return;
                }
                Err(payload) => {
                    self.finish = Some(Finish::Broken(FailureDetails::new(
                        PANIC_ERROR,
                        format!("the orchestrator panicked: {}", panic_message(payload.as_ref())),
                    )));
                    self.root = None;
                    return;
                }
            }
        }
        // A stalled orchestrator that asked to continue as new is done with this execution.
        let can = self.state.borrow_mut().continue_as_new.take();
        if let Some(can) = can {
            self.finish = Some(Finish::ContinuedAsNew(can));
            self.root = None;
        }
    }

    fn output(self) -> ReplayOutput {
        let Engine { state, finish, late_events, .. } = self;
        let mut s = state.borrow_mut();
        let custom_status = s.custom_status.clone();
        let mut actions: Vec<OrchestratorAction> = Vec::new();
        let complete = |status: OrchestrationStatus| CompleteOrchestrationAction {
            orchestration_status: status as i32,
            ..Default::default()
        };
        let completion = match finish {
            None => None,
            Some(Finish::Returned(Ok(result))) => {
                Some((true, CompleteOrchestrationAction { result, ..complete(OrchestrationStatus::Completed) }))
            }
            Some(Finish::Returned(Err(details))) => Some((
                true,
                CompleteOrchestrationAction {
                    failure_details: Some(details.to_proto()),
                    ..complete(OrchestrationStatus::Failed)
                },
            )),
            Some(Finish::ContinuedAsNew(can)) => {
                let mut carryover = Vec::new();
                if can.preserve_unprocessed_events {
                    let now = Some(time::to_timestamp(s.current_time));
                    let unclaimed = s.buffered_events.drain(..).collect::<Vec<_>>();
                    for e in unclaimed.into_iter().chain(late_events) {
                        carryover.push(HistoryEvent {
                            event_id: -1,
                            timestamp: now,
                            event_type: Some(EventType::EventRaised(EventRaisedEvent { name: e.name, input: e.input })),
                        });
                    }
                }
                Some((
                    true,
                    CompleteOrchestrationAction {
                        result: can.input,
                        carryover_events: carryover,
                        ..complete(OrchestrationStatus::ContinuedAsNew)
                    },
                ))
            }
            Some(Finish::Terminated(output)) => Some((
                false,
                CompleteOrchestrationAction { result: output, ..complete(OrchestrationStatus::Terminated) },
            )),
            Some(Finish::Broken(details)) => Some((
                false,
                CompleteOrchestrationAction {
                    failure_details: Some(details.to_proto()),
                    ..complete(OrchestrationStatus::Failed)
                },
            )),
        };
        let keep_pending = completion.as_ref().is_none_or(|(keep, _)| *keep);
        if keep_pending {
            actions.extend(std::mem::take(&mut s.pending_actions).into_values());
        }
        if let Some((_, action)) = completion {
            let id = s.next_action_id;
            actions.push(OrchestratorAction {
                id,
                orchestrator_action_type: Some(OrchestratorActionType::CompleteOrchestration(action)),
            });
        }
        ReplayOutput { actions, custom_status }
    }
}
