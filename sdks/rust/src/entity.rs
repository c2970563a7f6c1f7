//! Durable entities on the worker side: entity ids, the context an operation runs with, and
//! the execution of one batch of operations (`entityRequestV2` in, `EntityBatchResult` out).
//!
//! An entity is a named piece of state (`@<name, lower case>@<key>`) that the sidecar changes
//! only through operations, one at a time in arrival order. The worker receives a batch: the
//! entity's state and up to 100 operations (signals and calls). [`execute_batch`] runs them in
//! order on one state; each operation either succeeds (its state changes and the signals and
//! orchestration starts it asked for are kept) or fails (an error or a panic): then only that
//! operation is undone, its changes and actions discarded, and the caller gets its failure
//! details. The batch result lists one result per operation, the kept actions and the final
//! state (absent = the entity has no state).
//!
//! Orchestrations reach entities through
//! [`OrchestrationContext::signal_entity`](crate::OrchestrationContext::signal_entity),
//! [`call_entity`](crate::OrchestrationContext::call_entity) and
//! [`lock_entities`](crate::OrchestrationContext::lock_entities); clients through
//! [`Client::signal_entity`](crate::Client::signal_entity) and
//! [`Client::get_entity`](crate::Client::get_entity).

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use duro_proto::history_event::EventType;
use duro_proto::operation_action::OperationActionType;
use duro_proto::operation_result::ResultType;
use duro_proto::{
    EntityBatchResult, EntityRequest, OperationAction, OperationInfo, OperationResult, OperationResultFailure,
    OperationResultSuccess, OrchestrationInstance, SendSignalAction, StartNewOrchestrationAction,
};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::client::StartOptions;
use crate::error::{Failure, FailureDetails};
use crate::payload;
use crate::registry::Registry;
use crate::time;

/// Error type of an operation on an entity name this worker has not registered (the sidecar
/// offers such an entity to another worker).
pub const ENTITY_NOT_REGISTERED_ERROR: &str = "EntityNotRegisteredError";
/// Error type recorded when an operation panicked.
pub const ENTITY_PANIC_ERROR: &str = "EntityOperationPanic";

/// Why a string or a name is not a valid entity id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid entity id '{id}': {reason}")]
pub struct InvalidEntityId {
    /// The text that was given.
    pub id: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// An entity's identity: its name (case-insensitive, kept in lower case) and its key.
///
/// Its string form, used on the wire and by every SDK, is `@<name>@<key>`.
///
/// ```
/// use duro_sdk::EntityId;
/// let id = EntityId::new("Account", "alice");
/// assert_eq!(id.to_string(), "@account@alice");
/// assert_eq!("@Account@alice".parse::<EntityId>().unwrap(), id);
/// assert_eq!(id.name(), "account");
/// assert_eq!(id.key(), "alice");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntityId {
    name: String,
    key: String,
}

impl EntityId {
    /// The entity `key` of entity name `name` (folded to lower case). The name must be
    /// non-empty and contain no `@`; [`validate`](Self::validate) says whether it does (the
    /// orchestration and client methods check it before sending anything).
    pub fn new(name: impl AsRef<str>, key: impl Into<String>) -> Self {
        EntityId { name: name.as_ref().to_lowercase(), key: key.into() }
    }

    /// Parses `@name@key` (the name is folded to lower case; the key may contain `@`).
    pub fn parse(id: &str) -> Result<Self, InvalidEntityId> {
        let bad = |reason| InvalidEntityId { id: id.to_string(), reason };
        let rest = id.strip_prefix('@').ok_or_else(|| bad("it does not start with '@'"))?;
        let (name, key) = rest.split_once('@').ok_or_else(|| bad("it is not of the form '@name@key'"))?;
        let parsed = EntityId::new(name, key);
        parsed.validate()?;
        Ok(parsed)
    }

    /// The entity name, lower case.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entity key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Checks that the name is not empty and neither part holds `@` in the name or control
    /// characters.
    pub fn validate(&self) -> Result<(), InvalidEntityId> {
        let bad = |reason| InvalidEntityId { id: self.to_string(), reason };
        if self.name.is_empty() {
            return Err(bad("the entity name is empty"));
        }
        if self.name.contains('@') {
            return Err(bad("the entity name contains '@'"));
        }
        if self.name.chars().chain(self.key.chars()).any(char::is_control) {
            return Err(bad("it contains control characters"));
        }
        Ok(())
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}@{}", self.name, self.key)
    }
}

impl FromStr for EntityId {
    type Err = InvalidEntityId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EntityId::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// The operation context
// ---------------------------------------------------------------------------------------------

/// The entity's state and the actions of the operations that succeeded so far in the batch.
#[derive(Debug, Clone, Default)]
struct Scratch {
    state: Option<String>,
    actions: Vec<OperationAction>,
}

#[derive(Debug)]
struct Shared {
    scratch: Scratch,
    next_action_id: i32,
}

/// What an entity operation runs with: which entity and operation, its input, the entity's
/// state, and the signals and orchestration starts it sends.
///
/// Cheap to clone (clones share the operation). State changes and actions take effect only if
/// the operation succeeds: when it returns an error or panics, the state is what it was before
/// the operation and its actions are discarded.
///
/// ```no_run
/// use duro_sdk::{EntityContext, Failure, Worker};
///
/// let mut worker = Worker::new("http://127.0.0.1:4001");
/// worker.add_entity("Counter", |ctx: EntityContext| async move {
///     let value: i64 = ctx.state_or_default()?;
///     match ctx.operation() {
///         "add" => {
///             let amount: i64 = ctx.input()?;
///             ctx.set_state(&(value + amount))?;
///             Ok(value + amount)
///         }
///         "get" => Ok(value),
///         "reset" => {
///             ctx.delete_state();
///             Ok(0)
///         }
///         other => Err(Failure::new("UnknownOperation", format!("no operation '{other}'"))),
///     }
/// });
/// ```
#[derive(Clone)]
pub struct EntityContext {
    id: EntityId,
    operation: String,
    input: Option<String>,
    shared: Arc<Mutex<Shared>>,
}

impl fmt::Debug for EntityContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityContext").field("id", &self.id).field("operation", &self.operation).finish()
    }
}

fn encode_failure(what: &str, e: serde_json::Error) -> Failure {
    Failure::new("SerializationError", format!("could not serialize {what}: {e}"))
}

impl EntityContext {
    /// A context for calling an entity function directly (e.g. in unit tests), on `state`
    /// (JSON, `None` = no state) with `input` (JSON, `None` = null). Read the outcome with
    /// [`raw_state`](Self::raw_state).
    pub fn new(id: EntityId, operation: impl Into<String>, input: Option<String>, state: Option<String>) -> Self {
        EntityContext {
            id,
            operation: operation.into(),
            input,
            shared: Arc::new(Mutex::new(Shared { scratch: Scratch { state, actions: Vec::new() }, next_action_id: 0 })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic inside an operation cannot poison this lock while it is held (no user code
        // runs under it), but stay usable if it ever is.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entity this operation runs on.
    pub fn id(&self) -> &EntityId {
        &self.id
    }

    /// The operation name, as the caller sent it.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The operation's input, decoded from JSON (absent reads as `null`, so `()` and
    /// `Option<T>` accept a missing input).
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        payload::decode(self.input.as_deref()).map_err(|e| {
            Failure::new(
                "InputDeserializationError",
                format!("invalid input for operation '{}' of {}: {e}", self.operation, self.id),
            )
        })
    }

    /// The operation's input as JSON text, if there is one.
    pub fn raw_input(&self) -> Option<&str> {
        self.input.as_deref()
    }

    /// Whether the entity has state.
    pub fn has_state(&self) -> bool {
        self.lock().scratch.state.is_some()
    }

    /// The entity's state decoded from JSON; `None` if it has none.
    pub fn state<T: DeserializeOwned>(&self) -> Result<Option<T>, Failure> {
        let raw = self.lock().scratch.state.clone();
        raw.map(|s| {
            serde_json::from_str(&s).map_err(|e| {
                Failure::new("StateDeserializationError", format!("the state of {} does not decode: {e}", self.id))
            })
        })
        .transpose()
    }

    /// The entity's state, or `T::default()` if it has none.
    pub fn state_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, Failure> {
        Ok(self.state()?.unwrap_or_default())
    }

    /// The state as JSON text, if there is one.
    pub fn raw_state(&self) -> Option<String> {
        self.lock().scratch.state.clone()
    }

    /// Replaces the entity's state.
    pub fn set_state<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Failure> {
        let json = payload::encode(value).map_err(|e| encode_failure("the entity state", e))?;
        self.lock().scratch.state = Some(json);
        Ok(())
    }

    /// Deletes the entity's state (the entity then no longer shows in queries, unless it is
    /// locked or has queued operations).
    pub fn delete_state(&self) {
        self.lock().scratch.state = None;
    }

    /// Signals an operation on another (or this) entity, once this operation succeeds.
    pub fn signal_entity(&self, entity: &EntityId, operation: &str, input: impl Serialize) -> Result<(), Failure> {
        self.signal(entity, operation, input, None)
    }

    /// Like [`signal_entity`](Self::signal_entity), delivered no earlier than `at`.
    pub fn signal_entity_at(
        &self,
        entity: &EntityId,
        operation: &str,
        input: impl Serialize,
        at: DateTime<Utc>,
    ) -> Result<(), Failure> {
        self.signal(entity, operation, input, Some(at))
    }

    fn signal(
        &self,
        entity: &EntityId,
        operation: &str,
        input: impl Serialize,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), Failure> {
        entity.validate().map_err(|e| Failure::new("InvalidEntityId", e.to_string()))?;
        let input = payload::encode(&input).map_err(|e| encode_failure("the signal input", e))?;
        self.push(OperationActionType::SendSignal(SendSignalAction {
            instance_id: entity.to_string(),
            name: operation.to_string(),
            input: Some(input),
            scheduled_time: at.map(time::to_timestamp),
            request_time: Some(time::to_timestamp(Utc::now())),
            parent_trace_context: None,
        }));
        Ok(())
    }

    /// Starts orchestration `name` with `input` under a new random instance id, once this
    /// operation succeeds; returns the id.
    pub fn start_orchestration(&self, name: &str, input: impl Serialize) -> Result<String, Failure> {
        self.start_orchestration_with(name, input, StartOptions::default())
    }

    /// Starts an orchestration with an instance id, a version or a start time (the reuse
    /// policy and tags of `options` are not used); returns the instance id.
    pub fn start_orchestration_with(
        &self,
        name: &str,
        input: impl Serialize,
        options: StartOptions,
    ) -> Result<String, Failure> {
        let input = payload::encode(&input).map_err(|e| encode_failure("the orchestration input", e))?;
        let instance_id = options.instance_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.push(OperationActionType::StartNewOrchestration(StartNewOrchestrationAction {
            instance_id: instance_id.clone(),
            name: name.to_string(),
            version: options.version,
            input: Some(input),
            scheduled_time: options.start_at.map(time::to_timestamp),
            request_time: Some(time::to_timestamp(Utc::now())),
            parent_trace_context: None,
        }));
        Ok(instance_id)
    }

    /// The actions (signals, orchestration starts) recorded so far.
    pub fn actions(&self) -> Vec<OperationAction> {
        self.lock().scratch.actions.clone()
    }

    fn push(&self, kind: OperationActionType) {
        let mut s = self.lock();
        let id = s.next_action_id;
        s.next_action_id += 1;
        s.scratch.actions.push(OperationAction { id, operation_action_type: Some(kind) });
    }
}

// ---------------------------------------------------------------------------------------------
// Batch execution
// ---------------------------------------------------------------------------------------------

/// One operation of a batch as the worker sees it.
struct Operation {
    request_id: String,
    name: String,
    input: Option<String>,
    reply_to: Option<OrchestrationInstance>,
}

fn operations(request: &EntityRequest) -> Vec<Operation> {
    request
        .operation_requests
        .iter()
        .filter_map(|e| match &e.event_type {
            Some(EventType::EntityOperationSignaled(s)) => Some(Operation {
                request_id: s.request_id.clone(),
                name: s.operation.clone(),
                input: s.input.clone(),
                reply_to: None,
            }),
            Some(EventType::EntityOperationCalled(c)) => Some(Operation {
                request_id: c.request_id.clone(),
                name: c.operation.clone(),
                input: c.input.clone(),
                reply_to: c
                    .parent_instance_id
                    .clone()
                    .filter(|p| !p.is_empty())
                    .map(|instance_id| OrchestrationInstance { instance_id, execution_id: c.parent_execution_id.clone() }),
            }),
            other => {
                tracing::warn!(kind = ?other.as_ref().map(std::mem::discriminant), "ignoring a non-operation event in an entity batch");
                None
            }
        })
        .collect()
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

/// Runs one entity batch: every operation of `request` in order, on the state it carries,
/// with the entity function registered for the entity's name. Returns the batch result
/// (without its completion token): one result per operation, the actions of the operations
/// that succeeded and the final state.
///
/// A failing or panicking operation fails alone: the state and actions are rolled back to
/// what they were before it and the next operation runs on.
///
/// ```
/// use duro_sdk::entity::execute_batch;
/// use duro_sdk::proto::{history_event::EventType, EntityOperationSignaledEvent, EntityRequest, HistoryEvent};
/// use duro_sdk::{EntityContext, Registry};
///
/// let mut registry = Registry::new();
/// registry.add_entity("Counter", |ctx: EntityContext| async move {
///     let n: i64 = ctx.state_or_default()?;
///     ctx.set_state(&(n + ctx.input::<i64>()?))?;
///     Ok(())
/// });
/// let signal = |input: &str| HistoryEvent {
///     event_type: Some(EventType::EntityOperationSignaled(EntityOperationSignaledEvent {
///         request_id: "r".into(),
///         operation: "add".into(),
///         input: Some(input.into()),
///         ..Default::default()
///     })),
///     ..Default::default()
/// };
/// let request = EntityRequest {
///     instance_id: "@counter@c".into(),
///     entity_state: Some("10".into()),
///     operation_requests: vec![signal("1"), signal("\"not a number\""), signal("2")],
///     ..Default::default()
/// };
/// let result = futures::executor::block_on(execute_batch(&registry, &request));
/// assert_eq!(result.results.len(), 3);
/// assert_eq!(result.entity_state.as_deref(), Some("13")); // the failed operation changed nothing
/// ```
pub async fn execute_batch(registry: &Registry, request: &EntityRequest) -> EntityBatchResult {
    let ops = operations(request);
    let id = EntityId::parse(&request.instance_id);
    let function = id.as_ref().ok().and_then(|id| registry.entity(id.name()));
    let mut committed = Scratch { state: request.entity_state.clone(), actions: Vec::new() };
    let mut next_action_id = 0;
    let mut results = Vec::with_capacity(ops.len());
    let mut infos = Vec::with_capacity(ops.len());
    for op in ops {
        let started = Utc::now();
        let outcome: Result<Option<String>, FailureDetails> = match (&id, function) {
            (Err(e), _) => Err(FailureDetails::new("InvalidEntityId", e.to_string())),
            (Ok(id), None) => Err(FailureDetails::new(
                ENTITY_NOT_REGISTERED_ERROR,
                format!("no entity named '{}' is registered with this worker", id.name()),
            )),
            (Ok(id), Some(f)) => {
                let ctx = EntityContext {
                    id: id.clone(),
                    operation: op.name.clone(),
                    input: op.input.clone(),
                    shared: Arc::new(Mutex::new(Shared { scratch: committed.clone(), next_action_id })),
                };
                let run = AssertUnwindSafe(f(ctx.clone())).catch_unwind().await;
                let shared = ctx.lock();
                next_action_id = shared.next_action_id;
                match run {
                    Ok(Ok(output)) => {
                        committed = shared.scratch.clone();
                        Ok(output)
                    }
                    Ok(Err(details)) => Err(details),
                    Err(panic) => Err(FailureDetails::new(
                        ENTITY_PANIC_ERROR,
                        format!("operation '{}' of {id} panicked: {}", op.name, panic_text(panic.as_ref())),
                    )),
                }
            }
        };
        let (start, end) = (Some(time::to_timestamp(started)), Some(time::to_timestamp(Utc::now())));
        results.push(OperationResult {
            result_type: Some(match outcome {
                Ok(result) => {
                    ResultType::Success(OperationResultSuccess { result, start_time_utc: start, end_time_utc: end })
                }
                Err(details) => ResultType::Failure(OperationResultFailure {
                    failure_details: Some(details.to_proto()),
                    start_time_utc: start,
                    end_time_utc: end,
                }),
            }),
        });
        infos.push(OperationInfo { request_id: op.request_id, response_destination: op.reply_to });
    }
    EntityBatchResult {
        results,
        actions: committed.actions,
        entity_state: committed.state,
        failure_details: None,
        completion_token: String::new(),
        operation_infos: infos,
        requires_state: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print() {
        let id = EntityId::parse("@Counter@a@b").expect("parse");
        assert_eq!((id.name(), id.key()), ("counter", "a@b"));
        assert_eq!(id.to_string(), "@counter@a@b");
        assert!(EntityId::parse("counter@a").is_err());
        assert!(EntityId::parse("@counter").is_err());
        assert!(EntityId::parse("@@a").is_err());
        assert!(EntityId::new("a@b", "k").validate().is_err());
        assert!(EntityId::new("a", "k\n").validate().is_err());
        assert_eq!(EntityId::new("", "k").validate().map_err(|e| e.reason), Err("the entity name is empty"));
    }
}
