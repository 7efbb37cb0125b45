//! One connection of a client. A client outlives its connections: when one
//! is lost, the reconnect supervisor opens another `Link`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::handshake::{self, Established};
use super::reconnect::another_server_may_answer;
use super::rooms::{LinkRooms, RoomRef};
use super::{incoming, lock, ClientError, Core, Incoming};
use crate::wire::RoomId;
use crate::wire::{self, Frame, Resume, ResumeOutcome};

const WRITE_BATCH: usize = 64;

/// What the server said in `Welcome`.
#[derive(Debug, Clone)]
pub(crate) struct Welcomed {
    pub session_id: u64,
    pub max_frame: usize,
    pub epoch: u64,
    pub resume_token: String,
    pub resumed: ResumeOutcome,
}

/// A live connection and its writers.
pub(crate) struct Link {
    /// Tells this connection from the client's others.
    pub id: u64,
    /// The room ids the server gave this connection.
    pub rooms: Arc<Mutex<LinkRooms>>,
    pub conn: quinn::Connection,
    pub endpoint: quinn::Endpoint,
    pub welcome: Welcomed,
    control: mpsc::Sender<Bytes>,
    /// Rooms whose outbox writer runs on this connection.
    writers: Mutex<HashSet<Arc<str>>>,
    /// Set once the rooms are rejoined and their recovery reported: room
    /// streams hold their events until then, so that a recovery notice
    /// always comes before the events it announces.
    ready: tokio::sync::watch::Sender<bool>,
}

impl Link {
    /// The first connection: `options.server`, then each of
    /// `options.servers` in order, until one answers. An error no other
    /// server would answer differently ends the search; otherwise the last
    /// error is returned.
    pub async fn open_first(
        core: &Arc<Core>,
        events: mpsc::Sender<Incoming>,
    ) -> Result<Arc<Link>, ClientError> {
        let options = &core.options;
        let mut result = Link::open(core, options.server, None, events.clone()).await;
        let mut tried = vec![options.server];
        for &server in &options.servers {
            match &result {
                Err(e) if another_server_may_answer(e) => {
                    tracing::debug!("trying the next server: {e}");
                }
                _ => break,
            }
            if tried.contains(&server) {
                continue;
            }
            tried.push(server);
            result = Link::open(core, server, None, events.clone()).await;
        }
        result
    }

    /// Connects to `server` (resuming `resume` if given) and starts the
    /// reading tasks.
    pub async fn open(
        core: &Arc<Core>,
        server: SocketAddr,
        resume: Option<Resume>,
        events: mpsc::Sender<Incoming>,
    ) -> Result<Arc<Link>, ClientError> {
        let Established {
            conn,
            endpoint,
            control_send,
            control,
            session_id,
            max_frame,
            epoch,
            resume_token,
            resumed,
        } = handshake::establish(&core.options, server, core.token(), resume).await?;
        let (control_tx, control_rx) = mpsc::channel(256);
        tokio::spawn(write_frames(control_send, control_rx));
        // The server refuses events over its own limit, so accept up to it.
        let read_limit = core.options.max_frame.max(max_frame);
        let (ready, ready_rx) = tokio::sync::watch::channel(false);
        let id = core
            .next_link
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rooms = Arc::new(Mutex::new(LinkRooms::default()));
        incoming::spawn(
            core.clone(),
            id,
            rooms.clone(),
            conn.clone(),
            control,
            events,
            read_limit,
            ready_rx,
        );
        Ok(Arc::new(Link {
            id,
            rooms,
            conn,
            endpoint,
            welcome: Welcomed {
                session_id,
                max_frame,
                epoch,
                resume_token,
                resumed,
            },
            control: control_tx,
            writers: Mutex::new(HashSet::new()),
            ready,
        }))
    }

    /// Records the id the server gave `name` on this connection, and says
    /// how delivery positions refer to it.
    pub fn learn(&self, room_id: RoomId, name: &str) -> RoomRef {
        lock(&self.rooms).learn(room_id, name);
        RoomRef {
            link: self.id,
            room_id,
        }
    }

    /// This connection's id for room `name`, if the server gave it one.
    pub fn room_id(&self, name: &str) -> Option<RoomId> {
        lock(&self.rooms).id(name)
    }

    /// Lets room streams deliver their events.
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    /// The queue of control frames.
    pub fn control(&self) -> &mpsc::Sender<Bytes> {
        &self.control
    }

    /// Makes sure a writer sends `room`'s outbox on this connection.
    pub fn ensure_writer(&self, core: &Arc<Core>, room: &str) {
        let mut writers = lock(&self.writers);
        if writers.contains(room) {
            return;
        }
        let room: Arc<str> = Arc::from(room);
        writers.insert(room.clone());
        tokio::spawn(write_outbox(self.conn.clone(), core.clone(), room));
    }
}

/// Sends a room's outbox on its own stream: first whatever is unconfirmed
/// (after a reconnect, the server answers the ones it already had as
/// duplicates), then each new emit, until the connection ends.
async fn write_outbox(conn: quinn::Connection, core: Arc<Core>, room: Arc<str>) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    let header = wire::encode_framed(&Frame::PublishStream {
        room: room.to_string(),
    });
    if send.write_chunk(header).await.is_err() {
        return;
    }
    let changed = core.outbox.changed(&room);
    let mut last_sent = 0;
    loop {
        let added = changed.notified();
        tokio::pin!(added);
        added.as_mut().enable();
        let batch = core.outbox.after(&room, last_sent, WRITE_BATCH);
        let Some(&(last, _)) = batch.last() else {
            tokio::select! {
                () = &mut added => continue,
                _ = conn.closed() => return,
            }
        };
        last_sent = last;
        let mut chunks: Vec<Bytes> = batch.into_iter().map(|(_, frame)| frame).collect();
        if send.write_all_chunks(&mut chunks).await.is_err() {
            return;
        }
    }
}

/// Writes queued frames to a stream, several per write when they pile up.
pub(crate) async fn write_frames(mut send: quinn::SendStream, mut queue: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if send.write_all_chunks(&mut batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    let _ = send.finish();
}
