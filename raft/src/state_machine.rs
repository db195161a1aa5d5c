//! The Raft state machine: the engine's service registry on the state store.
//!
//! Each `apply` batch is one redb write transaction holding the services' changes, the last
//! applied log id and the membership (table `raft.meta`, itself part of the state, so snapshots
//! carry it). Snapshots are the engine's checksummed export, taken from one read transaction;
//! installing one is the engine's atomic import.

use std::io::Cursor;
use std::sync::Arc;

use cairn_engine::state::{Registry, StateError, StateStore};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership};
use parking_lot::Mutex;
use redb::{ReadableDatabase, TableDefinition};

use crate::types::{Applied, Entry, LogId, Membership, StorageError, TypeConfig, io_err};

const RAFT_META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("raft.meta");
const LAST_APPLIED: &[u8] = b"last_applied";
const MEMBERSHIP: &[u8] = b"membership";

type Meta = SnapshotMeta<u64, openraft::BasicNode>;

/// The state machine; clones share the store (the snapshot builder is a clone).
#[derive(Clone, Debug)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: StateStore,
    registry: Registry,
    /// The latest snapshot built or installed, kept for followers that need it.
    current: Mutex<Option<(Meta, Arc<Vec<u8>>)>>,
    built: Mutex<u64>,
    /// Apply batches committed without fsync since the last durable commit.
    lazy_applies: Mutex<u32>,
}

/// Every this many apply batches, one is committed durably (bounds redb's un-synced growth and
/// the log to replay after a crash).
const DURABLE_APPLY_EVERY: u32 = 64;

/// Make every apply committed so far durable (an empty durable commit persists all before it).
fn make_durable(store: &StateStore) -> Result<(), StorageError> {
    let txn = store.db().begin_write().map_err(sm_write)?;
    txn.commit().map_err(sm_write)
}

fn sm_read(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(io_err(e)).into()
}

fn sm_write(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(io_err(e)).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, io_err(e)).into()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(sm_write)?
}

fn read_meta(txn: &redb::ReadTransaction) -> Result<(Option<LogId>, Membership), StateError> {
    let table = match txn.open_table(RAFT_META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((None, Membership::default())),
        Err(e) => return Err(e.into()),
    };
    let decode = |e: postcard::Error| StateError::Corrupt(format!("raft.meta: {e}"));
    let last = match table.get(LAST_APPLIED)? {
        Some(v) => postcard::from_bytes(v.value()).map_err(decode)?,
        None => None,
    };
    let membership = match table.get(MEMBERSHIP)? {
        Some(v) => postcard::from_bytes(v.value()).map_err(decode)?,
        None => Membership::default(),
    };
    Ok((last, membership))
}

impl StateMachine {
    /// Wrap a state store whose `registry` tables exist (see `Registry::init`).
    pub fn new(store: StateStore, registry: Registry) -> Result<StateMachine, StateError> {
        let txn = store.db().begin_write()?;
        txn.open_table(RAFT_META)?;
        txn.commit()?;
        Ok(StateMachine {
            inner: Arc::new(Inner {
                store,
                registry,
                current: Mutex::new(None),
                built: Mutex::new(0),
                lazy_applies: Mutex::new(0),
            }),
        })
    }

    /// The store, for reads.
    pub fn store(&self) -> &StateStore {
        &self.inner.store
    }

    /// Last applied log id and membership as stored.
    pub fn applied(&self) -> Result<(Option<LogId>, Membership), StateError> {
        let txn = self.inner.store.db().begin_read()?;
        read_meta(&txn)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let inner = self.inner.clone();
        blocking(move || {
            // A snapshot lets openraft purge the log up to it: first make sure the state it
            // covers is on disk, so the log is never purged past what a restart can rebuild.
            make_durable(&inner.store)?;
            *inner.lazy_applies.lock() = 0;
            let mut data = Vec::new();
            let (_, (last, membership)) = inner
                .store
                .export_snapshot_with(&mut data, read_meta)
                .map_err(snap_err)?;
            let n = {
                let mut b = inner.built.lock();
                *b += 1;
                *b
            };
            let snapshot_id = match last {
                Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
                None => format!("empty-{n}"),
            };
            let meta = Meta {
                last_log_id: last,
                last_membership: membership,
                snapshot_id,
            };
            let data = Arc::new(data);
            *inner.current.lock() = Some((meta.clone(), data.clone()));
            tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built snapshot");
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data.as_ref().clone())),
            })
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        self.applied().map_err(sm_read)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let inner = self.inner.clone();
        blocking(move || {
            let Some(last) = entries.last().map(|e| e.log_id) else {
                return Ok(Vec::new());
            };
            let mut txn = inner.store.db().begin_write().map_err(sm_write)?;
            // The log is the durable record of every committed command: applies are committed
            // without fsync (a restart re-applies from the last durable one), except one batch in
            // DURABLE_APPLY_EVERY, and before every snapshot.
            {
                let mut lazy = inner.lazy_applies.lock();
                if *lazy + 1 < DURABLE_APPLY_EVERY {
                    *lazy += 1;
                    txn.set_durability(redb::Durability::None)
                        .map_err(sm_write)?;
                } else {
                    *lazy = 0;
                }
            }
            // Every entry's commands in log order, all in this one transaction.
            let mut membership: Option<Membership> = None;
            let mut out = Vec::with_capacity(entries.len());
            for e in &entries {
                match &e.payload {
                    EntryPayload::Normal(p) => {
                        let outcomes = inner
                            .registry
                            .apply_group_in(&txn, e.log_id.index, &p.0)
                            .map_err(sm_write)?;
                        out.push(Applied(outcomes));
                    }
                    EntryPayload::Blank => out.push(Applied(Vec::new())),
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(e.log_id), m.clone()));
                        out.push(Applied(Vec::new()));
                    }
                }
            }
            {
                let mut meta = txn.open_table(RAFT_META).map_err(sm_write)?;
                let last = postcard::to_stdvec(&Some(last)).map_err(sm_write)?;
                meta.insert(LAST_APPLIED, last.as_slice())
                    .map_err(sm_write)?;
                if let Some(m) = membership {
                    let m = postcard::to_stdvec(&m).map_err(sm_write)?;
                    meta.insert(MEMBERSHIP, m.as_slice()).map_err(sm_write)?;
                }
            }
            txn.commit().map_err(sm_write)?;
            Ok(out)
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        let meta = meta.clone();
        blocking(move || {
            let data = snapshot.into_inner();
            inner
                .store
                .import_snapshot(data.as_slice())
                .map_err(snap_err)?;
            tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "installed snapshot");
            *inner.current.lock() = Some((meta, Arc::new(data)));
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .inner
            .current
            .lock()
            .as_ref()
            .map(|(meta, data)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(data.as_ref().clone())),
            }))
    }
}
