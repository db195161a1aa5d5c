//! The condition keys of a request, as bucket policies read them (`aws:SourceIp`,
//! `aws:SecureTransport`, `s3:prefix`, `s3:x-amz-acl`...), taken from its headers, query
//! string and peer address. The S3 surface builds them per request; the JSON and `/storage`
//! routes get them from [`context_layer`], which keeps them for the request's task, so that a
//! bucket policy decides alike whichever door a request came in by.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use cairn_master::bucket_policy::Context;

tokio::task_local! {
    static REQUEST: Context;
}

/// Request headers that become `s3:` condition keys of the same name.
const HEADER_KEYS: &[&str] = &[
    "x-amz-acl",
    "x-amz-content-sha256",
    "x-amz-copy-source",
    "x-amz-grant-full-control",
    "x-amz-grant-read",
    "x-amz-grant-read-acp",
    "x-amz-grant-write",
    "x-amz-grant-write-acp",
    "x-amz-metadata-directive",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-customer-algorithm",
    "x-amz-storage-class",
    "x-amz-website-redirect-location",
];

/// The condition keys of one request. `peer` is the connection's address; `now` the
/// gateway's clock.
///
/// The gateway speaks plain HTTP, so `aws:SecureTransport` is `true` only for a request that
/// a TLS-terminating proxy on the same host forwarded (a loopback peer with
/// `X-Forwarded-Proto: https`); a remote client cannot claim it with a header.
pub fn request_context(
    headers: &HeaderMap,
    query: Option<&str>,
    peer: Option<SocketAddr>,
    now: SystemTime,
) -> Context {
    let mut cx = Context::new();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(p) = peer {
        cx.set("aws:SourceIp", p.ip().to_string());
    }
    let secure = peer.is_some_and(|p| p.ip().is_loopback())
        && text("x-forwarded-proto").is_some_and(|v| v.eq_ignore_ascii_case("https"));
    cx.set("aws:SecureTransport", secure.to_string());
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    cx.set("aws:EpochTime", since.as_secs().to_string());
    if let Ok(t) = time::OffsetDateTime::from_unix_timestamp(since.as_secs() as i64)
        && let Ok(s) = t.format(&time::format_description::well_known::Rfc3339)
    {
        cx.set("aws:CurrentTime", s);
    }
    if let Some(ua) = text(header::USER_AGENT.as_str()) {
        cx.set("aws:UserAgent", ua);
    }
    if let Some(r) = text(header::REFERER.as_str()) {
        cx.set("aws:Referer", r);
    }
    for h in HEADER_KEYS {
        if let Some(v) = text(h) {
            cx.set(&format!("s3:{h}"), v);
        }
    }
    for (h, key) in [
        ("if-match", "s3:if-match"),
        ("if-none-match", "s3:if-none-match"),
    ] {
        if let Some(v) = text(h) {
            cx.set(key, v);
        }
    }
    if let Some(v) = text("x-amz-object-lock-mode") {
        cx.set("s3:object-lock-mode", v);
    }
    if let Some(v) = text("x-amz-object-lock-retain-until-date") {
        cx.set("s3:object-lock-retain-until-date", v);
    }
    if let Some(v) = text("x-amz-object-lock-legal-hold") {
        cx.set("s3:object-lock-legal-hold", v);
    }
    if let Some(tagging) = text("x-amz-tagging") {
        let tags: Vec<(String, String)> = serde_urlencoded::from_str(tagging).unwrap_or_default();
        for (k, v) in &tags {
            cx.set(&format!("s3:RequestObjectTag/{k}"), v.clone());
        }
        cx.set_many(
            "s3:RequestObjectTagKeys",
            tags.into_iter().map(|(k, _)| k).collect(),
        );
    }
    let params: Vec<(String, String)> = query
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    for (param_name, key) in [
        ("prefix", "s3:prefix"),
        ("delimiter", "s3:delimiter"),
        ("max-keys", "s3:max-keys"),
        ("versionId", "s3:VersionId"),
    ] {
        if let Some(v) = param(param_name) {
            cx.set(key, v.clone());
        }
    }
    // How the request is signed.
    let auth = text(header::AUTHORIZATION.as_str());
    let presigned = param("X-Amz-Signature").is_some() || param("Signature").is_some();
    if auth.is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256")) {
        cx.set("s3:authType", "REST-HEADER");
        cx.set("s3:signatureversion", "AWS4-HMAC-SHA256");
    } else if auth.is_some_and(|a| a.starts_with("AWS ")) {
        cx.set("s3:authType", "REST-HEADER");
        cx.set("s3:signatureversion", "AWS");
    } else if presigned {
        cx.set("s3:authType", "REST-QUERY-STRING");
        let v4 = param("X-Amz-Algorithm").is_some();
        cx.set(
            "s3:signatureversion",
            if v4 { "AWS4-HMAC-SHA256" } else { "AWS" },
        );
    }
    let signed_at = text("x-amz-date").or(param("X-Amz-Date").map(String::as_str));
    if let Some(at) = signed_at.and_then(amz_date_secs) {
        let age_ms = (since.as_millis() as i128 - i128::from(at) * 1000).max(0);
        cx.set("s3:signatureAge", age_ms.to_string());
    }
    cx
}

/// Seconds since the epoch of an `X-Amz-Date` (`20261207T163000Z`).
fn amz_date_secs(s: &str) -> Option<i64> {
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, f)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// Keep the request's condition keys for the handler (see [`current`]).
pub(crate) async fn context_layer(req: Request, next: axum::middleware::Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let cx = request_context(req.headers(), req.uri().query(), peer, SystemTime::now());
    REQUEST.scope(cx, next.run(req)).await
}

/// The condition keys of the request this task serves (empty outside [`context_layer`]).
pub(crate) fn current() -> Context {
    REQUEST.try_with(Context::clone).unwrap_or_default()
}
