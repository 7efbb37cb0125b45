//! `quicbus token` end to end: the token it prints verifies with the
//! library, and its refusals exit non-zero with a message that says why.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::process::{quicbus, run};
use quicbus::auth::token::{unix_now, TokenVerifier};
use quicbus::auth::Action;

const SECRET: &str = "a shared secret for the CLI test";

/// Writes the secret with a trailing newline, as `echo` would.
fn secret_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path
}

#[tokio::test]
async fn the_printed_token_verifies_with_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let before = unix_now();
    let (code, stdout, stderr) = run(quicbus()
        .args(["token", "--user", "alice", "--ttl", "600", "--secret-file"])
        .arg(&secret)
        .args(["--publish", "game.*.input", "--subscribe", "game.>"])
        .args(["--history", "game.lobby"]))
    .await;
    let after = unix_now();
    assert_eq!(code, 0, "stderr: {stderr}");

    // The token and a newline, nothing else.
    let token = stdout.strip_suffix('\n').expect("a final newline");
    assert!(!token.contains(char::is_whitespace), "{stdout:?}");
    // Signed with the file's bytes, not its trailing newline.
    let verified = TokenVerifier::hs256(SECRET.as_bytes())
        .unwrap()
        .verify(token, before)
        .expect("a valid token");
    assert_eq!(verified.user, "alice");
    assert!(
        (before + 600..=after + 600).contains(&verified.expires),
        "exp {} is not now + 600 ({before}..={after})",
        verified.expires
    );
    let p = &verified.permissions;
    assert!(p.allows(Action::Publish, "game.p1.input"));
    assert!(!p.allows(Action::Publish, "game.p1.state"));
    assert!(p.allows(Action::Subscribe, "game.p1.state"));
    assert!(!p.allows(Action::Subscribe, "chat.lobby"));
    assert!(p.allows(Action::History, "game.lobby"));
    assert!(!p.allows(Action::History, "game.p1.state"));

    let refused = TokenVerifier::hs256(format!("{SECRET}\n").as_bytes())
        .unwrap()
        .verify(token, before)
        .unwrap_err();
    assert!(refused.to_string().contains("invalid token"), "{refused}");
    let expired = TokenVerifier::hs256(SECRET.as_bytes())
        .unwrap()
        .verify(token, verified.expires)
        .unwrap_err();
    assert!(expired.to_string().contains("token expired"), "{expired}");
}

#[tokio::test]
async fn a_missing_secret_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let (code, stdout, stderr) = run(quicbus()
        .args(["token", "--user", "alice", "--secret-file"])
        .arg(&missing))
    .await;
    assert_eq!(code, 1, "stderr: {stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    assert!(stderr.starts_with("quicbus: error: "), "{stderr}");
    assert!(stderr.contains("no-such-secret"), "{stderr}");
}

#[tokio::test]
async fn an_empty_secret_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-secret");
    std::fs::write(&empty, "\n").unwrap();
    let (code, stdout, stderr) = run(quicbus()
        .args(["token", "--user", "alice", "--secret-file"])
        .arg(&empty))
    .await;
    assert_eq!(code, 1, "stderr: {stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    assert!(
        stderr.contains("empty-secret") && stderr.contains("empty"),
        "{stderr}"
    );
}

#[tokio::test]
async fn bad_arguments_are_refused_before_minting() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    // Each case: the arguments after --secret-file, and what the message names.
    let cases: [(&[&str], &str); 5] = [
        (
            &["--user", "a", "--publish", "game.>.input"],
            "'game.>.input'",
        ),
        (&["--user", "a", "--subscribe", "game.lob*"], "'game.lob*'"),
        (&["--user", "a", "--history", ""], "'' for '--history"),
        (&["--user", "a", "--ttl", "0"], "'0' for '--ttl"),
        (&["--user", ""], "'' for '--user"),
    ];
    for (args, named) in cases {
        let (code, stdout, stderr) = run(quicbus()
            .args(["token", "--secret-file"])
            .arg(&secret)
            .args(args))
        .await;
        assert_ne!(code, 0, "{args:?} was accepted");
        assert!(stdout.is_empty(), "{args:?} printed {stdout:?}");
        assert!(
            stderr.contains("invalid value") && stderr.contains(named),
            "{args:?}: {stderr}"
        );
    }
}
