//! Everything one connection sends us: publish streams and datagrams.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Connection, Reader};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::backplane::{BoxFuture, PublishRequest, Publisher, SessionId};
use super::context::{
    error_frame, forbidden, over_rate, read_failure, stopping, unknown_id, Closing,
    ConnectionShare, Control, SessionContext,
};
use super::limits::Verdict;
use super::resume::{Outcome, PublishLog, Seen, SessionState};
use super::room_ids::{Named, RoomIds};
use super::stats::{Limit, Refusal, ServerStats};
use crate::auth::{namespace_of, Action};
use crate::sync::lock;
use crate::wire::{self, close_code, validate_name, ErrorCode, Frame};

/// Decodes and publishes one client datagram.
pub(crate) fn handle_datagram(
    bytes: &[u8],
    session: SessionId,
    ctx: &SessionContext,
    share: &ConnectionShare,
    session_state: &SessionState,
    ids: &mut RoomIds,
) -> Result<(), Closing> {
    let control = &share.control;
    let frame = wire::decode(bytes).map_err(|e| Closing {
        code: e.close_code(),
        reason: format!("malformed datagram: {e}"),
    })?;
    let (room_id, event, payload) = match frame {
        Frame::PublishDatagram {
            room_id,
            event,
            payload,
        } => (room_id, event, payload),
        Frame::PublishCopy {
            room_id,
            id,
            event,
            payload,
            ack,
            pad: _,
        } => {
            let Some(named) = ids.named(room_id) else {
                control.send(unknown_id(&ctx.stats, None, room_id));
                return Ok(());
            };
            // A copy the connection may not publish is left to its stream
            // frame, which is answered with the refusal.
            let grant = named.grant;
            if !grant.allows(Action::Publish) || payload.len() > grant.max_payload {
                return Ok(());
            }
            publish_copy(
                &named.name,
                id,
                event,
                payload,
                ack,
                session,
                ctx,
                share,
                session_state,
            );
            return Ok(());
        }
        other => {
            return Err(Closing::violation(format!(
                "{} is not a client datagram",
                other.name()
            )))
        }
    };
    let Some(named) = ids.named(room_id) else {
        control.send(unknown_id(&ctx.stats, None, room_id));
        return Ok(());
    };
    if let Some(refusal) = datagram_refusal(ctx, named, payload.len()) {
        // Told once per room, counted every time.
        if !named.told {
            named.told = true;
            control.send(refusal);
        }
        return Ok(());
    }
    let room = &named.name;
    match share.check_publish(&ctx.stats) {
        Verdict::Allow => {}
        verdict => {
            let (reply, closing) = over_rate("publish", &ctx.config.limits.publish_rate, None);
            if verdict == Verdict::Close {
                return Err(closing);
            }
            // One error for a run of refused datagrams, not one each.
            if verdict == (Verdict::Refuse { first: true }) {
                control.send(reply);
            }
            return Ok(());
        }
    }
    let size = (event.len() + payload.len()) as u64;
    let result = validate_name("event", &event)
        .map_err(|m| (ErrorCode::InvalidName, m))
        .and_then(|()| {
            ctx.backplane
                .publish_datagram(room, session, event, payload)
                .map_err(|e| (e.code(), format!("datagram dropped: {e}")))
        });
    match result {
        Ok(_) => {
            ctx.stats
                .datagrams_published
                .fetch_add(1, Ordering::Relaxed);
            ctx.stats.bytes_in.fetch_add(size, Ordering::Relaxed);
        }
        Err((code, message)) => {
            control.send(error_frame(None, code, message));
        }
    }
    Ok(())
}

/// Why a datagram to a room is refused (the reply to send), if it is: the
/// connection may not publish there, the namespace takes no datagrams, or
/// the payload is over the namespace's maximum. Counted.
fn datagram_refusal(ctx: &SessionContext, named: &Named, payload: usize) -> Option<Bytes> {
    let grant = &named.grant;
    let room = &named.name;
    if !grant.allows(Action::Publish) {
        return Some(forbidden(&ctx.stats, None, room, Action::Publish));
    }
    if !grant.datagrams {
        ctx.stats.refused(Refusal::DatagramsDisabled);
        let message = format!(
            "room {room}: namespace '{}' takes no datagrams",
            namespace_of(room)
        );
        return Some(error_frame(None, ErrorCode::DatagramsDisabled, message));
    }
    if payload > grant.max_payload {
        ctx.stats.refused(Refusal::PayloadTooLarge);
        return Some(error_frame(
            None,
            ErrorCode::TooLarge,
            payload_message(room, payload, grant.max_payload),
        ));
    }
    None
}

/// The refusal of a payload over its namespace's maximum.
fn payload_message(room: &str, payload: usize, max: usize) -> String {
    format!(
        "room {room}: payload of {payload} bytes is over the maximum of {max} bytes of namespace '{}'",
        namespace_of(room)
    )
}

/// Publishes the datagram copy of a stream publish, if it is the next one
/// of its stream and the backplane can publish at once; otherwise it is
/// dropped and the stream frame is published as usual. Never an error: the
/// copy is an optimisation, the stream frame is the authority.
#[allow(clippy::too_many_arguments)]
fn publish_copy(
    room: &str,
    id: u64,
    event: String,
    payload: Bytes,
    ack: Option<u64>,
    session: SessionId,
    ctx: &SessionContext,
    share: &ConnectionShare,
    session_state: &SessionState,
) {
    if id == 0
        || event.len() + payload.len() > wire::MAX_COPY_BYTES
        || validate_name("event", &event).is_err()
    {
        return;
    }
    let Some(log) = session_state.log(room) else {
        return;
    };
    let mut log = lock(&log);
    if !log.copy_may_publish(id) {
        return;
    }
    // Over the rate, the copy is left to its stream frame, which is
    // answered as the rate says.
    if !share.try_publish() {
        return;
    }
    // Under the log's lock, so the stream frame of the same id waits and
    // then finds it handled. A refusal is left to the stream frame.
    let publisher = Publisher {
        session: session_state.key(),
        id,
    };
    let size = (event.len() + payload.len()) as u64;
    let Some(Ok(offset)) = ctx.backplane.publish_now(PublishRequest {
        room,
        from: session,
        publisher,
        event,
        payload,
    }) else {
        return;
    };
    let forgotten = log.record(id, Ok(offset));
    drop(log);
    ctx.stats.limit_hits(Limit::PublishLog, forgotten as u64);
    ctx.stats.events_published.fetch_add(1, Ordering::Relaxed);
    ctx.stats.copies_published.fetch_add(1, Ordering::Relaxed);
    ctx.stats.bytes_in.fetch_add(size, Ordering::Relaxed);
    if let Some(request) = ack {
        share
            .control
            .send(wire::encode_framed(&Frame::Ack { request, offset }));
    }
}

/// The next frame of a publish stream; `None` once the stream has ended or
/// the connection has been closed for what was on it.
async fn next_publish_frame(
    reader: &mut Reader,
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

/// Reads one client publish stream: a `PublishStream` header, then `Publish`
/// frames, until the stream ends or the server starts shutting down. Shutdown
/// is noticed only between frames, so an event that was accepted always gets
/// its ack queued. Publishes are pipelined: each is handed to the backplane
/// in order as it is read, and its outcome is awaited, recorded in the
/// publish log and answered in that same order while later frames are read
/// (`answer_in_order`).
pub(crate) async fn read_publish_stream(
    mut reader: Reader,
    conn: Connection,
    session: SessionId,
    ctx: Arc<SessionContext>,
    share: Arc<ConnectionShare>,
    session_state: Arc<SessionState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let control = &share.control;
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
    if let Err(message) = validate_name("room", &room) {
        control.send(error_frame(None, ErrorCode::InvalidName, message));
        reader.stop(close_code::PROTOCOL_VIOLATION);
        return;
    }
    let Some(log) = session_state.log(&room) else {
        return refuse_stream(reader, &ctx, control, &room).await;
    };
    // Publishes in flight, answered in order by `answer_in_order` while
    // this reads on: a clustered backplane acknowledges after a network
    // round trip, and one at a time would bound a stream's rate by it.
    let (in_flight, answers) = mpsc::channel(PUBLISH_PIPELINE);
    let answering = answer_in_order(answers, log.clone(), control, &ctx.stats, &room);
    tokio::pin!(answering);
    let reading = read_publishes(
        &mut reader,
        &conn,
        session,
        &ctx,
        &share,
        &session_state,
        &mut shutdown,
        &room,
        &log,
        in_flight,
    );
    tokio::select! {
        biased;
        // The answers stopped (the connection is going): so does reading.
        () = &mut answering => {}
        read = reading => {
            // Every publish accepted gets its answer, unless the stream
            // was given up at once.
            if read == Read::Ended {
                answering.await;
            }
        }
    }
}

/// How many publishes of one stream may await their outcome at once.
const PUBLISH_PIPELINE: usize = 256;

/// How reading a publish stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The stream ended, or the server is stopping: answer what is in flight.
    Ended,
    /// The stream or connection is given up: nothing more to answer.
    GivenUp,
}

/// One publish whose place is decided; its outcome is awaited in order.
struct InFlight {
    id: u64,
    ack: Option<u64>,
    outcome: BoxFuture<'static, (Outcome, Option<String>)>,
    /// Record the outcome in the publish log (not for a duplicate).
    record: bool,
    /// It went to the backplane (a `ShuttingDown` then means: not handled).
    published: bool,
    /// The answer, when decided already (a rate refusal).
    reply: Option<Bytes>,
    /// Whether the stream's progress may be reported after it.
    progress: bool,
    /// Whether more frames were buffered when it was read.
    more_buffered: bool,
}

impl InFlight {
    fn settled(id: u64, ack: Option<u64>, outcome: Outcome, message: Option<String>) -> Self {
        InFlight {
            id,
            ack,
            outcome: Box::pin(std::future::ready((outcome, message))),
            record: false,
            published: false,
            reply: None,
            progress: true,
            more_buffered: false,
        }
    }
}

/// Reads `Publish` frames and hands each, its place decided, to `in_flight`.
#[allow(clippy::too_many_arguments)]
async fn read_publishes(
    reader: &mut Reader,
    conn: &Connection,
    session: SessionId,
    ctx: &Arc<SessionContext>,
    share: &ConnectionShare,
    session_state: &SessionState,
    shutdown: &mut watch::Receiver<bool>,
    room: &str,
    log: &Arc<std::sync::Mutex<PublishLog>>,
    in_flight: mpsc::Sender<InFlight>,
) -> Read {
    // What the connection may do in the room, computed again when its
    // token is refreshed.
    let namespaces = &ctx.config.namespaces;
    let (mut grant, mut generation) = share.access.grant(room, namespaces);
    // A resumed session's earlier publishes are learned from storage before
    // its first publish is handled; not for a room it may not publish to
    // (that would open the room), until a refresh allows it.
    let mut restored = false;
    loop {
        let frame = tokio::select! {
            biased;
            () = stopping(shutdown) => return Read::Ended,
            frame = next_publish_frame(reader, conn, &ctx.stats) => frame,
        };
        let (id, event, payload, ack) = match frame {
            Some(Frame::Publish {
                id,
                event,
                payload,
                ack,
            }) => (id, event, payload, ack),
            Some(other) => {
                Closing::violation(format!(
                    "{} is not allowed on a publish stream",
                    other.name()
                ))
                .apply(conn, &ctx.stats);
                return Read::GivenUp;
            }
            None => return Read::Ended,
        };
        if share.access.generation() != generation {
            (grant, generation) = share.access.grant(room, namespaces);
        }
        if !restored && grant.allows(Action::Publish) {
            if let Err(closing) = restore_log(ctx, room, session_state, log).await {
                closing.apply(conn, &ctx.stats);
                return Read::GivenUp;
            }
            restored = true;
        }
        // A retried publish (same id) is answered as the first time, not
        // published again.
        let seen = if id == 0 {
            Seen::New
        } else {
            lock(log).claim(id)
        };
        // Refusals are recorded like outcomes, so a retry is answered the
        // same and nothing after it is published out of order.
        let refused = match seen {
            Seen::Duplicate(_) => None,
            Seen::New if !grant.allows(Action::Publish) => {
                ctx.stats.refused(Refusal::Publish);
                Some((ErrorCode::Forbidden, None))
            }
            Seen::New if payload.len() > grant.max_payload => {
                ctx.stats.refused(Refusal::PayloadTooLarge);
                let message = payload_message(room, payload.len(), grant.max_payload);
                Some((ErrorCode::TooLarge, Some(message)))
            }
            Seen::New => None,
        };
        let mut next = match (seen, refused) {
            (Seen::New, Some((code, message))) => InFlight {
                record: true,
                ..InFlight::settled(id, ack, Err(code), message)
            },
            (Seen::New, None) => match share.check_publish(&ctx.stats) {
                Verdict::Allow => {
                    let publisher = Publisher {
                        session: session_state.key(),
                        id,
                    };
                    InFlight {
                        outcome: publish(ctx, session, room, publisher, event, payload).await,
                        record: true,
                        published: true,
                        ..InFlight::settled(id, ack, Ok(0), None)
                    }
                }
                Verdict::Refuse { .. } => {
                    // Refused, and recorded as refused, so that a retry is
                    // answered the same and never published out of order.
                    let (reply, _) = over_rate("publish", &ctx.config.limits.publish_rate, ack);
                    InFlight {
                        record: true,
                        reply: Some(reply),
                        progress: false,
                        ..InFlight::settled(id, ack, Err(ErrorCode::RateLimited), None)
                    }
                }
                Verdict::Close => {
                    lock(log).abandon(id);
                    let (_, closing) = over_rate("publish", &ctx.config.limits.publish_rate, ack);
                    closing.apply(conn, &ctx.stats);
                    return Read::GivenUp;
                }
            },
            (Seen::Duplicate(outcome), _) => {
                ctx.stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
                InFlight::settled(id, ack, outcome.unwrap_or(Err(ErrorCode::Duplicate)), None)
            }
        };
        next.more_buffered = reader.has_buffered_frame();
        if in_flight.send(next).await.is_err() {
            return Read::GivenUp;
        }
    }
}

/// Awaits the outcome of each publish in the order they were read,
/// records it, answers it, and reports the stream's progress once nothing
/// more is waiting. Returns when the reader is done and all is answered,
/// or at once when the connection cannot be answered any more or the
/// server is stopping.
async fn answer_in_order(
    mut answers: mpsc::Receiver<InFlight>,
    log: Arc<std::sync::Mutex<PublishLog>>,
    control: &Control,
    stats: &ServerStats,
    room: &str,
) {
    let mut reported = 0;
    while let Some(next) = answers.recv().await {
        let (outcome, message) = next.outcome.await;
        let id = next.id;
        if next.published && outcome == Err(ErrorCode::ShuttingDown) {
            // Not handled: the server is stopping. Nothing after it on
            // this stream may be published either (order), so the stream
            // ends unanswered and the client sends it again, in order, to
            // the server it reconnects to. (A storage failure,
            // `Unavailable`, is a refusal like any other: answered and
            // recorded.)
            lock(&log).abandon(id);
            return;
        }
        if next.record && id != 0 {
            let forgotten = lock(&log).record(id, outcome);
            if next.published {
                stats.limit_hits(Limit::PublishLog, forgotten as u64);
            }
        }
        let reply = next.reply.or_else(|| match outcome {
            Ok(offset) => next
                .ack
                .map(|request| wire::encode_framed(&Frame::Ack { request, offset })),
            Err(ErrorCode::Forbidden) => Some(wire::encode_framed(&Frame::Forbidden {
                request: next.ack,
                room: room.to_string(),
                action: Action::Publish,
            })),
            Err(code) => {
                let message = message.unwrap_or_else(|| format!("publish {id}: {code}"));
                Some(error_frame(next.ack, code, message))
            }
        });
        if let Some(reply) = reply {
            if !control.send(reply) {
                return;
            }
        }
        // Once no further frame is buffered, tell the client how far this
        // stream has been handled, so it can drop those from its outbox.
        let through = lock(&log).through();
        if next.progress && through > reported && !next.more_buffered && answers.is_empty() {
            reported = through;
            let progress = wire::encode_framed(&Frame::Progress {
                room: room.to_string(),
                through,
            });
            if !control.send(progress) {
                return;
            }
        }
    }
}

/// A publish stream to a room beyond the session's maximum: every publish
/// on it is answered `LimitReached` (none is published) until the client
/// ends the stream.
async fn refuse_stream(mut reader: Reader, ctx: &SessionContext, control: &Control, room: &str) {
    ctx.stats.limit_hit(Limit::PublishStreams);
    let max = ctx.config.limits.publish_streams;
    let message =
        format!("room {room}: this session already publishes to its maximum of {max} rooms");
    control.send(error_frame(None, ErrorCode::LimitReached, message.clone()));
    loop {
        match reader.next().await {
            Ok(Some(Frame::Publish {
                ack: Some(request), ..
            })) => {
                if !control.send(error_frame(
                    Some(request),
                    ErrorCode::LimitReached,
                    message.clone(),
                )) {
                    return;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// A session resumed after a restart does not know yet which publishes it
/// made to `room` before: learn them from the room's stored events, once
/// per room, before the first publish of the stream is handled, so that a
/// publish whose ack died with the old process is answered, not repeated.
async fn restore_log(
    ctx: &SessionContext,
    room: &str,
    session_state: &SessionState,
    log: &std::sync::Mutex<PublishLog>,
) -> Result<(), Closing> {
    if !lock(log).needs_restore() {
        return Ok(());
    }
    match ctx.backplane.publishes_of(room, session_state.key()).await {
        Ok(publishes) => {
            lock(log).restore(&publishes);
            Ok(())
        }
        // Publishing without knowing could publish an event twice: refuse
        // the stream instead; the client reconnects and tries again.
        Err(e) => Err(Closing {
            code: close_code::STORAGE_UNAVAILABLE,
            reason: format!("cannot read the publish log of room {room}: {e}"),
        }),
    }
}

/// Publishes one reliable event: once its place in the room is fixed,
/// the future of its offset, or of why it was refused (with a message for
/// the client).
async fn publish(
    ctx: &Arc<SessionContext>,
    session: SessionId,
    room: &str,
    publisher: Publisher,
    event: String,
    payload: Bytes,
) -> BoxFuture<'static, (Outcome, Option<String>)> {
    let refused = |code, message| Box::pin(std::future::ready((Err(code), Some(message))));
    if let Err(message) = validate_name("event", &event) {
        return refused(ErrorCode::InvalidName, message);
    }
    let event_len = wire::event_frame_len(event.len(), payload.len());
    if event_len > ctx.config.max_frame {
        let message = format!(
            "event '{event}' would be a {event_len}-byte frame, over the limit of {} bytes",
            ctx.config.max_frame
        );
        return refused(ErrorCode::TooLarge, message);
    }
    let size = (event.len() + payload.len()) as u64;
    let stored = ctx
        .backplane
        .publish_ordered(PublishRequest {
            room,
            from: session,
            publisher,
            event,
            payload,
        })
        .await;
    let stats = ctx.stats.clone();
    Box::pin(async move {
        match stored.await {
            Ok(offset) => {
                stats.events_published.fetch_add(1, Ordering::Relaxed);
                stats.bytes_in.fetch_add(size, Ordering::Relaxed);
                (Ok(offset), None)
            }
            Err(e) => (Err(e.code()), Some(e.to_string())),
        }
    })
}
