//! The writes of the [`Store`](super::Store) trait on PostgreSQL, one transaction each.

use super::*;

fn todo<T>() -> Result<T, StoreError> {
    Err(StoreError::Task("not implemented yet".into()))
}

pub(super) async fn create_instance(
    _s: &PgStore,
    _new: NewInstance,
    _reuse: IdReuse,
) -> Result<CreateResult, StoreError> {
    todo()
}
pub(super) async fn enqueue(_s: &PgStore, _m: Message) -> Result<Option<Delivered>, StoreError> {
    todo()
}
pub(super) async fn commit_turn(_s: &PgStore, _c: TurnCommit) -> Result<CommitResult, StoreError> {
    todo()
}
pub(super) async fn complete_activity(_s: &PgStore, _id: i64, _m: Message) -> Result<Option<Delivered>, StoreError> {
    todo()
}
pub(super) async fn record_attempts(_s: &PgStore, _c: Vec<Attempts>) -> Result<(), StoreError> {
    todo()
}
pub(super) async fn save_activity_progress(_s: &PgStore, _id: i64, _p: String) -> Result<bool, StoreError> {
    todo()
}
pub(super) async fn purge(_s: &PgStore, _sel: PurgeSelection, _r: bool) -> Result<u32, StoreError> {
    todo()
}
pub(super) async fn restart(
    _s: &PgStore,
    _id: &str,
    _n: Option<String>,
    _now: i64,
) -> Result<RestartResult, StoreError> {
    todo()
}
pub(super) async fn rewind(_s: &PgStore, _id: &str, _r: Option<String>, _now: i64) -> Result<RewindResult, StoreError> {
    todo()
}
