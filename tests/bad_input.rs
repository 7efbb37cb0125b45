//! Bad input from one connection gets a typed error or a close code with a
//! reason, and the server keeps serving everyone else.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{next_event, within, Bystanders, RawPeer};
use quicbus::client::{Client, ClientError};
use quicbus::wire::{self, close_code, ErrorCode, Frame};

fn framed_raw(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    wire::write_varint(&mut out, body.len() as u64);
    out.extend_from_slice(body);
    out
}

async fn expect_close(peer: &RawPeer, code: u32, reason_part: &str) {
    let (got, reason) = peer.closed().await;
    assert_eq!(got, u64::from(code), "reason: {reason}");
    assert!(
        reason.contains(reason_part),
        "reason {reason:?} lacks {reason_part:?}"
    );
}

#[tokio::test]
async fn malformed_control_frame_closes_with_protocol_violation() {
    let server = common::start().await;
    let mut others = Bystanders::new(&server).await;
    let mut peer = server.raw_session().await;
    peer.send_control_bytes(&framed_raw(&[1, 0xff, 0xff])).await;
    expect_close(&peer, close_code::PROTOCOL_VIOLATION, "control stream").await;
    others.check("after malformed").await;
    assert!(server.handle.stats().protocol_errors >= 1);
}

#[tokio::test]
async fn oversize_length_prefix_closes_before_reading_the_body() {
    let server = common::start().await;
    let mut others = Bystanders::new(&server).await;
    let peer = server.raw_session().await;
    let mut send = peer.conn.open_uni().await.unwrap();
    let mut prefix = Vec::new();
    wire::write_varint(&mut prefix, 64 * 1024 * 1024);
    send.write_all(&prefix).await.unwrap();
    expect_close(&peer, close_code::FRAME_TOO_LARGE, "over the limit").await;

    let mut peer = server.raw_session().await;
    peer.send_control_bytes(&[0xff; 11]).await;
    expect_close(&peer, close_code::PROTOCOL_VIOLATION, "length").await;
    others.check("after oversize").await;
}

#[tokio::test]
async fn unknown_room_id_in_a_datagram_is_a_typed_error_and_the_session_lives() {
    let server = common::start().await;
    let mut others = Bystanders::new(&server).await;
    let mut peer = server.raw_session().await;
    let datagram = wire::encode(&Frame::PublishDatagram {
        room_id: 9_999,
        event: "pos".into(),
        payload: Bytes::from_static(b"xy"),
    });
    peer.conn.send_datagram(datagram).unwrap();
    match peer.next_control().await {
        Frame::Error {
            request: None,
            code: ErrorCode::UnknownRoom,
            message,
        } => assert!(message.contains("9999"), "{message}"),
        other => panic!("expected UnknownRoom error, got {other:?}"),
    }
    // Still a working session.
    peer.send_control(&Frame::Join {
        request: 5,
        room: "healthy".into(),
        echo: Some(false),
        since: None,
    })
    .await;
    assert!(matches!(
        peer.next_control().await,
        Frame::Joined { request: 5, .. }
    ));
    others.check("after unknown room").await;
}

#[tokio::test]
async fn bad_utf8_in_room_or_event_name_closes_with_a_reason() {
    let server = common::start().await;
    let mut others = Bystanders::new(&server).await;

    // Join { request: 1, room: [0xff, 0xfe], echo: Some(false) }
    let mut peer = server.raw_session().await;
    peer.send_control_bytes(&framed_raw(&[1, 1, 2, 0xff, 0xfe, 0]))
        .await;
    expect_close(&peer, close_code::PROTOCOL_VIOLATION, "UTF-8").await;

    // Publish { id: 0, event: [0xc3, 0x28], payload: [], ack: None } on a publish stream.
    let peer = server.raw_session().await;
    let mut send = peer.conn.open_uni().await.unwrap();
    send.write_all(&wire::encode_framed(&Frame::PublishStream {
        room: "healthy".into(),
    }))
    .await
    .unwrap();
    send.write_all(&framed_raw(&[13, 0, 2, 0xc3, 0x28, 0, 0]))
        .await
        .unwrap();
    expect_close(&peer, close_code::PROTOCOL_VIOLATION, "UTF-8").await;
    others.check("after bad utf-8").await;
}

#[tokio::test]
async fn invalid_names_are_typed_errors_not_closes() {
    let server = common::start().await;
    let mut others = Bystanders::new(&server).await;
    let mut peer = server.raw_session().await;
    peer.send_control(&Frame::Join {
        request: 1,
        room: "x".repeat(300),
        echo: Some(false),
        since: None,
    })
    .await;
    assert!(matches!(
        peer.next_control().await,
        Frame::Error {
            request: Some(1),
            code: ErrorCode::InvalidName,
            ..
        }
    ));
    // The library refuses the same before sending anything.
    let (client, _e) = server.client().await;
    assert!(matches!(
        client.join("").await,
        Err(ClientError::InvalidName(_))
    ));
    assert!(matches!(
        client.emit("r", &"e".repeat(256), "x").await,
        Err(ClientError::InvalidName(_))
    ));
    others.check("after invalid names").await;
}

#[tokio::test]
async fn garbage_datagram_closes_with_protocol_violation() {
    let server = common::start().await;
    let mut others = Bystanders::new(&server).await;
    let peer = server.raw_session().await;
    peer.conn
        .send_datagram(Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]))
        .unwrap();
    expect_close(&peer, close_code::PROTOCOL_VIOLATION, "malformed datagram").await;
    others.check("after garbage datagram").await;
}

#[tokio::test]
async fn frames_of_the_wrong_kind_close_the_connection() {
    let server = common::start().await;
    let mut others = Bystanders::new(&server).await;

    // A server frame on the control stream.
    let mut peer = server.raw_session().await;
    peer.send_control(&Frame::Ack {
        request: 1,
        offset: 1,
    })
    .await;
    expect_close(&peer, close_code::PROTOCOL_VIOLATION, "Ack").await;

    // A publish stream that starts with something other than its header.
    let peer = server.raw_session().await;
    let mut send = peer.conn.open_uni().await.unwrap();
    send.write_all(&wire::encode_framed(&Frame::Publish {
        id: 0,
        event: "e".into(),
        payload: Bytes::new(),
        ack: None,
    }))
    .await
    .unwrap();
    expect_close(&peer, close_code::PROTOCOL_VIOLATION, "PublishStream").await;

    // A server datagram sent by a client.
    let peer = server.raw_session().await;
    peer.conn
        .send_datagram(wire::encode(&Frame::Datagram {
            room_id: 0,
            seq: 1,
            event: "e".into(),
            payload: Bytes::new(),
        }))
        .unwrap();
    expect_close(&peer, close_code::PROTOCOL_VIOLATION, "Datagram").await;

    // Something other than Hello first.
    let mut peer = server.raw().await;
    peer.send_control(&Frame::Join {
        request: 1,
        room: "r".into(),
        echo: Some(false),
        since: None,
    })
    .await;
    expect_close(&peer, close_code::PROTOCOL_VIOLATION, "Hello").await;
    others.check("after wrong kinds").await;
}

#[tokio::test]
async fn wrong_protocol_version_is_a_typed_error_on_the_client() {
    let server = common::start().await;
    let mut others = Bystanders::new(&server).await;
    let mut options = server.options();
    options.protocol_version = 99;
    let err = within("connect", Client::connect(options))
        .await
        .err()
        .expect("connect must fail");
    match &err {
        ClientError::VersionMismatch {
            client: 99,
            server: quicbus::wire::PROTOCOL_VERSION,
        } => {}
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("version"));

    // A raw peer also sees the close code after the Reject.
    let mut peer = server.raw().await;
    peer.send_control(&Frame::Hello {
        version: quicbus::wire::PROTOCOL_VERSION + 1,
        token: None,
        client_name: "future".into(),
        resume: None,
        copies: false,
    })
    .await;
    assert!(matches!(
        peer.next_control().await,
        Frame::Reject {
            code: ErrorCode::UnsupportedVersion,
            server_version: quicbus::wire::PROTOCOL_VERSION,
            ..
        }
    ));
    expect_close(&peer, close_code::UNSUPPORTED_VERSION, "version 3").await;
    others.check("after version mismatch").await;
}

#[tokio::test]
async fn wrong_ca_fails_with_a_tls_error_within_the_connect_timeout() {
    let server = common::start().await;
    let other_ca = quicbus::certs::generate(&[]).unwrap();
    let mut options = server.options();
    options.trust = quicbus::client::Trust::CaPem(other_ca.ca_pem);
    options.connect_timeout = std::time::Duration::from_secs(10);
    let started = std::time::Instant::now();
    let err = within("connect", Client::connect(options))
        .await
        .err()
        .expect("connect must fail");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    match &err {
        ClientError::Handshake { reason, .. } => {
            assert!(reason.contains("certificate"), "{reason}")
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_server_times_out_with_a_clear_error() {
    // Bind a UDP socket and never answer: nothing listens on QUIC there.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = common::start().await;
    let mut options = server.options();
    options.server = silent.local_addr().unwrap();
    options.connect_timeout = std::time::Duration::from_millis(300);
    let err = within("connect", Client::connect(options))
        .await
        .err()
        .expect("connect must fail");
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("no answer"));
}

/// Resolves `room` on a raw peer's control stream; returns its id there.
async fn resolve(peer: &mut RawPeer, request: u64, room: &str) -> u32 {
    peer.send_control(&Frame::Resolve {
        request,
        room: room.into(),
    })
    .await;
    match peer.next_control().await {
        Frame::Resolved {
            request: r,
            room_id,
        } if r == request => room_id,
        other => panic!("expected Resolved, got {other:?}"),
    }
}

#[tokio::test]
async fn room_ids_belong_to_a_connection_and_a_guessed_one_reaches_nobody() {
    let server = common::start().await;
    let mut others = Bystanders::new(&server).await;
    // A victim in 64 rooms the attacker never names.
    let (victim, mut victim_events) = server.client().await;
    for i in 0..64 {
        victim.join(&format!("secret.{i}")).await.unwrap();
    }
    let mut attacker = server.raw_session().await;
    let mine = resolve(&mut attacker, 1, "mine").await;
    assert_eq!(
        resolve(&mut attacker, 2, "mine").await,
        mine,
        "stable per name"
    );
    // Ids on another connection are its own: the same names in another
    // order get other ids.
    let mut other = server.raw_session().await;
    let theirs = resolve(&mut other, 1, "elsewhere").await;
    assert_eq!(resolve(&mut other, 2, "mine").await, theirs + 1);

    // Every id but its own: datagrams and datagram copies, then a Leave.
    let guesses: Vec<u32> = (0..=70).filter(|id| *id != mine).collect();
    for &room_id in &guesses {
        let datagram = wire::encode(&Frame::PublishDatagram {
            room_id,
            event: "pos".into(),
            payload: Bytes::from_static(b"guess"),
        });
        attacker.conn.send_datagram(datagram).unwrap();
    }
    let copy = wire::encode(&Frame::PublishCopy {
        room_id: mine + 1,
        id: 1,
        event: "e".into(),
        payload: Bytes::from_static(b"guess"),
        ack: Some(9),
        pad: Bytes::new(),
    });
    attacker.conn.send_datagram(copy).unwrap();
    let mut refused = 0;
    while refused < guesses.len() + 1 {
        match attacker.next_control().await {
            Frame::Error {
                request: None,
                code: ErrorCode::UnknownRoom,
                message,
            } => {
                assert!(
                    message.contains("not given on this connection"),
                    "{message}"
                );
                refused += 1;
            }
            other => panic!("expected an UnknownRoom error, got {other:?}"),
        }
    }
    attacker
        .send_control(&Frame::Leave {
            request: 3,
            room_id: mine + 1,
        })
        .await;
    assert!(matches!(
        attacker.next_control().await,
        Frame::Error {
            request: Some(3),
            code: ErrorCode::UnknownRoom,
            ..
        }
    ));
    // The session goes on, and its own id works.
    attacker
        .send_control(&Frame::Join {
            request: 4,
            room: "mine".into(),
            echo: Some(true),
            since: None,
        })
        .await;
    assert!(matches!(
        attacker.next_control().await,
        Frame::Joined { request: 4, room_id, .. } if room_id == mine
    ));
    assert_eq!(
        server.handle.stats().unknown_room_ids,
        guesses.len() as u64 + 2
    );
    assert_eq!(server.handle.stats().datagrams_published, 0);
    // Nothing reached the victim: a reliable event sent after every guess
    // is the first thing it sees.
    others
        .publisher
        .emit_with_ack("secret.0", "after", "x")
        .await
        .unwrap();
    let first = next_event(&mut victim_events, "the event after the guesses").await;
    assert_eq!((&*first.room, first.name.as_str()), ("secret.0", "after"));
    others.check("after guessed ids").await;
}

fn hello(client_name: String) -> Frame {
    Frame::Hello {
        version: wire::PROTOCOL_VERSION,
        token: None,
        client_name,
        resume: None,
        copies: false,
    }
}

#[tokio::test]
async fn a_hello_gets_a_few_kib_not_the_full_frame_limit() {
    use quicbus::server::MAX_HELLO;
    let server = common::start().await;
    let mut others = Bystanders::new(&server).await;
    // Just under the limit: a normal session.
    let mut fits = server.raw().await;
    fits.send_control(&hello("n".repeat(MAX_HELLO - 64))).await;
    assert!(matches!(fits.next_control().await, Frame::Welcome { .. }));
    // Over it: refused as soon as the length prefix says so, long before
    // the body could pile up (the default frame limit is 1 MiB).
    let mut over = server.raw().await;
    let big = wire::encode_framed(&hello("n".repeat(MAX_HELLO + 1)));
    over.send_control_bytes(&big[..16]).await;
    expect_close(&over, close_code::FRAME_TOO_LARGE, "handshake").await;
    // After Hello, the full frame limit applies again: a 20 KB request is
    // read (and refused for its name), not closed as too large.
    fits.send_control(&Frame::Join {
        request: 1,
        room: "r".repeat(20_000),
        echo: Some(false),
        since: None,
    })
    .await;
    assert!(matches!(
        fits.next_control().await,
        Frame::Error {
            request: Some(1),
            code: ErrorCode::InvalidName,
            ..
        }
    ));
    others.check("after oversize hellos").await;
}
