//! Test harness: starts the real `duro` binary on a free port with its own SQLite file and
//! gives tests a raw gRPC client. Used by the integration tests in `tests/rust/`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use duro_proto::task_hub_sidecar_service_client::TaskHubSidecarServiceClient;
use tonic::transport::Channel;

/// Path of the `duro` binary: `$DURO_BIN`, else `target/<profile>/duro` next to this test.
pub fn duro_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DURO_BIN") {
        return PathBuf::from(p);
    }
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    profile_dir.join(if cfg!(windows) { "duro.exe" } else { "duro" })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running `duro` process. Killed (SIGKILL) on drop unless stopped first.
pub struct Sidecar {
    pub port: u16,
    pub db: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    log: PathBuf,
}

impl Sidecar {
    /// Starts a sidecar on a fresh database inside `dir`.
    pub fn start(dir: &Path) -> Sidecar {
        Self::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, extra_args: &[&str]) -> Sidecar {
        let mut s = Sidecar {
            port: free_port(),
            db: dir.join("duro.db"),
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            log: dir.join("duro.log"),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = duro_bin();
        assert!(bin.exists(), "duro binary not found at {} (run `cargo build -p duro` first)", bin.display());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(&bin)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--db")
            .arg(&self.db)
            .arg("--log-level")
            .arg("duro=debug,info")
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn duro");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "duro did not start listening; log:\n{}", self.log_text());
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("duro exited with {status}; log:\n{}", self.log_text());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> TaskHubSidecarServiceClient<Channel> {
        TaskHubSidecarServiceClient::connect(self.endpoint())
            .await
            .expect("connect")
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
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

    /// Starts the binary again on the same port and database.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill9();
    }
}
