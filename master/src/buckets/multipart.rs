//! Multipart uploads: an upload and its parts, their tables, and creating, filling,
//! completing and aborting one. A completed upload becomes one version whose extents are its
//! chosen parts' extents.

use std::collections::BTreeMap;

use cairn_engine::state::{ApplyContext, ApplyError, Rejection, StateError, TypedTable, reject};
use md5::Digest;
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::acl;
use super::checksums::{self, ObjectChecksums, PartSums};
use super::content::{
    Conditions, Content, Encrypted, ObjectData, ObjectMeta, check_conditions, check_key,
    etag_matches, hex, hex_decode,
};
use super::keys::{object_key, part_key, part_number, upload_key};
use super::locks;
use super::objects::Written;
use super::refusal::BucketRefusal;
use super::settings::{self, check_tags};
use super::sse::{self, sealed_len};
use super::versions::{Version, VersionKind, check_room, history, install, new_id};
use crate::chunks::ChunkService;
use crate::objects::{Extent, check_extents, handles};

/// `bucket / key \0 upload id` → upload.
pub(super) const UPLOADS: TypedTable<Vec<u8>, Upload> = TypedTable::new("s3.uploads");
/// Upload key ‖ part number → part.
const PARTS: TypedTable<Vec<u8>, Part> = TypedTable::new("s3.parts");

/// Parts of one multipart upload (S3's limit).
pub const PART_NUMBER_MAX: u32 = 10_000;
/// Smallest part other than the last (S3's limit).
pub const PART_SIZE_MIN: u64 = 5 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub initiated_ms: u64,
    pub owner: String,
    pub meta: ObjectMeta,
    pub tags: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub etag: String,
    pub size: u64,
    pub extents: Vec<Extent>,
    pub modified_ms: u64,
}

/// An upload id as S3 shows it.
pub fn upload_string(id: u128) -> String {
    format!("{id:032x}")
}

pub fn parse_upload(s: &str) -> Option<u128> {
    if s.len() != 32 {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// The ETag of a multipart object: MD5 of the parts' binary MD5s, then `-N`.
pub fn multipart_etag(part_etags: &[&str]) -> Result<String, Rejection> {
    let mut h = md5::Md5::new();
    for e in part_etags {
        let raw = hex_decode(e)
            .ok_or_else(|| Rejection::new(BucketRefusal::InvalidPart, "bad part ETag"))?;
        h.update(&raw);
    }
    Ok(format!("{}-{}", hex(&h.finalize()), part_etags.len()))
}

cairn_engine::records! {
    Upload = "upload",
    Part = "part",
}

pub(super) fn init(txn: &WriteTransaction) -> Result<(), StateError> {
    UPLOADS.init(txn)?;
    PARTS.init(txn)
}

fn no_such_upload() -> ApplyError {
    reject(
        BucketRefusal::NoSuchUpload,
        "the upload does not exist (aborted or completed?)",
    )
}

fn upload(txn: &WriteTransaction, k: &[u8]) -> Result<Upload, ApplyError> {
    UPLOADS
        .open(txn)?
        .get(&k.to_vec())?
        .ok_or_else(no_such_upload)
}

/// An upload in a read.
pub(super) fn upload_in(txn: &ReadTransaction, k: &[u8]) -> Result<Option<Upload>, StateError> {
    UPLOADS.read(txn)?.get(&k.to_vec())
}

/// Up to `limit` parts of an upload, from part `from` on.
fn parts_of(
    items: impl Iterator<Item = Result<(Vec<u8>, Part), StateError>>,
    upload_key: &[u8],
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

fn parts(txn: &WriteTransaction, upload_key: &[u8]) -> Result<Vec<(u32, Part)>, StateError> {
    let t = PARTS.open(txn)?;
    parts_of(
        t.range_from(&part_key(upload_key, 0))?,
        upload_key,
        usize::MAX,
    )
}

/// Every upload whose key starts with `start`.
pub(super) fn uploads_under(
    txn: &WriteTransaction,
    start: &[u8],
) -> Result<Vec<Vec<u8>>, StateError> {
    let t = UPLOADS.open(txn)?;
    let mut out = Vec::new();
    for item in t.range_from(&start.to_vec())? {
        let (k, _) = item?;
        if !k.starts_with(start) {
            break;
        }
        out.push(k);
    }
    Ok(out)
}

/// Remove an upload and its parts, releasing every part's chunks.
pub(super) fn drop_upload(txn: &WriteTransaction, k: &[u8], now_ms: u64) -> Result<(), ApplyError> {
    let parts = parts(txn, k)?;
    {
        let mut t = PARTS.open(txn)?;
        for (n, p) in &parts {
            t.remove(&part_key(k, *n))?;
            ChunkService::release(txn, &handles(&p.extents), now_ms)?;
        }
    }
    UPLOADS.open(txn)?.remove(&k.to_vec())?;
    locks::take_for_upload(txn, k)?;
    acl::take_for_upload(txn, k)?;
    sse::drop_upload(txn, k, parts.iter().map(|(n, _)| *n))?;
    checksums::drop_upload(txn, k, parts.iter().map(|(n, _)| *n))?;
    Ok(())
}

/// Begin an upload; its id.
pub(super) fn create(
    txn: &WriteTransaction,
    ctx: &ApplyContext,
    bucket: &str,
    key: &str,
    upload: Upload,
) -> Result<u128, ApplyError> {
    check_key(key)?;
    check_tags(&upload.tags)?;
    settings::get(txn, bucket)?;
    let id = ctx.fresh_id();
    UPLOADS
        .open(txn)?
        .insert(&upload_key(bucket, key, id), &upload)?;
    Ok(id)
}

/// Store part `number` of an upload (replacing one uploaded before under that number); its
/// ETag. A part of an upload begun encrypted comes sealed, with its stream's `salt` (its
/// extents hold the sealed bytes of `part.size` plaintext bytes); a part of any other upload
/// comes without.
#[allow(clippy::too_many_arguments)]
pub(super) fn put_part(
    txn: &WriteTransaction,
    now: u64,
    bucket: &str,
    key: &str,
    id: u128,
    number: u32,
    part: Part,
    salt: Option<[u8; 16]>,
) -> Result<String, ApplyError> {
    check_key(key)?;
    if !(1..=PART_NUMBER_MAX).contains(&number) {
        return Err(reject(
            BucketRefusal::InvalidArgument,
            format!("part numbers are 1 to {PART_NUMBER_MAX}"),
        ));
    }
    let stored = if salt.is_some() {
        sealed_len(part.size)
    } else {
        part.size
    };
    if stored > 0 {
        check_extents(stored, &part.extents)?;
    } else if !part.extents.is_empty() {
        return Err(reject(
            BucketRefusal::InvalidArgument,
            "an empty part has no extents",
        ));
    }
    settings::get(txn, bucket)?;
    let uk = upload_key(bucket, key, id);
    upload(txn, &uk)?;
    if sse::of_upload(txn, &uk)?.is_some() != salt.is_some() {
        return Err(reject(
            BucketRefusal::InvalidRequest,
            if salt.is_some() {
                "the upload was not begun encrypted"
            } else {
                "the upload was begun encrypted: its parts are sealed by the gateway"
            },
        ));
    }
    sse::set_part_salt(txn, &uk, number, salt)?;
    // A part stored again loses the checksum of the one it replaces (`CheckedPart` sets the
    // new one's).
    checksums::set_part(txn, &uk, number, None)?;
    let new = handles(&part.extents);
    ChunkService::check_referable(txn, &new)?;
    ChunkService::add_refs(txn, &new)?;
    let etag = part.etag.clone();
    let old = {
        let mut t = PARTS.open(txn)?;
        let pk = part_key(&uk, number);
        let old = t.get(&pk)?;
        t.insert(&pk, &part)?;
        old
    };
    if let Some(old) = old {
        ChunkService::release(txn, &handles(&old.extents), now)?;
    }
    Ok(etag)
}

/// Complete an upload from the parts the client names, (number, ETag) in ascending order.
/// The new version gets `lock`, else the lock given when the upload began, else the bucket's
/// default retention; and the checksums `sums` carries, when the gateway combined them.
pub(super) fn complete(
    txn: &WriteTransaction,
    ctx: &ApplyContext,
    (bucket, key, id): (&str, &str, u128),
    named: &[(u32, String)],
    conditions: &Conditions,
    lock: Option<locks::ObjectLock>,
    sums: Option<ObjectChecksums>,
) -> Result<Written, ApplyError> {
    check_key(key)?;
    let b = settings::get(txn, bucket)?;
    let uk = upload_key(bucket, key, id);
    let u = upload(txn, &uk)?;
    if named.is_empty() {
        return Err(reject(
            BucketRefusal::MalformedXml,
            "a completed upload names at least one part",
        ));
    }
    if named.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(reject(
            BucketRefusal::InvalidPartOrder,
            "parts must be listed in ascending order of part number",
        ));
    }
    let stored: BTreeMap<u32, Part> = parts(txn, &uk)?.into_iter().collect();
    let mut chosen = Vec::with_capacity(named.len());
    for (n, etag) in named {
        let Some(p) = stored.get(n) else {
            return Err(reject(
                BucketRefusal::InvalidPart,
                format!("part {n} was not uploaded"),
            ));
        };
        if !etag_matches(&p.etag, etag) || etag.trim() == "*" {
            return Err(reject(
                BucketRefusal::InvalidPart,
                format!("part {n}'s ETag does not match"),
            ));
        }
        chosen.push(p);
    }
    let mut meta = u.meta;
    let mut part_sums = None;
    if let Some(sums) = sums {
        if sums.parts.len() != named.len() {
            return Err(reject(
                BucketRefusal::InvalidArgument,
                "one part checksum (or none) per part named",
            ));
        }
        for ((n, _), given) in named.iter().zip(&sums.parts) {
            let stored = checksums::part(txn, &uk, *n)?
                .filter(|c| c.algorithm == sums.object.0)
                .map(|c| c.value);
            if stored.as_ref() != given.as_ref() {
                return Err(reject(
                    BucketRefusal::InvalidPart,
                    format!("part {n}'s checksum does not match"),
                ));
            }
        }
        part_sums = sums.parts.into_iter().collect::<Option<Vec<_>>>();
        meta.checksum = Some(sums.object);
    }
    // Every named part exists and matches before sizes are judged.
    for (i, p) in chosen.iter().enumerate() {
        if i + 1 < chosen.len() && p.size < PART_SIZE_MIN {
            return Err(reject(
                BucketRefusal::EntityTooSmall,
                format!(
                    "part {} is {} bytes; every part but the last needs 5 MiB",
                    named[i].0, p.size
                ),
            ));
        }
    }
    let k = object_key(bucket, key);
    let versions = history(txn, &k)?;
    check_conditions(versions.first().and_then(Version::data), conditions)?;
    check_room(&b, &versions)?;
    let etags: Vec<&str> = chosen.iter().map(|p| p.etag.as_str()).collect();
    let etag = multipart_etag(&etags)?;
    let extents: Vec<Extent> = chosen
        .iter()
        .flat_map(|p| p.extents.iter().copied())
        .collect();
    let size: u64 = chosen.iter().map(|p| p.size).sum();
    let part_sizes: Vec<u64> = chosen.iter().map(|p| p.size).collect();
    let content = match sse::of_upload(txn, &uk)? {
        None => {
            check_extents(size, &extents)?;
            Content::Chunks(extents.clone())
        }
        Some(key) => {
            check_extents(part_sizes.iter().copied().map(sealed_len).sum(), &extents)?;
            let mut salts = Vec::with_capacity(named.len());
            for (n, _) in named {
                salts.push(sse::part_salt(txn, &uk, *n)?);
            }
            Content::Encrypted(Box::new(Encrypted {
                sse: key,
                salts,
                body: Content::Chunks(extents.clone()),
            }))
        }
    };
    // The object takes its own references, then the upload (every part, chosen or not)
    // releases its.
    let now = ctx.time_ms;
    let kept = locks::take_for_upload(txn, &uk)?;
    let own = lock.or(kept);
    let kept_acl = acl::take_for_upload(txn, &uk)?;
    ChunkService::add_refs(txn, &handles(&extents))?;
    drop_upload(txn, &uk, now)?;
    let version = new_id(&b, ctx);
    install(
        txn,
        &b,
        &k,
        versions,
        Version {
            id: version,
            modified_ms: now,
            kind: VersionKind::Object(ObjectData {
                size,
                etag: etag.clone(),
                parts: part_sizes,
                content,
                meta,
                tags: u.tags,
            }),
        },
        now,
    )?;
    if let Some(l) = locks::for_new_version(b.object_lock, own, now) {
        locks::put(txn, &k, version, &l)?;
    }
    // The ACL given when the upload began, or private (which a new null version must be).
    acl::put(txn, &k, version, &kept_acl.unwrap_or_default())?;
    checksums::put_for_version(txn, &k, version, part_sums.map(PartSums).as_ref())?;
    Ok(Written { version, etag })
}

pub(super) fn abort(
    txn: &WriteTransaction,
    now: u64,
    bucket: &str,
    key: &str,
    id: u128,
) -> Result<(), ApplyError> {
    check_key(key)?;
    settings::get(txn, bucket)?;
    let uk = upload_key(bucket, key, id);
    upload(txn, &uk)?;
    drop_upload(txn, &uk, now)
}
