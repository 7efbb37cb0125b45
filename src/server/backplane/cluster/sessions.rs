//! Resumable sessions shared by the nodes of a cluster: a JetStream KV
//! bucket (`<PREFIX>_SESSIONS`), one entry per resume token holding the
//! session's key (which names its publishes, `Nats-Msg-Id`) and user.
//!
//! Each node writes its own sessions (began, token rotated, ended) through
//! one ordered writer task, and refreshes them a few times per resume
//! window; the bucket forgets an entry a resume window after its last
//! refresh, so the sessions of a node that died stay resumable elsewhere
//! for the window and no longer. A node that meets a token it does not know
//! claims the entry by deleting it at the revision it read: of two nodes
//! racing for one token, one wins.
//!
//! The writes go out after the `Welcome` (the journal seam is synchronous):
//! a node that dies within that moment leaves a session another node does
//! not know, which then starts anew (`NotResumed`), as on a single server
//! that lost its session table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::store::ClusterError;
use crate::server::backplane::BoxFuture;
use crate::server::history::HistoryError;
use crate::server::resume::{SessionDirectory, SessionJournal, StoredSession};
use crate::sync::lock;

/// Session writes waiting for the writer; more are dropped with an error
/// in the log (those sessions then cannot move to another node).
const WRITE_QUEUE: usize = 16_384;

/// What the bucket holds per token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    key: u64,
    user: Option<String>,
}

enum Write {
    Put { token: String, record: Record },
    Delete { token: String },
}

/// The sessions of this node in the shared bucket, and the way to find
/// other nodes' sessions there.
#[derive(Clone)]
pub struct SharedSessions {
    kv: kv::Store,
    writes: mpsc::Sender<Write>,
    /// This node's sessions: key → (token, record), refreshed periodically.
    mine: Arc<Mutex<HashMap<u64, (String, Record)>>>,
}

impl SharedSessions {
    /// Opens (or creates) the bucket for sessions resumable for `window`,
    /// and starts the writer.
    pub async fn open(
        js: &jetstream::Context,
        bucket: String,
        replicas: usize,
        window: Duration,
    ) -> Result<Self, ClusterError> {
        let refresh = (window / 3).max(Duration::from_secs(1));
        // The bucket's stream is made here with the KV conventions (what
        // `create_key_value` would make): that call first asks for the
        // account's limits, a reply async-nats cannot read from a 2.9 server.
        let config = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("quicbus resumable sessions".to_string()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: window + refresh,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        let failed = |what| move |e: async_nats::Error| ClusterError::JetStream { what, source: e };
        js.create_or_update_stream(config)
            .await
            .map_err(|e| failed("creating the session bucket")(e.into()))?;
        let kv = js
            .get_key_value(&bucket)
            .await
            .map_err(|e| failed("opening the session bucket")(e.into()))?;
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let mine = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(write_sessions(kv.clone(), queue, mine.clone(), refresh));
        Ok(SharedSessions { kv, writes, mine })
    }

    fn send(&self, write: Write) {
        if self.writes.try_send(write).is_err() {
            tracing::error!(
                "session writes are not keeping up; a session may not move to another node"
            );
        }
    }
}

impl SessionJournal for SharedSessions {
    fn created(&self, session: &StoredSession) -> Result<(), HistoryError> {
        let record = Record {
            key: session.key,
            user: session.user.clone(),
        };
        lock(&self.mine).insert(session.key, (session.token.clone(), record.clone()));
        self.send(Write::Put {
            token: session.token.clone(),
            record,
        });
        Ok(())
    }

    fn progress(&self, _key: u64, _room: &str, _through: u64) -> Result<(), HistoryError> {
        // Nothing to keep: JetStream itself recognises a retried publish.
        Ok(())
    }

    fn rotated(&self, key: u64, token: &str) -> Result<(), HistoryError> {
        let mut mine = lock(&self.mine);
        let old = mine.get(&key).map(|(token, _)| token.clone());
        let record = match mine.get(&key) {
            Some((_, record)) => record.clone(),
            None => {
                tracing::warn!("a session unknown to the bucket was resumed");
                return Ok(());
            }
        };
        mine.insert(key, (token.to_string(), record.clone()));
        drop(mine);
        if let Some(old) = old {
            self.send(Write::Delete { token: old });
        }
        self.send(Write::Put {
            token: token.to_string(),
            record,
        });
        Ok(())
    }

    fn ended(&self, key: u64) {
        if let Some((token, _)) = lock(&self.mine).remove(&key) {
            self.send(Write::Delete { token });
        }
    }
}

impl SessionDirectory for SharedSessions {
    fn claim<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Option<StoredSession>> {
        Box::pin(async move {
            // Tokens are hex; anything else is no key of ours.
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let entry = match self.kv.entry(token).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!("cannot look up a session: {e}");
                    return None;
                }
            };
            let record: Record = postcard::from_bytes(&entry.value).ok()?;
            if let Err(e) = self
                .kv
                .delete_expect_revision(token, Some(entry.revision))
                .await
            {
                tracing::debug!("another node took the session first: {e}");
                return None;
            }
            // This node's from now on: the rotation that follows the
            // resume stores it under its new token, and it is refreshed
            // and ended from here.
            lock(&self.mine).insert(record.key, (token.to_string(), record.clone()));
            Some(StoredSession {
                key: record.key,
                token: token.to_string(),
                user: record.user,
                progress: Vec::new(),
            })
        })
    }
}

/// Applies this node's session writes in order, and refreshes its sessions
/// so that the bucket keeps them.
async fn write_sessions(
    kv: kv::Store,
    mut queue: mpsc::Receiver<Write>,
    mine: Arc<Mutex<HashMap<u64, (String, Record)>>>,
    refresh: Duration,
) {
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            write = queue.recv() => match write {
                Some(Write::Put { token, record }) => put(&kv, &token, &record).await,
                Some(Write::Delete { token }) => {
                    if let Err(e) = kv.delete(&token).await {
                        tracing::debug!("cannot delete a session: {e}");
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                let all: Vec<(String, Record)> = lock(&mine).values().cloned().collect();
                for (token, record) in all {
                    put(&kv, &token, &record).await;
                }
            }
        }
    }
}

async fn put(kv: &kv::Store, token: &str, record: &Record) {
    let Ok(value) = postcard::to_stdvec(record) else {
        return;
    };
    if let Err(e) = kv.put(token, Bytes::from(value)).await {
        tracing::warn!("cannot store a session: {e}");
    }
}
