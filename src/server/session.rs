//! One task per connection: the handshake, control requests, publish
//! streams and datagrams coming in, and the writers of everything going out.
//!
//! Tasks of one session:
//! - the session task itself (this module's [`run`]): control requests,
//!   datagrams, accepting publish streams;
//! - one reader per client publish stream ([`read_publish_stream`]);
//! - one writer per joined room ([`write_room_stream`]), fed by that room's
//!   bounded queue;
//! - one control writer and one datagram writer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::backplane::{Backplane, SessionId};
use super::outbound::{DatagramRing, SessionSubscriber};
use super::stats::ServerStats;
use super::ServerConfig;
use crate::wire::{
    self, close_code, validate_name, ErrorCode, Frame, FrameReader, ReadFrameError, RoomId,
    PROTOCOL_VERSION,
};

/// Control frames queued for the client before the session waits.
const CONTROL_QUEUE: usize = 1024;
/// Most frames gathered into one stream write.
const WRITE_BATCH: usize = 64;

/// What every session of a server shares.
pub(crate) struct SessionContext {
    pub backplane: Arc<dyn Backplane>,
    pub config: Arc<ServerConfig>,
    pub stats: Arc<ServerStats>,
}

/// A reason to close the connection: an application close code and a phrase.
struct Closing {
    code: u32,
    reason: String,
}

impl Closing {
    fn violation(reason: impl Into<String>) -> Self {
        Closing {
            code: close_code::PROTOCOL_VIOLATION,
            reason: reason.into(),
        }
    }

    fn apply(self, conn: &Connection, stats: &ServerStats) {
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

/// Maps a failed read to a close, or to `None` when the connection or
/// stream is already gone (nothing left to tell the peer).
fn read_failure(what: &str, err: ReadFrameError) -> Option<Closing> {
    match err {
        ReadFrameError::Wire(e) => Some(Closing {
            code: e.close_code(),
            reason: format!("{what}: {e}"),
        }),
        ReadFrameError::Read(_) => None,
    }
}

fn error_frame(request: Option<u64>, code: ErrorCode, message: String) -> Bytes {
    wire::encode_framed(&Frame::Error {
        request,
        code,
        message,
    })
}

/// Runs one session until the connection ends or the server shuts down.
pub(crate) async fn run(
    conn: Connection,
    session: SessionId,
    ctx: Arc<SessionContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (control_send, mut control) = match handshake(&conn, session, &ctx).await {
        Ok(streams) => streams,
        Err(Some(closing)) => return closing.apply(&conn, &ctx.stats),
        Err(None) => return,
    };

    let (control_tx, control_rx) = mpsc::channel::<Bytes>(CONTROL_QUEUE);
    let control_writer = tokio::spawn(write_control(control_send, control_rx));
    let datagrams = Arc::new(DatagramRing::new(ctx.config.datagram_queue));
    let mut readers = JoinSet::new();
    readers.spawn(write_datagrams(
        conn.clone(),
        datagrams.clone(),
        ctx.stats.clone(),
    ));
    let mut writers = JoinSet::new();
    let mut joined = HashMap::new();
    let mut room_state = Rooms {
        conn: &conn,
        session,
        ctx: &ctx,
        joined: &mut joined,
        writers: &mut writers,
        datagrams: &datagrams,
    };

    let draining = loop {
        while room_state.writers.try_join_next().is_some() {}
        tokio::select! {
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break true,
            frame = control.next() => {
                let outcome = match frame {
                    Ok(Some(frame)) => room_state.handle_control(frame, &control_tx).await,
                    Ok(None) => Err(Some(Closing { code: close_code::NORMAL, reason: "control stream finished".into() })),
                    Err(e) => Err(read_failure("control stream", e)),
                };
                if let Err(closing) = outcome {
                    if let Some(closing) = closing { closing.apply(&conn, &ctx.stats); }
                    break false;
                }
            }
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    readers.spawn(read_publish_stream(recv, conn.clone(), session, ctx.clone(), control_tx.clone()));
                }
                Err(_) => break false,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => {
                    if let Err(closing) = handle_datagram(&bytes, session, &ctx, &control_tx) {
                        closing.apply(&conn, &ctx.stats);
                        break false;
                    }
                }
                Err(_) => break false,
            },
        }
    };

    // Stop taking input, then let every room writer drain what was accepted.
    readers.abort_all();
    for room in joined.keys() {
        ctx.backplane.unsubscribe(*room, session);
    }
    // With the backplane's copies gone, dropping ours closes every room queue.
    drop(joined);
    drop(control_tx);
    if draining {
        let drained = timeout(ctx.config.shutdown_grace, async {
            while writers.join_next().await.is_some() {}
            let _ = control_writer.await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                session,
                "shutdown grace expired before the client read everything"
            );
        }
        conn.close(
            close_code::SERVER_SHUTTING_DOWN.into(),
            b"server shutting down",
        );
    } else {
        control_writer.abort();
    }
}

/// Accepts the control stream, reads `Hello`, answers `Welcome` or `Reject`.
async fn handshake(
    conn: &Connection,
    session: SessionId,
    ctx: &SessionContext,
) -> Result<(SendStream, FrameReader), Option<Closing>> {
    let hello = async {
        let (send, recv) = conn.accept_bi().await.map_err(|_| None)?;
        let mut reader = FrameReader::new(recv, ctx.config.max_frame);
        match reader.next().await {
            Ok(Some(Frame::Hello {
                version,
                token,
                client_name,
            })) => Ok((send, reader, version, token, client_name)),
            Ok(Some(other)) => Err(Some(Closing::violation(format!(
                "expected Hello as the first control frame, got {}",
                other.name()
            )))),
            Ok(None) => Err(Some(Closing::violation(
                "control stream ended before Hello",
            ))),
            Err(e) => Err(read_failure("handshake", e)),
        }
    };
    let (mut send, reader, version, token, client_name) =
        match timeout(ctx.config.handshake_timeout, hello).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Some(Closing {
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
    } else if ctx.config.token.is_some() && token != ctx.config.token {
        Some((
            ErrorCode::Unauthorized,
            close_code::UNAUTHORIZED,
            "missing or wrong token".to_string(),
        ))
    } else {
        None
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
        return Err(Some(Closing {
            code: close,
            reason,
        }));
    }

    let max_datagram_payload = conn.max_datagram_size().unwrap_or(0) as u32;
    let welcome = wire::encode_framed(&Frame::Welcome {
        session_id: session,
        max_datagram_payload,
        max_frame: ctx.config.max_frame as u32,
    });
    send.write_all(&welcome).await.map_err(|_| None)?;
    tracing::debug!(session, client = %client_name, addr = %conn.remote_address(), "session started");
    Ok((send, reader))
}

/// The rooms a session has joined, and what it needs to join more.
struct Rooms<'a> {
    conn: &'a Connection,
    session: SessionId,
    ctx: &'a SessionContext,
    /// Each joined room's queue; the backplane's subscriber holds a clone.
    joined: &'a mut HashMap<RoomId, mpsc::Sender<Bytes>>,
    writers: &'a mut JoinSet<()>,
    datagrams: &'a Arc<DatagramRing>,
}

impl Rooms<'_> {
    async fn handle_control(
        &mut self,
        frame: Frame,
        control: &mpsc::Sender<Bytes>,
    ) -> Result<(), Option<Closing>> {
        let reply = match frame {
            Frame::Join {
                request,
                room,
                echo,
            } => self.join(request, &room, echo).await,
            Frame::Leave { request, room_id } => {
                if self.joined.remove(&room_id).is_some() {
                    self.ctx.backplane.unsubscribe(room_id, self.session);
                    wire::encode_framed(&Frame::Left { request, room_id })
                } else {
                    error_frame(
                        Some(request),
                        ErrorCode::NotJoined,
                        format!("room id {room_id} is not joined"),
                    )
                }
            }
            Frame::Ping { request } => wire::encode_framed(&Frame::Pong { request }),
            Frame::Resolve { request, room } => match resolve_room(self.ctx, &room) {
                Ok(room_id) => wire::encode_framed(&Frame::Resolved { request, room_id }),
                Err((code, message)) => error_frame(Some(request), code, message),
            },
            other => {
                return Err(Some(Closing::violation(format!(
                    "{} is not a client control frame",
                    other.name()
                ))))
            }
        };
        control.send(reply).await.map_err(|_| None)
    }

    async fn join(&mut self, request: u64, room: &str, echo: bool) -> Bytes {
        let room_id = match resolve_room(self.ctx, room) {
            Ok(id) => id,
            Err((code, message)) => return error_frame(Some(request), code, message),
        };
        // Joining a room already joined (say, to change echo) keeps its
        // stream and queue: the new subscriber replaces the old one in one
        // step, so no event is lost or reordered between them.
        let name: Arc<str> = Arc::from(room);
        let queue_tx = match self.joined.get(&room_id) {
            Some(queue) => queue.clone(),
            None => {
                let (queue_tx, queue_rx) = mpsc::channel(self.ctx.config.reliable_queue.max(1));
                self.writers.spawn(write_room_stream(
                    self.conn.clone(),
                    room_id,
                    name.clone(),
                    queue_rx,
                ));
                queue_tx
            }
        };
        let subscriber = Arc::new(SessionSubscriber {
            session: self.session,
            echo,
            room: name,
            reliable: queue_tx.clone(),
            datagrams: self.datagrams.clone(),
            conn: self.conn.clone(),
            stats: self.ctx.stats.clone(),
        });
        match self.ctx.backplane.subscribe(room_id, subscriber).await {
            Ok(offset) => {
                self.joined.insert(room_id, queue_tx);
                wire::encode_framed(&Frame::Joined {
                    request,
                    room_id,
                    offset,
                })
            }
            Err(e) => error_frame(Some(request), e.code(), e.to_string()),
        }
    }
}

/// Decodes and publishes one client datagram.
fn handle_datagram(
    bytes: &[u8],
    session: SessionId,
    ctx: &SessionContext,
    control: &mpsc::Sender<Bytes>,
) -> Result<(), Closing> {
    let frame = wire::decode(bytes).map_err(|e| Closing {
        code: e.close_code(),
        reason: format!("malformed datagram: {e}"),
    })?;
    let Frame::PublishDatagram {
        room_id,
        event,
        payload,
    } = frame
    else {
        return Err(Closing::violation(format!(
            "{} is not a client datagram",
            frame.name()
        )));
    };
    let result = validate_name("event", &event)
        .map_err(|m| (ErrorCode::InvalidName, m))
        .and_then(|()| {
            ctx.backplane
                .publish_datagram(room_id, session, event, payload)
                .map_err(|e| (e.code(), format!("datagram dropped: {e}")))
        });
    match result {
        Ok(_) => {
            ctx.stats
                .datagrams_published
                .fetch_add(1, Ordering::Relaxed);
        }
        // Never wait here: a client that ignores its errors loses some of them.
        Err((code, message)) => {
            let _ = control.try_send(error_frame(None, code, message));
        }
    }
    Ok(())
}

/// The next frame of a publish stream; `None` once the stream has ended or
/// the connection has been closed for what was on it.
async fn next_publish_frame(
    reader: &mut FrameReader,
    conn: &Connection,
    stats: &ServerStats,
) -> Option<Frame> {
    match reader.next().await {
        Ok(frame) => frame,
        Err(e) => {
            if let Some(closing) = read_failure("publish stream", e) {
                closing.apply(conn, stats);
            }
            None
        }
    }
}

/// Validates a room name and finds (or creates) the room.
fn resolve_room(ctx: &SessionContext, room: &str) -> Result<RoomId, (ErrorCode, String)> {
    validate_name("room", room).map_err(|m| (ErrorCode::InvalidName, m))?;
    ctx.backplane
        .resolve(room)
        .map_err(|e| (e.code(), e.to_string()))
}

/// Reads one client publish stream: a `PublishStream` header, then `Publish` frames.
async fn read_publish_stream(
    recv: RecvStream,
    conn: Connection,
    session: SessionId,
    ctx: Arc<SessionContext>,
    control: mpsc::Sender<Bytes>,
) {
    let mut reader = FrameReader::new(recv, ctx.config.max_frame);
    let room = match next_publish_frame(&mut reader, &conn, &ctx.stats).await {
        Some(Frame::PublishStream { room }) => room,
        Some(other) => {
            return Closing::violation(format!(
                "a publish stream must start with PublishStream, not {}",
                other.name()
            ))
            .apply(&conn, &ctx.stats)
        }
        None => return,
    };
    let room_id = match resolve_room(&ctx, &room) {
        Ok(id) => id,
        Err((code, message)) => {
            let _ = control.send(error_frame(None, code, message)).await;
            reader.stop(close_code::PROTOCOL_VIOLATION);
            return;
        }
    };
    loop {
        let (event, payload, ack) = match next_publish_frame(&mut reader, &conn, &ctx.stats).await {
            Some(Frame::Publish {
                event,
                payload,
                ack,
            }) => (event, payload, ack),
            Some(other) => {
                return Closing::violation(format!(
                    "{} is not allowed on a publish stream",
                    other.name()
                ))
                .apply(&conn, &ctx.stats)
            }
            None => return,
        };
        let event_len = wire::event_frame_len(event.len(), payload.len());
        let reply = match validate_name("event", &event) {
            Err(message) => Some(error_frame(ack, ErrorCode::InvalidName, message)),
            Ok(()) if event_len > ctx.config.max_frame => Some(error_frame(
                ack,
                ErrorCode::TooLarge,
                format!(
                    "event '{event}' would be a {event_len}-byte frame, over the limit of {} bytes",
                    ctx.config.max_frame
                ),
            )),
            Ok(()) => match ctx
                .backplane
                .publish(room_id, session, event, payload)
                .await
            {
                Ok(offset) => {
                    ctx.stats.events_published.fetch_add(1, Ordering::Relaxed);
                    ack.map(|request| wire::encode_framed(&Frame::Ack { request, offset }))
                }
                Err(e) => Some(error_frame(ack, e.code(), e.to_string())),
            },
        };
        if let Some(reply) = reply {
            if control.send(reply).await.is_err() {
                return;
            }
        }
    }
}

/// Writes one joined room's events to its own stream, batching what is queued.
async fn write_room_stream(
    conn: Connection,
    room_id: RoomId,
    room: Arc<str>,
    mut queue: mpsc::Receiver<Bytes>,
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
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if send.write_all_chunks(&mut batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    // The room was left or the server is draining: finish, and wait until
    // the client has received everything (the caller bounds the wait).
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}

async fn write_control(mut send: SendStream, mut queue: mpsc::Receiver<Bytes>) {
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

async fn write_datagrams(conn: Connection, ring: Arc<DatagramRing>, stats: Arc<ServerStats>) {
    loop {
        ring.wait().await;
        while let Some(datagram) = ring.pop() {
            match conn.send_datagram_wait(datagram).await {
                Ok(()) => {}
                Err(quinn::SendDatagramError::TooLarge) => {
                    stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => return,
            }
        }
    }
}
