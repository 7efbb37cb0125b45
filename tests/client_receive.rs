//! The client's receiving side against a scripted server speaking the wire
//! protocol by hand: stale datagrams are dropped and counted, and a server
//! that breaks the protocol gets a close, not a panic.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{next_event, within};
use quicbus::client::{Client, ClientOptions, Trust};
use quicbus::server::ServerConfig;
use quicbus::tls;
use quicbus::wire::{self, Frame, FrameReader};

/// A server endpoint with no quicbus logic: the test plays the server.
struct ScriptedServer {
    endpoint: quinn::Endpoint,
    ca_pem: String,
}

struct ScriptedSession {
    conn: quinn::Connection,
    send: quinn::SendStream,
    control: FrameReader,
}

impl ScriptedServer {
    fn new() -> Self {
        let certs = quicbus::certs::generate(&[]).unwrap();
        let config = tls::server_config(
            tls::parse_certs(&certs.server_pem).unwrap(),
            tls::parse_key(&certs.server_key_pem).unwrap(),
            None,
            &ServerConfig::default().transport,
        )
        .unwrap();
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        ScriptedServer {
            endpoint,
            ca_pem: certs.ca_pem,
        }
    }

    fn options(&self) -> ClientOptions {
        let mut options = ClientOptions::new(self.endpoint.local_addr().unwrap());
        options.trust = Trust::CaPem(self.ca_pem.clone());
        options
    }

    /// Accepts one client and completes the handshake for it.
    async fn accept(&self) -> ScriptedSession {
        let conn = within("accept", async {
            self.endpoint.accept().await.unwrap().await
        })
        .await
        .unwrap();
        let (send, recv) = within("control", conn.accept_bi()).await.unwrap();
        let mut session = ScriptedSession {
            conn,
            send,
            control: FrameReader::new(recv, 1 << 20),
        };
        assert!(matches!(session.next().await, Frame::Hello { .. }));
        session
            .reply(&Frame::Welcome {
                session_id: 1,
                max_datagram_payload: 1200,
                max_frame: 1 << 20,
                epoch: 7,
                resume_token: "t".into(),
                resumed: quicbus::wire::ResumeOutcome::New,
            })
            .await;
        session
    }
}

impl ScriptedSession {
    async fn next(&mut self) -> Frame {
        within("client frame", self.control.next())
            .await
            .unwrap()
            .unwrap()
    }

    async fn reply(&mut self, frame: &Frame) {
        self.send
            .write_all(&wire::encode_framed(frame))
            .await
            .unwrap();
    }

    /// Answers the client's `Join` with the given room id.
    async fn accept_join(&mut self, room_id: u32) {
        match self.next().await {
            Frame::Join { request, .. } => {
                self.reply(&Frame::Joined {
                    request,
                    room_id,
                    offset: 0,
                    recovery: quicbus::wire::Recovery::Live,
                })
                .await
            }
            other => panic!("expected Join, got {other:?}"),
        }
    }

    fn datagram(&self, room_id: u32, seq: u64) {
        self.conn
            .send_datagram(wire::encode(&Frame::Datagram {
                room_id,
                seq,
                event: "pos".into(),
                payload: Bytes::from(seq.to_be_bytes().to_vec()),
            }))
            .unwrap();
    }
}

#[tokio::test]
async fn stale_datagrams_are_dropped_and_gaps_counted() {
    let server = ScriptedServer::new();
    let (connected, mut session) = tokio::join!(Client::connect(server.options()), server.accept());
    let (client, mut events) = connected.unwrap();
    let (joined, ()) = tokio::join!(client.join("game"), session.accept_join(7));
    joined.unwrap();

    // 1, then 4 (2 and 3 skipped), then 3 and 4 again (stale), then 5.
    // Each delivered datagram is awaited before the next is sent, so the
    // order on the wire is the order written here.
    session.datagram(7, 1);
    assert_eq!(next_event(&mut events, "seq 1").await.seq(), Some(1));
    session.datagram(7, 4);
    assert_eq!(next_event(&mut events, "seq 4").await.seq(), Some(4));
    session.datagram(7, 3);
    session.datagram(7, 4);
    session.datagram(7, 5);
    let fifth = next_event(&mut events, "seq 5").await;
    assert_eq!(fifth.seq(), Some(5));
    assert_eq!(&*fifth.room, "game");
    assert_eq!(fifth.payload.as_ref(), 5u64.to_be_bytes());
    let stats = client.stats();
    assert_eq!(stats.datagrams_received, 3);
    assert_eq!(stats.datagrams_lost, 2, "2 and 3 were skipped");
    assert_eq!(stats.datagrams_stale, 2, "the late 3 and the repeated 4");

    // Datagrams of a room this client has not joined never reach it.
    session.datagram(8, 1);
    session.datagram(7, 6);
    assert_eq!(next_event(&mut events, "seq 6").await.seq(), Some(6));
    assert!(events.try_next().is_none());
}

#[tokio::test]
async fn a_server_that_breaks_the_protocol_is_closed_with_a_reason() {
    let server = ScriptedServer::new();
    let (connected, session) = tokio::join!(Client::connect(server.options()), server.accept());
    let (client, mut events) = connected.unwrap();
    session
        .conn
        .send_datagram(Bytes::from_static(&[0xff, 0xff, 0xff]))
        .unwrap();
    assert!(within("events end", events.next()).await.is_none());
    match within("close", session.conn.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code.into_inner(),
                u64::from(wire::close_code::PROTOCOL_VIOLATION)
            );
            assert!(String::from_utf8_lossy(&close.reason).contains("malformed datagram"));
        }
        other => panic!("expected the client to close, got {other}"),
    }
    assert!(client.join("x").await.is_err());
}

#[tokio::test]
async fn requests_acks_and_backed_up_emits_time_out_with_typed_errors() {
    use quicbus::client::ClientError;
    use std::time::Duration;
    let server = ScriptedServer::new();
    let mut options = server.options();
    options.request_timeout = Duration::from_millis(300);
    // The scripted server completes the handshake and then never answers
    // and never reads a publish stream.
    let (connected, _session) = tokio::join!(Client::connect(options), server.accept());
    let (client, _events) = connected.unwrap();

    match within("join", client.join("r")).await {
        Err(ClientError::Timeout {
            what: "join",
            after,
        }) => {
            assert_eq!(after, Duration::from_millis(300))
        }
        other => panic!("expected a join timeout, got {other:?}"),
    }
    match within("ack", client.emit_with_ack("r", "e", "x")).await {
        Err(ClientError::Timeout { what: "ack", .. }) => {}
        other => panic!("expected an ack timeout, got {other:?}"),
    }
    // Plain emits queue in the outbox until the server confirms them; this
    // one never does, so the outbox fills and emits fail (after waiting the
    // request timeout for room) instead of queuing without bound.
    let payload = Bytes::from(vec![0u8; 64 * 1024]);
    let mut result = Ok(());
    for _ in 0..1_000 {
        result = within("emit", client.emit("r", "big", payload.clone())).await;
        if result.is_err() {
            break;
        }
    }
    match result {
        Err(ClientError::OutboxFull { limit }) => assert_eq!(limit, 4096),
        other => panic!("expected a full outbox, got {other:?}"),
    }
}
