//! S3 bucket policies: the AWS policy language, parsed, checked and evaluated. Pure: no I/O and
//! no clock (the request's time arrives in its [`Context`]), so every rule is tested here.
//!
//! A policy is the JSON document a `PutBucketPolicy` sends. [`BucketPolicy::parse`] checks it as
//! S3 does (the reason goes back in a `MalformedPolicy` error) and [`BucketPolicy::evaluate`]
//! answers, for one request, whether a statement denies it, one allows it, or none applies.
//! How that answer combines with the tenant's roles and IAM policies and with the bucket's ACL
//! is the gateway's (`api::auth::judge`); whether a policy grants access to everyone is
//! [`BucketPolicy::is_public`], which `GetBucketPolicyStatus` reports and the public access
//! block enforces.
//!
//! Who a caller is, in a policy's `Principal`:
//! - `"*"` (or `{"AWS": "*"}`): anyone, signed or not;
//! - `{"AWS": "arn:aws:iam::TENANT:root"}` or `{"AWS": "TENANT"}`: every user of that tenant
//!   (TENANT is the tenant's 32-hex-digit id, which S3 also reports as the canonical id of the
//!   owner of its buckets: `{"CanonicalUser": "TENANT"}` says the same);
//! - `{"AWS": "arn:aws:iam::TENANT:user/USER"}`: that user (USER is the user's id);
//! - `{"AWS": "arn:aws:iam::TENANT:key/ACCESSKEY"}`: requests signed with that access key.
//!
//! Conditions follow IAM's rules: operators are ANDed, keys inside an operator are ANDed, the
//! values listed for a key are ORed (NORed for the negated operators); a key missing from the
//! request makes a positive operator false and a negated one true, `...IfExists` true, and
//! `Null` tests presence. `ForAnyValue:` and `ForAllValues:` qualify multi-valued keys.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::policy::glob;

/// The largest policy S3 accepts, in bytes.
pub const POLICY_SIZE_MAX: usize = 20 * 1024;

/// What a policy says about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A `Deny` statement applies: refused, whatever else allows it.
    Deny,
    /// An `Allow` statement applies and no `Deny` does.
    Allow,
    /// No statement applies.
    Silent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// A principal list: `Any` is `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principals {
    Any,
    /// Account ids, user, key and root ARNs, canonical ids; service principals (kept, never
    /// matching a Cairn caller).
    Listed(Vec<String>),
}

/// A list of patterns with its sense: `Action` (`not == false`) or `NotAction`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patterns {
    pub not: bool,
    pub patterns: Vec<String>,
}

/// How a condition compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    NumericEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    DateEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Bool,
    BinaryEquals,
    IpAddress,
    ArnLike,
    Null,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetQualifier {
    ForAnyValue,
    ForAllValues,
}

/// One operator applied to one key: `StringNotLikeIfExists: {"s3:prefix": ["a/*", "b/*"]}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub compare: Compare,
    /// The `Not` operators (`StringNotEquals`, `NotIpAddress`...).
    pub negated: bool,
    pub if_exists: bool,
    pub qualifier: Option<SetQualifier>,
    /// The key as written (`s3:ExistingObjectTag/Project`); looked up by [`Context::get`].
    pub key: String,
    pub values: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PolicyStatement {
    pub sid: Option<String>,
    pub effect: Effect,
    /// `Principal` (`not == false`) or `NotPrincipal`.
    pub principal_not: bool,
    pub principals: Principals,
    pub actions: Patterns,
    pub resources: Patterns,
    pub conditions: Vec<Condition>,
}

/// A parsed, checked bucket policy.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketPolicy {
    pub statements: Vec<PolicyStatement>,
}

/// Who is asking, as policies name callers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// `None`: an anonymous (unsigned) request.
    pub tenant: Option<String>,
    pub user: Option<String>,
    pub access_key: Option<String>,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller::default()
    }

    /// The names that match this caller in a `Principal` list.
    fn names(&self) -> Vec<String> {
        let Some(t) = &self.tenant else {
            return Vec::new();
        };
        let mut v = vec![
            t.clone(),
            format!("arn:aws:iam::{t}:root"),
            format!("canonical:{t}"),
        ];
        if let Some(u) = &self.user {
            v.push(format!("arn:aws:iam::{t}:user/{u}"));
        }
        if let Some(k) = &self.access_key {
            v.push(format!("arn:aws:iam::{t}:key/{k}"));
        }
        v
    }
}

/// The request's condition keys (`aws:SourceIp`, `s3:prefix`...), each with its values. Keys
/// are compared without case, except the tag name after `/` in the tag keys.
#[derive(Clone, Debug, Default)]
pub struct Context {
    keys: BTreeMap<String, Vec<String>>,
}

fn context_key(key: &str) -> String {
    match key.split_once('/') {
        Some((prefix, rest)) => format!("{}/{rest}", prefix.to_ascii_lowercase()),
        None => key.to_ascii_lowercase(),
    }
}

impl Context {
    pub fn new() -> Context {
        Context::default()
    }

    /// Set a key to one value.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.keys.insert(context_key(key), vec![value.into()]);
    }

    /// Set a multi-valued key (`s3:RequestObjectTagKeys`).
    pub fn set_many(&mut self, key: &str, values: Vec<String>) {
        self.keys.insert(context_key(key), values);
    }

    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.keys.get(&context_key(key)).map(Vec::as_slice)
    }
}

/// One request to evaluate.
#[derive(Clone, Debug)]
pub struct PolicyRequest<'a> {
    /// `s3:GetObject`.
    pub action: &'a str,
    /// `arn:aws:s3:::bucket` or `arn:aws:s3:::bucket/key`.
    pub resource: &'a str,
    pub caller: &'a Caller,
    pub context: &'a Context,
}

const S3_ARN: &str = "arn:aws:s3:::";

/// S3's object-level actions (their resource is `bucket/key`).
const OBJECT_ACTIONS: &[&str] = &[
    "AbortMultipartUpload",
    "BypassGovernanceRetention",
    "DeleteObject",
    "DeleteObjectTagging",
    "DeleteObjectVersion",
    "DeleteObjectVersionTagging",
    "GetObject",
    "GetObjectAcl",
    "GetObjectAttributes",
    "GetObjectLegalHold",
    "GetObjectRetention",
    "GetObjectTagging",
    "GetObjectTorrent",
    "GetObjectVersion",
    "GetObjectVersionAcl",
    "GetObjectVersionAttributes",
    "GetObjectVersionForReplication",
    "GetObjectVersionTagging",
    "GetObjectVersionTorrent",
    "InitiateReplication",
    "ListMultipartUploadParts",
    "ObjectOwnerOverrideToBucketOwner",
    "PutObject",
    "PutObjectAcl",
    "PutObjectLegalHold",
    "PutObjectRetention",
    "PutObjectTagging",
    "PutObjectVersionAcl",
    "PutObjectVersionTagging",
    "ReplicateDelete",
    "ReplicateObject",
    "ReplicateTags",
    "RestoreObject",
];

/// S3's bucket-level actions (their resource is `bucket`).
const BUCKET_ACTIONS: &[&str] = &[
    "CreateBucket",
    "DeleteBucket",
    "DeleteBucketOwnershipControls",
    "DeleteBucketPolicy",
    "DeleteBucketWebsite",
    "GetAccelerateConfiguration",
    "GetAnalyticsConfiguration",
    "GetBucketAcl",
    "GetBucketCORS",
    "GetBucketLocation",
    "GetBucketLogging",
    "GetBucketNotification",
    "GetBucketObjectLockConfiguration",
    "GetBucketOwnershipControls",
    "GetBucketPolicy",
    "GetBucketPolicyStatus",
    "GetBucketPublicAccessBlock",
    "GetBucketRequestPayment",
    "GetBucketTagging",
    "GetBucketVersioning",
    "GetBucketWebsite",
    "GetEncryptionConfiguration",
    "GetIntelligentTieringConfiguration",
    "GetInventoryConfiguration",
    "GetLifecycleConfiguration",
    "GetMetricsConfiguration",
    "GetReplicationConfiguration",
    "ListBucket",
    "ListBucketMultipartUploads",
    "ListBucketVersions",
    "PutAccelerateConfiguration",
    "PutAnalyticsConfiguration",
    "PutBucketAcl",
    "PutBucketCORS",
    "PutBucketLogging",
    "PutBucketNotification",
    "PutBucketObjectLockConfiguration",
    "PutBucketOwnershipControls",
    "PutBucketPolicy",
    "PutBucketPublicAccessBlock",
    "PutBucketRequestPayment",
    "PutBucketTagging",
    "PutBucketVersioning",
    "PutBucketWebsite",
    "PutEncryptionConfiguration",
    "PutIntelligentTieringConfiguration",
    "PutInventoryConfiguration",
    "PutLifecycleConfiguration",
    "PutMetricsConfiguration",
    "PutReplicationConfiguration",
];

/// S3's account-level actions: valid in the language, but no bucket resource fits them.
const ACCOUNT_ACTIONS: &[&str] = &["ListAllMyBuckets", "GetAccountPublicAccessBlock"];

/// The S3 condition keys a policy may name (tag keys take a tag name after `/`).
const S3_KEYS: &[&str] = &[
    "s3:authtype",
    "s3:delimiter",
    "s3:locationconstraint",
    "s3:max-keys",
    "s3:object-lock-legal-hold",
    "s3:object-lock-mode",
    "s3:object-lock-remaining-retention-days",
    "s3:object-lock-retain-until-date",
    "s3:prefix",
    "s3:requestobjecttagkeys",
    "s3:resourceaccount",
    "s3:signatureage",
    "s3:signatureversion",
    "s3:tlsversion",
    "s3:versionid",
    "s3:x-amz-acl",
    "s3:x-amz-content-sha256",
    "s3:x-amz-copy-source",
    "s3:x-amz-grant-full-control",
    "s3:x-amz-grant-read",
    "s3:x-amz-grant-read-acp",
    "s3:x-amz-grant-write",
    "s3:x-amz-grant-write-acp",
    "s3:x-amz-metadata-directive",
    "s3:x-amz-server-side-encryption",
    "s3:x-amz-server-side-encryption-aws-kms-key-id",
    "s3:x-amz-server-side-encryption-customer-algorithm",
    "s3:x-amz-storage-class",
    "s3:x-amz-website-redirect-location",
    "s3:objectcreationoperation",
    "s3:if-match",
    "s3:if-none-match",
];
const S3_TAG_KEYS: &[&str] = &["s3:existingobjecttag/", "s3:requestobjecttag/"];

/// Keys that, compared to fixed values, make an `Allow` to everyone not public (AWS's list).
const FIXING_KEYS: &[&str] = &[
    "aws:sourceip",
    "aws:sourcearn",
    "aws:sourcevpc",
    "aws:sourcevpce",
    "aws:sourceaccount",
    "aws:sourceowner",
    "aws:principalaccount",
    "aws:principalarn",
    "aws:principalorgid",
    "aws:userid",
    "aws:username",
    "s3:dataaccesspointarn",
    "s3:dataaccesspointaccount",
];

fn malformed(message: impl Into<String>) -> String {
    message.into()
}

/// One string or a list of strings (`"s3:GetObject"` or `["s3:GetObject", ...]`).
fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(malformed(format!("{what} entries must be strings"))),
            })
            .collect(),
        Value::Array(_) => Err(malformed(format!("{what} must not be empty"))),
        _ => Err(malformed(format!(
            "{what} must be a string or a list of strings"
        ))),
    }
}

/// Condition values: strings, numbers or booleans, one or a list.
fn condition_values(v: &Value) -> Result<Vec<String>, String> {
    let one = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(malformed(
            "condition values must be strings, numbers or booleans",
        )),
    };
    match v {
        Value::Array(items) if !items.is_empty() => items.iter().map(one).collect(),
        Value::Array(_) => Err(malformed("a condition key must have at least one value")),
        other => Ok(vec![one(other)?]),
    }
}

/// A policy element (element names are case-sensitive, as in AWS).
fn field<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name)
}

fn parse_compare(op: &str) -> Option<(Compare, bool)> {
    use Compare::*;
    Some(match op {
        "StringEquals" => (StringEquals, false),
        "StringNotEquals" => (StringEquals, true),
        "StringEqualsIgnoreCase" => (StringEqualsIgnoreCase, false),
        "StringNotEqualsIgnoreCase" => (StringEqualsIgnoreCase, true),
        "StringLike" => (StringLike, false),
        "StringNotLike" => (StringLike, true),
        "NumericEquals" => (NumericEquals, false),
        "NumericNotEquals" => (NumericEquals, true),
        "NumericLessThan" => (NumericLessThan, false),
        "NumericLessThanEquals" => (NumericLessThanEquals, false),
        "NumericGreaterThan" => (NumericGreaterThan, false),
        "NumericGreaterThanEquals" => (NumericGreaterThanEquals, false),
        "DateEquals" => (DateEquals, false),
        "DateNotEquals" => (DateEquals, true),
        "DateLessThan" => (DateLessThan, false),
        "DateLessThanEquals" => (DateLessThanEquals, false),
        "DateGreaterThan" => (DateGreaterThan, false),
        "DateGreaterThanEquals" => (DateGreaterThanEquals, false),
        "Bool" => (Bool, false),
        "BinaryEquals" => (BinaryEquals, false),
        "IpAddress" => (IpAddress, false),
        "NotIpAddress" => (IpAddress, true),
        "ArnEquals" | "ArnLike" => (ArnLike, false),
        "ArnNotEquals" | "ArnNotLike" => (ArnLike, true),
        "Null" => (Null, false),
        _ => return None,
    })
}

fn valid_condition_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if let Some(rest) = k.strip_prefix("aws:") {
        return !rest.is_empty();
    }
    S3_KEYS.contains(&k.as_str())
        || S3_TAG_KEYS
            .iter()
            .any(|p| k.starts_with(p) && k.len() > p.len())
}

/// Seconds since the epoch of a policy or context date: RFC 3339, a plain date
/// (`2026-01-31`), or a number of seconds.
pub fn parse_date(s: &str) -> Option<f64> {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    if let Ok(n) = s.parse::<f64>() {
        return Some(n);
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t.unix_timestamp_nanos() as f64 / 1e9);
    }
    let d = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
    Some(d.midnight().assume_utc().unix_timestamp() as f64)
}

fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Some(n);
    }
    s.parse::<IpAddr>().ok().map(ipnet::IpNet::from)
}

fn check_value(compare: Compare, v: &str) -> Result<(), String> {
    let ok = match compare {
        Compare::NumericEquals
        | Compare::NumericLessThan
        | Compare::NumericLessThanEquals
        | Compare::NumericGreaterThan
        | Compare::NumericGreaterThanEquals => v.parse::<f64>().is_ok(),
        Compare::DateEquals
        | Compare::DateLessThan
        | Compare::DateLessThanEquals
        | Compare::DateGreaterThan
        | Compare::DateGreaterThanEquals => parse_date(v).is_some(),
        Compare::Bool | Compare::Null => {
            v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false")
        }
        Compare::IpAddress => parse_net(v).is_some(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(malformed(format!(
            "Invalid Condition value {v:?} for {compare:?}"
        )))
    }
}

fn parse_conditions(v: &Value) -> Result<Vec<Condition>, String> {
    let Value::Object(ops) = v else {
        return Err(malformed("Condition must be an object"));
    };
    let mut out = Vec::new();
    for (op, keys) in ops {
        let (qualifier, rest) = if let Some(r) = op.strip_prefix("ForAnyValue:") {
            (Some(SetQualifier::ForAnyValue), r)
        } else if let Some(r) = op.strip_prefix("ForAllValues:") {
            (Some(SetQualifier::ForAllValues), r)
        } else {
            (None, op.as_str())
        };
        let (base, if_exists) = match rest.strip_suffix("IfExists") {
            Some(b) if b != "Null" => (b, true),
            _ => (rest, false),
        };
        let (compare, negated) = parse_compare(base)
            .ok_or_else(|| malformed(format!("Invalid Condition type : {op}")))?;
        let Value::Object(keys) = keys else {
            return Err(malformed(format!(
                "Condition {op} must map condition keys to values"
            )));
        };
        if keys.is_empty() {
            return Err(malformed(format!("Condition {op} names no condition key")));
        }
        for (key, values) in keys {
            if !valid_condition_key(key) {
                return Err(malformed(format!(
                    "Policy has an invalid condition key: {key}"
                )));
            }
            let values = condition_values(values)?;
            for v in &values {
                check_value(compare, v)?;
            }
            out.push(Condition {
                compare,
                negated,
                if_exists,
                qualifier,
                key: key.clone(),
                values,
            });
        }
    }
    Ok(out)
}

fn valid_principal(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    let account =
        |a: &str| !a.is_empty() && a.len() <= 64 && a.bytes().all(|b| b.is_ascii_hexdigit());
    if account(p) {
        return true;
    }
    let Some(rest) = p.strip_prefix("arn:aws:iam::") else {
        return false;
    };
    let Some((acct, what)) = rest.split_once(':') else {
        return false;
    };
    account(acct)
        && (what == "root"
            || ["user/", "key/", "role/"].iter().any(|k| {
                what.strip_prefix(k)
                    .is_some_and(|n| !n.is_empty() && !n.contains('*'))
            }))
}

fn parse_principal(v: &Value) -> Result<Principals, String> {
    let invalid = || malformed("Invalid principal in policy");
    match v {
        Value::String(s) if s == "*" => Ok(Principals::Any),
        Value::Object(m) if !m.is_empty() => {
            let mut listed = Vec::new();
            for (kind, ids) in m {
                let ids = strings(ids, "Principal").map_err(|_| invalid())?;
                match kind.as_str() {
                    "AWS" => {
                        for id in ids {
                            if id == "*" {
                                return Ok(Principals::Any);
                            }
                            if !valid_principal(&id) {
                                return Err(invalid());
                            }
                            listed.push(id);
                        }
                    }
                    "CanonicalUser" => {
                        for id in ids {
                            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                                return Err(invalid());
                            }
                            listed.push(format!("canonical:{}", id.to_ascii_lowercase()));
                        }
                    }
                    "Service" | "Federated" => {
                        listed.extend(ids.into_iter().map(|i| format!("{kind}:{i}")));
                    }
                    _ => return Err(invalid()),
                }
            }
            Ok(Principals::Listed(listed))
        }
        _ => Err(invalid()),
    }
}

/// Every known S3 action (without `s3:`) a pattern covers.
fn expand(pattern: &str) -> Vec<(&'static str, Kind)> {
    let p = pattern.to_ascii_lowercase();
    let Some(name) = p.strip_prefix("s3:").or((p == "*").then_some("*")) else {
        return Vec::new();
    };
    let all = OBJECT_ACTIONS
        .iter()
        .map(|a| (*a, Kind::Object))
        .chain(BUCKET_ACTIONS.iter().map(|a| (*a, Kind::Bucket)))
        .chain(ACCOUNT_ACTIONS.iter().map(|a| (*a, Kind::Account)));
    all.filter(|(a, _)| glob(name, &a.to_ascii_lowercase()))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Object,
    Bucket,
    Account,
}

/// Whether some string that starts with `prefix` matches the glob `pattern`.
fn could_match_prefix(pattern: &str, prefix: &str) -> bool {
    // Positions in the pattern reachable after reading the prefix so far (a set, as an NFA).
    let p: Vec<char> = pattern.chars().collect();
    let close = |set: &mut Vec<bool>| {
        for i in 0..p.len() {
            if set[i] && p[i] == '*' {
                set[i + 1] = true;
            }
        }
    };
    let mut now = vec![false; p.len() + 1];
    now[0] = true;
    close(&mut now);
    for c in prefix.chars() {
        let mut next = vec![false; p.len() + 1];
        for i in 0..p.len() {
            if !now[i] {
                continue;
            }
            match p[i] {
                '*' => next[i] = true,
                '?' => next[i + 1] = true,
                x if x == c => next[i + 1] = true,
                _ => {}
            }
        }
        close(&mut next);
        if !next.iter().any(|b| *b) {
            return false;
        }
        now = next;
    }
    now.iter().any(|b| *b)
}

/// The kinds of resource a `Resource` pattern of a policy on `bucket` can name.
fn resource_kinds(pattern: &str, bucket: &str) -> (bool, bool) {
    let Some(p) = pattern.strip_prefix(S3_ARN) else {
        return (false, false);
    };
    (
        glob(p, bucket),
        could_match_prefix(p, &format!("{bucket}/")),
    )
}

impl BucketPolicy {
    /// Parse and check a policy for `bucket`. The error is the reason S3 gives in
    /// `MalformedPolicy`.
    pub fn parse(text: &str, bucket: &str) -> Result<BucketPolicy, String> {
        if text.len() > POLICY_SIZE_MAX {
            return Err(malformed(format!(
                "Policies are at most {POLICY_SIZE_MAX} bytes"
            )));
        }
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| malformed(format!("This policy contains invalid Json: {e}")))?;
        let Value::Object(doc) = doc else {
            return Err(malformed(
                "Policies must be valid JSON and the first byte must be '{'",
            ));
        };
        for k in doc.keys() {
            if !matches!(k.as_str(), "Version" | "Id" | "Statement") {
                return Err(malformed(format!("Unknown field {k}")));
            }
        }
        if let Some(v) = field(&doc, "Version") {
            match v {
                Value::String(s) if s == "2012-10-17" || s == "2008-10-17" => {}
                _ => {
                    return Err(malformed(
                        "Invalid policy Version: use 2012-10-17 (or 2008-10-17)",
                    ));
                }
            }
        }
        if let Some(id) = field(&doc, "Id")
            && !id.is_string()
        {
            return Err(malformed("Id must be a string"));
        }
        let statements = match field(&doc, "Statement") {
            None => return Err(malformed("Missing required field Statement")),
            Some(Value::Array(s)) if s.is_empty() => {
                return Err(malformed("Statement must not be empty"));
            }
            Some(Value::Array(s)) => s.iter().collect::<Vec<_>>(),
            Some(s @ Value::Object(_)) => vec![s],
            Some(_) => return Err(malformed("Statement must be an object or a list")),
        };
        let mut out = Vec::with_capacity(statements.len());
        let mut sids = Vec::new();
        for s in statements {
            let st = parse_statement(s, bucket)?;
            if let Some(sid) = &st.sid {
                if sids.contains(sid) {
                    return Err(malformed(format!(
                        "Statement IDs (SID) in a single policy must be unique: {sid}"
                    )));
                }
                sids.push(sid.clone());
            }
            out.push(st);
        }
        Ok(BucketPolicy { statements: out })
    }

    /// What the policy says about `req`: Deny wins over Allow.
    pub fn evaluate(&self, req: &PolicyRequest<'_>) -> Verdict {
        let names = req.caller.names();
        let mut verdict = Verdict::Silent;
        for s in &self.statements {
            if s.applies(req, &names) {
                match s.effect {
                    Effect::Deny => return Verdict::Deny,
                    Effect::Allow => verdict = Verdict::Allow,
                }
            }
        }
        verdict
    }

    /// Whether the policy grants access to everyone (S3's "public" rule): some `Allow` names
    /// `*` (or uses `NotPrincipal`) without a condition that fixes the caller's address,
    /// account, organisation or source to given values.
    pub fn is_public(&self) -> bool {
        self.statements.iter().any(|s| {
            s.effect == Effect::Allow
                && (s.principal_not || s.principals == Principals::Any)
                && !s.conditions.iter().any(Condition::fixes_caller)
        })
    }

    /// Whether a condition reads the object's existing tags (the gateway fetches them only
    /// then).
    pub fn reads_existing_tags(&self) -> bool {
        self.statements.iter().any(|s| {
            s.conditions.iter().any(|c| {
                c.key
                    .to_ascii_lowercase()
                    .starts_with("s3:existingobjecttag/")
            })
        })
    }
}

fn parse_statement(s: &Value, bucket: &str) -> Result<PolicyStatement, String> {
    let Value::Object(s) = s else {
        return Err(malformed("Statement entries must be objects"));
    };
    for k in s.keys() {
        if !matches!(
            k.as_str(),
            "Sid"
                | "Effect"
                | "Principal"
                | "NotPrincipal"
                | "Action"
                | "NotAction"
                | "Resource"
                | "NotResource"
                | "Condition"
        ) {
            return Err(malformed(format!("Unknown field {k}")));
        }
    }
    let sid = match field(s, "Sid") {
        None => None,
        Some(Value::String(x)) => Some(x.clone()),
        Some(_) => return Err(malformed("Sid must be a string")),
    };
    let effect = match field(s, "Effect") {
        None => return Err(malformed("Missing required field Effect")),
        Some(Value::String(e)) if e == "Allow" => Effect::Allow,
        Some(Value::String(e)) if e == "Deny" => Effect::Deny,
        Some(e) => return Err(malformed(format!("Invalid effect: {e}"))),
    };
    let (principal_not, principals) = match (field(s, "Principal"), field(s, "NotPrincipal")) {
        (Some(_), Some(_)) => {
            return Err(malformed(
                "A statement cannot have both Principal and NotPrincipal",
            ));
        }
        (Some(p), None) => (false, parse_principal(p)?),
        (None, Some(p)) => (true, parse_principal(p)?),
        (None, None) => return Err(malformed("Missing required field Principal")),
    };
    let actions = match (field(s, "Action"), field(s, "NotAction")) {
        (Some(_), Some(_)) => {
            return Err(malformed(
                "A statement cannot have both Action and NotAction",
            ));
        }
        (Some(a), None) => Patterns {
            not: false,
            patterns: strings(a, "Action")?,
        },
        (None, Some(a)) => Patterns {
            not: true,
            patterns: strings(a, "NotAction")?,
        },
        (None, None) => return Err(malformed("Missing required field Action")),
    };
    for a in &actions.patterns {
        if expand(a).is_empty() {
            return Err(malformed("Policy has invalid action"));
        }
    }
    let resources = match (field(s, "Resource"), field(s, "NotResource")) {
        (Some(_), Some(_)) => {
            return Err(malformed(
                "A statement cannot have both Resource and NotResource",
            ));
        }
        (Some(r), None) => Patterns {
            not: false,
            patterns: strings(r, "Resource")?,
        },
        (None, Some(r)) => Patterns {
            not: true,
            patterns: strings(r, "NotResource")?,
        },
        (None, None) => return Err(malformed("Missing required field Resource")),
    };
    let mut kinds = (false, false);
    for r in &resources.patterns {
        let (b, o) = resource_kinds(r, bucket);
        if !b && !o {
            return Err(malformed("Policy has invalid resource"));
        }
        kinds = (kinds.0 || b, kinds.1 || o);
    }
    // Every action must fit some resource the statement names (checked when both lists are
    // positive, as S3 does).
    if !actions.not && !resources.not {
        for a in &actions.patterns {
            let fits = expand(a).iter().any(|(_, k)| match k {
                Kind::Bucket => kinds.0,
                Kind::Object => kinds.1,
                Kind::Account => false,
            });
            if !fits {
                return Err(malformed(
                    "Action does not apply to any resource(s) in statement",
                ));
            }
        }
    }
    let conditions = match field(s, "Condition") {
        None => Vec::new(),
        Some(c) => parse_conditions(c)?,
    };
    Ok(PolicyStatement {
        sid,
        effect,
        principal_not,
        principals,
        actions,
        resources,
        conditions,
    })
}

impl PolicyStatement {
    fn applies(&self, req: &PolicyRequest<'_>, names: &[String]) -> bool {
        let named = match &self.principals {
            Principals::Any => true,
            Principals::Listed(l) => l.iter().any(|p| names.contains(p)),
        };
        if named == self.principal_not {
            return false;
        }
        let action = req.action.to_ascii_lowercase();
        let acts = self.actions.patterns.iter().any(|p| {
            let p = p.to_ascii_lowercase();
            p == "*" || glob(&p, &action)
        });
        if acts == self.actions.not {
            return false;
        }
        let on = self.resources.patterns.iter().any(|p| {
            p == "*"
                || p.strip_prefix(S3_ARN).is_some_and(|p| {
                    req.resource
                        .strip_prefix(S3_ARN)
                        .is_some_and(|r| glob(p, r))
                })
        });
        if on == self.resources.not {
            return false;
        }
        self.conditions.iter().all(|c| c.holds(req.context))
    }
}

fn compare_one(compare: Compare, policy: &str, actual: &str) -> bool {
    use Compare::*;
    let num = |f: fn(f64, f64) -> bool| match (actual.parse::<f64>(), policy.parse::<f64>()) {
        (Ok(a), Ok(p)) => f(a, p),
        _ => false,
    };
    let date = |f: fn(f64, f64) -> bool| match (parse_date(actual), parse_date(policy)) {
        (Some(a), Some(p)) => f(a, p),
        _ => false,
    };
    match compare {
        StringEquals => actual == policy,
        StringEqualsIgnoreCase => actual.to_lowercase() == policy.to_lowercase(),
        StringLike | ArnLike => glob(policy, actual),
        NumericEquals => num(|a, p| a == p),
        NumericLessThan => num(|a, p| a < p),
        NumericLessThanEquals => num(|a, p| a <= p),
        NumericGreaterThan => num(|a, p| a > p),
        NumericGreaterThanEquals => num(|a, p| a >= p),
        DateEquals => date(|a, p| a == p),
        DateLessThan => date(|a, p| a < p),
        DateLessThanEquals => date(|a, p| a <= p),
        DateGreaterThan => date(|a, p| a > p),
        DateGreaterThanEquals => date(|a, p| a >= p),
        Bool => actual.eq_ignore_ascii_case(policy),
        BinaryEquals => actual == policy,
        IpAddress => match (parse_net(policy), actual.parse::<IpAddr>()) {
            (Some(net), Ok(ip)) => net.contains(&ip),
            _ => false,
        },
        // Decided in `holds`.
        Null => false,
    }
}

impl Condition {
    /// Whether the condition holds for the request's context.
    pub fn holds(&self, cx: &Context) -> bool {
        let actual = cx.get(&self.key).filter(|v| !v.is_empty());
        if self.compare == Compare::Null {
            let absent = actual.is_none();
            return self
                .values
                .iter()
                .any(|v| v.eq_ignore_ascii_case("true") == absent);
        }
        let Some(actual) = actual else {
            if self.if_exists {
                return true;
            }
            return match self.qualifier {
                Some(SetQualifier::ForAllValues) => true,
                Some(SetQualifier::ForAnyValue) => false,
                None => self.negated,
            };
        };
        // Whether one value of the request matches one of the policy's (before negation).
        let matches = |a: &String| self.values.iter().any(|p| compare_one(self.compare, p, a));
        match self.qualifier {
            Some(SetQualifier::ForAllValues) => actual.iter().all(|a| matches(a) != self.negated),
            Some(SetQualifier::ForAnyValue) => actual.iter().any(|a| matches(a) != self.negated),
            None => actual.iter().any(matches) != self.negated,
        }
    }

    /// Whether this condition pins the caller down to fixed values (see
    /// [`BucketPolicy::is_public`]).
    fn fixes_caller(&self) -> bool {
        let key = self.key.to_ascii_lowercase();
        if self.negated || self.if_exists || !FIXING_KEYS.contains(&key.as_str()) {
            return false;
        }
        match self.compare {
            Compare::StringEquals | Compare::StringEqualsIgnoreCase => true,
            Compare::StringLike | Compare::ArnLike => {
                self.values.iter().all(|v| !v.contains(['*', '?']))
            }
            Compare::IpAddress => self
                .values
                .iter()
                .all(|v| parse_net(v).is_some_and(|n| n.prefix_len() > 0)),
            _ => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
