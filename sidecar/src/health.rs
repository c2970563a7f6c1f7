//! Health: liveness and readiness, for `/healthz`, `/readyz` and the gRPC health checking
//! protocol (`grpc.health.v1.Health`).
//!
//! Owns: deciding whether the sidecar is ready, from three checks: the store can commit (a
//! real write through the writer thread, [`Store::probe`], so a dead writer or a disk that
//! refuses writes fails it), the gRPC server is serving, and no shutdown is under way. A
//! probe's result is reused for [`PROBE_REUSE`], so probes sent by anyone who can reach the
//! unauthenticated health endpoints cost at most one small commit per that interval. The
//! answers name the checks and their state only, never an error text or a path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tonic_health::ServingStatus;

use crate::store::Store;

/// How long one probe's result answers readiness questions.
pub const PROBE_REUSE: Duration = Duration::from_secs(1);
/// A probe that takes longer than this counts as failing (the writer is stuck or the disk hangs).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the gRPC health status is brought up to date.
pub const GRPC_STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// The gRPC service name of the sidecar protocol (its `.proto` has no package).
pub const SIDECAR_SERVICE: &str = "TaskHubSidecarService";

/// State of one readiness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Ok,
    Failing,
}

/// Readiness and the state of each check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// A real write commits.
    pub store: Check,
    /// The gRPC server accepts calls.
    pub grpc: Check,
    /// No shutdown is under way.
    pub running: Check,
}

impl Readiness {
    /// Pure: ready when every check is.
    pub fn of(store: bool, grpc: bool, running: bool) -> Readiness {
        let c = |ok| if ok { Check::Ok } else { Check::Failing };
        Readiness { ready: store && grpc && running, store: c(store), grpc: c(grpc), running: c(running) }
    }
}

/// Shared by the HTTP routes, the gRPC health service and the server's wiring.
pub struct Health {
    store: Arc<dyn Store>,
    grpc_serving: AtomicBool,
    stopping: AtomicBool,
    /// The last probe: when it finished and whether it committed. The async mutex makes
    /// concurrent readiness questions share one probe.
    last_probe: tokio::sync::Mutex<Option<(Instant, bool)>>,
    reporter: tonic_health::server::HealthReporter,
}

impl Health {
    /// A health state for `store`, and the gRPC health service that reports it.
    pub fn new(
        store: Arc<dyn Store>,
    ) -> (Arc<Health>, tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>)
    {
        let (reporter, service) = tonic_health::server::health_reporter();
        let health = Arc::new(Health {
            store,
            grpc_serving: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            last_probe: tokio::sync::Mutex::new(None),
            reporter,
        });
        (health, service)
    }

    /// The gRPC server started (or stopped) serving. The gRPC health status follows at the
    /// next [`Health::run`] round (the first one runs at once).
    pub fn set_grpc_serving(&self, serving: bool) {
        self.grpc_serving.store(serving, Ordering::SeqCst);
    }

    /// Shutdown began: not ready any more, whatever the other checks say.
    pub async fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.grpc_serving.store(false, Ordering::SeqCst);
        for name in ["", SIDECAR_SERVICE] {
            self.reporter.set_service_status(name, ServingStatus::NotServing).await;
        }
    }

    /// Whether the store commits: the last probe if recent, else a new one.
    async fn store_ok(&self) -> bool {
        let mut last = self.last_probe.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < PROBE_REUSE {
                return ok;
            }
        }
        let ok = match tokio::time::timeout(PROBE_TIMEOUT, self.store.probe()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if last.is_none_or(|(_, was_ok)| was_ok) {
                    tracing::warn!(error = %e, "readiness: the store cannot commit; not ready");
                }
                false
            }
            Err(_) => {
                if last.is_none_or(|(_, was_ok)| was_ok) {
                    tracing::warn!(timeout = ?PROBE_TIMEOUT, "readiness: a store probe did not commit in time; not ready");
                }
                false
            }
        };
        if ok && last.is_some_and(|(_, was_ok)| !was_ok) {
            tracing::info!("readiness: the store commits again; ready");
        }
        *last = Some((Instant::now(), ok));
        ok
    }

    /// Runs the checks (a store probe at most every [`PROBE_REUSE`]).
    pub async fn readiness(&self) -> Readiness {
        let store = self.store_ok().await;
        Readiness::of(store, self.grpc_serving.load(Ordering::SeqCst), !self.stopping.load(Ordering::SeqCst))
    }

    /// Brings the gRPC health status (overall and the sidecar service's) up to date.
    pub async fn publish(&self) {
        let status = if self.readiness().await.ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        for name in ["", SIDECAR_SERVICE] {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Keeps the gRPC health status current until shutdown: now, then every
    /// [`GRPC_STATUS_INTERVAL`].
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.publish() => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(GRPC_STATUS_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_is() {
        assert!(Readiness::of(true, true, true).ready);
        for (s, g, r) in [(false, true, true), (true, false, true), (true, true, false)] {
            let rd = Readiness::of(s, g, r);
            assert!(!rd.ready, "{rd:?}");
        }
        let rd = Readiness::of(false, true, true);
        assert_eq!((rd.store, rd.grpc, rd.running), (Check::Failing, Check::Ok, Check::Ok));
        let json = serde_json::to_value(rd).unwrap();
        assert_eq!(json, serde_json::json!({"ready": false, "store": "failing", "grpc": "ok", "running": "ok"}));
    }
}
