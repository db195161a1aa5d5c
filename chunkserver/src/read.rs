//! Verified reads: over QUIC (a header, then the bytes; a corrupt block resets the stream) and
//! straight from the store for a reader in this process.

use bytes::Bytes;
use cairn_engine::chunk::{ChunkError, ChunkHandle};
use cairn_proto::chunk::{
    ChunkFailure, FailureKind, METHOD_READ, PIECE, RESET_CORRUPT, RESET_READ_FAILED, REST_OF_CHUNK,
    ReadHeader, ReadRequest, encode,
};
use cairn_proto::frame::{self, Frame, Kind};

use crate::server::{Chunkserver, LoadGuard, missing, refused, store_failure, stored, unavailable};

/// Counts a transfer in the server's load while alive.
/// Bytes one blocking read of a short-circuit (local) read takes at a time.
pub(crate) const LOCAL_PIECE: u64 = 4 << 20;

impl Chunkserver {
    /// Read `n` verified bytes at `offset` of a sealed chunk straight from this process's store
    /// (a data client's short-circuit read: no QUIC hop when the replica is local). The same
    /// checks as a remote read: sealed, not stale, in range; a corrupt block drops the replica.
    pub(crate) async fn read_local(
        &self,
        req: ReadRequest,
        out: &mut Vec<Bytes>,
        done: &mut u64,
    ) -> Result<(), ChunkFailure> {
        let header = self.read_header(req)?;
        let _foreground = LoadGuard::new(&self.inner.foreground);
        if header.len != req.len {
            return Err(missing(
                &self.me(),
                format!(
                    "replica holds {} bytes of the range, {} wanted",
                    header.len, req.len
                ),
            ));
        }
        let mut offset = req.offset;
        let end = req.offset + header.len;
        while offset < end {
            let n = (end - offset).min(LOCAL_PIECE);
            let inner = self.inner.clone();
            let piece = {
                let _load = LoadGuard::new(&self.inner.load);
                tokio::task::spawn_blocking(move || inner.store.read(stored(req.handle), offset, n))
                    .await
            };
            match piece {
                Ok(Ok(bytes)) => {
                    out.push(bytes);
                    *done += n;
                }
                Ok(Err(ChunkError::Corrupt { block, .. })) => {
                    tracing::error!(chunk = %req.handle, block, "corrupt block found while reading");
                    self.drop_corrupt(stored(req.handle)).await;
                    return Err(ChunkFailure::new(
                        &self.me(),
                        FailureKind::Corrupt,
                        format!("block {block} of {} is corrupt", req.handle),
                    ));
                }
                Ok(Err(e)) => return Err(store_failure(&self.me(), &e)),
                Err(e) => return Err(unavailable(&self.me(), e.to_string())),
            }
            offset += n;
        }
        Ok(())
    }

    pub(crate) async fn serve_read(&self, body: Bytes, mut send: quinn::SendStream) {
        let _load = LoadGuard::new(&self.inner.load);
        let me = self.me();
        let header = match postcard::from_bytes::<ReadRequest>(&body) {
            Err(e) => Err(refused(&me, format!("bad read request: {e}"))),
            Ok(req) => self.read_header(req).map(|h| (req, h)),
        };
        let reply = Frame::new(
            Kind::Response,
            METHOD_READ,
            encode(&header.as_ref().map(|(_, h)| *h).map_err(Clone::clone)),
        );
        if frame::write_frame(&mut send, &reply).await.is_err() {
            return;
        }
        let Ok((req, h)) = header else {
            let _ = send.finish();
            return;
        };
        // A span is a client's read; the rest of a chunk, a replica copy's.
        let _foreground =
            (req.len != REST_OF_CHUNK).then(|| LoadGuard::new(&self.inner.foreground));
        let mut offset = req.offset;
        let end = req.offset + h.len;
        while offset < end {
            let n = (end - offset).min(PIECE as u64);
            let inner = self.inner.clone();
            let piece = tokio::task::spawn_blocking(move || {
                inner.store.read(stored(req.handle), offset, n)
            })
            .await;
            match piece {
                Ok(Ok(bytes)) => {
                    if send.write_chunk(bytes).await.is_err() {
                        return;
                    }
                }
                Ok(Err(ChunkError::Corrupt { block, .. })) => {
                    tracing::error!(chunk = %req.handle, block, "corrupt block found while reading");
                    let _ = send.reset(quinn::VarInt::from_u32(RESET_CORRUPT));
                    self.drop_corrupt(stored(req.handle)).await;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(chunk = %req.handle, error = %e, "read failed");
                    let _ = send.reset(quinn::VarInt::from_u32(RESET_READ_FAILED));
                    return;
                }
                Err(_) => {
                    let _ = send.reset(quinn::VarInt::from_u32(RESET_READ_FAILED));
                    return;
                }
            }
            offset += n;
        }
        let _ = send.finish();
        let _ = send.stopped().await;
    }

    pub(crate) fn read_header(&self, req: ReadRequest) -> Result<ReadHeader, ChunkFailure> {
        let me = self.me();
        let info = self
            .inner
            .store
            .stat(stored(req.handle))
            .map_err(|e| store_failure(&me, &e))?;
        if !info.sealed {
            return Err(missing(
                &me,
                format!("chunk {} is still being written", req.handle),
            ));
        }
        if info.version < req.version {
            return Err(missing(
                &me,
                format!(
                    "replica of {} is stale (version {} < {})",
                    req.handle, info.version, req.version
                ),
            ));
        }
        if req.offset > info.len {
            return Err(missing(
                &me,
                format!(
                    "offset {} is past the chunk's {} bytes",
                    req.offset, info.len
                ),
            ));
        }
        let len = req.len.min(info.len - req.offset);
        let digest = if req.offset == 0 && len == info.len {
            self.inner.store.digest(stored(req.handle)).ok()
        } else {
            None
        };
        Ok(ReadHeader {
            len,
            chunk_len: info.len,
            version: info.version,
            digest,
        })
    }

    /// A replica failed its checksums: delete it (never serve it again) and report it.
    pub(crate) async fn drop_corrupt(&self, handle: ChunkHandle) {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || inner.store.delete(handle)).await {
            Ok(Ok(())) | Ok(Err(ChunkError::NotFound { .. })) => {}
            Ok(Err(e)) => {
                tracing::error!(chunk = %handle, error = %e, "cannot delete a corrupt replica")
            }
            Err(e) => {
                tracing::error!(chunk = %handle, error = %e, "cannot delete a corrupt replica")
            }
        }
        self.inner.corrupt.lock().push(handle);
    }
}
