//! The bucket service's tables and their keys, and [`Tx`], the reads and writes of one
//! command's transaction.
//!
//! - `s3.buckets`: bucket name → [`BucketRecord`].
//! - `s3.objects`: `bucket / key` → [`History`] (the key's versions, newest first). Bucket
//!   names never hold `/`, so one range scan lists a bucket in S3's key order (UTF-8 bytes).
//! - `s3.uploads`: `bucket / key \0 upload-id (16 BE)` → [`Upload`].
//! - `s3.parts`: upload key ‖ part number (4 BE) → [`Part`].
//!
//! Keys are composed here and nowhere else; values are versioned records
//! ([`cairn_engine::state::TypedTable`]).

use super::BucketRefusal;
use cairn_engine::state::{ApplyContext, ApplyError, Record, StateError, TypedTable, reject};
use redb::{ReadTransaction, WriteTransaction};

use super::multipart::{Part, Upload};
use super::settings::{BucketRecord, Versioning};
use super::versions::{History, Version, VersionKind};
use crate::chunks::ChunkService;
use crate::objects::handles;

pub(super) const BUCKETS: TypedTable<String, BucketRecord> = TypedTable::new("s3.buckets");
pub(super) const OBJECTS: TypedTable<Vec<u8>, History> = TypedTable::new("s3.objects");
pub(super) const UPLOADS: TypedTable<Vec<u8>, Upload> = TypedTable::new("s3.uploads");
pub(super) const PARTS: TypedTable<Vec<u8>, Part> = TypedTable::new("s3.parts");

/// Bytes an upload key holds after its object key: `\0` and the 16-byte id.
pub(super) const UPLOAD_SUFFIX: usize = 17;

pub(super) fn init(txn: &WriteTransaction) -> Result<(), StateError> {
    BUCKETS.init(txn)?;
    OBJECTS.init(txn)?;
    UPLOADS.init(txn)?;
    PARTS.init(txn)?;
    Ok(())
}

pub(super) fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key.as_bytes());
    k
}

pub(super) fn upload_key(bucket: &str, key: &str, upload: u128) -> Vec<u8> {
    let mut k = object_key(bucket, key);
    k.push(0);
    k.extend_from_slice(&upload.to_be_bytes());
    k
}

/// The object key and upload id of an upload key (`None` if it is too short to be one).
pub(super) fn split_upload_key(k: &[u8]) -> Option<(&[u8], u128)> {
    let at = k.len().checked_sub(UPLOAD_SUFFIX)?;
    let id: [u8; 16] = k.get(at + 1..)?.try_into().ok()?;
    Some((&k[..at], u128::from_be_bytes(id)))
}

pub(super) fn part_key(upload_key: &[u8], number: u32) -> Vec<u8> {
    let mut k = upload_key.to_vec();
    k.extend_from_slice(&number.to_be_bytes());
    k
}

/// The part number of `k` if it is a part of `upload_key`.
fn part_number(upload_key: &[u8], k: &[u8]) -> Option<u32> {
    let n: [u8; 4] = k.strip_prefix(upload_key)?.try_into().ok()?;
    Some(u32::from_be_bytes(n))
}

/// The smallest byte string greater than every string starting with `p` (UTF-8 never holds
/// 0xFF).
pub(super) fn after_prefix(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    v.push(0xFF);
    v
}

fn no_such_bucket(name: &str) -> ApplyError {
    reject(
        BucketRefusal::NoSuchBucket,
        format!("bucket {name} does not exist"),
    )
}

/// A bucket's record in a read, `None` when it does not exist.
pub(super) fn bucket_in(
    txn: &ReadTransaction,
    name: &str,
) -> Result<Option<BucketRecord>, StateError> {
    BUCKETS.read(txn)?.get(&name.to_owned())
}

/// A query on a bucket that must exist.
pub(super) fn require_bucket(txn: &ReadTransaction, name: &str) -> Result<(), ApplyError> {
    match bucket_in(txn, name)? {
        Some(_) => Ok(()),
        None => Err(no_such_bucket(name)),
    }
}

/// A key's versions in a read, newest first (empty when it has none).
pub(super) fn versions_in(txn: &ReadTransaction, k: &[u8]) -> Result<Vec<Version>, StateError> {
    Ok(OBJECTS.read(txn)?.get(&k.to_vec())?.unwrap_or_default().0)
}

/// The parts of an upload from part `from` on, at most `limit` of them.
fn parts_of<'t>(
    items: impl Iterator<Item = Result<(Vec<u8>, Part), StateError>> + 't,
    upload_key: &'t [u8],
    limit: usize,
) -> Result<Vec<(u32, Part)>, StateError> {
    let mut out = Vec::new();
    for item in items {
        let (k, p) = item?;
        let Some(n) = part_number(upload_key, &k) else {
            break;
        };
        if out.len() >= limit {
            break;
        }
        out.push((n, p));
    }
    Ok(out)
}

/// Up to `limit` parts of an upload, from part `from` on, in a read.
pub(super) fn parts_in(
    txn: &ReadTransaction,
    upload_key: &[u8],
    from: u32,
    limit: usize,
) -> Result<Vec<(u32, Part)>, StateError> {
    let t = PARTS.read(txn)?;
    parts_of(
        t.range_from(&part_key(upload_key, from))?,
        upload_key,
        limit,
    )
}

/// One command's transaction: every read and write the bucket service makes in it.
pub(super) struct Tx<'a> {
    pub txn: &'a WriteTransaction,
}

impl Tx<'_> {
    pub fn bucket(&self, name: &str) -> Result<BucketRecord, ApplyError> {
        BUCKETS
            .open(self.txn)?
            .get(&name.to_owned())?
            .ok_or_else(|| no_such_bucket(name))
    }

    /// The bucket's record, `None` when it does not exist.
    pub fn find_bucket(&self, name: &str) -> Result<Option<BucketRecord>, ApplyError> {
        Ok(BUCKETS.open(self.txn)?.get(&name.to_owned())?)
    }

    pub fn put_bucket(&self, name: &str, r: &BucketRecord) -> Result<(), ApplyError> {
        BUCKETS.open(self.txn)?.insert(&name.to_owned(), r)?;
        Ok(())
    }

    pub fn remove_bucket(&self, name: &str) -> Result<(), ApplyError> {
        BUCKETS.open(self.txn)?.remove(&name.to_owned())?;
        Ok(())
    }

    pub fn versions(&self, k: &[u8]) -> Result<Vec<Version>, ApplyError> {
        Ok(OBJECTS
            .open(self.txn)?
            .get(&k.to_vec())?
            .unwrap_or_default()
            .0)
    }

    pub fn put_versions(&self, k: &[u8], versions: Vec<Version>) -> Result<(), ApplyError> {
        let mut t = OBJECTS.open(self.txn)?;
        if versions.is_empty() {
            t.remove(&k.to_vec())?;
        } else {
            t.insert(&k.to_vec(), &History(versions))?;
        }
        Ok(())
    }

    /// Whether any key (with versions or delete markers) starts with `start`.
    pub fn any_object_under(&self, start: &[u8]) -> Result<bool, ApplyError> {
        let t = OBJECTS.open(self.txn)?;
        let first = t.range_from(&start.to_vec())?.next().transpose()?;
        Ok(first.is_some_and(|(k, _)| k.starts_with(start)))
    }

    pub fn upload(&self, k: &[u8]) -> Result<Upload, ApplyError> {
        UPLOADS.open(self.txn)?.get(&k.to_vec())?.ok_or_else(|| {
            reject(
                BucketRefusal::NoSuchUpload,
                "the upload does not exist (aborted or completed?)",
            )
        })
    }

    pub fn put_upload(&self, k: &[u8], u: &Upload) -> Result<(), ApplyError> {
        UPLOADS.open(self.txn)?.insert(&k.to_vec(), u)?;
        Ok(())
    }

    /// Up to `limit` uploads whose keys start with `start`.
    pub fn uploads_under(
        &self,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Upload)>, ApplyError> {
        let t = UPLOADS.open(self.txn)?;
        let mut out = Vec::new();
        for item in t.range_from(&start.to_vec())? {
            let (k, u) = item?;
            if !k.starts_with(start) || out.len() >= limit {
                break;
            }
            out.push((k, u));
        }
        Ok(out)
    }

    pub fn parts(&self, upload_key: &[u8]) -> Result<Vec<(u32, Part)>, ApplyError> {
        let t = PARTS.open(self.txn)?;
        Ok(parts_of(
            t.range_from(&part_key(upload_key, 0))?,
            upload_key,
            usize::MAX,
        )?)
    }

    /// Store a part, returning the one it replaces.
    pub fn put_part(&self, k: &[u8], p: &Part) -> Result<Option<Part>, ApplyError> {
        let mut t = PARTS.open(self.txn)?;
        let old = t.get(&k.to_vec())?;
        t.insert(&k.to_vec(), p)?;
        Ok(old)
    }

    /// Remove an upload and its parts, releasing every part's chunks.
    pub fn drop_upload(&self, k: &[u8], now_ms: u64) -> Result<(), ApplyError> {
        let parts = self.parts(k)?;
        {
            let mut t = PARTS.open(self.txn)?;
            for (n, p) in &parts {
                t.remove(&part_key(k, *n))?;
                ChunkService::release(self.txn, &handles(&p.extents), now_ms)?;
            }
        }
        UPLOADS.open(self.txn)?.remove(&k.to_vec())?;
        Ok(())
    }

    pub fn release_version(&self, v: &Version, now_ms: u64) -> Result<(), ApplyError> {
        if let VersionKind::Object(d) = &v.kind {
            ChunkService::release(self.txn, &d.content.handles(), now_ms)?;
        }
        Ok(())
    }

    /// Install `new` as the key's newest version under the bucket's versioning: it replaces
    /// the whole history (unversioned), stacks on it (enabled), or replaces the null version
    /// (suspended). Chunk references of `new` must already be taken.
    pub fn install(
        &self,
        bucket: &BucketRecord,
        k: &[u8],
        mut versions: Vec<Version>,
        new: Version,
        now_ms: u64,
    ) -> Result<(), ApplyError> {
        match bucket.versioning {
            Versioning::Unversioned => {
                for v in &versions {
                    self.release_version(v, now_ms)?;
                }
                versions.clear();
            }
            Versioning::Suspended => {
                if let Some(i) = versions.iter().position(|v| v.id.is_none()) {
                    let old = versions.remove(i);
                    self.release_version(&old, now_ms)?;
                }
            }
            Versioning::Enabled => {}
        }
        versions.insert(0, new);
        self.put_versions(k, versions)
    }

    /// The id a new version gets under the bucket's versioning.
    pub fn new_id(bucket: &BucketRecord, ctx: &ApplyContext) -> Option<u128> {
        match bucket.versioning {
            Versioning::Enabled => Some(ctx.fresh_id()),
            _ => None,
        }
    }
}

/// Records of the bucket service keep their layout from before versions as version 0, except
/// the bucket record, which also reads the layout from before `unlisted`
/// ([`BucketRecord::migrate`]).
impl Record for History {
    const NAME: &'static str = "object versions";
    const VERSION: u8 = 1;
}

impl Record for Upload {
    const NAME: &'static str = "upload";
    const VERSION: u8 = 1;
}

impl Record for Part {
    const NAME: &'static str = "part";
    const VERSION: u8 = 1;
}
