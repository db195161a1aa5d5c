//! File-backed snapshots of the state machine: built to disk, found again after a restart,
//! received in chunks into a file and installed from it, a damaged one refused.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::SeekFrom;
use std::path::Path;

use cairn_engine::state::settings::{ClusterSettings, Setting, SettingsCommand};
use cairn_engine::state::{Registry, StateStore, Typed, TypedService};
use cairn_raft::state_machine::StateMachine;
use cairn_raft::types::Entry;
use cairn_raft::{Proposal, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftSnapshotBuilder};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

fn machine(dir: &Path) -> StateMachine {
    let mut registry = Registry::new();
    registry.register(Typed(ClusterSettings)).unwrap();
    let store = StateStore::open(dir.join("state.redb")).unwrap();
    registry.init(&store).unwrap();
    StateMachine::new(store, registry).unwrap()
}

fn entry(index: u64, key: &str, value: &str) -> Entry {
    let c = SettingsCommand::Set {
        key: key.into(),
        value: value.into(),
    };
    let bytes = ClusterSettings::command(&c, index, [index as u8; 16])
        .unwrap()
        .encode();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal(vec![bytes])),
    }
}

fn settings(sm: &StateMachine) -> Vec<(String, Setting)> {
    let txn = redb::ReadableDatabase::begin_read(sm.store().db()).unwrap();
    ClusterSettings::list(&txn).unwrap()
}

/// The files in a snapshot folder, by extension.
fn files(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == ext)
        })
        .count()
}

async fn bytes_of(snapshot: openraft::storage::Snapshot<TypeConfig>) -> Vec<u8> {
    let mut f = snapshot.snapshot;
    let mut out = Vec::new();
    f.seek(SeekFrom::Start(0)).await.unwrap();
    f.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_live_in_files_survive_restart_and_install_from_chunks() {
    let a = tempfile::tempdir().unwrap();
    let mut sm = machine(a.path());
    sm.apply((1..=100).map(|i| entry(i, &format!("k{}", i % 30), &format!("v{i}"))))
        .await
        .unwrap();
    let first = sm.build_snapshot().await.unwrap();
    assert_eq!(first.meta.last_log_id.map(|l| l.index), Some(100));
    let first_bytes = bytes_of(first).await;
    assert!(first_bytes.starts_with(b"CAIRNSNP"));

    // A newer snapshot replaces the older one's files.
    sm.apply((101..=120).map(|i| entry(i, &format!("n{i}"), "x")))
        .await
        .unwrap();
    let second = sm.build_snapshot().await.unwrap();
    let second_meta = second.meta.clone();
    let snap_bytes = bytes_of(second).await;
    assert_ne!(snap_bytes, first_bytes);
    assert_eq!((files(a.path(), "snap"), files(a.path(), "meta")), (1, 1));
    let want = settings(&sm);
    drop(sm);

    // Leftovers of a build or a transfer cut short are removed on start; the latest snapshot
    // is found again with its metadata and bytes.
    std::fs::write(
        a.path().join("snapshots/00000000000000000099.partial"),
        b"half",
    )
    .unwrap();
    std::fs::write(a.path().join("snapshots/stray"), b"?").unwrap();
    let mut sm = machine(a.path());
    let found = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(found.meta, second_meta);
    assert_eq!(bytes_of(found).await, snap_bytes);
    assert_eq!(
        std::fs::read_dir(a.path().join("snapshots"))
            .unwrap()
            .count(),
        2
    );

    // Another node receives it in chunks, out of order as openraft may after a retry.
    let b = tempfile::tempdir().unwrap();
    let mut other = machine(b.path());
    other
        .apply([entry(1, "unrelated", "gone after install")])
        .await
        .unwrap();
    let mut file = other.begin_receiving_snapshot().await.unwrap();
    let half = snap_bytes.len() / 2;
    file.seek(SeekFrom::Start(half as u64)).await.unwrap();
    file.write_all(&snap_bytes[half..]).await.unwrap();
    file.seek(SeekFrom::Start(0)).await.unwrap();
    file.write_all(&snap_bytes[..half]).await.unwrap();
    other.install_snapshot(&second_meta, file).await.unwrap();
    assert_eq!(settings(&other), want);
    let kept = other.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(kept.meta, second_meta);
    assert_eq!(bytes_of(kept).await, snap_bytes);
    assert_eq!(
        (files(b.path(), "snap"), files(b.path(), "partial")),
        (1, 0)
    );

    // A damaged transfer is refused and changes nothing.
    let mut damaged = snap_bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    let mut file = other.begin_receiving_snapshot().await.unwrap();
    file.write_all(&damaged).await.unwrap();
    assert!(other.install_snapshot(&second_meta, file).await.is_err());
    assert_eq!(settings(&other), want);
    drop(sm);
}
