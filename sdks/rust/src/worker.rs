//! The worker: connects to the sidecar's work-item stream and runs orchestrator turns,
//! activities and entity batches.
//!
//! Owns the connection lifecycle (Hello → GetWorkItems with concurrency caps and name filters,
//! entities included, reconnect with jittered exponential backoff when the stream ends or the
//! sidecar is unreachable, a silent-stream watchdog), dispatch (orchestrator turns through the
//! pure [`replay`](crate::replay) engine (short histories on the runtime thread, long ones on blocking threads), activities and entity batches
//! ([`entity::execute_batch`](crate::entity::execute_batch)) as tokio tasks, each kind bounded
//! by a semaphore), answering every work item with its completion token, and graceful shutdown
//! (finish in-flight work within a grace period, abandon the rest so the sidecar re-dispatches
//! it). It holds no orchestration logic.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duro_proto::orchestrator_action::OrchestratorActionType;
use duro_proto::{
    work_item, AbandonActivityTaskRequest, AbandonEntityTaskRequest, AbandonOrchestrationTaskRequest, ActivityFilter,
    ActivityRequest, ActivityResponse, CompleteOrchestrationAction, EntityFilter, EntityRequest, GetWorkItemsRequest,
    OrchestrationFilter, OrchestrationStatus, OrchestratorAction, OrchestratorRequest, OrchestratorResponse,
    StreamInstanceHistoryRequest, WorkItem, WorkItemFilters, WorkerCapability,
};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tonic::Streaming;

use crate::activity::ActivityContext;
use crate::client;
use crate::context::OrchestrationContext;
use crate::entity::{self, EntityContext};
use crate::error::{full_message, Failure, FailureDetails, WorkerError};
use crate::registry::Registry;
use crate::replay;

/// Tuning of a [`Worker`].
///
/// ```
/// use duro_sdk::WorkerOptions;
/// use std::time::Duration;
/// let opts = WorkerOptions { max_concurrent_activities: 8, ..WorkerOptions::default() }
///     .with_shutdown_timeout(Duration::from_secs(5));
/// assert_eq!(opts.max_concurrent_activities, 8);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOptions {
    /// Orchestrator turns in flight at once (also sent to the sidecar as its cap).
    pub max_concurrent_orchestrations: usize,
    /// Activities in flight at once (also sent to the sidecar as its cap).
    pub max_concurrent_activities: usize,
    /// Entity batches in flight at once (also sent to the sidecar as its cap). Each entity
    /// runs one batch at a time whatever this says; it bounds how many entities run at once.
    pub max_concurrent_entities: usize,
    /// First delay before reconnecting; doubles up to `reconnect_max_delay` (with jitter).
    pub reconnect_initial_delay: Duration,
    /// Longest delay between reconnection attempts.
    pub reconnect_max_delay: Duration,
    /// How long a graceful shutdown waits for in-flight work before abandoning it.
    pub shutdown_timeout: Duration,
    /// Reconnect if the stream stays silent (no work, no health ping) this long.
    pub silent_disconnect_timeout: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            max_concurrent_orchestrations: 100,
            max_concurrent_activities: 100,
            max_concurrent_entities: 100,
            reconnect_initial_delay: Duration::from_millis(200),
            reconnect_max_delay: Duration::from_secs(15),
            shutdown_timeout: Duration::from_secs(30),
            silent_disconnect_timeout: Duration::from_secs(120),
        }
    }
}

impl WorkerOptions {
    /// Sets both concurrency limits.
    pub fn with_concurrency(mut self, orchestrations: usize, activities: usize) -> Self {
        self.max_concurrent_orchestrations = orchestrations.max(1);
        self.max_concurrent_activities = activities.max(1);
        self
    }

    /// Sets the graceful-shutdown grace period.
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets the reconnect backoff bounds.
    pub fn with_reconnect_delays(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_initial_delay = initial;
        self.reconnect_max_delay = max.max(initial);
        self
    }
}

/// Runs registered orchestrators, activities and entities for a sidecar.
///
/// ```no_run
/// use duro_sdk::{ActivityContext, OrchestrationContext, Worker};
///
/// # async fn demo() -> Result<(), duro_sdk::WorkerError> {
/// let mut worker = Worker::new("http://127.0.0.1:4001");
/// worker
///     .add_orchestrator("Greet", |ctx: OrchestrationContext, name: String| async move {
///         Ok(ctx.call_activity::<String>("SayHello", name).await?)
///     })
///     .add_activity("SayHello", |_ctx: ActivityContext, name: String| async move {
///         Ok(format!("Hello, {name}!"))
///     });
/// let handle = worker.start()?;
/// // ... until the application stops:
/// handle.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Worker {
    address: String,
    connect: client::ConnectOptions,
    options: WorkerOptions,
    registry: Registry,
}

impl Worker {
    /// A worker for the sidecar at `address` (e.g. `http://127.0.0.1:4001`) with default options.
    pub fn new(address: impl Into<String>) -> Self {
        Worker {
            address: address.into(),
            connect: client::ConnectOptions::default(),
            options: WorkerOptions::default(),
            registry: Registry::new(),
        }
    }

    /// Authentication and TLS for the sidecar (API token, CA certificate).
    pub fn with_connect_options(mut self, connect: client::ConnectOptions) -> Self {
        self.connect = connect;
        self
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// Uses an existing registry (its functions are kept; more can be added).
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// The registered functions.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers an orchestrator; see [`Registry::add_orchestrator`].
    pub fn add_orchestrator<F, Fut, I, O>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + 'static,
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
    {
        self.registry.add_orchestrator(name, f);
        self
    }

    /// Registers an entity; see [`Registry::add_entity`].
    pub fn add_entity<F, Fut, O>(&mut self, name: impl AsRef<str>, f: F) -> &mut Self
    where
        F: Fn(EntityContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
        O: Serialize + Send + 'static,
    {
        self.registry.add_entity(name, f);
        self
    }

    /// Registers an activity; see [`Registry::add_activity`].
    pub fn add_activity<F, Fut, I, O>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
    {
        self.registry.add_activity(name, f);
        self
    }

    /// Starts the worker on the current tokio runtime and returns its handle. Keep the handle:
    /// dropping it stops the worker like [`WorkerHandle::shutdown`] (without waiting).
    pub fn start(self) -> Result<WorkerHandle, WorkerError> {
        let invalid = |message| WorkerError::InvalidAddress { address: self.address.clone(), message };
        let channel = client::channel(&self.address, &self.connect).map_err(invalid)?;
        let grpc = client::grpc_client(channel, &self.connect).map_err(invalid)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (connected_tx, connected_rx) = watch::channel(false);
        let runner = Runner::new(grpc, self.registry, self.options, connected_tx);
        let task = tokio::spawn(runner.run(stop_rx));
        Ok(WorkerHandle { stop: stop_tx, connected: connected_rx, task: Some(task) })
    }

    /// Runs the worker until `shutdown` completes, then shuts down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        let handle = self.start()?;
        shutdown.await;
        handle.shutdown().await
    }
}

/// Controls a running [`Worker`].
#[derive(Debug)]
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    connected: watch::Receiver<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl WorkerHandle {
    /// Whether the work-item stream is open right now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits until the work-item stream is open; `false` on timeout.
    pub async fn wait_until_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c)).await.is_ok_and(|r| r.is_ok())
    }

    /// Stops taking work, lets in-flight work finish within the shutdown timeout, abandons
    /// what is left (the sidecar re-dispatches it) and closes the stream.
    pub async fn shutdown(mut self) -> Result<(), WorkerError> {
        let _ = self.stop.send(true);
        match self.task.take() {
            Some(task) => task.await.map_err(|e| WorkerError::Aborted(e.to_string())),
            None => Ok(()),
        }
    }

    /// Stops at once, like a crash: in-flight work is dropped without being abandoned; the
    /// sidecar re-dispatches it when it notices the closed stream.
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Orchestration,
    Activity,
    Entity,
}

type InFlight = Arc<Mutex<HashMap<String, Kind>>>;

struct Runner {
    grpc: client::Grpc,
    registry: Arc<Registry>,
    options: WorkerOptions,
    connected: watch::Sender<bool>,
    orchestration_slots: Arc<Semaphore>,
    activity_slots: Arc<Semaphore>,
    entity_slots: Arc<Semaphore>,
    in_flight: InFlight,
    tasks: JoinSet<()>,
}

/// Removes a token from the in-flight set when the work item is answered (or dropped).
struct InFlightGuard {
    set: InFlight,
    token: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.token);
        }
    }
}

/// A uniformly random fraction in [0, 1) for backoff jitter (so reconnecting workers spread out).
fn jitter() -> f64 {
    rand::random::<f64>()
}

enum StreamEnd {
    Reconnect,
    Shutdown(Box<Streaming<WorkItem>>),
}

impl Runner {
    fn new(grpc: client::Grpc, registry: Registry, options: WorkerOptions, connected: watch::Sender<bool>) -> Self {
        Runner {
            grpc,
            registry: Arc::new(registry),
            orchestration_slots: Arc::new(Semaphore::new(options.max_concurrent_orchestrations.max(1))),
            activity_slots: Arc::new(Semaphore::new(options.max_concurrent_activities.max(1))),
            entity_slots: Arc::new(Semaphore::new(options.max_concurrent_entities.max(1))),
            options,
            connected,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            tasks: JoinSet::new(),
        }
    }

    fn request(&self) -> GetWorkItemsRequest {
        let cap = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        GetWorkItemsRequest {
            max_concurrent_orchestration_work_items: cap(self.options.max_concurrent_orchestrations),
            max_concurrent_activity_work_items: cap(self.options.max_concurrent_activities),
            max_concurrent_entity_work_items: cap(self.options.max_concurrent_entities),
            // Large histories come by StreamInstanceHistory rather than in the work item
            // (see `fetch_history`), so they are not bounded by the work-item size limit.
            capabilities: vec![WorkerCapability::HistoryStreaming as i32],
            work_item_filters: Some(WorkItemFilters {
                orchestrations: self
                    .registry
                    .orchestrator_names()
                    .map(|n| OrchestrationFilter { name: n.to_string(), versions: Vec::new() })
                    .collect(),
                activities: self
                    .registry
                    .activity_names()
                    .map(|n| ActivityFilter { name: n.to_string(), versions: Vec::new() })
                    .collect(),
                // A worker without entities lists none, so the sidecar offers it none.
                entities: self.registry.entity_names().map(|n| EntityFilter { name: n.to_string() }).collect(),
            }),
            worker_instance_id: String::new(),
        }
    }

    async fn open_stream(&self) -> Result<Streaming<WorkItem>, tonic::Status> {
        let mut grpc = self.grpc.clone();
        let mut hello = tonic::Request::new(());
        hello.set_timeout(Duration::from_secs(30));
        grpc.hello(hello).await?;
        Ok(grpc.get_work_items(self.request()).await?.into_inner())
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut delay = self.options.reconnect_initial_delay;
        loop {
            if *stop.borrow() {
                self.drain(None).await;
                return;
            }
            let opened = tokio::select! {
                r = self.open_stream() => r,
                _ = stop.changed() => continue,
            };
            match opened {
                Ok(stream) => {
                    tracing::info!("connected to the sidecar's work-item stream");
                    let _ = self.connected.send(true);
                    delay = self.options.reconnect_initial_delay;
                    let end = self.serve(stream, &mut stop).await;
                    let _ = self.connected.send(false);
                    if let StreamEnd::Shutdown(stream) = end {
                        self.drain(Some(*stream)).await;
                        return;
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), error = %status.message(), "cannot open the work-item stream");
                }
            }
            // Full jitter between half and all of the current delay.
            let wait = delay.mul_f64(0.5 + jitter() / 2.0);
            tracing::debug!(?wait, "reconnecting to the sidecar");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            delay = (delay * 2).min(self.options.reconnect_max_delay);
        }
    }

    /// Reads work items until the stream ends (→ reconnect) or shutdown is requested.
    async fn serve(&mut self, mut stream: Streaming<WorkItem>, stop: &mut watch::Receiver<bool>) -> StreamEnd {
        let silent = self.options.silent_disconnect_timeout;
        loop {
            tokio::select! {
                _ = stop.changed() => return StreamEnd::Shutdown(Box::new(stream)),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                msg = tokio::time::timeout(silent, stream.message()) => match msg {
                    Err(_) => {
                        tracing::warn!(?silent, "the work-item stream was silent too long; reconnecting");
                        return StreamEnd::Reconnect;
                    }
                    Ok(Ok(Some(item))) => self.dispatch(item),
                    Ok(Ok(None)) => {
                        tracing::info!("the sidecar closed the work-item stream; reconnecting");
                        return StreamEnd::Reconnect;
                    }
                    Ok(Err(status)) => {
                        tracing::warn!(code = ?status.code(), error = %status.message(), "work-item stream failed; reconnecting");
                        return StreamEnd::Reconnect;
                    }
                },
            }
        }
    }

    /// Graceful shutdown: keep the stream open (so in-flight completions stay valid) while
    /// in-flight work finishes; abandon work that arrives meanwhile and whatever is left when
    /// the grace period ends.
    async fn drain(&mut self, mut stream: Option<Streaming<WorkItem>>) {
        let deadline = tokio::time::Instant::now() + self.options.shutdown_timeout;
        while !self.tasks.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.tasks.join_next() => {}
                msg = async { match stream.as_mut() { Some(s) => s.message().await, None => std::future::pending().await } } => {
                    match msg {
                        Ok(Some(item)) => self.abandon_item(item).await,
                        _ => stream = None,
                    }
                }
            }
        }
        let left: Vec<(String, Kind)> = match self.in_flight.lock() {
            Ok(set) => set.iter().map(|(t, k)| (t.clone(), *k)).collect(),
            Err(_) => Vec::new(),
        };
        self.tasks.abort_all();
        for (token, kind) in left {
            tracing::info!(?kind, "abandoning unfinished work item at shutdown");
            self.abandon(token, kind).await;
        }
        while self.tasks.join_next().await.is_some() {}
        drop(stream);
        tracing::info!("worker stopped");
    }

    async fn abandon_item(&self, item: WorkItem) {
        let kind = match item.request {
            Some(work_item::Request::OrchestratorRequest(_)) => Kind::Orchestration,
            Some(work_item::Request::ActivityRequest(_)) => Kind::Activity,
            Some(work_item::Request::EntityRequestV2(_)) | Some(work_item::Request::EntityRequest(_)) => Kind::Entity,
            _ => return,
        };
        self.abandon(item.completion_token, kind).await;
    }

    async fn abandon(&self, token: String, kind: Kind) {
        let mut grpc = self.grpc.clone();
        let result = match kind {
            Kind::Orchestration => grpc
                .abandon_task_orchestrator_work_item(AbandonOrchestrationTaskRequest { completion_token: token })
                .await
                .map(|_| ()),
            Kind::Activity => grpc
                .abandon_task_activity_work_item(AbandonActivityTaskRequest { completion_token: token })
                .await
                .map(|_| ()),
            Kind::Entity => grpc
                .abandon_task_entity_work_item(AbandonEntityTaskRequest { completion_token: token })
                .await
                .map(|_| ()),
        };
        if let Err(status) = result {
            tracing::debug!(code = ?status.code(), error = %status.message(), "abandon failed");
        }
    }

    fn track(&self, token: &str, kind: Kind) -> InFlightGuard {
        if let Ok(mut set) = self.in_flight.lock() {
            set.insert(token.to_string(), kind);
        }
        InFlightGuard { set: self.in_flight.clone(), token: token.to_string() }
    }

    fn dispatch(&mut self, item: WorkItem) {
        let token = item.completion_token;
        match item.request {
            Some(work_item::Request::OrchestratorRequest(request)) => {
                let guard = self.track(&token, Kind::Orchestration);
                let slots = self.orchestration_slots.clone();
                let registry = self.registry.clone();
                let grpc = self.grpc.clone();
                self.tasks.spawn(async move {
                    let _permit = slots.acquire_owned().await;
                    run_orchestration(grpc, registry, request, token).await;
                    drop(guard);
                });
            }
            Some(work_item::Request::ActivityRequest(request)) => {
                let guard = self.track(&token, Kind::Activity);
                let slots = self.activity_slots.clone();
                let registry = self.registry.clone();
                let grpc = self.grpc.clone();
                self.tasks.spawn(async move {
                    let _permit = slots.acquire_owned().await;
                    run_activity(grpc, registry, request, token).await;
                    drop(guard);
                });
            }
            Some(work_item::Request::HealthPing(_)) => tracing::trace!("health ping"),
            Some(work_item::Request::EntityRequestV2(request)) => {
                let guard = self.track(&token, Kind::Entity);
                let slots = self.entity_slots.clone();
                let registry = self.registry.clone();
                let grpc = self.grpc.clone();
                self.tasks.spawn(async move {
                    let _permit = slots.acquire_owned().await;
                    run_entity_batch(grpc, registry, request, token).await;
                    drop(guard);
                });
            }
            Some(work_item::Request::EntityRequest(_)) => {
                // The older DTFx-style batch: Duro never sends it; other sidecars get it back.
                tracing::warn!(
                    "abandoning an old-style entity work item (entityRequest); only entityRequestV2 is supported"
                );
                let mut grpc = self.grpc.clone();
                self.tasks.spawn(async move {
                    let _ =
                        grpc.abandon_task_entity_work_item(AbandonEntityTaskRequest { completion_token: token }).await;
                });
            }
            None => tracing::debug!("ignoring an empty work item"),
        }
    }
}

/// Fills a work item's `pastEvents` from `StreamInstanceHistory` when the sidecar sent it
/// without them (`requiresHistoryStreaming`): the history of the execution the turn is for.
async fn fetch_history(grpc: &mut client::Grpc, request: &mut OrchestratorRequest) -> Result<(), tonic::Status> {
    let mut stream = grpc
        .stream_instance_history(StreamInstanceHistoryRequest {
            instance_id: request.instance_id.clone(),
            execution_id: request.execution_id.clone(),
            for_work_item_processing: true,
        })
        .await?
        .into_inner();
    let mut past = Vec::new();
    while let Some(chunk) = stream.message().await? {
        past.extend(chunk.events);
    }
    request.past_events = past;
    request.requires_history_streaming = false;
    Ok(())
}

/// Turns whose history (past and new events) is at most this long are replayed on the runtime's
/// thread instead of the blocking pool.
const INLINE_REPLAY_EVENTS: usize = 100;

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

async fn run_orchestration(
    mut grpc: client::Grpc,
    registry: Arc<Registry>,
    mut request: OrchestratorRequest,
    token: String,
) {
    let instance_id = request.instance_id.clone();
    if request.requires_history_streaming {
        if let Err(status) = fetch_history(&mut grpc, &mut request).await {
            // Without its history the turn cannot run: give it back (the sidecar redelivers
            // it after a back-off, and counts the delivery).
            tracing::warn!(instance = %instance_id, code = ?status.code(), error = %status.message(),
                "could not fetch the orchestration's history; abandoning the turn");
            let abandon = AbandonOrchestrationTaskRequest { completion_token: token };
            if let Err(status) = grpc.abandon_task_orchestrator_work_item(abandon).await {
                tracing::debug!(code = ?status.code(), error = %status.message(), "abandon failed");
            }
            return;
        }
    }
    // A short history replays in microseconds: run it here rather than pay a hand-off to the
    // blocking pool and back (two thread wake-ups per turn). A long one goes to the blocking pool
    // so that it does not hold up the runtime's other tasks.
    let turn = if request.past_events.len() + request.new_events.len() <= INLINE_REPLAY_EVENTS {
        std::panic::catch_unwind(AssertUnwindSafe(|| replay::execute_request(&registry, &request)))
            .map_err(|panic| panic_message(&*panic))
    } else {
        tokio::task::spawn_blocking(move || replay::execute_request(&registry, &request))
            .await
            .map_err(|e| e.to_string())
    };
    let mut response = match turn {
        Ok(r) => r,
        Err(e) => {
            // The engine catches orchestrator panics; this is a bug in the engine itself.
            tracing::error!(instance = %instance_id, error = %e, "the replay engine failed");
            let details = FailureDetails::new("WorkerError", format!("the replay engine failed: {e}"));
            OrchestratorResponse {
                instance_id: instance_id.clone(),
                actions: vec![OrchestratorAction {
                    id: -1,
                    orchestrator_action_type: Some(OrchestratorActionType::CompleteOrchestration(
                        CompleteOrchestrationAction {
                            orchestration_status: OrchestrationStatus::Failed as i32,
                            failure_details: Some(details.to_proto()),
                            ..Default::default()
                        },
                    )),
                }],
                ..Default::default()
            }
        }
    };
    response.completion_token = token;
    if let Err(status) = grpc.complete_orchestrator_task(response).await {
        tracing::warn!(instance = %instance_id, code = ?status.code(), error = %status.message(),
            "the sidecar did not accept the orchestration turn (it will be re-dispatched)");
    }
}

async fn run_entity_batch(mut grpc: client::Grpc, registry: Arc<Registry>, request: EntityRequest, token: String) {
    let mut result = entity::execute_batch(&registry, &request).await;
    result.completion_token = token;
    if let Err(status) = grpc.complete_entity_task(result).await {
        tracing::warn!(entity = %request.instance_id, code = ?status.code(), error = %full_message(&status),
            "the sidecar did not accept the entity batch result (it will be re-dispatched)");
    }
}

async fn run_activity(mut grpc: client::Grpc, registry: Arc<Registry>, request: ActivityRequest, token: String) {
    let instance = request.orchestration_instance.clone().unwrap_or_default();
    let ctx = ActivityContext {
        name: request.name.clone(),
        instance_id: instance.instance_id.clone(),
        execution_id: instance.execution_id.clone(),
        task_id: request.task_id,
    };
    let outcome = match registry.activity(&request.name) {
        None => Err(FailureDetails::new(
            "ActivityNotRegisteredError",
            format!("no activity named '{}' is registered with this worker", request.name),
        )),
        Some(f) => match AssertUnwindSafe(f(ctx, request.input)).catch_unwind().await {
            Ok(r) => r,
            Err(panic) => {
                let msg = panic_message(&*panic);
                Err(FailureDetails::new("ActivityPanic", format!("the activity panicked: {msg}")))
            }
        },
    };
    let (result, failure_details) = match outcome {
        Ok(r) => (r, None),
        Err(d) => (None, Some(d.to_proto())),
    };
    let response = ActivityResponse {
        instance_id: instance.instance_id.clone(),
        task_id: request.task_id,
        result,
        failure_details,
        completion_token: token,
    };
    if let Err(status) = grpc.complete_activity_task(response).await {
        tracing::warn!(instance = %instance.instance_id, activity = %request.name, code = ?status.code(),
            error = %full_message(&status), "the sidecar did not accept the activity result (it will be re-dispatched)");
    }
}
