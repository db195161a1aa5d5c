//! Crash recovery of one chunk file, and the report of what recovery found.
//!
//! A record is written only after the previous record's sync completed, so the older valid
//! record always describes durable data. The newer one is trusted only once the blocks written
//! since the older one verify against their checksums; otherwise recovery falls back to the
//! older record, and failing that salvages the longest prefix of verified full blocks. Bytes past
//! the chosen length (an unsynced, possibly torn tail) are cut off, and everything but an
//! ordinary torn tail is reported.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{
    self, BLOCK_SIZE, DecodeError, Header, Layout, PAGE, RECORD_LEN, RECORD_OFFSETS, StateRecord,
};
use super::{ChunkError, ChunkHandle};

/// What opening a chunk store found and did. Nothing is deleted silently: damaged files are
/// moved aside, cut tails are listed with their sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Chunks opened (after recovery).
    pub chunks: usize,
    /// Chunks whose file was longer or shorter than their durable state and were cut back.
    pub truncated: Vec<TruncatedChunk>,
    /// Files that are not readable chunk files; moved to `chunks/quarantine/`.
    pub quarantined: Vec<QuarantinedFile>,
    /// Chunks one of whose two state records was damaged (the other one was used).
    pub damaged_records: Vec<ChunkHandle>,
    /// Leftovers of chunk creations interrupted by a crash, removed.
    pub temp_files_removed: Vec<PathBuf>,
}

impl RecoveryReport {
    /// True when recovery found nothing but clean chunks and ordinary torn tails.
    pub fn is_clean(&self) -> bool {
        self.quarantined.is_empty()
            && self.damaged_records.is_empty()
            && self
                .truncated
                .iter()
                .all(|t| t.reason == TruncateReason::UnsyncedTail)
    }

    /// Whether the report mentions `chunk` at all.
    pub fn mentions(&self, chunk: ChunkHandle) -> bool {
        self.truncated.iter().any(|t| t.chunk == chunk)
            || self.damaged_records.contains(&chunk)
            || self.quarantined.iter().any(|q| q.chunk == Some(chunk))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncatedChunk {
    pub chunk: ChunkHandle,
    /// Length the chunk has after recovery.
    pub kept_len: u64,
    /// Bytes of data past `kept_len` that were cut off.
    pub dropped_bytes: u64,
    pub reason: TruncateReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TruncateReason {
    /// Bytes written after the last sync (never acknowledged as durable).
    UnsyncedTail,
    /// The newest state record's data failed verification (a sync torn by the crash, or
    /// damage); the previous record was used.
    NewestRecordUnverified,
    /// Neither record's data verified; the longest run of verified full blocks was kept.
    Salvaged,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantinedFile {
    /// The chunk the file name claims, when it parses.
    pub chunk: Option<ChunkHandle>,
    /// Where the file is now.
    pub path: PathBuf,
    pub reason: String,
}

/// The outcome of recovering one chunk file.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub layout: Layout,
    pub state: StateRecord,
    /// Index (0 or 1) of the record slot holding `state`.
    pub slot: usize,
    pub truncated: Option<TruncatedChunk>,
    pub damaged_record: bool,
}

/// Recovery failures: a bad header (the caller quarantines the file) or an I/O error.
#[derive(Debug)]
pub(crate) enum RecoverError {
    BadHeader(String),
    Chunk(ChunkError),
}

impl From<ChunkError> for RecoverError {
    fn from(e: ChunkError) -> Self {
        RecoverError::Chunk(e)
    }
}

/// Reads `buf.len()` bytes at `offset`; `Ok(false)` when the file ends first.
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<bool> {
    match file.read_exact_at(buf, offset) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the data blocks from `first_block` up to `len` verify: full blocks against the
/// checksum table, a final partial block against `tail_crc`. Missing bytes count as failure.
fn blocks_verify(
    file: &File,
    layout: &Layout,
    first_block: u64,
    len: u64,
    tail_crc: u32,
    path: &Path,
) -> Result<bool, ChunkError> {
    let bs = u64::from(BLOCK_SIZE);
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    for block in first_block..len.div_ceil(bs) {
        let start = block * bs;
        let n = (len - start).min(bs) as usize;
        let expected = if n as u64 == bs {
            let mut e = [0u8; 4];
            if !read_full_at(file, &mut e, layout.table_entry_offset(block)).map_err(
                ChunkError::io(format!("read checksum table of {}", path.display())),
            )? {
                return Ok(false);
            }
            u32::from_le_bytes(e)
        } else {
            tail_crc
        };
        if !read_full_at(file, &mut buf[..n], layout.data_offset + start)
            .map_err(ChunkError::io(format!("read {}", path.display())))?
        {
            return Ok(false);
        }
        if format::crc(&buf[..n]) != expected {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Recover the chunk file `file` (at `path`, named for chunk `expected`): choose its state,
/// cut its tail back to that state, and rewrite the state record when recovery had to fall back.
pub(crate) fn recover(
    file: &File,
    path: &Path,
    expected: ChunkHandle,
) -> Result<Recovered, RecoverError> {
    let ctx = || format!("recover {}", path.display());
    let file_len = file.metadata().map_err(ChunkError::io(ctx()))?.len();
    let mut page = vec![0u8; file_len.min(PAGE) as usize];
    file.read_exact_at(&mut page, 0)
        .map_err(ChunkError::io(ctx()))?;

    let header = Header::decode(&page).map_err(|e| RecoverError::BadHeader(e.to_string()))?;
    if header.handle != expected {
        return Err(RecoverError::BadHeader(format!(
            "file name says chunk {expected}, header says chunk {}",
            header.handle
        )));
    }
    let layout = Layout::new(header.size_max);

    let mut valid: Vec<(usize, StateRecord)> = Vec::with_capacity(2);
    let mut damaged_record = false;
    for (slot, &offset) in RECORD_OFFSETS.iter().enumerate() {
        let start = offset as usize;
        let bytes = page.get(start..start + RECORD_LEN).unwrap_or(&[]);
        match StateRecord::decode(bytes, header.size_max) {
            Ok(r) => valid.push((slot, r)),
            Err(DecodeError::RecordEmpty) => {}
            Err(_) => damaged_record = true,
        }
    }
    valid.sort_by_key(|r| std::cmp::Reverse(r.1.seq));
    let Some(&(cur_slot, cur)) = valid.first() else {
        return Err(RecoverError::BadHeader("no valid state record".into()));
    };
    let prev = valid.get(1).copied();
    let disk_len = file_len.saturating_sub(layout.data_offset);
    let bs = u64::from(BLOCK_SIZE);

    // 1. The newest record, checking only what was written since the previous one.
    let since = prev.map_or(0, |(_, p)| p.len.min(cur.len));
    let cur_ok = cur.len <= disk_len
        && blocks_verify(file, &layout, since / bs, cur.len, cur.tail_crc, path)?;
    let (state, reason) = if cur_ok {
        (cur, TruncateReason::UnsyncedTail)
    } else if let Some((_, p)) = prev.filter(|(_, p)| {
        // 2. The previous record: its data was synced before the newest record was written,
        // so only its partial tail block (whose checksum lives in the record) needs a look.
        p.len <= disk_len
    }) && blocks_verify(file, &layout, p.len / bs, p.len, p.tail_crc, path)?
    {
        (p, TruncateReason::NewestRecordUnverified)
    } else {
        // 3. Salvage: the longest run of full blocks that verify, as an unsealed chunk.
        let limit = cur.len.min(disk_len) / bs;
        let mut good = 0;
        while good < limit && blocks_verify(file, &layout, good, (good + 1) * bs, 0, path)? {
            good += 1;
        }
        let salvaged = StateRecord {
            len: good * bs,
            tail_crc: 0,
            flags: 0,
            digest: [0; 32],
            ..cur
        };
        (salvaged, TruncateReason::Salvaged)
    };

    let mut slot = cur_slot;
    let mut state = state;
    if reason != TruncateReason::UnsyncedTail {
        // Overwrite the newest (untrusted) record with the recovered state, so that a later
        // recovery cannot pick the untrusted record up again once new bytes cover its range.
        state.seq = cur.seq + 1;
        file.write_all_at(&state.encode(), RECORD_OFFSETS[cur_slot])
            .map_err(ChunkError::io(ctx()))?;
        slot = cur_slot;
    }
    let want_len = layout.data_offset + state.len;
    let dropped_bytes = disk_len.saturating_sub(state.len);
    if file_len != want_len {
        file.set_len(want_len).map_err(ChunkError::io(ctx()))?;
    }
    if file_len != want_len || reason != TruncateReason::UnsyncedTail {
        file.sync_all().map_err(ChunkError::io(ctx()))?;
    }
    let truncated =
        (dropped_bytes > 0 || reason != TruncateReason::UnsyncedTail).then_some(TruncatedChunk {
            chunk: expected,
            kept_len: state.len,
            dropped_bytes,
            reason,
        });
    Ok(Recovered {
        layout,
        state,
        slot,
        truncated,
        damaged_record,
    })
}
