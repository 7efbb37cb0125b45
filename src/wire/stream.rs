//! Reading frames from a QUIC receive stream.

use quinn::RecvStream;

use super::{Frame, FrameDecoder, WireError};

/// Why no frame could be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The bytes on the stream are not a valid frame.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream or its connection failed.
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
}

/// Cuts a receive stream into frames, with a size limit per frame.
pub struct FrameReader {
    stream: RecvStream,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// Reads frames from `stream`, refusing any body over `max_frame` bytes.
    pub fn new(stream: RecvStream, max_frame: usize) -> Self {
        FrameReader {
            stream,
            decoder: FrameDecoder::new(max_frame),
        }
    }

    /// Changes the limit for the frames after the ones already returned
    /// (the control stream allows only a small `Hello`, then the full limit).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.decoder.set_max_frame(max_frame);
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadFrameError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            // Read what is there (up to 64 KiB at once) without copying twice.
            match self.stream.read_chunk(64 * 1024, true).await? {
                Some(chunk) => self.decoder.extend(&chunk.bytes),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }

    /// Frames already complete in the buffer, without waiting for the network.
    pub fn try_next_buffered(&mut self) -> Result<Option<Frame>, WireError> {
        self.decoder.next_frame()
    }

    /// Whether the next frame is already buffered (reading it will not wait).
    pub fn has_buffered_frame(&self) -> bool {
        self.decoder.has_frame()
    }

    /// Asks the peer to stop sending on this stream.
    pub fn stop(&mut self, code: u32) {
        // The stream may already be finished or reset; nothing to do then.
        let _ = self.stream.stop(code.into());
    }
}
