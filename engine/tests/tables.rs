//! Typed, versioned tables on a real redb state store: records carry their layout version,
//! records written before versions existed are upgraded once by `init` (also after a snapshot
//! from an older release is imported), and old layouts are read through `Record::migrate`.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cairn_engine::state::{
    Record, StateError, StateStore, Table, TypedTable, decode, decode_record, encode, encode_record,
};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Note {
    text: String,
    stars: u32,
}

impl Record for Note {
    const NAME: &'static str = "note";
    const VERSION: u8 = 1;
}

/// Layout 2 of a record whose layout 1 had no `tags`: the upgrade path in one place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Tagged {
    text: String,
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct TaggedV1 {
    text: String,
}

impl Record for Tagged {
    const NAME: &'static str = "tagged";
    const VERSION: u8 = 2;
    fn migrate(version: u8, bytes: &[u8]) -> Result<Tagged, StateError> {
        match version {
            0 | 1 => {
                let old: TaggedV1 = decode("tagged v1", bytes)?;
                Ok(Tagged {
                    text: old.text,
                    tags: Vec::new(),
                })
            }
            v => Err(StateError::Corrupt(format!("tagged: version {v}"))),
        }
    }
}

const NOTES: TypedTable<u128, Note> = TypedTable::new("test.notes");
const TAGGED: TypedTable<String, Tagged> = TypedTable::new("test.tagged");
const RAW_NOTES: Table = Table::new("test.notes");
const RAW_TAGGED: Table = Table::new("test.tagged");

fn store() -> (tempfile::TempDir, StateStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path().join("state.redb")).unwrap();
    (dir, store)
}

fn init(store: &StateStore) {
    let txn = store.db().begin_write().unwrap();
    NOTES.init(&txn).unwrap();
    TAGGED.init(&txn).unwrap();
    txn.commit().unwrap();
}

fn raw(store: &StateStore, table: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
    let txn = store.db().begin_read().unwrap();
    let t = txn.open_table(table).unwrap();
    t.iter()
        .unwrap()
        .map(|i| {
            let (k, v) = i.unwrap();
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect()
}

fn note(i: u32) -> Note {
    Note {
        text: format!("note {i}"),
        stars: i,
    }
}

#[test]
fn records_round_trip_with_their_version_byte_first() {
    let (_d, store) = store();
    init(&store);
    let txn = store.db().begin_write().unwrap();
    {
        let mut t = NOTES.open(&txn).unwrap();
        for i in [3u32, 1, 2] {
            t.insert(&u128::from(i), &note(i)).unwrap();
        }
        assert_eq!(t.get(&2).unwrap(), Some(note(2)));
        assert!(t.remove(&3).unwrap());
        assert!(!t.remove(&3).unwrap());
        assert_eq!(t.get(&3).unwrap(), None);
    }
    txn.commit().unwrap();
    let txn = store.db().begin_read().unwrap();
    let t = NOTES.read(&txn).unwrap();
    assert_eq!(t.all().unwrap(), vec![(1, note(1)), (2, note(2))]);
    let iterated: Vec<_> = t.iter().unwrap().map(Result::unwrap).collect();
    assert_eq!(iterated, vec![(1, note(1)), (2, note(2))]);
    assert_eq!(t.len().unwrap(), 2);
    // On disk: the key big-endian, the value the version byte then postcard.
    let stored = raw(&store, RAW_NOTES);
    assert_eq!(stored[0].0, 1u128.to_be_bytes().to_vec());
    let mut expected = vec![Note::VERSION];
    expected.extend(encode(&note(1)).unwrap());
    assert_eq!(stored[0].1, expected);
}

#[test]
fn records_from_before_versions_are_upgraded_once_by_init() {
    let (_d, store) = store();
    // An older release's store: bare postcard values, more of them than one migration step.
    let txn = store.db().begin_write().unwrap();
    {
        let mut t = txn.open_table(RAW_NOTES).unwrap();
        for i in 0..3000u32 {
            let key = u128::from(i).to_be_bytes();
            t.insert(key.as_slice(), encode(&note(i)).unwrap().as_slice())
                .unwrap();
        }
    }
    txn.commit().unwrap();
    let before = raw(&store, RAW_NOTES);
    init(&store);
    let after = raw(&store, RAW_NOTES);
    assert_eq!(after.len(), 3000);
    for ((k0, v0), (k1, v1)) in before.iter().zip(&after) {
        assert_eq!(k0, k1);
        assert_eq!(v1[0], 0, "layout 0: from before versions");
        assert_eq!(&v1[1..], v0.as_slice());
    }
    // A second init (every restart) changes nothing.
    init(&store);
    assert_eq!(raw(&store, RAW_NOTES), after);
    // Read through the table they are what was written; rewritten, they take the new layout.
    let txn = store.db().begin_write().unwrap();
    {
        let mut t = NOTES.open(&txn).unwrap();
        assert_eq!(t.get(&2999).unwrap(), Some(note(2999)));
        t.insert(&7, &note(70)).unwrap();
    }
    txn.commit().unwrap();
    let stored = raw(&store, RAW_NOTES);
    assert_eq!(stored[7].1[0], Note::VERSION);
    assert_eq!(stored[8].1[0], 0);
}

#[test]
fn an_older_layout_is_read_through_migrate_and_a_newer_one_refused() {
    let (_d, store) = store();
    init(&store);
    #[derive(Serialize)]
    struct V1<'a> {
        text: &'a str,
    }
    let txn = store.db().begin_write().unwrap();
    {
        let mut t = txn.open_table(RAW_TAGGED).unwrap();
        let mut v1 = vec![1u8];
        v1.extend(encode(&V1 { text: "old" }).unwrap());
        t.insert(b"a".as_slice(), v1.as_slice()).unwrap();
        let mut v9 = vec![9u8];
        v9.extend(encode(&V1 { text: "future" }).unwrap());
        t.insert(b"z".as_slice(), v9.as_slice()).unwrap();
        t.insert(b"e".as_slice(), [].as_slice()).unwrap();
    }
    txn.commit().unwrap();
    let txn = store.db().begin_read().unwrap();
    let t = TAGGED.read(&txn).unwrap();
    assert_eq!(
        t.get(&"a".to_owned()).unwrap(),
        Some(Tagged {
            text: "old".into(),
            tags: vec![]
        })
    );
    let future = t.get(&"z".to_owned()).unwrap_err().to_string();
    assert!(future.contains("version 9"), "{future}");
    assert!(
        t.get(&"e".to_owned()).is_err(),
        "an empty record is corrupt"
    );
    // The codec alone, both ways.
    let now = Tagged {
        text: "new".into(),
        tags: vec!["x".into()],
    };
    assert_eq!(
        decode_record::<Tagged>(&encode_record(&now).unwrap()).unwrap(),
        now
    );
}

#[test]
fn a_snapshot_from_before_versions_is_upgraded_after_import() {
    // An older release's store (no versions, no format notes) exported...
    let (_d, old) = store();
    let txn = old.db().begin_write().unwrap();
    {
        let mut t = txn.open_table(RAW_NOTES).unwrap();
        t.insert(
            5u128.to_be_bytes().as_slice(),
            encode(&note(5)).unwrap().as_slice(),
        )
        .unwrap();
    }
    txn.commit().unwrap();
    let mut snapshot = Vec::new();
    old.export_snapshot(&mut snapshot).unwrap();
    // ...and imported by this release, whose init follows every import.
    let (_d2, new) = store();
    init(&new);
    new.import_snapshot(snapshot.as_slice()).unwrap();
    init(&new);
    let txn = new.db().begin_read().unwrap();
    assert_eq!(NOTES.read(&txn).unwrap().get(&5).unwrap(), Some(note(5)));
    drop(txn);
    // A snapshot of an upgraded store carries its format notes: importing it and running init
    // again upgrades nothing twice.
    let mut again = Vec::new();
    new.export_snapshot(&mut again).unwrap();
    let (_d3, third) = store();
    third.import_snapshot(again.as_slice()).unwrap();
    init(&third);
    assert_eq!(raw(&third, RAW_NOTES), raw(&new, RAW_NOTES));
    let txn = third.db().begin_read().unwrap();
    assert_eq!(NOTES.read(&txn).unwrap().get(&5).unwrap(), Some(note(5)));
}
