//! Browsers' WebTransport beside native QUIC on the same UDP port: a
//! WebTransport session (HTTP/3, ALPN `h3`, path `/quicbus`) carries the
//! same frames as a native connection, and the two kinds of client see
//! each other's reliable events and datagrams in both directions. The
//! WebTransport side here is `web-transport-quinn`'s client speaking the
//! wire protocol by hand, as the JavaScript client does in a browser.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::{next_event, within, TestServer};
use quicbus::client::{Delivery, Event, Events};
use quicbus::wire::{self, Frame, FrameReader, Recovery, RoomId, PROTOCOL_VERSION};
use web_transport_quinn::{ClientBuilder, RecvStream, SendStream, Session};

/// A browser-like peer: a WebTransport session and its control stream.
struct WebPeer {
    session: Session,
    control_send: SendStream,
    control: FrameReader<RecvStream>,
    next_request: u64,
}

fn url(server: &TestServer, path: &str) -> url::Url {
    let port = server.handle.local_addr().port();
    url::Url::parse(&format!("https://127.0.0.1:{port}{path}")).unwrap()
}

/// Opens a WebTransport session to `url`, pinning the certificate with
/// SHA-256 `hash` as a browser's `serverCertificateHashes` does (which
/// also accepts only short-lived ECDSA certificates: the browser test in
/// web/ checks that part).
async fn open_pinned(
    url: url::Url,
    hash: [u8; 32],
) -> Result<Session, web_transport_quinn::ClientError> {
    let client = ClientBuilder::new()
        .with_server_certificate_hashes(vec![hash.to_vec()])
        .unwrap();
    client.connect(url).await
}

/// [`open_pinned`] with the server's current browser certificate.
async fn open(
    server: &TestServer,
    path: &str,
) -> Result<Session, web_transport_quinn::ClientError> {
    let certs = server
        .handle
        .browser_certs()
        .expect("a browser certificate");
    open_pinned(url(server, path), certs.sha256()).await
}

impl WebPeer {
    async fn connect(server: &TestServer) -> WebPeer {
        let session = within("WebTransport session", open(server, "/quicbus"))
            .await
            .expect("WebTransport session");
        WebPeer::on(session).await
    }

    /// Says `Hello` on a new session and waits for `Welcome`.
    async fn on(session: Session) -> WebPeer {
        let (mut control_send, recv) = session.open_bi().await.unwrap();
        let hello = Frame::Hello {
            version: PROTOCOL_VERSION,
            token: None,
            client_name: "web-test".into(),
            resume: None,
            copies: false,
        };
        control_send
            .write_all(&wire::encode_framed(&hello))
            .await
            .unwrap();
        let mut peer = WebPeer {
            session,
            control_send,
            control: FrameReader::new(recv, wire::DEFAULT_MAX_FRAME),
            next_request: 1,
        };
        match peer.reply("Welcome").await {
            Frame::Welcome {
                max_datagram_payload,
                ..
            } => assert!(max_datagram_payload > 0, "datagrams over WebTransport"),
            other => panic!("expected Welcome, got {other:?}"),
        }
        peer
    }

    async fn send(&mut self, frame: &Frame) {
        self.control_send
            .write_all(&wire::encode_framed(frame))
            .await
            .unwrap();
    }

    async fn reply(&mut self, what: &str) -> Frame {
        within(what, self.control.next())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("control stream ended before {what}"))
    }

    /// Joins `room`; returns its id on this session and its offset.
    async fn join(&mut self, room: &str) -> (RoomId, u64) {
        let request = self.next_request;
        self.next_request += 1;
        self.send(&Frame::Join {
            request,
            room: room.into(),
            echo: None,
            since: None,
        })
        .await;
        match self.reply("Joined").await {
            Frame::Joined {
                request: r,
                room_id,
                offset,
                recovery,
            } => {
                assert_eq!(r, request);
                assert_eq!(recovery, Recovery::Live);
                (room_id, offset)
            }
            other => panic!("expected Joined for {room}, got {other:?}"),
        }
    }

    /// The next event stream the server opens: its room name and reader.
    async fn event_stream(&self) -> (String, FrameReader<RecvStream>) {
        let recv = within("an event stream", self.session.accept_uni())
            .await
            .unwrap();
        let mut reader = FrameReader::new(recv, wire::DEFAULT_MAX_FRAME);
        match within("EventStream header", reader.next()).await.unwrap() {
            Some(Frame::EventStream { room, .. }) => (room, reader),
            other => panic!("expected an EventStream header, got {other:?}"),
        }
    }
}

async fn next_stream_frame(reader: &mut FrameReader<RecvStream>, what: &str) -> Frame {
    within(what, reader.next())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("stream ended before {what}"))
}

/// A native `say` event, acknowledged, reaches `web` on the first event
/// stream it opens there (`room`'s) with the same offset and payload.
async fn native_say_reaches(
    native: &quicbus::client::Client,
    web: &WebPeer,
    room: &str,
    text: &'static str,
) {
    let at = native.emit_with_ack(room, "say", text).await.unwrap();
    let (opened, mut reader) = web.event_stream().await;
    assert_eq!(opened, room);
    assert_eq!(
        next_stream_frame(&mut reader, text).await,
        Frame::Event {
            offset: at,
            event: "say".into(),
            payload: Bytes::from_static(text.as_bytes()),
        }
    );
}

/// The next event, which must be a reliable one of `room`.
async fn reliable(events: &mut Events, room: &str) -> (String, u64, Bytes) {
    let Event {
        room: r,
        name,
        delivery,
        payload,
    } = next_event(events, room).await;
    assert_eq!(&*r, room);
    match delivery {
        Delivery::Reliable { offset } => (name, offset, payload),
        other => panic!("expected a reliable event in {room}, got {other:?}"),
    }
}

#[tokio::test]
async fn browsers_and_native_clients_see_each_others_events() {
    let server = common::start().await;
    let (native, mut native_events) = server.client().await;
    native.join("chat").await.unwrap();
    native.join("game").await.unwrap();

    let mut web = WebPeer::connect(&server).await;
    let (chat_id, _) = web.join("chat").await;
    let (game_id, _) = web.join("game").await;
    assert_ne!(chat_id, game_id);

    // Native → browser, reliable, two rooms: each room on its own stream.
    let say = native.emit_with_ack("chat", "say", "hello").await.unwrap();
    let spawn = native
        .emit_with_ack("game", "spawn", vec![1u8, 2, 3])
        .await
        .unwrap();
    let mut streams = HashMap::new();
    for _ in 0..2 {
        let (room, reader) = web.event_stream().await;
        streams.insert(room, reader);
    }
    let chat = streams.get_mut("chat").expect("a chat stream");
    assert_eq!(
        next_stream_frame(chat, "the chat event").await,
        Frame::Event {
            offset: say,
            event: "say".into(),
            payload: Bytes::from_static(b"hello"),
        }
    );
    let game = streams.get_mut("game").expect("a game stream");
    assert_eq!(
        next_stream_frame(game, "the game event").await,
        Frame::Event {
            offset: spawn,
            event: "spawn".into(),
            payload: Bytes::from_static(&[1, 2, 3]),
        }
    );

    // Browser → native, reliable with an ack: the same offset both ways.
    let mut publish = web.session.open_uni().await.unwrap();
    let frames = [
        Frame::PublishStream {
            room: "chat".into(),
        },
        Frame::Publish {
            id: 1,
            event: "reply".into(),
            payload: Bytes::from_static(b"hi from a browser"),
            ack: Some(41),
        },
        Frame::Publish {
            id: 2,
            event: "reply".into(),
            payload: Bytes::from_static(b"and again"),
            ack: Some(42),
        },
    ];
    for frame in &frames {
        publish
            .write_all(&wire::encode_framed(frame))
            .await
            .unwrap();
    }
    let mut acked = Vec::new();
    for request in [41, 42] {
        match web.reply("Ack").await {
            Frame::Ack { request: r, offset } => {
                assert_eq!(r, request);
                acked.push(offset);
            }
            other => panic!("expected an Ack, got {other:?}"),
        }
    }
    assert!(say < acked[0] && acked[0] < acked[1], "{say} {acked:?}");
    for (offset, payload) in acked.iter().zip([&b"hi from a browser"[..], b"and again"]) {
        let (name, at, body) = reliable(&mut native_events, "chat").await;
        assert_eq!((name.as_str(), at, &body[..]), ("reply", *offset, payload));
    }

    // Native → browser datagrams: the session's datagram header is taken
    // off, and the frame is the same as on a native connection. Datagrams
    // may be lost: send until one arrives, a bounded number of times.
    let mut received = None;
    for i in 0..50u8 {
        native
            .emit_datagram("game", "pos", vec![i, 7])
            .await
            .unwrap();
        let got = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            web.session.read_datagram(),
        )
        .await;
        if let Ok(datagram) = got {
            received = Some(wire::decode(&datagram.unwrap()).unwrap());
            break;
        }
    }
    match received.expect("a datagram reached the browser") {
        Frame::Datagram {
            room_id,
            seq,
            event,
            payload,
        } => {
            assert_eq!(room_id, game_id);
            assert!(seq >= 1);
            assert_eq!(event, "pos");
            assert_eq!(payload.len(), 2);
            assert_eq!(payload[1], 7);
        }
        other => panic!("expected a Datagram, got {other:?}"),
    }

    // Browser → native datagrams.
    let mut delivered = None;
    for i in 0..50u8 {
        let frame = Frame::PublishDatagram {
            room_id: game_id,
            event: "aim".into(),
            payload: Bytes::from(vec![i, 9]),
        };
        web.session.send_datagram(wire::encode(&frame)).unwrap();
        let got =
            tokio::time::timeout(std::time::Duration::from_millis(200), native_events.next()).await;
        if let Ok(event) = got {
            delivered = event;
            break;
        }
    }
    let event = delivered.expect("a browser's datagram reached the native client");
    assert_eq!(&*event.room, "game");
    assert_eq!(event.name, "aim");
    assert!(matches!(event.delivery, Delivery::Datagram { seq } if seq >= 1));
    assert_eq!(event.payload[1], 9);

    web.session.close(wire::close_code::NORMAL, b"done");
    native.close().await;
}

#[tokio::test]
async fn a_session_for_another_path_is_refused_and_others_carry_on() {
    let server = common::start().await;
    let refused = within("a refused session", open(&server, "/elsewhere")).await;
    let err = refused.expect_err("a session for /elsewhere is refused");
    assert!(err.to_string().contains("404"), "{err}");

    // The server keeps serving both kinds of client.
    let mut web = WebPeer::connect(&server).await;
    web.join("chat").await;
    let (native, _events) = server.client().await;
    native_say_reaches(&native, &web, "chat", "still here").await;
}

/// What `GET /cert-hash` answers.
#[derive(serde::Deserialize)]
struct CertHash {
    url: String,
    hashes: Vec<String>,
    expires: Option<u64>,
}

async fn cert_hash(web: &quicbus::web::WebServer) -> CertHash {
    let answer = common::metrics::get(web.local_addr(), "/cert-hash", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.content_type, "application/json");
    serde_json::from_str(&answer.body).unwrap()
}

fn sha256_of(hash: &CertHash) -> [u8; 32] {
    use base64::Engine;
    assert_eq!(hash.hashes.len(), 1, "one certificate at a time");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&hash.hashes[0])
        .unwrap();
    bytes.try_into().unwrap()
}

#[tokio::test]
async fn a_page_finds_the_session_and_its_certificate_over_http() {
    let server = common::start().await;
    let certs = server.handle.browser_certs().unwrap();
    let config = quicbus::web::WebConfig {
        quic: server.handle.local_addr(),
        browsers: Some(certs.clone()),
        demo: None,
    };
    let web = quicbus::web::serve("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let answer = cert_hash(&web).await;
    let port = server.handle.local_addr().port();
    assert_eq!(answer.url, format!("https://127.0.0.1:{port}/quicbus"));
    assert_eq!(sha256_of(&answer), certs.sha256());
    let expires = answer.expires.expect("an expiry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expires > now && expires <= now + 14 * 24 * 3600,
        "{expires}"
    );

    // Exactly what a page does: the URL and the pinned hash from the answer.
    let session = within(
        "a session from /cert-hash",
        open_pinned(url::Url::parse(&answer.url).unwrap(), sha256_of(&answer)),
    )
    .await
    .expect("the pinned certificate is the one shown");
    let mut web_peer = WebPeer::on(session).await;
    web_peer.join("chat").await;

    // Native clients still verify the chain of the development CA.
    let (native, _events) = server.client().await;
    native.join("chat").await.unwrap();

    // The certificate is renewed before it expires: new sessions get the
    // new one (the old hash no longer opens one), the answer changes with
    // it, and sessions already open carry on.
    let soon = std::time::SystemTime::now() + std::time::Duration::from_secs(7 * 24 * 3600);
    assert!(certs.renew_if_due(soon).unwrap());
    let renewed = cert_hash(&web).await;
    assert_ne!(sha256_of(&renewed), sha256_of(&answer));
    assert_eq!(sha256_of(&renewed), certs.sha256());
    let stale = within(
        "a session pinning the old hash",
        open_pinned(url(&server, "/quicbus"), sha256_of(&answer)),
    )
    .await;
    assert!(stale.is_err(), "the old certificate is no longer shown");
    let fresh = within(
        "a session pinning the new hash",
        open_pinned(url(&server, "/quicbus"), sha256_of(&renewed)),
    )
    .await
    .expect("the new certificate is shown");
    WebPeer::on(fresh).await;
    native_say_reaches(&native, &web_peer, "chat", "after renewal").await;
    // Not yet due: nothing changes.
    assert!(!certs.renew_if_due(std::time::SystemTime::now()).unwrap());
}

#[tokio::test]
async fn with_a_real_certificate_pages_pin_nothing() {
    // A server on `--cert/--key` has no browser certificate: browsers
    // verify its chain as for any HTTPS site, and the answer says so.
    let config = quicbus::web::WebConfig {
        quic: "127.0.0.1:4433".parse().unwrap(),
        browsers: None,
        demo: None,
    };
    let web = quicbus::web::serve("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let answer = cert_hash(&web).await;
    assert_eq!(answer.url, "https://127.0.0.1:4433/quicbus");
    assert!(answer.hashes.is_empty());
    assert_eq!(answer.expires, None);
    // Nothing of the demo without one.
    let demo = common::metrics::get(web.local_addr(), "/demo", None).await;
    assert_eq!(demo.status, 404);
    let page = common::metrics::get(web.local_addr(), "/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    assert!(page.body.contains("/quicbus.js"));
}
