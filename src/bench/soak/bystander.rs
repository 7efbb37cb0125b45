//! The bystander: a well-behaved pair on its own thread and runtime whose
//! relay latency (A → server → B → server → A, reliable) is measured all
//! through the soak, per phase and per second. Messages are paced, and each
//! is timed from the moment it is handed to the library: an emit only
//! queues, so the sender never waits for the bus, and a stall of the bus
//! shows in every message behind it. (Timing from the due time instead
//! would add Tokio's 1 ms timer granularity to every figure.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use quicbus::client::{Client, ClientOptions};

use super::Timeline;
use crate::bench::{histogram, record, BenchError};

/// How long the last messages may take after the run stops.
const LAST_WAIT: Duration = Duration::from_secs(5);

/// What the bystander measured.
pub(super) struct Measured {
    /// Latencies of messages due in the clean phase.
    pub clean: Histogram<u64>,
    /// Latencies of messages due in the attack phase.
    pub attack: Histogram<u64>,
    /// Per second since the start of the run (warm-up included).
    pub per_second: BTreeMap<u64, Histogram<u64>>,
    pub sent: u64,
    pub received: u64,
    /// Lost, duplicated or reordered messages, a failed emit or a close.
    pub errors: Vec<String>,
}

/// The connected pair, B already bouncing.
pub(super) struct Bystander {
    a: Client,
    a_events: quicbus::client::Events,
    b: Client,
    bouncer: tokio::task::JoinHandle<()>,
}

impl Bystander {
    pub(super) async fn connect(options: &ClientOptions) -> Result<Self, BenchError> {
        let mut options = options.clone();
        options.client_name = "soak-bystander".into();
        options.endpoint = None;
        options.reconnect = None;
        let (a, a_events) = Client::connect(options.clone())
            .await
            .map_err(BenchError::client("connecting bystander A"))?;
        let (b, mut b_events) = Client::connect(options)
            .await
            .map_err(BenchError::client("connecting bystander B"))?;
        b.join("bystander-ping")
            .await
            .map_err(BenchError::client("bystander B joins"))?;
        a.join("bystander-pong")
            .await
            .map_err(BenchError::client("bystander A joins"))?;
        let bouncer_client = b.clone();
        let bouncer = tokio::spawn(async move {
            while let Some(event) = b_events.next().await {
                if bouncer_client
                    .emit("bystander-pong", "m", event.payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Bystander {
            a,
            a_events,
            b,
            bouncer,
        })
    }

    /// Sends `rate` messages a second from `timeline.start` to
    /// `timeline.stop`, and times each one back.
    pub(super) async fn run(mut self, rate: f64, timeline: Timeline) -> Measured {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = timeline.start;
        let total = (timeline.stop.saturating_duration_since(start).as_secs_f64() * rate) as u64;
        let due = move |i: u64| start + interval.mul_f64(i as f64);
        let sender = {
            let a = self.a.clone();
            tokio::spawn(async move {
                for i in 0..total {
                    tokio::time::sleep_until(due(i).into()).await;
                    let sent_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    let mut p = vec![0u8; 64];
                    p[..8].copy_from_slice(&i.to_le_bytes());
                    p[8..16].copy_from_slice(&sent_ns.to_le_bytes());
                    if let Err(e) = a.emit("bystander-ping", "m", Bytes::from(p)).await {
                        return Err(format!("bystander emit #{i}: {e}"));
                    }
                }
                Ok(())
            })
        };
        let mut m = Measured {
            clean: histogram(),
            attack: histogram(),
            per_second: BTreeMap::new(),
            sent: total,
            received: 0,
            errors: Vec::new(),
        };
        let end = tokio::time::Instant::from_std(timeline.stop + LAST_WAIT);
        let mut expected = 0u64;
        while expected < total {
            match tokio::time::timeout_at(end, self.a_events.next()).await {
                Ok(Some(event)) => {
                    let field = |range: std::ops::Range<usize>| {
                        event
                            .payload
                            .get(range)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_le_bytes)
                    };
                    let (seq, sent_ns) = (field(0..8), field(8..16).unwrap_or(0));
                    if seq != Some(expected) {
                        m.errors.push(format!(
                            "bystander: message {seq:?} arrived, {expected} expected"
                        ));
                        if m.errors.len() > 20 {
                            break;
                        }
                        continue;
                    }
                    let at = start + Duration::from_nanos(sent_ns);
                    let latency = at.elapsed();
                    match timeline.phase(at) {
                        Phase::Clean => record(&mut m.clean, latency),
                        Phase::Attack => record(&mut m.attack, latency),
                        Phase::Warmup => {}
                    }
                    let second = at.saturating_duration_since(start).as_secs();
                    record(
                        m.per_second.entry(second).or_insert_with(histogram),
                        latency,
                    );
                    m.received += 1;
                    expected += 1;
                }
                Ok(None) => {
                    m.errors.push(format!(
                        "bystander: unexpected close: {}",
                        self.a.closed().await
                    ));
                    break;
                }
                Err(_) => {
                    m.errors.push(format!(
                        "bystander: {} of {total} messages not back within {LAST_WAIT:?} of the end",
                        total - expected
                    ));
                    break;
                }
            }
        }
        sender.abort();
        if let Ok(Err(e)) = sender.await {
            m.errors.push(e);
        }
        self.bouncer.abort();
        self.a.close().await;
        self.b.close().await;
        m
    }
}

/// Where in the run a moment lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Warmup,
    Clean,
    Attack,
}

impl Timeline {
    pub(super) fn phase(&self, at: Instant) -> Phase {
        if at < self.warmed {
            Phase::Warmup
        } else if self.attack.is_some_and(|attack| at >= attack) {
            Phase::Attack
        } else {
            Phase::Clean
        }
    }
}
