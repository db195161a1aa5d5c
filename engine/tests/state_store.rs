//! The state store: registry, cluster settings against a BTreeMap model, determinism,
//! snapshots, and the fuzz bodies over generated inputs.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use cairn_engine::state::settings::{ClusterSettings, SettingsCommand, SettingsResponse};
use cairn_engine::state::{
    Command, Registry, ServiceId, SnapshotError, StateError, StateStore, Typed, TypedService,
};
use proptest::prelude::*;
use redb::ReadableDatabase;

fn open(dir: &std::path::Path, name: &str) -> (StateStore, Registry) {
    let store = StateStore::open(dir.join(name)).unwrap();
    let mut registry = Registry::new();
    registry.register(Typed(ClusterSettings)).unwrap();
    registry.init(&store).unwrap();
    (store, registry)
}

fn cmd(c: &SettingsCommand, index: u64) -> Vec<u8> {
    let mut seed = [0u8; 16];
    seed[..8].copy_from_slice(&index.to_le_bytes());
    ClusterSettings::command(c, 1_700_000_000_000 + index, seed)
        .unwrap()
        .encode()
}

fn snapshot(store: &StateStore) -> Vec<u8> {
    let mut out = Vec::new();
    store.export_snapshot(&mut out).unwrap();
    out
}

#[test]
fn registry_routes_rejects_and_tracks_last_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (store, registry) = open(dir.path(), "s.redb");
    assert!(matches!(
        registry_dup(),
        Err(StateError::DuplicateService(ServiceId(1)))
    ));

    let set = cmd(
        &SettingsCommand::Set {
            key: "gc.grace".into(),
            value: "1h".into(),
        },
        1,
    );
    let bad_key = cmd(
        &SettingsCommand::Set {
            key: "Bad Key".into(),
            value: "x".into(),
        },
        2,
    );
    let unknown = Command {
        service: ServiceId(999),
        version: 1,
        time_ms: 0,
        id_seed: [0; 16],
        payload: vec![],
    }
    .encode();
    let garbage = b"\x01not a command".to_vec();
    let bad_payload = Command {
        service: ClusterSettings::ID,
        version: 1,
        time_ms: 0,
        id_seed: [0; 16],
        payload: vec![0xff; 3],
    }
    .encode();
    let future = Command {
        service: ClusterSettings::ID,
        version: 9,
        time_ms: 0,
        id_seed: [0; 16],
        payload: vec![],
    }
    .encode();
    let out = registry
        .apply_batch(
            &store,
            [
                (1, &set[..]),
                (2, &bad_key[..]),
                (3, &unknown[..]),
                (4, &garbage[..]),
                (5, &bad_payload[..]),
                (6, &future[..]),
            ],
        )
        .unwrap();
    assert_eq!(
        ClusterSettings::response(out[0].as_ref().unwrap()).unwrap(),
        SettingsResponse::Set { previous: None }
    );
    let codes: Vec<&str> = out[1..]
        .iter()
        .map(|o| o.as_ref().unwrap_err().code.as_str())
        .collect();
    assert_eq!(
        codes,
        [
            "invalid_argument",
            "unknown_service",
            "malformed",
            "malformed",
            "unsupported_version"
        ]
    );
    assert_eq!(store.last_applied().unwrap(), 6);

    // Replaying an applied index is refused and changes nothing.
    let err = registry.apply_batch(&store, [(6, &set[..])]).unwrap_err();
    assert!(matches!(
        err,
        StateError::IndexNotAfter {
            index: 6,
            last_applied: 6
        }
    ));
    let txn = store.db().begin_read().unwrap();
    let s = ClusterSettings::get(&txn, "gc.grace").unwrap().unwrap();
    assert_eq!(
        (s.value.as_str(), s.updated_index, s.updated_ms),
        ("1h", 1, 1_700_000_000_001)
    );
}

fn registry_dup() -> Result<(), StateError> {
    let mut r = Registry::new();
    r.register(Typed(ClusterSettings))?;
    r.register(Typed(ClusterSettings))
}

#[test]
fn snapshot_round_trips_and_damaged_snapshot_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, reg) = open(dir.path(), "a.redb");
    let log: Vec<Vec<u8>> = (1..=50)
        .map(|i| {
            cmd(
                &SettingsCommand::Set {
                    key: format!("k{i}"),
                    value: "v".repeat(i as usize),
                },
                i,
            )
        })
        .collect();
    reg.apply_batch(
        &a,
        log.iter().enumerate().map(|(i, b)| (i as u64 + 1, &b[..])),
    )
    .unwrap();
    let snap = snapshot(&a);

    let (b, reg_b) = open(dir.path(), "b.redb");
    reg_b
        .apply_batch(
            &b,
            [(
                1,
                &cmd(
                    &SettingsCommand::Set {
                        key: "other".into(),
                        value: "x".into(),
                    },
                    1,
                )[..],
            )],
        )
        .unwrap();
    let before = snapshot(&b);
    // Every single-byte change of the stream is refused and leaves b as it was.
    for i in (0..snap.len()).step_by(7) {
        let mut bad = snap.clone();
        bad[i] ^= 0x01;
        assert!(b.import_snapshot(&bad[..]).is_err(), "byte {i}");
        assert_eq!(snapshot(&b), before);
    }
    assert!(matches!(
        b.import_snapshot(&snap[..snap.len() - 1]),
        Err(SnapshotError::Malformed(_))
    ));
    let summary = b.import_snapshot(&snap[..]).unwrap();
    // 50 settings, 50 remembered outcomes (an entry and its age index each), last_applied,
    // the outcomes' clock, and the settings table's format note.
    assert_eq!(summary.entries, 153);
    assert_eq!(snapshot(&b), snap);
    assert_eq!(b.last_applied().unwrap(), 50);
}

#[test]
fn same_log_gives_identical_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (a, reg_a) = open(dir.path(), "a.redb");
    let (b, reg_b) = open(dir.path(), "b.redb");
    let log: Vec<Vec<u8>> = (1..=200u64)
        .map(|i| {
            let key = format!("key.{}", i % 17);
            if i % 5 == 0 {
                SettingsCommand::Delete { key }
            } else {
                SettingsCommand::Set {
                    key,
                    value: i.to_string(),
                }
            }
        })
        .enumerate()
        .map(|(i, c)| cmd(&c, i as u64 + 1))
        .collect();
    // Same log, cut into batches differently.
    for (n, batch) in log.chunks(7).enumerate() {
        reg_a
            .apply_batch(
                &a,
                batch
                    .iter()
                    .enumerate()
                    .map(|(i, b)| ((n * 7 + i) as u64 + 1, &b[..])),
            )
            .unwrap();
    }
    for (n, batch) in log.chunks(30).enumerate() {
        reg_b
            .apply_batch(
                &b,
                batch
                    .iter()
                    .enumerate()
                    .map(|(i, b)| ((n * 30 + i) as u64 + 1, &b[..])),
            )
            .unwrap();
    }
    assert_eq!(snapshot(&a), snapshot(&b));
    // And byte-identical database files when the batches are the same.
    let (c, reg_c) = open(dir.path(), "c.redb");
    for (n, batch) in log.chunks(7).enumerate() {
        reg_c
            .apply_batch(
                &c,
                batch
                    .iter()
                    .enumerate()
                    .map(|(i, b)| ((n * 7 + i) as u64 + 1, &b[..])),
            )
            .unwrap();
    }
    drop((a, c));
    assert_eq!(
        std::fs::read(dir.path().join("a.redb")).unwrap(),
        std::fs::read(dir.path().join("c.redb")).unwrap()
    );
}

#[derive(Clone, Debug)]
enum ModelOp {
    Set(u8, String),
    Delete(u8),
    Reopen,
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        4 => (0u8..12, "[a-z]{0,20}").prop_map(|(k, v)| ModelOp::Set(k, v)),
        2 => (0u8..12).prop_map(ModelOp::Delete),
        1 => Just(ModelOp::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn settings_match_btreemap(ops in proptest::collection::vec(model_op(), 1..60), batch in 1usize..8) {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut reg) = open(dir.path(), "s.redb");
        let mut model: BTreeMap<String, String> = BTreeMap::new();
        let mut index = 0u64;
        let mut pending: Vec<(u64, Vec<u8>, SettingsResponse)> = Vec::new();
        for op in ops {
            match op {
                ModelOp::Set(k, v) => {
                    let key = format!("k{k}");
                    index += 1;
                    let previous = model.insert(key.clone(), v.clone());
                    pending.push((index, cmd(&SettingsCommand::Set { key, value: v }, index), SettingsResponse::Set { previous }));
                }
                ModelOp::Delete(k) => {
                    let key = format!("k{k}");
                    index += 1;
                    let existed = model.remove(&key).is_some();
                    pending.push((index, cmd(&SettingsCommand::Delete { key }, index), SettingsResponse::Deleted { existed }));
                }
                ModelOp::Reopen => {
                    drop((store, reg));
                    (store, reg) = open(dir.path(), "s.redb");
                }
            }
            if pending.len() >= batch {
                let out = reg.apply_batch(&store, pending.iter().map(|(i, b, _)| (*i, &b[..]))).unwrap();
                for (o, (_, _, want)) in out.iter().zip(&pending) {
                    prop_assert_eq!(&ClusterSettings::response(o.as_ref().unwrap()).unwrap(), want);
                }
                pending.clear();
            }
        }
        let out = reg.apply_batch(&store, pending.iter().map(|(i, b, _)| (*i, &b[..]))).unwrap();
        prop_assert_eq!(out.len(), pending.len());
        let txn = store.db().begin_read().unwrap();
        let got: BTreeMap<String, String> = ClusterSettings::list(&txn).unwrap().into_iter().map(|(k, s)| (k, s.value)).collect();
        // A prefix scan returns exactly the model's keys with that prefix ("k1" also matches
        // "k10", "k11"; "k" matches all; "k9x" none).
        for prefix in ["k", "k1", "k5", "k9x", "j"] {
            let scanned: BTreeMap<String, String> = ClusterSettings::with_prefix(&txn, prefix).unwrap().into_iter().map(|(k, s)| (k, s.value)).collect();
            let want: BTreeMap<String, String> = model.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(scanned, want);
        }
        prop_assert_eq!(got, model);
        prop_assert_eq!(store.last_applied().unwrap(), index);
    }

    // The fuzz targets' bodies over generated inputs: arbitrary bytes, and valid frames with
    // arbitrary payloads (which reach the service decoders).
    #[test]
    fn fuzz_command_body(data in proptest::collection::vec(any::<u8>(), 0..200), payload in proptest::collection::vec(any::<u8>(), 0..64), v in 0u16..3) {
        cairn_engine::fuzzing::command(&data);
        let framed = Command { service: ServiceId(1), version: v, time_ms: 1, id_seed: [0; 16], payload }.encode();
        cairn_engine::fuzzing::command(&framed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    // Determinism over random command sequences: the same log, cut into batches two different
    // ways (and applied as grouped entries a third way), gives identical state.
    #[test]
    fn random_logs_give_identical_stores(
        ops in proptest::collection::vec((0u8..20, proptest::option::of("[a-z]{0,12}")), 1..120),
        cut_a in 1usize..9,
        cut_b in 9usize..40,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log: Vec<Vec<u8>> = ops
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let key = format!("k{k}");
                let c = match v {
                    Some(v) => SettingsCommand::Set { key, value: v.clone() },
                    None => SettingsCommand::Delete { key },
                };
                cmd(&c, i as u64 + 1)
            })
            .collect();
        let (a, reg_a) = open(dir.path(), "a.redb");
        let (b, reg_b) = open(dir.path(), "b.redb");
        for (store, reg, cut) in [(&a, &reg_a, cut_a), (&b, &reg_b, cut_b)] {
            for (n, batch) in log.chunks(cut).enumerate() {
                reg.apply_batch(store, batch.iter().enumerate().map(|(i, c)| ((n * cut + i) as u64 + 1, &c[..]))).unwrap();
            }
        }
        prop_assert_eq!(snapshot(&a), snapshot(&b));
        // Grouped: one log entry per `cut_a` commands, as the Raft state machine applies them.
        // The settings differ only in `updated_index` (the entry's index), so compare values.
        let (c, reg_c) = open(dir.path(), "c.redb");
        for (n, group) in log.chunks(cut_a).enumerate() {
            let txn = c.db().begin_write().unwrap();
            reg_c.apply_group_in(&txn, n as u64 + 1, group).unwrap();
            txn.commit().unwrap();
        }
        let values = |s: &StateStore| -> Vec<(String, String)> {
            let txn = s.db().begin_read().unwrap();
            ClusterSettings::list(&txn).unwrap().into_iter().map(|(k, v)| (k, v.value)).collect()
        };
        prop_assert_eq!(values(&a), values(&c));
    }
}

fn set_at(key: &str, value: &str, seed: u8, time_ms: u64) -> Vec<u8> {
    let c = SettingsCommand::Set {
        key: key.into(),
        value: value.into(),
    };
    ClusterSettings::command(&c, time_ms, [seed; 16])
        .unwrap()
        .encode()
}

fn value_of(store: &StateStore, key: &str) -> Option<String> {
    let txn = store.db().begin_read().unwrap();
    ClusterSettings::get(&txn, key).unwrap().map(|s| s.value)
}

/// A proposal applied again (a client that retried on a new leader) gets its first outcome
/// back and changes nothing; once the window has passed it is forgotten.
#[test]
fn a_command_applied_twice_takes_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, registry) = open(dir.path(), "once.redb");
    let t0 = 1_700_000_000_000;
    let first = set_at("gc.grace", "1h", 1, t0);
    let second = set_at("gc.grace", "2h", 2, t0 + 10);
    let out = registry
        .apply_batch(&store, [(1, &first[..]), (2, &second[..])])
        .unwrap();
    let first_outcome = out[0].clone();
    assert_eq!(
        ClusterSettings::response(first_outcome.as_ref().unwrap()).unwrap(),
        SettingsResponse::Set { previous: None }
    );

    // The retry, in a later entry and inside a grouped entry: the first outcome, no effect.
    let again = registry.apply_batch(&store, [(3, &first[..])]).unwrap();
    assert_eq!(again[0], first_outcome);
    let txn = store.db().begin_write().unwrap();
    let grouped = registry
        .apply_group_in(&txn, 4, &[first.clone(), second.clone()])
        .unwrap();
    txn.commit().unwrap();
    assert_eq!(grouped[0], first_outcome);
    assert_eq!(grouped[1], out[1]);
    assert_eq!(value_of(&store, "gc.grace").as_deref(), Some("2h"));

    // The same value under another id is a new proposal and applies.
    let other = set_at("gc.grace", "1h", 3, t0 + 20);
    let out = registry.apply_batch(&store, [(5, &other[..])]).unwrap();
    assert_eq!(
        ClusterSettings::response(out[0].as_ref().unwrap()).unwrap(),
        SettingsResponse::Set {
            previous: Some("2h".into())
        }
    );

    // Past the window the first proposal is forgotten (commands keep arriving, each forgets a
    // few of the oldest), so bytes replayed then apply again.
    let late = t0 + cairn_engine::state::ONCE_WINDOW_MS + 1_000;
    for i in 0..4u8 {
        let c = set_at("other", "x", 10 + i, late + u64::from(i));
        registry
            .apply_batch(&store, [(6 + u64::from(i), &c[..])])
            .unwrap();
    }
    registry.apply_batch(&store, [(10, &second[..])]).unwrap();
    registry.apply_batch(&store, [(11, &first[..])]).unwrap();
    assert_eq!(value_of(&store, "gc.grace").as_deref(), Some("1h"));
}
