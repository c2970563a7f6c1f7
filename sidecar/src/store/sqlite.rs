//! SQLite implementation of [`Store`]: one file, WAL, synchronous commits.
//!
//! All writes go through one writer thread that owns a single connection and groups the
//! writes waiting at that moment into one transaction (group commit): one fsync covers
//! many turns. Each write runs inside its own savepoint, so one failing write never takes
//! its neighbours down. The whole group runs on that thread with cached prepared
//! statements, so a write costs one hand-off to the thread and one back, not one per
//! statement. Reads use a small pool of read-only connections on blocking threads and
//! never wait for the writer (WAL readers see the last commit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use duro_proto::{ActivityRequest, HistoryEvent, OrchestrationStatus};
use parking_lot::Mutex;
use prost::Message as _;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::*;
use crate::core::{self, events, is_terminal, status_from_i32, Message, NewInstance, Priority};

/// Schema migrations, applied in order; `PRAGMA user_version` counts the applied ones.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/sqlite/0001_init.sql")),
    ("0002_activity_progress", include_str!("../../migrations/sqlite/0002_activity_progress.sql")),
];

/// Most writes grouped into one transaction.
const MAX_BATCH: usize = 512;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;

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
    reads: ReadPool,
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

fn open_connection(path: &Path, options: &SqliteOptions, read_only: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    if read_only {
        // The writer set WAL mode (it persists in the file) before any reader opens.
        conn.pragma_update(None, "query_only", "ON")?;
    } else {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if options.synchronous_full { "FULL" } else { "NORMAL" })?;
    }
    Ok(conn)
}

/// Applies the migrations not yet applied, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let mut applied: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?.try_into().unwrap_or(0);
    if applied == 0 {
        // Databases written before the store moved off sqlx record migrations in its table.
        let legacy: Option<i64> = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if legacy.unwrap_or(0) > 0 {
            let n: i64 = conn.query_row("SELECT COUNT(*) FROM _sqlx_migrations WHERE success", [], |r| r.get(0))?;
            applied = usize::try_from(n).unwrap_or(0);
        }
    }
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Migrate(format!(
            "the database was written by a newer Duro (schema version {applied}, this build knows {})",
            MIGRATIONS.len()
        )));
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql).map_err(|e| StoreError::Migrate(format!("{name}: {e}")))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(migration = name, "applied database migration");
    }
    Ok(())
}

/// Read-only connections used on blocking threads; opened on demand up to the limit.
struct ReadPool {
    path: PathBuf,
    options: SqliteOptions,
    idle: std::sync::Arc<Mutex<Vec<Connection>>>,
    permits: std::sync::Arc<Semaphore>,
}

impl ReadPool {
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| StoreError::Closed)?;
        let idle = self.idle.clone();
        let path = self.path.clone();
        let options = self.options.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let popped = idle.lock().pop();
            let conn = match popped {
                Some(c) => c,
                None => open_connection(&path, &options, true)?,
            };
            let r = f(&conn);
            idle.lock().push(conn);
            r
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs migrations.
    pub async fn open(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let path = path.to_path_buf();
        let opened = {
            let (path, options) = (path.clone(), options.clone());
            tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
                let mut conn = open_connection(&path, &options, false)?;
                migrate(&mut conn)?;
                Ok(conn)
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??
        };
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("duro-sqlite-writer".into())
            .spawn(move || writer_loop(opened, rx))
            .map_err(|e| StoreError::Task(format!("cannot start the writer thread: {e}")))?;
        let reads = ReadPool {
            path,
            permits: std::sync::Arc::new(Semaphore::new(options.read_connections.max(1) as usize)),
            options,
            idle: Default::default(),
        };
        Ok(SqliteStore { reads, writer: tx })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(WriteJob { op, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// The writer thread: takes every write waiting, runs them in one transaction, answers.
/// Ends (closing the connection) when the store is dropped.
fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<WriteJob>) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Nearly every group succeeds as a whole: run it without savepoints first. If any
        // write fails, roll the group back and run it again with one savepoint per write,
        // so only the failing writes are left out.
        let outcome = match run_group(&mut conn, &batch, false) {
            Ok(results) if results.iter().all(Result::is_ok) => Ok(results),
            Ok(_) | Err(_) => run_group(&mut conn, &batch, true),
        };
        match outcome {
            Ok(results) => {
                for (job, r) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), "group commit failed; every write in it is rolled back");
                let msg = e.to_string();
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(StoreError::CommitFailed(msg.clone())));
                }
            }
        }
    }
}

/// Runs a group of writes in one transaction. Without savepoints the transaction is
/// rolled back (and nothing committed) as soon as one write fails; with them each failing
/// write is undone alone and the rest commit.
fn run_group(
    conn: &mut Connection,
    batch: &[WriteJob],
    savepoints: bool,
) -> Result<Vec<Result<WriteResult, StoreError>>, rusqlite::Error> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        if !savepoints {
            let r = run_op(&tx, &job.op);
            let failed = r.is_err();
            results.push(r);
            if failed {
                // Dropping the transaction rolls it back.
                return Ok(results);
            }
            continue;
        }
        let sp = tx.savepoint()?;
        let r = run_op(&sp, &job.op);
        if r.is_ok() {
            sp.commit()?;
        }
        // Dropping an uncommitted savepoint rolls it back.
        results.push(r);
    }
    tx.commit()?;
    Ok(results)
}

fn run_op(c: &Connection, op: &WriteOp) -> Result<WriteResult, StoreError> {
    Ok(match op {
        WriteOp::Create(new, reuse) => WriteResult::Create(create(c, new, reuse)?),
        WriteOp::Enqueue(m) => WriteResult::Enqueue(deliver(c, m)?),
        WriteOp::Commit(commit) => WriteResult::Commit(commit_turn(c, commit)?),
        WriteOp::CompleteActivity(id, m) => {
            let gone = c.prepare_cached("DELETE FROM activities WHERE id = ?")?.execute([id])?;
            if gone == 0 {
                WriteResult::Enqueue(None)
            } else {
                WriteResult::Enqueue(deliver(c, m)?)
            }
        }
        WriteOp::SaveProgress(id, progress) => {
            let n = c.prepare_cached("UPDATE activities SET progress = ? WHERE id = ?")?.execute(params![progress, id])?;
            WriteResult::Saved(n > 0)
        }
        WriteOp::Purge(sel, recursive) => WriteResult::Purge(purge(c, sel, *recursive)?),
        WriteOp::Restart(id, new_id, now) => WriteResult::Restart(restart(c, id, new_id.clone(), *now)?),
        WriteOp::Rewind(id, reason, now) => WriteResult::Rewind(rewind(c, id, reason.clone(), *now)?),
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

fn instance_from_row(row: &Row<'_>) -> Result<InstanceRecord, StoreError> {
    let tags: Option<String> = row.get("tags")?;
    Ok(InstanceRecord {
        instance_id: row.get("instance_id")?,
        execution_id: row.get("execution_id")?,
        name: row.get("name")?,
        version: row.get("version")?,
        status: status_from_i32(row.get("status")?),
        created_at_ms: row.get("created_at")?,
        updated_at_ms: row.get("updated_at")?,
        completed_at_ms: row.get("completed_at")?,
        scheduled_start_at_ms: row.get("scheduled_start_at")?,
        input: row.get("input")?,
        output: row.get("output")?,
        custom_status: row.get("custom_status")?,
        failure: decode_opt(row.get("failure_details")?, "failure details")?,
        parent_instance_id: row.get("parent_instance_id")?,
        parent: decode_opt(row.get("parent_info")?, "parent info")?,
        tags: match tags {
            Some(t) => serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("tags: {e}")))?,
            None => HashMap::new(),
        },
        trace_context: decode_opt(row.get("trace_context")?, "trace context")?,
    })
}

fn load_instance_with(c: &Connection, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
    let mut stmt = c.prepare_cached(&format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?"))?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(row) => Ok(Some(instance_from_row(row)?)),
        None => Ok(None),
    }
}

fn target_of(c: &Connection, instance_id: &str) -> Result<Option<(Target, String)>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT name, version, status, execution_id FROM instances WHERE instance_id = ?")?;
    Ok(stmt
        .query_row([instance_id], |r| {
            Ok((Target { name: r.get(0)?, version: r.get(1)?, status: status_from_i32(r.get(2)?) }, r.get(3)?))
        })
        .optional()?)
}

fn insert_inbox(c: &Connection, m: &Message, target: Target) -> Result<Delivered, StoreError> {
    c.prepare_cached("INSERT INTO inbox (instance_id, execution_id, priority, visible_at, event) VALUES (?, ?, ?, ?, ?)")?
        .execute(params![m.target, m.execution_id, m.priority as i64, m.visible_at_ms, encode_event(&m.event)])?;
    Ok(Delivered {
        inbox_id: c.last_insert_rowid(),
        instance_id: m.target.clone(),
        execution_id: m.execution_id.clone(),
        priority: m.priority,
        visible_at_ms: m.visible_at_ms,
        event: m.event.clone(),
        target,
    })
}

/// Delivers a message to a live instance (and, if it names one, the same execution).
fn deliver(c: &Connection, m: &Message) -> Result<Option<Delivered>, StoreError> {
    let Some((target, execution_id)) = target_of(c, &m.target)? else { return Ok(None) };
    if is_terminal(target.status) {
        return Ok(None);
    }
    if let Some(wanted) = &m.execution_id {
        if *wanted != execution_id {
            return Ok(None);
        }
    }
    Ok(Some(insert_inbox(c, m, target)?))
}

/// Removes every trace of an instance.
fn delete_instance(c: &Connection, instance_id: &str) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM history WHERE instance_id = ?",
        "DELETE FROM inbox WHERE instance_id = ?",
        "DELETE FROM activities WHERE instance_id = ?",
        "DELETE FROM instances WHERE instance_id = ?",
    ] {
        c.prepare_cached(sql)?.execute([instance_id])?;
    }
    Ok(())
}

fn insert_instance(c: &Connection, new: &NewInstance) -> Result<Delivered, StoreError> {
    let s = &new.spec;
    c.prepare_cached(
        "INSERT INTO instances (instance_id, execution_id, name, version, status, created_at, updated_at, \
         scheduled_start_at, input, parent_instance_id, parent_info, tags, history_len) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
    )?
    .execute(params![
        s.instance_id,
        s.execution_id,
        s.name,
        s.version,
        OrchestrationStatus::Pending as i32,
        new.created_at_ms,
        new.created_at_ms,
        s.scheduled_start_ms,
        s.input,
        s.parent.as_ref().and_then(|p| p.orchestration_instance.as_ref()).map(|i| i.instance_id.as_str()),
        s.parent.as_ref().map(|p| p.encode_to_vec()),
        tags_json(&s.tags),
    ])?;
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
}

fn create(c: &Connection, new: &NewInstance, reuse: &IdReuse) -> Result<CreateResult, StoreError> {
    let id = &new.spec.instance_id;
    if let Some((existing, _)) = target_of(c, id)? {
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
        delete_instance(c, id)?;
    }
    Ok(CreateResult::Created(Box::new(insert_instance(c, new)?)))
}

/// Creates a sub-orchestration; a live instance holding the id fails the parent's task.
fn create_child(c: &Connection, new: &NewInstance, now_ms: i64, out: &mut CommitResult) -> Result<(), StoreError> {
    match create(c, new, &IdReuse::terminal())? {
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
                if let Some(d) = deliver(c, &notice)? {
                    out.delivered.push(d);
                }
            }
        }
    }
    Ok(())
}

fn commit_turn(c: &Connection, t: &TurnCommit) -> Result<CommitResult, StoreError> {
    let current = c
        .prepare_cached("SELECT execution_id, status, history_len FROM instances WHERE instance_id = ?")?
        .query_row([&t.instance_id], |r| Ok((r.get::<_, String>(0)?, status_from_i32(r.get(1)?), r.get::<_, i64>(2)?)))
        .optional()?;
    let Some((execution_id, status, history_len)) = current else {
        return Err(StoreError::Conflict(t.instance_id.clone()));
    };
    if execution_id != t.execution_id || is_terminal(status) {
        return Err(StoreError::Conflict(t.instance_id.clone()));
    }
    {
        let mut consume = c.prepare_cached("DELETE FROM inbox WHERE id = ? AND instance_id = ?")?;
        for id in &t.consumed {
            if consume.execute(params![id, t.instance_id])? == 0 {
                // Consumed already, or deleted with a replaced execution: the turn saw a
                // stale view and must not commit (it would deliver an event twice).
                return Err(StoreError::Conflict(t.instance_id.clone()));
            }
        }
    }
    let o = &t.outcome;
    let mut result = CommitResult::default();

    let seq = append_history(c, &t.instance_id, history_len, &o.append)?;

    let terminal = o.is_terminal();
    let custom = match &o.custom_status {
        crate::core::CustomStatus::Keep => None,
        crate::core::CustomStatus::Set(v) => Some(v.clone()),
    };
    c.prepare_cached(
        "UPDATE instances SET status = ?, updated_at = ?, history_len = ?, \
         output = CASE WHEN ? THEN ? ELSE output END, \
         failure_details = CASE WHEN ? THEN ? ELSE failure_details END, \
         completed_at = CASE WHEN ? THEN ? ELSE completed_at END, \
         custom_status = CASE WHEN ? THEN ? ELSE custom_status END, \
         trace_context = COALESCE(?, trace_context) \
         WHERE instance_id = ?",
    )?
    .execute(params![
        o.status as i32,
        t.now_ms,
        seq,
        terminal,
        o.output,
        terminal,
        o.failure.as_ref().map(|f| f.encode_to_vec()),
        terminal,
        t.now_ms,
        custom.is_some(),
        custom.flatten(),
        o.trace_context.as_ref().map(|tc| tc.encode_to_vec()),
        t.instance_id,
    ])?;

    if terminal {
        // A finished instance consumes nothing more: drop its remaining inbox and queued work.
        c.prepare_cached("DELETE FROM inbox WHERE instance_id = ?")?.execute([&t.instance_id])?;
        c.prepare_cached("DELETE FROM activities WHERE instance_id = ?")?.execute([&t.instance_id])?;
        result.finished_through = Some(inbox_watermark(c)?);
    }

    for a in &o.activities {
        result.activities.push(insert_activity(c, a)?);
    }
    for child in &o.children {
        create_child(c, child, t.now_ms, &mut result)?;
    }
    if let Some(next) = &o.continue_as_new {
        continue_as_new(c, t, next, &mut result)?;
    }
    for m in &o.messages {
        if let Some(d) = deliver(c, m)? {
            result.delivered.push(d);
        }
    }
    Ok(result)
}

/// Appends `events` to an instance's history from sequence number `first_seq`; returns the
/// history's new length.
fn append_history(c: &Connection, instance_id: &str, first_seq: i64, events: &[HistoryEvent]) -> Result<i64, StoreError> {
    let mut append = c.prepare_cached("INSERT INTO history (instance_id, seq, event) VALUES (?, ?, ?)")?;
    let mut seq = first_seq;
    for e in events {
        append.execute(params![instance_id, seq, encode_event(e)])?;
        seq += 1;
    }
    Ok(seq)
}

fn insert_activity(c: &Connection, a: &ActivityRequest) -> Result<QueuedActivity, StoreError> {
    let instance = a.orchestration_instance.as_ref();
    c.prepare_cached(
        "INSERT INTO activities (instance_id, execution_id, task_id, name, version, request) VALUES (?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        instance.map(|i| i.instance_id.as_str()).unwrap_or_default(),
        instance.and_then(|i| i.execution_id.as_deref()).unwrap_or_default(),
        a.task_id,
        a.name,
        a.version,
        a.encode_to_vec(),
    ])?;
    Ok(QueuedActivity { id: c.last_insert_rowid(), request: a.clone(), progress: None })
}

fn continue_as_new(
    c: &Connection,
    t: &TurnCommit,
    next: &crate::core::NewExecution,
    out: &mut CommitResult,
) -> Result<(), StoreError> {
    let id = &t.instance_id;
    c.prepare_cached("DELETE FROM history WHERE instance_id = ?")?.execute([id])?;
    // Results, timers and activities of the old execution can no longer be consumed.
    c.prepare_cached("DELETE FROM inbox WHERE instance_id = ? AND execution_id IS NOT NULL")?.execute([id])?;
    c.prepare_cached("DELETE FROM activities WHERE instance_id = ?")?.execute([id])?;
    let s = &next.spec;
    c.prepare_cached(
        "UPDATE instances SET execution_id = ?, version = ?, input = ?, output = NULL, failure_details = NULL, \
         completed_at = NULL, history_len = 0, tags = ?, status = ? WHERE instance_id = ?",
    )?
    .execute(params![s.execution_id, s.version, s.input, tags_json(&s.tags), OrchestrationStatus::Running as i32, id])?;
    let target = Target { name: s.name.clone(), version: s.version.clone(), status: OrchestrationStatus::Running };
    let start = Message {
        target: id.clone(),
        execution_id: Some(s.execution_id.clone()),
        priority: Priority::Start,
        visible_at_ms: t.now_ms,
        event: events::execution_started(t.now_ms, s),
    };
    out.delivered.push(insert_inbox(c, &start, target.clone())?);
    for e in &next.carryover {
        let m = Message {
            target: id.clone(),
            execution_id: Some(s.execution_id.clone()),
            priority: Priority::Carryover,
            visible_at_ms: t.now_ms,
            event: e.clone(),
        };
        out.delivered.push(insert_inbox(c, &m, target.clone())?);
    }
    Ok(())
}

/// A query assembled from optional filters: SQL text and its bound values, in order.
struct DynQuery {
    sql: String,
    values: Vec<Value>,
}

impl DynQuery {
    fn new(sql: impl Into<String>) -> DynQuery {
        DynQuery { sql: sql.into(), values: Vec::new() }
    }

    /// Appends `sql` (containing one `?`) bound to `value`.
    fn push(&mut self, sql: &str, value: impl Into<Value>) -> &mut Self {
        self.sql.push_str(sql);
        self.values.push(value.into());
        self
    }

    /// Appends ` AND <column> IN (?, ...)` when any values are given.
    fn push_in(&mut self, column: &str, values: impl IntoIterator<Item = i64>) -> &mut Self {
        let values: Vec<i64> = values.into_iter().collect();
        if values.is_empty() {
            return self;
        }
        self.sql.push_str(&format!(" AND {column} IN ({})", vec!["?"; values.len()].join(", ")));
        self.values.extend(values.into_iter().map(Value::Integer));
        self
    }

    fn rows<T>(&self, c: &Connection, map: impl Fn(&Row<'_>) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
        let mut stmt = c.prepare(&self.sql)?;
        let mut rows = stmt.query(params_from_iter(self.values.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(map(row)?);
        }
        Ok(out)
    }
}

fn status_codes(statuses: &[OrchestrationStatus]) -> impl Iterator<Item = i64> + '_ {
    statuses.iter().map(|s| *s as i64)
}

fn purge(c: &Connection, sel: &PurgeSelection, recursive: bool) -> Result<u32, StoreError> {
    let terminal = [
        OrchestrationStatus::Completed,
        OrchestrationStatus::Failed,
        OrchestrationStatus::Terminated,
        OrchestrationStatus::Canceled,
    ];
    let mut queue: Vec<String> = match sel {
        PurgeSelection::Ids(ids) => ids.clone(),
        PurgeSelection::Filter { created_from_ms, created_to_ms, statuses } => {
            let wanted: Vec<OrchestrationStatus> = if statuses.is_empty() {
                terminal.to_vec()
            } else {
                statuses.iter().copied().filter(|s| terminal.contains(s)).collect()
            };
            if wanted.is_empty() {
                return Ok(0);
            }
            let mut q = DynQuery::new("SELECT instance_id FROM instances WHERE 1 = 1");
            q.push_in("status", status_codes(&wanted));
            if let Some(f) = created_from_ms {
                q.push(" AND created_at >= ?", *f);
            }
            if let Some(t) = created_to_ms {
                q.push(" AND created_at < ?", *t);
            }
            q.rows(c, |r| Ok(r.get::<_, String>(0)?))?
        }
    };
    let mut deleted = 0u32;
    while let Some(id) = queue.pop() {
        let Some((target, _)) = target_of(c, &id)? else { continue };
        if !is_terminal(target.status) {
            continue;
        }
        if recursive {
            let mut stmt = c.prepare_cached("SELECT instance_id FROM instances WHERE parent_instance_id = ?")?;
            let children = stmt.query_map([&id], |r| r.get::<_, String>(0))?;
            for child in children {
                queue.push(child?);
            }
        }
        delete_instance(c, &id)?;
        deleted += 1;
    }
    Ok(deleted)
}

fn restart(c: &Connection, id: &str, new_id: Option<String>, now_ms: i64) -> Result<RestartResult, StoreError> {
    let Some(rec) = load_instance_with(c, id)? else { return Ok(RestartResult::NotFound) };
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
    match create(c, &new, &IdReuse::terminal())? {
        CreateResult::Created(d) => Ok(RestartResult::Restarted(d)),
        CreateResult::Kept | CreateResult::AlreadyExists(_) => Err(StoreError::Conflict(instance_id)),
    }
}

fn rewind(c: &Connection, id: &str, _reason: Option<String>, now_ms: i64) -> Result<RewindResult, StoreError> {
    let Some((target, execution_id)) = target_of(c, id)? else { return Ok(RewindResult::NotFound) };
    if target.status != OrchestrationStatus::Failed {
        return Ok(RewindResult::NotFailed(target.status));
    }
    let history = load_history_with(c, id)?;
    let rewound = core::control::rewound_history(&history);
    c.prepare_cached("DELETE FROM history WHERE instance_id = ?")?.execute([id])?;
    let history_len = append_history(c, id, 0, &rewound)?;
    c.prepare_cached(
        "UPDATE instances SET status = ?, output = NULL, failure_details = NULL, completed_at = NULL, \
         updated_at = ?, history_len = ? WHERE instance_id = ?",
    )?
    .execute(params![OrchestrationStatus::Running as i32, now_ms, history_len, id])?;
    let wake = Message {
        target: id.to_string(),
        execution_id: Some(execution_id),
        priority: Priority::Normal,
        visible_at_ms: now_ms,
        event: events::wake_up(now_ms),
    };
    let target = Target { status: OrchestrationStatus::Running, ..target };
    let wake = insert_inbox(c, &wake, target)?;
    Ok(RewindResult::Rewound { wake: Box::new(wake) })
}

/// A BLOB column borrowed from the row, without copying.
fn blob<'r, I: rusqlite::RowIndex>(row: &'r Row<'_>, column: I) -> Result<&'r [u8], StoreError> {
    row.get_ref(column)?.as_blob().map_err(|e| StoreError::Corrupt(format!("expected a BLOB: {e}")))
}

fn load_history_with(c: &Connection, id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT event FROM history WHERE instance_id = ? ORDER BY seq")?;
    let mut rows = stmt.query([id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let bytes = blob(row, 0)?;
        out.push(decode_event(bytes)?);
    }
    Ok(out)
}

fn delivered_from_row(row: &Row<'_>) -> Result<Delivered, StoreError> {
    Ok(Delivered {
        inbox_id: row.get("id")?,
        instance_id: row.get("instance_id")?,
        execution_id: row.get("execution_id")?,
        priority: Priority::from_i64(row.get("priority")?),
        visible_at_ms: row.get("visible_at")?,
        event: decode_event(blob(row, "event")?)?,
        target: Target { name: row.get("name")?, version: row.get("version")?, status: status_from_i32(row.get("status")?) },
    })
}

/// The newest inbox id ever handed out (ids are never reused: AUTOINCREMENT).
fn inbox_watermark(c: &Connection) -> Result<i64, StoreError> {
    Ok(c.prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'inbox'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0))
}

fn load_inbox_with(c: &Connection, id: &str) -> Result<InboxSnapshot, StoreError> {
    // One read transaction: the rows and the watermark come from the same snapshot.
    c.execute_batch("BEGIN")?;
    let read = (|| {
        let mut q = DynQuery::new(
            "SELECT i.id, i.instance_id, i.execution_id, i.priority, i.visible_at, i.event, s.name, s.version, s.status \
             FROM inbox i JOIN instances s ON s.instance_id = i.instance_id",
        );
        q.push(" WHERE i.instance_id = ? ORDER BY i.id", id.to_string());
        let rows = q.rows(c, delivered_from_row)?;
        Ok(InboxSnapshot { rows, watermark: inbox_watermark(c)? })
    })();
    c.execute_batch("COMMIT")?;
    read
}

fn recover_with(c: &Connection) -> Result<Recovered, StoreError> {
    let inbox = DynQuery::new(
        "SELECT i.id, i.instance_id, i.execution_id, i.priority, i.visible_at, i.event, s.name, s.version, s.status \
         FROM inbox i JOIN instances s ON s.instance_id = i.instance_id ORDER BY i.id",
    )
    .rows(c, delivered_from_row)?;
    let activities = DynQuery::new("SELECT id, request, progress FROM activities ORDER BY id").rows(c, |r| {
        let request = ActivityRequest::decode(blob(r, "request")?)
            .map_err(|e| StoreError::Corrupt(format!("activity request: {e}")))?;
        Ok(QueuedActivity { id: r.get("id")?, request, progress: r.get("progress")? })
    })?;
    Ok(Recovered { inbox, activities })
}

/// Unwraps the writer's answer, which must be of the kind the caller asked for.
macro_rules! expect_result {
    ($answer:expr, $kind:ident) => {
        match $answer {
            WriteResult::$kind(r) => Ok(r),
            _ => Err(StoreError::Corrupt("writer answered with the wrong result kind".into())),
        }
    };
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_instance(&self, new: NewInstance, reuse: IdReuse) -> Result<CreateResult, StoreError> {
        expect_result!(self.write(WriteOp::Create(new, reuse)).await?, Create)
    }

    async fn enqueue(&self, message: Message) -> Result<Option<Delivered>, StoreError> {
        expect_result!(self.write(WriteOp::Enqueue(message)).await?, Enqueue)
    }

    async fn commit_turn(&self, commit: TurnCommit) -> Result<CommitResult, StoreError> {
        expect_result!(self.write(WriteOp::Commit(commit)).await?, Commit)
    }

    async fn complete_activity(&self, activity_id: i64, result: Message) -> Result<Option<Delivered>, StoreError> {
        expect_result!(self.write(WriteOp::CompleteActivity(activity_id, result)).await?, Enqueue)
    }

    async fn save_activity_progress(&self, activity_id: i64, progress: String) -> Result<bool, StoreError> {
        expect_result!(self.write(WriteOp::SaveProgress(activity_id, progress)).await?, Saved)
    }

    async fn load_instance(&self, instance_id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let id = instance_id.to_string();
        self.reads.run(move |c| load_instance_with(c, &id)).await
    }

    async fn load_history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        let id = instance_id.to_string();
        self.reads.run(move |c| load_history_with(c, &id)).await
    }

    async fn query_instances(&self, f: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
        let mut q = DynQuery::new(format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE 1 = 1"));
        q.push_in("status", status_codes(&f.statuses));
        if let Some(from) = f.created_from_ms {
            q.push(" AND created_at >= ?", from);
        }
        if let Some(to) = f.created_to_ms {
            q.push(" AND created_at < ?", to);
        }
        if let Some(prefix) = &f.instance_id_prefix {
            // Range scan on the primary key: [prefix, prefix + U+10FFFF).
            q.push(" AND instance_id >= ?", prefix.clone());
            q.push(" AND instance_id < ?", format!("{prefix}\u{10FFFF}"));
        }
        if let Some(after) = &f.after_instance_id {
            q.push(" AND instance_id > ?", after.clone());
        }
        q.push(" ORDER BY instance_id LIMIT ?", i64::from(f.page_size.max(1)));
        self.reads.run(move |c| q.rows(c, instance_from_row)).await
    }

    async fn list_completed_ids(&self, f: &CompletedFilter) -> Result<Vec<(i64, String)>, StoreError> {
        let mut q = DynQuery::new("SELECT completed_at, instance_id FROM instances WHERE completed_at IS NOT NULL");
        q.push_in("status", status_codes(&f.statuses));
        if let Some(from) = f.completed_from_ms {
            q.push(" AND completed_at >= ?", from);
        }
        if let Some(to) = f.completed_to_ms {
            q.push(" AND completed_at < ?", to);
        }
        if let Some((t, id)) = &f.after {
            q.push(" AND (completed_at > ?", *t);
            q.push(" OR (completed_at = ?", *t);
            q.push(" AND instance_id > ?))", id.clone());
        }
        q.push(" ORDER BY completed_at, instance_id LIMIT ?", i64::from(f.page_size.max(1)));
        self.reads.run(move |c| q.rows(c, |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))).await
    }

    async fn purge(&self, selection: PurgeSelection, recursive: bool) -> Result<u32, StoreError> {
        expect_result!(self.write(WriteOp::Purge(selection, recursive)).await?, Purge)
    }

    async fn restart(&self, instance_id: &str, new_instance_id: Option<String>, now_ms: i64) -> Result<RestartResult, StoreError> {
        expect_result!(self.write(WriteOp::Restart(instance_id.to_string(), new_instance_id, now_ms)).await?, Restart)
    }

    async fn rewind(&self, instance_id: &str, reason: Option<String>, now_ms: i64) -> Result<RewindResult, StoreError> {
        expect_result!(self.write(WriteOp::Rewind(instance_id.to_string(), reason, now_ms)).await?, Rewind)
    }

    async fn load_inbox(&self, instance_id: &str) -> Result<InboxSnapshot, StoreError> {
        let id = instance_id.to_string();
        self.reads.run(move |c| load_inbox_with(c, &id)).await
    }

    async fn recover(&self) -> Result<Recovered, StoreError> {
        self.reads.run(recover_with).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{StartSpec, TurnOutcome};

    fn new_instance(id: &str, now: i64) -> NewInstance {
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

    fn finish(id: &str, consumed: Vec<i64>, status: OrchestrationStatus, now: i64) -> TurnCommit {
        let mut outcome = TurnOutcome::unchanged(status, 0);
        outcome.append = vec![events::orchestrator_started(now)];
        outcome.output = Some("\"done\"".into());
        TurnCommit { instance_id: id.into(), execution_id: format!("{id}-exec"), consumed, outcome, now_ms: now }
    }

    async fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("t.db"), SqliteOptions::default()).await.unwrap()
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn fresh_database_gets_every_migration_once() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(&dir).await);
        assert_eq!(user_version(&dir.path().join("t.db")), MIGRATIONS.len() as i64);
        // Re-opening applies nothing twice (an ALTER TABLE ADD COLUMN would fail).
        let store = open(&dir).await;
        assert!(store.load_instance("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn database_written_under_sqlx_migrations_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0].1).unwrap();
            c.execute_batch(
                "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, success BOOLEAN NOT NULL); \
                 INSERT INTO _sqlx_migrations VALUES (1, TRUE);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
        assert_eq!(user_version(&path), MIGRATIONS.len() as i64);
        // 0002 ran: the progress column exists.
        let created = store.create_instance(new_instance("a", 1), IdReuse::terminal()).await.unwrap();
        assert!(matches!(created, CreateResult::Created(_)));
        assert!(store.recover().await.unwrap().activities.is_empty());
    }

    #[tokio::test]
    async fn schema_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let err = SqliteStore::open(&path, SqliteOptions::default()).await.err().unwrap();
        assert!(matches!(err, StoreError::Migrate(ref m) if m.contains("newer")), "{err}");
    }

    #[tokio::test]
    async fn a_failing_write_does_not_take_the_writes_committed_with_it_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(&dir).await);
        // Many writes in flight at once land in shared group commits; every other one
        // conflicts (its instance does not exist) and must roll back alone.
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    store.create_instance(new_instance(&format!("ok-{i}"), 1), IdReuse::terminal()).await.map(|_| ())
                } else {
                    store
                        .commit_turn(finish(&format!("missing-{i}"), vec![], OrchestrationStatus::Completed, 2))
                        .await
                        .map(|_| ())
                }
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let r = t.await.unwrap();
            if i % 2 == 0 {
                r.unwrap();
            } else {
                assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
            }
        }
        let all = store.query_instances(&InstanceFilter { page_size: 1000, ..Default::default() }).await.unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(store.recover().await.unwrap().inbox.len(), 100);
    }

    #[tokio::test]
    async fn a_turn_commit_appends_history_consumes_its_inbox_and_finishes_the_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let CreateResult::Created(start) = store.create_instance(new_instance("a", 1), IdReuse::terminal()).await.unwrap()
        else {
            panic!("not created")
        };
        store.commit_turn(finish("a", vec![start.inbox_id], OrchestrationStatus::Completed, 5)).await.unwrap();
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

    #[tokio::test]
    async fn queries_filter_by_status_prefix_and_page_and_purge_only_finished_instances() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        for (i, id) in ["job-1", "job-2", "job-3", "other-1"].iter().enumerate() {
            let CreateResult::Created(d) =
                store.create_instance(new_instance(id, 10 + i as i64), IdReuse::terminal()).await.unwrap()
            else {
                panic!("not created")
            };
            if *id != "job-2" {
                store.commit_turn(finish(id, vec![d.inbox_id], OrchestrationStatus::Completed, 100 + i as i64)).await.unwrap();
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
            .list_completed_ids(&CompletedFilter { page_size: 10, after: Some((100, "job-1".into())), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(done, [(102, "job-3".to_string()), (103, "other-1".to_string())]);
        let purged = store
            .purge(PurgeSelection::Filter { created_from_ms: None, created_to_ms: None, statuses: vec![] }, false)
            .await
            .unwrap();
        assert_eq!(purged, 3);
        let left = store.query_instances(&InstanceFilter { page_size: 10, ..Default::default() }).await.unwrap();
        assert_eq!(ids(left), ["job-2"]);
    }
}
