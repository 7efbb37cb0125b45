//! The `server_session` harness: one raw QUIC connection per input to a
//! real server, doing what the input says on the control stream, on
//! publish streams and with datagrams, while a well-behaved client (the
//! bystander) shares the server.
//!
//! The server, the bystander and the runtime are started once per process
//! and kept (a fuzzer runs millions of inputs; a server per input would
//! measure start-up). So rooms and their history carry over between
//! inputs, within the server's small limits, as they would in production.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, Instant};

use super::Choices;
use crate::certs;
use crate::client::{Client, ClientOptions, Trust};
use crate::server::{
    AddressLimits, ConnectionLimits, HistoryLimits, Rate, Server, ServerConfig, ServerHandle,
    ServerIdentity, Storage,
};
use crate::sync::lock;
use crate::tls::{self, TransportSettings};
use crate::wire::{
    self, close_code, validate_name, Frame, FrameKind, FrameReader, ReadFrameError, Resume,
    PROTOCOL_VERSION,
};

/// Operations per input, at most.
const MAX_OPS: usize = 64;
/// Publish streams one input may open.
const MAX_PUBLISH_STREAMS: usize = 8;
/// Bytes one input may send, all paths together.
const MAX_BYTES_SENT: usize = 64 * 1024;
/// The server's frame limit: small, so inputs cross it.
const MAX_FRAME: usize = 2048;
/// Longest name an input makes: over `MAX_NAME_LEN`, under `MAX_FRAME`.
const MAX_NAME: usize = 400;
/// The key the server checks signed tokens with.
const SECRET: &[u8] = b"fuzzing secret, not a real one";

/// The signed token inputs present in `Hello` and `Refresh`: some rooms
/// allowed, others not, so inputs meet every permission check.
fn token() -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let lists = |rooms: &[&str]| rooms.iter().map(|r| r.to_string()).collect();
            let request = crate::auth::token::TokenRequest {
                user: "fuzz".into(),
                permissions: crate::auth::PermissionLists {
                    publish: lists(&["lobby", BYSTANDER_ROOM]),
                    subscribe: lists(&["lobby", "chat", BYSTANDER_ROOM]),
                    history: lists(&["lobby"]),
                },
                ttl: 24 * 3600,
            };
            let now = crate::auth::token::unix_now();
            crate::auth::token::mint_hs256(SECRET, &request, now).unwrap_or_default()
        })
        .clone()
}
/// The room the bystander joins and publishes to; inputs may use it too.
const BYSTANDER_ROOM: &str = "bystander";
/// Names inputs pick from besides made-up ones, so they meet again.
const ROOMS: [&str; 4] = ["lobby", "chat", BYSTANDER_ROOM, "x"];
/// Longest wait for anything the server should do promptly; longer is a hang.
const WAIT: Duration = Duration::from_secs(10);
/// Longest one input may take, everything included.
const INPUT_LIMIT: Duration = Duration::from_secs(60);
/// Sessions running when no input is: the bystander's.
const BASELINE_SESSIONS: u64 = 1;

/// Panics anywhere in the process. A panicking server task does not reach
/// the harness (tokio catches it), so the harness counts panics instead.
static PANICS: AtomicU64 = AtomicU64::new(0);

static HARNESS: OnceLock<Harness> = OnceLock::new();

/// Runs one input against the shared server (started on first use) and
/// checks that:
/// - nothing in the process panics;
/// - the server answers a clean control stream's `Ping` (or closes the
///   connection) in time, and only ever sends well-formed frames of the
///   right kind on each path, with offsets rising on each event stream;
/// - the bystander gets its ping and its acked emit answered, without
///   having been disconnected;
/// - once the input's connection is closed, its session ends (the count
///   of running sessions is back to the bystander's alone).
///
/// Inputs run one at a time, whichever thread calls. Panics on a failure.
pub fn server_session(data: &[u8]) {
    let harness = HARNESS.get_or_init(Harness::start);
    let _one_at_a_time = lock(&harness.one_at_a_time);
    let panics = PANICS.load(Ordering::SeqCst);
    let outcome = harness
        .runtime
        .block_on(async { timeout(INPUT_LIMIT, harness.run(data)).await });
    if outcome.is_err() {
        panic!("the input took over {INPUT_LIMIT:?}: something hangs");
    }
    let now = PANICS.load(Ordering::SeqCst);
    assert_eq!(
        now, panics,
        "a task panicked while the server handled this input (message above)"
    );
}

/// What lives as long as the process: a server, its bystander client, and
/// the runtime that drives them (a current-thread one: it runs only while
/// an input runs, so between inputs nothing moves).
struct Harness {
    runtime: Runtime,
    server: ServerHandle,
    /// The endpoint the inputs' connections are made from.
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    bystander: Client,
    one_at_a_time: Mutex<()>,
}

impl Harness {
    fn start() -> Self {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
        let runtime = crate::server::runtime(0).expect("fuzz harness: a runtime");
        let certs = certs::generate(&[]).expect("fuzz harness: certificates");
        let identity = ServerIdentity::from_dev_certs(&certs).expect("fuzz harness: identity");
        let roots = tls::parse_certs(&certs.ca_pem).expect("fuzz harness: CA");
        let client_config = tls::client_config(&roots, &TransportSettings::default())
            .expect("fuzz harness: client config");
        let (server, endpoint, bystander) = runtime.block_on(async {
            let server = Server::bind(server_config(), identity)
                .expect("fuzz harness: bind the server")
                .spawn();
            let endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into())
                .expect("fuzz harness: client endpoint");
            let mut options = ClientOptions::new(server.local_addr());
            options.trust = Trust::CaPem(certs.ca_pem.clone());
            options.token = Some(token());
            options.client_name = "bystander".into();
            let (bystander, mut events) = Client::connect(options)
                .await
                .expect("fuzz harness: connect the bystander");
            bystander
                .join(BYSTANDER_ROOM)
                .await
                .expect("fuzz harness: the bystander joins its room");
            // Inputs may publish to its room: read it, or its queue fills.
            tokio::spawn(async move { while events.next().await.is_some() {} });
            (server, endpoint, bystander)
        });
        Harness {
            runtime,
            server,
            endpoint,
            client_config,
            bystander,
            one_at_a_time: Mutex::new(()),
        }
    }

    async fn run(&self, data: &[u8]) {
        let mut choices = Choices::new(data);
        let opening = choices.below(6);
        let close = match choices.below(4) {
            0 | 1 => close_code::NORMAL,
            2 => close_code::PROTOCOL_VIOLATION,
            _ => choices.byte().into(),
        };
        let connecting = self
            .endpoint
            .connect_with(
                self.client_config.clone(),
                self.server.local_addr(),
                "localhost",
            )
            .expect("the input's connection: connect");
        let conn = within("the QUIC handshake", connecting)
            .await
            .expect("the input's connection: QUIC handshake");
        let mut peer = Peer::open(conn).await;
        peer.open_session(opening, &mut choices).await;
        for _ in 0..MAX_OPS {
            if choices.is_empty() || peer.sent >= MAX_BYTES_SENT || peer.is_closed() {
                break;
            }
            peer.step(&mut choices).await;
        }
        // While the input's connection still holds whatever it left
        // half-done, the server must go on serving others.
        self.check_bystander().await;
        if let Err(failure) = peer.close(close).await {
            panic!("{failure}");
        }
        self.sessions_back_to_baseline().await;
    }

    async fn check_bystander(&self) {
        match within("the bystander's ping", self.bystander.ping()).await {
            Ok(_) => {}
            Err(e) => panic!("the bystander's ping failed: {e}"),
        }
        let emit = self
            .bystander
            .emit_with_ack(BYSTANDER_ROOM, "check", &b"still served"[..]);
        if let Err(e) = within("the bystander's acked emit", emit).await {
            panic!("the bystander's acked emit failed: {e}");
        }
        let reconnects = self.bystander.stats().reconnects;
        assert_eq!(reconnects, 0, "the bystander was disconnected");
    }

    /// Waits for the input's session to end. The server tells no one when
    /// a session ends, so this polls its counter, often, within [`WAIT`].
    async fn sessions_back_to_baseline(&self) {
        let deadline = Instant::now() + WAIT;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            let active = self.server.stats().active_sessions;
            if active == BASELINE_SESSIONS {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{active} sessions still running {WAIT:?} after the input's connection \
                 closed (expected {BASELINE_SESSIONS}): a session outlives its connection"
            );
            tick.tick().await;
        }
    }
}

fn server_config() -> ServerConfig {
    let mut config = ServerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        max_connections: 8,
        max_rooms: 32,
        reliable_queue: 64,
        reliable_queue_bytes: 64 * 1024,
        datagram_queue: 16,
        max_frame: MAX_FRAME,
        handshake_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(1),
        auth: crate::server::AuthConfig {
            verifier: crate::auth::token::TokenVerifier::hs256(SECRET).ok(),
            allow_anonymous: false,
        },
        history: HistoryLimits {
            max_events: 32,
            max_age: Duration::from_secs(60),
            max_bytes: 64 * 1024,
        },
        resume_window: Duration::from_secs(2),
        storage: Storage::Memory,
        // Small per-connection limits, so inputs reach them; none per
        // address, because every input comes from 127.0.0.1 and a locked
        // out address would hide the session from the fuzzer.
        limits: ConnectionLimits {
            rooms_joined: 8,
            room_names: 16,
            publish_streams: 4,
            publish_log_entries: 64,
            control_rate: Rate {
                per_second: 200.0,
                burst: 50.0,
            },
            publish_rate: Rate {
                per_second: 500.0,
                burst: 100.0,
            },
            rate_strikes: 8,
            frame_timeout: Duration::from_secs(1),
            partial_frame_bytes: 2 * MAX_FRAME,
        },
        address_limits: AddressLimits {
            connections: 0,
            handshake_rate: Rate::UNLIMITED,
            failed_hello_rate: Rate::UNLIMITED,
            rooms_joined: 0,
        },
        ..ServerConfig::default()
    };
    config.transport.max_uni_streams = 16;
    config
}

/// Awaits `fut`, panicking if it takes over [`WAIT`]: the server hangs.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what} took over {WAIT:?}: the server hangs"),
    }
}

/// A publish stream an input opened.
struct PublishStream {
    send: SendStream,
    /// The id of the last `Publish` sent on it.
    last_id: u64,
}

/// The input's side of its connection, and the tasks reading what the
/// server sends it.
struct Peer {
    conn: Connection,
    control: SendStream,
    /// Only well-formed frames went on the control stream, after a `Hello`
    /// with the right token: a `Ping` there must be answered.
    control_clean: bool,
    streams: Vec<PublishStream>,
    pongs: mpsc::UnboundedReceiver<u64>,
    readers: Vec<JoinHandle<Result<(), String>>>,
    sent: usize,
    /// The next request id of the harness's own pings.
    next_ping: u64,
}

impl Peer {
    async fn open(conn: Connection) -> Self {
        let (control, control_recv) = within("opening the control stream", conn.open_bi())
            .await
            .expect("the input's connection: control stream");
        let (pongs_tx, pongs) = mpsc::unbounded_channel();
        let readers = vec![
            tokio::spawn(read_control(control_recv, pongs_tx)),
            tokio::spawn(read_event_streams(conn.clone())),
            tokio::spawn(read_datagrams(conn.clone())),
        ];
        Peer {
            conn,
            control,
            control_clean: false,
            streams: Vec::new(),
            pongs,
            readers,
            sent: 0,
            next_ping: u64::MAX - (1 << 32),
        }
    }

    fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Starts the control stream as the input chooses: a valid `Hello`, one
    /// that resumes a made-up session, one with made-up fields, raw bytes,
    /// or nothing (the first control operation then meets the handshake).
    async fn open_session(&mut self, opening: usize, choices: &mut Choices<'_>) {
        let hello = |resume, copies| Frame::Hello {
            version: PROTOCOL_VERSION,
            token: Some(token()),
            client_name: "fuzz".into(),
            resume,
            copies,
        };
        let frame = match opening {
            0 | 1 => hello(None, choices.flag()),
            2 => {
                let resume = Resume {
                    token: choices.text(64),
                    epoch: choices.number(),
                };
                hello(Some(resume), choices.flag())
            }
            3 => Frame::Hello {
                version: choices.number() as u32,
                token: choices.flag().then(|| choices.text(64)),
                client_name: choices.text(MAX_NAME),
                resume: None,
                copies: choices.flag(),
            },
            4 => {
                let raw = choices.bytes(256);
                self.send_control(raw).await;
                return;
            }
            _ => return,
        };
        self.control_clean = opening <= 2;
        self.send_control(&wire::encode_framed(&frame)).await;
    }

    /// One operation.
    async fn step(&mut self, choices: &mut Choices<'_>) {
        match choices.below(13) {
            0 => {
                let frame = control_frame(choices);
                self.send_control(&wire::encode_framed(&frame)).await;
            }
            1 => {
                self.control_clean = false;
                let raw = choices.bytes(512);
                self.send_control(raw).await;
            }
            2 => self.open_publish_stream(choices).await,
            3 => {
                if let Some(i) = self.pick_stream(choices) {
                    let frame = publish_frame(&mut self.streams[i].last_id, choices);
                    self.send_on_stream(i, &wire::encode_framed(&frame)).await;
                }
            }
            4 => {
                if let Some(i) = self.pick_stream(choices) {
                    let raw = choices.bytes(512);
                    self.send_on_stream(i, raw).await;
                }
            }
            5 => {
                if let Some(i) = self.pick_stream(choices) {
                    // Finishing twice is the caller's mistake, not the server's.
                    let _ = self.streams[i].send.finish();
                }
            }
            6 => {
                if let Some(i) = self.pick_stream(choices) {
                    let code = VarInt::from_u32(choices.byte().into());
                    let _ = self.streams[i].send.reset(code);
                }
            }
            7..=9 => {
                let datagram = datagram(choices);
                self.sent += datagram.len();
                // Too large or not allowed: the server never sees it, fine.
                let _ = self.conn.send_datagram(datagram);
            }
            10 => self.sync().await,
            11 => {
                for _ in 0..choices.below(16) {
                    tokio::task::yield_now().await;
                }
            }
            _ => {
                // The control stream ends: the server closes the connection.
                let _ = self.control.finish();
            }
        }
    }

    async fn open_publish_stream(&mut self, choices: &mut Choices<'_>) {
        if self.streams.len() >= MAX_PUBLISH_STREAMS {
            return;
        }
        let Ok(send) = within("opening a publish stream", self.conn.open_uni()).await else {
            return;
        };
        self.streams.push(PublishStream { send, last_id: 0 });
        let i = self.streams.len() - 1;
        if choices.flag() {
            let header = Frame::PublishStream {
                room: room_name(choices),
            };
            self.send_on_stream(i, &wire::encode_framed(&header)).await;
        }
    }

    fn pick_stream(&self, choices: &mut Choices<'_>) -> Option<usize> {
        let i = choices.below(self.streams.len());
        (i < self.streams.len()).then_some(i)
    }

    async fn send_control(&mut self, bytes: &[u8]) {
        self.sent += bytes.len();
        // A closed stream or connection is the server's answer to an input.
        let _ = within("a control stream write", self.control.write_all(bytes)).await;
    }

    async fn send_on_stream(&mut self, i: usize, bytes: &[u8]) {
        self.sent += bytes.len();
        let send = &mut self.streams[i].send;
        let _ = within("a publish stream write", send.write_all(bytes)).await;
    }

    /// Sends a `Ping` and, if the control stream is clean, waits for its
    /// `Pong` (or for the server to close the connection): every control
    /// frame before it has then been handled.
    async fn sync(&mut self) {
        let request = self.next_ping;
        self.next_ping += 1;
        self.send_control(&wire::encode_framed(&Frame::Ping { request }))
            .await;
        if !self.control_clean {
            return;
        }
        let conn = self.conn.clone();
        let pongs = &mut self.pongs;
        let pong = async {
            while let Some(answered) = pongs.recv().await {
                if answered == request {
                    return;
                }
            }
        };
        within("the Pong to a Ping on a clean control stream", async {
            tokio::select! {
                () = pong => {}
                _ = conn.closed() => {}
            }
        })
        .await;
    }

    /// Closes the connection and waits for the readers: the first thing
    /// the server sent wrong, if anything.
    async fn close(self, code: u32) -> Result<(), String> {
        self.conn.close(code.into(), b"input done");
        for reader in self.readers {
            match within("the readers to end after the close", reader).await {
                Ok(Ok(())) => {}
                Ok(Err(failure)) => return Err(failure),
                Err(e) => return Err(format!("a reader task failed: {e}")),
            }
        }
        Ok(())
    }
}

/// A well-formed frame for the control stream: mostly a client control
/// request, now and then a frame that belongs elsewhere.
fn control_frame(choices: &mut Choices<'_>) -> Frame {
    let request = choices.number();
    match choices.below(8) {
        0 | 1 => Frame::Join {
            request,
            room: room_name(choices),
            echo: Some(choices.flag()),
            since: choices.flag().then(|| choices.number()),
        },
        2 => Frame::Leave {
            request,
            room_id: room_id(choices),
        },
        3 => Frame::Resolve {
            request,
            room: room_name(choices),
        },
        4 => Frame::Ping { request },
        5 if choices.flag() => Frame::Pong { request },
        5 => Frame::Refresh {
            request,
            token: if choices.flag() {
                token()
            } else {
                choices.text(64)
            },
        },
        6 => Frame::PublishStream {
            room: room_name(choices),
        },
        _ => Frame::Hello {
            version: PROTOCOL_VERSION,
            token: Some(token()),
            client_name: choices.text(16),
            resume: None,
            copies: choices.flag(),
        },
    }
}

/// A frame for a publish stream: mostly a `Publish` whose id follows the
/// last one, repeats it, or is made up; now and then another frame.
fn publish_frame(last_id: &mut u64, choices: &mut Choices<'_>) -> Frame {
    let id = match choices.below(4) {
        0 | 1 => last_id.wrapping_add(1),
        2 => *last_id,
        _ => choices.number(),
    };
    *last_id = id;
    match choices.below(8) {
        0 => Frame::PublishStream {
            room: room_name(choices),
        },
        1 => Frame::Join {
            request: choices.number(),
            room: room_name(choices),
            echo: None,
            since: None,
        },
        _ => Frame::Publish {
            id,
            event: event_name(choices),
            payload: payload(choices, MAX_FRAME + 256),
            ack: choices.flag().then(|| choices.number()),
        },
    }
}

/// A client datagram: `PublishDatagram`, `PublishCopy` or raw bytes.
fn datagram(choices: &mut Choices<'_>) -> Bytes {
    match choices.below(3) {
        0 => wire::encode(&Frame::PublishDatagram {
            room_id: room_id(choices),
            event: event_name(choices),
            payload: payload(choices, 1300),
        }),
        1 => wire::encode(&Frame::PublishCopy {
            room_id: room_id(choices),
            id: choices.number(),
            event: event_name(choices),
            payload: payload(choices, wire::MAX_COPY_BYTES + 16),
            ack: choices.flag().then(|| choices.number()),
            pad: payload(choices, 1200),
        }),
        _ => Bytes::copy_from_slice(choices.bytes(1300)),
    }
}

/// One of the usual rooms, or a made-up name (empty and too long included).
fn room_name(choices: &mut Choices<'_>) -> String {
    match choices.below(8) {
        i @ 0..=3 => ROOMS[i].to_string(),
        _ => choices.text(MAX_NAME),
    }
}

fn event_name(choices: &mut Choices<'_>) -> String {
    if choices.flag() {
        "e".into()
    } else {
        choices.text(MAX_NAME)
    }
}

/// A room id: the server hands out 1, 2, 3… per connection.
fn room_id(choices: &mut Choices<'_>) -> u32 {
    match choices.below(8) {
        7 => u32::MAX,
        n => n as u32,
    }
}

/// A payload of input-chosen length: its bytes do not matter to the
/// server, so they cost the input one byte, not their length.
fn payload(choices: &mut Choices<'_>, max: usize) -> Bytes {
    let len = choices.len(max);
    Bytes::from(vec![choices.byte(); len])
}

/// The decoding error in a read error; `None` when the connection or the
/// stream went away instead (normal at the end of an input).
fn malformed(e: ReadFrameError) -> Option<wire::WireError> {
    match e {
        ReadFrameError::Wire(e) => Some(e),
        // The client never leaves a frame half-sent to the reader.
        ReadFrameError::Read(_) | ReadFrameError::Stalled(_) => None,
    }
}

/// Reads the control stream: `Welcome` or `Reject` first, then only
/// server control frames; reports each `Pong`.
async fn read_control(recv: RecvStream, pongs: mpsc::UnboundedSender<u64>) -> Result<(), String> {
    let mut reader = FrameReader::new(recv, wire::DEFAULT_MAX_FRAME);
    let mut first = true;
    loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) => {
                return match malformed(e) {
                    Some(e) => Err(format!("the server sent a malformed control frame: {e}")),
                    None => Ok(()),
                }
            }
        };
        let fits = match &frame {
            Frame::Welcome { .. } | Frame::Reject { .. } => first,
            other => !first && other.kind() == FrameKind::ServerControl,
        };
        if !fits {
            return Err(format!(
                "the server sent {} as control frame {}",
                brief(&frame),
                if first { "one" } else { "two or later" }
            ));
        }
        match frame {
            Frame::Pong { request }
            // Over the control rate, a Ping is answered with this refusal.
            | Frame::Error {
                request: Some(request),
                code: wire::ErrorCode::RateLimited,
                ..
            } => {
                let _ = pongs.send(request);
            }
            _ => {}
        }
        first = false;
    }
}

/// Accepts the streams the server opens and checks each.
async fn read_event_streams(conn: Connection) -> Result<(), String> {
    let mut streams = JoinSet::new();
    while let Ok(recv) = conn.accept_uni().await {
        streams.spawn(read_event_stream(recv));
    }
    while let Some(checked) = streams.join_next().await {
        checked.map_err(|e| format!("an event stream reader failed: {e}"))??;
    }
    Ok(())
}

/// One server-opened stream: an `EventStream` header with a valid room
/// name, then `Event` frames with valid names and rising offsets.
async fn read_event_stream(recv: RecvStream) -> Result<(), String> {
    let mut reader = FrameReader::new(recv, wire::DEFAULT_MAX_FRAME);
    let mut last_offset = None;
    loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) => {
                return match malformed(e) {
                    Some(e) => Err(format!("the server sent a malformed event stream: {e}")),
                    None => Ok(()),
                }
            }
        };
        let fits = match (&frame, last_offset) {
            (Frame::EventStream { room, .. }, None) => validate_name("room", room).is_ok(),
            (Frame::Event { offset, event, .. }, Some(last)) => {
                *offset > last && validate_name("event", event).is_ok()
            }
            _ => false,
        };
        if !fits {
            return Err(format!(
                "the server sent {} on an event stream after offset {last_offset:?}",
                brief(&frame)
            ));
        }
        last_offset = Some(match frame {
            Frame::Event { offset, .. } => offset,
            _ => 0,
        });
    }
}

/// Every datagram the server sends must be a server datagram.
async fn read_datagrams(conn: Connection) -> Result<(), String> {
    while let Ok(bytes) = conn.read_datagram().await {
        match wire::decode(&bytes) {
            Ok(frame) if frame.kind() == FrameKind::ServerDatagram => {}
            Ok(frame) => return Err(format!("the server sent {} as a datagram", brief(&frame))),
            Err(e) => return Err(format!("the server sent a malformed datagram: {e}")),
        }
    }
    Ok(())
}

/// A frame for a failure message: its fields, cut short (a pad or a
/// payload can be a kilobyte of zeros).
fn brief(frame: &Frame) -> String {
    let mut text = format!("{frame:?}");
    if let Some((cut, _)) = text.char_indices().nth(200) {
        text.truncate(cut);
        text.push('…');
    }
    text
}
