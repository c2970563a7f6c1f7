//! `samples/phone-verification/run.sh` as a newcomer runs it: next to the README's running
//! Duro it uses that one (and says so); when its ports are taken by something else it picks
//! free ones; when Duro cannot start it prints one `error:` line and exits 1 (no "app:" line).
//!
//! Needs the sample's binaries (built by `samples/run_tests.sh`), so it runs only with
//! `DURO_SAMPLE_SCRIPTS=1` (`scripts/test.sh` sets it after the sample suites).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use duro_tests::*;

fn enabled() -> bool {
    if std::env::var_os("DURO_SAMPLE_SCRIPTS").is_none() {
        eprintln!("skipped: set DURO_SAMPLE_SCRIPTS=1 once the samples are built (scripts/test.sh does)");
        return false;
    }
    true
}

fn run_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/phone-verification/run.sh")
}

struct Script {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Script {
    fn start(env: &[(&str, String)]) -> Script {
        let target = duro_bin().parent().and_then(Path::parent).expect("target dir").to_path_buf();
        let mut child = Command::new("bash")
            .arg(run_sh())
            .env("SKIP_BUILD", "1")
            .env("CARGO_TARGET_DIR", target)
            .env("APP_PORT", free_port().to_string())
            .env("TWILIO_PORT", free_port().to_string())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run.sh");
        let (tx, lines) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Script { child, lines, seen: Vec::new() }
    }

    /// Waits for a line starting with `prefix`; None if the script ended first.
    fn line(&mut self, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return Some(l);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("run.sh did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn post_verify(app: &str) -> u16 {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url = format!("{}/verify", app.trim_end_matches('/'));
        let r = reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({ "phone": "+15551234567" }))
            .send()
            .await
            .expect("POST /verify");
        r.status().as_u16()
    })
}

fn app_url(line: &str) -> String {
    line.trim_start_matches("app: ").split_whitespace().next().expect("app url").to_string()
}

#[test]
fn run_sh_uses_the_running_duro_and_says_so() {
    if !enabled() {
        return;
    }
    let dir = test_dir();
    let http = free_port();
    let duro = Sidecar::builder().dir(dir.path()).args(["--http-listen", &format!("127.0.0.1:{http}")]).start();
    let mut s = Script::start(&[("DURO_PORT", duro.port().to_string()), ("DURO_HTTP_PORT", http.to_string())]);
    let using = s.line("using the Duro already running");
    assert!(using.is_some(), "output:\n{}", s.seen.join("\n"));
    let app = s.line("app: ").unwrap_or_else(|| panic!("no app line; output:\n{}", s.seen.join("\n")));
    assert_eq!(post_verify(&app_url(&app)), 202);
    s.stop();
    // The user's Duro is still there.
    assert!(std::net::TcpStream::connect(("127.0.0.1", duro.port())).is_ok(), "run.sh stopped the user's Duro");
}

#[test]
fn run_sh_picks_free_ports_when_its_own_are_taken() {
    if !enabled() {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut s = Script::start(&[("DURO_PORT", port.to_string()), ("DURO_HTTP_PORT", free_port().to_string())]);
    let note = s.line("note: ");
    assert!(note.is_some_and(|n| n.contains("not a Duro")), "output:\n{}", s.seen.join("\n"));
    let app = s.line("app: ").unwrap_or_else(|| panic!("no app line; output:\n{}", s.seen.join("\n")));
    assert_eq!(post_verify(&app_url(&app)), 202);
    s.stop();
}

#[test]
fn run_sh_fails_with_one_line_when_duro_cannot_start() {
    if !enabled() {
        return;
    }
    let mut s = Script::start(&[
        ("DURO_PORT", free_port().to_string()),
        ("DURO_HTTP_PORT", free_port().to_string()),
        ("DURO_LINK_KEYS", "short".to_string()),
    ]);
    assert!(s.line("app: ").is_none(), "printed an app line although duro failed:\n{}", s.seen.join("\n"));
    let status = s.child.wait().expect("wait");
    assert_eq!(status.code(), Some(1), "output:\n{}", s.seen.join("\n"));
    assert_eq!(s.seen.len(), 1, "expected one line:\n{}", s.seen.join("\n"));
    assert!(
        s.seen[0].starts_with("error: duro did not start: ") && s.seen[0].contains("DURO_LINK_KEYS"),
        "{}",
        s.seen[0]
    );
}
