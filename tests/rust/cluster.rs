//! Several sidecars on one PostgreSQL task hub: any sidecar runs any instance, a worker's
//! names route work across sidecars, and a sidecar that dies or freezes loses nothing and
//! (fencing) writes nothing once its leases are gone. Real PostgreSQL (`duro_testkit::Postgres`),
//! real `duro` processes, the raw-protocol worker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use duro_proto::history_event::EventType;
use duro_proto::{ActivityFilter, GetWorkItemsRequest, OrchestrationFilter, OrchestrationStatus, WorkItemFilters};
use duro_tests::*;
use futures::StreamExt;

/// Short leases so takeovers happen within a test's patience.
const LEASE: &str = "2";

fn on_hub(pg: &Postgres, hub: &str) -> SidecarBuilder {
    Sidecar::builder().postgres(pg.url(), hub).args(["--lease-seconds", LEASE])
}

async fn start_all(client: &Client, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:03}")).collect();
    futures::stream::iter(ids.iter().enumerate())
        .for_each_concurrent(16, |(i, id)| {
            let client = client.clone();
            async move {
                start(&client, "Sum", id, Some(&i.to_string())).await.expect("StartInstance");
            }
        })
        .await;
    ids
}

/// Waits for every instance and checks each completed with exactly its sum.
async fn assert_all_sums(client: &Client, ids: &[String], activities: usize, within: Duration) {
    let results: Vec<(String, Result<duro_proto::OrchestrationState, String>)> = futures::stream::iter(ids.iter())
        .map(|id| {
            let client = client.clone();
            async move { (id.clone(), try_wait_completion(&client, id, within).await) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for (id, r) in results {
        let i: i64 = id.rsplit('-').next().and_then(|s| s.parse().ok()).expect("index");
        let state = r.unwrap_or_else(|e| panic!("{id} did not finish: {e}"));
        assert_eq!(status_of(&state), OrchestrationStatus::Completed, "{id}: {state:?}");
        assert_eq!(state.output.as_deref(), Some(expected_sum(activities, i).to_string().as_str()), "{id}");
    }
}

/// Every task scheduled once, completed once: no turn committed twice.
async fn assert_histories_exact(client: &Client, ids: &[String], activities: usize) {
    for id in ids {
        let events = history(client, id).await;
        let count = |f: fn(&EventType) -> bool| events.iter().filter(|e| e.event_type.as_ref().is_some_and(f)).count();
        assert_eq!(count(|e| matches!(e, EventType::TaskScheduled(_))), activities, "{id}: {:?}", kinds(&events));
        assert_eq!(count(|e| matches!(e, EventType::TaskCompleted(_))), activities, "{id}: {:?}", kinds(&events));
        assert_eq!(count(|e| matches!(e, EventType::ExecutionCompleted(_))), 1, "{id}: {:?}", kinds(&events));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_without_workers_hands_its_instances_to_the_one_with_a_worker() {
    let pg = Postgres::start();
    let hub = pg.fresh_hub();
    let front = on_hub(&pg, &hub).start();
    let back = on_hub(&pg, &hub).start();
    let worker = RawWorker::start(back.endpoint(), sum_orchestrator(3), add_activity);
    let client = front.client().await;
    let ids = start_all(&client, "front", 20).await;
    assert_all_sums(&client, &ids, 3, Duration::from_secs(60)).await;
    assert_histories_exact(&client, &ids, 3).await;
    // The front sidecar's WaitFor* calls were woken by the back sidecar's status notices;
    // the other client sees the same instances.
    let other = back.client().await;
    assert_eq!(query_all(&other, "front-", &[OrchestrationStatus::Completed]).await.len(), 20);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orchestrations_and_activities_route_to_the_sidecar_whose_worker_serves_them() {
    let pg = Postgres::start();
    let hub = pg.fresh_hub();
    let a = on_hub(&pg, &hub).start();
    let b = on_hub(&pg, &hub).start();
    // Worker on A runs only the orchestration; worker on B runs only the activity.
    let only = |orchestrations: Vec<&str>, activities: Vec<&str>| GetWorkItemsRequest {
        work_item_filters: Some(WorkItemFilters {
            orchestrations: orchestrations
                .into_iter()
                .map(|n| OrchestrationFilter { name: n.into(), versions: vec![] })
                .collect(),
            activities: activities.into_iter().map(|n| ActivityFilter { name: n.into(), versions: vec![] }).collect(),
            entities: vec![],
        }),
        ..Default::default()
    };
    let orchestrator_worker =
        RawWorker::start_with(a.endpoint(), only(vec!["Sum"], vec![]), sum_orchestrator(2), |_| {
            Err("the orchestration worker must never get an activity".into())
        });
    let activity_worker = RawWorker::start_with(
        b.endpoint(),
        only(vec![], vec![ADD]),
        |_| panic!("the activity worker must never get an orchestration"),
        add_activity,
    );
    let client = b.client().await;
    let ids = start_all(&client, "route", 10).await;
    assert_all_sums(&client, &ids, 2, Duration::from_secs(60)).await;
    assert_histories_exact(&client, &ids, 2).await;
    orchestrator_worker.stop().await;
    activity_worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_one_of_three_sidecars_loses_and_duplicates_nothing() {
    let pg = Postgres::start();
    let hub = pg.fresh_hub();
    let mut sidecars: Vec<Sidecar> = (0..3).map(|_| on_hub(&pg, &hub).start()).collect();
    // Slow activities keep work in flight on every sidecar when one dies.
    let slow = |req: &duro_proto::ActivityRequest| {
        std::thread::sleep(Duration::from_millis(20));
        add_activity(req)
    };
    let workers: Vec<RawWorker> =
        sidecars.iter().map(|s| RawWorker::start(s.endpoint(), sum_orchestrator(5), slow)).collect();
    let client = sidecars[1].client().await;
    let ids = start_all(&client, "fail", 60).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let killed_at = Instant::now();
    sidecars[0].kill9();
    assert_all_sums(&client, &ids, 5, Duration::from_secs(90)).await;
    eprintln!("all 60 finished {:?} after the kill", killed_at.elapsed());
    assert_histories_exact(&client, &ids, 5).await;
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_sidecar_commits_nothing_for_leases_it_lost() {
    let pg = Postgres::start();
    let hub = pg.fresh_hub();
    let mut frozen = on_hub(&pg, &hub).start();
    let other = on_hub(&pg, &hub).start();
    // Only the frozen sidecar has a worker at first: it claims every instance. Its worker
    // takes 800 ms per turn, so turns are out at the worker when the sidecar freezes; their
    // completions reach it only after it thaws, long after its leases expired.
    let sum = sum_orchestrator(3);
    let worker = RawWorker::start(
        frozen.endpoint(),
        move |req| {
            std::thread::sleep(Duration::from_millis(800));
            sum(req)
        },
        add_activity,
    );
    let client = other.client().await;
    let ids: Vec<String> = start_all(&client, "frozen", 10).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = frozen.pid().expect("pid");
    signal(pid, "STOP");
    let second = RawWorker::start(other.endpoint(), sum_orchestrator(3), add_activity);
    assert_all_sums(&client, &ids, 3, Duration::from_secs(60)).await;
    let before: HashMap<String, usize> = {
        let mut m = HashMap::new();
        for id in &ids {
            m.insert(id.clone(), history(&client, id).await.len());
        }
        m
    };
    // Wake it: whatever it had in flight must be refused by fencing.
    signal(pid, "CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        assert_eq!(history(&client, id).await.len(), before[id], "{id}: the thawed sidecar wrote history");
    }
    assert_histories_exact(&client, &ids, 3).await;
    assert!(frozen.is_running(), "the thawed sidecar must keep serving:\n{}", frozen.log_tail(40));
    assert!(
        frozen.log_text().contains("lease lost"),
        "the thawed sidecar's late turns must be refused by fencing:\n{}",
        frozen.log_tail(60)
    );
    worker.stop().await;
    second.stop().await;
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {pid} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_whose_last_worker_leaves_gives_its_work_to_the_others() {
    let pg = Postgres::start();
    let hub = pg.fresh_hub();
    let left = on_hub(&pg, &hub).start();
    let other = on_hub(&pg, &hub).start();
    // Only `left` has a worker at first, with slow activities: it claims the instances and
    // holds them, with work queued, when its worker goes away for good.
    let slow = |req: &duro_proto::ActivityRequest| {
        std::thread::sleep(Duration::from_millis(50));
        add_activity(req)
    };
    let leaving = RawWorker::start(left.endpoint(), sum_orchestrator(4), slow);
    let client = other.client().await;
    let ids = start_all(&client, "left", 20).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    leaving.stop().await;
    let staying = RawWorker::start(other.endpoint(), sum_orchestrator(4), add_activity);
    // Within a renewal or two (2 s leases: every 0.67 s) `left` gives everything back.
    assert_all_sums(&client, &ids, 4, Duration::from_secs(30)).await;
    assert_histories_exact(&client, &ids, 4).await;
    staying.stop().await;
}
