//! A `duro` process for one test: free ports, its own store and log file, waiting until it
//! serves, `kill -9` / SIGTERM / restart on the same ports and store.

use std::fs::OpenOptions;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{duro_bin, free_port, test_dir, TestDir};

/// How long a starting sidecar may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Log filter of test sidecars unless [`SidecarBuilder::log_level`] says otherwise.
const DEFAULT_LOG_LEVEL: &str = "duro=debug,info";

/// Options of a [`Sidecar`] to start; from [`Sidecar::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start`"]
pub struct SidecarBuilder {
    dir: Option<PathBuf>,
    host: String,
    args: Vec<String>,
    http_api: bool,
    log_level: String,
    env: Vec<(String, String)>,
    /// A PostgreSQL URL and task hub instead of the SQLite file.
    postgres: Option<(String, String)>,
}

impl SidecarBuilder {
    /// Stores in the PostgreSQL task hub `hub` at `url` instead of a SQLite file (several
    /// sidecars given the same hub share it).
    pub fn postgres(mut self, url: &str, hub: &str) -> Self {
        self.postgres = Some((url.to_string(), hub.to_string()));
        self
    }

    /// Keeps the store (`duro.db`) and the log (`duro.log`) in `dir`, which the caller owns
    /// (for example to reopen the store afterwards). By default the sidecar has a temporary
    /// directory of its own, removed when it is dropped.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// The address the gRPC server listens on: `127.0.0.1` by default; another 127/8
    /// address (Linux routes all of them to `lo`) such as `127.0.0.2` is one Duro does not
    /// treat as loopback, for security tests.
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_string();
        self
    }

    /// One more command-line argument for `duro`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// More command-line arguments for `duro`. An `--http-listen ADDR` among them is served
    /// instead of the default `off`, and waited for like the gRPC port.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Serves the HTTP management API on a free loopback port ([`Sidecar::http_url`]).
    /// Without it (and without `--http-listen` in the arguments) the API is off, so that
    /// parallel tests do not compete for its default port.
    pub fn http_api(mut self) -> Self {
        self.http_api = true;
        self
    }

    /// Lets durable HTTP calls reach `127.0.0.1` (`--http-allow 127.0.0.1`), where tests run
    /// their fake services; Duro refuses loopback targets by default.
    pub fn allow_loopback_http(self) -> Self {
        self.args(["--http-allow", "127.0.0.1"])
    }

    /// The `--log-level` filter (default `duro=debug,info`).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// An environment variable for `duro`. Other `DURO_*` variables of the test's own
    /// environment are not passed on: a sidecar under test is configured by its builder.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts `duro` and waits until it accepts gRPC (and HTTP API) connections; panics
    /// with its log if it exits or does not listen within 30 s.
    pub fn start(self) -> Sidecar {
        let (own_dir, dir) = match self.dir {
            Some(dir) => (None, dir),
            None => {
                let own = test_dir();
                let path = own.path().to_path_buf();
                (Some(own), path)
            }
        };
        let port = free_port();
        let mut args = vec!["--listen".to_string(), format!("{}:{port}", self.host)];
        match self.postgres.or_else(postgres_from_env) {
            Some((url, hub)) => args.extend(["--db".to_string(), url, "--task-hub".to_string(), hub]),
            None => args.extend(["--db".to_string(), dir.join("duro.db").display().to_string()]),
        }
        args.extend(["--log-level".to_string(), self.log_level]);
        if http_listen_arg(&self.args).is_none() {
            let http = if self.http_api { format!("127.0.0.1:{}", free_port()) } else { "off".to_string() };
            args.extend(["--http-listen".to_string(), http]);
        }
        args.extend(self.args);
        let http = http_listen_arg(&args).and_then(connect_address);
        let mut sidecar = Sidecar {
            port,
            host: self.host,
            http,
            db: dir.join("duro.db"),
            log: dir.join("duro.log"),
            dir,
            args,
            env: self.env,
            child: None,
            _own_dir: own_dir,
        };
        sidecar.spawn();
        sidecar
    }
}

/// A running `duro` process, killed (SIGKILL) on drop unless stopped first.
///
/// `DURO_TEST_SHOW_LOG=1` prints its warnings and errors when it is dropped;
/// `DURO_KEEP_TEST_DIRS=1` keeps its directory (store and log) for a post-mortem.
#[derive(Debug)]
pub struct Sidecar {
    port: u16,
    host: String,
    /// Where the HTTP API answers (host, port), if it is on.
    http: Option<(String, u16)>,
    dir: PathBuf,
    db: PathBuf,
    log: PathBuf,
    /// Every argument `duro` is started with (the same on a restart).
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    _own_dir: Option<TestDir>,
}

impl Sidecar {
    /// Options for a sidecar to start.
    pub fn builder() -> SidecarBuilder {
        SidecarBuilder {
            dir: None,
            host: "127.0.0.1".to_string(),
            args: Vec::new(),
            http_api: false,
            log_level: DEFAULT_LOG_LEVEL.to_string(),
            env: Vec::new(),
            postgres: None,
        }
    }

    /// A sidecar with the defaults: gRPC on a free loopback port, HTTP API off, a temporary
    /// store of its own.
    pub fn start() -> Sidecar {
        Self::builder().start()
    }

    /// The gRPC port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the gRPC server listens on (`127.0.0.1` unless the builder said).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The gRPC endpoint for clients and workers: `http://HOST:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// The HTTP API's port; panics if the sidecar serves none.
    pub fn http_port(&self) -> u16 {
        self.http_address().1
    }

    /// The HTTP API's origin, `http://127.0.0.1:PORT`; panics if the sidecar serves none.
    pub fn http_url(&self) -> String {
        let (host, port) = self.http_address();
        format!("http://{host}:{port}")
    }

    fn http_address(&self) -> (&str, u16) {
        match &self.http {
            Some((host, port)) => (host, *port),
            None => panic!("this sidecar has no HTTP API: start it with SidecarBuilder::http_api()"),
        }
    }

    /// The SQLite store.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// The directory of the store and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log file (stderr of every run of the process, appended).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the sidecar logged so far, over all its runs.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Process id of the running binary.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (not exited, killed or stopped).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`: no chance to flush or clean up. A no-op if it is not running.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to 20 s, then SIGKILL) for it to exit; returns whether it exited
    /// successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` (if running), then starts the binary again on the same ports, store and
    /// arguments, and waits until it serves.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    fn spawn(&mut self) {
        let bin = duro_bin();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open the sidecar log {}: {e}", self.log.display()));
        let mut cmd = Command::new(&bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DURO_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
        self.child = Some(child);
        self.wait_until_serving();
    }

    /// Waits until the gRPC port (and the HTTP API's, if on) accept connections.
    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let grpc = (self.host.clone(), self.port);
        let mut waiting: Vec<(String, u16)> = std::iter::once(grpc).chain(self.http.clone()).collect();
        while !waiting.is_empty() {
            waiting.retain(|(host, port)| TcpStream::connect((host.as_str(), *port)).is_err());
            if waiting.is_empty() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!("duro ({}) exited with {status} before serving; log:\n{}", self.args.join(" "), self.log_text());
            }
            if Instant::now() > deadline {
                panic!("duro did not listen on {waiting:?} within {START_TIMEOUT:?}; log:\n{}", self.log_tail(50));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill9();
        if std::env::var_os("DURO_TEST_SHOW_LOG").is_some() {
            for line in self.log_text().lines().filter(|l| l.contains("WARN") || l.contains("ERROR")) {
                eprintln!("[duro:{}] {line}", self.port);
            }
        }
    }
}

/// The value of the last `--http-listen` in `args` (`--http-listen ADDR` or
/// `--http-listen=ADDR`).
/// With `DURO_TEST_STORE=postgres`, every sidecar a test starts without a store of its own
/// choosing gets a fresh task hub on `$DURO_TEST_PG_URL`: how the whole suite runs on
/// PostgreSQL.
fn postgres_from_env() -> Option<(String, String)> {
    if std::env::var("DURO_TEST_STORE").ok()?.as_str() != "postgres" {
        return None;
    }
    let url = std::env::var("DURO_TEST_PG_URL")
        .unwrap_or_else(|_| panic!("DURO_TEST_STORE=postgres needs DURO_TEST_PG_URL (scripts/pg.sh starts a server)"));
    Some((url, crate::Postgres::hub_name()))
}

fn http_listen_arg(args: &[String]) -> Option<&str> {
    let mut found = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--http-listen" {
            found = iter.next().map(String::as_str);
        } else if let Some(value) = arg.strip_prefix("--http-listen=") {
            found = Some(value);
        }
    }
    found
}

/// Where to connect to reach a server listening on `listen` (`HOST:PORT`, `[V6]:PORT`):
/// a wildcard host is reached on loopback; `off` and port 0 have nothing to wait for.
fn connect_address(listen: &str) -> Option<(String, u16)> {
    let (host, port) = listen.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = match host {
        "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        h => h,
    };
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_the_http_listen_argument_in_both_spellings() {
        assert_eq!(http_listen_arg(&strings(&["--db", "x", "--http-listen", "127.0.0.1:7"])), Some("127.0.0.1:7"));
        assert_eq!(http_listen_arg(&strings(&["--http-listen=off"])), Some("off"));
        assert_eq!(
            http_listen_arg(&strings(&["--http-listen", "off", "--http-listen", "127.0.0.1:9"])),
            Some("127.0.0.1:9")
        );
        assert_eq!(http_listen_arg(&strings(&["--http-allow", "127.0.0.1"])), None);
        assert_eq!(http_listen_arg(&strings(&["--http-listen"])), None);
    }

    #[test]
    fn waits_for_the_http_api_where_it_can_be_reached() {
        assert_eq!(connect_address("127.0.0.1:7071"), Some(("127.0.0.1".to_string(), 7071)));
        assert_eq!(connect_address("0.0.0.0:80"), Some(("127.0.0.1".to_string(), 80)));
        assert_eq!(connect_address("[::]:81"), Some(("::1".to_string(), 81)));
        assert_eq!(connect_address("[::1]:82"), Some(("::1".to_string(), 82)));
        assert_eq!(connect_address("off"), None);
        assert_eq!(connect_address("127.0.0.1:0"), None);
        assert_eq!(connect_address("127.0.0.1:x"), None);
    }
}
