//! The process's ambient inputs: the wall clock and fresh random ids.
//!
//! The pure core (`duro-core`) takes both as arguments; this module is where the shell reads them.

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A new execution id: a random GUID as 32 lowercase hex digits (`Guid.ToString("N")`), the
/// form the Durable Task Scheduler and the .NET stack use. SDKs derive ids from it (the JS
/// SDK's default sub-orchestration id is `<executionId>:<4 hex digits>`), so its shape and
/// length matter to them and to their users' storage.
pub fn new_execution_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
