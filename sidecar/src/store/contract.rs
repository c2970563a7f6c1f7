//! The [`Store`] contract as executable checks, written against the trait only, so every
//! backend runs the same suite: creation and id reuse, delivery, the turn fence, finishing,
//! timers, recovery, queries, purge and attempt counts.
//!
//! `contract_holds_for_sqlite` runs it on SQLite; a new backend adds one such test that hands
//! [`run_all`] a factory for empty stores of its kind.

use std::collections::HashMap;
use std::future::Future;

use duro_proto::OrchestrationStatus as S;

use super::*;
use crate::core::{events, Message, NewInstance, StartSpec, TurnOutcome};

const NOW: i64 = 1_700_000_000_000;

fn new_instance(id: &str) -> NewInstance {
    NewInstance {
        spec: StartSpec {
            instance_id: id.into(),
            execution_id: format!("{id}-e1"),
            name: "Orch".into(),
            version: None,
            input: Some("\"in\"".into()),
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

/// A turn of `id`'s first execution built on `history_len` events, ending in `status`.
fn turn(id: &str, history_len: usize, consumed: Vec<i64>, status: S) -> TurnCommit {
    let mut outcome = TurnOutcome::unchanged(status, consumed.len());
    outcome.append = vec![events::orchestrator_started(NOW + 1)];
    if status == S::Completed {
        outcome.output = Some("\"out\"".into());
    }
    TurnCommit {
        instance_id: id.into(),
        execution_id: format!("{id}-e1"),
        history_len,
        consumed,
        outcome,
        now_ms: NOW + 1,
    }
}

async fn create(store: &dyn Store, id: &str) -> Delivered {
    match store.create_instance(new_instance(id), IdReuse::terminal()).await.expect("create") {
        CreateResult::Created(c) => c.start,
        other => panic!("creating '{id}': {other:?}"),
    }
}

/// Runs every check, each on a fresh store from `fresh`.
pub(crate) async fn run_all<F, Fut, St>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = St>,
    St: Store,
{
    created_instances_are_pending_with_their_start_row(&fresh().await).await;
    a_live_id_is_refused_and_a_finished_one_replaced(&fresh().await).await;
    events_reach_live_instances_only(&fresh().await).await;
    a_turn_commits_once_on_the_history_it_was_built_on(&fresh().await).await;
    finishing_records_output_and_empties_the_inbox(&fresh().await).await;
    future_rows_are_recovered_with_their_time(&fresh().await).await;
    queries_filter_and_page(&fresh().await).await;
    purge_removes_everything_of_finished_instances(&fresh().await).await;
    attempt_counts_survive_a_restart_view(&fresh().await).await;
    counts_by_status_and_newest_first_paging(&fresh().await).await;
}

async fn created_instances_are_pending_with_their_start_row(store: &dyn Store) {
    let start = create(store, "a").await;
    let rec = store.load_instance("a").await.expect("load").expect("exists");
    assert_eq!((rec.status, rec.name.as_str(), rec.input.as_deref()), (S::Pending, "Orch", Some("\"in\"")));
    let inbox = store.load_inbox("a").await.expect("inbox");
    assert_eq!(inbox.rows.iter().map(|d| d.inbox_id).collect::<Vec<_>>(), vec![start.inbox_id]);
    assert!(inbox.watermark >= start.inbox_id);
    assert!(store.load_instance("nobody").await.expect("load").is_none());
    assert!(store.load_history("a").await.expect("history").is_empty());
}

async fn a_live_id_is_refused_and_a_finished_one_replaced(store: &dyn Store) {
    let start = create(store, "r").await;
    let again = store.create_instance(new_instance("r"), IdReuse::terminal()).await.expect("create");
    assert_eq!(again, CreateResult::AlreadyExists(S::Pending));
    store.commit_turn(turn("r", 0, vec![start.inbox_id], S::Completed)).await.expect("finish");
    let mut next = new_instance("r");
    next.spec.execution_id = "r-e2".into();
    match store.create_instance(next, IdReuse::terminal()).await.expect("create") {
        CreateResult::Created(c) => assert_eq!(c.replaced, Some(S::Completed)),
        other => panic!("a finished id is reused: {other:?}"),
    }
    let rec = store.load_instance("r").await.expect("load").expect("exists");
    assert_eq!((rec.execution_id.as_str(), rec.status), ("r-e2", S::Pending));
    assert!(store.load_history("r").await.expect("history").is_empty(), "the old execution's history is gone");
}

async fn events_reach_live_instances_only(store: &dyn Store) {
    create(store, "e").await;
    let raised = |target: &str| Message::now(target, None, events::event_raised(NOW, "go".into(), None), NOW);
    let d = store.enqueue(raised("e")).await.expect("enqueue").expect("delivered to a live instance");
    assert_eq!((d.instance_id.as_str(), d.target.status), ("e", S::Pending));
    assert_eq!(store.enqueue(raised("missing")).await.expect("enqueue"), None, "no row for an unknown id");
    let rows = store.load_inbox("e").await.expect("inbox").rows;
    assert_eq!(rows.len(), 2);
    assert!(rows[0].inbox_id < rows[1].inbox_id, "inbox ids grow in arrival order");
}

async fn a_turn_commits_once_on_the_history_it_was_built_on(store: &dyn Store) {
    let start = create(store, "t").await;
    store.commit_turn(turn("t", 0, vec![start.inbox_id], S::Running)).await.expect("first turn");
    let history = store.load_history("t").await.expect("history");
    assert_eq!(history.len(), 1);
    // A second turn built on the same (now outdated) history is fenced off.
    let stale = store.commit_turn(turn("t", 0, Vec::new(), S::Running)).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    // Consuming a row that no longer exists conflicts instead of delivering twice.
    let gone = store.commit_turn(turn("t", 1, vec![start.inbox_id], S::Running)).await;
    assert!(matches!(gone, Err(StoreError::Conflict(_))), "{gone:?}");
    assert_eq!(store.load_history("t").await.expect("history").len(), 1, "nothing of the refused turns stored");
    let rec = store.load_instance("t").await.expect("load").expect("exists");
    assert_eq!(rec.status, S::Running);
}

async fn finishing_records_output_and_empties_the_inbox(store: &dyn Store) {
    let start = create(store, "f").await;
    let late = Message::now("f", None, events::event_raised(NOW, "late".into(), None), NOW);
    store.enqueue(late).await.expect("enqueue").expect("delivered");
    let done = store.commit_turn(turn("f", 0, vec![start.inbox_id], S::Completed)).await.expect("finish");
    let through = done.finished_through.expect("a finishing turn reports what it deleted");
    let rec = store.load_instance("f").await.expect("load").expect("exists");
    assert_eq!((rec.status, rec.output.as_deref()), (S::Completed, Some("\"out\"")));
    assert!(rec.completed_at_ms.is_some());
    let inbox = store.load_inbox("f").await.expect("inbox");
    assert!(inbox.rows.is_empty(), "a finished instance keeps no inbox rows: {:?}", inbox.rows);
    assert!(inbox.watermark >= through);
    assert!(store.recover().await.expect("recover").inbox.iter().all(|d| d.instance_id != "f"));
}

async fn future_rows_are_recovered_with_their_time(store: &dyn Store) {
    let start = create(store, "w").await;
    let at = NOW + 3_600_000;
    let timer = Message {
        target: "w".into(),
        execution_id: Some("w-e1".into()),
        priority: crate::core::Priority::Normal,
        visible_at_ms: at,
        event: events::timer_fired(NOW, 1, crate::core::time::from_ms(at)),
    };
    let d = store.enqueue(timer).await.expect("enqueue").expect("delivered");
    let recovered = store.recover().await.expect("recover");
    let mut rows: Vec<(i64, i64)> =
        recovered.inbox.iter().filter(|r| r.instance_id == "w").map(|r| (r.inbox_id, r.visible_at_ms)).collect();
    rows.sort_unstable();
    assert_eq!(rows, vec![(start.inbox_id, NOW), (d.inbox_id, at)], "committed work is queued or waiting for its time");
}

async fn queries_filter_and_page(store: &dyn Store) {
    for id in ["q-1", "q-2", "q-3", "other"] {
        create(store, id).await;
    }
    let start = store.load_inbox("q-2").await.expect("inbox").rows[0].inbox_id;
    store.commit_turn(turn("q-2", 0, vec![start], S::Completed)).await.expect("finish");
    let ids = |records: Vec<InstanceRecord>| records.into_iter().map(|r| r.instance_id).collect::<Vec<_>>();
    let prefix = InstanceFilter { instance_id_prefix: Some("q-".into()), page_size: 10, ..Default::default() };
    assert_eq!(ids(store.query_instances(&prefix).await.expect("query")), ["q-1", "q-2", "q-3"]);
    let pending = InstanceFilter { statuses: vec![S::Pending], page_size: 10, ..prefix.clone() };
    assert_eq!(ids(store.query_instances(&pending).await.expect("query")), ["q-1", "q-3"]);
    let page = InstanceFilter { page_size: 1, after_instance_id: Some("q-1".into()), ..prefix };
    let first = ids(store.query_instances(&page).await.expect("query"));
    assert_eq!(first.first().map(String::as_str), Some("q-2"), "pages continue after the cursor: {first:?}");
    let completed = CompletedFilter { statuses: vec![S::Completed], page_size: 10, ..Default::default() };
    let done: Vec<String> =
        store.list_completed_ids(&completed).await.expect("completed").into_iter().map(|(_, id)| id).collect();
    assert_eq!(done, ["q-2"]);
}

async fn purge_removes_everything_of_finished_instances(store: &dyn Store) {
    let start = create(store, "p").await;
    create(store, "live").await;
    store.commit_turn(turn("p", 0, vec![start.inbox_id], S::Completed)).await.expect("finish");
    let purged = store.purge(PurgeSelection::Ids(vec!["p".into(), "live".into()]), false).await.expect("purge");
    assert_eq!(purged, 1, "only the finished instance is purged");
    assert!(store.load_instance("p").await.expect("load").is_none());
    assert!(store.load_history("p").await.expect("history").is_empty());
    assert!(store.load_instance("live").await.expect("load").is_some());
}

async fn attempt_counts_survive_a_restart_view(store: &dyn Store) {
    create(store, "x").await;
    store.record_attempts(vec![Attempts::Instance("x".into(), 3)]).await.expect("record");
    let recovered = store.recover().await.expect("recover");
    assert_eq!(recovered.attempts, vec![Attempts::Instance("x".into(), 3)]);
}

async fn counts_by_status_and_newest_first_paging(store: &dyn Store) {
    for (i, id) in ["n-1", "n-2", "n-3"].into_iter().enumerate() {
        let mut new = new_instance(id);
        new.created_at_ms = NOW + i64::try_from(i).unwrap_or_default() * 1000;
        store.create_instance(new, IdReuse::terminal()).await.expect("create");
    }
    let start = store.load_inbox("n-1").await.expect("inbox").rows[0].inbox_id;
    store.commit_turn(turn("n-1", 0, vec![start], S::Completed)).await.expect("finish");
    let mut counts = store.count_by_status().await.expect("counts");
    counts.sort_by_key(|(s, _)| *s as i32);
    assert_eq!(counts, vec![(S::Completed, 1), (S::Pending, 2)]);
    let page = |before: Option<(i64, String)>| InstanceFilter {
        page_size: 2,
        order: QueryOrder::NewestFirst { before },
        ..Default::default()
    };
    let first: Vec<(i64, String)> = store
        .query_instances(&page(None))
        .await
        .expect("query")
        .into_iter()
        .map(|r| (r.created_at_ms, r.instance_id))
        .collect();
    assert_eq!(first.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(), ["n-3", "n-2"]);
    let rest = store.query_instances(&page(first.last().cloned())).await.expect("query");
    assert_eq!(rest.iter().map(|r| r.instance_id.as_str()).collect::<Vec<_>>(), ["n-1"], "the cursor is exclusive");
}

#[tokio::test]
async fn contract_holds_for_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let counter = std::sync::atomic::AtomicUsize::new(0);
    run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.path().join(format!("contract-{n}.db"));
        async move {
            super::sqlite::SqliteStore::open(&path, super::sqlite::SqliteOptions::default()).await.expect("open store")
        }
    })
    .await;
}

#[tokio::test]
async fn contract_holds_for_postgres() {
    let pg = duro_testkit::Postgres::start();
    run_all(|| {
        let opts = super::postgres::PgOptions {
            url: pg.url().to_string(),
            hub: pg.fresh_hub(),
            owner: "contract".into(),
            lease: std::time::Duration::from_secs(30),
            max_connections: 4,
            require_lease: false,
        };
        async move { super::postgres::PgStore::open(opts).await.expect("open store") }
    })
    .await;
}
