//! The bucket service (service 4): S3 buckets, object versions, multipart uploads.
//!
//! Every S3 mutation is one command, applied in one transaction together with the chunk
//! references it takes and releases (the same rule as the object service): an overwrite, a
//! delete, a completed upload are atomic, and garbage collection never loses a chunk that a
//! version, a part or an upload still names.
//!
//! One room per noun:
//! - [`settings`]: the bucket record and its configuration (versioning, visibility, lifecycle
//!   rules, CORS, tags); creating, configuring, deleting buckets.
//! - [`objects`]: what a version of an object holds; writes, deletes, tags, reads.
//! - [`versions`]: versions and delete markers, and how requests name them.
//! - [`multipart`]: uploads and parts.
//! - [`lifecycle`]: carrying out lifecycle rules.
//! - [`listing`]: objects, versions and uploads a page at a time (the pagination, once).
//! - `tables`: the four tables, their keys, and the transaction helpers the others share.
//!
//! Version and upload ids come from the command's deterministic id source, so every replica
//! names them alike. Times come from the proposer's stamp.

pub mod lifecycle;
pub mod listing;
pub mod multipart;
pub mod objects;
pub mod settings;
mod tables;
pub mod versions;

#[cfg(test)]
mod tests;

use cairn_engine::state::{ApplyContext, ApplyError, ServiceId, StateError, TypedService, reject};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

pub use lifecycle::EXPIRE_BATCH;
pub use listing::{LIST_MAX, ListPage, ListRequest, ListedObject, ListedUpload};
pub use multipart::{
    PART_NUMBER_MAX, PART_SIZE_MIN, Part, Upload, multipart_etag, parse_upload, upload_string,
};
pub use objects::{
    Conditions, Content, KEY_LEN_MAX, ObjectData, ObjectMeta, USAGE_SCAN_MAX, Usage, hex,
};
pub use settings::{
    BucketChange, BucketRecord, CorsRule, LifecycleRule, Versioning, check_bucket_name,
};
pub use versions::{VERSIONS_MAX, Version, VersionKind, VersionRef, version_string};

use crate::objects::Extent;
use tables::{Tx, upload_key};

cairn_engine::refusals! {
    /// Why the bucket service refuses a command (share links included).
    pub enum BucketRefusal {
        /// The bucket does not exist (or belongs to another tenant).
        NoSuchBucket = "no_such_bucket",
        /// The name is taken by someone else, or reserved.
        BucketExists = "bucket_exists",
        /// The caller already owns a bucket of that name.
        BucketOwnedByYou = "bucket_owned_by_you",
        /// The bucket still holds versions, markers or uploads.
        BucketNotEmpty = "bucket_not_empty",
        /// The name breaks S3's naming rules.
        InvalidBucketName = "invalid_bucket_name",
        /// An object key outside 1..=1024 bytes of UTF-8 without NUL.
        InvalidKey = "invalid_key",
        /// A value outside the rules (sizes, part numbers, extents, versioning).
        InvalidArgument = "invalid_argument",
        /// Tags outside S3's limits.
        InvalidTag = "invalid_tag",
        /// `If-Match` or `If-None-Match` does not hold.
        PreconditionFailed = "precondition_failed",
        /// The key has no live version.
        NoSuchKey = "no_such_key",
        /// The key has no version of that id.
        NoSuchVersion = "no_such_version",
        /// The version is a delete marker.
        MethodNotAllowed = "method_not_allowed",
        /// The key keeps the most versions it may.
        TooManyVersions = "too_many_versions",
        /// The multipart upload is completed, aborted or unknown.
        NoSuchUpload = "no_such_upload",
        /// A named part was not uploaded or its ETag differs.
        InvalidPart = "invalid_part",
        /// Parts are not in ascending order.
        InvalidPartOrder = "invalid_part_order",
        /// A part other than the last is under 5 MiB.
        EntityTooSmall = "entity_too_small",
        /// A completion names no part.
        MalformedXml = "malformed_xml",
        /// A chunk the write names was released meanwhile: write again.
        ChunkGone = "chunk_gone",
        /// No share link of the tenant has that id.
        NoSuchShare = "no_such_share",
        /// The tenant has the most unexpired share links it may.
        TooManyShares = "too_many_shares",
    }
}

/// The bucket that holds the image store's content (owned by [`SYSTEM_OWNER`], so no tenant
/// sees it; no one else may create it).
pub const SYSTEM_BUCKET: &str = "cairn-images";
/// The owner of system buckets: tenant 0, which no tenant id ever is.
pub const SYSTEM_OWNER: &str = "00000000000000000000000000000000";

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

impl TypedService for BucketService {
    const ID: ServiceId = ServiceId(4);
    const NAME: &'static str = "buckets";
    const VERSION: u16 = 1;
    type Command = BucketCommand;
    type Response = BucketResponse;
    type Query = BucketQuery;
    type QueryResponse = BucketQueryResponse;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        tables::init(txn)?;
        crate::shares::init(txn)?;
        Ok(())
    }

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
                        BucketRefusal::InvalidArgument,
                        "only object writes are audited this way",
                    ));
                };
                if crate::tenancy::bucket_tenant(&tx.bucket(bucket)?.owner) != tenant {
                    return Err(reject(
                        BucketRefusal::NoSuchBucket,
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
            } => settings::create(&tx, now, name, owner, public_read),
            BucketCommand::DeleteBucket { name } => settings::delete(&tx, now, &name),
            BucketCommand::Configure { name, change } => settings::configure(&tx, &name, change),
            BucketCommand::PutObject {
                bucket,
                key,
                data,
                conditions,
            } => objects::put(&tx, ctx, &bucket, &key, data, &conditions),
            BucketCommand::DeleteObject {
                bucket,
                key,
                version,
            } => objects::delete(&tx, ctx, &bucket, &key, version),
            BucketCommand::SetObjectTags {
                bucket,
                key,
                version,
                tags,
            } => objects::set_tags(&tx, &bucket, &key, version, tags),
            BucketCommand::CreateUpload {
                bucket,
                key,
                owner,
                meta,
                tags,
            } => multipart::create(
                &tx,
                ctx,
                &bucket,
                &key,
                Upload {
                    initiated_ms: now,
                    owner,
                    meta,
                    tags,
                },
            ),
            BucketCommand::PutPart {
                bucket,
                key,
                upload,
                number,
                etag,
                size,
                extents,
            } => multipart::put_part(
                &tx,
                now,
                &bucket,
                &key,
                upload,
                number,
                Part {
                    etag,
                    size,
                    extents,
                    modified_ms: now,
                },
            ),
            BucketCommand::CompleteUpload {
                bucket,
                key,
                upload,
                parts,
                conditions,
            } => multipart::complete(&tx, ctx, &bucket, &key, upload, &parts, &conditions),
            BucketCommand::AbortUpload {
                bucket,
                key,
                upload,
            } => multipart::abort(&tx, now, &bucket, &key, upload),
            BucketCommand::Expire { bucket } => lifecycle::expire(&tx, ctx, &bucket),
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
                        BucketRefusal::NoSuchBucket,
                        format!("bucket {bucket} does not exist"),
                    ));
                }
                objects::check_key(&key)?;
                if !objects::is_live(&tx, &bucket, &key)? {
                    return Err(reject(
                        BucketRefusal::NoSuchKey,
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
                BucketQueryResponse::Bucket(tables::bucket_in(txn, &name)?)
            }
            BucketQuery::Buckets => BucketQueryResponse::Buckets(tables::BUCKETS.read(txn)?.all()?),
            BucketQuery::Object {
                bucket,
                key,
                version,
            } => BucketQueryResponse::Object(
                objects::object_in(txn, &bucket, &key, version)?.map(|(_, v)| v),
            ),
            BucketQuery::ObjectWithBucket {
                bucket,
                key,
                version,
            } => BucketQueryResponse::ObjectWithBucket(objects::object_in(
                txn, &bucket, &key, version,
            )?),
            BucketQuery::Usage { bucket } => {
                BucketQueryResponse::Usage(objects::usage(txn, &bucket)?)
            }
            BucketQuery::Share { id } => BucketQueryResponse::Share(crate::shares::get(txn, id)?),
            BucketQuery::Shares { tenant } => {
                BucketQueryResponse::Shares(crate::shares::list(txn, tenant)?)
            }
            BucketQuery::List(req) => {
                BucketQueryResponse::Page(listing::objects(txn, &req, false)?)
            }
            BucketQuery::Versions(req) => {
                BucketQueryResponse::Page(listing::objects(txn, &req, true)?)
            }
            BucketQuery::Uploads(req) => BucketQueryResponse::Page(listing::uploads(txn, &req)?),
            BucketQuery::Upload {
                bucket,
                key,
                upload,
            } => BucketQueryResponse::Upload(
                tables::UPLOADS
                    .read(txn)?
                    .get(&upload_key(&bucket, &key, upload))?,
            ),
            BucketQuery::Parts {
                bucket,
                key,
                upload,
                after,
                limit,
            } => {
                let uk = upload_key(&bucket, &key, upload);
                if tables::UPLOADS.read(txn)?.get(&uk)?.is_none() {
                    return Ok(BucketQueryResponse::Parts(None));
                }
                // One more than asked, so the caller can tell whether the list goes on.
                let most = (limit as usize).min(LIST_MAX).saturating_add(1);
                BucketQueryResponse::Parts(Some(tables::parts_in(
                    txn,
                    &uk,
                    after.saturating_add(1),
                    most,
                )?))
            }
        })
    }
}
