//! Routing and handlers of the management API. Each handler authorizes, parses, makes one
//! or two engine calls and shapes the answer; errors are [`ApiError`]s, turned into JSON.
//!
//! Routing is done here rather than by axum's router so that it matches Durable Functions:
//! case-insensitive controller and operation segments, trailing slashes ignored, a wrong
//! method answering 404, and percent-decoding errors answering 400 instead of a rejection.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use duro_proto::OrchestrationStatus;
use futures::StreamExt as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;

use super::auth::{authorize, Grant, Need};
use super::json::{self, ApiError, ErrorCode, StatusObject};
use super::signed_links::{LinkOp, Ops, EXPIRY_PARAM, OPS_PARAM, SIGNATURE_PARAM};
use super::{openapi, ApiState, Query, BASE_PATH};
use crate::ambient::now_ms;
use crate::core::{NewInstance, StartSpec};
use crate::engine::{is_finished, EngineError};
use crate::store::{CreateResult, IdReuse, InstanceFilter, InstanceRecord, PurgeSelection};

/// Request/response header carrying the list continuation token.
pub const CONTINUATION_HEADER: &str = "x-ms-continuation-token";
/// Default and largest page of the list route.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Longest accepted instance id on start (Durable Functions' limit, in characters).
const MAX_INSTANCE_ID_CHARS: usize = 256;
/// Longest lifetime a caller may ask for a signed link.
const MAX_LINK_TTL_SECS: u64 = 366 * 24 * 3600;
/// `Retry-After` of the check-status response and of a running instance's status.
const RETRY_AFTER_START: &str = "10";
const RETRY_AFTER_STATUS: &str = "5";

/// Everything but the unreserved characters is escaped in generated URLs.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

#[path = "entity_routes.rs"]
mod entity_routes;

// ----- routing ----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    OpenApi,
    Start { function: String, instance_id: Option<String> },
    Instances,
    Instance(String),
    Op { instance_id: String, op: Op },
    EntityList(Option<String>),
    Entity { name: String, key: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    RaiseEvent(String),
    Terminate,
    Suspend,
    Resume,
    Rewind,
    Restart,
    SignedLinks,
}

fn is(segment: &str, name: &str) -> bool {
    segment.eq_ignore_ascii_case(name)
}

/// The route of a path; `Ok(None)` is "no such route" (404).
fn route(path: &str) -> Result<Option<Route>, ApiError> {
    let Some(head) = path.get(..BASE_PATH.len()) else { return Ok(None) };
    if !head.eq_ignore_ascii_case(BASE_PATH) {
        return Ok(None);
    }
    let rest = &path[BASE_PATH.len()..];
    if !rest.is_empty() && !rest.starts_with('/') {
        return Ok(None);
    }
    let rest = rest.trim_matches('/');
    let mut segs = Vec::new();
    if !rest.is_empty() {
        for raw in rest.split('/') {
            let s = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| ApiError::bad_request("the request path is not valid UTF-8 after percent-decoding"))?;
            if s.is_empty() {
                return Ok(None);
            }
            segs.push(s.into_owned());
        }
    }
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    Ok(Some(match s.as_slice() {
        [o] if is(o, "openapi.json") => Route::OpenApi,
        [c, f] if is(c, "orchestrators") => Route::Start { function: f.to_string(), instance_id: None },
        [c, f, id] if is(c, "orchestrators") => {
            Route::Start { function: f.to_string(), instance_id: Some(id.to_string()) }
        }
        [c] if is(c, "instances") => Route::Instances,
        [c, id] if is(c, "instances") => Route::Instance(id.to_string()),
        [c, id, op] if is(c, "instances") => {
            let op = match op.to_ascii_lowercase().as_str() {
                "terminate" => Op::Terminate,
                "suspend" => Op::Suspend,
                "resume" => Op::Resume,
                "rewind" => Op::Rewind,
                "restart" => Op::Restart,
                "signedlinks" => Op::SignedLinks,
                _ => return Ok(None),
            };
            Route::Op { instance_id: id.to_string(), op }
        }
        [c, id, op, name] if is(c, "instances") && is(op, "raiseEvent") => {
            Route::Op { instance_id: id.to_string(), op: Op::RaiseEvent(name.to_string()) }
        }
        [c] if is(c, "entities") => Route::EntityList(None),
        [c, name] if is(c, "entities") => Route::EntityList(Some(name.to_string())),
        [c, name, key] if is(c, "entities") => Route::Entity { name: name.to_string(), key: key.to_string() },
        _ => return Ok(None),
    }))
}

/// One request's context.
struct Ctx {
    state: Arc<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    query: Query,
    /// The dashboard already authenticated the caller (its session): no key is asked for.
    operator: bool,
}

pub(crate) async fn dispatch(state: Arc<ApiState>, req: Request<Body>) -> Response {
    dispatch_as(state, req, false).await
}

/// The same routes and handlers for a caller the dashboard has authenticated with its own
/// session (`crate::dashboard`): its actions take exactly the API's paths and get the API's
/// answers and errors.
pub(crate) async fn dispatch_as_operator(state: Arc<ApiState>, req: Request<Body>) -> Response {
    dispatch_as(state, req, true).await
}

async fn dispatch_as(state: Arc<ApiState>, req: Request<Body>, operator: bool) -> Response {
    let (parts, body) = req.into_parts();
    let route = match route(parts.uri.path()) {
        Ok(Some(r)) => r,
        Ok(None) => return route_not_found().into_response(),
        Err(e) => return e.into_response(),
    };
    let ctx = Ctx { state, query: Query::parse(parts.uri.query()), uri: parts.uri, headers: parts.headers, operator };
    let m = parts.method;
    let result = match route {
        Route::OpenApi if m == Method::GET => Ok(openapi_document()),
        Route::Start { function, instance_id } if m == Method::POST => start(&ctx, function, instance_id, body).await,
        Route::Instances if m == Method::GET => list(&ctx).await,
        Route::Instances if m == Method::DELETE => purge_by_filter(&ctx).await,
        Route::Instance(id) if m == Method::GET => status(&ctx, &id).await,
        Route::Instance(id) if m == Method::DELETE => purge_one(&ctx, &id).await,
        Route::Op { instance_id, op } if m == Method::POST => match op {
            Op::RaiseEvent(name) => raise_event(&ctx, &instance_id, &name, body).await,
            Op::Terminate => terminate(&ctx, &instance_id).await,
            Op::Suspend => suspend_or_resume(&ctx, &instance_id, true).await,
            Op::Resume => suspend_or_resume(&ctx, &instance_id, false).await,
            Op::Rewind => rewind(&ctx, &instance_id).await,
            Op::Restart => restart(&ctx, &instance_id).await,
            Op::SignedLinks => create_signed_links(&ctx, &instance_id).await,
        },
        Route::EntityList(name) if m == Method::GET => entity_routes::list(&ctx, name.as_deref()).await,
        Route::Entity { name, key } if m == Method::GET => entity_routes::get(&ctx, &name, &key).await,
        Route::Entity { name, key } if m == Method::POST => entity_routes::signal(&ctx, &name, &key, body).await,
        _ => Err(route_not_found()),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn route_not_found() -> ApiError {
    ApiError::new(
        ErrorCode::RouteNotFound,
        format!("no such route or method; the API is described at {BASE_PATH}/openapi.json"),
    )
}

// ----- request helpers ----------------------------------------------------------------------

fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

impl Ctx {
    fn authorize(&self, need: Need<'_>) -> Result<Grant, ApiError> {
        if self.operator {
            return Ok(Grant::Full);
        }
        authorize(self.state.key.as_ref(), &self.state.links, &self.headers, &self.query, need, now_secs())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
    }

    /// `scheme://host[:port]` (or the configured public URL) that generated links start with:
    /// the request's Host, forwarded headers only when trusted.
    fn origin(&self) -> String {
        let opts = &self.state.opts;
        if let Some(p) = &opts.public_url {
            return p.clone();
        }
        let first = |v: &str| v.split(',').next().unwrap_or_default().trim().to_string();
        let mut scheme = "http".to_string();
        let mut host = None;
        if opts.trust_forwarded {
            if let Some(p) = self.header("x-forwarded-proto").map(first) {
                if p.eq_ignore_ascii_case("https") || p.eq_ignore_ascii_case("http") {
                    scheme = p.to_ascii_lowercase();
                }
            }
            host = self.header("x-forwarded-host").map(first).filter(|h| valid_host(h));
        }
        let host = host
            .or_else(|| self.header(header::HOST.as_str()).map(str::to_string).filter(|h| valid_host(h)))
            .or_else(|| self.uri.authority().map(|a| a.to_string()).filter(|h| valid_host(h)))
            .unwrap_or_else(|| self.state.local_addr.to_string());
        format!("{scheme}://{host}")
    }

    fn base(&self) -> String {
        format!("{}{BASE_PATH}", self.origin())
    }

    /// The request's own URL (for `Location` of a running instance's status).
    fn request_url(&self) -> String {
        let pq = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or(self.uri.path());
        format!("{}{pq}", self.origin())
    }
}

/// Host header values we are willing to put into links (no injection into URLs or headers).
fn valid_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

fn payload_too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than the limit of {limit} bytes (--http-max-body-bytes)"),
    )
}

/// Reads the body up to the configured limit (413 beyond it, before reading when declared).
async fn read_body(ctx: &Ctx, body: Body) -> Result<Vec<u8>, ApiError> {
    let limit = ctx.state.opts.max_body_bytes;
    if let Some(len) = ctx.header(header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok()) {
        if len > limit as u64 {
            return Err(payload_too_large(limit));
        }
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    // A body trickled in too slowly is refused (the server's header timeout, times four).
    let deadline = tokio::time::Instant::now() + ctx.state.opts.header_timeout.saturating_mul(4);
    loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(n) => n,
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::RequestTimeout,
                    "the request body was not received in time; send it at once",
                ))
            }
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(payload_too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// An optional JSON body, kept as sent (trimmed); empty means no payload.
fn json_body(bytes: &[u8]) -> Result<Option<String>, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::new(ErrorCode::InvalidJson, "Invalid JSON content: the body is not UTF-8"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text).trim();
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("Invalid JSON content: {e}")))?;
    Ok(Some(text.to_string()))
}

fn from_status(s: tonic::Status) -> ApiError {
    ApiError::bad_request(s.message().to_string())
}

/// Durable Functions' rules for caller-chosen instance ids, plus the gRPC API's.
fn check_new_instance_id(id: &str) -> Result<(), ApiError> {
    if id.starts_with('@') {
        return Err(ApiError::bad_request("Orchestration instance ids must not start with @."));
    }
    if id.chars().any(|c| matches!(c, '/' | '\\' | '?' | '#') || c.is_control()) {
        return Err(ApiError::bad_request(
            "Orchestration instance ids must not contain /, \\, #, ?, or control characters.",
        ));
    }
    if id.chars().count() > MAX_INSTANCE_ID_CHARS {
        return Err(ApiError::bad_request(format!(
            "Instance ID lengths must not exceed {MAX_INSTANCE_ID_CHARS} characters."
        )));
    }
    crate::grpc::validate::instance_id(id).map_err(from_status)
}

/// A generated instance id: a GUID as 32 lowercase hex digits, as Durable Functions makes them.
fn new_instance_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn seconds_param(q: &Query, name: &str) -> Result<Option<f64>, ApiError> {
    let Some(raw) = q.get(name) else { return Ok(None) };
    match raw.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
        _ => Err(ApiError::bad_request(format!("'{name}' must be a non-negative number of seconds, not '{raw}'"))),
    }
}

/// `timeout` + `pollingInterval`: wait for completion (capped by --http-max-wait-seconds).
fn wait_request(ctx: &Ctx) -> Result<Option<Duration>, ApiError> {
    let timeout = seconds_param(&ctx.query, "timeout")?;
    let interval = seconds_param(&ctx.query, "pollingInterval")?;
    let (Some(timeout), Some(interval)) = (timeout, interval) else { return Ok(None) };
    if interval > timeout {
        return Err(ApiError::bad_request(format!(
            "Total timeout {timeout} should be bigger than retry timeout {interval}"
        )));
    }
    let cap = ctx.state.opts.max_wait;
    Ok(Some(Duration::try_from_secs_f64(timeout).map(|d| d.min(cap)).unwrap_or(cap)))
}

#[derive(Debug, Clone, Copy)]
struct LinkRequest {
    ops: Ops,
    ttl_secs: u64,
}

/// Signed links, which operations, for how long: on an explicit link route, with
/// `signedLinks=true`, and always when a system key is configured (so the key never appears
/// in a response) unless the operator asked for exact Durable Functions links
/// (`--http-exact-links`).
fn link_request(ctx: &Ctx, always: bool) -> Result<Option<LinkRequest>, ApiError> {
    let by_default = ctx.state.opts.system_key.is_some() && !ctx.state.opts.exact_links;
    if !always && !by_default && !ctx.query.flag("signedLinks", false) {
        return Ok(None);
    }
    let ops = match ctx.query.get("signedLinkOps") {
        Some(list) => Ops::parse(list).map_err(ApiError::bad_request)?,
        None => Ops::STATUS,
    };
    let ttl_secs = match ctx.query.get("signedLinkTtl") {
        None => ctx.state.opts.link_ttl.as_secs().max(1),
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(v) if (1..=MAX_LINK_TTL_SECS).contains(&v) => v,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "'signedLinkTtl' must be a whole number of seconds from 1 to {MAX_LINK_TTL_SECS}, not '{raw}'"
                )))
            }
        },
    };
    Ok(Some(LinkRequest { ops, ttl_secs }))
}

async fn load(ctx: &Ctx, id: &str) -> Result<InstanceRecord, ApiError> {
    ctx.state.engine.get_instance(id).await?.ok_or_else(|| ApiError::not_found_instance(id))
}

fn gone(r: &InstanceRecord) -> ApiError {
    ApiError::new(
        ErrorCode::Gone,
        format!("instance '{}' has already finished ({})", r.instance_id, json::status_name(r.status)),
    )
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

fn header_value(v: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(v).ok()
}

// ----- responses ------------------------------------------------------------------------------

/// The payload of `CreateCheckStatusResponse`, field order as Durable Functions.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckStatus {
    id: String,
    status_query_get_uri: String,
    send_event_post_uri: String,
    terminate_post_uri: String,
    purge_history_delete_uri: String,
    restart_post_uri: String,
    suspend_post_uri: String,
    resume_post_uri: String,
}

/// Links an end client may be given: signed, for one instance, without the management key.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SignedLinks {
    id: String,
    status_query_get_uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    send_event_post_uri: Option<String>,
    expires_at: String,
}

fn query_string(parts: &[Option<String>]) -> String {
    let parts: Vec<&str> = parts.iter().flatten().map(String::as_str).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn management_links(ctx: &Ctx, id: &str, fail500: bool) -> CheckStatus {
    let inst = format!("{}/instances/{}", ctx.base(), enc(id));
    let code = ctx.state.opts.system_key.as_deref().map(|k| format!("code={}", enc(k)));
    let reason = Some("reason={text}".to_string());
    let status_q =
        query_string(&[code.clone(), fail500.then(|| "returnInternalServerErrorOnFailure=true".to_string())]);
    let plain_q = query_string(std::slice::from_ref(&code));
    let reason_q = query_string(&[reason, code]);
    CheckStatus {
        id: id.to_string(),
        status_query_get_uri: format!("{inst}{status_q}"),
        send_event_post_uri: format!("{inst}/raiseEvent/{{eventName}}{plain_q}"),
        terminate_post_uri: format!("{inst}/terminate{reason_q}"),
        purge_history_delete_uri: format!("{inst}{plain_q}"),
        restart_post_uri: format!("{inst}/restart{plain_q}"),
        suspend_post_uri: format!("{inst}/suspend{reason_q}"),
        resume_post_uri: format!("{inst}/resume{reason_q}"),
    }
}

fn signed_links(ctx: &Ctx, id: &str, execution_id: &str, req: LinkRequest) -> SignedLinks {
    let expires = now_secs().saturating_add(i64::try_from(req.ttl_secs).unwrap_or(i64::MAX));
    let sig = ctx.state.links.sign(id, execution_id, req.ops, expires);
    let q = format!("{OPS_PARAM}={}&{EXPIRY_PARAM}={expires}&{SIGNATURE_PARAM}={sig}", enc(req.ops.as_str()));
    let inst = format!("{}/instances/{}", ctx.base(), enc(id));
    SignedLinks {
        id: id.to_string(),
        status_query_get_uri: format!("{inst}?{q}"),
        send_event_post_uri: req.ops.raise_event.then(|| format!("{inst}/raiseEvent/{{eventName}}?{q}")),
        expires_at: json::time_secs(expires.saturating_mul(1000)),
    }
}

/// 202 with `Location` and `Retry-After: 10`: the management links, or signed links only.
fn check_status_response(ctx: &Ctx, id: &str, links: Option<(LinkRequest, &str)>, fail500: bool) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_START));
    match links {
        Some((req, execution_id)) => {
            let body = signed_links(ctx, id, execution_id, req);
            if let Some(v) = header_value(&body.status_query_get_uri) {
                headers.insert(header::LOCATION, v);
            }
            json::json_response(StatusCode::ACCEPTED, headers, &body)
        }
        None => {
            let body = management_links(ctx, id, fail500);
            if let Some(v) = header_value(&body.status_query_get_uri) {
                headers.insert(header::LOCATION, v);
            }
            json::json_response(StatusCode::ACCEPTED, headers, &body)
        }
    }
}

/// The status object with Durable Functions' codes: 202 (+ `Location` = this request,
/// `Retry-After: 5`) while not finished, 200 when finished, 500 for Failed when asked.
fn status_response(
    ctx: &Ctx,
    r: &InstanceRecord,
    history: Option<Vec<json::HistoryJson>>,
    show_input: bool,
    fail500: bool,
) -> Response {
    let body = StatusObject::new(r, show_input, history);
    let mut headers = HeaderMap::new();
    let code = match r.status {
        OrchestrationStatus::Running
        | OrchestrationStatus::Pending
        | OrchestrationStatus::ContinuedAsNew
        | OrchestrationStatus::Suspended => {
            if let Some(v) = header_value(&ctx.request_url()) {
                headers.insert(header::LOCATION, v);
            }
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_STATUS));
            StatusCode::ACCEPTED
        }
        OrchestrationStatus::Failed if fail500 => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    json::json_response(code, headers, &body)
}

/// After a start or restart: wait for completion if asked, else the check-status response.
async fn after_start(
    ctx: &Ctx,
    id: &str,
    wait: Option<Duration>,
    links: Option<LinkRequest>,
    fail500: bool,
) -> Result<Response, ApiError> {
    if let Some(timeout) = wait {
        // Push-notified by commits; no polling, whatever `pollingInterval` says.
        match tokio::time::timeout(timeout, ctx.state.engine.wait_for(id, is_finished)).await {
            Ok(Ok(Some(r))) if r.status == OrchestrationStatus::Completed => {
                let output = json::json_or_string(r.output.as_deref());
                return Ok(json::raw_json_response(StatusCode::OK, output.get().to_string()));
            }
            Ok(Ok(Some(r))) if is_finished(r.status) => return Ok(status_response(ctx, &r, None, true, fail500)),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    // Links are bound to the instance's current execution.
    let execution_id = match links {
        Some(_) => load(ctx, id).await?.execution_id,
        None => String::new(),
    };
    Ok(check_status_response(ctx, id, links.map(|l| (l, execution_id.as_str())), fail500))
}

fn openapi_document() -> Response {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(json::CONTENT_TYPE_JSON));
    (StatusCode::OK, h, openapi::DOCUMENT).into_response()
}

// ----- handlers ---------------------------------------------------------------------------------

/// `POST /orchestrators/{functionName}[/{instanceId}]`
async fn start(ctx: &Ctx, function: String, instance_id: Option<String>, body: Body) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    crate::grpc::validate::name("functionName", &function).map_err(from_status)?;
    let id = match instance_id {
        Some(id) => {
            check_new_instance_id(&id)?;
            id
        }
        None => new_instance_id(),
    };
    let wait = wait_request(ctx)?;
    let links = link_request(ctx, false)?;
    let fail500 = ctx.query.flag("returnInternalServerErrorOnFailure", false);
    let input = json_body(&read_body(ctx, body).await?)?;
    let now = now_ms();
    let new = NewInstance {
        spec: StartSpec {
            instance_id: id.clone(),
            execution_id: crate::ambient::new_execution_id(),
            name: function,
            input,
            ..Default::default()
        },
        created_at_ms: now,
        visible_at_ms: now,
        parent_task: None,
    };
    match ctx.state.engine.create_instance(new, IdReuse::terminal()).await? {
        CreateResult::Created(_) | CreateResult::Kept => {}
        CreateResult::AlreadyExists(s) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("an orchestration instance with id '{id}' already exists and is {}", json::status_name(s)),
            ))
        }
    }
    tracing::debug!(instance = %id, "instance started over HTTP");
    after_start(ctx, &id, wait, links, fail500).await
}

/// `GET /instances/{instanceId}`
async fn status(ctx: &Ctx, id: &str) -> Result<Response, ApiError> {
    // Loaded first: a link is checked against the current execution. An unknown instance
    // is authorized like a known one (401 before 404: no existence oracle).
    let record = ctx.state.engine.get_instance(id).await?;
    let execution_id = record.as_ref().map(|r| r.execution_id.as_str()).unwrap_or_default();
    let grant = ctx.authorize(Need::Instance { instance_id: id, execution_id, op: LinkOp::Status })?;
    let show_input = ctx.query.flag("showInput", true);
    // A signed link shows the status, not the history of what the orchestration did.
    let show_history = ctx.query.flag("showHistory", false) && grant == Grant::Full;
    let show_output = ctx.query.flag("showHistoryOutput", false);
    let fail500 = ctx.query.flag("returnInternalServerErrorOnFailure", false);
    let r = record.ok_or_else(|| ApiError::not_found_instance(id))?;
    let history = if show_history {
        Some(json::history_json(&ctx.state.engine.history(id).await?, show_input, show_output))
    } else {
        None
    };
    Ok(status_response(ctx, &r, history, show_input, fail500))
}

fn statuses(q: &Query) -> Vec<OrchestrationStatus> {
    let mut out = Vec::new();
    for s in q.all("runtimeStatus").flat_map(|v| v.split(',')).filter_map(json::parse_status_name) {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn time_param(q: &Query, name: &str) -> Result<Option<i64>, ApiError> {
    match q.get(name).map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => json::parse_time(v).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "'{name}' is not a date-time (use ISO 8601, e.g. 2024-05-01T00:00:00Z): '{v}'"
            ))
        }),
    }
}

/// `GET /instances`
async fn list(ctx: &Ctx) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    let (page, after) = page_request(ctx)?;
    let filter = InstanceFilter {
        statuses: statuses(&ctx.query),
        created_from_ms: time_param(&ctx.query, "createdTimeFrom")?,
        created_to_ms: time_param(&ctx.query, "createdTimeTo")?,
        instance_id_prefix: ctx.query.get("instanceIdPrefix").filter(|p| !p.is_empty()).map(str::to_string),
        // One row more than the page says whether another page follows.
        page_size: page.saturating_add(1),
        after_instance_id: after,
        ..Default::default()
    };
    let show_input = ctx.query.flag("showInput", true);
    let records = ctx.state.engine.query(&filter).await?;
    Ok(paged_response(records, page, |r| &r.instance_id, |r| StatusObject::new(&r, show_input, None)))
}

/// A list request's page size (`top`: default 100, at most 1000) and exclusive cursor (the
/// id in `x-ms-continuation-token`, as this sidecar issued it). Queries ask for one row more
/// than the page, which says whether another page follows (see [`paged_response`]).
fn page_request(ctx: &Ctx) -> Result<(u32, Option<String>), ApiError> {
    let page = match ctx.query.get("top").and_then(|v| v.trim().parse::<i64>().ok()) {
        Some(n) if n > 0 => u32::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
        _ => DEFAULT_PAGE,
    };
    let after = match ctx.header(CONTINUATION_HEADER) {
        None => None,
        Some(t) => Some(URL_SAFE_NO_PAD.decode(t).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(|| {
            ApiError::bad_request(format!("the {CONTINUATION_HEADER} header was not issued by this sidecar"))
        })?),
    };
    Ok((page, after))
}

/// One page of `rows` (queried with `page + 1` rows) as JSON, with the next page's
/// `x-ms-continuation-token` (the last row's id) when another page follows.
fn paged_response<R, B: Serialize>(
    mut rows: Vec<R>,
    page: u32,
    id: impl Fn(&R) -> &str,
    body: impl Fn(R) -> B,
) -> Response {
    let more = rows.len() > page as usize;
    rows.truncate(page as usize);
    let next = match rows.last() {
        Some(last) if more => URL_SAFE_NO_PAD.encode(id(last).as_bytes()),
        _ => String::new(),
    };
    let body: Vec<B> = rows.into_iter().map(body).collect();
    let mut headers = HeaderMap::new();
    if let Some(v) = header_value(&next) {
        headers.insert(CONTINUATION_HEADER, v);
    }
    json::json_response(StatusCode::OK, headers, &body)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Purged {
    instances_deleted: u32,
}

/// `DELETE /instances/{instanceId}`
async fn purge_one(ctx: &Ctx, id: &str) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    let r = load(ctx, id).await?;
    if !is_finished(r.status) {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "instance '{id}' is {}; only finished instances can be purged (terminate it first)",
                json::status_name(r.status)
            ),
        ));
    }
    let n = ctx.state.engine.purge(PurgeSelection::Ids(vec![id.to_string()]), false).await?;
    if n == 0 {
        return Err(ApiError::not_found_instance(id));
    }
    Ok(json::json_response(StatusCode::OK, HeaderMap::new(), &Purged { instances_deleted: n }))
}

/// `DELETE /instances?createdTimeFrom=…`
async fn purge_by_filter(ctx: &Ctx) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    let Some(from) = time_param(&ctx.query, "createdTimeFrom")? else {
        return Err(ApiError::bad_request("Please provide value for 'createdTimeFrom' parameter."));
    };
    let to = time_param(&ctx.query, "createdTimeTo")?.unwrap_or_else(now_ms);
    let selection =
        PurgeSelection::Filter { created_from_ms: Some(from), created_to_ms: Some(to), statuses: statuses(&ctx.query) };
    let n = ctx.state.engine.purge(selection, false).await?;
    if n == 0 {
        return Err(ApiError::new(ErrorCode::NotFound, "no finished instances matched the filter"));
    }
    Ok(json::json_response(StatusCode::OK, HeaderMap::new(), &Purged { instances_deleted: n }))
}

/// `POST /instances/{instanceId}/raiseEvent/{eventName}`
async fn raise_event(ctx: &Ctx, id: &str, name: &str, body: Body) -> Result<Response, ApiError> {
    let record = ctx.state.engine.get_instance(id).await?;
    let execution_id = record.as_ref().map(|r| r.execution_id.as_str()).unwrap_or_default();
    ctx.authorize(Need::Instance { instance_id: id, execution_id, op: LinkOp::RaiseEvent })?;
    crate::grpc::validate::name("eventName", name).map_err(from_status)?;
    let media = ctx.header(header::CONTENT_TYPE.as_str()).and_then(|v| v.split(';').next()).map(str::trim);
    if !media.is_some_and(|m| m.eq_ignore_ascii_case("application/json")) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "Only application/json request content is supported",
        ));
    }
    let input = json_body(&read_body(ctx, body).await?)?;
    let r = load(ctx, id).await?;
    if is_finished(r.status) {
        return Err(gone(&r));
    }
    match ctx.state.engine.raise_event(id, name.to_string(), input).await {
        Ok(true) => Ok(accepted()),
        // Finished between the check and the enqueue: the event was dropped.
        Ok(false) => Err(gone(&r)),
        Err(e) => Err(e.into()),
    }
}

/// `POST /instances/{instanceId}/terminate?reason=…`
async fn terminate(ctx: &Ctx, id: &str) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    let r = load(ctx, id).await?;
    if is_finished(r.status) {
        return Err(gone(&r));
    }
    // The reason becomes the output; stored as JSON (a string) like every payload.
    let output = ctx.query.get("reason").map(|reason| json::json_string(reason).get().to_string());
    let recursive = ctx.query.flag("recursive", false);
    ctx.state.engine.terminate(id, output, recursive).await?;
    Ok(accepted())
}

/// `POST /instances/{instanceId}/suspend|resume?reason=…` — idempotent (Durable Functions
/// answers 500 to suspending a suspended instance; Duro accepts it).
async fn suspend_or_resume(ctx: &Ctx, id: &str, suspend: bool) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    let r = load(ctx, id).await?;
    if is_finished(r.status) {
        return Err(gone(&r));
    }
    let reason = ctx.query.get("reason").map(str::to_string);
    let result =
        if suspend { ctx.state.engine.suspend(id, reason).await } else { ctx.state.engine.resume(id, reason).await };
    match result {
        Ok(()) => Ok(accepted()),
        Err(EngineError::FailedPrecondition(_)) => Err(gone(&r)),
        Err(e) => Err(e.into()),
    }
}

/// `POST /instances/{instanceId}/rewind?reason=…`
async fn rewind(ctx: &Ctx, id: &str) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    let r = load(ctx, id).await?;
    match r.status {
        OrchestrationStatus::Failed => {}
        OrchestrationStatus::Completed | OrchestrationStatus::Terminated | OrchestrationStatus::Canceled => {
            return Err(gone(&r))
        }
        s => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("instance '{id}' is {}; only failed instances can be rewound", json::status_name(s)),
            ))
        }
    }
    let reason = ctx.query.get("reason").map(str::to_string);
    ctx.state.engine.rewind(id, reason).await?;
    Ok(accepted())
}

/// `POST /instances/{instanceId}/restart?restartWithNewInstanceId=…`
async fn restart(ctx: &Ctx, id: &str) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    let wait = wait_request(ctx)?;
    let links = link_request(ctx, false)?;
    let fail500 = ctx.query.flag("returnInternalServerErrorOnFailure", false);
    let new_id = ctx.query.flag("restartWithNewInstanceId", true).then(new_instance_id);
    let restarted = match ctx.state.engine.restart(id, new_id).await {
        Ok(id) => id,
        // Durable Functions answers 400 here, not 404.
        Err(EngineError::NotFound(_)) => {
            return Err(ApiError::bad_request("InstanceId does not match a valid orchestration instance."))
        }
        Err(e) => return Err(e.into()),
    };
    after_start(ctx, &restarted, wait, links, fail500).await
}

/// `POST /instances/{instanceId}/signedLinks?signedLinkOps=…&signedLinkTtl=…` (Duro only).
async fn create_signed_links(ctx: &Ctx, id: &str) -> Result<Response, ApiError> {
    ctx.authorize(Need::Manage)?;
    let default = LinkRequest { ops: Ops::STATUS, ttl_secs: ctx.state.opts.link_ttl.as_secs().max(1) };
    let req = link_request(ctx, true)?.unwrap_or(default);
    let r = load(ctx, id).await?;
    Ok(json::json_response(StatusCode::OK, HeaderMap::new(), &signed_links(ctx, id, &r.execution_id, req)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(path: &str) -> Option<Route> {
        route(path).unwrap()
    }

    #[test]
    fn routes_match_like_durable_functions() {
        let b = BASE_PATH;
        assert_eq!(
            r(&format!("{b}/orchestrators/Hello")),
            Some(Route::Start { function: "Hello".into(), instance_id: None })
        );
        assert_eq!(
            r(&format!("{b}/Orchestrators/Hello/id%201/")),
            Some(Route::Start { function: "Hello".into(), instance_id: Some("id 1".into()) })
        );
        assert_eq!(r(&format!("{b}/instances/")), Some(Route::Instances));
        assert_eq!(r("/runtime/webhooks/durableTask/instances"), Some(Route::Instances));
        assert_eq!(r(&format!("{b}/instances/a%2Fb")), Some(Route::Instance("a/b".into())));
        assert_eq!(
            r(&format!("{b}/instances/x/RAISEEVENT/approve")),
            Some(Route::Op { instance_id: "x".into(), op: Op::RaiseEvent("approve".into()) })
        );
        assert_eq!(
            r(&format!("{b}/instances/x/Terminate")),
            Some(Route::Op { instance_id: "x".into(), op: Op::Terminate })
        );
        assert_eq!(r(&format!("{b}/instances/x/raiseEvent")), None);
        assert_eq!(r(&format!("{b}/instances/x/explode")), None);
        assert_eq!(r(&format!("{b}/instances//terminate")), None);
        assert_eq!(
            r(&format!("{b}/entities/counter/k")),
            Some(Route::Entity { name: "counter".into(), key: "k".into() })
        );
        assert_eq!(r(&format!("{b}x/instances")), None);
        assert_eq!(r("/elsewhere"), None);
        assert!(route(&format!("{b}/instances/%FF")).is_err());
    }

    #[test]
    fn new_instance_ids() {
        assert!(check_new_instance_id("order-42").is_ok());
        for bad in ["@x", "a/b", "a\\b", "a?b", "a#b", "a\u{7}b", " a"] {
            assert!(check_new_instance_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_new_instance_id(&"x".repeat(256)).is_ok());
        assert!(check_new_instance_id(&"x".repeat(257)).is_err());
        let g = new_instance_id();
        assert_eq!(g.len(), 32);
        assert!(g.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn json_bodies() {
        assert_eq!(json_body(b"").unwrap(), None);
        assert_eq!(json_body(b"  \n").unwrap(), None);
        assert_eq!(json_body(b" {\"a\": 1} ").unwrap().as_deref(), Some("{\"a\": 1}"));
        assert_eq!(json_body("\u{feff}42".as_bytes()).unwrap().as_deref(), Some("42"));
        assert_eq!(json_body(b"{nope").unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(json_body(&[0xff, 0xfe]).unwrap_err().code, ErrorCode::InvalidJson);
    }

    #[test]
    fn hosts() {
        assert!(valid_host("localhost:7071"));
        assert!(valid_host("[::1]:7071"));
        assert!(!valid_host("evil.com/path"));
        assert!(!valid_host("a b"));
        assert!(!valid_host(""));
    }
}
