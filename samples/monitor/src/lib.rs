//! Monitor: `JobMonitor` checks a job's status every `intervalSeconds` on a durable timer and
//! restarts itself with `continue_as_new` after each check (so its history stays small),
//! until the job reports `Completed` (→ `SendAlert`, outcome `completed`) or the monitor's
//! expiry passes (outcome `expired`). The expiry is fixed on the first run and carried over
//! in the input.

use std::sync::Arc;

use duro_sdk::chrono::{DateTime, TimeDelta, Utc};
use duro_sdk::{ActivityContext, Failure, OrchestrationContext, Worker};
use serde::{Deserialize, Serialize};

/// Orchestration name.
pub const ORCHESTRATION: &str = "JobMonitor";

/// Input (and continue-as-new state).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MonitorInput {
    /// The job to watch.
    pub job_id: String,
    /// Seconds between checks.
    pub interval_seconds: u64,
    /// How long to watch at most, from the first run.
    pub max_duration_seconds: u64,
    /// Set on the first run: when to give up (RFC 3339).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Checks done so far.
    #[serde(default)]
    pub checks: u32,
}

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MonitorResult {
    /// `completed` or `expired`.
    pub outcome: String,
    /// Status checks made.
    pub checks: u32,
}

/// The orchestrator.
pub async fn job_monitor(ctx: OrchestrationContext, mut input: MonitorInput) -> Result<MonitorResult, Failure> {
    let now = ctx.current_utc_datetime();
    let expires_at: DateTime<Utc> = match &input.expires_at {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| Failure::new("BadInput", format!("expiresAt: {e}")))?
            .with_timezone(&Utc),
        None => now + TimeDelta::seconds(i64::try_from(input.max_duration_seconds).unwrap_or(0)),
    };
    let status: String = ctx.call_activity("GetJobStatus", &input.job_id).await?;
    input.checks += 1;
    ctx.set_custom_status(format!("check {}: {status}", input.checks));
    if status == "Completed" {
        ctx.call_activity::<()>("SendAlert", format!("job {} completed", input.job_id)).await?;
        return Ok(MonitorResult { outcome: "completed".into(), checks: input.checks });
    }
    let next = ctx.current_utc_datetime() + TimeDelta::seconds(i64::try_from(input.interval_seconds).unwrap_or(0));
    if next > expires_at {
        return Ok(MonitorResult { outcome: "expired".into(), checks: input.checks });
    }
    ctx.create_timer_at(next).await?;
    input.expires_at = Some(expires_at.to_rfc3339());
    ctx.continue_as_new(&input, true);
    Ok(MonitorResult { outcome: "continued".into(), checks: input.checks })
}

/// Where activities look up job status and send alerts (a real app would call an API).
pub trait JobBackend: Send + Sync + 'static {
    /// `Running`, `Completed`, …
    fn status(&self, job_id: &str) -> String;
    /// Notifies someone.
    fn alert(&self, message: &str);
}

/// Registers the orchestrator and its activities.
pub fn register(worker: &mut Worker, backend: Arc<dyn JobBackend>) {
    let b2 = Arc::clone(&backend);
    worker
        .add_orchestrator(ORCHESTRATION, job_monitor)
        .add_activity("GetJobStatus", move |_: ActivityContext, job: String| {
            let b = Arc::clone(&backend);
            async move { Ok(b.status(&job)) }
        })
        .add_activity("SendAlert", move |_: ActivityContext, message: String| {
            let b = Arc::clone(&b2);
            async move {
                b.alert(&message);
                Ok(())
            }
        });
}

/// A pretend job that completes after `ticks` checks (used by the demo binary).
#[derive(Debug)]
pub struct CountdownJob {
    remaining: std::sync::atomic::AtomicU32,
}

impl CountdownJob {
    /// Completes at the `ticks`th check.
    pub fn new(ticks: u32) -> Self {
        Self { remaining: std::sync::atomic::AtomicU32::new(ticks) }
    }
}

impl JobBackend for CountdownJob {
    fn status(&self, _: &str) -> String {
        use std::sync::atomic::Ordering;
        let left = self.remaining.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        if left == 0 { "Completed" } else { "Running" }.into()
    }
    fn alert(&self, message: &str) {
        println!("ALERT: {message}");
    }
}
