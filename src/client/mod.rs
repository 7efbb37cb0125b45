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
//! A client holds one QUIC connection at a time: a control stream for
//! requests, one outgoing stream per room it publishes to, one incoming
//! stream per room it has joined, and datagrams both ways. Incoming events
//! from every room arrive on one [`Events`] stream.
//!
//! When the connection is lost the client reconnects by itself (backoff
//! with jitter, to any of [`ClientOptions::servers`] as well as
//! [`ClientOptions::server`]), resumes its session, rejoins its rooms from the newest
//! event delivered (the server replays what was missed) and resends the
//! reliable emits the server had not confirmed, which the server publishes
//! once. [`Events::next_incoming`] also reports each step, and per room
//! whether the missed events were recovered.

mod datagram_order;
mod error;
mod event;
mod handshake;
mod incoming;
mod link;
mod options;
mod outbox;
mod reconnect;
mod rooms;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{timeout, timeout_at, Instant};

pub use crate::wire::{Recovery, RecoveryFailure, ResumeOutcome};
pub use datagram_order::{DatagramOrder, Verdict};
pub use error::ClientError;
pub use event::{Delivery, Event, Events, Incoming};
pub use options::{ClientOptions, ClientStats, JoinOptions, JoinOutcome, Reconnect, Trust};
pub use reconnect::Backoff;

use link::Link;
use options::Counters;
use outbox::Outbox;
use rooms::RoomTable;

use crate::auth::Action;
use crate::sync::lock;
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
    Refreshed {
        expires: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Forbidden {
        room: String,
        action: Action,
    },
}

/// A request waiting for its reply.
pub(crate) struct Waiter {
    tx: oneshot::Sender<Reply>,
    /// Acks survive a reconnect (the outbox resends their event); other
    /// requests fail with the connection they were sent on.
    survives_reconnect: bool,
}

/// The session as of the newest `Welcome`.
pub(crate) struct Session {
    session_id: u64,
    max_frame: usize,
    epoch: u64,
    resume_token: String,
}

/// Everything a client is, across its connections.
pub(crate) struct Core {
    options: ClientOptions,
    /// The current connection; `None` while reconnecting.
    link: watch::Sender<Option<Arc<Link>>>,
    /// Why the last connection ended.
    last_loss: Mutex<Option<ClientError>>,
    closing_flag: AtomicBool,
    closing: Notify,
    /// Set when the supervisor has stopped: no connection will come again.
    finished: AtomicBool,
    session: Mutex<Session>,
    rooms: Arc<Mutex<RoomTable>>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_request: AtomicU64,
    outbox: Outbox,
    counters: Counters,
    /// When each room's previous emit was (for datagram copies).
    last_emit: Mutex<HashMap<Arc<str>, Option<std::time::Instant>>>,
    /// Rooms whose id is being resolved for datagram copies.
    resolving: Mutex<HashSet<Arc<str>>>,
    /// The next `Link::id`.
    next_link: AtomicU64,
    /// The token `Hello` carries: [`ClientOptions::token`], then the one of
    /// the newest [`Client::refresh_token`].
    token: watch::Sender<Option<String>>,
}

impl Core {
    /// This connection's id for `room`: known, or asked of the server.
    async fn resolve_on(&self, link: &Link, room: &str) -> Result<RoomId, ClientError> {
        if let Some(id) = link.room_id(room) {
            return Ok(id);
        }
        let reply = self
            .request_on(link, "resolve", |request| Frame::Resolve {
                request,
                room: room.to_string(),
            })
            .await?;
        match reply {
            Reply::Resolved { room_id } => {
                link.learn(room_id, room);
                Ok(room_id)
            }
            _ => Err(ClientError::Protocol("unexpected answer to Resolve".into())),
        }
    }

    /// The token the next `Hello` carries.
    pub(crate) fn token(&self) -> Option<String> {
        self.token.borrow().clone()
    }

    fn current(&self) -> Option<Arc<Link>> {
        self.link.borrow().clone()
    }

    fn is_closing(&self) -> bool {
        self.closing_flag.load(Ordering::SeqCst)
    }

    /// Records a lost connection (`None`) or a new one.
    fn set_link(&self, link: Option<Arc<Link>>, lost: Option<ClientError>) {
        if let Some(lost) = lost {
            *lock(&self.last_loss) = Some(lost);
        }
        if link.is_none() {
            self.fail_requests(false);
        }
        self.link.send_replace(link);
    }

    /// Makes a freshly rejoined connection the current one.
    fn adopt(&self, link: &Arc<Link>) {
        let w = &link.welcome;
        *lock(&self.session) = Session {
            session_id: w.session_id,
            max_frame: w.max_frame,
            epoch: w.epoch,
            resume_token: w.resume_token.clone(),
        };
        self.set_link(Some(link.clone()), None);
    }

    /// Fails waiting requests: those of a lost connection, or (`all`) every
    /// one, acks included, when the client closes for good.
    fn fail_requests(&self, all: bool) {
        lock(&self.pending).retain(|_, w| !all && w.survives_reconnect);
    }

    /// The current connection, waiting for a reconnect until `deadline`.
    async fn wait_link(
        &self,
        what: &'static str,
        deadline: Instant,
    ) -> Result<Arc<Link>, ClientError> {
        let mut rx = self.link.subscribe();
        let waited = timeout_at(deadline, async {
            loop {
                if let Some(link) = rx.borrow_and_update().clone() {
                    return Ok(link);
                }
                if self.is_closing()
                    || self.finished.load(Ordering::SeqCst)
                    || rx.changed().await.is_err()
                {
                    return Err(self.gone());
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(ClientError::Timeout {
                what,
                after: self.options.request_timeout,
            })
        })
    }

    /// Why there is no connection.
    fn gone(&self) -> ClientError {
        lock(&self.last_loss)
            .clone()
            .unwrap_or_else(|| ClientError::Disconnected("the client is closed".into()))
    }

    fn register(&self, survives_reconnect: bool) -> (u64, oneshot::Receiver<Reply>) {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(
            request,
            Waiter {
                tx,
                survives_reconnect,
            },
        );
        (request, rx)
    }

    /// Sends a control request on `link` and waits for its reply.
    async fn request_on(
        &self,
        link: &Link,
        what: &'static str,
        frame: impl FnOnce(u64) -> Frame,
    ) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + self.options.request_timeout;
        let (request, answer) = self.register(false);
        let bytes = wire::encode_framed(&frame(request));
        match timeout_at(deadline, link.control().send(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                lock(&self.pending).remove(&request);
                return Err(self.gone());
            }
            Err(_) => {
                lock(&self.pending).remove(&request);
                return Err(ClientError::Timeout {
                    what,
                    after: self.options.request_timeout,
                });
            }
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
        match timeout_at(deadline, answer).await {
            Ok(Ok(Reply::Error { code, message })) => Err(ClientError::Rejected {
                code,
                reason: message,
            }),
            Ok(Ok(Reply::Forbidden { room, action })) => {
                Err(ClientError::Forbidden { room, action })
            }
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(self.gone()),
            Err(_) => {
                lock(&self.pending).remove(&request);
                Err(ClientError::Timeout {
                    what,
                    after: self.options.request_timeout,
                })
            }
        }
    }

    /// Closes the client for good.
    fn shut(&self) {
        self.closing_flag.store(true, Ordering::SeqCst);
        self.closing.notify_waiters();
        if let Some(link) = self.current() {
            link.conn
                .close(wire::close_code::NORMAL.into(), b"client closed");
        }
    }
}

/// A client. Cloning is cheap and shares it; the client closes when the
/// last clone is dropped or on [`Client::close`].
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

struct Handle {
    core: Arc<Core>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.core.shut();
    }
}

impl Client {
    /// Connects, verifies the server, and completes the quicbus handshake,
    /// all within `options.connect_timeout` per server tried (`server`, then
    /// each of [`ClientOptions::servers`] until one answers). The first
    /// connection is not retried: a wrong address or CA fails here. Later
    /// losses are.
    pub async fn connect(options: ClientOptions) -> Result<(Client, Events), ClientError> {
        let (events_tx, events_rx) = mpsc::channel(options.event_queue.max(1));
        let options_token = options.token.clone();
        let core = Arc::new(Core {
            outbox: Outbox::new(options.outbox_events, options.outbox_bytes),
            options,
            link: watch::Sender::new(None),
            last_loss: Mutex::new(None),
            closing_flag: AtomicBool::new(false),
            closing: Notify::new(),
            finished: AtomicBool::new(false),
            session: Mutex::new(Session {
                session_id: 0,
                max_frame: 0,
                epoch: 0,
                resume_token: String::new(),
            }),
            rooms: Arc::default(),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            counters: Counters::default(),
            last_emit: Mutex::new(HashMap::new()),
            resolving: Mutex::new(HashSet::new()),
            next_link: AtomicU64::new(1),
            token: watch::Sender::new(options_token),
        });
        let link = Link::open_first(&core, events_tx.clone()).await?;
        core.adopt(&link);
        link.set_ready();
        tokio::spawn(reconnect::supervise(core.clone(), link, events_tx));
        let events = Events {
            rx: events_rx,
            rooms: core.rooms.clone(),
        };
        let client = Client {
            handle: Arc::new(Handle { core }),
        };
        Ok((client, events))
    }

    fn core(&self) -> &Arc<Core> {
        &self.handle.core
    }

    /// The server's history epoch: offsets are comparable only within one.
    pub fn epoch(&self) -> u64 {
        lock(&self.core().session).epoch
    }

    /// The session id the server assigned to the current connection.
    pub fn session_id(&self) -> u64 {
        lock(&self.core().session).session_id
    }

    /// Whether a connection is up right now (false while reconnecting).
    pub fn is_connected(&self) -> bool {
        self.core().current().is_some()
    }

    /// Joins a room and returns its current offset (that of its newest
    /// reliable event, 0 if none). Events published afterwards arrive on
    /// [`Events`]; this client's own events only with [`JoinOptions::echo`].
    pub async fn join(&self, room: &str) -> Result<u64, ClientError> {
        Ok(self.join_with(room, JoinOptions::default()).await?.offset)
    }

    /// Joins a room with options; with `since`, the events after that offset
    /// are replayed first, and [`JoinOutcome::recovery`] says whether that
    /// was possible (a late joiner catching up). A joined room is rejoined
    /// by itself after a reconnect.
    pub async fn join_with(
        &self,
        room: &str,
        options: JoinOptions,
    ) -> Result<JoinOutcome, ClientError> {
        validate_name("room", room).map_err(ClientError::InvalidName)?;
        let core = self.core();
        let name: Arc<str> = Arc::from(room);
        let already = lock(&core.rooms).start_joining(&name, options.echo);
        let reply = match core.wait_link("join", self.deadline()).await {
            Ok(link) => core
                .request_on(&link, "join", |request| Frame::Join {
                    request,
                    room: room.to_string(),
                    echo: options.echo,
                    since: options.since,
                })
                .await
                .map(|reply| (link, reply)),
            Err(e) => Err(e),
        };
        match reply {
            Ok((
                link,
                Reply::Joined {
                    room_id,
                    offset,
                    recovery,
                },
            )) => {
                let at = link.learn(room_id, room);
                // A room joined again keeps its stream, and its position.
                if !already {
                    lock(&link.rooms).reset_datagrams(room_id);
                    lock(&core.rooms).settle(&name, at, offset, options.since, recovery);
                }
                Ok(JoinOutcome { offset, recovery })
            }
            other => {
                if !already {
                    lock(&core.rooms).joined.remove(&name);
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
        let core = self.core();
        if !lock(&core.rooms).joined.remove(room) {
            return Err(ClientError::Rejected {
                code: ErrorCode::NotJoined,
                reason: format!("room {room} is not joined"),
            });
        }
        // Nothing of the room reaches the application from here on; the
        // server is told on the current connection, by that connection's id.
        let link = core.wait_link("leave", self.deadline()).await?;
        let room_id = match core.resolve_on(&link, room).await {
            Ok(room_id) => room_id,
            // No id on this connection, and none to be had (the token may
            // not publish there): the room was not joined on it.
            Err(ClientError::Forbidden { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        match core
            .request_on(&link, "leave", |request| Frame::Leave { request, room_id })
            .await
        {
            Ok(Reply::Left) => Ok(()),
            // Left already as far as the server knows (the connection was
            // replaced before the room was rejoined): that is what leave wants.
            Err(ClientError::Rejected {
                code: ErrorCode::NotJoined,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Err(ClientError::Protocol("unexpected answer to Leave".into())),
        }
    }

    /// Publishes a reliable event. It goes into the outbox and is sent in
    /// order on the room's stream; this returns once it is queued, not once
    /// the server has it (use [`Client::emit_with_ack`] for that). While
    /// disconnected the outbox keeps it and sends it after the reconnect,
    /// and the server publishes it once even if it had received it before
    /// the connection died. If the outbox stays full for the request
    /// timeout, this fails with [`ClientError::OutboxFull`].
    pub async fn emit(
        &self,
        room: &str,
        event: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let deadline = self.deadline();
        self.publish(room, event, payload.into(), None, deadline)
            .await
    }

    /// Publishes a reliable event and waits until the server has accepted
    /// it; returns its offset. Queuing and the ack together take at most the
    /// request timeout, else [`ClientError::Timeout`]; a refusal is
    /// [`ClientError::Rejected`]; a client closed meanwhile,
    /// [`ClientError::Disconnected`] (or the close that ended it).
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
        let deadline = self.deadline();
        let (request, answer) = self.core().register(true);
        if let Err(e) = self
            .publish(room, event, payload.into(), Some(request), deadline)
            .await
        {
            lock(&self.core().pending).remove(&request);
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
    /// not fit the connection's current maximum datagram size, and at once
    /// (no outbox: datagrams are for what the next one replaces) while
    /// disconnected.
    pub async fn emit_datagram(
        &self,
        room: &str,
        event: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let payload = payload.into();
        validate_name("event", event).map_err(ClientError::InvalidName)?;
        let (link, room_id) = self.room_id(room).await?;
        let limit = datagram_limit(&link, room_id, event)?;
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
        link.conn.send_datagram(frame).map_err(|e| match e {
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
        let (link, room_id) = self.room_id(room).await?;
        datagram_limit(&link, room_id, event)
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

    /// The token the next connection presents, without telling the current
    /// one (see [`Client::refresh_token`] for that): for a client that is
    /// reconnecting, say after its connection was closed with `token
    /// expired`, so that its next attempt succeeds.
    pub fn set_token(&self, token: &str) {
        self.core().token.send_replace(Some(token.to_string()));
    }

    /// Gives the connection a new token before the current one expires (the
    /// server closes a connection whose token expires with `token expired`).
    /// The token must be for the same user; its permissions apply at once,
    /// and rooms it no longer lets the client subscribe to are left (each
    /// announced as [`Incoming::Forbidden`]). Returns the new expiry,
    /// seconds since the Unix epoch. Later reconnects present this token.
    pub async fn refresh_token(&self, token: &str) -> Result<u64, ClientError> {
        let reply = self
            .request("refresh", |request| Frame::Refresh {
                request,
                token: token.to_string(),
            })
            .await?;
        match reply {
            Reply::Refreshed { expires } => {
                self.set_token(token);
                lock(&self.core().resolving).clear();
                Ok(expires)
            }
            _ => Err(ClientError::Protocol("unexpected answer to Refresh".into())),
        }
    }

    /// How many reliable emits the server has not confirmed yet.
    pub fn outbox_len(&self) -> usize {
        self.core().outbox.len()
    }

    /// Connection statistics (QUIC figures are those of the current connection).
    pub fn stats(&self) -> ClientStats {
        let c = &self.core().counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (rtt, sent_packets, lost_packets) = match self.core().current() {
            Some(link) => {
                let quic = link.conn.stats();
                (
                    link.conn.rtt(),
                    quic.path.sent_packets,
                    quic.path.lost_packets,
                )
            }
            None => (Duration::ZERO, 0, 0),
        };
        ClientStats {
            rtt,
            sent_packets,
            lost_packets,
            reliable_received: get(&c.reliable_received),
            reliable_copies: get(&c.reliable_copies),
            datagrams_received: get(&c.datagrams_received),
            datagrams_lost: get(&c.datagrams_lost),
            datagrams_stale: get(&c.datagrams_stale),
            datagrams_dropped_queue_full: get(&c.datagrams_dropped_queue_full),
            server_errors: get(&c.server_errors),
            reconnects: get(&c.reconnects),
            forbidden: get(&c.forbidden),
        }
    }

    /// Waits until the current connection ends and says why (the client may
    /// then reconnect by itself).
    pub async fn closed(&self) -> ClientError {
        match self.core().current() {
            Some(link) => ClientError::from_connection(&link.conn.closed().await),
            None => self.core().gone(),
        }
    }

    /// Closes the client for good and waits (briefly) for the server to learn it.
    pub async fn close(&self) {
        let link = self.core().current();
        self.core().shut();
        // A shared endpoint keeps running for its other clients and sends
        // the close by itself; an own one is given a moment to send it.
        if let (Some(link), None) = (link, &self.core().options.endpoint) {
            let _ = timeout(Duration::from_secs(1), link.endpoint.wait_idle()).await;
        }
    }

    /// The current connection and its id for `room` (ids belong to a
    /// connection: whatever uses the id must go out on that one). Fails at
    /// once while disconnected.
    async fn room_id(&self, room: &str) -> Result<(Arc<Link>, RoomId), ClientError> {
        validate_name("room", room).map_err(ClientError::InvalidName)?;
        let link = self.core().current().ok_or_else(|| self.core().gone())?;
        let id = self.core().resolve_on(&link, room).await?;
        Ok((link, id))
    }

    /// Puts a `Publish` into the room's outbox (waiting for room until
    /// `deadline`) and makes sure the current connection sends it.
    async fn publish(
        &self,
        room: &str,
        event: &str,
        payload: Bytes,
        ack: Option<u64>,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        validate_name("room", room).map_err(ClientError::InvalidName)?;
        validate_name("event", event).map_err(ClientError::InvalidName)?;
        let core = self.core();
        if core.finished.load(Ordering::SeqCst) {
            return Err(core.gone());
        }
        let max_frame = lock(&core.session).max_frame;
        let size = wire::event_frame_len(event.len(), payload.len());
        if size > max_frame {
            return Err(ClientError::EventTooLarge {
                size,
                limit: max_frame,
            });
        }
        let frame = |id| {
            wire::encode_framed(&Frame::Publish {
                id,
                event: event.to_string(),
                payload: payload.clone(),
                ack,
            })
        };
        let id =
            core.outbox
                .push(room, frame, deadline)
                .await
                .map_err(|_| ClientError::OutboxFull {
                    limit: core.options.outbox_events,
                })?;
        if let Some(link) = core.current() {
            link.ensure_writer(core, room);
        }
        if core.options.copies && event.len() + payload.len() <= wire::MAX_COPY_BYTES {
            let rtt = core
                .current()
                .map_or(Duration::ZERO, |link| link.conn.rtt());
            let now = std::time::Instant::now();
            let alone = {
                let mut times = lock(&core.last_emit);
                match times.get_mut(room) {
                    Some(last) => crate::copies::spaced(last, now, rtt),
                    None => {
                        times.insert(Arc::from(room), Some(now));
                        true
                    }
                }
            };
            if alone {
                self.send_copy(room, id, event, payload, ack);
            }
        }
        Ok(())
    }

    /// Sends the `PublishCopy` datagram of publish `id`, if connected and
    /// the room's id is known (else it is looked up in the background for
    /// the next copies). Never waits; a copy that cannot be sent is skipped:
    /// the stream carries the event anyway.
    fn send_copy(&self, room: &str, id: u64, event: &str, payload: Bytes, ack: Option<u64>) {
        let core = self.core();
        let Some(link) = core.current() else {
            return;
        };
        let Some(room_id) = link.room_id(room) else {
            // Never wait here: the event is queued already. Learn the id in
            // the background for the next copies; this one goes uncopied.
            if lock(&core.resolving).insert(Arc::from(room)) {
                let (core, room) = (core.clone(), room.to_string());
                tokio::spawn(async move {
                    // A room the token may not publish to stays marked, so
                    // its emits do not ask again (each refusal is counted on
                    // the server); a refreshed token clears the marks.
                    let refused = matches!(
                        core.resolve_on(&link, &room).await,
                        Err(ClientError::Forbidden { .. })
                    );
                    if !refused {
                        lock(&core.resolving).remove(room.as_str());
                    }
                });
            }
            return;
        };
        let buffer = core.options.transport.datagram_send_buffer;
        if !crate::copies::path_idle(&link.conn, buffer) {
            return;
        }
        let Some(target) = link.conn.max_datagram_size() else {
            return;
        };
        let copy = wire::encode_padded(target, |pad| Frame::PublishCopy {
            room_id,
            id,
            event: event.to_string(),
            payload: payload.clone(),
            ack,
            pad,
        });
        let _ = link.conn.send_datagram(copy);
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.core().options.request_timeout
    }

    /// A control request on the current connection (waiting for a
    /// reconnect, within the request timeout, if there is none).
    async fn request(
        &self,
        what: &'static str,
        frame: impl FnOnce(u64) -> Frame,
    ) -> Result<Reply, ClientError> {
        let link = self.core().wait_link(what, self.deadline()).await?;
        self.core().request_on(&link, what, frame).await
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
    /// emit, to answer (across a reconnect, if one happens); after that this
    /// fails with [`ClientError::Timeout`].
    pub async fn wait(self) -> Result<u64, ClientError> {
        match self
            .client
            .core()
            .await_reply("ack", self.request, self.answer, self.deadline)
            .await?
        {
            Reply::Ack { offset } => Ok(offset),
            _ => Err(ClientError::Protocol("unexpected answer to Publish".into())),
        }
    }
}

fn datagram_limit(link: &Link, room_id: RoomId, event: &str) -> Result<usize, ClientError> {
    let max = link
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
    Ok(max.saturating_sub(overhead + 2))
}

pub(crate) fn closed_or_lost(conn: &quinn::Connection) -> ClientError {
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
