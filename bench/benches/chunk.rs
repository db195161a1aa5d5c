//! Chunk store throughput against the raw file baseline measured in the same run.
//!
//! - `chunk_append`: 64 × 1 MiB appends into a fresh 64 MiB chunk, one sync at the end, versus
//!   writing the same bytes to a plain file and fsyncing it (`raw_write_fsync`, the physical
//!   limit), and versus the same plain write plus the CRC-32C and BLAKE3 work every append
//!   must do (`raw_write_hash_fsync`).
//! - `chunk_read`: verified 1 MiB range reads over a sealed 64 MiB chunk (positioned reads and
//!   mmap), versus plain `pread` of the same bytes into a reused buffer.
//!
//! Run: `cargo bench -p cairn-bench --bench chunk`, then
//! `cargo run -p cairn-bench --bin criterion-ratios` for the ratios in BENCHMARKS.md.
//! Files go to `$CAIRN_BENCH_DIR` (default: the system temp folder).

// Benchmark code: a failure to set up is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use cairn_engine::chunk::{ChunkHandle, ChunkStore, ChunkStoreOptions, SealedReads, SyncPolicy};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

const MIB: usize = 1 << 20;
const CHUNK: usize = 64 * MIB;

fn payload() -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let dir = cairn_bench::bench_dir().unwrap();
    let data = payload();
    let mut g = c.benchmark_group("chunk_append");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Bytes(CHUNK as u64));

    g.bench_function("raw_write_fsync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let path = dir.path().join(format!("raw-{i}"));
                let mut f = File::create(&path).unwrap();
                let t = Instant::now();
                for _ in 0..CHUNK / MIB {
                    f.write_all(&data).unwrap();
                }
                f.sync_data().unwrap();
                total += t.elapsed();
                drop(f);
                std::fs::remove_file(&path).unwrap();
            }
            total
        })
    });

    // The same plain write with the hashing every chunk append must do (CRC-32C per block,
    // BLAKE3 of the content): separates the cost of the checksums from the store's own.
    g.bench_function("raw_write_hash_fsync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let path = dir.path().join(format!("raw-hash-{i}"));
                let mut f = File::create(&path).unwrap();
                let t = Instant::now();
                let mut hasher = blake3::Hasher::new();
                let mut crcs = 0u32;
                for _ in 0..CHUNK / MIB {
                    f.write_all(&data).unwrap();
                    for block in data.chunks(64 << 10) {
                        crcs ^= crc32c::crc32c(block);
                    }
                    hasher.update(&data);
                }
                f.sync_data().unwrap();
                total += t.elapsed();
                std::hint::black_box((hasher.finalize(), crcs));
                drop(f);
                std::fs::remove_file(&path).unwrap();
            }
            total
        })
    });

    let options = ChunkStoreOptions {
        sync: SyncPolicy::Batch {
            bytes_max: u64::MAX,
        },
        ..ChunkStoreOptions::default()
    };
    let (store, _) = ChunkStore::open(dir.path().join("store"), options).unwrap();
    let mut next = 0u64;
    g.bench_function("chunk_append_sync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                next += 1;
                let h = ChunkHandle(next);
                store.create(h, 1).unwrap();
                let t = Instant::now();
                for _ in 0..CHUNK / MIB {
                    store.append(h, &data).unwrap();
                }
                store.sync(h).unwrap();
                total += t.elapsed();
                store.delete(h).unwrap();
            }
            total
        })
    });
    g.finish();
}

fn read(c: &mut Criterion) {
    let dir = cairn_bench::bench_dir().unwrap();
    let data = payload();

    // The raw baseline file and the sealed chunk hold the same 64 MiB.
    let raw_path = dir.path().join("raw");
    {
        let mut f = File::create(&raw_path).unwrap();
        for _ in 0..CHUNK / MIB {
            f.write_all(&data).unwrap();
        }
        f.sync_all().unwrap();
    }
    let store_dir = dir.path().join("store");
    let h = ChunkHandle(1);
    {
        let (store, _) = ChunkStore::open(&store_dir, ChunkStoreOptions::default()).unwrap();
        store.create(h, 1).unwrap();
        for _ in 0..CHUNK / MIB {
            store.append(h, &data).unwrap();
        }
        store.seal(h).unwrap();
    }

    let mut g = c.benchmark_group("chunk_read");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Bytes(CHUNK as u64));

    let raw = OpenOptions::new().read(true).open(&raw_path).unwrap();
    let mut buf = vec![0u8; MIB];
    g.bench_function("raw_pread", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for i in 0..CHUNK / MIB {
                raw.read_exact_at(&mut buf, (i * MIB) as u64).unwrap();
                sum += u64::from(buf[i]);
            }
            sum
        })
    });

    for (name, method) in [
        ("verified_pread", SealedReads::Pread),
        ("verified_mmap", SealedReads::Mmap),
    ] {
        let options = ChunkStoreOptions {
            sealed_reads: method,
            ..ChunkStoreOptions::default()
        };
        let (store, _) = ChunkStore::open(&store_dir, options).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for i in 0..CHUNK / MIB {
                    let got = store.read(h, (i * MIB) as u64, MIB as u64).unwrap();
                    sum += u64::from(got[i]);
                }
                sum
            })
        });
    }
    g.finish();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
