//! Every code snippet of every README runs as pasted and ends, against a real `duro`.
//!
//! The fenced blocks of each tracked `*.md` file are extracted and run by language:
//! `python` with the repository's `.venv` (official `durabletask` + `sdks/python`), `ts`/`js`
//! with Node and the built `sdks/typescript` package, `rust` blocks must be a verbatim part
//! of an `sdks/rust` example, which is run. The only change made to a snippet is the sidecar
//! address (`localhost:4001` → the test sidecar's port). Each must exit 0 within a minute,
//! with the sidecar sending health pings every second (a worker that never stops used to
//! hang at the first ping). `sh` blocks are shell commands (the test command, sample and
//! benchmark scripts), run by `scripts/test.sh` itself; any other language fails the test
//! until it gets a runner here.
//!
//! Needs the Python venv, Node and the built TS package, so it runs only with
//! `DURO_SNIPPETS=1` (the last step of `scripts/test.sh`); otherwise it says it skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use duro_tests::*;

struct Snippet {
    line: usize,
    lang: String,
    code: String,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let out = Command::new("git").args(["ls-files", "*.md"]).current_dir(root).output().expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    String::from_utf8_lossy(&out.stdout).lines().map(|l| root.join(l)).collect()
}

fn snippets(file: &Path) -> Vec<Snippet> {
    let text = std::fs::read_to_string(file).expect("read markdown");
    let mut out = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.take() {
            None if trimmed.starts_with("```") => {
                open = Some((i + 1, trimmed.trim_start_matches('`').trim().to_string(), String::new()));
            }
            None => {}
            Some((at, lang, code)) if trimmed.starts_with("```") => {
                out.push(Snippet { line: at, lang, code });
            }
            Some((at, lang, mut code)) => {
                code.push_str(line);
                code.push('\n');
                open = Some((at, lang, code));
            }
        }
    }
    assert!(open.is_none(), "{}: unclosed code block", file.display());
    out
}

/// Runs `cmd` to its end (killed after a minute); returns (success, output).
fn run(mut cmd: Command) -> (bool, String) {
    let dir = test_dir();
    let out_path = dir.path().join("out.txt");
    let out = std::fs::File::create(&out_path).expect("output file");
    let err = out.try_clone().expect("clone");
    let mut child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().expect("spawn snippet");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(s) => (s.success(), format!("exit {s}\n{text}")),
        None => (false, format!("did not end within 60 s\n{text}")),
    }
}

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn every_readme_snippet_runs_and_ends() {
    if std::env::var_os("DURO_SNIPPETS").is_none() {
        eprintln!("skipped: set DURO_SNIPPETS=1 (scripts/test.sh does, once the venv and the TS package are built)");
        return;
    }
    let root = repo();
    let python =
        std::env::var("DURO_SNIPPET_PYTHON").map(PathBuf::from).unwrap_or_else(|_| root.join(".venv/bin/python"));
    let dir = test_dir();
    let sidecar = Sidecar::builder().dir(dir.path()).args(["--http-listen", "off", "--ping-seconds", "1"]).start();
    let address = format!("localhost:{}", sidecar.port());
    let mut ran = 0;
    let mut failures = Vec::new();
    for file in markdown_files(&root) {
        for s in snippets(&file) {
            let where_ = format!("{}:{} ({})", file.strip_prefix(&root).unwrap_or(&file).display(), s.line, s.lang);
            let code = s.code.replace("localhost:4001", &address).replace("127.0.0.1:4001", &address);
            let work = test_dir();
            let result = match s.lang.as_str() {
                "sh" | "bash" | "text" | "" => continue,
                "python" | "py" => {
                    let path = work.path().join("snippet.py");
                    std::fs::write(&path, &code).expect("write snippet");
                    let mut cmd = Command::new(&python);
                    cmd.arg(&path).current_dir(work.path());
                    run(cmd)
                }
                "ts" | "js" | "mjs" => {
                    // A project with only the SDK package: `@duro/sdk` resolves to sdks/typescript.
                    let modules = work.path().join("node_modules/@duro");
                    std::fs::create_dir_all(&modules).expect("node_modules");
                    std::os::unix::fs::symlink(root.join("sdks/typescript"), modules.join("sdk")).expect("link");
                    let path = work.path().join("snippet.mjs");
                    std::fs::write(&path, &code).expect("write snippet");
                    let mut cmd = Command::new("node");
                    cmd.arg(&path).current_dir(work.path());
                    run(cmd)
                }
                "rust" => {
                    let wanted = normalize(&s.code);
                    let examples = root.join("sdks/rust/examples");
                    let found = std::fs::read_dir(&examples).expect("examples").flatten().find(|e| {
                        std::fs::read_to_string(e.path()).is_ok_and(|text| normalize(&text).contains(&wanted))
                    });
                    match found {
                        None => (false, "not a verbatim part of any sdks/rust/examples/*.rs".to_string()),
                        Some(e) => {
                            let name =
                                e.path().file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                            let bin = duro_bin().parent().expect("target dir").join("examples").join(&name);
                            let mut cmd = Command::new(bin);
                            cmd.env("DURO_ADDRESS", format!("http://{address}"));
                            run(cmd)
                        }
                    }
                }
                other => {
                    (false, format!("no runner for code blocks in '{other}': add one to tests/rust/readme_snippets.rs"))
                }
            };
            ran += 1;
            match result {
                (true, out) => eprintln!("ok: {where_}\n{}", out.lines().take(3).collect::<Vec<_>>().join("\n")),
                (false, out) => failures.push(format!("{where_}: {out}")),
            }
        }
    }
    assert!(failures.is_empty(), "README snippets failed:\n{}", failures.join("\n---\n"));
    assert!(ran >= 4, "only {ran} snippets ran");
    eprintln!("{ran} README snippets ran and ended");
}
