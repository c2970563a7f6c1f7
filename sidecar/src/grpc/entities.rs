//! The entity RPCs of `TaskHubSidecarService`: validation and mapping to the engine's
//! entity API ([`crate::engine::entities`]). No entity logic lives here.

use duro_proto::*;
use tonic::{Response, Status};

use super::{DEFAULT_PAGE, MAX_PAGE, TOKEN_PREFIX};
use crate::core::time::{from_ms, to_ms};
use crate::engine::Engine;
use crate::store::{EntityRecord, EntitySelection};

fn metadata(r: EntityRecord, include_state: bool) -> EntityMetadata {
    EntityMetadata {
        instance_id: r.entity_id,
        last_modified_time: Some(from_ms(r.modified_at_ms)),
        backlog_queue_size: i32::try_from(r.backlog).unwrap_or(i32::MAX),
        locked_by: r.lock_owner,
        serialized_state: if include_state { r.state } else { None },
    }
}

fn page_size(requested: Option<i32>) -> u32 {
    match requested {
        Some(n) if n > 0 => u32::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
        _ => DEFAULT_PAGE,
    }
}

fn cursor(token: Option<String>) -> Result<Option<String>, Status> {
    match token.filter(|t| !t.is_empty() && t != "0") {
        None => Ok(None),
        Some(t) => t.strip_prefix(TOKEN_PREFIX).map(|s| Some(s.to_string())).ok_or_else(|| {
            Status::invalid_argument(
                "continuationToken was not issued by this sidecar; pass the one from the last page",
            )
        }),
    }
}

/// An id prefix as stored: `@` first and the entity name part in lower case (entity names
/// are case-insensitive).
fn normalize_prefix(prefix: &str) -> String {
    let rest = prefix.strip_prefix('@').unwrap_or(prefix);
    match rest.split_once('@') {
        Some((name, key)) => format!("@{}@{key}", name.to_lowercase()),
        None => format!("@{}", rest.to_lowercase()),
    }
}

pub(super) async fn signal(engine: &Engine, r: SignalEntityRequest) -> Result<Response<SignalEntityResponse>, Status> {
    let request_id = if r.request_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { r.request_id };
    let scheduled = r.scheduled_time.as_ref().map(to_ms);
    engine.signal_entity(&r.instance_id, r.name, r.input, request_id, scheduled).await?;
    Ok(Response::new(SignalEntityResponse {}))
}

pub(super) async fn get(engine: &Engine, r: GetEntityRequest) -> Result<Response<GetEntityResponse>, Status> {
    let found = engine.get_entity(&r.instance_id).await?;
    // An entity exists while it has state (Durable Functions' rule); a row that only
    // holds a lock or queued requests is transient.
    Ok(Response::new(match found.filter(|e| e.state.is_some()) {
        Some(e) => GetEntityResponse { exists: true, entity: Some(metadata(e, r.include_state)) },
        None => GetEntityResponse { exists: false, entity: None },
    }))
}

pub(super) async fn query(engine: &Engine, r: QueryEntitiesRequest) -> Result<Response<QueryEntitiesResponse>, Status> {
    let q = r.query.unwrap_or_default();
    let size = page_size(q.page_size);
    let selection = EntitySelection {
        id_prefix: q.instance_id_starts_with.as_deref().filter(|p| !p.is_empty()).map(normalize_prefix),
        id: None,
        modified_from_ms: q.last_modified_from.as_ref().map(to_ms),
        modified_to_ms: q.last_modified_to.as_ref().map(to_ms),
        include_transient: q.include_transient,
        page_size: size,
        after_id: cursor(q.continuation_token)?,
    };
    let page = engine.query_entities(&selection).await?;
    let next =
        if page.len() as u32 >= size { page.last().map(|e| format!("{TOKEN_PREFIX}{}", e.entity_id)) } else { None };
    Ok(Response::new(QueryEntitiesResponse {
        entities: page.into_iter().map(|e| metadata(e, q.include_state)).collect(),
        continuation_token: next,
    }))
}

pub(super) async fn clean(
    engine: &Engine,
    r: CleanEntityStorageRequest,
) -> Result<Response<CleanEntityStorageResponse>, Status> {
    let after = cursor(r.continuation_token)?;
    let (removed, released, next) =
        engine.clean_entities(after, r.remove_empty_entities, r.release_orphaned_locks, DEFAULT_PAGE).await?;
    Ok(Response::new(CleanEntityStorageResponse {
        continuation_token: next.map(|n| format!("{TOKEN_PREFIX}{n}")),
        empty_entities_removed: i32::try_from(removed).unwrap_or(i32::MAX),
        orphaned_locks_released: i32::try_from(released).unwrap_or(i32::MAX),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalized_like_stored_ids() {
        assert_eq!(normalize_prefix("@Counter@K"), "@counter@K");
        assert_eq!(normalize_prefix("Counter"), "@counter");
        assert_eq!(normalize_prefix("@"), "@");
    }

    #[test]
    fn cursors_round_trip_and_foreign_tokens_are_refused() {
        assert_eq!(cursor(None).ok(), Some(None));
        assert_eq!(cursor(Some("0".into())).ok(), Some(None));
        assert_eq!(cursor(Some(format!("{TOKEN_PREFIX}@a@1"))).ok(), Some(Some("@a@1".into())));
        assert!(cursor(Some("garbage".into())).is_err());
    }
}
