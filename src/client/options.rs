//! What a client can be told: where to connect, whom to trust, limits; and
//! what it reports back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::tls::TransportSettings;
use crate::wire::{Recovery, DEFAULT_MAX_FRAME, PROTOCOL_VERSION};

/// Which certificate authorities the client trusts to vouch for the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// CA certificates read from a PEM file (default `certs/ca.pem`).
    CaFile(PathBuf),
    /// CA certificates given as PEM text.
    CaPem(String),
    /// CA certificates given as DER.
    Certificates(Vec<CertificateDer<'static>>),
}

/// How to connect; [`ClientOptions::new`] fills in sensible defaults.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server's UDP address.
    pub server: SocketAddr,
    /// Further servers serving the same rooms (default none). The first
    /// connection tries `server`, then each of these in order (each attempt
    /// within `connect_timeout`), and fails with the last error if none
    /// answers. A reconnect tries all of them, `server` included, in random
    /// order, one per attempt, with the usual backoff between attempts: a
    /// full shuffled round, then a new shuffle. Errors that no other server
    /// would answer differently (version mismatch, TLS material, a refused
    /// session) end the search at once. With a shared `endpoint`, every
    /// address must be of its family (an IPv4 socket cannot reach an IPv6
    /// server).
    pub servers: Vec<SocketAddr>,
    /// The name the server's certificate must carry.
    pub server_name: String,
    /// Trusted CAs. There is no option to skip verification.
    pub trust: Trust,
    /// A name for logs on the server.
    pub client_name: String,
    /// Sent in `Hello` for servers that require a token.
    pub token: Option<String>,
    /// Longest wait for the QUIC, TLS and quicbus handshakes together.
    pub connect_timeout: Duration,
    /// Longest wait for an answer to a request (join, leave, ack).
    pub request_timeout: Duration,
    /// Events buffered for the application before reliable streams push
    /// back and datagrams are dropped.
    pub event_queue: usize,
    /// Largest stream frame accepted from the server.
    pub max_frame: usize,
    /// QUIC transport settings.
    pub transport: TransportSettings,
    /// Protocol version sent in `Hello` (only tests change it).
    pub protocol_version: u32,
    /// How to reconnect after the connection is lost; `None` never does.
    pub reconnect: Option<Reconnect>,
    /// Most reliable emits kept until the server confirms them (while
    /// connected, and across an outage).
    pub outbox_events: usize,
    /// Most bytes of reliable emits kept until confirmed.
    pub outbox_bytes: usize,
    /// Send every small reliable event twice: on its stream, as always, and
    /// as a datagram copy; the receiver keeps whichever arrives first and
    /// drops the other by its id or offset. Both directions: this client's
    /// emits, and the events of the rooms it joined (the server sends the
    /// copies). Costs a second packet per small event; saves the QUIC
    /// retransmission wait (a few ms on loopback, more on a real path) when
    /// one of the two is lost. Off by default.
    pub copies: bool,
    /// A QUIC endpoint (one UDP socket) to connect from, shared with other
    /// clients; `None` gives each connection its own. Many clients in one
    /// process (load generators, benchmarks) save a socket and its receive
    /// buffers, a few MB, per client by sharing one. Create it inside the
    /// Tokio runtime the clients run on, with `quinn::Endpoint::client`.
    pub endpoint: Option<quinn::Endpoint>,
}

/// Reconnection with exponential backoff and full jitter: attempt `n` waits a
/// random time up to `min(initial × 2ⁿ, max)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Upper bound of the first wait.
    pub initial_backoff: Duration,
    /// The waits never exceed this.
    pub max_backoff: Duration,
    /// Give up (and end the event stream) after this long without a
    /// connection; `None` keeps trying until the client is closed.
    pub give_up_after: Option<Duration>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            give_up_after: None,
        }
    }
}

impl ClientOptions {
    /// Defaults: server name `localhost`, trust `certs/ca.pem`, 5 s timeouts.
    pub fn new(server: SocketAddr) -> Self {
        ClientOptions {
            server,
            servers: Vec::new(),
            server_name: "localhost".into(),
            trust: Trust::CaFile(PathBuf::from("certs/ca.pem")),
            client_name: "quicbus-client".into(),
            token: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            event_queue: 4096,
            max_frame: DEFAULT_MAX_FRAME,
            transport: TransportSettings::default(),
            protocol_version: PROTOCOL_VERSION,
            reconnect: Some(Reconnect::default()),
            outbox_events: 4096,
            outbox_bytes: 16 * 1024 * 1024,
            copies: false,
            endpoint: None,
        }
    }
}

/// Options of one `join`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JoinOptions {
    /// Also receive the events this client publishes to the room (`None`:
    /// as the room's namespace says on the server, off unless configured).
    pub echo: Option<bool>,
    /// Replay the events after this offset first (from the room's history).
    pub since: Option<u64>,
}

/// What a `join` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The room's offset at the join: that of its newest event, 0 if none.
    pub offset: u64,
    /// Whether the events after `since` were replayed ([`Recovery::Live`]
    /// when no `since` was given).
    pub recovery: Recovery,
}

/// Connection statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClientStats {
    /// Current smoothed round-trip time.
    pub rtt: Duration,
    /// QUIC packets sent and declared lost.
    pub sent_packets: u64,
    pub lost_packets: u64,
    /// Reliable events delivered to the application.
    pub reliable_received: u64,
    /// Of those, delivered from their `EventCopy` datagram (it arrived
    /// before the stream frame; see [`ClientOptions::copies`]).
    pub reliable_copies: u64,
    /// Datagrams delivered to the application.
    pub datagrams_received: u64,
    /// Datagram sequence numbers skipped (lost on the way, or arrived late).
    pub datagrams_lost: u64,
    /// Datagrams dropped on arrival because a newer one had already been delivered.
    pub datagrams_stale: u64,
    /// Datagrams dropped because the application's event queue was full.
    pub datagrams_dropped_queue_full: u64,
    /// Error frames from the server that answered no request.
    pub server_errors: u64,
    /// Connections re-established after a loss.
    pub reconnects: u64,
    /// Refusals by the connection's permissions that answered no request
    /// (see [`crate::client::Incoming::Forbidden`]).
    pub forbidden: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub reliable_received: AtomicU64,
    pub reliable_copies: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub datagrams_lost: AtomicU64,
    pub datagrams_stale: AtomicU64,
    pub datagrams_dropped_queue_full: AtomicU64,
    pub server_errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub forbidden: AtomicU64,
}
