//! Reading a replay from segment files, a large chunk at a time.
//!
//! A replay holds its own handles of the segments it reads, opened when it
//! was asked for: a segment deleted by trimming meanwhile stays readable
//! through them, and where each one ends was fixed then too, so records
//! appended later are not part of it. Frames are handed out as slices of
//! the chunk they were read into, not copied one by one.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};

use super::super::{HistoryError, ReplaySource};
use super::format::{parse_head, stored_crc, BODY_FIXED, RECORD_HEAD};
use super::io_error;

/// Bytes read from a segment at a time.
const CHUNK: usize = 256 * 1024;

/// The part of one segment a replay reads.
pub struct Part {
    pub file: File,
    pub path: PathBuf,
    /// The next byte to read.
    pub pos: u64,
    /// Where the replay's records in it end.
    pub end: u64,
}

pub struct DiskReplay {
    parts: VecDeque<Part>,
    /// Frames still to hand out.
    remaining: u64,
    /// Read from the front part and not handed out yet.
    buffered: Bytes,
    /// Whether the front part's file is at its `pos`.
    positioned: bool,
}

impl DiskReplay {
    pub fn new(parts: VecDeque<Part>, count: u64) -> Self {
        DiskReplay {
            parts,
            remaining: count,
            buffered: Bytes::new(),
            positioned: false,
        }
    }

    /// The length of the next whole record, read into `buffered`.
    fn next_len(&mut self) -> Result<u64, HistoryError> {
        loop {
            if self.buffered.len() >= RECORD_HEAD + BODY_FIXED {
                let head = parse_head(&self.buffered).ok_or_else(|| self.damaged())?;
                if self.buffered.len() as u64 >= head.record_len {
                    return Ok(head.record_len);
                }
                self.read_more(head.record_len as usize)?;
            } else {
                self.read_more(RECORD_HEAD + BODY_FIXED)?;
            }
        }
    }

    /// Reads at least up to `need` buffered bytes of the front part, or
    /// moves on to the next part if the front one is done.
    fn read_more(&mut self, need: usize) -> Result<(), HistoryError> {
        let Some(part) = self.parts.front_mut() else {
            return Err(self.ended_early());
        };
        if part.pos == part.end {
            if !self.buffered.is_empty() {
                return Err(self.damaged());
            }
            self.parts.pop_front();
            self.positioned = false;
            return Ok(());
        }
        if !self.positioned {
            (&part.file)
                .seek(SeekFrom::Start(part.pos))
                .map_err(io_error("reading", &part.path))?;
            self.positioned = true;
        }
        let want = (need.max(CHUNK) - self.buffered.len()).min((part.end - part.pos) as usize);
        let mut chunk = BytesMut::with_capacity(self.buffered.len() + want);
        chunk.extend_from_slice(&self.buffered);
        let mut filled = chunk.len();
        chunk.resize(filled + want, 0);
        while filled < chunk.len() {
            let got = (&part.file)
                .read(&mut chunk[filled..])
                .map_err(io_error("reading", &part.path))?;
            if got == 0 {
                return Err(HistoryError::Format {
                    path: part.path.clone(),
                    reason: format!("segment ends before byte {}", part.end),
                });
            }
            filled += got;
        }
        part.pos += want as u64;
        self.buffered = chunk.freeze();
        Ok(())
    }

    fn damaged(&self) -> HistoryError {
        let (path, pos) = self.parts.front().map_or((PathBuf::new(), 0), |p| {
            (p.path.clone(), p.pos - self.buffered.len() as u64)
        });
        HistoryError::Format {
            path,
            reason: format!("damaged record at byte {pos} (found while replaying)"),
        }
    }

    fn ended_early(&self) -> HistoryError {
        HistoryError::Format {
            path: PathBuf::new(),
            reason: format!("history ended {} events before the replay", self.remaining),
        }
    }
}

impl ReplaySource for DiskReplay {
    fn next_batch(&mut self, max_bytes: usize) -> Result<Vec<Bytes>, HistoryError> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while self.remaining > 0 {
            let len = self.next_len()? as usize;
            let frame_len = len - RECORD_HEAD - BODY_FIXED;
            if !batch.is_empty() && bytes + frame_len > max_bytes {
                break;
            }
            if crc32fast::hash(&self.buffered[RECORD_HEAD..len]) != stored_crc(&self.buffered) {
                return Err(self.damaged());
            }
            let record = self.buffered.split_to(len);
            batch.push(record.slice(RECORD_HEAD + BODY_FIXED..));
            bytes += frame_len;
            self.remaining -= 1;
        }
        Ok(batch)
    }
}
