//! How the bucket service's table keys are laid out: composed here and nowhere else.
//!
//! - `s3.buckets`: the bucket name.
//! - `s3.objects`: `bucket / key`. Bucket names never hold `/`, so one range scan lists a
//!   bucket in S3's key order (UTF-8 bytes).
//! - `s3.uploads`: `bucket / key \0 upload-id (16 BE)`.
//! - `s3.parts`: upload key ‖ part number (4 BE).
//! - per-version side tables (`s3.acls`, `s3.version_part_sums`): object key ‖ version id
//!   (16 BE), the null version being id 0.

/// Bytes an upload key holds after its object key: `\0` and the 16-byte id.
pub(super) const UPLOAD_SUFFIX: usize = 17;

pub(super) fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key.as_bytes());
    k
}

/// A version's key in the per-version side tables: the null version (unversioned or
/// suspended) is id 0, as in `s3.locks`.
pub(super) fn version_key(object_key: &[u8], version: Option<u128>) -> Vec<u8> {
    let mut k = object_key.to_vec();
    k.extend_from_slice(&version.unwrap_or(0).to_be_bytes());
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
pub(super) fn part_number(upload_key: &[u8], k: &[u8]) -> Option<u32> {
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
