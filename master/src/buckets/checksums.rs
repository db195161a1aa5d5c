//! Checksums of multipart uploads and of the objects they make: S3's `ChecksumAlgorithm` and
//! `ChecksumType` on `CreateMultipartUpload`, each part's checksum, and the per-part checksums
//! a completed object keeps for `GetObjectAttributes` and `partNumber` reads.
//!
//! Gateways compute every checksum (over the plaintext, before any sealing); the bucket
//! service keeps them and checks that a completion combined the checksums the parts really
//! have, so a part uploaded again between the gateway's read and the commit cannot slip in.
//!
//! An object's own checksum stays `ObjectMeta::checksum` (algorithm, base64 value). A
//! composite one is written as S3 shows it, `base64-N`; base64 never holds `-`, so the value
//! tells its type ([`is_composite`]).
//!
//! Tables:
//! - `s3.upload_sums`: upload key → [`UploadChecksum`], for uploads begun with an algorithm.
//! - `s3.part_sums`: part key → [`PartChecksum`], for each part stored with a checksum.
//! - `s3.version_part_sums`: version key → [`PartSums`], for multipart objects completed with
//!   a checksum of every part.

use std::collections::BTreeMap;

use cairn_engine::state::{Rejection, StateError, TypedTable};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::keys::{part_key, part_number, version_key};
use super::refusal::BucketRefusal;

const UPLOAD_SUMS: TypedTable<Vec<u8>, UploadChecksum> = TypedTable::new("s3.upload_sums");
const PART_SUMS: TypedTable<Vec<u8>, PartChecksum> = TypedTable::new("s3.part_sums");
const VERSION_PART_SUMS: TypedTable<Vec<u8>, PartSums> = TypedTable::new("s3.version_part_sums");

/// The checksum algorithms S3 takes, as it names them.
pub const ALGORITHMS: [&str; 5] = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"];

/// How an upload's object checksum is made: `algorithm` over each part, combined either as a
/// checksum of the parts' checksums (composite) or into the checksum of the whole object
/// (full object, CRCs only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadChecksum {
    pub algorithm: String,
    pub full_object: bool,
}

impl UploadChecksum {
    /// `algorithm` with S3's default type for it: full object for CRC64NVME (which has no
    /// composite form), composite for the rest.
    pub fn default_for(algorithm: &str) -> UploadChecksum {
        UploadChecksum {
            algorithm: algorithm.to_owned(),
            full_object: algorithm == "CRC64NVME",
        }
    }

    /// Refuse an algorithm S3 does not know and the combinations it does not take.
    pub fn check(&self) -> Result<(), Rejection> {
        let lower = self.algorithm.to_ascii_lowercase();
        if !ALGORITHMS.contains(&self.algorithm.as_str()) {
            return Err(Rejection::new(
                BucketRefusal::InvalidRequest,
                format!("Checksum algorithm {} is not supported.", self.algorithm),
            ));
        }
        if self.full_object && self.algorithm.starts_with("SHA") {
            return Err(Rejection::new(
                BucketRefusal::InvalidRequest,
                format!(
                    "The FULL_OBJECT checksum type cannot be used with the {lower} checksum algorithm."
                ),
            ));
        }
        if !self.full_object && self.algorithm == "CRC64NVME" {
            return Err(Rejection::new(
                BucketRefusal::InvalidRequest,
                format!(
                    "The COMPOSITE checksum type cannot be used with the {lower} checksum algorithm."
                ),
            ));
        }
        Ok(())
    }
}

/// A part's checksum: its algorithm and base64 value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartChecksum {
    pub algorithm: String,
    pub value: String,
}

/// The checksums of a multipart object's parts, in part order (the algorithm is the
/// object's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSums(pub Vec<String>);

cairn_engine::records! {
    UploadChecksum = "upload checksum",
    PartChecksum = "part checksum",
    PartSums = "part checksums",
}

/// What a completion with checksums carries: the object's checksum the gateway combined, and
/// the checksum it used for each part named, in the order named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectChecksums {
    pub object: (String, String),
    pub parts: Vec<Option<String>>,
}

/// Whether an object checksum value is composite (`base64-N`).
pub fn is_composite(value: &str) -> bool {
    value.contains('-')
}

pub(super) fn init(txn: &WriteTransaction) -> Result<(), StateError> {
    UPLOAD_SUMS.init(txn)?;
    PART_SUMS.init(txn)?;
    VERSION_PART_SUMS.init(txn)
}

pub(super) fn put_for_upload(
    txn: &WriteTransaction,
    upload_key: &[u8],
    c: &UploadChecksum,
) -> Result<(), StateError> {
    UPLOAD_SUMS.open(txn)?.insert(&upload_key.to_vec(), c)
}

pub(super) fn of_upload(
    txn: &WriteTransaction,
    upload_key: &[u8],
) -> Result<Option<UploadChecksum>, StateError> {
    UPLOAD_SUMS.open(txn)?.get(&upload_key.to_vec())
}

pub(super) fn of_upload_in(
    txn: &ReadTransaction,
    upload_key: &[u8],
) -> Result<Option<UploadChecksum>, StateError> {
    UPLOAD_SUMS.read(txn)?.get(&upload_key.to_vec())
}

/// Record (or clear, for a part stored without one) the checksum of part `number`.
pub(super) fn set_part(
    txn: &WriteTransaction,
    upload_key: &[u8],
    number: u32,
    c: Option<&PartChecksum>,
) -> Result<(), StateError> {
    let mut t = PART_SUMS.open(txn)?;
    let k = part_key(upload_key, number);
    match c {
        Some(c) => t.insert(&k, c),
        None => t.remove(&k).map(|_| ()),
    }
}

pub(super) fn part(
    txn: &WriteTransaction,
    upload_key: &[u8],
    number: u32,
) -> Result<Option<PartChecksum>, StateError> {
    PART_SUMS.open(txn)?.get(&part_key(upload_key, number))
}

/// Every part checksum of an upload, by part number.
pub(super) fn parts_in(
    txn: &ReadTransaction,
    upload_key: &[u8],
) -> Result<BTreeMap<u32, PartChecksum>, StateError> {
    let t = PART_SUMS.read(txn)?;
    let mut out = BTreeMap::new();
    for item in t.range_from(&part_key(upload_key, 0))? {
        let (k, c) = item?;
        let Some(n) = part_number(upload_key, &k) else {
            break;
        };
        out.insert(n, c);
    }
    Ok(out)
}

/// Forget an upload's checksum and its parts' (the upload goes).
pub(super) fn drop_upload(
    txn: &WriteTransaction,
    upload_key: &[u8],
    parts: impl Iterator<Item = u32>,
) -> Result<(), StateError> {
    UPLOAD_SUMS.open(txn)?.remove(&upload_key.to_vec())?;
    let mut t = PART_SUMS.open(txn)?;
    for n in parts {
        t.remove(&part_key(upload_key, n))?;
    }
    Ok(())
}

/// Keep (or, `None`, forget) the part checksums of a version.
pub(super) fn put_for_version(
    txn: &WriteTransaction,
    object_key: &[u8],
    version: Option<u128>,
    sums: Option<&PartSums>,
) -> Result<(), StateError> {
    let mut t = VERSION_PART_SUMS.open(txn)?;
    let k = version_key(object_key, version);
    match sums {
        Some(s) => t.insert(&k, s),
        None => t.remove(&k).map(|_| ()),
    }
}

pub(super) fn of_version_in(
    txn: &ReadTransaction,
    object_key: &[u8],
    version: Option<u128>,
) -> Result<Option<PartSums>, StateError> {
    VERSION_PART_SUMS
        .read(txn)?
        .get(&version_key(object_key, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_s3_rules() {
        assert!(!UploadChecksum::default_for("CRC32").full_object);
        assert!(UploadChecksum::default_for("CRC64NVME").full_object);
        for a in ALGORITHMS {
            assert!(UploadChecksum::default_for(a).check().is_ok(), "{a}");
        }
        let bad = |a: &str, full_object| {
            UploadChecksum {
                algorithm: a.into(),
                full_object,
            }
            .check()
            .is_err()
        };
        assert!(bad("SHA256", true));
        assert!(bad("SHA1", true));
        assert!(bad("CRC64NVME", false));
        assert!(bad("MD5", false));
        assert!(!bad("CRC32C", true));
        assert!(is_composite("AAAAAA==-3"));
        assert!(!is_composite("AAAAAA=="));
    }
}
