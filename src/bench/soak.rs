//! `quicbus bench soak`: a crowd of well-behaved clients for a set time,
//! with or without attacks in the background, against a `quicbus serve`
//! child process.
//!
//! Three threads, each with its own current-thread runtime, share the
//! timeline of the run ([`Timeline`]):
//!
//! - the crowd ([`crowd`], each client a [`member`]): N clients over shared
//!   endpoints joining, publishing reliable events and datagrams, leaving
//!   and rejoining, new sessions, and (a tenth of them, behind flaky
//!   paths) losing their connection and resuming; every reliable event is
//!   checked ([`checks`]);
//! - the bystander ([`bystander`]): one more pair whose relay latency is
//!   measured all through, per phase and per second;
//! - the attacker ([`attacker`], with `--attack`): the attacks of
//!   [`super::attack`], repeated from the start of the attack phase to the
//!   end of the run.
//!
//! The calling thread samples the server's resident memory once a second.
//! The run is: warm-up, then the clean phase, then (with `--attack`) the
//! attack phase, which takes the second half of the time after warm-up.
//! Memory growth is taken from the end of warm-up, so the first
//! allocations of a thousand connections do not count as a leak.
//! [`report`] puts it all together; [`plot`] draws it.

mod attacker;
mod bystander;
mod checks;
mod crowd;
mod member;
pub mod plot;
mod report;

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::attack::{self, FloodConfig};
use super::scratch::ScratchDir;
use super::server_process::{ServeOptions, ServerProcess};
use super::{udp_echo, BenchError, Progress, StorageKind};
use attacker::attacks;
use bystander::Bystander;
use checks::Tally;
use crowd::Crowd;
use report::build_report;
pub use report::{RssSample, SoakReport};

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
    let target = server.attack_target()?;
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
