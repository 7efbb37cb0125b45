//! The bench's own cluster, for `bench latency --cluster` and `bench fanout
//! --cluster`: a `nats-server -js` child process on a port of its own
//! choosing with a scratch store (never a NATS the machine already runs),
//! `quicbus serve --cluster` nodes on it (child processes, as the
//! single-node fan-out server, with the same lifted defences), and the
//! core-NATS relay the cross-node figures are read against.
//!
//! The core-NATS relay is the bus's relay with NATS in its place: client A
//! publishes on [`NATS_PING`], client B (subscribed) bounces each message
//! to [`NATS_PONG`], where A receives it. It is timed as the relay rows
//! are: each message carries its sequence number in its first 8 bytes, and
//! runs from its intended send time to its return, one in flight or paced.
//! The JetStream relay ([`JS_RELAY`]) is the same through a stream that
//! republishes what it stores: the cluster's live path without quicbus.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use super::latency::LatencyConfig;
use super::scratch::ScratchDir;
use super::server_process::{ServeOptions, ServerProcess};
use super::{histogram, record, BenchError, Progress};

/// The subject A publishes on and B listens to.
pub const NATS_PING: &str = "bench.nats.ping";
/// The subject B bounces each message to.
pub const NATS_PONG: &str = "bench.nats.pong";
/// The same relay through a JetStream stream (file storage) that
/// republishes what it stores, as the cluster's live path does: A and B
/// publish into the stream and listen on the republished subjects.
pub const JS_RELAY: Route = Route {
    ping_out: "bench.js.ping",
    ping_in: "bench.live.ping",
    pong_out: "bench.js.pong",
    pong_in: "bench.live.pong",
    acked: false,
};
/// [`JS_RELAY`] with every message published as a JetStream publish
/// that asks for an acknowledgement, as a quicbus node publishes (the
/// acknowledgements are not waited for).
pub const JS_ACKED_RELAY: Route = Route {
    acked: true,
    ..JS_RELAY
};
/// The core-NATS relay's subjects.
pub const CORE_RELAY: Route = Route {
    ping_out: NATS_PING,
    ping_in: NATS_PING,
    pong_out: NATS_PONG,
    pong_in: NATS_PONG,
    acked: false,
};

/// Where a relay's messages go out and come in, each way, and how they
/// are published.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub ping_out: &'static str,
    pub ping_in: &'static str,
    pub pong_out: &'static str,
    pub pong_in: &'static str,
    /// Published with a reply subject for JetStream's acknowledgement.
    pub acked: bool,
}

impl Route {
    /// Whether the messages travel through a JetStream stream.
    fn stored(&self) -> bool {
        self.ping_out != self.ping_in
    }
}

/// Where the cluster keeps history, as the `storage` of its rows.
pub const JETSTREAM: &str = "jetstream";
/// How long a core-NATS message may take before the run fails.
const NATS_LIMIT: Duration = Duration::from_secs(20);
/// The sequence number of the probes that wait for the relay to work.
const PROBE: u64 = u64::MAX;
/// How long a probe is waited for before the next one is sent.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Where Debian and others put `nats-server`.
const NATS_SERVER_PATHS: [&str; 3] = [
    "/usr/sbin/nats-server",
    "/usr/bin/nats-server",
    "/usr/local/bin/nats-server",
];

/// Errors of the bench's cluster and of the core-NATS relay.
#[derive(Debug, thiserror::Error)]
pub enum ClusterBenchError {
    /// `nats-server` could not be run.
    #[error("starting {binary} (Debian package nats-server): {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    /// `nats-server` exited or did not say it was ready in time.
    #[error("nats-server was not ready within {timeout:?}; its log: {log}")]
    NotReady { timeout: Duration, log: String },
    /// A NATS client could not connect.
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// A NATS client could not subscribe.
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        subject: &'static str,
        #[source]
        source: async_nats::client::SubscribeError,
    },
    /// The subscriptions could not be confirmed by the server.
    #[error("flushing the NATS connection: {source}")]
    Flush {
        #[source]
        source: async_nats::client::FlushError,
    },
    /// A message could not be published.
    #[error("publishing core-NATS message {seq}: {source}")]
    Publish {
        seq: u64,
        #[source]
        source: async_nats::Error,
    },
    /// A message did not come back in time.
    #[error("{missing} core-NATS messages did not come back within {NATS_LIMIT:?}")]
    Lost { missing: u64 },
    /// No probe came back: B's subscription never took effect.
    #[error("the core-NATS relay did not carry a probe within {NATS_LIMIT:?}")]
    NotRelaying,
    /// The JetStream relay's stream could not be made.
    #[error("creating the JetStream relay's stream: {0}")]
    Stream(String),
    /// A subscription ended under the run.
    #[error("the NATS subscription to {NATS_PONG} ended")]
    SubscriptionEnded,
}

/// How the bench starts its cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `quicbus` executable whose `serve --cluster` is measured.
    pub serve_exe: PathBuf,
    /// The `nats-server` executable.
    pub nats_server: PathBuf,
    /// `serve --worker-threads` of each node.
    pub worker_threads: usize,
}

impl ClusterOptions {
    /// `nats-server` where Debian puts it (or on the `PATH`).
    pub fn new(serve_exe: PathBuf) -> Self {
        let nats_server = NATS_SERVER_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        ClusterOptions {
            serve_exe,
            nats_server,
            worker_threads: 0,
        }
    }
}

/// A `nats-server -js` child process with a scratch store; killed when
/// dropped.
pub struct NatsProcess {
    child: Child,
    url: String,
    /// Removed after the process is gone (fields drop after `drop`).
    _store: ScratchDir,
}

impl NatsProcess {
    /// Starts it on a port it picks (`-p -1`: no race for a free port) and
    /// waits, within `timeout`, until it says it is ready.
    pub fn start(binary: &Path, timeout: Duration) -> Result<Self, BenchError> {
        let store = ScratchDir::new("nats")?;
        let mut child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ClusterBenchError::Spawn {
                binary: binary.display().to_string(),
                source,
            })?;
        match ready_url(&mut child, timeout) {
            Ok(url) => Ok(NatsProcess {
                child,
                url,
                _store: store,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e.into())
            }
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the log on stderr until "Server is ready", keeping the client
/// address it announced before; drains the rest for the server's life.
fn ready_url(child: &mut Child, timeout: Duration) -> Result<String, ClusterBenchError> {
    let not_ready = |log: String| ClusterBenchError::NotReady { timeout, log };
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| not_ready("stderr not piped".into()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut url = None;
        let mut log = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let Some(sender) = tx.as_ref() else { continue };
            if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                url = Some(format!("nats://{}", addr.trim()));
            }
            if line.contains("Server is ready") {
                let _ = sender.send(url.take().ok_or_else(|| log.join("\n")));
                tx = None;
            } else {
                log.push(line);
            }
        }
        if let Some(sender) = tx {
            let _ = sender.send(Err(log.join("\n")));
        }
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(url)) => Ok(url),
        Ok(Err(log)) => Err(not_ready(log)),
        Err(_) => Err(not_ready("(still starting)".into())),
    }
}

/// The bench's NATS and `serve --cluster` nodes on it, all child
/// processes; stopped when dropped, nodes first.
pub struct Cluster {
    /// `node-1`, `node-2`, ...: each a quicbus server of its own.
    pub nodes: Vec<ServerProcess>,
    nats: NatsProcess,
}

impl Cluster {
    /// NATS and `count` nodes, each ready.
    pub fn start(options: &ClusterOptions, count: usize) -> Result<Self, BenchError> {
        let nats = NatsProcess::start(&options.nats_server, Duration::from_secs(30))?;
        let mut nodes = Vec::with_capacity(count);
        for i in 1..=count {
            let serve = ServeOptions {
                worker_threads: options.worker_threads,
                extra: vec![
                    "--cluster".into(),
                    nats.url().to_string(),
                    "--node".into(),
                    format!("node-{i}"),
                ],
                // Joining the cluster (stream, sessions bucket) takes a
                // while on a loaded machine.
                ready_timeout: Duration::from_secs(60),
                ..ServeOptions::new(options.serve_exe.clone())
            };
            nodes.push(ServerProcess::start(&serve)?);
        }
        Ok(Cluster { nodes, nats })
    }

    /// The NATS the nodes share.
    pub fn nats_url(&self) -> &str {
        self.nats.url()
    }
}

/// Two core-NATS clients relaying through the bench's NATS: A publishes,
/// B bounces, A receives.
pub struct NatsRelay {
    a: Sender,
    route: Route,
    pong: async_nats::Subscriber,
    bouncer: JoinHandle<()>,
    /// The sequence number of the next message.
    next: u64,
    /// Messages that came back twice or out of order (core NATS on one
    /// connection keeps order: 0 unless something is broken).
    pub misordered: u64,
}

impl NatsRelay {
    /// Connects A and B, subscribes both and waits until the relay carries
    /// a probe.
    pub async fn connect(url: &str, route: Route) -> Result<Self, ClusterBenchError> {
        let connect = |url: String| async move {
            async_nats::connect(url.as_str())
                .await
                .map_err(|source| ClusterBenchError::Connect { url, source })
        };
        let a = connect(url.to_string()).await?;
        let b = connect(url.to_string()).await?;
        let subscribe = |client: async_nats::Client, subject: &'static str| async move {
            client
                .subscribe(subject)
                .await
                .map_err(|source| ClusterBenchError::Subscribe { subject, source })
        };
        if route.stored() {
            let js = async_nats::jetstream::new(a.clone());
            let config = async_nats::jetstream::stream::Config {
                name: "BENCH_RELAY".to_string(),
                subjects: vec![route.ping_out.to_string(), route.pong_out.to_string()],
                storage: async_nats::jetstream::stream::StorageType::File,
                republish: Some(async_nats::jetstream::stream::Republish {
                    source: "bench.js.>".to_string(),
                    destination: "bench.live.>".to_string(),
                    headers_only: false,
                }),
                ..Default::default()
            };
            js.create_or_update_stream(config)
                .await
                .map_err(|e| ClusterBenchError::Stream(e.to_string()))?;
        }
        let mut ping = subscribe(b.clone(), route.ping_in).await?;
        let pong = subscribe(a.clone(), route.pong_in).await?;
        for client in [&a, &b] {
            client
                .flush()
                .await
                .map_err(|source| ClusterBenchError::Flush { source })?;
        }
        let b = Sender::new(b, route.acked);
        let bouncer = tokio::spawn(async move {
            while let Some(message) = ping.next().await {
                if b.send(route.pong_out, message.payload).await.is_err() {
                    return;
                }
            }
        });
        let mut relay = NatsRelay {
            a: Sender::new(a, route.acked),
            route,
            pong,
            bouncer,
            next: 0,
            misordered: 0,
        };
        relay.probe().await?;
        Ok(relay)
    }

    /// Sends probes until one comes back. A flush only says that B's
    /// subscription left B; A's connection may reach the server first.
    async fn probe(&mut self) -> Result<(), ClusterBenchError> {
        let give_up = Instant::now() + NATS_LIMIT;
        while Instant::now() < give_up {
            publish(&self.a, self.route.ping_out, PROBE, 8).await?;
            let wait = tokio::time::timeout(PROBE_EVERY, async {
                while let Some(message) = self.pong.next().await {
                    if seq_of(&message.payload) == Some(PROBE) {
                        return true;
                    }
                }
                false
            });
            match wait.await {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(ClusterBenchError::SubscriptionEnded),
                Err(_) => continue,
            }
        }
        Err(ClusterBenchError::NotRelaying)
    }

    /// Sends `count` messages of `size` bytes, each when the previous one
    /// is back; records their latencies in `into` unless warming up.
    pub async fn one_in_flight(
        &mut self,
        count: u64,
        size: usize,
        mut into: Option<&mut Histogram<u64>>,
    ) -> Result<(), ClusterBenchError> {
        for _ in 0..count {
            let seq = self.next;
            self.next += 1;
            let intended = Instant::now();
            publish(&self.a, self.route.ping_out, seq, size).await?;
            let deadline = tokio::time::Instant::from_std(intended + NATS_LIMIT);
            loop {
                match tokio::time::timeout_at(deadline, self.pong.next()).await {
                    Ok(Some(message)) if seq_of(&message.payload) == Some(seq) => {
                        if let Some(h) = into.as_deref_mut() {
                            record(h, intended.elapsed());
                        }
                        break;
                    }
                    // A probe that came back late is no fault.
                    Ok(Some(message)) if seq_of(&message.payload) == Some(PROBE) => {}
                    Ok(Some(_)) => self.misordered += 1,
                    Ok(None) => return Err(ClusterBenchError::SubscriptionEnded),
                    Err(_) => return Err(ClusterBenchError::Lost { missing: 1 }),
                }
            }
        }
        Ok(())
    }

    /// Sends `total` messages paced at `rate` per second, each timed from
    /// its due time; the latencies of those after the first `warmup`.
    pub async fn paced(
        &mut self,
        warmup: u64,
        samples: u64,
        size: usize,
        rate: f64,
        progress: &Progress,
    ) -> Result<Histogram<u64>, ClusterBenchError> {
        let mut h = histogram();
        let total = warmup + samples;
        let base = self.next;
        self.next += total;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now() + Duration::from_millis(5);
        let due = move |i: u64| start + interval.mul_f64(i as f64);
        let sender = {
            let a = self.a.clone();
            let to = self.route.ping_out;
            tokio::spawn(async move {
                for i in 0..total {
                    let at = due(i);
                    // As the relay rows: sleep to 2 ms before, then yield.
                    if let Some(early) = at.checked_sub(Duration::from_millis(2)) {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(early)).await;
                    }
                    while Instant::now() < at {
                        tokio::task::yield_now().await;
                    }
                    publish(&a, to, base + i, size).await?;
                }
                Ok::<(), ClusterBenchError>(())
            })
        };
        let end = tokio::time::Instant::from_std(due(total.saturating_sub(1)) + NATS_LIMIT);
        let mut expected = 0u64;
        let outcome = loop {
            if expected == total {
                break Ok(());
            }
            match tokio::time::timeout_at(end, self.pong.next()).await {
                Ok(Some(message)) => {
                    let Some(i) = seq_of(&message.payload)
                        .filter(|&s| s != PROBE)
                        .and_then(|s| s.checked_sub(base))
                    else {
                        continue;
                    };
                    if i != expected {
                        self.misordered += 1;
                        continue;
                    }
                    expected += 1;
                    if i >= warmup {
                        record(&mut h, due(i).elapsed());
                    }
                    progress.tick(expected, total);
                }
                Ok(None) => break Err(ClusterBenchError::SubscriptionEnded),
                Err(_) => {
                    break Err(ClusterBenchError::Lost {
                        missing: total - expected,
                    })
                }
            }
        };
        sender.abort();
        if let Ok(Err(e)) = sender.await {
            return Err(e);
        }
        outcome.map(|()| h)
    }

    /// Stops the bouncer; the clients close when dropped.
    pub fn close(self) {
        self.bouncer.abort();
    }
}

/// The core-NATS relay with `config`'s payload size, warm-up, samples and
/// pacing: its latencies and misordered count.
pub async fn nats_relay(
    url: &str,
    route: Route,
    config: &LatencyConfig,
    progress: &Progress,
) -> Result<(Histogram<u64>, u64), BenchError> {
    let mut relay = NatsRelay::connect(url, route).await?;
    let measured = match config.rate {
        None => {
            let total = config.warmup + config.samples;
            let mut h = histogram();
            let mut done = 0;
            let mut result = relay.one_in_flight(config.warmup, config.size, None).await;
            done += config.warmup;
            while result.is_ok() && done < total {
                let n = (total - done).min(super::latency::BLOCK);
                result = relay.one_in_flight(n, config.size, Some(&mut h)).await;
                done += n;
                progress.tick(done, total);
            }
            result.map(|()| h)
        }
        Some(rate) => {
            relay
                .paced(config.warmup, config.samples, config.size, rate, progress)
                .await
        }
    };
    let misordered = relay.misordered;
    relay.close();
    Ok((measured?, misordered))
}

async fn publish(
    sender: &Sender,
    subject: &'static str,
    seq: u64,
    size: usize,
) -> Result<(), ClusterBenchError> {
    sender
        .send(subject, payload(seq, size))
        .await
        .map_err(|source| ClusterBenchError::Publish { seq, source })
}

/// Publishes as a route says: core NATS, or JetStream asking for an
/// acknowledgement (dropped unread: only the server's work is measured).
#[derive(Clone)]
struct Sender {
    client: async_nats::Client,
    js: Option<async_nats::jetstream::Context>,
}

impl Sender {
    fn new(client: async_nats::Client, acked: bool) -> Self {
        let js = acked.then(|| async_nats::jetstream::new(client.clone()));
        Sender { client, js }
    }

    async fn send(&self, subject: &'static str, payload: Bytes) -> Result<(), async_nats::Error> {
        match &self.js {
            Some(js) => {
                drop(js.publish(subject, payload).await?);
                Ok(())
            }
            None => Ok(self.client.publish(subject, payload).await?),
        }
    }
}

/// A payload of `size` bytes starting with `seq`.
fn payload(seq: u64, size: usize) -> Bytes {
    let mut p = vec![0u8; size.max(8)];
    p[..8].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(p)
}

fn seq_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_its_sequence_and_size() {
        let p = payload(42, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(seq_of(&p), Some(42));
        assert_eq!(seq_of(&p[..7]), None);
    }

    #[test]
    fn a_missing_nats_server_is_a_spawn_error() {
        let missing = Path::new("/nonexistent/nats-server");
        let Err(e) = NatsProcess::start(missing, Duration::from_secs(1)) else {
            panic!("a missing binary started");
        };
        assert!(
            matches!(e, BenchError::Cluster(ClusterBenchError::Spawn { .. })),
            "{e}"
        );
    }
}
