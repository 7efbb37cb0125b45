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

    // A position the room never reached (an earlier life of the room).
    let (ahead, _a) = server.client().await;
    let joined = ahead.join_with("h", since(1_000)).await.unwrap();
    assert_eq!(
        joined.recovery,
        Recovery::NotRecovered {
            reason: RecoveryFailure::UnknownPosition
        }
    );
}
