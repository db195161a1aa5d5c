//! Authentication and authorisation of S3 requests.
//!
//! SigV4 (headers, presigned URLs, streaming `aws-chunked`) is checked by s3s against the secret
//! [`KeyAuth`] returns: the access key's record comes from the key service, its secret is opened
//! with the cluster secrets key, and kept for a few seconds so a busy client costs no master
//! round trip per request (a deleted key stops working within that time).
//!
//! [`Access`] decides what a request may do. A key acts for a user in one tenant (the root key:
//! the default tenant, as its owner); its [`Principal`] is the user's role there and the
//! statements of the policies attached to them, kept for a few seconds like the secret. Every
//! bucket belongs to a tenant. A request on a bucket of another tenant is answered exactly as
//! one on a bucket that does not exist (`NoSuchBucket`), so names do not leak, unless the bucket
//! is `public-read` and the operation a read, which anyone may do, signed or not. Inside the
//! tenant, [`cairn_master::policy::decide`] applies the role and the policies (Deny wins).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cairn_engine::state::TypedService;
use cairn_master::bucket_policy::{BucketPolicy, Caller, Context, PolicyRequest, Verdict};
use cairn_master::buckets::acl::{self, Permission as AclPermission};
use cairn_master::buckets::{BucketQuery, BucketQueryResponse};
use cairn_master::buckets::{BucketRecord, Version, VersionRef};
use cairn_master::dataplane::command;
use cairn_master::identity::{IdentityQuery, IdentityQueryResponse, IdentityService};
use cairn_master::keys::{AccessKey, KeyCommand, KeyQuery, KeyQueryResponse, KeyService};
use cairn_master::policy::{Decision, Request, Role, Statement, decide, s3_action};
use cairn_master::tenancy::{DEFAULT_TENANT, bucket_tenant, tenant_hex};
use cairn_proto::Consistency;
use parking_lot::Mutex;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{
    CopyObjectInput, CopySource, DeleteObjectsInput, PutObjectTaggingInput, UploadPartCopyInput,
};
use s3s::path::S3Path;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Result};

use crate::kernel::context::request_context;
use crate::{Gateway, propose_error};

/// The purpose S3 secrets are sealed under.
pub const S3_SECRET: &str = "cairn s3 secret key";
/// How long an opened secret is reused.
const CACHE_FOR: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct KeyAuth {
    gateway: Arc<Gateway>,
    cache: Mutex<HashMap<String, (SecretKey, Instant)>>,
}

impl KeyAuth {
    pub fn new(gateway: Arc<Gateway>) -> KeyAuth {
        KeyAuth {
            gateway,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

/// Who a signed S3 request acts for, and what they may do in their tenant.
#[derive(Clone, Debug)]
pub struct Principal {
    pub access_key: String,
    /// The user the key belongs to; `None` for the root key before the first admin exists.
    pub user: Option<u128>,
    /// The tenant the key acts in.
    pub tenant: u128,
    /// The user's role there; `None` once they are no longer a member (then nothing but
    /// public reads is allowed).
    pub role: Option<Role>,
    /// The statements of every policy attached to the user in the tenant.
    pub statements: Arc<Vec<Statement>>,
}

/// The access key's record (linearizable: a deleted key is gone at once for a new lookup).
async fn key_record(gateway: &Gateway, access_key: &str) -> S3Result<Option<AccessKey>> {
    let q = KeyService::encode_query(&KeyQuery::Get {
        access_key: access_key.to_owned(),
    })
    .map_err(internal)?;
    let bytes = gateway
        .master
        .query(KeyService::ID, q, Consistency::Stale)
        .await
        .map_err(|e| propose_error(&e))?
        .map_err(|r| internal(r.message))?;
    match KeyService::query_response(&bytes).map_err(internal)? {
        KeyQueryResponse::Key(k) => Ok(k),
        _ => Err(internal("unexpected answer")),
    }
}

/// The principal of an access key's record.
pub async fn principal_of(
    gateway: &Gateway,
    access_key: &str,
    rec: &AccessKey,
) -> S3Result<Principal> {
    let root = rec.owner == cairn_master::keys::ROOT_OWNER;
    let user = if root {
        None
    } else {
        Some(
            crate::kernel::parse_id(&rec.owner)
                .ok_or_else(|| internal(format!("access key {access_key} has an unknown owner")))?,
        )
    };
    let Some(user) = user else {
        // The root key before setup: owner of the default tenant.
        return Ok(Principal {
            access_key: access_key.to_owned(),
            user: None,
            tenant: DEFAULT_TENANT,
            role: Some(Role::Owner),
            statements: Arc::new(Vec::new()),
        });
    };
    let q = IdentityService::encode_query(&IdentityQuery::Access {
        user,
        tenant: rec.tenant,
    })
    .map_err(internal)?;
    let bytes = gateway
        .master
        .query(IdentityService::ID, q, Consistency::Linearizable)
        .await
        .map_err(|e| propose_error(&e))?
        .map_err(|r| internal(r.message))?;
    Ok(
        match IdentityService::query_response(&bytes).map_err(internal)? {
            IdentityQueryResponse::Access(Some(view)) => Principal {
                access_key: access_key.to_owned(),
                user: Some(user),
                tenant: view.tenant,
                role: Some(view.role),
                statements: Arc::new(view.statements),
            },
            IdentityQueryResponse::Access(None) => Principal {
                access_key: access_key.to_owned(),
                user: Some(user),
                tenant: rec.tenant.unwrap_or(DEFAULT_TENANT),
                role: None,
                statements: Arc::new(Vec::new()),
            },
            _ => return Err(internal("unexpected answer")),
        },
    )
}

fn internal(e: impl std::fmt::Display) -> S3Error {
    S3Error::with_message(S3ErrorCode::InternalError, e.to_string())
}

#[async_trait::async_trait]
impl S3Auth for KeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if let Some((k, at)) = self.cache.lock().get(access_key)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(k.clone());
        }
        if cairn_master::keys::check_access_key(access_key).is_err() {
            return Err(S3Error::new(S3ErrorCode::InvalidAccessKeyId));
        }
        let Some(rec) = key_record(&self.gateway, access_key).await? else {
            return Err(S3Error::new(S3ErrorCode::InvalidAccessKeyId));
        };
        let secret = self
            .gateway
            .secrets
            .open(S3_SECRET, &rec.sealed_secret)
            .map_err(|e| {
                tracing::error!(error = %e, access_key, "cannot open an S3 secret: is this gateway's tls/secrets.key the cluster's?");
                internal("cannot open the secret of this access key")
            })?;
        let secret = String::from_utf8(secret).map_err(internal)?;
        let key = SecretKey::from(secret);
        let mut cache = self.cache.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(access_key.to_owned(), (key.clone(), Instant::now()));
        Ok(key)
    }
}

/// Operations an anonymous caller may run on a `public-read` bucket.
const PUBLIC_READS: &[&str] = &[
    "GetObject",
    "HeadObject",
    "ListObjects",
    "ListObjectsV2",
    "HeadBucket",
];

#[derive(Debug)]
pub struct Access {
    gateway: Arc<Gateway>,
    principals: Mutex<HashMap<String, (Principal, Instant)>>,
}

fn anonymous_denied() -> S3Error {
    S3Error::with_message(
        S3ErrorCode::AccessDenied,
        "anonymous access is not allowed here: sign the request",
    )
}

fn no_such_bucket() -> S3Error {
    S3Error::with_message(
        S3ErrorCode::NoSuchBucket,
        "The specified bucket does not exist",
    )
}

/// Decide on one S3 operation by `principal` (`None`: anonymous) on `bucket` (its record, if
/// it exists) and `key`, with the request's condition keys `cx`. Pure, so the rules are tested
/// without a cluster.
///
/// How the parts combine, as S3 does: a `Deny` of the bucket policy (or of the caller's own
/// IAM policies) refuses; otherwise a member of the bucket's tenant is allowed by their role
/// or IAM policies, or by the bucket policy; anyone else (anonymous, another tenant) only by
/// the bucket policy or a public ACL. The public access block takes public ACLs away
/// (`IgnorePublicAcls`) and, with `RestrictPublicBuckets`, a public policy's grants to anyone
/// outside the tenant. A tenant's owner may always read, change and delete the bucket policy,
/// so a policy that denies everyone can be undone.
pub fn judge(
    principal: Option<&Principal>,
    op: &str,
    bucket: Option<(&str, Option<&BucketRecord>)>,
    key: Option<&str>,
    cx: &Context,
) -> S3Result<()> {
    judge_with(principal, op, bucket, key, cx, None)
}

/// [`judge`], with the grants of the object's own ACL (for the object operations an object
/// ACL can grant: reads, and reading or changing the ACL).
pub fn judge_with(
    principal: Option<&Principal>,
    op: &str,
    bucket: Option<(&str, Option<&BucketRecord>)>,
    key: Option<&str>,
    cx: &Context,
    object_grants: Option<&[acl::Grant]>,
) -> S3Result<()> {
    let (action, class) = s3_action(op);
    let denied = || {
        S3Error::with_message(
            S3ErrorCode::AccessDenied,
            format!("{action} is not allowed for this key by its role or a policy"),
        )
    };
    let verdict = |p: &Principal, resource: &str, tenant: u128| {
        let role = if p.tenant == tenant { p.role } else { None };
        decide(
            role,
            p.statements.iter(),
            &Request {
                action: &action,
                class,
                resource,
            },
        )
    };
    let Some((name, rec)) = bucket else {
        // ListBuckets, the one operation on no bucket: what the tenant holds.
        let p = principal.ok_or_else(anonymous_denied)?;
        return match verdict(p, "*", p.tenant) {
            Decision::Allow => Ok(()),
            _ => Err(denied()),
        };
    };
    let resource = match key {
        Some(k) => format!("{name}/{k}"),
        None => name.to_owned(),
    };
    if op == "CreateBucket" {
        let p = principal.ok_or_else(anonymous_denied)?;
        return match verdict(p, &resource, p.tenant) {
            Decision::Allow => Ok(()),
            _ => Err(denied()),
        };
    }
    let Some(rec) = rec else {
        return Err(if principal.is_some() {
            no_such_bucket()
        } else {
            anonymous_denied()
        });
    };
    let tenant = bucket_tenant(&rec.owner);
    let block = rec.access_block();
    let member = principal.is_some_and(|p| p.tenant == tenant && p.role.is_some());
    let policy = policy_verdict(
        principal, op, &action, rec, name, &resource, tenant, member, cx,
    )?;
    // An unlisted bucket (namespace visibility 1) is readable by object name only.
    let public = rec.public_read
        && !block.ignore_public_acls
        && PUBLIC_READS.contains(&op)
        && (!rec.unlisted || matches!(op, "GetObject" | "HeadObject"));
    // The bucket's other ACL grants (to tenants, AuthenticatedUsers, AllUsers).
    let caller_tenant = principal.map(|p| tenant_hex(p.tenant));
    let granted = match (&rec.acl, acl_permission(op)) {
        (Some(grants), Some(needed)) => acl::allows(
            grants,
            caller_tenant.as_deref(),
            needed,
            block.ignore_public_acls,
        ),
        _ => false,
    };
    let object_granted = match (object_grants, object_acl_permission(op)) {
        (Some(grants), Some(needed)) => acl::allows(
            grants,
            caller_tenant.as_deref(),
            needed,
            block.ignore_public_acls,
        ),
        _ => false,
    };
    let public = public || granted || object_granted;
    let by_policy = || {
        S3Error::with_message(
            S3ErrorCode::AccessDenied,
            format!("{action} on {resource} is denied by the bucket policy"),
        )
    };
    let Some(p) = principal else {
        return match policy {
            Verdict::Deny => Err(by_policy()),
            Verdict::Allow => Ok(()),
            Verdict::Silent if public => Ok(()),
            Verdict::Silent => Err(anonymous_denied()),
        };
    };
    if policy == Verdict::Deny {
        return Err(by_policy());
    }
    match verdict(p, &resource, tenant) {
        Decision::Allow => Ok(()),
        Decision::ExplicitDeny => Err(denied()),
        Decision::ImplicitDeny if policy == Verdict::Allow => Ok(()),
        Decision::ImplicitDeny => Err(denied()),
        Decision::NotMember if policy == Verdict::Allow || public => Ok(()),
        // Another tenant's bucket is answered like one that does not exist.
        Decision::NotMember => Err(no_such_bucket()),
    }
}

/// The bucket ACL permission an operation needs, for operations a bucket ACL can grant.
fn acl_permission(op: &str) -> Option<AclPermission> {
    Some(match op {
        "ListObjects"
        | "ListObjectsV2"
        | "ListObjectVersions"
        | "ListMultipartUploads"
        | "HeadBucket" => AclPermission::Read,
        "PutObject"
        | "CopyObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload"
        | "AbortMultipartUpload"
        | "DeleteObject"
        | "DeleteObjects" => AclPermission::Write,
        "GetBucketAcl" => AclPermission::ReadAcp,
        "PutBucketAcl" => AclPermission::WriteAcp,
        _ => return None,
    })
}

/// The object ACL permission an operation needs, for operations an object ACL can grant.
fn object_acl_permission(op: &str) -> Option<AclPermission> {
    Some(match op {
        "GetObject" | "HeadObject" | "GetObjectAttributes" => AclPermission::Read,
        "GetObjectAcl" => AclPermission::ReadAcp,
        "PutObjectAcl" => AclPermission::WriteAcp,
        _ => return None,
    })
}

/// Operations on the bucket policy itself, which a tenant's owner may always run.
const POLICY_OPS: &[&str] = &["GetBucketPolicy", "PutBucketPolicy", "DeleteBucketPolicy"];

/// What the bucket's policy says about the request.
#[allow(clippy::too_many_arguments)]
fn policy_verdict(
    principal: Option<&Principal>,
    op: &str,
    action: &str,
    rec: &BucketRecord,
    bucket: &str,
    resource: &str,
    tenant: u128,
    member: bool,
    cx: &Context,
) -> S3Result<Verdict> {
    let Some(text) = &rec.policy else {
        return Ok(Verdict::Silent);
    };
    let owner = member && principal.is_some_and(|p| p.role == Some(Role::Owner));
    if owner && POLICY_OPS.contains(&op) {
        return Ok(Verdict::Silent);
    }
    // The bucket service checked the policy when it was set; one this build cannot read any
    // more refuses everything rather than being ignored.
    let policy = stored_policy(bucket, text).map_err(|why| {
        S3Error::with_message(
            S3ErrorCode::AccessDenied,
            format!("the bucket policy cannot be read ({why}): its owner must set it again"),
        )
    })?;
    let caller = match principal {
        Some(p) => Caller {
            tenant: Some(tenant_hex(p.tenant)),
            user: p.user.map(crate::kernel::hex_id),
            access_key: Some(p.access_key.clone()),
        },
        None => Caller::anonymous(),
    };
    let mut cx = cx.clone();
    match &caller.tenant {
        Some(t) => {
            cx.set("aws:PrincipalType", "User");
            cx.set("aws:PrincipalAccount", t.clone());
            let arn = match &caller.user {
                Some(u) => format!("arn:aws:iam::{t}:user/{u}"),
                None => format!("arn:aws:iam::{t}:root"),
            };
            cx.set("aws:PrincipalArn", arn);
            if let Some(u) = &caller.user {
                cx.set("aws:userid", u.clone());
            }
        }
        None => cx.set("aws:PrincipalType", "Anonymous"),
    }
    cx.set("s3:ResourceAccount", tenant_hex(tenant));
    let versioned = cx.get("s3:VersionId").is_some();
    let action = policy_action(action, versioned);
    let verdict = policy.evaluate(&PolicyRequest {
        action: &action,
        resource: &format!("arn:aws:s3:::{resource}"),
        caller: &caller,
        context: &cx,
    });
    if verdict == Verdict::Allow
        && !member
        && rec.access_block().restrict_public_buckets
        && policy.is_public()
    {
        return Ok(Verdict::Silent);
    }
    Ok(verdict)
}

/// The version a request names (its `s3:VersionId` condition key), if any.
fn version_in(cx: &Context) -> Option<VersionRef> {
    cx.get("s3:VersionId")
        .and_then(|v| v.first())
        .and_then(|v| VersionRef::parse(v))
}

/// Most parsed bucket policies kept (one per bucket).
const POLICIES_KEPT: usize = 1024;

/// A bucket's stored policy, parsed once per text and kept: a request on a bucket with a
/// policy would otherwise parse its JSON once or twice. The stored text was checked when it
/// was set; one this build cannot read is an error the caller refuses on.
fn stored_policy(bucket: &str, text: &str) -> Result<Arc<BucketPolicy>, String> {
    type Kept = HashMap<String, (String, Arc<BucketPolicy>)>;
    static KEPT: std::sync::OnceLock<Mutex<Kept>> = std::sync::OnceLock::new();
    let kept = KEPT.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some((t, p)) = kept.lock().get(bucket)
        && t == text
    {
        return Ok(p.clone());
    }
    let parsed = Arc::new(BucketPolicy::parse(text, bucket)?);
    let mut kept = kept.lock();
    if kept.len() >= POLICIES_KEPT {
        kept.clear();
    }
    kept.insert(bucket.to_owned(), (text.to_owned(), parsed.clone()));
    Ok(parsed)
}

/// The action a bucket policy sees: requests naming a version are S3's `...Version` actions.
fn policy_action(action: &str, versioned: bool) -> String {
    if !versioned {
        return action.to_owned();
    }
    match action {
        "s3:GetObject" => "s3:GetObjectVersion",
        "s3:DeleteObject" => "s3:DeleteObjectVersion",
        "s3:GetObjectTagging" => "s3:GetObjectVersionTagging",
        "s3:PutObjectTagging" => "s3:PutObjectVersionTagging",
        "s3:DeleteObjectTagging" => "s3:DeleteObjectVersionTagging",
        "s3:GetObjectAcl" => "s3:GetObjectVersionAcl",
        "s3:PutObjectAcl" => "s3:PutObjectVersionAcl",
        other => other,
    }
    .to_owned()
}

impl Access {
    pub fn new(gateway: Arc<Gateway>) -> Access {
        Access {
            gateway,
            principals: Mutex::new(HashMap::new()),
        }
    }

    /// The principal of a signed request's access key (kept for [`CACHE_FOR`]: a changed role
    /// or policy counts within that time).
    async fn principal(&self, access_key: &str) -> S3Result<Principal> {
        if let Some((p, at)) = self.principals.lock().get(access_key)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(p.clone());
        }
        let Some(rec) = key_record(&self.gateway, access_key).await? else {
            return Err(S3Error::new(S3ErrorCode::InvalidAccessKeyId));
        };
        let p = principal_of(&self.gateway, access_key, &rec).await?;
        let mut cache = self.principals.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(access_key.to_owned(), (p.clone(), Instant::now()));
        Ok(p)
    }

    /// The bucket's record as the serving master has applied it (no read-index round: a
    /// bucket changes tenant only by being deleted and made again, object writes re-check
    /// the tenant inside their command, and the handler's own queries are linearizable).
    async fn bucket_record(&self, name: &str) -> S3Result<Option<BucketRecord>> {
        match self
            .gateway
            .query_with(
                &BucketQuery::Bucket {
                    name: name.to_owned(),
                },
                Consistency::Stale,
            )
            .await?
        {
            BucketQueryResponse::Bucket(b) => Ok(b),
            _ => Err(internal("unexpected answer")),
        }
    }

    async fn principal_of_request<T>(&self, req: &S3Request<T>) -> S3Result<Option<Principal>> {
        if let Some(p) = req.extensions.get::<Principal>() {
            return Ok(Some(p.clone()));
        }
        match &req.credentials {
            Some(c) => Ok(Some(self.principal(&c.access_key).await?)),
            None => Ok(None),
        }
    }

    /// [`judge`], with every refusal of a signed request recorded in the audit log as
    /// `denied` (the access key, the action, `bucket/key`, the address).
    #[allow(clippy::too_many_arguments)]
    async fn judged(
        &self,
        principal: Option<&Principal>,
        op: &str,
        bucket: Option<(&str, Option<&BucketRecord>)>,
        key: Option<&str>,
        ip: &str,
        cx: &Context,
    ) -> S3Result<()> {
        let mut verdict = judge(principal, op, bucket, key, cx);
        // Refused by everything else: the object's own ACL may still grant it (one more read,
        // only for refused object reads and ACL operations).
        if verdict.is_err()
            && object_acl_permission(op).is_some()
            && let (Some((b, Some(_))), Some(k)) = (bucket, key)
            && let Some(grants) = self.object_grants(b, k, cx).await?
        {
            verdict = judge_with(principal, op, bucket, key, cx, Some(&grants));
        }
        if let (Err(_), Some(p)) = (&verdict, principal) {
            let resource = match (bucket, key) {
                (Some((b, _)), Some(k)) => format!("{b}/{k}"),
                (Some((b, _)), None) => b.to_owned(),
                (None, _) => "*".to_owned(),
            };
            self.gateway
                .audit(&p.access_key, &s3_action(op).0, &resource, ip, "denied")
                .await;
        }
        verdict
    }

    /// The grants of an object version's ACL (the version the request names, else the newest);
    /// `None` when there are none.
    async fn object_grants(
        &self,
        bucket: &str,
        key: &str,
        cx: &Context,
    ) -> S3Result<Option<Vec<acl::Grant>>> {
        let version = version_in(cx);
        match self
            .gateway
            .query(&BucketQuery::ObjectAcl {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                version,
            })
            .await?
        {
            BucketQueryResponse::ObjectAcl(Some(Some((_, a)))) if !a.grants.is_empty() => {
                Ok(Some(a.grants))
            }
            BucketQueryResponse::ObjectAcl(_) => Ok(None),
            _ => Err(internal("unexpected answer")),
        }
    }

    /// A copy reads its source: the caller must be allowed `s3:GetObject` there too.
    async fn check_copy_source<T>(&self, req: &S3Request<T>, source: &CopySource) -> S3Result<()> {
        let CopySource::Bucket { bucket, key, .. } = source else {
            return Err(S3Error::with_message(
                S3ErrorCode::NotImplemented,
                "copy sources are bucket/key",
            ));
        };
        crate::sse::refuse_insecure_customer_key(
            &self.gateway,
            &req.headers,
            peer_of(&req.extensions),
        )?;
        let p = self.principal_of_request(req).await?;
        let rec = self.bucket_record(bucket).await?;
        // `x-amz-source-expected-bucket-owner`: the copy is refused unless the source bucket
        // belongs to that tenant.
        if let (Some(r), Some(expected)) = (
            &rec,
            req.headers
                .get("x-amz-source-expected-bucket-owner")
                .and_then(|v| v.to_str().ok()),
        ) && !expected.eq_ignore_ascii_case(&tenant_hex(bucket_tenant(&r.owner)))
        {
            return Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                "The source bucket is not owned by the expected bucket owner (x-amz-source-expected-bucket-owner)",
            ));
        }
        let mut cx = request_context_of(req);
        if let Some(r) = &rec {
            self.existing_tags(r, bucket, key, None, &mut cx).await?;
        }
        self.judged(
            p.as_ref(),
            "GetObject",
            Some((bucket, rec.as_ref())),
            Some(key),
            &client_ip(&req.extensions),
            &cx,
        )
        .await
    }

    /// Add the object's current tags (`s3:ExistingObjectTag/<key>`) to `cx` when the bucket's
    /// policy reads them (one more query, only then). `found` is the version if the caller
    /// already has it.
    async fn existing_tags(
        &self,
        rec: &BucketRecord,
        bucket: &str,
        key: &str,
        found: Option<&Option<Version>>,
        cx: &mut Context,
    ) -> S3Result<()> {
        let Some(text) = &rec.policy else {
            return Ok(());
        };
        if !stored_policy(bucket, text).is_ok_and(|p| p.reads_existing_tags()) {
            return Ok(());
        }
        let version = match found {
            Some(v) => v.clone(),
            None => {
                let asked = version_in(cx);
                match self
                    .gateway
                    .query(&BucketQuery::ObjectWithBucket {
                        bucket: bucket.to_owned(),
                        key: key.to_owned(),
                        version: asked,
                    })
                    .await?
                {
                    BucketQueryResponse::ObjectWithBucket(f) => f.and_then(|(_, v)| v),
                    _ => return Err(internal("unexpected answer")),
                }
            }
        };
        if let Some(d) = version.as_ref().and_then(Version::data) {
            for (k, v) in &d.tags {
                cx.set(&format!("s3:ExistingObjectTag/{k}"), v.clone());
            }
        }
        Ok(())
    }
}

/// The condition keys of a request, for a hook that judges it again (its copy source, each key
/// of a multi-delete, the tags it sets).
fn request_context_of<T>(req: &S3Request<T>) -> Context {
    request_context(
        &req.headers,
        req.uri.query(),
        peer_of(&req.extensions),
        SystemTime::now(),
    )
}

/// The client's address, from the connection.
pub(crate) fn peer_of(ext: &http::Extensions) -> Option<std::net::SocketAddr> {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let peer = peer_of(cx.extensions_mut());
        crate::sse::refuse_insecure_customer_key(&self.gateway, cx.headers(), peer)?;
        let principal = match cx.credentials() {
            Some(c) => Some(self.principal(&c.access_key).await?),
            None => None,
        };
        let op = cx.s3_op().name().to_owned();
        let (bucket, key) = match cx.s3_path() {
            S3Path::Root => (None, None),
            S3Path::Bucket { bucket } => (Some(bucket.to_string()), None),
            S3Path::Object { bucket, key } => (Some(bucket.to_string()), Some(key.to_string())),
        };
        // A read of one object fetches the bucket's record and the version together (one
        // linearizable query), and hands the version on to the handler.
        let mut prefetched = None;
        let rec = match (&bucket, &key) {
            (Some(b), Some(k)) if op == "GetObject" || op == "HeadObject" => {
                match version_param(cx.uri()) {
                    Ok(version) => {
                        match self
                            .gateway
                            .query(&BucketQuery::ObjectWithBucket {
                                bucket: b.clone(),
                                key: k.clone(),
                                version,
                            })
                            .await?
                        {
                            BucketQueryResponse::ObjectWithBucket(Some((rec, found))) => {
                                prefetched = Some(Prefetched {
                                    bucket: b.clone(),
                                    key: k.clone(),
                                    version,
                                    found,
                                    lock_enabled: rec.object_lock.is_some(),
                                });
                                Some(rec)
                            }
                            BucketQueryResponse::ObjectWithBucket(None) => None,
                            _ => return Err(internal("unexpected answer")),
                        }
                    }
                    // A malformed version id: the handler answers it.
                    Err(()) => self.bucket_record(b).await?,
                }
            }
            (Some(b), _) if op != "CreateBucket" => self.bucket_record(b).await?,
            _ => None,
        };
        let ip = client_ip(cx.extensions_mut());
        // Condition keys matter only to a bucket policy: a bucket without one costs nothing.
        let mut context = if rec.as_ref().is_some_and(|r| r.policy.is_some()) {
            let peer = peer_of(cx.extensions_mut());
            request_context(cx.headers(), cx.uri().query(), peer, SystemTime::now())
        } else {
            Context::new()
        };
        // An object ACL belongs to the version the request names.
        if object_acl_permission(&op).is_some()
            && context.get("s3:VersionId").is_none()
            && let Ok(Some(v)) = version_param(cx.uri())
        {
            context.set(
                "s3:VersionId",
                match v {
                    VersionRef::Null => "null".to_owned(),
                    VersionRef::Id(id) => cairn_master::buckets::version_string(Some(id)),
                },
            );
        }
        if let (Some(r), Some(b), Some(k)) = (&rec, &bucket, &key) {
            let found = prefetched.as_ref().map(|p| &p.found);
            self.existing_tags(r, b, k, found, &mut context).await?;
        }
        // Overriding a GOVERNANCE retention takes its own permission too.
        let bypass = cx
            .headers()
            .get("x-amz-bypass-governance-retention")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if bypass
            && matches!(
                op.as_str(),
                "DeleteObject" | "DeleteObjects" | "PutObjectRetention"
            )
        {
            self.judged(
                principal.as_ref(),
                "BypassGovernanceRetention",
                bucket.as_deref().map(|b| (b, rec.as_ref())),
                key.as_deref(),
                &ip,
                &context,
            )
            .await?;
        }
        // A tagging request is judged by its hook below, once its tags (the condition keys
        // `s3:RequestObjectTag/...`) are read from the body.
        if op != "PutObjectTagging" {
            self.judged(
                principal.as_ref(),
                &op,
                bucket.as_deref().map(|b| (b, rec.as_ref())),
                key.as_deref(),
                &ip,
                &context,
            )
            .await?;
        }
        // `x-amz-expected-bucket-owner`: the request is refused unless the bucket belongs to
        // that tenant (its canonical id), as S3 answers a bucket of another account.
        if let (Some(r), Some(expected)) = (
            &rec,
            cx.headers()
                .get("x-amz-expected-bucket-owner")
                .and_then(|v| v.to_str().ok()),
        ) && !expected.eq_ignore_ascii_case(&tenant_hex(bucket_tenant(&r.owner)))
        {
            return Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                "The bucket is not owned by the expected bucket owner (x-amz-expected-bucket-owner)",
            ));
        }
        // The tenant the bucket belonged to when the request was authorised: an object write
        // is committed only while the bucket still belongs to it (a write that a bucket policy
        // or ACL lets in from another tenant, or anonymously, is checked against it too).
        if let Some(r) = &rec {
            cx.extensions_mut()
                .insert(BucketTenant(bucket_tenant(&r.owner)));
            if let Some(e) = &r.encryption {
                cx.extensions_mut().insert(BucketSse(e.clone()));
            }
            if let Some(o) = r.ownership {
                cx.extensions_mut().insert(BucketOwnership(o));
            }
        }
        // Writes and reads of objects report the lifecycle expiry (`x-amz-expiration`).
        if let Some(rules) = rec.as_ref().and_then(|r| r.lifecycle.clone())
            && matches!(
                op.as_str(),
                "PutObject" | "CopyObject" | "CompleteMultipartUpload" | "GetObject" | "HeadObject"
            )
        {
            cx.extensions_mut().insert(BucketLifecycle(rules));
        }
        if let Some(p) = principal {
            cx.extensions_mut().insert(p);
        }
        if let Some(p) = prefetched {
            cx.extensions_mut().insert(p);
        }
        Ok(())
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        let source = req.input.copy_source.clone();
        self.check_copy_source(req, &source).await
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        let source = req.input.copy_source.clone();
        self.check_copy_source(req, &source).await
    }

    /// A tagging request is judged with the tags it sets (`s3:RequestObjectTag/<key>` and
    /// `s3:RequestObjectTagKeys`), which are in its body.
    async fn put_object_tagging(&self, req: &mut S3Request<PutObjectTaggingInput>) -> S3Result<()> {
        let p = self.principal_of_request(req).await?;
        let bucket = req.input.bucket.clone();
        let key = req.input.key.clone();
        let rec = self.bucket_record(&bucket).await?;
        let mut cx = request_context_of(req);
        let tags = &req.input.tagging.tag_set;
        for t in tags {
            if let (Some(k), Some(v)) = (&t.key, &t.value) {
                cx.set(&format!("s3:RequestObjectTag/{k}"), v.clone());
            }
        }
        cx.set_many(
            "s3:RequestObjectTagKeys",
            tags.iter().filter_map(|t| t.key.clone()).collect(),
        );
        if let Some(r) = &rec {
            self.existing_tags(r, &bucket, &key, None, &mut cx).await?;
        }
        self.judged(
            p.as_ref(),
            "PutObjectTagging",
            Some((&bucket, rec.as_ref())),
            Some(&key),
            &client_ip(&req.extensions),
            &cx,
        )
        .await?;
        if let Some(p) = p {
            req.extensions.insert(p);
        }
        Ok(())
    }

    /// Each key of a multi-delete is checked (a policy may deny some prefixes); one denied key
    /// refuses the whole request, before anything is deleted.
    async fn delete_objects(&self, req: &mut S3Request<DeleteObjectsInput>) -> S3Result<()> {
        let p = self.principal_of_request(req).await?;
        let rec = self.bucket_record(&req.input.bucket).await?;
        let ip = client_ip(&req.extensions);
        let base = if rec.as_ref().is_some_and(|r| r.policy.is_some()) {
            request_context_of(req)
        } else {
            Context::new()
        };
        for o in &req.input.delete.objects {
            let mut cx = base.clone();
            if let Some(v) = &o.version_id {
                cx.set("s3:VersionId", v.clone());
            }
            self.judged(
                p.as_ref(),
                "DeleteObject",
                Some((&req.input.bucket, rec.as_ref())),
                Some(&o.key),
                &ip,
                &cx,
            )
            .await?;
        }
        Ok(())
    }
}

fn client_ip(ext: &http::Extensions) -> String {
    peer_of(ext).map(|p| p.ip().to_string()).unwrap_or_default()
}

/// A key's version read with its bucket's record while authorising a GET or HEAD, for the
/// handler to answer from (the same linearizable read).
#[derive(Clone, Debug)]
pub struct Prefetched {
    pub bucket: String,
    pub key: String,
    pub version: Option<VersionRef>,
    pub found: Option<Version>,
    /// The bucket has object lock (GET and HEAD then report the version's lock).
    pub lock_enabled: bool,
}

/// The `versionId` of a request's query string: `Ok(None)` without one, `Err` when malformed.
fn version_param(uri: &http::Uri) -> Result<Option<VersionRef>, ()> {
    let Some(q) = uri.query() else {
        return Ok(None);
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).map_err(|_| ())?;
    match pairs.iter().find(|(k, _)| k == "versionId") {
        None => Ok(None),
        Some((_, v)) => VersionRef::parse(v).map(Some).ok_or(()),
    }
}

/// The tenant of the bucket a request was authorised on (set by [`Access::check`]).
#[derive(Clone, Copy, Debug)]
pub struct BucketTenant(pub u128);

/// The object ownership setting of the bucket a request was authorised on, when it has one.
#[derive(Clone, Copy, Debug)]
pub struct BucketOwnership(pub cairn_master::buckets::acl::Ownership);

/// The default encryption of the bucket a request was authorised on, when it has one.
#[derive(Clone, Debug)]
pub struct BucketSse(pub cairn_master::buckets::BucketEncryption);

/// The lifecycle rules of the bucket a request writes or reads an object of (set by
/// [`Access::check`] when the bucket has any).
#[derive(Clone, Debug)]
pub struct BucketLifecycle(pub Vec<cairn_master::buckets::LifecycleRule>);

/// The principal a handler runs for (set by [`Access::check`]).
pub fn principal<T>(req: &S3Request<T>) -> Option<&Principal> {
    req.extensions.get::<Principal>()
}

/// Store an S3 access key (the secret sealed with the cluster secrets key) acting for `owner`
/// (a user id, or `root`) in `tenant` (`None` for the root key: the default tenant).
pub async fn create_key(
    gateway: &Gateway,
    access_key: &str,
    secret: &str,
    owner: &str,
    tenant: Option<u128>,
) -> Result<(), String> {
    let sealed = gateway
        .secrets
        .seal(S3_SECRET, secret.as_bytes())
        .map_err(|e| e.to_string())?;
    let c = match tenant {
        Some(tenant) => KeyCommand::CreateInTenant {
            access_key: access_key.to_owned(),
            sealed_secret: sealed,
            owner: owner.to_owned(),
            tenant,
        },
        None => KeyCommand::Create {
            access_key: access_key.to_owned(),
            sealed_secret: sealed,
            owner: owner.to_owned(),
        },
    };
    let bytes = command::<KeyService>(&c).map_err(|e| e.to_string())?;
    gateway
        .master
        .propose(bytes)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|r| r.to_string())?;
    Ok(())
}

/// A linearizable key-service query.
pub async fn key_query(gateway: &Gateway, q: &KeyQuery) -> Result<KeyQueryResponse, String> {
    let q = KeyService::encode_query(q).map_err(|e| e.to_string())?;
    let bytes = gateway
        .master
        .query(KeyService::ID, q, Consistency::Linearizable)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|r| r.to_string())?;
    KeyService::query_response(&bytes).map_err(|e| e.to_string())
}

/// Whether an access key exists.
pub async fn key_exists(gateway: &Gateway, access_key: &str) -> Result<bool, String> {
    let q = KeyQuery::Get {
        access_key: access_key.to_owned(),
    };
    match key_query(gateway, &q).await? {
        KeyQueryResponse::Key(k) => Ok(k.is_some()),
        _ => Err("unexpected answer".into()),
    }
}

/// How many access keys exist.
pub async fn key_count(gateway: &Gateway) -> Result<u64, String> {
    match key_query(gateway, &KeyQuery::Count).await? {
        KeyQueryResponse::Count(n) => Ok(n),
        _ => Err("unexpected answer".into()),
    }
}
