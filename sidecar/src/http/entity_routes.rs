//! Durable Functions' entity routes: `GET /entities/{name}/{key}` reads an entity's state,
//! `POST /entities/{name}/{key}?op=…` signals it, `GET /entities[/{name}]` lists entities.
//! Thin: the engine's entity API does the work.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{accepted, json_body, page_request, paged_response, read_body, time_param, Ctx};
use crate::core::entity::EntityId;
use crate::http::auth::Need;
use crate::http::json::{self, ApiError, ErrorCode};
use crate::store::{EntityRecord, EntitySelection};

fn entity_id(name: &str, key: &str) -> Result<String, ApiError> {
    EntityId::parse(&format!("@{name}@{key}"))
        .map(|id| id.to_string())
        .map_err(|_| ApiError::bad_request("the entity name must not be empty or contain '@' or control characters"))
}

/// `GET /entities/{entityName}/{entityKey}`: the entity's state as JSON, 404 without one.
pub(super) async fn get(ctx: &Ctx, name: &str, key: &str) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    let id = entity_id(name, key)?;
    match ctx.state.engine.get_entity(&id).await?.and_then(|r| r.state) {
        Some(state) => {
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], state).into_response())
        }
        None => Err(ApiError::new(ErrorCode::NotFound, format!("no entity '{id}' (or it has no state)"))),
    }
}

/// `POST /entities/{entityName}/{entityKey}?op={operation}`: queues a signal; 202.
pub(super) async fn signal(ctx: &Ctx, name: &str, key: &str, body: Body) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    let id = entity_id(name, key)?;
    let Some(op) = ctx.query.get("op").filter(|o| !o.is_empty()) else {
        return Err(ApiError::bad_request("the operation name is required: add ?op=<operation> to the URL"));
    };
    let bytes = read_body(ctx, body).await?;
    if !bytes.is_empty() {
        let media = ctx.header(header::CONTENT_TYPE.as_str()).and_then(|v| v.split(';').next()).map(str::trim);
        if !media.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "Only application/json request content is supported",
            ));
        }
    }
    let input = json_body(&bytes)?;
    let request_id = uuid::Uuid::new_v4().to_string();
    ctx.state.engine.signal_entity(&id, op.to_string(), input, request_id, None).await?;
    Ok(accepted())
}

#[derive(Serialize)]
struct EntityIdJson {
    name: String,
    key: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntityJson {
    entity_id: EntityIdJson,
    last_operation_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<serde_json::Value>,
}

fn entity_json(r: EntityRecord, fetch_state: bool) -> EntityJson {
    let (name, key) = match EntityId::parse(&r.entity_id) {
        Ok(id) => (id.name, id.key),
        Err(_) => (String::new(), r.entity_id.clone()),
    };
    let state = if fetch_state {
        r.state.map(|s| serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s)))
    } else {
        None
    };
    EntityJson { entity_id: EntityIdJson { name, key }, last_operation_time: json::time_secs(r.modified_at_ms), state }
}

/// `GET /entities[/{entityName}]?fetchState=&lastOperationTimeFrom=&lastOperationTimeTo=&top=`:
/// entities with state, one page; more pages via the `x-ms-continuation-token` header.
pub(super) async fn list(ctx: &Ctx, name: Option<&str>) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    let (page, after) = page_request(ctx)?;
    let prefix = match name {
        // `@name@` (the id with an empty key) is the prefix of every key.
        Some(n) => Some(entity_id(n, "")?),
        None => None,
    };
    let selection = EntitySelection {
        id_prefix: prefix,
        id: None,
        modified_from_ms: time_param(&ctx.query, "lastOperationTimeFrom")?,
        modified_to_ms: time_param(&ctx.query, "lastOperationTimeTo")?,
        include_transient: false,
        // One row more than the page says whether another page follows.
        page_size: page.saturating_add(1),
        after_id: after,
    };
    let records = ctx.state.engine.query_entities(&selection).await?;
    let fetch_state = ctx.query.flag("fetchState", false);
    Ok(paged_response(records, page, |r| &r.entity_id, |r| entity_json(r, fetch_state)))
}
