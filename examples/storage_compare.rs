//! Chooses the room-history storage on evidence: our segmented append-only
//! log (`quicbus::server::history::DiskStore`) against two embedded engines
//! from crates.io, fjall (an LSM tree) and redb (a copy-on-write B-tree), on
//! the same data in one run. `docs/storage.md` holds a run and the choice.
//!
//! One terminal, from the repository root (the engines are compiled only
//! with the `compare-storage` feature, which needs Rust 1.90); the run of
//! `docs/storage.md` (about 5 minutes, root for `--cold`):
//!
//! `cargo run --release --example storage_compare --features compare-storage -- --events 1000000 --sync-events 50000 --cold --big-bytes 1000000000`
//!
//! Every setting gets the same events: one room, offsets 1..=N, 64-byte
//! payloads encoded as 79-byte `Event` frames. The engines store key =
//! (room, offset) big-endian, value = the record (time, publisher, frame).
//! For each setting the run measures, in this order:
//!
//! - append latency per event (hdrhistogram), one event per write
//!   transaction, acknowledged only once the setting's durability is reached;
//!   the settings that fsync every event get `--sync-events` events;
//! - in a fresh process: the open of the directory written (recovery time),
//!   VmRSS after it, and a replay of every event from the start; with
//!   `--cold` also with the page cache dropped first (root only);
//! - crash: this example re-executed as a child (hidden `--crash-child`)
//!   appends and prints each acknowledged offset; it is killed with SIGKILL
//!   half-way, the store is reopened and every printed offset looked up.
//!
//! `--big-bytes B` also fills ~B bytes of frames for each `--big` setting
//! (default `log-never,fjall-buffer`), times its open and replay, and runs
//! the crash test on top of it. `--settings a,b` measures only those.
//! Scratch data goes under `--dir` (default `target/storage-compare`, on the
//! disk, where /tmp may be a tmpfs) and is deleted at the end unless
//! `--keep`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use quicbus::server::history::{
    now_ms, DiskOptions, DiskStore, FsyncPolicy, HistoryLimits, HistoryStore, Publisher, Record,
    RoomHistory,
};
use quicbus::wire::{decode, encode_framed, read_varint, Frame};

#[derive(Parser)]
struct Args {
    /// Events appended per setting (and replayed, and the crash test's run).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events for the settings that fsync every event.
    #[arg(long, default_value_t = 20_000)]
    sync_events: u64,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Scratch directory (created, and deleted at the end).
    #[arg(long, default_value = "target/storage-compare")]
    dir: PathBuf,
    /// Also time open and replay after dropping the page cache (root only).
    #[arg(long)]
    cold: bool,
    /// Also fill about this many bytes of frames for the `--big` settings,
    /// time their open and replay, and crash-test on top (0: skip).
    #[arg(long, default_value_t = 0)]
    big_bytes: u64,
    /// The settings for `--big-bytes`.
    #[arg(long, value_delimiter = ',', default_value = "log-never,fjall-buffer")]
    big: Vec<Setting>,
    /// Measure only these settings (default: all).
    #[arg(long, value_delimiter = ',')]
    settings: Option<Vec<Setting>>,
    /// Keep the scratch directory.
    #[arg(long)]
    keep: bool,
    /// Child: append `--events` events from offset `--first` and print each
    /// acknowledged offset.
    #[arg(long, hide = true)]
    crash_child: Option<Setting>,
    /// Child: the crash child's first offset.
    #[arg(long, hide = true, default_value_t = 1)]
    first: u64,
    /// Child: open `--dir`, replay it all, print the figures.
    #[arg(long, hide = true)]
    open_child: Option<Setting>,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The room every event goes to: its name in our log, its key prefix in
/// the engines.
const ROOM: &str = "bench";
const ROOM_KEY: u64 = 1;
/// Bytes before the frame in an engine's value: at_ms, session, id.
const VALUE_HEAD: usize = 24;
/// How much a replay of our log reads at a time (as the server does).
const REPLAY_BATCH: usize = 256 * 1024;
const REDB_EVENTS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("events");

/// One engine with one durability setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Setting {
    LogNever,
    LogInterval,
    LogAlways,
    FjallBuffer,
    FjallSyncData,
    RedbNone,
    RedbImmediate,
}

const SETTINGS: [Setting; 7] = [
    Setting::LogNever,
    Setting::LogInterval,
    Setting::LogAlways,
    Setting::FjallBuffer,
    Setting::FjallSyncData,
    Setting::RedbNone,
    Setting::RedbImmediate,
];

impl Setting {
    fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    /// What an acknowledged append has done.
    fn acked_when(self) -> &'static str {
        match self {
            Setting::LogNever => "write() returned",
            Setting::LogInterval => "write() returned; fsync each 1 s",
            Setting::LogAlways => "write() + fsync",
            Setting::FjallBuffer => "journal write()",
            Setting::FjallSyncData => "journal write() + fdatasync",
            Setting::RedbNone => "commit, Durability::None",
            Setting::RedbImmediate => "commit, Durability::Immediate",
        }
    }

    /// Whether acknowledged events survive a power loss, by the engine's
    /// own account (a power cut cannot be tested here).
    fn power_loss(self) -> &'static str {
        match self {
            Setting::LogNever | Setting::FjallBuffer | Setting::RedbNone => "no",
            Setting::LogInterval => "up to ~1 s lost",
            Setting::LogAlways | Setting::FjallSyncData | Setting::RedbImmediate => "yes",
        }
    }

    fn syncs_each_event(self) -> bool {
        matches!(
            self,
            Setting::LogAlways | Setting::FjallSyncData | Setting::RedbImmediate
        )
    }

    fn open(self, dir: &Path) -> Result<Box<dyn Store>> {
        Ok(match self {
            Setting::LogNever => Box::new(LogStore::open(dir, FsyncPolicy::Never)?),
            Setting::LogInterval => Box::new(LogStore::open(
                dir,
                FsyncPolicy::Interval(Duration::from_secs(1)),
            )?),
            Setting::LogAlways => Box::new(LogStore::open(dir, FsyncPolicy::Always)?),
            Setting::FjallBuffer => Box::new(FjallStore::open(dir, false)?),
            Setting::FjallSyncData => Box::new(FjallStore::open(dir, true)?),
            Setting::RedbNone => Box::new(RedbStore::open(dir, redb::Durability::None)?),
            Setting::RedbImmediate => Box::new(RedbStore::open(dir, redb::Durability::Immediate)?),
        })
    }
}

/// One room's events in one engine.
trait Store {
    /// Stores `record`; when this returns, it is acknowledged.
    fn append(&mut self, record: Record) -> Result<()>;
    /// Hands every frame of the room to `visit`, oldest first.
    fn replay(&mut self, visit: &mut dyn FnMut(&[u8])) -> Result<()>;
}

/// Our log, with the server's `maintain` tick when the policy needs it.
struct LogStore {
    // Dropped in this order: the room, the ticker, the store.
    room: Box<dyn RoomHistory>,
    _ticker: Option<MaintainTicker>,
    _store: Arc<DiskStore>,
}

impl LogStore {
    fn open(dir: &Path, fsync: FsyncPolicy) -> Result<LogStore> {
        // Nothing is trimmed during the measurement.
        let limits = HistoryLimits {
            max_events: 1 << 40,
            max_age: Duration::from_secs(10 * 365 * 24 * 3600),
            max_bytes: 1 << 50,
        };
        let options = DiskOptions {
            fsync,
            ..Default::default()
        };
        let store = Arc::new(DiskStore::open(dir, limits, options)?);
        let room = store.open_room(ROOM)?;
        let ticker =
            matches!(fsync, FsyncPolicy::Interval(_)).then(|| MaintainTicker::start(&store));
        Ok(LogStore {
            room,
            _ticker: ticker,
            _store: store,
        })
    }
}

impl Store for LogStore {
    fn append(&mut self, record: Record) -> Result<()> {
        Ok(self.room.append(record)?)
    }

    fn replay(&mut self, visit: &mut dyn FnMut(&[u8])) -> Result<()> {
        let mut replay = match self.room.replay(0, now_ms())? {
            Ok(replay) => replay,
            Err(gap) => return Err(format!("replay from 0: {gap:?}").into()),
        };
        loop {
            let batch = replay.source.next_batch(REPLAY_BATCH)?;
            if batch.is_empty() {
                return Ok(());
            }
            batch.iter().for_each(|frame| visit(frame));
        }
    }
}

/// Calls `DiskStore::maintain` once a second on its own thread, as the
/// server does.
struct MaintainTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MaintainTicker {
    fn start(store: &Arc<DiskStore>) -> MaintainTicker {
        let (stop, stopped) = mpsc::channel::<()>();
        let store = store.clone();
        let thread = thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_secs(1))
            {
                store.maintain(now_ms());
            }
        });
        MaintainTicker {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for MaintainTicker {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct FjallStore {
    db: fjall::Database,
    events: fjall::Keyspace,
    sync_each: bool,
}

impl FjallStore {
    fn open(dir: &Path, sync_each: bool) -> Result<FjallStore> {
        let db = fjall::Database::builder(dir).open()?;
        let events = db.keyspace("events", fjall::KeyspaceCreateOptions::default)?;
        Ok(FjallStore {
            db,
            events,
            sync_each,
        })
    }
}

impl Store for FjallStore {
    fn append(&mut self, record: Record) -> Result<()> {
        // `insert` writes the journal entry to the OS before it returns.
        let key = engine_key(record.offset);
        self.events.insert(&key[..], engine_value(&record))?;
        if self.sync_each {
            self.db.persist(fjall::PersistMode::SyncData)?;
        }
        Ok(())
    }

    fn replay(&mut self, visit: &mut dyn FnMut(&[u8])) -> Result<()> {
        for item in self.events.prefix(ROOM_KEY.to_be_bytes()) {
            visit(frame_of(&item.value()?)?);
        }
        Ok(())
    }
}

struct RedbStore {
    db: redb::Database,
    durability: redb::Durability,
}

impl RedbStore {
    fn open(dir: &Path, durability: redb::Durability) -> Result<RedbStore> {
        fs::create_dir_all(dir)?;
        let db = redb::Database::create(dir.join("events.redb"))?;
        Ok(RedbStore { db, durability })
    }
}

impl Store for RedbStore {
    fn append(&mut self, record: Record) -> Result<()> {
        let key = engine_key(record.offset);
        let value = engine_value(&record);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(self.durability)?;
        txn.open_table(REDB_EVENTS)?.insert(&key[..], &value[..])?;
        txn.commit()?;
        Ok(())
    }

    fn replay(&mut self, visit: &mut dyn FnMut(&[u8])) -> Result<()> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(REDB_EVENTS) {
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            table => table?,
        };
        let (first, last) = (engine_key(0), engine_key(u64::MAX));
        for item in table.range(&first[..]..=&last[..])? {
            let (_, value) = item?;
            visit(frame_of(value.value())?);
        }
        Ok(())
    }
}

fn engine_key(offset: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&ROOM_KEY.to_be_bytes());
    key[8..].copy_from_slice(&offset.to_be_bytes());
    key
}

fn engine_value(record: &Record) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_HEAD + record.frame.len());
    value.extend_from_slice(&record.at_ms.to_le_bytes());
    value.extend_from_slice(&record.publisher.session.to_le_bytes());
    value.extend_from_slice(&record.publisher.id.to_le_bytes());
    value.extend_from_slice(&record.frame);
    value
}

fn frame_of(value: &[u8]) -> Result<&[u8]> {
    value
        .get(VALUE_HEAD..)
        .ok_or_else(|| "value shorter than its head".into())
}

/// The event at `offset`, as the server would store it.
fn record(offset: u64, payload: &Bytes) -> Record {
    let frame = encode_framed(&Frame::Event {
        offset,
        event: "position".to_owned(),
        payload: payload.clone(),
    });
    Record {
        offset,
        at_ms: now_ms(),
        publisher: Publisher {
            session: 1,
            id: offset,
        },
        frame,
    }
}

/// The offset inside a stored `Event` frame.
fn frame_offset(frame: &[u8]) -> Result<u64> {
    let (_, prefix) = read_varint(frame)?.ok_or("truncated frame")?;
    match decode(&frame[prefix..])? {
        Frame::Event { offset, .. } => Ok(offset),
        other => Err(format!("a {} frame where an Event was stored", other.name()).into()),
    }
}

/// Append latency of one setting.
struct AppendRun {
    events: u64,
    /// Nanoseconds per append.
    latency: Histogram<u64>,
    /// Time spent inside `append`, all events.
    busy: Duration,
    close: Duration,
    disk_bytes: u64,
}

fn run_appends(setting: Setting, dir: &Path, events: u64, payload: &Bytes) -> Result<AppendRun> {
    // The previous setting's dirty pages would otherwise be written back
    // during this one, and its fsyncs would wait for them.
    Command::new("sync").status()?;
    let mut store = setting.open(dir)?;
    let mut latency = Histogram::new_with_bounds(1, 600_000_000_000, 3)?;
    let mut busy = Duration::ZERO;
    for offset in 1..=events {
        let record = record(offset, payload);
        let start = Instant::now();
        store.append(record)?;
        let took = start.elapsed();
        busy += took;
        latency.saturating_record(took.as_nanos() as u64);
    }
    let start = Instant::now();
    drop(store);
    Ok(AppendRun {
        events,
        latency,
        busy,
        close: start.elapsed(),
        disk_bytes: disk_usage(dir)?,
    })
}

/// What a fresh process measured on opening a directory.
struct OpenRun {
    open: Duration,
    /// VmRSS before and after the open, in KiB.
    rss_before_kb: u64,
    rss_open_kb: u64,
    replayed: u64,
    replay: Duration,
}

impl OpenRun {
    fn replay_rate(&self) -> f64 {
        self.replayed as f64 / self.replay.as_secs_f64()
    }
}

/// Child side: opens `dir`, replays it and prints the figures on one line.
fn open_child(setting: Setting, dir: &Path) -> Result<()> {
    let rss_before_kb = rss_kb()?;
    let start = Instant::now();
    let mut store = setting.open(dir)?;
    let open = start.elapsed();
    let rss_open_kb = rss_kb()?;
    let (mut replayed, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    store.replay(&mut |frame| {
        replayed += 1;
        bytes += frame.len() as u64;
    })?;
    let replay = start.elapsed();
    println!(
        "{} {rss_before_kb} {rss_open_kb} {replayed} {} {bytes}",
        open.as_nanos(),
        replay.as_nanos()
    );
    Ok(())
}

/// Runs `open_child` in a fresh process (so its RSS is the engine's alone),
/// after dropping the page cache if `cold`.
fn measure_open(setting: Setting, dir: &Path, cold: bool) -> Result<OpenRun> {
    if cold {
        Command::new("sync").status()?;
        fs::write("/proc/sys/vm/drop_caches", "3")?;
    }
    let out = Command::new(std::env::current_exe()?)
        .arg("--open-child")
        .arg(setting.name())
        .arg("--dir")
        .arg(dir)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("open child for {}: {}", setting.name(), out.status).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let numbers = text
        .split_whitespace()
        .map(str::parse::<u64>)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let [open_ns, rss_before_kb, rss_open_kb, replayed, replay_ns, _bytes] = numbers[..] else {
        return Err(format!("open child printed {text:?}").into());
    };
    Ok(OpenRun {
        open: Duration::from_nanos(open_ns),
        rss_before_kb,
        rss_open_kb,
        replayed,
        replay: Duration::from_nanos(replay_ns),
    })
}

/// Child side of the crash test: appends and prints each acknowledged
/// offset, until killed.
fn crash_child(
    setting: Setting,
    dir: &Path,
    offsets: RangeInclusive<u64>,
    payload: &Bytes,
) -> Result<()> {
    let mut store = setting.open(dir)?;
    // Stdout is line-buffered: each offset is written out once acknowledged.
    let mut out = std::io::stdout().lock();
    for offset in offsets {
        store.append(record(offset, payload))?;
        writeln!(out, "{offset}")?;
    }
    Ok(())
}

/// What a kill -9 half-way through appending left.
struct CrashRun {
    acked: u64,
    /// Acknowledged offsets missing after the reopen.
    lost: u64,
    /// Events found after the reopen (acknowledged or not).
    present: u64,
    reopen: Duration,
    /// How the child ended (`killed` unless it failed on its own).
    ended: String,
}

/// Kills a child appending `events` events after offset `after` to `dir`
/// half-way, reopens `dir` and looks every acknowledged offset up.
fn crash_test(
    setting: Setting,
    dir: &Path,
    after: u64,
    events: u64,
    size: usize,
) -> Result<CrashRun> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--crash-child")
        .arg(setting.name())
        .arg("--dir")
        .arg(dir)
        .args(["--first", &(after + 1).to_string()])
        .args(["--events", &events.to_string(), "--size", &size.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("child without stdout")?;
    let (half_tx, half) = mpsc::channel();
    let reader = thread::spawn(move || read_acks(stdout, events / 2, half_tx));
    // The child blocks once the pipe is full, so it is at most a pipe's
    // worth of lines ahead of the reader: the kill lands half-way.
    let _ = half.recv_timeout(Duration::from_secs(3600));
    child.kill()?;
    let status = child.wait()?;
    let acked = reader.join().map_err(|_| "ack reader panicked")??;
    let ended = match status.signal() {
        Some(9) => "killed".to_owned(),
        _ => format!("ended on its own: {status}"),
    };

    let start = Instant::now();
    let mut store = setting.open(dir)?;
    let reopen = start.elapsed();
    let mut present = Vec::new();
    let mut damaged = 0u64;
    store.replay(&mut |frame| match frame_offset(frame) {
        Ok(offset) => present.push(offset),
        Err(_) => damaged += 1,
    })?;
    if damaged > 0 || present.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!(
            "{}: {damaged} undecodable or misordered events",
            setting.name()
        )
        .into());
    }
    let lost = acked
        .iter()
        .filter(|offset| present.binary_search(offset).is_err())
        .count();
    Ok(CrashRun {
        acked: acked.len() as u64,
        lost: lost as u64,
        present: present.len() as u64,
        reopen,
        ended,
    })
}

/// Reads acknowledged offsets until the child's stdout closes; tells
/// `half` once `half_at` have arrived. A last line without its newline was
/// cut by the kill and does not count.
fn read_acks(
    stdout: ChildStdout,
    half_at: u64,
    half: mpsc::Sender<()>,
) -> std::io::Result<Vec<u64>> {
    let mut reader = BufReader::new(stdout);
    let mut acked = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || !line.ends_with('\n') {
            return Ok(acked);
        }
        match line.trim_end().parse() {
            Ok(offset) => acked.push(offset),
            Err(_) => return Ok(acked),
        }
        if acked.len() as u64 == half_at {
            let _ = half.send(());
        }
    }
}

/// Resident memory of this process, in KiB.
fn rss_kb() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/self/status")?;
    let kb = line
        .split_whitespace()
        .nth(1)
        .ok_or("VmRSS without a number")?;
    Ok(kb.parse()?)
}

/// Bytes of disk that the files under `dir` occupy.
fn disk_usage(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            disk_usage(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let payload = Bytes::from(vec![0x5a; args.size]);
    if let Some(setting) = args.crash_child {
        let offsets = args.first..=args.first + args.events - 1;
        return crash_child(setting, &args.dir, offsets, &payload);
    }
    if let Some(setting) = args.open_child {
        return open_child(setting, &args.dir);
    }
    if args.dir.exists() && fs::read_dir(&args.dir)?.next().is_some() {
        return Err(format!(
            "{} is not empty: remove it or pick another --dir",
            args.dir.display()
        )
        .into());
    }
    fs::create_dir_all(&args.dir)?;
    let outcome = compare(&args, &payload);
    if !args.keep {
        fs::remove_dir_all(&args.dir)?;
    }
    outcome
}

/// Everything measured for one setting.
struct Row {
    setting: Setting,
    append: AppendRun,
    warm: Option<OpenRun>,
    cold: Option<OpenRun>,
    crash: CrashRun,
}

fn compare(args: &Args, payload: &Bytes) -> Result<()> {
    let frame_len = record(args.events, payload).frame.len();
    println!(
        "{} events of {} payload bytes ({frame_len}-byte frames), {} for the settings that fsync each event; scratch in {}\n",
        args.events,
        args.size,
        args.sync_events.min(args.events),
        args.dir.display()
    );
    let mut rows = Vec::new();
    for &setting in args.settings.as_deref().unwrap_or(&SETTINGS) {
        rows.push(measure_setting(args, setting, payload)?);
    }
    print_tables(&rows);
    if args.big_bytes > 0 {
        let events = args.big_bytes / frame_len as u64;
        println!(
            "\nOpen and replay of ~{} MB of frames ({events} events)\n",
            args.big_bytes / 1_000_000
        );
        print_big_header();
        for &setting in &args.big {
            print_big_row(&measure_big(args, setting, events, payload)?);
        }
    }
    Ok(())
}

/// Fills ~`--big-bytes`, times open and replay, then a kill -9 on top of it
/// and the reopen after it.
fn measure_big(args: &Args, setting: Setting, events: u64, payload: &Bytes) -> Result<Row> {
    let dir = args.dir.join(format!("{}-big", setting.name()));
    eprintln!("{}: filling {events} events", setting.name());
    let append = run_appends(setting, &dir, events, payload)?;
    let cold = args
        .cold
        .then(|| measure_open(setting, &dir, true))
        .transpose()?;
    let warm = measure_open(setting, &dir, false)?;
    eprintln!("{}: crash test on top", setting.name());
    let crash = crash_test(setting, &dir, events, args.events, args.size)?;
    fs::remove_dir_all(&dir)?;
    Ok(Row {
        setting,
        append,
        warm: Some(warm),
        cold,
        crash,
    })
}

fn measure_setting(args: &Args, setting: Setting, payload: &Bytes) -> Result<Row> {
    let name = setting.name();
    let events = if setting.syncs_each_event() {
        args.sync_events.min(args.events)
    } else {
        args.events
    };
    let dir = args.dir.join(&name);
    eprintln!("{name}: appending {events} events");
    let append = run_appends(setting, &dir, events, payload)?;
    let (mut warm, mut cold) = (None, None);
    if !setting.syncs_each_event() {
        eprintln!("{name}: open and replay");
        // Cold first, so the warm run finds the cache it leaves.
        if args.cold {
            cold = Some(measure_open(setting, &dir, true)?);
        }
        warm = Some(measure_open(setting, &dir, false)?);
        for run in warm.iter().chain(&cold) {
            if run.replayed != events {
                return Err(format!("{name}: replayed {} of {events}", run.replayed).into());
            }
        }
    }
    fs::remove_dir_all(&dir)?;
    eprintln!("{name}: crash test");
    let crash_dir = args.dir.join(format!("{name}-crash"));
    let crash = crash_test(setting, &crash_dir, 0, events, args.size)?;
    fs::remove_dir_all(&crash_dir)?;
    Ok(Row {
        setting,
        append,
        warm,
        cold,
        crash,
    })
}

fn micros(nanos: u64) -> String {
    format!("{:.1}", nanos as f64 / 1000.0)
}

fn millis(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn print_tables(rows: &[Row]) {
    print_append_table(rows);
    print_open_table(rows);
    print_crash_table(rows);
}

fn print_append_table(rows: &[Row]) {
    println!("Append, one event per write, acknowledged when the setting says\n");
    println!("| setting | acknowledged when | kill -9 (tested) | power loss | events | p50 µs | p99 µs | max µs | appends/s | close ms | disk B/event |");
    println!("|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        let a = &row.append;
        let c = &row.crash;
        println!(
            "| {} | {} | lost {} of {} acked | {} | {} | {} | {} | {} | {:.0} | {} | {:.0} |",
            row.setting.name(),
            row.setting.acked_when(),
            c.lost,
            c.acked,
            row.setting.power_loss(),
            a.events,
            micros(a.latency.value_at_quantile(0.5)),
            micros(a.latency.value_at_quantile(0.99)),
            micros(a.latency.max()),
            a.events as f64 / a.busy.as_secs_f64(),
            millis(a.close),
            a.disk_bytes as f64 / a.events as f64,
        );
    }
}

fn print_open_table(rows: &[Row]) {
    println!("\nOpen (recovery) and replay of all events from the start, in a fresh process\n");
    println!("| setting | events | open warm ms | open cold ms | RSS after open MiB (before) | replay warm events/s | replay cold events/s |");
    println!("|---|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        let Some(warm) = &row.warm else { continue };
        let cold = row.cold.as_ref();
        println!(
            "| {} | {} | {} | {} | {} ({}) | {:.0} | {} |",
            row.setting.name(),
            warm.replayed,
            millis(warm.open),
            cold.map_or("-".to_owned(), |c| millis(c.open)),
            mib(warm.rss_open_kb),
            mib(warm.rss_before_kb),
            warm.replay_rate(),
            cold.map_or("-".to_owned(), |c| format!("{:.0}", c.replay_rate())),
        );
    }
}

fn print_crash_table(rows: &[Row]) {
    println!("\nkill -9 half-way through appending, then reopen\n");
    println!(
        "| setting | acked before the kill | acked and lost | events found | reopen ms | child |"
    );
    println!("|---|--:|--:|--:|--:|---|");
    for row in rows {
        let c = &row.crash;
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.setting.name(),
            c.acked,
            c.lost,
            c.present,
            millis(c.reopen),
            c.ended
        );
    }
}

fn print_big_header() {
    println!("| setting | events | disk MB | appends/s | open warm ms | open cold ms | RSS after open MiB | replay warm events/s | replay cold events/s | kill -9 on top | reopen after it ms |");
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|");
}

fn print_big_row(row: &Row) {
    let (fill, cold, crash) = (&row.append, row.cold.as_ref(), &row.crash);
    let Some(warm) = &row.warm else { return };
    println!(
        "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {:.0} | {} | lost {} of {} acked | {} |",
        row.setting.name(),
        fill.events,
        fill.disk_bytes as f64 / 1e6,
        fill.events as f64 / fill.busy.as_secs_f64(),
        millis(warm.open),
        cold.map_or("-".to_owned(), |c| millis(c.open)),
        mib(warm.rss_open_kb),
        warm.replay_rate(),
        cold.map_or("-".to_owned(), |c| format!("{:.0}", c.replay_rate())),
        crash.lost,
        crash.acked,
        millis(crash.reopen),
    );
}
