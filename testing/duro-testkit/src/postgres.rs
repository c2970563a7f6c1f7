//! A real PostgreSQL server for tests of the PostgreSQL store and of several sidecars on one
//! task hub.
//!
//! [`Postgres::start`] uses the server named by `$DURO_TEST_PG_URL` when set (CI starts one for
//! the whole run with `scripts/pg.sh`), and otherwise starts its own: `initdb` into a
//! temporary directory and `pg_ctl` on a free loopback port (as `nobody` when the tests run as
//! root, since PostgreSQL refuses to run as root), stopped when the [`Postgres`] is dropped.
//! Each test takes its own task hub ([`Postgres::fresh_hub`]), so tests sharing a server never
//! see each other's rows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{free_port, is_root, test_dir, TestDir, UNPRIVILEGED};

/// A PostgreSQL server for one test (or one run, from `$DURO_TEST_PG_URL`).
pub struct Postgres {
    url: String,
    own: Option<OwnServer>,
}

struct OwnServer {
    bin: PathBuf,
    data: PathBuf,
    as_root: bool,
    _dir: TestDir,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin, "pg_ctl", self.as_root)
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .output();
    }
}

/// Where the PostgreSQL server programs are: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is not installed (/usr/lib/postgresql: {e}); apt-get install postgresql, or set DURO_TEST_PG_URL")
        })
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).unwrap_or_else(|| panic!("no PostgreSQL server under /usr/lib/postgresql"))
}

fn pg_command(bin: &Path, program: &str, as_root: bool) -> Command {
    let exe = bin.join(program);
    if as_root {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={}", UNPRIVILEGED.0),
            &format!("--regid={}", UNPRIVILEGED.1),
            "--clear-groups",
            "--",
        ])
        .arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// The server of `$DURO_TEST_PG_URL`, or a new one of this test's own.
    pub fn start() -> Postgres {
        if let Ok(url) = std::env::var("DURO_TEST_PG_URL") {
            return Postgres { url, own: None };
        }
        let bin = pg_bin_dir();
        let dir = test_dir();
        let as_root = is_root();
        let data = dir.path().join("pgdata");
        std::fs::create_dir(&data).unwrap_or_else(|e| panic!("cannot create {}: {e}", data.display()));
        if as_root {
            // The test directory is root's; the server's user needs to reach and own its data.
            run(
                {
                    let mut c = Command::new("chmod");
                    c.arg("755").arg(dir.path());
                    c
                },
                "chmod",
            );
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg(format!("{}:{}", UNPRIVILEGED.0, UNPRIVILEGED.1)).arg(&data);
                    c
                },
                "chown",
            );
        }
        let mut init = pg_command(&bin, "initdb", as_root);
        init.args(["-A", "trust", "-U", "duro", "--no-sync", "-D"]).arg(&data);
        run(init, "initdb");
        let port = free_port();
        let log = data.join("server.log");
        let mut ctl = pg_command(&bin, "pg_ctl", as_root);
        ctl.args(["start", "-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!("-p {port} -h 127.0.0.1 -k {} -c fsync=off -c max_connections=200", data.display()));
        run(ctl, "pg_ctl start");
        let url = format!("postgres://duro@127.0.0.1:{port}/postgres");
        Postgres { url, own: Some(OwnServer { bin, data, as_root, _dir: dir }) }
    }

    /// The server's URL (database `postgres`, user `duro`, no password on loopback).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A task-hub name no other test of this run uses.
    pub fn fresh_hub(&self) -> String {
        Postgres::hub_name()
    }

    /// A task-hub name no other test of this run uses (no server needed).
    pub fn hub_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        format!("t{}_{n}_{nanos}", std::process::id())
    }

    /// Whether this server was started by this test (not shared through `$DURO_TEST_PG_URL`).
    pub fn is_own(&self) -> bool {
        self.own.is_some()
    }
}
