//! The chunk service (service 2): which chunks exist, their versions, replication factors and
//! whether anything still refers to them. Where the replicas are is soft state
//! (the `cluster` module), rebuilt from chunkserver heartbeats and never logged.
//!
//! A chunk's life: `Allocate` creates it `Pending` (a writer is filling its replicas); an object
//! that commits it makes it `Live` (reference counted); when the last reference goes it is
//! `Released`. `Pending` and `Released` chunks older than the grace period are forgotten by the
//! garbage collector (`Forget`), after which any replica of them is an orphan and is deleted.
//! Handles are allocated in increasing order, so a replica whose handle is below the next handle
//! and has no record is known garbage.

use cairn_engine::state::{
    ApplyContext, ApplyError, Rejection, ServiceId, StateError, Table, TypedService, TypedTable,
};
use cairn_proto::ChunkHandle;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

cairn_engine::refusals! {
    /// Why the chunk service refuses a command.
    pub enum ChunkRefusal {
        /// A chunk a write names is released or unknown: the write must start over.
        ChunkGone = "chunk_gone",
        /// The chunk handle space is used up.
        Exhausted = "exhausted",
        /// A count, replication or handle outside the limits.
        InvalidArgument = "invalid_argument",
    }
}

/// Handle → record.
const CHUNKS: TypedTable<u64, ChunkRecord> = TypedTable::new("chunks");
const CHUNKS_META: Table = Table::new("chunks.meta");
const NEXT_HANDLE: &[u8] = b"next_handle";
/// Most chunks one `Allocate` may ask for.
pub const ALLOCATE_MAX: u32 = 1024;
/// Largest replication factor.
pub const REPLICATION_MAX: u8 = 7;

/// The service; its state is the `chunks` tables.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkService;

/// Where a chunk is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkState {
    /// Allocated; a writer is filling it. Forgotten after the grace period unless committed.
    Pending { since_ms: u64 },
    /// Referred to by `refs` object versions.
    Live { refs: u32 },
    /// Nothing refers to it any more; forgotten after the grace period.
    Released { since_ms: u64 },
}

/// One chunk's replicated metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Replicas with an older version are stale. Set when the chunk is allocated (the write
    /// lease is granted with it; chunks are written once and sealed).
    pub version: u64,
    pub replication: u8,
    pub state: ChunkState,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkCommand {
    /// Allocate `count` new chunks, each to be stored `replication` times.
    Allocate { count: u32, replication: u8 },
    /// Garbage collection: forget each listed chunk that is still `Pending` or `Released` since
    /// `cutoff_ms` or earlier. Chunks that were committed meanwhile are kept.
    Forget {
        handles: Vec<ChunkHandle>,
        cutoff_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkResponse {
    Allocated {
        handles: Vec<ChunkHandle>,
        version: u64,
    },
    Forgotten {
        handles: Vec<ChunkHandle>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkQuery {
    Get {
        handles: Vec<ChunkHandle>,
    },
    /// Records in handle order after `after`, at most `limit`.
    Scan {
        after: Option<ChunkHandle>,
        limit: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkQueryResponse {
    Records(Vec<(ChunkHandle, Option<ChunkRecord>)>),
    Page {
        records: Vec<(ChunkHandle, ChunkRecord)>,
        next_handle: u64,
    },
}

cairn_engine::records! { ChunkRecord = "chunk record" }

fn read_u64(v: Option<&[u8]>) -> Result<u64, StateError> {
    match v {
        None => Ok(0),
        Some(b) => {
            let b: [u8; 8] = b
                .try_into()
                .map_err(|_| StateError::Corrupt("chunk counter is not 8 bytes".into()))?;
            Ok(u64::from_le_bytes(b))
        }
    }
}

impl ChunkService {
    /// One chunk's record in a write transaction.
    pub fn record(
        txn: &WriteTransaction,
        h: ChunkHandle,
    ) -> Result<Option<ChunkRecord>, StateError> {
        CHUNKS.open(txn)?.get(&h.0)
    }

    fn put(txn: &WriteTransaction, h: ChunkHandle, r: &ChunkRecord) -> Result<(), StateError> {
        CHUNKS.open(txn)?.insert(&h.0, r)
    }

    /// Check that an object may refer to `handles`: each exists and is not released. For
    /// services that commit objects (call before writing anything).
    pub fn check_referable(
        txn: &WriteTransaction,
        handles: &[ChunkHandle],
    ) -> Result<(), ApplyError> {
        for &h in handles {
            match Self::record(txn, h)? {
                None => {
                    return Err(Rejection::new(
                        ChunkRefusal::ChunkGone,
                        format!("chunk {h} does not exist (never allocated or already collected)"),
                    )
                    .into());
                }
                Some(ChunkRecord {
                    state: ChunkState::Released { .. },
                    ..
                }) => {
                    return Err(Rejection::new(
                        ChunkRefusal::ChunkGone,
                        format!("chunk {h} was released"),
                    )
                    .into());
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Add one reference to each of `handles` (checked with [`Self::check_referable`] first).
    pub fn add_refs(txn: &WriteTransaction, handles: &[ChunkHandle]) -> Result<(), ApplyError> {
        for &h in handles {
            let Some(mut r) = Self::record(txn, h)? else {
                return Err(
                    StateError::Corrupt(format!("chunk {h} vanished while referenced")).into(),
                );
            };
            r.state = match r.state {
                ChunkState::Live { refs } => ChunkState::Live {
                    refs: refs.saturating_add(1),
                },
                _ => ChunkState::Live { refs: 1 },
            };
            Self::put(txn, h, &r)?;
        }
        Ok(())
    }

    /// Drop one reference from each of `handles`; a chunk left with none is `Released` at
    /// `now_ms`. Unknown handles are ignored (already collected).
    pub fn release(
        txn: &WriteTransaction,
        handles: &[ChunkHandle],
        now_ms: u64,
    ) -> Result<(), ApplyError> {
        for &h in handles {
            let Some(mut r) = Self::record(txn, h)? else {
                continue;
            };
            r.state = match r.state {
                ChunkState::Live { refs } if refs > 1 => ChunkState::Live { refs: refs - 1 },
                ChunkState::Live { .. } | ChunkState::Pending { .. } => {
                    ChunkState::Released { since_ms: now_ms }
                }
                released => released,
            };
            Self::put(txn, h, &r)?;
        }
        Ok(())
    }

    /// The handle the next allocation will get (every handle below it was allocated once).
    pub fn next_handle(txn: &ReadTransaction) -> Result<u64, StateError> {
        let meta = txn.open_table(CHUNKS_META)?;
        read_u64(meta.get(NEXT_HANDLE)?.as_ref().map(|v| v.value())).map(|n| n.max(1))
    }

    /// Records in handle order after `after`, at most `limit`.
    pub fn scan(
        txn: &ReadTransaction,
        after: Option<ChunkHandle>,
        limit: usize,
    ) -> Result<Vec<(ChunkHandle, ChunkRecord)>, StateError> {
        let table = CHUNKS.read(txn)?;
        let start = after.map_or(0, |h| h.0.saturating_add(1));
        let mut out = Vec::new();
        if after.is_some_and(|h| h.0 == u64::MAX) {
            return Ok(out);
        }
        for item in table.range_from(&start)? {
            if out.len() >= limit {
                break;
            }
            let (h, r) = item?;
            out.push((ChunkHandle(h), r));
        }
        Ok(out)
    }

    pub fn get(txn: &ReadTransaction, h: ChunkHandle) -> Result<Option<ChunkRecord>, StateError> {
        CHUNKS.read(txn)?.get(&h.0)
    }
}

impl TypedService for ChunkService {
    const ID: ServiceId = ServiceId(2);
    const NAME: &'static str = "chunks";
    const VERSION: u16 = 1;
    type Command = ChunkCommand;
    type Response = ChunkResponse;
    type Query = ChunkQuery;
    type QueryResponse = ChunkQueryResponse;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        CHUNKS.init(txn)?;
        txn.open_table(CHUNKS_META)?;
        Ok(())
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: ChunkCommand,
    ) -> Result<ChunkResponse, ApplyError> {
        match command {
            ChunkCommand::Allocate { count, replication } => {
                if count == 0 || count > ALLOCATE_MAX {
                    return Err(Rejection::new(
                        ChunkRefusal::InvalidArgument,
                        format!("allocate 1..={ALLOCATE_MAX} chunks, not {count}"),
                    )
                    .into());
                }
                if replication == 0 || replication > REPLICATION_MAX {
                    return Err(Rejection::new(
                        ChunkRefusal::InvalidArgument,
                        format!("replication must be 1..={REPLICATION_MAX}, not {replication}"),
                    )
                    .into());
                }
                let first = {
                    let meta = txn.open_table(CHUNKS_META)?;
                    read_u64(meta.get(NEXT_HANDLE)?.as_ref().map(|v| v.value()))?.max(1)
                };
                let end = first.checked_add(u64::from(count)).ok_or_else(|| {
                    Rejection::new(
                        ChunkRefusal::Exhausted,
                        "the chunk handle space is exhausted",
                    )
                })?;
                let version = 1;
                let record = ChunkRecord {
                    version,
                    replication,
                    state: ChunkState::Pending {
                        since_ms: ctx.time_ms,
                    },
                    created_ms: ctx.time_ms,
                };
                let mut handles = Vec::with_capacity(count as usize);
                {
                    let mut table = CHUNKS.open(txn)?;
                    for h in first..end {
                        table.insert(&h, &record)?;
                        handles.push(ChunkHandle(h));
                    }
                }
                txn.open_table(CHUNKS_META)?
                    .insert(NEXT_HANDLE, end.to_le_bytes().as_slice())?;
                Ok(ChunkResponse::Allocated { handles, version })
            }
            ChunkCommand::Forget { handles, cutoff_ms } => {
                let mut forgotten = Vec::new();
                for h in handles {
                    let Some(r) = Self::record(txn, h)? else {
                        continue;
                    };
                    let collectable = match r.state {
                        ChunkState::Pending { since_ms } | ChunkState::Released { since_ms } => {
                            since_ms <= cutoff_ms
                        }
                        ChunkState::Live { .. } => false,
                    };
                    if collectable {
                        CHUNKS.open(txn)?.remove(&h.0)?;
                        forgotten.push(h);
                    }
                }
                Ok(ChunkResponse::Forgotten { handles: forgotten })
            }
        }
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: ChunkQuery,
    ) -> Result<ChunkQueryResponse, ApplyError> {
        Ok(match query {
            ChunkQuery::Get { handles } => {
                let mut out = Vec::with_capacity(handles.len());
                for h in handles.into_iter().take(ALLOCATE_MAX as usize) {
                    out.push((h, Self::get(txn, h)?));
                }
                ChunkQueryResponse::Records(out)
            }
            ChunkQuery::Scan { after, limit } => ChunkQueryResponse::Page {
                records: Self::scan(txn, after, limit.min(10_000) as usize)?,
                next_handle: Self::next_handle(txn)?,
            },
        })
    }
}
