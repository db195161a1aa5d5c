//! Versions of a key: what one is (an object or a delete marker), how requests name one, the
//! `s3.objects` table of every key's history, and installing a new version under the bucket's
//! versioning (which releases the chunks of the versions it replaces).

use cairn_engine::state::{ApplyContext, ApplyError, StateError, TypedTable, reject};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::content::ObjectData;
use super::refusal::BucketRefusal;
use super::settings::{BucketRecord, Versioning};
use super::{acl, checksums};
use crate::chunks::ChunkService;

/// `bucket / key` (see `keys::object_key`) → the key's versions, newest first.
pub(super) const OBJECTS: TypedTable<Vec<u8>, History> = TypedTable::new("s3.objects");

/// Most versions one key keeps; a put beyond it is refused until old versions are deleted.
pub const VERSIONS_MAX: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // versions are decoded in small numbers, never stored in bulk
pub enum VersionKind {
    DeleteMarker,
    Object(ObjectData),
}

/// One version of a key. `id` is `None` for the "null" version (unversioned or suspended).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub id: Option<u128>,
    pub modified_ms: u64,
    pub kind: VersionKind,
}

impl Version {
    pub fn is_marker(&self) -> bool {
        matches!(self.kind, VersionKind::DeleteMarker)
    }
    pub fn data(&self) -> Option<&ObjectData> {
        match &self.kind {
            VersionKind::Object(d) => Some(d),
            VersionKind::DeleteMarker => None,
        }
    }
    /// How a request names this version.
    pub fn reference(&self) -> VersionRef {
        match self.id {
            None => VersionRef::Null,
            Some(x) => VersionRef::Id(x),
        }
    }
}

/// A key's versions, newest first: the value of the `s3.objects` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct History(pub Vec<Version>);

// Layout 1; layout 0 is the same without the version byte.
cairn_engine::records! { History = "object versions" }

/// Which version a request names: `null` or an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionRef {
    Null,
    Id(u128),
}

impl VersionRef {
    /// `"null"` or the 32 hex digits Cairn hands out.
    pub fn parse(s: &str) -> Option<VersionRef> {
        if s == "null" {
            return Some(VersionRef::Null);
        }
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(VersionRef::Id)
    }

    pub(super) fn matches(self, id: Option<u128>) -> bool {
        match self {
            VersionRef::Null => id.is_none(),
            VersionRef::Id(x) => id == Some(x),
        }
    }

    /// The version id this names (`None` for the null version).
    pub(super) fn id(self) -> Option<u128> {
        match self {
            VersionRef::Null => None,
            VersionRef::Id(x) => Some(x),
        }
    }
}

/// A version id as S3 shows it.
pub fn version_string(id: Option<u128>) -> String {
    match id {
        None => "null".to_owned(),
        Some(x) => format!("{x:032x}"),
    }
}

pub(super) fn init(txn: &WriteTransaction) -> Result<(), StateError> {
    OBJECTS.init(txn)
}

/// A key's versions (empty when it has none).
pub(super) fn history(txn: &WriteTransaction, k: &[u8]) -> Result<Vec<Version>, StateError> {
    Ok(OBJECTS.open(txn)?.get(&k.to_vec())?.unwrap_or_default().0)
}

/// A key's versions in a read.
pub(super) fn history_in(txn: &ReadTransaction, k: &[u8]) -> Result<Vec<Version>, StateError> {
    Ok(OBJECTS.read(txn)?.get(&k.to_vec())?.unwrap_or_default().0)
}

/// Store a key's versions; none left removes the key.
pub(super) fn set_history(
    txn: &WriteTransaction,
    k: &[u8],
    versions: Vec<Version>,
) -> Result<(), StateError> {
    let mut t = OBJECTS.open(txn)?;
    if versions.is_empty() {
        t.remove(&k.to_vec())?;
    } else {
        t.insert(&k.to_vec(), &History(versions))?;
    }
    Ok(())
}

/// Whether any key (versions and delete markers count) starts with `start`.
pub(super) fn any_under(txn: &WriteTransaction, start: &[u8]) -> Result<bool, StateError> {
    let t = OBJECTS.open(txn)?;
    let first = t.range_from(&start.to_vec())?.next().transpose()?;
    Ok(first.is_some_and(|(k, _)| k.starts_with(start)))
}

/// Release the chunks a version holds.
/// Forget what the per-version side tables keep of a version that goes (or of a null version
/// being replaced): its ACL and its part checksums.
pub(super) fn forget_extras(
    txn: &WriteTransaction,
    object_key: &[u8],
    version: Option<u128>,
) -> Result<(), StateError> {
    acl::forget(txn, object_key, version)?;
    checksums::put_for_version(txn, object_key, version, None)
}

pub(super) fn release(txn: &WriteTransaction, v: &Version, now_ms: u64) -> Result<(), ApplyError> {
    if let VersionKind::Object(d) = &v.kind {
        ChunkService::release(txn, &d.content.handles(), now_ms)?;
    }
    Ok(())
}

/// Install `new` as the key's newest version under the bucket's versioning: it replaces the
/// whole history (unversioned), stacks on it (enabled), or replaces the null version
/// (suspended). Chunk references of `new` must already be taken.
pub(super) fn install(
    txn: &WriteTransaction,
    bucket: &BucketRecord,
    k: &[u8],
    mut versions: Vec<Version>,
    new: Version,
    now_ms: u64,
) -> Result<(), ApplyError> {
    match bucket.versioning {
        Versioning::Unversioned => {
            for v in &versions {
                release(txn, v, now_ms)?;
            }
            versions.clear();
        }
        Versioning::Suspended => {
            if let Some(i) = versions.iter().position(|v| v.id.is_none()) {
                let old = versions.remove(i);
                release(txn, &old, now_ms)?;
            }
        }
        Versioning::Enabled => {}
    }
    versions.insert(0, new);
    Ok(set_history(txn, k, versions)?)
}

/// The id a new version gets under the bucket's versioning.
pub(super) fn new_id(bucket: &BucketRecord, ctx: &ApplyContext) -> Option<u128> {
    match bucket.versioning {
        Versioning::Enabled => Some(ctx.fresh_id()),
        _ => None,
    }
}

/// Refuse a new version when the key already keeps [`VERSIONS_MAX`].
pub(super) fn check_room(bucket: &BucketRecord, versions: &[Version]) -> Result<(), ApplyError> {
    if bucket.versioning != Versioning::Unversioned && versions.len() >= VERSIONS_MAX {
        return Err(reject(
            BucketRefusal::TooManyVersions,
            format!("a key keeps at most {VERSIONS_MAX} versions; delete old ones first"),
        ));
    }
    Ok(())
}
