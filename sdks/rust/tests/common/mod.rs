//! Test harness: runs the real `duro` binary on a free port with its own SQLite database.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duro_sdk::{Client, Registry, Worker, WorkerHandle, WorkerOptions};

/// `$DURO_BIN`, else `<target dir>/<profile>/duro` (two parents up from this test executable,
/// which lives in `<target dir>/<profile>/deps/`).
pub fn duro_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DURO_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    profile_dir.join(if cfg!(windows) { "duro.exe" } else { "duro" })
}

/// A loopback port nothing listens on, never the same one twice in this process: tests
/// run in parallel, and two sidecars given one port would leave a test talking to the
/// other test's sidecar.
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut handed = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
}

/// A running sidecar; killed on drop.
pub struct Sidecar {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Sidecar {
    pub fn start() -> Sidecar {
        let mut s = Sidecar { port: free_port(), dir: tempfile::tempdir().expect("tempdir"), child: None };
        s.spawn();
        s
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("duro.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let bin = duro_bin();
        assert!(
            bin.exists(),
            "duro binary not found at {} (run `cargo build -p duro` first or set DURO_BIN)",
            bin.display()
        );
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log");
        let child = Command::new(&bin)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--db")
            .arg(self.dir.path().join("duro.db"))
            .arg("--log-level")
            .arg("info")
            // The durable HTTP targets of the tests are on loopback, refused by default.
            .arg("--http-allow")
            .arg("127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn duro");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "duro did not start listening; log:\n{}", self.log());
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("duro exited with {status}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.address()).await.expect("client connect")
    }

    /// `kill -9`, then start again on the same port and database.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
        // DURO_TEST_SHOW_LOG=1 prints the sidecar's warnings and errors (debugging aid).
        if std::env::var_os("DURO_TEST_SHOW_LOG").is_some() {
            for line in self.log().lines().filter(|l| l.contains("WARN") || l.contains("ERROR")) {
                eprintln!("[duro:{}] {line}", self.port);
            }
        }
    }
}

/// Options that make tests fast: quick reconnects and a short grace period.
pub fn test_options() -> WorkerOptions {
    WorkerOptions::default()
        .with_reconnect_delays(Duration::from_millis(50), Duration::from_millis(500))
        .with_shutdown_timeout(Duration::from_secs(5))
}

/// Starts a worker with `registry` and waits until its stream is open.
pub async fn start_worker(sidecar: &Sidecar, registry: Registry) -> WorkerHandle {
    start_worker_with(sidecar, registry, test_options()).await
}

pub async fn start_worker_with(sidecar: &Sidecar, registry: Registry, options: WorkerOptions) -> WorkerHandle {
    let handle =
        Worker::new(sidecar.address()).with_options(options).with_registry(registry).start().expect("start worker");
    assert!(handle.wait_until_connected(Duration::from_secs(20)).await, "worker did not connect");
    handle
}

pub const WAIT: Duration = Duration::from_secs(60);

/// Polls the instance until `done` holds (or panics after 60 s): for conditions the sidecar
/// cannot wait on, like "the child exists" or "the custom status says X".
pub async fn poll_until(
    client: &Client,
    instance_id: &str,
    done: impl Fn(&duro_sdk::OrchestrationMetadata) -> bool,
) -> duro_sdk::OrchestrationMetadata {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(m) = client.get_orchestration(instance_id, true).await.expect("get") {
            if done(&m) {
                return m;
            }
        }
        assert!(Instant::now() < deadline, "instance '{instance_id}' never reached the expected state");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
