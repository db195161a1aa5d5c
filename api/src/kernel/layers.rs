//! What every JSON router shares: audit entries for changes, rate-limit headers, JSON 404s
//! and 405s, and the client address.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_master::dataplane::command;

use crate::Gateway;
use crate::kernel::error::{ApiError, not_found};

tokio::task_local! {
    /// Who the current `/api` request acts for, as far as it is known (for the audit log).
    pub(crate) static ACTOR: Arc<parking_lot::Mutex<Option<String>>>;
    /// The caller's rate-limit window, once authenticated: (limit, remaining, retry after s).
    pub(crate) static RATE: Arc<parking_lot::Mutex<Option<(u32, u32, Option<u64>)>>>;
}

/// `X-RateLimit-*` (and `Retry-After` on a 429) for authenticated requests, unless a
/// stricter route limit already set them.
pub(crate) async fn caller_rate_headers(req: Request, next: axum::middleware::Next) -> Response {
    let rate = Arc::new(parking_lot::Mutex::new(None));
    let mut resp = RATE.scope(rate.clone(), next.run(req)).await;
    let Some((limit, left, retry)) = *rate.lock() else {
        return resp;
    };
    let h = resp.headers_mut();
    if !h.contains_key("x-ratelimit-limit") {
        h.insert("x-ratelimit-limit", header::HeaderValue::from(limit));
        h.insert("x-ratelimit-remaining", header::HeaderValue::from(left));
    }
    if let Some(r) = retry {
        h.insert(header::RETRY_AFTER, header::HeaderValue::from(r));
    }
    resp
}

/// Name the actor of the current request in its audit entry.
pub(crate) fn set_actor(actor: impl Into<String>) {
    let actor = actor.into();
    let _ = ACTOR.try_with(|a| *a.lock() = Some(actor));
}

/// Message traffic of queues and topics (sends, acks, visibility changes, publishes) is data,
/// not configuration:
/// auditing each message would double the log's work per message (a send would cost two
/// commits). Queue configuration changes (create, update, purge, delete) are audited.
const NOT_AUDITED: [&str; 5] = [
    "/topics/{id}/publish",
    "/queues/{id}/messages",
    "/queues/{id}/messages/{receipt}",
    "/queues/{id}/messages/{receipt}/visibility",
    "/queues/{id}/ack",
];

/// Every state-changing `/api` request (any method but GET and HEAD) leaves an audit entry:
/// actor, action (`METHOD /api/route/{param}`), resource (the path), client address, time and
/// outcome (`success` for 2xx, `denied` for 401/403/429, `failure` otherwise), appended to the
/// replicated log before the answer goes out.
pub(crate) async fn audit_layer(
    State(g): State<Arc<Gateway>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
    if NOT_AUDITED.iter().any(|r| route.ends_with(r)) {
        return next.run(req).await;
    }
    // The full path (a nested router sees it without the `/api` prefix).
    let resource = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| req.uri().path().to_owned(), |u| u.path().to_owned());
    let ip = client_ip(&req);
    let actor = Arc::new(parking_lot::Mutex::new(None));
    let resp = ACTOR.scope(actor.clone(), next.run(req)).await;
    let status = resp.status();
    let outcome = if status.is_success() {
        "success"
    } else if matches!(status.as_u16(), 401 | 403 | 429) {
        "denied"
    } else {
        "failure"
    };
    let entry = cairn_master::audit::NewEntry {
        actor: actor.lock().clone().unwrap_or_else(|| "anonymous".into()),
        action: format!("{method} {route}"),
        resource,
        ip,
        outcome: outcome.into(),
    };
    let cmd = cairn_master::audit::AuditCommand::Append(vec![entry]);
    match command::<cairn_master::audit::AuditService>(&cmd) {
        Ok(bytes) => {
            if let Err(e) = g.master.propose(bytes).await {
                tracing::error!(error = %e, "could not append to the audit log");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not encode an audit entry"),
    }
    resp
}

/// A known route with a method it does not take: 405 with a JSON body like every other error.
pub(crate) async fn json_method_errors(req: Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        let allow = resp.headers().get(header::ALLOW).cloned();
        let mut out = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        )
        .into_response();
        if let Some(a) = allow {
            out.headers_mut().insert(header::ALLOW, a);
        }
        return out;
    }
    // axum's own rejections (a path segment that is not UTF-8, a query that does not parse)
    // are plain text: say the same in this API's JSON shape.
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if resp.status().is_client_error() && plain {
        let status = resp.status();
        let text = match axum::body::to_bytes(resp.into_body(), 64 * 1024).await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => "the request was refused".to_owned(),
        };
        return ApiError::new(status, text).into_response();
    }
    resp
}

/// What every JSON router shares: audit entries for changes, rate-limit headers, JSON 404s
/// and 405s.
pub(crate) fn with_layers(routes: Router<Arc<Gateway>>, g: Arc<Gateway>) -> Router {
    routes
        .layer(axum::middleware::from_fn_with_state(g.clone(), audit_layer))
        .layer(axum::middleware::from_fn(caller_rate_headers))
        .layer(axum::middleware::from_fn(json_method_errors))
        .layer(axum::middleware::from_fn(super::context::context_layer))
        .fallback(not_found)
        .with_state(g)
}

pub(crate) fn client_ip(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default()
}
