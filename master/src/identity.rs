//! The identity service (service 6): users, login sessions and the token signing key.
//!
//! Everything secret arrives already protected: passwords as argon2 PHC strings (hashed by the
//! gateway, never in `apply`), refresh tokens as SHA-256 digests, the JWT signing key sealed
//! with the cluster secrets key. The log and the state never hold a password, a token or a key
//! in the clear.
//!
//! Tables (values postcard):
//! - `id.users`: user id (u128 BE) → [`User`]
//! - `id.emails`: lowercased email → user id (u128 BE)
//! - `id.sessions`: session id (u128 BE) → [`Session`]
//! - `id.user_sessions`: user id ‖ session id → empty (the index of a user's sessions)
//! - `id.meta`: `jwt_key` → the sealed signing key; `registration` → 1 when open
//! - `id.api_keys`: key id (its lookup prefix) → [`ApiKey`]
//! - `id.resets`: reset id (u128 BE) → [`PasswordReset`]

use cairn_engine::state::{
    ApplyContext, ApplyError, Rejection, ServiceId, StateError, Table, TypedService, TypedTable,
    reject,
};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::policy::{Policy, Role, Statement};
pub use crate::tenancy::IdentityRefusal;
use crate::tenancy::{self, AccessView, DEFAULT_TENANT, Tenant};

pub(crate) const USERS: TypedTable<u128, User> = TypedTable::new("id.users");
const EMAILS: Table = Table::new("id.emails");
const SESSIONS: TypedTable<u128, Session> = TypedTable::new("id.sessions");
/// user id ‖ session id → nothing: a user's sessions without a scan.
const USER_SESSIONS: Table = Table::new("id.user_sessions");
const META: Table = Table::new("id.meta");
/// API key id → [`ApiKey`].
const API_KEYS: TypedTable<String, ApiKey> = TypedTable::new("id.api_keys");
/// Password reset id → [`PasswordReset`].
const RESETS: TypedTable<u128, PasswordReset> = TypedTable::new("id.resets");
const JWT_KEY: &[u8] = b"jwt_key";
/// The current signing key's id (u32 BE; absent: 0, the key setup made).
const JWT_KID: &[u8] = b"jwt_kid";
/// The key the current one replaced: kid (u32 BE) ‖ sealed key. Tokens it signed stay valid
/// until the next rotation (access tokens live 15 minutes).
const JWT_PREVIOUS: &[u8] = b"jwt_previous";
const REGISTRATION: &[u8] = b"registration";

/// Most sessions listed at once.
pub const SESSIONS_LIST_MAX: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub email: String,
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub admin: bool,
    pub created_ms: u64,
    /// The TOTP secret, sealed with the cluster secrets key, once 2FA is on.
    pub totp: Option<Vec<u8>>,
    /// A TOTP secret handed out by `enable`, waiting for its first code.
    pub totp_pending: Option<Vec<u8>>,
    /// The last 30-second step a code was accepted for: each code works once.
    pub totp_last_step: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user: u128,
    /// SHA-256 of the current refresh token's secret.
    pub refresh_hash: [u8; 32],
    /// SHA-256 of the refresh secret it replaced: presenting it again is token theft.
    pub previous_hash: Option<[u8; 32]>,
    pub created_ms: u64,
    pub refreshed_ms: u64,
    pub expires_ms: u64,
    pub revoked: bool,
    pub ip: String,
    pub agent: String,
}

/// An API key: a Bearer token for scripts, stored as an argon2 hash behind its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub user: u128,
    pub name: String,
    pub scopes: Vec<String>,
    /// argon2id PHC string of the key's secret part.
    pub hash: String,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub last_used_ms: Option<u64>,
}

/// A password reset token waiting to be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordReset {
    pub user: u128,
    /// SHA-256 of the token's secret.
    pub hash: [u8; 32],
    /// The whole token sealed with the cluster secrets key, for an admin to hand over (there
    /// is no mail server to send it).
    pub sealed_token: Vec<u8>,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub used: bool,
}

/// Scopes an API key may carry.
pub const SCOPES: &[&str] = &["storage:read", "storage:write", "admin"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityCommand {
    /// Create the first user, an admin, and store the signing key; refused once a user exists.
    Setup {
        email: String,
        name: String,
        password_hash: String,
        sealed_jwt_key: Vec<u8>,
    },
    /// Open a session for `user`.
    CreateSession {
        user: u128,
        refresh_hash: [u8; 32],
        expires_ms: u64,
        ip: String,
        agent: String,
    },
    /// Rotate a session's refresh token if `presented` is its current one.
    Refresh {
        session: u128,
        presented: [u8; 32],
        next: [u8; 32],
        expires_ms: u64,
    },
    Revoke {
        session: u128,
    },
    /// A new (non-admin) user, if self-registration is on.
    Register {
        email: String,
        name: String,
        password_hash: String,
    },
    /// Turn self-registration on or off.
    SetRegistration {
        enabled: bool,
    },
    /// Hand a user a pending TOTP secret (sealed).
    TotpPending {
        user: u128,
        sealed: Vec<u8>,
    },
    /// The pending secret proved itself with a code of `step`: 2FA is on.
    TotpEnable {
        user: u128,
        step: u64,
    },
    /// A code of `step` was used (login): refused unless newer than the last one.
    TotpUse {
        user: u128,
        step: u64,
    },
    CreateApiKey {
        id: String,
        user: u128,
        name: String,
        scopes: Vec<String>,
        hash: String,
        expires_ms: Option<u64>,
    },
    RotateApiKey {
        id: String,
        hash: String,
    },
    DeleteApiKey {
        id: String,
    },
    /// Record a use (the gateway sends at most one a minute per key).
    TouchApiKey {
        id: String,
    },
    CreateReset {
        id: u128,
        user: u128,
        hash: [u8; 32],
        sealed_token: Vec<u8>,
        expires_ms: u64,
    },
    /// Use a reset token: the password changes and every session of the user ends.
    UseReset {
        id: u128,
        presented: [u8; 32],
        password_hash: String,
    },
    /// Set a new password; every other session of the user is revoked.
    ChangePassword {
        user: u128,
        password_hash: String,
        keep_session: u128,
    },
    /// A new tenant owned by `owner` (who acts in it if it is their first).
    CreateTenant {
        name: String,
        owner: u128,
    },
    /// `user` acts in `tenant` from now on (they must be a member).
    SwitchTenant {
        user: u128,
        tenant: u128,
    },
    /// Add a member or change their role (`actor` must manage the tenant).
    SetMember {
        tenant: u128,
        actor: u128,
        user: u128,
        role: Role,
    },
    RemoveMember {
        tenant: u128,
        actor: u128,
        user: u128,
    },
    CreatePolicy {
        tenant: u128,
        actor: u128,
        name: String,
        statements: Vec<Statement>,
    },
    DeletePolicy {
        tenant: u128,
        actor: u128,
        policy: u128,
    },
    /// Attach (`on`) or detach a policy to a member.
    AttachPolicy {
        tenant: u128,
        actor: u128,
        policy: u128,
        user: u128,
        on: bool,
    },
    /// A new token signing key (sealed) replaces the current one, which is kept to verify the
    /// tokens it signed; the one before it is dropped.
    RotateJwtKey {
        sealed: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityResponse {
    Done,
    User {
        id: u128,
    },
    Session {
        id: u128,
    },
    Refreshed,
    /// The refresh token was one already rotated away: the session is now revoked.
    Reused,
    /// The id of what the command created (a tenant, a policy).
    Created {
        id: u128,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityQuery {
    UserCount,
    Registration,
    UserByEmail {
        email: String,
    },
    User {
        id: u128,
    },
    Session {
        id: u128,
    },
    Sessions {
        user: u128,
    },
    SealedJwtKey,
    ApiKey {
        id: String,
    },
    ApiKeys {
        user: u128,
    },
    /// Unused, unexpired reset tokens at `now_ms`, with their users.
    PendingResets {
        now_ms: u64,
    },
    /// The user's tenants with their role, and the current one.
    Tenants {
        user: u128,
    },
    Tenant {
        id: u128,
    },
    /// A tenant's members with their role and user record.
    Members {
        tenant: u128,
    },
    /// What `user` may do in `tenant` (their current one when `None`).
    Access {
        user: u128,
        tenant: Option<u128>,
    },
    /// A tenant's policies and whom each is attached to.
    Policies {
        tenant: u128,
    },
    /// The current signing key and the one it replaced, with their ids.
    JwtKeys,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityQueryResponse {
    Count(u64),
    Flag(bool),
    User(Option<(u128, User)>),
    Session(Option<Session>),
    Sessions(Vec<(u128, Session)>),
    Key(Option<Vec<u8>>),
    ApiKey(Option<ApiKey>),
    ApiKeys(Vec<(String, ApiKey)>),
    Resets(Vec<(u128, PasswordReset, User)>),
    Tenants {
        tenants: Vec<(u128, Tenant, Role)>,
        current: Option<u128>,
    },
    Tenant(Option<Tenant>),
    Members(Vec<(u128, Role, User)>),
    Access(Option<AccessView>),
    Policies(Vec<(u128, Policy, Vec<u128>)>),
    /// (kid, sealed key) of the current and the previous signing key.
    JwtKeys {
        current: Option<(u32, Vec<u8>)>,
        previous: Option<(u32, Vec<u8>)>,
    },
}

#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityService;

/// A stored key id (u32 BE); absent is 0.
fn kid_of(v: Option<&[u8]>) -> Result<u32, StateError> {
    match v {
        None => Ok(0),
        Some(b) => Ok(u32::from_be_bytes(b.try_into().map_err(|_| {
            StateError::Corrupt("jwt key id is not 4 bytes".into())
        })?)),
    }
}

/// Compare two secret digests in constant time.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

fn id_of(b: &[u8]) -> Result<u128, StateError> {
    let a: [u8; 16] = b
        .try_into()
        .map_err(|_| StateError::Corrupt("identity id is not 16 bytes".into()))?;
    Ok(u128::from_be_bytes(a))
}

/// Emails are compared lowercased and trimmed.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A plausible email: one `@`, something before it, a dot in the domain, at most 254 bytes.
pub fn check_email(email: &str) -> Result<(), Rejection> {
    let ok = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(Rejection::new(
            IdentityRefusal::InvalidEmail,
            "not a valid email address",
        ))
    }
}

fn check_name(name: &str) -> Result<(), Rejection> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(Rejection::new(
            IdentityRefusal::InvalidName,
            "names are 1 to 200 characters",
        ));
    }
    Ok(())
}

cairn_engine::records! {
    User = "user",
    Session = "session",
    ApiKey = "api key",
    PasswordReset = "password reset",
}

fn check_hash(hash: &str) -> Result<(), Rejection> {
    if !hash.starts_with("$argon2") || hash.len() > 512 {
        return Err(Rejection::new(
            IdentityRefusal::InvalidArgument,
            "passwords are stored as argon2 hashes",
        ));
    }
    Ok(())
}

fn load_user(txn: &WriteTransaction, id: u128) -> Result<User, ApplyError> {
    USERS
        .open(txn)?
        .get(&id)?
        .ok_or_else(|| reject(IdentityRefusal::NoSuchUser, "no such user"))
}

fn load_api_key(txn: &WriteTransaction, id: &str) -> Result<ApiKey, ApplyError> {
    API_KEYS
        .open(txn)?
        .get(&id.to_owned())?
        .ok_or_else(|| reject(IdentityRefusal::NoSuchKey, "no such API key"))
}

fn store_api_key(txn: &WriteTransaction, id: &str, key: &ApiKey) -> Result<(), ApplyError> {
    API_KEYS.open(txn)?.insert(&id.to_owned(), key)?;
    Ok(())
}

fn store_user(txn: &WriteTransaction, id: u128, u: &User) -> Result<(), ApplyError> {
    USERS.open(txn)?.insert(&id, u)?;
    Ok(())
}

fn pair(user: u128, session: u128) -> [u8; 32] {
    tenancy::key2(user, session)
}

/// The session ids of `user`, from the index.
fn sessions_of(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    user: u128,
) -> Result<Vec<u128>, StateError> {
    let start = pair(user, 0);
    let mut out = Vec::new();
    for item in t.range(start.as_slice()..)? {
        let (k, _) = item?;
        let k = k.value();
        if k.len() != 32 || k[..16] != start[..16] {
            break;
        }
        out.push(id_of(&k[16..])?);
    }
    Ok(out)
}

fn session(txn: &WriteTransaction, id: u128) -> Result<Session, ApplyError> {
    SESSIONS
        .open(txn)?
        .get(&id)?
        .ok_or_else(|| reject(IdentityRefusal::NoSuchSession, "no such session"))
}

fn put_session(txn: &WriteTransaction, id: u128, s: &Session) -> Result<(), ApplyError> {
    SESSIONS.open(txn)?.insert(&id, s)?;
    Ok(())
}

impl TypedService for IdentityService {
    const ID: ServiceId = ServiceId(6);
    const NAME: &'static str = "identity";
    const VERSION: u16 = 1;
    type Command = IdentityCommand;
    type Response = IdentityResponse;
    type Query = IdentityQuery;
    type QueryResponse = IdentityQueryResponse;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        USERS.init(txn)?;
        txn.open_table(EMAILS)?;
        SESSIONS.init(txn)?;
        txn.open_table(USER_SESSIONS)?;
        txn.open_table(META)?;
        API_KEYS.init(txn)?;
        RESETS.init(txn)?;
        tenancy::init(txn)?;
        Ok(())
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: IdentityCommand,
    ) -> Result<IdentityResponse, ApplyError> {
        match command {
            IdentityCommand::Setup {
                email,
                name,
                password_hash,
                sealed_jwt_key,
            } => {
                let email = normalize_email(&email);
                check_email(&email)?;
                check_name(&name)?;
                check_hash(&password_hash)?;
                if !USERS.open(txn)?.is_empty()? {
                    return Err(reject(
                        IdentityRefusal::SetupDone,
                        "setup is done: a user exists",
                    ));
                }
                let id = ctx.fresh_id();
                let user = User {
                    email: email.clone(),
                    name,
                    password_hash,
                    admin: true,
                    created_ms: ctx.time_ms,
                    totp: None,
                    totp_pending: None,
                    totp_last_step: 0,
                };
                store_user(txn, id, &user)?;
                txn.open_table(EMAILS)?
                    .insert(email.as_bytes(), id.to_be_bytes().as_slice())?;
                {
                    let mut meta = txn.open_table(META)?;
                    if meta.get(JWT_KEY)?.is_none() {
                        meta.insert(JWT_KEY, sealed_jwt_key.as_slice())?;
                    }
                }
                // The first admin owns the default tenant, which holds whatever the root key
                // made before setup, and the root key becomes theirs.
                tenancy::create(txn, USERS, DEFAULT_TENANT, "default", id, ctx.time_ms)?;
                crate::keys::adopt_root_keys(txn, &format!("{id:032x}"), DEFAULT_TENANT)?;
                Ok(IdentityResponse::User { id })
            }
            IdentityCommand::Register {
                email,
                name,
                password_hash,
            } => {
                let email = normalize_email(&email);
                check_email(&email)?;
                check_name(&name)?;
                check_hash(&password_hash)?;
                let open = txn
                    .open_table(META)?
                    .get(REGISTRATION)?
                    .is_some_and(|v| v.value() == [1]);
                if !open {
                    return Err(reject(
                        IdentityRefusal::RegistrationClosed,
                        "self-registration is off",
                    ));
                }
                if txn.open_table(EMAILS)?.get(email.as_bytes())?.is_some() {
                    return Err(reject(
                        IdentityRefusal::EmailTaken,
                        "an account with this email exists",
                    ));
                }
                let id = ctx.fresh_id();
                let workspace: String = format!("{name}'s workspace")
                    .chars()
                    .filter(|c| *c != '\0')
                    .take(200)
                    .collect();
                let user = User {
                    email: email.clone(),
                    name,
                    password_hash,
                    admin: false,
                    created_ms: ctx.time_ms,
                    totp: None,
                    totp_pending: None,
                    totp_last_step: 0,
                };
                store_user(txn, id, &user)?;
                txn.open_table(EMAILS)?
                    .insert(email.as_bytes(), id.to_be_bytes().as_slice())?;
                // Every registered user starts in a tenant of their own.
                tenancy::create(txn, USERS, ctx.fresh_id(), &workspace, id, ctx.time_ms)?;
                Ok(IdentityResponse::User { id })
            }
            IdentityCommand::SetRegistration { enabled } => {
                txn.open_table(META)?
                    .insert(REGISTRATION, [u8::from(enabled)].as_slice())?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::TotpPending { user, sealed } => {
                let mut u = load_user(txn, user)?;
                u.totp_pending = Some(sealed);
                store_user(txn, user, &u)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::TotpEnable { user, step } => {
                let mut u = load_user(txn, user)?;
                let Some(pending) = u.totp_pending.take() else {
                    return Err(reject(
                        IdentityRefusal::NoPendingTotp,
                        "start with totp/enable",
                    ));
                };
                u.totp = Some(pending);
                u.totp_last_step = step;
                store_user(txn, user, &u)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::TotpUse { user, step } => {
                let mut u = load_user(txn, user)?;
                if step <= u.totp_last_step {
                    return Err(reject(
                        IdentityRefusal::TotpReused,
                        "this code was already used",
                    ));
                }
                u.totp_last_step = step;
                store_user(txn, user, &u)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::CreateSession {
                user,
                refresh_hash,
                expires_ms,
                ip,
                agent,
            } => {
                load_user(txn, user)?;
                let id = ctx.fresh_id();
                txn.open_table(USER_SESSIONS)?
                    .insert(pair(user, id).as_slice(), [].as_slice())?;
                put_session(
                    txn,
                    id,
                    &Session {
                        user,
                        refresh_hash,
                        previous_hash: None,
                        created_ms: ctx.time_ms,
                        refreshed_ms: ctx.time_ms,
                        expires_ms,
                        revoked: false,
                        ip: ip.chars().take(64).collect(),
                        agent: agent.chars().take(256).collect(),
                    },
                )?;
                Ok(IdentityResponse::Session { id })
            }
            IdentityCommand::Refresh {
                session: sid,
                presented,
                next,
                expires_ms,
            } => {
                let mut s = session(txn, sid)?;
                if s.revoked || s.expires_ms <= ctx.time_ms {
                    return Err(reject(
                        IdentityRefusal::SessionEnded,
                        "the session is revoked or expired",
                    ));
                }
                if same(&presented, &s.refresh_hash) {
                    s.previous_hash = Some(s.refresh_hash);
                    s.refresh_hash = next;
                    s.refreshed_ms = ctx.time_ms;
                    s.expires_ms = expires_ms;
                    put_session(txn, sid, &s)?;
                    Ok(IdentityResponse::Refreshed)
                } else if s.previous_hash.is_some_and(|p| same(&p, &presented)) {
                    s.revoked = true;
                    put_session(txn, sid, &s)?;
                    Ok(IdentityResponse::Reused)
                } else {
                    Err(reject(
                        IdentityRefusal::BadToken,
                        "the refresh token is not valid",
                    ))
                }
            }
            IdentityCommand::Revoke { session: sid } => {
                let mut s = session(txn, sid)?;
                s.revoked = true;
                put_session(txn, sid, &s)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::CreateApiKey {
                id,
                user,
                name,
                scopes,
                hash,
                expires_ms,
            } => {
                check_hash(&hash)?;
                if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(reject(
                        IdentityRefusal::InvalidArgument,
                        "API key ids are 16 hex digits",
                    ));
                }
                if name.trim().is_empty() || name.chars().count() > 100 {
                    return Err(reject(
                        IdentityRefusal::InvalidArgument,
                        "key names are 1 to 100 characters",
                    ));
                }
                if let Some(bad) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
                    return Err(reject(
                        IdentityRefusal::InvalidArgument,
                        format!("unknown scope {bad:?} (known: {})", SCOPES.join(", ")),
                    ));
                }
                load_user(txn, user)?;
                let mut t = API_KEYS.open(txn)?;
                if t.get(&id)?.is_some() {
                    return Err(reject(IdentityRefusal::KeyExists, "that key id exists"));
                }
                let key = ApiKey {
                    user,
                    name,
                    scopes,
                    hash,
                    created_ms: ctx.time_ms,
                    expires_ms,
                    last_used_ms: None,
                };
                t.insert(&id, &key)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::RotateApiKey { id, hash } => {
                check_hash(&hash)?;
                let mut key = load_api_key(txn, &id)?;
                key.hash = hash;
                store_api_key(txn, &id, &key)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::DeleteApiKey { id } => {
                API_KEYS.open(txn)?.remove(&id)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::TouchApiKey { id } => {
                let mut key = load_api_key(txn, &id)?;
                key.last_used_ms = Some(ctx.time_ms);
                store_api_key(txn, &id, &key)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::CreateReset {
                id,
                user,
                hash,
                sealed_token,
                expires_ms,
            } => {
                load_user(txn, user)?;
                let r = PasswordReset {
                    user,
                    hash,
                    sealed_token,
                    created_ms: ctx.time_ms,
                    expires_ms,
                    used: false,
                };
                RESETS.open(txn)?.insert(&id, &r)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::UseReset {
                id,
                presented,
                password_hash,
            } => {
                check_hash(&password_hash)?;
                let Some(mut r) = RESETS.open(txn)?.get(&id)? else {
                    return Err(reject(
                        IdentityRefusal::BadReset,
                        "the reset token is not valid",
                    ));
                };
                if r.used || r.expires_ms <= ctx.time_ms || !same(&r.hash, &presented) {
                    return Err(reject(
                        IdentityRefusal::BadReset,
                        "the reset token is not valid",
                    ));
                }
                let mut u = load_user(txn, r.user)?;
                u.password_hash = password_hash;
                store_user(txn, r.user, &u)?;
                r.used = true;
                RESETS.open(txn)?.insert(&id, &r)?;
                let ids = {
                    let t = txn.open_table(USER_SESSIONS)?;
                    sessions_of(&t, r.user)?
                };
                for sid in ids {
                    let mut s = session(txn, sid)?;
                    if !s.revoked {
                        s.revoked = true;
                        put_session(txn, sid, &s)?;
                    }
                }
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::ChangePassword {
                user,
                password_hash,
                keep_session,
            } => {
                check_hash(&password_hash)?;
                let mut u = load_user(txn, user)?;
                u.password_hash = password_hash;
                store_user(txn, user, &u)?;
                let ids = {
                    let t = txn.open_table(USER_SESSIONS)?;
                    sessions_of(&t, user)?
                };
                for id in ids.into_iter().filter(|id| *id != keep_session) {
                    let mut s = session(txn, id)?;
                    if !s.revoked {
                        s.revoked = true;
                        put_session(txn, id, &s)?;
                    }
                }
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::RotateJwtKey { sealed } => {
                let mut meta = txn.open_table(META)?;
                let Some(current) = meta.get(JWT_KEY)?.map(|v| v.value().to_vec()) else {
                    return Err(reject(
                        IdentityRefusal::SetupNeeded,
                        "no signing key yet: run setup first",
                    ));
                };
                let kid = kid_of(meta.get(JWT_KID)?.map(|v| v.value().to_vec()).as_deref())?;
                let mut previous = kid.to_be_bytes().to_vec();
                previous.extend_from_slice(&current);
                meta.insert(JWT_PREVIOUS, previous.as_slice())?;
                meta.insert(JWT_KEY, sealed.as_slice())?;
                meta.insert(JWT_KID, kid.wrapping_add(1).to_be_bytes().as_slice())?;
                Ok(IdentityResponse::Created {
                    id: u128::from(kid.wrapping_add(1)),
                })
            }
            IdentityCommand::CreateTenant { name, owner } => {
                let id = ctx.fresh_id();
                tenancy::create(txn, USERS, id, &name, owner, ctx.time_ms)?;
                Ok(IdentityResponse::Created { id })
            }
            IdentityCommand::SwitchTenant { user, tenant } => {
                tenancy::switch(txn, user, tenant)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::SetMember {
                tenant,
                actor,
                user,
                role,
            } => {
                tenancy::set_member(txn, USERS, tenant, actor, user, role)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::RemoveMember {
                tenant,
                actor,
                user,
            } => {
                tenancy::remove_member(txn, tenant, actor, user)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::CreatePolicy {
                tenant,
                actor,
                name,
                statements,
            } => {
                let id = ctx.fresh_id();
                tenancy::create_policy(txn, tenant, actor, id, &name, statements, ctx.time_ms)?;
                Ok(IdentityResponse::Created { id })
            }
            IdentityCommand::DeletePolicy {
                tenant,
                actor,
                policy,
            } => {
                tenancy::delete_policy(txn, tenant, actor, policy)?;
                Ok(IdentityResponse::Done)
            }
            IdentityCommand::AttachPolicy {
                tenant,
                actor,
                policy,
                user,
                on,
            } => {
                tenancy::attach(txn, tenant, actor, policy, user, on)?;
                Ok(IdentityResponse::Done)
            }
        }
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: IdentityQuery,
    ) -> Result<IdentityQueryResponse, ApplyError> {
        let user = |id: u128| -> Result<Option<(u128, User)>, ApplyError> {
            Ok(USERS.read(txn)?.get(&id)?.map(|u| (id, u)))
        };
        Ok(match query {
            IdentityQuery::UserCount => IdentityQueryResponse::Count(USERS.read(txn)?.len()?),
            IdentityQuery::Registration => IdentityQueryResponse::Flag(
                txn.open_table(META)?
                    .get(REGISTRATION)?
                    .is_some_and(|v| v.value() == [1]),
            ),
            IdentityQuery::UserByEmail { email } => {
                let id = {
                    let t = txn.open_table(EMAILS)?;
                    let v = t.get(normalize_email(&email).as_bytes())?;
                    v.map(|v| id_of(v.value())).transpose()?
                };
                IdentityQueryResponse::User(match id {
                    Some(id) => user(id)?,
                    None => None,
                })
            }
            IdentityQuery::User { id } => IdentityQueryResponse::User(user(id)?),
            IdentityQuery::Session { id } => {
                IdentityQueryResponse::Session(SESSIONS.read(txn)?.get(&id)?)
            }
            IdentityQuery::Sessions { user } => {
                let ids = sessions_of(&txn.open_table(USER_SESSIONS)?, user)?;
                let t = SESSIONS.read(txn)?;
                let mut out = Vec::new();
                for id in ids.into_iter().rev().take(SESSIONS_LIST_MAX) {
                    if let Some(s) = t.get(&id)? {
                        out.push((id, s));
                    }
                }
                IdentityQueryResponse::Sessions(out)
            }
            IdentityQuery::ApiKey { id } => {
                IdentityQueryResponse::ApiKey(API_KEYS.read(txn)?.get(&id)?)
            }
            IdentityQuery::ApiKeys { user } => {
                let t = API_KEYS.read(txn)?;
                let mut out = Vec::new();
                for item in t.iter()? {
                    let (id, key) = item?;
                    if key.user == user {
                        out.push((id, key));
                    }
                }
                IdentityQueryResponse::ApiKeys(out)
            }
            IdentityQuery::PendingResets { now_ms } => {
                let t = RESETS.read(txn)?;
                let mut out = Vec::new();
                for item in t.iter()? {
                    let (id, r) = item?;
                    if r.used || r.expires_ms <= now_ms {
                        continue;
                    }
                    if let Some((_, u)) = user(r.user)? {
                        out.push((id, r, u));
                    }
                }
                IdentityQueryResponse::Resets(out)
            }
            IdentityQuery::Tenants { user } => {
                let (tenants, current) = tenancy::View { txn }.tenants_of(user)?;
                IdentityQueryResponse::Tenants { tenants, current }
            }
            IdentityQuery::Tenant { id } => {
                IdentityQueryResponse::Tenant(tenancy::View { txn }.tenant(id)?)
            }
            IdentityQuery::Members { tenant } => {
                let mut out = Vec::new();
                let members = tenancy::View { txn }.members(tenant)?;
                for (id, role) in members {
                    if let Some((_, u)) = user(id)? {
                        out.push((id, role, u));
                    }
                }
                IdentityQueryResponse::Members(out)
            }
            IdentityQuery::Access { user, tenant } => {
                IdentityQueryResponse::Access(tenancy::View { txn }.access(user, tenant)?)
            }
            IdentityQuery::Policies { tenant } => {
                IdentityQueryResponse::Policies(tenancy::View { txn }.policies(tenant)?)
            }
            IdentityQuery::JwtKeys => {
                let t = txn.open_table(META)?;
                let kid = kid_of(t.get(JWT_KID)?.map(|v| v.value().to_vec()).as_deref())?;
                let current = t.get(JWT_KEY)?.map(|v| (kid, v.value().to_vec()));
                let previous = match t.get(JWT_PREVIOUS)? {
                    Some(v) if v.value().len() > 4 => {
                        let (k, sealed) = v.value().split_at(4);
                        Some((kid_of(Some(k))?, sealed.to_vec()))
                    }
                    Some(_) => {
                        return Err(StateError::Corrupt("jwt_previous is short".into()).into());
                    }
                    None => None,
                };
                IdentityQueryResponse::JwtKeys { current, previous }
            }
            IdentityQuery::SealedJwtKey => {
                let t = txn.open_table(META)?;
                let v = t.get(JWT_KEY)?;
                IdentityQueryResponse::Key(v.map(|v| v.value().to_vec()))
            }
        })
    }
}
