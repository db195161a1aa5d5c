//! The bucket service (service 4): S3 buckets, object versions, multipart uploads.
//!
//! Every S3 mutation is one command, applied in one transaction together with the chunk
//! references it takes and releases (the same rule as the object service): an overwrite, a
//! delete, a completed upload are atomic, and garbage collection never loses a chunk that a
//! version, a part or an upload still names.
//!
//! One room per noun, each owning its table, from the bottom up (a module uses only the ones
//! above it in this list; this file, on top, dispatches commands and queries to them):
//! - `keys`: how the tables' keys are composed. [`refusal`]: why a command is refused.
//! - [`acl`]: access control lists (grants, canned ACLs, object ownership); pure.
//! - [`locks`]: object lock (retention, legal holds) of versions, in `s3.locks`, and the
//!   rules that keep a locked version.
//! - [`settings`]: the bucket record and its configuration (versioning, visibility, lifecycle
//!   rules, CORS, tags) in `s3.buckets`; creating and configuring buckets.
//! - [`content`]: what a version of an object holds, and the checks a write passes.
//! - [`versions`]: versions and delete markers in `s3.objects`, how requests name them, and
//!   installing a new one under the bucket's versioning.
//! - [`objects`]: writing, deleting, tagging and reading objects.
//! - [`sse`], [`checksums`]: what encrypted uploads and uploads with checksums keep beside
//!   them, and the per-part checksums of the objects those make.
//! - [`multipart`]: uploads and parts in `s3.uploads` and `s3.parts`.
//! - [`lifecycle`]: carrying out lifecycle rules.
//! - [`listing`]: objects, versions and uploads a page at a time (the pagination, once).
//!
//! Version and upload ids come from the command's deterministic id source, so every replica
//! names them alike. Times come from the proposer's stamp.

pub mod acl;
pub mod checksums;
pub mod content;
mod keys;
pub mod lifecycle;
pub mod listing;
pub mod locks;
pub mod multipart;
pub mod objects;
pub mod refusal;
pub mod settings;
pub mod sse;
pub mod versions;

#[cfg(test)]
mod tests;

use cairn_engine::state::{ApplyContext, ApplyError, ServiceId, StateError, TypedService, reject};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

pub use acl::ObjectAcl;
pub use checksums::{ObjectChecksums, PartChecksum, PartSums, UploadChecksum};
pub use content::{Conditions, Content, Encrypted, KEY_LEN_MAX, ObjectData, ObjectMeta, hex};
pub use lifecycle::{EXPIRE_BATCH, expiration};
pub use listing::{LIST_MAX, ListPage, ListRequest, ListedObject, ListedUpload};
pub use locks::{DefaultRetention, LockConfig, LockMode, ObjectLock, Retention};
pub use multipart::{
    PART_NUMBER_MAX, PART_SIZE_MIN, Part, Upload, multipart_etag, parse_upload, upload_string,
};
pub use objects::{LockChange, USAGE_SCAN_MAX, Usage};
pub use refusal::BucketRefusal;
pub use settings::{
    BucketChange, BucketRecord, CorsRule, FilterForm, LifecycleFilter, LifecycleRule,
    LifecycleRuleV1, PublicAccessBlock, SYSTEM_BUCKET, SYSTEM_OWNER, Versioning, check_bucket_name,
};
pub use sse::{BucketEncryption, DefaultSse, SEAL_BLOCK, SEAL_TAG, Sse, sealed_len};
pub use versions::{VERSIONS_MAX, Version, VersionKind, VersionRef, version_string};

use crate::objects::Extent;
use keys::{object_key, upload_key};

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
    /// `CreateBucket` with object lock enabled (and so versioning).
    CreateLockedBucket {
        name: String,
        owner: String,
        public_read: bool,
    },
    /// An object write (`PutObject`, `CompleteUpload`, or `CreateUpload` for the object the
    /// upload will make) whose new version gets `lock` instead of the bucket's default
    /// retention. Refused on buckets without object lock.
    Locked {
        lock: ObjectLock,
        command: Box<BucketCommand>,
    },
    /// `DeleteObject` with what plain `DeleteObject` cannot say: `bypass_governance` overrides
    /// a GOVERNANCE retention (the gateway has checked the caller's
    /// `s3:BypassGovernanceRetention`); `if_match` deletes only while the current version's
    /// ETag is one of these (`*`: any object), else `precondition_failed`, or `no_such_key`
    /// when there is no current object.
    DeleteObjectChecked {
        bucket: String,
        key: String,
        version: Option<VersionRef>,
        bypass_governance: bool,
        if_match: Option<Vec<String>>,
    },
    /// An object write (`PutObject`, `CompleteUpload`, `CreateUpload`, or one of them in
    /// `Locked`) whose new version gets `acl`.
    WithAcl {
        acl: ObjectAcl,
        command: Box<BucketCommand>,
    },
    /// Replace the ACL of a version (`None`: the newest).
    SetObjectAcl {
        bucket: String,
        key: String,
        version: Option<VersionRef>,
        acl: ObjectAcl,
    },
    /// Change the retention or legal hold of a version (`None`: the newest).
    SetObjectLock {
        bucket: String,
        key: String,
        version: Option<VersionRef>,
        change: LockChange,
        bypass_governance: bool,
    },
    /// `CreateUpload` (possibly in `Locked` or `WithAcl`) for an upload whose parts are
    /// encrypted under the data key `sse` keeps.
    Sealed {
        sse: Sse,
        command: Box<BucketCommand>,
    },
    /// `PutPart` for an upload begun encrypted: `extents` hold the sealed bytes of `size`
    /// plaintext bytes, sealed with the stream salt `salt`.
    PutSealedPart {
        bucket: String,
        key: String,
        upload: u128,
        number: u32,
        etag: String,
        size: u64,
        extents: Vec<Extent>,
        salt: [u8; 16],
    },
    /// `CreateUpload` (possibly in `Locked`, `WithAcl` or `Sealed`) for an upload whose parts
    /// carry `checksum.algorithm` checksums, combined as `checksum` says at completion.
    Checksummed {
        checksum: UploadChecksum,
        command: Box<BucketCommand>,
    },
    /// `PutPart` or `PutSealedPart` of a part whose plaintext has `checksum` (the gateway
    /// computed or verified it). Refused when the upload was begun with another algorithm.
    CheckedPart {
        checksum: PartChecksum,
        command: Box<BucketCommand>,
    },
    /// `CompleteUpload` whose object gets `sums.object` and keeps each part's checksum;
    /// refused (`InvalidPart`) when a named part's stored checksum is not the one in
    /// `sums.parts`.
    CheckedComplete {
        sums: ObjectChecksums,
        command: Box<BucketCommand>,
    },
}

impl BucketCommand {
    /// The bucket and key an object write (possibly wrapped in `Locked`) makes a version of.
    fn write_target(&self) -> Option<(&str, &str)> {
        match self {
            BucketCommand::PutObject { bucket, key, .. }
            | BucketCommand::CompleteUpload { bucket, key, .. }
            | BucketCommand::CreateUpload { bucket, key, .. } => Some((bucket, key)),
            BucketCommand::Locked { command, .. }
            | BucketCommand::Sealed { command, .. }
            | BucketCommand::Checksummed { command, .. }
            | BucketCommand::CheckedComplete { command, .. }
            | BucketCommand::WithAcl { command, .. } => command.write_target(),
            _ => None,
        }
    }

    /// The upload key and part number of a part write.
    fn part_target(&self) -> Option<(Vec<u8>, u32)> {
        match self {
            BucketCommand::PutPart {
                bucket,
                key,
                upload,
                number,
                ..
            }
            | BucketCommand::PutSealedPart {
                bucket,
                key,
                upload,
                number,
                ..
            } => Some((upload_key(bucket, key, *upload), *number)),
            _ => None,
        }
    }

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
            BucketCommand::DeleteObjectChecked { bucket, key, .. } => {
                ("s3:DeleteObject", bucket, key)
            }
            BucketCommand::SetObjectLock {
                bucket,
                key,
                change,
                ..
            } => (
                match change {
                    LockChange::Retention(_) => "s3:PutObjectRetention",
                    LockChange::LegalHold(_) => "s3:PutObjectLegalHold",
                },
                bucket,
                key,
            ),
            BucketCommand::Locked { command, .. }
            | BucketCommand::WithAcl { command, .. }
            | BucketCommand::Sealed { command, .. }
            | BucketCommand::Checksummed { command, .. }
            | BucketCommand::CheckedComplete { command, .. } => {
                return command.audit_of();
            }
            BucketCommand::SetObjectAcl { bucket, key, .. } => ("s3:PutObjectAcl", bucket, key),
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
    /// The ACL of a version (`None`: the newest).
    ObjectAcl {
        bucket: String,
        key: String,
        version: Option<VersionRef>,
    },
    /// The object lock of a version (`None`: the newest).
    ObjectLock {
        bucket: String,
        key: String,
        version: Option<VersionRef>,
    },
    /// An upload, how its data key is kept and how its checksums are made.
    UploadState {
        bucket: String,
        key: String,
        upload: u128,
    },
    /// An upload's checksum settings and every part it has: number, size, checksum.
    UploadChecksums {
        bucket: String,
        key: String,
        upload: u128,
    },
    /// The per-part checksums of a multipart object's version (`None`: the newest).
    VersionPartSums {
        bucket: String,
        key: String,
        version: Option<VersionRef>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // one answer at a time, decoded and used at once
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
    /// `None` if the bucket does not exist; `Some(None)` without such a version (or for a
    /// delete marker); else the version's id and lock.
    ObjectLock(Option<Option<objects::VersionLock>>),
    /// As `ObjectLock`, for the version's ACL.
    ObjectAcl(Option<Option<objects::VersionAcl>>),
    /// `None` without such an upload.
    UploadState(Option<UploadState>),
    /// `None` without such an upload; else its checksum settings and every part as
    /// (number, size, checksum).
    UploadChecksums(Option<(Option<UploadChecksum>, Vec<PartSum>)>),
    /// `None` when the version has no kept part checksums.
    VersionPartSums(Option<PartSums>),
}

/// A part of an upload as a completion's checksums need it: number, size, checksum.
pub type PartSum = (u32, u64, Option<PartChecksum>);

/// What a gateway needs to store a part of an upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    pub upload: Upload,
    /// How its data key is kept (`None`: not encrypted).
    pub sse: Option<Sse>,
    /// How its checksums are made (`None`: no algorithm was given).
    pub checksum: Option<UploadChecksum>,
}

/// An object write whose new version gets `lock` (see [`BucketCommand::Locked`]).
fn apply_locked(
    txn: &WriteTransaction,
    ctx: &ApplyContext,
    lock: ObjectLock,
    command: BucketCommand,
) -> Result<BucketResponse, ApplyError> {
    let put = |w: objects::Written| BucketResponse::Put {
        version: w.version,
        etag: w.etag,
    };
    let check = |bucket: &str| -> Result<(), ApplyError> {
        let b = settings::get(txn, bucket)?;
        locks::check_requested(b.object_lock, &lock, ctx.time_ms)
    };
    match command {
        BucketCommand::PutObject {
            bucket,
            key,
            data,
            conditions,
        } => objects::put(txn, ctx, &bucket, &key, data, &conditions, Some(lock)).map(put),
        BucketCommand::CompleteUpload {
            bucket,
            key,
            upload,
            parts,
            conditions,
        } => {
            check(&bucket)?;
            multipart::complete(
                txn,
                ctx,
                (&bucket, &key, upload),
                &parts,
                &conditions,
                Some(lock),
                None,
            )
            .map(put)
        }
        BucketCommand::CreateUpload {
            bucket,
            key,
            owner,
            meta,
            tags,
        } => {
            check(&bucket)?;
            let upload = Upload {
                initiated_ms: ctx.time_ms,
                owner,
                meta,
                tags,
            };
            let id = multipart::create(txn, ctx, &bucket, &key, upload)?;
            locks::put_for_upload(txn, &upload_key(&bucket, &key, id), &lock)?;
            Ok(BucketResponse::Upload { id })
        }
        _ => Err(reject(
            BucketRefusal::InvalidArgument,
            "only PutObject, CreateMultipartUpload and CompleteMultipartUpload take an object lock",
        )),
    }
}

/// Store a part (plain, or sealed with its stream `salt`): the response is its ETag.
fn put_part(
    txn: &WriteTransaction,
    now: u64,
    (bucket, key, upload, number): (String, String, u128, u32),
    etag: String,
    size: u64,
    extents: Vec<Extent>,
    salt: Option<[u8; 16]>,
) -> Result<BucketResponse, ApplyError> {
    let part = Part {
        etag,
        size,
        extents,
        modified_ms: now,
    };
    multipart::put_part(txn, now, &bucket, &key, upload, number, part, salt).map(|etag| {
        BucketResponse::Put {
            version: None,
            etag,
        }
    })
}

/// Delete an empty bucket (versions and delete markers count); incomplete uploads go with it.
fn delete_bucket(txn: &WriteTransaction, now: u64, name: &str) -> Result<(), ApplyError> {
    settings::get(txn, name)?;
    let start = object_key(name, "");
    if versions::any_under(txn, &start)? {
        return Err(reject(
            BucketRefusal::BucketNotEmpty,
            "the bucket you tried to delete is not empty (versions and delete markers count)",
        ));
    }
    for k in multipart::uploads_under(txn, &start)? {
        multipart::drop_upload(txn, &k, now)?;
    }
    settings::remove(txn, name)?;
    Ok(())
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
        settings::init(txn)?;
        versions::init(txn)?;
        locks::init(txn)?;
        acl::init(txn)?;
        multipart::init(txn)?;
        sse::init(txn)?;
        checksums::init(txn)?;
        crate::shares::init(txn)?;
        Ok(())
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: BucketCommand,
    ) -> Result<BucketResponse, ApplyError> {
        let now = ctx.time_ms;
        let done = |()| BucketResponse::Done;
        let put = |w: objects::Written| BucketResponse::Put {
            version: w.version,
            etag: w.etag,
        };
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
                if crate::tenancy::bucket_tenant(&settings::get(txn, bucket)?.owner) != tenant {
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
            } => settings::create(txn, now, name, owner, public_read, false).map(done),
            BucketCommand::CreateLockedBucket {
                name,
                owner,
                public_read,
            } => settings::create(txn, now, name, owner, public_read, true).map(done),
            BucketCommand::Locked { lock, command } => apply_locked(txn, ctx, lock, *command),
            BucketCommand::WithAcl { acl, command } => {
                let Some((bucket, key)) = command.write_target() else {
                    return Err(reject(
                        BucketRefusal::InvalidArgument,
                        "only object writes take an ACL",
                    ));
                };
                let (bucket, key) = (bucket.to_owned(), key.to_owned());
                objects::check_object_acl(txn, &bucket, &acl)?;
                let r = self.apply(txn, ctx, *command)?;
                match &r {
                    BucketResponse::Put { version, .. } => {
                        acl::put(txn, &keys::object_key(&bucket, &key), *version, &acl)?;
                    }
                    BucketResponse::Upload { id } => {
                        acl::put_for_upload(txn, &upload_key(&bucket, &key, *id), &acl)?;
                    }
                    _ => {}
                }
                Ok(r)
            }
            BucketCommand::SetObjectAcl {
                bucket,
                key,
                version,
                acl,
            } => objects::set_acl(txn, &bucket, &key, version, acl).map(done),
            BucketCommand::DeleteObjectChecked {
                bucket,
                key,
                version,
                bypass_governance,
                if_match,
            } => objects::delete(
                txn,
                ctx,
                &bucket,
                &key,
                version,
                bypass_governance,
                if_match.as_deref(),
            )
            .map(|r| BucketResponse::Deleted {
                version: r.version,
                marker: r.marker,
            }),
            BucketCommand::SetObjectLock {
                bucket,
                key,
                version,
                change,
                bypass_governance,
            } => objects::set_lock(txn, now, &bucket, &key, version, change, bypass_governance)
                .map(done),
            BucketCommand::DeleteBucket { name } => delete_bucket(txn, now, &name).map(done),
            BucketCommand::Configure { name, change } => {
                settings::configure(txn, &name, change).map(done)
            }
            BucketCommand::PutObject {
                bucket,
                key,
                data,
                conditions,
            } => objects::put(txn, ctx, &bucket, &key, data, &conditions, None).map(put),
            BucketCommand::DeleteObject {
                bucket,
                key,
                version,
            } => objects::delete(txn, ctx, &bucket, &key, version, false, None).map(|r| {
                BucketResponse::Deleted {
                    version: r.version,
                    marker: r.marker,
                }
            }),
            BucketCommand::SetObjectTags {
                bucket,
                key,
                version,
                tags,
            } => objects::set_tags(txn, &bucket, &key, version, tags).map(done),
            BucketCommand::CreateUpload {
                bucket,
                key,
                owner,
                meta,
                tags,
            } => multipart::create(
                txn,
                ctx,
                &bucket,
                &key,
                Upload {
                    initiated_ms: now,
                    owner,
                    meta,
                    tags,
                },
            )
            .map(|id| BucketResponse::Upload { id }),
            BucketCommand::PutPart {
                bucket,
                key,
                upload,
                number,
                etag,
                size,
                extents,
            } => put_part(
                txn,
                now,
                (bucket, key, upload, number),
                etag,
                size,
                extents,
                None,
            ),
            BucketCommand::PutSealedPart {
                bucket,
                key,
                upload,
                number,
                etag,
                size,
                extents,
                salt,
            } => put_part(
                txn,
                now,
                (bucket, key, upload, number),
                etag,
                size,
                extents,
                Some(salt),
            ),
            BucketCommand::Sealed { sse, command } => {
                let Some((bucket, key)) = command.write_target() else {
                    return Err(reject(
                        BucketRefusal::InvalidArgument,
                        "only CreateMultipartUpload is sealed this way",
                    ));
                };
                let (bucket, key) = (bucket.to_owned(), key.to_owned());
                let r = self.apply(txn, ctx, *command)?;
                let BucketResponse::Upload { id } = r else {
                    return Err(reject(
                        BucketRefusal::InvalidArgument,
                        "only CreateMultipartUpload is sealed this way",
                    ));
                };
                sse::put_for_upload(txn, &upload_key(&bucket, &key, id), &sse)?;
                Ok(r)
            }
            BucketCommand::CompleteUpload {
                bucket,
                key,
                upload,
                parts,
                conditions,
            } => multipart::complete(
                txn,
                ctx,
                (&bucket, &key, upload),
                &parts,
                &conditions,
                None,
                None,
            )
            .map(put),
            BucketCommand::Checksummed { checksum, command } => {
                let only = || {
                    reject(
                        BucketRefusal::InvalidArgument,
                        "only CreateMultipartUpload takes an upload checksum",
                    )
                };
                let Some((bucket, key)) = command.write_target() else {
                    return Err(only());
                };
                let (bucket, key) = (bucket.to_owned(), key.to_owned());
                checksum.check()?;
                let r = self.apply(txn, ctx, *command)?;
                let BucketResponse::Upload { id } = r else {
                    return Err(only());
                };
                checksums::put_for_upload(txn, &upload_key(&bucket, &key, id), &checksum)?;
                Ok(r)
            }
            BucketCommand::CheckedPart { checksum, command } => {
                let Some((uk, number)) = command.part_target() else {
                    return Err(reject(
                        BucketRefusal::InvalidArgument,
                        "only a part write takes a part checksum",
                    ));
                };
                if let Some(u) = checksums::of_upload(txn, &uk)?
                    && u.algorithm != checksum.algorithm
                {
                    return Err(reject(
                        BucketRefusal::InvalidRequest,
                        format!(
                            "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
                            u.algorithm.to_ascii_lowercase(),
                            checksum.algorithm.to_ascii_lowercase()
                        ),
                    ));
                }
                let r = self.apply(txn, ctx, *command)?;
                checksums::set_part(txn, &uk, number, Some(&checksum))?;
                Ok(r)
            }
            BucketCommand::CheckedComplete { sums, command } => {
                let BucketCommand::CompleteUpload {
                    bucket,
                    key,
                    upload,
                    parts,
                    conditions,
                } = *command
                else {
                    return Err(reject(
                        BucketRefusal::InvalidArgument,
                        "only CompleteMultipartUpload takes object checksums",
                    ));
                };
                multipart::complete(
                    txn,
                    ctx,
                    (&bucket, &key, upload),
                    &parts,
                    &conditions,
                    None,
                    Some(sums),
                )
                .map(put)
            }
            BucketCommand::AbortUpload {
                bucket,
                key,
                upload,
            } => multipart::abort(txn, now, &bucket, &key, upload).map(done),
            BucketCommand::Expire { bucket } => {
                lifecycle::expire(txn, ctx, &bucket).map(|e| BucketResponse::Expired {
                    removed: e.removed,
                    more: e.more,
                })
            }
            BucketCommand::CreateShare {
                tenant,
                bucket,
                key,
                created_by,
                expires_ms,
                max_active,
            } => {
                let b = settings::get(txn, &bucket)?;
                if crate::tenancy::bucket_tenant(&b.owner) != tenant {
                    return Err(reject(
                        BucketRefusal::NoSuchBucket,
                        format!("bucket {bucket} does not exist"),
                    ));
                }
                content::check_key(&key)?;
                if !objects::is_live(txn, &bucket, &key)? {
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
                BucketQueryResponse::Bucket(settings::read(txn, &name)?)
            }
            BucketQuery::Buckets => BucketQueryResponse::Buckets(settings::all(txn)?),
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
            BucketQuery::ObjectAcl {
                bucket,
                key,
                version,
            } => BucketQueryResponse::ObjectAcl(objects::acl_of(txn, &bucket, &key, version)?),
            BucketQuery::ObjectLock {
                bucket,
                key,
                version,
            } => BucketQueryResponse::ObjectLock(objects::lock_of(txn, &bucket, &key, version)?),
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
            } => BucketQueryResponse::Upload(multipart::upload_in(
                txn,
                &upload_key(&bucket, &key, upload),
            )?),
            BucketQuery::UploadState {
                bucket,
                key,
                upload,
            } => {
                let uk = upload_key(&bucket, &key, upload);
                BucketQueryResponse::UploadState(match multipart::upload_in(txn, &uk)? {
                    Some(upload) => Some(UploadState {
                        upload,
                        sse: sse::of_upload_in(txn, &uk)?,
                        checksum: checksums::of_upload_in(txn, &uk)?,
                    }),
                    None => None,
                })
            }
            BucketQuery::UploadChecksums {
                bucket,
                key,
                upload,
            } => {
                let uk = upload_key(&bucket, &key, upload);
                BucketQueryResponse::UploadChecksums(match multipart::upload_in(txn, &uk)? {
                    Some(_) => {
                        let mut sums = checksums::parts_in(txn, &uk)?;
                        let parts = multipart::parts_in(txn, &uk, 1, usize::MAX)?
                            .into_iter()
                            .map(|(n, p)| (n, p.size, sums.remove(&n)))
                            .collect();
                        Some((checksums::of_upload_in(txn, &uk)?, parts))
                    }
                    None => None,
                })
            }
            BucketQuery::VersionPartSums {
                bucket,
                key,
                version,
            } => BucketQueryResponse::VersionPartSums(
                match objects::object_in(txn, &bucket, &key, version)? {
                    Some((_, Some(v))) => {
                        checksums::of_version_in(txn, &object_key(&bucket, &key), v.id)?
                    }
                    _ => None,
                },
            ),
            BucketQuery::Parts {
                bucket,
                key,
                upload,
                after,
                limit,
            } => {
                let uk = upload_key(&bucket, &key, upload);
                if multipart::upload_in(txn, &uk)?.is_none() {
                    return Ok(BucketQueryResponse::Parts(None));
                }
                // One more than asked, so the caller can tell whether the list goes on.
                let most = (limit as usize).min(LIST_MAX).saturating_add(1);
                BucketQueryResponse::Parts(Some(multipart::parts_in(
                    txn,
                    &uk,
                    after.saturating_add(1),
                    most,
                )?))
            }
        })
    }
}
