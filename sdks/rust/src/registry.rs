//! The registry of orchestrator, activity and entity functions, by name.
//!
//! Registration turns typed async closures into type-erased functions over JSON payloads. The
//! worker routes work items through the registry, the replay engine looks orchestrators up
//! in it and [`crate::entity::execute_batch`] entities; none needs to know the user's types.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::{BoxFuture, LocalBoxFuture};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::activity::ActivityContext;
use crate::context::OrchestrationContext;
use crate::entity::EntityContext;
use crate::error::{Failure, FailureDetails};
use crate::payload;

/// Result of a type-erased function: the output JSON or the failure to record.
pub(crate) type ErasedResult = Result<Option<String>, FailureDetails>;

pub(crate) type OrchestratorFn =
    Arc<dyn Fn(OrchestrationContext, Option<String>) -> LocalBoxFuture<'static, ErasedResult> + Send + Sync>;
pub(crate) type ActivityFn =
    Arc<dyn Fn(ActivityContext, Option<String>) -> BoxFuture<'static, ErasedResult> + Send + Sync>;
pub(crate) type EntityFn = Arc<dyn Fn(EntityContext) -> BoxFuture<'static, ErasedResult> + Send + Sync>;

/// Orchestrators, activities and entities by name. Cheap to clone (functions are shared).
///
/// Usually filled through [`Worker::add_orchestrator`](crate::Worker::add_orchestrator) and
/// [`Worker::add_activity`](crate::Worker::add_activity); build one directly to unit-test an
/// orchestrator with [`replay::execute`](crate::replay::execute).
///
/// ```
/// use duro_sdk::{OrchestrationContext, Registry};
///
/// let mut registry = Registry::new();
/// registry.add_orchestrator("Double", |_ctx: OrchestrationContext, n: i64| async move {
///     Ok(n * 2)
/// });
/// assert!(registry.has_orchestrator("Double"));
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    orchestrators: BTreeMap<String, OrchestratorFn>,
    activities: BTreeMap<String, ActivityFn>,
    /// By lower-case name (entity names are case-insensitive).
    entities: BTreeMap<String, EntityFn>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("orchestrators", &self.orchestrators.keys().collect::<Vec<_>>())
            .field("activities", &self.activities.keys().collect::<Vec<_>>())
            .field("entities", &self.entities.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an orchestrator: an async function of the context and its JSON input.
    ///
    /// The function must be deterministic: it may only wait on the context's durable tasks
    /// (no I/O, no clocks, no randomness; use [`OrchestrationContext::current_utc_datetime`]
    /// and [`OrchestrationContext::new_uuid`]). Registering a name again replaces it.
    pub fn add_orchestrator<F, Fut, I, O>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + 'static,
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
    {
        let name = name.into();
        let erased: OrchestratorFn = Arc::new(move |ctx: OrchestrationContext, raw: Option<String>| {
            let input = payload::decode::<I>(raw.as_deref());
            let fut = input.map(|i| f(ctx, i));
            Box::pin(run_typed("orchestration", fut))
        });
        self.orchestrators.insert(name, erased);
        self
    }

    /// Registers an activity: an async function of its context and JSON input, run on the
    /// tokio runtime (it may do I/O).
    pub fn add_activity<F, Fut, I, O>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
    {
        let name = name.into();
        let erased: ActivityFn = Arc::new(move |ctx: ActivityContext, raw: Option<String>| {
            let input = payload::decode::<I>(raw.as_deref());
            let fut = input.map(|i| f(ctx, i));
            Box::pin(run_typed("activity", fut))
        });
        self.activities.insert(name, erased);
        self
    }

    /// Registers an entity: an async function run once per operation with the operation's
    /// [`EntityContext`] (its name, input and the entity's state), run on the tokio runtime.
    /// Its output becomes the operation's result; an error (or a panic) fails that operation
    /// only and undoes its state changes and actions. Entity names are case-insensitive
    /// (registering `Account` serves `@account@…`).
    ///
    /// ```
    /// use duro_sdk::{EntityContext, Failure, Registry};
    ///
    /// let mut registry = Registry::new();
    /// registry.add_entity("Counter", |ctx: EntityContext| async move {
    ///     let n: i64 = ctx.state_or_default()?;
    ///     match ctx.operation() {
    ///         "add" => ctx.set_state(&(n + ctx.input::<i64>()?))?,
    ///         "get" => {}
    ///         other => return Err(Failure::new("UnknownOperation", other)),
    ///     }
    ///     ctx.state_or_default::<i64>()
    /// });
    /// assert!(registry.has_entity("counter"));
    /// ```
    pub fn add_entity<F, Fut, O>(&mut self, name: impl AsRef<str>, f: F) -> &mut Self
    where
        F: Fn(EntityContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Failure>> + Send + 'static,
        O: Serialize + Send + 'static,
    {
        let erased: EntityFn = Arc::new(move |ctx: EntityContext| {
            let fut = f(ctx);
            Box::pin(async move {
                let out = fut.await.map_err(Failure::into_details)?;
                payload::encode(&out).map(Some).map_err(|e| {
                    FailureDetails::new("OutputSerializationError", format!("could not serialize the result: {e}"))
                })
            })
        });
        self.entities.insert(name.as_ref().to_lowercase(), erased);
        self
    }

    /// Whether an entity with this name (case-insensitive) is registered.
    pub fn has_entity(&self, name: &str) -> bool {
        self.entities.contains_key(&name.to_lowercase())
    }

    /// Registered entity names, lower case, sorted.
    pub fn entity_names(&self) -> impl Iterator<Item = &str> {
        self.entities.keys().map(String::as_str)
    }

    /// Whether an orchestrator with this name is registered.
    pub fn has_orchestrator(&self, name: &str) -> bool {
        self.orchestrators.contains_key(name)
    }

    /// Whether an activity with this name is registered.
    pub fn has_activity(&self, name: &str) -> bool {
        self.activities.contains_key(name)
    }

    /// Registered orchestrator names, sorted.
    pub fn orchestrator_names(&self) -> impl Iterator<Item = &str> {
        self.orchestrators.keys().map(String::as_str)
    }

    /// Registered activity names, sorted.
    pub fn activity_names(&self) -> impl Iterator<Item = &str> {
        self.activities.keys().map(String::as_str)
    }

    pub(crate) fn orchestrator(&self, name: &str) -> Option<&OrchestratorFn> {
        self.orchestrators.get(name)
    }

    pub(crate) fn activity(&self, name: &str) -> Option<&ActivityFn> {
        self.activities.get(name)
    }

    pub(crate) fn entity(&self, name: &str) -> Option<&EntityFn> {
        self.entities.get(&name.to_lowercase())
    }
}

/// Awaits a user function started on its decoded input and encodes its output. Input and
/// output (de)serialization errors become failure details naming `kind`.
async fn run_typed<O: Serialize>(
    kind: &'static str,
    started: Result<impl Future<Output = Result<O, Failure>>, serde_json::Error>,
) -> Result<Option<String>, FailureDetails> {
    let fut =
        started.map_err(|e| FailureDetails::new("InputDeserializationError", format!("invalid {kind} input: {e}")))?;
    let out = fut.await.map_err(Failure::into_details)?;
    payload::encode(&out)
        .map(Some)
        .map_err(|e| FailureDetails::new("OutputSerializationError", format!("could not serialize the output: {e}")))
}
