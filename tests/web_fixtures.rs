//! The fixtures the JavaScript codec is tested against
//! (`web/test/fixtures/frames.json`): every frame type, encoded by the Rust
//! encoder, beside its serde JSON form. This test writes the file when it
//! is missing and fails when the committed one differs from what the Rust
//! encoder produces now (after rewriting it), so the JavaScript and Rust
//! codecs cannot drift apart unnoticed.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::PathBuf;

use bytes::Bytes;
use quicbus::wire::{
    self, Action, ErrorCode, Frame, Recovery, RecoveryFailure, Resume, ResumeOutcome, FRAME_TAGS,
};

/// Values beyond 2^53 (where JavaScript numbers stop being exact) and at
/// the top of the u64 range, so the JavaScript side must use BigInt.
const BIG: u64 = (1 << 53) + 1;
const TOP: u64 = u64::MAX;

fn frames() -> Vec<(&'static str, Frame)> {
    let bytes = |b: &'static [u8]| Bytes::from_static(b);
    vec![
        (
            "hello-minimal",
            Frame::Hello {
                version: wire::PROTOCOL_VERSION,
                token: None,
                client_name: "cli".into(),
                resume: None,
                copies: false,
            },
        ),
        (
            "hello-resume",
            Frame::Hello {
                version: wire::PROTOCOL_VERSION,
                token: Some("eyJ.token.sig".into()),
                client_name: "browser ✓".into(),
                resume: Some(Resume {
                    token: "0123456789abcdef0123456789abcdef".into(),
                    epoch: TOP,
                }),
                copies: true,
            },
        ),
        (
            "join-since",
            Frame::Join {
                request: 7,
                room: "chat".into(),
                echo: Some(true),
                since: Some(BIG),
            },
        ),
        (
            "join-live",
            Frame::Join {
                request: 8,
                room: "game".into(),
                echo: None,
                since: None,
            },
        ),
        (
            "leave",
            Frame::Leave {
                request: 9,
                room_id: 3,
            },
        ),
        (
            "resolve",
            Frame::Resolve {
                request: 300,
                room: "cursors".into(),
            },
        ),
        (
            "welcome-new",
            Frame::Welcome {
                session_id: BIG,
                max_datagram_payload: 1162,
                max_frame: wire::DEFAULT_MAX_FRAME as u32,
                epoch: 0xdead_beef_cafe_f00d,
                resume_token: "0123456789abcdef0123456789abcdef".into(),
                resumed: ResumeOutcome::New,
            },
        ),
        (
            "welcome-not-resumed",
            Frame::Welcome {
                session_id: 7,
                max_datagram_payload: 0,
                max_frame: 65_536,
                epoch: 5,
                resume_token: "ab".into(),
                resumed: ResumeOutcome::NotResumed {
                    reason: RecoveryFailure::TokenExpired,
                },
            },
        ),
        (
            "reject",
            Frame::Reject {
                code: ErrorCode::UnsupportedVersion,
                reason: "client speaks 1, server speaks 2".into(),
                server_version: wire::PROTOCOL_VERSION,
            },
        ),
        (
            "joined-recovered",
            Frame::Joined {
                request: 2,
                room_id: 0,
                offset: 310,
                recovery: Recovery::Recovered { replayed: 10 },
            },
        ),
        (
            "joined-not-recovered",
            Frame::Joined {
                request: 3,
                room_id: 1,
                offset: TOP,
                recovery: Recovery::NotRecovered {
                    reason: RecoveryFailure::HistoryForbidden,
                },
            },
        ),
        (
            "left",
            Frame::Left {
                request: 10,
                room_id: 3,
            },
        ),
        (
            "resolved",
            Frame::Resolved {
                request: 300,
                room_id: 4,
            },
        ),
        (
            "ack",
            Frame::Ack {
                request: 41,
                offset: BIG,
            },
        ),
        (
            "error-unavailable",
            Frame::Error {
                request: Some(2),
                code: ErrorCode::Unavailable,
                message: "disk full".into(),
            },
        ),
        (
            "error-last-code",
            Frame::Error {
                request: None,
                code: ErrorCode::DatagramsDisabled,
                message: String::new(),
            },
        ),
        (
            "publish-stream",
            Frame::PublishStream {
                room: "chat".into(),
            },
        ),
        (
            "event-stream",
            Frame::EventStream {
                room_id: u32::MAX,
                room: "chat".into(),
            },
        ),
        (
            "publish-acked",
            Frame::Publish {
                id: 1,
                event: "say".into(),
                payload: bytes(b"hi"),
                ack: Some(BIG),
            },
        ),
        (
            "publish-empty",
            Frame::Publish {
                id: TOP,
                event: String::new(),
                payload: Bytes::new(),
                ack: None,
            },
        ),
        (
            "event",
            Frame::Event {
                offset: 1,
                event: "say".into(),
                payload: bytes(b"hi"),
            },
        ),
        (
            "event-binary",
            Frame::Event {
                offset: BIG,
                event: "pos".into(),
                payload: Bytes::from((0..=255u8).collect::<Vec<_>>()),
            },
        ),
        (
            "publish-datagram",
            Frame::PublishDatagram {
                room_id: 0,
                event: "say".into(),
                payload: bytes(b"hi"),
            },
        ),
        (
            "datagram",
            Frame::Datagram {
                room_id: 2,
                seq: BIG,
                event: "pos".into(),
                payload: bytes(&[1, 2]),
            },
        ),
        ("ping", Frame::Ping { request: 128 }),
        ("pong", Frame::Pong { request: 16_384 }),
        (
            "progress",
            Frame::Progress {
                room: "chat".into(),
                through: 1_048_576,
            },
        ),
        (
            "publish-copy",
            Frame::PublishCopy {
                room_id: 1,
                id: 5,
                event: "say".into(),
                payload: bytes(b"hi"),
                ack: Some(6),
                pad: Bytes::from(vec![0u8; 40]),
            },
        ),
        (
            "event-copy",
            Frame::EventCopy {
                room_id: 1,
                previous: 9,
                offset: BIG,
                event: "say".into(),
                payload: bytes(b"hi"),
                pad: Bytes::new(),
            },
        ),
        (
            "refresh",
            Frame::Refresh {
                request: 4,
                token: "t".into(),
            },
        ),
        (
            "refreshed",
            Frame::Refreshed {
                request: 4,
                expires: 300,
            },
        ),
        (
            "forbidden-history",
            Frame::Forbidden {
                request: None,
                room: "ops".into(),
                action: Action::History,
            },
        ),
        (
            "forbidden-publish",
            Frame::Forbidden {
                request: Some(3),
                room: "chat".into(),
                action: Action::Publish,
            },
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The fixtures file as it must be: one JSON object per line, in a JSON
/// array, so that a diff shows which frame changed.
fn render() -> String {
    let lines: Vec<String> = frames()
        .into_iter()
        .map(|(name, frame)| {
            let body = wire::encode(&frame);
            let framed = wire::encode_framed(&frame);
            assert_eq!(wire::decode(&body).unwrap(), frame, "{name} round-trips");
            let entry = serde_json::json!({
                "name": name,
                "frame": frame,
                "body_hex": hex(&body),
                "framed_hex": hex(&framed),
            });
            serde_json::to_string(&entry).unwrap()
        })
        .collect();
    format!("[\n{}\n]\n", lines.join(",\n"))
}

#[test]
fn every_frame_type_has_a_fixture() {
    let mut tags: Vec<u8> = frames()
        .iter()
        .map(|(_, frame)| wire::encode(frame)[0])
        .collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags.len() as u64, FRAME_TAGS, "tags covered: {tags:?}");
}

#[test]
fn javascript_fixtures_match_the_rust_encoder() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web/test/fixtures/frames.json");
    let wanted = render();
    let current = std::fs::read_to_string(&path).ok();
    if current.as_deref() == Some(wanted.as_str()) {
        return;
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &wanted).unwrap();
    assert!(
        current.is_none(),
        "{} was out of date with the Rust encoder and has been rewritten: \
         run the JavaScript tests again and commit it",
        path.display()
    );
}
