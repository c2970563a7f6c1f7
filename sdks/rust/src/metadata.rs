//! What clients learn about an orchestration instance (its status and metadata) and about an
//! entity.
//!
//! Plain data converted from the protocol's `OrchestrationState` and `EntityMetadata`, plus
//! typed accessors for their JSON payloads. No RPCs here (see [`crate::client`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use crate::entity::EntityId;
use crate::error::{ClientError, FailureDetails};
use crate::payload;
use crate::time;

/// The runtime status of an orchestration instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrchestrationStatus {
    /// Started and not finished.
    Running,
    /// Finished successfully.
    Completed,
    /// Restarted as a new execution (transient; Duro reports Running instead).
    ContinuedAsNew,
    /// Finished with a failure.
    Failed,
    /// Canceled (not produced by Duro).
    Canceled,
    /// Terminated by a client.
    Terminated,
    /// Created, first turn not yet committed.
    Pending,
    /// Suspended by a client.
    Suspended,
}

impl OrchestrationStatus {
    /// Whether the instance has finished (Completed, Failed, Terminated or Canceled).
    ///
    /// ```
    /// use duro_sdk::OrchestrationStatus;
    /// assert!(OrchestrationStatus::Failed.is_terminal());
    /// assert!(!OrchestrationStatus::Suspended.is_terminal());
    /// ```
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrchestrationStatus::Completed
                | OrchestrationStatus::Failed
                | OrchestrationStatus::Terminated
                | OrchestrationStatus::Canceled
        )
    }

    pub(crate) fn from_proto(value: i32) -> Self {
        use duro_proto::OrchestrationStatus as P;
        match P::try_from(value) {
            Ok(P::Completed) => OrchestrationStatus::Completed,
            Ok(P::ContinuedAsNew) => OrchestrationStatus::ContinuedAsNew,
            Ok(P::Failed) => OrchestrationStatus::Failed,
            Ok(P::Canceled) => OrchestrationStatus::Canceled,
            Ok(P::Terminated) => OrchestrationStatus::Terminated,
            Ok(P::Pending) => OrchestrationStatus::Pending,
            Ok(P::Suspended) => OrchestrationStatus::Suspended,
            Ok(P::Running) | Err(_) => OrchestrationStatus::Running,
        }
    }

    pub(crate) fn to_proto(self) -> duro_proto::OrchestrationStatus {
        use duro_proto::OrchestrationStatus as P;
        match self {
            OrchestrationStatus::Running => P::Running,
            OrchestrationStatus::Completed => P::Completed,
            OrchestrationStatus::ContinuedAsNew => P::ContinuedAsNew,
            OrchestrationStatus::Failed => P::Failed,
            OrchestrationStatus::Canceled => P::Canceled,
            OrchestrationStatus::Terminated => P::Terminated,
            OrchestrationStatus::Pending => P::Pending,
            OrchestrationStatus::Suspended => P::Suspended,
        }
    }
}

/// The state of an orchestration instance as reported by the sidecar.
///
/// Payloads (`serialized_*`) are present only if the query asked for them.
#[derive(Debug, Clone, PartialEq)]
pub struct OrchestrationMetadata {
    /// Instance id.
    pub instance_id: String,
    /// Orchestrator name.
    pub name: String,
    /// Version it was started with.
    pub version: Option<String>,
    /// Runtime status.
    pub status: OrchestrationStatus,
    /// When the instance was created.
    pub created_at: Option<DateTime<Utc>>,
    /// Last change.
    pub last_updated_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub completed_at: Option<DateTime<Utc>>,
    /// Requested start time, if scheduled for later.
    pub scheduled_start_at: Option<DateTime<Utc>>,
    /// Input JSON.
    pub serialized_input: Option<String>,
    /// Output JSON (the result, or the termination output).
    pub serialized_output: Option<String>,
    /// Custom status JSON.
    pub serialized_custom_status: Option<String>,
    /// Failure of a FAILED instance.
    pub failure_details: Option<FailureDetails>,
    /// Current execution id.
    pub execution_id: Option<String>,
    /// Parent instance id of a sub-orchestration.
    pub parent_instance_id: Option<String>,
    /// Tags given at start.
    pub tags: BTreeMap<String, String>,
}

impl OrchestrationMetadata {
    pub(crate) fn from_proto(s: duro_proto::OrchestrationState) -> Self {
        let failure_details = s
            .failure_details
            .filter(|f| !f.error_type.is_empty() || !f.error_message.is_empty())
            .map(FailureDetails::from_proto);
        OrchestrationMetadata {
            instance_id: s.instance_id,
            name: s.name,
            version: s.version,
            status: OrchestrationStatus::from_proto(s.orchestration_status),
            created_at: s.created_timestamp.as_ref().map(time::from_timestamp),
            last_updated_at: s.last_updated_timestamp.as_ref().map(time::from_timestamp),
            completed_at: s.completed_timestamp.as_ref().map(time::from_timestamp),
            scheduled_start_at: s.scheduled_start_timestamp.as_ref().map(time::from_timestamp),
            serialized_input: s.input,
            serialized_output: s.output,
            serialized_custom_status: s.custom_status,
            failure_details,
            execution_id: s.execution_id,
            parent_instance_id: s.parent_instance_id,
            tags: s.tags.into_iter().collect(),
        }
    }

    /// The typed output of a COMPLETED instance; a FAILED one gives
    /// [`ClientError::OrchestrationFailed`], any other status [`ClientError::NotCompleted`].
    pub fn output<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        match self.status {
            OrchestrationStatus::Completed => Ok(payload::decode(self.serialized_output.as_deref())?),
            OrchestrationStatus::Failed => Err(ClientError::OrchestrationFailed {
                instance_id: self.instance_id.clone(),
                details: self.failure_details.clone().unwrap_or_default(),
            }),
            status => Err(ClientError::NotCompleted { instance_id: self.instance_id.clone(), status }),
        }
    }

    /// The input, deserialized.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        Ok(payload::decode(self.serialized_input.as_deref())?)
    }

    /// The custom status, deserialized (`null` if never set).
    pub fn custom_status<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        Ok(payload::decode(self.serialized_custom_status.as_deref())?)
    }
}

/// An entity as the sidecar reports it ([`Client::get_entity`](crate::Client::get_entity),
/// [`Client::query_entities`](crate::Client::query_entities)).
#[derive(Debug, Clone, PartialEq)]
pub struct EntityMetadata {
    /// The entity.
    pub id: EntityId,
    /// When its state last changed.
    pub last_modified: Option<DateTime<Utc>>,
    /// Requests queued for it and not yet run.
    pub backlog_queue_size: u32,
    /// The orchestration holding its lock, if any.
    pub locked_by: Option<String>,
    /// Its state as JSON, if it has one and the request asked for it.
    pub serialized_state: Option<String>,
}

impl EntityMetadata {
    pub(crate) fn from_proto(m: duro_proto::EntityMetadata) -> Result<Self, ClientError> {
        let id = EntityId::parse(&m.instance_id)
            .map_err(|e| ClientError::InvalidArgument(format!("the sidecar sent {e}")))?;
        Ok(EntityMetadata {
            id,
            last_modified: m.last_modified_time.as_ref().map(time::from_timestamp),
            backlog_queue_size: u32::try_from(m.backlog_queue_size).unwrap_or(0),
            locked_by: m.locked_by.filter(|l| !l.is_empty()),
            serialized_state: m.serialized_state,
        })
    }

    /// The state, deserialized; `None` if it was not fetched or the entity has none.
    pub fn state<T: DeserializeOwned>(&self) -> Result<Option<T>, ClientError> {
        Ok(self.serialized_state.as_deref().map(serde_json::from_str).transpose()?)
    }
}
