//! The state store: one redb database holding every platform service's replicated state.
//!
//! Rules every service follows:
//! - Every table is `&[u8] -> &[u8]` on disk, so snapshots copy any table without knowing its
//!   types. Services declare their tables as [`TypedTable<K, V>`](table::TypedTable): keys
//!   encoded by [`Key`], values as a version byte and postcard, old layouts upgraded on read
//!   in one place ([`Record::migrate`]).
//! - State changes only through [`Registry::apply_batch`], which applies a batch of log entries
//!   in one write transaction and records the last applied index in the same transaction.
//! - A command applies once: the same envelope bytes applied again (a client's retry after a
//!   leader change) return the first outcome ([`ONCE_WINDOW_MS`]).

mod codec;
mod command;
mod once;
mod registry;
mod service;
pub mod settings;
mod snapshot;
pub mod table;

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};

pub use codec::{decode, encode, reject};
pub use command::{
    COMMAND_FORMAT_VERSION, COMMAND_PAYLOAD_MAX, Command, CommandDecodeError, ServiceId,
};
pub use once::ONCE_WINDOW_MS;
pub use registry::{Outcome, Registry};
pub use service::{
    ApplyContext, ApplyError, Envelope, Refusal, Rejection, Service, Typed, TypedService,
};
pub use snapshot::{SNAPSHOT_FORMAT_VERSION, SnapshotError, SnapshotSummary};
pub use table::{Key, Record, TableMut, TableRead, TypedTable, decode_record, encode_record};

/// Default page cache of a state store (64 MiB): bounds a master's memory whatever the size of
/// its state; hot metadata stays cached, the rest is read from the page cache of the OS.
pub const STATE_CACHE_BYTES_DEFAULT: usize = 64 << 20;

/// The byte-keyed table type every table in the state store has.
pub type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// The store's own bookkeeping (last applied index).
pub(crate) const META: Table = TableDefinition::new("cairn.meta");
pub(crate) const META_LAST_APPLIED: &[u8] = b"last_applied";

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store: {0}")]
    Redb(#[from] redb::Error),
    #[error("state store: encoding: {0}")]
    Encode(String),
    #[error("state store: service {0} is registered twice")]
    DuplicateService(ServiceId),
    #[error("state store: log index {index} is not after the last applied index {last_applied}")]
    IndexNotAfter { index: u64, last_applied: u64 },
    #[error("state store: {0}")]
    Corrupt(String),
}

macro_rules! state_error_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> Self {
                StateError::Redb(e.into())
            }
        }
    )*};
}
state_error_from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The redb database under a data folder, plus the store's bookkeeping.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    db: Database,
}

impl StateStore {
    /// Open or create the database file at `path`, with the default page cache.
    pub fn open(path: impl AsRef<Path>) -> Result<StateStore, StateError> {
        StateStore::open_with_cache(path, STATE_CACHE_BYTES_DEFAULT)
    }

    /// Open or create the database file at `path` with a page cache of `cache_bytes` (redb's
    /// own default is 1 GiB, which would let a master's memory grow with its state).
    pub fn open_with_cache(
        path: impl AsRef<Path>,
        cache_bytes: usize,
    ) -> Result<StateStore, StateError> {
        let path = path.as_ref().to_path_buf();
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&path)?;
        let txn = db.begin_write()?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(StateStore { path, db })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying database, for services' reads.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Index of the last log entry applied (0 when none).
    pub fn last_applied(&self) -> Result<u64, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        read_u64(table.get(META_LAST_APPLIED)?.as_ref().map(|v| v.value()))
    }

    /// Whether the database answers a read (readiness check).
    pub fn check(&self) -> Result<(), StateError> {
        self.last_applied().map(|_| ())
    }
}

pub(crate) fn read_u64(v: Option<&[u8]>) -> Result<u64, StateError> {
    match v {
        None => Ok(0),
        Some(b) => {
            let a: [u8; 8] = b.try_into().map_err(|_| {
                StateError::Corrupt(format!("meta value of {} bytes, expected 8", b.len()))
            })?;
            Ok(u64::from_le_bytes(a))
        }
    }
}
