//! One segment file: what is kept of it in RAM, and reading it.
//!
//! A room keeps no events in RAM, only a [`Segment`] per file: where its
//! readable records are, their count, bytes and times, and a sparse index
//! (a point every [`INDEX_STRIDE`] bytes) so that finding a position reads
//! at most that much of the file. Opening a store verifies every record
//! with [`verify`], which also decides what damage means.

use std::fs::File;
use std::io;
use std::path::Path;

use super::super::HistoryError;
use super::format::{
    decode_header, parse_head, stored_crc, Header, RecordHead, BODY_FIXED, HEADER_LEN, RECORD_HEAD,
};
use super::window::Window;
use super::{io_error, OPEN_CHUNK};

/// Bytes of file between two points of a segment's sparse index.
pub const INDEX_STRIDE: u64 = 64 * 1024;

/// In a scan after damage, a record dated this far in the future is taken
/// for garbage.
const MAX_CLOCK_SKEW_MS: u64 = 24 * 3600 * 1000;

/// Most bytes checksummed when looking for good records after damage at
/// the end of a room's history; past it, the damage is not cut off.
const TAIL_CHECK_BYTES: u64 = 256 * 1024 * 1024;

/// A record the index can start a scan at.
#[derive(Debug, Clone, Copy)]
pub struct IndexPoint {
    pub offset: u64,
    pub at_ms: u64,
    pub pos: u64,
    /// Readable records (and their frame bytes) of the segment before it.
    pub before_count: u64,
    pub before_bytes: u64,
}

/// What a room keeps in RAM of one segment file.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The offset in the file name.
    pub base: u64,
    /// From the header: the room's newest offset before this segment.
    pub prev: u64,
    /// Whether the header is ours (appends go to a new segment otherwise).
    pub header_ok: bool,
    /// Where the readable records start (after the header, or after damage).
    pub start: u64,
    /// Where they end: the file's length as far as it counts.
    pub len: u64,
    pub count: u64,
    /// Frame bytes of the readable records.
    pub bytes: u64,
    pub first_offset: u64,
    pub last_offset: u64,
    pub first_at_ms: u64,
    pub last_at_ms: u64,
    pub last_frame_len: u64,
    pub index: Vec<IndexPoint>,
}

impl Segment {
    pub fn new(base: u64, prev: u64, start: u64) -> Self {
        Segment {
            base,
            prev,
            header_ok: true,
            start,
            len: start,
            count: 0,
            bytes: 0,
            first_offset: 0,
            last_offset: 0,
            first_at_ms: 0,
            last_at_ms: 0,
            last_frame_len: 0,
            index: Vec::new(),
        }
    }

    /// Counts the record `head` written at `pos`, right after the others.
    pub fn push(&mut self, head: &RecordHead, pos: u64) {
        if self
            .index
            .last()
            .is_none_or(|p| pos >= p.pos.saturating_add(INDEX_STRIDE))
        {
            self.index.push(IndexPoint {
                offset: head.offset,
                at_ms: head.at_ms,
                pos,
                before_count: self.count,
                before_bytes: self.bytes,
            });
        }
        if self.count == 0 {
            self.first_offset = head.offset;
            self.first_at_ms = head.at_ms;
        }
        self.count += 1;
        self.bytes += head.frame_len;
        self.last_offset = head.offset;
        self.last_at_ms = head.at_ms;
        self.last_frame_len = head.frame_len;
        self.len = pos.saturating_add(head.record_len);
    }

    /// Nothing in it is readable any more (it is older than damage).
    pub fn clear(&mut self) {
        *self = Segment {
            header_ok: self.header_ok,
            len: self.len,
            ..Segment::new(self.base, self.prev, self.len)
        };
    }

    /// Where a scan for the first record after `since` can start: the last
    /// index point at or before it, or the first record.
    pub fn scan_start(&self, since: u64) -> IndexPoint {
        let after = self.index.partition_point(|p| p.offset <= since);
        match after.checked_sub(1) {
            Some(i) => self.index[i],
            None => IndexPoint {
                offset: self.first_offset,
                at_ms: self.first_at_ms,
                pos: self.start,
                before_count: 0,
                before_bytes: 0,
            },
        }
    }
}

/// Reads the records of `file` between `from` and `to` (trusted: written by
/// us or verified on open), calling `each(pos, head)` until it says stop.
pub fn for_each_record(
    file: &File,
    from: u64,
    to: u64,
    chunk: usize,
    mut each: impl FnMut(u64, &RecordHead) -> bool,
) -> io::Result<()> {
    let mut window = Window::new(file, to, chunk, Vec::new());
    let mut pos = from;
    while pos < to {
        let head = window
            .get(pos, RECORD_HEAD + BODY_FIXED)?
            .and_then(parse_head)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad record at {pos}"))
            })?;
        if !each(pos, &head) {
            break;
        }
        pos = pos.saturating_add(head.record_len);
    }
    Ok(())
}

/// The newest record accepted so far, which the next one must follow.
/// Only checksummed records move it: a header's `prev` never does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Last {
    pub offset: u64,
    pub at_ms: u64,
}

/// What [`verify`] found in a segment.
#[derive(Debug)]
pub struct Verified {
    /// What its header says came before it; `None` if the header is
    /// damaged (its checksum fails, or `prev` is not before the segment).
    pub prev: Option<u64>,
    /// Its readable records (after the last damage in it).
    pub segment: Segment,
    /// The newest offset that damage inside this segment may have taken.
    pub damage_floor: Option<u64>,
    /// Damage runs to the end of the file: not cut off, because the file
    /// is not the room's last segment or has good records after the
    /// damage that do not follow the others. Appends go to a new segment.
    pub damaged_to_end: bool,
    /// The newest offset of the checksummed records found after damage
    /// that runs to the end (they are kept on disk, not read).
    pub stray_offset: Option<u64>,
    pub last: Last,
}

/// Where the room and file are, for messages.
pub struct Place<'a> {
    pub room: &'a str,
    pub path: &'a Path,
    pub is_last: bool,
}

/// Checks a segment's header and every record: its length, its checksum,
/// and that offsets and times never go back. After a bad record it steps
/// forward byte by byte until a record is good again; everything before
/// that is lost. Damage at the end of the room's last segment is a torn
/// write, cut off, but only if no record with a valid checksum follows it.
/// A damaged header loses only its `prev`. `Ok(None)`: the file held
/// nothing and is gone (removed, or moved aside).
pub fn verify(
    place: &Place,
    base: u64,
    mut last: Last,
    now_ms: u64,
    buf: &mut Vec<u8>,
) -> Result<Option<Verified>, HistoryError> {
    let path = place.path;
    let file = File::open(path).map_err(io_error("opening", path))?;
    let file_len = file
        .metadata()
        .map_err(io_error("reading the size of", path))?
        .len();
    if file_len < HEADER_LEN && place.is_last {
        tracing::warn!(room = place.room, file = %path.display(), "removing a segment whose header was never completely written");
        std::fs::remove_file(path).map_err(io_error("removing", path))?;
        return Ok(None);
    }
    let mut window = Window::new(&file, file_len, OPEN_CHUNK, std::mem::take(buf));
    let mut header_bytes = [0u8; HEADER_LEN as usize];
    let header = match window.get(0, HEADER_LEN as usize) {
        Ok(Some(bytes)) => {
            header_bytes.copy_from_slice(bytes);
            decode_header(&header_bytes)
        }
        Ok(None) => Header::Damaged,
        Err(e) => return Err(io_error("reading", path)(e)),
    };
    let mut prev = match header {
        Header::Valid { prev } => Some(prev),
        Header::Damaged => None,
        Header::OtherVersion(version) => {
            return Err(HistoryError::Format {
                path: path.to_owned(),
                reason: format!("segment format version {version}; this quicbus reads version 1"),
            })
        }
    };
    let mut segment = Segment::new(base, 0, HEADER_LEN);
    let mut first_offset = None;
    let mut damaged_at = None;
    let mut damage_floor = None;
    let mut pos = HEADER_LEN;
    while pos < file_len {
        let good = check_record(&mut window, pos, last, damaged_at.is_some(), now_ms)
            .map_err(io_error("reading", path))?;
        match good {
            Some(head) => {
                if let Some(at) = damaged_at.take() {
                    tracing::warn!(room = place.room, file = %path.display(), position = at, readable_from = pos, "damaged history: the events before this point are dropped");
                    damage_floor = Some(head.offset.saturating_sub(1));
                    segment = Segment::new(base, 0, pos);
                }
                first_offset.get_or_insert(head.offset);
                segment.push(&head, pos);
                last = Last {
                    offset: head.offset,
                    at_ms: head.at_ms,
                };
                pos = pos.saturating_add(head.record_len);
            }
            None => {
                damaged_at.get_or_insert(pos);
                pos += 1;
            }
        }
    }
    // `prev` is the newest offset before the segment: before its name's
    // offset and before its first record's.
    if prev.is_some_and(|p| p >= base || first_offset.is_some_and(|first| p >= first)) {
        prev = None;
    }
    if prev.is_none() {
        tracing::warn!(room = place.room, file = %path.display(), "damaged segment header: its records are read, what it said came before them is not known");
    }
    let tail = match damaged_at {
        Some(at) if place.is_last => {
            Some(checksummed_records(&mut window, at).map_err(io_error("reading", path))?)
        }
        _ => None,
    };
    *buf = window.into_buf();
    drop(file);

    let mut damaged_to_end = false;
    let mut stray_offset = None;
    match (damaged_at, tail) {
        (None, _) => {}
        (Some(at), Some(Tail::Clean)) if prev.is_none() && segment.count == 0 => {
            let aside = path.with_extension("damaged");
            tracing::warn!(room = place.room, file = %path.display(), position = at, moved_to = %aside.display(), "segment without a readable header or record; moved aside");
            std::fs::rename(path, &aside).map_err(io_error("moving aside", path))?;
            return Ok(None);
        }
        (Some(at), Some(Tail::Clean)) => {
            tracing::warn!(room = place.room, file = %path.display(), position = at, "torn write at the end of the history; cut off");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_error("opening", path))?;
            file.set_len(at).map_err(io_error("truncating", path))?;
            segment.len = at;
        }
        (Some(at), Some(Tail::Records { newest })) => {
            tracing::warn!(room = place.room, file = %path.display(), position = at, "damaged history followed by records that do not follow it: the events before them are dropped, the file is kept as it is");
            damaged_to_end = true;
            stray_offset = newest;
        }
        (Some(at), None) => {
            tracing::warn!(room = place.room, file = %path.display(), position = at, "damaged history up to the end of this segment: the events before the next segment are dropped");
            damaged_to_end = true;
        }
    }
    segment.prev = prev.unwrap_or(0);
    segment.header_ok = prev.is_some();
    Ok(Some(Verified {
        prev,
        segment,
        damage_floor,
        damaged_to_end,
        stray_offset,
        last,
    }))
}

/// Whether damage that runs to the end of a file may be cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// No record with a valid checksum starts after the damage.
    Clean,
    /// Some do (the newest offset among them, if all were looked at): they
    /// are not a torn write.
    Records { newest: Option<u64> },
}

/// Looks for records with a valid checksum anywhere in the window from
/// `from` on, whatever their offsets and times. Checksumming more than
/// [`TAIL_CHECK_BYTES`] gives up, taken as "there may be some".
fn checksummed_records(window: &mut Window, from: u64) -> io::Result<Tail> {
    let mut budget = TAIL_CHECK_BYTES;
    let mut found = false;
    let mut newest: Option<u64> = None;
    let mut pos = from;
    while pos < window.end() {
        let Some(head) = head_at(window, pos)? else {
            pos += 1;
            continue;
        };
        if head.record_len > budget {
            return Ok(Tail::Records { newest: None });
        }
        budget -= head.record_len;
        if checksum_ok(window, pos, head.record_len)? {
            found = true;
            newest = Some(newest.map_or(head.offset, |n| n.max(head.offset)));
            pos = pos.saturating_add(head.record_len);
        } else {
            pos += 1;
        }
    }
    Ok(if found {
        Tail::Records { newest }
    } else {
        Tail::Clean
    })
}

/// The head of a record that could start at `pos`: its length possible,
/// and the whole record inside the window.
fn head_at(window: &mut Window, pos: u64) -> io::Result<Option<RecordHead>> {
    let Some(fixed) = window.get(pos, RECORD_HEAD + BODY_FIXED)? else {
        return Ok(None);
    };
    let Some(head) = parse_head(fixed) else {
        return Ok(None);
    };
    let fits = pos
        .checked_add(head.record_len)
        .is_some_and(|end| end <= window.end());
    Ok(fits.then_some(head))
}

/// The record at `pos` if it is whole, its checksum right, and it follows
/// `last`. After damage (`resync`), its time must also be plausible before
/// its checksum is worth computing: in garbage, most lengths look possible.
fn check_record(
    window: &mut Window,
    pos: u64,
    last: Last,
    resync: bool,
    now_ms: u64,
) -> io::Result<Option<RecordHead>> {
    let Some(head) = head_at(window, pos)? else {
        return Ok(None);
    };
    if head.offset <= last.offset || head.at_ms < last.at_ms {
        return Ok(None);
    }
    if resync && head.at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Ok(None);
    }
    Ok(checksum_ok(window, pos, head.record_len)?.then_some(head))
}

/// Whether the body of the record at `pos`, `len` bytes long in all (and
/// inside the window), has the checksum its head says.
fn checksum_ok(window: &mut Window, pos: u64, len: u64) -> io::Result<bool> {
    let Some(fixed) = window.get(pos, RECORD_HEAD)? else {
        return Ok(false);
    };
    let expected = stored_crc(fixed);
    // Checksum the body chunk by chunk: a long record needs no long buffer.
    let mut hasher = crc32fast::Hasher::new();
    let mut at = pos.saturating_add(RECORD_HEAD as u64);
    let end = pos.saturating_add(len);
    while at < end {
        let n = (end - at).min(OPEN_CHUNK as u64) as usize;
        let Some(bytes) = window.get(at, n)? else {
            return Ok(false);
        };
        hasher.update(bytes);
        at += n as u64;
    }
    Ok(hasher.finalize() == expected)
}
