//! The chunk store: append-only, checksummed chunk files in one directory tree.
//!
//! A chunk is a byte sequence of at most `chunk_size_max` bytes (64 MiB by default) identified
//! by a [`ChunkHandle`]. Every 64 KiB block carries a CRC-32C that is verified on every read;
//! a BLAKE3 digest of the content is computed while writing. See `format` for the layout and
//! `recovery` for what happens to a chunk file after a crash.

pub mod format;
mod recovery;
mod store;

use std::fmt;
use std::path::PathBuf;

pub use recovery::{QuarantinedFile, RecoveryReport, TruncatedChunk};
pub use store::{AppendOutcome, ChunkInfo, ChunkStore};

/// Identifies a chunk cluster-wide; allocated by the master.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ChunkHandle(pub u64);

impl fmt::Display for ChunkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Default largest size of one chunk.
pub const CHUNK_SIZE_MAX_DEFAULT: u64 = 64 << 20;

/// When appended bytes are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every append is fsynced (data, checksums and state record) before it returns.
    Always,
    /// Appends are written but not synced; a chunk is synced when `bytes_max` unsynced bytes
    /// have accumulated, on `sync`, on `seal`, and on `close`. An append's outcome says whether
    /// it is already durable; callers that acknowledge writes call `sync` first.
    Batch { bytes_max: u64 },
}

/// How a [`ChunkStore`] is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkStoreOptions {
    pub sync: SyncPolicy,
    /// Size limit given to chunks created from now on (existing chunks keep theirs).
    pub chunk_size_max: u64,
    /// How sealed chunks are read (unsealed chunks always use positioned reads).
    pub sealed_reads: SealedReads,
}

/// How reads of sealed chunks get their bytes. Both verify every block; see `BENCHMARKS.md`
/// for the measurement behind the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedReads {
    /// Map the range read-only for this one read and hand it out without copying (unmapped
    /// when its last `Bytes` is dropped). A file truncated under a live mapping faults the
    /// reader with SIGBUS.
    Mmap,
    /// `pread` into a fresh buffer (the default): as fast as a mapping kept per chunk, faster
    /// than one made per read, and a damaged file is an error, never a signal.
    Pread,
}

impl Default for ChunkStoreOptions {
    fn default() -> Self {
        ChunkStoreOptions {
            sync: SyncPolicy::Always,
            chunk_size_max: CHUNK_SIZE_MAX_DEFAULT,
            sealed_reads: SealedReads::Pread,
        }
    }
}

/// Everything that can go wrong in the chunk store. Each variant names the chunk involved.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {chunk} not found")]
    NotFound { chunk: ChunkHandle },
    #[error("chunk {chunk} already exists")]
    AlreadyExists { chunk: ChunkHandle },
    #[error("chunk {chunk}: range {offset}+{len} is outside its {chunk_len} bytes")]
    OutOfRange {
        chunk: ChunkHandle,
        offset: u64,
        len: u64,
        chunk_len: u64,
    },
    #[error("chunk {chunk} is full: {len} bytes + {append} would exceed its limit of {size_max}")]
    ChunkFull {
        chunk: ChunkHandle,
        len: u64,
        append: u64,
        size_max: u64,
    },
    #[error("chunk {chunk} is sealed")]
    Sealed { chunk: ChunkHandle },
    #[error("chunk {chunk}: block {block} is corrupt (checksum mismatch)")]
    Corrupt { chunk: ChunkHandle, block: u64 },
    #[error("chunk file {path}: bad header: {reason}")]
    BadHeader { path: PathBuf, reason: String },
    #[error("invalid chunk store option: {0}")]
    InvalidOption(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ChunkError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ChunkError {
        let context = context.into();
        move |source| ChunkError::Io { context, source }
    }
}
