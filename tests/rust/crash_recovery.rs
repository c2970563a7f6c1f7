//! Crash recovery: `kill -9` the real sidecar mid-run, restart it on the same database and
//! port, and check that nothing acknowledged is lost and every orchestration finishes with
//! exactly the right result. The raw worker keeps running across the crash and reconnects.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duro_proto::history_event::EventType;
use duro_proto::{OrchestrationStatus, OrchestratorAction, OrchestratorRequest, RaiseEventRequest};
use duro_tests::*;
use futures::StreamExt;

const N_INSTANCES: usize = 200;
const N_ACTIVITIES: usize = 5;

fn instance_index(id: &str) -> usize {
    id.rsplit('-').next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad id {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_mid_run_then_restart_completes_all_200_with_exact_outputs() {
    let dir = test_dir();
    let mut sidecar = Sidecar::builder().dir(dir.path()).start();
    let client = sidecar.client().await;

    // Activities take (i % 10) * 30 ms for instance i, so completions spread over ~1.5 s
    // and the crash lands while some instances are done and others are mid-flight.
    let worker = RawWorker::start(sidecar.endpoint(), sum_orchestrator(N_ACTIVITIES), |req| {
        let id = &req.orchestration_instance.as_ref().expect("orchestrationInstance").instance_id;
        std::thread::sleep(Duration::from_millis((instance_index(id) % 10) as u64 * 30));
        add_activity(req)
    });

    let ids: Vec<String> = (0..N_INSTANCES).map(|i| format!("crash-{i:03}")).collect();
    futures::stream::iter(ids.iter().enumerate())
        .for_each_concurrent(16, |(i, id)| {
            let client = client.clone();
            async move {
                let got = start(&client, "Sum", id, Some(&i.to_string())).await.expect("StartInstance");
                assert_eq!(&got, id);
            }
        })
        .await;

    // Wait until some, not all, have completed.
    let completed_before = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let done = query_all(&client, "crash-", &[OrchestrationStatus::Completed]).await;
            if done.len() >= 20 {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("20 instances did not complete within 60 s");
    sidecar.kill9();
    assert!(
        completed_before.len() < N_INSTANCES,
        "all {} instances finished before the crash; the test did not exercise recovery",
        completed_before.len()
    );
    eprintln!("killed the sidecar with {} of {N_INSTANCES} instances completed", completed_before.len());
    let outputs_before: HashMap<String, Option<String>> =
        completed_before.iter().map(|s| (s.instance_id.clone(), s.output.clone())).collect();

    sidecar.restart();

    // Every instance finishes, COMPLETED, with the exact sum; none lost, none failed.
    let waited: Vec<(String, Result<duro_proto::OrchestrationState, String>)> =
        futures::stream::iter(ids.iter().cloned())
            .map(|id| {
                let client = client.clone();
                async move {
                    let s = try_wait_completion(&client, &id, Duration::from_secs(90)).await;
                    (id, s)
                }
            })
            .buffer_unordered(N_INSTANCES)
            .collect()
            .await;
    let mut unfinished = Vec::new();
    let mut results = Vec::new();
    for (id, r) in waited {
        match r {
            Ok(s) => results.push((id, s)),
            Err(e) => {
                let st = get_instance(&client, &id).await.orchestration_state.map(|s| status_of(&s));
                let h = kinds(&history(&client, &id).await);
                unfinished.push(format!("{id}: {e}; status {st:?}; history {h:?}"));
            }
        }
    }
    assert!(
        unfinished.is_empty(),
        "{} instances did not finish after the restart (worker stats: {:?}):\n{}\nlog tail:\n{}",
        unfinished.len(),
        worker.stats,
        unfinished.join("\n"),
        sidecar.log_tail(60)
    );
    assert_eq!(results.len(), N_INSTANCES);
    let mut bad = Vec::new();
    for (id, state) in &results {
        let i = instance_index(id) as i64;
        let expected = expected_sum(N_ACTIVITIES, i).to_string();
        if status_of(state) != OrchestrationStatus::Completed || state.output.as_deref() != Some(expected.as_str()) {
            bad.push(format!(
                "{id}: status {:?} output {:?} failure {:?} (expected {expected})",
                status_of(state),
                state.output,
                state.failure_details
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} instances wrong after recovery:\n{}\nlog tail:\n{}",
        bad.len(),
        bad.join("\n"),
        sidecar.log_tail(40)
    );

    // Instances completed before the crash kept their outputs.
    for (id, out) in &outputs_before {
        let s = results.iter().find(|(i, _)| i == id).map(|(_, s)| s).expect("present");
        assert_eq!(&s.output, out, "{id} changed its output across the crash");
    }

    // History is exactly-once: 5 distinct taskScheduled ids 0..4, one taskCompleted each,
    // one executionCompleted.
    for id in &ids {
        let h = history(&client, id).await;
        let scheduled: Vec<i32> = h
            .iter()
            .filter(|e| matches!(e.event_type, Some(EventType::TaskScheduled(_))))
            .map(|e| e.event_id)
            .collect();
        let completed: Vec<i32> = h
            .iter()
            .filter_map(|e| match &e.event_type {
                Some(EventType::TaskCompleted(c)) => Some(c.task_scheduled_id),
                _ => None,
            })
            .collect();
        assert_eq!(scheduled, vec![0, 1, 2, 3, 4], "{id}: taskScheduled ids in history: {:?}", kinds(&h));
        assert_eq!(completed, vec![0, 1, 2, 3, 4], "{id}: taskCompleted ids in history: {:?}", kinds(&h));
        let ends = h.iter().filter(|e| matches!(e.event_type, Some(EventType::ExecutionCompleted(_)))).count();
        assert_eq!(ends, 1, "{id}: executionCompleted count");
    }

    let connects = WorkerStats::get(&worker.stats.connects);
    assert!(connects >= 2, "the worker should have reconnected after the restart (connects = {connects})");
    worker.stop().await;
}

/// Waits for an event named "Go" and completes with its payload.
fn wait_for_go(req: &OrchestratorRequest) -> Vec<OrchestratorAction> {
    let done = all_events(req).any(|e| matches!(e.event_type, Some(EventType::ExecutionCompleted(_))));
    if done {
        return Vec::new();
    }
    let go = all_events(req).find_map(|e| match &e.event_type {
        Some(EventType::EventRaised(r)) if r.name.eq_ignore_ascii_case("go") => Some(r.input.clone()),
        _ => None,
    });
    match go {
        Some(payload) => vec![complete(0, OrchestrationStatus::Completed, payload)],
        None => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_with_instances_waiting_for_events_then_raise_after_restart() {
    const N: usize = 40;
    let dir = test_dir();
    let mut sidecar = Sidecar::builder().dir(dir.path()).start();
    let client = sidecar.client().await;
    let worker = RawWorker::start(sidecar.endpoint(), wait_for_go, |_| Err("no activities here".into()));

    let ids: Vec<String> = (0..N).map(|i| format!("evt-{i:02}")).collect();
    for id in &ids {
        start(&client, "WaitForGo", id, None).await.expect("StartInstance");
    }
    // All have run their first turn and are waiting.
    for id in &ids {
        wait_status(&client, id, Duration::from_secs(30), |s| s == OrchestrationStatus::Running).await;
    }
    let payload = |i: usize| format!("{{\"n\":{i},\"text\":\"event for {i}\"}}");
    let raise = |id: String, data: String| {
        let mut client = client.clone();
        async move {
            let req = RaiseEventRequest { instance_id: id.clone(), name: "Go".into(), input: Some(data) };
            tokio::time::timeout(CALL_TIMEOUT, client.raise_event(req))
                .await
                .unwrap_or_else(|_| panic!("RaiseEvent({id}) hung"))
        }
    };
    // Half the events are raised (and acknowledged) right before the crash: acknowledged = durable.
    for (i, id) in ids.iter().enumerate().take(N / 2) {
        raise(id.clone(), payload(i)).await.expect("RaiseEvent before the crash");
    }
    sidecar.kill9();
    sidecar.restart();
    for (i, id) in ids.iter().enumerate().skip(N / 2) {
        // The restarted sidecar must know the instance (NOT_FOUND would mean it was lost).
        let r = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match raise(id.clone(), payload(i)).await {
                    Err(s) if is_transport_error(&s) => tokio::time::sleep(Duration::from_millis(100)).await,
                    other => return other,
                }
            }
        })
        .await
        .expect("RaiseEvent after restart");
        r.unwrap_or_else(|s| panic!("RaiseEvent({id}) after restart: {s:?}"));
    }
    for (i, id) in ids.iter().enumerate() {
        let s = wait_completion(&client, id, Duration::from_secs(60)).await;
        assert_eq!(status_of(&s), OrchestrationStatus::Completed, "{id}: {:?}", s.failure_details);
        assert_eq!(s.output.as_deref(), Some(payload(i).as_str()), "{id}: output");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_start_survives_immediate_kill9() {
    let dir = test_dir();
    let mut sidecar = Sidecar::builder().dir(dir.path()).start();
    let client = sidecar.client().await;

    // One start acknowledged right before kill -9.
    let id = start(&client, "Sum", "durable-1", Some("41")).await.expect("StartInstance");
    assert_eq!(id, "durable-1");
    sidecar.kill9();

    // And a stream of starts interrupted by kill -9: every acknowledged one must survive.
    sidecar.restart();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let starter = {
        let (client, acked) = (client.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..100_000 {
                let id = format!("burst-{i:05}");
                match start(&client, "Sum", &id, Some(&i.to_string())).await {
                    Ok(_) => acked.lock().expect("lock").push(id),
                    Err(_) => return,
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        while acked.lock().expect("lock").len() < 30 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("30 starts were not acknowledged within 30 s");
    sidecar.kill9();
    let _ = tokio::time::timeout(Duration::from_secs(30), starter).await.expect("starter stopped");
    let acked: Vec<String> = acked.lock().expect("lock").clone();
    sidecar.restart();

    let r = get_instance(&client, "durable-1").await;
    assert!(r.exists, "an acknowledged StartInstance was lost by kill -9");
    let s = r.orchestration_state.expect("state");
    assert_eq!(s.name, "Sum");
    assert_eq!(s.input.as_deref(), Some("41"));
    assert_eq!(status_of(&s), OrchestrationStatus::Pending);

    let mut missing = BTreeSet::new();
    for id in &acked {
        let r = loop {
            let req = duro_proto::GetInstanceRequest { instance_id: id.clone(), get_inputs_and_outputs: false };
            match tokio::time::timeout(CALL_TIMEOUT, client.clone().get_instance(req)).await.expect("GetInstance hung")
            {
                Ok(r) => break r.into_inner(),
                Err(s) if is_transport_error(&s) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(s) => panic!("GetInstance({id}): {s:?}"),
            }
        };
        if !r.exists {
            missing.insert(id.clone());
        }
    }
    assert!(missing.is_empty(), "{} of {} acknowledged starts lost: {missing:?}", missing.len(), acked.len());

    // The recovered instance runs to completion once a worker connects.
    let worker = RawWorker::start(sidecar.endpoint(), sum_orchestrator(2), add_activity);
    let s = wait_completion(&client, "durable-1", Duration::from_secs(30)).await;
    assert_eq!(status_of(&s), OrchestrationStatus::Completed, "{:?}", s.failure_details);
    assert_eq!(s.output, Some(expected_sum(2, 41).to_string()));
    worker.stop().await;
}

#[tokio::test]
async fn a_second_duro_on_the_same_database_refuses_to_start_and_the_first_keeps_serving() {
    let dir = test_dir();
    let first = Sidecar::builder().dir(dir.path()).start();
    let client = first.client().await;
    start(&client, "Sum", "before", Some("1")).await.expect("StartInstance");

    let (status, stderr) = run_until_exit(first.db(), &[], Duration::from_secs(20));
    assert!(!status.success(), "the second duro exited with {status}; stderr:\n{stderr}");
    let expected = format!(
        "error: the database {} is in use by another duro process (pid {}); stop it or use another --db",
        first.db().display(),
        first.pid().expect("pid")
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty() && !l.contains(" INFO ")).collect();
    assert_eq!(errors, [expected.as_str()], "stderr:\n{stderr}");

    // The first one never noticed.
    start(&client, "Sum", "after", Some("2")).await.expect("StartInstance after the refused start");
    assert!(get_instance(&client, "before").await.exists);
}
