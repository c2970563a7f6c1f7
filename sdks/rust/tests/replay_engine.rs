//! Unit tests of the replay engine over hand-built histories: no sidecar, no tokio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duro_sdk::proto::history_event::EventType;
use duro_sdk::proto::orchestrator_action::OrchestratorActionType;
use duro_sdk::proto::send_entity_message_action::EntityMessageType;
use duro_sdk::proto::{HistoryEvent, OrchestrationStatus, OrchestratorAction};
use duro_sdk::replay::{self, ReplayOutput};
use duro_sdk::testing::{entity_message_id, HistoryBuilder};
use duro_sdk::{
    DurableHttpRequest, DurableHttpResponse, EntityId, Failure, FailureDetails, OrchestrationContext, Registry,
    RetryPolicy, SubOrchestrationOptions, TaskError, TaskKind,
};

const ID: &str = "instance-1";

/// One line per action: `scheduleTask A #0`, `createTimer #1`, `complete COMPLETED "x"`, …
fn describe(out: &ReplayOutput) -> Vec<String> {
    out.actions.iter().map(describe_action).collect()
}

fn describe_action(a: &OrchestratorAction) -> String {
    match a.orchestrator_action_type.as_ref().expect("action type") {
        OrchestratorActionType::ScheduleTask(t) => format!("scheduleTask {} #{}", t.name, a.id),
        OrchestratorActionType::CreateTimer(_) => format!("createTimer #{}", a.id),
        OrchestratorActionType::CreateSubOrchestration(s) => {
            format!("createSubOrchestration {} {} #{}", s.name, s.instance_id, a.id)
        }
        OrchestratorActionType::SendEvent(s) => format!("sendEvent {} #{}", s.name, a.id),
        OrchestratorActionType::CompleteOrchestration(c) => {
            let status = OrchestrationStatus::try_from(c.orchestration_status).expect("status");
            match (&c.result, &c.failure_details) {
                (_, Some(f)) => format!("complete {} {}: {}", status.as_str_name(), f.error_type, f.error_message),
                (Some(r), None) => format!("complete {} {r}", status.as_str_name()),
                (None, None) => format!("complete {}", status.as_str_name()),
            }
        }
        OrchestratorActionType::SendEntityMessage(m) => match m.entity_message_type.as_ref().expect("message") {
            EntityMessageType::EntityOperationSignaled(e) => {
                format!("signal {} {} #{}", e.target_instance_id.as_deref().unwrap_or("?"), e.operation, a.id)
            }
            EntityMessageType::EntityOperationCalled(e) => {
                format!("call {} {} #{}", e.target_instance_id.as_deref().unwrap_or("?"), e.operation, a.id)
            }
            EntityMessageType::EntityLockRequested(e) => format!("lock {} #{}", e.lock_set.join(","), a.id),
            EntityMessageType::EntityUnlockSent(e) => {
                format!("unlock {} #{}", e.target_instance_id.as_deref().unwrap_or("?"), a.id)
            }
        },
        other => format!("{other:?}"),
    }
}

/// Drives an orchestration turn by turn like the sidecar, keeping every turn for replay checks.
struct Driver {
    registry: Registry,
    history: HistoryBuilder,
    turns: Vec<(Vec<HistoryEvent>, Vec<HistoryEvent>, ReplayOutput)>,
}

impl Driver {
    fn new(registry: Registry) -> Self {
        Driver { registry, history: HistoryBuilder::new(), turns: Vec::new() }
    }

    fn start(&mut self, name: &str, input: Option<&str>) -> ReplayOutput {
        self.turn(|h| {
            h.execution_started(name, input);
        })
    }

    /// Runs one turn whose new events are `orchestratorStarted` plus what `f` adds.
    fn turn(&mut self, f: impl FnOnce(&mut HistoryBuilder)) -> ReplayOutput {
        self.history.start_turn();
        f(&mut self.history);
        let new = self.history.take_new();
        let past = self.history.past().to_vec();
        let out = replay::execute(&self.registry, ID, &past, &new);
        self.history.commit_turn(&new, &out.actions);
        self.turns.push((past, new, out.clone()));
        out
    }

    /// Every turn, replayed from its recorded inputs, gives the same output.
    fn assert_replay_is_deterministic(&self) {
        for (i, (past, new, out)) in self.turns.iter().enumerate() {
            let again = replay::execute(&self.registry, ID, past, new);
            assert_eq!(&again, out, "turn {i} replayed differently");
        }
    }
}

fn registry_with(name: &str, f: impl Fn(&mut Registry, &str)) -> Registry {
    let mut r = Registry::new();
    f(&mut r, name);
    r
}

#[test]
fn sequence_of_activities_then_full_replay() {
    let registry = registry_with("Seq", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, start: u32| async move {
            let a: u32 = ctx.call_activity("Add1", start).await?;
            let b: u32 = ctx.call_activity("Add1", a).await?;
            let c: u32 = ctx.call_activity("Double", b).await?;
            Ok::<_, Failure>(c)
        });
    });
    let mut d = Driver::new(registry);
    assert_eq!(describe(&d.start("Seq", Some("1"))), ["scheduleTask Add1 #0"]);
    // The scheduled input is the JSON of the argument.
    let input = match &d.turns[0].2.actions[0].orchestrator_action_type {
        Some(OrchestratorActionType::ScheduleTask(t)) => t.input.clone(),
        _ => None,
    };
    assert_eq!(input.as_deref(), Some("1"));
    assert_eq!(
        describe(&d.turn(|h| {
            h.task_completed(0, Some("2"));
        })),
        ["scheduleTask Add1 #1"]
    );
    assert_eq!(
        describe(&d.turn(|h| {
            h.task_completed(1, Some("3"));
        })),
        ["scheduleTask Double #2"]
    );
    assert_eq!(
        describe(&d.turn(|h| {
            h.task_completed(2, Some("6"));
        })),
        ["complete ORCHESTRATION_STATUS_COMPLETED 6"]
    );
    d.assert_replay_is_deterministic();

    // The whole history at once (as new events) reproduces the completion.
    let mut all = d.history.past().to_vec();
    all.retain(|e| !matches!(e.event_type, Some(EventType::ExecutionCompleted(_))));
    let out = replay::execute(&d.registry, ID, &[], &all);
    assert_eq!(describe(&out), ["complete ORCHESTRATION_STATUS_COMPLETED 6"]);
}

#[test]
fn parallel_activities_with_when_all() {
    let registry = registry_with("Fan", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, count: u32| async move {
            let tasks: Vec<_> = (0..count).map(|i| ctx.call_activity::<u32>("Sq", i)).collect();
            let results = ctx.when_all(tasks).await?;
            Ok::<_, Failure>(results)
        });
    });
    let mut d = Driver::new(registry);
    assert_eq!(
        describe(&d.start("Fan", Some("3"))),
        ["scheduleTask Sq #0", "scheduleTask Sq #1", "scheduleTask Sq #2"]
    );
    // Results arrive out of order, in two turns.
    assert!(d
        .turn(|h| {
            h.task_completed(2, Some("4")).task_completed(0, Some("0"));
        })
        .actions
        .is_empty());
    assert_eq!(
        describe(&d.turn(|h| {
            h.task_completed(1, Some("1"));
        })),
        ["complete ORCHESTRATION_STATUS_COMPLETED [0,1,4]"]
    );
    d.assert_replay_is_deterministic();
}

#[test]
fn when_all_fails_fast_and_failures_can_be_matched() {
    let registry = registry_with("Fail", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let tasks = vec![ctx.call_activity::<u32>("A", 1), ctx.call_activity::<u32>("B", 2)];
            match ctx.when_all(tasks).await {
                Err(TaskError::Failed { name, details, .. }) => {
                    Ok::<_, Failure>(format!("{name} failed with {}", details.error_type))
                }
                other => Ok(format!("unexpected {other:?}")),
            }
        });
    });
    let mut d = Driver::new(registry);
    d.start("Fail", None);
    let out = d.turn(|h| {
        h.task_failed(1, FailureDetails::new("Boom", "b broke"));
    });
    assert_eq!(describe(&out), ["complete ORCHESTRATION_STATUS_COMPLETED \"B failed with Boom\""]);
}

#[test]
fn unhandled_task_failure_fails_the_orchestration_with_inner_failure() {
    let registry = registry_with("Q", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let v: u32 = ctx.call_activity("A", ()).await?;
            Ok::<_, Failure>(v)
        });
    });
    let mut d = Driver::new(registry);
    d.start("Q", None);
    let out = d.turn(|h| {
        h.task_failed(0, FailureDetails::new("Boom", "it broke"));
    });
    assert_eq!(out.status(), Some(OrchestrationStatus::Failed));
    let failure = out.completion().unwrap().failure_details.clone().unwrap();
    assert_eq!(failure.error_type, "TaskFailedError");
    assert!(failure.error_message.contains("activity 'A' failed"), "{}", failure.error_message);
    assert_eq!(failure.inner_failure.unwrap().error_type, "Boom");
}

#[test]
fn timers_fire_at_orchestration_time() {
    let registry = registry_with("T", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let before = ctx.current_utc_datetime();
            ctx.create_timer(Duration::from_secs(60)).await?;
            let after = ctx.current_utc_datetime();
            Ok::<_, Failure>((after - before).num_seconds())
        });
    });
    let mut d = Driver::new(registry);
    let out = d.start("T", None);
    assert_eq!(describe(&out), ["createTimer #0"]);
    let fire_at = match &out.actions[0].orchestrator_action_type {
        Some(OrchestratorActionType::CreateTimer(t)) => t.fire_at.unwrap(),
        _ => unreachable!(),
    };
    let start = d.history.now();
    assert_eq!(fire_at.seconds, start.timestamp() + 60);
    d.history.advance(Duration::from_secs(61));
    assert_eq!(
        describe(&d.turn(|h| {
            h.timer_fired(0);
        })),
        ["complete ORCHESTRATION_STATUS_COMPLETED 61"]
    );
    d.assert_replay_is_deterministic();
}

#[test]
fn events_are_buffered_in_order_and_names_are_case_insensitive() {
    let registry = registry_with("E", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            // Wait on a timer first so that the events arrive before anyone waits for them.
            ctx.create_timer(Duration::from_secs(1)).await?;
            let a: String = ctx.wait_for_external_event("approval").await?;
            let b: String = ctx.wait_for_external_event("APPROVAL").await?;
            let c: u32 = ctx.wait_for_external_event("Other").await?;
            Ok::<_, Failure>(format!("{a},{b},{c}"))
        });
    });
    let mut d = Driver::new(registry);
    d.start("E", None);
    assert!(d
        .turn(|h| {
            h.event_raised("Approval", Some("\"first\""))
                .event_raised("other", Some("7"))
                .event_raised("Approval", Some("\"second\""));
        })
        .actions
        .is_empty());
    let out = d.turn(|h| {
        h.timer_fired(0);
    });
    assert_eq!(describe(&out), ["complete ORCHESTRATION_STATUS_COMPLETED \"first,second,7\""]);
    d.assert_replay_is_deterministic();
}

#[test]
fn one_event_goes_to_one_waiter_in_wait_order() {
    let registry = registry_with("W", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let first = ctx.wait_for_external_event::<u32>("x");
            let second = ctx.wait_for_external_event::<u32>("X");
            let both = ctx.when_all(vec![second, first]).await?;
            Ok::<_, Failure>(both)
        });
    });
    let mut d = Driver::new(registry);
    assert!(d.start("W", None).actions.is_empty());
    assert!(d
        .turn(|h| {
            h.event_raised("x", Some("1"));
        })
        .actions
        .is_empty());
    let out = d.turn(|h| {
        h.event_raised("x", Some("2"));
    });
    assert_eq!(describe(&out), ["complete ORCHESTRATION_STATUS_COMPLETED [2,1]"]);
}

#[test]
fn when_any_with_a_timer_timeout() {
    let registry = registry_with("Race", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let work = ctx.call_activity::<String>("Slow", ()).map(Some);
            let timeout = ctx.create_timer(Duration::from_secs(30)).map(|()| None);
            let (winner, result) = ctx.when_any(vec![work, timeout]).await;
            Ok::<_, Failure>(format!("{winner}:{:?}", result?))
        });
    });
    // The timer wins.
    let mut d = Driver::new(registry.clone());
    assert_eq!(describe(&d.start("Race", None)), ["scheduleTask Slow #0", "createTimer #1"]);
    let out = d.turn(|h| {
        h.timer_fired(1);
    });
    assert_eq!(describe(&out), ["complete ORCHESTRATION_STATUS_COMPLETED \"1:None\""]);
    // A late activity result afterwards changes nothing on replay.
    d.assert_replay_is_deterministic();

    // The activity wins; the timer fires later and is ignored.
    let mut d = Driver::new(registry);
    d.start("Race", None);
    let out = d.turn(|h| {
        h.task_completed(0, Some("\"done\"")).timer_fired(1);
    });
    assert_eq!(describe(&out), ["complete ORCHESTRATION_STATUS_COMPLETED \"0:Some(\\\"done\\\")\""]);
}

#[test]
fn futures_select_also_works() {
    let registry = registry_with("Sel", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let work = ctx.call_activity::<u32>("Slow", ());
            let timer = ctx.create_timer(Duration::from_secs(5));
            Ok::<_, Failure>(match futures::future::select(work, timer).await {
                futures::future::Either::Left((r, _)) => format!("work {}", r?),
                futures::future::Either::Right(_) => "timeout".to_string(),
            })
        });
    });
    let mut d = Driver::new(registry);
    d.start("Sel", None);
    let out = d.turn(|h| {
        h.task_completed(0, Some("5"));
    });
    assert_eq!(describe(&out), ["complete ORCHESTRATION_STATUS_COMPLETED \"work 5\""]);
}

#[test]
fn wait_for_event_with_timeout() {
    let registry = registry_with("Wt", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let first = ctx.wait_for_external_event_with_timeout::<u32>("Ping", Duration::from_secs(10)).await;
            let first = match first {
                Ok(v) => format!("got {v}"),
                Err(TaskError::Timeout { name }) => format!("timeout {name}"),
                Err(e) => return Err(e.into()),
            };
            // After the timeout the waiter is gone: the late event is buffered for this wait.
            let second: u32 = ctx.wait_for_external_event("ping").await?;
            Ok::<_, Failure>(format!("{first}, then {second}"))
        });
    });
    let mut d = Driver::new(registry);
    assert_eq!(describe(&d.start("Wt", None)), ["createTimer #0"]);
    assert!(d
        .turn(|h| {
            h.timer_fired(0);
        })
        .actions
        .is_empty());
    let out = d.turn(|h| {
        h.event_raised("PING", Some("3"));
    });
    assert_eq!(describe(&out), ["complete ORCHESTRATION_STATUS_COMPLETED \"timeout Ping, then 3\""]);
    d.assert_replay_is_deterministic();
}

#[test]
fn sub_orchestration_completes_and_fails() {
    let registry = registry_with("Parent", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let a: u32 = ctx.call_sub_orchestration("Child", 1).await?;
            let opts = SubOrchestrationOptions::new().with_instance_id("explicit-child");
            let b = ctx.call_sub_orchestration_with_options::<u32>("Child", 2, opts).await;
            Ok::<_, Failure>(format!("{a} {:?}", b.map_err(|e| e.failure_details().cloned())))
        });
    });
    let mut d = Driver::new(registry);
    assert_eq!(describe(&d.start("Parent", None)), [format!("createSubOrchestration Child {ID}:0000 #0")]);
    assert_eq!(
        describe(&d.turn(|h| {
            h.sub_orchestration_completed(0, Some("10"));
        })),
        ["createSubOrchestration Child explicit-child #1"]
    );
    let out = d.turn(|h| {
        h.sub_orchestration_failed(1, FailureDetails::new("ChildError", "nope"));
    });
    assert_eq!(out.status(), Some(OrchestrationStatus::Completed));
    let result = out.completion().unwrap().result.clone().unwrap();
    assert!(result.contains("10 Err(Some(FailureDetails { error_type: \\\"ChildError\\\""), "{result}");
    d.assert_replay_is_deterministic();
}

#[test]
fn retry_waits_on_durable_timers_with_backoff() {
    let registry = registry_with("R", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let policy = RetryPolicy::new(3, Duration::from_secs(10)).with_backoff_coefficient(2.0);
            let v: u32 = ctx.call_activity_with_retry("Flaky", "x", &policy).await?;
            Ok::<_, Failure>(v)
        });
    });
    let mut d = Driver::new(registry.clone());
    let t0 = d.history.now().timestamp();
    assert_eq!(describe(&d.start("R", None)), ["scheduleTask Flaky #0"]);
    let out = d.turn(|h| {
        h.task_failed(0, FailureDetails::new("Transient", "try again"));
    });
    assert_eq!(describe(&out), ["createTimer #1"]);
    let fire_at = |out: &ReplayOutput| match &out.actions[0].orchestrator_action_type {
        Some(OrchestratorActionType::CreateTimer(t)) => t.fire_at.unwrap().seconds,
        _ => unreachable!(),
    };
    assert_eq!(fire_at(&out), t0 + 10);
    d.history.advance(Duration::from_secs(10));
    assert_eq!(
        describe(&d.turn(|h| {
            h.timer_fired(1);
        })),
        ["scheduleTask Flaky #2"]
    );
    let out = d.turn(|h| {
        h.task_failed(2, FailureDetails::new("Transient", "again"));
    });
    assert_eq!(describe(&out), ["createTimer #3"]);
    assert_eq!(fire_at(&out), t0 + 10 + 20, "second delay doubles");
    d.history.advance(Duration::from_secs(20));
    assert_eq!(
        describe(&d.turn(|h| {
            h.timer_fired(3);
        })),
        ["scheduleTask Flaky #4"]
    );
    let out = d.turn(|h| {
        h.task_failed(4, FailureDetails::new("Transient", "still"));
    });
    assert_eq!(out.status(), Some(OrchestrationStatus::Failed), "3 attempts used up");
    d.assert_replay_is_deterministic();

    // Success on a retry completes; a non-retriable failure is not retried.
    let mut d = Driver::new(registry.clone());
    d.start("R", None);
    d.turn(|h| {
        h.task_failed(0, FailureDetails::new("Transient", "x"));
    });
    d.turn(|h| {
        h.timer_fired(1);
    });
    assert_eq!(
        describe(&d.turn(|h| {
            h.task_completed(2, Some("9"));
        })),
        ["complete ORCHESTRATION_STATUS_COMPLETED 9"]
    );
    let mut d = Driver::new(registry);
    d.start("R", None);
    let out = d.turn(|h| {
        h.task_failed(0, FailureDetails { is_non_retriable: true, ..FailureDetails::new("Fatal", "x") });
    });
    assert_eq!(out.status(), Some(OrchestrationStatus::Failed));
}

#[test]
fn sub_orchestration_retry_reuses_the_instance_id() {
    let registry = registry_with("P", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let opts = SubOrchestrationOptions::new().with_retry(RetryPolicy::new(2, Duration::from_secs(1)));
            let v: u32 = ctx.call_sub_orchestration_with_options("C", (), opts).await?;
            Ok::<_, Failure>(v)
        });
    });
    let mut d = Driver::new(registry);
    assert_eq!(describe(&d.start("P", None)), [format!("createSubOrchestration C {ID}:0000 #0")]);
    assert_eq!(
        describe(&d.turn(|h| {
            h.sub_orchestration_failed(0, FailureDetails::new("E", "x"));
        })),
        ["createTimer #1"]
    );
    assert_eq!(
        describe(&d.turn(|h| {
            h.timer_fired(1);
        })),
        [format!("createSubOrchestration C {ID}:0000 #2")]
    );
}

#[test]
fn continue_as_new_carries_over_unprocessed_events() {
    let registry = registry_with("Can", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, n: u32| async move {
            let _: String = ctx.wait_for_external_event("go").await?;
            ctx.continue_as_new(n + 1, true);
            Ok::<_, Failure>(())
        });
    });
    let mut d = Driver::new(registry.clone());
    d.start("Can", Some("1"));
    let out = d.turn(|h| {
        h.event_raised("go", Some("\"a\"")).event_raised("go", Some("\"b\"")).event_raised("other", None);
    });
    let c = out.completion().expect("complete");
    assert_eq!(out.status(), Some(OrchestrationStatus::ContinuedAsNew));
    assert_eq!(c.result.as_deref(), Some("2"));
    let carried: Vec<_> = c
        .carryover_events
        .iter()
        .map(|e| match &e.event_type {
            Some(EventType::EventRaised(r)) => format!("{}={:?}", r.name, r.input),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(carried, ["go=Some(\"\\\"b\\\"\")", "other=None"]);

    // Without preserving, nothing is carried over.
    let registry = registry_with("Can2", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, n: u32| async move {
            ctx.continue_as_new(n + 1, false);
            Ok::<_, Failure>(())
        });
    });
    let mut d = Driver::new(registry);
    let out = d.turn(|h| {
        h.execution_started("Can2", Some("5")).event_raised("x", None);
    });
    let c = out.completion().expect("complete");
    assert_eq!(c.result.as_deref(), Some("6"));
    assert!(c.carryover_events.is_empty());
}

#[test]
fn custom_status_and_deterministic_context_values() {
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let registry = registry_with("S", move |r, n| {
        let calls = calls2.clone();
        r.add_orchestrator(n, move |ctx: OrchestrationContext, _: ()| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let id1 = ctx.new_uuid();
                ctx.set_custom_status(serde_json::json!({"step": 1, "replaying": ctx.is_replaying()}));
                let _: () = ctx.call_activity("A", ()).await?;
                let id2 = ctx.new_uuid();
                ctx.set_custom_status("step 2");
                Ok::<_, Failure>(vec![id1.to_string(), id2.to_string()])
            }
        });
    });
    let mut d = Driver::new(registry);
    let out = d.start("S", None);
    assert_eq!(out.custom_status.as_deref(), Some(r#"{"replaying":false,"step":1}"#));
    d.history.advance(Duration::from_secs(1));
    let out = d.turn(|h| {
        h.task_completed(0, None);
    });
    assert_eq!(out.custom_status.as_deref(), Some("\"step 2\""));
    let ids: Vec<String> = serde_json::from_str(out.completion().unwrap().result.as_deref().unwrap()).unwrap();
    assert_ne!(ids[0], ids[1]);
    d.assert_replay_is_deterministic();
    // Replays produce the same UUIDs.
    let again = replay::execute(&d.registry, ID, &d.turns[1].0, &d.turns[1].1);
    assert_eq!(again.completion().unwrap().result, out.completion().unwrap().result);
    assert!(calls.load(Ordering::SeqCst) >= 2);
}

#[test]
fn new_uuid_matches_the_dotnet_sdk() {
    use chrono::TimeZone;
    let registry = registry_with("U", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            Ok::<_, Failure>((0..3).map(|_| ctx.new_uuid().to_string()).collect::<Vec<_>>())
        });
    });
    // Golden values from durabletask-dotnet's NewGuid tests ("fixed-instance-id",
    // 2023-05-06T07:08:09.1234567Z).
    let t = chrono::Utc.timestamp_opt(1_683_356_889, 123_456_700).single().unwrap();
    let started = HistoryEvent {
        event_id: -1,
        timestamp: Some(duro_sdk::proto::prost_types::Timestamp { seconds: t.timestamp(), nanos: 123_456_700 }),
        event_type: Some(EventType::OrchestratorStarted(Default::default())),
    };
    let mut h = HistoryBuilder::new().with_instance_id("fixed-instance-id");
    let mut new = vec![started];
    new.extend(h.execution_started("U", None).take_new());
    let out = replay::execute(&registry, "fixed-instance-id", &[], &new);
    let ids: Vec<String> = serde_json::from_str(out.completion().unwrap().result.as_deref().unwrap()).unwrap();
    assert_eq!(
        ids,
        [
            "0f353f85-75d2-56f8-89b5-a7773ace7605",
            "b0fd1465-f3d8-5a7e-98b1-f34137b15060",
            "12bec829-d5e1-563c-ac70-9806cad148c1"
        ]
    );
}

#[test]
fn is_replaying_is_true_only_for_past_events() {
    thread_local! {
        static LOG: std::cell::RefCell<Vec<bool>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let registry = registry_with("Rp", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            LOG.with(|l| l.borrow_mut().push(ctx.is_replaying()));
            let _: () = ctx.call_activity("A", ()).await?;
            LOG.with(|l| l.borrow_mut().push(ctx.is_replaying()));
            Ok::<_, Failure>(())
        });
    });
    let mut d = Driver::new(registry);
    d.start("Rp", None);
    LOG.with(|l| assert_eq!(*l.borrow(), [false]));
    LOG.with(|l| l.borrow_mut().clear());
    d.turn(|h| {
        h.task_completed(0, None);
    });
    LOG.with(|l| assert_eq!(*l.borrow(), [true, false]));
}

#[test]
fn terminate_completes_terminated_with_its_output() {
    let registry = registry_with("Term", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let _: () = ctx.wait_for_external_event("never").await?;
            Ok::<_, Failure>(())
        });
    });
    let mut d = Driver::new(registry);
    d.start("Term", None);
    let out = d.turn(|h| {
        h.execution_terminated(Some("\"stopped by admin\""));
    });
    assert_eq!(describe(&out), ["complete ORCHESTRATION_STATUS_TERMINATED \"stopped by admin\""]);
}

#[test]
fn suspend_buffers_events_until_resume() {
    let registry = registry_with("Sus", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let v: u32 = ctx.wait_for_external_event("go").await?;
            let w: u32 = ctx.call_activity("A", v).await?;
            Ok::<_, Failure>(w)
        });
    });
    let mut d = Driver::new(registry);
    d.start("Sus", None);
    // While suspended, the event is held: nothing is scheduled.
    let out = d.turn(|h| {
        h.execution_suspended().event_raised("go", Some("5"));
    });
    assert!(out.actions.is_empty(), "{:?}", describe(&out));
    // On resume the held event is processed.
    assert_eq!(
        describe(&d.turn(|h| {
            h.execution_resumed();
        })),
        ["scheduleTask A #0"]
    );
    // Terminate bypasses suspension.
    let out = d.turn(|h| {
        h.execution_suspended().task_completed(0, Some("1")).execution_terminated(None);
    });
    assert_eq!(describe(&out), ["complete ORCHESTRATION_STATUS_TERMINATED"]);
    d.assert_replay_is_deterministic();
}

fn scheduling_registry() -> Registry {
    registry_with("N", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let v: u32 = ctx.call_activity("B", ()).await?;
            Ok::<_, Failure>(v)
        });
    })
}

fn failure_message(out: &ReplayOutput) -> (String, String) {
    assert_eq!(out.actions.len(), 1, "only the failing completion: {:?}", describe(out));
    let f = out.completion().unwrap().failure_details.clone().unwrap();
    (f.error_type, f.error_message)
}

#[test]
fn non_determinism_different_name() {
    let mut h = HistoryBuilder::new();
    let past = h.start_turn().execution_started("N", None).task_scheduled(0, "A").orchestrator_completed().take_new();
    let new = h.start_turn().task_completed(0, Some("1")).take_new();
    let out = replay::execute(&scheduling_registry(), ID, &past, &new);
    let (kind, msg) = failure_message(&out);
    assert_eq!(kind, "NonDeterminismError");
    assert!(
        msg.contains(
            r#"history has taskScheduled "A" (id 0) but the orchestrator code produced scheduleTask "B" (id 0)"#
        ),
        "{msg}"
    );
}

#[test]
fn non_determinism_different_kind() {
    let mut h = HistoryBuilder::new();
    let fire = h.now();
    let past = h.start_turn().execution_started("N", None).timer_created(0, fire).orchestrator_completed().take_new();
    let new = h.start_turn().timer_fired(0).take_new();
    let out = replay::execute(&scheduling_registry(), ID, &past, &new);
    let (kind, msg) = failure_message(&out);
    assert_eq!(kind, "NonDeterminismError");
    assert!(
        msg.contains(r#"history has timerCreated (id 0) but the orchestrator code produced scheduleTask "B" (id 0)"#),
        "{msg}"
    );
}

#[test]
fn non_determinism_missing_action() {
    let mut h = HistoryBuilder::new();
    let past = h
        .start_turn()
        .execution_started("N", None)
        .task_scheduled(0, "B")
        .task_scheduled(1, "Extra")
        .orchestrator_completed()
        .take_new();
    let new = h.start_turn().task_completed(0, Some("1")).take_new();
    let out = replay::execute(&scheduling_registry(), ID, &past, &new);
    let (kind, msg) = failure_message(&out);
    assert_eq!(kind, "NonDeterminismError");
    assert!(
        msg.contains(
            r#"history has taskScheduled "Extra" (id 1) but the orchestrator code produced no action with id 1"#
        ),
        "{msg}"
    );
}

#[test]
fn unregistered_orchestrator_and_panics_fail_cleanly() {
    let mut h = HistoryBuilder::new();
    let new = h.start_turn().execution_started("Nobody", None).take_new();
    let out = replay::execute(&Registry::new(), ID, &[], &new);
    assert_eq!(failure_message(&out).0, "OrchestratorNotRegisteredError");

    let registry = registry_with("Panics", |r, n| {
        r.add_orchestrator(n, |_ctx: OrchestrationContext, _: ()| async move {
            if true {
                panic!("kaboom");
            }
            Ok::<_, Failure>(())
        });
    });
    let mut h = HistoryBuilder::new();
    let new = h.start_turn().execution_started("Panics", None).take_new();
    let (kind, msg) = failure_message(&replay::execute(&registry, ID, &[], &new));
    assert_eq!(kind, "OrchestratorPanic");
    assert!(msg.contains("kaboom"));

    // Bad input fails with a clear error.
    let registry = registry_with("Typed", |r, n| {
        r.add_orchestrator(n, |_ctx: OrchestrationContext, n: u32| async move { Ok::<_, Failure>(n) });
    });
    let mut h = HistoryBuilder::new();
    let new = h.start_turn().execution_started("Typed", Some("\"not a number\"")).take_new();
    let out = replay::execute(&registry, ID, &[], &new);
    let f = out.completion().unwrap().failure_details.clone().unwrap();
    assert_eq!(f.error_type, "InputDeserializationError");
}

#[test]
fn unknown_events_and_results_are_ignored() {
    let registry = scheduling_registry();
    let mut h = HistoryBuilder::new();
    let new = h
        .start_turn()
        .execution_started("N", None)
        .event(-1, EventType::GenericEvent(Default::default()))
        .event(-1, EventType::EntityLockGranted(Default::default()))
        .task_completed(99, Some("1"))
        .orchestrator_completed()
        .take_new();
    let out = replay::execute(&registry, ID, &[], &new);
    assert_eq!(describe(&out), ["scheduleTask B #0"]);
}

#[test]
fn send_event_is_recorded_and_matched() {
    let registry = registry_with("Send", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            ctx.send_event("other-instance", "Hello", "hi");
            ctx.create_timer(Duration::from_secs(1)).await?;
            Ok::<_, Failure>(())
        });
    });
    let mut d = Driver::new(registry);
    assert_eq!(describe(&d.start("Send", None)), ["sendEvent Hello #0", "createTimer #1"]);
    assert_eq!(
        describe(&d.turn(|h| {
            h.timer_fired(1);
        })),
        ["complete ORCHESTRATION_STATUS_COMPLETED null"]
    );
    d.assert_replay_is_deterministic();
}

#[test]
fn call_http_schedules_the_builtin_activity_and_polls_202() {
    let registry = registry_with("Http", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let req =
                DurableHttpRequest::post("https://example.org/jobs", "{}").with_header("Accept", "application/json");
            let resp: DurableHttpResponse = ctx.call_http(req).await?;
            Ok::<_, Failure>(resp.status_code)
        });
    });
    let mut d = Driver::new(registry);
    let out = d.start("Http", None);
    assert_eq!(describe(&out), ["scheduleTask BuiltIn::HttpActivity #0"]);
    let input = match &out.actions[0].orchestrator_action_type {
        Some(OrchestratorActionType::ScheduleTask(t)) => t.input.clone().unwrap(),
        _ => unreachable!(),
    };
    let json: serde_json::Value = serde_json::from_str(&input).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"method": "POST", "uri": "https://example.org/jobs", "headers": {"Accept": "application/json"},
            "content": "{}", "tokenSource": null, "asynchronousPatternEnabled": true, "timeout": null})
    );
    // 202 with Location: wait Retry-After seconds on a durable timer, then GET the status URL.
    let accepted =
        r#"{"statusCode":202,"headers":{"Location":"https://example.org/status/1","Retry-After":"7"},"content":""}"#;
    assert_eq!(
        describe(&d.turn(|h| {
            h.task_completed(0, Some(accepted));
        })),
        ["createTimer #1"]
    );
    let out = d.turn(|h| {
        h.timer_fired(1);
    });
    assert_eq!(describe(&out), ["scheduleTask BuiltIn::HttpActivity #2"]);
    let poll = match &out.actions[0].orchestrator_action_type {
        Some(OrchestratorActionType::ScheduleTask(t)) => t.input.clone().unwrap(),
        _ => unreachable!(),
    };
    let poll: DurableHttpRequest = serde_json::from_str(&poll).unwrap();
    assert_eq!((poll.method.as_str(), poll.uri.as_str()), ("GET", "https://example.org/status/1"));
    let done = r#"{"statusCode":200,"headers":{},"content":"ok"}"#;
    assert_eq!(
        describe(&d.turn(|h| {
            h.task_completed(2, Some(done));
        })),
        ["complete ORCHESTRATION_STATUS_COMPLETED 200"]
    );
    d.assert_replay_is_deterministic();
}

#[test]
fn rewound_history_reschedules_the_failed_work() {
    // Duro rewinds by removing the taskFailed and its taskScheduled; replay schedules it anew.
    let registry = registry_with("Rw", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let a: u32 = ctx.call_activity("A", ()).await?;
            let b: u32 = ctx.call_activity("B", ()).await?;
            Ok::<_, Failure>(a + b)
        });
    });
    let mut h = HistoryBuilder::new();
    let past = h
        .start_turn()
        .execution_started("Rw", None)
        .task_scheduled(0, "A")
        .orchestrator_completed()
        .start_turn()
        .task_completed(0, Some("1"))
        .orchestrator_completed()
        .take_new();
    let new = h.start_turn().take_new();
    let out = replay::execute(&registry, ID, &past, &new);
    assert_eq!(describe(&out), ["scheduleTask B #1"]);
}

// ---------------------------------------------------------------------------------------------
// Entities
// ---------------------------------------------------------------------------------------------

/// The id (request or critical section) of the output's action number `i`.
fn message_id(out: &ReplayOutput, i: usize) -> String {
    entity_message_id(&out.actions[i]).expect("an entity message").to_string()
}

fn entity_event(out: &ReplayOutput, i: usize) -> EntityMessageType {
    match &out.actions[i].orchestrator_action_type {
        Some(OrchestratorActionType::SendEntityMessage(m)) => m.entity_message_type.clone().expect("message"),
        other => panic!("not an entity message: {other:?}"),
    }
}

#[test]
fn signal_entity_is_recorded_and_matched() {
    let registry = registry_with("Signal", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let counter = EntityId::new("Counter", "c1");
            ctx.signal_entity(&counter, "add", 5)?;
            let later = ctx.current_utc_datetime() + chrono::Duration::minutes(5);
            ctx.signal_entity_at(&counter, "add", 1, later)?;
            ctx.create_timer(Duration::from_secs(1)).await?;
            ctx.signal_entity(&counter, "reset", ())?;
            Ok::<_, Failure>(())
        });
    });
    let mut d = Driver::new(registry);
    let first = d.start("Signal", None);
    assert_eq!(describe(&first), ["signal @counter@c1 add #0", "signal @counter@c1 add #1", "createTimer #2"]);
    let EntityMessageType::EntityOperationSignaled(s0) = entity_event(&first, 0) else { panic!("a signal") };
    assert_eq!(s0.input.as_deref(), Some("5"));
    assert!(s0.scheduled_time.is_none());
    assert!(!s0.request_id.is_empty());
    let EntityMessageType::EntityOperationSignaled(s1) = entity_event(&first, 1) else { panic!("a signal") };
    let at = d.history.now() + chrono::Duration::minutes(5);
    assert_eq!(s1.scheduled_time.map(|t| t.seconds), Some(at.timestamp()));
    assert_ne!(s0.request_id, s1.request_id, "request ids are unique");
    assert_eq!(
        describe(&d.turn(|h| {
            h.timer_fired(2);
        })),
        ["signal @counter@c1 reset #3", "complete ORCHESTRATION_STATUS_COMPLETED null"]
    );
    d.assert_replay_is_deterministic();
}

#[test]
fn call_entity_delivers_results_and_failures_by_request_id() {
    let registry = registry_with("Calls", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let counter = EntityId::new("Counter", "c1");
            // Two calls in flight at once; results may come in any order.
            let a = ctx.call_entity::<i64>(&counter, "add", 2);
            let b = ctx.call_entity::<i64>(&EntityId::new("Counter", "c2"), "get", ());
            let (a, b) = (a.await?, b.await?);
            let failed = match ctx.call_entity::<i64>(&counter, "fail", ()).await {
                Err(TaskError::Failed { kind: TaskKind::Entity, name, details }) => {
                    format!("{name}: {}", details.error_message)
                }
                other => format!("unexpected {other:?}"),
            };
            Ok::<_, Failure>((a, b, failed))
        });
    });
    let mut d = Driver::new(registry);
    let first = d.start("Calls", None);
    assert_eq!(describe(&first), ["call @counter@c1 add #0", "call @counter@c2 get #1"]);
    let EntityMessageType::EntityOperationCalled(c) = entity_event(&first, 0) else { panic!("a call") };
    assert_eq!(c.parent_instance_id.as_deref(), Some(ID));
    assert_eq!(c.input.as_deref(), Some("2"));
    let (r0, r1) = (message_id(&first, 0), message_id(&first, 1));
    // The second result arrives first; nothing happens until both are in.
    assert!(describe(&d.turn(|h| {
        h.entity_operation_completed(&r1, Some("40"));
    }))
    .is_empty());
    let third = d.turn(|h| {
        h.entity_operation_completed(&r0, Some("2"))
            // A result for a request nobody made is ignored.
            .entity_operation_completed("not-a-request", Some("0"));
    });
    assert_eq!(describe(&third), ["call @counter@c1 fail #2"]);
    let r2 = message_id(&third, 0);
    assert_eq!(
        describe(&d.turn(|h| {
            h.entity_operation_failed(&r2, FailureDetails::new("ValueError", "counter refused"));
        })),
        [r#"complete ORCHESTRATION_STATUS_COMPLETED [2,40,"fail on @counter@c1: counter refused"]"#]
    );
    d.assert_replay_is_deterministic();
}

#[test]
fn an_unhandled_entity_failure_fails_the_orchestration() {
    let registry = registry_with("Unhandled", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            Ok::<_, Failure>(ctx.call_entity::<i64>(&EntityId::new("Account", "a"), "withdraw", 5).await?)
        });
    });
    let mut d = Driver::new(registry);
    let first = d.start("Unhandled", None);
    let r0 = message_id(&first, 0);
    let out = d.turn(|h| {
        h.entity_operation_failed(&r0, FailureDetails::new("InsufficientFunds", "balance 0"));
    });
    let f = out.completion().unwrap().failure_details.clone().unwrap();
    assert_eq!(f.error_type, "TaskFailedError");
    assert!(f.error_message.contains("entity operation 'withdraw on @account@a' failed"), "{}", f.error_message);
    assert_eq!(f.inner_failure.unwrap().error_type, "InsufficientFunds");
}

fn transfer_registry() -> Registry {
    registry_with("Transfer", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, amount: i64| async move {
            let (from, to) = (EntityId::new("Account", "b"), EntityId::new("Account", "a"));
            assert!(!ctx.is_in_critical_section());
            // Locks are requested in sorted order, each entity once.
            let section = ctx.lock_entities([&from, &to, &from]).await?;
            assert!(ctx.is_in_critical_section());
            assert_eq!(section.entities(), &[to.clone(), from.clone()]);
            let balance: i64 = ctx.call_entity(&from, "balance", ()).await?;
            if balance < amount {
                return Ok::<_, Failure>(false); // dropping the section unlocks
            }
            let withdraw = ctx.call_entity::<i64>(&from, "withdraw", amount);
            let deposit = ctx.call_entity::<i64>(&to, "deposit", amount);
            ctx.when_all([withdraw, deposit]).await?;
            section.release();
            assert!(!ctx.is_in_critical_section());
            ctx.signal_entity(&to, "audit", ())?;
            Ok(true)
        });
    })
}

#[test]
fn lock_entities_opens_a_critical_section_and_release_unlocks_every_entity() {
    let mut d = Driver::new(transfer_registry());
    let first = d.start("Transfer", Some("30"));
    assert_eq!(describe(&first), ["lock @account@a,@account@b #0"]);
    let EntityMessageType::EntityLockRequested(l) = entity_event(&first, 0) else { panic!("a lock request") };
    assert_eq!((l.position, l.parent_instance_id.as_deref()), (0, Some(ID)));
    let section = message_id(&first, 0);
    // Waiting for the grant: nothing else happens, and the end of the turn sends no unlock.
    assert!(describe(&d.turn(|h| {
        h.event_raised("noise", None);
    }))
    .is_empty());
    let granted = d.turn(|h| {
        h.entity_lock_granted(&section);
    });
    assert_eq!(describe(&granted), ["call @account@b balance #1"]);
    let balance = message_id(&granted, 0);
    let moves = d.turn(|h| {
        h.entity_operation_completed(&balance, Some("100"));
    });
    assert_eq!(describe(&moves), ["call @account@b withdraw #2", "call @account@a deposit #3"]);
    let (w, dep) = (message_id(&moves, 0), message_id(&moves, 1));
    assert!(describe(&d.turn(|h| {
        h.entity_operation_completed(&dep, Some("30"));
    }))
    .is_empty());
    let done = d.turn(|h| {
        h.entity_operation_completed(&w, Some("70"));
    });
    assert_eq!(
        describe(&done),
        [
            "unlock @account@a #4",
            "unlock @account@b #5",
            "signal @account@a audit #6",
            "complete ORCHESTRATION_STATUS_COMPLETED true"
        ]
    );
    let EntityMessageType::EntityUnlockSent(u) = entity_event(&done, 0) else { panic!("an unlock") };
    assert_eq!((u.critical_section_id.as_str(), u.parent_instance_id.as_deref()), (section.as_str(), Some(ID)));
    d.assert_replay_is_deterministic();
}

#[test]
fn leaving_a_critical_section_early_unlocks_before_completing() {
    let mut d = Driver::new(transfer_registry());
    let section = message_id(&d.start("Transfer", Some("30")), 0);
    let balance = message_id(
        &d.turn(|h| {
            h.entity_lock_granted(&section);
        }),
        0,
    );
    assert_eq!(
        describe(&d.turn(|h| {
            h.entity_operation_completed(&balance, Some("10"));
        })),
        ["unlock @account@a #2", "unlock @account@b #3", "complete ORCHESTRATION_STATUS_COMPLETED false"]
    );
    d.assert_replay_is_deterministic();
}

#[test]
fn critical_section_rules_are_enforced() {
    let registry = registry_with("Rules", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            let (a, b) = (EntityId::new("Account", "a"), EntityId::new("Account", "b"));
            let mut errors = Vec::new();
            let mut note = |r: Result<(), TaskError>| {
                errors.push(match r {
                    Err(TaskError::InvalidEntityUse { message }) => message,
                    other => format!("unexpected {other:?}"),
                })
            };
            note(ctx.lock_entities(&Vec::new()).await.map(drop));
            note(ctx.lock_entities([&EntityId::new("", "x")]).await.map(drop));
            note(ctx.call_entity::<()>(&EntityId::new("a@b", "x"), "op", ()).await);
            note(ctx.signal_entity(&EntityId::new("", "x"), "op", ()));
            let section = ctx.lock_entities([&a]).await?;
            note(ctx.call_entity::<()>(&b, "balance", ()).await);
            note(ctx.lock_entities([&b]).await.map(drop));
            drop(section);
            // After the section, anything goes again.
            ctx.call_entity::<()>(&b, "balance", ()).await?;
            Ok::<_, Failure>(errors)
        });
    });
    let mut d = Driver::new(registry);
    let section = message_id(&d.start("Rules", None), 0);
    let out = d.turn(|h| {
        h.entity_lock_granted(&section);
    });
    assert_eq!(describe(&out), ["unlock @account@a #1", "call @account@b balance #2"]);
    let call = message_id(&out, 1);
    let out = d.turn(|h| {
        h.entity_operation_completed(&call, None);
    });
    let result: Vec<String> =
        serde_json::from_str(out.completion().unwrap().result.as_deref().unwrap()).expect("errors");
    assert_eq!(result.len(), 6, "{result:?}");
    assert!(result[0].contains("at least one entity"), "{result:?}");
    assert!(result[1].contains("name is empty"), "{result:?}");
    assert!(result[2].contains("contains '@'"), "{result:?}");
    assert!(result[3].contains("name is empty"), "{result:?}");
    assert!(result[4].contains("@account@b is not locked"), "{result:?}");
    assert!(result[5].contains("cannot be nested"), "{result:?}");
    d.assert_replay_is_deterministic();
}

#[test]
fn non_determinism_in_entity_messages_is_detected() {
    let registry = registry_with("E", |r, n| {
        r.add_orchestrator(n, |ctx: OrchestrationContext, _: ()| async move {
            Ok::<_, Failure>(ctx.call_entity::<i64>(&EntityId::new("Counter", "c"), "add", 1).await?)
        });
    });
    let mut d = Driver::new(registry);
    let first = d.start("E", None);
    let request = message_id(&first, 0);
    // The recorded call was to another operation.
    let mut h = HistoryBuilder::new();
    let recorded = duro_sdk::proto::EntityOperationCalledEvent {
        request_id: request.clone(),
        operation: "get".into(),
        target_instance_id: Some("@counter@c".into()),
        ..Default::default()
    };
    let past = h
        .start_turn()
        .execution_started("E", None)
        .event(0, EventType::EntityOperationCalled(recorded))
        .orchestrator_completed()
        .take_new();
    let new = h.start_turn().entity_operation_completed(&request, Some("1")).take_new();
    let out = replay::execute(&d.registry, ID, &past, &new);
    let (kind, msg) = failure_message(&out);
    assert_eq!(kind, "NonDeterminismError");
    assert!(
        msg.contains(r#"history has entityOperationCalled "get" on @counter@c (id 0) but the orchestrator code produced call "add" on @counter@c (id 0)"#),
        "{msg}"
    );
}
