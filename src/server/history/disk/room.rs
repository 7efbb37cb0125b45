//! One room: its segments' metadata, the bounds applied to it, and the
//! [`RoomHistory`] handle that appends to and replays it.
//!
//! Which events a replay may return is computed exactly, as the memory
//! store would have it: from the segments' counts, bytes and times, plus a
//! scan of at most one index stride of the segment where the answer lies.
//! Deleting files is coarser: a segment goes when every event in it is
//! outside the bounds, and the newest one always stays, so the room's last
//! offset is never lost.
//!
//! `stats` deletes nothing and, unlike a replay, mostly reads nothing: see
//! [`DiskRoom`]'s `stats`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::super::{Gap, HistoryError, HistoryLimits, HistoryStats, Record, Replay, RoomHistory};
use super::format::{
    encode_header, encode_record, segment_path, RecordHead, HEADER_LEN, MAX_FRAME, RECORD_OVERHEAD,
};
use super::replay::{DiskReplay, Part};
use super::segment::{for_each_record, Segment, INDEX_STRIDE};
use super::{files, io_error, FsyncPolicy, Shared, OPEN_CHUNK, PUBLISHES_SCAN_BYTES};
use crate::sync::lock;

/// Bytes read at a time when scanning part of a segment.
const SCAN_CHUNK: usize = INDEX_STRIDE as usize + 4096;

/// What a room keeps in RAM: no events, only where they are.
#[derive(Debug, Default)]
pub struct RoomLog {
    /// Oldest first.
    pub segments: Vec<Segment>,
    /// The newest offset ever appended (or found on disk).
    pub last_offset: u64,
    /// The newest event's time; times are kept non-decreasing.
    pub last_at_ms: u64,
    /// The newest offset that is gone (deleted for the room's bounds, or
    /// damaged): a position before it is not covered.
    pub floor: u64,
    /// The newest offset deleted for the store's budget across rooms: a
    /// position before it is not covered either, and told why.
    pub budget_floor: u64,
    /// Whether the room's directory and name file exist.
    pub dir_created: bool,
    /// A failed write may have left bytes behind in the active segment
    /// (or damage was found at its end): the next append starts a new one.
    pub roll_next: bool,
    /// The last `stats` answer and the time it was for, while no append or
    /// deleted segment has changed it.
    pub stats_cache: Option<(u64, HistoryStats)>,
}

/// The events after a position, found by [`RoomLog::locate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    /// The segment holding the first of them, and where in it.
    pub segment: usize,
    pub pos: u64,
    pub count: u64,
    pub bytes: u64,
    pub first_at_ms: u64,
}

/// Whether the `count` newest events (of `bytes` frame bytes, the oldest
/// published at `oldest_ms`) are all within the bounds at `now_ms`. A bound
/// that holds for a run of newest events holds for every shorter run, so
/// this one test decides both coverage and trimming.
pub fn within(limits: &HistoryLimits, count: u64, bytes: u64, oldest_ms: u64, now_ms: u64) -> bool {
    count == 0
        || (count <= limits.max_events as u64
            && (bytes <= limits.max_bytes as u64 || count == 1)
            && Duration::from_millis(now_ms.saturating_sub(oldest_ms)) <= limits.max_age)
}

impl RoomLog {
    /// How many of the oldest segments hold only events outside the bounds
    /// at `now_ms` (or none readable). Never the newest one.
    pub fn outdated(&self, limits: &HistoryLimits, now_ms: u64) -> usize {
        let (mut count, mut bytes) = (0u64, 0u64);
        for (i, seg) in self.segments.iter().enumerate().rev() {
            if i + 1 < self.segments.len()
                && (seg.count == 0
                    || seg.last_offset <= self.floor
                    || !within(
                        limits,
                        count + 1,
                        bytes + seg.last_frame_len,
                        seg.last_at_ms,
                        now_ms,
                    ))
            {
                return i + 1;
            }
            count += seg.count;
            bytes += seg.bytes;
        }
        0
    }

    /// Forgets the `n` oldest segments, whose files are gone (for the
    /// store's budget if `budget`, else for the room's bounds); returns the
    /// events they held.
    pub fn forget_oldest(&mut self, n: usize, budget: bool) -> u64 {
        if n == 0 {
            return 0;
        }
        self.stats_cache = None;
        let floor = if budget {
            &mut self.budget_floor
        } else {
            &mut self.floor
        };
        let mut events = 0;
        for seg in self.segments.drain(..n) {
            if seg.count > 0 {
                *floor = (*floor).max(seg.last_offset);
            }
            events += seg.count;
        }
        if let Some(next) = self.segments.first() {
            *floor = (*floor).max(next.prev);
        }
        events
    }

    /// The bytes of the room's records (frames and their 40-byte heads;
    /// not the segment headers), for the store's budget.
    pub fn kept_bytes(&self) -> u64 {
        (self.segments.iter())
            .map(|s| s.bytes + s.count * RECORD_OVERHEAD)
            .sum()
    }

    /// Whether the budget can take something: a segment other than the
    /// newest, or the newest one's events once the next append has started
    /// a new segment.
    pub fn sheddable(&self) -> bool {
        match self.segments.as_slice() {
            [] => false,
            [only] => only.count > 0 && !self.roll_next,
            _ => true,
        }
    }

    /// Why `since`, before the budget floor, is not covered: the room's own
    /// bounds would have dropped the oldest event left (and so every
    /// earlier one too), or only the budget did.
    fn budget_gap(&self, limits: &HistoryLimits, now_ms: u64) -> Gap {
        let (count, bytes) = self
            .segments
            .iter()
            .fold((0, 0), |(c, b), s| (c + s.count, b + s.bytes));
        let oldest_ms = self
            .segments
            .iter()
            .find(|s| s.count > 0)
            .map(|s| s.first_at_ms);
        match oldest_ms {
            Some(oldest) if !within(limits, count, bytes, oldest, now_ms) => Gap::TooShort,
            _ => Gap::Budget,
        }
    }

    /// The readable events after `since`, if there are any: found from the
    /// metadata and a scan of at most an index stride of one segment.
    pub fn locate(&self, dir: &Path, since: u64) -> Result<Option<After>, HistoryError> {
        let Some(k) = self
            .segments
            .iter()
            .position(|s| s.count > 0 && s.last_offset > since)
        else {
            return Ok(None);
        };
        let (later_count, later_bytes) = self.segments[k + 1..]
            .iter()
            .fold((0, 0), |(c, b), s| (c + s.count, b + s.bytes));
        let seg = &self.segments[k];
        let mut point = seg.scan_start(since);
        let mut first_at_ms = seg.first_at_ms;
        if point.offset <= since {
            // Step over the records up to `since`, from the index point.
            let path = segment_path(dir, seg.base);
            let file = File::open(&path).map_err(io_error("opening", &path))?;
            let mut found = false;
            for_each_record(&file, point.pos, seg.len, SCAN_CHUNK, |pos, head| {
                if head.offset > since {
                    point.pos = pos;
                    first_at_ms = head.at_ms;
                    found = true;
                    return false;
                }
                point.before_count += 1;
                point.before_bytes += head.frame_len;
                true
            })
            .map_err(io_error("reading", &path))?;
            if !found {
                return Err(HistoryError::Format {
                    path,
                    reason: format!("no record after offset {since}, though its index says so"),
                });
            }
        }
        Ok(Some(After {
            segment: k,
            pos: point.pos,
            count: later_count + seg.count - point.before_count,
            bytes: later_bytes + seg.bytes - point.before_bytes,
            first_at_ms,
        }))
    }

    /// The cached `stats` answer, if it still holds at `now_ms`: the run
    /// of newest events it counts stays within the bounds until its oldest
    /// event ages out, and no longer run can come back into them later.
    pub fn cached_stats(&self, limits: &HistoryLimits, now_ms: u64) -> Option<HistoryStats> {
        let (at_ms, stats) = self.stats_cache?;
        let holds = now_ms >= at_ms
            && stats.oldest_ms.is_none_or(|oldest| {
                Duration::from_millis(now_ms.saturating_sub(oldest)) <= limits.max_age
            });
        holds.then_some(stats)
    }

    /// What a replay from before every event could return at `now_ms`: the
    /// longest run of newest events within the bounds. Reads a file only
    /// where the bounds end inside a segment (after its first record): from
    /// the last index point outside them to the first record within, at
    /// most [`INDEX_STRIDE`] bytes and a record.
    pub fn retained(
        &self,
        dir: &Path,
        limits: &HistoryLimits,
        now_ms: u64,
    ) -> Result<HistoryStats, HistoryError> {
        let mut stats = HistoryStats::default();
        for seg in self.segments.iter().rev().filter(|s| s.count > 0) {
            let (count, bytes) = (stats.events + seg.count, stats.bytes + seg.bytes);
            if within(limits, count, bytes, seg.first_at_ms, now_ms) {
                stats = HistoryStats {
                    events: count,
                    bytes,
                    oldest_ms: Some(seg.first_at_ms),
                };
                continue;
            }
            // The bound falls inside this segment: find the first record
            // from which on everything is within it, between two points of
            // the index (the first point, the whole segment, is outside).
            let newer = stats;
            let suffix = |before_count: u64, before_bytes: u64| {
                (
                    newer.events + seg.count - before_count,
                    newer.bytes + seg.bytes - before_bytes,
                )
            };
            let first_within = seg.index.partition_point(|p| {
                let (count, bytes) = suffix(p.before_count, p.before_bytes);
                !within(limits, count, bytes, p.at_ms, now_ms)
            });
            let Some(&from) = first_within.checked_sub(1).and_then(|i| seg.index.get(i)) else {
                break;
            };
            let path = segment_path(dir, seg.base);
            let file = File::open(&path).map_err(io_error("opening", &path))?;
            let (mut before_count, mut before_bytes) = (from.before_count, from.before_bytes);
            for_each_record(&file, from.pos, seg.len, SCAN_CHUNK, |_, head| {
                let (count, bytes) = suffix(before_count, before_bytes);
                if within(limits, count, bytes, head.at_ms, now_ms) {
                    stats = HistoryStats {
                        events: count,
                        bytes,
                        oldest_ms: Some(head.at_ms),
                    };
                    return false;
                }
                before_count += 1;
                before_bytes += head.frame_len;
                true
            })
            .map_err(io_error("reading", &path))?;
            break;
        }
        Ok(stats)
    }
}

/// One room, known to the store whether a handle is open or not.
pub struct RoomShared {
    /// Its key in the file cache.
    pub id: u64,
    pub name: String,
    /// Its bounds, resolved from its namespace when the store first knew it.
    pub limits: HistoryLimits,
    pub dir: PathBuf,
    /// Open [`RoomHistory`] handles: `maintain` trims only rooms with none.
    pub handles: AtomicUsize,
    pub log: Mutex<RoomLog>,
}

impl RoomShared {
    /// Deletes the segments that hold only events outside the bounds.
    pub fn trim(&self, shared: &Shared, now_ms: u64) {
        let mut log = lock(&self.log);
        let outdated = log.outdated(&self.limits, now_ms);
        let mut deleted = 0;
        for seg in &log.segments[..outdated] {
            let path = segment_path(&self.dir, seg.base);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(room = self.name, file = %path.display(), error = %e, "could not delete an outdated segment");
                    break;
                }
                _ => deleted += 1,
            }
        }
        log.forget_oldest(deleted, false);
        self.account(shared, &log);
    }

    /// Tells the store's budget what the room holds now.
    pub fn account(&self, shared: &Shared, log: &RoomLog) {
        (shared.budget).update(self.id, log.kept_bytes(), log.sheddable());
    }

    /// Deletes the oldest segment for the store's budget (never the
    /// newest); whether it did. A room with only its newest segment starts
    /// a new one on its next append, so that the budget can then take the
    /// old one: a room being written never holds a whole segment past it.
    pub fn shed(&self, shared: &Shared) -> bool {
        let mut log = lock(&self.log);
        let Some(seg) = log.segments.first().filter(|_| log.segments.len() > 1) else {
            log.roll_next = true;
            self.account(shared, &log);
            return false;
        };
        let path = segment_path(&self.dir, seg.base);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(room = self.name, file = %path.display(), error = %e, "could not delete a segment to stay under the history budget");
                return false;
            }
            _ => {}
        }
        let events = log.forget_oldest(1, true);
        self.account(shared, &log);
        shared.budget.count_drops(events);
        true
    }
}

/// A handle on one room's log.
pub struct DiskRoom {
    room: Arc<RoomShared>,
    shared: Arc<Shared>,
    /// Where records are encoded, reused.
    buf: Vec<u8>,
}

impl DiskRoom {
    /// A handle on `room`, already counted in its `handles` (by
    /// `Rooms::open`, under the table's lock).
    pub fn new(room: Arc<RoomShared>, shared: Arc<Shared>) -> Self {
        DiskRoom {
            room,
            shared,
            buf: Vec::new(),
        }
    }
}

/// The last handle of a room with nothing on disk takes it out of the
/// store's table: naming a room and never writing to it costs nothing.
impl Drop for DiskRoom {
    fn drop(&mut self) {
        // Under the table's lock, like the count's increments.
        let mut rooms = lock(&self.shared.rooms);
        if self.room.handles.fetch_sub(1, Ordering::Relaxed) == 1
            && rooms.forget_if_unwritten(&self.room)
        {
            self.shared.budget.remove(self.room.id);
        }
    }
}

impl DiskRoom {
    /// Creates the room's directory and name file.
    fn create_dir(&self) -> Result<(), HistoryError> {
        let dir = &self.room.dir;
        fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
        let tmp = dir.join("name.tmp");
        fs::write(&tmp, self.room.name.as_bytes()).map_err(io_error("writing", &tmp))?;
        let name = dir.join("name");
        fs::rename(&tmp, &name).map_err(io_error("writing", &name))?;
        self.made(&name, false)?;
        self.made(dir, true)?;
        if let Some(rooms_dir) = dir.parent() {
            self.made(rooms_dir, true)?;
        }
        Ok(())
    }

    /// Starts a new segment whose first record has offset `base`.
    fn start_segment(&self, log: &mut RoomLog, base: u64) -> Result<(), HistoryError> {
        let path = segment_path(&self.room.dir, base);
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("creating", &path))?;
        let started = file
            .write_all(&encode_header(log.last_offset))
            .map_err(io_error("writing", &path))
            .and_then(|()| self.made(&path, false))
            .and_then(|()| self.made(&self.room.dir, true));
        if let Err(e) = started {
            // Not a segment yet: the next attempt creates it anew.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        log.segments
            .push(Segment::new(base, log.last_offset, HEADER_LEN));
        log.roll_next = false;
        self.shared.files.insert(self.room.id, &path, file);
        Ok(())
    }

    /// Makes a new file or directory entry durable as the policy says.
    fn made(&self, path: &Path, is_dir: bool) -> Result<(), HistoryError> {
        match self.shared.options.fsync {
            FsyncPolicy::Always => files::sync(path, is_dir).map_err(io_error("syncing", path)),
            FsyncPolicy::Interval(_) => {
                self.shared.unsynced.add(path, is_dir);
                Ok(())
            }
            FsyncPolicy::Never => Ok(()),
        }
    }
}

impl RoomHistory for DiskRoom {
    fn last_offset(&self) -> u64 {
        lock(&self.room.log).last_offset
    }

    fn append(&mut self, record: Record) -> Result<(), HistoryError> {
        let dir = &self.room.dir;
        let mut log = lock(&self.room.log);
        if record.frame.len() > MAX_FRAME || record.offset <= log.last_offset {
            return Err(HistoryError::Io {
                what: "appending to",
                path: dir.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "offset {} (last {}) or frame of {} bytes out of range",
                        record.offset,
                        log.last_offset,
                        record.frame.len()
                    ),
                ),
            });
        }
        let at_ms = record.at_ms.max(log.last_at_ms);
        self.buf.clear();
        encode_record(&mut self.buf, &record, at_ms);
        let len = self.buf.len() as u64;

        if !log.dir_created {
            self.create_dir()?;
            log.dir_created = true;
        }
        let roll = match log.segments.last() {
            None => true,
            Some(seg) => {
                log.roll_next
                    || !seg.header_ok
                    || (seg.count > 0
                        && seg.len.saturating_add(len) > self.shared.options.segment_bytes)
            }
        };
        if roll {
            self.start_segment(&mut log, record.offset)?;
        }
        let Some(seg) = log.segments.last_mut() else {
            return Err(HistoryError::Format {
                path: dir.clone(),
                reason: "no segment to append to".into(),
            });
        };
        let path = segment_path(dir, seg.base);
        let file = self.shared.files.get(self.room.id, &path)?;
        let pos = seg.len;
        let written =
            (&*file)
                .write_all(&self.buf)
                .and_then(|()| match self.shared.options.fsync {
                    FsyncPolicy::Always => file.sync_data(),
                    FsyncPolicy::Interval(_) => {
                        self.shared.unsynced.add(&path, false);
                        Ok(())
                    }
                    FsyncPolicy::Never => Ok(()),
                });
        if let Err(e) = written {
            // Leave no partial record behind for the next append to follow.
            if file.set_len(pos).is_err() {
                log.roll_next = true;
            }
            return Err(io_error("writing", &path)(e));
        }
        seg.push(
            &RecordHead {
                offset: record.offset,
                at_ms,
                publisher: record.publisher,
                frame_len: record.frame.len() as u64,
                record_len: len,
            },
            pos,
        );
        log.last_offset = record.offset;
        log.last_at_ms = at_ms;
        log.stats_cache = None;
        self.room.account(&self.shared, &log);
        let rolled = roll && log.segments.len() > 1;
        drop(log);
        if rolled {
            self.room.trim(&self.shared, at_ms);
        }
        // Not under this room's lock: shedding takes another room's.
        self.shared.enforce_budget();
        Ok(())
    }

    fn replay(&mut self, since: u64, now_ms: u64) -> Result<Result<Replay, Gap>, HistoryError> {
        let dir = &self.room.dir;
        let log = lock(&self.room.log);
        if since > log.last_offset {
            return Ok(Err(Gap::UnknownPosition));
        }
        if since < log.floor {
            return Ok(Err(Gap::TooShort));
        }
        if since < log.budget_floor {
            return Ok(Err(log.budget_gap(&self.room.limits, now_ms)));
        }
        let Some(after) = log.locate(dir, since)? else {
            return Ok(Ok(Replay {
                count: 0,
                source: Box::new(DiskReplay::new(VecDeque::new(), 0)),
            }));
        };
        if !within(
            &self.room.limits,
            after.count,
            after.bytes,
            after.first_at_ms,
            now_ms,
        ) {
            return Ok(Err(Gap::TooShort));
        }
        let mut parts = VecDeque::new();
        for (i, seg) in log.segments.iter().enumerate().skip(after.segment) {
            if seg.count == 0 {
                continue;
            }
            let path = segment_path(dir, seg.base);
            let file = File::open(&path).map_err(io_error("opening", &path))?;
            let pos = if i == after.segment {
                after.pos
            } else {
                seg.start
            };
            parts.push_back(Part {
                file,
                path,
                pos,
                end: seg.len,
            });
        }
        Ok(Ok(Replay {
            count: after.count,
            source: Box::new(DiskReplay::new(parts, after.count)),
        }))
    }

    fn trim(&mut self, now_ms: u64) {
        self.room.trim(&self.shared, now_ms);
    }

    /// The same answer as after trimming at `now_ms`, but nothing is
    /// deleted (the backplane asks every idle room while it holds its
    /// table's lock). Answered from the segments' metadata; a file is read
    /// only where the bounds end inside a segment (see
    /// [`RoomLog::retained`]), and that answer is kept until an append, a
    /// trim that deletes a segment, the ageing out of its oldest event, or
    /// a `now_ms` before it.
    fn stats(&mut self, now_ms: u64) -> HistoryStats {
        let mut log = lock(&self.room.log);
        if let Some(stats) = log.cached_stats(&self.room.limits, now_ms) {
            return stats;
        }
        match log.retained(&self.room.dir, &self.room.limits, now_ms) {
            Ok(stats) => {
                log.stats_cache = Some((now_ms, stats));
                stats
            }
            Err(e) => {
                tracing::warn!(room = self.room.name, error = %e, "could not read history for its stats");
                HistoryStats::default()
            }
        }
    }

    fn publishes_of(&mut self, session: u64) -> Result<Vec<(u64, u64)>, HistoryError> {
        // Open the newest segments under the lock; read them without it.
        let mut parts = Vec::new();
        {
            let log = lock(&self.room.log);
            let mut budget = PUBLISHES_SCAN_BYTES;
            for seg in log.segments.iter().rev().filter(|s| s.count > 0) {
                if !parts.is_empty() && budget < seg.len - seg.start {
                    break;
                }
                budget = budget.saturating_sub(seg.len - seg.start);
                let path = segment_path(&self.room.dir, seg.base);
                let file = File::open(&path).map_err(io_error("opening", &path))?;
                parts.push((file, path, seg.start, seg.len));
            }
        }
        let mut found = Vec::new();
        for (file, path, start, end) in parts.iter().rev() {
            for_each_record(file, *start, *end, OPEN_CHUNK, |_, head| {
                if head.publisher.session == session {
                    found.push((head.publisher.id, head.offset));
                }
                true
            })
            .map_err(io_error("reading", path))?;
        }
        Ok(found)
    }
}
