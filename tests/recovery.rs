//! Joining from a position: replay from the room's history, then live, with
//! an explicit answer when the history does not reach back that far.

#![allow(clippy::unwrap_used)]

mod common;

use common::{next_event, within};
use quicbus::client::{JoinOptions, Recovery, RecoveryFailure};
use quicbus::server::{HistoryLimits, ServerConfig};

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

/// A backplane that refuses events for one room, to see a refusal travel
/// back to `emit_with_ack` as a typed `Rejected`.
struct Refusing(quicbus::server::MemoryBackplane);

impl quicbus::server::Backplane for Refusing {
    fn epoch(&self) -> u64 {
        self.0.epoch()
    }
    fn resolve(&self, name: &str) -> Result<u32, quicbus::server::BackplaneError> {
        self.0.resolve(name)
    }
    fn room_name(&self, room: u32) -> Option<std::sync::Arc<str>> {
        self.0.room_name(room)
    }
    fn subscribe(
        &self,
        room: u32,
        subscriber: std::sync::Arc<dyn quicbus::server::RoomSubscriber>,
        since: Option<u64>,
    ) -> quicbus::server::backplane::BoxFuture<
        '_,
        Result<quicbus::server::Subscribed, quicbus::server::BackplaneError>,
    > {
        self.0.subscribe(room, subscriber, since)
    }
    fn unsubscribe(&self, room: u32, session: u64) {
        self.0.unsubscribe(room, session)
    }
    fn publish(
        &self,
        room: u32,
        from: u64,
        event: String,
        payload: bytes::Bytes,
    ) -> quicbus::server::backplane::BoxFuture<'_, Result<u64, quicbus::server::BackplaneError>>
    {
        if self.0.room_name(room).as_deref() == Some("closed") {
            return Box::pin(std::future::ready(Err(
                quicbus::server::BackplaneError::ShuttingDown,
            )));
        }
        self.0.publish(room, from, event, payload)
    }
    fn publish_datagram(
        &self,
        room: u32,
        from: u64,
        event: String,
        payload: bytes::Bytes,
    ) -> Result<u64, quicbus::server::BackplaneError> {
        self.0.publish_datagram(room, from, event, payload)
    }
    fn close(&self) {
        self.0.close()
    }
}

#[tokio::test]
async fn a_refused_event_is_a_typed_rejection_of_its_ack() {
    use quicbus::client::ClientError;
    use quicbus::server::{MemoryBackplane, Server, ServerIdentity};
    let certs = quicbus::certs::generate(&[]).unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let backplane = std::sync::Arc::new(Refusing(MemoryBackplane::new(
        100,
        HistoryLimits::default(),
    )));
    let server = Server::with_backplane(
        config,
        ServerIdentity::from_dev_certs(&certs).unwrap(),
        backplane,
    )
    .unwrap()
    .spawn();
    let mut options = quicbus::client::ClientOptions::new(server.local_addr());
    options.trust = quicbus::client::Trust::CaPem(certs.ca_pem.clone());
    let (client, _e) = within("connect", quicbus::client::Client::connect(options))
        .await
        .unwrap();
    match within("ack", client.emit_with_ack("closed", "e", "x")).await {
        Err(ClientError::Rejected { code, reason }) => {
            assert_eq!(code, quicbus::wire::ErrorCode::ShuttingDown);
            assert!(reason.contains("shutting down"), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // The session keeps working for other rooms.
    assert_eq!(client.emit_with_ack("open", "e", "x").await.unwrap(), 1);
    server.shutdown().await;
}
