//! The history store: the durable truth about every instance.
//!
//! [`Store`] is the small contract the engine needs. Each write method is one atomic
//! transaction (an implementation may group several callers' writes into one commit, but
//! each caller's write is all-or-nothing). Reads may run concurrently with writes.
//! Implementations: [`sqlite::SqliteStore`] (embedded, default; one process owns the file, so
//! leases live in the engine's memory) and [`postgres::PgStore`] (a task hub shared by many
//! sidecars), which also implements [`Leases`]: leases, their expiry and fencing live in the
//! store, and the engine claims its work from it (`engine::cluster`).

mod codec;
pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod contract;

use std::collections::HashMap;

use async_trait::async_trait;
use duro_proto::{
    ActivityRequest, HistoryEvent, OrchestrationStatus, OrchestrationTraceContext, ParentInstanceInfo,
    TaskFailureDetails,
};
use thiserror::Error;

use crate::core::{Message, NewInstance, Priority, TurnOutcome};

#[derive(Debug, Error)]
pub enum StoreError {
    /// The database failed; retrying may succeed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// The group commit holding this write failed; nothing of it was stored.
    /// PostgreSQL (or the connection to it) failed; see [`StoreError::is_transient`].
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] sqlx_core::Error),
    /// This sidecar's lease on the instance expired and another sidecar took it over; the
    /// write was refused (fencing) and nothing of it was stored.
    #[error("the lease on instance '{0}' was lost to another sidecar")]
    LeaseLost(String),
    #[error("database commit failed: {0}")]
    CommitFailed(String),
    /// A write failed for a reason that retrying does not cure (a corrupt or read-only
    /// file); nothing of its group was stored.
    #[error("database write failed permanently: {0}")]
    Broken(String),
    #[error("database migration failed: {0}")]
    Migrate(String),
    /// A database task could not run to the end (its thread panicked or was cancelled).
    #[error("database task failed: {0}")]
    Task(String),
    /// Stored bytes could not be decoded (corruption or a foreign writer).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The instance changed under the caller (purged, restarted, replaced).
    #[error("instance '{0}' changed during the operation")]
    Conflict(String),
    #[error("the store is shutting down")]
    Closed,
    /// Another process (or another store in this process) has the database open; its lock
    /// file names it (`holder`: e.g. " (pid 1234)", empty when unknown).
    #[error("the database {} is in use by another duro process{holder}; stop it or use another --db", path.display())]
    InUse { path: std::path::PathBuf, holder: String },
    /// The directory of the database file does not exist.
    #[error("the directory {} of the database {} does not exist; create it (mkdir -p) or pass another --db", dir.display(), path.display())]
    NoDirectory { path: std::path::PathBuf, dir: std::path::PathBuf },
    /// The database (or its directory) cannot be written by this process.
    #[error("the database {} cannot be written ({why}); make it and its directory writable for this user or pass another --db", path.display())]
    ReadOnly { path: std::path::PathBuf, why: String },
    /// The start-up integrity check found damage: serving would fail writes or lose data.
    #[error("the database {} is damaged ({check}: {detail}); restore it from a backup, or move it and its -wal file away to start with an empty store", path.display())]
    Damaged { path: std::path::PathBuf, check: &'static str, detail: String },
    /// The database's lock file could not be created or locked.
    #[error("cannot lock the database {}: {source}", path.display())]
    Lock { path: std::path::PathBuf, source: std::io::Error },
}

impl StoreError {
    /// The store could not do it now but may later (busy, out of space, a failed group
    /// commit): callers answer "unavailable, retry" rather than "internal error".
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::CommitFailed(_) | StoreError::Task(_) | StoreError::Closed => true,
            StoreError::Database(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                C::DatabaseBusy | C::DatabaseLocked | C::DiskFull | C::SystemIoFailure | C::OutOfMemory
            ),
            StoreError::Postgres(e) => postgres::is_transient(e),
            _ => false,
        }
    }
}

/// One instance's stored row.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub execution_id: String,
    pub name: String,
    pub version: Option<String>,
    pub status: OrchestrationStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub completed_at_ms: Option<i64>,
    pub scheduled_start_at_ms: Option<i64>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub custom_status: Option<String>,
    pub failure: Option<TaskFailureDetails>,
    pub parent_instance_id: Option<String>,
    pub parent: Option<ParentInstanceInfo>,
    pub tags: HashMap<String, String>,
    pub trace_context: Option<OrchestrationTraceContext>,
}

impl InstanceRecord {
    pub fn info(&self) -> crate::core::InstanceInfo {
        crate::core::InstanceInfo {
            instance_id: self.instance_id.clone(),
            execution_id: self.execution_id.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            status: self.status,
            input: self.input.clone(),
            parent: self.parent.clone(),
            tags: self.tags.clone(),
            trace_context: self.trace_context.clone(),
        }
    }
}

/// The name, version and status of an instance that received an event, so dispatch can
/// route it without reading the store again.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub version: Option<String>,
    pub status: OrchestrationStatus,
}

/// An inbox row that was committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub inbox_id: i64,
    pub instance_id: String,
    pub execution_id: Option<String>,
    pub priority: Priority,
    pub visible_at_ms: i64,
    pub event: HistoryEvent,
    pub target: Target,
}

/// An activity row that was committed.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedActivity {
    pub id: i64,
    pub request: ActivityRequest,
    /// Checkpoint of a built-in activity run by the sidecar (see [`Store::save_activity_progress`]).
    pub progress: Option<String>,
}

/// What to do when a client starts an instance whose id is already taken.
///
/// The semantics follow durabletask-go (`backend/sqlite` and `backend/postgres`,
/// `handleInstanceExists`) for the legacy form and the protocol's `replaceableStatus` for
/// the current one; where Duro goes further (a live instance is *terminated*, not silently
/// deleted) it is said below. "Live" is PENDING (including a start scheduled in the
/// future), RUNNING or SUSPENDED; "finished" is COMPLETED, FAILED, TERMINATED (or CANCELED).
///
/// | Policy (wire form)                                   | no instance | existing status listed                | existing status not listed |
/// |------------------------------------------------------|-------------|---------------------------------------|----------------------------|
/// | none sent ([`IdReuse::terminal`])                    | created     | finished: replaced                    | live: `AlreadyExists`      |
/// | `replaceableStatus` = S ([`IdReuse::Replace`])       | created     | finished: replaced; live: terminated, then replaced | `AlreadyExists` |
/// | `replaceableStatus` = [] (empty list)                | created     | —                                     | `AlreadyExists`            |
/// | `replaceableStatus` with a live status, no TERMINATED | refused: `InvalidArgument` (gRPC), whatever exists | | |
/// | legacy S + `TERMINATE` (Go SDK)                      | created     | finished: replaced; live: terminated, then replaced | `AlreadyExists` |
/// | legacy S + `IGNORE` (Go SDK)                         | created     | kept: OK with the existing id, nothing changes | `AlreadyExists`   |
/// | legacy S + `ERROR` (Go SDK)                          | created     | `AlreadyExists`                       | `AlreadyExists`            |
///
/// - A `replaceableStatus` list that lists PENDING, RUNNING or SUSPENDED but not TERMINATED
///   is contradictory (replacing a live instance terminates it) and the gRPC adapter refuses
///   the request with `INVALID_ARGUMENT` ("Invalid reusable statuses: cannot exclude
///   'Terminated' while also allowing reuse of running instances"), as the Durable Task
///   Scheduler does ([`IdReuse::replaces_live_but_not_terminated`]). The Go SDK's "S + ERROR"
///   arrives in this form and is checked the same way; its TERMINATE and IGNORE forms are not.
/// - An unlisted status is always refused (durabletask-go answers `ErrDuplicateInstance`
///   before it looks at the action); it never means "replace". Issue 13 was the inverse.
/// - No policy: durabletask-go refuses every existing id; Duro reuses finished ids (as
///   Dapr and the Durable Task Scheduler do) and refuses live ones.
/// - `ERROR` is the enum's zero value, which proto3 does not put on the wire: a Go client's
///   "S + ERROR" arrives as `replaceableStatus` = S and is treated as such. Only code that
///   builds `Legacy { action: Error }` directly gets the refuse-always row.
/// - **Replaced** means the old instance's rows (history, inbox, queued activities) are
///   deleted and the new one is inserted, in one store transaction, as durabletask-go does.
///   **Terminated, then replaced** (a live instance) additionally applies a
///   non-recursive terminate first ([`crate::core::control::terminate_for_reuse`]) and
///   commits its outbox in the same transaction: a parent waiting on the instance as a
///   sub-orchestration gets `subOrchestrationInstanceFailed` (`TaskTerminated`), exactly
///   as for `TerminateInstance`. The terminated execution's own history does not survive
///   the replacement (the id holds one execution). Its children are not terminated (like
///   a non-recursive terminate): they run on, and their results, addressed to the old
///   execution, are dropped. A turn of the old execution in flight fails to commit
///   (`Conflict`) and is discarded.
#[derive(Debug, Clone, PartialEq)]
pub enum IdReuse {
    /// `replaceableStatus`: replace the existing instance if its status is listed
    /// (terminating it first if it is live); otherwise `AlreadyExists`.
    Replace(Vec<OrchestrationStatus>),
    /// The old form still sent by the Go SDK (statuses + action): if the existing status
    /// is listed, apply the action; otherwise `AlreadyExists`.
    Legacy { statuses: Vec<OrchestrationStatus>, action: LegacyReuseAction },
}

/// `CreateOrchestrationAction` of the legacy policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyReuseAction {
    /// Refuse with `AlreadyExists`.
    Error,
    /// Keep the existing instance and answer OK with its id.
    Ignore,
    /// Terminate the existing instance if it is live, then replace it.
    Terminate,
}

/// What a policy says about an instance that already holds the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReuseDecision {
    /// Answer `AlreadyExists`; the existing instance is untouched.
    Refuse,
    /// Answer OK with the existing id; the existing instance is untouched.
    Keep,
    /// Replace the existing instance (terminating it first if it is live).
    Replace,
}

impl IdReuse {
    /// The default when a client sends no policy: reuse finished ids, refuse live ones.
    pub fn terminal() -> IdReuse {
        IdReuse::Replace(vec![
            OrchestrationStatus::Completed,
            OrchestrationStatus::Failed,
            OrchestrationStatus::Terminated,
            OrchestrationStatus::Canceled,
        ])
    }

    /// Whether a `replaceableStatus` list allows replacing a live instance (PENDING, RUNNING
    /// or SUSPENDED) while excluding TERMINATED. That is contradictory, since replacing a
    /// live instance terminates it, and the gRPC adapter refuses such a list.
    pub fn replaces_live_but_not_terminated(listed: &[OrchestrationStatus]) -> bool {
        use OrchestrationStatus as S;
        !listed.contains(&S::Terminated) && listed.iter().any(|s| matches!(s, S::Pending | S::Running | S::Suspended))
    }

    /// The decision for an existing instance with status `existing` (see the table above).
    pub fn decide(&self, existing: OrchestrationStatus) -> ReuseDecision {
        match self {
            IdReuse::Replace(listed) if listed.contains(&existing) => ReuseDecision::Replace,
            IdReuse::Legacy { statuses, action } if statuses.contains(&existing) => match action {
                LegacyReuseAction::Error => ReuseDecision::Refuse,
                LegacyReuseAction::Ignore => ReuseDecision::Keep,
                LegacyReuseAction::Terminate => ReuseDecision::Replace,
            },
            _ => ReuseDecision::Refuse,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CreateResult {
    Created(Box<Created>),
    /// The id exists and the policy said to keep the existing instance.
    Kept,
    AlreadyExists(OrchestrationStatus),
}

/// A created instance and what its creation committed besides.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The new instance's `executionStarted` inbox row.
    pub start: Delivered,
    /// The status of the instance this one replaced, if the id was taken; a live one was
    /// terminated first.
    pub replaced: Option<OrchestrationStatus>,
    /// Messages the replaced instance's termination delivered (its parent's notice).
    pub delivered: Vec<Delivered>,
}

/// The notice a parent gets when the sub-orchestration it asked for cannot be created because
/// an instance holding the id is `status` (live): its task fails. `None` without a parent task.
pub(crate) fn child_id_taken(new: &NewInstance, status: OrchestrationStatus, now_ms: i64) -> Option<Message> {
    let p = new.parent_task.as_ref()?;
    let failure = crate::core::events::failure(
        "InstanceAlreadyExists",
        format!(
            "cannot create sub-orchestration '{}': an instance with that id is {}",
            new.spec.instance_id,
            status.as_str_name()
        ),
        true,
    );
    Some(Message::now(
        p.instance_id.clone(),
        Some(p.execution_id.clone()),
        crate::core::events::sub_orchestration_failed(now_ms, p.task_id, failure),
        now_ms,
    ))
}

/// The new instance a restart starts: the stored name, version, input and tags of `rec`,
/// under `instance_id` with a new execution.
pub(crate) fn restarted(rec: InstanceRecord, instance_id: &str, execution_id: String, now_ms: i64) -> NewInstance {
    NewInstance {
        spec: crate::core::StartSpec {
            instance_id: instance_id.to_string(),
            execution_id,
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
    }
}

/// An entity step's outgoing message, as the store writes it (both backends the same way).
pub(crate) enum EntityOutgoing {
    /// An event for an orchestration's inbox; `grant`: a lock grant (an owner that is gone
    /// or ended must then release its locks).
    Orchestration { message: Message, grant: bool },
    /// A request for another entity's queue (never scheduled before the step).
    Entity(crate::core::entity::EntityMessage),
    /// Starts are committed from [`EntityCommit::starts`].
    Start,
}

impl EntityOutgoing {
    pub(crate) fn of(o: &crate::core::entity::Outgoing, now_ms: i64) -> EntityOutgoing {
        use crate::core::entity::Outgoing;
        match o {
            Outgoing::ToOrchestration { instance_id, execution_id, event } => {
                let mut event = event.clone();
                event.timestamp = Some(crate::core::time::from_ms(now_ms));
                let grant =
                    matches!(event.event_type, Some(duro_proto::history_event::EventType::EntityLockGranted(_)));
                EntityOutgoing::Orchestration {
                    message: Message::now(instance_id.clone(), execution_id.clone(), event, now_ms),
                    grant,
                }
            }
            Outgoing::ToEntity { entity_id, visible_at_ms, event } => {
                EntityOutgoing::Entity(crate::core::entity::EntityMessage {
                    entity_id: entity_id.clone(),
                    visible_at_ms: (*visible_at_ms).max(now_ms),
                    event: event.clone(),
                })
            }
            Outgoing::StartOrchestration { .. } => EntityOutgoing::Start,
        }
    }
}

/// One turn's changes for [`Store::commit_turn`].
#[derive(Debug, Clone)]
pub struct TurnCommit {
    pub instance_id: String,
    /// The execution the turn ran against; the commit fails with `Conflict` otherwise.
    pub execution_id: String,
    /// Length of the history the turn was built on (the execution's events shown to the
    /// worker as past events); the commit fails with `Conflict` when the stored history is
    /// no longer exactly that long (another commit or a rewind got there first).
    pub history_len: usize,
    /// Inbox rows the turn consumed (or dropped as stale).
    pub consumed: Vec<i64>,
    pub outcome: TurnOutcome,
    pub now_ms: i64,
}

/// What a committed turn produced, for dispatch.
#[derive(Debug, Clone, Default)]
pub struct CommitResult {
    pub activities: Vec<QueuedActivity>,
    pub delivered: Vec<Delivered>,
    /// Requests the turn queued for entities.
    pub entity_messages: Vec<QueuedEntityMessage>,
    /// For a turn that finished the instance: the newest inbox id at commit time. Every
    /// row of the instance up to it was deleted; a later one belongs to a new execution.
    pub finished_through: Option<i64>,
}

/// An instance's inbox rows as one consistent snapshot.
#[derive(Debug, Clone, Default)]
pub struct InboxSnapshot {
    pub rows: Vec<Delivered>,
    /// The newest inbox id (of any instance) when the snapshot was read.
    pub watermark: i64,
}

/// Filters of a query; all optional.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub statuses: Vec<OrchestrationStatus>,
    pub created_from_ms: Option<i64>,
    pub created_to_ms: Option<i64>,
    pub instance_id_prefix: Option<String>,
    pub page_size: u32,
    /// Exclusive lower bound on the instance id (with [`QueryOrder::InstanceId`]).
    pub after_instance_id: Option<String>,
    /// Only instances of this orchestration name.
    pub name: Option<String>,
    pub order: QueryOrder,
}

/// The order of a query's rows and its paging cursor.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum QueryOrder {
    /// By instance id, paged with `after_instance_id` (the APIs).
    #[default]
    InstanceId,
    /// Newest created first (the dashboard), paged with the exclusive cursor (created time,
    /// instance id) of the last row seen.
    NewestFirst { before: Option<(i64, String)> },
}

#[derive(Debug, Clone, Default)]
pub struct CompletedFilter {
    pub statuses: Vec<OrchestrationStatus>,
    pub completed_from_ms: Option<i64>,
    pub completed_to_ms: Option<i64>,
    pub page_size: u32,
    /// Exclusive cursor (completed time, instance id).
    pub after: Option<(i64, String)>,
}

#[derive(Debug, Clone)]
pub enum PurgeSelection {
    Ids(Vec<String>),
    Filter { created_from_ms: Option<i64>, created_to_ms: Option<i64>, statuses: Vec<OrchestrationStatus> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum RestartResult {
    NotFound,
    NotTerminal(OrchestrationStatus),
    Restarted(Box<Delivered>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RewindResult {
    NotFound,
    NotFailed(OrchestrationStatus),
    /// History rewritten; the wake-up row makes the instance run a turn.
    Rewound {
        wake: Box<Delivered>,
    },
}

/// Work found in the store at start-up.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub inbox: Vec<Delivered>,
    pub activities: Vec<QueuedActivity>,
    /// Failed deliveries recorded before the restart (non-zero counts only).
    pub attempts: Vec<Attempts>,
}

/// How many times a work item was delivered without a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempts {
    /// An instance's turn (reset when a turn commits).
    Instance(String, u32),
    /// An activity, by its row id.
    Activity(i64, u32),
}

/// A committed entity queue row.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedEntityMessage {
    pub id: i64,
    pub entity_id: String,
    pub visible_at_ms: i64,
    pub event: HistoryEvent,
}

/// One entity step's changes for [`Store::commit_entity`].
#[derive(Debug, Clone)]
pub struct EntityCommit {
    pub entity_id: String,
    pub effects: crate::core::entity::Effects,
    /// Orchestrations the step starts (created only if the id is free).
    pub starts: Vec<NewInstance>,
    pub now_ms: i64,
}

/// What a committed entity step delivered, for dispatch.
#[derive(Debug, Clone, Default)]
pub struct EntityCommitResult {
    /// Events for orchestrations' inboxes, and the start events of created orchestrations.
    pub delivered: Vec<Delivered>,
    /// Requests queued for entities.
    pub queued: Vec<QueuedEntityMessage>,
    /// Orchestrations a lock grant was addressed to that have ended or do not exist:
    /// their locks must be released.
    pub gone_owners: Vec<String>,
}

/// An entity's stored row and queue length.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityRecord {
    pub entity_id: String,
    pub state: Option<String>,
    pub lock_owner: Option<String>,
    pub lock_section: Option<String>,
    pub modified_at_ms: i64,
    pub backlog: u32,
}

/// Filters of an entity query; all optional.
#[derive(Debug, Clone, Default)]
pub struct EntitySelection {
    pub id_prefix: Option<String>,
    /// Exactly this entity.
    pub id: Option<String>,
    pub modified_from_ms: Option<i64>,
    pub modified_to_ms: Option<i64>,
    /// Also entities without state (locked or with queued requests, or empty).
    pub include_transient: bool,
    pub page_size: u32,
    /// Exclusive lower bound on the entity id.
    pub after_id: Option<String>,
}

/// An entity and its queue as found at start-up.
#[derive(Debug, Clone)]
pub struct RecoveredEntity {
    pub record: EntityRecord,
    pub messages: Vec<QueuedEntityMessage>,
    /// Deliveries of the entity's current batch that came back without a result (reset by
    /// every committed step of the entity).
    pub delivery_attempts: u32,
}

/// When a pipelined write becomes durable (see [`Store::commit_turn_pipelined`]).
///
/// A pipelined write answers as soon as its statements ran in the single writer's open
/// transaction: its result is final (every later write is ordered after it and sees it),
/// but it is not yet on disk. Awaiting this says whether its transaction committed. A
/// store that cannot pipeline answers after the commit, with an already durable value.
#[must_use = "a pipelined write must not be acknowledged before it is durable"]
pub struct Durable(Option<tokio::sync::oneshot::Receiver<Result<(), StoreError>>>);

impl Durable {
    /// A write that was committed before it answered.
    pub fn already() -> Durable {
        Durable(None)
    }

    /// Completed by the writer once the write's transaction has committed (or failed).
    pub fn pending(rx: tokio::sync::oneshot::Receiver<Result<(), StoreError>>) -> Durable {
        Durable(Some(rx))
    }

    /// Waits until the write is durable. An error means it never will be: the writer
    /// failed to commit it (and, having handed its result on, stops the store).
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an instance (client start) and its `executionStarted` inbox row.
    async fn create_instance(&self, new: NewInstance, reuse: IdReuse) -> Result<CreateResult, StoreError>;

    /// Adds an event to a live instance's inbox; `None` when the target is missing or
    /// finished (the event is dropped).
    async fn enqueue(&self, message: Message) -> Result<Option<Delivered>, StoreError>;

    /// Commits one turn atomically. `Conflict` (and nothing stored) when the instance is
    /// gone, finished or on another execution, or when a consumed inbox row no longer
    /// exists: the turn was built on a stale view.
    async fn commit_turn(&self, commit: TurnCommit) -> Result<CommitResult, StoreError>;

    /// Deletes a finished activity and delivers its result in the same transaction.
    /// `None` when the activity is gone (duplicate or its instance moved on).
    async fn complete_activity(&self, activity_id: i64, result: Message) -> Result<Option<Delivered>, StoreError>;

    /// [`Store::create_instance`], answered before its commit is durable (pipelined): the
    /// result may be acted on at once (the engine dispatches the first turn), but nothing
    /// may be acknowledged to a client before `Durable` resolves. The default commits first.
    async fn create_instance_pipelined(
        &self,
        new: NewInstance,
        reuse: IdReuse,
    ) -> Result<(CreateResult, Durable), StoreError> {
        Ok((self.create_instance(new, reuse).await?, Durable::already()))
    }

    /// [`Store::enqueue`], pipelined (see [`Store::create_instance_pipelined`]).
    async fn enqueue_pipelined(&self, message: Message) -> Result<(Option<Delivered>, Durable), StoreError> {
        Ok((self.enqueue(message).await?, Durable::already()))
    }

    /// [`Store::commit_turn`], pipelined (see [`Store::create_instance_pipelined`]).
    async fn commit_turn_pipelined(&self, commit: TurnCommit) -> Result<(CommitResult, Durable), StoreError> {
        Ok((self.commit_turn(commit).await?, Durable::already()))
    }

    /// [`Store::complete_activity`], pipelined (see [`Store::create_instance_pipelined`]).
    async fn complete_activity_pipelined(
        &self,
        activity_id: i64,
        result: Message,
    ) -> Result<(Option<Delivered>, Durable), StoreError> {
        Ok((self.complete_activity(activity_id, result).await?, Durable::already()))
    }

    /// Raises stored delivery-attempt counts (never lowers them), so poison detection
    /// survives a restart. Unknown instances and activities are skipped.
    async fn record_attempts(&self, counts: Vec<Attempts>) -> Result<(), StoreError>;

    /// Records how far a built-in activity got, so a restart resumes from there.
    /// `false` when the activity is gone (completed or its instance moved on).
    async fn save_activity_progress(&self, activity_id: i64, progress: String) -> Result<bool, StoreError>;

    async fn load_instance(&self, instance_id: &str) -> Result<Option<InstanceRecord>, StoreError>;

    async fn load_history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, StoreError>;

    async fn query_instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError>;

    async fn list_completed_ids(&self, filter: &CompletedFilter) -> Result<Vec<(i64, String)>, StoreError>;

    /// How many instances have each status (statuses without instances are left out).
    async fn count_by_status(&self) -> Result<Vec<(OrchestrationStatus, u64)>, StoreError>;

    /// Deletes finished instances (and, if `recursive`, their finished descendants);
    /// returns how many were deleted. Live instances are never deleted.
    async fn purge(&self, selection: PurgeSelection, recursive: bool) -> Result<u32, StoreError>;

    /// Starts an instance again from its stored name, version and input: under its own id
    /// only once it has finished (`NotTerminal` otherwise), under `new_instance_id` in any
    /// status (the original instance is left as it is).
    async fn restart(
        &self,
        instance_id: &str,
        new_instance_id: Option<String>,
        now_ms: i64,
    ) -> Result<RestartResult, StoreError>;

    /// Rewinds a failed instance: removes its failures from history and sets it running.
    async fn rewind(&self, instance_id: &str, reason: Option<String>, now_ms: i64) -> Result<RewindResult, StoreError>;

    /// The payloads of some of an instance's inbox rows (those the scheduler did not keep
    /// in memory); rows that no longer exist are left out.
    async fn load_events(&self, instance_id: &str, inbox_ids: &[i64]) -> Result<Vec<(i64, HistoryEvent)>, StoreError>;

    /// One instance's inbox rows, for rebuilding its dispatch state when it proved stale.
    async fn load_inbox(&self, instance_id: &str) -> Result<InboxSnapshot, StoreError>;

    /// All pending inbox rows and activities, for rebuilding dispatch state at start-up.
    async fn recover(&self) -> Result<Recovered, StoreError>;

    /// Like [`Store::recover`], but inbox rows visible after `through_ms` (durable timers
    /// due later) stay in the store: the engine reads them with [`Store::load_timers`] as
    /// their time comes near. `None`: this store cannot (the engine then holds every timer).
    async fn recover_through(&self, _through_ms: i64) -> Result<Option<Recovered>, StoreError> {
        Ok(None)
    }

    /// Inbox rows (of existing instances) visible in `(after_ms, through_ms]`, in id order,
    /// with the newest inbox id when they were read as the watermark; every row at or below
    /// it that the window holds is in `rows` (ids grow in commit order). `None`: this store
    /// cannot (see [`Store::recover_through`]).
    async fn load_timers(&self, _after_ms: i64, _through_ms: i64) -> Result<Option<InboxSnapshot>, StoreError> {
        Ok(None)
    }

    /// Queues requests for entities (creating their rows), in one transaction.
    async fn enqueue_entity(
        &self,
        messages: Vec<crate::core::entity::EntityMessage>,
        now_ms: i64,
    ) -> Result<Vec<QueuedEntityMessage>, StoreError>;

    /// Commits one entity step atomically: consumed queue rows deleted, state and lock
    /// written, replies delivered, requests queued, orchestrations started. `Conflict` (and
    /// nothing stored) when a consumed row no longer exists.
    async fn commit_entity(&self, commit: EntityCommit) -> Result<EntityCommitResult, StoreError>;

    /// Deletes those of `ids` that hold no state, no lock and no queued request.
    async fn remove_empty_entities(&self, ids: Vec<String>) -> Result<u32, StoreError>;

    /// Raises an entity's stored delivery-attempt count (never lowers it; a committed step
    /// resets it), so poison detection of its batch survives a restart. An unknown entity is
    /// skipped. The default keeps nothing (in-memory test stores without entities).
    async fn record_entity_attempts(&self, entity_id: String, attempts: u32) -> Result<(), StoreError> {
        let _ = (entity_id, attempts);
        Ok(())
    }

    async fn query_entities(&self, filter: &EntitySelection) -> Result<Vec<EntityRecord>, StoreError>;

    /// Every entity with its queue, for rebuilding entity dispatch at start-up.
    async fn recover_entities(&self) -> Result<Vec<RecoveredEntity>, StoreError>;

    /// A real write through the store's write path, committed like any other (readiness:
    /// it fails while the store cannot commit). Stores without such a path answer `Ok`.
    async fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Counts for the metrics, read when they are scraped (see [`StoreGauges`]).
    async fn gauges(&self, _now_ms: i64) -> Result<StoreGauges, StoreError> {
        Ok(StoreGauges::default())
    }
}

/// Names a sidecar's connected workers serve, for claiming shared work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// A worker without filters is connected: any name but these (which every such worker
    /// answered "not registered" for).
    All(Vec<String>),
    /// Only these names (possibly none: no worker connected).
    Names(Vec<String>),
}

impl Served {
    pub fn is_none(&self) -> bool {
        matches!(self, Served::Names(n) if n.is_empty())
    }
}

/// Work a claim took over from the shared store.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    /// Instances now leased to this sidecar, each with its inbox as one snapshot.
    pub instances: Vec<(String, InboxSnapshot)>,
    /// Activities now leased to this sidecar.
    pub activities: Vec<QueuedActivity>,
    /// Stored delivery-attempt counts of what was claimed (non-zero only), so poison
    /// detection continues where the previous holder left off.
    pub attempts: Vec<Attempts>,
}

/// Leases this sidecar held and no longer holds (expired and taken over by another).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lost {
    pub instances: Vec<String>,
    pub activities: Vec<i64>,
}

/// What giving an instance's lease back found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Released: the instance had no inbox rows; the next event's claimer runs it.
    Released,
    /// Kept: inbox rows arrived that this sidecar has not seen; reload them.
    Busy,
    /// The lease had already been lost to another sidecar.
    Lost,
}

/// A wake-up from another sidecar sharing the store (or from this one's own commits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// An inbox row for `instance`, visible from `visible_at_ms`, committed by `origin`.
    Inbox { instance: String, visible_at_ms: i64, origin: String },
    /// An activity named `name` was queued.
    Activity { name: String },
    /// An instance's status changed (for `WaitFor*` callers on other sidecars).
    Status { instance: String },
    /// An instance was replaced or restarted under its id: its old execution has ended (the
    /// entity leader releases that execution's locks).
    Replaced { instance: String },
    /// Entity work was queued.
    Entity,
    /// Notices may have been missed (the listening connection was re-established).
    Missed,
}

/// Leases kept in a store shared by several sidecars (PostgreSQL). Each sidecar runs only
/// the instances and activities it holds a lease on; a turn commits only under its lease
/// (fencing), and expired leases are claimed by others. SQLite has no such trait object: one
/// process owns its file, so the engine's in-memory leases suffice.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// This sidecar's id in leases.
    fn owner(&self) -> &str;
    /// How long a lease lasts without renewal.
    fn lease_duration(&self) -> std::time::Duration;
    /// Whether this sidecar holds `instance_id`'s lease (as far as it knows).
    fn holds(&self, instance_id: &str) -> bool;
    /// The instances this sidecar holds leases on.
    fn held_ids(&self) -> Vec<String>;
    /// Claims up to `turns` instances with inbox rows visible at `now_ms` whose lease is free
    /// or expired, and up to `activities_limit` free or expired activities, whose names are
    /// served.
    async fn claim(
        &self,
        orchestrations: &Served,
        turns: usize,
        activities: &Served,
        activities_limit: usize,
        now_ms: i64,
    ) -> Result<Claimed, StoreError>;
    /// Extends every lease this sidecar holds; reports those lost meanwhile (and forgets them).
    async fn renew(&self) -> Result<Lost, StoreError>;
    /// Gives an instance's lease back (see [`ReleaseOutcome`]): only if it has no inbox rows,
    /// or (`with_rows`, when no worker here serves it) with them, waking the other sidecars.
    async fn release(&self, instance_id: &str, with_rows: bool) -> Result<ReleaseOutcome, StoreError>;
    /// Gives activity leases back (their worker is gone), so other sidecars claim them.
    async fn release_activities(&self, ids: Vec<i64>) -> Result<(), StoreError>;
    /// Forgets an activity lease whose row is gone (completed).
    fn activity_done(&self, id: i64);
    /// Gives every lease back at once (graceful shutdown) and wakes the other sidecars.
    async fn release_all(&self) -> Result<(), StoreError>;
    /// Starts listening; notices arrive on the receiver until the store closes.
    async fn listen(&self) -> Result<tokio::sync::mpsc::Receiver<Notice>, StoreError>;
    /// Takes or keeps the hub-wide lease `name` (one holder per hub, expiring like instance
    /// leases); `true` while this sidecar holds it.
    async fn lead(&self, name: &str) -> Result<bool, StoreError>;
    /// Tells listeners on other sidecars that an instance's status changed.
    async fn announce_status(&self, instance_id: &str) -> Result<(), StoreError>;
    /// Tells listeners on other sidecars that an instance was replaced or restarted.
    async fn announce_replaced(&self, instance_id: &str) -> Result<(), StoreError>;
}

/// What the store holds right now, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreGauges {
    /// Instances per status (statuses with none are left out).
    pub instances_by_status: Vec<(OrchestrationStatus, u64)>,
    /// Inbox events visible now (ready or in a turn that has not committed yet).
    pub inbox_ready: u64,
    /// Inbox events waiting for their time (durable timers, scheduled starts, back-offs).
    pub inbox_waiting: u64,
    /// When the oldest visible inbox event became visible (ms since the epoch).
    pub oldest_ready_ms: Option<i64>,
    /// Activities scheduled and not completed (queued or running).
    pub activities: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: i32) -> StoreError {
        StoreError::Database(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None))
    }

    #[test]
    fn busy_full_and_failed_commits_are_transient_corruption_and_constraints_are_not() {
        assert!(sqlite(rusqlite::ffi::SQLITE_BUSY).is_transient());
        assert!(sqlite(rusqlite::ffi::SQLITE_FULL).is_transient());
        assert!(StoreError::CommitFailed("disk I/O error".into()).is_transient());
        assert!(!sqlite(rusqlite::ffi::SQLITE_CONSTRAINT).is_transient());
        assert!(!StoreError::Corrupt("bad bytes".into()).is_transient());
        assert!(!StoreError::Broken("database disk image is malformed".into()).is_transient());
        assert!(!sqlite(rusqlite::ffi::SQLITE_CORRUPT).is_transient());
        assert!(!sqlite(rusqlite::ffi::SQLITE_READONLY).is_transient());
        assert!(!StoreError::Conflict("a".into()).is_transient());
    }
}
