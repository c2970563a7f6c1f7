//! PostgreSQL-only checks of the core writes: lease fencing of turn commits, lease epochs
//! that never fall back, and the hub's notifications. The shared contract is in
//! `store/contract.rs`.

use std::collections::HashMap;
use std::time::Duration;

use duro_proto::OrchestrationStatus as S;

use super::*;
use crate::core::{events, StartSpec, TurnOutcome};

const NOW: i64 = 1_700_000_000_000;

async fn open(pg: &duro_testkit::Postgres, owner: &str) -> PgStore {
    let opts = PgOptions {
        url: pg.url().to_string(),
        hub: pg.fresh_hub(),
        owner: owner.into(),
        lease: Duration::from_secs(30),
        max_connections: 4,
        require_lease: false,
    };
    PgStore::open(opts).await.expect("open store")
}

fn new_instance(id: &str, execution_id: &str) -> NewInstance {
    NewInstance {
        spec: StartSpec {
            instance_id: id.into(),
            execution_id: execution_id.into(),
            name: "Orch".into(),
            version: None,
            input: None,
            parent: None,
            scheduled_start_ms: None,
            parent_trace_context: None,
            tags: HashMap::new(),
        },
        created_at_ms: NOW,
        visible_at_ms: NOW,
        parent_task: None,
    }
}

async fn create(store: &PgStore, id: &str, execution_id: &str) -> Delivered {
    match store.create_instance(new_instance(id, execution_id), IdReuse::terminal()).await.expect("create") {
        CreateResult::Created(c) => c.start,
        other => panic!("{other:?}"),
    }
}

fn turn(id: &str, execution_id: &str, consumed: Vec<i64>, status: S) -> TurnCommit {
    let mut outcome = TurnOutcome::unchanged(status, consumed.len());
    outcome.append = vec![events::orchestrator_started(NOW + 1)];
    TurnCommit {
        instance_id: id.into(),
        execution_id: execution_id.into(),
        history_len: 0,
        consumed,
        outcome,
        now_ms: NOW + 1,
    }
}

/// Sets an instance's lease as the lease code would (owner, 60 s from now, epoch).
async fn lease(store: &PgStore, id: &str, owner: Option<&str>, epoch: i64) {
    q("UPDATE instances SET lease_owner = $2, lease_until = duro_now_ms() + 60000, lease_epoch = $3 \
       WHERE instance_id = $1")
    .bind(id)
    .bind(owner)
    .bind(epoch)
    .execute(&store.pool)
    .await
    .expect("lease");
}

async fn lease_of(store: &PgStore, id: &str) -> (Option<String>, i64) {
    let row = q("SELECT lease_owner, lease_epoch FROM instances WHERE instance_id = $1")
        .bind(id)
        .fetch_one(&store.pool)
        .await
        .expect("lease row");
    (row.try_get(0).expect("owner"), row.try_get(1).expect("epoch"))
}

#[tokio::test]
async fn a_turn_under_a_stale_epoch_is_refused_with_lease_lost_and_stores_nothing() {
    let pg = duro_testkit::Postgres::start();
    let store = open(&pg, "me").await;
    let start = create(&store, "a", "a-e1").await;
    // Another claim (epoch 5) happened since this sidecar took the lease at epoch 4.
    lease(&store, "a", Some("me"), 5).await;
    store.held.lock().insert("a".into(), 4);
    let stale = store.commit_turn(turn("a", "a-e1", vec![start.inbox_id], S::Running)).await;
    assert!(matches!(stale, Err(StoreError::LeaseLost(ref id)) if id == "a"), "{stale:?}");
    assert!(store.held.lock().get("a").is_none(), "a lost lease is forgotten");
    assert!(store.load_history("a").await.expect("history").is_empty(), "no history appended");
    let inbox = store.load_inbox("a").await.expect("inbox");
    assert_eq!(inbox.rows.len(), 1, "nothing consumed");
    assert_eq!(store.load_instance("a").await.expect("load").expect("row").status, S::Pending);
    // Someone else's live lease refuses a sidecar holding none, too.
    lease(&store, "a", Some("other"), 6).await;
    let foreign = store.commit_turn(turn("a", "a-e1", vec![start.inbox_id], S::Running)).await;
    assert!(matches!(foreign, Err(StoreError::LeaseLost(_))), "{foreign:?}");
    // Under the current epoch the same turn commits and extends the lease.
    lease(&store, "a", Some("me"), 7).await;
    store.held.lock().insert("a".into(), 7);
    store.commit_turn(turn("a", "a-e1", vec![start.inbox_id], S::Running)).await.expect("commit");
    assert_eq!(store.load_history("a").await.expect("history").len(), 1);
    assert_eq!(lease_of(&store, "a").await, (Some("me".into()), 7));
}

#[tokio::test]
async fn a_replaced_or_restarted_instance_keeps_its_lease_epoch_rising() {
    let pg = duro_testkit::Postgres::start();
    let store = open(&pg, "me").await;
    let start = create(&store, "r", "r-e1").await;
    store.commit_turn(turn("r", "r-e1", vec![start.inbox_id], S::Completed)).await.expect("finish");
    lease(&store, "r", Some("me"), 7).await;
    let replaced = store.create_instance(new_instance("r", "r-e2"), IdReuse::terminal()).await.expect("replace");
    assert!(matches!(replaced, CreateResult::Created(ref c) if c.replaced == Some(S::Completed)), "{replaced:?}");
    assert_eq!(lease_of(&store, "r").await, (None, 8), "the epoch rises and the lease is dropped");
    // Replacing a live instance (terminated first) raises it too.
    lease(&store, "r", Some("other"), 9).await;
    let live = store.create_instance(new_instance("r", "r-e3"), IdReuse::Replace(vec![S::Pending, S::Terminated]));
    assert!(matches!(live.await.expect("replace live"), CreateResult::Created(_)));
    assert_eq!(lease_of(&store, "r").await, (None, 10));
    // A turn of the replaced execution, under the old lease, is refused.
    store.held.lock().insert("r".into(), 9);
    let old = store.commit_turn(turn("r", "r-e2", Vec::new(), S::Running)).await;
    assert!(matches!(old, Err(StoreError::LeaseLost(_))), "{old:?}");
    // Restarting under the same id, once finished, raises it again.
    let start = store.load_inbox("r").await.expect("inbox").rows[0].inbox_id;
    store.commit_turn(turn("r", "r-e3", vec![start], S::Completed)).await.expect("finish");
    assert!(matches!(store.restart("r", None, NOW + 5).await.expect("restart"), RestartResult::Restarted(_)));
    assert_eq!(lease_of(&store, "r").await, (None, 11));
}

#[tokio::test]
async fn new_inbox_rows_and_activities_are_announced_on_the_hub_channel_at_commit() {
    let pg = duro_testkit::Postgres::start();
    let store = open(&pg, "me").await;
    let mut listener = sqlx_postgres::PgListener::connect_with(&store.pool).await.expect("listener");
    listener.listen(&store.channel()).await.expect("listen");
    let start = create(&store, "n", "n-e1").await;
    let mut t = turn("n", "n-e1", vec![start.inbox_id], S::Running);
    t.outcome.activities = vec![duro_proto::ActivityRequest {
        name: "Act".into(),
        orchestration_instance: Some(duro_proto::OrchestrationInstance {
            instance_id: "n".into(),
            execution_id: Some("n-e1".into()),
        }),
        ..Default::default()
    }];
    let at = NOW + 60_000;
    t.outcome.messages =
        vec![Message { visible_at_ms: at, ..Message::now("n", Some("n-e1".into()), events::wake_up(NOW), NOW) }];
    // A refused commit announces nothing.
    let mut refused = t.clone();
    refused.execution_id = "other".into();
    assert!(store.commit_turn(refused).await.is_err());
    store.commit_turn(t).await.expect("commit");
    let mut got = Vec::new();
    while got.len() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await.expect("in time").expect("recv");
        got.push(n.payload().to_string());
    }
    // Inbox notices name the sidecar that committed them (the store's owner, "me").
    assert_eq!(got, [format!("i {NOW} me n"), format!("i {at} me n"), "a Act".to_string()]);
    let quiet = tokio::time::timeout(Duration::from_millis(200), listener.recv()).await;
    assert!(quiet.is_err(), "one notification per row: {quiet:?}");
}

#[tokio::test]
async fn concurrent_creations_of_one_id_create_it_once_and_refuse_the_rest() {
    let pg = duro_testkit::Postgres::start();
    let store = std::sync::Arc::new(open(&pg, "me").await);
    let tries: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.create_instance(new_instance("same", &format!("e{i}")), IdReuse::terminal()).await
            })
        })
        .collect();
    let mut created = 0;
    for t in tries {
        match t.await.expect("task").expect("create") {
            CreateResult::Created(_) => created += 1,
            CreateResult::AlreadyExists(status) => assert_eq!(status, S::Pending),
            CreateResult::Kept => panic!("nothing asked to keep"),
        }
    }
    assert_eq!(created, 1, "the losers of the race find the row and apply the policy");
    assert_eq!(store.load_inbox("same").await.expect("inbox").rows.len(), 1);
}

/// `load_inbox` waits for a delivery in flight to its instance (which holds the row lock),
/// so no id of that instance below the watermark can commit after the snapshot.
#[tokio::test]
async fn an_inbox_snapshot_waits_for_a_delivery_in_flight_to_its_instance() {
    let pg = duro_testkit::Postgres::start();
    let store = std::sync::Arc::new(open(&pg, "me").await);
    create(&store, "w", "w-e1").await;
    let mut tx = store.pool.begin().await.expect("begin");
    let mut notices = Notices::default();
    lock_instances(&mut tx, &["w".to_string()]).await.expect("lock");
    let raised = Message::now("w", None, events::event_raised(NOW, "go".into(), None), NOW);
    let in_flight = write::deliver(&mut tx, &mut notices, &raised).await.expect("deliver").expect("live");
    // A later row of another instance makes the sequence run ahead of the one in flight.
    create(&store, "other", "o-e1").await;
    let reader = {
        let store = store.clone();
        tokio::spawn(async move { store.load_inbox("w").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!reader.is_finished(), "the snapshot waits for the delivery in flight");
    tx.commit().await.expect("commit");
    let snapshot = reader.await.expect("task").expect("inbox");
    assert!(snapshot.rows.iter().any(|d| d.inbox_id == in_flight.inbox_id), "{:?}", snapshot.rows);
    assert!(snapshot.watermark > in_flight.inbox_id);
}

/// A second store on the same hub (another sidecar), with its own owner id and lease length.
async fn peer(pg: &duro_testkit::Postgres, hub: &str, owner: &str, lease: Duration) -> PgStore {
    let opts = PgOptions {
        url: pg.url().to_string(),
        hub: hub.into(),
        owner: owner.into(),
        lease,
        max_connections: 4,
        require_lease: true,
    };
    PgStore::open(opts).await.expect("open store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecars_starting_together_create_and_migrate_their_hub_once() {
    let pg = duro_testkit::Postgres::start();
    // Several rounds, each on a new hub, with every open on its own task: concurrent
    // `CREATE SCHEMA IF NOT EXISTS` of one name collide unless serialized.
    for _ in 0..5 {
        let hub = pg.fresh_hub();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
        let opens: Vec<_> = (0..8)
            .map(|i| {
                let opts = PgOptions {
                    url: pg.url().to_string(),
                    hub: hub.clone(),
                    owner: format!("s{i}"),
                    lease: Duration::from_secs(30),
                    max_connections: 2,
                    require_lease: true,
                };
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    PgStore::open(opts).await.map(|_| ())
                })
            })
            .collect();
        for open in opens {
            open.await.expect("task").expect("every sidecar opens the hub");
        }
    }
}

#[tokio::test]
async fn claims_are_exclusive_expire_to_a_higher_epoch_and_fence_the_old_holder() {
    let pg = duro_testkit::Postgres::start();
    let hub = pg.fresh_hub();
    let a = peer(&pg, &hub, "a", Duration::from_millis(800)).await;
    let b = peer(&pg, &hub, "b", Duration::from_secs(30)).await;
    let start = create(&a, "x", "x-e1").await;
    let all = Served::All(Vec::new());
    let none = Served::Names(Vec::new());

    a.record_attempts(vec![Attempts::Instance("x".into(), 2)]).await.expect("attempts");
    let got = a.claim(&all, 10, &none, 0, NOW).await.expect("claim");
    assert_eq!(got.instances.iter().map(|(id, s)| (id.as_str(), s.rows.len())).collect::<Vec<_>>(), [("x", 1)]);
    assert_eq!(got.attempts, [Attempts::Instance("x".into(), 2)], "poison counts travel with the claim");
    assert!(a.holds("x"));
    assert!(b.claim(&all, 10, &none, 0, NOW).await.expect("claim").instances.is_empty(), "a live lease is exclusive");
    let served_elsewhere = Served::Names(vec!["Other".into()]);
    let (_, epoch_a) = lease_of(&a, "x").await;

    // A's lease runs out unrenewed; B takes the instance over with a higher epoch.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(b.claim(&served_elsewhere, 10, &none, 0, NOW).await.expect("claim").instances.is_empty(), "names filter");
    let got = b.claim(&all, 10, &none, 0, NOW).await.expect("claim");
    assert_eq!(got.instances.len(), 1);
    let (owner, epoch_b) = lease_of(&b, "x").await;
    assert_eq!((owner.as_deref(), epoch_b > epoch_a), (Some("b"), true));

    // A, resuming, is fenced: nothing of its turn is stored.
    let late = a.commit_turn(turn("x", "x-e1", vec![start.inbox_id], S::Running)).await;
    assert!(matches!(late, Err(StoreError::LeaseLost(_))), "{late:?}");
    assert!(!a.holds("x"));
    assert!(a.load_history("x").await.expect("history").is_empty());
    assert_eq!(a.renew().await.expect("renew"), Lost::default(), "a forgotten lease is not reported again");

    // B's release keeps the lease while the instance has inbox rows; once consumed, it frees it.
    assert_eq!(b.release("x", false).await.expect("release"), ReleaseOutcome::Busy);
    assert!(b.holds("x"));
    b.commit_turn(turn("x", "x-e1", vec![start.inbox_id], S::Running)).await.expect("B commits under its lease");
    assert_eq!(b.release("x", false).await.expect("release"), ReleaseOutcome::Released);
    assert_eq!(lease_of(&b, "x").await.0, None);
    assert_eq!(b.release("x", false).await.expect("release"), ReleaseOutcome::Lost, "nothing held any more");
}

#[tokio::test]
async fn renewal_reports_leases_taken_over_and_release_all_wakes_the_others() {
    let pg = duro_testkit::Postgres::start();
    let hub = pg.fresh_hub();
    let a = peer(&pg, &hub, "a", Duration::from_millis(600)).await;
    let b = peer(&pg, &hub, "b", Duration::from_secs(30)).await;
    create(&a, "x", "x-e1").await;
    create(&a, "y", "y-e1").await;
    let all = Served::All(Vec::new());
    let none = Served::Names(Vec::new());
    assert_eq!(a.claim(&all, 10, &none, 0, NOW).await.expect("claim").instances.len(), 2);
    tokio::time::sleep(Duration::from_millis(800)).await;
    // B takes only one of the two expired leases.
    assert_eq!(b.claim(&all, 1, &none, 0, NOW).await.expect("claim").instances.len(), 1);
    let taken = b.held_ids();
    let lost = a.renew().await.expect("renew");
    assert_eq!(lost.instances, taken, "the renewal reports exactly the lease taken over");
    assert_eq!(a.held_ids().len(), 1, "the other lease is renewed and kept");

    let mut notices = b.listen().await.expect("listen");
    a.release_all().await.expect("release all");
    assert!(a.held_ids().is_empty());
    let n = tokio::time::timeout(Duration::from_secs(5), notices.recv()).await.expect("in time").expect("notice");
    assert!(matches!(n, Notice::Inbox { ref origin, .. } if origin == "a"), "{n:?}");
    assert_eq!(b.claim(&all, 10, &none, 0, NOW).await.expect("claim").instances.len(), 1, "freed at once");
}

#[tokio::test]
async fn replacing_an_instance_voids_the_lease_its_sidecar_held_on_it() {
    let pg = duro_testkit::Postgres::start();
    let hub = pg.fresh_hub();
    let a = peer(&pg, &hub, "a", Duration::from_secs(30)).await;
    create(&a, "x", "x-e1").await;
    let all = Served::All(Vec::new());
    let none = Served::Names(Vec::new());
    assert_eq!(a.claim(&all, 10, &none, 0, NOW).await.expect("claim").instances.len(), 1);
    assert!(a.holds("x"));
    // The same sidecar replaces the live instance: its lease on the old one is void at once,
    // so it neither admits deliveries for it nor skips the new start's notice.
    let replaced = a.create_instance(new_instance("x", "x-e2"), IdReuse::Replace(vec![S::Pending])).await;
    assert!(matches!(replaced, Ok(CreateResult::Created(_))), "{replaced:?}");
    assert!(!a.holds("x"), "the replaced instance's lease is forgotten");
    let got = a.claim(&all, 10, &none, 0, NOW).await.expect("claim");
    assert_eq!(got.instances.len(), 1, "the new execution is claimed like any free instance");
    assert!(a.holds("x"));
}
