//! The writes of the [`Store`](super::Store) trait on PostgreSQL, one transaction each.
//!
//! The semantics are SQLite's (`store/sqlite.rs`, the reference), statement for statement
//! where possible. What PostgreSQL adds: instance rows are locked (in id order) before any
//! inbox row is inserted for them, every new inbox/activity row is announced on the hub's
//! channel, a turn commits only under its lease (fencing), and a replaced instance is
//! updated in place so that its lease epoch keeps rising and lock waiters see the new row.

use std::collections::BTreeMap;

use duro_proto::ActivityRequest;
use prost::Message as _;
use sqlx_postgres::PgConnection;

use super::*;
use crate::core::{self, events, is_terminal, Priority};
use crate::store::codec::tags_json;

pub(super) async fn create_instance(s: &PgStore, new: NewInstance, reuse: IdReuse) -> Result<CreateResult, StoreError> {
    retrying(|| create_once(s, &new, &reuse)).await
}

async fn create_once(s: &PgStore, new: &NewInstance, reuse: &IdReuse) -> Result<CreateResult, StoreError> {
    let mut tx = s.pool.begin().await?;
    let mut notices = Notices::default();
    // The parent of an instance being replaced may get a notice: lock it with the id.
    let mut ids = vec![new.spec.instance_id.clone()];
    ids.extend(parent_of(&mut tx, &new.spec.instance_id).await?);
    lock_instances(&mut tx, &ids).await?;
    let created = create(&mut tx, &mut notices, new, reuse).await?;
    let after = notices.send(&mut tx, s).await?;
    tx.commit().await?;
    after.apply(s);
    Ok(created)
}

pub(super) async fn enqueue(s: &PgStore, m: Message) -> Result<Option<Delivered>, StoreError> {
    retrying(|| async {
        let mut tx = s.pool.begin().await?;
        let mut notices = Notices::default();
        lock_instances(&mut tx, std::slice::from_ref(&m.target)).await?;
        let delivered = deliver(&mut tx, &mut notices, &m).await?;
        let after = notices.send(&mut tx, s).await?;
        tx.commit().await?;
        after.apply(s);
        Ok(delivered)
    })
    .await
}

pub(super) async fn commit_turn(s: &PgStore, t: TurnCommit) -> Result<CommitResult, StoreError> {
    let held = s.held.lock().get(&t.instance_id).copied();
    let result = retrying(|| commit_once(s, &t, held)).await;
    if let (Err(StoreError::LeaseLost(_)), Some(epoch)) = (&result, held) {
        // The lease is gone: forget it (unless a newer claim replaced the entry meanwhile).
        let mut held = s.held.lock();
        if held.get(&t.instance_id) == Some(&epoch) {
            held.remove(&t.instance_id);
        }
    }
    result
}

/// The lock set of a turn: the instance itself, every instance it sends to, its children
/// (created or replaced) and whoever hears of a child's id being taken.
fn turn_lock_set(t: &TurnCommit) -> Vec<String> {
    let o = &t.outcome;
    let mut ids = vec![t.instance_id.clone()];
    ids.extend(o.messages.iter().map(|m| m.target.clone()));
    for child in &o.children {
        ids.push(child.spec.instance_id.clone());
        ids.extend(child.parent_task.as_ref().map(|p| p.instance_id.clone()));
    }
    ids
}

async fn commit_once(s: &PgStore, t: &TurnCommit, held: Option<i64>) -> Result<CommitResult, StoreError> {
    let mut tx = s.pool.begin().await?;
    let mut notices = Notices::default();
    lock_instances(&mut tx, &turn_lock_set(t)).await?;
    let history_len = fence(&mut tx, s, t, held).await?;
    if !t.consumed.is_empty() {
        let gone = q("DELETE FROM inbox WHERE id = ANY($1) AND instance_id = $2")
            .bind(&t.consumed)
            .bind(&t.instance_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone != t.consumed.len() as u64 {
            // Consumed already, or deleted with a replaced execution: the turn saw a stale
            // view and must not commit (it would deliver an event twice).
            return Err(StoreError::Conflict(t.instance_id.clone()));
        }
    }
    let o = &t.outcome;
    let mut result = CommitResult::default();
    let seq = append_history(&mut tx, &t.instance_id, history_len, &o.append).await?;
    update_after_turn(&mut tx, t, seq).await?;
    if o.is_terminal() {
        // A finished instance consumes nothing more: drop its remaining inbox and queued work.
        q("DELETE FROM inbox WHERE instance_id = $1").bind(&t.instance_id).execute(&mut *tx).await?;
        q("DELETE FROM activities WHERE instance_id = $1").bind(&t.instance_id).execute(&mut *tx).await?;
        result.finished_through = Some(inbox_watermark(&mut tx).await?);
    }
    for a in &o.activities {
        result.activities.push(insert_activity(&mut tx, &mut notices, a).await?);
    }
    for child in &o.children {
        create_child(&mut tx, &mut notices, child, t.now_ms, &mut result).await?;
    }
    if let Some(next) = &o.continue_as_new {
        continue_as_new(&mut tx, &mut notices, t, next, &mut result).await?;
    }
    for m in &o.messages {
        if let Some(d) = deliver(&mut tx, &mut notices, m).await? {
            result.delivered.push(d);
        }
    }
    entities::lock_entities(&mut tx, o.entity_messages.iter().map(|m| m.entity_id.clone()).collect(), t.now_ms).await?;
    for m in &o.entity_messages {
        result.entity_messages.push(entities::insert_message(&mut tx, m, &mut notices).await?);
    }
    let after = notices.send(&mut tx, s).await?;
    tx.commit().await?;
    after.apply(s);
    Ok(result)
}

/// The turn's fence, on the locked instance row; returns the stored history length.
///
/// Lease first: with a lease held (`held`, its epoch) the row must still name this sidecar
/// and that epoch (the lease is then extended); without one (a single sidecar) no other
/// sidecar may hold a live lease. Else `LeaseLost`. Then SQLite's checks: the same
/// execution, not finished, built on exactly the stored history; else `Conflict`.
async fn fence(conn: &mut PgConnection, s: &PgStore, t: &TurnCommit, held: Option<i64>) -> Result<i64, StoreError> {
    let row = q("SELECT execution_id, status, history_len, lease_owner, lease_epoch, \
                 (lease_until IS NULL OR lease_until < duro_now_ms()) AS expired \
                 FROM instances WHERE instance_id = $1")
    .bind(&t.instance_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Err(StoreError::Conflict(t.instance_id.clone())) };
    let owner: Option<String> = row.try_get("lease_owner")?;
    let epoch: i64 = row.try_get("lease_epoch")?;
    let expired: bool = row.try_get("expired")?;
    let mine = owner.as_deref() == Some(s.opts.owner.as_str());
    let leased = match held {
        Some(held) => mine && epoch == held,
        None => owner.is_none() || mine || expired,
    };
    if !leased {
        return Err(StoreError::LeaseLost(t.instance_id.clone()));
    }
    if held.is_some() {
        let lease_ms = i64::try_from(s.opts.lease.as_millis()).unwrap_or(i64::MAX);
        q("UPDATE instances SET lease_until = duro_now_ms() + $2 WHERE instance_id = $1")
            .bind(&t.instance_id)
            .bind(lease_ms)
            .execute(&mut *conn)
            .await?;
    }
    let execution_id: String = row.try_get("execution_id")?;
    let status = status_from_i32(row.try_get("status")?);
    let history_len = i64::from(row.try_get::<i32, _>("history_len")?);
    // Fenced: the turn must have been built on exactly the stored history of this
    // execution, or another commit (or a rewind) got there first.
    let built_on = i64::try_from(t.history_len).unwrap_or(i64::MAX);
    if execution_id != t.execution_id || is_terminal(status) || history_len != built_on {
        return Err(StoreError::Conflict(t.instance_id.clone()));
    }
    Ok(history_len)
}

/// Writes a committed turn's status, output, failure, custom status and trace context.
async fn update_after_turn(conn: &mut PgConnection, t: &TurnCommit, history_len: i64) -> Result<(), StoreError> {
    let o = &t.outcome;
    let terminal = o.is_terminal();
    let custom = match &o.custom_status {
        crate::core::CustomStatus::Keep => None,
        crate::core::CustomStatus::Set(v) => Some(v.clone()),
    };
    q("UPDATE instances SET status = $1, updated_at = $2, history_len = $3, delivery_attempts = 0, \
       output = CASE WHEN $4 THEN $5 ELSE output END, \
       failure_details = CASE WHEN $4 THEN $6 ELSE failure_details END, \
       completed_at = CASE WHEN $4 THEN $2 ELSE completed_at END, \
       custom_status = CASE WHEN $7 THEN $8 ELSE custom_status END, \
       trace_context = COALESCE($9, trace_context) \
       WHERE instance_id = $10")
    .bind(o.status as i32)
    .bind(t.now_ms)
    .bind(len_i32(history_len)?)
    .bind(terminal)
    .bind(&o.output)
    .bind(o.failure.as_ref().map(|f| f.encode_to_vec()))
    .bind(custom.is_some())
    .bind(custom.flatten())
    .bind(o.trace_context.as_ref().map(|tc| tc.encode_to_vec()))
    .bind(&t.instance_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn len_i32(n: i64) -> Result<i32, StoreError> {
    i32::try_from(n).map_err(|_| StoreError::Corrupt(format!("history length {n} exceeds the column")))
}

pub(super) async fn complete_activity(s: &PgStore, id: i64, m: Message) -> Result<Option<Delivered>, StoreError> {
    retrying(|| async {
        let mut tx = s.pool.begin().await?;
        let mut notices = Notices::default();
        lock_instances(&mut tx, std::slice::from_ref(&m.target)).await?;
        let gone = q("DELETE FROM activities WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
        let delivered = if gone == 0 { None } else { deliver(&mut tx, &mut notices, &m).await? };
        let after = notices.send(&mut tx, s).await?;
        tx.commit().await?;
        after.apply(s);
        Ok(delivered)
    })
    .await
}

pub(super) async fn record_attempts(s: &PgStore, counts: Vec<Attempts>) -> Result<(), StoreError> {
    // The highest count per row, rows in id order (so concurrent callers lock in one order).
    let mut instances: BTreeMap<&str, u32> = BTreeMap::new();
    let mut activities: BTreeMap<i64, u32> = BTreeMap::new();
    for a in &counts {
        match a {
            Attempts::Instance(id, n) => instances.entry(id).and_modify(|m| *m = (*m).max(*n)).or_insert(*n),
            Attempts::Activity(id, n) => activities.entry(*id).and_modify(|m| *m = (*m).max(*n)).or_insert(*n),
        };
    }
    retrying(|| async {
        let mut tx = s.pool.begin().await?;
        let ids: Vec<String> = instances.keys().map(|id| id.to_string()).collect();
        lock_instances(&mut tx, &ids).await?;
        for (id, n) in &instances {
            q("UPDATE instances SET delivery_attempts = GREATEST(delivery_attempts, $1) WHERE instance_id = $2")
                .bind(i32::try_from(*n).unwrap_or(i32::MAX))
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        for (id, n) in &activities {
            q("UPDATE activities SET delivery_attempts = GREATEST(delivery_attempts, $1) WHERE id = $2")
                .bind(i32::try_from(*n).unwrap_or(i32::MAX))
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await
}

pub(super) async fn save_activity_progress(s: &PgStore, id: i64, progress: String) -> Result<bool, StoreError> {
    let n = q("UPDATE activities SET progress = $1 WHERE id = $2")
        .bind(&progress)
        .bind(id)
        .execute(&s.pool)
        .await?
        .rows_affected();
    Ok(n > 0)
}

pub(super) async fn purge(s: &PgStore, sel: PurgeSelection, recursive: bool) -> Result<u32, StoreError> {
    retrying(|| async {
        let mut tx = s.pool.begin().await?;
        let n = purge_in(&mut tx, &sel, recursive).await?;
        tx.commit().await?;
        Ok(n)
    })
    .await
}

const TERMINAL: [OrchestrationStatus; 4] = [
    OrchestrationStatus::Completed,
    OrchestrationStatus::Failed,
    OrchestrationStatus::Terminated,
    OrchestrationStatus::Canceled,
];

async fn purge_in(conn: &mut PgConnection, sel: &PurgeSelection, recursive: bool) -> Result<u32, StoreError> {
    let mut queue: Vec<String> = match sel {
        PurgeSelection::Ids(ids) => ids.clone(),
        PurgeSelection::Filter { created_from_ms, created_to_ms, statuses } => {
            let wanted: Vec<i32> = if statuses.is_empty() {
                TERMINAL.iter().map(|s| *s as i32).collect()
            } else {
                statuses.iter().filter(|s| TERMINAL.contains(s)).map(|s| *s as i32).collect()
            };
            if wanted.is_empty() {
                return Ok(0);
            }
            q("SELECT instance_id FROM instances WHERE status = ANY($1) \
               AND ($2::bigint IS NULL OR created_at >= $2) AND ($3::bigint IS NULL OR created_at < $3)")
            .bind(wanted)
            .bind(*created_from_ms)
            .bind(*created_to_ms)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?
        }
    };
    // The first level in id order; descendants as they are found (a rare deadlock with
    // another purge of the same tree is retried).
    lock_instances(conn, &queue).await?;
    queue.sort_unstable_by(|a, b| b.cmp(a));
    let mut deleted = 0u32;
    while let Some(id) = queue.pop() {
        let Some((target, _)) = target_of(conn, &id).await? else { continue };
        if !is_terminal(target.status) {
            continue;
        }
        if recursive {
            let children = q("SELECT instance_id FROM instances WHERE parent_instance_id = $1")
                .bind(&id)
                .fetch_all(&mut *conn)
                .await?;
            for child in children {
                queue.push(child.try_get(0)?);
            }
        }
        delete_instance(conn, &id).await?;
        deleted += 1;
    }
    Ok(deleted)
}

pub(super) async fn restart(
    s: &PgStore,
    id: &str,
    new_id: Option<String>,
    now_ms: i64,
) -> Result<RestartResult, StoreError> {
    // One execution id for every run, as the caller would see one attempt.
    let execution_id = crate::ambient::new_execution_id();
    retrying(|| restart_once(s, id, new_id.clone(), &execution_id, now_ms)).await
}

async fn restart_once(
    s: &PgStore,
    id: &str,
    new_id: Option<String>,
    execution_id: &str,
    now_ms: i64,
) -> Result<RestartResult, StoreError> {
    let mut tx = s.pool.begin().await?;
    let mut notices = Notices::default();
    let target_id = new_id.clone().unwrap_or_else(|| id.to_string());
    let mut ids = vec![id.to_string(), target_id.clone()];
    ids.extend(parent_of(&mut tx, &target_id).await?);
    lock_instances(&mut tx, &ids).await?;
    let Some(rec) = load_locked(&mut tx, id).await? else { return Ok(RestartResult::NotFound) };
    // A live instance keeps running; only a restart under its own id needs it finished.
    if new_id.is_none() && !is_terminal(rec.status) {
        return Ok(RestartResult::NotTerminal(rec.status));
    }
    let new = restarted(rec, &target_id, execution_id.to_string(), now_ms);
    let result = match create(&mut tx, &mut notices, &new, &IdReuse::terminal()).await? {
        CreateResult::Created(created) => RestartResult::Restarted(Box::new(created.start)),
        CreateResult::Kept | CreateResult::AlreadyExists(_) => return Err(StoreError::Conflict(target_id)),
    };
    let after = notices.send(&mut tx, s).await?;
    tx.commit().await?;
    after.apply(s);
    Ok(result)
}

pub(super) async fn rewind(
    s: &PgStore,
    id: &str,
    _reason: Option<String>,
    now_ms: i64,
) -> Result<RewindResult, StoreError> {
    retrying(|| async {
        let mut tx = s.pool.begin().await?;
        let mut notices = Notices::default();
        lock_instances(&mut tx, &[id.to_string()]).await?;
        let result = rewind_in(&mut tx, &mut notices, id, now_ms).await?;
        let after = notices.send(&mut tx, s).await?;
        tx.commit().await?;
        after.apply(s);
        Ok(result)
    })
    .await
}

async fn rewind_in(
    conn: &mut PgConnection,
    notices: &mut Notices,
    id: &str,
    now_ms: i64,
) -> Result<RewindResult, StoreError> {
    let Some((target, execution_id)) = target_of(conn, id).await? else { return Ok(RewindResult::NotFound) };
    if target.status != OrchestrationStatus::Failed {
        return Ok(RewindResult::NotFailed(target.status));
    }
    let history = super::read::history_of(&mut *conn, id).await?;
    let rewound = core::control::rewound_history(&history);
    q("DELETE FROM history WHERE instance_id = $1").bind(id).execute(&mut *conn).await?;
    let history_len = append_history(conn, id, 0, &rewound).await?;
    q("UPDATE instances SET status = $1, output = NULL, failure_details = NULL, completed_at = NULL, \
       updated_at = $2, history_len = $3 WHERE instance_id = $4")
    .bind(OrchestrationStatus::Running as i32)
    .bind(now_ms)
    .bind(len_i32(history_len)?)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let wake = Message {
        target: id.to_string(),
        execution_id: Some(execution_id),
        priority: Priority::Normal,
        visible_at_ms: now_ms,
        event: events::wake_up(now_ms),
    };
    let target = Target { status: OrchestrationStatus::Running, ..target };
    let wake = insert_inbox(conn, notices, &wake, target).await?;
    Ok(RewindResult::Rewound { wake: Box::new(wake) })
}

// ----- shared steps (each runs inside its caller's transaction) ----------------------------

/// The parent instance of `id` as stored now (read without a lock, to compute a lock set;
/// the caller reads the row again under the lock).
async fn parent_of(conn: &mut PgConnection, id: &str) -> Result<Option<String>, StoreError> {
    let row = q("SELECT parent_instance_id FROM instances WHERE instance_id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(r) => r.try_get("parent_instance_id")?,
        None => None,
    })
}

/// An instance's row, locked `FOR UPDATE` (a no-op when the caller locked it already).
async fn load_locked(conn: &mut PgConnection, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = $1 FOR UPDATE");
    let row = q(&sql).bind(id).fetch_optional(&mut *conn).await?;
    row.as_ref().map(instance_from_row).transpose()
}

/// An instance's name, version, status and execution, its row locked `FOR UPDATE`, so that
/// every inbox row is inserted under its instance's lock even when the caller could not
/// foresee the target.
pub(super) async fn target_of(conn: &mut PgConnection, id: &str) -> Result<Option<(Target, String)>, StoreError> {
    let row = q("SELECT name, version, status, execution_id FROM instances WHERE instance_id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(r) = row else { return Ok(None) };
    let target = Target { name: r.try_get(0)?, version: r.try_get(1)?, status: status_from_i32(r.try_get(2)?) };
    Ok(Some((target, r.try_get(3)?)))
}

pub(super) async fn insert_inbox(
    conn: &mut PgConnection,
    notices: &mut Notices,
    m: &Message,
    target: Target,
) -> Result<Delivered, StoreError> {
    let inbox_id: i64 = q("INSERT INTO inbox (instance_id, execution_id, priority, visible_at, event) \
                           VALUES ($1, $2, $3, $4, $5) RETURNING id")
    .bind(&m.target)
    .bind(&m.execution_id)
    .bind(m.priority as i32)
    .bind(m.visible_at_ms)
    .bind(encode_event(&m.event))
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    notices.inbox(m.visible_at_ms, &m.target);
    Ok(Delivered {
        inbox_id,
        instance_id: m.target.clone(),
        execution_id: m.execution_id.clone(),
        priority: m.priority,
        visible_at_ms: m.visible_at_ms,
        event: m.event.clone(),
        target,
    })
}

/// Delivers a message to a live instance (and, if it names one, the same execution).
pub(super) async fn deliver(
    conn: &mut PgConnection,
    notices: &mut Notices,
    m: &Message,
) -> Result<Option<Delivered>, StoreError> {
    let Some((target, execution_id)) = target_of(conn, &m.target).await? else { return Ok(None) };
    if is_terminal(target.status) {
        return Ok(None);
    }
    if let Some(wanted) = &m.execution_id {
        if *wanted != execution_id {
            return Ok(None);
        }
    }
    Ok(Some(insert_inbox(conn, notices, m, target).await?))
}

/// Removes an instance's history, inbox and activities (not its row).
async fn clear_instance(conn: &mut PgConnection, id: &str) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM history WHERE instance_id = $1",
        "DELETE FROM inbox WHERE instance_id = $1",
        "DELETE FROM activities WHERE instance_id = $1",
    ] {
        q(sql).bind(id).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Removes every trace of an instance.
async fn delete_instance(conn: &mut PgConnection, id: &str) -> Result<(), StoreError> {
    clear_instance(conn, id).await?;
    q("DELETE FROM instances WHERE instance_id = $1").bind(id).execute(&mut *conn).await?;
    Ok(())
}

/// The key of the transaction-level advisory lock held while an instance id is first
/// inserted, so that `load_inbox` of a missing instance can wait for such an insert (a row
/// lock cannot: the uncommitted row is invisible to it).
pub(super) const CREATE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// Inserts a new instance row (the id is free) or overwrites a replaced one in place (its
/// history, inbox and activities already deleted), then its `executionStarted` row. In
/// place, so that transactions waiting on the row's lock find the new instance, and so that
/// the lease epoch keeps rising (rule: never reset; the lease itself is dropped).
async fn write_instance(
    conn: &mut PgConnection,
    notices: &mut Notices,
    new: &NewInstance,
    replacing: bool,
) -> Result<Delivered, StoreError> {
    let s = &new.spec;
    let sql = if replacing {
        "UPDATE instances SET execution_id = $2, name = $3, version = $4, status = $5, created_at = $6, \
         updated_at = $6, completed_at = NULL, scheduled_start_at = $7, input = $8, output = NULL, \
         custom_status = NULL, failure_details = NULL, parent_instance_id = $9, parent_info = $10, tags = $11, \
         trace_context = NULL, history_len = 0, delivery_attempts = 0, lease_owner = NULL, lease_until = NULL, \
         lease_epoch = lease_epoch + 1 WHERE instance_id = $1"
    } else {
        q(CREATE_LOCK).bind(&s.instance_id).execute(&mut *conn).await?;
        "INSERT INTO instances (instance_id, execution_id, name, version, status, created_at, updated_at, \
         scheduled_start_at, input, parent_instance_id, parent_info, tags, history_len) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11, 0)"
    };
    q(sql)
        .bind(&s.instance_id)
        .bind(&s.execution_id)
        .bind(&s.name)
        .bind(&s.version)
        .bind(OrchestrationStatus::Pending as i32)
        .bind(new.created_at_ms)
        .bind(s.scheduled_start_ms)
        .bind(&s.input)
        .bind(s.parent.as_ref().and_then(|p| p.orchestration_instance.as_ref()).map(|i| i.instance_id.clone()))
        .bind(s.parent.as_ref().map(|p| p.encode_to_vec()))
        .bind(tags_json(&s.tags))
        .execute(&mut *conn)
        .await?;
    if replacing {
        let epoch: i64 = q("SELECT lease_epoch FROM instances WHERE instance_id = $1")
            .bind(&s.instance_id)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        notices.lease_replaced(&s.instance_id, epoch);
    }
    let start = Message {
        target: s.instance_id.clone(),
        execution_id: Some(s.execution_id.clone()),
        priority: Priority::Start,
        visible_at_ms: new.visible_at_ms,
        event: new.started_event(),
    };
    let target = Target { name: s.name.clone(), version: s.version.clone(), status: OrchestrationStatus::Pending };
    insert_inbox(conn, notices, &start, target).await
}

/// Creates an instance, applying `reuse` if the id is taken (table on [`IdReuse`]). A live
/// instance being replaced is terminated first, in this transaction: its parent's notice
/// is delivered, then its rows are replaced.
pub(super) async fn create(
    conn: &mut PgConnection,
    notices: &mut Notices,
    new: &NewInstance,
    reuse: &IdReuse,
) -> Result<CreateResult, StoreError> {
    let id = &new.spec.instance_id;
    let mut replaced = None;
    let mut delivered = Vec::new();
    if let Some(existing) = load_locked(conn, id).await? {
        match reuse.decide(existing.status) {
            ReuseDecision::Refuse => return Ok(CreateResult::AlreadyExists(existing.status)),
            ReuseDecision::Keep => return Ok(CreateResult::Kept),
            ReuseDecision::Replace => {
                let terminated = core::control::terminate_for_reuse(&existing.info(), new.created_at_ms);
                for m in &terminated.messages {
                    if let Some(d) = deliver(conn, notices, m).await? {
                        delivered.push(d);
                    }
                }
                clear_instance(conn, id).await?;
                replaced = Some(existing.status);
            }
        }
    }
    let start = write_instance(conn, notices, new, replaced.is_some()).await?;
    Ok(CreateResult::Created(Box::new(Created { start, replaced, delivered })))
}

/// Creates a sub-orchestration; a live instance holding the id fails the parent's task.
async fn create_child(
    conn: &mut PgConnection,
    notices: &mut Notices,
    new: &NewInstance,
    now_ms: i64,
    out: &mut CommitResult,
) -> Result<(), StoreError> {
    match create(conn, notices, new, &IdReuse::terminal()).await? {
        CreateResult::Created(created) => {
            let Created { start, delivered, .. } = *created;
            out.delivered.push(start);
            out.delivered.extend(delivered);
        }
        CreateResult::Kept => {}
        CreateResult::AlreadyExists(status) => {
            if let Some(notice) = child_id_taken(new, status, now_ms) {
                if let Some(d) = deliver(conn, notices, &notice).await? {
                    out.delivered.push(d);
                }
            }
        }
    }
    Ok(())
}

/// Appends `events` to an instance's history from sequence number `first_seq`; returns the
/// history's new length.
async fn append_history(
    conn: &mut PgConnection,
    instance_id: &str,
    first_seq: i64,
    events: &[HistoryEvent],
) -> Result<i64, StoreError> {
    let end = first_seq + events.len() as i64;
    if events.is_empty() {
        return Ok(end);
    }
    let seqs: Vec<i32> = (first_seq..end).map(len_i32).collect::<Result<_, _>>()?;
    let bytes: Vec<Vec<u8>> = events.iter().map(encode_event).collect();
    q("INSERT INTO history (instance_id, seq, event) SELECT $1, s, e FROM unnest($2::integer[], $3::bytea[]) AS t(s, e)")
        .bind(instance_id)
        .bind(seqs)
        .bind(bytes)
        .execute(&mut *conn)
        .await?;
    Ok(end)
}

async fn insert_activity(
    conn: &mut PgConnection,
    notices: &mut Notices,
    a: &ActivityRequest,
) -> Result<QueuedActivity, StoreError> {
    let instance = a.orchestration_instance.as_ref();
    // Unleased (lease_owner NULL): the lease code claims it.
    let id: i64 = q("INSERT INTO activities (instance_id, execution_id, task_id, name, version, request) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
    .bind(instance.map(|i| i.instance_id.clone()).unwrap_or_default())
    .bind(instance.and_then(|i| i.execution_id.clone()).unwrap_or_default())
    .bind(a.task_id)
    .bind(&a.name)
    .bind(&a.version)
    .bind(a.encode_to_vec())
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    notices.activity(&a.name);
    Ok(QueuedActivity { id, request: a.clone(), progress: None })
}

async fn continue_as_new(
    conn: &mut PgConnection,
    notices: &mut Notices,
    t: &TurnCommit,
    next: &crate::core::NewExecution,
    out: &mut CommitResult,
) -> Result<(), StoreError> {
    let id = &t.instance_id;
    q("DELETE FROM history WHERE instance_id = $1").bind(id).execute(&mut *conn).await?;
    // Results, timers and activities of the old execution can no longer be consumed.
    q("DELETE FROM inbox WHERE instance_id = $1 AND execution_id IS NOT NULL").bind(id).execute(&mut *conn).await?;
    q("DELETE FROM activities WHERE instance_id = $1").bind(id).execute(&mut *conn).await?;
    let s = &next.spec;
    q("UPDATE instances SET execution_id = $1, version = $2, input = $3, output = NULL, failure_details = NULL, \
       completed_at = NULL, history_len = 0, tags = $4, status = $5, trace_context = NULL WHERE instance_id = $6")
    .bind(&s.execution_id)
    .bind(&s.version)
    .bind(&s.input)
    .bind(tags_json(&s.tags))
    .bind(OrchestrationStatus::Running as i32)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let target = Target { name: s.name.clone(), version: s.version.clone(), status: OrchestrationStatus::Running };
    let start = Message {
        target: id.clone(),
        execution_id: Some(s.execution_id.clone()),
        priority: Priority::Start,
        visible_at_ms: t.now_ms,
        event: events::execution_started(t.now_ms, s),
    };
    out.delivered.push(insert_inbox(conn, notices, &start, target.clone()).await?);
    for e in &next.carryover {
        let m = Message {
            target: id.clone(),
            execution_id: Some(s.execution_id.clone()),
            priority: Priority::Carryover,
            visible_at_ms: t.now_ms,
            event: e.clone(),
        };
        out.delivered.push(insert_inbox(conn, notices, &m, target.clone()).await?);
    }
    Ok(())
}

/// The newest inbox id ever handed out (the identity's sequence: ids are never reused, and
/// unlike `max(id)` it does not fall back when the newest rows are deleted). Read under the
/// instance's row lock, every id of that instance up to it is committed or gone.
pub(super) async fn inbox_watermark(conn: &mut PgConnection) -> Result<i64, StoreError> {
    let row =
        q("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM inbox_id_seq").fetch_one(&mut *conn).await?;
    Ok(row.try_get(0)?)
}
