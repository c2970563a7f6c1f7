//! The `TaskHubSidecarService` gRPC adapter: validates requests, calls the engine, maps
//! results and errors to the wire. No orchestration logic lives here.

pub mod auth;
mod entities;
pub mod validate;

use std::pin::Pin;
use std::time::Duration;

use duro_proto::task_hub_sidecar_service_server::TaskHubSidecarService;
use duro_proto::*;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::ambient::now_ms;
use crate::core::time::{from_ms, to_ms};
use crate::core::{events::StartSpec, is_terminal, NewInstance};
use crate::engine::scheduler::{Outgoing, StreamRules};
use crate::engine::{is_finished, is_started, Engine, EngineError};
use crate::store::*;

/// Default and largest page of QueryInstances / ListInstanceIds.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Encoded bytes per StreamInstanceHistory chunk, at most (an event larger than this is a
/// chunk of its own); the .NET host uses the same.
const HISTORY_CHUNK_BYTES: usize = 256 * 1024;
/// The refusal of a `replaceableStatus` list that replaces live instances but excludes
/// TERMINATED; the text is the Durable Task Scheduler's (the JS SDK's tests expect it).
const REUSE_WITHOUT_TERMINATED: &str =
    "Invalid reusable statuses: cannot exclude 'Terminated' while also allowing reuse of running instances";
/// Prefix that makes continuation tokens distinct from the values SDKs treat as "done".
const TOKEN_PREFIX: &str = "k:";

/// gRPC service options.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub validate_json: bool,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions { validate_json: true }
    }
}

pub struct SidecarService {
    engine: Engine,
    opts: ServiceOptions,
}

impl SidecarService {
    pub fn new(engine: Engine, opts: ServiceOptions) -> Self {
        SidecarService { engine, opts }
    }
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        match e {
            EngineError::NotFound(m) => Status::not_found(m),
            EngineError::InvalidArgument(m) => Status::invalid_argument(m),
            EngineError::FailedPrecondition(m) => Status::failed_precondition(m),
            EngineError::AlreadyExists(m) => Status::already_exists(m),
            EngineError::ResourceExhausted(m) => Status::resource_exhausted(m),
            EngineError::ShuttingDown => Status::unavailable("the Duro sidecar is shutting down"),
            EngineError::Store(StoreError::Closed) => Status::unavailable("the Duro store is shutting down"),
            EngineError::Store(e) if e.is_transient() => {
                tracing::warn!(error = %e, "transient store error");
                Status::unavailable(format!("the store cannot take this now, retry: {e}"))
            }
            EngineError::Store(e) => {
                tracing::error!(error = %e, "store error");
                Status::internal(format!("store error: {e}"))
            }
        }
    }
}

fn statuses(values: &[i32]) -> Result<Vec<OrchestrationStatus>, Status> {
    values
        .iter()
        .map(|v| {
            OrchestrationStatus::try_from(*v)
                .map_err(|_| Status::invalid_argument(format!("unknown orchestration status {v}")))
        })
        .collect()
}

/// The wire form of an instance.
pub fn state_of(r: &InstanceRecord, with_payloads: bool) -> OrchestrationState {
    OrchestrationState {
        instance_id: r.instance_id.clone(),
        name: r.name.clone(),
        version: r.version.clone(),
        orchestration_status: r.status as i32,
        scheduled_start_timestamp: r.scheduled_start_at_ms.map(from_ms),
        created_timestamp: Some(from_ms(r.created_at_ms)),
        last_updated_timestamp: Some(from_ms(r.updated_at_ms)),
        input: if with_payloads { r.input.clone() } else { None },
        output: if with_payloads { r.output.clone() } else { None },
        custom_status: if with_payloads { r.custom_status.clone() } else { None },
        failure_details: r.failure.clone(),
        execution_id: Some(r.execution_id.clone()),
        completed_timestamp: r.completed_at_ms.map(from_ms),
        parent_instance_id: r.parent_instance_id.clone(),
        tags: r.tags.clone(),
    }
}

fn instance_response(r: Option<InstanceRecord>, with_payloads: bool) -> GetInstanceResponse {
    match r {
        Some(r) => GetInstanceResponse { exists: true, orchestration_state: Some(state_of(&r, with_payloads)) },
        None => GetInstanceResponse { exists: false, orchestration_state: None },
    }
}

/// The request's id reuse policy (semantics: the table on [`IdReuse`]). `legacyAction` 0
/// (ERROR, the proto3 default, never on the wire) is indistinguishable from the current
/// `replaceableStatus` form and is read as it; 1 (IGNORE) and 2 (TERMINATE) are the Go SDK's
/// legacy form. A `replaceableStatus` list that allows replacing a live instance but not a
/// TERMINATED one is contradictory (replacing a live instance terminates it) and is refused
/// with the Durable Task Scheduler's message.
fn reuse_policy(p: Option<&OrchestrationIdReusePolicy>) -> Result<IdReuse, Status> {
    let Some(p) = p else { return Ok(IdReuse::terminal()) };
    let listed = statuses(&p.replaceable_status)?;
    Ok(match p.legacy_action {
        0 if IdReuse::replaces_live_but_not_terminated(&listed) => {
            return Err(Status::invalid_argument(REUSE_WITHOUT_TERMINATED))
        }
        0 => IdReuse::Replace(listed),
        1 => IdReuse::Legacy { statuses: listed, action: LegacyReuseAction::Ignore },
        2 => IdReuse::Legacy { statuses: listed, action: LegacyReuseAction::Terminate },
        other => return Err(Status::invalid_argument(format!("unknown orchestration id reuse action {other}"))),
    })
}

fn decode_token(token: Option<&String>) -> Result<Option<String>, Status> {
    match token.map(String::as_str) {
        None | Some("") => Ok(None),
        Some(t) => t
            .strip_prefix(TOKEN_PREFIX)
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| Status::invalid_argument("continuationToken was not issued by this sidecar")),
    }
}

/// The client's deadline from the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`).
pub fn client_deadline<T>(request: &Request<T>) -> Option<Duration> {
    let v = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Margin by which a wait answers before the client's deadline, so the client gets
/// DEADLINE_EXCEEDED from us rather than a CANCELLED from the transport racing it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

async fn wait_with_cap(
    engine: &Engine,
    instance_id: &str,
    client_deadline: Option<Duration>,
    done: impl Fn(OrchestrationStatus) -> bool,
) -> Result<Option<InstanceRecord>, Status> {
    let cap = engine.options().max_wait;
    let limit = client_deadline.map(|d| d.saturating_sub(DEADLINE_MARGIN).min(cap)).unwrap_or(cap);
    match tokio::time::timeout(limit, engine.wait_for(instance_id, done)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "instance '{instance_id}' did not reach the awaited state within {:.1}s",
            limit.as_secs_f64()
        ))),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// One `GetWorkItems` response stream, read by tonic directly (no relay task and channel in
/// between: one task wake-up and channel hop less per work item): the engine's work items for the
/// stream, a health ping after `ping_every` without any, and `unavailable` at shutdown, after
/// which it ends. Dropping it (the worker went away, or it ended) closes the engine's stream.
struct WorkItemStream {
    /// Held for its `Drop`.
    _close: CloseStream,
    items: mpsc::UnboundedReceiver<Outgoing>,
    ping: Pin<Box<tokio::time::Sleep>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    v1: bool,
    ping_every: Duration,
    ended: bool,
}

impl WorkItemStream {
    async fn next(mut self) -> Option<(Result<WorkItem, Status>, Self)> {
        if self.ended {
            return None;
        }
        let item = tokio::select! {
            item = self.items.recv() => match item {
                Some(Outgoing::Item(w)) => Ok(if self.v1 { entities::to_v1(*w) } else { *w }),
                None => return None,
            },
            _ = &mut self.ping => Ok(WorkItem {
                request: Some(work_item::Request::HealthPing(HealthPing {})),
                completion_token: String::new(),
            }),
            _ = self.shutdown.changed() => {
                self.ended = true;
                Err(Status::unavailable("the Duro sidecar is shutting down; reconnect"))
            }
        };
        let at = tokio::time::Instant::now() + self.ping_every;
        self.ping.as_mut().reset(at);
        Some((item, self))
    }
}

/// Closes a work-item stream in the engine when dropped (its leases go back to the queues).
struct CloseStream {
    engine: Engine,
    id: crate::engine::scheduler::StreamId,
}

impl Drop for CloseStream {
    fn drop(&mut self) {
        // Closing dispatches the stream's work elsewhere, which spawns tasks: do it on the
        // runtime (a stream dropped while the runtime itself shuts down has nothing to hand over).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (engine, id) = (self.engine.clone(), self.id);
            rt.spawn(async move { engine.close_stream(id) });
        }
    }
}

#[tonic::async_trait]
impl TaskHubSidecarService for SidecarService {
    async fn hello(&self, _request: Request<()>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }

    async fn start_instance(
        &self,
        request: Request<CreateInstanceRequest>,
    ) -> Result<Response<CreateInstanceResponse>, Status> {
        let r = request.into_inner();
        let instance_id = if r.instance_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { r.instance_id };
        validate::instance_id(&instance_id)?;
        validate::name("name", &r.name)?;
        validate::json("input", r.input.as_deref(), self.opts.validate_json)?;
        let reuse = reuse_policy(r.orchestration_id_reuse_policy.as_ref())?;
        let now = now_ms();
        // A start time at or before now (JS sends the epoch when unset) means "now".
        let scheduled = r.scheduled_start_timestamp.as_ref().map(to_ms).filter(|t| *t > now);
        let new = NewInstance {
            spec: StartSpec {
                instance_id: instance_id.clone(),
                execution_id: r.execution_id.filter(|e| !e.is_empty()).unwrap_or_else(crate::ambient::new_execution_id),
                name: r.name,
                version: r.version,
                input: r.input,
                parent: None,
                scheduled_start_ms: scheduled,
                parent_trace_context: r.parent_trace_context,
                tags: r.tags,
            },
            created_at_ms: now,
            visible_at_ms: scheduled.unwrap_or(now),
            parent_task: None,
        };
        match self.engine.create_instance(new, reuse).await? {
            CreateResult::Created(_) | CreateResult::Kept => Ok(Response::new(CreateInstanceResponse { instance_id })),
            CreateResult::AlreadyExists(status) => Err(Status::already_exists(format!(
                "an orchestration instance with id '{instance_id}' already exists and is {}",
                status.as_str_name()
            ))),
        }
    }

    async fn get_instance(
        &self,
        request: Request<GetInstanceRequest>,
    ) -> Result<Response<GetInstanceResponse>, Status> {
        let r = request.into_inner();
        validate::instance_id(&r.instance_id)?;
        let rec = self.engine.get_instance(&r.instance_id).await?;
        Ok(Response::new(instance_response(rec, r.get_inputs_and_outputs)))
    }

    async fn wait_for_instance_start(
        &self,
        request: Request<GetInstanceRequest>,
    ) -> Result<Response<GetInstanceResponse>, Status> {
        let deadline = client_deadline(&request);
        let r = request.into_inner();
        validate::instance_id(&r.instance_id)?;
        let rec = wait_with_cap(&self.engine, &r.instance_id, deadline, is_started).await?;
        Ok(Response::new(instance_response(rec, r.get_inputs_and_outputs)))
    }

    async fn wait_for_instance_completion(
        &self,
        request: Request<GetInstanceRequest>,
    ) -> Result<Response<GetInstanceResponse>, Status> {
        let deadline = client_deadline(&request);
        let r = request.into_inner();
        validate::instance_id(&r.instance_id)?;
        let rec = wait_with_cap(&self.engine, &r.instance_id, deadline, is_finished).await?;
        Ok(Response::new(instance_response(rec, r.get_inputs_and_outputs)))
    }

    async fn raise_event(&self, request: Request<RaiseEventRequest>) -> Result<Response<RaiseEventResponse>, Status> {
        let r = request.into_inner();
        validate::instance_id(&r.instance_id)?;
        validate::name("name", &r.name)?;
        validate::json("input", r.input.as_deref(), self.opts.validate_json)?;
        self.engine.raise_event(&r.instance_id, r.name, r.input).await?;
        Ok(Response::new(RaiseEventResponse {}))
    }

    async fn terminate_instance(
        &self,
        request: Request<TerminateRequest>,
    ) -> Result<Response<TerminateResponse>, Status> {
        let r = request.into_inner();
        validate::instance_id(&r.instance_id)?;
        validate::json("output", r.output.as_deref(), self.opts.validate_json)?;
        self.engine.terminate(&r.instance_id, r.output, r.recursive).await?;
        Ok(Response::new(TerminateResponse {}))
    }

    async fn suspend_instance(&self, request: Request<SuspendRequest>) -> Result<Response<SuspendResponse>, Status> {
        let r = request.into_inner();
        validate::instance_id(&r.instance_id)?;
        self.engine.suspend(&r.instance_id, r.reason).await?;
        Ok(Response::new(SuspendResponse {}))
    }

    async fn resume_instance(&self, request: Request<ResumeRequest>) -> Result<Response<ResumeResponse>, Status> {
        let r = request.into_inner();
        validate::instance_id(&r.instance_id)?;
        self.engine.resume(&r.instance_id, r.reason).await?;
        Ok(Response::new(ResumeResponse {}))
    }

    async fn rewind_instance(
        &self,
        request: Request<RewindInstanceRequest>,
    ) -> Result<Response<RewindInstanceResponse>, Status> {
        let r = request.into_inner();
        validate::instance_id(&r.instance_id)?;
        self.engine.rewind(&r.instance_id, r.reason).await?;
        Ok(Response::new(RewindInstanceResponse {}))
    }

    async fn restart_instance(
        &self,
        request: Request<RestartInstanceRequest>,
    ) -> Result<Response<RestartInstanceResponse>, Status> {
        let r = request.into_inner();
        validate::instance_id(&r.instance_id)?;
        let new_id = r.restart_with_new_instance_id.then(|| uuid::Uuid::new_v4().to_string());
        let instance_id = self.engine.restart(&r.instance_id, new_id).await?;
        Ok(Response::new(RestartInstanceResponse { instance_id }))
    }

    async fn query_instances(
        &self,
        request: Request<QueryInstancesRequest>,
    ) -> Result<Response<QueryInstancesResponse>, Status> {
        let q = request.into_inner().query.unwrap_or_default();
        let page = match q.max_instance_count {
            n if n <= 0 => DEFAULT_PAGE,
            n => (n as u32).min(MAX_PAGE),
        };
        let filter = InstanceFilter {
            statuses: statuses(&q.runtime_status)?,
            created_from_ms: q.created_time_from.as_ref().map(to_ms),
            created_to_ms: q.created_time_to.as_ref().map(to_ms),
            instance_id_prefix: q.instance_id_prefix.filter(|p| !p.is_empty()),
            // One row more than the page tells whether another page follows.
            page_size: page + 1,
            after_instance_id: decode_token(q.continuation_token.as_ref())?,
            ..Default::default()
        };
        let mut records = self.engine.query(&filter).await?;
        let continuation_token = if records.len() > page as usize {
            records.truncate(page as usize);
            records.last().map(|r| format!("{TOKEN_PREFIX}{}", r.instance_id))
        } else {
            None
        };
        Ok(Response::new(QueryInstancesResponse {
            orchestration_state: records.iter().map(|r| state_of(r, q.fetch_inputs_and_outputs)).collect(),
            continuation_token,
        }))
    }

    async fn list_instance_ids(
        &self,
        request: Request<ListInstanceIdsRequest>,
    ) -> Result<Response<ListInstanceIdsResponse>, Status> {
        let r = request.into_inner();
        let page = match r.page_size {
            n if n <= 0 => DEFAULT_PAGE,
            n => (n as u32).min(MAX_PAGE),
        };
        let after = match decode_token(r.last_instance_key.as_ref())? {
            None => None,
            Some(k) => {
                let (t, id) = k
                    .split_once(':')
                    .ok_or_else(|| Status::invalid_argument("lastInstanceKey was not issued by this sidecar"))?;
                let t: i64 = t
                    .parse()
                    .map_err(|_| Status::invalid_argument("lastInstanceKey was not issued by this sidecar"))?;
                Some((t, id.to_string()))
            }
        };
        let filter = CompletedFilter {
            statuses: statuses(&r.runtime_status)?,
            completed_from_ms: r.completed_time_from.as_ref().map(to_ms),
            completed_to_ms: r.completed_time_to.as_ref().map(to_ms),
            // One row more than the page tells whether another page follows.
            page_size: page + 1,
            after,
        };
        let mut ids = self.engine.list_completed(&filter).await?;
        let last_instance_key = if ids.len() > page as usize {
            ids.truncate(page as usize);
            ids.last().map(|(t, id)| format!("{TOKEN_PREFIX}{t}:{id}"))
        } else {
            None
        };
        Ok(Response::new(ListInstanceIdsResponse {
            instance_ids: ids.into_iter().map(|(_, id)| id).collect(),
            last_instance_key,
        }))
    }

    async fn purge_instances(
        &self,
        request: Request<PurgeInstancesRequest>,
    ) -> Result<Response<PurgeInstancesResponse>, Status> {
        use purge_instances_request::Request as P;
        let r = request.into_inner();
        let selection = match r.request {
            Some(P::InstanceId(id)) => {
                validate::instance_id(&id)?;
                PurgeSelection::Ids(vec![id])
            }
            Some(P::PurgeInstanceFilter(f)) => PurgeSelection::Filter {
                created_from_ms: f.created_time_from.as_ref().map(to_ms),
                created_to_ms: f.created_time_to.as_ref().map(to_ms),
                statuses: statuses(&f.runtime_status)?,
            },
            Some(P::InstanceBatch(b)) => {
                if b.instance_ids.len() > 500 {
                    return Err(Status::invalid_argument("instanceBatch holds more than 500 ids"));
                }
                for id in &b.instance_ids {
                    validate::instance_id(id)?;
                }
                PurgeSelection::Ids(b.instance_ids)
            }
            None => return Err(Status::invalid_argument("purge needs an instanceId, a filter or an instance batch")),
        };
        let deleted = self.engine.purge(selection, r.recursive).await?;
        Ok(Response::new(PurgeInstancesResponse {
            deleted_instance_count: i32::try_from(deleted).unwrap_or(i32::MAX),
            is_complete: Some(true),
        }))
    }

    type GetWorkItemsStream = BoxStream<WorkItem>;

    async fn get_work_items(
        &self,
        request: Request<GetWorkItemsRequest>,
    ) -> Result<Response<Self::GetWorkItemsStream>, Status> {
        let v1 = entities::wants_v1(request.metadata());
        let r = request.into_inner();
        let default_cap = self.engine.options().default_stream_cap;
        let rules = StreamRules::from_request(&r, default_cap);
        let max_entities = match r.max_concurrent_entity_work_items {
            n if n > 0 => (n as usize).min(crate::engine::scheduler::MAX_STREAM_CAP),
            _ => default_cap,
        };
        let (id, items) = self.engine.open_stream_with_entities(rules, max_entities);
        let ping_every = self.engine.options().ping_interval;
        let state = WorkItemStream {
            _close: CloseStream { engine: self.engine.clone(), id },
            ping: Box::pin(tokio::time::sleep(ping_every)),
            shutdown: self.engine.shutdown_signal(),
            items,
            v1,
            ping_every,
            ended: false,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(state, WorkItemStream::next))))
    }

    async fn complete_activity_task(
        &self,
        request: Request<ActivityResponse>,
    ) -> Result<Response<CompleteTaskResponse>, Status> {
        self.engine.complete_activity(request.into_inner()).await?;
        Ok(Response::new(CompleteTaskResponse {}))
    }

    async fn complete_orchestrator_task(
        &self,
        request: Request<OrchestratorResponse>,
    ) -> Result<Response<CompleteTaskResponse>, Status> {
        self.engine.complete_orchestration(request.into_inner()).await?;
        Ok(Response::new(CompleteTaskResponse {}))
    }

    async fn complete_entity_task(
        &self,
        request: Request<EntityBatchResult>,
    ) -> Result<Response<CompleteTaskResponse>, Status> {
        self.engine.complete_entity(request.into_inner()).await?;
        Ok(Response::new(CompleteTaskResponse {}))
    }

    type StreamInstanceHistoryStream = BoxStream<HistoryChunk>;

    async fn stream_instance_history(
        &self,
        request: Request<StreamInstanceHistoryRequest>,
    ) -> Result<Response<Self::StreamInstanceHistoryStream>, Status> {
        let r = request.into_inner();
        validate::instance_id(&r.instance_id)?;
        let execution = r.execution_id.as_deref().filter(|e| !e.is_empty());
        let Some(history) = self.engine.history_for(&r.instance_id, execution, r.for_work_item_processing).await?
        else {
            return Err(Status::not_found(format!("no orchestration instance '{}'", r.instance_id)));
        };
        // Chunks are copied one at a time as the client reads them.
        let chunks = history.chunks(HISTORY_CHUNK_BYTES).map(|events| Ok(HistoryChunk { events }));
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn create_task_hub(
        &self,
        _request: Request<CreateTaskHubRequest>,
    ) -> Result<Response<CreateTaskHubResponse>, Status> {
        Err(Status::unimplemented("Duro creates its store on start-up; CreateTaskHub is not needed"))
    }

    async fn delete_task_hub(
        &self,
        _request: Request<DeleteTaskHubRequest>,
    ) -> Result<Response<DeleteTaskHubResponse>, Status> {
        Err(Status::unimplemented("Duro does not delete its store over the API; remove the database file instead"))
    }

    async fn signal_entity(&self, r: Request<SignalEntityRequest>) -> Result<Response<SignalEntityResponse>, Status> {
        entities::signal(&self.engine, r.into_inner()).await
    }

    async fn get_entity(&self, r: Request<GetEntityRequest>) -> Result<Response<GetEntityResponse>, Status> {
        entities::get(&self.engine, r.into_inner()).await
    }

    async fn query_entities(
        &self,
        r: Request<QueryEntitiesRequest>,
    ) -> Result<Response<QueryEntitiesResponse>, Status> {
        entities::query(&self.engine, r.into_inner()).await
    }

    async fn clean_entity_storage(
        &self,
        r: Request<CleanEntityStorageRequest>,
    ) -> Result<Response<CleanEntityStorageResponse>, Status> {
        entities::clean(&self.engine, r.into_inner()).await
    }

    async fn abandon_task_activity_work_item(
        &self,
        request: Request<AbandonActivityTaskRequest>,
    ) -> Result<Response<AbandonActivityTaskResponse>, Status> {
        self.engine.abandon(&request.into_inner().completion_token);
        Ok(Response::new(AbandonActivityTaskResponse {}))
    }

    async fn abandon_task_orchestrator_work_item(
        &self,
        request: Request<AbandonOrchestrationTaskRequest>,
    ) -> Result<Response<AbandonOrchestrationTaskResponse>, Status> {
        self.engine.abandon(&request.into_inner().completion_token);
        Ok(Response::new(AbandonOrchestrationTaskResponse {}))
    }

    async fn abandon_task_entity_work_item(
        &self,
        request: Request<AbandonEntityTaskRequest>,
    ) -> Result<Response<AbandonEntityTaskResponse>, Status> {
        self.engine.abandon_entity(&request.into_inner().completion_token);
        Ok(Response::new(AbandonEntityTaskResponse {}))
    }

    async fn skip_graceful_orchestration_terminations(
        &self,
        request: Request<SkipGracefulOrchestrationTerminationsRequest>,
    ) -> Result<Response<SkipGracefulOrchestrationTerminationsResponse>, Status> {
        let r = request.into_inner();
        let ids = r.instance_batch.map(|b| b.instance_ids).unwrap_or_default();
        if ids.len() > 500 {
            return Err(Status::invalid_argument("instanceBatch holds more than 500 ids"));
        }
        let mut unterminated = Vec::new();
        for id in ids {
            validate::instance_id(&id)?;
            match self.engine.get_instance(&id).await? {
                // Instances holding entity locks are left alone (protocol reference §2).
                Some(rec) if !is_terminal(rec.status) && !self.engine.holds_entity_locks(&id) => {
                    self.engine.terminate(&id, r.reason.clone(), false).await?;
                }
                _ => unterminated.push(id),
            }
        }
        Ok(Response::new(SkipGracefulOrchestrationTerminationsResponse { unterminated_instance_ids: unterminated }))
    }
}

/// How long the server waits for in-flight calls on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(v: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert("grpc-timeout", v.parse().unwrap());
        r
    }

    #[test]
    fn reads_grpc_timeout_units() {
        assert_eq!(client_deadline(&with_timeout("30S")), Some(Duration::from_secs(30)));
        assert_eq!(client_deadline(&with_timeout("1500m")), Some(Duration::from_millis(1500)));
        assert_eq!(client_deadline(&with_timeout("2M")), Some(Duration::from_secs(120)));
        assert_eq!(client_deadline(&with_timeout("7u")), Some(Duration::from_micros(7)));
        assert_eq!(client_deadline(&with_timeout("x")), None);
        assert_eq!(client_deadline(&with_timeout("10Q")), None);
        assert_eq!(client_deadline(&Request::new(())), None);
    }

    #[test]
    fn refuses_a_reuse_policy_that_replaces_live_instances_but_not_terminated_ones() {
        use OrchestrationStatus as S;
        let policy = |listed: &[S], action: i32| OrchestrationIdReusePolicy {
            replaceable_status: listed.iter().map(|s| *s as i32).collect(),
            legacy_action: action,
        };
        // The JS SDK's dedupeStatuses [TERMINATED, RUNNING, PENDING] on the wire.
        let js = policy(&[S::Completed, S::Failed, S::Canceled, S::Suspended], 0);
        let err = reuse_policy(Some(&js)).expect_err("contradictory");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), REUSE_WITHOUT_TERMINATED);
        for live in [S::Running, S::Pending] {
            assert!(reuse_policy(Some(&policy(&[live, S::Completed], 0))).is_err(), "{live:?}");
        }
        let ok = [S::Running, S::Terminated];
        assert_eq!(reuse_policy(Some(&policy(&ok, 0))).expect("consistent"), IdReuse::Replace(ok.to_vec()));
        assert!(reuse_policy(Some(&policy(&[S::Completed, S::Failed], 0))).is_ok());
        assert!(reuse_policy(Some(&policy(&[], 0))).is_ok());
        // The Go SDK's legacy TERMINATE and IGNORE forms are not checked.
        assert!(reuse_policy(Some(&policy(&[S::Running], 2))).is_ok());
        assert!(reuse_policy(Some(&policy(&[S::Running], 1))).is_ok());
    }
}
