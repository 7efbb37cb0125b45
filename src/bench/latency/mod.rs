//! `quicbus bench latency`: how long an event takes, reliable vs datagram,
//! clean and under loss, beside a raw-UDP echo measured in the same run.
//!
//! Layout: the server runs on its own thread and runtime (current-thread by
//! default, as `quicbus serve`); both clients and, for the netsim scenarios,
//! the impairment proxy share one current-thread runtime on the calling
//! thread. A scenario measured on several storages (durable history on
//! disk, as `serve` runs by default, and memory) gets a server for each,
//! and measures each delivery on them one after the other, so the rows
//! compared were taken moments apart. Every message carries its sequence number in its first 8 bytes,
//! and its latency runs from the moment it is handed to the client library
//! to its receipt:
//!
//! - one in flight (the default): each message is sent when the previous one
//!   has arrived, or, for a datagram, when it was given up as lost after
//!   [`LatencyConfig::loss_timeout`];
//! - paced (`rate`): message `i` is due at `start + i / rate` whether or not
//!   earlier ones have arrived. The sender never waits for the bus (an emit
//!   only queues), so a stall of the bus delays every message behind it and
//!   the figures show it: no coordinated omission. The clock starts when the
//!   message is handed over rather than at its due time only to leave out
//!   the lateness of the benchmark's own timer (Tokio's is 1 ms coarse).

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::scratch::ScratchDir;
use super::{
    curve, histogram, ratio, record, udp_echo, BenchError, Percentiles, Progress, StorageKind,
};
use quicbus::certs::DevCerts;
use quicbus::client::{Client, ClientOptions, Delivery, Events, Trust};
use quicbus::netsim::{Impairment, Netsim, NetsimConfig, NetsimHandle};
use quicbus::server::{FsyncPolicy, Server, ServerConfig, ServerIdentity, Storage};

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

    /// Checks the settings before anything starts.
    pub fn validate(&self) -> Result<(), BenchError> {
        let fail = |m: String| Err(BenchError::Other(m));
        if self.samples == 0 {
            return fail("--samples must be at least 1".into());
        }
        if self.storage.as_ref().is_some_and(Vec::is_empty) {
            return fail("no storage chosen".into());
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
    /// `udp-echo`, `relay`, `oneway` or `netsim-loss<N>`.
    pub name: String,
    /// `udp`, `reliable`, `reliable+copies` or `datagram`.
    pub delivery: String,
    /// Where the server kept history: `disk` (fsync `interval`, `serve`'s
    /// default) or `memory`; `none` for the UDP echo.
    pub storage: String,
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
    fn measured(name: &str, kind: Kind, storage: StorageKind, m: &Measured, udp_p50: u64) -> Self {
        LatencyRow {
            misordered: m.misordered,
            storage: storage.name().to_string(),
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
        for storage in config.storages_for(scenario) {
            servers.push(LocalServer::start(config, storage, &dev)?);
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
    Ok(rows)
}

/// A server on its own thread and runtime, with a scratch data directory
/// when it keeps history on disk; stopped (and the directory removed) when
/// dropped.
struct LocalServer {
    addr: SocketAddr,
    storage: StorageKind,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Removed after the thread has ended (fields drop after `drop`).
    _data: Option<ScratchDir>,
}

impl LocalServer {
    fn start(
        config: &LatencyConfig,
        storage: StorageKind,
        dev: &DevCerts,
    ) -> Result<Self, BenchError> {
        let identity =
            ServerIdentity::from_dev_certs(dev).map_err(|e| BenchError::Other(e.to_string()))?;
        let (data, storage_config) = match storage {
            StorageKind::Memory => (None, Storage::Memory),
            StorageKind::Disk => {
                let data = ScratchDir::new("data")?;
                let dir = data.path().join("data");
                // `interval`, as `serve` runs by default.
                let fsync = FsyncPolicy::default();
                (Some(data), Storage::Disk { dir, fsync })
            }
        };
        let runtime = quicbus::server::runtime(config.server_threads)
            .map_err(BenchError::io("starting the server runtime"))?;
        let server_config = ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            storage: storage_config,
            ..ServerConfig::default()
        };
        let server = runtime
            .block_on(async { Server::bind(server_config, identity) })
            .map_err(|e| {
                BenchError::Other(format!("starting the server ({}): {e}", storage.name()))
            })?;
        let addr = server.local_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(server.run(async {
                let _ = stop_rx.await;
            }))
        });
        Ok(LocalServer {
            addr,
            storage,
            stop: Some(stop_tx),
            thread: Some(thread),
            _data: data,
        })
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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
    let mut rows = Vec::new();
    for (name, loss) in levels {
        for kind in config.kinds() {
            for server in servers {
                progress.step(&format!(
                    "{name} {} ({})",
                    kind.name(),
                    server.storage.name()
                ));
                let m = match loss {
                    None => {
                        let pair = Pair::connect(server.addr, ca_pem, kind).await?;
                        let timeout = config.loss_timeout_for(false);
                        pair.measure(config, kind, relay, timeout, progress).await?
                    }
                    Some(loss) => {
                        let netsim = impaired(config, server.addr, loss).await?;
                        let pair = Pair::connect(netsim.local_addr(), ca_pem, kind).await?;
                        let timeout = config.loss_timeout_for(true);
                        let measured = pair.measure(config, kind, relay, timeout, progress).await;
                        netsim.shutdown().await;
                        measured?
                    }
                };
                let mut row = LatencyRow::measured(&name, kind, server.storage, &m, udp_p50);
                if let Some(loss) = loss {
                    row.loss_pct = loss;
                    row.delay_ms = config.delay.as_secs_f64() * 1000.0;
                    row.jitter_ms = config.jitter.as_secs_f64() * 1000.0;
                }
                progress.finish(&summary(&row));
                rows.push(row);
            }
        }
    }
    Ok(rows)
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

/// Client A (the sender) and client B (the receiver or bouncer).
struct Pair {
    a: Client,
    a_events: Events,
    b: Client,
    b_events: Events,
}

impl Pair {
    async fn connect(server: SocketAddr, ca_pem: &str, kind: Kind) -> Result<Pair, BenchError> {
        let mut options = ClientOptions::new(server);
        options.copies = kind == Kind::Copies;
        options.trust = Trust::CaPem(ca_pem.to_string());
        options.client_name = "quicbus-bench".into();
        // A handshake through 5% loss may need a few retransmissions.
        options.connect_timeout = Duration::from_secs(15);
        // A benchmark reports a lost connection instead of hiding it.
        options.reconnect = None;
        let (a, a_events) = Client::connect(options.clone())
            .await
            .map_err(BenchError::client("connecting client A"))?;
        let (b, b_events) = Client::connect(options)
            .await
            .map_err(BenchError::client("connecting client B"))?;
        Ok(Pair {
            a,
            a_events,
            b,
            b_events,
        })
    }

    /// Sends warm-up then measured messages from A to room `ping`. In a
    /// relay, B bounces each one to room `pong` and A receives it; one-way,
    /// B receives it.
    async fn measure(
        self,
        config: &LatencyConfig,
        kind: Kind,
        relay: bool,
        loss_timeout: Duration,
        progress: &Progress,
    ) -> Result<Measured, BenchError> {
        let Pair {
            a,
            a_events,
            b,
            mut b_events,
        } = self;
        b.join("ping")
            .await
            .map_err(BenchError::client("B joins ping"))?;
        let (mut events, bouncer) = if relay {
            a.join("pong")
                .await
                .map_err(BenchError::client("A joins pong"))?;
            let bouncer_client = b.clone();
            let bouncer = tokio::spawn(async move {
                while let Some(event) = b_events.next().await {
                    let sent = match event.delivery {
                        Delivery::Reliable { .. } => {
                            bouncer_client.emit("pong", "m", event.payload).await
                        }
                        Delivery::Datagram { .. } => {
                            bouncer_client
                                .emit_datagram("pong", "m", event.payload)
                                .await
                        }
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
            (a_events, Some(bouncer))
        } else {
            (b_events, None)
        };
        let result = match config.rate {
            None => one_in_flight(&a, &mut events, config, kind, loss_timeout, progress).await,
            Some(rate) => paced(&a, &mut events, config, kind, rate, loss_timeout, progress).await,
        };
        if let Some(bouncer) = bouncer {
            bouncer.abort();
        }
        a.close().await;
        b.close().await;
        result
    }
}

/// A payload of `size` bytes starting with `seq`.
fn payload(seq: u64, size: usize) -> Bytes {
    let mut p = vec![0u8; size];
    p[..8].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(p)
}

fn seq_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

async fn emit(a: &Client, kind: Kind, seq: u64, size: usize) -> Result<(), BenchError> {
    let p = payload(seq, size);
    match kind {
        Kind::Reliable | Kind::Copies => a.emit("ping", "m", p).await,
        Kind::Datagram => a.emit_datagram("ping", "m", p).await,
    }
    .map_err(BenchError::client(format!("emitting message {seq}")))
}

/// How long a reliable message may take before the run fails: it must
/// arrive, however slowly.
const RELIABLE_LIMIT: Duration = Duration::from_secs(20);

/// What one scenario and delivery kind measured.
struct Measured {
    histogram: Histogram<u64>,
    /// Measured messages sent.
    sent: u64,
    /// Reliable messages that arrived twice or out of order (must be 0).
    misordered: u64,
}

impl Measured {
    fn new(sent: u64) -> Self {
        Measured {
            histogram: histogram(),
            sent,
            misordered: 0,
        }
    }
}

async fn one_in_flight(
    a: &Client,
    events: &mut Events,
    config: &LatencyConfig,
    kind: Kind,
    loss_timeout: Duration,
    progress: &Progress,
) -> Result<Measured, BenchError> {
    let mut m = Measured::new(config.samples);
    let total = config.warmup + config.samples;
    let limit = if kind.is_reliable() {
        RELIABLE_LIMIT
    } else {
        loss_timeout
    };
    for seq in 0..total {
        let intended = Instant::now();
        emit(a, kind, seq, config.size).await?;
        let deadline = tokio::time::Instant::from_std(intended + limit);
        loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(event)) if seq_of(&event.payload) == Some(seq) => {
                    if seq >= config.warmup {
                        record(&mut m.histogram, intended.elapsed());
                    }
                    break;
                }
                // A reliable message arrives once and in turn; a datagram
                // may come after it was given up.
                Ok(Some(_)) => {
                    if kind.is_reliable() {
                        m.misordered += 1;
                    }
                    continue;
                }
                Ok(None) => {
                    return Err(BenchError::Other(format!(
                        "the connection closed during message {seq}: {}",
                        a.closed().await
                    )))
                }
                Err(_) if kind == Kind::Datagram => break,
                Err(_) => {
                    return Err(BenchError::Other(format!(
                        "reliable message {seq} did not arrive within {RELIABLE_LIMIT:?}"
                    )))
                }
            }
        }
        progress.tick(seq + 1, total);
    }
    Ok(m)
}

async fn paced(
    a: &Client,
    events: &mut Events,
    config: &LatencyConfig,
    kind: Kind,
    rate: f64,
    loss_timeout: Duration,
    progress: &Progress,
) -> Result<Measured, BenchError> {
    let mut m = Measured::new(config.samples);
    let total = config.warmup + config.samples;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(5);
    let due = move |seq: u64| start + interval.mul_f64(seq as f64);
    let limit = if kind.is_reliable() {
        RELIABLE_LIMIT
    } else {
        loss_timeout
    };
    // The sender keeps the schedule on its own, whatever the bus does.
    let sender = {
        let (a, size) = (a.clone(), config.size);
        tokio::spawn(async move {
            for seq in 0..total {
                let at = due(seq);
                // Tokio's timer is 1 ms coarse: sleep until 2 ms before,
                // then yield (letting the receiving tasks run) until due.
                if let Some(early) = at.checked_sub(Duration::from_millis(2)) {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(early)).await;
                }
                while Instant::now() < at {
                    tokio::task::yield_now().await;
                }
                emit(&a, kind, seq, size).await?;
            }
            Ok::<(), BenchError>(())
        })
    };
    let end = tokio::time::Instant::from_std(due(total.saturating_sub(1)) + limit);
    let mut received = 0u64;
    let mut expected = 0u64;
    let outcome = loop {
        match tokio::time::timeout_at(end, events.next()).await {
            Ok(Some(event)) => {
                let Some(seq) = seq_of(&event.payload) else {
                    continue;
                };
                if seq >= total {
                    continue;
                }
                if kind.is_reliable() {
                    // Exactly once, in order: anything else is a fault.
                    if seq != expected {
                        m.misordered += 1;
                        continue;
                    }
                    expected += 1;
                } else if seq < expected {
                    // A late datagram (its receiver drops the stale ones).
                    continue;
                } else {
                    expected = seq + 1;
                }
                received += 1;
                if seq >= config.warmup {
                    record(&mut m.histogram, due(seq).elapsed());
                }
                progress.tick(received, total);
                if received == total {
                    break Ok(());
                }
            }
            Ok(None) => {
                break Err(BenchError::Other(format!(
                    "the connection closed: {}",
                    a.closed().await
                )))
            }
            Err(_) if kind.is_reliable() => {
                break Err(BenchError::Other(format!(
                    "{} of {total} reliable messages did not arrive within {RELIABLE_LIMIT:?} of the last send",
                    total - received
                )))
            }
            Err(_) => break Ok(()),
        }
    };
    sender.abort();
    if let Ok(Err(e)) = sender.await {
        return Err(e);
    }
    outcome.map(|()| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_its_sequence() {
        let p = payload(0x0102_0304_0506_0708, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(seq_of(&p), Some(0x0102_0304_0506_0708));
        assert_eq!(seq_of(&p[..7]), None);
    }

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
