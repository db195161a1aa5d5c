//! Cluster settings: a small replicated key/value service (the first service on the log).
//!
//! Keys are 1..=128 characters of `a-z 0-9 . _ -`; values at most 4 KiB of UTF-8. Each entry
//! remembers when (proposer time) and at which log index it was last written.

use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::StateError;
use super::command::ServiceId;
use super::service::{ApplyContext, ApplyError, Rejection, TypedService};
use super::table::TypedTable;

const SETTINGS: TypedTable<String, Setting> = TypedTable::new("settings");
pub const KEY_LEN_MAX: usize = 128;
pub const VALUE_LEN_MAX: usize = 4096;

crate::refusals! {
    /// Why the settings service refuses a command.
    pub enum SettingsRefusal {
        /// A key or value outside the limits.
        InvalidArgument = "invalid_argument",
    }
}

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
            SettingsRefusal::InvalidArgument,
            format!("setting key {key:?} must be 1..={KEY_LEN_MAX} characters of a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

crate::records! { Setting = "settings entry" }

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
        SETTINGS.init(txn)
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: SettingsCommand,
    ) -> Result<SettingsResponse, ApplyError> {
        let mut table = SETTINGS.open(txn)?;
        match command {
            SettingsCommand::Set { key, value } => {
                check_key(&key)?;
                if value.len() > VALUE_LEN_MAX {
                    return Err(Rejection::new(
                        SettingsRefusal::InvalidArgument,
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
                let previous = table.take(&key)?.map(|old| old.value);
                table.insert(&key, &entry)?;
                Ok(SettingsResponse::Set { previous })
            }
            SettingsCommand::Delete { key } => {
                check_key(&key)?;
                let existed = table.remove(&key)?;
                Ok(SettingsResponse::Deleted { existed })
            }
        }
    }
}

impl ClusterSettings {
    pub fn get(txn: &ReadTransaction, key: &str) -> Result<Option<Setting>, StateError> {
        SETTINGS.read(txn)?.get(&key.to_owned())
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
        let table = SETTINGS.read(txn)?;
        let mut out = Vec::new();
        for item in table.range_from(&prefix.to_owned())? {
            let (key, setting) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key, setting));
        }
        Ok(out)
    }
}
