//! The asynchronous 202 pattern, decided purely: whether a response means "poll", where
//! (`Location`, absolute or relative to the URL that answered), when (`Retry-After` as
//! delay-seconds or an HTTP date), and the checkpoint that lets a restarted sidecar resume
//! polling without repeating the original request. No I/O, no clock: callers pass `now`.
//!
//! The checkpoint holds no header and no token: the headers of every poll are derived again
//! from the activity's own input, and the token is acquired at send time. It does hold the
//! `Location` as the server gave it, secret query parameters (a SAS `sig=`) included, since
//! a resumed poll needs them: it lives in the activity's queue row, next to the unmasked
//! request, and is deleted (overwritten, with `secure_delete`) with it when the call ends.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use url::Url;

use super::request::{parse_http_url, Headers, HttpResponseOut};

/// Version of the checkpoint JSON.
const CHECKPOINT_VERSION: u32 = 1;

/// How long to wait before the next poll: `Retry-After` as delay-seconds or an HTTP date
/// (a past date means now); `default` when absent or unparsable.
pub fn retry_after(value: Option<&str>, now: SystemTime, default: Duration) -> Duration {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return default;
    };
    if let Ok(secs) = v.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    // Not RFC 9110, but seen in the wild: fractional seconds.
    if let Ok(secs) = v.parse::<f64>() {
        if (0.0..1e9).contains(&secs) {
            return Duration::from_secs_f64(secs);
        }
        return default;
    }
    match httpdate::parse_http_date(v) {
        Ok(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
        Err(_) => default,
    }
}

/// Resolves a `Location` value against the URL that answered (RFC 9110 §10.2.2).
pub fn resolve_location(base: &Url, location: &str) -> Result<Url, String> {
    let joined =
        base.join(location.trim()).map_err(|e| format!("Location '{location}' is not a valid URL reference ({e})"))?;
    parse_http_url(joined.as_str()).map_err(|p| format!("Location '{location}': {p}"))
}

/// Headers of a poll: the original ones minus `x-functions-key` (the start key is often a
/// function key the status endpoint does not accept, as in Durable Functions) and the
/// content headers (a poll is a GET without a body).
pub fn poll_headers(original: &Headers) -> Headers {
    original
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x-functions-key" | "content-type" | "content-length"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What to do after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The response is final: the orchestration sees it.
    Done,
    /// Poll `location` after `delay`.
    Poll { location: Url, delay: Duration },
}

/// After `response` from `answered_by`: done, or poll where and when. A 202 without
/// `Location` is final (there is nothing to poll); while polling, a 202 without `Location`
/// keeps polling the same URL.
pub fn next_step(
    async_pattern: bool,
    response: &HttpResponseOut,
    answered_by: &Url,
    polling: Option<&Url>,
    now: SystemTime,
    default_interval: Duration,
) -> Result<Next, String> {
    if !async_pattern || response.status_code != 202 {
        return Ok(Next::Done);
    }
    let location = match (response.header("location"), polling) {
        (Some(l), _) => resolve_location(answered_by, l)?,
        (None, Some(current)) => current.clone(),
        (None, None) => return Ok(Next::Done),
    };
    let delay = retry_after(response.header("retry-after"), now, default_interval);
    Ok(Next::Poll { location, delay })
}

/// Polling progress, persisted (via the activity checkpoint) before every wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollState {
    pub v: u32,
    /// The URL the next poll GETs.
    pub location: String,
    /// Wall-clock time of the next poll (ms since the epoch).
    pub next_poll_at_ms: i64,
    /// Polls scheduled so far, the next one included.
    pub polls: u32,
    /// Polling gives up after this wall-clock time (ms since the epoch).
    pub deadline_ms: i64,
}

/// Limits of one durable HTTP call's polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollLimits {
    pub max_polls: u32,
    pub max_duration: Duration,
}

/// Polling must stop.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PollLimitHit {
    #[error("the operation was still running (HTTP 202) after {polls} polls, the limit (--durable-http-max-polls)")]
    TooManyPolls { polls: u32 },
    #[error(
        "the operation was still running (HTTP 202) and the next poll ({delay_ms} ms later) would pass the polling \
         deadline of {max_secs} s (--durable-http-max-poll-seconds)"
    )]
    Deadline { delay_ms: i64, max_secs: u64 },
}

impl PollState {
    /// The state after scheduling one more poll of `location` in `delay`.
    pub fn advance(
        prev: Option<&PollState>,
        location: &Url,
        delay: Duration,
        now_ms: i64,
        limits: PollLimits,
    ) -> Result<PollState, PollLimitHit> {
        let polls = prev.map_or(0, |p| p.polls);
        if polls >= limits.max_polls {
            return Err(PollLimitHit::TooManyPolls { polls });
        }
        let max_ms = i64::try_from(limits.max_duration.as_millis()).unwrap_or(i64::MAX);
        let deadline_ms = prev.map_or(now_ms.saturating_add(max_ms), |p| p.deadline_ms);
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let next_poll_at_ms = now_ms.saturating_add(delay_ms);
        if next_poll_at_ms > deadline_ms {
            return Err(PollLimitHit::Deadline { delay_ms, max_secs: limits.max_duration.as_secs() });
        }
        Ok(PollState {
            v: CHECKPOINT_VERSION,
            location: location.to_string(),
            next_poll_at_ms,
            polls: polls + 1,
            deadline_ms,
        })
    }

    pub fn encode(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(s: &str) -> Result<PollState, String> {
        let st: PollState = serde_json::from_str(s).map_err(|e| format!("unreadable checkpoint: {e}"))?;
        if st.v != CHECKPOINT_VERSION {
            return Err(format!("checkpoint version {} is not supported", st.v));
        }
        Ok(st)
    }

    /// The URL to poll.
    pub fn location_url(&self) -> Result<Url, String> {
        parse_http_url(&self.location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Duration = Duration::from_secs(30);

    fn now() -> SystemTime {
        // Thu, 01 Jan 2026 00:00:00 GMT
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> HttpResponseOut {
        let mut h = Headers::new();
        for (k, v) in headers {
            h.entry(k.to_ascii_lowercase()).or_default().push(v.to_string());
        }
        HttpResponseOut { status_code: status, headers: h, content: None }
    }

    #[test]
    fn parses_retry_after() {
        assert_eq!(retry_after(Some("5"), now(), DEFAULT), Duration::from_secs(5));
        assert_eq!(retry_after(Some(" 0 "), now(), DEFAULT), Duration::ZERO);
        assert_eq!(retry_after(Some("1.5"), now(), DEFAULT), Duration::from_millis(1500));
        assert_eq!(retry_after(Some("Thu, 01 Jan 2026 00:00:10 GMT"), now(), DEFAULT), Duration::from_secs(10));
        // RFC 850 and asctime forms are HTTP dates too.
        assert_eq!(retry_after(Some("Thursday, 01-Jan-26 00:01:00 GMT"), now(), DEFAULT), Duration::from_secs(60));
        assert_eq!(retry_after(Some("Thu Jan  1 00:00:02 2026"), now(), DEFAULT), Duration::from_secs(2));
        // Past dates mean "now".
        assert_eq!(retry_after(Some("Wed, 31 Dec 2025 23:59:00 GMT"), now(), DEFAULT), Duration::ZERO);
        assert_eq!(retry_after(None, now(), DEFAULT), DEFAULT);
        assert_eq!(retry_after(Some(""), now(), DEFAULT), DEFAULT);
        assert_eq!(retry_after(Some("soon"), now(), DEFAULT), DEFAULT);
        assert_eq!(retry_after(Some("-3"), now(), DEFAULT), DEFAULT);
    }

    #[test]
    fn resolves_locations() {
        let base = url("https://api.example.org:8443/v1/jobs?x=1");
        let r = |l: &str| resolve_location(&base, l).map(|u| u.to_string());
        assert_eq!(r("https://other.example/s/1").as_deref(), Ok("https://other.example/s/1"));
        assert_eq!(r("//cdn.example/s").as_deref(), Ok("https://cdn.example/s"));
        assert_eq!(r("/status/7?code=k").as_deref(), Ok("https://api.example.org:8443/status/7?code=k"));
        assert_eq!(r("status/7").as_deref(), Ok("https://api.example.org:8443/v1/status/7"));
        assert_eq!(r("../up").as_deref(), Ok("https://api.example.org:8443/up"));
        assert!(r("ftp://x.example/").is_err());
        assert!(r("http://[bad").is_err());
    }

    #[test]
    fn decides_next_step() {
        let base = url("http://127.0.0.1:9/start");
        let step = |r: &HttpResponseOut, polling: Option<&Url>| next_step(true, r, &base, polling, now(), DEFAULT);
        assert_eq!(step(&resp(200, &[("Location", "/x")]), None), Ok(Next::Done));
        assert_eq!(step(&resp(202, &[]), None), Ok(Next::Done), "202 without Location is final");
        assert_eq!(
            step(&resp(202, &[("Location", "status/1")]), None),
            Ok(Next::Poll { location: url("http://127.0.0.1:9/status/1"), delay: DEFAULT })
        );
        assert_eq!(
            step(&resp(202, &[("Location", "/s"), ("Retry-After", "2")]), None),
            Ok(Next::Poll { location: url("http://127.0.0.1:9/s"), delay: Duration::from_secs(2) })
        );
        let current = url("http://127.0.0.1:9/s");
        assert_eq!(
            step(&resp(202, &[("Retry-After", "1")]), Some(&current)),
            Ok(Next::Poll { location: current.clone(), delay: Duration::from_secs(1) }),
            "while polling, a 202 without Location polls the same URL"
        );
        assert_eq!(
            next_step(false, &resp(202, &[("Location", "/s")]), &base, None, now(), DEFAULT),
            Ok(Next::Done),
            "async pattern disabled"
        );
        assert!(step(&resp(202, &[("Location", "mailto:x@y")]), None).is_err());
    }

    #[test]
    fn poll_headers_drop_function_key_and_content_headers() {
        let mut h = Headers::new();
        h.insert("x-functions-key".into(), vec!["k".into()]);
        h.insert("content-type".into(), vec!["application/json".into()]);
        h.insert("accept".into(), vec!["application/json".into()]);
        h.insert("authorization".into(), vec!["Basic x".into()]);
        let p = poll_headers(&h);
        assert_eq!(p.keys().map(String::as_str).collect::<Vec<_>>(), vec!["accept", "authorization"]);
    }

    #[test]
    fn checkpoint_advances_and_enforces_limits() {
        let limits = PollLimits { max_polls: 2, max_duration: Duration::from_secs(60) };
        let loc = url("http://127.0.0.1:9/s");
        let s1 = PollState::advance(None, &loc, Duration::from_secs(1), 1_000, limits).expect("first");
        assert_eq!(s1.polls, 1);
        assert_eq!(s1.next_poll_at_ms, 2_000);
        assert_eq!(s1.deadline_ms, 61_000);
        let s2 = PollState::advance(Some(&s1), &loc, Duration::from_secs(5), 3_000, limits).expect("second");
        assert_eq!(
            (s2.polls, s2.next_poll_at_ms, s2.deadline_ms),
            (2, 8_000, 61_000),
            "deadline is fixed at the start"
        );
        assert_eq!(
            PollState::advance(Some(&s2), &loc, Duration::ZERO, 9_000, limits),
            Err(PollLimitHit::TooManyPolls { polls: 2 })
        );
        assert!(matches!(
            PollState::advance(Some(&s1), &loc, Duration::from_secs(59), 3_000, limits),
            Err(PollLimitHit::Deadline { .. })
        ));
        let text = s2.encode();
        assert!(!text.contains("eader"), "no headers in the checkpoint: {text}");
        assert_eq!(PollState::decode(&text), Ok(s2));
        assert!(PollState::decode("{}").is_err());
        assert!(
            PollState::decode(r#"{"v":9,"location":"http://a/","nextPollAtMs":0,"polls":1,"deadlineMs":0}"#).is_err()
        );
    }
}
