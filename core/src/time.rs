//! Conversions between protobuf timestamps and the integer milliseconds Duro stores.
//!
//! Pure functions only; reading the wall clock happens in the imperative shell, which
//! passes `now` into the core.

use prost_types::Timestamp;

/// Milliseconds since the Unix epoch of a protobuf timestamp (saturating, never panics).
pub fn to_ms(ts: &Timestamp) -> i64 {
    ts.seconds.saturating_mul(1000).saturating_add(i64::from(ts.nanos.clamp(0, 999_999_999)) / 1_000_000)
}

/// Protobuf timestamp for milliseconds since the Unix epoch.
pub fn from_ms(ms: i64) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_milliseconds() {
        for ms in [0, 1, 999, 1000, 1_700_000_000_123, -1, -1001] {
            assert_eq!(to_ms(&from_ms(ms)), ms);
        }
    }

    #[test]
    fn truncates_sub_millisecond_nanos() {
        let ts = Timestamp { seconds: 10, nanos: 1_999_999 };
        assert_eq!(to_ms(&ts), 10_001);
    }

    #[test]
    fn out_of_range_values_saturate() {
        let ts = Timestamp { seconds: i64::MAX, nanos: 5 };
        assert_eq!(to_ms(&ts), i64::MAX);
        let ts = Timestamp { seconds: 0, nanos: -5 };
        assert_eq!(to_ms(&ts), 0);
    }
}
