//! quicbus: a low-latency event bus over QUIC.
//!
//! The programming model of socket.io (named events, rooms, emit/join,
//! acknowledgements) carried on QUIC, where every emit chooses its trade-off:
//! **reliable** events travel on one QUIC stream per room (ordered, nothing
//! lost, and a loss in one room never stalls another), **datagram** events
//! travel as QUIC DATAGRAM frames (lowest latency, may be lost; stale ones
//! are dropped by the receiver).
//!
//! # A tour of the modules, following the data
//!
//! - [`wire`]: frames and their encoding (postcard, varint length prefix,
//!   size limit checked before allocating). Pure code, no sockets.
//! - [`tls`] and [`certs`]: rustls/quinn configuration and the development CA.
//! - [`client`]: [`client::Client`] connects, joins rooms, emits; incoming
//!   events of every room arrive on one [`client::Events`] stream.
//! - [`server`]: the accept loop and one session task per connection. A
//!   session publishes into a [`server::Backplane`] (rooms by name:
//!   offsets, history, fan-out; the room ids on the wire belong to the
//!   connection); the backplane stores the event (in memory, or in the data
//!   directory's log: `server::history`) and hands each subscriber the event
//!   *encoded once*; the subscriber's bounded queue feeds the room's stream
//!   writer.
//! - [`auth`]: who may do what: room patterns (NATS rules), permission
//!   lists, and signed tokens (JWT) that carry them. The server checks a
//!   connection's token once and caches each room's answer with the room's
//!   id on that connection (`server::access`).
//! - [`game`]: the moving-entities world of the demo and the game examples.
//! - [`netsim`]: a seeded UDP impairment proxy (loss, delay, jitter, reorder,
//!   duplication, outages) to put between a client and a server in tests.
//!
//! The benchmarks of `quicbus bench` live with the binary (`src/bench`), not
//! in the library.
//!
//! ```text
//! client ──PublishStream/Publish──▶ session ──▶ Backplane::publish (room by name)
//!                                               │ offset += 1, encode once,
//!                                               │ append to the room's history (disk: written before anyone sees it)
//!                                               ▼
//! client ◀──EventStream/Event── room writer ◀── bounded queue (per room, per connection)
//! client ◀──────── Datagram ─── datagram writer ◀── ring (per connection, newest wins)
//! ```
//!
//! `docs/PROTOCOL.md` specifies the wire protocol.

pub mod auth;
pub mod certs;
pub mod client;
mod copies;
#[doc(hidden)]
pub mod fuzzing;
pub mod game;
mod http;
pub mod metrics;
pub mod netsim;
pub mod server;
mod sync;
pub mod tls;
pub mod web;
pub mod wire;
