//! The two clients of a latency measurement and the two ways they send: one
//! message in flight, or paced at a rate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use super::auth::PairTokens;
use super::{Kind, LatencyConfig};
use crate::bench::{histogram, record, BenchError, Progress};
use quicbus::client::{Client, ClientOptions, Delivery, Events, Trust};

/// How long a reliable message may take before the run fails: it must
/// arrive, however slowly.
const RELIABLE_LIMIT: Duration = Duration::from_secs(20);

/// The room A sends to and B receives from.
pub(super) const PING: &str = "bench.latency.ping";
/// The room B bounces each message to in a relay.
pub(super) const PONG: &str = "bench.latency.pong";

/// Client A (the sender) and client B (the receiver or bouncer), connected.
pub(super) struct Pair {
    a: Client,
    a_events: Events,
    b: Client,
    b_events: Events,
}

impl Pair {
    /// Connects A and B, each with its token if the server checks them.
    pub(super) async fn connect(
        server: SocketAddr,
        ca_pem: &str,
        kind: Kind,
        tokens: Option<PairTokens>,
    ) -> Result<Pair, BenchError> {
        let mut options = ClientOptions::new(server);
        options.trust = Trust::CaPem(ca_pem.to_string());
        options.client_name = "quicbus-bench".into();
        // A handshake through 5% loss may need a few retransmissions.
        options.connect_timeout = Duration::from_secs(15);
        // A benchmark reports a lost connection instead of hiding it.
        options.reconnect = None;
        let (a_token, b_token) = match tokens {
            Some(t) => (Some(t.sender), Some(t.receiver)),
            None => (None, None),
        };
        let a = ClientOptions {
            token: a_token,
            ..options.clone()
        };
        let b = ClientOptions {
            token: b_token,
            ..options
        };
        Pair::connect_with(a, b, kind).await
    }

    /// Connects A and B with their own options (each to its own server,
    /// for a relay across cluster nodes).
    pub(super) async fn connect_with(
        mut a: ClientOptions,
        mut b: ClientOptions,
        kind: Kind,
    ) -> Result<Pair, BenchError> {
        a.copies = kind == Kind::Copies;
        b.copies = kind == Kind::Copies;
        let (a, a_events) = Client::connect(a)
            .await
            .map_err(BenchError::client("connecting client A"))?;
        let (b, b_events) = Client::connect(b)
            .await
            .map_err(BenchError::client("connecting client B"))?;
        Ok(Pair {
            a,
            a_events,
            b,
            b_events,
        })
    }

    /// B joins room [`PING`], where A sends. In a relay, A joins [`PONG`]
    /// and B bounces each message there for A to receive; one-way, B
    /// receives it.
    pub(super) async fn join(self, kind: Kind, relay: bool) -> Result<Joined, BenchError> {
        let Pair {
            a,
            a_events,
            b,
            mut b_events,
        } = self;
        b.join(PING)
            .await
            .map_err(BenchError::client("B joins ping"))?;
        let (events, bouncer) = if relay {
            a.join(PONG)
                .await
                .map_err(BenchError::client("A joins pong"))?;
            let bouncer_client = b.clone();
            let bouncer = tokio::spawn(async move {
                while let Some(event) = b_events.next().await {
                    let sent = match event.delivery {
                        Delivery::Reliable { .. } => {
                            bouncer_client.emit(PONG, "m", event.payload).await
                        }
                        Delivery::Datagram { .. } => {
                            bouncer_client.emit_datagram(PONG, "m", event.payload).await
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
        Ok(Joined {
            a,
            b,
            events,
            bouncer,
            kind,
            next: 0,
            misordered: 0,
        })
    }
}

/// A pair whose rooms are joined: ready to send, in as many rounds as the
/// caller likes (sequence numbers go on from one round to the next).
pub(super) struct Joined {
    a: Client,
    b: Client,
    /// Where the messages come back: A's events in a relay, B's one-way.
    events: Events,
    bouncer: Option<JoinHandle<()>>,
    kind: Kind,
    /// The sequence number of the next message.
    next: u64,
    /// Reliable messages that arrived twice or out of order so far: 0
    /// unless the bus is broken.
    pub(super) misordered: u64,
}

impl Joined {
    /// Sends `count` messages of `size` bytes, each when the previous one
    /// has arrived or, a datagram, was given up after `loss_timeout`.
    /// Records their latencies in `into`, unless warming up (`None`).
    pub(super) async fn one_in_flight(
        &mut self,
        count: u64,
        size: usize,
        loss_timeout: Duration,
        mut into: Option<&mut Histogram<u64>>,
    ) -> Result<(), BenchError> {
        let kind = self.kind;
        let limit = if kind.is_reliable() {
            RELIABLE_LIMIT
        } else {
            loss_timeout
        };
        for _ in 0..count {
            let seq = self.next;
            self.next += 1;
            let intended = Instant::now();
            emit(&self.a, kind, seq, size).await?;
            let deadline = tokio::time::Instant::from_std(intended + limit);
            loop {
                match tokio::time::timeout_at(deadline, self.events.next()).await {
                    Ok(Some(event)) if seq_of(&event.payload) == Some(seq) => {
                        if let Some(h) = into.as_deref_mut() {
                            record(h, intended.elapsed());
                        }
                        break;
                    }
                    // A reliable message arrives once and in turn; a
                    // datagram may come after it was given up.
                    Ok(Some(_)) => {
                        if kind.is_reliable() {
                            self.misordered += 1;
                        }
                        continue;
                    }
                    Ok(None) => {
                        return Err(BenchError::Other(format!(
                            "the connection closed during message {seq}: {}",
                            self.a.closed().await
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
        }
        Ok(())
    }

    /// Sends `config.warmup + config.samples` messages paced at `rate` per
    /// second, each timed from its due time; the latencies of the measured
    /// ones.
    pub(super) async fn paced(
        &mut self,
        config: &LatencyConfig,
        rate: f64,
        loss_timeout: Duration,
        progress: &Progress,
    ) -> Result<Histogram<u64>, BenchError> {
        let kind = self.kind;
        let mut h = histogram();
        let total = config.warmup + config.samples;
        let base = self.next;
        self.next += total;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now() + Duration::from_millis(5);
        // Message `i` of this round (sequence number `base + i`) is due then.
        let due = move |i: u64| start + interval.mul_f64(i as f64);
        let limit = if kind.is_reliable() {
            RELIABLE_LIMIT
        } else {
            loss_timeout
        };
        // The sender keeps the schedule on its own, whatever the bus does.
        let sender = {
            let (a, size) = (self.a.clone(), config.size);
            tokio::spawn(async move {
                for i in 0..total {
                    let at = due(i);
                    // Tokio's timer is 1 ms coarse: sleep until 2 ms before,
                    // then yield (letting the receiving tasks run) until due.
                    if let Some(early) = at.checked_sub(Duration::from_millis(2)) {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(early)).await;
                    }
                    while Instant::now() < at {
                        tokio::task::yield_now().await;
                    }
                    emit(&a, kind, base + i, size).await?;
                }
                Ok::<(), BenchError>(())
            })
        };
        let end = tokio::time::Instant::from_std(due(total.saturating_sub(1)) + limit);
        let mut received = 0u64;
        let mut expected = 0u64;
        let outcome = loop {
            match tokio::time::timeout_at(end, self.events.next()).await {
                Ok(Some(event)) => {
                    let Some(i) = seq_of(&event.payload).and_then(|seq| seq.checked_sub(base))
                    else {
                        continue;
                    };
                    if i >= total {
                        continue;
                    }
                    if kind.is_reliable() {
                        // Exactly once, in order: anything else is a fault.
                        if i != expected {
                            self.misordered += 1;
                            continue;
                        }
                        expected += 1;
                    } else if i < expected {
                        // A late datagram (its receiver drops the stale ones).
                        continue;
                    } else {
                        expected = i + 1;
                    }
                    received += 1;
                    if i >= config.warmup {
                        record(&mut h, due(i).elapsed());
                    }
                    progress.tick(received, total);
                    if received == total {
                        break Ok(());
                    }
                }
                Ok(None) => {
                    break Err(BenchError::Other(format!(
                        "the connection closed: {}",
                        self.a.closed().await
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
        outcome.map(|()| h)
    }

    /// Stops the bouncer and closes both clients.
    pub(super) async fn close(self) {
        if let Some(bouncer) = self.bouncer {
            bouncer.abort();
        }
        self.a.close().await;
        self.b.close().await;
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
        Kind::Reliable | Kind::Copies => a.emit(PING, "m", p).await,
        Kind::Datagram => a.emit_datagram(PING, "m", p).await,
    }
    .map_err(BenchError::client(format!("emitting message {seq}")))
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
}
