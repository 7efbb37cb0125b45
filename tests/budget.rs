//! The history budget across rooms (`ServerConfig::history_total_bytes`):
//! a real server keeps the total under it by dropping the oldest events of
//! the largest rooms, leaves small rooms alone, counts what it dropped, and
//! tells a client whose position it dropped why it cannot recover.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{next_event, within, TestServer};
use quicbus::client::{JoinOptions, Recovery, RecoveryFailure};
use quicbus::server::{Limit, ServerConfig, StatsSnapshot, Storage};

const BUDGET: u64 = 256 * 1024;
const PAYLOAD: usize = 4 * 1024;
const BIG_ROOMS: usize = 4;
const EVENTS: u64 = 40;

fn since(offset: u64) -> JoinOptions {
    JoinOptions {
        since: Some(offset),
        ..Default::default()
    }
}

/// A payload that says which room and event it is, padded to `PAYLOAD`.
fn payload(room: &str, n: u64) -> Vec<u8> {
    let mut bytes = format!("{room}/{n}/").into_bytes();
    bytes.resize(PAYLOAD, b'.');
    bytes
}

/// The server's stats once `done` holds for them; they are read into the
/// stats once a second, so this waits for the next reading (or fails
/// after the common timeout).
async fn stats_once(
    server: &TestServer,
    what: &str,
    done: impl Fn(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    within(what, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let stats = server.handle.stats();
            if done(&stats) {
                return stats;
            }
        }
    })
    .await
}

#[tokio::test]
async fn the_budget_holds_across_rooms_and_recovery_says_why_history_is_gone() {
    let server = common::start_with(ServerConfig {
        storage: Storage::Memory,
        history_total_bytes: BUDGET,
        ..ServerConfig::default()
    })
    .await;
    let (publisher, _p) = server.client().await;
    within("publishing", async {
        // A small room first: the budget must not take it.
        publisher
            .emit("small", "n", payload("small", 1))
            .await
            .unwrap();
        publisher
            .emit_with_ack("small", "n", payload("small", 2))
            .await
            .unwrap();
        // Then 4 rooms of 40 events of 4 KiB: 640 KiB for a 256 KiB budget.
        for n in 1..=EVENTS {
            for r in 0..BIG_ROOMS {
                let room = format!("big-{r}");
                publisher.emit(&room, "n", payload(&room, n)).await.unwrap();
            }
        }
        for r in 0..BIG_ROOMS {
            let room = format!("big-{r}");
            let last = publisher
                .emit_with_ack(&room, "end", payload(&room, EVENTS + 1))
                .await;
            assert_eq!(last.unwrap(), EVENTS + 1);
        }
    })
    .await;

    let stats = stats_once(&server, "the budget's drops in the stats", |s| {
        s.limit(Limit::HistoryBudget) > 0 && s.history_bytes > 0
    })
    .await;
    assert!(
        stats.history_bytes <= BUDGET,
        "{} kept",
        stats.history_bytes
    );
    let one_event = (PAYLOAD + 64) as u64;
    assert!(
        stats.history_bytes > BUDGET - one_event,
        "the budget is used, not emptied: {} kept",
        stats.history_bytes
    );
    let published = 2 + BIG_ROOMS as u64 * (EVENTS + 1);
    assert_eq!(stats.events_published, published);
    // Each big room keeps about a quarter of the budget, 15 of its 41 events.
    let kept_per_room = (stats.history_bytes - 2 * one_event) / one_event / BIG_ROOMS as u64;
    let dropped = stats.limit(Limit::HistoryBudget);
    assert!(
        dropped >= BIG_ROOMS as u64 * (EVENTS - kept_per_room - 1),
        "{dropped} events counted as dropped"
    );

    let (client, mut events) = server.client().await;
    // From the start of a big room: dropped for the budget, and told so.
    let joined = within("join", client.join_with("big-0", since(0)))
        .await
        .unwrap();
    let reason = RecoveryFailure::HistoryBudget;
    assert_eq!(joined.recovery, Recovery::NotRecovered { reason });
    assert_eq!(joined.offset, EVENTS + 1);
    assert_eq!(
        reason.to_string(),
        "history dropped to stay under the server's memory budget"
    );
    // The newest events of every big room are still there, in full.
    for r in 1..BIG_ROOMS {
        let room = format!("big-{r}");
        let joined = within("join", client.join_with(&room, since(EVENTS - 4)))
            .await
            .unwrap();
        assert_eq!(joined.recovery, Recovery::Recovered { replayed: 5 });
        for n in EVENTS - 3..=EVENTS + 1 {
            let e = next_event(&mut events, "replayed event").await;
            assert_eq!(&*e.room, room);
            assert_eq!(e.offset(), Some(n));
            assert_eq!(e.name, if n == EVENTS + 1 { "end" } else { "n" });
            assert_eq!(e.payload.as_ref(), payload(&room, n).as_slice());
        }
    }
    // The small room was never the largest: all of it is kept.
    let joined = within("join", client.join_with("small", since(0)))
        .await
        .unwrap();
    assert_eq!(joined.recovery, Recovery::Recovered { replayed: 2 });
    for n in 1..=2 {
        let e = next_event(&mut events, "replayed small event").await;
        assert_eq!(
            (&*e.room, e.offset(), e.name.as_str()),
            ("small", Some(n), "n")
        );
        assert_eq!(e.payload.as_ref(), payload("small", n).as_slice());
    }
    // Live delivery goes on after a recovery the budget refused.
    publisher
        .emit_with_ack("big-0", "live", payload("big-0", 99))
        .await
        .unwrap();
    let e = next_event(&mut events, "live event").await;
    assert_eq!(
        (&*e.room, e.offset(), e.name.as_str()),
        ("big-0", Some(EVENTS + 2), "live")
    );
    assert_eq!(e.payload.as_ref(), payload("big-0", 99).as_slice());
    server.handle.shutdown().await;
}
