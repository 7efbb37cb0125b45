//! Where resumable sessions are kept so that they outlive the process.
//!
//! A [`SessionJournal`] records that a session began (its key and resume
//! token) and that it ended (closed cleanly, or expired). [`FileJournal`]
//! is the embedded one: an append-only file in the data directory,
//! rewritten compactly on open and whenever it holds mostly ended sessions.
//!
//! File format (`DIR/sessions`): an 8-byte magic, then records
//! `u32 LE body_len ‖ u32 LE crc32(body) ‖ body`, where body is
//! `u8 kind ‖ u64 LE key ‖ token (UTF-8, rest of the body)`; kind 1 =
//! began, 2 = ended (token empty). A torn tail (a crash in the middle of a
//! write) is cut off on open.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::history::HistoryError;
use crate::sync::lock;

const MAGIC: &[u8; 8] = b"QBSESS01";
const BEGAN: u8 = 1;
const ENDED: u8 = 2;
/// Longest record body accepted on open (a token is 32 hex digits).
const MAX_BODY: usize = 4096;

/// A session as stored: what is needed to resume it after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Names the session in stored events.
    pub key: u64,
    /// The resume token the client presents.
    pub token: String,
}

/// Keeps resumable sessions across restarts.
pub trait SessionJournal: Send + Sync {
    /// A session began; stored before its `Welcome` is sent.
    fn created(&self, session: &StoredSession) -> Result<(), HistoryError>;
    /// A session ended (closed cleanly, expired or evicted).
    fn ended(&self, key: u64);
}

/// The session journal of a data directory.
pub struct FileJournal {
    path: PathBuf,
    state: Mutex<JournalState>,
}

struct JournalState {
    file: File,
    /// Sessions begun and not ended.
    live: HashMap<u64, String>,
    /// Records in the file, for deciding when to compact it.
    records: usize,
}

impl FileJournal {
    /// Opens (or creates) the journal in `dir`, returning it and the
    /// sessions it holds.
    pub fn open(dir: &Path) -> Result<(FileJournal, Vec<StoredSession>), HistoryError> {
        let path = dir.join("sessions");
        let live = read_live(&path)?;
        let file = rewrite(&path, &live)?;
        let stored = live
            .iter()
            .map(|(key, token)| StoredSession {
                key: *key,
                token: token.clone(),
            })
            .collect();
        let records = live.len();
        Ok((
            FileJournal {
                path,
                state: Mutex::new(JournalState {
                    file,
                    live,
                    records,
                }),
            },
            stored,
        ))
    }

    fn append(
        &self,
        state: &mut JournalState,
        kind: u8,
        key: u64,
        token: &str,
    ) -> std::io::Result<()> {
        state.file.write_all(&record(kind, key, token))?;
        state.records += 1;
        // Mostly ended sessions: write the live ones afresh.
        if state.records > 1024 && state.records > 4 * state.live.len() {
            match rewrite(&self.path, &state.live) {
                Ok(file) => {
                    state.file = file;
                    state.records = state.live.len();
                }
                Err(e) => tracing::warn!("cannot compact the session journal: {e}"),
            }
        }
        Ok(())
    }
}

impl SessionJournal for FileJournal {
    fn created(&self, session: &StoredSession) -> Result<(), HistoryError> {
        let mut state = lock(&self.state);
        state.live.insert(session.key, session.token.clone());
        self.append(&mut state, BEGAN, session.key, &session.token)
            .map_err(|source| HistoryError::Io {
                what: "cannot write",
                path: self.path.clone(),
                source,
            })
    }

    fn ended(&self, key: u64) {
        let mut state = lock(&self.state);
        if state.live.remove(&key).is_none() {
            return;
        }
        if let Err(e) = self.append(&mut state, ENDED, key, "") {
            // The session is resumable after a restart once more than it
            // should be; it expires again then.
            tracing::warn!("cannot record the end of a session: {e}");
        }
    }
}

fn record(kind: u8, key: u64, token: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(9 + token.len());
    body.push(kind);
    body.extend_from_slice(&key.to_le_bytes());
    body.extend_from_slice(token.as_bytes());
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The sessions a journal file holds; a missing file holds none. Reading
/// stops at the first incomplete or damaged record (a torn tail).
fn read_live(path: &Path) -> Result<HashMap<u64, String>, HistoryError> {
    let io = |what, source| HistoryError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data).map_err(|e| io("cannot read", e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(io("cannot open", e)),
    }
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        return Err(HistoryError::Format {
            path: path.to_path_buf(),
            reason: "not a quicbus session journal".into(),
        });
    }
    let mut live = HashMap::new();
    let mut at = MAGIC.len();
    while let Some((kind, key, token, next)) = parse(&data, at) {
        match kind {
            BEGAN => {
                live.insert(key, token);
            }
            _ => {
                live.remove(&key);
            }
        }
        at = next;
    }
    if at < data.len() {
        tracing::warn!(
            path = %path.display(),
            "session journal: {} bytes of an incomplete or damaged record at the end were dropped",
            data.len() - at
        );
    }
    Ok(live)
}

/// The record at `at`: kind, key, token and where the next one starts.
fn parse(data: &[u8], at: usize) -> Option<(u8, u64, String, usize)> {
    let header = data.get(at..at + 8)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if !(9..=MAX_BODY).contains(&len) {
        return None;
    }
    let body = data.get(at + 8..at + 8 + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let kind = body[0];
    if kind != BEGAN && kind != ENDED {
        return None;
    }
    let key = u64::from_le_bytes(body[1..9].try_into().ok()?);
    let token = String::from_utf8(body[9..].to_vec()).ok()?;
    Some((kind, key, token, at + 8 + len))
}

/// Writes the live sessions to a new file that replaces `path` at once
/// (written aside, synced, renamed), and opens it for appending.
fn rewrite(path: &Path, live: &HashMap<u64, String>) -> Result<File, HistoryError> {
    let io = |what, source| HistoryError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let aside = path.with_extension("new");
    let mut data = MAGIC.to_vec();
    for (key, token) in live {
        data.extend_from_slice(&record(BEGAN, *key, token));
    }
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&aside).map_err(|e| io("cannot create", e))?;
    file.write_all(&data).map_err(|e| io("cannot write", e))?;
    file.sync_data().map_err(|e| io("cannot sync", e))?;
    std::fs::rename(&aside, path).map_err(|e| io("cannot replace", e))?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| io("cannot open", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(key: u64) -> StoredSession {
        StoredSession {
            key,
            token: format!("token-{key}"),
        }
    }

    #[test]
    fn sessions_begun_and_not_ended_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, stored) = FileJournal::open(dir.path()).unwrap();
        assert!(stored.is_empty());
        for key in 1..=3 {
            journal.created(&session(key)).unwrap();
        }
        journal.ended(2);
        drop(journal);
        let (_, mut stored) = FileJournal::open(dir.path()).unwrap();
        stored.sort_by_key(|s| s.key);
        assert_eq!(stored, vec![session(1), session(3)]);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = FileJournal::open(dir.path()).unwrap();
        journal.created(&session(1)).unwrap();
        journal.created(&session(2)).unwrap();
        drop(journal);
        let path = dir.path().join("sessions");
        let len = std::fs::metadata(&path).unwrap().len();
        // Cut the last record in half, as a crash in mid-write would.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 10).unwrap();
        let (journal, stored) = FileJournal::open(dir.path()).unwrap();
        assert_eq!(stored, vec![session(1)]);
        // Appending after the repair works.
        journal.created(&session(3)).unwrap();
        drop(journal);
        let (_, stored) = FileJournal::open(dir.path()).unwrap();
        assert_eq!(stored.len(), 2);
    }

    #[test]
    fn compaction_keeps_only_live_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = FileJournal::open(dir.path()).unwrap();
        for key in 1..=2000 {
            journal.created(&session(key)).unwrap();
            if key != 7 {
                journal.ended(key);
            }
        }
        let size = std::fs::metadata(dir.path().join("sessions"))
            .unwrap()
            .len();
        assert!(size < 200_000, "compacted: {size} bytes");
        drop(journal);
        let (_, stored) = FileJournal::open(dir.path()).unwrap();
        assert_eq!(stored, vec![session(7)]);
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sessions"), b"something else").unwrap();
        assert!(matches!(
            FileJournal::open(dir.path()),
            Err(HistoryError::Format { .. })
        ));
    }
}
