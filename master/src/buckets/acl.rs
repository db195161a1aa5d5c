//! S3 access control lists: grants of READ, WRITE, READ_ACP, WRITE_ACP and FULL_CONTROL to a
//! tenant (by its canonical id, the 32-hex-digit tenant id S3 reports as an owner's id) or to
//! the groups AllUsers and AuthenticatedUsers; canned ACLs; object ownership; and the tables of
//! object ACLs. The rules are pure: the gateway decides with [`allows`], the bucket service
//! stores what [`Canned::grants`] and the grant headers make.
//!
//! The owner's FULL_CONTROL is implicit and not stored. A bucket's `public-read` (AllUsers
//! READ) stays the `public_read` flag of its record, which namespaces share; every other grant
//! is in `BucketRecord::acl`. An object's ACL is an entry of `s3.acls` (with its owner) only
//! when it grants something beyond its owner's FULL_CONTROL, or its owner is not the bucket's.

use cairn_engine::state::{StateError, TypedTable};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::keys::version_key;

/// `bucket / key ‖ version id (16 BE)` → the version's ACL, for versions whose ACL grants
/// something (no entry: private, owned by the bucket's owner).
const ACLS: TypedTable<Vec<u8>, ObjectAcl> = TypedTable::new("s3.acls");
/// Upload key → the ACL its object gets when the upload completes.
const UPLOAD_ACLS: TypedTable<Vec<u8>, ObjectAcl> = TypedTable::new("s3.upload_acls");

/// An object version's ACL: its owner (`None`: the bucket's) and its grants besides the
/// owner's FULL_CONTROL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectAcl {
    pub owner: Option<String>,
    pub grants: Vec<Grant>,
}

cairn_engine::records! { ObjectAcl = "object acl" }

impl ObjectAcl {
    pub fn is_empty(&self) -> bool {
        self.owner.is_none() && self.grants.is_empty()
    }
}

pub(super) fn init(txn: &WriteTransaction) -> Result<(), StateError> {
    ACLS.init(txn)?;
    UPLOAD_ACLS.init(txn)
}

/// A version's ACL (empty: private, the bucket owner's).
pub(super) fn read(
    txn: &ReadTransaction,
    object_key: &[u8],
    version: Option<u128>,
) -> Result<ObjectAcl, StateError> {
    Ok(ACLS
        .read(txn)?
        .get(&version_key(object_key, version))?
        .unwrap_or_default())
}

/// Store a version's ACL; an empty one removes the entry (a new null version, a deletion).
pub(super) fn put(
    txn: &WriteTransaction,
    object_key: &[u8],
    version: Option<u128>,
    acl: &ObjectAcl,
) -> Result<(), StateError> {
    let mut t = ACLS.open(txn)?;
    let k = version_key(object_key, version);
    if acl.is_empty() {
        t.remove(&k)?;
    } else {
        t.insert(&k, acl)?;
    }
    Ok(())
}

/// Forget the ACL of a version that goes.
pub(super) fn forget(
    txn: &WriteTransaction,
    object_key: &[u8],
    version: Option<u128>,
) -> Result<(), StateError> {
    put(txn, object_key, version, &ObjectAcl::default())
}

pub(super) fn put_for_upload(
    txn: &WriteTransaction,
    upload_key: &[u8],
    acl: &ObjectAcl,
) -> Result<(), StateError> {
    UPLOAD_ACLS.open(txn)?.insert(&upload_key.to_vec(), acl)
}

pub(super) fn take_for_upload(
    txn: &WriteTransaction,
    upload_key: &[u8],
) -> Result<Option<ObjectAcl>, StateError> {
    let mut t = UPLOAD_ACLS.open(txn)?;
    let a = t.get(&upload_key.to_vec())?;
    if a.is_some() {
        t.remove(&upload_key.to_vec())?;
    }
    Ok(a)
}

/// The group of every caller, signed or not.
pub const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
/// The group of every signed caller.
pub const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";
/// The log delivery group (accepted in grants; no Cairn caller is in it).
pub const LOG_DELIVERY: &str = "http://acs.amazonaws.com/groups/s3/LogDelivery";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    Read,
    Write,
    ReadAcp,
    WriteAcp,
    FullControl,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "READ",
            Permission::Write => "WRITE",
            Permission::ReadAcp => "READ_ACP",
            Permission::WriteAcp => "WRITE_ACP",
            Permission::FullControl => "FULL_CONTROL",
        }
    }

    pub fn parse(s: &str) -> Option<Permission> {
        [
            Permission::Read,
            Permission::Write,
            Permission::ReadAcp,
            Permission::WriteAcp,
            Permission::FullControl,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }

    /// Whether a grant of `self` gives `needed`.
    pub fn covers(self, needed: Permission) -> bool {
        self == Permission::FullControl || self == needed
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Grantee {
    /// A tenant, by its canonical id.
    Tenant(String),
    AllUsers,
    AuthenticatedUsers,
    LogDelivery,
}

impl Grantee {
    /// A group by its URI.
    pub fn group(uri: &str) -> Option<Grantee> {
        match uri {
            ALL_USERS => Some(Grantee::AllUsers),
            AUTHENTICATED_USERS => Some(Grantee::AuthenticatedUsers),
            LOG_DELIVERY => Some(Grantee::LogDelivery),
            _ => None,
        }
    }

    pub fn uri(&self) -> Option<&'static str> {
        match self {
            Grantee::AllUsers => Some(ALL_USERS),
            Grantee::AuthenticatedUsers => Some(AUTHENTICATED_USERS),
            Grantee::LogDelivery => Some(LOG_DELIVERY),
            Grantee::Tenant(_) => None,
        }
    }

    /// Whether the grant reaches callers outside any one tenant.
    pub fn is_public(&self) -> bool {
        matches!(self, Grantee::AllUsers | Grantee::AuthenticatedUsers)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Grant {
    pub grantee: Grantee,
    pub permission: Permission,
}

/// S3's canned ACLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canned {
    Private,
    PublicRead,
    PublicReadWrite,
    AuthenticatedRead,
    AwsExecRead,
    BucketOwnerRead,
    BucketOwnerFullControl,
    LogDeliveryWrite,
}

impl Canned {
    pub fn parse(s: &str) -> Option<Canned> {
        Some(match s {
            "private" => Canned::Private,
            "public-read" => Canned::PublicRead,
            "public-read-write" => Canned::PublicReadWrite,
            "authenticated-read" => Canned::AuthenticatedRead,
            "aws-exec-read" => Canned::AwsExecRead,
            "bucket-owner-read" => Canned::BucketOwnerRead,
            "bucket-owner-full-control" => Canned::BucketOwnerFullControl,
            "log-delivery-write" => Canned::LogDeliveryWrite,
            _ => return None,
        })
    }

    /// The grants besides the owner's FULL_CONTROL. `bucket_owner` matters to the
    /// `bucket-owner-*` ACLs of an object written by another tenant.
    pub fn grants(self, owner: &str, bucket_owner: &str) -> Vec<Grant> {
        let g = |grantee, permission| Grant {
            grantee,
            permission,
        };
        let to_bucket_owner = |p| {
            if owner == bucket_owner {
                Vec::new()
            } else {
                vec![g(Grantee::Tenant(bucket_owner.to_owned()), p)]
            }
        };
        match self {
            Canned::Private | Canned::AwsExecRead => Vec::new(),
            Canned::PublicRead => vec![g(Grantee::AllUsers, Permission::Read)],
            Canned::PublicReadWrite => vec![
                g(Grantee::AllUsers, Permission::Read),
                g(Grantee::AllUsers, Permission::Write),
            ],
            Canned::AuthenticatedRead => vec![g(Grantee::AuthenticatedUsers, Permission::Read)],
            Canned::BucketOwnerRead => to_bucket_owner(Permission::Read),
            Canned::BucketOwnerFullControl => to_bucket_owner(Permission::FullControl),
            Canned::LogDeliveryWrite => vec![
                g(Grantee::LogDelivery, Permission::Write),
                g(Grantee::LogDelivery, Permission::ReadAcp),
            ],
        }
    }
}

/// Who asks, as ACLs see callers: `None` is anonymous, else the caller's tenant.
pub fn allows(
    grants: &[Grant],
    caller: Option<&str>,
    needed: Permission,
    ignore_public: bool,
) -> bool {
    grants.iter().any(|g| {
        let reaches = match &g.grantee {
            Grantee::AllUsers => !ignore_public,
            Grantee::AuthenticatedUsers => !ignore_public && caller.is_some(),
            Grantee::Tenant(t) => caller == Some(t.as_str()),
            Grantee::LogDelivery => false,
        };
        reaches && g.permission.covers(needed)
    })
}

/// Whether any grant reaches callers outside a tenant (what `BlockPublicAcls` refuses).
pub fn is_public(grants: &[Grant]) -> bool {
    grants.iter().any(|g| g.grantee.is_public())
}

/// Sort and drop duplicates, so that equal ACLs are stored alike.
pub fn normalise(mut grants: Vec<Grant>) -> Vec<Grant> {
    grants.sort();
    grants.dedup();
    grants
}

/// S3 object ownership (`PutBucketOwnershipControls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ownership {
    /// ACLs are disabled: the bucket owner owns every object; only ACLs that grant nothing
    /// beyond that are accepted.
    BucketOwnerEnforced,
    /// Objects written with `bucket-owner-full-control` belong to the bucket owner.
    BucketOwnerPreferred,
    /// The writer owns what it writes (S3's behaviour before ownership controls).
    ObjectWriter,
}

impl Ownership {
    pub fn as_str(self) -> &'static str {
        match self {
            Ownership::BucketOwnerEnforced => "BucketOwnerEnforced",
            Ownership::BucketOwnerPreferred => "BucketOwnerPreferred",
            Ownership::ObjectWriter => "ObjectWriter",
        }
    }

    pub fn parse(s: &str) -> Option<Ownership> {
        [
            Ownership::BucketOwnerEnforced,
            Ownership::BucketOwnerPreferred,
            Ownership::ObjectWriter,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef";
    const U: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn grants_reach_their_grantees() {
        let g = |grantee, permission| Grant {
            grantee,
            permission,
        };
        let acl = vec![
            g(Grantee::AllUsers, Permission::Read),
            g(Grantee::AuthenticatedUsers, Permission::ReadAcp),
            g(Grantee::Tenant(U.into()), Permission::FullControl),
        ];
        assert!(allows(&acl, None, Permission::Read, false));
        assert!(!allows(&acl, None, Permission::Read, true));
        assert!(!allows(&acl, None, Permission::ReadAcp, false));
        assert!(allows(&acl, Some(T), Permission::ReadAcp, false));
        assert!(!allows(&acl, Some(T), Permission::Write, false));
        assert!(allows(&acl, Some(U), Permission::Write, false));
        assert!(allows(&acl, Some(U), Permission::WriteAcp, true));
        assert!(is_public(&acl));
        assert!(!is_public(&acl[2..]));
    }

    #[test]
    fn canned_acls_expand_as_s3_does() {
        assert!(Canned::Private.grants(T, T).is_empty());
        assert_eq!(Canned::PublicReadWrite.grants(T, T).len(), 2);
        assert!(Canned::BucketOwnerFullControl.grants(T, T).is_empty());
        assert_eq!(
            Canned::BucketOwnerFullControl.grants(U, T),
            vec![Grant {
                grantee: Grantee::Tenant(T.into()),
                permission: Permission::FullControl
            }]
        );
        assert_eq!(
            Canned::parse("authenticated-read"),
            Some(Canned::AuthenticatedRead)
        );
        assert_eq!(Canned::parse("public"), None);
        for p in ["READ", "WRITE", "READ_ACP", "WRITE_ACP", "FULL_CONTROL"] {
            assert_eq!(Permission::parse(p).map(Permission::as_str), Some(p));
        }
    }
}
