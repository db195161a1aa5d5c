//! Buckets themselves: their record (owner, versioning, visibility, lifecycle rules, CORS,
//! tags, replication), the `s3.buckets` table, naming rules, and creating and configuring
//! buckets. (Deleting one needs its objects and uploads: `super::delete_bucket`.)

use cairn_engine::state::{ApplyError, Record, Rejection, StateError, TypedTable, decode, reject};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::acl::{self, Grant, Ownership};
use super::locks::{DEFAULT_DAYS_MAX, LockConfig};
use super::refusal::BucketRefusal;
use super::sse::BucketEncryption;
use crate::bucket_policy::BucketPolicy;

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
    /// Which objects it applies to.
    pub filter: LifecycleFilter,
    /// Current versions expire this many days after they were written.
    pub expiration_days: Option<u32>,
    /// Current versions expire at this time (ms since the epoch).
    pub expiration_date_ms: Option<i64>,
    /// Remove delete markers that have no older versions left.
    pub expired_object_delete_marker: bool,
    /// Noncurrent versions are removed this many days after they became noncurrent...
    pub noncurrent_days: Option<u32>,
    /// ... except the newest this many of them.
    pub newer_noncurrent_versions: Option<u32>,
    /// Incomplete multipart uploads are aborted this many days after they began.
    pub abort_incomplete_days: Option<u32>,
}

/// The objects a lifecycle rule applies to: every condition holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LifecycleFilter {
    pub prefix: String,
    /// Tags the version must carry, each with this value.
    pub tags: Vec<(String, String)>,
    /// Only versions larger than this many bytes.
    pub size_greater_than: Option<u64>,
    /// Only versions smaller than this many bytes.
    pub size_less_than: Option<u64>,
    /// How the configuration wrote it, so it reads back as it was written.
    pub form: FilterForm,
}

/// How a lifecycle rule's filter was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FilterForm {
    /// `<Filter>` with at most one condition.
    #[default]
    Filter,
    /// `<Filter><And>...</And></Filter>`.
    And,
    /// The rule's own `<Prefix>` (S3's older form).
    RulePrefix,
}

impl LifecycleFilter {
    /// Whether an object version of `key` with `size` bytes and `tags` matches.
    pub fn matches(&self, key: &str, size: u64, tags: &[(String, String)]) -> bool {
        key.starts_with(&self.prefix)
            && self.size_greater_than.is_none_or(|n| size > n)
            && self.size_less_than.is_none_or(|n| size < n)
            && self.tags.iter().all(|t| tags.contains(t))
    }

    /// Whether it asks anything of an object beyond its key (delete markers and uploads,
    /// which have no tags or size, match only filters that do not).
    pub fn by_key_only(&self) -> bool {
        self.tags.is_empty() && self.size_greater_than.is_none() && self.size_less_than.is_none()
    }
}

/// A lifecycle rule as bucket records of layout 3 and before, and `BucketChange::Lifecycle`
/// log entries, hold it: a prefix is its whole filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LifecycleRuleV1 {
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

impl From<LifecycleRuleV1> for LifecycleRule {
    fn from(r: LifecycleRuleV1) -> LifecycleRule {
        LifecycleRule {
            id: r.id,
            enabled: r.enabled,
            filter: LifecycleFilter {
                prefix: r.prefix,
                ..LifecycleFilter::default()
            },
            expiration_days: r.expiration_days,
            expiration_date_ms: r.expiration_date_ms,
            expired_object_delete_marker: r.expired_object_delete_marker,
            noncurrent_days: r.noncurrent_days,
            newer_noncurrent_versions: None,
            abort_incomplete_days: r.abort_incomplete_days,
        }
    }
}

fn upgrade_rules(rules: Option<Vec<LifecycleRuleV1>>) -> Option<Vec<LifecycleRule>> {
    rules.map(|r| r.into_iter().map(LifecycleRule::from).collect())
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
    /// The S3 bucket policy, as the JSON text `PutBucketPolicy` sent (checked by
    /// [`crate::bucket_policy::BucketPolicy::parse`] when it was set).
    pub policy: Option<String>,
    /// The bucket's public access block; `None` when none is set (every flag off).
    pub public_access_block: Option<PublicAccessBlock>,
    /// Object lock, once enabled (never turned off again; versioning stays enabled).
    pub object_lock: Option<LockConfig>,
    /// ACL grants besides the owner's FULL_CONTROL and `public_read` (AllUsers READ).
    pub acl: Option<Vec<Grant>>,
    /// Object ownership (`None`: none set, which behaves as `ObjectWriter`).
    pub ownership: Option<Ownership>,
    /// Default encryption of new objects (`PutBucketEncryption`); `None`: unencrypted unless
    /// a request asks.
    pub encryption: Option<BucketEncryption>,
}

/// S3's public access block, the four flags of `PutPublicAccessBlock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PublicAccessBlock {
    /// Refuse ACLs that grant public access (canned `public-read`...).
    pub block_public_acls: bool,
    /// Treat public ACLs as if they were private.
    pub ignore_public_acls: bool,
    /// Refuse a bucket policy that grants public access.
    pub block_public_policy: bool,
    /// With a public policy, only callers of the bucket's tenant get access through it.
    pub restrict_public_buckets: bool,
}

impl BucketRecord {
    /// The public access block in force (every flag off without one).
    pub fn access_block(&self) -> PublicAccessBlock {
        self.public_access_block.unwrap_or_default()
    }
}

/// A bucket record of layout version 1 (before policies and the public access block).
#[derive(Deserialize)]
struct BucketRecordV1 {
    created_ms: u64,
    owner: String,
    versioning: Versioning,
    public_read: bool,
    lifecycle: Option<Vec<LifecycleRuleV1>>,
    cors: Option<Vec<CorsRule>>,
    tags: Option<Vec<(String, String)>>,
    replication: Option<u8>,
    unlisted: bool,
}

impl From<BucketRecordV1> for BucketRecord {
    fn from(v: BucketRecordV1) -> BucketRecord {
        BucketRecord {
            created_ms: v.created_ms,
            owner: v.owner,
            versioning: v.versioning,
            public_read: v.public_read,
            lifecycle: upgrade_rules(v.lifecycle),
            cors: v.cors,
            tags: v.tags,
            replication: v.replication,
            unlisted: v.unlisted,
            policy: None,
            public_access_block: None,
            object_lock: None,
            acl: None,
            ownership: None,
            encryption: None,
        }
    }
}

/// A bucket record of layout version 2 (before default encryption).
#[derive(Deserialize)]
struct BucketRecordV2 {
    created_ms: u64,
    owner: String,
    versioning: Versioning,
    public_read: bool,
    lifecycle: Option<Vec<LifecycleRuleV1>>,
    cors: Option<Vec<CorsRule>>,
    tags: Option<Vec<(String, String)>>,
    replication: Option<u8>,
    unlisted: bool,
    policy: Option<String>,
    public_access_block: Option<PublicAccessBlock>,
    object_lock: Option<LockConfig>,
    acl: Option<Vec<Grant>>,
    ownership: Option<Ownership>,
}

impl From<BucketRecordV2> for BucketRecord {
    fn from(v: BucketRecordV2) -> BucketRecord {
        BucketRecord {
            created_ms: v.created_ms,
            owner: v.owner,
            versioning: v.versioning,
            public_read: v.public_read,
            lifecycle: upgrade_rules(v.lifecycle),
            cors: v.cors,
            tags: v.tags,
            replication: v.replication,
            unlisted: v.unlisted,
            policy: v.policy,
            public_access_block: v.public_access_block,
            object_lock: v.object_lock,
            acl: v.acl,
            ownership: v.ownership,
            encryption: None,
        }
    }
}

/// A bucket record of layout version 3 (before lifecycle filters on tags and sizes).
#[derive(Deserialize)]
struct BucketRecordV3 {
    created_ms: u64,
    owner: String,
    versioning: Versioning,
    public_read: bool,
    lifecycle: Option<Vec<LifecycleRuleV1>>,
    cors: Option<Vec<CorsRule>>,
    tags: Option<Vec<(String, String)>>,
    replication: Option<u8>,
    unlisted: bool,
    policy: Option<String>,
    public_access_block: Option<PublicAccessBlock>,
    object_lock: Option<LockConfig>,
    acl: Option<Vec<Grant>>,
    ownership: Option<Ownership>,
    encryption: Option<BucketEncryption>,
}

impl From<BucketRecordV3> for BucketRecord {
    fn from(v: BucketRecordV3) -> BucketRecord {
        BucketRecord {
            created_ms: v.created_ms,
            owner: v.owner,
            versioning: v.versioning,
            public_read: v.public_read,
            lifecycle: upgrade_rules(v.lifecycle),
            cors: v.cors,
            tags: v.tags,
            replication: v.replication,
            unlisted: v.unlisted,
            policy: v.policy,
            public_access_block: v.public_access_block,
            object_lock: v.object_lock,
            acl: v.acl,
            ownership: v.ownership,
            encryption: v.encryption,
        }
    }
}

/// A bucket record as written before `unlisted` existed.
#[derive(Deserialize)]
struct BucketRecordNoUnlisted {
    created_ms: u64,
    owner: String,
    versioning: Versioning,
    public_read: bool,
    lifecycle: Option<Vec<LifecycleRuleV1>>,
    cors: Option<Vec<CorsRule>>,
    tags: Option<Vec<(String, String)>>,
    replication: Option<u8>,
}

impl Record for BucketRecord {
    const NAME: &'static str = "bucket record";
    const VERSION: u8 = 4;

    /// Version 3 holds lifecycle rules whose filter is a prefix only. Version 2 also lacks
    /// default encryption. Version 1 also lacks the policy and the public access block. Version 0 (before records
    /// carried versions) holds either the version 1 layout or the one from before `unlisted`,
    /// which postcard cannot tell apart except by trying.
    fn migrate(version: u8, bytes: &[u8]) -> Result<Self, StateError> {
        match version {
            3 => Ok(decode::<BucketRecordV3>(Self::NAME, bytes)?.into()),
            2 => Ok(decode::<BucketRecordV2>(Self::NAME, bytes)?.into()),
            1 => Ok(decode::<BucketRecordV1>(Self::NAME, bytes)?.into()),
            0 => {
                if let Ok(r) = postcard::from_bytes::<BucketRecordV1>(bytes) {
                    return Ok(r.into());
                }
                let v: BucketRecordNoUnlisted = decode(Self::NAME, bytes)?;
                Ok(BucketRecord {
                    created_ms: v.created_ms,
                    owner: v.owner,
                    versioning: v.versioning,
                    public_read: v.public_read,
                    lifecycle: upgrade_rules(v.lifecycle),
                    cors: v.cors,
                    tags: v.tags,
                    replication: v.replication,
                    unlisted: false,
                    policy: None,
                    public_access_block: None,
                    object_lock: None,
                    acl: None,
                    ownership: None,
                    encryption: None,
                })
            }
            _ => Err(StateError::Corrupt(format!(
                "bucket record: layout version {version} is unknown"
            ))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BucketChange {
    Versioning(Versioning),
    /// Lifecycle rules as log entries written before filters on tags and sizes hold them.
    Lifecycle(Option<Vec<LifecycleRuleV1>>),
    Cors(Option<Vec<CorsRule>>),
    Tags(Option<Vec<(String, String)>>),
    PublicRead(bool),
    /// Namespace visibility: 0 private (`public_read` false), 1 unlisted (`public_read` and
    /// `unlisted`), 2 public.
    Visibility {
        public_read: bool,
        unlisted: bool,
    },
    /// Set (checked as S3 does) or remove the bucket policy.
    Policy(Option<String>),
    /// Set or remove the public access block.
    PublicAccessBlock(Option<PublicAccessBlock>),
    /// Enable object lock (on a bucket with versioning enabled) or change its default
    /// retention.
    ObjectLock(LockConfig),
    /// The bucket's whole ACL: `public_read` (AllUsers READ) and every other grant besides
    /// the owner's FULL_CONTROL.
    Acl {
        public_read: bool,
        grants: Vec<Grant>,
    },
    /// Set or remove the object ownership setting.
    Ownership(Option<Ownership>),
    /// Set or remove the bucket's default encryption.
    Encryption(Option<BucketEncryption>),
    /// Set or remove the lifecycle rules.
    LifecycleRules(Option<Vec<LifecycleRule>>),
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
    object_lock: bool,
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
            // Object lock keeps versioning on from the start.
            versioning: if object_lock {
                Versioning::Enabled
            } else {
                Versioning::Unversioned
            },
            object_lock: object_lock.then(LockConfig::default),
            ..BucketRecord::default()
        },
    )?;
    Ok(())
}

/// A public ACL under a public access block with `BlockPublicAcls` is refused.
fn refuse_public_acl(b: &BucketRecord, public: bool) -> Result<(), ApplyError> {
    if public && b.access_block().block_public_acls {
        return Err(reject(
            BucketRefusal::PublicAccessBlocked,
            "the bucket's public access block (BlockPublicAcls) refuses a public ACL",
        ));
    }
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
            if b.object_lock.is_some() && v != Versioning::Enabled {
                return Err(reject(
                    BucketRefusal::InvalidBucketState,
                    "An Object Lock configuration is present on this bucket, so the versioning state cannot be changed.",
                ));
            }
            b.versioning = v;
        }
        BucketChange::Lifecycle(rules) => b.lifecycle = upgrade_rules(rules),
        BucketChange::LifecycleRules(rules) => b.lifecycle = rules,
        BucketChange::Cors(rules) => b.cors = rules,
        BucketChange::Tags(tags) => {
            if let Some(t) = &tags {
                check_tags(t)?;
            }
            b.tags = tags;
        }
        BucketChange::PublicRead(p) => {
            refuse_public_acl(&b, p)?;
            b.public_read = p;
            b.unlisted = false;
        }
        BucketChange::Visibility {
            public_read,
            unlisted,
        } => {
            refuse_public_acl(&b, public_read)?;
            b.public_read = public_read;
            b.unlisted = public_read && unlisted;
        }
        BucketChange::Policy(None) => b.policy = None,
        BucketChange::Policy(Some(text)) => {
            let policy = BucketPolicy::parse(&text, name)
                .map_err(|why| reject(BucketRefusal::MalformedPolicy, why))?;
            if b.access_block().block_public_policy && policy.is_public() {
                return Err(reject(
                    BucketRefusal::PublicAccessBlocked,
                    "the bucket's public access block (BlockPublicPolicy) refuses a public policy",
                ));
            }
            b.policy = Some(text);
        }
        BucketChange::PublicAccessBlock(block) => b.public_access_block = block,
        BucketChange::Acl {
            public_read,
            grants,
        } => {
            refuse_public_acl(&b, public_read || acl::is_public(&grants))?;
            if b.ownership == Some(Ownership::BucketOwnerEnforced)
                && (public_read || !grants.is_empty())
            {
                return Err(reject(
                    BucketRefusal::AclNotSupported,
                    "The bucket does not allow ACLs",
                ));
            }
            b.public_read = public_read;
            b.unlisted = false;
            b.acl = (!grants.is_empty()).then(|| acl::normalise(grants));
        }
        BucketChange::Ownership(o) => {
            if o == Some(Ownership::BucketOwnerEnforced) && (b.public_read || b.acl.is_some()) {
                return Err(reject(
                    BucketRefusal::AclWithOwnership,
                    "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting",
                ));
            }
            b.ownership = o;
        }
        BucketChange::Encryption(e) => b.encryption = e,
        BucketChange::ObjectLock(config) => {
            if b.versioning != Versioning::Enabled {
                return Err(reject(
                    BucketRefusal::InvalidBucketState,
                    "Versioning must be 'Enabled' on the bucket to apply a Object Lock configuration",
                ));
            }
            if let Some(d) = config.default {
                let days = u64::from(d.period) * if d.years { 365 } else { 1 };
                if d.period == 0 || days > u64::from(DEFAULT_DAYS_MAX) {
                    return Err(reject(
                        BucketRefusal::InvalidArgument,
                        format!(
                            "Default retention period must be a positive integer value of at most {DEFAULT_DAYS_MAX} days (100 years)"
                        ),
                    ));
                }
            }
            b.object_lock = Some(config);
        }
    }
    put(txn, name, &b)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The layout-1 record as an older release wrote it.
    #[derive(Serialize)]
    struct Written {
        created_ms: u64,
        owner: String,
        versioning: Versioning,
        public_read: bool,
        lifecycle: Option<Vec<LifecycleRuleV1>>,
        cors: Option<Vec<CorsRule>>,
        tags: Option<Vec<(String, String)>>,
        replication: Option<u8>,
        unlisted: bool,
    }

    #[test]
    fn a_layout_1_record_reads_without_policy_or_access_block() {
        let old = Written {
            created_ms: 7,
            owner: "ab".repeat(16),
            versioning: Versioning::Enabled,
            public_read: true,
            lifecycle: None,
            cors: None,
            tags: Some(vec![("k".into(), "v".into())]),
            replication: Some(2),
            unlisted: true,
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        for version in [0, 1] {
            let r = BucketRecord::migrate(version, &bytes).unwrap();
            assert_eq!(r.created_ms, 7);
            assert_eq!(r.versioning, Versioning::Enabled);
            assert!(r.public_read && r.unlisted);
            assert_eq!(r.replication, Some(2));
            assert_eq!(r.policy, None);
            assert_eq!(r.public_access_block, None);
            assert_eq!(r.object_lock, None);
            assert_eq!((&r.acl, r.ownership), (&None, None));
            assert_eq!(r.access_block(), PublicAccessBlock::default());
        }
        assert!(BucketRecord::migrate(9, &bytes).is_err());
    }

    #[test]
    fn a_layout_2_record_reads_without_default_encryption() {
        #[derive(serde::Serialize)]
        struct Written2 {
            created_ms: u64,
            owner: String,
            versioning: Versioning,
            public_read: bool,
            lifecycle: Option<Vec<LifecycleRuleV1>>,
            cors: Option<Vec<CorsRule>>,
            tags: Option<Vec<(String, String)>>,
            replication: Option<u8>,
            unlisted: bool,
            policy: Option<String>,
            public_access_block: Option<PublicAccessBlock>,
            object_lock: Option<LockConfig>,
            acl: Option<Vec<Grant>>,
            ownership: Option<Ownership>,
        }
        let old = Written2 {
            created_ms: 7,
            owner: "ab".repeat(16),
            versioning: Versioning::Enabled,
            public_read: false,
            lifecycle: None,
            cors: None,
            tags: None,
            replication: None,
            unlisted: false,
            policy: Some("{}".into()),
            public_access_block: None,
            object_lock: None,
            acl: None,
            ownership: Some(Ownership::BucketOwnerEnforced),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let r = BucketRecord::migrate(2, &bytes).unwrap();
        assert_eq!(r.policy.as_deref(), Some("{}"));
        assert_eq!(r.ownership, Some(Ownership::BucketOwnerEnforced));
        assert_eq!(r.encryption, None);
    }

    #[test]
    fn a_layout_3_record_reads_its_prefix_rules_as_filters() {
        // Layout 3 is today's record with prefix-only rules: build it field by field.
        #[derive(serde::Serialize)]
        struct Written3 {
            created_ms: u64,
            owner: String,
            versioning: Versioning,
            public_read: bool,
            lifecycle: Option<Vec<LifecycleRuleV1>>,
            cors: Option<Vec<CorsRule>>,
            tags: Option<Vec<(String, String)>>,
            replication: Option<u8>,
            unlisted: bool,
            policy: Option<String>,
            public_access_block: Option<PublicAccessBlock>,
            object_lock: Option<LockConfig>,
            acl: Option<Vec<Grant>>,
            ownership: Option<Ownership>,
            encryption: Option<BucketEncryption>,
        }
        let old = Written3 {
            created_ms: 9,
            owner: "cd".repeat(16),
            versioning: Versioning::Suspended,
            public_read: false,
            lifecycle: Some(vec![LifecycleRuleV1 {
                id: Some("logs".into()),
                enabled: true,
                prefix: "logs/".into(),
                expiration_days: Some(3),
                noncurrent_days: Some(1),
                ..LifecycleRuleV1::default()
            }]),
            cors: None,
            tags: None,
            replication: None,
            unlisted: false,
            policy: None,
            public_access_block: None,
            object_lock: None,
            acl: None,
            ownership: None,
            encryption: None,
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        let r = BucketRecord::migrate(3, &bytes).unwrap();
        let rules = r.lifecycle.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].filter.prefix, "logs/");
        assert!(rules[0].filter.by_key_only());
        assert_eq!(rules[0].expiration_days, Some(3));
        assert_eq!(rules[0].noncurrent_days, Some(1));
        assert_eq!(rules[0].newer_noncurrent_versions, None);
        assert_eq!(r.versioning, Versioning::Suspended);
    }

    #[test]
    fn lifecycle_filters_match_prefix_tags_and_sizes() {
        let f = LifecycleFilter {
            prefix: "a/".into(),
            tags: vec![("t".into(), "1".into())],
            size_greater_than: Some(10),
            size_less_than: Some(100),
            form: FilterForm::And,
        };
        let t = vec![("t".to_owned(), "1".to_owned()), ("u".into(), "2".into())];
        assert!(f.matches("a/x", 50, &t));
        assert!(!f.matches("b/x", 50, &t));
        assert!(!f.matches("a/x", 10, &t));
        assert!(!f.matches("a/x", 100, &t));
        assert!(!f.matches("a/x", 50, &t[1..]));
        assert!(!f.by_key_only());
        assert!(LifecycleFilter::default().matches("anything", 0, &[]));
    }
}
