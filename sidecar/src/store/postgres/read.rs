//! The reads of the [`Store`](super::Store) trait on PostgreSQL (and the readiness probe).
//!
//! Single-statement reads run on the pool (each statement is one snapshot); reads that
//! must agree across statements run in one transaction: `recover` in a REPEATABLE READ
//! snapshot, `load_inbox` under its instance's row lock (see there).

use duro_proto::ActivityRequest;
use prost::Message as _;
use sqlx_postgres::PgConnection;

use super::*;
use crate::core::Priority;
use crate::store::codec::decode_event;

/// A bound value of a [`DynQuery`].
enum Value {
    Int(i64),
    Text(String),
    Ints(Vec<i32>),
}

/// A query assembled from optional filters: SQL text with `$n` placeholders and their
/// values, in order.
struct DynQuery {
    sql: String,
    values: Vec<Value>,
}

impl DynQuery {
    fn new(sql: impl Into<String>) -> DynQuery {
        DynQuery { sql: sql.into(), values: Vec::new() }
    }

    /// Appends `sql`, whose one `?` becomes the next placeholder, bound to `value`.
    fn push(&mut self, sql: &str, value: Value) -> &mut Self {
        self.values.push(value);
        self.sql.push_str(&sql.replacen('?', &format!("${}", self.values.len()), 1));
        self
    }

    /// Appends ` AND <column> = ANY(...)` when any statuses are given.
    fn push_statuses(&mut self, column: &str, statuses: &[OrchestrationStatus]) -> &mut Self {
        if statuses.is_empty() {
            return self;
        }
        let codes = statuses.iter().map(|s| *s as i32).collect();
        self.push(&format!(" AND {column} = ANY(?)"), Value::Ints(codes))
    }

    async fn rows(&self, conn: &mut PgConnection) -> Result<Vec<PgRow>, StoreError> {
        let mut query = q(&self.sql);
        for v in &self.values {
            query = match v {
                Value::Int(i) => query.bind(*i),
                Value::Text(t) => query.bind(t.as_str()),
                Value::Ints(v) => query.bind(v.as_slice()),
            };
        }
        Ok(query.fetch_all(&mut *conn).await?)
    }
}

pub(super) async fn load_instance(s: &PgStore, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = $1");
    let row = q(&sql).bind(id).fetch_optional(&s.pool).await?;
    row.as_ref().map(instance_from_row).transpose()
}

pub(super) async fn load_history(s: &PgStore, id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
    let mut conn = s.pool.acquire().await?;
    history_of(&mut conn, id).await
}

/// An instance's history in order.
pub(super) async fn history_of(conn: &mut PgConnection, id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
    let rows =
        q("SELECT event FROM history WHERE instance_id = $1 ORDER BY seq").bind(id).fetch_all(&mut *conn).await?;
    rows.iter().map(|r| decode_event(&r.try_get::<Vec<u8>, _>(0)?)).collect()
}

pub(super) async fn query_instances(s: &PgStore, f: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
    let mut q = DynQuery::new(format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE true"));
    q.push_statuses("status", &f.statuses);
    if let Some(from) = f.created_from_ms {
        q.push(" AND created_at >= ?", Value::Int(from));
    }
    if let Some(to) = f.created_to_ms {
        q.push(" AND created_at < ?", Value::Int(to));
    }
    if let Some(prefix) = &f.instance_id_prefix {
        // Range scan on the primary key (ids compare byte-wise: COLLATE "C"):
        // [prefix, prefix + U+10FFFF).
        q.push(" AND instance_id >= ?", Value::Text(prefix.clone()));
        q.push(" AND instance_id < ?", Value::Text(format!("{prefix}\u{10FFFF}")));
    }
    if let Some(name) = &f.name {
        q.push(" AND name = ?", Value::Text(name.clone()));
    }
    let limit = Value::Int(i64::from(f.page_size.max(1)));
    match &f.order {
        QueryOrder::InstanceId => {
            if let Some(after) = &f.after_instance_id {
                q.push(" AND instance_id > ?", Value::Text(after.clone()));
            }
            q.push(" ORDER BY instance_id LIMIT ?", limit);
        }
        QueryOrder::NewestFirst { before } => {
            if let Some((t, id)) = before {
                q.push(" AND (created_at, instance_id) < (?", Value::Int(*t));
                q.push(", ?)", Value::Text(id.clone()));
            }
            q.push(" ORDER BY created_at DESC, instance_id DESC LIMIT ?", limit);
        }
    }
    let mut conn = s.pool.acquire().await?;
    q.rows(&mut conn).await?.iter().map(instance_from_row).collect()
}

pub(super) async fn list_completed_ids(s: &PgStore, f: &CompletedFilter) -> Result<Vec<(i64, String)>, StoreError> {
    let mut q = DynQuery::new("SELECT completed_at, instance_id FROM instances WHERE completed_at IS NOT NULL");
    q.push_statuses("status", &f.statuses);
    if let Some(from) = f.completed_from_ms {
        q.push(" AND completed_at >= ?", Value::Int(from));
    }
    if let Some(to) = f.completed_to_ms {
        q.push(" AND completed_at < ?", Value::Int(to));
    }
    if let Some((t, id)) = &f.after {
        q.push(" AND (completed_at, instance_id) > (?", Value::Int(*t));
        q.push(", ?)", Value::Text(id.clone()));
    }
    q.push(" ORDER BY completed_at, instance_id LIMIT ?", Value::Int(i64::from(f.page_size.max(1))));
    let mut conn = s.pool.acquire().await?;
    let rows = q.rows(&mut conn).await?;
    rows.iter().map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?))).collect()
}

pub(super) async fn count_by_status(s: &PgStore) -> Result<Vec<(OrchestrationStatus, u64)>, StoreError> {
    let rows = q("SELECT status, count(*) FROM instances GROUP BY status ORDER BY status").fetch_all(&s.pool).await?;
    statuses_counted(&rows)
}

fn statuses_counted(rows: &[PgRow]) -> Result<Vec<(OrchestrationStatus, u64)>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (status, n): (i32, i64) = (r.try_get(0)?, r.try_get(1)?);
        if let Ok(status) = OrchestrationStatus::try_from(status) {
            out.push((status, u64::try_from(n).unwrap_or_default()));
        }
    }
    Ok(out)
}

pub(super) async fn load_events(s: &PgStore, id: &str, ids: &[i64]) -> Result<Vec<(i64, HistoryEvent)>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = q("SELECT id, event FROM inbox WHERE instance_id = $1 AND id = ANY($2)")
        .bind(id)
        .bind(ids)
        .fetch_all(&s.pool)
        .await?;
    rows.iter().map(|r| Ok((r.try_get::<i64, _>(0)?, decode_event(&r.try_get::<Vec<u8>, _>(1)?)?))).collect()
}

const INBOX_COLUMNS: &str = "i.id, i.instance_id, i.execution_id, i.priority, i.visible_at, i.event, \
     s.name, s.version, s.status FROM inbox i JOIN instances s ON s.instance_id = i.instance_id";

fn delivered_from_row(row: &PgRow) -> Result<Delivered, StoreError> {
    Ok(Delivered {
        inbox_id: row.try_get("id")?,
        instance_id: row.try_get("instance_id")?,
        execution_id: row.try_get("execution_id")?,
        priority: Priority::from_i64(i64::from(row.try_get::<i32, _>("priority")?)),
        visible_at_ms: row.try_get("visible_at")?,
        event: decode_event(&row.try_get::<Vec<u8>, _>("event")?)?,
        target: Target {
            name: row.try_get("name")?,
            version: row.try_get("version")?,
            status: status_from_i32(row.try_get("status")?),
        },
    })
}

/// One instance's inbox rows and the watermark (the newest inbox id handed out).
///
/// The scheduler (`Scheduler::resync`) trusts that every row *of this instance* with an id
/// up to the watermark is in the snapshot or gone for good: it drops the others from memory
/// and ignores later registrations of them. With concurrent writers an identity value can
/// commit out of order, so reading `max(id)` alone would be unsafe. It is safe here because
/// every transaction that inserts or deletes inbox rows of an instance holds the instance's
/// row lock (`FOR UPDATE`), and this read takes it `FOR SHARE` first: no such transaction
/// is in flight while the rows and the watermark are read, so every id of this instance up
/// to the watermark was committed (and visible) or rolled back. For an instance without a
/// row, a creation in flight is awaited through its advisory lock instead
/// ([`super::write::CREATE_LOCK`]). Rows of other instances may be in flight below the
/// watermark; the scheduler does not apply it to them.
pub(super) async fn load_inbox(s: &PgStore, id: &str) -> Result<InboxSnapshot, StoreError> {
    let mut tx = s.pool.begin().await?;
    let exists =
        q("SELECT 1 FROM instances WHERE instance_id = $1 FOR SHARE").bind(id).fetch_optional(&mut *tx).await?;
    if exists.is_none() {
        q("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))").bind(id).execute(&mut *tx).await?;
    }
    let sql = format!("SELECT {INBOX_COLUMNS} WHERE i.instance_id = $1 ORDER BY i.id");
    let rows = q(&sql).bind(id).fetch_all(&mut *tx).await?;
    let rows = rows.iter().map(delivered_from_row).collect::<Result<_, _>>()?;
    let watermark = super::write::inbox_watermark(&mut tx).await?;
    tx.commit().await?;
    Ok(InboxSnapshot { rows, watermark })
}

pub(super) async fn recover(s: &PgStore) -> Result<Recovered, StoreError> {
    // One snapshot for the inbox, the activities and the counts.
    let mut tx = s.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let inbox = q(&format!("SELECT {INBOX_COLUMNS} ORDER BY i.id"))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(delivered_from_row)
        .collect::<Result<_, _>>()?;
    let activities = q("SELECT id, request, progress FROM activities ORDER BY id")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            let request = ActivityRequest::decode(&r.try_get::<Vec<u8>, _>("request")?[..])
                .map_err(|e| StoreError::Corrupt(format!("activity request: {e}")))?;
            Ok(QueuedActivity { id: r.try_get("id")?, request, progress: r.try_get("progress")? })
        })
        .collect::<Result<_, StoreError>>()?;
    let attempts = q("SELECT 'i' AS kind, instance_id AS id, 0::bigint AS n, delivery_attempts FROM instances \
                      WHERE delivery_attempts > 0 \
                      UNION ALL SELECT 'a', '', id, delivery_attempts FROM activities WHERE delivery_attempts > 0")
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| {
        let n = u32::try_from(r.try_get::<i32, _>(3)?).unwrap_or_default();
        Ok(if r.try_get::<String, _>(0)? == "i" {
            Attempts::Instance(r.try_get(1)?, n)
        } else {
            Attempts::Activity(r.try_get(2)?, n)
        })
    })
    .collect::<Result<_, StoreError>>()?;
    tx.commit().await?;
    Ok(Recovered { inbox, activities, attempts })
}

/// A real write, committed like any other: it fails while the database cannot commit (read
/// only, disk full, unreachable).
pub(super) async fn probe(s: &PgStore) -> Result<(), StoreError> {
    let mut tx = s.pool.begin().await?;
    q("INSERT INTO hub_leases (name) VALUES ('probe') \
       ON CONFLICT (name) DO UPDATE SET lease_epoch = hub_leases.lease_epoch")
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn gauges(s: &PgStore, now_ms: i64) -> Result<StoreGauges, StoreError> {
    let counts = q("SELECT status, count(*) FROM instances GROUP BY status ORDER BY status").fetch_all(&s.pool).await?;
    let inbox = q("SELECT count(*) FILTER (WHERE visible_at <= $1), count(*) FILTER (WHERE visible_at > $1), \
                   min(visible_at) FILTER (WHERE visible_at <= $1), (SELECT count(*) FROM activities) FROM inbox")
    .bind(now_ms)
    .fetch_one(&s.pool)
    .await?;
    let count = |i: usize| -> Result<u64, StoreError> { Ok(u64::try_from(inbox.try_get::<i64, _>(i)?).unwrap_or(0)) };
    Ok(StoreGauges {
        instances_by_status: statuses_counted(&counts)?,
        inbox_ready: count(0)?,
        inbox_waiting: count(1)?,
        oldest_ready_ms: inbox.try_get(2)?,
        activities: count(3)?,
    })
}
