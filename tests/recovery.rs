//! Joining from a position: replay from the room's history, then live, with
//! an explicit answer when the history does not reach back that far.

#![allow(clippy::unwrap_used)]

mod common;

use common::{next_event, within};
use quicbus::client::{JoinOptions, Recovery, RecoveryFailure};
use quicbus::server::backplane::{BoxFuture, PublishRequest};
use quicbus::server::{EmbeddedBackplane, HistoryLimits, ServerConfig, SessionId};

fn since(offset: u64) -> JoinOptions {
    JoinOptions {
        since: Some(offset),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_late_joiner_catches_up_from_history_then_goes_live() {
    let server = common::start().await;
    let (publisher, _p) = server.client().await;
    within("publish", async {
        for i in 1..=100u64 {
            publisher.emit("h", "n", i.to_string()).await.unwrap();
        }
        publisher.ping().await.unwrap();
        assert_eq!(publisher.emit_with_ack("h", "n", "101").await.unwrap(), 101);
    })
    .await;
    let (late, mut events) = server.client().await;
    let joined = late.join_with("h", since(40)).await.unwrap();
    assert_eq!(joined.offset, 101);
    assert_eq!(joined.recovery, Recovery::Recovered { replayed: 61 });
    publisher.emit_with_ack("h", "n", "102").await.unwrap();
    for expected in 41..=102u64 {
        let e = next_event(&mut events, "replayed or live event").await;
        assert_eq!(e.offset(), Some(expected));
        assert_eq!(e.payload.as_ref(), expected.to_string().as_bytes());
    }
    // Joining at the newest offset replays nothing, and says so.
    let (other, _o) = server.client().await;
    let up_to_date = other.join_with("h", since(102)).await.unwrap();
    assert_eq!(up_to_date.recovery, Recovery::Recovered { replayed: 0 });
    // Without a position, a join is live only.
    let live = other
        .join_with("fresh", JoinOptions::default())
        .await
        .unwrap();
    assert_eq!(live.recovery, Recovery::Live);
}

#[tokio::test]
async fn a_history_shorter_than_the_gap_is_reported_then_live_delivery_continues() {
    let server = common::start_with(ServerConfig {
        history: HistoryLimits {
            max_events: 10,
            ..HistoryLimits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let (publisher, _p) = server.client().await;
    within("publish", async {
        for i in 1..=50u64 {
            publisher.emit("h", "n", i.to_string()).await.unwrap();
        }
        publisher.emit_with_ack("h", "n", "51").await.unwrap();
    })
    .await;
    let (sub, mut events) = server.client().await;
    let joined = sub.join_with("h", since(5)).await.unwrap();
    assert_eq!(
        joined.recovery,
        Recovery::NotRecovered {
            reason: RecoveryFailure::HistoryTooShort
        }
    );
    publisher.emit_with_ack("h", "n", "52").await.unwrap();
    let e = next_event(&mut events, "live event after a failed recovery").await;
    assert_eq!(e.offset(), Some(52));

    // A position the room never reached (an earlier life of the room):
    // reported, and live delivery still goes on from the room's offset.
    let (ahead, mut ahead_events) = server.client().await;
    let joined = ahead.join_with("h", since(1_000)).await.unwrap();
    assert_eq!(
        joined.recovery,
        Recovery::NotRecovered {
            reason: RecoveryFailure::UnknownPosition
        }
    );
    publisher.emit_with_ack("h", "n", "53").await.unwrap();
    let e = next_event(&mut ahead_events, "live event after an unknown position").await;
    assert_eq!(e.offset(), Some(53));
}

#[tokio::test]
async fn a_room_that_cannot_be_created_refuses_each_publish_with_a_typed_error() {
    use quicbus::client::ClientError;
    let server = common::start_with(ServerConfig {
        max_rooms: 1,
        ..ServerConfig::default()
    })
    .await;
    let (holder, _h) = server.client().await;
    holder.join("the-only-room").await.unwrap();
    let (client, _e) = server.client().await;
    match within("ack", client.emit_with_ack("another", "e", "x")).await {
        Err(ClientError::Rejected { code, .. }) => {
            assert_eq!(code, quicbus::wire::ErrorCode::TooManyRooms)
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // The refusal counts as handled: nothing lingers in the outbox.
    client.ping().await.unwrap();
    assert_eq!(client.outbox_len(), 0);
    // Once there is room again, the same stream publishes.
    holder.leave("the-only-room").await.unwrap();
    assert_eq!(client.emit_with_ack("another", "e", "y").await.unwrap(), 1);
}

/// A backplane whose storage fails for one room, to see the refusal travel
/// back to `emit_with_ack` as a typed `Rejected { Unavailable }`.
struct Refusing(EmbeddedBackplane);

type Bp = quicbus::server::BackplaneError;

impl quicbus::server::Backplane for Refusing {
    fn epoch(&self) -> u64 {
        self.0.epoch()
    }
    fn open(&self, room: &str) -> Result<(), Bp> {
        self.0.open(room)
    }
    fn subscribe(
        &self,
        room: &str,
        subscriber: std::sync::Arc<dyn quicbus::server::RoomSubscriber>,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<quicbus::server::Subscribed, Bp>> {
        self.0.subscribe(room, subscriber, since)
    }
    fn unsubscribe(&self, room: &str, session: SessionId) {
        self.0.unsubscribe(room, session)
    }
    fn publish(&self, request: PublishRequest<'_>) -> BoxFuture<'_, Result<u64, Bp>> {
        if request.room == "broken" {
            let failed = Bp::Unavailable("no space left on device".into());
            return Box::pin(std::future::ready(Err(failed)));
        }
        if request.room == "stopping" {
            return Box::pin(std::future::ready(Err(Bp::ShuttingDown)));
        }
        self.0.publish(request)
    }
    fn publish_datagram(
        &self,
        room: &str,
        from: SessionId,
        event: String,
        payload: bytes::Bytes,
    ) -> Result<u64, Bp> {
        self.0.publish_datagram(room, from, event, payload)
    }
    fn publishes_of(&self, room: &str, session: u64) -> BoxFuture<'_, Result<Vec<(u64, u64)>, Bp>> {
        self.0.publishes_of(room, session)
    }
    fn close(&self) {
        self.0.close()
    }
}

#[tokio::test]
async fn a_refused_event_is_a_typed_rejection_of_its_ack() {
    use quicbus::client::ClientError;
    use quicbus::server::{MemoryStore, Server, ServerIdentity};
    let certs = quicbus::certs::generate(&[]).unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let store = std::sync::Arc::new(MemoryStore::new(HistoryLimits::default()));
    let backplane = std::sync::Arc::new(Refusing(EmbeddedBackplane::new(100, store)));
    let server = Server::with_backplane(
        config,
        ServerIdentity::from_dev_certs(&certs).unwrap(),
        backplane,
    )
    .unwrap()
    .spawn();
    let mut options = quicbus::client::ClientOptions::new(server.local_addr());
    options.trust = quicbus::client::Trust::CaPem(certs.ca_pem.clone());
    options.request_timeout = std::time::Duration::from_secs(1);
    let (client, _e) = within("connect", quicbus::client::Client::connect(options))
        .await
        .unwrap();
    match within("ack", client.emit_with_ack("broken", "e", "x")).await {
        Err(ClientError::Rejected { code, reason }) => {
            assert_eq!(code, quicbus::wire::ErrorCode::Unavailable);
            assert!(reason.contains("no space left on device"), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // The session keeps working for other rooms.
    assert_eq!(client.emit_with_ack("open", "e", "x").await.unwrap(), 1);
    // An event refused because the server is stopping was not handled: it
    // is neither answered nor confirmed, so it stays in the outbox, to be
    // sent again to the server the client reconnects to.
    match within("ack", client.emit_with_ack("stopping", "e", "x")).await {
        Err(ClientError::Timeout { .. }) => {}
        other => panic!("expected no answer (Timeout), got {other:?}"),
    }
    assert_eq!(client.outbox_len(), 1);
    assert_eq!(client.emit_with_ack("open", "e", "y").await.unwrap(), 2);
    server.shutdown().await;
}
