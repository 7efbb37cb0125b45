//! The secured set-up of the README, end to end with the binary: a secret,
//! `quicbus token` for a publisher and a read-only subscriber, `serve
//! --auth-secret-file`, and what `pub` and `sub` print when refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::process::{assert_one_line_failure, json_lines, quicbus, run, sub, ServeProcess};
use common::within;

/// `quicbus token` with `args` after the secret file; the token it prints.
async fn mint(secret: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(quicbus()
        .arg("token")
        .arg("--secret-file")
        .arg(secret)
        .args(args))
    .await;
    assert_eq!(code, 0, "{stderr}");
    let token = stdout.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    token
}

/// `quicbus COMMAND` against the server at `addr`, with `token` (if any)
/// in `QUICBUS_TOKEN` and nothing inherited from the environment.
fn client_command(
    addr: &str,
    ca: &Path,
    command: &str,
    token: Option<&str>,
    extra: &[&str],
) -> tokio::process::Command {
    let mut cmd = quicbus();
    cmd.arg(command)
        .args(["--server", addr, "--no-reconnect"])
        .arg("--ca")
        .arg(ca)
        .args(extra)
        .env_remove("QUICBUS_TOKEN");
    if let Some(token) = token {
        cmd.env("QUICBUS_TOKEN", token);
    }
    cmd
}

#[tokio::test]
async fn a_secured_server_lets_each_token_do_what_it_allows_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "correct horse battery staple, but longer\n").unwrap();
    let server = ServeProcess::start(
        dir.path(),
        &["--memory", "--auth-secret-file", secret.to_str().unwrap()],
    )
    .await;
    let addr = server.addr.to_string();
    let ca = server.ca();
    let publisher = mint(
        &secret,
        &[
            "--user",
            "game-server",
            "--publish",
            "game.>",
            "--subscribe",
            "game.>",
        ],
    )
    .await;
    let reader = mint(
        &secret,
        &[
            "--user",
            "viewer",
            "--subscribe",
            "game.*",
            "--history",
            "game.*",
        ],
    )
    .await;

    // The read-only subscriber receives what the publisher sends.
    let watching = sub(
        &addr,
        &ca,
        &["--room", "game.lobby", "--count", "2", "--token", &reader],
    )
    .await;
    let (code, stdout, stderr) = run(quicbus()
        .args(["pub", "--ack", "--room", "game.lobby", "--event", "move"])
        .args(["--server", &addr, "--token", &publisher, "--count", "2"])
        .arg("--ca")
        .arg(&ca)
        .arg("e2e4")
        .env_remove("QUICBUS_TOKEN"))
    .await;
    assert_eq!((code, stdout.as_str()), (0, "1\n2\n"), "{stderr}");
    let out = within("sub to print", watching.wait_with_output())
        .await
        .unwrap();
    assert!(out.status.success());
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines.len(), 2);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["room"], "game.lobby");
        assert_eq!(line["event"], "move");
        assert_eq!(line["delivery"], "reliable");
        assert_eq!(line["offset"], i as u64 + 1);
        assert_eq!(line["payload"], "e2e4");
    }

    let client = |command: &str, token: Option<&str>, extra: &[&str]| {
        client_command(&addr, &ca, command, token, extra)
    };
    let publish = ["--room", "game.lobby", "--event", "move", "x"];
    // The reader may not publish, reliably or as datagrams.
    assert_one_line_failure(
        run(&mut client("pub", Some(&reader), &publish)).await,
        "forbidden",
    );
    assert_one_line_failure(
        run(&mut client(
            "pub",
            Some(&reader),
            &[&publish[..4], &["--datagram", "x"]].concat(),
        ))
        .await,
        "forbidden",
    );
    // A room outside the token's patterns (`*` is one token).
    assert_one_line_failure(
        run(&mut client(
            "sub",
            Some(&reader),
            &["--room", "game.lobby.deep"],
        ))
        .await,
        "forbidden",
    );
    assert_one_line_failure(
        run(&mut client("sub", Some(&publisher), &["--room", "chat.x"])).await,
        "forbidden",
    );
    // No token, an expired one, a tampered one.
    assert_one_line_failure(
        run(&mut client("pub", None, &publish)).await,
        "token required",
    );
    let expired = quicbus::auth::token::mint_hs256(
        b"correct horse battery staple, but longer",
        &quicbus::auth::token::TokenRequest {
            user: "game-server".into(),
            permissions: Default::default(),
            ttl: 60,
        },
        quicbus::auth::token::unix_now() - 3600,
    )
    .unwrap();
    assert_one_line_failure(
        run(&mut client("pub", Some(&expired), &publish)).await,
        "token expired",
    );
    let mut tampered = publisher.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_one_line_failure(
        run(&mut client("pub", Some(&tampered), &publish)).await,
        "invalid token",
    );
}

#[tokio::test]
async fn auth_flags_that_cannot_work_end_serve_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |args: &[&str]| {
        let mut cmd = quicbus();
        cmd.args(["serve", "--memory", "--listen", "127.0.0.1:0", "--certs"])
            .arg(dir.path().join("certs"))
            .args(args)
            .env_remove("QUICBUS_TOKEN");
        cmd
    };
    let missing = dir.path().join("missing");
    assert_one_line_failure(
        run(&mut serve(&[
            "--auth-secret-file",
            missing.to_str().unwrap(),
        ]))
        .await,
        "missing",
    );
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello\n").unwrap();
    assert_one_line_failure(
        run(&mut serve(&[
            "--auth-public-key",
            not_a_key.to_str().unwrap(),
        ]))
        .await,
        "--auth-public-key",
    );
    assert_one_line_failure(
        run(&mut serve(&["--allow-anonymous"])).await,
        "--allow-anonymous needs",
    );
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret-s3cret-s3cret").unwrap();
    assert_one_line_failure(
        run(&mut serve(&[
            "--auth-secret-file",
            secret.to_str().unwrap(),
            "--token",
            "shared",
        ]))
        .await,
        "do not go together",
    );
}

/// The README's secured set-up: auth, anonymous permissions and two
/// namespaces, all from a config file.
#[tokio::test]
async fn a_config_file_sets_auth_anonymous_permissions_and_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, "another secret for the config test\n").unwrap();
    let config = dir.path().join("quicbus.toml");
    std::fs::write(
        &config,
        format!(
            r#"memory = true
auth-secret-file = "{}"
allow-anonymous = true

[anonymous]
subscribe = ["public.>"]

[namespaces.game]
history_events = 0
max_payload = 8

[namespaces.chat]
datagrams = false
"#,
            secret.display()
        ),
    )
    .unwrap();
    let server = ServeProcess::start(dir.path(), &["--config", config.to_str().unwrap()]).await;
    let addr = server.addr.to_string();
    let ca = server.ca();
    let publisher = mint(
        &secret,
        &[
            "--user",
            "p",
            "--publish",
            ">",
            "--subscribe",
            ">",
            "--history",
            ">",
        ],
    )
    .await;
    let client = |command: &str, token: Option<&str>, extra: &[&str]| {
        client_command(&addr, &ca, command, token, extra)
    };
    // Anonymous: public.> only, to subscribe.
    let anonymous = sub(&addr, &ca, &["--room", "public.news", "--count", "1"]).await;
    let (code, _, stderr) = run(&mut client(
        "pub",
        Some(&publisher),
        &[
            "--room",
            "public.news",
            "--event",
            "e",
            "--ack",
            "read all about it",
        ],
    ))
    .await;
    assert_eq!(code, 0, "{stderr}");
    let out = within("anonymous sub", anonymous.wait_with_output())
        .await
        .unwrap();
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines[0]["room"], "public.news");
    assert_eq!(lines[0]["payload"], "read all about it");
    assert_one_line_failure(
        run(&mut client("sub", None, &["--room", "game.lobby"])).await,
        "forbidden",
    );
    assert_one_line_failure(
        run(&mut client(
            "pub",
            None,
            &["--room", "public.news", "--event", "e", "x"],
        ))
        .await,
        "forbidden",
    );
    // game: payloads of at most 8 bytes.
    assert_one_line_failure(
        run(&mut client(
            "pub",
            Some(&publisher),
            &["--room", "game.lobby", "--event", "e", "nine bytes"],
        ))
        .await,
        "maximum of 8 bytes of namespace 'game'",
    );
    // chat: no datagrams. The refusal answers no request, so pub (fire and
    // forget) exits 0; tests/auth.rs checks the refusal is told and counted.
    let (code, _, stderr) = run(&mut client(
        "pub",
        Some(&publisher),
        &["--room", "chat.x", "--event", "e", "--datagram", "x"],
    ))
    .await;
    assert_eq!(code, 0, "{stderr}");
}
