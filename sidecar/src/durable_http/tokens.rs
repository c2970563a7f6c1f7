//! Bearer tokens for durable HTTP `tokenSource`s: acquisition from the configured identity,
//! an in-memory cache per (identity, resource), refresh before expiry, retries with backoff.
//!
//! Sources (one per sidecar, chosen by `config.rs` from flags and the standard Azure
//! environment variables):
//! - **IMDS** (VMs, VMSS, AKS nodes): `GET {endpoint}?api-version=2018-02-01&resource=…`,
//!   header `Metadata: true`, user-assigned identity by `client_id`. The endpoint can be
//!   overridden (`--identity-endpoint` / `DURO_IMDS_ENDPOINT`), which is how tests fake it.
//! - **App Service / Functions / Container Apps**: `GET $IDENTITY_ENDPOINT?api-version=2019-08-01&resource=…`,
//!   header `X-IDENTITY-HEADER: $IDENTITY_HEADER`, `client_id`.
//! - **Legacy App Service / Azure ML**: `GET $MSI_ENDPOINT?api-version=2017-09-01&resource=…`,
//!   header `secret: $MSI_SECRET`, `clientid`; `expires_on` may be a date string.
//! - **Workload identity** (federated): `POST {authority}{tenant}/oauth2/v2.0/token` with the
//!   contents of `AZURE_FEDERATED_TOKEN_FILE` as client assertion, re-read at every
//!   acquisition (Kubernetes rotates the file).
//! - **Client secret**: the same endpoint with `client_secret`.
//!
//! Why not the Azure SDK for Rust (`azure_identity`, checked at 1.1.0-beta.1): its IMDS
//! endpoint is a hard-coded constant (no way to point it at a local fake), it reads its
//! configuration only from the process environment (not from our flags), it does not
//! support the legacy `MSI_ENDPOINT`/`MSI_SECRET` source ("Azure ML managed identity isn't
//! supported"), and its Entra ID flows insist on an `https` authority, so tests cannot use
//! a loopback fake either. It would also bring a second HTTP stack (`azure_core`, reqwest
//! 0.13) for what amounts to one GET or POST per source. So every source is written here;
//! they follow azure-identity's rules (resource = scope minus `/.default`, refresh 5 min
//! before expiry, keep serving a still-valid token while a refresh fails, retry 404/410/
//! 429/5xx with exponential backoff).
//!
//! Where client secrets and federated assertions go is the operator's decision only: the
//! authority is `--azure-authority-host`, or one of `--azure-allowed-authority-hosts`
//! (default: the public and sovereign Entra ID hosts) when a request names one in
//! `tokenSource.options.authorityhost`; a request's `tenantid` must be a GUID or a domain
//! name ([`super::request`] checks it) and only fills one path segment. The Entra ID client
//! passes the same outbound address guard as durable HTTP ([`super::ssrf`]). The managed
//! identity endpoints are the operator's configuration and are not guarded (IMDS is
//! link-local by design).
//!
//! Tokens live only in this cache. They are never logged ([`Secret`] prints `***`), never
//! put in history, checkpoints or the store; the `Authorization` header is added at send time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;
use url::Url;

use super::request::{InvalidRequest, TokenSourceSpec};
use crate::ambient::now_ms;

/// A secret string (token, identity header, client secret) that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Where tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Imds { endpoint: Url, client_id: Option<String> },
    AppService { endpoint: Url, header: Secret, client_id: Option<String> },
    LegacyMsi { endpoint: Url, secret: Secret, client_id: Option<String> },
    WorkloadIdentity { tenant_id: String, client_id: String, token_file: PathBuf, authority: Url },
    ClientSecret { tenant_id: String, client_id: String, secret: Secret, authority: Url },
}

/// The default IMDS token endpoint.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// The default Entra ID authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
/// Authorities a request may name by default: Entra ID public, US Government, China.
pub const DEFAULT_ALLOWED_AUTHORITIES: &str =
    "https://login.microsoftonline.com/,https://login.microsoftonline.us/,https://login.chinacloudapi.cn/";

impl Credential {
    /// For messages and logs: the source and its endpoint, no secret.
    pub fn describe(&self) -> String {
        match self {
            Credential::Imds { endpoint, client_id } => {
                with_client("managed identity (IMDS at {e})", endpoint, client_id)
            }
            Credential::AppService { endpoint, client_id, .. } => {
                with_client("managed identity (App Service at {e})", endpoint, client_id)
            }
            Credential::LegacyMsi { endpoint, client_id, .. } => {
                with_client("managed identity (MSI_ENDPOINT at {e})", endpoint, client_id)
            }
            Credential::WorkloadIdentity { client_id, authority, .. } => {
                format!("workload identity (client {client_id} at {})", authority.as_str().trim_end_matches('/'))
            }
            Credential::ClientSecret { client_id, authority, .. } => {
                format!("client secret credential (client {client_id} at {})", authority.as_str().trim_end_matches('/'))
            }
        }
    }
}

fn with_client(template: &str, endpoint: &Url, client_id: &Option<String>) -> String {
    let mut s = template.replace("{e}", &super::ssrf::display_url(endpoint));
    if let Some(c) = client_id {
        s.push_str(&format!(", user-assigned client id {c}"));
    }
    s
}

/// Cache and retry tuning.
#[derive(Debug, Clone)]
pub struct TokenOptions {
    /// Refresh a cached token this long before it expires.
    pub refresh_before: Duration,
    /// After a failed refresh of a still-valid token, wait this long before trying again.
    pub failed_refresh_backoff: Duration,
    /// Retries after the first attempt for retryable failures.
    pub max_retries: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Time limit of one token request.
    pub attempt_timeout: Duration,
    /// Authorities a request's `tokenSource.options.authorityhost` may name (besides the
    /// configured one), as [`parse_authority`] normalizes them.
    pub allowed_authorities: Vec<Url>,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            refresh_before: Duration::from_secs(300),
            failed_refresh_backoff: Duration::from_secs(30),
            max_retries: 4,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            attempt_timeout: Duration::from_secs(10),
            allowed_authorities: DEFAULT_ALLOWED_AUTHORITIES
                .split(',')
                .filter_map(|a| parse_authority(a).ok())
                .collect(),
        }
    }
}

/// No token.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "the request has a tokenSource but no identity is configured (--identity-source none); configure one with \
         --identity-source or the standard Azure identity environment variables"
    )]
    NotConfigured,
    #[error("{source_desc} gave no token for '{resource}': {detail}")]
    Failed { source_desc: String, resource: String, detail: String },
}

/// A cached token.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    token: Secret,
    expires_at_ms: i64,
    refresh_failed_at_ms: Option<i64>,
}

/// What to do with the cache entry at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Serve the cached token.
    Use,
    /// Fetch; on failure serve the cached token (still valid, inside the refresh window).
    RefreshOrUse,
    /// Fetch; no usable token.
    Fetch,
}

pub(crate) fn decide(entry: Option<&Cached>, now_ms: i64, opts: &TokenOptions) -> Decision {
    let Some(c) = entry else {
        return Decision::Fetch;
    };
    if now_ms >= c.expires_at_ms {
        return Decision::Fetch;
    }
    let early = i64::try_from(opts.refresh_before.as_millis()).unwrap_or(i64::MAX);
    if c.expires_at_ms.saturating_sub(now_ms) > early {
        return Decision::Use;
    }
    let backoff = i64::try_from(opts.failed_refresh_backoff.as_millis()).unwrap_or(i64::MAX);
    match c.refresh_failed_at_ms {
        Some(t) if now_ms.saturating_sub(t) < backoff => Decision::Use,
        _ => Decision::RefreshOrUse,
    }
}

/// `https://x/.default` → `https://x` (what the managed identity endpoints take).
pub fn scope_to_resource(s: &str) -> String {
    s.strip_suffix("/.default").unwrap_or(s).to_string()
}

/// `https://x` → `https://x/.default` (what the Entra ID v2 endpoint takes).
pub fn resource_to_scope(s: &str) -> String {
    if s.ends_with("/.default") {
        s.to_string()
    } else {
        format!("{}/.default", s.trim_end_matches('/'))
    }
}

/// The token's expiry (ms since the epoch) from a token response, leniently: `expires_in`
/// (number or numeric string), else `expires_on` (epoch seconds as number or string, or
/// the legacy date strings `06/20/2019 02:57:58 +00:00` / `1/16/2020 5:24:12 AM +00:00`).
pub(crate) fn expiry_ms(body: &Value, now_ms: i64) -> Option<i64> {
    fn num(v: &Value) -> Option<i64> {
        match v {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        }
    }
    if let Some(secs) = body.get("expires_in").and_then(num) {
        return Some(now_ms.saturating_add(secs.saturating_mul(1000)));
    }
    let on = body.get("expires_on")?;
    if let Some(epoch) = num(on) {
        return Some(epoch.saturating_mul(1000));
    }
    on.as_str().and_then(parse_legacy_date).map(|secs| secs.saturating_mul(1000))
}

/// `M/D/YYYY h:mm:ss [AM|PM] +HH:MM` (the App Service managed-identity endpoint's older
/// `expires_on` form) → epoch seconds.
fn parse_legacy_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let has_meridiem = s.split_whitespace().count() == 4;
    let format = if has_meridiem { "%m/%d/%Y %I:%M:%S %p %:z" } else { "%m/%d/%Y %H:%M:%S %:z" };
    chrono::DateTime::parse_from_str(s, format).ok().map(|t| t.timestamp())
}

/// Cache key: the credential is one per sidecar, so (resource, per-request overrides).
type Key = (String, Option<String>, Option<String>);

/// One failed attempt.
struct AttemptError {
    retryable: bool,
    retry_after: Option<Duration>,
    detail: String,
}

/// Acquires and caches tokens.
pub struct Tokens {
    credential: Option<Credential>,
    /// For the managed identity endpoints (the operator's, unguarded).
    client: reqwest::Client,
    /// For Entra ID authorities: through the outbound address guard.
    entra_client: reqwest::Client,
    allow: Arc<super::ssrf::Allow>,
    opts: TokenOptions,
    slots: parking_lot::Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
    fetches: AtomicU64,
}

impl Tokens {
    pub fn new(
        credential: Option<Credential>,
        opts: TokenOptions,
        allow: Arc<super::ssrf::Allow>,
    ) -> Result<Tokens, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let entra_client = reqwest::Client::builder()
            .dns_resolver(Arc::new(super::ssrf::GuardedResolver { allow: allow.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Tokens {
            credential,
            client,
            entra_client,
            allow,
            opts,
            slots: Default::default(),
            fetches: AtomicU64::new(0),
        })
    }

    /// Whether a request's token source may be served: an `authorityhost` it names must
    /// be the configured authority or an allowed one (`--azure-allowed-authority-hosts`).
    pub fn check_source(&self, source: &TokenSourceSpec) -> Result<(), InvalidRequest> {
        let Some(a) = &source.authority_host else {
            return Ok(());
        };
        let bad = |problem: String| InvalidRequest { field: "tokenSource.options.authorityhost".into(), problem };
        let asked = parse_authority(a).map_err(bad)?;
        let configured = match &self.credential {
            Some(Credential::WorkloadIdentity { authority, .. }) | Some(Credential::ClientSecret { authority, .. }) => {
                Some(authority)
            }
            _ => None,
        };
        if configured == Some(&asked) || self.opts.allowed_authorities.contains(&asked) {
            return Ok(());
        }
        Err(bad(format!(
            "'{a}' is not an allowed authority; the operator configures authorities with --azure-authority-host \
             and --azure-allowed-authority-hosts (default: the public and sovereign Entra ID hosts)"
        )))
    }

    /// Token requests sent so far (successful or not).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A bearer token for `source`, from the cache when fresh.
    pub async fn bearer(&self, source: &TokenSourceSpec) -> Result<Secret, TokenError> {
        let Some(cred) = &self.credential else {
            return Err(TokenError::NotConfigured);
        };
        let key = (source.resource.clone(), source.tenant_id.clone(), source.authority_host.clone());
        let slot = self.slots.lock().entry(key).or_default().clone();
        // One acquisition per key at a time: concurrent calls wait and share its result.
        let mut entry = slot.lock().await;
        let now = now_ms();
        let decision = decide(entry.as_ref(), now, &self.opts);
        if decision == Decision::Use {
            if let Some(c) = entry.as_ref() {
                return Ok(c.token.clone());
            }
        }
        match self.fetch(cred, source).await {
            Ok((token, expires_at_ms)) => {
                *entry = Some(Cached { token: token.clone(), expires_at_ms, refresh_failed_at_ms: None });
                Ok(token)
            }
            Err(e) => match (decision, entry.as_mut()) {
                (Decision::RefreshOrUse, Some(c)) => {
                    tracing::warn!(error = %e, "token refresh failed; the cached token is still valid and stays in use");
                    c.refresh_failed_at_ms = Some(now);
                    Ok(c.token.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn fetch(&self, cred: &Credential, source: &TokenSourceSpec) -> Result<(Secret, i64), TokenError> {
        let fail = |detail: String| TokenError::Failed {
            source_desc: cred.describe(),
            resource: source.resource.clone(),
            detail,
        };
        let mut attempt = 0u32;
        loop {
            self.fetches.fetch_add(1, Ordering::Relaxed);
            let result = tokio::time::timeout(self.opts.attempt_timeout, self.fetch_once(cred, source)).await;
            let err = match result {
                Ok(Ok(t)) => {
                    tracing::debug!(source = %cred.describe(), resource = %source.resource, "token acquired");
                    crate::metrics::token_acquisition(true);
                    return Ok(t);
                }
                Ok(Err(e)) => e,
                Err(_) => AttemptError {
                    retryable: true,
                    retry_after: None,
                    detail: format!("no answer within {:?}", self.opts.attempt_timeout),
                },
            };
            if !err.retryable || attempt >= self.opts.max_retries {
                let tries = if attempt > 0 { format!(" (after {} attempts)", attempt + 1) } else { String::new() };
                crate::metrics::token_acquisition(false);
                return Err(fail(format!("{}{tries}", err.detail)));
            }
            let backoff = self
                .opts
                .first_backoff
                .saturating_mul(2u32.saturating_pow(attempt))
                .min(self.opts.max_backoff)
                .max(err.retry_after.unwrap_or_default().min(Duration::from_secs(30)));
            tracing::debug!(source = %cred.describe(), detail = %err.detail, ?backoff, "token request failed; retrying");
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }

    async fn fetch_once(&self, cred: &Credential, source: &TokenSourceSpec) -> Result<(Secret, i64), AttemptError> {
        let resource = scope_to_resource(&source.resource);
        let request = match cred {
            Credential::Imds { endpoint, client_id } => {
                let url = mi_url(endpoint, "2018-02-01", &resource, "client_id", client_id);
                self.client.get(url).header("Metadata", "true")
            }
            Credential::AppService { endpoint, header, client_id } => {
                let url = mi_url(endpoint, "2019-08-01", &resource, "client_id", client_id);
                self.client.get(url).header("X-IDENTITY-HEADER", header.expose())
            }
            Credential::LegacyMsi { endpoint, secret, client_id } => {
                let url = mi_url(endpoint, "2017-09-01", &resource, "clientid", client_id);
                self.client.get(url).header("secret", secret.expose())
            }
            Credential::WorkloadIdentity { tenant_id, client_id, token_file, authority } => {
                let assertion = tokio::fs::read_to_string(token_file).await.map_err(|e| AttemptError {
                    retryable: false,
                    retry_after: None,
                    detail: format!("cannot read the federated token file {}: {e}", token_file.display()),
                })?;
                let url = token_url(source, authority, tenant_id, &self.allow)?;
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("scope", &resource_to_scope(&source.resource)),
                    ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                    ("client_assertion", assertion.trim()),
                ];
                self.entra_client.post(url).form(&form)
            }
            Credential::ClientSecret { tenant_id, client_id, secret, authority } => {
                let url = token_url(source, authority, tenant_id, &self.allow)?;
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("scope", &resource_to_scope(&source.resource)),
                    ("client_secret", secret.expose()),
                ];
                self.entra_client.post(url).form(&form)
            }
        };
        let resp = request.send().await.map_err(|e| AttemptError {
            retryable: true,
            retry_after: None,
            detail: format!("request failed: {}", error_chain(&e.without_url())),
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = resp.bytes().await.map_err(|e| AttemptError {
            retryable: true,
            retry_after: None,
            detail: format!("reading the answer failed: {}", error_chain(&e.without_url())),
        })?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let retryable = matches!(status, 404 | 408 | 410 | 429) || status >= 500;
            return Err(AttemptError { retryable, retry_after, detail: format!("HTTP {status}{}", error_text(&body)) });
        }
        let token = match body.get("access_token") {
            Some(Value::String(t)) if !t.is_empty() => Secret::new(t.clone()),
            _ => {
                return Err(AttemptError {
                    retryable: false,
                    retry_after: None,
                    detail: format!("HTTP {status} without an access_token"),
                })
            }
        };
        let now = now_ms();
        // No expiry at all: keep it briefly rather than forever.
        let expires_at = expiry_ms(&body, now).unwrap_or(now + 10 * 60 * 1000);
        Ok((token, expires_at))
    }
}

fn mi_url(endpoint: &Url, api_version: &str, resource: &str, id_param: &str, client_id: &Option<String>) -> Url {
    let mut url = endpoint.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("api-version", api_version).append_pair("resource", resource);
        if let Some(id) = client_id {
            q.append_pair(id_param, id);
        }
    }
    url
}

/// `{authority}{tenant}/oauth2/v2.0/token`. The authority was allowed by [`Tokens::check_source`]
/// (or is the configured one); the tenant is checked again here and only fills one path
/// segment; the URL passes the outbound address guard.
fn token_url(
    source: &TokenSourceSpec,
    authority: &Url,
    tenant: &str,
    allow: &super::ssrf::Allow,
) -> Result<Url, AttemptError> {
    let bad = |detail: String| AttemptError { retryable: false, retry_after: None, detail };
    let mut url = match &source.authority_host {
        Some(a) => parse_authority(a).map_err(bad)?,
        None => authority.clone(),
    };
    let tenant = source.tenant_id.as_deref().unwrap_or(tenant);
    if !super::request::valid_tenant(tenant) {
        return Err(bad(format!("tenant '{tenant}' is not a GUID or a domain name")));
    }
    url.path_segments_mut()
        .map_err(|()| bad("the authority cannot have a path".into()))?
        .pop_if_empty()
        .extend([tenant, "oauth2", "v2.0", "token"]);
    super::ssrf::check_url(&url, allow).map_err(|b| bad(b.to_string()))?;
    Ok(url)
}

/// An Entra ID authority URL, with a trailing slash; `https` unless the host is loopback
/// (tests), because client secrets and assertions travel to it.
pub fn parse_authority(s: &str) -> Result<Url, String> {
    let mut u = super::request::parse_http_url(s).map_err(|p| format!("authority host: {p}"))?;
    let loopback = match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if u.scheme() != "https" && !loopback {
        return Err(format!("authority host '{s}' must use https"));
    }
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    Ok(u)
}

/// The error fields of a token endpoint's error body, briefly.
fn error_text(body: &Value) -> String {
    let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let nested = body.get("error").and_then(|e| e.get("message")).and_then(Value::as_str).map(str::to_string);
    let parts: Vec<String> = [field("error"), field("error_description").or(nested).or_else(|| field("message"))]
        .into_iter()
        .flatten()
        .collect();
    if parts.is_empty() {
        return String::new();
    }
    let mut s = format!(": {}", parts.join(": "));
    if s.len() > 300 {
        let mut cut = 300;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// An error and its causes on one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use axum::extract::{Path, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum::{Form, Json, Router};

    fn loopback() -> Arc<crate::durable_http::ssrf::Allow> {
        Arc::new(crate::durable_http::ssrf::Allow::parse(&["127.0.0.0/8"]).expect("allow"))
    }

    fn opts() -> TokenOptions {
        TokenOptions {
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            attempt_timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }

    fn cached(expires_at_ms: i64, failed: Option<i64>) -> Cached {
        Cached { token: Secret::new("t"), expires_at_ms, refresh_failed_at_ms: failed }
    }

    #[test]
    fn cache_decisions() {
        let o = TokenOptions::default();
        let hour = 3_600_000;
        assert_eq!(decide(None, 0, &o), Decision::Fetch);
        assert_eq!(decide(Some(&cached(hour, None)), 0, &o), Decision::Use);
        // 5 minutes early: refresh, but keep the old one if that fails.
        assert_eq!(decide(Some(&cached(hour, None)), hour - 300_000, &o), Decision::RefreshOrUse);
        assert_eq!(decide(Some(&cached(hour, None)), hour - 300_001, &o), Decision::Use);
        // A failed refresh is not retried for 30 s while the token is valid.
        assert_eq!(decide(Some(&cached(hour, Some(hour - 100_000))), hour - 90_000, &o), Decision::Use);
        assert_eq!(decide(Some(&cached(hour, Some(hour - 100_000))), hour - 70_000, &o), Decision::RefreshOrUse);
        // Expired: a fresh token or nothing.
        assert_eq!(decide(Some(&cached(hour, None)), hour, &o), Decision::Fetch);
        assert_eq!(decide(Some(&cached(hour, Some(hour - 1))), hour + 1, &o), Decision::Fetch);
    }

    #[test]
    fn parses_expiry_formats() {
        let now = 1_000_000_000;
        let j = |s: &str| serde_json::from_str::<Value>(s).expect("json");
        assert_eq!(expiry_ms(&j(r#"{"expires_in":"3599","expires_on":"1"}"#), now), Some(now + 3_599_000));
        assert_eq!(expiry_ms(&j(r#"{"expires_in":3599}"#), now), Some(now + 3_599_000));
        assert_eq!(expiry_ms(&j(r#"{"expires_on":"1700000000"}"#), now), Some(1_700_000_000_000));
        assert_eq!(expiry_ms(&j(r#"{"expires_on":1700000000}"#), now), Some(1_700_000_000_000));
        // 2019-06-20T02:57:58Z = 1560999478
        assert_eq!(expiry_ms(&j(r#"{"expires_on":"06/20/2019 02:57:58 +00:00"}"#), now), Some(1_560_999_478_000));
        // 2020-01-16T05:24:12Z = 1579152252; PM and offsets
        assert_eq!(expiry_ms(&j(r#"{"expires_on":"1/16/2020 5:24:12 AM +00:00"}"#), now), Some(1_579_152_252_000));
        assert_eq!(
            expiry_ms(&j(r#"{"expires_on":"1/16/2020 5:24:12 PM +01:00"}"#), now),
            Some((1_579_152_252 + 12 * 3600 - 3600) * 1000)
        );
        assert_eq!(expiry_ms(&j(r#"{"expires_on":"1/16/2020 12:00:00 AM +00:00"}"#), now), Some(1_579_132_800_000));
        assert_eq!(expiry_ms(&j(r#"{"expires_on":"13/16/2020 5:24:12 +00:00"}"#), now), None);
        assert_eq!(expiry_ms(&j(r#"{"access_token":"x"}"#), now), None);
    }

    #[test]
    fn scopes_and_resources() {
        assert_eq!(
            scope_to_resource("https://management.core.windows.net/.default"),
            "https://management.core.windows.net"
        );
        assert_eq!(scope_to_resource("https://vault.azure.net"), "https://vault.azure.net");
        assert_eq!(resource_to_scope("https://vault.azure.net/"), "https://vault.azure.net/.default");
        assert_eq!(resource_to_scope("api://x/.default"), "api://x/.default");
        assert!(parse_authority("http://login.example/").is_err());
        assert_eq!(parse_authority("http://127.0.0.1:9").expect("loopback").as_str(), "http://127.0.0.1:9/");
        assert_eq!(
            parse_authority("https://login.example/base").expect("https").as_str(),
            "https://login.example/base/"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("very-secret");
        assert_eq!(format!("{s:?}"), "***");
        let c = Credential::AppService {
            endpoint: Url::parse("http://127.0.0.1:1/msi/token?x=1").expect("url"),
            header: s,
            client_id: None,
        };
        assert!(!format!("{c:?}").contains("very-secret"));
        assert!(!c.describe().contains("very-secret"));
    }

    /// Query and headers of one token request.
    type Asked = (HashMap<String, String>, HeaderMap);

    /// A fake identity endpoint recording what it was asked.
    #[derive(Clone, Default)]
    struct Fake {
        seen: Arc<Mutex<Vec<Asked>>>,
        forms: Arc<Mutex<Vec<HashMap<String, String>>>>,
        fail_first: Arc<Mutex<u32>>,
    }

    async fn mi(
        State(f): State<Fake>,
        Query(q): Query<HashMap<String, String>>,
        h: HeaderMap,
    ) -> axum::response::Response {
        f.seen.lock().expect("lock").push((q.clone(), h));
        {
            let mut n = f.fail_first.lock().expect("lock");
            if *n > 0 {
                *n -= 1;
                return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
            }
        }
        if q.get("resource").map(String::as_str) == Some("https://denied") {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error":"invalid_request","error_description":"Identity not found"})),
            )
                .into_response();
        }
        Json(serde_json::json!({
            "access_token": format!("tok-{}", q.get("resource").cloned().unwrap_or_default()),
            "expires_in": "3599",
            "expires_on": "1999999999",
            "token_type": "Bearer",
        }))
        .into_response()
    }

    async fn entra(
        State(f): State<Fake>,
        Path(tenant): Path<String>,
        Form(mut form): Form<HashMap<String, String>>,
    ) -> axum::response::Response {
        form.insert("_tenant".into(), tenant);
        f.forms.lock().expect("lock").push(form);
        Json(serde_json::json!({"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"entra-token"}))
            .into_response()
    }

    async fn serve(fake: Fake) -> String {
        let app =
            Router::new().route("/mi", get(mi)).route("/{tenant}/oauth2/v2.0/token", post(entra)).with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    fn spec(resource: &str) -> TokenSourceSpec {
        TokenSourceSpec { resource: resource.into(), tenant_id: None, authority_host: None }
    }

    #[tokio::test]
    async fn managed_identity_sources_send_the_documented_requests() {
        let fake = Fake::default();
        let base = serve(fake.clone()).await;
        let endpoint = Url::parse(&format!("{base}/mi")).expect("url");
        let cases = vec![
            (
                Credential::Imds { endpoint: endpoint.clone(), client_id: Some("cid".into()) },
                "2018-02-01",
                "metadata",
                "true",
                "client_id",
            ),
            (
                Credential::AppService {
                    endpoint: endpoint.clone(),
                    header: Secret::new("hdr"),
                    client_id: Some("cid".into()),
                },
                "2019-08-01",
                "x-identity-header",
                "hdr",
                "client_id",
            ),
            (
                Credential::LegacyMsi {
                    endpoint: endpoint.clone(),
                    secret: Secret::new("sec"),
                    client_id: Some("cid".into()),
                },
                "2017-09-01",
                "secret",
                "sec",
                "clientid",
            ),
        ];
        for (cred, version, header, value, id_param) in cases {
            fake.seen.lock().expect("lock").clear();
            let tokens = Tokens::new(Some(cred), opts(), loopback()).expect("tokens");
            let t = tokens.bearer(&spec("https://management.core.windows.net/.default")).await.expect("token");
            assert_eq!(t.expose(), "tok-https://management.core.windows.net");
            // Cached: a second call does not ask again.
            let t2 = tokens.bearer(&spec("https://management.core.windows.net/.default")).await.expect("token");
            assert_eq!(t2, t);
            assert_eq!(tokens.fetch_count(), 1);
            let seen = fake.seen.lock().expect("lock").clone();
            assert_eq!(seen.len(), 1);
            let (q, h) = &seen[0];
            assert_eq!(q["api-version"], version);
            assert_eq!(q["resource"], "https://management.core.windows.net", "resource = scope minus /.default");
            assert_eq!(q[id_param], "cid");
            assert_eq!(h.get(header).and_then(|v| v.to_str().ok()), Some(value));
        }
    }

    #[tokio::test]
    async fn retries_5xx_and_reports_4xx() {
        let fake = Fake::default();
        let base = serve(fake.clone()).await;
        let endpoint = Url::parse(&format!("{base}/mi")).expect("url");
        let tokens =
            Tokens::new(Some(Credential::Imds { endpoint, client_id: None }), opts(), loopback()).expect("tokens");
        *fake.fail_first.lock().expect("lock") = 2;
        let t = tokens.bearer(&spec("https://r1")).await.expect("token after retries");
        assert_eq!(t.expose(), "tok-https://r1");
        assert_eq!(tokens.fetch_count(), 3);
        let e = tokens.bearer(&spec("https://denied")).await.expect_err("400 is not retried");
        assert_eq!(tokens.fetch_count(), 4);
        let msg = e.to_string();
        assert!(msg.contains("HTTP 400") && msg.contains("invalid_request") && msg.contains("IMDS"), "{msg}");
        // Unreachable endpoint: retried, then a clear error.
        let dead = Url::parse("http://127.0.0.1:9/mi").expect("url");
        let mut o = opts();
        o.max_retries = 1;
        let tokens =
            Tokens::new(Some(Credential::Imds { endpoint: dead, client_id: None }), o, loopback()).expect("tokens");
        let e = tokens.bearer(&spec("https://r1")).await.expect_err("no endpoint");
        assert!(e.to_string().contains("after 2 attempts"), "{e}");
        let none = Tokens::new(None, opts(), loopback()).expect("tokens");
        assert_eq!(none.bearer(&spec("https://r1")).await, Err(TokenError::NotConfigured));
    }

    #[tokio::test]
    async fn entra_flows_post_the_documented_forms() {
        let fake = Fake::default();
        let base = serve(fake.clone()).await;
        let authority = parse_authority(&base).expect("authority");
        let dir = std::env::temp_dir().join(format!("duro-fed-{}", uuid::Uuid::new_v4()));
        std::fs::write(&dir, "federated-jwt\n").expect("write");
        let wi = Credential::WorkloadIdentity {
            tenant_id: "tenant1".into(),
            client_id: "app1".into(),
            token_file: dir.clone(),
            authority: authority.clone(),
        };
        let tokens = Tokens::new(Some(wi), opts(), loopback()).expect("tokens");
        let t = tokens.bearer(&spec("https://vault.azure.net")).await.expect("token");
        assert_eq!(t.expose(), "entra-token");
        let cs = Credential::ClientSecret {
            tenant_id: "tenant1".into(),
            client_id: "app2".into(),
            secret: Secret::new("s3cret"),
            authority,
        };
        let tokens = Tokens::new(Some(cs), opts(), loopback()).expect("tokens");
        // The request's tenant option overrides the configured tenant.
        let mut s = spec("https://vault.azure.net/.default");
        s.tenant_id = Some("tenant2".into());
        tokens.bearer(&s).await.expect("token");
        let _ = std::fs::remove_file(&dir);
        let forms = fake.forms.lock().expect("lock").clone();
        assert_eq!(forms.len(), 2);
        assert_eq!(forms[0]["grant_type"], "client_credentials");
        assert_eq!(forms[0]["client_id"], "app1");
        assert_eq!(forms[0]["scope"], "https://vault.azure.net/.default");
        assert_eq!(forms[0]["client_assertion_type"], "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        assert_eq!(forms[0]["client_assertion"], "federated-jwt");
        assert_eq!(forms[0]["_tenant"], "tenant1");
        assert_eq!(forms[1]["_tenant"], "tenant2");
        assert_eq!(forms[1]["client_id"], "app2");
        assert_eq!(forms[1]["client_secret"], "s3cret");
        assert_eq!(forms[1]["scope"], "https://vault.azure.net/.default");
    }
}
