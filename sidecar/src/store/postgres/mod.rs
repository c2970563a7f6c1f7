//! PostgreSQL store: one task hub shared by many sidecars (`--db postgres://…`).
//!
//! The schema lives in its own PostgreSQL schema per task hub (`--task-hub`, the connection's
//! `search_path`), migrated with sqlx's migrator from `sidecar/migrations/postgres`. Every
//! [`Store`] write is one transaction on a pooled connection; PostgreSQL groups concurrent
//! commits' WAL flushes itself, so there is no writer thread as with SQLite.
//!
//! What SQLite gets from one process owning the file, PostgreSQL gets from leases kept in the
//! store (`leases.rs`): an instance's turns run only on the sidecar holding its lease, and a
//! turn commits only while that lease (owner and epoch) is still the current one. Rules every
//! write here keeps:
//! - every inbox insert first locks its target instance's row `FOR SHARE` (all targets of
//!   one transaction in instance-id order, so two transactions never wait on each other in a
//!   cycle); a lease release locks the row `FOR UPDATE` and then looks for inbox rows, so a
//!   release never hides an event committed concurrently;
//! - every inbox and activity insert notifies the hub's channel (delivered at commit), so
//!   other sidecars claim new work without polling;
//! - a replaced instance (id reuse) keeps its lease epoch rising, never resetting it.
//!
//! Row locks: the code here takes `FOR UPDATE` on instance rows (see [`lock_instances`]),
//! which also covers the `FOR SHARE` requirement above. A transaction may lock a row it did
//! not foresee (a replaced child's parent); the order is then not guaranteed, so a deadlock
//! is possible and such writes are retried whole ([`retrying`]).

mod entities;
pub mod leases;
mod read;
mod write;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use duro_proto::{HistoryEvent, OrchestrationStatus};
use parking_lot::Mutex;
use sqlx_core::migrate::{Migration, MigrationType, Migrator};
use sqlx_core::row::Row as _;
use sqlx_postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, Postgres};

use super::*;
use crate::core::{status_from_i32, Message, NewInstance};
use crate::store::codec::{decode_opt, encode_event};

/// The migrations, in order (sqlx records them in `_sqlx_migrations` inside the hub's schema).
const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "init", include_str!("../../../migrations/postgres/0001_init.sql"))];

/// How a [`PgStore`] connects and leases. Its `Debug` hides the URL's password.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user:pass@host:port/db?…` (libpq-style parameters as sqlx accepts them).
    pub url: String,
    /// The task hub: a PostgreSQL schema name (letters, digits, `_`; created if missing).
    pub hub: String,
    /// This sidecar's id in leases (unique per process).
    pub owner: String,
    /// How long a lease lasts without renewal; renewals run every third of it.
    pub lease: Duration,
    pub max_connections: u32,
    /// Refuse turn commits for instances this sidecar holds no lease on (always, when
    /// sidecars share the hub; only the store contract tests commit without claiming).
    pub require_lease: bool,
}

impl PgOptions {
    /// The URL without its password, for logs and errors.
    pub fn redacted_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                u.set_query(None);
                u.to_string()
            }
            Err(_) => "<a PostgreSQL URL that does not parse>".into(),
        }
    }
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.redacted_url())
            .field("hub", &self.hub)
            .field("owner", &self.owner)
            .field("lease", &self.lease)
            .field("max_connections", &self.max_connections)
            .field("require_lease", &self.require_lease)
            .finish()
    }
}

/// A task-hub name usable as a PostgreSQL schema and notification channel: 1–48 of
/// `[a-z0-9_]`, starting with a letter.
pub fn valid_hub_name(hub: &str) -> bool {
    let mut chars = hub.chars();
    matches!(chars.next(), Some('a'..='z'))
        && hub.len() <= 48
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

pub struct PgStore {
    pub(crate) pool: PgPool,
    pub(crate) opts: PgOptions,
    /// The epoch of every instance lease this sidecar holds (filled by claims, emptied by
    /// releases and by commits that find the lease lost). `commit_turn` fences with it.
    pub(crate) held: Mutex<HashMap<String, i64>>,
    /// The epoch of every activity lease this sidecar holds.
    pub(crate) held_activities: Mutex<HashMap<i64, i64>>,
}

impl PgStore {
    /// Connects, creates the hub's schema if needed and migrates it.
    pub async fn open(opts: PgOptions) -> Result<PgStore, StoreError> {
        if !valid_hub_name(&opts.hub) {
            return Err(StoreError::Migrate(format!(
                "task hub '{}' is not a valid name: use 1-48 lower-case letters, digits or '_', starting with a letter",
                opts.hub
            )));
        }
        let base = PgConnectOptions::from_str(&opts.url)
            .map_err(|e| StoreError::Migrate(format!("--db is not a valid PostgreSQL URL: {e}")))?;
        // Create the schema on a connection without the search_path, then pool with it.
        // Sidecars of one hub often start together: `CREATE SCHEMA IF NOT EXISTS` is not safe
        // against a concurrent creation (it fails on the catalog's unique index), so creations
        // of one hub take turns under a transaction-level advisory lock.
        let admin = PgPoolOptions::new().max_connections(1).connect_with(base.clone()).await?;
        let mut tx = admin.begin().await?;
        q("SELECT pg_advisory_xact_lock(hashtextextended('duro schema ' || $1, 0))")
            .bind(&opts.hub)
            .execute(&mut *tx)
            .await?;
        q(&format!("CREATE SCHEMA IF NOT EXISTS {}", opts.hub)).execute(&mut *tx).await?;
        tx.commit().await?;
        admin.close().await;
        // A sidecar frozen inside a transaction (SIGSTOP, a stalled VM) would keep its row locks
        // and stall the others past its lease: the server ends such a session once it has been
        // idle in a transaction for a lease (no transaction of Duro waits on its client that long).
        let idle_ms = opts.lease.as_millis().max(1000).to_string();
        let with_hub = base
            .options([("search_path", opts.hub.as_str()), ("idle_in_transaction_session_timeout", idle_ms.as_str())])
            .application_name("duro");
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(with_hub)
            .await?;
        migrate(&pool).await?;
        Ok(PgStore { pool, opts, held: Mutex::new(HashMap::new()), held_activities: Mutex::new(HashMap::new()) })
    }

    /// The notification channel of this hub.
    pub fn channel(&self) -> String {
        channel_of(&self.opts.hub)
    }
}

/// Runs one write transaction and records it like a group commit of one write
/// (`duro_store_commit_*`): PostgreSQL groups concurrent commits' WAL flushes itself.
async fn timed<T>(write: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    let result = write.await;
    crate::metrics::store_commit(
        1,
        started.elapsed(),
        !matches!(&result, Err(e) if !matches!(e, StoreError::Conflict(_) | StoreError::LeaseLost(_))),
    );
    result
}

/// The notification channel of a hub (channels are per database, so the hub names it).
pub fn channel_of(hub: &str) -> String {
    format!("duro_{hub}")
}

async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(v, d, sql)| Migration::new(*v, Cow::Borrowed(d), MigrationType::Simple, Cow::Borrowed(sql), false))
        .collect();
    let migrator = Migrator { migrations: Cow::Owned(migrations), ignore_missing: false, locking: true, no_tx: false };
    migrator.run(pool).await.map_err(|e| StoreError::Migrate(e.to_string()))
}

#[async_trait]
impl Store for PgStore {
    async fn create_instance(&self, new: NewInstance, reuse: IdReuse) -> Result<CreateResult, StoreError> {
        timed(write::create_instance(self, new, reuse)).await
    }

    async fn enqueue(&self, message: Message) -> Result<Option<Delivered>, StoreError> {
        timed(write::enqueue(self, message)).await
    }

    async fn commit_turn(&self, commit: TurnCommit) -> Result<CommitResult, StoreError> {
        timed(write::commit_turn(self, commit)).await
    }

    async fn complete_activity(&self, activity_id: i64, result: Message) -> Result<Option<Delivered>, StoreError> {
        timed(write::complete_activity(self, activity_id, result)).await
    }

    async fn record_attempts(&self, counts: Vec<Attempts>) -> Result<(), StoreError> {
        write::record_attempts(self, counts).await
    }

    async fn save_activity_progress(&self, activity_id: i64, progress: String) -> Result<bool, StoreError> {
        write::save_activity_progress(self, activity_id, progress).await
    }

    async fn load_instance(&self, instance_id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        read::load_instance(self, instance_id).await
    }

    async fn load_history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        read::load_history(self, instance_id).await
    }

    async fn query_instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
        read::query_instances(self, filter).await
    }

    async fn list_completed_ids(&self, filter: &CompletedFilter) -> Result<Vec<(i64, String)>, StoreError> {
        read::list_completed_ids(self, filter).await
    }

    async fn count_by_status(&self) -> Result<Vec<(OrchestrationStatus, u64)>, StoreError> {
        read::count_by_status(self).await
    }

    async fn purge(&self, selection: PurgeSelection, recursive: bool) -> Result<u32, StoreError> {
        write::purge(self, selection, recursive).await
    }

    async fn restart(
        &self,
        instance_id: &str,
        new_instance_id: Option<String>,
        now_ms: i64,
    ) -> Result<RestartResult, StoreError> {
        write::restart(self, instance_id, new_instance_id, now_ms).await
    }

    async fn rewind(&self, instance_id: &str, reason: Option<String>, now_ms: i64) -> Result<RewindResult, StoreError> {
        write::rewind(self, instance_id, reason, now_ms).await
    }

    async fn load_events(&self, instance_id: &str, inbox_ids: &[i64]) -> Result<Vec<(i64, HistoryEvent)>, StoreError> {
        read::load_events(self, instance_id, inbox_ids).await
    }

    async fn load_inbox(&self, instance_id: &str) -> Result<InboxSnapshot, StoreError> {
        read::load_inbox(self, instance_id).await
    }

    async fn recover(&self) -> Result<Recovered, StoreError> {
        read::recover(self).await
    }

    async fn enqueue_entity(
        &self,
        messages: Vec<crate::core::entity::EntityMessage>,
        now_ms: i64,
    ) -> Result<Vec<QueuedEntityMessage>, StoreError> {
        entities::enqueue_entity(self, messages, now_ms).await
    }

    async fn commit_entity(&self, commit: EntityCommit) -> Result<EntityCommitResult, StoreError> {
        entities::commit_entity(self, commit).await
    }

    async fn remove_empty_entities(&self, ids: Vec<String>) -> Result<u32, StoreError> {
        entities::remove_empty_entities(self, ids).await
    }

    async fn record_entity_attempts(&self, entity_id: String, attempts: u32) -> Result<(), StoreError> {
        entities::record_entity_attempts(self, entity_id, attempts).await
    }

    async fn query_entities(&self, filter: &EntitySelection) -> Result<Vec<EntityRecord>, StoreError> {
        entities::query_entities(self, filter).await
    }

    async fn recover_entities(&self) -> Result<Vec<RecoveredEntity>, StoreError> {
        entities::recover_entities(self).await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        read::probe(self).await
    }

    async fn gauges(&self, now_ms: i64) -> Result<StoreGauges, StoreError> {
        read::gauges(self, now_ms).await
    }
}

/// Whether a PostgreSQL error may pass on retry: the connection or pool failed, the server is
/// shutting down or out of resources, or the transaction lost a serialization or deadlock
/// check (SQLSTATE classes 08, 53, 57P, and 40001 / 40P01). Constraint violations, syntax and
/// permission errors are permanent.
pub fn is_transient(e: &sqlx_core::Error) -> bool {
    use sqlx_core::Error as E;
    match e {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Tls(_) => true,
        E::Database(db) => {
            let code = db.code().unwrap_or_default();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
        }
        _ => false,
    }
}

/// A query on PostgreSQL (parameters are bound with `.bind`, in order).
pub(crate) fn q(sql: &str) -> sqlx_core::query::Query<'_, Postgres, PgArguments> {
    sqlx_core::query::query::<Postgres>(sql)
}

/// The columns [`instance_from_row`] decodes.
pub(crate) const INSTANCE_COLUMNS: &str = "instance_id, execution_id, name, version, status, created_at, updated_at, \
     completed_at, scheduled_start_at, input, output, custom_status, failure_details, parent_instance_id, \
     parent_info, tags, trace_context";

/// Decodes an instance row selected with [`INSTANCE_COLUMNS`].
pub(crate) fn instance_from_row(row: &PgRow) -> Result<InstanceRecord, StoreError> {
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

/// Locks the rows of these instances `FOR UPDATE`, in instance-id order and in one
/// statement (rule: every transaction that inserts inbox rows or updates several instance
/// rows takes its locks this way, so lock waits never form a cycle). Returns the ids that
/// exist; missing ids lock nothing. Locking a row this transaction holds already is free.
pub(crate) async fn lock_instances(conn: &mut PgConnection, ids: &[String]) -> Result<Vec<String>, StoreError> {
    let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: Vec<&str> = wanted.into_iter().collect();
    let rows = q("SELECT instance_id FROM instances WHERE instance_id = ANY($1) ORDER BY instance_id FOR UPDATE")
        .bind(wanted)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| r.try_get::<String, _>(0).map_err(StoreError::from)).collect()
}

/// Sends notifications on `channel` (PostgreSQL delivers them when the transaction
/// commits, and drops duplicates within it).
pub(crate) async fn notify(
    conn: &mut PgConnection,
    channel: &str,
    payloads: impl IntoIterator<Item = String>,
) -> Result<(), StoreError> {
    let payloads: Vec<String> = payloads.into_iter().collect();
    if payloads.is_empty() {
        return Ok(());
    }
    q("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p").bind(channel).bind(payloads).execute(&mut *conn).await?;
    Ok(())
}

/// The notifications a transaction owes its hub's channel, one per distinct payload (see
/// [`leases::parse_notice`]): `i <visible_at_ms> <origin sidecar> <instance_id>` (inbox row),
/// `a <activity name>` (activity row), `e <visible_at_ms> <entity_id>` (entity message).
#[derive(Debug, Default)]
pub(crate) struct Notices {
    inbox: BTreeSet<(i64, String)>,
    other: BTreeSet<String>,
    /// Instances replaced in place (id reuse, restart) with their new lease epoch: their old
    /// lease is void, so this sidecar forgets it once the transaction commits.
    replaced: Vec<(String, i64)>,
}

/// What a committed transaction still owes this sidecar's memory (see [`Notices::send`]).
#[must_use = "apply it once the transaction has committed"]
pub(crate) struct AfterCommit {
    replaced: Vec<(String, i64)>,
}

impl AfterCommit {
    /// Forgets leases held on instances the transaction replaced (only those older than the
    /// replacement: a claim made since holds a newer epoch and stays).
    pub(crate) fn apply(self, s: &PgStore) {
        if self.replaced.is_empty() {
            return;
        }
        let mut held = s.held.lock();
        for (id, epoch) in self.replaced {
            if held.get(&id).is_some_and(|e| *e < epoch) {
                held.remove(&id);
            }
        }
    }
}

impl Notices {
    pub(crate) fn inbox(&mut self, visible_at_ms: i64, instance_id: &str) {
        self.inbox.insert((visible_at_ms, instance_id.to_string()));
    }

    pub(crate) fn activity(&mut self, name: &str) {
        self.other.insert(format!("a {name}"));
    }

    pub(crate) fn entity(&mut self, visible_at_ms: i64, entity_id: &str) {
        self.other.insert(format!("e {visible_at_ms} {entity_id}"));
    }

    /// An instance replaced in place, with its new lease epoch.
    pub(crate) fn lease_replaced(&mut self, instance_id: &str, epoch: i64) {
        self.replaced.push((instance_id.to_string(), epoch));
    }

    /// Sends them (call last, just before the commit; PostgreSQL delivers them at commit);
    /// the result is applied after the commit.
    pub(crate) async fn send(self, conn: &mut PgConnection, s: &PgStore) -> Result<AfterCommit, StoreError> {
        let origin = &s.opts.owner;
        let inbox = self.inbox.into_iter().map(|(at, id)| leases::inbox_notice(at, origin, &id));
        notify(conn, &s.channel(), inbox.chain(self.other)).await?;
        Ok(AfterCommit { replaced: self.replaced })
    }
}

/// How often a write transaction is run again after losing a race (see [`retrying`]).
const RACE_RETRIES: usize = 4;

/// Runs a whole write transaction again when it lost a race that a second run resolves:
/// a deadlock (locks taken outside the id order, see the module doc), a serialization
/// failure, or a unique violation (two transactions creating the same instance id: the
/// second run finds the row and applies the id-reuse policy). Nothing of a failed run was
/// stored, so running it again is safe.
pub(crate) async fn retrying<T, F, Fut>(mut run: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        match run().await {
            Err(StoreError::Postgres(e)) if attempt < RACE_RETRIES && lost_race(&e) => attempt += 1,
            r => return r,
        }
    }
}

/// A deadlock (40P01), serialization failure (40001) or unique violation (23505).
fn lost_race(e: &sqlx_core::Error) -> bool {
    match e {
        sqlx_core::Error::Database(db) => matches!(db.code().as_deref(), Some("40P01" | "40001" | "23505")),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
