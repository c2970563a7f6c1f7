//! The entity RPCs of `TaskHubSidecarService`: validation and mapping to the engine's
//! entity API ([`crate::engine::entities`]). No entity logic lives here.

use duro_proto::*;
use tonic::{Response, Status};

use super::{DEFAULT_PAGE, MAX_PAGE, TOKEN_PREFIX};
use crate::core::time::{from_ms, to_ms};
use crate::engine::Engine;
use crate::store::{EntityRecord, EntitySelection};

/// The `GetWorkItems` request header by which a worker asks for the older entity work item,
/// `entityRequest` (`EntityBatchRequest`), instead of `entityRequestV2`: value `v1`. The
/// protocol has no field for this choice (no `WorkerCapability` names either shape, and the
/// official SDKs accept both), so the default stays `entityRequestV2` and this header is the
/// way to opt in per stream.
pub(super) const ENTITY_WORK_ITEMS_HEADER: &str = "x-duro-entity-work-items";

/// Whether a `GetWorkItems` call asked for `entityRequest` work items.
pub(super) fn wants_v1(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get(ENTITY_WORK_ITEMS_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("v1"))
}

/// Rewrites an `entityRequestV2` work item as the older `entityRequest`: the same entity,
/// state and operations, in order (so results align with operations either way; a
/// worker's `CompleteEntityTask` is read the same for both shapes). Other items pass as they are.
pub(super) fn to_v1(item: WorkItem) -> WorkItem {
    use history_event::EventType;
    let WorkItem { request: Some(work_item::Request::EntityRequestV2(r)), completion_token } = item else {
        return item;
    };
    let operations = r
        .operation_requests
        .into_iter()
        .map(|e| match e.event_type {
            Some(EventType::EntityOperationSignaled(s)) => OperationRequest {
                operation: s.operation,
                request_id: s.request_id,
                input: s.input,
                trace_context: None,
            },
            Some(EventType::EntityOperationCalled(c)) => OperationRequest {
                operation: c.operation,
                request_id: c.request_id,
                input: c.input,
                trace_context: None,
            },
            // Only operations are batched; anything else keeps its place empty.
            _ => OperationRequest::default(),
        })
        .collect();
    WorkItem {
        request: Some(work_item::Request::EntityRequest(EntityBatchRequest {
            instance_id: r.instance_id,
            entity_state: r.entity_state,
            operations,
            properties: Default::default(),
        })),
        completion_token,
    }
}

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
    fn v1_work_items_carry_the_same_operations_in_order() {
        use history_event::EventType;
        let signal = crate::core::entity::signal_event("r1", "add", Some("1".into()), None, 5);
        let call = crate::core::events::sidecar_event(
            6,
            EventType::EntityOperationCalled(EntityOperationCalledEvent {
                request_id: "r2".into(),
                operation: "get".into(),
                parent_instance_id: Some("o".into()),
                ..Default::default()
            }),
        );
        let v2 = WorkItem {
            request: Some(work_item::Request::EntityRequestV2(EntityRequest {
                instance_id: "@counter@k".into(),
                execution_id: String::new(),
                entity_state: Some("3".into()),
                operation_requests: vec![signal, call],
            })),
            completion_token: "t".into(),
        };
        let v1 = to_v1(v2);
        assert_eq!(v1.completion_token, "t");
        let Some(work_item::Request::EntityRequest(b)) = v1.request else { panic!("not an entityRequest: {v1:?}") };
        assert_eq!((b.instance_id.as_str(), b.entity_state.as_deref()), ("@counter@k", Some("3")));
        let ops: Vec<_> =
            b.operations.iter().map(|o| (o.operation.as_str(), o.request_id.as_str(), o.input.as_deref())).collect();
        assert_eq!(ops, [("add", "r1", Some("1")), ("get", "r2", None)]);
        let ping =
            WorkItem { request: Some(work_item::Request::HealthPing(HealthPing {})), completion_token: String::new() };
        assert_eq!(to_v1(ping.clone()), ping, "other items pass unchanged");
    }

    #[test]
    fn only_the_v1_header_value_selects_v1() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert!(!wants_v1(&m));
        m.insert(ENTITY_WORK_ITEMS_HEADER, "v2".parse().expect("ascii"));
        assert!(!wants_v1(&m));
        m.insert(ENTITY_WORK_ITEMS_HEADER, "V1".parse().expect("ascii"));
        assert!(wants_v1(&m));
    }

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
