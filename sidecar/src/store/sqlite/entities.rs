//! The SQLite side of durable entities: the `entities` rows (state, lock) and the
//! `entity_messages` queue. Every function runs inside the writer's transaction (or on a
//! read connection) of its caller; none commits by itself.

use rusqlite::{params, Connection, Row};

use super::{blob, decode_event, deliver, encode_event, insert_instance, target_of, DynQuery};
use crate::core::entity::{EntityMessage, Lock};
use crate::store::*;

/// Makes sure the entity has a row (a request to a new entity creates it).
fn ensure_row(c: &Connection, entity_id: &str, now_ms: i64) -> Result<(), StoreError> {
    c.prepare_cached("INSERT OR IGNORE INTO entities (entity_id, modified_at) VALUES (?, ?)")?
        .execute(params![entity_id, now_ms])?;
    Ok(())
}

pub(super) fn insert_message(
    c: &Connection,
    m: &EntityMessage,
    now_ms: i64,
) -> Result<QueuedEntityMessage, StoreError> {
    ensure_row(c, &m.entity_id, now_ms)?;
    c.prepare_cached("INSERT INTO entity_messages (entity_id, visible_at, event) VALUES (?, ?, ?)")?
        .execute(params![m.entity_id, m.visible_at_ms, encode_event(&m.event)])?;
    Ok(QueuedEntityMessage {
        id: c.last_insert_rowid(),
        entity_id: m.entity_id.clone(),
        visible_at_ms: m.visible_at_ms,
        event: m.event.clone(),
    })
}

pub(super) fn commit(c: &Connection, t: &EntityCommit) -> Result<EntityCommitResult, StoreError> {
    let fx = &t.effects;
    {
        let mut consume = c.prepare_cached("DELETE FROM entity_messages WHERE id = ? AND entity_id = ?")?;
        for id in &fx.consumed {
            if consume.execute(params![id, t.entity_id])? == 0 {
                return Err(StoreError::Conflict(t.entity_id.clone()));
            }
        }
    }
    ensure_row(c, &t.entity_id, t.now_ms)?;
    let (owner, section) = match &fx.lock {
        Lock::Free => (None, None),
        Lock::Held { owner, critical_section_id } => (Some(owner.as_str()), Some(critical_section_id.as_str())),
    };
    c.prepare_cached(
        "UPDATE entities SET modified_at = CASE WHEN state IS ? THEN modified_at ELSE ? END, \
         state = ?, lock_owner = ?, lock_section = ?, delivery_attempts = 0 WHERE entity_id = ?",
    )?
    .execute(params![fx.state, t.now_ms, fx.state, owner, section, t.entity_id])?;
    let mut out = EntityCommitResult::default();
    for o in &fx.outgoing {
        match EntityOutgoing::of(o, t.now_ms) {
            EntityOutgoing::Orchestration { message, grant } => match deliver(c, &message)? {
                Some(d) => out.delivered.push(d),
                None if grant => out.gone_owners.push(message.target.clone()),
                None => {}
            },
            EntityOutgoing::Entity(m) => out.queued.push(insert_message(c, &m, t.now_ms)?),
            EntityOutgoing::Start => {}
        }
    }
    for new in &t.starts {
        if target_of(c, &new.spec.instance_id)?.is_none() {
            out.delivered.push(insert_instance(c, new)?);
        }
    }
    Ok(out)
}

pub(super) fn remove_empty(c: &Connection, ids: &[String]) -> Result<u32, StoreError> {
    let mut removed = 0;
    let mut stmt = c.prepare_cached(
        "DELETE FROM entities WHERE entity_id = ? AND state IS NULL AND lock_owner IS NULL \
         AND NOT EXISTS (SELECT 1 FROM entity_messages m WHERE m.entity_id = entities.entity_id)",
    )?;
    for id in ids {
        removed += u32::try_from(stmt.execute([id])?).unwrap_or(0);
    }
    Ok(removed)
}

const COLUMNS: &str = "e.entity_id, e.state, e.lock_owner, e.lock_section, e.modified_at, \
     (SELECT COUNT(*) FROM entity_messages m WHERE m.entity_id = e.entity_id) AS backlog";

fn record(r: &Row<'_>) -> Result<EntityRecord, StoreError> {
    Ok(EntityRecord {
        entity_id: r.get(0)?,
        state: r.get(1)?,
        lock_owner: r.get(2)?,
        lock_section: r.get(3)?,
        modified_at_ms: r.get(4)?,
        backlog: r.get(5)?,
    })
}

pub(super) fn query(c: &Connection, f: &EntitySelection) -> Result<Vec<EntityRecord>, StoreError> {
    let mut q = DynQuery::new(format!("SELECT {COLUMNS} FROM entities e WHERE 1 = 1"));
    if let Some(id) = &f.id {
        q.push(" AND e.entity_id = ?", id.clone());
    }
    if let Some(prefix) = &f.id_prefix {
        // Range on the primary key: no LIKE escaping, and the index is used.
        q.push(" AND e.entity_id >= ?", prefix.clone());
        q.push(" AND substr(e.entity_id, 1, ?)", i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX));
        q.push(" = ?", prefix.clone());
    }
    if let Some(from) = f.modified_from_ms {
        q.push(" AND e.modified_at >= ?", from);
    }
    if let Some(to) = f.modified_to_ms {
        q.push(" AND e.modified_at <= ?", to);
    }
    if !f.include_transient {
        q.sql.push_str(" AND e.state IS NOT NULL");
    }
    if let Some(after) = &f.after_id {
        q.push(" AND e.entity_id > ?", after.clone());
    }
    q.push(" ORDER BY e.entity_id LIMIT ?", i64::from(f.page_size.max(1)));
    q.rows(c, record)
}

pub(super) fn recover(c: &Connection) -> Result<Vec<RecoveredEntity>, StoreError> {
    let records = DynQuery::new(format!(
        "SELECT {COLUMNS}, e.delivery_attempts FROM entities e WHERE e.lock_owner IS NOT NULL \
         OR EXISTS (SELECT 1 FROM entity_messages m WHERE m.entity_id = e.entity_id) ORDER BY e.entity_id"
    ))
    .rows(c, |r| Ok((record(r)?, r.get::<_, u32>(6)?)))?;
    let mut stmt = c.prepare_cached(
        "SELECT id, entity_id, visible_at, event FROM entity_messages WHERE entity_id = ? ORDER BY id",
    )?;
    let mut out = Vec::with_capacity(records.len());
    for (record, delivery_attempts) in records {
        let mut rows = stmt.query([&record.entity_id])?;
        let mut messages = Vec::new();
        while let Some(r) = rows.next()? {
            messages.push(QueuedEntityMessage {
                id: r.get(0)?,
                entity_id: r.get(1)?,
                visible_at_ms: r.get(2)?,
                event: decode_event(blob(r, 3)?)?,
            });
        }
        out.push(RecoveredEntity { record, messages, delivery_attempts });
    }
    Ok(out)
}
