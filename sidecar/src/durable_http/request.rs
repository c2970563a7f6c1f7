//! The JSON of durable HTTP as Durable Functions defines it: parsing a `DurableHttpRequest`
//! (leniently, accepting what the .NET in-proc/isolated, JS, Python and our Rust SDK send)
//! and writing a `DurableHttpResponse`. Pure: no I/O.
//!
//! Accepted input: the request object, or a one-element JSON array holding it (in-proc .NET
//! passes activity parameters as an array). Keys match case-insensitively. `headers` values
//! are a string or an array of strings. `timeout` is a .NET `TimeSpan` string
//! (`[d.]hh:mm:ss[.fffffff]`) or a number of seconds. `asynchronousPatternEnabled` defaults
//! to `true` when absent (Python omits it). `retryOptions` is accepted and ignored: the
//! orchestration's activity retry policy is the way to retry.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};
use thiserror::Error;
use url::Url;

/// Header names mapped to their values, lower-case names, in order.
pub type Headers = BTreeMap<String, Vec<String>>;

/// Headers whose values are secrets: masked wherever Duro writes them down itself.
pub const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-functions-key",
    "cookie",
    "set-cookie",
    "api-key",
    "x-api-key",
    "ocp-apim-subscription-key",
    "x-ms-functions-key",
];

/// Query parameters whose values are secrets (Functions keys, SAS signatures, OAuth
/// tokens, API keys): masked in every copy Duro stores (compared case-insensitively).
pub const SECRET_QUERY_PARAMS: &[&str] = &[
    "code",
    "sig",
    "signature",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "client_secret",
    "api-key",
    "api_key",
    "apikey",
    "key",
    "subscription-key",
    "password",
    "secret",
];

/// `url` with the values of [`SECRET_QUERY_PARAMS`] replaced by [`REDACTED`]; `None` when
/// it has none.
pub fn mask_url_secrets(url: &str) -> Option<String> {
    let mut u = Url::parse(url).ok()?;
    let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
    let secret = |k: &str| SECRET_QUERY_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(k));
    if !pairs.iter().any(|(k, _)| secret(k)) {
        return None;
    }
    u.query_pairs_mut()
        .clear()
        .extend_pairs(pairs.iter().map(|(k, v)| (k.as_str(), if secret(k) { REDACTED } else { v.as_str() })));
    Some(u.to_string())
}

/// What replaces a secret header value.
pub const REDACTED: &str = "[redacted]";

/// A bad durable HTTP request, naming the field.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("invalid durable HTTP request: field '{field}': {problem}")]
pub struct InvalidRequest {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> InvalidRequest {
    InvalidRequest { field: field.into(), problem: problem.into() }
}

/// Where the bearer token comes from (`tokenSource`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenSourceSpec {
    /// A resource (`https://management.core.windows.net`) or v2 scope (`…/.default`).
    pub resource: String,
    /// `options.tenantid`: tenant for the Entra ID token endpoint flows.
    pub tenant_id: Option<String>,
    /// `options.authorityhost`: authority for the Entra ID token endpoint flows.
    pub authority_host: Option<String>,
}

/// A parsed `DurableHttpRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequestSpec {
    pub method: reqwest::Method,
    pub uri: Url,
    pub headers: Headers,
    pub content: Option<String>,
    pub token_source: Option<TokenSourceSpec>,
    pub asynchronous_pattern_enabled: bool,
    /// Timeout of each HTTP attempt (the initial request and every poll).
    pub timeout: Option<Duration>,
}

/// Parses the activity input.
pub fn parse_input(input: Option<&str>) -> Result<HttpRequestSpec, InvalidRequest> {
    let text = input.map(str::trim).filter(|s| !s.is_empty()).ok_or_else(|| invalid("input", "missing"))?;
    let value: Value = serde_json::from_str(text).map_err(|e| invalid("input", format!("not JSON: {e}")))?;
    let value = match value {
        Value::Array(mut items) if items.len() == 1 => items.remove(0),
        Value::Array(items) => {
            return Err(invalid("input", format!("an array must hold exactly one request, it holds {}", items.len())))
        }
        v => v,
    };
    let Value::Object(obj) = value else {
        return Err(invalid("input", "expected a JSON object (DurableHttpRequest)"));
    };
    parse_request(&obj)
}

fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v).filter(|v| !v.is_null())
}

fn parse_request(obj: &Map<String, Value>) -> Result<HttpRequestSpec, InvalidRequest> {
    let method = match get(obj, "method") {
        None => reqwest::Method::GET,
        Some(Value::String(m)) if !m.trim().is_empty() => {
            reqwest::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| invalid("method", format!("'{m}' is not an HTTP method")))?
        }
        Some(other) => return Err(invalid("method", format!("expected a method name string, got {}", kind(other)))),
    };
    let uri = match get(obj, "uri") {
        None => return Err(invalid("uri", "missing")),
        Some(Value::String(u)) => parse_http_url(u).map_err(|p| invalid("uri", p))?,
        Some(other) => return Err(invalid("uri", format!("expected an absolute URL string, got {}", kind(other)))),
    };
    let headers = match get(obj, "headers") {
        None => Headers::new(),
        Some(v) => parse_headers(v, "headers")?,
    };
    let content = match get(obj, "content") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(invalid("content", format!("expected a string or null, got {}", kind(other)))),
    };
    let token_source = match get(obj, "tokenSource") {
        None => None,
        Some(Value::Object(t)) => Some(parse_token_source(t)?),
        Some(other) => return Err(invalid("tokenSource", format!("expected an object or null, got {}", kind(other)))),
    };
    let asynchronous_pattern_enabled = match get(obj, "asynchronousPatternEnabled") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid("asynchronousPatternEnabled", format!("expected true or false, got {}", kind(other))))
        }
    };
    let timeout = match get(obj, "timeout") {
        None => None,
        Some(Value::String(s)) => Some(crate::core::timespan::parse(s).ok_or_else(|| {
            invalid("timeout", format!("'{s}' is not a TimeSpan such as \"00:01:30\" (hh:mm:ss) or \"1.00:00:00\""))
        })?),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(secs) if (0.0..1e12).contains(&secs) => Some(Duration::from_secs_f64(secs)),
            _ => return Err(invalid("timeout", format!("{n} is not a number of seconds"))),
        },
        Some(other) => return Err(invalid("timeout", format!("expected a TimeSpan string, got {}", kind(other)))),
    };
    if timeout.is_some_and(|t| t.is_zero()) {
        return Err(invalid("timeout", "must be greater than zero"));
    }
    if let Some(ct) = content_type(&headers) {
        if ct.to_ascii_lowercase().starts_with("multipart/") {
            return Err(invalid("headers.Content-Type", "multipart content is not supported by durable HTTP"));
        }
    }
    Ok(HttpRequestSpec { method, uri, headers, content, token_source, asynchronous_pattern_enabled, timeout })
}

/// Parses an absolute `http`/`https` URL; the problem otherwise.
pub fn parse_http_url(s: &str) -> Result<Url, String> {
    let u = Url::parse(s.trim()).map_err(|e| format!("'{s}' is not an absolute URL ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("scheme '{}' is not supported (http or https)", u.scheme()));
    }
    if u.host().is_none() {
        return Err(format!("'{s}' has no host"));
    }
    Ok(u)
}

fn parse_headers(v: &Value, field: &str) -> Result<Headers, InvalidRequest> {
    let Value::Object(map) = v else {
        return Err(invalid(field, format!("expected an object of header names to values, got {}", kind(v))));
    };
    let mut out = Headers::new();
    for (name, value) in map {
        let f = || format!("{field}.{name}");
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(f(), "not a valid header name"));
        }
        let values: Vec<String> = match value {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(invalid(f(), format!("expected strings in the array, got {}", kind(other)))),
                })
                .collect::<Result<_, _>>()?,
            Value::Null => continue,
            other => {
                return Err(invalid(f(), format!("expected a string or an array of strings, got {}", kind(other))))
            }
        };
        for s in &values {
            if reqwest::header::HeaderValue::from_str(s).is_err() {
                return Err(invalid(f(), "value contains characters not allowed in a header"));
            }
        }
        out.entry(name.to_ascii_lowercase()).or_default().extend(values);
    }
    Ok(out)
}

fn parse_token_source(t: &Map<String, Value>) -> Result<TokenSourceSpec, InvalidRequest> {
    match get(t, "kind") {
        Some(Value::String(k)) if k.eq_ignore_ascii_case("AzureManagedIdentity") => {}
        Some(Value::String(k)) => {
            return Err(invalid("tokenSource.kind", format!("'{k}' is not supported (only AzureManagedIdentity)")))
        }
        None if get(t, "$type").is_some() => {
            return Err(invalid("tokenSource.kind", "custom token sources ($type) are not supported"))
        }
        // Older SDKs send only the resource.
        None => {}
        Some(other) => return Err(invalid("tokenSource.kind", format!("expected a string, got {}", kind(other)))),
    }
    let resource = match get(t, "resource") {
        Some(Value::String(r)) if !r.trim().is_empty() => r.trim().to_string(),
        Some(Value::String(_)) | None => return Err(invalid("tokenSource.resource", "missing")),
        Some(other) => return Err(invalid("tokenSource.resource", format!("expected a string, got {}", kind(other)))),
    };
    let mut spec = TokenSourceSpec { resource, tenant_id: None, authority_host: None };
    match get(t, "options") {
        None => {}
        Some(Value::Object(o)) => {
            let opt = |key: &str| -> Result<Option<String>, InvalidRequest> {
                match get(o, key) {
                    None => Ok(None),
                    Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
                    Some(other) => Err(invalid(
                        format!("tokenSource.options.{key}"),
                        format!("expected a string, got {}", kind(other)),
                    )),
                }
            };
            spec.tenant_id = opt("tenantid")?;
            if let Some(t) = &spec.tenant_id {
                if !valid_tenant(t) {
                    return Err(invalid(
                        "tokenSource.options.tenantid",
                        format!(
                            "'{t}' is not a tenant: expected a GUID or a domain name such as contoso.onmicrosoft.com"
                        ),
                    ));
                }
            }
            spec.authority_host = opt("authorityhost")?;
            if let Some(a) = &spec.authority_host {
                parse_http_url(a).map_err(|p| invalid("tokenSource.options.authorityhost", p))?;
            }
        }
        Some(other) => {
            return Err(invalid("tokenSource.options", format!("expected an object, got {}", kind(other))));
        }
    }
    Ok(spec)
}

/// An Entra ID tenant: a GUID, or a domain name (letters, digits, `-`, dots between
/// labels; also `common`, `organizations`). Nothing that could leave its path segment.
pub fn valid_tenant(t: &str) -> bool {
    if uuid::Uuid::try_parse(t).is_ok() {
        return true;
    }
    t.len() <= 253
        && t.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The first `Content-Type` value.
pub fn content_type(headers: &Headers) -> Option<&str> {
    headers.get("content-type").and_then(|v| v.first()).map(String::as_str)
}

/// Masks the values of [`SECRET_HEADERS`].
pub fn redact(headers: &Headers) -> Headers {
    headers
        .iter()
        .map(|(k, v)| {
            if SECRET_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                (k.clone(), v.iter().map(|_| REDACTED.to_string()).collect())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

/// The request JSON as history records it: the values of [`SECRET_HEADERS`] and of the
/// `uri`'s [`SECRET_QUERY_PARAMS`] masked, the
/// rest untouched (same shape: a string stays a string, an array an array). `None` when
/// there is nothing to mask or the input is not a request object; the sidecar still runs
/// the unmasked request, which only the activity's queue row holds until it completes.
pub fn mask_input_secrets(input: &str) -> Option<String> {
    let mut v: Value = serde_json::from_str(input).ok()?;
    let request = match &mut v {
        Value::Array(items) if items.len() == 1 => items.first_mut()?,
        other => other,
    };
    let obj = request.as_object_mut()?;
    let mut masked = false;
    for (key, uri) in obj.iter_mut() {
        if key.eq_ignore_ascii_case("uri") {
            if let Some(m) = uri.as_str().and_then(mask_url_secrets) {
                *uri = Value::from(m);
                masked = true;
            }
        }
    }
    for (key, headers) in obj.iter_mut() {
        if !key.eq_ignore_ascii_case("headers") {
            continue;
        }
        let Some(headers) = headers.as_object_mut() else { continue };
        for (name, value) in headers.iter_mut() {
            if !SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                continue;
            }
            *value = match value {
                Value::Array(items) => Value::Array(items.iter().map(|_| Value::from(REDACTED)).collect()),
                _ => Value::from(REDACTED),
            };
            masked = true;
        }
    }
    if masked {
        serde_json::to_string(&v).ok()
    } else {
        None
    }
}

/// A `DurableHttpResponse`: `{statusCode, headers, content}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponseOut {
    pub status_code: u16,
    pub headers: Headers,
    /// Body as text (UTF-8, lossy); `None` for an empty body.
    pub content: Option<String>,
}

impl HttpResponseOut {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).and_then(|v| v.first()).map(String::as_str)
    }

    /// The JSON the orchestration sees; secret headers (`Set-Cookie`, …) masked.
    pub fn to_json(&self) -> String {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            status_code: u16,
            headers: Map<String, Value>,
            content: Option<&'a str>,
        }
        let headers = redact(&self.headers)
            .into_iter()
            .map(|(k, mut v)| {
                let value = if v.len() == 1 { Value::String(v.remove(0)) } else { Value::from(v) };
                (k, value)
            })
            .collect();
        let out = Out { status_code: self.status_code, headers, content: self.content.as_deref() };
        // A struct of strings and numbers always serializes.
        serde_json::to_string(&out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<HttpRequestSpec, InvalidRequest> {
        parse_input(Some(s))
    }

    #[test]
    fn parses_in_proc_dotnet_shape() {
        let r = parse(
            r#"{"method":"GET","uri":"https://example.org/x","headers":{"Accept":"application/json"},"content":null,
               "tokenSource":{"kind":"AzureManagedIdentity","resource":"https://management.core.windows.net/.default"},
               "asynchronousPatternEnabled":true,"retryOptions":null,"timeout":null}"#,
        )
        .expect("parse");
        assert_eq!(r.method, reqwest::Method::GET);
        assert_eq!(r.uri.as_str(), "https://example.org/x");
        assert_eq!(r.headers["accept"], vec!["application/json"]);
        assert_eq!(r.content, None);
        let t = r.token_source.expect("token source");
        assert_eq!(t.resource, "https://management.core.windows.net/.default");
        assert!(r.asynchronous_pattern_enabled);
        assert_eq!(r.timeout, None);
    }

    #[test]
    fn parses_array_wrapped_and_other_sdk_shapes() {
        // In-proc passes activity parameters as a one-element array.
        let r =
            parse(r#"[{"method":"POST","uri":"http://127.0.0.1:1/a","content":"{}","headers":{"X-Multi":["a","b"]}}]"#)
                .expect("array");
        assert_eq!(r.method, reqwest::Method::POST);
        assert_eq!(r.content.as_deref(), Some("{}"));
        assert_eq!(r.headers["x-multi"], vec!["a", "b"]);
        // Python omits asynchronousPatternEnabled and timeout; method may be lower-case.
        let r = parse(r#"{"method":"get","uri":"https://a.example/","tokenSource":{"resource":"https://r","kind":"AzureManagedIdentity"}}"#)
            .expect("python");
        assert_eq!(r.method, reqwest::Method::GET);
        assert!(r.asynchronous_pattern_enabled);
        // .NET isolated: opt-out of polling, TimeSpan timeout, options.
        let r = parse(
            r#"{"Method":"DELETE","Uri":"https://a.example/","AsynchronousPatternEnabled":false,"Timeout":"1.02:03:04.5",
               "TokenSource":{"Kind":"AzureManagedIdentity","Resource":"https://r/.default","Options":{"tenantid":"t1","authorityhost":"https://login.example/"}}}"#,
        )
        .expect("isolated");
        assert!(!r.asynchronous_pattern_enabled);
        assert_eq!(r.timeout, Some(Duration::from_millis(((26 * 60 + 3) * 60 + 4) * 1000 + 500)));
        let t = r.token_source.expect("ts");
        assert_eq!(t.tenant_id.as_deref(), Some("t1"));
        assert_eq!(t.authority_host.as_deref(), Some("https://login.example/"));
        // Missing method reads as GET; number timeout is seconds.
        let r = parse(r#"{"uri":"https://a.example/","timeout":2.5}"#).expect("min");
        assert_eq!(r.method, reqwest::Method::GET);
        assert_eq!(r.timeout, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn errors_name_the_field() {
        let field = |s: &str| parse(s).expect_err(s).field;
        assert_eq!(parse_input(None).expect_err("none").field, "input");
        assert_eq!(field("not json"), "input");
        assert_eq!(field("[1,2]"), "input");
        assert_eq!(field("42"), "input");
        assert_eq!(field(r#"{"method":"GET"}"#), "uri");
        assert_eq!(field(r#"{"uri":"relative/path"}"#), "uri");
        assert_eq!(field(r#"{"uri":"ftp://a.example/x"}"#), "uri");
        assert_eq!(field(r#"{"uri":42}"#), "uri");
        assert_eq!(field(r#"{"uri":"https://a","method":"BAD METHOD"}"#), "method");
        assert_eq!(field(r#"{"uri":"https://a","method":7}"#), "method");
        assert_eq!(field(r#"{"uri":"https://a","headers":[]}"#), "headers");
        assert_eq!(field(r#"{"uri":"https://a","headers":{"X-A":1}}"#), "headers.X-A");
        assert_eq!(field(r#"{"uri":"https://a","headers":{"bad name":"v"}}"#), "headers.bad name");
        assert_eq!(field(r#"{"uri":"https://a","headers":{"X-A":"line\nbreak"}}"#), "headers.X-A");
        assert_eq!(field(r#"{"uri":"https://a","content":{}}"#), "content");
        assert_eq!(field(r#"{"uri":"https://a","timeout":"soon"}"#), "timeout");
        assert_eq!(field(r#"{"uri":"https://a","timeout":"00:00:00"}"#), "timeout");
        assert_eq!(field(r#"{"uri":"https://a","asynchronousPatternEnabled":"yes"}"#), "asynchronousPatternEnabled");
        assert_eq!(field(r#"{"uri":"https://a","tokenSource":{"kind":"Other","resource":"r"}}"#), "tokenSource.kind");
        assert_eq!(
            field(r#"{"uri":"https://a","tokenSource":{"kind":"AzureManagedIdentity"}}"#),
            "tokenSource.resource"
        );
        assert_eq!(
            field(r#"{"uri":"https://a","tokenSource":{"resource":"r","options":{"authorityhost":"nope"}}}"#),
            "tokenSource.options.authorityhost"
        );
        assert_eq!(
            field(r#"{"uri":"https://a","headers":{"Content-Type":"multipart/form-data"},"content":"x"}"#),
            "headers.Content-Type"
        );
        let e = parse(r#"{"method":"GET"}"#).expect_err("uri");
        assert!(e.to_string().contains("'uri'"), "{e}");
    }

    #[test]
    fn history_input_masks_secret_headers_and_keeps_the_rest() {
        let input = r#"{"method":"GET","uri":"https://example.com/x","Headers":{"Authorization":"Basic dXNlcjpwdw==","Cookie":["a=1","b=2"],"Accept":"application/json"}}"#;
        let masked: Value = serde_json::from_str(&mask_input_secrets(input).unwrap()).unwrap();
        assert_eq!(masked["Headers"]["Authorization"], REDACTED);
        assert_eq!(masked["Headers"]["Cookie"], serde_json::json!([REDACTED, REDACTED]));
        assert_eq!(masked["Headers"]["Accept"], "application/json");
        assert_eq!(masked["uri"], "https://example.com/x");
        // The masked request still parses as the same request.
        let spec = parse_input(Some(&masked.to_string())).unwrap();
        assert_eq!(spec.uri.as_str(), "https://example.com/x");
        // In-proc .NET wraps the request in a one-element array.
        let wrapped = format!("[{input}]");
        assert!(mask_input_secrets(&wrapped).unwrap().contains(REDACTED));
        assert!(!mask_input_secrets(&wrapped).unwrap().contains("dXNlcjpwdw=="));
    }

    #[test]
    fn history_input_without_secrets_or_not_a_request_is_kept() {
        assert_eq!(mask_input_secrets(r#"{"method":"GET","uri":"https://e.com","headers":{"Accept":"x"}}"#), None);
        assert_eq!(mask_input_secrets(r#"{"method":"GET","uri":"https://e.com"}"#), None);
        assert_eq!(mask_input_secrets("not json"), None);
        let q = mask_input_secrets(
            r#"{"uri":"https://e.com/api/x?code=K3Y&sig=S1G&Access_Token=T0K&keep=1","headers":{"x-api-key":"AK","Ocp-Apim-Subscription-Key":"SK"}}"#,
        )
        .expect("masked");
        for secret in ["K3Y", "S1G", "T0K", "AK\"", "SK\""] {
            assert!(!q.contains(secret), "{secret} in {q}");
        }
        assert!(q.contains("keep=1") && q.contains("code=%5Bredacted%5D"), "{q}");
        assert_eq!(mask_url_secrets("https://e.com/x?a=1"), None);
        assert_eq!(mask_input_secrets("42"), None);
    }

    #[test]
    fn redacts_secret_headers() {
        let mut h = Headers::new();
        h.insert("authorization".into(), vec!["Bearer abc".into()]);
        h.insert("x-functions-key".into(), vec!["k".into()]);
        h.insert("set-cookie".into(), vec!["a=1".into(), "b=2".into()]);
        h.insert("cookie".into(), vec!["c=3".into()]);
        h.insert("proxy-authorization".into(), vec!["Basic x".into()]);
        h.insert("accept".into(), vec!["*/*".into()]);
        let r = redact(&h);
        assert_eq!(r["authorization"], vec![REDACTED]);
        assert_eq!(r["set-cookie"], vec![REDACTED, REDACTED]);
        assert_eq!(r["x-functions-key"], vec![REDACTED]);
        assert_eq!(r["cookie"], vec![REDACTED]);
        assert_eq!(r["proxy-authorization"], vec![REDACTED]);
        assert_eq!(r["accept"], vec!["*/*"]);
    }

    #[test]
    fn response_json_shape() {
        let mut headers = Headers::new();
        headers.insert("content-type".into(), vec!["application/json".into()]);
        headers.insert("vary".into(), vec!["a".into(), "b".into()]);
        headers.insert("set-cookie".into(), vec!["session=secret".into()]);
        let r = HttpResponseOut { status_code: 200, headers, content: Some("{\"ok\":true}".into()) };
        let v: Value = serde_json::from_str(&r.to_json()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "statusCode": 200,
                "headers": {"content-type": "application/json", "vary": ["a", "b"], "set-cookie": REDACTED},
                "content": "{\"ok\":true}"
            })
        );
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let empty = HttpResponseOut { status_code: 204, headers: Headers::new(), content: None };
        assert_eq!(empty.to_json(), r#"{"statusCode":204,"headers":{},"content":null}"#);
    }
}
