//! The bytes on disk: segment headers, records, and room directory names.
//!
//! Pure functions, so the format is in one place and testable without
//! files. The layout itself is documented in `disk.rs`.

use std::path::{Path, PathBuf};

use super::super::{Publisher, Record};

/// The first seven bytes of every segment; the eighth is the version.
pub const MAGIC: [u8; 7] = *b"QBUSLOG";
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Magic, version, the room's last offset when the segment was started,
/// and the checksum of those 16 bytes.
pub const HEADER_LEN: u64 = 20;
/// The header bytes its checksum covers.
const HEADER_CHECKED: usize = 16;
/// `body_len` and `crc32(body)` before every body.
pub const RECORD_HEAD: usize = 8;
/// Offset, time, publisher session and publish id before the frame.
pub const BODY_FIXED: usize = 32;
/// The bytes of a record beyond its frame.
pub const RECORD_OVERHEAD: u64 = (RECORD_HEAD + BODY_FIXED) as u64;
/// The largest frame a record can hold (its body length is a `u32`).
pub const MAX_FRAME: usize = u32::MAX as usize - BODY_FIXED;

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Ours: the room's newest offset before this segment's first record.
    Valid { prev: u64 },
    /// Our magic with another version: written by a newer quicbus.
    OtherVersion(u8),
    /// Not a segment header at all, or its checksum fails.
    Damaged,
}

pub fn encode_header(prev: u64) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..7].copy_from_slice(&MAGIC);
    header[7] = VERSION;
    header[8..HEADER_CHECKED].copy_from_slice(&prev.to_le_bytes());
    let crc = crc32fast::hash(&header[..HEADER_CHECKED]);
    header[HEADER_CHECKED..].copy_from_slice(&crc.to_le_bytes());
    header
}

pub fn decode_header(bytes: &[u8; HEADER_LEN as usize]) -> Header {
    if bytes[..7] != MAGIC {
        return Header::Damaged;
    }
    let stored = le_u32(&bytes[HEADER_CHECKED..]);
    let mut checked = [0u8; HEADER_CHECKED];
    checked.copy_from_slice(&bytes[..HEADER_CHECKED]);
    if bytes[7] != VERSION {
        // A version 1 header with a flipped bit in its version byte is
        // damage, not a reason to refuse the whole directory.
        checked[7] = VERSION;
        if crc32fast::hash(&checked) == stored {
            return Header::Damaged;
        }
        return Header::OtherVersion(bytes[7]);
    }
    if crc32fast::hash(&checked) != stored {
        return Header::Damaged;
    }
    Header::Valid {
        prev: le_u64(&bytes[8..16]),
    }
}

/// Appends the encoded `record` (with time `at_ms`) to `out`.
pub fn encode_record(out: &mut Vec<u8>, record: &Record, at_ms: u64) {
    let body_len = (BODY_FIXED + record.frame.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&record.offset.to_le_bytes());
    out.extend_from_slice(&at_ms.to_le_bytes());
    out.extend_from_slice(&record.publisher.session.to_le_bytes());
    out.extend_from_slice(&record.publisher.id.to_le_bytes());
    out.extend_from_slice(&record.frame);
    let crc = crc32fast::hash(&out[start + RECORD_HEAD..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The fixed part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHead {
    pub offset: u64,
    pub at_ms: u64,
    pub publisher: Publisher,
    /// Length of the frame.
    pub frame_len: u64,
    /// Length of the whole record on disk.
    pub record_len: u64,
}

/// The fixed part of the record starting at `bytes` (which holds at least
/// [`RECORD_HEAD`] + [`BODY_FIXED`] bytes), if its length is possible at
/// all. Its checksum is not checked.
pub fn parse_head(bytes: &[u8]) -> Option<RecordHead> {
    let body_len = le_u32(&bytes[0..4]) as usize;
    if body_len < BODY_FIXED {
        return None;
    }
    let body = &bytes[RECORD_HEAD..];
    Some(RecordHead {
        offset: le_u64(&body[0..8]),
        at_ms: le_u64(&body[8..16]),
        publisher: Publisher {
            session: le_u64(&body[16..24]),
            id: le_u64(&body[24..32]),
        },
        frame_len: (body_len - BODY_FIXED) as u64,
        record_len: (RECORD_HEAD + body_len) as u64,
    })
}

/// The checksum a record's head says its body has.
pub fn stored_crc(bytes: &[u8]) -> u32 {
    le_u32(&bytes[4..8])
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

/// A segment's file name: its first offset, zero-padded so names sort.
pub fn segment_path(room_dir: &Path, base: u64) -> PathBuf {
    room_dir.join(format!("{base:020}.log"))
}

/// The first offset a segment file name stands for, if it is one.
pub fn segment_base(file_name: &str) -> Option<u64> {
    let digits = file_name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The directory name of room `name`, `attempt` 0 unless that one belongs
/// to another name: FNV-1a 128 of the name in hex. Stable across Rust
/// versions and platforms (unlike std's `DefaultHasher`).
pub fn room_dir_name(name: &str, attempt: u32) -> String {
    const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = name
        .bytes()
        .fold(OFFSET_BASIS, |h, b| (h ^ u128::from(b)).wrapping_mul(PRIME));
    if attempt == 0 {
        format!("{hash:032x}")
    } else {
        format!("{hash:032x}-{attempt}")
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// Parses the whole record `bytes` (exactly its `record_len` bytes) and
    /// checks its checksum.
    fn parse_record(bytes: &[u8]) -> Option<RecordHead> {
        if bytes.len() < RECORD_HEAD + BODY_FIXED {
            return None;
        }
        let head = parse_head(bytes)?;
        let whole = head.record_len == bytes.len() as u64;
        (whole && crc32fast::hash(&bytes[RECORD_HEAD..]) == stored_crc(bytes)).then_some(head)
    }

    #[test]
    fn a_record_round_trips_and_a_flipped_bit_is_caught() {
        let record = Record {
            offset: 7,
            at_ms: 1_000,
            publisher: Publisher { session: 3, id: 9 },
            frame: Bytes::from_static(b"hello"),
        };
        let mut buf = Vec::new();
        encode_record(&mut buf, &record, 1_001);
        let head = parse_record(&buf).unwrap();
        assert_eq!(
            head,
            RecordHead {
                offset: 7,
                at_ms: 1_001,
                publisher: Publisher { session: 3, id: 9 },
                frame_len: 5,
                record_len: buf.len() as u64,
            }
        );
        buf[20] ^= 1;
        assert_eq!(parse_record(&buf), None);
    }

    #[test]
    fn headers_and_names_are_what_the_docs_say() {
        let header = encode_header(42);
        assert_eq!(&header[..8], b"QBUSLOG\x01");
        assert_eq!(&header[8..16], &42u64.to_le_bytes());
        assert_eq!(&header[16..], &crc32fast::hash(&header[..16]).to_le_bytes());
        assert_eq!(decode_header(&header), Header::Valid { prev: 42 });
        for byte in 8..20 {
            let mut flipped = header;
            flipped[byte] ^= 0x10;
            assert_eq!(decode_header(&flipped), Header::Damaged, "byte {byte}");
        }
        let mut flipped_version = header;
        flipped_version[7] ^= 0x10;
        assert_eq!(decode_header(&flipped_version), Header::Damaged);
        // A newer version's header (whatever it holds after the version).
        let mut newer = [0xa5; HEADER_LEN as usize];
        newer[..7].copy_from_slice(&MAGIC);
        newer[7] = 2;
        assert_eq!(decode_header(&newer), Header::OtherVersion(2));
        assert_eq!(decode_header(&[0; HEADER_LEN as usize]), Header::Damaged);
        assert_eq!(
            segment_path(Path::new("r"), 1),
            Path::new("r/00000000000000000001.log")
        );
        assert_eq!(segment_base("00000000000000000001.log"), Some(1));
        assert_eq!(segment_base("1.log"), None);
        // FNV-1a 128 of the empty string is its offset basis.
        assert_eq!(room_dir_name("", 0), "6c62272e07bb014262b821756295c58d");
        assert_eq!(room_dir_name("", 2), "6c62272e07bb014262b821756295c58d-2");
        assert_eq!(room_dir_name("a", 0), "d228cb696f1a8caf78912b704e4a8964");
    }
}
