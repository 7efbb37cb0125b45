//! Frame encoding and two-phase decoding, without any I/O.
//!
//! A stream is a sequence of `varint(len) ‖ postcard(frame)`. The decoder
//! first asks "is a whole frame buffered?" (an incomplete buffer is
//! `Ok(None)`, not an error), and checks the announced length against the
//! limit before it reserves room for the body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Frame, WireError, FRAME_TAGS};

/// An unsigned LEB128 varint of a `u64` never takes more than 10 bytes.
pub const MAX_VARINT_LEN: usize = 10;

/// Appends `value` as an unsigned LEB128 varint.
pub fn write_varint(buf: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// Reads a varint from the front of `buf`: `Ok(None)` when more bytes are
/// needed, else the value and how many bytes it used.
pub fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, WireError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate().take(MAX_VARINT_LEN) {
        let bits = u64::from(byte & 0x7f);
        // The tenth byte may only carry the single top bit of a u64.
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(WireError::BadLength);
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        Err(WireError::BadLength)
    } else {
        Ok(None)
    }
}

/// How many bytes `value` takes as a varint.
pub fn varint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.max(1).div_ceil(7)
}

/// The largest body an `Event` frame can have for an event name and payload
/// of these lengths (with the largest possible offset). The server refuses
/// a publish whose event would not fit the frame limit, so that every
/// subscriber can read every event.
pub fn event_frame_len(event_len: usize, payload_len: usize) -> usize {
    1 + MAX_VARINT_LEN
        + varint_len(event_len as u64)
        + event_len
        + varint_len(payload_len as u64)
        + payload_len
}

/// Encodes one frame body (what a datagram carries).
pub fn encode(frame: &Frame) -> Bytes {
    let mut out = BytesMut::with_capacity(encoded_len(frame));
    put_body(&mut out, frame);
    out.freeze()
}

/// Encodes the frame `make(pad)` builds (a `PublishCopy` or `EventCopy`)
/// with `pad` as long as needed for the body to be `target` bytes (one less
/// where the pad's length prefix grows by a byte; never padded when the
/// frame is that long already). Sized to a connection's largest datagram,
/// the copy fills a QUIC packet of its own.
pub fn encode_padded(target: usize, make: impl Fn(Bytes) -> Frame) -> Bytes {
    let bare = encoded_len(&make(Bytes::new()));
    // The empty pad is one length byte; a pad of n bytes is n plus its length.
    let extra = target.saturating_sub(bare);
    let mut pad = extra;
    while pad > 0 && pad + varint_len(pad as u64) - 1 > extra {
        pad -= 1;
    }
    encode(&make(Bytes::from(vec![0u8; pad])))
}

/// The tag of `Frame::Datagram` on the wire.
const DATAGRAM_TAG: u8 = 16;

/// A `Datagram` frame encoded once for every subscriber of a room: the
/// frame with room id 0, to be given each connection's own room id by
/// [`DatagramTemplate::for_room`] (room ids belong to a connection).
#[derive(Debug, Clone)]
pub struct DatagramTemplate {
    /// `encode(Datagram { room_id: 0, .. })`: the tag byte, the one-byte
    /// varint 0, then the fields after the room id.
    encoded: Bytes,
}

impl DatagramTemplate {
    /// Encodes the parts every subscriber shares.
    pub fn new(seq: u64, event: String, payload: Bytes) -> Self {
        DatagramTemplate {
            encoded: encode(&Frame::Datagram {
                room_id: 0,
                seq,
                event,
                payload,
            }),
        }
    }

    /// The datagram as one connection receives it, with its id for the room.
    pub fn for_room(&self, room_id: super::RoomId) -> Bytes {
        let rest = self.encoded.get(2..).unwrap_or_default();
        let mut out = BytesMut::with_capacity(1 + MAX_VARINT_LEN + rest.len());
        out.put_u8(DATAGRAM_TAG);
        write_varint(&mut out, u64::from(room_id));
        out.extend_from_slice(rest);
        out.freeze()
    }
}

/// Encodes one frame with its length prefix (what a stream carries).
pub fn encode_framed(frame: &Frame) -> Bytes {
    let body_len = encoded_len(frame);
    let mut out = BytesMut::with_capacity(body_len + MAX_VARINT_LEN);
    write_varint(&mut out, body_len as u64);
    put_body(&mut out, frame);
    out.freeze()
}

/// The size of a frame body, without its length prefix.
pub fn encoded_len(frame: &Frame) -> usize {
    // Serializing plain data into a growable buffer cannot fail.
    postcard::experimental::serialized_size(frame).unwrap_or(0)
}

fn put_body(out: &mut BytesMut, frame: &Frame) {
    let writer = out.writer();
    // `Frame` holds only strings, bytes, integers and options: postcard
    // cannot fail to serialize it into a growable buffer.
    if let Err(err) = postcard::to_io(frame, writer) {
        unreachable!("serializing a frame into memory failed: {err}");
    }
}

/// Decodes exactly one frame body (a datagram, or a body cut from a stream).
pub fn decode(body: &[u8]) -> Result<Frame, WireError> {
    // postcard reports an unknown enum tag as a generic serde error; name it.
    if let Ok(Some((tag, _))) = read_varint(body) {
        if tag >= FRAME_TAGS {
            return Err(WireError::UnknownFrame);
        }
    }
    let (frame, rest) = postcard::take_from_bytes::<Frame>(body).map_err(map_postcard)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(frame)
}

fn map_postcard(err: postcard::Error) -> WireError {
    use postcard::Error as P;
    match err {
        P::DeserializeBadUtf8 => WireError::BadUtf8,
        P::DeserializeUnexpectedEnd => WireError::Truncated,
        P::DeserializeBadEnum => WireError::UnknownFrame,
        other => WireError::Malformed(other.to_string()),
    }
}

/// Accumulates stream bytes and cuts them into frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames whose body is over `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Changes the limit for the frames not yet returned.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Appends bytes received from the stream.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let Some((len, prefix)) = read_varint(&self.buf)? else {
            return Ok(None);
        };
        if len > self.max_frame as u64 {
            return Err(WireError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let len = len as usize;
        if self.buf.len() < prefix + len {
            // The buffer grows only as bytes arrive: a large announced length
            // costs nothing until the peer actually sends it.
            return Ok(None);
        }
        self.buf.advance(prefix);
        let body = self.buf.split_to(len);
        decode(&body).map(Some)
    }

    /// Whether a whole frame (or a malformed prefix) is already buffered,
    /// so that `next_frame` would not need more bytes.
    pub fn has_frame(&self) -> bool {
        match read_varint(&self.buf) {
            Ok(Some((len, prefix))) => {
                len > self.max_frame as u64 || self.buf.len() as u64 >= prefix as u64 + len
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Call at end of stream: leftover bytes mean a frame was cut short.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::UnexpectedEnd)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ErrorCode, DEFAULT_MAX_FRAME};
    use proptest::prelude::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: 1,
                token: Some("secret".into()),
                client_name: "test".into(),
                resume: None,
                copies: true,
            },
            Frame::Join {
                request: 7,
                room: "lobby".into(),
                echo: Some(true),
                since: None,
            },
            Frame::Refresh {
                request: 8,
                token: "eyJ.x.y".into(),
            },
            Frame::Refreshed {
                request: 8,
                expires: 1_800_000_000,
            },
            Frame::Forbidden {
                request: None,
                room: "game.lobby".into(),
                action: crate::wire::Action::Publish,
            },
            Frame::Welcome {
                session_id: 42,
                max_datagram_payload: 1100,
                max_frame: 1 << 20,
                epoch: 7,
                resume_token: "t".into(),
                resumed: crate::wire::ResumeOutcome::New,
            },
            Frame::Error {
                request: None,
                code: ErrorCode::UnknownRoom,
                message: "no room 9".into(),
            },
            Frame::Event {
                offset: u64::MAX,
                event: "chat".into(),
                payload: Bytes::from_static(b"hello"),
            },
            Frame::Datagram {
                room_id: 3,
                seq: 1 << 40,
                event: "pos".into(),
                payload: Bytes::from(vec![0u8; 900]),
            },
            Frame::PublishCopy {
                room_id: 3,
                id: 17,
                event: "say".into(),
                payload: Bytes::from_static(b"hi"),
                ack: Some(9),
                pad: Bytes::new(),
            },
            Frame::EventCopy {
                room_id: 3,
                previous: 309,
                offset: 310,
                event: "say".into(),
                payload: Bytes::from_static(b"hi"),
                pad: Bytes::from(vec![0u8; 200]),
            },
        ]
    }

    #[test]
    fn round_trip_every_sample() {
        for frame in samples() {
            assert_eq!(decode(&encode(&frame)).unwrap(), frame);
            let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
            dec.extend(&encode_framed(&frame));
            assert_eq!(dec.next_frame().unwrap(), Some(frame));
            assert_eq!(dec.next_frame().unwrap(), None);
            dec.finish().unwrap();
        }
    }

    /// The worked example of docs/PROTOCOL.md, byte for byte.
    #[test]
    fn protocol_md_worked_example() {
        use crate::wire::Recovery;
        let hex = |f: &Frame| {
            encode_framed(f)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let hello = Frame::Hello {
            version: 2,
            token: None,
            client_name: "cli".into(),
            resume: None,
            copies: false,
        };
        assert_eq!(hex(&hello), "09 00 02 00 03 63 6c 69 00 00");
        let forbidden = Frame::Forbidden {
            request: Some(3),
            room: "chat".into(),
            action: crate::wire::Action::Publish,
        };
        assert_eq!(hex(&forbidden), "09 18 01 03 04 63 68 61 74 00");
        let refresh = Frame::Refresh {
            request: 4,
            token: "t".into(),
        };
        assert_eq!(hex(&refresh), "04 16 04 01 74");
        let refreshed = Frame::Refreshed {
            request: 4,
            expires: 300,
        };
        assert_eq!(hex(&refreshed), "04 17 04 ac 02");
        let welcome = Frame::Welcome {
            session_id: 1,
            max_datagram_payload: 1200,
            max_frame: 1 << 20,
            epoch: 5,
            resume_token: "t".into(),
            resumed: crate::wire::ResumeOutcome::New,
        };
        assert_eq!(hex(&welcome), "0b 04 01 b0 09 80 80 40 05 01 74 00");
        let join = Frame::Join {
            request: 1,
            room: "chat".into(),
            echo: None,
            since: None,
        };
        assert_eq!(hex(&join), "09 01 01 04 63 68 61 74 00 00");
        let join_since = Frame::Join {
            request: 2,
            room: "chat".into(),
            echo: None,
            since: Some(300),
        };
        assert_eq!(hex(&join_since), "0b 01 02 04 63 68 61 74 00 01 ac 02");
        let joined = Frame::Joined {
            request: 1,
            room_id: 0,
            offset: 0,
            recovery: Recovery::Live,
        };
        assert_eq!(hex(&joined), "05 06 01 00 00 00");
        let recovered = Frame::Joined {
            request: 2,
            room_id: 0,
            offset: 310,
            recovery: Recovery::Recovered { replayed: 10 },
        };
        assert_eq!(hex(&recovered), "07 06 02 00 b6 02 01 0a");
        let header = Frame::EventStream {
            room_id: 0,
            room: "chat".into(),
        };
        assert_eq!(hex(&header), "07 0c 00 04 63 68 61 74");
        let event = Frame::Event {
            offset: 1,
            event: "say".into(),
            payload: Bytes::from_static(b"hi"),
        };
        assert_eq!(hex(&event), "09 0e 01 03 73 61 79 02 68 69");
    }

    #[test]
    fn padded_copies_reach_their_target_size_and_decode() {
        let copy = |pad| Frame::EventCopy {
            room_id: 1,
            previous: 98,
            offset: 99,
            event: "e".into(),
            payload: Bytes::from_static(&[7; 64]),
            pad,
        };
        let bare = encode(&copy(Bytes::new())).len();
        for target in [
            0,
            bare,
            bare + 1,
            bare + 100,
            bare + 128,
            bare + 129,
            1200,
            1452,
        ] {
            let body = encode_padded(target, copy);
            if target <= bare {
                assert_eq!(body.len(), bare);
            } else {
                assert!(
                    body.len() == target || body.len() + 1 == target,
                    "{target}: {}",
                    body.len()
                );
            }
            match decode(&body).unwrap() {
                Frame::EventCopy {
                    offset,
                    payload,
                    pad,
                    ..
                } => {
                    assert_eq!((offset, payload.len()), (99, 64));
                    assert!(pad.iter().all(|&b| b == 0));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn tags_are_stable_and_counted() {
        let first = |f: &Frame| encode(f)[0];
        assert_eq!(first(&samples()[0]), 0, "Hello is tag 0");
        assert_eq!(first(&Frame::Ping { request: 0 }), 17);
        assert_eq!(first(&Frame::Pong { request: 0 }), 18);
        let progress = Frame::Progress {
            room: String::new(),
            through: 0,
        };
        assert_eq!(first(&progress), 19);
        let refresh = Frame::Refresh {
            request: 0,
            token: String::new(),
        };
        assert_eq!(first(&refresh), 22);
        let last = Frame::Forbidden {
            request: None,
            room: String::new(),
            action: crate::wire::Action::History,
        };
        assert_eq!(first(&last) as u64, FRAME_TAGS - 1);
        assert_eq!(decode(&[FRAME_TAGS as u8, 0]), Err(WireError::UnknownFrame));
    }

    #[test]
    fn byte_at_a_time_is_incomplete_until_whole() {
        let frames = samples();
        let mut wire = BytesMut::new();
        for f in &frames {
            wire.extend_from_slice(&encode_framed(f));
        }
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut out = Vec::new();
        for byte in wire.iter() {
            dec.extend(&[*byte]);
            while let Some(f) = dec.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn truncated_body_is_typed() {
        let bytes = encode(&samples()[1]);
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, WireError::Truncated | WireError::Malformed(_)),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn stream_cut_mid_frame_is_unexpected_end() {
        let bytes = encode_framed(&samples()[0]);
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.extend(&bytes[..bytes.len() - 1]);
        assert_eq!(dec.next_frame().unwrap(), None);
        assert_eq!(dec.finish(), Err(WireError::UnexpectedEnd));
    }

    #[test]
    fn an_allowed_but_unsent_length_allocates_nothing() {
        let mut dec = FrameDecoder::new(1 << 20);
        let mut prefix = BytesMut::new();
        write_varint(&mut prefix, 1 << 20);
        dec.extend(&prefix);
        assert_eq!(dec.next_frame(), Ok(None));
        assert!(dec.buf.capacity() < 1024, "{}", dec.buf.capacity());
    }

    #[test]
    fn oversize_prefix_is_refused_before_allocating() {
        let mut dec = FrameDecoder::new(1024);
        let mut prefix = BytesMut::new();
        write_varint(&mut prefix, u64::MAX / 2);
        dec.extend(&prefix);
        assert!(matches!(
            dec.next_frame(),
            Err(WireError::FrameTooLarge { max: 1024, .. })
        ));
        assert!(dec.buf.capacity() < 1024);
    }

    #[test]
    fn overlong_varint_is_bad_length() {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.extend(&[0xff; 11]);
        assert_eq!(dec.next_frame(), Err(WireError::BadLength));
        assert_eq!(read_varint(&[0xff; 9]), Ok(None));
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(WireError::BadLength)
        );
    }

    #[test]
    fn bad_utf8_unknown_tag_and_trailing_bytes_are_typed() {
        // Join { request: 1, room: [0xff, 0xfe], echo: false }
        assert_eq!(decode(&[1, 1, 2, 0xff, 0xfe, 0]), Err(WireError::BadUtf8));
        assert_eq!(decode(&[200, 1]), Err(WireError::UnknownFrame));
        let mut body = encode(&samples()[0]).to_vec();
        body.push(0);
        assert_eq!(decode(&body), Err(WireError::TrailingBytes(1)));
        assert!(decode(&[]).is_err());
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let text = ".{0,40}";
        let payload = proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from);
        prop_oneof![
            (any::<u32>(), proptest::option::of(text), text).prop_map(|(v, t, n)| Frame::Hello {
                version: v,
                token: t,
                client_name: n,
                resume: None,
                copies: v % 2 == 0,
            }),
            (any::<u64>(), text, proptest::option::of(any::<bool>())).prop_map(
                |(r, room, echo)| Frame::Join {
                    request: r,
                    room,
                    echo,
                    since: None
                }
            ),
            (any::<u64>(), text).prop_map(|(request, token)| Frame::Refresh { request, token }),
            (proptest::option::of(any::<u64>()), text, 0..3usize).prop_map(
                |(request, room, action)| Frame::Forbidden {
                    request,
                    room,
                    action: crate::auth::Action::ALL[action],
                }
            ),
            (
                any::<u64>(),
                text,
                payload.clone(),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(_, event, payload, ack)| Frame::Publish {
                    id: 0,
                    event,
                    payload,
                    ack
                }),
            (any::<u64>(), text, payload.clone()).prop_map(|(offset, event, payload)| {
                Frame::Event {
                    offset,
                    event,
                    payload,
                }
            }),
            (any::<u32>(), any::<u64>(), text, payload).prop_map(
                |(room_id, seq, event, payload)| Frame::Datagram {
                    room_id,
                    seq,
                    event,
                    payload
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn any_frame_round_trips(frame in arb_frame()) {
            prop_assert_eq!(decode(&encode(&frame)).unwrap(), frame.clone());
            prop_assert_eq!(encode(&frame).len(), encoded_len(&frame));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let mut dec = FrameDecoder::new(256);
            dec.extend(&bytes);
            for _ in 0..64 {
                match dec.next_frame() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }

        #[test]
        fn varint_round_trips(value in any::<u64>()) {
            let mut buf = BytesMut::new();
            write_varint(&mut buf, value);
            prop_assert_eq!(read_varint(&buf).unwrap(), Some((value, buf.len())));
            prop_assert_eq!(varint_len(value), buf.len());
        }

        #[test]
        fn event_frame_len_bounds_the_real_size(event in ".{0,300}", payload_len in 0usize..70_000) {
            let frame = Frame::Event { offset: u64::MAX, event: event.clone(), payload: Bytes::from(vec![1u8; payload_len]) };
            prop_assert_eq!(encoded_len(&frame), event_frame_len(event.len(), payload_len));
        }
    }

    #[test]
    fn a_datagram_template_gives_each_connection_its_own_room_id() {
        let template = DatagramTemplate::new(300, "pos".into(), Bytes::from_static(b"xy"));
        for room_id in [0, 1, 127, 128, 70_000, u32::MAX] {
            let direct = encode(&Frame::Datagram {
                room_id,
                seq: 300,
                event: "pos".into(),
                payload: Bytes::from_static(b"xy"),
            });
            assert_eq!(template.for_room(room_id), direct, "room id {room_id}");
        }
    }
}
