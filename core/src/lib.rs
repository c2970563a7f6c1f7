//! `duro-core`, the functional core: the orchestration state machine, with no I/O.
//!
//! Given an instance's committed state, the events of one turn and the worker's (or the
//! sidecar's own) decisions, the functions here compute everything that turn changes:
//! history to append, the new runtime status and output, and the outbox (activities,
//! timers, messages to other instances, children to create). The engine commits that in
//! one transaction and acts on the outbox afterwards. Nothing here reads a clock, a
//! database, a random source or a socket: `now` and new ids are arguments. This crate's
//! dependencies (protobuf messages only, no tokio/rusqlite/tonic/uuid/rand) keep it that way.

pub mod control;
pub mod entity;
pub mod events;
pub mod time;
pub mod timespan;
pub mod turn;

use std::collections::HashMap;

use duro_proto::history_event::EventType;
use duro_proto::{
    ActivityRequest, HistoryEvent, OrchestrationStatus, OrchestrationTraceContext, ParentInstanceInfo,
    TaskFailureDetails,
};

pub use events::StartSpec;

/// Whether a status is final: no more turns, events are dropped.
/// Longest accepted instance id (in bytes).
pub const MAX_INSTANCE_ID_LEN: usize = 1024;

/// Why `value` is not an acceptable instance id, if it is not: the one rule for ids from
/// clients (gRPC, HTTP) and from workers (child ids, event and terminate targets).
pub fn instance_id_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("instanceId is required".into());
    }
    if value.trim() != value {
        return Some("instanceId must not start or end with whitespace".into());
    }
    if value.len() > MAX_INSTANCE_ID_LEN {
        return Some(format!("instanceId is {} bytes long; the limit is {MAX_INSTANCE_ID_LEN}", value.len()));
    }
    value
        .chars()
        .find(|c| c.is_control())
        .map(|c| format!("instanceId contains the control character U+{:04X}", u32::from(c)))
}

pub fn is_terminal(status: OrchestrationStatus) -> bool {
    matches!(
        status,
        OrchestrationStatus::Completed
            | OrchestrationStatus::Failed
            | OrchestrationStatus::Terminated
            | OrchestrationStatus::Canceled
    )
}

/// Decodes a stored status value; unknown values read as FAILED rather than RUNNING so a
/// corrupt row can never look live.
pub fn status_from_i32(value: i32) -> OrchestrationStatus {
    OrchestrationStatus::try_from(value).unwrap_or(OrchestrationStatus::Failed)
}

/// What the core needs to know about an instance's current execution.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub execution_id: String,
    pub name: String,
    pub version: Option<String>,
    pub status: OrchestrationStatus,
    pub input: Option<String>,
    pub parent: Option<ParentInstanceInfo>,
    pub tags: HashMap<String, String>,
    /// The current execution's orchestration trace context, as the worker last sent it
    /// (`OrchestratorResponse.orchestrationTraceContext`); sent back with every turn.
    pub trace_context: Option<OrchestrationTraceContext>,
}

/// Orders a turn's new events: a new execution's start first, then events carried over
/// by continue-as-new, then everything else in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Start = 0,
    Carryover = 1,
    Normal = 2,
}

impl Priority {
    pub fn from_i64(v: i64) -> Priority {
        match v {
            0 => Priority::Start,
            1 => Priority::Carryover,
            _ => Priority::Normal,
        }
    }
}

/// An event for an instance's inbox (its own timers, another instance's events, a
/// parent's child-completion notice).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub target: String,
    /// Only this execution may consume it (timers, results); `None`: any execution.
    pub execution_id: Option<String>,
    pub priority: Priority,
    pub visible_at_ms: i64,
    pub event: HistoryEvent,
}

impl Message {
    pub fn now(target: impl Into<String>, execution_id: Option<String>, event: HistoryEvent, now_ms: i64) -> Self {
        Message { target: target.into(), execution_id, priority: Priority::Normal, visible_at_ms: now_ms, event }
    }
}

/// A new orchestration instance (a client start or a sub-orchestration).
#[derive(Debug, Clone, PartialEq)]
pub struct NewInstance {
    pub spec: StartSpec,
    pub created_at_ms: i64,
    /// When the first turn may run (`max(now, scheduledStartTimestamp)`).
    pub visible_at_ms: i64,
    /// For a child: where to report that the id is taken by a live instance.
    pub parent_task: Option<ParentTask>,
}

impl NewInstance {
    pub fn started_event(&self) -> HistoryEvent {
        events::execution_started(self.created_at_ms, &self.spec)
    }

    /// A top-level instance with no version, parent, schedule or tags that starts at `now_ms`
    /// (the shape tests and simulations need).
    pub fn simple(id: &str, execution_id: &str, name: &str, input: Option<String>, now_ms: i64) -> NewInstance {
        NewInstance {
            spec: StartSpec {
                instance_id: id.into(),
                execution_id: execution_id.into(),
                name: name.into(),
                version: None,
                input,
                parent: None,
                scheduled_start_ms: None,
                parent_trace_context: None,
                tags: Default::default(),
            },
            created_at_ms: now_ms,
            visible_at_ms: now_ms,
            parent_task: None,
        }
    }

    /// The instance as it stands once created: pending, with an empty history.
    pub fn info(&self) -> InstanceInfo {
        let s = &self.spec;
        InstanceInfo {
            instance_id: s.instance_id.clone(),
            execution_id: s.execution_id.clone(),
            name: s.name.clone(),
            version: s.version.clone(),
            status: OrchestrationStatus::Pending,
            input: s.input.clone(),
            parent: s.parent.clone(),
            tags: s.tags.clone(),
            trace_context: None,
        }
    }
}

/// The parent's task that created a child, for failure notices.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentTask {
    pub instance_id: String,
    pub execution_id: String,
    pub task_id: i32,
}

/// A new execution of the same instance (continue-as-new).
#[derive(Debug, Clone, PartialEq)]
pub struct NewExecution {
    pub spec: StartSpec,
    pub carryover: Vec<HistoryEvent>,
}

/// A change to the stored custom status.
#[derive(Debug, Clone, PartialEq)]
pub enum CustomStatus {
    Keep,
    Set(Option<String>),
}

/// Everything one turn changes, committed atomically by the store.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnOutcome {
    /// Events appended to the current execution's history (empty on continue-as-new).
    pub append: Vec<HistoryEvent>,
    pub status: OrchestrationStatus,
    pub output: Option<String>,
    pub failure: Option<TaskFailureDetails>,
    pub custom_status: CustomStatus,
    pub trace_context: Option<OrchestrationTraceContext>,
    pub activities: Vec<ActivityRequest>,
    pub messages: Vec<Message>,
    /// Requests for entities' queues (signals, calls, lock requests, unlocks).
    pub entity_messages: Vec<entity::EntityMessage>,
    pub children: Vec<NewInstance>,
    pub continue_as_new: Option<NewExecution>,
    /// How many of the turn's new events (after `orchestratorStarted`) were consumed; the
    /// rest go back to the inbox for the next turn.
    pub consumed_new_events: usize,
}

impl TurnOutcome {
    /// An outcome that changes nothing but the status.
    pub fn unchanged(status: OrchestrationStatus, consumed_new_events: usize) -> Self {
        TurnOutcome {
            append: Vec::new(),
            status,
            output: None,
            failure: None,
            custom_status: CustomStatus::Keep,
            trace_context: None,
            activities: Vec::new(),
            messages: Vec::new(),
            entity_messages: Vec::new(),
            children: Vec::new(),
            continue_as_new: None,
            consumed_new_events,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.continue_as_new.is_none() && is_terminal(self.status)
    }
}

/// Whether an inbound event is handled by the sidecar itself rather than a worker.
pub fn is_control_event(event: &HistoryEvent) -> bool {
    matches!(
        event.event_type,
        Some(EventType::ExecutionTerminated(_))
            | Some(EventType::ExecutionSuspended(_))
            | Some(EventType::ExecutionResumed(_))
    )
}

/// The ids of children this execution created, in creation order, without duplicates.
pub fn child_instance_ids(history: &[HistoryEvent]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for e in history {
        if let Some(EventType::SubOrchestrationInstanceCreated(c)) = &e.event_type {
            if !ids.contains(&c.instance_id) {
                ids.push(c.instance_id.clone());
            }
        }
    }
    ids
}

/// The message that tells a parent how its child ended; `None` without a parent.
pub fn parent_notice(
    info: &InstanceInfo,
    status: OrchestrationStatus,
    output: &Option<String>,
    failure: &Option<TaskFailureDetails>,
    now_ms: i64,
) -> Option<Message> {
    let parent = info.parent.as_ref()?;
    let parent_instance = parent.orchestration_instance.as_ref()?;
    let task_id = parent.task_scheduled_id;
    let event = match status {
        OrchestrationStatus::Completed => events::sub_orchestration_completed(now_ms, task_id, output.clone()),
        OrchestrationStatus::Terminated => events::sub_orchestration_failed(
            now_ms,
            task_id,
            events::failure(
                "TaskTerminated",
                format!(
                    "Sub-orchestration '{}' was terminated{}",
                    info.instance_id,
                    output.as_deref().map(|o| format!(": {o}")).unwrap_or_default()
                ),
                true,
            ),
        ),
        _ => events::sub_orchestration_failed(
            now_ms,
            task_id,
            failure.clone().unwrap_or_else(|| {
                events::failure(
                    "SubOrchestrationFailed",
                    format!("Sub-orchestration '{}' failed without failure details", info.instance_id),
                    false,
                )
            }),
        ),
    };
    Some(Message::now(parent_instance.instance_id.clone(), parent_instance.execution_id.clone(), event, now_ms))
}
