//! Everything one connection sends: bounded queues, their delivery
//! policies, and the tasks that write them out.
//!
//! - Reliable events of a room go through a [`RoomQueue`], bounded both in
//!   events and in bytes, to the task that writes the room's stream. A full
//!   queue means the client reads slower than the room is written: it is
//!   closed with `slow consumer` (it can recover from history later), never
//!   silently skipped.
//! - Datagrams go through one [`DatagramRing`] per connection that drops the
//!   oldest when full (newest wins) and counts what it dropped.
//! - Control replies go through a bounded queue too (see `session::Control`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use web_transport_quinn::SendStream;

use super::Connection;
use tokio::sync::{mpsc, Notify};

use super::backplane::{EventCopy, RoomSubscriber, SessionId};
use super::history::Replay;
use super::stats::ServerStats;
use crate::sync::lock;
use crate::wire::{self, close_code, DatagramTemplate, Frame, RoomId};

/// Most frames gathered into one stream write.
const WRITE_BATCH: usize = 64;
/// Bytes of history read from storage per replay batch.
const REPLAY_BATCH_BYTES: usize = 256 * 1024;

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
            // Grows only while datagrams wait: an idle connection holds none.
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Adds a datagram; returns `true` if an older one was dropped for it.
    pub fn push(&self, frame: Bytes) -> bool {
        let dropped = {
            let mut q = lock(&self.queue);
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
        lock(&self.queue).pop_front()
    }

    /// Waits until something may have been pushed since the last wait.
    pub async fn wait(&self) {
        self.ready.notified().await
    }

    /// Whether no datagram is waiting.
    pub fn is_empty(&self) -> bool {
        lock(&self.queue).is_empty()
    }

    /// How many datagrams were dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The sending half of one room's reliable queue: at most `events` frames
/// wait for the room's writer, and at most `max_bytes` bytes for all the
/// writers of the connection.
#[derive(Clone)]
pub(crate) struct RoomQueue {
    tx: mpsc::Sender<Bytes>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// Why a frame could not be queued.
pub(crate) enum QueueFull {
    Events(usize),
    Bytes(usize),
}

impl RoomQueue {
    /// A queue and the receiving half its writer drains.
    #[cfg(test)]
    pub fn new(events: usize, max_bytes: usize) -> (RoomQueue, RoomQueueRx) {
        Self::sharing(events, max_bytes, Arc::new(AtomicUsize::new(0)))
    }

    /// A queue whose bytes count in `bytes`, with every other queue of the
    /// connection: `max_bytes` bounds them all together.
    pub fn sharing(
        events: usize,
        max_bytes: usize,
        bytes: Arc<AtomicUsize>,
    ) -> (RoomQueue, RoomQueueRx) {
        let (tx, rx) = mpsc::channel(events.max(1));
        (
            RoomQueue {
                tx,
                bytes: bytes.clone(),
                max_bytes,
            },
            RoomQueueRx { rx, bytes },
        )
    }

    /// Queues a frame without waiting; `Ok(false)` if the writer is gone.
    fn push(&self, frame: &Bytes) -> Result<bool, QueueFull> {
        let len = frame.len();
        let before = self.bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.max_bytes {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(QueueFull::Bytes(self.max_bytes));
        }
        match self.tx.try_send(frame.clone()) {
            Ok(()) => Ok(true),
            Err(e) => {
                self.bytes.fetch_sub(len, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        Err(QueueFull::Events(self.tx.max_capacity()))
                    }
                    mpsc::error::TrySendError::Closed(_) => Ok(false),
                }
            }
        }
    }
}

/// The receiving half of a [`RoomQueue`].
pub(crate) struct RoomQueueRx {
    rx: mpsc::Receiver<Bytes>,
    bytes: Arc<AtomicUsize>,
}

/// One session's subscription to one room, as the backplane sees it.
pub(crate) struct SessionSubscriber {
    pub session: SessionId,
    /// This connection's id for the room.
    pub room_id: RoomId,
    pub echo: bool,
    pub copies: bool,
    /// The connection's datagram send buffer, in bytes (all free = idle).
    pub datagram_buffer: usize,
    /// When the previous event of this room was delivered (for copies).
    pub last_event: Mutex<Option<std::time::Instant>>,
    pub room: Arc<str>,
    pub reliable: RoomQueue,
    pub datagrams: Arc<DatagramRing>,
    pub conn: Connection,
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
        let limit = match self.reliable.push(frame) {
            Ok(_) => return,
            Err(QueueFull::Events(n)) => format!("{n} events"),
            Err(QueueFull::Bytes(n)) => format!("{n} bytes"),
        };
        if self.conn.close_reason().is_none() {
            self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
            let reason = format!(
                "slow consumer: reliable queue of room {} over its bound of {limit}",
                self.room
            );
            tracing::warn!(session = %self.session, "{reason}");
            self.conn
                .close(close_code::SLOW_CONSUMER, reason.as_bytes());
        }
    }

    fn deliver_datagram(&self, datagram: &DatagramTemplate) {
        if self.datagrams.push(datagram.for_room(self.room_id)) {
            self.stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn copies(&self) -> bool {
        self.copies
    }

    fn deliver_copy(&self, copy: &EventCopy) {
        let alone = crate::copies::spaced(
            &mut lock(&self.last_event),
            std::time::Instant::now(),
            self.conn.rtt(),
        );
        if !alone
            || !self.datagrams.is_empty()
            || !crate::copies::path_idle(&self.conn, self.datagram_buffer)
        {
            return;
        }
        let target = self.conn.max_datagram_size();
        if target == 0 {
            return;
        }
        let frame = wire::encode_padded(target, |pad| Frame::EventCopy {
            room_id: self.room_id,
            previous: copy.previous,
            offset: copy.offset,
            event: copy.event.clone(),
            payload: copy.payload.clone(),
            pad,
        });
        // Best effort, like any datagram: the stream carries the event anyway.
        self.datagrams.push(frame);
    }
}

/// Writes one joined room's events to its own stream: the header, the
/// replayed history (read from storage batch by batch), then live events,
/// batching what is queued, until the queue closes (leave or shutdown);
/// then finishes the stream and waits until the client has received
/// everything (the caller bounds that wait).
pub(crate) async fn write_room_stream(
    conn: Connection,
    room_id: RoomId,
    room: Arc<str>,
    replay: Option<Replay>,
    mut queue: RoomQueueRx,
    stats: Arc<ServerStats>,
) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    let header = wire::encode_framed(&Frame::EventStream {
        room_id,
        room: room.to_string(),
    });
    if send.write_chunk(header).await.is_err() {
        return;
    }
    if let Some(replay) = replay {
        if let Err(reason) = write_replay(&mut send, replay, &stats).await {
            // The client was told these events would come: it must not
            // carry on as if it had them. It reconnects and recovers.
            tracing::error!(room = %room, "replay failed: {reason}");
            conn.close(close_code::STORAGE_UNAVAILABLE, reason.as_bytes());
            return;
        }
    }
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let len: usize = batch.iter().map(Bytes::len).sum();
        let events = batch.len() as u64;
        let written = send.write_all_chunks(&mut batch).await;
        queue.bytes.fetch_sub(len, Ordering::AcqRel);
        if written.is_err() {
            return;
        }
        stats.events_out.fetch_add(events, Ordering::Relaxed);
        stats.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
        batch.clear();
    }
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}

/// Sends a replay, reading it from storage off the async threads. Exactly
/// `replay.count` frames must come, or it failed.
async fn write_replay(
    send: &mut SendStream,
    replay: Replay,
    stats: &ServerStats,
) -> Result<(), String> {
    let mut source = replay.source;
    let mut sent = 0u64;
    loop {
        let (back, batch) = tokio::task::spawn_blocking(move || {
            let batch = source.next_batch(REPLAY_BATCH_BYTES);
            (source, batch)
        })
        .await
        .map_err(|e| format!("replay reader failed: {e}"))?;
        source = back;
        let batch = batch.map_err(|e| e.to_string())?;
        if batch.is_empty() {
            break;
        }
        sent += batch.len() as u64;
        // One buffer per batch, not thousands of small chunks: quinn walks
        // its queued chunks for every packet it builds.
        let mut joined = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
        for frame in &batch {
            joined.extend_from_slice(frame);
        }
        if send.write_all(&joined).await.is_err() {
            // The connection is gone: nothing to report to anyone.
            return Ok(());
        }
        stats
            .events_out
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .bytes_out
            .fetch_add(joined.len() as u64, Ordering::Relaxed);
    }
    if sent == replay.count {
        Ok(())
    } else {
        Err(format!(
            "history held {sent} of the {} events announced",
            replay.count
        ))
    }
}

/// Writes control replies in order, batching what is queued.
pub(crate) async fn write_control(mut send: SendStream, mut queue: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if send.write_all_chunks(&mut batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}

/// Sends the connection's datagrams as fast as QUIC accepts them.
pub(crate) async fn write_datagrams(
    conn: Connection,
    ring: Arc<DatagramRing>,
    stats: Arc<ServerStats>,
) {
    loop {
        ring.wait().await;
        while let Some(datagram) = ring.pop() {
            let len = datagram.len() as u64;
            match conn.send_datagram_wait(datagram).await {
                Ok(()) => {
                    stats.events_out.fetch_add(1, Ordering::Relaxed);
                    stats.bytes_out.fetch_add(len, Ordering::Relaxed);
                }
                // Too large for this client's path: dropped, like a full ring.
                Err(web_transport_quinn::SessionError::SendDatagramError(
                    quinn::SendDatagramError::TooLarge,
                )) => {
                    stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => return,
            }
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

    #[test]
    fn room_queue_is_bounded_in_events_and_in_bytes() {
        let (queue, mut rx) = RoomQueue::new(3, 10);
        assert!(matches!(queue.push(&Bytes::from_static(b"1234")), Ok(true)));
        assert!(matches!(queue.push(&Bytes::from_static(b"1234")), Ok(true)));
        assert!(matches!(
            queue.push(&Bytes::from_static(b"123")),
            Err(QueueFull::Bytes(10))
        ));
        assert!(matches!(queue.push(&Bytes::from_static(b"1")), Ok(true)));
        assert!(matches!(
            queue.push(&Bytes::from_static(b"")),
            Err(QueueFull::Events(3))
        ));
        // Refused frames are not counted.
        assert_eq!(rx.bytes.load(Ordering::Acquire), 9);
        assert_eq!(rx.rx.try_recv().ok().as_deref(), Some(&b"1234"[..]));
        drop(rx);
        assert!(matches!(queue.push(&Bytes::from_static(b"x")), Ok(false)));
    }
}
