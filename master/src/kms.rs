//! The key service (service 9): the named keys of SSE-KMS, and the cluster's own key that
//! wraps the data keys of SSE-S3 objects.
//!
//! A key is a list of versions, each 32 random bytes of key material, sealed by the gateway
//! under the cluster secrets key (`cairn_proto::secrets`, purpose [`MATERIAL_PURPOSE`]) before
//! it is proposed: the log, the state store and snapshots hold only sealed material. Rotation
//! appends a version; new data keys are wrapped by the newest, and every older version still
//! opens what it wrapped. A disabled key wraps and opens nothing until it is enabled again.
//!
//! Tables: `kms.keys`: key id (16 BE) → [`KmsKey`]. Keys belong to a tenant; the SSE-S3 key is
//! id [`S3_KEY`] of tenant 0, which no tenant id ever is.

use cairn_engine::state::{
    ApplyContext, ApplyError, ServiceId, StateError, TypedService, TypedTable, reject,
};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

cairn_engine::refusals! {
    /// Why the key service refuses a command.
    pub enum KmsRefusal {
        /// No key has that id (in the caller's tenant).
        NoSuchKey = "no_such_key",
        /// A name, description or material outside the limits.
        InvalidArgument = "invalid_argument",
        /// The tenant already has a key of that name.
        AlreadyExists = "already_exists",
        /// The tenant has [`KEYS_MAX`] keys, or the key [`VERSIONS_MAX`] versions.
        LimitExceeded = "limit_exceeded",
    }
}

const KEYS: TypedTable<u128, KmsKey> = TypedTable::new("kms.keys");

/// The id of the cluster's SSE-S3 key.
pub const S3_KEY: u128 = 0;
/// The purpose string key material is sealed under.
pub const MATERIAL_PURPOSE: &str = "kms key material";
/// Most keys per tenant.
pub const KEYS_MAX: usize = 1000;
/// Most versions (rotations + 1) per key.
pub const VERSIONS_MAX: usize = 1000;
/// Longest key name and description.
pub const NAME_MAX: usize = 64;
pub const DESCRIPTION_MAX: usize = 1024;
/// Longest sealed material (32 bytes sealed is well under it).
const SEALED_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    /// The key material, sealed under the cluster secrets key.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsKey {
    pub tenant: u128,
    /// Unique in its tenant; requests may name the key `alias/NAME`.
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub created_ms: u64,
    /// Who made it (a user id, or the gateway for the SSE-S3 key).
    pub created_by: String,
    /// Oldest first; the last wraps new data keys. Version numbers start at 1.
    pub versions: Vec<KeyVersion>,
}

cairn_engine::records! { KmsKey = "kms key" }

impl KmsKey {
    /// The newest version's number and material.
    pub fn current(&self) -> Option<(u32, &KeyVersion)> {
        let n = u32::try_from(self.versions.len()).ok()?;
        self.versions.last().map(|v| (n, v))
    }

    /// Version `n` (from 1).
    pub fn version(&self, n: u32) -> Option<&KeyVersion> {
        self.versions.get(usize::try_from(n).ok()?.checked_sub(1)?)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KmsCommand {
    Create {
        tenant: u128,
        name: String,
        description: String,
        created_by: String,
        sealed: Vec<u8>,
    },
    /// Make the SSE-S3 key with this material unless it exists (then nothing changes, so
    /// gateways racing to make it agree on the first).
    EnsureS3Key { sealed: Vec<u8> },
    Rotate {
        tenant: u128,
        id: u128,
        sealed: Vec<u8>,
    },
    SetEnabled {
        tenant: u128,
        id: u128,
        enabled: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KmsResponse {
    Created { id: u128 },
    Rotated { version: u32 },
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KmsQuery {
    /// A key by id (any tenant: the gateway checks the tenant).
    Key { id: u128 },
    /// A tenant's keys, by id.
    Keys { tenant: u128 },
    /// A tenant's key by name.
    Named { tenant: u128, name: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KmsQueryResponse {
    Key(Option<KmsKey>),
    Keys(Vec<(u128, KmsKey)>),
    Named(Option<(u128, KmsKey)>),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct KmsService;

/// Names: 1..=64 of letters, digits, `/ _ -`.
pub fn check_name(name: &str) -> Result<(), ApplyError> {
    if name.is_empty()
        || name.len() > NAME_MAX
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b))
    {
        return Err(reject(
            KmsRefusal::InvalidArgument,
            format!("a key name is 1 to {NAME_MAX} letters, digits, '/', '_' or '-'"),
        ));
    }
    Ok(())
}

fn check_sealed(sealed: &[u8]) -> Result<(), ApplyError> {
    if sealed.is_empty() || sealed.len() > SEALED_MAX {
        return Err(reject(
            KmsRefusal::InvalidArgument,
            "key material must be sealed, at most 256 bytes",
        ));
    }
    Ok(())
}

fn tenant_key(txn: &WriteTransaction, tenant: u128, id: u128) -> Result<KmsKey, ApplyError> {
    match KEYS.open(txn)?.get(&id)? {
        Some(k) if k.tenant == tenant => Ok(k),
        _ => Err(reject(KmsRefusal::NoSuchKey, "no such key")),
    }
}

fn keys_of(
    items: impl Iterator<Item = Result<(u128, KmsKey), StateError>>,
    tenant: u128,
) -> Result<Vec<(u128, KmsKey)>, StateError> {
    let mut out = Vec::new();
    for item in items {
        let (id, k) = item?;
        if k.tenant == tenant {
            out.push((id, k));
        }
    }
    Ok(out)
}

impl TypedService for KmsService {
    const ID: ServiceId = ServiceId(9);
    const NAME: &'static str = "kms";
    const VERSION: u16 = 1;
    type Command = KmsCommand;
    type Response = KmsResponse;
    type Query = KmsQuery;
    type QueryResponse = KmsQueryResponse;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        KEYS.init(txn)
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: KmsCommand,
    ) -> Result<KmsResponse, ApplyError> {
        let now = ctx.time_ms;
        match command {
            KmsCommand::Create {
                tenant,
                name,
                description,
                created_by,
                sealed,
            } => {
                check_name(&name)?;
                check_sealed(&sealed)?;
                if description.chars().count() > DESCRIPTION_MAX
                    || description.chars().any(char::is_control)
                {
                    return Err(reject(
                        KmsRefusal::InvalidArgument,
                        format!(
                            "a description is at most {DESCRIPTION_MAX} characters without control characters"
                        ),
                    ));
                }
                if tenant == 0 {
                    return Err(reject(KmsRefusal::InvalidArgument, "no such tenant"));
                }
                let mine = keys_of(KEYS.open(txn)?.all()?.into_iter().map(Ok), tenant)?;
                if mine.iter().any(|(_, k)| k.name == name) {
                    return Err(reject(
                        KmsRefusal::AlreadyExists,
                        format!("a key named {name} exists"),
                    ));
                }
                if mine.len() >= KEYS_MAX {
                    return Err(reject(
                        KmsRefusal::LimitExceeded,
                        format!("a tenant has at most {KEYS_MAX} keys"),
                    ));
                }
                let id = loop {
                    let id = ctx.fresh_id();
                    if id != S3_KEY {
                        break id;
                    }
                };
                KEYS.open(txn)?.insert(
                    &id,
                    &KmsKey {
                        tenant,
                        name,
                        description,
                        enabled: true,
                        created_ms: now,
                        created_by,
                        versions: vec![KeyVersion {
                            sealed,
                            created_ms: now,
                        }],
                    },
                )?;
                Ok(KmsResponse::Created { id })
            }
            KmsCommand::EnsureS3Key { sealed } => {
                check_sealed(&sealed)?;
                let mut t = KEYS.open(txn)?;
                if t.get(&S3_KEY)?.is_none() {
                    t.insert(
                        &S3_KEY,
                        &KmsKey {
                            tenant: 0,
                            name: "cairn/sse-s3".into(),
                            description: "the cluster's SSE-S3 key".into(),
                            enabled: true,
                            created_ms: now,
                            created_by: "gateway".into(),
                            versions: vec![KeyVersion {
                                sealed,
                                created_ms: now,
                            }],
                        },
                    )?;
                }
                Ok(KmsResponse::Created { id: S3_KEY })
            }
            KmsCommand::Rotate { tenant, id, sealed } => {
                check_sealed(&sealed)?;
                let mut k = tenant_key(txn, tenant, id)?;
                if k.versions.len() >= VERSIONS_MAX {
                    return Err(reject(
                        KmsRefusal::LimitExceeded,
                        format!("a key has at most {VERSIONS_MAX} versions"),
                    ));
                }
                k.versions.push(KeyVersion {
                    sealed,
                    created_ms: now,
                });
                let version = u32::try_from(k.versions.len()).unwrap_or(u32::MAX);
                KEYS.open(txn)?.insert(&id, &k)?;
                Ok(KmsResponse::Rotated { version })
            }
            KmsCommand::SetEnabled {
                tenant,
                id,
                enabled,
            } => {
                let mut k = tenant_key(txn, tenant, id)?;
                k.enabled = enabled;
                KEYS.open(txn)?.insert(&id, &k)?;
                Ok(KmsResponse::Done)
            }
        }
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: KmsQuery,
    ) -> Result<KmsQueryResponse, ApplyError> {
        let t = KEYS.read(txn)?;
        Ok(match query {
            KmsQuery::Key { id } => KmsQueryResponse::Key(t.get(&id)?),
            KmsQuery::Keys { tenant } => KmsQueryResponse::Keys(keys_of(t.iter()?, tenant)?),
            KmsQuery::Named { tenant, name } => KmsQueryResponse::Named(
                keys_of(t.iter()?, tenant)?
                    .into_iter()
                    .find(|(_, k)| k.name == name),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use redb::ReadableDatabase;

    struct Harness {
        db: redb::Database,
        _dir: tempfile::TempDir,
        n: u64,
    }

    impl Harness {
        fn new(_: KmsService) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            KmsService.init(&txn).unwrap();
            txn.commit().unwrap();
            Harness {
                db,
                _dir: dir,
                n: 0,
            }
        }

        fn apply(&mut self, c: KmsCommand) -> Result<KmsResponse, ApplyError> {
            self.n += 1;
            let mut seed = [0u8; 16];
            seed[..8].copy_from_slice(&self.n.to_le_bytes());
            let ctx = ApplyContext::new(self.n, 1000 + self.n, seed);
            let txn = self.db.begin_write().unwrap();
            let r = KmsService.apply(&txn, &ctx, c);
            txn.commit().unwrap();
            r
        }

        fn query(&self, q: KmsQuery) -> Result<KmsQueryResponse, ApplyError> {
            KmsService.query(&self.db.begin_read().unwrap(), q)
        }
    }

    fn create(h: &mut Harness, tenant: u128, name: &str) -> Result<u128, ApplyError> {
        match h.apply(KmsCommand::Create {
            tenant,
            name: name.into(),
            description: String::new(),
            created_by: "u".into(),
            sealed: vec![1; 60],
        })? {
            KmsResponse::Created { id } => Ok(id),
            r => panic!("unexpected {r:?}"),
        }
    }

    #[test]
    fn keys_are_named_once_per_tenant_rotate_and_stay_in_their_tenant() {
        let mut h = Harness::new(KmsService);
        let a = create(&mut h, 1, "app").unwrap();
        assert!(create(&mut h, 1, "app").is_err());
        assert!(create(&mut h, 1, "bad name").is_err());
        assert!(create(&mut h, 0, "x").is_err());
        let b = create(&mut h, 2, "app").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            h.apply(KmsCommand::Rotate {
                tenant: 1,
                id: a,
                sealed: vec![2; 60]
            })
            .unwrap(),
            KmsResponse::Rotated { version: 2 }
        );
        // Another tenant can neither rotate nor disable it.
        assert!(
            h.apply(KmsCommand::SetEnabled {
                tenant: 2,
                id: a,
                enabled: false
            })
            .is_err()
        );
        let KmsQueryResponse::Keys(mine) = h.query(KmsQuery::Keys { tenant: 1 }).unwrap() else {
            panic!()
        };
        assert_eq!(mine.len(), 1);
        let k = &mine[0].1;
        assert_eq!(
            k.current().map(|(n, v)| (n, v.sealed.clone())),
            Some((2, vec![2; 60]))
        );
        assert_eq!(k.version(1).map(|v| v.sealed.clone()), Some(vec![1; 60]));
        assert!(k.version(0).is_none() && k.version(3).is_none());
    }

    #[test]
    fn the_s3_key_is_made_once() {
        let mut h = Harness::new(KmsService);
        h.apply(KmsCommand::EnsureS3Key {
            sealed: vec![7; 60],
        })
        .unwrap();
        h.apply(KmsCommand::EnsureS3Key {
            sealed: vec![8; 60],
        })
        .unwrap();
        let KmsQueryResponse::Key(Some(k)) = h.query(KmsQuery::Key { id: S3_KEY }).unwrap() else {
            panic!()
        };
        assert_eq!(k.versions.len(), 1);
        assert_eq!(k.versions[0].sealed, vec![7; 60]);
    }
}
