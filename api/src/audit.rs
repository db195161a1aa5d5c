//! The audit log under `/api/audit/logs` (admins only): every change, who made it, from
//! where, and how it ended.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_engine::state::TypedService;
use cairn_proto::Consistency;
use serde::Deserialize;
use serde_json::json;

use crate::Gateway;
use crate::kernel::caller::*;
use crate::kernel::error::*;

#[derive(Deserialize)]
struct AuditParams {
    actor: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    /// Unix seconds.
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /api/audit/logs` (admins): entries newest first, filtered.
#[utoipa::path(get, path = "/api/audit/logs", responses((status = 200, description = "Entries, newest first"), (status = 403, description = "Admins only")))]
async fn audit_logs(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    caller.admin()?;
    let p: AuditParams = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::bad(format!("invalid query: {e}")))?;
    let filter = cairn_master::audit::AuditFilter {
        actor: p.actor,
        action: p.action,
        resource: p.resource,
        from_ms: p.from.map(|s| s.saturating_mul(1000)),
        to_ms: p.to.map(|s| s.saturating_mul(1000).saturating_add(999)),
        limit: p.limit.unwrap_or(100).min(cairn_master::audit::LIST_MAX),
        offset: p.offset.unwrap_or(0),
    };
    let q = cairn_master::audit::AuditService::encode_query(
        &cairn_master::audit::AuditQuery::List(filter),
    )
    .map_err(ApiError::internal)?;
    let bytes = g
        .master
        .query(
            cairn_master::audit::AuditService::ID,
            q,
            Consistency::Linearizable,
        )
        .await?
        .map_err(|r| ApiError::internal(r.message))?;
    let entries =
        cairn_master::audit::AuditService::query_response(&bytes).map_err(ApiError::internal)?;
    let items: Vec<_> = entries
        .into_iter()
        .map(|(id, e)| {
            json!({"id": id, "time": e.time_ms / 1000, "actor": e.actor, "action": e.action,
                   "resource": e.resource, "ip": e.ip, "outcome": e.outcome})
        })
        .collect();
    Ok(axum::Json(json!({"entries": items})).into_response())
}

pub(crate) fn routes() -> Router<Arc<Gateway>> {
    Router::new().route("/audit/logs", get(audit_logs))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(audit_logs))]
pub(crate) struct AuditDoc;
