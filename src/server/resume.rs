//! Sessions that outlive their connection.
//!
//! Every session gets a resume token in `Welcome`. When its connection
//! drops (anything but a clean close by the client), the session is parked
//! for the resume window; a client that reconnects with the token within it
//! continues the same session. What a session carries over is its publish
//! log: per room, the ids of the publishes it has handled and their
//! outcome, so that a publish the client retries after a reconnect (because
//! it never learned the outcome) is published once and answered as before.
//!
//! With a [`SessionJournal`] (durable storage), sessions also outlive the
//! process: a restart loads them, parked for the resume window. Their
//! publish logs survive in two parts: about once a second each log's
//! `through` is checkpointed in the journal ([`SessionStore::checkpoint`]),
//! and every stored event carries its publisher (session key and publish
//! id). A restored session's log of a room starts from its checkpoint and
//! learns the publishes after it (and their offsets) from the room's newest
//! stored events, the first time the session publishes there again
//! ([`PublishLog::restore`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::session_journal::{SessionDirectory, SessionJournal, StoredSession};
use crate::sync::lock;
use crate::wire::{ErrorCode, RecoveryFailure, Resume, ResumeOutcome};

/// How a publish was handled: its offset, or why it was refused.
pub type Outcome = Result<u64, ErrorCode>;

/// Whether a publish id is new to a room's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never handled: publish it.
    New,
    /// Handled before, with this outcome (`None`: too long ago to remember).
    Duplicate(Option<Outcome>),
}

/// The publish ids one session has handled in one room.
#[derive(Debug)]
pub struct PublishLog {
    through: u64,
    recent: VecDeque<(u64, Outcome)>,
    capacity: usize,
    /// An id the publish stream is publishing right now (between `claim`
    /// and `record`): its datagram copy must not publish it too.
    in_flight: Option<u64>,
    /// The session was restored after a restart and this log not yet
    /// learned from the room's history: nothing may be published until then.
    needs_restore: bool,
    /// Every id up to this was handled before the restart (the journal's
    /// checkpoint), found in history or not.
    restored_through: u64,
    /// `through` as of the last checkpoint written.
    checkpointed: u64,
    /// The outcomes its session remembers across all its rooms.
    entries: Option<Arc<EntryBudget>>,
}

/// How many publish outcomes one session remembers across its rooms.
#[derive(Debug)]
pub struct EntryBudget {
    used: AtomicUsize,
    max: usize,
}

impl EntryBudget {
    pub fn new(max: usize) -> Self {
        EntryBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Outcomes remembered now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

impl Drop for PublishLog {
    fn drop(&mut self) {
        if let Some(entries) = &self.entries {
            entries.used.fetch_sub(self.recent.len(), Ordering::Relaxed);
        }
    }
}

impl PublishLog {
    /// A log remembering the outcomes of the newest `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        PublishLog {
            through: 0,
            recent: VecDeque::new(),
            capacity: capacity.max(1),
            in_flight: None,
            needs_restore: false,
            restored_through: 0,
            checkpointed: 0,
            entries: None,
        }
    }

    /// A log whose outcomes count against its session's `entries`.
    pub fn within(capacity: usize, entries: Arc<EntryBudget>) -> Self {
        let mut log = PublishLog::new(capacity);
        log.entries = Some(entries);
        log
    }

    /// Whether the log must first learn, with [`PublishLog::restore`], the
    /// publishes its session made before a restart.
    pub fn needs_restore(&self) -> bool {
        self.needs_restore
    }

    /// Learns the publishes (`(id, offset)`, any order) found on record for
    /// this session and room.
    pub fn restore(&mut self, publishes: &[(u64, u64)]) {
        if !self.needs_restore {
            return;
        }
        self.needs_restore = false;
        let mut found = publishes.to_vec();
        found.sort_unstable();
        for (id, offset) in found {
            self.record(id, Ok(offset));
        }
        // Handled before the checkpoint but no longer on record: still
        // handled (answered `Duplicate`), never published again.
        self.through = self.through.max(self.restored_through);
        self.checkpointed = self.restored_through;
    }

    /// Whether `id` was handled already (ids only grow within a room).
    pub fn check(&self, id: u64) -> Seen {
        if id > self.through {
            return Seen::New;
        }
        let found = self
            .recent
            .binary_search_by_key(&id, |(i, _)| *i)
            .ok()
            .map(|at| self.recent[at].1);
        Seen::Duplicate(found)
    }

    /// [`PublishLog::check`], and when `id` is new, marks it in flight
    /// until its [`PublishLog::record`], so its copy stays out.
    pub fn claim(&mut self, id: u64) -> Seen {
        let seen = self.check(id);
        if seen == Seen::New {
            self.in_flight = Some(id);
        }
        seen
    }

    /// Whether a datagram copy of publish `id` may be published now: it is
    /// the very next id (so order is kept) and its stream frame is not
    /// being published at this moment.
    pub fn copy_may_publish(&self, id: u64) -> bool {
        !self.needs_restore && self.through.checked_add(1) == Some(id) && self.in_flight.is_none()
    }

    /// Gives up on publishing `id` for now (it was not handled): the client
    /// will send it again.
    pub fn abandon(&mut self, id: u64) {
        if self.in_flight == Some(id) {
            self.in_flight = None;
        }
    }

    /// Records the outcome of a new id. Returns how many older outcomes
    /// were forgotten early because the session's budget is spent (a
    /// retry of one of those is answered `Duplicate`, without its offset).
    pub fn record(&mut self, id: u64, outcome: Outcome) -> usize {
        if self.in_flight == Some(id) {
            self.in_flight = None;
        }
        if id <= self.through {
            return 0;
        }
        self.through = id;
        self.recent.push_back((id, outcome));
        let mut forgotten = 0;
        if let Some(entries) = &self.entries {
            entries.used.fetch_add(1, Ordering::Relaxed);
            // Over the session's budget, a room keeps at least its newest.
            while entries.used() > entries.max && self.recent.len() > 1 {
                self.recent.pop_front();
                entries.used.fetch_sub(1, Ordering::Relaxed);
                forgotten += 1;
            }
        }
        while self.recent.len() > self.capacity {
            self.recent.pop_front();
            if let Some(entries) = &self.entries {
                entries.used.fetch_sub(1, Ordering::Relaxed);
            }
        }
        forgotten
    }

    /// The highest id handled.
    pub fn through(&self) -> u64 {
        self.through
    }
}

/// One session, as long as it can be resumed.
pub struct SessionState {
    /// Changes with every resume: a token resumes a session once.
    token: Mutex<String>,
    /// Names the session in stored events; never sent to anyone.
    key: u64,
    /// The token's `sub` of the connection that began the session: only a
    /// connection of the same user may resume it.
    user: Option<String>,
    /// Loaded from the journal after a restart: its publish logs must be
    /// learned from history.
    restored: bool,
    /// For a restored session: per room, its log's checkpoint.
    checkpoints: HashMap<String, u64>,
    logs: Mutex<HashMap<String, Arc<Mutex<PublishLog>>>>,
    log_limits: LogLimits,
    entries: Arc<EntryBudget>,
    attachment: Mutex<Attachment>,
}

/// What one session's publish logs may hold.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Outcomes remembered per room: at least the reference client's outbox.
    pub per_room: usize,
    /// Rooms a session publishes reliable events to.
    pub rooms: usize,
    /// Outcomes remembered across all its rooms.
    pub entries: usize,
}

struct Attachment {
    /// Increases with every connection that takes the session over.
    generation: u64,
    /// Closes the connection currently serving the session.
    live: Option<Box<dyn FnOnce() + Send>>,
    /// When a parked session stops being resumable.
    parked_until: Option<Instant>,
}

impl SessionState {
    /// The token a client presents to resume this session.
    pub fn token(&self) -> String {
        lock(&self.token).clone()
    }

    /// The key that names this session in stored events.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The publish log of one room; `None` when the session already
    /// publishes to its maximum of rooms.
    pub fn log(&self, room: &str) -> Option<Arc<Mutex<PublishLog>>> {
        let mut logs = lock(&self.logs);
        if let Some(log) = logs.get(room) {
            return Some(log.clone());
        }
        if logs.len() >= self.log_limits.rooms {
            return None;
        }
        let mut log = PublishLog::within(self.log_limits.per_room, self.entries.clone());
        log.needs_restore = self.restored;
        log.restored_through = self.checkpoints.get(room).copied().unwrap_or(0);
        let log = Arc::new(Mutex::new(log));
        logs.insert(room.to_string(), log.clone());
        Some(log)
    }

    /// Publish outcomes remembered across the session's rooms.
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.entries.used()
    }

    fn new(
        token: String,
        key: u64,
        user: Option<String>,
        restored: bool,
        log_limits: LogLimits,
    ) -> Self {
        SessionState {
            token: Mutex::new(token),
            key,
            user,
            restored,
            checkpoints: HashMap::new(),
            logs: Mutex::new(HashMap::new()),
            log_limits,
            entries: Arc::new(EntryBudget::new(log_limits.entries)),
            attachment: Mutex::new(Attachment {
                generation: 0,
                live: None,
                parked_until: None,
            }),
        }
    }
}

/// Every resumable session of a server.
pub struct SessionStore {
    sessions: Mutex<HashMap<String, Arc<SessionState>>>,
    window: Duration,
    max_sessions: usize,
    log_limits: LogLimits,
    journal: Option<Box<dyn SessionJournal>>,
    /// Where sessions begun on other nodes are found (a cluster).
    directory: Option<Arc<dyn SessionDirectory>>,
}

/// A session attached to a connection; hand it back with
/// [`SessionStore::detach`] when the connection ends.
pub struct Attached {
    pub state: Arc<SessionState>,
    pub outcome: ResumeOutcome,
    generation: u64,
}

impl SessionStore {
    /// Sessions stay resumable for `window` after their connection drops;
    /// at most `max_sessions` are kept (the longest parked go first).
    pub fn new(window: Duration, max_sessions: usize, log_limits: LogLimits) -> Self {
        SessionStore {
            sessions: Mutex::new(HashMap::new()),
            window,
            max_sessions: max_sessions.max(1),
            log_limits,
            journal: None,
            directory: None,
        }
    }

    /// A store whose sessions are shared by the nodes of a cluster: each
    /// node records its own in `journal`, and finds the others' in
    /// `directory` when a client brings their token.
    pub fn shared(
        window: Duration,
        max_sessions: usize,
        log_limits: LogLimits,
        journal: Box<dyn SessionJournal>,
        directory: Arc<dyn SessionDirectory>,
    ) -> Self {
        let mut store = SessionStore::new(window, max_sessions, log_limits);
        store.journal = Some(journal);
        store.directory = Some(directory);
        store
    }

    /// Before [`SessionStore::attach`]: a token this node does not know may
    /// name a session another node began (and perhaps died with); take it
    /// over from the directory, parked, so that `attach` resumes it. Its
    /// publish logs start empty: a retried publish is recognised by the
    /// backplane itself (JetStream deduplicates by session key and id).
    pub async fn find_elsewhere(&self, resume: Option<&Resume>, epoch: u64, now: Instant) {
        let (Some(directory), Some(resume)) = (&self.directory, resume) else {
            return;
        };
        if resume.epoch != epoch || lock(&self.sessions).contains_key(&resume.token) {
            return;
        }
        let Some(found) = directory.claim(&resume.token).await else {
            return;
        };
        let state = SessionState::new(found.token, found.key, found.user, false, self.log_limits);
        lock(&state.attachment).parked_until = Some(now + self.window);
        let mut sessions = lock(&self.sessions);
        sessions
            .entry(resume.token.clone())
            .or_insert_with(|| Arc::new(state));
    }

    /// A store whose sessions outlive the process in `journal`: the ones it
    /// holds now are parked, resumable for the window from `now`.
    pub fn durable(
        window: Duration,
        max_sessions: usize,
        log_limits: LogLimits,
        journal: Box<dyn SessionJournal>,
        stored: Vec<StoredSession>,
        now: Instant,
    ) -> Self {
        let mut store = SessionStore::new(window, max_sessions, log_limits);
        {
            let sessions = store.sessions.get_mut().unwrap_or_else(|e| e.into_inner());
            for s in stored {
                let mut state = SessionState::new(s.token.clone(), s.key, s.user, true, log_limits);
                state.checkpoints = s.progress.into_iter().collect();
                lock(&state.attachment).parked_until = Some(now + window);
                sessions.insert(s.token, Arc::new(state));
            }
        }
        store.journal = Some(journal);
        store
    }

    /// Writes a checkpoint of every publish log that has moved on since the
    /// last one (called about once a second). Journal writes happen outside
    /// the store's lock.
    pub fn checkpoint(&self) {
        let Some(journal) = &self.journal else {
            return;
        };
        // Sessions whose window has passed end now, not at the next
        // connection: a shared journal must stop offering them to other
        // nodes.
        self.expire(&mut lock(&self.sessions), Instant::now());
        let sessions: Vec<Arc<SessionState>> = lock(&self.sessions).values().cloned().collect();
        for state in sessions {
            let logs: Vec<(String, Arc<Mutex<PublishLog>>)> = lock(&state.logs)
                .iter()
                .map(|(room, log)| (room.clone(), log.clone()))
                .collect();
            for (room, log) in logs {
                let through = {
                    let log = lock(&log);
                    if log.needs_restore || log.through <= log.checkpointed {
                        continue;
                    }
                    log.through
                };
                match journal.progress(state.key, &room, through) {
                    Ok(()) => lock(&log).checkpointed = through,
                    Err(e) => tracing::warn!("cannot checkpoint a publish log: {e}"),
                }
            }
        }
    }

    /// Whether sessions outlive the process.
    pub fn is_durable(&self) -> bool {
        self.journal.is_some()
    }

    fn forget(&self, state: &SessionState) {
        if let Some(journal) = &self.journal {
            journal.ended(state.key);
        }
    }

    /// Resumes the session `resume` names if it can, else starts a new one,
    /// and attaches it to a connection; `close` closes that connection. A
    /// session still attached to another connection (the client noticed the
    /// drop first) is taken over: that connection's `close` is called.
    pub fn attach(
        &self,
        resume: Option<&Resume>,
        user: Option<&str>,
        epoch: u64,
        close: impl FnOnce() + Send + 'static,
        now: Instant,
    ) -> Attached {
        let mut sessions = lock(&self.sessions);
        self.sweep(&mut sessions, now);
        let (state, outcome) = match resume {
            None => (None, ResumeOutcome::New),
            Some(r) if r.epoch != epoch => (
                None,
                ResumeOutcome::NotResumed {
                    reason: RecoveryFailure::EpochChanged,
                },
            ),
            Some(r) => match sessions.get(&r.token) {
                // Someone else's session (a token copied from another
                // user's client) stays theirs, untouched.
                Some(state) if state.user.as_deref() != user => (
                    None,
                    ResumeOutcome::NotResumed {
                        reason: RecoveryFailure::AnotherUser,
                    },
                ),
                Some(state) => {
                    let state = state.clone();
                    sessions.remove(&r.token);
                    // A token resumes once: whoever holds the old one (a
                    // thief, or a client that lost the race) is refused.
                    let token = new_token();
                    if let Some(journal) = &self.journal {
                        if let Err(e) = journal.rotated(state.key, &token) {
                            tracing::error!("cannot store a resume token: {e}");
                        }
                    }
                    *lock(&state.token) = token.clone();
                    sessions.insert(token, state.clone());
                    (Some(state), ResumeOutcome::Resumed)
                }
                None => (
                    None,
                    ResumeOutcome::NotResumed {
                        reason: RecoveryFailure::TokenExpired,
                    },
                ),
            },
        };
        let state = state.unwrap_or_else(|| {
            let key = rand::random::<u64>().max(1);
            let user = user.map(str::to_string);
            let state = Arc::new(SessionState::new(
                new_token(),
                key,
                user.clone(),
                false,
                self.log_limits,
            ));
            if let Some(journal) = &self.journal {
                let stored = StoredSession {
                    key,
                    token: state.token(),
                    user,
                    progress: Vec::new(),
                };
                // Without the record the session only cannot outlive a
                // restart; it works meanwhile.
                if let Err(e) = journal.created(&stored) {
                    tracing::error!("cannot store a session: {e}");
                }
            }
            sessions.insert(state.token(), state.clone());
            state
        });
        let generation = {
            let mut a = lock(&state.attachment);
            if let Some(close_old) = a.live.take() {
                close_old();
            }
            a.generation += 1;
            a.live = Some(Box::new(close));
            a.parked_until = None;
            a.generation
        };
        Attached {
            state,
            outcome,
            generation,
        }
    }

    /// The connection of `attached` has ended. A clean end forgets the
    /// session; otherwise it stays resumable for the window. Nothing happens
    /// if another connection has taken the session over meanwhile.
    pub fn detach(&self, attached: &Attached, clean: bool, now: Instant) {
        let mut sessions = lock(&self.sessions);
        let mut a = lock(&attached.state.attachment);
        if a.generation != attached.generation {
            return;
        }
        a.live = None;
        if clean {
            drop(a);
            if let Some(state) = sessions.remove(&attached.state.token()) {
                self.forget(&state);
            }
        } else {
            a.parked_until = Some(now + self.window);
        }
    }

    /// How many sessions are live or resumable.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Whether there are none.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the sessions parked past their window.
    fn expire(&self, sessions: &mut HashMap<String, Arc<SessionState>>, now: Instant) {
        sessions.retain(|_, s| {
            let a = lock(&s.attachment);
            let keep = a.live.is_some() || a.parked_until.is_some_and(|until| until > now);
            if !keep {
                self.forget(s);
            }
            keep
        });
    }

    fn sweep(&self, sessions: &mut HashMap<String, Arc<SessionState>>, now: Instant) {
        self.expire(sessions, now);
        // Over the bound: the sessions parked longest go first.
        if sessions.len() >= self.max_sessions {
            let mut parked: Vec<(Instant, String)> = sessions
                .iter()
                .filter_map(|(t, s)| lock(&s.attachment).parked_until.map(|u| (u, t.clone())))
                .collect();
            parked.sort();
            let excess = sessions.len() + 1 - self.max_sessions;
            for (_, token) in parked.into_iter().take(excess) {
                if let Some(state) = sessions.remove(&token) {
                    self.forget(&state);
                }
            }
        }
    }
}

fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicBool, Ordering};

    const EPOCH: u64 = 7;

    const LOGS: LogLimits = LogLimits {
        per_room: 16,
        rooms: 8,
        entries: 64,
    };

    fn resume(token: &str, epoch: u64) -> Resume {
        Resume {
            token: token.to_string(),
            epoch,
        }
    }

    /// A journal in memory, recording the checkpoints it is given and the
    /// sessions that ended.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<(u64, String, u64)>>, Mutex<Vec<u64>>);

    /// Another node's sessions, each claimable once.
    #[derive(Default)]
    struct Elsewhere(Mutex<HashMap<String, StoredSession>>);

    impl SessionDirectory for Elsewhere {
        fn claim<'a>(
            &'a self,
            token: &'a str,
        ) -> crate::server::backplane::BoxFuture<'a, Option<StoredSession>> {
            let found = self.0.lock().unwrap().remove(token);
            Box::pin(std::future::ready(found))
        }
    }

    #[tokio::test]
    async fn a_session_begun_on_another_node_is_taken_over_once_by_its_own_user() {
        let journal = Arc::new(Recorded::default());
        let elsewhere = Arc::new(Elsewhere::default());
        let stored = |token: &str, key: u64, user: &str| StoredSession {
            key,
            token: token.to_string(),
            user: Some(user.to_string()),
            progress: Vec::new(),
        };
        for (token, key, user) in [("aa01", 41, "ann"), ("bb02", 42, "bob"), ("cc03", 43, "cy")] {
            elsewhere
                .0
                .lock()
                .unwrap()
                .insert(token.to_string(), stored(token, key, user));
        }
        let store = SessionStore::shared(
            Duration::from_secs(120),
            100,
            LOGS,
            Box::new(journal.clone()),
            elsewhere.clone(),
        );
        let now = Instant::now();
        let take = |token: &str, epoch: u64, user: &'static str| {
            let r = resume(token, epoch);
            let store = &store;
            async move {
                store.find_elsewhere(Some(&r), EPOCH, now).await;
                store.attach(Some(&r), Some(user), EPOCH, || {}, now)
            }
        };
        let ann = take("aa01", EPOCH, "ann").await;
        assert_eq!(ann.outcome, ResumeOutcome::Resumed);
        assert_eq!(ann.state.key(), 41, "the key that names its publishes");
        assert_ne!(ann.state.token(), "aa01", "rotated on resume");
        // A token resumes once, on whichever node.
        let again = take("aa01", EPOCH, "ann").await;
        assert_eq!(
            again.outcome,
            ResumeOutcome::NotResumed {
                reason: RecoveryFailure::TokenExpired
            }
        );
        // Another user's token does not resume it, and the session stays.
        let thief = take("bb02", EPOCH, "mallory").await;
        assert_eq!(
            thief.outcome,
            ResumeOutcome::NotResumed {
                reason: RecoveryFailure::AnotherUser
            }
        );
        // A token of another epoch is not even looked up.
        let old = take("cc03", EPOCH + 1, "cy").await;
        assert!(matches!(old.outcome, ResumeOutcome::NotResumed { .. }));
        assert!(elsewhere.0.lock().unwrap().contains_key("cc03"));
    }

    #[test]
    fn a_parked_session_ends_at_the_next_checkpoint_once_its_window_has_passed() {
        let journal = Arc::new(Recorded::default());
        let store = SessionStore::shared(
            Duration::ZERO,
            100,
            LOGS,
            Box::new(journal.clone()),
            Arc::new(Elsewhere::default()),
        );
        let now = Instant::now();
        let live = store.attach(None, None, EPOCH, || {}, now);
        let parked = store.attach(None, None, EPOCH, || {}, now);
        store.detach(&parked, false, now);
        store.checkpoint();
        assert_eq!(*journal.1.lock().unwrap(), vec![parked.state.key()]);
        assert_eq!(store.len(), 1, "the live one stays: {}", live.state.key());
    }

    impl SessionJournal for Arc<Recorded> {
        fn created(&self, _: &StoredSession) -> Result<(), crate::server::history::HistoryError> {
            Ok(())
        }
        fn progress(
            &self,
            key: u64,
            room: &str,
            through: u64,
        ) -> Result<(), crate::server::history::HistoryError> {
            self.0
                .lock()
                .unwrap()
                .push((key, room.to_string(), through));
            Ok(())
        }
        fn rotated(&self, _: u64, _: &str) -> Result<(), crate::server::history::HistoryError> {
            Ok(())
        }
        fn ended(&self, key: u64) {
            self.1.lock().unwrap().push(key);
        }
    }

    #[test]
    fn checkpoints_and_stored_events_restore_a_log_after_a_restart() {
        let journal = Arc::new(Recorded::default());
        let t0 = Instant::now();
        let store = SessionStore::durable(
            Duration::from_secs(120),
            100,
            LOGS,
            Box::new(journal.clone()),
            Vec::new(),
            t0,
        );
        let first = store.attach(None, None, EPOCH, || {}, t0);
        for id in 1..=3 {
            first
                .state
                .log("r")
                .unwrap()
                .lock()
                .unwrap()
                .record(id, Ok(10 + id));
        }
        store.checkpoint();
        store.checkpoint();
        let key = first.state.key();
        assert_eq!(
            *journal.0.lock().unwrap(),
            vec![(key, "r".to_string(), 3)],
            "one checkpoint per change"
        );

        // The restart: the journal had checkpoint 3; the room's stored
        // events still show publishes 2 and 4 (4 came after the checkpoint).
        let stored = StoredSession {
            key,
            token: first.state.token().to_string(),
            user: None,
            progress: vec![("r".to_string(), 3)],
        };
        let restarted = SessionStore::durable(
            Duration::from_secs(120),
            100,
            LOGS,
            Box::new(journal.clone()),
            vec![stored],
            t0,
        );
        let again = restarted.attach(
            Some(&resume(&first.state.token(), EPOCH)),
            None,
            EPOCH,
            || {},
            t0,
        );
        assert_eq!(again.outcome, ResumeOutcome::Resumed);
        let log = again.state.log("r").unwrap();
        let mut log = log.lock().unwrap();
        assert!(log.needs_restore());
        assert!(!log.copy_may_publish(5), "nothing before the restore");
        log.restore(&[(4, 14), (2, 12)]);
        assert_eq!(log.check(1), Seen::Duplicate(None), "before the checkpoint");
        assert_eq!(log.check(2), Seen::Duplicate(Some(Ok(12))));
        assert_eq!(log.check(3), Seen::Duplicate(None));
        assert_eq!(
            log.check(4),
            Seen::Duplicate(Some(Ok(14))),
            "after it, on record"
        );
        assert_eq!(log.check(5), Seen::New);
        assert_eq!(log.through(), 4);
    }

    #[test]
    fn a_copy_publishes_only_the_next_id_and_never_one_in_flight() {
        let mut log = PublishLog::new(16);
        assert!(log.copy_may_publish(1));
        assert!(!log.copy_may_publish(2), "order: 1 comes first");
        // The stream is publishing 1: its copy stays out.
        assert_eq!(log.claim(1), Seen::New);
        assert!(!log.copy_may_publish(1));
        log.record(1, Ok(10));
        assert!(!log.copy_may_publish(1), "handled already");
        // The copy of 2 went first; the stream frame of 2 is a duplicate.
        assert!(log.copy_may_publish(2));
        log.record(2, Ok(11));
        assert_eq!(log.claim(2), Seen::Duplicate(Some(Ok(11))));
        assert!(log.copy_may_publish(3), "a duplicate claims nothing");
        // A hostile id at the very top neither panics nor opens the gate.
        log.record(u64::MAX, Ok(12));
        assert!(!log.copy_may_publish(0));
        assert!(!log.copy_may_publish(u64::MAX));
    }

    #[test]
    fn a_dropped_session_resumes_within_the_window_and_keeps_its_log() {
        let store = SessionStore::new(Duration::from_secs(120), 100, LOGS);
        let t0 = Instant::now();
        let first = store.attach(None, None, EPOCH, || {}, t0);
        assert_eq!(first.outcome, ResumeOutcome::New);
        first
            .state
            .log("r")
            .unwrap()
            .lock()
            .unwrap()
            .record(1, Ok(5));
        let token = first.state.token().to_string();
        store.detach(&first, false, t0);

        let later = t0 + Duration::from_secs(60);
        let again = store.attach(Some(&resume(&token, EPOCH)), None, EPOCH, || {}, later);
        assert_eq!(again.outcome, ResumeOutcome::Resumed);
        assert_eq!(
            again.state.log("r").unwrap().lock().unwrap().check(1),
            Seen::Duplicate(Some(Ok(5)))
        );
        // The token resumed once; the session now answers to a new one.
        let rotated = again.state.token();
        assert_ne!(rotated, token);
        store.detach(&again, false, later);
        let stolen = store.attach(Some(&resume(&token, EPOCH)), None, EPOCH, || {}, later);
        assert_eq!(
            stolen.outcome,
            ResumeOutcome::NotResumed {
                reason: RecoveryFailure::TokenExpired
            }
        );
        assert_ne!(stolen.state.key(), again.state.key(), "a new session");
        let owner = store.attach(Some(&resume(&rotated, EPOCH)), None, EPOCH, || {}, later);
        assert_eq!(owner.outcome, ResumeOutcome::Resumed);
        assert_eq!(owner.state.key(), again.state.key());
    }

    #[test]
    fn only_the_user_who_began_a_session_resumes_it() {
        let store = SessionStore::new(Duration::from_secs(120), 100, LOGS);
        let t0 = Instant::now();
        let alice = store.attach(None, Some("alice"), EPOCH, || {}, t0);
        let token = alice.state.token();
        store.detach(&alice, false, t0);
        for thief in [Some("mallory"), None] {
            let tried = store.attach(Some(&resume(&token, EPOCH)), thief, EPOCH, || {}, t0);
            assert_eq!(
                tried.outcome,
                ResumeOutcome::NotResumed {
                    reason: RecoveryFailure::AnotherUser
                }
            );
            assert_ne!(tried.state.key(), alice.state.key());
            store.detach(&tried, true, t0);
        }
        // The refusals left the session and its token as they were.
        let again = store.attach(
            Some(&resume(&token, EPOCH)),
            Some("alice"),
            EPOCH,
            || {},
            t0,
        );
        assert_eq!(again.outcome, ResumeOutcome::Resumed);
        assert_eq!(again.state.key(), alice.state.key());
    }

    #[test]
    fn a_session_publishes_to_a_bounded_number_of_rooms_and_remembers_a_bounded_number_of_outcomes()
    {
        let store = SessionStore::new(Duration::from_secs(120), 100, LOGS);
        let t0 = Instant::now();
        let s = store.attach(None, None, EPOCH, || {}, t0);
        let logs: Vec<_> = (0..LOGS.rooms)
            .map(|r| s.state.log(&format!("r{r}")).unwrap())
            .collect();
        assert!(s.state.log("one-too-many").is_none());
        assert!(s.state.log("r0").is_some(), "a room it has is still there");
        // 8 rooms × 16 per room would be 128 outcomes; the session keeps 64.
        let mut forgotten = 0;
        for id in 1..=16 {
            for log in &logs {
                forgotten += log.lock().unwrap().record(id, Ok(id));
            }
        }
        assert_eq!(s.state.remembered(), LOGS.entries);
        assert_eq!(forgotten, 128 - LOGS.entries);
        let first = logs[0].lock().unwrap();
        assert_eq!(
            first.check(16),
            Seen::Duplicate(Some(Ok(16))),
            "the newest is kept"
        );
        assert_eq!(
            first.check(1),
            Seen::Duplicate(None),
            "the oldest is forgotten"
        );
        drop(first);
        drop(logs);
        store.detach(&s, true, t0);
        drop(s);
    }

    #[test]
    fn expired_unknown_and_other_epoch_tokens_start_new_sessions() {
        let store = SessionStore::new(Duration::from_secs(10), 100, LOGS);
        let t0 = Instant::now();
        let first = store.attach(None, None, EPOCH, || {}, t0);
        let token = first.state.token().to_string();
        store.detach(&first, false, t0);
        let late = t0 + Duration::from_secs(11);
        let expired = store.attach(Some(&resume(&token, EPOCH)), None, EPOCH, || {}, late);
        assert_eq!(
            expired.outcome,
            ResumeOutcome::NotResumed {
                reason: RecoveryFailure::TokenExpired
            }
        );
        assert_ne!(expired.state.token(), token);
        let other = store.attach(Some(&resume("x", EPOCH + 1)), None, EPOCH, || {}, late);
        assert_eq!(
            other.outcome,
            ResumeOutcome::NotResumed {
                reason: RecoveryFailure::EpochChanged
            }
        );
    }

    #[test]
    fn a_clean_close_forgets_and_a_takeover_closes_the_old_connection() {
        let store = SessionStore::new(Duration::from_secs(120), 100, LOGS);
        let t0 = Instant::now();
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let first = store.attach(
            None,
            None,
            EPOCH,
            move || flag.store(true, Ordering::SeqCst),
            t0,
        );
        let token = first.state.token().to_string();
        // The client reconnects before the server noticed the old connection died.
        let second = store.attach(Some(&resume(&token, EPOCH)), None, EPOCH, || {}, t0);
        assert_eq!(second.outcome, ResumeOutcome::Resumed);
        assert!(closed.load(Ordering::SeqCst), "old connection closed");
        // The old connection's end changes nothing now.
        store.detach(&first, false, t0);
        assert_eq!(store.len(), 1);
        store.detach(&second, true, t0);
        assert!(store.is_empty(), "a clean close forgets the session");
    }

    #[test]
    fn the_store_is_bounded() {
        let store = SessionStore::new(Duration::from_secs(120), 3, LOGS);
        let t0 = Instant::now();
        for i in 0..10 {
            let s = store.attach(None, None, EPOCH, || {}, t0 + Duration::from_secs(i));
            store.detach(&s, false, t0 + Duration::from_secs(i));
        }
        assert!(store.len() <= 3, "{}", store.len());
    }

    #[test]
    fn a_log_answers_duplicates_as_before_and_forgets_the_old() {
        let mut log = PublishLog::new(2);
        assert_eq!(log.check(1), Seen::New);
        log.record(1, Ok(10));
        log.record(2, Err(ErrorCode::InvalidName));
        log.record(3, Ok(11));
        assert_eq!(log.check(3), Seen::Duplicate(Some(Ok(11))));
        assert_eq!(
            log.check(2),
            Seen::Duplicate(Some(Err(ErrorCode::InvalidName)))
        );
        assert_eq!(log.check(1), Seen::Duplicate(None), "beyond capacity");
        assert_eq!(log.check(4), Seen::New);
        assert_eq!(log.through(), 3);
        log.record(2, Ok(99));
        assert_eq!(log.through(), 3, "an old id never moves the log back");
    }
}
