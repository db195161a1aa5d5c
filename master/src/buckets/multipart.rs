//! Multipart uploads: an upload and its parts, and creating, filling, completing and aborting
//! one. A completed upload becomes one version whose extents are its chosen parts' extents.

use std::collections::BTreeMap;

use super::BucketRefusal;
use cairn_engine::state::{ApplyContext, ApplyError, Rejection, reject};
use md5::Digest;
use serde::{Deserialize, Serialize};

use super::BucketResponse;
use super::objects::{
    Conditions, Content, ObjectData, ObjectMeta, check_conditions, check_key, etag_matches, hex,
    hex_decode,
};
use super::settings::check_tags;
use super::tables::{Tx, object_key, part_key, upload_key};
use super::versions::{Version, VersionKind, check_room};
use crate::chunks::ChunkService;
use crate::objects::{Extent, check_extents, handles};

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

pub(super) fn create(
    tx: &Tx,
    ctx: &ApplyContext,
    bucket: &str,
    key: &str,
    upload: Upload,
) -> Result<BucketResponse, ApplyError> {
    check_key(key)?;
    check_tags(&upload.tags)?;
    tx.bucket(bucket)?;
    let id = ctx.fresh_id();
    tx.put_upload(&upload_key(bucket, key, id), &upload)?;
    Ok(BucketResponse::Upload { id })
}

/// Store part `number` of an upload (replacing one uploaded before under that number).
pub(super) fn put_part(
    tx: &Tx,
    now: u64,
    bucket: &str,
    key: &str,
    upload: u128,
    number: u32,
    part: Part,
) -> Result<BucketResponse, ApplyError> {
    check_key(key)?;
    if !(1..=PART_NUMBER_MAX).contains(&number) {
        return Err(reject(
            BucketRefusal::InvalidArgument,
            format!("part numbers are 1 to {PART_NUMBER_MAX}"),
        ));
    }
    if part.size > 0 {
        check_extents(part.size, &part.extents)?;
    } else if !part.extents.is_empty() {
        return Err(reject(
            BucketRefusal::InvalidArgument,
            "an empty part has no extents",
        ));
    }
    tx.bucket(bucket)?;
    let uk = upload_key(bucket, key, upload);
    tx.upload(&uk)?;
    let new = handles(&part.extents);
    ChunkService::check_referable(tx.txn, &new)?;
    ChunkService::add_refs(tx.txn, &new)?;
    let etag = part.etag.clone();
    if let Some(old) = tx.put_part(&part_key(&uk, number), &part)? {
        ChunkService::release(tx.txn, &handles(&old.extents), now)?;
    }
    Ok(BucketResponse::Put {
        version: None,
        etag,
    })
}

/// Complete an upload from the parts the client names, (number, ETag) in ascending order.
pub(super) fn complete(
    tx: &Tx,
    ctx: &ApplyContext,
    bucket: &str,
    key: &str,
    upload: u128,
    parts: &[(u32, String)],
    conditions: &Conditions,
) -> Result<BucketResponse, ApplyError> {
    check_key(key)?;
    let b = tx.bucket(bucket)?;
    let uk = upload_key(bucket, key, upload);
    let u = tx.upload(&uk)?;
    if parts.is_empty() {
        return Err(reject(
            BucketRefusal::MalformedXml,
            "a completed upload names at least one part",
        ));
    }
    if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(reject(
            BucketRefusal::InvalidPartOrder,
            "parts must be listed in ascending order of part number",
        ));
    }
    let stored: BTreeMap<u32, Part> = tx.parts(&uk)?.into_iter().collect();
    let mut chosen = Vec::with_capacity(parts.len());
    for (n, etag) in parts {
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
    // Every named part exists and matches before sizes are judged.
    for (i, p) in chosen.iter().enumerate() {
        if i + 1 < chosen.len() && p.size < PART_SIZE_MIN {
            return Err(reject(
                BucketRefusal::EntityTooSmall,
                format!(
                    "part {} is {} bytes; every part but the last needs 5 MiB",
                    parts[i].0, p.size
                ),
            ));
        }
    }
    let k = object_key(bucket, key);
    let versions = tx.versions(&k)?;
    check_conditions(versions.first(), conditions)?;
    check_room(&b, &versions)?;
    let etags: Vec<&str> = chosen.iter().map(|p| p.etag.as_str()).collect();
    let etag = multipart_etag(&etags)?;
    let extents: Vec<Extent> = chosen
        .iter()
        .flat_map(|p| p.extents.iter().copied())
        .collect();
    let size: u64 = chosen.iter().map(|p| p.size).sum();
    check_extents(size, &extents)?;
    let part_sizes = chosen.iter().map(|p| p.size).collect();
    // The object takes its own references, then the upload (every part, chosen or not)
    // releases its.
    let now = ctx.time_ms;
    ChunkService::add_refs(tx.txn, &handles(&extents))?;
    tx.drop_upload(&uk, now)?;
    let id = Tx::new_id(&b, ctx);
    tx.install(
        &b,
        &k,
        versions,
        Version {
            id,
            modified_ms: now,
            kind: VersionKind::Object(ObjectData {
                size,
                etag: etag.clone(),
                parts: part_sizes,
                content: Content::Chunks(extents),
                meta: u.meta,
                tags: u.tags,
            }),
        },
        now,
    )?;
    Ok(BucketResponse::Put { version: id, etag })
}

pub(super) fn abort(
    tx: &Tx,
    now: u64,
    bucket: &str,
    key: &str,
    upload: u128,
) -> Result<BucketResponse, ApplyError> {
    check_key(key)?;
    tx.bucket(bucket)?;
    let uk = upload_key(bucket, key, upload);
    tx.upload(&uk)?;
    tx.drop_upload(&uk, now)?;
    Ok(BucketResponse::Done)
}
