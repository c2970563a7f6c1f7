//! Unit tests of entity batch execution (`entity::execute_batch`): no sidecar.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use duro_sdk::entity::{execute_batch, ENTITY_NOT_REGISTERED_ERROR, ENTITY_PANIC_ERROR};
use duro_sdk::proto::history_event::EventType;
use duro_sdk::proto::operation_action::OperationActionType;
use duro_sdk::proto::operation_result::ResultType;
use duro_sdk::proto::{
    EntityBatchResult, EntityOperationCalledEvent, EntityOperationSignaledEvent, EntityRequest, HistoryEvent,
};
use duro_sdk::{EntityContext, EntityId, Failure, Registry, StartOptions};
use futures::executor::block_on;

fn signal(request_id: &str, operation: &str, input: &str) -> HistoryEvent {
    HistoryEvent {
        event_id: -1,
        timestamp: None,
        event_type: Some(EventType::EntityOperationSignaled(EntityOperationSignaledEvent {
            request_id: request_id.into(),
            operation: operation.into(),
            input: Some(input.into()),
            ..Default::default()
        })),
    }
}

fn call(request_id: &str, operation: &str, input: &str, caller: &str) -> HistoryEvent {
    HistoryEvent {
        event_id: -1,
        timestamp: None,
        event_type: Some(EventType::EntityOperationCalled(EntityOperationCalledEvent {
            request_id: request_id.into(),
            operation: operation.into(),
            input: Some(input.into()),
            parent_instance_id: Some(caller.into()),
            parent_execution_id: Some("exec-1".into()),
            ..Default::default()
        })),
    }
}

/// A ledger: `add` appends to a list, signals a mirror entity and can fail or panic *after*
/// changing the state and sending, so rollback shows.
fn registry() -> Registry {
    let mut r = Registry::new();
    r.add_entity("Ledger", |ctx: EntityContext| async move {
        let mut items: Vec<i64> = ctx.state_or_default()?;
        match ctx.operation() {
            "add" => {
                let n: i64 = ctx.input()?;
                items.push(n);
                ctx.set_state(&items)?;
                ctx.signal_entity(&EntityId::new("Mirror", ctx.id().key()), "add", n)?;
                if n < 0 {
                    return Err(Failure::new("NegativeError", format!("{n} is negative")));
                }
                if n == 13 {
                    panic!("unlucky");
                }
                Ok(items.len())
            }
            "start" => {
                let id =
                    ctx.start_orchestration_with("Report", items.len(), StartOptions::new().with_instance_id("r-1"))?;
                Ok(id.len())
            }
            "delete" => {
                ctx.delete_state();
                Ok(0)
            }
            other => Err(Failure::new("UnknownOperation", other)),
        }
    });
    r
}

fn run(ops: Vec<HistoryEvent>, state: Option<&str>) -> EntityBatchResult {
    let request = EntityRequest {
        instance_id: "@ledger@k".into(),
        execution_id: String::new(),
        entity_state: state.map(str::to_string),
        operation_requests: ops,
    };
    block_on(execute_batch(&registry(), &request))
}

/// `ok <result>` or `failed <type>: <message>` per operation.
fn outcomes(r: &EntityBatchResult) -> Vec<String> {
    r.results
        .iter()
        .map(|o| match o.result_type.as_ref().expect("result") {
            ResultType::Success(s) => format!("ok {}", s.result.as_deref().unwrap_or("-")),
            ResultType::Failure(f) => {
                let d = f.failure_details.as_ref().expect("details");
                format!("failed {}: {}", d.error_type, d.error_message)
            }
        })
        .collect()
}

fn signals(r: &EntityBatchResult) -> Vec<String> {
    r.actions
        .iter()
        .map(|a| match a.operation_action_type.as_ref().expect("action") {
            OperationActionType::SendSignal(s) => {
                format!("{} {} {}", s.instance_id, s.name, s.input.as_deref().unwrap_or("-"))
            }
            OperationActionType::StartNewOrchestration(o) => {
                format!("start {} {} {}", o.instance_id, o.name, o.input.as_deref().unwrap_or("-"))
            }
        })
        .collect()
}

#[test]
fn operations_run_in_order_on_one_state() {
    let r = run(vec![signal("r1", "add", "1"), call("r2", "add", "2", "orch-1"), signal("r3", "add", "3")], None);
    assert_eq!(outcomes(&r), ["ok 1", "ok 2", "ok 3"]);
    assert_eq!(r.entity_state.as_deref(), Some("[1,2,3]"));
    assert_eq!(signals(&r), ["@mirror@k add 1", "@mirror@k add 2", "@mirror@k add 3"]);
    // Action ids are unique within the batch.
    let ids: Vec<i32> = r.actions.iter().map(|a| a.id).collect();
    assert_eq!(ids, [0, 1, 2]);
    // Operation infos: request ids, and the caller of a call.
    assert_eq!(r.operation_infos.len(), 3);
    assert_eq!(r.operation_infos[1].request_id, "r2");
    let dest = r.operation_infos[1].response_destination.as_ref().expect("caller");
    assert_eq!((dest.instance_id.as_str(), dest.execution_id.as_deref()), ("orch-1", Some("exec-1")));
    assert!(r.operation_infos[0].response_destination.is_none());
    assert!(r.failure_details.is_none());
}

#[test]
fn a_failing_operation_is_rolled_back_alone() {
    let r = run(
        vec![
            signal("r1", "add", "1"),
            call("r2", "add", "-5", "o"),
            signal("r3", "add", "2"),
            signal("r4", "nope", "0"),
        ],
        Some("[0]"),
    );
    assert_eq!(outcomes(&r), ["ok 2", "failed NegativeError: -5 is negative", "ok 3", "failed UnknownOperation: nope"]);
    // The failed operation's state change and its signal are gone; the others stay.
    assert_eq!(r.entity_state.as_deref(), Some("[0,1,2]"));
    assert_eq!(signals(&r), ["@mirror@k add 1", "@mirror@k add 2"]);
}

#[test]
fn a_panicking_operation_fails_with_details_and_is_rolled_back() {
    let r = run(vec![signal("r1", "add", "13"), signal("r2", "add", "4")], None);
    let out = outcomes(&r);
    assert!(out[0].starts_with(&format!("failed {ENTITY_PANIC_ERROR}: ")), "{out:?}");
    assert!(out[0].contains("unlucky") && out[0].contains("@ledger@k"), "{out:?}");
    assert_eq!(out[1], "ok 1");
    assert_eq!(r.entity_state.as_deref(), Some("[4]"));
    assert_eq!(signals(&r), ["@mirror@k add 4"]);
}

#[test]
fn bad_input_fails_the_operation() {
    let r = run(vec![signal("r1", "add", "\"x\"")], Some("[]"));
    assert!(outcomes(&r)[0].starts_with("failed InputDeserializationError: invalid input for operation 'add'"));
    assert_eq!(r.entity_state.as_deref(), Some("[]"));
}

#[test]
fn deleting_state_and_starting_orchestrations() {
    let r = run(vec![signal("r1", "start", "null"), signal("r2", "delete", "null")], Some("[1,2]"));
    assert_eq!(outcomes(&r), ["ok 3", "ok 0"]);
    assert_eq!(r.entity_state, None, "absent state = deleted");
    assert_eq!(signals(&r), ["start r-1 Report 2"]);
}

#[test]
fn unregistered_entities_fail_every_operation_as_not_registered() {
    let request = EntityRequest {
        instance_id: "@other@k".into(),
        execution_id: String::new(),
        entity_state: Some("5".into()),
        operation_requests: vec![signal("r1", "add", "1"), signal("r2", "add", "1")],
    };
    let r = block_on(execute_batch(&registry(), &request));
    assert_eq!(r.results.len(), 2);
    assert!(outcomes(&r).iter().all(|o| o.starts_with(&format!("failed {ENTITY_NOT_REGISTERED_ERROR}"))));
    assert_eq!(r.entity_state.as_deref(), Some("5"), "the state is kept");
}

#[test]
fn entity_names_are_case_insensitive() {
    let mut r = Registry::new();
    r.add_entity("MixedCase", |ctx: EntityContext| async move { Ok(ctx.id().to_string()) });
    assert!(r.has_entity("mixedcase") && r.has_entity("MIXEDCASE"));
    assert_eq!(r.entity_names().collect::<Vec<_>>(), ["mixedcase"]);
    let request = EntityRequest {
        instance_id: "@mixedcase@k".into(),
        operation_requests: vec![signal("r1", "any", "null")],
        ..Default::default()
    };
    let out = block_on(execute_batch(&r, &request));
    assert_eq!(outcomes(&out), [r#"ok "@mixedcase@k""#]);
}

#[test]
fn a_context_can_be_used_directly() {
    let ctx = EntityContext::new(EntityId::new("Counter", "c"), "add", Some("2".into()), Some("40".into()));
    assert_eq!(ctx.operation(), "add");
    assert_eq!(ctx.input::<i64>().unwrap(), 2);
    assert_eq!(ctx.state::<i64>().unwrap(), Some(40));
    ctx.set_state(&42).unwrap();
    assert_eq!(ctx.raw_state().as_deref(), Some("42"));
    ctx.signal_entity(&EntityId::new("Counter", "d"), "add", 1).unwrap();
    assert_eq!(ctx.actions().len(), 1);
    assert!(ctx.signal_entity(&EntityId::new("", "d"), "add", 1).is_err());
    ctx.delete_state();
    assert!(!ctx.has_state());
    assert_eq!(ctx.state_or_default::<i64>().unwrap(), 0);
}
