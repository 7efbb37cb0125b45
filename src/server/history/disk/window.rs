//! A large read buffer over one file, for scanning records.
//!
//! Records are read through it in chunks of hundreds of KiB (one `read`
//! call per chunk, not per record), and any byte range can be asked for:
//! a scan that loses its footing after damage steps forward byte by byte
//! without rereading the file.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

pub struct Window<'f> {
    file: &'f File,
    /// Reads stop here: the end of the data that counts.
    end: u64,
    /// Bytes read at least, when the window moves.
    chunk: usize,
    buf: Vec<u8>,
    /// The file position of `buf[0]`.
    start: u64,
    filled: usize,
    /// Where the file's cursor is, to save a seek per chunk.
    cursor: Option<u64>,
}

impl<'f> Window<'f> {
    /// A window over `file` up to `end`, reusing the allocation `buf`.
    pub fn new(file: &'f File, end: u64, chunk: usize, buf: Vec<u8>) -> Self {
        Window {
            file,
            end,
            chunk,
            buf,
            start: 0,
            filled: 0,
            cursor: None,
        }
    }

    /// Where the data that counts ends.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Gives the allocation back, for the next file.
    pub fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    /// The bytes `pos..pos + n`, or `None` if they reach past the end.
    pub fn get(&mut self, pos: u64, n: usize) -> io::Result<Option<&[u8]>> {
        let Some(want_end) = pos.checked_add(n as u64).filter(|&e| e <= self.end) else {
            return Ok(None);
        };
        if pos < self.start || want_end > self.start + self.filled as u64 {
            self.move_to(pos, n)?;
        }
        let at = (pos - self.start) as usize;
        Ok(Some(&self.buf[at..at + n]))
    }

    /// Refills the buffer so that it starts at `pos` and holds at least `n`
    /// bytes (known to be before `end`), keeping what it already has of them.
    fn move_to(&mut self, pos: u64, n: usize) -> io::Result<()> {
        let held_end = self.start + self.filled as u64;
        if pos >= self.start && pos < held_end {
            let from = (pos - self.start) as usize;
            self.buf.copy_within(from..self.filled, 0);
            self.filled -= from;
        } else {
            self.filled = 0;
        }
        self.start = pos;
        let target = n.max(self.chunk).min((self.end - pos) as usize);
        if self.buf.len() < target {
            self.buf.resize(target, 0);
        }
        let read_from = pos + self.filled as u64;
        let cursor = self.cursor.take();
        if cursor != Some(read_from) {
            let mut file = self.file;
            file.seek(SeekFrom::Start(read_from))?;
        }
        while self.filled < target {
            let mut file = self.file;
            let got = file.read(&mut self.buf[self.filled..target])?;
            if got == 0 {
                break;
            }
            self.filled += got;
        }
        self.cursor = Some(pos + self.filled as u64);
        if self.filled < n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than recorded",
            ));
        }
        Ok(())
    }
}
