//! Running as one of several sidecars on a shared store (PostgreSQL): the engine's side of
//! [`Leases`].
//!
//! The scheduler works exactly as on a single node, but only on instances and activities this
//! sidecar holds a lease on. This module decides what enters it:
//! - **Claims** take runnable work whose names this sidecar's workers serve
//!   ([`Scheduler::served`]), no more than its streams have room for; a claimed instance's
//!   inbox is loaded in one snapshot and its cached history dropped (another sidecar may have
//!   run turns since).
//! - **Deliveries** this sidecar commits enter its scheduler only for instances it holds
//!   ([`Engine::admits`]); for others, the commit's notice makes a sidecar claim them.
//! - **Notices** ([`Notice`]) wake claims, reload a held instance's inbox when another sidecar
//!   delivered to it, wake `WaitFor*` callers, and arm a claim for a future timer row.
//! - **Renewals** run every third of the lease; a lost lease drops the instance here (its
//!   turn in flight then fails its fenced commit). Each renewal also gives back instances
//!   that have nothing left here (quiet) and work no connected stream serves.
//! - A **fallback poll** (`ClusterOptions::poll`) claims even when notices are lost, and finds
//!   timers and expired leases nobody announced; graceful shutdown gives every lease back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Engine;
use crate::store::{Leases, Notice, ReleaseOutcome, Served, StoreError};

/// How a sidecar shares its store with others.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The longest a claim waits when no notice arrives (missed notices, unannounced timers,
    /// expired leases of a dead sidecar). Each poll is one claim query.
    pub poll: Duration,
    /// Most instances (and activities) one claim query takes.
    pub claim_batch: usize,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { poll: Duration::from_millis(500), claim_batch: 128 }
    }
}

/// The hub-wide lease whose holder dispatches entities.
const ENTITY_LEASE: &str = "entities";

/// Future visible times announced by notices, kept to arm claims (bounded: the poll covers
/// whatever does not fit).
const MAX_ARMED: usize = 4096;

impl Engine {
    /// Whether a delivery for `instance_id` enters this sidecar's scheduler: always on a
    /// store of its own, only for held instances on a shared one.
    pub(crate) fn admits(&self, instance_id: &str) -> bool {
        self.inner.leases.as_ref().is_none_or(|l| l.holds(instance_id))
    }

    /// Whether activities this sidecar commits enter its scheduler directly (a store of its
    /// own) or are claimed from the shared store.
    pub(crate) fn admits_activities(&self) -> bool {
        self.inner.leases.is_none()
    }

    /// Whether this sidecar holds an instance's lease now (after a commit was fenced: a claim
    /// may have taken the instance back, under a newer epoch, while the turn was out).
    pub(crate) fn holds_again(&self, instance_id: &str) -> bool {
        self.inner.leases.as_ref().is_some_and(|l| l.holds(instance_id))
    }

    /// A commit found this sidecar's lease lost: the instance belongs to another sidecar now.
    pub(crate) fn lease_lost(&self, instance_id: &str) {
        tracing::info!(instance = %instance_id, "lease lost to another sidecar; dropping the instance here");
        self.invalidate(instance_id);
        self.inner.sched.lock().disown(instance_id);
        crate::metrics::lease_lost();
    }

    /// Asks the cluster loop for a claim now (a stream connected, capacity freed).
    pub(crate) fn want_claim(&self) {
        if self.inner.leases.is_some() {
            self.inner.claim_wanted.notify_one();
        }
    }

    /// Tells `WaitFor*` callers on other sidecars that an instance's status changed (off the
    /// caller's path; a lost notice only delays them until their next check).
    pub(crate) fn announce_status(&self, instance_id: &str) {
        if let Some(leases) = self.inner.leases.clone() {
            let id = instance_id.to_string();
            tokio::spawn(async move {
                if let Err(e) = leases.announce_status(&id).await {
                    tracing::debug!(instance = %id, error = %e, "status notice not sent");
                }
            });
        }
    }

    /// An instance was replaced or restarted under its id here: its old execution's entity
    /// locks end here and, on a shared hub, at the entity leader (off the caller's path).
    pub(crate) fn execution_replaced(&self, instance_id: &str) {
        self.entity_owner_ended(instance_id);
        if let Some(leases) = self.inner.leases.clone() {
            let id = instance_id.to_string();
            tokio::spawn(async move {
                if let Err(e) = leases.announce_replaced(&id).await {
                    tracing::warn!(instance = %id, error = %e, "replacement notice not sent; the entity leader frees the old execution's locks when the new one ends");
                }
            });
        }
    }

    /// Gives every lease back (graceful shutdown), so other sidecars take over at once.
    pub async fn release_leases(&self) {
        if let Some(leases) = &self.inner.leases {
            match leases.release_all().await {
                Ok(()) => tracing::info!("gave every lease back to the task hub"),
                Err(e) => tracing::warn!(error = %e, "could not give leases back; they expire by themselves"),
            }
        }
    }

    pub(crate) async fn cluster_loop(self, leases: Arc<dyn Leases>) {
        let mut shutdown = self.shutdown_signal();
        let mut notices = loop {
            match leases.listen().await {
                Ok(rx) => break rx,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other sidecars' notices; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        let opts = self.inner.opts.cluster.clone();
        let mut renew = tokio::time::interval(leases.lease_duration() / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut armed: BTreeSet<i64> = BTreeSet::new();
        let mut want = true;
        loop {
            if want {
                want = false;
                self.claim_pass(&*leases).await;
            }
            let now = self.now();
            while armed.first().is_some_and(|t| *t <= now) {
                armed.pop_first();
                want = true;
            }
            if want {
                continue;
            }
            let wait = armed
                .first()
                .map(|t| Duration::from_millis(u64::try_from(t - now).unwrap_or(0)))
                .unwrap_or(opts.poll)
                .min(opts.poll);
            tokio::select! {
                n = notices.recv() => {
                    let Some(n) = n else {
                        tracing::warn!("notice listener ended; relying on the poll");
                        notices = mpsc::channel(1).1;
                        continue;
                    };
                    let mut batch = vec![n];
                    while let Ok(n) = notices.try_recv() {
                        batch.push(n);
                    }
                    want = self.on_notices(&*leases, batch, &mut armed).await;
                }
                _ = tokio::time::sleep(wait) => want = true,
                _ = self.inner.claim_wanted.notified() => want = true,
                _ = renew.tick() => {
                    self.renew(&*leases).await;
                    want = true;
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Handles a burst of notices; `true` when a claim should run.
    pub(crate) async fn on_notices(&self, leases: &dyn Leases, batch: Vec<Notice>, armed: &mut BTreeSet<i64>) -> bool {
        let now = self.now();
        let mut claim = false;
        let mut entities = false;
        let mut reload = BTreeSet::new();
        for n in batch {
            match n {
                Notice::Inbox { instance, visible_at_ms, origin } => {
                    if leases.holds(&instance) {
                        // Our own deliveries are in the scheduler already.
                        if origin != leases.owner() {
                            reload.insert(instance);
                        }
                    } else if visible_at_ms <= now {
                        claim = true;
                    } else if armed.len() < MAX_ARMED {
                        armed.insert(visible_at_ms);
                    }
                }
                Notice::Activity { .. } => claim = true,
                Notice::Status { instance } => {
                    self.inner.waiters.notify(&instance);
                    self.entity_owner_changed(&instance).await;
                }
                Notice::Entity => entities = true,
                Notice::Replaced { instance } => {
                    if self.dispatches_entities() {
                        self.entity_owner_ended(&instance);
                        self.pump_entities();
                    }
                }
                Notice::Missed => {
                    claim = true;
                    entities = true;
                    reload.extend(self.inner.sched.lock().instance_ids());
                }
            }
        }
        for id in reload {
            self.reload_inbox(&id).await;
        }
        if entities && self.dispatches_entities() {
            if let Err(e) = self.recover_entities(false).await {
                tracing::warn!(error = %e, "could not read new entity requests; the next notice retries");
            }
        }
        claim
    }

    /// Re-reads a held instance's inbox (another sidecar delivered to it).
    async fn reload_inbox(&self, instance_id: &str) {
        match self.inner.store.load_inbox(instance_id).await {
            Ok(snapshot) => {
                let now = self.now();
                self.inner.sched.lock().resync(instance_id, snapshot.rows, snapshot.watermark, now);
                self.pump();
            }
            Err(e) => {
                tracing::warn!(instance = %instance_id, error = %e, "could not reload an inbox; the poll retries")
            }
        }
    }

    /// Claims work until a claim comes back short or there is no room.
    pub(crate) async fn claim_pass(&self, leases: &dyn Leases) {
        let batch = self.inner.opts.cluster.claim_batch;
        loop {
            let ((orchestrations, activities), (turn_room, activity_room)) = {
                let s = self.inner.sched.lock();
                (s.served(), s.claim_room())
            };
            let turns = turn_room.min(batch);
            let acts = activity_room.min(batch);
            let orchestrations = if turns == 0 { Served::Names(Vec::new()) } else { orchestrations };
            let activities = if acts == 0 { Served::Names(Vec::new()) } else { activities };
            if orchestrations.is_none() && activities.is_none() {
                return;
            }
            let claimed = match leases.claim(&orchestrations, turns, &activities, acts, self.now()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming work from the task hub failed; retrying at the next poll");
                    return;
                }
            };
            let (got_turns, got_acts) = (claimed.instances.len(), claimed.activities.len());
            if got_turns + got_acts > 0 {
                tracing::debug!(instances = got_turns, activities = got_acts, "claimed work from the task hub");
            }
            for (id, _) in &claimed.instances {
                self.invalidate(id);
            }
            {
                let now = self.now();
                let mut s = self.inner.sched.lock();
                for (id, snapshot) in claimed.instances {
                    s.resync(&id, snapshot.rows, snapshot.watermark, now);
                }
                for a in claimed.activities {
                    s.add_activity(a);
                }
                for a in &claimed.attempts {
                    s.restore_attempts(a);
                }
            }
            self.pump();
            if (got_turns < turns || turns == 0) && (got_acts < acts || acts == 0) {
                return;
            }
        }
    }

    /// Renews leases, drops lost ones, gives back what is quiet or unserved here, and takes
    /// or keeps entity dispatch when no other sidecar holds it.
    pub(crate) async fn renew(&self, leases: &dyn Leases) {
        let lead = match leases.lead(ENTITY_LEASE).await {
            Ok(lead) => lead,
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the entity lease; stepping down");
                false
            }
        };
        self.set_entity_leader(lead).await;
        match leases.renew().await {
            Ok(lost) => {
                for id in &lost.instances {
                    self.lease_lost(id);
                }
                if !lost.activities.is_empty() {
                    tracing::info!(activities = lost.activities.len(), "activity leases lost to another sidecar");
                    self.inner.sched.lock().disown_activities(&lost.activities);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing leases failed; retrying");
                return;
            }
        }
        let (quiet, unserved, unserved_activities) = {
            let s = self.inner.sched.lock();
            let quiet: Vec<String> = leases.held_ids().into_iter().filter(|id| s.is_quiet(id)).collect();
            (quiet, s.unserved_instances(), s.unserved_activities())
        };
        for id in quiet {
            self.give_back(leases, &id, false).await;
        }
        for id in unserved {
            self.give_back(leases, &id, true).await;
        }
        if !unserved_activities.is_empty() {
            self.inner.sched.lock().disown_activities(&unserved_activities);
            if let Err(e) = leases.release_activities(unserved_activities).await {
                tracing::warn!(error = %e, "could not give unserved activities back; their leases expire");
            }
        }
    }

    /// Gives one instance back to the hub: quiet ones when nothing arrived meanwhile, others
    /// (no stream here serves them) with their rows, for a sidecar that serves them.
    async fn give_back(&self, leases: &dyn Leases, instance_id: &str, with_rows: bool) {
        if with_rows && !self.inner.sched.lock().disown(instance_id) {
            return; // a turn is out; try again at the next renewal
        }
        match leases.release(instance_id, with_rows).await {
            Ok(ReleaseOutcome::Released) | Ok(ReleaseOutcome::Lost) => {
                self.inner.sched.lock().disown(instance_id);
                self.invalidate(instance_id);
            }
            Ok(ReleaseOutcome::Busy) => self.reload_inbox(instance_id).await,
            Err(e) => {
                tracing::warn!(instance = %instance_id, error = %e, "could not give a lease back; it stays held");
                self.reload_inbox(instance_id).await;
            }
        }
    }
}

/// A store error that means "another sidecar runs this instance now".
pub(crate) fn is_lease_lost(e: &StoreError) -> bool {
    matches!(e, StoreError::LeaseLost(_))
}
