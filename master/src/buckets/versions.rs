//! Versions of a key: what one is (an object or a delete marker), how requests name one, and
//! how many a key may keep. [`super::tables::Tx::install`] stacks a new one under the bucket's
//! versioning.

use super::BucketRefusal;
use cairn_engine::state::ApplyError;
use cairn_engine::state::reject;
use serde::{Deserialize, Serialize};

use super::objects::ObjectData;
use super::settings::{BucketRecord, Versioning};

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
