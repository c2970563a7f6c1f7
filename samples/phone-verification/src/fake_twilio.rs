//! A fake Twilio Messaging API for tests and local runs.
//!
//! * `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`: checks basic auth (the account
//!   SID and auth token it was started with) and the form fields like Twilio does, answering
//!   with Twilio-shaped JSON: a message resource (`sid` `SM…`, `status` `queued`) or an error
//!   `{"code":21211,"message":…,"more_info":…,"status":400}`.
//! * `GET /_test/messages`: the messages received so far (JSON array).
//! * `POST /_test/fail_next?count=N&status=503`: the next N sends answer with that status
//!   (to exercise retries).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A message the fake received.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// `SM…`.
    pub sid: String,
    /// Recipient.
    pub to: String,
    /// Sender.
    pub from: String,
    /// Text.
    pub body: String,
}

#[derive(Debug, Default)]
struct Inner {
    messages: Vec<ReceivedMessage>,
    fail_next: u32,
    fail_status: u16,
}

#[derive(Debug, Clone)]
struct AppState {
    account_sid: String,
    auth_token: String,
    inner: Arc<Mutex<Inner>>,
}

/// A running fake; stops when dropped.
#[derive(Debug)]
pub struct FakeTwilio {
    /// `http://127.0.0.1:PORT`: use as `TWILIO_BASE_URL`.
    pub base_url: String,
    state: AppState,
    task: tokio::task::JoinHandle<()>,
}

impl FakeTwilio {
    /// Serves on `addr` (port 0 picks a free one) accepting these credentials.
    pub async fn start(addr: SocketAddr, account_sid: &str, auth_token: &str) -> std::io::Result<FakeTwilio> {
        let state = AppState {
            account_sid: account_sid.to_string(),
            auth_token: auth_token.to_string(),
            inner: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeTwilio { base_url, state, task })
    }

    /// Messages received so far.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        lock(&self.state.inner).messages.clone()
    }

    /// The next `count` sends answer with HTTP `status`.
    pub fn fail_next(&self, count: u32, status: u16) {
        let mut inner = lock(&self.state.inner);
        inner.fail_next = count;
        inner.fail_status = status;
    }
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", post(create_message))
        .route("/_test/messages", get(list_messages))
        .route("/_test/fail_next", post(set_fail_next))
        .with_state(state)
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        Json(json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value.trim()) else {
        return false;
    };
    let expected = format!("{}:{}", state.account_sid, state.auth_token);
    decoded == expected.as_bytes()
}

async fn create_message(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&state, &headers) || sid != state.account_sid {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    {
        let mut inner = lock(&state.inner);
        if inner.fail_next > 0 {
            inner.fail_next -= 1;
            let status = StatusCode::from_u16(inner.fail_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return twilio_error(status, 20500, "Injected failure");
        }
    }
    let form: HashMap<String, String> = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(_) => return twilio_error(StatusCode::BAD_REQUEST, 20001, "Invalid form body"),
    };
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let (to, from, text) = (field("To"), field("From"), field("Body"));
    if to.is_empty() {
        return twilio_error(StatusCode::BAD_REQUEST, 21604, "A 'To' phone number is required.");
    }
    if !is_e164(to) {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    if from.is_empty() {
        return twilio_error(StatusCode::BAD_REQUEST, 21603, "A 'From' phone number is required.");
    }
    if text.is_empty() {
        return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    }
    let message_sid = format!("SM{}", hex32());
    lock(&state.inner).messages.push(ReceivedMessage {
        sid: message_sid.clone(),
        to: to.to_string(),
        from: from.to_string(),
        body: text.to_string(),
    });
    let uri = format!("/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json");
    (
        StatusCode::CREATED,
        Json(json!({
            "account_sid": sid,
            "api_version": "2010-04-01",
            "body": text,
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": from,
            "num_media": "0",
            "num_segments": "1",
            "price": null,
            "sid": message_sid,
            "status": "queued",
            "to": to,
            "uri": uri,
        })),
    )
        .into_response()
}

fn hex32() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..32).map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0')).collect()
}

async fn list_messages(State(state): State<AppState>) -> Json<Vec<ReceivedMessage>> {
    Json(lock(&state.inner).messages.clone())
}

#[derive(Deserialize)]
struct FailNext {
    count: u32,
    status: Option<u16>,
}

async fn set_fail_next(State(state): State<AppState>, Query(q): Query<FailNext>) -> StatusCode {
    let mut inner = lock(&state.inner);
    inner.fail_next = q.count;
    inner.fail_status = q.status.unwrap_or(503);
    StatusCode::NO_CONTENT
}
