//! The entity methods of the [`Store`](super::Store) trait on PostgreSQL.

use super::*;

fn todo<T>() -> Result<T, StoreError> {
    Err(StoreError::Task("not implemented yet".into()))
}

pub(super) async fn enqueue_entity(
    _s: &PgStore,
    _m: Vec<crate::core::entity::EntityMessage>,
    _now: i64,
) -> Result<Vec<QueuedEntityMessage>, StoreError> {
    todo()
}
pub(super) async fn commit_entity(_s: &PgStore, _c: EntityCommit) -> Result<EntityCommitResult, StoreError> {
    todo()
}
pub(super) async fn remove_empty_entities(_s: &PgStore, _ids: Vec<String>) -> Result<u32, StoreError> {
    todo()
}
pub(super) async fn query_entities(_s: &PgStore, _f: &EntitySelection) -> Result<Vec<EntityRecord>, StoreError> {
    todo()
}
pub(super) async fn recover_entities(_s: &PgStore) -> Result<Vec<RecoveredEntity>, StoreError> {
    todo()
}
