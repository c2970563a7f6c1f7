//! Helpers to unit-test orchestrators without a sidecar: a history builder that plays the
//! sidecar's part (stamping turns, turning actions into history events).
//!
//! Use it with [`replay::execute`](crate::replay::execute): build a turn's new events, run
//! the turn, then [`commit_turn`](HistoryBuilder::commit_turn) its actions into the past
//! history as the sidecar would, and continue with the next turn. Nothing here performs I/O.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use duro_proto::history_event::EventType;
use duro_proto::orchestrator_action::OrchestratorActionType;
use duro_proto::send_entity_message_action::EntityMessageType;
use duro_proto::*;

use crate::error::FailureDetails;
use crate::time;

/// Builds histories turn by turn, like the sidecar does.
///
/// Methods that add events append them to the *new events* of the current turn;
/// [`take_new`](Self::take_new) hands them out. The clock starts at 2024-01-01T00:00:00Z and
/// moves only with [`advance`](Self::advance).
///
/// ```
/// use duro_sdk::testing::HistoryBuilder;
/// let mut h = HistoryBuilder::new();
/// let new = h.start_turn().execution_started("Orch", None).take_new();
/// assert_eq!(new.len(), 2); // orchestratorStarted, executionStarted
/// assert!(h.past().is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct HistoryBuilder {
    instance_id: String,
    now: DateTime<Utc>,
    past: Vec<HistoryEvent>,
    new: Vec<HistoryEvent>,
}

impl Default for HistoryBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl HistoryBuilder {
    /// An empty history for instance `instance-1`.
    pub fn new() -> Self {
        HistoryBuilder {
            instance_id: "instance-1".into(),
            now: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().unwrap_or_else(time::epoch),
            past: Vec::new(),
            new: Vec::new(),
        }
    }

    /// Sets the instance id written into `executionStarted`.
    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = id.into();
        self
    }

    /// The committed history (the `pastEvents` of the next turn).
    pub fn past(&self) -> &[HistoryEvent] {
        &self.past
    }

    /// The builder's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, by: Duration) -> &mut Self {
        self.now += time::to_chrono(by);
        self
    }

    fn push(&mut self, event_id: i32, kind: EventType) -> &mut Self {
        self.new.push(HistoryEvent { event_id, timestamp: Some(time::to_timestamp(self.now)), event_type: Some(kind) });
        self
    }

    /// Begins a turn: `orchestratorStarted` stamped with the clock.
    pub fn start_turn(&mut self) -> &mut Self {
        self.push(-1, EventType::OrchestratorStarted(OrchestratorStartedEvent {}))
    }

    /// `executionStarted` for orchestrator `name` with a JSON input.
    pub fn execution_started(&mut self, name: &str, input: Option<&str>) -> &mut Self {
        let instance =
            OrchestrationInstance { instance_id: self.instance_id.clone(), execution_id: Some("execution-1".into()) };
        self.push(
            -1,
            EventType::ExecutionStarted(ExecutionStartedEvent {
                name: name.into(),
                input: input.map(str::to_string),
                orchestration_instance: Some(instance),
                ..Default::default()
            }),
        )
    }

    /// `taskCompleted` for action `id` with a JSON result.
    pub fn task_completed(&mut self, id: i32, result: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::TaskCompleted(TaskCompletedEvent { task_scheduled_id: id, result: result.map(str::to_string) }),
        )
    }

    /// `taskFailed` for action `id`.
    pub fn task_failed(&mut self, id: i32, details: FailureDetails) -> &mut Self {
        self.push(
            -1,
            EventType::TaskFailed(TaskFailedEvent { task_scheduled_id: id, failure_details: Some(details.to_proto()) }),
        )
    }

    /// `subOrchestrationInstanceCompleted` for action `id`.
    pub fn sub_orchestration_completed(&mut self, id: i32, result: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::SubOrchestrationInstanceCompleted(SubOrchestrationInstanceCompletedEvent {
                task_scheduled_id: id,
                result: result.map(str::to_string),
            }),
        )
    }

    /// `subOrchestrationInstanceFailed` for action `id`.
    pub fn sub_orchestration_failed(&mut self, id: i32, details: FailureDetails) -> &mut Self {
        self.push(
            -1,
            EventType::SubOrchestrationInstanceFailed(SubOrchestrationInstanceFailedEvent {
                task_scheduled_id: id,
                failure_details: Some(details.to_proto()),
            }),
        )
    }

    /// `timerFired` for timer `id`, with the `fireAt` recorded by its `timerCreated` event
    /// (or the clock if there is none).
    pub fn timer_fired(&mut self, id: i32) -> &mut Self {
        let fire_at = self
            .past
            .iter()
            .find_map(|e| match &e.event_type {
                Some(EventType::TimerCreated(t)) if e.event_id == id => t.fire_at,
                _ => None,
            })
            .unwrap_or_else(|| time::to_timestamp(self.now));
        self.push(-1, EventType::TimerFired(TimerFiredEvent { fire_at: Some(fire_at), timer_id: id }))
    }

    /// `entityOperationCompleted` for the entity call with this request id (see
    /// [`entity_message_id`]).
    pub fn entity_operation_completed(&mut self, request_id: &str, output: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::EntityOperationCompleted(EntityOperationCompletedEvent {
                request_id: request_id.into(),
                output: output.map(str::to_string),
            }),
        )
    }

    /// `entityOperationFailed` for the entity call with this request id.
    pub fn entity_operation_failed(&mut self, request_id: &str, details: FailureDetails) -> &mut Self {
        self.push(
            -1,
            EventType::EntityOperationFailed(EntityOperationFailedEvent {
                request_id: request_id.into(),
                failure_details: Some(details.to_proto()),
            }),
        )
    }

    /// `entityLockGranted` for this critical section (see [`entity_message_id`]).
    pub fn entity_lock_granted(&mut self, critical_section_id: &str) -> &mut Self {
        self.push(
            -1,
            EventType::EntityLockGranted(EntityLockGrantedEvent { critical_section_id: critical_section_id.into() }),
        )
    }

    /// `eventRaised` with a JSON payload.
    pub fn event_raised(&mut self, name: &str, input: Option<&str>) -> &mut Self {
        self.push(-1, EventType::EventRaised(EventRaisedEvent { name: name.into(), input: input.map(str::to_string) }))
    }

    /// `executionSuspended`.
    pub fn execution_suspended(&mut self) -> &mut Self {
        self.push(-1, EventType::ExecutionSuspended(ExecutionSuspendedEvent { input: None }))
    }

    /// `executionResumed`.
    pub fn execution_resumed(&mut self) -> &mut Self {
        self.push(-1, EventType::ExecutionResumed(ExecutionResumedEvent { input: None }))
    }

    /// `executionTerminated` with a JSON output.
    pub fn execution_terminated(&mut self, output: Option<&str>) -> &mut Self {
        self.push(
            -1,
            EventType::ExecutionTerminated(ExecutionTerminatedEvent {
                input: output.map(str::to_string),
                recurse: false,
            }),
        )
    }

    /// `taskScheduled` with event id `id` (to hand-build a history).
    pub fn task_scheduled(&mut self, id: i32, name: &str) -> &mut Self {
        self.push(id, EventType::TaskScheduled(TaskScheduledEvent { name: name.into(), ..Default::default() }))
    }

    /// `timerCreated` with event id `id` firing at `fire_at`.
    pub fn timer_created(&mut self, id: i32, fire_at: DateTime<Utc>) -> &mut Self {
        self.push(id, EventType::TimerCreated(TimerCreatedEvent { fire_at: Some(time::to_timestamp(fire_at)) }))
    }

    /// `orchestratorCompleted`.
    pub fn orchestrator_completed(&mut self) -> &mut Self {
        self.push(-1, EventType::OrchestratorCompleted(OrchestratorCompletedEvent {}))
    }

    /// Any event, stamped with the clock.
    pub fn event(&mut self, event_id: i32, kind: EventType) -> &mut Self {
        self.push(event_id, kind)
    }

    /// Takes the new events added since the last call.
    pub fn take_new(&mut self) -> Vec<HistoryEvent> {
        std::mem::take(&mut self.new)
    }

    /// Appends a finished turn to the past history as the sidecar does: its new events, one
    /// event per action (with the action's id), then `orchestratorCompleted`.
    pub fn commit_turn(&mut self, new_events: &[HistoryEvent], actions: &[OrchestratorAction]) -> &mut Self {
        self.past.extend(new_events.iter().cloned());
        let ts = Some(time::to_timestamp(self.now));
        for a in actions {
            if let Some(kind) = action_event(a) {
                self.past.push(HistoryEvent { event_id: a.id, timestamp: ts, event_type: Some(kind) });
            }
        }
        self.past.push(HistoryEvent {
            event_id: -1,
            timestamp: ts,
            event_type: Some(EventType::OrchestratorCompleted(OrchestratorCompletedEvent {})),
        });
        self
    }
}

/// The history event the sidecar records for an action, if any.
pub fn action_event(action: &OrchestratorAction) -> Option<EventType> {
    match action.orchestrator_action_type.as_ref()? {
        OrchestratorActionType::ScheduleTask(a) => Some(EventType::TaskScheduled(TaskScheduledEvent {
            name: a.name.clone(),
            version: a.version.clone(),
            input: a.input.clone(),
            ..Default::default()
        })),
        OrchestratorActionType::CreateTimer(a) => {
            Some(EventType::TimerCreated(TimerCreatedEvent { fire_at: a.fire_at }))
        }
        OrchestratorActionType::CreateSubOrchestration(a) => {
            Some(EventType::SubOrchestrationInstanceCreated(SubOrchestrationInstanceCreatedEvent {
                instance_id: a.instance_id.clone(),
                name: a.name.clone(),
                version: a.version.clone(),
                input: a.input.clone(),
                ..Default::default()
            }))
        }
        OrchestratorActionType::SendEvent(a) => Some(EventType::EventSent(EventSentEvent {
            instance_id: a.instance.as_ref().map(|i| i.instance_id.clone()).unwrap_or_default(),
            name: a.name.clone(),
            input: a.data.clone(),
        })),
        OrchestratorActionType::SendEntityMessage(m) => match m.entity_message_type.clone()? {
            EntityMessageType::EntityOperationSignaled(e) => Some(EventType::EntityOperationSignaled(e)),
            EntityMessageType::EntityOperationCalled(e) => Some(EventType::EntityOperationCalled(e)),
            EntityMessageType::EntityLockRequested(e) => Some(EventType::EntityLockRequested(e)),
            EntityMessageType::EntityUnlockSent(e) => Some(EventType::EntityUnlockSent(e)),
        },
        _ => None,
    }
}

/// The id an entity message action is answered by: the request id of a call (or signal),
/// the critical-section id of a lock request (or unlock). `None` for other actions.
///
/// ```
/// use duro_sdk::testing::{entity_message_id, HistoryBuilder};
/// use duro_sdk::{replay, EntityId, OrchestrationContext, Registry};
///
/// let mut registry = Registry::new();
/// registry.add_orchestrator("Get", |ctx: OrchestrationContext, _: ()| async move {
///     Ok(ctx.call_entity::<i64>(&EntityId::new("Counter", "c"), "get", ()).await?)
/// });
/// let mut h = HistoryBuilder::new();
/// let new = h.start_turn().execution_started("Get", None).take_new();
/// let out = replay::execute(&registry, "i", h.past(), &new);
/// let request_id = entity_message_id(&out.actions[0]).expect("a call").to_string();
/// h.commit_turn(&new, &out.actions);
/// let new = h.start_turn().entity_operation_completed(&request_id, Some("7")).take_new();
/// let out = replay::execute(&registry, "i", h.past(), &new);
/// assert_eq!(out.completion().and_then(|c| c.result.as_deref()), Some("7"));
/// ```
pub fn entity_message_id(action: &OrchestratorAction) -> Option<&str> {
    let OrchestratorActionType::SendEntityMessage(m) = action.orchestrator_action_type.as_ref()? else {
        return None;
    };
    Some(match m.entity_message_type.as_ref()? {
        EntityMessageType::EntityOperationSignaled(e) => &e.request_id,
        EntityMessageType::EntityOperationCalled(e) => &e.request_id,
        EntityMessageType::EntityLockRequested(e) => &e.critical_section_id,
        EntityMessageType::EntityUnlockSent(e) => &e.critical_section_id,
    })
}
