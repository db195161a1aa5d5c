//! The Raft log and vote in redb (`raft-log.redb`), apart from the state machine's database so
//! that appends and applies never wait for each other's write transaction.
//!
//! Durability and group commit: every write (append, truncate, purge, vote, committed) goes
//! through one writer thread, in order, as openraft requires. `append` queues its entries and
//! returns at once (they stay readable from memory); the writer drains everything queued,
//! writes it in one redb transaction committed with `Durability::Immediate` (one fsync), and
//! only then reports each append durable through openraft's callback. Concurrent proposals
//! therefore share fsyncs instead of queueing behind one fsync each.
//!
//! The committed index is a hint openraft may save without durability (a restart that finds an
//! older one only applies less before the leader commits again; the index only ever advances,
//! so an older value is still committed). `save_committed` therefore returns at once and the
//! writer folds the latest value into its next transaction. Saving it in a durable transaction
//! of its own doubled the fsyncs of every group commit (one for the entries, one for the
//! committed index) and held each group's successor behind both.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::RwLock;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote, io_err};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";

/// The log store; clones share the database, the writer and the tail (the log reader is a
/// clone).
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Database>,
    /// The newest entries, encoded: those queued for the writer and not yet durable, readable
    /// meanwhile, and the most recent durable ones (up to [`TAIL_DURABLE_BYTES`]), so that the
    /// state machine and replication read what was just appended without a read transaction
    /// on a blocking thread. Always a contiguous suffix of the log (appends go in at the end,
    /// eviction takes the oldest, truncation cuts the end, purging the start).
    tail: Arc<RwLock<BTreeMap<u64, Arc<Vec<u8>>>>>,
    /// The latest committed index openraft saved, encoded, not yet written: the writer's next
    /// transaction (or its last, when the store closes) carries it.
    committed: Arc<parking_lot::Mutex<Option<Vec<u8>>>>,
    writer: mpsc::Sender<Op>,
}

/// A write other than an append, run alone in one transaction on the writer thread.
type Write = Box<dyn FnOnce(&redb::WriteTransaction) -> Result<(), StorageError> + Send>;

/// Work for the writer thread, executed in the order sent.
enum Op {
    Append {
        entries: Vec<(u64, Arc<Vec<u8>>)>,
        done: LogFlushed<TypeConfig>,
    },
    /// Any other write: runs alone in its own transaction; the result goes back on `done`.
    Other {
        write: Write,
        done: tokio::sync::oneshot::Sender<Result<(), StorageError>>,
    },
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Append { entries, .. } => write!(f, "Append({} entries)", entries.len()),
            Op::Other { .. } => write!(f, "Other"),
        }
    }
}

/// Page cache of the log database: only the tail is read (16 and 32 MiB gave the same
/// throughput; 16 keeps a master with a million keys well under 200 MiB, BENCHMARKS.md).
const LOG_CACHE_BYTES: usize = 16 << 20;

/// Durable entries kept in the tail: enough for the last two full groups
/// (`GROUP_BYTES_MAX` is 4 MiB), so applying an entry right after its fsync finds it there.
const TAIL_DURABLE_BYTES: usize = 8 << 20;

/// Upper bound on the entries one group commit takes from the queue.
const GROUP_ENTRIES_MAX: usize = 4096;

/// Write the committed index waiting in `committed`, if any, in `txn`.
fn write_committed(
    txn: &redb::WriteTransaction,
    committed: &parking_lot::Mutex<Option<Vec<u8>>>,
) -> Result<(), StorageError> {
    if let Some(bytes) = committed.lock().take() {
        txn.open_table(META)
            .map_err(write_err)?
            .insert(COMMITTED, bytes.as_slice())
            .map_err(write_err)?;
    }
    Ok(())
}

fn writer_loop(
    db: Arc<Database>,
    tail: Arc<RwLock<BTreeMap<u64, Arc<Vec<u8>>>>>,
    committed: Arc<parking_lot::Mutex<Option<Vec<u8>>>>,
    ops: mpsc::Receiver<Op>,
) {
    let mut carry: Option<Op> = None;
    // Durable entries still in the tail, oldest first, and their bytes.
    let mut durable: std::collections::VecDeque<(u64, Arc<Vec<u8>>)> = Default::default();
    let mut durable_bytes = 0usize;
    loop {
        let first = match carry.take() {
            Some(op) => op,
            None => match ops.recv() {
                Ok(op) => op,
                Err(_) => {
                    // Every LogStore handle is gone: save the last committed index.
                    if committed.lock().is_some() {
                        let last = (|| {
                            let txn = db.begin_write().map_err(write_err)?;
                            write_committed(&txn, &committed)?;
                            txn.commit().map_err(write_err)
                        })();
                        if let Err(e) = last {
                            tracing::warn!(error = %e, "could not save the committed index at close");
                        }
                    }
                    return;
                }
            },
        };
        match first {
            Op::Other { write, done } => {
                let result = (|| {
                    let txn = db.begin_write().map_err(write_err)?;
                    write(&txn)?;
                    write_committed(&txn, &committed)?;
                    txn.commit().map_err(write_err)
                })();
                let _ = done.send(result);
            }
            Op::Append { entries, done } => {
                // Group commit: take every append already queued behind this one.
                let mut group = vec![(entries, done)];
                let mut count = group[0].0.len();
                while count < GROUP_ENTRIES_MAX {
                    match ops.try_recv() {
                        Ok(Op::Append { entries, done }) => {
                            count += entries.len();
                            group.push((entries, done));
                        }
                        Ok(other) => {
                            carry = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = (|| {
                    let txn = db.begin_write().map_err(write_err)?;
                    write_committed(&txn, &committed)?;
                    {
                        let mut table = txn.open_table(LOG).map_err(write_err)?;
                        for (entries, _) in &group {
                            for (index, bytes) in entries {
                                table.insert(*index, bytes.as_slice()).map_err(write_err)?;
                            }
                        }
                    }
                    txn.commit().map_err(write_err)
                })();
                {
                    // Durable entries stay in the tail until newer ones push them out; after a
                    // failed commit they leave at once (openraft stops on the error).
                    let mut t = tail.write();
                    for (entries, _) in &group {
                        for (index, bytes) in entries {
                            if result.is_ok() {
                                durable_bytes += bytes.len();
                                durable.push_back((*index, bytes.clone()));
                            } else if t.get(index).is_some_and(|b| Arc::ptr_eq(b, bytes)) {
                                t.remove(index);
                            }
                        }
                    }
                    while durable_bytes > TAIL_DURABLE_BYTES
                        && let Some((index, bytes)) = durable.pop_front()
                    {
                        durable_bytes -= bytes.len();
                        // Unless truncation replaced it meanwhile.
                        if t.get(&index).is_some_and(|b| Arc::ptr_eq(b, &bytes)) {
                            t.remove(&index);
                        }
                    }
                }
                for (_, done) in group {
                    match &result {
                        Ok(()) => done.log_io_completed(Ok(())),
                        Err(e) => done.log_io_completed(Err(std::io::Error::other(e.to_string()))),
                    }
                }
            }
        }
    }
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
        // Only the log's tail is hot: a small cache bounds the master's memory.
        let db = redb::Builder::new()
            .set_cache_size(LOG_CACHE_BYTES)
            .create(path)
            .map_err(write_err)?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(LOG).map_err(write_err)?;
        txn.open_table(META).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        let db = Arc::new(db);
        let tail = Arc::new(RwLock::new(BTreeMap::new()));
        let (writer, ops) = mpsc::channel();
        let committed = Arc::new(parking_lot::Mutex::new(None));
        let (wdb, wtail, wcommitted) = (db.clone(), tail.clone(), committed.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(wdb, wtail, wcommitted, ops))
            .map_err(write_err)?;
        Ok(LogStore {
            db,
            tail,
            committed,
            writer,
        })
    }

    /// Run a write on the writer thread, after everything queued before it.
    async fn write(
        &self,
        write: impl FnOnce(&redb::WriteTransaction) -> Result<(), StorageError> + Send + 'static,
    ) -> Result<(), StorageError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.writer
            .send(Op::Other {
                write: Box::new(write),
                done,
            })
            .map_err(|_| write_err("log writer stopped"))?;
        wait.await.map_err(|_| write_err("log writer stopped"))?
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

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = postcard::to_stdvec(value).map_err(write_err)?;
        self.write(move |txn| {
            txn.open_table(META)
                .map_err(write_err)?
                .insert(key, bytes.as_slice())
                .map_err(write_err)?;
            Ok(())
        })
        .await
    }

    /// Number of entries committed to the log file (for status and tests).
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
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        if end <= start {
            return Ok(Vec::new());
        }
        // The tail first (snapshot it), then what redb holds; the tail wins on overlap.
        let tail: BTreeMap<u64, Arc<Vec<u8>>> = self
            .tail
            .read()
            .range(start..end)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        // The tail is a suffix of the log: if it holds the range from its start without a gap
        // (a failed group commit can leave one), it holds all of it, and nothing needs reading
        // from redb. Keys are in `start..end`, so `last - start` cannot underflow.
        let whole = match (tail.keys().next(), tail.keys().next_back()) {
            (Some(&first), Some(&last)) => first == start && last - start + 1 == tail.len() as u64,
            _ => false,
        };
        if whole {
            return tail
                .values()
                .map(|bytes| postcard::from_bytes(bytes).map_err(read_err))
                .collect();
        }
        let db = self.db.clone();
        blocking(move || {
            let mut raw: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let txn = db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            for item in table.range(start..end).map_err(read_err)? {
                let (k, v) = item.map_err(read_err)?;
                raw.insert(k.value(), v.value().to_vec());
            }
            let mut out = Vec::with_capacity(raw.len() + tail.len());
            let mut merged: BTreeMap<u64, &[u8]> =
                raw.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            for (k, v) in &tail {
                merged.insert(*k, v.as_slice());
            }
            for (_, bytes) in merged {
                out.push(postcard::from_bytes(bytes).map_err(read_err)?);
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
        let tail_last = self.tail.read().last_key_value().map(|(_, v)| v.clone());
        let last_bytes = match tail_last {
            Some(b) => Some(b.as_ref().clone()),
            None => {
                let txn = self.db.begin_read().map_err(read_err)?;
                let table = txn.open_table(LOG).map_err(read_err)?;
                table
                    .last()
                    .map_err(read_err)?
                    .map(|(_, v)| v.value().to_vec())
            }
        };
        let last = match last_bytes {
            Some(b) => {
                let e: Entry = postcard::from_bytes(&b).map_err(read_err)?;
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
        self.put_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint, written by the writer's next transaction (see the module docs).
        let bytes = postcard::to_stdvec(&committed).map_err(write_err)?;
        *self.committed.lock() = Some(bytes);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        if let Some(bytes) = self.committed.lock().as_ref() {
            return postcard::from_bytes::<Option<LogId>>(bytes).map_err(read_err);
        }
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
            encoded.push((
                e.log_id.index,
                Arc::new(postcard::to_stdvec(&e).map_err(write_err)?),
            ));
        }
        // Readable at once; durable when the writer calls back.
        {
            let mut p = self.tail.write();
            for (index, bytes) in &encoded {
                p.insert(*index, bytes.clone());
            }
        }
        self.writer
            .send(Op::Append {
                entries: encoded,
                done: callback,
            })
            .map_err(|_| write_err("log writer stopped"))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.tail.write().retain(|index, _| *index < log_id.index);
        self.write(move |txn| {
            txn.open_table(LOG)
                .map_err(write_err)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = postcard::to_stdvec(&log_id).map_err(write_err)?;
        self.write(move |txn| {
            txn.open_table(META)
                .map_err(write_err)?
                .insert(PURGED, bytes.as_slice())
                .map_err(write_err)?;
            txn.open_table(LOG)
                .map_err(write_err)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)
        })
        .await?;
        self.tail.write().retain(|index, _| *index > log_id.index);
        Ok(())
    }
}
