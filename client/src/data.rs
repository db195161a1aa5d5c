//! The data client: streams objects into chunks through replication chains and reads them back
//! from live replicas, failing over on errors. Memory per transfer is bounded: a write keeps at
//! most the chunk being written (to resend it on a fresh chain), a read one piece.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cairn_engine::state::Rejection;
use cairn_proto::chain::{check_complete, data_frame, end_frame, read_ack};
use cairn_proto::chunk::{
    ChunkFailure, ChunkHandle, FailureKind, LocalChunkserver, METHOD_READ, METHOD_WRITE, PIECE,
    RESET_CORRUPT, ReadHeader, ReadRequest, WriteAck, WriteHeader, encode,
};
use cairn_proto::dataplane::{
    AllocateRequest, AllocateRpc, Allocation, BadReplica, BadReplicaRpc, DataRepairRpc, DataStatus,
    DataStatusRpc, Extent, LOCATE_MAX, LocateRpc, Location, RepairProgress, ServerId,
};
use cairn_proto::frame::{self, Frame};
use cairn_proto::{Client, ClientOptions, ProposeError};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::master::MasterClient;

/// Fresh chains tried for one chunk before a write gives up.
const CHAIN_ATTEMPTS: usize = 4;
/// Bytes one read stream fetches at a time.
const READ_SPAN: u64 = 8 << 20;
/// Read streams one `read` keeps going.
const READ_PARALLEL: usize = 4;
/// Rounds of (locate, try every replica) before a read gives up.
const READ_ROUNDS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("master: {0}")]
    Master(#[from] ProposeError),
    /// Every chain tried for a chunk failed; `kind` is the last failure's.
    #[error("writing chunk {chunk}: every chain failed; last: {last}")]
    Write {
        chunk: String,
        last: String,
        kind: FailureKind,
    },
    /// No replica of a chunk could serve the read; `kind` is the last failure's.
    #[error("reading chunk {chunk}: no replica could serve it; last: {last}")]
    Read {
        chunk: String,
        last: String,
        kind: FailureKind,
    },
    #[error("reading the source: {0}")]
    Source(std::io::Error),
    #[error("writing the output: {0}")]
    Sink(std::io::Error),
    #[error("range {offset}+{len} is outside the object's {size} bytes")]
    Range { offset: u64, len: u64, size: u64 },
    /// The master group refused the commit.
    #[error("refused: {0}")]
    Rejected(Rejection),
    #[error("transfer task failed: {0}")]
    Task(String),
}

/// An object's bytes as stored: what `put` returns and `commit` records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub extents: Vec<Extent>,
}

/// Client of the data plane: chunks written through replication chains, read from replicas.
#[derive(Clone, Debug)]
pub struct DataClient {
    master: MasterClient,
    /// Chunkserver connections: one attempt with a short limit, since another replica or a
    /// fresh chain is the retry.
    peers: Client,
    /// Chunkservers that failed recently, tried last until the master stops listing them.
    suspects: Arc<Mutex<HashMap<String, Instant>>>,
    /// Replicas per chunk; the cluster default when `None`.
    pub replication: Option<u8>,
    /// Chunkservers in this process: their replicas are read straight from their stores.
    local: Vec<Arc<dyn LocalChunkserver>>,
}

/// Longest wait for a chain's acknowledgement after the last byte (every replica syncs).
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failed chunkserver is tried last.
const SUSPECT_FOR: Duration = Duration::from_secs(10);
/// Longest wait for a chunkserver to start answering or to send the next bytes.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// A chunk whose data has been read from the source and streamed into a chain.
struct StreamedChunk {
    /// The chain, if it took every piece; `None` if it broke (the pieces are resent).
    chain: Option<ChainWrite>,
    kept: Vec<Bytes>,
    /// Bytes read past this chunk's end.
    carry: Option<Bytes>,
    at_end: bool,
}

fn extent(alloc: &Allocation, ack: &WriteAck) -> Extent {
    Extent {
        handle: alloc.handle,
        offset: 0,
        len: ack.len,
    }
}

async fn join(
    task: tokio::task::JoinHandle<Result<Extent, DataError>>,
) -> Result<Extent, DataError> {
    task.await.map_err(|e| DataError::Task(e.to_string()))?
}

/// Where `DataClient::read_into` delivers an object's bytes, in order.
pub trait ChunkSink {
    fn emit(&mut self, bytes: Bytes) -> impl std::future::Future<Output = std::io::Result<()>>;
}

/// A [`ChunkSink`] over any `AsyncWrite` (a copy per buffer).
#[derive(Debug)]
pub struct WriteSink<'a, W>(pub &'a mut W);

impl<W: AsyncWrite + Unpin> ChunkSink for WriteSink<'_, W> {
    async fn emit(&mut self, bytes: Bytes) -> std::io::Result<()> {
        self.0.write_all(&bytes).await
    }
}

/// A [`ChunkSink`] that passes the buffers on (no copy); a closed receiver is an error.
impl ChunkSink for tokio::sync::mpsc::Sender<Bytes> {
    async fn emit(&mut self, bytes: Bytes) -> std::io::Result<()> {
        self.send(bytes)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader went away"))
    }
}

/// The buffers of one read span.
type Pieces = Vec<Bytes>;

/// Why one chain attempt failed.
struct ChainError {
    /// The chunkserver to avoid next time, if known.
    server: Option<String>,
    message: String,
    kind: FailureKind,
}

impl From<ChunkFailure> for ChainError {
    fn from(f: ChunkFailure) -> ChainError {
        ChainError {
            server: Some(f.server),
            message: f.message,
            kind: f.kind,
        }
    }
}

/// Read up to `PIECE` bytes from `source` (fewer only at the end).
async fn read_piece(source: &mut (impl AsyncRead + Unpin)) -> Result<Bytes, DataError> {
    let mut buf = BytesMut::with_capacity(PIECE);
    while buf.len() < PIECE {
        let want = (PIECE - buf.len()) as u64;
        let n = (&mut *source)
            .take(want)
            .read_buf(&mut buf)
            .await
            .map_err(DataError::Source)?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

/// One chain write in progress.
struct ChainWrite {
    alloc: Allocation,
    link: Link,
    sent: u64,
}

/// How a chain write reaches its first replica.
enum Link {
    /// A QUIC stream to a chunkserver elsewhere.
    Quic {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
    /// A chunkserver in this process (the short-circuit head of the chain, as a local read
    /// is): frames go over a bounded channel to its write task, which stores them and
    /// forwards them down the rest of the chain over QUIC as usual. The hop that costs no
    /// encryption, no packets and no copies into the kernel.
    Local {
        frames: tokio::sync::mpsc::Sender<Frame>,
        ack: tokio::task::JoinHandle<Result<WriteAck, ChunkFailure>>,
    },
}

/// The first replica's answer, once its write task ends (local link).
async fn local_ack(
    ack: &mut tokio::task::JoinHandle<Result<WriteAck, ChunkFailure>>,
    wait: Duration,
) -> Result<Result<WriteAck, ChunkFailure>, String> {
    match tokio::time::timeout(wait, ack).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("local chunkserver write task: {e}")),
        Err(_) => Err("no acknowledgement in time".into()),
    }
}

impl DataClient {
    /// A client on `master`'s endpoint (the same QUIC socket and certificate).
    pub fn new(master: MasterClient, endpoint: quinn::Endpoint) -> DataClient {
        let peers = Client::new(
            endpoint,
            ClientOptions {
                attempts: 1,
                attempt_timeout: PEER_TIMEOUT,
                ..ClientOptions::default()
            },
        );
        DataClient {
            master,
            peers,
            suspects: Arc::new(Mutex::new(HashMap::new())),
            replication: None,
            local: Vec::new(),
        }
    }

    /// Try `addr` last for a while, and reconnect to it next time (a stalled connection may
    /// belong to a peer that restarted).
    fn suspect(&self, addr: &str) {
        if let Ok(a) = addr.parse::<SocketAddr>() {
            self.peers.forget(a);
        }
        self.suspects.lock().insert(addr.to_owned(), Instant::now());
    }

    /// Replicas in the master's order, recently failed ones last.
    fn ordered(&self, replicas: &[(ServerId, String)]) -> Vec<(ServerId, String)> {
        let mut suspects = self.suspects.lock();
        suspects.retain(|_, at| at.elapsed() < SUSPECT_FOR);
        let (mut good, bad): (Vec<_>, Vec<_>) = replicas
            .iter()
            .cloned()
            .partition(|(_, a)| !suspects.contains_key(a));
        good.extend(bad);
        good
    }

    /// Read replicas held by `cs` (a chunkserver in this process) from its store directly,
    /// without a QUIC round trip (a short-circuit read, as HDFS does for local replicas).
    pub fn with_local(mut self, cs: impl LocalChunkserver + 'static) -> DataClient {
        self.local.push(Arc::new(cs));
        self
    }

    pub fn master(&self) -> &MasterClient {
        &self.master
    }

    /// The data plane as the master leader sees it.
    pub async fn status(&self) -> Result<DataStatus, DataError> {
        Ok(self.master.call_leader::<DataStatusRpc, _>(&()).await?)
    }

    /// Repair progress as the master leader sees it.
    pub async fn repair(&self) -> Result<RepairProgress, DataError> {
        Ok(self.master.call_leader::<DataRepairRpc, _>(&()).await?)
    }

    async fn allocate(&self, exclude: &BTreeSet<ServerId>) -> Result<Allocation, DataError> {
        let req = AllocateRequest {
            replication: self.replication,
            exclude: exclude.iter().copied().collect(),
        };
        Ok(self.master.call_leader::<AllocateRpc, _>(&req).await?)
    }

    async fn open_chain(
        &self,
        mut alloc: Allocation,
    ) -> Result<ChainWrite, (Allocation, ChainError)> {
        // A replica in this process goes first: its hop is then a channel, not a QUIC stream.
        // Order within a chain is free (every replica stores the same bytes and acknowledges).
        if let Some(i) = alloc
            .chain
            .iter()
            .position(|(_, a)| self.local_server(a).is_some())
            && i > 0
        {
            let head = alloc.chain.remove(i);
            alloc.chain.insert(0, head);
        }
        let Some((_, first)) = alloc.chain.first().cloned() else {
            return Err((
                alloc,
                ChainError {
                    server: None,
                    message: "empty chain".into(),
                    kind: FailureKind::Rejected,
                },
            ));
        };
        let fail = |alloc, message: String| {
            Err((
                alloc,
                ChainError {
                    server: Some(first.clone()),
                    message,
                    kind: FailureKind::Unavailable,
                },
            ))
        };
        let addr: SocketAddr = match first.parse() {
            Ok(a) => a,
            Err(_) => return fail(alloc, format!("bad address {first:?}")),
        };
        let header = WriteHeader {
            handle: alloc.handle,
            version: alloc.version,
            chain: alloc.chain[1..].iter().map(|(_, a)| a.clone()).collect(),
        };
        if let Some(cs) = self.local_server(&first) {
            let (frames, rx) = tokio::sync::mpsc::channel(4);
            let cs = cs.clone();
            let ack = tokio::spawn(async move { cs.write(header, rx).await });
            return Ok(ChainWrite {
                alloc,
                link: Link::Local { frames, ack },
                sent: 0,
            });
        }
        match self
            .peers
            .open_stream(addr, METHOD_WRITE, encode(&header))
            .await
        {
            Ok((send, recv)) => Ok(ChainWrite {
                alloc,
                link: Link::Quic { send, recv },
                sent: 0,
            }),
            Err(e) => fail(alloc, e.to_string()),
        }
    }

    /// The chunkserver in this process at `addr`, if any.
    fn local_server(&self, addr: &str) -> Option<&Arc<dyn LocalChunkserver>> {
        let addr: SocketAddr = addr.parse().ok()?;
        self.local.iter().find(|cs| cs.addr() == addr)
    }

    /// Where a broken chain write failed: the acknowledgement names the replica when one
    /// answered, otherwise blame the first.
    async fn chain_failure(w: &mut ChainWrite, cause: String) -> ChainError {
        let first = w.alloc.chain.first().map(|(_, a)| a.clone());
        let first_addr = first.clone().unwrap_or_default();
        let answer = match &mut w.link {
            Link::Quic { recv, .. } => {
                match tokio::time::timeout(Duration::from_secs(5), frame::read_frame(recv, 1 << 20))
                    .await
                {
                    Ok(Ok(f)) => Some(read_ack(&first_addr, &f.body)),
                    Ok(Err(_)) | Err(_) => None,
                }
            }
            Link::Local { ack, .. } => local_ack(ack, Duration::from_secs(5)).await.ok(),
        };
        match answer {
            Some(Err(fail)) => fail.into(),
            _ => ChainError {
                server: first,
                message: cause,
                kind: FailureKind::Unavailable,
            },
        }
    }

    async fn send_piece(w: &mut ChainWrite, piece: &Bytes) -> Result<(), ChainError> {
        let f = data_frame(piece.clone());
        let stalled = || format!("stalled for {PEER_TIMEOUT:?}");
        let sent = match &mut w.link {
            Link::Quic { send, .. } => {
                tokio::time::timeout(PEER_TIMEOUT, frame::write_frame_quic(send, &f))
                    .await
                    .map_err(|_| stalled())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Link::Local { frames, .. } => tokio::time::timeout(PEER_TIMEOUT, frames.send(f))
                .await
                .map_err(|_| stalled())
                .and_then(|r| r.map_err(|_| "the local chunkserver stopped the write".into())),
        };
        if let Err(e) = sent {
            return Err(Self::chain_failure(w, e).await);
        }
        w.sent += piece.len() as u64;
        Ok(())
    }

    async fn end_chain(
        mut w: ChainWrite,
    ) -> Result<(Allocation, WriteAck), (Allocation, ChainError)> {
        let end = end_frame(w.sent);
        let ended = match &mut w.link {
            Link::Quic { send, .. } => frame::write_frame(send, &end)
                .await
                .map_err(|e| e.to_string()),
            Link::Local { frames, .. } => frames
                .send(end)
                .await
                .map_err(|_| "the local chunkserver stopped the write".into()),
        };
        if let Err(e) = ended {
            let err = Self::chain_failure(&mut w, e).await;
            return Err((w.alloc, err));
        }
        let first = w.alloc.chain.first().map(|(_, a)| a.clone());
        let answer = match w.link {
            Link::Quic {
                mut send, mut recv, ..
            } => {
                let _ = send.finish();
                match tokio::time::timeout(ACK_TIMEOUT, frame::read_frame(&mut recv, 1 << 20)).await
                {
                    Ok(Ok(f)) => Ok(read_ack(first.as_deref().unwrap_or_default(), &f.body)),
                    Ok(Err(e)) => Err(format!("no acknowledgement: {e}")),
                    Err(_) => Err("no acknowledgement: none in time".into()),
                }
            }
            Link::Local { frames, mut ack } => {
                drop(frames);
                local_ack(&mut ack, ACK_TIMEOUT)
                    .await
                    .map_err(|e| format!("no acknowledgement: {e}"))
            }
        };
        match answer {
            Ok(Ok(ack)) => match check_complete(&ack, w.alloc.chain.len(), w.sent) {
                Ok(()) => Ok((w.alloc, ack)),
                Err(message) => Err((
                    w.alloc,
                    ChainError {
                        server: None,
                        message,
                        kind: FailureKind::Unavailable,
                    },
                )),
            },
            Ok(Err(fail)) => Err((w.alloc, fail.into())),
            Err(message) => Err((
                w.alloc,
                ChainError {
                    server: first,
                    message,
                    kind: FailureKind::Unavailable,
                },
            )),
        }
    }

    /// Stream one chunk's worth of data from `source` (starting with `first`) into a fresh chain
    /// as it is read, keeping the pieces. If the chain breaks, the rest of the chunk is still
    /// read (and kept) so [`DataClient::finish_chunk`] can resend it. Returns the chain (if it
    /// is still whole and has been sent everything), the kept pieces, the bytes read past the
    /// chunk's end, and whether the source ended.
    async fn stream_chunk(
        &self,
        first: Bytes,
        source: &mut (impl AsyncRead + Unpin),
        exclude: &mut BTreeSet<ServerId>,
    ) -> Result<StreamedChunk, DataError> {
        let alloc = self.allocate(exclude).await?;
        let size_max = alloc.size_max.max(1);
        let mut chain = match self.open_chain(alloc).await {
            Ok(w) => Some(w),
            Err((alloc, e)) => {
                self.exclude(&alloc, &e, exclude);
                None
            }
        };
        let mut kept: Vec<Bytes> = Vec::new();
        let mut kept_len: u64 = 0;
        let mut pending = Some(first);
        let mut carry = None;
        let mut at_end = false;
        while kept_len < size_max {
            let piece = match pending.take() {
                Some(p) => p,
                None => {
                    let p = read_piece(source).await?;
                    if p.is_empty() {
                        at_end = true;
                        break;
                    }
                    p
                }
            };
            // A piece never straddles two chunks.
            let room = size_max - kept_len;
            let now = if piece.len() as u64 > room {
                carry = Some(piece.slice(room as usize..));
                piece.slice(..room as usize)
            } else {
                piece
            };
            kept_len += now.len() as u64;
            kept.push(now.clone());
            if let Some(w) = chain.as_mut()
                && let Err(e) = Self::send_piece(w, &now).await
            {
                self.exclude(&w.alloc, &e, exclude);
                chain = None;
            }
        }
        Ok(StreamedChunk {
            chain,
            kept,
            carry,
            at_end,
        })
    }

    /// Wait for a streamed chunk's acknowledgement; if its chain broke, resend the kept pieces
    /// on fresh chains (the broken chunk is abandoned and becomes garbage).
    async fn finish_chunk(
        &self,
        chain: Option<ChainWrite>,
        kept: Vec<Bytes>,
        mut exclude: BTreeSet<ServerId>,
    ) -> Result<Extent, DataError> {
        let mut last = String::from("the chain broke while streaming");
        let mut kind = FailureKind::Unavailable;
        let mut handle = String::new();
        if let Some(w) = chain {
            handle = w.alloc.handle.to_string();
            match Self::end_chain(w).await {
                Ok((alloc, ack)) => return Ok(extent(&alloc, &ack)),
                Err((alloc, e)) => {
                    self.exclude(&alloc, &e, &mut exclude);
                    last = e.message;
                    kind = e.kind;
                }
            }
        }
        for _ in 1..CHAIN_ATTEMPTS {
            let alloc = self.allocate(&exclude).await?;
            handle = alloc.handle.to_string();
            let mut w = match self.open_chain(alloc).await {
                Ok(w) => w,
                Err((alloc, e)) => {
                    self.exclude(&alloc, &e, &mut exclude);
                    last = e.message;
                    kind = e.kind;
                    continue;
                }
            };
            let mut failed = None;
            for piece in &kept {
                if let Err(e) = Self::send_piece(&mut w, piece).await {
                    failed = Some(e);
                    break;
                }
            }
            let result = match failed {
                None => Self::end_chain(w).await,
                Some(e) => Err((w.alloc, e)),
            };
            match result {
                Ok((alloc, ack)) => return Ok(extent(&alloc, &ack)),
                Err((alloc, e)) => {
                    self.exclude(&alloc, &e, &mut exclude);
                    last = e.message;
                    kind = e.kind;
                }
            }
        }
        Err(DataError::Write {
            chunk: handle,
            last,
            kind,
        })
    }

    /// Store everything `source` yields; returns its size and extents once every replica of
    /// every chunk has acknowledged. Nothing is visible until the caller commits the extents
    /// (a bucket version, an image). No digest is taken here: a caller that wants one hashes
    /// the stream it hands over (the image store takes BLAKE3, S3 its MD5 and checksums).
    ///
    /// While one chunk's replicas sync and acknowledge, the next chunk is already streaming: at
    /// most two chunks are held in memory.
    pub async fn put(&self, source: &mut (impl AsyncRead + Unpin)) -> Result<Written, DataError> {
        let mut extents = Vec::new();
        let mut carry: Option<Bytes> = None;
        let mut exclude = BTreeSet::new();
        let mut acking: Option<tokio::task::JoinHandle<Result<Extent, DataError>>> = None;
        loop {
            let first = match carry.take() {
                Some(b) => b,
                None => {
                    let p = read_piece(source).await?;
                    if p.is_empty() {
                        break;
                    }
                    p
                }
            };
            let streamed = self.stream_chunk(first, source, &mut exclude).await?;
            if let Some(previous) = acking.take() {
                extents.push(join(previous).await?);
            }
            let client = self.clone();
            let excluded = exclude.clone();
            acking = Some(tokio::spawn(async move {
                client
                    .finish_chunk(streamed.chain, streamed.kept, excluded)
                    .await
            }));
            carry = streamed.carry;
            if streamed.at_end && carry.is_none() {
                break;
            }
        }
        if let Some(previous) = acking.take() {
            extents.push(join(previous).await?);
        }
        Ok(Written {
            size: extents.iter().map(|e| e.len).sum(),
            extents,
        })
    }

    async fn locate(&self, handles: Vec<ChunkHandle>) -> Result<Vec<Location>, DataError> {
        Ok(self.master.call_leader::<LocateRpc, _>(&handles).await?)
    }

    /// Stream `len` bytes at `offset` of the object made of `extents` into `out`.
    pub async fn read(
        &self,
        extents: &[Extent],
        offset: u64,
        len: u64,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<u64, DataError> {
        let mut sink = WriteSink(out);
        let n = self.read_into(extents, offset, len, &mut sink).await?;
        sink.0.flush().await.map_err(DataError::Sink)?;
        Ok(n)
    }

    /// Stream `len` bytes at `offset` of the object made of `extents` into `sink`, in order, as
    /// the byte buffers the replicas produced (no copy: local replicas hand out mapped chunk
    /// pages, remote ones QUIC's receive buffers).
    pub async fn read_into(
        &self,
        extents: &[Extent],
        offset: u64,
        len: u64,
        sink: &mut impl ChunkSink,
    ) -> Result<u64, DataError> {
        let size: u64 = extents.iter().map(|e| e.len).sum();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(DataError::Range { offset, len, size });
        }
        // The pieces of the wanted range, extent by extent.
        let mut segments = Vec::new();
        let mut at = 0u64;
        for e in extents {
            let (start, end) = (at, at + e.len);
            at = end;
            let lo = offset.max(start);
            let hi = (offset + len).min(end);
            if lo < hi {
                segments.push((e.handle, e.offset + (lo - start), hi - lo));
            }
        }
        let mut handles: Vec<ChunkHandle> = segments.iter().map(|s| s.0).collect();
        handles.sort_unstable();
        handles.dedup();
        let mut locations = std::collections::HashMap::new();
        for batch in handles.chunks(LOCATE_MAX) {
            for loc in self.locate(batch.to_vec()).await? {
                locations.insert(loc.handle, loc);
            }
        }
        // Pieces of at most READ_SPAN bytes, READ_PARALLEL fetched at once (each on its own
        // stream), written out in order: memory stays under READ_PARALLEL × READ_SPAN.
        let mut spans = std::collections::VecDeque::new();
        for (handle, off, n) in segments {
            let mut at = 0;
            while at < n {
                let len = (n - at).min(READ_SPAN);
                spans.push_back((handle, off + at, len));
                at += len;
            }
        }
        let mut running = std::collections::VecDeque::new();
        loop {
            while running.len() < READ_PARALLEL
                && let Some((handle, off, n)) = spans.pop_front()
            {
                let loc = locations.get(&handle).cloned().unwrap_or(Location {
                    handle,
                    version: 0,
                    replicas: Vec::new(),
                });
                let client = self.clone();
                running.push_back(tokio::spawn(async move {
                    let mut buf = Pieces::new();
                    client
                        .read_segment(loc, off, n, &mut buf)
                        .await
                        .map(|()| buf)
                }));
            }
            let Some(next) = running.pop_front() else {
                break;
            };
            let pieces = next.await.map_err(|e| DataError::Task(e.to_string()))??;
            for b in pieces {
                sink.emit(b).await.map_err(DataError::Sink)?;
            }
        }
        Ok(len)
    }

    async fn read_segment(
        &self,
        mut loc: Location,
        off: u64,
        n: u64,
        out: &mut Pieces,
    ) -> Result<(), DataError> {
        let mut done = 0u64;
        let mut last = "no live replica".to_string();
        let mut kind = FailureKind::NotFound;
        for round in 0..READ_ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(250 * round as u64)).await;
                if let Some(l) = self.locate(vec![loc.handle]).await?.into_iter().next() {
                    loc = l;
                }
            }
            for (server, addr) in &self.ordered(&loc.replicas) {
                match self
                    .read_from(addr, &loc, off + done, n - done, out, &mut done)
                    .await
                {
                    Ok(()) => return Ok(()),
                    Err(f) => {
                        tracing::warn!(chunk = %loc.handle, %addr, kind = ?f.kind, error = %f.message, "replica read failed; trying another");
                        if f.kind == FailureKind::Corrupt {
                            let bad = BadReplica {
                                handle: loc.handle,
                                server: *server,
                                reason: f.message.clone(),
                            };
                            let _ = self.master.call_leader::<BadReplicaRpc, _>(&bad).await;
                        } else {
                            self.suspect(addr);
                        }
                        last = f.to_string();
                        kind = f.kind;
                    }
                }
            }
        }
        Err(DataError::Read {
            chunk: loc.handle.to_string(),
            last,
            kind,
        })
    }

    async fn read_from(
        &self,
        addr: &str,
        loc: &Location,
        off: u64,
        n: u64,
        out: &mut Pieces,
        done: &mut u64,
    ) -> Result<(), ChunkFailure> {
        let replica = |message: String| ChunkFailure::new(addr, FailureKind::Unavailable, message);
        let peer: SocketAddr = addr
            .parse()
            .map_err(|_| replica(format!("bad address {addr:?}")))?;
        let req = ReadRequest {
            handle: loc.handle,
            version: loc.version,
            offset: off,
            len: n,
        };
        if let Some(cs) = self.local.iter().find(|cs| cs.addr() == peer) {
            return cs.read(req, out, done).await;
        }
        let (mut send, mut recv) = self
            .peers
            .open_stream(peer, METHOD_READ, encode(&req))
            .await
            .map_err(|e| replica(e.to_string()))?;
        let _ = send.finish();
        let f = tokio::time::timeout(PEER_TIMEOUT, frame::read_frame(&mut recv, 1 << 20))
            .await
            .map_err(|_| replica(format!("no answer within {PEER_TIMEOUT:?}")))?
            .map_err(|e| replica(e.to_string()))?;
        let header: Result<ReadHeader, ChunkFailure> =
            postcard::from_bytes(&f.body).map_err(|e| replica(e.to_string()))?;
        let header = header?;
        if header.len != n {
            return Err(ChunkFailure::new(
                addr,
                FailureKind::NotFound,
                format!(
                    "replica holds {} bytes of the range, {n} wanted",
                    header.len
                ),
            ));
        }
        let mut left = n;
        while left > 0 {
            let next = tokio::time::timeout(PEER_TIMEOUT, recv.read_chunk(PIECE, true))
                .await
                .map_err(|_| replica(format!("stalled for {PEER_TIMEOUT:?}")))?;
            match next {
                Ok(Some(chunk)) => {
                    let take = (chunk.bytes.len() as u64).min(left) as usize;
                    out.push(chunk.bytes.slice(..take));
                    left -= take as u64;
                    *done += take as u64;
                }
                Ok(None) => return Err(replica("stream ended early".into())),
                Err(quinn::ReadError::Reset(code)) => {
                    let kind = if code == quinn::VarInt::from_u32(RESET_CORRUPT) {
                        FailureKind::Corrupt
                    } else {
                        FailureKind::Unavailable
                    };
                    return Err(ChunkFailure::new(
                        addr,
                        kind,
                        format!("replica stopped the read (code {code})"),
                    ));
                }
                Err(e) => return Err(replica(e.to_string())),
            }
        }
        Ok(())
    }

    fn exclude(&self, alloc: &Allocation, e: &ChainError, exclude: &mut BTreeSet<ServerId>) {
        if let Some(addr) = &e.server {
            self.suspect(addr);
        }
        tracing::warn!(chunk = %alloc.handle, server = ?e.server, error = %e.message, "chain write failed; abandoning the chunk");
        if let Some(addr) = &e.server
            && let Some((id, _)) = alloc.chain.iter().find(|(_, a)| a == addr)
        {
            exclude.insert(*id);
        }
    }
}
