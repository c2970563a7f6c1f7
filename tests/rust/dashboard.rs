//! The dashboard's access control and escaping, against the real `duro` binary with a plain
//! HTTP client (the browser suite in `tests/dashboard/` covers the pages themselves): a
//! non-loopback listener with a system key (login form, session cookie, CSRF and origin
//! checks), the open loopback default (Host check, escaping, security headers), and an
//! action the management API refuses.

use std::time::{Duration, Instant};

use duro_tests::*;
use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::redirect::Policy;

const KEY: &str = "dashboard-system-key-0123456789";
const API: &str = "/runtime/webhooks/durabletask";
const XSS: &str = "\"<img src=x onerror=alert(1)>\"";

struct Dash {
    _sidecar: Sidecar,
    base: String,
    http: reqwest::Client,
    _dir: TestDir,
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The value of the form field `name` (the first), as rendered.
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let at = self.body.find(&marker).unwrap_or_else(|| panic!("no field {name} in {}", self.body));
        let rest = &self.body[at + marker.len()..];
        rest[..rest.find('"').expect("closing quote")].to_string()
    }
}

impl Dash {
    /// `listen`: the HTTP listener's IP; the client always connects through 127.0.0.1.
    fn start(listen: &str, extra: &[&str]) -> Dash {
        let dir = test_dir();
        let port = free_port();
        let addr = format!("{listen}:{port}");
        let mut args = vec!["--http-listen", addr.as_str()];
        args.extend_from_slice(extra);
        let sidecar = Sidecar::builder().dir(dir.path()).args(&args).start();
        let http = reqwest::Client::builder().redirect(Policy::none()).build().expect("client");
        Dash { _sidecar: sidecar, base: format!("http://127.0.0.1:{port}"), http, _dir: dir }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        Resp { status, headers, body: r.text().await.expect("body") }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Resp {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        self.send(req).await
    }

    async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)], origin: Option<&str>) -> Resp {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        self.send(req).await
    }

    async fn api_status(&self, id: &str, key: Option<&str>) -> String {
        let mut req = self.http.get(format!("{}{API}/instances/{id}", self.base));
        if let Some(k) = key {
            req = req.header("x-functions-key", k);
        }
        let r = self.send(req).await;
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        v["runtimeStatus"].as_str().unwrap_or_default().to_string()
    }

    async fn start_instance(&self, id: &str, input: &str, key: Option<&str>) {
        let mut req = self
            .http
            .post(format!("{}{API}/orchestrators/Flow/{id}", self.base))
            .header("content-type", "application/json")
            .body(input.to_string());
        if let Some(k) = key {
            req = req.header("x-functions-key", k);
        }
        assert_eq!(self.send(req).await.status, 202);
    }
}

/// `name=value` of a `Set-Cookie` header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or_default().to_string()
}

async fn wait_api_status(d: &Dash, id: &str, key: Option<&str>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = d.api_status(id, key).await;
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "{id} stayed {s}, wanted {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_non_loopback_listener_asks_for_the_key_once_and_keeps_a_signed_session() {
    let d = Dash::start("0.0.0.0", &["--http-system-key", KEY]);
    // Pages send the visitor to the login form; the key is not accepted in the URL or a header.
    for (path, header) in
        [("/dashboard", None), (&format!("/dashboard?code={KEY}") as &str, None), ("/dashboard", Some(KEY))]
    {
        let mut req = d.http.get(format!("{}{path}", d.base));
        if let Some(k) = header {
            req = req.header("x-functions-key", k);
        }
        let r = d.send(req).await;
        assert_eq!((r.status, r.header("location")), (303, "/dashboard/login"), "{path}");
    }
    let login = d.get("/dashboard/login", None).await;
    assert_eq!(login.status, 200);
    assert!(login.body.contains("type=\"password\""));
    // A wrong key: 401, no session.
    let wrong = d.post("/dashboard/login", None, &[("key", "not-the-key")], None).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.headers.get(SET_COOKIE).is_none());
    // A login form posted from another site is refused before the key is looked at.
    let cross = d.post("/dashboard/login", None, &[("key", KEY)], Some("http://evil.example")).await;
    assert_eq!(cross.status, 403);
    assert!(cross.headers.get(SET_COOKIE).is_none());
    // The right key: a session cookie that is not the key.
    let ok = d.post("/dashboard/login", None, &[("key", KEY)], Some(&d.base)).await;
    assert_eq!((ok.status, ok.header("location")), (303, "/dashboard"));
    let set = ok.header("set-cookie").to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    assert!(!set.contains("Secure"), "plain http without a proxy saying https: {set}");
    assert!(!set.contains(KEY), "the cookie holds a signed token, not the key");
    let cookie = cookie_pair(&set);
    assert_eq!(d.get("/dashboard", Some(&cookie)).await.status, 200);
    // A tampered session is refused.
    let tampered = cookie.replacen(".", "x.", 1);
    assert_eq!(d.get("/dashboard", Some(&tampered)).await.status, 303);

    d.start_instance("held-1", "1", Some(KEY)).await;
    let page = d.get("/dashboard/instances/held-1", Some(&cookie)).await;
    assert_eq!(page.status, 200);
    let csrf = page.field("csrf");
    // No token, a wrong token, another origin, no session: refused, and nothing changes.
    let terminate = "/dashboard/instances/held-1/terminate";
    assert_eq!(d.post(terminate, Some(&cookie), &[], None).await.status, 403);
    assert_eq!(d.post(terminate, Some(&cookie), &[("csrf", "AAAA")], None).await.status, 403);
    assert_eq!(d.post(terminate, Some(&cookie), &[("csrf", &csrf)], Some("http://evil.example")).await.status, 403);
    assert_eq!(d.post(terminate, None, &[("csrf", &csrf)], None).await.status, 401);
    // Another session's token does not fit this session.
    let other = cookie_pair(d.post("/dashboard/login", None, &[("key", KEY)], None).await.header("set-cookie"));
    let other_csrf = d.get("/dashboard/instances/held-1", Some(&other)).await.field("csrf");
    assert_ne!(other_csrf, csrf);
    assert_eq!(d.post(terminate, Some(&cookie), &[("csrf", &other_csrf)], None).await.status, 403);
    assert_eq!(d.api_status("held-1", Some(KEY)).await, "Pending");
    // The session's token: accepted.
    let done = d.post(terminate, Some(&cookie), &[("csrf", &csrf), ("reason", "enough")], Some(&d.base)).await;
    assert_eq!((done.status, done.header("location")), (303, "/dashboard/instances/held-1?done=terminate"));
    wait_api_status(&d, "held-1", Some(KEY), "Terminated").await;
    // Signing out clears the cookie.
    let out = d.post("/dashboard/logout", Some(&cookie), &[("csrf", &csrf)], None).await;
    assert_eq!((out.status, out.header("location")), (303, "/dashboard/login"));
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    // A copy of the signed-out cookie no longer works; the other session still does.
    assert_eq!(d.get("/dashboard", Some(&cookie)).await.status, 303);
    assert_eq!(d.get("/dashboard", Some(&other)).await.status, 200);
}

#[tokio::test]
async fn the_open_loopback_dashboard_checks_the_host_and_shows_payloads_as_text() {
    let d = Dash::start("127.0.0.1", &[]);
    // DNS rebinding: a page of another site reaching 127.0.0.1 under its own name is refused.
    let rebound = d.send(d.http.get(format!("{}/dashboard", d.base)).header("host", "attacker.example")).await;
    assert_eq!(rebound.status, 403);
    let first = d.get("/dashboard", None).await;
    assert_eq!(first.status, 200);
    assert!(first.header("content-security-policy").contains("script-src 'self'"));
    assert_eq!(first.header("x-frame-options"), "DENY");
    let cookie = cookie_pair(first.header("set-cookie"));
    assert!(cookie.starts_with("duro_dashboard="), "an open session carries the CSRF token: {cookie}");

    d.start_instance("xss-1", XSS, None).await;
    let page = d.get("/dashboard/instances/xss-1", Some(&cookie)).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("&lt;img src=x onerror=alert(1)&gt;"), "{}", page.body);
    assert!(!page.body.contains("<img src=x"), "markup from a payload was rendered");
    // A form without a session (another site's page cannot have one): refused.
    let csrf = page.field("csrf");
    assert_eq!(d.post("/dashboard/instances/xss-1/terminate", None, &[("csrf", &csrf)], None).await.status, 403);
    // An action the API refuses: its status, code and message are shown.
    let purge = d.post("/dashboard/instances/xss-1/purge", Some(&cookie), &[("csrf", &csrf)], None).await;
    assert_eq!(purge.status, 409);
    assert!(purge.body.contains("DURO-2011") && purge.body.contains("only finished instances can be purged"));
    assert_eq!(d.api_status("xss-1", None).await, "Pending");
    // Unknown pages and ids.
    assert_eq!(d.get("/dashboard/instances/nobody", Some(&cookie)).await.status, 404);
    assert_eq!(d.get("/dashboard/nowhere", Some(&cookie)).await.status, 404);
    assert_eq!(d.get("/dashboard/instances/x/terminate", Some(&cookie)).await.status, 404, "actions are POST only");
}

#[tokio::test]
async fn an_insecure_non_loopback_listener_serves_an_open_dashboard_without_a_host_check() {
    let d = Dash::start("0.0.0.0", &["--http-insecure"]);
    let r = d.send(d.http.get(format!("{}/dashboard", d.base)).header("host", "duro.internal:7071")).await;
    assert_eq!(r.status, 200, "the operator chose an open API; the dashboard follows it");
}
