//! Message queues under `/api/queues` (`cairn_master::queues`): create and configure queues,
//! send, receive with long polling, ack, change visibility, purge. A sent message is committed
//! on a majority before the send answers; a received one is hidden for its visibility timeout
//! and comes back unless acked with its latest receipt.
//!
//! Reading queues takes `queues:list` / `queues:get` (any member by default); sending,
//! receiving and acking take `queues:send`, `queues:receive`, `queues:ack` (members and up);
//! creating, changing, purging and deleting take `queues:create`, `queues:update`,
//! `queues:purge`, `queues:delete` (admins and the owner). API keys need `storage:read` to
//! read and `storage:write` for the rest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_engine::state::Rejection;
use cairn_master::dataplane::wall_ms;
use cairn_master::policy::ActionClass;
use cairn_master::queues::{
    BATCH_MAX, Delivered, MESSAGE_MAX, NewMessage, Queue, QueueCommand, QueueQuery,
    QueueQueryResponse, QueueRefusal, QueueResponse, QueueService, QueueSettings, Receipt,
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

/// Longest long poll (SQS's).
pub const WAIT_MAX_S: u64 = 20;
/// How often a long poll looks again when no send on this gateway woke it (sends through
/// other gateways, visibility timeouts ending).
const POLL: Duration = Duration::from_millis(200);
/// Largest send request: a full batch of the largest messages, JSON-escaped.
const SEND_BODY_MAX: usize = 4 * BATCH_MAX * MESSAGE_MAX as usize;

/// Long polls waiting on a queue, woken when a send through this gateway commits.
#[derive(Debug, Default)]
pub struct Waiters(parking_lot::Mutex<HashMap<u128, Arc<tokio::sync::Notify>>>);

impl Waiters {
    fn of(&self, queue: u128) -> Arc<tokio::sync::Notify> {
        self.0.lock().entry(queue).or_default().clone()
    }

    pub(crate) fn wake(&self, queue: u128) {
        if let Some(n) = self.0.lock().get(&queue) {
            n.notify_waiters();
        }
    }
}

/// The JSON error of each refusal of the queue service.
fn refused(r: Rejection) -> ApiError {
    match r.kind::<QueueRefusal>() {
        Some(QueueRefusal::NoSuchQueue | QueueRefusal::InvalidReceipt) => {
            ApiError::new(StatusCode::NOT_FOUND, r.message)
        }
        Some(QueueRefusal::AlreadyExists | QueueRefusal::NotInFlight) => {
            ApiError::new(StatusCode::CONFLICT, r.message)
        }
        Some(QueueRefusal::InvalidArgument | QueueRefusal::LimitExceeded) | None => {
            ApiError::bad(r.message)
        }
    }
}

async fn queue_command(g: &Gateway, c: &QueueCommand) -> ApiResult<QueueResponse> {
    service_command::<QueueService>(g, c, refused).await
}

pub(crate) async fn queue_query(g: &Gateway, q: &QueueQuery) -> ApiResult<QueueQueryResponse> {
    service_query::<QueueService>(g, q).await
}

/// A queue of the caller's tenant, by id (anything else is "no such queue").
async fn tenant_queue(g: &Gateway, tenant: u128, id: &str) -> ApiResult<(u128, Queue)> {
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "no such queue");
    let id = parse_id(id).ok_or_else(missing)?;
    match queue_query(g, &QueueQuery::Queue { id }).await? {
        QueueQueryResponse::Queue(Some(q)) if q.tenant == tenant && !q.deleting => Ok((id, q)),
        _ => Err(missing()),
    }
}

/// Authorise `action` on the queue `id` of the caller's tenant.
async fn on_queue(
    g: &Gateway,
    headers: &HeaderMap,
    id: &str,
    action: &str,
    class: ActionClass,
) -> ApiResult<(Principal, u128, Queue)> {
    // The tenant comes first (to find the queue), then the action on its name, so a policy
    // may allow it on some queues only.
    let p = caller(g, headers, class).await?;
    let (qid, q) = tenant_queue(g, p.tenant, id).await?;
    may(&p, action, class, &format!("queues/{}", q.name))?;
    Ok((p, qid, q))
}

fn secs(ms: u64) -> u64 {
    ms / 1000
}

pub(crate) fn queue_json(id: u128, q: &Queue) -> Value {
    let s = &q.settings;
    json!({
        "id": hex_id(id),
        "name": q.name,
        "fifo": q.fifo,
        "created_at": rfc3339(q.created_ms),
        "messages": q.depth,
        "settings": {
            "visibility_timeout_seconds": secs(s.visibility_timeout_ms),
            "retention_seconds": secs(s.retention_ms),
            "max_receives": s.max_receives,
            "dead_letter_queue": s.dead_letter.map(hex_id),
            "max_message_bytes": s.max_message_bytes,
            "delay_seconds": secs(s.delay_ms),
            "content_based_deduplication": s.content_dedup,
        },
    })
}

/// Settings as requests give them (seconds; every field optional: absent ones keep their
/// value, or the default for a new queue).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SettingsIn {
    visibility_timeout_seconds: Option<u64>,
    retention_seconds: Option<u64>,
    /// With `dead_letter_queue`: receives after which a message moves there.
    max_receives: Option<u32>,
    /// The id or name of a queue of the same tenant and kind (`""` removes it).
    dead_letter_queue: Option<String>,
    max_message_bytes: Option<u32>,
    delay_seconds: Option<u64>,
    /// FIFO: deduplicate sends without a deduplication id by the body's SHA-256.
    content_based_deduplication: Option<bool>,
}

async fn settings(
    g: &Gateway,
    tenant: u128,
    base: QueueSettings,
    s: SettingsIn,
) -> ApiResult<QueueSettings> {
    let ms = |v: Option<u64>, old: u64| -> ApiResult<u64> {
        match v {
            None => Ok(old),
            Some(v) => v
                .checked_mul(1000)
                .ok_or_else(|| ApiError::bad("a duration is too large")),
        }
    };
    let dead_letter = match s.dead_letter_queue.as_deref() {
        None => base.dead_letter,
        Some("") => None,
        Some(named) => Some(find_queue(g, tenant, named).await?.0),
    };
    let max_receives = match (s.max_receives, &s.dead_letter_queue) {
        (Some(n), _) => Some(n),
        (None, Some(d)) if d.is_empty() => None,
        (None, _) => base.max_receives,
    };
    Ok(QueueSettings {
        visibility_timeout_ms: ms(s.visibility_timeout_seconds, base.visibility_timeout_ms)?,
        retention_ms: ms(s.retention_seconds, base.retention_ms)?,
        max_receives,
        dead_letter,
        max_message_bytes: s.max_message_bytes.unwrap_or(base.max_message_bytes),
        delay_ms: ms(s.delay_seconds, base.delay_ms)?,
        content_dedup: s.content_based_deduplication.unwrap_or(base.content_dedup),
    })
}

/// A queue of the tenant by id or name (a 400 naming it when there is none: the caller names
/// it as a setting or a target).
pub(crate) async fn find_queue(g: &Gateway, tenant: u128, named: &str) -> ApiResult<(u128, Queue)> {
    let QueueQueryResponse::Queues(all) = queue_query(g, &QueueQuery::Queues { tenant }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    all.into_iter()
        .find(|(id, q)| hex_id(*id) == named || q.name == named)
        .ok_or_else(|| ApiError::bad(format!("the tenant has no queue {named}")))
}

/// `GET /api/queues`: the tenant's queues.
#[utoipa::path(get, path = "/api/queues", responses((status = 200, description = "queues: the tenant's queues with their settings and depth")))]
async fn list(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let p = allowed(&g, &headers, "queues:list", ActionClass::Read, "queues/*").await?;
    let QueueQueryResponse::Queues(all) =
        queue_query(&g, &QueueQuery::Queues { tenant: p.tenant }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let queues: Vec<Value> = all.iter().map(|(id, q)| queue_json(*id, q)).collect();
    Ok(axum::Json(json!({ "queues": queues })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewQueue {
    /// 1-80 letters, digits, `-` or `_`; a FIFO queue's name ends in `.fifo`.
    name: String,
    #[serde(default)]
    fifo: bool,
    #[serde(flatten)]
    #[schema(inline)]
    settings: SettingsIn,
}

/// `POST /api/queues`: a new queue.
#[utoipa::path(post, path = "/api/queues", request_body = NewQueue, responses((status = 201, description = "The queue"), (status = 409, description = "A queue of that name exists")))]
async fn create(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let p = caller(&g, req.headers(), ActionClass::Manage).await?;
    let body: NewQueue = json_body(req).await?;
    may(
        &p,
        "queues:create",
        ActionClass::Manage,
        &format!("queues/{}", body.name),
    )?;
    let settings = settings(&g, p.tenant, QueueSettings::default(), body.settings).await?;
    let QueueResponse::Created { id } = queue_command(
        &g,
        &QueueCommand::Create {
            tenant: p.tenant,
            name: body.name,
            fifo: body.fifo,
            settings,
        },
    )
    .await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let (id, q) = tenant_queue(&g, p.tenant, &hex_id(id)).await?;
    Ok((StatusCode::CREATED, axum::Json(queue_json(id, &q))).into_response())
}

/// `GET /api/queues/{id}`.
#[utoipa::path(get, path = "/api/queues/{id}", params(("id" = String, Path, description = "The queue id (32 hex digits)")), responses((status = 200, description = "The queue"), (status = 404, description = "No such queue")))]
async fn show(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, id, q) = on_queue(&g, &headers, &id, "queues:get", ActionClass::Read).await?;
    Ok(axum::Json(queue_json(id, &q)).into_response())
}

/// `PUT /api/queues/{id}`: change settings (fields left out keep their value).
#[utoipa::path(put, path = "/api/queues/{id}", params(("id" = String, Path, description = "The queue id")), request_body = SettingsIn, responses((status = 200, description = "The queue"), (status = 404, description = "No such queue")))]
async fn update(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let (p, id, q) = on_queue(&g, req.headers(), &id, "queues:update", ActionClass::Manage).await?;
    let body: SettingsIn = json_body(req).await?;
    let settings = settings(&g, p.tenant, q.settings, body).await?;
    queue_command(
        &g,
        &QueueCommand::Update {
            tenant: p.tenant,
            id,
            settings,
        },
    )
    .await?;
    let (id, q) = tenant_queue(&g, p.tenant, &hex_id(id)).await?;
    Ok(axum::Json(queue_json(id, &q)).into_response())
}

/// Repeat a batched removal until nothing remains; how many went.
async fn remove_all(g: &Gateway, c: QueueCommand) -> ApiResult<u64> {
    let mut total = 0;
    loop {
        match queue_command(g, &c).await? {
            QueueResponse::Removed { removed, more } => {
                total += removed;
                if !more {
                    return Ok(total);
                }
            }
            _ => return Err(ApiError::internal("unexpected answer")),
        }
    }
}

/// `DELETE /api/queues/{id}`: the queue and its messages.
#[utoipa::path(delete, path = "/api/queues/{id}", params(("id" = String, Path, description = "The queue id")), responses((status = 204, description = "Deleted"), (status = 404, description = "No such queue")))]
async fn delete(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (p, id, _) = on_queue(&g, &headers, &id, "queues:delete", ActionClass::Manage).await?;
    remove_all(
        &g,
        QueueCommand::Delete {
            tenant: p.tenant,
            id,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/queues/{id}/purge`: remove every message.
#[utoipa::path(post, path = "/api/queues/{id}/purge", params(("id" = String, Path, description = "The queue id")), responses((status = 200, description = "removed: how many messages went"), (status = 404, description = "No such queue")))]
async fn purge(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (p, id, _) = on_queue(&g, &headers, &id, "queues:purge", ActionClass::Manage).await?;
    let removed = remove_all(
        &g,
        QueueCommand::Purge {
            tenant: p.tenant,
            queue: id,
        },
    )
    .await?;
    Ok(axum::Json(json!({ "removed": removed })).into_response())
}

/// A message as a send gives it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MessageIn {
    /// Text, up to the queue's largest message (256 KiB at most) with the attributes.
    body: String,
    /// Up to 10 string attributes.
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    /// Standard queues: hide it this long first (else the queue's delay), at most 900.
    delay_seconds: Option<u64>,
    /// FIFO queues: the message group (required).
    group: Option<String>,
    /// FIFO queues: a resend of this id within 5 minutes is dropped (required unless the
    /// queue deduplicates by content).
    deduplication_id: Option<String>,
}

fn sha256_hex(b: &[u8]) -> String {
    cairn_master::buckets::hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// `POST /api/queues/{id}/messages`: send one message (`{"body": ...}`) or a batch of up to
/// 10 (`{"messages": [...]}`), all or none.
#[utoipa::path(post, path = "/api/queues/{id}/messages", params(("id" = String, Path, description = "The queue id")), request_body = MessageIn, responses((status = 201, description = "messages: each one's id, and whether it repeated a deduplication id"), (status = 400, description = "A message outside the limits"), (status = 404, description = "No such queue")))]
async fn send(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let (p, id, q) = on_queue(&g, req.headers(), &id, "queues:send", ActionClass::Write).await?;
    let raw: Value = json_body_max(req, SEND_BODY_MAX).await?;
    let (batch, given): (bool, Vec<MessageIn>) = match raw.get("messages") {
        Some(list) => (
            true,
            serde_json::from_value(list.clone())
                .map_err(|e| ApiError::bad(format!("invalid messages: {e}")))?,
        ),
        None => (
            false,
            vec![
                serde_json::from_value(raw)
                    .map_err(|e| ApiError::bad(format!("invalid message: {e}")))?,
            ],
        ),
    };
    if given.is_empty() || given.len() > BATCH_MAX {
        return Err(ApiError::bad(format!(
            "a send holds 1 to {BATCH_MAX} messages"
        )));
    }
    let mut messages = Vec::with_capacity(given.len());
    for m in given {
        let dedup = match m.deduplication_id {
            None if q.fifo && q.settings.content_dedup => Some(sha256_hex(m.body.as_bytes())),
            d => d,
        };
        messages.push(NewMessage {
            body: m.body,
            attributes: m.attributes.into_iter().collect(),
            delay_ms: match m.delay_seconds {
                Some(s) => Some(
                    s.checked_mul(1000)
                        .ok_or_else(|| ApiError::bad("the delay is at most 900 seconds"))?,
                ),
                None => None,
            },
            group: m.group,
            dedup,
        });
    }
    let count = messages.len();
    let QueueResponse::Sent(sent) = queue_command(
        &g,
        &QueueCommand::Send {
            tenant: p.tenant,
            queue: id,
            messages,
        },
    )
    .await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    g.metrics.queue_op("send", count as u64);
    g.queue_waiters.wake(id);
    let out: Vec<Value> = sent
        .iter()
        .map(|(seq, duplicate)| json!({"id": format!("{seq:016x}"), "duplicate": duplicate}))
        .collect();
    let body = if batch {
        json!({ "messages": out })
    } else {
        out.into_iter().next().unwrap_or(Value::Null)
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
struct ReceiveParams {
    /// 1 to 10 (default 1).
    count: Option<u32>,
    /// Seconds to wait for a message when none is there (0 to 20, default 0).
    wait: Option<u64>,
    /// Seconds to hide what is received (default: the queue's visibility timeout).
    visibility: Option<u64>,
}

fn delivered_json(d: &Delivered) -> Value {
    let m = &d.message;
    json!({
        "id": format!("{:016x}", d.seq),
        "receipt": d.receipt.encode(),
        "body": m.body,
        "attributes": m.attributes.iter().cloned().collect::<BTreeMap<_, _>>(),
        "receive_count": m.receive_count,
        "sent_at": rfc3339(m.sent_ms),
        "first_received_at": m.first_received_ms.map(rfc3339),
        "visible_at": rfc3339(m.visible_ms),
        "group": m.group,
    })
}

/// `GET /api/queues/{id}/messages?count=N&wait=S&visibility=S`: receive up to N messages,
/// waiting up to S seconds for the first; each comes with a receipt for its ack.
#[utoipa::path(get, path = "/api/queues/{id}/messages", params(("id" = String, Path, description = "The queue id"), ReceiveParams), responses((status = 200, description = "messages: id, receipt, body, attributes, receive_count, sent_at"), (status = 404, description = "No such queue")))]
async fn receive(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    Query(params): Query<ReceiveParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let max = params.count.unwrap_or(1);
    if !(1..=BATCH_MAX as u32).contains(&max) {
        return Err(ApiError::bad(format!("count is 1 to {BATCH_MAX}")));
    }
    let wait = params.wait.unwrap_or(0);
    if wait > WAIT_MAX_S {
        return Err(ApiError::bad(format!("wait is 0 to {WAIT_MAX_S} seconds")));
    }
    let visibility_ms = match params.visibility {
        Some(s) => Some(
            s.checked_mul(1000)
                .ok_or_else(|| ApiError::bad("the visibility timeout is at most 43200 seconds"))?,
        ),
        None => None,
    };
    let (p, id, _) = on_queue(&g, &headers, &id, "queues:receive", ActionClass::Write).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let notify = g.queue_waiters.of(id);
    let got = loop {
        // Subscribe before looking, so a send that commits in between still wakes us.
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let ready = matches!(
            queue_query(
                &g,
                &QueueQuery::Ready {
                    queue: id,
                    now_ms: wall_ms(),
                },
            )
            .await?,
            QueueQueryResponse::Ready(true)
        );
        if ready || wait == 0 {
            let QueueResponse::Received(got) = queue_command(
                &g,
                &QueueCommand::Receive {
                    tenant: p.tenant,
                    queue: id,
                    max,
                    visibility_ms,
                },
            )
            .await?
            else {
                return Err(ApiError::internal("unexpected answer"));
            };
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                break got;
            }
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break Vec::new();
        }
        let nap = (deadline - now).min(POLL);
        let _ = tokio::time::timeout(nap, woken).await;
    };
    g.metrics.queue_op("receive", got.len() as u64);
    let messages: Vec<Value> = got.iter().map(delivered_json).collect();
    Ok(axum::Json(json!({ "messages": messages })).into_response())
}

fn receipt(s: &str) -> ApiResult<Receipt> {
    Receipt::parse(s).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such receipt"))
}

/// `DELETE /api/queues/{id}/messages/{receipt}`: ack a received message (it is gone for good).
#[utoipa::path(delete, path = "/api/queues/{id}/messages/{receipt}", params(("id" = String, Path, description = "The queue id"), ("receipt" = String, Path, description = "The receipt of the message's latest receive")), responses((status = 204, description = "Acked"), (status = 404, description = "No such queue, or the receipt is not the message's latest")))]
async fn ack_one(
    State(g): State<Arc<Gateway>>,
    Path((id, r)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (p, id, _) = on_queue(&g, &headers, &id, "queues:ack", ActionClass::Write).await?;
    let QueueResponse::Acked(res) = queue_command(
        &g,
        &QueueCommand::Ack {
            tenant: p.tenant,
            queue: id,
            receipts: vec![receipt(&r)?],
        },
    )
    .await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    match res.into_iter().next() {
        Some(Ok(())) => {
            g.metrics.queue_op("ack", 1);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Some(Err(why)) => Err(ApiError::new(StatusCode::NOT_FOUND, why)),
        None => Err(ApiError::internal("unexpected answer")),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Receipts {
    /// Up to 10 receipts.
    receipts: Vec<String>,
}

/// `POST /api/queues/{id}/ack` (`{"receipts": [...]}`): ack up to 10 messages; each one's
/// outcome.
#[utoipa::path(post, path = "/api/queues/{id}/ack", params(("id" = String, Path, description = "The queue id")), request_body = Receipts, responses((status = 200, description = "results: per receipt, acked or why not"), (status = 404, description = "No such queue")))]
async fn ack_batch(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let (p, id, _) = on_queue(&g, req.headers(), &id, "queues:ack", ActionClass::Write).await?;
    let body: Receipts = json_body(req).await?;
    if body.receipts.is_empty() || body.receipts.len() > BATCH_MAX {
        return Err(ApiError::bad(format!(
            "an ack names 1 to {BATCH_MAX} receipts"
        )));
    }
    // A receipt that does not parse is answered as one that does not match.
    let parsed: Vec<Option<Receipt>> = body.receipts.iter().map(|r| Receipt::parse(r)).collect();
    let valid: Vec<Receipt> = parsed.iter().flatten().copied().collect();
    let mut outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        let QueueResponse::Acked(res) = queue_command(
            &g,
            &QueueCommand::Ack {
                tenant: p.tenant,
                queue: id,
                receipts: valid,
            },
        )
        .await?
        else {
            return Err(ApiError::internal("unexpected answer"));
        };
        res
    }
    .into_iter();
    let results: Vec<Value> = body
        .receipts
        .iter()
        .zip(&parsed)
        .map(|(r, p)| {
            let outcome = match p {
                Some(_) => outcomes
                    .next()
                    .unwrap_or_else(|| Err("no answer".to_owned())),
                None => Err("not a receipt".to_owned()),
            };
            match outcome {
                Ok(()) => json!({"receipt": r, "acked": true}),
                Err(why) => json!({"receipt": r, "acked": false, "error": why}),
            }
        })
        .collect();
    let acked = results.iter().filter(|r| r["acked"] == true).count();
    g.metrics.queue_op("ack", acked as u64);
    Ok(axum::Json(json!({ "results": results })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Visibility {
    /// Hide the message this long from now (0: receivable at once), at most 43200.
    timeout_seconds: u64,
}

/// `POST /api/queues/{id}/messages/{receipt}/visibility`: extend (or end) a received
/// message's visibility timeout.
#[utoipa::path(post, path = "/api/queues/{id}/messages/{receipt}/visibility", params(("id" = String, Path, description = "The queue id"), ("receipt" = String, Path, description = "The receipt")), request_body = Visibility, responses((status = 204, description = "Changed"), (status = 404, description = "No such queue or receipt"), (status = 409, description = "The message is not in flight")))]
async fn visibility(
    State(g): State<Arc<Gateway>>,
    Path((id, r)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let (p, id, _) = on_queue(&g, req.headers(), &id, "queues:receive", ActionClass::Write).await?;
    let body: Visibility = json_body(req).await?;
    let timeout_ms = body
        .timeout_seconds
        .checked_mul(1000)
        .ok_or_else(|| ApiError::bad("the visibility timeout is at most 43200 seconds"))?;
    queue_command(
        &g,
        &QueueCommand::ChangeVisibility {
            tenant: p.tenant,
            queue: id,
            receipt: receipt(&r)?,
            timeout_ms,
        },
    )
    .await?;
    if timeout_ms == 0 {
        g.queue_waiters.wake(id);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/queues", get(list).post(create))
        .route("/queues/{id}", get(show).put(update).delete(delete))
        .route("/queues/{id}/purge", post(purge))
        .route("/queues/{id}/messages", get(receive).post(send))
        .route(
            "/queues/{id}/messages/{receipt}",
            axum::routing::delete(ack_one),
        )
        .route(
            "/queues/{id}/messages/{receipt}/visibility",
            post(visibility),
        )
        .route("/queues/{id}/ack", post(ack_batch))
}

/// The OpenAPI paths of these routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list, create, show, update, delete, purge, send, receive, ack_one, ack_batch, visibility
))]
pub(crate) struct QueuesDoc;
