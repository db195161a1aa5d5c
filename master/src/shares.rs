//! Share links, in the bucket service's transactions: a link names one object of a tenant's
//! bucket and the time it stops working. The gateway signs what it hands out (the id and the
//! expiry); the record here is what makes a link revocable, and what the per-tenant limit counts.
//!
//! Tables:
//! - `s3.shares`: id (16 BE) → [`ShareRecord`].
//! - `s3.tenant_shares`: tenant (16 BE) ‖ id (16 BE) → `()`, to list and count a tenant's links.
//!
//! Expired links are removed when their tenant creates a new one (so the tables stay as large
//! as the live links plus what expired since the last creation).

use cairn_engine::state::{ApplyContext, ApplyError, Rejection, StateError, Table, encode};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

const SHARES: Table = Table::new("s3.shares");
const TENANT_SHARES: Table = Table::new("s3.tenant_shares");

/// Most links one tenant's listing returns.
pub const LIST_MAX: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRecord {
    pub tenant: u128,
    pub bucket: String,
    pub key: String,
    /// The user who made it.
    pub created_by: u128,
    pub created_ms: u64,
    pub expires_ms: u64,
}

pub(crate) fn init(txn: &WriteTransaction) -> Result<(), StateError> {
    txn.open_table(SHARES)?;
    txn.open_table(TENANT_SHARES)?;
    Ok(())
}

fn pair(tenant: u128, id: u128) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&tenant.to_be_bytes());
    k[16..].copy_from_slice(&id.to_be_bytes());
    k
}

fn decode(b: &[u8]) -> Result<ShareRecord, StateError> {
    cairn_engine::state::decode("share record", b)
}

/// The ids of a tenant's links with their records.
fn of_tenant<T: ReadableTable<&'static [u8], &'static [u8]>>(
    index: &T,
    shares: &T,
    tenant: u128,
) -> Result<Vec<(u128, ShareRecord)>, ApplyError> {
    let lo = pair(tenant, 0);
    let hi = pair(tenant, u128::MAX);
    let mut out = Vec::new();
    for item in index.range(lo.as_slice()..=hi.as_slice())? {
        let (k, _) = item?;
        let k = k.value();
        let id = k
            .get(16..32)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(u128::from_be_bytes)
            .ok_or_else(|| StateError::Corrupt("share index key is not 32 bytes".into()))?;
        if let Some(v) = shares.get(id.to_be_bytes().as_slice())? {
            out.push((id, decode(v.value())?));
        }
    }
    Ok(out)
}

/// Record a new link; expired links of the tenant go first, then the limit is checked.
pub(crate) fn create(
    txn: &WriteTransaction,
    ctx: &ApplyContext,
    record: ShareRecord,
    max_active: u32,
) -> Result<u128, ApplyError> {
    let now = ctx.time_ms;
    if record.expires_ms <= now {
        return Err(
            Rejection::new("invalid_argument", "the link would already have expired").into(),
        );
    }
    let mut index = txn.open_table(TENANT_SHARES)?;
    let mut shares = txn.open_table(SHARES)?;
    let existing = of_tenant(&index, &shares, record.tenant)?;
    let active = existing.iter().filter(|(_, r)| r.expires_ms > now).count();
    if active >= max_active as usize {
        return Err(Rejection::new(
            "too_many_shares",
            format!("this tenant already has {active} active share links (the limit is {max_active}); revoke some first"),
        )
        .into());
    }
    for (id, r) in existing.iter().filter(|(_, r)| r.expires_ms <= now) {
        shares.remove(id.to_be_bytes().as_slice())?;
        index.remove(pair(r.tenant, *id).as_slice())?;
    }
    let id = ctx.fresh_id();
    let bytes = encode(&record)?;
    shares.insert(id.to_be_bytes().as_slice(), bytes.as_slice())?;
    index.insert(pair(record.tenant, id).as_slice(), [].as_slice())?;
    Ok(id)
}

/// Revoke a link of `tenant` (another tenant's link is answered like a missing one).
pub(crate) fn delete(txn: &WriteTransaction, tenant: u128, id: u128) -> Result<(), ApplyError> {
    let mut shares = txn.open_table(SHARES)?;
    let found = match shares.get(id.to_be_bytes().as_slice())? {
        Some(v) => Some(decode(v.value())?),
        None => None,
    };
    match found {
        Some(r) if r.tenant == tenant => {
            shares.remove(id.to_be_bytes().as_slice())?;
            txn.open_table(TENANT_SHARES)?
                .remove(pair(tenant, id).as_slice())?;
            Ok(())
        }
        _ => Err(Rejection::new("no_such_share", "no such share link").into()),
    }
}

pub(crate) fn get(txn: &ReadTransaction, id: u128) -> Result<Option<ShareRecord>, ApplyError> {
    let t = txn.open_table(SHARES)?;
    let v = t.get(id.to_be_bytes().as_slice())?;
    Ok(v.map(|v| decode(v.value())).transpose()?)
}

pub(crate) fn list(
    txn: &ReadTransaction,
    tenant: u128,
) -> Result<Vec<(u128, ShareRecord)>, ApplyError> {
    let index = txn.open_table(TENANT_SHARES)?;
    let shares = txn.open_table(SHARES)?;
    let mut all = of_tenant(&index, &shares, tenant)?;
    all.truncate(LIST_MAX);
    Ok(all)
}
