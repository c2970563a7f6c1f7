//! The web dashboard, served by `duro` itself at `/dashboard` on the HTTP API's port.
//!
//! Owns: the dashboard's routes, its access control (sessions, CSRF) and its pages. Pages are
//! rendered on the server from templates compiled into the binary ([`pages`], `maud`: every
//! value is escaped unless marked otherwise, and nothing user-provided is), plus one small
//! script and one stylesheet embedded with `include_str!`: no build step, no Node.
//!
//! Must not: decide anything about orchestrations. Reads use the engine's query paths (the
//! same ones as the management API's list and status routes); every action is sent through
//! the management API's own router and handlers ([`crate::http::routes::dispatch_as_operator`]),
//! so it takes the same engine paths and a refusal shows the API's status, code and message.
//!
//! Access: with no system key configured (the loopback default) the dashboard is open, and
//! requests must name a loopback host (no DNS rebinding). With a system key (required on any
//! other address) the key is entered once on a login form and a session cookie is set:
//! HttpOnly, SameSite=Strict, Secure behind TLS, its value an HMAC-signed session token, never
//! the key. Every change is a POST that must carry the session's CSRF token (checked in
//! constant time) and must not come from another origin.

pub mod pages;
pub mod session;
pub mod timeline;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use duro_proto::OrchestrationStatus;
use futures::StreamExt as _;
use maud::Markup;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::ambient::now_ms;
use crate::http::json::{self, ApiError, ErrorCode};
use crate::http::{routes, ApiState, HttpOptions, Query, BASE_PATH};
use crate::store::{CompletedFilter, InstanceFilter, InstanceRecord, QueryOrder};
use session::{Kind, Session, Sessions};

/// Where the dashboard lives on the HTTP port.
pub const PREFIX: &str = "/dashboard";
/// Page sizes the list offers; the first is the default.
pub const PAGE_SIZES: [u32; 4] = [50, 25, 100, 200];
/// Failures the live view lists.
const RECENT_FAILURES: usize = 10;
/// Rows read at most to count recent completions (the figure then reads "at least").
const THROUGHPUT_CAP: u32 = 10_000;

const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// Everything but the unreserved characters is escaped in generated URLs.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// One URL component, percent-encoded.
pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// The dashboard's page of an instance.
pub fn instance_url(id: &str) -> String {
    format!("{PREFIX}/instances/{}", enc(id))
}

/// Whether a request path belongs to the dashboard.
pub fn owns(path: &str) -> bool {
    path == PREFIX || path.starts_with("/dashboard/")
}

/// Who may use the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No system key: open. `loopback_host`: the listener is on loopback, so requests must
    /// name a loopback host (a page of another site cannot reach it through DNS rebinding).
    Open { loopback_host: bool },
    /// The system key, entered on the login form.
    Key,
}

/// The dashboard's per-server state.
#[derive(Debug)]
pub struct Dashboard {
    sessions: Sessions,
    access: Access,
    /// Sessions signed out before they expired: id → expiry (kept until then).
    revoked: parking_lot::Mutex<std::collections::HashMap<String, i64>>,
}

impl Dashboard {
    pub fn new(opts: &HttpOptions) -> Dashboard {
        let access = match opts.system_key {
            Some(_) => Access::Key,
            None => Access::Open { loopback_host: opts.listen.ip().is_loopback() },
        };
        Dashboard { sessions: Sessions::random(), access, revoked: Default::default() }
    }

    fn is_revoked(&self, s: &Session) -> bool {
        self.revoked.lock().contains_key(&s.id)
    }

    /// Signs a session out for good (its cookie stops working even if a copy was kept).
    fn revoke(&self, s: &Session, now_secs: i64) {
        let mut revoked = self.revoked.lock();
        revoked.retain(|_, expires| *expires > now_secs);
        revoked.insert(s.id.clone(), s.expires_secs);
    }
}

/// The dashboard's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Page {
    Asset(&'static str),
    List,
    Search,
    Instance(String),
    Action(String, ActionKind),
    Live,
    Entities,
    Login,
    Logout,
}

/// The actions of the instance page; each is one management API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    RaiseEvent,
    Terminate,
    Suspend,
    Resume,
    Restart,
    Rewind,
    Purge,
}

impl ActionKind {
    pub const ALL: [ActionKind; 7] = [
        ActionKind::RaiseEvent,
        ActionKind::Terminate,
        ActionKind::Suspend,
        ActionKind::Resume,
        ActionKind::Restart,
        ActionKind::Rewind,
        ActionKind::Purge,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            ActionKind::RaiseEvent => "raise-event",
            ActionKind::Terminate => "terminate",
            ActionKind::Suspend => "suspend",
            ActionKind::Resume => "resume",
            ActionKind::Restart => "restart",
            ActionKind::Rewind => "rewind",
            ActionKind::Purge => "purge",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ActionKind::RaiseEvent => "Raise event",
            ActionKind::Terminate => "Terminate",
            ActionKind::Suspend => "Suspend",
            ActionKind::Resume => "Resume",
            ActionKind::Restart => "Restart",
            ActionKind::Rewind => "Rewind",
            ActionKind::Purge => "Purge",
        }
    }

    fn from_slug(s: &str) -> Option<ActionKind> {
        ActionKind::ALL.into_iter().find(|a| a.slug() == s)
    }
}

fn route(method: &Method, path: &str) -> Option<Page> {
    let rest = path.strip_prefix(PREFIX)?;
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segs: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned());
    Some(match segs.as_slice() {
        [] if get => Page::List,
        ["static", "dashboard.js"] if get => Page::Asset("dashboard.js"),
        ["static", "dashboard.css"] if get => Page::Asset("dashboard.css"),
        ["search"] if get => Page::Search,
        ["live"] if get => Page::Live,
        ["entities"] if get => Page::Entities,
        ["login"] if get || post => Page::Login,
        ["logout"] if post => Page::Logout,
        ["instances", id] if get => Page::Instance(decode(id).filter(|i| !i.is_empty())?),
        ["instances", id, action] if post => {
            Page::Action(decode(id).filter(|i| !i.is_empty())?, ActionKind::from_slug(action)?)
        }
        _ => return None,
    })
}

fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

/// One request's context once access is granted.
pub struct Ctx {
    state: Arc<ApiState>,
    pub session: Session,
    /// The session's CSRF token, for the page's forms.
    pub csrf: String,
    /// Whether the login form is in use (pages then offer "Sign out").
    pub signed_in: bool,
    /// A new session's cookie, set on this response.
    set_cookie: Option<String>,
    secure: bool,
    query: Query,
}

pub(crate) async fn dispatch(state: Arc<ApiState>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let method = parts.method;
    let secure = is_secure(&state.opts, &headers);
    if let Access::Open { loopback_host: true } = state.dashboard.access {
        if !host_is_loopback(header_str(&headers, header::HOST.as_str()).unwrap_or_default()) {
            let msg = format!(
                "This dashboard serves loopback host names only (for example http://{}{PREFIX}); \
                 to open it from elsewhere, configure a system key (DURO_SYSTEM_KEY) and listen on that address.",
                state.local_addr
            );
            return html(StatusCode::FORBIDDEN, pages::message_page("Wrong host", &msg, None), None);
        }
    }
    let Some(page) = route(&method, parts.uri.path()) else {
        return html(
            StatusCode::NOT_FOUND,
            pages::message_page("Not found", "There is no such dashboard page.", None),
            None,
        );
    };
    if let Page::Asset(name) = page {
        return asset(name);
    }
    if method == Method::POST && !same_origin(&headers, &state.opts) {
        return html(
            StatusCode::FORBIDDEN,
            pages::message_page(
                "Refused",
                "This form was sent from another site. Open the dashboard and use its own forms.",
                None,
            ),
            None,
        );
    }
    let dash = &state.dashboard;
    let presented = header_str(&headers, header::COOKIE.as_str())
        .and_then(|c| session::cookie_value(c, session::COOKIE))
        .and_then(|t| dash.sessions.verify(t, now_secs()).ok())
        .filter(|s| match dash.access {
            Access::Key => s.kind == Kind::Key,
            Access::Open { .. } => true,
        })
        .filter(|s| !dash.is_revoked(s));
    if page == Page::Login {
        return login(&state, &method, presented, body, &headers, secure).await;
    }
    let (session, set_cookie) = match (presented, dash.access) {
        (Some(s), _) => (s, None),
        (None, Access::Open { .. }) if method != Method::POST => {
            let (s, token) = dash.sessions.issue(Kind::Open, now_secs());
            (s, Some(session::set_cookie(&token, secure)))
        }
        (None, Access::Open { .. }) => {
            return html(
                StatusCode::FORBIDDEN,
                pages::message_page(
                    "Session expired",
                    "Your dashboard session has expired or is missing. Reload the page and try again.",
                    None,
                ),
                None,
            )
        }
        (None, Access::Key) if method == Method::POST => {
            return html(
                StatusCode::UNAUTHORIZED,
                pages::message_page(
                    "Signed out",
                    "Your session has expired. Sign in again with the system key.",
                    Some((&format!("{PREFIX}/login"), "Sign in")),
                ),
                None,
            )
        }
        (None, Access::Key) => return redirect(&format!("{PREFIX}/login"), None),
    };
    let ctx = Ctx {
        csrf: dash.sessions.csrf(&session),
        session,
        signed_in: dash.access == Access::Key,
        set_cookie,
        secure,
        query: Query::parse(parts.uri.query()),
        state: state.clone(),
    };
    let form = if method == Method::POST {
        match read_form(&state, &headers, body).await {
            Ok(f) => f,
            Err(e) => return error_page(&ctx, &e),
        }
    } else {
        Query::default()
    };
    if method == Method::POST && !dash.sessions.csrf_matches(&ctx.session, form.get("csrf").unwrap_or_default()) {
        return html(
            StatusCode::FORBIDDEN,
            pages::message_page(
                "Refused",
                "The form's security token does not match your session (it may have expired). Reload the page and try again.",
                None,
            ),
            ctx.set_cookie.clone(),
        );
    }
    match page {
        Page::List => list(&ctx).await,
        Page::Search => search(&ctx),
        Page::Instance(id) => instance(&ctx, &id, None).await,
        Page::Action(id, action) => act(&ctx, &id, action, &form).await,
        Page::Live => live(&ctx).await,
        Page::Entities => entities(&ctx).await,
        Page::Logout => {
            dash.revoke(&ctx.session, now_secs());
            let target = if ctx.signed_in { format!("{PREFIX}/login") } else { PREFIX.to_string() };
            redirect(&target, Some(session::clear_cookie(ctx.secure)))
        }
        Page::Login | Page::Asset(_) => redirect(PREFIX, None),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// `Secure` cookies when the browser reaches Duro over TLS (through a proxy: the public URL
/// says https, or a trusted `X-Forwarded-Proto` does).
fn is_secure(opts: &HttpOptions, headers: &HeaderMap) -> bool {
    if opts.public_url.as_deref().is_some_and(|u| u.starts_with("https://")) {
        return true;
    }
    opts.trust_forwarded
        && header_str(headers, "x-forwarded-proto")
            .and_then(|p| p.split(',').next())
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// A Host header naming this machine's loopback interface.
fn host_is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A POST must come from the dashboard's own pages: a browser's `Sec-Fetch-Site` must not
/// say cross-site, and an `Origin` must name the host the request was sent to. The management
/// API applies the same rule to every change (`http::handle`); clients that are not browsers
/// send neither header and pass.
pub(crate) fn same_origin(headers: &HeaderMap, opts: &HttpOptions) -> bool {
    if header_str(headers, "sec-fetch-site").is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return false;
    }
    let Some(origin) = header_str(headers, header::ORIGIN.as_str()) else { return true };
    let Some((_, origin_host)) = origin.split_once("://") else { return false };
    let mut hosts = Vec::new();
    if let Some(h) = header_str(headers, header::HOST.as_str()) {
        hosts.push(h.to_string());
    }
    if opts.trust_forwarded {
        if let Some(h) = header_str(headers, "x-forwarded-host") {
            hosts.push(h.split(',').next().unwrap_or_default().trim().to_string());
        }
    }
    if let Some(u) = &opts.public_url {
        if let Some((_, rest)) = u.split_once("://") {
            hosts.push(rest.split('/').next().unwrap_or_default().to_string());
        }
    }
    hosts.iter().any(|h| h.eq_ignore_ascii_case(origin_host.trim_end_matches('/')))
}

/// A form body (`application/x-www-form-urlencoded`), up to the API's body limit.
async fn read_form(state: &ApiState, headers: &HeaderMap, body: Body) -> Result<Query, ApiError> {
    let limit = state.opts.max_body_bytes;
    let media = header_str(headers, header::CONTENT_TYPE.as_str()).and_then(|v| v.split(';').next()).map(str::trim);
    if !media.is_some_and(|m| m.eq_ignore_ascii_case("application/x-www-form-urlencoded")) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "dashboard forms are sent as form data"));
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + state.opts.header_timeout.saturating_mul(4);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("could not read the form: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the form is larger than the limit of {limit} bytes (--http-max-body-bytes)"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    let text = std::str::from_utf8(&buf).map_err(|_| ApiError::bad_request("the form is not UTF-8"))?;
    Ok(Query::parse(Some(text)))
}

// ----- responses ---------------------------------------------------------------------------

/// Headers of every dashboard page: no caching, no framing, scripts and styles only from
/// the dashboard itself (an injected inline script or handler would not run). Referrers stay
/// within the origin (`no-referrer` would make browsers send `Origin: null` on form posts).
fn security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn with_cookie(h: &mut HeaderMap, cookie: Option<String>) {
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::SET_COOKIE, v);
    }
}

fn html(status: StatusCode, page: Markup, cookie: Option<String>) -> Response {
    let mut h = HeaderMap::new();
    security_headers(&mut h);
    with_cookie(&mut h, cookie);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    (status, h, page.into_string()).into_response()
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut h = HeaderMap::new();
    security_headers(&mut h);
    with_cookie(&mut h, cookie);
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    (StatusCode::SEE_OTHER, h).into_response()
}

fn asset(name: &str) -> Response {
    let (body, kind) = match name {
        "dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => (STYLE, "text/css; charset=utf-8"),
    };
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    (StatusCode::OK, h, body).into_response()
}

fn error_page(ctx: &Ctx, e: &ApiError) -> Response {
    html(e.code.status(), pages::error_page(ctx, e), ctx.set_cookie.clone())
}

// ----- login ----------------------------------------------------------------------------

async fn login(
    state: &ApiState,
    method: &Method,
    presented: Option<Session>,
    body: Body,
    headers: &HeaderMap,
    secure: bool,
) -> Response {
    if state.dashboard.access != Access::Key || presented.is_some() {
        return redirect(PREFIX, None);
    }
    if method != Method::POST {
        return html(StatusCode::OK, pages::login(None), None);
    }
    let form = match read_form(state, headers, body).await {
        Ok(f) => f,
        Err(e) => return html(e.code.status(), pages::login(Some(&e.message)), None),
    };
    let ok = match (&state.key, form.get("key")) {
        (Some(key), Some(k)) => key.matches(k),
        _ => false,
    };
    if !ok {
        // Slows down guessing; the comparison itself is constant-time.
        tokio::time::sleep(Duration::from_millis(250)).await;
        tracing::info!("dashboard sign-in refused: wrong system key");
        return html(StatusCode::UNAUTHORIZED, pages::login(Some("That is not the system key.")), None);
    }
    let (_, token) = state.dashboard.sessions.issue(Kind::Key, now_secs());
    redirect(PREFIX, Some(session::set_cookie(&token, secure)))
}

// ----- pages ----------------------------------------------------------------------------

/// The list's filters, as read from the query string.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub statuses: Vec<OrchestrationStatus>,
    pub name: String,
    pub prefix: String,
    /// As typed (`datetime-local`, UTC).
    pub from: String,
    pub to: String,
    pub size: u32,
    pub before: Option<(i64, String)>,
}

impl ListParams {
    fn parse(q: &Query) -> Result<(ListParams, InstanceFilter), ApiError> {
        let mut statuses = Vec::new();
        for s in q.all("status").flat_map(|v| v.split(',')).filter_map(json::parse_status_name) {
            if !statuses.contains(&s) {
                statuses.push(s);
            }
        }
        let text = |n: &str| q.get(n).map(str::trim).unwrap_or_default().to_string();
        let time = |n: &str| -> Result<Option<i64>, ApiError> {
            match q.get(n).map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => json::parse_time(v).map(Some).ok_or_else(|| {
                    ApiError::bad_request(format!("'{v}' is not a date and time (use 2026-05-01T13:00, UTC)"))
                }),
            }
        };
        let size =
            q.get("size").and_then(|v| v.parse().ok()).filter(|s| PAGE_SIZES.contains(s)).unwrap_or(PAGE_SIZES[0]);
        let before = q
            .get("before")
            .and_then(|c| c.split_once('~'))
            .and_then(|(t, id)| t.parse::<i64>().ok().map(|t| (t, id.to_string())));
        let p = ListParams {
            statuses,
            name: text("name"),
            prefix: text("prefix"),
            from: text("from"),
            to: text("to"),
            size,
            before: before.clone(),
        };
        let filter = InstanceFilter {
            statuses: p.statuses.clone(),
            created_from_ms: time("from")?,
            created_to_ms: time("to")?,
            instance_id_prefix: Some(p.prefix.clone()).filter(|s| !s.is_empty()),
            // One row more than the page says whether another page follows.
            page_size: size + 1,
            after_instance_id: None,
            name: Some(p.name.clone()).filter(|s| !s.is_empty()),
            order: QueryOrder::NewestFirst { before },
        };
        Ok((p, filter))
    }

    /// The query string of these filters (without the cursor).
    pub fn query_string(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for st in &self.statuses {
            s.append_pair("status", json::status_name(*st));
        }
        for (k, v) in [("name", &self.name), ("prefix", &self.prefix), ("from", &self.from), ("to", &self.to)] {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        if self.size != PAGE_SIZES[0] {
            s.append_pair("size", &self.size.to_string());
        }
        s.finish()
    }
}

/// What the list page shows.
pub struct ListView {
    pub params: ListParams,
    pub rows: Vec<InstanceRecord>,
    pub counts: Vec<(OrchestrationStatus, u64)>,
    /// The cursor of the next page, if one follows.
    pub next: Option<String>,
    pub notice: Option<String>,
}

async fn list(ctx: &Ctx) -> Response {
    let (params, filter) = match ListParams::parse(&ctx.query) {
        Ok(p) => p,
        Err(e) => return error_page(ctx, &e),
    };
    let engine = &ctx.state.engine;
    let (rows, counts) = tokio::join!(engine.query(&filter), engine.count_by_status());
    let (mut rows, counts) = match (rows, counts) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(e), _) | (_, Err(e)) => return error_page(ctx, &e.into()),
    };
    let more = rows.len() > params.size as usize;
    rows.truncate(params.size as usize);
    let next = match rows.last() {
        Some(last) if more => Some(format!("{}~{}", last.created_at_ms, last.instance_id)),
        _ => None,
    };
    let notice = ctx.query.get("purged").map(|id| format!("Instance '{id}' was purged."));
    let view = ListView { params, rows, counts, next, notice };
    html(StatusCode::OK, pages::list(ctx, &view), ctx.set_cookie.clone())
}

/// Entities by id, paged (50 a page), optionally under an id prefix; state, lock owner and
/// queue length straight from the store.
async fn entities(ctx: &Ctx) -> Response {
    const PAGE: u32 = 50;
    let prefix = ctx.query.get("prefix").map(str::trim).unwrap_or_default().to_string();
    let filter = crate::store::EntitySelection {
        id_prefix: Some(prefix.clone()).filter(|p| !p.is_empty()),
        include_transient: true,
        page_size: PAGE + 1,
        after_id: ctx.query.get("after").filter(|a| !a.is_empty()).map(str::to_string),
        ..Default::default()
    };
    let mut rows = match ctx.state.engine.query_entities(&filter).await {
        Ok(rows) => rows,
        Err(e) => return error_page(ctx, &e.into()),
    };
    let more = rows.len() > PAGE as usize;
    rows.truncate(PAGE as usize);
    let next = if more { rows.last().map(|r| r.entity_id.clone()) } else { None };
    let view = pages::EntitiesView { prefix, rows, next };
    html(StatusCode::OK, pages::entities(ctx, &view), ctx.set_cookie.clone())
}

fn search(ctx: &Ctx) -> Response {
    match ctx.query.get("id").map(str::trim).filter(|i| !i.is_empty()) {
        Some(id) => redirect(&instance_url(id), ctx.set_cookie.clone()),
        None => redirect(PREFIX, ctx.set_cookie.clone()),
    }
}

/// A refused action: the management API's status, code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

async fn instance(ctx: &Ctx, id: &str, refusal: Option<Refusal>) -> Response {
    let engine = &ctx.state.engine;
    let record = match engine.get_instance(id).await {
        Ok(r) => r,
        Err(e) => return error_page(ctx, &e.into()),
    };
    let status = refusal.as_ref().map(|r| r.status).unwrap_or(StatusCode::OK);
    let Some(record) = record else {
        let e = ApiError::not_found_instance(id);
        let status = if refusal.is_some() { status } else { StatusCode::NOT_FOUND };
        return html(status, pages::not_found(ctx, id, &e, refusal.as_ref()), ctx.set_cookie.clone());
    };
    let history = match engine.history(id).await {
        Ok(h) => h,
        Err(e) => return error_page(ctx, &e.into()),
    };
    let done = ctx.query.get("done").and_then(ActionKind::from_slug);
    let polling = engine
        .builtin_progress(id)
        .into_iter()
        .filter_map(|(task_id, p)| crate::durable_http::polling::PollState::decode(&p).ok().map(|st| (task_id, st)))
        .collect();
    let view = pages::InstanceView { record, history, now_ms: now_ms(), done, refusal, polling };
    html(status, pages::instance(ctx, &view), ctx.set_cookie.clone())
}

/// Runs an action through the management API's router, as an authenticated operator.
async fn act(ctx: &Ctx, id: &str, action: ActionKind, form: &Query) -> Response {
    let inst = format!("{BASE_PATH}/instances/{}", enc(id));
    let field = |n: &str| form.get(n).map(str::trim).filter(|v| !v.is_empty());
    // (form_urlencoded's serializer is not Send: the pairs are encoded after the match.)
    let mut q: Vec<(&str, &str)> = Vec::new();
    let mut body = Vec::new();
    let mut content_type = None;
    let (method, path) = match action {
        ActionKind::RaiseEvent => {
            let Some(name) = field("event") else {
                let r = Refusal {
                    status: StatusCode::BAD_REQUEST,
                    code: ErrorCode::InvalidArgument.as_str().into(),
                    message: "Enter the name of the event to raise.".into(),
                };
                return instance(ctx, id, Some(r)).await;
            };
            body = form.get("data").unwrap_or_default().as_bytes().to_vec();
            content_type = Some("application/json");
            (Method::POST, format!("{inst}/raiseEvent/{}", enc(name)))
        }
        ActionKind::Terminate => {
            if let Some(r) = field("reason") {
                q.push(("reason", r));
            }
            if form.get("recursive").is_some() {
                q.push(("recursive", "true"));
            }
            (Method::POST, format!("{inst}/terminate"))
        }
        ActionKind::Suspend | ActionKind::Resume | ActionKind::Rewind => {
            if let Some(r) = field("reason") {
                q.push(("reason", r));
            }
            (Method::POST, format!("{inst}/{}", action.slug()))
        }
        ActionKind::Restart => {
            q.push(("restartWithNewInstanceId", if form.get("newId").is_some() { "true" } else { "false" }));
            (Method::POST, format!("{inst}/restart"))
        }
        ActionKind::Purge => (Method::DELETE, inst.clone()),
    };
    let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(q).finish();
    let uri = if query.is_empty() { path } else { format!("{path}?{query}") };
    let mut req = Request::builder().method(method).uri(&uri);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let Ok(req) = req.body(Body::from(body)) else {
        return error_page(ctx, &ApiError::bad_request("the instance id cannot be put into a request"));
    };
    let response = routes::dispatch_as_operator(ctx.state.clone(), req).await;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1024 * 1024).await.unwrap_or_default();
    let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !status.is_success() {
        let text = |k: &str| answer.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let r = Refusal { status, code: text("Code"), message: text("Message") };
        tracing::debug!(instance = %id, action = action.slug(), status = status.as_u16(), "dashboard action refused");
        return instance(ctx, id, Some(r)).await;
    }
    tracing::info!(instance = %id, action = action.slug(), "dashboard action");
    match action {
        ActionKind::Purge => redirect(&format!("{PREFIX}?purged={}", enc(id)), ctx.set_cookie.clone()),
        ActionKind::Restart => {
            let new_id = answer.get("id").and_then(|v| v.as_str()).unwrap_or(id);
            redirect(&format!("{}?done=restart", instance_url(new_id)), ctx.set_cookie.clone())
        }
        _ => redirect(&format!("{}?done={}", instance_url(id), action.slug()), ctx.set_cookie.clone()),
    }
}

/// What the live view shows.
pub struct LiveView {
    pub snapshot: crate::engine::scheduler::LiveSnapshot,
    /// The figures `/metrics` and `/stats` serve.
    pub metrics: crate::metrics::Snapshot,
    pub counts: Vec<(OrchestrationStatus, u64)>,
    /// Instances that finished in the last minute and the last five minutes (capped).
    pub finished_1m: usize,
    pub finished_5m: usize,
    pub failures: Vec<InstanceRecord>,
}

async fn live(ctx: &Ctx) -> Response {
    let engine = &ctx.state.engine;
    let now = now_ms();
    let finished = |since: i64, statuses: Vec<OrchestrationStatus>| CompletedFilter {
        statuses,
        completed_from_ms: Some(since),
        completed_to_ms: None,
        page_size: THROUGHPUT_CAP,
        after: None,
    };
    let (f1, f5, ff) = (
        finished(now - 60_000, Vec::new()),
        finished(now - 300_000, Vec::new()),
        finished(now - 24 * 3_600_000, vec![OrchestrationStatus::Failed]),
    );
    let (counts, m1, m5, failed) = tokio::join!(
        engine.count_by_status(),
        engine.list_completed(&f1),
        engine.list_completed(&f5),
        engine.list_completed(&ff),
    );
    let (counts, m1, m5, failed) = match (counts, m1, m5, failed) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return error_page(ctx, &e.into()),
    };
    let mut failures = Vec::new();
    for (_, id) in failed.iter().rev().take(RECENT_FAILURES) {
        if let Ok(Some(r)) = engine.get_instance(id).await {
            failures.push(r);
        }
    }
    let view = LiveView {
        snapshot: engine.live_snapshot(),
        metrics: crate::metrics::snapshot(engine).await,
        counts,
        finished_1m: m1.len(),
        finished_5m: m5.len(),
        failures,
    };
    html(StatusCode::OK, pages::live(ctx, &view, THROUGHPUT_CAP as usize), ctx.set_cookie.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(route(&get, "/dashboard"), Some(Page::List));
        assert_eq!(route(&get, "/dashboard/"), Some(Page::List));
        assert_eq!(route(&get, "/dashboard/instances/a%2Fb%20c"), Some(Page::Instance("a/b c".into())));
        assert_eq!(
            route(&post, "/dashboard/instances/x/terminate"),
            Some(Page::Action("x".into(), ActionKind::Terminate))
        );
        assert_eq!(
            route(&post, "/dashboard/instances/x/raise-event"),
            Some(Page::Action("x".into(), ActionKind::RaiseEvent))
        );
        // Actions are POST only; pages GET only.
        assert_eq!(route(&get, "/dashboard/instances/x/terminate"), None);
        assert_eq!(route(&post, "/dashboard/instances/x"), None);
        assert_eq!(route(&post, "/dashboard/instances/x/explode"), None);
        assert_eq!(route(&get, "/dashboard/logout"), None);
        assert_eq!(route(&get, "/dashboard/instances/%FF"), None);
        assert_eq!(route(&get, "/dashboard/instances/"), None);
        assert!(
            owns("/dashboard")
                && owns("/dashboard/live")
                && !owns("/dashboardx")
                && !owns("/runtime/webhooks/durabletask")
        );
    }

    #[test]
    fn loopback_hosts() {
        for ok in ["127.0.0.1:7071", "localhost:7071", "localhost", "[::1]:7071", "127.1.2.3", "app.localhost:1"] {
            assert!(host_is_loopback(ok), "{ok}");
        }
        for bad in ["evil.example:7071", "", "10.0.0.1:7071", "localhost.evil.example", "[2001:db8::1]:1"] {
            assert!(!host_is_loopback(bad), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let opts = HttpOptions::local("127.0.0.1:7071".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7071"));
        assert!(same_origin(&h, &opts), "no Origin: the CSRF token decides");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:7071"));
        assert!(same_origin(&h, &opts));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h, &opts));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h, &opts));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h, &opts));
    }

    #[test]
    fn list_params_round_trip() {
        let q = Query::parse(Some("status=Running&status=Failed,Running&name=greet&prefix=ord&size=25&before=5~a~b"));
        let (p, f) = ListParams::parse(&q).unwrap();
        assert_eq!(p.statuses, vec![OrchestrationStatus::Running, OrchestrationStatus::Failed]);
        assert_eq!(f.page_size, 26);
        assert_eq!(f.name.as_deref(), Some("greet"));
        assert_eq!(f.order, QueryOrder::NewestFirst { before: Some((5, "a~b".into())) });
        assert_eq!(p.query_string(), "status=Running&status=Failed&name=greet&prefix=ord&size=25");
        assert!(ListParams::parse(&Query::parse(Some("from=yesterday"))).is_err());
        let (_, f) = ListParams::parse(&Query::parse(Some("from=2026-05-01T13:00&size=7"))).unwrap();
        assert_eq!(f.created_from_ms, Some(1_777_640_400_000));
        assert_eq!(f.page_size, PAGE_SIZES[0] + 1, "sizes not offered fall back to the default");
    }
}
