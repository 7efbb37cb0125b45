//! Room history: the bounded, replayable record of a room's reliable events.
//!
//! Two small traits make the seam. A [`HistoryStore`] holds the history of
//! every room of a server (and the epoch that names it); a [`RoomHistory`]
//! is one room's log: append, replay from a position, trim to the bounds,
//! stats. Two implementations sit behind them:
//!
//! - `memory` — the events in RAM; gone with the process (a new epoch on
//!   every start).
//! - `disk` — a segmented append-only log per room under a data directory,
//!   with a checksum per record; the epoch is stored with the data, so a
//!   restart on the same directory keeps every room's history and offsets.
//!
//! Both are run through one shared test suite (`tests` below). Time is an
//! argument (milliseconds since the Unix epoch), so the logic is tested
//! without clocks.
//!
//! Each room has its own [`HistoryLimits`], those of its namespace (the
//! first token of its name) or the store's default: a [`RoomLimits`] says
//! which. A room's limits are resolved once, when the store first knows
//! the room; a disk store reopened with other limits applies the new ones
//! (at once to replays and stats, and to its files on the next trim).
//!
//! Besides each room's limits, a store may have a budget across
//! all its rooms (`with_budget`, see `budget`): over it, the oldest events
//! of the largest rooms go first. What a room has lost to the budget is
//! told apart from what its own bounds dropped ([`Gap::Budget`]), so that a
//! client learns the server ran short, not that it was away too long.
//!
//! Offsets are opaque and may be sparse: coverage is never computed as
//! "offset + 1". A position `since` is covered exactly when no event after
//! it has been dropped, by the bounds, the budget or damage.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::auth::namespace_of;

mod budget;
mod disk;
mod memory;

pub use budget::HistoryUsage;
pub use disk::{DiskOptions, DiskStore, FsyncPolicy};
pub use memory::MemoryStore;

/// How much history each room keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Most events kept per room (0: none, only the newest offset).
    pub max_events: usize,
    /// Events older than this are dropped.
    pub max_age: Duration,
    /// Most bytes (of encoded frames) kept per room; the newest event is
    /// always kept, whatever its size.
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_events: 10_000,
            max_age: Duration::from_secs(120),
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Which [`HistoryLimits`] each room gets: those of its namespace if it
/// has its own, else the default.
#[derive(Debug, Clone)]
pub struct RoomLimits {
    default: HistoryLimits,
    namespaces: HashMap<String, HistoryLimits>,
}

impl RoomLimits {
    /// `namespaces` maps a namespace (`game`, for `game.lobby.1`) to its
    /// rooms' limits; every other room gets `default`.
    pub fn new(default: HistoryLimits, namespaces: HashMap<String, HistoryLimits>) -> Self {
        RoomLimits {
            default,
            namespaces,
        }
    }

    /// The limits of room `room`.
    pub fn for_room(&self, room: &str) -> HistoryLimits {
        self.namespaces
            .get(namespace_of(room))
            .copied()
            .unwrap_or(self.default)
    }
}

/// The same limits for every room.
impl From<HistoryLimits> for RoomLimits {
    fn from(limits: HistoryLimits) -> Self {
        RoomLimits::new(limits, HashMap::new())
    }
}

/// Who published an event: the session's key and the publish id the client
/// gave it (`Publish.id`). Stored with the event, so that after a restart a
/// resumed session's retried publish is found and answered, not published
/// twice. `session == 0` means unknown (a datagram copy, a test).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Publisher {
    pub session: u64,
    pub id: u64,
}

/// One reliable event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The room's offset of this event; greater than every earlier one.
    pub offset: u64,
    /// When it was published, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub publisher: Publisher,
    /// The length-prefixed `Event` frame that fan-out sends.
    pub frame: Bytes,
}

/// Why a position cannot be replayed from history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// Events after the position have been dropped (bounds, or damage found
    /// on disk).
    TooShort,
    /// Events after the position have been dropped to keep the store under
    /// its budget across rooms, where the room's own bounds would have kept
    /// them.
    Budget,
    /// The position is beyond the room's newest offset: it belongs to an
    /// earlier life of the room (evicted from a memory store and named
    /// again, or another data directory).
    UnknownPosition,
}

/// A storage failure. The event concerned was not stored (and must not be
/// acknowledged or delivered).
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading or writing the data directory failed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data directory holds something this version cannot read.
    #[error("{path}: {reason}")]
    Format {
        path: std::path::PathBuf,
        reason: String,
    },
    /// Another process has the data directory open.
    #[error("{path} is in use by another process (another quicbus serve?)")]
    InUse { path: std::path::PathBuf },
}

/// What a room's history holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryStats {
    /// Events that a replay could still return.
    pub events: u64,
    /// Their bytes (encoded frames).
    pub bytes: u64,
    /// When the oldest of them was published (ms since the Unix epoch).
    pub oldest_ms: Option<u64>,
}

/// The events after a position, read in batches (from disk, a few hundred
/// KiB at a time), so a replay of a million events never sits in memory.
pub trait ReplaySource: Send {
    /// The next frames, oldest first, at most about `max_bytes` of them (at
    /// least one frame if any is left); empty once the replay is complete.
    fn next_batch(&mut self, max_bytes: usize) -> Result<Vec<Bytes>, HistoryError>;
}

/// A replay: how many events it holds, and where to read them.
pub struct Replay {
    /// Exactly how many frames `source` yields.
    pub count: u64,
    pub source: Box<dyn ReplaySource>,
}

impl Replay {
    /// A replay of frames already read (oldest first).
    pub fn from_frames(frames: Vec<Bytes>) -> Replay {
        Replay {
            count: frames.len() as u64,
            source: Box::new(memory::MemoryReplay {
                frames: frames.into(),
            }),
        }
    }
}

/// One room's history.
pub trait RoomHistory: Send {
    /// The newest offset ever appended (0 if none); survives trimming, and
    /// for a durable store, restarts.
    fn last_offset(&self) -> u64;
    /// Appends the room's newest event (its offset is above every earlier
    /// one). For a durable store, the record has been handed to the OS
    /// (the write returned) when this returns: a crash of the process does
    /// not lose it.
    fn append(&mut self, record: Record) -> Result<(), HistoryError>;
    /// Every event after `since`, at `now_ms`: its count and a source that
    /// reads them. Events appended after this call are not part of it (they
    /// reach a subscriber live), and trimming after it does not shorten it.
    fn replay(&mut self, since: u64, now_ms: u64) -> Result<Result<Replay, Gap>, HistoryError>;
    /// Applies the bounds at `now_ms` (called by the background trimmer and
    /// on appends).
    fn trim(&mut self, now_ms: u64);
    /// What is held now (after trimming at `now_ms`).
    fn stats(&mut self, now_ms: u64) -> HistoryStats;
    /// The publishes of session `session` still on record, as
    /// `(publish id, offset)`, oldest first: what a session resumed after a
    /// restart had published, for answering its retried publishes.
    fn publishes_of(&mut self, session: u64) -> Result<Vec<(u64, u64)>, HistoryError>;
}

/// The history of every room of a server.
pub trait HistoryStore: Send + Sync {
    /// Names this history: a client's offsets are meaningful only within
    /// one epoch. A memory store gets a new one on every start; a disk
    /// store keeps it with its data.
    fn epoch(&self) -> u64;
    /// Opens the history of room `name`, creating it if there is none. A
    /// room opened again after its handle was dropped continues where it
    /// was in a durable store; in a memory store its events are gone but its
    /// offsets go on above the old ones.
    fn open_room(&self, name: &str) -> Result<Box<dyn RoomHistory>, HistoryError>;
    /// Applies the bounds at `now_ms` to rooms that are not open (a durable
    /// store's rooms nobody has named since the start), and makes what was
    /// written durable if the fsync policy says so. Called periodically.
    fn maintain(&self, now_ms: u64);
    /// Makes everything written so far durable, whatever the fsync policy
    /// (a graceful stop calls it). Nothing to do for a memory store.
    fn sync(&self) {}
    /// The bytes kept across all rooms, and the events dropped so far to
    /// keep them under the store's budget.
    fn usage(&self) -> HistoryUsage;
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The behaviour both stores must share, run against each of them.
#[cfg(test)]
mod tests {
    use super::*;

    /// A store under test, and the directory it needs kept alive.
    pub struct TestStore {
        pub store: Box<dyn HistoryStore>,
        pub _dir: Option<tempfile::TempDir>,
    }

    pub type MakeStore = dyn Fn(RoomLimits) -> TestStore;

    fn memory(limits: RoomLimits) -> TestStore {
        TestStore {
            store: Box::new(MemoryStore::new(limits)),
            _dir: None,
        }
    }

    fn disk(limits: RoomLimits) -> TestStore {
        disk_with(limits, DiskOptions::default())
    }

    /// Segments of a few records each, so bounds fall inside and across them.
    fn disk_small_segments(limits: RoomLimits) -> TestStore {
        let options = DiskOptions {
            segment_bytes: 200,
            max_open_files: 2,
            fsync: FsyncPolicy::Never,
        };
        disk_with(limits, options)
    }

    /// Each store with a budget across rooms of `hundredths` of a
    /// 100-byte event (`u64::MAX`: none), and what such an event costs the
    /// budget (its frame and the store's overhead per event). The disk
    /// store's segments hold one such event each, so that it sheds event
    /// by event like the memory store (its default 16 MiB segments shed
    /// 16 MiB at a time).
    pub type MakeBudgeted = dyn Fn(HistoryLimits, u64) -> (TestStore, u64);

    fn budget_of(hundredths: u64, cost: u64) -> u64 {
        hundredths.checked_mul(cost).map_or(u64::MAX, |b| b / 100)
    }

    fn memory_budgeted(limits: HistoryLimits, hundredths: u64) -> (TestStore, u64) {
        let cost = 100 + super::memory::EVENT_OVERHEAD;
        let store = MemoryStore::new(limits).with_budget(budget_of(hundredths, cost));
        let t = TestStore {
            store: Box::new(store),
            _dir: None,
        };
        (t, cost)
    }

    fn disk_budgeted(limits: HistoryLimits, hundredths: u64) -> (TestStore, u64) {
        let cost = 100 + super::disk::RECORD_OVERHEAD;
        let options = DiskOptions {
            segment_bytes: 200,
            max_open_files: 2,
            fsync: FsyncPolicy::Never,
        };
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), limits, options).unwrap();
        let t = TestStore {
            store: Box::new(store.with_budget(budget_of(hundredths, cost))),
            _dir: Some(dir),
        };
        (t, cost)
    }

    fn disk_with(limits: RoomLimits, options: DiskOptions) -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        TestStore {
            store: Box::new(DiskStore::open(dir.path(), limits, options).unwrap()),
            _dir: Some(dir),
        }
    }

    /// A plausible wall-clock time, in ms.
    pub const T0: u64 = 1_700_000_000_000;

    pub fn limits(max_events: usize, max_age_s: u64, max_bytes: usize) -> HistoryLimits {
        HistoryLimits {
            max_events,
            max_age: Duration::from_secs(max_age_s),
            max_bytes,
        }
    }

    /// `default` for every room, but for those of the namespaces named.
    pub fn per_namespace(
        default: HistoryLimits,
        namespaces: &[(&str, HistoryLimits)],
    ) -> RoomLimits {
        let namespaces = namespaces.iter().map(|&(name, l)| (name.to_owned(), l));
        RoomLimits::new(default, namespaces.collect())
    }

    /// A frame of `len` bytes (at least 8) that starts with its offset.
    pub fn frame_of(offset: u64, len: usize) -> Bytes {
        let mut frame = offset.to_be_bytes().to_vec();
        frame.resize(len.max(8), offset as u8);
        Bytes::from(frame)
    }

    pub fn record(offset: u64, at_ms: u64) -> Record {
        Record {
            offset,
            at_ms,
            publisher: Publisher::default(),
            frame: frame_of(offset, 8),
        }
    }

    pub fn offset_of(frame: &Bytes) -> u64 {
        u64::from_be_bytes(frame[..8].try_into().unwrap())
    }

    /// Every frame of a replay, checking that its count is right.
    pub fn drain(mut replay: Replay) -> Vec<Bytes> {
        let mut frames = Vec::new();
        loop {
            let batch = replay.source.next_batch(64 * 1024).unwrap();
            if batch.is_empty() {
                break;
            }
            frames.extend(batch);
        }
        assert_eq!(frames.len() as u64, replay.count, "replay count");
        frames
    }

    /// The offsets a replay from `since` returns at `now`, or its gap.
    pub fn replayed(room: &mut dyn RoomHistory, since: u64, now: u64) -> Result<Vec<u64>, Gap> {
        let replay = room.replay(since, now).unwrap()?;
        Ok(drain(replay).iter().map(offset_of).collect())
    }

    pub fn append_all(room: &mut dyn RoomHistory, offsets: impl IntoIterator<Item = u64>, at: u64) {
        for o in offsets {
            room.append(record(o, at)).unwrap();
        }
    }

    fn replays_exactly_what_follows_a_position(make: &MakeStore) {
        let t = make(limits(100, 60, 1 << 20).into());
        let mut room = t.store.open_room("r").unwrap();
        assert_eq!(room.last_offset(), 0);
        assert_eq!(replayed(&mut *room, 0, T0), Ok(vec![]), "empty room");
        append_all(&mut *room, 1..=10, T0);
        assert_eq!(room.last_offset(), 10);
        assert_eq!(replayed(&mut *room, 7, T0), Ok(vec![8, 9, 10]));
        assert_eq!(replayed(&mut *room, 0, T0), Ok((1..=10).collect()));
        assert_eq!(replayed(&mut *room, 10, T0), Ok(vec![]), "up to date");
        assert_eq!(replayed(&mut *room, 11, T0), Err(Gap::UnknownPosition));
    }

    fn count_bound_drops_the_oldest_and_reports_gaps(make: &MakeStore) {
        let t = make(limits(3, 60, 1 << 20).into());
        let mut room = t.store.open_room("r").unwrap();
        append_all(&mut *room, 1..=5, T0);
        assert_eq!(replayed(&mut *room, 2, T0), Ok(vec![3, 4, 5]));
        assert_eq!(replayed(&mut *room, 1, T0), Err(Gap::TooShort));
        assert_eq!(replayed(&mut *room, 0, T0), Err(Gap::TooShort));
    }

    fn age_bound_drops_old_events_at_read_time(make: &MakeStore) {
        let t = make(limits(100, 10, 1 << 20).into());
        let mut room = t.store.open_room("r").unwrap();
        room.append(record(1, T0)).unwrap();
        room.append(record(2, T0 + 5_000)).unwrap();
        assert_eq!(
            replayed(&mut *room, 0, T0 + 10_000),
            Ok(vec![1, 2]),
            "exactly max_age old is kept"
        );
        assert_eq!(replayed(&mut *room, 0, T0 + 12_000), Err(Gap::TooShort));
        assert_eq!(replayed(&mut *room, 1, T0 + 12_000), Ok(vec![2]));
        room.trim(T0 + 30_000);
        assert_eq!(room.stats(T0 + 30_000), HistoryStats::default());
        assert_eq!(replayed(&mut *room, 2, T0 + 30_000), Ok(vec![]));
        assert_eq!(replayed(&mut *room, 1, T0 + 30_000), Err(Gap::TooShort));
        assert_eq!(room.last_offset(), 2, "trimming keeps the last offset");
    }

    fn byte_bound_keeps_at_least_the_newest_event(make: &MakeStore) {
        let t = make(limits(100, 60, 20).into());
        let mut room = t.store.open_room("r").unwrap();
        append_all(&mut *room, 1..=4, T0); // 8 bytes each
        assert_eq!(replayed(&mut *room, 2, T0), Ok(vec![3, 4]));
        assert_eq!(replayed(&mut *room, 1, T0), Err(Gap::TooShort));
        let big = Record {
            frame: frame_of(5, 100),
            ..record(5, T0)
        };
        room.append(big.clone()).unwrap();
        assert_eq!(replayed(&mut *room, 3, T0), Err(Gap::TooShort));
        let replay = room.replay(4, T0).unwrap().unwrap();
        assert_eq!(drain(replay), vec![big.frame]);
        let stats = room.stats(T0);
        assert_eq!((stats.events, stats.bytes), (1, 100));
    }

    fn sparse_offsets_are_handled_without_arithmetic(make: &MakeStore) {
        let t = make(limits(2, 60, 1 << 20).into());
        let mut room = t.store.open_room("r").unwrap();
        append_all(&mut *room, [10, 20, 30, 40], T0);
        // 20 was dropped: a client at 20 has it already and misses nothing.
        assert_eq!(replayed(&mut *room, 20, T0), Ok(vec![30, 40]));
        assert_eq!(replayed(&mut *room, 25, T0), Ok(vec![30, 40]));
        assert_eq!(replayed(&mut *room, 35, T0), Ok(vec![40]));
        assert_eq!(replayed(&mut *room, 15, T0), Err(Gap::TooShort));
        assert_eq!(replayed(&mut *room, 41, T0), Err(Gap::UnknownPosition));
    }

    fn zero_history_keeps_nothing_but_knows_the_position(make: &MakeStore) {
        let t = make(limits(0, 60, 1 << 20).into());
        let mut room = t.store.open_room("r").unwrap();
        room.append(record(1, T0)).unwrap();
        assert_eq!(replayed(&mut *room, 1, T0), Ok(vec![]));
        assert_eq!(replayed(&mut *room, 0, T0), Err(Gap::TooShort));
        room.append(record(2, T0)).unwrap();
        assert_eq!(room.last_offset(), 2);
        assert_eq!(replayed(&mut *room, 1, T0), Err(Gap::TooShort));
        assert_eq!(room.stats(T0), HistoryStats::default());
    }

    fn trim_during_a_replay_does_not_shorten_it(make: &MakeStore) {
        let t = make(limits(100, 10, 1 << 20).into());
        let mut room = t.store.open_room("r").unwrap();
        for o in 1..=50 {
            let frame = frame_of(o, 40);
            room.append(Record {
                frame,
                ..record(o, T0)
            })
            .unwrap();
        }
        let mut replay = room.replay(0, T0).unwrap().unwrap();
        assert_eq!(replay.count, 50);
        let first = replay.source.next_batch(1).unwrap();
        assert_eq!(first.iter().map(offset_of).collect::<Vec<_>>(), vec![1]);
        let later = T0 + 60_000;
        room.trim(later);
        t.store.maintain(later);
        assert_eq!(room.stats(later).events, 0);
        assert_eq!(replayed(&mut *room, 0, later), Err(Gap::TooShort));
        let rest = drain(Replay {
            count: 49,
            ..replay
        });
        assert_eq!(
            rest.iter().map(offset_of).collect::<Vec<_>>(),
            (2..=50).collect::<Vec<_>>()
        );
    }

    fn events_appended_after_replay_are_not_in_it(make: &MakeStore) {
        let t = make(limits(100, 60, 1 << 20).into());
        let mut room = t.store.open_room("r").unwrap();
        append_all(&mut *room, 1..=5, T0);
        let replay = room.replay(2, T0).unwrap().unwrap();
        append_all(&mut *room, 6..=7, T0);
        assert_eq!(
            drain(replay).iter().map(offset_of).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(replayed(&mut *room, 2, T0), Ok((3..=7).collect()));
    }

    fn batches_hold_about_max_bytes_and_at_least_one_frame(make: &MakeStore) {
        let t = make(limits(100, 60, 1 << 20).into());
        let mut room = t.store.open_room("r").unwrap();
        append_all(&mut *room, 1..=10, T0); // 8 bytes each
        let mut replay = room.replay(0, T0).unwrap().unwrap();
        let mut sizes = Vec::new();
        for max_bytes in [20, 0, 1000, 1000] {
            sizes.push(replay.source.next_batch(max_bytes).unwrap().len());
        }
        assert_eq!(sizes, vec![2, 1, 7, 0]);
    }

    fn publishes_of_returns_a_sessions_publishes_oldest_first(make: &MakeStore) {
        let t = make(limits(100, 60, 1 << 20).into());
        let mut room = t.store.open_room("r").unwrap();
        for o in 1..=6 {
            let publisher = Publisher {
                session: if o % 2 == 0 { 7 } else { 8 },
                id: 100 + o,
            };
            room.append(Record {
                publisher,
                ..record(o, T0)
            })
            .unwrap();
        }
        assert_eq!(
            room.publishes_of(7).unwrap(),
            vec![(102, 2), (104, 4), (106, 6)]
        );
        assert_eq!(
            room.publishes_of(8).unwrap(),
            vec![(101, 1), (103, 3), (105, 5)]
        );
        assert_eq!(room.publishes_of(9).unwrap(), vec![]);
    }

    fn stats_count_what_a_replay_could_return(make: &MakeStore) {
        let t = make(limits(3, 60, 1 << 20).into());
        let mut room = t.store.open_room("r").unwrap();
        for o in 0..5 {
            room.append(record(o + 1, T0 + o * 1_000)).unwrap();
        }
        let at = |s: u64| T0 + s * 1_000;
        assert_eq!(
            room.stats(at(4)),
            HistoryStats {
                events: 3,
                bytes: 24,
                oldest_ms: Some(at(2)),
            }
        );
        assert_eq!(
            room.stats(at(63)),
            HistoryStats {
                events: 2,
                bytes: 16,
                oldest_ms: Some(at(3)),
            }
        );
    }

    fn rooms_are_independent(make: &MakeStore) {
        let t = make(limits(100, 60, 1 << 20).into());
        let long = "é".repeat(127); // 254 bytes
        let names = ["a", "b", long.as_str()];
        let mut rooms: Vec<_> = names
            .iter()
            .map(|n| t.store.open_room(n).unwrap())
            .collect();
        let frame = |room: usize, o: u64| Bytes::from(format!("{}:{o}", names[room]));
        for o in 1..=5u64 {
            for (i, room) in rooms.iter_mut().enumerate() {
                let offset = o * (i as u64 + 1);
                room.append(Record {
                    frame: frame(i, offset),
                    ..record(offset, T0)
                })
                .unwrap();
            }
        }
        for (i, room) in rooms.iter_mut().enumerate() {
            let step = i as u64 + 1;
            assert_eq!(room.last_offset(), 5 * step);
            let replay = room.replay(0, T0).unwrap().unwrap();
            let expected: Vec<_> = (1..=5).map(|o| frame(i, o * step)).collect();
            assert_eq!(drain(replay), expected, "room {}", names[i]);
        }
    }

    fn times_going_back_do_not_hide_old_events(make: &MakeStore) {
        let t = make(limits(100, 10, 1 << 20).into());
        let mut room = t.store.open_room("r").unwrap();
        room.append(record(1, T0 + 10_000)).unwrap();
        room.append(record(2, T0)).unwrap(); // the clock stepped back
        assert_eq!(room.stats(T0 + 15_000).oldest_ms, Some(T0 + 10_000));
        assert_eq!(replayed(&mut *room, 1, T0 + 21_000), Err(Gap::TooShort));
    }

    fn each_namespace_keeps_its_own_count(make: &MakeStore) {
        let t = make(per_namespace(
            limits(100, 60, 1 << 20),
            &[("a", limits(3, 60, 1 << 20)), ("b", limits(5, 60, 1 << 20))],
        ));
        // "a" is in namespace a; "ab.x" is not, nor is "x.a".
        let rooms = [("a.x", 3), ("b.x", 5), ("a", 3), ("ab.x", 8), ("x.a", 8)];
        let mut open: Vec<_> = (rooms.iter())
            .map(|(name, _)| t.store.open_room(name).unwrap())
            .collect();
        for o in 1..=8 {
            for room in &mut open {
                room.append(record(o, T0)).unwrap();
            }
        }
        for ((name, kept), room) in rooms.iter().zip(&mut open) {
            assert_eq!(room.last_offset(), 8, "{name}");
            assert_eq!(room.stats(T0).events, *kept, "{name}");
            let oldest = 8 - kept;
            assert_eq!(
                replayed(&mut **room, oldest, T0),
                Ok((oldest + 1..=8).collect()),
                "{name}"
            );
            if oldest > 0 {
                let gap = replayed(&mut **room, oldest - 1, T0);
                assert_eq!(gap, Err(Gap::TooShort), "{name}");
            }
        }
    }

    fn a_namespace_without_history_keeps_only_the_newest_offset(make: &MakeStore) {
        let t = make(per_namespace(
            limits(100, 60, 1 << 20),
            &[("live", limits(0, 60, 1 << 20))],
        ));
        let mut live = t.store.open_room("live.feed").unwrap();
        let mut kept = t.store.open_room("chat.feed").unwrap();
        append_all(&mut *live, 1..=3, T0);
        append_all(&mut *kept, 1..=3, T0);
        assert_eq!(live.last_offset(), 3);
        assert_eq!(replayed(&mut *live, 3, T0), Ok(vec![]), "up to date");
        assert_eq!(replayed(&mut *live, 2, T0), Err(Gap::TooShort));
        assert_eq!(replayed(&mut *live, 0, T0), Err(Gap::TooShort));
        assert_eq!(live.stats(T0), HistoryStats::default());
        assert_eq!(replayed(&mut *kept, 0, T0), Ok(vec![1, 2, 3]));
        // A client up to date at 3 misses 4: told so, not served it.
        append_all(&mut *live, 4..=4, T0);
        assert_eq!(replayed(&mut *live, 3, T0), Err(Gap::TooShort));
        // Opened again, the room still knows where it is.
        drop(live);
        let mut again = t.store.open_room("live.feed").unwrap();
        assert_eq!(again.last_offset(), 4);
        assert_eq!(replayed(&mut *again, 4, T0), Ok(vec![]));
        assert_eq!(replayed(&mut *again, 3, T0), Err(Gap::TooShort));
    }

    /// Trimming as the server does it: each open room, then the store.
    fn a_short_max_age_in_one_namespace_trims_only_its_rooms(make: &MakeStore) {
        let t = make(per_namespace(
            limits(100, 3600, 1 << 20),
            &[("fast", limits(100, 10, 1 << 20))],
        ));
        let mut slow = t.store.open_room("slow.x").unwrap();
        append_100(&mut *slow, 1..=5, T0);
        let slow_only = t.store.usage().bytes;
        let mut fast = t.store.open_room("fast.x").unwrap();
        append_100(&mut *fast, 1..=5, T0);
        let before = t.store.usage().bytes;
        assert_eq!(before, 2 * slow_only);
        let later = T0 + 60_000;
        for room in [&mut fast, &mut slow] {
            room.trim(later);
        }
        t.store.maintain(later);
        let after = t.store.usage().bytes;
        assert!(
            (slow_only..before).contains(&after),
            "{after} bytes kept, {slow_only} in the slow room, {before} before"
        );
        assert_eq!(replayed(&mut *fast, 0, later), Err(Gap::TooShort));
        assert_eq!(replayed(&mut *fast, 5, later), Ok(vec![]));
        assert_eq!(fast.stats(later), HistoryStats::default());
        assert_eq!(fast.last_offset(), 5);
        assert_eq!(replayed(&mut *slow, 0, later), Ok((1..=5).collect()));
        let stats = slow.stats(later);
        assert_eq!((stats.events, stats.bytes), (5, 500));
    }

    /// Appends `offsets` to `room`, each a frame of 100 bytes.
    fn append_100(room: &mut dyn RoomHistory, offsets: impl IntoIterator<Item = u64>, at: u64) {
        for o in offsets {
            let frame = frame_of(o, 100);
            room.append(Record {
                frame,
                ..record(o, at)
            })
            .unwrap();
        }
    }

    fn budget_drops_the_oldest_events_of_the_largest_room_first(make: &MakeBudgeted) {
        let (t, cost) = make(limits(100, 60, 1 << 20), 1_000);
        let mut big = t.store.open_room("big").unwrap();
        let mut small = t.store.open_room("small").unwrap();
        append_100(&mut *big, 1..=6, T0);
        append_100(&mut *small, 1..=3, T0);
        append_100(&mut *big, 7..=7, T0);
        let usage = t.store.usage();
        assert_eq!(
            (usage.bytes, usage.budget_drops),
            (10 * cost, 0),
            "at the budget"
        );
        append_100(&mut *big, 8..=8, T0);
        assert_eq!(replayed(&mut *big, 0, T0), Err(Gap::Budget));
        assert_eq!(replayed(&mut *big, 1, T0), Ok((2..=8).collect()));
        assert_eq!(replayed(&mut *small, 0, T0), Ok(vec![1, 2, 3]));
        // The small room grows: the big one gives way until they are even,
        // then the one that is larger after each append.
        append_100(&mut *small, 4..=8, T0);
        assert_eq!(replayed(&mut *big, 3, T0), Ok((4..=8).collect()));
        assert_eq!(replayed(&mut *big, 2, T0), Err(Gap::Budget));
        assert_eq!(replayed(&mut *small, 3, T0), Ok((4..=8).collect()));
        assert_eq!(replayed(&mut *small, 0, T0), Err(Gap::Budget));
        assert_eq!(replayed(&mut *small, 9, T0), Err(Gap::UnknownPosition));
        assert_eq!((big.last_offset(), small.last_offset()), (8, 8));
        let usage = t.store.usage();
        assert_eq!((usage.bytes, usage.budget_drops), (10 * cost, 6));
        let (b, s) = (big.stats(T0), small.stats(T0));
        assert_eq!((b.events, b.bytes, s.events, s.bytes), (5, 500, 5, 500));
    }

    fn budget_gaps_are_told_apart_from_the_rooms_own_bounds(make: &MakeBudgeted) {
        let (t, _) = make(limits(100, 10, 1 << 20), 350);
        let mut room = t.store.open_room("r").unwrap();
        append_100(&mut *room, 1..=3, T0);
        append_100(&mut *room, 4..=4, T0 + 5_000);
        assert_eq!(replayed(&mut *room, 0, T0 + 5_000), Err(Gap::Budget));
        assert_eq!(replayed(&mut *room, 1, T0 + 5_000), Ok(vec![2, 3, 4]));
        // Later the age bound would have dropped event 1 anyway: its own
        // bounds, not the budget, are why the history is short now.
        assert_eq!(replayed(&mut *room, 0, T0 + 12_000), Err(Gap::TooShort));
        assert_eq!(replayed(&mut *room, 1, T0 + 12_000), Err(Gap::TooShort));
        assert_eq!(replayed(&mut *room, 3, T0 + 12_000), Ok(vec![4]));
        room.trim(T0 + 12_000);
        assert_eq!(replayed(&mut *room, 0, T0 + 12_000), Err(Gap::TooShort));
        assert_eq!(t.store.usage().budget_drops, 1);
    }

    fn without_a_budget_nothing_is_dropped_across_rooms(make: &MakeBudgeted) {
        let (t, cost) = make(limits(100, 60, 1 << 20), u64::MAX);
        let mut rooms: Vec<_> = (0..5)
            .map(|i| t.store.open_room(&format!("r{i}")).unwrap())
            .collect();
        for room in &mut rooms {
            append_100(&mut **room, 1..=10, T0);
        }
        for room in &mut rooms {
            assert_eq!(replayed(&mut **room, 0, T0), Ok((1..=10).collect()));
        }
        let usage = t.store.usage();
        assert_eq!((usage.bytes, usage.budget_drops), (50 * cost, 0));
    }

    /// Random appends, trims and replays give the same answers from every
    /// store as from the memory store.
    fn answers_match_the_memory_store(make: &MakeStore) {
        for seed in 1..=4 {
            compare_with_memory(make, seed, 300, 40, 20, 3_000);
        }
    }

    /// The same with bounds that fall far inside long segments (between
    /// the points of a disk segment's sparse index).
    fn answers_match_the_memory_store_in_long_histories(make: &MakeStore) {
        for seed in 5..=7 {
            compare_with_memory(make, seed, 1_000, 1_000, 1_000, 30);
        }
    }

    /// Runs `steps` random steps on a store made by `make` and on a memory
    /// store, with frames up to `frame` bytes, up to `events` events kept
    /// and up to `pause` ms between a query and the next step, and checks
    /// that every replay and stats agree.
    fn compare_with_memory(
        make: &MakeStore,
        seed: u64,
        steps: usize,
        frame: u64,
        events: u64,
        pause: u64,
    ) {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let max_bytes = (events * frame / 2 + next(events * frame)) as usize;
        let bounds = limits(1 + next(events) as usize, 5 + next(20), max_bytes);
        let (t, reference) = (make(bounds.into()), memory(bounds.into()));
        let mut room = t.store.open_room("r").unwrap();
        let mut model = reference.store.open_room("r").unwrap();
        let (mut offset, mut now) = (0, T0);
        for step in 0..steps {
            match next(20) {
                0..=15 => {
                    offset += 1 + next(3);
                    now += next(30);
                    let r = Record {
                        frame: frame_of(offset, 8 + next(frame) as usize),
                        ..record(offset, now)
                    };
                    room.append(r.clone()).unwrap();
                    model.append(r).unwrap();
                }
                16 => {
                    room.trim(now);
                    model.trim(now);
                    t.store.maintain(now);
                }
                _ => {
                    let since = next(offset + 3);
                    let at = now + next(pause);
                    let context = format!("seed {seed} step {step} since {since} {bounds:?}");
                    let want = replayed(&mut *model, since, at);
                    assert_eq!(replayed(&mut *room, since, at), want, "{context}");
                    assert_eq!(room.stats(at), model.stats(at), "{context}");
                    now = at;
                }
            }
        }
    }

    macro_rules! behaviour_tests {
        ($($store:ident: [$($test:ident),* $(,)?]),* $(,)?) => {$(
            mod $store {
                $(#[test]
                fn $test() {
                    super::$test(&super::$store)
                })*
            }
        )*};
    }

    macro_rules! for_every_store {
        ($($test:ident),* $(,)?) => {
            behaviour_tests! {
                memory: [$($test),*],
                disk: [$($test),*],
                disk_small_segments: [$($test),*],
            }
        };
    }

    /// The stores where trimming a few events frees their bytes: a disk
    /// store deletes whole segments and keeps a room's newest one, so with
    /// its default 16 MiB segments trimming five events deletes nothing.
    mod trimming_frees_bytes {
        use super::*;

        behaviour_tests! {
            memory: [a_short_max_age_in_one_namespace_trims_only_its_rooms],
            disk_small_segments: [a_short_max_age_in_one_namespace_trims_only_its_rooms],
        }
    }

    behaviour_tests! {
        memory_budgeted: [
            budget_drops_the_oldest_events_of_the_largest_room_first,
            budget_gaps_are_told_apart_from_the_rooms_own_bounds,
            without_a_budget_nothing_is_dropped_across_rooms,
        ],
        disk_budgeted: [
            budget_drops_the_oldest_events_of_the_largest_room_first,
            budget_gaps_are_told_apart_from_the_rooms_own_bounds,
            without_a_budget_nothing_is_dropped_across_rooms,
        ],
    }

    for_every_store!(
        replays_exactly_what_follows_a_position,
        count_bound_drops_the_oldest_and_reports_gaps,
        age_bound_drops_old_events_at_read_time,
        byte_bound_keeps_at_least_the_newest_event,
        sparse_offsets_are_handled_without_arithmetic,
        zero_history_keeps_nothing_but_knows_the_position,
        trim_during_a_replay_does_not_shorten_it,
        events_appended_after_replay_are_not_in_it,
        batches_hold_about_max_bytes_and_at_least_one_frame,
        publishes_of_returns_a_sessions_publishes_oldest_first,
        stats_count_what_a_replay_could_return,
        rooms_are_independent,
        times_going_back_do_not_hide_old_events,
        each_namespace_keeps_its_own_count,
        a_namespace_without_history_keeps_only_the_newest_offset,
        answers_match_the_memory_store,
        answers_match_the_memory_store_in_long_histories,
    );
}
