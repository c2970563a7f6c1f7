//! JSON encoding of inputs, outputs and event payloads.
//!
//! The protocol carries every payload as an optional JSON string (`StringValue`); an absent
//! payload reads as JSON `null`, so `()` and `Option<T>` inputs accept it. This module owns
//! only that convention.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Serializes a value to its JSON text.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string(value)
}

/// Deserializes an optional JSON payload; absent reads as `null`.
pub(crate) fn decode<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, serde_json::Error> {
    serde_json::from_str(raw.unwrap_or("null"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_payload_is_null() {
        let unit: () = decode(None).expect("unit");
        assert_eq!(unit, ());
        let none: Option<u32> = decode(None).expect("option");
        assert_eq!(none, None);
        assert!(decode::<u32>(None).is_err());
        assert_eq!(decode::<u32>(Some("7")).expect("u32"), 7);
        assert_eq!(encode(&"x").expect("str"), "\"x\"");
    }
}
