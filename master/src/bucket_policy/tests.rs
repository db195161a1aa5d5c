use proptest::prelude::*;

use super::*;

const T: &str = "0123456789abcdef0123456789abcdef";
const OTHER: &str = "fedcba9876543210fedcba9876543210";

fn member(user: &str, key: &str) -> Caller {
    Caller {
        tenant: Some(T.into()),
        user: Some(user.into()),
        access_key: Some(key.into()),
    }
}

fn outsider() -> Caller {
    Caller {
        tenant: Some(OTHER.into()),
        user: Some("u9".into()),
        access_key: Some("KEYOTHER".into()),
    }
}

fn policy(statements: &str) -> BucketPolicy {
    let text = format!(r#"{{"Version":"2012-10-17","Statement":[{statements}]}}"#);
    BucketPolicy::parse(&text, "photos").unwrap()
}

fn ask(p: &BucketPolicy, action: &str, resource: &str, caller: &Caller, cx: &Context) -> Verdict {
    p.evaluate(&PolicyRequest {
        action,
        resource,
        caller,
        context: cx,
    })
}

fn cx(pairs: &[(&str, &str)]) -> Context {
    let mut c = Context::new();
    for (k, v) in pairs {
        c.set(k, *v);
    }
    c
}

const OBJ: &str = "arn:aws:s3:::photos/2026/a.jpg";
const BUCKET: &str = "arn:aws:s3:::photos";

/// (statements, action, resource, caller, context, expected).
#[test]
fn decisions_table() {
    let anon = Caller::anonymous();
    let alice = member("u1", "KEYALICE");
    let bob = member("u2", "KEYBOB");
    let other = outsider();
    let public_read = r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}"#;
    let deny_alice = format!(
        r#"{{"Effect":"Deny","Principal":{{"AWS":"arn:aws:iam::{T}:user/u1"}},"Action":"s3:*","Resource":["arn:aws:s3:::photos","arn:aws:s3:::photos/*"]}}"#
    );
    let tenant_list = format!(
        r#"{{"Effect":"Allow","Principal":{{"AWS":["{OTHER}"]}},"Action":"s3:ListBucket","Resource":"arn:aws:s3:::photos"}}"#
    );
    let key_put = format!(
        r#"{{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{T}:key/KEYBOB"}},"Action":"s3:Put*","Resource":"arn:aws:s3:::photos/in/*"}}"#
    );
    let not_principal = format!(
        r#"{{"Effect":"Deny","NotPrincipal":{{"AWS":"arn:aws:iam::{T}:root"}},"Action":"s3:DeleteObject","Resource":"arn:aws:s3:::photos/*"}}"#
    );
    let not_action = r#"{"Effect":"Deny","Principal":"*","NotAction":["s3:Get*","s3:List*"],"Resource":"arn:aws:s3:::photos/*"}"#;
    let not_resource = r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","NotResource":"arn:aws:s3:::photos/private/*"}"#;
    let ip = r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"IpAddress":{"aws:SourceIp":["10.0.0.0/8","2001:db8::/32"]}}}"#;
    let not_ip = r#"{"Effect":"Deny","Principal":"*","Action":"s3:*","Resource":"arn:aws:s3:::photos/*","Condition":{"NotIpAddress":{"aws:SourceIp":"192.168.1.0/24"}}}"#;
    let tls = r#"{"Effect":"Deny","Principal":"*","Action":"s3:*","Resource":"arn:aws:s3:::photos/*","Condition":{"Bool":{"aws:SecureTransport":"false"}}}"#;
    let prefix = r#"{"Effect":"Allow","Principal":"*","Action":"s3:ListBucket","Resource":"arn:aws:s3:::photos","Condition":{"StringLike":{"s3:prefix":["public/*",""]},"NumericLessThanEquals":{"s3:max-keys":"100"}}}"#;
    let date = r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"DateLessThan":{"aws:CurrentTime":"2027-01-01T00:00:00Z"},"DateGreaterThanEquals":{"aws:CurrentTime":"2026-01-01"}}}"#;
    let tag = r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"StringEquals":{"s3:ExistingObjectTag/share":"yes"}}}"#;
    let acl_if_exists = r#"{"Effect":"Deny","Principal":"*","Action":"s3:PutObject","Resource":"arn:aws:s3:::photos/*","Condition":{"StringNotEqualsIfExists":{"s3:x-amz-acl":"private"}}}"#;
    let sse_null = r#"{"Effect":"Deny","Principal":"*","Action":"s3:PutObject","Resource":"arn:aws:s3:::photos/*","Condition":{"Null":{"s3:x-amz-server-side-encryption":"true"}}}"#;
    let tag_keys = r#"{"Effect":"Allow","Principal":"*","Action":"s3:PutObject","Resource":"arn:aws:s3:::photos/*","Condition":{"ForAllValues:StringEquals":{"s3:RequestObjectTagKeys":["team","project"]}}}"#;
    let any_tag = r#"{"Effect":"Allow","Principal":"*","Action":"s3:PutObject","Resource":"arn:aws:s3:::photos/*","Condition":{"ForAnyValue:StringLike":{"s3:RequestObjectTagKeys":"team*"}}}"#;
    let ignore_case = r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"StringEqualsIgnoreCase":{"aws:UserAgent":"Curl/8"}}}"#;
    let arn_like = r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::*:user/u2"}}}"#;

    let none = Context::new();
    let mut tags2 = Context::new();
    tags2.set_many(
        "s3:RequestObjectTagKeys",
        vec!["team".into(), "project".into()],
    );
    let mut tags3 = Context::new();
    tags3.set_many(
        "s3:RequestObjectTagKeys",
        vec!["team".into(), "secret".into()],
    );
    let cases: Vec<(&str, &str, &str, &Caller, Context, Verdict)> = vec![
        (
            public_read,
            "s3:GetObject",
            OBJ,
            &anon,
            none.clone(),
            Verdict::Allow,
        ),
        (
            public_read,
            "s3:getobject",
            OBJ,
            &anon,
            none.clone(),
            Verdict::Allow,
        ),
        (
            public_read,
            "s3:PutObject",
            OBJ,
            &anon,
            none.clone(),
            Verdict::Silent,
        ),
        (
            public_read,
            "s3:GetObject",
            BUCKET,
            &anon,
            none.clone(),
            Verdict::Silent,
        ),
        (
            public_read,
            "s3:GetObject",
            "arn:aws:s3:::photosx/a",
            &anon,
            none.clone(),
            Verdict::Silent,
        ),
        (
            &deny_alice,
            "s3:GetObject",
            OBJ,
            &alice,
            none.clone(),
            Verdict::Deny,
        ),
        (
            &deny_alice,
            "s3:ListBucket",
            BUCKET,
            &alice,
            none.clone(),
            Verdict::Deny,
        ),
        (
            &deny_alice,
            "s3:GetObject",
            OBJ,
            &bob,
            none.clone(),
            Verdict::Silent,
        ),
        (
            &deny_alice,
            "s3:GetObject",
            OBJ,
            &anon,
            none.clone(),
            Verdict::Silent,
        ),
        (
            &tenant_list,
            "s3:ListBucket",
            BUCKET,
            &other,
            none.clone(),
            Verdict::Allow,
        ),
        (
            &tenant_list,
            "s3:ListBucket",
            BUCKET,
            &alice,
            none.clone(),
            Verdict::Silent,
        ),
        (
            &key_put,
            "s3:PutObject",
            "arn:aws:s3:::photos/in/x",
            &bob,
            none.clone(),
            Verdict::Allow,
        ),
        (
            &key_put,
            "s3:PutObjectTagging",
            "arn:aws:s3:::photos/in/x",
            &bob,
            none.clone(),
            Verdict::Allow,
        ),
        (
            &key_put,
            "s3:PutObject",
            "arn:aws:s3:::photos/out/x",
            &bob,
            none.clone(),
            Verdict::Silent,
        ),
        (
            &key_put,
            "s3:PutObject",
            "arn:aws:s3:::photos/in/x",
            &alice,
            none.clone(),
            Verdict::Silent,
        ),
        (
            &not_principal,
            "s3:DeleteObject",
            OBJ,
            &alice,
            none.clone(),
            Verdict::Silent,
        ),
        (
            &not_principal,
            "s3:DeleteObject",
            OBJ,
            &other,
            none.clone(),
            Verdict::Deny,
        ),
        (
            &not_principal,
            "s3:DeleteObject",
            OBJ,
            &anon,
            none.clone(),
            Verdict::Deny,
        ),
        (
            not_action,
            "s3:GetObject",
            OBJ,
            &alice,
            none.clone(),
            Verdict::Silent,
        ),
        (
            not_action,
            "s3:PutObject",
            OBJ,
            &alice,
            none.clone(),
            Verdict::Deny,
        ),
        (
            not_resource,
            "s3:GetObject",
            OBJ,
            &anon,
            none.clone(),
            Verdict::Allow,
        ),
        (
            not_resource,
            "s3:GetObject",
            "arn:aws:s3:::photos/private/a",
            &anon,
            none.clone(),
            Verdict::Silent,
        ),
        (
            ip,
            "s3:GetObject",
            OBJ,
            &anon,
            cx(&[("aws:SourceIp", "10.1.2.3")]),
            Verdict::Allow,
        ),
        (
            ip,
            "s3:GetObject",
            OBJ,
            &anon,
            cx(&[("aws:SourceIp", "2001:db8::7")]),
            Verdict::Allow,
        ),
        (
            ip,
            "s3:GetObject",
            OBJ,
            &anon,
            cx(&[("aws:SourceIp", "11.1.2.3")]),
            Verdict::Silent,
        ),
        (
            ip,
            "s3:GetObject",
            OBJ,
            &anon,
            none.clone(),
            Verdict::Silent,
        ),
        (
            not_ip,
            "s3:GetObject",
            OBJ,
            &alice,
            cx(&[("aws:SourceIp", "192.168.1.9")]),
            Verdict::Silent,
        ),
        (
            not_ip,
            "s3:GetObject",
            OBJ,
            &alice,
            cx(&[("aws:SourceIp", "192.168.2.9")]),
            Verdict::Deny,
        ),
        (
            tls,
            "s3:GetObject",
            OBJ,
            &alice,
            cx(&[("aws:SecureTransport", "false")]),
            Verdict::Deny,
        ),
        (
            tls,
            "s3:GetObject",
            OBJ,
            &alice,
            cx(&[("aws:SecureTransport", "true")]),
            Verdict::Silent,
        ),
        (
            prefix,
            "s3:ListBucket",
            BUCKET,
            &anon,
            cx(&[("s3:prefix", "public/cats"), ("s3:max-keys", "50")]),
            Verdict::Allow,
        ),
        (
            prefix,
            "s3:ListBucket",
            BUCKET,
            &anon,
            cx(&[("s3:prefix", ""), ("s3:max-keys", "100")]),
            Verdict::Allow,
        ),
        (
            prefix,
            "s3:ListBucket",
            BUCKET,
            &anon,
            cx(&[("s3:prefix", "public/cats"), ("s3:max-keys", "1000")]),
            Verdict::Silent,
        ),
        (
            prefix,
            "s3:ListBucket",
            BUCKET,
            &anon,
            cx(&[("s3:prefix", "private/"), ("s3:max-keys", "5")]),
            Verdict::Silent,
        ),
        (
            date,
            "s3:GetObject",
            OBJ,
            &anon,
            cx(&[("aws:CurrentTime", "2026-12-07T16:00:00Z")]),
            Verdict::Allow,
        ),
        (
            date,
            "s3:GetObject",
            OBJ,
            &anon,
            cx(&[("aws:CurrentTime", "2027-02-01T00:00:00Z")]),
            Verdict::Silent,
        ),
        (
            date,
            "s3:GetObject",
            OBJ,
            &anon,
            cx(&[("aws:CurrentTime", "2025-12-31T23:59:59Z")]),
            Verdict::Silent,
        ),
        (
            tag,
            "s3:GetObject",
            OBJ,
            &anon,
            cx(&[("s3:ExistingObjectTag/share", "yes")]),
            Verdict::Allow,
        ),
        (
            tag,
            "s3:GetObject",
            OBJ,
            &anon,
            cx(&[("s3:existingobjecttag/share", "yes")]),
            Verdict::Allow,
        ),
        (
            tag,
            "s3:GetObject",
            OBJ,
            &anon,
            cx(&[("s3:ExistingObjectTag/Share", "yes")]),
            Verdict::Silent,
        ),
        (
            tag,
            "s3:GetObject",
            OBJ,
            &anon,
            cx(&[("s3:ExistingObjectTag/share", "no")]),
            Verdict::Silent,
        ),
        // IfExists holds when the key is missing, so this Deny applies to a PUT without an ACL.
        (
            acl_if_exists,
            "s3:PutObject",
            OBJ,
            &alice,
            none.clone(),
            Verdict::Deny,
        ),
        (
            acl_if_exists,
            "s3:PutObject",
            OBJ,
            &alice,
            cx(&[("s3:x-amz-acl", "private")]),
            Verdict::Silent,
        ),
        (
            acl_if_exists,
            "s3:PutObject",
            OBJ,
            &alice,
            cx(&[("s3:x-amz-acl", "public-read")]),
            Verdict::Deny,
        ),
        (
            sse_null,
            "s3:PutObject",
            OBJ,
            &alice,
            none.clone(),
            Verdict::Deny,
        ),
        (
            sse_null,
            "s3:PutObject",
            OBJ,
            &alice,
            cx(&[("s3:x-amz-server-side-encryption", "AES256")]),
            Verdict::Silent,
        ),
        (
            tag_keys,
            "s3:PutObject",
            OBJ,
            &anon,
            tags2.clone(),
            Verdict::Allow,
        ),
        (
            tag_keys,
            "s3:PutObject",
            OBJ,
            &anon,
            tags3.clone(),
            Verdict::Silent,
        ),
        (
            tag_keys,
            "s3:PutObject",
            OBJ,
            &anon,
            none.clone(),
            Verdict::Allow,
        ),
        (
            any_tag,
            "s3:PutObject",
            OBJ,
            &anon,
            tags3.clone(),
            Verdict::Allow,
        ),
        (
            any_tag,
            "s3:PutObject",
            OBJ,
            &anon,
            none.clone(),
            Verdict::Silent,
        ),
        (
            ignore_case,
            "s3:GetObject",
            OBJ,
            &anon,
            cx(&[("aws:UserAgent", "curl/8")]),
            Verdict::Allow,
        ),
        (
            arn_like,
            "s3:GetObject",
            OBJ,
            &bob,
            cx(&[("aws:PrincipalArn", &format!("arn:aws:iam::{T}:user/u2"))]),
            Verdict::Allow,
        ),
        (
            arn_like,
            "s3:GetObject",
            OBJ,
            &alice,
            cx(&[("aws:PrincipalArn", &format!("arn:aws:iam::{T}:user/u1"))]),
            Verdict::Silent,
        ),
    ];
    for (i, (statements, action, resource, caller, context, want)) in cases.iter().enumerate() {
        let p = policy(statements);
        assert_eq!(
            ask(&p, action, resource, caller, context),
            *want,
            "case {i}: {statements} / {action} {resource} {caller:?} {context:?}"
        );
    }
}

#[test]
fn deny_wins_over_allow_in_any_order() {
    let allow =
        r#"{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"arn:aws:s3:::photos/*"}"#;
    let deny = r#"{"Effect":"Deny","Principal":"*","Action":"s3:DeleteObject","Resource":"arn:aws:s3:::photos/*"}"#;
    for order in [format!("{allow},{deny}"), format!("{deny},{allow}")] {
        let p = policy(&order);
        let anon = Caller::anonymous();
        let none = Context::new();
        assert_eq!(ask(&p, "s3:DeleteObject", OBJ, &anon, &none), Verdict::Deny);
        assert_eq!(ask(&p, "s3:GetObject", OBJ, &anon, &none), Verdict::Allow);
    }
}

#[test]
fn malformed_policies_say_why() {
    for (text, why) in [
        ("not json", "invalid Json"),
        ("[1]", "first byte must be '{'"),
        (
            r#"{"Version":"2012-10-17"}"#,
            "Missing required field Statement",
        ),
        (
            r#"{"Version":"2013-01-01","Statement":[]}"#,
            "Invalid policy Version",
        ),
        (r#"{"Statement":[]}"#, "Statement must not be empty"),
        (
            r#"{"Statement":[{"Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}]}"#,
            "Missing required field Effect",
        ),
        (
            r#"{"Statement":[{"Effect":"Allowed","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}]}"#,
            "Invalid effect",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}]}"#,
            "Missing required field Principal",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"bob"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}]}"#,
            "Invalid principal",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Nobody":"x"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}]}"#,
            "Invalid principal",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Resource":"arn:aws:s3:::photos/*"}]}"#,
            "Missing required field Action",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObjekt","Resource":"arn:aws:s3:::photos/*"}]}"#,
            "invalid action",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"ec2:RunInstances","Resource":"arn:aws:s3:::photos/*"}]}"#,
            "invalid action",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject"}]}"#,
            "Missing required field Resource",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::other/*"}]}"#,
            "invalid resource",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"photos/*"}]}"#,
            "invalid resource",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos"}]}"#,
            "does not apply to any resource",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:ListBucket","Resource":"arn:aws:s3:::photos/*"}]}"#,
            "does not apply to any resource",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"StringEqualz":{"aws:UserAgent":"x"}}}]}"#,
            "Invalid Condition type",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"StringEquals":{"s3:nonsense":"x"}}}]}"#,
            "invalid condition key",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"IpAddress":{"aws:SourceIp":"10.0.0.300/8"}}}]}"#,
            "Invalid Condition value",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"NumericLessThan":{"s3:max-keys":"ten"}}}]}"#,
            "Invalid Condition value",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"DateLessThan":{"aws:CurrentTime":"tomorrow"}}}]}"#,
            "Invalid Condition value",
        ),
        (
            r#"{"Statement":[{"Sid":"a","Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"},{"Sid":"a","Effect":"Deny","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}]}"#,
            "must be unique",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","NotAction":"s3:PutObject","Resource":"arn:aws:s3:::photos/*"}]}"#,
            "both Action and NotAction",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Extra":1}]}"#,
            "Unknown field Extra",
        ),
    ] {
        let e = BucketPolicy::parse(text, "photos").unwrap_err();
        assert!(e.contains(why), "{text}: {e} (wanted {why})");
    }
    let big = format!(
        r#"{{"Statement":[{{"Sid":"{}","Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}}]}}"#,
        "x".repeat(POLICY_SIZE_MAX)
    );
    assert!(
        BucketPolicy::parse(&big, "photos")
            .unwrap_err()
            .contains("at most")
    );
}

#[test]
fn accepted_shapes() {
    // A single statement object, string lists, wildcards that reach the bucket.
    for text in [
        r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}}"#,
        r#"{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:*"],"Resource":"arn:aws:s3:::*"}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"arn:aws:s3:::pho*"}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"*","Resource":"arn:aws:s3:::photos/a?c"}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Principal":{"CanonicalUser":"0123456789abcdef0123456789abcdef"},"Action":"s3:ListBucket","Resource":"arn:aws:s3:::photos"}]}"#,
        r#"{"Statement":[{"Effect":"Deny","Principal":"*","NotAction":"s3:GetObject","NotResource":"arn:aws:s3:::photos/pub/*"}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"logging.s3.amazonaws.com"},"Action":"s3:PutObject","Resource":"arn:aws:s3:::photos/logs/*"}]}"#,
        r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"NumericGreaterThan":{"s3:signatureAge":600000},"Bool":{"aws:SecureTransport":true}}}]}"#,
    ] {
        assert!(BucketPolicy::parse(text, "photos").is_ok(), "{text}");
    }
}

#[test]
fn public_or_not() {
    let public = [
        r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}"#,
        r#"{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"StringLike":{"aws:SourceArn":"arn:*"}}}"#,
        r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"IpAddress":{"aws:SourceIp":"0.0.0.0/0"}}}"#,
        r#"{"Effect":"Allow","NotPrincipal":{"AWS":"0123456789abcdef0123456789abcdef"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}"#,
        r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"Bool":{"aws:SecureTransport":"true"}}}"#,
    ];
    let private = [
        r#"{"Effect":"Deny","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}"#,
        r#"{"Effect":"Allow","Principal":{"AWS":"0123456789abcdef0123456789abcdef"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*"}"#,
        r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"IpAddress":{"aws:SourceIp":"10.0.0.0/8"}}}"#,
        r#"{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::photos/*","Condition":{"StringEquals":{"aws:PrincipalAccount":"0123456789abcdef0123456789abcdef"}}}"#,
    ];
    for s in public {
        assert!(policy(s).is_public(), "{s}");
    }
    for s in private {
        assert!(!policy(s).is_public(), "{s}");
    }
}

#[test]
fn prefixes_a_pattern_could_match() {
    assert!(could_match_prefix("photos/*", "photos/"));
    assert!(could_match_prefix("*", "photos/"));
    assert!(could_match_prefix("pho*", "photos/"));
    assert!(could_match_prefix("photos/a", "photos/"));
    assert!(could_match_prefix("p?otos/*", "photos/"));
    assert!(!could_match_prefix("photos", "photos/"));
    assert!(!could_match_prefix("other/*", "photos/"));
    assert!(!could_match_prefix("photo", "photos/"));
}

// A reference evaluator written straight from the rules, for the property test below:
// statements in a tiny vocabulary, decided by brute force.

#[derive(Clone, Debug)]
struct RefStatement {
    deny: bool,
    /// `None`: `*`; otherwise the listed user ids.
    principals: Option<Vec<u8>>,
    not_principal: bool,
    /// Action names without `s3:`, or `*`.
    actions: Vec<&'static str>,
    not_action: bool,
    /// Key prefixes (`a`, `b`) or `*` for every object.
    resources: Vec<&'static str>,
    not_resource: bool,
    /// `StringEquals` (or `StringNotEquals`) on `s3:x-amz-acl`.
    acl: Option<(bool, &'static str)>,
}

const ACTIONS: [&str; 4] = ["GetObject", "PutObject", "DeleteObject", "*"];
const RES: [&str; 3] = ["a", "b", "*"];
const ACLS: [&str; 2] = ["private", "public-read"];

fn to_json(s: &RefStatement) -> String {
    let principal = match &s.principals {
        None => r#""*""#.to_owned(),
        Some(ids) => {
            let arns: Vec<String> = ids
                .iter()
                .map(|u| format!(r#""arn:aws:iam::{T}:user/u{u}""#))
                .collect();
            format!(r#"{{"AWS":[{}]}}"#, arns.join(","))
        }
    };
    let actions: Vec<String> = s
        .actions
        .iter()
        .map(|a| {
            if *a == "*" {
                r#""s3:*""#.to_owned()
            } else {
                format!(r#""s3:{a}""#)
            }
        })
        .collect();
    let resources: Vec<String> = s
        .resources
        .iter()
        .map(|r| {
            if *r == "*" {
                r#""arn:aws:s3:::photos/*""#.to_owned()
            } else {
                format!(r#""arn:aws:s3:::photos/{r}*""#)
            }
        })
        .collect();
    let condition = match s.acl {
        None => String::new(),
        Some((neg, v)) => format!(
            r#","Condition":{{"{}":{{"s3:x-amz-acl":"{v}"}}}}"#,
            if neg {
                "StringNotEquals"
            } else {
                "StringEquals"
            }
        ),
    };
    format!(
        r#"{{"Effect":"{}","{}":{principal},"{}":[{}],"{}":[{}]{condition}}}"#,
        if s.deny { "Deny" } else { "Allow" },
        if s.not_principal {
            "NotPrincipal"
        } else {
            "Principal"
        },
        if s.not_action { "NotAction" } else { "Action" },
        actions.join(","),
        if s.not_resource {
            "NotResource"
        } else {
            "Resource"
        },
        resources.join(","),
    )
}

fn reference(
    statements: &[RefStatement],
    user: Option<u8>,
    action: &str,
    key: &str,
    acl: Option<&str>,
) -> Verdict {
    let mut allow = false;
    for s in statements {
        let named = match (&s.principals, user) {
            (None, _) => true,
            (Some(ids), Some(u)) => ids.contains(&u),
            (Some(_), None) => false,
        };
        let acted = s.actions.iter().any(|a| *a == "*" || *a == action);
        let on = s.resources.iter().any(|r| *r == "*" || key.starts_with(r));
        let cond = match (s.acl, acl) {
            (None, _) => true,
            (Some((false, v)), Some(a)) => a == v,
            (Some((false, _)), None) => false,
            (Some((true, v)), Some(a)) => a != v,
            (Some((true, _)), None) => true,
        };
        let applies =
            named != s.not_principal && acted != s.not_action && on != s.not_resource && cond;
        if applies && s.deny {
            return Verdict::Deny;
        }
        allow |= applies;
    }
    if allow {
        Verdict::Allow
    } else {
        Verdict::Silent
    }
}

fn statement() -> impl Strategy<Value = RefStatement> {
    (
        any::<bool>(),
        prop::option::of(prop::collection::vec(0u8..3, 1..3)),
        any::<bool>(),
        prop::collection::vec(prop::sample::select(&ACTIONS[..]), 1..3),
        any::<bool>(),
        prop::collection::vec(prop::sample::select(&RES[..]), 1..3),
        any::<bool>(),
        prop::option::of((any::<bool>(), prop::sample::select(&ACLS[..]))),
    )
        .prop_map(
            |(deny, principals, np, actions, na, resources, nr, acl)| RefStatement {
                deny,
                // NotPrincipal needs a list (NotPrincipal "*" matches no one and means nothing).
                not_principal: np && principals.is_some(),
                principals,
                actions,
                not_action: na,
                resources,
                not_resource: nr,
                acl,
            },
        )
}

proptest! {
    #[test]
    fn evaluation_matches_the_reference(
        statements in prop::collection::vec(statement(), 1..5),
        user in prop::option::of(0u8..4),
        action in prop::sample::select(&ACTIONS[..3]),
        key in prop::sample::select(&["a1", "b2", "c3"][..]),
        acl in prop::option::of(prop::sample::select(&ACLS[..])),
    ) {
        let text = format!(
            r#"{{"Version":"2012-10-17","Statement":[{}]}}"#,
            statements.iter().map(to_json).collect::<Vec<_>>().join(",")
        );
        let p = BucketPolicy::parse(&text, "photos").unwrap();
        let caller = match user {
            Some(u) => member(&format!("u{u}"), "K"),
            None => Caller::anonymous(),
        };
        let mut cx = Context::new();
        if let Some(a) = acl {
            cx.set("s3:x-amz-acl", a);
        }
        let resource = format!("arn:aws:s3:::photos/{key}");
        let got = ask(&p, &format!("s3:{action}"), &resource, &caller, &cx);
        prop_assert_eq!(got, reference(&statements, user, action, key, acl), "{}", text);
    }
}
