//! Opening a store: its epoch, and every room verified from its files.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::super::memory::new_epoch;
use super::super::{now_ms, HistoryError};
use super::format::{segment_base, segment_path};
use super::room::RoomLog;
use super::segment::{verify, Last, Place};
use super::{files, io_error};

/// Reads the epoch of `dir`, or gives it a new one.
pub fn load_or_create_epoch(dir: &Path) -> Result<u64, HistoryError> {
    let path = dir.join("epoch");
    match fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(epoch) if epoch != 0 => Ok(epoch),
            _ => Err(HistoryError::Format {
                path,
                reason: format!("not an epoch: {:?}", text.trim()),
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let epoch = new_epoch();
            let tmp = dir.join("epoch.tmp");
            let mut file = File::create(&tmp).map_err(io_error("creating", &tmp))?;
            file.write_all(format!("{epoch}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_error("writing", &tmp))?;
            fs::rename(&tmp, &path).map_err(io_error("writing", &path))?;
            files::sync(dir, true).map_err(io_error("syncing", dir))?;
            Ok(epoch)
        }
        Err(e) => Err(io_error("reading", &path)(e)),
    }
}

/// Loads the rooms in `dir_names`, verifying them on a few threads.
pub fn load_rooms(
    rooms_dir: &Path,
    dir_names: &[String],
) -> Result<Vec<(String, String, RoomLog)>, HistoryError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(dir_names.len().max(1));
    let next = AtomicUsize::new(0);
    let now = now_ms();
    let results: Vec<Result<Vec<_>, HistoryError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut buf = Vec::new();
                    let mut loaded = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(dir_name) = dir_names.get(i) else {
                            return Ok(loaded);
                        };
                        if let Some((name, log)) = load_room(rooms_dir, dir_name, now, &mut buf)? {
                            loaded.push((dir_name.clone(), name, log));
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut all = Vec::new();
    for result in results {
        all.extend(result?);
    }
    Ok(all)
}

/// Verifies one room's segments and rebuilds its metadata. `Ok(None)`: not
/// a room (no name file), skipped.
fn load_room(
    rooms_dir: &Path,
    dir_name: &str,
    now_ms: u64,
    buf: &mut Vec<u8>,
) -> Result<Option<(String, RoomLog)>, HistoryError> {
    let dir = rooms_dir.join(dir_name);
    let name_path = dir.join("name");
    let name = match fs::read(&name_path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(name) => name,
            Err(_) => {
                tracing::warn!(dir = %dir.display(), "room name is not UTF-8; room skipped");
                return Ok(None);
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::debug!(dir = %dir.display(), "room directory without a name; skipped");
            return Ok(None);
        }
        Err(e) => return Err(io_error("reading", &name_path)(e)),
    };
    let mut bases = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io_error("reading", &dir))? {
        let entry = entry.map_err(io_error("reading", &dir))?;
        if let Some(base) = entry.file_name().to_str().and_then(segment_base) {
            bases.push(base);
        }
    }
    bases.sort_unstable();

    let mut log = RoomLog {
        dir_created: true,
        ..RoomLog::default()
    };
    // Ordering is checked against checksummed records only; the newest
    // offset known also counts what headers say.
    let mut last = Last::default();
    let mut newest = 0u64;
    // Whether what precedes the next segment is unknown: nothing is before
    // the first one (deleted segments), nor after damage to a segment's end.
    let mut unsure = true;
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(&dir, base);
        let place = Place {
            room: &name,
            path: &path,
            is_last: i + 1 == bases.len(),
        };
        let Some(found) = verify(&place, base, last, now_ms, buf)? else {
            continue;
        };
        let seg = &found.segment;
        match found.prev {
            Some(prev) => {
                if unsure {
                    log.floor = log.floor.max(prev);
                }
                newest = newest.max(prev);
            }
            // Without its `prev`, a replay from before its first record
            // may have missed something.
            None if unsure && seg.count > 0 => {
                log.floor = log.floor.max(seg.first_offset.saturating_sub(1));
            }
            None => {}
        }
        if let Some(floor) = found.damage_floor {
            log.floor = log.floor.max(floor);
        }
        unsure = found.damaged_to_end || (unsure && found.prev.is_none() && seg.count == 0);
        last = Last {
            offset: last.offset.max(found.last.offset),
            at_ms: last.at_ms.max(found.last.at_ms),
        };
        newest = newest
            .max(found.last.offset)
            .max(found.stray_offset.unwrap_or(0));
        log.roll_next = found.damaged_to_end;
        log.segments.push(found.segment);
    }
    if unsure {
        // Damage ran to the end of the history, or no header said what came
        // before the records: nothing before the newest offset is covered.
        log.floor = log.floor.max(newest);
    }
    for seg in &mut log.segments {
        if seg.count > 0 && seg.last_offset <= log.floor {
            seg.clear();
        }
    }
    log.last_offset = newest.max(log.floor);
    log.last_at_ms = last.at_ms;
    Ok(Some((name, log)))
}
