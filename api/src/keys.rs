//! A user's keys: S3 access keys (`/api/s3-keys`, the secret sealed at rest and shown once)
//! and API keys (`/api/keys`, argon2-hashed, shown once, rotatable).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use cairn_master::dataplane::{command, wall_ms};
use cairn_master::identity::{IdentityCommand, IdentityQuery, IdentityQueryResponse};
use serde::Deserialize;
use serde_json::json;

use crate::Gateway;
use crate::kernel::caller::{Caller, ask, authenticate, propose};
use crate::kernel::crypto::{hash_password, hex, random_string, random32};
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::ids::hex_id;
use crate::kernel::json::json_body;
use crate::kernel::rfc3339;

/// `POST /api/s3-keys`: a new S3 key for the caller; the secret is shown once.
#[utoipa::path(post, path = "/api/s3-keys", responses((status = 201, description = "An S3 access key and its secret, shown once")))]
async fn create_s3_key(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.session_only()?;
    let access = format!(
        "CAIRN{}",
        random_string(15, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")?
    );
    let secret = random_string(
        40,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    )?;
    // The key acts in the tenant the caller acts in now.
    let tenant = crate::tenants::access(&g, &caller, None).await?.tenant;
    crate::auth::create_key(&g, &access, &secret, &hex_id(caller.user), Some(tenant))
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "id": access,
            "access_key": access,
            "secret_key": secret,
            "tenant_id": hex_id(tenant),
            "created_at": rfc3339(wall_ms()),
        })),
    )
        .into_response())
}

/// The caller's S3 keys: (access key, created ms, tenant).
async fn my_s3_keys(g: &Gateway, user: u128) -> ApiResult<Vec<(String, u64, Option<u128>)>> {
    match crate::auth::key_query(
        g,
        &cairn_master::keys::KeyQuery::ByOwner {
            owner: hex_id(user),
        },
    )
    .await
    .map_err(ApiError::internal)?
    {
        cairn_master::keys::KeyQueryResponse::Keys(k) => Ok(k
            .into_iter()
            .map(|(id, r)| (id, r.created_ms, r.tenant))
            .collect()),
        _ => Err(ApiError::internal("unexpected answer")),
    }
}

/// `GET /api/s3-keys`: the caller's S3 keys (never their secrets).
#[utoipa::path(get, path = "/api/s3-keys", responses((status = 200, description = "The caller's S3 keys")))]
async fn list_s3_keys(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let keys: Vec<serde_json::Value> = my_s3_keys(&g, caller.user)
        .await?
        .into_iter()
        .map(|(id, created, tenant)| {
            json!({"id": id, "access_key": id, "created_at": rfc3339(created),
                   "tenant_id": tenant.map(hex_id)})
        })
        .collect();
    Ok(axum::Json(json!({"keys": keys})).into_response())
}

/// `DELETE /api/s3-keys/{id}`: one of the caller's keys (another user's answers 404).
#[utoipa::path(delete, path = "/api/s3-keys/{id}", params(("id" = String, Path, description = "The id")), responses((status = 200, description = "Deleted"), (status = 404, description = "No such key of the caller")))]
async fn delete_s3_key(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    if !my_s3_keys(&g, caller.user)
        .await?
        .iter()
        .any(|(k, _, _)| *k == id)
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such key"));
    }
    let c = cairn_master::keys::KeyCommand::Delete { access_key: id };
    let bytes = command::<cairn_master::keys::KeyService>(&c)?;
    g.master
        .propose(bytes)
        .await?
        .map_err(|r| ApiError::internal(r.message))?;
    Ok(axum::Json(json!({"status": "deleted"})).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewApiKey {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    /// Seconds until the key expires; never when absent.
    #[serde(default)]
    expires_in: Option<u64>,
}

fn api_key_json(id: &str, k: &cairn_master::identity::ApiKey) -> serde_json::Value {
    json!({
        "id": id,
        "name": k.name,
        "scopes": k.scopes,
        "prefix": format!("cairn_{id}_"),
        "created_at": rfc3339(k.created_ms),
        "expires_at": k.expires_ms.map(rfc3339),
        "last_used_at": k.last_used_ms.map(rfc3339),
    })
}

/// A fresh key for `id`: (raw key, argon2 hash of its secret).
async fn new_api_secret(id: &str) -> ApiResult<(String, String)> {
    let secret = hex(&random32()?);
    let hash = hash_password(secret.clone()).await?;
    Ok((format!("cairn_{id}_{secret}"), hash))
}

/// `POST /api/keys`: a new API key; the raw key is shown once.
#[utoipa::path(post, path = "/api/keys", request_body = NewApiKey, responses((status = 201, description = "The key, shown once")))]
async fn create_api_key(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    caller.session_only()?;
    let body: NewApiKey = json_body(req).await?;
    let id = hex(&random32()?[..8]);
    let (raw, hash) = new_api_secret(&id).await?;
    let expires_ms = match body.expires_in {
        None => None,
        Some(s) if s > 0 && s <= 10 * 365 * 24 * 3600 => Some(wall_ms() + s * 1000),
        Some(_) => return Err(ApiError::bad("expires_in is 1 second to 10 years")),
    };
    propose(
        &g,
        &IdentityCommand::CreateApiKey {
            id: id.clone(),
            user: caller.user,
            name: body.name,
            scopes: body.scopes,
            hash,
            expires_ms,
        },
    )
    .await?;
    let key = match ask(&g, &IdentityQuery::ApiKey { id: id.clone() }).await? {
        IdentityQueryResponse::ApiKey(Some(k)) => k,
        _ => return Err(ApiError::internal("the new key is missing")),
    };
    let mut out = api_key_json(&id, &key);
    out["key"] = json!(raw);
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

async fn own_api_key(g: &Gateway, caller: &Caller, id: &str) -> ApiResult<()> {
    match ask(g, &IdentityQuery::ApiKey { id: id.to_owned() }).await? {
        IdentityQueryResponse::ApiKey(Some(k)) if k.user == caller.user => Ok(()),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such key")),
    }
}

/// `GET /api/keys`: the caller's API keys (never the keys themselves).
#[utoipa::path(get, path = "/api/keys", responses((status = 200, description = "The caller's keys")))]
async fn list_api_keys(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let keys = match ask(&g, &IdentityQuery::ApiKeys { user: caller.user }).await? {
        IdentityQueryResponse::ApiKeys(k) => k,
        _ => Vec::new(),
    };
    let items: Vec<_> = keys.iter().map(|(id, k)| api_key_json(id, k)).collect();
    Ok(axum::Json(json!({"keys": items})).into_response())
}

/// `DELETE /api/keys/{id}`.
#[utoipa::path(delete, path = "/api/keys/{id}", params(("id" = String, Path, description = "The id")), responses((status = 200, description = "Deleted"), (status = 404, description = "No such key of the caller")))]
async fn delete_api_key(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.session_only()?;
    own_api_key(&g, &caller, &id).await?;
    propose(&g, &IdentityCommand::DeleteApiKey { id }).await?;
    Ok(axum::Json(json!({"status": "deleted"})).into_response())
}

/// `POST /api/keys/{id}/rotate`: a new secret for the key; the old one stops working.
#[utoipa::path(post, path = "/api/keys/{id}/rotate", params(("id" = String, Path, description = "The id")), responses((status = 200, description = "The new key, shown once")))]
async fn rotate_api_key(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.session_only()?;
    own_api_key(&g, &caller, &id).await?;
    let (raw, hash) = new_api_secret(&id).await?;
    propose(
        &g,
        &IdentityCommand::RotateApiKey {
            id: id.clone(),
            hash,
        },
    )
    .await?;
    Ok(axum::Json(json!({"id": id, "key": raw})).into_response())
}

pub(crate) fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/keys", get(list_api_keys).post(create_api_key))
        .route("/keys/{id}", delete(delete_api_key))
        .route("/keys/{id}/rotate", post(rotate_api_key))
        .route("/s3-keys", get(list_s3_keys).post(create_s3_key))
        .route("/s3-keys/{id}", delete(delete_s3_key))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_api_key,
    list_api_keys,
    delete_api_key,
    rotate_api_key,
    create_s3_key,
    list_s3_keys,
    delete_s3_key
))]
pub(crate) struct KeysDoc;
