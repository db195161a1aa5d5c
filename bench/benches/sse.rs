//! Encryption at rest against copying the same bytes, measured in the same run.
//!
//! - `sse_seal`: sealing 1 MiB of an object (16 blocks of 64 KiB, AES-256-GCM, the gateway's
//!   `Sealer`) versus copying 1 MiB into a fresh buffer (`raw_copy`, which the sealing does too:
//!   the block leaves the request body for a buffer the gateway owns).
//! - `sse_open`: opening the same 16 sealed blocks in place versus the same copy.
//!
//! Run: `cargo bench -p cairn-bench --bench sse`, then
//! `cargo run -p cairn-bench --bin criterion-ratios` for the ratios in BENCHMARKS.md.

// Benchmark code: a failure to set up is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cairn_api::sse::{DataKey, Sealer, seal_all};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const MIB: usize = 1 << 20;
const BLOCK: usize = 64 << 10;

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

fn seal(c: &mut Criterion) {
    let data = payload();
    let sealer = Sealer::new(&DataKey::from_bytes([7; 32]), &[1; 16]);
    let mut g = c.benchmark_group("sse_seal");
    g.measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("raw_copy", |b| {
        b.iter(|| std::hint::black_box(data.to_vec()));
    });
    g.bench_function("seal_aes256gcm_64k_blocks", |b| {
        b.iter(|| std::hint::black_box(seal_all(&sealer, &data)));
    });
    g.finish();

    let sealed = seal_all(&sealer, &data);
    let mut g = c.benchmark_group("sse_open");
    g.measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("raw_copy", |b| {
        b.iter(|| std::hint::black_box(sealed.to_vec()));
    });
    g.bench_function("open_aes256gcm_64k_blocks", |b| {
        b.iter(|| {
            let mut buf = sealed.to_vec();
            for (i, block) in buf.chunks_mut(BLOCK + 16).enumerate() {
                assert!(sealer.open(i as u64, block).is_some());
            }
            std::hint::black_box(buf)
        });
    });
    g.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
