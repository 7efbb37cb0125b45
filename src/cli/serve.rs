//! `quicbus serve` and `quicbus certs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use quicbus::auth::token::TokenVerifier;
use quicbus::certs::{self, CertPaths};
use quicbus::server::backplane::cluster::{ClusterBackplane, ClusterConfig, StreamSettings};
use quicbus::server::backplane::Backplane;
use quicbus::server::{
    AddressLimits, AuthConfig, ConnectionLimits, FsyncPolicy, HistoryLimits, Rate, Server,
    ServerConfig, ServerIdentity, Storage,
};

use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Settings from this TOML file (see quicbus.example.toml): any flag
    /// below by its long name, plus [anonymous] and [namespaces.NAME].
    /// Flags given here override the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Serve Prometheus metrics over HTTP on this TCP address (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Serve browsers over HTTP on this TCP address: the JavaScript client
    /// and where to open the WebTransport session, with the browser
    /// certificate's hash (GET /cert-hash). Browsers use the same UDP port
    /// as native clients.
    #[arg(long, value_name = "ADDR")]
    web: Option<SocketAddr>,
    /// Directory of the development certificates (created on first run).
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// A real certificate chain (PEM) instead of the development one.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Most connections served at once.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Most QUIC handshakes in progress at once (apart from connections);
    /// from a quarter of it on, clients must first answer a Retry.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_handshakes: u32,
    /// Reliable events queued per room per connection before a client is a slow consumer.
    #[arg(long, default_value_t = 8192)]
    reliable_queue: usize,
    /// Bytes of reliable events queued per connection, all rooms together,
    /// before a client is a slow consumer.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    reliable_queue_bytes: usize,
    /// Datagrams queued per connection before the oldest are dropped.
    #[arg(long, default_value_t = 1024)]
    datagram_queue: usize,
    /// Largest stream frame (one event with its name) accepted, in bytes.
    #[arg(long, default_value_t = quicbus::wire::DEFAULT_MAX_FRAME as u32, value_parser = clap::value_parser!(u32).range(1024..))]
    max_frame: u32,
    /// Bytes the OS may buffer for the server's UDP socket (capped by
    /// net.core.rmem_max); too small, and a busy server drops packets.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    udp_receive_buffer: usize,
    /// Most rooms held; when full, rooms nobody subscribes to are evicted.
    #[arg(long, default_value_t = 100_000)]
    max_rooms: usize,
    /// Reliable events each room keeps for recovery.
    #[arg(long, default_value_t = 10_000)]
    history_events: usize,
    /// Seconds each room keeps events for recovery.
    #[arg(long, default_value_t = 120)]
    history_seconds: u64,
    /// Bytes (of encoded events) each room keeps for recovery.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    history_bytes: usize,
    /// Bytes (of encoded events) of history kept across all rooms: in RAM
    /// with --memory, on disk otherwise. Over it, the oldest events of the
    /// largest rooms are dropped first, and clients recovering from before
    /// them are told so.
    #[arg(long, default_value_t = quicbus::server::DEFAULT_HISTORY_TOTAL_BYTES)]
    history_total_bytes: u64,
    /// Data directory: room history, the epoch and resumable sessions live
    /// here, so a restart (or a crash) on the same directory loses nothing
    /// that was acknowledged. Created on first run.
    #[arg(long, default_value = "data", conflicts_with = "memory")]
    data: PathBuf,
    /// Keep history and sessions in memory only: a restart loses them
    /// (clients are told `EpochChanged`).
    #[arg(long)]
    memory: bool,
    /// When stored events are forced to the disk: `always` (after every
    /// event; survives power loss, costs a disk flush per event),
    /// `interval` (once a second; a power loss may cost the last second)
    /// or `never` (the OS decides). A crash of the process alone loses
    /// nothing in any mode: every event is handed to the OS before it is
    /// acknowledged.
    #[arg(long, default_value = "interval")]
    fsync: FsyncPolicy,
    /// Seconds a session whose connection dropped can be resumed.
    #[arg(long, default_value_t = 120)]
    resume_window: u64,
    /// Require clients to present this token (from the environment, it
    /// stays out of `ps`). Compared in constant time.
    #[arg(
        long,
        env = "QUICBUS_SERVER_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// Require clients to present the token in this file (its first line).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    auth: AuthArgs,
    /// Tokio worker threads; 0 runs everything on one thread (lowest latency
    /// on small machines, see README).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// Rooms one client may publish reliable events to at once (one QUIC
    /// stream each). Each allowed stream costs every connection a little
    /// memory, idle or not.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_publish_rooms: u32,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Several nodes, one bus (README: "Running a cluster").
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Run as a node of the cluster on this NATS (with JetStream):
    /// `nats://HOST:PORT`, comma-separated or repeated for several NATS
    /// servers. History lives in a JetStream stream then, not in --data.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,
    /// This node's name (logs, NATS connection name); the listen address
    /// if not given.
    #[arg(long, value_name = "NAME", requires = "cluster")]
    node: Option<String>,
    /// Subject prefix and stream name of this bus on NATS, so that several
    /// buses can share one NATS.
    #[arg(long, default_value = "quicbus", requires = "cluster")]
    cluster_prefix: String,
    /// Copies of the event stream a NATS cluster keeps (1 for one NATS server).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5), requires = "cluster")]
    cluster_replicas: u8,
}

/// Signed tokens (README: "Security").
#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    /// Require a signed token (JWT, HS256) in every `Hello`, verified with
    /// the secret in this file (its bytes, one trailing newline dropped).
    #[arg(long, value_name = "FILE", conflicts_with = "auth_public_key")]
    auth_secret_file: Option<PathBuf>,
    /// Require a signed token (JWT, ES256 or RS256) in every `Hello`,
    /// verified with this PEM public key.
    #[arg(long, value_name = "PEM")]
    auth_public_key: Option<PathBuf>,
    /// With --auth-secret-file or --auth-public-key: let clients without a
    /// token in, with the anonymous permissions of the config file.
    #[arg(long)]
    allow_anonymous: bool,
    /// Seconds of clock difference tolerated on a token's exp and nbf.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    auth_leeway: u64,
}

impl AuthArgs {
    /// The token checks these flags ask for.
    fn config(&self) -> Result<AuthConfig, String> {
        let verifier = match (&self.auth_secret_file, &self.auth_public_key) {
            (Some(path), _) => {
                let secret = super::token::read_secret(path).map_err(|e| e.to_string())?;
                TokenVerifier::hs256(&secret)
                    .map_err(|e| format!("--auth-secret-file {}: {e}", path.display()))?
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("--auth-public-key {}: {e}", path.display()))?;
                TokenVerifier::from_public_key_pem(&pem)
                    .map_err(|e| format!("--auth-public-key {}: {e}", path.display()))?
            }
            (None, None) if self.allow_anonymous => {
                return Err(
                    "--allow-anonymous needs --auth-secret-file or --auth-public-key".into(),
                )
            }
            (None, None) => return Ok(AuthConfig::default()),
        };
        Ok(AuthConfig {
            verifier: Some(verifier.with_leeway(self.auth_leeway)),
            allow_anonymous: self.allow_anonymous,
        })
    }

    fn enabled(&self) -> bool {
        self.auth_secret_file.is_some() || self.auth_public_key.is_some()
    }
}

/// Limits per client address and per connection (README: "Limits and defences").
#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    /// Connections at once from one IP address (IPv6: one /64); 0 = no limit.
    #[arg(long, default_value_t = 1024)]
    max_connections_per_ip: usize,
    /// Completed handshakes per second from one IP address (bursts of five
    /// times as many); 0 = no limit.
    #[arg(long, default_value_t = 200.0)]
    handshake_rate_per_ip: f64,
    /// Refused `Hello`s (wrong token) per second from one IP address
    /// (bursts of ten times as many) before it is refused unheard.
    #[arg(long, default_value_t = 1.0)]
    failed_hello_rate: f64,
    /// Rooms one connection may have joined at once.
    #[arg(long, default_value_t = 1024)]
    max_joined_rooms: usize,
    /// Rooms all connections from one IP address may have joined at once
    /// (0 = no limit), so that no one client fills the room table.
    #[arg(long, default_value_t = 16_384)]
    max_joined_rooms_per_ip: usize,
    /// Room names one connection may have resolved or joined (at most 65536).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_room_names: u32,
    /// Publish outcomes one session remembers across its rooms, for
    /// answering retried publishes.
    #[arg(long, default_value_t = 16_384)]
    publish_log_entries: usize,
    /// Control requests (join, leave, resolve, ping) per second per
    /// connection (bursts of four times as many); 0 = no limit.
    #[arg(long, default_value_t = 500.0)]
    control_rate: f64,
    /// Publishes (reliable and datagram) per second per connection; 0 = no limit.
    #[arg(long, default_value_t = 50_000.0)]
    publish_rate: f64,
    /// Seconds a frame may stay half-sent before its connection is closed.
    #[arg(long, default_value_t = 10)]
    frame_timeout: u64,
    /// Bytes of partly received frames one connection may hold.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    partial_frame_bytes: usize,
    /// Bytes one connection may have in flight to the server, all streams
    /// together (QUIC's connection receive window).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    receive_window: u64,
}

impl LimitArgs {
    fn apply(&self, config: &mut ServerConfig) {
        let rate = |per_second: f64, burst: f64| Rate {
            per_second,
            burst: per_second * burst,
        };
        config.address_limits = AddressLimits {
            connections: self.max_connections_per_ip,
            handshake_rate: rate(self.handshake_rate_per_ip, 5.0),
            failed_hello_rate: rate(self.failed_hello_rate, 10.0),
            rooms_joined: self.max_joined_rooms_per_ip,
        };
        config.limits = ConnectionLimits {
            rooms_joined: self.max_joined_rooms,
            room_names: self.max_room_names as usize,
            publish_log_entries: self.publish_log_entries,
            control_rate: rate(self.control_rate, 4.0),
            publish_rate: rate(self.publish_rate, 1.0),
            frame_timeout: std::time::Duration::from_secs(self.frame_timeout),
            partial_frame_bytes: self.partial_frame_bytes,
            ..config.limits.clone()
        };
        config.transport.receive_window = Some(self.receive_window);
    }
}

/// The shared token, from the flag, `QUICBUS_SERVER_TOKEN` or a file.
fn shared_token(args: &ServeArgs) -> Result<Option<String>, String> {
    let Some(path) = &args.token_file else {
        return Ok(args.token.clone());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(format!(
            "--token-file {}: the file holds no token",
            path.display()
        ));
    }
    Ok(Some(token.to_string()))
}

pub fn serve(args: ServeArgs) -> CliResult {
    let runtime = quicbus::server::runtime(args.worker_threads)?;
    runtime.block_on(run_server(args))
}

async fn run_server(args: ServeArgs) -> CliResult {
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => ServerIdentity::from_pem_files(cert, key)?,
        _ => {
            let (paths, created) = certs::ensure_dev_certs(&args.certs)?;
            if created {
                eprintln!(
                    "created development certificates in {} (clients trust {})",
                    args.certs.display(),
                    paths.ca.display()
                );
            }
            // Browsers cannot be told to trust the development CA: they
            // pin a short-lived certificate by its hash (`--web` serves it).
            ServerIdentity::from_pem_files(&paths.server, &paths.server_key)?
                .with_browser_cert(&[])?
        }
    };
    let token = shared_token(&args)?;
    if token.is_some() && args.auth.enabled() {
        return Err("--token (or --token-file, or QUICBUS_SERVER_TOKEN in the environment) and signed tokens (--auth-*) do not go together".into());
    }
    let auth = args.auth.config()?;
    let mut config = ServerConfig {
        listen: args.listen,
        max_connections: args.max_connections,
        max_handshakes: args.max_handshakes as usize,
        reliable_queue: args.reliable_queue,
        reliable_queue_bytes: args.reliable_queue_bytes,
        datagram_queue: args.datagram_queue,
        token,
        auth,
        max_frame: args.max_frame as usize,
        max_rooms: args.max_rooms,
        udp_receive_buffer: args.udp_receive_buffer,
        history: HistoryLimits {
            max_events: args.history_events,
            max_age: std::time::Duration::from_secs(args.history_seconds),
            max_bytes: args.history_bytes,
        },
        history_total_bytes: args.history_total_bytes,
        storage: if args.memory {
            Storage::Memory
        } else {
            Storage::Disk {
                dir: args.data.clone(),
                fsync: args.fsync,
            }
        },
        resume_window: std::time::Duration::from_secs(args.resume_window),
        transport: quicbus::tls::TransportSettings {
            max_uni_streams: args.max_publish_rooms,
            ..ServerConfig::default().transport
        },
        ..ServerConfig::default()
    };
    args.limits.apply(&mut config);
    // Namespaces and the anonymous permissions come from the file only
    // (`main` has checked it already); the flags' history is the default.
    let sections = match &args.config {
        Some(path) => super::config::ConfigFile::load(path)?.sections,
        None => super::config::Sections::default(),
    };
    config.namespaces = sections.namespaces(config.history)?;
    if sections.grants_anonymous() && !config.auth.allow_anonymous {
        eprintln!(
            "note: the config's anonymous permissions apply only with signed tokens (auth-*) and allow-anonymous; they are unused now"
        );
    }
    config.limits.publish_streams = args.max_publish_rooms as usize;
    let clustered = !args.cluster.cluster.is_empty();
    let fresh = !clustered && !args.memory && !args.data.join("epoch").exists();
    let mut cluster = None;
    let server = if clustered {
        let backplane = join_cluster(&args, &config).await?;
        cluster = Some(backplane.clone());
        let sessions = backplane
            .shared_sessions(config.resume_window)
            .await
            .map_err(|e| format!("--cluster: {e}"))?;
        Server::with_shared_sessions(
            config,
            identity,
            backplane,
            Box::new(sessions.clone()),
            std::sync::Arc::new(sessions),
        )?
    } else {
        Server::bind(config, identity)?
    };
    if !args.memory && !clustered {
        let what = if fresh {
            "created data directory"
        } else {
            "data directory"
        };
        eprintln!(
            "{what} {} (history, epoch and sessions survive restarts)",
            args.data.display()
        );
    }
    let stats = server.stats();
    // Stops when dropped, with the server.
    let _metrics = match args.metrics {
        Some(addr) => {
            let metrics = quicbus::metrics::serve_node(addr, stats.clone(), cluster).await?;
            eprintln!("quicbus metrics on {}", metrics.url());
            Some(metrics)
        }
        None => None,
    };
    let _web = match args.web {
        Some(addr) => {
            let config = quicbus::web::WebConfig {
                quic: server.local_addr(),
                browsers: server.browser_certs(),
                demo: None,
            };
            let web = quicbus::web::serve(addr, config).await?;
            eprintln!("quicbus web pages on {}", web.url());
            Some(web)
        }
        None => None,
    };
    // Installed before saying we listen, so an early SIGTERM is graceful too.
    let stop = super::stop_signal()?;
    eprintln!(
        "quicbus listening on {} (Ctrl-C to stop)",
        server.local_addr()
    );
    server
        .run(async {
            stop.await;
            // A second Ctrl-C during the graceful shutdown stops at once.
            tokio::spawn(async {
                let _ = tokio::signal::ctrl_c().await;
                std::process::exit(130);
            });
        })
        .await;
    let s = stats.snapshot();
    eprintln!(
        "stopped: {} connections, {} reliable events, {} datagrams ({} dropped), {} slow consumers, {} protocol errors",
        s.connections_accepted,
        s.events_published,
        s.datagrams_published,
        s.datagrams_dropped,
        s.slow_consumers,
        s.protocol_errors
    );
    Ok(())
}

/// Connects this node to the cluster's NATS and stream.
async fn join_cluster(
    args: &ServeArgs,
    config: &ServerConfig,
) -> Result<std::sync::Arc<ClusterBackplane>, String> {
    let cluster = &args.cluster;
    let node = cluster
        .node
        .clone()
        .unwrap_or_else(|| args.listen.to_string());
    if config.namespaces.has_own_history() {
        eprintln!(
            "note: with --cluster every room keeps the default history (--history-*); namespaces' own history limits are not applied"
        );
    }
    let history = config.history;
    // A retried publish must be recognised for as long as its session can
    // be resumed; JetStream wants the window within the age limit.
    let mut duplicate_window = config.resume_window.max(std::time::Duration::from_secs(1));
    if !history.max_age.is_zero() {
        duplicate_window = duplicate_window.min(history.max_age);
    }
    let settings = ClusterConfig {
        urls: cluster.cluster.clone(),
        node: node.clone(),
        prefix: cluster.cluster_prefix.clone(),
        stream: StreamSettings {
            replicas: cluster.cluster_replicas as usize,
            max_events_per_room: history.max_events as u64,
            max_age: history.max_age,
            max_bytes: config.history_total_bytes,
            duplicate_window,
        },
        ack_timeout: std::time::Duration::from_secs(2),
        max_rooms: config.max_rooms,
    };
    let backplane = ClusterBackplane::connect(settings)
        .await
        .map_err(|e| format!("--cluster: {e}"))?;
    eprintln!(
        "node {node} joined the cluster on {} (stream {}_EVENTS, epoch {:x})",
        cluster.cluster.join(","),
        cluster
            .cluster_prefix
            .to_ascii_uppercase()
            .replace('-', "_"),
        backplane.epoch()
    );
    Ok(std::sync::Arc::new(backplane))
}

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Directory to write ca.pem, ca.key, server.pem and server.key into.
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Extra subject alternative name (DNS name or IP) for the server certificate; repeatable.
    #[arg(long)]
    san: Vec<String>,
    /// Replace certificates that already exist.
    #[arg(long)]
    force: bool,
}

pub fn certs(args: CertsArgs) -> CliResult {
    let existing = CertPaths::in_dir(&args.dir);
    if !args.force && (existing.ca.exists() || existing.server_files_exist()) {
        return Err(format!(
            "certificates already exist in {} (use --force to replace them; clients trusting the old CA would then fail)",
            args.dir.display()
        )
        .into());
    }
    let paths = certs::write_dev_certs(&args.dir, &args.san)?;
    println!("CA certificate:     {}", paths.ca.display());
    println!("CA key:             {}", paths.ca_key.display());
    println!("server certificate: {}", paths.server.display());
    println!("server key:         {}", paths.server_key.display());
    let mut sans: Vec<String> = certs::DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    sans.extend(args.san.iter().cloned());
    println!("server names:       {}", sans.join(", "));
    Ok(())
}
