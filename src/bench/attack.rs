//! Attacks on a quicbus server, for `quicbus bench soak --attack` and for
//! integration tests: each is an `async fn` taking the server's address
//! (and its CA) and its own small settings, bounded in count and in time,
//! returning an [`AttackReport`] of what the server answered.
//!
//! This file uses only the public `quicbus` library, tokio and quinn, so a
//! test can take it in with `#[path = "../src/bench/attack.rs"] mod attack;`.
//!
//! - [`handshake_flood`]: QUIC Initial packets from one UDP socket, never
//!   followed up (captured from a quinn client, then replayed raw).
//! - [`room_flood`]: one connection joining and resolving many distinct rooms.
//! - [`history_hog`]: rooms filled with large reliable events.
//! - [`half_sent_frames`]: publish streams each holding an unfinished frame.
//! - [`partial_hellos`]: connections each sending part of a huge `Hello`.
//! - [`session_takeover`]: resuming with another live client's resume token,
//!   and with a forged one.
//!
//! Answers are counted by what the server said: a close code, an error
//! code, a reject, a QUIC packet type. Whether a refusal is the right
//! answer is for the reader (or the test) to judge; nothing here fails
//! because the server defended itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use quinn::{Connection, Endpoint, SendStream};
use serde::Serialize;
use tokio::net::UdpSocket;

use quicbus::client::{Client, ClientError, ClientOptions, Trust};
use quicbus::tls::TransportSettings;
use quicbus::wire::{self, close_code, Frame, FrameReader, Resume, ResumeOutcome};

/// Longest wait for one connection's QUIC and quicbus handshakes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one answer on a control stream.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The server under attack.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its UDP address.
    pub addr: SocketAddr,
    /// The CA its certificate is checked against (PEM).
    pub ca_pem: String,
}

/// Why an attack could not be carried out at all (a refusal by the server
/// is not one of these: it is an answer, in the report).
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    /// A local socket could not be bound or used.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The CA or the TLS configuration is unusable.
    #[error("TLS: {0}")]
    Tls(String),
}

/// What one attack tried and what the server answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttackReport {
    /// `handshake-flood`, `room-flood`, `history-hog`, `half-sent-frames`,
    /// `partial-hellos` or `session-takeover`.
    pub name: String,
    /// How many things were tried (packets, rooms, events, streams,
    /// connections, resume attempts), over all rounds.
    pub attempted: u64,
    /// Of those, how many the server did as asked.
    pub accepted: u64,
    /// Of those, how many the server refused, closed or limited.
    pub refused: u64,
    /// Every answer by kind, e.g. `"close 4 (frame too large)": 40`.
    pub answers: BTreeMap<String, u64>,
    /// Rounds run (an attack may be repeated for as long as a phase lasts).
    pub rounds: u64,
    /// Time spent, over all rounds.
    pub elapsed_ms: u64,
}

impl AttackReport {
    fn new(name: &str) -> Self {
        AttackReport {
            name: name.to_string(),
            rounds: 1,
            ..AttackReport::default()
        }
    }

    fn answer(&mut self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            *self.answers.entry(kind.into()).or_insert(0) += n;
        }
    }

    /// Adds another round's counts to this one.
    pub fn merge(&mut self, other: &AttackReport) {
        self.attempted += other.attempted;
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.rounds += other.rounds;
        self.elapsed_ms += other.elapsed_ms;
        for (k, v) in &other.answers {
            *self.answers.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// `attempted 100, accepted 0, refused 100: close 4 (frame too large) 100`.
    pub fn summary(&self) -> String {
        let answers: Vec<String> = self
            .answers
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "attempted {}, accepted {}, refused {}: {}",
            self.attempted,
            self.accepted,
            self.refused,
            answers.join(", ")
        )
    }
}

/// How a connection ended, as an answer: `close 4 (frame too large)`.
pub fn close_answer(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let code = c.error_code.into_inner();
            format!("close {code} ({})", close_code::describe(code))
        }
        quinn::ConnectionError::ConnectionClosed(c) => {
            format!("transport close {}", c.error_code)
        }
        quinn::ConnectionError::TimedOut => "idle timeout".into(),
        quinn::ConnectionError::Reset => "reset".into(),
        quinn::ConnectionError::LocallyClosed => "closed locally".into(),
        other => format!("connection error: {other}"),
    }
}

fn client_error_answer(e: &ClientError) -> String {
    match e {
        ClientError::Closed { code, .. } => {
            format!("close {code} ({})", close_code::describe(*code))
        }
        ClientError::Rejected { code, .. } => format!("error {code}"),
        ClientError::Timeout { what, .. } => format!("{what} timed out"),
        ClientError::ConnectTimeout { .. } => "connect timed out".into(),
        ClientError::Disconnected(_) => "disconnected".into(),
        other => format!("client error: {other}"),
    }
}

/// A client endpoint on a fresh loopback socket that trusts `target`'s CA.
fn endpoint(target: &Target) -> Result<Endpoint, AttackError> {
    let roots =
        quicbus::tls::parse_certs(&target.ca_pem).map_err(|e| AttackError::Tls(e.to_string()))?;
    let config = quicbus::tls::client_config(&roots, &TransportSettings::default())
        .map_err(|e| AttackError::Tls(e.to_string()))?;
    let mut endpoint =
        Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|source| {
            AttackError::Io {
                what: "binding the attack's socket",
                source,
            }
        })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// A QUIC connection with its control stream open, before `Hello`.
struct Raw {
    conn: Connection,
    send: SendStream,
    control: FrameReader,
}

/// Connects and opens the control stream; the answer on failure.
async fn raw_connect(endpoint: &Endpoint, target: &Target) -> Result<Raw, String> {
    let connecting = endpoint
        .connect(target.addr, "localhost")
        .map_err(|e| format!("connect refused locally: {e}"))?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(close_answer(&e)),
        Err(_) => return Err("handshake timed out".into()),
    };
    let (send, recv) = match tokio::time::timeout(CONNECT_TIMEOUT, conn.open_bi()).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(close_answer(&e)),
        Err(_) => return Err("no stream credit".into()),
    };
    Ok(Raw {
        conn,
        send,
        control: FrameReader::new(recv, wire::DEFAULT_MAX_FRAME),
    })
}

/// What `Hello` got.
enum Greeting {
    Welcome {
        resume_token: String,
        epoch: u64,
        resumed: ResumeOutcome,
    },
    /// Anything else, as an answer.
    Refused(String),
}

async fn hello(raw: &mut Raw, resume: Option<Resume>) -> Greeting {
    let frame = wire::encode_framed(&Frame::Hello {
        version: wire::PROTOCOL_VERSION,
        token: None,
        client_name: "quicbus-attack".into(),
        resume,
        copies: false,
    });
    if raw.send.write_all(&frame).await.is_err() {
        return Greeting::Refused(closed_or(&raw.conn, "hello not sent"));
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, raw.control.next()).await {
        Ok(Ok(Some(Frame::Welcome {
            resume_token,
            epoch,
            resumed,
            ..
        }))) => Greeting::Welcome {
            resume_token,
            epoch,
            resumed,
        },
        Ok(Ok(Some(Frame::Reject { code, .. }))) => Greeting::Refused(format!("reject {code}")),
        Ok(Ok(Some(other))) => Greeting::Refused(format!("unexpected {}", other.name())),
        Ok(Ok(None)) | Ok(Err(_)) => {
            Greeting::Refused(closed_or(&raw.conn, "control stream ended"))
        }
        Err(_) => Greeting::Refused("no answer to hello".into()),
    }
}

/// The connection's close as an answer, if it has closed; else `otherwise`.
fn closed_or(conn: &Connection, otherwise: &str) -> String {
    conn.close_reason()
        .map_or_else(|| otherwise.to_string(), |e| close_answer(&e))
}

/// A raw session that has been welcomed, or the answer that refused it.
async fn session(endpoint: &Endpoint, target: &Target) -> Result<Raw, String> {
    let mut raw = raw_connect(endpoint, target).await?;
    match hello(&mut raw, None).await {
        Greeting::Welcome { .. } => Ok(raw),
        Greeting::Refused(answer) => Err(answer),
    }
}

/// Closes the endpoint and waits briefly for its connections to say so.
async fn finish(endpoint: Endpoint) {
    endpoint.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

fn random_tag() -> u64 {
    rand::random()
}

// ---------------------------------------------------------------------------
// Handshake flood

/// Settings of [`handshake_flood`].
#[derive(Debug, Clone)]
pub struct FloodConfig {
    /// Initial packets sent, each opening a different handshake.
    pub initials: usize,
    /// Packets per second.
    pub rate: u64,
    /// How long answers are collected after the last packet.
    pub linger: Duration,
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            initials: 2_500,
            rate: 1_000,
            linger: Duration::from_secs(2),
        }
    }
}

/// Captured client Initial packets, each of its own handshake: the first
/// datagram of `count` quinn connection attempts to a socket of ours.
/// Capturing costs a TLS ClientHello each, so it is done before the flood.
pub async fn capture_initials(target: &Target, count: usize) -> Result<Vec<Bytes>, AttackError> {
    let sink = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|source| AttackError::Io {
            what: "binding the capture socket",
            source,
        })?;
    let sink_addr = sink.local_addr().map_err(|source| AttackError::Io {
        what: "the capture socket's address",
        source,
    })?;
    let endpoint = endpoint(target)?;
    let mut captured = Vec::with_capacity(count);
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; 65_536];
    // In batches, read as they come: the socket's buffer holds few.
    let deadline = Instant::now() + Duration::from_secs(30);
    while captured.len() < count && Instant::now() < deadline {
        let batch = (count - captured.len()).min(50);
        let mut pending = Vec::with_capacity(batch);
        for _ in 0..batch {
            if let Ok(connecting) = endpoint.connect(sink_addr, "localhost") {
                pending.push(connecting);
            }
        }
        let want = captured.len() + pending.len();
        while captured.len() < want {
            match tokio::time::timeout(Duration::from_secs(2), sink.recv_from(&mut buf)).await {
                Ok(Ok((len, _))) => {
                    let packet = &buf[..len];
                    if let Some(dcid) = initial_dcid(packet) {
                        if seen.insert(dcid.to_vec()) {
                            captured.push(Bytes::copy_from_slice(packet));
                        }
                    }
                }
                _ => break,
            }
        }
        drop(pending);
    }
    endpoint.close(0u32.into(), b"");
    Ok(captured)
}

/// The destination connection id of a QUIC v1 long-header Initial.
fn initial_dcid(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    let is_initial = first & 0xc0 == 0xc0 && (first >> 4) & 0x3 == 0;
    if !is_initial || packet.get(1..5)? != [0, 0, 0, 1] {
        return None;
    }
    let len = usize::from(*packet.get(5)?);
    packet.get(6..6 + len)
}

/// The source connection id of a long-header packet (the id an answer is
/// addressed to).
fn long_scid(packet: &[u8]) -> Option<&[u8]> {
    let dlen = usize::from(*packet.get(5)?);
    let at = 6 + dlen;
    let slen = usize::from(*packet.get(at)?);
    packet.get(at + 1..at + 1 + slen)
}

/// What kind of packet the server answered with, and to which id.
fn classify_answer(packet: &[u8]) -> (&'static str, Option<&[u8]>) {
    let Some(&first) = packet.first() else {
        return ("empty", None);
    };
    if first & 0x80 == 0 {
        return ("short header", None);
    }
    if packet.get(1..5) == Some(&[0, 0, 0, 0]) {
        let dcid = packet
            .get(5)
            .and_then(|&l| packet.get(6..6 + usize::from(l)));
        return ("version negotiation", dcid);
    }
    let dcid = packet
        .get(5)
        .and_then(|&l| packet.get(6..6 + usize::from(l)));
    let kind = match (first >> 4) & 0x3 {
        0 => "initial",
        1 => "0-rtt",
        2 => "handshake",
        _ => "retry",
    };
    (kind, dcid)
}

/// Sends `initials` (see [`capture_initials`]) from one UDP socket at
/// `config.rate` and never follows up; counts the server's answers per
/// handshake by their first packet: `retry` (address validation first:
/// stateless, the flood holds nothing), `initial` (the server started a
/// handshake and keeps its state until it times out), or none.
pub async fn handshake_flood(
    target: &Target,
    initials: &[Bytes],
    config: &FloodConfig,
) -> Result<AttackReport, AttackError> {
    let started = Instant::now();
    let socket = Arc::new(
        UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|source| AttackError::Io {
                what: "binding the flood socket",
                source,
            })?,
    );
    let ours: HashSet<Vec<u8>> = initials
        .iter()
        .filter_map(|p| long_scid(p).map(<[u8]>::to_vec))
        .collect();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = {
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut first: HashMap<Vec<u8>, &'static str> = HashMap::new();
            let mut packets = 0u64;
            let mut buf = vec![0u8; 65_536];
            // Until told to stop (the caller's linger bounds it).
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    received = socket.recv_from(&mut buf) => {
                        let Ok((len, _)) = received else { break };
                        packets += 1;
                        let (kind, dcid) = classify_answer(&buf[..len]);
                        if let Some(dcid) = dcid {
                            first.entry(dcid.to_vec()).or_insert(kind);
                        }
                    }
                }
            }
            (first, packets)
        })
    };
    let rate = config.rate.max(1);
    let per_tick = (rate / 100).max(1) as usize;
    let mut sent = 0u64;
    let mut send_errors = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for chunk in initials.chunks(per_tick) {
        tick.tick().await;
        for packet in chunk {
            match socket.send_to(packet, target.addr).await {
                Ok(_) => sent += 1,
                Err(_) => send_errors += 1,
            }
        }
    }
    tokio::time::sleep(config.linger).await;
    let _ = stop.send(());
    let (first, packets) = listener.await.unwrap_or_default();
    let mut report = AttackReport::new("handshake-flood");
    report.attempted = sent;
    let mut answered = 0;
    for (dcid, kind) in &first {
        if ours.contains(dcid) {
            answered += 1;
            report.answer(*kind, 1);
            if *kind == "initial" || *kind == "handshake" {
                report.accepted += 1;
            } else {
                report.refused += 1;
            }
        }
    }
    let silent = sent.saturating_sub(answered);
    report.answer("no answer", silent);
    report.refused += silent;
    report.answer("send failed", send_errors);
    report.answer("packets received", packets);
    report.elapsed_ms = elapsed_ms(started);
    Ok(report)
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Room flood

/// Settings of [`room_flood`].
#[derive(Debug, Clone)]
pub struct RoomFloodConfig {
    /// Distinct room names; even ones are joined, odd ones resolved.
    pub rooms: u64,
    /// Requests sent ahead of their answers.
    pub window: u64,
    /// The longest the attack runs.
    pub time_limit: Duration,
}

impl Default for RoomFloodConfig {
    fn default() -> Self {
        RoomFloodConfig {
            rooms: 100_000,
            window: 256,
            time_limit: Duration::from_secs(30),
        }
    }
}

/// One connection names `config.rooms` distinct rooms as fast as the
/// server answers: `Join` for even ones, `Resolve` for odd ones. Counts
/// `Joined`/`Resolved` as accepted, `Error` codes and a close as refused.
pub async fn room_flood(
    target: &Target,
    config: &RoomFloodConfig,
) -> Result<AttackReport, AttackError> {
    let started = Instant::now();
    let deadline = started + config.time_limit;
    let mut report = AttackReport::new("room-flood");
    let endpoint = endpoint(target)?;
    let mut raw = match session(&endpoint, target).await {
        Ok(raw) => raw,
        Err(answer) => {
            report.attempted = config.rooms;
            report.refused = config.rooms;
            report.answer(format!("session refused: {answer}"), 1);
            finish(endpoint).await;
            report.elapsed_ms = elapsed_ms(started);
            return Ok(report);
        }
    };
    let tag = random_tag();
    let mut next = 0u64;
    let mut answered = 0u64;
    let mut closed = None;
    while answered < config.rooms && Instant::now() < deadline {
        // Keep `window` requests in flight, written in one go.
        if next < config.rooms && next - answered < config.window {
            let mut batch = BytesMut::new();
            while next < config.rooms && next - answered < config.window {
                let room = format!("attack-room-{tag:x}-{next}");
                let request = next + 1;
                let frame = if next.is_multiple_of(2) {
                    Frame::Join {
                        request,
                        room,
                        echo: Some(false),
                        since: None,
                    }
                } else {
                    Frame::Resolve { request, room }
                };
                batch.put(wire::encode_framed(&frame));
                next += 1;
            }
            let write = tokio::time::timeout_at(deadline.into(), raw.send.write_all(&batch));
            match write.await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    closed = Some(closed_or(&raw.conn, "control stream refused"));
                    break;
                }
                Err(_) => break,
            }
        }
        match tokio::time::timeout_at(deadline.into(), raw.control.next()).await {
            Ok(Ok(Some(frame))) => match frame {
                Frame::Joined { .. } => {
                    answered += 1;
                    report.accepted += 1;
                    report.answer("joined", 1);
                }
                Frame::Resolved { .. } => {
                    answered += 1;
                    report.accepted += 1;
                    report.answer("resolved", 1);
                }
                Frame::Error {
                    request: Some(_),
                    code,
                    ..
                } => {
                    answered += 1;
                    report.refused += 1;
                    report.answer(format!("error {code}"), 1);
                }
                Frame::Error { code, .. } => report.answer(format!("unsolicited error {code}"), 1),
                _ => {}
            },
            Ok(Ok(None)) | Ok(Err(_)) => {
                closed = Some(closed_or(&raw.conn, "control stream ended"));
                break;
            }
            Err(_) => break,
        }
    }
    report.attempted = next;
    if let Some(answer) = closed {
        report.answer(answer, 1);
    }
    // Sent but never answered: the server dropped them (or time ran out).
    let unanswered = next - answered;
    report.answer("unanswered", unanswered);
    report.refused += unanswered;
    raw.conn.close(0u32.into(), b"done");
    finish(endpoint).await;
    report.elapsed_ms = elapsed_ms(started);
    Ok(report)
}

// ---------------------------------------------------------------------------
// History hog

/// Settings of [`history_hog`].
#[derive(Debug, Clone)]
pub struct HogConfig {
    /// Rooms filled.
    pub rooms: usize,
    /// Bytes of payload published to each room.
    pub bytes_per_room: u64,
    /// Payload bytes per event (at most the server's frame limit).
    pub event_size: usize,
    /// Events awaiting their ack at once.
    pub in_flight: usize,
    /// The longest the attack runs.
    pub time_limit: Duration,
}

impl Default for HogConfig {
    fn default() -> Self {
        HogConfig {
            rooms: 20,
            bytes_per_room: 64 * 1024 * 1024,
            event_size: 1_000_000,
            in_flight: 8,
            time_limit: Duration::from_secs(60),
        }
    }
}

/// One client publishes `bytes_per_room` of `event_size`-byte reliable
/// events to each of `rooms` rooms (round robin, with acks): acked events
/// are accepted, refused acks and a close refused.
pub async fn history_hog(target: &Target, config: &HogConfig) -> Result<AttackReport, AttackError> {
    let started = Instant::now();
    let deadline = started + config.time_limit;
    let mut report = AttackReport::new("history-hog");
    let per_room = config
        .bytes_per_room
        .div_ceil(config.event_size.max(1) as u64);
    let total = per_room * config.rooms as u64;
    let mut options = ClientOptions::new(target.addr);
    options.trust = Trust::CaPem(target.ca_pem.clone());
    options.client_name = "quicbus-attack-hog".into();
    options.reconnect = None;
    options.connect_timeout = CONNECT_TIMEOUT;
    options.request_timeout = Duration::from_secs(30);
    options.outbox_bytes = config.event_size * (config.in_flight + 1) + 4096;
    let client = match Client::connect(options).await {
        Ok((client, _events)) => client,
        Err(e) => {
            report.attempted = total;
            report.refused = total;
            report.answer(format!("session refused: {}", client_error_answer(&e)), 1);
            report.elapsed_ms = elapsed_ms(started);
            return Ok(report);
        }
    };
    let tag = random_tag();
    let payload = Bytes::from(vec![0xa5u8; config.event_size]);
    let mut pending = std::collections::VecDeque::new();
    let mut sent = 0u64;
    let mut stop = None;
    while sent < total && Instant::now() < deadline && stop.is_none() {
        let room = format!("attack-hog-{tag:x}-{}", sent % config.rooms as u64);
        match client.emit_acked(&room, "hog", payload.clone()).await {
            Ok(ack) => pending.push_back(ack),
            Err(e) => {
                stop = Some(client_error_answer(&e));
                break;
            }
        }
        sent += 1;
        while pending.len() >= config.in_flight.max(1) {
            let Some(ack) = pending.pop_front() else {
                break;
            };
            tally_ack(&mut report, ack.wait().await, &mut stop);
        }
    }
    while let Some(ack) = pending.pop_front() {
        tally_ack(&mut report, ack.wait().await, &mut stop);
    }
    report.attempted = sent;
    if let Some(answer) = stop {
        report.answer(answer, 1);
    }
    client.close().await;
    report.elapsed_ms = elapsed_ms(started);
    Ok(report)
}

fn tally_ack(report: &mut AttackReport, ack: Result<u64, ClientError>, stop: &mut Option<String>) {
    match ack {
        Ok(_) => {
            report.accepted += 1;
            report.answer("acked", 1);
        }
        Err(e) => {
            report.refused += 1;
            let answer = client_error_answer(&e);
            if matches!(e, ClientError::Closed { .. } | ClientError::Disconnected(_)) {
                stop.get_or_insert(answer);
            } else {
                report.answer(answer, 1);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Half-sent frames

/// Settings of [`half_sent_frames`].
#[derive(Debug, Clone)]
pub struct HalfSentConfig {
    /// Publish streams opened, each to its own room.
    pub streams: usize,
    /// The length each frame announces.
    pub frame_len: usize,
    /// How much of it is sent (then nothing more).
    pub sent_len: usize,
    /// How long the streams are held open, unless the server acts first.
    pub hold: Duration,
}

impl Default for HalfSentConfig {
    fn default() -> Self {
        HalfSentConfig {
            streams: 100,
            frame_len: 1_000_000,
            sent_len: 500_000,
            hold: Duration::from_secs(20),
        }
    }
}

/// One connection opens `streams` publish streams and on each sends the
/// first `sent_len` bytes of a `frame_len`-byte frame, then holds them.
/// A stream still open after `hold` is accepted; one the server stopped,
/// or a closed connection, refused.
pub async fn half_sent_frames(
    target: &Target,
    config: &HalfSentConfig,
) -> Result<AttackReport, AttackError> {
    let started = Instant::now();
    let mut report = AttackReport::new("half-sent-frames");
    report.attempted = config.streams as u64;
    let endpoint = endpoint(target)?;
    let raw = match session(&endpoint, target).await {
        Ok(raw) => raw,
        Err(answer) => {
            report.refused = report.attempted;
            report.answer(format!("session refused: {answer}"), 1);
            finish(endpoint).await;
            report.elapsed_ms = elapsed_ms(started);
            return Ok(report);
        }
    };
    let tag = random_tag();
    let mut head = BytesMut::new();
    wire::write_varint(&mut head, config.frame_len as u64);
    let body = vec![0u8; config.sent_len.min(config.frame_len)];
    let mut streams: Vec<SendStream> = Vec::new();
    let mut bytes_written = 0u64;
    let mut blocked = 0u64;
    for i in 0..config.streams {
        let open = tokio::time::timeout(Duration::from_secs(2), raw.conn.open_uni()).await;
        let mut send = match open {
            Ok(Ok(send)) => send,
            Ok(Err(e)) => {
                report.answer(format!("stream not opened: {}", close_answer(&e)), 1);
                break;
            }
            Err(_) => {
                report.answer("stream not opened: no stream credit", 1);
                continue;
            }
        };
        let header = wire::encode_framed(&Frame::PublishStream {
            room: format!("attack-half-{tag:x}-{i}"),
        });
        let mut data = BytesMut::from(&header[..]);
        data.put(&head[..]);
        data.put(&body[..]);
        // Flow control may stop the write part way: what got through counts.
        let mut offset = 0;
        let write_until = Instant::now() + Duration::from_secs(2);
        while offset < data.len() {
            match tokio::time::timeout_at(write_until.into(), send.write(&data[offset..])).await {
                Ok(Ok(n)) => offset += n,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        if offset < data.len() {
            blocked += 1;
        }
        bytes_written += offset as u64;
        streams.push(send);
        if raw.conn.close_reason().is_some() {
            break;
        }
    }
    report.answer("streams blocked by flow control", blocked);
    // Hold until `hold` is over or the server has answered every stream.
    let hold_until = tokio::time::Instant::now() + config.hold;
    let mut open = 0u64;
    for send in &streams {
        match tokio::time::timeout_at(hold_until, send.stopped()).await {
            Ok(Ok(Some(code))) => report.answer(format!("stream stopped {code}"), 1),
            // Gone with its connection: the close is the answer.
            Ok(Ok(None)) | Ok(Err(_)) => {}
            Err(_) => open += 1,
        }
    }
    match raw.conn.close_reason() {
        Some(e) => {
            report.answer(close_answer(&e), 1);
            report.refused = report.attempted;
        }
        None => {
            report.accepted = open;
            report.refused = report.attempted.saturating_sub(open);
            report.answer("streams held open", open);
        }
    }
    report.answer("kib written", bytes_written / 1024);
    raw.conn.close(0u32.into(), b"done");
    finish(endpoint).await;
    report.elapsed_ms = elapsed_ms(started);
    Ok(report)
}

// ---------------------------------------------------------------------------
// Partial Hellos

/// Settings of [`partial_hellos`].
#[derive(Debug, Clone)]
pub struct PartialHelloConfig {
    /// Connections, each sending one partial `Hello`.
    pub connections: usize,
    /// The length each `Hello` announces.
    pub announced: usize,
    /// How much of it is sent.
    pub sent_len: usize,
    /// How long the connections are held, unless the server closes them.
    pub hold: Duration,
}

impl Default for PartialHelloConfig {
    fn default() -> Self {
        PartialHelloConfig {
            connections: 40,
            announced: 1 << 20,
            sent_len: 64 * 1024,
            hold: Duration::from_secs(10),
        }
    }
}

/// `connections` connections each announce a `Hello` of `announced` bytes
/// on the control stream and send `sent_len` of it. Closed by the server:
/// refused (by its close code); still open after `hold`: accepted.
pub async fn partial_hellos(
    target: &Target,
    config: &PartialHelloConfig,
) -> Result<AttackReport, AttackError> {
    let started = Instant::now();
    let mut report = AttackReport::new("partial-hellos");
    report.attempted = config.connections as u64;
    let endpoint = endpoint(target)?;
    let mut data = BytesMut::new();
    wire::write_varint(&mut data, config.announced as u64);
    data.put(&vec![0u8; config.sent_len.min(config.announced)][..]);
    let data = data.freeze();
    let mut tasks = Vec::new();
    for _ in 0..config.connections {
        let (endpoint, target, data) = (endpoint.clone(), target.clone(), data.clone());
        let hold = config.hold;
        tasks.push(tokio::spawn(async move {
            let mut raw = match raw_connect(&endpoint, &target).await {
                Ok(raw) => raw,
                Err(answer) => return (false, format!("not connected: {answer}")),
            };
            let _ = tokio::time::timeout(hold, raw.send.write_all(&data)).await;
            let answer = match tokio::time::timeout(hold, raw.conn.closed()).await {
                Ok(e) => return (false, close_answer(&e)),
                Err(_) => "held open".to_string(),
            };
            raw.conn.close(0u32.into(), b"done");
            (true, answer)
        }));
    }
    for task in tasks {
        match task.await {
            Ok((open, answer)) => {
                if open {
                    report.accepted += 1;
                } else {
                    report.refused += 1;
                }
                report.answer(answer, 1);
            }
            Err(_) => report.answer("task failed", 1),
        }
    }
    finish(endpoint).await;
    report.elapsed_ms = elapsed_ms(started);
    Ok(report)
}

// ---------------------------------------------------------------------------
// Session takeover

/// Settings of [`session_takeover`].
#[derive(Debug, Clone)]
pub struct TakeoverConfig {
    /// Victims, each with one takeover attempt on its token and one forged token.
    pub attempts: usize,
}

impl Default for TakeoverConfig {
    fn default() -> Self {
        TakeoverConfig { attempts: 10 }
    }
}

/// For each attempt: a victim session is welcomed and stays connected; a
/// second connection says `Hello` with the victim's resume token, and a
/// third with a forged one. A `Resumed` session is accepted (the takeover
/// worked; the answer also says whether the victim was closed), anything
/// else refused.
pub async fn session_takeover(
    target: &Target,
    config: &TakeoverConfig,
) -> Result<AttackReport, AttackError> {
    let started = Instant::now();
    let mut report = AttackReport::new("session-takeover");
    let endpoint = endpoint(target)?;
    for _ in 0..config.attempts {
        let mut victim = match raw_connect(&endpoint, target).await {
            Ok(raw) => raw,
            Err(answer) => {
                report.answer(format!("victim not connected: {answer}"), 1);
                continue;
            }
        };
        let (token, epoch) = match hello(&mut victim, None).await {
            Greeting::Welcome {
                resume_token,
                epoch,
                ..
            } => (resume_token, epoch),
            Greeting::Refused(answer) => {
                report.answer(format!("victim refused: {answer}"), 1);
                continue;
            }
        };
        let forged = format!(
            "{:032x}",
            u128::from(random_tag()) << 64 | u128::from(random_tag())
        );
        for (what, token) in [("stolen", token), ("forged", forged)] {
            report.attempted += 1;
            let mut thief = match raw_connect(&endpoint, target).await {
                Ok(raw) => raw,
                Err(answer) => {
                    report.refused += 1;
                    report.answer(format!("{what}: not connected: {answer}"), 1);
                    continue;
                }
            };
            let resume = Some(Resume {
                token: token.clone(),
                epoch,
            });
            match hello(&mut thief, resume).await {
                Greeting::Welcome {
                    resumed: ResumeOutcome::Resumed,
                    ..
                } => {
                    report.accepted += 1;
                    let victim_fate =
                        match tokio::time::timeout(Duration::from_secs(1), victim.conn.closed())
                            .await
                        {
                            Ok(e) => format!("victim {}", close_answer(&e)),
                            Err(_) => "victim kept".into(),
                        };
                    report.answer(format!("{what}: resumed, {victim_fate}"), 1);
                }
                Greeting::Welcome {
                    resumed: ResumeOutcome::NotResumed { reason },
                    ..
                } => {
                    report.refused += 1;
                    report.answer(format!("{what}: not resumed ({reason})"), 1);
                }
                Greeting::Welcome {
                    resumed: ResumeOutcome::New,
                    ..
                } => {
                    report.refused += 1;
                    report.answer(format!("{what}: new session"), 1);
                }
                Greeting::Refused(answer) => {
                    report.refused += 1;
                    report.answer(format!("{what}: {answer}"), 1);
                }
            }
            thief.conn.close(0u32.into(), b"done");
        }
        victim.conn.close(0u32.into(), b"done");
    }
    finish(endpoint).await;
    report.elapsed_ms = elapsed_ms(started);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_add_up_over_rounds() {
        let mut a = AttackReport::new("x");
        a.attempted = 3;
        a.refused = 3;
        a.answer("close 4 (frame too large)", 3);
        a.answer("nothing", 0);
        let mut b = AttackReport::new("x");
        b.attempted = 2;
        b.accepted = 2;
        b.answer("held open", 2);
        a.merge(&b);
        assert_eq!((a.attempted, a.accepted, a.refused, a.rounds), (5, 2, 3, 2));
        assert_eq!(a.answers.len(), 2, "{:?}", a.answers);
        assert!(a.summary().contains("held open 2"), "{}", a.summary());
    }

    #[test]
    fn quic_headers_are_read_without_panicking() {
        // A v1 Initial: flags, version 1, dcid of 2, scid of 3.
        let initial = [0xc3, 0, 0, 0, 1, 2, 0xaa, 0xbb, 3, 1, 2, 3, 0];
        assert_eq!(initial_dcid(&initial), Some(&[0xaa, 0xbb][..]));
        assert_eq!(long_scid(&initial), Some(&[1, 2, 3][..]));
        assert_eq!(classify_answer(&initial).0, "initial");
        let retry = [0xf0, 0, 0, 0, 1, 1, 9, 0];
        assert_eq!(classify_answer(&retry), ("retry", Some(&[9][..])));
        assert_eq!(classify_answer(&[0x40, 1]).0, "short header");
        assert_eq!(
            classify_answer(&[0x80, 0, 0, 0, 0, 1, 7]).0,
            "version negotiation"
        );
        for short in [&[][..], &[0xc3][..], &[0xc3, 0, 0, 0, 1, 40, 1]] {
            assert_eq!(initial_dcid(short), None);
            let _ = long_scid(short);
            let _ = classify_answer(short);
        }
    }
}
