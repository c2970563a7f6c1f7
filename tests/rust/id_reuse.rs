//! Orchestration id reuse (`CreateInstanceRequest.orchestrationIdReusePolicy`), driven over
//! gRPC against the real binary: the legacy form the Go SDK sends (statuses + action) and
//! the `replaceableStatus` form of the other SDKs. The full matrix of existing status ×
//! policy is unit-tested in the store (`sidecar/src/store/sqlite.rs`); these tests prove
//! the wire mapping and the terminate-then-replace path end to end.

use std::time::Duration;

use duro_proto::history_event::EventType;
use duro_proto::orchestrator_action::OrchestratorActionType;
use duro_proto::*;
use duro_tests::*;
use tonic::Code;

const T: Duration = Duration::from_secs(15);

/// Legacy `CreateOrchestrationAction` values (field 2 of the policy).
const IGNORE: i32 = 1;
const TERMINATE: i32 = 2;

async fn setup() -> (TestDir, Sidecar, Client) {
    let dir = test_dir();
    let sidecar = Sidecar::builder().dir(dir.path()).start();
    let client = sidecar.client().await;
    (dir, sidecar, client)
}

fn no_activities(_: &ActivityRequest) -> Result<String, String> {
    Err("no activities in this test".into())
}

/// "Idle" waits forever; "Parent" starts child `child-of-parent` ("Idle") and completes
/// with a description of how the child ended.
fn orchestrator(req: &OrchestratorRequest) -> Vec<OrchestratorAction> {
    let name = all_events(req)
        .find_map(|e| match &e.event_type {
            Some(EventType::ExecutionStarted(s)) => Some(s.name.clone()),
            _ => None,
        })
        .unwrap_or_default();
    if name != "Parent" {
        return Vec::new();
    }
    for e in all_events(req) {
        match &e.event_type {
            Some(EventType::SubOrchestrationInstanceFailed(f)) => {
                let d = f.failure_details.clone().unwrap_or_default();
                return vec![complete(
                    1,
                    OrchestrationStatus::Completed,
                    Some(format!("failed:{}:{}", d.error_type, d.error_message)),
                )];
            }
            Some(EventType::SubOrchestrationInstanceCompleted(_)) => {
                return vec![complete(1, OrchestrationStatus::Completed, Some("completed".into()))];
            }
            _ => {}
        }
    }
    if req.past_events.is_empty() {
        vec![OrchestratorAction {
            id: 0,
            orchestrator_action_type: Some(OrchestratorActionType::CreateSubOrchestration(
                CreateSubOrchestrationAction {
                    instance_id: "child-of-parent".into(),
                    name: "Idle".into(),
                    input: Some("\"old child\"".into()),
                    ..Default::default()
                },
            )),
        }]
    } else {
        Vec::new()
    }
}

fn request(id: &str, input: &str, statuses: &[OrchestrationStatus], action: i32) -> CreateInstanceRequest {
    CreateInstanceRequest {
        instance_id: id.into(),
        name: "Idle".into(),
        input: Some(input.into()),
        orchestration_id_reuse_policy: Some(OrchestrationIdReusePolicy {
            replaceable_status: statuses.iter().map(|s| *s as i32).collect(),
            legacy_action: action,
        }),
        ..Default::default()
    }
}

async fn start_req(client: &Client, req: CreateInstanceRequest) -> Result<String, tonic::Status> {
    tokio::time::timeout(CALL_TIMEOUT, client.clone().start_instance(req))
        .await
        .expect("StartInstance hung")
        .map(|r| r.into_inner().instance_id)
}

async fn running(client: &Client, id: &str, input: &str) -> OrchestrationState {
    let req = CreateInstanceRequest {
        instance_id: id.into(),
        name: "Idle".into(),
        input: Some(input.into()),
        ..Default::default()
    };
    start_req(client, req).await.expect("first start");
    wait_status(client, id, T, |s| s == OrchestrationStatus::Running).await
}

/// Regression (issue 13): a legacy policy listing only finished statuses with TERMINATE
/// used to wipe a RUNNING instance (an unlisted status was treated as "replace").
/// durabletask-go answers "already exists" when the existing status is not listed, and
/// so does Duro: the running instance is untouched.
#[tokio::test]
async fn legacy_terminate_listing_finished_statuses_leaves_a_running_instance_alone() {
    let (_d, sidecar, client) = setup().await;
    let worker = RawWorker::start(sidecar.endpoint(), orchestrator, no_activities);
    let before = running(&client, "inv-1", "\"first\"").await;

    let req = request("inv-1", "\"second\"", &[OrchestrationStatus::Completed, OrchestrationStatus::Failed], TERMINATE);
    let err = start_req(&client, req).await.expect_err("RUNNING is not listed: the request must be refused");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let after = get_instance(&client, "inv-1").await.orchestration_state.expect("state");
    assert_eq!(after.execution_id, before.execution_id, "the running instance must not be replaced");
    assert_eq!(status_of(&after), OrchestrationStatus::Running);
    assert_eq!(after.input.as_deref(), Some("\"first\""));

    // The same with IGNORE: an unlisted status is refused, not ignored or replaced.
    let req = request("inv-1", "\"third\"", &[OrchestrationStatus::Completed], IGNORE);
    let err = start_req(&client, req).await.expect_err("RUNNING is not listed");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let after = get_instance(&client, "inv-1").await.orchestration_state.expect("state");
    assert_eq!(after.execution_id, before.execution_id);
    worker.stop().await;
}

/// Legacy IGNORE listing RUNNING: OK with the existing id, and the instance is kept.
#[tokio::test]
async fn legacy_ignore_listing_running_answers_ok_and_keeps_the_instance() {
    let (_d, sidecar, client) = setup().await;
    let worker = RawWorker::start(sidecar.endpoint(), orchestrator, no_activities);
    let before = running(&client, "ign-1", "\"first\"").await;
    let req = request("ign-1", "\"second\"", &[OrchestrationStatus::Running, OrchestrationStatus::Pending], IGNORE);
    let id = start_req(&client, req).await.expect("IGNORE answers OK");
    assert_eq!(id, "ign-1");
    let after = get_instance(&client, "ign-1").await.orchestration_state.expect("state");
    assert_eq!(after.execution_id, before.execution_id, "IGNORE keeps the existing instance");
    assert_eq!(after.input.as_deref(), Some("\"first\""));
    worker.stop().await;
}

/// Legacy TERMINATE of a running child: the child is replaced by a new execution and its
/// parent, waiting on it, is told it was terminated (and is not told anything by the new
/// execution, which belongs to no parent).
#[tokio::test]
async fn legacy_terminate_of_a_running_child_replaces_it_and_tells_the_parent() {
    let (_d, sidecar, client) = setup().await;
    let worker = RawWorker::start(sidecar.endpoint(), orchestrator, no_activities);
    let req = CreateInstanceRequest { instance_id: "parent".into(), name: "Parent".into(), ..Default::default() };
    start_req(&client, req).await.expect("start parent");
    let old_child = wait_status(&client, "child-of-parent", T, |s| s == OrchestrationStatus::Running).await;
    assert_eq!(old_child.parent_instance_id.as_deref(), Some("parent"));

    let req = request("child-of-parent", "\"new child\"", &[OrchestrationStatus::Running], TERMINATE);
    assert_eq!(start_req(&client, req).await.expect("TERMINATE replaces"), "child-of-parent");

    let parent = wait_completion(&client, "parent", T).await;
    let output = parent.output.unwrap_or_default();
    assert!(output.starts_with("failed:TaskTerminated:"), "parent must learn its child was terminated: {output}");
    assert!(output.contains("child-of-parent"), "{output}");

    let new_child = wait_status(&client, "child-of-parent", T, |s| s == OrchestrationStatus::Running).await;
    assert_ne!(new_child.execution_id, old_child.execution_id, "a new execution holds the id");
    assert_eq!(new_child.input.as_deref(), Some("\"new child\""));
    assert_eq!(new_child.parent_instance_id, None, "the new execution was started by a client");
    worker.stop().await;
}

/// `replaceableStatus` listing RUNNING (and TERMINATED): the running instance is terminated
/// and replaced; an empty list refuses any existing instance; RUNNING without TERMINATED is
/// refused as contradictory.
#[tokio::test]
async fn replaceable_status_listing_running_replaces_a_running_instance() {
    let (_d, sidecar, client) = setup().await;
    let worker = RawWorker::start(sidecar.endpoint(), orchestrator, no_activities);
    let before = running(&client, "rep-1", "\"first\"").await;

    let err = start_req(&client, request("rep-1", "\"x\"", &[], 0)).await.expect_err("empty list");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err = start_req(&client, request("rep-1", "\"x\"", &[OrchestrationStatus::Completed], 0))
        .await
        .expect_err("RUNNING not listed");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(
        get_instance(&client, "rep-1").await.orchestration_state.expect("state").execution_id,
        before.execution_id
    );

    // Replacing a live instance terminates it: a list that excludes TERMINATED is contradictory.
    let req = request("rep-1", "\"x\"", &[OrchestrationStatus::Running, OrchestrationStatus::Completed], 0);
    let err = start_req(&client, req).await.expect_err("RUNNING without TERMINATED");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        get_instance(&client, "rep-1").await.orchestration_state.expect("state").execution_id,
        before.execution_id
    );

    let listed = [OrchestrationStatus::Running, OrchestrationStatus::Completed, OrchestrationStatus::Terminated];
    let req = request("rep-1", "\"second\"", &listed, 0);
    start_req(&client, req).await.expect("RUNNING listed: replace");
    let after = wait_status(&client, "rep-1", T, |s| s == OrchestrationStatus::Running).await;
    assert_ne!(after.execution_id, before.execution_id);
    assert_eq!(after.input.as_deref(), Some("\"second\""));
    // The new execution really runs: its first turn saw only its own start.
    let h = history(&client, "rep-1").await;
    let starts: Vec<_> = h
        .iter()
        .filter_map(|e| match &e.event_type {
            Some(EventType::ExecutionStarted(s)) => s.input.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(starts, vec!["\"second\"".to_string()], "the old execution's history must be gone");
    worker.stop().await;
}
