//! Leases in the store: which sidecar runs which instance and activity, until when, under
//! which fencing epoch ([`Leases`] for [`PgStore`]), and the notices that wake other sidecars.
//!
//! Why each operation is safe with many sidecars:
//! - **Claims** pick rows with `FOR UPDATE SKIP LOCKED` and raise the epoch in the same
//!   statement, so two sidecars never claim one row, and a lease taken over from an expired
//!   owner carries a higher epoch than the one the old owner fences its commits with.
//! - **Renewals** and **release-all** lock this sidecar's rows in instance-id order, the
//!   order every multi-row writer uses, so they cannot deadlock with commits.
//! - **Release** locks the instance row `FOR UPDATE` *before* it looks for inbox rows; a writer
//!   delivering to the instance holds that row lock until it commits, so the release either
//!   sees the new row (and keeps the lease) or runs entirely before it (and the writer's
//!   notice makes another claim) — an event is never left in an instance nobody holds
//!   without a notice.
//! - Lease expiry uses the database's clock (`duro_now_ms()`), one clock for all sidecars.

use std::time::Duration;

use async_trait::async_trait;
use prost::Message as _;
use sqlx_core::row::Row;
use sqlx_postgres::PgListener;
use tokio::sync::mpsc;

use super::*;

fn lease_ms(s: &PgStore) -> i64 {
    i64::try_from(s.opts.lease.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The bind values of `($1::text[] IS NULL OR name = ANY($1)) AND NOT (name = ANY($2))`:
/// the names to take (`NULL`: every name) and the names to leave.
fn names(served: &Served) -> (Option<Vec<String>>, Vec<String>) {
    match served {
        Served::All(except) => (None, except.clone()),
        Served::Names(n) => (Some(n.clone()), Vec::new()),
    }
}

const CLAIM_INSTANCES: &str = "
WITH due AS (
    SELECT DISTINCT instance_id FROM inbox WHERE visible_at <= $3
), picked AS (
    SELECT c.instance_id FROM instances c JOIN due ON due.instance_id = c.instance_id
    WHERE (c.lease_owner IS NULL OR c.lease_until < duro_now_ms())
      AND ($1::text[] IS NULL OR c.name = ANY($1)) AND NOT (c.name = ANY($6))
    LIMIT $2
    FOR UPDATE OF c SKIP LOCKED
)
UPDATE instances i SET lease_owner = $4, lease_until = duro_now_ms() + $5, lease_epoch = i.lease_epoch + 1
FROM picked WHERE i.instance_id = picked.instance_id
RETURNING i.instance_id, i.lease_epoch, i.delivery_attempts";

const CLAIM_ACTIVITIES: &str = "
WITH picked AS (
    SELECT id FROM activities
    WHERE (lease_owner IS NULL OR lease_until < duro_now_ms())
      AND ($1::text[] IS NULL OR name = ANY($1)) AND NOT (name = ANY($5))
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE activities a SET lease_owner = $3, lease_until = duro_now_ms() + $4, lease_epoch = a.lease_epoch + 1
FROM picked WHERE a.id = picked.id
RETURNING a.id, a.lease_epoch, a.request, a.progress, a.delivery_attempts";

const RENEW_INSTANCES: &str = "
UPDATE instances SET lease_until = duro_now_ms() + $2
WHERE instance_id IN (SELECT instance_id FROM instances WHERE lease_owner = $1 ORDER BY instance_id FOR UPDATE)
RETURNING instance_id, lease_epoch";

const RENEW_ACTIVITIES: &str = "
UPDATE activities SET lease_until = duro_now_ms() + $2
WHERE id IN (SELECT id FROM activities WHERE lease_owner = $1 ORDER BY id FOR UPDATE)
RETURNING id, lease_epoch";

impl PgStore {
    /// Claims instances; each with its new epoch and stored delivery attempts.
    async fn claim_instances(
        &self,
        served: &Served,
        limit: i64,
        now_ms: i64,
    ) -> Result<Vec<(String, i64, i32)>, StoreError> {
        let (take, leave) = names(served);
        let rows = q(CLAIM_INSTANCES)
            .bind(take)
            .bind(limit)
            .bind(now_ms)
            .bind(&self.opts.owner)
            .bind(lease_ms(self))
            .bind(leave)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?, r.try_get::<i32, _>(2)?)))
            .collect()
    }

    /// Claims activities; each with its stored delivery attempts.
    async fn claim_activities(&self, served: &Served, limit: i64) -> Result<Vec<(QueuedActivity, i32)>, StoreError> {
        let (take, leave) = names(served);
        let rows = q(CLAIM_ACTIVITIES)
            .bind(take)
            .bind(limit)
            .bind(&self.opts.owner)
            .bind(lease_ms(self))
            .bind(leave)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut held = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: i64 = r.try_get(0)?;
            let bytes: Vec<u8> = r.try_get(2)?;
            let request = duro_proto::ActivityRequest::decode(&bytes[..])
                .map_err(|e| StoreError::Corrupt(format!("activity request {id}: {e}")))?;
            held.push((id, r.try_get::<i64, _>(1)?));
            out.push((QueuedActivity { id, request, progress: r.try_get(3)? }, r.try_get::<i32, _>(4)?));
        }
        self.held_activities.lock().extend(held);
        Ok(out)
    }

    async fn notify(&self, payload: String) -> Result<(), StoreError> {
        q("SELECT pg_notify($1, $2)").bind(self.channel()).bind(payload).execute(&self.pool).await?;
        Ok(())
    }
}

/// The first column of every row, as text.
fn strings(rows: Vec<sqlx_postgres::PgRow>) -> Result<Vec<String>, StoreError> {
    rows.iter().map(|r| r.try_get::<String, _>(0).map_err(StoreError::from)).collect()
}

/// Reads a notice's payload (see the rules in `mod.rs`); unknown ones are ignored.
pub fn parse_notice(payload: &str) -> Option<Notice> {
    let (kind, rest) = payload.split_once(' ').unwrap_or((payload, ""));
    match kind {
        "i" => {
            let mut parts = rest.splitn(3, ' ');
            let visible_at_ms = parts.next()?.parse().ok()?;
            let origin = parts.next()?.to_string();
            let instance = parts.next()?.to_string();
            Some(Notice::Inbox { instance, visible_at_ms, origin })
        }
        "a" => Some(Notice::Activity { name: rest.to_string() }),
        "s" => Some(Notice::Status { instance: rest.to_string() }),
        "r" => Some(Notice::Replaced { instance: rest.to_string() }),
        "e" => Some(Notice::Entity),
        _ => None,
    }
}

/// The payload announcing an inbox row (parsed by [`parse_notice`]).
pub fn inbox_notice(visible_at_ms: i64, origin: &str, instance_id: &str) -> String {
    format!("i {visible_at_ms} {origin} {instance_id}")
}

#[async_trait]
impl Leases for PgStore {
    fn owner(&self) -> &str {
        &self.opts.owner
    }

    fn lease_duration(&self) -> Duration {
        self.opts.lease
    }

    fn holds(&self, instance_id: &str) -> bool {
        self.held.lock().contains_key(instance_id)
    }

    fn held_ids(&self) -> Vec<String> {
        self.held.lock().keys().cloned().collect()
    }

    async fn claim(
        &self,
        orchestrations: &Served,
        turns: usize,
        activities: &Served,
        activities_limit: usize,
        now_ms: i64,
    ) -> Result<Claimed, StoreError> {
        let turns = i64::try_from(turns).unwrap_or(i64::MAX);
        let limit = i64::try_from(activities_limit).unwrap_or(i64::MAX);
        let mut claimed = Claimed::default();
        if turns > 0 && !orchestrations.is_none() {
            let won = self.claim_instances(orchestrations, turns, now_ms).await?;
            self.held.lock().extend(won.iter().map(|(id, epoch, _)| (id.clone(), *epoch)));
            for (id, _, attempts) in won {
                if let Ok(n @ 1..) = u32::try_from(attempts) {
                    claimed.attempts.push(Attempts::Instance(id.clone(), n));
                }
                let snapshot = read::load_inbox(self, &id).await?;
                claimed.instances.push((id, snapshot));
            }
        }
        if limit > 0 && !activities.is_none() {
            for (a, attempts) in self.claim_activities(activities, limit).await? {
                if let Ok(n @ 1..) = u32::try_from(attempts) {
                    claimed.attempts.push(Attempts::Activity(a.id, n));
                }
                claimed.activities.push(a);
            }
        }
        Ok(claimed)
    }

    async fn renew(&self) -> Result<Lost, StoreError> {
        let mut lost = Lost::default();
        let ms = lease_ms(self);
        q("INSERT INTO sidecars (id, started_at, heartbeat) VALUES ($1, duro_now_ms(), duro_now_ms())
           ON CONFLICT (id) DO UPDATE SET heartbeat = duro_now_ms()")
        .bind(&self.opts.owner)
        .execute(&self.pool)
        .await?;
        let rows = q(RENEW_INSTANCES).bind(&self.opts.owner).bind(ms).fetch_all(&self.pool).await?;
        let mut current = HashMap::with_capacity(rows.len());
        for r in &rows {
            current.insert(r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?);
        }
        {
            let mut held = self.held.lock();
            held.retain(|id, epoch| {
                let kept = current.get(id) == Some(epoch);
                if !kept {
                    lost.instances.push(id.clone());
                }
                kept
            });
        }
        let rows = q(RENEW_ACTIVITIES).bind(&self.opts.owner).bind(ms).fetch_all(&self.pool).await?;
        let mut current = HashMap::with_capacity(rows.len());
        for r in &rows {
            current.insert(r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?);
        }
        self.held_activities.lock().retain(|id, epoch| {
            let kept = current.get(id) == Some(epoch);
            if !kept {
                lost.activities.push(*id);
            }
            kept
        });
        Ok(lost)
    }

    async fn release(&self, instance_id: &str, with_rows: bool) -> Result<ReleaseOutcome, StoreError> {
        // Stop counting the lease as held first: deliveries this sidecar commits meanwhile
        // are then left to the claim their notice triggers instead of the scheduler.
        let Some(epoch) = self.held.lock().remove(instance_id) else { return Ok(ReleaseOutcome::Lost) };
        let mut tx = self.pool.begin().await?;
        let mine =
            q("SELECT 1 FROM instances WHERE instance_id = $1 AND lease_owner = $2 AND lease_epoch = $3 FOR UPDATE")
                .bind(instance_id)
                .bind(&self.opts.owner)
                .bind(epoch)
                .fetch_optional(&mut *tx)
                .await?;
        if mine.is_none() {
            return Ok(ReleaseOutcome::Lost);
        }
        // A new statement, so a new snapshot: it sees every delivery committed before the lock.
        let busy: bool = q("SELECT EXISTS (SELECT 1 FROM inbox WHERE instance_id = $1)")
            .bind(instance_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if busy && !with_rows {
            drop(tx);
            self.held.lock().insert(instance_id.to_string(), epoch);
            return Ok(ReleaseOutcome::Busy);
        }
        q("UPDATE instances SET lease_owner = NULL, lease_until = NULL WHERE instance_id = $1")
            .bind(instance_id)
            .execute(&mut *tx)
            .await?;
        if busy {
            let now = q("SELECT duro_now_ms()").fetch_one(&mut *tx).await?.try_get::<i64, _>(0)?;
            q("SELECT pg_notify($1, $2)")
                .bind(self.channel())
                .bind(inbox_notice(now, &self.opts.owner, instance_id))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(ReleaseOutcome::Released)
    }

    async fn release_activities(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        {
            let mut held = self.held_activities.lock();
            for id in &ids {
                held.remove(id);
            }
        }
        let mut distinct = strings(
            q("UPDATE activities SET lease_owner = NULL, lease_until = NULL
               WHERE id IN (SELECT id FROM activities WHERE id = ANY($1) AND lease_owner = $2 ORDER BY id FOR UPDATE)
               RETURNING name")
            .bind(&ids)
            .bind(&self.opts.owner)
            .fetch_all(&self.pool)
            .await?,
        )?;
        distinct.sort();
        distinct.dedup();
        for name in distinct {
            self.notify(format!("a {name}")).await?;
        }
        Ok(())
    }

    fn activity_done(&self, id: i64) {
        self.held_activities.lock().remove(&id);
    }

    async fn release_all(&self) -> Result<(), StoreError> {
        self.held.lock().clear();
        self.held_activities.lock().clear();
        let mut tx = self.pool.begin().await?;
        let freed = strings(
            q("UPDATE instances SET lease_owner = NULL, lease_until = NULL
               WHERE instance_id IN (SELECT instance_id FROM instances WHERE lease_owner = $1 ORDER BY instance_id FOR UPDATE)
               RETURNING instance_id")
            .bind(&self.opts.owner)
            .fetch_all(&mut *tx)
            .await?,
        )?;
        let activities = strings(
            q("UPDATE activities SET lease_owner = NULL, lease_until = NULL
               WHERE id IN (SELECT id FROM activities WHERE lease_owner = $1 ORDER BY id FOR UPDATE)
               RETURNING name")
            .bind(&self.opts.owner)
            .fetch_all(&mut *tx)
            .await?,
        )?;
        q("DELETE FROM sidecars WHERE id = $1").bind(&self.opts.owner).execute(&mut *tx).await?;
        q("UPDATE hub_leases SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1")
            .bind(&self.opts.owner)
            .execute(&mut *tx)
            .await?;
        // Wake the others for what was freed (delivered at commit). Visible-now is enough:
        // a claimer only takes instances with visible rows, and timers are found by polling.
        let now = q("SELECT duro_now_ms()").fetch_one(&mut *tx).await?.try_get::<i64, _>(0)?;
        let mut payloads: Vec<String> = freed.iter().map(|id| inbox_notice(now, &self.opts.owner, id)).collect();
        let mut names = activities;
        names.sort();
        names.dedup();
        payloads.extend(names.into_iter().map(|n| format!("a {n}")));
        for p in payloads {
            q("SELECT pg_notify($1, $2)").bind(self.channel()).bind(p).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn listen(&self) -> Result<mpsc::Receiver<Notice>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.channel()).await?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(async move {
            loop {
                let notice = match listener.try_recv().await {
                    Ok(Some(n)) => match parse_notice(n.payload()) {
                        Some(notice) => notice,
                        None => continue,
                    },
                    // The connection dropped and will be re-established: notices were missed.
                    Ok(None) => Notice::Missed,
                    Err(e) => {
                        tracing::warn!(error = %e, "listening for other sidecars' notices failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Notice::Missed
                    }
                };
                // A full channel means the engine is behind: it will claim anyway; say so once.
                match tx.try_send(notice) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let _ = tx.send(Notice::Missed).await;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        });
        Ok(rx)
    }

    async fn lead(&self, name: &str) -> Result<bool, StoreError> {
        let row = q("INSERT INTO hub_leases (name, lease_owner, lease_until, lease_epoch)
               VALUES ($1, $2, duro_now_ms() + $3, 1)
               ON CONFLICT (name) DO UPDATE SET lease_owner = $2, lease_until = duro_now_ms() + $3,
                   lease_epoch = hub_leases.lease_epoch + CASE WHEN hub_leases.lease_owner = $2 THEN 0 ELSE 1 END
               WHERE hub_leases.lease_owner = $2 OR hub_leases.lease_owner IS NULL
                   OR hub_leases.lease_until < duro_now_ms()
               RETURNING lease_epoch")
        .bind(name)
        .bind(&self.opts.owner)
        .bind(lease_ms(self))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn announce_status(&self, instance_id: &str) -> Result<(), StoreError> {
        self.notify(format!("s {instance_id}")).await
    }

    async fn announce_replaced(&self, instance_id: &str) -> Result<(), StoreError> {
        self.notify(format!("r {instance_id}")).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_unknown_payloads_are_ignored() {
        let p = inbox_notice(17, "node-a", "order 42");
        assert_eq!(
            parse_notice(&p),
            Some(Notice::Inbox { instance: "order 42".into(), visible_at_ms: 17, origin: "node-a".into() })
        );
        assert_eq!(parse_notice("a Charge"), Some(Notice::Activity { name: "Charge".into() }));
        assert_eq!(parse_notice("s x"), Some(Notice::Status { instance: "x".into() }));
        assert_eq!(parse_notice("r x"), Some(Notice::Replaced { instance: "x".into() }));
        assert_eq!(parse_notice("zzz"), None);
        assert_eq!(parse_notice("i notanumber a b"), None);
    }
}
