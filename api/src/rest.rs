//! The JSON REST API under `/api`: users and sessions (`/api/auth/...`) and per-user S3 keys
//! (`/api/s3-keys`).
//!
//! Errors are `{"error": "..."}` with a precise 4xx status; nothing a caller sends can produce a
//! 5xx. Passwords are hashed with argon2id (on the blocking pool, never in the state machine);
//! access tokens are short-lived HS256 JWTs signed with a key kept sealed in the replicated
//! state; refresh tokens are `SESSION.SECRET`, stored as the secret's SHA-256 and rotated on
//! every use; presenting a rotated one revokes the session (token theft).

use std::net::SocketAddr;
use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use cairn_engine::state::TypedService;
use cairn_master::dataplane::{command, wall_ms};
use cairn_master::identity::{
    IdentityCommand, IdentityQuery, IdentityQueryResponse, IdentityResponse, IdentityService,
    Session, User,
};
use cairn_proto::{Consistency, ProposeError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Gateway;

/// Access tokens live this long by default (`api.access_token_ttl`).
pub const ACCESS_TTL_S: u64 = 15 * 60;
/// Refresh tokens (sessions) live this long after their last use.
pub const REFRESH_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Largest JSON body the auth routes read.
const BODY_MAX: usize = 64 * 1024;
/// Passwords are 8 to 1024 bytes.
const PASSWORD_MIN: usize = 8;
const PASSWORD_MAX: usize = 1024;
/// The purpose the JWT key is sealed under.
const JWT_KEY_PURPOSE: &str = "cairn jwt signing key";

/// A REST error: a status and a message, answered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %e, "REST request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> ApiError {
        match e {
            ProposeError::Unavailable(_) | ProposeError::NotLeader { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the metadata quorum is unavailable; retry",
            ),
            ProposeError::Failed(m) => ApiError::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

tokio::task_local! {
    /// Who the current `/api` request acts for, as far as it is known (for the audit log).
    static ACTOR: Arc<parking_lot::Mutex<Option<String>>>;
    /// The caller's rate-limit window, once authenticated: (limit, remaining, retry after s).
    static RATE: Arc<parking_lot::Mutex<Option<(u32, u32, Option<u64>)>>>;
}

/// Count an authenticated request against its API key's or session's window.
fn limit_caller(g: &Gateway, who: String) -> ApiResult<()> {
    let limit = g.options.api_rate_limit;
    if limit == 0 {
        return Ok(());
    }
    let hit = g.caller_limiter.hit(who, limit);
    let _ = RATE.try_with(|r| {
        *r.lock() = Some(match hit {
            Ok(left) => (limit, left, None),
            Err(retry) => (limit, 0, Some(retry)),
        });
    });
    match hit {
        Ok(_) => Ok(()),
        Err(retry) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("rate limit of {limit} requests per minute reached; retry in {retry} s"),
        )),
    }
}

/// `X-RateLimit-*` (and `Retry-After` on a 429) for authenticated requests, unless a
/// stricter route limit already set them.
async fn caller_rate_headers(req: Request, next: axum::middleware::Next) -> Response {
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

/// Every state-changing `/api` request (any method but GET and HEAD) leaves an audit entry:
/// actor, action (`METHOD /api/route/{param}`), resource (the path), client address, time and
/// outcome (`success` for 2xx, `denied` for 401/403/429, `failure` otherwise), appended to the
/// replicated log before the answer goes out.
async fn audit_layer(
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

/// Commit an identity command; a refusal maps to its status.
pub(crate) async fn propose(g: &Gateway, c: &IdentityCommand) -> ApiResult<IdentityResponse> {
    let bytes = command::<IdentityService>(c)?;
    match g.master.propose(bytes).await? {
        Ok(b) => IdentityService::response(&b).map_err(ApiError::internal),
        Err(r) => Err(match r.code.as_str() {
            "setup_done" | "email_taken" => ApiError::new(StatusCode::CONFLICT, r.message),
            "registration_closed" => ApiError::new(StatusCode::FORBIDDEN, r.message),
            "invalid_email" | "invalid_name" | "invalid_argument" => ApiError::bad(r.message),
            "no_such_session" | "session_ended" | "bad_token" => {
                ApiError::unauthorized("the refresh token is not valid")
            }
            "no_such_user" | "no_such_tenant" | "not_member" | "no_such_policy"
            | "not_attached" => ApiError::new(StatusCode::NOT_FOUND, r.message),
            "forbidden" => ApiError::new(StatusCode::FORBIDDEN, r.message),
            "last_owner" | "policy_exists" | "tenant_exists" | "too_many" => {
                ApiError::new(StatusCode::CONFLICT, r.message)
            }
            _ => ApiError::bad(r.message),
        }),
    }
}

pub(crate) async fn ask(g: &Gateway, q: &IdentityQuery) -> ApiResult<IdentityQueryResponse> {
    let payload = IdentityService::encode_query(q).map_err(ApiError::internal)?;
    let bytes = g
        .master
        .query(IdentityService::ID, payload, Consistency::Linearizable)
        .await?
        .map_err(|r| ApiError::internal(r.message))?;
    IdentityService::query_response(&bytes).map_err(ApiError::internal)
}

/// Read a JSON body (at most 64 KiB) into `T`; every failure is a 400 that says why.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(req: Request) -> ApiResult<T> {
    let bytes = axum::body::to_bytes(req.into_body(), BODY_MAX)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {BODY_MAX} bytes"),
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

pub(crate) fn hex_id(id: u128) -> String {
    format!("{id:032x}")
}

pub(crate) fn parse_id(s: &str) -> Option<u128> {
    (s.len() == 32)
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn random32() -> ApiResult<[u8; 32]> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| ApiError::internal("system randomness failed"))?;
    Ok(b)
}

fn hex(b: &[u8]) -> String {
    cairn_master::buckets::hex(b)
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

async fn hash_password(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        argon2::Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

/// Whether `password` matches `hash` (argon2, on the blocking pool).
async fn verify_password(password: String, hash: String) -> ApiResult<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(ApiError::internal)?;
        Ok(argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(ApiError::internal)?
}

fn check_password(p: &str) -> ApiResult<()> {
    if p.len() < PASSWORD_MIN || p.len() > PASSWORD_MAX {
        return Err(ApiError::bad(format!(
            "passwords are {PASSWORD_MIN} to {PASSWORD_MAX} bytes"
        )));
    }
    Ok(())
}

/// How long a gateway signs with the key it opened before looking for a newer one (after a
/// rotation, other gateways pick up the new key within this time).
const JWT_KEYS_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The token signing keys, opened from the replicated state: the current one (which signs)
/// and the one it replaced (which still verifies), by key id.
#[derive(Clone, Debug)]
pub struct JwtKeys {
    current: (u32, Vec<u8>),
    previous: Option<(u32, Vec<u8>)>,
    fetched: std::time::Instant,
}

impl JwtKeys {
    fn by_kid(&self, kid: u32) -> Option<&[u8]> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|(k, _)| *k == kid)
            .map(|(_, key)| key.as_slice())
    }
}

/// The signing keys (kept for [`JWT_KEYS_FOR`], or fetched anew with `fresh`).
async fn jwt_keys(g: &Gateway, fresh: bool) -> ApiResult<JwtKeys> {
    if !fresh
        && let Some(k) = g.jwt_key.lock().clone()
        && k.fetched.elapsed() < JWT_KEYS_FOR
    {
        return Ok(k);
    }
    let IdentityQueryResponse::JwtKeys { current, previous } =
        ask(g, &IdentityQuery::JwtKeys).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let Some(current) = current else {
        return Err(ApiError::unauthorized(
            "no user exists yet: run setup first",
        ));
    };
    let open = |(kid, sealed): (u32, Vec<u8>)| -> ApiResult<(u32, Vec<u8>)> {
        Ok((
            kid,
            g.secrets
                .open(JWT_KEY_PURPOSE, &sealed)
                .map_err(ApiError::internal)?,
        ))
    };
    let keys = JwtKeys {
        current: open(current)?,
        previous: previous.map(open).transpose()?,
        fetched: std::time::Instant::now(),
    };
    *g.jwt_key.lock() = Some(keys.clone());
    Ok(keys)
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    sid: String,
    iat: u64,
    exp: u64,
    iss: String,
}

fn user_json(id: u128, u: &User) -> serde_json::Value {
    json!({
        "id": hex_id(id),
        "email": u.email,
        "name": u.name,
        "admin": u.admin,
        "created_at": u.created_ms / 1000,
        "totp_enabled": u.totp.is_some(),
    })
}

/// Open a session for `user` and answer with its tokens.
async fn login_answer(
    g: &Gateway,
    id: u128,
    user: &User,
    headers: &HeaderMap,
    ip: &str,
) -> ApiResult<serde_json::Value> {
    let secret = random32()?;
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let sid = match propose(
        g,
        &IdentityCommand::CreateSession {
            user: id,
            refresh_hash: sha256(&secret),
            expires_ms: wall_ms() + REFRESH_TTL_MS,
            ip: ip.to_owned(),
            agent,
        },
    )
    .await?
    {
        IdentityResponse::Session { id } => id,
        _ => return Err(ApiError::internal("unexpected answer")),
    };
    tokens(g, id, sid, &secret, Some(user)).await
}

async fn tokens(
    g: &Gateway,
    user: u128,
    sid: u128,
    secret: &[u8; 32],
    u: Option<&User>,
) -> ApiResult<serde_json::Value> {
    let now = wall_ms() / 1000;
    let claims = Claims {
        sub: hex_id(user),
        sid: hex_id(sid),
        iat: now,
        exp: now + g.options.access_ttl_s,
        iss: "cairn".into(),
    };
    let keys = jwt_keys(g, false).await?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(keys.current.0.to_string());
    let access = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&keys.current.1),
    )
    .map_err(ApiError::internal)?;
    let mut out = json!({
        "access_token": access,
        "refresh_token": format!("{}.{}", hex_id(sid), hex(secret)),
        "token_type": "Bearer",
        "expires_in": g.options.access_ttl_s,
    });
    if let Some(u) = u {
        out["user"] = user_json(user, u);
    }
    Ok(out)
}

/// Who is calling: a valid access token of a live session, or an API key. Revocation counts at
/// once for sessions, within 5 s for API keys.
pub(crate) struct Caller {
    pub(crate) user: u128,
    session: u128,
    record: User,
    /// The scopes of the API key the caller used; `None` for a login session.
    key_scopes: Option<Vec<String>>,
}

impl Caller {
    /// Routes that manage the account itself take a login session, not an API key.
    fn session_only(&self) -> ApiResult<()> {
        if self.key_scopes.is_some() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this route needs a login session, not an API key",
            ));
        }
        Ok(())
    }

    /// Changes to a tenant's members and policies: a login session, or a key with the
    /// `admin` scope (the role in the tenant is checked by the command itself).
    pub(crate) fn may_manage(&self) -> ApiResult<()> {
        match &self.key_scopes {
            Some(s) if !s.iter().any(|x| x == "admin") => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this API key lacks the admin scope",
            )),
            _ => Ok(()),
        }
    }

    /// Storage routes: a login session, or a key with `scope` (`storage:write` also reads).
    pub(crate) fn scoped(&self, scope: &str) -> ApiResult<()> {
        match &self.key_scopes {
            Some(s)
                if !s
                    .iter()
                    .any(|x| x == scope || (scope == "storage:read" && x == "storage:write")) =>
            {
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("this API key lacks the {scope} scope"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Admin routes: an admin's session, or an admin's key with the `admin` scope.
    pub(crate) fn admin(&self) -> ApiResult<()> {
        let scoped = self
            .key_scopes
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == "admin"));
        if self.record.admin && scoped {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "admins only"))
        }
    }
}

/// How long a verified API key is trusted without checking the state again.
const API_KEY_CACHE: std::time::Duration = std::time::Duration::from_secs(5);
/// A key's last use is recorded at most this often.
const API_KEY_TOUCH_MS: u64 = 60_000;

/// Verified API keys (by the SHA-256 of the raw key) and when each was last recorded as used.
#[derive(Debug, Default)]
pub struct ApiKeyCache {
    #[allow(clippy::type_complexity)]
    verified: parking_lot::Mutex<
        std::collections::HashMap<[u8; 32], (u128, Vec<String>, Option<u64>, std::time::Instant)>,
    >,
    touched: parking_lot::Mutex<std::collections::HashMap<String, u64>>,
}

/// `cairn_ID_SECRET`: the id (16 hex digits) is the lookup prefix, the secret 64 hex digits.
fn split_api_key(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("cairn_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16
        && secret.len() == 64
        && id
            .bytes()
            .chain(secret.bytes())
            .all(|b| b.is_ascii_hexdigit()))
    .then_some((id, secret))
}

async fn authenticate_key(g: &Gateway, token: &str) -> ApiResult<Caller> {
    let invalid = || ApiError::unauthorized("invalid API key");
    let (id, secret) = split_api_key(token).ok_or_else(invalid)?;
    let digest = sha256(token.as_bytes());
    let cached = g
        .api_keys
        .verified
        .lock()
        .get(&digest)
        .filter(|(_, _, _, at)| at.elapsed() < API_KEY_CACHE)
        .map(|(u, s, e, _)| (*u, s.clone(), *e));
    let (user, scopes) = match cached {
        Some((_, _, Some(e))) if e <= wall_ms() => {
            return Err(ApiError::unauthorized("the API key has expired"));
        }
        Some((u, s, _)) => (u, s),
        None => {
            let key = match ask(g, &IdentityQuery::ApiKey { id: id.to_owned() }).await? {
                IdentityQueryResponse::ApiKey(Some(k)) => k,
                _ => return Err(invalid()),
            };
            if key.expires_ms.is_some_and(|e| e <= wall_ms()) {
                return Err(ApiError::unauthorized("the API key has expired"));
            }
            if !verify_password(secret.to_owned(), key.hash.clone()).await? {
                return Err(invalid());
            }
            let mut v = g.api_keys.verified.lock();
            if v.len() > 10_000 {
                v.clear();
            }
            v.insert(
                digest,
                (
                    key.user,
                    key.scopes.clone(),
                    key.expires_ms,
                    std::time::Instant::now(),
                ),
            );
            (key.user, key.scopes)
        }
    };
    let now = wall_ms();
    let touch = {
        let mut t = g.api_keys.touched.lock();
        let due = t
            .get(id)
            .is_none_or(|at| now.saturating_sub(*at) >= API_KEY_TOUCH_MS);
        if due {
            t.insert(id.to_owned(), now);
        }
        due
    };
    if touch {
        let _ = propose(g, &IdentityCommand::TouchApiKey { id: id.to_owned() }).await;
    }
    set_actor(hex_id(user));
    limit_caller(g, format!("key:{id}"))?;
    match ask(g, &IdentityQuery::User { id: user }).await? {
        IdentityQueryResponse::User(Some((_, record))) => Ok(Caller {
            user,
            session: 0,
            record,
            key_scopes: Some(scopes),
        }),
        _ => Err(ApiError::unauthorized("the user no longer exists")),
    }
}

/// The caller if the request carries a token (an invalid one is still refused), `None` for
/// an anonymous request.
pub(crate) async fn authenticate_optional(
    g: &Gateway,
    headers: &HeaderMap,
) -> ApiResult<Option<Caller>> {
    if headers.contains_key(header::AUTHORIZATION) {
        authenticate(g, headers).await.map(Some)
    } else {
        Ok(None)
    }
}

pub(crate) async fn authenticate(g: &Gateway, headers: &HeaderMap) -> ApiResult<Caller> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?
        .trim();
    if token.starts_with("cairn_") {
        return authenticate_key(g, token).await;
    }
    // The key id in the header picks the key (tokens from before rotation existed have none:
    // key 0); an id this gateway does not know yet may be a rotation it has not seen.
    let kid = jsonwebtoken::decode_header(token)
        .map_err(|e| ApiError::unauthorized(format!("invalid access token: {e}")))?
        .kid
        .map_or(Some(0), |k| k.parse::<u32>().ok())
        .ok_or_else(|| ApiError::unauthorized("invalid access token: bad key id"))?;
    let mut keys = jwt_keys(g, false).await?;
    if keys.by_kid(kid).is_none() {
        keys = jwt_keys(g, true).await?;
    }
    let key = keys.by_kid(kid).ok_or_else(|| {
        ApiError::unauthorized("invalid access token: its signing key was rotated away")
    })?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.leeway = 5;
    validation.set_issuer(&["cairn"]);
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(key),
        &validation,
    )
    .map_err(|e| ApiError::unauthorized(format!("invalid access token: {e}")))?;
    let (user, session) = match (parse_id(&data.claims.sub), parse_id(&data.claims.sid)) {
        (Some(u), Some(s)) => (u, s),
        _ => return Err(ApiError::unauthorized("invalid access token")),
    };
    match ask(g, &IdentityQuery::Session { id: session }).await? {
        IdentityQueryResponse::Session(Some(s))
            if !s.revoked && s.user == user && s.expires_ms > wall_ms() => {}
        _ => return Err(ApiError::unauthorized("the session has ended")),
    }
    set_actor(hex_id(user));
    limit_caller(g, format!("session:{session:032x}"))?;
    match ask(g, &IdentityQuery::User { id: user }).await? {
        IdentityQueryResponse::User(Some((_, record))) => Ok(Caller {
            user,
            session,
            record,
            key_scopes: None,
        }),
        _ => Err(ApiError::unauthorized("the user no longer exists")),
    }
}

fn client_ip(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default()
}

#[derive(Deserialize, utoipa::ToSchema)]
struct SetupBody {
    email: String,
    password: String,
    name: String,
}

#[utoipa::path(post, path = "/api/auth/setup", request_body = SetupBody, responses((status = 201, description = "The first admin, logged in"), (status = 409, description = "A user exists already")))]
async fn setup(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let headers = req.headers().clone();
    let ip = client_ip(&req);
    let body: SetupBody = json_body(req).await?;
    check_password(&body.password)?;
    if let IdentityQueryResponse::Count(n) = ask(&g, &IdentityQuery::UserCount).await?
        && n > 0
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "setup is done: a user exists",
        ));
    }
    let hash = hash_password(body.password).await?;
    let key = random32()?;
    let sealed = g
        .secrets
        .seal(JWT_KEY_PURPOSE, &key)
        .map_err(ApiError::internal)?;
    let id = match propose(
        &g,
        &IdentityCommand::Setup {
            email: body.email,
            name: body.name,
            password_hash: hash,
            sealed_jwt_key: sealed,
        },
    )
    .await?
    {
        IdentityResponse::User { id } => id,
        _ => return Err(ApiError::internal("unexpected answer")),
    };
    signed_up(&g, id, &headers, &ip).await
}

/// The answer to a new account (setup, register): logged in, 201.
async fn signed_up(g: &Gateway, id: u128, headers: &HeaderMap, ip: &str) -> ApiResult<Response> {
    set_actor(hex_id(id));
    let user = match ask(g, &IdentityQuery::User { id }).await? {
        IdentityQueryResponse::User(Some((_, u))) => u,
        _ => return Err(ApiError::internal("the new user is missing")),
    };
    let out = login_answer(g, id, &user, headers, ip).await?;
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct LoginBody {
    email: String,
    password: String,
    #[serde(default)]
    totp_code: Option<String>,
}

/// The purpose TOTP secrets are sealed under.
const TOTP_PURPOSE: &str = "cairn totp secret";

fn totp_of(secret: Vec<u8>) -> ApiResult<totp_rs::Totp> {
    totp_rs::Builder::new()
        .with_secret(secret)
        .build()
        .map_err(ApiError::internal)
}

/// The step a code is valid for (now, or one step either side), if it is valid.
fn totp_step(g: &Gateway, sealed: &[u8], code: &str) -> ApiResult<Option<u64>> {
    let secret = g
        .secrets
        .open(TOTP_PURPOSE, sealed)
        .map_err(ApiError::internal)?;
    let totp = totp_of(secret)?;
    Ok(totp.check(code.trim(), wall_ms() / 1000))
}

/// A fixed argon2 hash to verify against when the email is unknown, so both failures cost the
/// same time.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$1YqDEK9WSJyvCfoqIXjLqJ4GCCCFuUeknP0y3mhzNVU";

#[utoipa::path(post, path = "/api/auth/login", request_body = LoginBody, responses((status = 200, description = "Tokens and the user"), (status = 401, description = "Wrong email, password or TOTP code")))]
async fn login(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let headers = req.headers().clone();
    let ip = client_ip(&req);
    let body: LoginBody = json_body(req).await?;
    set_actor(cairn_master::identity::normalize_email(&body.email));
    let denied = || ApiError::unauthorized("invalid email or password");
    if body.password.len() > PASSWORD_MAX {
        return Err(denied());
    }
    let found = match ask(
        &g,
        &IdentityQuery::UserByEmail {
            email: body.email.clone(),
        },
    )
    .await?
    {
        IdentityQueryResponse::User(u) => u,
        _ => None,
    };
    let Some((id, user)) = found else {
        let _ = verify_password(body.password, DUMMY_HASH.into()).await;
        return Err(denied());
    };
    if !verify_password(body.password, user.password_hash.clone()).await? {
        return Err(denied());
    }
    set_actor(hex_id(id));
    if let Some(sealed) = &user.totp {
        let Some(code) = body.totp_code.as_deref().filter(|c| !c.trim().is_empty()) else {
            return Err(ApiError::unauthorized(
                "a TOTP code is required (totp_code)",
            ));
        };
        let step = totp_step(&g, sealed, code)?
            .ok_or_else(|| ApiError::unauthorized("the TOTP code is wrong"))?;
        match propose(&g, &IdentityCommand::TotpUse { user: id, step }).await {
            Ok(_) => {}
            Err(e) if e.status == StatusCode::BAD_REQUEST => {
                return Err(ApiError::unauthorized("this TOTP code was already used"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(axum::Json(login_answer(&g, id, &user, &headers, &ip).await?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct RefreshBody {
    refresh_token: String,
}

#[utoipa::path(post, path = "/api/auth/refresh", request_body = RefreshBody, responses((status = 200, description = "New tokens"), (status = 401, description = "Invalid, expired or reused refresh token")))]
async fn refresh(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let body: RefreshBody = json_body(req).await?;
    let invalid = || ApiError::unauthorized("the refresh token is not valid");
    let (sid, secret) = body
        .refresh_token
        .trim()
        .split_once('.')
        .ok_or_else(invalid)?;
    let sid = parse_id(sid).ok_or_else(invalid)?;
    let presented = sha256(&unhex32(secret).ok_or_else(invalid)?);
    let user = match ask(&g, &IdentityQuery::Session { id: sid }).await? {
        IdentityQueryResponse::Session(Some(Session { user, .. })) => user,
        _ => return Err(invalid()),
    };
    set_actor(hex_id(user));
    let next = random32()?;
    match propose(
        &g,
        &IdentityCommand::Refresh {
            session: sid,
            presented,
            next: sha256(&next),
            expires_ms: wall_ms() + REFRESH_TTL_MS,
        },
    )
    .await?
    {
        IdentityResponse::Refreshed => {
            Ok(axum::Json(tokens(&g, user, sid, &next, None).await?).into_response())
        }
        IdentityResponse::Reused => {
            tracing::warn!(session = %hex_id(sid), "a rotated refresh token was reused; session revoked");
            Err(ApiError::unauthorized(
                "this refresh token was already used; the session is revoked",
            ))
        }
        _ => Err(invalid()),
    }
}

#[utoipa::path(post, path = "/api/auth/logout", responses((status = 200, description = "The session ended")))]
async fn logout(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.session_only()?;
    propose(
        &g,
        &IdentityCommand::Revoke {
            session: caller.session,
        },
    )
    .await?;
    Ok(axum::Json(json!({"status": "logged out"})).into_response())
}

#[utoipa::path(get, path = "/api/auth/me", responses((status = 200, description = "The caller"), (status = 401, description = "No valid token")))]
async fn me(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    Ok(axum::Json(user_json(caller.user, &caller.record)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ChangePasswordBody {
    current_password: String,
    new_password: String,
}

#[utoipa::path(post, path = "/api/auth/change-password", request_body = ChangePasswordBody, responses((status = 200, description = "Changed; other sessions ended"), (status = 403, description = "Wrong current password")))]
async fn change_password(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    caller.session_only()?;
    let body: ChangePasswordBody = json_body(req).await?;
    check_password(&body.new_password)?;
    if body.current_password.len() > PASSWORD_MAX
        || !verify_password(body.current_password, caller.record.password_hash.clone()).await?
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the current password is wrong",
        ));
    }
    let hash = hash_password(body.new_password).await?;
    propose(
        &g,
        &IdentityCommand::ChangePassword {
            user: caller.user,
            password_hash: hash,
            keep_session: caller.session,
        },
    )
    .await?;
    Ok(axum::Json(json!({"status": "password changed; other sessions revoked"})).into_response())
}

#[utoipa::path(get, path = "/api/auth/sessions", responses((status = 200, description = "The caller's live sessions")))]
async fn sessions(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.session_only()?;
    let list = match ask(&g, &IdentityQuery::Sessions { user: caller.user }).await? {
        IdentityQueryResponse::Sessions(s) => s,
        _ => Vec::new(),
    };
    let now = wall_ms();
    let items: Vec<serde_json::Value> = list
        .into_iter()
        .filter(|(_, s)| !s.revoked && s.expires_ms > now)
        .map(|(id, s)| {
            json!({
                "id": hex_id(id),
                "created_at": s.created_ms / 1000,
                "last_used_at": s.refreshed_ms / 1000,
                "expires_at": s.expires_ms / 1000,
                "ip": s.ip,
                "user_agent": s.agent,
                "current": id == caller.session,
            })
        })
        .collect();
    Ok(axum::Json(json!({"sessions": items})).into_response())
}

#[utoipa::path(delete, path = "/api/auth/sessions/{id}", params(("id" = String, Path, description = "The id")), responses((status = 200, description = "Revoked"), (status = 404, description = "No such session of the caller")))]
async fn revoke_session(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.session_only()?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "no such session");
    let sid = parse_id(&id).ok_or_else(not_found)?;
    // Only one's own sessions; another user's id answers as if it did not exist.
    match ask(&g, &IdentityQuery::Session { id: sid }).await? {
        IdentityQueryResponse::Session(Some(s)) if s.user == caller.user => {}
        _ => return Err(not_found()),
    }
    propose(&g, &IdentityCommand::Revoke { session: sid }).await?;
    Ok(axum::Json(json!({"status": "revoked"})).into_response())
}

/// `POST /api/auth/register`: a new user, when an admin has turned self-registration on.
#[utoipa::path(post, path = "/api/auth/register", request_body = SetupBody, responses((status = 201, description = "The new user, logged in"), (status = 403, description = "Self-registration is off"), (status = 409, description = "The email is taken")))]
async fn register(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let headers = req.headers().clone();
    let ip = client_ip(&req);
    let body: SetupBody = json_body(req).await?;
    check_password(&body.password)?;
    if let IdentityQueryResponse::Flag(false) = ask(&g, &IdentityQuery::Registration).await? {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "self-registration is off",
        ));
    }
    let hash = hash_password(body.password).await?;
    let cmd = IdentityCommand::Register {
        email: body.email,
        name: body.name,
        password_hash: hash,
    };
    let id = match propose(&g, &cmd).await? {
        IdentityResponse::User { id } => id,
        _ => return Err(ApiError::internal("unexpected answer")),
    };
    signed_up(&g, id, &headers, &ip).await
}

#[derive(Deserialize, utoipa::ToSchema)]
struct RegistrationBody {
    enabled: bool,
}

/// `PUT /api/auth/registration` (admins): turn self-registration on or off.
#[utoipa::path(put, path = "/api/auth/registration", request_body = RegistrationBody, responses((status = 200, description = "Switched"), (status = 403, description = "Admins only")))]
async fn set_registration(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    caller.admin()?;
    let body: RegistrationBody = json_body(req).await?;
    propose(
        &g,
        &IdentityCommand::SetRegistration {
            enabled: body.enabled,
        },
    )
    .await?;
    Ok(axum::Json(json!({"registration": body.enabled})).into_response())
}

/// `POST /api/auth/totp/enable`: a new TOTP secret for the caller (2FA turns on once a code
/// from it is verified).
#[utoipa::path(post, path = "/api/auth/totp/enable", responses((status = 200, description = "A pending secret and its otpauth URI")))]
async fn totp_enable(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.session_only()?;
    let secret = random32()?[..20].to_vec();
    let sealed = g
        .secrets
        .seal(TOTP_PURPOSE, &secret)
        .map_err(ApiError::internal)?;
    propose(
        &g,
        &IdentityCommand::TotpPending {
            user: caller.user,
            sealed,
        },
    )
    .await?;
    let b32 = totp_rs::Secret::from(secret).to_base32();
    let uri = format!(
        "otpauth://totp/Cairn:{}?secret={b32}&issuer=Cairn&algorithm=SHA1&digits=6&period=30",
        urlencoding::encode(&caller.record.email)
    );
    Ok(axum::Json(json!({"secret": b32, "otpauth_uri": uri})).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct TotpBody {
    code: String,
}

/// `POST /api/auth/totp/verify`: a code from the pending secret turns 2FA on.
#[utoipa::path(post, path = "/api/auth/totp/verify", request_body = TotpBody, responses((status = 200, description = "2FA is on"), (status = 400, description = "Wrong code or nothing pending")))]
async fn totp_verify(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    caller.session_only()?;
    let body: TotpBody = json_body(req).await?;
    let Some(sealed) = &caller.record.totp_pending else {
        return Err(ApiError::bad(
            "no TOTP secret is pending: call totp/enable first",
        ));
    };
    let step = totp_step(&g, sealed, &body.code)?
        .ok_or_else(|| ApiError::bad("the TOTP code is wrong"))?;
    propose(
        &g,
        &IdentityCommand::TotpEnable {
            user: caller.user,
            step,
        },
    )
    .await?;
    Ok(axum::Json(json!({"totp_enabled": true})).into_response())
}

/// Fixed one-minute windows of requests per client: per address for the credential routes,
/// per API key or session for everything authenticated. At most 100,000 clients are tracked
/// (about 10 MiB); past that, windows that ended are dropped.
#[derive(Debug)]
pub struct RateLimiter<K = std::net::IpAddr> {
    windows: parking_lot::Mutex<std::collections::HashMap<K, (std::time::Instant, u32)>>,
}

impl<K> Default for RateLimiter<K> {
    fn default() -> Self {
        RateLimiter {
            windows: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    /// Count a request from `ip`: the requests left in its window, or the seconds until it may
    /// try again.
    pub fn hit(&self, ip: K, limit: u32) -> Result<u32, u64> {
        const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
        let now = std::time::Instant::now();
        let mut w = self.windows.lock();
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = w.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= limit {
            let left = WINDOW.saturating_sub(now.duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(limit - entry.1)
    }
}

/// The credential routes (setup, login, refresh, password change) take at most
/// `GatewayOptions::auth_rate_limit` requests per minute per client address.
async fn limit_auth(
    State(g): State<Arc<Gateway>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = g.options.auth_rate_limit;
    if limit == 0 {
        return next.run(req).await;
    }
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let limit_header = (
        header::HeaderName::from_static("x-ratelimit-limit"),
        header::HeaderValue::from(limit),
    );
    match g.auth_limiter.hit(ip, limit) {
        Ok(remaining) => {
            let mut resp = next.run(req).await;
            resp.headers_mut().insert(limit_header.0, limit_header.1);
            resp.headers_mut().insert(
                header::HeaderName::from_static("x-ratelimit-remaining"),
                header::HeaderValue::from(remaining),
            );
            resp
        }
        Err(retry) => {
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many attempts from this address; retry in {retry} s"),
            )
            .into_response();
            let h = resp.headers_mut();
            h.insert(limit_header.0, limit_header.1);
            h.insert(
                header::HeaderName::from_static("x-ratelimit-remaining"),
                header::HeaderValue::from(0u32),
            );
            h.insert(header::RETRY_AFTER, header::HeaderValue::from(retry));
            resp
        }
    }
}

fn random_string(n: usize, alphabet: &[u8]) -> ApiResult<String> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut b = [0u8; 1];
        rng.fill(&mut b)
            .map_err(|_| ApiError::internal("system randomness failed"))?;
        // Rejection sampling keeps every symbol equally likely.
        let limit = 256 - 256 % alphabet.len();
        if usize::from(b[0]) < limit {
            out.push(char::from(alphabet[usize::from(b[0]) % alphabet.len()]));
        }
    }
    Ok(out)
}

/// `POST /api/s3-keys`: a new S3 key for the caller; the secret is shown once.
#[utoipa::path(post, path = "/api/s3-keys", responses((status = 201, description = "An S3 access key and its secret, shown once")))]
async fn create_s3_key(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.session_only()?;
    let access = format!(
        "CAIRN{}",
        random_string(15, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")?
    );
    let secret = random_string(
        40,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    )?;
    // The key acts in the tenant the caller acts in now.
    let tenant = crate::tenants::access(&g, &caller, None).await?.tenant;
    crate::auth::create_key(&g, &access, &secret, &hex_id(caller.user), Some(tenant))
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "id": access,
            "access_key": access,
            "secret_key": secret,
            "tenant_id": hex_id(tenant),
            "created_at": wall_ms() / 1000,
        })),
    )
        .into_response())
}

/// The caller's S3 keys: (access key, created ms, tenant).
async fn my_s3_keys(g: &Gateway, user: u128) -> ApiResult<Vec<(String, u64, Option<u128>)>> {
    match crate::auth::key_query(
        g,
        &cairn_master::keys::KeyQuery::ByOwner {
            owner: hex_id(user),
        },
    )
    .await
    .map_err(ApiError::internal)?
    {
        cairn_master::keys::KeyQueryResponse::Keys(k) => Ok(k
            .into_iter()
            .map(|(id, r)| (id, r.created_ms, r.tenant))
            .collect()),
        _ => Err(ApiError::internal("unexpected answer")),
    }
}

/// `GET /api/s3-keys`: the caller's S3 keys (never their secrets).
#[utoipa::path(get, path = "/api/s3-keys", responses((status = 200, description = "The caller's S3 keys")))]
async fn list_s3_keys(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let keys: Vec<serde_json::Value> = my_s3_keys(&g, caller.user)
        .await?
        .into_iter()
        .map(|(id, created, tenant)| {
            json!({"id": id, "access_key": id, "created_at": created / 1000,
                   "tenant_id": tenant.map(hex_id)})
        })
        .collect();
    Ok(axum::Json(json!({"keys": keys})).into_response())
}

/// `DELETE /api/s3-keys/{id}`: one of the caller's keys (another user's answers 404).
#[utoipa::path(delete, path = "/api/s3-keys/{id}", params(("id" = String, Path, description = "The id")), responses((status = 200, description = "Deleted"), (status = 404, description = "No such key of the caller")))]
async fn delete_s3_key(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    if !my_s3_keys(&g, caller.user)
        .await?
        .iter()
        .any(|(k, _, _)| *k == id)
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such key"));
    }
    let c = cairn_master::keys::KeyCommand::Delete { access_key: id };
    let bytes = command::<cairn_master::keys::KeyService>(&c)?;
    g.master
        .propose(bytes)
        .await?
        .map_err(|r| ApiError::internal(r.message))?;
    Ok(axum::Json(json!({"status": "deleted"})).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct NewApiKey {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    /// Seconds until the key expires; never when absent.
    #[serde(default)]
    expires_in: Option<u64>,
}

fn api_key_json(id: &str, k: &cairn_master::identity::ApiKey) -> serde_json::Value {
    json!({
        "id": id,
        "name": k.name,
        "scopes": k.scopes,
        "prefix": format!("cairn_{id}_"),
        "created_at": k.created_ms / 1000,
        "expires_at": k.expires_ms.map(|e| e / 1000),
        "last_used_at": k.last_used_ms.map(|e| e / 1000),
    })
}

/// A fresh key for `id`: (raw key, argon2 hash of its secret).
async fn new_api_secret(id: &str) -> ApiResult<(String, String)> {
    let secret = hex(&random32()?);
    let hash = hash_password(secret.clone()).await?;
    Ok((format!("cairn_{id}_{secret}"), hash))
}

/// `POST /api/keys`: a new API key; the raw key is shown once.
#[utoipa::path(post, path = "/api/keys", request_body = NewApiKey, responses((status = 201, description = "The key, shown once")))]
async fn create_api_key(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    caller.session_only()?;
    let body: NewApiKey = json_body(req).await?;
    let id = hex(&random32()?[..8]);
    let (raw, hash) = new_api_secret(&id).await?;
    let expires_ms = match body.expires_in {
        None => None,
        Some(s) if s > 0 && s <= 10 * 365 * 24 * 3600 => Some(wall_ms() + s * 1000),
        Some(_) => return Err(ApiError::bad("expires_in is 1 second to 10 years")),
    };
    propose(
        &g,
        &IdentityCommand::CreateApiKey {
            id: id.clone(),
            user: caller.user,
            name: body.name,
            scopes: body.scopes,
            hash,
            expires_ms,
        },
    )
    .await?;
    let key = match ask(&g, &IdentityQuery::ApiKey { id: id.clone() }).await? {
        IdentityQueryResponse::ApiKey(Some(k)) => k,
        _ => return Err(ApiError::internal("the new key is missing")),
    };
    let mut out = api_key_json(&id, &key);
    out["key"] = json!(raw);
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

async fn own_api_key(g: &Gateway, caller: &Caller, id: &str) -> ApiResult<()> {
    match ask(g, &IdentityQuery::ApiKey { id: id.to_owned() }).await? {
        IdentityQueryResponse::ApiKey(Some(k)) if k.user == caller.user => Ok(()),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such key")),
    }
}

/// `GET /api/keys`: the caller's API keys (never the keys themselves).
#[utoipa::path(get, path = "/api/keys", responses((status = 200, description = "The caller's keys")))]
async fn list_api_keys(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let keys = match ask(&g, &IdentityQuery::ApiKeys { user: caller.user }).await? {
        IdentityQueryResponse::ApiKeys(k) => k,
        _ => Vec::new(),
    };
    let items: Vec<_> = keys.iter().map(|(id, k)| api_key_json(id, k)).collect();
    Ok(axum::Json(json!({"keys": items})).into_response())
}

/// `DELETE /api/keys/{id}`.
#[utoipa::path(delete, path = "/api/keys/{id}", params(("id" = String, Path, description = "The id")), responses((status = 200, description = "Deleted"), (status = 404, description = "No such key of the caller")))]
async fn delete_api_key(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.session_only()?;
    own_api_key(&g, &caller, &id).await?;
    propose(&g, &IdentityCommand::DeleteApiKey { id }).await?;
    Ok(axum::Json(json!({"status": "deleted"})).into_response())
}

/// `POST /api/keys/{id}/rotate`: a new secret for the key; the old one stops working.
#[utoipa::path(post, path = "/api/keys/{id}/rotate", params(("id" = String, Path, description = "The id")), responses((status = 200, description = "The new key, shown once")))]
async fn rotate_api_key(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.session_only()?;
    own_api_key(&g, &caller, &id).await?;
    let (raw, hash) = new_api_secret(&id).await?;
    propose(
        &g,
        &IdentityCommand::RotateApiKey {
            id: id.clone(),
            hash,
        },
    )
    .await?;
    Ok(axum::Json(json!({"id": id, "key": raw})).into_response())
}

/// Reset tokens live this long.
const RESET_TTL_MS: u64 = 3600 * 1000;
/// The purpose reset tokens are sealed under.
const RESET_PURPOSE: &str = "cairn password reset token";

#[derive(Deserialize, utoipa::ToSchema)]
struct ForgotBody {
    email: String,
}

/// `POST /api/auth/forgot-password`: the same answer whether or not the account exists. With no
/// mail server configured, the token is recorded for an admin to hand over
/// (`GET /api/auth/password-resets`).
#[utoipa::path(post, path = "/api/auth/forgot-password", request_body = ForgotBody, responses((status = 202, description = "The same answer for any email")))]
async fn forgot_password(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let body: ForgotBody = json_body(req).await?;
    set_actor(cairn_master::identity::normalize_email(&body.email));
    let found = match ask(&g, &IdentityQuery::UserByEmail { email: body.email }).await? {
        IdentityQueryResponse::User(u) => u,
        _ => None,
    };
    let mailer = g.mailer.clone();
    if let Some((user, record)) = found {
        let id = u128::from_be_bytes(
            random32()?[..16]
                .try_into()
                .map_err(|_| ApiError::internal("id"))?,
        );
        let secret = random32()?;
        let token = format!("{}.{}", hex_id(id), hex(&secret));
        // Mailed tokens are not kept for the admin's listing.
        let sealed = if mailer.is_some() {
            Vec::new()
        } else {
            g.secrets
                .seal(RESET_PURPOSE, token.as_bytes())
                .map_err(ApiError::internal)?
        };
        propose(
            &g,
            &IdentityCommand::CreateReset {
                id,
                user,
                hash: sha256(&secret),
                sealed_token: sealed,
                expires_ms: wall_ms() + RESET_TTL_MS,
            },
        )
        .await?;
        // Sent in the background: the answer takes no longer for a known address.
        if let Some(m) = mailer.clone() {
            tokio::spawn(async move {
                match m
                    .send_reset(&record.email, &token, RESET_TTL_MS / 60_000)
                    .await
                {
                    Ok(()) => tracing::info!(to = %record.email, "password reset mail sent"),
                    Err(e) => tracing::error!(error = %e, "could not send a password reset mail"),
                }
            });
        }
    }
    let status = if mailer.is_some() {
        "if an account has this email, a reset token was sent to it"
    } else {
        "if an account has this email, a reset token was issued; an administrator can hand it over"
    };
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"status": status}))).into_response())
}

/// `GET /api/auth/password-resets` (admins): the pending reset tokens, to hand to their users.
#[utoipa::path(get, path = "/api/auth/password-resets", responses((status = 200, description = "Pending reset tokens"), (status = 403, description = "Admins only")))]
async fn password_resets(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.admin()?;
    let resets = match ask(&g, &IdentityQuery::PendingResets { now_ms: wall_ms() }).await? {
        IdentityQueryResponse::Resets(r) => r,
        _ => Vec::new(),
    };
    let mut items = Vec::new();
    // Tokens sent by mail are not kept (their sealed copy is empty).
    for (_, r, u) in resets
        .into_iter()
        .filter(|(_, r, _)| !r.sealed_token.is_empty())
    {
        let token = g
            .secrets
            .open(RESET_PURPOSE, &r.sealed_token)
            .map_err(ApiError::internal)?;
        items.push(json!({
            "email": u.email,
            "token": String::from_utf8_lossy(&token),
            "created_at": r.created_ms / 1000,
            "expires_at": r.expires_ms / 1000,
        }));
    }
    Ok(axum::Json(json!({"resets": items})).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ResetBody {
    token: String,
    new_password: String,
}

/// `POST /api/auth/reset-password`: a valid, unused token sets a new password and ends every
/// session of the account.
#[utoipa::path(post, path = "/api/auth/reset-password", request_body = ResetBody, responses((status = 200, description = "Password set; every session ended"), (status = 400, description = "Invalid, used or expired token")))]
async fn reset_password(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let body: ResetBody = json_body(req).await?;
    check_password(&body.new_password)?;
    let invalid = || ApiError::bad("the reset token is not valid (unknown, used or expired)");
    let (id, secret) = body.token.trim().split_once('.').ok_or_else(invalid)?;
    let id = parse_id(id).ok_or_else(invalid)?;
    let presented = sha256(&unhex32(secret).ok_or_else(invalid)?);
    let hash = hash_password(body.new_password).await?;
    let cmd = IdentityCommand::UseReset {
        id,
        presented,
        password_hash: hash,
    };
    let bytes = command::<IdentityService>(&cmd)?;
    match g.master.propose(bytes).await? {
        Ok(_) => Ok(
            axum::Json(json!({"status": "password changed; every session ended"})).into_response(),
        ),
        Err(r) if r.code == "bad_reset" => Err(invalid()),
        Err(r) => Err(ApiError::bad(r.message)),
    }
}

/// `POST /api/auth/jwt-key/rotate` (admins): a new token signing key. Tokens signed with the
/// current key stay valid until the next rotation; older ones stop working.
#[utoipa::path(post, path = "/api/auth/jwt-key/rotate", responses((status = 200, description = "The new key's id"), (status = 403, description = "Admins only")))]
async fn rotate_jwt_key(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    caller.admin()?;
    let sealed = g
        .secrets
        .seal(JWT_KEY_PURPOSE, &random32()?)
        .map_err(ApiError::internal)?;
    let IdentityResponse::Created { id } =
        propose(&g, &IdentityCommand::RotateJwtKey { sealed }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    jwt_keys(&g, true).await?;
    Ok(axum::Json(json!({"kid": id})).into_response())
}

/// A known route with a method it does not take: 405 with a JSON body like every other error.
async fn json_method_errors(req: Request, next: axum::middleware::Next) -> Response {
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

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// The OpenAPI document of every `/api` route, generated from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Cairn API",
        description = "Accounts, sessions, keys, tenants, policies and audit of a Cairn cluster"
    ),
    paths(
        setup,
        login,
        register,
        refresh,
        logout,
        me,
        change_password,
        sessions,
        revoke_session,
        set_registration,
        totp_enable,
        totp_verify,
        forgot_password,
        reset_password,
        password_resets,
        rotate_jwt_key,
        create_api_key,
        list_api_keys,
        delete_api_key,
        rotate_api_key,
        create_s3_key,
        list_s3_keys,
        delete_s3_key,
        audit_logs,
        openapi
    )
)]
struct ApiDoc;

/// `GET /api/openapi.json`.
#[utoipa::path(get, path = "/api/openapi.json", responses((status = 200, description = "This document")))]
async fn openapi() -> Response {
    use utoipa::OpenApi;
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::tenants::TenantDoc::openapi());
    doc.merge(crate::storage::StorageDoc::openapi());
    doc.merge(crate::shares::SharesDoc::openapi());
    doc.merge(crate::images::ImagesDoc::openapi());
    match doc.to_json() {
        Ok(doc) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// The `/api` routes (mounted under `/api`).
pub fn router(g: Arc<Gateway>) -> Router {
    let credentials = Router::new()
        .route("/auth/setup", post(setup))
        .route("/auth/login", post(login))
        .route("/auth/register", post(register))
        .route("/auth/totp/verify", post(totp_verify))
        .route("/auth/forgot-password", post(forgot_password))
        .route("/auth/reset-password", post(reset_password))
        .route("/auth/refresh", post(refresh))
        .route("/auth/change-password", post(change_password))
        .route_layer(axum::middleware::from_fn_with_state(g.clone(), limit_auth));
    let routes = Router::new()
        .merge(credentials)
        .route("/auth/logout", post(logout))
        .route("/auth/jwt-key/rotate", post(rotate_jwt_key))
        .route("/auth/registration", axum::routing::put(set_registration))
        .route("/auth/password-resets", get(password_resets))
        .route("/auth/totp/enable", post(totp_enable))
        .route("/auth/me", get(me))
        .route("/auth/sessions", get(sessions))
        .route("/auth/sessions/{id}", delete(revoke_session))
        .route("/keys", get(list_api_keys).post(create_api_key))
        .route("/keys/{id}", delete(delete_api_key))
        .route("/keys/{id}/rotate", post(rotate_api_key))
        .route("/s3-keys", get(list_s3_keys).post(create_s3_key))
        .route("/s3-keys/{id}", delete(delete_s3_key))
        .route("/audit/logs", get(audit_logs))
        .route("/openapi.json", get(openapi))
        .merge(crate::tenants::routes())
        .merge(crate::storage::routes())
        .merge(crate::shares::routes())
        .merge(crate::images::routes());
    with_layers(routes, g)
}

/// What every JSON router shares: audit entries for changes, rate-limit headers, JSON 404s
/// and 405s.
pub(crate) fn with_layers(routes: Router<Arc<Gateway>>, g: Arc<Gateway>) -> Router {
    routes
        .layer(axum::middleware::from_fn_with_state(g.clone(), audit_layer))
        .layer(axum::middleware::from_fn(caller_rate_headers))
        .layer(axum::middleware::from_fn(json_method_errors))
        .fallback(not_found)
        .with_state(g)
}
