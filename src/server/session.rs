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
use quinn::{Connection, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

use super::backplane::{BackplaneError, SessionId};
use super::context::{
    error_frame, over_rate, read_failure, stopping, unknown_id, Closing, ConnectionShare, Control,
    Ending, SessionContext, CONTROL_QUEUE,
};
use super::ingest::{handle_datagram, read_publish_stream};
use super::limits::{Throttle, Verdict};
use super::outbound::{
    write_control, write_datagrams, write_room_stream, DatagramRing, RoomQueue, SessionSubscriber,
};
use super::resume::Attached;
use super::room_ids::RoomIds;
use super::stats::Limit;
use crate::sync::lock;
use crate::wire::{
    self, close_code, validate_name, ErrorCode, Frame, FrameReader, Recovery, RoomId,
    PROTOCOL_VERSION,
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
    let (control_send, mut control_reader, attached, copies) =
        match handshake(&conn, session, &ctx).await {
            Ok(streams) => streams,
            Err(Ending::Close(closing)) => return closing.apply(&conn, &ctx.stats),
            Err(Ending::Gone) => return,
        };

    let (control_tx, control_rx) = mpsc::channel::<Bytes>(CONTROL_QUEUE);
    let control = Control::new(control_tx, conn.clone(), ctx.stats.clone());
    let share = Arc::new(ConnectionShare::new(control.clone(), &ctx.config));
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
    };

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
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => {
                    if let Err(closing) = handle_datagram(&bytes, session, &ctx, &share, &attached.state, &rooms.ids) {
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
        let clean = matches!(
            conn.close_reason(),
            Some(quinn::ConnectionError::ApplicationClosed(ref c))
                if c.error_code.into_inner() == u64::from(close_code::NORMAL)
        );
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
    conn.close(
        close_code::SERVER_SHUTTING_DOWN.into(),
        b"server shutting down",
    );
}

/// Accepts the control stream, reads `Hello`, answers `Welcome` or `Reject`.
async fn handshake(
    conn: &Connection,
    session: SessionId,
    ctx: &SessionContext,
) -> Result<(SendStream, FrameReader, Attached, bool), Ending> {
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

    let refusal = if version != PROTOCOL_VERSION {
        Some((
            ErrorCode::UnsupportedVersion,
            close_code::UNSUPPORTED_VERSION,
            format!("client speaks protocol version {version}, server speaks {PROTOCOL_VERSION}"),
        ))
    } else {
        check_token(conn, ctx, token.as_deref())
            .map(|reason| (ErrorCode::Unauthorized, close_code::UNAUTHORIZED, reason))
    };
    if let Some((code, close, reason)) = refusal {
        let reject = wire::encode_framed(&Frame::Reject {
            code,
            reason: reason.clone(),
            server_version: PROTOCOL_VERSION,
        });
        // Give the Reject a moment to arrive before the close overtakes it;
        // the close reason repeats it in case it does not.
        if send.write_all(&reject).await.is_ok() && send.finish().is_ok() {
            let _ = timeout(ctx.config.handshake_timeout, send.stopped()).await;
        }
        return Err(Ending::Close(Closing {
            code: close,
            reason,
        }));
    }

    let taken_over = conn.clone();
    let attached = ctx.sessions.attach(
        resume.as_ref(),
        ctx.backplane.epoch(),
        move || {
            taken_over.close(
                close_code::SESSION_RESUMED.into(),
                b"session resumed on another connection",
            )
        },
        std::time::Instant::now(),
    );
    let max_datagram_payload = conn.max_datagram_size().unwrap_or(0) as u32;
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
    tracing::debug!(%session, client = %client_name, addr = %conn.remote_address(), resumed = ?attached.outcome, "session started");
    Ok((send, reader, attached, copies))
}

/// Checks `Hello`'s token against the server's, if it has one: `None` when
/// it may go on, else why not. The comparison takes the same time however
/// much of the token is right, and an address that fails too often is
/// refused without its token being looked at.
fn check_token(conn: &Connection, ctx: &SessionContext, given: Option<&str>) -> Option<String> {
    use subtle::ConstantTimeEq;
    let expected = ctx.config.token.as_deref()?;
    let ip = conn.remote_address().ip();
    let now = std::time::Instant::now();
    if !lock(&ctx.addresses).may_try_token(ip, now) {
        ctx.stats.limit_hit(Limit::FailedHellos);
        return Some("too many failed attempts from this address; try again later".into());
    }
    let given = given.unwrap_or_default().as_bytes();
    if bool::from(given.ct_eq(expected.as_bytes())) {
        return None;
    }
    lock(&ctx.addresses).failed_hello(ip, now);
    Some("missing or wrong token".into())
}

/// The request id of a client control frame.
fn request_of(frame: &Frame) -> Option<u64> {
    match frame {
        Frame::Join { request, .. }
        | Frame::Leave { request, .. }
        | Frame::Ping { request }
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
}

impl Rooms<'_> {
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
            Frame::Resolve { request, room } => match self.name(&room) {
                Ok((room_id, _)) => wire::encode_framed(&Frame::Resolved { request, room_id }),
                Err((code, message)) => error_frame(Some(request), code, message),
            },
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

    /// Validates a room name, makes sure the room exists, and hands out
    /// this connection's id for it.
    fn name(&mut self, room: &str) -> Result<(RoomId, Arc<str>), (ErrorCode, String)> {
        validate_name("room", room).map_err(|m| (ErrorCode::InvalidName, m))?;
        self.ctx
            .backplane
            .open(room)
            .map_err(|e| (e.code(), e.to_string()))?;
        self.ids.id_for(room).map_err(|_| {
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

    async fn join(&mut self, request: u64, room: &str, echo: bool, since: Option<u64>) -> Bytes {
        let max = self.ctx.config.limits.rooms_joined;
        if self.joined.len() >= max && !self.joined.contains_key(room) {
            self.ctx.stats.limit_hit(Limit::RoomsJoined);
            let message = format!("this connection already has its maximum of {max} rooms joined");
            return error_frame(Some(request), ErrorCode::LimitReached, message);
        }
        let (room_id, name) = match self.name(room) {
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
                recovery,
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
