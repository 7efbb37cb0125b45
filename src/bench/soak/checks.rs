//! What the crowd checks and counts: every reliable event a client
//! receives is checked for its room and name, its offset (strictly
//! increasing per room), and its payload, which carries the publisher, the
//! room and the publisher's sequence in that room (each exactly once and
//! in order). Connection notices are checked too: only a flaky client may
//! lose its connection, and it must resume and recover.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use quicbus::client::{Delivery, Event, Events, Incoming};
use quicbus::wire::{Recovery, ResumeOutcome};

/// Messages kept for the report, of each kind.
const SAMPLES: usize = 20;
/// Payload bytes of every event: publisher, room, sequence, padding.
const PAYLOAD: usize = 64;

/// What the crowd counted; every field of the report that is about it.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub errors: AtomicU64,
    pub error_samples: Mutex<Vec<String>>,
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    pub missing: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub datagrams_unsent: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub datagrams_lost: AtomicU64,
    pub joins: AtomicU64,
    pub rejoins: AtomicU64,
    pub replayed: AtomicU64,
    pub renewals: AtomicU64,
    /// Connections tried again: the connect storm at the start, and new
    /// sessions a busy server (or a dark path) turned away.
    pub connect_retries: AtomicU64,
    pub connect_retry_samples: Mutex<Vec<String>>,
    /// Operations of flaky clients tried again after their connection was
    /// lost under them.
    pub retries: AtomicU64,
    pub disconnects: AtomicU64,
    pub resumes: AtomicU64,
    pub outages: AtomicU64,
}

impl Tally {
    pub(super) fn connect_retry(&self, why: String) {
        self.connect_retries.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut samples) = self.connect_retry_samples.lock() {
            if samples.len() < SAMPLES {
                samples.push(why);
            }
        }
    }

    pub(super) fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut samples) = self.error_samples.lock() {
            if samples.len() < SAMPLES {
                samples.push(message);
            }
        }
    }
}

/// What one client has processed of one room.
#[derive(Debug, Default)]
pub(super) struct RoomSeen {
    /// The newest offset processed (at least the offset at the first join).
    pub last_offset: u64,
    /// Per publisher, the newest sequence processed.
    pub publishers: HashMap<u32, u64>,
}

/// One client's view, kept across its sessions.
#[derive(Default)]
pub(super) struct Seen {
    pub rooms: HashMap<u32, RoomSeen>,
}

pub(super) fn room_name(room: u32) -> String {
    format!("soak-{room}")
}

pub(super) fn room_index(name: &str) -> Option<u32> {
    name.strip_prefix("soak-")?.parse().ok()
}

/// `publisher ‖ room ‖ seq`, little-endian, padded to [`PAYLOAD`] bytes.
pub(super) fn payload(publisher: u32, room: u32, seq: u64) -> Bytes {
    let mut p = vec![0u8; PAYLOAD];
    p[..4].copy_from_slice(&publisher.to_le_bytes());
    p[4..8].copy_from_slice(&room.to_le_bytes());
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(p)
}

fn parse(p: &[u8]) -> Option<(u32, u32, u64)> {
    if p.len() != PAYLOAD {
        return None;
    }
    let publisher = u32::from_le_bytes(p.get(..4)?.try_into().ok()?);
    let room = u32::from_le_bytes(p.get(4..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(p.get(8..16)?.try_into().ok()?);
    Some((publisher, room, seq))
}

/// Checks one received reliable event against what `me` has seen.
pub(super) fn check_reliable(me: u32, event: &Event, offset: u64, seen: &mut Seen, tally: &Tally) {
    let Some(room) = room_index(&event.room) else {
        tally.error(format!("client {me}: event of unknown room {}", event.room));
        return;
    };
    let Some((publisher, payload_room, seq)) = parse(&event.payload) else {
        tally.error(format!("client {me}: damaged payload in {}", event.room));
        return;
    };
    if payload_room != room || event.name != "r" {
        tally.error(format!(
            "client {me}: event {} of room {payload_room} arrived in {} at {offset}",
            event.name, event.room
        ));
        return;
    }
    let r = seen.rooms.entry(room).or_default();
    if offset <= r.last_offset {
        tally.duplicates.fetch_add(1, Ordering::Relaxed);
        tally.error(format!(
            "client {me}: offset {offset} in {} after {}",
            event.room, r.last_offset
        ));
        return;
    }
    r.last_offset = offset;
    tally.delivered.fetch_add(1, Ordering::Relaxed);
    if publisher == me {
        return;
    }
    if let Some(prev) = r.publishers.get(&publisher).copied() {
        if seq <= prev {
            tally.out_of_order.fetch_add(1, Ordering::Relaxed);
            tally.error(format!(
                "client {me}: publisher {publisher}'s #{seq} in {} after #{prev}",
                event.room
            ));
            return;
        }
        if seq > prev + 1 {
            tally.missing.fetch_add(seq - prev - 1, Ordering::Relaxed);
            tally.error(format!(
                "client {me}: publisher {publisher}'s #{} to #{} in {} missing",
                prev + 1,
                seq - 1,
                event.room
            ));
        }
    }
    r.publishers.insert(publisher, seq);
}

/// Reads one session's events until the client closes.
pub(super) async fn receive(
    me: u32,
    flaky: bool,
    mut events: Events,
    seen: Arc<Mutex<Seen>>,
    tally: Arc<Tally>,
) {
    while let Some(incoming) = events.next_incoming().await {
        match incoming {
            Incoming::Event(event) => match event.delivery {
                Delivery::Reliable { offset } => {
                    if let Ok(mut seen) = seen.lock() {
                        check_reliable(me, &event, offset, &mut seen, &tally);
                    }
                }
                Delivery::Datagram { .. } => {
                    let ok = event.name == "d"
                        && parse(&event.payload)
                            .is_some_and(|(_, room, _)| room_index(&event.room) == Some(room));
                    if ok {
                        tally.datagrams_received.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.error(format!("client {me}: damaged datagram in {}", event.room));
                    }
                }
            },
            // Counted in the client's stats; delivery is what the soak judges.
            Incoming::ServerError { .. } => {}
            Incoming::TokenExpired { reason } => tally.error(format!("client {me}: {reason}")),
            Incoming::Forbidden { room, action } => {
                tally.error(format!("client {me}: forbidden to {action} in {room}"));
            }
            Incoming::Disconnected { reason } => {
                if flaky {
                    tally.disconnects.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.error(format!("client {me}: unexpected close: {reason}"));
                }
            }
            Incoming::Reconnected { resumed } => match resumed {
                ResumeOutcome::Resumed => {
                    tally.resumes.fetch_add(1, Ordering::Relaxed);
                }
                other => tally.error(format!(
                    "client {me}: reconnected without resume: {other:?}"
                )),
            },
            Incoming::Recovery { room, recovery } => match recovery {
                Recovery::Recovered { replayed } => {
                    tally.replayed.fetch_add(replayed, Ordering::Relaxed);
                }
                Recovery::Live => {}
                Recovery::NotRecovered { reason } => {
                    tally.error(format!("client {me}: {room} not recovered: {reason}"));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(room: &str, payload: Bytes, offset: u64) -> Event {
        Event {
            room: Arc::from(room),
            name: "r".into(),
            delivery: Delivery::Reliable { offset },
            payload,
        }
    }

    #[test]
    fn payload_round_trips() {
        let p = payload(7, 3, 42);
        assert_eq!(p.len(), PAYLOAD);
        assert_eq!(parse(&p), Some((7, 3, 42)));
        assert_eq!(parse(&p[..10]), None);
        assert_eq!(room_index("soak-12"), Some(12));
        assert_eq!(room_index("other"), None);
    }

    #[test]
    fn checks_catch_gaps_duplicates_and_wrong_rooms() {
        let tally = Tally::default();
        let mut seen = Seen::default();
        let ok = |seen: &mut Seen, seq, offset| {
            check_reliable(
                1,
                &event("soak-3", payload(2, 3, seq), offset),
                offset,
                seen,
                &tally,
            )
        };
        ok(&mut seen, 5, 10);
        ok(&mut seen, 6, 11);
        assert_eq!(tally.errors.load(Ordering::Relaxed), 0);
        ok(&mut seen, 6, 11); // the same offset again
        assert_eq!(tally.duplicates.load(Ordering::Relaxed), 1);
        ok(&mut seen, 9, 14); // #7 and #8 skipped
        assert_eq!(tally.missing.load(Ordering::Relaxed), 2);
        ok(&mut seen, 8, 15); // older sequence at a newer offset
        assert_eq!(tally.out_of_order.load(Ordering::Relaxed), 1);
        let wrong = event("soak-4", payload(2, 3, 10), 16);
        check_reliable(1, &wrong, 16, &mut seen, &tally);
        assert_eq!(tally.errors.load(Ordering::Relaxed), 4);
        assert_eq!(tally.delivered.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn own_events_do_not_count_as_another_publisher() {
        let tally = Tally::default();
        let mut seen = Seen::default();
        check_reliable(
            2,
            &event("soak-3", payload(2, 3, 1), 1),
            1,
            &mut seen,
            &tally,
        );
        check_reliable(
            2,
            &event("soak-3", payload(2, 3, 5), 2),
            2,
            &mut seen,
            &tally,
        );
        assert_eq!(tally.errors.load(Ordering::Relaxed), 0);
    }
}
