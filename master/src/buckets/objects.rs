//! Objects: what a version of an object holds (size, ETag, where its bytes are, metadata,
//! tags), writing and deleting one under the bucket's versioning, conditional writes, and the
//! reads a gateway makes to serve one.

use super::BucketRefusal;
use cairn_engine::state::{ApplyContext, ApplyError, Rejection, StateError, reject};
use cairn_proto::ChunkHandle;
use redb::ReadTransaction;
use serde::{Deserialize, Serialize};

use super::BucketResponse;
use super::settings::{BucketRecord, Versioning, check_tags};
use super::tables::{OBJECTS, Tx, bucket_in, object_key, versions_in};
use super::versions::{Version, VersionKind, VersionRef, check_room};
use crate::chunks::ChunkService;
use crate::objects::{Extent, check_extents, handles};

/// S3's limit on key length, in bytes.
pub const KEY_LEN_MAX: usize = 1024;
/// Most keys one usage query counts.
pub const USAGE_SCAN_MAX: usize = 1_000_000;

/// Standard headers and user metadata stored with an object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectMeta {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    /// `Expires`, ms since the epoch.
    pub expires_ms: Option<i64>,
    pub user: Vec<(String, String)>,
    /// The checksum the writer asked for: (algorithm, base64 value); whole-object only.
    pub checksum: Option<(String, String)>,
}

/// Where an object's bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// Small objects live in the metadata itself: one log entry, no chunk round trips.
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    Chunks(Vec<Extent>),
}

impl Content {
    pub(super) fn handles(&self) -> Vec<ChunkHandle> {
        match self {
            Content::Inline(_) => Vec::new(),
            Content::Chunks(e) => handles(e),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectData {
    pub size: u64,
    /// The ETag without quotes: hex MD5, or `hex(md5 of part md5s)-N` for multipart.
    pub etag: String,
    /// Part sizes of a multipart object (for `partNumber` reads); empty for a single put.
    pub parts: Vec<u64>,
    pub content: Content,
    pub meta: ObjectMeta,
    pub tags: Vec<(String, String)>,
}

/// Conditions a write checks atomically against the current version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Conditions {
    /// `If-Match`: the current version's ETag must be one of these (`*`: any object).
    pub if_match: Option<Vec<String>>,
    /// `If-None-Match: *`: there must be no current object.
    pub if_none_match_any: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Usage {
    pub objects: u64,
    pub bytes: u64,
    /// False when the count stopped at [`USAGE_SCAN_MAX`] keys.
    pub complete: bool,
}

pub(super) fn check_key(key: &str) -> Result<(), Rejection> {
    if key.is_empty() || key.len() > KEY_LEN_MAX || key.contains('\0') {
        return Err(Rejection::new(
            BucketRefusal::InvalidKey,
            format!("object keys are 1..={KEY_LEN_MAX} bytes of UTF-8 without NUL"),
        ));
    }
    Ok(())
}

fn check_data(data: &ObjectData) -> Result<(), Rejection> {
    match &data.content {
        Content::Inline(b) => {
            if b.len() as u64 != data.size {
                return Err(Rejection::new(
                    BucketRefusal::InvalidArgument,
                    "inline bytes do not match the size",
                ));
            }
            Ok(())
        }
        Content::Chunks(e) => check_extents(data.size, e),
    }
}

/// Whether `etag` (as the client sent it, quoted or not) names `current`.
pub(super) fn etag_matches(current: &str, wanted: &str) -> bool {
    let w = wanted.trim();
    let w = w.strip_prefix("W/").unwrap_or(w);
    w == "*" || w.trim_matches('"') == current
}

pub(super) fn check_conditions(
    current: Option<&Version>,
    c: &Conditions,
) -> Result<(), ApplyError> {
    let live = current.and_then(Version::data);
    if c.if_none_match_any && live.is_some() {
        return Err(reject(
            BucketRefusal::PreconditionFailed,
            "If-None-Match: * but the object exists",
        ));
    }
    if let Some(wanted) = &c.if_match {
        let ok = live.is_some_and(|d| wanted.iter().any(|w| etag_matches(&d.etag, w)));
        if !ok {
            return Err(reject(
                BucketRefusal::PreconditionFailed,
                "If-Match does not match the current ETag",
            ));
        }
    }
    Ok(())
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

pub(super) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(super) fn put(
    tx: &Tx,
    ctx: &ApplyContext,
    bucket: &str,
    key: &str,
    data: ObjectData,
    conditions: &Conditions,
) -> Result<BucketResponse, ApplyError> {
    check_key(key)?;
    check_data(&data)?;
    check_tags(&data.tags)?;
    let b = tx.bucket(bucket)?;
    let k = object_key(bucket, key);
    let versions = tx.versions(&k)?;
    check_conditions(versions.first(), conditions)?;
    check_room(&b, &versions)?;
    let new_handles = data.content.handles();
    ChunkService::check_referable(tx.txn, &new_handles)?;
    ChunkService::add_refs(tx.txn, &new_handles)?;
    let id = Tx::new_id(&b, ctx);
    let etag = data.etag.clone();
    let now = ctx.time_ms;
    tx.install(
        &b,
        &k,
        versions,
        Version {
            id,
            modified_ms: now,
            kind: VersionKind::Object(data),
        },
        now,
    )?;
    Ok(BucketResponse::Put { version: id, etag })
}

/// Delete a version (`version` named), or the key: all of it when unversioned, else by
/// stacking a delete marker.
pub(super) fn delete(
    tx: &Tx,
    ctx: &ApplyContext,
    bucket: &str,
    key: &str,
    version: Option<VersionRef>,
) -> Result<BucketResponse, ApplyError> {
    check_key(key)?;
    let b = tx.bucket(bucket)?;
    let k = object_key(bucket, key);
    let mut versions = tx.versions(&k)?;
    let now = ctx.time_ms;
    if let Some(r) = version {
        let Some(i) = versions.iter().position(|v| r.matches(v.id)) else {
            // Deleting a version that is not there succeeds (as S3 does).
            return Ok(BucketResponse::Deleted {
                version: Some(r.id()),
                marker: false,
            });
        };
        let old = versions.remove(i);
        tx.release_version(&old, now)?;
        tx.put_versions(&k, versions)?;
        return Ok(BucketResponse::Deleted {
            version: Some(old.id),
            marker: old.is_marker(),
        });
    }
    match b.versioning {
        Versioning::Unversioned => {
            for v in &versions {
                tx.release_version(v, now)?;
            }
            tx.put_versions(&k, Vec::new())?;
            Ok(BucketResponse::Deleted {
                version: None,
                marker: false,
            })
        }
        Versioning::Enabled | Versioning::Suspended => {
            check_room(&b, &versions)?;
            let id = Tx::new_id(&b, ctx);
            tx.install(
                &b,
                &k,
                versions,
                Version {
                    id,
                    modified_ms: now,
                    kind: VersionKind::DeleteMarker,
                },
                now,
            )?;
            Ok(BucketResponse::Deleted {
                version: Some(id),
                marker: true,
            })
        }
    }
}

pub(super) fn set_tags(
    tx: &Tx,
    bucket: &str,
    key: &str,
    version: Option<VersionRef>,
    tags: Vec<(String, String)>,
) -> Result<BucketResponse, ApplyError> {
    check_key(key)?;
    check_tags(&tags)?;
    tx.bucket(bucket)?;
    let k = object_key(bucket, key);
    let mut versions = tx.versions(&k)?;
    let i = match version {
        Some(r) => versions.iter().position(|v| r.matches(v.id)),
        None => (!versions.is_empty()).then_some(0),
    };
    match i.and_then(|i| versions.get_mut(i)) {
        Some(Version {
            kind: VersionKind::Object(d),
            ..
        }) => d.tags = tags,
        Some(_) => {
            return Err(reject(
                BucketRefusal::MethodNotAllowed,
                "a delete marker has no tags",
            ));
        }
        None if version.is_some() => {
            return Err(reject(BucketRefusal::NoSuchVersion, "no such version"));
        }
        None => return Err(reject(BucketRefusal::NoSuchKey, "no such key")),
    }
    tx.put_versions(&k, versions)?;
    Ok(BucketResponse::Done)
}

/// Whether `bucket/key`'s newest version is an object (not a delete marker).
pub(super) fn is_live(tx: &Tx, bucket: &str, key: &str) -> Result<bool, ApplyError> {
    Ok(tx
        .versions(&object_key(bucket, key))?
        .first()
        .is_some_and(|v| v.data().is_some()))
}

/// The bucket's record and a key's version in it (the newest when `version` is `None`);
/// `None` when the bucket does not exist.
pub(super) fn object_in(
    txn: &ReadTransaction,
    bucket: &str,
    key: &str,
    version: Option<VersionRef>,
) -> Result<Option<(BucketRecord, Option<Version>)>, StateError> {
    let Some(record) = bucket_in(txn, bucket)? else {
        return Ok(None);
    };
    let versions = versions_in(txn, &object_key(bucket, key))?;
    let found = match version {
        None => versions.into_iter().next(),
        Some(r) => versions.into_iter().find(|v| r.matches(v.id)),
    };
    Ok(Some((record, found)))
}

/// Objects and bytes in `bucket` (`None` when it does not exist).
pub(super) fn usage(txn: &ReadTransaction, bucket: &str) -> Result<Option<Usage>, StateError> {
    if bucket_in(txn, bucket)?.is_none() {
        return Ok(None);
    }
    let start = object_key(bucket, "");
    let mut u = Usage {
        complete: true,
        ..Usage::default()
    };
    let t = OBJECTS.read(txn)?;
    for (n, item) in t.range_from(&start)?.enumerate() {
        let (k, history) = item?;
        if !k.starts_with(&start) {
            break;
        }
        if n >= USAGE_SCAN_MAX {
            u.complete = false;
            break;
        }
        if let Some(d) = history.0.first().and_then(Version::data) {
            u.objects += 1;
            u.bytes += d.size;
        }
    }
    Ok(Some(u))
}
