//! `quicbus bench` end to end with tiny counts: every JSON field is there
//! and sane, the plots are drawn, and bad arguments are refused. No timing
//! is asserted: the speed targets belong to the benchmark, not to CI.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

fn quicbus(args: &[&str]) -> Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quicbus"))
            .args(args)
            .kill_on_drop(true)
            .output();
        // The bench runs bound themselves; this bounds the whole command too.
        match tokio::time::timeout(Duration::from_secs(240), output).await {
            Ok(out) => out.expect("spawn quicbus"),
            Err(_) => panic!("quicbus {args:?} ran past 240 s"),
        }
    })
}

/// Runs `quicbus ARGS`, requires success, and returns stdout and stderr.
fn quicbus_ok(args: &[&str]) -> (String, String) {
    let out = quicbus(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "quicbus {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

fn rows(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str::<Vec<Value>>(&text).unwrap()
}

fn u(row: &Value, field: &str) -> u64 {
    row[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing or not a count in {row}"))
}

fn f(row: &Value, field: &str) -> f64 {
    row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing or not a number in {row}"))
}

fn s<'a>(row: &'a Value, field: &str) -> &'a str {
    row[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing or not text in {row}"))
}

fn assert_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.starts_with("<svg") && text.contains("</svg>"),
        "not an SVG: {path:?}"
    );
    assert!(
        text.contains("<polyline"),
        "the plot has no curves: {path:?}"
    );
}

#[test]
fn bench_latency_writes_every_field_with_sane_values() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("latency.json");
    let svg = dir.path().join("latency.svg");
    let (stdout, stderr) = quicbus_ok(&[
        "bench",
        "latency",
        "--samples",
        "60",
        "--warmup",
        "10",
        "--loss",
        "0,5",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    // Progress went to stderr, the table to stdout.
    assert!(stderr.contains("relay reliable"), "{stderr}");
    assert!(stdout.contains("p99/udp"), "{stdout}");

    let rows = rows(&json);
    let names: Vec<(String, String)> = rows
        .iter()
        .map(|r| (s(r, "name").to_string(), s(r, "delivery").to_string()))
        .collect();
    let mut expected = vec![("udp-echo".to_string(), "udp".to_string())];
    for name in ["relay", "oneway", "netsim-loss0", "netsim-loss5"] {
        for delivery in ["reliable", "reliable+copies", "datagram"] {
            expected.push((name.to_string(), delivery.to_string()));
        }
    }
    assert_eq!(names, expected);
    let udp_p50 = u(&rows[0], "p50_us");
    for row in &rows {
        let (sent, delivered) = (u(row, "sent"), u(row, "delivered"));
        assert_eq!(sent, 60, "{row}");
        assert!(delivered <= sent, "{row}");
        if s(row, "delivery") != "datagram" {
            assert_eq!(delivered, sent, "reliable events are never lost: {row}");
        }
        assert_eq!(u(row, "misordered"), 0, "duplicated or reordered: {row}");
        let p: Vec<u64> = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
            .iter()
            .map(|k| u(row, k))
            .collect();
        if delivered > 0 {
            assert!(p[0] >= 1, "{row}");
        }
        assert!(
            p.windows(2).all(|w| w[0] <= w[1]),
            "percentiles out of order: {row}"
        );
        assert_eq!(u(row, "udp_p50_us"), udp_p50);
        assert!(f(row, "p50_vs_udp") >= 0.0 && f(row, "p99_vs_udp") >= f(row, "p50_vs_udp"));
        let loss = f(row, "loss_pct");
        let expect_loss = if s(row, "name") == "netsim-loss5" {
            5.0
        } else {
            0.0
        };
        assert_eq!(loss, expect_loss, "{row}");
    }
    assert_svg(&svg);
}

#[test]
fn bench_latency_paced_keeps_every_reliable_event_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("paced.json");
    quicbus_ok(&[
        "bench",
        "latency",
        "--scenario",
        "relay",
        "--rate",
        "2000",
        "--samples",
        "200",
        "--warmup",
        "20",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    let rows = rows(&json);
    assert_eq!(rows.len(), 4, "udp echo and three relay rows");
    for row in &rows[1..] {
        assert_eq!(u(row, "sent"), 200);
        assert_eq!(u(row, "misordered"), 0, "{row}");
        if s(row, "delivery") != "datagram" {
            assert_eq!(u(row, "delivered"), 200, "{row}");
        }
        assert!(u(row, "p50_us") <= u(row, "p99_us"), "{row}");
    }
}

#[test]
fn bench_fanout_writes_every_field_with_sane_values() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("fanout.json");
    let svg = dir.path().join("fanout.svg");
    let (_, stderr) = quicbus_ok(&[
        "bench",
        "fanout",
        "--subscribers",
        "1,3",
        "--events",
        "300",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(stderr.contains("fanout 1x3 reliable"), "{stderr}");

    let rows = rows(&json);
    assert_eq!(rows.len(), 4, "{rows:?}");
    for (row, (subs, delivery)) in rows.iter().zip([
        (1, "reliable"),
        (1, "datagram"),
        (3, "reliable"),
        (3, "datagram"),
    ]) {
        assert_eq!(s(row, "name"), format!("fanout-1x{subs}"));
        assert_eq!(s(row, "delivery"), delivery);
        assert_eq!(u(row, "subscribers"), subs);
        let (sent, delivered) = (u(row, "sent"), u(row, "delivered"));
        assert_eq!(sent, 300, "{row}");
        assert!(delivered <= sent * subs, "{row}");
        if delivery == "reliable" {
            assert_eq!(
                delivered,
                sent * subs,
                "reliable fan-out loses nothing: {row}"
            );
            assert_eq!(f(row, "loss_pct"), 0.0);
        }
        assert_eq!(u(row, "misordered"), 0, "duplicated or reordered: {row}");
        assert!(f(row, "events_per_sec") > 0.0, "{row}");
        assert!(u(row, "p99_us") >= u(row, "p50_us"), "{row}");
        assert!(f(row, "server_cpu_s") >= 0.0, "{row}");
        // A connection costs the server something, and far less than 10 MB.
        let mem = u(row, "mem_per_conn_bytes");
        assert!(mem < 10_000_000, "{row}");
        assert!(u(row, "udp_p50_us") >= 1, "{row}");
    }
    assert_svg(&svg);
}

#[test]
fn bench_refuses_bad_arguments_with_usage_errors() {
    for args in [
        &["bench", "latency", "--size", "4"][..],
        &["bench", "latency", "--scenario", "sideways"],
        &["bench", "latency", "--loss", "150", "--scenario", "loss"],
        &["bench", "latency", "--delay", "-1"],
        &["bench", "fanout", "--subscribers", "0"],
        &["bench", "fanout", "--subscribers", "ten"],
        &["bench", "fanout", "--size", "8"],
    ] {
        let out = quicbus(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            code == Some(2) || code == Some(1),
            "{args:?} exited {code:?}: {stderr}"
        );
        assert!(!stderr.trim().is_empty(), "{args:?} said nothing");
    }
}
