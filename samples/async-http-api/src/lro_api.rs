//! A small long-running-operation API to call, shipped with the sample (no internet needed):
//!
//! * `POST /jobs` with a JSON body (`{"seconds": N}` sets the job's duration, default 3)
//!   answers `202 Accepted`, `Location: <base>/jobs/{id}`, `Retry-After: 1`;
//! * `GET /jobs/{id}` answers `202` with the same headers while the job runs, then `200`
//!   with `{"id", "status": "done", "input", "result"}`; unknown ids get `404`.
//!
//! Durable HTTP follows the `Location` on durable timers until the `200`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Default duration of a job.
pub const DEFAULT_SECONDS: u64 = 3;

struct Job {
    input: Value,
    done_at: Instant,
}

/// The API's state: jobs by id, and how many status polls it answered.
#[derive(Clone, Default)]
pub struct LroApi {
    jobs: Arc<Mutex<HashMap<u64, Job>>>,
    polls: Arc<Mutex<u64>>,
}

impl LroApi {
    /// Status requests answered so far (`GET /jobs/{id}`).
    pub fn polls(&self) -> u64 {
        self.polls.lock().map(|p| *p).unwrap_or(0)
    }

    /// The axum router serving the API.
    pub fn router(&self) -> Router {
        Router::new().route("/jobs", post(start_job)).route("/jobs/{id}", get(job_status)).with_state(self.clone())
    }
}

/// `http://<Host header>`: where the caller reached us, for absolute `Location`s.
fn base(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn accepted(headers: &HeaderMap, id: u64) -> Response {
    let location = format!("{}/jobs/{id}", base(headers));
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location), (header::RETRY_AFTER, "1".to_string())],
        Json(json!({ "id": id, "status": "running" })),
    )
        .into_response()
}

async fn start_job(State(api): State<LroApi>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    let input = body.map(|Json(v)| v).unwrap_or(Value::Null);
    let seconds = input.get("seconds").and_then(Value::as_u64).unwrap_or(DEFAULT_SECONDS).min(3600);
    let Ok(mut jobs) = api.jobs.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let id = jobs.len() as u64 + 1;
    jobs.insert(id, Job { input, done_at: Instant::now() + Duration::from_secs(seconds) });
    drop(jobs);
    accepted(&headers, id)
}

async fn job_status(State(api): State<LroApi>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    if let Ok(mut polls) = api.polls.lock() {
        *polls += 1;
    }
    let Ok(jobs) = api.jobs.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match jobs.get(&id) {
        None => (StatusCode::NOT_FOUND, Json(json!({ "error": format!("no job {id}") }))).into_response(),
        Some(job) if Instant::now() < job.done_at => accepted(&headers, id),
        Some(job) => Json(json!({
            "id": id,
            "status": "done",
            "input": job.input,
            "result": { "answer": 42 },
        }))
        .into_response(),
    }
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, api: LroApi) -> std::io::Result<()> {
    axum::serve(listener, api.router()).await
}
