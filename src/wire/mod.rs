//! The quicbus wire protocol, version 2 (ALPN `quicbus/1`; the version is
//! negotiated in `Hello`).
//!
//! Every message is a [`Frame`], encoded with postcard. On a QUIC stream each
//! frame is preceded by its length as an unsigned LEB128 varint; the length is
//! checked against a limit before anything is allocated. A QUIC datagram
//! carries exactly one frame with no length prefix. `docs/PROTOCOL.md` is the
//! normative description; this module is its implementation.
//!
//! Which frame may appear where is fixed (see [`Frame::kind`]); a frame of the
//! wrong kind is a protocol violation, not something to skip.

mod codec;
mod stream;

pub use codec::{
    decode, encode, encode_framed, encode_padded, encoded_len, event_frame_len, read_varint,
    varint_len, write_varint, DatagramTemplate, FrameDecoder, MAX_VARINT_LEN,
};
pub use stream::{ChunkStream, FrameReader, ReadFrameError};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Protocol version carried in [`Frame::Hello`]; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 2;
/// TLS application protocol name negotiated by both sides.
pub const ALPN: &[u8] = b"quicbus/1";
/// Default upper bound on one stream frame (its body, without the prefix).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// Reliable events whose name and payload together are at most this many
/// bytes also travel as `PublishCopy` / `EventCopy` datagrams when copies
/// are on: small enough that sending them twice costs little.
pub const MAX_COPY_BYTES: usize = 512;
/// Longest room or event name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;

/// A room's identifier on one connection: the server hands one out for
/// each room name the connection names (`Join`, `Resolve`), keeps it for
/// the life of that connection, and accepts only ids it handed out there.
/// Ids mean nothing on another connection, or after a reconnect.
pub type RoomId = u32;

/// One protocol message. The variant order is the wire tag: never reorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    // --- control stream, client → server ---
    /// First frame of a session.
    Hello {
        version: u32,
        token: Option<String>,
        client_name: String,
        /// Present when reconnecting: resume that session.
        resume: Option<Resume>,
        /// Send an `EventCopy` datagram beside each small reliable event of
        /// this connection's rooms (see `EventCopy`).
        copies: bool,
    },
    /// Subscribe to a room; answered by `Joined` or `Error`. With `since`,
    /// the events after that offset are replayed from history first.
    Join {
        request: u64,
        room: String,
        /// Receive this connection's own events too; `None`: the room's
        /// namespace decides (off unless configured).
        echo: Option<bool>,
        since: Option<u64>,
    },
    /// Unsubscribe; answered by `Left` or `Error`.
    Leave {
        request: u64,
        room_id: RoomId,
    },
    /// Learn a room's id without subscribing (to publish datagrams to it).
    Resolve {
        request: u64,
        room: String,
    },

    // --- control stream, server → client ---
    /// Handshake accepted.
    Welcome {
        session_id: u64,
        max_datagram_payload: u32,
        max_frame: u32,
        /// Changes whenever the server loses its history (a restart):
        /// offsets from another epoch cannot be recovered.
        epoch: u64,
        /// Present this in `Hello.resume` to resume this session later.
        resume_token: String,
        /// What became of `Hello.resume`.
        resumed: ResumeOutcome,
    },
    /// Handshake refused; the server closes the connection afterwards.
    Reject {
        code: ErrorCode,
        reason: String,
        server_version: u32,
    },
    Joined {
        request: u64,
        room_id: RoomId,
        offset: u64,
        recovery: Recovery,
    },
    Left {
        request: u64,
        room_id: RoomId,
    },
    Resolved {
        request: u64,
        room_id: RoomId,
    },
    /// A reliable publish that asked for an ack was accepted at `offset`.
    Ack {
        request: u64,
        offset: u64,
    },
    /// A request (or, without `request`, some earlier input) failed.
    Error {
        request: Option<u64>,
        code: ErrorCode,
        message: String,
    },

    // --- unidirectional stream headers ---
    /// First frame of a client → server stream: every later frame publishes to `room`.
    PublishStream {
        room: String,
    },
    /// First frame of a server → client stream: every later frame is an event of `room`.
    EventStream {
        room_id: RoomId,
        room: String,
    },

    // --- reliable events, on unidirectional streams ---
    /// Client → server: publish one reliable event.
    Publish {
        /// Per room and session: 1, 2, 3… in emit order. A retried publish
        /// keeps its id, and the server publishes each id once (0: no
        /// de-duplication).
        id: u64,
        event: String,
        payload: Bytes,
        ack: Option<u64>,
    },
    /// Server → client: one reliable event with its server-assigned offset.
    Event {
        offset: u64,
        event: String,
        payload: Bytes,
    },

    // --- datagrams ---
    /// Client → server: publish one unreliable event.
    PublishDatagram {
        room_id: RoomId,
        event: String,
        payload: Bytes,
    },
    /// Server → client: one unreliable event with the room's datagram sequence.
    Datagram {
        room_id: RoomId,
        seq: u64,
        event: String,
        payload: Bytes,
    },

    // --- added at the end so earlier tags stay put ---
    /// Client → server on the control stream: answered by `Pong` once every
    /// control frame sent before it has been handled.
    Ping {
        request: u64,
    },
    /// Server → client on the control stream.
    Pong {
        request: u64,
    },
    /// Server → client on the control stream: every publish to `room` with
    /// an id up to `through` has been handled (published, refused, or found
    /// to be a duplicate), so the client may forget them.
    Progress {
        room: String,
        through: u64,
    },
    /// Client → server datagram: a copy of the `Publish` with this `id` on
    /// the publish stream of `room_id`, sent beside it so that a lost
    /// packet does not delay the event. The server publishes a copy only
    /// when it is the next publish of that stream not yet handled; the
    /// stream frame, arriving later, is then answered as a duplicate.
    PublishCopy {
        room_id: RoomId,
        id: u64,
        event: String,
        payload: Bytes,
        ack: Option<u64>,
        /// Zero bytes that make the datagram fill a QUIC packet by itself,
        /// so no single lost packet carries both the copy and the original.
        pad: Bytes,
    },
    /// Server → client datagram: a copy of the reliable `Event` at `offset`
    /// of `room_id`, for clients that asked with `Hello.copies`. `previous`
    /// is the offset of the room's event before it (0 for the first). The
    /// client delivers the copy only if `previous` is the newest offset it
    /// delivered from that room, and drops the stream frame that follows as
    /// a duplicate.
    EventCopy {
        room_id: RoomId,
        previous: u64,
        offset: u64,
        event: String,
        payload: Bytes,
        /// As in `PublishCopy`.
        pad: Bytes,
    },
    /// Client → server on the control stream: a new token for this
    /// connection, sent before the current one expires. Answered by
    /// `Refreshed`, or by an `Error` (the connection keeps its old token).
    Refresh {
        request: u64,
        token: String,
    },
    /// Server → client: the token of `Refresh` is now the connection's; it
    /// expires at `expires` (seconds since the Unix epoch, 0: never).
    Refreshed {
        request: u64,
        expires: u64,
    },
    /// Server → client on the control stream: a request, a publish or a
    /// datagram was refused because the connection's token (or the
    /// anonymous permissions) does not allow `action` on `room`. `request`
    /// is the join's request, or the publish's ack request; `None` when
    /// nothing asked (a datagram, a publish without ack).
    Forbidden {
        request: Option<u64>,
        room: String,
        action: Action,
    },
}

/// What a permission allows, as carried in [`Frame::Forbidden`].
pub use crate::auth::Action;

/// `Hello.resume`: the session to resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// `Welcome.resume_token` of the session.
    pub token: String,
    /// `Welcome.epoch` when the token was issued.
    pub epoch: u64,
}

/// What became of `Hello.resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResumeOutcome {
    /// No resume was asked for: a new session.
    New,
    /// The session continues: publishes it made before are not published twice.
    Resumed,
    /// The session could not be resumed (the token expired or is unknown,
    /// or the server's epoch changed); this is a new session.
    NotResumed { reason: RecoveryFailure },
}

/// How many frame variants version 2 defines (tags `0..FRAME_TAGS`).
pub const FRAME_TAGS: u64 = 25;

/// Where a frame may legally appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Control stream, client to server.
    ClientControl,
    /// Control stream, server to client.
    ServerControl,
    /// First frame of a client-opened unidirectional stream.
    PublishHeader,
    /// First frame of a server-opened unidirectional stream.
    EventHeader,
    /// Body of a client-opened unidirectional stream.
    PublishBody,
    /// Body of a server-opened unidirectional stream.
    EventBody,
    /// Datagram, client to server.
    ClientDatagram,
    /// Datagram, server to client.
    ServerDatagram,
}

impl Frame {
    /// The one place this frame may appear.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello { .. } | Frame::Join { .. } | Frame::Leave { .. } => {
                FrameKind::ClientControl
            }
            Frame::Resolve { .. } | Frame::Ping { .. } | Frame::Refresh { .. } => {
                FrameKind::ClientControl
            }
            Frame::Welcome { .. }
            | Frame::Reject { .. }
            | Frame::Joined { .. }
            | Frame::Left { .. }
            | Frame::Resolved { .. }
            | Frame::Ack { .. }
            | Frame::Pong { .. }
            | Frame::Progress { .. }
            | Frame::Refreshed { .. }
            | Frame::Forbidden { .. }
            | Frame::Error { .. } => FrameKind::ServerControl,
            Frame::PublishStream { .. } => FrameKind::PublishHeader,
            Frame::EventStream { .. } => FrameKind::EventHeader,
            Frame::Publish { .. } => FrameKind::PublishBody,
            Frame::Event { .. } => FrameKind::EventBody,
            Frame::PublishDatagram { .. } | Frame::PublishCopy { .. } => FrameKind::ClientDatagram,
            Frame::Datagram { .. } | Frame::EventCopy { .. } => FrameKind::ServerDatagram,
        }
    }

    /// The variant name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Join { .. } => "Join",
            Frame::Leave { .. } => "Leave",
            Frame::Resolve { .. } => "Resolve",
            Frame::Welcome { .. } => "Welcome",
            Frame::Reject { .. } => "Reject",
            Frame::Joined { .. } => "Joined",
            Frame::Left { .. } => "Left",
            Frame::Resolved { .. } => "Resolved",
            Frame::Ack { .. } => "Ack",
            Frame::Error { .. } => "Error",
            Frame::PublishStream { .. } => "PublishStream",
            Frame::EventStream { .. } => "EventStream",
            Frame::Publish { .. } => "Publish",
            Frame::Event { .. } => "Event",
            Frame::PublishDatagram { .. } => "PublishDatagram",
            Frame::Datagram { .. } => "Datagram",
            Frame::Ping { .. } => "Ping",
            Frame::Pong { .. } => "Pong",
            Frame::Progress { .. } => "Progress",
            Frame::PublishCopy { .. } => "PublishCopy",
            Frame::EventCopy { .. } => "EventCopy",
            Frame::Refresh { .. } => "Refresh",
            Frame::Refreshed { .. } => "Refreshed",
            Frame::Forbidden { .. } => "Forbidden",
        }
    }
}

/// What became of a `Join` with `since`: the explicit answer to "did I miss anything?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recovery {
    /// No position was given: delivery starts with the next event.
    Live,
    /// Every event after the position, `replayed` of them, comes first on
    /// the room's stream, then live events: nothing missed, nothing twice.
    Recovered { replayed: u64 },
    /// The gap cannot be filled; delivery starts with the next event and
    /// the application should resynchronize.
    NotRecovered { reason: RecoveryFailure },
}

/// Why missed events could not be recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryFailure {
    /// The room's history no longer reaches back to the position.
    HistoryTooShort,
    /// The position is beyond the room's newest event: it belongs to an
    /// earlier life of the room (it was evicted and named again).
    UnknownPosition,
    /// The server restarted (another history epoch) since the position.
    EpochChanged,
    /// The session's resume token expired or is unknown.
    TokenExpired,
    /// Rejoining the room after a reconnect was refused (the client no
    /// longer counts it as joined).
    JoinRefused,
    /// The room's history no longer reaches back to the position because
    /// the server dropped it to stay under its memory budget across rooms
    /// (the room's own limits would have kept it).
    HistoryBudget,
    /// The connection's token does not allow replaying the room's history:
    /// it joined live only.
    HistoryForbidden,
    /// The session belongs to another user (the token's `sub` differs).
    AnotherUser,
}

impl std::fmt::Display for RecoveryFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecoveryFailure::HistoryTooShort => "history too short",
            RecoveryFailure::UnknownPosition => "position unknown to the room",
            RecoveryFailure::EpochChanged => "server epoch changed",
            RecoveryFailure::TokenExpired => "session token expired",
            RecoveryFailure::JoinRefused => "rejoin refused",
            RecoveryFailure::HistoryBudget => {
                "history dropped to stay under the server's memory budget"
            }
            RecoveryFailure::HistoryForbidden => "history not allowed by the token",
            RecoveryFailure::AnotherUser => "the session belongs to another user",
        })
    }
}

/// Why a request failed or a handshake was refused (carried in `Error` and `Reject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The client speaks another protocol version.
    UnsupportedVersion,
    /// The token in `Hello` was missing or wrong.
    Unauthorized,
    /// A room or event name is empty or longer than [`MAX_NAME_LEN`].
    InvalidName,
    /// A datagram or request named a room id the server does not know.
    UnknownRoom,
    /// A `Leave` for a room the session has not joined.
    NotJoined,
    /// The server already holds its maximum number of rooms.
    TooManyRooms,
    /// An event would not fit the frame limit once the server adds its offset.
    TooLarge,
    /// The server is shutting down and accepts no more events.
    ShuttingDown,
    /// A retried publish whose outcome is too old to remember; it was
    /// handled once already.
    Duplicate,
    /// The server could not store the event (a storage failure); it was
    /// not published and may be sent again.
    Unavailable,
    /// Over the connection's rate of control requests or of publishes: the
    /// request was refused (a publish was not published). Many in a row
    /// close the connection with `rate limited`.
    RateLimited,
    /// The connection holds its maximum of something (rooms joined, room
    /// names, publish streams, rooms published to); the message says which.
    LimitReached,
    /// The server needs a token and `Hello` carried none.
    TokenRequired,
    /// The token's `exp` has passed.
    TokenExpired,
    /// The token is not valid: malformed, unsigned (`alg: none`), signed
    /// with another algorithm or key, not yet valid (`nbf`), or with bad
    /// claims; the reason says which.
    InvalidToken,
    /// The connection's token does not allow it (requests that name a room
    /// and an action are answered with [`Frame::Forbidden`] instead).
    Forbidden,
    /// The room's namespace does not take datagrams.
    DatagramsDisabled,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            ErrorCode::UnsupportedVersion => "unsupported protocol version",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidName => "invalid name",
            ErrorCode::UnknownRoom => "unknown room",
            ErrorCode::NotJoined => "not joined",
            ErrorCode::TooManyRooms => "too many rooms",
            ErrorCode::TooLarge => "too large",
            ErrorCode::ShuttingDown => "server shutting down",
            ErrorCode::Duplicate => "duplicate publish",
            ErrorCode::Unavailable => "storage unavailable",
            ErrorCode::RateLimited => "rate limited",
            ErrorCode::LimitReached => "limit reached",
            ErrorCode::TokenRequired => "token required",
            ErrorCode::TokenExpired => "token expired",
            ErrorCode::InvalidToken => "invalid token",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::DatagramsDisabled => "datagrams disabled",
        };
        f.write_str(text)
    }
}

/// QUIC application close codes used by quicbus (the `error_code` of
/// CONNECTION_CLOSE). The reason phrase always says more.
pub mod close_code {
    /// Orderly close by the application (client `close()`).
    pub const NORMAL: u32 = 0;
    /// The server is shutting down after delivering accepted events.
    pub const SERVER_SHUTTING_DOWN: u32 = 1;
    /// The client could not keep up: a reliable queue went over its bound.
    pub const SLOW_CONSUMER: u32 = 2;
    /// A malformed frame, a frame of the wrong kind, or bad UTF-8.
    pub const PROTOCOL_VIOLATION: u32 = 3;
    /// A stream frame's length prefix is over the limit.
    pub const FRAME_TOO_LARGE: u32 = 4;
    /// `Hello` carried a protocol version the server does not speak.
    pub const UNSUPPORTED_VERSION: u32 = 5;
    /// No valid `Hello` arrived within the handshake timeout.
    pub const HANDSHAKE_TIMEOUT: u32 = 6;
    /// The server is at its connection limit.
    pub const SERVER_BUSY: u32 = 7;
    /// `Hello` carried a missing or wrong token.
    pub const UNAUTHORIZED: u32 = 8;
    /// Another connection resumed this session (the client reconnected
    /// before the server noticed this connection was gone).
    pub const SESSION_RESUMED: u32 = 9;
    /// The server could not read what it needs from its storage to serve
    /// the connection safely (it would risk publishing an event twice);
    /// reconnect later.
    pub const STORAGE_UNAVAILABLE: u32 = 10;
    /// The client went on sending over its rate after being told
    /// `RateLimited`.
    pub const RATE_LIMITED: u32 = 11;
    /// A frame stayed half-sent longer than the server's frame timeout.
    pub const FRAME_TIMEOUT: u32 = 12;
    /// The connection's token expired and no `Refresh` replaced it in time.
    pub const TOKEN_EXPIRED: u32 = 13;

    /// A short name for a close code, for messages.
    pub fn describe(code: u64) -> &'static str {
        match code {
            0 => "closed",
            1 => "server shutting down",
            2 => "slow consumer",
            3 => "protocol violation",
            4 => "frame too large",
            5 => "unsupported protocol version",
            6 => "handshake timeout",
            7 => "server busy",
            8 => "unauthorized",
            9 => "session resumed on another connection",
            10 => "storage unavailable",
            11 => "rate limited",
            12 => "frame timeout",
            13 => "token expired",
            _ => "unknown close code",
        }
    }
}

/// Why a frame could not be decoded. Decoding never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix announces more than the limit allows.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: usize },
    /// The length prefix is not a valid varint (over 10 bytes or over 64 bits).
    #[error("invalid length prefix")]
    BadLength,
    /// A string field is not valid UTF-8.
    #[error("invalid UTF-8 in a text field")]
    BadUtf8,
    /// The frame tag is not one this version knows.
    #[error("unknown frame type")]
    UnknownFrame,
    /// The body ended before the frame did.
    #[error("frame is truncated")]
    Truncated,
    /// The body is longer than the frame it encodes.
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    UnexpectedEnd,
    /// Any other malformed encoding.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl WireError {
    /// The close code a peer should use when it receives this error.
    pub fn close_code(&self) -> u32 {
        match self {
            WireError::FrameTooLarge { .. } => close_code::FRAME_TOO_LARGE,
            _ => close_code::PROTOCOL_VIOLATION,
        }
    }
}

/// Checks a room or event name: non-empty and at most [`MAX_NAME_LEN`] bytes.
/// (UTF-8 validity is already guaranteed by decoding into a `String`.)
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} name is {} bytes, over the limit of {MAX_NAME_LEN}",
            name.len()
        ));
    }
    Ok(())
}
