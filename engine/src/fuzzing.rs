//! Bodies of the fuzz targets in `fuzz/`, kept here so the ordinary test suite runs them too
//! (over generated inputs) without a fuzzer. Each must return normally on any input.

use std::io::Write;

use crate::chunk::format::{Header, PAGE, RECORD_OFFSETS, StateRecord};
use crate::chunk::{ChunkHandle, ChunkStore, ChunkStoreOptions};
use crate::state::settings::ClusterSettings;
use crate::state::{Command, Registry, StateStore, Typed};

/// Decode arbitrary bytes as a chunk header and state records, and as a whole chunk file
/// opened by a real store in a scratch directory: every outcome is a value or a typed error,
/// and every byte a read returns verified against its checksum.
pub fn chunk_file(data: &[u8]) {
    if let Ok(h) = Header::decode(data) {
        for off in RECORD_OFFSETS {
            let start = off as usize;
            if let Some(b) = data.get(start..) {
                let _ = StateRecord::decode(b, h.size_max);
            }
        }
    }
    // Files smaller than a header page are refused without touching the disk logic further.
    if data.len() < 64 {
        return;
    }
    let Ok(dir) = tempfile::tempdir() else { return };
    let handle = ChunkHandle(u64::from_le_bytes(
        data.get(16..24)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 8]),
    ));
    let sub = dir.path().join(format!("{:02x}", handle.0 & 0xff));
    if std::fs::create_dir_all(&sub).is_err() {
        return;
    }
    let path = sub.join(format!("{handle}.chunk"));
    let Ok(mut f) = std::fs::File::create(&path) else {
        return;
    };
    if f.write_all(data).is_err() {
        return;
    }
    drop(f);
    let Ok((store, _report)) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()) else {
        return;
    };
    for info in store.list() {
        let step = (info.len / 7).max(1);
        let mut off = 0;
        while off < info.len {
            let n = step.min(info.len - off);
            let _ = store.read(info.handle, off, n);
            off += n;
        }
        let _ = store.verify(info.handle);
        let _ = store.append(info.handle, &data[..data.len().min(PAGE as usize)]);
    }
}

/// Decode arbitrary bytes as a command envelope and apply them through a real registry.
pub fn command(data: &[u8]) {
    let _ = Command::decode(data);
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(store) = StateStore::open(dir.path().join("state.redb")) else {
        return;
    };
    let mut registry = Registry::new();
    if registry.register(Typed(ClusterSettings)).is_err() || registry.init(&store).is_err() {
        return;
    }
    let _ = registry.apply_batch(&store, [(1, data)]);
}
