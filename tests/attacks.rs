//! Hostile clients: each defence refuses the attack with a typed error or a
//! close code, counts it, and the server goes on serving everyone else.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{within, Bystanders, RawPeer};
use quicbus::server::{AddressLimits, ConnectionLimits, Limit, Rate, ServerConfig};
use quicbus::wire::{self, close_code, ErrorCode, Frame};

fn with_limits(limits: ConnectionLimits) -> ServerConfig {
    ServerConfig {
        limits,
        ..ServerConfig::default()
    }
}

/// The next control frame that is not `Progress`.
async fn next_reply(peer: &mut RawPeer) -> Frame {
    loop {
        match peer.next_control().await {
            Frame::Progress { .. } => continue,
            other => return other,
        }
    }
}

async fn expect_error(peer: &mut RawPeer, request: Option<u64>, code: ErrorCode) -> String {
    match next_reply(peer).await {
        Frame::Error {
            request: r,
            code: c,
            message,
        } if r == request && c == code => message,
        other => panic!("expected Error {{ {request:?}, {code:?} }}, got {other:?}"),
    }
}

async fn expect_close(peer: &RawPeer, code: u32, reason_part: &str) {
    let (got, reason) = peer.closed().await;
    assert_eq!(got, u64::from(code), "close code (reason: {reason})");
    assert!(reason.contains(reason_part), "reason: {reason}");
}

fn join(request: u64, room: &str) -> Frame {
    Frame::Join {
        request,
        room: room.into(),
        echo: Some(false),
        since: None,
    }
}

#[tokio::test]
async fn joins_and_names_beyond_a_connections_share_are_refused_not_the_others() {
    let server = common::start_with(with_limits(ConnectionLimits {
        rooms_joined: 20,
        room_names: 50,
        ..ConnectionLimits::default()
    }))
    .await;
    let mut others = Bystanders::new(&server).await;
    let mut flood = server.raw_session().await;
    for i in 0..20u64 {
        flood.send_control(&join(i, &format!("flood.{i}"))).await;
        assert!(
            matches!(next_reply(&mut flood).await, Frame::Joined { request, .. } if request == i)
        );
    }
    flood.send_control(&join(20, "flood.20")).await;
    let message = expect_error(&mut flood, Some(20), ErrorCode::LimitReached).await;
    assert!(message.contains("20 rooms joined"), "{message}");
    // Joined rooms still take new subscriptions (a re-join is not a new room).
    flood.send_control(&join(21, "flood.3")).await;
    assert!(matches!(
        next_reply(&mut flood).await,
        Frame::Joined { request: 21, .. }
    ));
    // Names: 20 so far, 30 more, then none.
    for i in 0..31u64 {
        flood
            .send_control(&Frame::Resolve {
                request: 100 + i,
                room: format!("named.{i}"),
            })
            .await;
        if i < 30 {
            assert!(matches!(
                next_reply(&mut flood).await,
                Frame::Resolved { .. }
            ));
        } else {
            let message = expect_error(&mut flood, Some(130), ErrorCode::LimitReached).await;
            assert!(message.contains("50 rooms"), "{message}");
        }
    }
    // Everyone else joins and publishes as before, and the flood's session lives.
    others.check("after the join flood").await;
    let (late, _events) = server.client().await;
    late.join("flood.0").await.unwrap();
    flood.send_control(&Frame::Ping { request: 200 }).await;
    assert!(matches!(
        next_reply(&mut flood).await,
        Frame::Pong { request: 200 }
    ));
    let stats = server.handle.stats();
    assert_eq!(stats.limit(Limit::RoomsJoined), 1);
    assert_eq!(stats.limit(Limit::RoomNames), 1);
}

#[tokio::test]
async fn control_requests_over_the_rate_are_refused_then_the_connection_is_closed() {
    let server = common::start_with(with_limits(ConnectionLimits {
        control_rate: Rate {
            per_second: 0.001,
            burst: 5.0,
        },
        rate_strikes: 3,
        ..ConnectionLimits::default()
    }))
    .await;
    let mut others = Bystanders::new(&server).await;
    let mut flood = server.raw_session().await;
    for request in 0..8u64 {
        flood.send_control(&Frame::Ping { request }).await;
    }
    for request in 0..5u64 {
        assert_eq!(next_reply(&mut flood).await, Frame::Pong { request });
    }
    for request in 5..8u64 {
        let message = expect_error(&mut flood, Some(request), ErrorCode::RateLimited).await;
        assert!(message.contains("control request rate"), "{message}");
    }
    flood.send_control(&Frame::Ping { request: 8 }).await;
    expect_close(&flood, close_code::RATE_LIMITED, "control request rate").await;
    assert_eq!(server.handle.stats().limit(Limit::ControlRate), 4);
    others.check("after the control flood").await;
}

/// Opens a publish stream for `room` and sends `Publish` ids `ids`, each
/// with an ack request of 1000 + id.
async fn publish(
    peer: &RawPeer,
    room: &str,
    ids: std::ops::RangeInclusive<u64>,
) -> quinn::SendStream {
    let mut send = peer.conn.open_uni().await.unwrap();
    let mut bytes = wire::encode_framed(&Frame::PublishStream { room: room.into() }).to_vec();
    for id in ids {
        bytes.extend_from_slice(&wire::encode_framed(&Frame::Publish {
            id,
            event: "e".into(),
            payload: bytes::Bytes::from(id.to_string()),
            ack: Some(1000 + id),
        }));
    }
    within("publish", send.write_all(&bytes)).await.unwrap();
    send
}

#[tokio::test]
async fn publishes_over_the_rate_are_refused_recorded_and_then_closed() {
    let server = common::start_with(with_limits(ConnectionLimits {
        publish_rate: Rate {
            per_second: 0.001,
            burst: 3.0,
        },
        rate_strikes: 6,
        ..ConnectionLimits::default()
    }))
    .await;
    let mut others = Bystanders::new(&server).await;
    let mut flood = server.raw_session().await;
    let _stream = publish(&flood, "busy", 1..=7).await;
    for id in 1..=3u64 {
        assert_eq!(
            next_reply(&mut flood).await,
            Frame::Ack {
                request: 1000 + id,
                offset: id
            }
        );
    }
    for id in 4..=7u64 {
        expect_error(&mut flood, Some(1000 + id), ErrorCode::RateLimited).await;
    }
    // A retry of a refused publish is answered the same, never published.
    let _retry = publish(&flood, "busy", 4..=4).await;
    expect_error(&mut flood, Some(1004), ErrorCode::RateLimited).await;
    assert_eq!(
        server.handle.stats().events_published,
        1 + 3,
        "the bystanders' and 3"
    );
    // Datagrams share the rate; refusals go on counting until the close.
    let datagram = resolve_datagram(&mut flood, "busy").await;
    for _ in 0..50 {
        if flood.conn.send_datagram(datagram.clone()).is_err() {
            break;
        }
    }
    expect_close(&flood, close_code::RATE_LIMITED, "publish rate").await;
    // A run of refused datagrams alone gets one error, then the close.
    let mut sender = server.raw_session().await;
    let datagram = resolve_datagram(&mut sender, "busy").await;
    for _ in 0..4 {
        sender.conn.send_datagram(datagram.clone()).unwrap();
    }
    expect_error(&mut sender, None, ErrorCode::RateLimited).await;
    for _ in 0..50 {
        if sender.conn.send_datagram(datagram.clone()).is_err() {
            break;
        }
    }
    expect_close(&sender, close_code::RATE_LIMITED, "publish rate").await;
    assert!(server.handle.stats().limit(Limit::PublishRate) >= 6 + 2);
    assert_eq!(server.handle.stats().datagrams_published, 3);
    others.check("after the publish flood").await;
}

/// Resolves `room` and returns a datagram publishing to it.
async fn resolve_datagram(peer: &mut RawPeer, room: &str) -> bytes::Bytes {
    peer.send_control(&Frame::Resolve {
        request: 1,
        room: room.into(),
    })
    .await;
    let Frame::Resolved { room_id, .. } = next_reply(peer).await else {
        panic!("expected Resolved")
    };
    wire::encode(&Frame::PublishDatagram {
        room_id,
        event: "d".into(),
        payload: bytes::Bytes::from_static(b"x"),
    })
}

#[tokio::test]
async fn a_session_publishes_to_a_bounded_number_of_rooms() {
    let server = common::start_with(with_limits(ConnectionLimits {
        publish_streams: 2,
        ..ConnectionLimits::default()
    }))
    .await;
    let mut peer = server.raw_session().await;
    for (room, id) in [("a", 1), ("b", 1)] {
        let _s = publish(&peer, room, id..=id).await;
        assert!(matches!(
            next_reply(&mut peer).await,
            Frame::Ack { request: 1001, .. }
        ));
    }
    let _c = publish(&peer, "c", 1..=2).await;
    let message = expect_error(&mut peer, None, ErrorCode::LimitReached).await;
    assert!(message.contains("maximum of 2 rooms"), "{message}");
    for id in 1..=2u64 {
        expect_error(&mut peer, Some(1000 + id), ErrorCode::LimitReached).await;
    }
    // The rooms it has still take publishes.
    let _a = publish(&peer, "a", 2..=2).await;
    assert!(matches!(
        next_reply(&mut peer).await,
        Frame::Ack { request: 1002, .. }
    ));
    assert_eq!(server.handle.stats().limit(Limit::PublishStreams), 1);
    assert_eq!(server.handle.stats().events_published, 3);
}

#[tokio::test]
async fn a_frame_left_half_sent_closes_its_connection_after_the_frame_timeout() {
    let server = common::start_with(with_limits(ConnectionLimits {
        frame_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    }))
    .await;
    let mut others = Bystanders::new(&server).await;
    // On a publish stream: the header, then 10 bytes of a 1,000-byte frame.
    let publisher = server.raw_session().await;
    let mut send = publisher.conn.open_uni().await.unwrap();
    let mut bytes = wire::encode_framed(&Frame::PublishStream { room: "r".into() }).to_vec();
    wire::write_varint(&mut bytes, 1000);
    bytes.extend_from_slice(&[0; 10]);
    send.write_all(&bytes).await.unwrap();
    expect_close(&publisher, close_code::FRAME_TIMEOUT, "half-sent").await;
    // On the control stream, after Hello.
    let mut controller = server.raw_session().await;
    let mut half = Vec::new();
    wire::write_varint(&mut half, 500);
    half.extend_from_slice(&[1; 3]);
    controller.send_control_bytes(&half).await;
    expect_close(&controller, close_code::FRAME_TIMEOUT, "control stream").await;
    assert_eq!(server.handle.stats().limit(Limit::HalfSentFrame), 2);
    // Waiting between frames is no offence.
    let mut idle = server.raw_session().await;
    let (_a, _b) = (others.check("a"), ());
    _a.await;
    idle.send_control(&Frame::Ping { request: 1 }).await;
    assert_eq!(next_reply(&mut idle).await, Frame::Pong { request: 1 });
}

#[tokio::test]
async fn half_sent_frames_on_many_streams_hold_only_the_connections_budget() {
    const BUDGET: usize = 256 * 1024;
    const WINDOW: u64 = 256 * 1024;
    let mut config = with_limits(ConnectionLimits {
        partial_frame_bytes: BUDGET,
        frame_timeout: Duration::from_secs(8),
        ..ConnectionLimits::default()
    });
    config.max_frame = 128 * 1024;
    config.transport.receive_window = Some(WINDOW);
    let server = common::start_with(config).await;
    let mut others = Bystanders::new(&server).await;
    let peer = server.raw_session().await;
    // 20 streams, each with all but one byte of a 120 KB frame: 2.4 MB the
    // server would hold without a budget.
    let mut body = wire::encode_framed(&Frame::PublishStream { room: "r".into() }).to_vec();
    wire::write_varint(&mut body, 120_000);
    body.extend_from_slice(&vec![7; 119_999]);
    let mut written = 0usize;
    let mut stalled = 0;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let Ok(mut send) = peer.conn.open_uni().await else {
            break;
        };
        // Flow control stops the peer once the budget and the window are
        // spent: its writes no longer complete.
        match tokio::time::timeout(Duration::from_millis(100), send.write_all(&body)).await {
            Ok(Ok(())) => written += body.len(),
            _ => stalled += 1,
        }
        streams.push(send);
    }
    assert!(
        stalled > 0,
        "every write went through: nothing held the peer back"
    );
    let bound = BUDGET + WINDOW as usize + 20 * 64 * 1024 + body.len();
    assert!(written <= bound, "{written} bytes accepted, over {bound}");
    // The frame timeout ends it; nobody else noticed.
    expect_close(&peer, close_code::FRAME_TIMEOUT, "half-sent").await;
    others.check("after the half-sent frames").await;
}

#[tokio::test]
async fn connections_from_one_address_are_capped() {
    let server = common::start_with(ServerConfig {
        address_limits: AddressLimits {
            connections: 3,
            ..AddressLimits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let mut others = Bystanders::new(&server).await; // two of the three
    let third = server.raw_session().await;
    let fourth = server.raw().await;
    expect_close(&fourth, close_code::SERVER_BUSY, "per address").await;
    assert_eq!(server.handle.stats().limit(Limit::ConnectionsPerIp), 1);
    // One leaves: a slot of this address is free again.
    third.conn.close(0u32.into(), b"bye");
    within("a slot freed", async {
        while server.handle.stats().active_sessions > 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let _again = server.raw_session().await;
    others.check("at the address limit").await;
}

#[tokio::test]
async fn an_address_over_its_handshake_rate_is_retried_then_refused() {
    let server = common::start_with(ServerConfig {
        address_limits: AddressLimits {
            handshake_rate: Rate {
                per_second: 0.001,
                burst: 2.0,
            },
            ..AddressLimits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let mut others = Bystanders::new(&server).await;
    let mut options = server.options();
    options.connect_timeout = Duration::from_secs(5);
    let refused = within(
        "a refused connect",
        quicbus::client::Client::connect(options),
    )
    .await
    .err()
    .expect("a third handshake from one address is refused");
    let text = refused.to_string();
    assert!(text.contains("refused"), "{text}");
    let stats = server.handle.stats();
    assert!(stats.handshakes_retried >= 1, "{stats:?}");
    assert_eq!(stats.limit(Limit::HandshakeRatePerIp), 1, "{stats:?}");
    others.check("after the refused handshake").await;
}

#[tokio::test]
async fn failed_hellos_lock_out_an_address_and_the_token_is_checked_in_full() {
    let server = common::start_with(ServerConfig {
        token: Some("sesame-sesame-sesame".into()),
        address_limits: AddressLimits {
            failed_hello_rate: Rate {
                per_second: 0.001,
                burst: 3.0,
            },
            ..AddressLimits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let hello = |token: Option<&str>| Frame::Hello {
        version: wire::PROTOCOL_VERSION,
        token: token.map(str::to_string),
        client_name: "guess".into(),
        resume: None,
        copies: false,
    };
    let mut good = server.raw().await;
    good.send_control(&hello(Some("sesame-sesame-sesame")))
        .await;
    assert!(matches!(good.next_control().await, Frame::Welcome { .. }));
    // A prefix, a longer one, and none at all are wrong.
    for guess in [Some("sesame"), Some("sesame-sesame-sesame-"), None] {
        let mut peer = server.raw().await;
        peer.send_control(&hello(guess)).await;
        match peer.next_control().await {
            Frame::Reject { code, reason, .. } => {
                assert_eq!(code, ErrorCode::Unauthorized);
                assert!(reason.contains("wrong token"), "{reason}");
            }
            other => panic!("expected Reject, got {other:?}"),
        }
    }
    // Three failures: this address is refused without its token being looked at.
    let mut locked = server.raw().await;
    locked
        .send_control(&hello(Some("sesame-sesame-sesame")))
        .await;
    match locked.next_control().await {
        Frame::Reject { code, reason, .. } => {
            assert_eq!(code, ErrorCode::Unauthorized);
            assert!(reason.contains("too many failed attempts"), "{reason}");
        }
        other => panic!("expected Reject, got {other:?}"),
    }
    assert_eq!(server.handle.stats().limit(Limit::FailedHellos), 1);
    // The session that got in is still served.
    good.send_control(&Frame::Ping { request: 1 }).await;
    assert_eq!(next_reply(&mut good).await, Frame::Pong { request: 1 });
}

#[tokio::test]
async fn rooms_joined_from_one_address_are_capped_across_its_connections() {
    let server = common::start_with(ServerConfig {
        address_limits: AddressLimits {
            rooms_joined: 5,
            ..AddressLimits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let mut a = server.raw_session().await;
    let mut b = server.raw_session().await;
    for i in 0..3u64 {
        a.send_control(&join(i, &format!("a.{i}"))).await;
        assert!(matches!(next_reply(&mut a).await, Frame::Joined { .. }));
    }
    for i in 0..2u64 {
        b.send_control(&join(i, &format!("b.{i}"))).await;
        assert!(matches!(next_reply(&mut b).await, Frame::Joined { .. }));
    }
    b.send_control(&join(2, "b.2")).await;
    let message = expect_error(&mut b, Some(2), ErrorCode::LimitReached).await;
    assert!(message.contains("this address"), "{message}");
    assert_eq!(server.handle.stats().limit(Limit::RoomsJoined), 1);
    // A leave gives one back.
    let Frame::Joined { room_id, .. } = ({
        a.send_control(&join(9, "a.0")).await;
        next_reply(&mut a).await
    }) else {
        panic!("expected Joined")
    };
    a.send_control(&Frame::Leave {
        request: 10,
        room_id,
    })
    .await;
    assert!(matches!(next_reply(&mut a).await, Frame::Left { .. }));
    b.send_control(&join(3, "b.2")).await;
    assert!(matches!(
        next_reply(&mut b).await,
        Frame::Joined { request: 3, .. }
    ));
    // A connection's end gives back all of its rooms.
    a.conn.close(0u32.into(), b"bye");
    within("the session to end", async {
        while server.handle.stats().active_sessions > 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for i in 4..6u64 {
        b.send_control(&join(i, &format!("b.{i}"))).await;
        assert!(matches!(next_reply(&mut b).await, Frame::Joined { .. }));
    }
}
