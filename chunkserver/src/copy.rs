//! Replica copies the master asks for: a sealed chunk read from a peer and checked against its
//! digest before it counts.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use cairn_engine::chunk::ChunkHandle;
use cairn_proto::chunk::{
    ChunkFailure, FailureKind, METHOD_READ, PIECE, REST_OF_CHUNK, ReadHeader, ReadRequest, encode,
};
use cairn_proto::frame::{self};

use crate::server::{Chunkserver, LoadGuard, refused, store_failure, unavailable, wire};
use crate::write::{FORWARD_TIMEOUT, LocalWriter};

impl Chunkserver {
    /// Copy a sealed chunk from a peer, verifying its digest; the master learns of it from the
    /// next heartbeat.
    pub(crate) async fn copy_from(
        &self,
        handle: ChunkHandle,
        version: u64,
        from: &str,
    ) -> Result<(), ChunkFailure> {
        let _load = LoadGuard::new(&self.inner.load);
        if !self.inner.busy.lock().insert(handle) {
            return Err(refused(
                &self.me(),
                "the chunk is already being written here",
            ));
        }
        let result = self.copy_in(handle, version, from).await;
        self.inner.busy.lock().remove(&handle);
        result
    }

    pub(crate) async fn copy_in(
        &self,
        handle: ChunkHandle,
        version: u64,
        from: &str,
    ) -> Result<(), ChunkFailure> {
        let me = self.me();
        if let Ok(info) = self.inner.store.stat(handle) {
            if info.sealed && info.version >= version {
                return Ok(());
            }
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || inner.store.delete(handle))
                .await
                .map_err(|e| unavailable(&me, e.to_string()))?
                .map_err(|e| store_failure(&me, &e))?;
        }
        let peer: SocketAddr = from
            .parse()
            .map_err(|_| refused(&me, format!("bad address {from:?}")))?;
        let req = ReadRequest {
            handle: wire(handle),
            version,
            offset: 0,
            len: REST_OF_CHUNK,
        };
        let (mut send, mut recv) = self
            .inner
            .peers
            .open_stream(peer, METHOD_READ, encode(&req))
            .await
            .map_err(|e| unavailable(from, e.to_string()))?;
        let _ = send.finish();
        let f = match tokio::time::timeout(FORWARD_TIMEOUT, frame::read_frame(&mut recv, 1 << 20))
            .await
        {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                self.inner.peers.forget(peer);
                return Err(unavailable(from, e.to_string()));
            }
            Err(_) => {
                self.inner.peers.forget(peer);
                return Err(unavailable(
                    from,
                    format!("no answer within {FORWARD_TIMEOUT:?}"),
                ));
            }
        };
        let header: Result<ReadHeader, ChunkFailure> = postcard::from_bytes(&f.body)
            .map_err(|e| unavailable(from, format!("bad read header: {e}")))?;
        let header = header?;
        let digest = header
            .digest
            .ok_or_else(|| unavailable(from, "the source sent no digest"))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.store.create(handle, header.version))
            .await
            .map_err(|e| unavailable(&me, e.to_string()))?
            .map_err(|e| store_failure(&me, &e))?;
        let result = self
            .copy_pieces(handle, header.len, digest, from, &mut recv)
            .await;
        if result.is_err() {
            self.inner.peers.forget(peer);
            let inner = self.inner.clone();
            let _ = tokio::task::spawn_blocking(move || inner.store.delete(handle)).await;
        }
        result
    }

    /// How long to wait before copying `bytes` more: at the busy rate while clients read or
    /// write here (chain writes and span reads; copies in or out are not foreground), else
    /// at the idle rate.
    fn pace(&self, bytes: u64) -> std::time::Duration {
        let rates = self.inner.options.copy_rates;
        let rate = if self.inner.foreground.load(Ordering::Relaxed) > 0 {
            rates.busy
        } else {
            rates.idle
        };
        self.inner
            .pacer
            .lock()
            .book(std::time::Instant::now(), bytes, rate)
    }

    pub(crate) async fn copy_pieces(
        &self,
        handle: ChunkHandle,
        len: u64,
        digest: [u8; 32],
        from: &str,
        recv: &mut quinn::RecvStream,
    ) -> Result<(), ChunkFailure> {
        let me = self.me();
        let writer = LocalWriter::start(&self.inner, handle);
        let mut left = len;
        while left > 0 {
            let n = left.min(PIECE as u64) as usize;
            let mut buf = BytesMut::with_capacity(n);
            while buf.len() < n {
                let want = (n - buf.len()) as u64;
                let got = tokio::time::timeout(
                    FORWARD_TIMEOUT,
                    tokio::io::AsyncReadExt::read_buf(
                        &mut tokio::io::AsyncReadExt::take(&mut *recv, want),
                        &mut buf,
                    ),
                )
                .await
                .map_err(|_| unavailable(from, format!("stalled for {FORWARD_TIMEOUT:?}")))?
                .map_err(|e| unavailable(from, e.to_string()))?;
                if got == 0 {
                    return Err(unavailable(from, "the source ended early"));
                }
            }
            let wait = self.pace(n as u64);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if !writer.push(buf.freeze()).await {
                break;
            }
            left -= n as u64;
        }
        let stored = writer.finish(&self.inner, handle, &me).await?;
        if stored != len {
            return Err(unavailable(&me, format!("copied {stored} of {len} bytes")));
        }
        let ours = self
            .inner
            .store
            .digest(handle)
            .map_err(|e| store_failure(&me, &e))?;
        if ours != digest {
            // The bytes arrived intact (every block checked) but are not the source's.
            return Err(ChunkFailure::new(
                from,
                FailureKind::Corrupt,
                "the copy's BLAKE3 digest differs from the source's",
            ));
        }
        Ok(())
    }
}
