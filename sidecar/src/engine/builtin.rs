//! Activities the sidecar runs itself instead of dispatching them to a worker (durable
//! HTTP). An implementation gets the activity's request and its last checkpoint, may save
//! new checkpoints while it runs, and returns the result or failure the orchestration
//! sees. Checkpoints survive restarts: after a crash the activity runs again from its
//! last checkpoint (at-least-once, like every activity).

use std::sync::Arc;

use duro_proto::{ActivityRequest, TaskFailureDetails};
use futures::future::BoxFuture;

use crate::store::{Store, StoreError};

/// One run of a built-in activity.
pub struct BuiltinCall {
    pub request: ActivityRequest,
    /// The last checkpoint saved by an earlier run, if any.
    pub progress: Option<String>,
    pub checkpoint: Checkpoint,
}

/// Saves a built-in activity's progress durably.
#[derive(Clone)]
pub struct Checkpoint {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) activity_id: i64,
    pub(crate) on_saved: Arc<dyn Fn(i64, String) + Send + Sync>,
}

impl Checkpoint {
    /// Commits `progress`; `Ok(false)` when the activity is no longer wanted (its
    /// instance finished or moved on), in which case the caller should stop.
    pub async fn save(&self, progress: String) -> Result<bool, StoreError> {
        let kept = self.store.save_activity_progress(self.activity_id, progress.clone()).await?;
        if kept {
            (self.on_saved)(self.activity_id, progress);
        }
        Ok(kept)
    }
}

/// An activity implemented inside the sidecar.
pub trait BuiltinActivity: Send + Sync + 'static {
    /// The activity name orchestrations schedule (e.g. `BuiltIn::HttpActivity`).
    fn name(&self) -> &str;

    /// The activity's input as history records it (`taskScheduled`), with any secrets it
    /// carries masked; `None` records it unchanged. The unmasked input is what runs: only
    /// the activity's queue row holds it, until the activity completes.
    fn history_input(&self, _input: &str) -> Option<String> {
        None
    }

    /// Runs the activity: `Ok(result JSON)` or `Err(failure the orchestration sees)`.
    fn run(&self, call: BuiltinCall) -> BoxFuture<'static, Result<Option<String>, TaskFailureDetails>>;
}
