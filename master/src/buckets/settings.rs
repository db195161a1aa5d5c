//! Buckets themselves: their record (owner, versioning, visibility, lifecycle rules, CORS,
//! tags, replication), the `s3.buckets` table, naming rules, and creating and configuring
//! buckets. (Deleting one needs its objects and uploads: `super::delete_bucket`.)

use cairn_engine::state::{ApplyError, Record, Rejection, StateError, TypedTable, decode, reject};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::refusal::BucketRefusal;

/// Bucket name → record.
const BUCKETS: TypedTable<String, BucketRecord> = TypedTable::new("s3.buckets");

/// The bucket that holds the image store's content (owned by [`SYSTEM_OWNER`], so no tenant
/// sees it; no one else may create it).
pub const SYSTEM_BUCKET: &str = "cairn-images";
/// The owner of system buckets: tenant 0, which no tenant id ever is.
pub const SYSTEM_OWNER: &str = "00000000000000000000000000000000";

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
struct BucketRecordNoUnlisted {
    created_ms: u64,
    owner: String,
    versioning: Versioning,
    public_read: bool,
    lifecycle: Option<Vec<LifecycleRule>>,
    cors: Option<Vec<CorsRule>>,
    tags: Option<Vec<(String, String)>>,
    replication: Option<u8>,
}

impl Record for BucketRecord {
    const NAME: &'static str = "bucket record";
    const VERSION: u8 = 1;

    /// Version 0 (before records carried versions) holds either layout: the current one, or
    /// the one from before `unlisted`, which postcard cannot tell apart except by trying.
    fn migrate(version: u8, bytes: &[u8]) -> Result<Self, StateError> {
        if version != 0 {
            return Err(StateError::Corrupt(format!(
                "bucket record: layout version {version} is unknown"
            )));
        }
        if let Ok(r) = postcard::from_bytes::<BucketRecord>(bytes) {
            return Ok(r);
        }
        let v: BucketRecordNoUnlisted = decode(Self::NAME, bytes)?;
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
            BucketRefusal::InvalidBucketName,
            format!("{name:?} is not a valid bucket name"),
        ))
    }
}

/// S3's tag rules: at most 50, keys 1-128 characters and unique, values at most 256.
pub(super) fn check_tags(tags: &[(String, String)]) -> Result<(), Rejection> {
    if tags.len() > 50 {
        return Err(Rejection::new(BucketRefusal::InvalidTag, "at most 50 tags"));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(Rejection::new(
                BucketRefusal::InvalidTag,
                "tag keys are 1-128 characters, values at most 256",
            ));
        }
    }
    let mut keys: Vec<&String> = tags.iter().map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    if keys.len() != tags.len() {
        return Err(Rejection::new(
            BucketRefusal::InvalidTag,
            "tag keys must be unique",
        ));
    }
    Ok(())
}

pub(super) fn init(txn: &WriteTransaction) -> Result<(), StateError> {
    BUCKETS.init(txn)
}

fn no_such_bucket(name: &str) -> ApplyError {
    reject(
        BucketRefusal::NoSuchBucket,
        format!("bucket {name} does not exist"),
    )
}

/// A bucket's record, `None` when it does not exist.
pub(super) fn find(txn: &WriteTransaction, name: &str) -> Result<Option<BucketRecord>, StateError> {
    BUCKETS.open(txn)?.get(&name.to_owned())
}

/// A bucket's record; a command on a bucket that does not exist is refused.
pub(super) fn get(txn: &WriteTransaction, name: &str) -> Result<BucketRecord, ApplyError> {
    find(txn, name)?.ok_or_else(|| no_such_bucket(name))
}

pub(super) fn put(txn: &WriteTransaction, name: &str, r: &BucketRecord) -> Result<(), StateError> {
    BUCKETS.open(txn)?.insert(&name.to_owned(), r)
}

pub(super) fn remove(txn: &WriteTransaction, name: &str) -> Result<(), StateError> {
    BUCKETS.open(txn)?.remove(&name.to_owned())?;
    Ok(())
}

/// A bucket's record in a read, `None` when it does not exist.
pub(super) fn read(txn: &ReadTransaction, name: &str) -> Result<Option<BucketRecord>, StateError> {
    BUCKETS.read(txn)?.get(&name.to_owned())
}

/// A query on a bucket that must exist.
pub(super) fn require(txn: &ReadTransaction, name: &str) -> Result<(), ApplyError> {
    match read(txn, name)? {
        Some(_) => Ok(()),
        None => Err(no_such_bucket(name)),
    }
}

/// Every bucket, by name.
pub(super) fn all(txn: &ReadTransaction) -> Result<Vec<(String, BucketRecord)>, StateError> {
    BUCKETS.read(txn)?.all()
}

pub(super) fn create(
    txn: &WriteTransaction,
    now: u64,
    name: String,
    owner: String,
    public_read: bool,
) -> Result<(), ApplyError> {
    check_bucket_name(&name)?;
    if name == SYSTEM_BUCKET && owner != SYSTEM_OWNER {
        return Err(reject(
            BucketRefusal::BucketExists,
            format!("bucket {name} is reserved for the image store"),
        ));
    }
    match find(txn, &name)? {
        Some(b) if b.owner == owner => {
            return Err(reject(
                BucketRefusal::BucketOwnedByYou,
                format!("you already own bucket {name}"),
            ));
        }
        Some(_) => {
            return Err(reject(
                BucketRefusal::BucketExists,
                format!("bucket {name} belongs to someone else"),
            ));
        }
        None => {}
    }
    put(
        txn,
        &name,
        &BucketRecord {
            created_ms: now,
            owner,
            public_read,
            ..BucketRecord::default()
        },
    )?;
    Ok(())
}

pub(super) fn configure(
    txn: &WriteTransaction,
    name: &str,
    change: BucketChange,
) -> Result<(), ApplyError> {
    let mut b = get(txn, name)?;
    match change {
        BucketChange::Versioning(v) => {
            if v == Versioning::Unversioned {
                return Err(reject(
                    BucketRefusal::InvalidArgument,
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
    put(txn, name, &b)?;
    Ok(())
}
