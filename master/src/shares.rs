//! Share links, in the bucket service's transactions: a link names one object of a tenant's
//! bucket and the time it stops working. The gateway signs what it hands out (the id and the
//! expiry); the record here is what makes a link revocable, and what the per-tenant limit counts.
//!
//! Tables:
//! - `s3.shares`: id (16 BE) → [`ShareRecord`] (typed, layout 1).
//! - `s3.tenant_shares`: tenant (16 BE) ‖ id (16 BE) → `()`, to list and count a tenant's links.
//!
//! Expired links are removed when their tenant creates a new one (so the tables stay as large
//! as the live links plus what expired since the last creation).

use cairn_engine::state::{ApplyContext, ApplyError, Rejection, StateError, Table, TypedTable};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

cairn_engine::refusals! {
    /// Why a share link command is refused (answered through the bucket service, whose
    /// [`crate::buckets::BucketRefusal`] carries the same codes).
    pub enum ShareRefusal {
        /// A time or limit outside the rules.
        InvalidArgument = "invalid_argument",
        /// No share link of the tenant has that id.
        NoSuchShare = "no_such_share",
        /// The tenant has the most unexpired share links it may.
        TooManyShares = "too_many_shares",
    }
}

const SHARES: TypedTable<u128, ShareRecord> = TypedTable::new("s3.shares");
/// An index of fixed-width keys and empty values: nothing to version.
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

cairn_engine::records! { ShareRecord = "share record" }

pub(crate) fn init(txn: &WriteTransaction) -> Result<(), StateError> {
    SHARES.init(txn)?;
    txn.open_table(TENANT_SHARES)?;
    Ok(())
}

fn pair(tenant: u128, id: u128) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(&tenant.to_be_bytes());
    k[16..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The ids of a tenant's links with their records (`record` looks one up).
fn of_tenant(
    index: &impl ReadableTable<&'static [u8], &'static [u8]>,
    record: impl Fn(u128) -> Result<Option<ShareRecord>, StateError>,
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
        if let Some(r) = record(id)? {
            out.push((id, r));
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
        return Err(Rejection::new(
            ShareRefusal::InvalidArgument,
            "the link would already have expired",
        )
        .into());
    }
    let mut index = txn.open_table(TENANT_SHARES)?;
    let mut shares = SHARES.open(txn)?;
    let existing = of_tenant(&index, |id| shares.get(&id), record.tenant)?;
    let active = existing.iter().filter(|(_, r)| r.expires_ms > now).count();
    if active >= max_active as usize {
        return Err(Rejection::new(
            ShareRefusal::TooManyShares,
            format!("this tenant already has {active} active share links (the limit is {max_active}); revoke some first"),
        )
        .into());
    }
    for (id, r) in existing.iter().filter(|(_, r)| r.expires_ms <= now) {
        shares.remove(id)?;
        index.remove(pair(r.tenant, *id).as_slice())?;
    }
    let id = ctx.fresh_id();
    shares.insert(&id, &record)?;
    index.insert(pair(record.tenant, id).as_slice(), [].as_slice())?;
    Ok(id)
}

/// Revoke a link of `tenant` (another tenant's link is answered like a missing one).
pub(crate) fn delete(txn: &WriteTransaction, tenant: u128, id: u128) -> Result<(), ApplyError> {
    let mut shares = SHARES.open(txn)?;
    match shares.get(&id)? {
        Some(r) if r.tenant == tenant => {
            shares.remove(&id)?;
            txn.open_table(TENANT_SHARES)?
                .remove(pair(tenant, id).as_slice())?;
            Ok(())
        }
        _ => Err(Rejection::new(ShareRefusal::NoSuchShare, "no such share link").into()),
    }
}

pub(crate) fn get(txn: &ReadTransaction, id: u128) -> Result<Option<ShareRecord>, ApplyError> {
    Ok(SHARES.read(txn)?.get(&id)?)
}

pub(crate) fn list(
    txn: &ReadTransaction,
    tenant: u128,
) -> Result<Vec<(u128, ShareRecord)>, ApplyError> {
    let index = txn.open_table(TENANT_SHARES)?;
    let shares = SHARES.read(txn)?;
    let mut all = of_tenant(&index, |id| shares.get(&id), tenant)?;
    all.truncate(LIST_MAX);
    Ok(all)
}
