//! The registry of orchestrator and activity functions, by name.
//!
//! Registration turns typed async closures into type-erased functions over JSON payloads. The
//! worker routes work items through the registry and the replay engine looks orchestrators up
//! in it; neither needs to know the user's types.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::{BoxFuture, LocalBoxFuture};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::activity::ActivityContext;
use crate::context::OrchestrationContext;
use crate::error::{Failure, FailureDetails};
use crate::payload;

/// Result of a type-erased function: the output JSON or the failure to record.
pub(crate) type ErasedResult = Result<Option<String>, FailureDetails>;

pub(crate) type OrchestratorFn =
    Arc<dyn Fn(OrchestrationContext, Option<String>) -> LocalBoxFuture<'static, ErasedResult> + Send + Sync>;
pub(crate) type ActivityFn =
    Arc<dyn Fn(ActivityContext, Option<String>) -> BoxFuture<'static, ErasedResult> + Send + Sync>;

/// Orchestrators and activities by name. Cheap to clone (functions are shared).
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
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("orchestrators", &self.orchestrators.keys().collect::<Vec<_>>())
            .field("activities", &self.activities.keys().collect::<Vec<_>>())
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
