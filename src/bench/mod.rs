//! Benchmarks users run: `quicbus bench latency`, `fanout`, `replay`,
//! `storage`, `soak` and `attack`.
//! Part of the binary, not of the library: a performance tool built on the
//! library's public API, as a user's would be.
//!
//! Every run also measures a raw-UDP echo on loopback (the machine's floor)
//! and reports each figure beside it, because a shared machine is noisy and
//! only ratios taken in the same run compare across runs. Paced latency is
//! taken from the *intended* send time of each message, so a stall shows in
//! the figures instead of being hidden (no coordinated omission).
//!
//! - [`latency`]: relay and one-way round trips, reliable vs datagram, clean
//!   and through [`quicbus::netsim`] with loss, delay and jitter.
//! - [`fanout`]: one publisher to N subscriber connections of a `quicbus
//!   serve` child process, with its CPU time and memory per connection.
//! - [`replay`]: a late joiner reading a million stored events from a
//!   durable server, and what opening a large data directory costs.
//! - [`storage`]: the cost of one append to the disk store under each
//!   fsync policy.
//! - [`soak`]: a thousand well-behaved clients for a set time, the
//!   server's memory over time, every reliable event checked, and with
//!   [`attack`]s in the background, a bystander's relay latency clean and
//!   under attack.
//! - [`attack_targets`]: each attack alone against a fresh server, measured
//!   against the targets of issue 9 (a bystander's connect and join times,
//!   the server's memory per attack).
//! - [`cluster`]: the bench's own `nats-server` and `serve --cluster`
//!   nodes, and the core-NATS relay, for `latency --cluster` (a relay
//!   across two nodes) and `fanout --cluster` (subscribers over three).
//! - [`plot`]: the SVG pictures of latency and fan-out.
//!
//! Durable history (`serve`'s default) is measured against memory storage
//! where it matters: the latency relay runs on both, fan-out on either.

pub mod attack;
pub mod attack_targets;
pub mod cluster;
pub mod fanout;
pub mod latency;
pub mod plot;
mod progress;
pub mod replay;
pub mod scratch;
mod server_process;
pub mod soak;
pub mod storage;
mod udp;

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use progress::Progress;
pub use udp::udp_echo;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A socket, file or child-process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The bus itself failed (connect, join, emit).
    #[error("{what}: {source}")]
    Client {
        what: String,
        #[source]
        source: quicbus::client::ClientError,
    },
    /// The history store failed (open, append).
    #[error("{what}: {source}")]
    History {
        what: String,
        #[source]
        source: quicbus::server::HistoryError,
    },
    /// The bench's NATS or the core-NATS relay failed.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterBenchError),
    /// Anything else that stops a run, with what was being done.
    #[error("{0}")]
    Other(String),
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }

    pub(crate) fn client(
        what: impl Into<String>,
    ) -> impl FnOnce(quicbus::client::ClientError) -> BenchError {
        let what = what.into();
        move |source| BenchError::Client { what, source }
    }

    pub(crate) fn history(
        what: impl Into<String>,
    ) -> impl FnOnce(quicbus::server::HistoryError) -> BenchError {
        let what = what.into();
        move |source| BenchError::History { what, source }
    }
}

/// Where a measured server keeps room history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// In a data directory, fsync `interval`: what `quicbus serve` does by
    /// default.
    Disk,
    /// In memory (`serve --memory`).
    Memory,
}

impl StorageKind {
    /// `disk` or `memory`, as in the JSON and the table.
    pub fn name(self) -> &'static str {
        match self {
            StorageKind::Disk => "disk",
            StorageKind::Memory => "memory",
        }
    }
}

/// A histogram of microseconds from 1 µs to 60 s, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Records `d` in microseconds (at least 1; clamped to the histogram's top).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, h.high());
    h.saturating_record(us);
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    /// The percentiles of `h`; all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Points of a latency-percentile curve: (quantile, microseconds), from the
/// median out to the largest sample (placed at quantile `1 - 1/(2n)` of `n`
/// samples, where the samples run out), for [`plot`].
pub fn curve(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    // Evenly spaced in "nines": 0.5, ..., 0.9, ..., 0.99, ... up to what
    // the sample count supports.
    let max_nines = (h.len() as f64).log10().max(1.0);
    let steps = 60;
    for i in 0..=steps {
        let median = std::f64::consts::LOG10_2;
        let nines = median + (max_nines - median) * i as f64 / steps as f64;
        let q = 1.0 - 10f64.powf(-nines);
        points.push((q, h.value_at_quantile(q)));
    }
    points.push((1.0 - 0.5 / h.len() as f64, h.max()));
    points
}

/// `value / base`, to one decimal place; 0 when there is no base.
pub fn ratio(value: u64, base: u64) -> f64 {
    if base == 0 {
        return 0.0;
    }
    (value as f64 / base as f64 * 10.0).round() / 10.0
}

/// Writes `rows` as a pretty JSON array to `path`.
pub fn write_json<T: Serialize>(path: &std::path::Path, rows: &[T]) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(rows)
        .map_err(|e| BenchError::Other(format!("encoding JSON: {e}")))?;
    std::fs::write(path, text + "\n").map_err(BenchError::io(format!("writing {}", path.display())))
}

/// Facts about the machine a run was made on, for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| std::env::consts::OS.into());
    format!("{cpu}, {cores} cores, {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_empty_is_zero() {
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
        let mut h = histogram();
        for us in 1..=10_000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let p = Percentiles::of(&h);
        assert!(p.p50_us <= p.p90_us && p.p90_us <= p.p99_us);
        assert!(p.p99_us <= p.p999_us && p.p999_us <= p.max_us);
        assert!((4_990..=5_010).contains(&p.p50_us), "{p:?}");
        assert!((9_980..=10_010).contains(&p.max_us), "{p:?}");
    }

    #[test]
    fn record_clamps_zero_and_huge() {
        let mut h = histogram();
        record(&mut h, Duration::ZERO);
        record(&mut h, Duration::from_secs(3600));
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= 60_000_000 - 60_000);
    }

    #[test]
    fn curve_is_monotonic_and_ends_at_max() {
        let mut h = histogram();
        for us in [100, 120, 130, 150, 2_000, 50_000] {
            for _ in 0..100 {
                record(&mut h, Duration::from_micros(us));
            }
        }
        let c = curve(&h);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(c.last().map(|p| p.1), Some(h.max()));
        assert!(curve(&histogram()).is_empty());
    }

    #[test]
    fn ratio_rounds_and_survives_zero() {
        assert_eq!(ratio(150, 20), 7.5);
        assert_eq!(ratio(5, 0), 0.0);
    }
}
