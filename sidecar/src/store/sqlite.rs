//! SQLite implementation of [`Store`]: one file, WAL, synchronous commits.
//!
//! All writes go through one writer task that owns a single connection and groups the
//! writes waiting at that moment into one transaction (group commit): one fsync covers
//! many turns. Each write runs inside its own savepoint, so one failing write never
//! takes its neighbours down. Reads use a separate pool and never wait for the writer.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use duro_proto::{ActivityRequest, HistoryEvent, OrchestrationStatus};
use prost::Message as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::core::{self, events, is_terminal, status_from_i32, Message, NewInstance, Priority};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Most writes grouped into one transaction.
const MAX_BATCH: usize = 512;

/// Options of the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// `FULL` makes every commit durable against power loss; `NORMAL` only against a
    /// process crash.
    pub synchronous_full: bool,
    pub read_connections: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions { synchronous_full: true, read_connections: 4 }
    }
}

pub struct SqliteStore {
    reads: SqlitePool,
    writer: mpsc::Sender<WriteJob>,
}

struct WriteJob {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteResult, StoreError>>,
}

// One value per write crosses the channel; boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum WriteOp {
    Create(NewInstance, IdReuse),
    Enqueue(Message),
    Commit(TurnCommit),
    CompleteActivity(i64, Message),
    SaveProgress(i64, String),
    Purge(PurgeSelection, bool),
    Restart(String, Option<String>, i64),
    Rewind(String, Option<String>, i64),
}

#[allow(clippy::large_enum_variant)]
enum WriteResult {
    Create(CreateResult),
    Enqueue(Option<Delivered>),
    Commit(CommitResult),
    Purge(u32),
    Saved(bool),
    Restart(RestartResult),
    Rewind(RewindResult),
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs migrations.
    pub async fn open(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let connect = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.synchronous_full { SqliteSynchronous::Full } else { SqliteSynchronous::Normal })
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(false)
            .statement_cache_capacity(256);
        let mut conn = SqliteConnection::connect_with(&connect).await?;
        MIGRATOR.run(&mut conn).await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(connect.clone())
            .await?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer_loop(conn, rx));
        Ok(SqliteStore { reads, writer: tx })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(WriteJob { op, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

async fn writer_loop(mut conn: SqliteConnection, mut rx: mpsc::Receiver<WriteJob>) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let jobs = std::mem::take(&mut batch);
        let mut results = Vec::with_capacity(jobs.len());
        let outcome: Result<(), sqlx::Error> = async {
            let mut tx = conn.begin().await?;
            for job in &jobs {
                let mut sp = tx.begin().await?;
                let r = run_op(&mut sp, &job.op).await;
                if r.is_ok() {
                    sp.commit().await?;
                } else {
                    sp.rollback().await?;
                }
                results.push(r);
            }
            tx.commit().await
        }
        .await;
        match outcome {
            Ok(()) => {
                for (job, r) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = jobs.len(), "group commit failed; every write in it is rolled back");
                let msg = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(StoreError::Database(sqlx::Error::Protocol(msg.clone()))));
                }
            }
        }
    }
}

async fn run_op(c: &mut SqliteConnection, op: &WriteOp) -> Result<WriteResult, StoreError> {
    Ok(match op {
        WriteOp::Create(new, reuse) => WriteResult::Create(create(c, new, reuse).await?),
        WriteOp::Enqueue(m) => WriteResult::Enqueue(deliver(c, m).await?),
        WriteOp::Commit(commit) => WriteResult::Commit(commit_turn(c, commit).await?),
        WriteOp::CompleteActivity(id, m) => {
            let gone = sqlx::query("DELETE FROM activities WHERE id = ?").bind(id).execute(&mut *c).await?;
            if gone.rows_affected() == 0 {
                WriteResult::Enqueue(None)
            } else {
                WriteResult::Enqueue(deliver(c, m).await?)
            }
        }
        WriteOp::SaveProgress(id, progress) => {
            let r = sqlx::query("UPDATE activities SET progress = ? WHERE id = ?")
                .bind(progress)
                .bind(id)
                .execute(&mut *c)
                .await?;
            WriteResult::Saved(r.rows_affected() > 0)
        }
        WriteOp::Purge(sel, recursive) => WriteResult::Purge(purge(c, sel, *recursive).await?),
        WriteOp::Restart(id, new_id, now) => WriteResult::Restart(restart(c, id, new_id.clone(), *now).await?),
        WriteOp::Rewind(id, reason, now) => WriteResult::Rewind(rewind(c, id, reason.clone(), *now).await?),
    })
}

fn encode_event(e: &HistoryEvent) -> Vec<u8> {
    e.encode_to_vec()
}

fn decode_event(bytes: &[u8]) -> Result<HistoryEvent, StoreError> {
    HistoryEvent::decode(bytes).map_err(|e| StoreError::Corrupt(format!("history event: {e}")))
}

fn decode_opt<M: prost::Message + Default>(bytes: Option<Vec<u8>>, what: &str) -> Result<Option<M>, StoreError> {
    bytes.map(|b| M::decode(&b[..]).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))).transpose()
}

fn tags_json(tags: &HashMap<String, String>) -> Option<String> {
    if tags.is_empty() {
        None
    } else {
        serde_json::to_string(tags).ok()
    }
}

const INSTANCE_COLUMNS: &str = "instance_id, execution_id, name, version, status, created_at, updated_at, \
     completed_at, scheduled_start_at, input, output, custom_status, failure_details, parent_instance_id, \
     parent_info, tags, trace_context";

fn instance_from_row(row: &SqliteRow) -> Result<InstanceRecord, StoreError> {
    let tags: Option<String> = row.try_get("tags")?;
    Ok(InstanceRecord {
        instance_id: row.try_get("instance_id")?,
        execution_id: row.try_get("execution_id")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        status: status_from_i32(row.try_get("status")?),
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        completed_at_ms: row.try_get("completed_at")?,
        scheduled_start_at_ms: row.try_get("scheduled_start_at")?,
        input: row.try_get("input")?,
        output: row.try_get("output")?,
        custom_status: row.try_get("custom_status")?,
        failure: decode_opt(row.try_get("failure_details")?, "failure details")?,
        parent_instance_id: row.try_get("parent_instance_id")?,
        parent: decode_opt(row.try_get("parent_info")?, "parent info")?,
        tags: match tags {
            Some(t) => serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("tags: {e}")))?,
            None => HashMap::new(),
        },
        trace_context: decode_opt(row.try_get("trace_context")?, "trace context")?,
    })
}

async fn target_of(c: &mut SqliteConnection, instance_id: &str) -> Result<Option<(Target, String)>, StoreError> {
    let row = sqlx::query("SELECT name, version, status, execution_id FROM instances WHERE instance_id = ?")
        .bind(instance_id)
        .fetch_optional(&mut *c)
        .await?;
    row.map(|r| -> Result<(Target, String), StoreError> {
        Ok((
            Target { name: r.try_get("name")?, version: r.try_get("version")?, status: status_from_i32(r.try_get("status")?) },
            r.try_get("execution_id")?,
        ))
    })
    .transpose()
}

async fn insert_inbox(
    c: &mut SqliteConnection,
    m: &Message,
    target: Target,
) -> Result<Delivered, StoreError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO inbox (instance_id, execution_id, priority, visible_at, event) VALUES (?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(&m.target)
    .bind(&m.execution_id)
    .bind(m.priority as i64)
    .bind(m.visible_at_ms)
    .bind(encode_event(&m.event))
    .fetch_one(&mut *c)
    .await?;
    Ok(Delivered {
        inbox_id: id,
        instance_id: m.target.clone(),
        execution_id: m.execution_id.clone(),
        priority: m.priority,
        visible_at_ms: m.visible_at_ms,
        event: m.event.clone(),
        target,
    })
}

/// Delivers a message to a live instance (and, if it names one, the same execution).
async fn deliver(c: &mut SqliteConnection, m: &Message) -> Result<Option<Delivered>, StoreError> {
    let Some((target, execution_id)) = target_of(c, &m.target).await? else { return Ok(None) };
    if is_terminal(target.status) {
        return Ok(None);
    }
    if let Some(wanted) = &m.execution_id {
        if *wanted != execution_id {
            return Ok(None);
        }
    }
    Ok(Some(insert_inbox(c, m, target).await?))
}

/// Removes every trace of an instance.
async fn delete_instance(c: &mut SqliteConnection, instance_id: &str) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM history WHERE instance_id = ?",
        "DELETE FROM inbox WHERE instance_id = ?",
        "DELETE FROM activities WHERE instance_id = ?",
        "DELETE FROM instances WHERE instance_id = ?",
    ] {
        sqlx::query(sql).bind(instance_id).execute(&mut *c).await?;
    }
    Ok(())
}

async fn insert_instance(c: &mut SqliteConnection, new: &NewInstance) -> Result<Delivered, StoreError> {
    let s = &new.spec;
    sqlx::query(
        "INSERT INTO instances (instance_id, execution_id, name, version, status, created_at, updated_at, \
         scheduled_start_at, input, parent_instance_id, parent_info, tags, history_len) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
    )
    .bind(&s.instance_id)
    .bind(&s.execution_id)
    .bind(&s.name)
    .bind(&s.version)
    .bind(OrchestrationStatus::Pending as i32)
    .bind(new.created_at_ms)
    .bind(new.created_at_ms)
    .bind(s.scheduled_start_ms)
    .bind(&s.input)
    .bind(s.parent.as_ref().and_then(|p| p.orchestration_instance.as_ref()).map(|i| i.instance_id.clone()))
    .bind(s.parent.as_ref().map(|p| p.encode_to_vec()))
    .bind(tags_json(&s.tags))
    .execute(&mut *c)
    .await?;
    let start = Message {
        target: s.instance_id.clone(),
        execution_id: Some(s.execution_id.clone()),
        priority: Priority::Start,
        visible_at_ms: new.visible_at_ms,
        event: new.started_event(),
    };
    insert_inbox(
        c,
        &start,
        Target { name: s.name.clone(), version: s.version.clone(), status: OrchestrationStatus::Pending },
    )
    .await
}

async fn create(c: &mut SqliteConnection, new: &NewInstance, reuse: &IdReuse) -> Result<CreateResult, StoreError> {
    let id = &new.spec.instance_id;
    if let Some((existing, _)) = target_of(c, id).await? {
        let replace = match reuse {
            IdReuse::Replace(statuses) => statuses.contains(&existing.status),
            IdReuse::Legacy { statuses, action } => {
                if !statuses.contains(&existing.status) {
                    true
                } else {
                    match action {
                        LegacyReuseAction::Error => false,
                        LegacyReuseAction::Ignore => return Ok(CreateResult::Kept),
                        LegacyReuseAction::Terminate => true,
                    }
                }
            }
        };
        if !replace {
            return Ok(CreateResult::AlreadyExists(existing.status));
        }
        delete_instance(c, id).await?;
    }
    Ok(CreateResult::Created(Box::new(insert_instance(c, new).await?)))
}

/// Creates a sub-orchestration; a live instance holding the id fails the parent's task.
async fn create_child(c: &mut SqliteConnection, new: &NewInstance, now_ms: i64, out: &mut CommitResult) -> Result<(), StoreError> {
    match create(c, new, &IdReuse::terminal()).await? {
        CreateResult::Created(d) => out.delivered.push(*d),
        CreateResult::Kept => {}
        CreateResult::AlreadyExists(status) => {
            if let Some(p) = &new.parent_task {
                let notice = Message::now(
                    p.instance_id.clone(),
                    Some(p.execution_id.clone()),
                    events::sub_orchestration_failed(
                        now_ms,
                        p.task_id,
                        events::failure(
                            "InstanceAlreadyExists",
                            format!(
                                "cannot create sub-orchestration '{}': an instance with that id is {}",
                                new.spec.instance_id,
                                status.as_str_name()
                            ),
                            true,
                        ),
                    ),
                    now_ms,
                );
                if let Some(d) = deliver(c, &notice).await? {
                    out.delivered.push(d);
                }
            }
        }
    }
    Ok(())
}

async fn commit_turn(c: &mut SqliteConnection, t: &TurnCommit) -> Result<CommitResult, StoreError> {
    let row = sqlx::query("SELECT execution_id, status, history_len FROM instances WHERE instance_id = ?")
        .bind(&t.instance_id)
        .fetch_optional(&mut *c)
        .await?;
    let Some(row) = row else { return Err(StoreError::Conflict(t.instance_id.clone())) };
    let execution_id: String = row.try_get("execution_id")?;
    let status = status_from_i32(row.try_get("status")?);
    let history_len: i64 = row.try_get("history_len")?;
    if execution_id != t.execution_id || is_terminal(status) {
        return Err(StoreError::Conflict(t.instance_id.clone()));
    }
    for id in &t.consumed {
        sqlx::query("DELETE FROM inbox WHERE id = ?").bind(id).execute(&mut *c).await?;
    }
    let o = &t.outcome;
    let mut result = CommitResult::default();

    let mut seq = history_len;
    for e in &o.append {
        sqlx::query("INSERT INTO history (instance_id, seq, event) VALUES (?, ?, ?)")
            .bind(&t.instance_id)
            .bind(seq)
            .bind(encode_event(e))
            .execute(&mut *c)
            .await?;
        seq += 1;
    }

    let terminal = o.is_terminal();
    let custom = match &o.custom_status {
        crate::core::CustomStatus::Keep => None,
        crate::core::CustomStatus::Set(v) => Some(v.clone()),
    };
    sqlx::query(
        "UPDATE instances SET status = ?, updated_at = ?, history_len = ?, \
         output = CASE WHEN ? THEN ? ELSE output END, \
         failure_details = CASE WHEN ? THEN ? ELSE failure_details END, \
         completed_at = CASE WHEN ? THEN ? ELSE completed_at END, \
         custom_status = CASE WHEN ? THEN ? ELSE custom_status END, \
         trace_context = COALESCE(?, trace_context) \
         WHERE instance_id = ?",
    )
    .bind(o.status as i32)
    .bind(t.now_ms)
    .bind(seq)
    .bind(terminal)
    .bind(&o.output)
    .bind(terminal)
    .bind(o.failure.as_ref().map(|f| f.encode_to_vec()))
    .bind(terminal)
    .bind(t.now_ms)
    .bind(custom.is_some())
    .bind(custom.flatten())
    .bind(o.trace_context.as_ref().map(|tc| tc.encode_to_vec()))
    .bind(&t.instance_id)
    .execute(&mut *c)
    .await?;

    if terminal {
        // A finished instance consumes nothing more: drop its remaining inbox and queued work.
        sqlx::query("DELETE FROM inbox WHERE instance_id = ?").bind(&t.instance_id).execute(&mut *c).await?;
        sqlx::query("DELETE FROM activities WHERE instance_id = ?").bind(&t.instance_id).execute(&mut *c).await?;
    }

    for a in &o.activities {
        result.activities.push(insert_activity(c, a).await?);
    }
    for child in &o.children {
        create_child(c, child, t.now_ms, &mut result).await?;
    }
    if let Some(next) = &o.continue_as_new {
        continue_as_new(c, t, next, &mut result).await?;
    }
    for m in &o.messages {
        if let Some(d) = deliver(c, m).await? {
            result.delivered.push(d);
        }
    }
    Ok(result)
}

async fn insert_activity(c: &mut SqliteConnection, a: &ActivityRequest) -> Result<QueuedActivity, StoreError> {
    let instance = a.orchestration_instance.clone().unwrap_or_default();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO activities (instance_id, execution_id, task_id, name, version, request) \
         VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(&instance.instance_id)
    .bind(instance.execution_id.unwrap_or_default())
    .bind(a.task_id)
    .bind(&a.name)
    .bind(&a.version)
    .bind(a.encode_to_vec())
    .fetch_one(&mut *c)
    .await?;
    Ok(QueuedActivity { id, request: a.clone(), progress: None })
}

async fn continue_as_new(
    c: &mut SqliteConnection,
    t: &TurnCommit,
    next: &crate::core::NewExecution,
    out: &mut CommitResult,
) -> Result<(), StoreError> {
    let id = &t.instance_id;
    sqlx::query("DELETE FROM history WHERE instance_id = ?").bind(id).execute(&mut *c).await?;
    // Results, timers and activities of the old execution can no longer be consumed.
    sqlx::query("DELETE FROM inbox WHERE instance_id = ? AND execution_id IS NOT NULL").bind(id).execute(&mut *c).await?;
    sqlx::query("DELETE FROM activities WHERE instance_id = ?").bind(id).execute(&mut *c).await?;
    let s = &next.spec;
    sqlx::query(
        "UPDATE instances SET execution_id = ?, version = ?, input = ?, output = NULL, failure_details = NULL, \
         completed_at = NULL, history_len = 0, tags = ?, status = ? WHERE instance_id = ?",
    )
    .bind(&s.execution_id)
    .bind(&s.version)
    .bind(&s.input)
    .bind(tags_json(&s.tags))
    .bind(OrchestrationStatus::Running as i32)
    .bind(id)
    .execute(&mut *c)
    .await?;
    let target = Target { name: s.name.clone(), version: s.version.clone(), status: OrchestrationStatus::Running };
    let start = Message {
        target: id.clone(),
        execution_id: Some(s.execution_id.clone()),
        priority: Priority::Start,
        visible_at_ms: t.now_ms,
        event: events::execution_started(t.now_ms, s),
    };
    out.delivered.push(insert_inbox(c, &start, target.clone()).await?);
    for e in &next.carryover {
        let m = Message {
            target: id.clone(),
            execution_id: Some(s.execution_id.clone()),
            priority: Priority::Carryover,
            visible_at_ms: t.now_ms,
            event: e.clone(),
        };
        out.delivered.push(insert_inbox(c, &m, target.clone()).await?);
    }
    Ok(())
}

async fn purge(c: &mut SqliteConnection, sel: &PurgeSelection, recursive: bool) -> Result<u32, StoreError> {
    let terminal = [
        OrchestrationStatus::Completed as i32,
        OrchestrationStatus::Failed as i32,
        OrchestrationStatus::Terminated as i32,
        OrchestrationStatus::Canceled as i32,
    ];
    let mut queue: Vec<String> = match sel {
        PurgeSelection::Ids(ids) => ids.clone(),
        PurgeSelection::Filter { created_from_ms, created_to_ms, statuses } => {
            let mut qb = sqlx::QueryBuilder::new("SELECT instance_id FROM instances WHERE status IN (");
            let wanted: Vec<i32> = if statuses.is_empty() {
                terminal.to_vec()
            } else {
                statuses.iter().map(|s| *s as i32).filter(|s| terminal.contains(s)).collect()
            };
            if wanted.is_empty() {
                return Ok(0);
            }
            let mut sep = qb.separated(", ");
            for s in wanted {
                sep.push_bind(s);
            }
            qb.push(")");
            if let Some(f) = created_from_ms {
                qb.push(" AND created_at >= ").push_bind(*f);
            }
            if let Some(t) = created_to_ms {
                qb.push(" AND created_at < ").push_bind(*t);
            }
            qb.build_query_scalar::<String>().fetch_all(&mut *c).await?
        }
    };
    let mut deleted = 0u32;
    while let Some(id) = queue.pop() {
        let Some((target, _)) = target_of(c, &id).await? else { continue };
        if !is_terminal(target.status) {
            continue;
        }
        if recursive {
            let children: Vec<String> =
                sqlx::query_scalar("SELECT instance_id FROM instances WHERE parent_instance_id = ?")
                    .bind(&id)
                    .fetch_all(&mut *c)
                    .await?;
            queue.extend(children);
        }
        delete_instance(c, &id).await?;
        deleted += 1;
    }
    Ok(deleted)
}

async fn restart(
    c: &mut SqliteConnection,
    id: &str,
    new_id: Option<String>,
    now_ms: i64,
) -> Result<RestartResult, StoreError> {
    let row = sqlx::query(&format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?"))
        .bind(id)
        .fetch_optional(&mut *c)
        .await?;
    let Some(row) = row else { return Ok(RestartResult::NotFound) };
    let rec = instance_from_row(&row)?;
    if !is_terminal(rec.status) {
        return Ok(RestartResult::NotTerminal(rec.status));
    }
    let instance_id = new_id.unwrap_or_else(|| rec.instance_id.clone());
    let new = NewInstance {
        spec: core::StartSpec {
            instance_id: instance_id.clone(),
            execution_id: uuid::Uuid::new_v4().to_string(),
            name: rec.name,
            version: rec.version,
            input: rec.input,
            parent: None,
            scheduled_start_ms: None,
            parent_trace_context: None,
            tags: rec.tags,
        },
        created_at_ms: now_ms,
        visible_at_ms: now_ms,
        parent_task: None,
    };
    match create(c, &new, &IdReuse::terminal()).await? {
        CreateResult::Created(d) => Ok(RestartResult::Restarted(d)),
        CreateResult::Kept | CreateResult::AlreadyExists(_) => Err(StoreError::Conflict(instance_id)),
    }
}

async fn rewind(c: &mut SqliteConnection, id: &str, _reason: Option<String>, now_ms: i64) -> Result<RewindResult, StoreError> {
    let Some((target, execution_id)) = target_of(c, id).await? else { return Ok(RewindResult::NotFound) };
    if target.status != OrchestrationStatus::Failed {
        return Ok(RewindResult::NotFailed(target.status));
    }
    let history = load_history_with(&mut *c, id).await?;
    let rewound = core::control::rewound_history(&history);
    sqlx::query("DELETE FROM history WHERE instance_id = ?").bind(id).execute(&mut *c).await?;
    for (seq, e) in rewound.iter().enumerate() {
        sqlx::query("INSERT INTO history (instance_id, seq, event) VALUES (?, ?, ?)")
            .bind(id)
            .bind(seq as i64)
            .bind(encode_event(e))
            .execute(&mut *c)
            .await?;
    }
    sqlx::query(
        "UPDATE instances SET status = ?, output = NULL, failure_details = NULL, completed_at = NULL, \
         updated_at = ?, history_len = ? WHERE instance_id = ?",
    )
    .bind(OrchestrationStatus::Running as i32)
    .bind(now_ms)
    .bind(rewound.len() as i64)
    .bind(id)
    .execute(&mut *c)
    .await?;
    let wake = Message {
        target: id.to_string(),
        execution_id: Some(execution_id),
        priority: Priority::Normal,
        visible_at_ms: now_ms,
        event: events::wake_up(now_ms),
    };
    let target = Target { status: OrchestrationStatus::Running, ..target };
    let wake = insert_inbox(c, &wake, target).await?;
    Ok(RewindResult::Rewound { wake: Box::new(wake) })
}

async fn load_history_with<'c, E>(c: E, id: &str) -> Result<Vec<HistoryEvent>, StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT event FROM history WHERE instance_id = ? ORDER BY seq")
        .bind(id)
        .fetch_all(c)
        .await?;
    rows.iter().map(|b| decode_event(b)).collect()
}

/// ` AND status IN (...)` when any statuses are given.
fn push_status_filter(qb: &mut sqlx::QueryBuilder<'_, sqlx::Sqlite>, statuses: &[OrchestrationStatus]) {
    if statuses.is_empty() {
        return;
    }
    qb.push(" AND status IN (");
    let mut sep = qb.separated(", ");
    for s in statuses {
        sep.push_bind(*s as i32);
    }
    qb.push(")");
}

fn delivered_from_row(row: &SqliteRow) -> Result<Delivered, StoreError> {
    let event: Vec<u8> = row.try_get("event")?;
    Ok(Delivered {
        inbox_id: row.try_get("id")?,
        instance_id: row.try_get("instance_id")?,
        execution_id: row.try_get("execution_id")?,
        priority: Priority::from_i64(row.try_get("priority")?),
        visible_at_ms: row.try_get("visible_at")?,
        event: decode_event(&event)?,
        target: Target {
            name: row.try_get("name")?,
            version: row.try_get("version")?,
            status: status_from_i32(row.try_get("status")?),
        },
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_instance(&self, new: NewInstance, reuse: IdReuse) -> Result<CreateResult, StoreError> {
        match self.write(WriteOp::Create(new, reuse)).await? {
            WriteResult::Create(r) => Ok(r),
            _ => Err(StoreError::Corrupt("writer answered with the wrong result kind".into())),
        }
    }

    async fn enqueue(&self, message: Message) -> Result<Option<Delivered>, StoreError> {
        match self.write(WriteOp::Enqueue(message)).await? {
            WriteResult::Enqueue(r) => Ok(r),
            _ => Err(StoreError::Corrupt("writer answered with the wrong result kind".into())),
        }
    }

    async fn commit_turn(&self, commit: TurnCommit) -> Result<CommitResult, StoreError> {
        match self.write(WriteOp::Commit(commit)).await? {
            WriteResult::Commit(r) => Ok(r),
            _ => Err(StoreError::Corrupt("writer answered with the wrong result kind".into())),
        }
    }

    async fn complete_activity(&self, activity_id: i64, result: Message) -> Result<Option<Delivered>, StoreError> {
        match self.write(WriteOp::CompleteActivity(activity_id, result)).await? {
            WriteResult::Enqueue(r) => Ok(r),
            _ => Err(StoreError::Corrupt("writer answered with the wrong result kind".into())),
        }
    }

    async fn save_activity_progress(&self, activity_id: i64, progress: String) -> Result<bool, StoreError> {
        match self.write(WriteOp::SaveProgress(activity_id, progress)).await? {
            WriteResult::Saved(r) => Ok(r),
            _ => Err(StoreError::Corrupt("writer answered with the wrong result kind".into())),
        }
    }

    async fn load_instance(&self, instance_id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?"))
            .bind(instance_id)
            .fetch_optional(&self.reads)
            .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    async fn load_history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        load_history_with(&self.reads, instance_id).await
    }

    async fn query_instances(&self, f: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
        let mut qb = sqlx::QueryBuilder::new(format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE 1 = 1"));
        push_status_filter(&mut qb, &f.statuses);
        if let Some(from) = f.created_from_ms {
            qb.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(to) = f.created_to_ms {
            qb.push(" AND created_at < ").push_bind(to);
        }
        if let Some(prefix) = &f.instance_id_prefix {
            // Range scan on the primary key: [prefix, prefix + U+10FFFF).
            qb.push(" AND instance_id >= ").push_bind(prefix.clone());
            qb.push(" AND instance_id < ").push_bind(format!("{prefix}\u{10FFFF}"));
        }
        if let Some(after) = &f.after_instance_id {
            qb.push(" AND instance_id > ").push_bind(after.clone());
        }
        qb.push(" ORDER BY instance_id LIMIT ").push_bind(i64::from(f.page_size.max(1)));
        let rows = qb.build().fetch_all(&self.reads).await?;
        rows.iter().map(instance_from_row).collect()
    }

    async fn list_completed_ids(&self, f: &CompletedFilter) -> Result<Vec<(i64, String)>, StoreError> {
        let mut qb = sqlx::QueryBuilder::new(
            "SELECT completed_at, instance_id FROM instances WHERE completed_at IS NOT NULL",
        );
        push_status_filter(&mut qb, &f.statuses);
        if let Some(from) = f.completed_from_ms {
            qb.push(" AND completed_at >= ").push_bind(from);
        }
        if let Some(to) = f.completed_to_ms {
            qb.push(" AND completed_at < ").push_bind(to);
        }
        if let Some((t, id)) = &f.after {
            qb.push(" AND (completed_at > ").push_bind(*t);
            qb.push(" OR (completed_at = ").push_bind(*t);
            qb.push(" AND instance_id > ").push_bind(id.clone());
            qb.push("))");
        }
        qb.push(" ORDER BY completed_at, instance_id LIMIT ").push_bind(i64::from(f.page_size.max(1)));
        let rows = qb.build().fetch_all(&self.reads).await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>("completed_at")?, r.try_get::<String, _>("instance_id")?)))
            .collect()
    }

    async fn purge(&self, selection: PurgeSelection, recursive: bool) -> Result<u32, StoreError> {
        match self.write(WriteOp::Purge(selection, recursive)).await? {
            WriteResult::Purge(n) => Ok(n),
            _ => Err(StoreError::Corrupt("writer answered with the wrong result kind".into())),
        }
    }

    async fn restart(&self, instance_id: &str, new_instance_id: Option<String>, now_ms: i64) -> Result<RestartResult, StoreError> {
        match self.write(WriteOp::Restart(instance_id.to_string(), new_instance_id, now_ms)).await? {
            WriteResult::Restart(r) => Ok(r),
            _ => Err(StoreError::Corrupt("writer answered with the wrong result kind".into())),
        }
    }

    async fn rewind(&self, instance_id: &str, reason: Option<String>, now_ms: i64) -> Result<RewindResult, StoreError> {
        match self.write(WriteOp::Rewind(instance_id.to_string(), reason, now_ms)).await? {
            WriteResult::Rewind(r) => Ok(r),
            _ => Err(StoreError::Corrupt("writer answered with the wrong result kind".into())),
        }
    }

    async fn recover(&self) -> Result<Recovered, StoreError> {
        let rows = sqlx::query(
            "SELECT i.id, i.instance_id, i.execution_id, i.priority, i.visible_at, i.event, s.name, s.version, s.status \
             FROM inbox i JOIN instances s ON s.instance_id = i.instance_id ORDER BY i.id",
        )
        .fetch_all(&self.reads)
        .await?;
        let inbox = rows.iter().map(delivered_from_row).collect::<Result<Vec<_>, _>>()?;
        let rows =
            sqlx::query("SELECT id, request, progress FROM activities ORDER BY id").fetch_all(&self.reads).await?;
        let mut activities = Vec::with_capacity(rows.len());
        for r in rows {
            let bytes: Vec<u8> = r.try_get("request")?;
            let request =
                ActivityRequest::decode(&bytes[..]).map_err(|e| StoreError::Corrupt(format!("activity request: {e}")))?;
            activities.push(QueuedActivity { id: r.try_get("id")?, request, progress: r.try_get("progress")? });
        }
        Ok(Recovered { inbox, activities })
    }
}
