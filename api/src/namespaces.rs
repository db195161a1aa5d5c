//! Namespaces and files under `/storage`: the file-sharing face of the same buckets and
//! objects. A namespace *is* a bucket (so its names follow S3's bucket rules) and a file is an
//! object: what is uploaded here is visible over S3, and the other way round.
//!
//! Visibility: 0 private (the tenant's members only), 1 unlisted (anyone reads a file by its
//! URL; no one else lists it or its files), 2 public (listed, and readable by anyone). It is
//! kept in the bucket record (`public_read` and `unlisted`) and judged by the same
//! [`crate::auth::judge`] as S3, so the two faces can never disagree. An anonymous caller, or a
//! user of another tenant, who may not see a namespace gets the same 404 whether it exists or
//! not.
//!
//! Direct URLs (`/storage/{namespace}/{path}` inline, `/storage/download/{namespace}/{path}` as
//! an attachment) and share links (`/storage/share/{token}`) are served by [`serve`]: ranges,
//! ETag and Last-Modified validators, HEAD, streamed from the data plane without buffering.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use cairn_master::buckets::{
    BucketChange, BucketCommand, BucketQuery, BucketQueryResponse, BucketRecord, Conditions,
    ListRequest, ObjectData, ObjectMeta, SYSTEM_BUCKET, Usage, Version, check_bucket_name,
};
use cairn_master::dataplane::wall_ms;
use cairn_master::tenancy::{bucket_tenant, tenant_hex};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::auth::{Principal, judge};
use crate::kernel::context::current;
use crate::kernel::{
    ApiError, ApiResult, Caller, authenticate, authenticate_optional, json_body, rfc3339,
};
use crate::kernel::{client_ip, from_s3};
use crate::storage::{authorised, empty_bucket, latest, page, principal, record, writer};

/// The form field named `file` (fields before it are skipped), or the caller's 400. A macro,
/// not a function: the field borrows the form, and a loop that returns such a borrow on one
/// branch is refused by the borrow checker.
macro_rules! file_field {
    ($form:ident) => {
        loop {
            match $form.next_field().await.map_err(|e| {
                $crate::kernel::ApiError::bad(format!("malformed multipart body: {e}"))
            })? {
                Some(f) if f.name() == Some("file") => break f,
                Some(_) => {}
                None => {
                    return Err($crate::kernel::ApiError::bad(
                        "the form has no field named file",
                    ));
                }
            }
        }
    };
}
pub(crate) use file_field;

/// Names the `/storage` routes take: no namespace can have them.
pub const ROUTE_NAMES: &[&str] = &[
    "namespaces",
    "files",
    "upload",
    "uploads",
    "download",
    "delete",
    "status",
    "share",
];

/// Longest file path (an S3 key's limit).
const PATH_MAX: usize = 1024;

/// The routes, nested at `/storage`.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/namespaces", get(list_namespaces).post(create_namespace))
        .route(
            "/namespaces/{name}",
            put(set_visibility).delete(delete_namespace),
        )
        .route("/files", get(list_files))
        .route(
            "/upload",
            post(upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/uploads", get(uploads_in_flight))
        .route("/download", get(download_by_query))
        .route("/delete", delete(delete_file))
        .route("/status", get(status))
        .route("/download/{namespace}/{*path}", get(direct_attachment))
        .route("/{namespace}/{*path}", get(direct_inline))
}

// ---------------------------------------------------------------------------------------------
// Names, paths and visibility (pure).

/// A namespace name: letters, digits, `-`, `_` and `.`, and since a namespace is an S3 bucket,
/// S3's bucket rules on top (lowercase, 3-63 characters, no `_`).
pub fn check_namespace_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err("a namespace name holds letters, digits, '-', '_' and '.' only".into());
    }
    if check_bucket_name(name).is_err() {
        return Err(
            "a namespace is an S3 bucket, so its name must also be a valid bucket name: 3-63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (no '_', no uppercase)"
                .into(),
        );
    }
    if ROUTE_NAMES.contains(&name)
        || crate::kernel::names::RESERVED.contains(&name)
        || name == SYSTEM_BUCKET
    {
        return Err(format!("the name {name} is reserved"));
    }
    Ok(())
}

/// A file path: a relative `/`-separated path of at most 1,024 bytes, with no empty, `.` or
/// `..` segment, no backslash and no control character (NUL included).
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > PATH_MAX {
        return Err(format!("a file path is 1 to {PATH_MAX} bytes"));
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err("a file path may not hold control characters (NUL included) or '\\'".into());
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(
            "a file path may not start or end with '/', hold '//', or have '.' or '..' segments"
                .into(),
        );
    }
    Ok(())
}

/// Percent-encoded separators and NUL in the raw request path are refused outright: an
/// encoded slash must not smuggle a path segment past the router.
fn check_raw_path(uri: &axum::http::Uri) -> ApiResult<()> {
    let raw = uri.path().to_ascii_lowercase();
    if ["%2f", "%5c", "%00"].iter().any(|e| raw.contains(e)) {
        return Err(ApiError::bad(
            "encoded '/', '\\' or NUL in a path is not allowed",
        ));
    }
    Ok(())
}

/// 0 private, 1 unlisted, 2 public.
pub fn visibility(b: &BucketRecord) -> u8 {
    match (b.public_read, b.unlisted) {
        (false, _) => 0,
        (true, true) => 1,
        (true, false) => 2,
    }
}

fn visibility_change(v: u8) -> ApiResult<BucketChange> {
    match v {
        0 => Ok(BucketChange::Visibility {
            public_read: false,
            unlisted: false,
        }),
        1 => Ok(BucketChange::Visibility {
            public_read: true,
            unlisted: true,
        }),
        2 => Ok(BucketChange::Visibility {
            public_read: true,
            unlisted: false,
        }),
        _ => Err(ApiError::bad(
            "visibility is 0 (private), 1 (unlisted) or 2 (public)",
        )),
    }
}

/// One byte range of a `Range` header against an object of `size` bytes: `Ok(None)` to serve
/// the whole object (no header, another unit, several ranges), `Err(())` when unsatisfiable,
/// else the first and last byte.
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().map_err(|_| ());
    let (first, last) = if a.is_empty() {
        let n = parse(b)?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let first = parse(a)?;
        let last = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            let l = parse(b)?;
            if l < first {
                return Err(());
            }
            l.min(size.saturating_sub(1))
        };
        (first, last)
    };
    if first >= size || first > last {
        return Err(());
    }
    Ok(Some((first, last)))
}

/// Whether an `If-None-Match` / `If-Match` list names `etag` (or is `*`).
fn etag_listed(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/").trim_matches('"') == etag.trim_matches('"'))
}

/// `Content-Disposition` for `path`'s last segment: a plain ASCII `filename` and the exact one
/// as RFC 5987 `filename*`.
fn disposition(kind: &str, path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{kind}; filename=\"{plain}\"; filename*=UTF-8''{}",
        urlencoding::encode(name)
    )
}

// ---------------------------------------------------------------------------------------------
// Who is asking.

/// The caller as a principal (with the key-scope check for `op`), or `None` when anonymous.
async fn viewer(g: &Gateway, caller: Option<&Caller>, op: &str) -> ApiResult<Option<Principal>> {
    match caller {
        Some(c) => Ok(Some(principal(g, c, op).await?)),
        None => Ok(None),
    }
}

/// A refusal to read, as this face answers it: what the caller may not see is "not found".
fn hidden(e: s3s::S3Error, anonymous: bool) -> ApiError {
    match e.code().as_str() {
        "NoSuchBucket" => ApiError::new(StatusCode::NOT_FOUND, "no such namespace"),
        "AccessDenied" if anonymous => ApiError::new(StatusCode::NOT_FOUND, "no such namespace"),
        _ => from_s3(e),
    }
}

/// Authorise a read `op` on namespace `name` (and `path` in it) for an optional principal.
async fn readable(
    g: &Gateway,
    p: Option<&Principal>,
    op: &str,
    name: &str,
    path: Option<&str>,
) -> ApiResult<BucketRecord> {
    let rec = record(g, name).await?;
    judge(p, op, Some((name, rec.as_ref())), path, &current())
        .map_err(|e| hidden(e, p.is_none()))?;
    rec.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such namespace"))
}

fn namespace_json(name: &str, b: &BucketRecord, usage: Option<Usage>) -> Value {
    let v = visibility(b);
    json!({
        "name": name,
        "count": usage.map_or(0, |u| u.objects),
        "size_bytes": usage.map_or(0, |u| u.bytes),
        "hidden": v != 2,
        "visibility": v,
        "owner_id": tenant_hex(bucket_tenant(&b.owner)),
        "created_at": rfc3339(b.created_ms),
    })
}

async fn usage(g: &Gateway, name: &str) -> ApiResult<Option<Usage>> {
    match g
        .query(&BucketQuery::Usage {
            bucket: name.to_owned(),
        })
        .await
        .map_err(from_s3)?
    {
        BucketQueryResponse::Usage(u) => Ok(u),
        _ => Err(ApiError::internal("unexpected answer")),
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces.

/// `GET /storage/namespaces`: the namespaces of the tenant the caller acts in, and every
/// public one (anonymous callers: the public ones).
async fn list_namespaces(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate_optional(&g, &headers).await?;
    let p = viewer(&g, caller.as_ref(), "ListBuckets").await?;
    let BucketQueryResponse::Buckets(all) =
        g.query(&BucketQuery::Buckets).await.map_err(from_s3)?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let mut items = Vec::new();
    for (name, b) in &all {
        let own = p
            .as_ref()
            .is_some_and(|p| bucket_tenant(&b.owner) == p.tenant);
        if name == SYSTEM_BUCKET || !(own || visibility(b) == 2) {
            continue;
        }
        items.push(namespace_json(name, b, usage(&g, name).await?));
    }
    Ok(axum::Json(json!({"namespaces": items})).into_response())
}

#[derive(Deserialize)]
struct NewNamespace {
    name: String,
    #[serde(default)]
    visibility: u8,
}

/// `POST /storage/namespaces` (`{"name", "visibility"}`).
async fn create_namespace(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let body: NewNamespace = json_body(req).await?;
    check_namespace_name(&body.name).map_err(ApiError::bad)?;
    let change = visibility_change(body.visibility)?;
    let p = principal(&g, &caller, "CreateBucket").await?;
    judge(
        Some(&p),
        "CreateBucket",
        Some((&body.name, None)),
        None,
        &current(),
    )
    .map_err(from_s3)?;
    // Made private, then opened: never briefly more visible than asked.
    g.command(&BucketCommand::CreateBucket {
        name: body.name.clone(),
        owner: tenant_hex(p.tenant),
        public_read: false,
    })
    .await
    .map_err(from_s3)?;
    if body.visibility != 0 {
        g.command(&BucketCommand::Configure {
            name: body.name.clone(),
            change,
        })
        .await
        .map_err(from_s3)?;
    }
    let rec = record(&g, &body.name)
        .await?
        .ok_or_else(|| ApiError::internal("the new namespace is missing"))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(namespace_json(&body.name, &rec, None)),
    )
        .into_response())
}

#[derive(Deserialize)]
struct VisibilityBody {
    visibility: u8,
}

/// `PUT /storage/namespaces/{name}` (`{"visibility"}`).
async fn set_visibility(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let body: VisibilityBody = json_body(req).await?;
    let change = visibility_change(body.visibility)?;
    authorised(&g, &caller, "PutBucketAcl", &name, None)
        .await
        .map_err(not_found_as_namespace)?;
    g.command(&BucketCommand::Configure {
        name: name.clone(),
        change,
    })
    .await
    .map_err(from_s3)?;
    let rec = record(&g, &name)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such namespace"))?;
    let u = usage(&g, &name).await?;
    Ok(axum::Json(namespace_json(&name, &rec, u)).into_response())
}

fn not_found_as_namespace(e: ApiError) -> ApiError {
    if e.status == StatusCode::NOT_FOUND {
        ApiError::new(StatusCode::NOT_FOUND, "no such namespace")
    } else {
        e
    }
}

/// `DELETE /storage/namespaces/{name}`: the tenant's owners and admins only; its files go too.
async fn delete_namespace(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let (p, _) = authorised(&g, &caller, "DeleteBucket", &name, None)
        .await
        .map_err(not_found_as_namespace)?;
    let who = writer(&caller, &p, client_ip(&req));
    let removed = empty_bucket(&g, &p, &who, &name).await?;
    g.command(&BucketCommand::DeleteBucket { name: name.clone() })
        .await
        .map_err(from_s3)?;
    Ok(axum::Json(json!({"status": "deleted", "files_removed": removed})).into_response())
}

// ---------------------------------------------------------------------------------------------
// Files.

fn file_json(namespace: &str, path: &str, v: &Version, created_ms: u64) -> Value {
    let (size, content_type) = v
        .data()
        .map_or((0, None), |d| (d.size, d.meta.content_type.clone()));
    json!({
        "name": path.rsplit('/').next().unwrap_or(path),
        "path": path,
        "namespace": namespace,
        "size": size,
        "content_type": content_type,
        "etag": v.data().map(|d| d.etag.clone()),
        "created_at": rfc3339(created_ms),
        "modified_at": rfc3339(v.modified_ms),
    })
}

#[derive(Deserialize)]
struct FilesParams {
    namespace: String,
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<u32>,
}

fn query<T: serde::de::DeserializeOwned>(req_query: Option<&str>) -> ApiResult<T> {
    serde_urlencoded::from_str(req_query.unwrap_or(""))
        .map_err(|e| ApiError::bad(format!("invalid query: {e}")))
}

/// `GET /storage/files?namespace=N` (`prefix`, `after`, `limit` up to 1,000).
async fn list_files(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let q: FilesParams = query(req.uri().query())?;
    let caller = authenticate_optional(&g, req.headers()).await?;
    let p = viewer(&g, caller.as_ref(), "ListObjectsV2").await?;
    readable(&g, p.as_ref(), "ListObjectsV2", &q.namespace, None).await?;
    let lr = ListRequest {
        bucket: q.namespace.clone(),
        prefix: q.prefix,
        after: q.after,
        limit: q.limit.unwrap_or(1000).clamp(1, 1000),
        ..ListRequest::default()
    };
    let page = page(&g, &BucketQuery::List(lr)).await?;
    let files: Vec<Value> = page
        .objects
        .iter()
        .map(|o| file_json(&q.namespace, &o.key, &o.version, o.version.modified_ms))
        .collect();
    Ok(axum::Json(json!({
        "files": files,
        "truncated": page.truncated,
        "next": if page.truncated { page.next } else { None },
    }))
    .into_response())
}

/// An upload in flight, for `GET /storage/uploads`.
#[derive(Debug)]
pub struct UploadProgress {
    user: u128,
    namespace: String,
    path: String,
    /// What `X-File-Size` announced.
    total: Option<u64>,
    received: AtomicU64,
    started_ms: u64,
}

/// Uploads in flight on this gateway.
#[derive(Debug, Default)]
pub struct Uploads(parking_lot::Mutex<HashMap<u64, Arc<UploadProgress>>>);

/// Takes an upload off the list when it ends, however it ends.
struct Tracked<'a> {
    uploads: &'a Uploads,
    id: u64,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.uploads.0.lock().remove(&self.id);
    }
}

impl Uploads {
    fn track(&self, p: Arc<UploadProgress>) -> Tracked<'_> {
        let mut m = self.0.lock();
        let mut id = rand::random::<u64>();
        while m.contains_key(&id) {
            id = rand::random::<u64>();
        }
        m.insert(id, p);
        Tracked { uploads: self, id }
    }
}

#[derive(Deserialize)]
struct UploadParams {
    namespace: String,
    #[serde(default)]
    overwrite: bool,
    /// Where to put the file (folders allowed); the form's file name when absent.
    path: Option<String>,
}

/// `POST /storage/upload?namespace=N&overwrite=BOOL[&path=P]`: the multipart form field `file`
/// becomes the file, streamed to the data plane. Without `overwrite`, an existing file is a
/// 409; with it, the new file replaces the old one atomically. `X-File-Size` (the file's size)
/// lets `GET /storage/uploads` report progress as a percentage.
async fn upload(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let q: UploadParams = query(req.uri().query())?;
    let caller = authenticate(&g, req.headers()).await?;
    let total = match req.headers().get("x-file-size") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad("X-File-Size must be a number of bytes"))?,
        ),
    };
    let ip = client_ip(&req);
    let mut form = axum::extract::Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad(format!("expected a multipart/form-data body: {e}")))?;
    let mut field = file_field!(form);
    let path = match q
        .path
        .clone()
        .or_else(|| field.file_name().map(str::to_owned))
    {
        Some(p) => p,
        None => {
            return Err(ApiError::bad(
                "name the file: a file name in the form, or ?path=",
            ));
        }
    };
    check_path(&path).map_err(ApiError::bad)?;
    let (p, _) = authorised(&g, &caller, "PutObject", &q.namespace, Some(&path))
        .await
        .map_err(not_found_as_namespace)?;
    let content_type = field
        .content_type()
        .filter(|c| *c != "application/octet-stream")
        .map(str::to_owned)
        .or_else(|| mime_guess::from_path(&path).first_raw().map(str::to_owned));
    let progress = Arc::new(UploadProgress {
        user: caller.user,
        namespace: q.namespace.clone(),
        path: path.clone(),
        total,
        received: AtomicU64::new(0),
        started_ms: wall_ms(),
    });
    let _tracked = g.uploads.track(progress.clone());

    // The field borrows the form, so it cannot move to a task: one future reads it into a
    // small channel while the other stores what comes out (bounded memory either way).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let pump = async {
        let mut last_step = 0u64;
        pump_field(&mut field, tx, |len| {
            let got = progress.received.fetch_add(len, Ordering::Relaxed) + len;
            if let Some(t) = total.filter(|t| *t > 0) {
                let step = (got.min(t) * 10 / t).min(10);
                if step > last_step {
                    last_step = step;
                    tracing::debug!(namespace = %q.namespace, path = %path, percent = step * 10, "upload progress");
                }
            }
        })
        .await;
    };
    let body = s3s::dto::StreamingBlob::wrap(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let no_headers = HeaderMap::new();
    let (tenant, sse) = crate::objects::default_sse(&g, &q.namespace)
        .await
        .map_err(from_s3)?;
    let store = crate::objects::store_object(
        &g,
        Some(body),
        &no_headers,
        None,
        (q.namespace.as_str(), path.as_str()),
        tenant,
        sse.as_ref(),
    );
    let ((), stored) = tokio::join!(pump, store);
    let stored = stored.map_err(from_s3)?;
    drop(form);
    let conditions = Conditions {
        if_none_match_any: !q.overwrite,
        ..Conditions::default()
    };
    let who = writer(&caller, &p, ip);
    let written = crate::objects::write(
        &g,
        &who,
        BucketCommand::PutObject {
            bucket: q.namespace.clone(),
            key: path.clone(),
            data: ObjectData {
                size: stored.size,
                etag: stored.etag.clone(),
                parts: Vec::new(),
                content: stored.content,
                meta: ObjectMeta {
                    content_type,
                    ..ObjectMeta::default()
                },
                tags: Vec::new(),
            },
            conditions,
        },
    )
    .await;
    match written {
        Ok(_) => {}
        Err(e) if e.code().as_str() == "PreconditionFailed" => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "{path} already exists in {}; upload with overwrite=true to replace it",
                    q.namespace
                ),
            ));
        }
        Err(e) => return Err(from_s3(e)),
    }
    let v = latest(&g, &q.namespace, &path).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(file_json(&q.namespace, &path, &v, v.modified_ms)),
    )
        .into_response())
}

/// Forward a form field's pieces into `tx` (telling `seen` each piece's length) until the
/// field ends, fails (the error goes to the reader) or the reader stops. The field borrows the
/// form, so it cannot move to a task: this runs beside the reader in the same task.
pub(crate) async fn pump_field(
    field: &mut axum::extract::multipart::Field<'_>,
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    mut seen: impl FnMut(u64),
) {
    loop {
        match field.chunk().await {
            Ok(Some(piece)) => {
                seen(piece.len() as u64);
                if tx.send(Ok(piece)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return;
            }
        }
    }
}

/// `GET /storage/uploads`: the caller's uploads in flight on this gateway.
async fn uploads_in_flight(
    State(g): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let items: Vec<Value> = g
        .uploads
        .0
        .lock()
        .values()
        .filter(|u| u.user == caller.user)
        .map(|u| {
            let received = u.received.load(Ordering::Relaxed);
            json!({
                "namespace": u.namespace,
                "path": u.path,
                "received_bytes": received,
                "total_bytes": u.total,
                "percent": u.total.filter(|t| *t > 0).map(|t| received.min(t) * 100 / t),
                "started_at": rfc3339(u.started_ms),
            })
        })
        .collect();
    Ok(axum::Json(json!({"uploads": items})).into_response())
}

#[derive(Deserialize)]
struct NameParams {
    name: String,
    namespace: String,
}

/// `GET /storage/download?name=F&namespace=N`: the file as an attachment.
async fn download_by_query(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let q: NameParams = query(req.uri().query())?;
    check_path(&q.name).map_err(ApiError::bad)?;
    direct(&g, req.method(), req.headers(), &q.namespace, &q.name, true).await
}

/// `DELETE /storage/delete?name=F&namespace=N`.
async fn delete_file(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let q: NameParams = query(req.uri().query())?;
    check_path(&q.name).map_err(ApiError::bad)?;
    let caller = authenticate(&g, req.headers()).await?;
    let (p, _) = authorised(&g, &caller, "DeleteObject", &q.namespace, Some(&q.name))
        .await
        .map_err(not_found_as_namespace)?;
    latest(&g, &q.namespace, &q.name)
        .await
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such file"))?;
    let who = writer(&caller, &p, client_ip(&req));
    crate::objects::write(
        &g,
        &who,
        BucketCommand::DeleteObject {
            bucket: q.namespace,
            key: q.name,
            version: None,
        },
    )
    .await
    .map_err(from_s3)?;
    Ok(axum::Json(json!({"status": "deleted"})).into_response())
}

/// `GET /storage/status`: the data plane at a glance (signed-in callers).
async fn status(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    authenticate(&g, &headers).await?;
    Ok(axum::Json(crate::storage::cluster_health(&g).await?).into_response())
}

// ---------------------------------------------------------------------------------------------
// Direct URLs.

async fn direct_inline(
    State(g): State<Arc<Gateway>>,
    Path((namespace, path)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    check_raw_path(req.uri())?;
    check_path(&path).map_err(ApiError::bad)?;
    direct(&g, req.method(), req.headers(), &namespace, &path, false).await
}

async fn direct_attachment(
    State(g): State<Arc<Gateway>>,
    Path((namespace, path)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    check_raw_path(req.uri())?;
    check_path(&path).map_err(ApiError::bad)?;
    direct(&g, req.method(), req.headers(), &namespace, &path, true).await
}

/// A file by namespace and path, for whoever may read it.
async fn direct(
    g: &Arc<Gateway>,
    method: &Method,
    headers: &HeaderMap,
    namespace: &str,
    path: &str,
    attachment: bool,
) -> ApiResult<Response> {
    let caller = authenticate_optional(g, headers).await?;
    let p = viewer(g, caller.as_ref(), "GetObject").await?;
    let found = match g
        .query(&BucketQuery::ObjectWithBucket {
            bucket: namespace.to_owned(),
            key: path.to_owned(),
            version: None,
        })
        .await
        .map_err(from_s3)?
    {
        BucketQueryResponse::ObjectWithBucket(f) => f,
        _ => return Err(ApiError::internal("unexpected answer")),
    };
    let rec = found.as_ref().map(|(r, _)| r);
    judge(
        p.as_ref(),
        "GetObject",
        Some((namespace, rec)),
        Some(path),
        &current(),
    )
    .map_err(|e| hidden(e, p.is_none()))?;
    let version = found.and_then(|(_, v)| v);
    serve(g, method, headers, path, version, attachment).await
}

/// Answer a read of one object version: 404 when there is none (or it is a delete marker),
/// 304/412 from the validators, 206/416 for a `Range`, else the whole object, streamed.
pub(crate) async fn serve(
    g: &Arc<Gateway>,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    version: Option<Version>,
    attachment: bool,
) -> ApiResult<Response> {
    let Some(v) = version else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such file"));
    };
    let Some(d) = v.data() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such file"));
    };
    let etag = format!("\"{}\"", d.etag);
    let modified = std::time::UNIX_EPOCH + std::time::Duration::from_secs(v.modified_ms / 1000);
    let last_modified = httpdate::fmt_http_date(modified);
    let h = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let since = |name: header::HeaderName| h(name).and_then(|s| httpdate::parse_http_date(s).ok());

    let validators = |status: StatusCode| {
        let mut r = Response::new(axum::body::Body::empty());
        *r.status_mut() = status;
        if let Ok(e) = HeaderValue::from_str(&etag) {
            r.headers_mut().insert(header::ETAG, e);
        }
        if let Ok(l) = HeaderValue::from_str(&last_modified) {
            r.headers_mut().insert(header::LAST_MODIFIED, l);
        }
        r
    };
    if let Some(m) = h(header::IF_MATCH) {
        if !etag_listed(m, &d.etag) {
            return Ok(validators(StatusCode::PRECONDITION_FAILED));
        }
    } else if since(header::IF_UNMODIFIED_SINCE).is_some_and(|t| modified > t) {
        return Ok(validators(StatusCode::PRECONDITION_FAILED));
    }
    if let Some(m) = h(header::IF_NONE_MATCH) {
        if etag_listed(m, &d.etag) {
            return Ok(validators(StatusCode::NOT_MODIFIED));
        }
    } else if since(header::IF_MODIFIED_SINCE).is_some_and(|t| modified <= t) {
        return Ok(validators(StatusCode::NOT_MODIFIED));
    }

    // `If-Range` with another validator than the current one: the whole object.
    let range_header = match h(header::IF_RANGE) {
        Some(ir) if ir.trim_matches('"') != d.etag && ir != last_modified => None,
        _ => h(header::RANGE),
    };
    let size = d.size;
    let (status, first, len) = match parse_range(range_header, size) {
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Err(()) => {
            let mut r = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the range is not satisfiable for a file of {size} bytes"),
            )
            .into_response();
            if let Ok(c) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, c);
            }
            return Ok(r);
        }
    };
    let body = if method == Method::HEAD || len == 0 {
        axum::body::Body::empty()
    } else {
        axum::body::Body::from_stream(
            crate::objects::read_body(g, d, None, first, len)
                .await
                .map_err(from_s3)?,
        )
    };
    let mut r = validators(status);
    *r.body_mut() = body;
    let out = r.headers_mut();
    let content_type = mime_guess::from_path(path)
        .first_raw()
        .map(str::to_owned)
        .or_else(|| d.meta.content_type.clone())
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            out.insert(name, v);
        }
    };
    set(header::CONTENT_TYPE, &content_type);
    set(header::CONTENT_LENGTH, &len.to_string());
    set(header::ACCEPT_RANGES, "bytes");
    set(
        header::CONTENT_DISPOSITION,
        &disposition(if attachment { "attachment" } else { "inline" }, path),
    );
    // Files are the users' own bytes: never sniffed, and an HTML file shown inline runs no
    // script in the gateway's origin.
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::CONTENT_SECURITY_POLICY, "sandbox");
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            header::CONTENT_RANGE,
            &format!("bytes {first}-{}/{size}", first + len - 1),
        );
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-0"), 10), Ok(Some((0, 0))));
        assert_eq!(parse_range(Some("bytes=2-"), 10), Ok(Some((2, 9))));
        assert_eq!(parse_range(Some("bytes=2-100"), 10), Ok(Some((2, 9))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=5-4"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=-0"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-"), 0), Err(()));
    }

    #[test]
    fn paths_and_names() {
        for ok in ["a", "a/b.txt", "dir/sub/file name.tar.gz", "é/ü"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", "..", "../a", "a/../b", "./a", "a/.", "a\0b", "a\\b", "a\nb",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_path(&"x".repeat(1025)).is_err());
        assert!(check_namespace_name("photos-2026.v1").is_ok());
        for bad in [
            "Photos",
            "my_files",
            "a",
            "a/b",
            "..x",
            "files",
            "share",
            "api",
            "cairn-images",
            "x y",
        ] {
            assert!(check_namespace_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validators_and_disposition() {
        assert!(etag_listed("\"abc\"", "abc"));
        assert!(etag_listed("W/\"abc\", \"def\"", "def"));
        assert!(etag_listed("*", "abc"));
        assert!(!etag_listed("\"abd\"", "abc"));
        assert_eq!(
            disposition("attachment", "dir/ré\"sumé.pdf"),
            "attachment; filename=\"r__sum_.pdf\"; filename*=UTF-8''r%C3%A9%22sum%C3%A9.pdf"
        );
    }
}
