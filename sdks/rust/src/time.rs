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

/// Formats a duration as a .NET `TimeSpan` string: `[d.]hh:mm:ss[.fffffff]`.
pub(crate) fn format_timespan(d: std::time::Duration) -> String {
    let total = d.as_secs();
    let (days, rem) = (total / 86_400, total % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let ticks = d.subsec_nanos() / 100;
    let mut out = String::new();
    if days > 0 {
        out.push_str(&format!("{days}."));
    }
    out.push_str(&format!("{h:02}:{m:02}:{s:02}"));
    if ticks > 0 {
        out.push_str(&format!(".{ticks:07}"));
    }
    out
}

/// Parses a .NET `TimeSpan` string (`[-][d.]hh:mm:ss[.f…]`); negative values are rejected.
pub(crate) fn parse_timespan(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let (days, rest) = match s.split_once(':') {
        Some((head, _)) if head.contains('.') => {
            let (d, _) = head.split_once('.')?;
            (d.parse::<u64>().ok()?, &s[d.len() + 1..])
        }
        Some(_) => (0, s),
        None => return None,
    };
    let mut parts = rest.split(':');
    let h: u64 = parts.next()?.parse().ok()?;
    let m: u64 = parts.next()?.parse().ok()?;
    let sec_part = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let (secs, frac) = match sec_part.split_once('.') {
        Some((a, b)) => (a.parse::<u64>().ok()?, b),
        None => (sec_part.parse::<u64>().ok()?, ""),
    };
    let mut nanos: u32 = 0;
    if !frac.is_empty() {
        if frac.len() > 9 || !frac.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let padded = format!("{frac:0<9}");
        nanos = padded.parse().ok()?;
    }
    let total = days.checked_mul(86_400)?.checked_add(h * 3600 + m * 60 + secs)?;
    Some(std::time::Duration::new(total, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timespan_round_trip() {
        assert_eq!(format_timespan(Duration::from_secs(5)), "00:00:05");
        assert_eq!(format_timespan(Duration::from_millis(90_061_500)), "1.01:01:01.5000000");
        assert_eq!(parse_timespan("00:00:05"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timespan("1.01:01:01.5000000"), Some(Duration::from_millis(90_061_500)));
        assert_eq!(parse_timespan("6.00:00:00"), Some(Duration::from_secs(6 * 86_400)));
        assert_eq!(parse_timespan("nope"), None);
    }

    #[test]
    fn dotnet_format_has_seven_digits() {
        let t = Utc.timestamp_opt(1_683_356_889, 123_456_700).single().expect("time");
        assert_eq!(dotnet_roundtrip(t), "2023-05-06T07:08:09.1234567Z");
        let ts = to_timestamp(t);
        assert_eq!(from_timestamp(&ts), t);
    }
}
