//! One task per connection: the handshake, then control requests, with the
//! connection's other tasks started and stopped from here.
//!
//! Tasks of one session:
//! - the session task itself ([`run`]): control requests, datagrams,
//!   accepting publish streams; it owns the connection's room ids;
//! - one reader per client publish stream (`ingest.rs`);
//! - one writer per joined room, fed by that room's bounded queue, one
//!   control writer and one datagram writer (`outbound.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use web_transport_quinn::SendStream;

use super::{Connection, Reader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Duration, Instant};

use super::access::{self, Identity, RoomGrant};
use super::backplane::{BackplaneError, SessionId};
use super::context::{
    error_frame, forbidden, over_rate, read_failure, stopping, unknown_id, Closing,
    ConnectionShare, Control, Ending, SessionContext, CONTROL_QUEUE,
};
use super::ingest::{handle_datagram, read_publish_stream};
use super::limits::{Throttle, Verdict};
use super::outbound::{
    write_control, write_datagrams, write_room_stream, DatagramRing, RoomQueue, SessionSubscriber,
};
use super::resume::Attached;
use super::room_ids::RoomIds;
use super::stats::{Limit, Refusal};
use crate::auth::token::unix_now;
use crate::auth::Action;
use crate::sync::lock;
use crate::wire::{
    self, close_code, validate_name, ErrorCode, Frame, FrameReader, Recovery, RecoveryFailure,
    ResumeOutcome, RoomId, PROTOCOL_VERSION,
};

/// Largest `Hello` accepted, in bytes: room for a signed token, a resume
/// token and a client name, and little for anyone who sends half of one.
pub const MAX_HELLO: usize = 8 * 1024;

/// Runs one session until the connection ends or the server shuts down.
pub(crate) async fn run(
    conn: Connection,
    session: SessionId,
    ctx: Arc<SessionContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (control_send, mut control_reader, attached, copies, identity) =
        match handshake(&conn, session, &ctx).await {
            Ok(streams) => streams,
            Err(Ending::Close(closing)) => return closing.apply(&conn, &ctx.stats),
            Err(Ending::Gone) => return,
        };

    let (control_tx, control_rx) = mpsc::channel::<Bytes>(CONTROL_QUEUE);
    let control = Control::new(control_tx, conn.clone(), ctx.stats.clone());
    let expires = identity.expires();
    let share = Arc::new(ConnectionShare::new(control.clone(), &ctx.config, identity));
    control_reader.set_frame_timeout(ctx.config.limits.frame_timeout);
    control_reader.set_budget(share.frame_budget.clone());
    let control_writer = tokio::spawn(write_control(control_send, control_rx));
    let datagrams = Arc::new(DatagramRing::new(ctx.config.datagram_queue));
    let datagram_writer = tokio::spawn(write_datagrams(
        conn.clone(),
        datagrams.clone(),
        ctx.stats.clone(),
    ));
    let mut readers = JoinSet::new();
    let mut rooms = Rooms {
        conn: &conn,
        session,
        ctx: &ctx,
        ids: RoomIds::with_max(ctx.config.limits.room_names),
        joined: HashMap::new(),
        queued: Arc::default(),
        control_rate: Throttle::new(
            ctx.config.limits.control_rate,
            ctx.config.limits.rate_strikes,
            std::time::Instant::now(),
        ),
        writers: JoinSet::new(),
        datagrams: &datagrams,
        copies,
        share: &share,
        expires,
        expiry: Instant::now(),
    };
    rooms.expiry = rooms.expiry_deadline();
    // When the token expires (far away without one); moved by a `Refresh`.
    let mut expiry_at = rooms.expiry;
    let expiry = tokio::time::sleep_until(expiry_at);
    tokio::pin!(expiry);

    let draining = loop {
        // Reap finished tasks so a long session does not accumulate them.
        while rooms.writers.try_join_next().is_some() {}
        while readers.try_join_next().is_some() {}
        tokio::select! {
            () = stopping(&mut shutdown) => break true,
            frame = control_reader.next() => {
                let outcome = match frame {
                    Ok(Some(frame)) => rooms.handle_control(frame, &control).await,
                    Ok(None) => Err(Ending::Close(Closing { code: close_code::NORMAL, reason: "control stream finished".into() })),
                    Err(e) => Err(read_failure("control stream", e).map_or(Ending::Gone, Ending::Close)),
                };
                if let Err(ending) = outcome {
                    if let Ending::Close(closing) = ending { closing.apply(&conn, &ctx.stats); }
                    break false;
                }
                if rooms.expiry != expiry_at {
                    expiry_at = rooms.expiry;
                    expiry.as_mut().reset(expiry_at);
                }
                // A join or resolve can be work (a room created, a replay
                // started): let the other connections run between them, so
                // one connection's flood of requests cannot starve them.
                tokio::task::yield_now().await;
            }
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let reader = share.reader(recv, &ctx.config);
                    readers.spawn(read_publish_stream(reader, conn.clone(), session, ctx.clone(), share.clone(), attached.state.clone(), shutdown.clone()));
                }
                Err(_) => break false,
            },
            () = &mut expiry => {
                ctx.stats.refused(Refusal::ExpiredLive);
                let at = rooms.expires.unwrap_or_default();
                Closing {
                    code: close_code::TOKEN_EXPIRED,
                    reason: format!("token expired at {at} (Unix time) and was not refreshed"),
                }
                .apply(&conn, &ctx.stats);
                break false;
            }
            datagram = read_datagram(&conn) => match datagram {
                Ok(bytes) => {
                    if let Err(closing) = handle_datagram(&bytes, session, &ctx, &share, &attached.state, &mut rooms.ids) {
                        closing.apply(&conn, &ctx.stats);
                        break false;
                    }
                }
                Err(_) => break false,
            },
        }
    };
    datagram_writer.abort();
    let Rooms {
        joined,
        mut writers,
        ..
    } = rooms;
    lock(&ctx.addresses).leave_rooms(conn.remote_address().ip(), joined.len());
    if !draining {
        // The connection is gone or being closed: nothing more to deliver.
        readers.abort_all();
        control_writer.abort();
        for room in joined.keys() {
            ctx.backplane.unsubscribe(room, session);
        }
        // Only a clean close by the client ends the session; after anything
        // else the client may come back and resume it.
        let clean = closed_normally(&conn);
        ctx.sessions
            .detach(&attached, clean, std::time::Instant::now());
        return;
    }
    // The server is going away. With durable storage the client may resume
    // the session on the next start; with memory there is nothing to resume.
    ctx.sessions.detach(
        &attached,
        !ctx.sessions.is_durable(),
        std::time::Instant::now(),
    );

    // Shutdown: publish readers stop between frames (so every accepted
    // event's ack is queued), then every room writer delivers what was
    // accepted, then the control writer flushes, then the close.
    let deadline = Instant::now() + ctx.config.shutdown_grace;
    let mut joined = joined;
    let drained = timeout_at(deadline, async {
        while readers.join_next().await.is_some() {}
        for room in joined.keys() {
            ctx.backplane.unsubscribe(room, session);
        }
        // With the backplane's copies gone, dropping ours closes every room queue.
        joined.clear();
        drop(control);
        drop(share);
        while writers.join_next().await.is_some() {}
        let _ = control_writer.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            %session,
            "shutdown grace expired before the client received everything"
        );
        for room in joined.keys() {
            ctx.backplane.unsubscribe(room, session);
        }
    }
    conn.close(close_code::SERVER_SHUTTING_DOWN, b"server shutting down");
}

/// The next datagram's frame. A native connection's is read from quinn
/// directly, as before WebTransport came: the session's reader builds a
/// new owned future (a connection handle clone and an error mapping) on
/// every turn of the session loop, and the native datagram relay measured
/// slower with it (README, "WebTransport").
async fn read_datagram(conn: &Connection) -> Result<Bytes, ()> {
    if conn.request().is_none() {
        let quic: &quinn::Connection = conn;
        quic.read_datagram().await.map_err(drop)
    } else {
        conn.read_datagram().await.map_err(drop)
    }
}

/// Whether the client closed the connection itself with `NORMAL`: a
/// native client with that QUIC application code, a browser with that
/// WebTransport session code.
fn closed_normally(conn: &Connection) -> bool {
    use web_transport_quinn::{SessionError, WebTransportError};
    if conn.request().is_some() {
        matches!(
            conn.close_reason(),
            Some(SessionError::WebTransportError(WebTransportError::Closed(code, _)))
                if code == close_code::NORMAL
        )
    } else {
        let quic: &quinn::Connection = conn;
        matches!(
            quic.close_reason(),
            Some(quinn::ConnectionError::ApplicationClosed(ref c))
                if c.error_code.into_inner() == u64::from(close_code::NORMAL)
        )
    }
}

/// Accepts the control stream, reads `Hello`, answers `Welcome` or `Reject`.
async fn handshake(
    conn: &Connection,
    session: SessionId,
    ctx: &SessionContext,
) -> Result<(SendStream, Reader, Attached, bool, Identity), Ending> {
    let hello = async {
        let (send, recv) = conn.accept_bi().await.map_err(|_| Ending::Gone)?;
        // Nobody is known yet: a `Hello` gets a few KiB, not the full frame
        // limit, so a crowd of half-sent ones holds little memory.
        let mut reader = FrameReader::new(recv, MAX_HELLO);
        match reader.next().await {
            Ok(Some(Frame::Hello {
                version,
                token,
                client_name,
                resume,
                copies,
            })) => {
                reader.set_max_frame(ctx.config.max_frame);
                Ok((send, reader, version, token, client_name, resume, copies))
            }
            Ok(Some(other)) => Err(Ending::Close(Closing::violation(format!(
                "expected Hello as the first control frame, got {}",
                other.name()
            )))),
            Ok(None) => Err(Ending::Close(Closing::violation(
                "control stream ended before Hello",
            ))),
            Err(e) => Err(read_failure("handshake", e).map_or(Ending::Gone, Ending::Close)),
        }
    };
    let (mut send, reader, version, token, client_name, resume, copies) =
        match timeout(ctx.config.handshake_timeout, hello).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Ending::Close(Closing {
                    code: close_code::HANDSHAKE_TIMEOUT,
                    reason: format!(
                        "no Hello within {:?} of connecting",
                        ctx.config.handshake_timeout
                    ),
                }))
            }
        };

    let admitted = if version != PROTOCOL_VERSION {
        Err((
            ErrorCode::UnsupportedVersion,
            close_code::UNSUPPORTED_VERSION,
            format!("client speaks protocol version {version}, server speaks {PROTOCOL_VERSION}"),
        ))
    } else {
        admit(conn, ctx, token.as_deref())
            .map_err(|(code, reason)| (code, close_code::UNAUTHORIZED, reason))
    };
    let identity = match admitted {
        Ok(identity) => identity,
        Err(refusal) => return Err(reject(send, ctx, refusal).await),
    };

    // In a cluster, the session may have begun on another node.
    ctx.sessions
        .find_elsewhere(
            resume.as_ref(),
            ctx.backplane.epoch(),
            std::time::Instant::now(),
        )
        .await;
    let taken_over = conn.clone();
    let attached = ctx.sessions.attach(
        resume.as_ref(),
        identity.user(),
        ctx.backplane.epoch(),
        move || {
            taken_over.close(
                close_code::SESSION_RESUMED,
                b"session resumed on another connection",
            )
        },
        std::time::Instant::now(),
    );
    if let ResumeOutcome::NotResumed {
        reason: RecoveryFailure::AnotherUser,
    } = attached.outcome
    {
        ctx.stats.refused(Refusal::AnotherUser);
    }
    let max_datagram_payload = u32::try_from(conn.max_datagram_size()).unwrap_or(u32::MAX);
    let welcome = wire::encode_framed(&Frame::Welcome {
        session_id: session.connection,
        max_datagram_payload,
        max_frame: ctx.config.max_frame as u32,
        epoch: ctx.backplane.epoch(),
        resume_token: attached.state.token(),
        resumed: attached.outcome,
    });
    if send.write_all(&welcome).await.is_err() {
        ctx.sessions
            .detach(&attached, false, std::time::Instant::now());
        return Err(Ending::Gone);
    }
    tracing::debug!(%session, client = %client_name, user = ?identity.user(), addr = %conn.remote_address(), resumed = ?attached.outcome, "session started");
    Ok((send, reader, attached, copies, identity))
}

/// Sends `Reject` and gives it a moment to arrive before the close
/// overtakes it; the close reason repeats it in case it does not.
async fn reject(
    mut send: SendStream,
    ctx: &SessionContext,
    (code, close, reason): (ErrorCode, u32, String),
) -> Ending {
    let reject = wire::encode_framed(&Frame::Reject {
        code,
        reason: reason.clone(),
        server_version: PROTOCOL_VERSION,
    });
    if send.write_all(&reject).await.is_ok() && send.finish().is_ok() {
        let _ = timeout(ctx.config.handshake_timeout, send.stopped()).await;
    }
    Ending::Close(Closing {
        code: close,
        reason,
    })
}

/// Checks `Hello`'s token: a signed token (or none, if anonymous clients
/// are allowed), or the server's shared token; who the connection is, or
/// why not. An address that fails too often is refused without its token
/// being looked at. A shared token is compared in constant time.
fn admit(
    conn: &Connection,
    ctx: &SessionContext,
    given: Option<&str>,
) -> Result<Identity, (ErrorCode, String)> {
    use subtle::ConstantTimeEq;
    let verifier = ctx.config.auth.verifier.as_ref();
    if verifier.is_none() && ctx.config.token.is_none() {
        return Ok(Identity::Open);
    }
    let ip = conn.remote_address().ip();
    let now = std::time::Instant::now();
    if !lock(&ctx.addresses).may_try_token(ip, now) {
        ctx.stats.limit_hit(Limit::FailedHellos);
        return Err((
            ErrorCode::Unauthorized,
            "too many failed attempts from this address; try again later".into(),
        ));
    }
    if let Some(verifier) = verifier {
        return access::authenticate(&ctx.config.auth, verifier, given, unix_now()).map_err(
            |refused| {
                ctx.stats.refused(refused.refusal);
                if refused.guess {
                    lock(&ctx.addresses).failed_hello(ip, now);
                }
                (refused.code, refused.reason)
            },
        );
    }
    let expected = ctx.config.token.as_deref().unwrap_or_default();
    let given = given.unwrap_or_default().as_bytes();
    if bool::from(given.ct_eq(expected.as_bytes())) {
        return Ok(Identity::Open);
    }
    lock(&ctx.addresses).failed_hello(ip, now);
    Err((ErrorCode::Unauthorized, "missing or wrong token".into()))
}

/// The request id of a client control frame.
fn request_of(frame: &Frame) -> Option<u64> {
    match frame {
        Frame::Join { request, .. }
        | Frame::Leave { request, .. }
        | Frame::Ping { request }
        | Frame::Refresh { request, .. }
        | Frame::Resolve { request, .. } => Some(*request),
        _ => None,
    }
}

/// The rooms a session has named and joined, and what it needs to join more.
struct Rooms<'a> {
    conn: &'a Connection,
    session: SessionId,
    ctx: &'a SessionContext,
    /// The room ids handed out on this connection.
    ids: RoomIds,
    /// Each joined room's queue, by name; the backplane's subscriber holds a clone.
    joined: HashMap<Arc<str>, RoomQueue>,
    writers: JoinSet<()>,
    datagrams: &'a Arc<DatagramRing>,
    /// The client asked for `EventCopy` datagrams (`Hello.copies`).
    copies: bool,
    /// The connection's rate of control requests.
    control_rate: Throttle,
    /// Bytes of reliable events queued for the connection, all rooms.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// What the connection's tasks share (its access among it).
    share: &'a Arc<ConnectionShare>,
    /// When the connection's token expires (seconds since the Unix epoch).
    expires: Option<u64>,
    /// When the connection is closed unless its token is refreshed.
    expiry: Instant,
}

impl Rooms<'_> {
    /// When the connection must close unless its token is refreshed.
    fn expiry_deadline(&self) -> Instant {
        // Far enough to mean never, near enough not to overflow.
        let never = Duration::from_secs(100 * 365 * 24 * 3600);
        let left = match self.expires {
            Some(expires) => access::until(expires, self.leeway()),
            None => never,
        };
        Instant::now() + left
    }

    fn leeway(&self) -> u64 {
        self.ctx
            .config
            .auth
            .verifier
            .as_ref()
            .map_or(0, |v| v.leeway())
    }

    /// What the connection may do in `room` now.
    fn grant(&self, room: &str) -> RoomGrant {
        self.share.access.grant(room, &self.ctx.config.namespaces).0
    }

    /// A new token for the connection: same user, new expiry, and new
    /// permissions, which apply at once (joined rooms it may no longer
    /// subscribe to are left, and the client told).
    fn refresh(&mut self, request: u64, token: &str, control: &Control) -> Bytes {
        let stats = &self.ctx.stats;
        let Some(verifier) = self.ctx.config.auth.verifier.as_ref() else {
            let message = "this server does not use signed tokens: nothing to refresh".into();
            return error_frame(Some(request), ErrorCode::InvalidToken, message);
        };
        let identity = match access::verify(verifier, token, unix_now()) {
            Ok(identity) => identity,
            Err(refused) => {
                stats.refused(refused.refusal);
                return error_frame(Some(request), refused.code, refused.reason);
            }
        };
        let current = self.share.access.identity();
        if identity.user() != current.user() || current.user().is_none() {
            stats.refused(Refusal::TokenInvalid);
            let message = match current.user() {
                Some(user) => format!(
                    "invalid token: a refresh must be for the same user ({user}), not {}",
                    identity.user().unwrap_or_default()
                ),
                None => {
                    "invalid token: an anonymous connection cannot take a token; reconnect with it"
                        .into()
                }
            };
            return error_frame(Some(request), ErrorCode::InvalidToken, message);
        }
        let expires = identity.expires();
        self.share.access.replace(identity);
        self.expires = expires;
        self.expiry = self.expiry_deadline();
        let namespaces = &self.ctx.config.namespaces;
        let access = &self.share.access;
        self.ids.regrant(|room| access.grant(room, namespaces).0);
        let revoked: Vec<Arc<str>> = self
            .joined
            .keys()
            .filter(|room| !self.grant(room).allows(Action::Subscribe))
            .cloned()
            .collect();
        for room in revoked {
            self.joined.remove(&room);
            self.ctx.backplane.unsubscribe(&room, self.session);
            lock(&self.ctx.addresses).leave_rooms(self.conn.remote_address().ip(), 1);
            control.send(forbidden(stats, None, &room, Action::Subscribe));
        }
        wire::encode_framed(&Frame::Refreshed {
            request,
            expires: expires.unwrap_or(0),
        })
    }

    async fn handle_control(&mut self, frame: Frame, control: &Control) -> Result<(), Ending> {
        if let Some(request) = request_of(&frame) {
            match self.control_rate.check(std::time::Instant::now()) {
                Verdict::Allow => {}
                verdict => {
                    self.ctx.stats.limit_hit(Limit::ControlRate);
                    let rate = &self.ctx.config.limits.control_rate;
                    let (reply, closing) = over_rate("control request", rate, Some(request));
                    if verdict == Verdict::Close {
                        return Err(Ending::Close(closing));
                    }
                    return if control.send(reply) {
                        Ok(())
                    } else {
                        Err(Ending::Gone)
                    };
                }
            }
        }
        let reply = match frame {
            Frame::Join {
                request,
                room,
                echo,
                since,
            } => self.join(request, &room, echo, since).await,
            Frame::Leave { request, room_id } => self.leave(request, room_id),
            Frame::Ping { request } => wire::encode_framed(&Frame::Pong { request }),
            Frame::Resolve { request, room } => self.resolve(request, &room),
            Frame::Refresh { request, token } => self.refresh(request, &token, control),
            other => {
                return Err(Ending::Close(Closing::violation(format!(
                    "{} is not a client control frame",
                    other.name()
                ))))
            }
        };
        if control.send(reply) {
            Ok(())
        } else {
            Err(Ending::Gone)
        }
    }

    /// Hands out the room's id, to publish datagrams with: only for rooms
    /// the connection may publish to, so a publisher learns of a refusal
    /// here, not from a datagram dropped later (and a room it may not
    /// publish to is not created for it).
    fn resolve(&mut self, request: u64, room: &str) -> Bytes {
        if let Err(message) = validate_name("room", room) {
            return error_frame(Some(request), ErrorCode::InvalidName, message);
        }
        let grant = self.grant(room);
        if !grant.allows(Action::Publish) {
            return forbidden(&self.ctx.stats, Some(request), room, Action::Publish);
        }
        match self.name(room, grant) {
            Ok((room_id, _)) => wire::encode_framed(&Frame::Resolved { request, room_id }),
            Err((code, message)) => error_frame(Some(request), code, message),
        }
    }

    /// Makes sure a (valid) room exists, and hands out this connection's
    /// id for it, with its grant.
    fn name(
        &mut self,
        room: &str,
        grant: RoomGrant,
    ) -> Result<(RoomId, Arc<str>), (ErrorCode, String)> {
        self.ctx
            .backplane
            .open(room)
            .map_err(|e| (e.code(), e.to_string()))?;
        self.ids.id_for(room, grant).map_err(|_| {
            self.ctx.stats.limit_hit(Limit::RoomNames);
            (
                ErrorCode::LimitReached,
                format!(
                    "this connection already names its maximum of {} rooms",
                    self.ids.max()
                ),
            )
        })
    }

    fn leave(&mut self, request: u64, room_id: RoomId) -> Bytes {
        let Some(room) = self.ids.name(room_id).cloned() else {
            return unknown_id(&self.ctx.stats, Some(request), room_id);
        };
        if self.joined.remove(&room).is_some() {
            self.ctx.backplane.unsubscribe(&room, self.session);
            let ip = self.conn.remote_address().ip();
            lock(&self.ctx.addresses).leave_rooms(ip, 1);
            wire::encode_framed(&Frame::Left { request, room_id })
        } else {
            error_frame(
                Some(request),
                ErrorCode::NotJoined,
                format!("room {room} is not joined"),
            )
        }
    }

    async fn join(
        &mut self,
        request: u64,
        room: &str,
        echo: Option<bool>,
        since: Option<u64>,
    ) -> Bytes {
        if let Err(message) = validate_name("room", room) {
            return error_frame(Some(request), ErrorCode::InvalidName, message);
        }
        // Checked before the room is named: a room the connection may not
        // join is not created for it.
        let grant = self.grant(room);
        if !grant.allows(Action::Subscribe) {
            return forbidden(&self.ctx.stats, Some(request), room, Action::Subscribe);
        }
        // Without the history permission, a join with a position joins live
        // and its answer says why nothing was replayed.
        let history_refused = since.is_some() && !grant.allows(Action::History);
        let since = if history_refused {
            self.ctx.stats.refused(Refusal::History);
            None
        } else {
            since
        };
        let echo = echo.or(grant.echo).unwrap_or(false);
        let max = self.ctx.config.limits.rooms_joined;
        if self.joined.len() >= max && !self.joined.contains_key(room) {
            self.ctx.stats.limit_hit(Limit::RoomsJoined);
            let message = format!("this connection already has its maximum of {max} rooms joined");
            return error_frame(Some(request), ErrorCode::LimitReached, message);
        }
        let (room_id, name) = match self.name(room, grant) {
            Ok(named) => named,
            Err((code, message)) => return error_frame(Some(request), code, message),
        };
        let new_room = !self.joined.contains_key(&name);
        let ip = self.conn.remote_address().ip();
        if new_room && !lock(&self.ctx.addresses).join_room(ip, std::time::Instant::now()) {
            self.ctx.stats.limit_hit(Limit::RoomsJoined);
            let max = self.ctx.config.address_limits.rooms_joined;
            let message = format!("this address already has its maximum of {max} rooms joined");
            return error_frame(Some(request), ErrorCode::LimitReached, message);
        }
        let subscribed = self.subscribe(room_id, name, echo, since).await;
        if new_room && subscribed.is_err() {
            lock(&self.ctx.addresses).leave_rooms(ip, 1);
        }
        match subscribed {
            Ok((offset, recovery)) => wire::encode_framed(&Frame::Joined {
                request,
                room_id,
                offset,
                recovery: if history_refused {
                    Recovery::NotRecovered {
                        reason: RecoveryFailure::HistoryForbidden,
                    }
                } else {
                    recovery
                },
            }),
            Err(e) => error_frame(Some(request), e.code(), e.to_string()),
        }
    }

    /// Subscribes to a room and starts its stream writer, which sends the
    /// replayed history first; returns the room's offset and the recovery.
    async fn subscribe(
        &mut self,
        room_id: RoomId,
        name: Arc<str>,
        echo: bool,
        since: Option<u64>,
    ) -> Result<(u64, Recovery), BackplaneError> {
        // Joining a room already joined (say, to change echo) keeps its
        // stream and queue: the new subscriber replaces the old one in one
        // step, so no event is lost or reordered between them.
        let (queue, new_writer) = match self.joined.get(&name) {
            Some(queue) => (queue.clone(), None),
            None => {
                let config = &self.ctx.config;
                // Never smaller than one frame, or one large event would count as slow.
                let max_bytes = config
                    .reliable_queue_bytes
                    .max(config.max_frame + wire::MAX_VARINT_LEN);
                let (queue, queue_rx) =
                    RoomQueue::sharing(config.reliable_queue, max_bytes, self.queued.clone());
                (queue, Some(queue_rx))
            }
        };
        let subscriber = Arc::new(SessionSubscriber {
            session: self.session,
            room_id,
            echo,
            copies: self.copies,
            datagram_buffer: self.ctx.config.transport.datagram_send_buffer,
            last_event: std::sync::Mutex::new(None),
            room: name.clone(),
            reliable: queue.clone(),
            datagrams: self.datagrams.clone(),
            conn: self.conn.clone(),
            stats: self.ctx.stats.clone(),
        });
        // A room already joined is live on its stream: there is nothing to replay.
        let since = since.filter(|_| new_writer.is_some());
        let subscribed = self
            .ctx
            .backplane
            .subscribe(&name, subscriber, since)
            .await?;
        if let Some(queue_rx) = new_writer {
            // Events queued since `subscribe` wait in the queue, behind the
            // replay, until the writer starts.
            self.writers.spawn(write_room_stream(
                self.conn.clone(),
                room_id,
                name.clone(),
                subscribed.replay,
                queue_rx,
                self.ctx.stats.clone(),
            ));
        }
        self.joined.insert(name, queue);
        Ok((subscribed.offset, subscribed.recovery))
    }
}
