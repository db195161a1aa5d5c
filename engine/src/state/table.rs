//! Typed, versioned tables: a table says what its keys and values are, and every stored record
//! carries a version byte, so a layout can change and old records are read (and upgraded) in
//! one place, [`Record::migrate`].
//!
//! On disk a table is still `&[u8] -> &[u8]` (snapshots copy tables without knowing their
//! types): a key is [`Key::to_bytes`]; a value is one version byte, then the postcard encoding
//! of the record. Version 0 is the layout a record had before records carried versions: the
//! first [`TypedTable::init`] on a store written by an older release rewrites every value of
//! the table as `0 ‖ old bytes`, once, and notes that in the store's meta table
//! (`table_format:NAME`), which snapshots carry along. A snapshot from an older release has no
//! note, and the `init` that follows its import upgrades it the same way.

use std::marker::PhantomData;

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{META, StateError, Table};

/// How a table's keys are laid out. Integers are big-endian, so byte order is numeric order
/// and range scans follow it.
pub trait Key: Sized {
    fn to_bytes(&self) -> Vec<u8>;
    fn from_bytes(b: &[u8]) -> Result<Self, StateError>;
}

fn fixed<const N: usize>(b: &[u8], what: &str) -> Result<[u8; N], StateError> {
    b.try_into()
        .map_err(|_| StateError::Corrupt(format!("{what} key of {} bytes, not {N}", b.len())))
}

impl Key for u64 {
    fn to_bytes(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn from_bytes(b: &[u8]) -> Result<Self, StateError> {
        Ok(u64::from_be_bytes(fixed(b, "u64")?))
    }
}

impl Key for u128 {
    fn to_bytes(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn from_bytes(b: &[u8]) -> Result<Self, StateError> {
        Ok(u128::from_be_bytes(fixed(b, "u128")?))
    }
}

impl Key for [u8; 32] {
    fn to_bytes(&self) -> Vec<u8> {
        self.to_vec()
    }
    fn from_bytes(b: &[u8]) -> Result<Self, StateError> {
        fixed(b, "32-byte")
    }
}

/// Raw bytes: for keys a service composes itself (a bucket name, `/`, an object key, ...),
/// where prefix scans over the composed bytes are the point.
impl Key for Vec<u8> {
    fn to_bytes(&self) -> Vec<u8> {
        self.clone()
    }
    fn from_bytes(b: &[u8]) -> Result<Self, StateError> {
        Ok(b.to_vec())
    }
}

impl Key for String {
    fn to_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn from_bytes(b: &[u8]) -> Result<Self, StateError> {
        String::from_utf8(b.to_vec())
            .map_err(|_| StateError::Corrupt("a text key is not UTF-8".into()))
    }
}

/// A value a table holds. Bump [`Record::VERSION`] when the layout changes, and teach
/// [`Record::migrate`] to read the layout it replaces.
pub trait Record: Serialize + DeserializeOwned {
    /// What the record is called in errors.
    const NAME: &'static str;
    /// The layout written now (1 to 255; 0 is the layout from before versions).
    const VERSION: u8;

    /// Read a record stored with an older layout `version` and upgrade it. By default
    /// version 0 is the current layout (nothing changed since versions were introduced).
    fn migrate(version: u8, bytes: &[u8]) -> Result<Self, StateError> {
        if version == 0 {
            super::decode(Self::NAME, bytes)
        } else {
            Err(unknown_version::<Self>(version))
        }
    }
}

/// [`Record`] for record types whose layout has not changed since records carried versions
/// (version 1; version 0 reads the same layout): `records! { User = "user", Part = "part" }`.
/// A type whose layout changes writes its `impl Record` by hand, with `migrate`.
#[macro_export]
macro_rules! records {
    ($($t:ty = $name:literal),* $(,)?) => {
        $(impl $crate::state::Record for $t {
            const NAME: &'static str = $name;
            const VERSION: u8 = 1;
        })*
    };
}

fn unknown_version<V: Record>(version: u8) -> StateError {
    StateError::Corrupt(format!(
        "{}: layout version {version} is not one this build reads (it writes {})",
        V::NAME,
        V::VERSION
    ))
}

/// A record's stored bytes: its version, then postcard.
pub fn encode_record<V: Record>(v: &V) -> Result<Vec<u8>, StateError> {
    let mut out = vec![V::VERSION];
    out.extend(super::encode(v)?);
    Ok(out)
}

/// A record from its stored bytes, upgraded if it was stored with an older layout.
pub fn decode_record<V: Record>(b: &[u8]) -> Result<V, StateError> {
    match b.split_first() {
        None => Err(StateError::Corrupt(format!("{}: an empty record", V::NAME))),
        Some((&v, rest)) if v == V::VERSION => super::decode(V::NAME, rest),
        Some((&v, rest)) if v < V::VERSION => V::migrate(v, rest),
        Some((&v, _)) => Err(unknown_version::<V>(v)),
    }
}

/// A table of `V` records under `K` keys.
#[derive(Debug)]
pub struct TypedTable<K, V> {
    name: &'static str,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for TypedTable<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for TypedTable<K, V> {}

/// Records moved per step while a table is brought to the versioned layout.
const MIGRATE_STEP: usize = 1024;

impl<K: Key, V: Record> TypedTable<K, V> {
    pub const fn new(name: &'static str) -> Self {
        TypedTable {
            name,
            types: PhantomData,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn def(&self) -> Table {
        Table::new(self.name)
    }

    fn format_key(&self) -> Vec<u8> {
        format!("table_format:{}", self.name).into_bytes()
    }

    /// Create the table, and bring records stored before versions existed to the versioned
    /// layout (once per store; see the module docs). Call it from the service's `init`.
    pub fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        let mut table = txn.open_table(self.def())?;
        let mut meta = txn.open_table(META)?;
        let marker = self.format_key();
        if meta.get(marker.as_slice())?.is_some() {
            return Ok(());
        }
        // Every value becomes `0 ‖ old bytes`, a step of keys at a time (bounded memory).
        let mut after: Option<Vec<u8>> = None;
        loop {
            let mut step = Vec::new();
            {
                let range = match &after {
                    None => table.range::<&[u8]>(..)?,
                    Some(a) => table.range::<&[u8]>((
                        std::ops::Bound::Excluded(a.as_slice()),
                        std::ops::Bound::Unbounded,
                    ))?,
                };
                for item in range.take(MIGRATE_STEP) {
                    let (k, v) = item?;
                    let mut versioned = Vec::with_capacity(v.value().len() + 1);
                    versioned.push(0u8);
                    versioned.extend_from_slice(v.value());
                    step.push((k.value().to_vec(), versioned));
                }
            }
            let Some((last, _)) = step.last() else {
                break;
            };
            after = Some(last.clone());
            for (k, v) in &step {
                table.insert(k.as_slice(), v.as_slice())?;
            }
        }
        meta.insert(marker.as_slice(), [1u8].as_slice())?;
        Ok(())
    }

    /// The table for reading and writing in `txn`.
    pub fn open<'t>(&self, txn: &'t WriteTransaction) -> Result<TableMut<'t, K, V>, StateError> {
        Ok(TableMut {
            table: txn.open_table(self.def())?,
            types: PhantomData,
        })
    }

    /// The table for reading in `txn`.
    pub fn read(&self, txn: &ReadTransaction) -> Result<TableRead<K, V>, StateError> {
        Ok(TableRead {
            table: txn.open_table(self.def())?,
            types: PhantomData,
        })
    }
}

fn get<K: Key, V: Record>(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &K,
) -> Result<Option<V>, StateError> {
    match t.get(key.to_bytes().as_slice())? {
        None => Ok(None),
        Some(v) => decode_record(v.value()).map(Some),
    }
}

fn all<K: Key, V: Record>(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<Vec<(K, V)>, StateError> {
    let mut out = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        out.push((K::from_bytes(k.value())?, decode_record(v.value())?));
    }
    Ok(out)
}

/// A typed table open for writing.
pub struct TableMut<'t, K, V> {
    table: redb::Table<'t, &'static [u8], &'static [u8]>,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for TableMut<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableMut").finish_non_exhaustive()
    }
}

impl<K: Key, V: Record> TableMut<'_, K, V> {
    pub fn get(&self, key: &K) -> Result<Option<V>, StateError> {
        get(&self.table, key)
    }

    pub fn insert(&mut self, key: &K, value: &V) -> Result<(), StateError> {
        self.table
            .insert(key.to_bytes().as_slice(), encode_record(value)?.as_slice())?;
        Ok(())
    }

    /// Remove `key`; whether it was there.
    pub fn remove(&mut self, key: &K) -> Result<bool, StateError> {
        Ok(self.table.remove(key.to_bytes().as_slice())?.is_some())
    }

    /// Remove `key` and return what it held.
    pub fn take(&mut self, key: &K) -> Result<Option<V>, StateError> {
        match self.table.remove(key.to_bytes().as_slice())? {
            None => Ok(None),
            Some(v) => decode_record(v.value()).map(Some),
        }
    }

    /// Every record, in key order.
    pub fn all(&self) -> Result<Vec<(K, V)>, StateError> {
        all(&self.table)
    }

    /// How many records the table holds.
    pub fn len(&self) -> Result<u64, StateError> {
        use redb::ReadableTableMetadata;
        Ok(self.table.len()?)
    }

    pub fn is_empty(&self) -> Result<bool, StateError> {
        Ok(self.len()? == 0)
    }

    /// The records from `start` on, in key order (collect before writing to the table).
    pub fn range_from(
        &self,
        start: &K,
    ) -> Result<impl DoubleEndedIterator<Item = Result<(K, V), StateError>> + '_, StateError> {
        range_from(&self.table, start)
    }
}

fn range_from<'t, K: Key, V: Record>(
    t: &'t impl ReadableTable<&'static [u8], &'static [u8]>,
    start: &K,
) -> Result<impl DoubleEndedIterator<Item = Result<(K, V), StateError>> + 't, StateError> {
    let start = start.to_bytes();
    Ok(t.range::<&[u8]>(start.as_slice()..)?.map(|item| {
        let (k, v) = item?;
        Ok((K::from_bytes(k.value())?, decode_record(v.value())?))
    }))
}

/// A typed table open for reading.
pub struct TableRead<K, V> {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for TableRead<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableRead").finish_non_exhaustive()
    }
}

impl<K: Key, V: Record> TableRead<K, V> {
    pub fn get(&self, key: &K) -> Result<Option<V>, StateError> {
        get(&self.table, key)
    }

    /// Every record in key order (`.rev()` for the other way), decoded as it is reached.
    pub fn iter(
        &self,
    ) -> Result<impl DoubleEndedIterator<Item = Result<(K, V), StateError>> + '_, StateError> {
        Ok(self.table.iter()?.map(|item| {
            let (k, v) = item?;
            Ok((K::from_bytes(k.value())?, decode_record(v.value())?))
        }))
    }

    /// The records from `start` on, in key order.
    pub fn range_from(
        &self,
        start: &K,
    ) -> Result<impl DoubleEndedIterator<Item = Result<(K, V), StateError>> + '_, StateError> {
        range_from(&self.table, start)
    }

    /// How many records the table holds.
    pub fn len(&self) -> Result<u64, StateError> {
        use redb::ReadableTableMetadata;
        Ok(self.table.len()?)
    }

    pub fn is_empty(&self) -> Result<bool, StateError> {
        Ok(self.len()? == 0)
    }

    /// Every record, in key order.
    pub fn all(&self) -> Result<Vec<(K, V)>, StateError> {
        all(&self.table)
    }
}
