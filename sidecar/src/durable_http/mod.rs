//! Durable HTTP executed by the sidecar: the built-in activity `BuiltIn::HttpActivity`.
//!
//! Input: a Durable Functions `DurableHttpRequest` (see [`request`]); result: a
//! `DurableHttpResponse` `{statusCode, headers, content}`. The sidecar sends the request
//! with reqwest, follows the asynchronous 202 pattern itself (GET the `Location` until a
//! non-202 answer, see [`polling`]) and returns the final response, so an SDK that polls
//! with durable timers on 202 simply never sees one.
//!
//! Durability: before every wait between polls the activity saves a checkpoint (which URL,
//! when, how many polls, the deadline) through the engine's [`Checkpoint`]; after a restart
//! the engine runs the activity again with that checkpoint and polling resumes at the
//! `Location`, without repeating the original request. A crash between sending the
//! original request and saving the first checkpoint repeats it (at-least-once, like every
//! activity).
//!
//! Safety: the address guard ([`ssrf`]) refuses loopback, private, link-local and metadata
//! destinations on every hop unless the operator allows them (`--http-allow`); redirects
//! are followed here, hop by hop, so every hop is checked and decided; responses are capped
//! ([`DurableHttpOptions::max_response_bytes`]); every attempt has a timeout; bearer tokens
//! ([`tokens`]) exist only in memory and are attached at send time.
//!
//! Secrets follow the request, not the server: the bearer token and the secret headers
//! ([`request::SECRET_HEADERS`]: `Authorization`, `Cookie`, `x-functions-key`, `api-key`,
//! …) go to the origin (scheme, host, port) of the original request only. A 202 poll or a
//! redirect to another origin — one the remote server picked — is sent without them. A
//! token is never sent over plain `http` except to loopback. Secret headers are masked in
//! the result and in history, and checkpoints hold no header at all. What this module must
//! not do: write a token anywhere, or log a URL's query (it may hold a key).
//!
//! Failures reach the orchestration as `TaskFailureDetails` with a stable `errorType`:
//!
//! | errorType | when |
//! |---|---|
//! | `DuroHttpInvalidRequest` | the input is not a valid request (the message names the field) |
//! | `DuroHttpBlockedAddress` | the URL, a redirect or a poll leads to a refused address (loopback, private, link-local, metadata; see `--http-allow`) |
//! | `DuroHttpTimeout` | an attempt did not finish within its timeout, or polling passed its deadline |
//! | `DuroHttpResponseTooLarge` | the body exceeds `--durable-http-max-response-bytes` |
//! | `DuroHttpRequestFailed` | connection, TLS, DNS or protocol error; too many redirects |
//! | `DuroHttpTooManyPolls` | still 202 after `--durable-http-max-polls` polls |
//! | `DuroHttpBadLocation` | a 202's `Location` is not a usable http(s) URL |
//! | `DuroHttpTokenError` | no token for the `tokenSource` |
//! | `DuroHttpCheckpointFailed` | polling progress could not be saved or read back |

pub mod config;
pub mod polling;
pub mod request;
pub mod ssrf;
pub mod tokens;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use duro_proto::TaskFailureDetails;
use futures::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use thiserror::Error;
use url::Url;

use crate::ambient::now_ms;
use crate::core::events;
use crate::engine::builtin::{BuiltinActivity, BuiltinCall, Checkpoint};
use polling::{Next, PollLimitHit, PollLimits, PollState};
use request::{Headers, HttpRequestSpec, HttpResponseOut, InvalidRequest};
use ssrf::{display_url, Allow, Blocked};
use tokens::{Credential, TokenError, TokenOptions, Tokens};

pub use config::DurableHttpArgs;

/// Name of the built-in activity.
pub const HTTP_ACTIVITY: &str = "BuiltIn::HttpActivity";

/// Durable HTTP settings.
#[derive(Debug, Clone)]
pub struct DurableHttpOptions {
    pub max_response_bytes: usize,
    /// Timeout of one attempt when the request has no `timeout`.
    pub default_timeout: Duration,
    /// Wait between polls when a 202 has no `Retry-After`.
    pub default_poll_interval: Duration,
    pub poll_limits: PollLimits,
    pub max_redirects: usize,
    /// Identity for `tokenSource`s (`None`: such requests fail).
    pub identity: Option<Credential>,
    pub tokens: TokenOptions,
    /// Destinations allowed despite the address guard (`--http-allow`).
    pub allow: Arc<Allow>,
}

impl Default for DurableHttpOptions {
    fn default() -> Self {
        DurableHttpOptions {
            max_response_bytes: 1024 * 1024,
            default_timeout: Duration::from_secs(240),
            default_poll_interval: Duration::from_secs(30),
            poll_limits: PollLimits { max_polls: 10_000, max_duration: Duration::from_secs(24 * 3600) },
            max_redirects: 10,
            identity: None,
            tokens: TokenOptions::default(),
            allow: Arc::default(),
        }
    }
}

/// The durable HTTP component cannot start.
#[derive(Debug, Error)]
pub enum DurableHttpError {
    #[error("cannot build the durable HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Why a durable HTTP call failed, as the orchestration sees it.
#[derive(Debug, Error)]
enum Failure {
    #[error(transparent)]
    InvalidRequest(#[from] InvalidRequest),
    #[error(transparent)]
    Blocked(#[from] Blocked),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Polling(#[from] PollLimitHit),
    #[error("{0}")]
    Location(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{0}")]
    Checkpoint(String),
    #[error("the activity is no longer wanted (its orchestration finished or moved on)")]
    Cancelled,
}

impl Failure {
    fn error_type(&self) -> &'static str {
        match self {
            Failure::InvalidRequest(_) => "DuroHttpInvalidRequest",
            Failure::Blocked(_) => "DuroHttpBlockedAddress",
            Failure::Timeout(_) | Failure::Polling(PollLimitHit::Deadline { .. }) => "DuroHttpTimeout",
            Failure::TooLarge(_) => "DuroHttpResponseTooLarge",
            Failure::Request(_) => "DuroHttpRequestFailed",
            Failure::Polling(PollLimitHit::TooManyPolls { .. }) => "DuroHttpTooManyPolls",
            Failure::Location(_) => "DuroHttpBadLocation",
            Failure::Token(_) => "DuroHttpTokenError",
            Failure::Checkpoint(_) => "DuroHttpCheckpointFailed",
            Failure::Cancelled => "DuroHttpCancelled",
        }
    }

    /// Failures that the same input would hit again.
    fn non_retriable(&self) -> bool {
        matches!(self, Failure::InvalidRequest(_) | Failure::Blocked(_) | Failure::TooLarge(_) | Failure::Location(_))
    }

    fn details(&self) -> TaskFailureDetails {
        events::failure(self.error_type(), self.to_string(), self.non_retriable())
    }
}

/// The `BuiltIn::HttpActivity` implementation.
#[derive(Clone)]
pub struct HttpActivity {
    inner: Arc<Inner>,
}

struct Inner {
    opts: DurableHttpOptions,
    client: reqwest::Client,
    tokens: Tokens,
}

/// What one attempt sends.
enum Target<'a> {
    Initial,
    Poll(&'a Url),
}

impl HttpActivity {
    pub fn new(opts: DurableHttpOptions) -> Result<HttpActivity, DurableHttpError> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(ssrf::GuardedResolver { allow: opts.allow.clone() }))
            // Redirects are followed by `send`, hop by hop (guard, secrets per origin).
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve names itself, past the address guard.
            .no_proxy()
            .use_rustls_tls()
            .build()?;
        let tokens = Tokens::new(opts.identity.clone(), opts.tokens.clone(), opts.allow.clone())?;
        match &opts.identity {
            // The fallback when nothing is configured: outside Azure there is no identity
            // (and the address is one that user requests may not reach), so say that.
            Some(tokens::Credential::Imds { endpoint, client_id: None })
                if endpoint.as_str() == tokens::IMDS_ENDPOINT =>
            {
                tracing::info!("durable HTTP: no identity configured (token sources would ask Azure IMDS, which exists only on Azure)");
            }
            Some(c) => tracing::info!(identity = %c.describe(), "durable HTTP token source"),
            None => {}
        }
        Ok(HttpActivity { inner: Arc::new(Inner { opts, client, tokens }) })
    }
}

impl BuiltinActivity for HttpActivity {
    fn name(&self) -> &str {
        HTTP_ACTIVITY
    }

    fn history_input(&self, input: &str) -> Option<String> {
        request::mask_input_secrets(input)
    }

    fn run(&self, call: BuiltinCall) -> BoxFuture<'static, Result<Option<String>, TaskFailureDetails>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.run(call).await })
    }
}

/// W3C trace context on the outbound call (the initial request and every poll): the
/// activity's context (Duro's activity span when tracing is on, else the worker's), unless the
/// orchestration set `traceparent` itself. Malformed values are not forwarded.
fn propagate_trace_context(headers: &mut request::Headers, trace: Option<&duro_proto::TraceContext>) {
    let Some(tc) = trace else { return };
    if headers.keys().any(|k| k.eq_ignore_ascii_case("traceparent")) || !is_traceparent(&tc.trace_parent) {
        return;
    }
    headers.insert("traceparent".into(), vec![tc.trace_parent.clone()]);
    if let Some(state) = tc.trace_state.as_ref().filter(|s| !s.is_empty() && s.is_ascii() && s.len() <= 512) {
        if !headers.keys().any(|k| k.eq_ignore_ascii_case("tracestate")) {
            headers.insert("tracestate".into(), vec![state.clone()]);
        }
    }
}

/// `version-traceid-spanid-flags` in lowercase hex (W3C Trace Context level 1 lengths).
fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() == 4 && hex(parts[0], 2) && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2)
}

impl Inner {
    async fn run(&self, call: BuiltinCall) -> Result<Option<String>, TaskFailureDetails> {
        let instance = call.request.orchestration_instance.as_ref().map(|o| o.instance_id.clone()).unwrap_or_default();
        let task_id = call.request.task_id;
        let trace = call.request.parent_trace_context.as_ref();
        match self.execute(call.request.input.as_deref(), call.progress.as_deref(), &call.checkpoint, trace).await {
            Ok(resp) => {
                tracing::debug!(%instance, task_id, status = resp.status_code, "durable HTTP call finished");
                crate::metrics::durable_http_request(true);
                Ok(Some(resp.to_json()))
            }
            Err(f) => {
                tracing::warn!(%instance, task_id, error_type = f.error_type(), error = %f, "durable HTTP call failed");
                crate::metrics::durable_http_request(false);
                Err(f.details())
            }
        }
    }

    async fn execute(
        &self,
        input: Option<&str>,
        progress: Option<&str>,
        checkpoint: &Checkpoint,
        trace: Option<&duro_proto::TraceContext>,
    ) -> Result<HttpResponseOut, Failure> {
        let mut spec = request::parse_input(input)?;
        propagate_trace_context(&mut spec.headers, trace);
        if let Some(ts) = &spec.token_source {
            self.tokens.check_source(ts)?;
            if spec.uri.scheme() != "https" && !ssrf::is_loopback_host(&spec.uri) {
                return Err(Failure::InvalidRequest(InvalidRequest {
                    field: "uri".into(),
                    problem: "a request with a tokenSource must use https (the token would travel in clear text); \
                              only loopback may use http"
                        .into(),
                }));
            }
        }
        let (mut response, mut answered_by, mut state) = match progress {
            None => {
                let (r, u) = self.send(&spec, Target::Initial).await?;
                (r, u, None)
            }
            Some(p) => {
                let st = PollState::decode(p).map_err(Failure::Checkpoint)?;
                let location = st.location_url().map_err(Failure::Checkpoint)?;
                tracing::info!(
                    location = %display_url(&location),
                    polls = st.polls,
                    "resuming durable HTTP polling from its checkpoint"
                );
                sleep_until_ms(st.next_poll_at_ms).await;
                crate::metrics::durable_http_poll();
                let (r, u) = self.send(&spec, Target::Poll(&location)).await?;
                (r, u, Some(st))
            }
        };
        loop {
            let polling = state.as_ref().and_then(|s| s.location_url().ok());
            let next = polling::next_step(
                spec.asynchronous_pattern_enabled,
                &response,
                &answered_by,
                polling.as_ref(),
                SystemTime::now(),
                self.opts.default_poll_interval,
            )
            .map_err(Failure::Location)?;
            let Next::Poll { location, delay } = next else {
                return Ok(response);
            };
            let st = PollState::advance(state.as_ref(), &location, delay, now_ms(), self.opts.poll_limits)?;
            // Saved before waiting: a restart from here polls `location`, never re-sends.
            match checkpoint.save(st.encode()).await {
                Ok(true) => {}
                Ok(false) => return Err(Failure::Cancelled),
                Err(e) => return Err(Failure::Checkpoint(format!("cannot save polling progress: {e}"))),
            }
            tracing::debug!(location = %display_url(&location), ?delay, polls = st.polls, "durable HTTP: 202, polling");
            sleep_until_ms(st.next_poll_at_ms).await;
            crate::metrics::durable_http_poll();
            let (r, u) = self.send(&spec, Target::Poll(&location)).await?;
            response = r;
            answered_by = u;
            state = Some(st);
        }
    }

    /// One attempt: the request or a poll, within its timeout, following redirects hop by
    /// hop. The token and secret headers go only to hops on the original request's origin.
    /// Returns the response and the URL that gave it (after redirects).
    async fn send(&self, spec: &HttpRequestSpec, target: Target<'_>) -> Result<(HttpResponseOut, Url), Failure> {
        let (method, url, headers, body) = match target {
            Target::Initial => (spec.method.clone(), spec.uri.clone(), spec.headers.clone(), spec.content.clone()),
            Target::Poll(u) => (reqwest::Method::GET, u.clone(), polling::poll_headers(&spec.headers), None),
        };
        ssrf::check_url(&url, &self.opts.allow)?;
        let timeout = spec.timeout.unwrap_or(self.opts.default_timeout);
        let first_shown = format!("{method} {}", display_url(&url));
        let attempt = self.follow(spec, method, url, &headers, body);
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout(format!(
                "{first_shown} did not complete within {timeout:?} (the request's timeout, else --durable-http-timeout-seconds)"
            ))),
        }
    }

    /// Sends `method url`, following up to `max_redirects` redirects.
    async fn follow(
        &self,
        spec: &HttpRequestSpec,
        mut method: reqwest::Method,
        mut url: Url,
        headers: &Headers,
        mut body: Option<String>,
    ) -> Result<(HttpResponseOut, Url), Failure> {
        let origin = spec.uri.origin();
        let mut hops = 0usize;
        loop {
            ssrf::check_url(&url, &self.opts.allow)?;
            // Secrets only to the original origin; the token never in clear text off loopback.
            let secrets = url.origin() == origin;
            let bearer = match &spec.token_source {
                Some(ts) if secrets && (url.scheme() == "https" || ssrf::is_loopback_host(&url)) => {
                    Some(self.tokens.bearer(ts).await?)
                }
                _ => None,
            };
            let mut map = header_map(headers, bearer.is_some(), secrets)?;
            if body.is_some() && !map.contains_key(CONTENT_TYPE) {
                map.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            }
            if !map.contains_key(USER_AGENT) {
                map.insert(USER_AGENT, HeaderValue::from_static(concat!("duro/", env!("CARGO_PKG_VERSION"))));
            }
            if let Some(token) = bearer {
                // Set last so it wins over a user header; marked sensitive so nothing prints it.
                let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| Failure::Token(token_format_error(spec)))?;
                v.set_sensitive(true);
                map.insert(AUTHORIZATION, v);
            }
            let shown = format!("{method} {}", display_url(&url));
            let mut builder = self.client.request(method.clone(), url.clone()).headers(map);
            if let Some(b) = &body {
                builder = builder.body(b.clone());
            }
            let mut resp = builder.send().await.map_err(|e| classify(e, &shown))?;
            let status = resp.status().as_u16();
            if let (301 | 302 | 303 | 307 | 308, Some(location)) =
                (status, resp.headers().get(reqwest::header::LOCATION))
            {
                if hops >= self.opts.max_redirects {
                    return Err(Failure::Request(format!(
                        "{shown}: more than {} redirects (--durable-http-max-redirects)",
                        self.opts.max_redirects
                    )));
                }
                let location = String::from_utf8_lossy(location.as_bytes()).into_owned();
                let next = polling::resolve_location(&url, &location)
                    .map_err(|p| Failure::Request(format!("{shown}: redirect refused: {p}")))?;
                if url.scheme() == "https" && next.scheme() == "http" {
                    return Err(Failure::Request(format!("{shown}: redirect from https to http refused")));
                }
                // As browsers and reqwest do: 303 (and 301/302 after a POST) become a GET
                // without a body; 307/308 repeat the request.
                if (status == 303 && method != reqwest::Method::HEAD)
                    || (matches!(status, 301 | 302) && method == reqwest::Method::POST)
                {
                    method = reqwest::Method::GET;
                    body = None;
                }
                tracing::debug!(from = %shown, to = %display_url(&next), status, "durable HTTP: following a redirect");
                url = next;
                hops += 1;
                continue;
            }
            let answered_by = url.clone();
            let out_headers = response_headers(resp.headers());
            let limit = self.opts.max_response_bytes;
            let too_large = || {
                Failure::TooLarge(format!(
                    "{shown}: the response body is larger than the limit of {limit} bytes (--durable-http-max-response-bytes)"
                ))
            };
            if resp.content_length().is_some_and(|n| n > limit as u64) {
                return Err(too_large());
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| classify(e, &shown))? {
                if bytes.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&chunk);
            }
            let content = (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned());
            tracing::debug!(request = %shown, status, bytes = bytes.len(), "durable HTTP response");
            return Ok((HttpResponseOut { status_code: status, headers: out_headers, content }, answered_by));
        }
    }
}

fn token_format_error(spec: &HttpRequestSpec) -> TokenError {
    TokenError::Failed {
        source_desc: "the identity endpoint".into(),
        resource: spec.token_source.as_ref().map(|t| t.resource.clone()).unwrap_or_default(),
        detail: "the token contains characters not allowed in a header".into(),
    }
}

/// The request headers; a user `Authorization` is dropped when a token replaces it,
/// secret headers are dropped unless `secrets` (a hop on the original origin), and framing
/// headers are left to the client.
fn header_map(headers: &Headers, has_token: bool, secrets: bool) -> Result<HeaderMap, Failure> {
    let mut map = HeaderMap::new();
    for (name, values) in headers {
        let secret = request::SECRET_HEADERS.contains(&name.as_str());
        if matches!(name.as_str(), "content-length" | "transfer-encoding" | "host" | "connection")
            || (has_token && name == "authorization")
            || (secret && !secrets)
        {
            continue;
        }
        let bad = |problem: &str| InvalidRequest { field: format!("headers.{name}"), problem: problem.into() };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("not a valid header name"))?;
        for v in values {
            let mut value = HeaderValue::from_str(v).map_err(|_| bad("value not allowed in a header"))?;
            if secret {
                value.set_sensitive(true);
            }
            map.append(n.clone(), value);
        }
    }
    Ok(map)
}

fn response_headers(map: &HeaderMap) -> Headers {
    let mut out = Headers::new();
    for (name, value) in map {
        let v = value
            .to_str()
            .map(str::to_string)
            .unwrap_or_else(|_| String::from_utf8_lossy(value.as_bytes()).into_owned());
        out.entry(name.as_str().to_string()).or_default().push(v);
    }
    out
}

fn classify(e: reqwest::Error, shown: &str) -> Failure {
    if let Some(b) = ssrf::find_blocked(&e) {
        return Failure::Blocked(b);
    }
    // Without the URL: its query may hold a key.
    let e = e.without_url();
    let what = if e.is_redirect() {
        "redirect refused"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    Failure::Request(format!("{shown}: {what}: {}", tokens::error_chain(&e)))
}

async fn sleep_until_ms(at_ms: i64) {
    let wait = at_ms.saturating_sub(now_ms());
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use axum::http::{HeaderMap as AxHeaders, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{any, get};
    use axum::Router;

    type Seen = Arc<Mutex<Vec<(String, AxHeaders, String)>>>;

    async fn serve(seen: Seen) -> String {
        let record = |seen: Seen| {
            move |uri: axum::http::Uri, h: AxHeaders, body: String| {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("lock").push((uri.to_string(), h, body));
                    (StatusCode::OK, [("set-cookie", "s=1"), ("x-multi", "a")], "hello")
                }
            }
        };
        let app = Router::new()
            .route("/echo", any(record(seen)))
            .route("/big", get(|| async { vec![b'x'; 2048] }))
            .route(
                "/big-chunked",
                get(|| async {
                    let chunks = futures::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 64])));
                    axum::body::Body::from_stream(chunks)
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/to-metadata",
                get(|| async { (StatusCode::FOUND, [("location", "http://169.254.169.254/latest")]) }),
            )
            .route("/to-gce", get(|| async { (StatusCode::FOUND, [("location", "http://metadata.google.internal/")]) }))
            .route(
                "/token",
                get(|| async { axum::Json(serde_json::json!({"access_token":"tkn-1","expires_in":3600})) }),
            )
            .route("/loop", get(|| async { (StatusCode::FOUND, [("location", "/loop")]).into_response() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    fn inner(base: &str, max_response_bytes: usize) -> Inner {
        let opts = DurableHttpOptions {
            max_response_bytes,
            identity: Some(Credential::Imds {
                endpoint: Url::parse(&format!("{base}/token")).expect("url"),
                client_id: None,
            }),
            // The fake servers live on loopback, which the guard refuses by default.
            allow: Arc::new(Allow::parse(&["127.0.0.1"]).expect("allow")),
            ..Default::default()
        };
        let a = HttpActivity::new(opts).expect("activity");
        Arc::try_unwrap(a.inner).ok().expect("sole owner")
    }

    fn spec(json: &str) -> HttpRequestSpec {
        request::parse_input(Some(json)).expect("spec")
    }

    #[test]
    fn the_activity_trace_context_travels_on_the_outbound_call() {
        let tc = |parent: &str, state: Option<&str>| duro_proto::TraceContext {
            trace_parent: parent.into(),
            span_id: String::new(),
            trace_state: state.map(str::to_string),
        };
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = request::Headers::new();
        propagate_trace_context(&mut h, Some(&tc(good, Some("congo=t61rcWkgMzE"))));
        assert_eq!(h.get("traceparent"), Some(&vec![good.to_string()]));
        assert_eq!(h.get("tracestate"), Some(&vec!["congo=t61rcWkgMzE".to_string()]));
        // The orchestration's own header wins; polls copy whatever the request carries.
        let mut own = request::Headers::new();
        own.insert("TraceParent".into(), vec!["00-mine".into()]);
        propagate_trace_context(&mut own, Some(&tc(good, None)));
        assert_eq!(own.len(), 1);
        assert_eq!(polling::poll_headers(&h).get("traceparent"), Some(&vec![good.to_string()]));
        // Nothing malformed, nothing when there is no context.
        for bad in
            ["", "garbage", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "00-xyz-00f067aa0ba902b7-01"]
        {
            let mut h = request::Headers::new();
            propagate_trace_context(&mut h, Some(&tc(bad, None)));
            assert!(h.is_empty(), "{bad:?} forwarded");
        }
        let mut h = request::Headers::new();
        propagate_trace_context(&mut h, None);
        assert!(h.is_empty());
    }

    #[tokio::test]
    async fn sends_headers_body_and_token() {
        let seen: Seen = Default::default();
        let base = serve(seen.clone()).await;
        let i = inner(&base, 1024);
        let s = spec(&format!(
            r#"{{"method":"POST","uri":"{base}/echo?q=1","content":"body!","headers":{{"Authorization":"Basic user","X-Multi":["1","2"]}},
                "tokenSource":{{"kind":"AzureManagedIdentity","resource":"https://r/.default"}}}}"#
        ));
        let (resp, by) = i.send(&s, Target::Initial).await.expect("send");
        assert_eq!(resp.status_code, 200);
        assert_eq!(resp.content.as_deref(), Some("hello"));
        assert_eq!(by.path(), "/echo");
        assert!(resp.to_json().contains(r#""set-cookie":"[redacted]""#), "{}", resp.to_json());
        let seen = seen.lock().expect("lock").clone();
        let (uri, h, body) = &seen[0];
        assert_eq!(uri, "/echo?q=1");
        assert_eq!(body, "body!");
        let auth: Vec<_> = h.get_all("authorization").iter().collect();
        assert_eq!(auth.len(), 1, "the token replaces the user's Authorization");
        assert_eq!(auth[0], "Bearer tkn-1");
        assert_eq!(h.get_all("x-multi").iter().count(), 2);
        assert_eq!(h.get("content-type").and_then(|v| v.to_str().ok()), Some("text/plain; charset=utf-8"));
        assert!(h.get("user-agent").and_then(|v| v.to_str().ok()).is_some_and(|u| u.starts_with("duro/")));
        // A poll is a GET of the Location, no body, same token.
        let loc = Url::parse(&format!("{base}/echo")).expect("url");
        i.send(&s, Target::Poll(&loc)).await.expect("poll");
        assert_eq!(i.tokens.fetch_count(), 1, "token cached across attempts");
    }

    #[tokio::test]
    async fn failures_are_classified() {
        let seen: Seen = Default::default();
        let base = serve(seen).await;
        let i = inner(&base, 1024);
        let fail = |f: Failure| (f.error_type(), f.to_string());
        let get = |path: &str| spec(&format!(r#"{{"uri":"{base}{path}","timeout":"00:00:01"}}"#));

        let (t, m) = fail(i.send(&get("/big"), Target::Initial).await.expect_err("big"));
        assert_eq!(t, "DuroHttpResponseTooLarge");
        assert!(m.contains("1024 bytes"), "{m}");
        let (t, _) = fail(i.send(&get("/big-chunked"), Target::Initial).await.expect_err("chunked"));
        assert_eq!(t, "DuroHttpResponseTooLarge");

        let started = std::time::Instant::now();
        let (t, m) = fail(i.send(&get("/slow"), Target::Initial).await.expect_err("slow"));
        assert_eq!(t, "DuroHttpTimeout");
        assert!(m.contains("did not complete within 1s"), "{m}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let (t, m) = fail(
            i.send(&spec(r#"{"uri":"http://169.254.169.254/metadata"}"#), Target::Initial).await.expect_err("imds"),
        );
        assert_eq!(t, "DuroHttpBlockedAddress");
        assert!(m.contains("169.254.169.254"), "{m}");
        let (t, _) = fail(i.send(&get("/to-metadata"), Target::Initial).await.expect_err("redirect"));
        assert_eq!(t, "DuroHttpBlockedAddress");
        let (t, _) = fail(i.send(&get("/to-gce"), Target::Initial).await.expect_err("redirect by name"));
        assert_eq!(t, "DuroHttpBlockedAddress");
        let (t, m) = fail(i.send(&get("/loop"), Target::Initial).await.expect_err("loop"));
        assert_eq!(t, "DuroHttpRequestFailed");
        assert!(m.contains("redirect"), "{m}");

        let (t, m) = fail(
            i.send(&spec(r#"{"uri":"http://127.0.0.1:9/x?code=SECRET"}"#), Target::Initial).await.expect_err("refused"),
        );
        assert_eq!(t, "DuroHttpRequestFailed");
        assert!(!m.contains("SECRET"), "no query in messages: {m}");

        // Host names go through the guarded resolver (localhost resolves to loopback,
        // allowed here by the operator's list).
        let port = base.rsplit(':').next().expect("port");
        let (resp, _) = i
            .send(&spec(&format!(r#"{{"uri":"http://localhost:{port}/echo"}}"#)), Target::Initial)
            .await
            .expect("localhost");
        assert_eq!(resp.status_code, 200);
    }

    #[test]
    fn failure_details_are_stable() {
        let f = Failure::InvalidRequest(InvalidRequest { field: "uri".into(), problem: "missing".into() });
        let d = f.details();
        assert_eq!(d.error_type, "DuroHttpInvalidRequest");
        assert!(d.error_message.contains("'uri'"));
        assert!(d.is_non_retriable);
        let d = Failure::Timeout("t".into()).details();
        assert_eq!(d.error_type, "DuroHttpTimeout");
        assert!(!d.is_non_retriable);
        assert_eq!(Failure::Polling(PollLimitHit::TooManyPolls { polls: 3 }).error_type(), "DuroHttpTooManyPolls");
        assert_eq!(
            Failure::Polling(PollLimitHit::Deadline { delay_ms: 1, max_secs: 1 }).error_type(),
            "DuroHttpTimeout"
        );
    }
}
