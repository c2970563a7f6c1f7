//! Fan-out/fan-in: `FanOutFanIn` lists work items with one activity, processes all of them in
//! parallel (every `CountWords` task is scheduled before any is awaited), then aggregates the
//! results with `when_all`.

use duro_sdk::{when_all, ActivityContext, Failure, OrchestrationContext, Worker};
use serde::{Deserialize, Serialize};

/// Orchestration name.
pub const ORCHESTRATION: &str = "FanOutFanIn";

/// The result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// Documents processed.
    pub documents: usize,
    /// Words in all of them.
    pub total_words: usize,
}

/// The orchestrator: input is the number of documents to process.
pub async fn fan_out_fan_in(ctx: OrchestrationContext, count: u32) -> Result<Summary, Failure> {
    let documents: Vec<String> = ctx.call_activity("ListDocuments", count).await?;
    ctx.set_custom_status(format!("processing {} documents", documents.len()));
    let tasks: Vec<_> = documents.iter().map(|d| ctx.call_activity::<usize>("CountWords", d)).collect();
    let counts = when_all(tasks).await?;
    Ok(Summary { documents: counts.len(), total_words: counts.iter().sum() })
}

/// Registers the orchestrator and its activities on `worker`.
pub fn register(worker: &mut Worker) {
    worker
        .add_orchestrator(ORCHESTRATION, fan_out_fan_in)
        .add_activity("ListDocuments", |_: ActivityContext, count: u32| async move {
            // Document i has i words.
            Ok((1..=count).map(|i| vec!["word"; i as usize].join(" ")).collect::<Vec<String>>())
        })
        .add_activity("CountWords", |_: ActivityContext, doc: String| async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await; // pretend to work
            Ok(doc.split_whitespace().count())
        });
}
