//! Room history on disk: a segmented append-only log per room.
//!
//! Events survive a restart of the server (and a `kill -9`: a record's
//! write has returned before `append` does); what survives a power loss is
//! the [`FsyncPolicy`]'s choice. No events are kept in RAM: per room only
//! each segment's metadata and a sparse index.
//!
//! # Budget and RAM
//!
//! [`DiskStore::with_budget`] bounds the bytes of records on disk across
//! all rooms: over it, the oldest segment of the largest room is deleted,
//! then the next, re-reading which room is largest each time. A room's
//! newest segment is never deleted (it carries the room's last offset); a
//! room down to it starts a new segment on its next append, so a room being
//! written gives up its old one too. On disk, then, at most the budget plus
//! one segment (16 MiB by default) per room not written since the budget
//! was reached.
//!
//! What RAM the store holds is small and bounded per room: its name and
//! directory, a `Segment` of about 130 bytes per
//! segment file plus a 40-byte index point per 64 KiB of it, an entry in
//! the budget's ledger — in all about 1 KiB per room and 0.1% of the bytes
//! on disk — and at most `max_open_files` open append handles across all
//! rooms. No events, no read caches: replays read through their own handles
//! in 256 KiB chunks.
//!
//! # Layout
//!
//! ```text
//! DIR/epoch                   the epoch, in decimal, and a newline
//! DIR/rooms/<room dir>/name   the room's name (UTF-8, exactly its bytes)
//! DIR/rooms/<room dir>/00000000000000000001.log   a segment, named by the
//!                             offset of its first record, zero-padded to 20
//!                             digits (or of the append that started it, if
//!                             that one failed)
//! ```
//!
//! The epoch is chosen at random (non-zero) when a directory without one is
//! opened, and read on every later open: a restart keeps it, a new or wiped
//! directory gets a new one. A room's directory is the hex FNV-1a 128 hash
//! of its name; if that directory holds another name (a collision), `-1`,
//! `-2`, … are appended.
//!
//! # Segment format
//!
//! All integers little-endian.
//!
//! ```text
//! header:  "QBUSLOG" ‖ u8 version (1) ‖ u64 prev ‖ u32 crc32(the 16 bytes before it)
//! record:  u32 body_len ‖ u32 crc32(body) ‖ body
//! body:    u64 offset ‖ u64 at_ms ‖ u64 publisher.session ‖ u64 publisher.id ‖ frame
//! ```
//!
//! `prev` is the room's newest offset when the segment was started (so it
//! is below the segment's offsets): once older segments are deleted, it
//! tells which positions are still covered without any arithmetic on
//! offsets. Offsets increase strictly within a room, and `at_ms` never
//! decreases (a clock stepping back is clamped). A new segment is started
//! when a record would take the active one past `segment_bytes`.
//!
//! # Damage
//!
//! Opening a store verifies every segment header and every record; only
//! checksummed records decide which records are in order.
//!
//! - A header whose checksum fails, or whose `prev` is not below the
//!   segment's offsets, is damaged: the segment's records are read all the
//!   same, and appends go to a new segment. Only what `prev` would have
//!   told is lost: where it matters (the room's oldest segment, or after
//!   damage), a replay from before the segment's first record is
//!   [`Gap::TooShort`].
//! - Bad bytes at the very end of a room's last segment, with no record
//!   with a valid checksum after them, are a torn write: cut off (if that
//!   leaves neither a good header nor a record, the file is moved aside as
//!   `.damaged`). The search for such records checksums at most 256 MiB;
//!   past that, nothing is cut.
//! - Any other bad record ends the readable history there: the events
//!   before it count as dropped (a replay from before it is
//!   [`Gap::TooShort`]), and the records after it that follow the earlier
//!   ones stay readable. Records with a valid checksum that do not (their
//!   offset or time goes back) are left in the file unread, and count as
//!   dropped too; appends go to a new segment.
//!
//! Either way the server starts. Each case is logged with the room, the
//! file and the byte position, and concerns that room alone.
//!
//! [`Gap::TooShort`]: super::Gap::TooShort

mod files;
mod format;
#[cfg(test)]
pub(super) use format::RECORD_OVERHEAD;
mod load;
mod replay;
mod room;
mod segment;
mod window;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::budget::{Budget, HistoryUsage};
use super::{HistoryError, HistoryStore, RoomHistory, RoomLimits};
use crate::sync::lock;
use files::{FileCache, Unsynced};
use format::room_dir_name;
use load::{load_or_create_epoch, load_rooms};
use room::{DiskRoom, RoomLog, RoomShared};

/// Bytes read at a time when verifying segments on open.
const OPEN_CHUNK: usize = 1024 * 1024;

/// Most bytes `publishes_of` reads, from the newest segment back.
const PUBLISHES_SCAN_BYTES: u64 = 64 * 1024 * 1024;

/// When written events are forced to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every append: nothing acknowledged is lost to a power cut, at
    /// the price of a device flush per event.
    Always,
    /// By `maintain`, once the oldest unsynced write is this old: a power
    /// cut loses at most about that much.
    Interval(Duration),
    /// Left to the OS: a crash of the process loses nothing, a power cut
    /// may lose what the OS had not written yet.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_secs(1))
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Interval(_) => "interval",
            FsyncPolicy::Never => "never",
        })
    }
}

/// `always`, `interval` (every second) or `never`.
impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "interval" => Ok(FsyncPolicy::default()),
            "never" => Ok(FsyncPolicy::Never),
            _ => Err(format!(
                "unknown fsync policy {s:?}: expected always, interval or never"
            )),
        }
    }
}

/// How a [`DiskStore`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskOptions {
    pub fsync: FsyncPolicy,
    /// A segment is not made longer than this (unless by a single record).
    pub segment_bytes: u64,
    /// Most files kept open for appending, over all rooms.
    pub max_open_files: usize,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            fsync: FsyncPolicy::default(),
            segment_bytes: 16 * 1024 * 1024,
            max_open_files: 1024,
        }
    }
}

/// Every room's history under one data directory.
pub struct DiskStore {
    epoch: u64,
    shared: Arc<Shared>,
    /// `DIR/lock`, locked for as long as the store is open: two servers
    /// writing one directory would corrupt each other's logs.
    _lock: fs::File,
}

/// What the store and its room handles share.
struct Shared {
    options: DiskOptions,
    files: FileCache,
    unsynced: Unsynced,
    rooms: Mutex<Rooms>,
    /// The bytes of every room with something on disk or a handle open.
    budget: Budget<Arc<RoomShared>>,
}

impl Shared {
    /// Deletes the oldest segments of the largest rooms while the total is
    /// over the budget. Called with no room locked.
    fn enforce_budget(&self) {
        self.budget.enforce(|_, room| room.shed(self));
    }
}

/// The rooms the store knows: those with something on disk, and those with
/// an open handle. A room with neither is forgotten (by its last handle's
/// drop), so naming rooms without writing to them leaves nothing behind.
struct Rooms {
    dir: PathBuf,
    /// Which limits a room gets when the store first knows it.
    limits: RoomLimits,
    by_name: HashMap<String, Arc<RoomShared>>,
    /// Directory names in use, also by directories that could not be read.
    dir_names: HashSet<String>,
    next_id: u64,
}

/// Takes the data directory's lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<fs::File, HistoryError> {
    let path = dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("creating", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(HistoryError::InUse {
            path: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(HistoryError::Io {
            what: "cannot lock",
            path,
            source: e,
        }),
    }
}

impl DiskStore {
    /// Opens (creating if need be) the history under `dir`, verifying every
    /// record of every room. A directory that cannot be created, read or
    /// written is [`HistoryError::Io`], with its path.
    ///
    /// The rooms found on disk get the limits `limits` gives them now,
    /// whatever they had before: a shortened history is answered short at
    /// once, and its files are deleted by the next trim (`maintain`).
    pub fn open(
        dir: &Path,
        limits: impl Into<RoomLimits>,
        options: DiskOptions,
    ) -> Result<DiskStore, HistoryError> {
        let rooms_dir = dir.join("rooms");
        fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
        // Locked before anything else is touched: a second server on the
        // directory is told it is in use, whatever else would fail for it.
        let dir_lock = lock_dir(dir)?;
        fs::create_dir_all(&rooms_dir).map_err(io_error("creating", &rooms_dir))?;
        let probe = rooms_dir.join(".write-test");
        fs::write(&probe, b"").map_err(io_error("writing in", dir))?;
        fs::remove_file(&probe).map_err(io_error("writing in", dir))?;
        let epoch = load_or_create_epoch(dir)?;

        let mut dir_names = Vec::new();
        for entry in fs::read_dir(&rooms_dir).map_err(io_error("reading", &rooms_dir))? {
            let entry = entry.map_err(io_error("reading", &rooms_dir))?;
            if entry.path().is_dir() {
                if let Ok(name) = entry.file_name().into_string() {
                    dir_names.push(name);
                }
            }
        }
        let loaded = load_rooms(&rooms_dir, &dir_names)?;

        let mut rooms = Rooms {
            dir: rooms_dir.clone(),
            limits: limits.into(),
            by_name: HashMap::new(),
            dir_names: dir_names.iter().cloned().collect(),
            next_id: 0,
        };
        let budget = Budget::new(u64::MAX);
        for (dir_name, name, log) in loaded {
            let room = rooms.add(name, rooms_dir.join(dir_name), log);
            budget.register(room.id, room.clone());
        }
        let shared = Arc::new(Shared {
            options,
            files: FileCache::new(options.max_open_files),
            unsynced: Unsynced::default(),
            rooms: Mutex::new(rooms),
            budget,
        });
        for room in lock(&shared.rooms).by_name.values() {
            room.account(&shared, &lock(&room.log));
        }
        Ok(DiskStore {
            _lock: dir_lock,
            epoch,
            shared,
        })
    }

    /// Bounds the bytes (of encoded frames) kept on disk across all rooms:
    /// while the total is over `total_bytes`, the oldest segment of the
    /// largest room is deleted (never a room's newest segment, which the
    /// next appends go to). Applied at once to what is on disk.
    pub fn with_budget(self, total_bytes: u64) -> Self {
        self.shared.budget.set_limit(total_bytes);
        self.shared.enforce_budget();
        self
    }
}

impl Rooms {
    /// Room `name`, known or new (created on disk by its first append),
    /// with one more handle counted: under this lock, so that the last
    /// handle's drop cannot forget it meanwhile.
    fn open(&mut self, name: &str) -> Arc<RoomShared> {
        let room = match self.by_name.get(name) {
            Some(room) => room.clone(),
            None => {
                let dir = self.new_dir(name);
                self.add(name.to_owned(), dir, RoomLog::default())
            }
        };
        room.handles.fetch_add(1, Ordering::Relaxed);
        room
    }

    /// Forgets `room`, whose last handle is gone, if nothing of it is on
    /// disk, and frees its directory name.
    /// Returns whether the room had nothing on disk.
    fn forget_if_unwritten(&mut self, room: &Arc<RoomShared>) -> bool {
        if lock(&room.log).dir_created {
            return false;
        }
        if !self
            .by_name
            .get(&room.name)
            .is_some_and(|known| Arc::ptr_eq(known, room))
        {
            return true;
        }
        self.by_name.remove(&room.name);
        if let Some(dir_name) = room.dir.file_name().and_then(|n| n.to_str()) {
            self.dir_names.remove(dir_name);
        }
        true
    }

    fn add(&mut self, name: String, dir: PathBuf, log: RoomLog) -> Arc<RoomShared> {
        self.next_id += 1;
        let room = Arc::new(RoomShared {
            id: self.next_id,
            limits: self.limits.for_room(&name),
            name: name.clone(),
            dir,
            handles: AtomicUsize::new(0),
            log: Mutex::new(log),
        });
        self.by_name.insert(name, room.clone());
        room
    }

    /// The directory for a room not on disk yet: the first free one of its
    /// name's candidates.
    fn new_dir(&mut self, name: &str) -> PathBuf {
        let mut attempt = 0;
        loop {
            let dir_name = room_dir_name(name, attempt);
            if !self.dir_names.contains(&dir_name) {
                let dir = self.dir.join(&dir_name);
                self.dir_names.insert(dir_name);
                return dir;
            }
            attempt += 1;
        }
    }
}

impl HistoryStore for DiskStore {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn open_room(&self, name: &str) -> Result<Box<dyn RoomHistory>, HistoryError> {
        let room = lock(&self.shared.rooms).open(name);
        self.shared.budget.register(room.id, room.clone());
        Ok(Box::new(DiskRoom::new(room, self.shared.clone())))
    }

    fn maintain(&self, now_ms: u64) {
        self.maintain_at(now_ms, Instant::now());
    }

    fn sync(&self) {
        self.shared.unsynced.sync_all();
    }

    fn usage(&self) -> HistoryUsage {
        self.shared.budget.usage()
    }
}

impl DiskStore {
    /// `maintain`, with the monotonic clock's `now` too: the bounds go by
    /// the events' times, the interval fsync by how long ago the oldest
    /// unsynced write was made.
    fn maintain_at(&self, now_ms: u64, now: Instant) {
        let rooms: Vec<_> = lock(&self.shared.rooms).by_name.values().cloned().collect();
        for room in rooms {
            if room.handles.load(Ordering::Relaxed) == 0 {
                room.trim(&self.shared, now_ms);
            }
        }
        if let FsyncPolicy::Interval(interval) = self.shared.options.fsync {
            self.shared.unsynced.sync_if_due(now, interval);
        }
    }
}

/// With [`FsyncPolicy::Interval`], what was written since the last sync is
/// synced now: a store closed at shutdown leaves nothing to the OS.
impl Drop for DiskStore {
    fn drop(&mut self) {
        if let FsyncPolicy::Interval(_) = self.shared.options.fsync {
            self.shared.unsynced.sync_all();
        }
    }
}

/// Turns an I/O error on `path` into a [`HistoryError::Io`].
fn io_error<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> HistoryError + 'p {
    move |source| HistoryError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
