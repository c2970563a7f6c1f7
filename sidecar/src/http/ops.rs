//! Operations routes on the HTTP port, beside the management API:
//!
//! - `GET /healthz`: the process answers (liveness); `GET /readyz`: the store commits, gRPC
//!   serves, no shutdown is under way (readiness, 503 otherwise). Both need no key: they
//!   say ready or not, and which check fails, nothing else.
//! - `GET /metrics` (Prometheus/OpenMetrics text) and `GET /stats` (a JSON snapshot for
//!   dashboards): they hold orchestration and activity names, so when a system key is
//!   configured they need it (`x-functions-key`, `code`, or `Authorization: Bearer <key>`,
//!   which Prometheus sends with `authorization.credentials_file`), unless
//!   `--metrics-open` serves them to anyone who can reach the port.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::auth::{authorize, Need};
use super::json::{ApiError, ErrorCode};
use super::{ApiState, Query};

pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";
pub const STATS: &str = "/stats";

/// The operations route of `path` (a trailing slash is ignored), if it is one.
pub(crate) fn matches(path: &str) -> Option<&'static str> {
    let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    [HEALTHZ, READYZ, METRICS, STATS].into_iter().find(|p| *p == path)
}

/// Answers an operations route (see [`matches`]).
pub(crate) async fn route(
    state: &Arc<ApiState>,
    path: &'static str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut r = ApiError::new(ErrorCode::NotFound, format!("{path} answers GET only")).into_response();
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        HEALTHZ => json(StatusCode::OK, &serde_json::json!({ "status": "alive" })),
        READYZ => {
            let r = state.health.readiness().await;
            let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json(status, &r)
        }
        _ => {
            if let Err(e) = allowed(state, uri, headers) {
                return e.into_response();
            }
            if path == METRICS {
                let body = crate::metrics::render(&state.engine).await;
                let mut r = (StatusCode::OK, body).into_response();
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
                r
            } else {
                json(StatusCode::OK, &crate::metrics::snapshot(&state.engine).await)
            }
        }
    }
}

/// Who may read metrics: anyone with `--metrics-open` or without a system key (loopback or
/// `--http-insecure`, as the rest of the API); else the system key's holder.
fn allowed(state: &ApiState, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.opts.metrics_open {
        return Ok(());
    }
    if let (Some(key), Some(bearer)) = (&state.key, bearer(headers)) {
        if key.matches(bearer) {
            return Ok(());
        }
        return Err(ApiError::new(ErrorCode::Unauthorized, "the bearer token is not the system key"));
    }
    let query = Query::parse(uri.query());
    authorize(state.key.as_ref(), &state.links, headers, &query, Need::Manage, 0).map(|_| ())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
