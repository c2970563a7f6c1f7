//! Replay cost of the Rust SDK's worker: one orchestration turn over a long history.
//!
//! `cargo bench -p duro-sdk --bench replay`. The history is that of an orchestration that
//! chains `Inc` activities: each step adds four events (the turn's orchestratorStarted and
//! taskScheduled, then the next turn's orchestratorStarted and taskCompleted), so 250 steps
//! make a ~1,000-event history. The measured turn replays all of it and schedules the next
//! activity.

use criterion::{criterion_group, criterion_main, Criterion};
use duro_sdk::testing::HistoryBuilder;
use duro_sdk::{replay, OrchestrationContext, Registry};

const STEPS: i32 = 250;

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.add_orchestrator("Chain", |ctx: OrchestrationContext, n: i64| async move {
        let mut v = n;
        loop {
            v = ctx.call_activity::<i64>("Inc", v).await?;
        }
        #[allow(unreachable_code)]
        Ok(v)
    });
    registry
}

/// The history after `STEPS` completed activities, and the new events of the next turn.
fn history(registry: &Registry) -> (HistoryBuilder, Vec<duro_proto::HistoryEvent>) {
    let mut h = HistoryBuilder::new();
    let mut new = h.start_turn().execution_started("Chain", Some("0")).take_new();
    for step in 0..STEPS {
        let out = replay::execute(registry, "bench", h.past(), &new);
        assert_eq!(out.actions.len(), 1, "each turn schedules one activity");
        h.commit_turn(&new, &out.actions);
        let result = (step + 1).to_string();
        new = h.start_turn().task_completed(step, Some(&result)).take_new();
    }
    (h, new)
}

fn bench_replay(c: &mut Criterion) {
    let registry = registry();
    let (h, new) = history(&registry);
    let events = h.past().len() + new.len();
    c.bench_function(&format!("replay: one turn over a {events}-event history"), |b| {
        b.iter(|| {
            let out = replay::execute(&registry, "bench", h.past(), &new);
            assert_eq!(out.actions.len(), 1);
            out
        })
    });
}

criterion_group!(benches, bench_replay);
criterion_main!(benches);
