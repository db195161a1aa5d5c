//! Object lock (WORM): retention and legal holds of object versions, the bucket's default
//! retention, and the rules that keep a locked version from being deleted by anyone, lifecycle
//! rules included, until its retention ends.
//!
//! A lock belongs to one version of a key in a bucket with object lock (which keeps versioning
//! enabled, so a version is never overwritten in place: a write stacks a new one). Locks live
//! in `s3.locks` (`bucket / key ‖ version id`), apart from the version records, so that object
//! writes, listings and the record layouts of versions are untouched; a lock given when a
//! multipart upload starts waits in `s3.upload_locks` (the upload's key) until the upload
//! completes. Every time is the command's, stamped by the proposer: a retention ends at the
//! same instant on every replica.
//!
//! The rules, as S3 has them: a legal hold refuses deletion while it is on; `COMPLIANCE`
//! retention refuses deletion and can only be extended, by anyone; `GOVERNANCE` retention
//! refuses deletion and shortening unless the request bypasses governance (which takes the
//! `s3:BypassGovernanceRetention` permission, checked by the gateway).

use cairn_engine::state::{ApplyError, StateError, TypedTable, reject};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::refusal::BucketRefusal;

/// `bucket / key ‖ version id (16 BE)` → the version's lock.
const LOCKS: TypedTable<Vec<u8>, ObjectLock> = TypedTable::new("s3.locks");
/// Upload key → the lock its object gets when the upload completes.
const UPLOAD_LOCKS: TypedTable<Vec<u8>, ObjectLock> = TypedTable::new("s3.upload_locks");

const DAY_MS: u64 = 86_400_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }

    pub fn parse(s: &str) -> Option<LockMode> {
        match s {
            "GOVERNANCE" => Some(LockMode::Governance),
            "COMPLIANCE" => Some(LockMode::Compliance),
            _ => None,
        }
    }
}

/// A retention: the version cannot be deleted before `until_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub mode: LockMode,
    pub until_ms: u64,
}

/// What holds one version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLock {
    pub retention: Option<Retention>,
    pub legal_hold: bool,
}

cairn_engine::records! { ObjectLock = "object lock" }

/// A bucket's default retention: new versions get it unless the write names its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultRetention {
    pub mode: LockMode,
    /// Days, or years (of 365 days) when `years` is set.
    pub period: u32,
    pub years: bool,
}

impl DefaultRetention {
    /// The retention a version written at `now_ms` gets.
    pub fn from(self, now_ms: u64) -> Retention {
        let days = u64::from(self.period) * if self.years { 365 } else { 1 };
        Retention {
            mode: self.mode,
            until_ms: now_ms.saturating_add(days.saturating_mul(DAY_MS)),
        }
    }
}

/// A bucket's object lock configuration: present once object lock is enabled (it cannot be
/// turned off again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockConfig {
    pub default: Option<DefaultRetention>,
}

/// Longest default retention S3 accepts: 100 years.
pub const DEFAULT_DAYS_MAX: u32 = 36_500;

impl ObjectLock {
    pub fn is_empty(&self) -> bool {
        self.retention.is_none() && !self.legal_hold
    }

    /// Why the version may not be deleted at `now_ms` (`None`: it may).
    pub fn blocks_delete(&self, now_ms: u64, bypass_governance: bool) -> Option<String> {
        if self.legal_hold {
            return Some("the object version is under a legal hold".into());
        }
        match self.retention {
            Some(r) if r.until_ms > now_ms => match r.mode {
                LockMode::Compliance => {
                    Some("the object version is locked in COMPLIANCE mode until its retention date".into())
                }
                LockMode::Governance if !bypass_governance => Some(
                    "the object version is locked in GOVERNANCE mode (bypass it with x-amz-bypass-governance-retention and the s3:BypassGovernanceRetention permission)".into(),
                ),
                LockMode::Governance => None,
            },
            _ => None,
        }
    }

    /// Whether the version is held at `now_ms` (by retention or a legal hold).
    pub fn holds(&self, now_ms: u64) -> bool {
        self.blocks_delete(now_ms, false).is_some()
    }
}

/// Whether `old` may become `new` at `now_ms`: a retention in force may only be extended in
/// its mode (COMPLIANCE), or changed in any way with the governance bypass (GOVERNANCE).
pub fn check_retention_change(
    old: Option<Retention>,
    new: Option<Retention>,
    now_ms: u64,
    bypass_governance: bool,
) -> Result<(), String> {
    let Some(old) = old.filter(|o| o.until_ms > now_ms) else {
        return Ok(());
    };
    let extends = new.is_some_and(|n| n.mode == old.mode && n.until_ms >= old.until_ms);
    if extends {
        return Ok(());
    }
    match old.mode {
        LockMode::Compliance => Err(
            "a COMPLIANCE retention can only be extended, never shortened, removed or changed to GOVERNANCE".into(),
        ),
        LockMode::Governance if bypass_governance => Ok(()),
        LockMode::Governance => Err(
            "shortening or removing a GOVERNANCE retention takes x-amz-bypass-governance-retention".into(),
        ),
    }
}

fn denied(why: String) -> ApplyError {
    reject(BucketRefusal::ObjectLocked, why)
}

pub(super) fn init(txn: &WriteTransaction) -> Result<(), StateError> {
    LOCKS.init(txn)?;
    UPLOAD_LOCKS.init(txn)
}

/// The null version (from before versioning was enabled) is id 0 here: version ids are
/// random 128-bit numbers.
fn lock_key(object_key: &[u8], version: Option<u128>) -> Vec<u8> {
    let mut k = object_key.to_vec();
    k.extend_from_slice(&version.unwrap_or(0).to_be_bytes());
    k
}

/// The lock of a version (empty when none).
pub(super) fn get(
    txn: &WriteTransaction,
    object_key: &[u8],
    version: Option<u128>,
) -> Result<ObjectLock, StateError> {
    Ok(LOCKS
        .open(txn)?
        .get(&lock_key(object_key, version))?
        .unwrap_or_default())
}

/// The lock of a version, in a read.
pub(super) fn read(
    txn: &ReadTransaction,
    object_key: &[u8],
    version: Option<u128>,
) -> Result<ObjectLock, StateError> {
    Ok(LOCKS
        .read(txn)?
        .get(&lock_key(object_key, version))?
        .unwrap_or_default())
}

/// Store a version's lock (an empty one is removed).
pub(super) fn put(
    txn: &WriteTransaction,
    object_key: &[u8],
    version: Option<u128>,
    lock: &ObjectLock,
) -> Result<(), StateError> {
    let mut t = LOCKS.open(txn)?;
    let k = lock_key(object_key, version);
    if lock.is_empty() {
        t.remove(&k)?;
    } else {
        t.insert(&k, lock)?;
    }
    Ok(())
}

/// Refuse deleting a version its lock holds; forget the lock of one that may go.
pub(super) fn release_for_delete(
    txn: &WriteTransaction,
    object_key: &[u8],
    version: Option<u128>,
    now_ms: u64,
    bypass_governance: bool,
) -> Result<(), ApplyError> {
    let lock = get(txn, object_key, version)?;
    if let Some(why) = lock.blocks_delete(now_ms, bypass_governance) {
        return Err(denied(why));
    }
    if !lock.is_empty() {
        put(txn, object_key, version, &ObjectLock::default())?;
    }
    Ok(())
}

/// Whether a version is held at `now_ms` (lifecycle rules leave it alone then).
pub(super) fn held(
    txn: &WriteTransaction,
    object_key: &[u8],
    version: Option<u128>,
    now_ms: u64,
) -> Result<bool, StateError> {
    Ok(get(txn, object_key, version)?.holds(now_ms))
}

/// The lock a new version written at `now_ms` gets: the write's own, else the bucket's default
/// retention (`config`: the bucket's; none outside object-lock buckets).
pub(super) fn for_new_version(
    config: Option<LockConfig>,
    own: Option<ObjectLock>,
    now_ms: u64,
) -> Option<ObjectLock> {
    if let Some(l) = own {
        return Some(l);
    }
    let d = config?.default?;
    Some(ObjectLock {
        retention: Some(d.from(now_ms)),
        legal_hold: false,
    })
}

/// A lock a write asks for: only on object-lock buckets, with a retention date in the future.
pub(super) fn check_requested(
    config: Option<LockConfig>,
    lock: &ObjectLock,
    now_ms: u64,
) -> Result<(), ApplyError> {
    if config.is_none() {
        return Err(reject(
            BucketRefusal::InvalidRequest,
            "Bucket is missing Object Lock Configuration",
        ));
    }
    if lock.retention.is_some_and(|r| r.until_ms <= now_ms) {
        return Err(reject(
            BucketRefusal::InvalidArgument,
            "The retain until date must be in the future!",
        ));
    }
    Ok(())
}

/// Keep a lock for the object an upload will make.
pub(super) fn put_for_upload(
    txn: &WriteTransaction,
    upload_key: &[u8],
    lock: &ObjectLock,
) -> Result<(), StateError> {
    UPLOAD_LOCKS.open(txn)?.insert(&upload_key.to_vec(), lock)
}

/// Take the lock kept for an upload (completion or abort).
pub(super) fn take_for_upload(
    txn: &WriteTransaction,
    upload_key: &[u8],
) -> Result<Option<ObjectLock>, StateError> {
    let mut t = UPLOAD_LOCKS.open(txn)?;
    let l = t.get(&upload_key.to_vec())?;
    if l.is_some() {
        t.remove(&upload_key.to_vec())?;
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn ret(mode: LockMode, until_ms: u64) -> Option<Retention> {
        Some(Retention { mode, until_ms })
    }

    #[test]
    fn deletion_is_refused_while_held() {
        use LockMode::*;
        let cases = [
            (ObjectLock::default(), false, true),
            (
                ObjectLock {
                    retention: ret(Compliance, NOW + 1),
                    legal_hold: false,
                },
                true,
                false,
            ),
            (
                ObjectLock {
                    retention: ret(Compliance, NOW),
                    legal_hold: false,
                },
                false,
                true,
            ),
            (
                ObjectLock {
                    retention: ret(Governance, NOW + 1),
                    legal_hold: false,
                },
                false,
                false,
            ),
            (
                ObjectLock {
                    retention: ret(Governance, NOW + 1),
                    legal_hold: false,
                },
                true,
                true,
            ),
            (
                ObjectLock {
                    retention: None,
                    legal_hold: true,
                },
                true,
                false,
            ),
            (
                ObjectLock {
                    retention: ret(Governance, NOW - 1),
                    legal_hold: true,
                },
                true,
                false,
            ),
        ];
        for (i, (lock, bypass, may)) in cases.into_iter().enumerate() {
            assert_eq!(
                lock.blocks_delete(NOW, bypass).is_none(),
                may,
                "case {i}: {lock:?}"
            );
        }
    }

    #[test]
    fn retention_changes_follow_the_mode() {
        use LockMode::*;
        let c = ret(Compliance, NOW + 100);
        let g = ret(Governance, NOW + 100);
        // Extending is always allowed; shortening, removing or changing mode is not for
        // COMPLIANCE, and takes the bypass for GOVERNANCE.
        assert!(check_retention_change(c, ret(Compliance, NOW + 200), NOW, false).is_ok());
        assert!(check_retention_change(c, ret(Compliance, NOW + 50), NOW, true).is_err());
        assert!(check_retention_change(c, None, NOW, true).is_err());
        assert!(check_retention_change(c, ret(Governance, NOW + 200), NOW, true).is_err());
        assert!(check_retention_change(g, ret(Governance, NOW + 200), NOW, false).is_ok());
        assert!(check_retention_change(g, ret(Compliance, NOW + 200), NOW, false).is_err());
        assert!(check_retention_change(g, ret(Compliance, NOW + 200), NOW, true).is_ok());
        assert!(check_retention_change(g, ret(Governance, NOW + 50), NOW, false).is_err());
        assert!(check_retention_change(g, None, NOW, true).is_ok());
        // An expired retention is no retention.
        assert!(check_retention_change(ret(Compliance, NOW), None, NOW, false).is_ok());
        assert!(check_retention_change(None, ret(Compliance, NOW + 1), NOW, false).is_ok());
    }

    #[test]
    fn default_retention_counts_days_or_years() {
        let d = DefaultRetention {
            mode: LockMode::Governance,
            period: 2,
            years: false,
        };
        assert_eq!(d.from(NOW).until_ms, NOW + 2 * DAY_MS);
        let y = DefaultRetention {
            mode: LockMode::Compliance,
            period: 1,
            years: true,
        };
        assert_eq!(
            y.from(NOW),
            Retention {
                mode: LockMode::Compliance,
                until_ms: NOW + 365 * DAY_MS
            }
        );
    }
}
