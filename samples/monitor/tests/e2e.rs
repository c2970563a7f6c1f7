//! Runs `JobMonitor` on the real `duro` binary.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use duro_sdk::Client;
use duro_testkit::{sdk, Sidecar};
use monitor::{CountdownJob, JobBackend, MonitorInput, MonitorResult};

struct Recorder {
    job: CountdownJob,
    alerts: Mutex<Vec<String>>,
}

impl JobBackend for Recorder {
    fn status(&self, id: &str) -> String {
        self.job.status(id)
    }
    fn alert(&self, message: &str) {
        self.alerts.lock().unwrap().push(message.to_string());
    }
}

fn input(interval: u64, max: u64) -> MonitorInput {
    MonitorInput {
        job_id: "job-7".into(),
        interval_seconds: interval,
        max_duration_seconds: max,
        expires_at: None,
        checks: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stops_when_the_job_completes() {
    let duro = Sidecar::builder().allow_loopback_http().start();
    let backend = Arc::new(Recorder { job: CountdownJob::new(3), alerts: Mutex::default() });
    let b: Arc<dyn JobBackend> = backend.clone();
    let worker = sdk::start_worker(&duro, |w| monitor::register(w, b)).await;
    let client = Client::connect(duro.endpoint()).await.unwrap();
    let id = client.start_orchestration(monitor::ORCHESTRATION, input(1, 60)).await.unwrap();
    let state = client.wait_for_completion(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(state.output::<MonitorResult>().unwrap(), MonitorResult { outcome: "completed".into(), checks: 3 });
    assert_eq!(*backend.alerts.lock().unwrap(), ["job job-7 completed"]);
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn gives_up_at_expiry() {
    let duro = Sidecar::builder().allow_loopback_http().start();
    let backend = Arc::new(Recorder { job: CountdownJob::new(1000), alerts: Mutex::default() });
    let b: Arc<dyn JobBackend> = backend.clone();
    let worker = sdk::start_worker(&duro, |w| monitor::register(w, b)).await;
    let client = Client::connect(duro.endpoint()).await.unwrap();
    let id = client.start_orchestration(monitor::ORCHESTRATION, input(1, 2)).await.unwrap();
    let state = client.wait_for_completion(&id, Duration::from_secs(30)).await.unwrap();
    let result = state.output::<MonitorResult>().unwrap();
    assert_eq!(result.outcome, "expired");
    assert!((2..=3).contains(&result.checks), "{result:?}");
    assert!(backend.alerts.lock().unwrap().is_empty());
    worker.shutdown().await.unwrap();
}
