//! Who is calling: an access token (JWT, signed with a key sealed in the replicated state)
//! or an API key (`Authorization: Bearer` or `X-API-Key`), resolved to a [`Caller`]; and the
//! identity service's commands and queries the credentials live in.

use axum::http::{HeaderMap, StatusCode, header};
use cairn_engine::state::{Rejection, TypedService};
use cairn_master::dataplane::{command, wall_ms};
use cairn_master::identity::{
    IdentityCommand, IdentityQuery, IdentityQueryResponse, IdentityRefusal, IdentityResponse,
    IdentityService, User,
};
use cairn_proto::Consistency;
use serde::{Deserialize, Serialize};

use crate::Gateway;
use crate::kernel::crypto::{sha256, verify_password};
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::ids::{hex_id, parse_id};
use crate::kernel::layers::set_actor;
use crate::kernel::limits::limit_caller;

/// Access tokens live this long by default (`api.access_token_ttl`).
pub const ACCESS_TTL_S: u64 = 15 * 60;

/// The purpose the JWT key is sealed under.
pub(crate) const JWT_KEY_PURPOSE: &str = "cairn jwt signing key";

/// How long a gateway signs with the key it opened before looking for a newer one (after a
/// rotation, other gateways pick up the new key within this time).
pub(crate) const JWT_KEYS_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The token signing keys, opened from the replicated state: the current one (which signs)
/// and the one it replaced (which still verifies), by key id.
#[derive(Clone, Debug)]
pub struct JwtKeys {
    pub(crate) current: (u32, Vec<u8>),
    pub(crate) previous: Option<(u32, Vec<u8>)>,
    pub(crate) fetched: std::time::Instant,
}

impl JwtKeys {
    pub(crate) fn by_kid(&self, kid: u32) -> Option<&[u8]> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|(k, _)| *k == kid)
            .map(|(_, key)| key.as_slice())
    }
}

/// The signing keys (kept for [`JWT_KEYS_FOR`], or fetched anew with `fresh`).
pub(crate) async fn jwt_keys(g: &Gateway, fresh: bool) -> ApiResult<JwtKeys> {
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
pub(crate) struct Claims {
    pub(crate) sub: String,
    pub(crate) sid: String,
    pub(crate) iat: u64,
    pub(crate) exp: u64,
    pub(crate) iss: String,
}

/// Who is calling: a valid access token of a live session, or an API key. Revocation counts at
/// once for sessions, within 5 s for API keys.
pub(crate) struct Caller {
    pub(crate) user: u128,
    pub(crate) session: u128,
    pub(crate) record: User,
    /// The scopes of the API key the caller used; `None` for a login session.
    pub(crate) key_scopes: Option<Vec<String>>,
}

impl Caller {
    /// Routes that manage the account itself take a login session, not an API key.
    pub(crate) fn session_only(&self) -> ApiResult<()> {
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
pub(crate) const API_KEY_CACHE: std::time::Duration = std::time::Duration::from_secs(5);

/// A key's last use is recorded at most this often.
pub(crate) const API_KEY_TOUCH_MS: u64 = 60_000;

/// Verified API keys (by the SHA-256 of the raw key) and when each was last recorded as used.
#[derive(Debug, Default)]
pub struct ApiKeyCache {
    #[allow(clippy::type_complexity)]
    pub(crate) verified: parking_lot::Mutex<
        std::collections::HashMap<[u8; 32], (u128, Vec<String>, Option<u64>, std::time::Instant)>,
    >,
    pub(crate) touched: parking_lot::Mutex<std::collections::HashMap<String, u64>>,
}

/// `cairn_ID_SECRET`: the id (16 hex digits) is the lookup prefix, the secret 64 hex digits.
pub(crate) fn split_api_key(token: &str) -> Option<(&str, &str)> {
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

pub(crate) async fn authenticate_key(g: &Gateway, token: &str) -> ApiResult<Caller> {
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
    if headers.contains_key(header::AUTHORIZATION) || headers.contains_key(API_KEY_HEADER) {
        authenticate(g, headers).await.map(Some)
    } else {
        Ok(None)
    }
}

/// The header an API key may come in instead of `Authorization: Bearer` (as the platforms
/// Cairn's users come from accept it).
pub(crate) const API_KEY_HEADER: &str = "x-api-key";

/// The caller a request's credentials name: an API key in `X-API-Key`, or an access token or
/// API key in `Authorization: Bearer`. Sending both is refused (which one would count?).
pub(crate) async fn authenticate(g: &Gateway, headers: &HeaderMap) -> ApiResult<Caller> {
    if let Some(key) = headers.get(API_KEY_HEADER) {
        if headers.contains_key(header::AUTHORIZATION) {
            return Err(ApiError::bad(
                "send one credential: X-API-Key or Authorization, not both",
            ));
        }
        let key = key
            .to_str()
            .map_err(|_| ApiError::unauthorized("invalid API key"))?
            .trim();
        if split_api_key(key).is_none() {
            return Err(ApiError::unauthorized(
                "invalid API key: X-API-Key takes an API key (cairn_ID_SECRET)",
            ));
        }
        return authenticate_key(g, key).await;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized("missing credentials: Authorization: Bearer or X-API-Key")
        })?
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

/// Commit an identity command; a refusal maps to its status.
pub(crate) async fn propose(g: &Gateway, c: &IdentityCommand) -> ApiResult<IdentityResponse> {
    let bytes = command::<IdentityService>(c)?;
    match g.master.propose(bytes).await? {
        Ok(b) => IdentityService::response(&b).map_err(ApiError::internal),
        Err(r) => Err(identity_error(r)),
    }
}

/// Propose a command of service `S` (the platform services' REST modules); a refusal becomes
/// the JSON error `refused` maps it to (each service maps its refusal codes once).
pub(crate) async fn service_command<S: TypedService>(
    g: &Gateway,
    c: &S::Command,
    refused: fn(Rejection) -> ApiError,
) -> ApiResult<S::Response> {
    let bytes = command::<S>(c)?;
    match g.master.propose(bytes).await? {
        Ok(b) => S::response(&b).map_err(ApiError::internal),
        Err(r) => Err(refused(r)),
    }
}

/// A linearizable query of service `S`.
pub(crate) async fn service_query<S: TypedService>(
    g: &Gateway,
    q: &S::Query,
) -> ApiResult<S::QueryResponse> {
    let payload = S::encode_query(q).map_err(ApiError::internal)?;
    let bytes = g
        .master
        .query(S::ID, payload, Consistency::Linearizable)
        .await?
        .map_err(|r| ApiError::bad(r.message))?;
    S::query_response(&bytes).map_err(ApiError::internal)
}

/// The JSON error for a refusal from the identity service: each [`IdentityRefusal`] maps here,
/// once.
pub(crate) fn identity_error(r: Rejection) -> ApiError {
    use IdentityRefusal as I;
    let Some(kind) = r.kind::<IdentityRefusal>() else {
        // The envelope's refusals (a command this build cannot read), or a code a newer
        // master sends: the request is what was refused.
        return ApiError::bad(r.message);
    };
    match kind {
        I::SetupDone | I::EmailTaken => ApiError::new(StatusCode::CONFLICT, r.message),
        I::RegistrationClosed | I::Forbidden => ApiError::new(StatusCode::FORBIDDEN, r.message),
        I::InvalidEmail | I::InvalidName | I::InvalidArgument | I::InvalidPolicy => {
            ApiError::bad(r.message)
        }
        I::NoSuchSession | I::SessionEnded | I::BadToken => {
            ApiError::unauthorized("the refresh token is not valid")
        }
        I::NoSuchUser | I::NoSuchTenant | I::NotMember | I::NoSuchPolicy | I::NotAttached => {
            ApiError::new(StatusCode::NOT_FOUND, r.message)
        }
        I::LastOwner | I::PolicyExists | I::TenantExists | I::TooMany => {
            ApiError::new(StatusCode::CONFLICT, r.message)
        }
        I::SetupNeeded
        | I::BadReset
        | I::NoPendingTotp
        | I::TotpReused
        | I::KeyExists
        | I::NoSuchKey => ApiError::bad(r.message),
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
