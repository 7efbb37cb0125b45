//! `quicbus bench fanout`: one publisher to N subscriber connections.
//!
//! The server is a `quicbus serve` child process, so its CPU time and
//! memory are its own: memory per connection is the growth of its resident
//! set from idle to N idle, joined subscribers, divided by N; CPU is its
//! user + system time while events flow. Publisher and subscribers share
//! one runtime in this process. The server keeps history on disk, as
//! `serve` does by default (every event is written before it is fanned
//! out), unless the run asks for memory storage.
//!
//! The publisher sends as fast as the slowest subscriber takes events: it
//! stays at most [`WINDOW`] events ahead of the slowest one, below the
//! server's slow-consumer limit, so a reliable run measures throughput and
//! not disconnections. Each payload carries its sequence number and send
//! time, so subscribers count, de-duplicate and time every event.
//!
//! **Cluster.** With [`FanoutConfig::cluster`], each run is made again on
//! [`CLUSTER_NODES`] `serve --cluster` nodes of the bench's own NATS
//! ([`super::cluster`]): the publisher on node-1, subscriber `i` on node
//! `i mod 3`, history in JetStream. CPU time and memory per connection are
//! then the nodes' sums (nats-server's own are not counted).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Notify;

use super::cluster::{Cluster, ClusterOptions, JETSTREAM};
use super::latency::Kind;
use super::scratch::ScratchDir;
use super::server_process::{ServeOptions, ServerProcess};
use super::{histogram, ratio, record, udp_echo, BenchError, Progress, StorageKind};
use quicbus::client::{Client, ClientOptions};

/// Events the publisher may be ahead of the slowest subscriber.
pub const WINDOW: u64 = 2048;
/// A run ends when no subscriber has received anything for this long.
const STALL: Duration = Duration::from_secs(5);
/// Subscribers connecting at once.
const CONNECT_BATCH: usize = 50;
/// Subscriber connections sharing one UDP socket.
const SUBSCRIBERS_PER_SOCKET: usize = 8;
/// Nodes of a cluster run.
pub const CLUSTER_NODES: usize = 3;

/// Settings of a fan-out run.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Subscriber counts, one run (per delivery kind) each.
    pub subscribers: Vec<usize>,
    /// Delivery kinds to run.
    pub kinds: Vec<Kind>,
    /// Events published per run; `None` aims at 2,000,000 deliveries
    /// (between 1,000 and 200,000 events).
    pub events: Option<u64>,
    /// Payload bytes (at least 16: sequence number and send time).
    pub size: usize,
    /// The `quicbus` executable whose `serve` is measured.
    pub server_exe: PathBuf,
    /// `serve --worker-threads`.
    pub server_threads: usize,
    /// Worker threads of the publisher's and subscribers' runtime; 0 = one.
    pub client_threads: usize,
    /// Longest a run may take before it stops and reports what it has.
    pub run_limit: Duration,
    /// Where the server keeps history: on disk (`serve`'s default, fsync
    /// `interval`) or in memory.
    pub storage: StorageKind,
    /// Also make each run on a cluster of [`CLUSTER_NODES`] nodes.
    pub cluster: Option<ClusterOptions>,
}

impl FanoutConfig {
    /// The defaults of `quicbus bench fanout`, serving with `server_exe`.
    pub fn new(server_exe: PathBuf) -> Self {
        FanoutConfig {
            subscribers: vec![1, 10, 100, 1000],
            kinds: vec![Kind::Reliable, Kind::Datagram],
            events: None,
            size: 64,
            server_exe,
            server_threads: 0,
            client_threads: 0,
            run_limit: Duration::from_secs(120),
            storage: StorageKind::Disk,
            cluster: None,
        }
    }

    /// Checks the settings before anything starts.
    pub fn validate(&self) -> Result<(), BenchError> {
        let fail = |m: String| Err(BenchError::Other(m));
        if self.subscribers.is_empty() || self.subscribers.contains(&0) {
            return fail("--subscribers needs counts of at least 1".into());
        }
        if let Some(&n) = self.subscribers.iter().find(|&&n| n > 10_000) {
            return fail(format!("--subscribers {n} is above the limit of 10,000"));
        }
        if self.size < 16 {
            return fail(format!(
                "--size {} is too small: each event carries 16 bytes of sequence and time",
                self.size
            ));
        }
        if self.events == Some(0) {
            return fail("--events must be at least 1".into());
        }
        if self.kinds.is_empty() {
            return fail("no delivery chosen".into());
        }
        Ok(())
    }

    fn events_for(&self, subscribers: usize) -> u64 {
        self.events
            .unwrap_or_else(|| (2_000_000 / subscribers as u64).clamp(1_000, 200_000))
    }
}

/// One run: the JSON object and the table row.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutRow {
    /// `fanout-1xN`, or `cluster-fanout-1xN` across cluster nodes.
    pub name: String,
    /// `reliable` or `datagram`.
    pub delivery: String,
    /// Where the server kept history: `disk`, `memory` or `jetstream` (the
    /// cluster's stream).
    pub storage: String,
    /// quicbus nodes serving the run: 1, or [`CLUSTER_NODES`].
    pub nodes: usize,
    pub subscribers: usize,
    /// Events published.
    pub sent: u64,
    /// Events received, summed over subscribers (`sent × subscribers` when
    /// nothing was lost).
    pub delivered: u64,
    /// Percentage of deliveries missing.
    pub loss_pct: f64,
    /// Reliable events that arrived twice or out of order: always 0 unless
    /// the bus is broken.
    pub misordered: u64,
    /// Deliveries per second, from the first send to the last delivery.
    pub events_per_sec: f64,
    /// Send-to-receipt latency under this load.
    pub p50_us: u64,
    pub p99_us: u64,
    /// Server CPU time (user + system) while events flowed, summed over
    /// the nodes.
    pub server_cpu_s: f64,
    /// Growth of the server's resident memory per idle, joined subscriber
    /// (of all nodes' together).
    pub mem_per_conn_bytes: u64,
    /// The raw-UDP echo's p50 in the same run.
    pub udp_p50_us: u64,
    /// `p99_us / udp_p50_us`.
    pub p99_vs_udp: f64,
}

/// Runs every subscriber count and kind; each run gets a fresh server.
pub fn run(config: &FanoutConfig, progress: &Progress) -> Result<Vec<FanoutRow>, BenchError> {
    config.validate()?;
    progress.step("udp echo");
    let udp = udp_echo(10_000, 1_000, config.size, progress)?;
    let udp_p50 = udp.value_at_quantile(0.5);
    progress.finish(&format!("p50 {udp_p50} µs"));

    let runtime = if config.client_threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.client_threads)
            .enable_all()
            .build()
    }
    .map_err(BenchError::io("starting the client runtime"))?;
    let mut rows = Vec::new();
    for &n in &config.subscribers {
        for &kind in &config.kinds {
            rows.push(single_node(config, &runtime, n, kind, udp_p50, progress)?);
            if let Some(cluster) = &config.cluster {
                rows.push(across_cluster(
                    config, cluster, &runtime, n, kind, udp_p50, progress,
                )?);
            }
        }
    }
    Ok(rows)
}

/// One run on a fresh `serve` process.
fn single_node(
    config: &FanoutConfig,
    runtime: &tokio::runtime::Runtime,
    n: usize,
    kind: Kind,
    udp_p50: u64,
    progress: &Progress,
) -> Result<FanoutRow, BenchError> {
    progress.step(&format!(
        "fanout 1x{n} {} ({})",
        kind.name(),
        config.storage.name()
    ));
    let data = ScratchDir::new("data")?;
    let server = ServerProcess::start(&ServeOptions {
        worker_threads: config.server_threads,
        data: match config.storage {
            StorageKind::Disk => Some(data.path().join("data")),
            StorageKind::Memory => None,
        },
        ..ServeOptions::new(config.server_exe.clone())
    })?;
    let setup = Setup {
        name: format!("fanout-1x{n}"),
        storage: config.storage.name(),
        nodes: std::slice::from_ref(&server),
    };
    let result = runtime.block_on(one_run(config, &setup, n, kind, udp_p50, progress));
    drop(server);
    drop(data);
    finished(result, progress)
}

/// One run on a fresh cluster: the bench's NATS and [`CLUSTER_NODES`]
/// nodes.
fn across_cluster(
    config: &FanoutConfig,
    options: &ClusterOptions,
    runtime: &tokio::runtime::Runtime,
    n: usize,
    kind: Kind,
    udp_p50: u64,
    progress: &Progress,
) -> Result<FanoutRow, BenchError> {
    progress.step(&format!(
        "cluster-fanout 1x{n} {} ({CLUSTER_NODES} nodes, {JETSTREAM})",
        kind.name()
    ));
    let cluster = Cluster::start(options, CLUSTER_NODES)?;
    let setup = Setup {
        name: format!("cluster-fanout-1x{n}"),
        storage: JETSTREAM,
        nodes: &cluster.nodes,
    };
    let result = runtime.block_on(one_run(config, &setup, n, kind, udp_p50, progress));
    drop(cluster);
    finished(result, progress)
}

/// Ends the step with the row's summary.
fn finished(
    result: Result<FanoutRow, BenchError>,
    progress: &Progress,
) -> Result<FanoutRow, BenchError> {
    let row = result?;
    progress.finish(&format!(
        "{:.0} events/s, {}/{} delivered, p99 {} µs, server CPU {:.2} s, {} B/conn",
        row.events_per_sec,
        row.delivered,
        row.sent * row.subscribers as u64,
        row.p99_us,
        row.server_cpu_s,
        row.mem_per_conn_bytes
    ));
    Ok(row)
}

/// What a run is served by: one process, or the nodes of a cluster.
struct Setup<'a> {
    /// The row's name.
    name: String,
    /// The row's storage.
    storage: &'static str,
    /// The publisher's node first; subscriber `i` on node `i mod len`.
    nodes: &'a [ServerProcess],
}

impl Setup<'_> {
    fn rss(&self) -> Result<u64, BenchError> {
        self.nodes.iter().map(ServerProcess::rss).sum()
    }

    fn cpu_seconds(&self) -> Result<f64, BenchError> {
        self.nodes.iter().map(ServerProcess::cpu_seconds).sum()
    }

    fn node_of_subscriber(&self, i: usize) -> &ServerProcess {
        &self.nodes[i % self.nodes.len()]
    }
}

/// Shared between the subscribers and the publisher.
struct Tally {
    /// Per subscriber: highest sequence received + 1.
    progress: Vec<AtomicU64>,
    /// Deliveries over all subscribers.
    delivered: AtomicU64,
    /// Reliable events that arrived twice or out of order (must stay 0).
    misordered: AtomicU64,
    /// Woken as subscribers advance.
    advanced: Notify,
    /// Merged latencies.
    latency: Mutex<Histogram<u64>>,
    /// When the last delivery happened, relative to `epoch`, in ns.
    last_ns: AtomicU64,
    epoch: Instant,
}

impl Tally {
    fn slowest(&self) -> u64 {
        self.progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

async fn one_run(
    config: &FanoutConfig,
    setup: &Setup<'_>,
    n: usize,
    kind: Kind,
    udp_p50: u64,
    progress: &Progress,
) -> Result<FanoutRow, BenchError> {
    let idle_rss = setup.rss()?;
    let tally = Arc::new(Tally {
        progress: (0..n).map(|_| AtomicU64::new(0)).collect(),
        delivered: AtomicU64::new(0),
        misordered: AtomicU64::new(0),
        advanced: Notify::new(),
        latency: Mutex::new(histogram()),
        last_ns: AtomicU64::new(0),
        epoch: Instant::now(),
    });

    // Subscribers share UDP sockets, SUBSCRIBERS_PER_SOCKET each, as a load
    // generator would: a socket per client costs megabytes of buffers, and
    // one for all would overflow its kernel receive buffer.
    let mut endpoints = Vec::new();
    for _ in 0..n.div_ceil(SUBSCRIBERS_PER_SOCKET) + 1 {
        endpoints.push(
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
                .map_err(BenchError::io("binding the clients' sockets"))?,
        );
    }
    // Subscribers, connected and joined in batches.
    let mut subscribers = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(CONNECT_BATCH) {
        let mut connecting = Vec::new();
        for &i in batch {
            let options = client_options(
                setup.node_of_subscriber(i),
                kind,
                &endpoints[i / SUBSCRIBERS_PER_SOCKET],
            );
            connecting.push(tokio::spawn(async move {
                let (client, events) = Client::connect(options)
                    .await
                    .map_err(BenchError::client(format!("connecting subscriber {i}")))?;
                client
                    .join("fanout")
                    .await
                    .map_err(BenchError::client(format!("subscriber {i} joins")))?;
                Ok::<_, BenchError>((client, events))
            }));
        }
        for (handle, &i) in connecting.into_iter().zip(batch) {
            let (client, events) = handle
                .await
                .map_err(|e| BenchError::Other(format!("subscriber task: {e}")))??;
            tasks.push(tokio::spawn(subscribe(events, i, kind, tally.clone())));
            subscribers.push(client);
        }
        progress.tick(subscribers.len() as u64, n as u64);
    }
    // Every subscriber holds a joined room and nothing has flowed yet.
    let joined_rss = setup.rss()?;
    let mem_per_conn = joined_rss.saturating_sub(idle_rss) / n as u64;

    let (publisher, _publisher_events) = Client::connect(client_options(
        setup.node_of_subscriber(0),
        kind,
        &endpoints[endpoints.len() - 1],
    ))
    .await
    .map_err(BenchError::client("connecting the publisher"))?;
    let total = config.events_for(n);
    let cpu_before = setup.cpu_seconds()?;
    let started = Instant::now();
    let deadline = started + config.run_limit;
    let mut sent = 0u64;
    // How long the publisher waits for the slowest subscriber before it goes
    // on anyway: a subscriber that lost its newest datagrams advances only
    // when later ones arrive.
    let patience = if kind.is_reliable() {
        STALL
    } else {
        Duration::from_millis(50)
    };
    while sent < total && Instant::now() < deadline {
        // Stay within WINDOW of the slowest subscriber.
        while sent >= tally.slowest() + WINDOW {
            let woken = tally.advanced.notified();
            if sent < tally.slowest() + WINDOW {
                break;
            }
            if tokio::time::timeout(patience, woken).await.is_err() {
                break;
            }
        }
        let payload = payload(sent, tally.epoch.elapsed(), config.size);
        match kind {
            Kind::Reliable | Kind::Copies => publisher.emit("fanout", "e", payload).await,
            Kind::Datagram => publisher.emit_datagram("fanout", "e", payload).await,
        }
        .map_err(BenchError::client(format!("publishing event {sent}")))?;
        sent += 1;
        if sent.is_multiple_of(1024) {
            progress.tick(sent, total);
        }
    }
    // Wait for the last deliveries, until none come for a while.
    let expected = sent * n as u64;
    let mut seen = tally.delivered.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    let quiet = if kind.is_reliable() {
        STALL
    } else {
        Duration::from_millis(500)
    };
    while seen < expected && quiet_since.elapsed() < quiet && Instant::now() < deadline + STALL {
        let _ = tokio::time::timeout(Duration::from_millis(50), tally.advanced.notified()).await;
        let now = tally.delivered.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
    let cpu = setup.cpu_seconds()? - cpu_before;
    let last = Duration::from_nanos(tally.last_ns.load(Ordering::Relaxed));
    let elapsed = last
        .saturating_sub(started.duration_since(tally.epoch))
        .max(Duration::from_micros(1));

    publisher.close().await;
    for client in &subscribers {
        client.close().await;
    }
    // Each subscriber adds its latencies to the tally when its events end
    // (closing its client ends them).
    for mut task in tasks {
        if tokio::time::timeout(STALL, &mut task).await.is_err() {
            task.abort();
        }
    }
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let latency = tally
        .latency
        .lock()
        .map_err(|_| BenchError::Other("a subscriber task panicked".into()))?
        .clone();
    let p99 = latency.value_at_quantile(0.99);
    Ok(FanoutRow {
        name: setup.name.clone(),
        delivery: kind.name().into(),
        storage: setup.storage.into(),
        nodes: setup.nodes.len(),
        subscribers: n,
        sent,
        delivered,
        loss_pct: if expected == 0 {
            0.0
        } else {
            (expected - delivered.min(expected)) as f64 * 100.0 / expected as f64
        },
        misordered: tally.misordered.load(Ordering::Relaxed),
        events_per_sec: delivered as f64 / elapsed.as_secs_f64(),
        p50_us: latency.value_at_quantile(0.5),
        p99_us: p99,
        server_cpu_s: (cpu * 100.0).round() / 100.0,
        mem_per_conn_bytes: mem_per_conn,
        udp_p50_us: udp_p50,
        p99_vs_udp: ratio(p99, udp_p50),
    })
}

/// Counts, de-duplicates and times one subscriber's events.
async fn subscribe(
    mut events: quicbus::client::Events,
    index: usize,
    kind: Kind,
    tally: Arc<Tally>,
) {
    let mut h = histogram();
    let mut newest = 0u64;
    let mut count = 0u64;
    while let Some(event) = events.next().await {
        let Some((seq, sent_at)) = parse(&event.payload) else {
            continue;
        };
        // Reliable events come exactly once and in order; datagrams may
        // skip ahead (and their receiver drops stale ones).
        if seq < newest || (kind.is_reliable() && seq != newest) {
            if kind.is_reliable() {
                tally.misordered.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        newest = seq + 1;
        count += 1;
        let now = tally.epoch.elapsed();
        record(&mut h, now.saturating_sub(sent_at));
        tally.progress[index].store(newest, Ordering::Relaxed);
        tally.delivered.fetch_add(1, Ordering::Relaxed);
        tally.last_ns.fetch_max(
            u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if count.is_multiple_of(256) {
            tally.advanced.notify_waiters();
        }
    }
    // Once, at the end: merging a histogram walks all its buckets.
    merge(&tally, &mut h);
}

fn merge(tally: &Tally, h: &mut Histogram<u64>) {
    if let Ok(mut all) = tally.latency.lock() {
        let _ = all.add(&*h);
    }
    h.reset();
}

/// One client of the run, on a shared UDP socket.
fn client_options(server: &ServerProcess, kind: Kind, endpoint: &quinn::Endpoint) -> ClientOptions {
    let mut options = server.client_options();
    options.endpoint = Some(endpoint.clone());
    options.copies = kind == Kind::Copies;
    options
}

fn payload(seq: u64, sent_at: Duration, size: usize) -> Bytes {
    let mut p = vec![0u8; size];
    p[..8].copy_from_slice(&seq.to_le_bytes());
    let ns = u64::try_from(sent_at.as_nanos()).unwrap_or(u64::MAX);
    p[8..16].copy_from_slice(&ns.to_le_bytes());
    Bytes::from(p)
}

fn parse(payload: &[u8]) -> Option<(u64, Duration)> {
    let seq = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let ns = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((seq, Duration::from_nanos(ns)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_sequence_and_time() {
        let p = payload(7, Duration::from_nanos(123_456_789), 64);
        assert_eq!(p.len(), 64);
        assert_eq!(parse(&p), Some((7, Duration::from_nanos(123_456_789))));
        assert_eq!(parse(&p[..15]), None);
    }

    #[test]
    fn events_per_run_aim_at_two_million_deliveries() {
        let c = FanoutConfig::new(PathBuf::from("quicbus"));
        assert_eq!(c.events_for(1), 200_000);
        assert_eq!(c.events_for(10), 200_000);
        assert_eq!(c.events_for(100), 20_000);
        assert_eq!(c.events_for(1000), 2_000);
        assert_eq!(c.events_for(10_000), 1_000);
    }

    #[test]
    fn config_is_checked() {
        let ok = FanoutConfig::new(PathBuf::from("quicbus"));
        assert!(ok.validate().is_ok());
        for bad in [
            FanoutConfig {
                subscribers: vec![],
                ..ok.clone()
            },
            FanoutConfig {
                subscribers: vec![0],
                ..ok.clone()
            },
            FanoutConfig {
                subscribers: vec![20_000],
                ..ok.clone()
            },
            FanoutConfig {
                size: 15,
                ..ok.clone()
            },
            FanoutConfig {
                events: Some(0),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
