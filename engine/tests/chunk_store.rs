//! The chunk store against an in-memory model, and against crashes and damaged files.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_engine::chunk::format::{BLOCK_SIZE, HEADER_LEN, Layout, RECORD_LEN, RECORD_OFFSETS};
use cairn_engine::chunk::{
    ChunkError, ChunkHandle, ChunkStore, ChunkStoreOptions, SealedReads, SyncPolicy,
};
use proptest::prelude::*;

const BS: u64 = BLOCK_SIZE as u64;

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    // xorshift: cheap, varied content so checksums of different ranges differ.
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn opts(sync: SyncPolicy) -> ChunkStoreOptions {
    ChunkStoreOptions {
        sync,
        ..ChunkStoreOptions::default()
    }
}

fn chunk_path(root: &Path, h: ChunkHandle) -> PathBuf {
    root.join(format!("{:02x}", h.0 & 0xff))
        .join(format!("{h}.chunk"))
}

#[test]
fn lifecycle_and_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
    assert!(report.is_clean());
    let h = ChunkHandle(0x3f);
    assert_eq!(store.create(h, 1).unwrap().len, 0);
    assert!(matches!(
        store.create(h, 1),
        Err(ChunkError::AlreadyExists { .. })
    ));

    let a = bytes(1, 100_000);
    let b = bytes(2, 70_000);
    let out = store.append(h, &a).unwrap();
    assert_eq!((out.offset, out.len, out.durable), (0, 100_000, true));
    store.append(h, &b).unwrap();
    let all: Vec<u8> = [a.clone(), b.clone()].concat();
    assert_eq!(store.read(h, 0, all.len() as u64).unwrap(), all);
    assert_eq!(store.read(h, 99_990, 20).unwrap(), all[99_990..100_010]);
    assert_eq!(store.read(h, 5, 0).unwrap().len(), 0);
    assert!(matches!(
        store.read(h, 170_000, 1),
        Err(ChunkError::OutOfRange {
            chunk_len: 170_000,
            ..
        })
    ));
    assert!(matches!(
        store.read(h, u64::MAX, 2),
        Err(ChunkError::OutOfRange { .. })
    ));
    assert_eq!(store.digest(h).unwrap(), *blake3::hash(&all).as_bytes());

    let info = store.seal(h).unwrap();
    assert!(info.sealed);
    assert!(matches!(
        store.append(h, b"x"),
        Err(ChunkError::Sealed { .. })
    ));
    assert_eq!(store.read(h, 65_000, 70_000).unwrap(), all[65_000..135_000]);
    assert_eq!(store.set_version(h, 9).unwrap().version, 9);
    assert_eq!(store.list(), vec![store.stat(h).unwrap()]);
    store.delete(h).unwrap();
    assert!(matches!(
        store.read(h, 0, 1),
        Err(ChunkError::NotFound { .. })
    ));
    assert!(matches!(store.delete(h), Err(ChunkError::NotFound { .. })));
    assert!(!chunk_path(dir.path(), h).exists());
}

#[test]
fn digest_covers_deferred_and_inline_appends_under_both_policies() {
    for sync in [SyncPolicy::Always, SyncPolicy::Batch { bytes_max: 3 << 20 }] {
        let dir = tempfile::tempdir().unwrap();
        let h = ChunkHandle(0x77);
        let mut all = Vec::new();
        {
            let (store, _) = ChunkStore::open(dir.path(), opts(sync)).unwrap();
            store.create(h, 1).unwrap();
            for (i, n) in [1_000_000usize, 10, 300_000, 70_000, 2_000_000, 5]
                .into_iter()
                .enumerate()
            {
                let d = bytes(i as u64 + 40, n);
                store.append(h, &d).unwrap();
                all.extend_from_slice(&d);
            }
            store.sync(h).unwrap();
            assert_eq!(
                store.digest(h).unwrap(),
                *blake3::hash(&all).as_bytes(),
                "{sync:?}"
            );
            let d = bytes(50, 400_000);
            store.append(h, &d).unwrap();
            store.sync(h).unwrap();
            all.extend_from_slice(&d);
        }
        // After a reopen the digest is rebuilt from the verified data by the next sync.
        let (store, _) = ChunkStore::open(dir.path(), opts(sync)).unwrap();
        let d = bytes(51, 500_000);
        store.append(h, &d).unwrap();
        all.extend_from_slice(&d);
        store.sync(h).unwrap();
        assert_eq!(store.seal(h).unwrap().len, all.len() as u64);
        assert_eq!(
            store.digest(h).unwrap(),
            *blake3::hash(&all).as_bytes(),
            "{sync:?}"
        );
    }
}

#[test]
fn chunk_full_is_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let options = ChunkStoreOptions {
        chunk_size_max: 200_000,
        ..ChunkStoreOptions::default()
    };
    let (store, _) = ChunkStore::open(dir.path(), options).unwrap();
    let h = ChunkHandle(1);
    store.create(h, 1).unwrap();
    store.append(h, &bytes(3, 150_000)).unwrap();
    let err = store.append(h, &bytes(4, 60_000)).unwrap_err();
    assert!(
        matches!(
            err,
            ChunkError::ChunkFull {
                len: 150_000,
                append: 60_000,
                size_max: 200_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.stat(h).unwrap().len, 150_000);
    store.append(h, &bytes(5, 50_000)).unwrap();
    assert_eq!(store.stat(h).unwrap().len, 200_000);
}

#[test]
fn bad_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = ChunkStoreOptions {
        chunk_size_max: 0,
        ..ChunkStoreOptions::default()
    };
    assert!(matches!(
        ChunkStore::open(dir.path(), bad),
        Err(ChunkError::InvalidOption(_))
    ));
}

#[test]
fn digest_and_appends_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let h = ChunkHandle(7);
    let a = bytes(7, 123_457);
    {
        let (store, _) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
        store.create(h, 1).unwrap();
        store.append(h, &a).unwrap();
    }
    let (store, report) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
    assert!(
        report.is_clean() && report.truncated.is_empty(),
        "{report:?}"
    );
    let b = bytes(8, 10_000);
    store.append(h, &b).unwrap();
    let all = [a, b].concat();
    assert_eq!(store.digest(h).unwrap(), *blake3::hash(&all).as_bytes());
    store.seal(h).unwrap();
    drop(store);
    let (store, _) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
    assert_eq!(store.digest(h).unwrap(), *blake3::hash(&all).as_bytes());
    assert_eq!(store.read(h, 0, all.len() as u64).unwrap(), all);
}

#[test]
fn unsynced_batch_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let h = ChunkHandle(0x10);
    let synced = bytes(10, 90_000);
    {
        let (store, _) =
            ChunkStore::open(dir.path(), opts(SyncPolicy::Batch { bytes_max: 1 << 30 })).unwrap();
        store.create(h, 1).unwrap();
        assert!(!store.append(h, &synced).unwrap().durable);
        store.sync(h).unwrap();
        assert!(!store.append(h, &bytes(11, 50_000)).unwrap().durable);
        // Dropped without sync: the crash. The unsynced bytes reached the file but no record.
    }
    let (store, report) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
    assert_eq!(report.truncated.len(), 1, "{report:?}");
    assert_eq!(report.truncated[0].kept_len, 90_000);
    assert_eq!(report.truncated[0].dropped_bytes, 50_000);
    assert_eq!(store.read(h, 0, 90_000).unwrap(), synced);
}

#[test]
fn torn_sync_falls_back_to_previous_record_keeping_the_acknowledged_partial_block() {
    // The acknowledged length ends inside a block; a later sync extends that same block and its
    // data is torn. Recovery must keep the first, acknowledged bytes of the block.
    let dir = tempfile::tempdir().unwrap();
    let h = ChunkHandle(0x11);
    let acked = bytes(12, 70_000);
    {
        let (store, _) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
        store.create(h, 1).unwrap();
        store.append(h, &acked).unwrap();
        store.append(h, &bytes(13, 30_000)).unwrap();
    }
    let layout = Layout::new(ChunkStoreOptions::default().chunk_size_max);
    let f = OpenOptions::new()
        .write(true)
        .open(chunk_path(dir.path(), h))
        .unwrap();
    // Tear the second append's bytes inside block 1 (the record claiming them was written).
    f.write_all_at(&[0xAA; 100], layout.data_offset + 80_000)
        .unwrap();
    drop(f);
    let (store, report) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
    assert!(report.mentions(h) && !report.is_clean(), "{report:?}");
    assert_eq!(store.stat(h).unwrap().len, 70_000);
    assert_eq!(store.read(h, 0, 70_000).unwrap(), acked);
    // Appending after the fallback works and survives another reopen.
    store.append(h, &bytes(14, 5_000)).unwrap();
    drop(store);
    let (store, report) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
    assert!(
        report.is_clean() && report.truncated.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        store.read(h, 0, 75_000).unwrap(),
        [acked, bytes(14, 5_000)].concat()
    );
}

#[test]
fn leftover_temp_file_is_removed_and_garbage_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
        store.create(ChunkHandle(0x42), 1).unwrap();
    }
    let sub = dir.path().join("42");
    std::fs::write(sub.join("0000000000000142.chunk.tmp"), b"half-created").unwrap();
    std::fs::write(sub.join("0000000000000242.chunk"), b"not a chunk at all").unwrap();
    let (store, report) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
    assert_eq!(report.temp_files_removed.len(), 1);
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].chunk, Some(ChunkHandle(0x242)));
    assert!(
        report.quarantined[0].path.exists(),
        "quarantined file is kept, not deleted"
    );
    assert_eq!(store.list().len(), 1);
}

#[test]
fn sealed_reads_verify_with_both_methods() {
    for method in [SealedReads::Mmap, SealedReads::Pread] {
        let dir = tempfile::tempdir().unwrap();
        let options = ChunkStoreOptions {
            sealed_reads: method,
            ..ChunkStoreOptions::default()
        };
        let h = ChunkHandle(5);
        let data = bytes(20, 300_000);
        {
            let (store, _) = ChunkStore::open(dir.path(), options).unwrap();
            store.create(h, 1).unwrap();
            store.append(h, &data).unwrap();
            store.seal(h).unwrap();
            assert_eq!(store.read(h, 1, 299_998).unwrap(), data[1..299_999]);
        }
        // Flip a byte in block 2; reads touching block 2 fail, others succeed.
        let layout = Layout::new(options.chunk_size_max);
        let f = OpenOptions::new()
            .write(true)
            .open(chunk_path(dir.path(), h))
            .unwrap();
        f.write_all_at(&[data[150_000] ^ 0xff], layout.data_offset + 150_000)
            .unwrap();
        drop(f);
        let (store, _) = ChunkStore::open(dir.path(), options).unwrap();
        assert!(
            matches!(
                store.read(h, 140_000, 20_000),
                Err(ChunkError::Corrupt { block: 2, .. })
            ),
            "{method:?}"
        );
        assert_eq!(store.read(h, 0, 131_072).unwrap(), data[..131_072]);
        assert_eq!(
            store.read(h, 196_608, 100_000).unwrap(),
            data[196_608..296_608]
        );
        assert!(matches!(
            store.verify(h),
            Err(ChunkError::Corrupt { block: 2, .. })
        ));
        // Damage while running, in the partial last block (checked against the record's tail
        // checksum, not the table).
        let f = OpenOptions::new()
            .write(true)
            .open(chunk_path(dir.path(), h))
            .unwrap();
        f.write_all_at(&[data[299_000] ^ 0x01], layout.data_offset + 299_000)
            .unwrap();
        assert!(
            matches!(
                store.read(h, 298_000, 1_000),
                Err(ChunkError::Corrupt { block: 4, .. })
            ),
            "{method:?}"
        );
        assert_eq!(store.read(h, 200_000, 10).unwrap(), data[200_000..200_010]);
    }
}

/// The default read path on a running store whose sealed file is cut short underneath it (a
/// failing disk, an operator's mistake): a typed error for the missing blocks, never a signal,
/// and bytes handed out before the damage stay what they were.
#[test]
fn sealed_file_truncated_under_a_running_store_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let options = ChunkStoreOptions::default();
    assert_eq!(options.sealed_reads, SealedReads::Pread, "the default");
    let h = ChunkHandle(6);
    let data = bytes(21, 1 << 20);
    let (store, _) = ChunkStore::open(dir.path(), options).unwrap();
    store.create(h, 1).unwrap();
    store.append(h, &data).unwrap();
    store.seal(h).unwrap();
    let before = store.read(h, 0, 1 << 20).unwrap();
    let layout = Layout::new(options.chunk_size_max);
    let f = OpenOptions::new()
        .write(true)
        .open(chunk_path(dir.path(), h))
        .unwrap();
    f.set_len(layout.data_offset + 512 * 1024).unwrap();
    drop(f);
    assert!(matches!(
        store.read(h, 600_000, 100_000),
        Err(ChunkError::Corrupt { .. })
    ));
    assert_eq!(store.read(h, 0, 65_536).unwrap(), data[..65_536]);
    assert_eq!(before, data[..]);
}

// ---- model-based test: random operations against a BTreeMap<handle, Vec<u8>> ----

#[derive(Clone, Debug)]
enum Op {
    Create(u8),
    Append(u8, u32, u64),
    Read(u8, u32, u32),
    Seal(u8),
    Delete(u8),
    Sync(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..4).prop_map(Op::Create),
        6 => (0u8..4, prop_oneof![0u32..150_000, 200_000u32..700_000], any::<u64>()).prop_map(|(h, n, s)| Op::Append(h, n, s)),
        4 => (0u8..4, any::<u32>(), 0u32..200_000).prop_map(|(h, o, n)| Op::Read(h, o, n)),
        1 => (0u8..4).prop_map(Op::Seal),
        1 => (0u8..4).prop_map(Op::Delete),
        1 => (0u8..4).prop_map(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default, Clone)]
struct ModelChunk {
    data: Vec<u8>,
    sealed: bool,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..40), batch in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let sync = if batch { SyncPolicy::Batch { bytes_max: 900_000 } } else { SyncPolicy::Always };
        let options = ChunkStoreOptions { sync, chunk_size_max: 2_000_000, ..ChunkStoreOptions::default() };
        let (mut store, _) = ChunkStore::open(dir.path(), options).unwrap();
        let mut model: BTreeMap<u8, ModelChunk> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Create(h) => {
                    let r = store.create(ChunkHandle(h.into()), 1);
                    prop_assert_eq!(r.is_ok(), !model.contains_key(&h));
                    model.entry(h).or_default();
                }
                Op::Append(h, n, seed) => {
                    let data = bytes(seed, n as usize);
                    let r = store.append(ChunkHandle(h.into()), &data);
                    match model.get_mut(&h) {
                        None => prop_assert!(matches!(r, Err(ChunkError::NotFound { .. })), "{:?}", r),
                        Some(m) if m.sealed => prop_assert!(matches!(r, Err(ChunkError::Sealed { .. })), "{:?}", r),
                        Some(m) if m.data.len() + data.len() > 2_000_000 => prop_assert!(matches!(r, Err(ChunkError::ChunkFull { .. })), "{:?}", r),
                        Some(m) => {
                            let out = r.unwrap();
                            prop_assert_eq!(out.offset, m.data.len() as u64);
                            m.data.extend_from_slice(&data);
                        }
                    }
                }
                Op::Read(h, o, n) => {
                    let r = store.read(ChunkHandle(h.into()), u64::from(o), u64::from(n));
                    match model.get(&h) {
                        None => prop_assert!(matches!(r, Err(ChunkError::NotFound { .. })), "{:?}", r),
                        Some(m) => {
                            let end = u64::from(o) + u64::from(n);
                            if end > m.data.len() as u64 {
                                prop_assert!(matches!(r, Err(ChunkError::OutOfRange { .. })), "{r:?}");
                            } else {
                                prop_assert_eq!(&r.unwrap()[..], &m.data[o as usize..end as usize]);
                            }
                        }
                    }
                }
                Op::Seal(h) => {
                    let r = store.seal(ChunkHandle(h.into()));
                    prop_assert_eq!(r.is_ok(), model.contains_key(&h));
                    if let Some(m) = model.get_mut(&h) {
                        m.sealed = true;
                        prop_assert_eq!(store.digest(ChunkHandle(h.into())).unwrap(), *blake3::hash(&m.data).as_bytes());
                    }
                }
                Op::Delete(h) => {
                    let r = store.delete(ChunkHandle(h.into()));
                    prop_assert_eq!(r.is_ok(), model.remove(&h).is_some());
                }
                Op::Sync(h) => {
                    let r = store.sync(ChunkHandle(h.into()));
                    prop_assert_eq!(r.is_ok(), model.contains_key(&h));
                }
                Op::Reopen => {
                    store.close().unwrap();
                    let (s, report) = ChunkStore::open(dir.path(), options).unwrap();
                    prop_assert!(report.is_clean() && report.truncated.is_empty(), "{:?}", report);
                    store = s;
                }
            }
        }
        let listed: Vec<(u64, u64, bool)> = store.list().iter().map(|i| (i.handle.0, i.len, i.sealed)).collect();
        let expected: Vec<(u64, u64, bool)> = model.iter().map(|(h, m)| (u64::from(*h), m.data.len() as u64, m.sealed)).collect();
        prop_assert_eq!(listed, expected);
    }
}

// ---- crash points: damage a chunk file, reopen, and check nothing wrong is ever served ----

#[derive(Clone, Debug)]
enum Damage {
    /// Truncate the file at this fraction (per million) of its length.
    Truncate(u32),
    /// Flip these bits (position per million of the file length, bit index).
    Flip(Vec<(u32, u8)>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0u32..1_000_000).prop_map(Damage::Truncate),
        proptest::collection::vec((0u32..1_000_000, 0u8..8), 1..4).prop_map(Damage::Flip),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn damaged_chunk_never_serves_a_wrong_byte_and_live_damage_is_reported(
        sizes in proptest::collection::vec(1usize..120_000, 1..5),
        seal in any::<bool>(),
        damage in damage(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let h = ChunkHandle(0xabc);
        let mut model = Vec::new();
        {
            let (store, _) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
            store.create(h, 1).unwrap();
            for (i, n) in sizes.iter().enumerate() {
                let data = bytes(i as u64 + 100, *n);
                store.append(h, &data).unwrap();
                model.extend_from_slice(&data);
            }
            if seal {
                store.seal(h).unwrap();
            }
        }
        let path = chunk_path(dir.path(), h);
        let original = std::fs::read(&path).unwrap();
        let layout = Layout::new(ChunkStoreOptions::default().chunk_size_max);
        let flen = original.len() as u64;
        let live_len = model.len() as u64;
        // Bytes whose damage must be noticed: header, both records, table entries of full
        // blocks, and the data.
        let is_live = |pos: u64| {
            pos < HEADER_LEN as u64
                || RECORD_OFFSETS.iter().any(|&o| pos >= o && pos < o + RECORD_LEN as u64)
                || (pos >= layout.table_entry_offset(0) && pos < layout.table_entry_offset(live_len / BS))
                || (pos >= layout.data_offset && pos < layout.data_offset + live_len)
        };
        let live_damage = match &damage {
            Damage::Truncate(ppm) => {
                let at = flen * u64::from(*ppm) / 1_000_000;
                OpenOptions::new().write(true).open(&path).unwrap().set_len(at).unwrap();
                at < flen
            }
            Damage::Flip(flips) => {
                let mut b = original.clone();
                for (ppm, bit) in flips {
                    let pos = (flen * u64::from(*ppm) / 1_000_000) as usize;
                    b[pos] ^= 1 << bit;
                }
                std::fs::write(&path, &b).unwrap();
                (0..b.len()).any(|i| b[i] != original[i] && is_live(i as u64))
            }
        };
        let (store, report) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
        let mut corrupt_seen = false;
        if let Ok(info) = store.stat(h) {
            prop_assert!(info.len <= live_len);
            // Read in pieces that straddle blocks: each piece is exactly right or refused.
            let mut off = 0u64;
            while off < info.len {
                let n = 50_000u64.min(info.len - off);
                match store.read(h, off, n) {
                    Ok(got) => prop_assert_eq!(&got[..], &model[off as usize..(off + n) as usize], "wrong bytes at {}", off),
                    Err(ChunkError::Corrupt { .. }) => corrupt_seen = true,
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
                off += n;
            }
            if store.verify(h).is_err() {
                corrupt_seen = true;
            }
        }
        if live_damage {
            prop_assert!(report.mentions(h) || corrupt_seen, "live damage {:?} went unreported: {:?}", damage, report);
        } else {
            prop_assert_eq!(store.stat(h).unwrap().len, live_len);
        }
    }
}

// The chunk-file fuzz target's body over generated inputs: random bytes, and real chunk files
// with random bytes overwritten.
proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_chunk_file_body(
        noise in proptest::collection::vec(any::<u8>(), 0..600),
        at in 0usize..20_000,
        len in 1usize..150_000,
    ) {
        cairn_engine::fuzzing::chunk_file(&noise);
        let dir = tempfile::tempdir().unwrap();
        let h = ChunkHandle(9);
        {
            let (store, _) = ChunkStore::open(dir.path(), ChunkStoreOptions::default()).unwrap();
            store.create(h, 1).unwrap();
            store.append(h, &bytes(len as u64, len)).unwrap();
        }
        let mut file = std::fs::read(chunk_path(dir.path(), h)).unwrap();
        let start = at.min(file.len());
        let end = (start + noise.len()).min(file.len());
        file[start..end].copy_from_slice(&noise[..end - start]);
        cairn_engine::fuzzing::chunk_file(&file);
    }
}
