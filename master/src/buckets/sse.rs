//! Encryption at rest as the bucket service sees it: the layout of an encrypted body, how an
//! object's data key is kept, and the tables of encrypted multipart uploads.
//!
//! Gateways encrypt and decrypt; the bucket service never holds a key. An encrypted object's
//! bytes are one or more *streams* (the whole object, or each part of a multipart object in
//! order), each cut into blocks of [`SEAL_BLOCK`] plaintext bytes (the last may be shorter),
//! each block sealed with AES-256-GCM into its ciphertext and a [`SEAL_TAG`]-byte tag. A
//! stream's key is derived from the object's data key and the stream's random salt; a block's
//! nonce is its index in the stream. The stored bytes (inline or in chunks) are the streams'
//! sealed blocks back to back, so the plaintext size and part sizes fix where every block is.
//!
//! Tables:
//! - `s3.upload_sse`: upload key → [`Sse`], for uploads begun encrypted.
//! - `s3.part_salts`: part key → [`Salt`], for each part of such an upload.

use cairn_engine::state::{ApplyError, StateError, TypedTable, reject};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::keys::part_key;
use super::refusal::BucketRefusal;

const UPLOAD_SSE: TypedTable<Vec<u8>, Sse> = TypedTable::new("s3.upload_sse");
const PART_SALTS: TypedTable<Vec<u8>, Salt> = TypedTable::new("s3.part_salts");

/// Plaintext bytes per sealed block.
pub const SEAL_BLOCK: u64 = 64 << 10;
/// Tag bytes after each sealed block.
pub const SEAL_TAG: u64 = 16;

/// Stored bytes of a stream of `n` plaintext bytes.
pub fn sealed_len(n: u64) -> u64 {
    n + SEAL_TAG * n.div_ceil(SEAL_BLOCK)
}

/// How an object's data key is kept. The data key is 32 random bytes drawn for the object (or
/// the multipart upload); what wraps it decides who can read the object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sse {
    /// SSE-S3: wrapped by version `key_version` of the cluster's key
    /// ([`crate::kms::S3_KEY`]).
    S3 {
        key_version: u32,
        #[serde(with = "serde_bytes")]
        wrapped: Vec<u8>,
    },
    /// SSE-KMS: wrapped by version `key_version` of key `key`, bound to the encryption
    /// `context` (JSON, as S3 reports it).
    Kms {
        key: u128,
        key_version: u32,
        #[serde(with = "serde_bytes")]
        wrapped: Vec<u8>,
        context: String,
        bucket_key: bool,
    },
    /// SSE-C: wrapped by the customer's key, which is never stored; `key_digest` is a keyed
    /// digest of it (under the cluster secrets key) that tells a wrong key from a damaged one.
    Customer {
        #[serde(with = "serde_bytes")]
        wrapped: Vec<u8>,
        key_digest: [u8; 32],
    },
}

cairn_engine::records! { Sse = "object encryption" }

impl Sse {
    /// `x-amz-server-side-encryption` for it (`None` for SSE-C, which S3 reports through the
    /// customer-algorithm header instead).
    pub fn algorithm(&self) -> Option<&'static str> {
        match self {
            Sse::S3 { .. } => Some("AES256"),
            Sse::Kms { .. } => Some("aws:kms"),
            Sse::Customer { .. } => None,
        }
    }
}

/// A part's stream salt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Salt(pub [u8; 16]);

cairn_engine::records! { Salt = "part salt" }

/// A bucket's default encryption (`PutBucketEncryption`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketEncryption {
    pub default: DefaultSse,
    pub bucket_key: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DefaultSse {
    /// `AES256`.
    S3,
    /// `aws:kms`, with the key as the configuration names it (`None`: the tenant's default
    /// key).
    Kms { key: Option<String> },
}

pub(super) fn init(txn: &WriteTransaction) -> Result<(), StateError> {
    UPLOAD_SSE.init(txn)?;
    PART_SALTS.init(txn)
}

/// Begin an upload encrypted.
pub(super) fn put_for_upload(
    txn: &WriteTransaction,
    upload_key: &[u8],
    sse: &Sse,
) -> Result<(), StateError> {
    UPLOAD_SSE.open(txn)?.insert(&upload_key.to_vec(), sse)
}

/// How an upload's data key is kept, if it was begun encrypted.
pub(super) fn of_upload(
    txn: &WriteTransaction,
    upload_key: &[u8],
) -> Result<Option<Sse>, StateError> {
    UPLOAD_SSE.open(txn)?.get(&upload_key.to_vec())
}

/// As [`of_upload`], in a read.
pub(super) fn of_upload_in(
    txn: &ReadTransaction,
    upload_key: &[u8],
) -> Result<Option<Sse>, StateError> {
    UPLOAD_SSE.read(txn)?.get(&upload_key.to_vec())
}

/// Record (or clear, for a plain part) the salt of part `number`.
pub(super) fn set_part_salt(
    txn: &WriteTransaction,
    upload_key: &[u8],
    number: u32,
    salt: Option<[u8; 16]>,
) -> Result<(), StateError> {
    let mut t = PART_SALTS.open(txn)?;
    let k = part_key(upload_key, number);
    match salt {
        Some(s) => t.insert(&k, &Salt(s)),
        None => t.remove(&k).map(|_| ()),
    }
}

/// The salt of part `number` of an encrypted upload.
pub(super) fn part_salt(
    txn: &WriteTransaction,
    upload_key: &[u8],
    number: u32,
) -> Result<[u8; 16], ApplyError> {
    PART_SALTS
        .open(txn)?
        .get(&part_key(upload_key, number))?
        .map(|s| s.0)
        .ok_or_else(|| {
            reject(
                BucketRefusal::InvalidPart,
                format!("part {number} of an encrypted upload has no salt"),
            )
        })
}

/// Forget an upload's encryption and its parts' salts (the upload goes).
pub(super) fn drop_upload(
    txn: &WriteTransaction,
    upload_key: &[u8],
    parts: impl Iterator<Item = u32>,
) -> Result<(), StateError> {
    UPLOAD_SSE.open(txn)?.remove(&upload_key.to_vec())?;
    let mut t = PART_SALTS.open(txn)?;
    for n in parts {
        t.remove(&part_key(upload_key, n))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_lengths_count_one_tag_per_block() {
        assert_eq!(sealed_len(0), 0);
        assert_eq!(sealed_len(1), 17);
        assert_eq!(sealed_len(SEAL_BLOCK), SEAL_BLOCK + 16);
        assert_eq!(sealed_len(SEAL_BLOCK + 1), SEAL_BLOCK + 1 + 32);
        assert_eq!(sealed_len(10 * SEAL_BLOCK), 10 * (SEAL_BLOCK + 16));
    }
}
