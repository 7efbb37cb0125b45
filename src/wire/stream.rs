//! Reading frames from a QUIC receive stream: a native quinn stream, or
//! a WebTransport one (the same QUIC stream behind its session header).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Frame, FrameDecoder, WireError};

/// Bytes read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Why no frame could be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The bytes on the stream are not a valid frame.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream or its connection failed.
    #[error("stream read failed: {0}")]
    Read(Box<dyn std::error::Error + Send + Sync>),
    /// A frame was begun and not completed within the frame timeout.
    #[error("a frame stayed half-sent for more than {0:?}")]
    Stalled(Duration),
}

impl From<quinn::ReadError> for ReadFrameError {
    fn from(e: quinn::ReadError) -> Self {
        ReadFrameError::Read(Box::new(e))
    }
}

impl From<web_transport_quinn::ReadError> for ReadFrameError {
    fn from(e: web_transport_quinn::ReadError) -> Self {
        ReadFrameError::Read(Box::new(e))
    }
}

/// A stream frames are read from.
pub trait ChunkStream: Send {
    /// The next bytes, in order, at most `max`; `None` at the end.
    fn next_chunk(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<Bytes>, ReadFrameError>> + Send;
    /// Asks the peer to stop sending.
    fn stop_sending(&mut self, code: u32);
}

impl ChunkStream for quinn::RecvStream {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadFrameError> {
        Ok(self.read_chunk(max, true).await?.map(|c| c.bytes))
    }
    fn stop_sending(&mut self, code: u32) {
        // The stream may already be finished or reset; nothing to do then.
        let _ = self.stop(code.into());
    }
}

impl ChunkStream for web_transport_quinn::RecvStream {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadFrameError> {
        Ok(self.read_chunk(max, true).await?.map(|c| c.bytes))
    }
    fn stop_sending(&mut self, code: u32) {
        let _ = self.stop(code);
    }
}

/// Cuts a receive stream into frames, with a size limit per frame and,
/// optionally, a time limit for a begun frame and a byte budget shared by
/// every reader of one connection.
pub struct FrameReader<S: ChunkStream = quinn::RecvStream> {
    stream: S,
    decoder: FrameDecoder,
    frame_timeout: Option<Duration>,
    /// When the frame now buffered in part began to arrive.
    frame_began: Option<Instant>,
    budget: Option<Arc<Semaphore>>,
    /// Bytes of `budget` this reader holds: what its decoder buffers.
    held: usize,
}

impl<S: ChunkStream> FrameReader<S> {
    /// Reads frames from `stream`, refusing any body over `max_frame` bytes.
    pub fn new(stream: S, max_frame: usize) -> Self {
        FrameReader {
            stream,
            decoder: FrameDecoder::new(max_frame),
            frame_timeout: None,
            frame_began: None,
            budget: None,
            held: 0,
        }
    }

    /// Changes the limit for the frames after the ones already returned
    /// (the control stream allows only a small `Hello`, then the full limit).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.decoder.set_max_frame(max_frame);
    }

    /// A frame begun must be complete within `timeout`, or reading fails
    /// with [`ReadFrameError::Stalled`]. Waiting between frames is not
    /// limited.
    pub fn set_frame_timeout(&mut self, timeout: Duration) {
        self.frame_timeout = Some(timeout);
    }

    /// Buffered bytes are taken from `budget` (one permit a byte), shared
    /// with the connection's other readers: when it is spent, reading
    /// waits, and QUIC flow control holds the peer back.
    pub fn set_budget(&mut self, budget: Arc<Semaphore>) {
        self.budget = Some(budget);
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadFrameError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                self.settle();
                return Ok(Some(frame));
            }
            let more = async {
                // Read what is there without copying twice; then take the
                // budget for it (the chunk is small next to the budget).
                let chunk = self.stream.next_chunk(READ_CHUNK).await?;
                if let (Some(chunk), Some(budget)) = (&chunk, &self.budget) {
                    let len = chunk.len();
                    let permits = u32::try_from(len).unwrap_or(u32::MAX);
                    if let Ok(permit) = budget.acquire_many(permits).await {
                        permit.forget();
                        self.held += len;
                    }
                }
                Ok::<_, ReadFrameError>(chunk)
            };
            let chunk = match (self.frame_began, self.frame_timeout) {
                (Some(began), Some(timeout)) => {
                    match tokio::time::timeout_at(began + timeout, more).await {
                        Ok(chunk) => chunk?,
                        Err(_) => return Err(ReadFrameError::Stalled(timeout)),
                    }
                }
                _ => more.await?,
            };
            match chunk {
                Some(chunk) => {
                    self.decoder.extend(&chunk);
                    if self.frame_began.is_none() {
                        self.frame_began = Some(Instant::now());
                    }
                }
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }

    /// After a frame is taken from the buffer: gives back the budget of
    /// the bytes no longer buffered, and starts the clock of the next
    /// frame anew if part of it is here already.
    fn settle(&mut self) {
        let buffered = self.decoder.buffered();
        if buffered == 0 {
            self.frame_began = None;
        } else {
            self.frame_began = Some(Instant::now());
        }
        if let Some(budget) = &self.budget {
            if self.held > buffered {
                budget.add_permits(self.held - buffered);
                self.held = buffered;
            }
        }
    }

    /// Frames already complete in the buffer, without waiting for the network.
    pub fn try_next_buffered(&mut self) -> Result<Option<Frame>, WireError> {
        let frame = self.decoder.next_frame()?;
        if frame.is_some() {
            self.settle();
        }
        Ok(frame)
    }

    /// Whether the next frame is already buffered (reading it will not wait).
    pub fn has_buffered_frame(&self) -> bool {
        self.decoder.has_frame()
    }

    /// Asks the peer to stop sending on this stream.
    pub fn stop(&mut self, code: u32) {
        self.stream.stop_sending(code);
    }
}

impl<S: ChunkStream> Drop for FrameReader<S> {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.add_permits(self.held);
        }
    }
}
