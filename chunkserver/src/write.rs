//! Chain writes: a chunk arrives piece by piece (over QUIC, or on a channel from a writer in
//! this process), is written locally while forwarded down the rest of the chain, and is
//! acknowledged once every replica below has synced it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_engine::chunk::{ChunkError, ChunkHandle};
use cairn_proto::chunk::{
    CHAIN_MAX, ChunkFailure, METHOD_WRITE, METHOD_WRITE_DATA, METHOD_WRITE_END, PIECE, WriteAck,
    WriteEnd, WriteHeader, encode,
};
use cairn_proto::frame::{self, Frame, Kind};
use tokio::sync::mpsc;

use crate::server::{Chunkserver, Inner, LoadGuard, failure, stored};

/// Where a chain write's frames come from: the writer's QUIC stream, or (for a writer in this
/// process, the short-circuit head of a chain) a channel.
pub(crate) trait FrameSource {
    async fn next_frame(&mut self, max_body: u32) -> Result<Frame, String>;
}

impl FrameSource for quinn::RecvStream {
    async fn next_frame(&mut self, max_body: u32) -> Result<Frame, String> {
        frame::read_frame(self, max_body)
            .await
            .map_err(|e| e.to_string())
    }
}

impl FrameSource for mpsc::Receiver<Frame> {
    async fn next_frame(&mut self, max_body: u32) -> Result<Frame, String> {
        match self.recv().await {
            Some(f) if f.body.len() > max_body as usize => Err(format!(
                "frame body of {} bytes over the {max_body}-byte limit",
                f.body.len()
            )),
            Some(f) => Ok(f),
            None => Err("the writer went away".into()),
        }
    }
}

/// Appends pieces to a new local chunk on a blocking thread, then seals it (which fsyncs).
/// Dropping the sender without `finish` leaves the chunk unsealed (the caller deletes it).
pub(crate) struct LocalWriter {
    tx: mpsc::Sender<Bytes>,
    done: tokio::task::JoinHandle<Result<u64, ChunkError>>,
}

impl LocalWriter {
    pub(crate) fn start(inner: &Arc<Inner>, handle: ChunkHandle) -> LocalWriter {
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let inner = inner.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut len = 0;
            while let Some(piece) = rx.blocking_recv() {
                len = inner.store.append(handle, &piece)?.len;
            }
            Ok(len)
        });
        LocalWriter { tx, done }
    }

    pub(crate) async fn push(&self, piece: Bytes) -> bool {
        self.tx.send(piece).await.is_ok()
    }

    /// Wait for every append, then seal (fsync). Returns the chunk length.
    pub(crate) async fn finish(
        self,
        inner: &Arc<Inner>,
        handle: ChunkHandle,
    ) -> Result<u64, String> {
        drop(self.tx);
        let len = self
            .done
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let store = inner.clone();
        tokio::task::spawn_blocking(move || store.store.seal(handle))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(len)
    }
}

/// Longest a forward to the next replica may stall.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for the rest of the chain to acknowledge after the last byte.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(50);

impl Chunkserver {
    pub(crate) async fn serve_write(
        &self,
        body: Bytes,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let result = match postcard::from_bytes::<WriteHeader>(&body) {
            Err(e) => Err(failure(&self.me(), format!("bad write header: {e}"))),
            Ok(h) => self.accept_write(h, &mut recv).await,
        };
        if result.is_err() {
            let _ = recv.stop(quinn::VarInt::from_u32(1));
        }
        let reply = Frame::new(Kind::Response, METHOD_WRITE, encode(&result));
        if frame::write_frame(&mut send, &reply).await.is_ok() {
            let _ = send.finish();
            let _ = send.stopped().await;
        }
    }

    /// One chain write, refused if the chunk is already being written.
    pub(crate) async fn accept_write(
        &self,
        h: WriteHeader,
        recv: &mut impl FrameSource,
    ) -> Result<WriteAck, ChunkFailure> {
        let _load = LoadGuard::new(&self.inner.load);
        let handle = stored(h.handle);
        let result = if !self.inner.busy.lock().insert(handle) {
            Err(failure(
                &self.me(),
                format!("chunk {handle} is already being written"),
            ))
        } else {
            let r = self.write_chain(h, recv).await;
            self.inner.busy.lock().remove(&handle);
            r
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "chunk write failed");
        }
        result
    }

    /// Receive a chunk, writing it locally while forwarding it down the chain.
    pub(crate) async fn write_chain(
        &self,
        h: WriteHeader,
        recv: &mut impl FrameSource,
    ) -> Result<WriteAck, ChunkFailure> {
        let me = self.me();
        if h.chain.len() >= CHAIN_MAX {
            return Err(failure(&me, format!("chain longer than {CHAIN_MAX}")));
        }
        let handle = stored(h.handle);
        let inner = self.inner.clone();
        let version = h.version;
        tokio::task::spawn_blocking(move || inner.store.create(handle, version))
            .await
            .map_err(|e| failure(&me, e.to_string()))?
            .map_err(|e| failure(&me, e.to_string()))?;
        let result = self.write_pieces(&h, recv).await;
        if let Err(e) = &result
            && let Ok(peer) = e.server.parse::<SocketAddr>()
            && peer != self.inner.addr
        {
            self.inner.peers.forget(peer);
        }
        if result.is_err() {
            let inner = self.inner.clone();
            let _ = tokio::task::spawn_blocking(move || inner.store.delete(handle)).await;
        }
        result
    }

    pub(crate) async fn write_pieces(
        &self,
        h: &WriteHeader,
        recv: &mut impl FrameSource,
    ) -> Result<WriteAck, ChunkFailure> {
        let me = self.me();
        // The next replica, if any: open its stream first so a dead peer fails fast.
        let mut next = match h.chain.first() {
            None => None,
            Some(addr) => {
                let peer: SocketAddr = addr
                    .parse()
                    .map_err(|_| failure(&me, format!("bad chain address {addr:?}")))?;
                let header = WriteHeader {
                    handle: h.handle,
                    version: h.version,
                    chain: h.chain[1..].to_vec(),
                };
                let (send, recv) = self
                    .inner
                    .peers
                    .open_stream(peer, METHOD_WRITE, encode(&header))
                    .await
                    .map_err(|e| failure(addr, e.to_string()))?;
                Some((addr.clone(), send, recv))
            }
        };
        let writer = LocalWriter::start(&self.inner, stored(h.handle));
        let size_max = self.inner.store.options().chunk_size_max;
        let mut received: u64 = 0;
        let end = loop {
            let f = recv
                .next_frame((PIECE + 64) as u32)
                .await
                .map_err(|e| failure(&me, format!("reading from the writer: {e}")))?;
            match (f.kind, f.method) {
                (Kind::Request, METHOD_WRITE_DATA) => {
                    received += f.body.len() as u64;
                    if received > size_max {
                        return Err(failure(&me, format!("chunk exceeds {size_max} bytes")));
                    }
                    if let Some((addr, send, _)) = next.as_mut() {
                        tokio::time::timeout(FORWARD_TIMEOUT, frame::write_frame_quic(send, &f))
                            .await
                            .map_err(|_| failure(addr, "forwarding stalled"))?
                            .map_err(|e| failure(addr, format!("forwarding: {e}")))?;
                    }
                    if !writer.push(f.body).await {
                        break None;
                    }
                }
                (Kind::Request, METHOD_WRITE_END) => {
                    let end: WriteEnd = postcard::from_bytes(&f.body)
                        .map_err(|e| failure(&me, format!("bad write end: {e}")))?;
                    if let Some((addr, send, _)) = next.as_mut() {
                        frame::write_frame_quic(send, &f)
                            .await
                            .map_err(|e| failure(addr, format!("forwarding: {e}")))?;
                        let _ = send.finish();
                    }
                    break Some(end);
                }
                (kind, method) => {
                    return Err(failure(
                        &me,
                        format!("unexpected {kind:?} frame {method} in a write"),
                    ));
                }
            }
        };
        let len = writer
            .finish(&self.inner, stored(h.handle))
            .await
            .map_err(|e| failure(&me, e))?;
        let Some(end) = end else {
            return Err(failure(&me, "local writer stopped"));
        };
        if end.len != received || len != received {
            return Err(failure(
                &me,
                format!(
                    "length mismatch: writer sent {}, received {received}, stored {len}",
                    end.len
                ),
            ));
        }
        let mut stored_on = vec![me.clone()];
        if let Some((addr, _, mut down)) = next {
            let f = tokio::time::timeout(ACK_TIMEOUT, frame::read_frame(&mut down, 1 << 20))
                .await
                .map_err(|_| failure(&addr, "no acknowledgement in time"))?
                .map_err(|e| failure(&addr, format!("waiting for the acknowledgement: {e}")))?;
            let ack: Result<WriteAck, ChunkFailure> = postcard::from_bytes(&f.body)
                .map_err(|e| failure(&addr, format!("bad acknowledgement: {e}")))?;
            stored_on.extend(ack?.stored_on);
        }
        Ok(WriteAck { stored_on, len })
    }
}
