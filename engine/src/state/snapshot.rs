//! Snapshots: the whole state as one consistent, checksummed byte stream.
//!
//! ```text
//! "CAIRNSNP" (8) | format version u16 LE
//! then records, each starting with a tag byte:
//!   1 TABLE  name length u16 LE, name (UTF-8)
//!   2 ENTRY  key length u32 LE, key, value length u32 LE, value   (belongs to the last TABLE)
//!   3 END    tables u64 LE, entries u64 LE, BLAKE3 (32) of every byte before this digest
//! ```
//! Tables appear in name order and entries in key order, so the same state always gives the
//! same bytes. Export runs in one read transaction (consistent); import runs in one write
//! transaction that replaces every table and commits only if the digest matches (atomic).

use std::io::{Read, Write};

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::{StateError, StateStore};

const MAGIC: [u8; 8] = *b"CAIRNSNP";
/// Snapshot stream format version written and read by this build.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
const TAG_TABLE: u8 = 1;
const TAG_ENTRY: u8 = 2;
const TAG_END: u8 = 3;
/// Longest key or value a snapshot may carry (redb's own limit is 3 GiB; ours is far lower).
const ITEM_LEN_MAX: u32 = 256 << 20;
const NAME_LEN_MAX: u16 = 1024;

/// What a snapshot held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub tables: u64,
    pub entries: u64,
    pub digest: [u8; 32],
}

/// Why a snapshot could not be written or installed. A failed import changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot is malformed: {0}")]
    Malformed(String),
    #[error("snapshot checksum mismatch: the stream is damaged")]
    Checksum,
    #[error(transparent)]
    State(#[from] StateError),
}

fn st<T: Into<StateError>>(e: T) -> SnapshotError {
    SnapshotError::State(e.into())
}

/// A writer that hashes everything passing through it.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// A reader that hashes everything read through it.
struct Hashed<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Hashed<R> {
    fn take(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                SnapshotError::Malformed("stream ends early".into())
            }
            _ => SnapshotError::Io(e),
        })?;
        self.hasher.update(buf);
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        let mut b = [0u8; 1];
        self.take(&mut b)?;
        Ok(b[0])
    }

    fn u16(&mut self) -> Result<u16, SnapshotError> {
        let mut b = [0u8; 2];
        self.take(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut b = [0u8; 8];
        self.take(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn item(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let n = self.u32()?;
        if n > ITEM_LEN_MAX {
            return Err(SnapshotError::Malformed(format!(
                "item of {n} bytes exceeds {ITEM_LEN_MAX}"
            )));
        }
        let mut v = vec![0u8; n as usize];
        self.take(&mut v)?;
        Ok(v)
    }
}

impl StateStore {
    /// Write the whole state to `out` from one read transaction.
    pub fn export_snapshot(&self, out: impl Write) -> Result<SnapshotSummary, SnapshotError> {
        self.export_snapshot_with(out, |_| Ok(()))
            .map(|(summary, ())| summary)
    }

    /// Like [`Self::export_snapshot`], also returning what `read` finds in the same read
    /// transaction (the Raft layer reads the snapshot's last applied log id this way, so the
    /// two can never disagree).
    pub fn export_snapshot_with<T>(
        &self,
        out: impl Write,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, StateError>,
    ) -> Result<(SnapshotSummary, T), SnapshotError> {
        let txn = self.db().begin_read().map_err(st)?;
        let extra = read(&txn)?;
        let mut names: Vec<String> = txn
            .list_tables()
            .map_err(st)?
            .map(|h| h.name().to_owned())
            .collect();
        names.sort();
        let mut w = Hashing {
            inner: out,
            hasher: blake3::Hasher::new(),
        };
        w.put(&MAGIC)?;
        w.put(&SNAPSHOT_FORMAT_VERSION.to_le_bytes())?;
        let mut entries = 0u64;
        for name in &names {
            let def = TableDefinition::<&[u8], &[u8]>::new(name);
            let table = txn.open_table(def).map_err(st)?;
            w.put(&[TAG_TABLE])?;
            w.put(&(name.len() as u16).to_le_bytes())?;
            w.put(name.as_bytes())?;
            for item in table.iter().map_err(st)? {
                let (k, v) = item.map_err(st)?;
                let (k, v) = (k.value(), v.value());
                w.put(&[TAG_ENTRY])?;
                w.put(&(k.len() as u32).to_le_bytes())?;
                w.put(k)?;
                w.put(&(v.len() as u32).to_le_bytes())?;
                w.put(v)?;
                entries += 1;
            }
        }
        w.put(&[TAG_END])?;
        w.put(&(names.len() as u64).to_le_bytes())?;
        w.put(&entries.to_le_bytes())?;
        let digest = *w.hasher.finalize().as_bytes();
        w.inner.write_all(&digest)?;
        w.inner.flush()?;
        let summary = SnapshotSummary {
            tables: names.len() as u64,
            entries,
            digest,
        };
        Ok((summary, extra))
    }

    /// Replace the whole state with the snapshot read from `input`. Atomic: on any error
    /// (damaged stream, bad digest, I/O) the store is unchanged.
    pub fn import_snapshot(&self, input: impl Read) -> Result<SnapshotSummary, SnapshotError> {
        let mut r = Hashed {
            inner: input,
            hasher: blake3::Hasher::new(),
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if magic != MAGIC {
            return Err(SnapshotError::Malformed(
                "not a Cairn snapshot (bad magic)".into(),
            ));
        }
        let version = r.u16()?;
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::Malformed(format!(
                "unsupported snapshot format version {version} (this build reads {SNAPSHOT_FORMAT_VERSION})"
            )));
        }
        let txn = self.db().begin_write().map_err(st)?;
        let existing: Vec<String> = txn
            .list_tables()
            .map_err(st)?
            .map(|h| h.name().to_owned())
            .collect();
        for name in existing {
            let def = TableDefinition::<&[u8], &[u8]>::new(&name);
            txn.delete_table(def).map_err(st)?;
        }
        let mut tables = 0u64;
        let mut entries = 0u64;
        let mut table: Option<redb::Table<&[u8], &[u8]>> = None;
        let mut last_name: Option<String> = None;
        loop {
            match r.u8()? {
                TAG_TABLE => {
                    let n = r.u16()?;
                    if n == 0 || n > NAME_LEN_MAX {
                        return Err(SnapshotError::Malformed(format!("table name of {n} bytes")));
                    }
                    let mut name = vec![0u8; n as usize];
                    r.take(&mut name)?;
                    let name = String::from_utf8(name)
                        .map_err(|_| SnapshotError::Malformed("table name is not UTF-8".into()))?;
                    if last_name.as_ref().is_some_and(|l| *l >= name) {
                        return Err(SnapshotError::Malformed(format!(
                            "table {name:?} out of order"
                        )));
                    }
                    table = Some(
                        txn.open_table(TableDefinition::<&[u8], &[u8]>::new(&name))
                            .map_err(st)?,
                    );
                    last_name = Some(name);
                    tables += 1;
                }
                TAG_ENTRY => {
                    let Some(table) = table.as_mut() else {
                        return Err(SnapshotError::Malformed("entry before any table".into()));
                    };
                    let k = r.item()?;
                    let v = r.item()?;
                    table.insert(k.as_slice(), v.as_slice()).map_err(st)?;
                    entries += 1;
                }
                TAG_END => {
                    let want_tables = r.u64()?;
                    let want_entries = r.u64()?;
                    let computed = *r.hasher.finalize().as_bytes();
                    let mut stored = [0u8; 32];
                    r.inner
                        .read_exact(&mut stored)
                        .map_err(|e| match e.kind() {
                            std::io::ErrorKind::UnexpectedEof => {
                                SnapshotError::Malformed("stream ends early".into())
                            }
                            _ => SnapshotError::Io(e),
                        })?;
                    if computed != stored {
                        return Err(SnapshotError::Checksum);
                    }
                    if (want_tables, want_entries) != (tables, entries) {
                        return Err(SnapshotError::Malformed(format!(
                            "trailer counts {want_tables} tables / {want_entries} entries, stream had {tables} / {entries}"
                        )));
                    }
                    let mut extra = [0u8; 1];
                    if r.inner.read(&mut extra)? != 0 {
                        return Err(SnapshotError::Malformed(
                            "bytes after the end of the snapshot".into(),
                        ));
                    }
                    drop(table);
                    txn.commit().map_err(st)?;
                    return Ok(SnapshotSummary {
                        tables,
                        entries,
                        digest: computed,
                    });
                }
                tag => {
                    return Err(SnapshotError::Malformed(format!(
                        "unknown record tag {tag}"
                    )));
                }
            }
        }
    }
}
