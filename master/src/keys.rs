//! The access key service (service 5): S3 access keys and their sealed secrets.
//!
//! SigV4 needs the secret itself, so it cannot be hashed: gateways seal it (AEAD) with the
//! cluster's secrets key before proposing, and only ciphertext ever reaches the log, the state
//! store or a snapshot. The identity issue builds users and tenants on top of this.

use cairn_engine::state::{
    ApplyContext, ApplyError, Rejection, ServiceId, StateError, Table, TypedService,
};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

const KEYS: Table = Table::new("s3.keys");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    /// The secret, sealed with the cluster secrets key (nonce ‖ ciphertext ‖ tag).
    pub sealed_secret: Vec<u8>,
    /// Who the key acts for (a user id once identity exists; `root` for the first key).
    pub owner: String,
    pub created_ms: u64,
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
            "invalid_argument",
            "access keys are 16 to 128 letters and digits",
        ))
    }
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
        txn.open_table(KEYS)?;
        Ok(())
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: KeyCommand,
    ) -> Result<bool, ApplyError> {
        let mut t = txn.open_table(KEYS)?;
        match command {
            KeyCommand::Create {
                access_key,
                sealed_secret,
                owner,
            } => {
                check_access_key(&access_key)?;
                if t.get(access_key.as_bytes())?.is_some() {
                    return Err(Rejection::new("key_exists", "that access key exists").into());
                }
                let rec = AccessKey {
                    sealed_secret,
                    owner,
                    created_ms: ctx.time_ms,
                };
                let bytes =
                    postcard::to_stdvec(&rec).map_err(|e| StateError::Encode(e.to_string()))?;
                t.insert(access_key.as_bytes(), bytes.as_slice())?;
                Ok(true)
            }
            KeyCommand::Delete { access_key } => Ok(t.remove(access_key.as_bytes())?.is_some()),
        }
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: KeyQuery,
    ) -> Result<KeyQueryResponse, ApplyError> {
        let t = txn.open_table(KEYS)?;
        Ok(match query {
            KeyQuery::Get { access_key } => {
                let v = t.get(access_key.as_bytes())?;
                KeyQueryResponse::Key(
                    v.map(|v| {
                        postcard::from_bytes(v.value())
                            .map_err(|e| StateError::Corrupt(format!("access key: {e}")))
                    })
                    .transpose()?,
                )
            }
            KeyQuery::Count => {
                use redb::ReadableTableMetadata;
                KeyQueryResponse::Count(t.len()?)
            }
            KeyQuery::ByOwner { owner } => {
                let mut out = Vec::new();
                for item in t.iter()? {
                    let (k, v) = item?;
                    let rec: AccessKey = postcard::from_bytes(v.value())
                        .map_err(|e| StateError::Corrupt(format!("access key: {e}")))?;
                    if rec.owner == owner {
                        let id = String::from_utf8(k.value().to_vec()).map_err(|_| {
                            StateError::Corrupt("access key id is not UTF-8".into())
                        })?;
                        out.push((id, rec));
                    }
                }
                KeyQueryResponse::Keys(out)
            }
        })
    }
}
