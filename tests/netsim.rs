//! netsim end to end: a UDP echo server (or a bare socket) behind the proxy,
//! real QUIC through a lossy path, and the `quicbus netsim` command.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{within, WAIT};
use quicbus::netsim::{Impairment, Netsim, NetsimConfig, NetsimHandle, NetsimStats};
use tokio::net::UdpSocket;

/// Every packet the echo server received: sender and payload.
type Seen = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// A UDP echo server that remembers who sent what.
struct Echo {
    addr: SocketAddr,
    seen: Seen,
    /// Woken whenever a packet is recorded.
    arrived: Arc<tokio::sync::Notify>,
}

async fn echo_server() -> Echo {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (log, notify) = (seen.clone(), arrived.clone());
    tokio::spawn(async move {
        let mut buf = vec![0; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            log.lock().unwrap().push((from, buf[..n].to_vec()));
            notify.notify_waiters();
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    Echo {
        addr,
        seen,
        arrived,
    }
}

impl Echo {
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until `n` packets have arrived, within the test timeout.
    async fn wait_count(&self, n: usize) {
        within("packets at the echo server", async {
            loop {
                let arrived = self.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if self.count() >= n {
                    return;
                }
                arrived.await;
            }
        })
        .await
    }
}

async fn proxy(upstream: SocketAddr, configure: impl FnOnce(&mut NetsimConfig)) -> NetsimHandle {
    let mut config = NetsimConfig::new("127.0.0.1:0".parse().unwrap(), upstream);
    configure(&mut config);
    Netsim::start(config).await.expect("start netsim")
}

/// A client socket that talks to `proxy` only.
async fn client(proxy: &NetsimHandle) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(proxy.local_addr()).await.unwrap();
    socket
}

async fn recv(socket: &UdpSocket, what: &str) -> Vec<u8> {
    let mut buf = vec![0; 65_535];
    let n = within(what, socket.recv(&mut buf)).await.unwrap();
    buf.truncate(n);
    buf
}

/// Waits until the proxy's counters satisfy `cond` (woken by each count),
/// within the test timeout.
async fn until(proxy: &NetsimHandle, what: &str, cond: impl Fn(&NetsimStats) -> bool) {
    if tokio::time::timeout(WAIT, proxy.wait_for(cond))
        .await
        .is_err()
    {
        panic!("timed out waiting for {what}: {:?}", proxy.stats());
    }
}

fn nothing_waiting(socket: &UdpSocket) -> bool {
    let mut buf = [0; 16];
    matches!(socket.try_recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn a_clean_path_echoes_every_packet() {
    let echo = echo_server().await;
    let proxy = proxy(echo.addr, |_| {}).await;
    let socket = client(&proxy).await;
    for i in 0..100u32 {
        let payload = i.to_be_bytes();
        socket.send(&payload).await.unwrap();
        assert_eq!(recv(&socket, "echo").await, payload);
    }
    // The largest UDP datagram loopback carries goes through whole.
    let big = vec![7u8; 65_507];
    socket.send(&big).await.unwrap();
    assert_eq!(recv(&socket, "big echo").await, big);
    let s = proxy.stats();
    for d in [s.up, s.down] {
        assert_eq!((d.received, d.forwarded), (101, 101), "{s:?}");
    }
    assert_eq!(s.clients, 1);
}

#[tokio::test]
async fn full_loss_echoes_nothing_and_counts_every_drop() {
    let echo = echo_server().await;
    let proxy = proxy(echo.addr, |c| c.up.loss_pct = 100.0).await;
    let socket = client(&proxy).await;
    for i in 0..50u8 {
        socket.send(&[i]).await.unwrap();
    }
    until(&proxy, "50 packets lost", |s| s.up.dropped_loss == 50).await;
    let s = proxy.stats();
    assert_eq!((s.up.received, s.up.forwarded), (50, 0));
    assert_eq!(echo.count(), 0);
    assert!(nothing_waiting(&socket));
}

#[tokio::test]
async fn a_blackhole_drops_both_ways_until_lifted() {
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = proxy(server.local_addr().unwrap(), |_| {}).await;
    let socket = client(&proxy).await;
    let mut buf = [0; 16];
    socket.send(b"a").await.unwrap();
    let (n, mapped) = within("first packet", server.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"a");

    proxy.set_blackhole(true);
    assert!(proxy.blackholed());
    socket.send(b"b").await.unwrap();
    until(&proxy, "up drop", |s| s.up.dropped_blackhole == 1).await;
    server.send_to(b"x", mapped).await.unwrap();
    until(&proxy, "down drop", |s| s.down.dropped_blackhole == 1).await;

    proxy.set_blackhole(false);
    assert!(!proxy.blackholed());
    socket.send(b"c").await.unwrap();
    let (n, from) = within("packet after the outage", server.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"c"[..], mapped), "b was dropped");
    server.send_to(b"y", mapped).await.unwrap();
    assert_eq!(recv(&socket, "reply after the outage").await, b"y");
    let s = proxy.stats();
    assert_eq!((s.up.forwarded, s.down.forwarded), (2, 1));
}

#[tokio::test]
async fn delay_each_way_adds_to_the_round_trip() {
    let echo = echo_server().await;
    let delay = Duration::from_millis(30);
    let proxy = proxy(echo.addr, |c| {
        c.up.delay = delay;
        c.down.delay = delay;
    })
    .await;
    let socket = client(&proxy).await;
    for i in 0..3u8 {
        let sent = Instant::now();
        socket.send(&[i]).await.unwrap();
        assert_eq!(recv(&socket, "delayed echo").await, [i]);
        let rtt = sent.elapsed();
        assert!(rtt >= 2 * delay, "round trip {rtt:?}");
    }
}

#[tokio::test]
async fn two_clients_get_separate_mappings() {
    let echo = echo_server().await;
    let proxy = proxy(echo.addr, |_| {}).await;
    let (a, b) = (client(&proxy).await, client(&proxy).await);
    a.send(b"from a").await.unwrap();
    assert_eq!(recv(&a, "echo to a").await, b"from a");
    b.send(b"from b").await.unwrap();
    assert_eq!(recv(&b, "echo to b").await, b"from b");
    a.send(b"a again").await.unwrap();
    assert_eq!(recv(&a, "second echo to a").await, b"a again");
    assert!(nothing_waiting(&b), "b gets only its own echo");
    let seen = echo.seen.lock().unwrap().clone();
    assert_eq!(seen[0].0, seen[2].0, "a keeps its mapping");
    assert_ne!(seen[0].0, seen[1].0, "b has its own");
    assert_ne!(seen[0].0, a.local_addr().unwrap());
    assert_eq!(proxy.stats().clients, 2);
}

#[tokio::test]
async fn the_table_is_bounded_and_idle_mappings_expire() {
    let echo = echo_server().await;
    let proxy = proxy(echo.addr, |c| {
        c.max_clients = 1;
        c.client_idle = Duration::from_secs(1);
    })
    .await;
    let (a, b) = (client(&proxy).await, client(&proxy).await);
    a.send(b"a").await.unwrap();
    assert_eq!(recv(&a, "echo to a").await, b"a");
    b.send(b"b").await.unwrap();
    until(&proxy, "b refused", |s| s.clients_refused == 1).await;
    until(&proxy, "a's mapping to expire", |s| s.clients == 0).await;
    b.send(b"b2").await.unwrap();
    assert_eq!(recv(&b, "echo to b").await, b"b2");
    assert!(nothing_waiting(&b), "the refused packet never went through");
}

#[tokio::test]
async fn duplicates_arrive_twice() {
    let echo = echo_server().await;
    let proxy = proxy(echo.addr, |c| c.up.duplicate_pct = 100.0).await;
    let socket = client(&proxy).await;
    socket.send(b"twice").await.unwrap();
    assert_eq!(recv(&socket, "first copy").await, b"twice");
    assert_eq!(recv(&socket, "second copy").await, b"twice");
    let s = proxy.stats();
    assert_eq!(
        (s.up.duplicated, s.up.forwarded, s.down.forwarded),
        (1, 2, 2)
    );
}

/// Which of 100 packets a proxy with 50% loss and `seed` lets through.
async fn survivors(seed: u64) -> Vec<u8> {
    let echo = echo_server().await;
    let proxy = proxy(echo.addr, |c| {
        c.seed = seed;
        c.up.loss_pct = 50.0;
    })
    .await;
    let socket = client(&proxy).await;
    for batch in 0..10u8 {
        for i in 0..10 {
            socket.send(&[batch * 10 + i]).await.unwrap();
        }
        let sent = u64::from(batch + 1) * 10;
        until(&proxy, "the batch to arrive", |s| s.up.received == sent).await;
    }
    until(&proxy, "every survivor forwarded", |s| {
        s.up.forwarded + s.up.dropped_loss == 100
    })
    .await;
    let forwarded = proxy.stats().up.forwarded as usize;
    echo.wait_count(forwarded).await;
    let seen = echo.seen.lock().unwrap();
    assert_eq!(seen.len(), forwarded);
    seen.iter().map(|(_, p)| p[0]).collect()
}

#[tokio::test]
async fn the_same_seed_and_traffic_repeat_the_same_losses() {
    let first = survivors(11).await;
    assert!((20..=80).contains(&first.len()), "{}", first.len());
    assert_eq!(first, survivors(11).await);
    assert_ne!(first, survivors(12).await);
}

#[tokio::test]
async fn impairment_changes_at_runtime_and_invalid_ones_are_refused() {
    let echo = echo_server().await;
    let proxy = proxy(echo.addr, |_| {}).await;
    let socket = client(&proxy).await;
    socket.send(b"1").await.unwrap();
    assert_eq!(recv(&socket, "clean echo").await, b"1");
    let lossy = Impairment {
        loss_pct: 100.0,
        ..Impairment::default()
    };
    proxy.set_impairment(Impairment::default(), lossy).unwrap();
    socket.send(b"2").await.unwrap();
    until(&proxy, "the echo lost", |s| s.down.dropped_loss == 1).await;
    let bad = Impairment {
        loss_pct: 101.0,
        ..Impairment::default()
    };
    let err = proxy.set_impairment(bad, lossy).unwrap_err();
    assert!(err.to_string().starts_with("up: loss"), "{err}");
    proxy
        .set_impairment(Impairment::default(), Impairment::default())
        .unwrap();
    socket.send(b"3").await.unwrap();
    assert_eq!(recv(&socket, "echo after the change").await, b"3");
}

#[tokio::test]
async fn shutdown_and_drop_free_the_port() {
    let echo = echo_server().await;
    let proxy = proxy(echo.addr, |_| {}).await;
    let addr = proxy.local_addr();
    let socket = client(&proxy).await;
    socket.send(b"x").await.unwrap();
    assert_eq!(recv(&socket, "echo").await, b"x");
    within("shutdown", proxy.shutdown()).await;
    let again = UdpSocket::bind(addr)
        .await
        .expect("port free after shutdown");
    drop(again);

    let proxy = self::proxy(echo.addr, |c| c.listen = addr).await;
    drop(proxy);
    // The aborted tasks are dropped, closing the socket, once the runtime
    // polls them again.
    for _ in 0..10_000 {
        if UdpSocket::bind(addr).await.is_ok() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("port still taken after the handle was dropped");
}

#[tokio::test]
async fn bad_settings_are_refused_before_binding() {
    let echo = echo_server().await;
    let mut config = NetsimConfig::new("127.0.0.1:0".parse().unwrap(), echo.addr);
    config.down.reorder_pct = f64::NAN;
    let err = Netsim::start(config.clone()).await.unwrap_err();
    assert!(err.to_string().starts_with("down: reorder"), "{err}");
    config.down.reorder_pct = 0.0;
    config.blackhole = Some(quicbus::netsim::BlackholeSchedule {
        every: Duration::from_secs(1),
        duration: Duration::from_secs(2),
    });
    assert!(Netsim::start(config.clone()).await.is_err());
    let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    config.blackhole = None;
    config.listen = taken.local_addr().unwrap();
    let err = Netsim::start(config).await.unwrap_err();
    assert!(err.to_string().starts_with("cannot listen on"), "{err}");
}

// Real QUIC through 5% loss each way: reliable events arrive complete and
// in order, after retransmissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_events_cross_a_lossy_path_complete_and_in_order() {
    const N: u64 = 2000;
    let server = common::start().await;
    let proxy = proxy(server.handle.local_addr(), |c| {
        c.seed = 2024;
        c.up.loss_pct = 5.0;
        c.down.loss_pct = 5.0;
    })
    .await;
    let mut options = server.options();
    options.server = proxy.local_addr();
    options.connect_timeout = Duration::from_secs(15);
    options.request_timeout = Duration::from_secs(15);
    let (subscriber, mut events) = within("connect through the proxy", async {
        quicbus::client::Client::connect(options).await
    })
    .await
    .expect("connect through the proxy");
    within("join", subscriber.join("lossy")).await.unwrap();

    let (publisher, _publisher_events) = server.client().await;
    let payload = |i: u64| format!("{i:0>256}").into_bytes();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publisher.emit("lossy", "n", payload(i)).await.unwrap();
        }
        publisher
    });
    within("every event through the lossy path", async {
        let mut last = 0;
        for i in 0..N {
            let event = events.next().await.expect("event stream open");
            let offset = event.offset().expect("reliable");
            assert!(offset > last, "offsets increase: {offset} after {last}");
            last = offset;
            assert_eq!(event.payload.as_ref(), payload(i), "event {i}");
        }
    })
    .await;
    let _publisher = within("publisher", sender).await.unwrap();
    // Seed 2024 loses the 17th packet up and the 5th down, far fewer than
    // this run sends, so both directions really lost packets.
    let s = proxy.stats();
    assert!(s.up.dropped_loss > 0 && s.down.dropped_loss > 0, "{s:?}");
    subscriber.close().await;
}

mod cli {
    //! `quicbus netsim` as a process.

    use std::process::Stdio;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    use super::*;

    fn quicbus() -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quicbus"));
        cmd.kill_on_drop(true).stdin(Stdio::null());
        cmd
    }

    #[tokio::test]
    async fn bad_flags_exit_2_and_a_taken_port_exits_1() {
        let base = [
            "netsim",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
        ];
        for extra in [
            &["--loss", "101"][..],
            &["--loss", "sideways:5"],
            &["--delay", "-1"],
            &["--reorder", "up:x"],
            &["--blackhole-every", "5"],
            &["--blackhole-every", "1", "--blackhole-for", "2"],
            &["--no-such-flag"],
        ] {
            let out = within(
                "netsim usage error",
                quicbus().args(base).args(extra).output(),
            )
            .await
            .unwrap();
            assert_eq!(out.status.code(), Some(2), "{extra:?}");
        }

        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let out = within(
            "netsim on a taken port",
            quicbus()
                .args(["netsim", "--listen", &addr, "--upstream", "127.0.0.1:9"])
                .output(),
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("quicbus: error: cannot listen on {addr}")),
            "{stderr}"
        );
    }

    #[tokio::test]
    async fn forwards_and_prints_final_counters_on_sigterm() {
        let echo = echo_server().await;
        let mut child = quicbus()
            .args(["netsim", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(echo.addr.to_string())
            .args(["--delay", "up:1", "--seed", "5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr: SocketAddr = within("netsim to listen", async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.strip_prefix("quicbus netsim listening on ") {
                    return rest.split(',').next().unwrap().parse().unwrap();
                }
            }
            panic!("netsim exited without listening");
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(addr).await.unwrap();
        socket.send(b"through the cli").await.unwrap();
        assert_eq!(recv(&socket, "echo via the cli").await, b"through the cli");

        let pid = child.id().unwrap().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = within("netsim to stop", child.wait_with_output())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{stdout}");
        assert!(
            lines[0].starts_with("up: received=1 forwarded=1 "),
            "{stdout}"
        );
        assert!(
            lines[1].starts_with("down: received=1 forwarded=1 "),
            "{stdout}"
        );
        assert_eq!(lines[2], "clients: live=1 refused=0");
    }
}
