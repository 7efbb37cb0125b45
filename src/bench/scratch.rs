//! Scratch directories for a run: certificates and data directories of the
//! measured servers, gone when the run is.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::BenchError;

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `quicbus-bench-<what>-<pid>-<n>`.
    pub fn new(what: &str) -> Result<Self, BenchError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("quicbus-bench-{what}-{}-{n}", std::process::id()));
        // A leftover of an earlier process with the same id is stale.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(BenchError::io(format!("creating {}", path.display())))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Bytes of the files under `dir`, recursively (what a data directory holds).
pub fn dir_bytes(dir: &Path) -> Result<u64, BenchError> {
    let mut total = 0;
    let entries =
        std::fs::read_dir(dir).map_err(BenchError::io(format!("reading {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(BenchError::io(format!("reading {}", dir.display())))?;
        let meta = entry.metadata().map_err(BenchError::io(format!(
            "reading {}",
            entry.path().display()
        )))?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_are_distinct_and_removed_with_their_files() {
        let a = ScratchDir::new("test").expect("scratch dir");
        let b = ScratchDir::new("test").expect("scratch dir");
        assert_ne!(a.path(), b.path());
        std::fs::create_dir_all(a.path().join("sub")).expect("mkdir");
        std::fs::write(a.path().join("sub/file"), [0u8; 100]).expect("write");
        std::fs::write(a.path().join("top"), [0u8; 20]).expect("write");
        assert_eq!(dir_bytes(a.path()).expect("size"), 120);
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
    }
}
