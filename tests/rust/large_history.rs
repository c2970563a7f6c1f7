//! Large histories: a worker that declares `WORKER_CAPABILITY_HISTORY_STREAMING` gets a
//! large history by `StreamInstanceHistory` instead of in the work item, so neither the
//! number of events nor the total of their payloads is bounded by `--max-work-item-bytes`;
//! a worker that does not declare it gets `pastEvents` as before, and a history too large
//! for its work item fails the instance with a clear error.

use std::time::Duration;

use duro_proto::{
    GetWorkItemsRequest, HistoryEvent, OrchestrationStatus, RaiseEventRequest, StreamInstanceHistoryRequest,
    WorkerCapability,
};
use duro_sdk::{when_all, ActivityContext, OrchestrationContext, Worker, WorkerOptions};
use duro_tests::*;
use prost::Message as _;
use tonic::Code;

const T: Duration = Duration::from_secs(15);
/// What the sidecar streams a chunk at, at most (an event larger than this is a chunk alone).
const CHUNK_BYTES: usize = 256 * 1024;

async fn setup(args: &[&str]) -> (TestDir, Sidecar, Client) {
    let dir = test_dir();
    let sidecar = Sidecar::builder().dir(dir.path()).args(args).start();
    let client = sidecar.client().await;
    (dir, sidecar, client)
}

fn streaming_request() -> GetWorkItemsRequest {
    GetWorkItemsRequest { capabilities: vec![WorkerCapability::HistoryStreaming as i32], ..Default::default() }
}

async fn raise(client: &Client, id: &str, name: &str, input: &str) {
    let req = RaiseEventRequest { instance_id: id.into(), name: name.into(), input: Some(input.into()) };
    tokio::time::timeout(CALL_TIMEOUT, client.clone().raise_event(req))
        .await
        .expect("RaiseEvent hung")
        .expect("RaiseEvent");
}

/// StreamInstanceHistory as a work item's worker calls it: the chunks, or the error.
async fn stream_history(
    client: &Client,
    id: &str,
    execution: Option<&str>,
    for_work_item: bool,
) -> Result<Vec<Vec<HistoryEvent>>, tonic::Status> {
    let req = StreamInstanceHistoryRequest {
        instance_id: id.into(),
        execution_id: execution.map(str::to_string),
        for_work_item_processing: for_work_item,
    };
    let fut = async {
        let mut stream = client.clone().stream_instance_history(req).await?.into_inner();
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.message().await? {
            chunks.push(chunk.events);
        }
        Ok(chunks)
    };
    tokio::time::timeout(CALL_TIMEOUT, fut).await.expect("StreamInstanceHistory hung")
}

/// Runs the first turn of a new instance `id` (input `input`) on `stream` without actions,
/// raises `event` and returns the second turn's work item.
async fn second_turn(
    client: &Client,
    stream: &mut tonic::Streaming<proto::WorkItem>,
    id: &str,
    input: &str,
    event: &str,
) -> proto::WorkItem {
    start(client, "Big", id, Some(input)).await.expect("start");
    let first = next_work(stream, T).await.expect("first turn");
    let req = orchestrator_request(&first);
    assert_eq!(req.instance_id, id);
    assert!(req.past_events.is_empty() && !req.requires_history_streaming, "a first turn has no history");
    complete_turn(client, &first, vec![]).await.expect("first turn completes");
    raise(client, id, "go", event).await;
    let second = next_work(stream, T).await.expect("second turn");
    assert_eq!(orchestrator_request(&second).instance_id, id);
    second
}

fn big_json(bytes: usize) -> String {
    format!("\"{}\"", "h".repeat(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_declaring_history_streaming_fetches_a_large_history_and_others_get_past_events() {
    let (_d, _s, client) = setup(&[]).await;
    let input = big_json(1536 * 1024); // history above 1 MiB after the first turn

    // A worker that declares the capability: the history is not in the work item.
    let mut streaming = open_stream(&client, streaming_request()).await;
    let item = second_turn(&client, &mut streaming, "s-1", &input, "1").await;
    let req = orchestrator_request(&item);
    assert!(req.requires_history_streaming, "a history above 1 MiB is streamed to a capable worker");
    assert!(req.past_events.is_empty(), "pastEvents must be empty when streaming is required");
    assert_eq!(kinds(&req.new_events), ["orchestratorStarted", "eventRaised"], "newEvents still travel in the item");
    let execution = req.execution_id.clone().expect("executionId");
    assert!(item.encoded_len() < 64 * 1024, "the work item is {} bytes", item.encoded_len());

    // The history it fetches: the execution's events as the turn was built on, in chunks.
    let chunks = stream_history(&client, "s-1", Some(&execution), true).await.expect("history for the work item");
    for c in &chunks {
        let bytes: usize = c.iter().map(|e| 1 + prost::length_delimiter_len(e.encoded_len()) + e.encoded_len()).sum();
        assert!(!c.is_empty() && (bytes <= CHUNK_BYTES || c.len() == 1), "a chunk of {bytes} bytes");
    }
    let past: Vec<HistoryEvent> = chunks.into_iter().flatten().collect();
    assert_eq!(kinds(&past), ["orchestratorStarted", "executionStarted", "orchestratorCompleted"]);
    assert_eq!(
        orchestration_input(&proto::OrchestratorRequest { past_events: past, ..Default::default() }),
        Some(input.clone())
    );
    // Another execution, or no such instance: NOT_FOUND.
    let wrong = stream_history(&client, "s-1", Some("not-this-one"), true).await.expect_err("a stale execution");
    assert_eq!(wrong.code(), Code::NotFound, "{wrong:?}");
    let missing = stream_history(&client, "nobody", None, true).await.expect_err("no instance");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    complete_turn(&client, &item, vec![complete(-1, OrchestrationStatus::Completed, Some("1".into()))])
        .await
        .expect("the streamed turn completes");
    assert_eq!(status_of(&wait_completion(&client, "s-1", T).await), OrchestrationStatus::Completed);
    drop(streaming);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A worker that does not declare it: the same history arrives in pastEvents.
    let mut plain = open_stream(&client, GetWorkItemsRequest::default()).await;
    let item = second_turn(&client, &mut plain, "p-1", &input, "1").await;
    let req = orchestrator_request(&item);
    assert!(!req.requires_history_streaming);
    assert_eq!(kinds(&req.past_events), ["orchestratorStarted", "executionStarted", "orchestratorCompleted"]);
    assert_eq!(orchestration_input(req), Some(input));
    complete_turn(&client, &item, vec![complete(-1, OrchestrationStatus::Completed, None)]).await.expect("complete");
    assert_eq!(status_of(&wait_completion(&client, "p-1", T).await), OrchestrationStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_over_the_work_item_limit_streams_or_fails_clearly() {
    let (_d, _s, client) = setup(&["--max-work-item-bytes", "100000"]).await;
    let input = big_json(60 * 1024);
    let event = big_json(60 * 1024);

    // Capable worker: history (60 KB) + new event (60 KB) would exceed the limit, so the
    // history is streamed and the turn runs.
    let mut streaming = open_stream(&client, streaming_request()).await;
    let item = second_turn(&client, &mut streaming, "s-2", &input, &event).await;
    let req = orchestrator_request(&item);
    assert!(req.requires_history_streaming && req.past_events.is_empty());
    let past: Vec<HistoryEvent> = stream_history(&client, "s-2", req.execution_id.as_deref(), true)
        .await
        .expect("history")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(kinds(&past), ["orchestratorStarted", "executionStarted", "orchestratorCompleted"]);
    complete_turn(&client, &item, vec![complete(-1, OrchestrationStatus::Completed, None)]).await.expect("complete");
    assert_eq!(status_of(&wait_completion(&client, "s-2", T).await), OrchestrationStatus::Completed);
    drop(streaming);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A worker without the capability: the turn cannot be sent; the instance fails at once
    // with an error that says why (no redelivery loop, no hang).
    let mut plain = open_stream(&client, GetWorkItemsRequest::default()).await;
    start(&client, "Big", "p-2", Some(&input)).await.expect("start");
    let first = next_work(&mut plain, T).await.expect("first turn");
    complete_turn(&client, &first, vec![]).await.expect("first turn completes");
    raise(&client, "p-2", "go", &event).await;
    let s = wait_completion(&client, "p-2", T).await;
    assert_eq!(status_of(&s), OrchestrationStatus::Failed);
    let f = s.failure_details.expect("failure details");
    assert_eq!(f.error_type, "DuroWorkItemTooLarge", "{f:?}");
    assert!(
        f.error_message.contains("--max-work-item-bytes")
            && f.error_message.contains("WORKER_CAPABILITY_HISTORY_STREAMING"),
        "{}",
        f.error_message
    );
    assert!(next_work(&mut plain, Duration::from_millis(500)).await.is_none(), "the oversized turn is not sent");
}

// ----- Rust SDK workers (declare the capability) ---------------------------------------------

fn sdk_worker(sidecar: &Sidecar) -> Worker {
    Worker::new(sidecar.endpoint()).with_options(
        WorkerOptions::default()
            .with_reconnect_delays(Duration::from_millis(50), Duration::from_millis(500))
            .with_shutdown_timeout(Duration::from_secs(5))
            .with_concurrency(4, 64),
    )
}

async fn total_history(client: &Client, id: &str) -> (usize, usize) {
    let h = history(client, id).await;
    (h.len(), h.iter().map(|e| e.encoded_len()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orchestration_with_more_than_ten_thousand_history_events_completes() {
    let (_d, sidecar, client) = setup(&[]).await;
    let mut w = sdk_worker(&sidecar);
    // 10 rounds of 520 parallel activities: 2 events each, plus the turns' orchestratorStarted.
    w.add_orchestrator("Wide", |ctx: OrchestrationContext, rounds: u64| async move {
        let mut total = 0u64;
        for r in 0..rounds {
            let tasks: Vec<_> = (0..520u64).map(|i| ctx.call_activity::<u64>("Id", r * 1000 + i)).collect();
            total += when_all(tasks).await?.iter().sum::<u64>();
        }
        Ok(total)
    })
    .add_activity("Id", |_ctx: ActivityContext, n: u64| async move { Ok(n) });
    let worker = w.start().expect("worker");
    let sdk = duro_sdk::Client::connect(sidecar.endpoint()).await.expect("client");
    let id = sdk.start_orchestration("Wide", 10u64).await.expect("start");
    let state = sdk.wait_for_completion(&id, Duration::from_secs(600)).await.expect("completion");
    let expected: u64 = (0..10u64).map(|r| (0..520u64).map(|i| r * 1000 + i).sum::<u64>()).sum();
    assert_eq!(state.output::<u64>().expect("output"), expected);
    let (events, bytes) = total_history(&client, &id).await;
    assert!(events > 10_000, "history has {events} events");
    eprintln!("history: {events} events, {bytes} bytes");
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_megabytes_of_activity_results_complete_with_a_streaming_worker() {
    const N: usize = 60;
    const EACH: usize = 1_000_000;
    let (_d, sidecar, client) = setup(&[]).await;
    let mut w = sdk_worker(&sidecar);
    w.add_orchestrator("Heavy", |ctx: OrchestrationContext, n: usize| async move {
        let tasks: Vec<_> = (0..n).map(|i| ctx.call_activity::<String>("Blob", i)).collect();
        let blobs = when_all(tasks).await?;
        Ok(blobs.iter().map(String::len).sum::<usize>())
    })
    .add_activity("Blob", |_ctx: ActivityContext, i: usize| async move {
        Ok(char::from(b'a' + (i % 26) as u8).to_string().repeat(EACH))
    });
    let worker = w.start().expect("worker");
    let sdk = duro_sdk::Client::connect(sidecar.endpoint()).await.expect("client");
    let id = sdk.start_orchestration("Heavy", N).await.expect("start");
    let state = sdk.wait_for_completion(&id, Duration::from_secs(600)).await.expect("completion");
    assert_eq!(state.output::<usize>().expect("output"), N * EACH);
    let (events, bytes) = total_history(&client, &id).await;
    eprintln!("history: {events} events, {bytes} bytes");
    assert!(bytes >= 50_000_000, "the history holds {bytes} bytes");
    assert!(bytes > 4 * 1024 * 1024);
    worker.shutdown().await.expect("shutdown");
}
