//! The quicbus client library.
//!
//! ```no_run
//! # async fn demo() -> Result<(), quicbus::client::ClientError> {
//! use quicbus::client::{Client, ClientOptions};
//! let (client, mut events) = Client::connect(ClientOptions::new("127.0.0.1:4433".parse().unwrap())).await?;
//! client.join("chat").await?;
//! client.emit("chat", "say", "hello").await?;
//! while let Some(event) = events.next().await {
//!     println!("{}: {:?}", event.name, event.payload);
//! }
//! # Ok(()) }
//! ```
//!
//! A client is one QUIC connection: a control stream for requests, one
//! outgoing stream per room it publishes to, one incoming stream per room it
//! has joined, and datagrams both ways. Incoming events from every room
//! arrive on one [`Events`] stream.

mod datagram_order;
mod error;
mod event;
mod handshake;
mod incoming;
mod options;
mod publish;
mod rooms;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, timeout_at, Instant};

pub use crate::wire::{Recovery, RecoveryFailure};
pub use datagram_order::{DatagramOrder, Verdict};
pub use error::ClientError;
pub use event::{Delivery, Event, Events};
pub use options::{ClientOptions, ClientStats, JoinOptions, JoinOutcome, Trust};

use handshake::Established;
use options::Counters;
use publish::{PublishQueue, WriterGone};
use rooms::RoomTable;

use crate::wire::{self, validate_name, ErrorCode, Frame, RoomId};

/// Answers to requests, by request id.
pub(crate) enum Reply {
    Joined {
        room_id: RoomId,
        offset: u64,
        recovery: Recovery,
    },
    Left,
    Resolved {
        room_id: RoomId,
    },
    Ack {
        offset: u64,
    },
    Pong,
    Error {
        code: ErrorCode,
        message: String,
    },
}

pub(crate) type Pending = Mutex<HashMap<u64, oneshot::Sender<Reply>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connected client. Cloning is cheap and shares the connection; the
/// connection closes when the last clone is dropped or on [`Client::close`].
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    session_id: u64,
    /// The server's frame limit, from `Welcome`.
    max_frame: usize,
    /// The server's history epoch, from `Welcome`.
    epoch: u64,
    request_timeout: Duration,
    control: mpsc::Sender<Bytes>,
    pending: Arc<Pending>,
    next_request: AtomicU64,
    rooms: Arc<Mutex<RoomTable>>,
    publishers: Mutex<HashMap<Arc<str>, PublishQueue>>,
    counters: Arc<Counters>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.conn
            .close(wire::close_code::NORMAL.into(), b"client closed");
    }
}

/// Frames queued per outgoing room stream before `emit` waits.
const WRITE_BATCH: usize = 64;

impl Client {
    /// Connects, verifies the server, and completes the quicbus handshake,
    /// all within `options.connect_timeout`.
    pub async fn connect(options: ClientOptions) -> Result<(Client, Events), ClientError> {
        let Established {
            conn,
            endpoint,
            control_send: send,
            control: reader,
            session_id,
            max_frame,
            epoch,
            ..
        } = handshake::establish(&options, None).await?;

        let (control_tx, control_rx) = mpsc::channel(256);
        let (events_tx, events_rx) = mpsc::channel(options.event_queue.max(1));
        let pending: Arc<Pending> = Arc::default();
        let rooms: Arc<Mutex<RoomTable>> = Arc::default();
        let counters: Arc<Counters> = Arc::default();
        tokio::spawn(write_frames(send, control_rx));
        let tasks = incoming::Tasks {
            conn: conn.clone(),
            pending: pending.clone(),
            rooms: rooms.clone(),
            counters: counters.clone(),
            events: events_tx,
            // The server refuses events over its own limit, so accept up to it.
            max_frame: options.max_frame.max(max_frame),
        };
        tasks.spawn(reader);

        let client = Client {
            shared: Arc::new(Shared {
                conn,
                endpoint,
                session_id,
                max_frame,
                epoch,
                request_timeout: options.request_timeout,
                control: control_tx,
                pending,
                next_request: AtomicU64::new(1),
                rooms,
                publishers: Mutex::new(HashMap::new()),
                counters,
            }),
        };
        let events = Events {
            rx: events_rx,
            rooms: client.shared.rooms.clone(),
        };
        Ok((client, events))
    }

    /// The server's history epoch: offsets are comparable only within one.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// The session id the server assigned.
    pub fn session_id(&self) -> u64 {
        self.shared.session_id
    }

    /// Joins a room and returns its current offset (that of its newest
    /// reliable event, 0 if none). Events published afterwards arrive on
    /// [`Events`]; this client's own events only with [`JoinOptions::echo`].
    pub async fn join(&self, room: &str) -> Result<u64, ClientError> {
        Ok(self.join_with(room, JoinOptions::default()).await?.offset)
    }

    /// Joins a room with options; with `since`, the events after that offset
    /// are replayed first, and [`JoinOutcome::recovery`] says whether that
    /// was possible (a late joiner catching up, or a client resuming).
    pub async fn join_with(
        &self,
        room: &str,
        options: JoinOptions,
    ) -> Result<JoinOutcome, ClientError> {
        validate_name("room", room).map_err(ClientError::InvalidName)?;
        let name: Arc<str> = Arc::from(room);
        let already = lock(&self.shared.rooms).start_joining(&name);
        let reply = self
            .request("join", |request| Frame::Join {
                request,
                room: room.to_string(),
                echo: options.echo,
                since: options.since,
            })
            .await;
        match reply {
            Ok(Reply::Joined {
                room_id,
                offset,
                recovery,
            }) => {
                lock(&self.shared.rooms).learn(room_id, room);
                Ok(JoinOutcome { offset, recovery })
            }
            other => {
                if !already {
                    lock(&self.shared.rooms).joined.remove(&name);
                }
                match other {
                    Err(e) => Err(e),
                    Ok(_) => Err(ClientError::Protocol("unexpected answer to Join".into())),
                }
            }
        }
    }

    /// Leaves a room; no event of it is delivered after this returns.
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        let room_id = {
            let mut rooms = lock(&self.shared.rooms);
            let id = rooms.ids.get(room).copied();
            match id {
                Some(room_id) if rooms.joined.remove(room) => room_id,
                _ => {
                    return Err(ClientError::Rejected {
                        code: ErrorCode::NotJoined,
                        reason: format!("room {room} is not joined"),
                    })
                }
            }
        };
        match self
            .request("leave", |request| Frame::Leave { request, room_id })
            .await?
        {
            Reply::Left => Ok(()),
            _ => Err(ClientError::Protocol("unexpected answer to Leave".into())),
        }
    }

    /// Publishes a reliable event. It is queued on the room's stream in
    /// order; this returns once it is queued, not once the server has it
    /// (use [`Client::emit_with_ack`] for that). If the stream stays backed
    /// up for the request timeout, this fails with [`ClientError::Timeout`].
    pub async fn emit(
        &self,
        room: &str,
        event: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let frame = self.publish_frame(event, payload.into(), None)?;
        self.publish(room, frame, self.deadline()).await
    }

    /// Publishes a reliable event and waits until the server has accepted
    /// it; returns its offset. Queuing and the ack together take at most the
    /// request timeout, else [`ClientError::Timeout`].
    pub async fn emit_with_ack(
        &self,
        room: &str,
        event: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        self.emit_acked(room, event, payload).await?.wait().await
    }

    /// Queues a reliable event that asks for an ack, and returns at once
    /// with a handle to await the ack later. Events queued one after another
    /// keep their order, so many acks can be in flight at once.
    pub async fn emit_acked(
        &self,
        room: &str,
        event: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PendingAck, ClientError> {
        validate_name("event", event).map_err(ClientError::InvalidName)?;
        let deadline = self.deadline();
        let (request, answer) = self.register();
        let frame = match self.publish_frame(event, payload.into(), Some(request)) {
            Ok(frame) => frame,
            Err(e) => {
                lock(&self.shared.pending).remove(&request);
                return Err(e);
            }
        };
        if let Err(e) = self.publish(room, frame, deadline).await {
            lock(&self.shared.pending).remove(&request);
            return Err(e);
        }
        Ok(PendingAck {
            client: self.clone(),
            request,
            answer,
            deadline,
        })
    }

    /// [`Client::emit`] for any serde type (encoded with postcard).
    pub async fn emit_typed<T: Serialize>(
        &self,
        room: &str,
        event: &str,
        value: &T,
    ) -> Result<(), ClientError> {
        self.emit(room, event, encode_payload(value)?).await
    }

    /// Publishes an unreliable event as one QUIC datagram. Fails with
    /// [`ClientError::DatagramTooLarge`] (stating the limit) when it does
    /// not fit the connection's current maximum datagram size.
    pub async fn emit_datagram(
        &self,
        room: &str,
        event: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let payload = payload.into();
        validate_name("event", event).map_err(ClientError::InvalidName)?;
        let room_id = self.room_id(room).await?;
        let limit = self.datagram_limit(room_id, event)?;
        if payload.len() > limit {
            return Err(ClientError::DatagramTooLarge {
                size: payload.len(),
                limit,
            });
        }
        let size = payload.len();
        let frame = wire::encode(&Frame::PublishDatagram {
            room_id,
            event: event.to_string(),
            payload,
        });
        self.shared.conn.send_datagram(frame).map_err(|e| match e {
            quinn::SendDatagramError::ConnectionLost(e) => ClientError::from_connection(&e),
            quinn::SendDatagramError::TooLarge => ClientError::DatagramTooLarge { size, limit },
            _ => ClientError::DatagramsUnsupported,
        })
    }

    /// [`Client::emit_datagram`] for any serde type (encoded with postcard).
    pub async fn emit_datagram_typed<T: Serialize>(
        &self,
        room: &str,
        event: &str,
        value: &T,
    ) -> Result<(), ClientError> {
        self.emit_datagram(room, event, encode_payload(value)?)
            .await
    }

    /// The largest datagram payload that can be published to `room` as
    /// `event` right now (it changes as QUIC discovers the path MTU).
    pub async fn max_datagram_payload(
        &self,
        room: &str,
        event: &str,
    ) -> Result<usize, ClientError> {
        let room_id = self.room_id(room).await?;
        self.datagram_limit(room_id, event)
    }

    /// A round trip on the control stream; returns how long it took. When
    /// it returns, every control request sent earlier has been handled, and
    /// datagrams emitted earlier have been sent (quinn puts queued datagrams
    /// into packets ahead of stream data), though not necessarily received.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let started = std::time::Instant::now();
        match self
            .request("ping", |request| Frame::Ping { request })
            .await?
        {
            Reply::Pong => Ok(started.elapsed()),
            _ => Err(ClientError::Protocol("unexpected answer to Ping".into())),
        }
    }

    /// Connection statistics.
    pub fn stats(&self) -> ClientStats {
        let quic = self.shared.conn.stats();
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            rtt: self.shared.conn.rtt(),
            sent_packets: quic.path.sent_packets,
            lost_packets: quic.path.lost_packets,
            reliable_received: get(&c.reliable_received),
            datagrams_received: get(&c.datagrams_received),
            datagrams_lost: get(&c.datagrams_lost),
            datagrams_stale: get(&c.datagrams_stale),
            datagrams_dropped_queue_full: get(&c.datagrams_dropped_queue_full),
            server_errors: get(&c.server_errors),
        }
    }

    /// Waits until the connection ends and says why.
    pub async fn closed(&self) -> ClientError {
        ClientError::from_connection(&self.shared.conn.closed().await)
    }

    /// Closes the connection and waits (briefly) for the server to learn it.
    pub async fn close(&self) {
        self.shared
            .conn
            .close(wire::close_code::NORMAL.into(), b"client closed");
        let _ = timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
    }

    fn datagram_limit(&self, room_id: RoomId, event: &str) -> Result<usize, ClientError> {
        let max = self
            .shared
            .conn
            .max_datagram_size()
            .ok_or(ClientError::DatagramsUnsupported)?;
        // Size the frame as the server forwards it (with the largest possible
        // sequence number), so that what we send can also be delivered.
        let overhead = wire::encoded_len(&Frame::Datagram {
            room_id,
            seq: u64::MAX,
            event: event.to_string(),
            payload: Bytes::new(),
        });
        // The payload's own length prefix grows with it: allow for its largest form.
        let limit = max.saturating_sub(overhead + 2);
        Ok(limit)
    }

    async fn room_id(&self, room: &str) -> Result<RoomId, ClientError> {
        if let Some(id) = lock(&self.shared.rooms).ids.get(room) {
            return Ok(*id);
        }
        validate_name("room", room).map_err(ClientError::InvalidName)?;
        match self
            .request("resolve", |request| Frame::Resolve {
                request,
                room: room.to_string(),
            })
            .await?
        {
            Reply::Resolved { room_id } => {
                lock(&self.shared.rooms).learn(room_id, room);
                Ok(room_id)
            }
            _ => Err(ClientError::Protocol("unexpected answer to Resolve".into())),
        }
    }

    /// Queues a framed `Publish` on the room's stream, opening it if needed.
    async fn publish(
        &self,
        room: &str,
        frame: Bytes,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let queue = {
            let mut publishers = lock(&self.shared.publishers);
            match publishers.get(room) {
                Some(queue) if !queue.is_closed() => queue.clone(),
                _ => {
                    validate_name("room", room).map_err(ClientError::InvalidName)?;
                    let queue = PublishQueue::open(&self.shared.conn, room);
                    publishers.insert(Arc::from(room), queue.clone());
                    queue
                }
            }
        };
        match timeout_at(deadline, queue.push(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(WriterGone)) => Err(closed_or_lost(&self.shared.conn)),
            Err(_) => Err(ClientError::Timeout {
                what: "emit (the room's stream is backed up)",
                after: self.shared.request_timeout,
            }),
        }
    }

    /// Queues a frame for a writer task, waiting for room until `deadline`.
    async fn queue(
        &self,
        what: &'static str,
        sender: &mpsc::Sender<Bytes>,
        frame: Bytes,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        match timeout_at(deadline, sender.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(closed_or_lost(&self.shared.conn)),
            Err(_) => Err(ClientError::Timeout {
                what,
                after: self.shared.request_timeout,
            }),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.shared.request_timeout
    }

    fn publish_frame(
        &self,
        event: &str,
        payload: Bytes,
        ack: Option<u64>,
    ) -> Result<Bytes, ClientError> {
        validate_name("event", event).map_err(ClientError::InvalidName)?;
        let size = wire::event_frame_len(event.len(), payload.len());
        if size > self.shared.max_frame {
            return Err(ClientError::EventTooLarge {
                size,
                limit: self.shared.max_frame,
            });
        }
        Ok(wire::encode_framed(&Frame::Publish {
            id: 0,
            event: event.to_string(),
            payload,
            ack,
        }))
    }

    fn register(&self) -> (u64, oneshot::Receiver<Reply>) {
        let request = self.shared.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(request, tx);
        (request, rx)
    }

    async fn request(
        &self,
        what: &'static str,
        frame: impl FnOnce(u64) -> Frame,
    ) -> Result<Reply, ClientError> {
        let deadline = self.deadline();
        let (request, answer) = self.register();
        let bytes = wire::encode_framed(&frame(request));
        if let Err(e) = self
            .queue(what, &self.shared.control, bytes, deadline)
            .await
        {
            lock(&self.shared.pending).remove(&request);
            return Err(e);
        }
        self.await_reply(what, request, answer, deadline).await
    }

    async fn await_reply(
        &self,
        what: &'static str,
        request: u64,
        answer: oneshot::Receiver<Reply>,
        deadline: Instant,
    ) -> Result<Reply, ClientError> {
        let after = self.shared.request_timeout;
        // A request made just as the connection ends must fail at once, not time out.
        let answer = async {
            tokio::select! {
                biased;
                reply = answer => reply.map_err(|_| closed_or_lost(&self.shared.conn)),
                lost = self.shared.conn.closed() => Err(ClientError::from_connection(&lost)),
            }
        };
        match timeout_at(deadline, answer).await {
            Ok(Ok(Reply::Error { code, message })) => Err(ClientError::Rejected {
                code,
                reason: message,
            }),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                lock(&self.shared.pending).remove(&request);
                Err(ClientError::Timeout { what, after })
            }
        }
    }
}

/// An ack not yet received; see [`Client::emit_acked`].
pub struct PendingAck {
    client: Client,
    request: u64,
    answer: oneshot::Receiver<Reply>,
    deadline: Instant,
}

impl PendingAck {
    /// Waits for the server's answer: the assigned offset, or why the event
    /// was refused. The server has the request timeout, counted from the
    /// emit, to answer; after that this fails with [`ClientError::Timeout`].
    pub async fn wait(self) -> Result<u64, ClientError> {
        match self
            .client
            .await_reply("ack", self.request, self.answer, self.deadline)
            .await?
        {
            Reply::Ack { offset } => Ok(offset),
            _ => Err(ClientError::Protocol("unexpected answer to Publish".into())),
        }
    }
}

fn closed_or_lost(conn: &quinn::Connection) -> ClientError {
    match conn.close_reason() {
        Some(reason) => ClientError::from_connection(&reason),
        None => ClientError::Disconnected("the connection's streams were closed".into()),
    }
}

fn encode_payload<T: Serialize>(value: &T) -> Result<Bytes, ClientError> {
    postcard::to_stdvec(value)
        .map(Bytes::from)
        .map_err(|e| ClientError::Payload(e.to_string()))
}

/// Writes queued frames to a stream, several per write when they pile up.
async fn write_frames(mut send: quinn::SendStream, mut queue: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if send.write_all_chunks(&mut batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    let _ = send.finish();
}
