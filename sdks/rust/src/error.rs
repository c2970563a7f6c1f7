//! Error types of the SDK, one per audience.
//!
//! * [`ClientError`]: what [`Client`](crate::Client) calls return (not found, already exists,
//!   timeout, transport, failed orchestration, …).
//! * [`TaskError`]: what awaiting a durable task inside an orchestrator yields (the activity or
//!   sub-orchestration failed, an event wait timed out, a payload did not (de)serialize).
//! * [`Failure`]: what orchestrator and activity functions return as their error; it becomes
//!   the `failureDetails` recorded by the sidecar. Any `std::error::Error` converts into it with
//!   `?`.
//! * [`WorkerError`]: why a [`Worker`](crate::Worker) could not run.
//! * [`FailureDetails`]: the plain data of a recorded failure (the protocol's
//!   `TaskFailureDetails`).
//!
//! This module owns no behaviour beyond conversions between these types and the wire.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use duro_proto::TaskFailureDetails;
use serde::{Deserialize, Serialize};

/// The recorded details of a failure: an error type, a message and optional extras.
///
/// Mirrors the protocol's `TaskFailureDetails`. Activities and orchestrations that fail produce
/// one; orchestrators see it in [`TaskError::Failed`], clients in
/// [`OrchestrationMetadata::failure_details`](crate::OrchestrationMetadata::failure_details).
///
/// ```
/// use duro_sdk::FailureDetails;
/// let d = FailureDetails::new("ValueError", "amount must be positive");
/// assert_eq!(d.to_string(), "ValueError: amount must be positive");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureDetails {
    /// A type name, e.g. `TaskFailedError` or `std::io::error::Error`.
    pub error_type: String,
    /// A human-readable message.
    pub error_message: String,
    /// Optional stack trace or backtrace text.
    pub stack_trace: Option<String>,
    /// The failure that caused this one, if any.
    pub inner_failure: Option<Box<FailureDetails>>,
    /// `true` if retry policies must not retry this failure.
    pub is_non_retriable: bool,
}

impl FailureDetails {
    /// Details with a type and a message.
    pub fn new(error_type: impl Into<String>, error_message: impl Into<String>) -> Self {
        FailureDetails { error_type: error_type.into(), error_message: error_message.into(), ..Default::default() }
    }

    pub(crate) fn from_proto(p: TaskFailureDetails) -> Self {
        FailureDetails {
            error_type: p.error_type,
            error_message: p.error_message,
            stack_trace: p.stack_trace,
            inner_failure: p.inner_failure.map(|i| Box::new(FailureDetails::from_proto(*i))),
            is_non_retriable: p.is_non_retriable,
        }
    }

    pub(crate) fn to_proto(&self) -> TaskFailureDetails {
        TaskFailureDetails {
            error_type: self.error_type.clone(),
            error_message: self.error_message.clone(),
            stack_trace: self.stack_trace.clone(),
            inner_failure: self.inner_failure.as_ref().map(|i| Box::new(i.to_proto())),
            is_non_retriable: self.is_non_retriable,
            properties: Default::default(),
        }
    }
}

impl fmt::Display for FailureDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.error_message)
    }
}

impl std::error::Error for FailureDetails {}

/// The kind of durable task that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// An activity (`call_activity`, `call_http`).
    Activity,
    /// A sub-orchestration (`call_sub_orchestration`).
    SubOrchestration,
    /// An entity operation (`call_entity`).
    Entity,
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskKind::Activity => "activity",
            TaskKind::SubOrchestration => "sub-orchestration",
            TaskKind::Entity => "entity operation",
        })
    }
}

/// Why awaiting a durable task did not produce a value.
///
/// Orchestrators handle it with `match` or propagate it with `?` (it converts into
/// [`Failure`], keeping the task's failure as the inner failure).
///
/// ```
/// use duro_sdk::{FailureDetails, TaskError, TaskKind};
/// let e = TaskError::Failed {
///     kind: TaskKind::Activity,
///     name: "Charge".into(),
///     details: FailureDetails::new("CardDeclined", "insufficient funds"),
/// };
/// assert_eq!(e.failure_details().map(|d| d.error_type.as_str()), Some("CardDeclined"));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// The activity, sub-orchestration or entity operation failed (after all retries, if a
    /// policy was given).
    #[error("{kind} '{name}' failed: {details}")]
    Failed {
        /// Activity, sub-orchestration or entity operation.
        kind: TaskKind,
        /// Its registered name (for entity operations: `<operation> on @<entity>@<key>`).
        name: String,
        /// The recorded failure.
        details: FailureDetails,
    },
    /// `wait_for_external_event_with_timeout` reached its timeout first.
    #[error("timed out waiting for external event '{name}'")]
    Timeout {
        /// The awaited event name.
        name: String,
    },
    /// The input could not be serialized to JSON; nothing was scheduled.
    #[error("could not serialize the input of '{name}' to JSON: {message}")]
    Serialize {
        /// The activity, orchestration or event name.
        name: String,
        /// The serde_json message.
        message: String,
    },
    /// An entity id is invalid, or a critical-section rule was broken (calling an entity that
    /// is not locked from inside a critical section, locking while holding locks, locking
    /// nothing); nothing was sent.
    #[error("invalid entity use: {message}")]
    InvalidEntityUse {
        /// What was wrong.
        message: String,
    },
    /// The task's result JSON does not fit the requested output type.
    #[error("could not deserialize the result of '{name}': {message}")]
    Deserialize {
        /// The activity, orchestration or event name.
        name: String,
        /// The serde_json message.
        message: String,
    },
}

impl TaskError {
    /// The recorded failure if the task failed, else `None`.
    pub fn failure_details(&self) -> Option<&FailureDetails> {
        match self {
            TaskError::Failed { details, .. } => Some(details),
            _ => None,
        }
    }

    fn to_details(&self) -> FailureDetails {
        match self {
            TaskError::Failed { details, .. } => FailureDetails {
                error_type: "TaskFailedError".into(),
                error_message: self.to_string(),
                stack_trace: None,
                inner_failure: Some(Box::new(details.clone())),
                is_non_retriable: false,
            },
            TaskError::Timeout { .. } => FailureDetails::new("TimeoutError", self.to_string()),
            TaskError::InvalidEntityUse { .. } => FailureDetails::new("InvalidEntityUse", self.to_string()),
            TaskError::Serialize { .. } | TaskError::Deserialize { .. } => {
                FailureDetails::new("SerializationError", self.to_string())
            }
        }
    }
}

/// The error of an orchestrator or activity function; recorded as the task's or the
/// orchestration's `failureDetails`.
///
/// Every `std::error::Error + Send + Sync + 'static` converts into it, so `?` works on
/// `serde_json`, I/O and your own error types (the error type name becomes `errorType`). A
/// [`TaskError`] keeps the failed task's details as the inner failure.
///
/// ```
/// use duro_sdk::Failure;
/// fn check(amount: i64) -> Result<i64, Failure> {
///     if amount <= 0 {
///         return Err(Failure::new("InvalidAmount", format!("amount {amount} must be positive")).non_retriable());
///     }
///     let parsed: i64 = "42".parse()?; // ParseIntError converts with `?`
///     Ok(amount + parsed)
/// }
/// assert!(check(1).is_ok());
/// assert_eq!(check(0).unwrap_err().details().error_type, "InvalidAmount");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    details: FailureDetails,
}

impl Failure {
    /// A failure with an explicit error type and message.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Failure { details: FailureDetails::new(error_type, message) }
    }

    /// A failure with only a message (error type `Error`).
    pub fn msg(message: impl fmt::Display) -> Self {
        Failure::new("Error", message.to_string())
    }

    /// Marks the failure as not retriable: retry policies give up at once.
    pub fn non_retriable(mut self) -> Self {
        self.details.is_non_retriable = true;
        self
    }

    /// Adds a stack trace or other diagnostic text.
    pub fn with_stack_trace(mut self, trace: impl Into<String>) -> Self {
        self.details.stack_trace = Some(trace.into());
        self
    }

    /// The details that will be recorded.
    pub fn details(&self) -> &FailureDetails {
        &self.details
    }

    /// Consumes the failure, returning its details.
    pub fn into_details(self) -> FailureDetails {
        self.details
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.details.fmt(f)
    }
}

impl<E> From<E> for Failure
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        let any: &dyn Any = &e;
        if let Some(t) = any.downcast_ref::<TaskError>() {
            return Failure { details: t.to_details() };
        }
        if let Some(d) = any.downcast_ref::<FailureDetails>() {
            return Failure { details: d.clone() };
        }
        let mut details = FailureDetails::new(std::any::type_name::<E>(), e.to_string());
        if let Some(source) = e.source() {
            details.inner_failure = Some(Box::new(chain(source)));
        }
        Failure { details }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> FailureDetails {
    FailureDetails {
        error_type: "Error".into(),
        error_message: e.to_string(),
        stack_trace: None,
        inner_failure: e.source().map(|s| Box::new(chain(s))),
        is_non_retriable: false,
    }
}

/// What a [`Client`](crate::Client) call can fail with.
///
/// ```
/// use duro_sdk::ClientError;
/// fn describe(e: &ClientError) -> &'static str {
///     match e {
///         ClientError::NotFound(_) => "no such instance",
///         ClientError::AlreadyExists(_) => "id taken",
///         ClientError::Timeout { .. } => "gave up waiting",
///         ClientError::Transport(_) => "sidecar unreachable",
///         ClientError::OrchestrationFailed { .. } => "the orchestration failed",
///         _ => "other",
///     }
/// }
/// assert_eq!(describe(&ClientError::NotFound("x".into())), "no such instance");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The instance does not exist (gRPC `NOT_FOUND`, or `exists=false` where one is required).
    #[error("not found: {0}")]
    NotFound(String),
    /// An instance with that id exists and the reuse policy does not allow replacing it.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The wait ended before the instance reached the awaited state.
    #[error("timed out after {timeout:?} waiting for instance '{instance_id}'")]
    Timeout {
        /// The awaited instance.
        instance_id: String,
        /// The caller's timeout.
        timeout: Duration,
    },
    /// The sidecar could not be reached or the connection broke (`UNAVAILABLE`, connect errors).
    #[error("transport error: {0}")]
    Transport(String),
    /// The operation does not apply to the instance's current state (`FAILED_PRECONDITION`),
    /// e.g. rewinding an instance that did not fail.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The sidecar rejected the request (`INVALID_ARGUMENT`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The orchestration ended FAILED; its recorded failure.
    #[error("orchestration '{instance_id}' failed: {details}")]
    OrchestrationFailed {
        /// The instance.
        instance_id: String,
        /// Its recorded failure.
        details: FailureDetails,
    },
    /// The orchestration is not COMPLETED (still running, terminated, …) so it has no output.
    #[error("orchestration '{instance_id}' did not complete: it is {status:?}")]
    NotCompleted {
        /// The instance.
        instance_id: String,
        /// Its status.
        status: crate::OrchestrationStatus,
    },
    /// A payload could not be serialized to or deserialized from JSON.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// Any other gRPC error.
    #[error("gRPC error {code:?}: {message}")]
    Rpc {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        let message = s.message().to_string();
        match s.code() {
            tonic::Code::NotFound => ClientError::NotFound(message),
            tonic::Code::AlreadyExists => ClientError::AlreadyExists(message),
            tonic::Code::FailedPrecondition => ClientError::FailedPrecondition(message),
            tonic::Code::InvalidArgument => ClientError::InvalidArgument(message),
            tonic::Code::Unavailable => ClientError::Transport(message),
            code => ClientError::Rpc { code, message },
        }
    }
}

impl From<tonic::transport::Error> for ClientError {
    fn from(e: tonic::transport::Error) -> Self {
        ClientError::Transport(full_message(&e))
    }
}

/// The message of an error and all its sources, `: `-separated.
pub(crate) fn full_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Why a [`Worker`](crate::Worker) stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The sidecar address is not a valid URI.
    #[error("invalid sidecar address '{address}': {message}")]
    InvalidAddress {
        /// The address given.
        address: String,
        /// Why it is invalid.
        message: String,
    },
    /// The worker task panicked or was cancelled.
    #[error("the worker task ended abnormally: {0}")]
    Aborted(String),
}
