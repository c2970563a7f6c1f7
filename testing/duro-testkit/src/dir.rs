//! Per-test directories, removed at the end of the test unless `DURO_KEEP_TEST_DIRS` is set.

use std::path::{Path, PathBuf};

/// A per-test directory: a [`tempfile::TempDir`] (removed on drop), or kept on disk (its path
/// printed) when the environment variable `DURO_KEEP_TEST_DIRS` is set, for post-mortems of
/// the sidecar's log and store.
#[derive(Debug)]
pub enum TestDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl TestDir {
    pub fn path(&self) -> &Path {
        match self {
            TestDir::Temp(t) => t.path(),
            TestDir::Kept(p) => p,
        }
    }
}

/// A new per-test directory (see [`TestDir`]).
pub fn test_dir() -> TestDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
    if std::env::var_os("DURO_KEEP_TEST_DIRS").is_some() {
        let path = dir.keep();
        eprintln!("test dir kept: {}", path.display());
        return TestDir::Kept(path);
    }
    TestDir::Temp(dir)
}
