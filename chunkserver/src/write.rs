//! Chain writes: a chunk arrives piece by piece (over QUIC, or on a channel from a writer in
//! this process), is written locally while forwarded down the rest of the chain, and is
//! acknowledged once every replica below has synced it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_engine::chunk::{ChunkError, ChunkHandle};
use cairn_proto::chain::{Receiver, Step, acknowledge, next_hop, read_ack};
use cairn_proto::chunk::{ChunkFailure, METHOD_WRITE, PIECE, WriteAck, WriteHeader, encode};
use cairn_proto::frame::{self, Frame, Kind};
use tokio::sync::mpsc;

use crate::server::{Chunkserver, Inner, LoadGuard, refused, store_failure, stored, unavailable};

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

    /// Wait for every append, then seal (fsync). Returns the chunk length; a failure is this
    /// server's (`me`).
    pub(crate) async fn finish(
        self,
        inner: &Arc<Inner>,
        handle: ChunkHandle,
        me: &str,
    ) -> Result<u64, ChunkFailure> {
        drop(self.tx);
        let len = self
            .done
            .await
            .map_err(|e| unavailable(me, e.to_string()))?
            .map_err(|e| store_failure(me, &e))?;
        let store = inner.clone();
        tokio::task::spawn_blocking(move || store.store.seal(handle))
            .await
            .map_err(|e| unavailable(me, e.to_string()))?
            .map_err(|e| store_failure(me, &e))?;
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
            Err(e) => Err(refused(&self.me(), format!("bad write header: {e}"))),
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
        let _foreground = LoadGuard::new(&self.inner.foreground);
        let handle = stored(h.handle);
        let result = if !self.inner.busy.lock().insert(handle) {
            Err(refused(
                &self.me(),
                format!("chunk {handle} is already being written"),
            ))
        } else {
            let r = self.write_chain(h, recv).await;
            self.inner.busy.lock().remove(&handle);
            r
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, kind = ?e.kind, "chunk write failed");
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
        let receiver = Receiver::new(&me, &h, self.inner.store.options().chunk_size_max)?;
        let handle = stored(h.handle);
        let inner = self.inner.clone();
        let version = h.version;
        tokio::task::spawn_blocking(move || inner.store.create(handle, version))
            .await
            .map_err(|e| unavailable(&me, e.to_string()))?
            .map_err(|e| store_failure(&me, &e))?;
        let result = self.write_pieces(&h, receiver, recv).await;
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

    /// The I/O around [`Receiver`]: frames from above, the local replica, the next replica.
    pub(crate) async fn write_pieces(
        &self,
        h: &WriteHeader,
        mut receiver: Receiver,
        recv: &mut impl FrameSource,
    ) -> Result<WriteAck, ChunkFailure> {
        let me = self.me();
        // The next replica, if any: open its stream first so a dead peer fails fast.
        let mut next = match next_hop(h) {
            None => None,
            Some((addr, header)) => {
                let peer: SocketAddr = addr
                    .parse()
                    .map_err(|_| refused(&me, format!("bad chain address {addr:?}")))?;
                let (send, recv) = self
                    .inner
                    .peers
                    .open_stream(peer, METHOD_WRITE, encode(&header))
                    .await
                    .map_err(|e| unavailable(addr, e.to_string()))?;
                Some((addr.to_owned(), send, recv))
            }
        };
        let writer = LocalWriter::start(&self.inner, stored(h.handle));
        let end = loop {
            let f = recv
                .next_frame((PIECE + 64) as u32)
                .await
                .map_err(|e| unavailable(&me, format!("reading from the writer: {e}")))?;
            let step = receiver.frame(&f)?;
            if let Some((addr, send, _)) = next.as_mut() {
                tokio::time::timeout(FORWARD_TIMEOUT, frame::write_frame_quic(send, &f))
                    .await
                    .map_err(|_| unavailable(addr, "forwarding stalled"))?
                    .map_err(|e| unavailable(addr, format!("forwarding: {e}")))?;
            }
            match step {
                Step::Data => {
                    if !writer.push(f.body).await {
                        break None;
                    }
                }
                Step::End(end) => {
                    if let Some((_, send, _)) = next.as_mut() {
                        let _ = send.finish();
                    }
                    break Some(end);
                }
            }
        };
        let len = writer.finish(&self.inner, stored(h.handle), &me).await?;
        let Some(end) = end else {
            return Err(unavailable(&me, "local writer stopped"));
        };
        receiver.check_end(&end, len)?;
        let below = match next {
            None => None,
            Some((addr, _, mut down)) => {
                let f = tokio::time::timeout(ACK_TIMEOUT, frame::read_frame(&mut down, 1 << 20))
                    .await
                    .map_err(|_| unavailable(&addr, "no acknowledgement in time"))?
                    .map_err(|e| {
                        unavailable(&addr, format!("waiting for the acknowledgement: {e}"))
                    })?;
                Some(read_ack(&addr, &f.body)?)
            }
        };
        Ok(acknowledge(me, len, below))
    }
}
