//! An in-memory [`Store`] for the simulation: the SQLite store's semantics for the
//! operations the simulation uses, each applied atomically, with seeded yields before
//! and after so that concurrent engine calls interleave differently per seed. A crash
//! is an epoch change: handles of the dead engine fail every later call, as a killed
//! process would never reach the database again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use duro_proto::{ActivityRequest, HistoryEvent, OrchestrationStatus};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::Rng;

use crate::core::{is_terminal, Message, NewInstance, Priority};
use crate::store::*;

#[derive(Debug, Clone)]
pub struct Instance {
    pub execution_id: String,
    pub name: String,
    pub status: OrchestrationStatus,
    pub input: Option<String>,
    pub output: Option<String>,
    pub history: Vec<HistoryEvent>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct InboxRow {
    pub instance_id: String,
    pub execution_id: Option<String>,
    pub priority: Priority,
    pub visible_at_ms: i64,
    pub event: HistoryEvent,
}

#[derive(Debug, Default)]
pub struct Tables {
    pub instances: BTreeMap<String, Instance>,
    pub inbox: BTreeMap<i64, InboxRow>,
    pub activities: BTreeMap<i64, ActivityRequest>,
    last_inbox: i64,
    last_activity: i64,
    pub epoch: u64,
}

/// The shared database; each engine gets a [`MemStore`] handle bound to one epoch.
pub struct MemDb {
    pub tables: Mutex<Tables>,
    rng: Arc<Mutex<StdRng>>,
    /// Most yields a call makes before (and after) it applies.
    max_yields: u32,
    /// While set, every write fails as a broken disk would (nothing is stored).
    pub fail_writes: std::sync::atomic::AtomicBool,
}

impl MemDb {
    pub fn new(rng: Arc<Mutex<StdRng>>, max_yields: u32) -> Arc<MemDb> {
        Arc::new(MemDb { tables: Mutex::new(Tables::default()), rng, max_yields, fail_writes: Default::default() })
    }

    /// A handle for a new engine; handles of earlier epochs stop working.
    pub fn handle(self: &Arc<MemDb>) -> MemStore {
        let mut t = self.tables.lock();
        t.epoch += 1;
        MemStore { db: self.clone(), epoch: t.epoch }
    }
}

pub struct MemStore {
    db: Arc<MemDb>,
    epoch: u64,
}

impl MemStore {
    async fn interleave(&self) {
        let n = self.db.rng.lock().gen_range(0..=self.db.max_yields);
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
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
            if t.epoch != self.epoch {
                return Err(StoreError::Closed);
            }
            // Each operation validates everything before it changes anything, so an
            // error leaves the tables as they were, like a rolled-back transaction.
            f(&mut t)
        };
        self.interleave().await;
        r
    }
}

fn target_of(t: &Tables, id: &str) -> Option<(Target, String)> {
    t.instances
        .get(id)
        .map(|i| (Target { name: i.name.clone(), version: None, status: i.status }, i.execution_id.clone()))
}

fn insert_inbox(t: &mut Tables, m: &Message, target: Target) -> Delivered {
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
        },
    );
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

fn deliver(t: &mut Tables, m: &Message) -> Option<Delivered> {
    let (target, execution_id) = target_of(t, &m.target)?;
    if is_terminal(target.status) || m.execution_id.as_ref().is_some_and(|e| *e != execution_id) {
        return None;
    }
    Some(insert_inbox(t, m, target))
}

fn delete_instance(t: &mut Tables, id: &str) {
    t.instances.remove(id);
    t.inbox.retain(|_, r| r.instance_id != id);
    t.activities.retain(|_, a| a.orchestration_instance.as_ref().map(|o| o.instance_id.as_str()) != Some(id));
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
        self.write(|t| {
            let s = &new.spec;
            let mut replaced = None;
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
            let start = insert_inbox(t, &start, target);
            Ok(CreateResult::Created(Box::new(Created { start, replaced, delivered: Vec::new() })))
        })
        .await
    }

    async fn enqueue(&self, message: Message) -> Result<Option<Delivered>, StoreError> {
        self.write(|t| Ok(deliver(t, &message))).await
    }

    async fn commit_turn(&self, c: TurnCommit) -> Result<CommitResult, StoreError> {
        self.write(|t| {
            let conflict = || StoreError::Conflict(c.instance_id.clone());
            let inst = t.instances.get(&c.instance_id).ok_or_else(conflict)?;
            if inst.execution_id != c.execution_id || is_terminal(inst.status) || inst.history.len() != c.history_len {
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
            let inst = t.instances.get_mut(&c.instance_id).ok_or_else(conflict)?;
            inst.history.extend(o.append.iter().cloned());
            inst.status = o.status;
            if terminal {
                inst.output = o.output.clone();
            }
            let mut result = CommitResult::default();
            if terminal {
                t.inbox.retain(|_, r| r.instance_id != c.instance_id);
                let id = c.instance_id.as_str();
                t.activities
                    .retain(|_, a| a.orchestration_instance.as_ref().map(|o| o.instance_id.as_str()) != Some(id));
                result.finished_through = Some(t.last_inbox);
            }
            for a in &o.activities {
                t.last_activity += 1;
                t.activities.insert(t.last_activity, a.clone());
                result.activities.push(QueuedActivity { id: t.last_activity, request: a.clone(), progress: None });
            }
            for m in &o.messages {
                if let Some(d) = deliver(t, m) {
                    result.delivered.push(d);
                }
            }
            Ok(result)
        })
        .await
    }

    async fn complete_activity(&self, activity_id: i64, result: Message) -> Result<Option<Delivered>, StoreError> {
        self.write(|t| Ok(t.activities.remove(&activity_id).and_then(|_| deliver(t, &result)))).await
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
        self.apply(|t| {
            let rows = t
                .inbox
                .iter()
                .filter(|(_, r)| r.instance_id == instance_id)
                .filter_map(|(id, r)| delivered(t, *id, r))
                .collect();
            Ok(InboxSnapshot { rows, watermark: t.last_inbox })
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
        self.apply(|t| {
            let inbox = t.inbox.iter().filter_map(|(id, r)| delivered(t, *id, r)).collect();
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
