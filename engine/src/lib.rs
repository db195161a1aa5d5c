//! Cairn's embedded storage engine: the bottom floor under chunkservers and masters, with no
//! networking.
//!
//! - [`chunk`]: append-only chunk files with a CRC-32C per 64 KiB block, BLAKE3 digests, a sync
//!   policy, and crash recovery that cuts torn tails and reports what it dropped.
//! - [`state`]: the redb-backed state store, the deterministic [`state::Service`] trait every
//!   platform service implements, the registry that applies batches of versioned commands, and
//!   consistent checksummed snapshots.

pub mod chunk;
pub mod fuzzing;
pub mod state;
pub mod wire;

/// fsync a directory, so a file created, renamed or removed in it survives a crash.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
