//! The quicbus server: accept loop, sessions, rooms and graceful shutdown.
//!
//! ```text
//! Endpoint ──accept──▶ session task (one per connection, capped by a semaphore)
//!                         │ control stream: Join / Leave / Resolve
//!                         │ publish streams + datagrams ──▶ Backplane (rooms)
//!                         ◀── room queues (bounded) ◀── fan-out of encoded frames
//! ```
//!
//! Shutdown follows mini-redis: a broadcast (`watch`) tells every session to
//! drain, and a drop-guard channel closes when the last one has finished.

mod access;
pub mod backplane;
mod context;
pub mod history;
mod ingest;
pub mod limits;
pub mod namespaces;
mod outbound;
mod resume;
mod room_ids;
mod session;
mod session_journal;
mod stats;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

pub use backplane::{
    Backplane, BackplaneError, EmbeddedBackplane, RoomSubscriber, SessionId, Subscribed,
};
pub use history::{
    DiskOptions, DiskStore, FsyncPolicy, HistoryError, HistoryLimits, HistoryUsage, MemoryStore,
    RoomLimits,
};
pub use limits::{AddressLimits, ConnectionLimits, Rate};
pub use namespaces::{Namespace, NamespaceError, NamespaceSettings, Namespaces};
pub use outbound::DatagramRing;
pub use session::MAX_HELLO;
pub use session_journal::{FileJournal, SessionDirectory, SessionJournal, StoredSession};
pub use stats::{Limit, Refusal, ServerStats, StatsSnapshot};

use crate::certs::DevCerts;
use crate::sync::lock;
use crate::tls::{self, TlsError, TransportSettings};
use crate::wire::{close_code, DEFAULT_MAX_FRAME};
use context::SessionContext;

/// A client's connection as the server sees it: native QUIC (ALPN
/// `quicbus/1`, a raw session) or a browser's WebTransport session (ALPN
/// `h3`). Both carry the same frames on the same kinds of streams and
/// datagrams; only the session's framing underneath differs.
pub(crate) type Connection = web_transport_quinn::Session;
/// Frames read from one of a [`Connection`]'s streams.
pub(crate) type Reader = crate::wire::FrameReader<web_transport_quinn::RecvStream>;
use limits::{AddressTable, Admit};

/// What a session's publish logs may hold, from the configuration.
fn log_limits(config: &ServerConfig) -> resume::LogLimits {
    resume::LogLimits {
        per_room: PUBLISH_LOG,
        rooms: config.limits.publish_streams,
        entries: config.limits.publish_log_entries,
    }
}

/// Each room's history limits: its namespace's, or the server's default.
fn room_limits(config: &ServerConfig) -> RoomLimits {
    RoomLimits::new(config.history, config.namespaces.history_limits())
}

/// Publish outcomes each session remembers per room, for answering retried
/// publishes; at least the reference client's outbox bound.
const PUBLISH_LOG: usize = 4096;

/// Room ids one connection may hold at most, whatever the configuration.
pub use room_ids::MAX_ROOM_IDS;

/// Over-the-limit connections told `server busy` at once; more are refused
/// without a handshake.
const MAX_REFUSALS_IN_FLIGHT: usize = 32;

/// The Tokio runtime a server runs best on: `worker_threads` 0 means a
/// current-thread runtime (measured fastest on small machines, see the
/// README), N a multi-thread one with N workers.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if worker_threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .enable_all()
            .build()
    }
}

/// Server settings; [`ServerConfig::default`] suits a development machine.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Most connections served at once; more are closed with `server busy`.
    /// A slot is taken only once the QUIC handshake has completed.
    pub max_connections: usize,
    /// Most QUIC handshakes in progress at once, apart from the connection
    /// slots. From a quarter of it on, a client whose address is not yet
    /// validated is sent a Retry first (stateless: a spoofed address holds
    /// nothing); at the bound, new handshakes are refused.
    pub max_handshakes: usize,
    /// Most rooms the server holds.
    pub max_rooms: usize,
    /// Bytes the OS may buffer for the server's UDP socket (`SO_RCVBUF`;
    /// the OS caps it at `net.core.rmem_max`).
    pub udp_receive_buffer: usize,
    /// Reliable events queued per room per connection before `slow consumer`.
    pub reliable_queue: usize,
    /// Bytes of reliable events queued per connection, all its rooms
    /// together, before `slow consumer` (never less than one frame).
    pub reliable_queue_bytes: usize,
    /// Datagrams queued per connection before the oldest are dropped.
    pub datagram_queue: usize,
    /// Largest stream frame body accepted, in bytes.
    pub max_frame: usize,
    /// How long a new connection has to send `Hello`.
    pub handshake_timeout: Duration,
    /// How long shutdown waits for clients to receive accepted events.
    pub shutdown_grace: Duration,
    /// When set, `Hello` must carry exactly this token (compared in
    /// constant time).
    pub token: Option<String>,
    /// Signed tokens: who may connect and what each client may do. Without
    /// a key every client may do everything (or, with `token`, every
    /// client holding the shared token).
    pub auth: AuthConfig,
    /// Per-namespace settings; `history` is the default for the others.
    pub namespaces: Namespaces,
    /// What each connection may hold and do.
    pub limits: ConnectionLimits,
    /// What each client address may do.
    pub address_limits: AddressLimits,
    /// How much history each room keeps for recovery.
    pub history: HistoryLimits,
    /// Most bytes (of encoded events) of history kept across all rooms: in
    /// RAM with [`Storage::Memory`], on disk with [`Storage::Disk`]. Over
    /// it, the oldest events of the largest rooms are dropped first.
    pub history_total_bytes: u64,
    /// How long a session whose connection dropped can be resumed.
    pub resume_window: Duration,
    /// Where history and sessions are kept.
    pub storage: Storage,
    /// QUIC transport settings.
    pub transport: TransportSettings,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            max_connections: 10_000,
            max_handshakes: 256,
            max_rooms: 100_000,
            udp_receive_buffer: 4 * 1024 * 1024,
            reliable_queue: 8192,
            reliable_queue_bytes: 16 * 1024 * 1024,
            datagram_queue: 1024,
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
            token: None,
            auth: AuthConfig::default(),
            namespaces: Namespaces::default(),
            limits: ConnectionLimits::default(),
            address_limits: AddressLimits::default(),
            history: HistoryLimits::default(),
            history_total_bytes: DEFAULT_HISTORY_TOTAL_BYTES,
            resume_window: Duration::from_secs(120),
            storage: Storage::Memory,
            transport: TransportSettings {
                // Clients' publish streams, one per room a client publishes
                // to. quinn keeps an entry per stream it allows, so this
                // limit is memory every connection holds even when idle.
                max_uni_streams: 256,
                // What one connection may have in flight towards us, all
                // streams together, before QUIC flow control holds it back.
                receive_window: Some(4 * 1024 * 1024),
                ..TransportSettings::default()
            },
        }
    }
}

/// How the server checks tokens.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Verifies `Hello`'s token; `None`: no signed tokens.
    pub verifier: Option<crate::auth::token::TokenVerifier>,
    /// With a verifier: clients without a token are let in with the
    /// anonymous permissions (server-wide and per namespace).
    pub allow_anonymous: bool,
}

/// The default budget of history across all rooms: 1 GiB, so that the
/// per-room limit (64 MiB) times many rooms cannot take a machine's memory.
pub const DEFAULT_HISTORY_TOTAL_BYTES: u64 = 1 << 30;

/// Where a server keeps room history and resumable sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In memory: lost with the process (a new epoch on every start). The
    /// library's default, for tests and embedding.
    Memory,
    /// In a data directory (created if needed): a restart on the same
    /// directory keeps history, offsets, the epoch and sessions. The
    /// default of `quicbus serve`.
    Disk { dir: PathBuf, fsync: FsyncPolicy },
}

/// The server's certificate chain and private key.
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    browsers: Option<Arc<tls::BrowserCerts>>,
}

impl ServerIdentity {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(ServerIdentity {
            chain: tls::load_certs(cert)?,
            key: tls::load_key(key)?,
            browsers: None,
        })
    }

    /// Uses freshly generated development certificates held in memory,
    /// with a browser certificate beside them ([`Self::with_browser_cert`]).
    pub fn from_dev_certs(certs: &DevCerts) -> Result<Self, TlsError> {
        ServerIdentity {
            chain: tls::parse_certs(&certs.server_pem)?,
            key: tls::parse_key(&certs.server_key_pem)?,
            browsers: None,
        }
        .with_browser_cert(&[])
    }

    /// Shows browsers (WebTransport) a short-lived self-signed certificate
    /// they pin by its hash, renewed before it expires, instead of the
    /// chain: for development certificates, which browsers cannot be told
    /// to trust. Names: the development ones and `extra_sans`.
    pub fn with_browser_cert(mut self, extra_sans: &[String]) -> Result<Self, TlsError> {
        self.browsers = Some(tls::BrowserCerts::new(extra_sans)?);
        Ok(self)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS material or settings are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The data directory cannot be used.
    #[error("data directory: {0}")]
    Storage(#[from] HistoryError),
}

/// A bound server, ready to [`run`](Server::run) or [`spawn`](Server::spawn).
pub struct Server {
    endpoint: quinn::Endpoint,
    ctx: Arc<SessionContext>,
    browsers: Option<Arc<tls::BrowserCerts>>,
}

impl Server {
    /// Opens the storage `config.storage` names and binds the UDP socket
    /// with the embedded backplane. Call inside a Tokio runtime.
    pub fn bind(config: ServerConfig, identity: ServerIdentity) -> Result<Self, ServerError> {
        match &config.storage {
            Storage::Memory => {
                let store = MemoryStore::new(room_limits(&config));
                let store = Arc::new(store.with_budget(config.history_total_bytes));
                let backplane = Arc::new(EmbeddedBackplane::new(config.max_rooms, store));
                Self::with_backplane(config, identity, backplane)
            }
            Storage::Disk { dir, fsync } => {
                let options = DiskOptions {
                    fsync: *fsync,
                    ..DiskOptions::default()
                };
                let store = DiskStore::open(dir, room_limits(&config), options)?;
                // Trim to the current limits first (a namespace's history
                // may have been shortened since), so the budget does not
                // count what the trim drops anyway.
                history::HistoryStore::maintain(&store, history::now_ms());
                let store = Arc::new(store.with_budget(config.history_total_bytes));
                let backplane = Arc::new(EmbeddedBackplane::new(config.max_rooms, store));
                let (journal, stored) = FileJournal::open(dir)?;
                let sessions = resume::SessionStore::durable(
                    config.resume_window,
                    config.max_connections.saturating_mul(4),
                    log_limits(&config),
                    Box::new(journal),
                    stored,
                    std::time::Instant::now(),
                );
                Self::with_parts(config, identity, backplane, sessions)
            }
        }
    }

    /// Binds the UDP socket as a node of a cluster: the cluster's backplane,
    /// and sessions recorded in `journal` and found in `directory` by every
    /// node, so that a client whose node died resumes on another.
    pub fn with_shared_sessions(
        config: ServerConfig,
        identity: ServerIdentity,
        backplane: Arc<dyn Backplane>,
        journal: Box<dyn SessionJournal>,
        directory: Arc<dyn SessionDirectory>,
    ) -> Result<Self, ServerError> {
        let sessions = resume::SessionStore::shared(
            config.resume_window,
            config.max_connections.saturating_mul(4),
            log_limits(&config),
            journal,
            directory,
        );
        Self::with_parts(config, identity, backplane, sessions)
    }

    /// Binds the UDP socket with the given backplane; sessions are kept in
    /// memory only.
    pub fn with_backplane(
        config: ServerConfig,
        identity: ServerIdentity,
        backplane: Arc<dyn Backplane>,
    ) -> Result<Self, ServerError> {
        let sessions = resume::SessionStore::new(
            config.resume_window,
            config.max_connections.saturating_mul(4),
            log_limits(&config),
        );
        Self::with_parts(config, identity, backplane, sessions)
    }

    fn with_parts(
        config: ServerConfig,
        identity: ServerIdentity,
        backplane: Arc<dyn Backplane>,
        sessions: resume::SessionStore,
    ) -> Result<Self, ServerError> {
        let browsers = identity.browsers;
        let quic = tls::server_config(
            identity.chain,
            identity.key,
            browsers.clone(),
            &config.transport,
        )?;
        let bind_error = |source| ServerError::Bind {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_error)?;
        // Every client's packets land in this one socket: the OS default
        // (about 208 KB on Linux) overflows with a thousand clients and
        // drops what QUIC must then retransmit. The OS caps the request
        // (`net.core.rmem_max`); a smaller buffer only costs drops.
        if let Err(e) =
            socket2::SockRef::from(&socket).set_recv_buffer_size(config.udp_receive_buffer)
        {
            tracing::warn!("cannot set the UDP receive buffer: {e}");
        }
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(quic),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        Ok(Server {
            endpoint,
            ctx: Arc::new(SessionContext {
                backplane,
                sessions,
                addresses: std::sync::Mutex::new(AddressTable::new(config.address_limits.clone())),
                config: Arc::new(config),
                stats: Arc::new(ServerStats::default()),
            }),
            browsers,
        })
    }

    /// The address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap_or(self.ctx.config.listen)
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.ctx.stats.clone()
    }

    /// The certificate browsers are shown, if not the chain (see
    /// [`ServerIdentity::with_browser_cert`]): its hash is what a page pins.
    pub fn browser_certs(&self) -> Option<Arc<tls::BrowserCerts>> {
        self.browsers.clone()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: stops
    /// accepting connections and events, delivers every accepted reliable
    /// event (within the grace period), and closes each client with
    /// `server shutting down`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let ctx = self.ctx;
        let endpoint = self.endpoint;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let limit = Arc::new(Semaphore::new(ctx.config.max_connections));
        let max_handshakes = ctx.config.max_handshakes.max(1);
        let handshakes = Arc::new(Semaphore::new(max_handshakes));
        let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
        // Names this server process in session ids (echo suppression).
        let node = rand::random::<u64>();
        let mut next_session: u64 = 1;
        let maintenance = tokio::spawn(maintain(ctx.clone()));
        let renewal = self
            .browsers
            .map(|certs| tokio::spawn(renew_browser_certs(certs)));
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                _ = &mut shutdown => break,
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            if limit.available_permits() == 0 {
                refuse_busy(incoming, &ctx, &refusals);
                continue;
            }
            // Under load, make the client prove its address first: a Retry
            // is stateless, so a spoofed flood holds nothing here.
            let in_flight = max_handshakes - handshakes.available_permits();
            if !incoming.remote_address_validated() && in_flight >= max_handshakes / 4 {
                ctx.stats.handshakes_retried.fetch_add(1, Ordering::Relaxed);
                if incoming.retry().is_err() {
                    tracing::debug!("could not send a Retry");
                }
                continue;
            }
            let validated = incoming.remote_address_validated();
            let ip = incoming.remote_address().ip();
            let admit = lock(&ctx.addresses).admit(ip, validated, std::time::Instant::now());
            match admit {
                Admit::Accept => {}
                Admit::Retry => {
                    ctx.stats.handshakes_retried.fetch_add(1, Ordering::Relaxed);
                    if incoming.retry().is_err() {
                        tracing::debug!("could not send a Retry");
                    }
                    continue;
                }
                Admit::Refuse => {
                    ctx.stats.limit_hit(Limit::HandshakeRatePerIp);
                    incoming.refuse();
                    continue;
                }
            }
            let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                ctx.stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                incoming.refuse();
                continue;
            };
            let session = SessionId {
                node,
                connection: next_session,
            };
            next_session += 1;
            let (ctx, stop_rx, done) = (ctx.clone(), stop_rx.clone(), done_tx.clone());
            let limit = limit.clone();
            tokio::spawn(async move {
                let connecting = match incoming.accept() {
                    Ok(connecting) => connecting,
                    Err(e) => {
                        tracing::debug!("handshake refused: {e}");
                        return;
                    }
                };
                let handshake_timeout = ctx.config.handshake_timeout;
                let conn = match tokio::time::timeout(handshake_timeout, connecting).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => {
                        tracing::debug!("handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        ctx.stats
                            .handshakes_timed_out
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                drop(handshake);
                // The handshake proved the address: count it there.
                let ip = conn.remote_address().ip();
                if !lock(&ctx.addresses).connect(ip, std::time::Instant::now()) {
                    ctx.stats.limit_hit(Limit::ConnectionsPerIp);
                    let max = ctx.config.address_limits.connections;
                    let reason =
                        format!("server busy: connection limit of {max} per address reached");
                    conn.close(close_code::SERVER_BUSY.into(), reason.as_bytes());
                    return;
                }
                // A connection slot only for a completed handshake.
                let Ok(permit) = limit.try_acquire_owned() else {
                    lock(&ctx.addresses).disconnect(ip);
                    ctx.stats
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    let max = ctx.config.max_connections;
                    let reason = format!("server busy: connection limit of {max} reached");
                    conn.close(close_code::SERVER_BUSY.into(), reason.as_bytes());
                    return;
                };
                ctx.stats
                    .connections_accepted
                    .fetch_add(1, Ordering::Relaxed);
                ctx.stats.active_sessions.fetch_add(1, Ordering::Relaxed);
                match open_session(conn, handshake_timeout).await {
                    Ok(conn) => session::run(conn, session, ctx.clone(), stop_rx).await,
                    Err(e) => tracing::debug!("WebTransport session refused: {e}"),
                }
                lock(&ctx.addresses).disconnect(ip);
                ctx.stats.active_sessions.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
                drop(done);
            });
        }

        tracing::info!("shutting down");
        endpoint.set_server_config(None);
        ctx.backplane.close();
        let _ = stop_tx.send(true);
        drop(done_tx);
        let wait = ctx.config.shutdown_grace + Duration::from_secs(1);
        if tokio::time::timeout(wait, done_rx.recv()).await.is_err() {
            tracing::warn!("sessions still running after the grace period; closing them");
        }
        endpoint.close(
            close_code::SERVER_SHUTTING_DOWN.into(),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        maintenance.abort();
        if let Some(renewal) = renewal {
            renewal.abort();
        }
        // A graceful stop leaves the publish logs checkpointed and, with a
        // disk store, every stored event synced, whatever the fsync policy.
        let _ = tokio::task::spawn_blocking(move || {
            ctx.sessions.checkpoint();
            ctx.backplane.sync();
        })
        .await;
    }

    /// Runs the server in a background task.
    pub fn spawn(self) -> ServerHandle {
        let addr = self.local_addr();
        let stats = self.stats();
        let browsers = self.browser_certs();
        let (trigger, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async move {
            let _ = stop.await;
        }));
        ServerHandle {
            addr,
            stats,
            browsers,
            trigger,
            task,
        }
    }
}

/// The path of the WebTransport URL browsers open
/// (`https://HOST:PORT/quicbus`); a session for any other path is answered
/// 404.
pub const WEB_PATH: &str = "/quicbus";

/// The session a handshaken connection carries: a native one as it is; a
/// browser's (ALPN `h3`) after its HTTP/3 settings and its WebTransport
/// CONNECT for [`WEB_PATH`], within `timeout`.
async fn open_session(conn: quinn::Connection, timeout: Duration) -> Result<Connection, String> {
    if !is_webtransport(&conn) {
        return Ok(web_transport_quinn::Session::raw(conn));
    }
    let accept = async {
        let request = web_transport_quinn::Request::accept(conn)
            .await
            .map_err(|e| e.to_string())?;
        let path = request.url.path().to_string();
        if path != WEB_PATH {
            // Held until the browser has read the answer and closed (the
            // caller's timeout bounds the wait): dropping the connection
            // at once would cut the answer off.
            let conn = request.conn().clone();
            let _ = request
                .reject(web_transport_quinn::http::StatusCode::NOT_FOUND)
                .await;
            conn.closed().await;
            return Err(format!("a session for {path}, not {WEB_PATH}"));
        }
        request.ok().await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, accept)
        .await
        .map_err(|_| format!("no WebTransport CONNECT within {timeout:?}"))?
}

/// Whether the client chose HTTP/3 (a browser's WebTransport) in the TLS
/// handshake rather than `quicbus/1`.
fn is_webtransport(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|alpn| alpn == web_transport_quinn::ALPN.as_bytes())
}

/// Renews the browser certificate before it expires (checked every
/// minute: it lives for days).
async fn renew_browser_certs(certs: Arc<tls::BrowserCerts>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match certs.renew_if_due(std::time::SystemTime::now()) {
            Ok(true) => tracing::info!(
                sha256 = %hex(&certs.sha256()),
                "new browser certificate"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!("cannot renew the browser certificate: {e}"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses a connection because every slot is taken: after a handshake,
/// with `server busy` and the limit, but only a few at a time; beyond that a
/// flood is refused before any TLS work.
fn refuse_busy(incoming: quinn::Incoming, ctx: &Arc<SessionContext>, refusals: &Arc<Semaphore>) {
    ctx.stats
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
    let Ok(refusing) = refusals.clone().try_acquire_owned() else {
        incoming.refuse();
        return;
    };
    let max = ctx.config.max_connections;
    let timeout = ctx.config.handshake_timeout;
    tokio::spawn(async move {
        if let Ok(Ok(conn)) = tokio::time::timeout(timeout, incoming).await {
            let reason = format!("server busy: connection limit of {max} reached");
            conn.close(close_code::SERVER_BUSY.into(), reason.as_bytes());
        }
        drop(refusing);
    });
}

/// Once a second, off the async threads (it may delete, write and sync
/// files): applies the history bounds and the fsync policy, checkpoints
/// the publish logs of the sessions, and reads the history's size and
/// budget drops into the stats.
async fn maintain(ctx: Arc<SessionContext>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut budget_drops = 0;
    loop {
        tick.tick().await;
        lock(&ctx.addresses).sweep(std::time::Instant::now());
        let task = ctx.clone();
        let usage = tokio::task::spawn_blocking(move || {
            task.sessions.checkpoint();
            task.backplane.maintain();
            task.backplane.history_usage()
        })
        .await;
        if let Ok(usage) = usage {
            ctx.stats
                .history_bytes
                .store(usage.bytes, Ordering::Relaxed);
            let new = usage.budget_drops.saturating_sub(budget_drops);
            ctx.stats.limit_hits(Limit::HistoryBudget, new);
            budget_drops = usage.budget_drops;
        }
    }
}

/// A server running in the background; dropping it also shuts it down.
pub struct ServerHandle {
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    browsers: Option<Arc<tls::BrowserCerts>>,
    trigger: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate browsers are shown, if not the chain.
    pub fn browser_certs(&self) -> Option<Arc<tls::BrowserCerts>> {
        self.browsers.clone()
    }

    /// Live counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Shuts down gracefully and waits until it is done.
    pub async fn shutdown(self) {
        let _ = self.trigger.send(());
        let _ = self.task.await;
    }
}
