//! What only a disk store does: survive restarts and damage, bound its
//! files. The behaviour it shares with the memory store is tested in
//! `history::tests`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::super::tests::{
    append_all, drain, frame_of, limits, per_namespace, record, replayed, T0,
};
use super::super::{Gap, HistoryLimits, Publisher, Record, RoomLimits};
use super::format::{self, room_dir_name, segment_base, BODY_FIXED, HEADER_LEN, RECORD_HEAD};
use super::segment::for_each_record;
use super::*;
use crate::server::history::HistoryStats;

fn small_segments() -> DiskOptions {
    DiskOptions {
        segment_bytes: 200,
        ..DiskOptions::default()
    }
}

fn open(dir: &Path, limits: impl Into<RoomLimits>, options: DiskOptions) -> DiskStore {
    DiskStore::open(dir, limits, options).unwrap()
}

/// The segment files of room `name`, oldest first.
fn segments(dir: &Path, name: &str) -> Vec<PathBuf> {
    let room_dir = dir.join("rooms").join(room_dir_name(name, 0));
    let mut files: Vec<_> = fs::read_dir(room_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// A record whose frame and publisher tell its room and offset.
fn tagged(room: &str, offset: u64) -> Record {
    Record {
        offset,
        at_ms: T0 + offset,
        publisher: Publisher {
            session: room.len() as u64,
            id: offset * 10,
        },
        frame: Bytes::from(format!(
            "{room}/{offset}/{}",
            "x".repeat(offset as usize % 7)
        )),
    }
}

#[test]
fn restarts_keep_the_epoch_the_offsets_and_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["lobby", "game/1", "ü"];
    let mut epoch = None;
    for life in 0..3u64 {
        let store = open(dir.path(), limits(100, 3600, 1 << 20), small_segments());
        assert_eq!(*epoch.get_or_insert(store.epoch()), store.epoch());
        for name in names {
            let mut room = store.open_room(name).unwrap();
            assert_eq!(room.last_offset(), life * 4, "{name}");
            for o in life * 4 + 1..=life * 4 + 4 {
                room.append(tagged(name, o)).unwrap();
            }
        }
        drop(store);
        let store = open(dir.path(), limits(100, 3600, 1 << 20), small_segments());
        for name in names {
            let mut room = store.open_room(name).unwrap();
            let last = life * 4 + 4;
            assert_eq!(room.last_offset(), last);
            let replay = room.replay(0, T0).unwrap().unwrap();
            let want: Vec<_> = (1..=last).map(|o| tagged(name, o).frame).collect();
            assert_eq!(drain(replay), want, "{name} in life {life}");
            let publishes: Vec<_> = (1..=last).map(|o| (o * 10, o)).collect();
            assert_eq!(room.publishes_of(name.len() as u64).unwrap(), publishes);
            let stats = room.stats(T0);
            assert_eq!(stats.events, last);
            assert_eq!(stats.oldest_ms, Some(T0 + 1));
        }
    }
}

#[test]
fn a_new_or_wiped_directory_gets_a_new_epoch() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = open(a.path(), limits(10, 60, 1000), DiskOptions::default()).epoch();
    let other = open(b.path(), limits(10, 60, 1000), DiskOptions::default()).epoch();
    assert_ne!(first, 0);
    assert_ne!(first, other);
    fs::remove_dir_all(a.path()).unwrap();
    let wiped = open(a.path(), limits(10, 60, 1000), DiskOptions::default()).epoch();
    assert_ne!(wiped, first);
}

/// Appends `1..=n` to room `name` of a store on `dir`, and closes it.
fn fill(dir: &Path, options: DiskOptions, name: &str, n: u64) {
    let store = open(dir, limits(1000, 3600, 1 << 20), options);
    let mut room = store.open_room(name).unwrap();
    append_all(&mut *room, 1..=n, T0);
}

fn reopen_room(dir: &Path, options: DiskOptions, name: &str) -> (DiskStore, Box<dyn RoomHistory>) {
    let store = open(dir, limits(1000, 3600, 1 << 20), options);
    let room = store.open_room(name).unwrap();
    (store, room)
}

#[test]
fn a_torn_tail_is_cut_off() {
    // With small segments, the last one holds one record (n = 4) or two.
    for options in [DiskOptions::default(), small_segments()] {
        for n in [4, 5] {
            for tear in ["cut", "garbage"] {
                let case = format!("{tear}, {n} events, {} bytes", options.segment_bytes);
                let dir = tempfile::tempdir().unwrap();
                fill(dir.path(), options, "r", n);
                let last = segments(dir.path(), "r").pop().unwrap();
                let len = fs::metadata(&last).unwrap().len();
                let file = fs::OpenOptions::new().append(true).open(&last).unwrap();
                let whole = if tear == "cut" {
                    file.set_len(len - 3).unwrap();
                    n - 1
                } else {
                    (&file).write_all(&[0x5a; 37]).unwrap();
                    n
                };
                let (store, mut room) = reopen_room(dir.path(), options, "r");
                assert_eq!(room.last_offset(), whole, "{case}");
                assert_eq!(
                    replayed(&mut *room, 0, T0),
                    Ok((1..=whole).collect()),
                    "{case}"
                );
                append_all(&mut *room, whole + 1..=whole + 2, T0);
                drop((room, store));
                let (_store, mut room) = reopen_room(dir.path(), options, "r");
                let all = (1..=whole + 2).collect();
                assert_eq!(replayed(&mut *room, 0, T0), Ok(all), "{case}");
            }
        }
    }
}

/// The byte position of the record with `offset` in a segment file.
fn position_of(path: &Path, offset: u64) -> u64 {
    let file = File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut found = None;
    for_each_record(&file, HEADER_LEN, len, 4096, |pos, head| {
        if head.offset == offset {
            found = Some(pos);
        }
        found.is_none()
    })
    .unwrap();
    found.unwrap()
}

/// Changes the byte at `pos` of `path`.
fn flip(path: &Path, pos: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[pos as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

#[test]
fn damage_in_the_middle_ends_the_readable_history_there() {
    // Small segments: the damaged record is in an earlier segment, at its
    // end or inside it; default ones: in the middle of the only segment.
    // The damage is in a frame (checksum) or in a length.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    for options in [small_segments(), DiskOptions::default()] {
        for damaged in [4, 5, 6] {
            for byte in [RECORD_HEAD + BODY_FIXED, 1] {
                let dir = tempfile::tempdir().unwrap();
                fill(dir.path(), options, "a", 20);
                fill(dir.path(), options, "b", 20);
                let files = segments(dir.path(), "a");
                let path = files
                    .iter()
                    .rev()
                    .find(|p| {
                        segment_base(p.file_name().unwrap().to_str().unwrap()).unwrap() <= damaged
                    })
                    .unwrap();
                flip(path, position_of(path, damaged) + byte as u64);
                let case = format!("record {damaged}, byte {byte}, {} segments", files.len());

                let store = open(dir.path(), limits(1000, 3600, 1 << 20), options);
                let mut a = store.open_room("a").unwrap();
                assert_eq!(a.last_offset(), 20, "{case}");
                assert_eq!(replayed(&mut *a, 0, T0), Err(Gap::TooShort), "{case}");
                assert_eq!(
                    replayed(&mut *a, damaged - 1, T0),
                    Err(Gap::TooShort),
                    "{case}"
                );
                let readable = replayed(&mut *a, damaged, T0).unwrap();
                assert_eq!(readable, (damaged + 1..=20).collect::<Vec<_>>(), "{case}");
                assert_eq!(a.stats(T0).events, 20 - damaged, "{case}");
                let mut b = store.open_room("b").unwrap();
                assert_eq!(replayed(&mut *b, 0, T0), Ok((1..=20).collect()), "{case}");

                a.append(record(21, T0)).unwrap();
                drop((a, b, store));
                let (_store, mut a) = reopen_room(dir.path(), options, "a");
                assert_eq!(
                    replayed(&mut *a, damaged, T0),
                    Ok((damaged + 1..=21).collect()),
                    "{case}"
                );
            }
        }
    }
}

#[test]
fn a_directory_that_cannot_be_made_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    fs::write(&file, b"not a directory").unwrap();
    for path in [file.clone(), file.join("history")] {
        match DiskStore::open(&path, HistoryLimits::default(), DiskOptions::default()) {
            Err(e @ HistoryError::Io { .. }) => {
                let line = e.to_string();
                assert!(
                    line.starts_with(&format!("creating {}: ", path.display())),
                    "{line}"
                );
                assert!(!line.contains('\n'));
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened a store under a file"),
        }
    }
}

#[test]
fn a_read_only_directory_is_an_io_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), DiskOptions::default(), "r", 1);
    let rooms = dir.path().join("rooms");
    fs::set_permissions(&rooms, fs::Permissions::from_mode(0o555)).unwrap();
    if fs::write(rooms.join("probe"), b"").is_ok() {
        return; // Running as root: permissions do not stop us.
    }
    let result = DiskStore::open(dir.path(), HistoryLimits::default(), DiskOptions::default());
    fs::set_permissions(&rooms, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(result, Err(HistoryError::Io { .. })));
}

#[test]
fn segments_roll_and_are_deleted_by_the_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), limits(5, 3600, 1 << 20), small_segments());
    let mut room = store.open_room("r").unwrap();
    append_all(&mut *room, 1..=50, T0);
    room.trim(T0);
    let files = segments(dir.path(), "r");
    assert!((2..=3).contains(&files.len()), "{files:?}");
    for file in &files {
        assert!(fs::metadata(file).unwrap().len() <= 200);
    }
    assert_eq!(replayed(&mut *room, 45, T0), Ok((46..=50).collect()));
    assert_eq!(replayed(&mut *room, 44, T0), Err(Gap::TooShort));
    drop((room, store));
    let (_store, mut room) = reopen_room(dir.path(), small_segments(), "r");
    assert_eq!(replayed(&mut *room, 44, T0), Err(Gap::TooShort));
    assert_eq!(room.last_offset(), 50);
}

#[test]
fn maintain_trims_the_rooms_that_are_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), limits(100, 10, 1 << 20), small_segments());
    let mut open_room = store.open_room("open").unwrap();
    append_all(&mut *open_room, 1..=30, T0);
    append_all(&mut *store.open_room("closed").unwrap(), 1..=30, T0);
    let before = segments(dir.path(), "open").len();
    assert!(before > 3);
    store.maintain(T0 + 60_000);
    assert_eq!(
        segments(dir.path(), "open").len(),
        before,
        "open rooms are their owner's"
    );
    assert_eq!(
        segments(dir.path(), "closed").len(),
        1,
        "only the newest stays"
    );
    let mut closed = store.open_room("closed").unwrap();
    assert_eq!(closed.last_offset(), 30);
    assert_eq!(replayed(&mut *closed, 30, T0 + 60_000), Ok(vec![]));
    assert_eq!(replayed(&mut *closed, 29, T0 + 60_000), Err(Gap::TooShort));
}

#[test]
fn reopened_with_shorter_namespace_limits_trims_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let generous = limits(100, 3600, 1 << 20);
    let names = ["a.x", "b.x", "c.x"];
    let store = open(dir.path(), generous, small_segments());
    for name in names {
        let mut room = store.open_room(name).unwrap();
        for o in 1..=10 {
            let frame = frame_of(o, 100); // one record per segment
            room.append(Record {
                frame,
                ..record(o, T0)
            })
            .unwrap();
        }
    }
    drop(store);
    let files = || names.map(|name| segments(dir.path(), name).len());
    assert_eq!(files(), [10, 10, 10]);

    let shorter = per_namespace(
        generous,
        &[
            ("a", limits(3, 3600, 1 << 20)),
            ("b", limits(100, 10, 1 << 20)),
        ],
    );
    let store = open(dir.path(), shorter, small_segments());
    let later = T0 + 60_000;
    {
        // Replays answer by the new limits at once; nothing is deleted yet.
        let mut a = store.open_room("a.x").unwrap();
        assert_eq!(replayed(&mut *a, 7, T0), Ok(vec![8, 9, 10]));
        assert_eq!(replayed(&mut *a, 6, T0), Err(Gap::TooShort));
    }
    assert_eq!(files(), [10, 10, 10]);
    store.maintain(later);
    assert_eq!(files(), [3, 1, 10], "b's newest segment stays");
    let [mut a, mut b, mut c] = names.map(|name| store.open_room(name).unwrap());
    assert_eq!(replayed(&mut *a, 7, later), Ok(vec![8, 9, 10]));
    assert_eq!(replayed(&mut *a, 6, later), Err(Gap::TooShort));
    assert_eq!(replayed(&mut *b, 0, later), Err(Gap::TooShort));
    assert_eq!(replayed(&mut *b, 10, later), Ok(vec![]));
    assert_eq!(replayed(&mut *c, 0, later), Ok((1..=10).collect()));
    drop((a, b, c, store));

    // Longer limits again do not bring deleted events back.
    let store = open(dir.path(), generous, small_segments());
    let [mut a, mut b] = ["a.x", "b.x"].map(|name| store.open_room(name).unwrap());
    assert_eq!(replayed(&mut *a, 7, later), Ok(vec![8, 9, 10]));
    assert_eq!(replayed(&mut *a, 6, later), Err(Gap::TooShort));
    assert_eq!(replayed(&mut *b, 9, later), Ok(vec![10]));
    assert_eq!(replayed(&mut *b, 8, later), Err(Gap::TooShort));
    assert_eq!((a.last_offset(), b.last_offset()), (10, 10));
}

#[test]
fn few_open_files_serve_many_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        max_open_files: 2,
        ..small_segments()
    };
    let names: Vec<_> = (0..10).map(|i| format!("room-{i}")).collect();
    {
        let store = open(dir.path(), limits(1000, 3600, 1 << 20), options);
        let mut rooms: Vec<_> = names.iter().map(|n| store.open_room(n).unwrap()).collect();
        for o in 1..=20 {
            for (room, name) in rooms.iter_mut().zip(&names) {
                room.append(tagged(name, o)).unwrap();
            }
            assert!(store.shared.files.open_count() <= 2);
        }
        for (room, name) in rooms.iter_mut().zip(&names) {
            let replay = room.replay(0, T0).unwrap().unwrap();
            let want: Vec<_> = (1..=20).map(|o| tagged(name, o).frame).collect();
            assert_eq!(drain(replay), want);
        }
    }
    let store = open(dir.path(), limits(1000, 3600, 1 << 20), options);
    for name in &names {
        let mut room = store.open_room(name).unwrap();
        room.append(tagged(name, 21)).unwrap();
        let replay = room.replay(0, T0).unwrap().unwrap();
        let want: Vec<_> = (1..=21).map(|o| tagged(name, o).frame).collect();
        assert_eq!(drain(replay), want);
    }
}

#[test]
fn interval_fsync_happens_in_maintain_once_due() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
        ..DiskOptions::default()
    };
    let store = open(dir.path(), limits(100, 60, 1 << 20), options);
    let mut room = store.open_room("r").unwrap();
    room.append(record(1, T0)).unwrap();
    let written = Instant::now();
    assert!(store.shared.unsynced.pending() > 0);
    store.maintain_at(T0, written);
    assert!(store.shared.unsynced.pending() > 0, "not due yet");
    store.maintain_at(T0, written + Duration::from_secs(1));
    assert_eq!(store.shared.unsynced.pending(), 0);
}

#[test]
fn interval_fsync_is_not_postponed_by_the_events_times() {
    // Events from a clock a day ahead, then one that stepped back: neither
    // moves when the writes are due.
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
        ..DiskOptions::default()
    };
    let store = open(dir.path(), limits(100, 60, 1 << 20), options);
    let mut room = store.open_room("r").unwrap();
    let wall = crate::server::history::now_ms();
    room.append(record(1, wall + DAY_MS)).unwrap();
    room.append(record(2, wall - DAY_MS)).unwrap();
    let written = Instant::now();
    store.maintain_at(wall, written + Duration::from_secs(1));
    assert_eq!(
        store.shared.unsynced.pending(),
        0,
        "synced within the interval"
    );
    // The same after the wall clock stepped back a day. (The write happens
    // between `before` and `after`: a loaded machine may take a while.)
    let before = Instant::now();
    room.append(record(3, wall)).unwrap();
    let after = Instant::now();
    store.maintain_at(wall - DAY_MS, before + Duration::from_millis(999));
    assert!(store.shared.unsynced.pending() > 0, "not due yet");
    store.maintain_at(wall - DAY_MS, after + Duration::from_secs(1));
    assert_eq!(store.shared.unsynced.pending(), 0);
}

#[test]
fn always_and_never_fsync_keep_nothing_pending() {
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        let options = DiskOptions {
            fsync,
            ..small_segments()
        };
        let store = open(dir.path(), limits(100, 60, 1 << 20), options);
        let mut room = store.open_room("r").unwrap();
        append_all(&mut *room, 1..=10, T0);
        assert_eq!(store.shared.unsynced.pending(), 0);
        drop((room, store));
        let (_store, mut room) = reopen_room(dir.path(), options, "r");
        assert_eq!(replayed(&mut *room, 0, T0), Ok((1..=10).collect()));
    }
}

#[test]
fn fsync_policies_parse_and_display() {
    for (text, policy) in [
        ("always", FsyncPolicy::Always),
        ("interval", FsyncPolicy::Interval(Duration::from_secs(1))),
        ("never", FsyncPolicy::Never),
    ] {
        assert_eq!(text.parse::<FsyncPolicy>(), Ok(policy));
        assert_eq!(policy.to_string(), text);
    }
    assert!("sometimes".parse::<FsyncPolicy>().is_err());
}

#[test]
fn a_name_collision_gets_its_own_directory() {
    let dir = tempfile::tempdir().unwrap();
    // Room "a" already sits in the directory that "b" hashes to.
    let taken = dir.path().join("rooms").join(room_dir_name("b", 0));
    fs::create_dir_all(&taken).unwrap();
    fs::write(taken.join("name"), "a").unwrap();
    for life in 0..2 {
        let store = open(
            dir.path(),
            limits(100, 3600, 1 << 20),
            DiskOptions::default(),
        );
        for name in ["a", "b"] {
            let mut room = store.open_room(name).unwrap();
            if life == 0 {
                room.append(tagged(name, 1)).unwrap();
            }
            let replay = room.replay(0, T0).unwrap().unwrap();
            assert_eq!(
                drain(replay),
                vec![tagged(name, 1).frame],
                "{name}, life {life}"
            );
        }
    }
    let moved = dir.path().join("rooms").join(room_dir_name("b", 1));
    assert_eq!(fs::read_to_string(moved.join("name")).unwrap(), "b");
}

#[test]
fn a_segment_from_a_newer_version_is_a_format_error() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), DiskOptions::default(), "r", 3);
    let path = segments(dir.path(), "r").pop().unwrap();
    let mut bytes = fs::read(&path).unwrap();
    // A newer version's header: not a version 1 header with a flipped bit.
    bytes[7] = format::VERSION + 1;
    let crc = crc32fast::hash(&bytes[..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    fs::write(&path, bytes).unwrap();
    let result = DiskStore::open(dir.path(), HistoryLimits::default(), DiskOptions::default());
    assert!(matches!(result, Err(HistoryError::Format { path: p, .. }) if p == path));
}

/// The lengths of the files in `paths`.
fn lengths(paths: &[PathBuf]) -> Vec<u64> {
    paths
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .collect()
}

#[test]
fn a_damaged_segment_header_loses_no_records() {
    // A flipped bit in `prev`, or a checksummed `prev` that is not below
    // the segment's offsets, in the oldest, a middle or the newest segment.
    // It used to make the later segments' records look out of order (and
    // the newest one's were cut off as a torn tail).
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    for which in ["oldest", "middle", "newest"] {
        for damage in ["flipped bit", "prev after the segment"] {
            let case = format!("{damage} in the {which} segment");
            let dir = tempfile::tempdir().unwrap();
            fill(dir.path(), small_segments(), "r", 20);
            let files = segments(dir.path(), "r");
            assert!(files.len() >= 3, "{files:?}");
            let path = match which {
                "oldest" => &files[0],
                "middle" => &files[files.len() - 2],
                _ => &files[files.len() - 1],
            };
            if damage == "flipped bit" {
                flip(path, 15); // The top byte of `prev`.
            } else {
                let mut bytes = fs::read(path).unwrap();
                bytes[..HEADER_LEN as usize].copy_from_slice(&format::encode_header(u64::MAX));
                fs::write(path, bytes).unwrap();
            }
            let before = lengths(&files);

            let (store, mut room) = reopen_room(dir.path(), small_segments(), "r");
            assert_eq!(lengths(&files), before, "{case}: nothing cut off");
            assert_eq!(room.last_offset(), 20, "{case}");
            assert_eq!(
                replayed(&mut *room, 0, T0),
                Ok((1..=20).collect()),
                "{case}"
            );
            assert_eq!(room.stats(T0).events, 20, "{case}");
            room.append(record(21, T0)).unwrap();
            drop((room, store));
            let (_store, mut room) = reopen_room(dir.path(), small_segments(), "r");
            assert_eq!(
                replayed(&mut *room, 0, T0),
                Ok((1..=21).collect()),
                "{case}"
            );
        }
    }
}

#[test]
fn a_tail_with_a_good_record_after_damage_is_not_cut() {
    // Garbage, then a checksummed record that does not follow the others
    // (a copy of record 3), at the end of the room's only segment.
    for options in [DiskOptions::default(), small_segments()] {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), options, "r", 5);
        let path = segments(dir.path(), "r").pop().unwrap();
        let first = segments(dir.path(), "r")[0].clone();
        let copy = {
            let bytes = fs::read(&first).unwrap();
            let at = position_of(&first, 3) as usize;
            let len = RECORD_HEAD + BODY_FIXED + 8;
            bytes[at..at + len].to_vec()
        };
        {
            let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all(&[0x5a; 37]).unwrap();
            file.write_all(&copy).unwrap();
        }
        let len = fs::metadata(&path).unwrap().len();
        let (store, mut room) = reopen_room(dir.path(), options, "r");
        assert_eq!(fs::metadata(&path).unwrap().len(), len, "nothing cut off");
        assert_eq!(room.last_offset(), 5);
        // Damage in the middle: the events before it count as dropped.
        assert_eq!(replayed(&mut *room, 4, T0), Err(Gap::TooShort));
        assert_eq!(replayed(&mut *room, 5, T0), Ok(vec![]));
        assert_eq!(room.stats(T0).events, 0);
        room.append(record(6, T0)).unwrap();
        drop((room, store));
        let (_store, mut room) = reopen_room(dir.path(), options, "r");
        assert_eq!(replayed(&mut *room, 5, T0), Ok(vec![6]));
        assert_eq!(replayed(&mut *room, 4, T0), Err(Gap::TooShort));
    }
}

#[test]
fn offsets_at_the_top_of_the_range_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), limits(100, 60, 1 << 20), small_segments());
        let mut room = store.open_room("r").unwrap();
        append_all(&mut *room, [u64::MAX - 1, u64::MAX], T0);
    }
    let (_store, mut room) = reopen_room(dir.path(), small_segments(), "r");
    assert_eq!(room.last_offset(), u64::MAX);
    assert_eq!(replayed(&mut *room, u64::MAX - 1, T0), Ok(vec![u64::MAX]));
    assert_eq!(
        replayed(&mut *room, 0, T0),
        Ok(vec![u64::MAX - 1, u64::MAX])
    );
}

#[test]
fn rooms_named_but_never_written_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), limits(100, 60, 1 << 20), small_segments());
    let table = || {
        let rooms = lock(&store.shared.rooms);
        (rooms.by_name.len(), rooms.dir_names.len())
    };
    let held = store.open_room("held").unwrap();
    let twice = store.open_room("twice").unwrap();
    drop(store.open_room("twice").unwrap());
    append_all(&mut *store.open_room("written").unwrap(), 1..=3, T0);
    for i in 0..1_000_000 {
        drop(store.open_room(&format!("room-{i}")).unwrap());
    }
    assert_eq!(table(), (3, 3), "held, twice and written");
    drop((held, twice));
    store.maintain(T0);
    assert_eq!(table(), (1, 1), "written");
    let on_disk = fs::read_dir(dir.path().join("rooms")).unwrap().count();
    assert_eq!(on_disk, 1);

    // Named again, a forgotten room starts empty and a written one goes on.
    let mut again = store.open_room("room-7").unwrap();
    assert_eq!(again.last_offset(), 0);
    again.append(tagged("room-7", 1)).unwrap();
    let mut written = store.open_room("written").unwrap();
    assert_eq!(replayed(&mut *written, 0, T0), Ok(vec![1, 2, 3]));
    drop((again, written, store));
    let (_store, mut room) = reopen_room(dir.path(), small_segments(), "room-7");
    let replay = room.replay(0, T0).unwrap().unwrap();
    assert_eq!(drain(replay), vec![tagged("room-7", 1).frame]);
}

#[test]
fn a_second_store_on_a_directory_in_use_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path(), HistoryLimits::default(), DiskOptions::default());
    // The write probe would fail for the second: the lock is found first.
    fs::create_dir(dir.path().join("rooms").join(".write-test")).unwrap();
    match DiskStore::open(dir.path(), HistoryLimits::default(), DiskOptions::default()) {
        Err(HistoryError::InUse { path }) => assert_eq!(path, dir.path()),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a directory in use"),
    }
}

#[test]
fn stats_delete_nothing_and_read_at_most_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), limits(5, 10, 1 << 20), small_segments());
    let mut room = store.open_room("r").unwrap();
    for o in 1..=30 {
        room.append(record(o, T0 + o * 100)).unwrap();
    }
    let files = segments(dir.path(), "r");
    // The count bound ends inside a segment: found by reading it, once.
    let want = HistoryStats {
        events: 5,
        bytes: 40,
        oldest_ms: Some(T0 + 2_600),
    };
    assert_eq!(room.stats(T0 + 3_000), want);
    let moved = dir.path().join("moved");
    fs::rename(dir.path().join("rooms"), &moved).unwrap();
    assert_eq!(room.stats(T0 + 3_000), want);
    assert_eq!(room.stats(T0 + 12_600), want, "until the oldest ages out");
    fs::rename(&moved, dir.path().join("rooms")).unwrap();
    assert_eq!(room.stats(T0 + 12_601).events, 4);
    // Everything outside the bounds: no events, and no file deleted.
    assert_eq!(room.stats(T0 + 60_000), HistoryStats::default());
    assert_eq!(segments(dir.path(), "r"), files);
    room.append(record(31, T0 + 60_000)).unwrap();
    assert_eq!(room.stats(T0 + 60_000).events, 1, "an append is counted");
}

/// `cargo test --release -- --ignored --nocapture disk_speed`: replays a
/// million 64-byte events and reopens about 1 GB of history.
#[test]
#[ignore]
fn disk_speed() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let bounds = limits(usize::MAX, 3600, usize::MAX);
    let store = open(dir.path(), bounds, DiskOptions::default());
    let mut room = store.open_room("r").unwrap();
    let frame = Bytes::from(vec![7u8; 64]);
    let events = 1_000_000u64;
    let started = Instant::now();
    for o in 1..=events {
        room.append(Record {
            frame: frame.clone(),
            ..record(o, T0)
        })
        .unwrap();
    }
    println!(
        "append: {:.0} events/s",
        events as f64 / started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let mut replay = room.replay(0, T0).unwrap().unwrap();
    let mut n = 0u64;
    loop {
        let batch = replay.source.next_batch(256 * 1024).unwrap();
        if batch.is_empty() {
            break;
        }
        n += batch.len() as u64;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(n, events);
    println!("replay: {rate:.0} events/s");
    drop((room, store));

    // About 1 GB: the million-event room and nine more like it.
    let one_room = segments(dir.path(), "r");
    for i in 1..10 {
        let copy = dir
            .path()
            .join("rooms")
            .join(room_dir_name(&format!("copy{i}"), 0));
        fs::create_dir_all(&copy).unwrap();
        fs::write(copy.join("name"), format!("copy{i}")).unwrap();
        for file in &one_room {
            fs::copy(file, copy.join(file.file_name().unwrap())).unwrap();
        }
    }
    let total: u64 = fs::read_dir(dir.path().join("rooms"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    let rss_kb = || {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap_or("");
        line.split_whitespace()
            .nth(1)
            .and_then(|kb| kb.parse::<u64>().ok())
    };
    let rss_before = rss_kb();
    let started = Instant::now();
    let store = open(dir.path(), bounds, DiskOptions::default());
    println!(
        "open: {} MB in {:.2} s; RSS {:?} kB before, {:?} kB after",
        total / 1_000_000,
        started.elapsed().as_secs_f64(),
        rss_before,
        rss_kb(),
    );
    assert_eq!(store.open_room("copy9").unwrap().last_offset(), events);
}

#[test]
fn the_budget_applies_to_what_is_on_disk_at_open_and_keeps_newest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let bounds = limits(1000, 3600, 1 << 20);
    {
        let store = open(dir.path(), bounds, small_segments());
        for (name, n) in [("big", 30), ("small", 5)] {
            let mut room = store.open_room(name).unwrap();
            for o in 1..=n {
                room.append(tagged(name, o)).unwrap();
            }
        }
    }
    let all = open(dir.path(), bounds, small_segments()).usage().bytes;
    let store = open(dir.path(), bounds, small_segments()).with_budget(all / 2);
    let usage = store.usage();
    assert!(usage.bytes <= all / 2, "{usage:?} of {all}");
    assert!(usage.budget_drops > 0);
    let mut small = store.open_room("small").unwrap();
    let all_small = drain(small.replay(0, T0).unwrap().unwrap());
    assert_eq!(all_small.len(), 5, "not touched");
    let mut big = store.open_room("big").unwrap();
    assert_eq!(replayed(&mut *big, 0, T0), Err(Gap::Budget));
    drop(store);

    // A budget below what the newest segments hold: each room keeps its
    // newest segment, and with it its last offset.
    let store = open(dir.path(), bounds, small_segments()).with_budget(1);
    for (name, last) in [("big", 30), ("small", 5)] {
        let mut room = store.open_room(name).unwrap();
        assert_eq!(room.last_offset(), last);
        assert_eq!(segments(dir.path(), name).len(), 1, "{name}");
        let newest = drain(room.replay(last - 1, T0).unwrap().unwrap());
        assert_eq!(newest, vec![tagged(name, last).frame], "{name}");
        // Why "big" was cut in the store's previous life is not known now.
        let why = if name == "big" {
            Gap::TooShort
        } else {
            Gap::Budget
        };
        assert_eq!(replayed(&mut *room, 0, T0), Err(why), "{name}");
    }
}

#[test]
fn a_room_written_past_the_budget_in_one_segment_gives_it_up_at_its_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let options = DiskOptions {
        segment_bytes: 4096,
        ..DiskOptions::default()
    };
    let cost = 100 + RECORD_OVERHEAD;
    let store = open(dir.path(), limits(1000, 3600, 1 << 20), options).with_budget(10 * cost);
    let mut room = store.open_room("r").unwrap();
    let append = |room: &mut Box<dyn RoomHistory>, o: u64| {
        let frame = frame_of(o, 100);
        room.append(Record {
            frame,
            ..record(o, T0)
        })
        .unwrap();
    };
    for o in 1..=11 {
        append(&mut room, o);
    }
    // Over the budget, but all of it in the segment appends go to.
    assert_eq!(store.usage().bytes, 11 * cost);
    assert_eq!(segments(dir.path(), "r").len(), 1);
    for o in 12..=20 {
        append(&mut room, o);
    }
    assert_eq!(segments(dir.path(), "r").len(), 1, "the old one is gone");
    let usage = store.usage();
    assert_eq!((usage.bytes, usage.budget_drops), (9 * cost, 11));
    assert_eq!(replayed(&mut *room, 0, T0), Err(Gap::Budget));
    assert_eq!(replayed(&mut *room, 11, T0), Ok((12..=20).collect()));
}
