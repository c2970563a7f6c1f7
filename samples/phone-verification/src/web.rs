//! The HTTP front end (axum).
//!
//! * `POST /verify` `{"phone":"+15551234567"}` → 202 `{"id", "statusUrl", "statusQueryGetUri"?}`
//!   with `Location: /verify/{id}` (400 unless the number is E.164).
//!   `statusQueryGetUri` is a signed Duro status link when Duro's HTTP API is configured.
//! * `POST /verify/{id}` `{"code":"1234"}` → 202: raises `SmsChallengeResponse`.
//! * `GET /verify/{id}` → 200 `{"id", "status": "pending"|"verified"|"failed", …}`.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use duro_sdk::{Client, OrchestrationStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::orchestration::{Progress, VerificationInput, ORCHESTRATION, RESPONSE_EVENT};

/// Front-end settings.
#[derive(Debug, Clone)]
pub struct FrontEndConfig {
    /// Challenge window (default 90 s).
    pub challenge_timeout: Duration,
    /// Codes accepted (default 4).
    pub max_attempts: u32,
    /// Base URL of Duro's HTTP API (e.g. `http://127.0.0.1:7071`) for signed status links.
    pub duro_http_url: Option<String>,
}

impl Default for FrontEndConfig {
    fn default() -> Self {
        Self { challenge_timeout: Duration::from_secs(90), max_attempts: 4, duro_http_url: None }
    }
}

#[derive(Debug, Clone)]
struct AppState {
    client: Client,
    config: FrontEndConfig,
    http: reqwest::Client,
}

/// The router, ready for `axum::serve`.
pub fn router(client: Client, config: FrontEndConfig) -> Router {
    Router::new().route("/verify", post(start)).route("/verify/{id}", get(status).post(respond)).with_state(AppState {
        client,
        config,
        http: reqwest::Client::new(),
    })
}

/// Whether `s` is an E.164 number: `+`, then 8 to 15 digits, not starting with 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

#[derive(Deserialize)]
struct StartRequest {
    phone: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StartResponse {
    id: String,
    status_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_query_get_uri: Option<String>,
}

async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<StartRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(request)) = body else {
        return error(StatusCode::BAD_REQUEST, "expected JSON {\"phone\": \"+15551234567\"}");
    };
    let phone = request.phone.unwrap_or_default();
    if !is_e164(&phone) {
        return error(StatusCode::BAD_REQUEST, format!("'{phone}' is not an E.164 phone number (e.g. +15551234567)"));
    }
    let input = VerificationInput {
        phone,
        timeout_seconds: state.config.challenge_timeout.as_secs().max(1),
        max_attempts: state.config.max_attempts,
    };
    let id = match state.client.start_orchestration(ORCHESTRATION, &input).await {
        Ok(id) => id,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("could not start: {e}")),
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let status_url = format!("http://{host}/verify/{id}");
    let status_query_get_uri = signed_status_link(&state, &id).await;
    let location = format!("/verify/{id}");
    (StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(StartResponse { id, status_url, status_query_get_uri }))
        .into_response()
}

/// Asks Duro's HTTP API for a signed status link (no key needed by whoever holds it).
async fn signed_status_link(state: &AppState, id: &str) -> Option<String> {
    let base = state.config.duro_http_url.as_deref()?;
    let url = format!(
        "{}/runtime/webhooks/durabletask/instances/{id}/signedLinks?signedLinkOps=status",
        base.trim_end_matches('/')
    );
    let response = state.http.post(&url).send().await.ok()?;
    if !response.status().is_success() {
        tracing::warn!(status = %response.status(), "could not get a signed link");
        return None;
    }
    let links: serde_json::Value = response.json().await.ok()?;
    links.get("statusQueryGetUri").and_then(|v| v.as_str()).map(str::to_string)
}

#[derive(Deserialize)]
struct CodeRequest {
    code: Option<String>,
}

async fn respond(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<CodeRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(CodeRequest { code: Some(code) })) = body else {
        return error(StatusCode::BAD_REQUEST, "expected JSON {\"code\": \"1234\"}");
    };
    match state.client.get_orchestration(&id, false).await {
        Ok(Some(m)) if m.status.is_terminal() => {
            return error(StatusCode::CONFLICT, "this verification is already finished")
        }
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such verification"),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
    match state.client.raise_event(&id, RESPONSE_EVENT, code.trim()).await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "id": id }))).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn status(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let m = match state.client.get_orchestration(&id, true).await {
        Ok(Some(m)) => m,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such verification"),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let body = match m.status {
        OrchestrationStatus::Completed => {
            let verified = m.output::<bool>().unwrap_or(false);
            json!({
                "id": id,
                "status": if verified { "verified" } else { "failed" },
            })
        }
        OrchestrationStatus::Failed | OrchestrationStatus::Terminated | OrchestrationStatus::Canceled => {
            json!({
                "id": id,
                "status": "failed",
                "error": m.failure_details.map(|d| d.to_string()).unwrap_or_else(|| format!("{:?}", m.status)),
            })
        }
        _ => {
            let progress = m.custom_status::<Progress>().ok();
            json!({
                "id": id,
                "status": "pending",
                "attemptsLeft": progress.as_ref().map(|p| p.attempts_left),
                "expiresAt": progress.as_ref().map(|p| p.expires_at.clone()),
            })
        }
    };
    (StatusCode::OK, Json(body)).into_response()
}
