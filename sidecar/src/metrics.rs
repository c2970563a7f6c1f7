//! Metrics: what the sidecar counts, and their Prometheus text rendering (`/metrics`) and
//! JSON snapshot (`/stats`).
//!
//! Owns: the process-wide registry and every metric in it, the cap on label values taken
//! from user data (orchestration and activity names), and reading the gauges that are
//! computed at scrape time (scheduler counts, store counts). Other modules call the small
//! hook functions here (`dispatched`, `completed`, `store_commit`, …); nothing else
//! touches the registry, and no metric decides anything.
//!
//! Crate: `prometheus-client`, the Prometheus project's own Rust client (OpenMetrics text
//! format, typed label sets, no `unsafe`, no global recorder to install): the reference
//! implementation of the exposition format that Prometheus and every OpenMetrics scraper
//! read. The registry is one process-wide value because a `duro` process runs one engine;
//! tests that start several engines in one process share it, so they never assert exact
//! counts on it (the integration tests scrape a real `duro` process instead).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::engine::Engine;

/// Distinct orchestration/activity names kept as label values; later names count as `other`.
pub const MAX_NAMES: usize = 200;
/// Longest name kept as a label value (longer ones are cut).
const MAX_NAME_CHARS: usize = 120;
/// The label value of every name beyond [`MAX_NAMES`].
pub const OTHER: &str = "other";
/// Work items whose dispatch time is remembered for the latency histograms, at most.
const MAX_IN_FLIGHT: usize = 100_000;

/// `kind` label values.
pub const ORCHESTRATION: &str = "orchestration";
pub const ACTIVITY: &str = "activity";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindName {
    kind: &'static str,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindNameOutcome {
    kind: &'static str,
    name: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

struct Metrics {
    registry: Registry,
    names: Mutex<HashSet<String>>,
    in_flight: Mutex<HashMap<String, (Instant, &'static str, String)>>,
    dispatched: Family<KindName, Counter>,
    completed: Family<KindNameOutcome, Counter>,
    turn_seconds: HistogramFamily<NameLabel>,
    activity_seconds: HistogramFamily<NameLabel>,
    commit_group: Histogram,
    commit_seconds: Histogram,
    commit_failures: Counter,
    leases_lost: Counter,
    leases_expired: Counter,
    poison: Family<KindLabel, Counter>,
    instances: Family<StatusLabel, Gauge>,
    queue_depth: Family<KindLabel, Gauge>,
    timers_waiting: Gauge,
    oldest_ready_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    streams: Gauge,
    durable_http_requests: Family<OutcomeLabel, Counter>,
    durable_http_polls: Counter,
    token_acquisitions: Family<OutcomeLabel, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("duro");
        let m = Metrics {
            names: Mutex::new(HashSet::new()),
            in_flight: Mutex::new(HashMap::new()),
            dispatched: Family::default(),
            completed: Family::default(),
            turn_seconds: Family::new_with_constructor(latency_histogram),
            activity_seconds: Family::new_with_constructor(latency_histogram),
            // 1 … 512 writes (the writer's group cap).
            commit_group: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            // 0.1 ms … ~3 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            commit_failures: Counter::default(),
            leases_lost: Counter::default(),
            leases_expired: Counter::default(),
            poison: Family::default(),
            instances: Family::default(),
            queue_depth: Family::default(),
            timers_waiting: Gauge::default(),
            oldest_ready_age: Gauge::default(),
            streams: Gauge::default(),
            durable_http_requests: Family::default(),
            durable_http_polls: Counter::default(),
            token_acquisitions: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "work_items_dispatched",
            "Work items sent to workers, by kind (orchestration turn, activity) and name",
            m.dispatched.clone(),
        );
        r.register(
            "work_items_completed",
            "Work items completed by workers and committed, by kind, name and outcome (ok, failed)",
            m.completed.clone(),
        );
        r.register(
            "turn_duration_seconds",
            "Orchestration turns: from sending the work item to committing the worker's answer",
            m.turn_seconds.clone(),
        );
        r.register(
            "activity_duration_seconds",
            "Activities: from sending the work item to committing its result",
            m.activity_seconds.clone(),
        );
        r.register("store_commit_group_size", "Writes committed together in one transaction", m.commit_group.clone());
        r.register(
            "store_commit_duration_seconds",
            "Time of one group commit (statements, COMMIT and fsync)",
            m.commit_seconds.clone(),
        );
        r.register("store_commit_failures", "Group commits that stored nothing", m.commit_failures.clone());
        r.register(
            "leases_lost",
            "Instance leases lost to another sidecar sharing the task hub (expired, then claimed)",
            m.leases_lost.clone(),
        );
        r.register("leases_expired", "Orchestration turns whose lease timed out before the worker answered", {
            m.leases_expired.clone()
        });
        r.register(
            "poison_failures",
            "Work items failed as poison (DuroPoisonWorkItem) after too many deliveries, by kind",
            m.poison.clone(),
        );
        r.register("instances", "Instances in the store by runtime status", m.instances.clone());
        r.register(
            "queue_depth",
            "Work waiting in the store: orchestration events visible now (kind=orchestration), activities scheduled \
             and not completed (kind=activity)",
            m.queue_depth.clone(),
        );
        r.register(
            "timers_waiting",
            "Inbox events waiting for their time (durable timers, scheduled starts)",
            m.timers_waiting.clone(),
        );
        r.register(
            "queue_oldest_ready_age_seconds",
            "Age of the oldest orchestration event visible and not yet consumed by a committed turn",
            m.oldest_ready_age.clone(),
        );
        r.register("worker_streams", "Connected GetWorkItems streams", m.streams.clone());
        r.register(
            "durable_http_requests",
            "Durable HTTP calls (BuiltIn::HttpActivity) finished, by outcome (ok, failed)",
            m.durable_http_requests.clone(),
        );
        r.register("durable_http_polls", "202/Location polls sent by durable HTTP", m.durable_http_polls.clone());
        r.register(
            "token_acquisitions",
            "Access tokens requested from the identity source for durable HTTP, by outcome (never the token)",
            m.token_acquisitions.clone(),
        );
        Metrics { registry, ..m }
    }

    /// `name` as a label value: the first [`MAX_NAMES`] distinct names are kept, every
    /// later one is `other`, so user data cannot grow the series without bound.
    fn label(&self, name: &str) -> String {
        let name: String = name.chars().take(MAX_NAME_CHARS).collect();
        let mut names = self.names.lock();
        if names.contains(&name) {
            return name;
        }
        if names.len() < MAX_NAMES {
            names.insert(name.clone());
            return name;
        }
        OTHER.to_string()
    }
}

/// A work item was sent to a worker (`token`: its completion token, to time it).
pub fn dispatched(kind: &'static str, name: &str, token: &str) {
    let m = &*METRICS;
    let name = m.label(name);
    m.dispatched.get_or_create(&KindName { kind, name: name.clone() }).inc();
    let mut in_flight = m.in_flight.lock();
    if in_flight.len() >= MAX_IN_FLIGHT {
        // Leases that never came back (their stream died before a release was seen):
        // forget them rather than grow; a few latencies go unobserved.
        in_flight.clear();
    }
    in_flight.insert(token.to_string(), (Instant::now(), kind, name));
}

/// A work item's answer was committed (its trace span ends too).
pub fn completed(kind: &'static str, name: &str, token: &str, ok: bool) {
    let m = &*METRICS;
    let outcome = if ok { "ok" } else { "failed" };
    let started = m.in_flight.lock().remove(token);
    let name = match started {
        Some((at, _, name)) => {
            let h = if kind == ORCHESTRATION { &m.turn_seconds } else { &m.activity_seconds };
            h.get_or_create(&NameLabel { name: name.clone() }).observe(at.elapsed().as_secs_f64());
            name
        }
        None => m.label(name),
    };
    m.completed.get_or_create(&KindNameOutcome { kind, name, outcome }).inc();
    crate::otel::completed(token, ok);
}

/// A lease ended without a committed answer (abandoned, redelivered, stream gone).
pub fn released(token: &str) {
    METRICS.in_flight.lock().remove(token);
    crate::otel::released(token);
}

/// A sidecar sharing its task hub found an instance lease lost to another sidecar.
pub fn lease_lost() {
    METRICS.leases_lost.inc();
}

/// A work item failed as poison.
pub fn poison(kind: &'static str) {
    METRICS.poison.get_or_create(&KindLabel { kind }).inc();
}

/// One group commit of the store's writer: how many writes, how long, whether it stored them.
pub fn store_commit(writes: usize, took: Duration, ok: bool) {
    let m = &*METRICS;
    m.commit_group.observe(writes as f64);
    m.commit_seconds.observe(took.as_secs_f64());
    if !ok {
        m.commit_failures.inc();
    }
}

/// A durable HTTP call ended.
pub fn durable_http_request(ok: bool) {
    METRICS.durable_http_requests.get_or_create(&OutcomeLabel { outcome: if ok { "ok" } else { "failed" } }).inc();
}

/// Durable HTTP sent a poll to a `Location`.
pub fn durable_http_poll() {
    METRICS.durable_http_polls.inc();
}

/// An access token request to the identity source ended.
pub fn token_acquisition(ok: bool) {
    METRICS.token_acquisitions.get_or_create(&OutcomeLabel { outcome: if ok { "ok" } else { "failed" } }).inc();
}

/// Status label values, in the SDKs' spelling.
fn status_name(s: duro_proto::OrchestrationStatus) -> &'static str {
    use duro_proto::OrchestrationStatus as S;
    match s {
        S::Running => "running",
        S::Completed => "completed",
        S::ContinuedAsNew => "continued_as_new",
        S::Failed => "failed",
        S::Canceled => "canceled",
        S::Terminated => "terminated",
        S::Pending => "pending",
        S::Suspended => "suspended",
    }
}

const STATUSES: [duro_proto::OrchestrationStatus; 8] = {
    use duro_proto::OrchestrationStatus as S;
    [S::Pending, S::Running, S::Suspended, S::Completed, S::Failed, S::Terminated, S::Canceled, S::ContinuedAsNew]
};

/// A read-only picture of the sidecar now: what `/stats` serves and a dashboard can show.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Instances per runtime status (every status, zero included).
    pub instances: BTreeMap<&'static str, u64>,
    /// Orchestration events visible now and not consumed by a committed turn.
    pub ready_events: u64,
    /// Inbox events waiting for their time.
    pub timers_waiting: u64,
    /// Seconds since the oldest ready event became visible (0 when none).
    pub oldest_ready_age_seconds: f64,
    /// Activities scheduled and not completed.
    pub activities: u64,
    /// Connected work-item streams.
    pub worker_streams: u64,
    /// Work items leased to workers (or the sidecar) now.
    pub leases: u64,
    /// Leases that timed out, since start.
    pub leases_expired: u64,
    /// Work items dispatched and completed since start, by kind.
    pub dispatched: BTreeMap<&'static str, u64>,
    pub completed: BTreeMap<&'static str, u64>,
    /// Store reads for this snapshot failed (the store counts are then zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
}

/// Reads the gauges (scheduler and store) into the registry and returns them.
pub async fn snapshot(engine: &Engine) -> Snapshot {
    let m = &*METRICS;
    let stats = engine.stats();
    let now = crate::ambient::now_ms();
    let (gauges, store_error) = match engine.store().gauges(now).await {
        Ok(g) => (g, None),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the store's counts");
            (Default::default(), Some("the store could not be read".to_string()))
        }
    };
    let mut instances = BTreeMap::new();
    for s in STATUSES {
        let n = gauges.instances_by_status.iter().find(|(st, _)| *st == s).map_or(0, |(_, n)| *n);
        instances.insert(status_name(s), n);
        m.instances.get_or_create(&StatusLabel { status: status_name(s) }).set(n as i64);
    }
    let age = gauges.oldest_ready_ms.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
    m.queue_depth.get_or_create(&KindLabel { kind: ORCHESTRATION }).set(gauges.inbox_ready as i64);
    m.queue_depth.get_or_create(&KindLabel { kind: ACTIVITY }).set(gauges.activities as i64);
    m.timers_waiting.set(gauges.inbox_waiting as i64);
    m.oldest_ready_age.set(age);
    m.streams.set(stats.streams as i64);
    // The scheduler counts expiries (it is pure); the counter follows its total.
    let expired = stats.leases_expired;
    let seen = m.leases_expired.get();
    if expired > seen {
        m.leases_expired.inc_by(expired - seen);
    }
    let mut dispatched = BTreeMap::new();
    let mut completed = BTreeMap::new();
    for kind in [ORCHESTRATION, ACTIVITY] {
        dispatched.insert(kind, 0);
        completed.insert(kind, 0);
    }
    // Families are read by label: the names seen so far (and `other`).
    let names: Vec<String> =
        m.names.lock().iter().cloned().chain(std::iter::once(OTHER.to_string())).collect::<Vec<_>>();
    for kind in [ORCHESTRATION, ACTIVITY] {
        for name in &names {
            if let Some(c) = m.dispatched.get(&KindName { kind, name: name.clone() }) {
                *dispatched.entry(kind).or_default() += c.get();
            }
            for outcome in ["ok", "failed"] {
                if let Some(c) = m.completed.get(&KindNameOutcome { kind, name: name.clone(), outcome }) {
                    *completed.entry(kind).or_default() += c.get();
                }
            }
        }
    }
    Snapshot {
        instances,
        ready_events: gauges.inbox_ready,
        timers_waiting: gauges.inbox_waiting,
        oldest_ready_age_seconds: age,
        activities: gauges.activities,
        worker_streams: stats.streams as u64,
        leases: stats.leases as u64,
        leases_expired: expired,
        dispatched,
        completed,
        store_error,
    }
}

/// The Prometheus (OpenMetrics) text exposition of every metric, gauges read now.
pub async fn render(engine: &Engine) -> String {
    snapshot(engine).await;
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry) {
        tracing::error!(error = %e, "metrics: encoding failed");
    }
    out
}

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_beyond_the_cap_fold_into_other() {
        let m = Metrics::new();
        for i in 0..MAX_NAMES {
            assert_eq!(m.label(&format!("n{i}")), format!("n{i}"));
        }
        assert_eq!(m.label("one-too-many"), OTHER);
        assert_eq!(m.label("n7"), "n7", "a name already seen keeps its label");
        assert_eq!(m.label(&"x".repeat(500)).len(), OTHER.len(), "cut names count as new names too");
        let m = Metrics::new();
        assert_eq!(m.label(&"x".repeat(500)).chars().count(), MAX_NAME_CHARS);
    }

    #[test]
    fn the_text_format_names_every_metric_with_its_prefix() {
        let m = Metrics::new();
        m.dispatched.get_or_create(&KindName { kind: ACTIVITY, name: "hello".into() }).inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(out.contains("duro_work_items_dispatched_total{kind=\"activity\",name=\"hello\"} 1"), "{out}");
        // Metrics without labels are always there; families appear with their first series.
        let always = ["duro_store_commit_duration_seconds", "duro_timers_waiting", "duro_worker_streams"];
        for name in always.into_iter().chain(["duro_leases_expired"]) {
            assert!(out.contains(&format!("# TYPE {name} ")), "{name} missing in {out}");
        }
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
