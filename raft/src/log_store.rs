//! The Raft log and vote in redb (`raft-log.redb`), apart from the state machine's database so
//! that appends and applies never wait for each other's write transaction.
//!
//! Durability: every append, truncate, purge and vote is one redb write transaction committed
//! with `Durability::Immediate` (fsynced) before it is reported done. openraft hands each
//! append all the entries that queued up meanwhile, so concurrent proposals share one fsync
//! (group commit).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote, io_err};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";

/// The log store; clones share the database (the log reader is a clone).
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Database>,
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(io_err(e)).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(io_err(e)).into()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(write_err)?
}

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, StorageError> {
        let db = Database::create(path).map_err(write_err)?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(LOG).map_err(write_err)?;
        txn.open_table(META).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        match table.get(key).map_err(read_err)? {
            Some(v) => postcard::from_bytes(v.value()).map(Some).map_err(read_err),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let bytes = postcard::to_stdvec(value).map_err(write_err)?;
        let txn = self.db.begin_write().map_err(write_err)?;
        txn.open_table(META)
            .map_err(write_err)?
            .insert(key, bytes.as_slice())
            .map_err(write_err)?;
        txn.commit().map_err(write_err)
    }

    /// Number of entries currently held (for status and tests).
    pub fn len(&self) -> Result<u64, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        use redb::ReadableTableMetadata;
        txn.open_table(LOG)
            .map_err(read_err)?
            .len()
            .map_err(read_err)
    }

    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.len()? == 0)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e + 1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            let iter = match end {
                Some(e) if e <= start => return Ok(Vec::new()),
                Some(e) => table.range(start..e),
                None => table.range(start..),
            }
            .map_err(read_err)?;
            let mut out = Vec::new();
            for item in iter {
                let (_, v) = item.map_err(read_err)?;
                out.push(postcard::from_bytes(v.value()).map_err(read_err)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(PURGED)?;
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            Some((_, v)) => {
                let e: Entry = postcard::from_bytes(v.value()).map_err(read_err)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let store = self.clone();
        let vote = *vote;
        blocking(move || store.put_meta(VOTE, &vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let store = self.clone();
        blocking(move || store.put_meta(COMMITTED, &committed)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((e.log_id.index, postcard::to_stdvec(&e).map_err(write_err)?));
        }
        let db = self.db.clone();
        let result = blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut table = txn.open_table(LOG).map_err(write_err)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(write_err)?;
                }
            }
            txn.commit().map_err(write_err)
        })
        .await;
        // The entries are durable (or the append failed) before openraft hears about it.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(LOG)
                .map_err(write_err)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let bytes = postcard::to_stdvec(&log_id).map_err(write_err)?;
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(META)
                .map_err(write_err)?
                .insert(PURGED, bytes.as_slice())
                .map_err(write_err)?;
            txn.open_table(LOG)
                .map_err(write_err)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }
}
