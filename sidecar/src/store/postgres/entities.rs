//! The entity methods of the [`Store`](super::Store) trait on PostgreSQL: the `entities` rows
//! (state, lock) and the `entity_messages` queue, with the semantics of
//! `sqlite/entities.rs`.
//!
//! Locking, so that concurrent writers from several sidecars never lose a queued request and
//! never wait on each other in a cycle:
//! - instance rows before entity rows, each set in id order in one statement;
//! - every insert into `entity_messages` first upserts its entity's row with a row lock
//!   ([`lock_entities`]), and [`remove_empty_entities`] locks the rows `FOR UPDATE` before it
//!   looks for queued requests in a later statement (a new READ COMMITTED snapshot): a removal
//!   therefore either sees a concurrently queued request or finishes before the request
//!   recreates the row.
//!
//! Deliveries to orchestrations and the orchestrations a step starts go through `write.rs`
//! (`deliver`, `create`), so they follow the same locking and notice rules as turns.

use std::collections::HashMap;

use sqlx_core::query::query;
use sqlx_core::query_builder::QueryBuilder;
use sqlx_core::row::Row;
use sqlx_postgres::{PgConnection, PgRow, Postgres};

use super::*;
use crate::core::entity::{EntityMessage, Lock, Outgoing};
use crate::store::codec::{decode_event, encode_event};

pub(super) async fn enqueue_entity(
    s: &PgStore,
    messages: Vec<EntityMessage>,
    now_ms: i64,
) -> Result<Vec<QueuedEntityMessage>, StoreError> {
    let mut tx = s.pool.begin().await?;
    let mut notes = Notices::default();
    let ids: Vec<String> = messages.iter().map(|m| m.entity_id.clone()).collect();
    lock_entities(&mut tx, ids, now_ms).await?;
    let mut queued = Vec::with_capacity(messages.len());
    for m in &messages {
        queued.push(insert_message(&mut tx, m, &mut notes).await?);
    }
    let after = notes.send(&mut tx, s).await?;
    tx.commit().await?;
    after.apply(s);
    Ok(queued)
}

pub(super) async fn commit_entity(s: &PgStore, t: EntityCommit) -> Result<EntityCommitResult, StoreError> {
    let fx = &t.effects;
    let mut tx = s.pool.begin().await?;
    let mut notes = Notices::default();
    // Every instance this step may deliver to or create, locked before any entity row.
    let instances = fx
        .outgoing
        .iter()
        .filter_map(|o| match o {
            Outgoing::ToOrchestration { instance_id, .. } => Some(instance_id.clone()),
            _ => None,
        })
        .chain(t.starts.iter().map(|n| n.spec.instance_id.clone()))
        .collect();
    let instances: Vec<String> = instances;
    lock_instances(&mut tx, &instances).await?;
    let entities = fx
        .outgoing
        .iter()
        .filter_map(|o| match o {
            Outgoing::ToEntity { entity_id, .. } => Some(entity_id.clone()),
            _ => None,
        })
        .chain([t.entity_id.clone()])
        .collect();
    lock_entities(&mut tx, entities, t.now_ms).await?;

    // A consumed row that is gone means the step ran on a stale queue (as in SQLite, a
    // repeated id counts as gone the second time).
    let deleted = query::<Postgres>("DELETE FROM entity_messages WHERE entity_id = $1 AND id = ANY($2)")
        .bind(&t.entity_id)
        .bind(&fx.consumed)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if usize::try_from(deleted).ok() != Some(fx.consumed.len()) {
        return Err(StoreError::Conflict(t.entity_id.clone()));
    }
    let (owner, section) = match &fx.lock {
        Lock::Free => (None, None),
        Lock::Held { owner, critical_section_id } => (Some(owner.as_str()), Some(critical_section_id.as_str())),
    };
    query::<Postgres>(
        "UPDATE entities SET modified_at = CASE WHEN state IS NOT DISTINCT FROM $1::text THEN modified_at ELSE $2 END, \
         state = $1::text, lock_owner = $3, lock_section = $4, delivery_attempts = 0 WHERE entity_id = $5",
    )
    .bind(&fx.state)
    .bind(t.now_ms)
    .bind(owner)
    .bind(section)
    .bind(&t.entity_id)
    .execute(&mut *tx)
    .await?;

    let mut out = EntityCommitResult::default();
    for o in &fx.outgoing {
        match EntityOutgoing::of(o, t.now_ms) {
            EntityOutgoing::Orchestration { message, grant } => {
                match write::deliver(&mut tx, &mut notes, &message).await? {
                    Some(d) => out.delivered.push(d),
                    None if grant => out.gone_owners.push(message.target.clone()),
                    None => {}
                }
            }
            EntityOutgoing::Entity(m) => out.queued.push(insert_message(&mut tx, &m, &mut notes).await?),
            EntityOutgoing::Start => {}
        }
    }
    for new in &t.starts {
        // Created only if the id is free: an empty reuse list refuses every existing instance.
        if let CreateResult::Created(created) =
            write::create(&mut tx, &mut notes, new, &IdReuse::Replace(vec![])).await?
        {
            out.delivered.push(created.start);
        }
    }
    let after = notes.send(&mut tx, s).await?;
    tx.commit().await?;
    after.apply(s);
    Ok(out)
}

pub(super) async fn remove_empty_entities(s: &PgStore, ids: Vec<String>) -> Result<u32, StoreError> {
    let mut tx = s.pool.begin().await?;
    // Lock first, look for queued requests in the next statement (see the module doc).
    query::<Postgres>("SELECT entity_id FROM entities WHERE entity_id = ANY($1) ORDER BY entity_id FOR UPDATE")
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
    let removed = query::<Postgres>(
        "DELETE FROM entities WHERE entity_id = ANY($1) AND state IS NULL AND lock_owner IS NULL \
         AND NOT EXISTS (SELECT 1 FROM entity_messages m WHERE m.entity_id = entities.entity_id)",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(u32::try_from(removed).unwrap_or(u32::MAX))
}

pub(super) async fn record_entity_attempts(s: &PgStore, entity_id: String, attempts: u32) -> Result<(), StoreError> {
    // One row, its own transaction: no lock order to keep with other writers.
    query::<Postgres>("UPDATE entities SET delivery_attempts = GREATEST(delivery_attempts, $1) WHERE entity_id = $2")
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(&entity_id)
        .execute(&s.pool)
        .await?;
    Ok(())
}

const COLUMNS: &str = "e.entity_id, e.state, e.lock_owner, e.lock_section, e.modified_at, \
     (SELECT COUNT(*) FROM entity_messages m WHERE m.entity_id = e.entity_id) AS backlog";

fn record(r: &PgRow) -> Result<EntityRecord, StoreError> {
    let backlog: i64 = r.try_get("backlog")?;
    Ok(EntityRecord {
        entity_id: r.try_get("entity_id")?,
        state: r.try_get("state")?,
        lock_owner: r.try_get("lock_owner")?,
        lock_section: r.try_get("lock_section")?,
        modified_at_ms: r.try_get("modified_at")?,
        backlog: u32::try_from(backlog).unwrap_or(u32::MAX),
    })
}

pub(super) async fn query_entities(s: &PgStore, f: &EntitySelection) -> Result<Vec<EntityRecord>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM entities e WHERE TRUE"));
    if let Some(id) = &f.id {
        q.push(" AND e.entity_id = ").push_bind(id.clone());
    }
    if let Some(prefix) = &f.id_prefix {
        // The range bound lets the primary key's index serve the prefix (ids are COLLATE "C").
        q.push(" AND e.entity_id >= ").push_bind(prefix.clone());
        q.push(" AND starts_with(e.entity_id, ").push_bind(prefix.clone()).push(")");
    }
    if let Some(from) = f.modified_from_ms {
        q.push(" AND e.modified_at >= ").push_bind(from);
    }
    if let Some(to) = f.modified_to_ms {
        q.push(" AND e.modified_at <= ").push_bind(to);
    }
    if !f.include_transient {
        q.push(" AND e.state IS NOT NULL");
    }
    if let Some(after) = &f.after_id {
        q.push(" AND e.entity_id > ").push_bind(after.clone());
    }
    q.push(" ORDER BY e.entity_id LIMIT ").push_bind(i64::from(f.page_size.max(1)));
    q.build().fetch_all(&s.pool).await?.iter().map(record).collect()
}

pub(super) async fn recover_entities(s: &PgStore) -> Result<Vec<RecoveredEntity>, StoreError> {
    // One snapshot, so every backlog count matches the queue returned with it.
    let mut tx = s.pool.begin().await?;
    query::<Postgres>("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let records: Vec<(EntityRecord, u32)> = query::<Postgres>(&format!(
        "SELECT {COLUMNS}, e.delivery_attempts FROM entities e WHERE e.lock_owner IS NOT NULL \
         OR EXISTS (SELECT 1 FROM entity_messages m WHERE m.entity_id = e.entity_id) ORDER BY e.entity_id"
    ))
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| {
        let attempts: i32 = r.try_get("delivery_attempts")?;
        Ok((record(r)?, u32::try_from(attempts).unwrap_or(0)))
    })
    .collect::<Result<_, StoreError>>()?;
    let rows = query::<Postgres>(
        "SELECT m.id, m.entity_id, m.visible_at, m.event FROM entity_messages m \
         JOIN entities e ON e.entity_id = m.entity_id ORDER BY m.id",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut queues: HashMap<String, Vec<QueuedEntityMessage>> = HashMap::new();
    for r in &rows {
        let event: Vec<u8> = r.try_get("event")?;
        let m = QueuedEntityMessage {
            id: r.try_get("id")?,
            entity_id: r.try_get("entity_id")?,
            visible_at_ms: r.try_get("visible_at")?,
            event: decode_event(&event)?,
        };
        queues.entry(m.entity_id.clone()).or_default().push(m);
    }
    Ok(records
        .into_iter()
        .map(|(record, delivery_attempts)| {
            let messages = queues.remove(&record.entity_id).unwrap_or_default();
            RecoveredEntity { record, messages, delivery_attempts }
        })
        .collect())
}

/// Makes sure every entity in `ids` has a row (a request to a new entity creates it) and
/// locks those rows, in id order. Must precede every insert into `entity_messages`.
pub(super) async fn lock_entities(tx: &mut PgConnection, mut ids: Vec<String>, now_ms: i64) -> Result<(), StoreError> {
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    // DO UPDATE (to the same value) rather than DO NOTHING: only an update takes the row lock.
    query::<Postgres>(
        "INSERT INTO entities (entity_id, modified_at) SELECT id, $2 FROM unnest($1::text[]) AS id ORDER BY id \
         ON CONFLICT (entity_id) DO UPDATE SET modified_at = entities.modified_at",
    )
    .bind(&ids)
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Queues one request; its entity's row must be locked already ([`lock_entities`]).
pub(super) async fn insert_message(
    tx: &mut PgConnection,
    m: &EntityMessage,
    notes: &mut Notices,
) -> Result<QueuedEntityMessage, StoreError> {
    let id: i64 = query::<Postgres>(
        "INSERT INTO entity_messages (entity_id, visible_at, event) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(&m.entity_id)
    .bind(m.visible_at_ms)
    .bind(encode_event(&m.event))
    .fetch_one(&mut *tx)
    .await?
    .try_get("id")?;
    notes.entity(m.visible_at_ms, &m.entity_id);
    Ok(QueuedEntityMessage {
        id,
        entity_id: m.entity_id.clone(),
        visible_at_ms: m.visible_at_ms,
        event: m.event.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use sqlx_postgres::PgListener;

    use super::*;
    use crate::core::events;
    use crate::core::Priority;
    use duro_proto::history_event::EventType;

    const NOW: i64 = 1_700_000_000_000;

    async fn open(pg: &duro_testkit::Postgres) -> PgStore {
        PgStore::open(PgOptions {
            url: pg.url().to_string(),
            hub: pg.fresh_hub(),
            owner: "entities".into(),
            lease: Duration::from_secs(30),
            max_connections: 4,
            require_lease: false,
        })
        .await
        .expect("open store")
    }

    /// The notifications that arrive within a moment, sorted.
    async fn drain(listener: &mut PgListener) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await {
            out.push(n.payload().to_string());
        }
        out.sort();
        out
    }

    fn request(entity_id: &str, visible_at_ms: i64) -> EntityMessage {
        EntityMessage {
            entity_id: entity_id.into(),
            visible_at_ms,
            event: events::event_raised(NOW, "op".into(), None),
        }
    }

    /// Deliveries, starts and notifications of an entity step.
    #[tokio::test]
    async fn entity_steps_deliver_start_and_notify() {
        let pg = duro_testkit::Postgres::start();
        let s = open(&pg).await;
        for id in ["o1", "done"] {
            let new = NewInstance::simple(id, &format!("{id}-e1"), "Orch", None, NOW);
            s.create_instance(new, IdReuse::terminal()).await.expect("create");
        }
        let mut tx = s.pool.begin().await.expect("begin");
        query::<Postgres>("UPDATE instances SET status = $1 WHERE instance_id = 'done'")
            .bind(OrchestrationStatus::Completed as i32)
            .execute(&mut *tx)
            .await
            .expect("finish");
        tx.commit().await.expect("commit");
        let mut listener = PgListener::connect_with(&s.pool).await.expect("listen");
        listener.listen(&s.channel()).await.expect("listen");

        let queued = enqueue_entity(&s, vec![request("@c@a", NOW), request("@c@a", NOW)], NOW).await.expect("enqueue");
        assert_eq!(drain(&mut listener).await, [format!("e {NOW} @c@a")], "one notification per distinct payload");

        let grant = events::sidecar_event(
            0,
            EventType::EntityLockGranted(duro_proto::EntityLockGrantedEvent { critical_section_id: "cs".into() }),
        );
        let to = |id: &str, event: &HistoryEvent| Outgoing::ToOrchestration {
            instance_id: id.into(),
            execution_id: None,
            event: event.clone(),
        };
        let later = NOW + 7;
        let commit = EntityCommit {
            entity_id: "@c@a".into(),
            effects: crate::core::entity::Effects {
                consumed: vec![queued[0].id],
                state: Some("1".into()),
                lock: Lock::Free,
                outgoing: vec![
                    to("o1", &grant),
                    to("done", &grant),
                    to("ghost", &grant),
                    Outgoing::ToEntity { entity_id: "@c@b".into(), visible_at_ms: 0, event: grant.clone() },
                ],
            },
            starts: vec![
                NewInstance::simple("o1", "o1-e2", "Orch", None, later),
                NewInstance::simple("fresh", "fresh-e1", "Orch", None, later),
                NewInstance::simple("fresh", "fresh-e2", "Orch", None, later),
            ],
            now_ms: later,
        };
        let done = commit_entity(&s, commit.clone()).await.expect("commit");
        assert_eq!(done.gone_owners, ["done", "ghost"]);
        let delivered: Vec<(&str, Option<&str>)> =
            done.delivered.iter().map(|d| (d.instance_id.as_str(), d.execution_id.as_deref())).collect();
        assert_eq!(delivered, [("o1", None), ("fresh", Some("fresh-e1"))]);
        assert_eq!(done.queued.iter().map(|q| q.visible_at_ms).collect::<Vec<_>>(), [later]);
        assert_eq!(
            drain(&mut listener).await,
            [format!("e {later} @c@b"), format!("i {later} entities fresh"), format!("i {later} entities o1")]
        );
        let inbox: Vec<(String, i32)> = query::<Postgres>("SELECT instance_id, priority FROM inbox ORDER BY id")
            .fetch_all(&s.pool)
            .await
            .expect("inbox")
            .iter()
            .map(|r| Ok((r.try_get("instance_id")?, r.try_get("priority")?)))
            .collect::<Result<_, sqlx_core::Error>>()
            .expect("rows");
        let expected =
            [("o1", Priority::Start), ("done", Priority::Start), ("o1", Priority::Normal), ("fresh", Priority::Start)];
        assert_eq!(inbox, expected.map(|(id, p)| (id.to_string(), p as i32)));
        let fresh: String = query::<Postgres>("SELECT execution_id FROM instances WHERE instance_id = 'fresh'")
            .fetch_one(&s.pool)
            .await
            .expect("created")
            .try_get("execution_id")
            .expect("column");
        assert_eq!(fresh, "fresh-e1", "the first start of an id wins");

        // Replayed, the step conflicts and sends nothing.
        let again = commit_entity(&s, commit).await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        assert!(drain(&mut listener).await.is_empty(), "a rolled-back step notifies nobody");
    }

    /// A removal waiting for an entity's row lock sees the request queued under that lock.
    #[tokio::test]
    async fn a_removal_never_drops_a_concurrently_queued_request() {
        let pg = duro_testkit::Postgres::start();
        let s = Arc::new(open(&pg).await);
        let queued = enqueue_entity(&s, vec![request("@c@a", NOW)], NOW).await.expect("enqueue");
        let emptied = EntityCommit {
            entity_id: "@c@a".into(),
            effects: crate::core::entity::Effects {
                consumed: vec![queued[0].id],
                state: None,
                lock: Lock::Free,
                outgoing: Vec::new(),
            },
            starts: Vec::new(),
            now_ms: NOW,
        };
        commit_entity(&s, emptied).await.expect("commit");
        // A request being queued, not committed yet.
        let mut tx = s.pool.begin().await.expect("begin");
        lock_entities(&mut tx, vec!["@c@a".into()], NOW).await.expect("lock");
        insert_message(&mut tx, &request("@c@a", NOW), &mut Notices::default()).await.expect("insert");
        let removal = tokio::spawn({
            let s = Arc::clone(&s);
            async move { remove_empty_entities(&s, vec!["@c@a".into()]).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!removal.is_finished(), "the removal waits for the row lock");
        tx.commit().await.expect("commit");
        assert_eq!(removal.await.expect("join").expect("remove"), 0);
        let recovered = recover_entities(&s).await.expect("recover");
        assert_eq!(recovered.iter().map(|r| r.messages.len()).collect::<Vec<_>>(), [1], "the request kept its entity");
    }
}
