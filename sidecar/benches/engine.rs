//! Micro-benchmarks of the engine's hot paths: applying a turn to a long history, encoding
//! the work item a worker receives, and committing one turn to SQLite (durable, WAL + FULL).
//!
//! Run: `cargo bench -p duro --bench engine`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use duro::core::turn::{decide, TurnInput, WorkerDecision};
use duro::core::{events, InstanceInfo, NewInstance, StartSpec};
use duro::store::sqlite::{SqliteOptions, SqliteStore};
use duro::store::{IdReuse, Store, TurnCommit};
use duro_proto::orchestrator_action::OrchestratorActionType;
use duro_proto::*;
use prost::Message as _;

const NOW: i64 = 1_700_000_000_000;

fn info() -> InstanceInfo {
    InstanceInfo {
        instance_id: "bench".into(),
        execution_id: "exec".into(),
        name: "Bench".into(),
        version: None,
        status: OrchestrationStatus::Running,
        input: None,
        parent: None,
        tags: Default::default(),
        trace_context: None,
    }
}

/// A history of `n` events: turns of (started, completed result, scheduled, completed).
fn history(n: usize) -> Vec<HistoryEvent> {
    let mut h = Vec::with_capacity(n);
    let mut id = 0;
    while h.len() < n {
        h.push(events::orchestrator_started(NOW));
        h.push(events::task_completed(NOW, id, Some(format!("{{\"value\":{id}}}"))));
        h.push(events::event(
            id + 1,
            NOW,
            history_event::EventType::TaskScheduled(TaskScheduledEvent {
                name: "Work".into(),
                input: Some("{\"n\":1}".into()),
                ..Default::default()
            }),
        ));
        h.push(events::orchestrator_completed(NOW));
        id += 1;
    }
    h.truncate(n);
    h
}

fn schedule(id: i32) -> OrchestratorAction {
    OrchestratorAction {
        id,
        orchestrator_action_type: Some(OrchestratorActionType::ScheduleTask(ScheduleTaskAction {
            name: "Work".into(),
            input: Some("{\"n\":1}".into()),
            ..Default::default()
        })),
    }
}

fn bench_turn(c: &mut Criterion) {
    let info = info();
    let new_events = vec![events::orchestrator_started(NOW), events::task_completed(NOW, 1, Some("1".into()))];
    c.bench_function("decide: turn with 10 new actions", |b| {
        b.iter_batched(
            || WorkerDecision { actions: (0..10).map(schedule).collect(), ..Default::default() },
            |decision| {
                let mut ids = || "x".to_string();
                decide(TurnInput { instance: &info, new_events: &new_events, now_ms: NOW }, decision, &mut ids)
            },
            BatchSize::SmallInput,
        )
    });
    let past = history(1000);
    c.bench_function("work item: build and encode a 1,000-event history", |b| {
        b.iter(|| {
            let req = OrchestratorRequest {
                instance_id: "bench".into(),
                execution_id: Some("exec".into()),
                past_events: past.clone(),
                new_events: new_events.clone(),
                ..Default::default()
            };
            WorkItem { request: Some(work_item::Request::OrchestratorRequest(req)), completion_token: "t".into() }
                .encode_to_vec()
        })
    });
}

fn bench_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = rt
        .block_on(SqliteStore::open(&dir.path().join("bench.db"), SqliteOptions::default()))
        .map(Arc::new)
        .expect("store");
    let mut n = 0u64;
    c.bench_function("store: create instance + commit one turn (fsync each)", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let store = store.clone();
            let id = format!("i{n}");
            async move {
                let new = NewInstance {
                    spec: StartSpec {
                        instance_id: id.clone(),
                        execution_id: "exec".into(),
                        name: "Bench".into(),
                        ..Default::default()
                    },
                    created_at_ms: NOW,
                    visible_at_ms: NOW,
                    parent_task: None,
                };
                let created = store.create_instance(new, IdReuse::terminal()).await.expect("create");
                let inbox_id = match created {
                    duro::store::CreateResult::Created(d) => d.start.inbox_id,
                    other => panic!("unexpected {other:?}"),
                };
                let info = InstanceInfo { instance_id: id.clone(), ..info() };
                let new_events = vec![events::orchestrator_started(NOW)];
                let decision = WorkerDecision { actions: (0..3).map(schedule).collect(), ..Default::default() };
                let mut ids = || "x".to_string();
                let outcome =
                    decide(TurnInput { instance: &info, new_events: &new_events, now_ms: NOW }, decision, &mut ids)
                        .expect("decide");
                store
                    .commit_turn(TurnCommit {
                        instance_id: id,
                        execution_id: "exec".into(),
                        history_len: 0,
                        consumed: vec![inbox_id],
                        outcome,
                        now_ms: NOW,
                    })
                    .await
                    .expect("commit")
            }
        })
    });
}

criterion_group!(benches, bench_turn, bench_commit);
criterion_main!(benches);
