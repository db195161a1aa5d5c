//! The bucket service (service 4): S3 buckets, object versions, multipart uploads.
//!
//! Every S3 mutation is one command, applied in one transaction together with the chunk
//! references it takes and releases (the same rule as the object service): an overwrite, a
//! delete, a completed upload are atomic, and garbage collection never loses a chunk that a
//! version, a part or an upload still names.
//!
//! Tables (all `&[u8] -> &[u8]`, values postcard):
//! - `s3.buckets`: bucket name → [`BucketRecord`].
//! - `s3.objects`: `bucket / key` → `Vec<Version>`, newest first. Bucket names never hold `/`,
//!   so one range scan lists a bucket in S3's key order (UTF-8 bytes).
//! - `s3.uploads`: `bucket / key \0 upload-id(16 BE)` → [`Upload`].
//! - `s3.parts`: upload key ‖ part number (4 BE) → [`Part`].
//!
//! Version and upload ids come from the command's deterministic id source, so every replica
//! names them alike. Times come from the proposer's stamp.

use std::collections::BTreeMap;

use cairn_engine::state::{
    ApplyContext, ApplyError, Rejection, ServiceId, StateError, Table, TypedService, decode,
    encode, reject,
};
use cairn_proto::ChunkHandle;
use md5::Digest;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::chunks::ChunkService;
use crate::objects::{Extent, check_extents, handles};

const BUCKETS: Table = Table::new("s3.buckets");
const OBJECTS: Table = Table::new("s3.objects");
const UPLOADS: Table = Table::new("s3.uploads");
const PARTS: Table = Table::new("s3.parts");

/// S3's limit on key length, in bytes.
pub const KEY_LEN_MAX: usize = 1024;
/// Parts of one multipart upload (S3's limit).
pub const PART_NUMBER_MAX: u32 = 10_000;
/// Smallest part other than the last (S3's limit).
pub const PART_SIZE_MIN: u64 = 5 << 20;
/// Most entries one list query returns.
pub const LIST_MAX: usize = 1000;
/// Most records one list query examines (delete markers and skipped keys included) before it
/// returns a truncated page, so one query never walks a whole bucket.
const SCAN_MAX: usize = 20_000;
/// Most versions one key keeps; a put beyond it is refused until old versions are deleted.
pub const VERSIONS_MAX: usize = 10_000;
/// Versions, markers and uploads one lifecycle command expires at most.
pub const EXPIRE_BATCH: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Versioning {
    #[default]
    Unversioned,
    Enabled,
    Suspended,
}

/// One lifecycle rule, as far as Cairn carries it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LifecycleRule {
    pub id: Option<String>,
    pub enabled: bool,
    pub prefix: String,
    /// Current versions expire this many days after they were written.
    pub expiration_days: Option<u32>,
    /// Current versions expire at this time (ms since the epoch).
    pub expiration_date_ms: Option<i64>,
    /// Remove delete markers that have no older versions left.
    pub expired_object_delete_marker: bool,
    /// Noncurrent versions are removed this many days after they became noncurrent.
    pub noncurrent_days: Option<u32>,
    /// Incomplete multipart uploads are aborted this many days after they began.
    pub abort_incomplete_days: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CorsRule {
    pub id: Option<String>,
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_seconds: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BucketRecord {
    pub created_ms: u64,
    /// The tenant it belongs to, as 32 hex digits ([`crate::tenancy::bucket_tenant`]; older
    /// records hold the creator's access key and belong to the default tenant).
    pub owner: String,
    pub versioning: Versioning,
    /// Anyone may read objects and list (canned ACL `public-read`).
    pub public_read: bool,
    pub lifecycle: Option<Vec<LifecycleRule>>,
    pub cors: Option<Vec<CorsRule>>,
    pub tags: Option<Vec<(String, String)>>,
    /// Replicas per chunk of this bucket's objects; the cluster default when `None`.
    pub replication: Option<u8>,
    /// With `public_read`: anyone may read an object by its name, but not list the bucket
    /// (a namespace of visibility 1, "unlisted"). Records from before this field read `false`.
    pub unlisted: bool,
}

/// A bucket record as written before `unlisted` existed.
#[derive(Deserialize)]
struct BucketRecordV1 {
    created_ms: u64,
    owner: String,
    versioning: Versioning,
    public_read: bool,
    lifecycle: Option<Vec<LifecycleRule>>,
    cors: Option<Vec<CorsRule>>,
    tags: Option<Vec<(String, String)>>,
    replication: Option<u8>,
}

/// Decode a bucket record of either layout.
fn decode_bucket(b: &[u8]) -> Result<BucketRecord, StateError> {
    match postcard::from_bytes::<BucketRecord>(b) {
        Ok(r) => Ok(r),
        Err(_) => {
            let v: BucketRecordV1 = decode("bucket record", b)?;
            Ok(BucketRecord {
                created_ms: v.created_ms,
                owner: v.owner,
                versioning: v.versioning,
                public_read: v.public_read,
                lifecycle: v.lifecycle,
                cors: v.cors,
                tags: v.tags,
                replication: v.replication,
                unlisted: false,
            })
        }
    }
}

/// The bucket that holds the image store's content (owned by [`SYSTEM_OWNER`], so no tenant
/// sees it; no one else may create it).
pub const SYSTEM_BUCKET: &str = "cairn-images";
/// The owner of system buckets: tenant 0, which no tenant id ever is.
pub const SYSTEM_OWNER: &str = "00000000000000000000000000000000";

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
    fn handles(&self) -> Vec<ChunkHandle> {
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
}

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
    fn matches(self, id: Option<u128>) -> bool {
        match self {
            VersionRef::Null => id.is_none(),
            VersionRef::Id(x) => id == Some(x),
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

/// Conditions a write checks atomically against the current version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Conditions {
    /// `If-Match`: the current version's ETag must be one of these (`*`: any object).
    pub if_match: Option<Vec<String>>,
    /// `If-None-Match: *`: there must be no current object.
    pub if_none_match_any: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BucketChange {
    Versioning(Versioning),
    Lifecycle(Option<Vec<LifecycleRule>>),
    Cors(Option<Vec<CorsRule>>),
    Tags(Option<Vec<(String, String)>>),
    PublicRead(bool),
    /// Namespace visibility: 0 private (`public_read` false), 1 unlisted (`public_read` and
    /// `unlisted`), 2 public.
    Visibility {
        public_read: bool,
        unlisted: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BucketCommand {
    CreateBucket {
        name: String,
        owner: String,
        public_read: bool,
    },
    DeleteBucket {
        name: String,
    },
    Configure {
        name: String,
        change: BucketChange,
    },
    PutObject {
        bucket: String,
        key: String,
        data: ObjectData,
        conditions: Conditions,
    },
    DeleteObject {
        bucket: String,
        key: String,
        version: Option<VersionRef>,
    },
    SetObjectTags {
        bucket: String,
        key: String,
        version: Option<VersionRef>,
        tags: Vec<(String, String)>,
    },
    CreateUpload {
        bucket: String,
        key: String,
        owner: String,
        meta: ObjectMeta,
        tags: Vec<(String, String)>,
    },
    PutPart {
        bucket: String,
        key: String,
        upload: u128,
        number: u32,
        etag: String,
        size: u64,
        extents: Vec<Extent>,
    },
    CompleteUpload {
        bucket: String,
        key: String,
        upload: u128,
        /// (part number, ETag without quotes) in the order the client listed them.
        parts: Vec<(u32, String)>,
        conditions: Conditions,
    },
    AbortUpload {
        bucket: String,
        key: String,
        upload: u128,
    },
    /// Carry out the bucket's lifecycle rules at the command's time (at most
    /// [`EXPIRE_BATCH`] removals; the planner repeats while work remains).
    Expire {
        bucket: String,
    },
    /// `command` (an object write) by a writer acting in `tenant`, recorded in the audit log
    /// in the same transaction: one log entry, no second fsync for the audit trail. The bucket
    /// must belong to `tenant` when the write applies, so the gateway's authorisation and the
    /// write cannot be split by the bucket being deleted and made again by someone else.
    Audited {
        actor: String,
        ip: String,
        tenant: u128,
        command: Box<BucketCommand>,
    },
    /// A share link to `bucket/key` for `tenant` (its bucket, and a live object there when the
    /// command applies), refused when the tenant already has `max_active` unexpired links.
    CreateShare {
        tenant: u128,
        bucket: String,
        key: String,
        created_by: u128,
        expires_ms: u64,
        max_active: u32,
    },
    /// Revoke a share link of `tenant`.
    DeleteShare {
        tenant: u128,
        id: u128,
    },
}

impl BucketCommand {
    /// The audit action and resource of an audited write.
    fn audit_of(&self) -> Option<(&'static str, &str, String)> {
        let (action, bucket, key) = match self {
            BucketCommand::PutObject { bucket, key, .. } => ("s3:PutObject", bucket, key),
            BucketCommand::DeleteObject { bucket, key, .. } => ("s3:DeleteObject", bucket, key),
            BucketCommand::SetObjectTags { bucket, key, .. } => {
                ("s3:PutObjectTagging", bucket, key)
            }
            BucketCommand::CreateUpload { bucket, key, .. } => {
                ("s3:CreateMultipartUpload", bucket, key)
            }
            BucketCommand::CompleteUpload { bucket, key, .. } => {
                ("s3:CompleteMultipartUpload", bucket, key)
            }
            BucketCommand::AbortUpload { bucket, key, .. } => {
                ("s3:AbortMultipartUpload", bucket, key)
            }
            _ => return None,
        };
        Some((action, bucket, format!("{bucket}/{key}")))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BucketResponse {
    Done,
    Put {
        version: Option<u128>,
        etag: String,
    },
    Deleted {
        /// The version removed or the delete marker created.
        version: Option<Option<u128>>,
        marker: bool,
    },
    Upload {
        id: u128,
    },
    Expired {
        removed: u32,
        more: bool,
    },
    Share {
        id: u128,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BucketQuery {
    Bucket {
        name: String,
    },
    Buckets,
    /// A key's version: the newest when `version` is `None` (possibly a delete marker).
    Object {
        bucket: String,
        key: String,
        version: Option<VersionRef>,
    },
    List(ListRequest),
    Versions(ListRequest),
    Uploads(ListRequest),
    Upload {
        bucket: String,
        key: String,
        upload: u128,
    },
    Parts {
        bucket: String,
        key: String,
        upload: u128,
        after: u32,
        limit: u32,
    },
    /// As `Object`, with the bucket's record from the same read: what a gateway needs to
    /// authorise a read and answer it, in one query.
    ObjectWithBucket {
        bucket: String,
        key: String,
        version: Option<VersionRef>,
    },
    /// How many objects (latest versions that are not delete markers) and bytes a bucket
    /// holds, counted over at most [`USAGE_SCAN_MAX`] keys.
    Usage {
        bucket: String,
    },
    Share {
        id: u128,
    },
    /// A tenant's share links, unexpired or not.
    Shares {
        tenant: u128,
    },
}

/// Most keys one usage query counts.
pub const USAGE_SCAN_MAX: usize = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Usage {
    pub objects: u64,
    pub bytes: u64,
    /// False when the count stopped at [`USAGE_SCAN_MAX`] keys.
    pub complete: bool,
}

/// A listing request: keys under `prefix`, after a marker, rolled up at `delimiter`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ListRequest {
    pub bucket: String,
    pub prefix: String,
    pub delimiter: Option<String>,
    /// Start after this key (exclusive); for versions with `version_after`, after that version
    /// of this key; for uploads with `upload_after`, after that upload of this key.
    pub after: Option<String>,
    pub version_after: Option<VersionRef>,
    pub upload_after: Option<u128>,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedObject {
    pub key: String,
    pub version: Version,
    /// This is the key's newest version.
    pub latest: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedUpload {
    pub key: String,
    pub id: u128,
    pub upload: Upload,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    pub uploads: Vec<ListedUpload>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// Where the next page starts: the last key (or common prefix) this page covered, and for
    /// versions/uploads the last version/upload of it.
    pub next: Option<String>,
    pub next_version: Option<VersionRef>,
    pub next_upload: Option<u128>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BucketQueryResponse {
    Bucket(Option<BucketRecord>),
    Buckets(Vec<(String, BucketRecord)>),
    /// `None` if the bucket does not exist; else the version (if any).
    Object(Option<Option<Version>>),
    Page(ListPage),
    Upload(Option<Upload>),
    Parts(Option<Vec<(u32, Part)>>),
    /// `None` if the bucket does not exist; else its record and the version (if any).
    ObjectWithBucket(Option<(BucketRecord, Option<Version>)>),
    /// `None` if the bucket does not exist.
    Usage(Option<Usage>),
    Share(Option<crate::shares::ShareRecord>),
    Shares(Vec<(u128, crate::shares::ShareRecord)>),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct BucketService;

/// S3 bucket naming rules (the common subset: 3-63 of `a-z 0-9 . -`, starting and ending with
/// a letter or digit, no `..`, not an IPv4 address).
pub fn check_bucket_name(name: &str) -> Result<(), Rejection> {
    let b = name.as_bytes();
    let ok = (3..=63).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err();
    if ok {
        Ok(())
    } else {
        Err(Rejection::new(
            "invalid_bucket_name",
            format!("{name:?} is not a valid bucket name"),
        ))
    }
}

fn check_key(key: &str) -> Result<(), Rejection> {
    if key.is_empty() || key.len() > KEY_LEN_MAX || key.contains('\0') {
        return Err(Rejection::new(
            "invalid_key",
            format!("object keys are 1..={KEY_LEN_MAX} bytes of UTF-8 without NUL"),
        ));
    }
    Ok(())
}

fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key.as_bytes());
    k
}

fn upload_key(bucket: &str, key: &str, upload: u128) -> Vec<u8> {
    let mut k = object_key(bucket, key);
    k.push(0);
    k.extend_from_slice(&upload.to_be_bytes());
    k
}

fn part_key(upload_key: &[u8], number: u32) -> Vec<u8> {
    let mut k = upload_key.to_vec();
    k.extend_from_slice(&number.to_be_bytes());
    k
}

/// The smallest byte string greater than every string starting with `p` (UTF-8 never holds
/// 0xFF).
fn after_prefix(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    v.push(0xFF);
    v
}

fn check_data(data: &ObjectData) -> Result<(), Rejection> {
    match &data.content {
        Content::Inline(b) => {
            if b.len() as u64 != data.size {
                return Err(Rejection::new(
                    "invalid_argument",
                    "inline bytes do not match the size",
                ));
            }
            Ok(())
        }
        Content::Chunks(e) => check_extents(data.size, e),
    }
}

/// Whether `etag` (as the client sent it, quoted or not) names `current`.
fn etag_matches(current: &str, wanted: &str) -> bool {
    let w = wanted.trim();
    let w = w.strip_prefix("W/").unwrap_or(w);
    w == "*" || w.trim_matches('"') == current
}

fn check_conditions(current: Option<&Version>, c: &Conditions) -> Result<(), ApplyError> {
    let live = current.and_then(Version::data);
    if c.if_none_match_any && live.is_some() {
        return Err(reject(
            "precondition_failed",
            "If-None-Match: * but the object exists",
        ));
    }
    if let Some(wanted) = &c.if_match {
        let ok = live.is_some_and(|d| wanted.iter().any(|w| etag_matches(&d.etag, w)));
        if !ok {
            return Err(reject(
                "precondition_failed",
                "If-Match does not match the current ETag",
            ));
        }
    }
    Ok(())
}

/// The ETag of a multipart object: MD5 of the parts' binary MD5s, then `-N`.
pub fn multipart_etag(part_etags: &[&str]) -> Result<String, Rejection> {
    let mut h = md5::Md5::new();
    for e in part_etags {
        let raw = hex_decode(e).ok_or_else(|| Rejection::new("invalid_part", "bad part ETag"))?;
        h.update(&raw);
    }
    Ok(format!("{}-{}", hex(&h.finalize()), part_etags.len()))
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A query on a bucket that must exist.
fn require_bucket(txn: &ReadTransaction, name: &str) -> Result<(), ApplyError> {
    if txn.open_table(BUCKETS)?.get(name.as_bytes())?.is_none() {
        return Err(reject(
            "no_such_bucket",
            format!("bucket {name} does not exist"),
        ));
    }
    Ok(())
}

struct Tx<'a> {
    txn: &'a WriteTransaction,
}

impl Tx<'_> {
    fn bucket(&self, name: &str) -> Result<BucketRecord, ApplyError> {
        let t = self.txn.open_table(BUCKETS)?;
        let v = t.get(name.as_bytes())?;
        match v {
            Some(v) => Ok(decode_bucket(v.value())?),
            None => Err(reject(
                "no_such_bucket",
                format!("bucket {name} does not exist"),
            )),
        }
    }

    fn put_bucket(&self, name: &str, r: &BucketRecord) -> Result<(), ApplyError> {
        self.txn
            .open_table(BUCKETS)?
            .insert(name.as_bytes(), encode(r)?.as_slice())?;
        Ok(())
    }

    fn versions(&self, k: &[u8]) -> Result<Vec<Version>, ApplyError> {
        let t = self.txn.open_table(OBJECTS)?;
        let v = t.get(k)?;
        Ok(match v {
            Some(v) => decode("object versions", v.value())?,
            None => Vec::new(),
        })
    }

    fn put_versions(&self, k: &[u8], versions: &[Version]) -> Result<(), ApplyError> {
        let mut t = self.txn.open_table(OBJECTS)?;
        if versions.is_empty() {
            t.remove(k)?;
        } else {
            t.insert(k, encode(&versions)?.as_slice())?;
        }
        Ok(())
    }

    fn upload(&self, k: &[u8]) -> Result<Upload, ApplyError> {
        let t = self.txn.open_table(UPLOADS)?;
        let v = t.get(k)?;
        match v {
            Some(v) => Ok(decode("upload", v.value())?),
            None => Err(reject(
                "no_such_upload",
                "the upload does not exist (aborted or completed?)",
            )),
        }
    }

    fn parts(&self, upload_key: &[u8]) -> Result<Vec<(u32, Part)>, ApplyError> {
        let t = self.txn.open_table(PARTS)?;
        let mut out = Vec::new();
        for item in t.range(upload_key..)? {
            let (k, v) = item?;
            let k = k.value();
            if !k.starts_with(upload_key) || k.len() != upload_key.len() + 4 {
                break;
            }
            let mut n = [0u8; 4];
            n.copy_from_slice(&k[upload_key.len()..]);
            out.push((u32::from_be_bytes(n), decode("part", v.value())?));
        }
        Ok(out)
    }

    /// Remove an upload and its parts, releasing every part's chunks.
    fn drop_upload(&self, k: &[u8], now_ms: u64) -> Result<(), ApplyError> {
        let parts = self.parts(k)?;
        {
            let mut t = self.txn.open_table(PARTS)?;
            for (n, p) in &parts {
                t.remove(part_key(k, *n).as_slice())?;
                ChunkService::release(self.txn, &handles(&p.extents), now_ms)?;
            }
        }
        self.txn.open_table(UPLOADS)?.remove(k)?;
        Ok(())
    }

    fn release_version(&self, v: &Version, now_ms: u64) -> Result<(), ApplyError> {
        if let VersionKind::Object(d) = &v.kind {
            ChunkService::release(self.txn, &d.content.handles(), now_ms)?;
        }
        Ok(())
    }

    /// Install `new` as the key's newest version under the bucket's versioning: it replaces
    /// the whole history (unversioned), stacks on it (enabled), or replaces the null version
    /// (suspended). Chunk references of `new` must already be taken.
    fn install(
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
        self.put_versions(k, &versions)
    }

    /// The id a new version gets under the bucket's versioning.
    fn new_id(bucket: &BucketRecord, ctx: &ApplyContext) -> Option<u128> {
        match bucket.versioning {
            Versioning::Enabled => Some(ctx.fresh_id()),
            _ => None,
        }
    }
}

fn check_versions_room(bucket: &BucketRecord, versions: &[Version]) -> Result<(), ApplyError> {
    if bucket.versioning != Versioning::Unversioned && versions.len() >= VERSIONS_MAX {
        return Err(reject(
            "too_many_versions",
            format!("a key keeps at most {VERSIONS_MAX} versions; delete old ones first"),
        ));
    }
    Ok(())
}

fn check_tags(tags: &[(String, String)]) -> Result<(), Rejection> {
    if tags.len() > 50 {
        return Err(Rejection::new("invalid_tag", "at most 50 tags"));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(Rejection::new(
                "invalid_tag",
                "tag keys are 1-128 characters, values at most 256",
            ));
        }
    }
    let mut keys: Vec<&String> = tags.iter().map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    if keys.len() != tags.len() {
        return Err(Rejection::new("invalid_tag", "tag keys must be unique"));
    }
    Ok(())
}

const DAY_MS: u64 = 86_400_000;

impl BucketService {
    /// Objects and bytes in `bucket` (`None` when it does not exist).
    fn usage(txn: &ReadTransaction, bucket: &str) -> Result<Option<Usage>, ApplyError> {
        if txn.open_table(BUCKETS)?.get(bucket.as_bytes())?.is_none() {
            return Ok(None);
        }
        let start = object_key(bucket, "");
        let t = txn.open_table(OBJECTS)?;
        let mut u = Usage {
            complete: true,
            ..Usage::default()
        };
        for (n, item) in t.range(start.as_slice()..)?.enumerate() {
            let (k, v) = item?;
            if !k.value().starts_with(&start) {
                break;
            }
            if n >= USAGE_SCAN_MAX {
                u.complete = false;
                break;
            }
            let versions: Vec<Version> = decode("object versions", v.value())?;
            if let Some(d) = versions.first().and_then(Version::data) {
                u.objects += 1;
                u.bytes += d.size;
            }
        }
        Ok(Some(u))
    }

    /// The bucket's record and a key's version in it (the newest when `version` is `None`);
    /// `None` when the bucket does not exist.
    fn object_in(
        txn: &ReadTransaction,
        bucket: &str,
        key: &str,
        version: Option<VersionRef>,
    ) -> Result<Option<(BucketRecord, Option<Version>)>, ApplyError> {
        let record: BucketRecord = match txn.open_table(BUCKETS)?.get(bucket.as_bytes())? {
            Some(v) => decode_bucket(v.value())?,
            None => return Ok(None),
        };
        let t = txn.open_table(OBJECTS)?;
        let v = t.get(object_key(bucket, key).as_slice())?;
        let versions: Vec<Version> = match v {
            Some(v) => decode("object versions", v.value())?,
            None => Vec::new(),
        };
        let found = match version {
            None => versions.into_iter().next(),
            Some(r) => versions.into_iter().find(|v| r.matches(v.id)),
        };
        Ok(Some((record, found)))
    }

    fn apply_expire(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        name: &str,
    ) -> Result<BucketResponse, ApplyError> {
        let tx = Tx { txn };
        let bucket = tx.bucket(name)?;
        let rules: Vec<LifecycleRule> = bucket
            .lifecycle
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.enabled)
            .collect();
        let now = ctx.time_ms;
        let mut removed = 0u32;
        let mut more = false;
        if rules.is_empty() {
            return Ok(BucketResponse::Expired { removed, more });
        }
        let start = object_key(name, "");
        // Objects: collect the changes first (the scan holds the table), then write them.
        let mut changes: Vec<(Vec<u8>, Vec<Version>, Vec<Version>)> = Vec::new();
        {
            let t = txn.open_table(OBJECTS)?;
            let mut examined = 0usize;
            for item in t.range(start.as_slice()..)? {
                let (k, v) = item?;
                let k = k.value();
                if !k.starts_with(&start) {
                    break;
                }
                examined += 1;
                if examined > SCAN_MAX || removed as usize >= EXPIRE_BATCH {
                    more = true;
                    break;
                }
                let key = std::str::from_utf8(&k[start.len()..]).unwrap_or("");
                let applicable: Vec<&LifecycleRule> = rules
                    .iter()
                    .filter(|r| key.starts_with(&r.prefix))
                    .collect();
                if applicable.is_empty() {
                    continue;
                }
                let versions: Vec<Version> = decode("object versions", v.value())?;
                let mut keep = Vec::with_capacity(versions.len());
                let mut gone = Vec::new();
                let mut add_marker = false;
                for (i, ver) in versions.iter().enumerate() {
                    let expire = if i == 0 {
                        !ver.is_marker()
                            && applicable.iter().any(|r| {
                                r.expiration_days.is_some_and(|d| {
                                    ver.modified_ms.saturating_add(u64::from(d) * DAY_MS) <= now
                                }) || r
                                    .expiration_date_ms
                                    .is_some_and(|at| i64::try_from(now).is_ok_and(|n| n >= at))
                            })
                    } else {
                        // Noncurrent since the newer version was written.
                        let since = versions[i - 1].modified_ms;
                        applicable.iter().any(|r| {
                            r.noncurrent_days
                                .is_some_and(|d| since.saturating_add(u64::from(d) * DAY_MS) <= now)
                        })
                    };
                    if expire && i == 0 && bucket.versioning == Versioning::Enabled {
                        // Expiring a current version in a versioned bucket stacks a marker.
                        add_marker = true;
                        keep.push(ver.clone());
                    } else if expire {
                        gone.push(ver.clone());
                    } else {
                        keep.push(ver.clone());
                    }
                }
                // A lone delete marker with nothing beneath it.
                if keep.len() == 1
                    && keep[0].is_marker()
                    && applicable.iter().any(|r| r.expired_object_delete_marker)
                {
                    gone.push(keep.remove(0));
                }
                if add_marker {
                    keep.insert(
                        0,
                        Version {
                            id: Some(ctx.fresh_id()),
                            modified_ms: now,
                            kind: VersionKind::DeleteMarker,
                        },
                    );
                }
                if !gone.is_empty() || add_marker {
                    removed = removed.saturating_add(gone.len() as u32 + u32::from(add_marker));
                    changes.push((k.to_vec(), keep, gone));
                }
            }
        }
        for (k, keep, gone) in changes {
            for g in &gone {
                tx.release_version(g, now)?;
            }
            tx.put_versions(&k, &keep)?;
        }
        // Incomplete uploads.
        let abort: Vec<(Vec<u8>, Upload)> = {
            let t = txn.open_table(UPLOADS)?;
            let mut out = Vec::new();
            for item in t.range(start.as_slice()..)? {
                let (k, v) = item?;
                let k = k.value();
                if !k.starts_with(&start) {
                    break;
                }
                if removed as usize + out.len() >= EXPIRE_BATCH {
                    more = true;
                    break;
                }
                let u: Upload = decode("upload", v.value())?;
                let key_end = k.len().saturating_sub(17);
                let key = std::str::from_utf8(&k[start.len()..key_end]).unwrap_or("");
                let due = rules.iter().any(|r| {
                    key.starts_with(&r.prefix)
                        && r.abort_incomplete_days.is_some_and(|d| {
                            u.initiated_ms.saturating_add(u64::from(d) * DAY_MS) <= now
                        })
                });
                if due {
                    out.push((k.to_vec(), u));
                }
            }
            out
        };
        for (k, _) in &abort {
            tx.drop_upload(k, now)?;
        }
        removed = removed.saturating_add(abort.len() as u32);
        Ok(BucketResponse::Expired { removed, more })
    }

    fn list(
        &self,
        txn: &ReadTransaction,
        req: &ListRequest,
        versions: bool,
    ) -> Result<ListPage, ApplyError> {
        require_bucket(txn, &req.bucket)?;
        let t = txn.open_table(OBJECTS)?;
        let base = object_key(&req.bucket, "");
        let limit = (req.limit as usize).min(LIST_MAX);
        let mut page = ListPage::default();
        if limit == 0 {
            return Ok(page);
        }
        let full_prefix = object_key(&req.bucket, &req.prefix);
        let delimiter = req.delimiter.as_deref().filter(|d| !d.is_empty());
        let mut cursor = match &req.after {
            Some(a) if object_key(&req.bucket, a) >= full_prefix => object_key(&req.bucket, a),
            _ => full_prefix.clone(),
        };
        let mut count = 0usize;
        let mut examined = 0usize;
        'outer: loop {
            let mut restart = None;
            for item in t.range(cursor.as_slice()..)? {
                let (k, v) = item?;
                let k = k.value();
                if !k.starts_with(&full_prefix) {
                    break 'outer;
                }
                examined += 1;
                let key = std::str::from_utf8(&k[base.len()..])
                    .map_err(|_| StateError::Corrupt("object key is not UTF-8".into()))?;
                let after = req.after.as_deref();
                // Versions listing: resume inside the marker key after its marker version.
                let mut skip_through: Option<VersionRef> = None;
                if let Some(a) = after {
                    if key < a || (key == a && (!versions || req.version_after.is_none())) {
                        continue;
                    }
                    if key == a {
                        skip_through = req.version_after;
                    }
                }
                if examined > SCAN_MAX && count > 0 {
                    page.truncated = true;
                    break 'outer;
                }
                if let Some(d) = delimiter {
                    let rest = &key[req.prefix.len()..];
                    if let Some(i) = rest.find(d) {
                        let cp = &key[..req.prefix.len() + i + d.len()];
                        if after.is_some_and(|a| cp <= a) {
                            // The marker is inside or at this prefix: already returned.
                            restart = Some(after_prefix(&object_key(&req.bucket, cp)));
                            break;
                        }
                        if count >= limit {
                            page.truncated = true;
                            break 'outer;
                        }
                        page.prefixes.push(cp.to_owned());
                        page.next = Some(cp.to_owned());
                        page.next_version = None;
                        count += 1;
                        restart = Some(after_prefix(&object_key(&req.bucket, cp)));
                        break;
                    }
                }
                let vs: Vec<Version> = decode("object versions", v.value())?;
                if versions {
                    let mut started = skip_through.is_none();
                    for (i, ver) in vs.iter().enumerate() {
                        if !started {
                            if skip_through.is_some_and(|s| s.matches(ver.id)) {
                                started = true;
                            }
                            continue;
                        }
                        if count >= limit {
                            page.truncated = true;
                            break 'outer;
                        }
                        page.objects.push(ListedObject {
                            key: key.to_owned(),
                            version: ver.clone(),
                            latest: i == 0,
                        });
                        page.next = Some(key.to_owned());
                        page.next_version = Some(match ver.id {
                            None => VersionRef::Null,
                            Some(x) => VersionRef::Id(x),
                        });
                        count += 1;
                    }
                } else {
                    let Some(latest) = vs.into_iter().next() else {
                        continue;
                    };
                    if latest.is_marker() {
                        continue;
                    }
                    if count >= limit {
                        page.truncated = true;
                        break 'outer;
                    }
                    page.objects.push(ListedObject {
                        key: key.to_owned(),
                        version: latest,
                        latest: true,
                    });
                    page.next = Some(key.to_owned());
                    count += 1;
                }
            }
            match restart {
                Some(r) => cursor = r,
                None => break,
            }
        }
        if !page.truncated {
            page.next = None;
            page.next_version = None;
        }
        Ok(page)
    }

    fn list_uploads(
        &self,
        txn: &ReadTransaction,
        req: &ListRequest,
    ) -> Result<ListPage, ApplyError> {
        require_bucket(txn, &req.bucket)?;
        let t = txn.open_table(UPLOADS)?;
        let base = object_key(&req.bucket, "");
        let full_prefix = object_key(&req.bucket, &req.prefix);
        let limit = (req.limit as usize).min(LIST_MAX);
        let mut page = ListPage::default();
        if limit == 0 {
            return Ok(page);
        }
        let delimiter = req.delimiter.as_deref().filter(|d| !d.is_empty());
        let mut cursor = full_prefix.clone();
        if let Some(a) = &req.after {
            let ak = object_key(&req.bucket, a);
            if ak > cursor {
                cursor = ak;
            }
        }
        let mut count = 0;
        'outer: loop {
            let mut restart = None;
            for item in t.range(cursor.as_slice()..)? {
                let (k, v) = item?;
                let k = k.value();
                if !k.starts_with(&full_prefix) || k.len() < base.len() + 17 {
                    break 'outer;
                }
                let key = std::str::from_utf8(&k[base.len()..k.len() - 17])
                    .map_err(|_| StateError::Corrupt("upload key is not UTF-8".into()))?;
                let mut idb = [0u8; 16];
                idb.copy_from_slice(&k[k.len() - 16..]);
                let id = u128::from_be_bytes(idb);
                if let Some(a) = req.after.as_deref() {
                    if key < a {
                        continue;
                    }
                    if key == a && req.upload_after.is_none_or(|u| id <= u) {
                        continue;
                    }
                }
                if let Some(d) = delimiter {
                    let rest = &key[req.prefix.len()..];
                    if let Some(i) = rest.find(d) {
                        let cp = &key[..req.prefix.len() + i + d.len()];
                        if req.after.as_deref().is_some_and(|a| cp <= a) {
                            restart = Some(after_prefix(&object_key(&req.bucket, cp)));
                            break;
                        }
                        if count >= limit {
                            page.truncated = true;
                            break 'outer;
                        }
                        page.prefixes.push(cp.to_owned());
                        page.next = Some(cp.to_owned());
                        page.next_upload = None;
                        count += 1;
                        restart = Some(after_prefix(&object_key(&req.bucket, cp)));
                        break;
                    }
                }
                if count >= limit {
                    page.truncated = true;
                    break 'outer;
                }
                page.uploads.push(ListedUpload {
                    key: key.to_owned(),
                    id,
                    upload: decode("upload", v.value())?,
                });
                page.next = Some(key.to_owned());
                page.next_upload = Some(id);
                count += 1;
            }
            match restart {
                Some(r) => cursor = r,
                None => break,
            }
        }
        if !page.truncated {
            page.next = None;
            page.next_upload = None;
        }
        Ok(page)
    }
}

impl TypedService for BucketService {
    const ID: ServiceId = ServiceId(4);
    const NAME: &'static str = "buckets";
    const VERSION: u16 = 1;
    type Command = BucketCommand;
    type Response = BucketResponse;
    type Query = BucketQuery;
    type QueryResponse = BucketQueryResponse;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        txn.open_table(BUCKETS)?;
        txn.open_table(OBJECTS)?;
        txn.open_table(UPLOADS)?;
        txn.open_table(PARTS)?;
        crate::shares::init(txn)?;
        Ok(())
    }

    #[allow(clippy::too_many_lines)]
    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: BucketCommand,
    ) -> Result<BucketResponse, ApplyError> {
        let tx = Tx { txn };
        let now = ctx.time_ms;
        match command {
            BucketCommand::Audited {
                actor,
                ip,
                tenant,
                command,
            } => {
                let Some((action, bucket, resource)) = command.audit_of() else {
                    return Err(reject(
                        "invalid_argument",
                        "only object writes are audited this way",
                    ));
                };
                if crate::tenancy::bucket_tenant(&tx.bucket(bucket)?.owner) != tenant {
                    return Err(reject(
                        "no_such_bucket",
                        "The specified bucket does not exist",
                    ));
                }
                let r = self.apply(txn, ctx, *command)?;
                crate::audit::append(
                    txn,
                    now,
                    vec![crate::audit::NewEntry {
                        actor,
                        action: action.into(),
                        resource,
                        ip,
                        outcome: "success".into(),
                    }],
                )?;
                Ok(r)
            }
            BucketCommand::CreateBucket {
                name,
                owner,
                public_read,
            } => {
                check_bucket_name(&name)?;
                if name == SYSTEM_BUCKET && owner != SYSTEM_OWNER {
                    return Err(reject(
                        "bucket_exists",
                        format!("bucket {name} is reserved for the image store"),
                    ));
                }
                match tx.bucket(&name) {
                    Ok(b) if b.owner == owner => {
                        return Err(reject(
                            "bucket_owned_by_you",
                            format!("you already own bucket {name}"),
                        ));
                    }
                    Ok(_) => {
                        return Err(reject(
                            "bucket_exists",
                            format!("bucket {name} belongs to someone else"),
                        ));
                    }
                    Err(ApplyError::Rejected(_)) => {}
                    Err(e) => return Err(e),
                }
                tx.put_bucket(
                    &name,
                    &BucketRecord {
                        created_ms: now,
                        owner,
                        public_read,
                        ..BucketRecord::default()
                    },
                )?;
                Ok(BucketResponse::Done)
            }
            BucketCommand::DeleteBucket { name } => {
                tx.bucket(&name)?;
                let start = object_key(&name, "");
                let not_empty = {
                    let t = txn.open_table(OBJECTS)?;
                    let mut r = t.range(start.as_slice()..)?;
                    match r.next() {
                        Some(item) => item?.0.value().starts_with(&start),
                        None => false,
                    }
                };
                if not_empty {
                    return Err(reject(
                        "bucket_not_empty",
                        "the bucket you tried to delete is not empty (versions and delete markers count)",
                    ));
                }
                // Incomplete uploads go with the bucket.
                let uploads: Vec<Vec<u8>> = {
                    let t = txn.open_table(UPLOADS)?;
                    let mut out = Vec::new();
                    for item in t.range(start.as_slice()..)? {
                        let k = item?.0.value().to_vec();
                        if !k.starts_with(&start) {
                            break;
                        }
                        out.push(k);
                    }
                    out
                };
                for k in uploads {
                    tx.drop_upload(&k, now)?;
                }
                txn.open_table(BUCKETS)?.remove(name.as_bytes())?;
                Ok(BucketResponse::Done)
            }
            BucketCommand::Configure { name, change } => {
                let mut b = tx.bucket(&name)?;
                match change {
                    BucketChange::Versioning(v) => {
                        if v == Versioning::Unversioned {
                            return Err(reject(
                                "invalid_argument",
                                "versioning can be enabled or suspended, not turned off",
                            ));
                        }
                        b.versioning = v;
                    }
                    BucketChange::Lifecycle(rules) => b.lifecycle = rules,
                    BucketChange::Cors(rules) => b.cors = rules,
                    BucketChange::Tags(tags) => {
                        if let Some(t) = &tags {
                            check_tags(t)?;
                        }
                        b.tags = tags;
                    }
                    BucketChange::PublicRead(p) => {
                        b.public_read = p;
                        b.unlisted = false;
                    }
                    BucketChange::Visibility {
                        public_read,
                        unlisted,
                    } => {
                        b.public_read = public_read;
                        b.unlisted = public_read && unlisted;
                    }
                }
                tx.put_bucket(&name, &b)?;
                Ok(BucketResponse::Done)
            }
            BucketCommand::PutObject {
                bucket,
                key,
                data,
                conditions,
            } => {
                check_key(&key)?;
                check_data(&data)?;
                check_tags(&data.tags)?;
                let b = tx.bucket(&bucket)?;
                let k = object_key(&bucket, &key);
                let versions = tx.versions(&k)?;
                check_conditions(versions.first(), &conditions)?;
                check_versions_room(&b, &versions)?;
                let new_handles = data.content.handles();
                ChunkService::check_referable(txn, &new_handles)?;
                ChunkService::add_refs(txn, &new_handles)?;
                let id = Tx::new_id(&b, ctx);
                let etag = data.etag.clone();
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
            BucketCommand::DeleteObject {
                bucket,
                key,
                version,
            } => {
                check_key(&key)?;
                let b = tx.bucket(&bucket)?;
                let k = object_key(&bucket, &key);
                let mut versions = tx.versions(&k)?;
                match version {
                    Some(r) => {
                        let Some(i) = versions.iter().position(|v| r.matches(v.id)) else {
                            // Deleting a version that is not there succeeds (as S3 does).
                            return Ok(BucketResponse::Deleted {
                                version: Some(match r {
                                    VersionRef::Null => None,
                                    VersionRef::Id(x) => Some(x),
                                }),
                                marker: false,
                            });
                        };
                        let old = versions.remove(i);
                        tx.release_version(&old, now)?;
                        tx.put_versions(&k, &versions)?;
                        Ok(BucketResponse::Deleted {
                            version: Some(old.id),
                            marker: old.is_marker(),
                        })
                    }
                    None => match b.versioning {
                        Versioning::Unversioned => {
                            for v in &versions {
                                tx.release_version(v, now)?;
                            }
                            tx.put_versions(&k, &[])?;
                            Ok(BucketResponse::Deleted {
                                version: None,
                                marker: false,
                            })
                        }
                        Versioning::Enabled | Versioning::Suspended => {
                            check_versions_room(&b, &versions)?;
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
                    },
                }
            }
            BucketCommand::SetObjectTags {
                bucket,
                key,
                version,
                tags,
            } => {
                check_key(&key)?;
                check_tags(&tags)?;
                tx.bucket(&bucket)?;
                let k = object_key(&bucket, &key);
                let mut versions = tx.versions(&k)?;
                let i = match version {
                    Some(r) => versions.iter().position(|v| r.matches(v.id)),
                    None => (!versions.is_empty()).then_some(0),
                };
                let target = i.and_then(|i| versions.get_mut(i));
                match target {
                    Some(Version {
                        kind: VersionKind::Object(d),
                        ..
                    }) => d.tags = tags,
                    Some(_) => {
                        return Err(reject("method_not_allowed", "a delete marker has no tags"));
                    }
                    None if version.is_some() => {
                        return Err(reject("no_such_version", "no such version"));
                    }
                    None => return Err(reject("no_such_key", "no such key")),
                }
                tx.put_versions(&k, &versions)?;
                Ok(BucketResponse::Done)
            }
            BucketCommand::CreateUpload {
                bucket,
                key,
                owner,
                meta,
                tags,
            } => {
                check_key(&key)?;
                check_tags(&tags)?;
                tx.bucket(&bucket)?;
                let id = ctx.fresh_id();
                let u = Upload {
                    initiated_ms: now,
                    owner,
                    meta,
                    tags,
                };
                txn.open_table(UPLOADS)?.insert(
                    upload_key(&bucket, &key, id).as_slice(),
                    encode(&u)?.as_slice(),
                )?;
                Ok(BucketResponse::Upload { id })
            }
            BucketCommand::PutPart {
                bucket,
                key,
                upload,
                number,
                etag,
                size,
                extents,
            } => {
                check_key(&key)?;
                if !(1..=PART_NUMBER_MAX).contains(&number) {
                    return Err(reject(
                        "invalid_argument",
                        format!("part numbers are 1 to {PART_NUMBER_MAX}"),
                    ));
                }
                if size > 0 {
                    check_extents(size, &extents)?;
                } else if !extents.is_empty() {
                    return Err(reject("invalid_argument", "an empty part has no extents"));
                }
                tx.bucket(&bucket)?;
                let uk = upload_key(&bucket, &key, upload);
                tx.upload(&uk)?;
                let new = handles(&extents);
                ChunkService::check_referable(txn, &new)?;
                ChunkService::add_refs(txn, &new)?;
                let pk = part_key(&uk, number);
                let old: Option<Part> = {
                    let t = txn.open_table(PARTS)?;
                    let v = t.get(pk.as_slice())?;
                    v.map(|v| decode("part", v.value())).transpose()?
                };
                if let Some(old) = old {
                    ChunkService::release(txn, &handles(&old.extents), now)?;
                }
                let part = Part {
                    etag: etag.clone(),
                    size,
                    extents,
                    modified_ms: now,
                };
                txn.open_table(PARTS)?
                    .insert(pk.as_slice(), encode(&part)?.as_slice())?;
                Ok(BucketResponse::Put {
                    version: None,
                    etag,
                })
            }
            BucketCommand::CompleteUpload {
                bucket,
                key,
                upload,
                parts,
                conditions,
            } => {
                check_key(&key)?;
                let b = tx.bucket(&bucket)?;
                let uk = upload_key(&bucket, &key, upload);
                let u = tx.upload(&uk)?;
                if parts.is_empty() {
                    return Err(reject(
                        "malformed_xml",
                        "a completed upload names at least one part",
                    ));
                }
                if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
                    return Err(reject(
                        "invalid_part_order",
                        "parts must be listed in ascending order of part number",
                    ));
                }
                let stored: BTreeMap<u32, Part> = tx.parts(&uk)?.into_iter().collect();
                let mut chosen = Vec::with_capacity(parts.len());
                for (n, etag) in &parts {
                    let Some(p) = stored.get(n) else {
                        return Err(reject("invalid_part", format!("part {n} was not uploaded")));
                    };
                    if !etag_matches(&p.etag, etag) || etag.trim() == "*" {
                        return Err(reject(
                            "invalid_part",
                            format!("part {n}'s ETag does not match"),
                        ));
                    }
                    chosen.push(p);
                }
                // Every named part exists and matches before sizes are judged.
                for (i, p) in chosen.iter().enumerate() {
                    if i + 1 < chosen.len() && p.size < PART_SIZE_MIN {
                        return Err(reject(
                            "entity_too_small",
                            format!(
                                "part {} is {} bytes; every part but the last needs 5 MiB",
                                parts[i].0, p.size
                            ),
                        ));
                    }
                }
                let k = object_key(&bucket, &key);
                let versions = tx.versions(&k)?;
                check_conditions(versions.first(), &conditions)?;
                check_versions_room(&b, &versions)?;
                let etags: Vec<&str> = chosen.iter().map(|p| p.etag.as_str()).collect();
                let etag = multipart_etag(&etags)?;
                let extents: Vec<Extent> = chosen
                    .iter()
                    .flat_map(|p| p.extents.iter().copied())
                    .collect();
                let size: u64 = chosen.iter().map(|p| p.size).sum();
                check_extents(size, &extents)?;
                let part_sizes = chosen.iter().map(|p| p.size).collect();
                // The object takes its own references, then the upload (every part, chosen
                // or not) releases its.
                let new = handles(&extents);
                ChunkService::add_refs(txn, &new)?;
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
            BucketCommand::AbortUpload {
                bucket,
                key,
                upload,
            } => {
                check_key(&key)?;
                tx.bucket(&bucket)?;
                let uk = upload_key(&bucket, &key, upload);
                tx.upload(&uk)?;
                tx.drop_upload(&uk, now)?;
                Ok(BucketResponse::Done)
            }
            BucketCommand::Expire { bucket } => self.apply_expire(txn, ctx, &bucket),
            BucketCommand::CreateShare {
                tenant,
                bucket,
                key,
                created_by,
                expires_ms,
                max_active,
            } => {
                let b = tx.bucket(&bucket)?;
                if crate::tenancy::bucket_tenant(&b.owner) != tenant {
                    return Err(reject(
                        "no_such_bucket",
                        format!("bucket {bucket} does not exist"),
                    ));
                }
                check_key(&key)?;
                let live = tx
                    .versions(&object_key(&bucket, &key))?
                    .first()
                    .is_some_and(|v| v.data().is_some());
                if !live {
                    return Err(reject(
                        "no_such_key",
                        format!("{bucket}/{key} does not exist"),
                    ));
                }
                let id = crate::shares::create(
                    txn,
                    ctx,
                    crate::shares::ShareRecord {
                        tenant,
                        bucket,
                        key,
                        created_by,
                        created_ms: now,
                        expires_ms,
                    },
                    max_active,
                )?;
                Ok(BucketResponse::Share { id })
            }
            BucketCommand::DeleteShare { tenant, id } => {
                crate::shares::delete(txn, tenant, id)?;
                Ok(BucketResponse::Done)
            }
        }
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: BucketQuery,
    ) -> Result<BucketQueryResponse, ApplyError> {
        Ok(match query {
            BucketQuery::Bucket { name } => {
                let t = txn.open_table(BUCKETS)?;
                let v = t.get(name.as_bytes())?;
                BucketQueryResponse::Bucket(v.map(|v| decode_bucket(v.value())).transpose()?)
            }
            BucketQuery::Buckets => {
                let t = txn.open_table(BUCKETS)?;
                let mut out = Vec::new();
                for item in t.iter()? {
                    let (k, v) = item?;
                    let name = String::from_utf8(k.value().to_vec())
                        .map_err(|_| StateError::Corrupt("bucket name is not UTF-8".into()))?;
                    out.push((name, decode_bucket(v.value())?));
                }
                BucketQueryResponse::Buckets(out)
            }
            BucketQuery::Object {
                bucket,
                key,
                version,
            } => BucketQueryResponse::Object(
                Self::object_in(txn, &bucket, &key, version)?.map(|(_, v)| v),
            ),
            BucketQuery::ObjectWithBucket {
                bucket,
                key,
                version,
            } => {
                BucketQueryResponse::ObjectWithBucket(Self::object_in(txn, &bucket, &key, version)?)
            }
            BucketQuery::Usage { bucket } => BucketQueryResponse::Usage(Self::usage(txn, &bucket)?),
            BucketQuery::Share { id } => BucketQueryResponse::Share(crate::shares::get(txn, id)?),
            BucketQuery::Shares { tenant } => {
                BucketQueryResponse::Shares(crate::shares::list(txn, tenant)?)
            }
            BucketQuery::List(req) => BucketQueryResponse::Page(self.list(txn, &req, false)?),
            BucketQuery::Versions(req) => BucketQueryResponse::Page(self.list(txn, &req, true)?),
            BucketQuery::Uploads(req) => BucketQueryResponse::Page(self.list_uploads(txn, &req)?),
            BucketQuery::Upload {
                bucket,
                key,
                upload,
            } => {
                let t = txn.open_table(UPLOADS)?;
                let v = t.get(upload_key(&bucket, &key, upload).as_slice())?;
                BucketQueryResponse::Upload(v.map(|v| decode("upload", v.value())).transpose()?)
            }
            BucketQuery::Parts {
                bucket,
                key,
                upload,
                after,
                limit,
            } => {
                let uk = upload_key(&bucket, &key, upload);
                if txn.open_table(UPLOADS)?.get(uk.as_slice())?.is_none() {
                    return Ok(BucketQueryResponse::Parts(None));
                }
                let t = txn.open_table(PARTS)?;
                let mut out = Vec::new();
                let start = part_key(&uk, after.saturating_add(1));
                for item in t.range(start.as_slice()..)? {
                    let (k, v) = item?;
                    let k = k.value();
                    if !k.starts_with(&uk) || k.len() != uk.len() + 4 {
                        break;
                    }
                    if out.len() > (limit as usize).min(LIST_MAX) {
                        break;
                    }
                    let mut n = [0u8; 4];
                    n.copy_from_slice(&k[uk.len()..]);
                    out.push((u32::from_be_bytes(n), decode("part", v.value())?));
                }
                BucketQueryResponse::Parts(Some(out))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::chunks::{ChunkCommand, ChunkRecord, ChunkResponse, ChunkState};
    use redb::ReadableDatabase;

    struct Db {
        db: redb::Database,
        _dir: tempfile::TempDir,
        clock: u64,
    }

    impl Db {
        fn new() -> Db {
            let dir = tempfile::tempdir().unwrap();
            let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            ChunkService.init(&txn).unwrap();
            BucketService.init(&txn).unwrap();
            txn.commit().unwrap();
            Db {
                db,
                _dir: dir,
                clock: 1_000_000,
            }
        }

        fn run(&mut self, c: BucketCommand) -> Result<BucketResponse, ApplyError> {
            self.clock += 1;
            let ctx = ApplyContext::new(self.clock, self.clock, rand_seed(self.clock));
            let txn = self.db.begin_write().unwrap();
            let r = BucketService.apply(&txn, &ctx, c);
            txn.commit().unwrap();
            r
        }

        fn ok(&mut self, c: BucketCommand) -> BucketResponse {
            self.run(c).unwrap()
        }

        fn code(&mut self, c: BucketCommand) -> String {
            match self.run(c) {
                Err(ApplyError::Rejected(r)) => r.code,
                other => panic!("expected a rejection, got {other:?}"),
            }
        }

        fn q(&self, q: BucketQuery) -> BucketQueryResponse {
            let txn = self.db.begin_read().unwrap();
            BucketService.query(&txn, q).unwrap()
        }

        fn chunk(&self, h: ChunkHandle) -> ChunkRecord {
            let txn = self.db.begin_read().unwrap();
            ChunkService::get(&txn, h).unwrap().unwrap()
        }

        fn alloc(&mut self) -> ChunkHandle {
            let ctx = ApplyContext::new(1, self.clock, [0; 16]);
            let txn = self.db.begin_write().unwrap();
            let r = ChunkService
                .apply(
                    &txn,
                    &ctx,
                    ChunkCommand::Allocate {
                        count: 1,
                        replication: 1,
                    },
                )
                .unwrap();
            txn.commit().unwrap();
            match r {
                ChunkResponse::Allocated { handles, .. } => handles[0],
                other => panic!("{other:?}"),
            }
        }
    }

    fn rand_seed(n: u64) -> [u8; 16] {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&n.to_le_bytes());
        s
    }

    fn inline(bytes: &[u8]) -> ObjectData {
        ObjectData {
            size: bytes.len() as u64,
            etag: "e".into(),
            parts: Vec::new(),
            content: Content::Inline(bytes.to_vec()),
            meta: ObjectMeta::default(),
            tags: Vec::new(),
        }
    }

    fn put(db: &mut Db, bucket: &str, key: &str) -> BucketResponse {
        db.ok(BucketCommand::PutObject {
            bucket: bucket.into(),
            key: key.into(),
            data: inline(key.as_bytes()),
            conditions: Conditions::default(),
        })
    }

    fn create(db: &mut Db, name: &str) {
        db.ok(BucketCommand::CreateBucket {
            name: name.into(),
            owner: "me".into(),
            public_read: false,
        });
    }

    fn list(db: &Db, req: ListRequest, versions: bool) -> ListPage {
        let q = if versions {
            BucketQuery::Versions(req)
        } else {
            BucketQuery::List(req)
        };
        match db.q(q) {
            BucketQueryResponse::Page(p) => p,
            other => panic!("{other:?}"),
        }
    }

    /// Every entry (keys and common prefixes) of a listing, page by page.
    fn walk(db: &Db, prefix: &str, delimiter: Option<&str>, limit: u32) -> Vec<String> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = list(
                db,
                ListRequest {
                    bucket: "bkt".into(),
                    prefix: prefix.into(),
                    delimiter: delimiter.map(str::to_owned),
                    after: after.clone(),
                    limit,
                    ..ListRequest::default()
                },
                false,
            );
            assert!(page.objects.len() + page.prefixes.len() <= limit as usize);
            let mut items: Vec<String> = page.objects.iter().map(|o| o.key.clone()).collect();
            items.extend(page.prefixes.iter().cloned());
            items.sort();
            out.extend(items);
            if !page.truncated {
                return out;
            }
            after = page.next.clone();
            assert!(after.is_some());
        }
    }

    #[test]
    fn listing_pages_prefixes_and_delimiters_agree_with_a_model() {
        let mut db = Db::new();
        create(&mut db, "bkt");
        create(&mut db, "bkt2");
        let keys = [
            "a", "a/1", "a/2", "a/b/1", "a/b/2", "ab", "b/x", "b/y/z", "c", "dir/", "dir/x", "zz",
            "ü/1", "ü2",
        ];
        for k in keys {
            put(&mut db, "bkt", k);
        }
        put(&mut db, "bkt2", "a/1"); // another bucket never leaks in
        for limit in [1, 2, 3, 5, 1000] {
            assert_eq!(walk(&db, "", None, limit), keys.to_vec(), "limit {limit}");
            for (prefix, delim) in [("", "/"), ("a/", "/"), ("a", "/"), ("", "b"), ("a/b/", "/")] {
                // The model: keys under the prefix, rolled up at the first delimiter after it.
                let mut model: Vec<String> = keys
                    .iter()
                    .filter(|k| k.starts_with(prefix))
                    .map(|k| match k[prefix.len()..].find(delim) {
                        Some(i) => k[..prefix.len() + i + delim.len()].to_owned(),
                        None => (*k).to_owned(),
                    })
                    .collect();
                model.dedup();
                let mut got = walk(&db, prefix, Some(delim), limit);
                got.sort();
                model.sort();
                assert_eq!(
                    got, model,
                    "prefix {prefix:?} delimiter {delim:?} limit {limit}"
                );
            }
        }
        // Deleting in an unversioned bucket removes the key entirely.
        db.ok(BucketCommand::DeleteObject {
            bucket: "bkt".into(),
            key: "a".into(),
            version: None,
        });
        assert!(!walk(&db, "", None, 1000).contains(&"a".to_owned()));
        assert_eq!(
            db.code(BucketCommand::DeleteBucket {
                name: "bkt2".into()
            }),
            "bucket_not_empty"
        );
        assert_eq!(
            db.code(BucketCommand::PutObject {
                bucket: "nope".into(),
                key: "k".into(),
                data: inline(b"x"),
                conditions: Conditions::default()
            }),
            "no_such_bucket"
        );
    }

    #[test]
    fn versions_markers_and_version_paging() {
        let mut db = Db::new();
        create(&mut db, "bkt");
        db.ok(BucketCommand::Configure {
            name: "bkt".into(),
            change: BucketChange::Versioning(Versioning::Enabled),
        });
        let mut ids = Vec::new();
        for _ in 0..3 {
            match put(&mut db, "bkt", "k") {
                BucketResponse::Put {
                    version: Some(v), ..
                } => ids.push(v),
                other => panic!("{other:?}"),
            }
        }
        put(&mut db, "bkt", "j");
        let d = db.ok(BucketCommand::DeleteObject {
            bucket: "bkt".into(),
            key: "k".into(),
            version: None,
        });
        assert!(matches!(d, BucketResponse::Deleted { marker: true, .. }));
        // Hidden from the plain listing, all there in the versions listing, newest first.
        assert_eq!(walk(&db, "", None, 10), vec!["j".to_owned()]);
        let mut seen = Vec::new();
        let (mut after, mut vafter) = (None, None);
        loop {
            let p = list(
                &db,
                ListRequest {
                    bucket: "bkt".into(),
                    after: after.clone(),
                    version_after: vafter,
                    limit: 2,
                    ..ListRequest::default()
                },
                true,
            );
            seen.extend(
                p.objects
                    .iter()
                    .map(|o| (o.key.clone(), o.version.id, o.latest)),
            );
            if !p.truncated {
                break;
            }
            after = p.next.clone();
            vafter = p.next_version;
        }
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert_eq!(seen[0].0, "j");
        assert!(seen[1].2, "the marker is the latest of k");
        assert_eq!(seen[2].1, Some(ids[2]));
        assert_eq!(seen[4].1, Some(ids[0]));
    }

    #[test]
    fn chunk_references_follow_parts_objects_and_copies() {
        let mut db = Db::new();
        create(&mut db, "bkt");
        let h1 = db.alloc();
        let h2 = db.alloc();
        let up = match db.ok(BucketCommand::CreateUpload {
            bucket: "bkt".into(),
            key: "k".into(),
            owner: "me".into(),
            meta: ObjectMeta::default(),
            tags: Vec::new(),
        }) {
            BucketResponse::Upload { id } => id,
            other => panic!("{other:?}"),
        };
        let part = |n: u32, h: ChunkHandle, len: u64| BucketCommand::PutPart {
            bucket: "bkt".into(),
            key: "k".into(),
            upload: up,
            number: n,
            etag: format!("{:032x}", n),
            size: len,
            extents: vec![Extent {
                handle: h,
                offset: 0,
                len,
            }],
        };
        db.ok(part(1, h1, PART_SIZE_MIN));
        db.ok(part(2, h2, 10));
        assert_eq!(db.chunk(h1).state, ChunkState::Live { refs: 1 });
        // Completing with part 1 only: part 2's chunk is released, part 1's moves to the object.
        db.ok(BucketCommand::CompleteUpload {
            bucket: "bkt".into(),
            key: "k".into(),
            upload: up,
            parts: vec![(1, format!("\"{:032x}\"", 1))],
            conditions: Conditions::default(),
        });
        assert_eq!(db.chunk(h1).state, ChunkState::Live { refs: 1 });
        assert!(matches!(db.chunk(h2).state, ChunkState::Released { .. }));
        // A copy shares the chunk; deleting one copy keeps it live.
        let obj = match db.q(BucketQuery::Object {
            bucket: "bkt".into(),
            key: "k".into(),
            version: None,
        }) {
            BucketQueryResponse::Object(Some(Some(v))) => v.data().unwrap().clone(),
            other => panic!("{other:?}"),
        };
        assert!(obj.etag.ends_with("-1"));
        db.ok(BucketCommand::PutObject {
            bucket: "bkt".into(),
            key: "copy".into(),
            data: obj,
            conditions: Conditions::default(),
        });
        assert_eq!(db.chunk(h1).state, ChunkState::Live { refs: 2 });
        db.ok(BucketCommand::DeleteObject {
            bucket: "bkt".into(),
            key: "k".into(),
            version: None,
        });
        assert_eq!(db.chunk(h1).state, ChunkState::Live { refs: 1 });
        db.ok(BucketCommand::DeleteObject {
            bucket: "bkt".into(),
            key: "copy".into(),
            version: None,
        });
        assert!(matches!(db.chunk(h1).state, ChunkState::Released { .. }));
        // The upload is gone.
        assert_eq!(
            db.code(BucketCommand::AbortUpload {
                bucket: "bkt".into(),
                key: "k".into(),
                upload: up
            }),
            "no_such_upload"
        );
    }

    #[test]
    fn lifecycle_expires_noncurrent_versions_markers_and_stale_uploads() {
        let mut db = Db::new();
        create(&mut db, "bkt");
        db.ok(BucketCommand::Configure {
            name: "bkt".into(),
            change: BucketChange::Versioning(Versioning::Enabled),
        });
        put(&mut db, "bkt", "logs/1");
        put(&mut db, "bkt", "logs/1");
        put(&mut db, "bkt", "keep/1");
        put(&mut db, "bkt", "keep/1");
        db.ok(BucketCommand::DeleteObject {
            bucket: "bkt".into(),
            key: "logs/2".into(),
            version: None,
        });
        let h = db.alloc();
        let up = match db.ok(BucketCommand::CreateUpload {
            bucket: "bkt".into(),
            key: "logs/big".into(),
            owner: "me".into(),
            meta: ObjectMeta::default(),
            tags: Vec::new(),
        }) {
            BucketResponse::Upload { id } => id,
            other => panic!("{other:?}"),
        };
        db.ok(BucketCommand::PutPart {
            bucket: "bkt".into(),
            key: "logs/big".into(),
            upload: up,
            number: 1,
            etag: "00".repeat(16),
            size: 5,
            extents: vec![Extent {
                handle: h,
                offset: 0,
                len: 5,
            }],
        });
        db.ok(BucketCommand::Configure {
            name: "bkt".into(),
            change: BucketChange::Lifecycle(Some(vec![LifecycleRule {
                id: Some("r".into()),
                enabled: true,
                prefix: "logs/".into(),
                noncurrent_days: Some(1),
                expired_object_delete_marker: true,
                abort_incomplete_days: Some(2),
                ..LifecycleRule::default()
            }])),
        });
        // At once: only the lone delete marker (nothing beneath it) is due.
        assert_eq!(
            db.ok(BucketCommand::Expire {
                bucket: "bkt".into()
            }),
            BucketResponse::Expired {
                removed: 1,
                more: false
            }
        );
        assert_eq!(
            db.ok(BucketCommand::Expire {
                bucket: "bkt".into()
            }),
            BucketResponse::Expired {
                removed: 0,
                more: false
            }
        );
        // Three days later: the noncurrent logs version and the stale upload go; keep/ is
        // untouched.
        db.clock += 3 * DAY_MS;
        match db.ok(BucketCommand::Expire {
            bucket: "bkt".into(),
        }) {
            BucketResponse::Expired {
                removed,
                more: false,
            } => assert_eq!(removed, 2),
            other => panic!("{other:?}"),
        }
        let page = list(
            &db,
            ListRequest {
                bucket: "bkt".into(),
                limit: 100,
                ..ListRequest::default()
            },
            true,
        );
        let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["keep/1", "keep/1", "logs/1"]);
        assert!(matches!(db.chunk(h).state, ChunkState::Released { .. }));
    }
}
