//! Cluster settings: a small replicated key/value service (the first service on the log).
//!
//! Keys are 1..=128 characters of `a-z 0-9 . _ -`; values at most 4 KiB of UTF-8. Each entry
//! remembers when (proposer time) and at which log index it was last written.

use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::command::ServiceId;
use super::service::{ApplyContext, ApplyError, Rejection, TypedService};
use super::{StateError, Table};

const SETTINGS: Table = Table::new("settings");
pub const KEY_LEN_MAX: usize = 128;
pub const VALUE_LEN_MAX: usize = 4096;

/// The service; stateless itself, its state is the `settings` table.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterSettings;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettingsCommand {
    Set { key: String, value: String },
    Delete { key: String },
}

/// Read-only questions about the settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettingsQuery {
    Get { key: String },
    List,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettingsQueryResponse {
    Value(Option<Setting>),
    All(Vec<(String, Setting)>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettingsResponse {
    Set { previous: Option<String> },
    Deleted { existed: bool },
}

/// One stored setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub value: String,
    pub updated_ms: u64,
    pub updated_index: u64,
}

fn check_key(key: &str) -> Result<(), Rejection> {
    let ok_chars = key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if key.is_empty() || key.len() > KEY_LEN_MAX || !ok_chars {
        return Err(Rejection::new(
            "invalid_argument",
            format!("setting key {key:?} must be 1..={KEY_LEN_MAX} characters of a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<Setting, StateError> {
    postcard::from_bytes(bytes).map_err(|e| StateError::Corrupt(format!("settings entry: {e}")))
}

impl TypedService for ClusterSettings {
    const ID: ServiceId = ServiceId(1);
    const NAME: &'static str = "settings";
    const VERSION: u16 = 1;
    type Command = SettingsCommand;
    type Response = SettingsResponse;
    type Query = SettingsQuery;
    type QueryResponse = SettingsQueryResponse;

    fn query(
        &self,
        txn: &ReadTransaction,
        query: SettingsQuery,
    ) -> Result<SettingsQueryResponse, ApplyError> {
        Ok(match query {
            SettingsQuery::Get { key } => {
                SettingsQueryResponse::Value(ClusterSettings::get(txn, &key)?)
            }
            SettingsQuery::List => SettingsQueryResponse::All(ClusterSettings::list(txn)?),
        })
    }

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        txn.open_table(SETTINGS)?;
        Ok(())
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: SettingsCommand,
    ) -> Result<SettingsResponse, ApplyError> {
        let mut table = txn.open_table(SETTINGS)?;
        match command {
            SettingsCommand::Set { key, value } => {
                check_key(&key)?;
                if value.len() > VALUE_LEN_MAX {
                    return Err(Rejection::new(
                        "invalid_argument",
                        format!(
                            "value of {key:?} is {} bytes, over the {VALUE_LEN_MAX}-byte limit",
                            value.len()
                        ),
                    )
                    .into());
                }
                let entry = Setting {
                    value,
                    updated_ms: ctx.time_ms,
                    updated_index: ctx.index,
                };
                let bytes =
                    postcard::to_stdvec(&entry).map_err(|e| StateError::Encode(e.to_string()))?;
                let previous = match table.insert(key.as_bytes(), bytes.as_slice())? {
                    Some(old) => Some(decode(old.value())?.value),
                    None => None,
                };
                Ok(SettingsResponse::Set { previous })
            }
            SettingsCommand::Delete { key } => {
                check_key(&key)?;
                let existed = table.remove(key.as_bytes())?.is_some();
                Ok(SettingsResponse::Deleted { existed })
            }
        }
    }
}

impl ClusterSettings {
    pub fn get(txn: &ReadTransaction, key: &str) -> Result<Option<Setting>, StateError> {
        let table = txn.open_table(SETTINGS)?;
        match table.get(key.as_bytes())? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every setting in key order.
    pub fn list(txn: &ReadTransaction) -> Result<Vec<(String, Setting)>, StateError> {
        Self::with_prefix(txn, "")
    }

    /// The settings whose keys start with `prefix`, in key order: a range scan that reads only
    /// those keys, so a caller that wants a handful of them (the planner, every tick) costs the
    /// same whether the table holds ten settings or a million.
    pub fn with_prefix(
        txn: &ReadTransaction,
        prefix: &str,
    ) -> Result<Vec<(String, Setting)>, StateError> {
        let table = txn.open_table(SETTINGS)?;
        let mut out = Vec::new();
        for item in table.range(prefix.as_bytes()..)? {
            let (k, v) = item?;
            if !k.value().starts_with(prefix.as_bytes()) {
                break;
            }
            let key = String::from_utf8(k.value().to_vec())
                .map_err(|_| StateError::Corrupt("settings key is not UTF-8".into()))?;
            out.push((key, decode(v.value())?));
        }
        Ok(out)
    }
}
