//! Where resumable sessions are kept so that they outlive the process.
//!
//! A [`SessionJournal`] records that a session began (its key and resume
//! token), how far its publish log of each room has got (checkpoints, about
//! once a second), and that it ended (closed cleanly, or expired).
//! [`FileJournal`] is the embedded one: an append-only file in the data
//! directory, rewritten compactly on open and whenever it holds mostly
//! records that no longer count.
//!
//! File format (`DIR/sessions`): an 8-byte magic, then records
//! `u32 LE body_len ‖ u32 LE crc32(body) ‖ body`, where body is
//! `u8 kind ‖ u64 LE key ‖ rest`: kind 1 = began (rest: the token, UTF-8),
//! 2 = ended (rest empty), 3 = progress (rest: `u64 LE through ‖ room
//! name`). A torn tail (a crash in the middle of a write) is cut off on open.
//!
//! The checkpoints bound what a session resumed after a crash must learn
//! from the rooms' stored events: only what it published after its last
//! checkpoint (see `resume.rs`).

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
const PROGRESS: u8 = 3;
const ROTATED: u8 = 4;
/// Longest record body accepted on open (a room name is at most 255 bytes).
const MAX_BODY: usize = 4096;

/// A session as stored: what is needed to resume it after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Names the session in stored events.
    pub key: u64,
    /// The resume token the client presents.
    pub token: String,
    /// The token's `sub` of the connection that began it (`None`: no
    /// signed tokens, or anonymous): only that user may resume it.
    pub user: Option<String>,
    /// Per room, the highest publish id handled as of the last checkpoint.
    pub progress: Vec<(String, u64)>,
}

/// Keeps resumable sessions across restarts.
pub trait SessionJournal: Send + Sync {
    /// A session began; stored before its `Welcome` is sent.
    fn created(&self, session: &StoredSession) -> Result<(), HistoryError>;
    /// A checkpoint: the session's publish log of `room` has handled every
    /// id up to `through`.
    fn progress(&self, key: u64, room: &str, through: u64) -> Result<(), HistoryError>;
    /// A session was resumed and given a new resume token; the old one
    /// must not resume it after a restart either.
    fn rotated(&self, key: u64, token: &str) -> Result<(), HistoryError>;
    /// A session ended (closed cleanly, expired or evicted).
    fn ended(&self, key: u64);
}

/// Sessions kept where every node of a cluster can find them, so that a
/// client whose node died resumes its session on another.
pub trait SessionDirectory: Send + Sync {
    /// Takes the session `token` resumes, if a node stored it and nobody
    /// has taken it since (a token resumes once, on whichever node).
    fn claim<'a>(
        &'a self,
        token: &'a str,
    ) -> super::backplane::BoxFuture<'a, Option<StoredSession>>;
}

/// The session journal of a data directory.
pub struct FileJournal {
    path: PathBuf,
    state: Mutex<JournalState>,
}

struct JournalState {
    file: File,
    /// Sessions begun and not ended.
    live: HashMap<u64, Live>,
    /// Records in the file, for deciding when to compact it.
    records: usize,
}

/// What the journal holds of one live session.
#[derive(Debug, Clone, Default)]
struct Live {
    token: String,
    user: Option<String>,
    progress: HashMap<String, u64>,
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
            .map(|(key, session)| StoredSession {
                key: *key,
                token: session.token.clone(),
                user: session.user.clone(),
                progress: session
                    .progress
                    .iter()
                    .map(|(room, through)| (room.clone(), *through))
                    .collect(),
            })
            .collect();
        let records = count_records(&live);
        let state = JournalState {
            file,
            live,
            records,
        };
        Ok((
            FileJournal {
                path,
                state: Mutex::new(state),
            },
            stored,
        ))
    }

    fn append(&self, state: &mut JournalState, record: &[u8]) -> Result<(), HistoryError> {
        state
            .file
            .write_all(record)
            .map_err(|source| HistoryError::Io {
                what: "cannot write",
                path: self.path.clone(),
                source,
            })?;
        state.records += 1;
        // Mostly records that no longer count: write what does afresh.
        let live = count_records(&state.live);
        if state.records > 1024 && state.records > 4 * live {
            match rewrite(&self.path, &state.live) {
                Ok(file) => {
                    state.file = file;
                    state.records = live;
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
        let live = Live {
            token: session.token.clone(),
            user: session.user.clone(),
            progress: session.progress.iter().cloned().collect(),
        };
        state.live.insert(session.key, live);
        self.append(
            &mut state,
            &record(
                BEGAN,
                session.key,
                &began_rest(&session.token, &session.user),
            ),
        )
    }

    fn progress(&self, key: u64, room: &str, through: u64) -> Result<(), HistoryError> {
        let mut state = lock(&self.state);
        let Some(live) = state.live.get_mut(&key) else {
            return Ok(());
        };
        live.progress.insert(room.to_string(), through);
        self.append(
            &mut state,
            &record(PROGRESS, key, &progress_rest(through, room)),
        )
    }

    fn rotated(&self, key: u64, token: &str) -> Result<(), HistoryError> {
        let mut state = lock(&self.state);
        let Some(live) = state.live.get_mut(&key) else {
            return Ok(());
        };
        live.token = token.to_string();
        self.append(&mut state, &record(ROTATED, key, token.as_bytes()))
    }

    fn ended(&self, key: u64) {
        let mut state = lock(&self.state);
        if state.live.remove(&key).is_none() {
            return;
        }
        if let Err(e) = self.append(&mut state, &record(ENDED, key, &[])) {
            // The session is resumable after a restart once more than it
            // should be; it expires again then.
            tracing::warn!("cannot record the end of a session: {e}");
        }
    }
}

/// How many records the live sessions take when written afresh.
fn count_records(live: &HashMap<u64, Live>) -> usize {
    live.values().map(|s| 1 + s.progress.len()).sum()
}

/// A `BEGAN` record's body after the key: the token, then (if any) a NUL
/// and the user. Tokens never hold a NUL; a journal written before users
/// existed reads as sessions without one.
fn began_rest(token: &str, user: &Option<String>) -> Vec<u8> {
    let mut rest = token.as_bytes().to_vec();
    if let Some(user) = user {
        rest.push(0);
        rest.extend_from_slice(user.as_bytes());
    }
    rest
}

fn progress_rest(through: u64, room: &str) -> Vec<u8> {
    let mut rest = through.to_le_bytes().to_vec();
    rest.extend_from_slice(room.as_bytes());
    rest
}

fn record(kind: u8, key: u64, rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(9 + rest.len());
    body.push(kind);
    body.extend_from_slice(&key.to_le_bytes());
    body.extend_from_slice(rest);
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The sessions a journal file holds; a missing file holds none. Reading
/// stops at the first incomplete or damaged record (a torn tail).
fn read_live(path: &Path) -> Result<HashMap<u64, Live>, HistoryError> {
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
    let mut live: HashMap<u64, Live> = HashMap::new();
    let mut at = MAGIC.len();
    while let Some((next, entry)) = parse(&data, at) {
        match entry {
            Entry::Began { key, token, user } => {
                live.insert(
                    key,
                    Live {
                        token,
                        user,
                        progress: HashMap::new(),
                    },
                );
            }
            Entry::Progress { key, room, through } => {
                if let Some(session) = live.get_mut(&key) {
                    session.progress.insert(room, through);
                }
            }
            Entry::Rotated { key, token } => {
                if let Some(session) = live.get_mut(&key) {
                    session.token = token;
                }
            }
            Entry::Ended { key } => {
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

/// One record of the journal.
enum Entry {
    Began {
        key: u64,
        token: String,
        user: Option<String>,
    },
    Progress {
        key: u64,
        room: String,
        through: u64,
    },
    Rotated {
        key: u64,
        token: String,
    },
    Ended {
        key: u64,
    },
}

/// The record at `at`, and where the next one starts; `None` if it is
/// incomplete or damaged.
fn parse(data: &[u8], at: usize) -> Option<(usize, Entry)> {
    let header = data.get(at..at.checked_add(8)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if !(9..=MAX_BODY).contains(&len) {
        return None;
    }
    let next = at + 8 + len;
    let body = data.get(at + 8..next)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let key = u64::from_le_bytes(body[1..9].try_into().ok()?);
    let rest = &body[9..];
    let entry = match body[0] {
        BEGAN => {
            let (token, user) = match rest.iter().position(|&b| b == 0) {
                Some(nul) => (&rest[..nul], Some(&rest[nul + 1..])),
                None => (rest, None),
            };
            Entry::Began {
                key,
                token: String::from_utf8(token.to_vec()).ok()?,
                user: match user {
                    Some(user) => Some(String::from_utf8(user.to_vec()).ok()?),
                    None => None,
                },
            }
        }
        PROGRESS => Entry::Progress {
            key,
            through: u64::from_le_bytes(rest.get(..8)?.try_into().ok()?),
            room: String::from_utf8(rest.get(8..)?.to_vec()).ok()?,
        },
        ROTATED => Entry::Rotated {
            key,
            token: String::from_utf8(rest.to_vec()).ok()?,
        },
        ENDED => Entry::Ended { key },
        _ => return None,
    };
    Some((next, entry))
}

/// Writes the live sessions to a new file that replaces `path` at once
/// (written aside, synced, renamed), and opens it for appending.
fn rewrite(path: &Path, live: &HashMap<u64, Live>) -> Result<File, HistoryError> {
    let io = |what, source| HistoryError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let aside = path.with_extension("new");
    let mut data = MAGIC.to_vec();
    for (key, session) in live {
        data.extend_from_slice(&record(
            BEGAN,
            *key,
            &began_rest(&session.token, &session.user),
        ));
        for (room, through) in &session.progress {
            data.extend_from_slice(&record(PROGRESS, *key, &progress_rest(*through, room)));
        }
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
            // Odd sessions belong to a user, even ones to nobody.
            user: (key % 2 == 1).then(|| format!("user-{key}")),
            progress: Vec::new(),
        }
    }

    #[test]
    fn progress_checkpoints_survive_a_reopen_and_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = FileJournal::open(dir.path()).unwrap();
        journal.created(&session(1)).unwrap();
        journal.progress(1, "a", 5).unwrap();
        journal.progress(1, "b", 2).unwrap();
        journal.progress(1, "a", 9).unwrap();
        journal.progress(77, "a", 3).unwrap(); // no such session: ignored
        drop(journal);
        let (journal, stored) = FileJournal::open(dir.path()).unwrap();
        let mut progress = stored[0].progress.clone();
        progress.sort();
        assert_eq!(progress, vec![("a".to_string(), 9), ("b".to_string(), 2)]);
        // Enough checkpoints to compact: the newest ones are kept.
        for through in 10..3000 {
            journal.progress(1, "a", through).unwrap();
        }
        let size = std::fs::metadata(dir.path().join("sessions"))
            .unwrap()
            .len();
        assert!(size < 100_000, "compacted: {size} bytes");
        drop(journal);
        let (_, stored) = FileJournal::open(dir.path()).unwrap();
        let mut progress = stored[0].progress.clone();
        progress.sort();
        assert_eq!(
            progress,
            vec![("a".to_string(), 2999), ("b".to_string(), 2)]
        );
        // The owner survives the compaction too.
        assert_eq!(stored[0].user.as_deref(), Some("user-1"));
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
    fn a_rotated_token_replaces_the_old_one_and_keeps_the_progress() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = FileJournal::open(dir.path()).unwrap();
        journal.created(&session(1)).unwrap();
        journal.progress(1, "a", 4).unwrap();
        journal.rotated(1, "fresh").unwrap();
        journal.rotated(9, "nobody").unwrap(); // no such session: ignored
        drop(journal);
        let (journal, stored) = FileJournal::open(dir.path()).unwrap();
        let expected = StoredSession {
            key: 1,
            token: "fresh".into(),
            user: Some("user-1".into()),
            progress: vec![("a".into(), 4)],
        };
        assert_eq!(stored, vec![expected.clone()]);
        // A compaction writes the current token.
        for through in 5..3000 {
            journal.progress(1, "a", through).unwrap();
        }
        drop(journal);
        let (_, stored) = FileJournal::open(dir.path()).unwrap();
        assert_eq!(stored[0].token, "fresh");
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
