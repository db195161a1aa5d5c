//! The one place every route is assembled: the JSON API under `/api` (each surface's routes
//! and its part of the OpenAPI document), namespaces and share links under `/storage`, health,
//! readiness and metrics; [`crate::http`] puts S3 behind them and observes every request.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::json;

use crate::Gateway;
use crate::kernel::{ApiError, not_found, with_layers};

/// The OpenAPI document's own entry; every surface adds its part.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Cairn API",
        description = "Accounts, sessions, keys, tenants, policies, storage, sharing, images and audit of a Cairn cluster"
    ),
    paths(openapi)
)]
struct ApiDoc;

/// The OpenAPI document of every `/api` route, generated from the handlers' annotations.
pub fn openapi_doc() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::sessions::SessionsDoc::openapi());
    doc.merge(crate::keys::KeysDoc::openapi());
    doc.merge(crate::audit::AuditDoc::openapi());
    doc.merge(crate::tenants::TenantDoc::openapi());
    doc.merge(crate::storage::StorageDoc::openapi());
    doc.merge(crate::shares::SharesDoc::openapi());
    doc.merge(crate::images::ImagesDoc::openapi());
    doc.merge(crate::kms::KmsDoc::openapi());
    doc.merge(crate::queues::QueuesDoc::openapi());
    doc.merge(crate::topics::TopicsDoc::openapi());
    doc.merge(crate::cron::CronDoc::openapi());
    doc
}

/// `GET /api/openapi.json`.
#[utoipa::path(get, path = "/api/openapi.json", responses((status = 200, description = "This document")))]
async fn openapi() -> Response {
    match openapi_doc().to_json() {
        Ok(doc) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// The `/api` routes (mounted under `/api`).
pub fn api(g: Arc<Gateway>) -> Router {
    let routes = Router::new()
        .merge(crate::sessions::credential_routes(g.clone()))
        .merge(crate::sessions::routes())
        .merge(crate::keys::routes())
        .merge(crate::audit::routes())
        .route("/openapi.json", get(openapi))
        .merge(crate::tenants::routes())
        .merge(crate::storage::routes())
        .merge(crate::shares::routes())
        .merge(crate::images::routes())
        .merge(crate::kms::routes())
        .merge(crate::queues::routes())
        .merge(crate::topics::routes())
        .merge(crate::cron::routes());
    with_layers(routes, g)
}

/// The `/storage` routes: namespaces, files, direct URLs and share links.
pub fn storage(g: Arc<Gateway>) -> Router {
    let routes = crate::namespaces::routes().route("/share/{token}", get(crate::shares::open));
    with_layers(routes, g)
}

/// The gateway's whole HTTP service. `ready` replaces the default readiness check (the
/// master group has a leader and a chunkserver is alive).
pub fn router(gateway: Arc<Gateway>, ready: Option<MethodRouter>) -> Router {
    let ready =
        ready.unwrap_or_else(|| get(crate::http::default_ready).with_state(gateway.clone()));
    let own = Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/ready", ready)
        .route(
            "/metrics",
            get(crate::http::metrics).with_state(gateway.clone()),
        )
        .nest("/api", api(gateway.clone()))
        .nest("/storage", storage(gateway.clone()))
        // The faces' own roots are theirs too (not S3 buckets named `api` or `storage`).
        .route("/api/", axum::routing::any(not_found))
        .route("/storage/", axum::routing::any(not_found));
    crate::http::serve(gateway, own)
}
