//! The reads of the [`Store`](super::Store) trait on PostgreSQL (and the readiness probe).

use super::*;

fn todo<T>() -> Result<T, StoreError> {
    Err(StoreError::Task("not implemented yet".into()))
}

pub(super) async fn load_instance(_s: &PgStore, _id: &str) -> Result<Option<InstanceRecord>, StoreError> {
    todo()
}
pub(super) async fn load_history(_s: &PgStore, _id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
    todo()
}
pub(super) async fn query_instances(_s: &PgStore, _f: &InstanceFilter) -> Result<Vec<InstanceRecord>, StoreError> {
    todo()
}
pub(super) async fn list_completed_ids(_s: &PgStore, _f: &CompletedFilter) -> Result<Vec<(i64, String)>, StoreError> {
    todo()
}
pub(super) async fn count_by_status(_s: &PgStore) -> Result<Vec<(OrchestrationStatus, u64)>, StoreError> {
    todo()
}
pub(super) async fn load_events(_s: &PgStore, _id: &str, _ids: &[i64]) -> Result<Vec<(i64, HistoryEvent)>, StoreError> {
    todo()
}
pub(super) async fn load_inbox(_s: &PgStore, _id: &str) -> Result<InboxSnapshot, StoreError> {
    todo()
}
pub(super) async fn recover(_s: &PgStore) -> Result<Recovered, StoreError> {
    todo()
}
pub(super) async fn probe(_s: &PgStore) -> Result<(), StoreError> {
    todo()
}
pub(super) async fn gauges(_s: &PgStore, _now: i64) -> Result<StoreGauges, StoreError> {
    todo()
}
