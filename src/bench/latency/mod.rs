//! `quicbus bench latency`: how long an event takes, reliable vs datagram,
//! clean and under loss, beside a raw-UDP echo measured in the same run.
//!
//! Layout: the server runs on its own thread and runtime (current-thread by
//! default, as `quicbus serve`: [`local_server`]); both clients and, for the
//! netsim scenarios, the impairment proxy share one current-thread runtime
//! on the calling thread ([`pair`]). Every message carries its sequence
//! number in its first 8 bytes, and its latency runs from the moment it is
//! handed to the client library to its receipt:
//!
//! - one in flight (the default): each message is sent when the previous one
//!   has arrived, or, for a datagram, when it was given up as lost after
//!   [`LatencyConfig::loss_timeout`];
//! - paced (`rate`): message `i` is due at `start + i / rate` whether or not
//!   earlier ones have arrived, and is timed from then. The sender never
//!   waits for the bus (an emit only queues), so a stall of the bus delays
//!   every message behind it and the figures show it: no coordinated
//!   omission.
//!
//! **Storages.** A scenario measured on several storages (history on disk,
//! as `serve` runs by default, and in memory) gets a server and a pair of
//! clients for each. One in flight, the pairs take turns in blocks of
//! [`BLOCK`] messages, so every storage sees the same moments of a noisy
//! machine and the rows compare; paced, each pair runs its whole schedule
//! in turn.
//!
//! **Token checks.** Likewise a scenario may be measured with the server
//! checking signed tokens and without (`--auth off,on`): each storage then
//! gets two servers, one of them with HS256 tokens and clients whose tokens
//! allow just what they do ([`auth`]), and all of them take turns. The
//! issue's target: the relay's p50 with checks within
//! [`AUTH_P50_LIMIT`] of the one without, in the same run.
//!
//! **Cluster.** With [`LatencyConfig::cluster`], the run then starts its
//! own NATS and two `serve --cluster` nodes and adds a core-NATS relay row
//! and the relay across the nodes ([`cross_node`]), on loopback only.

mod auth;
mod cross_node;
mod local_server;
mod pair;

use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cluster::ClusterOptions;
use super::{curve, histogram, ratio, udp_echo, BenchError, Percentiles, Progress, StorageKind};
use auth::PairTokens;
pub use cross_node::{CLUSTER_RELAY, NATS_RELAY};
use local_server::LocalServer;
use pair::{Joined, Pair};
use quicbus::netsim::{Impairment, Netsim, NetsimConfig, NetsimHandle};

/// Messages measured on one server before the next one's turn.
pub const BLOCK: u64 = 500;

/// The largest p50 with token checks, as a multiple of the p50 without in
/// the same run, that meets the target of the issue: checks do not cost
/// the hot path.
pub const AUTH_P50_LIMIT: f64 = 1.05;

/// Which measurements a run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A → server → B → server → A, direct on loopback.
    Relay,
    /// Publisher → server → subscriber, direct on loopback.
    Oneway,
    /// The relay through netsim at each loss level, with the configured
    /// delay and jitter.
    Loss,
}

/// How events travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// On the room's QUIC stream.
    Reliable,
    /// On the stream and as a datagram copy ([`ClientOptions::copies`]).
    Copies,
    /// As QUIC datagrams.
    Datagram,
}

impl Kind {
    /// `reliable` or `datagram`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Reliable => "reliable",
            Kind::Copies => "reliable+copies",
            Kind::Datagram => "datagram",
        }
    }

    /// Whether every event must arrive (stream delivery).
    pub fn is_reliable(self) -> bool {
        self != Kind::Datagram
    }
}

/// Whether the measured server checks signed tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No token checks (`serve` without `--auth-*`): everything allowed.
    Off,
    /// HS256 tokens (`serve --auth-secret-file`), every client with its own.
    On,
}

impl AuthMode {
    /// `off` or `on`, as in the JSON and the table.
    pub fn name(self) -> &'static str {
        match self {
            AuthMode::Off => "off",
            AuthMode::On => "on",
        }
    }
}

/// One measured server of a scenario: its storage and token checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub storage: StorageKind,
    pub auth: AuthMode,
}

impl Variant {
    /// `memory`, `disk+auth`: the storage, and whether tokens are checked.
    pub fn label(self) -> String {
        match self.auth {
            AuthMode::Off => self.storage.name().to_string(),
            AuthMode::On => format!("{}+auth", self.storage.name()),
        }
    }
}

/// Settings of a latency run.
#[derive(Debug, Clone)]
pub struct LatencyConfig {
    /// Measured messages per scenario and delivery kind.
    pub samples: u64,
    /// Messages before measuring (connections and caches warm up).
    pub warmup: u64,
    /// Payload bytes (at least 8: the sequence number).
    pub size: usize,
    /// What to measure, in order.
    pub scenarios: Vec<Scenario>,
    /// Loss levels of [`Scenario::Loss`], in percent per packet and direction.
    pub loss_levels: Vec<f64>,
    /// One-way delay netsim adds to every packet in each direction.
    pub delay: Duration,
    /// Each netsim delay varies within `delay ± jitter`.
    pub jitter: Duration,
    /// Paced sending at this many messages per second; `None` = one in flight.
    pub rate: Option<f64>,
    /// A datagram not back after this long counts as lost. `None` picks
    /// 5 ms plus twice the path's worst added delay.
    pub loss_timeout: Option<Duration>,
    /// Server worker threads; 0 = current-thread runtime.
    pub server_threads: usize,
    /// Seed of netsim's random decisions.
    pub seed: u64,
    /// Also measure reliable events sent with datagram copies.
    pub copies: bool,
    /// Where the server keeps history, for every scenario; `None` runs the
    /// relay on disk and in memory and the other scenarios on disk.
    pub storage: Option<Vec<StorageKind>>,
    /// Token checks measured, for every scenario and storage (`Off` only
    /// by default).
    pub auth: Vec<AuthMode>,
    /// Also measure a relay across two `serve --cluster` nodes and a
    /// core-NATS relay on the bench's own NATS ([`cross_node`]).
    pub cluster: Option<ClusterOptions>,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig {
            samples: 20_000,
            warmup: 2_000,
            size: 64,
            scenarios: vec![Scenario::Relay, Scenario::Oneway, Scenario::Loss],
            loss_levels: vec![0.0, 1.0, 5.0],
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate: None,
            loss_timeout: None,
            server_threads: 0,
            seed: 1,
            copies: true,
            storage: None,
            auth: vec![AuthMode::Off],
            cluster: None,
        }
    }
}

impl LatencyConfig {
    fn kinds(&self) -> Vec<Kind> {
        if self.copies {
            vec![Kind::Reliable, Kind::Copies, Kind::Datagram]
        } else {
            vec![Kind::Reliable, Kind::Datagram]
        }
    }

    /// The storages `scenario` runs on, in order.
    pub fn storages_for(&self, scenario: Scenario) -> Vec<StorageKind> {
        match &self.storage {
            Some(list) => list.clone(),
            None if scenario == Scenario::Relay => vec![StorageKind::Disk, StorageKind::Memory],
            None => vec![StorageKind::Disk],
        }
    }

    /// The servers `scenario` runs on, in order: per storage, per token
    /// check.
    pub fn variants_for(&self, scenario: Scenario) -> Vec<Variant> {
        let mut variants = Vec::new();
        for storage in self.storages_for(scenario) {
            for &auth in &self.auth {
                variants.push(Variant { storage, auth });
            }
        }
        variants
    }

    /// Checks the settings before anything starts.
    pub fn validate(&self) -> Result<(), BenchError> {
        let fail = |m: String| Err(BenchError::Other(m));
        if self.samples == 0 {
            return fail("--samples must be at least 1".into());
        }
        if self.storage.as_ref().is_some_and(Vec::is_empty) {
            return fail("no storage chosen".into());
        }
        if self.auth.is_empty() {
            return fail("no auth mode chosen".into());
        }
        if self.size < 8 {
            return fail(format!(
                "--size {} is too small: each message carries an 8-byte sequence number",
                self.size
            ));
        }
        if self.scenarios.is_empty() {
            return fail("no scenario chosen".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
                return fail(format!(
                    "--rate {rate} must be from 0 to 1,000,000 per second"
                ));
            }
        }
        for &loss in &self.loss_levels {
            let imp = Impairment {
                loss_pct: loss,
                delay: self.delay,
                jitter: self.jitter,
                ..Impairment::default()
            };
            imp.validate()
                .map_err(|e| BenchError::Other(e.to_string()))?;
        }
        Ok(())
    }

    fn loss_timeout_for(&self, through_netsim: bool) -> Duration {
        self.loss_timeout.unwrap_or_else(|| {
            let added = if through_netsim {
                // The relay crosses netsim four times.
                (self.delay + self.jitter) * 4
            } else {
                Duration::ZERO
            };
            Duration::from_millis(5) + added * 2
        })
    }
}

/// One scenario and delivery kind: the JSON object and the table row.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    /// `udp-echo`, `relay`, `oneway`, `netsim-loss<N>`, `nats-relay` or
    /// `cluster-relay`.
    pub name: String,
    /// `udp`, `reliable`, `reliable+copies`, `datagram` or `core-nats`.
    pub delivery: String,
    /// Where the server kept history: `disk` (fsync `interval`, `serve`'s
    /// default), `memory` or `jetstream` (the cluster's stream); `none`
    /// for the UDP echo and core NATS.
    pub storage: String,
    /// Whether the server checked signed tokens: `off` or `on`; `none` for
    /// the UDP echo and core NATS.
    pub auth: String,
    /// Loss netsim applied per packet and direction (0 without netsim).
    pub loss_pct: f64,
    /// One-way delay netsim added per crossing, ms.
    pub delay_ms: f64,
    /// Jitter netsim added per crossing, ms.
    pub jitter_ms: f64,
    /// Measured messages sent.
    pub sent: u64,
    /// Measured messages that arrived.
    pub delivered: u64,
    /// Reliable messages that arrived twice or out of order: always 0
    /// unless the bus is broken.
    pub misordered: u64,
    #[serde(flatten)]
    pub latency: Percentiles,
    /// The raw-UDP echo's p50 in the same run.
    pub udp_p50_us: u64,
    /// `p50_us / udp_p50_us`.
    pub p50_vs_udp: f64,
    /// `p99_us / udp_p50_us`.
    pub p99_vs_udp: f64,
    /// The latency-percentile curve, for the plot.
    #[serde(skip)]
    pub curve: Vec<(f64, u64)>,
}

impl LatencyRow {
    fn measured(name: &str, kind: Kind, variant: Variant, m: &Measured, udp_p50: u64) -> Self {
        LatencyRow {
            misordered: m.misordered,
            storage: variant.storage.name().to_string(),
            auth: variant.auth.name().to_string(),
            ..LatencyRow::new(name, kind.name(), &m.histogram, m.sent, udp_p50)
        }
    }

    fn new(name: &str, delivery: &str, h: &Histogram<u64>, sent: u64, udp_p50: u64) -> Self {
        let latency = Percentiles::of(h);
        let misordered = 0;
        LatencyRow {
            name: name.to_string(),
            delivery: delivery.to_string(),
            storage: "none".to_string(),
            auth: "none".to_string(),
            loss_pct: 0.0,
            delay_ms: 0.0,
            jitter_ms: 0.0,
            sent,
            delivered: h.len(),
            misordered,
            latency,
            udp_p50_us: udp_p50,
            p50_vs_udp: ratio(latency.p50_us, udp_p50),
            p99_vs_udp: ratio(latency.p99_us, udp_p50),
            curve: curve(h),
        }
    }
}

/// Runs every configured scenario; the first row is the UDP baseline.
pub fn run(config: &LatencyConfig, progress: &Progress) -> Result<Vec<LatencyRow>, BenchError> {
    config.validate()?;
    progress.step("udp echo");
    let udp = udp_echo(config.samples, config.warmup, config.size, progress)?;
    let udp_p50 = udp.value_at_quantile(0.5);
    let baseline = LatencyRow::new("udp-echo", "udp", &udp, config.samples, udp_p50);
    progress.finish(&format!("p50 {} µs", baseline.latency.p50_us));

    let dev = quicbus::certs::generate(&[]).map_err(|e| BenchError::Other(e.to_string()))?;
    let clients = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("starting the client runtime"))?;
    let mut rows = vec![baseline];
    for &scenario in &config.scenarios {
        let mut servers = Vec::new();
        for variant in config.variants_for(scenario) {
            servers.push(LocalServer::start(config, variant, &dev)?);
        }
        let result = clients.block_on(scenario_rows(
            config,
            scenario,
            &servers,
            &dev.ca_pem,
            udp_p50,
            progress,
        ));
        drop(servers);
        rows.extend(result?);
    }
    if let Some(cluster) = &config.cluster {
        rows.extend(cross_node::rows(
            config, cluster, &clients, udp_p50, progress,
        )?);
    }
    Ok(rows)
}

/// The rows of one scenario: per loss level (netsim) and delivery, one row
/// per server.
async fn scenario_rows(
    config: &LatencyConfig,
    scenario: Scenario,
    servers: &[LocalServer],
    ca_pem: &str,
    udp_p50: u64,
    progress: &Progress,
) -> Result<Vec<LatencyRow>, BenchError> {
    let levels: Vec<(String, Option<f64>)> = match scenario {
        Scenario::Relay => vec![("relay".into(), None)],
        Scenario::Oneway => vec![("oneway".into(), None)],
        Scenario::Loss => config
            .loss_levels
            .iter()
            .map(|&loss| (format!("netsim-loss{loss}"), Some(loss)))
            .collect(),
    };
    let relay = scenario != Scenario::Oneway;
    let labels: Vec<String> = servers.iter().map(|s| s.variant.label()).collect();
    let mut rows = Vec::new();
    for (name, loss) in levels {
        for kind in config.kinds() {
            progress.step(&format!("{name} {} ({})", kind.name(), labels.join(", ")));
            let mut netsims = Vec::new();
            let mut pairs = Vec::new();
            let mut measured = Ok(Vec::new());
            for server in servers {
                let tokens = match server.pair_tokens(relay) {
                    Ok(tokens) => tokens,
                    Err(e) => {
                        measured = Err(e);
                        break;
                    }
                };
                let joined = joined_pair(config, server.addr, loss, ca_pem, tokens, kind, relay);
                match joined.await {
                    Ok((pair, netsim)) => {
                        pairs.push(pair);
                        netsims.extend(netsim);
                    }
                    Err(e) => {
                        measured = Err(e);
                        break;
                    }
                }
            }
            if measured.is_ok() {
                let timeout = config.loss_timeout_for(loss.is_some());
                measured = measure_all(config, &mut pairs, timeout, progress).await;
            }
            for pair in pairs {
                pair.close().await;
            }
            for netsim in netsims {
                netsim.shutdown().await;
            }
            let mut summaries = Vec::new();
            for (server, m) in servers.iter().zip(measured?) {
                let mut row = LatencyRow::measured(&name, kind, server.variant, &m, udp_p50);
                if let Some(loss) = loss {
                    row.loss_pct = loss;
                    row.delay_ms = config.delay.as_secs_f64() * 1000.0;
                    row.jitter_ms = config.jitter.as_secs_f64() * 1000.0;
                }
                summaries.push(format!("{}: {}", server.variant.label(), summary(&row)));
                rows.push(row);
            }
            progress.finish(&summaries.join("; "));
        }
    }
    Ok(rows)
}

/// Two clients of `server` (through netsim at `loss`, if given; with
/// `tokens`, if it checks them) with their rooms joined, and the netsim.
async fn joined_pair(
    config: &LatencyConfig,
    server: SocketAddr,
    loss: Option<f64>,
    ca_pem: &str,
    tokens: Option<PairTokens>,
    kind: Kind,
    relay: bool,
) -> Result<(Joined, Option<NetsimHandle>), BenchError> {
    let netsim = match loss {
        Some(loss) => Some(impaired(config, server, loss).await?),
        None => None,
    };
    let addr = netsim.as_ref().map_or(server, NetsimHandle::local_addr);
    let joined = match Pair::connect(addr, ca_pem, kind, tokens).await {
        Ok(pair) => pair.join(kind, relay).await,
        Err(e) => Err(e),
    };
    match joined {
        Ok(joined) => Ok((joined, netsim)),
        Err(e) => {
            if let Some(netsim) = netsim {
                netsim.shutdown().await;
            }
            Err(e)
        }
    }
}

/// Warms up and measures every pair. One in flight, the pairs take turns
/// in blocks of [`BLOCK`] messages; paced, each runs its schedule in turn.
async fn measure_all(
    config: &LatencyConfig,
    pairs: &mut [Joined],
    loss_timeout: Duration,
    progress: &Progress,
) -> Result<Vec<Measured>, BenchError> {
    let mut histograms: Vec<Histogram<u64>> = pairs.iter().map(|_| histogram()).collect();
    match config.rate {
        None => {
            let total = (config.warmup + config.samples) * pairs.len() as u64;
            let mut done = 0;
            for pair in pairs.iter_mut() {
                pair.one_in_flight(config.warmup, config.size, loss_timeout, None)
                    .await?;
                done += config.warmup;
                progress.tick(done, total);
            }
            let mut left = config.samples;
            while left > 0 {
                let n = left.min(BLOCK);
                for (pair, h) in pairs.iter_mut().zip(histograms.iter_mut()) {
                    pair.one_in_flight(n, config.size, loss_timeout, Some(h))
                        .await?;
                    done += n;
                    progress.tick(done, total);
                }
                left -= n;
            }
        }
        Some(rate) => {
            for (pair, h) in pairs.iter_mut().zip(histograms.iter_mut()) {
                *h = pair.paced(config, rate, loss_timeout, progress).await?;
            }
        }
    }
    Ok(pairs
        .iter()
        .zip(histograms)
        .map(|(pair, histogram)| Measured {
            histogram,
            sent: config.samples,
            misordered: pair.misordered,
        })
        .collect())
}

fn summary(row: &LatencyRow) -> String {
    format!(
        "p50 {} µs, p99 {} µs, {}/{} delivered",
        row.latency.p50_us, row.latency.p99_us, row.delivered, row.sent
    )
}

/// netsim in front of `server`, impairing both directions alike.
async fn impaired(
    config: &LatencyConfig,
    server: SocketAddr,
    loss: f64,
) -> Result<NetsimHandle, BenchError> {
    let impairment = Impairment {
        loss_pct: loss,
        delay: config.delay,
        jitter: config.jitter,
        ..Impairment::default()
    };
    let mut netsim = NetsimConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), server);
    netsim.up = impairment;
    netsim.down = impairment;
    netsim.seed = config.seed;
    Netsim::start(netsim)
        .await
        .map_err(|e| BenchError::Other(format!("starting netsim: {e}")))
}

/// What one scenario, delivery and server measured.
struct Measured {
    histogram: Histogram<u64>,
    /// Measured messages sent.
    sent: u64,
    /// Reliable messages that arrived twice or out of order (must be 0).
    misordered: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        assert!(LatencyConfig::default().validate().is_ok());
        let bad = [
            LatencyConfig {
                size: 7,
                ..LatencyConfig::default()
            },
            LatencyConfig {
                samples: 0,
                ..LatencyConfig::default()
            },
            LatencyConfig {
                rate: Some(0.0),
                ..LatencyConfig::default()
            },
            LatencyConfig {
                loss_levels: vec![101.0],
                ..LatencyConfig::default()
            },
            LatencyConfig {
                scenarios: vec![],
                ..LatencyConfig::default()
            },
            LatencyConfig {
                storage: Some(vec![]),
                ..LatencyConfig::default()
            },
            LatencyConfig {
                auth: vec![],
                ..LatencyConfig::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn the_relay_runs_on_disk_and_memory_unless_told() {
        let c = LatencyConfig::default();
        let both = vec![StorageKind::Disk, StorageKind::Memory];
        assert_eq!(c.storages_for(Scenario::Relay), both);
        assert_eq!(c.storages_for(Scenario::Oneway), vec![StorageKind::Disk]);
        assert_eq!(c.storages_for(Scenario::Loss), vec![StorageKind::Disk]);
        let memory = LatencyConfig {
            storage: Some(vec![StorageKind::Memory]),
            ..LatencyConfig::default()
        };
        assert_eq!(
            memory.storages_for(Scenario::Relay),
            vec![StorageKind::Memory]
        );
        assert_eq!(
            memory.storages_for(Scenario::Loss),
            vec![StorageKind::Memory]
        );
    }

    #[test]
    fn token_checks_are_off_unless_told_and_vary_within_each_storage() {
        let off = |storage| Variant {
            storage,
            auth: AuthMode::Off,
        };
        let on = |storage| Variant {
            storage,
            auth: AuthMode::On,
        };
        let c = LatencyConfig::default();
        assert_eq!(
            c.variants_for(Scenario::Relay),
            vec![off(StorageKind::Disk), off(StorageKind::Memory)]
        );
        let both = LatencyConfig {
            auth: vec![AuthMode::Off, AuthMode::On],
            ..LatencyConfig::default()
        };
        assert_eq!(
            both.variants_for(Scenario::Relay),
            vec![
                off(StorageKind::Disk),
                on(StorageKind::Disk),
                off(StorageKind::Memory),
                on(StorageKind::Memory)
            ]
        );
        assert_eq!(
            both.variants_for(Scenario::Oneway),
            vec![off(StorageKind::Disk), on(StorageKind::Disk)]
        );
        assert_eq!(on(StorageKind::Memory).label(), "memory+auth");
        assert_eq!(off(StorageKind::Disk).label(), "disk");
    }

    #[test]
    fn loss_timeout_grows_with_the_added_delay() {
        let c = LatencyConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            ..LatencyConfig::default()
        };
        assert_eq!(c.loss_timeout_for(false), Duration::from_millis(5));
        assert_eq!(c.loss_timeout_for(true), Duration::from_millis(5 + 96));
    }
}
