//! The chunkserver: the chunk protocol server (pipelined chain writes, verified reads), the
//! heartbeat loop that reports replicas and carries out the master's tasks (delete, copy), and
//! the scrubber.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cairn_engine::chunk::{ChunkError, ChunkHandle, ChunkInfo, ChunkStore, ChunkStoreOptions};
use cairn_proto::chunk::{
    CHAIN_MAX, ChunkFailure, LocalChunkserver, LocalFuture, METHOD_READ, METHOD_WRITE,
    METHOD_WRITE_DATA, METHOD_WRITE_END, PIECE, RESET_CORRUPT, RESET_READ_FAILED, ReadHeader,
    ReadRequest, WriteAck, WriteEnd, WriteHeader, encode,
};
use cairn_proto::dataplane::{Heartbeat, HeartbeatRpc, Replica, ServerId, ServerInfo, Task};
use cairn_proto::frame::{self, Frame, Kind};
use cairn_proto::{
    Client, ClientOptions, Leader, NodeIdentity, Router, ServeOptions, TransportOptions,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// The store's name for a chunk the wire names (the same number).
fn stored(h: cairn_proto::ChunkHandle) -> ChunkHandle {
    ChunkHandle(h.0)
}

/// The wire's name for a chunk the store holds.
fn wire(h: ChunkHandle) -> cairn_proto::ChunkHandle {
    cairn_proto::ChunkHandle(h.0)
}

/// Heartbeats between two full replica reports.
const FULL_REPORT_EVERY: u64 = 300;
/// Longest a forward to the next replica may stall.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the rest of the chain to acknowledge after the last byte.
const ACK_TIMEOUT: Duration = Duration::from_secs(50);

/// How a chunkserver runs.
#[derive(Clone, Debug)]
pub struct ChunkserverOptions {
    pub listen: SocketAddr,
    pub masters: Vec<SocketAddr>,
    pub zone: Option<String>,
    pub heartbeat: Duration,
    /// Bytes per second the scrubber re-verifies (0 turns it off).
    pub scrub_rate: u64,
    pub store: ChunkStoreOptions,
}

impl Default for ChunkserverOptions {
    fn default() -> Self {
        ChunkserverOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            masters: Vec::new(),
            zone: None,
            heartbeat: Duration::from_secs(1),
            scrub_rate: 32 << 20,
            store: ChunkStoreOptions {
                // Writes are synced once, when the chunk is sealed, before the acknowledgement.
                sync: cairn_engine::chunk::SyncPolicy::Batch {
                    bytes_max: 64 << 20,
                },
                ..ChunkStoreOptions::default()
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Endpoint(#[from] cairn_proto::EndpointError),
    #[error("chunkserver id file {path}: {reason}")]
    Id { path: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

/// A running chunkserver.
#[derive(Clone)]
pub struct Chunkserver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Chunkserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunkserver")
            .field("id", &self.inner.id)
            .field("addr", &self.inner.addr)
            .finish()
    }
}

struct Inner {
    id: ServerId,
    addr: SocketAddr,
    store: ChunkStore,
    root: PathBuf,
    endpoint: quinn::Endpoint,
    peers: Client,
    master: Leader,
    options: ChunkserverOptions,
    load: AtomicU32,
    /// Replicas found corrupt (already deleted), for the next heartbeat.
    corrupt: Mutex<Vec<ChunkHandle>>,
    /// Copies that failed, for the next heartbeat.
    copies_failed: Mutex<Vec<ChunkHandle>>,
    /// Replicas to report again even if unchanged (a copy found the chunk already here: the
    /// master asked because its map lacks it).
    rereport: Mutex<Vec<ChunkHandle>>,
    /// Chunks being written or copied in (not reported until sealed; not scrubbed).
    busy: Mutex<HashSet<ChunkHandle>>,
    /// When the process started, and milliseconds after it when the last heartbeat call
    /// finished (answered or failed): a loop that stops finishing them is warned of.
    started: Instant,
    last_beat_ms: AtomicU64,
}

/// Counts a transfer in the server's load while alive.
/// Bytes one blocking read of a short-circuit (local) read takes at a time.
const LOCAL_PIECE: u64 = 4 << 20;

/// How a short-circuit read failed.
#[derive(Debug)]
struct LoadGuard<'a>(&'a AtomicU32);
impl<'a> LoadGuard<'a> {
    fn new(load: &'a AtomicU32) -> LoadGuard<'a> {
        load.fetch_add(1, Ordering::Relaxed);
        LoadGuard(load)
    }
}
impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Read or create the chunkserver's id (`DATA/chunkserver.id`, 16 hex digits).
fn server_id(data: &Path) -> Result<ServerId, StartError> {
    let path = data.join("chunkserver.id");
    let err = |reason: String| StartError::Id {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => u64::from_str_radix(s.trim(), 16).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id: u64 = rand::random::<u64>() | 1;
            let tmp = data.join("chunkserver.id.tmp");
            std::fs::write(&tmp, format!("{id:016x}\n")).map_err(|e| err(e.to_string()))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| err(e.to_string()))?;
            std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
            std::fs::File::open(data)
                .and_then(|d| d.sync_all())
                .map_err(|e| err(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn failure(server: &str, message: impl Into<String>) -> ChunkFailure {
    ChunkFailure {
        server: server.to_owned(),
        message: message.into(),
        corrupt: false,
    }
}

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
struct LocalWriter {
    tx: mpsc::Sender<Bytes>,
    done: tokio::task::JoinHandle<Result<u64, ChunkError>>,
}

impl LocalWriter {
    fn start(inner: &Arc<Inner>, handle: ChunkHandle) -> LocalWriter {
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

    async fn push(&self, piece: Bytes) -> bool {
        self.tx.send(piece).await.is_ok()
    }

    /// Wait for every append, then seal (fsync). Returns the chunk length.
    async fn finish(self, inner: &Arc<Inner>, handle: ChunkHandle) -> Result<u64, String> {
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

impl Chunkserver {
    /// Open the chunk store in `data`, serve the chunk protocol, and start heartbeats and the
    /// scrubber.
    pub async fn start(
        data: &Path,
        identity: &NodeIdentity,
        options: ChunkserverOptions,
    ) -> Result<Chunkserver, StartError> {
        std::fs::create_dir_all(data)
            .map_err(|e| StartError::Other(format!("create {}: {e}", data.display())))?;
        let id = server_id(data)?;
        let root = data.join("chunks");
        let store_options = options.store;
        let open_root = root.clone();
        let (store, report) =
            tokio::task::spawn_blocking(move || ChunkStore::open(open_root, store_options))
                .await
                .map_err(|e| StartError::Other(e.to_string()))??;
        if !report.is_clean() {
            tracing::warn!(
                truncated = report.truncated.len(),
                quarantined = report.quarantined.len(),
                "chunk store recovered damage"
            );
        }
        // An unsealed chunk is a write or copy that died with the previous process; its writer
        // was told the chain failed. Remove it.
        for info in store.list().into_iter().filter(|i| !i.sealed) {
            tracing::info!(chunk = %info.handle, "removing a chunk left unsealed by a crash");
            store.delete(info.handle)?;
        }
        let endpoint =
            cairn_proto::endpoint(options.listen, identity, &TransportOptions::default())?;
        let addr = endpoint
            .local_addr()
            .map_err(|e| StartError::Other(e.to_string()))?;
        let peers = Client::new(
            endpoint.clone(),
            ClientOptions {
                attempts: 2,
                attempt_timeout: Duration::from_secs(10),
                ..ClientOptions::default()
            },
        );
        let mut master = Leader::new(
            Client::new(
                endpoint.clone(),
                ClientOptions {
                    attempts: 2,
                    attempt_timeout: Duration::from_secs(5),
                    ..ClientOptions::default()
                },
            ),
            options.masters.clone(),
        );
        master.patience = options.heartbeat.max(Duration::from_secs(2));
        let inner = Arc::new(Inner {
            id,
            addr,
            store,
            root,
            endpoint: endpoint.clone(),
            peers,
            master,
            options,
            load: AtomicU32::new(0),
            corrupt: Mutex::new(Vec::new()),
            copies_failed: Mutex::new(Vec::new()),
            rereport: Mutex::new(Vec::new()),
            busy: Mutex::new(HashSet::new()),
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
        });
        let cs = Chunkserver { inner };
        tokio::spawn(cairn_proto::serve(
            endpoint,
            cs.routes(),
            ServeOptions::default(),
        ));
        let hb = cs.clone();
        let beats = tokio::spawn(async move { hb.heartbeats().await });
        let watch = cs.clone();
        tokio::spawn(async move { watch.watch_heartbeats(beats).await });
        if cs.inner.options.scrub_rate > 0 {
            let sc = cs.clone();
            tokio::spawn(async move { sc.scrub().await });
        }
        tracing::info!(id = format!("{id:016x}"), %addr, "chunkserver listening");
        Ok(cs)
    }

    pub fn id(&self) -> ServerId {
        self.inner.id
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn store(&self) -> &ChunkStore {
        &self.inner.store
    }

    /// Read `n` verified bytes at `offset` of a sealed chunk straight from this process's store
    /// (a data client's short-circuit read: no QUIC hop when the replica is local). The same
    /// checks as a remote read: sealed, not stale, in range; a corrupt block drops the replica.
    async fn read_local(
        &self,
        req: ReadRequest,
        out: &mut Vec<Bytes>,
        done: &mut u64,
    ) -> Result<(), ChunkFailure> {
        let header = self.read_header(req)?;
        if header.len != req.len {
            return Err(failure(
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
                    let mut f = failure(
                        &self.me(),
                        format!("block {block} of {} is corrupt", req.handle),
                    );
                    f.corrupt = true;
                    return Err(f);
                }
                Ok(Err(e)) => return Err(failure(&self.me(), e.to_string())),
                Err(e) => return Err(failure(&self.me(), e.to_string())),
            }
            offset += n;
        }
        Ok(())
    }

    /// Stop serving and sync the store.
    pub async fn shutdown(&self) {
        self.inner.endpoint.close(
            quinn::VarInt::from_u32(cairn_proto::rpc::CLOSE_SHUTDOWN),
            b"shutdown",
        );
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || inner.store.sync_all()).await;
    }

    fn routes(&self) -> Router {
        let (w, r) = (self.clone(), self.clone());
        Router::new()
            .route_stream(METHOD_WRITE, "chunk.write", move |body, send, recv| {
                let cs = w.clone();
                async move { cs.serve_write(body, send, recv).await }
            })
            .route_stream(METHOD_READ, "chunk.read", move |body, send, _recv| {
                let cs = r.clone();
                async move { cs.serve_read(body, send).await }
            })
    }

    fn me(&self) -> String {
        self.inner.addr.to_string()
    }

    async fn serve_write(
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
    async fn accept_write(
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
    async fn write_chain(
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

    async fn write_pieces(
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

    async fn serve_read(&self, body: Bytes, mut send: quinn::SendStream) {
        let _load = LoadGuard::new(&self.inner.load);
        let me = self.me();
        let header = match postcard::from_bytes::<ReadRequest>(&body) {
            Err(e) => Err(failure(&me, format!("bad read request: {e}"))),
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
            .map_err(|e| failure(&me, e.to_string()))?;
        if !info.sealed {
            return Err(failure(
                &me,
                format!("chunk {} is still being written", req.handle),
            ));
        }
        if info.version < req.version {
            return Err(failure(
                &me,
                format!(
                    "replica of {} is stale (version {} < {})",
                    req.handle, info.version, req.version
                ),
            ));
        }
        if req.offset > info.len {
            return Err(failure(
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

    /// Copy a sealed chunk from a peer, verifying its digest; the master learns of it from the
    /// next heartbeat.
    async fn copy_from(&self, handle: ChunkHandle, version: u64, from: &str) -> Result<(), String> {
        let _load = LoadGuard::new(&self.inner.load);
        if !self.inner.busy.lock().insert(handle) {
            return Err("the chunk is already being written here".into());
        }
        let result = self.copy_in(handle, version, from).await;
        self.inner.busy.lock().remove(&handle);
        result
    }

    async fn copy_in(&self, handle: ChunkHandle, version: u64, from: &str) -> Result<(), String> {
        if let Ok(info) = self.inner.store.stat(handle) {
            if info.sealed && info.version >= version {
                return Ok(());
            }
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || inner.store.delete(handle))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        let peer: SocketAddr = from.parse().map_err(|_| format!("bad address {from:?}"))?;
        let req = ReadRequest {
            handle: wire(handle),
            version,
            offset: 0,
            len: u64::MAX,
        };
        let (mut send, mut recv) = self
            .inner
            .peers
            .open_stream(peer, METHOD_READ, encode(&req))
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let f = match tokio::time::timeout(FORWARD_TIMEOUT, frame::read_frame(&mut recv, 1 << 20))
            .await
        {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                self.inner.peers.forget(peer);
                return Err(e.to_string());
            }
            Err(_) => {
                self.inner.peers.forget(peer);
                return Err(format!("{from} did not answer within {FORWARD_TIMEOUT:?}"));
            }
        };
        let header: Result<ReadHeader, ChunkFailure> =
            postcard::from_bytes(&f.body).map_err(|e| e.to_string())?;
        let header = header.map_err(|e| e.to_string())?;
        let digest = header
            .digest
            .ok_or_else(|| "the source sent no digest".to_string())?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.store.create(handle, header.version))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let result = self
            .copy_pieces(handle, header.len, digest, &mut recv)
            .await;
        if result.is_err() {
            self.inner.peers.forget(peer);
            let inner = self.inner.clone();
            let _ = tokio::task::spawn_blocking(move || inner.store.delete(handle)).await;
        }
        result
    }

    async fn copy_pieces(
        &self,
        handle: ChunkHandle,
        len: u64,
        digest: [u8; 32],
        recv: &mut quinn::RecvStream,
    ) -> Result<(), String> {
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
                .map_err(|_| format!("the source stalled for {FORWARD_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?;
                if got == 0 {
                    return Err("the source ended early".into());
                }
            }
            if !writer.push(buf.freeze()).await {
                break;
            }
            left -= n as u64;
        }
        let stored = writer.finish(&self.inner, handle).await?;
        if stored != len {
            return Err(format!("copied {stored} of {len} bytes"));
        }
        let ours = self.inner.store.digest(handle).map_err(|e| e.to_string())?;
        if ours != digest {
            return Err("the copy's BLAKE3 digest differs from the source's".into());
        }
        Ok(())
    }

    fn info(&self) -> ServerInfo {
        let (capacity, free) = match rustix::fs::statvfs(&self.inner.root) {
            Ok(s) => (
                s.f_blocks.saturating_mul(s.f_frsize),
                s.f_bavail.saturating_mul(s.f_frsize),
            ),
            Err(_) => (0, 0),
        };
        ServerInfo {
            id: self.inner.id,
            addr: self.me(),
            zone: self.inner.options.zone.clone(),
            capacity,
            free,
            load: self.inner.load.load(Ordering::Relaxed),
        }
    }

    /// The sealed chunks no transfer holds (a chunk being written or copied is neither
    /// reported nor scrubbed).
    fn settled(&self) -> Vec<ChunkInfo> {
        let busy = self.inner.busy.lock().clone();
        self.inner
            .store
            .list()
            .into_iter()
            .filter(|i| i.sealed && !busy.contains(&i.handle))
            .collect()
    }

    fn replicas(&self) -> HashMap<cairn_proto::ChunkHandle, Replica> {
        self.settled()
            .into_iter()
            .map(|i| {
                (
                    wire(i.handle),
                    Replica {
                        handle: wire(i.handle),
                        version: i.version,
                        len: i.len,
                        sealed: i.sealed,
                    },
                )
            })
            .collect()
    }

    fn since_start_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A chunkserver that serves chunks but no longer heartbeats is dead to the master while
    /// it looks alive to a supervisor. If the heartbeat loop panics, exit (status 70) so the
    /// supervisor restarts the process; if it stops finishing calls, say so every minute.
    async fn watch_heartbeats(&self, mut beats: tokio::task::JoinHandle<()>) {
        const STALL_MS: u64 = 30_000;
        let mut warned_at: Option<u64> = None;
        loop {
            tokio::select! {
                ended = &mut beats => {
                    if let Err(e) = ended
                        && e.is_panic()
                    {
                        tracing::error!(error = %e, "the heartbeat loop panicked; exiting so that the chunkserver is restarted");
                        std::process::exit(70);
                    }
                    return;
                }
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            let now = self.since_start_ms();
            let last = self.inner.last_beat_ms.load(Ordering::Relaxed);
            let stalled = now.saturating_sub(last);
            if stalled > STALL_MS && warned_at.is_none_or(|at| now.saturating_sub(at) >= 60_000) {
                warned_at = Some(now);
                tracing::warn!(
                    stalled_s = stalled / 1000,
                    "no heartbeat call has finished for a while (the masters unreachable, or the heartbeat loop stuck)"
                );
            }
        }
    }

    /// Report to the master group every interval and carry out what it answers.
    async fn heartbeats(&self) {
        let mut reported: Option<HashMap<cairn_proto::ChunkHandle, Replica>> = None;
        let mut beats: u64 = 0;
        // Heartbeats failed in a row: the first failure and every 20th after it are warned of.
        let mut failing: u64 = 0;
        loop {
            beats += 1;
            // A full report now and then repairs anything a lost reply left the master
            // believing (its map is soft state).
            if beats.is_multiple_of(FULL_REPORT_EVERY) {
                reported = None;
            }
            let mut now = self.replicas();
            let corrupt = std::mem::take(&mut *self.inner.corrupt.lock());
            let copies_failed = std::mem::take(&mut *self.inner.copies_failed.lock());
            // The master forgets a corrupt replica; if a fresh copy is here again by now, it
            // must be reported as new.
            let rereport = std::mem::take(&mut *self.inner.rereport.lock());
            if let Some(before) = reported.as_mut() {
                for h in corrupt.iter().chain(&rereport) {
                    before.remove(&wire(*h));
                }
            }
            let (full, replicas, removed) = match &reported {
                None => (true, now.values().copied().collect(), Vec::new()),
                Some(before) => (
                    false,
                    now.values()
                        .filter(|r| before.get(&r.handle) != Some(*r))
                        .copied()
                        .collect(),
                    before
                        .keys()
                        .filter(|h| !now.contains_key(h))
                        .copied()
                        .collect(),
                ),
            };
            let hb = Heartbeat {
                server: self.info(),
                full,
                replicas,
                removed,
                corrupt: corrupt.iter().copied().map(wire).collect(),
                copies_failed: copies_failed.iter().copied().map(wire).collect(),
            };
            let answer = self.inner.master.call::<HeartbeatRpc, _>(&hb).await;
            self.inner
                .last_beat_ms
                .store(self.since_start_ms(), Ordering::Relaxed);
            match answer {
                Ok(reply) => {
                    if failing > 0 {
                        tracing::info!(failed = failing, "heartbeats reach the leader again");
                    }
                    failing = 0;
                    // In order: deletions (quick) before copies, so a deletion never races a
                    // copy of the same chunk.
                    for task in reply.tasks {
                        if let Task::Delete { handle } = task {
                            // The master dropped it from its map when it planned this: a copy
                            // arriving later must be reported as new.
                            now.remove(&handle);
                            self.run_task(task).await;
                        } else {
                            let cs = self.clone();
                            tokio::spawn(async move { cs.run_task(task).await });
                        }
                    }
                    reported = if reply.full_report { None } else { Some(now) };
                    if reply.full_report {
                        continue;
                    }
                }
                Err(e) => {
                    if failing.is_multiple_of(20) {
                        tracing::warn!(error = %e, failed_in_a_row = failing + 1, "heartbeat failed");
                    } else {
                        tracing::debug!(error = %e, "heartbeat failed");
                    }
                    failing += 1;
                    self.inner.corrupt.lock().extend(corrupt);
                    self.inner.copies_failed.lock().extend(copies_failed);
                    reported = None;
                }
            }
            tokio::time::sleep(self.inner.options.heartbeat).await;
        }
    }

    async fn run_task(&self, task: Task) {
        match task {
            Task::Delete { handle } => {
                let handle = stored(handle);
                if self.inner.busy.lock().contains(&handle) {
                    return;
                }
                let inner = self.inner.clone();
                match tokio::task::spawn_blocking(move || inner.store.delete(handle)).await {
                    Ok(Ok(())) => tracing::info!(chunk = %handle, "replica deleted"),
                    Ok(Err(ChunkError::NotFound { .. })) => {}
                    Ok(Err(e)) => tracing::warn!(chunk = %handle, error = %e, "delete failed"),
                    Err(e) => tracing::warn!(chunk = %handle, error = %e, "delete failed"),
                }
            }
            Task::Copy {
                handle,
                version,
                from,
            } => match self.copy_from(stored(handle), version, &from).await {
                Ok(()) => {
                    tracing::info!(chunk = %handle, %from, "replica copied");
                    self.inner.rereport.lock().push(stored(handle));
                }
                Err(e) => {
                    tracing::warn!(chunk = %handle, %from, error = %e, "copy failed");
                    self.inner.copies_failed.lock().push(stored(handle));
                }
            },
        }
    }

    /// Re-verify every sealed chunk at the configured rate, forever.
    async fn scrub(&self) {
        let rate = self.inner.options.scrub_rate.max(1);
        loop {
            // Only sealed chunks that no transfer holds. A pass that finds none must still
            // sleep: this loop once spun without an await while the store held only chunks
            // being written, which pinned a runtime worker (and the timers that worker
            // owned, the heartbeat's among them) until the process was restarted.
            let chunks = self.settled();
            if chunks.is_empty() {
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            for info in chunks {
                if self.inner.busy.lock().contains(&info.handle) {
                    tokio::task::yield_now().await;
                    continue;
                }
                let inner = self.inner.clone();
                let handle = info.handle;
                match tokio::task::spawn_blocking(move || inner.store.verify(handle)).await {
                    Ok(Err(ChunkError::Corrupt { block, .. })) => {
                        tracing::error!(chunk = %handle, block, "scrubber found a corrupt block");
                        self.drop_corrupt(handle).await;
                    }
                    Ok(Err(ChunkError::NotFound { .. })) | Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(chunk = %handle, error = %e, "scrub read failed"),
                    Err(e) => tracing::warn!(error = %e, "scrub task failed"),
                }
                let pause = Duration::from_secs_f64(info.len as f64 / rate as f64);
                tokio::time::sleep(pause.max(Duration::from_millis(1))).await;
            }
        }
    }
}

/// A data client in this process reaches this chunkserver without QUIC: the same checks,
/// local write, forwarding and acknowledgement as a write arriving over a stream, with the
/// frames handed over on a channel instead of encrypted, sent and decrypted; reads come
/// straight from the store.
impl LocalChunkserver for Chunkserver {
    fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn write(
        &self,
        header: WriteHeader,
        mut frames: mpsc::Receiver<Frame>,
    ) -> LocalFuture<'static, Result<WriteAck, ChunkFailure>> {
        let cs = self.clone();
        Box::pin(async move { cs.accept_write(header, &mut frames).await })
    }

    fn read<'a>(
        &'a self,
        req: ReadRequest,
        out: &'a mut Vec<Bytes>,
        done: &'a mut u64,
    ) -> LocalFuture<'a, Result<(), ChunkFailure>> {
        Box::pin(self.read_local(req, out, done))
    }
}
