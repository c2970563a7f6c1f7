//! An in-memory [`Store`] for the simulation: the SQLite store's semantics for the
//! operations the simulation uses, each applied atomically, with seeded yields before
//! and after so that concurrent engine calls interleave differently per seed. A crash
//! is an epoch change: handles of the dead engine fail every later call, as a killed
//! process would never reach the database again.
//!
//! Shared by several engines ([`MemDb::join`], the cluster simulation), it also models the
//! PostgreSQL store's [`Leases`] (`store/postgres/leases.rs`): instance and activity leases
//! (owner, expiry by the database clock, an epoch raised by every claim and replacement),
//! `commit_turn` fenced by the epoch a sidecar holds, and the notices every commit sends,
//! queued per listening engine for the simulation to deliver, drop or lose.
//!
//! On a store of one engine it also models the SQLite writer's pipelined commits: a
//! pipelined write is applied and answered at once, but stays lost-on-crash until a later
//! "COMMIT" ([`MemDb::sync`]: a seeded number of yields later, at random pauses, and before
//! any other write or read, as the writer's next group and `Pipeline::settled` do). A crash ([`MemDb::lose_unsynced`])
//! puts the tables back to their last durable state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use duro_proto::{ActivityRequest, HistoryEvent, OrchestrationStatus};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::Rng;

use crate::core::{is_terminal, Message, NewInstance, Priority};
use crate::engine::Clock;
use crate::store::*;

/// Commits refused for a lost lease and instances claimed, over every shared store (the
/// cluster simulation reports them, to show that its schedules reach fencing).
pub static FENCED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static CLAIMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A lease on an instance, an activity or a hub-wide role, as the PostgreSQL store keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    pub owner: Option<String>,
    /// Expiry on the database's clock (valid while `now <= until_ms`).
    pub until_ms: i64,
    /// Raised by every claim and replacement, never lowered.
    pub epoch: i64,
}

impl Lease {
    fn free_at(&self, now_ms: i64) -> bool {
        self.owner.is_none() || self.until_ms < now_ms
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub execution_id: String,
    pub name: String,
    pub status: OrchestrationStatus,
    pub input: Option<String>,
    pub output: Option<String>,
    pub history: Vec<HistoryEvent>,
    pub created_at_ms: i64,
    pub lease: Lease,
}

#[derive(Debug, Clone)]
pub struct InboxRow {
    pub instance_id: String,
    pub execution_id: Option<String>,
    pub priority: Priority,
    pub visible_at_ms: i64,
    pub event: HistoryEvent,
    /// The engine whose handle inserted the row (empty on a store of one engine).
    pub origin: String,
}

#[derive(Debug, Default, Clone)]
pub struct Tables {
    pub instances: BTreeMap<String, Instance>,
    pub inbox: BTreeMap<i64, InboxRow>,
    pub activities: BTreeMap<i64, ActivityRequest>,
    /// Activity leases by activity id (a missing entry is a free lease; entries of deleted
    /// activities are ignored).
    pub activity_leases: BTreeMap<i64, Lease>,
    pub hub_leases: BTreeMap<String, Lease>,
    /// Notices committed and not yet delivered, per listening engine (by owner).
    pub notices: BTreeMap<String, Vec<Notice>>,
    /// The highest watermark of an inbox snapshot each engine read of each instance.
    pub snapshots: HashMap<(String, String), i64>,
    last_inbox: i64,
    last_activity: i64,
    pub epoch: u64,
}

impl Tables {
    /// Queues a notice for every listening engine (PostgreSQL delivers them at commit).
    fn notify(&mut self, n: Notice) {
        for q in self.notices.values_mut() {
            q.push(n.clone());
        }
    }

    /// Deletes an activity row (and its lease).
    fn remove_activity(&mut self, id: i64) -> Option<ActivityRequest> {
        self.activity_leases.remove(&id);
        self.activities.remove(&id)
    }
}

/// The shared database; each engine gets a [`MemStore`] handle bound to one epoch.
pub struct MemDb {
    pub tables: Mutex<Tables>,
    rng: Arc<Mutex<StdRng>>,
    /// Most yields a call makes before (and after) it applies.
    max_yields: u32,
    /// While set, every write fails as a broken disk would (nothing is stored).
    pub fail_writes: AtomicBool,
    /// The database's clock (lease expiry); only a shared store has one.
    clock: Option<Arc<dyn Clock>>,
    /// How long a lease lasts without renewal.
    lease_ms: i64,
    /// Pipelined writes not yet durable (stores of one engine only).
    unsynced: Mutex<Unsynced>,
}

/// What a crash would take back: the tables as last made durable (`None`: nothing is
/// pending), and the pipelined writes waiting to hear they are durable.
#[derive(Default)]
struct Unsynced {
    durable: Option<Tables>,
    waiting: Vec<tokio::sync::oneshot::Sender<Result<(), StoreError>>>,
}

impl MemDb {
    pub fn new(rng: Arc<Mutex<StdRng>>, max_yields: u32) -> Arc<MemDb> {
        Arc::new(MemDb {
            tables: Mutex::new(Tables::default()),
            rng,
            max_yields,
            fail_writes: Default::default(),
            clock: None,
            lease_ms: 0,
            unsynced: Default::default(),
        })
    }

    /// A store shared by several engines, its leases expiring on `clock`.
    pub fn shared(rng: Arc<Mutex<StdRng>>, max_yields: u32, clock: Arc<dyn Clock>, lease_ms: i64) -> Arc<MemDb> {
        Arc::new(MemDb {
            tables: Mutex::new(Tables::default()),
            rng,
            max_yields,
            fail_writes: Default::default(),
            clock: Some(clock),
            lease_ms,
            unsynced: Default::default(),
        })
    }

    /// A handle for a new engine; handles of earlier epochs stop working.
    /// The writer's COMMIT: every pipelined write handed on so far is durable.
    pub fn sync(&self) {
        let mut u = self.unsynced.lock();
        u.durable = None;
        for w in u.waiting.drain(..) {
            let _ = w.send(Ok(()));
        }
    }

    /// A crash: the pipelined writes not yet durable are lost (the tables go back to their
    /// last durable state, keeping the epoch that fences dead handles). Returns whether
    /// anything was lost.
    pub fn lose_unsynced(&self) -> bool {
        let mut u = self.unsynced.lock();
        u.waiting.clear();
        let Some(durable) = u.durable.take() else { return false };
        let mut t = self.tables.lock();
        let epoch = t.epoch;
        *t = durable;
        t.epoch = epoch;
        true
    }

    pub fn handle(self: &Arc<MemDb>) -> MemStore {
        let mut t = self.tables.lock();
        t.epoch += 1;
        MemStore { db: self.clone(), epoch: t.epoch, node: None }
    }

    /// A handle for one more engine sharing the store (its [`Leases`] as `owner`); it starts
    /// listening for notices at once.
    pub fn join(self: &Arc<MemDb>, owner: &str) -> MemStore {
        let mut t = self.tables.lock();
        t.notices.insert(owner.to_string(), Vec::new());
        let node = Node {
            owner: owner.to_string(),
            alive: AtomicBool::new(true),
            held: Mutex::new(HashMap::new()),
            held_activities: Mutex::new(HashMap::new()),
        };
        MemStore { db: self.clone(), epoch: t.epoch, node: Some(Arc::new(node)) }
    }

    /// The database's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.as_ref().map(|c| c.now_ms()).unwrap_or(0)
    }
}

/// One engine's side of a shared store: what `PgStore` keeps in memory.
pub struct Node {
    pub owner: String,
    alive: AtomicBool,
    /// The epoch of every instance lease this engine holds (as far as it knows).
    pub held: Mutex<HashMap<String, i64>>,
    pub held_activities: Mutex<HashMap<i64, i64>>,
}

pub struct MemStore {
    db: Arc<MemDb>,
    epoch: u64,
    node: Option<Arc<Node>>,
}

impl MemStore {
    /// The engine's side of a shared store (`None` on a store of one engine).
    pub fn node(&self) -> Option<&Arc<Node>> {
        self.node.as_ref()
    }

    /// The process dies: every later call fails, its notices are no longer queued, and its
    /// leases stay in the store until they expire.
    pub fn kill(&self) {
        if let Some(n) = &self.node {
            n.alive.store(false, Ordering::SeqCst);
            self.db.tables.lock().notices.remove(&n.owner);
        }
    }

    fn origin(&self) -> String {
        self.node.as_ref().map(|n| n.owner.clone()).unwrap_or_default()
    }

    fn shared_node(&self) -> Result<&Arc<Node>, StoreError> {
        self.node.as_ref().ok_or_else(|| not_simulated("leases on a store of one engine"))
    }

    async fn interleave(&self) {
        let (n, commit) = {
            let mut rng = self.db.rng.lock();
            (rng.gen_range(0..=self.db.max_yields), rng.gen_range(0..3) == 0)
        };
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
        if commit {
            self.db.sync();
        }
    }

    /// A write, pipelined or not.
    async fn write_mode<T>(
        &self,
        pipelined: bool,
        f: impl FnOnce(&mut Tables) -> Result<T, StoreError>,
    ) -> Result<(T, Durable), StoreError> {
        if pipelined {
            self.write_pipelined(f).await
        } else {
            Ok((self.write(f).await?, Durable::already()))
        }
    }

    async fn create_with(
        &self,
        new: NewInstance,
        reuse: IdReuse,
        pipelined: bool,
    ) -> Result<(CreateResult, Durable), StoreError> {
        let origin = self.origin();
        let replaced_epoch = std::sync::Mutex::new(None);
        let result = self
            .write_mode(pipelined, |t| {
                let s = &new.spec;
                let mut replaced = None;
                // Replaced in place: the lease is dropped and its epoch keeps rising.
                let epoch = t.instances.get(&s.instance_id).map(|i| i.lease.epoch + 1).unwrap_or(0);
                if let Some(existing) = t.instances.get(&s.instance_id) {
                    match reuse.decide(existing.status) {
                        ReuseDecision::Refuse => return Ok(CreateResult::AlreadyExists(existing.status)),
                        ReuseDecision::Keep => return Ok(CreateResult::Kept),
                        // Simulated instances have no parent to tell.
                        ReuseDecision::Replace => replaced = Some(existing.status),
                    }
                    delete_instance(t, &s.instance_id);
                }
                t.instances.insert(
                    s.instance_id.clone(),
                    Instance {
                        execution_id: s.execution_id.clone(),
                        name: s.name.clone(),
                        status: OrchestrationStatus::Pending,
                        input: s.input.clone(),
                        output: None,
                        history: Vec::new(),
                        created_at_ms: new.created_at_ms,
                        lease: Lease { owner: None, until_ms: 0, epoch },
                    },
                );
                let start = Message {
                    target: s.instance_id.clone(),
                    execution_id: Some(s.execution_id.clone()),
                    priority: Priority::Start,
                    visible_at_ms: new.visible_at_ms,
                    event: new.started_event(),
                };
                let target = Target { name: s.name.clone(), version: None, status: OrchestrationStatus::Pending };
                let start = insert_inbox(t, &start, target, &origin);
                if replaced.is_some() {
                    *replaced_epoch.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(epoch);
                }
                Ok(CreateResult::Created(Box::new(Created { start, replaced, delivered: Vec::new() })))
            })
            .await;
        // Like `PgStore` (`AfterCommit`): a lease held on the replaced instance is void.
        let epoch = *replaced_epoch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(epoch), Some(node)) = (epoch, self.node.as_ref()) {
            let mut held = node.held.lock();
            if held.get(&new.spec.instance_id).is_some_and(|e| *e < epoch) {
                held.remove(&new.spec.instance_id);
            }
        }
        result
    }

    async fn commit_with(&self, c: TurnCommit, pipelined: bool) -> Result<(CommitResult, Durable), StoreError> {
        let origin = self.origin();
        // Like `PgStore`: the epoch held when the commit starts fences it.
        let held = self.node.as_ref().map(|n| n.held.lock().get(&c.instance_id).copied());
        let db_now = self.db.now_ms();
        let result = self
            .write_mode(pipelined, |t| {
                let conflict = || StoreError::Conflict(c.instance_id.clone());
                let inst = t.instances.get(&c.instance_id).ok_or_else(conflict)?;
                // The lease first (PostgreSQL's `fence`, with `require_lease` as sidecars run
                // it): the row must still name this engine and the epoch it holds; a commit for
                // an instance it holds no lease on is refused.
                if let Some(held) = held {
                    let mine = inst.lease.owner.is_some() && inst.lease.owner.as_deref() == Some(origin.as_str());
                    let leased = match held {
                        Some(epoch) => mine && inst.lease.epoch == epoch,
                        None => false,
                    };
                    if !leased {
                        FENCED.fetch_add(1, Ordering::Relaxed);
                        return Err(StoreError::LeaseLost(c.instance_id.clone()));
                    }
                }
                if inst.execution_id != c.execution_id
                    || is_terminal(inst.status)
                    || inst.history.len() != c.history_len
                {
                    return Err(conflict());
                }
                if !c.consumed.iter().all(|id| t.inbox.get(id).is_some_and(|r| r.instance_id == c.instance_id)) {
                    return Err(conflict());
                }
                let o = &c.outcome;
                if !o.children.is_empty() || o.continue_as_new.is_some() {
                    return Err(not_simulated("sub-orchestrations and continue-as-new"));
                }
                for id in &c.consumed {
                    t.inbox.remove(id);
                }
                let terminal = o.is_terminal();
                let lease_ms = self.db.lease_ms;
                let inst = t.instances.get_mut(&c.instance_id).ok_or_else(conflict)?;
                if matches!(held, Some(Some(_))) {
                    inst.lease.until_ms = db_now + lease_ms;
                }
                inst.history.extend(o.append.iter().cloned());
                inst.status = o.status;
                if terminal {
                    inst.output = o.output.clone();
                }
                let mut result = CommitResult::default();
                if terminal {
                    t.inbox.retain(|_, r| r.instance_id != c.instance_id);
                    delete_activities_of(t, &c.instance_id);
                    result.finished_through = Some(t.last_inbox);
                }
                let mut names = BTreeSet::new();
                for a in &o.activities {
                    t.last_activity += 1;
                    t.activities.insert(t.last_activity, a.clone());
                    result.activities.push(QueuedActivity { id: t.last_activity, request: a.clone(), progress: None });
                    names.insert(a.name.clone());
                }
                for name in names {
                    t.notify(Notice::Activity { name });
                }
                for m in &o.messages {
                    if let Some(d) = deliver(t, m, &origin) {
                        result.delivered.push(d);
                    }
                }
                Ok(result)
            })
            .await;
        if let (Err(StoreError::LeaseLost(_)), Some(node), Some(Some(epoch))) = (&result, &self.node, held) {
            // The lease is gone: forget it (unless a newer claim replaced the entry meanwhile).
            let mut held = node.held.lock();
            if held.get(&c.instance_id) == Some(&epoch) {
                held.remove(&c.instance_id);
            }
        }
        result
    }

    /// A pipelined write (see the module doc); on a shared store, an ordinary one.
    async fn write_pipelined<T>(
        &self,
        f: impl FnOnce(&mut Tables) -> Result<T, StoreError>,
    ) -> Result<(T, Durable), StoreError> {
        if self.node.is_some() || self.db.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok((self.write(f).await?, Durable::already()));
        }
        self.interleave().await;
        let r = {
            let mut u = self.db.unsynced.lock();
            let mut t = self.db.tables.lock();
            if t.epoch != self.epoch {
                return Err(StoreError::Closed);
            }
            if u.durable.is_none() {
                u.durable = Some(t.clone());
            }
            f(&mut t).map(|v| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                u.waiting.push(tx);
                (v, Durable::pending(rx))
            })
        };
        if r.is_ok() {
            // The writer's COMMIT comes, a seeded while later (unless a crash comes first).
            let (db, pause) = (self.db.clone(), self.db.rng.lock().gen_range(0..=2 * self.db.max_yields + 2));
            tokio::spawn(async move {
                for _ in 0..pause {
                    tokio::task::yield_now().await;
                }
                db.sync();
            });
        }
        self.interleave().await;
        r
    }

    /// A write: refused while the database is set to fail.
    async fn write<T>(&self, f: impl FnOnce(&mut Tables) -> Result<T, StoreError>) -> Result<T, StoreError> {
        if self.db.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            self.interleave().await;
            return Err(StoreError::CommitFailed("disk I/O error (simulated)".into()));
        }
        self.apply(f).await
    }

    /// Runs one atomic change (or read) between two seeded pauses.
    async fn apply<T>(&self, f: impl FnOnce(&mut Tables) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.interleave().await;
        let r = {
            let mut t = self.db.tables.lock();
            if t.epoch != self.epoch || self.node.as_ref().is_some_and(|n| !n.alive.load(Ordering::SeqCst)) {
                return Err(StoreError::Closed);
            }
            // Each operation validates everything before it changes anything, so an
            // error leaves the tables as they were, like a rolled-back transaction.
            f(&mut t)
        };
        // Any other write commits after the pipelined ones before it; a read waits for them.
        self.db.sync();
        self.interleave().await;
        r
    }
}

fn target_of(t: &Tables, id: &str) -> Option<(Target, String)> {
    t.instances
        .get(id)
        .map(|i| (Target { name: i.name.clone(), version: None, status: i.status }, i.execution_id.clone()))
}

fn insert_inbox(t: &mut Tables, m: &Message, target: Target, origin: &str) -> Delivered {
    t.last_inbox += 1;
    let id = t.last_inbox;
    t.inbox.insert(
        id,
        InboxRow {
            instance_id: m.target.clone(),
            execution_id: m.execution_id.clone(),
            priority: m.priority,
            visible_at_ms: m.visible_at_ms,
            event: m.event.clone(),
            origin: origin.to_string(),
        },
    );
    t.notify(Notice::Inbox { instance: m.target.clone(), visible_at_ms: m.visible_at_ms, origin: origin.to_string() });
    Delivered {
        inbox_id: id,
        instance_id: m.target.clone(),
        execution_id: m.execution_id.clone(),
        priority: m.priority,
        visible_at_ms: m.visible_at_ms,
        event: m.event.clone(),
        target,
    }
}

fn deliver(t: &mut Tables, m: &Message, origin: &str) -> Option<Delivered> {
    let (target, execution_id) = target_of(t, &m.target)?;
    if is_terminal(target.status) || m.execution_id.as_ref().is_some_and(|e| *e != execution_id) {
        return None;
    }
    Some(insert_inbox(t, m, target, origin))
}

fn delete_activities_of(t: &mut Tables, id: &str) {
    let gone: Vec<i64> = t
        .activities
        .iter()
        .filter(|(_, a)| a.orchestration_instance.as_ref().map(|o| o.instance_id.as_str()) == Some(id))
        .map(|(k, _)| *k)
        .collect();
    for k in gone {
        t.remove_activity(k);
    }
}

fn delete_instance(t: &mut Tables, id: &str) {
    t.instances.remove(id);
    t.inbox.retain(|_, r| r.instance_id != id);
    delete_activities_of(t, id);
}

/// Whether a claim takes work of this name.
fn serves(served: &Served, name: &str) -> bool {
    match served {
        Served::All(except) => !except.iter().any(|n| n == name),
        Served::Names(names) => names.iter().any(|n| n == name),
    }
}

fn delivered(t: &Tables, id: i64, r: &InboxRow) -> Option<Delivered> {
    let (target, _) = target_of(t, &r.instance_id)?;
    Some(Delivered {
        inbox_id: id,
        instance_id: r.instance_id.clone(),
        execution_id: r.execution_id.clone(),
        priority: r.priority,
        visible_at_ms: r.visible_at_ms,
        event: r.event.clone(),
        target,
    })
}

fn not_simulated(what: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} is not simulated"))
}

#[async_trait]
impl Store for MemStore {
    async fn create_instance(&self, new: NewInstance, reuse: IdReuse) -> Result<CreateResult, StoreError> {
        self.create_with(new, reuse, false).await.map(|(r, _)| r)
    }

    async fn create_instance_pipelined(
        &self,
        new: NewInstance,
        reuse: IdReuse,
    ) -> Result<(CreateResult, Durable), StoreError> {
        self.create_with(new, reuse, true).await
    }

    async fn enqueue(&self, message: Message) -> Result<Option<Delivered>, StoreError> {
        let origin = self.origin();
        self.write(|t| Ok(deliver(t, &message, &origin))).await
    }

    async fn enqueue_pipelined(&self, message: Message) -> Result<(Option<Delivered>, Durable), StoreError> {
        let origin = self.origin();
        self.write_pipelined(|t| Ok(deliver(t, &message, &origin))).await
    }

    async fn complete_activity_pipelined(
        &self,
        activity_id: i64,
        result: Message,
    ) -> Result<(Option<Delivered>, Durable), StoreError> {
        let origin = self.origin();
        self.write_pipelined(|t| Ok(t.remove_activity(activity_id).and_then(|_| deliver(t, &result, &origin)))).await
    }

    async fn commit_turn(&self, c: TurnCommit) -> Result<CommitResult, StoreError> {
        self.commit_with(c, false).await.map(|(r, _)| r)
    }

    async fn commit_turn_pipelined(&self, c: TurnCommit) -> Result<(CommitResult, Durable), StoreError> {
        self.commit_with(c, true).await
    }

    async fn complete_activity(&self, activity_id: i64, result: Message) -> Result<Option<Delivered>, StoreError> {
        let origin = self.origin();
        self.write(|t| Ok(t.remove_activity(activity_id).and_then(|_| deliver(t, &result, &origin)))).await
    }

    async fn record_attempts(&self, _counts: Vec<Attempts>) -> Result<(), StoreError> {
        // Attempts only matter across restarts for poison detection, which the
        // simulation turns off; the write still takes its place among the others.
        self.write(|_| Ok(())).await
    }

    async fn save_activity_progress(&self, activity_id: i64, _progress: String) -> Result<bool, StoreError> {
        self.write(|t| Ok(t.activities.contains_key(&activity_id))).await
    }

    async fn load_instance(&self, instance_id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        self.apply(|t| {
            Ok(t.instances.get(instance_id).map(|i| InstanceRecord {
                instance_id: instance_id.to_string(),
                execution_id: i.execution_id.clone(),
                name: i.name.clone(),
                version: None,
                status: i.status,
                created_at_ms: i.created_at_ms,
                updated_at_ms: i.created_at_ms,
                completed_at_ms: None,
                scheduled_start_at_ms: None,
                input: i.input.clone(),
                output: i.output.clone(),
                custom_status: None,
                failure: None,
                parent_instance_id: None,
                parent: None,
                tags: HashMap::new(),
                trace_context: None,
            }))
        })
        .await
    }

    async fn load_history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        self.apply(|t| Ok(t.instances.get(instance_id).map(|i| i.history.clone()).unwrap_or_default())).await
    }

    async fn query_instances(&self, _filter: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
        Err(not_simulated("query"))
    }

    async fn list_completed_ids(&self, _filter: &CompletedFilter) -> Result<Vec<(i64, String)>, StoreError> {
        Err(not_simulated("list"))
    }

    async fn count_by_status(&self) -> Result<Vec<(OrchestrationStatus, u64)>, StoreError> {
        Err(not_simulated("count"))
    }

    async fn purge(&self, _selection: PurgeSelection, _recursive: bool) -> Result<u32, StoreError> {
        Err(not_simulated("purge"))
    }

    async fn restart(&self, _id: &str, _new_id: Option<String>, _now_ms: i64) -> Result<RestartResult, StoreError> {
        Err(not_simulated("restart"))
    }

    async fn rewind(&self, _id: &str, _reason: Option<String>, _now_ms: i64) -> Result<RewindResult, StoreError> {
        Err(not_simulated("rewind"))
    }

    async fn load_events(&self, instance_id: &str, inbox_ids: &[i64]) -> Result<Vec<(i64, HistoryEvent)>, StoreError> {
        self.apply(|t| {
            Ok(inbox_ids
                .iter()
                .filter_map(|id| {
                    t.inbox.get(id).filter(|r| r.instance_id == instance_id).map(|r| (*id, r.event.clone()))
                })
                .collect())
        })
        .await
    }

    async fn load_inbox(&self, instance_id: &str) -> Result<InboxSnapshot, StoreError> {
        let origin = self.origin();
        self.apply(|t| {
            let rows = t
                .inbox
                .iter()
                .filter(|(_, r)| r.instance_id == instance_id)
                .filter_map(|(id, r)| delivered(t, *id, r))
                .collect();
            let watermark = t.last_inbox;
            if self.node.is_some() {
                let seen = t.snapshots.entry((origin, instance_id.to_string())).or_insert(0);
                *seen = (*seen).max(watermark);
            }
            Ok(InboxSnapshot { rows, watermark })
        })
        .await
    }

    // Entities are not part of the simulation: the engine reaches these only when a
    // worker or client uses entities, which the simulation never does.
    async fn enqueue_entity(
        &self,
        _messages: Vec<crate::core::entity::EntityMessage>,
        _now_ms: i64,
    ) -> Result<Vec<QueuedEntityMessage>, StoreError> {
        Err(StoreError::Task("entities are not simulated".into()))
    }

    async fn commit_entity(&self, _commit: EntityCommit) -> Result<EntityCommitResult, StoreError> {
        Err(StoreError::Task("entities are not simulated".into()))
    }

    async fn remove_empty_entities(&self, _ids: Vec<String>) -> Result<u32, StoreError> {
        Ok(0)
    }

    async fn query_entities(&self, _filter: &EntitySelection) -> Result<Vec<EntityRecord>, StoreError> {
        Ok(Vec::new())
    }

    async fn recover_entities(&self) -> Result<Vec<RecoveredEntity>, StoreError> {
        Ok(Vec::new())
    }

    async fn recover(&self) -> Result<Recovered, StoreError> {
        self.recover_with(i64::MAX).await
    }

    async fn recover_through(&self, through_ms: i64) -> Result<Option<Recovered>, StoreError> {
        self.recover_with(through_ms).await.map(Some)
    }

    async fn load_timers(&self, after_ms: i64, through_ms: i64) -> Result<Option<InboxSnapshot>, StoreError> {
        self.apply(|t| {
            let rows = t
                .inbox
                .iter()
                .filter(|(_, r)| r.visible_at_ms > after_ms && r.visible_at_ms <= through_ms)
                .filter_map(|(id, r)| delivered(t, *id, r))
                .collect();
            Ok(Some(InboxSnapshot { rows, watermark: t.last_inbox }))
        })
        .await
    }
}

impl MemStore {
    async fn recover_with(&self, through_ms: i64) -> Result<Recovered, StoreError> {
        self.apply(|t| {
            let inbox = t
                .inbox
                .iter()
                .filter(|(_, r)| r.visible_at_ms <= through_ms)
                .filter_map(|(id, r)| delivered(t, *id, r))
                .collect();
            let activities = t
                .activities
                .iter()
                .map(|(id, a)| QueuedActivity { id: *id, request: a.clone(), progress: None })
                .collect();
            Ok(Recovered { inbox, activities, attempts: Vec::new() })
        })
        .await
    }
}

/// The PostgreSQL store's leases (`store/postgres/leases.rs`), statement for statement: each
/// SQL statement is one atomic change here, with the seeded pauses between them.
#[async_trait]
impl Leases for MemStore {
    fn owner(&self) -> &str {
        self.node.as_ref().map(|n| n.owner.as_str()).unwrap_or_default()
    }

    fn lease_duration(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from(self.db.lease_ms).unwrap_or(0))
    }

    fn holds(&self, instance_id: &str) -> bool {
        self.node.as_ref().is_some_and(|n| n.held.lock().contains_key(instance_id))
    }

    fn held_ids(&self) -> Vec<String> {
        self.node.as_ref().map(|n| n.held.lock().keys().cloned().collect()).unwrap_or_default()
    }

    async fn claim(
        &self,
        orchestrations: &Served,
        turns: usize,
        activities: &Served,
        activities_limit: usize,
        now_ms: i64,
    ) -> Result<Claimed, StoreError> {
        let node = self.shared_node()?.clone();
        let (owner, lease_ms) = (node.owner.clone(), self.db.lease_ms);
        let mut claimed = Claimed::default();
        if turns > 0 && !orchestrations.is_none() {
            // CLAIM_INSTANCES: instances with an inbox row visible at `now_ms`, lease free or
            // expired (database clock), name served; the epoch rises.
            let won: Vec<(String, i64)> = self
                .apply(|t| {
                    let db_now = self.db.now_ms();
                    let due: BTreeSet<String> =
                        t.inbox.values().filter(|r| r.visible_at_ms <= now_ms).map(|r| r.instance_id.clone()).collect();
                    let mut won = Vec::new();
                    for id in due {
                        if won.len() >= turns {
                            break;
                        }
                        let Some(inst) = t.instances.get_mut(&id) else { continue };
                        if !inst.lease.free_at(db_now) || !serves(orchestrations, &inst.name) {
                            continue;
                        }
                        let epoch = inst.lease.epoch + 1;
                        inst.lease = Lease { owner: Some(owner.clone()), until_ms: db_now + lease_ms, epoch };
                        won.push((id, epoch));
                    }
                    Ok(won)
                })
                .await?;
            CLAIMED.fetch_add(won.len() as u64, Ordering::Relaxed);
            node.held.lock().extend(won.iter().cloned());
            for (id, _) in won {
                let snapshot = self.load_inbox(&id).await?;
                claimed.instances.push((id, snapshot));
            }
        }
        if activities_limit > 0 && !activities.is_none() {
            let taken: Vec<(QueuedActivity, i64)> = self
                .apply(|t| {
                    let db_now = self.db.now_ms();
                    let mut taken = Vec::new();
                    for (id, request) in &t.activities {
                        if taken.len() >= activities_limit {
                            break;
                        }
                        let lease = t.activity_leases.get(id).cloned().unwrap_or_default();
                        if !lease.free_at(db_now) || !serves(activities, &request.name) {
                            continue;
                        }
                        let queued = QueuedActivity { id: *id, request: request.clone(), progress: None };
                        taken.push((queued, lease.epoch + 1));
                    }
                    for (a, epoch) in &taken {
                        let lease = Lease { owner: Some(owner.clone()), until_ms: db_now + lease_ms, epoch: *epoch };
                        t.activity_leases.insert(a.id, lease);
                    }
                    Ok(taken)
                })
                .await?;
            node.held_activities.lock().extend(taken.iter().map(|(a, epoch)| (a.id, *epoch)));
            claimed.activities = taken.into_iter().map(|(a, _)| a).collect();
        }
        Ok(claimed)
    }

    async fn renew(&self) -> Result<Lost, StoreError> {
        let node = self.shared_node()?.clone();
        let (owner, lease_ms) = (node.owner.clone(), self.db.lease_ms);
        let mut lost = Lost::default();
        // RENEW_INSTANCES: every row naming this owner, expired or not.
        let current: HashMap<String, i64> = self
            .apply(|t| {
                let until_ms = self.db.now_ms() + lease_ms;
                Ok(t.instances
                    .iter_mut()
                    .filter(|(_, i)| i.lease.owner.as_deref() == Some(owner.as_str()))
                    .map(|(id, i)| {
                        i.lease.until_ms = until_ms;
                        (id.clone(), i.lease.epoch)
                    })
                    .collect())
            })
            .await?;
        node.held.lock().retain(|id, epoch| {
            let kept = current.get(id) == Some(epoch);
            if !kept {
                lost.instances.push(id.clone());
            }
            kept
        });
        let current: HashMap<i64, i64> = self
            .apply(|t| {
                let until_ms = self.db.now_ms() + lease_ms;
                let Tables { activities, activity_leases, .. } = t;
                Ok(activity_leases
                    .iter_mut()
                    .filter(|(id, l)| activities.contains_key(id) && l.owner.as_deref() == Some(owner.as_str()))
                    .map(|(id, l)| {
                        l.until_ms = until_ms;
                        (*id, l.epoch)
                    })
                    .collect())
            })
            .await?;
        node.held_activities.lock().retain(|id, epoch| {
            let kept = current.get(id) == Some(epoch);
            if !kept {
                lost.activities.push(*id);
            }
            kept
        });
        Ok(lost)
    }

    async fn release(&self, instance_id: &str, with_rows: bool) -> Result<ReleaseOutcome, StoreError> {
        let node = self.shared_node()?.clone();
        // Stop counting the lease as held first (as `PgStore` does).
        let Some(epoch) = node.held.lock().remove(instance_id) else { return Ok(ReleaseOutcome::Lost) };
        let outcome = self
            .apply(|t| {
                let now = self.db.now_ms();
                let busy = t.inbox.values().any(|r| r.instance_id == instance_id);
                let Some(inst) = t.instances.get_mut(instance_id) else { return Ok(ReleaseOutcome::Lost) };
                if inst.lease.owner.as_deref() != Some(node.owner.as_str()) || inst.lease.epoch != epoch {
                    return Ok(ReleaseOutcome::Lost);
                }
                if busy && !with_rows {
                    return Ok(ReleaseOutcome::Busy);
                }
                inst.lease.owner = None;
                inst.lease.until_ms = 0;
                if busy {
                    let origin = node.owner.clone();
                    t.notify(Notice::Inbox { instance: instance_id.to_string(), visible_at_ms: now, origin });
                }
                Ok(ReleaseOutcome::Released)
            })
            .await?;
        if outcome == ReleaseOutcome::Busy {
            node.held.lock().insert(instance_id.to_string(), epoch);
        }
        Ok(outcome)
    }

    async fn release_activities(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let node = self.shared_node()?.clone();
        {
            let mut held = node.held_activities.lock();
            for id in &ids {
                held.remove(id);
            }
        }
        self.apply(|t| {
            let mut names = BTreeSet::new();
            for id in &ids {
                let Some(request) = t.activities.get(id) else { continue };
                if let Some(l) = t.activity_leases.get_mut(id).filter(|l| l.owner.as_deref() == Some(&node.owner)) {
                    l.owner = None;
                    l.until_ms = 0;
                    names.insert(request.name.clone());
                }
            }
            for name in names {
                t.notify(Notice::Activity { name });
            }
            Ok(())
        })
        .await
    }

    fn activity_done(&self, id: i64) {
        if let Some(n) = &self.node {
            n.held_activities.lock().remove(&id);
        }
    }

    async fn release_all(&self) -> Result<(), StoreError> {
        let node = self.shared_node()?.clone();
        node.held.lock().clear();
        node.held_activities.lock().clear();
        self.apply(|t| {
            let now = self.db.now_ms();
            let me = Some(node.owner.as_str());
            let mut freed = Vec::new();
            for (id, i) in t.instances.iter_mut().filter(|(_, i)| i.lease.owner.as_deref() == me) {
                i.lease.owner = None;
                i.lease.until_ms = 0;
                freed.push(id.clone());
            }
            let mut names = BTreeSet::new();
            for (id, l) in t.activity_leases.iter_mut().filter(|(_, l)| l.owner.as_deref() == me) {
                l.owner = None;
                l.until_ms = 0;
                names.extend(t.activities.get(id).map(|a| a.name.clone()));
            }
            for l in t.hub_leases.values_mut().filter(|l| l.owner.as_deref() == me) {
                l.owner = None;
                l.until_ms = 0;
            }
            for instance in freed {
                t.notify(Notice::Inbox { instance, visible_at_ms: now, origin: node.owner.clone() });
            }
            for name in names {
                t.notify(Notice::Activity { name });
            }
            Ok(())
        })
        .await
    }

    async fn listen(&self) -> Result<tokio::sync::mpsc::Receiver<Notice>, StoreError> {
        // The simulation delivers each engine's queued notices itself (`Tables::notices`).
        Ok(tokio::sync::mpsc::channel(1).1)
    }

    async fn lead(&self, name: &str) -> Result<bool, StoreError> {
        let node = self.shared_node()?.clone();
        self.apply(|t| {
            let now = self.db.now_ms();
            let lease = t.hub_leases.entry(name.to_string()).or_default();
            let mine = lease.owner.as_deref() == Some(node.owner.as_str());
            if !mine && !lease.free_at(now) {
                return Ok(false);
            }
            let epoch = if mine { lease.epoch } else { lease.epoch + 1 };
            *lease = Lease { owner: Some(node.owner.clone()), until_ms: now + self.db.lease_ms, epoch };
            Ok(true)
        })
        .await
    }

    async fn announce_status(&self, instance_id: &str) -> Result<(), StoreError> {
        self.apply(|t| {
            t.notify(Notice::Status { instance: instance_id.to_string() });
            Ok(())
        })
        .await
    }

    async fn announce_replaced(&self, instance_id: &str) -> Result<(), StoreError> {
        self.apply(|t| {
            t.notify(Notice::Replaced { instance: instance_id.to_string() });
            Ok(())
        })
        .await
    }
}
