//! Shared test helper for the Rust samples (included with `#[path]`): runs the real `duro`
//! binary (`$DURO_BIN`, else `<repo>/target/debug/duro`) on a free port with its own database.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn duro_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DURO_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/duro")
}

/// A loopback port nothing listens on, never the same one twice in this process: tests
/// run in parallel, and two sidecars given one port would leave a test talking to the
/// other test's sidecar.
pub fn free_port() -> u16 {
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

/// A running sidecar; killed (SIGKILL) on drop.
pub struct Sidecar {
    pub port: u16,
    pub extra_args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Sidecar {
    pub fn start() -> Sidecar {
        Self::start_with(Vec::new())
    }

    pub fn start_with(extra_args: Vec<String>) -> Sidecar {
        let mut s = Sidecar { port: free_port(), extra_args, dir: tempfile::tempdir().unwrap(), child: None };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let bin = duro_bin();
        assert!(bin.exists(), "no duro binary at {} (cargo build -p duro)", bin.display());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("duro.log")).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--db")
            .arg(self.dir.path().join("duro.db"))
            // The samples' fake services are on loopback, which durable HTTP refuses by default.
            .arg("--http-allow")
            .arg("127.0.0.1");
        if !self.extra_args.iter().any(|a| a == "--http-listen") {
            cmd.arg("--http-listen").arg("off");
        }
        let child =
            cmd.args(&self.extra_args).stdout(Stdio::null()).stderr(Stdio::from(log)).spawn().expect("spawn duro");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "duro did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("duro.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a worker with what `register` adds and waits until it is connected.
pub async fn start_worker(sidecar: &Sidecar, register: impl FnOnce(&mut duro_sdk::Worker)) -> duro_sdk::WorkerHandle {
    let mut worker = duro_sdk::Worker::new(sidecar.address()).with_options(
        duro_sdk::WorkerOptions::default()
            .with_reconnect_delays(Duration::from_millis(50), Duration::from_millis(300))
            .with_shutdown_timeout(Duration::from_secs(2)),
    );
    register(&mut worker);
    let handle = worker.start().unwrap();
    assert!(handle.wait_until_connected(Duration::from_secs(20)).await);
    handle
}
