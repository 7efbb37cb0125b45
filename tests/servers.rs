//! Clients that know several servers (`ClientOptions::servers`): the first
//! connection moves past a server that does not answer, a fatal refusal
//! ends the search, and a client whose server shuts down reconnects to
//! another one by itself and rejoins its rooms there.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{next_event, within};
use quicbus::client::{
    Client, ClientError, Delivery, Events, Incoming, Recovery, RecoveryFailure, ResumeOutcome,
};
use quicbus::server::ServerConfig;

/// A bound UDP socket that never answers: a server that is down, without
/// the ICMP "port unreachable" a closed port may bring. Keep it alive for
/// as long as the address must stay dead.
fn silent_address() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

#[tokio::test]
async fn the_first_connection_moves_past_a_server_that_does_not_answer() {
    let live = common::start().await;
    let (_socket, dead) = silent_address();
    let mut options = live.options();
    options.server = dead;
    options.servers = vec![live.handle.local_addr()];
    options.connect_timeout = Duration::from_secs(1);
    let (client, mut events) = within("connect past the dead server", Client::connect(options))
        .await
        .expect("connect");
    client.join("lobby").await.unwrap();
    let (publisher, _publisher_events) = live.client().await;
    let offset = publisher
        .emit_with_ack("lobby", "hello", "hi")
        .await
        .unwrap();
    let event = next_event(&mut events, "the event on the live server").await;
    assert_eq!(&*event.room, "lobby");
    assert_eq!(event.name, "hello");
    assert_eq!(event.delivery, Delivery::Reliable { offset });
    assert_eq!(&event.payload[..], b"hi");
}

#[tokio::test]
async fn with_no_server_answering_the_last_error_is_returned() {
    let (_first, dead) = silent_address();
    let (_second, also_dead) = silent_address();
    let mut options = common::start().await.options();
    options.server = dead;
    options.servers = vec![also_dead];
    options.connect_timeout = Duration::from_millis(300);
    let error = within("both attempts", Client::connect(options))
        .await
        .err()
        .expect("nothing answers");
    match error {
        ClientError::ConnectTimeout { server, .. } => assert_eq!(server, also_dead),
        other => panic!("expected a timeout from the second server, got {other}"),
    }
}

#[tokio::test]
async fn a_fatal_refusal_ends_the_search() {
    let live = common::start().await;
    let (_socket, dead) = silent_address();
    let mut options = live.options();
    options.protocol_version = 999;
    options.servers = vec![dead];
    // Long enough that moving on to the silent server would end in a
    // timeout instead of the version mismatch.
    options.connect_timeout = Duration::from_secs(2);
    let error = within("the refused connect", Client::connect(options))
        .await
        .err()
        .expect("the version is refused");
    assert!(
        matches!(error, ClientError::VersionMismatch { client: 999, .. }),
        "{error}"
    );
}

/// Reads notices until `rooms` have all reported their recovery and the
/// client says it reconnected; returns the recoveries in arrival order.
async fn reconnected(events: &mut Events, rooms: &[&str]) -> Vec<(String, Recovery)> {
    let mut recoveries = Vec::new();
    loop {
        let incoming = within("reconnect notices", events.next_incoming())
            .await
            .expect("the client closed");
        match incoming {
            Incoming::Disconnected { .. } => {}
            Incoming::Recovery { room, recovery } => recoveries.push((room.to_string(), recovery)),
            Incoming::Reconnected { resumed } => {
                // The servers share nothing: the session starts anew.
                assert!(
                    matches!(resumed, ResumeOutcome::NotResumed { .. }),
                    "{resumed:?}"
                );
                let mut seen: Vec<&str> = recoveries.iter().map(|(r, _)| r.as_str()).collect();
                seen.sort();
                assert_eq!(seen, rooms, "one recovery notice per joined room");
                return recoveries;
            }
            other => panic!("unexpected before the reconnect: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_its_server_shuts_down_a_client_moves_to_another_and_rejoins_there() {
    let a = common::start().await;
    // B under the same certificates, as the servers of one cluster would be.
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let b = common::start_exactly(config, a.certs.clone()).await;
    let rooms = ["room.one", "room.two"];

    let mut options = a.options();
    options.servers = vec![b.handle.local_addr()];
    common::quick(&mut options);
    // A shut down stays silent: an attempt on it costs this much.
    options.connect_timeout = Duration::from_secs(1);
    let (client, mut events) = within("connect to A", Client::connect(options))
        .await
        .unwrap();
    for room in rooms {
        client.join(room).await.unwrap();
    }
    // B's rooms already hold events, a different number in each, so a
    // delivery labelled with the wrong room carries the wrong offset.
    let (publisher, _publisher_events) = b.client().await;
    for (i, room) in rooms.iter().enumerate() {
        for n in 0..=i {
            publisher
                .emit_with_ack(room, "before", format!("{n}"))
                .await
                .unwrap();
        }
    }

    within("A's shutdown", a.handle.shutdown()).await;
    let recoveries = reconnected(&mut events, &rooms).await;
    for (room, recovery) in recoveries {
        assert_eq!(
            recovery,
            Recovery::NotRecovered {
                reason: RecoveryFailure::EpochChanged
            },
            "room {room}: B's history is not A's"
        );
    }
    assert!(client.is_connected());
    assert_eq!(client.stats().reconnects, 1);

    for room in rooms {
        let payload = format!("on B to {room}");
        let offset = publisher
            .emit_with_ack(room, "after", payload.clone())
            .await
            .unwrap();
        let event = next_event(&mut events, room).await;
        assert_eq!(&*event.room, room);
        assert_eq!(event.name, "after");
        assert_eq!(event.delivery, Delivery::Reliable { offset });
        assert_eq!(event.payload, payload.as_bytes());
    }
    client.close().await;
}
