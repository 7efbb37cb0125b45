//! The files a store keeps open for appending, and those it owes an fsync.
//!
//! A hundred thousand rooms cannot each hold a descriptor: at most
//! `max_open_files` append handles stay open, the least recently used one
//! is closed when another is needed, and a room reopens its file on its
//! next append. Both tables have their own lock, taken briefly and never
//! across a system call on a file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::super::HistoryError;
use super::io_error;
use crate::sync::lock;

/// Append handles, one at most per room, least recently used closed first.
pub struct FileCache {
    inner: Mutex<Cache>,
}

struct Cache {
    capacity: usize,
    tick: u64,
    by_room: HashMap<u64, Cached>,
    /// `tick` of last use → room.
    by_use: BTreeMap<u64, u64>,
}

struct Cached {
    path: PathBuf,
    file: Arc<File>,
    tick: u64,
}

impl FileCache {
    pub fn new(capacity: usize) -> Self {
        FileCache {
            inner: Mutex::new(Cache {
                capacity: capacity.max(1),
                tick: 0,
                by_room: HashMap::new(),
                by_use: BTreeMap::new(),
            }),
        }
    }

    /// The append handle of `room`'s segment `path`, opened if need be.
    pub fn get(&self, room: u64, path: &Path) -> Result<Arc<File>, HistoryError> {
        {
            let mut cache = lock(&self.inner);
            if let Some(file) = cache.touch(room, path) {
                return Ok(file);
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_error("opening", path))?;
        Ok(self.insert(room, path, file))
    }

    /// Makes `file` (segment `path`) `room`'s append handle.
    pub fn insert(&self, room: u64, path: &Path, file: File) -> Arc<File> {
        let file = Arc::new(file);
        let closed = lock(&self.inner).insert(room, path.to_owned(), file.clone());
        drop(closed); // Closing a file is a system call: not under the lock.
        file
    }

    /// How many handles are open.
    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        lock(&self.inner).by_room.len()
    }
}

impl Cache {
    fn touch(&mut self, room: u64, path: &Path) -> Option<Arc<File>> {
        self.tick += 1;
        let cached = self.by_room.get_mut(&room).filter(|c| c.path == path)?;
        self.by_use.remove(&cached.tick);
        cached.tick = self.tick;
        self.by_use.insert(self.tick, room);
        Some(cached.file.clone())
    }

    /// Returns the handles it closes.
    fn insert(&mut self, room: u64, path: PathBuf, file: Arc<File>) -> Vec<Arc<File>> {
        self.tick += 1;
        let mut closed = Vec::new();
        let tick = self.tick;
        if let Some(old) = self.by_room.insert(room, Cached { path, file, tick }) {
            self.by_use.remove(&old.tick);
            closed.push(old.file);
        }
        self.by_use.insert(tick, room);
        while self.by_room.len() > self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            closed.extend(self.by_room.remove(&oldest).map(|c| c.file));
        }
        closed
    }
}

/// Files and directories written since the last fsync (for
/// `FsyncPolicy::Interval`). Paths, not handles: a file closed by the cache
/// is reopened to be synced, and one deleted meanwhile needs nothing.
///
/// When a sync is due is measured on the monotonic clock, from the first
/// write after the last sync: neither the events' times nor a step of the
/// wall clock can postpone it.
#[derive(Default)]
pub struct Unsynced {
    inner: Mutex<UnsyncedPaths>,
}

#[derive(Default)]
struct UnsyncedPaths {
    files: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
    /// When the oldest unsynced write was made.
    since: Option<Instant>,
}

impl Unsynced {
    /// Notes that `path` (a directory if `is_dir`) was just written.
    pub fn add(&self, path: &Path, is_dir: bool) {
        let mut paths = lock(&self.inner);
        paths.since.get_or_insert_with(Instant::now);
        let set = if is_dir {
            &mut paths.dirs
        } else {
            &mut paths.files
        };
        if !set.contains(path) {
            set.insert(path.to_owned());
        }
    }

    /// Syncs everything written, if the oldest write is `interval` old at
    /// `now`.
    pub fn sync_if_due(&self, now: Instant, interval: Duration) {
        self.sync_where(|since| now.saturating_duration_since(since) >= interval);
    }

    /// Syncs everything written.
    pub fn sync_all(&self) {
        self.sync_where(|_| true);
    }

    fn sync_where(&self, due: impl FnOnce(Instant) -> bool) {
        let (files, dirs) = {
            let mut paths = lock(&self.inner);
            match paths.since {
                Some(since) if due(since) => {}
                _ => return,
            }
            paths.since = None;
            (
                std::mem::take(&mut paths.files),
                std::mem::take(&mut paths.dirs),
            )
        };
        let all = files
            .iter()
            .map(|f| (f, false))
            .chain(dirs.iter().map(|d| (d, true)));
        for (path, is_dir) in all {
            match sync(path, is_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %path.display(), error = %e, "fsync failed");
                }
                _ => {}
            }
        }
    }

    #[cfg(test)]
    pub fn pending(&self) -> usize {
        let paths = lock(&self.inner);
        paths.files.len() + paths.dirs.len()
    }
}

/// Flushes a file's data (or a directory's entries) to the device.
pub fn sync(path: &Path, is_dir: bool) -> std::io::Result<()> {
    let file = File::open(path)?;
    if is_dir {
        file.sync_all()
    } else {
        file.sync_data()
    }
}
