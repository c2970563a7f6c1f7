//! The `duro` binary under test: `$DURO_BIN`, else built with `cargo build -p duro` once per
//! test process.
//!
//! Building from the test (rather than expecting a prior `cargo build`) means `cargo test`
//! passes from a fresh clone and never tests a stale binary; when the binary is fresh the
//! build is a no-op of a fraction of a second. The nested cargo uses the same target
//! directory as the tests (it inherits `CARGO_TARGET_DIR` and reads the same configuration;
//! otherwise the workspace's `target/`) and does not wait on the outer cargo's build lock:
//! `cargo test` releases it once the test binaries are built, before running them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The repository's workspace root (where its `Cargo.toml` is).
pub fn workspace_root() -> PathBuf {
    // This crate lives in <root>/testing/duro-testkit.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Path of the `duro` binary to test: `$DURO_BIN` when set (a relative path is taken from
/// the current directory, else from the workspace root), else the binary that
/// `cargo build -p duro` produces, built at the first call of the process.
///
/// Panics, with what to do, if `$DURO_BIN` names no file or the build fails.
pub fn duro_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate) {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn locate() -> Result<PathBuf, String> {
    match std::env::var_os("DURO_BIN") {
        Some(p) if !p.is_empty() => from_env(Path::new(&p)),
        _ => build(),
    }
}

fn from_env(path: &Path) -> Result<PathBuf, String> {
    let candidates = if path.is_absolute() {
        vec![path.to_path_buf()]
    } else {
        let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
        vec![cwd.join(path), workspace_root().join(path)]
    };
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        format!(
            "DURO_BIN={} is not a file (relative paths are tried from the current directory and the \
             workspace root); unset DURO_BIN to have the tests build duro with `cargo build -p duro`",
            path.display()
        )
    })
}

/// `cargo build -p duro --bin duro` in the workspace, in the test's profile; returns the
/// path cargo reports for the executable.
fn build() -> Result<PathBuf, String> {
    // `cargo test` tells its test processes which cargo it is.
    let cargo = std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("cargo"));
    let manifest = workspace_root().join("Cargo.toml");
    let mut cmd = Command::new(&cargo);
    cmd.arg("build").arg("--manifest-path").arg(&manifest).args([
        "-p",
        "duro",
        "--bin",
        "duro",
        "--message-format=json-render-diagnostics",
    ]);
    // Run it in the environment the user ran `cargo test` in: without the variables cargo
    // sets for the test process (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...). Build scripts
    // (ring's, for one) ask to be rerun when those change, so each test crate's values would
    // rebuild duro and half its dependencies, and again at the next `cargo build`.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_by_cargo_for_the_test) {
            cmd.env_remove(key);
        }
    }
    let release = std::env::current_exe().ok().is_some_and(|exe| is_release_test(&exe));
    if release {
        cmd.arg("--release");
    }
    let shown = format!("cargo build --manifest-path {} -p duro --bin duro{}", manifest.display(), {
        if release {
            " --release"
        } else {
            ""
        }
    });
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{}` to build duro ({e}); build it and set DURO_BIN", cargo.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "`{shown}` failed ({}); set DURO_BIN to test a prebuilt binary. cargo said:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    executable_from_messages(&stdout, "duro")
        .ok_or_else(|| format!("`{shown}` succeeded but reported no executable named duro"))
}

/// Whether `name` is an environment variable cargo sets for the package it builds or runs
/// (not one of the user's configuration variables such as `CARGO_TARGET_DIR` or
/// `CARGO_HOME`).
fn set_by_cargo_for_the_test(name: &str) -> bool {
    const PREFIXES: [&str; 5] = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CFG_", "CARGO_BIN_EXE_", "DEP_"];
    const NAMES: [&str; 7] = [
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
        "CARGO_MAKEFLAGS",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// Whether a test executable at `exe` (`<target>/<profile>/deps/<name>`) was built in the
/// release profile.
fn is_release_test(exe: &Path) -> bool {
    exe.parent().and_then(Path::parent).and_then(Path::file_name).is_some_and(|n| n == "release")
}

/// The `executable` of the last `compiler-artifact` message for binary `name` in cargo's
/// `--message-format=json` output.
fn executable_from_messages(stdout: &str, name: &str) -> Option<PathBuf> {
    stdout
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .filter(|m| m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")))
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_binary_among_cargo_messages() {
        let out = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"duro","kind":["lib"]},"executable":null}"#,
            "\n",
            "not json\n",
            r#"{"reason":"compiler-artifact","target":{"name":"other","kind":["bin"]},"executable":"/t/debug/other"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"duro","kind":["bin"]},"executable":"/t/debug/duro"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(executable_from_messages(out, "duro"), Some(PathBuf::from("/t/debug/duro")));
        assert_eq!(executable_from_messages(r#"{"reason":"build-finished","success":true}"#, "duro"), None);
    }

    #[test]
    fn drops_the_variables_of_the_test_package_and_keeps_the_users() {
        for name in ["CARGO_PKG_NAME", "CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_CRATE_NAME", "OUT_DIR"] {
            assert!(set_by_cargo_for_the_test(name), "{name}");
        }
        for name in
            ["CARGO_TARGET_DIR", "CARGO_HOME", "CARGO_NET_OFFLINE", "CARGO_BUILD_JOBS", "CARGO", "PATH", "RUSTFLAGS"]
        {
            assert!(!set_by_cargo_for_the_test(name), "{name}");
        }
    }

    #[test]
    fn tells_the_profile_from_the_test_executable() {
        assert!(is_release_test(Path::new("/w/target/release/deps/http_api-0123")));
        assert!(!is_release_test(Path::new("/w/target/debug/deps/http_api-0123")));
        assert!(!is_release_test(Path::new("http_api")));
    }

    #[test]
    fn a_missing_duro_bin_says_what_to_do() {
        let e = from_env(Path::new("/nonexistent/duro")).expect_err("no such file");
        assert!(e.contains("DURO_BIN=/nonexistent/duro") && e.contains("unset DURO_BIN"), "{e}");
    }

    #[test]
    fn a_relative_duro_bin_is_found_from_the_workspace_root() {
        // rustfmt.toml is at the root only, not in this crate's directory (the tests' cwd).
        let found = from_env(Path::new("rustfmt.toml")).expect("found from the root");
        assert_eq!(found, workspace_root().join("rustfmt.toml"));
    }

    #[test]
    fn the_workspace_root_is_the_repository_root() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).expect("root manifest");
        assert!(manifest.contains("[workspace]"), "{manifest}");
    }
}
