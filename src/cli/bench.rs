//! `quicbus bench latency`, `fanout`, `replay`, `storage`, `soak` and
//! `attack`: arguments,
//! the terminal table, `--json` and `--plot`. The measuring is in
//! `crate::bench` (beside the CLI in the binary, not in the library).

use std::path::PathBuf;
use std::time::Duration;

use crate::bench::cluster::ClusterOptions;
use crate::bench::fanout::{FanoutConfig, FanoutRow};
use crate::bench::latency::{
    AuthMode, Kind, LatencyConfig, LatencyRow, Scenario, AUTH_P50_LIMIT, CLUSTER_RELAY, NATS_RELAY,
};
use crate::bench::replay::{Fill, ReplayConfig, ReplayRow};
use crate::bench::soak::{AttackKind, SoakConfig, SoakReport};
use crate::bench::storage::{StorageConfig, StorageRow};
use crate::bench::{machine, plot, write_json, Progress, StorageKind};
use clap::{Subcommand, ValueEnum};
use quicbus::server::FsyncPolicy;

use super::CliResult;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Relay and one-way latency, reliable vs datagram, clean and under loss.
    Latency(LatencyArgs),
    /// One publisher to N subscribers: events/s, loss, p99, server CPU and memory.
    Fanout(FanoutArgs),
    /// A late joiner replaying a room's stored history from a durable
    /// server; the time to open a data directory and the server's memory.
    Replay(ReplayArgs),
    /// The time of one append to the disk store under each fsync policy.
    Storage(StorageArgs),
    /// Many clients joining, publishing, leaving and reconnecting for a set
    /// time: server memory over time, errors, delivery; with --attack, the
    /// attacks of issue 9 in the second half and a bystander's relay p99
    /// clean vs under attack.
    Soak(SoakArgs),
    /// The targets of issue 9 ("Hostile clients"), each against a fresh
    /// server while its attack runs: a bystander's connect and publish
    /// under a handshake flood, its join and publish under a room flood,
    /// and the server's memory held by half-sent frames and partial Hellos.
    Attack(AttackArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    Relay,
    Oneway,
    Loss,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StorageArg {
    /// History on disk, fsync `interval` (`serve`'s default).
    Disk,
    /// History in memory (`serve --memory`).
    Memory,
}

impl From<StorageArg> for StorageKind {
    fn from(arg: StorageArg) -> Self {
        match arg {
            StorageArg::Disk => StorageKind::Disk,
            StorageArg::Memory => StorageKind::Memory,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AuthArg {
    /// No token checks (`serve` without `--auth-*`).
    Off,
    /// HS256 tokens (`serve --auth-secret-file`), each client with a token
    /// allowing what it does.
    On,
}

impl From<AuthArg> for AuthMode {
    fn from(arg: AuthArg) -> Self {
        match arg {
            AuthArg::Off => AuthMode::Off,
            AuthArg::On => AuthMode::On,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FsyncArg {
    Always,
    Interval,
    Never,
}

impl From<FsyncArg> for FsyncPolicy {
    fn from(arg: FsyncArg) -> Self {
        match arg {
            FsyncArg::Always => FsyncPolicy::Always,
            FsyncArg::Interval => FsyncPolicy::default(),
            FsyncArg::Never => FsyncPolicy::Never,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeliveryArg {
    Reliable,
    Datagram,
    /// Reliable and datagram.
    Both,
    /// Reliable with datagram copies.
    Copies,
}

/// Output options shared by both benchmarks.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Write the results as a JSON array, one object per row.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the results to an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

/// How to start the bench's cluster, if `--cluster` asks for one.
fn cluster_options(
    cluster: bool,
    nats_server: Option<&PathBuf>,
    worker_threads: usize,
) -> Result<Option<ClusterOptions>, String> {
    if !cluster {
        return Ok(None);
    }
    let mut options = ClusterOptions::new(server_exe()?);
    if let Some(path) = nats_server {
        options.nats_server = path.clone();
    }
    options.worker_threads = worker_threads;
    Ok(Some(options))
}

#[derive(Debug, clap::Args)]
pub struct LatencyArgs {
    /// Measured messages per scenario and delivery.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    samples: u64,
    /// Unmeasured messages first.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    warmup: u64,
    /// Payload bytes (8 to 1100: one datagram).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=1100))]
    size: u64,
    /// Which scenarios; a comma-separated list.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    scenario: Vec<ScenarioArg>,
    /// Loss levels of the `loss` scenario, percent per packet and direction.
    #[arg(long, value_delimiter = ',', default_value = "0,1,5")]
    loss: Vec<f64>,
    /// Delay netsim adds to each packet in each direction, ms.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_ms)]
    delay: f64,
    /// Each packet's delay varies within delay ± jitter, ms.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_ms)]
    jitter: f64,
    /// Send at this many messages per second instead of one in flight.
    #[arg(long, value_parser = super::positive_hz)]
    rate: Option<f64>,
    /// A datagram not back after this many ms counts as lost (default 5 ms
    /// plus twice the added delay and jitter of the path).
    #[arg(long, value_parser = non_negative_ms)]
    loss_timeout: Option<f64>,
    /// Server worker threads; 0 = one current-thread runtime (as `serve`).
    #[arg(long, default_value_t = 0)]
    server_threads: usize,
    /// Seed of netsim's random decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip the runs of reliable events with datagram copies.
    #[arg(long)]
    no_copies: bool,
    /// Where the server keeps history; a comma-separated list. Default:
    /// disk,memory for the relay (durable beside in-memory, taken moments
    /// apart), disk for oneway and loss. A list given applies to every
    /// scenario.
    #[arg(long, value_enum, value_delimiter = ',')]
    storage: Option<Vec<StorageArg>>,
    /// Whether the server checks signed tokens; a comma-separated list.
    /// `off,on` measures both, taking turns as storages do, and compares
    /// them.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "off")]
    auth: Vec<AuthArg>,
    /// Also measure across a cluster: the bench starts its own nats-server
    /// (JetStream, a free loopback port, a scratch store) and two `serve
    /// --cluster` nodes, and adds, after the single-node rows, a core-NATS
    /// relay (`nats-relay`) and the relay across the nodes
    /// (`cluster-relay`, reliable and datagram; sender on node-2, bouncer
    /// on node-1), with the check "cross-node reliable p50 <= core-NATS
    /// relay p50 + 2 x single-node relay p50". Cluster rows run on loopback
    /// at 0% loss only (--loss, --delay and --jitter do not apply to them),
    /// without datagram copies and without token checks; --samples,
    /// --warmup, --size, --rate, --loss-timeout and --server-threads do
    /// apply.
    #[arg(long)]
    cluster: bool,
    /// The nats-server executable for --cluster (default: the first of
    /// /usr/sbin, /usr/bin, /usr/local/bin, else the PATH).
    #[arg(long, value_name = "PATH", requires = "cluster")]
    nats_server: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Subscriber counts; a comma-separated list, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    subscribers: Vec<u64>,
    /// Which delivery to run.
    #[arg(long, value_enum, default_value = "both")]
    delivery: DeliveryArg,
    /// Events published per run (default: aims at 2,000,000 deliveries).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    events: Option<u64>,
    /// Payload bytes (16 to 1100).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(16..=1100))]
    size: u64,
    /// `serve --worker-threads` of the measured server.
    #[arg(long, default_value_t = 0)]
    server_threads: usize,
    /// Worker threads of the publisher and subscribers; 0 = one thread.
    #[arg(long, default_value_t = 0)]
    client_threads: usize,
    /// Longest one run may take, seconds.
    #[arg(long, default_value_t = 120.0, value_parser = super::positive_secs)]
    run_limit: f64,
    /// Serve with history in memory (`serve --memory`) instead of on disk.
    #[arg(long)]
    memory: bool,
    /// Also run across a cluster: each run again on three `serve
    /// --cluster` nodes of the bench's own nats-server (JetStream, a free
    /// loopback port, a scratch store, fresh for each run), rows
    /// `cluster-fanout-1xN` with history in JetStream; the publisher on
    /// node-1, the subscribers round-robin over the three. CPU and memory
    /// per connection are the nodes' sums (not nats-server's). The plot
    /// shows the single-node runs.
    #[arg(long)]
    cluster: bool,
    /// The nats-server executable for --cluster (default: the first of
    /// /usr/sbin, /usr/bin, /usr/local/bin, else the PATH).
    #[arg(long, value_name = "PATH", requires = "cluster")]
    nats_server: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Events stored and replayed.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    events: u64,
    /// Store events until the data directory holds this much instead of
    /// --events: a number of bytes with an optional K, M or G (powers of
    /// 1024), e.g. 1G.
    #[arg(long, value_parser = byte_size, conflicts_with = "events")]
    bytes: Option<u64>,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=65_536))]
    size: u64,
    /// `serve --worker-threads` of the measured server.
    #[arg(long, default_value_t = 0)]
    server_threads: usize,
    /// Longest the replay may take, seconds.
    #[arg(long, default_value_t = 300.0, value_parser = super::positive_secs)]
    run_limit: f64,
    /// Drop the page cache before the server opens the data directory, so
    /// that it (and the replay) read from the device (needs root).
    #[arg(long)]
    cold: bool,
    /// Write the results as a JSON array (one object).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct StorageArgs {
    /// Appends per fsync policy (enough for `interval` to sync a few times:
    /// the store syncs once a second).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    events: u64,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=65_536))]
    size: u64,
    /// The fsync policies measured; a comma-separated list.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "always,interval,never"
    )]
    fsync: Vec<FsyncArg>,
    /// Longest one policy may append, seconds; it then reports the appends
    /// made (`always` may need it on a slow disk).
    #[arg(long, default_value_t = 10.0, value_parser = super::positive_secs)]
    run_limit: f64,
    /// Write the results as a JSON array, one object per policy.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AttackArg {
    /// 2,500 QUIC Initials from one socket, never followed up.
    HandshakeFlood,
    /// One connection joining and resolving 100,000 rooms.
    RoomFlood,
    /// 20 rooms × 64 MB of 1 MB reliable events.
    HistoryHog,
    /// 100 publish streams each holding half of a 1 MB frame.
    HalfSentFrames,
    /// 40 connections each sending part of a 1 MiB Hello.
    PartialHellos,
    /// Resuming with another live client's token, and a forged one.
    SessionTakeover,
}

impl From<AttackArg> for AttackKind {
    fn from(arg: AttackArg) -> Self {
        match arg {
            AttackArg::HandshakeFlood => AttackKind::HandshakeFlood,
            AttackArg::RoomFlood => AttackKind::RoomFlood,
            AttackArg::HistoryHog => AttackKind::HistoryHog,
            AttackArg::HalfSentFrames => AttackKind::HalfSentFrames,
            AttackArg::PartialHellos => AttackKind::PartialHellos,
            AttackArg::SessionTakeover => AttackKind::SessionTakeover,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Well-behaved clients (sharing a UDP socket per eight).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    clients: u64,
    /// The whole run, warm-up included: e.g. 60s, 5m.
    #[arg(long, default_value = "60s", value_parser = duration)]
    duration: Duration,
    /// From the start to the memory baseline.
    #[arg(long, default_value = "10s", value_parser = duration)]
    warmup: Duration,
    /// Run the attacks of issue 9 in the second half after warm-up.
    #[arg(long)]
    attack: bool,
    /// Which attacks --attack runs; a comma-separated list (default: all).
    #[arg(long, value_enum, value_delimiter = ',', requires = "attack")]
    attacks: Option<Vec<AttackArg>>,
    /// Size of the attacks: 1 is the full size (2,500 Initials, 100,000
    /// rooms, 20 × 64 MB, 100 half-sent frames, 40 partial Hellos).
    #[arg(long, default_value_t = 1.0)]
    attack_scale: f64,
    /// Rooms the clients share (default: one per five clients).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rooms: Option<u64>,
    /// Rooms each client is in.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=256))]
    rooms_per_client: u64,
    /// Each client publishes a reliable event (with ack) this often.
    #[arg(long, default_value = "4s", value_parser = duration)]
    reliable_every: Duration,
    /// Each client sends a datagram this often.
    #[arg(long, default_value = "2s", value_parser = duration)]
    datagram_every: Duration,
    /// Each client leaves a room and rejoins it (from its last offset) this often.
    #[arg(long, default_value = "15s", value_parser = duration)]
    churn_every: Duration,
    /// Each client closes its session and opens a new one this often.
    #[arg(long, default_value = "30s", value_parser = duration)]
    renew_every: Duration,
    /// Every N-th client is behind a flaky path that goes dark now and
    /// then, so it loses its connection and resumes (0: none).
    #[arg(long, default_value_t = 10)]
    flaky_every: usize,
    /// An argument for the measured `serve` (repeatable), e.g.
    /// --serve-arg=--max-connections=20000. Every client of the bench
    /// comes from 127.0.0.1, so per-IP limits need to be generous.
    #[arg(long = "serve-arg", value_name = "ARG", allow_hyphen_values = true)]
    serve_args: Vec<String>,
    /// Serve with history in memory (`serve --memory`) instead of on disk.
    #[arg(long)]
    memory: bool,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, clap::Args)]
pub struct AttackArgs {
    /// Which attacks; a comma-separated list (default: handshake-flood,
    /// room-flood, half-sent-frames, partial-hellos).
    #[arg(long, value_enum, value_delimiter = ',')]
    attacks: Option<Vec<AttackArg>>,
    /// Size of the attacks: 1 is the full size (2,500 Initials, 100,000
    /// rooms, 100 half-sent frames, 40 partial Hellos).
    #[arg(long, default_value_t = 1.0)]
    attack_scale: f64,
    /// How long half-sent frames and partial Hellos are held (default:
    /// 20 s and 10 s, past the server's frame timeout).
    #[arg(long, value_parser = duration)]
    hold: Option<Duration>,
    /// An argument for the measured `serve` (repeatable).
    #[arg(long = "serve-arg", value_name = "ARG", allow_hyphen_values = true)]
    serve_args: Vec<String>,
    /// Serve with history in memory (`serve --memory`) instead of on disk.
    #[arg(long)]
    memory: bool,
    /// Write the results as a JSON array (one object).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

/// `60s`, `500ms`, `2m`, `1h` or plain seconds as a duration.
fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: expected e.g. 60s, 500ms or 5m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "'{s}' is not a duration: expected e.g. 60s, 500ms or 5m"
            ))
        }
    };
    if seconds.is_finite() && (0.0..=86_400.0).contains(&seconds) {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!("'{s}' must be from 0 to 24 hours"))
    }
}

/// `1234`, `64K`, `512M`, `1G` (powers of 1024) as bytes.
fn byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => {
            return Err(format!(
                "'{s}' is not a size: expected e.g. 1048576, 512M or 1G"
            ))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size: expected e.g. 1048576, 512M or 1G"))?;
    match n.checked_mul(scale) {
        Some(bytes) if (1..=1 << 40).contains(&bytes) => Ok(bytes),
        _ => Err(format!("'{s}' must be from 1 byte to 1T")),
    }
}

fn non_negative_ms(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() && (0.0..=3_600_000.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("'{s}' must be from 0 to 3600000 milliseconds"))
    }
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v / 1000.0)
}

pub fn bench(command: BenchCommand) -> CliResult {
    match command {
        BenchCommand::Latency(a) => latency(a),
        BenchCommand::Fanout(a) => fanout(a),
        BenchCommand::Replay(a) => replay(a),
        BenchCommand::Storage(a) => storage(a),
        BenchCommand::Soak(a) => soak(a),
        BenchCommand::Attack(a) => attack(a),
    }
}

fn attack(args: AttackArgs) -> CliResult {
    use crate::bench::attack_targets::{self, AttackTargetsConfig};
    let config = AttackTargetsConfig {
        attacks: match &args.attacks {
            Some(list) => list.iter().map(|&a| AttackKind::from(a)).collect(),
            None => attack_targets::TARGETED.to_vec(),
        },
        attack_scale: args.attack_scale,
        hold: args.hold,
        serve_args: args.serve_args.clone(),
        storage: if args.memory {
            StorageKind::Memory
        } else {
            StorageKind::Disk
        },
        ..AttackTargetsConfig::new(server_exe()?)
    };
    config.validate()?;
    let progress = Progress::new(!args.quiet);
    let report = attack_targets::run(&config, &progress)?;
    println!("{}", report.table());
    let output = OutputArgs {
        json: args.json,
        plot: None,
        quiet: args.quiet,
    };
    write_outputs(&output, &[report], |_| Ok(()))
}

fn soak(args: SoakArgs) -> CliResult {
    let clients = usize::try_from(args.clients)?;
    let rooms_per_client = usize::try_from(args.rooms_per_client)?;
    let rooms = match args.rooms {
        Some(n) => usize::try_from(n)?,
        None => (clients / 5).max(rooms_per_client),
    };
    let config = SoakConfig {
        clients,
        rooms,
        rooms_per_client,
        duration: args.duration,
        warmup: args.warmup,
        attack: args.attack,
        attacks: match &args.attacks {
            Some(list) => list.iter().map(|&a| AttackKind::from(a)).collect(),
            None => AttackKind::ALL.to_vec(),
        },
        attack_scale: args.attack_scale,
        reliable_every: args.reliable_every,
        datagram_every: args.datagram_every,
        churn_every: args.churn_every,
        renew_every: args.renew_every,
        flaky_every: args.flaky_every,
        serve_args: args.serve_args.clone(),
        storage: if args.memory {
            StorageKind::Memory
        } else {
            StorageKind::Disk
        },
        ..SoakConfig::new(server_exe()?)
    };
    config.validate()?;
    let progress = Progress::new(!args.output.quiet);
    let report = crate::bench::soak::run(&config, &progress)?;
    let title = format!(
        "quicbus soak: {} clients, {} rooms × {} each, {:?} (warm-up {:?}), history {}{}",
        clients,
        rooms,
        rooms_per_client,
        args.duration,
        args.warmup,
        if args.memory { "in memory" } else { "on disk" },
        if args.attack {
            ", attacks in the second half"
        } else {
            ""
        }
    );
    println!("{title}\nmachine: {}\n", machine());
    print_soak(&report);
    let rows = [report];
    write_outputs(&args.output, &rows, |path| {
        crate::bench::soak::plot::soak_svg(path, &rows, &title)
    })?;
    let r = &rows[0];
    if !(r.errors_ok && r.delivery_complete) {
        return Err(format!(
            "the soak failed: {} errors, delivery {}",
            r.errors,
            if r.delivery_complete {
                "complete"
            } else {
                "incomplete"
            }
        )
        .into());
    }
    Ok(())
}

fn print_soak(r: &SoakReport) {
    let mb = |b: u64| b as f64 / 1e6;
    let verdict = |ok: bool| if ok { "ok" } else { "FAILED" };
    println!("errors        {} ({})", r.errors, verdict(r.errors_ok));
    for e in &r.error_samples {
        println!("              {e}");
    }
    println!(
        "reliable      {} published, {} delivered, {} missing, {} duplicates, {} out of order ({})",
        r.reliable_published,
        r.reliable_delivered,
        r.reliable_missing,
        r.reliable_duplicates,
        r.reliable_out_of_order,
        if r.delivery_complete {
            "complete"
        } else {
            "INCOMPLETE"
        }
    );
    println!(
        "datagrams     {} sent, {} not sent while disconnected, {} received, {} lost ({:.2}%)",
        r.datagrams_sent,
        r.datagrams_unsent,
        r.datagrams_received,
        r.datagrams_lost,
        r.datagram_loss_pct
    );
    println!(
        "churn         {} joins, {} rejoins ({} events replayed), {} new sessions, {} outages: {} disconnects, {} resumes, {} retries",
        r.joins, r.rejoins, r.replayed, r.renewals, r.outages, r.disconnects, r.resumes, r.retries
    );
    println!(
        "server RSS    {:.1} MB after warm-up, {:.1} MB at the end ({:+.1}%), peak {:.1} MB{}",
        mb(r.rss_warmup_bytes),
        mb(r.rss_end_bytes),
        r.rss_growth_pct,
        mb(r.rss_peak_bytes),
        if r.attack {
            String::new()
        } else {
            format!(" ({})", verdict(r.rss_growth_ok))
        }
    );
    if r.attack {
        println!(
            "              {:.1} MB at the end of the clean phase ({:+.1}%: {})",
            mb(r.rss_clean_end_bytes),
            r.rss_clean_growth_pct,
            verdict(r.rss_growth_ok)
        );
    }
    println!(
        "              {:+.1}% over the second half of the clean phase",
        r.rss_settled_growth_pct
    );
    println!(
        "server CPU    {:.2} s; {} connections tried again",
        r.server_cpu_s, r.connect_retries
    );
    for why in &r.connect_retry_samples {
        println!("              {why}");
    }
    println!(
        "\n{:<22} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "relay (bystander)", "p50µs", "p90µs", "p99µs", "p99.9µs", "maxµs"
    );
    let row = |name: &str, p: &crate::bench::Percentiles| {
        println!(
            "{:<22} {:>9} {:>8} {:>8} {:>9} {:>9}",
            name, p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us
        );
    };
    row("clean", &r.relay_clean);
    if let Some(attack) = &r.relay_attack {
        row("under attack", attack);
    }
    println!(
        "raw UDP echo           {:>9} {:>8} {:>8}",
        r.udp_p50_us, "", r.udp_p99_us
    );
    println!(
        "\nclean relay ÷ UDP echo p50: p50 {:.1}x, p99 {:.1}x",
        r.relay_clean_p50_vs_udp, r.relay_clean_p99_vs_udp
    );
    if let (Some(ratio), Some(ok)) = (r.attack_p99_vs_clean, r.attack_p99_ok) {
        println!(
            "attack p99 ÷ clean p99: {ratio:.2}x (limit {:.0}x: {})",
            crate::bench::soak::ATTACK_P99_LIMIT,
            verdict(ok)
        );
    }
    if !r.attacks.is_empty() {
        println!("\nattacks (what the server answered):");
        for a in &r.attacks {
            println!("  {:<18} {} rounds: {}", a.name, a.rounds, a.summary());
        }
    }
}

fn latency(args: LatencyArgs) -> CliResult {
    let scenarios = if args.scenario.contains(&ScenarioArg::All) {
        vec![Scenario::Relay, Scenario::Oneway, Scenario::Loss]
    } else {
        let mut chosen = Vec::new();
        for s in &args.scenario {
            let s = match s {
                ScenarioArg::Relay => Scenario::Relay,
                ScenarioArg::Oneway => Scenario::Oneway,
                ScenarioArg::Loss | ScenarioArg::All => Scenario::Loss,
            };
            if !chosen.contains(&s) {
                chosen.push(s);
            }
        }
        chosen
    };
    let config = LatencyConfig {
        samples: args.samples,
        warmup: args.warmup,
        size: usize::try_from(args.size)?,
        scenarios,
        loss_levels: args.loss.clone(),
        delay: ms(args.delay),
        jitter: ms(args.jitter),
        rate: args.rate,
        loss_timeout: args.loss_timeout.map(ms),
        server_threads: args.server_threads,
        seed: args.seed,
        copies: !args.no_copies,
        storage: args
            .storage
            .as_ref()
            .map(|list| list.iter().map(|&s| StorageKind::from(s)).collect()),
        auth: {
            let mut modes = Vec::new();
            for &arg in &args.auth {
                let mode = AuthMode::from(arg);
                if !modes.contains(&mode) {
                    modes.push(mode);
                }
            }
            modes
        },
        cluster: cluster_options(args.cluster, args.nats_server.as_ref(), args.server_threads)?,
    };
    config.validate()?;
    let progress = Progress::new(!args.output.quiet);
    let rows = crate::bench::latency::run(&config, &progress)?;
    let mode = match args.rate {
        Some(rate) => format!("paced at {rate}/s"),
        None => "one in flight".into(),
    };
    let title = format!(
        "quicbus latency: {} × {} B, {mode}; netsim delay {} ms, jitter {} ms",
        args.samples, args.size, args.delay, args.jitter
    );
    println!("{title}\nmachine: {}\n", machine());
    print_latency(&rows);
    write_outputs(&args.output, &rows, |path| {
        plot::latency_svg(path, &rows, &title)
    })
}

fn print_latency(rows: &[LatencyRow]) {
    println!(
        "{:<16} {:<15} {:<9} {:<4} {:>6} {:>15} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9}",
        "scenario",
        "delivery",
        "storage",
        "auth",
        "loss%",
        "delivered/sent",
        "p50µs",
        "p90µs",
        "p99µs",
        "p99.9µs",
        "maxµs",
        "p50/udp",
        "p99/udp"
    );
    for r in rows {
        println!(
            "{:<16} {:<15} {:<9} {:<4} {:>6} {:>15} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8.1}x {:>8.1}x",
            r.name,
            r.delivery,
            r.storage,
            r.auth,
            r.loss_pct,
            format!("{}/{}", r.delivered, r.sent),
            r.latency.p50_us,
            r.latency.p90_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.latency.max_us,
            r.p50_vs_udp,
            r.p99_vs_udp,
        );
    }
    print_storage_comparison(rows);
    print_auth_comparison(rows);
    print_cluster_check(rows);
}

/// The budget for the relay across nodes: within a core-NATS relay
/// plus two single-node relays, all measured in this run. A report, not
/// an assertion; one line per single-node storage measured.
fn print_cluster_check(rows: &[LatencyRow]) {
    let find = |name: &str, delivery: &str| {
        rows.iter()
            .find(|r| r.name == name && r.delivery == delivery)
    };
    let Some(cross) = find(CLUSTER_RELAY, "reliable") else {
        return;
    };
    for (label, relay) in [
        ("core-NATS", "core-nats"),
        ("JetStream", "jetstream"),
        ("acked JetStream", "jetstream-acked"),
    ] {
        let Some(nats) = find(NATS_RELAY, relay) else {
            continue;
        };
        print_budget(rows, cross, nats, label);
    }
}

/// One budget line per single-node storage: `cross` against `nats` plus
/// two single-node relays.
fn print_budget(rows: &[LatencyRow], cross: &LatencyRow, nats: &LatencyRow, label: &str) {
    println!("\ncross-node reliable p50 <= {label} relay p50 + 2 x single-node relay p50:");
    let singles: Vec<&LatencyRow> = rows
        .iter()
        .filter(|r| r.name == "relay" && r.delivery == "reliable" && r.auth == "off")
        .collect();
    if singles.is_empty() {
        println!(
            "  not checked: no single-node reliable relay in this run (--scenario relay measures it)"
        );
    }
    for single in singles {
        let budget = nats.latency.p50_us + 2 * single.latency.p50_us;
        let ok = cross.latency.p50_us <= budget;
        println!(
            "  {} µs <= {} + 2 x {} µs ({}) = {budget} µs: {}   ({:.2}x the budget)",
            cross.latency.p50_us,
            nats.latency.p50_us,
            single.latency.p50_us,
            single.storage,
            if ok { "yes" } else { "NO" },
            cross.latency.p50_us as f64 / budget.max(1) as f64,
        );
    }
}

/// Durable against memory storage, wherever a run has both.
fn print_storage_comparison(rows: &[LatencyRow]) {
    let mut pairs = Vec::new();
    for disk in rows.iter().filter(|r| r.storage == "disk") {
        let twin = rows.iter().find(|r| {
            r.storage == "memory"
                && r.name == disk.name
                && r.delivery == disk.delivery
                && r.auth == disk.auth
        });
        if let Some(memory) = twin {
            pairs.push((disk, memory));
        }
    }
    if pairs.is_empty() {
        return;
    }
    // With token checks measured too, each line says which.
    let auths = rows.iter().any(|r| r.auth == "on");
    let delivery = |r: &LatencyRow| {
        if auths {
            format!("{}, auth {}", r.delivery, r.auth)
        } else {
            r.delivery.clone()
        }
    };
    let width = pairs
        .iter()
        .map(|(disk, _)| delivery(disk).len())
        .max()
        .unwrap_or(0)
        .max(15);
    println!("\ndisk (fsync interval) ÷ memory, same run:");
    for (disk, memory) in pairs {
        println!(
            "  {:<16} {:<width$} p50 {} / {} µs = {:.2}x   p99 {} / {} µs = {:.2}x",
            disk.name,
            delivery(disk),
            disk.latency.p50_us,
            memory.latency.p50_us,
            ratio2(disk.latency.p50_us, memory.latency.p50_us),
            disk.latency.p99_us,
            memory.latency.p99_us,
            ratio2(disk.latency.p99_us, memory.latency.p99_us),
        );
    }
}

/// Token checks on against off, wherever a run has both, beside the raw-UDP
/// echo of the same run.
fn print_auth_comparison(rows: &[LatencyRow]) {
    let mut pairs = Vec::new();
    for on in rows.iter().filter(|r| r.auth == "on") {
        let twin = rows.iter().find(|r| {
            r.auth == "off"
                && r.name == on.name
                && r.delivery == on.delivery
                && r.storage == on.storage
        });
        if let Some(off) = twin {
            pairs.push((on, off));
        }
    }
    if pairs.is_empty() {
        return;
    }
    println!(
        "\nauth on ÷ off (signed tokens checked or not), same run; target p50 ≤ {AUTH_P50_LIMIT:.2}x:"
    );
    for (on, off) in pairs {
        let p50 = ratio2(on.latency.p50_us, off.latency.p50_us);
        println!(
            "  {:<16} {:<15} {:<6} p50 {} / {} µs = {:.2}x ({})   p99 {} / {} µs = {:.2}x   udp echo p50 {} µs",
            on.name,
            on.delivery,
            on.storage,
            on.latency.p50_us,
            off.latency.p50_us,
            p50,
            if p50 <= AUTH_P50_LIMIT { "ok" } else { "OVER" },
            on.latency.p99_us,
            off.latency.p99_us,
            ratio2(on.latency.p99_us, off.latency.p99_us),
            on.udp_p50_us,
        );
    }
}

/// `value / base` to two decimals; 0 without a base.
fn ratio2(value: u64, base: u64) -> f64 {
    if base == 0 {
        return 0.0;
    }
    (value as f64 / base as f64 * 100.0).round() / 100.0
}

fn fanout(args: FanoutArgs) -> CliResult {
    let server_exe = server_exe()?;
    let kinds = match args.delivery {
        DeliveryArg::Reliable => vec![Kind::Reliable],
        DeliveryArg::Datagram => vec![Kind::Datagram],
        DeliveryArg::Both => vec![Kind::Reliable, Kind::Datagram],
        DeliveryArg::Copies => vec![Kind::Copies],
    };
    let mut subscribers = Vec::new();
    for &n in &args.subscribers {
        subscribers.push(usize::try_from(n)?);
    }
    let config = FanoutConfig {
        subscribers,
        kinds,
        events: args.events,
        size: usize::try_from(args.size)?,
        server_threads: args.server_threads,
        client_threads: args.client_threads,
        run_limit: Duration::from_secs_f64(args.run_limit),
        storage: if args.memory {
            StorageKind::Memory
        } else {
            StorageKind::Disk
        },
        cluster: cluster_options(args.cluster, args.nats_server.as_ref(), args.server_threads)?,
        ..FanoutConfig::new(server_exe)
    };
    config.validate()?;
    let progress = Progress::new(!args.output.quiet);
    let rows = crate::bench::fanout::run(&config, &progress)?;
    let title = format!(
        "quicbus fan-out: 1 publisher → N subscribers, {} B events, history {}",
        args.size,
        match config.storage {
            StorageKind::Disk => "on disk (fsync interval)",
            StorageKind::Memory => "in memory",
        }
    );
    println!("{title}\nmachine: {}\n", machine());
    print_fanout(&rows);
    // The plot draws one curve per delivery: the single-node runs.
    let single: Vec<FanoutRow> = rows.iter().filter(|r| r.nodes == 1).cloned().collect();
    write_outputs(&args.output, &rows, |path| {
        plot::fanout_svg(path, &single, &title)
    })
}

fn print_fanout(rows: &[FanoutRow]) {
    println!(
        "{:<15} {:<9} {:>5} {:>6} {:>9} {:>12} {:>7} {:>12} {:>7} {:>8} {:>8} {:>11}",
        "delivery",
        "storage",
        "nodes",
        "subs",
        "sent",
        "delivered",
        "loss%",
        "events/s",
        "p50µs",
        "p99µs",
        "cpu s",
        "B/conn"
    );
    for r in rows {
        println!(
            "{:<15} {:<9} {:>5} {:>6} {:>9} {:>12} {:>7.2} {:>12.0} {:>7} {:>8} {:>8.2} {:>11}",
            r.delivery,
            r.storage,
            r.nodes,
            r.subscribers,
            r.sent,
            r.delivered,
            r.loss_pct,
            r.events_per_sec,
            r.p50_us,
            r.p99_us,
            r.server_cpu_s,
            r.mem_per_conn_bytes,
        );
    }
    if rows.iter().any(|r| r.nodes > 1) {
        println!(
            "\ncluster rows: publisher on node-1, subscribers round-robin over the nodes, history in JetStream; cpu s and B/conn summed over the quicbus nodes (nats-server not counted)"
        );
    }
    if let Some(r) = rows.first() {
        println!("\nraw UDP echo p50 in the same run: {} µs", r.udp_p50_us);
    }
}

fn server_exe() -> Result<PathBuf, String> {
    std::env::current_exe()
        .map_err(|e| format!("cannot find the quicbus executable to run the server: {e}"))
}

fn replay(args: ReplayArgs) -> CliResult {
    let config = ReplayConfig {
        fill: match args.bytes {
            Some(bytes) => Fill::Bytes(bytes),
            None => Fill::Events(args.events),
        },
        size: usize::try_from(args.size)?,
        server_threads: args.server_threads,
        run_limit: Duration::from_secs_f64(args.run_limit),
        cold: args.cold,
        ..ReplayConfig::new(server_exe()?)
    };
    config.validate()?;
    let progress = Progress::new(!args.quiet);
    let rows = crate::bench::replay::run(&config, &progress)?;
    println!(
        "quicbus replay: one room's stored history to a late joiner (since 0), {} B events\nmachine: {}\n",
        args.size,
        machine()
    );
    for r in &rows {
        print_replay(r);
    }
    let output = OutputArgs {
        json: args.json,
        plot: None,
        quiet: args.quiet,
    };
    write_outputs(&output, &rows, |_| Ok(()))
}

fn print_replay(r: &ReplayRow) {
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "stored      {} events, {:.1} MB data directory (filled in {:.1} s)",
        r.sent,
        mb(r.disk_bytes),
        r.fill_s
    );
    println!(
        "open        DiskStore::open {:.1} ms (warm cache); serve start to listening {:.1} ms ({})",
        r.open_ms,
        r.serve_ready_ms,
        if r.cold { "cold cache" } else { "warm cache" }
    );
    println!(
        "replay      {}/{} delivered, {} misordered, {} damaged",
        r.delivered, r.sent, r.misordered, r.damaged
    );
    println!(
        "            {:.0} events/s, {:.1} MB/s of payload, first event after {:.1} ms, {:.2} s in all",
        r.events_per_sec, r.payload_mb_per_sec, r.first_event_ms, r.replay_s
    );
    println!(
        "server RSS  {:.1} MB after opening, {:.1} MB after the replay, {:.1} MB at its peak",
        mb(r.rss_open_bytes),
        mb(r.rss_after_replay_bytes),
        mb(r.rss_peak_bytes)
    );
    println!("\nraw UDP echo p50 in the same run: {} µs", r.udp_p50_us);
}

fn storage(args: StorageArgs) -> CliResult {
    let mut policies: Vec<FsyncPolicy> = Vec::new();
    for &arg in &args.fsync {
        let policy = FsyncPolicy::from(arg);
        if !policies.contains(&policy) {
            policies.push(policy);
        }
    }
    let config = StorageConfig {
        events: args.events,
        size: usize::try_from(args.size)?,
        policies,
        run_limit: Duration::from_secs_f64(args.run_limit),
    };
    config.validate()?;
    let progress = Progress::new(!args.quiet);
    let rows = crate::bench::storage::run(&config, &progress)?;
    println!(
        "quicbus storage: appends of {} B events to one room of the disk store, one after the other\nmachine: {}\n",
        args.size,
        machine()
    );
    print_storage(&rows);
    let output = OutputArgs {
        json: args.json,
        plot: None,
        quiet: args.quiet,
    };
    write_outputs(&output, &rows, |_| Ok(()))
}

fn print_storage(rows: &[StorageRow]) {
    println!(
        "{:<9} {:>17} {:>9} {:>9} {:>9} {:>9} {:>10} {:>12} {:>10}",
        "fsync",
        "appends/sent",
        "p50µs",
        "p90µs",
        "p99µs",
        "p99.9µs",
        "maxµs",
        "appends/s",
        "maintains"
    );
    for r in rows {
        println!(
            "{:<9} {:>17} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>12.0} {:>10}",
            r.fsync,
            format!("{}/{}", r.appends, r.sent),
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.p999_us,
            r.max_us,
            r.events_per_sec,
            r.maintain_runs,
        );
    }
    if let Some(r) = rows.first() {
        println!("\nraw UDP echo p50 in the same run: {} µs", r.udp_p50_us);
    }
}

fn write_outputs<T: serde::Serialize>(
    output: &OutputArgs,
    rows: &[T],
    draw: impl FnOnce(&std::path::Path) -> Result<(), crate::bench::BenchError>,
) -> CliResult {
    if let Some(path) = &output.json {
        write_json(path, rows)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &output.plot {
        draw(path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_units() {
        assert_eq!(duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "10x", "-1s", "25h"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn byte_sizes_read_with_binary_units() {
        assert_eq!(byte_size("1048576"), Ok(1 << 20));
        assert_eq!(byte_size("512K"), Ok(512 << 10));
        assert_eq!(byte_size("3m"), Ok(3 << 20));
        assert_eq!(byte_size("1G"), Ok(1 << 30));
        assert_eq!(byte_size("2GiB"), Ok(2 << 30));
        for bad in ["", "G", "12Q", "-1", "0", "1.5G", "2048G"] {
            assert!(byte_size(bad).is_err(), "{bad}");
        }
    }
}
