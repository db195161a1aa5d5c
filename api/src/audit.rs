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
use crate::kernel::caller::authenticate;
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::rfc3339;

#[derive(Deserialize)]
struct AuditParams {
    actor: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    /// RFC 3339 or Unix seconds.
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// A `from` or `to` parameter, in ms.
fn time_param(name: &str, value: Option<&str>) -> ApiResult<Option<u64>> {
    value
        .map(|v| {
            crate::kernel::time::parse_time(v).ok_or_else(|| {
                ApiError::bad(format!(
                    "{name} is a time: RFC 3339 (2026-12-07T03:25:00Z) or Unix seconds"
                ))
            })
        })
        .transpose()
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
        from_ms: time_param("from", p.from.as_deref())?,
        to_ms: time_param("to", p.to.as_deref())?.map(|ms| ms.saturating_add(999)),
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
            json!({"id": id, "time": rfc3339(e.time_ms), "actor": e.actor, "action": e.action,
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
