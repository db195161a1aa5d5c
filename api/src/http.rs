//! The gateway's HTTP face: S3 (s3s) as the fallback service, `/health`, `/ready`,
//! `/metrics`, and one middleware that gives every response a request id, logs it, counts it,
//! and answers CORS.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_master::buckets::{BucketQuery, BucketQueryResponse, CorsRule};
use s3s::service::S3ServiceBuilder;
use serde_json::json;

use crate::Gateway;
use crate::auth::{Access, KeyAuth};
use crate::kernel::names::RESERVED;
use crate::s3::CairnS3;

/// Largest error body the middleware rewrites to carry the request id.
const ERROR_BODY_MAX: usize = 64 * 1024;

/// The gateway's own routes `own` with S3 behind them (for every path they do not take, and
/// for every request to a virtual-hosted bucket), every request observed (request id, access
/// log, metrics, CORS).
pub fn serve(gateway: Arc<Gateway>, own: Router) -> Router {
    let s3 = {
        let mut b = S3ServiceBuilder::new(CairnS3::new(gateway.clone()));
        b.set_auth(KeyAuth::new(gateway.clone()));
        b.set_access(Access::new(gateway.clone()));
        if let Some(domain) = &gateway.options.domain {
            b.set_host(VirtualHosts {
                domain: domain.to_ascii_lowercase(),
            });
        }
        b.build()
    };
    let s3 = axum::error_handling::HandleError::new(s3, |e: s3s::HttpError| async move {
        tracing::error!(error = ?e, "S3 service error");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/xml")],
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>internal error</Message></Error>",
        )
            .into_response()
    });
    let own = own.fallback_service(s3.clone());
    // A request to `BUCKET.DOMAIN` is S3 whatever its path: `/api/x` there is the object
    // `api/x` of that bucket, not the REST API.
    let domain = gateway
        .options
        .domain
        .clone()
        .map(|d| d.to_ascii_lowercase());
    let dispatch = tower::service_fn(move |req: Request| {
        let own = own.clone();
        let s3 = s3.clone();
        let to_bucket = domain
            .as_deref()
            .is_some_and(|d| bucket_host(req.headers(), d));
        async move {
            use tower::ServiceExt;
            if to_bucket {
                s3.oneshot(req).await.map(IntoResponse::into_response)
            } else {
                own.oneshot(req).await
            }
        }
    });
    Router::new()
        .fallback_service(dispatch)
        .layer(axum::middleware::from_fn_with_state(gateway, observe))
}

/// Whether the request's `Host` is `BUCKET.DOMAIN[:port]` (virtual-hosted style).
fn bucket_host(headers: &HeaderMap, domain: &str) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    name.to_ascii_lowercase()
        .strip_suffix(domain)
        .and_then(|p| p.strip_suffix('.'))
        .is_some_and(|b| !b.is_empty())
}

/// Virtual-hosted-style addressing under one domain: `BUCKET.DOMAIN[:port]` names a bucket;
/// any other host (the domain itself, `localhost`, an address) is path style.
#[derive(Debug)]
struct VirtualHosts {
    domain: String,
}

impl s3s::host::S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> s3s::S3Result<s3s::host::VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let name = name.to_ascii_lowercase();
        let vh = s3s::host::VirtualHost::new(self.domain.as_str());
        match name
            .strip_suffix(self.domain.as_str())
            .and_then(|p| p.strip_suffix('.'))
        {
            Some(bucket) if !bucket.is_empty() => Ok(vh.with_bucket(bucket.to_owned())),
            _ => Ok(vh),
        }
    }
}

pub(crate) async fn default_ready(State(g): State<Arc<Gateway>>) -> Response {
    match g.data.status().await {
        Ok(s) if s.servers.iter().any(|s| s.alive) => (
            StatusCode::OK,
            axum::Json(json!({"status": "ready", "chunkservers_alive": s.servers.iter().filter(|s| s.alive).count()})),
        )
            .into_response(),
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable", "error": "no chunkserver is alive"})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable", "error": e.to_string()})),
        )
            .into_response(),
    }
}

pub(crate) async fn metrics(State(g): State<Arc<Gateway>>) -> Response {
    let mut extra = Vec::new();
    let (status, repair) = tokio::join!(g.data.status(), g.data.repair());
    if let Ok(s) = status {
        extra.push((
            "cairn_chunks_under_replicated",
            "Live chunks with fewer replicas than wanted (replication backlog).",
            s.under_replicated as f64,
        ));
        extra.push((
            "cairn_chunks_lost",
            "Live chunks with no good replica.",
            s.lost as f64,
        ));
        extra.push((
            "cairn_copies_in_flight",
            "Replica copies under way.",
            s.copies_in_flight as f64,
        ));
        extra.push((
            "cairn_chunkservers_alive",
            "Chunkservers heartbeating.",
            s.servers.iter().filter(|s| s.alive).count() as f64,
        ));
    }
    if let Ok(r) = repair {
        extra.extend([
            (
                "cairn_repair_remaining_replicas",
                "Replicas still to copy (re-replication and rebalancing), running copies included.",
                r.remaining_replicas as f64,
            ),
            (
                "cairn_repair_remaining_bytes",
                "Bytes of the replicas still to copy.",
                r.remaining_bytes as f64,
            ),
            (
                "cairn_repair_bytes_per_second",
                "Bytes of replica copies landed per second over the last 10 s.",
                r.bytes_per_sec,
            ),
            (
                "cairn_repair_replicas_per_second",
                "Replica copies landed per second over the last 10 s.",
                r.replicas_per_sec,
            ),
            (
                "cairn_repair_eta_seconds",
                "Seconds until the remaining bytes are copied at the current rate (-1: unknown, 0: nothing left).",
                match (r.remaining_replicas, r.eta_secs) {
                    (0, _) => 0.0,
                    (_, Some(s)) => s as f64,
                    (_, None) => -1.0,
                },
            ),
            (
                "cairn_repair_copied_bytes",
                "Bytes of replica copies landed since the current master leader took over.",
                r.copied_bytes as f64,
            ),
        ]);
    }
    let mut text = g.metrics.render(&extra);
    text.push_str(&queue_metrics(&g).await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Every queue's depth and oldest message's age, labelled by tenant and name (nothing when the
/// master group cannot answer).
async fn queue_metrics(g: &Gateway) -> String {
    use cairn_engine::state::TypedService;
    use cairn_master::queues::{QueueQuery, QueueQueryResponse, QueueService};
    use cairn_proto::Consistency;
    use std::fmt::Write;
    let Ok(payload) = QueueService::encode_query(&QueueQuery::Stats) else {
        return String::new();
    };
    let stats = match g
        .master
        .query(QueueService::ID, payload, Consistency::Linearizable)
        .await
    {
        Ok(Ok(b)) => match QueueService::query_response(&b) {
            Ok(QueueQueryResponse::Stats(s)) => s,
            _ => return String::new(),
        },
        _ => return String::new(),
    };
    let now = cairn_master::dataplane::wall_ms();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# HELP cairn_queue_messages Messages stored in a queue (receivable, delayed and in flight).\n# TYPE cairn_queue_messages gauge"
    );
    for (_, q, _) in &stats {
        let _ = writeln!(
            s,
            "cairn_queue_messages{{tenant=\"{}\",queue=\"{}\"}} {}",
            cairn_master::tenancy::tenant_hex(q.tenant),
            q.name,
            q.depth
        );
    }
    let _ = writeln!(
        s,
        "# HELP cairn_queue_oldest_message_age_seconds Age of a queue's oldest stored message (0 when empty).\n# TYPE cairn_queue_oldest_message_age_seconds gauge"
    );
    for (_, q, oldest) in &stats {
        let age = oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
        let _ = writeln!(
            s,
            "cairn_queue_oldest_message_age_seconds{{tenant=\"{}\",queue=\"{}\"}} {age}",
            cairn_master::tenancy::tenant_hex(q.tenant),
            q.name
        );
    }
    s
}

/// A short label for metrics: the method, what the path names and the first sub-resource.
fn operation(method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> String {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if RESERVED.contains(&first) {
        return format!("{method} /{first}");
    }
    let depth = match path.trim_start_matches('/').split_once('/') {
        _ if path == "/" || path.is_empty() => "service",
        None => "bucket",
        Some((_, "")) => "bucket",
        Some(_) => "object",
    };
    const SUBS: &[&str] = &[
        "uploads",
        "uploadId",
        "versions",
        "versioning",
        "lifecycle",
        "cors",
        "tagging",
        "location",
        "acl",
        "delete",
        "list-type",
    ];
    let sub = query
        .unwrap_or("")
        .split('&')
        .map(|kv| kv.split('=').next().unwrap_or(""))
        .find(|k| SUBS.contains(k));
    let copy = headers.contains_key("x-amz-copy-source");
    let mut op = format!("{method} {depth}");
    if let Some(s) = sub {
        op.push('?');
        op.push_str(s);
    }
    if copy {
        op.push_str(" copy");
    }
    op
}

fn request_id() -> String {
    format!("{:016X}", rand::random::<u64>())
}

fn bucket_of(path: &str) -> Option<&str> {
    let p = path.trim_start_matches('/');
    let b = p.split('/').next().unwrap_or("");
    (!b.is_empty() && !RESERVED.contains(&b)).then_some(b)
}

fn origin_allowed(rule: &CorsRule, origin: &str) -> bool {
    rule.allowed_origins.iter().any(|o| {
        if o == "*" {
            return true;
        }
        match o.split_once('*') {
            Some((pre, post)) => origin.starts_with(pre) && origin.ends_with(post),
            None => o == origin,
        }
    })
}

/// The CORS rule that allows `origin` to use `method` with `headers`, if any.
fn cors_match<'a>(
    rules: &'a [CorsRule],
    origin: &str,
    method: &str,
    headers: &[String],
) -> Option<&'a CorsRule> {
    rules.iter().find(|r| {
        origin_allowed(r, origin)
            && r.allowed_methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(method))
            && headers.iter().all(|h| {
                r.allowed_headers
                    .iter()
                    .any(|a| a == "*" || a.eq_ignore_ascii_case(h))
            })
    })
}

async fn bucket_cors(g: &Gateway, bucket: &str) -> Option<Vec<CorsRule>> {
    match g
        .query(&BucketQuery::Bucket {
            name: bucket.to_owned(),
        })
        .await
    {
        Ok(BucketQueryResponse::Bucket(Some(b))) => b.cors,
        _ => None,
    }
}

fn cors_headers(h: &mut HeaderMap, rule: &CorsRule, origin: &str) {
    let allow_origin = if rule.allowed_origins.iter().any(|o| o == "*") {
        "*"
    } else {
        origin
    };
    if let Ok(v) = HeaderValue::from_str(allow_origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    if let Ok(v) = HeaderValue::from_str(&rule.allowed_methods.join(", ")) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !rule.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&rule.expose_headers.join(", "))
    {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
    if let Some(age) = rule.max_age_seconds
        && let Ok(v) = HeaderValue::from_str(&age.to_string())
    {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

fn s3_error_xml(status: StatusCode, code: &str, message: &str, id: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message><RequestId>{id}</RequestId></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

/// A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`).
async fn preflight(g: &Gateway, h: &HeaderMap, path: &str, id: &str) -> Response {
    let origin = h
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let method = h
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let wanted: Vec<String> = h
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_owned())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let Some(bucket) = bucket_of(path) else {
        return s3_error_xml(
            StatusCode::FORBIDDEN,
            "AccessForbidden",
            "CORSResponse: no bucket named",
            id,
        );
    };
    let rules = bucket_cors(g, bucket).await.unwrap_or_default();
    match cors_match(&rules, origin, method, &wanted) {
        Some(rule) => {
            let mut resp = StatusCode::OK.into_response();
            let hs = resp.headers_mut();
            cors_headers(hs, rule, origin);
            if !wanted.is_empty()
                && let Ok(v) = HeaderValue::from_str(&wanted.join(", "))
            {
                hs.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
            resp
        }
        None => s3_error_xml(
            StatusCode::FORBIDDEN,
            "AccessForbidden",
            "CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.",
            id,
        ),
    }
}

/// Longest validity of a presigned URL AWS accepts: 7 days.
const PRESIGN_MAX_S: u64 = 604_800;

/// Why a presigned URL's `X-Amz-Expires` is refused (as AWS words it), if it is.
fn presign_expiry_error(query: Option<&str>) -> Option<&'static str> {
    let q = query?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).ok()?;
    let (_, v) = pairs.iter().find(|(k, _)| k == "X-Amz-Expires")?;
    match v.parse::<u64>() {
        Ok(n) if n <= PRESIGN_MAX_S => None,
        Ok(_) => Some("X-Amz-Expires must be less than a week (in seconds) that is; 604800"),
        Err(_) => Some("X-Amz-Expires should be a number"),
    }
}

/// The message an S3 error gets when it was made without one (clients print "Unknown"
/// otherwise): AWS's words for the common codes, else the code in words.
fn default_message(code: &str) -> String {
    let known = match code {
        "InvalidAccessKeyId" => "The AWS Access Key Id you provided does not exist in our records.",
        "SignatureDoesNotMatch" => {
            "The request signature we calculated does not match the signature you provided."
        }
        "AccessDenied" => "Access Denied",
        "NoSuchBucket" => "The specified bucket does not exist",
        "NoSuchKey" => "The specified key does not exist.",
        "NoSuchUpload" => "The specified upload does not exist.",
        "InvalidArgument" => "Invalid Argument",
        "MalformedXML" => {
            "The XML you provided was not well-formed or did not validate against our published schema"
        }
        "NotImplemented" => "A header you provided implies functionality that is not implemented",
        "InternalError" => "We encountered an internal error. Please try again.",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_owned();
    }
    // `SomeErrorCode` → "Some error code".
    let mut words = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
            words.push(c.to_ascii_lowercase());
        } else {
            words.push(c);
        }
    }
    words
}

/// Put `<RequestId>` into an S3 error body that lacks one, and a `<Message>` when there is
/// none (or an empty one); a POST policy's failed condition is answered as S3 answers it.
async fn with_request_id(resp: Response, id: &str) -> Response {
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, ERROR_BODY_MAX).await {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let mut body = if text.contains("<Error>") && !text.contains("<RequestId>") {
                text.replacen(
                    "</Error>",
                    &format!("<RequestId>{id}</RequestId></Error>"),
                    1,
                )
            } else {
                text.into_owned()
            };
            let no_message = !body.contains("<Message>") || body.contains("<Message></Message>");
            if body.contains("<Error>") && no_message {
                let code = body
                    .split_once("<Code>")
                    .and_then(|(_, r)| r.split_once("</Code>"))
                    .map(|(c, _)| c.to_owned())
                    .unwrap_or_default();
                let message = format!("<Message>{}</Message>", default_message(&code));
                body = body.replacen("<Message></Message>", "", 1);
                body = match body.find("</Code>") {
                    Some(at) => {
                        let at = at + "</Code>".len();
                        format!("{}{message}{}", &body[..at], &body[at..])
                    }
                    None => body.replacen("</Error>", &format!("{message}</Error>"), 1),
                };
            }
            let mut parts = parts;
            // A browser form (POST object) that breaks a condition of its policy document is
            // refused by S3 with 403 AccessDenied, "Invalid according to Policy"; s3s answers
            // 400 InvalidPolicyDocument, which AWS keeps for a document it cannot read.
            if body.contains("<Code>InvalidPolicyDocument</Code>")
                && body.contains("<Message>Policy condition")
            {
                body = body
                    .replacen(
                        "<Code>InvalidPolicyDocument</Code>",
                        "<Code>AccessDenied</Code>",
                        1,
                    )
                    .replacen(
                        "<Message>Policy condition",
                        "<Message>Invalid according to Policy: Policy condition",
                        1,
                    );
                parts.status = StatusCode::FORBIDDEN;
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(body))
        }
        Err(_) => Response::from_parts(parts, Body::empty()),
    }
}

/// The response body's length, if known (a header, or the body's exact size).
fn body_len(resp: &Response) -> Option<u64> {
    use axum::body::HttpBody;
    resp.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| resp.body().size_hint().exact())
}

/// The request path as path style would have it: `/BUCKET/KEY` also for a virtual-hosted
/// request (`BUCKET.DOMAIN/KEY`), so CORS, metrics and logs see the bucket either way.
fn path_style(g: &Gateway, headers: &HeaderMap, path: &str) -> String {
    let Some(domain) = &g.options.domain else {
        return path.to_owned();
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
    .to_ascii_lowercase();
    match name
        .strip_suffix(domain.to_ascii_lowercase().as_str())
        .and_then(|p| p.strip_suffix('.'))
    {
        Some(bucket) if !bucket.is_empty() => format!("/{bucket}{path}"),
        _ => path.to_owned(),
    }
}

async fn observe(State(g): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id();
    let method = req.method().clone();
    let path = path_style(&g, req.headers(), req.uri().path());
    let op = operation(&method, &path, req.uri().query(), req.headers());
    let bytes_in = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut resp = if method == Method::OPTIONS && origin.is_some() {
        let headers = req.headers().clone();
        drop(req);
        preflight(&g, &headers, &path, &id).await
    } else if let Some(why) = presign_expiry_error(req.uri().query()) {
        s3_error_xml(
            StatusCode::BAD_REQUEST,
            "AuthorizationQueryParametersError",
            why,
            &id,
        )
    } else {
        next.run(req).await
    };
    let status = resp.status();
    let is_xml = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/xml"));
    let small = body_len(&resp).is_some_and(|n| n <= ERROR_BODY_MAX as u64);
    if status.as_u16() >= 400 && is_xml && small {
        resp = with_request_id(resp, &id).await;
    }
    if let Some(origin) = origin
        && method != Method::OPTIONS
        && let Some(bucket) = bucket_of(&path)
        && let Some(rules) = bucket_cors(&g, bucket).await
        && let Some(rule) = cors_match(&rules, &origin, method.as_str(), &[])
    {
        cors_headers(resp.headers_mut(), rule, &origin);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-amz-request-id", v.clone());
        resp.headers_mut().insert("x-amz-id-2", v.clone());
        resp.headers_mut().insert("x-request-id", v);
    }
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("Cairn"));
    // Every 503 (no leader or quorum right now, too few chunkservers) says when to retry.
    if status == StatusCode::SERVICE_UNAVAILABLE
        && !resp.headers().contains_key(header::RETRY_AFTER)
    {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    let bytes_out = body_len(&resp).unwrap_or(0);
    let took = started.elapsed();
    g.metrics.record(&op, status.as_u16(), took);
    g.metrics.bytes(bytes_in, bytes_out);
    tracing::info!(
        target: "cairn::access",
        request_id = %id,
        %method,
        path = %path,
        op = %op,
        status = status.as_u16(),
        bytes_in,
        bytes_out,
        ms = took.as_secs_f64() * 1000.0,
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_live_a_week_at_most() {
        assert_eq!(presign_expiry_error(None), None);
        assert_eq!(presign_expiry_error(Some("list-type=2")), None);
        assert_eq!(presign_expiry_error(Some("X-Amz-Expires=604800")), None);
        assert!(presign_expiry_error(Some("X-Amz-Expires=604801")).is_some());
        assert!(presign_expiry_error(Some("a=b&X-Amz-Expires=-5")).is_some());
    }

    #[test]
    fn errors_without_a_message_get_one() {
        assert_eq!(
            default_message("InvalidAccessKeyId"),
            "The AWS Access Key Id you provided does not exist in our records."
        );
        assert_eq!(default_message("SlowDownPlease"), "Slow down please");
        assert_eq!(default_message(""), "");
    }
}
