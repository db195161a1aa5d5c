//! What a version of an object holds: its size, ETag, where its bytes are (inline or chunk
//! extents), its metadata and tags; and the checks a write of one passes (key, content,
//! conditions).

use cairn_engine::state::{ApplyError, Rejection, reject};
use cairn_proto::ChunkHandle;
use serde::{Deserialize, Serialize};

use super::refusal::BucketRefusal;
use super::sse::{Sse, sealed_len};
use crate::objects::{Extent, check_extents, handles};

/// S3's limit on key length, in bytes.
pub const KEY_LEN_MAX: usize = 1024;

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
    /// Encrypted at rest: the sealed bytes are inline or in chunks (see [`super::sse`]).
    Encrypted(Box<Encrypted>),
}

impl Content {
    pub(super) fn handles(&self) -> Vec<ChunkHandle> {
        match self {
            Content::Inline(_) => Vec::new(),
            Content::Chunks(e) => handles(e),
            Content::Encrypted(e) => e.body.handles(),
        }
    }

    /// How the object is encrypted, if it is.
    pub fn sse(&self) -> Option<&Sse> {
        match self {
            Content::Encrypted(e) => Some(&e.sse),
            _ => None,
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

/// An encrypted object's body: how its data key is kept, each stream's salt, and the stored
/// (sealed) bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encrypted {
    pub sse: Sse,
    /// One per stream: one for a single put, one per part of a multipart object.
    pub salts: Vec<[u8; 16]>,
    /// The sealed bytes, inline or in chunks (never itself encrypted).
    pub body: Content,
}

/// Conditions a write checks atomically against the current version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Conditions {
    /// `If-Match`: the current version's ETag must be one of these (`*`: any object).
    pub if_match: Option<Vec<String>>,
    /// `If-None-Match: *`: there must be no current object.
    pub if_none_match_any: bool,
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

pub(super) fn check_data(data: &ObjectData) -> Result<(), Rejection> {
    check_body(&data.content, data.size)?;
    if let Content::Encrypted(e) = &data.content {
        let bad = |why: &str| {
            Err(Rejection::new(
                BucketRefusal::InvalidArgument,
                why.to_owned(),
            ))
        };
        let streams = if data.parts.is_empty() {
            vec![data.size]
        } else {
            data.parts.clone()
        };
        if e.salts.len() != streams.len() {
            return bad("an encrypted object has one salt per stream");
        }
        if streams.iter().sum::<u64>() != data.size {
            return bad("the part sizes do not add up to the size");
        }
        if matches!(e.body, Content::Encrypted(_)) {
            return bad("an encrypted body is inline or in chunks");
        }
        check_body(&e.body, streams.into_iter().map(sealed_len).sum())?;
    }
    Ok(())
}

/// Whether `content` holds `size` bytes (an encrypted body is checked by [`check_data`]).
fn check_body(content: &Content, size: u64) -> Result<(), Rejection> {
    match content {
        Content::Inline(b) => {
            if b.len() as u64 != size {
                return Err(Rejection::new(
                    BucketRefusal::InvalidArgument,
                    "inline bytes do not match the size",
                ));
            }
            Ok(())
        }
        Content::Chunks(e) => check_extents(size, e),
        Content::Encrypted(_) => Ok(()),
    }
}

/// Whether `etag` (as the client sent it, quoted or not) names `current`.
pub(super) fn etag_matches(current: &str, wanted: &str) -> bool {
    let w = wanted.trim();
    let w = w.strip_prefix("W/").unwrap_or(w);
    w == "*" || w.trim_matches('"') == current
}

/// Check a write's conditions against the key's live object (`None`: no object, or a delete
/// marker).
pub(super) fn check_conditions(
    live: Option<&ObjectData>,
    c: &Conditions,
) -> Result<(), ApplyError> {
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
