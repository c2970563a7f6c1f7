//! The HTTP management API: Azure Durable Functions' built-in webhook routes
//! (`/runtime/webhooks/durabletask/...`) served by axum next to the gRPC server, plus
//! signed per-instance status links.
//!
//! Owns: routing, authentication, request parsing and the Durable Functions JSON shapes.
//! Must not: touch the store or decide anything about orchestrations — every operation is
//! a call on the [`Engine`]. Handlers are infallible: every failure is a JSON body with a
//! stable `DURO-20xx` code ([`json::ErrorCode`]), and a panic becomes a 500, never a
//! dropped connection.

pub mod auth;
pub mod json;
pub mod openapi;
pub mod ops;
pub mod routes;
pub mod signed_links;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use futures::FutureExt as _;
use thiserror::Error;

use crate::engine::Engine;
use auth::SystemKey;
use json::{ApiError, ErrorCode};
use signed_links::{KeySource, LinkKeys, MIN_KEY_BYTES};

/// Where the routes live, as in Azure Functions 2.x and later.
pub const BASE_PATH: &str = "/runtime/webhooks/durabletask";
/// Default address of the HTTP API (the Azure Functions Core Tools port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7071";
/// How long shutdown waits for in-flight HTTP requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Command-line flags of the HTTP API (flattened into the `duro` command line). `Debug`
/// prints no key.
#[derive(Clone, clap::Args)]
pub struct HttpArgs {
    /// Address of the HTTP management API (Durable Functions webhook routes), or `off`.
    /// Default 127.0.0.1:7071; if that default port is taken, Duro starts without the HTTP API
    /// and logs a warning (an explicitly set address that cannot be bound is an error).
    #[arg(long = "http-listen", env = "DURO_HTTP_LISTEN", value_name = "ADDR|off")]
    pub http_listen: Option<String>,
    /// System key of the HTTP API, accepted as `x-functions-key` header or `code` query
    /// parameter. Required on a non-loopback address (unless --http-insecure).
    #[arg(long = "http-system-key", env = "DURO_SYSTEM_KEY", hide_env_values = true)]
    pub http_system_key: Option<String>,
    /// Serve the HTTP API without a key on a non-loopback address (anyone who can reach it
    /// can start, terminate and purge instances).
    #[arg(long = "http-insecure", env = "DURO_HTTP_INSECURE")]
    pub http_insecure: bool,
    /// Comma-separated keys (16+ bytes each) for signed status links: the first signs, all
    /// verify. Unset: derived from the system key, or random per process (links then do not
    /// survive a restart).
    #[arg(long = "http-link-keys", env = "DURO_LINK_KEYS", hide_env_values = true)]
    pub http_link_keys: Option<String>,
    /// Default lifetime of signed status links, in seconds.
    #[arg(long = "http-link-ttl-seconds", env = "DURO_HTTP_LINK_TTL_SECONDS", default_value_t = 86_400)]
    pub http_link_ttl_seconds: u64,
    /// Build links from `X-Forwarded-Host` / `X-Forwarded-Proto` (only behind a trusted proxy).
    #[arg(long = "http-trust-forwarded", env = "DURO_HTTP_TRUST_FORWARDED")]
    pub http_trust_forwarded: bool,
    /// Public base URL for links (e.g. `https://api.example.com/duro`), overriding the Host header.
    #[arg(long = "http-public-url", env = "DURO_HTTP_PUBLIC_URL")]
    pub http_public_url: Option<String>,
    /// Start and restart responses carry Durable Functions' exact management links (with the
    /// system key as `code=`) instead of signed per-instance links. Without a system key the
    /// exact links are always used (they hold no secret).
    #[arg(long = "http-exact-links", env = "DURO_HTTP_EXACT_LINKS")]
    pub http_exact_links: bool,
    /// Seconds a client may take to send a request's headers (slow clients are dropped);
    /// also the limit for reading a request body, times four.
    #[arg(long = "http-header-timeout-seconds", env = "DURO_HTTP_HEADER_TIMEOUT_SECONDS", default_value_t = 10)]
    pub http_header_timeout_seconds: u64,
    /// Open connections to the HTTP API at most; more are closed as they arrive.
    #[arg(long = "http-max-connections", env = "DURO_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,
    /// Largest accepted request body, in bytes (larger ones get 413).
    #[arg(long = "http-max-body-bytes", env = "DURO_HTTP_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub http_max_body_bytes: usize,
    /// Longest a start or restart with `timeout` waits for completion, in seconds.
    #[arg(long = "http-max-wait-seconds", env = "DURO_HTTP_MAX_WAIT_SECONDS", default_value_t = 300)]
    pub http_max_wait_seconds: u64,
    /// Serve `/metrics` and `/stats` without the system key (they list orchestration and
    /// activity names and counts; use it when a network boundary protects the port).
    #[arg(long = "metrics-open", env = "DURO_METRICS_OPEN")]
    pub metrics_open: bool,
}

impl std::fmt::Debug for HttpArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("HttpArgs")
            .field("http_listen", &self.http_listen)
            .field("http_system_key", &redacted(&self.http_system_key))
            .field("http_insecure", &self.http_insecure)
            .field("http_link_keys", &redacted(&self.http_link_keys))
            .field("http_link_ttl_seconds", &self.http_link_ttl_seconds)
            .field("http_trust_forwarded", &self.http_trust_forwarded)
            .field("http_public_url", &self.http_public_url)
            .field("http_exact_links", &self.http_exact_links)
            .field("http_header_timeout_seconds", &self.http_header_timeout_seconds)
            .field("http_max_connections", &self.http_max_connections)
            .field("http_max_body_bytes", &self.http_max_body_bytes)
            .field("http_max_wait_seconds", &self.http_max_wait_seconds)
            .field("metrics_open", &self.metrics_open)
            .finish()
    }
}

/// Configuration of the HTTP API.
#[derive(Clone)]
pub struct HttpOptions {
    pub listen: SocketAddr,
    /// Whether `listen` was asked for (a bind failure is then fatal) or is the default.
    pub listen_explicit: bool,
    pub system_key: Option<String>,
    pub insecure: bool,
    pub link_keys: Vec<Vec<u8>>,
    pub link_ttl: Duration,
    pub trust_forwarded: bool,
    pub public_url: Option<String>,
    /// Durable Functions' exact management links (key included) in start responses.
    pub exact_links: bool,
    /// Time to send a request's headers; a request body gets four times as long.
    pub header_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    pub max_body_bytes: usize,
    pub max_wait: Duration,
    /// `/metrics` and `/stats` need no key.
    pub metrics_open: bool,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("listen", &self.listen)
            .field("listen_explicit", &self.listen_explicit)
            .field("system_key", &self.system_key.as_ref().map(|_| "<redacted>"))
            .field("insecure", &self.insecure)
            .field("link_keys", &self.link_keys.len())
            .field("link_ttl", &self.link_ttl)
            .field("trust_forwarded", &self.trust_forwarded)
            .field("public_url", &self.public_url)
            .field("exact_links", &self.exact_links)
            .field("header_timeout", &self.header_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_wait", &self.max_wait)
            .field("metrics_open", &self.metrics_open)
            .finish()
    }
}

impl HttpOptions {
    /// Loopback on a free port, open, defaults elsewhere (for embedding and tests).
    pub fn local(listen: SocketAddr) -> HttpOptions {
        HttpOptions {
            listen,
            listen_explicit: true,
            system_key: None,
            insecure: false,
            link_keys: Vec::new(),
            link_ttl: Duration::from_secs(86_400),
            trust_forwarded: false,
            public_url: None,
            exact_links: false,
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_body_bytes: 4 * 1024 * 1024,
            max_wait: Duration::from_secs(300),
            metrics_open: false,
        }
    }

    /// Refuses an open API on an address others can reach.
    pub fn check(&self) -> Result<(), HttpError> {
        if self.system_key.is_none() && !self.listen.ip().is_loopback() && !self.insecure {
            return Err(HttpError::Insecure { addr: self.listen });
        }
        Ok(())
    }
}

impl HttpArgs {
    /// Validated options; `None` when the HTTP API is switched off.
    pub fn into_options(self) -> Result<Option<HttpOptions>, HttpError> {
        let (listen, listen_explicit) = match self.http_listen.as_deref().map(str::trim) {
            None => (DEFAULT_LISTEN.to_string(), false),
            Some(s) if ["off", "none", "disabled", "false", ""].iter().any(|o| s.eq_ignore_ascii_case(o)) => {
                return Ok(None)
            }
            Some(s) => (s.to_string(), true),
        };
        let listen: SocketAddr = listen.parse().map_err(|_| {
            HttpError::Config(format!("--http-listen '{listen}' is not an address like 127.0.0.1:7071"))
        })?;
        let system_key = self.http_system_key.filter(|k| !k.is_empty());
        let mut link_keys = Vec::new();
        for k in self.http_link_keys.as_deref().unwrap_or_default().split(',').map(str::trim).filter(|k| !k.is_empty())
        {
            if k.len() < MIN_KEY_BYTES {
                return Err(HttpError::Config(format!(
                    "each DURO_LINK_KEYS entry must be at least {MIN_KEY_BYTES} bytes long (one is {})",
                    k.len()
                )));
            }
            link_keys.push(k.as_bytes().to_vec());
        }
        let public_url = match self.http_public_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            None => None,
            Some(u) => {
                let ok = (u.starts_with("http://") || u.starts_with("https://"))
                    && u.bytes().all(|b| b.is_ascii_graphic())
                    && !u.contains(['?', '#']);
                if !ok {
                    return Err(HttpError::Config(format!(
                        "--http-public-url '{u}' must be an absolute http(s) URL without query or fragment"
                    )));
                }
                Some(u.trim_end_matches('/').to_string())
            }
        };
        if self.http_link_ttl_seconds == 0 {
            return Err(HttpError::Config("--http-link-ttl-seconds must be positive".into()));
        }
        let opts = HttpOptions {
            listen,
            listen_explicit,
            system_key,
            insecure: self.http_insecure,
            link_keys,
            link_ttl: Duration::from_secs(self.http_link_ttl_seconds),
            trust_forwarded: self.http_trust_forwarded,
            public_url,
            exact_links: self.http_exact_links,
            header_timeout: Duration::from_secs(self.http_header_timeout_seconds.max(1)),
            max_connections: self.http_max_connections.max(1),
            max_body_bytes: self.http_max_body_bytes.max(1),
            max_wait: Duration::from_secs(self.http_max_wait_seconds),
            metrics_open: self.metrics_open,
        };
        opts.check()?;
        Ok(Some(opts))
    }
}

#[derive(Debug, Error)]
pub enum HttpError {
    #[error(
        "refusing to serve the HTTP management API on {addr}, which is not a loopback address, without a system key: \
         set DURO_SYSTEM_KEY (or --http-system-key), or pass --http-insecure to serve it unauthenticated"
    )]
    Insecure { addr: SocketAddr },
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Config(String),
}

/// Shared by every request.
pub(crate) struct ApiState {
    pub engine: Engine,
    pub opts: HttpOptions,
    pub key: Option<SystemKey>,
    pub links: LinkKeys,
    pub local_addr: SocketAddr,
    pub health: Arc<crate::health::Health>,
    pub dashboard: crate::dashboard::Dashboard,
}

/// The running HTTP server.
pub struct HttpServer {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl HttpServer {
    /// Stops accepting connections and waits (bounded) for in-flight requests.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(SHUTDOWN_GRACE, self.task).await.is_err() {
            tracing::warn!("in-flight HTTP requests did not finish within the shutdown grace period");
        }
    }
}

/// Binds and serves the HTTP API. `Ok(None)`: the default address was taken (warned).
pub async fn start(
    engine: Engine,
    opts: HttpOptions,
    health: Arc<crate::health::Health>,
) -> Result<Option<HttpServer>, HttpError> {
    opts.check()?;
    let listener = match tokio::net::TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) if !opts.listen_explicit => {
            tracing::warn!(
                address = %opts.listen, error = %e,
                "the HTTP management API is not served: its default address is taken; set --http-listen (or `off`)"
            );
            return Ok(None);
        }
        Err(source) => return Err(HttpError::Bind { addr: opts.listen, source }),
    };
    let local_addr = listener.local_addr().map_err(|source| HttpError::Bind { addr: opts.listen, source })?;
    let links = LinkKeys::new(opts.link_keys.clone(), opts.system_key.as_deref());
    if links.source == KeySource::RandomPerProcess {
        tracing::warn!(
            "signed status links use a random per-process key: links issued now stop working when Duro restarts \
             (set DURO_LINK_KEYS or DURO_SYSTEM_KEY to keep them valid)"
        );
    }
    let auth = match (&opts.system_key, opts.insecure) {
        (Some(_), _) => "system key",
        (None, false) => "open (loopback, no system key)",
        (None, true) => "OPEN (--http-insecure, no system key)",
    };
    let key = opts.system_key.as_deref().map(SystemKey::new);
    let dashboard = crate::dashboard::Dashboard::new(&opts);
    let state = Arc::new(ApiState { key, engine, opts, links, local_addr, health, dashboard });
    let limits = (state.opts.header_timeout, state.opts.max_connections);
    let app = axum::Router::new().fallback(handle).with_state(state);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app, limits, stopped));
    tracing::info!(address = %local_addr, base = BASE_PATH, auth, "serving the Durable Functions HTTP management API");
    tracing::info!(url = %format!("http://{local_addr}{}", crate::dashboard::PREFIX), "serving the dashboard");
    Ok(Some(HttpServer { local_addr, task, stop }))
}

/// Accepts connections until `stopped`, then waits for in-flight requests. Limits: a
/// client has `header_timeout` to send a request's headers (slowloris), at most
/// `max_connections` are open (more are closed at once), HTTP/2 streams per connection are
/// capped, and idle HTTP/2 connections are pinged and dropped when the peer is gone.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    (header_timeout, max_connections): (Duration, usize),
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_HTTP2_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max_connections, "HTTP connection refused: too many open connections (--http-max-connections)");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// HTTP/2 streams one connection may have open at once.
const MAX_HTTP2_STREAMS: u32 = 256;

/// Every request goes through here: routing, then the handler, with panics caught.
async fn handle(State(state): State<Arc<ApiState>>, req: Request<Body>) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    // A web page the user visits must not drive the API from their browser (a simple
    // cross-site POST needs no preflight, and on loopback without a key nothing else stops it).
    let changes = !matches!(method, axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS);
    if changes && !crate::dashboard::same_origin(req.headers(), &state.opts) {
        tracing::warn!(%method, %path, "refused a cross-site request from a browser");
        return ApiError::new(
            ErrorCode::CrossSite,
            "Cross-site requests from a browser are refused: call the API from a server, a script or a page of the same origin",
        )
        .into_response();
    }
    let routed = async move {
        match ops::matches(req.uri().path()) {
            Some(op) => {
                let (parts, _) = req.into_parts();
                ops::route(&state, op, &parts.method, &parts.uri, &parts.headers).await
            }
            None if crate::dashboard::owns(req.uri().path()) => crate::dashboard::dispatch(state, req).await,
            None => routes::dispatch(state, req).await,
        }
    };
    let response = match std::panic::AssertUnwindSafe(routed).catch_unwind().await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(%method, %path, "an HTTP handler panicked");
            ApiError::new(ErrorCode::Internal, "Something went wrong while processing your request").into_response()
        }
    };
    // Never log the query: it may hold the system key or a link signature.
    tracing::debug!(%method, %path, status = response.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "http request");
    response
}

/// Query parameters with case-insensitive names, values URL-decoded.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        let pairs = raw
            .map(|q| {
                form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned())).collect()
            })
            .unwrap_or_default();
        Query { pairs }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated parameter.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `true`/`false` case-insensitively; anything else is the default (as Durable Functions).
    pub fn flag(&self, name: &str, default: bool) -> bool {
        match self.get(name).map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            _ => default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: Option<&str>, key: Option<&str>, insecure: bool) -> HttpArgs {
        HttpArgs {
            http_listen: listen.map(str::to_string),
            http_system_key: key.map(str::to_string),
            http_insecure: insecure,
            http_link_keys: None,
            http_link_ttl_seconds: 60,
            http_trust_forwarded: false,
            http_public_url: None,
            http_exact_links: false,
            http_header_timeout_seconds: 10,
            http_max_connections: 16,
            http_max_body_bytes: 1024,
            http_max_wait_seconds: 10,
            metrics_open: false,
        }
    }

    #[test]
    fn debug_prints_no_key() {
        let mut a = args(None, Some("sys-key-SECRET"), false);
        a.http_link_keys = Some("link-key-SECRET-0123456789".into());
        let d = format!("{a:?}");
        assert!(!d.contains("SECRET") && d.contains("<redacted>"), "{d}");
        let o = a.into_options().unwrap().unwrap();
        assert!(!format!("{o:?}").contains("SECRET"));
    }

    #[test]
    fn open_only_on_loopback_unless_insecure() {
        let o = args(None, None, false).into_options().unwrap().unwrap();
        assert!(!o.listen_explicit);
        assert!(matches!(args(Some("0.0.0.0:7071"), None, false).into_options(), Err(HttpError::Insecure { .. })));
        assert!(args(Some("0.0.0.0:7071"), None, true).into_options().unwrap().is_some());
        assert!(args(Some("0.0.0.0:7071"), Some("k"), false).into_options().unwrap().is_some());
        assert!(args(Some("[::1]:7071"), None, false).into_options().unwrap().is_some());
        assert!(args(Some("off"), None, false).into_options().unwrap().is_none());
        assert!(matches!(args(Some("nonsense"), None, false).into_options(), Err(HttpError::Config(_))));
    }

    #[test]
    fn link_keys_and_public_url_are_checked() {
        let mut a = args(None, None, false);
        a.http_link_keys = Some("short".into());
        assert!(matches!(a.into_options(), Err(HttpError::Config(_))));
        let mut a = args(None, None, false);
        a.http_link_keys = Some("new-key-0123456789, old-key-0123456789".into());
        assert_eq!(a.into_options().unwrap().unwrap().link_keys.len(), 2);
        let mut a = args(None, None, false);
        a.http_public_url = Some("https://x.example/duro/".into());
        assert_eq!(a.into_options().unwrap().unwrap().public_url.as_deref(), Some("https://x.example/duro"));
        let mut a = args(None, None, false);
        a.http_public_url = Some("ftp://x".into());
        assert!(a.into_options().is_err());
    }

    #[test]
    fn query_names_are_case_insensitive() {
        let q = Query::parse(Some("ShowHistory=TRUE&runtimeStatus=Running,Failed&RUNTIMESTATUS=Pending&x=%2B1"));
        assert!(q.flag("showHistory", false));
        assert_eq!(q.all("runtimeStatus").collect::<Vec<_>>(), vec!["Running,Failed", "Pending"]);
        assert_eq!(q.get("x"), Some("+1"));
        assert!(q.flag("missing", true));
        assert!(!Query::parse(Some("a=yes")).flag("a", false));
    }
}
