//! Frames: how one request, response or error travels on a QUIC stream.
//!
//! ```text
//! 0   1   frame format version (1)
//! 1   1   kind: 1 request, 2 response, 3 error
//! 2   2   method, u16 LE (which RPC)
//! 4   4   reserved, zero
//! 8   4   body length n, u32 LE (refused above the receiver's limit before allocating)
//! 12  4   CRC-32C of bytes 0..12
//! 16  n   body (postcard)
//! 16+n 4  CRC-32C of the body
//! ```

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const FRAME_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
/// Default limit on a frame body (16 MiB); bulk data moves in many frames or on data streams.
pub const FRAME_BODY_MAX: u32 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request = 1,
    Response = 2,
    Error = 3,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub method: u16,
    pub body: Bytes,
}

/// Why a frame could not be read. Every variant but `Io`/`Closed` means the peer sent bytes
/// that are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported frame version {0} (this build speaks {FRAME_VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("frame body of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u32, max: u32 },
    #[error("frame header checksum mismatch")]
    HeaderChecksum,
    #[error("frame body checksum mismatch")]
    BodyChecksum,
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("stream ended before a frame started")]
    Closed,
    #[error("stream I/O: {0}")]
    Io(String),
}

impl FrameError {
    /// Whether the peer broke the protocol (as opposed to the stream failing or ending).
    pub fn is_violation(&self) -> bool {
        !matches!(self, FrameError::Io(_) | FrameError::Closed)
    }
}

impl Frame {
    pub fn new(kind: Kind, method: u16, body: impl Into<Bytes>) -> Frame {
        Frame {
            kind,
            method,
            body: body.into(),
        }
    }

    pub fn encode_header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = FRAME_VERSION;
        h[1] = self.kind as u8;
        h[2..4].copy_from_slice(&self.method.to_le_bytes());
        h[8..12].copy_from_slice(&(self.body.len() as u32).to_le_bytes());
        let c = crc32c::crc32c(&h[..12]);
        h[12..16].copy_from_slice(&c.to_le_bytes());
        h
    }

    /// The whole frame as one buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len() + 4);
        out.extend_from_slice(&self.encode_header());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&crc32c::crc32c(&self.body).to_le_bytes());
        out
    }
}

/// A decoded header: kind, method and body length, checked against `max_body`.
pub fn decode_header(h: &[u8; HEADER_LEN], max_body: u32) -> Result<(Kind, u16, u32), FrameError> {
    let stored = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if crc32c::crc32c(&h[..12]) != stored {
        return Err(FrameError::HeaderChecksum);
    }
    if h[0] != FRAME_VERSION {
        return Err(FrameError::Version(h[0]));
    }
    let kind = match h[1] {
        1 => Kind::Request,
        2 => Kind::Response,
        3 => Kind::Error,
        k => return Err(FrameError::Kind(k)),
    };
    if h[4..8] != [0; 4] {
        return Err(FrameError::Reserved);
    }
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if len > max_body {
        return Err(FrameError::TooLarge { len, max: max_body });
    }
    Ok((kind, u16::from_le_bytes([h[2], h[3]]), len))
}

/// Decode one complete frame from a buffer (the fuzzing and test entry point).
pub fn decode(bytes: &[u8], max_body: u32) -> Result<Frame, FrameError> {
    let Some(h) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(if bytes.is_empty() {
            FrameError::Closed
        } else {
            FrameError::Truncated
        });
    };
    let (kind, method, len) = decode_header(h, max_body)?;
    let end = HEADER_LEN + len as usize;
    let (Some(body), Some(crc)) = (bytes.get(HEADER_LEN..end), bytes.get(end..end + 4)) else {
        return Err(FrameError::Truncated);
    };
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(FrameError::BodyChecksum);
    }
    Ok(Frame {
        kind,
        method,
        body: Bytes::copy_from_slice(body),
    })
}

fn io_err(e: std::io::Error) -> FrameError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e.to_string()),
    }
}

/// Read one frame from a stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_body: u32,
) -> Result<Frame, FrameError> {
    let mut h = [0u8; HEADER_LEN];
    // Distinguish a stream that ends cleanly before any frame from one cut inside a frame.
    let first = r.read(&mut h[..1]).await.map_err(io_err)?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    r.read_exact(&mut h[1..]).await.map_err(io_err)?;
    let (kind, method, len) = decode_header(&h, max_body)?;
    // Filled without zeroing first (bodies are up to megabytes on the data path).
    let mut body = BytesMut::with_capacity(len as usize);
    while body.len() < len as usize {
        let want = len as u64 - body.len() as u64;
        let n = (&mut *r)
            .take(want)
            .read_buf(&mut body)
            .await
            .map_err(io_err)?;
        if n == 0 {
            return Err(FrameError::Truncated);
        }
    }
    let mut crc = [0u8; 4];
    r.read_exact(&mut crc).await.map_err(io_err)?;
    if crc32c::crc32c(&body) != u32::from_le_bytes(crc) {
        return Err(FrameError::BodyChecksum);
    }
    Ok(Frame {
        kind,
        method,
        body: body.freeze(),
    })
}

/// Write one frame to a stream.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), FrameError> {
    let io = |e: std::io::Error| FrameError::Io(e.to_string());
    w.write_all(&frame.encode_header()).await.map_err(io)?;
    w.write_all(&frame.body).await.map_err(io)?;
    w.write_all(&crc32c::crc32c(&frame.body).to_le_bytes())
        .await
        .map_err(io)?;
    Ok(())
}

/// Write one frame to a QUIC stream, handing the body to quinn without copying it.
pub async fn write_frame_quic(w: &mut quinn::SendStream, frame: &Frame) -> Result<(), FrameError> {
    let io = |e: quinn::WriteError| FrameError::Io(e.to_string());
    w.write_all(&frame.encode_header()).await.map_err(io)?;
    w.write_chunk(frame.body.clone()).await.map_err(io)?;
    w.write_all(&crc32c::crc32c(&frame.body).to_le_bytes())
        .await
        .map_err(io)?;
    Ok(())
}

/// Body of the `frame` fuzz target (also run over generated inputs in the test suite): any
/// bytes either decode to a frame that re-encodes to the same bytes, or give a typed error.
pub fn fuzz_decode(data: &[u8]) {
    if let Ok(f) = decode(data, FRAME_BODY_MAX) {
        let again = f.encode();
        // Re-encoding is byte-exact for the part that was consumed.
        if data.get(..again.len()) != Some(&again[..]) {
            tracing::error!("frame re-encoding differs");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_bit_flip_is_caught() {
        let f = Frame::new(Kind::Request, 7, b"hello frames".to_vec());
        let b = f.encode();
        assert_eq!(decode(&b, FRAME_BODY_MAX), Ok(f));
        for bit in 0..b.len() * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&c, FRAME_BODY_MAX).is_err(), "bit {bit}");
        }
        for cut in 0..b.len() {
            assert!(decode(&b[..cut], FRAME_BODY_MAX).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let f = Frame::new(Kind::Response, 1, vec![0u8; 100]);
        let h = f.encode_header();
        assert_eq!(
            decode_header(&h, 99),
            Err(FrameError::TooLarge { len: 100, max: 99 })
        );
    }

    #[tokio::test]
    async fn stream_read_write() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let f = Frame::new(Kind::Error, 3, vec![9u8; 1000]);
        let g = f.clone();
        let w = tokio::spawn(async move { write_frame(&mut a, &g).await });
        assert_eq!(read_frame(&mut b, FRAME_BODY_MAX).await, Ok(f));
        w.await.unwrap().unwrap();
        assert_eq!(
            read_frame(&mut b, FRAME_BODY_MAX).await,
            Err(FrameError::Closed)
        );
    }
}
