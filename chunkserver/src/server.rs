//! The chunkserver: the chunk protocol server (pipelined chain writes, verified reads), the
//! heartbeat loop that reports replicas and carries out the master's tasks (delete, copy), and
//! the scrubber.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_engine::chunk::{ChunkError, ChunkHandle, ChunkStore, ChunkStoreOptions};
use cairn_proto::chunk::{
    ChunkFailure, FailureKind, LocalChunkserver, LocalFuture, METHOD_READ, METHOD_WRITE,
    ReadRequest, WriteAck, WriteHeader,
};
use cairn_proto::dataplane::ServerId;
use cairn_proto::frame::Frame;
use cairn_proto::{
    Client, ClientOptions, Leader, NodeIdentity, Router, ServeOptions, TransportOptions,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// The store's name for a chunk the wire names (the same number).
pub(crate) fn stored(h: cairn_proto::ChunkHandle) -> ChunkHandle {
    ChunkHandle(h.0)
}

/// The wire's name for a chunk the store holds.
pub(crate) fn wire(h: ChunkHandle) -> cairn_proto::ChunkHandle {
    cairn_proto::ChunkHandle(h.0)
}

/// How a chunkserver runs.
#[derive(Clone, Debug)]
pub struct ChunkserverOptions {
    pub listen: SocketAddr,
    pub masters: Vec<SocketAddr>,
    pub zone: Option<String>,
    pub heartbeat: Duration,
    /// Bytes per second the scrubber re-verifies (0 turns it off).
    pub scrub_rate: u64,
    /// How fast replica copies into this server may go.
    pub copy_rates: crate::pace::CopyRates,
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
            copy_rates: crate::pace::CopyRates::default(),
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

/// How long the start-up trust check waits for each master's handshake.
const TRUST_CHECK_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Endpoint(#[from] cairn_proto::EndpointError),
    #[error("chunkserver id file {path}: {reason}")]
    Id { path: PathBuf, reason: String },
    /// The masters and this node do not trust each other's certificates.
    #[error("cannot join the cluster: {0}")]
    Untrusted(cairn_proto::RpcError),
    #[error("{0}")]
    Other(String),
}

/// A running chunkserver.
#[derive(Clone)]
pub struct Chunkserver {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Chunkserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunkserver")
            .field("id", &self.inner.id)
            .field("addr", &self.inner.addr)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) id: ServerId,
    pub(crate) addr: SocketAddr,
    pub(crate) store: ChunkStore,
    pub(crate) root: PathBuf,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) peers: Client,
    pub(crate) master: Leader,
    pub(crate) options: ChunkserverOptions,
    pub(crate) load: AtomicU32,
    /// Client transfers running here (chain writes, reads of a span): while there are any,
    /// copies into this server go at the busy rate.
    pub(crate) foreground: AtomicU32,
    /// The newest master term a heartbeat reply carried (fencing: instructions from an older
    /// term are refused).
    pub(crate) term: std::sync::atomic::AtomicU64,
    /// Copies running now: while there are any, heartbeats go every `BUSY_BEAT` so finished
    /// copies are reported and new ones picked up without waiting a whole interval.
    pub(crate) copies_running: AtomicU32,
    /// The schedule copies into this server are paced by.
    pub(crate) pacer: Mutex<crate::pace::Pacer>,
    /// Wakes the heartbeat loop (a copy finished: report it now).
    pub(crate) wake: tokio::sync::Notify,
    /// Replicas found corrupt (already deleted), for the next heartbeat.
    pub(crate) corrupt: Mutex<Vec<ChunkHandle>>,
    /// Copies that failed, for the next heartbeat.
    pub(crate) copies_failed: Mutex<Vec<ChunkHandle>>,
    /// Replicas to report again even if unchanged (a copy found the chunk already here: the
    /// master asked because its map lacks it).
    pub(crate) rereport: Mutex<Vec<ChunkHandle>>,
    /// Chunks being written or copied in (not reported until sealed; not scrubbed).
    pub(crate) busy: Mutex<HashSet<ChunkHandle>>,
    /// When the process started, and milliseconds after it when the last heartbeat call
    /// finished (answered or failed): a loop that stops finishing them is warned of.
    pub(crate) started: Instant,
    pub(crate) last_beat_ms: AtomicU64,
}

/// How a short-circuit read failed.
#[derive(Debug)]
pub(crate) struct LoadGuard<'a>(&'a AtomicU32);

impl<'a> LoadGuard<'a> {
    pub(crate) fn new(load: &'a AtomicU32) -> LoadGuard<'a> {
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
pub(crate) fn server_id(data: &Path) -> Result<ServerId, StartError> {
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

/// The server (or the path to it) failed: another replica may do.
pub(crate) fn unavailable(server: &str, message: impl Into<String>) -> ChunkFailure {
    ChunkFailure::new(server, FailureKind::Unavailable, message)
}

/// The request was refused: any server would refuse it.
pub(crate) fn refused(server: &str, message: impl Into<String>) -> ChunkFailure {
    ChunkFailure::new(server, FailureKind::Rejected, message)
}

/// The replica cannot serve this: absent, unsealed, stale, or the range is past its end.
pub(crate) fn missing(server: &str, message: impl Into<String>) -> ChunkFailure {
    ChunkFailure::new(server, FailureKind::NotFound, message)
}

/// A local chunk store error as the failure it is.
pub(crate) fn store_failure(server: &str, e: &ChunkError) -> ChunkFailure {
    let kind = match e {
        ChunkError::NotFound { .. } | ChunkError::OutOfRange { .. } => FailureKind::NotFound,
        ChunkError::Corrupt { .. } => FailureKind::Corrupt,
        ChunkError::AlreadyExists { .. }
        | ChunkError::ChunkFull { .. }
        | ChunkError::Sealed { .. } => FailureKind::Rejected,
        _ => FailureKind::Unavailable,
    };
    ChunkFailure::new(server, kind, e.to_string())
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
        // A certificate from another cluster's CA is an operator's mistake: say so and stop,
        // rather than retry for ever.
        master
            .client()
            .check_trust(&options.masters, TRUST_CHECK_WAIT)
            .await
            .map_err(StartError::Untrusted)?;
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
            foreground: AtomicU32::new(0),
            term: std::sync::atomic::AtomicU64::new(0),
            copies_running: AtomicU32::new(0),
            pacer: Mutex::new(crate::pace::Pacer::default()),
            wake: tokio::sync::Notify::new(),
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

    /// Stop serving and sync the store.
    pub async fn shutdown(&self) {
        self.inner.endpoint.close(
            quinn::VarInt::from_u32(cairn_proto::rpc::CLOSE_SHUTDOWN),
            b"shutdown",
        );
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || inner.store.sync_all()).await;
    }

    pub(crate) fn routes(&self) -> Router {
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

    pub(crate) fn me(&self) -> String {
        self.inner.addr.to_string()
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
