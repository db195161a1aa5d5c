//! The chunk protocol: stream methods on the cluster's mutual-TLS QUIC endpoint.
//!
//! Write (method 300), one stream per chunk, through a replication chain:
//! ```text
//! writer → cs1: Request frame  WriteHeader { handle, version, chain: [cs2, cs3] }
//!               Request frames method 310, one per piece of data (≤ 1 MiB, CRC-checked)
//!               Request frame  method 311, WriteEnd { len }
//!          cs1 → cs2 the same, with chain [cs3], forwarded piece by piece while cs1 writes
//! cs3 → cs2 → cs1 → writer: Response frame Result<WriteAck, ChunkFailure> once every replica
//!               down the chain has fsynced and sealed the chunk
//! ```
//! Read (method 301): Request frame ReadRequest; Response frame Result<ReadHeader, ChunkFailure>,
//! then exactly `len` raw bytes. A block that fails its checksum mid-stream resets the stream with
//! [`RESET_CORRUPT`] (the replica is dropped and reported; the reader fails over).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::frame::Frame;

/// Identifies a chunk cluster-wide; allocated by the master. The chunkserver stores it under
/// the same number in its local store (`cairn_engine::chunk::ChunkHandle` names the file; the
/// engine knows nothing of the wire, so the two crates each own their id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkHandle(pub u64);

impl fmt::Display for ChunkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A protocol message as a frame body. The messages are plain structs, which postcard always
/// encodes.
pub fn encode<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(postcard::to_stdvec(v).unwrap_or_default())
}

pub const METHOD_WRITE: u16 = 300;
pub const METHOD_READ: u16 = 301;
pub const METHOD_WRITE_DATA: u16 = 310;
pub const METHOD_WRITE_END: u16 = 311;
/// Size of the pieces data travels in.
pub const PIECE: usize = 1 << 20;
/// Stream reset code: the replica failed a checksum.
pub const RESET_CORRUPT: u32 = 0x43;
/// Stream reset code: the server failed to read its replica for another reason.
pub const RESET_READ_FAILED: u32 = 0x44;
/// Longest replication chain accepted.
pub const CHAIN_MAX: usize = 7;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteHeader {
    pub handle: ChunkHandle,
    pub version: u64,
    /// The replicas after the receiving one, in order (QUIC addresses).
    pub chain: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteEnd {
    /// Bytes sent in the data frames (a cross-check against lost frames).
    pub len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAck {
    /// Every replica that stored and synced the chunk, in chain order.
    pub stored_on: Vec<String>,
    pub len: u64,
}

/// What kind of failure a chunk operation met, which decides what the caller does next.
///
/// On the wire this takes the place of the `corrupt: bool` of earlier releases, with the same
/// encoding for its first two variants (postcard writes a bool and a variant index alike), so
/// old and new peers understand each other's `Unavailable` and `Corrupt`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The server, its disk or the path to it failed (I/O, a timeout, a dead peer): try
    /// another replica or another chain, and suspect the server a while.
    #[default]
    Unavailable,
    /// The replica's data failed its checksum: it is dropped and reported to the master.
    Corrupt,
    /// The server holds no such chunk, or not in a state that can serve this (unsealed,
    /// stale, a range past its end).
    NotFound,
    /// The request itself was refused (malformed, too large, a chain too long, a chunk
    /// already being written): another server would refuse it too.
    Rejected,
}

/// Why a chunk operation failed, at which replica, and of what kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{server}: {message}")]
pub struct ChunkFailure {
    /// The chunkserver that failed (its address).
    pub server: String,
    pub message: String,
    pub kind: FailureKind,
}

impl ChunkFailure {
    pub fn new(server: &str, kind: FailureKind, message: impl Into<String>) -> ChunkFailure {
        ChunkFailure {
            server: server.to_owned(),
            message: message.into(),
            kind,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub handle: ChunkHandle,
    /// The version the reader expects (older replicas are stale and refuse).
    pub version: u64,
    pub offset: u64,
    /// Bytes wanted; [`REST_OF_CHUNK`] for the rest of the chunk.
    pub len: u64,
}

/// `ReadRequest::len` for "the rest of the chunk": what a replica copy asks for (from offset
/// 0). Data clients always ask for a span, so a chunkserver tells copies from client reads by
/// it (copies are paced; client reads are the foreground they yield to).
pub const REST_OF_CHUNK: u64 = u64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadHeader {
    /// Raw bytes that follow.
    pub len: u64,
    pub chunk_len: u64,
    pub version: u64,
    /// BLAKE3 of the whole chunk, when the whole sealed chunk is read (copies verify it).
    pub digest: Option<[u8; 32]>,
}

/// A boxed future, for the [`LocalChunkserver`] methods (object-safe).
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A chunkserver in the data client's own process, reached without a QUIC hop: the
/// short-circuit head of a write chain (frames on a channel instead of encrypted packets) and
/// short-circuit reads straight from its store (as HDFS does for local replicas). The same
/// checks as over QUIC: a chunkserver implements this, a data client holds it as a trait
/// object, and neither crate depends on the other.
pub trait LocalChunkserver: Send + Sync + fmt::Debug {
    /// Its QUIC address for the chunk protocol (how chains and locations name it).
    fn addr(&self) -> SocketAddr;

    /// A chain write whose first replica is this server: the frames a writer would send on a
    /// write stream (data pieces, then the end), answered as the stream would be.
    fn write(
        &self,
        header: WriteHeader,
        frames: tokio::sync::mpsc::Receiver<Frame>,
    ) -> LocalFuture<'static, Result<WriteAck, ChunkFailure>>;

    /// Read the range `req` names from this server's replica, appending the buffers to `out`
    /// and counting the bytes in `done` as they arrive (a failure part way keeps what was read).
    fn read<'a>(
        &'a self,
        req: ReadRequest,
        out: &'a mut Vec<Bytes>,
        done: &'a mut u64,
    ) -> LocalFuture<'a, Result<(), ChunkFailure>>;
}
