//! What the tasks of a session share: the server's context, the queue of
//! control replies, and how a connection is closed. A leaf module, so the
//! session task (`session.rs`) and the publish readers (`ingest.rs`) both
//! use it without importing each other.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use quinn::Connection;
use tokio::sync::{mpsc, watch};

use super::backplane::Backplane;
use super::resume::SessionStore;
use super::stats::ServerStats;
use super::ServerConfig;
use crate::wire::{self, close_code, ErrorCode, Frame, ReadFrameError, RoomId};

/// Control replies queued for a client before it counts as a slow consumer.
pub(crate) const CONTROL_QUEUE: usize = 1024;

/// What every session of a server shares.
pub(crate) struct SessionContext {
    pub backplane: Arc<dyn Backplane>,
    pub sessions: SessionStore,
    pub config: Arc<ServerConfig>,
    pub stats: Arc<ServerStats>,
}

/// A reason to close the connection: an application close code and a phrase.
pub(crate) struct Closing {
    pub code: u32,
    pub reason: String,
}

impl Closing {
    pub fn violation(reason: impl Into<String>) -> Self {
        Closing {
            code: close_code::PROTOCOL_VIOLATION,
            reason: reason.into(),
        }
    }

    pub fn apply(self, conn: &Connection, stats: &ServerStats) {
        if matches!(
            self.code,
            close_code::PROTOCOL_VIOLATION | close_code::FRAME_TOO_LARGE
        ) {
            stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(code = self.code, reason = %self.reason, "closing connection");
        conn.close(self.code.into(), self.reason.as_bytes());
    }
}

/// How a session, or one of its tasks, ends early.
pub(crate) enum Ending {
    /// Close the connection with this code and reason.
    Close(Closing),
    /// The connection is gone already: nothing left to tell the peer.
    Gone,
}

/// Maps a failed read to a close, or to `None` when the connection or
/// stream is already gone (nothing left to tell the peer).
pub(crate) fn read_failure(what: &str, err: ReadFrameError) -> Option<Closing> {
    match err {
        ReadFrameError::Wire(e) => Some(Closing {
            code: e.close_code(),
            reason: format!("{what}: {e}"),
        }),
        ReadFrameError::Read(_) => None,
    }
}

pub(crate) fn error_frame(request: Option<u64>, code: ErrorCode, message: String) -> Bytes {
    wire::encode_framed(&Frame::Error {
        request,
        code,
        message,
    })
}

/// Completes once the server has asked sessions to stop.
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender also means stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The queue of control replies to one client. Queuing never waits: a
/// client that leaves [`CONTROL_QUEUE`] replies unread is closed as a slow
/// consumer, so no task of the session ever blocks on a client.
#[derive(Clone)]
pub(crate) struct Control {
    tx: mpsc::Sender<Bytes>,
    conn: Connection,
    stats: Arc<ServerStats>,
}

impl Control {
    /// The control queue `tx` of connection `conn`.
    pub fn new(tx: mpsc::Sender<Bytes>, conn: Connection, stats: Arc<ServerStats>) -> Self {
        Control { tx, conn, stats }
    }

    /// Queues a reply; `false` when the connection is closing.
    pub fn send(&self, frame: Bytes) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.conn.close_reason().is_none() {
                    self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    let reason =
                        format!("slow consumer: more than {CONTROL_QUEUE} control replies unread");
                    self.conn
                        .close(close_code::SLOW_CONSUMER.into(), reason.as_bytes());
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The answer to a frame that used a room id this connection was never
/// given: a typed error, counted; the frame is dropped and the session goes on.
pub(crate) fn unknown_id(stats: &ServerStats, request: Option<u64>, room_id: RoomId) -> Bytes {
    stats.unknown_room_ids.fetch_add(1, Ordering::Relaxed);
    error_frame(
        request,
        ErrorCode::UnknownRoom,
        format!("room id {room_id} was not given on this connection"),
    )
}
