//! Cron jobs under `/api/cron` (`cairn_master::cron`): a schedule (five cron fields or an
//! alias such as `@hourly`) in a time zone, and a target that each firing delivers to in the
//! same command: a message to a queue, or a publish to a topic. The leader fires each
//! scheduled instant exactly once.
//!
//! Reading takes `cron:list` / `cron:get` (any member); making, deleting, pausing and resuming
//! take `cron:create`, `cron:delete`, `cron:pause`, `cron:resume` (admins and the owner).
//! Policies name jobs as `cron/NAME`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_engine::state::Rejection;
use cairn_master::cron::{
    CronCommand, CronQuery, CronQueryResponse, CronRefusal, CronResponse, CronService, CronTarget,
    Job, Missed, next_after,
};
use cairn_master::dataplane::wall_ms;
use cairn_master::policy::ActionClass;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::auth::Principal;
use crate::kernel::{
    ApiError, ApiResult, hex_id, json_body, parse_id, rfc3339, service_command, service_query,
};
use crate::storage::{allowed, caller, may};

/// The JSON error of each refusal of the cron service.
fn refused(r: Rejection) -> ApiError {
    match r.kind::<CronRefusal>() {
        Some(CronRefusal::NoSuchJob) => ApiError::new(StatusCode::NOT_FOUND, r.message),
        Some(CronRefusal::AlreadyExists) => ApiError::new(StatusCode::CONFLICT, r.message),
        Some(CronRefusal::InvalidArgument | CronRefusal::LimitExceeded) | None => {
            ApiError::bad(r.message)
        }
    }
}

async fn cron_command(g: &Gateway, c: &CronCommand) -> ApiResult<CronResponse> {
    service_command::<CronService>(g, c, refused).await
}

async fn cron_query(g: &Gateway, q: &CronQuery) -> ApiResult<CronQueryResponse> {
    service_query::<CronService>(g, q).await
}

fn job_json(id: u128, j: &Job) -> Value {
    let target = match &j.target {
        CronTarget::Queue { queue, body } => {
            json!({"type": "queue", "queue": hex_id(*queue), "body": body})
        }
        CronTarget::Topic { topic, body } => {
            json!({"type": "topic", "topic": hex_id(*topic), "body": body})
        }
    };
    json!({
        "id": hex_id(id),
        "name": j.name,
        "schedule": j.schedule,
        "timezone": j.timezone,
        "target": target,
        "missed": match j.missed { Missed::Skip => "skip", Missed::FireOnce => "fire_once" },
        "paused": j.paused,
        "created_at": rfc3339(j.created_ms),
        "next_at": (!j.paused).then(|| rfc3339(j.next_ms)),
        "last_fired_at": j.last_fired_ms.map(rfc3339),
        "fired": j.fired,
    })
}

/// A job of the caller's tenant, by id (anything else is "no such job").
async fn tenant_job(g: &Gateway, tenant: u128, id: &str) -> ApiResult<(u128, Job)> {
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "no such job");
    let id = parse_id(id).ok_or_else(missing)?;
    match cron_query(g, &CronQuery::Job { id }).await? {
        CronQueryResponse::Job(Some(j)) if j.tenant == tenant => Ok((id, j)),
        _ => Err(missing()),
    }
}

async fn on_job(
    g: &Gateway,
    headers: &HeaderMap,
    id: &str,
    action: &str,
    class: ActionClass,
) -> ApiResult<(Principal, u128, Job)> {
    let p = caller(g, headers, class).await?;
    let (jid, j) = tenant_job(g, p.tenant, id).await?;
    may(&p, action, class, &format!("cron/{}", j.name))?;
    Ok((p, jid, j))
}

/// `GET /api/cron`: the tenant's jobs.
#[utoipa::path(get, path = "/api/cron", responses((status = 200, description = "jobs: the tenant's cron jobs with their next instant")))]
async fn list(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let p = allowed(&g, &headers, "cron:list", ActionClass::Read, "cron/*").await?;
    let CronQueryResponse::Jobs(all) =
        cron_query(&g, &CronQuery::Jobs { tenant: p.tenant }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let jobs: Vec<Value> = all.iter().map(|(id, j)| job_json(*id, j)).collect();
    Ok(axum::Json(json!({ "jobs": jobs })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TargetIn {
    /// `queue` or `topic` (HTTP targets come with the webhook workers).
    r#type: String,
    /// The queue's id or name (`type` queue).
    queue: Option<String>,
    /// The topic's id or name (`type` topic).
    topic: Option<String>,
    /// The message each firing sends (1 byte to 64 KiB).
    body: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewJob {
    /// 1-128 letters, digits, `-`, `_` or `.`, unique in the tenant.
    name: String,
    /// Five fields (minute hour day-of-month month day-of-week) or `@yearly`, `@monthly`,
    /// `@weekly`, `@daily`, `@hourly`.
    schedule: String,
    /// An IANA time zone (default `UTC`).
    timezone: Option<String>,
    target: TargetIn,
    /// After downtime: `skip` the missed instants (default) or `fire_once`.
    missed: Option<String>,
}

async fn target(g: &Gateway, tenant: u128, t: TargetIn) -> ApiResult<CronTarget> {
    match (t.r#type.as_str(), t.queue, t.topic) {
        ("queue", Some(named), None) => Ok(CronTarget::Queue {
            queue: crate::queues::find_queue(g, tenant, &named).await?.0,
            body: t.body,
        }),
        ("topic", None, Some(named)) => Ok(CronTarget::Topic {
            topic: crate::topics::find_topic(g, tenant, &named).await?.0,
            body: t.body,
        }),
        ("http", _, _) => Err(ApiError::bad(
            "HTTP targets come with the webhook workers; use a queue or a topic",
        )),
        _ => Err(ApiError::bad(
            "target is {\"type\": \"queue\", \"queue\": ..., \"body\": ...} or {\"type\": \"topic\", \"topic\": ..., \"body\": ...}",
        )),
    }
}

/// `POST /api/cron`: a new job.
#[utoipa::path(post, path = "/api/cron", request_body = NewJob, responses((status = 201, description = "The job, with its first instant"), (status = 400, description = "A malformed schedule, an unknown time zone, or a target that is not the tenant's"), (status = 409, description = "A job of that name exists")))]
async fn create(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let p = caller(&g, req.headers(), ActionClass::Manage).await?;
    let body: NewJob = json_body(req).await?;
    may(
        &p,
        "cron:create",
        ActionClass::Manage,
        &format!("cron/{}", body.name),
    )?;
    let timezone = body.timezone.unwrap_or_else(|| "UTC".into());
    let next_ms = next_after(&body.schedule, &timezone, wall_ms()).map_err(ApiError::bad)?;
    let missed = match body.missed.as_deref() {
        None | Some("skip") => Missed::Skip,
        Some("fire_once") => Missed::FireOnce,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "missed is \"skip\" or \"fire_once\", not {other:?}"
            )));
        }
    };
    let target = target(&g, p.tenant, body.target).await?;
    let CronResponse::Created { id } = cron_command(
        &g,
        &CronCommand::Create {
            tenant: p.tenant,
            name: body.name,
            schedule: body.schedule,
            timezone,
            target,
            missed,
            next_ms,
        },
    )
    .await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let (id, j) = tenant_job(&g, p.tenant, &hex_id(id)).await?;
    Ok((StatusCode::CREATED, axum::Json(job_json(id, &j))).into_response())
}

/// `GET /api/cron/{id}`.
#[utoipa::path(get, path = "/api/cron/{id}", params(("id" = String, Path, description = "The job id (32 hex digits)")), responses((status = 200, description = "The job"), (status = 404, description = "No such job")))]
async fn show(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, id, j) = on_job(&g, &headers, &id, "cron:get", ActionClass::Read).await?;
    Ok(axum::Json(job_json(id, &j)).into_response())
}

/// `DELETE /api/cron/{id}`: the job and its history.
#[utoipa::path(delete, path = "/api/cron/{id}", params(("id" = String, Path, description = "The job id")), responses((status = 204, description = "Deleted"), (status = 404, description = "No such job")))]
async fn remove(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (p, id, _) = on_job(&g, &headers, &id, "cron:delete", ActionClass::Manage).await?;
    cron_command(
        &g,
        &CronCommand::Delete {
            tenant: p.tenant,
            id,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_paused(
    g: &Gateway,
    headers: &HeaderMap,
    id: &str,
    paused: bool,
) -> ApiResult<Response> {
    let action = if paused { "cron:pause" } else { "cron:resume" };
    let (p, id, j) = on_job(g, headers, id, action, ActionClass::Manage).await?;
    // Resuming starts from the next instant after now: what was missed while paused is passed.
    let next_ms = next_after(&j.schedule, &j.timezone, wall_ms()).map_err(ApiError::bad)?;
    cron_command(
        g,
        &CronCommand::SetPaused {
            tenant: p.tenant,
            id,
            paused,
            next_ms,
        },
    )
    .await?;
    let (id, j) = tenant_job(g, p.tenant, &hex_id(id)).await?;
    Ok(axum::Json(job_json(id, &j)).into_response())
}

/// `POST /api/cron/{id}/pause`.
#[utoipa::path(post, path = "/api/cron/{id}/pause", params(("id" = String, Path, description = "The job id")), responses((status = 200, description = "The job, paused"), (status = 404, description = "No such job")))]
async fn pause(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    set_paused(&g, &headers, &id, true).await
}

/// `POST /api/cron/{id}/resume`: from the next instant after now.
#[utoipa::path(post, path = "/api/cron/{id}/resume", params(("id" = String, Path, description = "The job id")), responses((status = 200, description = "The job, with its next instant"), (status = 404, description = "No such job")))]
async fn resume(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    set_paused(&g, &headers, &id, false).await
}

/// `GET /api/cron/{id}/runs`: the newest 100 firings (and skips), newest first.
#[utoipa::path(get, path = "/api/cron/{id}/runs", params(("id" = String, Path, description = "The job id")), responses((status = 200, description = "runs: scheduled_at, fired_at, status (delivered, failed, skipped), detail"), (status = 404, description = "No such job")))]
async fn runs(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, id, _) = on_job(&g, &headers, &id, "cron:get", ActionClass::Read).await?;
    let CronQueryResponse::Runs(runs) = cron_query(&g, &CronQuery::Runs { id }).await? else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let runs: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "scheduled_at": rfc3339(r.scheduled_ms),
                "fired_at": rfc3339(r.fired_ms),
                "lateness_ms": r.fired_ms.saturating_sub(r.scheduled_ms),
                "status": r.status,
                "detail": r.detail,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "runs": runs })).into_response())
}

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/cron", get(list).post(create))
        .route("/cron/{id}", get(show).delete(remove))
        .route("/cron/{id}/pause", post(pause))
        .route("/cron/{id}/resume", post(resume))
        .route("/cron/{id}/runs", get(runs))
}

/// The OpenAPI paths of these routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, create, show, remove, pause, resume, runs))]
pub(crate) struct CronDoc;
