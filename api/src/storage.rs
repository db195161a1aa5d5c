//! The REST storage API under `/api/storage`, for scripts that do not speak S3: the same buckets
//! and objects, with a Bearer token (session or API key) instead of SigV4.
//!
//! Buckets (list, create, delete with `?force=true`, versioning on and off), objects (list the
//! latest versions or every version, upload a raw body, download, delete), multipart uploads
//! (initiate, upload a part, complete, abort), lifecycle rules, and the cluster's health.
//! Every call is authorised exactly as its S3 counterpart ([`crate::auth::judge`]): the
//! caller's role and policies in the tenant they act in, and another tenant's bucket answers
//! 404 like a missing one. API keys need `storage:read` for reads and `storage:write` for
//! changes.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use cairn_master::bucket_policy::BucketPolicy;
use cairn_master::buckets::{
    BucketChange, BucketCommand, BucketQuery, BucketQueryResponse, BucketRecord, Conditions,
    DefaultRetention, ListPage, ListRequest, LockChange, LockConfig, LockMode, ObjectData,
    ObjectMeta, PublicAccessBlock, Retention, Version, VersionRef, Versioning, version_string,
};
use cairn_master::policy::{ActionClass, s3_action};
use cairn_master::tenancy::{bucket_tenant, tenant_hex};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::auth::{Principal, judge};
use crate::kernel::context::current;
use crate::kernel::{
    ApiError, ApiResult, Caller, authenticate, client_ip, from_s3, hex_id, json_body, rfc3339,
};
use cairn_master::buckets::BucketResponse;

/// Most objects a forced delete removes (versions, delete markers and uploads together).
const FORCE_DELETE_MAX: usize = 100_000;

/// The caller as an S3 principal in the tenant they act in, after the key-scope check.
pub(crate) async fn principal(g: &Gateway, caller: &Caller, op: &str) -> ApiResult<Principal> {
    let class = s3_action(op).1;
    caller.scoped(if class == ActionClass::Read {
        "storage:read"
    } else {
        "storage:write"
    })?;
    let view = crate::tenants::access(g, caller, None).await?;
    Ok(Principal {
        access_key: format!("user:{}", hex_id(caller.user)),
        user: Some(caller.user),
        tenant: view.tenant,
        role: Some(view.role),
        statements: Arc::new(view.statements),
    })
}

/// The caller of a platform-service route as a principal of its tenant, its API key holding
/// the scope `class` needs (`storage:read` to read, `storage:write` for the rest).
pub(crate) async fn caller(
    g: &Gateway,
    headers: &HeaderMap,
    class: ActionClass,
) -> ApiResult<Principal> {
    let caller = authenticate(g, headers).await?;
    let op = match class {
        ActionClass::Read => "GetObject",
        ActionClass::Write => "PutObject",
        ActionClass::Manage => "PutBucketPolicy",
    };
    principal(g, &caller, op).await
}

/// [`caller`], allowed `action` (of `class`) on `resource`.
pub(crate) async fn allowed(
    g: &Gateway,
    headers: &HeaderMap,
    action: &str,
    class: ActionClass,
    resource: &str,
) -> ApiResult<Principal> {
    let p = caller(g, headers, class).await?;
    may(&p, action, class, resource)?;
    Ok(p)
}

/// Whether the principal's role and policies allow `action` (of `class`) on `resource`
/// (`kms/ID`, `queues/NAME`...): a 403 naming the action when not.
pub(crate) fn may(
    p: &Principal,
    action: &str,
    class: ActionClass,
    resource: &str,
) -> ApiResult<()> {
    let req = cairn_master::policy::Request {
        action,
        class,
        resource,
    };
    match cairn_master::policy::decide(p.role, p.statements.iter(), &req) {
        cairn_master::policy::Decision::Allow => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("your role or policies do not allow {action} here"),
        )),
    }
}

pub(crate) async fn record(g: &Gateway, name: &str) -> ApiResult<Option<BucketRecord>> {
    match g
        .query(&BucketQuery::Bucket {
            name: name.to_owned(),
        })
        .await
        .map_err(from_s3)?
    {
        BucketQueryResponse::Bucket(b) => Ok(b),
        _ => Err(ApiError::internal("unexpected answer")),
    }
}

/// Authorise `op` on an existing bucket (and `key` in it, for object operations, so that
/// policies on key patterns apply); the principal and the bucket's record.
pub(crate) async fn authorised(
    g: &Gateway,
    caller: &Caller,
    op: &str,
    name: &str,
    key: Option<&str>,
) -> ApiResult<(Principal, BucketRecord)> {
    let p = principal(g, caller, op).await?;
    let rec = record(g, name).await?;
    judge(Some(&p), op, Some((name, rec.as_ref())), key, &current()).map_err(from_s3)?;
    let rec = rec.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such bucket"))?;
    Ok((p, rec))
}

fn bucket_json(name: &str, b: &BucketRecord) -> Value {
    json!({
        "id": name,
        "name": name,
        "is_public": b.public_read,
        "versioning": match b.versioning {
            Versioning::Unversioned => "off",
            Versioning::Enabled => "enabled",
            Versioning::Suspended => "suspended",
        },
        "tenant_id": tenant_hex(bucket_tenant(&b.owner)),
        "created_at": rfc3339(b.created_ms),
    })
}

/// `GET /api/storage/buckets`: the buckets of the tenant the caller acts in.
#[utoipa::path(get, path = "/api/storage/buckets", responses((status = 200, description = "The tenant's buckets")))]
async fn list(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let p = principal(&g, &caller, "ListBuckets").await?;
    judge(Some(&p), "ListBuckets", None, None, &current()).map_err(from_s3)?;
    let BucketQueryResponse::Buckets(all) =
        g.query(&BucketQuery::Buckets).await.map_err(from_s3)?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let items: Vec<Value> = all
        .iter()
        .filter(|(_, b)| bucket_tenant(&b.owner) == p.tenant)
        .map(|(n, b)| bucket_json(n, b))
        .collect();
    Ok(axum::Json(json!({"buckets": items})).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewBucket {
    name: String,
    #[serde(default)]
    is_public: bool,
}

/// `POST /api/storage/buckets`: a bucket in the caller's tenant (`is_public`: anyone reads).
#[utoipa::path(post, path = "/api/storage/buckets", request_body = NewBucket, responses((status = 201, description = "The bucket"), (status = 409, description = "The name is taken")))]
async fn create(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let body: NewBucket = json_body(req).await?;
    if crate::kernel::names::RESERVED.contains(&body.name.as_str()) {
        return Err(ApiError::bad("this bucket name is reserved by the gateway"));
    }
    let p = principal(&g, &caller, "CreateBucket").await?;
    judge(
        Some(&p),
        "CreateBucket",
        Some((&body.name, None)),
        None,
        &current(),
    )
    .map_err(from_s3)?;
    g.command(&BucketCommand::CreateBucket {
        name: body.name.clone(),
        owner: tenant_hex(p.tenant),
        public_read: body.is_public,
    })
    .await
    .map_err(from_s3)?;
    let rec = record(&g, &body.name)
        .await?
        .ok_or_else(|| ApiError::internal("the new bucket is missing"))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(bucket_json(&body.name, &rec)),
    )
        .into_response())
}

#[derive(Deserialize)]
struct DeleteParams {
    #[serde(default)]
    force: bool,
}

/// `DELETE /api/storage/buckets/{name}`; with `?force=true`, its objects (every version and
/// delete marker) and unfinished uploads go first.
#[utoipa::path(delete, path = "/api/storage/buckets/{name}", params(("name" = String, Path, description = "The bucket"), ("force" = Option<bool>, Query, description = "Delete its objects first")), responses((status = 200, description = "Deleted"), (status = 409, description = "Not empty (without force)")))]
async fn delete_bucket(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let params: DeleteParams = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::bad(format!("invalid query: {e}")))?;
    let caller = authenticate(&g, req.headers()).await?;
    let (p, _) = authorised(&g, &caller, "DeleteBucket", &name, None).await?;
    let mut removed = 0usize;
    if params.force {
        let who = writer(&caller, &p, client_ip(&req));
        removed = empty_bucket(&g, &p, &who, &name).await?;
    }
    g.command(&BucketCommand::DeleteBucket { name: name.clone() })
        .await
        .map_err(from_s3)?;
    Ok(axum::Json(json!({"status": "deleted", "objects_removed": removed})).into_response())
}

/// One page of a listing query.
pub(crate) async fn page(g: &Gateway, q: &BucketQuery) -> ApiResult<ListPage> {
    match g.query(q).await.map_err(from_s3)? {
        BucketQueryResponse::Page(page) => Ok(page),
        _ => Err(ApiError::internal("unexpected answer")),
    }
}

/// Remove every version, delete marker and unfinished upload of `bucket`, page by page, each
/// removal authorised as an S3 `DeleteObject` (a Deny on a prefix stops the whole delete) and
/// written as the S3 face writes (audited, the tenant checked inside the command).
pub(crate) async fn empty_bucket(
    g: &Arc<Gateway>,
    p: &Principal,
    who: &crate::objects::Who,
    bucket: &str,
) -> ApiResult<usize> {
    let first = || ListRequest {
        bucket: bucket.to_owned(),
        limit: 1000,
        ..ListRequest::default()
    };
    let mut removed = 0usize;
    loop {
        let objects = page(g, &BucketQuery::Versions(first())).await?.objects;
        if objects.is_empty() {
            break;
        }
        let rec = record(g, bucket).await?;
        for o in objects {
            judge(
                Some(p),
                "DeleteObject",
                Some((bucket, rec.as_ref())),
                Some(&o.key),
                &current(),
            )
            .map_err(from_s3)?;
            let version = Some(match o.version.id {
                Some(id) => VersionRef::Id(id),
                None => VersionRef::Null,
            });
            let c = BucketCommand::DeleteObject {
                bucket: bucket.to_owned(),
                key: o.key,
                version,
            };
            crate::objects::write(g, who, c).await.map_err(from_s3)?;
            removed += 1;
            if removed >= FORCE_DELETE_MAX {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("removed {removed} objects; delete again to go on"),
                ));
            }
        }
    }
    loop {
        let uploads = page(g, &BucketQuery::Uploads(first())).await?.uploads;
        if uploads.is_empty() {
            break;
        }
        for u in uploads {
            let c = BucketCommand::AbortUpload {
                bucket: bucket.to_owned(),
                key: u.key,
                upload: u.id,
            };
            crate::objects::write(g, who, c).await.map_err(from_s3)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct VersioningBody {
    enabled: bool,
}

/// `PUT /api/storage/buckets/{name}/versioning` (`{"enabled": bool}`; off suspends it, as S3).
#[utoipa::path(put, path = "/api/storage/buckets/{name}/versioning", params(("name" = String, Path, description = "The bucket")), request_body = VersioningBody, responses((status = 200, description = "The bucket")))]
async fn versioning(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let body: VersioningBody = json_body(req).await?;
    authorised(&g, &caller, "PutBucketVersioning", &name, None).await?;
    let v = if body.enabled {
        Versioning::Enabled
    } else {
        Versioning::Suspended
    };
    g.command(&BucketCommand::Configure {
        name: name.clone(),
        change: BucketChange::Versioning(v),
    })
    .await
    .map_err(from_s3)?;
    let rec = record(&g, &name)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such bucket"))?;
    Ok(axum::Json(bucket_json(&name, &rec)).into_response())
}

fn object_json(bucket: &str, key: &str, v: &Version) -> Value {
    let (size, content_type, checksum) = match v.data() {
        Some(d) => (
            d.size,
            d.meta.content_type.clone(),
            d.meta.checksum.as_ref().map_or_else(
                || json!({"md5": d.etag}),
                |(alg, val)| json!({alg.to_ascii_lowercase(): val, "md5": d.etag}),
            ),
        ),
        None => (0, None, Value::Null),
    };
    json!({
        "id": format!("{bucket}/{key}"),
        "bucket": bucket,
        "key": key,
        "size_bytes": size,
        "content_type": content_type,
        "checksum": checksum,
        "version_id": version_string(v.id),
        "delete_marker": v.data().is_none(),
        "created_at": rfc3339(v.modified_ms),
    })
}

#[derive(Deserialize)]
struct ListParams {
    #[serde(default)]
    prefix: String,
    /// Start after this key.
    after: Option<String>,
    limit: Option<u32>,
}

async fn list_page(
    g: &Gateway,
    caller: &Caller,
    bucket: &str,
    query: &str,
    versions: bool,
) -> ApiResult<Response> {
    let p: ListParams = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad(format!("invalid query: {e}")))?;
    let op = if versions {
        "ListObjectVersions"
    } else {
        "ListObjectsV2"
    };
    authorised(g, caller, op, bucket, None).await?;
    let lr = ListRequest {
        bucket: bucket.to_owned(),
        prefix: p.prefix,
        after: p.after,
        limit: p.limit.unwrap_or(1000).clamp(1, 1000),
        ..ListRequest::default()
    };
    let q = if versions {
        BucketQuery::Versions(lr)
    } else {
        BucketQuery::List(lr)
    };
    let page = page(g, &q).await?;
    let items: Vec<Value> = page
        .objects
        .iter()
        .map(|o| object_json(bucket, &o.key, &o.version))
        .collect();
    Ok(axum::Json(json!({
        "objects": items,
        "truncated": page.truncated,
        "next": if page.truncated { page.next } else { None },
    }))
    .into_response())
}

/// `GET /api/storage/buckets/{name}/objects`: the latest version of each key (`prefix`,
/// `after`, `limit` up to 1,000).
#[utoipa::path(get, path = "/api/storage/buckets/{name}/objects", params(("name" = String, Path, description = "The bucket")), responses((status = 200, description = "Objects, in key order")))]
async fn list_objects(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let caller = authenticate(&g, req.headers()).await?;
    list_page(&g, &caller, &name, &query, false).await
}

/// `GET /api/storage/buckets/{name}/versions`: every version and delete marker.
#[utoipa::path(get, path = "/api/storage/buckets/{name}/versions", params(("name" = String, Path, description = "The bucket")), responses((status = 200, description = "Versions, newest first within a key")))]
async fn list_versions(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let caller = authenticate(&g, req.headers()).await?;
    list_page(&g, &caller, &name, &query, true).await
}

pub(crate) fn writer(caller: &Caller, p: &Principal, req_ip: String) -> crate::objects::Who {
    crate::objects::Who {
        actor: hex_id(caller.user),
        ip: req_ip,
        tenant: Some(p.tenant),
    }
}

/// `PUT /api/storage/buckets/{name}/objects/{key}`: the raw body becomes the object's new
/// version (its `Content-Type` kept); streamed, at most 5 GiB.
#[utoipa::path(put, path = "/api/storage/buckets/{name}/objects/{key}", params(("name" = String, Path, description = "The bucket"), ("key" = String, Path, description = "The object key")), responses((status = 201, description = "The object"), (status = 413, description = "Too large")))]
async fn upload(
    State(g): State<Arc<Gateway>>,
    Path((name, key)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let (p, _) = authorised(&g, &caller, "PutObject", &name, Some(&key)).await?;
    let who = writer(&caller, &p, client_ip(&req));
    let content_type = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = sync_body(req.into_body());
    let (tenant, sse) = crate::objects::default_sse(&g, &name)
        .await
        .map_err(from_s3)?;
    let stored = crate::objects::store_object(
        &g,
        Some(body),
        &HeaderMap::new(),
        None,
        (name.as_str(), key.as_str()),
        tenant,
        sse.as_ref(),
    )
    .await
    .map_err(from_s3)?;
    let meta = ObjectMeta {
        content_type,
        checksum: stored.checksum.clone(),
        ..ObjectMeta::default()
    };
    crate::objects::write(
        &g,
        &who,
        BucketCommand::PutObject {
            bucket: name.clone(),
            key: key.clone(),
            data: ObjectData {
                size: stored.size,
                etag: stored.etag.clone(),
                parts: Vec::new(),
                content: stored.content,
                meta,
                tags: Vec::new(),
            },
            conditions: Conditions::default(),
        },
    )
    .await
    .map_err(from_s3)?;
    let v = latest(&g, &name, &key).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(object_json(&name, &key, &v)),
    )
        .into_response())
}

/// The request body as a stream s3s takes (it must be `Sync`, which a hyper body is not): a
/// task forwards it through a channel of 4 pieces, so memory stays bounded.
pub(crate) fn sync_body(body: axum::body::Body) -> s3s::dto::StreamingBlob {
    use futures::StreamExt;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut s = body.into_data_stream();
        while let Some(piece) = s.next().await {
            if tx.send(piece.map_err(std::io::Error::other)).await.is_err() {
                break;
            }
        }
    });
    s3s::dto::StreamingBlob::wrap(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

pub(crate) async fn latest(g: &Gateway, bucket: &str, key: &str) -> ApiResult<Version> {
    match g
        .query(&BucketQuery::Object {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            version: None,
        })
        .await
        .map_err(from_s3)?
    {
        BucketQueryResponse::Object(Some(Some(v))) if v.data().is_some() => Ok(v),
        BucketQueryResponse::Object(None) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "no such bucket"))
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such object")),
    }
}

/// `GET /api/storage/buckets/{name}/objects/{key}`: the latest version's bytes, streamed.
#[utoipa::path(get, path = "/api/storage/buckets/{name}/objects/{key}", params(("name" = String, Path, description = "The bucket"), ("key" = String, Path, description = "The object key")), responses((status = 200, description = "The bytes"), (status = 404, description = "No such object")))]
async fn download(
    State(g): State<Arc<Gateway>>,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    authorised(&g, &caller, "GetObject", &name, Some(&key)).await?;
    let v = latest(&g, &name, &key).await?;
    let Some(d) = v.data() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such object"));
    };
    let body = axum::body::Body::from_stream(
        crate::objects::read_body(&g, d, None, 0, d.size)
            .await
            .map_err(from_s3)?,
    );
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    let ct = d
        .meta
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    if let Ok(v) = axum::http::HeaderValue::from_str(&ct) {
        h.insert(axum::http::header::CONTENT_TYPE, v);
    }
    h.insert(
        axum::http::header::CONTENT_LENGTH,
        axum::http::HeaderValue::from(d.size),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("\"{}\"", d.etag)) {
        h.insert(axum::http::header::ETAG, v);
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&version_string(v.id)) {
        h.insert("x-version-id", v);
    }
    Ok(resp)
}

/// `DELETE /api/storage/buckets/{name}/objects/{key}`: in a versioned bucket a delete marker
/// (the versions stay, listed under `versions`), otherwise the object.
#[utoipa::path(delete, path = "/api/storage/buckets/{name}/objects/{key}", params(("name" = String, Path, description = "The bucket"), ("key" = String, Path, description = "The object key")), responses((status = 200, description = "Deleted")))]
async fn delete_object(
    State(g): State<Arc<Gateway>>,
    Path((name, key)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let (p, _) = authorised(&g, &caller, "DeleteObject", &name, Some(&key)).await?;
    let who = writer(&caller, &p, client_ip(&req));
    crate::objects::write(
        &g,
        &who,
        BucketCommand::DeleteObject {
            bucket: name,
            key,
            version: None,
        },
    )
    .await
    .map_err(from_s3)?;
    Ok(axum::Json(json!({"status": "deleted"})).into_response())
}

// ---------------------------------------------------------------------------------------------
// Multipart uploads.

#[derive(Deserialize, utoipa::ToSchema)]
struct NewUpload {
    key: String,
    content_type: Option<String>,
}

fn upload_json(bucket: &str, key: &str, id: u128) -> Value {
    json!({
        "upload_id": cairn_master::buckets::upload_string(id),
        "bucket": bucket,
        "key": key,
    })
}

fn upload_id(s: &str) -> ApiResult<u128> {
    cairn_master::buckets::parse_upload(s)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such upload"))
}

/// S3's errors for uploads, as this API answers them.
fn upload_error(e: s3s::S3Error) -> ApiError {
    match e.code().as_str() {
        "NoSuchUpload" => ApiError::new(StatusCode::NOT_FOUND, "no such upload"),
        "InvalidPart" | "InvalidPartOrder" | "EntityTooSmall" => {
            ApiError::bad(e.message().unwrap_or("invalid parts").to_owned())
        }
        _ => from_s3(e),
    }
}

/// `POST /api/storage/buckets/{name}/uploads` (`{"key", "content_type"}`): a multipart upload.
#[utoipa::path(post, path = "/api/storage/buckets/{name}/uploads", params(("name" = String, Path, description = "The bucket")), request_body = NewUpload, responses((status = 201, description = "upload_id, bucket, key")))]
async fn initiate(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let ip = client_ip(&req);
    let body: NewUpload = json_body(req).await?;
    let (p, _) = authorised(&g, &caller, "CreateMultipartUpload", &name, Some(&body.key)).await?;
    let who = writer(&caller, &p, ip);
    let create = BucketCommand::CreateUpload {
        bucket: name.clone(),
        key: body.key.clone(),
        owner: format!("user:{}", hex_id(caller.user)),
        meta: ObjectMeta {
            content_type: body.content_type,
            ..ObjectMeta::default()
        },
        tags: Vec::new(),
    };
    // The bucket's default encryption applies to uploads as to single writes.
    let (tenant, sse) = crate::objects::default_sse(&g, &name)
        .await
        .map_err(from_s3)?;
    let create = match sse {
        None => create,
        Some(req) => {
            let (kept, _) = crate::sse::new_data_key(&g, tenant, &name, &body.key, &req)
                .await
                .map_err(from_s3)?;
            BucketCommand::Sealed {
                sse: kept,
                command: Box::new(create),
            }
        }
    };
    let r = crate::objects::write(&g, &who, create)
        .await
        .map_err(from_s3)?;
    let BucketResponse::Upload { id } = r else {
        return Err(ApiError::internal("unexpected answer"));
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(upload_json(&name, &body.key, id)),
    )
        .into_response())
}

#[derive(Deserialize)]
struct KeyParam {
    key: String,
}

fn key_param(req: &Request) -> ApiResult<String> {
    let k: KeyParam = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::bad(format!("name the upload's key with ?key=: {e}")))?;
    Ok(k.key)
}

/// `PUT /api/storage/buckets/{name}/uploads/{id}/parts/{number}?key=K`: the raw body is part
/// `number` (1-10,000; every part but the last at least 5 MiB).
#[utoipa::path(put, path = "/api/storage/buckets/{name}/uploads/{id}/parts/{number}", params(("name" = String, Path, description = "The bucket"), ("id" = String, Path, description = "The upload"), ("number" = u32, Path, description = "The part number"), ("key" = String, Query, description = "The upload's key")), responses((status = 200, description = "part_number, etag, size_bytes")))]
async fn put_part(
    State(g): State<Arc<Gateway>>,
    Path((name, id, number)): Path<(String, String, u32)>,
    req: Request,
) -> ApiResult<Response> {
    let key = key_param(&req)?;
    let caller = authenticate(&g, req.headers()).await?;
    let upload = upload_id(&id)?;
    if !(1..=cairn_master::buckets::PART_NUMBER_MAX).contains(&number) {
        return Err(ApiError::bad("a part number is 1 to 10000"));
    }
    authorised(&g, &caller, "UploadPart", &name, Some(&key)).await?;
    let (stored, c, _) = crate::objects::store_part(
        &g,
        Some(sync_body(req.into_body())),
        &HeaderMap::new(),
        None,
        (name.as_str(), key.as_str(), upload, number),
        None,
        true,
    )
    .await
    .map_err(|e| {
        if *e.code() == s3s::S3ErrorCode::NoSuchUpload {
            ApiError::new(StatusCode::NOT_FOUND, "no such upload")
        } else {
            from_s3(e)
        }
    })?;
    g.command(&c).await.map_err(upload_error)?;
    Ok(axum::Json(json!({
        "part_number": number,
        "etag": stored.etag,
        "size_bytes": stored.size,
    }))
    .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CompletedPart {
    part_number: u32,
    etag: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct Completion {
    key: String,
    parts: Vec<CompletedPart>,
}

/// `POST /api/storage/buckets/{name}/uploads/{id}/complete` (`{"key", "parts": [{"part_number",
/// "etag"}]}` in ascending order): the parts become the object's new version.
#[utoipa::path(post, path = "/api/storage/buckets/{name}/uploads/{id}/complete", params(("name" = String, Path, description = "The bucket"), ("id" = String, Path, description = "The upload")), request_body = Completion, responses((status = 201, description = "The object")))]
async fn complete(
    State(g): State<Arc<Gateway>>,
    Path((name, id)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let ip = client_ip(&req);
    let body: Completion = json_body(req).await?;
    let upload = upload_id(&id)?;
    let (p, _) = authorised(
        &g,
        &caller,
        "CompleteMultipartUpload",
        &name,
        Some(&body.key),
    )
    .await?;
    let who = writer(&caller, &p, ip);
    let parts = body
        .parts
        .into_iter()
        .map(|x| (x.part_number, x.etag.trim_matches('"').to_owned()))
        .collect();
    crate::objects::write(
        &g,
        &who,
        BucketCommand::CompleteUpload {
            bucket: name.clone(),
            key: body.key.clone(),
            upload,
            parts,
            conditions: Conditions::default(),
        },
    )
    .await
    .map_err(upload_error)?;
    let v = latest(&g, &name, &body.key).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(object_json(&name, &body.key, &v)),
    )
        .into_response())
}

/// `DELETE /api/storage/buckets/{name}/uploads/{id}?key=K`: abort; its parts are freed.
#[utoipa::path(delete, path = "/api/storage/buckets/{name}/uploads/{id}", params(("name" = String, Path, description = "The bucket"), ("id" = String, Path, description = "The upload"), ("key" = String, Query, description = "The upload's key")), responses((status = 200, description = "Aborted")))]
async fn abort(
    State(g): State<Arc<Gateway>>,
    Path((name, id)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let key = key_param(&req)?;
    let caller = authenticate(&g, req.headers()).await?;
    let upload = upload_id(&id)?;
    let (p, _) = authorised(&g, &caller, "AbortMultipartUpload", &name, Some(&key)).await?;
    let who = writer(&caller, &p, client_ip(&req));
    crate::objects::write(
        &g,
        &who,
        BucketCommand::AbortUpload {
            bucket: name,
            key,
            upload,
        },
    )
    .await
    .map_err(upload_error)?;
    Ok(axum::Json(json!({"status": "aborted"})).into_response())
}

// ---------------------------------------------------------------------------------------------
// Lifecycle rules and health.

fn rule_json(r: &cairn_master::buckets::LifecycleRule) -> Value {
    json!({
        "id": r.id,
        "prefix": r.filter.prefix,
        "expiration_days": r.expiration_days,
        "enabled": r.enabled,
    })
}

/// `GET /api/storage/buckets/{name}/lifecycle`: the bucket's rules.
#[utoipa::path(get, path = "/api/storage/buckets/{name}/lifecycle", params(("name" = String, Path, description = "The bucket")), responses((status = 200, description = "The rules")))]
async fn lifecycle(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let (_, rec) = authorised(&g, &caller, "GetBucketLifecycleConfiguration", &name, None).await?;
    let rules: Vec<Value> = rec.lifecycle.iter().flatten().map(rule_json).collect();
    Ok(axum::Json(json!({"rules": rules})).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewRule {
    #[serde(default)]
    prefix: String,
    expiration_days: u32,
    /// A name for the rule (one is made when absent).
    id: Option<String>,
}

/// Most lifecycle rules a bucket holds (S3's limit).
const RULES_MAX: usize = 1000;

/// `POST /api/storage/buckets/{name}/lifecycle` (`{"prefix", "expiration_days"}`): objects
/// under the prefix expire that many days after they were written (the master's lifecycle
/// planner removes them, as for S3 rules; this is the same configuration S3 reads).
#[utoipa::path(post, path = "/api/storage/buckets/{name}/lifecycle", params(("name" = String, Path, description = "The bucket")), request_body = NewRule, responses((status = 201, description = "The rule")))]
async fn add_rule(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let body: NewRule = json_body(req).await?;
    if body.expiration_days == 0 {
        return Err(ApiError::bad("expiration_days must be at least 1"));
    }
    if body.prefix.len() > cairn_master::buckets::KEY_LEN_MAX {
        return Err(ApiError::bad("the prefix is longer than a key may be"));
    }
    let id = body
        .id
        .unwrap_or_else(|| format!("rule-{:016x}", rand::random::<u64>()));
    if id.is_empty() || id.len() > 255 {
        return Err(ApiError::bad("a rule id is 1 to 255 characters"));
    }
    let (_, rec) = authorised(&g, &caller, "PutBucketLifecycleConfiguration", &name, None).await?;
    let mut rules = rec.lifecycle.unwrap_or_default();
    if rules.iter().any(|r| r.id.as_deref() == Some(id.as_str())) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the bucket already has a rule named {id}"),
        ));
    }
    if rules.len() >= RULES_MAX {
        return Err(ApiError::bad(format!(
            "a bucket holds at most {RULES_MAX} rules"
        )));
    }
    let rule = cairn_master::buckets::LifecycleRule {
        id: Some(id),
        enabled: true,
        filter: cairn_master::buckets::LifecycleFilter {
            prefix: body.prefix,
            ..Default::default()
        },
        expiration_days: Some(body.expiration_days),
        ..cairn_master::buckets::LifecycleRule::default()
    };
    let out = rule_json(&rule);
    rules.push(rule);
    g.command(&BucketCommand::Configure {
        name,
        change: BucketChange::LifecycleRules(Some(rules)),
    })
    .await
    .map_err(from_s3)?;
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

/// `DELETE /api/storage/buckets/{name}/lifecycle/{id}`.
#[utoipa::path(delete, path = "/api/storage/buckets/{name}/lifecycle/{id}", params(("name" = String, Path, description = "The bucket"), ("id" = String, Path, description = "The rule")), responses((status = 200, description = "Deleted"), (status = 404, description = "No such rule")))]
async fn delete_rule(
    State(g): State<Arc<Gateway>>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let (_, rec) = authorised(&g, &caller, "PutBucketLifecycleConfiguration", &name, None).await?;
    let mut rules = rec.lifecycle.unwrap_or_default();
    let before = rules.len();
    rules.retain(|r| r.id.as_deref() != Some(id.as_str()));
    if rules.len() == before {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such rule"));
    }
    g.command(&BucketCommand::Configure {
        name,
        change: BucketChange::LifecycleRules((!rules.is_empty()).then_some(rules)),
    })
    .await
    .map_err(from_s3)?;
    Ok(axum::Json(json!({"status": "deleted"})).into_response())
}

/// The bucket policy as the REST API shows it: the document and whether it is public.
fn policy_json(name: &str, text: &str) -> ApiResult<Value> {
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::internal(format!("stored policy is not JSON: {e}")))?;
    let public = BucketPolicy::parse(text, name).is_ok_and(|p| p.is_public());
    Ok(json!({"bucket": name, "policy": doc, "is_public": public}))
}

/// `GET /api/storage/buckets/{name}/policy`: the bucket policy (the S3 `GetBucketPolicy`).
#[utoipa::path(get, path = "/api/storage/buckets/{name}/policy", params(("name" = String, Path, description = "The bucket")), responses((status = 200, description = "bucket, policy (the document), is_public"), (status = 404, description = "The bucket has no policy")))]
async fn get_policy(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let (_, rec) = authorised(&g, &caller, "GetBucketPolicy", &name, None).await?;
    let text = rec
        .policy
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "the bucket has no policy"))?;
    Ok(axum::Json(policy_json(&name, &text)?).into_response())
}

/// `PUT /api/storage/buckets/{name}/policy` (the body is the policy document, as S3's
/// `PutBucketPolicy` takes it): checked as S3 does, 400 with the reason when it is malformed,
/// 403 when the public access block refuses a public policy.
#[utoipa::path(put, path = "/api/storage/buckets/{name}/policy", params(("name" = String, Path, description = "The bucket")), request_body(content = Object, description = "An S3 bucket policy document"), responses((status = 200, description = "bucket, policy, is_public"), (status = 400, description = "Malformed policy, with the reason"), (status = 403, description = "Refused by the public access block")))]
async fn put_policy(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let doc: Value = json_body(req).await?;
    let text = doc.to_string();
    authorised(&g, &caller, "PutBucketPolicy", &name, None).await?;
    BucketPolicy::parse(&text, &name)
        .map_err(|why| ApiError::bad(format!("malformed policy: {why}")))?;
    g.command(&BucketCommand::Configure {
        name: name.clone(),
        change: BucketChange::Policy(Some(text.clone())),
    })
    .await
    .map_err(from_s3)?;
    Ok(axum::Json(policy_json(&name, &text)?).into_response())
}

/// `DELETE /api/storage/buckets/{name}/policy`.
#[utoipa::path(delete, path = "/api/storage/buckets/{name}/policy", params(("name" = String, Path, description = "The bucket")), responses((status = 200, description = "Deleted")))]
async fn delete_policy(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    authorised(&g, &caller, "DeleteBucketPolicy", &name, None).await?;
    g.command(&BucketCommand::Configure {
        name,
        change: BucketChange::Policy(None),
    })
    .await
    .map_err(from_s3)?;
    Ok(axum::Json(json!({"status": "deleted"})).into_response())
}

/// The four flags of S3's public access block (absent flags are off).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AccessBlockBody {
    #[serde(default)]
    block_public_acls: bool,
    #[serde(default)]
    ignore_public_acls: bool,
    #[serde(default)]
    block_public_policy: bool,
    #[serde(default)]
    restrict_public_buckets: bool,
}

fn access_block_json(b: &PublicAccessBlock) -> Value {
    json!({
        "block_public_acls": b.block_public_acls,
        "ignore_public_acls": b.ignore_public_acls,
        "block_public_policy": b.block_public_policy,
        "restrict_public_buckets": b.restrict_public_buckets,
    })
}

/// `GET /api/storage/buckets/{name}/public-access-block`: the flags in force (all off, and
/// `configured: false`, without one).
#[utoipa::path(get, path = "/api/storage/buckets/{name}/public-access-block", params(("name" = String, Path, description = "The bucket")), responses((status = 200, description = "The four flags and whether a block is configured")))]
async fn get_access_block(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let (_, rec) = authorised(&g, &caller, "GetPublicAccessBlock", &name, None).await?;
    let mut v = access_block_json(&rec.access_block());
    v["configured"] = json!(rec.public_access_block.is_some());
    Ok(axum::Json(v).into_response())
}

/// `PUT /api/storage/buckets/{name}/public-access-block`.
#[utoipa::path(put, path = "/api/storage/buckets/{name}/public-access-block", params(("name" = String, Path, description = "The bucket")), request_body = AccessBlockBody, responses((status = 200, description = "The flags")))]
async fn put_access_block(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let body: AccessBlockBody = json_body(req).await?;
    authorised(&g, &caller, "PutPublicAccessBlock", &name, None).await?;
    let block = PublicAccessBlock {
        block_public_acls: body.block_public_acls,
        ignore_public_acls: body.ignore_public_acls,
        block_public_policy: body.block_public_policy,
        restrict_public_buckets: body.restrict_public_buckets,
    };
    g.command(&BucketCommand::Configure {
        name,
        change: BucketChange::PublicAccessBlock(Some(block)),
    })
    .await
    .map_err(from_s3)?;
    let mut v = access_block_json(&block);
    v["configured"] = json!(true);
    Ok(axum::Json(v).into_response())
}

/// `DELETE /api/storage/buckets/{name}/public-access-block`.
#[utoipa::path(delete, path = "/api/storage/buckets/{name}/public-access-block", params(("name" = String, Path, description = "The bucket")), responses((status = 200, description = "Deleted")))]
async fn delete_access_block(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    authorised(&g, &caller, "DeletePublicAccessBlock", &name, None).await?;
    g.command(&BucketCommand::Configure {
        name,
        change: BucketChange::PublicAccessBlock(None),
    })
    .await
    .map_err(from_s3)?;
    Ok(axum::Json(json!({"status": "deleted"})).into_response())
}

fn lock_config_json(name: &str, b: &BucketRecord) -> Value {
    let default = b.object_lock.and_then(|c| c.default).map(|d| {
        let unit = if d.years { "years" } else { "days" };
        json!({"mode": d.mode.as_str(), unit: d.period})
    });
    json!({"bucket": name, "enabled": b.object_lock.is_some(), "default_retention": default})
}

/// `GET /api/storage/buckets/{name}/object-lock`: whether object lock is on, and the default
/// retention.
#[utoipa::path(get, path = "/api/storage/buckets/{name}/object-lock", params(("name" = String, Path, description = "The bucket")), responses((status = 200, description = "bucket, enabled, default_retention ({mode, days|years} or null)")))]
async fn get_object_lock(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let (_, rec) = authorised(&g, &caller, "GetObjectLockConfiguration", &name, None).await?;
    Ok(axum::Json(lock_config_json(&name, &rec)).into_response())
}

/// A bucket's default retention (`{}`: none).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LockConfigBody {
    /// `GOVERNANCE` or `COMPLIANCE`.
    mode: Option<String>,
    days: Option<u32>,
    years: Option<u32>,
}

/// `PUT /api/storage/buckets/{name}/object-lock`: turn object lock on (versioning must be
/// enabled; it cannot be turned off) and set or clear the default retention.
#[utoipa::path(put, path = "/api/storage/buckets/{name}/object-lock", params(("name" = String, Path, description = "The bucket")), request_body = LockConfigBody, responses((status = 200, description = "The configuration"), (status = 409, description = "Versioning is not enabled")))]
async fn put_object_lock(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let body: LockConfigBody = json_body(req).await?;
    let default = match (body.mode.as_deref(), body.days, body.years) {
        (None, None, None) => None,
        (Some(m), days, years) => {
            let mode = LockMode::parse(m)
                .ok_or_else(|| ApiError::bad("mode is GOVERNANCE or COMPLIANCE"))?;
            let (period, years) = match (days, years) {
                (Some(d), None) => (d, false),
                (None, Some(y)) => (y, true),
                _ => return Err(ApiError::bad("give either days or years")),
            };
            Some(DefaultRetention {
                mode,
                period,
                years,
            })
        }
        (None, _, _) => return Err(ApiError::bad("a default retention needs a mode")),
    };
    authorised(&g, &caller, "PutObjectLockConfiguration", &name, None).await?;
    g.command(&BucketCommand::Configure {
        name: name.clone(),
        change: BucketChange::ObjectLock(LockConfig { default }),
    })
    .await
    .map_err(from_s3)?;
    let rec = record(&g, &name)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such bucket"))?;
    Ok(axum::Json(lock_config_json(&name, &rec)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
struct VersionQuery {
    /// A version id (the newest version without one).
    version_id: Option<String>,
}

fn version_ref(v: Option<&str>) -> ApiResult<Option<VersionRef>> {
    v.map(|s| VersionRef::parse(s).ok_or_else(|| ApiError::bad("malformed version_id")))
        .transpose()
}

/// `GET /api/storage/buckets/{name}/retention/{key}`: a version's retention and legal hold.
#[utoipa::path(get, path = "/api/storage/buckets/{name}/retention/{key}", params(("name" = String, Path, description = "The bucket"), ("key" = String, Path, description = "The object key"), VersionQuery), responses((status = 200, description = "version_id, mode, retain_until, legal_hold"), (status = 404, description = "No such object or version")))]
async fn get_retention(
    State(g): State<Arc<Gateway>>,
    Path((name, key)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    authorised(&g, &caller, "GetObjectRetention", &name, Some(&key)).await?;
    let version = version_ref(q.version_id.as_deref())?;
    let BucketQueryResponse::ObjectLock(found) = g
        .query(&BucketQuery::ObjectLock {
            bucket: name.clone(),
            key: key.clone(),
            version,
        })
        .await
        .map_err(from_s3)?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let (id, lock) = found
        .flatten()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such object or version"))?;
    Ok(axum::Json(json!({
        "bucket": name,
        "key": key,
        "version_id": version_string(id),
        "mode": lock.retention.map(|r| r.mode.as_str()),
        "retain_until": lock.retention.map(|r| rfc3339(r.until_ms)),
        "legal_hold": lock.legal_hold,
    }))
    .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RetentionBody {
    /// `GOVERNANCE` or `COMPLIANCE`; with `retain_until` (both absent: remove the retention).
    mode: Option<String>,
    /// RFC 3339.
    retain_until: Option<String>,
    version_id: Option<String>,
    /// Shorten or remove a GOVERNANCE retention (takes `s3:BypassGovernanceRetention`).
    #[serde(default)]
    bypass_governance: bool,
}

/// `PUT /api/storage/buckets/{name}/retention/{key}`: set a version's retention (S3's rules:
/// COMPLIANCE only grows; GOVERNANCE shrinks with `bypass_governance`).
#[utoipa::path(put, path = "/api/storage/buckets/{name}/retention/{key}", params(("name" = String, Path, description = "The bucket"), ("key" = String, Path, description = "The object key")), request_body = RetentionBody, responses((status = 200, description = "Set"), (status = 403, description = "The lock in force refuses the change")))]
async fn put_retention(
    State(g): State<Arc<Gateway>>,
    Path((name, key)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let ip = client_ip(&req);
    let body: RetentionBody = json_body(req).await?;
    let retention = match (body.mode.as_deref(), body.retain_until.as_deref()) {
        (None, None) => None,
        (Some(m), Some(u)) => Some(Retention {
            mode: LockMode::parse(m)
                .ok_or_else(|| ApiError::bad("mode is GOVERNANCE or COMPLIANCE"))?,
            until_ms: crate::kernel::time::parse_time(u)
                .ok_or_else(|| ApiError::bad("retain_until is an RFC 3339 time"))?,
        }),
        _ => return Err(ApiError::bad("give mode and retain_until together")),
    };
    let version = version_ref(body.version_id.as_deref())?;
    let (p, _) = authorised(&g, &caller, "PutObjectRetention", &name, Some(&key)).await?;
    if body.bypass_governance {
        authorised(&g, &caller, "BypassGovernanceRetention", &name, Some(&key)).await?;
    }
    let who = writer(&caller, &p, ip);
    crate::objects::write(
        &g,
        &who,
        BucketCommand::SetObjectLock {
            bucket: name,
            key,
            version,
            change: LockChange::Retention(retention),
            bypass_governance: body.bypass_governance,
        },
    )
    .await
    .map_err(from_s3)?;
    Ok(axum::Json(json!({"status": "set"})).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LegalHoldBody {
    on: bool,
    version_id: Option<String>,
}

/// `PUT /api/storage/buckets/{name}/legal-hold/{key}` (`{"on": bool}`).
#[utoipa::path(put, path = "/api/storage/buckets/{name}/legal-hold/{key}", params(("name" = String, Path, description = "The bucket"), ("key" = String, Path, description = "The object key")), request_body = LegalHoldBody, responses((status = 200, description = "Set")))]
async fn put_legal_hold(
    State(g): State<Arc<Gateway>>,
    Path((name, key)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let ip = client_ip(&req);
    let body: LegalHoldBody = json_body(req).await?;
    let version = version_ref(body.version_id.as_deref())?;
    let (p, _) = authorised(&g, &caller, "PutObjectLegalHold", &name, Some(&key)).await?;
    let who = writer(&caller, &p, ip);
    crate::objects::write(
        &g,
        &who,
        BucketCommand::SetObjectLock {
            bucket: name,
            key,
            version,
            change: LockChange::LegalHold(body.on),
            bypass_governance: false,
        },
    )
    .await
    .map_err(from_s3)?;
    Ok(axum::Json(json!({"status": "set", "legal_hold": body.on})).into_response())
}

/// `GET /api/storage/health`: chunkservers, capacity and replication health.
#[utoipa::path(get, path = "/api/storage/health", responses((status = 200, description = "Cluster health: chunkservers, capacity, the replication backlog and repair progress (`repair`: replicas and bytes left, copies running, replicas and bytes per second over the last 10 s, estimated seconds left)")))]
async fn health(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.scoped("storage:read")?;
    Ok(axum::Json(cluster_health(&g).await?).into_response())
}

/// The routes, to merge into the `/api` router.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/storage/health", get(health))
        .route(
            "/storage/buckets/{name}/uploads",
            axum::routing::post(initiate),
        )
        .route(
            "/storage/buckets/{name}/uploads/{id}",
            axum::routing::delete(abort),
        )
        .route(
            "/storage/buckets/{name}/uploads/{id}/parts/{number}",
            put(put_part),
        )
        .route(
            "/storage/buckets/{name}/uploads/{id}/complete",
            axum::routing::post(complete),
        )
        .route(
            "/storage/buckets/{name}/lifecycle",
            get(lifecycle).post(add_rule),
        )
        .route(
            "/storage/buckets/{name}/lifecycle/{id}",
            axum::routing::delete(delete_rule),
        )
        .route("/storage/buckets", get(list).post(create))
        .route(
            "/storage/buckets/{name}",
            axum::routing::delete(delete_bucket),
        )
        .route("/storage/buckets/{name}/versioning", put(versioning))
        .route(
            "/storage/buckets/{name}/policy",
            get(get_policy).put(put_policy).delete(delete_policy),
        )
        .route(
            "/storage/buckets/{name}/object-lock",
            get(get_object_lock).put(put_object_lock),
        )
        .route(
            "/storage/buckets/{name}/retention/{*key}",
            get(get_retention).put(put_retention),
        )
        .route(
            "/storage/buckets/{name}/legal-hold/{*key}",
            put(put_legal_hold),
        )
        .route(
            "/storage/buckets/{name}/public-access-block",
            get(get_access_block)
                .put(put_access_block)
                .delete(delete_access_block),
        )
        .route("/storage/buckets/{name}/objects", get(list_objects))
        .route("/storage/buckets/{name}/versions", get(list_versions))
        .route(
            "/storage/buckets/{name}/objects/{*key}",
            put(upload).get(download).delete(delete_object),
        )
}

/// The OpenAPI paths of these routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list,
    create,
    delete_bucket,
    versioning,
    list_objects,
    list_versions,
    upload,
    download,
    delete_object,
    initiate,
    put_part,
    complete,
    abort,
    lifecycle,
    add_rule,
    delete_rule,
    get_policy,
    put_policy,
    delete_policy,
    get_access_block,
    put_access_block,
    delete_access_block,
    get_object_lock,
    put_object_lock,
    get_retention,
    put_retention,
    put_legal_hold,
    health
))]
pub(crate) struct StorageDoc;

/// Chunkservers, capacity and replication health, as `/storage/status` and
/// `/api/storage/health` report it.
pub(crate) async fn cluster_health(g: &Gateway) -> ApiResult<Value> {
    let (s, repair) = tokio::join!(g.data.status(), g.data.repair());
    let s =
        s.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("no status: {e}")))?;
    let repair = repair.ok();
    let live: Vec<_> = s.servers.iter().filter(|s| s.alive).collect();
    let capacity: u64 = live.iter().map(|s| s.info.capacity).sum();
    let free: u64 = live.iter().map(|s| s.info.free).sum();
    Ok(json!({
        "chunkservers": s.servers.len(),
        "live_servers": live.len(),
        "capacity_bytes": capacity,
        "used_bytes": capacity.saturating_sub(free),
        "free_bytes": free,
        "stored_bytes": live.iter().map(|s| s.bytes).sum::<u64>(),
        "chunks": s.chunks,
        "under_replicated_chunks": s.under_replicated,
        "lost_chunks": s.lost,
        "copies_in_flight": s.copies_in_flight,
        "repair": repair,
        "replication_default": s.replication_default,
        "healthy": !live.is_empty() && s.under_replicated == 0 && s.lost == 0,
    }))
}
