//! The [`Store`] contract as executable checks, written against the trait only, so every
//! backend runs the same suite: creation and id reuse, delivery, the turn fence, finishing,
//! timers, recovery, queries, purge and attempt counts; and the entity queue and steps
//! ([`run_entities`] runs those alone).
//!
//! `contract_holds_for_sqlite` runs it on SQLite; a new backend adds one such test that hands
//! [`run_all`] a factory for empty stores of its kind.

use std::collections::HashMap;
use std::future::Future;

use duro_proto::OrchestrationStatus as S;

use duro_proto::history_event::EventType;
use duro_proto::EntityLockGrantedEvent;

use super::*;
use crate::core::entity::{Effects, EntityMessage, Lock, Outgoing};
use crate::core::{events, is_terminal, Message, NewInstance, StartSpec, TurnOutcome};

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
    a_turn_commit_appends_history_consumes_its_inbox_and_finishes_the_instance(&fresh().await).await;
    two_turns_built_on_the_same_history_commit_once(&fresh().await).await;
    queries_filter_by_status_prefix_and_page_and_purge_only_finished_instances(&fresh().await).await;
    id_reuse_matrix_every_existing_status_by_every_policy_form(&fresh().await).await;
    terminate_and_replace_with_a_finished_parent_drops_the_notice(&fresh().await).await;
    entity_steps_reach_live_orchestrations_and_start_free_ids(&fresh().await).await;
    run_entities(&fresh).await;
}

/// The entity checks that need no orchestration: queueing, steps, queries, removal, recovery.
pub(crate) async fn run_entities<F, Fut, St>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = St>,
    St: Store,
{
    entity_requests_create_rows_and_queue_in_order(&fresh().await).await;
    an_entity_step_consumes_its_rows_once(&fresh().await).await;
    entity_queries_filter_and_page(&fresh().await).await;
    only_empty_entities_are_removed(&fresh().await).await;
    entity_delivery_attempts_are_kept_until_a_step_commits(&fresh().await).await;
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

fn request(entity_id: &str, visible_at_ms: i64, name: &str) -> EntityMessage {
    EntityMessage { entity_id: entity_id.into(), visible_at_ms, event: events::event_raised(NOW, name.into(), None) }
}

/// A step of `entity_id` at `now_ms` that consumes `consumed` and leaves `state` and `lock`.
fn step(entity_id: &str, consumed: Vec<i64>, state: Option<&str>, lock: Lock, now_ms: i64) -> EntityCommit {
    EntityCommit {
        entity_id: entity_id.into(),
        effects: Effects { consumed, state: state.map(Into::into), lock, outgoing: Vec::new() },
        starts: Vec::new(),
        now_ms,
    }
}

fn held(owner: &str, section: &str) -> Lock {
    Lock::Held { owner: owner.into(), critical_section_id: section.into() }
}

fn every_entity() -> EntitySelection {
    EntitySelection { include_transient: true, page_size: 100, ..Default::default() }
}

async fn entity_ids(store: &dyn Store, filter: &EntitySelection) -> Vec<String> {
    store.query_entities(filter).await.expect("query entities").into_iter().map(|r| r.entity_id).collect()
}

async fn entity(store: &dyn Store, id: &str) -> Option<EntityRecord> {
    let only = EntitySelection { id: Some(id.into()), ..every_entity() };
    store.query_entities(&only).await.expect("query entities").pop()
}

async fn entity_requests_create_rows_and_queue_in_order(store: &dyn Store) {
    let messages =
        vec![request("@c@a", NOW, "one"), request("@c@b", NOW + 5, "two"), request("@c@a", NOW + 10, "three")];
    let queued = store.enqueue_entity(messages.clone(), NOW).await.expect("enqueue");
    assert_eq!(queued.len(), 3);
    assert!(queued.windows(2).all(|w| w[0].id < w[1].id), "queue ids grow in arrival order: {queued:?}");
    for (q, m) in queued.iter().zip(&messages) {
        assert_eq!((&q.entity_id, q.visible_at_ms, &q.event), (&m.entity_id, m.visible_at_ms, &m.event));
    }
    let a = entity(store, "@c@a").await.expect("a request creates the entity's row");
    assert_eq!((a.state, a.lock_owner, a.modified_at_ms, a.backlog), (None, None, NOW, 2));
    assert_eq!(entity(store, "@c@b").await.map(|b| b.backlog), Some(1));
    let stateful = EntitySelection { include_transient: false, ..every_entity() };
    assert!(entity_ids(store, &stateful).await.is_empty(), "entities without state are transient");
    // A request to an existing entity leaves its row as it is.
    store.enqueue_entity(vec![request("@c@a", NOW + 100, "four")], NOW + 100).await.expect("enqueue");
    let a = entity(store, "@c@a").await.expect("exists");
    assert_eq!((a.modified_at_ms, a.backlog), (NOW, 3));
    let recovered = store.recover_entities().await.expect("recover");
    assert_eq!(recovered.iter().map(|r| r.record.entity_id.as_str()).collect::<Vec<_>>(), ["@c@a", "@c@b"]);
    let queue: Vec<(i64, i64)> = recovered[0].messages.iter().map(|m| (m.id, m.visible_at_ms)).collect();
    assert_eq!(queue[..2], [(queued[0].id, NOW), (queued[2].id, NOW + 10)], "the queue comes back in id order");
    assert_eq!(queue.len(), 3);
    assert_eq!(recovered[0].messages[0].event, messages[0].event);
    assert_eq!(recovered[0].record.backlog, 3);
}

async fn an_entity_step_consumes_its_rows_once(store: &dyn Store) {
    let queued = store
        .enqueue_entity(vec![request("@c@a", NOW, "one"), request("@c@a", NOW, "two")], NOW)
        .await
        .expect("enqueue");
    let mut first = step("@c@a", vec![queued[0].id], Some("1"), held("o", "cs"), NOW + 1);
    let forward = events::event_raised(NOW, "fwd".into(), None);
    first.effects.outgoing.push(Outgoing::ToEntity {
        entity_id: "@c@b".into(),
        visible_at_ms: NOW - 5,
        event: forward.clone(),
    });
    let done = store.commit_entity(first.clone()).await.expect("commit");
    assert!(done.delivered.is_empty() && done.gone_owners.is_empty());
    assert_eq!(done.queued.len(), 1);
    let sent = &done.queued[0];
    assert_eq!(
        (sent.entity_id.as_str(), sent.visible_at_ms, &sent.event),
        ("@c@b", NOW + 1, &forward),
        "never queued in the past"
    );
    let a = entity(store, "@c@a").await.expect("exists");
    assert_eq!(
        (a.state.as_deref(), a.lock_owner.as_deref(), a.lock_section.as_deref(), a.modified_at_ms, a.backlog),
        (Some("1"), Some("o"), Some("cs"), NOW + 1, 1)
    );
    let recovered = store.recover_entities().await.expect("recover");
    assert_eq!(recovered.iter().map(|r| r.record.entity_id.as_str()).collect::<Vec<_>>(), ["@c@a", "@c@b"]);
    assert_eq!(recovered[0].messages.iter().map(|m| m.id).collect::<Vec<_>>(), [queued[1].id]);

    // The same rows again: the step ran on a stale queue, and nothing of it is stored.
    let mut stale = first;
    stale.effects.state = Some("2".into());
    stale.now_ms = NOW + 2;
    let refused = store.commit_entity(stale).await;
    assert!(matches!(refused, Err(StoreError::Conflict(ref id)) if id == "@c@a"), "{refused:?}");
    assert_eq!(entity(store, "@c@a").await.and_then(|a| a.state), Some("1".into()));
    assert_eq!(entity(store, "@c@b").await.map(|b| b.backlog), Some(1), "the refused step queued nothing");

    // Unchanged state keeps the modification time; a freed lock is stored as free.
    store.commit_entity(step("@c@a", vec![queued[1].id], Some("1"), Lock::Free, NOW + 3)).await.expect("commit");
    let a = entity(store, "@c@a").await.expect("exists");
    assert_eq!((a.lock_owner, a.lock_section, a.modified_at_ms, a.backlog), (None, None, NOW + 1, 0));
    let recovered = store.recover_entities().await.expect("recover");
    assert_eq!(
        recovered.iter().map(|r| r.record.entity_id.as_str()).collect::<Vec<_>>(),
        ["@c@b"],
        "an entity with neither lock nor queue needs no recovery"
    );
    // A step of an entity without a row (all its requests consumed elsewhere) creates it.
    store.commit_entity(step("@c@new", Vec::new(), Some("n"), Lock::Free, NOW + 4)).await.expect("commit");
    assert_eq!(entity(store, "@c@new").await.map(|e| (e.state, e.modified_at_ms)), Some((Some("n".into()), NOW + 4)));
}

async fn entity_delivery_attempts_are_kept_until_a_step_commits(store: &dyn Store) {
    let queued = store.enqueue_entity(vec![request("@c@p", NOW, "op")], NOW).await.expect("enqueue");
    let attempts = |r: Vec<RecoveredEntity>| r.iter().map(|e| e.delivery_attempts).collect::<Vec<_>>();
    assert_eq!(attempts(store.recover_entities().await.expect("recover")), [0]);
    store.record_entity_attempts("@c@p".into(), 2).await.expect("record");
    store.record_entity_attempts("@c@p".into(), 1).await.expect("record");
    store.record_entity_attempts("@c@unknown".into(), 5).await.expect("an unknown entity is skipped");
    assert_eq!(attempts(store.recover_entities().await.expect("recover")), [2], "counts only rise");
    store.enqueue_entity(vec![request("@c@p", NOW, "two")], NOW).await.expect("enqueue");
    store.commit_entity(step("@c@p", vec![queued[0].id], None, Lock::Free, NOW + 1)).await.expect("commit");
    assert_eq!(attempts(store.recover_entities().await.expect("recover")), [0], "a committed step resets the count");
}

async fn entity_queries_filter_and_page(store: &dyn Store) {
    let ids = ["@c@1", "@c@2", "@c@3", "@d@1", "@e%@1"];
    let queued =
        store.enqueue_entity(ids.iter().map(|id| request(id, NOW, "op")).collect(), NOW).await.expect("enqueue");
    for (q, at) in queued.iter().zip([NOW + 1, NOW + 1, 0, NOW + 2, NOW + 1]) {
        if at > 0 {
            store.commit_entity(step(&q.entity_id, vec![q.id], Some("s"), Lock::Free, at)).await.expect("commit");
        }
    }
    let c = EntitySelection { id_prefix: Some("@c@".into()), include_transient: false, ..every_entity() };
    assert_eq!(entity_ids(store, &c).await, ["@c@1", "@c@2"]);
    let with_transient = EntitySelection { include_transient: true, ..c.clone() };
    assert_eq!(entity_ids(store, &with_transient).await, ["@c@1", "@c@2", "@c@3"]);
    let literal = EntitySelection { id_prefix: Some("@e%".into()), ..every_entity() };
    assert_eq!(entity_ids(store, &literal).await, ["@e%@1"], "a prefix is literal text");
    let wildcard = EntitySelection { id_prefix: Some("@_".into()), ..every_entity() };
    assert!(entity_ids(store, &wildcard).await.is_empty(), "'_' is no wildcard");
    let one = EntitySelection { id: Some("@c@2".into()), ..every_entity() };
    assert_eq!(entity_ids(store, &one).await, ["@c@2"]);
    let late = EntitySelection { modified_from_ms: Some(NOW + 2), include_transient: false, ..every_entity() };
    assert_eq!(entity_ids(store, &late).await, ["@d@1"]);
    let early = EntitySelection { modified_to_ms: Some(NOW + 1), include_transient: false, ..every_entity() };
    assert_eq!(entity_ids(store, &early).await, ["@c@1", "@c@2", "@e%@1"]);
    let page = EntitySelection { page_size: 1, after_id: Some("@c@1".into()), ..with_transient };
    assert_eq!(entity_ids(store, &page).await, ["@c@2"], "pages continue after the exclusive cursor");
    let empty_page = EntitySelection { page_size: 0, ..every_entity() };
    assert_eq!(entity_ids(store, &empty_page).await, ["@c@1"], "a page holds at least one entity");
    let all = store.query_entities(&every_entity()).await.expect("query");
    assert_eq!(all.iter().map(|r| r.backlog).collect::<Vec<_>>(), [0, 0, 1, 0, 0]);
}

async fn only_empty_entities_are_removed(store: &dyn Store) {
    let ids = ["@c@queued", "@c@state", "@c@locked", "@c@empty"];
    let queued =
        store.enqueue_entity(ids.iter().map(|id| request(id, NOW, "op")).collect(), NOW).await.expect("enqueue");
    store.commit_entity(step("@c@state", vec![queued[1].id], Some("s"), Lock::Free, NOW)).await.expect("commit");
    store.commit_entity(step("@c@locked", vec![queued[2].id], None, held("o", "cs"), NOW)).await.expect("commit");
    store.commit_entity(step("@c@empty", vec![queued[3].id], None, Lock::Free, NOW)).await.expect("commit");
    let mut asked: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    asked.extend(["@c@missing".to_string(), "@c@empty".to_string()]);
    assert_eq!(store.remove_empty_entities(asked.clone()).await.expect("remove"), 1);
    assert_eq!(entity_ids(store, &every_entity()).await, ["@c@locked", "@c@queued", "@c@state"]);
    assert_eq!(store.remove_empty_entities(asked).await.expect("remove"), 0);
}

/// Needs orchestrations: deliveries from entity steps and orchestrations they start.
async fn entity_steps_reach_live_orchestrations_and_start_free_ids(store: &dyn Store) {
    create(store, "o1").await;
    let start = create(store, "done").await;
    store.commit_turn(turn("done", 0, vec![start.inbox_id], S::Completed)).await.expect("finish");
    let queued = store.enqueue_entity(vec![request("@c@a", NOW, "op")], NOW).await.expect("enqueue");
    let grant = events::sidecar_event(
        0,
        EventType::EntityLockGranted(EntityLockGrantedEvent { critical_section_id: "cs".into() }),
    );
    let reply = events::event_raised(0, "reply".into(), None);
    let to = |id: &str, execution: Option<&str>, event: &duro_proto::HistoryEvent| Outgoing::ToOrchestration {
        instance_id: id.into(),
        execution_id: execution.map(Into::into),
        event: event.clone(),
    };
    let mut commit = step("@c@a", vec![queued[0].id], Some("1"), Lock::Free, NOW + 7);
    commit.effects.outgoing = vec![
        to("o1", None, &reply),
        to("o1", Some("o1-e0"), &reply),
        to("done", None, &grant),
        to("ghost", None, &grant),
        to("ghost", None, &reply),
        to("o1", Some("o1-e1"), &grant),
    ];
    commit.starts = vec![new_instance("o1"), new_instance("fresh")];
    let done = store.commit_entity(commit).await.expect("commit");
    assert_eq!(done.gone_owners, ["done", "ghost"], "grants to ended or unknown orchestrations come back");
    let delivered: Vec<(&str, Priority)> =
        done.delivered.iter().map(|d| (d.instance_id.as_str(), d.priority)).collect();
    assert_eq!(delivered, [("o1", Priority::Normal), ("o1", Priority::Normal), ("fresh", Priority::Start)]);
    let stamped = crate::core::time::from_ms(NOW + 7);
    assert!(done.delivered[..2].iter().all(|d| d.event.timestamp == Some(stamped)), "stamped with the step's time");
    let inbox: Vec<i64> = store.load_inbox("o1").await.expect("inbox").rows.iter().map(|d| d.inbox_id).collect();
    assert_eq!(inbox[1..], [done.delivered[0].inbox_id, done.delivered[1].inbox_id]);
    let o1 = store.load_instance("o1").await.expect("load").expect("exists");
    assert_eq!(o1.execution_id, "o1-e1", "a start for a taken id changes nothing");
    let fresh = store.load_instance("fresh").await.expect("load").expect("created");
    assert_eq!(fresh.status, S::Pending);
    let rows = store.load_inbox("fresh").await.expect("inbox").rows;
    assert_eq!(rows.iter().map(|d| d.inbox_id).collect::<Vec<_>>(), [done.delivered[2].inbox_id]);
}

// ----- moved from the SQLite store's tests: backend-neutral checks ---------------------------

pub(crate) fn new_at(id: &str, now: i64) -> NewInstance {
    NewInstance {
        spec: StartSpec {
            instance_id: id.to_string(),
            execution_id: format!("{id}-exec"),
            name: "Orch".into(),
            version: None,
            input: Some("1".into()),
            parent: None,
            scheduled_start_ms: None,
            parent_trace_context: None,
            tags: HashMap::new(),
        },
        created_at_ms: now,
        visible_at_ms: now,
        parent_task: None,
    }
}

pub(crate) fn finish(id: &str, consumed: Vec<i64>, status: OrchestrationStatus, now: i64) -> TurnCommit {
    let mut outcome = TurnOutcome::unchanged(status, 0);
    outcome.append = vec![events::orchestrator_started(now)];
    outcome.output = Some("\"done\"".into());
    TurnCommit {
        instance_id: id.into(),
        execution_id: format!("{id}-exec"),
        history_len: 0,
        consumed,
        outcome,
        now_ms: now,
    }
}

/// A turn built on `history_len` events that appends one and keeps the instance running.
fn turn_step(id: &str, history_len: usize, consumed: Vec<i64>, now: i64) -> TurnCommit {
    let mut outcome = TurnOutcome::unchanged(OrchestrationStatus::Running, 0);
    outcome.append = vec![events::orchestrator_started(now)];
    TurnCommit {
        instance_id: id.into(),
        execution_id: format!("{id}-exec"),
        history_len,
        consumed,
        outcome,
        now_ms: now,
    }
}

async fn a_turn_commit_appends_history_consumes_its_inbox_and_finishes_the_instance(store: &dyn Store) {
    let CreateResult::Created(start) = store.create_instance(new_at("a", 1), IdReuse::terminal()).await.unwrap() else {
        panic!("not created")
    };
    store.commit_turn(finish("a", vec![start.start.inbox_id], OrchestrationStatus::Completed, 5)).await.unwrap();
    let rec = store.load_instance("a").await.unwrap().unwrap();
    assert_eq!(rec.status, OrchestrationStatus::Completed);
    assert_eq!(rec.output.as_deref(), Some("\"done\""));
    assert_eq!(rec.completed_at_ms, Some(5));
    assert_eq!(store.load_history("a").await.unwrap().len(), 1);
    assert!(store.recover().await.unwrap().inbox.is_empty());
    // A second commit against the finished instance conflicts instead of appending.
    let again = store.commit_turn(finish("a", vec![], OrchestrationStatus::Completed, 6)).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
    // Events for a finished instance are dropped.
    let late = Message::now("a", None, events::wake_up(7), 7);
    assert!(store.enqueue(late).await.unwrap().is_none());
}

async fn two_turns_built_on_the_same_history_commit_once(store: &dyn Store) {
    let CreateResult::Created(start) = store.create_instance(new_at("a", 1), IdReuse::terminal()).await.unwrap() else {
        panic!("not created")
    };
    let late = store.enqueue(Message::now("a", None, events::wake_up(2), 2)).await.unwrap().unwrap();
    store.commit_turn(turn_step("a", 0, vec![start.start.inbox_id], 3)).await.unwrap();
    // A second turn built on the same (now stale) empty history: refused, nothing stored.
    let stale = store.commit_turn(turn_step("a", 0, vec![late.inbox_id], 4)).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    assert_eq!(store.load_history("a").await.unwrap().len(), 1);
    let rec = store.load_instance("a").await.unwrap().unwrap();
    assert_eq!(rec.updated_at_ms, 3);
    let inbox: Vec<i64> = store.recover().await.unwrap().inbox.iter().map(|d| d.inbox_id).collect();
    assert_eq!(inbox, [late.inbox_id], "the stale turn consumed nothing");
    // Claiming a history longer than the stored one is refused too; the right length commits.
    let ahead = store.commit_turn(turn_step("a", 2, vec![late.inbox_id], 5)).await;
    assert!(matches!(ahead, Err(StoreError::Conflict(_))), "{ahead:?}");
    store.commit_turn(turn_step("a", 1, vec![late.inbox_id], 6)).await.unwrap();
    assert_eq!(store.load_history("a").await.unwrap().len(), 2);
}

async fn queries_filter_by_status_prefix_and_page_and_purge_only_finished_instances(store: &dyn Store) {
    for (i, id) in ["job-1", "job-2", "job-3", "other-1"].iter().enumerate() {
        let CreateResult::Created(d) =
            store.create_instance(new_at(id, 10 + i as i64), IdReuse::terminal()).await.unwrap()
        else {
            panic!("not created")
        };
        if *id != "job-2" {
            store
                .commit_turn(finish(id, vec![d.start.inbox_id], OrchestrationStatus::Completed, 100 + i as i64))
                .await
                .unwrap();
        }
    }
    let ids = |v: Vec<InstanceRecord>| v.into_iter().map(|r| r.instance_id).collect::<Vec<_>>();
    let page = store
        .query_instances(&InstanceFilter {
            instance_id_prefix: Some("job-".into()),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(page), ["job-1", "job-2"]);
    let next = store
        .query_instances(&InstanceFilter {
            instance_id_prefix: Some("job-".into()),
            page_size: 2,
            after_instance_id: Some("job-2".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(next), ["job-3"]);
    let pending = store
        .query_instances(&InstanceFilter {
            statuses: vec![OrchestrationStatus::Pending],
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(pending), ["job-2"]);
    let created = store
        .query_instances(&InstanceFilter {
            created_from_ms: Some(11),
            created_to_ms: Some(13),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(created), ["job-2", "job-3"]);
    let done = store
        .list_completed_ids(&CompletedFilter {
            page_size: 10,
            after: Some((100, "job-1".into())),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(done, [(102, "job-3".to_string()), (103, "other-1".to_string())]);
    // Newest first (the dashboard), paged by (created, id); names; counts by status.
    let newest = |before: Option<(i64, String)>| InstanceFilter {
        page_size: 2,
        order: QueryOrder::NewestFirst { before },
        ..Default::default()
    };
    assert_eq!(ids(store.query_instances(&newest(None)).await.unwrap()), ["other-1", "job-3"]);
    let next = store.query_instances(&newest(Some((12, "job-3".into())))).await.unwrap();
    assert_eq!(ids(next), ["job-2", "job-1"]);
    let by_name = InstanceFilter { name: Some("nobody".into()), page_size: 10, ..Default::default() };
    assert!(store.query_instances(&by_name).await.unwrap().is_empty());
    let by_name = InstanceFilter { name: Some("Orch".into()), page_size: 10, ..Default::default() };
    assert_eq!(store.query_instances(&by_name).await.unwrap().len(), 4);
    assert_eq!(
        store.count_by_status().await.unwrap(),
        [(OrchestrationStatus::Completed, 3), (OrchestrationStatus::Pending, 1)]
    );
    let purged = store
        .purge(PurgeSelection::Filter { created_from_ms: None, created_to_ms: None, statuses: vec![] }, false)
        .await
        .unwrap();
    assert_eq!(purged, 3);
    let left = store.query_instances(&InstanceFilter { page_size: 10, ..Default::default() }).await.unwrap();
    assert_eq!(ids(left), ["job-2"]);
}

// ----- id reuse: every existing status × policy ------------------------------------------

/// A far-future scheduled start (a PENDING instance that will not run soon).
const FUTURE: i64 = 4_000_000_000_000;

/// The instance `id` as a child of running parent `p` (task 7), in `status`. Live ones
/// have an unconsumed future inbox row (scheduled start or timer) and, once started, a
/// queued activity, so a replacement must delete them.
async fn existing(store: &dyn Store, id: &str, status: Option<OrchestrationStatus>) {
    use OrchestrationStatus as S;
    let Some(status) = status else { return };
    let mut new = new_at(id, 10);
    new.spec.parent = Some(duro_proto::ParentInstanceInfo {
        task_scheduled_id: 7,
        orchestration_instance: Some(duro_proto::OrchestrationInstance {
            instance_id: "p".into(),
            execution_id: Some("p-exec".into()),
        }),
        ..Default::default()
    });
    if status == S::Pending {
        new.spec.scheduled_start_ms = Some(FUTURE);
        new.visible_at_ms = FUTURE;
    }
    let CreateResult::Created(c) = store.create_instance(new, IdReuse::Replace(vec![])).await.unwrap() else {
        panic!("{id} not created")
    };
    if status == S::Pending {
        return;
    }
    let mut outcome = TurnOutcome::unchanged(status, 0);
    outcome.append = vec![events::orchestrator_started(20)];
    if !is_terminal(status) {
        outcome.activities = vec![ActivityRequest {
            name: "A".into(),
            orchestration_instance: Some(duro_proto::OrchestrationInstance {
                instance_id: id.into(),
                execution_id: Some(format!("{id}-exec")),
            }),
            ..Default::default()
        }];
        let timer =
            Message { visible_at_ms: FUTURE, ..Message::now(id, Some(format!("{id}-exec")), events::wake_up(20), 20) };
        outcome.messages = vec![timer];
    }
    let commit = TurnCommit {
        instance_id: id.into(),
        execution_id: format!("{id}-exec"),
        history_len: 0,
        consumed: vec![c.start.inbox_id],
        outcome,
        now_ms: 20,
    };
    store.commit_turn(commit).await.unwrap();
    assert_eq!(store.load_instance(id).await.unwrap().unwrap().status, status);
}

/// The whole matrix of [`IdReuse`]'s table, written out by hand (not derived from
/// `decide`). Columns: no instance, PENDING (scheduled in the future), RUNNING,
/// SUSPENDED, COMPLETED, FAILED, TERMINATED. `c` created, `k` kept (OK, untouched),
/// `x` AlreadyExists (untouched), `r` finished instance replaced, `t` live instance
/// terminated (its parent told) and replaced.
async fn id_reuse_matrix_every_existing_status_by_every_policy_form(store: &dyn Store) {
    use LegacyReuseAction::*;
    use OrchestrationStatus as S;
    let all = || vec![S::Pending, S::Running, S::Suspended, S::Completed, S::Failed, S::Terminated];
    let legacy = |statuses: Vec<S>, action| IdReuse::Legacy { statuses, action };
    let rows: Vec<(&str, IdReuse, &str)> = vec![
        ("no policy", IdReuse::terminal(), "cxxxrrr"),
        ("replaceable []", IdReuse::Replace(vec![]), "cxxxxxx"),
        ("replaceable [RUNNING]", IdReuse::Replace(vec![S::Running]), "cxtxxxx"),
        (
            "replaceable [PENDING,RUNNING,SUSPENDED]",
            IdReuse::Replace(vec![S::Pending, S::Running, S::Suspended]),
            "ctttxxx",
        ),
        ("replaceable [COMPLETED,FAILED]", IdReuse::Replace(vec![S::Completed, S::Failed]), "cxxxrrx"),
        ("replaceable all", IdReuse::Replace(all()), "ctttrrr"),
        // Issue 13: this used to replace (wipe) PENDING, RUNNING, SUSPENDED and TERMINATED.
        ("legacy [COMPLETED,FAILED] TERMINATE", legacy(vec![S::Completed, S::Failed], Terminate), "cxxxrrx"),
        ("legacy [RUNNING] TERMINATE", legacy(vec![S::Running], Terminate), "cxtxxxx"),
        ("legacy [] TERMINATE", legacy(vec![], Terminate), "cxxxxxx"),
        ("legacy all TERMINATE", legacy(all(), Terminate), "ctttrrr"),
        ("legacy [RUNNING,PENDING] IGNORE", legacy(vec![S::Running, S::Pending], Ignore), "ckkxxxx"),
        ("legacy [COMPLETED] IGNORE", legacy(vec![S::Completed], Ignore), "cxxxkxx"),
        ("legacy all IGNORE", legacy(all(), Ignore), "ckkkkkk"),
        ("legacy all ERROR", legacy(all(), Error), "cxxxxxx"),
        ("legacy [RUNNING] ERROR", legacy(vec![S::Running], Error), "cxxxxxx"),
    ];
    let columns = [
        None,
        Some(S::Pending),
        Some(S::Running),
        Some(S::Suspended),
        Some(S::Completed),
        Some(S::Failed),
        Some(S::Terminated),
    ];

    let CreateResult::Created(p) = store.create_instance(new_at("p", 1), IdReuse::terminal()).await.unwrap() else {
        panic!("parent not created")
    };
    let mut running = finish("p", vec![p.start.inbox_id], S::Running, 2);
    running.outcome.output = None;
    store.commit_turn(running).await.unwrap();

    let mut notices = 0;
    for (r, (name, policy, expected)) in rows.iter().enumerate() {
        assert_eq!(expected.len(), columns.len(), "{name}");
        for (col, (status, want)) in columns.iter().zip(expected.chars()).enumerate() {
            let id = format!("i-{r}-{col}");
            let cell = format!("{name} × {status:?} (expected '{want}')");
            existing(store, &id, *status).await;
            let before = store.load_instance(&id).await.unwrap();
            let history_before = store.load_history(&id).await.unwrap();
            let mut new = new_at(&id, 30);
            new.spec.execution_id = format!("{id}-new");
            new.spec.input = Some("\"new\"".into());
            let result = store.create_instance(new, policy.clone()).await.unwrap();
            let after = store.load_instance(&id).await.unwrap().unwrap();
            let rows_of_old = store.recover().await.unwrap();
            let old_exec = format!("{id}-exec");
            let old_inbox = rows_of_old.inbox.iter().filter(|d| d.execution_id.as_deref() == Some(&old_exec)).count();
            let old_activities = rows_of_old
                .activities
                .iter()
                .filter(|a| {
                    a.request.orchestration_instance.as_ref().and_then(|o| o.execution_id.as_deref()) == Some(&old_exec)
                })
                .count();
            match want {
                'c' | 'r' | 't' => {
                    let CreateResult::Created(created) = result else { panic!("{cell}: got {result:?}") };
                    assert_eq!(created.replaced, *status, "{cell}");
                    assert_eq!(created.start.execution_id.as_deref(), Some(format!("{id}-new").as_str()), "{cell}");
                    assert_eq!(after.execution_id, format!("{id}-new"), "{cell}");
                    assert_eq!(after.status, S::Pending, "{cell}");
                    assert_eq!(after.input.as_deref(), Some("\"new\""), "{cell}");
                    assert_eq!(after.parent_instance_id, None, "{cell}: the new instance has no parent");
                    assert!(store.load_history(&id).await.unwrap().is_empty(), "{cell}: old history must be gone");
                    assert_eq!(
                        (old_inbox, old_activities),
                        (0, 0),
                        "{cell}: old execution's pending work must be gone"
                    );
                    if want == 't' {
                        assert!(!is_terminal(status.unwrap()), "{cell}: 't' is for live instances");
                        assert_eq!(created.delivered.len(), 1, "{cell}: the parent must be told");
                        let d = &created.delivered[0];
                        assert_eq!(
                            (d.instance_id.as_str(), d.execution_id.as_deref()),
                            ("p", Some("p-exec")),
                            "{cell}"
                        );
                        match &d.event.event_type {
                            Some(duro_proto::history_event::EventType::SubOrchestrationInstanceFailed(f)) => {
                                assert_eq!(f.task_scheduled_id, 7, "{cell}");
                                let details = f.failure_details.as_ref().expect("details");
                                assert_eq!(details.error_type, "TaskTerminated", "{cell}");
                                assert!(details.error_message.contains(&id), "{cell}: {}", details.error_message);
                            }
                            other => panic!("{cell}: parent got {other:?}"),
                        }
                        notices += 1;
                    } else {
                        assert!(created.delivered.is_empty(), "{cell}: nothing to tell (finished or no instance)");
                    }
                    if want == 'c' {
                        assert!(before.is_none(), "{cell}");
                    }
                    if want == 'r' {
                        assert!(is_terminal(status.unwrap()), "{cell}: 'r' is for finished instances");
                    }
                }
                'k' | 'x' => {
                    match (want, &result) {
                        ('k', CreateResult::Kept) => {}
                        ('x', CreateResult::AlreadyExists(s)) => assert_eq!(Some(*s), *status, "{cell}"),
                        _ => panic!("{cell}: got {result:?}"),
                    }
                    assert_eq!(Some(&after), before.as_ref(), "{cell}: the existing instance must be untouched");
                    assert_eq!(store.load_history(&id).await.unwrap(), history_before, "{cell}");
                    if !is_terminal(status.unwrap()) {
                        assert!(old_inbox >= 1, "{cell}: the live instance keeps its pending work");
                    }
                }
                other => panic!("bad expectation {other}"),
            }
        }
    }
    // Every terminated child's notice sits in the parent's inbox.
    let in_parent = store
        .recover()
        .await
        .unwrap()
        .inbox
        .iter()
        .filter(|d| {
            d.instance_id == "p"
                && matches!(
                    d.event.event_type,
                    Some(duro_proto::history_event::EventType::SubOrchestrationInstanceFailed(_))
                )
        })
        .count();
    assert_eq!(in_parent, notices);
    assert_eq!(notices, 1 + 3 + 3 + 1 + 3, "t cells in the table");
}

/// A live instance whose parent has finished (or is gone) is still terminated and
/// replaced; the notice is dropped like any message to a finished instance.
async fn terminate_and_replace_with_a_finished_parent_drops_the_notice(store: &dyn Store) {
    existing(store, "orphan", Some(OrchestrationStatus::Running)).await; // parent "p" never existed
    let mut new = new_at("orphan", 30);
    new.spec.execution_id = "orphan-new".into();
    let result = store.create_instance(new, IdReuse::Replace(vec![OrchestrationStatus::Running])).await.unwrap();
    let CreateResult::Created(created) = result else { panic!("{result:?}") };
    assert_eq!(created.replaced, Some(OrchestrationStatus::Running));
    assert!(created.delivered.is_empty());
    assert_eq!(store.load_instance("orphan").await.unwrap().unwrap().execution_id, "orphan-new");
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
