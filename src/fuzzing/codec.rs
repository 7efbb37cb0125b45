//! The `frame_codec` harness: the two ways bytes become frames, the
//! datagram path ([`wire::decode`] of one body) and the stream path
//! ([`FrameDecoder`], what `FrameReader` uses), fed arbitrary bytes.

use crate::wire::{self, Frame, FrameDecoder, WireError, MAX_VARINT_LEN};

/// Checks, for any `data`:
/// - decoding never panics, as a datagram body (all of `data`) or as a
///   stream (`data[3..]`, under the limits `data[0]` and `data[1]` choose,
///   0 to 1020 bytes: small, so that short inputs cross them; the first
///   frame gets one, the later ones the other, as the control stream gives
///   `Hello` less);
/// - a frame that decodes re-encodes to no more bytes than it came from,
///   and decodes again, on both paths, to the same frame;
/// - the stream decoder gives the same frames and the same error whether
///   the stream arrives whole or cut into chunks (sizes drawn from
///   `data[2]`), says truthfully whether a frame is buffered, and never
///   holds more than one frame's limit of bytes it has not returned.
///
/// Panics when one of these does not hold.
pub fn frame_codec(data: &[u8]) {
    if let Ok(frame) = wire::decode(data) {
        assert_round_trip(&frame, data.len());
    }
    let [first_limit, later_limit, seed, stream @ ..] = data else {
        return;
    };
    let limits = Limits {
        first: usize::from(*first_limit) * 4,
        later: usize::from(*later_limit) * 4,
    };
    let whole = cut(stream, limits, std::iter::empty());
    let pieces = cut(stream, limits, chunk_sizes(*seed));
    assert_eq!(
        whole, pieces,
        "the stream decoded differently when cut into chunks (seed {seed})"
    );
}

/// The frame limits of one stream: for its first frame, then for the rest.
#[derive(Debug, Clone, Copy)]
struct Limits {
    first: usize,
    later: usize,
}

/// What a stream decoder made of a whole stream.
#[derive(Debug, PartialEq)]
struct Cut {
    frames: Vec<Frame>,
    /// The first error, or what `finish` said at the end of the stream.
    end: Result<(), WireError>,
}

/// Feeds `stream` to a decoder in chunks of the given sizes (the rest at
/// once when they run out), taking every frame as soon as it is complete.
fn cut(stream: &[u8], limits: Limits, mut chunks: impl Iterator<Item = usize>) -> Cut {
    let mut decoder = FrameDecoder::new(limits.first);
    let mut limit = limits.first;
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        loop {
            let ready = decoder.has_frame();
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(ready, "has_frame said no, next_frame gave {frame:?}");
                    assert_round_trip(&frame, limit);
                    frames.push(frame);
                    limit = limits.later;
                    decoder.set_max_frame(limit);
                }
                Ok(None) => {
                    assert!(!ready, "has_frame said yes, next_frame wants more bytes");
                    // An unfinished frame is a prefix and less than its body.
                    assert!(
                        decoder.buffered() < MAX_VARINT_LEN + limit,
                        "{} bytes held for a frame limit of {limit}",
                        decoder.buffered()
                    );
                    break;
                }
                Err(e) => {
                    assert!(ready, "has_frame said no, next_frame failed with {e:?}");
                    return Cut {
                        frames,
                        end: Err(e),
                    };
                }
            }
        }
        if rest.is_empty() {
            return Cut {
                frames,
                end: decoder.finish(),
            };
        }
        let n = chunks.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (chunk, after) = rest.split_at(n);
        decoder.extend(chunk);
        rest = after;
    }
}

/// Chunk sizes from 1 to a seed-chosen maximum, in a seed-chosen order
/// (xorshift: cheap, and the same seed always cuts the same way).
fn chunk_sizes(seed: u8) -> impl Iterator<Item = usize> {
    let largest = 1 + u32::from(seed % 32);
    let mut state = 0x9e37_79b9_u32 ^ u32::from(seed);
    std::iter::from_fn(move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        Some((1 + state % largest) as usize)
    })
}

/// A decoded frame, decoded from a body of at most `body_len` bytes,
/// survives encoding on both paths unchanged, and grows on neither.
fn assert_round_trip(frame: &Frame, body_len: usize) {
    let body = wire::encode(frame);
    assert_eq!(
        body.len(),
        wire::encoded_len(frame),
        "encoded_len of {frame:?}"
    );
    assert!(
        body.len() <= body_len,
        "{frame:?} decoded from {body_len} bytes re-encodes to {}",
        body.len()
    );
    assert_eq!(
        wire::decode(&body).as_ref(),
        Ok(frame),
        "datagram round trip"
    );
    let mut decoder = FrameDecoder::new(body.len());
    decoder.extend(&wire::encode_framed(frame));
    assert_eq!(
        decoder.next_frame().as_ref(),
        Ok(&Some(frame.clone())),
        "stream round trip"
    );
    assert_eq!(decoder.buffered(), 0, "stream round trip left bytes behind");
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn chunk_sizes_stay_within_the_seeds_maximum() {
        for seed in [0, 1, 31, 32, 255] {
            let largest = 1 + usize::from(seed % 32);
            assert!(chunk_sizes(seed)
                .take(1000)
                .all(|n| (1..=largest).contains(&n)));
        }
    }

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut stream = vec![255, 255, 3];
        for payload in [&b""[..], b"hi", &[7; 300]] {
            stream.extend_from_slice(&wire::encode_framed(&Frame::Event {
                offset: 9,
                event: "e".into(),
                payload: Bytes::copy_from_slice(payload),
            }));
        }
        let limits = Limits {
            first: 1020,
            later: 1020,
        };
        let whole = cut(&stream[3..], limits, std::iter::empty());
        assert_eq!((whole.frames.len(), whole.end), (3, Ok(())));
        frame_codec(&stream);
    }
}
