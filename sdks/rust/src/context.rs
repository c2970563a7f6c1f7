//! The orchestration context: the API orchestrator functions use to schedule durable work.
//!
//! Every method records an action in the replay state (see [`crate::replay`]) and returns a
//! [`DurableTask`] that completes when the matching history event is replayed or arrives. The
//! context holds no I/O and no clock of its own: time comes from `orchestratorStarted` events
//! and ids from the action counter, which is what makes replay deterministic.

use std::cell::RefCell;
use std::fmt;
use std::rc::{Rc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use duro_proto::orchestrator_action::OrchestratorActionType;
use duro_proto::send_entity_message_action::EntityMessageType;
use duro_proto::{
    CreateSubOrchestrationAction, CreateTimerAction, EntityLockRequestedEvent, EntityOperationCalledEvent,
    EntityOperationSignaledEvent, EntityUnlockSentEvent, OrchestrationInstance, ScheduleTaskAction,
    SendEntityMessageAction, SendEventAction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::entity::EntityId;
use crate::error::{TaskError, TaskKind};
use crate::http::{self, DurableHttpRequest, DurableHttpResponse};
use crate::payload;
use crate::replay::{ContinueAsNew, ReplayState, SectionState};
use crate::retry::RetryPolicy;
use crate::task::{self, DurableTask, SlotFuture, SlotRef, WhenAny};
use crate::time;

/// Namespace of deterministic UUIDs, shared with the .NET and Go SDKs.
const UUID_NAMESPACE: uuid::Uuid = uuid::uuid!("9e952958-5e33-4daf-827f-2fa12937b875");

/// The orchestration that started this one as a sub-orchestration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentOrchestration {
    /// The parent's orchestrator name, if the sidecar sent it.
    pub name: Option<String>,
    /// The parent's instance id.
    pub instance_id: String,
    /// The parent's execution id, if the sidecar sent it.
    pub execution_id: Option<String>,
    /// The id of the parent's `createSubOrchestration` action.
    pub task_scheduled_id: i32,
}

/// Options of [`OrchestrationContext::call_sub_orchestration_with_options`].
///
/// ```
/// use duro_sdk::{RetryPolicy, SubOrchestrationOptions};
/// use std::time::Duration;
/// let opts = SubOrchestrationOptions::new()
///     .with_instance_id("order-42-shipping")
///     .with_retry(RetryPolicy::new(3, Duration::from_secs(5)));
/// assert_eq!(opts.instance_id.as_deref(), Some("order-42-shipping"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubOrchestrationOptions {
    /// The child's instance id; default `<parent id>:<action id as 4 hex digits>`.
    pub instance_id: Option<String>,
    /// The child's version.
    pub version: Option<String>,
    /// Retry the child (same instance id) when it fails.
    pub retry: Option<RetryPolicy>,
}

impl SubOrchestrationOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the child's instance id.
    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Sets the child's version.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Sets a retry policy.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

/// The handle an orchestrator function uses to do durable work.
///
/// Cheap to clone; valid only inside the orchestrator (it is `!Send`). Orchestrators must be
/// deterministic: schedule work only through this context, read time with
/// [`current_utc_datetime`](Self::current_utc_datetime), make ids with
/// [`new_uuid`](Self::new_uuid).
///
/// ```no_run
/// use duro_sdk::{OrchestrationContext, Worker};
///
/// let mut worker = Worker::new("http://127.0.0.1:4001");
/// worker.add_orchestrator("Sequence", |ctx: OrchestrationContext, _input: ()| async move {
///     let mut out = Vec::new();
///     for city in ["Tokyo", "Seattle", "London"] {
///         out.push(ctx.call_activity::<String>("SayHello", city).await?);
///     }
///     Ok(out)
/// });
/// ```
#[derive(Clone)]
pub struct OrchestrationContext {
    state: Rc<RefCell<ReplayState>>,
}

impl fmt::Debug for OrchestrationContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("OrchestrationContext")
            .field("instance_id", &s.instance_id)
            .field("name", &s.name)
            .field("is_replaying", &s.is_replaying)
            .finish()
    }
}

impl OrchestrationContext {
    pub(crate) fn from_state(state: Rc<RefCell<ReplayState>>) -> Self {
        OrchestrationContext { state }
    }

    /// This orchestration's instance id.
    pub fn instance_id(&self) -> String {
        self.state.borrow().instance_id.clone()
    }

    /// This execution's id (new after each continue-as-new), if the sidecar sent it.
    pub fn execution_id(&self) -> Option<String> {
        self.state.borrow().execution_id.clone()
    }

    /// The orchestrator name.
    pub fn name(&self) -> String {
        self.state.borrow().name.clone()
    }

    /// The orchestration's version, if it was started with one.
    pub fn version(&self) -> Option<String> {
        self.state.borrow().version.clone()
    }

    /// The parent orchestration, if this is a sub-orchestration.
    pub fn parent(&self) -> Option<ParentOrchestration> {
        self.state.borrow().parent.clone()
    }

    /// The deterministic current time: the timestamp of the turn being replayed or run.
    pub fn current_utc_datetime(&self) -> DateTime<Utc> {
        self.state.borrow().current_time
    }

    /// `true` while the code is re-running past history (e.g. to skip logging twice).
    pub fn is_replaying(&self) -> bool {
        self.state.borrow().is_replaying
    }

    /// A deterministic UUID (version 5), the same on every replay: the name is
    /// `<instance id>_<current time, .NET round-trip format>_<counter>` in the namespace
    /// `9e952958-5e33-4daf-827f-2fa12937b875`, as in the .NET and Go SDKs.
    pub fn new_uuid(&self) -> uuid::Uuid {
        let mut s = self.state.borrow_mut();
        let name = format!("{}_{}_{}", s.instance_id, time::dotnet_roundtrip(s.current_time), s.uuid_counter);
        s.uuid_counter += 1;
        uuid::Uuid::new_v5(&UUID_NAMESPACE, name.as_bytes())
    }

    /// Sets the custom status visible to clients (any JSON-serializable value).
    pub fn set_custom_status(&self, status: impl Serialize) {
        let encoded = payload::encode(&status).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "custom status is not serializable; storing null");
            "null".to_string()
        });
        self.state.borrow_mut().custom_status = Some(encoded);
    }

    /// Schedules an activity and returns its task.
    ///
    /// ```no_run
    /// # use duro_sdk::{OrchestrationContext, Failure, TaskError};
    /// # async fn orchestrator(ctx: OrchestrationContext) -> Result<String, Failure> {
    /// match ctx.call_activity::<String>("Charge", 42).await {
    ///     Ok(receipt) => Ok(receipt),
    ///     Err(TaskError::Failed { details, .. }) if details.error_type == "CardDeclined" => {
    ///         Ok("declined".to_string())
    ///     }
    ///     Err(other) => Err(other.into()),
    /// }
    /// # }
    /// ```
    pub fn call_activity<O>(&self, name: &str, input: impl Serialize) -> DurableTask<O>
    where
        O: DeserializeOwned + 'static,
    {
        match payload::encode(&input) {
            Ok(json) => {
                DurableTask::from_slot(self.schedule_activity(name, &json), TaskKind::Activity, name.to_string())
            }
            Err(e) => DurableTask::ready(Err(TaskError::Serialize { name: name.to_string(), message: e.to_string() })),
        }
    }

    /// Schedules an activity that is retried by `policy` when it fails. Each retry waits on a
    /// durable timer, then schedules the activity again (with a new action id).
    ///
    /// ```no_run
    /// # use duro_sdk::{OrchestrationContext, Failure, RetryPolicy};
    /// # use std::time::Duration;
    /// # async fn orchestrator(ctx: OrchestrationContext) -> Result<String, Failure> {
    /// let policy = RetryPolicy::new(5, Duration::from_secs(1)).with_backoff_coefficient(2.0);
    /// Ok(ctx.call_activity_with_retry::<String>("Flaky", (), &policy).await?)
    /// # }
    /// ```
    pub fn call_activity_with_retry<O>(&self, name: &str, input: impl Serialize, policy: &RetryPolicy) -> DurableTask<O>
    where
        O: DeserializeOwned + 'static,
    {
        let json = match payload::encode(&input) {
            Ok(json) => json,
            Err(e) => {
                return DurableTask::ready(Err(TaskError::Serialize { name: name.to_string(), message: e.to_string() }))
            }
        };
        let first = self.schedule_activity(name, &json);
        let ctx = self.clone();
        let name = name.to_string();
        self.with_retry(first, policy.clone(), TaskKind::Activity, name.clone(), move || {
            ctx.schedule_activity(&name, &json)
        })
    }

    /// Starts a sub-orchestration (default instance id `<this id>:<action id as 4 hex>`) and
    /// returns its task, which completes with the child's output.
    pub fn call_sub_orchestration<O>(&self, name: &str, input: impl Serialize) -> DurableTask<O>
    where
        O: DeserializeOwned + 'static,
    {
        self.call_sub_orchestration_with_options(name, input, SubOrchestrationOptions::default())
    }

    /// Starts a sub-orchestration with an explicit instance id, version or retry policy.
    ///
    /// ```no_run
    /// # use duro_sdk::{OrchestrationContext, Failure, SubOrchestrationOptions};
    /// # async fn orchestrator(ctx: OrchestrationContext) -> Result<u32, Failure> {
    /// let opts = SubOrchestrationOptions::new().with_instance_id(format!("{}-child", ctx.instance_id()));
    /// Ok(ctx.call_sub_orchestration_with_options::<u32>("Child", 5, opts).await?)
    /// # }
    /// ```
    pub fn call_sub_orchestration_with_options<O>(
        &self,
        name: &str,
        input: impl Serialize,
        options: SubOrchestrationOptions,
    ) -> DurableTask<O>
    where
        O: DeserializeOwned + 'static,
    {
        let json = match payload::encode(&input) {
            Ok(json) => json,
            Err(e) => {
                return DurableTask::ready(Err(TaskError::Serialize { name: name.to_string(), message: e.to_string() }))
            }
        };
        let (first, instance_id) = self.schedule_sub_orchestration(name, &json, options.instance_id, &options.version);
        match options.retry {
            None => DurableTask::from_slot(first, TaskKind::SubOrchestration, name.to_string()),
            Some(policy) => {
                let ctx = self.clone();
                let name = name.to_string();
                let version = options.version;
                self.with_retry(first, policy, TaskKind::SubOrchestration, name.clone(), move || {
                    ctx.schedule_sub_orchestration(&name, &json, Some(instance_id.clone()), &version).0
                })
            }
        }
    }

    /// A durable timer that fires `delay` after the current orchestration time.
    ///
    /// ```no_run
    /// # use duro_sdk::{OrchestrationContext, Failure};
    /// # use std::time::Duration;
    /// # async fn orchestrator(ctx: OrchestrationContext) -> Result<(), Failure> {
    /// ctx.create_timer(Duration::from_secs(24 * 3600)).await?; // survives restarts
    /// # Ok(()) }
    /// ```
    pub fn create_timer(&self, delay: Duration) -> DurableTask<()> {
        let fire_at = self.current_utc_datetime() + time::to_chrono(delay);
        self.create_timer_at(fire_at)
    }

    /// A durable timer that fires at `fire_at` (at once if it lies in the past).
    pub fn create_timer_at(&self, fire_at: DateTime<Utc>) -> DurableTask<()> {
        let slot = self.schedule_timer(fire_at);
        DurableTask::new(async move {
            // A timer cannot fail; its result payload is ignored.
            let _ = SlotFuture(slot).await;
            Ok(())
        })
    }

    /// Waits for the next external event with this name (case-insensitive). Events raised
    /// before anyone waits are buffered and delivered in arrival order; each event goes to
    /// one waiter.
    ///
    /// ```no_run
    /// # use duro_sdk::{OrchestrationContext, Failure};
    /// # async fn orchestrator(ctx: OrchestrationContext) -> Result<bool, Failure> {
    /// let approved: bool = ctx.wait_for_external_event("Approval").await?;
    /// Ok(approved)
    /// # }
    /// ```
    pub fn wait_for_external_event<T>(&self, name: &str) -> DurableTask<T>
    where
        T: DeserializeOwned + 'static,
    {
        let wait = self.event_wait(name);
        let name = name.to_string();
        DurableTask::new(async move { task::decode_outcome(wait.await, TaskKind::Activity, &name) })
    }

    /// Like [`wait_for_external_event`](Self::wait_for_external_event) but gives up after
    /// `timeout` (a durable timer) with [`TaskError::Timeout`]. A buffered event is returned
    /// at once without a timer; a zero timeout never creates one.
    ///
    /// ```no_run
    /// # use duro_sdk::{OrchestrationContext, Failure, TaskError};
    /// # use std::time::Duration;
    /// # async fn orchestrator(ctx: OrchestrationContext) -> Result<String, Failure> {
    /// match ctx.wait_for_external_event_with_timeout::<String>("Reply", Duration::from_secs(300)).await {
    ///     Ok(reply) => Ok(reply),
    ///     Err(TaskError::Timeout { .. }) => Ok("no reply".into()),
    ///     Err(e) => Err(e.into()),
    /// }
    /// # }
    /// ```
    pub fn wait_for_external_event_with_timeout<T>(&self, name: &str, timeout: Duration) -> DurableTask<T>
    where
        T: DeserializeOwned + 'static,
    {
        let wait = self.event_wait(name);
        let name = name.to_string();
        if wait.is_ready() {
            return DurableTask::new(async move { task::decode_outcome(wait.await, TaskKind::Activity, &name) });
        }
        if timeout.is_zero() {
            return DurableTask::ready(Err(TaskError::Timeout { name }));
        }
        let fire_at = self.current_utc_datetime() + time::to_chrono(timeout);
        let timer = SlotFuture(self.schedule_timer(fire_at));
        DurableTask::new(async move {
            match futures::future::select(wait, timer).await {
                futures::future::Either::Left((outcome, _timer)) => {
                    task::decode_outcome(outcome, TaskKind::Activity, &name)
                }
                // Dropping the wait unregisters it, so a later event is buffered, not lost.
                futures::future::Either::Right((_, _wait)) => Err(TaskError::Timeout { name }),
            }
        })
    }

    /// Raises an event on another orchestration instance (fire and forget).
    pub fn send_event(&self, instance_id: &str, name: &str, data: impl Serialize) {
        let data = match payload::encode(&data) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, event = name, "event data is not serializable; sending null");
                None
            }
        };
        self.state.borrow_mut().push_action(OrchestratorActionType::SendEvent(SendEventAction {
            instance: Some(OrchestrationInstance { instance_id: instance_id.to_string(), execution_id: None }),
            name: name.to_string(),
            data,
        }));
    }

    /// Restarts this orchestration as a new execution with `input` once the function returns
    /// (the return value is then ignored; return right away). With
    /// `preserve_unprocessed_events`, external events not yet consumed are carried over to the
    /// new execution.
    ///
    /// ```no_run
    /// # use duro_sdk::{OrchestrationContext, Failure};
    /// # use std::time::Duration;
    /// # async fn counter(ctx: OrchestrationContext, n: u64) -> Result<u64, Failure> {
    /// ctx.create_timer(Duration::from_secs(60)).await?;
    /// if n < 100 {
    ///     ctx.continue_as_new(n + 1, true);
    /// }
    /// Ok(n)
    /// # }
    /// ```
    pub fn continue_as_new(&self, input: impl Serialize, preserve_unprocessed_events: bool) {
        let input = match payload::encode(&input) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "continue-as-new input is not serializable; using null");
                None
            }
        };
        self.state.borrow_mut().continue_as_new = Some(ContinueAsNew { input, preserve_unprocessed_events });
    }

    /// Calls an HTTP endpoint durably through the built-in activity `BuiltIn::HttpActivity`
    /// (the sidecar executes the request; the response is recorded in the history). With
    /// `asynchronous_pattern_enabled`, a `202 Accepted` with a `Location` header is polled
    /// (GET, after `Retry-After` or 30 s, on durable timers) until another status arrives.
    ///
    /// ```no_run
    /// # use duro_sdk::{OrchestrationContext, Failure, DurableHttpRequest};
    /// # async fn orchestrator(ctx: OrchestrationContext) -> Result<u16, Failure> {
    /// let response = ctx.call_http(DurableHttpRequest::get("https://example.org/status")).await?;
    /// Ok(response.status_code)
    /// # }
    /// ```
    pub fn call_http(&self, request: DurableHttpRequest) -> DurableTask<DurableHttpResponse> {
        let first: DurableTask<DurableHttpResponse> = self.call_activity(http::HTTP_ACTIVITY, &request);
        let ctx = self.clone();
        DurableTask::new(async move {
            let mut response = first.await?;
            while let Some((delay, poll)) = http::next_poll(&request, &response, ctx.current_utc_datetime()) {
                ctx.create_timer(delay).await?;
                response = ctx.call_activity::<DurableHttpResponse>(http::HTTP_ACTIVITY, &poll).await?;
            }
            Ok(response)
        })
    }

    /// Signals an operation on an entity (fire and forget): the entity runs it once, in the
    /// order its requests arrive; nothing comes back. Inside a critical section, a signal to
    /// a locked entity runs after the section ends.
    ///
    /// ```no_run
    /// # use duro_sdk::{EntityId, Failure, OrchestrationContext};
    /// # async fn orchestrator(ctx: OrchestrationContext) -> Result<(), Failure> {
    /// ctx.signal_entity(&EntityId::new("Counter", "visits"), "add", 1)?;
    /// # Ok(()) }
    /// ```
    pub fn signal_entity(&self, entity: &EntityId, operation: &str, input: impl Serialize) -> Result<(), TaskError> {
        self.send_signal(entity, operation, input, None)
    }

    /// Like [`signal_entity`](Self::signal_entity), delivered no earlier than `at`.
    pub fn signal_entity_at(
        &self,
        entity: &EntityId,
        operation: &str,
        input: impl Serialize,
        at: DateTime<Utc>,
    ) -> Result<(), TaskError> {
        self.send_signal(entity, operation, input, Some(at))
    }

    /// Calls an operation on an entity and returns its task, which completes with the
    /// operation's result, or fails with [`TaskError::Failed`] (kind [`TaskKind::Entity`])
    /// carrying the operation's failure details. Inside a critical section only the locked
    /// entities may be called.
    ///
    /// ```no_run
    /// # use duro_sdk::{EntityId, Failure, OrchestrationContext};
    /// # async fn orchestrator(ctx: OrchestrationContext) -> Result<i64, Failure> {
    /// let counter = EntityId::new("Counter", "visits");
    /// let value: i64 = ctx.call_entity(&counter, "add", 1).await?;
    /// Ok(value)
    /// # }
    /// ```
    pub fn call_entity<O>(&self, entity: &EntityId, operation: &str, input: impl Serialize) -> DurableTask<O>
    where
        O: DeserializeOwned + 'static,
    {
        let name = format!("{operation} on {entity}");
        if let Err(e) = entity.validate() {
            return DurableTask::ready(Err(TaskError::InvalidEntityUse { message: e.to_string() }));
        }
        let input = match payload::encode(&input) {
            Ok(json) => json,
            Err(e) => return DurableTask::ready(Err(TaskError::Serialize { name, message: e.to_string() })),
        };
        let target = entity.to_string();
        let outside = {
            let s = self.state.borrow();
            s.critical_section
                .as_ref()
                .filter(|cs| cs.granted && !cs.entities.contains(&target))
                .map(|cs| cs.id.clone())
        };
        if let Some(section) = outside {
            return DurableTask::ready(Err(TaskError::InvalidEntityUse {
                message: format!(
                    "{target} is not locked by critical section {section}: inside a critical section only its \
                     locked entities can be called"
                ),
            }));
        }
        let request_id = self.new_uuid().to_string();
        let slot = {
            let mut s = self.state.borrow_mut();
            let kind = OrchestratorActionType::SendEntityMessage(SendEntityMessageAction {
                entity_message_type: Some(EntityMessageType::EntityOperationCalled(EntityOperationCalledEvent {
                    request_id: request_id.clone(),
                    operation: operation.to_string(),
                    scheduled_time: None,
                    input: Some(input),
                    parent_instance_id: Some(s.instance_id.clone()),
                    parent_execution_id: s.execution_id.clone(),
                    target_instance_id: Some(target),
                })),
            });
            s.schedule_entity_call(kind, &request_id)
        };
        DurableTask::from_slot(slot, TaskKind::Entity, name)
    }

    /// Locks `entities` (in a fixed order, so two orchestrations locking overlapping sets
    /// cannot deadlock) and completes with a [`CriticalSection`] once all are locked. Until
    /// it is released (dropped, or [`CriticalSection::release`]), the locked entities run
    /// only this orchestration's calls; everyone else's operations wait. Inside the section,
    /// only the locked entities can be called, and no other lock can be taken. The sidecar
    /// releases the locks if the orchestration ends while holding them.
    ///
    /// ```no_run
    /// # use duro_sdk::{EntityId, Failure, OrchestrationContext};
    /// # async fn transfer(ctx: OrchestrationContext, amount: i64) -> Result<bool, Failure> {
    /// let (from, to) = (EntityId::new("Account", "alice"), EntityId::new("Account", "bob"));
    /// let section = ctx.lock_entities([&from, &to]).await?;
    /// let balance: i64 = ctx.call_entity(&from, "balance", ()).await?;
    /// if balance < amount {
    ///     return Ok(false); // dropping the section unlocks both accounts
    /// }
    /// ctx.call_entity::<i64>(&from, "withdraw", amount).await?;
    /// ctx.call_entity::<i64>(&to, "deposit", amount).await?;
    /// section.release();
    /// Ok(true)
    /// # }
    /// ```
    pub fn lock_entities<'e>(&self, entities: impl IntoIterator<Item = &'e EntityId>) -> DurableTask<CriticalSection> {
        let entities: Vec<EntityId> = entities.into_iter().cloned().collect();
        let invalid = |message: String| DurableTask::ready(Err(TaskError::InvalidEntityUse { message }));
        if entities.is_empty() {
            return invalid("lock_entities needs at least one entity".into());
        }
        if let Some(e) = entities.iter().find_map(|e| e.validate().err()) {
            return invalid(e.to_string());
        }
        if let Some(cs) = self.state.borrow().critical_section.as_ref() {
            return invalid(format!(
                "critical section {} is still open (locks cannot be nested); release it before locking again",
                cs.id
            ));
        }
        let mut sorted = entities;
        sorted.sort_by_key(|e| e.to_string());
        sorted.dedup();
        let lock_set: Vec<String> = sorted.iter().map(EntityId::to_string).collect();
        let section_id = self.new_uuid().to_string();
        let slot = {
            let mut s = self.state.borrow_mut();
            let kind = OrchestratorActionType::SendEntityMessage(SendEntityMessageAction {
                entity_message_type: Some(EntityMessageType::EntityLockRequested(EntityLockRequestedEvent {
                    critical_section_id: section_id.clone(),
                    lock_set: lock_set.clone(),
                    position: 0,
                    parent_instance_id: Some(s.instance_id.clone()),
                })),
            });
            s.critical_section = Some(SectionState { id: section_id.clone(), entities: lock_set, granted: false });
            s.schedule_lock(kind, &section_id)
        };
        let state = Rc::downgrade(&self.state);
        DurableTask::new(async move {
            // A grant cannot fail; its payload is empty.
            let _ = SlotFuture(slot).await;
            Ok(CriticalSection { id: section_id, entities: sorted, state, released: false })
        })
    }

    /// Whether this orchestration holds entity locks now (a critical section was granted and
    /// not released).
    pub fn is_in_critical_section(&self) -> bool {
        self.state.borrow().critical_section.as_ref().is_some_and(|cs| cs.granted)
    }

    /// Waits for all tasks; see [`when_all`](crate::when_all).
    pub fn when_all<T: 'static>(&self, tasks: impl IntoIterator<Item = DurableTask<T>>) -> DurableTask<Vec<T>> {
        task::when_all(tasks)
    }

    /// Waits for the first task to finish; see [`when_any`](crate::when_any).
    pub fn when_any<T: 'static>(&self, tasks: impl IntoIterator<Item = DurableTask<T>>) -> WhenAny<T> {
        task::when_any(tasks)
    }

    // -----------------------------------------------------------------------------------------

    fn send_signal(
        &self,
        entity: &EntityId,
        operation: &str,
        input: impl Serialize,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), TaskError> {
        entity.validate().map_err(|e| TaskError::InvalidEntityUse { message: e.to_string() })?;
        let input = payload::encode(&input)
            .map_err(|e| TaskError::Serialize { name: format!("{operation} on {entity}"), message: e.to_string() })?;
        let request_id = self.new_uuid().to_string();
        self.state.borrow_mut().push_action(OrchestratorActionType::SendEntityMessage(SendEntityMessageAction {
            entity_message_type: Some(EntityMessageType::EntityOperationSignaled(EntityOperationSignaledEvent {
                request_id,
                operation: operation.to_string(),
                scheduled_time: at.map(time::to_timestamp),
                input: Some(input),
                target_instance_id: Some(entity.to_string()),
            })),
        }));
        Ok(())
    }

    fn schedule_activity(&self, name: &str, input_json: &str) -> SlotRef {
        self.state
            .borrow_mut()
            .schedule(OrchestratorActionType::ScheduleTask(ScheduleTaskAction {
                name: name.to_string(),
                input: Some(input_json.to_string()),
                ..Default::default()
            }))
            .1
    }

    fn schedule_sub_orchestration(
        &self,
        name: &str,
        input_json: &str,
        instance_id: Option<String>,
        version: &Option<String>,
    ) -> (SlotRef, String) {
        let mut s = self.state.borrow_mut();
        let child_id = instance_id.unwrap_or_else(|| {
            // The id the next action will get: the default child id is derived from it.
            let next = s.pending_id_preview();
            format!("{}:{:04x}", s.instance_id, next)
        });
        let (_, slot) = s.schedule(OrchestratorActionType::CreateSubOrchestration(CreateSubOrchestrationAction {
            instance_id: child_id.clone(),
            name: name.to_string(),
            version: version.clone(),
            input: Some(input_json.to_string()),
            ..Default::default()
        }));
        (slot, child_id)
    }

    fn schedule_timer(&self, fire_at: DateTime<Utc>) -> SlotRef {
        self.state
            .borrow_mut()
            .schedule(OrchestratorActionType::CreateTimer(CreateTimerAction {
                fire_at: Some(time::to_timestamp(fire_at)),
            }))
            .1
    }

    fn event_wait(&self, name: &str) -> EventWait {
        let mut s = self.state.borrow_mut();
        match s.take_buffered_event(name) {
            Some(e) => EventWait { slot: task::ready_slot(Ok(e.input)), waiter: None },
            None => {
                let (id, slot) = s.add_waiter(name);
                EventWait { slot, waiter: Some((id, Rc::downgrade(&self.state))) }
            }
        }
    }

    fn with_retry<O, F>(
        &self,
        first: SlotRef,
        policy: RetryPolicy,
        kind: TaskKind,
        name: String,
        reschedule: F,
    ) -> DurableTask<O>
    where
        O: DeserializeOwned + 'static,
        F: Fn() -> SlotRef + 'static,
    {
        let ctx = self.clone();
        DurableTask::new(async move {
            let started = ctx.current_utc_datetime();
            let mut slot = first;
            let mut attempt = 1u32;
            loop {
                let outcome = SlotFuture(slot).await;
                let failure = match outcome {
                    Ok(_) => return task::decode_outcome(outcome, kind, &name),
                    Err(ref f) => f.clone(),
                };
                if !policy.should_retry(attempt, &failure) {
                    return task::decode_outcome(outcome, kind, &name);
                }
                let delay = policy.delay_after_attempt(attempt);
                if let Some(limit) = policy.retry_timeout {
                    let elapsed = ctx.current_utc_datetime() - started;
                    if elapsed + time::to_chrono(delay) > time::to_chrono(limit) {
                        return task::decode_outcome(outcome, kind, &name);
                    }
                }
                ctx.create_timer(delay).await?;
                attempt += 1;
                slot = reschedule();
            }
        })
    }
}

/// A pending `wait_for_external_event`. Dropping it before the event arrives unregisters the
/// waiter, so the event is buffered for a later wait instead of being lost.
struct EventWait {
    slot: SlotRef,
    waiter: Option<(u64, Weak<RefCell<ReplayState>>)>,
}

impl EventWait {
    fn is_ready(&self) -> bool {
        task::is_complete(&self.slot)
    }
}

impl std::future::Future for EventWait {
    type Output = task::Outcome;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let mut inner = SlotFuture(self.slot.clone());
        std::pin::Pin::new(&mut inner).poll(cx)
    }
}

impl Drop for EventWait {
    fn drop(&mut self) {
        if task::is_complete(&self.slot) {
            return;
        }
        if let Some((id, state)) = self.waiter.take() {
            if let Some(state) = state.upgrade() {
                if let Ok(mut s) = state.try_borrow_mut() {
                    s.remove_waiter(id);
                }
            }
        }
    }
}

/// A held set of entity locks, from [`OrchestrationContext::lock_entities`].
///
/// Releasing it (dropping it, or [`release`](Self::release)) sends one unlock to each locked
/// entity at that point of the orchestration; the entities then run other callers' operations
/// again. Keep it alive for as long as the critical section lasts.
#[must_use = "dropping the critical section releases its locks at once"]
pub struct CriticalSection {
    id: String,
    entities: Vec<EntityId>,
    state: Weak<RefCell<ReplayState>>,
    released: bool,
}

impl fmt::Debug for CriticalSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CriticalSection").field("id", &self.id).field("entities", &self.entities).finish()
    }
}

impl CriticalSection {
    /// The critical section's id (a deterministic UUID).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The locked entities, sorted.
    pub fn entities(&self) -> &[EntityId] {
        &self.entities
    }

    /// Leaves the critical section: unlocks every entity.
    pub fn release(mut self) {
        self.unlock();
    }

    fn unlock(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let Some(state) = self.state.upgrade() else { return };
        let Ok(mut s) = state.try_borrow_mut() else { return };
        if s.tearing_down || s.critical_section.as_ref().is_none_or(|cs| cs.id != self.id) {
            return;
        }
        s.critical_section = None;
        let owner = s.instance_id.clone();
        for entity in &self.entities {
            s.push_action(OrchestratorActionType::SendEntityMessage(SendEntityMessageAction {
                entity_message_type: Some(EntityMessageType::EntityUnlockSent(EntityUnlockSentEvent {
                    critical_section_id: self.id.clone(),
                    parent_instance_id: Some(owner.clone()),
                    target_instance_id: Some(entity.to_string()),
                })),
            }));
        }
    }
}

impl Drop for CriticalSection {
    fn drop(&mut self) {
        self.unlock();
    }
}
