//! Bounded outgoing queues of one connection, and the delivery policy of each.
//!
//! - Reliable events of a room go through a bounded FIFO to the task that
//!   writes the room's stream. A full FIFO means the client reads slower than
//!   the room is written: it is closed with `slow consumer` (it can recover
//!   from history later), never silently skipped.
//! - Datagrams go through one [`DatagramRing`] per connection that drops the
//!   oldest when full (newest wins) and counts what it dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::backplane::{RoomSubscriber, SessionId};
use super::stats::ServerStats;
use crate::wire::close_code;

/// A bounded ring of datagram frames: pushing onto a full ring drops the oldest.
pub struct DatagramRing {
    queue: Mutex<VecDeque<Bytes>>,
    capacity: usize,
    ready: Notify,
    dropped: AtomicU64,
}

impl DatagramRing {
    /// A ring holding at most `capacity` datagrams (at least one).
    pub fn new(capacity: usize) -> Self {
        DatagramRing {
            queue: Mutex::new(VecDeque::with_capacity(capacity.clamp(1, 1024))),
            capacity: capacity.max(1),
            ready: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Adds a datagram; returns `true` if an older one was dropped for it.
    pub fn push(&self, frame: Bytes) -> bool {
        let dropped = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let dropped = if q.len() >= self.capacity {
                q.pop_front();
                true
            } else {
                false
            };
            q.push_back(frame);
            dropped
        };
        if dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.ready.notify_one();
        dropped
    }

    /// Takes the oldest queued datagram.
    pub fn pop(&self) -> Option<Bytes> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Waits until something may have been pushed since the last wait.
    pub async fn wait(&self) {
        self.ready.notified().await
    }

    /// How many datagrams were dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One session's subscription to one room, as the backplane sees it.
pub(crate) struct SessionSubscriber {
    pub session: SessionId,
    pub echo: bool,
    pub room: Arc<str>,
    pub reliable: mpsc::Sender<Bytes>,
    pub datagrams: Arc<DatagramRing>,
    pub conn: quinn::Connection,
    pub stats: Arc<ServerStats>,
}

impl RoomSubscriber for SessionSubscriber {
    fn session(&self) -> SessionId {
        self.session
    }

    fn echo(&self) -> bool {
        self.echo
    }

    fn deliver_reliable(&self, frame: &Bytes) {
        match self.reliable.try_send(frame.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.conn.close_reason().is_none() {
                    self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    let reason = format!(
                        "slow consumer: more than {} reliable events queued for room {}",
                        self.reliable.max_capacity(),
                        self.room
                    );
                    tracing::warn!(session = self.session, "{reason}");
                    self.conn
                        .close(close_code::SLOW_CONSUMER.into(), reason.as_bytes());
                }
            }
            // The room's writer is gone: the connection is closing anyway.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn deliver_datagram(&self, frame: &Bytes) {
        if self.datagrams.push(frame.clone()) {
            self.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_drops_oldest_and_counts() {
        let ring = DatagramRing::new(2);
        assert!(!ring.push(Bytes::from_static(b"1")));
        assert!(!ring.push(Bytes::from_static(b"2")));
        assert!(ring.push(Bytes::from_static(b"3")));
        assert_eq!(ring.dropped(), 1);
        assert_eq!(ring.pop().as_deref(), Some(&b"2"[..]));
        assert_eq!(ring.pop().as_deref(), Some(&b"3"[..]));
        assert_eq!(ring.pop(), None);
    }
}
