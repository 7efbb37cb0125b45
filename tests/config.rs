//! `quicbus serve --config FILE` end to end: the shipped example loads,
//! flags override the file, and every mistake in a file is exit 2 with one
//! line naming the key.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::process::{quicbus, run, ServeProcess};

fn example() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/quicbus.example.toml")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("quicbus.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn data_lines(startup: &[String]) -> Vec<&String> {
    startup
        .iter()
        .filter(|l| l.contains("data directory"))
        .collect()
}

#[tokio::test]
async fn the_example_file_loads_and_the_server_listens() {
    let dir = tempfile::tempdir().unwrap();
    // The example listens on 4433; `--listen 127.0.0.1:0` (from
    // ServeProcess) wins.
    let server = ServeProcess::start(dir.path(), &["--config", example(), "--memory"]).await;
    assert_ne!(server.addr.port(), 4433);
    assert!(
        data_lines(&server.startup).is_empty(),
        "{:?}",
        server.startup
    );
    server.kill9().await;
}

#[tokio::test]
async fn flags_on_the_command_line_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "listen = \"127.0.0.1:1\"\nmemory = true\n");
    let data = dir.path().join("typed-data");
    // `--data` conflicts with the file's `memory = true`, and replaces it.
    let server = ServeProcess::start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
    )
    .await;
    assert_ne!(server.addr.port(), 1);
    assert_eq!(
        data_lines(&server.startup),
        [&format!(
            "created data directory {} (history, epoch and sessions survive restarts)",
            data.display()
        )]
    );
    server.kill9().await;
}

#[tokio::test]
async fn file_settings_apply_when_no_flag_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("file-data");
    let config = write_config(
        dir.path(),
        &format!(
            "data = {:?}\nmetrics = \"127.0.0.1:0\"\n[namespaces.game]\ndatagrams = false\n",
            data.to_str().unwrap()
        ),
    );
    let server = ServeProcess::start(dir.path(), &["--config", config.to_str().unwrap()]).await;
    assert!(data.join("epoch").exists(), "{:?}", server.startup);
    assert!(
        server
            .startup
            .iter()
            .any(|l| l.starts_with("quicbus metrics on http://127.0.0.1:")),
        "{:?}",
        server.startup
    );
    server.kill9().await;

    // A flag without a value: `memory = true` keeps no data directory.
    let config = write_config(dir.path(), "memory = true\n");
    let server = ServeProcess::start(dir.path(), &["--config", config.to_str().unwrap()]).await;
    assert!(
        data_lines(&server.startup).is_empty(),
        "{:?}",
        server.startup
    );
    server.kill9().await;
}

#[tokio::test]
async fn mistakes_in_the_file_exit_2_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("max-conections = 10", "key 'max-conections': unknown key"),
        (
            "max-connections = \"lots\"",
            "key 'max-connections': invalid value 'lots'",
        ),
        ("memory = \"yes\"", "key 'memory': expected true or false"),
        (
            "[namespaces.game]\nhistroy_events = 1",
            "key 'namespaces.game.histroy_events': unknown field",
        ),
        (
            "[namespaces.game]\nanonymous = { publish = [\"game.>.x\"] }",
            "key 'namespaces.game.anonymous.publish': pattern 'game.>.x'",
        ),
        (
            "[namespaces.\"a.b\"]\necho = true",
            "key 'namespaces.\"a.b\"': namespace 'a.b'",
        ),
        (
            "[anonymous]\nsubscribe = [\"public.*x\"]",
            "key 'anonymous.subscribe': pattern 'public.*x'",
        ),
        ("[anonymous]\nsubscrbe = []", "key 'anonymous.subscrbe'"),
        ("listen = \"127.0.0.1:0\"\n[namespaces", "line 2, column"),
    ];
    let certs = dir.path().join("certs");
    for (text, expected) in cases {
        let config = write_config(dir.path(), text);
        let (code, _, stderr) = run(quicbus()
            .args(["serve", "--listen", "127.0.0.1:0", "--memory", "--certs"])
            .arg(&certs)
            .arg("--config")
            .arg(&config))
        .await;
        assert_eq!(code, 2, "{text}: {stderr}");
        let prefix = format!("quicbus: error: config {}: ", config.display());
        assert_eq!(stderr.lines().count(), 1, "{text}: {stderr}");
        assert!(stderr.starts_with(&prefix), "{text}: {stderr}");
        assert!(stderr.contains(expected), "{text}: {stderr}");
    }
    assert!(!certs.exists(), "no server started");

    let missing = dir.path().join("missing.toml");
    let (code, _, stderr) = run(quicbus()
        .args(["serve", "--memory", "--config"])
        .arg(&missing))
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "quicbus: error: config {}: cannot read it: ",
            missing.display()
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_help_lists_config() {
    let (code, stdout, _) = run(quicbus().args(["serve", "--help"])).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("--config <FILE>"), "{stdout}");
}
