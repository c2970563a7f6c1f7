//! A worker's turn: apply the actions of an `OrchestratorResponse` to an instance.
//!
//! Rules (see `docs/PROTOCOL.md` §4.1, §4.4): events derived from an action carry the
//! action's id; the history of a turn is its new events, then the action events in action
//! order, then `orchestratorCompleted` (and `executionCompleted` when the execution ends).
//! Continue-as-new keeps the fire-and-forget sends that precede it and drops the old
//! generation's schedules, timers and child creations.

use duro_proto::history_event::EventType;
use duro_proto::orchestrator_action::OrchestratorActionType;
use duro_proto::*;
use thiserror::Error;

use super::events::{self, StartSpec};
use super::time::to_ms;
use super::{
    parent_notice, CustomStatus, InstanceInfo, Message, NewExecution, NewInstance, ParentTask, Priority, TurnOutcome,
};

/// Why a worker's response cannot be applied.
#[derive(Debug, Error, PartialEq)]
pub enum TurnError {
    /// The response breaks the protocol; the turn is rejected and retried.
    #[error("invalid orchestrator response: {0}")]
    Invalid(String),
    /// The response asks for something Duro does not support yet; the instance fails.
    #[error("unsupported orchestrator action: {0}")]
    Unsupported(String),
    /// An action names an instance id clients could not use (child id, event or terminate
    /// target); the instance fails (`DuroInvalidInstanceId`): replay would ask again.
    #[error("{0}")]
    BadInstanceId(String),
}

fn check_target(action: &str, id: i32, target: &str) -> Result<(), TurnError> {
    match super::instance_id_problem(target) {
        Some(problem) => {
            Err(TurnError::BadInstanceId(format!("{action} action {id} names an invalid instance id: {problem}")))
        }
        None => Ok(()),
    }
}

/// The parts of an `OrchestratorResponse` a turn needs.
#[derive(Debug, Clone, Default)]
pub struct WorkerDecision {
    pub actions: Vec<OrchestratorAction>,
    pub custom_status: Option<String>,
    pub num_events_processed: Option<i32>,
    pub trace_context: Option<OrchestrationTraceContext>,
}

impl From<OrchestratorResponse> for WorkerDecision {
    fn from(r: OrchestratorResponse) -> Self {
        WorkerDecision {
            actions: r.actions,
            custom_status: r.custom_status,
            num_events_processed: r.num_events_processed,
            trace_context: r.orchestration_trace_context,
        }
    }
}

/// Inputs of one worker turn.
#[derive(Debug, Clone, Copy)]
pub struct TurnInput<'a> {
    pub instance: &'a InstanceInfo,
    /// The turn's new events as sent to the worker, `orchestratorStarted` first.
    pub new_events: &'a [HistoryEvent],
    pub now_ms: i64,
}

/// Default id of a sub-orchestration whose action left it empty (durabletask-go's rule).
pub fn default_child_id(parent_id: &str, action_id: i32) -> String {
    format!("{parent_id}:{:04x}", action_id)
}

/// Applies a worker's decision to the instance. Pure: same input, same outcome.
///
/// `new_id` supplies execution ids for children and continue-as-new, so tests can
/// make them deterministic.
pub fn decide(
    input: TurnInput<'_>,
    decision: WorkerDecision,
    new_id: &mut dyn FnMut() -> String,
) -> Result<TurnOutcome, TurnError> {
    let info = input.instance;
    let now = input.now_ms;
    let total = input.new_events.len();
    let consumed_total = match decision.num_events_processed {
        Some(n) if n >= 1 && (n as usize) < total => n as usize,
        _ => total,
    };
    let mut out = TurnOutcome::unchanged(OrchestrationStatus::Running, consumed_total.saturating_sub(1));
    out.append.extend(input.new_events[..consumed_total].iter().cloned());
    out.custom_status = match decision.custom_status {
        Some(s) => CustomStatus::Set(Some(s)),
        None => CustomStatus::Keep,
    };
    out.trace_context = decision.trace_context;

    let mut completion: Option<(i32, CompleteOrchestrationAction)> = None;
    for action in decision.actions {
        let id = action.id;
        let Some(kind) = action.orchestrator_action_type else {
            return Err(TurnError::Invalid(format!("action {id} has no action type")));
        };
        if completion.is_some() {
            // Actions after the completing action cannot run: the execution is over.
            continue;
        }
        match kind {
            OrchestratorActionType::ScheduleTask(a) => {
                if a.name.is_empty() {
                    return Err(TurnError::Invalid(format!("scheduleTask action {id} has an empty name")));
                }
                out.activities.push(ActivityRequest {
                    name: a.name.clone(),
                    // An activity scheduled without a version carries its orchestration's
                    // version (as the .NET SDK stamps it), so versioned activity filters route
                    // it; the JS, Java and Python SDKs send none. The history keeps what was sent.
                    version: a
                        .version
                        .clone()
                        .filter(|v| !v.is_empty())
                        .or_else(|| info.version.clone().filter(|v| !v.is_empty())),
                    input: a.input.clone(),
                    orchestration_instance: Some(OrchestrationInstance {
                        instance_id: info.instance_id.clone(),
                        execution_id: Some(info.execution_id.clone()),
                    }),
                    task_id: id,
                    parent_trace_context: a.parent_trace_context.clone(),
                    tags: a.tags.clone(),
                });
                out.append.push(events::event(
                    id,
                    now,
                    EventType::TaskScheduled(TaskScheduledEvent {
                        name: a.name,
                        version: a.version,
                        input: a.input,
                        parent_trace_context: a.parent_trace_context,
                        tags: a.tags,
                    }),
                ));
            }
            OrchestratorActionType::CreateSubOrchestration(a) => {
                if a.name.is_empty() {
                    return Err(TurnError::Invalid(format!("createSubOrchestration action {id} has an empty name")));
                }
                let child_id = if a.instance_id.is_empty() {
                    default_child_id(&info.instance_id, id)
                } else {
                    a.instance_id.clone()
                };
                check_target("createSubOrchestration", id, &child_id)?;
                if child_id == info.instance_id {
                    return Err(TurnError::Unsupported(format!(
                        "createSubOrchestration action {id} names the orchestration itself ('{child_id}') as its child"
                    )));
                }
                out.children.push(NewInstance {
                    spec: StartSpec {
                        instance_id: child_id.clone(),
                        execution_id: new_id(),
                        name: a.name.clone(),
                        version: a.version.clone(),
                        input: a.input.clone(),
                        parent: Some(ParentInstanceInfo {
                            task_scheduled_id: id,
                            name: Some(info.name.clone()),
                            version: info.version.clone(),
                            orchestration_instance: Some(OrchestrationInstance {
                                instance_id: info.instance_id.clone(),
                                execution_id: Some(info.execution_id.clone()),
                            }),
                        }),
                        scheduled_start_ms: None,
                        parent_trace_context: a.parent_trace_context.clone(),
                        tags: a.tags.clone(),
                    },
                    created_at_ms: now,
                    visible_at_ms: now,
                    parent_task: Some(ParentTask {
                        instance_id: info.instance_id.clone(),
                        execution_id: info.execution_id.clone(),
                        task_id: id,
                    }),
                });
                out.append.push(events::event(
                    id,
                    now,
                    EventType::SubOrchestrationInstanceCreated(SubOrchestrationInstanceCreatedEvent {
                        instance_id: child_id,
                        name: a.name,
                        version: a.version,
                        input: a.input,
                        parent_trace_context: a.parent_trace_context,
                        tags: a.tags,
                    }),
                ));
            }
            OrchestratorActionType::CreateTimer(a) => {
                let Some(fire_at) = a.fire_at else {
                    return Err(TurnError::Invalid(format!("createTimer action {id} has no fireAt")));
                };
                out.messages.push(Message {
                    target: info.instance_id.clone(),
                    execution_id: Some(info.execution_id.clone()),
                    priority: Priority::Normal,
                    visible_at_ms: to_ms(&fire_at),
                    event: events::timer_fired(to_ms(&fire_at), id, fire_at),
                });
                out.append.push(events::event(
                    id,
                    now,
                    EventType::TimerCreated(TimerCreatedEvent { fire_at: Some(fire_at) }),
                ));
            }
            OrchestratorActionType::SendEvent(a) => {
                let target = a.instance.as_ref().map(|i| i.instance_id.clone()).unwrap_or_default();
                if target.is_empty() {
                    return Err(TurnError::Invalid(format!("sendEvent action {id} has no target instance")));
                }
                check_target("sendEvent", id, &target)?;
                out.messages.push(Message::now(
                    target.clone(),
                    None,
                    events::event_raised(now, a.name.clone(), a.data.clone()),
                    now,
                ));
                out.append.push(events::event(
                    id,
                    now,
                    EventType::EventSent(EventSentEvent { instance_id: target, name: a.name, input: a.data }),
                ));
            }
            OrchestratorActionType::TerminateOrchestration(a) => {
                if a.instance_id.is_empty() {
                    return Err(TurnError::Invalid(format!("terminateOrchestration action {id} has no instance id")));
                }
                check_target("terminateOrchestration", id, &a.instance_id)?;
                out.messages.push(Message::now(
                    a.instance_id,
                    None,
                    events::execution_terminated(now, a.reason, a.recurse),
                    now,
                ));
            }
            OrchestratorActionType::CompleteOrchestration(a) => completion = Some((id, a)),
            OrchestratorActionType::SendEntityMessage(a) => {
                let (mut history, message) =
                    crate::entity::route_action(&a, &info.instance_id, &info.execution_id, now)
                        .map_err(|e| TurnError::Invalid(format!("sendEntityMessage action {id}: {e}")))?;
                history.event_id = id;
                out.append.push(history);
                out.entity_messages.push(message);
            }
            OrchestratorActionType::RewindOrchestration(_) => {
                return Err(TurnError::Unsupported(
                    "rewindOrchestration was not requested: Duro rewinds histories itself".into(),
                ))
            }
        }
    }

    let Some((complete_id, complete)) = completion else {
        out.append.push(events::orchestrator_completed(now));
        return Ok(out);
    };
    let status = OrchestrationStatus::try_from(complete.orchestration_status).map_err(|_| {
        TurnError::Invalid(format!(
            "completeOrchestration action {complete_id} has unknown status {}",
            complete.orchestration_status
        ))
    })?;
    match status {
        OrchestrationStatus::ContinuedAsNew => {
            // The old generation's schedules, timers and children die with it; sends and
            // terminations addressed to other instances go out.
            out.activities.clear();
            out.children.clear();
            let me = info.instance_id.as_str();
            out.messages.retain(|m| !(m.target == me && m.execution_id.is_some()));
            out.append.clear();
            let mut tags = info.tags.clone();
            tags.extend(complete.tags);
            out.continue_as_new = Some(NewExecution {
                spec: StartSpec {
                    instance_id: info.instance_id.clone(),
                    execution_id: new_id(),
                    name: info.name.clone(),
                    version: complete.new_version.or_else(|| info.version.clone()),
                    input: complete.result,
                    parent: info.parent.clone(),
                    scheduled_start_ms: None,
                    parent_trace_context: None,
                    tags,
                },
                carryover: complete.carryover_events,
            });
            out.status = OrchestrationStatus::Running;
        }
        OrchestrationStatus::Completed | OrchestrationStatus::Failed | OrchestrationStatus::Terminated => {
            let failure = match status {
                OrchestrationStatus::Failed => Some(complete.failure_details.unwrap_or_else(|| {
                    events::failure(
                        "OrchestrationFailed",
                        complete.details.unwrap_or_else(|| "the orchestration failed without failure details".into()),
                        false,
                    )
                })),
                _ => None,
            };
            out.append.push(events::orchestrator_completed(now));
            out.append.push(events::execution_completed(now, status, complete.result.clone(), failure.clone()));
            if let Some(notice) = parent_notice(info, status, &complete.result, &failure, now) {
                out.messages.push(notice);
            }
            out.status = status;
            out.output = complete.result;
            out.failure = failure;
        }
        other => {
            return Err(TurnError::Invalid(format!(
                "completeOrchestration action {complete_id} has non-final status {}",
                other.as_str_name()
            )))
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CustomStatus;
    use std::collections::HashMap;

    const NOW: i64 = 1_700_000_000_000;

    fn info() -> InstanceInfo {
        InstanceInfo {
            instance_id: "order-1".into(),
            execution_id: "exec-1".into(),
            name: "ProcessOrder".into(),
            version: Some("1.0".into()),
            status: OrchestrationStatus::Running,
            input: Some("42".into()),
            parent: None,
            tags: HashMap::new(),
            trace_context: None,
        }
    }

    fn child_info() -> InstanceInfo {
        InstanceInfo {
            parent: Some(ParentInstanceInfo {
                task_scheduled_id: 7,
                name: Some("Parent".into()),
                version: None,
                orchestration_instance: Some(OrchestrationInstance {
                    instance_id: "parent".into(),
                    execution_id: Some("parent-exec".into()),
                }),
            }),
            ..info()
        }
    }

    fn new_events() -> Vec<HistoryEvent> {
        vec![events::orchestrator_started(NOW), events::event_raised(NOW, "go".into(), Some("1".into()))]
    }

    fn action(id: i32, kind: OrchestratorActionType) -> OrchestratorAction {
        OrchestratorAction { id, orchestrator_action_type: Some(kind) }
    }

    fn complete(status: OrchestrationStatus, result: Option<&str>) -> OrchestratorActionType {
        OrchestratorActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: status as i32,
            result: result.map(str::to_string),
            ..Default::default()
        })
    }

    fn run(info: &InstanceInfo, actions: Vec<OrchestratorAction>) -> Result<TurnOutcome, TurnError> {
        run_with(info, WorkerDecision { actions, ..Default::default() })
    }

    fn run_with(info: &InstanceInfo, decision: WorkerDecision) -> Result<TurnOutcome, TurnError> {
        let evs = new_events();
        let mut n = 0;
        let mut ids = || {
            n += 1;
            format!("new-exec-{n}")
        };
        decide(TurnInput { instance: info, new_events: &evs, now_ms: NOW }, decision, &mut ids)
    }

    fn kinds(events: &[HistoryEvent]) -> Vec<&'static str> {
        events.iter().map(events::kind_name).collect()
    }

    #[test]
    fn empty_turn_records_new_events_and_orchestrator_completed() {
        let out = run(&info(), vec![]).unwrap();
        assert_eq!(kinds(&out.append), ["orchestratorStarted", "eventRaised", "orchestratorCompleted"]);
        assert_eq!(out.status, OrchestrationStatus::Running);
        assert_eq!(out.custom_status, CustomStatus::Keep);
        assert_eq!(out.consumed_new_events, 1);
        assert!(!out.is_terminal());
    }

    #[test]
    fn schedule_task_creates_activity_with_action_id_and_execution() {
        let a = OrchestratorActionType::ScheduleTask(ScheduleTaskAction {
            name: "Charge".into(),
            input: Some("{\"amount\":3}".into()),
            ..Default::default()
        });
        let out = run(&info(), vec![action(5, a)]).unwrap();
        assert_eq!(
            kinds(&out.append),
            ["orchestratorStarted", "eventRaised", "taskScheduled", "orchestratorCompleted"]
        );
        assert_eq!(out.append[2].event_id, 5);
        assert_eq!(out.append[0].event_id, -1);
        let req = &out.activities[0];
        assert_eq!(req.task_id, 5);
        assert_eq!(req.name, "Charge");
        assert_eq!(req.input.as_deref(), Some("{\"amount\":3}"));
        let inst = req.orchestration_instance.as_ref().unwrap();
        assert_eq!((inst.instance_id.as_str(), inst.execution_id.as_deref()), ("order-1", Some("exec-1")));
        // No version sent: the activity carries its orchestration's version for routing;
        // the history keeps what the worker sent.
        assert_eq!(req.version.as_deref(), Some("1.0"));
        match &out.append[2].event_type {
            Some(EventType::TaskScheduled(t)) => assert_eq!(t.version, None),
            other => panic!("expected taskScheduled, got {other:?}"),
        }
    }

    #[test]
    fn schedule_task_keeps_its_own_version_and_an_unversioned_orchestration_stamps_none() {
        let task = |version: Option<&str>| {
            OrchestratorActionType::ScheduleTask(ScheduleTaskAction {
                name: "Charge".into(),
                version: version.map(str::to_string),
                ..Default::default()
            })
        };
        let out = run(&info(), vec![action(1, task(Some("2.0")))]).unwrap();
        assert_eq!(out.activities[0].version.as_deref(), Some("2.0"));
        let out = run(&info(), vec![action(1, task(Some("")))]).unwrap();
        assert_eq!(out.activities[0].version.as_deref(), Some("1.0"), "an empty version is no version");
        let unversioned = InstanceInfo { version: None, ..info() };
        let out = run(&unversioned, vec![action(1, task(None))]).unwrap();
        assert_eq!(out.activities[0].version, None);
    }

    #[test]
    fn timer_becomes_message_to_own_execution_at_fire_time() {
        let fire_at = crate::time::from_ms(NOW - 5_000);
        let a = OrchestratorActionType::CreateTimer(CreateTimerAction { fire_at: Some(fire_at) });
        let out = run(&info(), vec![action(2, a)]).unwrap();
        let m = &out.messages[0];
        assert_eq!(m.target, "order-1");
        assert_eq!(m.execution_id.as_deref(), Some("exec-1"));
        assert_eq!(m.visible_at_ms, NOW - 5_000);
        match &m.event.event_type {
            Some(EventType::TimerFired(t)) => {
                assert_eq!(t.timer_id, 2);
                assert_eq!(t.fire_at, Some(fire_at));
            }
            other => panic!("expected timerFired, got {other:?}"),
        }
        assert_eq!(out.append[2].event_id, 2);
    }

    #[test]
    fn timer_without_fire_time_is_rejected() {
        let a = OrchestratorActionType::CreateTimer(CreateTimerAction::default());
        assert!(matches!(run(&info(), vec![action(1, a)]), Err(TurnError::Invalid(_))));
    }

    #[test]
    fn send_event_records_event_sent_and_messages_target() {
        let a = OrchestratorActionType::SendEvent(SendEventAction {
            instance: Some(OrchestrationInstance { instance_id: "other".into(), execution_id: None }),
            name: "Ping".into(),
            data: Some("\"hi\"".into()),
        });
        let out = run(&info(), vec![action(3, a)]).unwrap();
        match &out.append[2].event_type {
            Some(EventType::EventSent(e)) => {
                assert_eq!((e.instance_id.as_str(), e.name.as_str()), ("other", "Ping"));
                assert_eq!(e.input.as_deref(), Some("\"hi\""));
            }
            other => panic!("expected eventSent, got {other:?}"),
        }
        assert_eq!(out.messages[0].target, "other");
        assert_eq!(out.messages[0].execution_id, None);
        assert!(matches!(out.messages[0].event.event_type, Some(EventType::EventRaised(_))));
    }

    #[test]
    fn sub_orchestration_defaults_its_id_and_links_the_parent() {
        let a = OrchestratorActionType::CreateSubOrchestration(CreateSubOrchestrationAction {
            name: "Child".into(),
            input: Some("1".into()),
            ..Default::default()
        });
        let out = run(&info(), vec![action(10, a)]).unwrap();
        let child = &out.children[0];
        assert_eq!(child.spec.instance_id, "order-1:000a");
        assert_eq!(child.spec.execution_id, "new-exec-1");
        let parent = child.spec.parent.as_ref().unwrap();
        assert_eq!(parent.task_scheduled_id, 10);
        assert_eq!(parent.name.as_deref(), Some("ProcessOrder"));
        assert_eq!(parent.orchestration_instance.as_ref().unwrap().execution_id.as_deref(), Some("exec-1"));
        assert_eq!(child.parent_task.as_ref().unwrap().task_id, 10);
        match &out.append[2].event_type {
            Some(EventType::SubOrchestrationInstanceCreated(c)) => assert_eq!(c.instance_id, "order-1:000a"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_child_may_not_be_the_orchestration_itself() {
        let a = OrchestratorActionType::CreateSubOrchestration(CreateSubOrchestrationAction {
            name: "Child".into(),
            instance_id: "order-1".into(),
            ..Default::default()
        });
        assert!(matches!(run(&info(), vec![action(1, a)]), Err(TurnError::Unsupported(_))));
    }

    #[test]
    fn completion_ends_history_and_records_output() {
        let out = run(&info(), vec![action(1, complete(OrchestrationStatus::Completed, Some("\"done\"")))]).unwrap();
        assert_eq!(
            kinds(&out.append),
            ["orchestratorStarted", "eventRaised", "orchestratorCompleted", "executionCompleted"]
        );
        assert!(out.is_terminal());
        assert_eq!(out.output.as_deref(), Some("\"done\""));
        assert!(out.messages.is_empty(), "no parent, no notice");
    }

    #[test]
    fn completed_child_notifies_parent_execution_with_result() {
        let out = run(&child_info(), vec![action(1, complete(OrchestrationStatus::Completed, Some("5")))]).unwrap();
        let m = &out.messages[0];
        assert_eq!((m.target.as_str(), m.execution_id.as_deref()), ("parent", Some("parent-exec")));
        match &m.event.event_type {
            Some(EventType::SubOrchestrationInstanceCompleted(c)) => {
                assert_eq!(c.task_scheduled_id, 7);
                assert_eq!(c.result.as_deref(), Some("5"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn failed_child_passes_failure_details_to_parent() {
        let a = OrchestratorActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::Failed as i32,
            failure_details: Some(events::failure("ValueError", "boom", false)),
            ..Default::default()
        });
        let out = run(&child_info(), vec![action(1, a)]).unwrap();
        assert_eq!(out.failure.as_ref().unwrap().error_message, "boom");
        match &out.messages[0].event.event_type {
            Some(EventType::SubOrchestrationInstanceFailed(f)) => {
                assert_eq!(f.task_scheduled_id, 7);
                assert_eq!(f.failure_details.as_ref().unwrap().error_type, "ValueError");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn failure_without_details_gets_a_readable_reason() {
        let out = run(&info(), vec![action(-1, complete(OrchestrationStatus::Failed, None))]).unwrap();
        let f = out.failure.unwrap();
        assert_eq!(f.error_type, "OrchestrationFailed");
        assert!(!f.error_message.is_empty());
    }

    #[test]
    fn non_final_completion_status_is_rejected() {
        for status in [OrchestrationStatus::Running, OrchestrationStatus::Pending, OrchestrationStatus::Suspended] {
            assert!(matches!(run(&info(), vec![action(1, complete(status, None))]), Err(TurnError::Invalid(_))));
        }
        let bogus = OrchestratorActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: 99,
            ..Default::default()
        });
        assert!(matches!(run(&info(), vec![action(1, bogus)]), Err(TurnError::Invalid(_))));
    }

    #[test]
    fn action_without_type_is_rejected() {
        let a = OrchestratorAction { id: 1, orchestrator_action_type: None };
        assert!(matches!(run(&info(), vec![a]), Err(TurnError::Invalid(_))));
    }

    #[test]
    fn entity_messages_are_recorded_with_the_action_id_and_routed() {
        use duro_proto::send_entity_message_action::EntityMessageType as M;
        let empty = OrchestratorActionType::SendEntityMessage(SendEntityMessageAction::default());
        assert!(matches!(run(&info(), vec![action(1, empty)]), Err(TurnError::Invalid(_))));
        let signal = OrchestratorActionType::SendEntityMessage(SendEntityMessageAction {
            entity_message_type: Some(M::EntityOperationSignaled(EntityOperationSignaledEvent {
                request_id: "r".into(),
                operation: "add".into(),
                target_instance_id: Some("@counter@k".into()),
                ..Default::default()
            })),
        });
        let out = run(&info(), vec![action(3, signal)]).expect("turn");
        assert_eq!(out.entity_messages.len(), 1);
        assert_eq!(out.entity_messages[0].entity_id, "@counter@k");
        let recorded = out.append.iter().find(|e| matches!(e.event_type, Some(EventType::EntityOperationSignaled(_))));
        assert_eq!(recorded.map(|e| e.event_id), Some(3));
    }

    #[test]
    fn continue_as_new_keeps_sends_drops_schedules_and_carries_events() {
        let send = OrchestratorActionType::SendEvent(SendEventAction {
            instance: Some(OrchestrationInstance { instance_id: "peer".into(), execution_id: None }),
            name: "Bye".into(),
            data: None,
        });
        let task = OrchestratorActionType::ScheduleTask(ScheduleTaskAction { name: "X".into(), ..Default::default() });
        let timer =
            OrchestratorActionType::CreateTimer(CreateTimerAction { fire_at: Some(crate::time::from_ms(NOW + 1000)) });
        let carry = events::event_raised(NOW, "late".into(), Some("9".into()));
        let can = OrchestratorActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::ContinuedAsNew as i32,
            result: Some("43".into()),
            carryover_events: vec![carry.clone()],
            ..Default::default()
        });
        let out = run(&child_info(), vec![action(1, send), action(2, task), action(3, timer), action(4, can)]).unwrap();
        assert!(out.activities.is_empty());
        assert_eq!(out.messages.len(), 1, "only the send to the peer survives");
        assert_eq!(out.messages[0].target, "peer");
        assert!(out.append.is_empty());
        assert!(!out.is_terminal());
        assert_eq!(out.status, OrchestrationStatus::Running);
        let next = out.continue_as_new.unwrap();
        assert_eq!(next.spec.input.as_deref(), Some("43"));
        assert_eq!(next.spec.execution_id, "new-exec-1");
        assert_eq!(next.spec.instance_id, "order-1");
        assert_eq!(next.spec.version.as_deref(), Some("1.0"));
        assert_eq!(next.spec.parent, child_info().parent, "the parent link survives");
        assert_eq!(next.carryover, vec![carry]);
    }

    #[test]
    fn actions_after_completion_are_ignored() {
        let task =
            OrchestratorActionType::ScheduleTask(ScheduleTaskAction { name: "Late".into(), ..Default::default() });
        let out =
            run(&info(), vec![action(1, complete(OrchestrationStatus::Completed, None)), action(2, task)]).unwrap();
        assert!(out.activities.is_empty());
        assert!(out.is_terminal());
    }

    #[test]
    fn custom_status_is_set_only_when_sent() {
        let out = run_with(&info(), WorkerDecision { custom_status: Some("\"step 2\"".into()), ..Default::default() })
            .unwrap();
        assert_eq!(out.custom_status, CustomStatus::Set(Some("\"step 2\"".into())));
    }

    #[test]
    fn partial_processing_leaves_unprocessed_events_for_next_turn() {
        let out = run_with(&info(), WorkerDecision { num_events_processed: Some(1), ..Default::default() }).unwrap();
        assert_eq!(out.consumed_new_events, 0);
        assert_eq!(kinds(&out.append), ["orchestratorStarted", "orchestratorCompleted"]);
        // Nonsense counts mean "all".
        for n in [0, -3, 2, 50] {
            let out =
                run_with(&info(), WorkerDecision { num_events_processed: Some(n), ..Default::default() }).unwrap();
            assert_eq!(out.consumed_new_events, 1, "n = {n}");
        }
    }

    #[test]
    fn default_child_ids_are_four_lowercase_hex_digits() {
        assert_eq!(default_child_id("p", 0), "p:0000");
        assert_eq!(default_child_id("p", 255), "p:00ff");
        assert_eq!(default_child_id("p", 70000), "p:11170");
    }
}
