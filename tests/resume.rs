//! Session resume on the server, seen on the wire: a publish retried after
//! a reconnect (same id) is published once and answered as the first time.

#![allow(clippy::unwrap_used)]

mod common;

use common::{RawPeer, TestServer};
use quicbus::wire::{self, Frame, RecoveryFailure, Resume, ResumeOutcome, PROTOCOL_VERSION};

/// Connects raw, says Hello (with `resume`), returns the peer, token, epoch and outcome.
async fn hello(
    server: &TestServer,
    resume: Option<Resume>,
) -> (RawPeer, String, u64, ResumeOutcome) {
    let mut peer = server.raw().await;
    peer.send_control(&Frame::Hello {
        version: PROTOCOL_VERSION,
        token: None,
        client_name: "raw".into(),
        resume,
        copies: false,
    })
    .await;
    match peer.next_control().await {
        Frame::Welcome {
            resume_token,
            epoch,
            resumed,
            ..
        } => (peer, resume_token, epoch, resumed),
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// Publishes `id` on a fresh publish stream of `room` with an ack request;
/// returns the acked offset. (Each call opens a new stream, as a client does
/// after reconnecting.)
async fn publish(peer: &mut RawPeer, room: &str, ids: &[u64]) -> Vec<u64> {
    let mut send = peer.conn.open_uni().await.unwrap();
    send.write_all(&wire::encode_framed(&Frame::PublishStream {
        room: room.into(),
    }))
    .await
    .unwrap();
    for id in ids {
        send.write_all(&wire::encode_framed(&Frame::Publish {
            id: *id,
            event: "e".into(),
            payload: bytes::Bytes::from(id.to_string()),
            ack: Some(1000 + id),
        }))
        .await
        .unwrap();
    }
    let mut offsets = Vec::new();
    while offsets.len() < ids.len() {
        match peer.next_control().await {
            Frame::Ack { request, offset } => {
                assert_eq!(request, 1000 + ids[offsets.len()]);
                offsets.push(offset);
            }
            Frame::Progress { room: r, through } => {
                assert_eq!(r, room);
                assert!(through <= *ids.iter().max().unwrap());
            }
            other => panic!("expected Ack or Progress, got {other:?}"),
        }
    }
    offsets
}

#[tokio::test]
async fn a_retried_publish_is_published_once_across_a_resume() {
    let server = common::start().await;
    let (mut first, token, epoch, outcome) = hello(&server, None).await;
    assert_eq!(outcome, ResumeOutcome::New);
    assert_eq!(token.len(), 32);
    assert_eq!(publish(&mut first, "r", &[1, 2]).await, vec![1, 2]);
    // The same ids again on the same session: answered, not republished.
    assert_eq!(publish(&mut first, "r", &[2, 3]).await, vec![2, 3]);

    // The connection dies (not a clean close): the session is parked.
    first.conn.close(42u32.into(), b"gone");
    let resume = Resume {
        token: token.clone(),
        epoch,
    };
    let (mut second, token2, _, outcome) = hello(&server, Some(resume.clone())).await;
    assert_eq!(outcome, ResumeOutcome::Resumed);
    assert_ne!(token2, token, "a resume rotates the token");
    assert_eq!(token2.len(), 32);
    // The client did not see the ack of 3, so it retries 3, then goes on with 4.
    assert_eq!(publish(&mut second, "r", &[3, 4]).await, vec![3, 4]);
    assert_eq!(server.handle.stats().events_published, 4);

    // Tokens of another epoch, unknown tokens, and cleanly closed sessions do not resume.
    let other_epoch = Resume {
        token: token.clone(),
        epoch: epoch.wrapping_add(1),
    };
    let (_p, _, _, outcome) = hello(&server, Some(other_epoch)).await;
    assert_eq!(
        outcome,
        ResumeOutcome::NotResumed {
            reason: RecoveryFailure::EpochChanged
        }
    );
    let unknown = Resume {
        token: "0123456789abcdef0123456789abcdef".into(),
        epoch,
    };
    let (_p, _, _, outcome) = hello(&server, Some(unknown)).await;
    assert_eq!(
        outcome,
        ResumeOutcome::NotResumed {
            reason: RecoveryFailure::TokenExpired
        }
    );
    // (A clean close forgetting the session is covered by the unit tests of
    // the session store.)
    drop(second);
}

#[tokio::test]
async fn a_stolen_resume_token_is_dead_once_rotated_and_the_owner_loses_no_emit() {
    let server = common::start().await;
    let (mut owner, token, epoch, _) = hello(&server, None).await;
    assert_eq!(publish(&mut owner, "r", &[1, 2]).await, vec![1, 2]);
    // The owner's connection drops and it resumes: its token rotates.
    owner.conn.close(42u32.into(), b"gone");
    let stolen = Resume {
        token: token.clone(),
        epoch,
    };
    let (mut owner, rotated, _, outcome) = hello(&server, Some(stolen.clone())).await;
    assert_eq!(outcome, ResumeOutcome::Resumed);
    // A thief with the old token (read off the wire or a log) gets nothing:
    // a new, empty session, and the owner is not disturbed.
    let (mut thief, _, _, outcome) = hello(&server, Some(stolen)).await;
    assert_eq!(
        outcome,
        ResumeOutcome::NotResumed {
            reason: RecoveryFailure::TokenExpired
        }
    );
    // Whatever ids the thief burns in its own session...
    assert_eq!(publish(&mut thief, "r", &[3, 4, 5]).await, vec![3, 4, 5]);
    // ...the owner's next emits are published, not answered `Duplicate`.
    assert_eq!(publish(&mut owner, "r", &[3, 4]).await, vec![6, 7]);
    assert_eq!(server.handle.stats().events_published, 7);
    assert_eq!(server.handle.stats().dedup_hits, 0);
    // And the rotated token is the owner's to resume with next time.
    owner.conn.close(42u32.into(), b"gone again");
    let (mut owner, _, _, outcome) = hello(
        &server,
        Some(Resume {
            token: rotated,
            epoch,
        }),
    )
    .await;
    assert_eq!(outcome, ResumeOutcome::Resumed);
    // A retry of its last publish is answered as before.
    assert_eq!(publish(&mut owner, "r", &[4]).await, vec![7]);
    assert_eq!(server.handle.stats().dedup_hits, 1);
}
