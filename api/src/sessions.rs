//! Users and sessions under `/api/auth`: first-boot setup, registration, login with TOTP,
//! refresh-token rotation (a reused refresh token revokes its session), logout, password
//! change and reset, and the access-token signing key's rotation.
//!
//! Passwords are hashed with argon2id (on the blocking pool, never in the state machine);
//! access tokens are short-lived HS256 JWTs; refresh tokens are `SESSION.SECRET`, stored as the
//! secret's SHA-256.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use cairn_master::dataplane::{command, wall_ms};
use cairn_master::identity::{
    IdentityCommand, IdentityQuery, IdentityQueryResponse, IdentityRefusal, IdentityResponse,
    IdentityService, Session, User,
};
use serde::Deserialize;
use serde_json::json;

use crate::Gateway;
use crate::kernel::caller::{Claims, JWT_KEY_PURPOSE, ask, authenticate, jwt_keys, propose};
use crate::kernel::crypto::{hash_password, hex, random32, sha256, unhex32, verify_password};
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::ids::{hex_id, parse_id};
use crate::kernel::json::json_body;
use crate::kernel::layers::{client_ip, set_actor};
use crate::kernel::limits::limit_auth;
use crate::kernel::rfc3339;

/// Refresh tokens (sessions) live this long after their last use.
pub const REFRESH_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// Passwords are 8 to 1024 bytes.
const PASSWORD_MIN: usize = 8;

const PASSWORD_MAX: usize = 1024;

fn check_password(p: &str) -> ApiResult<()> {
    if p.len() < PASSWORD_MIN || p.len() > PASSWORD_MAX {
        return Err(ApiError::bad(format!(
            "passwords are {PASSWORD_MIN} to {PASSWORD_MAX} bytes"
        )));
    }
    Ok(())
}

fn user_json(id: u128, u: &User) -> serde_json::Value {
    json!({
        "id": hex_id(id),
        "email": u.email,
        "name": u.name,
        "admin": u.admin,
        "created_at": rfc3339(u.created_ms),
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
                "created_at": rfc3339(s.created_ms),
                "last_used_at": rfc3339(s.refreshed_ms),
                "expires_at": rfc3339(s.expires_ms),
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
            "created_at": rfc3339(r.created_ms),
            "expires_at": rfc3339(r.expires_ms),
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
        Err(r) if r.kind() == Some(IdentityRefusal::BadReset) => Err(invalid()),
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

/// The credential routes: rate limited per client address.
pub(crate) fn credential_routes(g: Arc<Gateway>) -> Router<Arc<Gateway>> {
    Router::new()
        .route("/auth/setup", post(setup))
        .route("/auth/login", post(login))
        .route("/auth/register", post(register))
        .route("/auth/totp/verify", post(totp_verify))
        .route("/auth/forgot-password", post(forgot_password))
        .route("/auth/reset-password", post(reset_password))
        .route("/auth/refresh", post(refresh))
        .route("/auth/change-password", post(change_password))
        .route_layer(axum::middleware::from_fn_with_state(g, limit_auth))
}

/// The other `/api/auth` routes.
pub(crate) fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/auth/logout", post(logout))
        .route("/auth/jwt-key/rotate", post(rotate_jwt_key))
        .route("/auth/registration", axum::routing::put(set_registration))
        .route("/auth/password-resets", get(password_resets))
        .route("/auth/totp/enable", post(totp_enable))
        .route("/auth/me", get(me))
        .route("/auth/sessions", get(sessions))
        .route("/auth/sessions/{id}", delete(revoke_session))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
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
    rotate_jwt_key
))]
pub(crate) struct SessionsDoc;
