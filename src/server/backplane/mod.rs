//! The seam between sessions and "where a room's events are sequenced,
//! stored and fanned out".
//!
//! A session never touches another session: it publishes into a
//! [`Backplane`] and registers a [`RoomSubscriber`] for each room it joins.
//! Rooms are keyed by **name** here: the small room ids on the wire belong
//! to one connection and never cross this seam.
//!
//! Behind the seam sit the stores, each its own small trait: room history
//! ([`crate::server::history`]), and the sessions that outlive a connection
//! (`sessions`). [`EmbeddedBackplane`] runs everything in one process over
//! a history store (memory, or a data directory); a clustered backplane is
//! another implementation of the same trait. That is why `subscribe` and
//! `publish` return futures even though the embedded one completes at once.

pub mod cluster;
mod embedded;
mod idle_rooms;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

pub use super::history::Publisher;

/// One reliable event to publish: the room, the connection it comes from
/// (for echo suppression), the publisher's session and publish id (for
/// exactly-once), and the event itself.
#[derive(Debug, Clone)]
pub struct PublishRequest<'a> {
    pub room: &'a str,
    pub from: SessionId,
    pub publisher: Publisher,
    pub event: String,
    pub payload: Bytes,
}
use super::history::{HistoryUsage, Replay};
use crate::wire::{DatagramTemplate, ErrorCode, Recovery};
pub use embedded::EmbeddedBackplane;

/// Identifies one connection of one server node, for echo suppression: a
/// node id (random per server process) and the connection's number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId {
    pub node: u64,
    pub connection: u64,
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}/{}", self.node, self.connection)
    }
}

/// A boxed future, so that [`Backplane`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outcome of a publish whose place is fixed: its offset, or why it
/// was not stored ([`Backplane::publish_ordered`]).
pub type PublishOutcome = BoxFuture<'static, Result<u64, BackplaneError>>;

/// Why a backplane operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackplaneError {
    /// Creating the room would exceed the configured number of rooms.
    #[error("the server already has its maximum of {max} rooms")]
    TooManyRooms { max: usize },
    /// The backplane is closed for shutdown and accepts no more events.
    #[error("server shutting down")]
    ShuttingDown,
    /// The event could not be stored, so it was not published.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl BackplaneError {
    /// The wire error code that reports this failure to a client.
    pub fn code(&self) -> ErrorCode {
        match self {
            BackplaneError::TooManyRooms { .. } => ErrorCode::TooManyRooms,
            BackplaneError::ShuttingDown => ErrorCode::ShuttingDown,
            BackplaneError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

/// Receives a room's events on behalf of one session. The deliver methods
/// are called with the room locked, so they must not block: they queue, and
/// decide themselves what to do when their queue is full.
pub trait RoomSubscriber: Send + Sync {
    /// The session this subscriber belongs to.
    fn session(&self) -> SessionId;
    /// Whether the session wants to receive the events it publishes itself.
    fn echo(&self) -> bool;
    /// Queues one length-prefixed `Event` frame for the room's stream.
    fn deliver_reliable(&self, frame: &Bytes);
    /// Queues one datagram (the subscriber puts in its own room id).
    fn deliver_datagram(&self, datagram: &DatagramTemplate);
    /// Whether the session wants `EventCopy` datagrams of small reliable events.
    fn copies(&self) -> bool {
        false
    }
    /// Queues the `EventCopy` datagram of a reliable event just delivered.
    fn deliver_copy(&self, copy: &EventCopy) {
        let _ = copy;
    }
}

/// A reliable event for its `EventCopy` datagram, which each subscriber
/// encodes with its own room id, padded to its own connection's packet size.
#[derive(Debug, Clone)]
pub struct EventCopy {
    /// The offset of the room's event before this one.
    pub previous: u64,
    pub offset: u64,
    pub event: String,
    pub payload: Bytes,
}

/// The outcome of [`Backplane::subscribe`].
pub struct Subscribed {
    /// The room's current offset: that of its newest event, 0 if none.
    pub offset: u64,
    /// What became of `since`.
    pub recovery: Recovery,
    /// The events to send before any live event (recovered only).
    pub replay: Option<Replay>,
}

/// Where rooms live: sequencing, history and fan-out, by room name.
pub trait Backplane: Send + Sync + 'static {
    /// Identifies this backplane's history: offsets are comparable only
    /// within one epoch. It changes when history is lost.
    fn epoch(&self) -> u64;
    /// Makes sure room `room` exists (naming a room creates it, within the
    /// room limit).
    fn open(&self, room: &str) -> Result<(), BackplaneError>;
    /// Adds a subscriber (replacing any earlier one of the same session).
    /// With `since`, also returns the replay of the history after that
    /// offset, taken in the same step, so that replay followed by live
    /// events has no gap and no duplicate.
    fn subscribe(
        &self,
        room: &str,
        subscriber: Arc<dyn RoomSubscriber>,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<Subscribed, BackplaneError>>;
    /// Removes the session's subscriber from a room; once this returns, no
    /// more events of that room are delivered to it.
    fn unsubscribe(&self, room: &str, session: SessionId);
    /// Assigns the next offset, stores the event, then fans it out to every
    /// subscriber (except the publisher unless it asked for echo). Returns
    /// the offset. An event that could not be stored is neither
    /// acknowledged nor delivered.
    fn publish(&self, request: PublishRequest<'_>) -> BoxFuture<'_, Result<u64, BackplaneError>>;
    /// [`Backplane::publish`] in two steps, so that one publisher can have
    /// several events in flight: the returned future resolves once the
    /// event's place in the room is fixed (an event published after that
    /// comes after it), to a second future that resolves to the outcome.
    /// The default does it all in the first step.
    // The first step yields the second on purpose.
    #[allow(clippy::async_yields_async)]
    fn publish_ordered(&self, request: PublishRequest<'_>) -> BoxFuture<'_, PublishOutcome> {
        let published = self.publish(request);
        Box::pin(async move {
            let outcome = published.await;
            Box::pin(std::future::ready(outcome)) as PublishOutcome
        })
    }
    /// [`Backplane::publish`] done at once, for the datagram copy of a
    /// publish (which must not wait); `None` when this backplane cannot
    /// publish without waiting (the stream frame then publishes the event).
    fn publish_now(&self, request: PublishRequest<'_>) -> Option<Result<u64, BackplaneError>> {
        let _ = request;
        None
    }
    /// Assigns the next datagram sequence number and fans the datagram out.
    fn publish_datagram(
        &self,
        room: &str,
        from: SessionId,
        event: String,
        payload: Bytes,
    ) -> Result<u64, BackplaneError>;
    /// The publishes of session `session` (its key) to `room` still on
    /// record, as `(publish id, offset)`: how a session resumed after a
    /// restart learns which of its retried publishes it had made.
    fn publishes_of(
        &self,
        room: &str,
        session: u64,
    ) -> BoxFuture<'_, Result<Vec<(u64, u64)>, BackplaneError>>;
    /// Applies history bounds and the fsync policy; called about once a
    /// second by the server.
    fn maintain(&self) {}
    /// Makes everything stored so far durable (a graceful stop calls it,
    /// whatever the fsync policy).
    fn sync(&self) {}
    /// The history kept across all rooms, and the events dropped so far
    /// to keep it under the budget (read once a second for the stats).
    fn history_usage(&self) -> HistoryUsage {
        HistoryUsage::default()
    }
    /// Stops accepting events: every publish after this returns
    /// `ShuttingDown`. Events already accepted have been handed to subscribers.
    fn close(&self);
}
