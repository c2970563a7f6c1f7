//! The .NET `TimeSpan` text format, as Durable Functions' durable HTTP payloads carry it
//! (`DurableHttpRequest.timeout`, `asynchronousPatternPollingInterval`…): `[d.]hh:mm[:ss[.fffffff]]`.
//!
//! One implementation for the sidecar (which reads what SDKs send) and the Rust SDK (which writes
//! it), so the two never disagree. .NET carries at most 7 fractional digits (100 ns ticks); a bare
//! integer is a number of days. Negative spans have no meaning for a timeout or an interval and
//! are refused.

use std::time::Duration;

/// Parses `[d.]hh:mm[:ss[.fffffff]]` or a bare number of days. `None` for anything else,
/// including negative spans, out-of-range fields and more than 7 fractional digits.
pub fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.starts_with('-') || s.starts_with('+') {
        return None;
    }
    let Some((head, _)) = s.split_once(':') else {
        return digits(s)?.checked_mul(86_400).map(Duration::from_secs);
    };
    let (days, rest) = match head.split_once('.') {
        Some((d, _)) => (digits(d)?, &s[d.len() + 1..]),
        None => (0, s),
    };
    let mut parts = rest.split(':');
    let hours = digits(parts.next()?)?;
    let minutes = digits(parts.next()?)?;
    let (secs, nanos) = match parts.next() {
        None => (0, 0),
        Some(sec) => match sec.split_once('.') {
            None => (digits(sec)?, 0),
            Some((whole, frac)) => {
                if frac.is_empty() || frac.len() > 7 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (digits(whole)?, format!("{frac:0<9}").parse::<u32>().ok()?)
            }
        },
    };
    if parts.next().is_some() || hours > 23 || minutes > 59 || secs > 59 {
        return None;
    }
    let total = days.checked_mul(86_400)?.checked_add(hours * 3600 + minutes * 60 + secs)?;
    Some(Duration::new(total, nanos))
}

/// Formats as .NET's constant format: `[d.]hh:mm:ss[.fffffff]` (sub-tick nanoseconds are dropped).
pub fn format(d: Duration) -> String {
    let total = d.as_secs();
    let (days, rem) = (total / 86_400, total % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let ticks = d.subsec_nanos() / 100;
    let days = if days > 0 { format!("{days}.") } else { String::new() };
    let ticks = if ticks > 0 { format!(".{ticks:07}") } else { String::new() };
    format!("{days}{h:02}:{m:02}:{s:02}{ticks}")
}

/// A non-empty run of ASCII digits (no sign, no spaces: `u64::from_str` alone accepts `+5`).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_shape() {
        let cases = [
            ("00:00:05", Duration::from_secs(5)),
            ("00:01", Duration::from_secs(60)),
            ("1.01:01:01.5000000", Duration::from_millis(90_061_500)),
            ("1.01:01:01.5", Duration::from_millis(90_061_500)),
            ("00:00:00.0000001", Duration::from_nanos(100)),
            ("6.00:00:00", Duration::from_secs(6 * 86_400)),
            ("2", Duration::from_secs(2 * 86_400)),
            (" 00:00:30 ", Duration::from_secs(30)),
            ("23:59:59", Duration::from_secs(86_399)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Some(want), "{text}");
        }
    }

    #[test]
    fn refuses_what_dotnet_refuses_or_we_cannot_use() {
        for bad in [
            "",
            "nope",
            "-00:00:05",
            "+00:00:05",
            "-1",
            "00:00:05.12345678",
            "00:00:05.",
            "24:00:00",
            "00:60:00",
            "00:00:60",
            "00:00:00:00",
            "1.:00:00",
            "a.00:00:00",
            "00:+1:00",
            "00:00:1e",
            "99999999999999999999",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_in_the_constant_format_and_round_trips() {
        assert_eq!(format(Duration::from_secs(5)), "00:00:05");
        assert_eq!(format(Duration::from_millis(90_061_500)), "1.01:01:01.5000000");
        assert_eq!(format(Duration::from_nanos(150)), "00:00:00.0000001");
        for d in [
            Duration::ZERO,
            Duration::from_secs(59),
            Duration::from_millis(1),
            Duration::from_secs(3 * 86_400 + 7),
            Duration::new(86_399, 999_999_900),
        ] {
            assert_eq!(parse(&format(d)), Some(d), "{d:?}");
        }
    }
}
