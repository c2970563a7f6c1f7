//! `duro` runs expected to end by themselves (refusing to start, bad flags, ...).

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{duro_bin, free_port};

/// Runs `duro` on store `db` (on a free loopback port unless `extra_args` has `--listen`)
/// expecting it to exit by itself; returns its exit status and everything it wrote to
/// stderr. Killed, and the test failed, after `timeout`.
pub fn run_until_exit(db: &Path, extra_args: &[&str], timeout: Duration) -> (ExitStatus, String) {
    run_until_exit_as(db, extra_args, &[], None, timeout)
}

/// Runs `duro` with exactly `args` expecting it to exit by itself; returns its exit status
/// and stderr. Killed, and the test failed, after `timeout`.
pub fn run_args_until_exit(args: &[&str], timeout: Duration) -> (ExitStatus, String) {
    let mut cmd = Command::new(duro_bin());
    cmd.args(args).env_remove("DURO_API_TOKEN").env_remove("DURO_INSECURE_ALLOW_REMOTE");
    wait_for_exit(cmd, timeout)
}

/// An unprivileged user to run `duro` as (`nobody`), when the tests run as root: a file's
/// permission bits do not stop root, so read-only cases need another user.
pub const UNPRIVILEGED: (u32, u32) = (65534, 65534);

/// Whether this process runs as root (tests that need an unprivileged `duro` use
/// [`run_until_exit_as`] with [`UNPRIVILEGED`] then).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// [`run_until_exit`] with extra environment variables and, optionally, as another user
/// (`uid`, `gid`; needs root, through `setpriv`).
pub fn run_until_exit_as(
    db: &Path,
    extra_args: &[&str],
    env: &[(&str, &str)],
    user: Option<(u32, u32)>,
    timeout: Duration,
) -> (ExitStatus, String) {
    let mut cmd = match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}")).arg("--clear-groups").arg(duro_bin());
            c
        }
        None => Command::new(duro_bin()),
    };
    if !extra_args.contains(&"--listen") {
        cmd.arg("--listen").arg(format!("127.0.0.1:{}", free_port()));
    }
    cmd.arg("--db").arg(db).args(extra_args);
    cmd.env_remove("DURO_API_TOKEN").env_remove("DURO_INSECURE_ALLOW_REMOTE");
    cmd.envs(env.iter().copied());
    wait_for_exit(cmd, timeout)
}

/// Spawns `cmd` (a `duro` expected to exit by itself) and waits for it.
fn wait_for_exit(mut cmd: Command, timeout: Duration) -> (ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    // Read stderr while waiting: a chatty duro must not block on a full pipe.
    let reader = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => panic!("waiting for duro: {e}"),
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("duro did not exit within {timeout:?} (it kept serving)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    (status, stderr)
}
