//! The JetStream stream that stores every room's reliable events.
//!
//! One stream per cluster (`<PREFIX>_EVENTS`) holds subject
//! `<prefix>.ev.<room token>` for each room; a room's offset is the stream
//! sequence of its event, so offsets are sparse per room and the same on
//! every node. The stream republishes each event on `<prefix>.live.…` as it
//! stores it (with `Nats-Sequence` and `Nats-Last-Sequence`, the room's
//! previous sequence, in the headers): that is the live path, see `feed`.
//!
//! A stored event is its name and payload (postcard) with who sent it in
//! headers: `Quicbus-From` (the node and connection, for echo suppression)
//! and `Nats-Msg-Id` (the session key, room and publish id), so that a
//! publish retried on any node within the duplicate window is stored once
//! and answered with its first sequence.
//!
//! Coverage (whether a replay from a position is complete) uses only what
//! JetStream reports; see [`Coverage`].

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::subject::{room_token, Subjects};
use crate::server::backplane::{PublishRequest, SessionId};

/// Attempts at creating the stream, 250 ms apart, before giving up.
const OPEN_ATTEMPTS: u32 = 60;

/// Header naming the node and connection an event came from.
pub const FROM: &str = "Quicbus-From";
/// Set by JetStream on a republished event: its stream sequence.
pub const SEQUENCE: &str = "Nats-Sequence";
/// Set by JetStream on a republished event: the previous sequence of the
/// same subject (0 if none).
pub const LAST_SEQUENCE: &str = "Nats-Last-Sequence";

/// Why the cluster store failed. Every one of these means "not stored" or
/// "not read": the caller refuses the event or the recovery, never guesses.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS could not be reached.
    #[error("cannot connect to NATS at {urls}: {source}")]
    Connect {
        urls: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream request failed (NATS unreachable, timed out, refused).
    #[error("{what}: {source}")]
    JetStream {
        what: &'static str,
        #[source]
        source: async_nats::Error,
    },
    /// NATS is not connected now.
    #[error("NATS is not connected")]
    Disconnected,
    /// The cluster settings cannot work (a NATS address, the prefix).
    #[error("{0}")]
    Settings(String),
    /// No NATS server answered when the node started.
    #[error("no NATS server answered at {urls} within {waited:?}")]
    Unreachable { urls: String, waited: Duration },
    /// Something on the stream or a live subject is not ours or is damaged.
    #[error("malformed cluster message: {0}")]
    Malformed(String),
}

impl ClusterError {
    fn js(what: &'static str) -> impl FnOnce(async_nats::Error) -> ClusterError {
        move |source| ClusterError::JetStream { what, source }
    }
}

/// How the stream keeps events.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Copies kept by a NATS cluster (1 to 5; 1 for a single NATS server).
    pub replicas: usize,
    /// Most events kept per room (0: unbounded).
    pub max_events_per_room: u64,
    /// Events older than this are dropped (zero: kept until other bounds).
    pub max_age: Duration,
    /// Most bytes the whole stream keeps (0: unbounded).
    pub max_bytes: u64,
    /// How long a publish id is remembered for deduplication.
    pub duplicate_window: Duration,
}

/// What is stored for one event besides its headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    event: String,
    payload: Bytes,
}

/// One stored event, as read back or received live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its stream sequence: the room offset.
    pub seq: u64,
    /// The room's previous sequence when it was stored (known for live
    /// events only).
    pub previous: Option<u64>,
    /// The connection that published it, if a quicbus node did.
    pub from: Option<SessionId>,
    pub event: String,
    pub payload: Bytes,
}

/// Whether the history after a position is complete, as far as JetStream
/// can tell. JetStream drops a room's events oldest first (by the per-room
/// count), and the stream's oldest first (age, bytes); it does not say
/// which of a room's events it dropped. A replay from `since` is complete
/// when no event of the room after `since` can have been dropped:
/// `since` is at or after the stream's first sequence minus one (nothing
/// was dropped above it stream-wide), and the room holds fewer events than
/// its bound (it never dropped one by count) or `since` is at or after its
/// oldest kept event. Conservative: a client that missed exactly a full
/// room's worth is told `HistoryTooShort` although nothing was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// The stream's oldest sequence (`last + 1` when empty).
    pub stream_first: u64,
    /// How many events the room holds.
    pub room_events: u64,
    /// The room's oldest kept sequence, if it holds any.
    pub room_first: Option<u64>,
}

impl Coverage {
    /// Whether every event of the room after `since` is still stored,
    /// where a room drops events by count once it holds `max_per_room`
    /// (0: never).
    pub fn covers(&self, since: u64, max_per_room: u64) -> bool {
        let stream_wide = since.saturating_add(1) >= self.stream_first;
        let by_count = max_per_room == 0
            || self.room_events < max_per_room
            || self.room_first.is_none_or(|first| since >= first);
        stream_wide && by_count
    }
}

/// The stream, and how to publish to it and read from it.
#[derive(Clone)]
pub struct ClusterStore {
    js: jetstream::Context,
    stream: stream::Stream,
    subjects: Subjects,
    epoch: u64,
    max_per_room: u64,
}

impl ClusterStore {
    /// Creates the stream, or updates its settings to `settings` (the
    /// latest node to start wins; JetStream refuses what cannot change,
    /// such as the storage type).
    pub async fn open(
        js: jetstream::Context,
        subjects: Subjects,
        settings: &StreamSettings,
    ) -> Result<Self, ClusterError> {
        let config = stream::Config {
            name: subjects.stream(),
            subjects: vec![subjects.all_events()],
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            max_messages_per_subject: to_limit(settings.max_events_per_room),
            max_age: settings.max_age,
            max_bytes: to_limit(settings.max_bytes),
            discard: stream::DiscardPolicy::Old,
            duplicate_window: settings.duplicate_window,
            allow_direct: true,
            republish: Some(stream::Republish {
                source: subjects.all_events(),
                destination: subjects.all_live(),
                headers_only: false,
            }),
            description: Some("quicbus rooms: reliable events".to_string()),
            ..Default::default()
        };
        // A JetStream cluster that has just started answers "temporarily
        // unavailable" until it has elected a leader: try for a while.
        let mut attempt = 0;
        let info = loop {
            match js.create_or_update_stream(config.clone()).await {
                Ok(info) => break info,
                Err(e) if attempt < OPEN_ATTEMPTS => {
                    attempt += 1;
                    tracing::info!("event stream not ready ({e}); trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(ClusterError::js("creating the event stream")(e.into())),
            }
        };
        let epoch = epoch_of(&info.config.name, info.created.unix_timestamp_nanos());
        let stream = js
            .get_stream(subjects.stream())
            .await
            .map_err(|e| ClusterError::js("opening the event stream")(e.into()))?;
        Ok(ClusterStore {
            js,
            stream,
            subjects,
            epoch,
            max_per_room: settings.max_events_per_room,
        })
    }

    /// The stream's identity: the same on every node, new only if the
    /// stream was lost and created again.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Sends one event to the stream: once this returns, it is ordered
    /// before anything this node sends later; the returned future
    /// resolves when JetStream has stored it, with its sequence. A publish
    /// with the same publisher (session and id) within the duplicate
    /// window resolves to the first one's sequence and stores nothing.
    pub async fn send(
        &self,
        request: PublishRequest<'_>,
    ) -> Result<jetstream::context::PublishAckFuture, ClusterError> {
        let PublishRequest {
            room,
            from,
            publisher,
            ..
        } = request;
        let mut headers = HeaderMap::new();
        headers.insert(FROM, format!("{:x}.{}", from.node, from.connection));
        if publisher.session != 0 {
            let id = format!(
                "{:x}-{}-{}",
                publisher.session,
                room_token(room),
                publisher.id
            );
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        }
        let body = postcard::to_stdvec(&Body {
            event: request.event,
            payload: request.payload,
        })
        .map_err(|e| ClusterError::Malformed(format!("cannot encode an event: {e}")))?;
        self.js
            .publish_with_headers(self.subjects.events(room), headers, body.into())
            .await
            .map_err(|e| ClusterError::js("publishing an event")(e.into()))
    }

    /// The stream's newest sequence (0 if it never held an event): a
    /// position of every room, since any later event gets a higher one.
    pub async fn last_sequence(&self) -> Result<u64, ClusterError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| ClusterError::js("reading the stream state")(e.into()))?;
        Ok(info.state.last_sequence)
    }

    /// The events of `room` with a sequence in `(after, through]`, oldest
    /// first, at most `max` of them.
    pub async fn read(
        &self,
        room: &str,
        after: u64,
        through: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, ClusterError> {
        let subject = self.subjects.events(room);
        let mut events = Vec::new();
        let mut next = after.saturating_add(1);
        while next <= through && events.len() < max {
            let message = match self
                .stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.clone())
                .send()
                .await
            {
                Ok(message) => message,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(ClusterError::js("reading history")(e.into())),
            };
            if message.sequence > through {
                break;
            }
            next = message.sequence.saturating_add(1);
            // Something on our subjects that is not ours is stepped over,
            // never allowed to stall the room.
            match decode(
                message.sequence,
                None,
                Some(&message.headers),
                &message.payload,
            ) {
                Ok(event) => events.push(event),
                Err(e) => tracing::warn!(room, "skipping a stored message: {e}"),
            }
        }
        Ok(events)
    }

    /// What JetStream holds of room `room` and of the stream, for deciding
    /// whether a replay is complete (see [`Coverage`]).
    pub async fn coverage(&self, room: &str) -> Result<Coverage, ClusterError> {
        use futures_util::TryStreamExt;
        let subject = self.subjects.events(room);
        let mut info = self
            .stream
            .info_with_subjects(&subject)
            .await
            .map_err(|e| ClusterError::js("reading the stream state")(e.into()))?;
        let mut room_events = 0;
        while let Some((name, count)) = info
            .try_next()
            .await
            .map_err(|e| ClusterError::js("reading the room state")(e.into()))?
        {
            if name == subject {
                room_events = count as u64;
            }
        }
        let stream_first = self
            .stream
            .get_info()
            .await
            .map_err(|e| ClusterError::js("reading the stream state")(e.into()))?
            .state
            .first_sequence;
        let room_first = if room_events > 0 {
            self.read(room, 0, u64::MAX, 1)
                .await?
                .first()
                .map(|event| event.seq)
        } else {
            None
        };
        Ok(Coverage {
            stream_first,
            room_events,
            room_first,
        })
    }

    /// The per-room count bound the stream applies (0: none).
    pub fn max_per_room(&self) -> u64 {
        self.max_per_room
    }
}

/// Decodes a stored or republished event.
pub fn decode(
    seq: u64,
    previous: Option<u64>,
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<StoredEvent, ClusterError> {
    let body: Body = postcard::from_bytes(body)
        .map_err(|e| ClusterError::Malformed(format!("event {seq}: {e}")))?;
    let from = headers
        .and_then(|h| h.get(FROM))
        .and_then(|v| parse_from(v.as_str()));
    Ok(StoredEvent {
        seq,
        previous,
        from,
        event: body.event,
        payload: body.payload,
    })
}

/// Reads a `Quicbus-From` value (`<node hex>.<connection>`).
fn parse_from(value: &str) -> Option<SessionId> {
    let (node, connection) = value.split_once('.')?;
    Some(SessionId {
        node: u64::from_str_radix(node, 16).ok()?,
        connection: connection.parse().ok()?,
    })
}

/// A header holding a number, as JetStream writes them.
pub fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.as_str().trim().parse().ok()
}

fn to_limit(value: u64) -> i64 {
    if value == 0 {
        -1
    } else {
        i64::try_from(value).unwrap_or(i64::MAX)
    }
}

/// FNV-1a of the stream's name and creation time, never 0.
fn epoch_of(name: &str, created_nanos: i128) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes().chain(created_nanos.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_needs_nothing_dropped_after_the_position() {
        let room = |stream_first, room_events, room_first| Coverage {
            stream_first,
            room_events,
            room_first,
        };
        // Nothing dropped anywhere.
        assert!(room(1, 3, Some(5)).covers(0, 10));
        // Joined an empty room at 100; its first event came at 150.
        assert!(room(90, 1, Some(150)).covers(100, 10));
        // The stream dropped events above the position (age, bytes).
        assert!(!room(102, 1, Some(150)).covers(100, 10));
        assert!(room(101, 1, Some(150)).covers(100, 10));
        // The room is full: it may have dropped events after the position.
        assert!(!room(1, 10, Some(40)).covers(30, 10));
        assert!(room(1, 10, Some(40)).covers(40, 10));
        // No per-room bound: a full-looking room dropped nothing by count.
        assert!(room(1, 10, Some(40)).covers(30, 0));
        // An empty room: only the stream-wide bound matters.
        assert!(room(1, 0, None).covers(7, 10));
        assert!(!room(9, 0, None).covers(7, 10));
    }

    #[test]
    fn the_sender_header_round_trips() {
        let from = SessionId {
            node: 0xdead_beef,
            connection: 42,
        };
        let value = format!("{:x}.{}", from.node, from.connection);
        assert_eq!(parse_from(&value), Some(from));
        assert_eq!(parse_from("zz.1"), None);
        assert_eq!(parse_from("12"), None);
    }

    #[test]
    fn a_damaged_body_is_malformed_not_a_panic() {
        let err = decode(7, None, None, &[0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, ClusterError::Malformed(_)), "{err}");
    }

    #[test]
    fn limits_map_zero_to_unbounded() {
        assert_eq!(to_limit(0), -1);
        assert_eq!(to_limit(5), 5);
        assert_eq!(to_limit(u64::MAX), i64::MAX);
    }
}
