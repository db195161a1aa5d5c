//! Tenants, members and IAM policies under `/api`: `/api/tenants...` and `/api/iam/policies...`.
//!
//! The role checks are inside the identity service's commands (atomic with the change); the
//! routes here parse, authenticate and shape answers. A tenant the caller does not belong to
//! answers 404, exactly like one that does not exist. Policies are those of the tenant the
//! caller acts in (`POST /api/tenants/{id}/switch` picks it).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_master::identity::{
    IdentityCommand, IdentityQuery, IdentityQueryResponse, IdentityResponse,
};
use cairn_master::policy::{Effect, Policy, Role, Statement};
use cairn_master::tenancy::{AccessView, Tenant};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::kernel::{
    ApiError, ApiResult, Caller, ask, authenticate, hex_id, json_body, parse_id, propose, rfc3339,
};

fn not_found(what: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such {what}"))
}

fn tenant_id(s: &str) -> ApiResult<u128> {
    parse_id(s).ok_or_else(|| not_found("tenant"))
}

fn role_of(s: &str) -> ApiResult<Role> {
    Role::parse(s).ok_or_else(|| {
        ApiError::bad(format!(
            "unknown role {s:?} (one of: owner, admin, member, viewer)"
        ))
    })
}

fn tenant_json(id: u128, t: &Tenant, role: Role, current: Option<u128>) -> Value {
    json!({
        "id": hex_id(id),
        "name": t.name,
        "role": role.as_str(),
        "current": current == Some(id),
        "created_at": rfc3339(t.created_ms),
    })
}

/// What the caller may do in `tenant` (their current one when `None`); 404 when not a member.
pub(crate) async fn access(
    g: &Gateway,
    caller: &Caller,
    tenant: Option<u128>,
) -> ApiResult<AccessView> {
    match ask(
        g,
        &IdentityQuery::Access {
            user: caller.user,
            tenant,
        },
    )
    .await?
    {
        IdentityQueryResponse::Access(Some(v)) => Ok(v),
        IdentityQueryResponse::Access(None) if tenant.is_some() => Err(not_found("tenant")),
        IdentityQueryResponse::Access(None) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "you belong to no tenant: create one with POST /api/tenants",
        )),
        _ => Err(ApiError::internal("unexpected answer")),
    }
}

/// `GET /api/tenants`: the caller's tenants, their role in each, and which one they act in.
#[utoipa::path(get, path = "/api/tenants", responses((status = 200, description = "The caller's tenants")))]
async fn list(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let IdentityQueryResponse::Tenants { tenants, current } =
        ask(&g, &IdentityQuery::Tenants { user: caller.user }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let items: Vec<Value> = tenants
        .iter()
        .map(|(id, t, r)| tenant_json(*id, t, *r, current))
        .collect();
    Ok(axum::Json(json!({"tenants": items, "current": current.map(hex_id)})).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewTenant {
    name: String,
}

/// `POST /api/tenants`: a new tenant; the caller is its owner.
#[utoipa::path(post, path = "/api/tenants", request_body = NewTenant, responses((status = 201, description = "The new tenant")))]
async fn create(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    caller.may_manage()?;
    let body: NewTenant = json_body(req).await?;
    let IdentityResponse::Created { id } = propose(
        &g,
        &IdentityCommand::CreateTenant {
            name: body.name.clone(),
            owner: caller.user,
        },
    )
    .await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let t = Tenant {
        name: body.name,
        created_ms: cairn_master::dataplane::wall_ms(),
    };
    let v = access(&g, &caller, None).await.ok().map(|a| a.tenant);
    Ok((
        StatusCode::CREATED,
        axum::Json(tenant_json(id, &t, Role::Owner, v)),
    )
        .into_response())
}

/// `GET /api/tenants/{id}`: one of the caller's tenants.
#[utoipa::path(get, path = "/api/tenants/{id}", params(("id" = String, Path, description = "The tenant id")), responses((status = 200, description = "The tenant"), (status = 404, description = "No such tenant of the caller")))]
async fn show(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let id = tenant_id(&id)?;
    let view = access(&g, &caller, Some(id)).await?;
    let IdentityQueryResponse::Tenant(Some(t)) = ask(&g, &IdentityQuery::Tenant { id }).await?
    else {
        return Err(not_found("tenant"));
    };
    let current = access(&g, &caller, None).await.ok().map(|a| a.tenant);
    Ok(axum::Json(tenant_json(id, &t, view.role, current)).into_response())
}

/// `POST /api/tenants/{id}/switch`: act in this tenant from now on (new S3 keys, policies).
#[utoipa::path(post, path = "/api/tenants/{id}/switch", params(("id" = String, Path, description = "The tenant id")), responses((status = 200, description = "Switched"), (status = 404, description = "No such tenant of the caller")))]
async fn switch(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let id = tenant_id(&id)?;
    propose(
        &g,
        &IdentityCommand::SwitchTenant {
            user: caller.user,
            tenant: id,
        },
    )
    .await?;
    Ok(axum::Json(json!({"current": hex_id(id)})).into_response())
}

/// `GET /api/tenants/{id}/members` (any member).
#[utoipa::path(get, path = "/api/tenants/{id}/members", params(("id" = String, Path, description = "The tenant id")), responses((status = 200, description = "The members and their roles"), (status = 404, description = "No such tenant of the caller")))]
async fn members(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let id = tenant_id(&id)?;
    access(&g, &caller, Some(id)).await?;
    let IdentityQueryResponse::Members(list) =
        ask(&g, &IdentityQuery::Members { tenant: id }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let items: Vec<Value> = list
        .iter()
        .map(|(uid, role, u)| {
            json!({"user_id": hex_id(*uid), "email": u.email, "name": u.name, "role": role.as_str()})
        })
        .collect();
    Ok(axum::Json(json!({"members": items})).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewMember {
    /// The member's email, or their `user_id`.
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    /// owner, admin, member or viewer.
    role: String,
}

/// Find a user by id or email; an unknown one is a 404.
async fn user_of(g: &Gateway, email: Option<&str>, id: Option<&str>) -> ApiResult<u128> {
    let q = match (email, id) {
        (_, Some(id)) => IdentityQuery::User {
            id: parse_id(id).ok_or_else(|| not_found("user"))?,
        },
        (Some(e), None) => IdentityQuery::UserByEmail {
            email: e.to_owned(),
        },
        (None, None) => return Err(ApiError::bad("give the member's email or user_id")),
    };
    match ask(g, &q).await? {
        IdentityQueryResponse::User(Some((id, _))) => Ok(id),
        _ => Err(not_found("user")),
    }
}

/// `POST /api/tenants/{id}/members`: add a user (by email or id) with a role.
#[utoipa::path(post, path = "/api/tenants/{id}/members", params(("id" = String, Path, description = "The tenant id")), request_body = NewMember, responses((status = 201, description = "Added"), (status = 403, description = "Only owners and admins manage members"), (status = 404, description = "No such tenant or user")))]
async fn add_member(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    caller.may_manage()?;
    let tenant = tenant_id(&id)?;
    let body: NewMember = json_body(req).await?;
    let role = role_of(&body.role)?;
    let user = user_of(&g, body.email.as_deref(), body.user_id.as_deref()).await?;
    propose(
        &g,
        &IdentityCommand::SetMember {
            tenant,
            actor: caller.user,
            user,
            role,
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"user_id": hex_id(user), "role": role.as_str()})),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct RoleBody {
    role: String,
}

/// `PUT /api/tenants/{id}/members/{user_id}`: change a member's role.
#[utoipa::path(put, path = "/api/tenants/{id}/members/{user_id}", params(("id" = String, Path, description = "The tenant id"), ("user_id" = String, Path, description = "The member")), request_body = RoleBody, responses((status = 200, description = "Changed"), (status = 403, description = "Not allowed"), (status = 409, description = "The last owner stays one")))]
async fn change_member(
    State(g): State<Arc<Gateway>>,
    Path((id, user_id)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    caller.may_manage()?;
    let tenant = tenant_id(&id)?;
    let user = parse_id(&user_id).ok_or_else(|| not_found("member"))?;
    let body: RoleBody = json_body(req).await?;
    let role = role_of(&body.role)?;
    // Only existing members: adding goes through POST.
    let view_of_target = ask(
        &g,
        &IdentityQuery::Access {
            user,
            tenant: Some(tenant),
        },
    )
    .await?;
    access(&g, &caller, Some(tenant)).await?;
    if !matches!(view_of_target, IdentityQueryResponse::Access(Some(_))) {
        return Err(not_found("member"));
    }
    propose(
        &g,
        &IdentityCommand::SetMember {
            tenant,
            actor: caller.user,
            user,
            role,
        },
    )
    .await?;
    Ok(axum::Json(json!({"user_id": hex_id(user), "role": role.as_str()})).into_response())
}

/// `DELETE /api/tenants/{id}/members/{user_id}`: remove a member (or leave, for oneself).
#[utoipa::path(delete, path = "/api/tenants/{id}/members/{user_id}", params(("id" = String, Path, description = "The tenant id"), ("user_id" = String, Path, description = "The member")), responses((status = 200, description = "Removed"), (status = 403, description = "Not allowed"), (status = 409, description = "The last owner stays")))]
async fn remove_member(
    State(g): State<Arc<Gateway>>,
    Path((id, user_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.may_manage()?;
    let tenant = tenant_id(&id)?;
    let user = parse_id(&user_id).ok_or_else(|| not_found("member"))?;
    propose(
        &g,
        &IdentityCommand::RemoveMember {
            tenant,
            actor: caller.user,
            user,
        },
    )
    .await?;
    Ok(axum::Json(json!({"status": "removed"})).into_response())
}

/// A string or a list of strings, as IAM documents write `Action` and `Resource`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A statement as sent: `effect`/`Effect` (`Allow` or `Deny`), `actions`/`Action`,
/// `resources`/`Resource`.
#[derive(Deserialize, utoipa::ToSchema)]
struct StatementBody {
    #[serde(alias = "Effect")]
    effect: String,
    #[serde(alias = "Action", alias = "action")]
    actions: OneOrMany,
    #[serde(alias = "Resource", alias = "resource")]
    resources: OneOrMany,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewPolicy {
    name: String,
    #[serde(alias = "Statement")]
    statements: Vec<StatementBody>,
}

fn statement_of(i: usize, s: StatementBody) -> ApiResult<Statement> {
    let effect = match s.effect.to_ascii_lowercase().as_str() {
        "allow" => Effect::Allow,
        "deny" => Effect::Deny,
        other => {
            return Err(ApiError::bad(format!(
                "statement {i}: effect {other:?} is not Allow or Deny"
            )));
        }
    };
    Ok(Statement {
        effect,
        actions: s.actions.into_vec(),
        resources: s.resources.into_vec(),
    })
}

fn policy_json(id: u128, p: &Policy, attached: &[u128]) -> Value {
    let statements: Vec<Value> = p
        .statements
        .iter()
        .map(|s| {
            json!({
                "effect": match s.effect { Effect::Allow => "Allow", Effect::Deny => "Deny" },
                "actions": s.actions,
                "resources": s.resources,
            })
        })
        .collect();
    json!({
        "id": hex_id(id),
        "name": p.name,
        "tenant_id": hex_id(p.tenant),
        "statements": statements,
        "attached_to": attached.iter().map(|u| hex_id(*u)).collect::<Vec<_>>(),
        "created_at": rfc3339(p.created_ms),
    })
}

/// The caller's current tenant, where they manage policies (owners and admins only).
async fn managed_tenant(g: &Gateway, caller: &Caller) -> ApiResult<u128> {
    let view = access(g, caller, None).await?;
    if !view.role.manages() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only owners and admins manage policies",
        ));
    }
    Ok(view.tenant)
}

async fn policies_of(g: &Gateway, tenant: u128) -> ApiResult<Vec<(u128, Policy, Vec<u128>)>> {
    match ask(g, &IdentityQuery::Policies { tenant }).await? {
        IdentityQueryResponse::Policies(p) => Ok(p),
        _ => Err(ApiError::internal("unexpected answer")),
    }
}

/// `GET /api/iam/policies`: the policies of the caller's current tenant.
#[utoipa::path(get, path = "/api/iam/policies", responses((status = 200, description = "The tenant's policies"), (status = 403, description = "Owners and admins only")))]
async fn list_policies(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let tenant = managed_tenant(&g, &caller).await?;
    let items: Vec<Value> = policies_of(&g, tenant)
        .await?
        .iter()
        .map(|(id, p, a)| policy_json(*id, p, a))
        .collect();
    Ok(axum::Json(json!({"policies": items})).into_response())
}

/// `POST /api/iam/policies`: a new policy in the caller's current tenant.
#[utoipa::path(post, path = "/api/iam/policies", request_body = NewPolicy, responses((status = 201, description = "The policy"), (status = 400, description = "An invalid statement")))]
async fn create_policy(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    caller.may_manage()?;
    let body: NewPolicy = json_body(req).await?;
    let tenant = managed_tenant(&g, &caller).await?;
    let statements = body
        .statements
        .into_iter()
        .enumerate()
        .map(|(i, s)| statement_of(i, s))
        .collect::<ApiResult<Vec<_>>>()?;
    let IdentityResponse::Created { id } = propose(
        &g,
        &IdentityCommand::CreatePolicy {
            tenant,
            actor: caller.user,
            name: body.name.clone(),
            statements: statements.clone(),
        },
    )
    .await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let p = Policy {
        tenant,
        name: body.name,
        statements,
        created_ms: cairn_master::dataplane::wall_ms(),
    };
    Ok((StatusCode::CREATED, axum::Json(policy_json(id, &p, &[]))).into_response())
}

async fn find_policy(g: &Gateway, tenant: u128, id: &str) -> ApiResult<(u128, Policy, Vec<u128>)> {
    let id = parse_id(id).ok_or_else(|| not_found("policy"))?;
    policies_of(g, tenant)
        .await?
        .into_iter()
        .find(|(p, _, _)| *p == id)
        .ok_or_else(|| not_found("policy"))
}

/// `GET /api/iam/policies/{id}`.
#[utoipa::path(get, path = "/api/iam/policies/{id}", params(("id" = String, Path, description = "The policy id")), responses((status = 200, description = "The policy"), (status = 404, description = "No such policy in the caller's tenant")))]
async fn show_policy(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let tenant = managed_tenant(&g, &caller).await?;
    let (id, p, a) = find_policy(&g, tenant, &id).await?;
    Ok(axum::Json(policy_json(id, &p, &a)).into_response())
}

/// `DELETE /api/iam/policies/{id}`: the policy and its attachments.
#[utoipa::path(delete, path = "/api/iam/policies/{id}", params(("id" = String, Path, description = "The policy id")), responses((status = 200, description = "Deleted"), (status = 404, description = "No such policy in the caller's tenant")))]
async fn delete_policy(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.may_manage()?;
    let tenant = managed_tenant(&g, &caller).await?;
    let policy = parse_id(&id).ok_or_else(|| not_found("policy"))?;
    propose(
        &g,
        &IdentityCommand::DeletePolicy {
            tenant,
            actor: caller.user,
            policy,
        },
    )
    .await?;
    Ok(axum::Json(json!({"status": "deleted"})).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct AttachBody {
    user_id: String,
}

async fn attach_or_detach(g: &Gateway, req: Request, id: &str, on: bool) -> ApiResult<Response> {
    let caller = authenticate(g, req.headers()).await?;
    caller.may_manage()?;
    let body: AttachBody = json_body(req).await?;
    let tenant = managed_tenant(g, &caller).await?;
    let policy = parse_id(id).ok_or_else(|| not_found("policy"))?;
    let user = parse_id(&body.user_id).ok_or_else(|| not_found("member"))?;
    propose(
        g,
        &IdentityCommand::AttachPolicy {
            tenant,
            actor: caller.user,
            policy,
            user,
            on,
        },
    )
    .await?;
    Ok(
        axum::Json(json!({"policy_id": hex_id(policy), "user_id": hex_id(user), "attached": on}))
            .into_response(),
    )
}

/// `POST /api/iam/policies/{id}/attach`: attach to a member of the tenant.
#[utoipa::path(post, path = "/api/iam/policies/{id}/attach", params(("id" = String, Path, description = "The policy id")), request_body = AttachBody, responses((status = 200, description = "Attached"), (status = 404, description = "No such policy or member")))]
async fn attach(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    attach_or_detach(&g, req, &id, true).await
}

/// `POST /api/iam/policies/{id}/detach`.
#[utoipa::path(post, path = "/api/iam/policies/{id}/detach", params(("id" = String, Path, description = "The policy id")), request_body = AttachBody, responses((status = 200, description = "Detached"), (status = 404, description = "No such policy, member or attachment")))]
async fn detach(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    attach_or_detach(&g, req, &id, false).await
}

/// The routes, to merge into the `/api` router.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/tenants", get(list).post(create))
        .route("/tenants/{id}", get(show))
        .route("/tenants/{id}/switch", post(switch))
        .route("/tenants/{id}/members", get(members).post(add_member))
        .route(
            "/tenants/{id}/members/{user_id}",
            axum::routing::put(change_member).delete(remove_member),
        )
        .route("/iam/policies", get(list_policies).post(create_policy))
        .route("/iam/policies/{id}", get(show_policy).delete(delete_policy))
        .route("/iam/policies/{id}/attach", post(attach))
        .route("/iam/policies/{id}/detach", post(detach))
}

/// The OpenAPI paths of these routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list,
    create,
    show,
    switch,
    members,
    add_member,
    change_member,
    remove_member,
    list_policies,
    create_policy,
    show_policy,
    delete_policy,
    attach,
    detach
))]
pub(crate) struct TenantDoc;
