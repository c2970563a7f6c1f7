//! # duro-sdk: durable orchestrations in Rust
//!
//! A client and a replaying worker for Duro and any other sidecar that
//! speaks Microsoft's Durable Task sidecar protocol (`TaskHubSidecarService`).
//!
//! * [`Client`]: start orchestrations, read their state, wait for them, raise events,
//!   terminate / suspend / resume / purge / query / restart / rewind.
//! * [`Worker`]: register orchestrators, activities and entities as async closures and run
//!   them.
//! * [`OrchestrationContext`]: what orchestrators use to call activities, sub-orchestrations
//!   and HTTP endpoints, create durable timers, wait for external events, continue as new,
//!   signal and call entities and lock them in critical sections…
//! * [`entity`]: durable entities — [`EntityId`], the [`EntityContext`] an operation runs
//!   with (typed state, input, signals, orchestration starts) and batch execution.
//! * [`replay`]: the pure replay engine (history in, actions out), with
//!   [`testing::HistoryBuilder`] to unit-test orchestrators without a sidecar.
//!
//! Orchestrator code is replayed from the recorded history after every step, so it must be
//! deterministic: do I/O in activities, read time with
//! [`OrchestrationContext::current_utc_datetime`], make ids with
//! [`OrchestrationContext::new_uuid`].
//!
//! ```no_run
//! use std::time::Duration;
//! use duro_sdk::{ActivityContext, Client, OrchestrationContext, Worker};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let address = "http://127.0.0.1:4001";
//!     let mut worker = Worker::new(address);
//!     worker
//!         .add_orchestrator("HelloCities", |ctx: OrchestrationContext, _: ()| async move {
//!             let mut greetings = Vec::new();
//!             for city in ["Tokyo", "Seattle", "London"] {
//!                 greetings.push(ctx.call_activity::<String>("SayHello", city).await?);
//!             }
//!             Ok(greetings)
//!         })
//!         .add_activity("SayHello", |_: ActivityContext, city: String| async move {
//!             Ok(format!("Hello, {city}!"))
//!         });
//!     let handle = worker.start()?;
//!
//!     let client = Client::connect(address).await?;
//!     let id = client.start_orchestration("HelloCities", ()).await?;
//!     let state = client.wait_for_completion(&id, Duration::from_secs(30)).await?;
//!     println!("{:?}", state.output::<Vec<String>>()?);
//!     handle.shutdown().await?;
//!     Ok(())
//! }
//! ```

#![warn(missing_docs)]

mod activity;
pub mod client;
mod context;
pub mod entity;
mod error;
pub mod http;
mod metadata;
mod payload;
mod registry;
pub mod replay;
mod retry;
mod task;
pub mod testing;
mod time;
mod worker;

pub use activity::ActivityContext;
pub use client::{
    CleanEntityStorageResult, Client, ConnectOptions, EntityQuery, EntityQueryPage, InstanceQuery, PurgeFilter,
    QueryPage, ReusePolicy, StartOptions,
};
pub use context::{CriticalSection, OrchestrationContext, ParentOrchestration, SubOrchestrationOptions};
pub use entity::{EntityContext, EntityId};
pub use error::{ClientError, Failure, FailureDetails, TaskError, TaskKind, WorkerError};
pub use http::{DurableHttpRequest, DurableHttpResponse, HttpHeaders, TokenSource};
pub use metadata::{EntityMetadata, OrchestrationMetadata, OrchestrationStatus};
pub use registry::Registry;
pub use retry::RetryPolicy;
pub use task::{when_all, when_any, DurableTask, WhenAny};
pub use worker::{Worker, WorkerHandle, WorkerOptions};

/// Re-export of the `chrono` version used for orchestration time.
pub use chrono;
/// Re-export of the generated protocol types (histories, actions) used by [`replay`] and
/// [`testing`].
pub use duro_proto as proto;
