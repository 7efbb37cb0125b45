//! The client's error type.

use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::Action;
use crate::tls::TlsError;
use crate::wire::{close_code, ErrorCode, WireError};

/// Everything a client operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The trusted CA or other TLS material is unusable.
    #[error("{0}")]
    Tls(String),
    /// The local UDP socket could not be created.
    #[error("cannot create a local UDP socket: {0}")]
    Socket(String),
    /// The server did not complete the handshake in time (unreachable, or not a quicbus server).
    #[error("no answer from {server} within {after:?} (is the server running and reachable?)")]
    ConnectTimeout { server: SocketAddr, after: Duration },
    /// The QUIC or TLS handshake failed (for example the server's certificate is not trusted).
    #[error("cannot connect to {server}: {reason}")]
    Handshake { server: SocketAddr, reason: String },
    /// Client and server speak different protocol versions.
    #[error("protocol version mismatch: client speaks {client}, server speaks {server}")]
    VersionMismatch { client: u32, server: u32 },
    /// The server refused the session or a request (an ack included).
    #[error("rejected by the server ({code}): {reason}")]
    Rejected { code: ErrorCode, reason: String },
    /// The connection's token does not allow `action` on `room`.
    #[error("forbidden: the token does not allow {action} on room {room}")]
    Forbidden { room: String, action: Action },
    /// The server closed the connection with a quicbus close code.
    #[error("connection closed by the server: {} (code {code}): {reason}", close_code::describe(*code))]
    Closed { code: u64, reason: String },
    /// The connection was lost (timeout, reset, or closed locally).
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// A request got no answer in time.
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// A room or event name is invalid.
    #[error("{0}")]
    InvalidName(String),
    /// A datagram payload does not fit in the connection's current datagram size.
    #[error("datagram payload of {size} bytes is over the current limit of {limit} bytes")]
    DatagramTooLarge { size: usize, limit: usize },
    /// The outbox stayed full for the request timeout: the emit was not queued.
    #[error("outbox full: {limit} reliable emits await confirmation from the server")]
    OutboxFull { limit: usize },
    /// A reliable event is too large for the server's frame limit.
    #[error(
        "event of {size} bytes (as a frame) is over the server's frame limit of {limit} bytes"
    )]
    EventTooLarge { size: usize, limit: usize },
    /// The peer does not accept datagrams on this connection.
    #[error("datagrams are not supported on this connection")]
    DatagramsUnsupported,
    /// The server sent something that breaks the protocol.
    #[error("protocol error from server: {0}")]
    Protocol(String),
    /// A typed payload could not be encoded or decoded.
    #[error("payload codec: {0}")]
    Payload(String),
}

impl From<TlsError> for ClientError {
    fn from(e: TlsError) -> Self {
        ClientError::Tls(e.to_string())
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

impl ClientError {
    /// Describes why a connection ended.
    pub fn from_connection(err: &quinn::ConnectionError) -> Self {
        match err {
            quinn::ConnectionError::ApplicationClosed(close) => ClientError::Closed {
                code: close.error_code.into_inner(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            other => ClientError::Disconnected(other.to_string()),
        }
    }
}
