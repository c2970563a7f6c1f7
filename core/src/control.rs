//! Turns the sidecar runs itself, without a worker: terminate, suspend, resume, failing
//! an instance whose work keeps failing, and rewinding a failed history.
//!
//! Terminate, suspend and resume need no orchestrator code, so Duro applies them even when
//! no worker is connected, while the instance is suspended, or before it has started.

use duro_proto::history_event::EventType;
use duro_proto::{HistoryEvent, OrchestrationStatus, TaskFailureDetails};

use super::events;
use super::{child_instance_ids, is_terminal, parent_notice, InstanceInfo, Message, TurnOutcome};

/// Applies control events (in arrival order) to an instance.
///
/// `history` is the current execution's committed history; `control` holds only control
/// events. Non-control events stay in the inbox for a worker turn.
pub fn apply_control(
    info: &InstanceInfo,
    history: &[HistoryEvent],
    control: &[HistoryEvent],
    now_ms: i64,
) -> TurnOutcome {
    let mut out = TurnOutcome::unchanged(info.status, control.len());
    if is_terminal(info.status) {
        return out;
    }
    let started = !history.is_empty();
    for event in control {
        match &event.event_type {
            Some(EventType::ExecutionTerminated(t)) => {
                return terminate(info, history, t.input.clone(), t.recurse, out, now_ms);
            }
            Some(EventType::ExecutionSuspended(s)) if out.status != OrchestrationStatus::Suspended => {
                if started {
                    out.append.push(events::execution_suspended(now_ms, s.input.clone()));
                }
                out.status = OrchestrationStatus::Suspended;
            }
            Some(EventType::ExecutionResumed(r)) if out.status == OrchestrationStatus::Suspended => {
                if started {
                    out.append.push(events::execution_resumed(now_ms, r.input.clone()));
                }
                out.status = if started { OrchestrationStatus::Running } else { OrchestrationStatus::Pending };
            }
            _ => {}
        }
    }
    out
}

fn terminate(
    info: &InstanceInfo,
    history: &[HistoryEvent],
    output: Option<String>,
    recurse: bool,
    mut out: TurnOutcome,
    now_ms: i64,
) -> TurnOutcome {
    out.append.push(events::execution_terminated(now_ms, output.clone(), recurse));
    out.append.push(events::execution_completed(now_ms, OrchestrationStatus::Terminated, output.clone(), None));
    out.status = OrchestrationStatus::Terminated;
    if recurse {
        out.messages.extend(terminate_children(history, output.clone(), now_ms));
    }
    if let Some(notice) = parent_notice(info, OrchestrationStatus::Terminated, &output, &None, now_ms) {
        out.messages.push(notice);
    }
    out.output = output;
    out
}

/// The reason a live instance terminated by an id reuse policy gives (a JSON string, as
/// the output of a client's terminate would be).
pub const REPLACED_REASON: &str =
    "\"terminated to start a new orchestration with the same instance id (id reuse policy)\"";

/// Terminates a live instance so that a new one can take its id (an id reuse policy that
/// lists its status). Non-recursive, like a default terminate: its children keep running.
/// The outcome's messages (the notice to a parent waiting on it) must be committed with
/// the replacement; its history is discarded with the instance.
pub fn terminate_for_reuse(info: &InstanceInfo, now_ms: i64) -> TurnOutcome {
    let out = TurnOutcome::unchanged(info.status, 0);
    if is_terminal(info.status) {
        return out;
    }
    terminate(info, &[], Some(REPLACED_REASON.to_string()), false, out, now_ms)
}

/// Messages that terminate (recursively) every child the history created.
pub fn terminate_children(history: &[HistoryEvent], output: Option<String>, now_ms: i64) -> Vec<Message> {
    child_instance_ids(history)
        .into_iter()
        .map(|child| Message::now(child, None, events::execution_terminated(now_ms, output.clone(), true), now_ms))
        .collect()
}

/// Fails a live instance with sidecar-made failure details (poison work, oversized
/// work items, unsupported actions). Consumes none of the pending events.
pub fn fail(info: &InstanceInfo, failure: TaskFailureDetails, now_ms: i64) -> TurnOutcome {
    let mut out = TurnOutcome::unchanged(info.status, 0);
    if is_terminal(info.status) {
        return out;
    }
    out.append.push(events::execution_completed(now_ms, OrchestrationStatus::Failed, None, Some(failure.clone())));
    let failure = Some(failure);
    if let Some(notice) = parent_notice(info, OrchestrationStatus::Failed, &None, &failure, now_ms) {
        out.messages.push(notice);
    }
    out.status = OrchestrationStatus::Failed;
    out.failure = failure;
    out
}

/// The history of a failed execution with its failures removed, so that replay schedules
/// the failed work again: drops `executionCompleted`, each `taskFailed` and the
/// `taskScheduled` it answers, each `subOrchestrationInstanceFailed` and the
/// `subOrchestrationInstanceCreated` it answers. Everything else is kept in order.
///
/// A retried task reuses its action id (Python), so a failure answers the most recent
/// schedule with that id before it, not every schedule with that id.
pub fn rewound_history(history: &[HistoryEvent]) -> Vec<HistoryEvent> {
    use std::collections::HashMap;
    let mut drop = vec![false; history.len()];
    let mut last_task: HashMap<i32, usize> = HashMap::new();
    let mut last_child: HashMap<i32, usize> = HashMap::new();
    for (i, e) in history.iter().enumerate() {
        match &e.event_type {
            Some(EventType::TaskScheduled(_)) => {
                last_task.insert(e.event_id, i);
            }
            Some(EventType::SubOrchestrationInstanceCreated(_)) => {
                last_child.insert(e.event_id, i);
            }
            Some(EventType::TaskFailed(f)) => {
                drop[i] = true;
                if let Some(j) = last_task.remove(&f.task_scheduled_id) {
                    drop[j] = true;
                }
            }
            Some(EventType::SubOrchestrationInstanceFailed(f)) => {
                drop[i] = true;
                if let Some(j) = last_child.remove(&f.task_scheduled_id) {
                    drop[j] = true;
                }
            }
            Some(EventType::ExecutionCompleted(_)) => drop[i] = true,
            _ => {}
        }
    }
    history.iter().zip(drop).filter(|(_, d)| !d).map(|(e, _)| e.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use duro_proto::*;
    use std::collections::HashMap;

    const NOW: i64 = 1_700_000_000_000;

    fn info(status: OrchestrationStatus) -> InstanceInfo {
        InstanceInfo {
            instance_id: "i".into(),
            execution_id: "e".into(),
            name: "O".into(),
            version: None,
            status,
            input: None,
            parent: Some(ParentInstanceInfo {
                task_scheduled_id: 3,
                name: None,
                version: None,
                orchestration_instance: Some(OrchestrationInstance {
                    instance_id: "p".into(),
                    execution_id: Some("pe".into()),
                }),
            }),
            tags: HashMap::new(),
            trace_context: None,
        }
    }

    fn created_child(id: i32, child: &str) -> HistoryEvent {
        events::event(
            id,
            NOW,
            EventType::SubOrchestrationInstanceCreated(SubOrchestrationInstanceCreatedEvent {
                instance_id: child.into(),
                name: "C".into(),
                ..Default::default()
            }),
        )
    }

    fn started_history() -> Vec<HistoryEvent> {
        vec![events::orchestrator_started(NOW), created_child(0, "c1"), created_child(1, "c2")]
    }

    #[test]
    fn terminate_completes_with_output_and_notifies_parent() {
        let t = events::execution_terminated(NOW, Some("\"stop\"".into()), false);
        let out = apply_control(&info(OrchestrationStatus::Running), &started_history(), &[t], NOW);
        assert_eq!(out.status, OrchestrationStatus::Terminated);
        assert!(out.is_terminal());
        assert_eq!(out.output.as_deref(), Some("\"stop\""));
        let kinds: Vec<_> = out.append.iter().map(events::kind_name).collect();
        assert_eq!(kinds, ["executionTerminated", "executionCompleted"]);
        assert_eq!(out.messages.len(), 1, "no recursion: only the parent notice");
        match &out.messages[0].event.event_type {
            Some(EventType::SubOrchestrationInstanceFailed(f)) => {
                assert_eq!(f.task_scheduled_id, 3);
                assert_eq!(f.failure_details.as_ref().unwrap().error_type, "TaskTerminated");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn terminate_for_reuse_tells_the_parent_and_leaves_children_alone() {
        for status in [OrchestrationStatus::Pending, OrchestrationStatus::Running, OrchestrationStatus::Suspended] {
            let out = terminate_for_reuse(&info(status), NOW);
            assert_eq!(out.status, OrchestrationStatus::Terminated, "{status:?}");
            assert_eq!(out.output.as_deref(), Some(REPLACED_REASON));
            let targets: Vec<_> = out.messages.iter().map(|m| m.target.as_str()).collect();
            assert_eq!(targets, ["p"], "only the parent is told; children are not terminated");
            assert_eq!(out.messages[0].execution_id.as_deref(), Some("pe"), "addressed to the waiting execution");
            match &out.messages[0].event.event_type {
                Some(EventType::SubOrchestrationInstanceFailed(f)) => {
                    assert_eq!(f.task_scheduled_id, 3);
                    let d = f.failure_details.as_ref().unwrap();
                    assert_eq!(d.error_type, "TaskTerminated");
                    assert!(d.error_message.contains("id reuse policy"), "{}", d.error_message);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        for status in [OrchestrationStatus::Completed, OrchestrationStatus::Failed, OrchestrationStatus::Terminated] {
            let out = terminate_for_reuse(&info(status), NOW);
            assert_eq!(out.status, status, "a finished instance is not terminated again");
            assert!(out.messages.is_empty() && out.append.is_empty(), "its parent was told when it finished");
        }
        let mut orphan = info(OrchestrationStatus::Running);
        orphan.parent = None;
        assert!(terminate_for_reuse(&orphan, NOW).messages.is_empty());
    }

    #[test]
    fn recursive_terminate_reaches_every_child() {
        let t = events::execution_terminated(NOW, None, true);
        let out = apply_control(&info(OrchestrationStatus::Suspended), &started_history(), &[t], NOW);
        let targets: Vec<_> = out.messages.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["c1", "c2", "p"]);
        for m in &out.messages[..2] {
            assert!(matches!(&m.event.event_type, Some(EventType::ExecutionTerminated(t)) if t.recurse));
        }
    }

    #[test]
    fn terminate_before_start_needs_no_worker() {
        let t = events::execution_terminated(NOW, None, false);
        let out = apply_control(&info(OrchestrationStatus::Pending), &[], &[t], NOW);
        assert_eq!(out.status, OrchestrationStatus::Terminated);
    }

    #[test]
    fn suspend_and_resume_are_recorded_once() {
        let s = events::execution_suspended(NOW, Some("maintenance".into()));
        let out = apply_control(&info(OrchestrationStatus::Running), &started_history(), &[s.clone(), s], NOW);
        assert_eq!(out.status, OrchestrationStatus::Suspended);
        assert_eq!(out.append.len(), 1, "suspending twice is a no-op");
        let r = events::execution_resumed(NOW, None);
        let out = apply_control(&info(OrchestrationStatus::Suspended), &started_history(), &[r.clone(), r], NOW);
        assert_eq!(out.status, OrchestrationStatus::Running);
        assert_eq!(out.append.len(), 1);
    }

    #[test]
    fn resume_of_a_running_instance_changes_nothing() {
        let r = events::execution_resumed(NOW, None);
        let out = apply_control(&info(OrchestrationStatus::Running), &started_history(), &[r], NOW);
        assert_eq!(out.status, OrchestrationStatus::Running);
        assert!(out.append.is_empty());
    }

    #[test]
    fn suspend_of_an_unstarted_instance_returns_to_pending_on_resume() {
        let s = events::execution_suspended(NOW, None);
        let r = events::execution_resumed(NOW, None);
        let out = apply_control(&info(OrchestrationStatus::Pending), &[], &[s, r], NOW);
        assert_eq!(out.status, OrchestrationStatus::Pending);
        assert!(out.append.is_empty(), "no history before executionStarted");
    }

    #[test]
    fn finished_instances_ignore_control() {
        let t = events::execution_terminated(NOW, None, true);
        let out = apply_control(&info(OrchestrationStatus::Completed), &started_history(), &[t], NOW);
        assert_eq!(out.status, OrchestrationStatus::Completed);
        assert!(out.append.is_empty() && out.messages.is_empty());
    }

    #[test]
    fn fail_records_failure_and_notifies_parent() {
        let out = fail(&info(OrchestrationStatus::Running), events::failure("DuroPoisonWorkItem", "x", true), NOW);
        assert_eq!(out.status, OrchestrationStatus::Failed);
        assert_eq!(out.failure.as_ref().unwrap().error_type, "DuroPoisonWorkItem");
        assert_eq!(out.messages[0].target, "p");
        assert_eq!(out.consumed_new_events, 0);
    }

    fn scheduled(id: i32) -> HistoryEvent {
        events::event(id, NOW, EventType::TaskScheduled(TaskScheduledEvent { name: "A".into(), ..Default::default() }))
    }

    #[test]
    fn rewind_removes_failures_and_the_schedules_they_answer() {
        let history = vec![
            events::orchestrator_started(NOW),
            scheduled(0),
            events::orchestrator_completed(NOW),
            events::orchestrator_started(NOW),
            events::task_completed(NOW, 0, Some("1".into())),
            scheduled(1),
            created_child(2, "kid"),
            events::orchestrator_completed(NOW),
            events::orchestrator_started(NOW),
            events::task_failed(NOW, 1, events::failure("E", "bad", false)),
            events::sub_orchestration_failed(NOW, 2, events::failure("E", "kid failed", false)),
            events::orchestrator_completed(NOW),
            events::execution_completed(NOW, OrchestrationStatus::Failed, None, None),
        ];
        let rewound = rewound_history(&history);
        let kinds: Vec<_> = rewound.iter().map(|e| (events::kind_name(e), e.event_id)).collect();
        assert_eq!(
            kinds,
            [
                ("orchestratorStarted", -1),
                ("taskScheduled", 0),
                ("orchestratorCompleted", -1),
                ("orchestratorStarted", -1),
                ("taskCompleted", -1),
                ("orchestratorCompleted", -1),
                ("orchestratorStarted", -1),
                ("orchestratorCompleted", -1),
            ]
        );
    }

    #[test]
    fn rewind_keeps_an_earlier_successful_schedule_with_a_reused_id() {
        // Python retries reuse the action id: a success then a later failure of id 4.
        let history = vec![
            scheduled(4),
            events::task_completed(NOW, 4, None),
            scheduled(4),
            events::task_failed(NOW, 4, events::failure("E", "x", false)),
        ];
        let rewound = rewound_history(&history);
        let kinds: Vec<_> = rewound.iter().map(events::kind_name).collect();
        assert_eq!(kinds, ["taskScheduled", "taskCompleted"]);
    }
}
