//! What the tasks of a session share: the server's context, the queue of
//! control replies, and how a connection is closed. A leaf module, so the
//! session task (`session.rs`) and the publish readers (`ingest.rs`) both
//! use it without importing each other.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Connection, Reader};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::access::{Access, Identity};
use super::backplane::Backplane;
use super::limits::{AddressTable, Throttle, Verdict};
use super::resume::SessionStore;
use super::stats::{Limit, ServerStats};
use super::ServerConfig;
use crate::wire::{self, close_code, ErrorCode, Frame, FrameReader, ReadFrameError, RoomId};

/// Control replies queued for a client before it counts as a slow consumer.
pub(crate) const CONTROL_QUEUE: usize = 1024;

/// What every session of a server shares.
pub(crate) struct SessionContext {
    pub backplane: Arc<dyn Backplane>,
    pub sessions: SessionStore,
    /// Per-address accounting (connections, handshakes, failed `Hello`s).
    pub addresses: std::sync::Mutex<AddressTable>,
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
        if self.code == close_code::FRAME_TIMEOUT {
            stats.limit_hit(Limit::HalfSentFrame);
        }
        tracing::debug!(code = self.code, reason = %self.reason, "closing connection");
        conn.close(self.code, self.reason.as_bytes());
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
        ReadFrameError::Stalled(after) => Some(Closing {
            code: close_code::FRAME_TIMEOUT,
            reason: format!("{what}: a frame stayed half-sent for more than {after:?}"),
        }),
        ReadFrameError::Read(_) => None,
    }
}

/// The answer to something the connection's token does not allow,
/// counted.
pub(crate) fn forbidden(
    stats: &ServerStats,
    request: Option<u64>,
    room: &str,
    action: crate::auth::Action,
) -> Bytes {
    stats.refused(super::stats::Refusal::forbidden(action));
    wire::encode_framed(&Frame::Forbidden {
        request,
        room: room.to_string(),
        action,
    })
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
                        .close(close_code::SLOW_CONSUMER, reason.as_bytes());
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

/// What the tasks of one connection share besides the server's context.
pub(crate) struct ConnectionShare {
    /// The queue of control replies.
    pub control: Control,
    /// The connection's publish rate, reliable and datagram together.
    pub publish_rate: std::sync::Mutex<Throttle>,
    /// Bytes of partly received frames the connection's readers may hold.
    pub frame_budget: Arc<tokio::sync::Semaphore>,
    /// Who the connection is and what it may do.
    pub access: Access,
}

impl ConnectionShare {
    pub fn new(control: Control, config: &ServerConfig, identity: Identity) -> Self {
        let limits = &config.limits;
        // Never less than one whole frame and a read, or a frame of the
        // maximum size could never complete.
        let budget = limits
            .partial_frame_bytes
            .max(config.max_frame + 2 * wire::MAX_VARINT_LEN + 128 * 1024);
        ConnectionShare {
            control,
            publish_rate: std::sync::Mutex::new(Throttle::new(
                limits.publish_rate,
                limits.rate_strikes,
                std::time::Instant::now(),
            )),
            frame_budget: Arc::new(tokio::sync::Semaphore::new(budget)),
            access: Access::new(identity),
        }
    }

    /// A reader of one of this connection's streams, under its limits.
    pub fn reader(&self, stream: web_transport_quinn::RecvStream, config: &ServerConfig) -> Reader {
        let mut reader = FrameReader::new(stream, config.max_frame);
        reader.set_frame_timeout(config.limits.frame_timeout);
        reader.set_budget(self.frame_budget.clone());
        reader
    }

    /// Takes one publish of the connection's rate if it is within it,
    /// without counting a refusal.
    pub fn try_publish(&self) -> bool {
        crate::sync::lock(&self.publish_rate).try_take(std::time::Instant::now())
    }

    /// Checks one publish against the connection's rate, counting refusals.
    pub fn check_publish(&self, stats: &ServerStats) -> Verdict {
        let verdict = crate::sync::lock(&self.publish_rate).check(std::time::Instant::now());
        if verdict != Verdict::Allow {
            stats.limit_hit(Limit::PublishRate);
        }
        verdict
    }
}

/// The reply to a request over a rate, or the close once there were too
/// many in a row.
pub(crate) fn over_rate(
    what: &str,
    rate: &super::limits::Rate,
    request: Option<u64>,
) -> (Bytes, Closing) {
    let message = format!(
        "over the connection's {what} rate of {} per second",
        rate.per_second
    );
    let closing = Closing {
        code: close_code::RATE_LIMITED,
        reason: format!("{message}, again and again"),
    };
    (
        error_frame(request, ErrorCode::RateLimited, message),
        closing,
    )
}
