//! The client's reading side: control replies, room streams and datagrams.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use quinn::Connection;
use tokio::sync::mpsc;

use super::rooms::{LinkRooms, RoomRef};
use super::{lock, Core, Delivery, Event, Incoming, Reply, Verdict};
use crate::wire::{self, close_code, Frame, FrameReader, ReadFrameError, RoomId};

/// The reading tasks of one connection.
struct Tasks {
    core: Arc<Core>,
    /// The connection's `Link::id`.
    link: u64,
    /// The room ids the server gave this connection.
    rooms: Arc<std::sync::Mutex<LinkRooms>>,
    conn: Connection,
    events: mpsc::Sender<Incoming>,
    max_frame: usize,
    ready: tokio::sync::watch::Receiver<bool>,
}

/// Starts the control reader, the room-stream acceptor and the datagram
/// reader of a connection; they end with it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    core: Arc<Core>,
    link: u64,
    rooms: Arc<std::sync::Mutex<LinkRooms>>,
    conn: Connection,
    control: FrameReader,
    events: mpsc::Sender<Incoming>,
    max_frame: usize,
    ready: tokio::sync::watch::Receiver<bool>,
) {
    let this = Arc::new(Tasks {
        core,
        link,
        rooms,
        conn,
        events,
        max_frame,
        ready,
    });
    tokio::spawn(this.clone().read_control(control));
    tokio::spawn(this.clone().accept_streams());
    tokio::spawn(this.read_datagrams());
}

impl Tasks {
    /// The server refused something no request waits for: a datagram or a
    /// publish without ack (`Publish`), or a joined room the refreshed
    /// token no longer allows (`Subscribe`: the server has left it).
    async fn forbidden(&self, room: String, action: crate::auth::Action) {
        self.core.counters.forbidden.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("forbidden: the token does not allow {action} on room {room}");
        let room: Arc<str> = Arc::from(room);
        if action == crate::auth::Action::Subscribe {
            lock(&self.core.rooms).joined.remove(&room);
        }
        // Informational, like connection notices: never blocks the control
        // stream on an application that does not read its events.
        let _ = self.events.try_send(Incoming::Forbidden { room, action });
    }

    fn violation(&self, reason: String) {
        tracing::warn!("closing: {reason}");
        self.conn
            .close(close_code::PROTOCOL_VIOLATION.into(), reason.as_bytes());
    }

    fn read_failed(&self, what: &str, err: ReadFrameError) {
        if let ReadFrameError::Wire(e) = err {
            self.conn
                .close(e.close_code().into(), format!("{what}: {e}").as_bytes());
        }
    }

    async fn read_control(self: Arc<Self>, mut control: FrameReader) {
        loop {
            let frame = match control.next().await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.read_failed("control stream", e);
                    break;
                }
            };
            let (request, reply) = match frame {
                Frame::Joined {
                    request,
                    room_id,
                    offset,
                    recovery,
                } => (
                    request,
                    Reply::Joined {
                        room_id,
                        offset,
                        recovery,
                    },
                ),
                Frame::Left { request, .. } => (request, Reply::Left),
                Frame::Resolved { request, room_id } => (request, Reply::Resolved { room_id }),
                Frame::Ack { request, offset } => (request, Reply::Ack { offset }),
                Frame::Pong { request } => (request, Reply::Pong),
                Frame::Refreshed { request, expires } => (request, Reply::Refreshed { expires }),
                Frame::Forbidden {
                    request: Some(request),
                    room,
                    action,
                } => (request, Reply::Forbidden { room, action }),
                Frame::Forbidden {
                    request: None,
                    room,
                    action,
                } => {
                    self.forbidden(room, action).await;
                    continue;
                }
                Frame::Progress { room, through } => {
                    self.core.outbox.confirm(&room, through);
                    continue;
                }
                Frame::Error {
                    request: Some(request),
                    code,
                    message,
                } => (request, Reply::Error { code, message }),
                Frame::Error {
                    request: None,
                    code,
                    message,
                } => {
                    self.core
                        .counters
                        .server_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("server error ({code}): {message}");
                    // Informational: never blocks the control stream.
                    let _ = self
                        .events
                        .try_send(Incoming::ServerError { code, message });
                    continue;
                }
                other => {
                    self.violation(format!("{} is not a server control frame", other.name()));
                    break;
                }
            };
            // A reply nobody waits for any more (its request timed out) is dropped.
            if let Some(waiter) = lock(&self.core.pending).remove(&request) {
                let _ = waiter.tx.send(reply);
            }
        }
        // Requests of this connection fail when the supervisor notices it
        // is gone (acks survive: their events are resent).
    }

    async fn accept_streams(self: Arc<Self>) {
        while let Ok(recv) = self.conn.accept_uni().await {
            tokio::spawn(
                self.clone()
                    .read_room_stream(FrameReader::new(recv, self.max_frame)),
            );
        }
    }

    async fn read_room_stream(self: Arc<Self>, mut reader: FrameReader) {
        let (at, room) = match reader.next().await {
            Ok(Some(Frame::EventStream { room_id, room })) => {
                let room = lock(&self.rooms).learn(room_id, &room);
                (self.at(room_id), room)
            }
            Ok(Some(other)) => {
                return self.violation(format!(
                    "an event stream must start with EventStream, not {}",
                    other.name()
                ))
            }
            Ok(None) => return,
            Err(e) => return self.read_failed("event stream", e),
        };
        // Hold events until this connection's rejoins are reported.
        let mut ready = self.ready.clone();
        if ready.wait_for(|ready| *ready).await.is_err() {
            return;
        }
        loop {
            let (offset, name, payload) = match reader.next().await {
                Ok(Some(Frame::Event {
                    offset,
                    event,
                    payload,
                })) => (offset, event, payload),
                Ok(Some(other)) => {
                    return self.violation(format!(
                        "{} is not allowed on an event stream",
                        other.name()
                    ))
                }
                Ok(None) => return,
                Err(e) => return self.read_failed("event stream", e),
            };
            // Waiting here pushes back on the server through QUIC flow control.
            let Ok(slot) = self.events.reserve().await else {
                return;
            };
            {
                // Accepted and queued in one step under the room table's
                // lock, as datagram copies are, so the two keep offset order.
                let mut rooms = lock(&self.core.rooms);
                // After `leave`, whatever was already in flight is dropped;
                // so is an event its datagram copy already delivered.
                if !rooms.accept_reliable(&room, at, offset) {
                    continue;
                }
                // Counted before the application can see it, so a count
                // read after an event was received includes it.
                self.core
                    .counters
                    .reliable_received
                    .fetch_add(1, Ordering::Relaxed);
                slot.send(Incoming::Event(Event {
                    room: room.clone(),
                    name,
                    delivery: Delivery::Reliable { offset },
                    payload,
                }));
            }
        }
    }

    fn at(&self, room_id: RoomId) -> RoomRef {
        RoomRef {
            link: self.link,
            room_id,
        }
    }

    /// The joined room an id names on this connection.
    fn joined_room(&self, room_id: RoomId) -> Option<Arc<str>> {
        let name = lock(&self.rooms).name(room_id).cloned()?;
        lock(&self.core.rooms)
            .joined
            .contains(&name)
            .then_some(name)
    }

    /// Delivers the `EventCopy` of a reliable event if it is the next one
    /// of its room and there is room in the queue; otherwise the stream
    /// frame will deliver it.
    fn deliver_copy(
        &self,
        room_id: u32,
        previous: u64,
        offset: u64,
        name: String,
        payload: bytes::Bytes,
    ) {
        // Held like the room streams until this connection's rejoins are reported.
        if !*self.ready.borrow() {
            return;
        }
        let Ok(slot) = self.events.try_reserve() else {
            return;
        };
        let Some(room) = lock(&self.rooms).name(room_id).cloned() else {
            return;
        };
        let mut rooms = lock(&self.core.rooms);
        if !rooms.accept_copy(&room, self.at(room_id), previous, offset) {
            return;
        }
        let c = &self.core.counters;
        c.reliable_received.fetch_add(1, Ordering::Relaxed);
        c.reliable_copies.fetch_add(1, Ordering::Relaxed);
        slot.send(Incoming::Event(Event {
            room,
            name,
            delivery: Delivery::Reliable { offset },
            payload,
        }));
        drop(rooms);
    }

    async fn read_datagrams(self: Arc<Self>) {
        while let Ok(bytes) = self.conn.read_datagram().await {
            let (room_id, seq, name, payload) = match wire::decode(&bytes) {
                Ok(Frame::Datagram {
                    room_id,
                    seq,
                    event,
                    payload,
                }) => (room_id, seq, event, payload),
                Ok(Frame::EventCopy {
                    room_id,
                    previous,
                    offset,
                    event,
                    payload,
                    pad: _,
                }) => {
                    self.deliver_copy(room_id, previous, offset, event, payload);
                    continue;
                }
                Ok(other) => {
                    return self.violation(format!("{} is not a server datagram", other.name()))
                }
                Err(e) => return self.violation(format!("malformed datagram: {e}")),
            };
            let Some(room) = self.joined_room(room_id) else {
                continue;
            };
            let c = &self.core.counters;
            let verdict = lock(&self.rooms).datagram_order(room_id).observe(seq);
            match verdict {
                Verdict::Stale => {
                    c.datagrams_stale.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Verdict::Fresh { skipped } => {
                    c.datagrams_lost.fetch_add(skipped, Ordering::Relaxed);
                }
            }
            let event = Event {
                room,
                name,
                delivery: Delivery::Datagram { seq },
                payload,
            };
            // Counted before the application can see it.
            match self.events.try_reserve() {
                Ok(slot) => {
                    c.datagrams_received.fetch_add(1, Ordering::Relaxed);
                    slot.send(Incoming::Event(event));
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    c.datagrams_dropped_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(())) => return,
            }
        }
    }
}
