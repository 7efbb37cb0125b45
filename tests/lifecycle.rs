//! Graceful shutdown, slow consumers and the connection limit.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{next_event, within};
use quicbus::client::{Client, ClientError};
use quicbus::server::ServerConfig;
use quicbus::wire::close_code;

#[tokio::test]
async fn graceful_shutdown_delivers_every_accepted_event_then_closes() {
    // 3,000 events of 4 KiB: far more than QUIC's flow-control window, so
    // when shutdown starts most of them are still queued in the server.
    const N: u64 = 3_000;
    common::init_tracing();
    let server = common::start().await;
    let mut publisher_options = server.options();
    // Without reconnecting, an emit after the shutdown fails at once.
    publisher_options.reconnect = None;
    let (publisher, _p) = within("connect", Client::connect(publisher_options))
        .await
        .unwrap();
    let mut options = server.options();
    options.event_queue = 8;
    let (subscriber, mut events) = within("connect", Client::connect(options)).await.unwrap();
    subscriber.join("s").await.unwrap();
    let payload = |i: u64| {
        let mut p = vec![0u8; 4096];
        p[..8].copy_from_slice(&i.to_be_bytes());
        p
    };
    within("publishing", async {
        for i in 0..N - 1 {
            publisher.emit("s", "e", payload(i)).await.unwrap();
        }
        // The ack of the last event means the server accepted all of them.
        let last = publisher
            .emit_with_ack("s", "e", payload(N - 1))
            .await
            .unwrap();
        assert_eq!(last, N);
    })
    .await;

    let TestServerParts { handle, .. } = TestServerParts::from(server);
    let shutdown = tokio::spawn(handle.shutdown());
    for i in 0..N {
        let e = next_event(&mut events, "event during shutdown").await;
        assert_eq!(e.offset(), Some(i + 1));
        assert_eq!(e.payload.as_ref(), payload(i));
    }
    match within("close", subscriber.closed()).await {
        ClientError::Closed { code, reason } => {
            assert_eq!(code, u64::from(close_code::SERVER_SHUTTING_DOWN));
            assert!(reason.contains("shutting down"));
        }
        other => panic!("expected a shutdown close, got {other:?}"),
    }
    within("shutdown", shutdown).await.unwrap();
    // After shutdown nothing is accepted any more.
    assert!(publisher.emit_with_ack("s", "late", "x").await.is_err());
}

struct TestServerParts {
    handle: quicbus::server::ServerHandle,
}

impl From<common::TestServer> for TestServerParts {
    fn from(s: common::TestServer) -> Self {
        TestServerParts { handle: s.handle }
    }
}

#[tokio::test]
async fn slow_consumer_is_closed_while_others_get_everything() {
    const N: u64 = 20_000;
    let server = common::start_with(ServerConfig {
        reliable_queue: 1024,
        ..ServerConfig::default()
    })
    .await;
    let (publisher, _p) = server.client().await;
    let (healthy, mut healthy_events) = server.client().await;
    let mut slow_options = server.options();
    slow_options.event_queue = 1;
    // Reconnecting would only get it closed again (it never reads).
    slow_options.reconnect = None;
    let (slow, _slow_events_never_read) = within("connect", Client::connect(slow_options))
        .await
        .unwrap();
    healthy.join("flood").await.unwrap();
    slow.join("flood").await.unwrap();

    // The publisher never gets more than 500 events ahead of the healthy
    // subscriber, far below its queue bound; the slow one reads nothing.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let payload = vec![0x5a; 1024];
    let flood = tokio::spawn(async move {
        for i in 0..N {
            let _ = progress.wait_for(|done| done + 500 >= i).await;
            publisher
                .emit("flood", "blob", payload.clone())
                .await
                .unwrap();
        }
        publisher
    });
    for i in 0..N {
        let e = next_event(&mut healthy_events, "healthy event").await;
        assert_eq!(e.offset(), Some(i + 1));
        assert_eq!(e.payload.len(), 1024);
        let _ = progress_tx.send(i + 1);
    }
    match within("slow consumer close", slow.closed()).await {
        ClientError::Closed { code, reason } => {
            assert_eq!(code, u64::from(close_code::SLOW_CONSUMER), "{reason}");
            assert!(reason.contains("flood"), "{reason}");
        }
        other => panic!("expected a slow-consumer close, got {other:?}"),
    }
    within("flood", flood).await.unwrap();
    assert_eq!(server.handle.stats().slow_consumers, 1);
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_a_reason() {
    let server = common::start_with(ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    })
    .await;
    let (first, _e) = server.client().await;
    let mut options = server.options();
    options.connect_timeout = Duration::from_secs(10);
    let err = within("second connect", Client::connect(options))
        .await
        .err()
        .expect("second connection must be refused");
    match err {
        ClientError::Closed { code, reason } => {
            assert_eq!(code, u64::from(close_code::SERVER_BUSY));
            assert!(reason.contains("limit of 1"), "{reason}");
        }
        other => panic!("expected server busy, got {other:?}"),
    }
    // The first connection is unaffected.
    first.join("still-here").await.unwrap();
}

/// Clients that start QUIC handshakes and never finish them (their answers
/// are lost: the way back of their path is cut) hold no connection slot,
/// and beyond a few of them get a stateless Retry, so a real client still
/// connects and publishes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_handshakes_does_not_lock_anyone_out() {
    use quicbus::netsim::{Impairment, Netsim, NetsimConfig};
    let server = common::start_with(ServerConfig {
        max_connections: 10,
        max_handshakes: 8,
        ..ServerConfig::default()
    })
    .await;
    let mut config = NetsimConfig::new("127.0.0.1:0".parse().unwrap(), server.handle.local_addr());
    config.down = Impairment {
        loss_pct: 100.0,
        ..Impairment::default()
    };
    let netsim = Netsim::start(config).await.unwrap();
    // 20 would-be clients, each from its own address, more than the
    // connection slots and the handshake bound.
    let mut flood = Vec::new();
    for _ in 0..20 {
        let mut options = server.options();
        options.server = netsim.local_addr();
        options.connect_timeout = std::time::Duration::from_secs(60);
        flood.push(tokio::spawn(quicbus::client::Client::connect(options)));
    }
    netsim.wait_for(|s| s.clients >= 20).await;
    let (client, _events) = server.client().await;
    assert_eq!(client.emit_with_ack("r", "e", "x").await.unwrap(), 1);
    let stats = server.handle.stats();
    assert!(stats.handshakes_retried > 0, "{stats:?}");
    assert_eq!(stats.connections_refused, 0, "{stats:?}");
    for attempt in flood {
        attempt.abort();
    }
}
