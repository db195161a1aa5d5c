//! Topics under `/api/topics` (`cairn_master::topics`): publish once, and every subscribed
//! queue whose filter policy matches gets the message, all in the one command that publishes.
//!
//! Reading takes `topics:list` / `topics:get` (any member); publishing `topics:publish`
//! (members and up); creating and deleting topics and subscriptions `topics:create`,
//! `topics:delete`, `topics:subscribe`, `topics:unsubscribe` (admins and the owner). Policies
//! name topics as `topics/NAME`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use cairn_engine::state::Rejection;
use cairn_master::policy::ActionClass;
use cairn_master::topics::{
    Matcher, Subscription, Target, Topic, TopicCommand, TopicQuery, TopicQueryResponse,
    TopicRefusal, TopicResponse, TopicService,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::auth::Principal;
use crate::kernel::{
    ApiError, ApiResult, hex_id, json_body, json_body_max, parse_id, rfc3339, service_command,
    service_query,
};
use crate::storage::{allowed, caller, may};

/// Largest publish request (a 256 KiB message, JSON-escaped).
const PUBLISH_BODY_MAX: usize = 1 << 20;

/// The JSON error of each refusal of the topic service.
fn refused(r: Rejection) -> ApiError {
    match r.kind::<TopicRefusal>() {
        Some(TopicRefusal::NoSuchTopic | TopicRefusal::NoSuchSubscription) => {
            ApiError::new(StatusCode::NOT_FOUND, r.message)
        }
        Some(TopicRefusal::AlreadyExists) => ApiError::new(StatusCode::CONFLICT, r.message),
        Some(TopicRefusal::InvalidArgument | TopicRefusal::LimitExceeded) | None => {
            ApiError::bad(r.message)
        }
    }
}

async fn topic_command(g: &Gateway, c: &TopicCommand) -> ApiResult<TopicResponse> {
    service_command::<TopicService>(g, c, refused).await
}

pub(crate) async fn topic_query(g: &Gateway, q: &TopicQuery) -> ApiResult<TopicQueryResponse> {
    service_query::<TopicService>(g, q).await
}

fn topic_json(id: u128, t: &Topic) -> Value {
    json!({
        "id": hex_id(id),
        "name": t.name,
        "created_at": rfc3339(t.created_ms),
        "published": t.published,
    })
}

fn matcher_json(m: &Matcher) -> Value {
    match m {
        Matcher::Exact(s) => json!(s),
        Matcher::Number(n) => json!(n),
        Matcher::Prefix(p) => json!({"prefix": p}),
        Matcher::Suffix(p) => json!({"suffix": p}),
        Matcher::AnythingBut(v) => json!({"anything-but": v}),
        Matcher::Exists(b) => json!({"exists": b}),
        Matcher::Numeric(bounds) => {
            let flat: Vec<Value> = bounds
                .iter()
                .flat_map(|(op, n)| [json!(op), json!(n)])
                .collect();
            json!({ "numeric": flat })
        }
    }
}

fn subscription_json(id: u128, s: &Subscription) -> Value {
    let Target::Queue { queue } = &s.target;
    json!({
        "id": hex_id(id),
        "protocol": "queue",
        "queue": hex_id(*queue),
        "filter_policy": s.filter.as_ref().map(|f| {
            f.iter()
                .map(|(k, alts)| (k.clone(), Value::Array(alts.iter().map(matcher_json).collect())))
                .collect::<serde_json::Map<String, Value>>()
        }),
        "created_at": rfc3339(s.created_ms),
        "delivered": s.delivered,
    })
}

/// A filter policy from SNS's JSON shape: `{"attr": [alternative, ...], ...}`.
fn parse_policy(v: &Value) -> ApiResult<Vec<(String, Vec<Matcher>)>> {
    let bad = |m: String| ApiError::bad(format!("filter_policy: {m}"));
    let obj = v
        .as_object()
        .ok_or_else(|| bad("an object of attribute names to lists of alternatives".into()))?;
    let mut out = Vec::new();
    for (name, alts) in obj {
        let list = match alts {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        let mut ms = Vec::new();
        for a in &list {
            ms.push(match a {
                Value::String(s) => Matcher::Exact(s.clone()),
                Value::Number(n) => Matcher::Number(
                    n.as_f64()
                        .ok_or_else(|| bad(format!("{name}: not a number")))?,
                ),
                Value::Object(o) if o.len() == 1 => {
                    let (op, arg) = o.iter().next().ok_or_else(|| bad(name.clone()))?;
                    let text = |arg: &Value| {
                        arg.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| bad(format!("{name}: {op} takes a string")))
                    };
                    match op.as_str() {
                        "prefix" => Matcher::Prefix(text(arg)?),
                        "suffix" => Matcher::Suffix(text(arg)?),
                        "exists" => {
                            Matcher::Exists(arg.as_bool().ok_or_else(|| {
                                bad(format!("{name}: exists takes true or false"))
                            })?)
                        }
                        "anything-but" => Matcher::AnythingBut(match arg {
                            Value::Array(items) => {
                                items.iter().map(text).collect::<ApiResult<Vec<_>>>()?
                            }
                            one => vec![text(one)?],
                        }),
                        "numeric" => {
                            let items = arg.as_array().ok_or_else(|| {
                                bad(format!("{name}: numeric takes [op, n] or [op, n, op, n]"))
                            })?;
                            if items.len() != 2 && items.len() != 4 {
                                return Err(bad(format!(
                                    "{name}: numeric takes [op, n] or [op, n, op, n]"
                                )));
                            }
                            let mut bounds = Vec::new();
                            for pair in items.chunks(2) {
                                let op = pair[0].as_str().ok_or_else(|| {
                                    bad(format!("{name}: a numeric operator is a string"))
                                })?;
                                let n = pair[1].as_f64().ok_or_else(|| {
                                    bad(format!("{name}: a numeric bound is a number"))
                                })?;
                                bounds.push((op.to_owned(), n));
                            }
                            Matcher::Numeric(bounds)
                        }
                        other => {
                            return Err(bad(format!("{name}: unknown operator {other}")));
                        }
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "{name}: an alternative is a string, a number or one operator object"
                    )));
                }
            });
        }
        out.push((name.clone(), ms));
    }
    Ok(out)
}

/// A topic of the tenant by id or name (a 400 naming it when there is none: the caller names
/// it as a target).
pub(crate) async fn find_topic(g: &Gateway, tenant: u128, named: &str) -> ApiResult<(u128, Topic)> {
    let TopicQueryResponse::Topics(all) = topic_query(g, &TopicQuery::Topics { tenant }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    all.into_iter()
        .find(|(id, t)| hex_id(*id) == named || t.name == named)
        .ok_or_else(|| ApiError::bad(format!("the tenant has no topic {named}")))
}

/// A topic of the caller's tenant, by id (anything else is "no such topic").
async fn tenant_topic(g: &Gateway, tenant: u128, id: &str) -> ApiResult<(u128, Topic)> {
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "no such topic");
    let id = parse_id(id).ok_or_else(missing)?;
    match topic_query(g, &TopicQuery::Topic { id }).await? {
        TopicQueryResponse::Topic(Some(t)) if t.tenant == tenant => Ok((id, t)),
        _ => Err(missing()),
    }
}

async fn on_topic(
    g: &Gateway,
    headers: &HeaderMap,
    id: &str,
    action: &str,
    class: ActionClass,
) -> ApiResult<(Principal, u128, Topic)> {
    let p = caller(g, headers, class).await?;
    let (tid, t) = tenant_topic(g, p.tenant, id).await?;
    may(&p, action, class, &format!("topics/{}", t.name))?;
    Ok((p, tid, t))
}

/// `GET /api/topics`: the tenant's topics.
#[utoipa::path(get, path = "/api/topics", responses((status = 200, description = "topics: the tenant's topics")))]
async fn list(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let p = allowed(&g, &headers, "topics:list", ActionClass::Read, "topics/*").await?;
    let TopicQueryResponse::Topics(all) =
        topic_query(&g, &TopicQuery::Topics { tenant: p.tenant }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let topics: Vec<Value> = all.iter().map(|(id, t)| topic_json(*id, t)).collect();
    Ok(axum::Json(json!({ "topics": topics })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTopic {
    /// 1-256 letters, digits, `-` or `_`, unique in the tenant.
    name: String,
}

/// `POST /api/topics`: a new topic.
#[utoipa::path(post, path = "/api/topics", request_body = NewTopic, responses((status = 201, description = "The topic"), (status = 409, description = "A topic of that name exists")))]
async fn create(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let p = caller(&g, req.headers(), ActionClass::Manage).await?;
    let body: NewTopic = json_body(req).await?;
    may(
        &p,
        "topics:create",
        ActionClass::Manage,
        &format!("topics/{}", body.name),
    )?;
    let TopicResponse::Created { id } = topic_command(
        &g,
        &TopicCommand::Create {
            tenant: p.tenant,
            name: body.name,
        },
    )
    .await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let (id, t) = tenant_topic(&g, p.tenant, &hex_id(id)).await?;
    Ok((StatusCode::CREATED, axum::Json(topic_json(id, &t))).into_response())
}

/// `GET /api/topics/{id}`: the topic and its subscriptions.
#[utoipa::path(get, path = "/api/topics/{id}", params(("id" = String, Path, description = "The topic id (32 hex digits)")), responses((status = 200, description = "The topic"), (status = 404, description = "No such topic")))]
async fn show(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, id, t) = on_topic(&g, &headers, &id, "topics:get", ActionClass::Read).await?;
    let mut v = topic_json(id, &t);
    v["subscriptions"] = Value::Array(subscriptions(&g, id).await?);
    Ok(axum::Json(v).into_response())
}

async fn subscriptions(g: &Gateway, topic: u128) -> ApiResult<Vec<Value>> {
    let TopicQueryResponse::Subscriptions(subs) =
        topic_query(g, &TopicQuery::Subscriptions { topic }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    Ok(subs
        .iter()
        .map(|(id, s)| subscription_json(*id, s))
        .collect())
}

/// `DELETE /api/topics/{id}`: the topic and its subscriptions (the queues stay).
#[utoipa::path(delete, path = "/api/topics/{id}", params(("id" = String, Path, description = "The topic id")), responses((status = 204, description = "Deleted"), (status = 404, description = "No such topic")))]
async fn remove(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (p, id, _) = on_topic(&g, &headers, &id, "topics:delete", ActionClass::Manage).await?;
    topic_command(
        &g,
        &TopicCommand::Delete {
            tenant: p.tenant,
            id,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Publish {
    /// Text, up to 256 KiB with the attributes.
    body: String,
    /// String attributes, which subscriptions' filter policies look at.
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

/// `POST /api/topics/{id}/publish`: deliver to every matching subscription at once.
#[utoipa::path(post, path = "/api/topics/{id}/publish", params(("id" = String, Path, description = "The topic id")), request_body = Publish, responses((status = 201, description = "number: the message's number on the topic; delivered: the subscriptions (and queues) that got it"), (status = 404, description = "No such topic")))]
async fn publish(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let (p, id, _) = on_topic(&g, req.headers(), &id, "topics:publish", ActionClass::Write).await?;
    let body: Publish = json_body_max(req, PUBLISH_BODY_MAX).await?;
    let TopicResponse::Published { number, delivered } = topic_command(
        &g,
        &TopicCommand::Publish {
            tenant: p.tenant,
            topic: id,
            body: body.body,
            attributes: body.attributes.into_iter().collect(),
        },
    )
    .await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    for (_, queue, _) in &delivered {
        g.queue_waiters.wake(*queue);
    }
    g.metrics.queue_op("publish", 1);
    let out: Vec<Value> = delivered
        .iter()
        .map(|(sub, queue, seq)| {
            json!({"subscription": hex_id(*sub), "queue": hex_id(*queue), "message": format!("{seq:016x}")})
        })
        .collect();
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"number": number, "delivered": out})),
    )
        .into_response())
}

/// `GET /api/topics/{id}/subscriptions`.
#[utoipa::path(get, path = "/api/topics/{id}/subscriptions", params(("id" = String, Path, description = "The topic id")), responses((status = 200, description = "subscriptions: protocol, queue, filter_policy, delivered"), (status = 404, description = "No such topic")))]
async fn list_subscriptions(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, id, _) = on_topic(&g, &headers, &id, "topics:get", ActionClass::Read).await?;
    Ok(axum::Json(json!({ "subscriptions": subscriptions(&g, id).await? })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewSubscription {
    /// `queue` (webhook deliveries come with the webhook service).
    protocol: String,
    /// The queue's id or name (a standard queue of the tenant).
    queue: String,
    /// SNS's attribute filter policy: `{"attr": ["exact", {"prefix": "p"}, {"numeric": [">", 5]}, ...]}`.
    #[schema(value_type = Object)]
    filter_policy: Option<Value>,
}

/// `POST /api/topics/{id}/subscriptions`: deliver the topic's messages to a queue.
#[utoipa::path(post, path = "/api/topics/{id}/subscriptions", params(("id" = String, Path, description = "The topic id")), request_body = NewSubscription, responses((status = 201, description = "The subscription"), (status = 400, description = "Not a standard queue of the tenant, or a malformed filter policy"), (status = 404, description = "No such topic")))]
async fn subscribe(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let (p, id, _) = on_topic(
        &g,
        req.headers(),
        &id,
        "topics:subscribe",
        ActionClass::Manage,
    )
    .await?;
    let body: NewSubscription = json_body(req).await?;
    if body.protocol != "queue" {
        return Err(ApiError::bad(
            "protocol is \"queue\" (webhooks come with the webhook service)",
        ));
    }
    let filter = body.filter_policy.as_ref().map(parse_policy).transpose()?;
    let (queue, _) = crate::queues::find_queue(&g, p.tenant, &body.queue).await?;
    let TopicResponse::Created { id: sid } = topic_command(
        &g,
        &TopicCommand::Subscribe {
            tenant: p.tenant,
            topic: id,
            target: Target::Queue { queue },
            filter,
        },
    )
    .await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let subs = subscriptions(&g, id).await?;
    let made = subs
        .into_iter()
        .find(|s| s["id"] == hex_id(sid))
        .ok_or_else(|| ApiError::internal("the new subscription is missing"))?;
    Ok((StatusCode::CREATED, axum::Json(made)).into_response())
}

/// `DELETE /api/topics/{id}/subscriptions/{subscription}`.
#[utoipa::path(delete, path = "/api/topics/{id}/subscriptions/{subscription}", params(("id" = String, Path, description = "The topic id"), ("subscription" = String, Path, description = "The subscription id")), responses((status = 204, description = "Removed"), (status = 404, description = "No such topic or subscription")))]
async fn unsubscribe(
    State(g): State<Arc<Gateway>>,
    Path((id, sub)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (p, id, _) = on_topic(&g, &headers, &id, "topics:unsubscribe", ActionClass::Manage).await?;
    let sid = parse_id(&sub)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such subscription"))?;
    topic_command(
        &g,
        &TopicCommand::Unsubscribe {
            tenant: p.tenant,
            topic: id,
            id: sid,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/topics", get(list).post(create))
        .route("/topics/{id}", get(show).delete(remove))
        .route("/topics/{id}/publish", post(publish))
        .route(
            "/topics/{id}/subscriptions",
            get(list_subscriptions).post(subscribe),
        )
        .route(
            "/topics/{id}/subscriptions/{subscription}",
            delete(unsubscribe),
        )
}

/// The OpenAPI paths of these routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list,
    create,
    show,
    remove,
    publish,
    list_subscriptions,
    subscribe,
    unsubscribe
))]
pub(crate) struct TopicsDoc;
