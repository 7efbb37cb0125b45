//! Events as the application receives them.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::rooms::RoomTable;
use super::ClientError;
use crate::wire::{Recovery, ResumeOutcome};

/// How an event travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// On the room's stream, with the offset the server assigned.
    Reliable { offset: u64 },
    /// As a datagram, with the room's datagram sequence number.
    Datagram { seq: u64 },
}

/// One received event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The room it was published to.
    pub room: Arc<str>,
    /// The event name given by the publisher.
    pub name: String,
    /// Reliable (with offset) or datagram (with sequence number).
    pub delivery: Delivery,
    /// The payload, as published.
    pub payload: Bytes,
}

impl Event {
    /// Decodes a payload published with one of the `*_typed` emits (postcard).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        postcard::from_bytes(&self.payload).map_err(|e| ClientError::Payload(e.to_string()))
    }

    /// The offset of a reliable event.
    pub fn offset(&self) -> Option<u64> {
        match self.delivery {
            Delivery::Reliable { offset } => Some(offset),
            Delivery::Datagram { .. } => None,
        }
    }

    /// The sequence number of a datagram.
    pub fn seq(&self) -> Option<u64> {
        match self.delivery {
            Delivery::Datagram { seq } => Some(seq),
            Delivery::Reliable { .. } => None,
        }
    }
}

/// What a client hears: events, and what happens to its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// An event of a joined room.
    Event(Event),
    /// The connection was lost; the client is reconnecting (if allowed).
    Disconnected { reason: String },
    /// A new connection is up; `resumed` says whether the session continued.
    Reconnected { resumed: ResumeOutcome },
    /// After a reconnect, per joined room: were the missed events replayed
    /// (they follow on the stream, before live ones), or must the
    /// application resynchronize?
    Recovery { room: Arc<str>, recovery: Recovery },
    /// The server refused something no request waited for: a datagram or
    /// a publish without ack to a room the token may not publish to
    /// (`Publish`), or a joined room a refreshed token no longer allows
    /// (`Subscribe`: the room is left).
    Forbidden {
        room: Arc<str>,
        action: crate::auth::Action,
    },
    /// The server refused the connection's token as expired (on the live
    /// connection, or when reconnecting): the client reconnects once the
    /// application gives it a new one with
    /// [`crate::client::Client::set_token`], and waits until then.
    TokenExpired { reason: String },
    /// The server refused something no request waited for, for another
    /// reason than permissions: a datagram to a namespace that takes none
    /// (`DatagramsDisabled`) or over its payload limit (`TooLarge`), over
    /// the publish rate (`RateLimited`), a publish without ack that failed.
    /// Also counted in [`crate::client::ClientStats::server_errors`].
    ServerError {
        code: crate::wire::ErrorCode,
        message: String,
    },
}

/// The incoming events of one client, in arrival order (reliable events in
/// order within their room). Ends when the client is closed for good (by
/// `close`, a fatal error, or giving up reconnecting).
pub struct Events {
    pub(crate) rx: mpsc::Receiver<Incoming>,
    pub(crate) rooms: Arc<Mutex<RoomTable>>,
}

impl Events {
    /// The next event (connection notices are skipped; see
    /// [`Events::next_incoming`]), or `None` once the client has closed.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The next event or connection notice, or `None` once the client has closed.
    pub async fn next_incoming(&mut self) -> Option<Incoming> {
        std::future::poll_fn(|cx| self.poll_incoming(cx)).await
    }

    /// An event already received, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        while let Ok(incoming) = self.rx.try_recv() {
            if let Incoming::Event(event) = incoming {
                if self.is_joined(&event) {
                    return Some(event);
                }
            }
        }
        None
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            match self.poll_incoming(cx) {
                Poll::Ready(Some(Incoming::Event(event))) => return Poll::Ready(Some(event)),
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Events of rooms left after they were queued are dropped here, so
    /// that nothing of a room arrives once `leave` has returned.
    fn poll_incoming(&mut self, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Incoming::Event(event))) if !self.is_joined(&event) => continue,
                other => return other,
            }
        }
    }

    fn is_joined(&self, event: &Event) -> bool {
        crate::sync::lock(&self.rooms).joined.contains(&event.room)
    }
}

impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_event(cx)
    }
}
