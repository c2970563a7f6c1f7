//! Durable HTTP: the typed request/response of `call_http` and the 202 polling rule.
//!
//! A durable HTTP call is the built-in activity [`HTTP_ACTIVITY`] (`BuiltIn::HttpActivity`)
//! whose input is the JSON of a [`DurableHttpRequest`] and whose result is the JSON of a
//! [`DurableHttpResponse`] (camelCase, the shape the Durable Functions durable HTTP persists).
//! The sidecar runs the request; the orchestrator (see
//! [`OrchestrationContext::call_http`](crate::OrchestrationContext::call_http)) only schedules
//! it and, for the asynchronous 202 pattern, polls with durable timers. This module owns the
//! types and the pure polling decision; it never performs HTTP itself.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Name of the built-in activity that performs durable HTTP requests.
pub const HTTP_ACTIVITY: &str = "BuiltIn::HttpActivity";

/// Delay between polls of a `202 Accepted` response without `Retry-After`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Header names mapped to their values (a single value is serialized as a string, several as
/// an array, as in Durable Functions).
pub type HttpHeaders = BTreeMap<String, Vec<String>>;

/// How the sidecar obtains a bearer token for the request (never stored in the history).
///
/// ```
/// use duro_sdk::TokenSource;
/// let t = TokenSource::azure_managed_identity("https://management.core.windows.net");
/// assert_eq!(t.resource, "https://management.core.windows.net/.default");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSource {
    /// Token source kind, e.g. `AzureManagedIdentity`.
    pub kind: String,
    /// The resource or scope to request a token for.
    pub resource: String,
    /// Extra options (`authorityhost`, `tenantid`), keys lower-case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
}

impl TokenSource {
    /// An Azure managed-identity token for `resource`; the bare management and Graph URLs are
    /// rewritten to their `/.default` scopes, as the reference implementation does.
    pub fn azure_managed_identity(resource: impl Into<String>) -> Self {
        let resource = resource.into();
        let trimmed = resource.trim_end_matches('/');
        let resource = match trimmed {
            "https://management.core.windows.net" | "https://graph.microsoft.com" => {
                format!("{trimmed}/.default")
            }
            _ => resource,
        };
        TokenSource { kind: "AzureManagedIdentity".into(), resource, options: None }
    }
}

/// A durable HTTP request (input of [`HTTP_ACTIVITY`]).
///
/// ```
/// use duro_sdk::DurableHttpRequest;
/// use std::time::Duration;
///
/// let req = DurableHttpRequest::post("https://example.org/orders", r#"{"id":1}"#)
///     .with_header("Content-Type", "application/json")
///     .with_timeout(Duration::from_secs(5));
/// let json = serde_json::to_value(&req).unwrap();
/// assert_eq!(json["method"], "POST");
/// assert_eq!(json["headers"]["Content-Type"], "application/json");
/// assert_eq!(json["timeout"], "00:00:05");
/// assert_eq!(json["asynchronousPatternEnabled"], true);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DurableHttpRequest {
    /// HTTP method, e.g. `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Absolute URL.
    pub uri: String,
    /// Request headers.
    #[serde(default, serialize_with = "ser_headers", deserialize_with = "de_headers")]
    pub headers: HttpHeaders,
    /// Request body text.
    #[serde(default)]
    pub content: Option<String>,
    /// Token to acquire and send as `Authorization: Bearer …`.
    #[serde(default)]
    pub token_source: Option<TokenSource>,
    /// Poll `202 Accepted` responses at their `Location` until they finish (default `true`,
    /// also when the JSON omits it, as the Python SDK does).
    #[serde(default = "default_true")]
    pub asynchronous_pattern_enabled: bool,
    /// Timeout of each HTTP attempt (a .NET `TimeSpan` string on the wire, e.g. `00:00:05`).
    #[serde(default, serialize_with = "ser_timespan", deserialize_with = "de_timespan")]
    pub timeout: Option<Duration>,
}

fn default_method() -> String {
    "GET".into()
}

fn default_true() -> bool {
    true
}

impl DurableHttpRequest {
    /// A request with this method and URL (no headers, no body, 202 polling enabled).
    pub fn new(method: impl Into<String>, uri: impl Into<String>) -> Self {
        DurableHttpRequest {
            method: method.into(),
            uri: uri.into(),
            headers: HttpHeaders::new(),
            content: None,
            token_source: None,
            asynchronous_pattern_enabled: true,
            timeout: None,
        }
    }

    /// A `GET` request.
    pub fn get(uri: impl Into<String>) -> Self {
        Self::new("GET", uri)
    }

    /// A `POST` request with a body.
    pub fn post(uri: impl Into<String>, content: impl Into<String>) -> Self {
        Self::new("POST", uri).with_content(content)
    }

    /// Adds a header value (repeat for multi-valued headers).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.entry(name.into()).or_default().push(value.into());
        self
    }

    /// Sets the body.
    pub fn with_content(mut self, content: impl Into<String>) -> Self {
        self.content = Some(content.into());
        self
    }

    /// Sets the token source.
    pub fn with_token_source(mut self, source: TokenSource) -> Self {
        self.token_source = Some(source);
        self
    }

    /// Enables or disables 202 polling.
    pub fn with_asynchronous_pattern(mut self, enabled: bool) -> Self {
        self.asynchronous_pattern_enabled = enabled;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A durable HTTP response (result of [`HTTP_ACTIVITY`]).
///
/// ```
/// use duro_sdk::DurableHttpResponse;
/// let r: DurableHttpResponse = serde_json::from_str(
///     r#"{"statusCode":200,"headers":{"Content-Type":"application/json","Vary":["a","b"]},"content":"{\"ok\":true}"}"#,
/// ).unwrap();
/// assert!(r.is_success());
/// assert_eq!(r.header("content-type"), Some("application/json"));
/// assert_eq!(r.headers["Vary"], vec!["a", "b"]);
/// let body: serde_json::Value = r.json().unwrap();
/// assert_eq!(body["ok"], true);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DurableHttpResponse {
    /// HTTP status code.
    pub status_code: u16,
    /// Response headers.
    #[serde(default, serialize_with = "ser_headers", deserialize_with = "de_headers")]
    pub headers: HttpHeaders,
    /// Body text.
    #[serde(default)]
    pub content: Option<String>,
}

impl DurableHttpResponse {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.first()).map(String::as_str)
    }

    /// `true` for 2xx status codes.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status_code)
    }

    /// Parses the body as JSON (an absent body reads as `null`).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        crate::payload::decode(self.content.as_deref())
    }
}

/// After `response` to `request`: the delay and the poll request, if the 202 pattern applies.
pub(crate) fn next_poll(
    request: &DurableHttpRequest,
    response: &DurableHttpResponse,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<(Duration, DurableHttpRequest)> {
    if response.status_code != 202 || !request.asynchronous_pattern_enabled {
        return None;
    }
    let location = response.header("Location")?;
    let delay = response.header("Retry-After").map(|v| retry_after(v, now)).unwrap_or(DEFAULT_POLL_INTERVAL);
    let mut headers = request.headers.clone();
    headers.retain(|k, _| !k.eq_ignore_ascii_case("x-functions-key"));
    let poll = DurableHttpRequest {
        method: "GET".into(),
        uri: resolve(&request.uri, location),
        headers,
        content: None,
        token_source: request.token_source.clone(),
        asynchronous_pattern_enabled: true,
        timeout: request.timeout,
    };
    Some((delay, poll))
}

/// `Retry-After` as delay-seconds or an HTTP-date (past dates → 0); unparsable → default.
fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Duration {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    match chrono::DateTime::parse_from_rfc2822(value) {
        Ok(at) => (at.with_timezone(&chrono::Utc) - now).to_std().unwrap_or(Duration::ZERO),
        Err(_) => DEFAULT_POLL_INTERVAL,
    }
}

/// Resolves a `Location` value against the request URL (absolute, scheme-relative,
/// origin-relative and path-relative references).
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let (scheme, rest) = match base.split_once("://") {
        Some(parts) => parts,
        None => return location.to_string(),
    };
    if let Some(stripped) = location.strip_prefix("//") {
        return format!("{scheme}://{stripped}");
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..authority_end]);
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = &rest[authority_end..];
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let dir = match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "/",
    };
    format!("{origin}{dir}{location}")
}

fn ser_headers<S: Serializer>(headers: &HttpHeaders, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(untagged)]
    enum One<'a> {
        Single(&'a str),
        Many(&'a [String]),
    }
    let map: BTreeMap<&str, One<'_>> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), if v.len() == 1 { One::Single(&v[0]) } else { One::Many(v) }))
        .collect();
    map.serialize(s)
}

fn de_headers<'de, D: Deserializer<'de>>(d: D) -> Result<HttpHeaders, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let raw: Option<BTreeMap<String, OneOrMany>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let values = match v {
                OneOrMany::One(s) => vec![s],
                OneOrMany::Many(v) => v,
            };
            (k, values)
        })
        .collect())
}

fn ser_timespan<S: Serializer>(t: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(d) => s.serialize_str(&duro_core::timespan::format(*d)),
        None => s.serialize_none(),
    }
}

fn de_timespan<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let raw: Option<String> = Option::deserialize(d)?;
    match raw {
        None => Ok(None),
        Some(s) => duro_core::timespan::parse(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid TimeSpan '{s}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time")
    }

    #[test]
    fn request_json_matches_durable_functions_shape() {
        let req = DurableHttpRequest::get("https://example.org/x")
            .with_header("Accept", "application/json")
            .with_token_source(TokenSource::azure_managed_identity("https://management.core.windows.net/.default"));
        let v = serde_json::to_value(&req).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "method": "GET",
                "uri": "https://example.org/x",
                "headers": {"Accept": "application/json"},
                "content": null,
                "tokenSource": {"kind": "AzureManagedIdentity", "resource": "https://management.core.windows.net/.default"},
                "asynchronousPatternEnabled": true,
                "timeout": null
            })
        );
        let back: DurableHttpRequest = serde_json::from_value(v).expect("back");
        assert_eq!(back, req);
        // Missing fields read with defaults (Python SDK omits asynchronousPatternEnabled).
        let min: DurableHttpRequest = serde_json::from_str(r#"{"uri":"https://a"}"#).expect("min");
        assert_eq!(min.method, "GET");
        assert!(min.asynchronous_pattern_enabled);
    }

    #[test]
    fn polls_202_with_location() {
        let req = DurableHttpRequest::post("https://api.example.org/v1/jobs?x=1", "{}")
            .with_header("x-functions-key", "secret")
            .with_header("Accept", "application/json");
        let mut resp = DurableHttpResponse { status_code: 202, headers: HttpHeaders::new(), content: None };
        assert!(next_poll(&req, &resp, now()).is_none(), "202 without Location is final");
        resp.headers.insert("Location".into(), vec!["status/7".into()]);
        resp.headers.insert("Retry-After".into(), vec!["5".into()]);
        let (delay, poll) = next_poll(&req, &resp, now()).expect("poll");
        assert_eq!(delay, Duration::from_secs(5));
        assert_eq!(poll.method, "GET");
        assert_eq!(poll.uri, "https://api.example.org/v1/status/7");
        assert!(poll.content.is_none());
        assert!(!poll.headers.contains_key("x-functions-key"));
        assert!(poll.headers.contains_key("Accept"));

        resp.headers.insert("Location".into(), vec!["/abs".into()]);
        resp.headers.insert("Retry-After".into(), vec!["Thu, 01 Jan 2026 00:00:10 GMT".into()]);
        let (delay, poll) = next_poll(&req, &resp, now()).expect("poll");
        assert_eq!(delay, Duration::from_secs(10));
        assert_eq!(poll.uri, "https://api.example.org/abs");

        resp.headers.remove("Retry-After");
        assert_eq!(next_poll(&req, &resp, now()).expect("poll").0, DEFAULT_POLL_INTERVAL);
        let no_async = req.clone().with_asynchronous_pattern(false);
        assert!(next_poll(&no_async, &resp, now()).is_none());
        resp.status_code = 200;
        assert!(next_poll(&req, &resp, now()).is_none());
    }

    #[test]
    fn resolves_locations() {
        assert_eq!(resolve("https://a.b/c/d", "https://x.y/z"), "https://x.y/z");
        assert_eq!(resolve("https://a.b/c/d", "//x.y/z"), "https://x.y/z");
        assert_eq!(resolve("https://a.b", "s"), "https://a.b/s");
        assert_eq!(resolve("https://a.b:8080/c/d?q=/x", "s?t=1"), "https://a.b:8080/c/s?t=1");
    }
}
