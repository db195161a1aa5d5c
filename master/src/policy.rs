//! Who may do what inside a tenant: roles, IAM-style policies, and the decision that combines
//! them. Pure: no I/O, no clock, so every rule is unit-tested here.
//!
//! A request names an action (`s3:GetObject`, `storage:read`...), the class of that action
//! (read, write, manage) and a resource (`bucket` or `bucket/key`, `*` for the tenant as a
//! whole). [`decide`] answers in this order:
//! 1. not a member of the resource's tenant: no access (the caller is told the resource does
//!    not exist; bucket visibility may still let anyone read a `public-read` bucket, which the
//!    caller checks);
//! 2. an attached policy's `Deny` statement matches: denied, whatever the role or other
//!    policies say (Deny wins);
//! 3. the role allows the action's class: allowed;
//! 4. an attached policy's `Allow` statement matches: allowed (a policy can grant a viewer one
//!    write, say, but only ever inside the tenant: membership came first);
//! 5. otherwise denied.

use cairn_engine::state::Rejection;
use serde::{Deserialize, Serialize};

cairn_engine::refusals! {
    /// Why a policy is refused.
    pub enum PolicyRefusal {
        /// A name, action or resource pattern outside the rules.
        InvalidPolicy = "invalid_policy",
    }
}

/// A member's role in a tenant, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Everything, including managing owners.
    Owner,
    /// Everything on the tenant's buckets, members (but not owners) and policies.
    Admin,
    /// Read and write objects, create buckets.
    Member,
    /// Read only.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Member, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The byte stored in the membership tables.
    pub fn to_byte(self) -> u8 {
        match self {
            Role::Owner => 0,
            Role::Admin => 1,
            Role::Member => 2,
            Role::Viewer => 3,
        }
    }

    pub fn from_byte(b: u8) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.to_byte() == b)
    }

    /// Whether the role alone allows actions of `class`.
    pub fn allows(self, class: ActionClass) -> bool {
        match class {
            ActionClass::Read => true,
            ActionClass::Write => self <= Role::Member,
            ActionClass::Manage => self <= Role::Admin,
        }
    }

    /// Whether this role may manage members and policies of its tenant.
    pub fn manages(self) -> bool {
        self <= Role::Admin
    }
}

/// What an action does, for the role check and the `storage:read` / `storage:write` actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionClass {
    /// Reads and listings.
    Read,
    /// Object writes and deletes, bucket creation.
    Write,
    /// Bucket deletion and configuration (versioning, lifecycle, CORS, ACL, tags).
    Manage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    Allow,
    Deny,
}

/// One statement of a policy: `effect` for any of `actions` on any of `resources`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub effect: Effect,
    /// `s3:GetObject`, `s3:Get*`, `s3:*`, `storage:read`, `storage:write`, `storage:*` or `*`.
    pub actions: Vec<String>,
    /// `bucket`, `bucket/prefix*`, `*`, optionally written `arn:aws:s3:::bucket/...`; `*` and
    /// `?` are wildcards.
    pub resources: Vec<String>,
}

/// A named set of statements in one tenant, attached to some of its members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub tenant: u128,
    pub name: String,
    pub statements: Vec<Statement>,
    pub created_ms: u64,
}

/// Most statements in one policy.
pub const STATEMENTS_MAX: usize = 100;
/// Most actions, and most resources, in one statement.
pub const PATTERNS_MAX: usize = 100;
/// Longest action or resource pattern, in bytes.
pub const PATTERN_LEN_MAX: usize = 1024;

/// One request to decide on.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The action's full name, e.g. `s3:PutObject`.
    pub action: &'a str,
    pub class: ActionClass,
    /// `bucket`, `bucket/key`, or `*` for actions on the tenant as a whole.
    pub resource: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A `Deny` statement matched.
    ExplicitDeny,
    /// Neither the role nor a policy allows it.
    ImplicitDeny,
    /// The caller is not a member of the resource's tenant.
    NotMember,
}

/// Decide on `req` for a caller with `role` in the resource's tenant (`None`: not a member) and
/// the statements of the policies attached to them there.
pub fn decide<'a>(
    role: Option<Role>,
    statements: impl IntoIterator<Item = &'a Statement> + Clone,
    req: &Request<'_>,
) -> Decision {
    let Some(role) = role else {
        return Decision::NotMember;
    };
    let matching = |effect: Effect| {
        statements
            .clone()
            .into_iter()
            .any(|s| s.effect == effect && statement_matches(s, req))
    };
    if matching(Effect::Deny) {
        return Decision::ExplicitDeny;
    }
    if role.allows(req.class) || matching(Effect::Allow) {
        return Decision::Allow;
    }
    Decision::ImplicitDeny
}

fn statement_matches(s: &Statement, req: &Request<'_>) -> bool {
    s.actions.iter().any(|a| action_matches(a, req))
        && s.resources
            .iter()
            .any(|r| resource_matches(r, req.resource))
}

/// Whether an action pattern covers the request's action.
pub fn action_matches(pattern: &str, req: &Request<'_>) -> bool {
    match pattern {
        "*" | "storage:*" => true,
        "storage:read" => req.class == ActionClass::Read,
        "storage:write" => matches!(req.class, ActionClass::Write | ActionClass::Manage),
        p => glob(&p.to_ascii_lowercase(), &req.action.to_ascii_lowercase()),
    }
}

/// Whether a resource pattern covers `resource` (`bucket` or `bucket/key`).
pub fn resource_matches(pattern: &str, resource: &str) -> bool {
    let p = pattern.strip_prefix("arn:aws:s3:::").unwrap_or(pattern);
    glob(p, resource)
}

/// Wildcard match: `*` any run of characters (also none), `?` exactly one. Linear in time
/// for the common case and O(len(pattern) × len(text)) at worst.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently taken to reach.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn bad(message: impl Into<String>) -> Rejection {
    Rejection::new(PolicyRefusal::InvalidPolicy, message)
}

/// Check a policy's name and statements against the limits and the pattern syntax.
pub fn check_policy(name: &str, statements: &[Statement]) -> Result<(), Rejection> {
    if name.trim().is_empty() || name.chars().count() > 128 {
        return Err(bad("policy names are 1 to 128 characters"));
    }
    if statements.is_empty() || statements.len() > STATEMENTS_MAX {
        return Err(bad(format!(
            "a policy has 1 to {STATEMENTS_MAX} statements"
        )));
    }
    for (i, s) in statements.iter().enumerate() {
        for (what, list) in [("actions", &s.actions), ("resources", &s.resources)] {
            if list.is_empty() || list.len() > PATTERNS_MAX {
                return Err(bad(format!(
                    "statement {i}: {what} has 1 to {PATTERNS_MAX} entries"
                )));
            }
            if let Some(p) = list
                .iter()
                .find(|p| p.is_empty() || p.len() > PATTERN_LEN_MAX || p.contains('\0'))
            {
                return Err(bad(format!(
                    "statement {i}: {what} entry {p:?} is empty, longer than {PATTERN_LEN_MAX} bytes or holds NUL"
                )));
            }
        }
        if let Some(a) = s.actions.iter().find(|a| !valid_action(a)) {
            return Err(bad(format!(
                "statement {i}: action {a:?} is not one of *, storage:read, storage:write, storage:*, or s3:NAME (wildcards allowed)"
            )));
        }
    }
    Ok(())
}

fn valid_action(a: &str) -> bool {
    match a {
        "*" | "storage:*" | "storage:read" | "storage:write" => true,
        _ => a.strip_prefix("s3:").is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'?')
        }),
    }
}

/// The IAM action and class of an S3 operation (s3s's operation name).
pub fn s3_action(op: &str) -> (String, ActionClass) {
    let name = match op {
        "ListObjects" | "ListObjectsV2" | "HeadBucket" => "ListBucket",
        "ListObjectVersions" => "ListBucketVersions",
        "ListMultipartUploads" => "ListBucketMultipartUploads",
        "ListParts" => "ListMultipartUploadParts",
        "ListBuckets" => "ListAllMyBuckets",
        "HeadObject" => "GetObject",
        "DeleteObjects" => "DeleteObject",
        "CopyObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload" => "PutObject",
        "GetBucketLifecycleConfiguration" => "GetLifecycleConfiguration",
        "PutBucketLifecycleConfiguration" | "DeleteBucketLifecycle" => "PutLifecycleConfiguration",
        "GetBucketCors" => "GetBucketCORS",
        "PutBucketCors" | "DeleteBucketCors" => "PutBucketCORS",
        "DeleteBucketTagging" => "PutBucketTagging",
        "GetPublicAccessBlock" => "GetBucketPublicAccessBlock",
        "GetObjectLockConfiguration" => "GetBucketObjectLockConfiguration",
        "DeleteBucketOwnershipControls" => "PutBucketOwnershipControls",
        "GetBucketEncryption" => "GetEncryptionConfiguration",
        "PutBucketEncryption" | "DeleteBucketEncryption" => "PutEncryptionConfiguration",
        "PutObjectLockConfiguration" => "PutBucketObjectLockConfiguration",
        "PutPublicAccessBlock" | "DeletePublicAccessBlock" => "PutBucketPublicAccessBlock",
        other => other,
    };
    let class = if ["Get", "Head", "List"].iter().any(|p| op.starts_with(p)) {
        ActionClass::Read
    } else if op == "DeleteBucket"
        || op.contains("PublicAccessBlock")
        || op == "PutObjectLockConfiguration"
        || op == "BypassGovernanceRetention"
        || (op.contains("Bucket") && op != "CreateBucket" && op != "DeleteObjects")
    {
        ActionClass::Manage
    } else {
        ActionClass::Write
    };
    (format!("s3:{name}"), class)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn st(effect: Effect, actions: &[&str], resources: &[&str]) -> Statement {
        Statement {
            effect,
            actions: actions.iter().map(|s| (*s).to_owned()).collect(),
            resources: resources.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn req<'a>(action: &'a str, class: ActionClass, resource: &'a str) -> Request<'a> {
        Request {
            action,
            class,
            resource,
        }
    }

    #[test]
    fn glob_matches_stars_and_question_marks() {
        assert!(glob("*", ""));
        assert!(glob("*", "anything/at/all"));
        assert!(glob("photos/*", "photos/2024/a.jpg"));
        assert!(!glob("photos/*", "photosX/a.jpg"));
        assert!(glob("photos", "photos"));
        assert!(!glob("photos", "photos/a"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("?at", "cat"));
        assert!(!glob("?at", "at"));
        assert!(glob("ünï/*", "ünï/çødé"));
        assert!(glob("*.jpg", "a/b/c.jpg"));
        assert!(!glob("*.jpg", "a/b/c.jpeg"));
        assert!(glob("**a", "bba"));
    }

    #[test]
    fn roles_allow_by_class() {
        use ActionClass::*;
        for r in Role::ALL {
            assert!(r.allows(Read));
        }
        assert!(!Role::Viewer.allows(Write));
        assert!(Role::Member.allows(Write));
        assert!(!Role::Member.allows(Manage));
        assert!(Role::Admin.allows(Manage));
        assert!(Role::Owner.allows(Manage));
        for r in Role::ALL {
            assert_eq!(Role::from_byte(r.to_byte()), Some(r));
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::from_byte(9), None);
    }

    #[test]
    fn deny_wins_over_role_and_allow() {
        let get = req("s3:GetObject", ActionClass::Read, "photos/a.jpg");
        let none: [Statement; 0] = [];
        assert_eq!(decide(Some(Role::Owner), &none, &get), Decision::Allow);
        let p = [
            st(Effect::Allow, &["s3:*"], &["*"]),
            st(Effect::Deny, &["s3:GetObject"], &["arn:aws:s3:::photos/*"]),
        ];
        assert_eq!(decide(Some(Role::Owner), &p, &get), Decision::ExplicitDeny);
        // Other objects and other actions are untouched by the Deny.
        let other = req("s3:GetObject", ActionClass::Read, "docs/a.txt");
        assert_eq!(decide(Some(Role::Viewer), &p, &other), Decision::Allow);
        let put = req("s3:PutObject", ActionClass::Write, "photos/a.jpg");
        assert_eq!(decide(Some(Role::Member), &p, &put), Decision::Allow);
    }

    #[test]
    fn allow_extends_a_role_inside_the_tenant_only() {
        let put = req("s3:PutObject", ActionClass::Write, "drop/in.txt");
        let none: [Statement; 0] = [];
        assert_eq!(
            decide(Some(Role::Viewer), &none, &put),
            Decision::ImplicitDeny
        );
        let p = [st(Effect::Allow, &["s3:Put*"], &["drop/*"])];
        assert_eq!(decide(Some(Role::Viewer), &p, &put), Decision::Allow);
        let elsewhere = req("s3:PutObject", ActionClass::Write, "other/in.txt");
        assert_eq!(
            decide(Some(Role::Viewer), &p, &elsewhere),
            Decision::ImplicitDeny
        );
        // A policy never reaches past membership.
        let everything = [st(Effect::Allow, &["*"], &["*"])];
        assert_eq!(decide(None, &everything, &put), Decision::NotMember);
    }

    #[test]
    fn storage_actions_follow_the_class() {
        let read = req("s3:ListBucket", ActionClass::Read, "b");
        let write = req("s3:DeleteObject", ActionClass::Write, "b/k");
        let manage = req("s3:PutBucketVersioning", ActionClass::Manage, "b");
        assert!(action_matches("storage:read", &read));
        assert!(!action_matches("storage:read", &write));
        assert!(action_matches("storage:write", &write));
        assert!(action_matches("storage:write", &manage));
        assert!(!action_matches("storage:write", &read));
        assert!(action_matches("storage:*", &manage));
        assert!(action_matches("S3:listbucket", &read));
        let deny_writes = [st(Effect::Deny, &["storage:write"], &["*"])];
        assert_eq!(
            decide(Some(Role::Owner), &deny_writes, &write),
            Decision::ExplicitDeny
        );
        assert_eq!(
            decide(Some(Role::Owner), &deny_writes, &read),
            Decision::Allow
        );
    }

    #[test]
    fn s3_operations_map_to_actions_and_classes() {
        use ActionClass::*;
        for (op, action, class) in [
            ("GetObject", "s3:GetObject", Read),
            ("HeadObject", "s3:GetObject", Read),
            ("ListObjectsV2", "s3:ListBucket", Read),
            ("ListBuckets", "s3:ListAllMyBuckets", Read),
            ("GetBucketVersioning", "s3:GetBucketVersioning", Read),
            ("PutObject", "s3:PutObject", Write),
            ("CopyObject", "s3:PutObject", Write),
            ("DeleteObjects", "s3:DeleteObject", Write),
            ("CreateBucket", "s3:CreateBucket", Write),
            ("AbortMultipartUpload", "s3:AbortMultipartUpload", Write),
            ("DeleteBucket", "s3:DeleteBucket", Manage),
            ("PutBucketVersioning", "s3:PutBucketVersioning", Manage),
            ("DeleteBucketCors", "s3:PutBucketCORS", Manage),
            ("PutBucketAcl", "s3:PutBucketAcl", Manage),
            ("PutObjectTagging", "s3:PutObjectTagging", Write),
            ("PutBucketPolicy", "s3:PutBucketPolicy", Manage),
            ("DeleteBucketPolicy", "s3:DeleteBucketPolicy", Manage),
            ("GetBucketPolicyStatus", "s3:GetBucketPolicyStatus", Read),
            (
                "GetPublicAccessBlock",
                "s3:GetBucketPublicAccessBlock",
                Read,
            ),
            (
                "PutPublicAccessBlock",
                "s3:PutBucketPublicAccessBlock",
                Manage,
            ),
            (
                "DeletePublicAccessBlock",
                "s3:PutBucketPublicAccessBlock",
                Manage,
            ),
        ] {
            assert_eq!(s3_action(op), (action.to_owned(), class), "{op}");
        }
    }

    #[test]
    fn policies_are_checked() {
        let ok = [st(Effect::Allow, &["s3:Get*"], &["b/*"])];
        assert!(check_policy("readers", &ok).is_ok());
        assert!(check_policy("", &ok).is_err());
        assert!(check_policy("x", &[]).is_err());
        for bad in [
            st(Effect::Allow, &[], &["*"]),
            st(Effect::Allow, &["*"], &[]),
            st(Effect::Allow, &["ec2:RunInstances"], &["*"]),
            st(Effect::Allow, &["s3:"], &["*"]),
            st(Effect::Allow, &["s3:Get Object"], &["*"]),
            st(Effect::Allow, &["*"], &["a\0b"]),
        ] {
            let e = check_policy("p", std::slice::from_ref(&bad)).unwrap_err();
            assert_eq!(e.code, "invalid_policy");
        }
        let long = "x".repeat(PATTERN_LEN_MAX + 1);
        assert!(check_policy("p", &[st(Effect::Allow, &["*"], &[&long])]).is_err());
    }
}
