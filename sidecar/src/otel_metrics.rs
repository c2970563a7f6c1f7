//! OpenTelemetry metrics over OTLP/HTTP, when `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set: the counters and gauges that `/stats` serves
//! ([`crate::metrics::Snapshot`]), exported every `OTEL_METRIC_EXPORT_INTERVAL` ms (default
//! 60000). Prometheus (`/metrics`) stays the complete source, histograms included.
//!
//! A task reads a fresh snapshot (one store query, as a scrape does) once per interval;
//! the SDK's observable instruments report the latest one when its periodic reader exports.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use parking_lot::Mutex;

use crate::engine::Engine;
use crate::metrics::Snapshot;

/// The metrics exporter; flushes on shutdown.
pub struct OtelMetrics {
    provider: SdkMeterProvider,
}

impl OtelMetrics {
    /// Exports what is pending (bounded by the exporter's timeout).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OpenTelemetry: flushing metrics at shutdown failed");
        }
    }
}

/// Whether the environment configures a metrics exporter.
pub fn configured() -> bool {
    ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

fn interval() -> Duration {
    std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(60))
}

/// Starts exporting when [`configured`]; `Ok(None)` otherwise. Must run inside the runtime.
pub fn start(engine: Engine) -> Result<Option<OtelMetrics>, String> {
    if !configured() {
        return Ok(None);
    }
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(crate::otel::http_client()?)
        .build()
        .map_err(|e| format!("invalid OpenTelemetry metrics exporter configuration (OTEL_EXPORTER_OTLP_*): {e}"))?;
    let every = interval();
    let reader = PeriodicReader::builder(exporter).with_interval(every).build();
    let provider = SdkMeterProvider::builder().with_reader(reader).with_resource(crate::otel::resource()).build();
    let latest: Arc<Mutex<Option<Snapshot>>> = Arc::default();
    register(&provider.meter("duro"), &latest);
    let mut shutdown = engine.shutdown_signal();
    tokio::spawn(async move {
        loop {
            let snapshot = crate::metrics::snapshot(&engine).await;
            *latest.lock() = Some(snapshot);
            tokio::select! {
                _ = tokio::time::sleep(every / 2) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
    tracing::info!(interval_ms = every.as_millis() as u64, "OpenTelemetry metrics are exported over OTLP/HTTP");
    Ok(Some(OtelMetrics { provider }))
}

/// Reads the points of one instrument from a snapshot: (value, attributes).
type Points = fn(&Snapshot) -> Vec<(u64, Vec<KeyValue>)>;

/// One observable instrument per figure of the snapshot; each reports the latest snapshot.
fn register(meter: &Meter, latest: &Arc<Mutex<Option<Snapshot>>>) {
    // Gauges and counters differ only in the builder; the callback reads the latest snapshot.
    macro_rules! observable {
        ($builder:ident, $name:expr, $what:expr, $read:expr) => {{
            let latest = latest.clone();
            let read: Points = $read;
            meter
                .$builder($name)
                .with_description($what)
                .with_callback(move |o| {
                    if let Some(s) = latest.lock().as_ref() {
                        for (v, attrs) in read(s) {
                            o.observe(v, &attrs);
                        }
                    }
                })
                .build();
        }};
    }
    let gauge =
        |name: &'static str, what: &'static str, read: Points| observable!(u64_observable_gauge, name, what, read);
    let counter =
        |name: &'static str, what: &'static str, read: Points| observable!(u64_observable_counter, name, what, read);
    gauge("duro.instances", "Instances in the store by runtime status", |s| {
        s.instances.iter().map(|(status, n)| (*n, vec![KeyValue::new("status", *status)])).collect()
    });
    gauge("duro.queue_depth", "Orchestration events visible and unconsumed; activities not completed", |s| {
        vec![
            (s.ready_events, vec![KeyValue::new("kind", crate::metrics::ORCHESTRATION)]),
            (s.activities, vec![KeyValue::new("kind", crate::metrics::ACTIVITY)]),
        ]
    });
    gauge("duro.timers_waiting", "Inbox events waiting for their time", |s| vec![(s.timers_waiting, vec![])]);
    gauge("duro.worker_streams", "Connected GetWorkItems streams", |s| vec![(s.worker_streams, vec![])]);
    gauge("duro.leases", "Work items leased to workers now", |s| vec![(s.leases, vec![])]);
    meter
        .f64_observable_gauge("duro.queue_oldest_ready_age_seconds")
        .with_description("Age of the oldest visible, unconsumed orchestration event")
        .with_callback({
            let latest = latest.clone();
            move |o| {
                if let Some(s) = latest.lock().as_ref() {
                    o.observe(s.oldest_ready_age_seconds, &[]);
                }
            }
        })
        .build();
    counter("duro.leases_expired", "Turns whose lease timed out before the worker answered", |s| {
        vec![(s.leases_expired, vec![])]
    });
    counter("duro.work_items_dispatched", "Work items sent to workers, by kind", |s| {
        s.dispatched.iter().map(|(kind, n)| (*n, vec![KeyValue::new("kind", *kind)])).collect()
    });
    counter("duro.work_items_completed", "Work items whose answer committed, by kind", |s| {
        s.completed.iter().map(|(kind, n)| (*n, vec![KeyValue::new("kind", *kind)])).collect()
    });
}
