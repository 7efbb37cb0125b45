//! Outgoing reliable events: one stream per room, fed by a queue bounded in
//! bytes, so that a stalled server pushes back on `emit` instead of letting
//! the client buffer without limit.

use std::sync::Arc;

use bytes::Bytes;
use quinn::Connection;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::wire::{self, Frame};

/// Bytes of events queued per room before `emit` waits.
pub(crate) const PUBLISH_BUDGET: usize = 4 * 1024 * 1024;
/// Frames queued per room before `emit` waits (small frames hit this first).
const PUBLISH_FRAMES: usize = 4096;
const WRITE_BATCH: usize = 64;

/// The writer of a room's stream is gone (the connection is closing).
pub(crate) struct WriterGone;

/// The queue in front of one room's publish stream.
#[derive(Clone)]
pub(crate) struct PublishQueue {
    tx: mpsc::Sender<(Bytes, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
}

impl PublishQueue {
    /// Opens the room's stream in the background and returns its queue.
    pub fn open(conn: &Connection, room: &str) -> Self {
        let (tx, rx) = mpsc::channel(PUBLISH_FRAMES);
        let header = wire::encode_framed(&Frame::PublishStream {
            room: room.to_string(),
        });
        tokio::spawn(write_stream(conn.clone(), header, rx));
        PublishQueue {
            tx,
            budget: Arc::new(Semaphore::new(PUBLISH_BUDGET)),
        }
    }

    /// Whether the writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Queues a frame, waiting while the room's budget is used up.
    pub async fn push(&self, frame: Bytes) -> Result<(), WriterGone> {
        // A frame larger than the whole budget waits for all of it.
        let need = frame.len().clamp(1, PUBLISH_BUDGET) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(need)
            .await
            .map_err(|_| WriterGone)?;
        self.tx.send((frame, permit)).await.map_err(|_| WriterGone)
    }
}

async fn write_stream(
    conn: Connection,
    header: Bytes,
    mut queue: mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>,
) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    if send.write_chunk(header).await.is_err() {
        return;
    }
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut chunks = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        chunks.extend(batch.iter().map(|(frame, _)| frame.clone()));
        if send.write_all_chunks(&mut chunks).await.is_err() {
            return;
        }
        chunks.clear();
        // Dropping the permits returns their bytes to the budget.
        batch.clear();
    }
    let _ = send.finish();
}
