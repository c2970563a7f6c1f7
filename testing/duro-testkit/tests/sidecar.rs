//! The harness against the real binary: built or located, started on free ports, waited for,
//! restarted on the same store, stopped, and failing with its log when `duro` cannot start.
//! Running inside `cargo test` also shows the nested `cargo build -p duro` does not wait on
//! the outer cargo's build lock (this test would hang).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use duro_testkit::{duro_bin, run_until_exit, test_dir, Sidecar};

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP API");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("write");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

#[test]
fn the_binary_is_located_or_built_and_runs() {
    let bin = duro_bin();
    assert!(bin.is_file(), "{}", bin.display());
    let out = std::process::Command::new(&bin).arg("--help").output().expect("run duro --help");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--http-listen"));
}

#[test]
fn serves_grpc_and_http_and_restarts_on_the_same_ports_and_store() {
    let mut s = Sidecar::builder().http_api().start();
    assert_ne!(s.port(), s.http_port());
    assert!(TcpStream::connect(("127.0.0.1", s.port())).is_ok());
    assert!(http_get(s.http_port(), "/runtime/webhooks/durabletask/openapi.json").starts_with("HTTP/1.1 200"));
    assert!(s.db().exists(), "the store is created in the sidecar's directory");
    let first = s.pid().expect("running");

    s.restart();
    let second = s.pid().expect("running again");
    assert_ne!(first, second);
    assert!(s.is_running());
    assert!(http_get(s.http_port(), "/runtime/webhooks/durabletask/openapi.json").starts_with("HTTP/1.1 200"));
    assert!(s.log_text().len() > s.log_tail(1).len(), "both runs append to one log");

    s.kill9();
    assert!(!s.is_running());
    assert!(TcpStream::connect(("127.0.0.1", s.port())).is_err(), "killed");
    s.restart();
    assert!(s.terminate(), "SIGTERM ends it cleanly");
}

#[test]
fn the_http_api_is_off_unless_asked_for() {
    let s = Sidecar::start();
    let log = s.log_text();
    assert!(!log.contains("7071"), "a default sidecar must not take the API's default port:\n{log}");
    let r = std::panic::catch_unwind(|| s.http_port());
    assert!(r.is_err(), "no HTTP port without http_api()");
}

#[test]
fn a_caller_owned_directory_keeps_the_store_after_the_sidecar() {
    let dir = test_dir();
    {
        let s = Sidecar::builder().dir(dir.path()).args(["--ping-seconds", "1"]).start();
        assert_eq!(s.dir(), dir.path());
    }
    assert!(dir.path().join("duro.db").exists());
    assert!(dir.path().join("duro.log").exists());
}

#[test]
fn a_sidecar_that_cannot_start_fails_the_test_with_its_log() {
    let r = std::panic::catch_unwind(|| Sidecar::builder().log_level("duro=[").start());
    let message = match r {
        Ok(_) => panic!("duro started with a bad log filter"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(message.contains("exited with"), "{message}");
    assert!(message.contains("log"), "{message}");
}

#[test]
fn run_until_exit_returns_the_status_and_stderr() {
    let dir = test_dir();
    let (status, stderr) =
        run_until_exit(&dir.path().join("duro.db"), &["--log-level", "duro=["], Duration::from_secs(20));
    assert!(!status.success());
    assert!(!stderr.is_empty());
}
