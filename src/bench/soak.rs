//! `quicbus bench soak`: a crowd of well-behaved clients for a set time,
//! with or without attacks in the background, against a `quicbus serve`
//! child process.
//!
//! Three threads, each with its own current-thread runtime, share the
//! timeline of the run ([`Timeline`]):
//!
//! - the crowd ([`crowd`]): N clients over shared endpoints joining,
//!   publishing reliable events and datagrams, leaving and rejoining, new
//!   sessions, and (a tenth of them, behind flaky paths) losing their
//!   connection and resuming; every reliable event is checked;
//! - the bystander ([`bystander`]): one more pair whose relay latency is
//!   measured all through, per phase and per second;
//! - the attacker (with `--attack`): every attack of [`super::attack`],
//!   repeated from the start of the attack phase to the end of the run.
//!
//! The calling thread samples the server's resident memory once a second.
//! The run is: warm-up, then the clean phase, then (with `--attack`) the
//! attack phase, which takes the second half of the time after warm-up.
//! Memory growth is taken from the end of warm-up, so the first
//! allocations of a thousand connections do not count as a leak.

mod bystander;
mod crowd;
pub mod plot;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::attack::{
    self, AttackReport, FloodConfig, HalfSentConfig, HogConfig, PartialHelloConfig,
    RoomFloodConfig, TakeoverConfig, Target,
};
use super::scratch::ScratchDir;
use super::server_process::{ServeOptions, ServerProcess};
use super::{ratio, udp_echo, BenchError, Percentiles, Progress, StorageKind};
use bystander::{Bystander, Measured};
use crowd::{Crowd, Tally};

/// Memory growth after warm-up that still passes.
pub const RSS_GROWTH_LIMIT_PCT: f64 = 5.0;
/// The bystander's p99 under attack may be this many times its clean p99.
pub const ATTACK_P99_LIMIT: f64 = 2.0;

/// The attacks a soak can run in its attack phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttackKind {
    HandshakeFlood,
    RoomFlood,
    HistoryHog,
    HalfSentFrames,
    PartialHellos,
    SessionTakeover,
}

impl AttackKind {
    pub const ALL: [AttackKind; 6] = [
        AttackKind::HandshakeFlood,
        AttackKind::RoomFlood,
        AttackKind::HistoryHog,
        AttackKind::HalfSentFrames,
        AttackKind::PartialHellos,
        AttackKind::SessionTakeover,
    ];

    /// As in the report: `handshake-flood`, ...
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::HandshakeFlood => "handshake-flood",
            AttackKind::RoomFlood => "room-flood",
            AttackKind::HistoryHog => "history-hog",
            AttackKind::HalfSentFrames => "half-sent-frames",
            AttackKind::PartialHellos => "partial-hellos",
            AttackKind::SessionTakeover => "session-takeover",
        }
    }
}

/// Settings of a soak.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Well-behaved clients.
    pub clients: usize,
    /// Rooms they share.
    pub rooms: usize,
    /// Rooms each client is in.
    pub rooms_per_client: usize,
    /// The whole run, warm-up included.
    pub duration: Duration,
    /// From the start to the memory baseline.
    pub warmup: Duration,
    /// Run the attacks in the second half after warm-up.
    pub attack: bool,
    /// Which attacks run (all by default).
    pub attacks: Vec<AttackKind>,
    /// How big the attacks are: 1.0 is the full size of issue 9 (2,500
    /// Initials, 100,000 rooms, 20 × 64 MB, 100 streams, 40 Hellos).
    pub attack_scale: f64,
    /// Each client publishes a reliable event (with ack) this often.
    pub reliable_every: Duration,
    /// Each client sends a datagram this often.
    pub datagram_every: Duration,
    /// Each client leaves one room and rejoins it this often.
    pub churn_every: Duration,
    /// Each client closes its session and starts a new one this often.
    pub renew_every: Duration,
    /// Every this-many-th client is behind a flaky path (0: none).
    pub flaky_every: usize,
    /// A flaky path goes dark this often (one of four at a time)...
    pub outage_every: Duration,
    /// ... for this long (longer than the flaky clients' idle timeout, so
    /// they lose their connection and resume).
    pub outage_len: Duration,
    /// Bystander messages per second.
    pub bystander_rate: f64,
    /// The `quicbus` executable whose `serve` is measured.
    pub server_exe: PathBuf,
    /// Where the server keeps history: on disk (`serve`'s default) or in memory.
    pub storage: StorageKind,
    /// Arguments added to `serve` (e.g. generous per-IP limits: every
    /// client of the bench comes from 127.0.0.1).
    pub serve_args: Vec<String>,
}

impl SoakConfig {
    /// The defaults of `quicbus bench soak`, serving with `server_exe`.
    pub fn new(server_exe: PathBuf) -> Self {
        SoakConfig {
            clients: 1000,
            rooms: 200,
            rooms_per_client: 3,
            duration: Duration::from_secs(60),
            warmup: Duration::from_secs(10),
            attack: false,
            attacks: AttackKind::ALL.to_vec(),
            attack_scale: 1.0,
            reliable_every: Duration::from_secs(4),
            datagram_every: Duration::from_secs(2),
            churn_every: Duration::from_secs(15),
            renew_every: Duration::from_secs(30),
            flaky_every: 10,
            outage_every: Duration::from_secs(10),
            outage_len: Duration::from_millis(2500),
            bystander_rate: 200.0,
            server_exe,
            storage: StorageKind::Disk,
            serve_args: Vec::new(),
        }
    }

    /// Checks the settings before anything starts.
    pub fn validate(&self) -> Result<(), BenchError> {
        let fail = |m: String| Err(BenchError::Other(m));
        if !(1..=10_000).contains(&self.clients) {
            return fail(format!(
                "--clients {} must be from 1 to 10,000",
                self.clients
            ));
        }
        if self.rooms == 0 || self.rooms_per_client == 0 || self.rooms_per_client > self.rooms {
            return fail(format!(
                "--rooms-per-client {} must be from 1 to --rooms ({})",
                self.rooms_per_client, self.rooms
            ));
        }
        if self.warmup >= self.duration {
            return fail(format!(
                "--warmup {:?} must be shorter than --duration {:?}",
                self.warmup, self.duration
            ));
        }
        if self.duration > Duration::from_secs(24 * 3600) {
            return fail("--duration is limited to a day".into());
        }
        if self.attack && self.attacks.is_empty() {
            return fail("--attacks: no attack chosen".into());
        }
        if !(self.attack_scale > 0.0 && self.attack_scale <= 10.0) {
            return fail(format!(
                "--attack-scale {} must be in (0, 10]",
                self.attack_scale
            ));
        }
        if !(self.bystander_rate >= 1.0 && self.bystander_rate <= 10_000.0) {
            return fail("the bystander rate must be from 1 to 10,000 a second".into());
        }
        Ok(())
    }

    fn scaled(&self, full: f64) -> u64 {
        ((full * self.attack_scale).round() as u64).max(1)
    }
}

/// The moments of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeline {
    pub start: Instant,
    /// End of warm-up: the memory baseline.
    pub warmed: Instant,
    /// Start of the attack phase, if any.
    pub attack: Option<Instant>,
    /// Publishing stops.
    pub stop: Instant,
}

impl Timeline {
    fn new(config: &SoakConfig, start: Instant) -> Self {
        let warmed = start + config.warmup;
        let stop = start + config.duration;
        Timeline {
            start,
            warmed,
            attack: config.attack.then(|| warmed + (stop - warmed) / 2),
            stop,
        }
    }
}

/// One sample of the server's resident memory.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssSample {
    /// Seconds since the start of the run.
    pub t_s: f64,
    pub bytes: u64,
}

/// The bystander's relay p99 of one second.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SecondP99 {
    /// Seconds since the start of the run.
    pub t_s: u64,
    pub p99_us: u64,
    pub messages: u64,
}

/// A whole soak: the JSON object and the table.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// `soak` or `soak-attack`.
    pub name: String,
    pub clients: usize,
    pub rooms: usize,
    pub rooms_per_client: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub attack: bool,
    /// Where the server kept history: `disk` (fsync `interval`) or `memory`.
    pub storage: String,
    /// Arguments given to `serve` beyond the bench's own.
    pub serve_args: Vec<String>,

    /// Failures of well-behaved clients: a missing, duplicate or
    /// out-of-order reliable event, a failed join or emit, an unexpected
    /// close. Must be 0.
    pub errors: u64,
    /// The first few of them.
    pub error_samples: Vec<String>,
    /// Reliable events published and acked.
    pub reliable_published: u64,
    /// Reliable events received, summed over subscribers.
    pub reliable_delivered: u64,
    /// Reliable events a subscriber never got (gaps and what never came).
    pub reliable_missing: u64,
    pub reliable_duplicates: u64,
    pub reliable_out_of_order: u64,
    /// Every subscriber got every event of its rooms, once and in order.
    pub delivery_complete: bool,
    pub datagrams_sent: u64,
    /// Datagrams not sent because the client was disconnected (flaky
    /// clients during outages).
    pub datagrams_unsent: u64,
    pub datagrams_received: u64,
    /// Datagram sequence numbers subscribers found skipped.
    pub datagrams_lost: u64,
    /// `lost / (received + lost)`, percent.
    pub datagram_loss_pct: f64,
    pub joins: u64,
    /// Rejoins after a leave or a new session, with the missed events replayed.
    pub rejoins: u64,
    /// Events replayed on those rejoins and on resumes.
    pub replayed: u64,
    /// New sessions (close, connect, rejoin from the last offset).
    pub renewals: u64,
    /// Connections tried again (at the start, and for new sessions) after
    /// the server turned a handshake away or a path was dark.
    pub connect_retries: u64,
    /// Why, for the first few of them.
    pub connect_retry_samples: Vec<String>,
    /// Operations of flaky clients tried again because their connection
    /// was lost under them (as an application would).
    pub retries: u64,
    /// Connections lost to an outage of a flaky path...
    pub disconnects: u64,
    /// ... and sessions resumed after them.
    pub resumes: u64,
    pub outages: u64,

    /// The server's resident memory at the end of warm-up, at the end of
    /// the clean phase, at the end, and at its peak.
    pub rss_warmup_bytes: u64,
    pub rss_clean_end_bytes: u64,
    pub rss_end_bytes: u64,
    pub rss_peak_bytes: u64,
    /// `(end − warm-up) / warm-up`, percent.
    pub rss_growth_pct: f64,
    /// `(end of clean phase − warm-up) / warm-up`, percent (the same as
    /// `rss_growth_pct` without `--attack`).
    pub rss_clean_growth_pct: f64,
    /// Growth over the second half of the clean phase, percent of the
    /// value at its start: near 0 once memory has settled, whatever the
    /// warm-up left to grow.
    pub rss_settled_growth_pct: f64,
    pub rss: Vec<RssSample>,
    /// Server CPU time (user + system) over the run.
    pub server_cpu_s: f64,

    /// The bystander's relay messages sent and back, over the whole run;
    /// its latency in the clean phase and under attack.
    pub relay_sent: u64,
    pub relay_received: u64,
    pub relay_clean: Percentiles,
    pub relay_attack: Option<Percentiles>,
    /// `relay_attack.p99 / relay_clean.p99`.
    pub attack_p99_vs_clean: Option<f64>,
    pub relay_p99_per_second: Vec<SecondP99>,
    /// The raw-UDP echo in the same run.
    pub udp_p50_us: u64,
    pub udp_p99_us: u64,
    pub relay_clean_p50_vs_udp: f64,
    pub relay_clean_p99_vs_udp: f64,

    /// What each attack tried and what the server answered.
    pub attacks: Vec<AttackReport>,

    /// The criteria of issue 9: growth under 5%, no errors, nothing lost,
    /// and (with attacks) the bystander's p99 within 2× its clean p99.
    pub rss_growth_ok: bool,
    pub errors_ok: bool,
    pub attack_p99_ok: Option<bool>,
}

/// Runs one soak.
pub fn run(config: &SoakConfig, progress: &Progress) -> Result<SoakReport, BenchError> {
    config.validate()?;
    progress.step("udp echo");
    let udp = udp_echo(10_000, 1_000, 64, progress)?;
    let (udp_p50, udp_p99) = (udp.value_at_quantile(0.5), udp.value_at_quantile(0.99));
    progress.finish(&format!("p50 {udp_p50} µs, p99 {udp_p99} µs"));

    let data = ScratchDir::new("soak-data")?;
    let server = ServerProcess::start(&ServeOptions {
        data: match config.storage {
            StorageKind::Disk => Some(data.path().join("data")),
            StorageKind::Memory => None,
        },
        extra: config.serve_args.clone(),
        ..ServeOptions::new(config.server_exe.clone())
    })?;
    let options = server.client_options();
    let target = Target {
        addr: options.server,
        ca_pem: match &options.trust {
            quicbus::client::Trust::CaFile(path) => std::fs::read_to_string(path)
                .map_err(BenchError::io(format!("reading {}", path.display())))?,
            _ => return Err(BenchError::Other("the server's CA is not in a file".into())),
        },
    };
    // The flood's Initials are made first: each costs a TLS ClientHello,
    // which would slow the crowd's connecting.
    let initials = if config.attack && config.attacks.contains(&AttackKind::HandshakeFlood) {
        progress.step("capturing Initial packets for the handshake flood");
        let n = config.scaled(FloodConfig::default().initials as f64) as usize;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BenchError::io("starting a runtime"))?;
        let initials = runtime
            .block_on(attack::capture_initials(&target, n))
            .map_err(|e| BenchError::Other(e.to_string()))?;
        progress.finish(&format!("{} packets", initials.len()));
        initials
    } else {
        Vec::new()
    };
    let initials = &initials;
    let tally = Arc::new(Tally::default());
    let cpu_before = server.cpu_seconds()?;

    progress.step(&format!("soak: connecting {} clients", config.clients));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<&'static str, BenchError>>();
    let mut timelines = Vec::new();
    let outcome = std::thread::scope(|scope| {
        // The crowd.
        let (tx, crowd_timeline) = mpsc::channel::<Timeline>();
        timelines.push(tx);
        let crowd = {
            let (ready, tally, options) = (ready_tx.clone(), tally.clone(), options.clone());
            scope.spawn(move || {
                on_own_runtime(ready.clone(), async move {
                    let crowd =
                        Crowd::connect(config, &options, options.server, tally, progress).await;
                    let crowd = match crowd {
                        Ok(crowd) => crowd,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready.send(Ok("crowd"));
                    if let Ok(timeline) = crowd_timeline.recv() {
                        crowd.run(config, timeline).await;
                    }
                })
            })
        };
        // The bystander.
        let (tx, bystander_timeline) = mpsc::channel::<Timeline>();
        timelines.push(tx);
        let bystander = {
            let (ready, options) = (ready_tx.clone(), options.clone());
            scope.spawn(move || {
                on_own_runtime(ready.clone(), async move {
                    let pair = match Bystander::connect(&options).await {
                        Ok(pair) => pair,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return None;
                        }
                    };
                    let _ = ready.send(Ok("bystander"));
                    let timeline = bystander_timeline.recv().ok()?;
                    Some(pair.run(config.bystander_rate, timeline).await)
                })
                .flatten()
            })
        };
        // The attacker.
        let (tx, attack_timeline) = mpsc::channel::<Timeline>();
        timelines.push(tx);
        let attacker = {
            let (ready, target) = (ready_tx.clone(), target.clone());
            scope.spawn(move || {
                on_own_runtime(ready.clone(), async move {
                    let _ = ready.send(Ok("attacker"));
                    match attack_timeline.recv() {
                        Ok(timeline) => attacks(config, &target, initials, timeline).await,
                        Err(_) => Vec::new(),
                    }
                })
                .unwrap_or_default()
            })
        };
        drop(ready_tx);

        // Everyone ready, or the first failure.
        let mut waiting = 3;
        let mut failure = None;
        while waiting > 0 {
            match ready_rx.recv() {
                Ok(Ok(_)) => waiting -= 1,
                Ok(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                Err(_) => {
                    failure = Some(BenchError::Other("a soak thread ended early".into()));
                    break;
                }
            }
        }
        let rss_connected = server.rss();
        // Dropping the timeline senders lets every thread end.
        if let Some(e) = failure {
            timelines.clear();
            let _ = (crowd.join(), bystander.join(), attacker.join());
            return Err(e);
        }
        progress.finish(&format!(
            "server RSS {:.1} MB",
            rss_connected.as_ref().map_or(0.0, |b| *b as f64 / 1e6)
        ));
        let timeline = Timeline::new(config, Instant::now());
        for tx in timelines.drain(..) {
            let _ = tx.send(timeline);
        }
        progress.step(&format!(
            "soak: {} clients for {:?}{}",
            config.clients,
            config.duration,
            if config.attack {
                ", attacks in the second half"
            } else {
                ""
            }
        ));
        let rss = sample_rss(&server, &timeline, progress);
        let _ = crowd.join();
        let measured = bystander
            .join()
            .map_err(|_| BenchError::Other("the bystander thread panicked".into()))?;
        let attacks = attacker
            .join()
            .map_err(|_| BenchError::Other("the attacker thread panicked".into()))?;
        Ok((timeline, rss, measured, attacks))
    });
    let (timeline, rss, measured, attacks) = outcome?;
    let measured = measured.ok_or_else(|| BenchError::Other("the bystander did not run".into()))?;
    let cpu = server.cpu_seconds().unwrap_or(cpu_before) - cpu_before;
    drop(server);
    drop(data);
    let report = build_report(
        config,
        &timeline,
        rss,
        &tally,
        measured,
        attacks,
        (udp_p50, udp_p99),
        cpu,
    );
    progress.finish(&format!(
        "{} errors, {} reliable events delivered ({} missing), RSS growth {:.1}%",
        report.errors, report.reliable_delivered, report.reliable_missing, report.rss_growth_pct
    ));
    Ok(report)
}

/// Runs `work` on a current-thread runtime of this thread; a runtime that
/// cannot start is reported on `ready`.
fn on_own_runtime<T>(
    ready: mpsc::Sender<Result<&'static str, BenchError>>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime.block_on(work)),
        Err(e) => {
            let _ = ready.send(Err(BenchError::io("starting a soak runtime")(e)));
            None
        }
    }
}

/// The server's resident memory once a second until the run stops.
fn sample_rss(server: &ServerProcess, timeline: &Timeline, progress: &Progress) -> Vec<RssSample> {
    let mut samples = Vec::new();
    let total = timeline
        .stop
        .duration_since(timeline.start)
        .as_secs()
        .max(1);
    let mut next = timeline.start;
    // Bounded: one sample a second until stop.
    while next <= timeline.stop {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t = timeline.start.elapsed();
        if let Ok(bytes) = server.rss() {
            samples.push(RssSample {
                t_s: (t.as_secs_f64() * 10.0).round() / 10.0,
                bytes,
            });
        }
        progress.tick(t.as_secs().min(total), total);
        next += Duration::from_secs(1);
    }
    samples
}

/// Every attack, each repeated in its own task from the start of the
/// attack phase until the run stops.
async fn attacks(
    config: &SoakConfig,
    target: &Target,
    initials: &[bytes::Bytes],
    timeline: Timeline,
) -> Vec<AttackReport> {
    let Some(attack_at) = timeline.attack else {
        return Vec::new();
    };
    tokio::time::sleep_until(attack_at.into()).await;
    let stop = timeline.stop;
    let left = move || stop.saturating_duration_since(Instant::now());
    let s = |full: f64| config.scaled(full);
    let flood = FloodConfig {
        initials: initials.len(),
        ..FloodConfig::default()
    };
    let rooms = RoomFloodConfig {
        rooms: s(100_000.0),
        ..RoomFloodConfig::default()
    };
    let hog = HogConfig {
        rooms: s(20.0) as usize,
        bytes_per_room: s(64.0 * 1024.0 * 1024.0),
        ..HogConfig::default()
    };
    let half = HalfSentConfig {
        streams: s(100.0) as usize,
        ..HalfSentConfig::default()
    };
    let hellos = PartialHelloConfig {
        connections: s(40.0) as usize,
        ..PartialHelloConfig::default()
    };
    let takeover = TakeoverConfig {
        attempts: s(10.0) as usize,
    };
    let on = |kind: AttackKind, rounds: usize| {
        if config.attacks.contains(&kind) {
            rounds
        } else {
            0
        }
    };
    let (flood_r, rooms_r, hog_r, half_r, hellos_r, takeover_r) = tokio::join!(
        repeat(
            "handshake-flood",
            stop,
            on(AttackKind::HandshakeFlood, usize::MAX),
            |_| { attack::handshake_flood(target, initials, &flood) }
        ),
        repeat(
            "room-flood",
            stop,
            on(AttackKind::RoomFlood, usize::MAX),
            |_| {
                let c = RoomFloodConfig {
                    time_limit: left(),
                    ..rooms.clone()
                };
                async move { attack::room_flood(target, &c).await }
            }
        ),
        repeat("history-hog", stop, on(AttackKind::HistoryHog, 1), |_| {
            let c = HogConfig {
                time_limit: left(),
                ..hog.clone()
            };
            async move { attack::history_hog(target, &c).await }
        }),
        repeat(
            "half-sent-frames",
            stop,
            on(AttackKind::HalfSentFrames, usize::MAX),
            |_| {
                let c = HalfSentConfig {
                    hold: left().min(half.hold),
                    ..half.clone()
                };
                async move { attack::half_sent_frames(target, &c).await }
            }
        ),
        repeat(
            "partial-hellos",
            stop,
            on(AttackKind::PartialHellos, usize::MAX),
            |_| {
                let c = PartialHelloConfig {
                    hold: left().min(hellos.hold),
                    ..hellos.clone()
                };
                async move { attack::partial_hellos(target, &c).await }
            }
        ),
        repeat(
            "session-takeover",
            stop,
            on(AttackKind::SessionTakeover, usize::MAX),
            |_| { attack::session_takeover(target, &takeover) }
        ),
    );
    let mut reports = vec![flood_r, rooms_r, hog_r, half_r, hellos_r, takeover_r];
    reports.retain(|r| config.attacks.iter().any(|k| k.name() == r.name));
    reports
}

/// Runs an attack round after round (at most one a second) until `stop`
/// or `max_rounds`, adding up the answers.
async fn repeat<F, Fut>(name: &str, stop: Instant, max_rounds: usize, mut round: F) -> AttackReport
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<AttackReport, attack::AttackError>>,
{
    let mut total: Option<AttackReport> = None;
    let mut rounds = 0;
    // Bounded by `stop` and `max_rounds`; each round is bounded in time.
    while rounds < max_rounds && Instant::now() + Duration::from_millis(500) < stop {
        let began = Instant::now();
        let report = match round(rounds).await {
            Ok(report) => report,
            Err(e) => {
                let mut failed = AttackReport {
                    name: name.to_string(),
                    rounds: 1,
                    ..AttackReport::default()
                };
                failed.answers.insert(format!("attack failed: {e}"), 1);
                failed
            }
        };
        match total.as_mut() {
            Some(t) => t.merge(&report),
            None => total = Some(report),
        }
        rounds += 1;
        let pause = Duration::from_secs(1).saturating_sub(began.elapsed());
        tokio::time::sleep(pause).await;
    }
    total.unwrap_or_else(|| AttackReport {
        name: name.to_string(),
        ..AttackReport::default()
    })
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    config: &SoakConfig,
    timeline: &Timeline,
    rss: Vec<RssSample>,
    tally: &Tally,
    mut measured: Measured,
    attacks: Vec<AttackReport>,
    (udp_p50, udp_p99): (u64, u64),
    cpu: f64,
) -> SoakReport {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    for e in measured.errors.drain(..) {
        tally.error(e);
    }
    let since = |at: Instant| at.duration_since(timeline.start).as_secs_f64();
    let at_or_after = |t: f64| {
        rss.iter()
            .find(|s| s.t_s >= t)
            .or(rss.last())
            .map_or(0, |s| s.bytes)
    };
    let rss_warmup = at_or_after(since(timeline.warmed));
    let rss_end = rss.last().map_or(0, |s| s.bytes);
    let rss_clean_end = match timeline.attack {
        Some(at) => rss
            .iter()
            .rev()
            .find(|s| s.t_s <= since(at))
            .map_or(rss_end, |s| s.bytes),
        None => rss_end,
    };
    let growth_from = |from: u64, to: u64| {
        if from == 0 {
            0.0
        } else {
            ((to as f64 - from as f64) / from as f64 * 1000.0).round() / 10.0
        }
    };
    let growth = |to: u64| growth_from(rss_warmup, to);
    let clean_end = timeline.attack.unwrap_or(timeline.stop);
    let settled_from = at_or_after(since(timeline.warmed + (clean_end - timeline.warmed) / 2));
    let clean = Percentiles::of(&measured.clean);
    let attack = timeline.attack.map(|_| Percentiles::of(&measured.attack));
    let attack_ratio = attack.map(|a| ratio2(a.p99_us, clean.p99_us));
    let (received, lost) = (get(&tally.datagrams_received), get(&tally.datagrams_lost));
    let errors = get(&tally.errors);
    let missing = get(&tally.missing);
    let (duplicates, out_of_order) = (get(&tally.duplicates), get(&tally.out_of_order));
    let rss_growth_pct = growth(rss_end);
    let rss_clean_growth_pct = growth(rss_clean_end);
    SoakReport {
        name: if config.attack { "soak-attack" } else { "soak" }.into(),
        clients: config.clients,
        rooms: config.rooms,
        rooms_per_client: config.rooms_per_client,
        duration_s: config.duration.as_secs_f64(),
        warmup_s: config.warmup.as_secs_f64(),
        attack: config.attack,
        storage: config.storage.name().into(),
        serve_args: config.serve_args.clone(),
        errors,
        error_samples: tally
            .error_samples
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
        reliable_published: get(&tally.published),
        reliable_delivered: get(&tally.delivered),
        reliable_missing: missing,
        reliable_duplicates: duplicates,
        reliable_out_of_order: out_of_order,
        delivery_complete: missing == 0 && duplicates == 0 && out_of_order == 0,
        datagrams_sent: get(&tally.datagrams_sent),
        datagrams_unsent: get(&tally.datagrams_unsent),
        datagrams_received: received,
        datagrams_lost: lost,
        datagram_loss_pct: if received + lost == 0 {
            0.0
        } else {
            (lost as f64 * 10_000.0 / (received + lost) as f64).round() / 100.0
        },
        joins: get(&tally.joins),
        rejoins: get(&tally.rejoins),
        replayed: get(&tally.replayed),
        renewals: get(&tally.renewals),
        retries: get(&tally.retries),
        connect_retries: get(&tally.connect_retries),
        connect_retry_samples: tally
            .connect_retry_samples
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default(),
        disconnects: get(&tally.disconnects),
        resumes: get(&tally.resumes),
        outages: get(&tally.outages),
        rss_warmup_bytes: rss_warmup,
        rss_clean_end_bytes: rss_clean_end,
        rss_end_bytes: rss_end,
        rss_peak_bytes: rss.iter().map(|s| s.bytes).max().unwrap_or(0),
        rss_growth_pct,
        rss_clean_growth_pct,
        rss_settled_growth_pct: growth_from(settled_from, rss_clean_end),
        rss,
        server_cpu_s: (cpu * 100.0).round() / 100.0,
        relay_sent: measured.sent,
        relay_received: measured.received,
        relay_clean: clean,
        relay_attack: attack,
        attack_p99_vs_clean: attack_ratio,
        relay_p99_per_second: measured
            .per_second
            .iter()
            .map(|(&t_s, h)| SecondP99 {
                t_s,
                p99_us: h.value_at_quantile(0.99),
                messages: h.len(),
            })
            .collect(),
        udp_p50_us: udp_p50,
        udp_p99_us: udp_p99,
        relay_clean_p50_vs_udp: ratio(clean.p50_us, udp_p50),
        relay_clean_p99_vs_udp: ratio(clean.p99_us, udp_p50),
        attacks,
        rss_growth_ok: rss_clean_growth_pct < RSS_GROWTH_LIMIT_PCT,
        errors_ok: errors == 0,
        attack_p99_ok: attack_ratio.map(|r| r <= ATTACK_P99_LIMIT),
    }
}

/// `value / base` to two decimals; 0 without a base.
fn ratio2(value: u64, base: u64) -> f64 {
    if base == 0 {
        return 0.0;
    }
    (value as f64 / base as f64 * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attack_phase_is_the_second_half_after_warmup() {
        let mut config = SoakConfig::new(PathBuf::from("quicbus"));
        config.attack = true;
        let start = Instant::now();
        let t = Timeline::new(&config, start);
        assert_eq!(t.warmed - start, Duration::from_secs(10));
        assert_eq!(t.attack.map(|a| a - start), Some(Duration::from_secs(35)));
        assert_eq!(t.stop - start, Duration::from_secs(60));
        config.attack = false;
        assert!(Timeline::new(&config, start).attack.is_none());
    }

    #[test]
    fn config_is_checked() {
        let ok = SoakConfig::new(PathBuf::from("quicbus"));
        assert!(ok.validate().is_ok());
        for bad in [
            SoakConfig {
                clients: 0,
                ..ok.clone()
            },
            SoakConfig {
                rooms_per_client: 300,
                ..ok.clone()
            },
            SoakConfig {
                warmup: Duration::from_secs(60),
                ..ok.clone()
            },
            SoakConfig {
                attack_scale: 0.0,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(ok.scaled(100_000.0), 100_000);
        let small = SoakConfig {
            attack_scale: 0.001,
            ..ok
        };
        assert_eq!(small.scaled(40.0), 1);
    }
}
