//! JSON shapes of the Durable Functions management API, its timestamps and status names,
//! and the error bodies of every failure.
//!
//! Pure conversions from engine records to wire JSON; nothing here does I/O.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use duro_proto::history_event::EventType;
use duro_proto::{HistoryEvent, OrchestrationStatus, TaskFailureDetails};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::core::time::to_ms;
use crate::store::InstanceRecord;

pub const CONTENT_TYPE_JSON: &str = "application/json; charset=utf-8";

// ----- timestamps -----------------------------------------------------------------------

/// Instance times as Durable Functions writes them: UTC, second precision, literal `Z`
/// (`2018-02-28T05:18:49Z`).
pub fn time_secs(ms: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// History event times keep their fraction (trailing zeros trimmed, as .NET writes them).
pub fn time_precise(ms: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    let s = t.to_rfc3339_opts(SecondsFormat::Millis, true);
    // `…:SS.fffZ` → drop trailing zeros of the fraction, and the dot if nothing is left.
    match s.strip_suffix('Z').and_then(|body| body.split_once('.')) {
        Some((head, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{head}Z")
            } else {
                format!("{head}.{frac}Z")
            }
        }
        None => s,
    }
}

/// Parses a query-string time the way clients send them: RFC 3339 (with `Z` or an offset),
/// or a date-time / date without zone (read as UTC). A `+` of an offset that arrived as a
/// space (form decoding) is accepted too.
pub fn parse_time(raw: &str) -> Option<i64> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    parse_time_exact(s).or_else(|| if s.contains(' ') { parse_time_exact(&s.replace(' ', "+")) } else { None })
}

fn parse_time_exact(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

// ----- status names ---------------------------------------------------------------------

/// The `runtimeStatus` name of a status (`OrchestrationRuntimeStatus` in Durable Functions).
pub fn status_name(s: OrchestrationStatus) -> &'static str {
    match s {
        OrchestrationStatus::Running => "Running",
        OrchestrationStatus::Completed => "Completed",
        OrchestrationStatus::ContinuedAsNew => "ContinuedAsNew",
        OrchestrationStatus::Failed => "Failed",
        OrchestrationStatus::Canceled => "Canceled",
        OrchestrationStatus::Terminated => "Terminated",
        OrchestrationStatus::Pending => "Pending",
        OrchestrationStatus::Suspended => "Suspended",
    }
}

/// A `runtimeStatus` filter entry; names are matched case-sensitively, as Durable Functions does.
pub fn parse_status_name(name: &str) -> Option<OrchestrationStatus> {
    Some(match name.trim() {
        "Running" => OrchestrationStatus::Running,
        "Completed" => OrchestrationStatus::Completed,
        "ContinuedAsNew" => OrchestrationStatus::ContinuedAsNew,
        "Failed" => OrchestrationStatus::Failed,
        "Canceled" => OrchestrationStatus::Canceled,
        "Terminated" => OrchestrationStatus::Terminated,
        "Pending" => OrchestrationStatus::Pending,
        "Suspended" => OrchestrationStatus::Suspended,
        _ => return None,
    })
}

// ----- payload values -------------------------------------------------------------------

pub fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// A stored payload as JSON: `null` when absent, the text itself when it is JSON, else the
/// text as a JSON string (what terminate reasons and non-JSON payloads look like).
pub fn json_or_string(value: Option<&str>) -> Box<RawValue> {
    let Some(v) = value else { return null() };
    let t = v.trim();
    RawValue::from_string(t.to_string()).or_else(|_| serde_json::value::to_raw_value(t)).unwrap_or_else(|_| null())
}

pub fn json_string(value: &str) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| null())
}

// ----- the status object ----------------------------------------------------------------

/// `DurableOrchestrationStatus` as Durable Functions serializes it (field order included).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusObject {
    pub name: String,
    pub instance_id: String,
    pub runtime_status: &'static str,
    pub input: Box<RawValue>,
    pub custom_status: Box<RawValue>,
    pub output: Box<RawValue>,
    pub created_time: String,
    pub last_updated_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_events: Option<Vec<HistoryJson>>,
}

impl StatusObject {
    pub fn new(r: &InstanceRecord, show_input: bool, history: Option<Vec<HistoryJson>>) -> StatusObject {
        // A failed instance shows its failure message as output, as Durable Functions does.
        let output = match (&r.failure, r.status) {
            (Some(f), OrchestrationStatus::Failed) => json_string(&f.error_message),
            _ => json_or_string(r.output.as_deref()),
        };
        StatusObject {
            name: r.name.clone(),
            instance_id: r.instance_id.clone(),
            runtime_status: status_name(r.status),
            input: if show_input { json_or_string(r.input.as_deref()) } else { null() },
            custom_status: json_or_string(r.custom_status.as_deref()),
            output,
            created_time: time_secs(r.created_at_ms),
            last_updated_time: time_secs(r.updated_at_ms),
            history_events: history,
        }
    }
}

/// One history row of `showHistory=true`: DTFx names in PascalCase, `EventType` as a string.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryJson {
    pub event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestration_status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fire_at: Option<String>,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_details: Option<FailureJson>,
}

/// Failure details without the stack trace (which may hold paths and secrets).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FailureJson {
    pub error_type: String,
    pub error_message: String,
}

impl From<&TaskFailureDetails> for FailureJson {
    fn from(f: &TaskFailureDetails) -> Self {
        FailureJson { error_type: f.error_type.clone(), error_message: f.error_message.clone() }
    }
}

impl HistoryJson {
    fn new(event_type: &'static str, timestamp_ms: i64) -> HistoryJson {
        HistoryJson {
            event_type,
            name: None,
            function_name: None,
            instance_id: None,
            orchestration_status: None,
            scheduled_time: None,
            fire_at: None,
            timestamp: time_precise(timestamp_ms),
            input: None,
            result: None,
            reason: None,
            failure_details: None,
        }
    }
}

fn event_ms(e: &HistoryEvent) -> i64 {
    e.timestamp.as_ref().map(to_ms).unwrap_or(0)
}

/// Converts an execution's history the way Durable Functions' `GetStatusAsync` does: results
/// are merged with their scheduling rows (`FunctionName`, `ScheduledTime`), which are then
/// dropped, as are `OrchestratorStarted`/`OrchestratorCompleted`; payloads of results appear
/// only with `show_output`, the orchestration input only with `show_input`.
pub fn history_json(events: &[HistoryEvent], show_input: bool, show_output: bool) -> Vec<HistoryJson> {
    // Scheduling rows by event id: (name, time). Tasks and children have separate id spaces
    // in the lookup so a task and a child with the same id cannot be confused.
    let mut tasks: HashMap<i32, (String, i64)> = HashMap::new();
    let mut children: HashMap<i32, (String, i64)> = HashMap::new();
    let mut finished_tasks = std::collections::HashSet::new();
    let mut finished_children = std::collections::HashSet::new();
    for e in events {
        match &e.event_type {
            Some(EventType::TaskScheduled(s)) => {
                tasks.insert(e.event_id, (s.name.clone(), event_ms(e)));
            }
            Some(EventType::SubOrchestrationInstanceCreated(c)) => {
                children.insert(e.event_id, (c.name.clone(), event_ms(e)));
            }
            Some(EventType::TaskCompleted(c)) => {
                finished_tasks.insert(c.task_scheduled_id);
            }
            Some(EventType::TaskFailed(f)) => {
                finished_tasks.insert(f.task_scheduled_id);
            }
            Some(EventType::SubOrchestrationInstanceCompleted(c)) => {
                finished_children.insert(c.task_scheduled_id);
            }
            Some(EventType::SubOrchestrationInstanceFailed(f)) => {
                finished_children.insert(f.task_scheduled_id);
            }
            _ => {}
        }
    }
    let merge = |h: &mut HistoryJson, table: &HashMap<i32, (String, i64)>, id: i32| {
        if let Some((name, at)) = table.get(&id) {
            h.function_name = Some(name.clone());
            h.scheduled_time = Some(time_precise(*at));
        }
    };
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let ms = event_ms(e);
        let Some(kind) = &e.event_type else { continue };
        let h = match kind {
            EventType::OrchestratorStarted(_) | EventType::OrchestratorCompleted(_) => continue,
            EventType::TaskScheduled(s) => {
                if finished_tasks.contains(&e.event_id) {
                    continue;
                }
                HistoryJson { name: Some(s.name.clone()), ..HistoryJson::new("TaskScheduled", ms) }
            }
            EventType::SubOrchestrationInstanceCreated(c) => {
                if finished_children.contains(&e.event_id) {
                    continue;
                }
                HistoryJson {
                    name: Some(c.name.clone()),
                    instance_id: Some(c.instance_id.clone()),
                    ..HistoryJson::new("SubOrchestrationInstanceCreated", ms)
                }
            }
            EventType::TaskCompleted(c) => {
                let mut h = HistoryJson::new("TaskCompleted", ms);
                merge(&mut h, &tasks, c.task_scheduled_id);
                if show_output {
                    h.result = Some(json_or_string(c.result.as_deref()));
                }
                h
            }
            EventType::TaskFailed(f) => {
                let mut h = HistoryJson::new("TaskFailed", ms);
                merge(&mut h, &tasks, f.task_scheduled_id);
                if let Some(d) = &f.failure_details {
                    h.reason = Some(d.error_message.clone());
                    h.failure_details = Some(d.into());
                }
                h
            }
            EventType::SubOrchestrationInstanceCompleted(c) => {
                let mut h = HistoryJson::new("SubOrchestrationInstanceCompleted", ms);
                merge(&mut h, &children, c.task_scheduled_id);
                if show_output {
                    h.result = Some(json_or_string(c.result.as_deref()));
                }
                h
            }
            EventType::SubOrchestrationInstanceFailed(f) => {
                let mut h = HistoryJson::new("SubOrchestrationInstanceFailed", ms);
                merge(&mut h, &children, f.task_scheduled_id);
                if let Some(d) = &f.failure_details {
                    h.reason = Some(d.error_message.clone());
                    h.failure_details = Some(d.into());
                }
                h
            }
            EventType::ExecutionStarted(s) => HistoryJson {
                function_name: Some(s.name.clone()),
                input: show_input.then(|| json_or_string(s.input.as_deref())),
                ..HistoryJson::new("ExecutionStarted", ms)
            },
            EventType::ExecutionCompleted(c) => HistoryJson {
                orchestration_status: Some(status_name(crate::core::status_from_i32(c.orchestration_status))),
                result: show_output.then(|| json_or_string(c.result.as_deref())),
                failure_details: c.failure_details.as_ref().map(FailureJson::from),
                ..HistoryJson::new("ExecutionCompleted", ms)
            },
            EventType::ExecutionTerminated(_) => HistoryJson::new("ExecutionTerminated", ms),
            EventType::TimerCreated(t) => HistoryJson {
                fire_at: t.fire_at.as_ref().map(|f| time_precise(to_ms(f))),
                ..HistoryJson::new("TimerCreated", ms)
            },
            EventType::TimerFired(t) => HistoryJson {
                fire_at: t.fire_at.as_ref().map(|f| time_precise(to_ms(f))),
                ..HistoryJson::new("TimerFired", ms)
            },
            EventType::EventRaised(r) => {
                HistoryJson { name: Some(r.name.clone()), ..HistoryJson::new("EventRaised", ms) }
            }
            EventType::EventSent(s) => HistoryJson {
                name: Some(s.name.clone()),
                instance_id: Some(s.instance_id.clone()),
                ..HistoryJson::new("EventSent", ms)
            },
            EventType::ExecutionSuspended(s) => {
                HistoryJson { reason: s.input.clone(), ..HistoryJson::new("ExecutionSuspended", ms) }
            }
            EventType::ExecutionResumed(s) => {
                HistoryJson { reason: s.input.clone(), ..HistoryJson::new("ExecutionResumed", ms) }
            }
            EventType::ContinueAsNew(_) => HistoryJson::new("ContinueAsNew", ms),
            EventType::GenericEvent(_) => HistoryJson::new("GenericEvent", ms),
            EventType::HistoryState(_) => HistoryJson::new("HistoryState", ms),
            EventType::ExecutionRewound(_) => HistoryJson::new("ExecutionRewound", ms),
            EventType::EntityOperationSignaled(_)
            | EventType::EntityOperationCalled(_)
            | EventType::EntityOperationCompleted(_)
            | EventType::EntityOperationFailed(_)
            | EventType::EntityLockRequested(_)
            | EventType::EntityLockGranted(_)
            | EventType::EntityUnlockSent(_) => HistoryJson::new("GenericEvent", ms),
        };
        out.push(h);
    }
    out
}

// ----- errors ---------------------------------------------------------------------------

/// Stable error codes of the HTTP API, sent as `Code` in every error body.
///
/// | code | HTTP | cause | fix |
/// |---|---|---|---|
/// | DURO-2001 | 400 | a parameter, id or name is invalid | see `Message`; ids must not start with `@` nor contain `/ \ # ?` or control characters |
/// | DURO-2002 | 400 | the body is not valid JSON | send JSON (a bare string needs quotes: `"text"`) |
/// | DURO-2003 | 400 | raiseEvent without `Content-Type: application/json` | set the header |
/// | DURO-2004 | 413 | the body is larger than `--http-max-body-bytes` | send less, or raise the limit |
/// | DURO-2005 | 401 | missing or wrong system key | send `x-functions-key: <key>` or `?code=<key>` |
/// | DURO-2006 | 401 | signed link malformed, tampered with, for another instance, or expired | ask the issuer for a fresh link |
/// | DURO-2007 | 403 | the signed link does not grant this operation | use the management key, or a link with that operation |
/// | DURO-2008 | 404 | no such instance (or nothing matched a purge filter) | check the id |
/// | DURO-2009 | 404 | no such route or method | see `/runtime/webhooks/durabletask/openapi.json` |
/// | DURO-2010 | 410 | the instance has finished | start a new instance or restart it |
/// | DURO-2011 | 409 | the instance's state does not allow this (id in use by a live instance, purge of a live instance, rewind of a non-failed one, restart of a live one) | wait for it to finish, or terminate it |
/// | DURO-2012 | 501 | reserved: no route answers it any more (entities were unimplemented before) | — |
/// | DURO-2013 | 503 | the sidecar is shutting down | retry against the restarted sidecar |
/// | DURO-2014 | 500 | the store failed | see the sidecar log; retry |
/// | DURO-2017 | 403 | a browser sent a change from another site (`Origin`/`Sec-Fetch-Site`) | call the API from a server or the same origin |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    InvalidJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    Unauthorized,
    InvalidLink,
    LinkNotAllowed,
    NotFound,
    RouteNotFound,
    Gone,
    Conflict,
    TooManyRequests,
    RequestTimeout,
    CrossSite,
    NotImplemented,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "DURO-2001",
            ErrorCode::InvalidJson => "DURO-2002",
            ErrorCode::UnsupportedMediaType => "DURO-2003",
            ErrorCode::PayloadTooLarge => "DURO-2004",
            ErrorCode::Unauthorized => "DURO-2005",
            ErrorCode::InvalidLink => "DURO-2006",
            ErrorCode::LinkNotAllowed => "DURO-2007",
            ErrorCode::NotFound => "DURO-2008",
            ErrorCode::RouteNotFound => "DURO-2009",
            ErrorCode::Gone => "DURO-2010",
            ErrorCode::Conflict => "DURO-2011",
            ErrorCode::NotImplemented => "DURO-2012",
            ErrorCode::Unavailable => "DURO-2013",
            ErrorCode::Internal => "DURO-2014",
            ErrorCode::TooManyRequests => "DURO-2015",
            ErrorCode::RequestTimeout => "DURO-2016",
            ErrorCode::CrossSite => "DURO-2017",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidArgument | ErrorCode::InvalidJson | ErrorCode::UnsupportedMediaType => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthorized | ErrorCode::InvalidLink => StatusCode::UNAUTHORIZED,
            ErrorCode::LinkNotAllowed | ErrorCode::CrossSite => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::RouteNotFound => StatusCode::NOT_FOUND,
            ErrorCode::Gone => StatusCode::GONE,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Every failure of a request: a status, a stable code and a message, sent as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found_instance(id: &str) -> ApiError {
        ApiError::new(ErrorCode::NotFound, format!("no orchestration instance '{id}'"))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody<'a> {
    message: &'a str,
    code: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { message: &self.message, code: self.code.as_str() };
        json_response(self.code.status(), HeaderMap::new(), &body)
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> ApiError {
        use crate::engine::EngineError as E;
        match e {
            E::NotFound(m) => ApiError::new(ErrorCode::NotFound, m),
            E::InvalidArgument(m) => ApiError::bad_request(m),
            E::FailedPrecondition(m) | E::AlreadyExists(m) => ApiError::new(ErrorCode::Conflict, m),
            E::ResourceExhausted(m) => ApiError::new(ErrorCode::TooManyRequests, m),
            E::ShuttingDown | E::Store(crate::store::StoreError::Closed) => {
                ApiError::new(ErrorCode::Unavailable, "the Duro sidecar is shutting down; retry shortly")
            }
            E::Store(e) if e.is_transient() => {
                tracing::warn!(error = %e, "transient store error in an HTTP request");
                ApiError::new(ErrorCode::Unavailable, "the store cannot take this request now; retry shortly")
            }
            E::Store(e) => {
                tracing::error!(error = %e, "store error in an HTTP request");
                ApiError::new(
                    ErrorCode::Internal,
                    "Something went wrong while processing your request (store error; see the sidecar log)",
                )
            }
        }
    }
}

/// A JSON response with the Durable Functions content type.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, mut headers: HeaderMap, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
            (status, headers, bytes).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "could not serialize an HTTP response");
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
            let body = r#"{"Message":"could not serialize the response","Code":"DURO-2014"}"#;
            (StatusCode::INTERNAL_SERVER_ERROR, h, body).into_response()
        }
    }
}

/// A response whose body is already JSON text.
pub fn raw_json_response(status: StatusCode, body: String) -> Response {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
    (status, h, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_times_have_second_precision() {
        assert_eq!(time_secs(1_519_795_129_999), "2018-02-28T05:18:49Z");
        assert_eq!(time_secs(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn event_times_trim_the_fraction() {
        assert_eq!(time_precise(1_519_795_132_289), "2018-02-28T05:18:52.289Z");
        assert_eq!(time_precise(1_519_795_132_200), "2018-02-28T05:18:52.2Z");
        assert_eq!(time_precise(1_519_795_132_000), "2018-02-28T05:18:52Z");
    }

    #[test]
    fn parses_query_times() {
        let t = 1_519_795_129_000;
        assert_eq!(parse_time("2018-02-28T05:18:49Z"), Some(t));
        assert_eq!(parse_time("2018-02-28T07:18:49+02:00"), Some(t));
        assert_eq!(parse_time("2018-02-28T07:18:49 02:00"), Some(t));
        assert_eq!(parse_time("2018-02-28T05:18:49"), Some(t));
        assert_eq!(parse_time("2018-02-28 05:18:49"), Some(t));
        assert_eq!(parse_time("2018-02-28"), Some(1_519_776_000_000));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time(""), None);
    }

    #[test]
    fn payloads_are_json_or_strings() {
        assert_eq!(json_or_string(None).get(), "null");
        assert_eq!(json_or_string(Some(" {\"a\":1} ")).get(), "{\"a\":1}");
        assert_eq!(json_or_string(Some("not json")).get(), "\"not json\"");
        assert_eq!(json_or_string(Some("")).get(), "\"\"");
    }

    #[test]
    fn status_names_round_trip() {
        for v in 0..8 {
            let s = crate::core::status_from_i32(v);
            assert_eq!(parse_status_name(status_name(s)), Some(s));
        }
        assert_eq!(parse_status_name("running"), None);
    }
}
