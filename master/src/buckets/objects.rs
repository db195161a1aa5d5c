//! Objects: writing a version of one (under the bucket's versioning, with its conditions),
//! deleting one, tagging one, and the reads a gateway makes to serve one.

use cairn_engine::state::{ApplyContext, ApplyError, StateError, reject};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::acl::{self, ObjectAcl, Ownership};
use super::content::{Conditions, ObjectData, check_conditions, check_data, check_key};
use super::keys::object_key;
use super::locks::{self, ObjectLock, Retention, check_retention_change};
use super::refusal::BucketRefusal;
use super::settings::{self, BucketRecord, Versioning, check_tags};
use super::versions::{
    self, OBJECTS, Version, VersionKind, VersionRef, check_room, history, history_in, install,
    new_id, set_history,
};
use crate::chunks::ChunkService;

/// Most keys one usage query counts.
pub const USAGE_SCAN_MAX: usize = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Usage {
    pub objects: u64,
    pub bytes: u64,
    /// False when the count stopped at [`USAGE_SCAN_MAX`] keys.
    pub complete: bool,
}

/// A version written: its id (`None`: the null version) and ETag.
#[derive(Debug)]
pub(super) struct Written {
    pub version: Option<u128>,
    pub etag: String,
}

/// What a delete did: the version removed or the delete marker made (`None` when the whole
/// unversioned key went), and whether that is a marker.
#[derive(Debug)]
pub(super) struct Removed {
    pub version: Option<Option<u128>>,
    pub marker: bool,
}

/// Write a new version of `bucket/key`; `lock` is the object lock the write asks for (else
/// the bucket's default retention applies, on object-lock buckets).
#[allow(clippy::too_many_arguments)]
pub(super) fn put(
    txn: &WriteTransaction,
    ctx: &ApplyContext,
    bucket: &str,
    key: &str,
    data: ObjectData,
    conditions: &Conditions,
    lock: Option<ObjectLock>,
) -> Result<Written, ApplyError> {
    check_key(key)?;
    check_data(&data)?;
    check_tags(&data.tags)?;
    let b = settings::get(txn, bucket)?;
    if let Some(l) = &lock {
        locks::check_requested(b.object_lock, l, ctx.time_ms)?;
    }
    let k = object_key(bucket, key);
    let versions = history(txn, &k)?;
    check_conditions(versions.first().and_then(Version::data), conditions)?;
    check_room(&b, &versions)?;
    let new_handles = data.content.handles();
    ChunkService::check_referable(txn, &new_handles)?;
    ChunkService::add_refs(txn, &new_handles)?;
    let id = new_id(&b, ctx);
    let etag = data.etag.clone();
    let now = ctx.time_ms;
    install(
        txn,
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
    if let Some(l) = locks::for_new_version(b.object_lock, lock, now) {
        locks::put(txn, &k, id, &l)?;
    }
    if id.is_none() {
        // A new null version starts private (a `WithAcl` around this write sets its ACL).
        versions::forget_extras(txn, &k, None)?;
    }
    Ok(Written { version: id, etag })
}

/// Delete a version (`version` named), or the key: all of it when unversioned, else by
/// stacking a delete marker.
/// ... unless object lock holds the version named (`bypass_governance`: the request may
/// override a GOVERNANCE retention), or `if_match` is given and the current version's ETag is
/// not among it (no current object: `no_such_key`).
pub(super) fn delete(
    txn: &WriteTransaction,
    ctx: &ApplyContext,
    bucket: &str,
    key: &str,
    version: Option<VersionRef>,
    bypass_governance: bool,
    if_match: Option<&[String]>,
) -> Result<Removed, ApplyError> {
    check_key(key)?;
    let b = settings::get(txn, bucket)?;
    let k = object_key(bucket, key);
    let mut versions = history(txn, &k)?;
    if let Some(wanted) = if_match {
        let Some(current) = versions.first().and_then(Version::data) else {
            return Err(reject(
                BucketRefusal::NoSuchKey,
                "The specified key does not exist.",
            ));
        };
        check_conditions(
            Some(current),
            &Conditions {
                if_match: Some(wanted.to_vec()),
                if_none_match_any: false,
            },
        )?;
    }
    let now = ctx.time_ms;
    if let Some(r) = version {
        let Some(i) = versions.iter().position(|v| r.matches(v.id)) else {
            // Deleting a version that is not there succeeds (as S3 does).
            return Ok(Removed {
                version: Some(r.id()),
                marker: false,
            });
        };
        locks::release_for_delete(txn, &k, versions[i].id, now, bypass_governance)?;
        versions::forget_extras(txn, &k, versions[i].id)?;
        let old = versions.remove(i);
        versions::release(txn, &old, now)?;
        set_history(txn, &k, versions)?;
        return Ok(Removed {
            version: Some(old.id),
            marker: old.is_marker(),
        });
    }
    match b.versioning {
        Versioning::Unversioned => {
            for v in &versions {
                versions::release(txn, v, now)?;
            }
            versions::forget_extras(txn, &k, None)?;
            set_history(txn, &k, Vec::new())?;
            Ok(Removed {
                version: None,
                marker: false,
            })
        }
        Versioning::Enabled | Versioning::Suspended => {
            check_room(&b, &versions)?;
            let id = new_id(&b, ctx);
            install(
                txn,
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
            Ok(Removed {
                version: Some(id),
                marker: true,
            })
        }
    }
}

pub(super) fn set_tags(
    txn: &WriteTransaction,
    bucket: &str,
    key: &str,
    version: Option<VersionRef>,
    tags: Vec<(String, String)>,
) -> Result<(), ApplyError> {
    check_key(key)?;
    check_tags(&tags)?;
    settings::get(txn, bucket)?;
    let k = object_key(bucket, key);
    let mut versions = history(txn, &k)?;
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
    set_history(txn, &k, versions)?;
    Ok(())
}

/// Whether `bucket/key`'s newest version is an object (not a delete marker).
pub(super) fn is_live(txn: &WriteTransaction, bucket: &str, key: &str) -> Result<bool, StateError> {
    Ok(history(txn, &object_key(bucket, key))?
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
    let Some(record) = settings::read(txn, bucket)? else {
        return Ok(None);
    };
    let versions = versions::history_in(txn, &object_key(bucket, key))?;
    let found = match version {
        None => versions.into_iter().next(),
        Some(r) => versions.into_iter().find(|v| r.matches(v.id)),
    };
    Ok(Some((record, found)))
}

/// Objects and bytes in `bucket` (`None` when it does not exist).
pub(super) fn usage(txn: &ReadTransaction, bucket: &str) -> Result<Option<Usage>, StateError> {
    if settings::read(txn, bucket)?.is_none() {
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

/// A change to a version's object lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockChange {
    /// Set (or, with `None`, remove) the retention.
    Retention(Option<Retention>),
    LegalHold(bool),
}

/// Change the object lock of a version (`None`: the newest), in a bucket with object lock.
pub(super) fn set_lock(
    txn: &WriteTransaction,
    now_ms: u64,
    bucket: &str,
    key: &str,
    version: Option<VersionRef>,
    change: LockChange,
    bypass_governance: bool,
) -> Result<(), ApplyError> {
    check_key(key)?;
    let b = settings::get(txn, bucket)?;
    if b.object_lock.is_none() {
        return Err(reject(
            BucketRefusal::InvalidRequest,
            "Bucket is missing Object Lock Configuration",
        ));
    }
    let k = object_key(bucket, key);
    let versions = history(txn, &k)?;
    let v = object_version(&versions, version, "a delete marker cannot be locked")?;
    let mut lock = locks::get(txn, &k, v.id)?;
    match change {
        LockChange::Retention(new) => {
            if new.is_some_and(|r| r.until_ms <= now_ms) {
                return Err(reject(
                    BucketRefusal::InvalidArgument,
                    "The retain until date must be in the future!",
                ));
            }
            check_retention_change(lock.retention, new, now_ms, bypass_governance)
                .map_err(|why| reject(BucketRefusal::ObjectLocked, why))?;
            lock.retention = new;
        }
        LockChange::LegalHold(on) => lock.legal_hold = on,
    }
    locks::put(txn, &k, v.id, &lock)?;
    Ok(())
}

/// A version's id and its object lock.
pub type VersionLock = (Option<u128>, ObjectLock);

/// The object lock of a version (`None`: the newest): `None` when the bucket does not exist,
/// `Some(None)` when there is no such version (or it is a delete marker).
pub(super) fn lock_of(
    txn: &ReadTransaction,
    bucket: &str,
    key: &str,
    version: Option<VersionRef>,
) -> Result<Option<Option<VersionLock>>, StateError> {
    if settings::read(txn, bucket)?.is_none() {
        return Ok(None);
    }
    let k = object_key(bucket, key);
    Ok(Some(match object_version_in(txn, &k, version)? {
        Some(id) => Some((id, locks::read(txn, &k, id)?)),
        None => None,
    }))
}

/// An object ACL a write or `PutObjectAcl` asks for: refused when the bucket's ownership
/// disables ACLs and it grants something, or when it is public under `BlockPublicAcls`.
pub(super) fn check_object_acl(
    txn: &WriteTransaction,
    bucket: &str,
    a: &ObjectAcl,
) -> Result<(), ApplyError> {
    let b = settings::get(txn, bucket)?;
    if b.ownership == Some(Ownership::BucketOwnerEnforced) && !a.grants.is_empty() {
        return Err(reject(
            BucketRefusal::AclNotSupported,
            "The bucket does not allow ACLs",
        ));
    }
    if acl::is_public(&a.grants) && b.access_block().block_public_acls {
        return Err(reject(
            BucketRefusal::PublicAccessBlocked,
            "the bucket's public access block (BlockPublicAcls) refuses a public ACL",
        ));
    }
    Ok(())
}

/// Replace the ACL of a version (`None`: the newest).
pub(super) fn set_acl(
    txn: &WriteTransaction,
    bucket: &str,
    key: &str,
    version: Option<VersionRef>,
    a: ObjectAcl,
) -> Result<(), ApplyError> {
    check_key(key)?;
    check_object_acl(txn, bucket, &a)?;
    let k = object_key(bucket, key);
    let versions = history(txn, &k)?;
    let v = object_version(&versions, version, "a delete marker has no ACL")?;
    acl::put(txn, &k, v.id, &a)?;
    Ok(())
}

/// A version's id and its ACL.
pub type VersionAcl = (Option<u128>, ObjectAcl);

/// The ACL of a version (`None`: the newest), answered like [`lock_of`].
pub(super) fn acl_of(
    txn: &ReadTransaction,
    bucket: &str,
    key: &str,
    version: Option<VersionRef>,
) -> Result<Option<Option<VersionAcl>>, StateError> {
    if settings::read(txn, bucket)?.is_none() {
        return Ok(None);
    }
    let k = object_key(bucket, key);
    Ok(Some(match object_version_in(txn, &k, version)? {
        Some(id) => Some((id, acl::read(txn, &k, id)?)),
        None => None,
    }))
}

/// The version a request names (`None`: the newest), which must be an object: S3's errors for
/// a delete marker (`marker`), a missing version or a missing key.
fn object_version<'a>(
    versions: &'a [Version],
    version: Option<VersionRef>,
    marker: &str,
) -> Result<&'a Version, ApplyError> {
    let found = match version {
        Some(r) => versions.iter().find(|v| r.matches(v.id)),
        None => versions.first(),
    };
    match found {
        Some(v) if v.is_marker() => Err(reject(BucketRefusal::MethodNotAllowed, marker)),
        Some(v) => Ok(v),
        None if version.is_some() => Err(reject(
            BucketRefusal::NoSuchVersion,
            "The specified version does not exist.",
        )),
        None => Err(reject(
            BucketRefusal::NoSuchKey,
            "The specified key does not exist.",
        )),
    }
}

/// In a read: the id of the object version a request names (`None`: the newest), `None`
/// when there is none or it is a delete marker.
fn object_version_in(
    txn: &ReadTransaction,
    k: &[u8],
    version: Option<VersionRef>,
) -> Result<Option<Option<u128>>, StateError> {
    let versions = history_in(txn, k)?;
    let found = match version {
        Some(r) => versions.iter().find(|v| r.matches(v.id)),
        None => versions.first(),
    };
    Ok(found.filter(|v| !v.is_marker()).map(|v| v.id))
}
