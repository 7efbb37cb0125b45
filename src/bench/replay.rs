//! `quicbus bench replay`: a late joiner reads a room's whole stored
//! history from a durable server, and what a large data directory costs the
//! server to open and to hold.
//!
//! 1. **Fill.** One room of a fresh data directory gets events 1..=N (or as
//!    many as fill a byte budget), written through [`DiskStore`] directly:
//!    each record is the encoded `Event` frame the server would have
//!    stored, with a payload that starts with its offset.
//! 2. **Open.** `DiskStore::open` on that directory is timed in this
//!    process; it verifies every record. The files were just written, so
//!    they are in the page cache: this is a warm open.
//! 3. **Serve.** A `quicbus serve --data DIR` child process opens it again;
//!    the time from its start to "listening" and its resident memory then
//!    are reported. With `cold`, the page cache is dropped first (root
//!    only), so the server reads the directory from the device, and so does
//!    the replay.
//! 4. **Replay.** A client joins the room with `since: 0` and counts events
//!    until all N have arrived, each offset the next one and each payload
//!    carrying its offset. Reported: time to the first event, events/s
//!    and payload MB/s from the join to the last event, and the server's
//!    resident memory afterwards (and its peak).

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::scratch::{dir_bytes, ScratchDir};
use super::server_process::{ServeOptions, ServerProcess};
use super::storage::{event_record, offset_of, EVENT_NAME};
use super::{udp_echo, BenchError, Progress};
use quicbus::client::{Client, JoinOptions};
use quicbus::server::history::{now_ms, HistoryStore};
use quicbus::server::{DiskOptions, DiskStore, FsyncPolicy, HistoryLimits};

/// The room filled and replayed.
const ROOM: &str = "replay";
/// The replay fails when no event has come for this long.
const STALL: Duration = Duration::from_secs(10);
/// Bytes a record takes on disk besides its frame: length and checksum,
/// then offset, time and publisher (see the segment format of the disk store).
const RECORD_OVERHEAD: u64 = 4 + 4 + 8 * 4;
/// History bounds that keep everything filled: the server must not trim
/// the room while the benchmark reads it.
const KEEP_EVENTS: u64 = 1 << 40;
const KEEP_BYTES: u64 = 1 << 50;
const KEEP_SECONDS: u64 = 30 * 24 * 3600;

/// How much to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Exactly this many events.
    Events(u64),
    /// Events until the data directory holds about this many bytes.
    Bytes(u64),
}

/// Settings of a replay run.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub fill: Fill,
    /// Payload bytes (at least 8: the offset).
    pub size: usize,
    /// The `quicbus` executable whose `serve` is measured.
    pub server_exe: std::path::PathBuf,
    /// `serve --worker-threads`.
    pub server_threads: usize,
    /// Longest the replay may take.
    pub run_limit: Duration,
    /// Drop the page cache before the server starts (needs root).
    pub cold: bool,
}

impl ReplayConfig {
    /// The defaults of `quicbus bench replay`, serving with `server_exe`.
    pub fn new(server_exe: std::path::PathBuf) -> Self {
        ReplayConfig {
            fill: Fill::Events(1_000_000),
            size: 64,
            server_exe,
            server_threads: 0,
            run_limit: Duration::from_secs(300),
            cold: false,
        }
    }

    /// Checks the settings before anything starts.
    pub fn validate(&self) -> Result<(), BenchError> {
        let fail = |m: String| Err(BenchError::Other(m));
        if self.size < 8 {
            return fail(format!(
                "--size {} is too small: each event carries its 8-byte offset",
                self.size
            ));
        }
        if matches!(self.fill, Fill::Events(0) | Fill::Bytes(0)) {
            return fail("nothing to replay: --events and --bytes must be at least 1".into());
        }
        Ok(())
    }

    fn limits() -> HistoryLimits {
        HistoryLimits {
            max_events: usize::try_from(KEEP_EVENTS).unwrap_or(usize::MAX),
            max_age: Duration::from_secs(KEEP_SECONDS),
            max_bytes: usize::try_from(KEEP_BYTES).unwrap_or(usize::MAX),
        }
    }
}

/// One run: the JSON object and the table row.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayRow {
    /// `replay`.
    pub name: String,
    /// `disk`.
    pub storage: String,
    /// Payload bytes per event.
    pub size: usize,
    /// Events stored, offsets 1..=sent.
    pub sent: u64,
    /// Bytes of the data directory.
    pub disk_bytes: u64,
    /// Time to write them through the store (fsync `never`), seconds.
    pub fill_s: f64,
    /// `DiskStore::open` of the filled directory in this process (warm
    /// page cache), ms.
    pub open_ms: f64,
    /// From the start of the `serve` process to "listening", ms.
    pub serve_ready_ms: f64,
    /// Whether the page cache was dropped before the server started.
    pub cold: bool,
    /// Events the joining client received in order.
    pub delivered: u64,
    /// Events that came with another offset than the next one: 0 unless the
    /// bus is broken.
    pub misordered: u64,
    /// Events whose payload, name or room was not the stored one: 0 unless
    /// the bus is broken.
    pub damaged: u64,
    /// From the join request to the first event, ms.
    pub first_event_ms: f64,
    /// From the join request to the last event, seconds.
    pub replay_s: f64,
    /// `delivered / replay_s`.
    pub events_per_sec: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub payload_mb_per_sec: f64,
    /// The server's resident memory after opening, bytes.
    pub rss_open_bytes: u64,
    /// … after the replay.
    pub rss_after_replay_bytes: u64,
    /// … at its highest, up to the end of the replay.
    pub rss_peak_bytes: u64,
    /// The raw-UDP echo's p50 in the same run.
    pub udp_p50_us: u64,
}

/// Fills, opens, serves and replays; one row.
pub fn run(config: &ReplayConfig, progress: &Progress) -> Result<Vec<ReplayRow>, BenchError> {
    config.validate()?;
    progress.step("udp echo");
    let udp = udp_echo(10_000, 1_000, config.size, progress)?;
    let udp_p50 = udp.value_at_quantile(0.5);
    progress.finish(&format!("p50 {udp_p50} µs"));

    let scratch = ScratchDir::new("replay")?;
    let data = scratch.path().join("data");
    progress.step("fill");
    let (sent, fill_time) = fill(&data, config, progress)?;
    let disk_bytes = dir_bytes(&data)?;
    progress.finish(&format!(
        "{sent} events, {:.1} MB on disk in {:.1} s",
        disk_bytes as f64 / 1e6,
        fill_time.as_secs_f64()
    ));

    progress.step("open");
    let started = Instant::now();
    let store = DiskStore::open(&data, ReplayConfig::limits(), DiskOptions::default())
        .map_err(BenchError::history(format!("opening {}", data.display())))?;
    let open_time = started.elapsed();
    drop(store);
    progress.finish(&format!("{:.1} ms", ms(open_time)));

    if config.cold {
        progress.step("drop the page cache");
        drop_page_cache()?;
        progress.finish("done");
    }

    progress.step("serve");
    let limits = ReplayConfig::limits();
    let server = ServerProcess::start(&ServeOptions {
        worker_threads: config.server_threads,
        data: Some(data.clone()),
        extra: vec![
            format!("--history-events={}", limits.max_events),
            format!("--history-seconds={}", limits.max_age.as_secs()),
            format!("--history-bytes={}", limits.max_bytes),
        ],
        ready_timeout: Duration::from_secs(600),
        ..ServeOptions::new(config.server_exe.clone())
    })?;
    let rss_open = server.rss()?;
    progress.finish(&format!(
        "listening after {:.1} ms, {:.1} MB resident",
        ms(server.ready_after()),
        rss_open as f64 / 1e6
    ));

    progress.step("replay");
    let clients = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("starting the client runtime"))?;
    let read = clients.block_on(replay(&server, sent, config, progress))?;
    let rss_after = server.rss()?;
    let rss_peak = server.peak_rss()?;
    let replay_s = read.last.as_secs_f64().max(1e-9);
    let row = ReplayRow {
        name: "replay".into(),
        storage: "disk".into(),
        size: config.size,
        sent,
        disk_bytes,
        fill_s: round3(fill_time.as_secs_f64()),
        open_ms: round3(ms(open_time)),
        serve_ready_ms: round3(ms(server.ready_after())),
        cold: config.cold,
        delivered: read.delivered,
        misordered: read.misordered,
        damaged: read.damaged,
        first_event_ms: round3(read.first.map_or(0.0, ms)),
        replay_s: (replay_s * 1e6).round() / 1e6,
        events_per_sec: (read.delivered as f64 / replay_s).round(),
        payload_mb_per_sec: round3(read.delivered as f64 * config.size as f64 / replay_s / 1e6),
        rss_open_bytes: rss_open,
        rss_after_replay_bytes: rss_after,
        rss_peak_bytes: rss_peak,
        udp_p50_us: udp_p50,
    };
    progress.finish(&format!(
        "{}/{} in order, {:.0} events/s, first after {} ms, {:.1} MB resident after",
        row.delivered,
        row.sent,
        row.events_per_sec,
        row.first_event_ms,
        rss_after as f64 / 1e6
    ));
    drop(server);
    Ok(vec![row])
}

/// Writes dirty pages out and drops the page cache, so that the next open
/// reads from the device. Root only.
fn drop_page_cache() -> Result<(), BenchError> {
    let synced = std::process::Command::new("sync")
        .status()
        .map_err(BenchError::io("running sync"))?;
    if !synced.success() {
        return Err(BenchError::Other(format!("sync failed: {synced}")));
    }
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(BenchError::io(
        "dropping the page cache (--cold needs root)",
    ))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Writes the events into room [`ROOM`] of a new store under `dir`:
/// how many, and how long it took.
fn fill(
    dir: &Path,
    config: &ReplayConfig,
    progress: &Progress,
) -> Result<(u64, Duration), BenchError> {
    let options = DiskOptions {
        // Filling is setup, not what is measured.
        fsync: FsyncPolicy::Never,
        ..DiskOptions::default()
    };
    let started = Instant::now();
    let store = DiskStore::open(dir, ReplayConfig::limits(), options)
        .map_err(BenchError::history(format!("creating {}", dir.display())))?;
    let mut room = store
        .open_room(ROOM)
        .map_err(BenchError::history("opening the room"))?;
    let mut stored = 0u64;
    let mut offset = 0u64;
    let at_ms = now_ms();
    loop {
        let (done, total) = match config.fill {
            Fill::Events(n) => (offset, n),
            Fill::Bytes(n) => (stored, n),
        };
        if done >= total {
            break;
        }
        offset += 1;
        let record = event_record(offset, config.size, at_ms);
        stored += record.frame.len() as u64 + RECORD_OVERHEAD;
        room.append(record)
            .map_err(BenchError::history(format!("storing event {offset}")))?;
        if offset.is_multiple_of(4096) {
            progress.tick(done, total);
        }
    }
    Ok((offset, started.elapsed()))
}

/// What the joining client read.
struct Read {
    delivered: u64,
    misordered: u64,
    damaged: u64,
    /// From the join request to the first event.
    first: Option<Duration>,
    /// From the join request to the last event.
    last: Duration,
}

/// Joins [`ROOM`] from offset 0 and reads until `count` events came in
/// order (or none came for [`STALL`], or the run limit passed).
async fn replay(
    server: &ServerProcess,
    count: u64,
    config: &ReplayConfig,
    progress: &Progress,
) -> Result<Read, BenchError> {
    let (client, mut events) = Client::connect(server.client_options())
        .await
        .map_err(BenchError::client("connecting the client"))?;
    let started = Instant::now();
    let deadline = started + config.run_limit;
    let join = JoinOptions {
        since: Some(0),
        ..JoinOptions::default()
    };
    client
        .join_with(ROOM, join)
        .await
        .map_err(BenchError::client("joining the room"))?;
    let mut read = Read {
        delivered: 0,
        misordered: 0,
        damaged: 0,
        first: None,
        last: Duration::ZERO,
    };
    let mut expected = 1u64;
    while read.delivered < count && Instant::now() < deadline {
        let event = match tokio::time::timeout(STALL, events.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Err(BenchError::Other(format!(
                    "the connection closed after {} of {count} events: {}",
                    read.delivered,
                    client.closed().await
                )))
            }
            Err(_) => break,
        };
        let now = started.elapsed();
        read.first.get_or_insert(now);
        read.last = now;
        if event.offset() != Some(expected) {
            read.misordered += 1;
            continue;
        }
        if &*event.room != ROOM
            || event.name != EVENT_NAME
            || event.payload.len() != config.size
            || offset_of(&event.payload) != Some(expected)
        {
            read.damaged += 1;
        }
        expected += 1;
        read.delivered += 1;
        if read.delivered.is_multiple_of(4096) {
            progress.tick(read.delivered, count);
        }
    }
    client.close().await;
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let ok = ReplayConfig::new("quicbus".into());
        assert!(ok.validate().is_ok());
        for bad in [
            ReplayConfig {
                size: 7,
                ..ok.clone()
            },
            ReplayConfig {
                fill: Fill::Events(0),
                ..ok.clone()
            },
            ReplayConfig {
                fill: Fill::Bytes(0),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_fill_by_bytes_stops_at_the_budget() {
        let dir = ScratchDir::new("test-fill").expect("scratch dir");
        let data = dir.path().join("data");
        let config = ReplayConfig {
            fill: Fill::Bytes(100_000),
            ..ReplayConfig::new("quicbus".into())
        };
        let (events, _) = fill(&data, &config, &Progress::new(false)).expect("fill");
        let on_disk = dir_bytes(&data).expect("size");
        // Each record holds a 64-byte payload plus about 50 bytes.
        assert!((800..1000).contains(&events), "{events}");
        assert!((100_000..110_000).contains(&on_disk), "{on_disk}");
    }
}
