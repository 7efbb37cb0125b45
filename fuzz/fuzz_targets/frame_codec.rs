//! Arbitrary bytes through the frame codec, as a datagram and as a stream
//! cut at arbitrary points: see `quicbus::fuzzing::frame_codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quicbus::fuzzing::frame_codec(data));
