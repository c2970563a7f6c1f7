//! Input validation for the gRPC API: every rule yields INVALID_ARGUMENT with a message
//! naming the field, never a panic.

use tonic::Status;

/// Longest accepted instance id, orchestration/activity/event name (in bytes).
pub const MAX_ID_LEN: usize = crate::core::MAX_INSTANCE_ID_LEN;
pub const MAX_NAME_LEN: usize = 1024;

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(Status::invalid_argument(format!("{field} is {} bytes long; the limit is {max}", value.len())));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Status::invalid_argument(format!("{field} contains the control character U+{:04X}", u32::from(c))));
    }
    Ok(())
}

/// A required instance id (the rule workers' child ids and event targets follow too).
pub fn instance_id(value: &str) -> Result<(), Status> {
    match crate::core::instance_id_problem(value) {
        Some(problem) => Err(Status::invalid_argument(problem)),
        None => Ok(()),
    }
}

/// A required name (orchestration, event).
pub fn name(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    check_text(field, value, MAX_NAME_LEN)
}

/// An optional JSON payload (input, output, event data).
pub fn json(field: &str, value: Option<&str>, enabled: bool) -> Result<(), Status> {
    let Some(v) = value else { return Ok(()) };
    if !enabled || v.is_empty() {
        return Ok(());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(v)
        .map(|_| ())
        .map_err(|e| Status::invalid_argument(format!("{field} is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn instance_ids() {
        assert!(instance_id("abc-123:0001").is_ok());
        assert_eq!(instance_id("").unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(instance_id(" a").unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(instance_id("a\nb").unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(instance_id(&"x".repeat(MAX_ID_LEN + 1)).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn json_payloads() {
        assert!(json("input", Some("{\"a\":1}"), true).is_ok());
        assert!(json("input", Some("\"text\""), true).is_ok());
        assert!(json("input", None, true).is_ok());
        let err = json("input", Some("{nope"), true).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("input is not valid JSON"));
        assert!(json("input", Some("{nope"), false).is_ok());
    }
}
