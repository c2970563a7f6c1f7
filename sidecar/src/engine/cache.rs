//! The history cache: the current execution and committed history of recently active
//! instances, so a turn is built without reading the store. The store stays the truth:
//! an entry is only changed by applying a committed outcome to exactly the state it was
//! built from, and dropped whenever that is not certain.
//!
//! Bounded twice: by instances and by bytes (an estimate of the events' in-memory size), so
//! a few instances with huge histories cannot take the sidecar's memory. Least recently
//! used entries go first. Pure bookkeeping, no I/O.

use std::num::NonZeroUsize;

use duro_proto::{HistoryEvent, OrchestrationStatus};
use lru::LruCache;
use prost::Message as _;

use crate::core::{InstanceInfo, TurnOutcome};

/// Bytes counted per event beyond its encoded length: the decoded event occupies
/// `size_of::<HistoryEvent>()` in the history's vector whatever its kind (the largest
/// variant of its `oneof` is inline), plus allocator headers of its strings.
const EVENT_OVERHEAD: usize = std::mem::size_of::<HistoryEvent>() + 64;
/// Bytes counted per entry beyond its input and id: the entry itself, its key and the
/// LRU's node and table slot, and allocator headers of the info's strings.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>() + std::mem::size_of::<String>() + 64 + 128;

struct Entry {
    info: InstanceInfo,
    history: Vec<HistoryEvent>,
    bytes: usize,
}

pub struct HistoryCache {
    lru: LruCache<String, Entry>,
    bytes: usize,
    max_bytes: usize,
}

fn event_bytes(e: &HistoryEvent) -> usize {
    e.encoded_len() + EVENT_OVERHEAD
}

fn info_bytes(info: &InstanceInfo) -> usize {
    ENTRY_OVERHEAD + info.instance_id.len() * 2 + info.input.as_ref().map_or(0, String::len)
}

impl HistoryCache {
    pub fn new(max_instances: usize, max_bytes: usize) -> HistoryCache {
        let cap = NonZeroUsize::new(max_instances.max(1)).unwrap_or(NonZeroUsize::MIN);
        HistoryCache { lru: LruCache::new(cap), bytes: 0, max_bytes }
    }

    /// A copy of the instance's cached state, marking it recently used.
    pub fn get(&mut self, instance_id: &str) -> Option<(InstanceInfo, Vec<HistoryEvent>)> {
        self.lru.get(instance_id).map(|e| (e.info.clone(), e.history.clone()))
    }

    /// Caches an instance's state as read from the store (or just created). A state larger
    /// than the whole budget is not cached.
    pub fn put(&mut self, info: InstanceInfo, history: Vec<HistoryEvent>) {
        let bytes = info_bytes(&info) + history.iter().map(event_bytes).sum::<usize>();
        self.remove(&info.instance_id);
        if bytes > self.max_bytes {
            return;
        }
        let id = info.instance_id.clone();
        self.bytes += bytes;
        if let Some((_, evicted)) = self.lru.push(id, Entry { info, history, bytes }) {
            self.bytes -= evicted.bytes;
        }
        self.shrink();
    }

    pub fn remove(&mut self, instance_id: &str) {
        if let Some(e) = self.lru.pop(instance_id) {
            self.bytes -= e.bytes;
        }
    }

    pub fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }

    /// Applies a committed turn outcome to the entry if it holds exactly the state the turn
    /// ran against (same execution, `history_len` events); otherwise, or when the instance
    /// finished, drops it.
    pub fn apply(&mut self, info: &InstanceInfo, history_len: usize, outcome: &TurnOutcome) {
        let fits = matches!(self.lru.peek(&info.instance_id),
            Some(e) if e.info.execution_id == info.execution_id && e.history.len() == history_len);
        if !fits || outcome.is_terminal() {
            // Finished instances are rarely read again by turns; free the memory.
            self.remove(&info.instance_id);
            return;
        }
        let Some(e) = self.lru.get_mut(&info.instance_id) else { return };
        let before = e.bytes;
        if let Some(next) = &outcome.continue_as_new {
            e.info.execution_id = next.spec.execution_id.clone();
            e.info.version = next.spec.version.clone();
            e.info.input = next.spec.input.clone();
            e.info.tags = next.spec.tags.clone();
            e.info.status = OrchestrationStatus::Running;
            // A new execution: the worker starts a new orchestration span.
            e.info.trace_context = None;
            e.history.clear();
            e.bytes = info_bytes(&e.info);
        } else {
            e.info.status = outcome.status;
            if outcome.trace_context.is_some() {
                e.info.trace_context = outcome.trace_context.clone();
            }
            e.history.extend(outcome.append.iter().cloned());
            e.bytes += outcome.append.iter().map(event_bytes).sum::<usize>();
        }
        let after = e.bytes;
        self.bytes = self.bytes - before + after;
        if after > self.max_bytes {
            self.remove(&info.instance_id);
        }
        self.shrink();
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    fn shrink(&mut self) {
        while self.bytes > self.max_bytes {
            match self.lru.pop_lru() {
                Some((_, e)) => self.bytes -= e.bytes,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events;
    use duro_proto::OrchestrationTraceContext;

    fn info(id: &str, execution: &str) -> InstanceInfo {
        InstanceInfo {
            instance_id: id.into(),
            execution_id: execution.into(),
            name: "Orch".into(),
            version: None,
            status: OrchestrationStatus::Running,
            input: None,
            parent: None,
            tags: Default::default(),
            trace_context: None,
        }
    }

    fn history(n: usize, payload: usize) -> Vec<HistoryEvent> {
        (0..n).map(|i| events::event_raised(i as i64, "e".into(), Some("x".repeat(payload)))).collect()
    }

    fn appended(n: usize, payload: usize) -> TurnOutcome {
        let mut o = TurnOutcome::unchanged(OrchestrationStatus::Running, 0);
        o.append = history(n, payload);
        o
    }

    /// The byte count always equals the sum over the entries.
    fn consistent(c: &HistoryCache) -> bool {
        c.bytes == c.lru.iter().map(|(_, e)| e.bytes).sum::<usize>()
    }

    #[test]
    fn a_committed_turn_extends_the_entry_it_ran_against() {
        let mut c = HistoryCache::new(10, 1 << 20);
        c.put(info("a", "x1"), history(2, 10));
        c.apply(&info("a", "x1"), 2, &appended(3, 10));
        let (i, h) = c.get("a").unwrap();
        assert_eq!((i.execution_id.as_str(), h.len()), ("x1", 5));
        assert!(consistent(&c));
    }

    #[test]
    fn the_workers_trace_context_is_kept_until_it_sends_another() {
        let mut c = HistoryCache::new(10, 1 << 20);
        c.put(info("a", "x1"), history(1, 10));
        let tc = OrchestrationTraceContext { span_id: Some("00f067aa0ba902b7".into()), span_start_time: None };
        let mut o = appended(1, 10);
        o.trace_context = Some(tc.clone());
        c.apply(&info("a", "x1"), 1, &o);
        assert_eq!(c.get("a").unwrap().0.trace_context, Some(tc.clone()));
        // A response without one (Java's later chunks, SDKs without tracing) keeps it, as the store does.
        c.apply(&info("a", "x1"), 2, &appended(1, 10));
        assert_eq!(c.get("a").unwrap().0.trace_context, Some(tc));
    }

    #[test]
    fn an_outcome_for_another_state_drops_the_entry() {
        let mut c = HistoryCache::new(10, 1 << 20);
        c.put(info("a", "x1"), history(2, 10));
        // Ran against 1 event, but 2 are cached: something else changed it.
        c.apply(&info("a", "x1"), 1, &appended(1, 10));
        assert!(c.get("a").is_none());
        c.put(info("b", "x1"), history(2, 10));
        // Another execution (restarted or replaced meanwhile).
        c.apply(&info("b", "x2"), 2, &appended(1, 10));
        assert!(c.get("b").is_none());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn a_finished_instance_leaves_the_cache() {
        let mut c = HistoryCache::new(10, 1 << 20);
        c.put(info("a", "x1"), history(1, 10));
        let mut done = appended(1, 10);
        done.status = OrchestrationStatus::Completed;
        c.apply(&info("a", "x1"), 1, &done);
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn the_byte_budget_evicts_least_recently_used_first() {
        let one = info_bytes(&info("a", "x")) + history(10, 1000).iter().map(event_bytes).sum::<usize>();
        let mut c = HistoryCache::new(100, one * 3);
        for id in ["a", "b", "c"] {
            c.put(info(id, "x"), history(10, 1000));
        }
        assert_eq!(c.len(), 3);
        c.get("a"); // a is now the most recently used
        c.put(info("d", "x"), history(10, 1000));
        assert!(c.get("b").is_none(), "b was least recently used");
        assert!(c.get("a").is_some() && c.get("c").is_some() && c.get("d").is_some());
        assert!(c.bytes() <= one * 3);
        assert!(consistent(&c));
    }

    #[test]
    fn growth_past_the_budget_evicts_and_a_state_above_it_is_not_cached() {
        let ev = event_bytes(&history(1, 1000)[0]);
        let entry = info_bytes(&info("a", "x"));
        // Room for a (1 event) and b (16 events) less one byte.
        let mut c = HistoryCache::new(100, 2 * entry + 17 * ev - 1);
        c.put(info("big", "x"), history(100, 1000));
        assert!(c.get("big").is_none(), "larger than the whole budget");
        c.put(info("a", "x"), history(1, 1000));
        c.put(info("b", "x"), history(1, 1000));
        // b grows until the two no longer fit: a (least recently used) goes.
        c.get("b");
        c.apply(&info("b", "x"), 1, &appended(15, 1000));
        assert!(c.get("a").is_none());
        assert_eq!(c.get("b").map(|(_, h)| h.len()), Some(16));
        assert!(consistent(&c));
        // b grows past the whole budget: it goes too.
        c.apply(&info("b", "x"), 16, &appended(10, 1000));
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    fn rss_kib() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// How honest the byte estimate is: fills a cache with 100,000 instances shaped like the
    /// idle benchmark's (`bench/idle.sh`: started, first turn committed) and compares the
    /// estimate with the process's RSS growth. A measurement, not a check (RSS is process-wide):
    /// `cargo test -p duro --lib cache::tests::estimate_against_rss -- --ignored --nocapture --test-threads 1`.
    #[test]
    #[ignore]
    fn estimate_against_rss() {
        let n = 100_000;
        let mut c = HistoryCache::new(n, usize::MAX);
        let before = rss_kib();
        for i in 0..n {
            let id = format!("idle-e-{i}");
            let spec = events::StartSpec {
                instance_id: id.clone(),
                execution_id: format!("{:032x}", i),
                name: "IdleEvent".into(),
                input: Some(i.to_string()),
                ..Default::default()
            };
            let history = vec![
                events::orchestrator_started(1_700_000_000_000),
                events::execution_started(1_700_000_000_000, &spec),
                events::orchestrator_started(1_700_000_000_001),
            ];
            let mut info = info(&id, &spec.execution_id);
            info.input = spec.input.clone();
            c.put(info, history);
        }
        let grown = (rss_kib() - before) * 1024;
        println!(
            "{n} entries: estimate {} B/entry, RSS growth {} B/entry (size_of HistoryEvent {}, Entry {})",
            c.bytes() / n,
            grown / n,
            std::mem::size_of::<HistoryEvent>(),
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn the_instance_count_bound_holds_and_keeps_bytes_consistent() {
        let mut c = HistoryCache::new(2, 1 << 20);
        for id in ["a", "b", "c"] {
            c.put(info(id, "x"), history(1, 10));
        }
        assert_eq!(c.len(), 2);
        assert!(c.get("a").is_none());
        assert!(consistent(&c));
        c.put(info("b", "x"), history(3, 10)); // replacing an entry recounts it
        assert!(consistent(&c));
        c.clear();
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }
}
