//! The fuzz corpus and crash reproducers as ordinary regression tests:
//! every file in `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`
//! goes through the same harness the `cargo fuzz` target runs
//! (`quicbus::fuzzing`), on a stable toolchain, without libFuzzer.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// The inputs of one target, sorted so failures repeat in the same order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs every input of `target`, naming the file that fails.
fn replay(target: &str, harness: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no corpus for {target} under fuzz/: the replay would prove nothing"
    );
    for path in &files {
        let data = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| harness(&data)).is_err() {
            panic!("{} fails (its panic is above)", path.display());
        }
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn frame_codec_corpus() {
    replay("frame_codec", quicbus::fuzzing::frame_codec);
}

/// One server for the whole corpus, inputs one after another: the same
/// order of events as a fuzzing run.
#[test]
fn server_session_corpus() {
    replay("server_session", quicbus::fuzzing::server_session);
}
