//! An execution's history as a timeline: activities, timers, sub-orchestrations and events
//! with their start, end and outcome, and where each bar lies on a chart of a given width.
//! Pure: history events in, spans out.

use std::collections::HashMap;

use duro_proto::history_event::EventType;
use duro_proto::HistoryEvent;

use crate::core::time::to_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Orchestration,
    Activity,
    Timer,
    SubOrchestration,
    /// A point in time: an event raised or sent, a suspension, a rewind.
    Event,
}

impl SpanKind {
    pub fn label(self) -> &'static str {
        match self {
            SpanKind::Orchestration => "orchestration",
            SpanKind::Activity => "activity",
            SpanKind::Timer => "timer",
            SpanKind::SubOrchestration => "sub-orchestration",
            SpanKind::Event => "event",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not finished yet (the bar runs to now).
    Open,
    Completed,
    Failed,
    /// A timer that fired, or a point event.
    Done,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Open => "running",
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Done => "done",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub kind: SpanKind,
    pub name: String,
    pub start_ms: i64,
    /// `None` while open.
    pub end_ms: Option<i64>,
    pub outcome: Outcome,
    /// A sub-orchestration's instance id.
    pub instance_id: Option<String>,
    /// A failure's message.
    pub detail: Option<String>,
}

impl Span {
    pub fn duration_ms(&self, now_ms: i64) -> i64 {
        self.end_ms.unwrap_or(now_ms).saturating_sub(self.start_ms).max(0)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeline {
    pub start_ms: i64,
    pub end_ms: i64,
    pub spans: Vec<Span>,
}

fn at(e: &HistoryEvent) -> i64 {
    e.timestamp.as_ref().map(to_ms).unwrap_or(0)
}

/// Builds the timeline of one execution's history. Open spans end at `now_ms`.
pub fn build(events: &[HistoryEvent], now_ms: i64) -> Timeline {
    let mut spans: Vec<Span> = Vec::new();
    // Index of the span opened by a scheduling event, by kind and event id.
    let mut tasks: HashMap<i32, usize> = HashMap::new();
    let mut children: HashMap<i32, usize> = HashMap::new();
    let mut timers: HashMap<i32, usize> = HashMap::new();
    let mut orchestration: Option<usize> = None;
    let point = |kind, name: String, t: i64| Span {
        kind,
        name,
        start_ms: t,
        end_ms: Some(t),
        outcome: Outcome::Done,
        instance_id: None,
        detail: None,
    };
    let open = |kind, name: String, t: i64| Span {
        kind,
        name,
        start_ms: t,
        end_ms: None,
        outcome: Outcome::Open,
        instance_id: None,
        detail: None,
    };
    for e in events {
        let t = at(e);
        let close = |spans: &mut Vec<Span>, i: Option<usize>, outcome: Outcome, detail: Option<String>| {
            if let Some(s) = i.and_then(|i| spans.get_mut(i)) {
                s.end_ms = Some(t.max(s.start_ms));
                s.outcome = outcome;
                s.detail = detail;
            }
        };
        match &e.event_type {
            Some(EventType::ExecutionStarted(s)) => {
                orchestration = Some(spans.len());
                spans.push(open(SpanKind::Orchestration, s.name.clone(), t));
            }
            Some(EventType::ExecutionCompleted(c)) => {
                let failed = c.failure_details.is_some()
                    || c.orchestration_status == duro_proto::OrchestrationStatus::Failed as i32;
                let detail = c.failure_details.as_ref().map(|f| f.error_message.clone());
                close(&mut spans, orchestration, if failed { Outcome::Failed } else { Outcome::Completed }, detail);
            }
            Some(EventType::ExecutionTerminated(_)) => {
                close(&mut spans, orchestration, Outcome::Failed, Some("terminated".into()));
                spans.push(point(SpanKind::Event, "terminated".into(), t));
            }
            Some(EventType::TaskScheduled(s)) => {
                tasks.insert(e.event_id, spans.len());
                spans.push(open(SpanKind::Activity, s.name.clone(), t));
            }
            Some(EventType::TaskCompleted(c)) => {
                close(&mut spans, tasks.get(&c.task_scheduled_id).copied(), Outcome::Completed, None);
            }
            Some(EventType::TaskFailed(f)) => {
                let detail = f.failure_details.as_ref().map(|d| d.error_message.clone());
                close(&mut spans, tasks.get(&f.task_scheduled_id).copied(), Outcome::Failed, detail);
            }
            Some(EventType::SubOrchestrationInstanceCreated(c)) => {
                children.insert(e.event_id, spans.len());
                let mut s = open(SpanKind::SubOrchestration, c.name.clone(), t);
                s.instance_id = Some(c.instance_id.clone());
                spans.push(s);
            }
            Some(EventType::SubOrchestrationInstanceCompleted(c)) => {
                close(&mut spans, children.get(&c.task_scheduled_id).copied(), Outcome::Completed, None);
            }
            Some(EventType::SubOrchestrationInstanceFailed(f)) => {
                let detail = f.failure_details.as_ref().map(|d| d.error_message.clone());
                close(&mut spans, children.get(&f.task_scheduled_id).copied(), Outcome::Failed, detail);
            }
            Some(EventType::TimerCreated(c)) => {
                timers.insert(e.event_id, spans.len());
                let until = c.fire_at.as_ref().map(to_ms).map(crate::http::json::time_precise).unwrap_or_default();
                spans.push(open(SpanKind::Timer, format!("until {until}"), t));
            }
            Some(EventType::TimerFired(f)) => {
                close(&mut spans, timers.get(&f.timer_id).copied(), Outcome::Done, None);
            }
            Some(EventType::EventRaised(r)) => spans.push(point(SpanKind::Event, format!("raised: {}", r.name), t)),
            Some(EventType::EventSent(s)) => {
                let mut p = point(SpanKind::Event, format!("sent: {}", s.name), t);
                p.instance_id = Some(s.instance_id.clone());
                spans.push(p);
            }
            Some(EventType::ExecutionSuspended(_)) => spans.push(point(SpanKind::Event, "suspended".into(), t)),
            Some(EventType::ExecutionResumed(_)) => spans.push(point(SpanKind::Event, "resumed".into(), t)),
            Some(EventType::ExecutionRewound(_)) => spans.push(point(SpanKind::Event, "rewound".into(), t)),
            Some(EventType::ContinueAsNew(_)) => spans.push(point(SpanKind::Event, "continued as new".into(), t)),
            _ => {}
        }
    }
    let start_ms = spans.iter().map(|s| s.start_ms).min().unwrap_or(now_ms);
    let end_ms = spans.iter().map(|s| s.end_ms.unwrap_or(now_ms)).max().unwrap_or(now_ms).max(start_ms);
    Timeline { start_ms, end_ms, spans }
}

/// Where a span's bar lies on a chart `width` units wide: (x, width). Point events and very
/// short spans get a minimum visible width.
pub fn bar(t: &Timeline, s: &Span, width: f64, now_ms: i64) -> (f64, f64) {
    const MIN: f64 = 2.0;
    let total = (t.end_ms - t.start_ms).max(1) as f64;
    let x = ((s.start_ms - t.start_ms).max(0) as f64 / total * width).clamp(0.0, width - MIN);
    let w = (s.duration_ms(now_ms) as f64 / total * width).max(MIN).min(width - x);
    (x, w)
}

/// `1.234 s`, `56 ms`, `3 min 4 s`, `2 h 5 min`.
pub fn duration_text(ms: i64) -> String {
    match ms {
        ..=999 => format!("{} ms", ms.max(0)),
        1000..=59_999 => format!("{:.3} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duro_proto::*;

    fn ev(id: i32, ms: i64, kind: EventType) -> HistoryEvent {
        HistoryEvent {
            event_id: id,
            timestamp: Some(prost_types::Timestamp {
                seconds: ms.div_euclid(1000),
                nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
            event_type: Some(kind),
        }
    }

    fn history() -> Vec<HistoryEvent> {
        vec![
            ev(-1, 1000, EventType::OrchestratorStarted(Default::default())),
            ev(
                -1,
                1000,
                EventType::ExecutionStarted(ExecutionStartedEvent { name: "greet".into(), ..Default::default() }),
            ),
            ev(0, 1100, EventType::TaskScheduled(TaskScheduledEvent { name: "hello".into(), ..Default::default() })),
            ev(1, 1100, EventType::TaskScheduled(TaskScheduledEvent { name: "boom".into(), ..Default::default() })),
            ev(
                2,
                1100,
                EventType::SubOrchestrationInstanceCreated(SubOrchestrationInstanceCreatedEvent {
                    name: "child".into(),
                    instance_id: "kid-1".into(),
                    ..Default::default()
                }),
            ),
            ev(3, 1100, EventType::TimerCreated(TimerCreatedEvent { fire_at: None })),
            ev(-1, 1500, EventType::TaskCompleted(TaskCompletedEvent { task_scheduled_id: 0, ..Default::default() })),
            ev(
                -1,
                1600,
                EventType::TaskFailed(TaskFailedEvent {
                    task_scheduled_id: 1,
                    failure_details: Some(TaskFailureDetails { error_message: "kaput".into(), ..Default::default() }),
                }),
            ),
            ev(-1, 1700, EventType::TimerFired(TimerFiredEvent { timer_id: 3, fire_at: None })),
            ev(-1, 1800, EventType::EventRaised(EventRaisedEvent { name: "approve".into(), input: None })),
        ]
    }

    #[test]
    fn spans_pair_scheduling_with_results() {
        let t = build(&history(), 5000);
        let names: Vec<(&str, SpanKind, Outcome)> =
            t.spans.iter().map(|s| (s.name.as_str(), s.kind, s.outcome)).collect();
        assert_eq!(names[0], ("greet", SpanKind::Orchestration, Outcome::Open));
        assert_eq!(names[1], ("hello", SpanKind::Activity, Outcome::Completed));
        assert_eq!(names[2], ("boom", SpanKind::Activity, Outcome::Failed));
        assert_eq!(names[3], ("child", SpanKind::SubOrchestration, Outcome::Open));
        assert_eq!(names[4].1, SpanKind::Timer);
        assert_eq!(names[4].2, Outcome::Done);
        assert_eq!(names[5], ("raised: approve", SpanKind::Event, Outcome::Done));
        assert_eq!(t.spans[1].end_ms, Some(1500));
        assert_eq!(t.spans[1].duration_ms(5000), 400);
        assert_eq!(t.spans[2].detail.as_deref(), Some("kaput"));
        assert_eq!(t.spans[3].instance_id.as_deref(), Some("kid-1"));
        // Open spans run to now.
        assert_eq!(t.spans[0].duration_ms(5000), 4000);
        assert_eq!((t.start_ms, t.end_ms), (1000, 5000));
    }

    #[test]
    fn completion_closes_the_orchestration() {
        let mut h = history();
        h.push(ev(
            -1,
            2000,
            EventType::ExecutionCompleted(ExecutionCompletedEvent {
                orchestration_status: OrchestrationStatus::Completed as i32,
                ..Default::default()
            }),
        ));
        let t = build(&h, 9999);
        assert_eq!(t.spans[0].outcome, Outcome::Completed);
        assert_eq!(t.spans[0].end_ms, Some(2000));
        // The child never finished: it runs to now, and the chart spans to now.
        assert_eq!(t.end_ms, 9999);
    }

    #[test]
    fn bars_fit_the_chart() {
        let t = build(&history(), 2000);
        for s in &t.spans {
            let (x, w) = bar(&t, s, 600.0, 2000);
            assert!(x >= 0.0 && w >= 2.0 && x + w <= 600.0 + 1e-9, "{s:?} {x} {w}");
        }
        let (x, w) = bar(&t, &t.spans[1], 600.0, 2000);
        assert!((x - 60.0).abs() < 1e-9 && (w - 240.0).abs() < 1e-9, "{x} {w}");
        // An empty history still has a chart.
        let empty = build(&[], 10);
        assert_eq!((empty.start_ms, empty.end_ms), (10, 10));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_text(56), "56 ms");
        assert_eq!(duration_text(1234), "1.234 s");
        assert_eq!(duration_text(184_000), "3 min 4 s");
        assert_eq!(duration_text(7_500_000), "2 h 5 min");
    }
}
