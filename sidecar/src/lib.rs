//! Duro: a durable-execution sidecar that speaks Microsoft's Durable Task sidecar protocol.
//!
//! Layers, from the inside out:
//! - [`core`]: the pure orchestration state machine (no I/O);
//! - [`store`]: the durable history store behind a small trait (SQLite by default);
//! - [`engine`]: the imperative shell that runs turns, commits them and dispatches work;
//! - [`grpc`]: the `TaskHubSidecarService` adapter;
//! - [`durable_http`]: the built-in activity `BuiltIn::HttpActivity` (durable HTTP, 202 polling, tokens);
//! - [`http`]: the Durable Functions HTTP management API (webhook routes, signed status links);
//! - [`otel`]: OpenTelemetry spans of turns and activities (OTLP/HTTP, off unless `OTEL_*` configures it);
//! - [`metrics`], [`health`]: what `/metrics`, `/stats`, `/healthz`, `/readyz` and `grpc.health.v1` report;
//! - [`server`]: wiring, configuration and graceful shutdown for the `duro` binary.

pub mod core;
pub mod durable_http;
pub mod engine;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;
pub mod otel;
pub mod server;
pub mod store;
