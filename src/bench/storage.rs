//! `quicbus bench storage`: what one append to the disk store costs under
//! each fsync policy, so the default can be chosen on figures.
//!
//! Each policy gets a fresh data directory with one room and the server's
//! default history bounds. Events (each an encoded `Event` frame, as the
//! server stores them) are appended one after the other through
//! [`DiskStore`], and each call is timed. A thread calls `maintain` once a
//! second, as the server's maintenance task does: under `interval`, that is
//! where the syncs happen, beside the appends.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::scratch::ScratchDir;
use super::{ratio, udp_echo, BenchError, Progress};
use quicbus::server::history::{now_ms, HistoryStore, Publisher, Record};
use quicbus::server::{DiskOptions, DiskStore, FsyncPolicy, HistoryLimits};
use quicbus::wire::{encode_framed, Frame};

/// The event name of every stored event.
pub const EVENT_NAME: &str = "e";

/// How often the maintenance thread runs, as the server's.
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);

/// Settings of a storage run.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Appends per policy.
    pub events: u64,
    /// Payload bytes (at least 8: the offset).
    pub size: usize,
    /// The policies measured, in order.
    pub policies: Vec<FsyncPolicy>,
    /// Longest one policy may take; it then reports the appends made.
    pub run_limit: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            events: 1_000_000,
            size: 64,
            policies: vec![
                FsyncPolicy::Always,
                FsyncPolicy::default(),
                FsyncPolicy::Never,
            ],
            run_limit: Duration::from_secs(10),
        }
    }
}

impl StorageConfig {
    /// Checks the settings before anything starts.
    pub fn validate(&self) -> Result<(), BenchError> {
        let fail = |m: String| Err(BenchError::Other(m));
        if self.events == 0 {
            return fail("--events must be at least 1".into());
        }
        if self.size < 8 {
            return fail(format!(
                "--size {} is too small: each event carries its 8-byte offset",
                self.size
            ));
        }
        if self.policies.is_empty() {
            return fail("no fsync policy chosen".into());
        }
        Ok(())
    }
}

/// One policy: the JSON object and the table row.
#[derive(Debug, Clone, Serialize)]
pub struct StorageRow {
    /// `append`.
    pub name: String,
    /// `disk`.
    pub storage: String,
    /// `always`, `interval` or `never`.
    pub fsync: String,
    /// Payload bytes per event.
    pub size: usize,
    /// Appends asked for.
    pub sent: u64,
    /// Appends made (fewer than `sent` when the run limit stopped it).
    pub appends: u64,
    /// Time of one append call, µs (to 0.01 µs).
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Appends per second, one after the other.
    pub events_per_sec: f64,
    /// Runs of `maintain` during the appends (where `interval` syncs): a
    /// run shorter than a second has none.
    pub maintain_runs: u64,
    /// The raw-UDP echo's p50 in the same run.
    pub udp_p50_us: u64,
    /// `p50_us / udp_p50_us`.
    pub p50_vs_udp: f64,
    /// `p99_us / udp_p50_us`.
    pub p99_vs_udp: f64,
}

/// Runs every policy, each on a fresh data directory.
pub fn run(config: &StorageConfig, progress: &Progress) -> Result<Vec<StorageRow>, BenchError> {
    config.validate()?;
    progress.step("udp echo");
    let udp = udp_echo(10_000, 1_000, config.size, progress)?;
    let udp_p50 = udp.value_at_quantile(0.5);
    progress.finish(&format!("p50 {udp_p50} µs"));

    let mut rows = Vec::new();
    for &policy in &config.policies {
        progress.step(&format!("append, fsync {policy}"));
        let data = ScratchDir::new("storage")?;
        let timed = appends(config, policy, data.path(), progress)?;
        let (h, appends, elapsed) = (&timed.histogram, timed.appends, timed.elapsed);
        let us = |q: f64| (h.value_at_quantile(q) as f64 / 10.0).round() / 100.0;
        let row = StorageRow {
            name: "append".into(),
            storage: "disk".into(),
            fsync: policy.to_string(),
            size: config.size,
            sent: config.events,
            appends,
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: (h.max() as f64 / 10.0).round() / 100.0,
            events_per_sec: (appends as f64 / elapsed.as_secs_f64().max(1e-9)).round(),
            maintain_runs: timed.maintain_runs,
            udp_p50_us: udp_p50,
            p50_vs_udp: ratio(h.value_at_quantile(0.5), udp_p50 * 1000),
            p99_vs_udp: ratio(h.value_at_quantile(0.99), udp_p50 * 1000),
        };
        progress.finish(&format!(
            "p50 {} µs, p99 {} µs, {:.0} appends/s, {}/{} made",
            row.p50_us, row.p99_us, row.events_per_sec, row.appends, row.sent
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// What the appends of one policy took.
struct Timed {
    /// Nanoseconds per append.
    histogram: Histogram<u64>,
    appends: u64,
    elapsed: Duration,
    maintain_runs: u64,
}

/// Times `config.events` appends (or as many as the run limit allows) with
/// `policy` under `dir`.
fn appends(
    config: &StorageConfig,
    policy: FsyncPolicy,
    dir: &Path,
    progress: &Progress,
) -> Result<Timed, BenchError> {
    let options = DiskOptions {
        fsync: policy,
        ..DiskOptions::default()
    };
    let store = Arc::new(
        DiskStore::open(dir, HistoryLimits::default(), options)
            .map_err(BenchError::history(format!("opening {}", dir.display())))?,
    );
    let (stop, stopped) = mpsc::channel::<()>();
    let maintenance = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut runs = 0u64;
            loop {
                match stopped.recv_timeout(MAINTAIN_EVERY) {
                    Err(RecvTimeoutError::Timeout) => {
                        store.maintain(now_ms());
                        runs += 1;
                    }
                    _ => return runs,
                }
            }
        })
    };
    let result = timed_appends(config, store.as_ref(), progress);
    drop(stop);
    let maintain_runs = maintenance
        .join()
        .map_err(|_| BenchError::Other("the maintenance thread panicked".into()))?;
    let (histogram, appends, elapsed) = result?;
    Ok(Timed {
        histogram,
        appends,
        elapsed,
        maintain_runs,
    })
}

fn timed_appends(
    config: &StorageConfig,
    store: &DiskStore,
    progress: &Progress,
) -> Result<(Histogram<u64>, u64, Duration), BenchError> {
    let mut room = store
        .open_room("storage")
        .map_err(BenchError::history("opening the room"))?;
    // Nanoseconds from 1 ns to 60 s.
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| BenchError::Other(format!("histogram: {e}")))?;
    let started = Instant::now();
    let mut made = 0;
    for offset in 1..=config.events {
        if started.elapsed() > config.run_limit {
            break;
        }
        let record = event_record(offset, config.size, now_ms());
        let before = Instant::now();
        room.append(record)
            .map_err(BenchError::history(format!("appending event {offset}")))?;
        let took = u64::try_from(before.elapsed().as_nanos()).unwrap_or(u64::MAX);
        h.saturating_record(took.clamp(1, h.high()));
        made = offset;
        if offset.is_multiple_of(1024) {
            progress.tick(offset, config.events);
        }
    }
    Ok((h, made, started.elapsed()))
}

/// Event `offset` as the server stores it: the encoded `Event` frame of a
/// `size`-byte payload that starts with the offset.
pub fn event_record(offset: u64, size: usize, at_ms: u64) -> Record {
    Record {
        offset,
        at_ms,
        publisher: Publisher::default(),
        frame: encode_framed(&Frame::Event {
            offset,
            event: EVENT_NAME.into(),
            payload: payload(offset, size),
        }),
    }
}

/// A payload of `size` bytes (at least 8) starting with `offset`.
pub fn payload(offset: u64, size: usize) -> Bytes {
    let mut p = vec![0u8; size.max(8)];
    p[..8].copy_from_slice(&offset.to_le_bytes());
    Bytes::from(p)
}

/// The offset a payload made by [`payload`] starts with.
pub fn offset_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_event_is_an_event_frame_carrying_its_offset() {
        let record = event_record(42, 64, 1_000);
        assert_eq!((record.offset, record.at_ms), (42, 1_000));
        let (len, prefix) = quicbus::wire::read_varint(&record.frame)
            .expect("a length prefix")
            .expect("a whole varint");
        let body = &record.frame[prefix..];
        assert_eq!(body.len() as u64, len);
        match quicbus::wire::decode(body) {
            Ok(Frame::Event {
                offset,
                event,
                payload,
            }) => {
                assert_eq!((offset, event.as_str()), (42, EVENT_NAME));
                assert_eq!(payload.len(), 64);
                assert_eq!(offset_of(&payload), Some(42));
            }
            other => panic!("not an event frame: {other:?}"),
        }
    }

    #[test]
    fn config_is_checked() {
        assert!(StorageConfig::default().validate().is_ok());
        for bad in [
            StorageConfig {
                events: 0,
                ..StorageConfig::default()
            },
            StorageConfig {
                size: 7,
                ..StorageConfig::default()
            },
            StorageConfig {
                policies: vec![],
                ..StorageConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
