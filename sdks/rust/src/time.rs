//! Conversions between protobuf `Timestamp`/`Duration` and `chrono`/`std` time types.
//!
//! Pure functions only; the deterministic orchestration clock itself lives in the replay
//! engine ([`crate::replay`]).

use chrono::{DateTime, TimeZone, Utc};
use prost_types::Timestamp;

/// The Unix epoch, used before the first `orchestratorStarted` event is seen.
pub(crate) fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

/// `Timestamp` → `DateTime<Utc>`; out-of-range values clamp to the epoch.
pub(crate) fn from_timestamp(ts: &Timestamp) -> DateTime<Utc> {
    let nanos = u32::try_from(ts.nanos.clamp(0, 999_999_999)).unwrap_or(0);
    Utc.timestamp_opt(ts.seconds, nanos).single().unwrap_or_else(epoch)
}

/// `DateTime<Utc>` → `Timestamp`.
pub(crate) fn to_timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: t.timestamp(), nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0) }
}

/// `std::time::Duration` → `chrono::Duration`, saturating at the largest representable value.
pub(crate) fn to_chrono(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// .NET's round-trip (`"o"`) format: `2023-05-06T07:08:09.1234567Z` (7 fractional digits),
/// used by the deterministic UUIDs of the .NET and Go SDKs.
pub(crate) fn dotnet_roundtrip(t: DateTime<Utc>) -> String {
    format!("{}.{:07}Z", t.format("%Y-%m-%dT%H:%M:%S"), t.timestamp_subsec_nanos() / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotnet_format_has_seven_digits() {
        let t = Utc.timestamp_opt(1_683_356_889, 123_456_700).single().expect("time");
        assert_eq!(dotnet_roundtrip(t), "2023-05-06T07:08:09.1234567Z");
        let ts = to_timestamp(t);
        assert_eq!(from_timestamp(&ts), t);
    }
}
