//! The Raft state machine: the engine's service registry on the state store.
//!
//! Each `apply` batch is one redb write transaction holding the services' changes, the last
//! applied log id and the membership (table `raft.meta`, itself part of the state, so snapshots
//! carry it). Snapshots are the engine's checksummed export, taken from one read transaction;
//! installing one is the engine's atomic import.
//!
//! Snapshots live in files (`snapshots/` beside `state.redb`), never in memory: building one
//! streams the export through a buffered writer, sending one reads the file in openraft's
//! chunks, receiving one writes the chunks to a file that is then imported from disk. A
//! master's memory therefore does not grow with its state (an in-memory snapshot of a million
//! settings was 40 MB held for good, and 120 MB more while it was built). The latest snapshot's
//! metadata is written beside it, so a restarted node can still send it.

use std::io::{BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
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
    /// Where snapshot files live.
    dir: PathBuf,
    /// The latest snapshot built or installed (its metadata and file), kept for followers that
    /// need it.
    current: Mutex<Option<(Meta, PathBuf)>>,
    /// The file the snapshot being received is written to.
    receiving: Mutex<Option<PathBuf>>,
    /// Numbers snapshot files (unique within this directory, also across restarts).
    built: Mutex<u64>,
    /// Apply batches committed without fsync since the last durable commit, and the bytes of
    /// the commands they carried.
    lazy_applies: Mutex<(u32, u64)>,
}

/// Every this many apply batches, one is committed durably (bounds redb's un-synced growth and
/// the log to replay after a crash).
pub const DURABLE_APPLY_EVERY: u32 = 64;

/// An apply batch is also committed durably once the commands applied without fsync since the
/// last durable one reach this many bytes. A durable commit writes every page dirtied since the
/// last one and stalls the next apply meanwhile, so bounding the bytes bounds that stall: at 64
/// batches of 14 small PUTs (~60 KB each) it lasted long enough to set the small-PUT p99
/// (BENCHMARKS.md, S3 gateway, session 12).
pub const DURABLE_APPLY_BYTES: u64 = 1 << 20;

/// Whether an apply batch of `bytes` may be committed without fsync, given the batches and
/// bytes committed without fsync since the last durable one: the counts after it if so, `None`
/// if it must be durable.
fn next_lazy((batches, lazy_bytes): (u32, u64), bytes: u64) -> Option<(u32, u64)> {
    let next = (batches + 1, lazy_bytes.saturating_add(bytes));
    (next.0 < DURABLE_APPLY_EVERY && next.1 < DURABLE_APPLY_BYTES).then_some(next)
}

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

const SNAPSHOT_EXT: &str = "snap";
const META_EXT: &str = "meta";
const PARTIAL_EXT: &str = "partial";

fn io_state(what: &str, path: &Path, e: std::io::Error) -> StateError {
    StateError::Corrupt(format!("{what} {}: {e}", path.display()))
}

/// The snapshot files in `dir`: the newest complete snapshot (a `.snap` whose `.meta` decodes)
/// and the highest file number seen. Everything else (partial files from a build or a transfer
/// cut short by a crash, older snapshots) is removed.
fn recover_snapshots(dir: &Path) -> Result<(Option<(Meta, PathBuf)>, u64), StateError> {
    let mut complete: Vec<(u64, Meta, PathBuf)> = Vec::new();
    let mut highest = 0u64;
    let mut stale: Vec<PathBuf> = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_state("read", dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| io_state("read", dir, e))?.path();
        let number = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok());
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let Some(n) = number else {
            stale.push(path);
            continue;
        };
        highest = highest.max(n);
        match ext {
            SNAPSHOT_EXT => {
                let meta = std::fs::read(path.with_extension(META_EXT))
                    .ok()
                    .and_then(|b| postcard::from_bytes::<Meta>(&b).ok());
                match meta {
                    Some(m) => complete.push((n, m, path)),
                    None => stale.push(path),
                }
            }
            META_EXT if path.with_extension(SNAPSHOT_EXT).exists() => {}
            _ => stale.push(path),
        }
    }
    complete.sort_by_key(|(n, _, _)| *n);
    let newest = complete.pop();
    for (_, _, path) in complete {
        stale.push(path.with_extension(META_EXT));
        stale.push(path);
    }
    for path in stale {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a stale snapshot file");
        }
    }
    Ok((newest.map(|(_, m, p)| (m, p)), highest))
}

impl StateMachine {
    /// Wrap a state store whose `registry` tables exist (see `Registry::init`). Snapshot files
    /// go to `snapshots/` beside the store's file.
    pub fn new(store: StateStore, registry: Registry) -> Result<StateMachine, StateError> {
        let txn = store.db().begin_write()?;
        txn.open_table(RAFT_META)?;
        txn.commit()?;
        let dir = store
            .path()
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("snapshots");
        std::fs::create_dir_all(&dir).map_err(|e| io_state("create", &dir, e))?;
        let (current, highest) = recover_snapshots(&dir)?;
        if let Some((meta, _)) = &current {
            tracing::info!(snapshot = %meta.snapshot_id, "found the latest snapshot on disk");
        }
        Ok(StateMachine {
            inner: Arc::new(Inner {
                store,
                registry,
                dir,
                current: Mutex::new(current),
                receiving: Mutex::new(None),
                built: Mutex::new(highest),
                lazy_applies: Mutex::new((0, 0)),
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

impl Inner {
    fn next_number(&self) -> u64 {
        let mut b = self.built.lock();
        *b += 1;
        *b
    }

    /// Make `data` (a complete, fsynced snapshot file) the current snapshot under `meta`: its
    /// metadata is written and synced first, then the data is renamed into place, then the
    /// previous snapshot's files are removed.
    fn publish(&self, meta: &Meta, data: &Path, n: u64) -> Result<PathBuf, StorageError> {
        let path = self.dir.join(format!("{n:020}.{SNAPSHOT_EXT}"));
        let meta_path = path.with_extension(META_EXT);
        let bytes = postcard::to_stdvec(meta).map_err(snap_err)?;
        let mut f = std::fs::File::create(&meta_path).map_err(snap_err)?;
        f.write_all(&bytes).map_err(snap_err)?;
        f.sync_all().map_err(snap_err)?;
        std::fs::rename(data, &path).map_err(snap_err)?;
        cairn_engine::sync_dir(&self.dir).map_err(snap_err)?;
        let previous = self.current.lock().replace((meta.clone(), path.clone()));
        if let Some((_, old)) = previous
            && old != path
        {
            // A sender may still be reading the old file: on Unix it stays readable until
            // closed.
            let _ = std::fs::remove_file(old.with_extension(META_EXT));
            let _ = std::fs::remove_file(&old);
        }
        Ok(path)
    }
}

async fn open_snapshot(path: &Path) -> Result<Box<tokio::fs::File>, StorageError> {
    tokio::fs::File::open(path)
        .await
        .map(Box::new)
        .map_err(|e| StorageIOError::read_snapshot(None, io_err(e)).into())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let inner = self.inner.clone();
        let (meta, path) = blocking(move || {
            // A snapshot lets openraft purge the log up to it: first make sure the state it
            // covers is on disk, so the log is never purged past what a restart can rebuild.
            make_durable(&inner.store)?;
            *inner.lazy_applies.lock() = (0, 0);
            let n = inner.next_number();
            let partial = inner.dir.join(format!("{n:020}.{PARTIAL_EXT}"));
            let file = std::fs::File::create(&partial).map_err(snap_err)?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let exported = inner.store.export_snapshot_with(&mut out, read_meta);
            let file = out.into_inner().map_err(|e| snap_err(e.error()));
            let (summary, (last, membership)) = match (exported, file) {
                (Ok(x), Ok(file)) => {
                    file.sync_all().map_err(snap_err)?;
                    x
                }
                (Err(e), _) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(snap_err(e));
                }
                (_, Err(e)) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e);
                }
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
            let path = inner.publish(&meta, &partial, n)?;
            tracing::info!(snapshot = %meta.snapshot_id, entries = summary.entries, path = %path.display(), "built snapshot");
            Ok((meta, path))
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: open_snapshot(&path).await?,
        })
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
            // DURABLE_APPLY_EVERY or once DURABLE_APPLY_BYTES have gone by, and before every
            // snapshot.
            let bytes: u64 = entries
                .iter()
                .map(|e| match &e.payload {
                    EntryPayload::Normal(p) => p.0.iter().map(|c| c.len() as u64).sum(),
                    _ => 0,
                })
                .sum();
            {
                let mut lazy = inner.lazy_applies.lock();
                match next_lazy(*lazy, bytes) {
                    Some(next) => {
                        *lazy = next;
                        txn.set_durability(redb::Durability::None)
                            .map_err(sm_write)?;
                    }
                    None => *lazy = (0, 0),
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let n = self.inner.next_number();
        let path = self.inner.dir.join(format!("{n:020}.{PARTIAL_EXT}"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        // openraft streams one snapshot at a time: a transfer begun before this one was
        // abandoned, and its file can go.
        if let Some(old) = self.inner.receiving.lock().replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncWriteExt;
        // Surface any write the file still has in flight.
        snapshot.flush().await.map_err(snap_err)?;
        let file = (*snapshot).into_std().await;
        let inner = self.inner.clone();
        let meta = meta.clone();
        blocking(move || {
            let mut file = file;
            file.rewind().map_err(snap_err)?;
            let summary = inner
                .store
                .import_snapshot(BufReader::with_capacity(1 << 20, &file))
                .map_err(snap_err)?;
            // A snapshot from an older release may lack a table this build has, or hold
            // records from before they carried versions: bring it to this build's layout.
            inner.registry.init(&inner.store).map_err(snap_err)?;
            tracing::info!(snapshot = %meta.snapshot_id, entries = summary.entries, "installed snapshot");
            // Keep the received file as the current snapshot when it is the one openraft
            // streamed into (the same inode as the file `begin_receiving_snapshot` made).
            let received = inner.receiving.lock().take();
            let same = |p: &Path| {
                use std::os::unix::fs::MetadataExt;
                match (file.metadata(), std::fs::metadata(p)) {
                    (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                }
            };
            match received {
                Some(p) if same(&p) => {
                    file.sync_all().map_err(snap_err)?;
                    let n = inner.next_number();
                    inner.publish(&meta, &p, n)?;
                }
                Some(p) => {
                    let _ = std::fs::remove_file(p);
                }
                None => {}
            }
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.inner.current.lock().clone();
        match current {
            Some((meta, path)) => Ok(Some(Snapshot {
                meta,
                snapshot: open_snapshot(&path).await?,
            })),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Play the rule over a run of batches of one size: the positions of the durable ones.
    fn durable_positions(batch_bytes: u64, batches: u32) -> Vec<u32> {
        let mut lazy = (0, 0);
        let mut out = Vec::new();
        for i in 0..batches {
            match next_lazy(lazy, batch_bytes) {
                Some(next) => lazy = next,
                None => {
                    out.push(i);
                    lazy = (0, 0);
                }
            }
        }
        out
    }

    #[test]
    fn small_batches_are_durable_once_in_durable_apply_every() {
        let every = DURABLE_APPLY_EVERY;
        assert_eq!(
            durable_positions(100, 3 * every),
            vec![every - 1, 2 * every - 1, 3 * every - 1]
        );
    }

    #[test]
    fn large_batches_are_durable_once_their_bytes_add_up() {
        // 60 KB batches, as 14 small PUTs make: every 18th is durable (18 * 60 KB >= 1 MiB).
        let per = DURABLE_APPLY_BYTES.div_ceil(60_000) as u32;
        assert!(per < DURABLE_APPLY_EVERY);
        assert_eq!(
            durable_positions(60_000, 2 * per),
            vec![per - 1, 2 * per - 1]
        );
        // A batch as large as the bound on its own is durable every time.
        assert_eq!(durable_positions(DURABLE_APPLY_BYTES, 3), vec![0, 1, 2]);
    }
}
