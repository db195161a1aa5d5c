//! The access key service (service 5): S3 access keys and their sealed secrets.
//!
//! SigV4 needs the secret itself, so it cannot be hashed: gateways seal it (AEAD) with the
//! cluster's secrets key before proposing, and only ciphertext ever reaches the log, the state
//! store or a snapshot. The identity issue builds users and tenants on top of this.

use cairn_engine::state::{
    ApplyContext, ApplyError, Record, Rejection, ServiceId, StateError, TableMut, TypedService,
    TypedTable, decode,
};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

cairn_engine::refusals! {
    /// Why the key service refuses a command.
    pub enum KeyRefusal {
        /// An access key id or secret outside the rules.
        InvalidArgument = "invalid_argument",
        /// That access key id is taken.
        KeyExists = "key_exists",
    }
}

/// Access key id → its record.
const KEYS: TypedTable<String, AccessKey> = TypedTable::new("s3.keys");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    /// The secret, sealed with the cluster secrets key (nonce ‖ ciphertext ‖ tag).
    pub sealed_secret: Vec<u8>,
    /// Who the key acts for: a user id (32 hex digits), or `root` for the root key until the
    /// first admin exists (setup hands it to them).
    pub owner: String,
    pub created_ms: u64,
    /// The tenant the key acts in; `None` for keys made before tenants existed (the root key:
    /// the default tenant; a user's key: their current tenant).
    pub tenant: Option<u128>,
}

/// The record as stored before keys carried a tenant.
#[derive(Deserialize)]
struct AccessKeyNoTenant {
    sealed_secret: Vec<u8>,
    owner: String,
    created_ms: u64,
}

impl Record for AccessKey {
    const NAME: &'static str = "access key";
    /// 1: `AccessKey` as it is.
    const VERSION: u8 = 1;

    /// Records from before versions came in two layouts, with and without the tenant.
    /// Postcard is not self-describing: the older, shorter one fails to decode as the newer
    /// one, and is then read as what it is.
    fn migrate(version: u8, b: &[u8]) -> Result<AccessKey, StateError> {
        if version != 0 {
            return Err(StateError::Corrupt(format!(
                "access key: unknown layout version {version}"
            )));
        }
        if let Ok(k) = postcard::from_bytes::<AccessKey>(b) {
            return Ok(k);
        }
        let old: AccessKeyNoTenant = decode("access key", b)?;
        Ok(AccessKey {
            sealed_secret: old.sealed_secret,
            owner: old.owner,
            created_ms: old.created_ms,
            tenant: None,
        })
    }
}

/// The owner of the root key until setup gives it to the first admin.
pub const ROOT_OWNER: &str = "root";

/// Hand every key still owned by `root` to `user` in `tenant` (the first admin's setup, in the
/// same transaction as the identity service's command).
pub fn adopt_root_keys(txn: &WriteTransaction, user: &str, tenant: u128) -> Result<(), StateError> {
    let mut t = KEYS.open(txn)?;
    let found: Vec<_> = t
        .all()?
        .into_iter()
        .filter(|(_, rec)| rec.owner == ROOT_OWNER)
        .collect();
    for (k, mut rec) in found {
        rec.owner = user.to_owned();
        rec.tenant = Some(tenant);
        t.insert(&k, &rec)?;
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyCommand {
    Create {
        access_key: String,
        sealed_secret: Vec<u8>,
        owner: String,
    },
    Delete {
        access_key: String,
    },
    /// A key that acts in `tenant` (every key made since tenants exist).
    CreateInTenant {
        access_key: String,
        sealed_secret: Vec<u8>,
        owner: String,
        tenant: u128,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyQuery {
    Get {
        access_key: String,
    },
    Count,
    /// The keys of one owner (a scan of the key table; owners have few keys).
    ByOwner {
        owner: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyQueryResponse {
    Key(Option<AccessKey>),
    Count(u64),
    Keys(Vec<(String, AccessKey)>),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct KeyService;

/// Access key ids: 16 to 128 of `A-Z a-z 0-9`.
pub fn check_access_key(k: &str) -> Result<(), Rejection> {
    if (16..=128).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(Rejection::new(
            KeyRefusal::InvalidArgument,
            "access keys are 16 to 128 letters and digits",
        ))
    }
}

fn create(
    t: &mut TableMut<'_, String, AccessKey>,
    ctx: &ApplyContext,
    access_key: String,
    sealed_secret: Vec<u8>,
    owner: String,
    tenant: Option<u128>,
) -> Result<bool, ApplyError> {
    check_access_key(&access_key)?;
    if t.get(&access_key)?.is_some() {
        return Err(Rejection::new(KeyRefusal::KeyExists, "that access key exists").into());
    }
    let rec = AccessKey {
        sealed_secret,
        owner,
        created_ms: ctx.time_ms,
        tenant,
    };
    t.insert(&access_key, &rec)?;
    Ok(true)
}

impl TypedService for KeyService {
    const ID: ServiceId = ServiceId(5);
    const NAME: &'static str = "keys";
    const VERSION: u16 = 1;
    type Command = KeyCommand;
    type Response = bool;
    type Query = KeyQuery;
    type QueryResponse = KeyQueryResponse;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        KEYS.init(txn)
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: KeyCommand,
    ) -> Result<bool, ApplyError> {
        let mut t = KEYS.open(txn)?;
        match command {
            KeyCommand::Create {
                access_key,
                sealed_secret,
                owner,
            } => create(&mut t, ctx, access_key, sealed_secret, owner, None),
            KeyCommand::CreateInTenant {
                access_key,
                sealed_secret,
                owner,
                tenant,
            } => create(&mut t, ctx, access_key, sealed_secret, owner, Some(tenant)),
            KeyCommand::Delete { access_key } => Ok(t.remove(&access_key)?),
        }
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: KeyQuery,
    ) -> Result<KeyQueryResponse, ApplyError> {
        let t = KEYS.read(txn)?;
        Ok(match query {
            KeyQuery::Get { access_key } => KeyQueryResponse::Key(t.get(&access_key)?),
            KeyQuery::Count => KeyQueryResponse::Count(t.len()?),
            KeyQuery::ByOwner { owner } => KeyQueryResponse::Keys(
                t.all()?
                    .into_iter()
                    .filter(|(_, rec)| rec.owner == owner)
                    .collect(),
            ),
        })
    }
}
