//! Tenants (organisations), their members with roles, and their IAM-style policies: tables of
//! the identity service (service 6), applied in its transactions so that, for example, a new
//! user and their first tenant appear together.
//!
//! Tables (ids u128 big-endian; records versioned, see `docs/formats.md`; the others are
//! indexes whose values are a role byte, an id or nothing):
//! - `id.tenants`: tenant → [`Tenant`]
//! - `id.members`: tenant ‖ user → role byte ([`Role::to_byte`])
//! - `id.memberships`: user ‖ tenant → role byte (the same facts, indexed by user)
//! - `id.current_tenant`: user → tenant (the one new keys and REST calls act in)
//! - `id.policies`: tenant ‖ policy → [`Policy`]
//! - `id.attached`: tenant ‖ user ‖ policy → empty
//!
//! Every command checks everything before it writes anything: a refusal leaves no trace.

use cairn_engine::state::{ApplyError, Record, Rejection, StateError, Table, TypedTable, reject};
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::policy::{Policy, Role, Statement};

const TENANTS: TypedTable<u128, Tenant> = TypedTable::new("id.tenants");
const MEMBERS: Table = Table::new("id.members");
const MEMBERSHIPS: Table = Table::new("id.memberships");
const CURRENT: Table = Table::new("id.current_tenant");
const POLICIES: TypedTable<[u8; 32], Policy> = TypedTable::new("id.policies");
const ATTACHED: Table = Table::new("id.attached");

cairn_engine::refusals! {
    /// Why the identity service refuses a command (tenancy and policies included).
    pub enum IdentityRefusal {
        /// Setup is done: a user exists.
        SetupDone = "setup_done",
        /// No user exists yet: run setup first.
        SetupNeeded = "setup_needed",
        /// Self-registration is off.
        RegistrationClosed = "registration_closed",
        /// An account with this email exists.
        EmailTaken = "email_taken",
        /// Not an email address.
        InvalidEmail = "invalid_email",
        /// A user or tenant name outside the limits.
        InvalidName = "invalid_name",
        /// A value outside the rules (hashes, scopes, ...).
        InvalidArgument = "invalid_argument",
        /// A policy outside the rules.
        InvalidPolicy = "invalid_policy",
        /// No user has that id.
        NoSuchUser = "no_such_user",
        /// No session has that id.
        NoSuchSession = "no_such_session",
        /// The session is revoked or expired.
        SessionEnded = "session_ended",
        /// The refresh token does not match.
        BadToken = "bad_token",
        /// The reset token is not valid (unknown, used or expired).
        BadReset = "bad_reset",
        /// Two-factor enrolment was not started.
        NoPendingTotp = "no_pending_totp",
        /// This code was already used.
        TotpReused = "totp_reused",
        /// That API key id exists.
        KeyExists = "key_exists",
        /// No API key has that id.
        NoSuchKey = "no_such_key",
        /// No such tenant (or the caller is not a member).
        NoSuchTenant = "no_such_tenant",
        /// That tenant exists.
        TenantExists = "tenant_exists",
        /// The user is not a member of the tenant.
        NotMember = "not_member",
        /// The caller's role does not allow this.
        Forbidden = "forbidden",
        /// A tenant keeps at least one owner.
        LastOwner = "last_owner",
        /// A limit on tenants, members, policies or attachments is reached.
        TooMany = "too_many",
        /// No policy of the tenant has that id.
        NoSuchPolicy = "no_such_policy",
        /// A policy of that name exists.
        PolicyExists = "policy_exists",
        /// That policy is not attached.
        NotAttached = "not_attached",
    }
}

/// The tenant the first admin's setup creates. Buckets and the root key from before setup (or
/// from before tenants existed) belong to it.
pub const DEFAULT_TENANT: u128 = 1;
/// Most tenants one user may belong to.
pub const TENANTS_PER_USER_MAX: usize = 100;
/// Most members of one tenant.
pub const MEMBERS_MAX: usize = 10_000;
/// Most policies of one tenant.
pub const POLICIES_MAX: usize = 1000;
/// Most policies attached to one member.
pub const ATTACHED_MAX: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    pub created_ms: u64,
}

/// What a user may do in a tenant: their role and the statements of their attached policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessView {
    pub tenant: u128,
    pub role: Role,
    pub statements: Vec<Statement>,
}

/// Any table of this module, open for reading in a read or a write transaction.
pub trait Readable: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> Readable for T {}

/// Two ids side by side: the key of a pair table.
pub(crate) fn key2(a: u128, b: u128) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&a.to_be_bytes());
    k[16..].copy_from_slice(&b.to_be_bytes());
    k
}

fn key3(a: u128, b: u128, c: u128) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(&key2(a, b));
    k[32..].copy_from_slice(&c.to_be_bytes());
    k
}

fn id_at(k: &[u8], at: usize) -> Result<u128, StateError> {
    let a: [u8; 16] = k
        .get(at..at + 16)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| StateError::Corrupt("tenancy key is too short".into()))?;
    Ok(u128::from_be_bytes(a))
}

/// A record read out of a table: (key, value).
type Row = (Vec<u8>, Vec<u8>);

/// Every row whose key starts with `prefix`.
fn scan(t: &impl Readable, prefix: &[u8]) -> Result<Vec<Row>, StateError> {
    let mut out = Vec::new();
    for item in t.range(prefix..)? {
        let (k, v) = item?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

fn role_of(v: &[u8]) -> Result<Role, StateError> {
    v.first()
        .copied()
        .and_then(Role::from_byte)
        .ok_or_else(|| StateError::Corrupt("unknown role byte".into()))
}

pub fn init(txn: &WriteTransaction) -> Result<(), StateError> {
    TENANTS.init(txn)?;
    POLICIES.init(txn)?;
    for t in [MEMBERS, MEMBERSHIPS, CURRENT, ATTACHED] {
        txn.open_table(t)?;
    }
    Ok(())
}

cairn_engine::records! {
    Tenant = "tenant",
    Policy = "policy",
}

/// The policies of `tenant`, by id, from a table open in a read or a write.
fn policies_of(
    items: impl Iterator<Item = Result<([u8; 32], Policy), StateError>>,
    tenant: u128,
) -> Result<Vec<(u128, Policy)>, StateError> {
    let mut out = Vec::new();
    for item in items {
        let (k, p) = item?;
        if k[..16] != tenant.to_be_bytes() {
            break;
        }
        out.push((id_at(&k, 16)?, p));
    }
    Ok(out)
}

/// Tenant names are 1 to 200 characters.
pub fn check_tenant_name(name: &str) -> Result<(), Rejection> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.contains('\0') {
        return Err(Rejection::new(
            IdentityRefusal::InvalidName,
            "tenant names are 1 to 200 characters",
        ));
    }
    Ok(())
}

/// `user`'s role in `tenant`, if a member.
pub fn role(
    t_members: &impl Readable,
    tenant: u128,
    user: u128,
) -> Result<Option<Role>, StateError> {
    t_members
        .get(key2(tenant, user).as_slice())?
        .map(|v| role_of(v.value()))
        .transpose()
}

/// The tenants `user` belongs to, with their role.
pub fn memberships(t: &impl Readable, user: u128) -> Result<Vec<(u128, Role)>, StateError> {
    scan(t, &user.to_be_bytes())?
        .into_iter()
        .map(|(k, v)| Ok((id_at(&k, 16)?, role_of(&v)?)))
        .collect()
}

/// The members of `tenant`, with their role.
pub fn members(t: &impl Readable, tenant: u128) -> Result<Vec<(u128, Role)>, StateError> {
    scan(t, &tenant.to_be_bytes())?
        .into_iter()
        .map(|(k, v)| Ok((id_at(&k, 16)?, role_of(&v)?)))
        .collect()
}

/// The policies attached to `user` in `tenant`.
pub fn attached(t: &impl Readable, tenant: u128, user: u128) -> Result<Vec<u128>, StateError> {
    scan(t, &key2(tenant, user))?
        .into_iter()
        .map(|(k, _)| id_at(&k, 32))
        .collect()
}

fn require_user<U: Record>(
    txn: &WriteTransaction,
    users: TypedTable<u128, U>,
    user: u128,
) -> Result<(), ApplyError> {
    if users.open(txn)?.get(&user)?.is_none() {
        return Err(reject(IdentityRefusal::NoSuchUser, "no such user"));
    }
    Ok(())
}

/// The actor's role in `tenant`; a non-member learns only that there is no such tenant.
fn actor_role(txn: &WriteTransaction, tenant: u128, actor: u128) -> Result<Role, ApplyError> {
    role(&txn.open_table(MEMBERS)?, tenant, actor)?
        .ok_or_else(|| reject(IdentityRefusal::NoSuchTenant, "no such tenant"))
}

fn write_member(
    txn: &WriteTransaction,
    tenant: u128,
    user: u128,
    role: Role,
) -> Result<(), ApplyError> {
    let b = [role.to_byte()];
    txn.open_table(MEMBERS)?
        .insert(key2(tenant, user).as_slice(), b.as_slice())?;
    txn.open_table(MEMBERSHIPS)?
        .insert(key2(user, tenant).as_slice(), b.as_slice())?;
    Ok(())
}

/// Create `tenant` with `owner` as its owner (and the tenant they act in, if it is their first).
/// `users` is the identity service's user table (the owner must exist).
pub fn create<U: Record>(
    txn: &WriteTransaction,
    users: TypedTable<u128, U>,
    tenant: u128,
    name: &str,
    owner: u128,
    now_ms: u64,
) -> Result<(), ApplyError> {
    check_tenant_name(name)?;
    require_user(txn, users, owner)?;
    if TENANTS.open(txn)?.get(&tenant)?.is_some() {
        return Err(reject(IdentityRefusal::TenantExists, "that tenant exists"));
    }
    if memberships(&txn.open_table(MEMBERSHIPS)?, owner)?.len() >= TENANTS_PER_USER_MAX {
        return Err(reject(
            IdentityRefusal::TooMany,
            format!("a user belongs to at most {TENANTS_PER_USER_MAX} tenants"),
        ));
    }
    let rec = Tenant {
        name: name.to_owned(),
        created_ms: now_ms,
    };
    TENANTS.open(txn)?.insert(&tenant, &rec)?;
    write_member(txn, tenant, owner, Role::Owner)?;
    act_in_if_none(txn, owner, tenant)
}

/// A user's first tenant becomes the one they act in; later ones wait for a switch.
fn act_in_if_none(txn: &WriteTransaction, user: u128, tenant: u128) -> Result<(), ApplyError> {
    let mut cur = txn.open_table(CURRENT)?;
    if cur.get(user.to_be_bytes().as_slice())?.is_none() {
        cur.insert(
            user.to_be_bytes().as_slice(),
            tenant.to_be_bytes().as_slice(),
        )?;
    }
    Ok(())
}

/// Make `tenant` the one `user` acts in.
pub fn switch(txn: &WriteTransaction, user: u128, tenant: u128) -> Result<(), ApplyError> {
    actor_role(txn, tenant, user)?;
    txn.open_table(CURRENT)?.insert(
        user.to_be_bytes().as_slice(),
        tenant.to_be_bytes().as_slice(),
    )?;
    Ok(())
}

fn owners(txn: &WriteTransaction, tenant: u128) -> Result<usize, ApplyError> {
    Ok(members(&txn.open_table(MEMBERS)?, tenant)?
        .into_iter()
        .filter(|(_, r)| *r == Role::Owner)
        .count())
}

/// Add `user` to `tenant` with `role`, or change their role. Admins manage members; only an
/// owner grants, changes or takes away the owner role; the last owner stays one.
pub fn set_member<U: Record>(
    txn: &WriteTransaction,
    users: TypedTable<u128, U>,
    tenant: u128,
    actor: u128,
    user: u128,
    role: Role,
) -> Result<(), ApplyError> {
    let actor_role = actor_role(txn, tenant, actor)?;
    if !actor_role.manages() {
        return Err(reject(
            IdentityRefusal::Forbidden,
            "only owners and admins manage members",
        ));
    }
    require_user(txn, users, user)?;
    let current = self::role(&txn.open_table(MEMBERS)?, tenant, user)?;
    if (role == Role::Owner || current == Some(Role::Owner)) && actor_role != Role::Owner {
        return Err(reject(
            IdentityRefusal::Forbidden,
            "only an owner grants or changes the owner role",
        ));
    }
    if current == Some(Role::Owner) && role != Role::Owner && owners(txn, tenant)? <= 1 {
        return Err(reject(
            IdentityRefusal::LastOwner,
            "a tenant keeps at least one owner",
        ));
    }
    if current.is_none() {
        if members(&txn.open_table(MEMBERS)?, tenant)?.len() >= MEMBERS_MAX {
            return Err(reject(
                IdentityRefusal::TooMany,
                format!("a tenant has at most {MEMBERS_MAX} members"),
            ));
        }
        if memberships(&txn.open_table(MEMBERSHIPS)?, user)?.len() >= TENANTS_PER_USER_MAX {
            return Err(reject(
                IdentityRefusal::TooMany,
                format!("a user belongs to at most {TENANTS_PER_USER_MAX} tenants"),
            ));
        }
    }
    write_member(txn, tenant, user, role)?;
    act_in_if_none(txn, user, tenant)
}

/// Take `user` out of `tenant` (a member may always leave), with their attached policies.
pub fn remove_member(
    txn: &WriteTransaction,
    tenant: u128,
    actor: u128,
    user: u128,
) -> Result<(), ApplyError> {
    let actor_role = actor_role(txn, tenant, actor)?;
    let Some(current) = role(&txn.open_table(MEMBERS)?, tenant, user)? else {
        return Err(reject(
            IdentityRefusal::NotMember,
            "that user is not a member",
        ));
    };
    if actor != user {
        if !actor_role.manages() {
            return Err(reject(
                IdentityRefusal::Forbidden,
                "only owners and admins manage members",
            ));
        }
        if current == Role::Owner && actor_role != Role::Owner {
            return Err(reject(
                IdentityRefusal::Forbidden,
                "only an owner removes an owner",
            ));
        }
    }
    if current == Role::Owner && owners(txn, tenant)? <= 1 {
        return Err(reject(
            IdentityRefusal::LastOwner,
            "a tenant keeps at least one owner",
        ));
    }
    txn.open_table(MEMBERS)?
        .remove(key2(tenant, user).as_slice())?;
    txn.open_table(MEMBERSHIPS)?
        .remove(key2(user, tenant).as_slice())?;
    let gone = attached(&txn.open_table(ATTACHED)?, tenant, user)?;
    {
        let mut t = txn.open_table(ATTACHED)?;
        for p in gone {
            t.remove(key3(tenant, user, p).as_slice())?;
        }
    }
    // If they were acting in it, they now act in another of their tenants (or none).
    let acting = current_tenant(&txn.open_table(CURRENT)?, user)? == Some(tenant);
    if acting {
        let next = memberships(&txn.open_table(MEMBERSHIPS)?, user)?
            .first()
            .map(|(t, _)| *t);
        let mut cur = txn.open_table(CURRENT)?;
        match next {
            Some(t) => {
                cur.insert(user.to_be_bytes().as_slice(), t.to_be_bytes().as_slice())?;
            }
            None => {
                cur.remove(user.to_be_bytes().as_slice())?;
            }
        }
    }
    Ok(())
}

/// The tenant `user` acts in.
pub fn current_tenant(t: &impl Readable, user: u128) -> Result<Option<u128>, StateError> {
    t.get(user.to_be_bytes().as_slice())?
        .map(|v| id_at(v.value(), 0))
        .transpose()
}

fn require_manager(txn: &WriteTransaction, tenant: u128, actor: u128) -> Result<(), ApplyError> {
    if actor_role(txn, tenant, actor)?.manages() {
        Ok(())
    } else {
        Err(reject(
            IdentityRefusal::Forbidden,
            "only owners and admins manage policies",
        ))
    }
}

pub fn create_policy(
    txn: &WriteTransaction,
    tenant: u128,
    actor: u128,
    id: u128,
    name: &str,
    statements: Vec<Statement>,
    now_ms: u64,
) -> Result<(), ApplyError> {
    require_manager(txn, tenant, actor)?;
    crate::policy::check_policy(name, &statements)?;
    let existing = {
        let t = POLICIES.open(txn)?;
        policies_of(t.range_from(&key2(tenant, 0))?, tenant)?
    };
    if existing.len() >= POLICIES_MAX {
        return Err(reject(
            IdentityRefusal::TooMany,
            format!("a tenant has at most {POLICIES_MAX} policies"),
        ));
    }
    for (_, p) in &existing {
        if p.name == name {
            return Err(reject(
                IdentityRefusal::PolicyExists,
                "a policy of that name exists",
            ));
        }
    }
    let p = Policy {
        tenant,
        name: name.to_owned(),
        statements,
        created_ms: now_ms,
    };
    POLICIES.open(txn)?.insert(&key2(tenant, id), &p)?;
    Ok(())
}

fn policy_exists(txn: &WriteTransaction, tenant: u128, policy: u128) -> Result<(), ApplyError> {
    if POLICIES.open(txn)?.get(&key2(tenant, policy))?.is_none() {
        return Err(reject(IdentityRefusal::NoSuchPolicy, "no such policy"));
    }
    Ok(())
}

pub fn delete_policy(
    txn: &WriteTransaction,
    tenant: u128,
    actor: u128,
    policy: u128,
) -> Result<(), ApplyError> {
    require_manager(txn, tenant, actor)?;
    policy_exists(txn, tenant, policy)?;
    let attachments: Vec<Vec<u8>> = scan(&txn.open_table(ATTACHED)?, &tenant.to_be_bytes())?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.get(32..48) == Some(policy.to_be_bytes().as_slice()))
        .collect();
    let mut t = txn.open_table(ATTACHED)?;
    for k in attachments {
        t.remove(k.as_slice())?;
    }
    POLICIES.open(txn)?.remove(&key2(tenant, policy))?;
    Ok(())
}

pub fn attach(
    txn: &WriteTransaction,
    tenant: u128,
    actor: u128,
    policy: u128,
    user: u128,
    on: bool,
) -> Result<(), ApplyError> {
    require_manager(txn, tenant, actor)?;
    policy_exists(txn, tenant, policy)?;
    if role(&txn.open_table(MEMBERS)?, tenant, user)?.is_none() {
        return Err(reject(
            IdentityRefusal::NotMember,
            "that user is not a member",
        ));
    }
    let key = key3(tenant, user, policy);
    if on {
        let have = attached(&txn.open_table(ATTACHED)?, tenant, user)?;
        if !have.contains(&policy) && have.len() >= ATTACHED_MAX {
            return Err(reject(
                IdentityRefusal::TooMany,
                format!("at most {ATTACHED_MAX} policies are attached to a member"),
            ));
        }
        txn.open_table(ATTACHED)?
            .insert(key.as_slice(), [].as_slice())?;
    } else if txn.open_table(ATTACHED)?.remove(key.as_slice())?.is_none() {
        return Err(reject(
            IdentityRefusal::NotAttached,
            "that policy is not attached",
        ));
    }
    Ok(())
}

/// Read side, for queries (a read transaction's tables).
#[derive(Debug)]
pub struct View<'a> {
    pub txn: &'a redb::ReadTransaction,
}

impl View<'_> {
    pub fn tenant(&self, id: u128) -> Result<Option<Tenant>, StateError> {
        TENANTS.read(self.txn)?.get(&id)
    }

    /// `user`'s tenants with their role, and the one they act in.
    #[allow(clippy::type_complexity)]
    pub fn tenants_of(
        &self,
        user: u128,
    ) -> Result<(Vec<(u128, Tenant, Role)>, Option<u128>), StateError> {
        let mut out = Vec::new();
        for (t, r) in memberships(&self.txn.open_table(MEMBERSHIPS)?, user)? {
            if let Some(rec) = self.tenant(t)? {
                out.push((t, rec, r));
            }
        }
        Ok((out, self.current(user)?))
    }

    pub fn current(&self, user: u128) -> Result<Option<u128>, StateError> {
        current_tenant(&self.txn.open_table(CURRENT)?, user)
    }

    pub fn members(&self, tenant: u128) -> Result<Vec<(u128, Role)>, StateError> {
        members(&self.txn.open_table(MEMBERS)?, tenant)
    }

    /// `user`'s role and policy statements in `tenant` (their current one when `None`).
    pub fn access(
        &self,
        user: u128,
        tenant: Option<u128>,
    ) -> Result<Option<AccessView>, StateError> {
        let tenant = match tenant {
            Some(t) => t,
            None => match self.current(user)? {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        let Some(role) = role(&self.txn.open_table(MEMBERS)?, tenant, user)? else {
            return Ok(None);
        };
        let policies = POLICIES.read(self.txn)?;
        let mut statements = Vec::new();
        for p in attached(&self.txn.open_table(ATTACHED)?, tenant, user)? {
            if let Some(p) = policies.get(&key2(tenant, p))? {
                statements.extend(p.statements);
            }
        }
        Ok(Some(AccessView {
            tenant,
            role,
            statements,
        }))
    }

    /// The policies of `tenant`, each with the members it is attached to.
    #[allow(clippy::type_complexity)]
    pub fn policies(&self, tenant: u128) -> Result<Vec<(u128, Policy, Vec<u128>)>, StateError> {
        let mut users: std::collections::HashMap<u128, Vec<u128>> = Default::default();
        for (k, _) in scan(&self.txn.open_table(ATTACHED)?, &tenant.to_be_bytes())? {
            users
                .entry(id_at(&k, 32)?)
                .or_default()
                .push(id_at(&k, 16)?);
        }
        let t = POLICIES.read(self.txn)?;
        Ok(policies_of(t.range_from(&key2(tenant, 0))?, tenant)?
            .into_iter()
            .map(|(id, p)| {
                let attached = users.remove(&id).unwrap_or_default();
                (id, p, attached)
            })
            .collect())
    }
}

/// The tenant a bucket belongs to, from its owner field: a tenant id in 32 hex digits, or
/// anything else (an access key, from before tenants existed) for the default tenant.
pub fn bucket_tenant(owner: &str) -> u128 {
    if owner.len() == 32 {
        u128::from_str_radix(owner, 16).unwrap_or(DEFAULT_TENANT)
    } else {
        DEFAULT_TENANT
    }
}

/// How a tenant id is written in bucket records and the API.
pub fn tenant_hex(tenant: u128) -> String {
    format!("{tenant:032x}")
}
