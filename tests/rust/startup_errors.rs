//! Start-up errors as a user meets them: one sentence (what, why, what to do) on stderr,
//! in JSON with `--log-format json`, exit code 1, never a backtrace or a repeated cause; and
//! stores that cannot work (missing directory, read-only, damaged) are refused at start-up
//! rather than served.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use duro_tests::*;

const EXIT: Duration = Duration::from_secs(30);

/// The lines of stderr that are not routine logging.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.trim().is_empty() && !l.contains("INFO") && !l.contains("WARN")).collect()
}

/// Asserts exit code 1 and exactly one `error: …` line containing every fragment.
fn assert_one_error(status: std::process::ExitStatus, stderr: &str, fragments: &[&str]) -> String {
    assert_eq!(status.code(), Some(1), "exit status {status}; stderr:\n{stderr}");
    let lines = error_lines(stderr);
    assert_eq!(lines.len(), 1, "expected one error line; stderr:\n{stderr}");
    let line = lines[0];
    assert!(line.starts_with("error: "), "stderr:\n{stderr}");
    for f in fragments {
        assert!(line.contains(f), "{f:?} not in {line:?}");
    }
    assert!(!line.contains("backtrace") && !stderr.contains("stack backtrace"), "stderr:\n{stderr}");
    line.to_string()
}

/// No clause of the sentence appears twice (a cause chain printed twice did).
fn assert_no_repeats(line: &str) {
    let parts: Vec<&str> = line.split(": ").filter(|p| p.len() > 12).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "{p:?} repeated in {line:?}");
    }
}

#[test]
fn missing_directory_is_named_with_what_to_do_even_with_rust_backtrace() {
    let db = Path::new("/nonexistent-duro-dir/sub/duro.db");
    let (status, stderr) = run_until_exit_as(db, &["--http-listen", "off"], &[("RUST_BACKTRACE", "1")], None, EXIT);
    let line = assert_one_error(
        status,
        &stderr,
        &["the directory /nonexistent-duro-dir/sub", "does not exist", "mkdir -p", "--db"],
    );
    assert_no_repeats(&line);
    assert_eq!(stderr.lines().count(), 1, "nothing but the error line; stderr:\n{stderr}");
}

#[test]
fn json_log_format_applies_to_start_up_errors() {
    let db = Path::new("/nonexistent-duro-dir/duro.db");
    let (status, stderr) = run_until_exit_as(db, &["--http-listen", "off", "--log-format", "json"], &[], None, EXIT);
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stderr:\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("one JSON object");
    assert_eq!(v["level"], "ERROR");
    let message = v["fields"]["message"].as_str().expect("fields.message");
    assert!(message.contains("does not exist"), "{message}");
    assert!(v["timestamp"].is_string());
}

#[test]
fn a_taken_port_says_so_once_with_a_hint() {
    let dir = test_dir();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (status, stderr) = run_until_exit_as(
        &dir.path().join("duro.db"),
        &["--http-listen", "off", "--listen", &addr],
        &[("RUST_BACKTRACE", "full")],
        None,
        EXIT,
    );
    let line = assert_one_error(status, &stderr, &[&format!("cannot listen on {addr}"), "in use", "--listen"]);
    assert_no_repeats(&line);
}

#[test]
fn invalid_configuration_is_one_line() {
    let dir = test_dir();
    let (status, stderr) = run_until_exit_as(
        &dir.path().join("duro.db"),
        &["--http-listen", "off", "--log-level", "duro=["],
        &[],
        None,
        EXIT,
    );
    let line = assert_one_error(status, &stderr, &["invalid --log-level"]);
    assert_no_repeats(&line);
}

/// A database file this user cannot write was served and answered every start with 500.
#[test]
fn a_read_only_database_is_refused() {
    let dir = test_dir();
    let db = dir.path().join("duro.db");
    // A healthy store first.
    let mut s = Sidecar::builder().dir(dir.path()).args(["--http-listen", "off"]).start();
    assert!(s.terminate(), "clean shutdown");
    set_mode(&db, 0o444);
    let user = if is_root() {
        // Root writes through permission bits: run as an unprivileged user who can enter
        // the directory but not write the file.
        set_mode(dir.path(), 0o777);
        set_mode(&dir.path().join("duro.db.lock"), 0o666);
        Some(UNPRIVILEGED)
    } else {
        None
    };
    let (status, stderr) = run_until_exit_as(&db, &["--http-listen", "off"], &[], user, EXIT);
    let line = assert_one_error(status, &stderr, &[&db.display().to_string(), "cannot be written", "writable"]);
    assert_no_repeats(&line);
}

/// A file damaged in the middle (its header intact) started and then answered 503 "retry
/// shortly" for a fault that never heals.
#[test]
fn a_database_damaged_in_the_middle_is_refused() {
    let dir = test_dir();
    let db = dir.path().join("duro.db");
    let s = Sidecar::builder().dir(dir.path()).args(["--http-listen", "off"]).start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = s.client().await;
        for i in 0..300 {
            let input = format!("\"{}\"", "x".repeat(500));
            start(&client, "Never", &format!("fill-{i}"), Some(&input)).await.expect("StartInstance");
        }
    });
    let mut s = s;
    assert!(s.terminate(), "clean shutdown");
    assert!(!wal_of(&db).exists() || wal_len(&db) == 0, "WAL left after a clean shutdown");
    let len = std::fs::metadata(&db).expect("db").len();
    assert!(len > 20 * 4096, "database too small to damage in the middle: {len}");
    damage(&db, 4096 * (len / 4096 / 2), 4096);

    let (status, stderr) = run_until_exit(&db, &["--http-listen", "off"], EXIT);
    let line = assert_one_error(status, &stderr, &[&db.display().to_string(), "is damaged", "backup"]);
    assert_no_repeats(&line);

    // With the full check too; and `off` skips it (the operator's call).
    // (Which step meets the damaged page first depends on the page: opening, or the check.)
    let (status, stderr) = run_until_exit(&db, &["--http-listen", "off", "--sqlite-check", "full"], EXIT);
    assert_one_error(status, &stderr, &["is damaged", "backup"]);
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let dir = test_dir();
    let db = dir.path().join("duro.db");
    std::fs::write(&db, vec![b'#'; 8192]).expect("write");
    let (status, stderr) = run_until_exit(&db, &["--http-listen", "off"], EXIT);
    assert_one_error(status, &stderr, &["is damaged", "not a database"]);
}

/// After SIGTERM the WAL is checkpointed into the database: one file to copy or back up.
#[test]
fn a_clean_shutdown_leaves_no_wal() {
    let dir = test_dir();
    let db = dir.path().join("duro.db");
    let mut s = Sidecar::builder().dir(dir.path()).args(["--http-listen", "off"]).start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // A worker's stream is open while duro stops (the store is still shared then).
    let _stream = rt.block_on(async {
        let client = s.client().await;
        start(&client, "Never", "one", None).await.expect("StartInstance");
        let mut stream = open_stream(&client, proto::GetWorkItemsRequest::default()).await;
        let _ = next_work(&mut stream, Duration::from_secs(5)).await;
        (client, stream)
    });
    assert!(s.terminate(), "clean shutdown");
    assert!(!wal_of(&db).exists() || wal_len(&db) == 0, "WAL left after a clean shutdown ({} bytes)", wal_len(&db));
}

fn wal_of(db: &Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

fn wal_len(db: &Path) -> u64 {
    std::fs::metadata(wal_of(db)).map(|m| m.len()).unwrap_or(0)
}

fn damage(path: &Path, at: u64, len: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).expect("open");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&vec![0xA5; len]).expect("write");
    f.sync_all().expect("sync");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_taken_http_port_says_so_once_with_a_hint() {
    let dir = test_dir();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (status, stderr) = run_until_exit_as(
        &dir.path().join("duro.db"),
        &["--http-listen", &addr],
        &[("RUST_BACKTRACE", "1")],
        None,
        EXIT,
    );
    let line = assert_one_error(status, &stderr, &[&addr, "in use", "--http-listen"]);
    assert_no_repeats(&line);
}

/// On a laptop (no identity configured) the log says so instead of naming the Azure
/// metadata address, which user requests may not reach.
#[test]
fn no_identity_configured_is_said_plainly() {
    let dir = test_dir();
    let mut s = Sidecar::builder().dir(dir.path()).args(["--http-listen", "off"]).start();
    assert!(s.terminate());
    let log = s.log_text();
    if std::env::vars().any(|(k, _)| k.starts_with("AZURE_") || k == "IDENTITY_ENDPOINT" || k == "MSI_ENDPOINT") {
        eprintln!("skipped: an identity is configured in this environment");
        return;
    }
    assert!(log.contains("no identity configured"), "log:\n{log}");
    assert!(!log.contains("169.254.169.254"), "log:\n{log}");
}

/// A supervisor (or a test) may send SIGTERM the moment the port answers. The handler must be
/// installed before the listeners open, or the default action kills the process (exit 143
/// instead of a graceful shutdown; about one start in ten hit it before the fix).
#[test]
fn sigterm_right_after_the_port_opens_shuts_down_gracefully() {
    for round in 0..30 {
        let dir = test_dir();
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let mut child = std::process::Command::new(duro_bin())
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http-listen", "off", "--db"])
            .arg(dir.path().join("d.db"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start duro");
        let deadline = std::time::Instant::now() + EXIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "round {round}: duro never listened");
            std::thread::sleep(Duration::from_millis(1));
        }
        let killed = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        assert!(killed.is_ok_and(|s| s.success()), "kill -TERM failed");
        let status = child.wait().expect("wait for duro");
        assert!(status.success(), "round {round}: SIGTERM right after the port opened ended duro with {status}");
    }
}
