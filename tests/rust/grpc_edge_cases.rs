//! Edge cases of the `TaskHubSidecarService` API, driven over gRPC against the real binary.
//! Each test starts its own sidecar on a fresh database; every wait is bounded.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use duro_proto::history_event::EventType;
use duro_proto::*;
use duro_tests::*;
use tonic::Code;

/// A sidecar with `args` and a client. Drop order: client, sidecar, then the directory.
async fn setup(args: &[&str]) -> (TestDir, Sidecar, Client) {
    let dir = test_dir();
    let sidecar = Sidecar::builder().dir(dir.path()).args(args).start();
    let client = sidecar.client().await;
    (dir, sidecar, client)
}

fn code_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got OK: {v:?}"),
        Err(s) => s.code(),
    }
}

/// Bounded unary call.
async fn call<T>(
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(CALL_TIMEOUT, fut).await.expect("call hung").map(|r| r.into_inner())
}

fn now_ts(offset_secs: i64) -> prost_types::Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    prost_types::Timestamp { seconds: d.as_secs() as i64 + offset_secs, nanos: 0 }
}

fn ts_secs(t: &Option<prost_types::Timestamp>) -> f64 {
    let t = t.as_ref().expect("timestamp");
    t.seconds as f64 + t.nanos as f64 / 1e9
}

/// An orchestrator that just waits (returns no actions).
fn idle(_: &OrchestratorRequest) -> Vec<OrchestratorAction> {
    Vec::new()
}

/// An orchestrator that completes at once with its input as output.
fn echo(req: &OrchestratorRequest) -> Vec<OrchestratorAction> {
    vec![complete(0, OrchestrationStatus::Completed, orchestration_input(req))]
}

fn no_activities(_: &ActivityRequest) -> Result<String, String> {
    Err("no activities in this test".into())
}

const T: Duration = Duration::from_secs(15);

// ----- unknown instances ------------------------------------------------------------------

#[tokio::test]
async fn unknown_instance_get_and_wait_answer_exists_false() {
    let (_d, _s, client) = setup(&[]).await;
    let r = call(
        client.clone().get_instance(GetInstanceRequest { instance_id: "nope".into(), get_inputs_and_outputs: true }),
    )
    .await
    .expect("GetInstance of an unknown id must be OK");
    assert!(!r.exists);
    assert!(r.orchestration_state.is_none());
    let r = call(client.clone().wait_for_instance_completion(GetInstanceRequest {
        instance_id: "nope".into(),
        get_inputs_and_outputs: false,
    }))
    .await
    .expect("WaitForInstanceCompletion of an unknown id must be OK");
    assert!(!r.exists);
    let r = call(
        client
            .clone()
            .wait_for_instance_start(GetInstanceRequest { instance_id: "nope".into(), get_inputs_and_outputs: false }),
    )
    .await
    .expect("WaitForInstanceStart of an unknown id must be OK");
    assert!(!r.exists);
}

// ----- StartInstance ----------------------------------------------------------------------

#[tokio::test]
async fn start_instance_rejects_invalid_arguments() {
    let (_d, _s, client) = setup(&[]).await;
    assert_eq!(code_of(start(&client, "", "id-1", None).await), Code::InvalidArgument, "empty name");
    assert_eq!(code_of(start(&client, "Orch", "bad\u{7}id", None).await), Code::InvalidArgument, "control char in id");
    assert_eq!(code_of(start(&client, "Orch", "bad\nid", None).await), Code::InvalidArgument, "newline in id");
    let long = "x".repeat(1025);
    assert_eq!(code_of(start(&client, "Orch", &long, None).await), Code::InvalidArgument, "1025-byte id");
    let err = start(&client, "Orch", "id-2", Some("{not json")).await.expect_err("non-JSON input must be rejected");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("input"), "message should name the field: {:?}", err.message());
    // Nothing was created by the rejected calls.
    for id in ["id-1", "id-2"] {
        assert!(!get_instance(&client, id).await.exists, "{id} must not exist");
    }
    // The longest allowed id works.
    let ok = "y".repeat(1024);
    assert_eq!(start(&client, "Orch", &ok, None).await.expect("1024-byte id"), ok);
}

#[tokio::test]
async fn start_instance_empty_id_gets_a_generated_id() {
    let (_d, _s, client) = setup(&[]).await;
    let id = start(&client, "Orch", "", Some("1")).await.expect("StartInstance");
    assert!(!id.is_empty(), "a generated id must be returned");
    let a = get_instance(&client, &id).await;
    assert!(a.exists, "the generated id must name the new instance");
    let id2 = start(&client, "Orch", "", None).await.expect("StartInstance");
    assert_ne!(id, id2, "generated ids must be unique");
}

#[tokio::test]
async fn start_instance_duplicate_of_running_is_already_exists() {
    let (_d, sidecar, client) = setup(&[]).await;
    let worker = RawWorker::start(sidecar.endpoint(), idle, no_activities);
    start(&client, "Orch", "dup-1", Some("1")).await.expect("first start");
    let before = wait_status(&client, "dup-1", T, |s| s == OrchestrationStatus::Running).await;
    let err = start(&client, "Orch", "dup-1", Some("2")).await.expect_err("duplicate of a running instance");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let after = get_instance(&client, "dup-1").await.orchestration_state.expect("state");
    assert_eq!(after.execution_id, before.execution_id, "the running instance must be untouched");
    assert_eq!(after.input.as_deref(), Some("1"));
    worker.stop().await;
}

#[tokio::test]
async fn start_instance_reuses_completed_id_unless_policy_forbids() {
    let (_d, sidecar, client) = setup(&[]).await;
    let worker = RawWorker::start(sidecar.endpoint(), echo, no_activities);
    start(&client, "Echo", "reuse-1", Some("1")).await.expect("first start");
    let first = wait_completion(&client, "reuse-1", T).await;
    assert_eq!(status_of(&first), OrchestrationStatus::Completed);
    assert_eq!(first.output.as_deref(), Some("1"));

    // Without a policy: a COMPLETED id may be reused; it is a new execution.
    start(&client, "Echo", "reuse-1", Some("2")).await.expect("reusing a completed id without a policy");
    // StartInstance persisted the new execution before answering, so this wait sees it.
    let second = wait_completion(&client, "reuse-1", T).await;
    assert_eq!(second.output.as_deref(), Some("2"));
    assert_ne!(second.execution_id, first.execution_id, "a new execution id is expected");

    // A policy whose replaceableStatus does not list COMPLETED: ALREADY_EXISTS.
    let req = CreateInstanceRequest {
        instance_id: "reuse-1".into(),
        name: "Echo".into(),
        input: Some("3".into()),
        orchestration_id_reuse_policy: Some(OrchestrationIdReusePolicy {
            replaceable_status: vec![OrchestrationStatus::Failed as i32, OrchestrationStatus::Terminated as i32],
            legacy_action: 0,
        }),
        ..Default::default()
    };
    let err = call(client.clone().start_instance(req.clone())).await.expect_err("policy forbids replacing COMPLETED");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let now = get_instance(&client, "reuse-1").await.orchestration_state.expect("state");
    assert_eq!(now.execution_id, second.execution_id, "the instance must be untouched");

    // Positive control: a policy listing COMPLETED replaces it.
    let mut allow = req;
    allow.orchestration_id_reuse_policy = Some(OrchestrationIdReusePolicy {
        replaceable_status: vec![OrchestrationStatus::Completed as i32],
        legacy_action: 0,
    });
    call(client.clone().start_instance(allow)).await.expect("policy lists COMPLETED");
    let third = wait_completion(&client, "reuse-1", T).await;
    assert_ne!(third.execution_id, second.execution_id);
    assert_eq!(third.output.as_deref(), Some("3"));
    worker.stop().await;
}

// ----- RaiseEvent / Terminate / Suspend -------------------------------------------------------

#[tokio::test]
async fn raise_terminate_suspend_on_unknown_or_invalid() {
    let (_d, _s, client) = setup(&[]).await;
    let r = call(client.clone().raise_event(RaiseEventRequest {
        instance_id: "ghost".into(),
        name: "E".into(),
        input: None,
    }))
    .await;
    assert_eq!(code_of(r), Code::NotFound, "RaiseEvent to an unknown id");

    start(&client, "Orch", "real-1", None).await.expect("start");
    let r = call(client.clone().raise_event(RaiseEventRequest {
        instance_id: "real-1".into(),
        name: String::new(),
        input: None,
    }))
    .await;
    assert_eq!(code_of(r), Code::InvalidArgument, "RaiseEvent with an empty name");

    call(client.clone().terminate_instance(TerminateRequest {
        instance_id: "ghost".into(),
        output: None,
        recursive: false,
    }))
    .await
    .expect("Terminate of an unknown id must be OK");
    assert!(!get_instance(&client, "ghost").await.exists, "terminate must not create the instance");

    let r = call(client.clone().suspend_instance(SuspendRequest { instance_id: "ghost".into(), reason: None })).await;
    assert_eq!(code_of(r), Code::NotFound, "Suspend of an unknown id");
}

// ----- completion tokens ---------------------------------------------------------------------

#[tokio::test]
async fn forged_stale_and_duplicate_completion_tokens_are_not_found() {
    let (_d, _s, client) = setup(&[]).await;
    start(&client, "Orch", "tok-1", Some("5")).await.expect("start");
    let mut stream = open_stream(&client, GetWorkItemsRequest::default()).await;
    let turn = next_work(&mut stream, T).await.expect("first turn");
    let req = orchestrator_request(&turn).clone();
    assert!(!turn.completion_token.is_empty(), "work items must carry a completion token");

    let forged = complete_turn_with_token(
        &client,
        "tok-1",
        "forged-token-123",
        vec![complete(0, OrchestrationStatus::Completed, None)],
    )
    .await;
    assert_eq!(code_of(forged), Code::NotFound, "forged orchestrator token");

    // The live lease is unaffected by the forged attempt.
    complete_turn(&client, &turn, vec![schedule_task(0, ADD, Some("5".into()))]).await.expect("real token");
    let again =
        complete_turn(&client, &turn, vec![complete(1, OrchestrationStatus::Completed, Some("\"twice\"".into()))])
            .await;
    assert_eq!(code_of(again), Code::NotFound, "the same orchestrator token twice");

    let act = next_work(&mut stream, T).await.expect("activity item");
    let a = activity_request(&act).clone();
    assert_eq!(a.task_id, 0);
    let resp = |token: &str, result: &str| ActivityResponse {
        instance_id: req.instance_id.clone(),
        task_id: a.task_id,
        result: Some(result.to_string()),
        failure_details: None,
        completion_token: token.to_string(),
    };
    let r = call(client.clone().complete_activity_task(resp("forged-activity-token", "999"))).await;
    assert_eq!(code_of(r), Code::NotFound, "forged activity token");
    call(client.clone().complete_activity_task(resp(&act.completion_token, "6"))).await.expect("real activity token");
    let r = call(client.clone().complete_activity_task(resp(&act.completion_token, "777"))).await;
    assert_eq!(code_of(r), Code::NotFound, "the same activity token twice");

    // Exactly one result reached the orchestration, the real one.
    let turn2 = next_work(&mut stream, T).await.expect("second turn");
    let r2 = orchestrator_request(&turn2);
    let results: Vec<(i32, Option<String>)> = all_events(r2)
        .filter_map(|e| match &e.event_type {
            Some(EventType::TaskCompleted(c)) => Some((c.task_scheduled_id, c.result.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(results, vec![(0, Some("6".to_string()))]);
    // A token of an earlier turn is stale for the later one.
    let stale = complete_turn_with_token(
        &client,
        "tok-1",
        &turn.completion_token,
        vec![complete(1, OrchestrationStatus::Completed, None)],
    )
    .await;
    assert_eq!(code_of(stale), Code::NotFound, "stale token of an earlier turn");
    complete_turn(&client, &turn2, vec![complete(1, OrchestrationStatus::Completed, Some("6".into()))])
        .await
        .expect("finish");
    let s = wait_completion(&client, "tok-1", T).await;
    assert_eq!(s.output.as_deref(), Some("6"));
}

#[tokio::test]
async fn turn_of_a_disconnected_stream_is_redelivered_and_old_token_rejected() {
    let (_d, _s, client) = setup(&[]).await;
    start(&client, "Orch", "redeliver-1", None).await.expect("start");
    let client_a = _s.client().await;
    let mut a = open_stream(&client_a, GetWorkItemsRequest::default()).await;
    let first = next_work(&mut a, T).await.expect("turn on stream A");
    let old_token = first.completion_token.clone();
    assert_eq!(orchestrator_request(&first).instance_id, "redeliver-1");
    drop(a); // disconnect while holding the turn
    drop(client_a);

    let mut b = open_stream(&client, GetWorkItemsRequest::default()).await;
    let second = next_work(&mut b, T).await.expect("the turn must be redelivered to stream B");
    let req = orchestrator_request(&second);
    assert_eq!(req.instance_id, "redeliver-1");
    assert_ne!(second.completion_token, old_token, "a redelivery needs a new token");
    assert_eq!(
        kinds(&req.new_events),
        kinds(&orchestrator_request(&first).new_events)[..].to_vec(),
        "same events redelivered"
    );

    let stale = complete_turn_with_token(
        &client,
        "redeliver-1",
        &old_token,
        vec![complete(0, OrchestrationStatus::Completed, Some("\"old\"".into()))],
    )
    .await;
    assert_eq!(code_of(stale), Code::NotFound, "the old token must be rejected");
    complete_turn(&client, &second, vec![complete(0, OrchestrationStatus::Completed, Some("\"new\"".into()))])
        .await
        .expect("new token");
    let s = wait_completion(&client, "redeliver-1", T).await;
    assert_eq!(s.output.as_deref(), Some("\"new\""));
}

// ----- abandon and poison ------------------------------------------------------------------

#[tokio::test]
async fn abandoned_turn_is_redelivered_then_poisoned_after_max_attempts() {
    let (_d, sidecar, client) = setup(&["--max-delivery-attempts", "3"]).await;
    start(&client, "Orch", "poison-1", None).await.expect("start");
    let mut stream = open_stream(&client, GetWorkItemsRequest::default()).await;
    let mut tokens = Vec::new();
    // Back-off grows 1 s per attempt; allow 6 s between deliveries.
    while let Some(item) = next_work(&mut stream, Duration::from_secs(6)).await {
        let req = orchestrator_request(&item);
        assert_eq!(req.instance_id, "poison-1");
        assert!(
            req.new_events.iter().any(|e| kind(e) == "executionStarted"),
            "a redelivered first turn still carries executionStarted: {:?}",
            kinds(&req.new_events)
        );
        tokens.push(item.completion_token.clone());
        call(client.clone().abandon_task_orchestrator_work_item(AbandonOrchestrationTaskRequest {
            completion_token: item.completion_token.clone(),
        }))
        .await
        .expect("abandon");
        assert!(tokens.len() <= 10, "turn delivered {} times: the poison limit is not applied", tokens.len());
    }
    assert!(tokens.len() >= 2, "an abandoned turn must be redelivered (deliveries: {})", tokens.len());
    assert_eq!(tokens.len(), 3, "--max-delivery-attempts 3 means 3 deliveries");
    assert_eq!(tokens.iter().collect::<BTreeSet<_>>().len(), tokens.len(), "each delivery has its own token");
    let s = wait_status(&client, "poison-1", T, |s| s == OrchestrationStatus::Failed).await;
    let f = s.failure_details.expect("failure details");
    assert_eq!(f.error_type, "DuroPoisonWorkItem", "{f:?}");
    assert!(sidecar.log_text().contains("poison"), "the sidecar should log the poison decision");
}

#[tokio::test]
async fn abandoned_activity_beyond_limit_reaches_orchestration_as_task_failed() {
    let (_d, _s, client) = setup(&["--max-delivery-attempts", "3"]).await;
    start(&client, "Orch", "flaky-1", None).await.expect("start");
    let mut stream = open_stream(&client, GetWorkItemsRequest::default()).await;
    let turn = next_work(&mut stream, T).await.expect("first turn");
    complete_turn(&client, &turn, vec![schedule_task(4, "Flaky", Some("1".into()))]).await.expect("schedule");

    let mut activity_deliveries = 0;
    let failed_turn = loop {
        let item = next_work(&mut stream, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("nothing delivered for 10 s after {activity_deliveries} activity deliveries"));
        match &item.request {
            Some(work_item::Request::ActivityRequest(a)) => {
                assert_eq!(a.task_id, 4);
                activity_deliveries += 1;
                assert!(activity_deliveries <= 10, "activity delivered {activity_deliveries} times: no poison limit");
                call(client.clone().abandon_task_activity_work_item(AbandonActivityTaskRequest {
                    completion_token: item.completion_token.clone(),
                }))
                .await
                .expect("abandon activity");
            }
            Some(work_item::Request::OrchestratorRequest(_)) => break item,
            other => panic!("unexpected work item {other:?}"),
        }
    };
    assert_eq!(activity_deliveries, 3, "--max-delivery-attempts 3 means 3 activity deliveries");
    let req = orchestrator_request(&failed_turn);
    assert_eq!(kind(&req.new_events[0]), "orchestratorStarted");
    let failed: Vec<&TaskFailedEvent> = req
        .new_events
        .iter()
        .filter_map(|e| match &e.event_type {
            Some(EventType::TaskFailed(f)) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "newEvents: {:?}", kinds(&req.new_events));
    assert_eq!(failed[0].task_scheduled_id, 4);
    let details = failed[0].failure_details.as_ref().expect("failureDetails");
    assert_eq!(details.error_type, "DuroPoisonWorkItem", "{details:?}");
    complete_turn(&client, &failed_turn, vec![fail(5, &details.error_type, &details.error_message)])
        .await
        .expect("complete");
    let s = wait_completion(&client, "flaky-1", T).await;
    assert_eq!(status_of(&s), OrchestrationStatus::Failed);
}

// ----- routing ---------------------------------------------------------------------------------

#[tokio::test]
async fn work_item_filters_route_by_orchestration_name() {
    let (_d, _s, client) = setup(&[]).await;
    let only_a = GetWorkItemsRequest {
        work_item_filters: Some(WorkItemFilters {
            orchestrations: vec![OrchestrationFilter { name: "A".into(), versions: vec![] }],
            activities: vec![],
            entities: vec![],
        }),
        ..Default::default()
    };
    let mut a = open_stream(&client, only_a).await;
    start(&client, "B", "b-1", None).await.expect("start B");
    start(&client, "A", "a-1", None).await.expect("start A");
    let item = next_work(&mut a, T).await.expect("the filtered stream gets A's turn");
    assert_eq!(orchestrator_request(&item).instance_id, "a-1");
    assert!(
        next_work(&mut a, Duration::from_millis(1500)).await.is_none(),
        "the filtered stream must never get B's turn"
    );
    assert_eq!(
        status_of(&get_instance(&client, "b-1").await.orchestration_state.expect("b-1")),
        OrchestrationStatus::Pending
    );

    let client2 = _s.client().await;
    let mut any = open_stream(&client2, GetWorkItemsRequest::default()).await;
    let item_b = next_work(&mut any, T).await.expect("B's turn once an unfiltered stream connects");
    assert_eq!(orchestrator_request(&item_b).instance_id, "b-1");
    assert!(next_work(&mut a, Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn max_concurrent_orchestration_work_items_is_respected() {
    let (_d, _s, client) = setup(&[]).await;
    for i in 0..3 {
        start(&client, "Orch", &format!("cap-{i}"), None).await.expect("start");
    }
    let mut stream =
        open_stream(&client, GetWorkItemsRequest { max_concurrent_orchestration_work_items: 1, ..Default::default() })
            .await;
    let mut seen = BTreeSet::new();
    for round in 0..3 {
        let item = next_work(&mut stream, T).await.unwrap_or_else(|| panic!("round {round}: no work item"));
        let id = orchestrator_request(&item).instance_id.clone();
        // While this one is held, no second orchestration work item may arrive.
        if let Some(extra) = next_work(&mut stream, Duration::from_millis(800)).await {
            panic!(
                "round {round}: a second item arrived while {id} was held: {:?}",
                extra.request.map(|r| match r {
                    work_item::Request::OrchestratorRequest(o) => o.instance_id,
                    _ => "other".into(),
                })
            );
        }
        complete_turn(&client, &item, vec![complete(0, OrchestrationStatus::Completed, None)]).await.expect("complete");
        assert!(seen.insert(id.clone()), "{id} delivered twice");
    }
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn idle_stream_receives_health_ping() {
    let (_d, _s, client) = setup(&["--ping-seconds", "1"]).await;
    let mut stream = open_stream(&client, GetWorkItemsRequest::default()).await;
    match next_raw(&mut stream, Duration::from_secs(3)).await {
        Next::Item(WorkItem { request: Some(work_item::Request::HealthPing(_)), .. }) => {}
        other => panic!("expected a healthPing within 3 s, got {other:?}"),
    }
    // And they keep coming.
    match next_raw(&mut stream, Duration::from_secs(3)).await {
        Next::Item(WorkItem { request: Some(work_item::Request::HealthPing(_)), .. }) => {}
        other => panic!("expected a second healthPing, got {other:?}"),
    }
}

// ----- turn contents ---------------------------------------------------------------------------

#[tokio::test]
async fn turn_events_follow_the_protocol() {
    let (_d, _s, client) = setup(&[]).await;
    start(&client, "Shape", "shape-1", Some("{\"x\":1}")).await.expect("start");
    let mut stream = open_stream(&client, GetWorkItemsRequest::default()).await;

    let t1 = next_work(&mut stream, T).await.expect("first turn");
    let r1 = orchestrator_request(&t1).clone();
    assert!(r1.past_events.is_empty(), "first turn has no past: {:?}", kinds(&r1.past_events));
    assert_eq!(kinds(&r1.new_events), vec!["orchestratorStarted", "executionStarted"]);
    assert!(r1.new_events.iter().all(|e| e.event_id == -1), "sidecar events carry eventId -1");
    let started_at = ts_secs(&r1.new_events[0].timestamp);
    let now = ts_secs(&Some(now_ts(0)));
    assert!((now - started_at).abs() < 30.0, "orchestratorStarted must be stamped now ({started_at} vs {now})");
    match &r1.new_events[1].event_type {
        Some(EventType::ExecutionStarted(s)) => {
            assert_eq!(s.name, "Shape");
            assert_eq!(s.input.as_deref(), Some("{\"x\":1}"));
            let oi = s.orchestration_instance.as_ref().expect("orchestrationInstance");
            assert_eq!(oi.instance_id, "shape-1");
            assert_eq!(oi.execution_id, r1.execution_id);
        }
        other => panic!("{other:?}"),
    }
    complete_turn(&client, &t1, vec![schedule_task(7, ADD, Some("41".into()))]).await.expect("turn 1");

    let act = next_work(&mut stream, T).await.expect("activity");
    let a = activity_request(&act);
    assert_eq!((a.name.as_str(), a.task_id, a.input.as_deref()), (ADD, 7, Some("41")));
    let oi = a.orchestration_instance.as_ref().expect("orchestrationInstance");
    assert_eq!(oi.instance_id, "shape-1");
    assert_eq!(oi.execution_id, r1.execution_id);
    call(client.clone().complete_activity_task(ActivityResponse {
        instance_id: "shape-1".into(),
        task_id: 7,
        result: Some("42".into()),
        failure_details: None,
        completion_token: act.completion_token.clone(),
    }))
    .await
    .expect("activity");

    let t2 = next_work(&mut stream, T).await.expect("second turn");
    let r2 = orchestrator_request(&t2).clone();
    assert_eq!(
        kinds(&r2.past_events),
        vec!["orchestratorStarted", "executionStarted", "taskScheduled", "orchestratorCompleted"]
    );
    assert_eq!(r2.past_events[0], r1.new_events[0], "pastEvents keeps the committed orchestratorStarted as sent");
    assert_eq!(r2.past_events[1], r1.new_events[1], "pastEvents keeps executionStarted as sent");
    assert_eq!(r2.past_events[2].event_id, 7, "taskScheduled carries the action id");
    match &r2.past_events[2].event_type {
        Some(EventType::TaskScheduled(t)) => {
            assert_eq!(t.name, ADD);
            assert_eq!(t.input.as_deref(), Some("41"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r2.past_events[3].event_id, -1);
    assert_eq!(kinds(&r2.new_events), vec!["orchestratorStarted", "taskCompleted"]);
    assert!(ts_secs(&r2.new_events[0].timestamp) >= started_at, "the deterministic clock must not go back");
    match &r2.new_events[1].event_type {
        Some(EventType::TaskCompleted(c)) => {
            assert_eq!(c.task_scheduled_id, 7);
            assert_eq!(c.result.as_deref(), Some("42"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r2.new_events[1].event_id, -1);
    assert_eq!(r2.execution_id, r1.execution_id);
    complete_turn(&client, &t2, vec![complete(8, OrchestrationStatus::Completed, Some("42".into()))])
        .await
        .expect("turn 2");
    let s = wait_completion(&client, "shape-1", T).await;
    assert_eq!(s.output.as_deref(), Some("42"));

    let h = history(&client, "shape-1").await;
    let mut tail = kinds(&h[6.min(h.len())..]);
    tail.sort();
    assert_eq!(tail, vec!["executionCompleted", "orchestratorCompleted"], "history: {:?}", kinds(&h));
    assert_eq!(&h[..4], &r2.past_events[..], "stored history = what the worker was shown");
    assert_eq!(&h[4..6], &r2.new_events[..]);
}

#[tokio::test]
async fn timer_in_the_past_fires_promptly_with_exact_fire_at() {
    let (_d, _s, client) = setup(&[]).await;
    start(&client, "Timer", "timer-1", None).await.expect("start");
    let mut stream = open_stream(&client, GetWorkItemsRequest::default()).await;
    let t1 = next_work(&mut stream, T).await.expect("first turn");
    let mut fire_at = now_ts(-3600);
    fire_at.nanos = 123_456_789;
    complete_turn(&client, &t1, vec![create_timer(3, fire_at)]).await.expect("create timer");
    let sent = std::time::Instant::now();

    let t2 = next_work(&mut stream, Duration::from_secs(5)).await.expect("a past timer must fire within 5 s");
    assert!(sent.elapsed() < Duration::from_secs(3), "fired after {:?}", sent.elapsed());
    let r2 = orchestrator_request(&t2);
    assert_eq!(kinds(&r2.new_events), vec!["orchestratorStarted", "timerFired"]);
    match &r2.new_events[1].event_type {
        Some(EventType::TimerFired(f)) => {
            assert_eq!(f.timer_id, 3);
            assert_eq!(f.fire_at, Some(fire_at), "timerFired.fireAt must equal the requested fireAt exactly");
        }
        other => panic!("{other:?}"),
    }
    let created = r2.past_events.iter().find(|e| kind(e) == "timerCreated").expect("timerCreated in pastEvents");
    assert_eq!(created.event_id, 3);
    match &created.event_type {
        Some(EventType::TimerCreated(c)) => assert_eq!(c.fire_at, Some(fire_at)),
        other => panic!("{other:?}"),
    }
    complete_turn(&client, &t2, vec![complete(4, OrchestrationStatus::Completed, None)]).await.expect("complete");
    wait_completion(&client, "timer-1", T).await;
}

// ----- sizes -----------------------------------------------------------------------------------

#[tokio::test]
async fn oversized_start_request_is_rejected_cleanly() {
    let (_d, mut sidecar, client) = setup(&[]).await;
    let big = format!("\"{}\"", "x".repeat(40 * 1024 * 1024));
    let r = tokio::time::timeout(Duration::from_secs(60), start(&client, "Big", "big-1", Some(&big))).await;
    let err = r.expect("a 40 MiB StartInstance must not hang").expect_err("a 40 MiB StartInstance must fail");
    eprintln!("40 MiB StartInstance answered {:?}: {}", err.code(), err.message());
    assert!(
        matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument),
        "expected RESOURCE_EXHAUSTED (or a similar clean code), got {err:?}"
    );
    // The sidecar still answers and did not create the instance.
    assert!(!get_instance(&client, "big-1").await.exists);
    call(client.clone().hello(())).await.expect("Hello after the oversized request");
    start(&client, "Small", "small-1", Some("1")).await.expect("a normal start afterwards");
    assert!(sidecar.terminate(), "the sidecar must still shut down cleanly");
}

#[tokio::test]
async fn work_item_over_the_limit_fails_the_instance() {
    let (_d, _s, client) = setup(&["--max-work-item-bytes", "100000"]).await;
    let mut stream = open_stream(&client, GetWorkItemsRequest::default()).await;
    let input = format!("\"{}\"", "y".repeat(200 * 1024));
    start(&client, "Big", "big-turn-1", Some(&input)).await.expect("a 200 KB input is accepted by StartInstance");
    let s = wait_completion(&client, "big-turn-1", T).await;
    assert_eq!(status_of(&s), OrchestrationStatus::Failed);
    let f = s.failure_details.expect("failure details");
    assert_eq!(f.error_type, "DuroWorkItemTooLarge", "{f:?}");
    assert!(next_work(&mut stream, Duration::from_millis(500)).await.is_none(), "the oversized turn must not be sent");
    // A small instance still runs.
    start(&client, "Small", "small-1", Some("1")).await.expect("start");
    let item = next_work(&mut stream, T).await.expect("small turn");
    assert_eq!(orchestrator_request(&item).instance_id, "small-1");
}

// ----- unsupported -----------------------------------------------------------------------------

#[tokio::test]
async fn entity_rpcs_check_their_input_and_answer_unknown_entities() {
    let (_d, _s, client) = setup(&[]).await;
    let signal = |id: &str, name: &str| SignalEntityRequest {
        instance_id: id.into(),
        name: name.into(),
        input: Some("1".into()),
        request_id: "r1".into(),
        ..Default::default()
    };
    for bad in ["counter-one", "@counter", "@@k"] {
        let r = call(client.clone().signal_entity(signal(bad, "add"))).await;
        assert_eq!(code_of(r), Code::InvalidArgument, "{bad}");
    }
    let r = call(client.clone().signal_entity(signal("@counter@one", ""))).await;
    assert_eq!(code_of(r), Code::InvalidArgument, "an operation name is required");
    let long = format!("@counter@{}", "k".repeat(2000));
    assert_eq!(code_of(call(client.clone().signal_entity(signal(&long, "add"))).await), Code::InvalidArgument);

    let get = |id: &str| GetEntityRequest { instance_id: id.into(), include_state: true };
    let missing = call(client.clone().get_entity(get("@counter@none"))).await.expect("answered");
    assert!(!missing.exists && missing.entity.is_none(), "unknown entities do not exist: {missing:?}");
    assert_eq!(code_of(call(client.clone().get_entity(get("nope"))).await), Code::InvalidArgument);

    // A signal with no worker connected: queued, transient (no state yet).
    call(client.clone().signal_entity(signal("@Counter@one", "add"))).await.expect("queued");
    let queued = call(client.clone().get_entity(get("@counter@one"))).await.expect("answered");
    assert!(!queued.exists, "an entity without state does not exist yet");
    let query = |transient: bool, token: Option<&str>| QueryEntitiesRequest {
        query: Some(EntityQuery {
            instance_id_starts_with: Some("@COUNTER@".into()),
            include_transient: transient,
            continuation_token: token.map(String::from),
            ..Default::default()
        }),
    };
    let found = call(client.clone().query_entities(query(true, None))).await.expect("query");
    let rows: Vec<_> = found.entities.iter().map(|e| (e.instance_id.as_str(), e.backlog_queue_size)).collect();
    assert_eq!(rows, vec![("@counter@one", 1)]);
    let with_state = call(client.clone().query_entities(query(false, None))).await.expect("query");
    assert!(with_state.entities.is_empty());
    assert_eq!(code_of(call(client.clone().query_entities(query(true, Some("garbage")))).await), Code::InvalidArgument);

    // Cleaning keeps an entity with queued requests.
    let clean =
        CleanEntityStorageRequest { remove_empty_entities: true, release_orphaned_locks: true, ..Default::default() };
    let cleaned = call(client.clone().clean_entity_storage(clean)).await.expect("cleaned");
    assert_eq!((cleaned.empty_entities_removed, cleaned.orphaned_locks_released), (0, 0));

    // Unknown tokens: completing is NOT_FOUND, abandoning is fine.
    let stale = EntityBatchResult { completion_token: "e-unknown".into(), ..Default::default() };
    assert_eq!(code_of(call(client.clone().complete_entity_task(stale)).await), Code::NotFound);
    let abandon = AbandonEntityTaskRequest { completion_token: "e-unknown".into() };
    call(client.clone().abandon_task_entity_work_item(abandon)).await.expect("abandoning an unknown token is fine");
}

// ----- query and purge -------------------------------------------------------------------------

#[tokio::test]
async fn query_instances_pages_and_filters() {
    let (_d, _s, client) = setup(&[]).await;
    for i in 0..25 {
        start(&client, "Orch", &format!("page-{i:02}"), None).await.expect("start");
    }
    for i in 0..3 {
        start(&client, "Orch", &format!("other-{i}"), None).await.expect("start");
    }
    let query = |token: Option<String>, statuses: Vec<OrchestrationStatus>, prefix: Option<&str>, size: i32| {
        QueryInstancesRequest {
            query: Some(InstanceQuery {
                runtime_status: statuses.into_iter().map(|s| s as i32).collect(),
                instance_id_prefix: prefix.map(str::to_string),
                max_instance_count: size,
                continuation_token: token,
                ..Default::default()
            }),
        }
    };
    let mut sizes = Vec::new();
    let mut ids = Vec::new();
    let mut token = None;
    for page in 0..10 {
        let r =
            call(client.clone().query_instances(query(token.clone(), vec![], Some("page-"), 10))).await.expect("query");
        sizes.push(r.orchestration_state.len());
        ids.extend(r.orchestration_state.iter().map(|s| s.instance_id.clone()));
        match r.continuation_token {
            Some(t) if !t.is_empty() => {
                assert!(page < 3, "too many pages");
                token = Some(t)
            }
            _ => break,
        }
    }
    assert_eq!(sizes, vec![10, 10, 5], "page sizes");
    let distinct: BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(distinct.len(), 25, "pages must not repeat or skip: {ids:?}");
    assert!(ids.iter().all(|i| i.starts_with("page-")));

    // Terminate five, then filter by status.
    for i in 0..5 {
        call(client.clone().terminate_instance(TerminateRequest {
            instance_id: format!("page-{i:02}"),
            output: None,
            recursive: false,
        }))
        .await
        .expect("terminate");
    }
    for i in 0..5 {
        wait_status(&client, &format!("page-{i:02}"), T, |s| s == OrchestrationStatus::Terminated).await;
    }
    let r =
        call(client.clone().query_instances(query(None, vec![OrchestrationStatus::Terminated], Some("page-"), 100)))
            .await
            .expect("q");
    let got: BTreeSet<_> = r.orchestration_state.iter().map(|s| s.instance_id.clone()).collect();
    let want: BTreeSet<_> = (0..5).map(|i| format!("page-{i:02}")).collect();
    assert_eq!(got, want);
    assert!(r.continuation_token.as_deref().unwrap_or("").is_empty(), "a short last page has no token");
    let r = call(client.clone().query_instances(query(None, vec![OrchestrationStatus::Pending], Some("page-"), 100)))
        .await
        .expect("q");
    assert_eq!(r.orchestration_state.len(), 20);
    let r = call(client.clone().query_instances(query(None, vec![OrchestrationStatus::Pending], None, 100)))
        .await
        .expect("q");
    assert_eq!(r.orchestration_state.len(), 23, "no prefix: all pending instances");
    let r = call(client.clone().query_instances(query(None, vec![], Some("other-"), 100))).await.expect("q");
    assert_eq!(r.orchestration_state.len(), 3);
    let r = call(client.clone().query_instances(query(None, vec![], Some("nothing-"), 100))).await.expect("q");
    assert!(r.orchestration_state.is_empty());
}

#[tokio::test]
async fn purge_only_deletes_finished_instances() {
    let (_d, sidecar, client) = setup(&[]).await;
    let worker = RawWorker::start(
        sidecar.endpoint(),
        |req: &OrchestratorRequest| {
            if req.instance_id.starts_with("done") {
                echo(req)
            } else {
                Vec::new()
            }
        },
        no_activities,
    );
    start(&client, "Orch", "run-1", None).await.expect("start");
    start(&client, "Orch", "done-1", Some("1")).await.expect("start");
    wait_status(&client, "run-1", T, |s| s == OrchestrationStatus::Running).await;
    assert_eq!(status_of(&wait_completion(&client, "done-1", T).await), OrchestrationStatus::Completed);

    let purge = |id: &str| PurgeInstancesRequest {
        request: Some(purge_instances_request::Request::InstanceId(id.to_string())),
        recursive: false,
        is_orchestration: true,
    };
    let r = call(client.clone().purge_instances(purge("run-1"))).await.expect("purge running");
    assert_eq!(r.deleted_instance_count, 0, "a running instance must not be purged");
    assert!(get_instance(&client, "run-1").await.exists);
    let r = call(client.clone().purge_instances(purge("done-1"))).await.expect("purge completed");
    assert_eq!(r.deleted_instance_count, 1);
    assert!(!get_instance(&client, "done-1").await.exists, "a purged instance is gone");
    let r = call(client.clone().purge_instances(purge("done-1"))).await.expect("purge again");
    assert_eq!(r.deleted_instance_count, 0);
    let r = call(client.clone().purge_instances(purge("never-existed"))).await.expect("purge unknown");
    assert_eq!(r.deleted_instance_count, 0);
    worker.stop().await;
}

// ----- shutdown --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_ends_streams_with_unavailable() {
    let (_d, mut sidecar, client) = setup(&[]).await;
    let mut stream = open_stream(&client, GetWorkItemsRequest::default()).await;
    // Make sure the stream is established server-side.
    call(client.clone().hello(())).await.expect("hello");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let term = tokio::task::spawn_blocking(move || {
        let ok = sidecar.terminate();
        (ok, sidecar)
    });
    let next = next_raw(&mut stream, Duration::from_secs(20)).await;
    let (exited_ok, sidecar) = term.await.expect("join");
    match next {
        Next::Error(s) => assert_eq!(s.code(), Code::Unavailable, "the stream must end with UNAVAILABLE, got {s:?}"),
        other => panic!("expected the stream to end with UNAVAILABLE, got {other:?}"),
    }
    assert!(exited_ok, "duro must exit with success on SIGTERM; log:\n{}", sidecar.log_tail(20));
}

// ----- entity work item shapes -------------------------------------------------------------

/// A stream whose `GetWorkItems` carries `x-duro-entity-work-items: v1` gets entity batches as
/// `entityRequest` (`EntityBatchRequest`); one without it gets `entityRequestV2`.
/// `CompleteEntityTask` takes the result of either (with or without `operationInfos`).
#[tokio::test]
async fn entity_work_items_come_in_the_shape_each_stream_asks_for() {
    let (_dir, _sidecar, client) = setup(&[]).await;
    let signal = |input: &str| SignalEntityRequest {
        instance_id: "@counter@k".into(),
        name: "add".into(),
        input: Some(input.into()),
        request_id: format!("r-{input}"),
        ..Default::default()
    };
    let answer = |token: String, state: &str, infos: Vec<OperationInfo>| EntityBatchResult {
        results: vec![OperationResult {
            result_type: Some(operation_result::ResultType::Success(OperationResultSuccess::default())),
        }],
        entity_state: Some(state.into()),
        completion_token: token,
        operation_infos: infos,
        ..Default::default()
    };

    let mut request = tonic::Request::new(GetWorkItemsRequest::default());
    request.metadata_mut().insert("x-duro-entity-work-items", "v1".parse().expect("ascii"));
    let mut v1 = tokio::time::timeout(CALL_TIMEOUT, client.clone().get_work_items(request))
        .await
        .expect("GetWorkItems hung")
        .expect("GetWorkItems failed")
        .into_inner();
    call(client.clone().signal_entity(signal("1"))).await.expect("signaled");
    let item = next_work(&mut v1, T).await.expect("an entity work item");
    let Some(work_item::Request::EntityRequest(batch)) = item.request else { panic!("not entityRequest: {item:?}") };
    assert_eq!((batch.instance_id.as_str(), batch.entity_state.as_deref()), ("@counter@k", None));
    let ops: Vec<_> = batch.operations.iter().map(|o| (o.operation.as_str(), o.input.as_deref())).collect();
    assert_eq!(ops, [("add", Some("1"))]);
    call(client.clone().complete_entity_task(answer(item.completion_token, "1", Vec::new()))).await.expect("v1 result");
    drop(v1);

    let mut v2 = open_stream(&client, GetWorkItemsRequest::default()).await;
    call(client.clone().signal_entity(signal("2"))).await.expect("signaled");
    let item = next_work(&mut v2, T).await.expect("an entity work item");
    let Some(work_item::Request::EntityRequestV2(req)) = item.request else { panic!("not entityRequestV2: {item:?}") };
    assert_eq!(req.entity_state.as_deref(), Some("1"), "the v1 result's state was stored");
    let infos = vec![OperationInfo { request_id: "r-2".into(), response_destination: None }];
    call(client.clone().complete_entity_task(answer(item.completion_token, "3", infos))).await.expect("v2 result");

    let got =
        call(client.clone().get_entity(GetEntityRequest { instance_id: "@counter@k".into(), include_state: true }))
            .await
            .expect("get entity");
    assert_eq!(got.entity.and_then(|e| e.serialized_state).as_deref(), Some("3"));
}
