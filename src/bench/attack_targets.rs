//! `quicbus bench attack`: the targets of issue 9 ("Hostile clients"),
//! each measured against a fresh `quicbus serve` child process while one
//! attack of [`super::attack`] runs:
//!
//! - handshake flood (2,500 QUIC Initials from one socket, never followed
//!   up): a fresh client connects and has its first publish acked within
//!   5 s, tried [`FLOOD_PROBES`] times while the flood runs;
//! - room flood (100,000 rooms joined and resolved on one connection):
//!   another client's join of a new room and acked publish to it take at
//!   most 300 ms each, while the flood runs and [`ROOM_PROBES`] times after
//!   the server has let the flooder name all it would;
//! - half-sent frames (100 streams each holding half of a 1 MB frame): the
//!   server's resident memory grows by at most 32 MiB;
//! - partial `Hello`s (40 connections, part of a 1 MiB `Hello` each): at
//!   most 128 KiB of resident memory per connection.
//!
//! The attack runs on a thread and runtime of its own, so that what the
//! bystander measures is the server, not an event loop shared with the
//! attacker. The server's RSS is sampled every [`RSS_EVERY`] from a
//! settled baseline (taken after one ordinary client has connected,
//! published and left, so that one-time costs are not charged to the
//! attack) until the attack ends; its peak is what the attack cost
//! ([`background`]). [`report`] holds each figure against its limit.
//!
//! The 20 × 64 MB history hog has its own run (`bench soak --attack`),
//! and a stolen resume token is covered by tests.

mod background;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::attack::{
    self, AttackError, FloodConfig, HalfSentConfig, PartialHelloConfig, RoomFloodConfig, Target,
};
use super::scratch::ScratchDir;
use super::server_process::{ServeOptions, ServerProcess, LIFTED_DEFENCES};
use super::soak::AttackKind;
use super::{machine, udp_echo, BenchError, Progress, StorageKind};
use background::{settled_rss, Background};
use quicbus::client::{Client, ClientOptions};
use report::{fmt_value, ms, probe_result, rss_result, verdict};
pub use report::{AttackTargetsReport, Probe, TargetResult};

/// A fresh client's connect and first acked publish during a handshake flood.
pub const HANDSHAKE_FLOOD_LIMIT: Duration = Duration::from_secs(5);
/// Another client's join of a new room and acked publish during a room flood.
pub const ROOM_FLOOD_LIMIT: Duration = Duration::from_millis(300);
/// The server's RSS growth while half-sent frames are held.
pub const HALF_SENT_RSS_LIMIT: u64 = 32 << 20;
/// The server's RSS growth per connection holding a partial `Hello`.
pub const PARTIAL_HELLO_RSS_LIMIT: u64 = 128 << 10;

/// Fresh clients tried during a handshake flood.
pub const FLOOD_PROBES: usize = 5;
/// Joins and publishes tried after a room flood.
pub const ROOM_PROBES: usize = 20;
/// Joins and publishes tried while a room flood runs, at most (one every
/// [`ROOM_PROBE_EVERY`]).
const ROOM_PROBES_DURING: usize = 100;
const ROOM_PROBE_EVERY: Duration = Duration::from_millis(10);
/// How often the server's RSS is read.
pub const RSS_EVERY: Duration = Duration::from_millis(50);
/// The longest one probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the RSS baseline waits to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(3);

/// The attacks that have a target here, in the order they run.
pub const TARGETED: [AttackKind; 4] = [
    AttackKind::HandshakeFlood,
    AttackKind::RoomFlood,
    AttackKind::HalfSentFrames,
    AttackKind::PartialHellos,
];

/// Settings of `bench attack`.
#[derive(Debug, Clone)]
pub struct AttackTargetsConfig {
    /// Which attacks run, each against its own server (of [`TARGETED`],
    /// in that order).
    pub attacks: Vec<AttackKind>,
    /// 1.0 is the full size of issue 9 (2,500 Initials, 100,000 rooms,
    /// 100 streams, 40 Hellos).
    pub attack_scale: f64,
    /// How long half-sent frames and partial Hellos are held; `None`:
    /// the attacks' own (20 s and 10 s), longer than the server's frame
    /// timeout.
    pub hold: Option<Duration>,
    /// The `quicbus` executable whose `serve` is measured.
    pub server_exe: PathBuf,
    pub storage: StorageKind,
    /// Arguments added to `serve`.
    pub serve_args: Vec<String>,
}

impl AttackTargetsConfig {
    /// The defaults of `quicbus bench attack`, serving with `server_exe`.
    pub fn new(server_exe: PathBuf) -> Self {
        AttackTargetsConfig {
            attacks: TARGETED.to_vec(),
            attack_scale: 1.0,
            hold: None,
            server_exe,
            storage: StorageKind::Disk,
            serve_args: Vec::new(),
        }
    }

    /// Checks the settings before anything starts.
    pub fn validate(&self) -> Result<(), BenchError> {
        let fail = |m: String| Err(BenchError::Other(m));
        if self.attacks.is_empty() {
            return fail("--attacks: no attack chosen".into());
        }
        if let Some(kind) = self.attacks.iter().find(|k| !TARGETED.contains(k)) {
            return fail(format!(
                "--attacks: {} has no target here (the history hog runs in `bench soak \
                 --attack`, session takeover in the tests); choose from handshake-flood, \
                 room-flood, half-sent-frames, partial-hellos",
                kind.name()
            ));
        }
        if !(self.attack_scale > 0.0 && self.attack_scale <= 10.0) {
            return fail(format!(
                "--attack-scale {} must be in (0, 10]",
                self.attack_scale
            ));
        }
        if let Some(hold) = self.hold {
            if hold.is_zero() || hold > Duration::from_secs(600) {
                return fail(format!("--hold {hold:?} must be from 1 ms to 10 minutes"));
            }
        }
        Ok(())
    }

    fn scaled(&self, full: f64) -> u64 {
        ((full * self.attack_scale).round() as u64).max(1)
    }

    /// The `serve` flags of every server of the run.
    fn serve_flags(&self) -> String {
        let storage = match self.storage {
            StorageKind::Disk => "--data <temporary dir>",
            StorageKind::Memory => "--memory",
        };
        let mut flags = format!("--worker-threads 0 {} {storage}", LIFTED_DEFENCES.join(" "));
        for arg in &self.serve_args {
            flags.push(' ');
            flags.push_str(arg);
        }
        flags
    }
}

/// Runs every chosen attack against its own server.
pub fn run(
    config: &AttackTargetsConfig,
    progress: &Progress,
) -> Result<AttackTargetsReport, BenchError> {
    config.validate()?;
    progress.step("udp echo");
    let udp = udp_echo(10_000, 1_000, 64, progress)?;
    let (udp_p50_us, udp_p99_us) = (udp.value_at_quantile(0.5), udp.value_at_quantile(0.99));
    progress.finish(&format!("p50 {udp_p50_us} µs, p99 {udp_p99_us} µs"));
    let mut targets = Vec::new();
    // In a fixed order, each once.
    for kind in TARGETED.into_iter().filter(|k| config.attacks.contains(k)) {
        progress.step(kind.name());
        let result = measure(config, kind, progress)?;
        progress.finish(&format!(
            "{} {} (limit {} {}): {}",
            fmt_value(result.measured),
            result.unit,
            fmt_value(result.limit),
            result.unit,
            verdict(result.ok)
        ));
        targets.push(result);
    }
    Ok(AttackTargetsReport {
        name: "attack-targets".into(),
        machine: machine(),
        serve_flags: config.serve_flags(),
        storage: config.storage.name().into(),
        attack_scale: config.attack_scale,
        udp_p50_us,
        udp_p99_us,
        all_ok: targets.iter().all(|t| t.ok),
        targets,
    })
}

/// One attack against a fresh server.
fn measure(
    config: &AttackTargetsConfig,
    kind: AttackKind,
    progress: &Progress,
) -> Result<TargetResult, BenchError> {
    let data = ScratchDir::new("attack-data")?;
    let server = ServerProcess::start(&ServeOptions {
        data: match config.storage {
            StorageKind::Disk => Some(data.path().join("data")),
            StorageKind::Memory => None,
        },
        extra: config.serve_args.clone(),
        ..ServeOptions::new(config.server_exe.clone())
    })?;
    let mut options = server.client_options();
    options.client_name = "attack-bystander".into();
    options.connect_timeout = PROBE_TIMEOUT;
    options.request_timeout = PROBE_TIMEOUT;
    let target = server.attack_target()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("starting a runtime"))?;
    let s = |full: f64| config.scaled(full);
    let result = runtime.block_on(async {
        // What a server's first connection costs once (TLS, buffers, a
        // room) is not what an attack costs: one ordinary client comes and
        // goes before the baseline.
        connect_and_publish(&options)
            .await
            .map_err(|e| BenchError::Other(format!("warming up the server: {e}")))?;
        match kind {
            AttackKind::HandshakeFlood => {
                progress.step("handshake-flood: capturing Initial packets");
                let initials = attack::capture_initials(&target, s(2_500.0) as usize)
                    .await
                    .map_err(attack_failed)?;
                progress.finish(&format!("{} packets", initials.len()));
                progress.step("handshake-flood");
                handshake_flood(&server, &options, target, initials).await
            }
            AttackKind::RoomFlood => {
                let rooms = RoomFloodConfig {
                    rooms: s(100_000.0),
                    ..RoomFloodConfig::default()
                };
                room_flood(&server, &options, target, rooms).await
            }
            AttackKind::HalfSentFrames => {
                let half = HalfSentConfig {
                    streams: s(100.0) as usize,
                    ..HalfSentConfig::default()
                };
                let half = HalfSentConfig {
                    hold: config.hold.unwrap_or(half.hold),
                    ..half
                };
                half_sent_frames(&server, target, half).await
            }
            AttackKind::PartialHellos => {
                let hellos = PartialHelloConfig {
                    connections: s(40.0) as usize,
                    ..PartialHelloConfig::default()
                };
                let hellos = PartialHelloConfig {
                    hold: config.hold.unwrap_or(hellos.hold),
                    ..hellos
                };
                partial_hellos(&server, target, hellos).await
            }
            other => Err(BenchError::Other(format!(
                "{} has no target here",
                other.name()
            ))),
        }
    });
    drop(server);
    drop(data);
    result
}

/// The server's address and CA, for the attacks.
fn attack_failed(e: AttackError) -> BenchError {
    BenchError::Other(format!("the attack could not be carried out: {e}"))
}

// ---------------------------------------------------------------------------
// The four attacks and what is measured during each

async fn handshake_flood(
    server: &ServerProcess,
    options: &ClientOptions,
    target: Target,
    initials: Vec<Bytes>,
) -> Result<TargetResult, BenchError> {
    let flood = FloodConfig {
        initials: initials.len(),
        ..FloodConfig::default()
    };
    // The probes are spread over the time the Initials are being sent,
    // the first a little after the flood has begun.
    let sending = Duration::from_secs_f64(initials.len() as f64 / flood.rate.max(1) as f64);
    let baseline = settled_rss(server).await?;
    let run = Background::start(move || async move {
        attack::handshake_flood(&target, &initials, &flood).await
    });
    let started = Instant::now();
    let done = run.done();
    let probing = async {
        let mut probes = Vec::new();
        for i in 0..FLOOD_PROBES {
            let at = started + sending.mul_f64((i as f64 + 0.5) / FLOOD_PROBES as f64);
            tokio::time::sleep_until(at.into()).await;
            let during = !*done.borrow();
            probes.push(timed(started, during, connect_and_publish(options)).await);
        }
        probes
    };
    let (peak, report, probes) = run.watch(server, probing).await?;
    Ok(probe_result(
        "handshake-flood",
        format!("fresh client: connect + 1st acked publish, worst of {FLOOD_PROBES}"),
        HANDSHAKE_FLOOD_LIMIT,
        probes,
        (baseline, peak),
        report,
    ))
}

async fn room_flood(
    server: &ServerProcess,
    options: &ClientOptions,
    target: Target,
    rooms: RoomFloodConfig,
) -> Result<TargetResult, BenchError> {
    let (client, _events) = Client::connect(options.clone())
        .await
        .map_err(BenchError::client("connecting the bystander"))?;
    let baseline = settled_rss(server).await?;
    let run = Background::start(move || async move { attack::room_flood(&target, &rooms).await });
    let started = Instant::now();
    let tag: u32 = rand::random();
    let mut done = run.done();
    let probing = async {
        let mut probes = Vec::new();
        let mut tick = tokio::time::interval(ROOM_PROBE_EVERY);
        // While the flood runs (bounded: the flood has a time limit)...
        while probes.len() < ROOM_PROBES_DURING {
            tokio::select! {
                _ = done.wait_for(|d| *d) => break,
                _ = tick.tick() => {}
            }
            let room = format!("bystander-{tag:x}-{}", probes.len());
            probes.push(timed(started, true, join_and_publish(&client, &room)).await);
        }
        // ... and once the server has let the flooder name all it would.
        let _ = done.wait_for(|d| *d).await;
        for _ in 0..ROOM_PROBES {
            let room = format!("bystander-{tag:x}-{}", probes.len());
            probes.push(timed(started, false, join_and_publish(&client, &room)).await);
        }
        probes
    };
    let (peak, report, probes) = run.watch(server, probing).await?;
    client.close().await;
    let n = probes.len();
    Ok(probe_result(
        "room-flood",
        format!("other client: join new room + acked publish, worst of {n}"),
        ROOM_FLOOD_LIMIT,
        probes,
        (baseline, peak),
        report,
    ))
}

async fn half_sent_frames(
    server: &ServerProcess,
    target: Target,
    half: HalfSentConfig,
) -> Result<TargetResult, BenchError> {
    let streams = half.streams as u64;
    let baseline = settled_rss(server).await?;
    let run =
        Background::start(move || async move { attack::half_sent_frames(&target, &half).await });
    let (peak, report, ()) = run.watch(server, async {}).await?;
    let growth = peak.saturating_sub(baseline);
    Ok(rss_result(
        "half-sent-frames",
        format!("server RSS growth at peak, {streams} half-sent frames"),
        HALF_SENT_RSS_LIMIT,
        growth,
        streams,
        (baseline, peak),
        report,
    ))
}

async fn partial_hellos(
    server: &ServerProcess,
    target: Target,
    hellos: PartialHelloConfig,
) -> Result<TargetResult, BenchError> {
    let baseline = settled_rss(server).await?;
    let run =
        Background::start(move || async move { attack::partial_hellos(&target, &hellos).await });
    let (peak, report, ()) = run.watch(server, async {}).await?;
    // Only connections that reached the server can cost it anything.
    let unconnected: u64 = report
        .answers
        .iter()
        .filter(|(k, _)| k.starts_with("not connected"))
        .map(|(_, v)| v)
        .sum();
    let connected = report.attempted.saturating_sub(unconnected).max(1);
    let growth = peak.saturating_sub(baseline);
    Ok(rss_result(
        "partial-hellos",
        format!("server RSS growth at peak per conn, {connected} partial Hellos"),
        PARTIAL_HELLO_RSS_LIMIT,
        growth / connected,
        connected,
        (baseline, peak),
        report,
    ))
}

// ---------------------------------------------------------------------------
// The bystander

/// A fresh client (own endpoint) connects and has one event acked.
async fn connect_and_publish(options: &ClientOptions) -> Result<(), String> {
    let (client, _events) = Client::connect(options.clone())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let acked = client
        .emit_with_ack("attack-bystander", "probe", Bytes::from_static(b"probe"))
        .await
        .map_err(|e| format!("publish: {e}"));
    client.close().await;
    acked.map(|_| ())
}

/// Joins `room` and has one event to it acked.
async fn join_and_publish(client: &Client, room: &str) -> Result<(), String> {
    client.join(room).await.map_err(|e| format!("join: {e}"))?;
    client
        .emit_with_ack(room, "probe", Bytes::from_static(b"probe"))
        .await
        .map_err(|e| format!("publish: {e}"))?;
    Ok(())
}

/// Times one probe (bounded by [`PROBE_TIMEOUT`]).
async fn timed(
    started: Instant,
    during_attack: bool,
    probe: impl std::future::Future<Output = Result<(), String>>,
) -> Probe {
    let at = started.elapsed();
    let began = Instant::now();
    let error = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    Probe {
        at_ms: ms(at),
        took_ms: ms(began.elapsed()),
        during_attack,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let ok = AttackTargetsConfig::new(PathBuf::from("quicbus"));
        assert!(ok.validate().is_ok());
        for bad in [
            AttackTargetsConfig {
                attacks: Vec::new(),
                ..ok.clone()
            },
            AttackTargetsConfig {
                attacks: vec![AttackKind::HistoryHog],
                ..ok.clone()
            },
            AttackTargetsConfig {
                attack_scale: 0.0,
                ..ok.clone()
            },
            AttackTargetsConfig {
                hold: Some(Duration::ZERO),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let small = AttackTargetsConfig {
            attack_scale: 0.001,
            ..ok
        };
        assert_eq!(small.scaled(40.0), 1);
        assert_eq!(small.scaled(100_000.0), 100);
    }
}
