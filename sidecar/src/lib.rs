//! Duro: a durable-execution sidecar that speaks Microsoft's Durable Task sidecar protocol.
//!
//! Layers, from the inside out:
//! - [`core`]: the pure orchestration state machine, the `duro-core` crate (no I/O, no clock);
//! - [`ambient`]: where the shell reads the wall clock and makes random ids;
//! - [`store`]: the durable history store behind a small trait (SQLite by default);
//! - [`engine`]: the imperative shell that runs turns, commits them and dispatches work;
//! - [`grpc`]: the `TaskHubSidecarService` adapter;
//! - [`durable_http`]: the built-in activity `BuiltIn::HttpActivity` (durable HTTP, 202 polling, tokens);
//! - [`http`]: the Durable Functions HTTP management API (webhook routes, signed status links);
//! - [`otel`]: OpenTelemetry spans of turns and activities (OTLP/HTTP, off unless `OTEL_*` configures it);
//! - [`metrics`], [`health`]: what `/metrics`, `/stats`, `/healthz`, `/readyz` and `grpc.health.v1` report;
//! - [`dashboard`]: the web dashboard at `/dashboard` on the HTTP API's port;
//! - [`server`]: wiring, configuration and graceful shutdown for the `duro` binary.

pub use duro_core as core;

pub mod ambient;
pub mod dashboard;
pub mod durable_http;
pub mod engine;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;
pub mod otel;
pub mod otel_metrics;
pub mod server;
pub mod store;
