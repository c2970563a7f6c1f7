//! Async HTTP APIs, both ways:
//!
//! * **Calling one**: `CallLongRunningApi` POSTs to an API that answers `202 Accepted` with a
//!   `Location` (and `Retry-After`); durable HTTP polls that location on durable timers until
//!   a final answer, which becomes the orchestration's output. A sidecar restart during the
//!   wait loses nothing.
//! * **Being one**: clients start the orchestration through Duro's HTTP API
//!   (`POST /runtime/webhooks/durabletask/orchestrators/CallLongRunningApi`), get `202` +
//!   `Location`, and poll that status URL until `runtimeStatus` is `Completed`.
//!
//! [`lro_api`] is a small long-running-operation API to call, shipped with the sample.
//! The custom status says `waiting for the API`, then `done`.

pub mod lro_api;

use duro_sdk::{DurableHttpRequest, Failure, OrchestrationContext, Worker};
use serde::{Deserialize, Serialize};

/// Orchestration name.
pub const ORCHESTRATION: &str = "CallLongRunningApi";

/// Input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiCall {
    /// The API that starts the work (answers 202 + Location).
    pub url: String,
    /// JSON body to POST.
    pub body: serde_json::Value,
}

/// Result: the final status code and JSON body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiResult {
    /// Final status code.
    pub status_code: u16,
    /// Final body (JSON, or a string if it is not JSON).
    pub body: serde_json::Value,
}

/// The orchestrator.
pub async fn call_long_running_api(ctx: OrchestrationContext, call: ApiCall) -> Result<ApiResult, Failure> {
    let request = DurableHttpRequest::post(&call.url, call.body.to_string())
        .with_header("Content-Type", "application/json")
        .with_asynchronous_pattern(true);
    ctx.set_custom_status("waiting for the API");
    let response = ctx.call_http(request).await?;
    ctx.set_custom_status("done");
    let body =
        response.json().unwrap_or_else(|_| serde_json::Value::String(response.content.clone().unwrap_or_default()));
    Ok(ApiResult { status_code: response.status_code, body })
}

/// Registers the orchestrator.
pub fn register(worker: &mut Worker) {
    worker.add_orchestrator(ORCHESTRATION, call_long_running_api);
}
