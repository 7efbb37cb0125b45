//! One task per connection: the handshake, then control requests, with the
//! connection's other tasks started and stopped from here.
//!
//! Tasks of one session:
//! - the session task itself ([`run`]): control requests, datagrams,
//!   accepting publish streams;
//! - one reader per client publish stream (`ingest.rs`);
//! - one writer per joined room, fed by that room's bounded queue, one
//!   control writer and one datagram writer (`outbound.rs`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use quinn::{Connection, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

use super::backplane::{Backplane, BackplaneError, SessionId};
use super::ingest::{handle_datagram, read_publish_stream, resolve_room};
use super::outbound::{
    write_control, write_datagrams, write_room_stream, DatagramRing, RoomQueue, SessionSubscriber,
};
use super::resume::{Attached, SessionStore};
use super::stats::ServerStats;
use super::ServerConfig;
use crate::wire::{
    self, close_code, ErrorCode, Frame, FrameReader, ReadFrameError, Recovery, RoomId,
    PROTOCOL_VERSION,
};

/// Control replies queued for a client before it counts as a slow consumer.
const CONTROL_QUEUE: usize = 1024;

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
            Err(Some(closing)) => return closing.apply(&conn, &ctx.stats),
            Err(None) => return,
        };

    let (control_tx, control_rx) = mpsc::channel::<Bytes>(CONTROL_QUEUE);
    let control = Control {
        tx: control_tx,
        conn: conn.clone(),
        stats: ctx.stats.clone(),
    };
    let control_writer = tokio::spawn(write_control(control_send, control_rx));
    let datagrams = Arc::new(DatagramRing::new(ctx.config.datagram_queue));
    let datagram_writer = tokio::spawn(write_datagrams(
        conn.clone(),
        datagrams.clone(),
        ctx.stats.clone(),
    ));
    let mut readers = JoinSet::new();
    let mut writers = JoinSet::new();
    let mut joined = HashMap::new();
    let mut rooms = Rooms {
        conn: &conn,
        session,
        ctx: &ctx,
        joined: &mut joined,
        writers: &mut writers,
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
                    readers.spawn(read_publish_stream(recv, conn.clone(), session, ctx.clone(), control.clone(), attached.state.clone(), shutdown.clone()));
                }
                Err(_) => break false,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => {
                    if let Err(closing) = handle_datagram(&bytes, session, &ctx, &control, &attached.state) {
                        closing.apply(&conn, &ctx.stats);
                        break false;
                    }
                }
                Err(_) => break false,
            },
        }
    };
    datagram_writer.abort();
    if !draining {
        // The connection is gone or being closed: nothing more to deliver.
        readers.abort_all();
        control_writer.abort();
        for room in joined.keys() {
            ctx.backplane.unsubscribe(*room, session);
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
    // The server is going away, and its history with it: nothing to resume.
    ctx.sessions
        .detach(&attached, true, std::time::Instant::now());

    // Shutdown: publish readers stop between frames (so every accepted
    // event's ack is queued), then every room writer delivers what was
    // accepted, then the control writer flushes, then the close.
    let deadline = Instant::now() + ctx.config.shutdown_grace;
    let drained = timeout_at(deadline, async {
        while readers.join_next().await.is_some() {}
        for room in joined.keys() {
            ctx.backplane.unsubscribe(*room, session);
        }
        // With the backplane's copies gone, dropping ours closes every room queue.
        joined.clear();
        drop(control);
        while writers.join_next().await.is_some() {}
        let _ = control_writer.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            session,
            "shutdown grace expired before the client received everything"
        );
        for room in joined.keys() {
            ctx.backplane.unsubscribe(*room, session);
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
) -> Result<(SendStream, FrameReader, Attached, bool), Option<Closing>> {
    let hello = async {
        let (send, recv) = conn.accept_bi().await.map_err(|_| None)?;
        let mut reader = FrameReader::new(recv, ctx.config.max_frame);
        match reader.next().await {
            Ok(Some(Frame::Hello {
                version,
                token,
                client_name,
                resume,
                copies,
            })) => Ok((send, reader, version, token, client_name, resume, copies)),
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
    let (mut send, reader, version, token, client_name, resume, copies) =
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
        session_id: session,
        max_datagram_payload,
        max_frame: ctx.config.max_frame as u32,
        epoch: ctx.backplane.epoch(),
        resume_token: attached.state.token().to_string(),
        resumed: attached.outcome,
    });
    if send.write_all(&welcome).await.is_err() {
        ctx.sessions
            .detach(&attached, false, std::time::Instant::now());
        return Err(None);
    }
    tracing::debug!(session, client = %client_name, addr = %conn.remote_address(), resumed = ?attached.outcome, "session started");
    Ok((send, reader, attached, copies))
}

/// The rooms a session has joined, and what it needs to join more.
struct Rooms<'a> {
    conn: &'a Connection,
    session: SessionId,
    ctx: &'a SessionContext,
    /// Each joined room's queue; the backplane's subscriber holds a clone.
    joined: &'a mut HashMap<RoomId, RoomQueue>,
    writers: &'a mut JoinSet<()>,
    datagrams: &'a Arc<DatagramRing>,
    /// The client asked for `EventCopy` datagrams (`Hello.copies`).
    copies: bool,
}

impl Rooms<'_> {
    async fn handle_control(
        &mut self,
        frame: Frame,
        control: &Control,
    ) -> Result<(), Option<Closing>> {
        let reply = match frame {
            Frame::Join {
                request,
                room,
                echo,
                since,
            } => self.join(request, &room, echo, since).await,
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
        if control.send(reply) {
            Ok(())
        } else {
            Err(None)
        }
    }

    async fn join(&mut self, request: u64, room: &str, echo: bool, since: Option<u64>) -> Bytes {
        // A room evicted between resolving and subscribing is resolved again, once.
        let mut retried = false;
        loop {
            let room_id = match resolve_room(self.ctx, room) {
                Ok(id) => id,
                Err((code, message)) => return error_frame(Some(request), code, message),
            };
            match self.subscribe(room_id, room, echo, since).await {
                Ok((offset, recovery)) => {
                    return wire::encode_framed(&Frame::Joined {
                        request,
                        room_id,
                        offset,
                        recovery,
                    })
                }
                Err(BackplaneError::UnknownRoom(_)) if !retried => retried = true,
                Err(e) => return error_frame(Some(request), e.code(), e.to_string()),
            }
        }
    }

    /// Subscribes to a room and starts its stream writer, which sends the
    /// replayed history first; returns the room's offset and the recovery.
    async fn subscribe(
        &mut self,
        room_id: RoomId,
        room: &str,
        echo: bool,
        since: Option<u64>,
    ) -> Result<(u64, Recovery), BackplaneError> {
        // Joining a room already joined (say, to change echo) keeps its
        // stream and queue: the new subscriber replaces the old one in one
        // step, so no event is lost or reordered between them.
        let name: Arc<str> = Arc::from(room);
        let (queue, new_writer) = match self.joined.get(&room_id) {
            Some(queue) => (queue.clone(), None),
            None => {
                let config = &self.ctx.config;
                // Never smaller than one frame, or one large event would count as slow.
                let max_bytes = config
                    .reliable_queue_bytes
                    .max(config.max_frame + wire::MAX_VARINT_LEN);
                let (queue, queue_rx) = RoomQueue::new(config.reliable_queue, max_bytes);
                (queue, Some(queue_rx))
            }
        };
        let subscriber = Arc::new(SessionSubscriber {
            session: self.session,
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
            .subscribe(room_id, subscriber, since)
            .await?;
        if let Some(queue_rx) = new_writer {
            // Events queued since `subscribe` wait in the queue, behind the
            // replay, until the writer starts.
            self.writers.spawn(write_room_stream(
                self.conn.clone(),
                room_id,
                name,
                subscribed.replay,
                queue_rx,
            ));
        }
        self.joined.insert(room_id, queue);
        Ok((subscribed.offset, subscribed.recovery))
    }
}
