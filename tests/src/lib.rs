//! Raw-protocol helpers for the integration tests in `tests/rust/`: a minimal worker and
//! client helpers on the generated tonic client. Starting `duro` (free ports, temporary
//! store, logs, kill -9 and restart, building the binary) is `duro-testkit`'s, re-exported
//! here so that tests need one `use duro_tests::*;`.

pub use duro_testkit::*;

use std::time::Duration;

pub use duro_proto::task_hub_sidecar_service_client::TaskHubSidecarServiceClient;
use tonic::transport::Channel;

/// A gRPC client of a test sidecar.
#[allow(async_fn_in_trait)]
pub trait SidecarClient {
    /// Connects a raw gRPC client with 64 MiB message limits; panics if it cannot.
    async fn client(&self) -> TaskHubSidecarServiceClient<Channel>;
}

impl SidecarClient for Sidecar {
    async fn client(&self) -> TaskHubSidecarServiceClient<Channel> {
        TaskHubSidecarServiceClient::connect(self.endpoint())
            .await
            .expect("connect")
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }
}

// =====================================================================================
// Raw protocol helpers: a minimal worker and client helpers on the generated tonic client.
// =====================================================================================

pub use duro_proto as proto;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use duro_proto::history_event::EventType;
use duro_proto::orchestrator_action::OrchestratorActionType;
use duro_proto::{
    work_item, ActivityRequest, ActivityResponse, CompleteOrchestrationAction, CreateInstanceRequest,
    CreateTimerAction, GetInstanceRequest, GetInstanceResponse, GetWorkItemsRequest, HistoryEvent, OrchestrationState,
    OrchestrationStatus, OrchestratorAction, OrchestratorRequest, OrchestratorResponse, ScheduleTaskAction,
    TaskFailureDetails, WorkItem,
};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::{Code, Status, Streaming};

/// The generated client on a tonic channel.
pub type Client = TaskHubSidecarServiceClient<Channel>;

/// Upper bound for any single unary call made by the helpers.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects a client with 64 MiB message limits (no panic; for reconnect loops).
pub async fn try_connect(endpoint: &str) -> Result<Client, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await?;
    Ok(TaskHubSidecarServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

/// Orchestrator callback of the raw worker.
pub type OrchestratorFn = dyn Fn(&OrchestratorRequest) -> Vec<OrchestratorAction> + Send + Sync;
/// Activity callback of the raw worker: `Ok(result JSON)` or `Err(message)` (becomes failureDetails).
pub type ActivityFn = dyn Fn(&ActivityRequest) -> Result<String, String> + Send + Sync;

/// Counters of a [`RawWorker`].
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Successful `GetWorkItems` calls (1 + number of reconnects).
    pub connects: AtomicU64,
    pub orchestrator_items: AtomicU64,
    pub activity_items: AtomicU64,
    pub health_pings: AtomicU64,
    /// Complete* calls that returned OK.
    pub completions_ok: AtomicU64,
    /// Complete* calls that failed (sidecar gone, stale token, ...).
    pub completions_failed: AtomicU64,
}

impl WorkerStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }
}

/// A minimal Durable Task worker speaking the raw protocol: one `GetWorkItems` stream,
/// each work item handled in its own task (callbacks run on the blocking pool, so they
/// may sleep), completed with its completion token. Reconnects every 100 ms when the
/// stream ends or the sidecar is unreachable, so it survives sidecar restarts.
pub struct RawWorker {
    stop: watch::Sender<bool>,
    handle: Option<JoinHandle<()>>,
    pub stats: Arc<WorkerStats>,
}

impl RawWorker {
    /// A worker without filters or caps.
    pub fn start<O, A>(endpoint: String, orchestrator: O, activity: A) -> RawWorker
    where
        O: Fn(&OrchestratorRequest) -> Vec<OrchestratorAction> + Send + Sync + 'static,
        A: Fn(&ActivityRequest) -> Result<String, String> + Send + Sync + 'static,
    {
        Self::start_with(endpoint, GetWorkItemsRequest::default(), orchestrator, activity)
    }

    /// A worker opening its stream with `request` (caps, filters, ...).
    pub fn start_with<O, A>(endpoint: String, request: GetWorkItemsRequest, orchestrator: O, activity: A) -> RawWorker
    where
        O: Fn(&OrchestratorRequest) -> Vec<OrchestratorAction> + Send + Sync + 'static,
        A: Fn(&ActivityRequest) -> Result<String, String> + Send + Sync + 'static,
    {
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(WorkerStats::default());
        let orchestrator: Arc<OrchestratorFn> = Arc::new(orchestrator);
        let activity: Arc<ActivityFn> = Arc::new(activity);
        let handle = tokio::spawn(worker_loop(endpoint, request, orchestrator, activity, stats.clone(), stop_rx));
        RawWorker { stop, handle: Some(handle), stats }
    }

    /// Stops the worker: closes its stream and abandons in-flight callbacks.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(mut h) = self.handle.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut h).await.is_err() {
                h.abort();
                let _ = h.await;
            }
        }
    }
}

impl Drop for RawWorker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

async fn worker_loop(
    endpoint: String,
    request: GetWorkItemsRequest,
    orchestrator: Arc<OrchestratorFn>,
    activity: Arc<ActivityFn>,
    stats: Arc<WorkerStats>,
    mut stop: watch::Receiver<bool>,
) {
    const RETRY: Duration = Duration::from_millis(100);
    // In-flight work items; dropped (aborted) with this task.
    let mut tasks: JoinSet<()> = JoinSet::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let client = match try_connect(&endpoint).await {
            Ok(c) => c,
            Err(_) => {
                if sleep_or_stop(RETRY, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        let mut stream = match client.clone().get_work_items(request.clone()).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                if sleep_or_stop(RETRY, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        stats.connects.fetch_add(1, Ordering::SeqCst);
        wlog(|| "stream connected".into());
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(item)) => dispatch(item, &client, &orchestrator, &activity, &stats, &mut tasks),
                    Ok(None) => { wlog(|| "stream ended".into()); break }
                    Err(e) => { wlog(|| format!("stream failed: {e:?}")); break }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = stop.changed() => return,
            }
        }
        if sleep_or_stop(RETRY, &mut stop).await {
            return;
        }
    }
}

/// Worker-side trace to stderr when `DURO_TEST_WORKER_LOG` is set.
fn wlog(msg: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("DURO_TEST_WORKER_LOG").is_some()) {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        eprintln!("[worker {}.{:06}] {}", t.as_secs(), t.subsec_micros(), msg());
    }
}

fn dispatch(
    item: WorkItem,
    client: &Client,
    orchestrator: &Arc<OrchestratorFn>,
    activity: &Arc<ActivityFn>,
    stats: &Arc<WorkerStats>,
    tasks: &mut JoinSet<()>,
) {
    let token = item.completion_token;
    match item.request {
        Some(work_item::Request::OrchestratorRequest(req)) => {
            stats.orchestrator_items.fetch_add(1, Ordering::SeqCst);
            wlog(|| format!("turn {} received ({} new events)", req.instance_id, req.new_events.len()));
            let (mut client, f, stats) = (client.clone(), orchestrator.clone(), stats.clone());
            tasks.spawn(async move {
                let instance_id = req.instance_id.clone();
                let Ok(actions) = tokio::task::spawn_blocking(move || f(&req)).await else { return };
                let resp = OrchestratorResponse { instance_id, actions, completion_token: token, ..Default::default() };
                let r = tokio::time::timeout(CALL_TIMEOUT, client.complete_orchestrator_task(resp)).await;
                wlog(|| format!("turn completed: {r:?}"));
                let ok = matches!(r, Ok(Ok(_)));
                let c = if ok { &stats.completions_ok } else { &stats.completions_failed };
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
        Some(work_item::Request::ActivityRequest(req)) => {
            stats.activity_items.fetch_add(1, Ordering::SeqCst);
            wlog(|| format!("activity {:?} task {} received", req.orchestration_instance, req.task_id));
            let (mut client, f, stats) = (client.clone(), activity.clone(), stats.clone());
            tasks.spawn(async move {
                let instance_id =
                    req.orchestration_instance.as_ref().map(|o| o.instance_id.clone()).unwrap_or_default();
                let task_id = req.task_id;
                let Ok(outcome) = tokio::task::spawn_blocking(move || f(&req)).await else { return };
                let (result, failure_details) = match outcome {
                    Ok(r) => (Some(r), None),
                    Err(msg) => (
                        None,
                        Some(TaskFailureDetails {
                            error_type: "TestActivityError".into(),
                            error_message: msg,
                            ..Default::default()
                        }),
                    ),
                };
                let resp = ActivityResponse { instance_id, task_id, result, failure_details, completion_token: token };
                let r = tokio::time::timeout(CALL_TIMEOUT, client.complete_activity_task(resp)).await;
                wlog(|| format!("activity completed: {r:?}"));
                let ok = matches!(r, Ok(Ok(_)));
                let c = if ok { &stats.completions_ok } else { &stats.completions_failed };
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
        Some(work_item::Request::HealthPing(_)) => {
            stats.health_pings.fetch_add(1, Ordering::SeqCst);
        }
        _ => {}
    }
}

// ----- client helpers ------------------------------------------------------------------

/// StartInstance; returns the instance id the sidecar answered with.
pub async fn start(client: &Client, name: &str, id: &str, input: Option<&str>) -> Result<String, Status> {
    let req = CreateInstanceRequest {
        instance_id: id.to_string(),
        name: name.to_string(),
        input: input.map(str::to_string),
        ..Default::default()
    };
    match tokio::time::timeout(CALL_TIMEOUT, client.clone().start_instance(req)).await {
        Ok(r) => r.map(|r| r.into_inner().instance_id),
        Err(_) => Err(Status::deadline_exceeded("StartInstance timed out in the test")),
    }
}

/// GetInstance (with payloads), retrying transport errors (e.g. right after a restart)
/// for up to [`CALL_TIMEOUT`]; panics on any other error or a hang.
pub async fn get_instance(client: &Client, id: &str) -> GetInstanceResponse {
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    loop {
        let req = GetInstanceRequest { instance_id: id.to_string(), get_inputs_and_outputs: true };
        match tokio::time::timeout(CALL_TIMEOUT, client.clone().get_instance(req))
            .await
            .unwrap_or_else(|_| panic!("GetInstance('{id}') hung"))
        {
            Ok(r) => return r.into_inner(),
            Err(s) if is_transport_error(&s) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("GetInstance('{id}') failed: {s:?}"),
        }
    }
}

/// The status of an existing instance.
pub fn status_of(state: &OrchestrationState) -> OrchestrationStatus {
    OrchestrationStatus::try_from(state.orchestration_status)
        .unwrap_or_else(|_| panic!("bad status {}", state.orchestration_status))
}

/// Waits with WaitForInstanceCompletion (retrying across transport errors, e.g. during a
/// sidecar restart) until the instance finishes; panics after `timeout` or if it does not exist.
pub async fn wait_completion(client: &Client, id: &str, timeout: Duration) -> OrchestrationState {
    try_wait_completion(client, id, timeout).await.unwrap_or_else(|e| panic!("{e}"))
}

/// [`wait_completion`] returning the problem instead of panicking.
pub async fn try_wait_completion(client: &Client, id: &str, timeout: Duration) -> Result<OrchestrationState, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(format!("instance '{id}' did not complete within {timeout:?} (last error: {last_error:?})"));
        }
        let mut req =
            tonic::Request::new(GetInstanceRequest { instance_id: id.to_string(), get_inputs_and_outputs: true });
        req.set_timeout(left);
        match tokio::time::timeout(left, client.clone().wait_for_instance_completion(req)).await {
            Err(_) => continue,
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if !r.exists {
                    return Err(format!("WaitForInstanceCompletion: instance '{id}' does not exist"));
                }
                return r.orchestration_state.ok_or_else(|| format!("'{id}': exists without orchestrationState"));
            }
            Ok(Err(s)) => {
                last_error = Some(s);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Polls GetInstance until `pred(status)` holds; panics after `timeout`.
pub async fn wait_status(
    client: &Client,
    id: &str,
    timeout: Duration,
    pred: impl Fn(OrchestrationStatus) -> bool,
) -> OrchestrationState {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let r = get_instance(client, id).await;
        if let Some(s) = r.orchestration_state {
            if pred(status_of(&s)) {
                return s;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("instance '{id}' stayed {:?}", status_of(&s));
            }
        } else if tokio::time::Instant::now() > deadline {
            panic!("instance '{id}' does not exist");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ----- raw streams ----------------------------------------------------------------------

/// What the next message of a work-item stream was.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Next {
    Item(WorkItem),
    Timeout,
    End,
    Error(Status),
}

/// Opens a raw `GetWorkItems` stream.
pub async fn open_stream(client: &Client, request: GetWorkItemsRequest) -> Streaming<WorkItem> {
    tokio::time::timeout(CALL_TIMEOUT, client.clone().get_work_items(request))
        .await
        .expect("GetWorkItems hung")
        .expect("GetWorkItems failed")
        .into_inner()
}

/// The next message (health pings included) within `timeout`.
pub async fn next_raw(stream: &mut Streaming<WorkItem>, timeout: Duration) -> Next {
    match tokio::time::timeout(timeout, stream.message()).await {
        Err(_) => Next::Timeout,
        Ok(Ok(Some(item))) => Next::Item(item),
        Ok(Ok(None)) => Next::End,
        Ok(Err(s)) => Next::Error(s),
    }
}

/// The next non-ping work item within `timeout`, or `None` on timeout. Panics if the stream ends.
pub async fn next_work(stream: &mut Streaming<WorkItem>, timeout: Duration) -> Option<WorkItem> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_raw(stream, left).await {
            Next::Item(WorkItem { request: Some(work_item::Request::HealthPing(_)), .. }) => continue,
            Next::Item(item) => return Some(item),
            Next::Timeout => return None,
            Next::End => panic!("work-item stream ended"),
            Next::Error(s) => panic!("work-item stream failed: {s:?}"),
        }
    }
}

/// The orchestrator request inside a work item (panics otherwise).
pub fn orchestrator_request(item: &WorkItem) -> &OrchestratorRequest {
    match &item.request {
        Some(work_item::Request::OrchestratorRequest(r)) => r,
        other => panic!("expected an orchestratorRequest, got {other:?}"),
    }
}

/// The activity request inside a work item (panics otherwise).
pub fn activity_request(item: &WorkItem) -> &ActivityRequest {
    match &item.request {
        Some(work_item::Request::ActivityRequest(r)) => r,
        other => panic!("expected an activityRequest, got {other:?}"),
    }
}

/// Completes an orchestrator work item with `actions`.
pub async fn complete_turn(client: &Client, item: &WorkItem, actions: Vec<OrchestratorAction>) -> Result<(), Status> {
    let req = orchestrator_request(item);
    complete_turn_with_token(client, &req.instance_id, &item.completion_token, actions).await
}

pub async fn complete_turn_with_token(
    client: &Client,
    instance_id: &str,
    token: &str,
    actions: Vec<OrchestratorAction>,
) -> Result<(), Status> {
    let resp = OrchestratorResponse {
        instance_id: instance_id.to_string(),
        actions,
        completion_token: token.to_string(),
        ..Default::default()
    };
    tokio::time::timeout(CALL_TIMEOUT, client.clone().complete_orchestrator_task(resp))
        .await
        .map_err(|_| Status::deadline_exceeded("CompleteOrchestratorTask hung"))?
        .map(|_| ())
}

// ----- events and actions --------------------------------------------------------------

/// pastEvents followed by newEvents.
pub fn all_events(req: &OrchestratorRequest) -> impl Iterator<Item = &HistoryEvent> {
    req.past_events.iter().chain(req.new_events.iter())
}

/// A short name of an event's kind, for assertions.
pub fn kind(e: &HistoryEvent) -> &'static str {
    match &e.event_type {
        Some(EventType::ExecutionStarted(_)) => "executionStarted",
        Some(EventType::ExecutionCompleted(_)) => "executionCompleted",
        Some(EventType::ExecutionTerminated(_)) => "executionTerminated",
        Some(EventType::TaskScheduled(_)) => "taskScheduled",
        Some(EventType::TaskCompleted(_)) => "taskCompleted",
        Some(EventType::TaskFailed(_)) => "taskFailed",
        Some(EventType::SubOrchestrationInstanceCreated(_)) => "subOrchestrationInstanceCreated",
        Some(EventType::SubOrchestrationInstanceCompleted(_)) => "subOrchestrationInstanceCompleted",
        Some(EventType::SubOrchestrationInstanceFailed(_)) => "subOrchestrationInstanceFailed",
        Some(EventType::TimerCreated(_)) => "timerCreated",
        Some(EventType::TimerFired(_)) => "timerFired",
        Some(EventType::OrchestratorStarted(_)) => "orchestratorStarted",
        Some(EventType::OrchestratorCompleted(_)) => "orchestratorCompleted",
        Some(EventType::EventSent(_)) => "eventSent",
        Some(EventType::EventRaised(_)) => "eventRaised",
        Some(EventType::ExecutionSuspended(_)) => "executionSuspended",
        Some(EventType::ExecutionResumed(_)) => "executionResumed",
        Some(_) => "other",
        None => "none",
    }
}

/// Kinds of a list of events.
pub fn kinds(events: &[HistoryEvent]) -> Vec<&'static str> {
    events.iter().map(kind).collect()
}

/// The orchestration input (from executionStarted).
pub fn orchestration_input(req: &OrchestratorRequest) -> Option<String> {
    all_events(req).find_map(|e| match &e.event_type {
        Some(EventType::ExecutionStarted(s)) => s.input.clone(),
        _ => None,
    })
}

pub fn schedule_task(id: i32, name: &str, input: Option<String>) -> OrchestratorAction {
    OrchestratorAction {
        id,
        orchestrator_action_type: Some(OrchestratorActionType::ScheduleTask(ScheduleTaskAction {
            name: name.to_string(),
            input,
            ..Default::default()
        })),
    }
}

pub fn create_timer(id: i32, fire_at: prost_types::Timestamp) -> OrchestratorAction {
    OrchestratorAction {
        id,
        orchestrator_action_type: Some(OrchestratorActionType::CreateTimer(CreateTimerAction {
            fire_at: Some(fire_at),
        })),
    }
}

pub fn complete(id: i32, status: OrchestrationStatus, result: Option<String>) -> OrchestratorAction {
    OrchestratorAction {
        id,
        orchestrator_action_type: Some(OrchestratorActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: status as i32,
            result,
            ..Default::default()
        })),
    }
}

pub fn fail(id: i32, error_type: &str, message: &str) -> OrchestratorAction {
    OrchestratorAction {
        id,
        orchestrator_action_type: Some(OrchestratorActionType::CompleteOrchestration(CompleteOrchestrationAction {
            orchestration_status: OrchestrationStatus::Failed as i32,
            failure_details: Some(TaskFailureDetails {
                error_type: error_type.to_string(),
                error_message: message.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

// ----- the "sum of N activities" orchestrator -------------------------------------------

/// Name of the activity the sum orchestrator calls.
pub const ADD: &str = "Add";

/// A deterministic orchestrator in raw protocol: with orchestration input `base` (a JSON
/// number, 0 if absent) it calls activity [`ADD`] sequentially `n` times, call `i` with
/// id `i` and input `base + i`, then completes with the JSON sum of the results.
/// It counts `taskCompleted{taskScheduledId,result}` events in pastEvents + newEvents;
/// an action is returned only if its `taskScheduled` is not in the history yet (replay).
/// A `taskFailed` completes the orchestration as FAILED.
pub fn sum_orchestrator(n: usize) -> impl Fn(&OrchestratorRequest) -> Vec<OrchestratorAction> + Send + Sync + Clone {
    move |req: &OrchestratorRequest| {
        let base: i64 = orchestration_input(req).and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(0);
        let mut results: std::collections::BTreeMap<i32, i64> = Default::default();
        let mut scheduled: std::collections::BTreeSet<i32> = Default::default();
        let mut done = false;
        for e in all_events(req) {
            match &e.event_type {
                Some(EventType::TaskScheduled(_)) => {
                    scheduled.insert(e.event_id);
                }
                Some(EventType::TaskCompleted(c)) => {
                    let v = c.result.as_deref().and_then(|r| serde_json::from_str::<i64>(r).ok()).unwrap_or(i64::MIN);
                    results.insert(c.task_scheduled_id, v);
                }
                Some(EventType::TaskFailed(f)) => {
                    let d = f.failure_details.clone().unwrap_or_default();
                    return vec![fail(
                        n as i32 + 1,
                        &d.error_type,
                        &format!("task {} failed: {}", f.task_scheduled_id, d.error_message),
                    )];
                }
                Some(EventType::ExecutionCompleted(_)) => done = true,
                _ => {}
            }
        }
        if done {
            return Vec::new();
        }
        let count = results.len();
        if count < n {
            let id = count as i32;
            if scheduled.contains(&id) {
                return Vec::new(); // still waiting for its result
            }
            vec![schedule_task(id, ADD, Some((base + count as i64).to_string()))]
        } else {
            let sum: i64 = results.values().sum();
            vec![complete(n as i32, OrchestrationStatus::Completed, Some(sum.to_string()))]
        }
    }
}

/// The [`ADD`] activity: JSON number in, that number + 1 out.
pub fn add_activity(req: &ActivityRequest) -> Result<String, String> {
    let v: i64 = req
        .input
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| format!("bad input {:?}", req.input))?;
    Ok((v + 1).to_string())
}

/// Output of [`sum_orchestrator`]`(n)` with [`add_activity`] for input `base`.
pub fn expected_sum(n: usize, base: i64) -> i64 {
    (0..n as i64).map(|i| base + i + 1).sum()
}

/// Is this a gRPC code the test treats as "the sidecar is not reachable right now"?
pub fn is_transport_error(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
}

/// The committed history of an instance's current execution (StreamInstanceHistory).
pub async fn history(client: &Client, id: &str) -> Vec<HistoryEvent> {
    let req = duro_proto::StreamInstanceHistoryRequest { instance_id: id.to_string(), ..Default::default() };
    let fut = async {
        let mut stream = client.clone().stream_instance_history(req).await?.into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await? {
            out.extend(chunk.events);
        }
        Ok::<_, Status>(out)
    };
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("StreamInstanceHistory('{id}') hung"))
        .unwrap_or_else(|s| panic!("StreamInstanceHistory('{id}') failed: {s:?}"))
}

/// Instances matching a query, all pages.
pub async fn query_all(client: &Client, prefix: &str, statuses: &[OrchestrationStatus]) -> Vec<OrchestrationState> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let req = duro_proto::QueryInstancesRequest {
            query: Some(duro_proto::InstanceQuery {
                runtime_status: statuses.iter().map(|s| *s as i32).collect(),
                instance_id_prefix: Some(prefix.to_string()),
                max_instance_count: 1000,
                continuation_token: token.clone(),
                fetch_inputs_and_outputs: true,
                ..Default::default()
            }),
        };
        let r = tokio::time::timeout(CALL_TIMEOUT, client.clone().query_instances(req))
            .await
            .expect("QueryInstances hung")
            .expect("QueryInstances failed")
            .into_inner();
        out.extend(r.orchestration_state);
        match r.continuation_token {
            Some(t) if !t.is_empty() && Some(&t) != token.as_ref() => token = Some(t),
            _ => return out,
        }
    }
}
