//! SQLite implementation of [`Store`]: one file, WAL, synchronous commits.
//!
//! All writes go through one writer thread that owns a single connection and groups the
//! writes waiting at that moment into one transaction (group commit): one fsync covers
//! many turns. When a write fails, the group runs again with a savepoint per write, so one
//! failing write never takes its neighbours down; when SQLite itself rolled the whole
//! transaction back, or the COMMIT fails, every write of the group is answered with a
//! failure. The whole group runs on that thread with cached prepared
//! statements, so a write costs one hand-off to the thread and one back, not one per
//! statement. The writer does not wait for the disk: a syncer thread fsyncs the WAL once
//! for every group written meanwhile and only then answers them, while the writer runs
//! the next group; pipelined writes are even answered before their COMMIT (see
//! ARCHITECTURE.md, "Pipelined commits"). Reads use a small pool of read-only connections
//! on blocking threads; they wait only for groups already handed on to become durable.
//!
//! One store per database file: an exclusive lock on `<db>.lock` (which names the holder's
//! pid) is held until the writer has closed its connection. A panic of the writer thread
//! is reported by [`SqliteStore::writer_died`].

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

use super::codec::{decode_event, decode_opt, encode_event, tags_json};
use super::*;
use crate::core::{self, events, is_terminal, status_from_i32, Message, NewInstance, Priority};

mod entities;

/// Schema migrations, applied in order; `PRAGMA user_version` counts the applied ones.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../migrations/sqlite/0001_init.sql")),
    ("0002_activity_progress", include_str!("../../migrations/sqlite/0002_activity_progress.sql")),
    ("0003_delivery_attempts", include_str!("../../migrations/sqlite/0003_delivery_attempts.sql")),
    ("0004_entities", include_str!("../../migrations/sqlite/0004_entities.sql")),
    ("0005_entity_delivery_attempts", include_str!("../../migrations/sqlite/0005_entity_delivery_attempts.sql")),
    ("0006_inbox_visible", include_str!("../../migrations/sqlite/0006_inbox_visible.sql")),
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
    /// How long a connection waits for another one's lock before failing with "busy".
    pub busy_timeout: Duration,
    /// `PRAGMA secure_delete=ON` on the writer: deleted rows (an activity's queue row holds
    /// a durable HTTP request's secret headers until it completes) are overwritten with
    /// zeros, in the database and in the WAL, instead of lingering in free pages.
    pub secure_delete: bool,
    /// The integrity check run when the store opens.
    pub check: StartupCheck,
    /// Fault injection for crash tests: abort the process right before about one in this
    /// many COMMITs of groups that handed results on early (the state a power cut leaves).
    pub abort_before_commit: Option<u32>,
}

/// How thoroughly the database is checked when the store opens: a damaged file is refused
/// rather than served (it would fail writes later, for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StartupCheck {
    /// No integrity check (the file is still opened, migrated and test-written).
    Off,
    /// `PRAGMA quick_check`: every page and record, not index contents (linear in size).
    #[default]
    Quick,
    /// `PRAGMA integrity_check`: also every index against its table (slower).
    Full,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous_full: true,
            read_connections: 4,
            busy_timeout: Duration::from_secs(30),
            secure_delete: true,
            check: StartupCheck::default(),
            abort_before_commit: None,
        }
    }
}

/// Refuses a database whose directory is missing, before anything is created.
fn check_directory(path: &Path) -> Result<(), StoreError> {
    let name = path.as_os_str();
    if name.is_empty() || name == ":memory:" || name.to_string_lossy().starts_with("file:") {
        return Ok(());
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            Err(StoreError::NoDirectory { path: path.to_path_buf(), dir: dir.to_path_buf() })
        }
        _ => Ok(()),
    }
}

/// Says what an SQLite failure while opening means for the operator: a file that cannot
/// be written or one that is damaged is refused with its own sentence.
fn opening_error(path: &Path, e: StoreError) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        StoreError::Database(rusqlite::Error::SqliteFailure(f, _)) => match f.code {
            C::ReadOnly | C::CannotOpen | C::PermissionDenied => {
                StoreError::ReadOnly { path: path.to_path_buf(), why: e.to_string().replace("database error: ", "") }
            }
            C::DatabaseCorrupt | C::NotADatabase => StoreError::Damaged {
                path: path.to_path_buf(),
                check: "opening it",
                detail: e.to_string().replace("database error: ", ""),
            },
            _ => e,
        },
        StoreError::Migrate(m) if m.contains("malformed") || m.contains("not a database") => {
            StoreError::Damaged { path: path.to_path_buf(), check: "migrating it", detail: m.clone() }
        }
        StoreError::Lock { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            StoreError::ReadOnly { path: path.to_path_buf(), why: format!("cannot create its lock file: {source}") }
        }
        _ => e,
    }
}

/// Start-up checks on the writer's connection: the file is writable (a read-only file
/// would otherwise be served and fail every write) and, unless turned off, intact.
fn check_database(conn: &Connection, path: &Path, check: StartupCheck) -> Result<(), StoreError> {
    let read_only = conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false);
    if read_only {
        return Err(StoreError::ReadOnly { path: path.to_path_buf(), why: "SQLite opened it read-only".into() });
    }
    let pragma = match check {
        StartupCheck::Off => None,
        StartupCheck::Quick => Some("quick_check"),
        StartupCheck::Full => Some("integrity_check"),
    };
    if let Some(pragma) = pragma {
        let started = std::time::Instant::now();
        let problems: Vec<String> = {
            let mut stmt = conn.prepare(&format!("PRAGMA {pragma}(5)"))?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        if problems.iter().any(|p| p != "ok") {
            let detail = problems.join("; ").split_whitespace().collect::<Vec<_>>().join(" ");
            return Err(StoreError::Damaged { path: path.to_path_buf(), check: pragma, detail });
        }
        tracing::debug!(check = pragma, took_ms = started.elapsed().as_millis() as u64, "database integrity checked");
    }
    // A real write (the header's user_version, unchanged): fails now, not at the first
    // request, when the file or its directory cannot be written.
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    conn.execute_batch(&format!("BEGIN IMMEDIATE; PRAGMA user_version = {version}; COMMIT;")).inspect_err(|_| {
        let _ = conn.execute_batch("ROLLBACK");
    })?;
    Ok(())
}

pub struct SqliteStore {
    reads: ReadPool,
    /// `None` only while dropping (closing the channel ends the writer thread).
    writer: Option<mpsc::Sender<WriteJob>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// Set (to the reason) if the writer thread dies while the store is open.
    died: tokio::sync::watch::Receiver<Option<String>>,
    /// Held for the store's lifetime: one writer per database file.
    _lock: Option<std::fs::File>,
}

impl Drop for SqliteStore {
    /// Waits for the writer to finish what it was given and close its connection, so the
    /// lock is released only once nothing of this store writes to the file any more.
    fn drop(&mut self) {
        self.writer = None;
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

/// Takes the exclusive lock on `<db>.lock` next to the database (an OS advisory lock,
/// `flock` on Unix: released when the process ends, however it ends) and writes this
/// process's id into it. In-memory databases (`:memory:`, empty) and `file:` URIs are
/// not locked.
fn lock_database(path: &Path) -> Result<Option<std::fs::File>, StoreError> {
    use std::io::{Read as _, Seek as _, Write as _};
    let name = path.as_os_str();
    if name.is_empty() || name == ":memory:" || name.to_string_lossy().starts_with("file:") {
        return Ok(None);
    }
    let mut lock_path = name.to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let io = |source| StoreError::Lock { path: path.to_path_buf(), source };
    // Never truncated before it is locked: it names the holder.
    let mut file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) {
                Some(pid) => format!(" (pid {pid})"),
                None => String::new(),
            };
            return Err(StoreError::InUse { path: path.to_path_buf(), holder });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(Some(file))
}

struct WriteJob {
    op: WriteOp,
    /// Taken when answered: after the group's COMMIT, or, for a pipelined write, as soon
    /// as the group's statements ran (before the COMMIT).
    reply: Option<oneshot::Sender<Result<WriteResult, StoreError>>>,
    /// Pipelined writes only: answered after the COMMIT, saying whether it is durable.
    durable: Option<oneshot::Sender<Result<(), StoreError>>>,
}

impl WriteJob {
    /// Whether the write's result was handed on before its group committed.
    fn answered_early(&self) -> bool {
        self.durable.is_some() && self.reply.is_none()
    }
}

// One value per write crosses the channel; boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum WriteOp {
    Create(NewInstance, IdReuse),
    Enqueue(Message),
    Commit(TurnCommit),
    CompleteActivity(i64, Message),
    SaveProgress(i64, String),
    RecordAttempts(Vec<Attempts>),
    Purge(PurgeSelection, bool),
    Restart(String, Option<String>, i64),
    Rewind(String, Option<String>, i64),
    EnqueueEntity(Vec<crate::core::entity::EntityMessage>, i64),
    CommitEntity(EntityCommit),
    RemoveEmptyEntities(Vec<String>),
    RecordEntityAttempts(String, u32),
    /// Readiness probe: rewrites the header's `user_version` (unchanged), so the group's
    /// COMMIT writes a WAL frame and syncs like a real write.
    Probe,
    /// Tests only: runs a function on the writer's connection inside a group (to set a
    /// connection-level pragma there, or to make the writer thread panic).
    #[cfg(test)]
    OnWriter(Box<OnWriterFn>),
}

#[cfg(test)]
type OnWriterFn = dyn Fn(&Connection) -> Result<(), StoreError> + Send;

#[allow(clippy::large_enum_variant)]
enum WriteResult {
    Create(CreateResult),
    Enqueue(Option<Delivered>),
    Commit(CommitResult),
    Purge(u32),
    Saved(bool),
    Restart(RestartResult),
    Rewind(RewindResult),
    EntityQueued(Vec<QueuedEntityMessage>),
    EntityCommitted(EntityCommitResult),
    /// Stands in for a pipelined write's result once it was handed on.
    HandedOn,
}

fn open_connection(path: &Path, options: &SqliteOptions, read_only: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(options.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    if read_only {
        // The writer set WAL mode (it persists in the file) before any reader opens.
        conn.pragma_update(None, "query_only", "ON")?;
    } else {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if options.synchronous_full { "FULL" } else { "NORMAL" })?;
        conn.pragma_update(None, "secure_delete", if options.secure_delete { "ON" } else { "OFF" })?;
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

/// How far the writer got. Reads wait until every group handed on or committed before they
/// started is durable: nothing the engine acted on is missing from what it reads back, and
/// a committed group is not shown before its WAL frames are synced.
#[derive(Default)]
struct Pipeline {
    /// The last group whose results were handed on before its COMMIT, or that committed.
    handed: std::sync::atomic::AtomicU64,
    /// The last group whose COMMIT finished (or failed: then the store stops).
    committed: tokio::sync::watch::Sender<u64>,
}

impl Pipeline {
    /// Waits until every result handed on so far is durable.
    async fn settled(&self) {
        let target = self.handed.load(std::sync::atomic::Ordering::Acquire);
        if *self.committed.borrow() >= target {
            return;
        }
        let mut committed = self.committed.subscribe();
        let _ = committed.wait_for(|c| *c >= target).await;
    }
}

/// Read-only connections used on blocking threads; opened on demand up to the limit.
struct ReadPool {
    pipeline: std::sync::Arc<Pipeline>,
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
        self.pipeline.settled().await;
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
        let (opened, lock, wal) = {
            let (path, options) = (path.clone(), options.clone());
            type Opened = (Connection, Option<std::fs::File>, Option<std::fs::File>);
            tokio::task::spawn_blocking(move || -> Result<Opened, StoreError> {
                // Before anything touches the database: a second process must not migrate
                // it, recover its inbox or write to it.
                check_directory(&path)?;
                let lock = lock_database(&path).map_err(|e| opening_error(&path, e))?;
                let opened = (|| {
                    let mut conn = open_connection(&path, &options, false)?;
                    check_database(&conn, &path, options.check)?;
                    migrate(&mut conn)?;
                    Ok(conn)
                })();
                let conn = opened.map_err(|e| opening_error(&path, e))?;
                let wal = if options.synchronous_full { separate_wal_sync(&conn, &path) } else { None };
                Ok((conn, lock, wal))
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??
        };
        let (tx, rx) = mpsc::channel(4096);
        let (died_tx, died) = tokio::sync::watch::channel(None);
        let pipeline = std::sync::Arc::new(Pipeline::default());
        let writer_pipeline = pipeline.clone();
        let abort_one_in = options.abort_before_commit;
        let writer_thread = std::thread::Builder::new()
            .name("duro-sqlite-writer".into())
            .spawn(move || {
                // A panic ends the loop (and closes the connection); say so before the
                // thread ends, so the process can exit instead of failing every write.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    writer_loop(opened, rx, wal, &writer_pipeline, abort_one_in)
                }));
                // No read may wait for a group that will never commit.
                writer_pipeline.committed.send_replace(u64::MAX);
                if let Ok(Err(why)) = &run {
                    let _ = died_tx.send(Some(why.clone()));
                }
                if let Err(panic) = run {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    let _ = died_tx.send(Some(format!("the SQLite writer thread panicked: {what}")));
                }
            })
            .map_err(|e| StoreError::Task(format!("cannot start the writer thread: {e}")))?;
        let reads = ReadPool {
            pipeline,
            path,
            permits: std::sync::Arc::new(Semaphore::new(options.read_connections.max(1) as usize)),
            options,
            idle: Default::default(),
        };
        Ok(SqliteStore { reads, writer: Some(tx), writer_thread: Some(writer_thread), died, _lock: lock })
    }

    /// Resolves, with the reason, if the writer thread dies while the store is open (it
    /// panicked): every later write would fail, so the process should exit and be
    /// restarted. Never resolves otherwise.
    pub fn writer_died(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut died = self.died.clone();
        async move {
            let why = died.wait_for(Option::is_some).await.map(|why| why.clone());
            match why {
                Ok(why) => why.unwrap_or_default(),
                // The thread ended normally: the store was closed.
                Err(_) => std::future::pending().await,
            }
        }
    }

    async fn write(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        let (reply, rx) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or(StoreError::Closed)?;
        writer.send(WriteJob { op, reply: Some(reply), durable: None }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A write answered once its statements ran in the writer's open transaction, with
    /// the signal of its COMMIT (see [`Store::commit_turn_pipelined`]).
    async fn write_pipelined(&self, op: WriteOp) -> Result<(WriteResult, Durable), StoreError> {
        let (reply, rx) = oneshot::channel();
        let (durable, durable_rx) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or(StoreError::Closed)?;
        writer
            .send(WriteJob { op, reply: Some(reply), durable: Some(durable) })
            .await
            .map_err(|_| StoreError::Closed)?;
        let result = rx.await.map_err(|_| StoreError::Closed)??;
        Ok((result, Durable::pending(durable_rx)))
    }
}

/// Moves the `fsync` of commits off the writer thread: the writer's connection commits with
/// `synchronous=NORMAL` (the WAL frames are written, not synced) and the syncer thread syncs
/// the WAL file before any of those commits is answered. In WAL mode a transaction is
/// durable once its frames are on disk, so this is `synchronous=FULL` with the sync done
/// once for every group written meanwhile, while the writer goes on with the next group.
/// `None` (keep `FULL`) when the WAL file cannot be opened (an in-memory or URI database).
fn separate_wal_sync(conn: &Connection, path: &Path) -> Option<std::fs::File> {
    let name = path.to_string_lossy();
    if name.is_empty() || name == ":memory:" || name.starts_with("file:") {
        return None;
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let file = std::fs::File::open(&wal).ok()?;
    conn.pragma_update(None, "synchronous", "NORMAL").ok()?;
    Some(file)
}

/// A group the writer has run, waiting for the WAL's sync before its answers go out.
struct Written {
    group: u64,
    answers: Vec<(WriteJob, Result<WriteResult, StoreError>)>,
}

/// Answers one write: its durability (pipelined writes) and its result (unless handed on).
fn answer(mut job: WriteJob, r: Result<WriteResult, StoreError>) {
    if let Some(durable) = job.durable.take() {
        let _ = durable.send(r.as_ref().map(|_| ()).map_err(copy_failure));
    }
    if let Some(reply) = job.reply.take() {
        let _ = reply.send(r);
    }
}

/// The syncer thread: takes every written group waiting, syncs the WAL once for all of them
/// (frames written before the sync started are on disk when it returns), then marks them
/// durable for reads and answers them. A failed sync leaves it unknown what is on disk: every
/// waiting write is answered with a failure and the store stops (reported as `fatal`).
fn syncer_loop(
    wal: Option<std::fs::File>,
    rx: std::sync::mpsc::Receiver<Written>,
    pipeline: &Pipeline,
    fatal: &Mutex<Option<String>>,
) {
    // After a failed sync a later one may report success although the earlier frames are
    // lost (the kernel dropped them): no group is answered as durable any more.
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let synced = match (&failed, &wal) {
            (Some(cause), _) => Err(std::io::Error::other(cause.clone())),
            (None, Some(file)) if batch.iter().any(|w| w.answers.iter().any(|(_, r)| r.is_ok())) => file.sync_data(),
            _ => Ok(()),
        };
        if let Err(e) = &synced {
            failed.get_or_insert_with(|| e.to_string());
        }
        let last = batch.iter().map(|w| w.group).max().unwrap_or(0);
        if let Err(e) = &synced {
            let cause = format!("syncing the write-ahead log failed: {e}");
            tracing::error!(error = %cause, "commits may not be on disk; stopping the store");
            fatal.lock().get_or_insert(cause);
        }
        pipeline.committed.send_replace(last);
        for written in batch {
            for (job, r) in written.answers {
                let r = match (&synced, r) {
                    (Err(e), Ok(_)) => Err(StoreError::Broken(format!("syncing the write-ahead log failed: {e}"))),
                    (_, r) => r,
                };
                answer(job, r);
            }
        }
    }
}

/// The writer thread: takes every write waiting, runs them in one transaction and hands
/// them to the syncer thread, which answers them once they are durable. Ends (closing the
/// connection) when the store is dropped, or with the reason when a group whose results
/// were already handed on (pipelined writes) failed to commit or its sync failed: the
/// engine has acted on state that is not stored, and only a restart, which rebuilds
/// everything from the store, makes the two agree again.
fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteJob>,
    wal: Option<std::fs::File>,
    pipeline: &Pipeline,
    abort_one_in: Option<u32>,
) -> Result<(), String> {
    let fatal: Mutex<Option<String>> = Mutex::new(None);
    let (to_syncer, written) = std::sync::mpsc::channel::<Written>();
    std::thread::scope(|scope| {
        let syncer = std::thread::Builder::new()
            .name("duro-sqlite-syncer".into())
            .spawn_scoped(scope, || syncer_loop(wal, written, pipeline, &fatal))
            .map_err(|e| format!("cannot start the WAL syncer thread: {e}"))?;
        let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
        let mut group: u64 = 0;
        let mut ended = Ok(());
        let writer_started = std::time::Instant::now();
        while let Some(first) = rx.blocking_recv() {
            group += 1;
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let started = std::time::Instant::now();
            let results =
                run_group(&mut conn, &mut batch, &Handoff { pipeline, group, abort_one_in, started: writer_started });
            // Committed and visible to readers, not yet synced: a read waits for the sync.
            pipeline.handed.store(group, std::sync::atomic::Ordering::Release);
            let committed = results.iter().all(Result::is_ok);
            crate::metrics::store_commit(batch.len(), started.elapsed(), committed);
            let lost_hand_off = batch.iter().zip(&results).find_map(|(job, r)| match r {
                Err(e) if job.answered_early() => Some(e.to_string()),
                _ => None,
            });
            let answers: Vec<_> = batch.drain(..).zip(results).collect();
            if to_syncer.send(Written { group, answers }).is_err() {
                ended = Err("the WAL syncer thread ended".to_string());
                break;
            }
            if let Some(cause) = lost_hand_off {
                tracing::error!(error = %cause, "a group commit failed after its results were handed on; stopping the store so that a restart recovers from what is stored");
                ended =
                    Err(format!("a group commit failed after its results were handed on (pipelined commit): {cause}"));
                break;
            }
            if let Some(cause) = fatal.lock().clone() {
                ended = Err(cause);
                break;
            }
        }
        drop(to_syncer);
        let _ = syncer.join();
        ended.and_then(|()| fatal.lock().take().map_or(Ok(()), Err))
    })
}

/// The same failure again, for the second answer of a pipelined write (its durability).
fn copy_failure(e: &StoreError) -> StoreError {
    match e {
        StoreError::Broken(cause) => StoreError::Broken(cause.clone()),
        e if e.is_transient() => StoreError::CommitFailed(e.to_string()),
        e => StoreError::Broken(e.to_string()),
    }
}

/// How one attempt at a group ended.
enum GroupRun {
    /// Committed: these are the writes' answers (with savepoints, some may be failures
    /// that were undone alone).
    Committed(Vec<Result<WriteResult, StoreError>>),
    /// Without savepoints, a write failed; nothing was committed. Its index and error.
    WriteFailed(usize, StoreError),
    /// Nothing was committed: the transaction could not start, SQLite rolled it back by
    /// itself after the write at the given index failed, or the final COMMIT failed.
    /// `transient`: whether retrying may succeed (busy, full, I/O) or not (a corrupt or
    /// read-only file).
    Lost { failed: Option<(usize, StoreError)>, cause: String, transient: bool },
}

/// Runs a group of writes and answers each one, never saying OK for a write that is not
/// committed nor failure for one that is.
///
/// Nearly every group succeeds as a whole: it runs without savepoints first. If a write
/// fails, the group is rolled back and run again with one savepoint per write, so only
/// the failing writes are left out. SQLite may roll back the whole transaction by itself
/// when a statement fails (`SQLITE_FULL`, `SQLITE_IOERR`, `SQLITE_BUSY`, `SQLITE_NOMEM`);
/// then, as when the final COMMIT fails, nothing of the group is stored and every write
/// in it is answered with a failure.
///
/// Pipelined writes are answered just before the COMMIT (once every statement of the
/// group ran); their entry in the returned answers then only says whether they committed.
fn run_group(conn: &mut Connection, batch: &mut [WriteJob], handoff: &Handoff) -> Vec<Result<WriteResult, StoreError>> {
    let run = match try_group(conn, batch, false, handoff) {
        GroupRun::WriteFailed(..) => try_group(conn, batch, true, handoff),
        run => run,
    };
    let (mut failed, cause, transient) = match run {
        GroupRun::Committed(results) => return results,
        // Not returned with savepoints; kept honest anyway.
        GroupRun::WriteFailed(i, e) => {
            let (cause, transient) = (e.to_string(), e.is_transient());
            (Some((i, e)), cause, transient)
        }
        GroupRun::Lost { failed, cause, transient } => (failed, cause, transient),
    };
    tracing::error!(error = %cause, writes = batch.len(), "group commit failed; no write in it is stored");
    (0..batch.len())
        .map(|i| match failed.take_if(|(at, _)| *at == i) {
            Some((_, e)) => Err(e),
            None if transient => Err(StoreError::CommitFailed(cause.clone())),
            None => Err(StoreError::Broken(cause.clone())),
        })
        .collect()
}

/// The group being written, for [`answer_early`].
struct Handoff<'a> {
    pipeline: &'a Pipeline,
    group: u64,
    /// `--fault-abort-before-commit`: one in how many handed-on groups ends the process.
    abort_one_in: Option<u32>,
    /// When the writer started: no fault in its first 100 ms (the process is seen serving).
    started: std::time::Instant,
}

impl Handoff<'_> {
    /// Fault injection: ends the process between a hand-off and its COMMIT, pseudo-randomly
    /// (a hash of the group number and the process id).
    fn maybe_abort(&self) {
        let Some(n) = self.abort_one_in else { return };
        if self.started.elapsed() < Duration::from_millis(100) {
            return;
        }
        let mut x = self.group ^ (u64::from(std::process::id()) << 32);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        if x.is_multiple_of(u64::from(n)) {
            // About one fsync's time: the engine acts on what was handed on meanwhile.
            std::thread::sleep(Duration::from_millis(2));
            eprintln!("fault injection: aborting before the COMMIT of group {}", self.group);
            std::process::abort();
        }
    }
}

/// Hands the results of the group's pipelined writes on, before the COMMIT: every
/// statement ran, so each result is final unless the COMMIT itself fails.
fn answer_early(batch: &mut [WriteJob], results: &mut [Result<WriteResult, StoreError>], handoff: &Handoff) {
    let mut handed = false;
    for (job, r) in batch.iter_mut().zip(results.iter_mut()) {
        if job.durable.is_none() || r.is_err() {
            continue;
        }
        // Before the answer: a read made after it waits for this group's COMMIT.
        handoff.pipeline.handed.store(handoff.group, std::sync::atomic::Ordering::Release);
        if let Some(reply) = job.reply.take() {
            let _ = reply.send(std::mem::replace(r, Ok(WriteResult::HandedOn)));
            handed = true;
        }
    }
    if handed {
        handoff.maybe_abort();
    }
}

/// One attempt at running a group of writes in one transaction, with or without a
/// savepoint per write. Leaves the connection outside any transaction.
fn try_group(conn: &mut Connection, batch: &mut [WriteJob], savepoints: bool, handoff: &Handoff) -> GroupRun {
    let lost = |e: rusqlite::Error| {
        let e = StoreError::from(e);
        GroupRun::Lost { failed: None, cause: e.to_string(), transient: e.is_transient() }
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return lost(e),
    };
    let mut results = Vec::with_capacity(batch.len());
    for (i, job) in batch.iter().enumerate() {
        let r = if savepoints {
            let sp = match tx.savepoint() {
                Ok(sp) => sp,
                Err(e) => return lost(e),
            };
            let r = run_op(&sp, &job.op);
            if r.is_ok() {
                if let Err(e) = sp.commit() {
                    return lost(e);
                }
            }
            // Dropping an uncommitted savepoint rolls it back.
            r
        } else {
            run_op(&tx, &job.op)
        };
        match r {
            // After a failed statement SQLite may have rolled back the whole transaction:
            // then nothing before is stored, and what follows would run outside of it.
            Err(e) if tx.is_autocommit() => {
                let cause = format!("SQLite rolled back the transaction after a write failed: {e}");
                let transient = e.is_transient();
                return GroupRun::Lost { failed: Some((i, e)), cause, transient };
            }
            // Dropping the transaction rolls it back.
            Err(e) if !savepoints => return GroupRun::WriteFailed(i, e),
            r => results.push(r),
        }
    }
    answer_early(batch, &mut results, handoff);
    match tx.commit() {
        Ok(()) => GroupRun::Committed(results),
        // A failed COMMIT left the transaction open (busy) or rolled it back; dropping
        // the transaction (done by `commit` on failure) rolls back what is left.
        Err(e) => lost(e),
    }
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
        WriteOp::RecordAttempts(counts) => {
            let mut instance = c.prepare_cached(
                "UPDATE instances SET delivery_attempts = MAX(delivery_attempts, ?) WHERE instance_id = ?",
            )?;
            let mut activity =
                c.prepare_cached("UPDATE activities SET delivery_attempts = MAX(delivery_attempts, ?) WHERE id = ?")?;
            for a in counts {
                match a {
                    Attempts::Instance(id, n) => instance.execute(params![n, id])?,
                    Attempts::Activity(id, n) => activity.execute(params![n, id])?,
                };
            }
            WriteResult::Saved(true)
        }
        WriteOp::SaveProgress(id, progress) => {
            let n =
                c.prepare_cached("UPDATE activities SET progress = ? WHERE id = ?")?.execute(params![progress, id])?;
            WriteResult::Saved(n > 0)
        }
        WriteOp::Purge(sel, recursive) => WriteResult::Purge(purge(c, sel, *recursive)?),
        WriteOp::Restart(id, new_id, now) => WriteResult::Restart(restart(c, id, new_id.clone(), *now)?),
        WriteOp::Rewind(id, reason, now) => WriteResult::Rewind(rewind(c, id, reason.clone(), *now)?),
        WriteOp::EnqueueEntity(messages, now) => {
            let mut queued = Vec::with_capacity(messages.len());
            for m in messages {
                queued.push(entities::insert_message(c, m, *now)?);
            }
            WriteResult::EntityQueued(queued)
        }
        WriteOp::CommitEntity(commit) => WriteResult::EntityCommitted(entities::commit(c, commit)?),
        WriteOp::RemoveEmptyEntities(ids) => WriteResult::Purge(entities::remove_empty(c, ids)?),
        WriteOp::RecordEntityAttempts(id, n) => {
            c.prepare_cached("UPDATE entities SET delivery_attempts = MAX(delivery_attempts, ?) WHERE entity_id = ?")?
                .execute(params![n, id])?;
            WriteResult::Saved(true)
        }
        WriteOp::Probe => {
            let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            c.pragma_update(None, "user_version", version)?;
            WriteResult::Saved(true)
        }
        #[cfg(test)]
        WriteOp::OnWriter(f) => {
            f(c)?;
            WriteResult::Saved(true)
        }
    })
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
    let mut stmt =
        c.prepare_cached("SELECT name, version, status, execution_id FROM instances WHERE instance_id = ?")?;
    Ok(stmt
        .query_row([instance_id], |r| {
            Ok((Target { name: r.get(0)?, version: r.get(1)?, status: status_from_i32(r.get(2)?) }, r.get(3)?))
        })
        .optional()?)
}

fn insert_inbox(c: &Connection, m: &Message, target: Target) -> Result<Delivered, StoreError> {
    c.prepare_cached(
        "INSERT INTO inbox (instance_id, execution_id, priority, visible_at, event) VALUES (?, ?, ?, ?, ?)",
    )?
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

/// Creates an instance, applying `reuse` if the id is taken (table on [`IdReuse`]). A live
/// instance being replaced is terminated first, in this transaction: its parent's notice
/// is delivered, then its rows are deleted.
fn create(c: &Connection, new: &NewInstance, reuse: &IdReuse) -> Result<CreateResult, StoreError> {
    let id = &new.spec.instance_id;
    let mut replaced = None;
    let mut delivered = Vec::new();
    if let Some(existing) = load_instance_with(c, id)? {
        match reuse.decide(existing.status) {
            ReuseDecision::Refuse => return Ok(CreateResult::AlreadyExists(existing.status)),
            ReuseDecision::Keep => return Ok(CreateResult::Kept),
            ReuseDecision::Replace => {
                let terminated = core::control::terminate_for_reuse(&existing.info(), new.created_at_ms);
                for m in &terminated.messages {
                    if let Some(d) = deliver(c, m)? {
                        delivered.push(d);
                    }
                }
                delete_instance(c, id)?;
                replaced = Some(existing.status);
            }
        }
    }
    let start = insert_instance(c, new)?;
    Ok(CreateResult::Created(Box::new(Created { start, replaced, delivered })))
}

/// Creates a sub-orchestration; a live instance holding the id fails the parent's task.
fn create_child(c: &Connection, new: &NewInstance, now_ms: i64, out: &mut CommitResult) -> Result<(), StoreError> {
    match create(c, new, &IdReuse::terminal())? {
        CreateResult::Created(created) => {
            let Created { start, delivered, .. } = *created;
            out.delivered.push(start);
            out.delivered.extend(delivered);
        }
        CreateResult::Kept => {}
        CreateResult::AlreadyExists(status) => {
            if let Some(notice) = child_id_taken(new, status, now_ms) {
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
    // Fenced: the turn must have been built on exactly the stored history of this
    // execution, or another commit (or a rewind) got there first.
    let built_on = i64::try_from(t.history_len).unwrap_or(i64::MAX);
    if execution_id != t.execution_id || is_terminal(status) || history_len != built_on {
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
        "UPDATE instances SET status = ?, updated_at = ?, history_len = ?, delivery_attempts = 0, \
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
    for m in &o.entity_messages {
        result.entity_messages.push(entities::insert_message(c, m, t.now_ms)?);
    }
    Ok(result)
}

/// Appends `events` to an instance's history from sequence number `first_seq`; returns the
/// history's new length.
fn append_history(
    c: &Connection,
    instance_id: &str,
    first_seq: i64,
    events: &[HistoryEvent],
) -> Result<i64, StoreError> {
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
         completed_at = NULL, history_len = 0, tags = ?, status = ?, trace_context = NULL WHERE instance_id = ?",
    )?
    .execute(params![
        s.execution_id,
        s.version,
        s.input,
        tags_json(&s.tags),
        OrchestrationStatus::Running as i32,
        id
    ])?;
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
    // A live instance keeps running; only a restart under its own id needs it finished.
    if new_id.is_none() && !is_terminal(rec.status) {
        return Ok(RestartResult::NotTerminal(rec.status));
    }
    let instance_id = new_id.unwrap_or_else(|| rec.instance_id.clone());
    let new = restarted(rec, &instance_id, crate::ambient::new_execution_id(), now_ms);
    match create(c, &new, &IdReuse::terminal())? {
        CreateResult::Created(created) => Ok(RestartResult::Restarted(Box::new(created.start))),
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
        target: Target {
            name: row.get("name")?,
            version: row.get("version")?,
            status: status_from_i32(row.get("status")?),
        },
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

fn load_timers_with(c: &Connection, after_ms: i64, through_ms: i64) -> Result<InboxSnapshot, StoreError> {
    // One read transaction: the rows and the watermark come from the same snapshot.
    c.execute_batch("BEGIN")?;
    let read = (|| {
        let mut q = DynQuery::new(
            "SELECT i.id, i.instance_id, i.execution_id, i.priority, i.visible_at, i.event, s.name, s.version, s.status \
             FROM inbox i JOIN instances s ON s.instance_id = i.instance_id",
        );
        q.push(" WHERE i.visible_at > ?", after_ms).push(" AND i.visible_at <= ? ORDER BY i.id", through_ms);
        let rows = q.rows(c, delivered_from_row)?;
        Ok(InboxSnapshot { rows, watermark: inbox_watermark(c)? })
    })();
    c.execute_batch("COMMIT")?;
    read
}

fn gauges_with(c: &Connection, now_ms: i64) -> Result<StoreGauges, StoreError> {
    let mut g = StoreGauges::default();
    let mut stmt = c.prepare_cached("SELECT status, COUNT(*) FROM instances GROUP BY status")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (status, n) = row?;
        if let Some(status) = i32::try_from(status).ok().and_then(|s| OrchestrationStatus::try_from(s).ok()) {
            g.instances_by_status.push((status, u64::try_from(n).unwrap_or(0)));
        }
    }
    let (ready, waiting, oldest): (i64, i64, Option<i64>) = c
        .prepare_cached(
            "SELECT COALESCE(SUM(visible_at <= ?1), 0), COALESCE(SUM(visible_at > ?1), 0), \
             MIN(CASE WHEN visible_at <= ?1 THEN visible_at END) FROM inbox",
        )?
        .query_row([now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    g.inbox_ready = u64::try_from(ready).unwrap_or(0);
    g.inbox_waiting = u64::try_from(waiting).unwrap_or(0);
    g.oldest_ready_ms = oldest;
    let activities: i64 = c.prepare_cached("SELECT COUNT(*) FROM activities")?.query_row([], |r| r.get(0))?;
    g.activities = u64::try_from(activities).unwrap_or(0);
    Ok(g)
}

/// Start-up's view of the store: every inbox row, or (with `through_ms`) those visible by then.
fn recover_with(c: &Connection, through_ms: Option<i64>) -> Result<Recovered, StoreError> {
    let mut q = DynQuery::new(
        "SELECT i.id, i.instance_id, i.execution_id, i.priority, i.visible_at, i.event, s.name, s.version, s.status \
         FROM inbox i JOIN instances s ON s.instance_id = i.instance_id",
    );
    if let Some(through) = through_ms {
        // `inbox_visible`: timers due later are neither read nor held.
        q.push(" WHERE i.visible_at <= ?", through);
    }
    q.sql.push_str(" ORDER BY i.id");
    let inbox = q.rows(c, delivered_from_row)?;
    let activities = DynQuery::new("SELECT id, request, progress FROM activities ORDER BY id").rows(c, |r| {
        let request = ActivityRequest::decode(blob(r, "request")?)
            .map_err(|e| StoreError::Corrupt(format!("activity request: {e}")))?;
        Ok(QueuedActivity { id: r.get("id")?, request, progress: r.get("progress")? })
    })?;
    let attempts = DynQuery::new(
        "SELECT 'i' AS kind, instance_id AS id, 0 AS n, delivery_attempts FROM instances WHERE delivery_attempts > 0 \
         UNION ALL SELECT 'a', '', id, delivery_attempts FROM activities WHERE delivery_attempts > 0",
    )
    .rows(c, |r| {
        let n: u32 = r.get(3)?;
        Ok(if r.get::<_, String>(0)? == "i" {
            Attempts::Instance(r.get(1)?, n)
        } else {
            Attempts::Activity(r.get(2)?, n)
        })
    })?;
    Ok(Recovered { inbox, activities, attempts })
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

    async fn create_instance_pipelined(
        &self,
        new: NewInstance,
        reuse: IdReuse,
    ) -> Result<(CreateResult, Durable), StoreError> {
        let (r, durable) = self.write_pipelined(WriteOp::Create(new, reuse)).await?;
        Ok((expect_result!(r, Create)?, durable))
    }

    async fn enqueue_pipelined(&self, message: Message) -> Result<(Option<Delivered>, Durable), StoreError> {
        let (r, durable) = self.write_pipelined(WriteOp::Enqueue(message)).await?;
        Ok((expect_result!(r, Enqueue)?, durable))
    }

    async fn commit_turn_pipelined(&self, commit: TurnCommit) -> Result<(CommitResult, Durable), StoreError> {
        let (r, durable) = self.write_pipelined(WriteOp::Commit(commit)).await?;
        Ok((expect_result!(r, Commit)?, durable))
    }

    async fn complete_activity_pipelined(
        &self,
        activity_id: i64,
        result: Message,
    ) -> Result<(Option<Delivered>, Durable), StoreError> {
        let (r, durable) = self.write_pipelined(WriteOp::CompleteActivity(activity_id, result)).await?;
        Ok((expect_result!(r, Enqueue)?, durable))
    }

    async fn record_attempts(&self, counts: Vec<Attempts>) -> Result<(), StoreError> {
        expect_result!(self.write(WriteOp::RecordAttempts(counts)).await?, Saved).map(|_| ())
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
        if let Some(name) = &f.name {
            q.push(" AND name = ?", name.clone());
        }
        match &f.order {
            QueryOrder::InstanceId => {
                if let Some(after) = &f.after_instance_id {
                    q.push(" AND instance_id > ?", after.clone());
                }
                q.push(" ORDER BY instance_id LIMIT ?", i64::from(f.page_size.max(1)));
            }
            QueryOrder::NewestFirst { before } => {
                if let Some((t, id)) = before {
                    // `created_at <= t` first so that the scan of `instances_created` starts there.
                    q.push(" AND created_at <= ?", *t);
                    q.push(" AND (created_at < ?", *t);
                    q.push(" OR instance_id < ?)", id.clone());
                }
                q.push(" ORDER BY created_at DESC, instance_id DESC LIMIT ?", i64::from(f.page_size.max(1)));
            }
        }
        self.reads.run(move |c| q.rows(c, instance_from_row)).await
    }

    async fn count_by_status(&self) -> Result<Vec<(OrchestrationStatus, u64)>, StoreError> {
        // One scan of the `instances_status` index (a covering index for this query).
        let q = DynQuery::new("SELECT status, COUNT(*) FROM instances GROUP BY status ORDER BY status");
        let rows = self.reads.run(move |c| q.rows(c, |r| Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?)))).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| {
                OrchestrationStatus::try_from(s).ok().map(|s| (s, u64::try_from(n).unwrap_or_default()))
            })
            .collect())
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

    async fn restart(
        &self,
        instance_id: &str,
        new_instance_id: Option<String>,
        now_ms: i64,
    ) -> Result<RestartResult, StoreError> {
        expect_result!(self.write(WriteOp::Restart(instance_id.to_string(), new_instance_id, now_ms)).await?, Restart)
    }

    async fn rewind(&self, instance_id: &str, reason: Option<String>, now_ms: i64) -> Result<RewindResult, StoreError> {
        expect_result!(self.write(WriteOp::Rewind(instance_id.to_string(), reason, now_ms)).await?, Rewind)
    }

    async fn load_events(&self, instance_id: &str, inbox_ids: &[i64]) -> Result<Vec<(i64, HistoryEvent)>, StoreError> {
        if inbox_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = DynQuery::new("SELECT id, event FROM inbox WHERE 1 = 1");
        q.push(" AND instance_id = ?", instance_id.to_string());
        q.push_in("id", inbox_ids.iter().copied());
        self.reads.run(move |c| q.rows(c, |r| Ok((r.get::<_, i64>(0)?, decode_event(blob(r, 1)?)?)))).await
    }

    async fn load_inbox(&self, instance_id: &str) -> Result<InboxSnapshot, StoreError> {
        let id = instance_id.to_string();
        self.reads.run(move |c| load_inbox_with(c, &id)).await
    }

    async fn enqueue_entity(
        &self,
        messages: Vec<crate::core::entity::EntityMessage>,
        now_ms: i64,
    ) -> Result<Vec<QueuedEntityMessage>, StoreError> {
        expect_result!(self.write(WriteOp::EnqueueEntity(messages, now_ms)).await?, EntityQueued)
    }

    async fn commit_entity(&self, commit: EntityCommit) -> Result<EntityCommitResult, StoreError> {
        expect_result!(self.write(WriteOp::CommitEntity(commit)).await?, EntityCommitted)
    }

    async fn remove_empty_entities(&self, ids: Vec<String>) -> Result<u32, StoreError> {
        expect_result!(self.write(WriteOp::RemoveEmptyEntities(ids)).await?, Purge)
    }

    async fn record_entity_attempts(&self, entity_id: String, attempts: u32) -> Result<(), StoreError> {
        expect_result!(self.write(WriteOp::RecordEntityAttempts(entity_id, attempts)).await?, Saved).map(|_| ())
    }

    async fn query_entities(&self, filter: &EntitySelection) -> Result<Vec<EntityRecord>, StoreError> {
        let f = filter.clone();
        self.reads.run(move |c| entities::query(c, &f)).await
    }

    async fn recover_entities(&self) -> Result<Vec<RecoveredEntity>, StoreError> {
        self.reads.run(entities::recover).await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        expect_result!(self.write(WriteOp::Probe).await?, Saved).map(|_| ())
    }

    async fn gauges(&self, now_ms: i64) -> Result<StoreGauges, StoreError> {
        self.reads.run(move |c| gauges_with(c, now_ms)).await
    }

    async fn recover(&self) -> Result<Recovered, StoreError> {
        self.reads.run(|c| recover_with(c, None)).await
    }

    async fn recover_through(&self, through_ms: i64) -> Result<Option<Recovered>, StoreError> {
        self.reads.run(move |c| recover_with(c, Some(through_ms))).await.map(Some)
    }

    async fn load_timers(&self, after_ms: i64, through_ms: i64) -> Result<Option<InboxSnapshot>, StoreError> {
        self.reads.run(move |c| load_timers_with(c, after_ms, through_ms)).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{finish, new_at as new_instance};

    async fn open(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("t.db"), SqliteOptions::default()).await.unwrap()
    }

    fn user_version(path: &Path) -> i64 {
        Connection::open(path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
    }

    impl SqliteStore {
        /// Runs `f` on the writer's connection, inside a group transaction.
        async fn on_writer(
            &self,
            f: impl Fn(&Connection) -> Result<(), StoreError> + Send + 'static,
        ) -> Result<(), StoreError> {
            self.write(WriteOp::OnWriter(Box::new(f))).await.map(|_| ())
        }
    }

    fn large_instance(id: &str, bytes: usize) -> NewInstance {
        let mut new = new_instance(id, 1);
        new.spec.input = Some(format!("\"{}\"", "x".repeat(bytes)));
        new
    }

    /// Instance ids in the database file, read by a fresh connection.
    fn stored_ids(path: &Path) -> Vec<String> {
        let c = Connection::open(path).unwrap();
        let mut stmt = c.prepare("SELECT instance_id FROM instances ORDER BY instance_id").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    /// Another connection holding the write lock on the file until dropped or released.
    fn hold_write_lock(path: &Path) -> Connection {
        let c = Connection::open(path).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        c
    }

    #[tokio::test]
    async fn start_up_reads_only_rows_due_by_the_horizon_and_windows_read_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        // Start rows visible at 10, 100 and 1,000 (scheduled starts are inbox rows like timers).
        for (id, at) in [("soon", 10), ("later", 100), ("much-later", 1000)] {
            let mut new = new_instance(id, 1);
            new.visible_at_ms = at;
            store.create_instance(new, IdReuse::terminal()).await.unwrap();
        }
        let ids = |rows: &[Delivered]| rows.iter().map(|d| d.instance_id.clone()).collect::<Vec<_>>();
        let recovered = store.recover_through(50).await.unwrap().expect("SQLite reads by due time");
        assert_eq!(ids(&recovered.inbox), ["soon"]);
        assert_eq!(ids(&store.recover().await.unwrap().inbox), ["soon", "later", "much-later"]);
        let window = store.load_timers(50, 1000).await.unwrap().expect("SQLite reads by due time");
        assert_eq!(ids(&window.rows), ["later", "much-later"], "(after, through]");
        assert_eq!(window.watermark, 3, "the newest inbox id");
        assert!(store.load_timers(1000, 5000).await.unwrap().expect("a window").rows.is_empty());
    }

    #[tokio::test]
    async fn disk_full_in_a_group_reports_exactly_what_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
        store.create_instance(new_instance("before", 1), IdReuse::terminal()).await.unwrap();
        // The writer blocks on the lock held here, so the writes below queue up and run
        // as one group once it is released.
        let blocker = hold_write_lock(&path);
        // "Disk full": the writer's connection may grow the file by a few pages only.
        let limit = store.on_writer(|c| {
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            c.pragma_update(None, "max_page_count", pages + 8)?;
            Ok(())
        });
        let small_1 = store.create_instance(new_instance("small-1", 2), IdReuse::terminal());
        let large = store.create_instance(large_instance("large", 1 << 20), IdReuse::terminal());
        let small_2 = store.create_instance(new_instance("small-2", 2), IdReuse::terminal());
        let release = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            blocker.execute_batch("ROLLBACK").unwrap();
        };
        let (limit, small_1, large, small_2, ()) = tokio::join!(limit, small_1, large, small_2, release);
        // The pragma holds on the connection even when the group it ran in failed.
        if let Err(e) = limit {
            assert!(e.is_transient(), "{e}");
        }
        let large = large.expect_err("the large write cannot fit");
        assert!(large.is_transient(), "{large}");
        drop(store);
        let stored = stored_ids(&path);
        assert!(stored.contains(&"before".to_string()), "{stored:?}");
        assert!(!stored.contains(&"large".to_string()), "{stored:?}");
        for (id, r) in [("small-1", small_1), ("small-2", small_2)] {
            match r {
                Ok(_) => assert!(stored.contains(&id.to_string()), "{id} reported OK but is not stored: {stored:?}"),
                Err(e) => {
                    assert!(e.is_transient(), "{id}: {e}");
                    assert!(!stored.contains(&id.to_string()), "{id} reported failed ({e}) but is stored: {stored:?}");
                }
            }
        }
    }

    /// `chattr +i` (root, ext2/3/4 and a few others) makes writes to the WAL fail with EPERM,
    /// which SQLite reports as SQLITE_IOERR when the COMMIT writes its frames.
    #[tokio::test]
    async fn io_error_on_commit_fails_every_write_of_the_group_and_stores_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
        store.create_instance(new_instance("before", 1), IdReuse::terminal()).await.unwrap();
        let wal = dir.path().join("t.db-wal");
        let chattr =
            |flag: &str| std::process::Command::new("chattr").arg(flag).arg(&wal).status().is_ok_and(|s| s.success());
        if !chattr("+i") {
            eprintln!("skipped: cannot make {} immutable (needs root and chattr support)", wal.display());
            return;
        }
        let (a, b) = tokio::join!(
            store.create_instance(new_instance("a", 2), IdReuse::terminal()),
            store.create_instance(new_instance("b", 2), IdReuse::terminal()),
        );
        assert!(chattr("-i"), "cannot undo chattr +i on {}", wal.display());
        for r in [a, b] {
            let e = r.expect_err("the WAL cannot be written");
            assert!(e.is_transient(), "{e}");
        }
        drop(store);
        assert_eq!(stored_ids(&path), ["before"]);
    }

    #[tokio::test]
    async fn writes_blocked_by_another_writer_fail_transient_and_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let options = SqliteOptions { busy_timeout: Duration::from_millis(100), ..Default::default() };
        let store = SqliteStore::open(&path, options).await.unwrap();
        let blocker = hold_write_lock(&path);
        let (a, b) = tokio::join!(
            store.create_instance(new_instance("a", 1), IdReuse::terminal()),
            store.create_instance(new_instance("b", 1), IdReuse::terminal()),
        );
        for r in [a, b] {
            let e = r.expect_err("the database is locked");
            assert!(e.is_transient(), "{e}");
        }
        blocker.execute_batch("ROLLBACK").unwrap();
        assert!(stored_ids(&path).is_empty());
        // The writer is not stuck in a transaction: the next write commits.
        store.create_instance(new_instance("c", 1), IdReuse::terminal()).await.unwrap();
        assert_eq!(stored_ids(&path), ["c"]);
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
    async fn a_second_store_on_the_same_file_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let first = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
        let err = SqliteStore::open(&path, SqliteOptions::default()).await.err().expect("the second store is refused");
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "the database {} is in use by another duro process (pid {}); stop it or use another --db",
                path.display(),
                std::process::id()
            )
        );
        // The first store is untouched and keeps working; dropping it releases the file.
        first.create_instance(new_instance("a", 1), IdReuse::terminal()).await.unwrap();
        drop(first);
        let again = SqliteStore::open(&path, SqliteOptions::default()).await.unwrap();
        assert!(again.load_instance("a").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_writer_thread_dying_is_signalled_and_closing_the_store_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let died = store.writer_died();
        let r = store.on_writer(|_| -> Result<(), StoreError> { panic!("injected writer failure") }).await;
        assert!(matches!(r, Err(StoreError::Closed)), "{r:?}");
        let why = tokio::time::timeout(Duration::from_secs(5), died).await.expect("the death is signalled");
        assert!(why.contains("injected writer failure"), "{why}");
        assert!(matches!(
            store.create_instance(new_instance("a", 1), IdReuse::terminal()).await,
            Err(StoreError::Closed)
        ));
        drop(store);

        let store = open(&dir).await;
        let died = store.writer_died();
        drop(store);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), died).await.is_err(),
            "a closed store is not a dead writer"
        );
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
    async fn an_entity_step_commits_once_and_queries_see_its_state() {
        use crate::core::entity::{self, Effects, EntityMessage, Lock};
        let dir = tempfile::tempdir().expect("dir");
        let store = open(&dir).await;
        let signal = |key: &str| EntityMessage {
            entity_id: format!("@counter@{key}"),
            visible_at_ms: 10,
            event: entity::signal_event("r", "add", Some("1".into()), None, 10),
        };
        let queued = store.enqueue_entity(vec![signal("a"), signal("b"), signal("a")], 10).await.expect("queued");
        assert_eq!(queued.len(), 3);
        let effects = Effects {
            consumed: vec![queued[0].id, queued[2].id],
            state: Some("2".into()),
            lock: Lock::Free,
            outgoing: Vec::new(),
        };
        let commit = EntityCommit { entity_id: "@counter@a".into(), effects, starts: Vec::new(), now_ms: 20 };
        store.commit_entity(commit.clone()).await.expect("committed");
        let again = store.commit_entity(commit).await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "consumed rows are gone: {again:?}");
        let all = EntitySelection { include_transient: true, page_size: 10, ..EntitySelection::default() };
        let rows = store.query_entities(&all).await.expect("query");
        let summary: Vec<_> = rows.iter().map(|r| (r.entity_id.as_str(), r.state.as_deref(), r.backlog)).collect();
        assert_eq!(summary, vec![("@counter@a", Some("2"), 0), ("@counter@b", None, 1)]);
        let with_state = EntitySelection { page_size: 10, ..EntitySelection::default() };
        assert_eq!(store.query_entities(&with_state).await.expect("query").len(), 1, "transient entities left out");
        let prefixed = EntitySelection {
            id_prefix: Some("@counter@b".into()),
            include_transient: true,
            page_size: 10,
            ..EntitySelection::default()
        };
        assert_eq!(store.query_entities(&prefixed).await.expect("query").len(), 1);
        assert_eq!(store.remove_empty_entities(vec!["@counter@b".into()]).await.expect("clean"), 0, "b has a queue");
        let recovered = store.recover_entities().await.expect("recover");
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].messages.len(), 1);
    }

    #[test]
    fn an_unlisted_status_is_refused_whatever_the_action() {
        use OrchestrationStatus as S;
        for action in [LegacyReuseAction::Error, LegacyReuseAction::Ignore, LegacyReuseAction::Terminate] {
            let policy = IdReuse::Legacy { statuses: vec![S::Completed, S::Failed], action };
            for s in [S::Pending, S::Running, S::Suspended, S::Terminated] {
                assert_eq!(policy.decide(s), ReuseDecision::Refuse, "{action:?} {s:?}");
            }
        }
    }
}
