//! The `quicbus` binary end to end: certs, serve, pub, sub, demo, and exit codes.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Stdio;

use common::process::{assert_one_line_failure, json_lines, quicbus, run, sub};
use common::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// `quicbus serve` on a free port; returns the child and its address.
async fn serve(certs: &Path) -> (Child, String) {
    let mut child = quicbus()
        .args(["serve", "--listen", "127.0.0.1:0", "--certs"])
        .arg(certs)
        .arg("--data")
        .arg(certs.with_file_name("data"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = within("serve to listen", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("quicbus listening on ") {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("serve exited without listening");
    })
    .await;
    // Keep draining stderr so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test]
async fn serve_sub_and_pub_move_reliable_and_datagram_events() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (mut server, addr) = serve(&certs).await;
    let ca = certs.join("ca.pem");
    assert!(ca.exists(), "serve creates certificates on first run");

    let reader = sub(
        &addr,
        &ca,
        &["--room", "chat", "--count", "3", "--timeout", "20"],
    )
    .await;
    let (code, _, stderr) = run(quicbus()
        .args(["pub", "--server", &addr, "--ca"])
        .arg(&ca)
        .args(["--room", "chat", "--event", "say", "--count", "3", "héllo"]))
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("published 3 reliable events"), "{stderr}");
    let out = within("sub", reader.wait_with_output()).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["type"], "event");
        assert_eq!(line["room"], "chat");
        assert_eq!(line["event"], "say");
        assert_eq!(line["delivery"], "reliable");
        assert_eq!(line["offset"], i as u64 + 1);
        assert_eq!(line["payload"], "héllo");
    }

    // Datagrams, with stdin lines as payloads and a binary-safe field name check.
    let reader = sub(
        &addr,
        &ca,
        &["--room", "pos", "--count", "1", "--timeout", "20"],
    )
    .await;
    let mut publisher = quicbus()
        .args(["pub", "--server", &addr, "--ca"])
        .arg(&ca)
        .args(["--room", "pos", "--event", "xy", "--datagram"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = publisher.stdin.take().unwrap();
        let text: String = (0..200).map(|i| format!("{i},{i}\n")).collect();
        stdin.write_all(text.as_bytes()).await.unwrap();
    }
    let pub_out = within("pub datagrams", publisher.wait_with_output())
        .await
        .unwrap();
    assert_eq!(pub_out.status.code(), Some(0));
    let out = within("sub datagram", reader.wait_with_output())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines[0]["delivery"], "datagram");
    assert!(lines[0]["seq"].as_u64().unwrap() >= 1);
    assert!(lines[0]["payload"].as_str().unwrap().contains(','));

    // SIGTERM is a graceful shutdown: exit 0.
    let pid = server.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = within("server exit", server.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn certs_writes_files_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("c");
    let (code, stdout, _) = run(quicbus().args(["certs", "--dir"]).arg(&target).args([
        "--san",
        "bus.example",
        "--san",
        "10.0.0.7",
    ]))
    .await;
    assert_eq!(code, 0);
    assert!(stdout.contains("bus.example") && stdout.contains("10.0.0.7"));
    for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
        assert!(target.join(f).exists(), "{f}");
    }
    let (code, _, stderr) = run(quicbus().args(["certs", "--dir"]).arg(&target)).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("--force"), "{stderr}");
    let (code, _, _) = run(quicbus().args(["certs", "--force", "--dir"]).arg(&target)).await;
    assert_eq!(code, 0);
}

#[tokio::test]
async fn client_failures_exit_1_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (mut server, addr) = serve(&certs).await;
    let ca = certs.join("ca.pem");

    // Unreachable: a UDP port where nobody speaks QUIC.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    assert_one_line_failure(
        run(quicbus()
            .args([
                "sub",
                "--room",
                "r",
                "--connect-timeout",
                "0.5",
                "--server",
                &silent_addr,
                "--ca",
            ])
            .arg(&ca))
        .await,
        "no answer from",
    );

    // A CA that did not sign the server's certificate.
    let other = dir.path().join("other");
    quicbus::certs::write_dev_certs(&other, &[]).unwrap();
    assert_one_line_failure(
        run(quicbus()
            .args([
                "pub", "--room", "r", "--event", "e", "--server", &addr, "--ca",
            ])
            .arg(other.join("ca.pem"))
            .arg("x"))
        .await,
        "certificate",
    );

    // A server address that is not one.
    assert_one_line_failure(
        run(quicbus()
            .args([
                "sub",
                "--room",
                "r",
                "--server",
                "no-such-host.invalid:4433",
                "--ca",
            ])
            .arg(&ca))
        .await,
        "cannot resolve server address",
    );
    assert_one_line_failure(
        run(quicbus()
            .args(["sub", "--room", "r", "--server", "not an address", "--ca"])
            .arg(&ca))
        .await,
        "not an address",
    );

    // A missing CA file.
    assert_one_line_failure(
        run(quicbus()
            .args(["sub", "--room", "r", "--server", &addr, "--ca"])
            .arg(dir.path().join("missing.pem")))
        .await,
        "missing.pem",
    );

    // --timeout passes before --count events arrive.
    assert_one_line_failure(
        run(quicbus()
            .args([
                "sub",
                "--room",
                "quiet",
                "--count",
                "1",
                "--timeout",
                "0.3",
                "--server",
                &addr,
                "--ca",
            ])
            .arg(&ca))
        .await,
        "timed out",
    );

    server.start_kill().unwrap();
    let _ = within("server exit", server.wait()).await;
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        vec!["sub"],
        vec!["pub", "--room", "r"],
        vec!["sub", "--room", "r", "--count", "0"],
        vec!["pub", "--room", "r", "--event", "e", "--rate", "-3", "x"],
        vec!["serve", "--listen", "nowhere"],
        vec!["serve", "--max-publish-rooms", "0"],
        vec!["serve", "--fsync", "sometimes"],
        vec!["serve", "--memory", "--data", "somewhere"],
        vec!["bench", "fanout", "--delivery", "sometimes"],
        vec!["frobnicate"],
    ] {
        let (code, _, stderr) = run(quicbus().args(&args)).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn demo_prints_a_line_per_second() {
    let (code, stdout, stderr) =
        run(quicbus().args(["demo", "--seconds", "2", "--entities", "200"])).await;
    assert_eq!(code, 0, "{stderr}");
    let seconds: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("snapshots/s"))
        .collect();
    assert_eq!(seconds.len(), 2, "{stdout}");
    assert!(stdout.contains("done: publisher sent"), "{stdout}");
    // The subscriber really received a world: 200 entities.
    assert!(seconds[1].ends_with("entities 200"), "{stdout}");
}

#[tokio::test]
async fn sub_reconnects_through_an_outage_and_prints_the_recovery() {
    use quicbus::netsim::{Netsim, NetsimConfig};
    let server = common::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.certs.ca_pem).unwrap();
    let netsim = Netsim::start(NetsimConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        server.handle.local_addr(),
    ))
    .await
    .unwrap();
    let proxy = netsim.local_addr().to_string();
    let mut child = quicbus()
        .args([
            "sub",
            "--room",
            "r",
            "--count",
            "3",
            "--idle-timeout",
            "0.6",
        ])
        .args(["--server", &proxy, "--ca"])
        .arg(&ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    wait_for_line(&mut stderr, "joined").await;
    let (publisher, _p) = server.client().await;
    publisher.emit_with_ack("r", "n", "one").await.unwrap();
    let line = within("event 1", stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(line.contains(r#""offset":1"#), "{line}");

    netsim.set_blackhole(true);
    wait_for_line(&mut stderr, "disconnected").await;
    publisher.emit_with_ack("r", "n", "two").await.unwrap();
    netsim.set_blackhole(false);
    let recovery: serde_json::Value = serde_json::from_str(
        &within("recovery line", stdout.next_line())
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        recovery,
        serde_json::json!({"type":"recovery","room":"r","recovered":true,"replayed":1})
    );
    let line = within("event 2", stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(line.contains(r#""offset":2"#), "{line}");
    publisher.emit_with_ack("r", "n", "three").await.unwrap();
    let line = within("event 3", stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(line.contains(r#""offset":3"#), "{line}");
    let status = within("sub exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn pub_with_ack_prints_each_offset() {
    let server = common::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.certs.ca_pem).unwrap();
    let addr = server.handle.local_addr().to_string();
    let (code, stdout, stderr) = run(quicbus()
        .args([
            "pub", "--ack", "--room", "acked", "--event", "e", "--count", "3",
        ])
        .args(["--server", &addr, "--ca"])
        .arg(&ca)
        .arg("x"))
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), vec!["1", "2", "3"]);
}

/// Reads lines until one starts with `prefix`.
async fn wait_for_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    prefix: &str,
) {
    within(prefix, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with(prefix) {
                return;
            }
        }
        panic!("the command ended before printing {prefix:?}");
    })
    .await
}

#[tokio::test]
async fn the_shared_token_comes_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "open-sesame\n").unwrap();
    let file_arg = token_file.to_str().unwrap();
    let server =
        common::process::ServeProcess::start(dir.path(), &["--memory", "--token-file", file_arg])
            .await;
    let addr = server.addr.to_string();
    let ca = server.ca();
    let publish = |token: Option<&str>| {
        let mut cmd = quicbus();
        cmd.args([
            "pub", "--ack", "--room", "r", "--event", "e", "--server", &addr,
        ])
        .arg("--ca")
        .arg(&ca)
        .arg("x")
        .env_remove("QUICBUS_TOKEN");
        if let Some(token) = token {
            cmd.env("QUICBUS_TOKEN", token);
        }
        cmd
    };
    // The client takes the token from QUICBUS_TOKEN, as --token.
    let (code, stdout, stderr) = run(&mut publish(Some("open-sesame"))).await;
    assert_eq!((code, stdout.trim()), (0, "1"), "{stderr}");
    assert_one_line_failure(run(&mut publish(Some("open-sesam"))).await, "unauthorized");
    assert_one_line_failure(run(&mut publish(None)).await, "unauthorized");
    // A token file that holds no token ends serve with one line.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    assert_one_line_failure(
        run(quicbus()
            .args([
                "serve",
                "--memory",
                "--listen",
                "127.0.0.1:0",
                "--token-file",
            ])
            .arg(&empty))
        .await,
        "holds no token",
    );
    assert_one_line_failure(
        run(quicbus()
            .args([
                "serve",
                "--memory",
                "--listen",
                "127.0.0.1:0",
                "--token-file",
            ])
            .arg(dir.path().join("missing")))
        .await,
        "--token-file",
    );
}

#[tokio::test]
async fn pub_moves_past_a_server_that_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::process::ServeProcess::start(dir.path(), &["--memory"]).await;
    let live = server.addr.to_string();
    // Bound and never answering: a server that is down.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap().to_string();
    let comma_separated = format!("{dead},{live}");
    for (offset, servers) in [
        ("1", vec!["--server", &comma_separated]),
        ("2", vec!["--server", &dead, "--server", &live]),
    ] {
        let (code, stdout, stderr) = run(quicbus()
            .args(["pub", "--ack", "--room", "r", "--event", "e"])
            .args(&servers)
            .args(["--connect-timeout", "1", "--ca"])
            .arg(server.ca())
            .arg("x"))
        .await;
        assert_eq!((code, stdout.trim()), (0, offset), "{servers:?}: {stderr}");
    }
}
