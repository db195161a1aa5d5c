//! The audit service (service 7): an append-only record of state-changing actions.
//!
//! There is one command, `Append`: nothing on the log can change or remove an entry, so no API
//! can either. Entries are numbered in log order.
//!
//! Tables: `audit.entries`: sequence number (u64 BE) → [`AuditEntry`]; `audit.meta`: `next` → u64.

use cairn_engine::state::{
    ApplyContext, ApplyError, ServiceId, StateError, Table, TypedService, TypedTable,
};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

const ENTRIES: TypedTable<u64, AuditEntry> = TypedTable::new("audit.entries");
const META: Table = Table::new("audit.meta");
const NEXT: &[u8] = b"next";

/// Most entries one query returns.
pub const LIST_MAX: u32 = 1000;
/// Most entries one query examines.
const SCAN_MAX: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Stamped by the log (the proposer's clock), not by the caller.
    pub time_ms: u64,
    /// Who: a user id, an email for a failed login, or `anonymous`.
    pub actor: String,
    /// What, e.g. `auth.login`, `keys.create`.
    pub action: String,
    /// On what, e.g. a session or key id.
    pub resource: String,
    pub ip: String,
    /// `success`, `denied` or `failure`.
    pub outcome: String,
}

/// An entry as proposed (the time comes from the log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEntry {
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub ip: String,
    pub outcome: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditCommand {
    Append(Vec<NewEntry>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub limit: u32,
    pub offset: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditQuery {
    /// Newest first.
    List(AuditFilter),
}

/// Append entries (at most 1,000) stamped `time_ms`; the number of the last one. Other services
/// call this inside their own command's transaction to audit what they change in one entry.
pub fn append(
    txn: &WriteTransaction,
    time_ms: u64,
    entries: Vec<NewEntry>,
) -> Result<u64, ApplyError> {
    let mut meta = txn.open_table(META)?;
    let mut next = match meta.get(NEXT)? {
        Some(v) => {
            let b: [u8; 8] = v
                .value()
                .try_into()
                .map_err(|_| StateError::Corrupt("audit counter is not 8 bytes".into()))?;
            u64::from_be_bytes(b)
        }
        None => 1,
    };
    let mut t = ENTRIES.open(txn)?;
    for e in entries.into_iter().take(1000) {
        let entry = AuditEntry {
            time_ms,
            actor: clip(&e.actor, 256),
            action: clip(&e.action, 64),
            resource: clip(&e.resource, 1024),
            ip: clip(&e.ip, 64),
            outcome: clip(&e.outcome, 16),
        };
        t.insert(&next, &entry)?;
        next += 1;
    }
    meta.insert(NEXT, next.to_be_bytes().as_slice())?;
    Ok(next - 1)
}

cairn_engine::records! { AuditEntry = "audit entry" }

#[derive(Clone, Copy, Debug, Default)]
pub struct AuditService;

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

impl TypedService for AuditService {
    const ID: ServiceId = ServiceId(7);
    const NAME: &'static str = "audit";
    const VERSION: u16 = 1;
    type Command = AuditCommand;
    type Response = u64;
    type Query = AuditQuery;
    type QueryResponse = Vec<(u64, AuditEntry)>;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        ENTRIES.init(txn)?;
        txn.open_table(META)?;
        Ok(())
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: AuditCommand,
    ) -> Result<u64, ApplyError> {
        let AuditCommand::Append(entries) = command;
        append(txn, ctx.time_ms, entries)
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: AuditQuery,
    ) -> Result<Vec<(u64, AuditEntry)>, ApplyError> {
        let AuditQuery::List(f) = query;
        let t = ENTRIES.read(txn)?;
        let limit = f.limit.min(LIST_MAX) as usize;
        let mut skipped = 0u32;
        let mut out = Vec::new();
        for (examined, item) in t.iter()?.rev().enumerate() {
            if out.len() >= limit || examined >= SCAN_MAX {
                break;
            }
            let (seq, e) = item?;
            let keep = f.actor.as_ref().is_none_or(|a| *a == e.actor)
                && f.action.as_ref().is_none_or(|a| *a == e.action)
                && f.resource.as_ref().is_none_or(|r| *r == e.resource)
                && f.from_ms.is_none_or(|m| e.time_ms >= m)
                && f.to_ms.is_none_or(|m| e.time_ms <= m);
            if !keep {
                continue;
            }
            if skipped < f.offset {
                skipped += 1;
                continue;
            }
            out.push((seq, e));
        }
        Ok(out)
    }
}
