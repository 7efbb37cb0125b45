//! Missed events through real outages: the subscriber's (or publisher's)
//! path goes through the netsim proxy, which loses, delays or blackholes
//! packets; the client reconnects, resumes and recovers by itself.
//!
//! Outages are driven by what the client reports, not by the clock: the
//! path is blackholed until the client says it lost the connection, then
//! restored. Short idle timeouts and backoffs keep the suite fast.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{within, TestServer};
use quicbus::client::{Client, Events, Incoming, Recovery, RecoveryFailure, ResumeOutcome};
use quicbus::netsim::{Impairment, Netsim, NetsimConfig, NetsimHandle};
use quicbus::server::{HistoryLimits, ServerConfig};

use common::quick;

async fn proxy(server: &TestServer, up: Impairment, down: Impairment) -> NetsimHandle {
    let mut config = NetsimConfig::new("127.0.0.1:0".parse().unwrap(), server.handle.local_addr());
    config.up = up;
    config.down = down;
    config.seed = 7;
    Netsim::start(config).await.unwrap()
}

/// A client whose path goes through `proxy`.
async fn client_via(server: &TestServer, proxy: &NetsimHandle) -> (Client, Events) {
    let mut options = server.options();
    options.server = proxy.local_addr();
    quick(&mut options);
    within("connect through netsim", Client::connect(options))
        .await
        .unwrap()
}

/// The next notice or event, within the test timeout.
async fn incoming(events: &mut Events) -> Incoming {
    within("an event or notice", events.next_incoming())
        .await
        .expect("the client closed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_survive_three_long_outages_exactly_once_in_order() {
    const N: u64 = 20_000;
    let server = common::start().await;
    let netsim = proxy(&server, Impairment::default(), Impairment::default()).await;
    let (sub, mut events) = client_via(&server, &netsim).await;
    sub.join("steady").await.unwrap();
    let (publisher, _p) = server.client().await;
    // A steady rate: 20 events every 5 ms, about 4,000 a second.
    let pacer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for chunk in 0..N / 20 {
            tick.tick().await;
            for i in 0..20 {
                let n = chunk * 20 + i + 1;
                publisher.emit("steady", "n", n.to_string()).await.unwrap();
            }
        }
        publisher.ping().await.unwrap();
        publisher
    });

    let (mut got, mut outages, mut recoveries) = (0u64, 0, 0);
    let (mut blackholed, mut awaiting_recovery) = (false, false);
    while got < N {
        match incoming(&mut events).await {
            Incoming::Event(e) => {
                assert!(
                    !awaiting_recovery,
                    "the recovery notice comes before its events"
                );
                assert_eq!(e.offset(), Some(got + 1), "in order, no gap, no duplicate");
                assert_eq!(e.payload.as_ref(), (got + 1).to_string().as_bytes());
                got += 1;
                // Three outages, each until the client has declared the
                // connection dead (longer than the idle timeout).
                if got % 5_000 == 0 && got < N && !blackholed {
                    netsim.set_blackhole(true);
                    blackholed = true;
                }
            }
            Incoming::Disconnected { .. } => {
                assert!(blackholed, "disconnected only by an outage");
                outages += 1;
                netsim.set_blackhole(false);
                blackholed = false;
                awaiting_recovery = true;
            }
            Incoming::Recovery { room, recovery } => {
                assert_eq!(&*room, "steady");
                assert!(
                    matches!(recovery, Recovery::Recovered { .. }),
                    "{recovery:?}"
                );
                recoveries += 1;
                awaiting_recovery = false;
            }
            Incoming::Reconnected { resumed } => assert_eq!(resumed, ResumeOutcome::Resumed),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((outages, recoveries), (3, 3));
    assert_eq!(sub.stats().reconnects, 3);
    within("publisher", pacer).await.unwrap();
    assert!(events.try_next().is_none(), "nothing after the last event");
}

#[tokio::test]
async fn an_outage_shorter_than_the_idle_timeout_needs_no_reconnect() {
    const N: u64 = 2_000;
    let server = common::start().await;
    let netsim = proxy(&server, Impairment::default(), Impairment::default()).await;
    let mut options = server.options();
    options.server = netsim.local_addr();
    quick(&mut options);
    options.transport.idle_timeout = Duration::from_secs(5);
    let (sub, mut events) = within("connect", Client::connect(options)).await.unwrap();
    sub.join("r").await.unwrap();
    let (publisher, _p) = server.client().await;
    for i in 1..=N / 2 {
        publisher.emit("r", "n", i.to_string()).await.unwrap();
    }
    // The outage lasts while the second half is published and acked (the
    // publisher's path is direct), and until the subscriber's path has
    // dropped some of it: far below the 5 s idle timeout.
    netsim.set_blackhole(true);
    for i in N / 2 + 1..N {
        publisher.emit("r", "n", i.to_string()).await.unwrap();
    }
    publisher
        .emit_with_ack("r", "n", N.to_string())
        .await
        .unwrap();
    within(
        "packets dropped by the outage",
        netsim.wait_for(|s| s.down.dropped_blackhole > 0),
    )
    .await;
    netsim.set_blackhole(false);
    for expected in 1..=N {
        match incoming(&mut events).await {
            Incoming::Event(e) => assert_eq!(e.offset(), Some(expected)),
            other => panic!("QUIC rides out a short outage, got {other:?}"),
        }
    }
    assert_eq!(sub.stats().reconnects, 0);
    assert!(
        netsim.stats().down.dropped_blackhole > 0,
        "the outage dropped packets"
    );
}

#[tokio::test]
async fn a_history_shorter_than_the_outage_is_reported_then_delivery_goes_on() {
    let server = common::start_with(ServerConfig {
        history: HistoryLimits {
            max_events: 50,
            ..HistoryLimits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let netsim = proxy(&server, Impairment::default(), Impairment::default()).await;
    let (sub, mut events) = client_via(&server, &netsim).await;
    sub.join("r").await.unwrap();
    let (publisher, _p) = server.client().await;
    publisher.emit_with_ack("r", "n", "1").await.unwrap();
    assert!(matches!(incoming(&mut events).await, Incoming::Event(_)));
    netsim.set_blackhole(true);
    assert!(matches!(
        incoming(&mut events).await,
        Incoming::Disconnected { .. }
    ));
    // 200 events while the subscriber is away: more than the history keeps.
    for i in 2..=201 {
        publisher.emit("r", "n", i.to_string()).await.unwrap();
    }
    publisher.emit_with_ack("r", "n", "202").await.unwrap();
    netsim.set_blackhole(false);
    match incoming(&mut events).await {
        Incoming::Recovery { recovery, .. } => assert_eq!(
            recovery,
            Recovery::NotRecovered {
                reason: RecoveryFailure::HistoryTooShort
            }
        ),
        other => panic!("expected a recovery notice, got {other:?}"),
    }
    assert!(matches!(
        incoming(&mut events).await,
        Incoming::Reconnected { .. }
    ));
    publisher.emit_with_ack("r", "n", "203").await.unwrap();
    match incoming(&mut events).await {
        Incoming::Event(e) => assert_eq!(e.offset(), Some(203), "live again"),
        other => panic!("expected the live event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_restart_is_reported_as_a_new_epoch() {
    let first = common::start().await;
    let addr = first.handle.local_addr();
    let certs = first.certs.clone();
    let mut options = first.options();
    quick(&mut options);
    let (sub, mut events) = within("connect", Client::connect(options)).await.unwrap();
    sub.join("r").await.unwrap();
    let old_epoch = sub.epoch();
    first.handle.shutdown().await;
    assert!(matches!(
        incoming(&mut events).await,
        Incoming::Disconnected { .. }
    ));
    // The same address, the same certificates, a new server: a new epoch.
    let config = ServerConfig {
        listen: addr,
        ..ServerConfig::default()
    };
    let second = common::start_exactly(config, certs).await;
    match incoming(&mut events).await {
        Incoming::Recovery { recovery, .. } => assert_eq!(
            recovery,
            Recovery::NotRecovered {
                reason: RecoveryFailure::EpochChanged
            }
        ),
        other => panic!("expected a recovery notice, got {other:?}"),
    }
    match incoming(&mut events).await {
        Incoming::Reconnected { resumed } => assert_eq!(
            resumed,
            ResumeOutcome::NotResumed {
                reason: RecoveryFailure::EpochChanged
            }
        ),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    assert_ne!(sub.epoch(), old_epoch);
    // Live delivery on the new server.
    let (publisher, _p) = second.client().await;
    publisher.emit_with_ack("r", "n", "new").await.unwrap();
    match incoming(&mut events).await {
        Incoming::Event(e) => assert_eq!(e.offset(), Some(1)),
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Drains `n` events (skipping notices) and checks they are 1..=n in order.
async fn expect_exactly(events: &mut Events, n: u64) {
    for expected in 1..=n {
        let e = within("event", events.next()).await.unwrap();
        assert_eq!(e.offset(), Some(expected));
        assert_eq!(e.payload.as_ref(), expected.to_string().as_bytes());
    }
    assert!(events.try_next().is_none(), "no duplicates after the last");
}

#[tokio::test]
async fn emits_made_during_an_outage_are_delivered_once_afterwards() {
    let server = common::start().await;
    let netsim = proxy(&server, Impairment::default(), Impairment::default()).await;
    let (sub, mut sub_events) = server.client().await;
    sub.join("out").await.unwrap();
    let (publisher, mut pub_events) = client_via(&server, &netsim).await;
    for i in 1..=100u64 {
        publisher.emit("out", "n", i.to_string()).await.unwrap();
    }
    netsim.set_blackhole(true);
    for i in 101..=200u64 {
        publisher.emit("out", "n", i.to_string()).await.unwrap();
    }
    assert!(matches!(
        incoming(&mut pub_events).await,
        Incoming::Disconnected { .. }
    ));
    for i in 201..=300u64 {
        publisher.emit("out", "n", i.to_string()).await.unwrap();
    }
    netsim.set_blackhole(false);
    let last = within(
        "ack after reconnect",
        publisher.emit_with_ack("out", "n", "301"),
    )
    .await
    .unwrap();
    assert_eq!(last, 301, "every emit published exactly once");
    expect_exactly(&mut sub_events, 301).await;
    assert_eq!(publisher.outbox_len(), 0);
}

#[tokio::test]
async fn a_publish_the_server_got_but_never_acked_is_not_published_twice() {
    let server = common::start().await;
    let netsim = proxy(&server, Impairment::default(), Impairment::default()).await;
    let (sub, mut sub_events) = server.client().await;
    sub.join("once").await.unwrap();
    let (publisher, mut pub_events) = client_via(&server, &netsim).await;
    publisher.emit_with_ack("once", "n", "1").await.unwrap();
    // Only the way back is cut: the server receives the next emits, but
    // neither their acks nor their confirmations reach the publisher.
    common::cut_way_back(&netsim);
    let pending = publisher.emit_acked("once", "n", "2").await.unwrap();
    for i in 3..=50u64 {
        publisher.emit("once", "n", i.to_string()).await.unwrap();
    }
    // The subscriber gets them: the server did receive them.
    expect_exactly(&mut sub_events, 50).await;
    assert!(
        publisher.outbox_len() > 0,
        "unconfirmed while the way back is cut"
    );
    assert!(matches!(
        incoming(&mut pub_events).await,
        Incoming::Disconnected { .. }
    ));
    common::restore_path(&netsim);
    // After the reconnect the outbox is resent; the server answers from its
    // log instead of publishing again.
    assert_eq!(within("ack of 2", pending.wait()).await.unwrap(), 2);
    assert_eq!(
        publisher.emit_with_ack("once", "n", "51").await.unwrap(),
        51
    );
    let e = within("event 51", sub_events.next()).await.unwrap();
    assert_eq!(e.offset(), Some(51), "nothing published twice in between");
    assert_eq!(server.handle.stats().events_published, 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_delay_and_jitter_keep_reliable_complete_and_datagrams_fresh() {
    const N: u64 = 5_000;
    let server = common::start().await;
    let bad = Impairment {
        loss_pct: 5.0,
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        ..Impairment::default()
    };
    let netsim = proxy(&server, bad, bad).await;
    let mut options = server.options();
    options.server = netsim.local_addr();
    options.transport.idle_timeout = Duration::from_secs(10);
    let (sub, mut events) = within("connect", Client::connect(options)).await.unwrap();
    sub.join("lossy").await.unwrap();
    let (publisher, _p) = server.client().await;
    let sender = tokio::spawn(async move {
        for i in 1..=N {
            publisher.emit("lossy", "n", i.to_string()).await.unwrap();
        }
        publisher
    });
    for expected in 1..=N {
        let e = within("reliable event", events.next()).await.unwrap();
        assert_eq!(e.offset(), Some(expected));
    }
    let publisher = within("publisher", sender).await.unwrap();

    // Datagrams: about 5% lost on the way down, never an older one after a
    // newer. They are spaced wider than the jitter (12 ms > 2 × 5 ms), so that
    // what goes missing is the loss, not reordering (which would make late
    // ones stale and dropped, by design).
    const D: u64 = 300;
    let mut tick = tokio::time::interval(Duration::from_millis(12));
    for i in 0..D {
        tick.tick().await;
        publisher
            .emit_datagram("lossy", "pos", i.to_string())
            .await
            .unwrap();
    }
    publisher.emit_with_ack("lossy", "end", "").await.unwrap();
    let mut seqs = Vec::new();
    let mut indices = Vec::new();
    loop {
        let e = within("datagram or end", events.next()).await.unwrap();
        if e.name == "end" {
            break;
        }
        seqs.push(e.seq().unwrap());
        indices.push(
            std::str::from_utf8(&e.payload)
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "never older than one delivered"
    );
    // The reliable end marker may overtake the last few datagrams: count the
    // delivery of all but the last ten.
    let counted = D - 10;
    let delivered = indices.iter().filter(|i| **i < counted).count() as f64 / counted as f64;
    assert!((0.85..=0.995).contains(&delivered), "delivered {delivered}");
    assert!(netsim.stats().down.dropped_loss > 0);
}

#[tokio::test]
async fn a_join_made_while_reconnecting_gets_the_position_it_asked_for() {
    let server = common::start().await;
    let netsim = proxy(&server, Impairment::default(), Impairment::default()).await;
    let (sub, mut events) = client_via(&server, &netsim).await;
    sub.join("first").await.unwrap();
    let (publisher, _p) = server.client().await;
    for i in 1..=5u64 {
        publisher.emit("late", "n", i.to_string()).await.unwrap();
    }
    publisher.ping().await.unwrap();
    netsim.set_blackhole(true);
    assert!(matches!(
        incoming(&mut events).await,
        Incoming::Disconnected { .. }
    ));
    // The join waits for the reconnect, then asks for its own position.
    let joining = {
        let sub = sub.clone();
        tokio::spawn(async move {
            sub.join_with(
                "late",
                quicbus::client::JoinOptions {
                    since: Some(2),
                    ..Default::default()
                },
            )
            .await
        })
    };
    netsim.set_blackhole(false);
    let joined = within("join after reconnect", joining)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(joined.recovery, Recovery::Recovered { replayed: 3 });
    let mut offsets = Vec::new();
    while offsets.len() < 3 {
        if let Incoming::Event(e) = incoming(&mut events).await {
            assert_eq!(&*e.room, "late");
            offsets.push(e.offset().unwrap());
        }
    }
    assert_eq!(offsets, vec![3, 4, 5]);
}
