//! The context handed to activity functions.
//!
//! Activities are ordinary async functions run by the worker on the tokio runtime; they may do
//! I/O and need not be deterministic. This module only describes *which* task is running.

/// Information about the activity invocation being executed.
///
/// ```no_run
/// use duro_sdk::{ActivityContext, Worker};
///
/// let mut worker = Worker::new("http://127.0.0.1:4001");
/// worker.add_activity("Greet", |ctx: ActivityContext, name: String| async move {
///     tracing::info!(instance = ctx.instance_id(), task = ctx.task_id(), "greeting");
///     Ok(format!("Hello, {name}!"))
/// });
/// ```
#[derive(Debug, Clone)]
pub struct ActivityContext {
    pub(crate) name: String,
    pub(crate) instance_id: String,
    pub(crate) execution_id: Option<String>,
    pub(crate) task_id: i32,
}

impl ActivityContext {
    /// A context for calling an activity function directly (e.g. in unit tests).
    pub fn new(name: impl Into<String>, instance_id: impl Into<String>, task_id: i32) -> Self {
        ActivityContext { name: name.into(), instance_id: instance_id.into(), execution_id: None, task_id }
    }

    /// The registered activity name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The orchestration instance that scheduled this activity.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The execution of that instance, if the sidecar sent it.
    pub fn execution_id(&self) -> Option<&str> {
        self.execution_id.as_deref()
    }

    /// The id of the scheduling action (`taskScheduled` event id). With the instance and
    /// execution ids it identifies this task, e.g. as an idempotency key.
    pub fn task_id(&self) -> i32 {
        self.task_id
    }
}
