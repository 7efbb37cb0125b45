//! Datagram copies of small reliable events (`ClientOptions::copies`):
//! through heavy loss every event still arrives once, in order, with its
//! own offset; copies are really used in both directions; and copies that
//! arrive out of turn, for unknown rooms, or from the wrong side are
//! dropped or refused without harm.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{next_event, start, within, TestServer};
use quicbus::client::{Client, Delivery, Events};
use quicbus::netsim::{Impairment, Netsim, NetsimConfig, NetsimHandle};
use quicbus::wire::{self, close_code, Frame};

async fn lossy(server: &TestServer, loss_pct: f64) -> NetsimHandle {
    let mut config = NetsimConfig::new("127.0.0.1:0".parse().unwrap(), server.handle.local_addr());
    let impairment = Impairment {
        loss_pct,
        ..Impairment::default()
    };
    config.up = impairment;
    config.down = impairment;
    config.seed = 11;
    Netsim::start(config).await.unwrap()
}

async fn copying_client(server: &TestServer, proxy: &NetsimHandle) -> (Client, Events) {
    let mut options = server.options();
    options.server = proxy.local_addr();
    options.copies = true;
    // A lossy handshake may need retransmissions; losing the connection
    // would hide what is tested, so there is no reconnect.
    options.connect_timeout = common::WAIT;
    options.reconnect = None;
    within("connect through loss", Client::connect(options))
        .await
        .unwrap()
}

// Multi-threaded, so a copy and its stream frame can be handled in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_keep_order_and_exactly_once_through_heavy_loss() {
    const N: u64 = 300;
    let server = start().await;
    let proxy = lossy(&server, 15.0).await;
    let (subscriber, mut events) = copying_client(&server, &proxy).await;
    let (publisher, _publisher_events) = copying_client(&server, &proxy).await;
    within("join", subscriber.join("r")).await.unwrap();

    // One at a time, so each publish is the next in its stream (the case
    // copies are for) and the acks tell the offsets.
    for i in 1..=N {
        let offset = within(
            "ack",
            publisher.emit_with_ack("r", "e", Bytes::from(i.to_le_bytes().to_vec())),
        )
        .await
        .unwrap();
        assert_eq!(offset, i, "publish {i} got offset {offset}");
    }
    for i in 1..=N {
        let event = next_event(&mut events, "event").await;
        assert_eq!(event.delivery, Delivery::Reliable { offset: i });
        assert_eq!(
            event.payload.as_ref(),
            i.to_le_bytes(),
            "payload of offset {i}"
        );
    }
    let stats = server.handle.stats();
    assert_eq!(
        stats.events_published, N,
        "a copy and its stream frame were both published"
    );
    assert!(
        stats.copies_published > 0,
        "no publish copy was used: {stats:?}"
    );
    let sub = subscriber.stats();
    assert_eq!(sub.reliable_received, N);
    assert!(sub.reliable_copies > 0, "no event copy was used: {sub:?}");
    assert!(
        sub.reliable_copies < N,
        "all {N} copies beat 15% loss: {sub:?}"
    );
    // Nothing more: a late stream frame or copy is never delivered twice.
    publisher
        .emit_with_ack("r", "end", Bytes::new())
        .await
        .unwrap();
    let end = next_event(&mut events, "end").await;
    assert_eq!((end.name.as_str(), end.offset()), ("end", Some(N + 1)));
}

#[tokio::test]
async fn without_copies_nothing_is_copied() {
    let server = start().await;
    let (subscriber, mut events) = server.client().await;
    let (publisher, _e) = server.client().await;
    subscriber.join("r").await.unwrap();
    for _ in 0..20 {
        publisher
            .emit_with_ack("r", "e", Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    for i in 1..=20 {
        assert_eq!(next_event(&mut events, "event").await.offset(), Some(i));
    }
    assert_eq!(server.handle.stats().copies_published, 0);
    assert_eq!(subscriber.stats().reliable_copies, 0);
}

#[tokio::test]
async fn stray_copies_are_dropped_and_a_server_copy_from_a_client_is_refused() {
    let server = start().await;
    let (subscriber, mut events) = server.client().await;
    subscriber.join("r").await.unwrap();
    let mut peer = server.raw_session().await;
    peer.send_control(&Frame::Resolve {
        request: 1,
        room: "r".into(),
    })
    .await;
    let room_id = match peer.next_control().await {
        Frame::Resolved { room_id, .. } => room_id,
        other => panic!("{other:?}"),
    };
    let copy = |room_id, id| {
        wire::encode(&Frame::PublishCopy {
            room_id,
            id,
            event: "e".into(),
            payload: Bytes::from_static(b"copy"),
            ack: None,
            pad: Bytes::new(),
        })
    };
    // Out of turn (id 5 before 1), an unknown room, and id 0: all dropped.
    peer.conn.send_datagram(copy(room_id, 5)).unwrap();
    peer.conn.send_datagram(copy(room_id + 1000, 1)).unwrap();
    peer.conn.send_datagram(copy(room_id, 0)).unwrap();
    // The next in turn is published, once, even when its stream frame follows.
    peer.conn.send_datagram(copy(room_id, 1)).unwrap();
    let event = next_event(&mut events, "the copy").await;
    assert_eq!(
        (event.offset(), event.payload.as_ref()),
        (Some(1), &b"copy"[..])
    );
    let mut stream = within("open", peer.conn.open_uni()).await.unwrap();
    let mut frames = wire::encode_framed(&Frame::PublishStream { room: "r".into() }).to_vec();
    for (id, payload) in [(1u64, "copy"), (2, "second")] {
        frames.extend_from_slice(&wire::encode_framed(&Frame::Publish {
            id,
            event: "e".into(),
            payload: Bytes::from(payload),
            ack: Some(10 + id),
        }));
    }
    within("write", stream.write_all(&frames)).await.unwrap();
    let mut acks = Vec::new();
    while acks.len() < 2 {
        if let Frame::Ack { request, offset } = peer.next_control().await {
            acks.push((request, offset));
        }
    }
    assert_eq!(
        acks,
        vec![(11, 1), (12, 2)],
        "the duplicate is answered as the first time"
    );
    let second = next_event(&mut events, "second").await;
    assert_eq!(
        (second.offset(), second.payload.as_ref()),
        (Some(2), &b"second"[..])
    );
    assert_eq!(server.handle.stats().events_published, 2);
    assert_eq!(server.handle.stats().copies_published, 1);

    // An EventCopy is a server datagram: from a client it is a violation.
    peer.conn
        .send_datagram(wire::encode(&Frame::EventCopy {
            room_id,
            previous: 0,
            offset: 1,
            event: "e".into(),
            payload: Bytes::new(),
            pad: Bytes::new(),
        }))
        .unwrap();
    let (code, reason) = peer.closed().await;
    assert_eq!(code, u64::from(close_code::PROTOCOL_VIOLATION));
    assert!(reason.contains("EventCopy"), "{reason}");
    // The bystander is still served.
    let (publisher, _e) = server.client().await;
    publisher
        .emit_with_ack("r", "after", Bytes::new())
        .await
        .unwrap();
    assert_eq!(next_event(&mut events, "after").await.offset(), Some(3));
}
