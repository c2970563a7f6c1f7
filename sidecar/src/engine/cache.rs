//! The history cache: the current execution and committed history of recently active
//! instances, so a turn is built without reading the store. The store stays the truth:
//! an entry is only changed by applying a committed outcome to exactly the state it was
//! built from, and dropped whenever that is not certain.
//!
//! Bounded twice: by instances and by bytes (an estimate of the events' in-memory size), so
//! a few instances with huge histories cannot take the sidecar's memory. Least recently
//! used entries go first. Pure bookkeeping, no I/O.
//!
//! A history is a [`SharedHistory`]: sealed segments shared by reference plus a short open
//! tail, so a turn takes a snapshot of it without copying the events, and applying a
//! committed turn copies at most one segment. A turn's cost does not grow with the history
//! it is built on (the events are encoded only when a worker is sent them).

use std::num::NonZeroUsize;
use std::sync::Arc;

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

/// A segment is sealed when it holds this many events...
const SEGMENT_EVENTS: usize = 256;
/// ...or this many encoded bytes, whichever comes first: so copying the open tail (when a
/// snapshot shares it) stays small whatever the history holds.
const SEGMENT_BYTES: usize = 256 * 1024;

/// An execution's history, cheap to clone: sealed segments behind one shared pointer and an
/// open tail of fewer than [`SEGMENT_EVENTS`] events and [`SEGMENT_BYTES`] bytes. A clone is
/// a snapshot: appending to one copy never changes another.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedHistory {
    sealed: Arc<Vec<Arc<[HistoryEvent]>>>,
    tail: Arc<Vec<HistoryEvent>>,
    tail_bytes: usize,
    len: usize,
    wire_bytes: usize,
}

/// Bytes an event adds to a repeated message field (field numbers below 16): tag, length, body.
pub fn field_bytes(e: &HistoryEvent) -> usize {
    let len = e.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

impl SharedHistory {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Encoded bytes of the events as a repeated field (`pastEvents`), kept as events are
    /// added so that sizing a work item does not walk the history.
    pub fn wire_bytes(&self) -> usize {
        self.wire_bytes
    }

    /// Appends an event. Copies at most the open tail (when a snapshot shares it).
    pub fn push(&mut self, e: HistoryEvent) {
        let bytes = field_bytes(&e);
        self.len += 1;
        self.wire_bytes += bytes;
        self.tail_bytes += bytes;
        Arc::make_mut(&mut self.tail).push(e);
        if self.tail.len() >= SEGMENT_EVENTS || self.tail_bytes >= SEGMENT_BYTES {
            let tail = std::mem::take(&mut self.tail);
            let segment: Vec<HistoryEvent> = Arc::try_unwrap(tail).unwrap_or_else(|shared| (*shared).clone());
            Arc::make_mut(&mut self.sealed).push(Arc::from(segment));
            self.tail_bytes = 0;
        }
    }

    /// The events in order.
    pub fn iter(&self) -> impl Iterator<Item = &HistoryEvent> + Clone {
        self.sealed.iter().flat_map(|s| s.iter()).chain(self.tail.iter())
    }

    /// The events as one vector (a deep copy: for work items that carry the history).
    pub fn to_vec(&self) -> Vec<HistoryEvent> {
        let mut v = Vec::with_capacity(self.len);
        v.extend(self.iter().cloned());
        v
    }

    /// The first events, up to the end of the first segment (or all): enough to find the
    /// `executionStarted` event, which is among the first two.
    pub fn head(&self) -> &[HistoryEvent] {
        match self.sealed.first() {
            Some(s) => s,
            None => &self.tail,
        }
    }

    /// The events in chunks of at most `max_bytes` encoded bytes each (a larger event is a
    /// chunk of its own), copied one chunk at a time as the iterator advances.
    pub fn chunks(&self, max_bytes: usize) -> HistoryChunks {
        HistoryChunks { history: self.clone(), segment: 0, offset: 0, max_bytes }
    }

    fn event_at(&self, segment: usize, offset: usize) -> Option<&HistoryEvent> {
        match self.sealed.get(segment) {
            Some(s) => s.get(offset),
            None if segment == self.sealed.len() => self.tail.get(offset),
            None => None,
        }
    }
}

impl From<Vec<HistoryEvent>> for SharedHistory {
    fn from(events: Vec<HistoryEvent>) -> SharedHistory {
        let mut h = SharedHistory::default();
        for e in events {
            h.push(e);
        }
        h
    }
}

/// Owned chunks of a [`SharedHistory`] snapshot, see [`SharedHistory::chunks`].
pub struct HistoryChunks {
    history: SharedHistory,
    segment: usize,
    offset: usize,
    max_bytes: usize,
}

impl Iterator for HistoryChunks {
    type Item = Vec<HistoryEvent>;

    fn next(&mut self) -> Option<Vec<HistoryEvent>> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        loop {
            let Some(e) = self.history.event_at(self.segment, self.offset) else {
                if self.segment < self.history.sealed.len() {
                    self.segment += 1;
                    self.offset = 0;
                    continue;
                }
                break;
            };
            let b = field_bytes(e);
            if !chunk.is_empty() && bytes + b > self.max_bytes {
                break;
            }
            bytes += b;
            chunk.push(e.clone());
            self.offset += 1;
        }
        (!chunk.is_empty()).then_some(chunk)
    }
}

struct Entry {
    info: InstanceInfo,
    history: SharedHistory,
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

    /// The instance's cached state (the history as a snapshot, not copied), marking it
    /// recently used.
    pub fn get(&mut self, instance_id: &str) -> Option<(InstanceInfo, SharedHistory)> {
        self.lru.get(instance_id).map(|e| (e.info.clone(), e.history.clone()))
    }

    /// Caches an instance's state as read from the store (or just created). A state larger
    /// than the whole budget is not cached.
    pub fn put(&mut self, info: InstanceInfo, history: SharedHistory) {
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
            e.history = SharedHistory::default();
            e.bytes = info_bytes(&e.info);
        } else {
            e.info.status = outcome.status;
            if outcome.trace_context.is_some() {
                e.info.trace_context = outcome.trace_context.clone();
            }
            for ev in &outcome.append {
                e.history.push(ev.clone());
            }
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
pub(super) mod tests {
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
        c.put(info("a", "x1"), history(2, 10).into());
        c.apply(&info("a", "x1"), 2, &appended(3, 10));
        let (i, h) = c.get("a").unwrap();
        assert_eq!((i.execution_id.as_str(), h.len()), ("x1", 5));
        assert!(consistent(&c));
    }

    #[test]
    fn the_workers_trace_context_is_kept_until_it_sends_another() {
        let mut c = HistoryCache::new(10, 1 << 20);
        c.put(info("a", "x1"), history(1, 10).into());
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
        c.put(info("a", "x1"), history(2, 10).into());
        // Ran against 1 event, but 2 are cached: something else changed it.
        c.apply(&info("a", "x1"), 1, &appended(1, 10));
        assert!(c.get("a").is_none());
        c.put(info("b", "x1"), history(2, 10).into());
        // Another execution (restarted or replaced meanwhile).
        c.apply(&info("b", "x2"), 2, &appended(1, 10));
        assert!(c.get("b").is_none());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn a_finished_instance_leaves_the_cache() {
        let mut c = HistoryCache::new(10, 1 << 20);
        c.put(info("a", "x1"), history(1, 10).into());
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
            c.put(info(id, "x"), history(10, 1000).into());
        }
        assert_eq!(c.len(), 3);
        c.get("a"); // a is now the most recently used
        c.put(info("d", "x"), history(10, 1000).into());
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
        c.put(info("big", "x"), history(100, 1000).into());
        assert!(c.get("big").is_none(), "larger than the whole budget");
        c.put(info("a", "x"), history(1, 1000).into());
        c.put(info("b", "x"), history(1, 1000).into());
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

    /// The process's resident set in KiB (for the measurements that are not checks).
    pub(in crate::engine) fn rss_kib() -> usize {
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
            c.put(info, history.into());
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
            c.put(info(id, "x"), history(1, 10).into());
        }
        assert_eq!(c.len(), 2);
        assert!(c.get("a").is_none());
        assert!(consistent(&c));
        c.put(info("b", "x"), history(3, 10).into()); // replacing an entry recounts it
        assert!(consistent(&c));
        c.clear();
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn a_snapshot_does_not_see_later_appends_and_shares_sealed_segments() {
        let mut h = SharedHistory::from(history(SEGMENT_EVENTS + 10, 10));
        let snap = h.clone();
        for e in history(SEGMENT_EVENTS, 10) {
            h.push(e);
        }
        assert_eq!(snap.len(), SEGMENT_EVENTS + 10);
        assert_eq!(snap.iter().count(), SEGMENT_EVENTS + 10);
        assert_eq!(h.len(), 2 * SEGMENT_EVENTS + 10);
        assert_eq!(h.iter().count(), h.len());
        // The first segment is the same allocation in both: appending copied no sealed events.
        assert!(Arc::ptr_eq(&snap.sealed[0], &h.sealed[0]));
        assert!(h.tail.len() < SEGMENT_EVENTS);
        assert_eq!(h.to_vec()[..snap.len()], snap.to_vec()[..]);
    }

    #[test]
    fn large_events_seal_segments_by_bytes() {
        let mut h = SharedHistory::default();
        for e in history(10, SEGMENT_BYTES / 3) {
            h.push(e);
            assert!(h.tail_bytes < SEGMENT_BYTES, "the open tail stays under the byte bound");
        }
        assert!(h.sealed.len() >= 3);
    }

    #[test]
    fn wire_bytes_is_the_encoded_size_of_the_events_as_a_repeated_field() {
        let events = history(600, 700);
        let h = SharedHistory::from(events.clone());
        let request = duro_proto::OrchestratorRequest { past_events: events, ..Default::default() };
        assert_eq!(h.wire_bytes(), request.encoded_len());
    }

    #[test]
    fn chunks_are_bounded_by_bytes_and_keep_every_event_in_order() {
        let mut events = history(700, 900);
        // One event larger than a chunk: a chunk of its own.
        events.insert(300, events::event_raised(-1, "big".into(), Some("y".repeat(400_000))));
        let h = SharedHistory::from(events.clone());
        let chunks: Vec<Vec<HistoryEvent>> = h.chunks(64 * 1024).collect();
        for c in &chunks {
            let bytes: usize = c.iter().map(field_bytes).sum();
            assert!(bytes <= 64 * 1024 || c.len() == 1, "a chunk of {bytes} bytes");
            assert!(!c.is_empty());
        }
        assert!(chunks.iter().any(|c| c.len() == 1 && field_bytes(&c[0]) > 64 * 1024));
        let flat: Vec<HistoryEvent> = chunks.into_iter().flatten().collect();
        assert_eq!(flat, events);
        assert_eq!(SharedHistory::default().chunks(1024).count(), 0);
    }
}
