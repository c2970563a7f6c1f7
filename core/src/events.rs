//! Builders for the history events the sidecar itself creates.
//!
//! Sidecar-made events carry `eventId = -1`; events derived from an orchestrator action
//! carry the action's id (protocol rule 4). Nothing here does I/O.

use std::collections::HashMap;

use duro_proto::history_event::EventType;
use duro_proto::*;

use super::time::from_ms;

/// Wraps an event payload in a [`HistoryEvent`] stamped with `now_ms`.
pub fn event(event_id: i32, now_ms: i64, kind: EventType) -> HistoryEvent {
    HistoryEvent { event_id, timestamp: Some(from_ms(now_ms)), event_type: Some(kind) }
}

/// A sidecar-made event (`eventId = -1`).
pub fn sidecar_event(now_ms: i64, kind: EventType) -> HistoryEvent {
    event(-1, now_ms, kind)
}

pub fn orchestrator_started(now_ms: i64) -> HistoryEvent {
    sidecar_event(now_ms, EventType::OrchestratorStarted(OrchestratorStartedEvent::default()))
}

pub fn orchestrator_completed(now_ms: i64) -> HistoryEvent {
    sidecar_event(now_ms, EventType::OrchestratorCompleted(OrchestratorCompletedEvent::default()))
}

/// Everything needed to write an `executionStarted` event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StartSpec {
    pub instance_id: String,
    pub execution_id: String,
    pub name: String,
    pub version: Option<String>,
    pub input: Option<String>,
    pub parent: Option<ParentInstanceInfo>,
    pub scheduled_start_ms: Option<i64>,
    pub parent_trace_context: Option<TraceContext>,
    pub tags: HashMap<String, String>,
}

pub fn execution_started(now_ms: i64, spec: &StartSpec) -> HistoryEvent {
    sidecar_event(
        now_ms,
        EventType::ExecutionStarted(ExecutionStartedEvent {
            name: spec.name.clone(),
            version: spec.version.clone(),
            input: spec.input.clone(),
            orchestration_instance: Some(OrchestrationInstance {
                instance_id: spec.instance_id.clone(),
                execution_id: Some(spec.execution_id.clone()),
            }),
            parent_instance: spec.parent.clone(),
            scheduled_start_timestamp: spec.scheduled_start_ms.map(from_ms),
            parent_trace_context: spec.parent_trace_context.clone(),
            orchestration_span_id: None,
            tags: spec.tags.clone(),
        }),
    )
}

pub fn execution_completed(
    now_ms: i64,
    status: OrchestrationStatus,
    result: Option<String>,
    failure: Option<TaskFailureDetails>,
) -> HistoryEvent {
    sidecar_event(
        now_ms,
        EventType::ExecutionCompleted(ExecutionCompletedEvent {
            orchestration_status: status as i32,
            result,
            failure_details: failure,
        }),
    )
}

pub fn execution_terminated(now_ms: i64, output: Option<String>, recurse: bool) -> HistoryEvent {
    sidecar_event(now_ms, EventType::ExecutionTerminated(ExecutionTerminatedEvent { input: output, recurse }))
}

pub fn execution_suspended(now_ms: i64, reason: Option<String>) -> HistoryEvent {
    sidecar_event(now_ms, EventType::ExecutionSuspended(ExecutionSuspendedEvent { input: reason }))
}

pub fn execution_resumed(now_ms: i64, reason: Option<String>) -> HistoryEvent {
    sidecar_event(now_ms, EventType::ExecutionResumed(ExecutionResumedEvent { input: reason }))
}

pub fn event_raised(now_ms: i64, name: String, input: Option<String>) -> HistoryEvent {
    sidecar_event(now_ms, EventType::EventRaised(EventRaisedEvent { name, input }))
}

pub fn task_completed(now_ms: i64, task_id: i32, result: Option<String>) -> HistoryEvent {
    sidecar_event(now_ms, EventType::TaskCompleted(TaskCompletedEvent { task_scheduled_id: task_id, result }))
}

pub fn task_failed(now_ms: i64, task_id: i32, failure: TaskFailureDetails) -> HistoryEvent {
    sidecar_event(
        now_ms,
        EventType::TaskFailed(TaskFailedEvent { task_scheduled_id: task_id, failure_details: Some(failure) }),
    )
}

pub fn timer_fired(now_ms: i64, timer_id: i32, fire_at: prost_types::Timestamp) -> HistoryEvent {
    sidecar_event(now_ms, EventType::TimerFired(TimerFiredEvent { fire_at: Some(fire_at), timer_id }))
}

pub fn sub_orchestration_completed(now_ms: i64, task_id: i32, result: Option<String>) -> HistoryEvent {
    sidecar_event(
        now_ms,
        EventType::SubOrchestrationInstanceCompleted(SubOrchestrationInstanceCompletedEvent {
            task_scheduled_id: task_id,
            result,
        }),
    )
}

pub fn sub_orchestration_failed(now_ms: i64, task_id: i32, failure: TaskFailureDetails) -> HistoryEvent {
    sidecar_event(
        now_ms,
        EventType::SubOrchestrationInstanceFailed(SubOrchestrationInstanceFailedEvent {
            task_scheduled_id: task_id,
            failure_details: Some(failure),
        }),
    )
}

/// Failure details written by the sidecar itself (poison work, oversized items, conflicts).
pub fn failure(error_type: &str, message: impl Into<String>, non_retriable: bool) -> TaskFailureDetails {
    TaskFailureDetails {
        error_type: error_type.to_string(),
        error_message: message.into(),
        stack_trace: None,
        inner_failure: None,
        is_non_retriable: non_retriable,
        properties: HashMap::new(),
    }
}

/// A wake-up marker: an inbox row whose only purpose is to make the instance run a turn
/// (after a rewind). It is consumed but never shown to a worker, because every turn
/// starts with a fresh `orchestratorStarted` of its own.
pub fn wake_up(now_ms: i64) -> HistoryEvent {
    orchestrator_started(now_ms)
}

/// The stable, lower-case name of an event's kind, for logs and error messages.
pub fn kind_name(event: &HistoryEvent) -> &'static str {
    match &event.event_type {
        None => "none",
        Some(kind) => match kind {
            EventType::ExecutionStarted(_) => "executionStarted",
            EventType::ExecutionCompleted(_) => "executionCompleted",
            EventType::ExecutionTerminated(_) => "executionTerminated",
            EventType::TaskScheduled(_) => "taskScheduled",
            EventType::TaskCompleted(_) => "taskCompleted",
            EventType::TaskFailed(_) => "taskFailed",
            EventType::SubOrchestrationInstanceCreated(_) => "subOrchestrationInstanceCreated",
            EventType::SubOrchestrationInstanceCompleted(_) => "subOrchestrationInstanceCompleted",
            EventType::SubOrchestrationInstanceFailed(_) => "subOrchestrationInstanceFailed",
            EventType::TimerCreated(_) => "timerCreated",
            EventType::TimerFired(_) => "timerFired",
            EventType::OrchestratorStarted(_) => "orchestratorStarted",
            EventType::OrchestratorCompleted(_) => "orchestratorCompleted",
            EventType::EventSent(_) => "eventSent",
            EventType::EventRaised(_) => "eventRaised",
            EventType::GenericEvent(_) => "genericEvent",
            EventType::HistoryState(_) => "historyState",
            EventType::ContinueAsNew(_) => "continueAsNew",
            EventType::ExecutionSuspended(_) => "executionSuspended",
            EventType::ExecutionResumed(_) => "executionResumed",
            EventType::EntityOperationSignaled(_) => "entityOperationSignaled",
            EventType::EntityOperationCalled(_) => "entityOperationCalled",
            EventType::EntityOperationCompleted(_) => "entityOperationCompleted",
            EventType::EntityOperationFailed(_) => "entityOperationFailed",
            EventType::EntityLockRequested(_) => "entityLockRequested",
            EventType::EntityLockGranted(_) => "entityLockGranted",
            EventType::EntityUnlockSent(_) => "entityUnlockSent",
            EventType::ExecutionRewound(_) => "executionRewound",
        },
    }
}
