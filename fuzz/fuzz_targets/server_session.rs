//! Arbitrary operations of one QUIC connection against a real in-process
//! server, with a bystander client that must stay served: see
//! `quicbus::fuzzing::server_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quicbus::fuzzing::server_session(data));
