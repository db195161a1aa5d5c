//! [`ChunkStore`]: the directory of chunk files, with the in-memory index of open chunks.
//!
//! Concurrency: the index is behind a `RwLock`; each chunk has a writer `Mutex` (appends, seal,
//! sync and version changes are serialised per chunk) and a small `RwLock`ed published state that
//! readers snapshot. Data below the published length and the checksum table entries of full
//! blocks below it never change, so reads run without holding any lock.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use memmap2::{Mmap, MmapOptions};
use parking_lot::{Mutex, RwLock};

use super::format::{
    self, BLOCK_SIZE, CHUNK_SIZE_MAX_LIMIT, FLAG_SEALED, Header, Layout, RECORD_OFFSETS,
    StateRecord,
};
use super::recovery::{self, QuarantinedFile, RecoverError, RecoveryReport, read_full_at};
use super::{ChunkError, ChunkHandle, ChunkStoreOptions, SealedReads, SyncPolicy};

const BS: u64 = BLOCK_SIZE as u64;
/// Piece size used when the store reads a whole chunk itself (verify, digest rebuild).
const SCAN_PIECE: u64 = 4 << 20;
/// Appends at least this large are hashed at the next sync rather than at once.
const DEFERRED_HASH_MIN: u64 = 256 << 10;
/// Opening a large store logs its progress every this many chunks.
const RECOVERY_PROGRESS_EVERY: usize = 10_000;

/// What the store knows about one chunk (the heartbeat report's row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub handle: ChunkHandle,
    pub version: u64,
    pub len: u64,
    pub sealed: bool,
    pub size_max: u64,
}

/// The result of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Offset in the chunk where the appended bytes start.
    pub offset: u64,
    /// Chunk length after the append.
    pub len: u64,
    /// Whether the appended bytes (and all before them) are already on disk.
    pub durable: bool,
}

/// The store of chunk files under one directory.
#[derive(Debug)]
pub struct ChunkStore {
    root: PathBuf,
    options: ChunkStoreOptions,
    chunks: RwLock<HashMap<ChunkHandle, Arc<Chunk>>>,
}

#[derive(Debug)]
struct Chunk {
    handle: ChunkHandle,
    path: PathBuf,
    file: File,
    layout: Layout,
    writer: Mutex<Writer>,
    published: RwLock<Published>,
}

#[derive(Debug)]
struct Writer {
    /// The state record last written and synced.
    record: StateRecord,
    /// Which record slot holds `record`.
    slot: usize,
    len: u64,
    tail_crc: u32,
    version: u64,
    /// Running digest of `[0, hashed_len)`. It catches up to `len` at every sync (while the
    /// fsync runs), on `seal` and on `digest`; after a reopen it starts again from 0.
    hasher: blake3::Hasher,
    hashed_len: u64,
    unsynced: u64,
    deleted: bool,
}

#[derive(Clone, Copy, Debug)]
struct Published {
    len: u64,
    tail_crc: u32,
    version: u64,
    sealed: bool,
    digest: [u8; 32],
}

/// A range of a sealed chunk's mapping, handed out as `Bytes` without copying.
struct MappedRange {
    map: Mmap,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

fn sync_dir(dir: &Path) -> Result<(), ChunkError> {
    crate::sync_dir(dir).map_err(ChunkError::io(format!("sync directory {}", dir.display())))
}

fn parse_chunk_name(name: &str) -> Option<ChunkHandle> {
    let hex = name.strip_suffix(".chunk")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(ChunkHandle)
}

impl ChunkStore {
    /// Open (creating if needed) the chunk store under `root`, recovering every chunk file.
    pub fn open(
        root: impl AsRef<Path>,
        options: ChunkStoreOptions,
    ) -> Result<(ChunkStore, RecoveryReport), ChunkError> {
        if options.chunk_size_max == 0 || options.chunk_size_max > CHUNK_SIZE_MAX_LIMIT {
            return Err(ChunkError::InvalidOption(format!(
                "chunk_size_max {} is outside 1..={CHUNK_SIZE_MAX_LIMIT}",
                options.chunk_size_max
            )));
        }
        if let SyncPolicy::Batch { bytes_max: 0 } = options.sync {
            return Err(ChunkError::InvalidOption(
                "batch sync bytes_max must be at least 1".into(),
            ));
        }
        let root = root.as_ref().to_path_buf();
        let quarantine = root.join("quarantine");
        fs::create_dir_all(&quarantine)
            .map_err(ChunkError::io(format!("create {}", quarantine.display())))?;

        let mut report = RecoveryReport::default();
        let mut chunks = HashMap::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for entry in
            fs::read_dir(&root).map_err(ChunkError::io(format!("list {}", root.display())))?
        {
            let entry = entry.map_err(ChunkError::io(format!("list {}", root.display())))?;
            let name = entry.file_name();
            if name.len() == 2 && entry.path().is_dir() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        for dir in dirs {
            let mut files: Vec<PathBuf> = Vec::new();
            for entry in
                fs::read_dir(&dir).map_err(ChunkError::io(format!("list {}", dir.display())))?
            {
                files.push(
                    entry
                        .map_err(ChunkError::io(format!("list {}", dir.display())))?
                        .path(),
                );
            }
            files.sort();
            for path in files {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned();
                if name.ends_with(".chunk.tmp") {
                    fs::remove_file(&path)
                        .map_err(ChunkError::io(format!("remove {}", path.display())))?;
                    report.temp_files_removed.push(path);
                    continue;
                }
                let Some(handle) = parse_chunk_name(&name) else {
                    tracing::warn!(path = %path.display(), "ignoring unknown file in chunk directory");
                    continue;
                };
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(ChunkError::io(format!("open {}", path.display())))?;
                if (chunks.len() + 1) % RECOVERY_PROGRESS_EVERY == 0 {
                    tracing::info!(opened = chunks.len() + 1, dir = %root.display(), "opening chunk store");
                }
                match recovery::recover(&file, &path, handle) {
                    Ok(r) => {
                        if let Some(t) = r.truncated.clone() {
                            report.truncated.push(t);
                        }
                        if r.damaged_record {
                            report.damaged_records.push(handle);
                        }
                        chunks.insert(
                            handle,
                            Arc::new(Chunk::from_recovered(handle, path, file, r)),
                        );
                    }
                    Err(RecoverError::BadHeader(reason)) => {
                        drop(file);
                        let to = quarantine_path(&quarantine, &name);
                        fs::rename(&path, &to)
                            .map_err(ChunkError::io(format!("quarantine {}", path.display())))?;
                        tracing::error!(chunk = %handle, from = %path.display(), to = %to.display(), %reason, "chunk file quarantined");
                        report.quarantined.push(QuarantinedFile {
                            chunk: Some(handle),
                            path: to,
                            reason,
                        });
                    }
                    Err(RecoverError::Chunk(e)) => return Err(e),
                }
            }
            sync_dir(&dir)?;
        }
        if !report.quarantined.is_empty() {
            sync_dir(&quarantine)?;
        }
        report.chunks = chunks.len();
        for t in &report.truncated {
            tracing::warn!(chunk = %t.chunk, kept = t.kept_len, dropped = t.dropped_bytes, reason = ?t.reason, "chunk cut back during recovery");
        }
        let store = ChunkStore {
            root,
            options,
            chunks: RwLock::new(chunks),
        };
        Ok((store, report))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> ChunkStoreOptions {
        self.options
    }

    fn get(&self, handle: ChunkHandle) -> Result<Arc<Chunk>, ChunkError> {
        self.chunks
            .read()
            .get(&handle)
            .cloned()
            .ok_or(ChunkError::NotFound { chunk: handle })
    }

    fn path_of(&self, handle: ChunkHandle) -> (PathBuf, PathBuf) {
        let dir = self.root.join(format!("{:02x}", handle.0 & 0xff));
        let path = dir.join(format!("{handle}.chunk"));
        (dir, path)
    }

    /// Create an empty chunk with the given GFS version. Durable (file and directory entry
    /// synced) when it returns.
    pub fn create(&self, handle: ChunkHandle, version: u64) -> Result<ChunkInfo, ChunkError> {
        if self.chunks.read().contains_key(&handle) {
            return Err(ChunkError::AlreadyExists { chunk: handle });
        }
        let (dir, path) = self.path_of(handle);
        let ctx = || format!("create chunk {handle}");
        fs::create_dir_all(&dir).map_err(ChunkError::io(ctx()))?;
        let tmp = dir.join(format!("{handle}.chunk.tmp"));
        let layout = Layout::new(self.options.chunk_size_max);
        let record = StateRecord {
            seq: 1,
            version,
            len: 0,
            tail_crc: 0,
            flags: 0,
            digest: [0; 32],
        };
        {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => {
                        ChunkError::AlreadyExists { chunk: handle }
                    }
                    _ => ChunkError::Io {
                        context: ctx(),
                        source: e,
                    },
                })?;
            let header = Header {
                handle,
                size_max: layout.size_max,
            };
            let written = file
                .write_all_at(&header.encode(), 0)
                .and_then(|()| file.write_all_at(&record.encode(), RECORD_OFFSETS[0]))
                .and_then(|()| file.set_len(layout.data_offset))
                .and_then(|()| file.sync_all());
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(ChunkError::Io {
                    context: ctx(),
                    source: e,
                });
            }
        }
        // A hard link fails if the name exists, so a concurrent create of the same handle
        // cannot replace a chunk; the temporary name is then removed.
        fs::hard_link(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            match e.kind() {
                std::io::ErrorKind::AlreadyExists => ChunkError::AlreadyExists { chunk: handle },
                _ => ChunkError::Io {
                    context: ctx(),
                    source: e,
                },
            }
        })?;
        fs::remove_file(&tmp).map_err(ChunkError::io(ctx()))?;
        sync_dir(&dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(ChunkError::io(ctx()))?;
        let chunk = Chunk {
            handle,
            path,
            file,
            layout,
            writer: Mutex::new(Writer {
                record,
                slot: 0,
                len: 0,
                tail_crc: 0,
                version,
                hasher: blake3::Hasher::new(),
                hashed_len: 0,
                unsynced: 0,
                deleted: false,
            }),
            published: RwLock::new(Published {
                len: 0,
                tail_crc: 0,
                version,
                sealed: false,
                digest: [0; 32],
            }),
        };
        let info = chunk.info();
        self.chunks.write().insert(handle, Arc::new(chunk));
        Ok(info)
    }

    /// Append `data` to the end of a chunk. Under [`SyncPolicy::Always`] the bytes are on disk
    /// when this returns; under `Batch` see [`AppendOutcome::durable`].
    pub fn append(&self, handle: ChunkHandle, data: &[u8]) -> Result<AppendOutcome, ChunkError> {
        let chunk = self.get(handle)?;
        let mut w = chunk.writer.lock();
        if w.deleted {
            return Err(ChunkError::NotFound { chunk: handle });
        }
        if w.record.sealed() {
            return Err(ChunkError::Sealed { chunk: handle });
        }
        let n = data.len() as u64;
        if w.len + n > chunk.layout.size_max {
            return Err(ChunkError::ChunkFull {
                chunk: handle,
                len: w.len,
                append: n,
                size_max: chunk.layout.size_max,
            });
        }
        let offset = w.len;
        if n == 0 {
            return Ok(AppendOutcome {
                offset,
                len: offset,
                durable: w.unsynced == 0,
            });
        }
        let (pos, crc) = chunk.write_data(offset, w.tail_crc, data)?;
        // Small appends are hashed now; large ones at the next sync, while the fsync runs
        // (BLAKE3 costs about as much CPU as the write itself; see BENCHMARKS.md).
        if w.hashed_len == offset && n < DEFERRED_HASH_MIN {
            w.hasher.update(data);
            w.hashed_len = pos;
        }
        w.len = pos;
        w.tail_crc = crc;
        w.unsynced += n;
        {
            let mut p = chunk.published.write();
            p.len = pos;
            p.tail_crc = crc;
        }
        let durable = match self.options.sync {
            SyncPolicy::Always => true,
            SyncPolicy::Batch { bytes_max } => w.unsynced >= bytes_max,
        };
        if durable {
            chunk.sync_locked(&mut w, Some((offset, data)))?;
        }
        Ok(AppendOutcome {
            offset,
            len: pos,
            durable,
        })
    }

    /// Make everything appended to the chunk durable.
    pub fn sync(&self, handle: ChunkHandle) -> Result<(), ChunkError> {
        let chunk = self.get(handle)?;
        let mut w = chunk.writer.lock();
        if w.deleted {
            return Err(ChunkError::NotFound { chunk: handle });
        }
        chunk.sync_locked(&mut w, None)
    }

    /// Sync every chunk with unsynced appends (shutdown, periodic flush).
    pub fn sync_all(&self) -> Result<(), ChunkError> {
        let all: Vec<Arc<Chunk>> = self.chunks.read().values().cloned().collect();
        for chunk in all {
            let mut w = chunk.writer.lock();
            if !w.deleted && w.unsynced > 0 {
                chunk.sync_locked(&mut w, None)?;
            }
        }
        Ok(())
    }

    /// Seal a chunk: sync it and record its final BLAKE3 digest. Idempotent.
    pub fn seal(&self, handle: ChunkHandle) -> Result<ChunkInfo, ChunkError> {
        let chunk = self.get(handle)?;
        let mut w = chunk.writer.lock();
        if w.deleted {
            return Err(ChunkError::NotFound { chunk: handle });
        }
        if !w.record.sealed() {
            chunk.hash_pending(&mut w, None)?;
            let digest = *w.hasher.finalize().as_bytes();
            chunk.write_record(&mut w, FLAG_SEALED, digest)?;
            let mut p = chunk.published.write();
            p.sealed = true;
            p.digest = digest;
        }
        Ok(chunk.info())
    }

    /// Set the chunk's GFS version (bumped by the master at each lease grant). Durable on return.
    pub fn set_version(&self, handle: ChunkHandle, version: u64) -> Result<ChunkInfo, ChunkError> {
        let chunk = self.get(handle)?;
        let mut w = chunk.writer.lock();
        if w.deleted {
            return Err(ChunkError::NotFound { chunk: handle });
        }
        w.version = version;
        let (flags, digest) = (w.record.flags, w.record.digest);
        chunk.write_record(&mut w, flags, digest)?;
        chunk.published.write().version = version;
        Ok(chunk.info())
    }

    /// Delete a chunk; its file is unlinked and the directory synced. Reads already in flight
    /// finish on the open file.
    pub fn delete(&self, handle: ChunkHandle) -> Result<(), ChunkError> {
        let chunk = self
            .chunks
            .write()
            .remove(&handle)
            .ok_or(ChunkError::NotFound { chunk: handle })?;
        let mut w = chunk.writer.lock();
        w.deleted = true;
        let ctx = format!("delete chunk {handle}");
        fs::remove_file(&chunk.path).map_err(ChunkError::io(ctx))?;
        if let Some(dir) = chunk.path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    pub fn stat(&self, handle: ChunkHandle) -> Result<ChunkInfo, ChunkError> {
        Ok(self.get(handle)?.info())
    }

    /// Every chunk in the store, ordered by handle.
    pub fn list(&self) -> Vec<ChunkInfo> {
        let mut all: Vec<ChunkInfo> = self.chunks.read().values().map(|c| c.info()).collect();
        all.sort_by_key(|i| i.handle);
        all
    }

    /// Read `len` bytes at `offset`. Every block the range touches is verified; a block whose
    /// checksum does not match fails the read with [`ChunkError::Corrupt`].
    pub fn read(&self, handle: ChunkHandle, offset: u64, len: u64) -> Result<Bytes, ChunkError> {
        let chunk = self.get(handle)?;
        let p = *chunk.published.read();
        chunk.read_verified(&p, offset, len, self.options.sealed_reads)
    }

    /// Verify every block of a chunk (the scrubber's pass). Returns the first corrupt block.
    pub fn verify(&self, handle: ChunkHandle) -> Result<(), ChunkError> {
        let chunk = self.get(handle)?;
        let p = *chunk.published.read();
        let mut offset = 0;
        while offset < p.len {
            let n = SCAN_PIECE.min(p.len - offset);
            chunk.read_verified(&p, offset, n, SealedReads::Pread)?;
            offset += n;
        }
        Ok(())
    }

    /// BLAKE3 digest of the chunk's current content (final once sealed).
    pub fn digest(&self, handle: ChunkHandle) -> Result<[u8; 32], ChunkError> {
        let chunk = self.get(handle)?;
        let mut w = chunk.writer.lock();
        if w.deleted {
            return Err(ChunkError::NotFound { chunk: handle });
        }
        if w.record.sealed() {
            return Ok(w.record.digest);
        }
        chunk.hash_pending(&mut w, None)?;
        Ok(*w.hasher.finalize().as_bytes())
    }

    /// Sync everything and close the store.
    pub fn close(self) -> Result<(), ChunkError> {
        self.sync_all()
    }

    /// Whether the store's directory is present and usable (readiness check).
    pub fn check(&self) -> Result<(), ChunkError> {
        let md = fs::metadata(&self.root)
            .map_err(ChunkError::io(format!("stat {}", self.root.display())))?;
        if !md.is_dir() {
            return Err(ChunkError::Io {
                context: format!("check {}", self.root.display()),
                source: std::io::Error::other("not a directory"),
            });
        }
        Ok(())
    }
}

fn quarantine_path(dir: &Path, name: &str) -> PathBuf {
    let mut to = dir.join(name);
    let mut n = 1;
    while to.exists() {
        to = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    to
}

impl Chunk {
    fn from_recovered(
        handle: ChunkHandle,
        path: PathBuf,
        file: File,
        r: recovery::Recovered,
    ) -> Chunk {
        let s = r.state;
        Chunk {
            handle,
            path,
            file,
            layout: r.layout,
            writer: Mutex::new(Writer {
                record: s,
                slot: r.slot,
                len: s.len,
                tail_crc: s.tail_crc,
                version: s.version,
                hasher: blake3::Hasher::new(),
                hashed_len: 0,
                unsynced: 0,
                deleted: false,
            }),
            published: RwLock::new(Published {
                len: s.len,
                tail_crc: s.tail_crc,
                version: s.version,
                sealed: s.sealed(),
                digest: s.digest,
            }),
        }
    }

    fn info(&self) -> ChunkInfo {
        let p = *self.published.read();
        ChunkInfo {
            handle: self.handle,
            version: p.version,
            len: p.len,
            sealed: p.sealed,
            size_max: self.layout.size_max,
        }
    }

    /// Write appended bytes at `offset` and the table entries of every block they complete.
    /// Returns the new length and the running checksum of the new partial block.
    fn write_data(
        &self,
        offset: u64,
        tail_crc: u32,
        data: &[u8],
    ) -> Result<(u64, u32), ChunkError> {
        let ctx = || format!("append to chunk {}", self.handle);
        self.file
            .write_all_at(data, self.layout.data_offset + offset)
            .map_err(ChunkError::io(ctx()))?;
        // Continue the partial block's CRC; every block that becomes full gets its table entry,
        // written as one contiguous run.
        let mut crc = tail_crc;
        let mut pos = offset;
        let mut rest = data;
        let mut entries: Vec<u8> = Vec::new();
        while !rest.is_empty() {
            let take = ((BS - pos % BS) as usize).min(rest.len());
            crc = format::crc_append(crc, &rest[..take]);
            pos += take as u64;
            rest = &rest[take..];
            if pos.is_multiple_of(BS) {
                entries.extend_from_slice(&crc.to_le_bytes());
                crc = 0;
            }
        }
        if !entries.is_empty() {
            self.file
                .write_all_at(&entries, self.layout.table_entry_offset(offset / BS))
                .map_err(ChunkError::io(ctx()))?;
        }
        Ok((pos, crc))
    }

    /// The state record that a sync writes next.
    fn next_record(w: &Writer, flags: u32, digest: [u8; 32]) -> StateRecord {
        StateRecord {
            seq: w.record.seq + 1,
            version: w.version,
            len: w.len,
            tail_crc: w.tail_crc,
            flags,
            digest,
        }
    }

    /// Write `record` into `slot` and fdatasync: after this, everything written before is
    /// durable and described by `record`.
    fn persist_record(&self, record: &StateRecord, slot: usize) -> Result<(), ChunkError> {
        let ctx = || format!("sync chunk {}", self.handle);
        self.file
            .write_all_at(&record.encode(), RECORD_OFFSETS[slot])
            .map_err(ChunkError::io(ctx()))?;
        self.file.sync_data().map_err(ChunkError::io(ctx()))
    }

    /// Write the next state record (into the slot not holding the current one) and sync.
    fn write_record(&self, w: &mut Writer, flags: u32, digest: [u8; 32]) -> Result<(), ChunkError> {
        let record = Self::next_record(w, flags, digest);
        let slot = 1 - w.slot;
        self.persist_record(&record, slot)?;
        w.record = record;
        w.slot = slot;
        w.unsynced = 0;
        Ok(())
    }

    /// Make the chunk durable. The digest catches up with the data at the same time: on this
    /// thread while another one waits for the fsync, which leaves a core idle for long enough.
    /// `fresh` is the append that triggered the sync, if any, to hash without reading it back.
    fn sync_locked(&self, w: &mut Writer, fresh: Option<(u64, &[u8])>) -> Result<(), ChunkError> {
        if w.unsynced == 0 && w.record.len == w.len {
            return Ok(());
        }
        let record = Self::next_record(w, w.record.flags, w.record.digest);
        let slot = 1 - w.slot;
        if w.len - w.hashed_len < DEFERRED_HASH_MIN {
            self.hash_pending(w, fresh)?;
            self.persist_record(&record, slot)?;
        } else {
            let synced = std::thread::scope(|s| {
                let syncing = s.spawn(|| self.persist_record(&record, slot));
                if let Err(e) = self.hash_pending(w, fresh) {
                    // Not a sync failure: the digest is retried by `seal` and `digest`.
                    tracing::warn!(chunk = %self.handle, error = %e, "digest catch-up failed");
                }
                syncing.join().unwrap_or_else(|_| {
                    Err(ChunkError::Io {
                        context: format!("sync chunk {}", self.handle),
                        source: std::io::Error::other("sync thread panicked"),
                    })
                })
            });
            synced?;
        }
        w.record = record;
        w.slot = slot;
        w.unsynced = 0;
        Ok(())
    }

    /// Bring the digest up to `len`: from `fresh` (an append's own bytes) when it starts where
    /// the digest stops, otherwise from verified reads of the chunk.
    fn hash_pending(&self, w: &mut Writer, fresh: Option<(u64, &[u8])>) -> Result<(), ChunkError> {
        let p = *self.published.read();
        while w.hashed_len < w.len {
            match fresh {
                Some((at, bytes)) if at == w.hashed_len => {
                    w.hasher.update(bytes);
                    w.hashed_len += bytes.len() as u64;
                }
                _ => {
                    // Read back up to where the fresh bytes start (or to the end).
                    let stop = match fresh {
                        Some((at, _)) if at > w.hashed_len => at,
                        _ => w.len,
                    };
                    let n = SCAN_PIECE.min(stop - w.hashed_len);
                    let piece = self.read_verified(&p, w.hashed_len, n, SealedReads::Pread)?;
                    w.hasher.update(&piece);
                    w.hashed_len += n;
                }
            }
        }
        Ok(())
    }

    fn read_verified(
        &self,
        p: &Published,
        offset: u64,
        len: u64,
        sealed_reads: SealedReads,
    ) -> Result<Bytes, ChunkError> {
        let out_of_range = offset.checked_add(len).is_none_or(|end| end > p.len);
        if out_of_range {
            return Err(ChunkError::OutOfRange {
                chunk: self.handle,
                offset,
                len,
                chunk_len: p.len,
            });
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        let first = offset / BS;
        let start = first * BS;
        let end = (offset + len).div_ceil(BS).saturating_mul(BS).min(p.len);
        // Full blocks in range take their checksum from the table; only the chunk's last
        // partial block (if the range reaches it) uses the tail checksum.
        let full_end = (end / BS).max(first);
        let mut table = vec![0u8; 4 * (full_end - first) as usize];
        let ctx = || format!("read chunk {}", self.handle);
        let table_ok = read_full_at(
            &self.file,
            &mut table,
            self.layout.table_entry_offset(first),
        )
        .map_err(ChunkError::io(ctx()))?;
        // The file is shorter than its durable state: damaged underneath us.
        let cut_short = || ChunkError::Corrupt {
            chunk: self.handle,
            block: first,
        };
        if !table_ok {
            return Err(cut_short());
        }
        if p.sealed && sealed_reads == SealedReads::Mmap {
            let map = self.mapping(p, start, end)?;
            self.verify_blocks(first, &map, &table, p)?;
            let a = (offset - start) as usize;
            return Ok(Bytes::from_owner(MappedRange {
                map,
                start: a,
                end: a + len as usize,
            }));
        }
        let mut buf = BytesMut::zeroed((end - start) as usize);
        let data_ok = read_full_at(&self.file, &mut buf, self.layout.data_offset + start)
            .map_err(ChunkError::io(ctx()))?;
        if !data_ok {
            return Err(cut_short());
        }
        self.verify_blocks(first, &buf, &table, p)?;
        let rel = (offset - start) as usize;
        Ok(buf.freeze().slice(rel..rel + len as usize))
    }

    fn verify_blocks(
        &self,
        first: u64,
        data: &[u8],
        table: &[u8],
        p: &Published,
    ) -> Result<(), ChunkError> {
        for (i, block_data) in data.chunks(BS as usize).enumerate() {
            let block = first + i as u64;
            let expected = match table.get(4 * i..4 * i + 4) {
                Some(e) if block_data.len() as u64 == BS => {
                    u32::from_le_bytes([e[0], e[1], e[2], e[3]])
                }
                _ => p.tail_crc,
            };
            if format::crc(block_data) != expected {
                return Err(ChunkError::Corrupt {
                    chunk: self.handle,
                    block,
                });
            }
        }
        Ok(())
    }

    /// A read-only mapping of data bytes `[start, end)` of a sealed chunk (`start` is a block
    /// boundary, so page-aligned), made for one read and unmapped when the last `Bytes` of that
    /// read is dropped.
    ///
    /// Not kept per chunk: pages a mapping has touched count in the process's RSS (and in the
    /// OOM killer's score) for as long as it lives, so mappings kept for every chunk ever read
    /// made a chunkserver's RSS grow with the data it had served (1.1 GiB after reading back a
    /// 1 GiB object), and each one holds a VMA against `vm.max_map_count` (65,530 by default:
    /// 4 TiB of 64 MiB chunks). The pages stay in the page cache either way.
    fn mapping(&self, p: &Published, start: u64, end: u64) -> Result<Mmap, ChunkError> {
        let ctx = || format!("map chunk {}", self.handle);
        let file_len = self.file.metadata().map_err(ChunkError::io(ctx()))?.len();
        if file_len < self.layout.data_offset + p.len {
            return Err(ChunkError::Corrupt {
                chunk: self.handle,
                block: file_len.saturating_sub(self.layout.data_offset) / BS,
            });
        }
        // SAFETY: the mapping covers only data of a sealed chunk, which this store never writes
        // again (state records live in page 0, outside the mapping), and recovery truncates
        // files before any read. An unlink leaves the mapping valid. Truncation by another
        // process would fault; the store's directory is owned by the one process holding the
        // data folder lock.
        #[allow(unsafe_code)]
        let map = unsafe {
            MmapOptions::new()
                .offset(self.layout.data_offset + start)
                .len((end - start) as usize)
                .map(&self.file)
        }
        .map_err(ChunkError::io(ctx()))?;
        Ok(map)
    }
}
