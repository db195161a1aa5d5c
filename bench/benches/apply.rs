//! The state machine's apply of one group of small PUTs, the part of a durable small PUT that
//! runs on the master after the log's fsync (see "where one group commit's time goes" in
//! BENCHMARKS.md).
//!
//! - `apply_group/audited_small_puts`: one group of 14 audited 4 KiB PUTs (the group size the
//!   S3 benchmark forms at 32 in flight) decoded and applied by the real registry into a real
//!   redb state file in one transaction, committed without fsync except when the Raft state
//!   machine's rule makes a batch durable (every `DURABLE_APPLY_EVERY` batches or
//!   `DURABLE_APPLY_BYTES` of commands: the durable one writes and syncs the pages of those
//!   before it). Keys are new (a bulk load), so the tree grows as it runs.
//! - `apply_group/empty_commit`: the same transaction with no commands (the floor: redb's
//!   begin and non-durable commit).
//!
//! Run: `cargo bench -p cairn-bench --bench apply`. Files go to `$CAIRN_BENCH_DIR` (default:
//! the system temp folder).

// Benchmark code: a failure to set up is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cairn_engine::state::{StateStore, TypedService};
use cairn_master::buckets::{
    BucketCommand, BucketService, Conditions, Content, ObjectData, ObjectMeta,
};
use cairn_raft::state_machine::{DURABLE_APPLY_BYTES, DURABLE_APPLY_EVERY};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const GROUP: usize = 14;
const OBJECT: usize = 4096;

fn command(c: &BucketCommand, n: u64) -> Vec<u8> {
    let mut seed = [0u8; 16];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    BucketService::command(c, 1_800_000_000_000 + n, seed)
        .unwrap()
        .encode()
}

fn put(n: u64, body: &[u8]) -> Vec<u8> {
    let c = BucketCommand::Audited {
        actor: "root".into(),
        ip: "127.0.0.1".into(),
        tenant: 1,
        command: Box::new(BucketCommand::PutObject {
            bucket: "bench".into(),
            key: format!("small/{n:08}"),
            data: ObjectData {
                size: body.len() as u64,
                etag: "0f343b0931126a20f133d67c2b018a3b".into(),
                parts: Vec::new(),
                content: Content::Inline(body.to_vec()),
                meta: ObjectMeta {
                    content_type: Some("application/octet-stream".into()),
                    ..ObjectMeta::default()
                },
                tags: Vec::new(),
            },
            conditions: Conditions::default(),
        }),
    };
    command(&c, n)
}

fn apply(c: &mut Criterion) {
    let dir = cairn_bench::bench_dir().unwrap();
    let store = StateStore::open(dir.path().join("state.redb")).unwrap();
    let registry = cairn_master::registry().unwrap();
    registry.init(&store).unwrap();
    let create = command(
        &BucketCommand::CreateBucket {
            name: "bench".into(),
            owner: "root".into(),
            public_read: false,
        },
        0,
    );
    let mut index = 1;
    let txn = store.db().begin_write().unwrap();
    let out = registry.apply_group_in(&txn, index, &[create]).unwrap();
    assert!(out[0].is_ok(), "{out:?}");
    txn.commit().unwrap();

    let body = vec![0x5a; OBJECT];
    let mut n = 0u64;
    let mut lazy = (0u32, 0u64);
    let mut g = c.benchmark_group("apply_group");
    g.measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(GROUP as u64));
    g.bench_function("audited_small_puts", |b| {
        b.iter_batched(
            || {
                (0..GROUP)
                    .map(|_| {
                        n += 1;
                        put(n, &body)
                    })
                    .collect::<Vec<_>>()
            },
            |group| {
                index += 1;
                let mut txn = store.db().begin_write().unwrap();
                // The Raft state machine's rule for which batches are durable.
                let bytes: u64 = group.iter().map(|c| c.len() as u64).sum();
                if lazy.0 + 1 < DURABLE_APPLY_EVERY && lazy.1 + bytes < DURABLE_APPLY_BYTES {
                    lazy = (lazy.0 + 1, lazy.1 + bytes);
                    txn.set_durability(redb::Durability::None).unwrap();
                } else {
                    lazy = (0, 0);
                }
                let out = registry.apply_group_in(&txn, index, &group).unwrap();
                txn.commit().unwrap();
                assert!(out.iter().all(|o| o.is_ok()), "{out:?}");
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("empty_commit", |b| {
        b.iter(|| {
            index += 1;
            let mut txn = store.db().begin_write().unwrap();
            txn.set_durability(redb::Durability::None).unwrap();
            registry
                .apply_group_in(&txn, index, &[] as &[Vec<u8>])
                .unwrap();
            txn.commit().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
