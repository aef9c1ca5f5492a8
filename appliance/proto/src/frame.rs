//! The one framing of every Moat stream (sync and pairing): each message is
//! a `u32` big-endian length, then the body: an optional version byte (for
//! message kinds that have one), then the message in postcard.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes in a frame's length prefix.
const LENGTH_PREFIX_BYTES: usize = 4;

/// Buffer capacity a decoder keeps between messages (after a bundle, the
/// rest is given back).
const RETAINED_BUFFER_BYTES: usize = 64 << 10;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame is longer than the receiver accepts.
    #[error("message of {length} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Length announced or needed.
        length: u64,
        /// The limit for this kind of message.
        limit: usize,
    },
    /// A frame's body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A frame's version byte is not the one this side speaks.
    #[error("the peer speaks version {found} of this protocol, this appliance {expected}")]
    Version {
        /// The version received.
        found: u8,
        /// The version spoken here.
        expected: u8,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a message ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes received of the unfinished frame.
        buffered: usize,
    },
}

/// A message kind carried in frames.
pub trait Message: Serialize + DeserializeOwned {
    /// Largest frame body accepted for this kind of message.
    const MAX_BYTES: usize;
    /// The version byte that starts every body of this kind, if it has one.
    const VERSION: Option<u8> = None;
}

/// Encodes `message` as one frame.
pub fn encode_frame<M: Message>(message: &M) -> Result<Vec<u8>, FrameError> {
    let mut start = vec![0; LENGTH_PREFIX_BYTES];
    start.extend(M::VERSION);
    let mut frame = postcard::to_extend(message, start)
        .map_err(|err| FrameError::Malformed(err.to_string()))?;
    let body = frame.len() - LENGTH_PREFIX_BYTES;
    let length = u32::try_from(body)
        .ok()
        .filter(|_| body <= M::MAX_BYTES)
        .ok_or(FrameError::TooLarge {
            length: body as u64,
            limit: M::MAX_BYTES,
        })?;
    frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_be_bytes());
    Ok(frame)
}

/// Decodes one frame body (what follows the length prefix).
pub fn decode_body<M: Message>(body: &[u8]) -> Result<M, FrameError> {
    let body = match M::VERSION {
        None => body,
        Some(expected) => match body.split_first() {
            None => return Err(FrameError::Malformed("empty message".into())),
            Some((&found, _)) if found != expected => {
                return Err(FrameError::Version { found, expected });
            }
            Some((_, rest)) => rest,
        },
    };
    let (message, rest) =
        postcard::take_from_bytes(body).map_err(|err| FrameError::Malformed(err.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok(message)
}

/// Reassembles frames of `M` from chunks of a stream.
///
/// A length over `M::MAX_BYTES` is refused as soon as its prefix arrives,
/// without waiting for (or reserving room for) the body. After an error
/// the decoder drops its buffer and repeats that error: framing is lost,
/// so the shell closes the stream.
#[derive(Debug)]
pub struct FrameDecoder<M> {
    buffer: Vec<u8>,
    failure: Option<FrameError>,
    message: PhantomData<fn() -> M>,
}

impl<M: Message> Default for FrameDecoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Message> FrameDecoder<M> {
    /// An empty decoder.
    pub fn new() -> Self {
        Self {
            buffer: Vec::new(),
            failure: None,
            message: PhantomData,
        }
    }

    /// Adds a chunk and returns the next complete message, if any. Call
    /// [`Self::next_message`] until it returns `None` to drain the others.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<M>, FrameError> {
        if self.failure.is_none() {
            self.buffer.extend_from_slice(chunk);
        }
        self.next_message()
    }

    /// The next complete message already buffered, if any.
    pub fn next_message(&mut self) -> Result<Option<M>, FrameError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        self.decode_buffered().inspect_err(|err| {
            self.buffer = Vec::new();
            self.failure = Some(err.clone());
        })
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Checks that the stream ended between frames.
    pub fn finish(&self) -> Result<(), FrameError> {
        match (&self.failure, self.buffer.len()) {
            (Some(failure), _) => Err(failure.clone()),
            (None, 0) => Ok(()),
            (None, buffered) => Err(FrameError::Truncated { buffered }),
        }
    }

    fn decode_buffered(&mut self) -> Result<Option<M>, FrameError> {
        let Some(prefix) = self.buffer.first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let length = u32::from_be_bytes(*prefix) as usize;
        if length > M::MAX_BYTES {
            return Err(FrameError::TooLarge {
                length: length as u64,
                limit: M::MAX_BYTES,
            });
        }
        let end = LENGTH_PREFIX_BYTES + length;
        if self.buffer.len() < end {
            return Ok(None);
        }
        let message = decode_body(&self.buffer[LENGTH_PREFIX_BYTES..end])?;
        self.buffer.drain(..end);
        if self.buffer.len() <= RETAINED_BUFFER_BYTES {
            self.buffer.shrink_to(RETAINED_BUFFER_BYTES);
        }
        Ok(Some(message))
    }
}
