//! Share links: signed, expiring, revocable links to one file, that work without signing in.
//!
//! A link is `/storage/share/{id}.{expires}.{signature}`: the link's id (from the log), its
//! expiry (ms since the epoch, hex) and an HMAC-SHA256 of both under a key derived from the
//! cluster secrets key, so every gateway checks it alike and a changed byte is refused before
//! anything is looked up. The record on the log (`cairn_master::shares`) names the file and
//! makes the link revocable; the per-tenant maximum of unexpired links is checked by the same
//! command that records one.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use cairn_master::buckets::{BucketCommand, BucketQuery, BucketQueryResponse, BucketResponse};
use cairn_master::dataplane::wall_ms;
use cairn_master::policy::Role;
use cairn_master::shares::ShareRecord;
use cairn_master::tenancy::bucket_tenant;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::kernel::from_s3;
use crate::kernel::{ApiError, ApiResult, authenticate, hex_id, json_body, rfc3339};
use crate::namespaces::{check_path, serve};
use crate::storage::{authorised, principal};

const PURPOSE: &str = "cairn share link v1";
/// Link lifetime when the request names none: a day.
const DEFAULT_TTL_S: u64 = 24 * 3600;

/// The signature of a link (16 bytes of the HMAC, as hex).
fn signature(g: &Gateway, id: u128, expires_ms: u64) -> String {
    let mut data = [0u8; 24];
    data[..16].copy_from_slice(&id.to_be_bytes());
    data[16..].copy_from_slice(&expires_ms.to_be_bytes());
    let mac = g.secrets.mac(PURPOSE, &data);
    cairn_master::buckets::hex(&mac[..16])
}

fn token(g: &Gateway, id: u128, expires_ms: u64) -> String {
    format!(
        "{}.{expires_ms:x}.{}",
        hex_id(id),
        signature(g, id, expires_ms)
    )
}

/// A token's id, expiry and signature, if it is well formed.
pub fn parse_token(token: &str) -> Option<(u128, u64, &str)> {
    let mut parts = token.split('.');
    let (id, exp, sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || id.len() != 32 || sig.len() != 32 || exp.len() > 16 {
        return None;
    }
    Some((
        u128::from_str_radix(id, 16).ok()?,
        u64::from_str_radix(exp, 16).ok()?,
        sig,
    ))
}

/// A token's id and expiry, if it is well formed and signed by this cluster.
fn verify(g: &Gateway, token: &str) -> Option<(u128, u64)> {
    let (id, exp, sig) = parse_token(token)?;
    let want = signature(g, id, exp);
    // Constant time: the comparison tells nothing about how much of a guess was right.
    let diff = want
        .bytes()
        .zip(sig.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    (diff == 0).then_some((id, exp))
}

/// The absolute base URL the caller reached this gateway by.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

fn share_json(g: &Gateway, headers: &HeaderMap, id: u128, r: &ShareRecord) -> Value {
    json!({
        "id": hex_id(id),
        "url": format!("{}/storage/share/{}", base_url(headers), token(g, id, r.expires_ms)),
        "namespace": r.bucket,
        "path": r.key,
        "created_by": hex_id(r.created_by),
        "created_at": rfc3339(r.created_ms),
        "expires_at": rfc3339(r.expires_ms),
        "expired": r.expires_ms <= wall_ms(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewShare {
    namespace: String,
    path: String,
    /// Seconds until the link stops working (a day when absent).
    expires_in: Option<u64>,
}

/// `POST /api/shares`: a link to a file the caller may read, in the tenant they act in.
#[utoipa::path(post, path = "/api/shares", request_body = NewShare, responses((status = 201, description = "The link: id, url, expires_at"), (status = 404, description = "No such file"), (status = 409, description = "The tenant's limit of active links is reached")))]
async fn create(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let headers = req.headers().clone();
    let caller = authenticate(&g, &headers).await?;
    let body: NewShare = json_body(req).await?;
    check_path(&body.path).map_err(ApiError::bad)?;
    let ttl = body.expires_in.unwrap_or(DEFAULT_TTL_S);
    if ttl == 0 || ttl > g.options.share_ttl_max_s {
        return Err(ApiError::bad(format!(
            "expires_in is 1 to {} seconds",
            g.options.share_ttl_max_s
        )));
    }
    caller.scoped("storage:write")?;
    let (p, _) = authorised(&g, &caller, "GetObject", &body.namespace, Some(&body.path)).await?;
    let expires_ms = wall_ms().saturating_add(ttl * 1000);
    let r = g
        .command(&BucketCommand::CreateShare {
            tenant: p.tenant,
            bucket: body.namespace.clone(),
            key: body.path.clone(),
            created_by: caller.user,
            expires_ms,
            max_active: g.options.share_links_max,
        })
        .await;
    let id = match r {
        Ok(BucketResponse::Share { id }) => id,
        Ok(_) => return Err(ApiError::internal("unexpected answer")),
        Err(e) if e.code().as_str() == "NoSuchKey" => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "no such file"));
        }
        Err(e) if e.code().as_str() == "TooManyShareLinks" => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                e.message().unwrap_or("too many links"),
            ));
        }
        Err(e) => return Err(from_s3(e)),
    };
    let record = ShareRecord {
        tenant: p.tenant,
        bucket: body.namespace,
        key: body.path,
        created_by: caller.user,
        created_ms: wall_ms(),
        expires_ms,
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(share_json(&g, &headers, id, &record)),
    )
        .into_response())
}

/// `GET /api/shares`: the links of the tenant the caller acts in.
#[utoipa::path(get, path = "/api/shares", responses((status = 200, description = "The tenant's links")))]
async fn list(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let p = principal(&g, &caller, "GetObject").await?;
    let BucketQueryResponse::Shares(all) = g
        .query(&BucketQuery::Shares { tenant: p.tenant })
        .await
        .map_err(from_s3)?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let items: Vec<Value> = all
        .iter()
        .map(|(id, r)| share_json(&g, &headers, *id, r))
        .collect();
    Ok(axum::Json(json!({"shares": items})).into_response())
}

/// `DELETE /api/shares/{id}`: revoke a link (its maker, or the tenant's owners and admins).
#[utoipa::path(delete, path = "/api/shares/{id}", params(("id" = String, Path, description = "The link's id")), responses((status = 200, description = "Revoked"), (status = 404, description = "No such link")))]
async fn revoke(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.scoped("storage:write")?;
    let p = principal(&g, &caller, "PutObject").await?;
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "no such share link");
    let id = u128::from_str_radix(&id, 16).map_err(|_| missing())?;
    let BucketQueryResponse::Share(found) =
        g.query(&BucketQuery::Share { id }).await.map_err(from_s3)?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let r = found.filter(|r| r.tenant == p.tenant).ok_or_else(missing)?;
    let manager = matches!(p.role, Some(Role::Owner | Role::Admin));
    if r.created_by != caller.user && !manager {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only the link's maker or the tenant's owners and admins revoke it",
        ));
    }
    g.command(&BucketCommand::DeleteShare {
        tenant: p.tenant,
        id,
    })
    .await
    .map_err(|e| {
        if e.code().as_str() == "NoSuchShareLink" {
            missing()
        } else {
            from_s3(e)
        }
    })?;
    Ok(axum::Json(json!({"status": "revoked"})).into_response())
}

#[derive(Deserialize)]
struct OpenParams {
    #[serde(default)]
    download: bool,
}

/// `GET /storage/share/{token}`: the shared file, for anyone holding a valid link
/// (`?download=true` for an attachment). Ranges and validators work as on direct URLs.
pub(crate) async fn open(
    State(g): State<Arc<Gateway>>,
    Path(token): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let params: OpenParams = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::bad(format!("invalid query: {e}")))?;
    let (id, expires_ms) = verify(&g, &token).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "this share link is not valid (malformed or altered)",
        )
    })?;
    if expires_ms <= wall_ms() {
        return Err(ApiError::new(
            StatusCode::GONE,
            "this share link has expired",
        ));
    }
    let BucketQueryResponse::Share(found) =
        g.query(&BucketQuery::Share { id }).await.map_err(from_s3)?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let r = found
        .filter(|r| r.expires_ms == expires_ms)
        .ok_or_else(|| ApiError::new(StatusCode::GONE, "this share link was revoked"))?;
    let found = match g
        .query(&BucketQuery::ObjectWithBucket {
            bucket: r.bucket.clone(),
            key: r.key.clone(),
            version: None,
        })
        .await
        .map_err(from_s3)?
    {
        BucketQueryResponse::ObjectWithBucket(f) => f,
        _ => return Err(ApiError::internal("unexpected answer")),
    };
    // A namespace deleted and made again by another tenant is not what was shared.
    let version = found
        .filter(|(b, _)| bucket_tenant(&b.owner) == r.tenant)
        .and_then(|(_, v)| v);
    if version.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "the shared file no longer exists",
        ));
    }
    serve(
        &g,
        req.method(),
        req.headers(),
        &r.key,
        version,
        params.download,
    )
    .await
}

/// The routes, to merge into the `/api` router.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/shares", get(list).post(create))
        .route("/shares/{id}", delete(revoke))
}

/// The OpenAPI paths of these routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, revoke))]
pub(crate) struct SharesDoc;
