//! Test support for everything that runs the real `duro` binary: the integration tests
//! (`tests/`, crate `duro-tests`), the Rust SDK's tests and every sample's tests.
//!
//! It owns how a test gets a sidecar:
//! - [`duro_bin`]: the binary under test — `$DURO_BIN` if set, else built with
//!   `cargo build -p duro` once per test process (a no-op when fresh), so `cargo test`
//!   works from a fresh clone and never runs a stale binary;
//! - [`free_port`]: loopback ports, never the same one twice in a process;
//! - [`Sidecar`] / [`SidecarBuilder`]: `duro` on free ports with a store and log file in a
//!   temporary directory, extra arguments, the HTTP API on demand, waiting until it serves,
//!   `kill -9`, SIGTERM and restart on the same ports and store;
//! - [`run_until_exit`] and friends: `duro` runs expected to exit by themselves;
//! - [`test_dir`]: per-test directories (kept with `DURO_KEEP_TEST_DIRS=1`);
//! - with feature `sdk`, [`sdk`]: a Rust SDK worker and client against a [`Sidecar`].
//!
//! Failures panic with a message that says what happened and includes the sidecar's log:
//! this is test code, and a panic is how a test fails.

mod bin;
mod dir;
mod exit;
mod ports;
mod postgres;
mod sidecar;

#[cfg(feature = "sdk")]
pub mod sdk;

pub use bin::{duro_bin, workspace_root};
pub use dir::{test_dir, TestDir};
pub use exit::{is_root, run_args_until_exit, run_until_exit, run_until_exit_as, UNPRIVILEGED};
pub use ports::free_port;
pub use postgres::{pg_bin_dir, Postgres};
pub use sidecar::{Sidecar, SidecarBuilder};
