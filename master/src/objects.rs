//! The object service (service 3): object key → the extents that hold its bytes.
//!
//! A put swaps the key's record in one command, so an overwrite is atomic and a reader sees the
//! old or the new object, never a mix. The command takes a reference on every chunk it names
//! and releases the chunks of the object it replaces, in the same transaction as the chunk
//! service's records (one log, one transaction), so garbage collection never loses a live chunk.
//!
//! Keys are 1..=1024 bytes of UTF-8 without NUL.
//!
//! **Retired.** Nothing proposes object-service commands any more: every object lives in the
//! bucket service (service 4), the data-plane tests included. The service stays registered so
//! that logs and snapshots written by older releases still replay, and its table is upgraded
//! like every other. [`Extent`], [`check_extents`] and [`handles`] here are what the bucket
//! service shares of it.

use cairn_engine::state::{
    ApplyContext, ApplyError, Rejection, ServiceId, StateError, TypedService, TypedTable,
};
use cairn_proto::ChunkHandle;
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::chunks::ChunkService;

cairn_engine::refusals! {
    /// Why the object service refuses a command.
    pub enum ObjectRefusal {
        /// A key, size or extent list outside the rules.
        InvalidArgument = "invalid_argument",
        /// A chunk the object names is released or unknown.
        ChunkGone = "chunk_gone",
    }
}

/// Object key → record.
const OBJECTS: TypedTable<String, ObjectRecord> = TypedTable::new("objects");
pub const KEY_LEN_MAX: usize = 1024;
/// Most extents one object may have (64 MiB chunks: 4 TiB).
pub const EXTENTS_MAX: usize = 65_536;

pub use cairn_proto::dataplane::Extent;

/// One stored object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub size: u64,
    pub blake3: [u8; 32],
    pub extents: Vec<Extent>,
    pub created_ms: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ObjectService;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectCommand {
    Put {
        key: String,
        size: u64,
        blake3: [u8; 32],
        extents: Vec<Extent>,
    },
    Delete {
        key: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectResponse {
    Put { replaced: bool },
    Deleted { existed: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectQuery {
    Get {
        key: String,
    },
    /// Keys starting with `prefix`, in order, after `after`, at most `limit`.
    List {
        prefix: String,
        after: Option<String>,
        limit: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectQueryResponse {
    Object(Option<ObjectRecord>),
    Keys(Vec<(String, u64)>),
}

fn check_key(key: &str) -> Result<(), Rejection> {
    if key.is_empty() || key.len() > KEY_LEN_MAX || key.contains('\0') {
        return Err(Rejection::new(
            ObjectRefusal::InvalidArgument,
            format!("object keys are 1..={KEY_LEN_MAX} bytes of UTF-8 without NUL"),
        ));
    }
    Ok(())
}

cairn_engine::records! { ObjectRecord = "object record" }

/// Extents must be non-empty pieces that add up to the size.
pub(crate) fn check_extents(size: u64, extents: &[Extent]) -> Result<(), Rejection> {
    if extents.len() > EXTENTS_MAX {
        return Err(Rejection::new(
            ObjectRefusal::InvalidArgument,
            format!("an object has at most {EXTENTS_MAX} extents"),
        ));
    }
    let mut total: u64 = 0;
    for e in extents {
        if e.len == 0 {
            return Err(Rejection::new(
                ObjectRefusal::InvalidArgument,
                "empty extent",
            ));
        }
        total = total.checked_add(e.len).ok_or_else(|| {
            Rejection::new(ObjectRefusal::InvalidArgument, "extent lengths overflow")
        })?;
    }
    if total != size {
        return Err(Rejection::new(
            ObjectRefusal::InvalidArgument,
            format!("extents hold {total} bytes but the object size is {size}"),
        ));
    }
    Ok(())
}

/// The distinct chunks `extents` name (one reference each per record).
pub(crate) fn handles(extents: &[Extent]) -> Vec<ChunkHandle> {
    let mut h: Vec<ChunkHandle> = extents.iter().map(|e| e.handle).collect();
    h.sort_unstable();
    h.dedup();
    h
}

impl ObjectService {
    pub fn get(txn: &ReadTransaction, key: &str) -> Result<Option<ObjectRecord>, StateError> {
        OBJECTS.read(txn)?.get(&key.to_owned())
    }
}

impl TypedService for ObjectService {
    const ID: ServiceId = ServiceId(3);
    const NAME: &'static str = "objects";
    const VERSION: u16 = 1;
    type Command = ObjectCommand;
    type Response = ObjectResponse;
    type Query = ObjectQuery;
    type QueryResponse = ObjectQueryResponse;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        OBJECTS.init(txn)
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: ObjectCommand,
    ) -> Result<ObjectResponse, ApplyError> {
        match command {
            ObjectCommand::Put {
                key,
                size,
                blake3,
                extents,
            } => {
                check_key(&key)?;
                check_extents(size, &extents)?;
                let new = handles(&extents);
                ChunkService::check_referable(txn, &new)?;
                let old = OBJECTS.open(txn)?.get(&key)?;
                // References first, then releases: a chunk shared by the old and new version
                // never drops to zero on the way.
                ChunkService::add_refs(txn, &new)?;
                if let Some(old) = &old {
                    ChunkService::release(txn, &handles(&old.extents), ctx.time_ms)?;
                }
                let record = ObjectRecord {
                    size,
                    blake3,
                    extents,
                    created_ms: ctx.time_ms,
                };
                OBJECTS.open(txn)?.insert(&key, &record)?;
                Ok(ObjectResponse::Put {
                    replaced: old.is_some(),
                })
            }
            ObjectCommand::Delete { key } => {
                check_key(&key)?;
                let old = OBJECTS.open(txn)?.take(&key)?;
                match old {
                    Some(old) => {
                        ChunkService::release(txn, &handles(&old.extents), ctx.time_ms)?;
                        Ok(ObjectResponse::Deleted { existed: true })
                    }
                    None => Ok(ObjectResponse::Deleted { existed: false }),
                }
            }
        }
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: ObjectQuery,
    ) -> Result<ObjectQueryResponse, ApplyError> {
        Ok(match query {
            ObjectQuery::Get { key } => ObjectQueryResponse::Object(Self::get(txn, &key)?),
            ObjectQuery::List {
                prefix,
                after,
                limit,
            } => {
                let table = OBJECTS.read(txn)?;
                let start = match &after {
                    Some(a) if a.as_str() >= prefix.as_str() => a.clone(),
                    _ => prefix.clone(),
                };
                let mut out = Vec::new();
                for item in table.range_from(&start)? {
                    let (key, record) = item?;
                    if !key.starts_with(&prefix) || out.len() >= limit.min(10_000) as usize {
                        break;
                    }
                    if after.as_ref().is_some_and(|a| *a == key) {
                        continue;
                    }
                    out.push((key, record.size));
                }
                ObjectQueryResponse::Keys(out)
            }
        })
    }
}
