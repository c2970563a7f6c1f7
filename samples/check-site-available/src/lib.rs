//! Check site available: `CheckSiteAvailable` GETs a URL with durable HTTP (`call_http`: the
//! sidecar makes the request and records the response) and reports whether it answered 2xx.

use duro_sdk::{DurableHttpRequest, Failure, OrchestrationContext, Worker};
use serde::{Deserialize, Serialize};

/// Orchestration name.
pub const ORCHESTRATION: &str = "CheckSiteAvailable";

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SiteStatus {
    /// The URL checked.
    pub url: String,
    /// Whether it answered 2xx.
    pub available: bool,
    /// Its status code, if it answered.
    pub status_code: Option<u16>,
    /// Why the request failed, if it did (unreachable, refused by the address guard, …).
    pub error: Option<String>,
}

/// The orchestrator: input is the URL.
pub async fn check_site_available(ctx: OrchestrationContext, url: String) -> Result<SiteStatus, Failure> {
    match ctx.call_http(DurableHttpRequest::get(&url)).await {
        Ok(response) => Ok(SiteStatus {
            available: response.is_success(),
            status_code: Some(response.status_code),
            url,
            error: None,
        }),
        Err(e) => Ok(SiteStatus { url, available: false, status_code: None, error: Some(e.to_string()) }),
    }
}

/// Registers the orchestrator (durable HTTP needs no activity of ours).
pub fn register(worker: &mut Worker) {
    worker.add_orchestrator(ORCHESTRATION, check_site_available);
}
