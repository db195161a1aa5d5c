//! The key service under `/api/kms/keys`: a tenant's named encryption keys for SSE-KMS
//! (`cairn_master::kms`). Keys are made, listed, rotated, disabled and enabled here; S3
//! requests name them in `x-amz-server-side-encryption-aws-kms-key-id` (by id, `alias/NAME`,
//! or either as an ARN). Key material never leaves the gateway: the API shows a key's
//! versions and dates, never its bytes.
//!
//! Reading keys takes `kms:ListKeys` / `kms:DescribeKey` (any member by default); making,
//! rotating, disabling and enabling take `kms:CreateKey`, `kms:RotateKey`, `kms:DisableKey`
//! and `kms:EnableKey` (the tenant's admins and owner by default).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_master::kms::{KmsCommand, KmsKey, KmsQuery, KmsQueryResponse, KmsRefusal, KmsResponse};
use cairn_master::policy::ActionClass;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::auth::Principal;
use crate::kernel::{ApiError, ApiResult, authenticate, from_s3, hex_id, json_body, rfc3339};
use crate::storage::{may, principal};

async fn command(g: &Gateway, c: &KmsCommand) -> ApiResult<KmsResponse> {
    match crate::sse::kms_command(g, c).await.map_err(from_s3)? {
        Ok(r) => Ok(r),
        Err(r) => Err(match r.kind::<KmsRefusal>() {
            Some(KmsRefusal::NoSuchKey) => ApiError::new(StatusCode::NOT_FOUND, "no such key"),
            Some(KmsRefusal::AlreadyExists) => ApiError::new(StatusCode::CONFLICT, r.message),
            Some(KmsRefusal::InvalidArgument | KmsRefusal::LimitExceeded) | None => {
                ApiError::bad(r.message)
            }
        }),
    }
}

pub(crate) fn key_json(g: &Gateway, id: u128, k: &KmsKey) -> Value {
    json!({
        "id": hex_id(id),
        "arn": crate::sse::key_arn(g, k.tenant, id),
        "name": k.name,
        "alias": format!("alias/{}", k.name),
        "description": k.description,
        "enabled": k.enabled,
        "created_at": rfc3339(k.created_ms),
        "created_by": k.created_by,
        "versions": k.versions.iter().enumerate().map(|(i, v)| json!({
            "version": i + 1,
            "created_at": rfc3339(v.created_ms),
        })).collect::<Vec<_>>(),
        "current_version": k.versions.len(),
    })
}

/// A key of the caller's tenant (anything else is "no such key").
async fn tenant_key(g: &Gateway, p: &Principal, id: &str) -> ApiResult<(u128, KmsKey)> {
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "no such key");
    let id = u128::from_str_radix(id, 16)
        .ok()
        .filter(|_| id.len() == 32)
        .ok_or_else(missing)?;
    match crate::sse::kms_query(g, &KmsQuery::Key { id })
        .await
        .map_err(from_s3)?
    {
        KmsQueryResponse::Key(Some(k)) if k.tenant == p.tenant => Ok((id, k)),
        _ => Err(missing()),
    }
}

/// `GET /api/kms/keys`: the tenant's keys.
#[utoipa::path(get, path = "/api/kms/keys", responses((status = 200, description = "keys: the tenant's keys (id, arn, name, enabled, versions)")))]
async fn list(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let p = principal(&g, &caller, "GetObject").await?;
    may(&p, "kms:ListKeys", ActionClass::Read, "kms/*")?;
    let KmsQueryResponse::Keys(all) =
        crate::sse::kms_query(&g, &KmsQuery::Keys { tenant: p.tenant })
            .await
            .map_err(from_s3)?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let keys: Vec<Value> = all.iter().map(|(id, k)| key_json(&g, *id, k)).collect();
    Ok(axum::Json(json!({ "keys": keys })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewKey {
    /// 1-64 letters, digits, `/`, `_` or `-`, unique in the tenant.
    name: String,
    #[serde(default)]
    description: String,
}

/// `POST /api/kms/keys` (`{"name", "description"}`): a new key with fresh material.
#[utoipa::path(post, path = "/api/kms/keys", request_body = NewKey, responses((status = 201, description = "The key"), (status = 409, description = "A key of that name exists")))]
async fn create(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let p = principal(&g, &caller, "PutBucketPolicy").await?;
    let body: NewKey = json_body(req).await?;
    may(&p, "kms:CreateKey", ActionClass::Manage, "kms/*")?;
    let sealed = crate::sse::new_material(&g).map_err(from_s3)?;
    let KmsResponse::Created { id } = command(
        &g,
        &KmsCommand::Create {
            tenant: p.tenant,
            name: body.name,
            description: body.description,
            created_by: format!("user:{}", hex_id(caller.user)),
            sealed,
        },
    )
    .await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let (id, k) = tenant_key(&g, &p, &hex_id(id)).await?;
    Ok((StatusCode::CREATED, axum::Json(key_json(&g, id, &k))).into_response())
}

/// `GET /api/kms/keys/{id}`.
#[utoipa::path(get, path = "/api/kms/keys/{id}", params(("id" = String, Path, description = "The key id (32 hex digits)")), responses((status = 200, description = "The key"), (status = 404, description = "No such key")))]
async fn show(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let p = principal(&g, &caller, "GetObject").await?;
    let (id, k) = tenant_key(&g, &p, &id).await?;
    may(
        &p,
        "kms:DescribeKey",
        ActionClass::Read,
        &format!("kms/{}", hex_id(id)),
    )?;
    Ok(axum::Json(key_json(&g, id, &k)).into_response())
}

/// A change to one key of the caller's tenant; the key after it.
async fn change(
    g: &Gateway,
    headers: &HeaderMap,
    id: &str,
    action: &str,
    make: impl FnOnce(u128, u128) -> ApiResult<KmsCommand>,
) -> ApiResult<Response> {
    let caller = authenticate(g, headers).await?;
    let p = principal(g, &caller, "PutBucketPolicy").await?;
    let (id, _) = tenant_key(g, &p, id).await?;
    may(
        &p,
        action,
        ActionClass::Manage,
        &format!("kms/{}", hex_id(id)),
    )?;
    command(g, &make(p.tenant, id)?).await?;
    let (id, k) = tenant_key(g, &p, &hex_id(id)).await?;
    // Gateways trust an opened key for a few seconds; this one forgets it at once.
    g.kms_cache.lock().retain(|(key, _), _| *key != id);
    Ok(axum::Json(key_json(g, id, &k)).into_response())
}

/// `POST /api/kms/keys/{id}/rotate`: a new version wraps new data keys from now on; older
/// versions still open what they wrapped.
#[utoipa::path(post, path = "/api/kms/keys/{id}/rotate", params(("id" = String, Path, description = "The key id")), responses((status = 200, description = "The key, with its new version"), (status = 404, description = "No such key")))]
async fn rotate(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let sealed = crate::sse::new_material(&g).map_err(from_s3)?;
    change(&g, &headers, &id, "kms:RotateKey", |tenant, id| {
        Ok(KmsCommand::Rotate { tenant, id, sealed })
    })
    .await
}

/// `POST /api/kms/keys/{id}/disable`: objects under the key can be neither written nor read
/// until it is enabled again.
#[utoipa::path(post, path = "/api/kms/keys/{id}/disable", params(("id" = String, Path, description = "The key id")), responses((status = 200, description = "The key"), (status = 404, description = "No such key")))]
async fn disable(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    change(&g, &headers, &id, "kms:DisableKey", |tenant, id| {
        Ok(KmsCommand::SetEnabled {
            tenant,
            id,
            enabled: false,
        })
    })
    .await
}

/// `POST /api/kms/keys/{id}/enable`.
#[utoipa::path(post, path = "/api/kms/keys/{id}/enable", params(("id" = String, Path, description = "The key id")), responses((status = 200, description = "The key"), (status = 404, description = "No such key")))]
async fn enable(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    change(&g, &headers, &id, "kms:EnableKey", |tenant, id| {
        Ok(KmsCommand::SetEnabled {
            tenant,
            id,
            enabled: true,
        })
    })
    .await
}

/// The routes, to merge into the `/api` router.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/kms/keys", get(list).post(create))
        .route("/kms/keys/{id}", get(show))
        .route("/kms/keys/{id}/rotate", post(rotate))
        .route("/kms/keys/{id}/disable", post(disable))
        .route("/kms/keys/{id}/enable", post(enable))
}

/// The OpenAPI paths of these routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, create, show, rotate, disable, enable))]
pub(crate) struct KmsDoc;
