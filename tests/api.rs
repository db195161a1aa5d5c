//! End-to-end: the REST API under `/api` on a real `cairn serve`: first-boot setup, login,
//! refresh-token rotation and reuse detection, sessions and revocation, password change, and
//! bad input answered with precise `{"error": ...}` 4xx responses.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use cairn_tests::CairnProcess;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_cairn");

struct Api {
    _p: CairnProcess,
    addr: std::net::SocketAddr,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Api {
    fn start(env: &[(&str, &str)]) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut p = CairnProcess::start(
            Path::new(BIN),
            &[
                "serve",
                "--data",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--cluster-listen",
                "127.0.0.1:0",
            ],
            &[
                &[
                    ("CAIRN_ROOT_ACCESS_KEY", "CAIRNAPITESTKEY00001"),
                    ("CAIRN_ROOT_SECRET_KEY", "api-test-secret"),
                    ("CAIRN_LOG", "info,openraft=off"),
                ],
                env,
            ]
            .concat(),
            Path::new("/"),
        )
        .unwrap();
        let addr = p.wait_listening().unwrap();
        Api {
            _p: p,
            addr,
            base: format!("http://{addr}/api"),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self._p.pid()
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        // A 204 has no body.
        if status == 204 && text.is_empty() {
            return (status, Value::Null);
        }
        let v =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, v)
    }

    async fn raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field in {v}"))
}

#[tokio::test]
async fn first_boot_login_refresh_sessions_and_revocation() {
    // Many logins from one address: lift the per-address limit for this test.
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    // Wait for the master (the first call may race the election).
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    let admin =
        json!({"email": "Admin@Example.com", "password": "correct horse battery", "name": "Ada"});
    let (status, setup) = loop {
        let (s, v) = api
            .call("POST", "/auth/setup", None, Some(admin.clone()))
            .await;
        if s != 503 {
            break (s, v);
        }
        assert!(std::time::Instant::now() < deadline, "never available: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status, 201, "{setup}");
    assert_eq!(setup["user"]["email"], "admin@example.com");
    assert_eq!(setup["user"]["admin"], true);
    assert_eq!(setup["token_type"], "Bearer");
    assert!(setup["expires_in"].as_u64().unwrap() > 0);
    // Setup happens once.
    let (status, v) = api
        .call("POST", "/auth/setup", None, Some(admin.clone()))
        .await;
    assert_eq!(status, 409, "{v}");
    error_of(&v);

    // Bad input: precise 4xx JSON, never 5xx.
    for (body, want) in [
        (r#"{"email": "a@b.c"}"#, 400),
        (r#"{"email": 5, "password": "x"}"#, 400),
        ("not json", 400),
        ("", 400),
    ] {
        let (status, v) = api.raw("/auth/login", body).await;
        assert_eq!(status, want, "{body}: {v}");
        error_of(&v);
    }
    let huge = format!(
        r#"{{"email": "a@b.c", "password": "{}"}}"#,
        "x".repeat(100_000)
    );
    let resp = api
        .http
        .post(format!("{}/auth/login", api.base))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let (status, v) = api.call("GET", "/no/such/route", None, None).await;
    assert_eq!(status, 404);
    error_of(&v);

    // Login: wrong password and unknown email look the same.
    let (s1, v1) = api
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "admin@example.com", "password": "wrong password"})),
        )
        .await;
    let (s2, v2) = api
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "nobody@example.com", "password": "wrong password"})),
        )
        .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(error_of(&v1), error_of(&v2));
    let (status, a) = api
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "ADMIN@example.com ", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    let access_a = a["access_token"].as_str().unwrap().to_owned();
    let refresh_a = a["refresh_token"].as_str().unwrap().to_owned();

    // The access token works; a tampered one does not; none at all neither.
    let (status, me) = api.call("GET", "/auth/me", Some(&access_a), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["name"], "Ada");
    let mut tampered = access_a.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(
        api.call("GET", "/auth/me", Some(&tampered), None).await.0,
        401
    );
    assert_eq!(api.call("GET", "/auth/me", None, None).await.0, 401);

    // Refresh rotates; the old refresh token used again revokes the session.
    let (status, r) = api
        .call(
            "POST",
            "/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh_a})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let access_a2 = r["access_token"].as_str().unwrap().to_owned();
    let refresh_a2 = r["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh_a2, refresh_a);
    assert_eq!(
        api.call("GET", "/auth/me", Some(&access_a2), None).await.0,
        200
    );
    let (status, v) = api
        .call(
            "POST",
            "/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh_a})),
        )
        .await;
    assert_eq!(status, 401, "{v}");
    assert!(error_of(&v).contains("revoked"));
    assert_eq!(
        api.call("GET", "/auth/me", Some(&access_a2), None).await.0,
        401
    );
    assert_eq!(
        api.call(
            "POST",
            "/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh_a2}))
        )
        .await
        .0,
        401
    );
    assert_eq!(
        api.call(
            "POST",
            "/auth/refresh",
            None,
            Some(json!({"refresh_token": "garbage"}))
        )
        .await
        .0,
        401
    );

    // Two more sessions; one revokes the other, which stops working at once.
    let login = || {
        api.call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "admin@example.com", "password": "correct horse battery"})),
        )
    };
    let (_, b) = login().await;
    let (_, c) = login().await;
    let (access_b, access_c) = (
        b["access_token"].as_str().unwrap().to_owned(),
        c["access_token"].as_str().unwrap().to_owned(),
    );
    let (status, list) = api
        .call("GET", "/auth/sessions", Some(&access_b), None)
        .await;
    assert_eq!(status, 200);
    // Setup's session, b and c (a's was revoked).
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "{list}");
    let setup_access = setup["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call("GET", "/auth/me", Some(&setup_access), None)
            .await
            .0,
        200
    );
    for s in sessions.iter().filter(|s| s["current"] == false) {
        let id = s["id"].as_str().unwrap();
        let path = format!("/auth/sessions/{id}");
        assert_eq!(
            api.call("DELETE", &path, Some(&access_b), None).await.0,
            200
        );
    }
    assert_eq!(
        api.call("GET", "/auth/me", Some(&setup_access), None)
            .await
            .0,
        401
    );
    assert_eq!(
        api.call("GET", "/auth/me", Some(&access_c), None).await.0,
        401
    );
    assert_eq!(
        api.call(
            "DELETE",
            "/auth/sessions/00000000000000000000000000000000",
            Some(&access_b),
            None
        )
        .await
        .0,
        404
    );

    // Password change: the current password is checked, other sessions end.
    let (_, d) = login().await;
    let access_d = d["access_token"].as_str().unwrap().to_owned();
    let (status, v) = api
        .call(
            "POST",
            "/auth/change-password",
            Some(&access_b),
            Some(json!({"current_password": "nope nope nope", "new_password": "another long one"})),
        )
        .await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = api
        .call(
            "POST",
            "/auth/change-password",
            Some(&access_b),
            Some(json!({"current_password": "correct horse battery", "new_password": "short"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = api.call("POST", "/auth/change-password", Some(&access_b), Some(json!({"current_password": "correct horse battery", "new_password": "another long one"}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        api.call("GET", "/auth/me", Some(&access_d), None).await.0,
        401
    );
    assert_eq!(
        api.call("GET", "/auth/me", Some(&access_b), None).await.0,
        200
    );
    assert_eq!(login().await.0, 401);
    let (status, _) = api
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "admin@example.com", "password": "another long one"})),
        )
        .await;
    assert_eq!(status, 200);

    // Logout ends the session.
    assert_eq!(
        api.call("POST", "/auth/logout", Some(&access_b), None)
            .await
            .0,
        200
    );
    assert_eq!(
        api.call("GET", "/auth/me", Some(&access_b), None).await.0,
        401
    );
}

/// Set up the first admin (retrying while the master elects itself); its login answer.
async fn first_admin(api: &Api) -> Value {
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    let admin =
        json!({"email": "root@example.com", "password": "correct horse battery", "name": "Root"});
    loop {
        let (s, v) = api
            .call("POST", "/auth/setup", None, Some(admin.clone()))
            .await;
        if s == 201 {
            return v;
        }
        assert_eq!(s, 503, "{v}");
        assert!(std::time::Instant::now() < deadline, "never available: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn credential_routes_are_rate_limited_per_address() {
    let api = Api::start(&[]);
    first_admin(&api).await; // one request of the five
    let wrong = json!({"email": "root@example.com", "password": "not the password"});
    for left in (0..4).rev() {
        let resp = api
            .http
            .post(format!("{}/auth/login", api.base))
            .json(&wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(resp.headers()["x-ratelimit-limit"], "5");
        assert_eq!(
            resp.headers()["x-ratelimit-remaining"],
            left.to_string().as_str()
        );
        assert!(resp.headers().contains_key("x-request-id"));
    }
    // The sixth attempt in the minute is refused before the password is even looked at.
    let right = json!({"email": "root@example.com", "password": "correct horse battery"});
    let resp = api
        .http
        .post(format!("{}/auth/login", api.base))
        .json(&right)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let v: Value = resp.json().await.unwrap();
    assert!(error_of(&v).contains("too many"));
}

#[tokio::test]
async fn users_own_their_s3_keys() {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = Api::start(&[]);
    let login = first_admin(&api).await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    let (status, key) = api.call("POST", "/s3-keys", Some(&token), None).await;
    assert_eq!(status, 201, "{key}");
    let (ak, sk) = (
        key["access_key"].as_str().unwrap().to_owned(),
        key["secret_key"].as_str().unwrap().to_owned(),
    );
    // The key works over S3.
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://{}", api.addr))
            .credentials_provider(Credentials::new(&ak, &sk, None, None, "test"))
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket("users-bucket")
        .send()
        .await
        .unwrap();
    // Bucket-level S3 changes are audited with the access key as the actor.
    let (_, log) = api
        .call(
            "GET",
            "/audit/logs?action=s3%3ACreateBucket",
            Some(&token),
            None,
        )
        .await;
    let e = &log["entries"][0];
    assert_eq!(e["actor"], ak.as_str(), "{log}");
    assert_eq!(e["resource"], "users-bucket");
    assert_eq!(e["outcome"], "success");
    // Listed without their secrets: the new key, and the root key of `cairn serve`, which
    // setup made the first admin's first key, in the default tenant.
    let (status, list) = api.call("GET", "/s3-keys", Some(&token), None).await;
    assert_eq!(status, 200);
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{list}");
    let mut names: Vec<&str> = keys
        .iter()
        .map(|k| k["access_key"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let mut want = vec![ak.as_str(), "CAIRNAPITESTKEY00001"];
    want.sort_unstable();
    assert_eq!(names, want);
    for k in keys {
        assert!(k.get("secret_key").is_none(), "{k}");
        assert_eq!(k["tenant_id"], key["tenant_id"], "{k}");
    }
    assert_eq!(
        api.call(
            "DELETE",
            "/s3-keys/CAIRNNOSUCHKEY000001",
            Some(&token),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(api.call("GET", "/s3-keys", None, None).await.0, 401);
    // Deleted, it stops working (gateways keep an opened secret for at most 5 s).
    assert_eq!(
        api.call("DELETE", &format!("/s3-keys/{ak}"), Some(&token), None)
            .await
            .0,
        200
    );
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    loop {
        match s3.list_buckets().send().await {
            Err(e) => {
                use aws_sdk_s3::error::ProvideErrorMetadata;
                assert_eq!(e.code(), Some("InvalidAccessKeyId"), "{e:?}");
                break;
            }
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "the deleted key still works"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// A TOTP code for `secret` (base32) at `time`.
fn code_at(secret: &str, time: u64) -> String {
    let bytes = totp_rs::Secret::try_from_base32(secret).unwrap();
    totp_rs::Builder::new()
        .with_secret(bytes)
        .build()
        .unwrap()
        .generate(time)
        .to_string()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JSON timestamp: every route writes RFC 3339 in UTC, to the second
/// (`2026-12-07T03:25:00Z`). Returns Unix seconds.
fn time_of(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp is a string, not {v}"));
    assert!(
        s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T',
        "not RFC 3339 UTC to the second: {s}"
    );
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s}: {e}"));
    u64::try_from(t.unix_timestamp()).unwrap()
}

#[tokio::test]
async fn registration_switch_and_two_factor_login() {
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let admin = first_admin(&api).await;
    let admin_token = admin["access_token"].as_str().unwrap().to_owned();
    let user = json!({"email": "user@example.com", "password": "user password 1", "name": "Uma"});
    // Self-registration is off until an admin turns it on.
    let (status, v) = api
        .call("POST", "/auth/register", None, Some(user.clone()))
        .await;
    assert_eq!(status, 403, "{v}");
    let on = json!({"enabled": true});
    assert_eq!(
        api.call("PUT", "/auth/registration", None, Some(on.clone()))
            .await
            .0,
        401
    );
    assert_eq!(
        api.call(
            "PUT",
            "/auth/registration",
            Some(&admin_token),
            Some(on.clone())
        )
        .await
        .0,
        200
    );
    let (status, reg) = api
        .call("POST", "/auth/register", None, Some(user.clone()))
        .await;
    assert_eq!(status, 201, "{reg}");
    assert_eq!(reg["user"]["admin"], false);
    assert_eq!(
        api.call("POST", "/auth/register", None, Some(user.clone()))
            .await
            .0,
        409
    );
    let token = reg["access_token"].as_str().unwrap().to_owned();
    // Only admins flip the switch.
    assert_eq!(
        api.call(
            "PUT",
            "/auth/registration",
            Some(&token),
            Some(json!({"enabled": false}))
        )
        .await
        .0,
        403
    );

    // 2FA: a secret, a wrong code refused, the right one turns it on.
    let (status, t) = api
        .call("POST", "/auth/totp/enable", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{t}");
    let secret = t["secret"].as_str().unwrap().to_owned();
    assert!(
        t["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/Cairn:user%40example.com?secret=")
    );
    assert_eq!(
        api.call(
            "POST",
            "/auth/totp/verify",
            Some(&token),
            Some(json!({"code": "000000"}))
        )
        .await
        .0,
        400
    );
    let now_code = code_at(&secret, now_s());
    let (status, v) = api
        .call(
            "POST",
            "/auth/totp/verify",
            Some(&token),
            Some(json!({"code": now_code})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (_, me) = api.call("GET", "/auth/me", Some(&token), None).await;
    assert_eq!(me["totp_enabled"], true);

    // Login now needs a code, and each code works once.
    let creds = |code: Option<&str>| {
        let mut b = json!({"email": "user@example.com", "password": "user password 1"});
        if let Some(c) = code {
            b["totp_code"] = json!(c);
        }
        b
    };
    let (status, v) = api
        .call("POST", "/auth/login", None, Some(creds(None)))
        .await;
    assert_eq!(status, 401);
    assert!(error_of(&v).contains("TOTP code is required"), "{v}");
    assert_eq!(
        api.call("POST", "/auth/login", None, Some(creds(Some("123456"))))
            .await
            .0,
        401
    );
    let (status, v) = api
        .call("POST", "/auth/login", None, Some(creds(Some(&now_code))))
        .await;
    assert_eq!(
        status, 401,
        "the code used to verify cannot log in again: {v}"
    );
    let next_code = code_at(&secret, now_s() + 30);
    let (status, v) = api
        .call("POST", "/auth/login", None, Some(creds(Some(&next_code))))
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = api
        .call("POST", "/auth/login", None, Some(creds(Some(&next_code))))
        .await;
    assert_eq!(status, 401, "{v}");
    assert!(error_of(&v).contains("already used"), "{v}");
}

/// Wait (bounded) until `key` is refused.
async fn until_refused(api: &Api, key: &str) {
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    while api.call("GET", "/auth/me", Some(key), None).await.0 != 401 {
        assert!(std::time::Instant::now() < deadline, "key still accepted");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn api_keys_work_as_bearer_tokens_and_can_be_rotated_and_deleted() {
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let admin = first_admin(&api).await;
    let token = admin["access_token"].as_str().unwrap().to_owned();
    let (status, v) = api
        .call(
            "POST",
            "/keys",
            Some(&token),
            Some(json!({"name": "ci", "scopes": ["bogus"]})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, created) = api
        .call(
            "POST",
            "/keys",
            Some(&token),
            Some(json!({"name": "ci", "scopes": ["storage:read"]})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("cairn_{id}_")));
    // The key is a Bearer token for the same user.
    let (status, me) = api.call("GET", "/auth/me", Some(&key), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email"], "root@example.com");
    // The same key in an `X-API-Key` header; an access token there is refused, and so are two
    // credentials at once.
    let with_header = |value: &str| {
        api.http
            .get(format!("{}/auth/me", api.base))
            .header("x-api-key", value.to_owned())
    };
    let resp = with_header(&key).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let me: Value = resp.json().await.unwrap();
    assert_eq!(me["email"], "root@example.com");
    let resp = with_header(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let v: Value = resp.json().await.unwrap();
    assert!(error_of(&v).contains("X-API-Key takes an API key"), "{v}");
    let resp = with_header(&key)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // Listed without the key itself, with its last use.
    let (_, list) = api.call("GET", "/keys", Some(&token), None).await;
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].get("key").is_none());
    assert_eq!(keys[0]["scopes"], json!(["storage:read"]));
    let used = time_of(&keys[0]["last_used_at"]);
    assert!(used + 60 >= now_s() && used <= now_s() + 5, "{list}");
    let created = time_of(&keys[0]["created_at"]);
    assert!(created <= used, "{list}");
    // A key cannot manage the account, nor act as admin without the admin scope.
    assert_eq!(
        api.call("POST", "/keys", Some(&key), Some(json!({"name": "x"})))
            .await
            .0,
        403
    );
    assert_eq!(
        api.call(
            "PUT",
            "/auth/registration",
            Some(&key),
            Some(json!({"enabled": true}))
        )
        .await
        .0,
        403
    );
    // A wrong secret behind a real id, and garbage, are refused.
    let forged = format!("cairn_{id}_{}", "0".repeat(64));
    assert_eq!(
        api.call("GET", "/auth/me", Some(&forged), None).await.0,
        401
    );
    assert_eq!(
        api.call("GET", "/auth/me", Some("cairn_nonsense"), None)
            .await
            .0,
        401
    );

    // Rotation: the new key works, the old one stops (within the 5 s gateways trust a key).
    let (status, rotated) = api
        .call("POST", &format!("/keys/{id}/rotate"), Some(&token), None)
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call("GET", "/auth/me", Some(&new_key), None).await.0,
        200
    );
    until_refused(&api, &key).await;
    // Deleted: refused too; other users' ids answer 404.
    assert_eq!(
        api.call("DELETE", "/keys/0000000000000000", Some(&token), None)
            .await
            .0,
        404
    );
    assert_eq!(
        api.call("DELETE", &format!("/keys/{id}"), Some(&token), None)
            .await
            .0,
        200
    );
    until_refused(&api, &new_key).await;

    // An expiring key stops at its expiry.
    let (_, short) = api
        .call(
            "POST",
            "/keys",
            Some(&token),
            Some(json!({"name": "short", "expires_in": 1})),
        )
        .await;
    let short_key = short["key"].as_str().unwrap().to_owned();
    let expires = time_of(&short["expires_at"]);
    assert!(expires <= now_s() + 5, "{short}");
    until_refused(&api, &short_key).await;
}

#[tokio::test]
async fn audit_log_records_every_change_and_cannot_be_altered() {
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let admin = first_admin(&api).await;
    let token = admin["access_token"].as_str().unwrap().to_owned();
    let admin_id = admin["user"]["id"].as_str().unwrap().to_owned();
    let bad = json!({"email": "root@example.com", "password": "wrong password"});
    assert_eq!(
        api.call("POST", "/auth/login", None, Some(bad)).await.0,
        401
    );
    let (_, key) = api
        .call("POST", "/keys", Some(&token), Some(json!({"name": "k"})))
        .await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call("DELETE", &format!("/keys/{key_id}"), Some(&token), None)
            .await
            .0,
        200
    );

    let (status, log) = api.call("GET", "/audit/logs", Some(&token), None).await;
    assert_eq!(status, 200, "{log}");
    let entries = log["entries"].as_array().unwrap();
    let find = |action: &str, outcome: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action} {outcome} in {log}"))
    };
    assert_eq!(
        find("POST /api/auth/setup", "success")["actor"],
        admin_id.as_str()
    );
    assert_eq!(
        find("POST /api/auth/login", "denied")["actor"],
        "root@example.com"
    );
    let created = find("POST /api/keys", "success");
    assert_eq!(created["actor"], admin_id.as_str());
    assert_eq!(created["ip"], "127.0.0.1");
    let deleted = find("DELETE /api/keys/{id}", "success");
    assert_eq!(deleted["resource"], format!("/api/keys/{key_id}").as_str());
    // Newest first, numbered in log order.
    let ids: Vec<u64> = entries.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    // Filters.
    let (_, only) = api
        .call(
            "GET",
            "/audit/logs?actor=root%40example.com",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(only["entries"].as_array().unwrap().len(), 1, "{only}");
    let (_, page) = api
        .call("GET", "/audit/logs?limit=1&offset=1", Some(&token), None)
        .await;
    assert_eq!(page["entries"][0]["id"].as_u64().unwrap(), ids[1]);
    let (status, v) = api
        .call("GET", "/audit/logs?limit=lots", Some(&token), None)
        .await;
    assert_eq!(status, 400, "{v}");
    // Times are RFC 3339; `from` and `to` take RFC 3339 or Unix seconds.
    let newest = time_of(&entries[0]["time"]);
    assert!(newest <= now_s() + 5 && newest + 600 >= now_s(), "{log}");
    let stamp = entries[0]["time"].as_str().unwrap().to_owned();
    for (from, to) in [
        (stamp.clone(), stamp.clone()),
        (newest.to_string(), newest.to_string()),
    ] {
        let (status, within) = api
            .call(
                "GET",
                &format!("/audit/logs?from={from}&to={to}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{within}");
        let within = within["entries"].as_array().unwrap();
        assert!(!within.is_empty());
        assert!(within.iter().all(|e| time_of(&e["time"]) == newest));
    }
    let (status, v) = api
        .call("GET", "/audit/logs?from=yesterday", Some(&token), None)
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(error_of(&v).contains("RFC 3339"), "{v}");
    // Nothing can change or delete an entry, and only admins read them.
    let (status, v) = api.call("DELETE", "/audit/logs", Some(&token), None).await;
    assert_eq!(status, 405, "{v}");
    error_of(&v);
    assert_eq!(api.call("GET", "/audit/logs", None, None).await.0, 401);
    let (_, plain) = api
        .call(
            "POST",
            "/keys",
            Some(&token),
            Some(json!({"name": "plain"})),
        )
        .await;
    let plain_key = plain["key"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call("GET", "/audit/logs", Some(&plain_key), None)
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn forgotten_passwords_reset_through_an_admin() {
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let admin = first_admin(&api).await;
    let token = admin["access_token"].as_str().unwrap().to_owned();
    // The same answer for a known and an unknown email.
    let (s1, v1) = api
        .call(
            "POST",
            "/auth/forgot-password",
            None,
            Some(json!({"email": "root@example.com"})),
        )
        .await;
    let (s2, v2) = api
        .call(
            "POST",
            "/auth/forgot-password",
            None,
            Some(json!({"email": "ghost@example.com"})),
        )
        .await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(v1, v2);
    // With no mail server, the admin sees the pending token.
    let (status, resets) = api
        .call("GET", "/auth/password-resets", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{resets}");
    let list = resets["resets"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{resets}");
    assert_eq!(list[0]["email"], "root@example.com");
    let reset = list[0]["token"].as_str().unwrap().to_owned();
    // A wrong token is refused; the right one sets the password and ends every session.
    let (status, v) = api
        .call(
            "POST",
            "/auth/reset-password",
            None,
            Some(json!({"token": "00.11", "new_password": "brand new password"})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = api
        .call(
            "POST",
            "/auth/reset-password",
            None,
            Some(json!({"token": reset, "new_password": "brand new password"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(api.call("GET", "/auth/me", Some(&token), None).await.0, 401);
    // Used once only.
    let (status, _) = api
        .call(
            "POST",
            "/auth/reset-password",
            None,
            Some(json!({"token": reset, "new_password": "yet another password"})),
        )
        .await;
    assert_eq!(status, 400);
    let old = json!({"email": "root@example.com", "password": "correct horse battery"});
    assert_eq!(
        api.call("POST", "/auth/login", None, Some(old)).await.0,
        401
    );
    let new = json!({"email": "root@example.com", "password": "brand new password"});
    let (status, fresh) = api.call("POST", "/auth/login", None, Some(new)).await;
    assert_eq!(status, 200);
    let fresh_token = fresh["access_token"].as_str().unwrap().to_owned();
    let (_, after) = api
        .call("GET", "/auth/password-resets", Some(&fresh_token), None)
        .await;
    assert!(after["resets"].as_array().unwrap().is_empty(), "{after}");
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let api = Api::start(&[]);
    let (status, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/auth/setup", "post"),
        ("/api/auth/login", "post"),
        ("/api/auth/register", "post"),
        ("/api/auth/refresh", "post"),
        ("/api/auth/logout", "post"),
        ("/api/auth/me", "get"),
        ("/api/auth/change-password", "post"),
        ("/api/auth/sessions", "get"),
        ("/api/auth/sessions/{id}", "delete"),
        ("/api/auth/registration", "put"),
        ("/api/auth/totp/enable", "post"),
        ("/api/auth/totp/verify", "post"),
        ("/api/auth/forgot-password", "post"),
        ("/api/auth/reset-password", "post"),
        ("/api/auth/password-resets", "get"),
        ("/api/keys", "post"),
        ("/api/keys", "get"),
        ("/api/keys/{id}", "delete"),
        ("/api/keys/{id}/rotate", "post"),
        ("/api/s3-keys", "post"),
        ("/api/s3-keys", "get"),
        ("/api/s3-keys/{id}", "delete"),
        ("/api/audit/logs", "get"),
        ("/api/openapi.json", "get"),
        ("/api/tenants", "get"),
        ("/api/tenants", "post"),
        ("/api/tenants/{id}", "get"),
        ("/api/tenants/{id}/switch", "post"),
        ("/api/tenants/{id}/members", "get"),
        ("/api/tenants/{id}/members", "post"),
        ("/api/tenants/{id}/members/{user_id}", "put"),
        ("/api/tenants/{id}/members/{user_id}", "delete"),
        ("/api/iam/policies", "get"),
        ("/api/iam/policies", "post"),
        ("/api/iam/policies/{id}", "get"),
        ("/api/iam/policies/{id}", "delete"),
        ("/api/iam/policies/{id}/attach", "post"),
        ("/api/iam/policies/{id}/detach", "post"),
        ("/api/auth/jwt-key/rotate", "post"),
        ("/api/storage/buckets", "get"),
        ("/api/storage/buckets", "post"),
        ("/api/storage/buckets/{name}", "delete"),
        ("/api/storage/buckets/{name}/versioning", "put"),
        ("/api/storage/buckets/{name}/objects", "get"),
        ("/api/storage/buckets/{name}/versions", "get"),
        ("/api/storage/buckets/{name}/objects/{key}", "put"),
        ("/api/storage/buckets/{name}/objects/{key}", "get"),
        ("/api/storage/buckets/{name}/objects/{key}", "delete"),
        ("/api/storage/buckets/{name}/policy", "get"),
        ("/api/storage/buckets/{name}/policy", "put"),
        ("/api/storage/buckets/{name}/policy", "delete"),
        ("/api/storage/buckets/{name}/public-access-block", "get"),
        ("/api/storage/buckets/{name}/public-access-block", "put"),
        ("/api/storage/buckets/{name}/public-access-block", "delete"),
        ("/api/storage/buckets/{name}/object-lock", "get"),
        ("/api/storage/buckets/{name}/object-lock", "put"),
        ("/api/storage/buckets/{name}/retention/{key}", "get"),
        ("/api/storage/buckets/{name}/retention/{key}", "put"),
        ("/api/storage/buckets/{name}/legal-hold/{key}", "put"),
        ("/api/kms/keys", "get"),
        ("/api/kms/keys", "post"),
        ("/api/kms/keys/{id}", "get"),
        ("/api/kms/keys/{id}/rotate", "post"),
        ("/api/kms/keys/{id}/disable", "post"),
        ("/api/kms/keys/{id}/enable", "post"),
        ("/api/queues", "get"),
        ("/api/queues", "post"),
        ("/api/queues/{id}", "get"),
        ("/api/queues/{id}", "put"),
        ("/api/queues/{id}", "delete"),
        ("/api/queues/{id}/purge", "post"),
        ("/api/queues/{id}/messages", "post"),
        ("/api/queues/{id}/messages", "get"),
        ("/api/queues/{id}/messages/{receipt}", "delete"),
        ("/api/queues/{id}/messages/{receipt}/visibility", "post"),
        ("/api/queues/{id}/ack", "post"),
        ("/api/topics", "get"),
        ("/api/topics", "post"),
        ("/api/topics/{id}", "get"),
        ("/api/topics/{id}", "delete"),
        ("/api/topics/{id}/publish", "post"),
        ("/api/topics/{id}/subscriptions", "get"),
        ("/api/topics/{id}/subscriptions", "post"),
        ("/api/topics/{id}/subscriptions/{subscription}", "delete"),
        ("/api/cron", "get"),
        ("/api/cron", "post"),
        ("/api/cron/{id}", "get"),
        ("/api/cron/{id}", "delete"),
        ("/api/cron/{id}/pause", "post"),
        ("/api/cron/{id}/resume", "post"),
        ("/api/cron/{id}/runs", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    // Request bodies carry their schemas.
    let login = &paths["/api/auth/login"]["post"]["requestBody"];
    assert!(login.to_string().contains("LoginBody"), "{login}");
    let policy = &paths["/api/iam/policies"]["post"]["requestBody"];
    assert!(policy.to_string().contains("NewPolicy"), "{policy}");
}

fn s3_client(api: &Api, ak: &str, sk: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let _ = rustls::crypto::ring::default_provider().install_default();
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://{}", api.addr))
            .credentials_provider(Credentials::new(ak, sk, None, None, "test"))
            .force_path_style(true)
            .build(),
    )
}

/// A new S3 key of the caller (in the tenant they act in) and a client using it.
async fn s3_key(api: &Api, token: &str) -> (String, aws_sdk_s3::Client) {
    let (status, key) = api.call("POST", "/s3-keys", Some(token), None).await;
    assert_eq!(status, 201, "{key}");
    let ak = key["access_key"].as_str().unwrap().to_owned();
    let client = s3_client(api, &ak, key["secret_key"].as_str().unwrap());
    (ak, client)
}

/// Open registration (with the admin's token) and register a user; their login answer.
async fn register(api: &Api, admin: &str, email: &str, name: &str) -> Value {
    let (s, v) = api
        .call(
            "PUT",
            "/auth/registration",
            Some(admin),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/auth/register",
            None,
            Some(json!({"email": email, "password": "a long enough password", "name": name})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v
}

/// The S3 error code of a failed call (`None` when it succeeded).
fn s3_code<T, E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug>(
    r: &Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
) -> Option<String> {
    match r {
        Ok(_) => None,
        Err(aws_sdk_s3::error::SdkError::ServiceError(e)) => {
            Some(e.err().code().unwrap_or("?").to_owned())
        }
        Err(e) => Some(format!("{e:?}")),
    }
}

/// Everything a failed S3 call told the caller (status, code, message and raw body).
fn s3_said<T, E: std::fmt::Debug>(
    r: &Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
) -> String {
    match r {
        Ok(_) => String::new(),
        Err(aws_sdk_s3::error::SdkError::ServiceError(e)) => format!(
            "{} {:?} {}",
            e.raw().status().as_u16(),
            e.err(),
            String::from_utf8_lossy(e.raw().body().bytes().unwrap_or_default())
        ),
        Err(e) => format!("{e:?}"),
    }
}

/// Poll `f` until it returns true (role and policy changes reach a gateway within 5 s).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn tenants_never_see_each_others_data_over_s3_or_rest() {
    use aws_sdk_s3::primitives::ByteStream;
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &ada_t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();

    // Each starts in a tenant of their own: Ada in the default one, Bob in his workspace.
    let (_, tenants) = api.call("GET", "/tenants", Some(&bob_t), None).await;
    let list = tenants["tenants"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{tenants}");
    assert_eq!(list[0]["name"], "Bob's workspace");
    assert_eq!(list[0]["role"], "owner");
    assert_eq!(list[0]["current"], true);
    let bob_tenant = list[0]["id"].as_str().unwrap().to_owned();
    let (_, tenants) = api.call("GET", "/tenants", Some(&ada_t), None).await;
    assert_eq!(tenants["tenants"][0]["name"], "default", "{tenants}");
    let ada_tenant = tenants["current"].as_str().unwrap().to_owned();
    assert_ne!(ada_tenant, bob_tenant);

    // Bob's private data.
    let (bob_ak, bob_s3) = s3_key(&api, &bob_t).await;
    bob_s3
        .create_bucket()
        .bucket("bob-private")
        .send()
        .await
        .unwrap();
    let secret_body = b"bob's secret contents".to_vec();
    bob_s3
        .put_object()
        .bucket("bob-private")
        .key("diary/secret.txt")
        .body(ByteStream::from(secret_body.clone()))
        .send()
        .await
        .unwrap();
    // Ada's, made with the root key of `cairn serve` (now hers, in the default tenant).
    let root = s3_client(&api, "CAIRNAPITESTKEY00001", "api-test-secret");
    root.create_bucket()
        .bucket("ada-data")
        .send()
        .await
        .unwrap();
    root.put_object()
        .bucket("ada-data")
        .key("mine.txt")
        .body(ByteStream::from_static(b"ada"))
        .send()
        .await
        .unwrap();
    let (ada_ak, ada_s3) = s3_key(&api, &ada_t).await;

    // Listings show only one's own tenant.
    for (client, mine, theirs) in [
        (&ada_s3, "ada-data", "bob-private"),
        (&root, "ada-data", "bob-private"),
        (&bob_s3, "bob-private", "ada-data"),
    ] {
        let names: Vec<String> = client
            .list_buckets()
            .send()
            .await
            .unwrap()
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(str::to_owned))
            .collect();
        assert!(names.contains(&mine.to_owned()), "{names:?}");
        assert!(!names.contains(&theirs.to_owned()), "{names:?}");
    }

    // Every read, list, write and delete by Ada's keys on Bob's bucket is answered as if it
    // did not exist, and nothing in the answers names his objects.
    for a in [&ada_s3, &root] {
        let mut said = String::new();
        macro_rules! refused {
            ($call:expr) => {{
                let r = $call.send().await;
                assert_eq!(
                    s3_code(&r).as_deref(),
                    Some("NoSuchBucket"),
                    "{}",
                    s3_said(&r)
                );
                said.push_str(&s3_said(&r));
            }};
        }
        refused!(a.get_object().bucket("bob-private").key("diary/secret.txt"));
        refused!(a.get_object().bucket("bob-private").key("no/such/key"));
        refused!(a.list_objects_v2().bucket("bob-private"));
        refused!(a.list_objects().bucket("bob-private"));
        refused!(a.list_object_versions().bucket("bob-private"));
        refused!(a.list_multipart_uploads().bucket("bob-private"));
        refused!(a.get_bucket_versioning().bucket("bob-private"));
        refused!(a.get_bucket_acl().bucket("bob-private"));
        refused!(a.get_bucket_location().bucket("bob-private"));
        refused!(
            a.get_object_tagging()
                .bucket("bob-private")
                .key("diary/secret.txt")
        );
        refused!(
            a.put_object()
                .bucket("bob-private")
                .key("diary/secret.txt")
                .body(ByteStream::from_static(b"overwritten"))
        );
        refused!(
            a.delete_object()
                .bucket("bob-private")
                .key("diary/secret.txt")
        );
        refused!(
            a.put_object_tagging()
                .bucket("bob-private")
                .key("diary/secret.txt")
                .tagging(
                    aws_sdk_s3::types::Tagging::builder()
                        .tag_set(
                            aws_sdk_s3::types::Tag::builder()
                                .key("k")
                                .value("v")
                                .build()
                                .unwrap()
                        )
                        .build()
                        .unwrap()
                )
        );
        refused!(
            a.delete_objects().bucket("bob-private").delete(
                aws_sdk_s3::types::Delete::builder()
                    .objects(
                        aws_sdk_s3::types::ObjectIdentifier::builder()
                            .key("diary/secret.txt")
                            .build()
                            .unwrap()
                    )
                    .build()
                    .unwrap()
            )
        );
        refused!(a.create_multipart_upload().bucket("bob-private").key("x"));
        refused!(
            a.put_bucket_versioning()
                .bucket("bob-private")
                .versioning_configuration(
                    aws_sdk_s3::types::VersioningConfiguration::builder()
                        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                        .build()
                )
        );
        refused!(
            a.put_bucket_acl()
                .bucket("bob-private")
                .acl(aws_sdk_s3::types::BucketCannedAcl::PublicRead)
        );
        refused!(a.delete_bucket_cors().bucket("bob-private"));
        refused!(a.delete_bucket().bucket("bob-private"));
        // Copies out of Bob's bucket (into Ada's own) and into it.
        refused!(
            a.copy_object()
                .bucket("ada-data")
                .key("stolen.txt")
                .copy_source("bob-private/diary/secret.txt")
        );
        refused!(
            a.copy_object()
                .bucket("bob-private")
                .key("planted.txt")
                .copy_source("ada-data/mine.txt")
        );
        let head = a
            .head_object()
            .bucket("bob-private")
            .key("diary/secret.txt")
            .send()
            .await;
        assert_eq!(
            head.as_ref()
                .err()
                .and_then(|e| e.raw_response())
                .map(|r| r.status().as_u16()),
            Some(404)
        );
        let head = a.head_bucket().bucket("bob-private").send().await;
        assert_eq!(
            head.as_ref()
                .err()
                .and_then(|e| e.raw_response())
                .map(|r| r.status().as_u16()),
            Some(404)
        );
        // A part copied from Bob's object into an upload of Ada's own.
        let up = a
            .create_multipart_upload()
            .bucket("ada-data")
            .key("parts")
            .send()
            .await
            .unwrap();
        refused!(
            a.upload_part_copy()
                .bucket("ada-data")
                .key("parts")
                .upload_id(up.upload_id().unwrap())
                .part_number(1)
                .copy_source("bob-private/diary/secret.txt")
        );
        assert!(!said.contains("diary"), "{said}");
        assert!(!said.contains("secret"), "{said}");
    }
    // The name itself is the one thing a global bucket namespace must reveal: it is taken.
    let taken = ada_s3.create_bucket().bucket("bob-private").send().await;
    assert_eq!(s3_code(&taken).as_deref(), Some("BucketAlreadyExists"));

    // Nothing of Bob's was touched.
    let got = bob_s3
        .get_object()
        .bucket("bob-private")
        .key("diary/secret.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(got.body.collect().await.unwrap().to_vec(), secret_body);
    let listed = bob_s3
        .list_objects_v2()
        .bucket("bob-private")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["diary/secret.txt"]);
    assert!(
        ada_s3
            .head_object()
            .bucket("ada-data")
            .key("stolen.txt")
            .send()
            .await
            .is_err()
    );

    // The audit log (the cluster operator's) has Bob's object write, and every refusal of
    // Ada's key, with the key as the actor.
    let (_, log) = api
        .call(
            "GET",
            &format!("/audit/logs?actor={bob_ak}&action=s3%3APutObject"),
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(
        log["entries"][0]["resource"], "bob-private/diary/secret.txt",
        "{log}"
    );
    assert_eq!(log["entries"][0]["outcome"], "success");
    let (_, log) = api
        .call(
            "GET",
            &format!("/audit/logs?actor={ada_ak}&resource=bob-private%2Fdiary%2Fsecret.txt"),
            Some(&ada_t),
            None,
        )
        .await;
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.len() >= 5, "{log}");
    assert!(entries.iter().all(|e| e["outcome"] == "denied"), "{log}");
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"] {
        assert!(actions.contains(&a), "{a} not in {actions:?}");
    }

    // Over REST: Bob's tenant does not exist for Ada, whatever she tries.
    let b = format!("/tenants/{bob_tenant}");
    let ada_id = ada["user"]["id"].as_str().unwrap().to_owned();
    let bob_id = bob["user"]["id"].as_str().unwrap().to_owned();
    for (method, path, body) in [
        ("GET", b.clone(), None),
        ("GET", format!("{b}/members"), None),
        ("POST", format!("{b}/switch"), None),
        (
            "POST",
            format!("{b}/members"),
            Some(json!({"user_id": ada_id, "role": "owner"})),
        ),
        (
            "PUT",
            format!("{b}/members/{bob_id}"),
            Some(json!({"role": "viewer"})),
        ),
        ("DELETE", format!("{b}/members/{bob_id}"), None),
    ] {
        let (status, v) = api.call(method, &path, Some(&ada_t), body).await;
        assert_eq!(status, 404, "{method} {path}: {v}");
        assert!(!v.to_string().contains("Bob"), "{v}");
    }
    // Bob's policies are his tenant's: Ada's listing is of her own tenant, and she cannot
    // attach one of his (or reach one by id).
    let (s, p) = api
        .call(
            "POST",
            "/iam/policies",
            Some(&bob_t),
            Some(json!({"name": "bob-only", "statements": [
                {"effect": "Allow", "actions": ["s3:*"], "resources": ["*"]}]})),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let bob_policy = p["id"].as_str().unwrap().to_owned();
    let (s, v) = api.call("GET", "/iam/policies", Some(&ada_t), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["policies"].as_array().unwrap().len(), 0, "{v}");
    let (s, _) = api
        .call(
            "GET",
            &format!("/iam/policies/{bob_policy}"),
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call(
            "POST",
            &format!("/iam/policies/{bob_policy}/attach"),
            Some(&ada_t),
            Some(json!({"user_id": ada_id})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/iam/policies/{bob_policy}"),
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(s, 404);
    // Bob cannot pull Ada into his tenant's policy either: she is not a member there.
    let (s, _) = api
        .call(
            "POST",
            &format!("/iam/policies/{bob_policy}/attach"),
            Some(&bob_t),
            Some(json!({"user_id": ada_id})),
        )
        .await;
    assert_eq!(s, 404);

    // A public-read bucket is readable by anyone, signed or not, but writable only inside.
    bob_s3
        .create_bucket()
        .bucket("bob-public")
        .acl(aws_sdk_s3::types::BucketCannedAcl::PublicRead)
        .send()
        .await
        .unwrap();
    bob_s3
        .put_object()
        .bucket("bob-public")
        .key("hello.txt")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .unwrap();
    let got = ada_s3
        .get_object()
        .bucket("bob-public")
        .key("hello.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(got.body.collect().await.unwrap().to_vec(), b"hello");
    let w = ada_s3
        .put_object()
        .bucket("bob-public")
        .key("hello.txt")
        .body(ByteStream::from_static(b"defaced"))
        .send()
        .await;
    assert_eq!(
        s3_code(&w).as_deref(),
        Some("NoSuchBucket"),
        "{}",
        s3_said(&w)
    );
    let anon = reqwest::get(format!("http://{}/bob-public/hello.txt", api.addr))
        .await
        .unwrap();
    assert_eq!(anon.status().as_u16(), 200);
    assert_eq!(anon.text().await.unwrap(), "hello");
    let anon = reqwest::get(format!("http://{}/bob-private/diary/secret.txt", api.addr))
        .await
        .unwrap();
    assert_eq!(anon.status().as_u16(), 403);
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn roles_and_policies_decide_inside_a_tenant() {
    use aws_sdk_s3::primitives::ByteStream;
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let ada_id = ada["user"]["id"].as_str().unwrap().to_owned();
    let (_, v) = api.call("GET", "/tenants", Some(&ada_t), None).await;
    let team = v["current"].as_str().unwrap().to_owned();
    let carol = register(&api, &ada_t, "carol@example.com", "Carol").await;
    let carol_t = carol["access_token"].as_str().unwrap().to_owned();
    let carol_id = carol["user"]["id"].as_str().unwrap().to_owned();
    let dan = register(&api, &ada_t, "dan@example.com", "Dan").await;
    let dan_t = dan["access_token"].as_str().unwrap().to_owned();
    let dan_id = dan["user"]["id"].as_str().unwrap().to_owned();

    let (_, ada_s3) = s3_key(&api, &ada_t).await;
    ada_s3.create_bucket().bucket("team").send().await.unwrap();
    for key in ["public/a.txt", "private/b.txt"] {
        ada_s3
            .put_object()
            .bucket("team")
            .key(key)
            .body(ByteStream::from_static(b"team data"))
            .send()
            .await
            .unwrap();
    }

    // Carol joins as a viewer, by email; she acts in the team once she switches to it.
    let members = format!("/tenants/{team}/members");
    let (s, v) = api
        .call(
            "POST",
            &members,
            Some(&ada_t),
            Some(json!({"email": "carol@example.com", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = api
        .call(
            "POST",
            &format!("/tenants/{team}/switch"),
            Some(&carol_t),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = api.call("GET", "/tenants", Some(&carol_t), None).await;
    assert_eq!(v["current"], team.as_str(), "{v}");
    assert_eq!(v["tenants"].as_array().unwrap().len(), 2, "{v}");
    let (_, carol_s3) = s3_key(&api, &carol_t).await;
    let (_, list) = api.call("GET", &members, Some(&carol_t), None).await;
    let roles: Vec<(String, String)> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["email"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        roles.contains(&("carol@example.com".into(), "viewer".into())),
        "{list}"
    );
    assert!(
        roles.contains(&("root@example.com".into(), "owner".into())),
        "{list}"
    );

    // A viewer reads and lists, and writes nothing.
    let got = carol_s3
        .get_object()
        .bucket("team")
        .key("public/a.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(got.body.collect().await.unwrap().to_vec(), b"team data");
    carol_s3
        .list_objects_v2()
        .bucket("team")
        .send()
        .await
        .unwrap();
    let put = |c: aws_sdk_s3::Client, key: &'static str| async move {
        c.put_object()
            .bucket("team")
            .key(key)
            .body(ByteStream::from_static(b"carol"))
            .send()
            .await
    };
    let r = put(carol_s3.clone(), "public/c.txt").await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("AccessDenied"),
        "{}",
        s3_said(&r)
    );
    let r = carol_s3
        .delete_object()
        .bucket("team")
        .key("public/a.txt")
        .send()
        .await;
    assert_eq!(s3_code(&r).as_deref(), Some("AccessDenied"));
    let r = carol_s3.create_bucket().bucket("carols").send().await;
    assert_eq!(s3_code(&r).as_deref(), Some("AccessDenied"));
    // ...and manages nobody.
    let (s, _) = api
        .call(
            "POST",
            &members,
            Some(&carol_t),
            Some(json!({"user_id": dan_id, "role": "viewer"})),
        )
        .await;
    assert_eq!(s, 403);

    // Promoted to member, she writes (within the 5 s a gateway keeps a key's rights).
    let (s, v) = api
        .call(
            "PUT",
            &format!("{members}/{carol_id}"),
            Some(&ada_t),
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("a member writes", || {
        let c = carol_s3.clone();
        async move { put(c, "public/c.txt").await.is_ok() }
    })
    .await;
    // Members still cannot manage the bucket.
    let r = carol_s3.delete_bucket_cors().bucket("team").send().await;
    assert_eq!(s3_code(&r).as_deref(), Some("AccessDenied"));

    // A policy: everything, except reading under private/. Deny wins over the Allow and
    // over the role.
    let (s, p) = api
        .call(
            "POST",
            "/iam/policies",
            Some(&ada_t),
            Some(json!({"name": "no-private", "statements": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"effect": "Deny", "actions": ["s3:GetObject"],
                 "resources": ["arn:aws:s3:::team/private/*"]}]})),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let no_private = p["id"].as_str().unwrap().to_owned();
    let (s, v) = api
        .call(
            "POST",
            &format!("/iam/policies/{no_private}/attach"),
            Some(&ada_t),
            Some(json!({"user_id": carol_id})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    eventually("the Deny applies", || {
        let c = carol_s3.clone();
        async move {
            let r = c
                .get_object()
                .bucket("team")
                .key("private/b.txt")
                .send()
                .await;
            s3_code(&r).as_deref() == Some("AccessDenied")
        }
    })
    .await;
    carol_s3
        .get_object()
        .bucket("team")
        .key("public/a.txt")
        .send()
        .await
        .unwrap();
    // The same policy on an owner denies her too.
    let (s, _) = api
        .call(
            "POST",
            &format!("/iam/policies/{no_private}/attach"),
            Some(&ada_t),
            Some(json!({"user_id": ada_id})),
        )
        .await;
    assert_eq!(s, 200);
    eventually("the Deny applies to an owner", || {
        let c = ada_s3.clone();
        async move {
            let r = c
                .get_object()
                .bucket("team")
                .key("private/b.txt")
                .send()
                .await;
            s3_code(&r).as_deref() == Some("AccessDenied")
        }
    })
    .await;
    let (_, v) = api.call("GET", "/iam/policies", Some(&ada_t), None).await;
    let attached = v["policies"][0]["attached_to"].as_array().unwrap();
    assert_eq!(attached.len(), 2, "{v}");
    // Detached, the owner reads again.
    let (s, _) = api
        .call(
            "POST",
            &format!("/iam/policies/{no_private}/detach"),
            Some(&ada_t),
            Some(json!({"user_id": ada_id})),
        )
        .await;
    assert_eq!(s, 200);
    eventually("the owner reads again", || {
        let c = ada_s3.clone();
        async move {
            c.get_object()
                .bucket("team")
                .key("private/b.txt")
                .send()
                .await
                .is_ok()
        }
    })
    .await;

    // An Allow grants a viewer one more thing, inside the tenant only.
    let (s, v) = api
        .call(
            "POST",
            &members,
            Some(&ada_t),
            Some(json!({"user_id": dan_id, "role": "viewer"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    api.call(
        "POST",
        &format!("/tenants/{team}/switch"),
        Some(&dan_t),
        None,
    )
    .await;
    let (_, dan_s3) = s3_key(&api, &dan_t).await;
    let (s, p) = api
        .call(
            "POST",
            "/iam/policies",
            Some(&ada_t),
            Some(json!({"name": "drop-box", "statements": [
                {"effect": "Allow", "actions": ["s3:PutObject"], "resources": ["team/drop/*"]}]})),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let drop_box = p["id"].as_str().unwrap().to_owned();
    api.call(
        "POST",
        &format!("/iam/policies/{drop_box}/attach"),
        Some(&ada_t),
        Some(json!({"user_id": dan_id})),
    )
    .await;
    eventually("the Allow applies", || {
        let c = dan_s3.clone();
        async move { put(c, "drop/in.txt").await.is_ok() }
    })
    .await;
    let r = put(dan_s3.clone(), "public/not-here.txt").await;
    assert_eq!(s3_code(&r).as_deref(), Some("AccessDenied"));

    // Role rules: the last owner stays; only owners make owners; admins manage members.
    let (s, v) = api
        .call("DELETE", &format!("{members}/{ada_id}"), Some(&ada_t), None)
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, _) = api
        .call(
            "PUT",
            &format!("{members}/{ada_id}"),
            Some(&ada_t),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(s, 409);
    api.call(
        "PUT",
        &format!("{members}/{carol_id}"),
        Some(&ada_t),
        Some(json!({"role": "admin"})),
    )
    .await;
    let (s, _) = api
        .call(
            "PUT",
            &format!("{members}/{dan_id}"),
            Some(&carol_t),
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = api
        .call(
            "PUT",
            &format!("{members}/{dan_id}"),
            Some(&carol_t),
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call(
            "DELETE",
            &format!("{members}/{ada_id}"),
            Some(&carol_t),
            None,
        )
        .await;
    assert_eq!(s, 403);
    // Removed, Dan's key loses the tenant (and its policies) within 5 s.
    let (s, _) = api
        .call(
            "DELETE",
            &format!("{members}/{dan_id}"),
            Some(&carol_t),
            None,
        )
        .await;
    assert_eq!(s, 200);
    eventually("a removed member sees nothing", || {
        let c = dan_s3.clone();
        async move {
            let r = c
                .get_object()
                .bucket("team")
                .key("public/a.txt")
                .send()
                .await;
            s3_code(&r).as_deref() == Some("NoSuchBucket")
        }
    })
    .await;
    let (_, v) = api.call("GET", "/tenants", Some(&dan_t), None).await;
    assert_eq!(v["tenants"].as_array().unwrap().len(), 1, "{v}");
    assert_ne!(v["current"], team.as_str());

    // Bad input: precise 4xx JSON.
    for (method, path, body, want) in [
        (
            "POST",
            members.clone(),
            json!({"email": "carol@example.com", "role": "god"}),
            400,
        ),
        (
            "POST",
            members.clone(),
            json!({"email": "nobody@example.com", "role": "viewer"}),
            404,
        ),
        ("POST", members.clone(), json!({"role": "viewer"}), 400),
        (
            "POST",
            members.clone(),
            json!({"email": 7, "role": "viewer"}),
            400,
        ),
        ("POST", "/tenants".into(), json!({"name": ""}), 400),
        ("POST", "/tenants".into(), json!({"name": ["x"]}), 400),
        (
            "POST",
            "/iam/policies".into(),
            json!({"name": "p", "statements": []}),
            400,
        ),
        (
            "POST",
            "/iam/policies".into(),
            json!({"name": "p", "statements": [{"effect": "Maybe", "actions": "*", "resources": "*"}]}),
            400,
        ),
        (
            "POST",
            "/iam/policies".into(),
            json!({"name": "p", "statements": [{"effect": "Allow", "actions": "ec2:Run", "resources": "*"}]}),
            400,
        ),
        (
            "POST",
            "/iam/policies".into(),
            json!({"name": "no-private", "statements": [{"effect": "Allow", "actions": "*", "resources": "*"}]}),
            409,
        ),
        ("POST", "/tenants/not-an-id/switch".into(), json!({}), 404),
    ] {
        let (s, v) = api.call(method, &path, Some(&ada_t), Some(body)).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        error_of(&v);
    }
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(100_000));
    let resp = api
        .http
        .post(format!("{}/tenants", api.base))
        .header("authorization", format!("Bearer {ada_t}"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);

    // Tenant changes are in the audit log, with their actor.
    let (_, log) = api
        .call(
            "GET",
            "/audit/logs?action=POST%20/api/iam/policies/%7Bid%7D/attach",
            Some(&ada_t),
            None,
        )
        .await;
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.len() >= 3, "{log}");
    assert!(
        entries
            .iter()
            .all(|e| e["actor"] == ada_id.as_str() && e["outcome"] == "success")
    );
    let (_, log) = api
        .call(
            "GET",
            &format!("/audit/logs?actor={carol_id}&action=PUT%20/api/tenants/%7Bid%7D/members/%7Buser_id%7D"),
            Some(&ada_t),
            None,
        )
        .await;
    let outcomes: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.contains(&"denied") && outcomes.contains(&"success"),
        "{log}"
    );
}

#[tokio::test]
async fn authenticated_requests_are_rate_limited_per_key_and_session() {
    let api = Api::start(&[
        ("CAIRN_API_RATE_LIMIT", "6"),
        ("CAIRN_API_AUTH_RATE_LIMIT", "1000"),
    ]);
    let admin = first_admin(&api).await;
    let token = admin["access_token"].as_str().unwrap().to_owned();
    // One request of this session's six: the key is made with it.
    let (s, key) = api
        .call(
            "POST",
            "/keys",
            Some(&token),
            Some(json!({"name": "script", "scopes": ["storage:read"]})),
        )
        .await;
    assert_eq!(s, 201, "{key}");
    let raw = key["key"].as_str().unwrap().to_owned();
    let me = |t: String| {
        let http = api.http.clone();
        let url = format!("{}/auth/me", api.base);
        async move {
            http.get(url)
                .header("authorization", format!("Bearer {t}"))
                .send()
                .await
                .unwrap()
        }
    };
    for left in (0..5).rev() {
        let r = me(token.clone()).await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit"], "6");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            left.to_string().as_str()
        );
    }
    let r = me(token.clone()).await;
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    let v: Value = r.json().await.unwrap();
    assert!(error_of(&v).contains("rate limit"), "{v}");
    // The API key has a window of its own, and so does a new session.
    let r = me(raw.clone()).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "5");
    let (s, login) = api
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "root@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(s, 200, "{login}");
    let r = me(login["access_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(r.status().as_u16(), 200);
    // Unauthenticated requests are not counted against anyone.
    assert_eq!(api.call("GET", "/auth/me", None, None).await.0, 401);
}

#[tokio::test]
async fn the_token_signing_key_rotates_without_logging_everyone_out() {
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let admin = first_admin(&api).await;
    let old = admin["access_token"].as_str().unwrap().to_owned();
    let login = || {
        api.call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "root@example.com", "password": "correct horse battery"})),
        )
    };
    // Only admins rotate.
    let bob = register(&api, &old, "bob@example.com", "Bob").await;
    let (s, _) = api
        .call(
            "POST",
            "/auth/jwt-key/rotate",
            bob["access_token"].as_str(),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let (s, v) = api
        .call("POST", "/auth/jwt-key/rotate", Some(&old), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["kid"], 1);
    // A token of the replaced key still works; new ones are signed with the new key.
    assert_eq!(api.call("GET", "/auth/me", Some(&old), None).await.0, 200);
    let (_, l) = login().await;
    let middle = l["access_token"].as_str().unwrap().to_owned();
    assert_ne!(middle, old);
    assert_eq!(
        api.call("GET", "/auth/me", Some(&middle), None).await.0,
        200
    );
    // A second rotation retires the first key: its tokens are refused, the refresh token
    // still gets a fresh access token.
    let (s, v) = api
        .call("POST", "/auth/jwt-key/rotate", Some(&middle), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["kid"], 2);
    let (s, v) = api.call("GET", "/auth/me", Some(&old), None).await;
    assert_eq!(s, 401, "{v}");
    assert!(error_of(&v).contains("rotated"), "{v}");
    assert_eq!(
        api.call("GET", "/auth/me", Some(&middle), None).await.0,
        200
    );
    let (s, r) = api
        .call(
            "POST",
            "/auth/refresh",
            None,
            Some(json!({"refresh_token": admin["refresh_token"]})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let fresh = r["access_token"].as_str().unwrap();
    assert_eq!(api.call("GET", "/auth/me", Some(fresh), None).await.0, 200);
    // A token whose key id was altered is refused.
    let mut parts: Vec<String> = fresh.split('.').map(str::to_owned).collect();
    parts[0] = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        e.encode(br#"{"typ":"JWT","alg":"HS256","kid":"1"}"#)
    };
    let forged = parts.join(".");
    assert_eq!(
        api.call("GET", "/auth/me", Some(&forged), None).await.0,
        401
    );
}

/// A mail server on loopback for the test: speaks enough SMTP to take messages, and hands
/// each one's DATA to the test.
async fn smtp_sink() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 sink.test ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            tx.send(std::mem::take(d)).unwrap();
                            data = None;
                            w.write_all(b"250 queued\r\n").await.unwrap();
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 sink.test\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go on\r\n"
                        }
                        "QUIT" => {
                            w.write_all(b"221 bye\r\n").await.unwrap();
                            break;
                        }
                        _ => b"250 ok\r\n",
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn reset_tokens_are_mailed_when_smtp_is_configured() {
    let (smtp, mut mails) = smtp_sink().await;
    let url = format!("smtp://{smtp}");
    let api = Api::start(&[
        ("CAIRN_SMTP_URL", url.as_str()),
        ("CAIRN_SMTP_FROM", "Cairn <cairn@example.com>"),
        ("CAIRN_API_AUTH_RATE_LIMIT", "1000"),
    ]);
    let admin = first_admin(&api).await;
    let token = admin["access_token"].as_str().unwrap().to_owned();
    // The same answer for an unknown address, and no mail for it.
    let (s, unknown) = api
        .call(
            "POST",
            "/auth/forgot-password",
            None,
            Some(json!({"email": "nobody@example.com"})),
        )
        .await;
    assert_eq!(s, 202);
    let (s, known) = api
        .call(
            "POST",
            "/auth/forgot-password",
            None,
            Some(json!({"email": "Root@Example.com"})),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(unknown, known);
    assert!(
        known["status"].as_str().unwrap().contains("sent"),
        "{known}"
    );
    let mail = tokio::time::timeout(cairn_tests::PATIENCE, mails.recv())
        .await
        .expect("no mail arrived")
        .unwrap();
    // Long lines travel quoted-printable: undo the soft breaks a mail client would.
    let mail = mail.replace("=\n", "").replace("=3D", "=");
    assert!(mail.contains("To: root@example.com"), "{mail}");
    assert!(mail.contains("From: Cairn <cairn@example.com>"), "{mail}");
    assert!(
        mail.contains("Subject: Reset your Cairn password"),
        "{mail}"
    );
    let reset = mail
        .split_whitespace()
        .find(|w| w.len() == 97 && w.as_bytes()[32] == b'.')
        .unwrap_or_else(|| panic!("no token in {mail}"))
        .to_owned();
    // Mailed tokens are not listed for the admin.
    let (_, list) = api
        .call("GET", "/auth/password-resets", Some(&token), None)
        .await;
    assert_eq!(list["resets"].as_array().unwrap().len(), 0, "{list}");
    // The mailed token works, once.
    let body = json!({"token": reset, "new_password": "a brand new password"});
    let (s, v) = api
        .call("POST", "/auth/reset-password", None, Some(body.clone()))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        api.call("POST", "/auth/reset-password", None, Some(body))
            .await
            .0,
        400
    );
    let (s, _) = api
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "root@example.com", "password": "a brand new password"})),
        )
        .await;
    assert_eq!(s, 200);
    // Only the one mail went out.
    assert!(mails.try_recv().is_err());
}

#[test]
fn smtp_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    for (env, says) in [
        (
            vec![("CAIRN_SMTP_URL", "mail.example.com")],
            "not an smtp:// or smtps:// URL",
        ),
        (vec![("CAIRN_SMTP_URL", "smtp://127.0.0.1:25")], "smtp.from"),
    ] {
        let (status, _, err) = cairn_tests::run(
            Path::new(BIN),
            &["serve", "--data", data.to_str().unwrap()],
            &env,
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

#[tokio::test]
async fn expired_access_tokens_are_refused_and_refresh_gets_a_new_one() {
    let api = Api::start(&[("CAIRN_API_ACCESS_TOKEN_TTL", "1")]);
    let admin = first_admin(&api).await;
    assert_eq!(admin["expires_in"], 1);
    let token = admin["access_token"].as_str().unwrap().to_owned();
    assert_eq!(api.call("GET", "/auth/me", Some(&token), None).await.0, 200);
    // Past its expiry (and the 5 s of leeway for clock skew), the token is refused.
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    let v = loop {
        let (s, v) = api.call("GET", "/auth/me", Some(&token), None).await;
        if s == 401 {
            break v;
        }
        assert_eq!(s, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "the token never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(error_of(&v).contains("xpired"), "{v}");
    let (s, r) = api
        .call(
            "POST",
            "/auth/refresh",
            None,
            Some(json!({"refresh_token": admin["refresh_token"]})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let fresh = r["access_token"].as_str().unwrap();
    assert_eq!(api.call("GET", "/auth/me", Some(fresh), None).await.0, 200);
}

#[tokio::test]
async fn rest_storage_buckets_follow_tenants_and_roles() {
    use aws_sdk_s3::primitives::ByteStream;
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &ada_t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();
    let (s, b) = api
        .call(
            "POST",
            "/storage/buckets",
            Some(&ada_t),
            Some(json!({"name": "rest-bucket"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["name"], "rest-bucket");
    assert_eq!(b["is_public"], false);
    assert_eq!(b["versioning"], "off");
    // The same bucket over S3, in Ada's tenant only.
    let root = s3_client(&api, "CAIRNAPITESTKEY00001", "api-test-secret");
    root.head_bucket()
        .bucket("rest-bucket")
        .send()
        .await
        .unwrap();
    let (_, mine) = api
        .call("GET", "/storage/buckets", Some(&ada_t), None)
        .await;
    assert_eq!(mine["buckets"][0]["name"], "rest-bucket", "{mine}");
    let (_, theirs) = api
        .call("GET", "/storage/buckets", Some(&bob_t), None)
        .await;
    assert_eq!(theirs["buckets"].as_array().unwrap().len(), 0, "{theirs}");
    // Bob can neither change nor delete it, and is told it does not exist.
    for (method, path, body) in [
        ("DELETE", "/storage/buckets/rest-bucket", None),
        ("DELETE", "/storage/buckets/rest-bucket?force=true", None),
        (
            "PUT",
            "/storage/buckets/rest-bucket/versioning",
            Some(json!({"enabled": true})),
        ),
    ] {
        let (s, v) = api.call(method, path, Some(&bob_t), body).await;
        assert_eq!(s, 404, "{method} {path}: {v}");
    }
    let (s, _) = api
        .call(
            "POST",
            "/storage/buckets",
            Some(&bob_t),
            Some(json!({"name": "rest-bucket"})),
        )
        .await;
    assert_eq!(s, 409);
    // Versioning on, two versions written over S3.
    let (s, v) = api
        .call(
            "PUT",
            "/storage/buckets/rest-bucket/versioning",
            Some(&ada_t),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["versioning"], "enabled");
    for body in [&b"one"[..], b"two"] {
        root.put_object()
            .bucket("rest-bucket")
            .key("k")
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await
            .unwrap();
    }
    // A key with storage:read lists but does not delete.
    let (_, key) = api
        .call(
            "POST",
            "/keys",
            Some(&ada_t),
            Some(json!({"name": "reader", "scopes": ["storage:read"]})),
        )
        .await;
    let reader = key["key"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call("GET", "/storage/buckets", Some(&reader), None)
            .await
            .0,
        200
    );
    let (s, _) = api
        .call(
            "DELETE",
            "/storage/buckets/rest-bucket?force=true",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(s, 403);
    // Not empty: refused without force; with it, every version goes, then the bucket.
    let (s, v) = api
        .call("DELETE", "/storage/buckets/rest-bucket", Some(&ada_t), None)
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = api
        .call(
            "DELETE",
            "/storage/buckets/rest-bucket?force=true",
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["objects_removed"], 2, "{v}");
    assert!(
        root.head_bucket()
            .bucket("rest-bucket")
            .send()
            .await
            .is_err()
    );
    // Bad input.
    for (body, want) in [
        (json!({"name": "api"}), 400),
        (json!({"name": "Not A Valid Name"}), 400),
        (json!({"is_public": true}), 400),
        (json!({"name": 5}), 400),
    ] {
        let (s, v) = api
            .call("POST", "/storage/buckets", Some(&ada_t), Some(body.clone()))
            .await;
        assert_eq!(s, want, "{body}: {v}");
        error_of(&v);
    }
    assert_eq!(api.call("GET", "/storage/buckets", None, None).await.0, 401);
}

#[tokio::test]
async fn rest_storage_objects_are_the_s3_objects() {
    use aws_sdk_s3::primitives::ByteStream;
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &ada_t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();
    let (s, _) = api
        .call(
            "POST",
            "/storage/buckets",
            Some(&ada_t),
            Some(json!({"name": "docs"})),
        )
        .await;
    assert_eq!(s, 201);
    let root = s3_client(&api, "CAIRNAPITESTKEY00001", "api-test-secret");
    let put = |token: String, key: &str, body: Vec<u8>| {
        let req = api
            .http
            .put(format!("{}/storage/buckets/docs/objects/{key}", api.base))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "text/plain")
            .body(body);
        async move { req.send().await.unwrap() }
    };
    let get = |token: String, key: &str| {
        let req = api
            .http
            .get(format!("{}/storage/buckets/docs/objects/{key}", api.base))
            .header("authorization", format!("Bearer {token}"));
        async move { req.send().await.unwrap() }
    };
    // A small (inline) and a large (chunked) object uploaded over REST, read over S3 and REST.
    let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for (key, body) in [
        ("notes/a.txt", b"hello rest".to_vec()),
        ("big/blob.bin", large.clone()),
    ] {
        let r = put(ada_t.clone(), key, body.clone()).await;
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["bucket"], "docs");
        assert_eq!(v["key"], key);
        assert_eq!(v["size_bytes"], body.len());
        assert_eq!(v["content_type"], "text/plain");
        let got = root
            .get_object()
            .bucket("docs")
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(got.body.collect().await.unwrap().to_vec(), body, "{key}");
        let r = get(ada_t.clone(), key).await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(r.bytes().await.unwrap().to_vec(), body, "{key}");
    }
    // And the other way: written over S3, read over REST.
    root.put_object()
        .bucket("docs")
        .key("from-s3.txt")
        .body(ByteStream::from_static(b"via s3"))
        .send()
        .await
        .unwrap();
    let r = get(ada_t.clone(), "from-s3.txt").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"via s3");
    let (s, list) = api
        .call(
            "GET",
            "/storage/buckets/docs/objects?prefix=notes/",
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(s, 200, "{list}");
    let keys: Vec<&str> = list["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["notes/a.txt"]);
    // Another tenant sees none of it, and writes none of it.
    assert_eq!(
        get(bob_t.clone(), "notes/a.txt").await.status().as_u16(),
        404
    );
    assert_eq!(
        put(bob_t.clone(), "planted.txt", b"x".to_vec())
            .await
            .status()
            .as_u16(),
        404
    );
    let (s, _) = api
        .call("GET", "/storage/buckets/docs/objects", Some(&bob_t), None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call(
            "DELETE",
            "/storage/buckets/docs/objects/notes/a.txt",
            Some(&bob_t),
            None,
        )
        .await;
    assert_eq!(s, 404);
    // A read-only key downloads but does not upload.
    let (_, key) = api
        .call(
            "POST",
            "/keys",
            Some(&ada_t),
            Some(json!({"name": "reader", "scopes": ["storage:read"]})),
        )
        .await;
    let reader = key["key"].as_str().unwrap().to_owned();
    assert_eq!(
        get(reader.clone(), "notes/a.txt").await.status().as_u16(),
        200
    );
    assert_eq!(
        put(reader.clone(), "notes/b.txt", b"x".to_vec())
            .await
            .status()
            .as_u16(),
        403
    );
    // Deleting in a versioned bucket leaves a marker; the versions stay listed.
    api.call(
        "PUT",
        "/storage/buckets/docs/versioning",
        Some(&ada_t),
        Some(json!({"enabled": true})),
    )
    .await;
    put(ada_t.clone(), "notes/a.txt", b"second".to_vec()).await;
    let (s, _) = api
        .call(
            "DELETE",
            "/storage/buckets/docs/objects/notes/a.txt",
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        get(ada_t.clone(), "notes/a.txt").await.status().as_u16(),
        404
    );
    let (_, versions) = api
        .call(
            "GET",
            "/storage/buckets/docs/versions?prefix=notes/",
            Some(&ada_t),
            None,
        )
        .await;
    let markers: Vec<bool> = versions["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["delete_marker"].as_bool().unwrap())
        .collect();
    assert_eq!(markers, [true, false, false], "{versions}");
    // Keys the bucket service refuses are a 4xx, never a 5xx.
    let long = "k".repeat(2000);
    let r = put(ada_t.clone(), &long, b"x".to_vec()).await;
    assert!(r.status().is_client_error(), "{}", r.status());
    // A policy on a key pattern applies to REST downloads as to S3 GETs.
    let (s, pol) = api
        .call(
            "POST",
            "/iam/policies",
            Some(&ada_t),
            Some(json!({"name": "no-big", "statements": [
                {"effect": "Deny", "actions": ["s3:GetObject"], "resources": ["docs/big/*"]}]})),
        )
        .await;
    assert_eq!(s, 201, "{pol}");
    let ada_id = ada["user"]["id"].as_str().unwrap();
    let (s, _) = api
        .call(
            "POST",
            &format!("/iam/policies/{}/attach", pol["id"].as_str().unwrap()),
            Some(&ada_t),
            Some(json!({"user_id": ada_id})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        get(ada_t.clone(), "big/blob.bin").await.status().as_u16(),
        403
    );
    assert_eq!(
        get(ada_t.clone(), "from-s3.txt").await.status().as_u16(),
        200
    );
}

// ---------------------------------------------------------------------------------------------
// Namespaces, files and direct URLs (`/storage`), share links, REST multipart and lifecycle,
// the image store.

impl Api {
    /// A request to the gateway's `/storage` face (not under `/api`).
    fn storage(&self, method: &str, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = self.http.request(
            method.parse().unwrap(),
            format!("http://{}/storage{path}", self.addr),
        );
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req
    }

    /// Status and JSON body of a `/storage` call.
    async fn storage_json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.storage(method, path, token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        // A 204 has no body.
        if status == 204 && text.is_empty() {
            return (status, Value::Null);
        }
        let v =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, v)
    }

    /// Upload `bytes` as the form field `file` named `name` into namespace `ns`.
    async fn upload_file(
        &self,
        token: &str,
        ns: &str,
        name: &str,
        bytes: Vec<u8>,
        overwrite: bool,
    ) -> (u16, Value) {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
        let resp = self
            .storage(
                "POST",
                &format!("/upload?namespace={ns}&overwrite={overwrite}"),
                Some(token),
            )
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// Status and bytes of a GET on the `/storage` face.
    async fn fetch(&self, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
        let resp = self.storage("GET", path, token).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    }
}

fn names_of(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn namespaces_follow_visibility_for_owner_other_user_and_anonymous() {
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &ada_t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();

    for (name, vis) in [("priv-ns", 0), ("unl-ns", 1), ("pub-ns", 2)] {
        let (s, v) = api
            .storage_json(
                "POST",
                "/namespaces",
                Some(&ada_t),
                Some(json!({"name": name, "visibility": vis})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["visibility"], vis);
        assert_eq!(v["hidden"], vis != 2);
        let (s, f) = api
            .upload_file(
                &ada_t,
                name,
                "notes.txt",
                format!("hello from {name}").into_bytes(),
                false,
            )
            .await;
        assert_eq!(s, 201, "{f}");
        assert_eq!(f["path"], "notes.txt");
        assert_eq!(f["namespace"], name);
        assert_eq!(f["size"], 11 + name.len());
    }

    // Listing: the owner sees its three (with counts); others see the public one only.
    let (s, v) = api
        .storage_json("GET", "/namespaces", Some(&ada_t), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(names_of(&v), ["priv-ns", "pub-ns", "unl-ns"]);
    assert!(
        v["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["count"] == 1)
    );
    let owner = v["namespaces"][0]["owner_id"].as_str().unwrap().to_owned();
    assert_eq!(owner.len(), 32);
    for token in [Some(bob_t.as_str()), None] {
        let (s, v) = api.storage_json("GET", "/namespaces", token, None).await;
        assert_eq!(s, 200);
        assert_eq!(names_of(&v), ["pub-ns"], "{token:?}");
    }

    // Files and direct URLs, by who is asking: (namespace, list for others, read for others).
    let cases = [
        ("priv-ns", 404, 404),
        ("unl-ns", 404, 200),
        ("pub-ns", 200, 200),
    ];
    for (ns, list_other, read_other) in cases {
        let (s, v) = api
            .storage_json("GET", &format!("/files?namespace={ns}"), Some(&ada_t), None)
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["files"][0]["name"], "notes.txt");
        let (s, body) = api.fetch(&format!("/{ns}/notes.txt"), Some(&ada_t)).await;
        assert_eq!((s, body), (200, format!("hello from {ns}").into_bytes()));
        for token in [Some(bob_t.as_str()), None] {
            let (s, v) = api
                .storage_json("GET", &format!("/files?namespace={ns}"), token, None)
                .await;
            assert_eq!(s, list_other, "{ns} {token:?}: {v}");
            let (s, _) = api.fetch(&format!("/{ns}/notes.txt"), token).await;
            assert_eq!(s, read_other, "{ns} {token:?}");
        }
    }
    // A private namespace and one that does not exist look the same to outsiders.
    for token in [Some(bob_t.as_str()), None] {
        let private = api.fetch("/priv-ns/notes.txt", token).await;
        let missing = api.fetch("/no-such-ns/notes.txt", token).await;
        assert_eq!(private, missing);
        let private = api
            .storage_json("GET", "/files?namespace=priv-ns", token, None)
            .await;
        let missing = api
            .storage_json("GET", "/files?namespace=no-such-ns", token, None)
            .await;
        assert_eq!(private, missing);
    }
    // Others may not write, re-label or delete, even where they may read.
    let (s, _) = api
        .upload_file(&bob_t, "pub-ns", "mine.txt", b"x".to_vec(), false)
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .storage_json(
            "PUT",
            "/namespaces/pub-ns",
            Some(&bob_t),
            Some(json!({"visibility": 0})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .storage_json("DELETE", "/namespaces/pub-ns", Some(&bob_t), None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .storage_json(
            "DELETE",
            "/delete?name=notes.txt&namespace=pub-ns",
            Some(&bob_t),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .upload_file("not-a-token", "pub-ns", "x.txt", b"x".to_vec(), false)
        .await;
    assert_eq!(s, 401);

    // The owner changes visibility: private becomes public and is listed for everyone.
    let (s, v) = api
        .storage_json(
            "PUT",
            "/namespaces/priv-ns",
            Some(&ada_t),
            Some(json!({"visibility": 2})),
        )
        .await;
    assert_eq!((s, v["visibility"].clone()), (200, json!(2)), "{v}");
    let (_, v) = api.storage_json("GET", "/namespaces", None, None).await;
    assert_eq!(names_of(&v), ["priv-ns", "pub-ns"]);
    let (s, _) = api.fetch("/priv-ns/notes.txt", None).await;
    assert_eq!(s, 200);

    // Bad names and values.
    for (body, want) in [
        (json!({"name": "My_Files"}), "bucket name"),
        (json!({"name": "files"}), "reserved"),
        (json!({"name": "a/b"}), "letters, digits"),
        (json!({"name": "ok-name", "visibility": 3}), "visibility"),
    ] {
        let (s, v) = api
            .storage_json("POST", "/namespaces", Some(&ada_t), Some(body.clone()))
            .await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(error_of(&v).contains(want), "{body}: {v}");
    }
    let (s, v) = api
        .storage_json(
            "POST",
            "/namespaces",
            Some(&ada_t),
            Some(json!({"name": "pub-ns"})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, _) = api
        .storage_json(
            "POST",
            "/namespaces",
            None,
            Some(json!({"name": "anon-ns"})),
        )
        .await;
    assert_eq!(s, 401);

    // Overwrite: refused without the flag (and nothing changes), atomic with it.
    let (s, v) = api
        .upload_file(&ada_t, "pub-ns", "notes.txt", b"second".to_vec(), false)
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(error_of(&v).contains("overwrite=true"));
    assert_eq!(
        api.fetch("/pub-ns/notes.txt", None).await.1,
        b"hello from pub-ns"
    );
    let (s, _) = api
        .upload_file(&ada_t, "pub-ns", "notes.txt", b"second".to_vec(), true)
        .await;
    assert_eq!(s, 201);
    assert_eq!(api.fetch("/pub-ns/notes.txt", None).await.1, b"second");

    // The same bytes over S3, both ways.
    let root = s3_client(&api, "CAIRNAPITESTKEY00001", "api-test-secret");
    let got = root
        .get_object()
        .bucket("pub-ns")
        .key("notes.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        b"second"
    );
    root.put_object()
        .bucket("unl-ns")
        .key("docs/from-s3.html")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"<b>s3</b>",
        ))
        .send()
        .await
        .unwrap();
    let (_, v) = api
        .storage_json("GET", "/files?namespace=unl-ns", Some(&ada_t), None)
        .await;
    let paths: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["docs/from-s3.html", "notes.txt"]);
    assert_eq!(v["files"][0]["name"], "from-s3.html");

    // Direct URLs: inline with the extension's type (and no script runs), or an attachment.
    let resp = api
        .storage("GET", "/unl-ns/docs/from-s3.html", None)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/html");
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("inline; filename=\"from-s3.html\"")
    );
    assert_eq!(h["content-security-policy"], "sandbox");
    assert_eq!(h["x-content-type-options"], "nosniff");
    for path in [
        "/download/unl-ns/docs/from-s3.html",
        "/download?name=docs/from-s3.html&namespace=unl-ns",
    ] {
        let resp = api.storage("GET", path, None).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert!(
            resp.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("attachment; filename=\"from-s3.html\"")
        );
        assert_eq!(resp.bytes().await.unwrap().as_ref(), b"<b>s3</b>");
    }

    // Ranges, validators and HEAD.
    let url = "/pub-ns/notes.txt";
    let resp = api
        .storage("GET", url, None)
        .header("range", "bytes=1-3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-range"], "bytes 1-3/6");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"eco");
    let resp = api
        .storage("GET", url, None)
        .header("range", "bytes=-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"nd");
    let resp = api
        .storage("GET", url, None)
        .header("range", "bytes=6-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(resp.headers()["content-range"], "bytes */6");
    let resp = api.storage("HEAD", url, None).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "6");
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let modified = resp.headers()["last-modified"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", md5_hex(b"second")));
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = api
        .storage("GET", url, None)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    let resp = api
        .storage("GET", url, None)
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = api
        .storage("GET", url, None)
        .header("if-modified-since", &modified)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    let resp = api
        .storage("GET", url, None)
        .header("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = api
        .storage("GET", url, None)
        .header("if-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 412);

    // Path tricks are refused before anything is read or written.
    let raw = |path: &str| {
        let addr = api.addr;
        let path = path.to_owned();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    for path in [
        "/storage/pub-ns/a%2Fb",
        "/storage/pub-ns/a%2fnotes.txt",
        "/storage/pub-ns/a%00b",
        "/storage/pub-ns/a/../notes.txt",
        "/storage/pub-ns/%2e%2e/notes.txt",
        "/storage/download/pub-ns/..%5cnotes.txt",
        "/storage/download?name=../notes.txt&namespace=pub-ns",
        "/storage/download?name=a%00b&namespace=pub-ns",
    ] {
        let out = raw(path).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{path}: {out}");
        assert!(out.contains("\"error\""), "{path}: {out}");
    }
    for name in ["../escape.txt", "a/../../b", "/abs", "a\\b"] {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name(name.to_owned()),
        );
        let resp = api
            .storage("POST", "/upload?namespace=pub-ns", Some(&ada_t))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{name}");
    }
    let (s, _) = api
        .storage_json(
            "POST",
            "/upload?namespace=pub-ns&path=a%00b",
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(s, 400);
    let (_, v) = api
        .storage_json("GET", "/files?namespace=pub-ns", None, None)
        .await;
    assert_eq!(
        v["files"].as_array().unwrap().len(),
        1,
        "nothing was written: {v}"
    );

    // Deleting files and namespaces.
    let (s, _) = api
        .storage_json(
            "DELETE",
            "/delete?name=notes.txt&namespace=pub-ns",
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(api.fetch("/pub-ns/notes.txt", None).await.0, 404);
    let (s, _) = api
        .storage_json(
            "DELETE",
            "/delete?name=notes.txt&namespace=pub-ns",
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = api
        .storage_json("DELETE", "/namespaces/unl-ns", Some(&ada_t), None)
        .await;
    assert_eq!((s, v["files_removed"].clone()), (200, json!(2)), "{v}");
    assert!(root.head_bucket().bucket("unl-ns").send().await.is_err());

    // The data plane at a glance, for signed-in callers.
    let (s, v) = api.storage_json("GET", "/status", Some(&bob_t), None).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["chunkservers"].as_u64().unwrap() >= 1 && v["live_servers"].as_u64().unwrap() >= 1,
        "{v}"
    );
    assert!(v["capacity_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["under_replicated_chunks"], 0);
    let (s, _) = api.storage_json("GET", "/status", None, None).await;
    assert_eq!(s, 401);
}

fn md5_hex(b: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The path of a share link's URL (`/storage/share/...`).
fn share_path(v: &Value) -> String {
    let url = v["url"].as_str().unwrap_or_else(|| panic!("no url in {v}"));
    let at = url.find("/storage/share/").unwrap();
    url[at + "/storage".len()..].to_owned()
}

#[tokio::test]
async fn share_links_work_until_they_expire_or_are_revoked_and_refuse_tampering() {
    let api = Api::start(&[
        ("CAIRN_API_AUTH_RATE_LIMIT", "1000"),
        ("CAIRN_SHARES_MAX_LINKS", "3"),
    ]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &ada_t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();
    let (s, _) = api
        .storage_json(
            "POST",
            "/namespaces",
            Some(&ada_t),
            Some(json!({"name": "private-docs"})),
        )
        .await;
    assert_eq!(s, 201);
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (s, _) = api
        .upload_file(&ada_t, "private-docs", "report.pdf", body.clone(), false)
        .await;
    assert_eq!(s, 201);
    assert_eq!(api.fetch("/private-docs/report.pdf", None).await.0, 404);

    // A link opens the private file without signing in, with ranges.
    let (s, link) = api
        .call(
            "POST",
            "/shares",
            Some(&ada_t),
            Some(json!({"namespace": "private-docs", "path": "report.pdf", "expires_in": 3600})),
        )
        .await;
    assert_eq!(s, 201, "{link}");
    assert!(
        link["url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://{}/storage/share/", api.addr))
    );
    let expires = time_of(&link["expires_at"]);
    assert!(
        expires >= now_s() + 3590 && expires <= now_s() + 3610,
        "{link}"
    );
    let path = share_path(&link);
    let (s, got) = api.fetch(&path, None).await;
    assert_eq!((s, got.len()), (200, body.len()));
    assert_eq!(got, body);
    let resp = api
        .storage("GET", &path, None)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[10..20]);
    let resp = api
        .storage("GET", &format!("{path}?download=true"), None)
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );

    // Any changed character is refused, and so is a longer expiry with the old signature.
    let token = path.trim_start_matches("/share/").to_owned();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let flip = |s: &str, i: usize| {
        let mut b = s.as_bytes().to_vec();
        b[i] = if b[i] == b'0' { b'1' } else { b'0' };
        String::from_utf8(b).unwrap()
    };
    let later = format!(
        "{:x}",
        u64::from_str_radix(parts[1], 16).unwrap() + 86_400_000
    );
    for bad in [
        format!("{}.{}.{}", flip(parts[0], 5), parts[1], parts[2]),
        format!("{}.{later}.{}", parts[0], parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], flip(parts[2], 0)),
        format!("{}.{}", parts[0], parts[1]),
        "garbage".to_owned(),
    ] {
        let (s, v) = api
            .storage_json("GET", &format!("/share/{bad}"), None, None)
            .await;
        assert_eq!(s, 403, "{bad}: {v}");
        assert!(error_of(&v).contains("not valid"));
    }

    // Listing and revocation: another tenant neither sees nor revokes the link.
    let (s, v) = api.call("GET", "/shares", Some(&ada_t), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["shares"].as_array().unwrap().len(), 1);
    assert_eq!(v["shares"][0]["path"], "report.pdf");
    assert_eq!(v["shares"][0]["url"], link["url"]);
    let (_, v) = api.call("GET", "/shares", Some(&bob_t), None).await;
    assert_eq!(v["shares"].as_array().unwrap().len(), 0);
    let id = link["id"].as_str().unwrap();
    let (s, _) = api
        .call("DELETE", &format!("/shares/{id}"), Some(&bob_t), None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call(
            "POST",
            "/shares",
            Some(&bob_t),
            Some(json!({"namespace": "private-docs", "path": "report.pdf"})),
        )
        .await;
    assert_eq!(s, 404, "another tenant's file cannot be shared");
    let (s, v) = api
        .call("DELETE", &format!("/shares/{id}"), Some(&ada_t), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api.storage_json("GET", &path, None, None).await;
    assert_eq!(s, 410, "{v}");
    assert!(error_of(&v).contains("revoked"));
    let (s, _) = api
        .call("DELETE", &format!("/shares/{id}"), Some(&ada_t), None)
        .await;
    assert_eq!(s, 404);

    // Expiry.
    let (s, short) = api
        .call(
            "POST",
            "/shares",
            Some(&ada_t),
            Some(json!({"namespace": "private-docs", "path": "report.pdf", "expires_in": 1})),
        )
        .await;
    assert_eq!(s, 201, "{short}");
    let short_path = share_path(&short);
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    loop {
        let (s, got) = api.fetch(&short_path, None).await;
        if s == 410 {
            let v: Value = serde_json::from_slice(&got).unwrap();
            assert!(error_of(&v).contains("expired"), "{v}");
            break;
        }
        assert_eq!(s, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "the link never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Bad requests, and the per-tenant limit of active links (3 here; the expired one no
    // longer counts).
    for (body, status) in [
        (
            json!({"namespace": "private-docs", "path": "missing.pdf"}),
            404,
        ),
        (
            json!({"namespace": "private-docs", "path": "../report.pdf"}),
            400,
        ),
        (
            json!({"namespace": "private-docs", "path": "report.pdf", "expires_in": 0}),
            400,
        ),
        (
            json!({"namespace": "no-such-ns", "path": "report.pdf"}),
            404,
        ),
    ] {
        let (s, v) = api
            .call("POST", "/shares", Some(&ada_t), Some(body.clone()))
            .await;
        assert_eq!(s, status, "{body}: {v}");
    }
    for _ in 0..3 {
        let (s, v) = api
            .call(
                "POST",
                "/shares",
                Some(&ada_t),
                Some(json!({"namespace": "private-docs", "path": "report.pdf"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = api
        .call(
            "POST",
            "/shares",
            Some(&ada_t),
            Some(json!({"namespace": "private-docs", "path": "report.pdf"})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(error_of(&v).contains("limit is 3"), "{v}");

    // A link to a deleted file says so.
    let (s, _) = api
        .storage_json(
            "DELETE",
            "/delete?name=report.pdf&namespace=private-docs",
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = api.call("GET", "/shares", Some(&ada_t), None).await;
    let live = share_path(&v["shares"][0]);
    let (s, _) = api.storage_json("GET", &live, None, None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn rest_storage_multipart_lifecycle_and_health() {
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let t = ada["access_token"].as_str().unwrap().to_owned();
    let (s, _) = api
        .call(
            "POST",
            "/storage/buckets",
            Some(&t),
            Some(json!({"name": "parts"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, up) = api
        .call(
            "POST",
            "/storage/buckets/parts/uploads",
            Some(&t),
            Some(json!({"key": "big/file.bin", "content_type": "application/x-test"})),
        )
        .await;
    assert_eq!(s, 201, "{up}");
    let id = up["upload_id"].as_str().unwrap().to_owned();
    let one: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 253) as u8).collect();
    let two = b"the last part may be small".to_vec();
    let mut etags = Vec::new();
    for (n, part) in [(1, one.clone()), (2, two.clone())] {
        let resp = api
            .http
            .put(format!(
                "{}/storage/buckets/parts/uploads/{id}/parts/{n}?key=big/file.bin",
                api.base
            ))
            .header("authorization", format!("Bearer {t}"))
            .body(part.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["etag"], md5_hex(&part));
        assert_eq!(v["size_bytes"], part.len());
        etags.push(v["etag"].as_str().unwrap().to_owned());
    }
    // Parts out of order, or with a wrong ETag, are refused; the upload stays.
    for parts in [
        json!([{"part_number": 2, "etag": etags[1]}, {"part_number": 1, "etag": etags[0]}]),
        json!([{"part_number": 1, "etag": etags[1]}, {"part_number": 2, "etag": etags[1]}]),
    ] {
        let (s, v) = api
            .call(
                "POST",
                &format!("/storage/buckets/parts/uploads/{id}/complete"),
                Some(&t),
                Some(json!({"key": "big/file.bin", "parts": parts})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
    }
    let (s, obj) = api
        .call(
            "POST",
            &format!("/storage/buckets/parts/uploads/{id}/complete"),
            Some(&t),
            Some(json!({"key": "big/file.bin", "parts": [
                {"part_number": 1, "etag": etags[0]}, {"part_number": 2, "etag": etags[1]}
            ]})),
        )
        .await;
    assert_eq!(s, 201, "{obj}");
    assert_eq!(obj["size_bytes"], one.len() + two.len());
    assert_eq!(obj["content_type"], "application/x-test");
    assert!(
        obj["checksum"]["md5"].as_str().unwrap().ends_with("-2"),
        "{obj}"
    );
    let whole = [one.clone(), two.clone()].concat();
    let resp = api
        .http
        .get(format!(
            "{}/storage/buckets/parts/objects/big/file.bin",
            api.base
        ))
        .header("authorization", format!("Bearer {t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().as_ref() == whole.as_slice());
    let root = s3_client(&api, "CAIRNAPITESTKEY00001", "api-test-secret");
    let got = root
        .get_object()
        .bucket("parts")
        .key("big/file.bin")
        .send()
        .await
        .unwrap();
    assert!(got.e_tag().unwrap().ends_with("-2\""));
    assert!(got.body.collect().await.unwrap().into_bytes().as_ref() == whole.as_slice());

    // Abort: the upload is gone, and so is its id.
    let (_, up2) = api
        .call(
            "POST",
            "/storage/buckets/parts/uploads",
            Some(&t),
            Some(json!({"key": "gone"})),
        )
        .await;
    let id2 = up2["upload_id"].as_str().unwrap().to_owned();
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/storage/buckets/parts/uploads/{id2}?key=gone"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let resp = api
        .http
        .put(format!(
            "{}/storage/buckets/parts/uploads/{id2}/parts/1?key=gone",
            api.base
        ))
        .header("authorization", format!("Bearer {t}"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    for (path, status) in [
        (
            format!("/storage/buckets/parts/uploads/{id2}?key=gone"),
            404,
        ),
        (
            "/storage/buckets/parts/uploads/not-an-id?key=gone".to_owned(),
            404,
        ),
        (format!("/storage/buckets/parts/uploads/{id2}"), 400),
    ] {
        let (s, v) = api.call("DELETE", &path, Some(&t), None).await;
        assert_eq!(s, status, "{path}: {v}");
    }

    // Lifecycle rules: the same configuration S3 reads.
    let (s, rule) = api
        .call(
            "POST",
            "/storage/buckets/parts/lifecycle",
            Some(&t),
            Some(json!({"prefix": "tmp/", "expiration_days": 7})),
        )
        .await;
    assert_eq!(s, 201, "{rule}");
    let rule_id = rule["id"].as_str().unwrap().to_owned();
    let (s, v) = api
        .call(
            "POST",
            "/storage/buckets/parts/lifecycle",
            Some(&t),
            Some(json!({"prefix": "x/", "expiration_days": 0})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api
        .call("GET", "/storage/buckets/parts/lifecycle", Some(&t), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["rules"],
        json!([{"id": rule_id, "prefix": "tmp/", "expiration_days": 7, "enabled": true}])
    );
    let lc = root
        .get_bucket_lifecycle_configuration()
        .bucket("parts")
        .send()
        .await
        .unwrap();
    let r = &lc.rules()[0];
    assert_eq!(r.id(), Some(rule_id.as_str()));
    assert_eq!(r.expiration().unwrap().days(), Some(7));
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/storage/buckets/parts/lifecycle/{rule_id}"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/storage/buckets/parts/lifecycle/{rule_id}"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(s, 404);
    assert!(
        root.get_bucket_lifecycle_configuration()
            .bucket("parts")
            .send()
            .await
            .is_err()
    );

    let (s, v) = api.call("GET", "/storage/health", Some(&t), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["healthy"], true, "{v}");
    assert!(v["live_servers"].as_u64().unwrap() >= 1);
    let (s, _) = api.call("GET", "/storage/health", None, None).await;
    assert_eq!(s, 401);
}

/// A qcow2 image made by the real `qemu-img`.
fn qcow2(dir: &Path, name: &str, size: &str) -> Vec<u8> {
    let path = dir.join(name);
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-f", "qcow2", path.to_str().unwrap(), size])
        .output()
        .expect("qemu-img (Debian's qemu-utils) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(path).unwrap()
}

async fn upload_image(api: &Api, token: &str, id: &str, bytes: Vec<u8>) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name("disk.img"),
    );
    let resp = api
        .http
        .post(format!("{}/images/{id}/upload", api.base))
        .header("authorization", format!("Bearer {token}"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// A one-file HTTP server on loopback: every request gets `body` (or a 404 for other paths).
async fn serve_file(body: Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = std::sync::Arc::new(body);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let resp = if line.starts_with("GET /disk.qcow2 ") {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&body);
                    r
                } else if line.starts_with("GET /moved ") {
                    b"HTTP/1.1 302 Found\r\nlocation: /disk.qcow2\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
                } else {
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_vec()
                };
                let _ = s.write_all(&resp).await;
            });
        }
    });
    addr
}

async fn image_status(api: &Api, token: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    loop {
        let (s, v) = api
            .call("GET", &format!("/images/{id}"), Some(token), None)
            .await;
        assert_eq!(s, 200, "{v}");
        if v["status"] != "PENDING" {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the import never finished: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn image_store_takes_real_images_refuses_others_and_imports_by_url() {
    let api = Api::start(&[
        ("CAIRN_API_AUTH_RATE_LIMIT", "1000"),
        ("CAIRN_IMAGES_MAX_SIZE", "1MiB"),
    ]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &ada_t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let disk = qcow2(dir.path(), "disk.qcow2", "64M");

    let register_image = |token: String, body: Value| {
        let api = &api;
        async move {
            let (s, v) = api.call("POST", "/images", Some(&token), Some(body)).await;
            assert_eq!(s, 201, "{v}");
            assert_eq!(v["status"], "PENDING");
            v["id"].as_str().unwrap().to_owned()
        }
    };
    let a = register_image(
        ada_t.clone(),
        json!({"name": "debian", "description": "Debian 13", "os": "linux", "version": "13", "is_public": true, "format": "qcow2"}),
    )
    .await;
    let (s, v) = upload_image(&api, &ada_t, &a, disk.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "ACTIVE");
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["virtual_size"], 64u64 << 20);
    assert_eq!(v["size_bytes"], disk.len());
    assert_eq!(
        v["checksum"]["blake3"],
        blake3::hash(&disk).to_hex().as_str()
    );

    // Not an image, or not the declared format: refused, and the image stays as it was.
    let b = register_image(ada_t.clone(), json!({"name": "raw-one", "format": "raw"})).await;
    let (s, v) = upload_image(&api, &ada_t, &b, b"just some text, not a disk".repeat(100)).await;
    assert_eq!(s, 400, "{v}");
    assert!(error_of(&v).contains("not a disk image"));
    let (s, v) = upload_image(&api, &ada_t, &b, disk.clone()).await;
    assert_eq!(s, 400, "{v}");
    assert!(error_of(&v).contains("declared raw"), "{v}");
    // Larger than images.max_size (1 MiB here): refused, with the limit named.
    assert!(
        disk.len() < 1 << 20,
        "a fresh qcow2 is small: {}",
        disk.len()
    );
    let mut big = vec![0u8; 2 << 20];
    big[510] = 0x55;
    big[511] = 0xAA;
    let (s, v) = upload_image(&api, &ada_t, &b, big).await;
    assert_eq!(s, 413, "{v}");
    assert!(error_of(&v).contains("1048576"), "{v}");
    let (_, v) = api
        .call("GET", &format!("/images/{b}"), Some(&ada_t), None)
        .await;
    assert_eq!(v["status"], "PENDING");
    let (s, v) = api
        .call(
            "POST",
            "/images",
            Some(&ada_t),
            Some(json!({"name": "x", "format": "vmdk"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = api
        .call("POST", "/images", Some(&ada_t), Some(json!({"name": ""})))
        .await;
    assert_eq!(s, 400);

    // The same content twice is stored once; deleting one image leaves the other whole.
    let c = register_image(ada_t.clone(), json!({"name": "debian-copy"})).await;
    let (s, v) = upload_image(&api, &ada_t, &c, disk.clone()).await;
    assert_eq!(s, 200, "{v}");
    let root = s3_client(&api, "CAIRNAPITESTKEY00001", "api-test-secret");
    let listed = root.list_buckets().send().await.unwrap();
    assert!(
        listed
            .buckets()
            .iter()
            .all(|b| b.name() != Some("cairn-images")),
        "the system bucket is nobody's"
    );
    let r = root
        .get_object()
        .bucket("cairn-images")
        .key(blake3::hash(&disk).to_hex().as_str())
        .send()
        .await;
    assert_eq!(s3_code(&r).as_deref(), Some("NoSuchBucket"));
    let r = root.create_bucket().bucket("cairn-images").send().await;
    assert!(r.is_err(), "no one may take the system bucket's name");
    let (s, _) = api
        .call("DELETE", &format!("/images/{a}"), Some(&ada_t), None)
        .await;
    assert_eq!(s, 200);
    let resp = api
        .http
        .get(format!("{}/images/{c}/download", api.base))
        .header("authorization", format!("Bearer {ada_t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().as_ref() == disk.as_slice());
    let (s, _) = api
        .call("GET", &format!("/images/{a}"), Some(&ada_t), None)
        .await;
    assert_eq!(s, 404);

    // Users see their own and public images.
    let p = register_image(
        ada_t.clone(),
        json!({"name": "public-one", "is_public": true}),
    )
    .await;
    let (s, _) = upload_image(&api, &ada_t, &p, disk.clone()).await;
    assert_eq!(s, 200);
    let (_, v) = api.call("GET", "/images", Some(&bob_t), None).await;
    let names: Vec<&str> = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["public-one"]);
    let (s, _) = api
        .call("GET", &format!("/images/{c}"), Some(&bob_t), None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call("DELETE", &format!("/images/{p}"), Some(&bob_t), None)
        .await;
    assert_eq!(s, 403);
    let (s, _) = upload_image(&api, &bob_t, &p, disk.clone()).await;
    assert_eq!(s, 403);
    let resp = api
        .http
        .get(format!("{}/images/{p}/download", api.base))
        .header("authorization", format!("Bearer {bob_t}"))
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"QFI\xfb");

    // Imports: from a local server (an admin allowing a private address), through a redirect.
    let server = serve_file(disk.clone()).await;
    for path in ["/disk.qcow2", "/moved"] {
        let (s, v) = api
            .call(
                "POST",
                "/images/import",
                Some(&ada_t),
                Some(json!({"url": format!("http://{server}{path}"), "name": "imported", "format": "qcow2", "allow_private": true})),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["status"], "PENDING");
        let v = image_status(&api, &ada_t, v["id"].as_str().unwrap()).await;
        assert_eq!(v["status"], "ACTIVE", "{v}");
        assert_eq!(v["virtual_size"], 64u64 << 20);
        assert_eq!(v["source_url"], format!("http://{server}{path}"));
    }
    // Failures reach FAILED with the reason.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (url, private, reason) in [
        (
            format!("http://{server}/disk.qcow2"),
            false,
            "private or loopback",
        ),
        (format!("http://{server}/missing"), true, "404"),
        (
            format!("http://{closed}/disk.qcow2"),
            true,
            "cannot connect",
        ),
    ] {
        let (s, v) = api
            .call(
                "POST",
                "/images/import",
                Some(&ada_t),
                Some(json!({"url": url, "name": "bad", "allow_private": private})),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let v = image_status(&api, &ada_t, v["id"].as_str().unwrap()).await;
        assert_eq!(v["status"], "FAILED", "{v}");
        assert!(v["reason"].as_str().unwrap().contains(reason), "{url}: {v}");
    }
    for (body, status) in [
        (json!({"url": "ftp://example.com/x.img", "name": "x"}), 400),
        (json!({"url": "file:///etc/passwd", "name": "x"}), 400),
        (json!({"url": "not a url", "name": "x"}), 400),
        (
            json!({"url": format!("http://{server}/disk.qcow2"), "name": "x", "allow_private": true}),
            403,
        ),
    ] {
        let token = if status == 403 { &bob_t } else { &ada_t };
        let (s, v) = api
            .call("POST", "/images/import", Some(token), Some(body.clone()))
            .await;
        assert_eq!(s, status, "{body}: {v}");
    }
}

/// Anonymous resident memory of a process (heap and stacks: what buffering would grow; the
/// page cache of memory-mapped chunk files is not counted), from `/proc/PID/status`.
fn anon_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Samples a process's anonymous memory every 10 ms until dropped; the highest seen.
struct MemoryWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemoryWatch {
    fn start(pid: u32) -> MemoryWatch {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(anon_rss(pid)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(anon_rss(pid), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        MemoryWatch {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[tokio::test]
async fn a_one_gib_upload_streams_through_in_bounded_memory() {
    use futures::StreamExt;
    const SIZE: u64 = 1 << 30;
    const PIECE: usize = 1 << 20;
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let t = ada["access_token"].as_str().unwrap().to_owned();
    let (s, _) = api
        .storage_json(
            "POST",
            "/namespaces",
            Some(&t),
            Some(json!({"name": "big"})),
        )
        .await;
    assert_eq!(s, 201);
    let before = anon_rss(api.pid());

    // 1 GiB of generated bytes, never held whole by the test either.
    let piece = |i: u64| -> bytes::Bytes {
        let mut b = vec![0u8; PIECE];
        for (j, x) in b.iter_mut().enumerate() {
            *x = ((i as usize * 31 + j * 7) % 251) as u8;
        }
        b.into()
    };
    let pieces = SIZE / PIECE as u64;
    let mut expected = blake3::Hasher::new();
    for i in 0..pieces {
        expected.update(&piece(i));
    }
    let watch = MemoryWatch::start(api.pid());
    let stream = futures::stream::iter(0..pieces).map(move |i| Ok::<_, std::io::Error>(piece(i)));
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), SIZE)
            .file_name("one.gib");
    let sending = api
        .storage("POST", "/upload?namespace=big", Some(&t))
        .header("x-file-size", SIZE.to_string())
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send();
    let sending = tokio::spawn(sending);
    // Meanwhile the server reports the upload's progress against X-File-Size.
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    loop {
        let (s, v) = api.storage_json("GET", "/uploads", Some(&t), None).await;
        assert_eq!(s, 200, "{v}");
        if let Some(u) = v["uploads"].as_array().unwrap().first()
            && u["received_bytes"].as_u64().unwrap() > 0
        {
            assert_eq!(u["path"], "one.gib");
            assert_eq!(u["namespace"], "big");
            assert_eq!(u["total_bytes"], SIZE);
            assert!(u["percent"].as_u64().unwrap() <= 100, "{u}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress reported: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let resp = sending.await.unwrap().unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let upload_peak = watch.peak();
    let (_, v) = api.storage_json("GET", "/uploads", Some(&t), None).await;
    assert_eq!(v["uploads"], json!([]), "a finished upload is off the list");

    let watch = MemoryWatch::start(api.pid());
    let resp = api
        .storage("GET", "/big/one.gib", Some(&t))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], SIZE.to_string());
    let mut got = blake3::Hasher::new();
    let mut len = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(b) = body.next().await {
        let b = b.unwrap();
        len += b.len() as u64;
        got.update(&b);
    }
    let download_peak = watch.peak();
    assert_eq!(len, SIZE);
    assert_eq!(got.finalize(), expected.finalize());
    // The whole server (gateway, master and chunkserver in one process) grew by far less than
    // the object: bodies stream, they are never buffered whole.
    eprintln!(
        "anonymous memory: {} MiB before, at most {} MiB uploading and {} MiB downloading 1 GiB",
        before >> 20,
        upload_peak >> 20,
        download_peak >> 20
    );
    for (what, peak) in [("upload", upload_peak), ("download", download_peak)] {
        assert!(
            peak < before + 256 * 1024 * 1024,
            "anonymous memory during the {what}: {} MiB at most, before: {} MiB",
            peak >> 20,
            before >> 20
        );
    }
}

/// Every route of the gateway's own faces: `/api` (from the OpenAPI document) and `/storage`.
async fn every_route(api: &Api) -> Vec<(String, String)> {
    let (s, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, 200);
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    for (m, p) in [
        ("GET", "/storage/namespaces"),
        ("POST", "/storage/namespaces"),
        ("PUT", "/storage/namespaces/{name}"),
        ("DELETE", "/storage/namespaces/{name}"),
        ("GET", "/storage/files"),
        ("POST", "/storage/upload"),
        ("GET", "/storage/uploads"),
        ("GET", "/storage/download"),
        ("DELETE", "/storage/delete"),
        ("GET", "/storage/status"),
        ("GET", "/storage/share/{token}"),
        ("GET", "/storage/download/{namespace}/{path}"),
        ("GET", "/storage/{namespace}/{path}"),
        ("HEAD", "/storage/{namespace}/{path}"),
    ] {
        routes.push((m.to_owned(), p.to_owned()));
    }
    assert!(routes.len() > 60, "{routes:?}");
    routes
}

#[tokio::test]
async fn every_route_answers_malformed_input_with_a_4xx_and_loses_nothing() {
    let api = Api::start(&[
        ("CAIRN_API_AUTH_RATE_LIMIT", "0"),
        ("CAIRN_API_RATE_LIMIT", "0"),
    ]);
    let ada = first_admin(&api).await;
    let t = ada["access_token"].as_str().unwrap().to_owned();
    // What must survive the sweep: a bucket with an object, a namespace with a file.
    let (s, _) = api
        .storage_json(
            "POST",
            "/namespaces",
            Some(&t),
            Some(json!({"name": "keep", "visibility": 1})),
        )
        .await;
    assert_eq!(s, 201);
    let kept = b"precious bytes".to_vec();
    let (s, _) = api
        .upload_file(&t, "keep", "file.txt", kept.clone(), false)
        .await;
    assert_eq!(s, 201);
    let users_before = api.call("GET", "/auth/me", Some(&t), None).await;

    // Path parameters that name nothing real: traversal, encoded separators and NUL, a very
    // long one, non-ASCII, and plain garbage.
    let params = [
        "..%2F..%2Fetc%2Fpasswd",
        "a%00b",
        "%2e%2e",
        &"x".repeat(2000),
        "%FF%FE",
    ];
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("no body", Vec::new()),
        ("truncated JSON", b"{\"name\": ".to_vec()),
        ("wrong types", br#"{"name": 5, "email": [], "password": {}, "visibility": "x", "enabled": "yes", "expires_in": -1, "url": 7, "parts": "no", "key": null}"#.to_vec()),
        ("invalid UTF-8", b"{\"name\": \"\xff\xfe\"}".to_vec()),
        ("deep nesting", format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes()),
        ("huge", vec![b' '; 3 << 20]),
    ];
    // A fresh connection per request: a server that refuses a body without reading it closes
    // the connection, and a pooled one would fail the next request for the wrong reason.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut checked = 0usize;
    for (method, route) in every_route(&api).await {
        // Logging out and rotating the signing key need no body: they would end the session
        // the sweep signs with (both are tested on their own above).
        if route == "/api/auth/logout" || route == "/api/auth/jwt-key/rotate" {
            continue;
        }
        for param in params {
            let mut path = route.clone();
            for name in [
                "{name}",
                "{key}",
                "{id}",
                "{number}",
                "{token}",
                "{namespace}",
                "{path}",
            ] {
                path = path.replace(name, param);
            }
            let url = format!("http://{}{path}", api.addr);
            for (what, body) in &bodies {
                for token in [Some(t.as_str()), None] {
                    let mut req = http
                        .request(method.parse().unwrap(), &url)
                        .header("content-type", "application/json");
                    if let Some(t) = token {
                        req = req.header("authorization", format!("Bearer {t}"));
                    }
                    let resp = match req.body(body.clone()).send().await {
                        Ok(r) => r,
                        // A route that answers before reading a 3 MiB body may close the
                        // connection while it is still being sent: refused, not stored.
                        Err(e) if *what == "huge" && e.is_request() => {
                            checked += 1;
                            continue;
                        }
                        Err(e) => panic!(
                            "{method} {url} with {what}: {e:?}\nserver log:\n{}",
                            api._p
                                .log()
                                .lines()
                                .rev()
                                .take(30)
                                .collect::<Vec<_>>()
                                .join("\n")
                        ),
                    };
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    // `..` segments are resolved by the client: what reached the server may
                    // be another face's path (S3 answers in XML, and 501 NotImplemented for an
                    // operation it does not have, as AWS does).
                    let reached = reqwest::Url::parse(&url).unwrap().path().to_owned();
                    let own = reached.starts_with("/api/") || reached.starts_with("/storage/");
                    assert!(
                        status < 500 || (status == 501 && !own),
                        "{method} {url} with {what} (token: {}): {status} {text}",
                        token.is_some()
                    );
                    if status >= 400 && method != "HEAD" && own {
                        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
                            panic!("{method} {url} with {what}: not JSON: {status} {text}")
                        });
                        assert!(v["error"].is_string(), "{method} {url} with {what}: {v}");
                    }
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} malformed requests, none answered with a 5xx");

    // Nothing stored was touched.
    assert_eq!(api.fetch("/keep/file.txt", None).await, (200, kept));
    let (s, v) = api
        .storage_json("GET", "/files?namespace=keep", Some(&t), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["files"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        api.call("GET", "/auth/me", Some(&t), None).await,
        users_before
    );
    let (_, v) = api.call("GET", "/storage/buckets", Some(&t), None).await;
    assert_eq!(v["buckets"].as_array().unwrap().len(), 1, "{v}");
}

/// An anonymous GET of `bucket/key` over S3: its status.
async fn anonymous_get(api: &Api, bucket: &str, key: &str) -> u16 {
    api.http
        .get(format!("http://{}/{bucket}/{key}", api.addr))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn bucket_policies_and_the_public_access_block() {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{BucketCannedAcl, PublicAccessBlockConfiguration};
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &ada_t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();
    let (_, tenants) = api.call("GET", "/tenants", Some(&bob_t), None).await;
    let bob_tenant = tenants["current"].as_str().unwrap().to_owned();
    let (_, tenants) = api.call("GET", "/tenants", Some(&ada_t), None).await;
    let ada_tenant = tenants["current"].as_str().unwrap().to_owned();
    let (ada_ak, ada_s3) = s3_key(&api, &ada_t).await;
    let (_, bob_s3) = s3_key(&api, &bob_t).await;

    ada_s3
        .create_bucket()
        .bucket("shared")
        .send()
        .await
        .unwrap();
    for key in ["public/a.txt", "private/b.txt", "in/c.txt"] {
        ada_s3
            .put_object()
            .bucket("shared")
            .key(key)
            .body(ByteStream::from_static(b"contents"))
            .send()
            .await
            .unwrap();
    }

    // No policy yet: nobody outside the tenant gets in.
    assert_eq!(anonymous_get(&api, "shared", "public/a.txt").await, 403);
    let r = ada_s3.get_bucket_policy().bucket("shared").send().await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("NoSuchBucketPolicy"),
        "{}",
        s3_said(&r)
    );
    let r = ada_s3
        .get_bucket_policy_status()
        .bucket("shared")
        .send()
        .await;
    assert_eq!(s3_code(&r).as_deref(), Some("NoSuchBucketPolicy"));
    let r = bob_s3
        .get_object()
        .bucket("shared")
        .key("public/a.txt")
        .send()
        .await;
    assert_eq!(s3_code(&r).as_deref(), Some("NoSuchBucket"));

    // Malformed policies are refused with S3's reason, and nothing is stored.
    for (doc, why) in [
        ("{not json", "invalid Json"),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::elsewhere/*"}]}"#,
            "invalid resource",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::shared"}]}"#,
            "does not apply to any resource",
        ),
        (
            r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"someone"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::shared/*"}]}"#,
            "Invalid principal",
        ),
    ] {
        let r = ada_s3
            .put_bucket_policy()
            .bucket("shared")
            .policy(doc)
            .send()
            .await;
        assert_eq!(s3_code(&r).as_deref(), Some("MalformedPolicy"), "{doc}");
        assert!(s3_said(&r).contains(why), "{doc}: {}", s3_said(&r));
    }
    let r = ada_s3.get_bucket_policy().bucket("shared").send().await;
    assert_eq!(s3_code(&r).as_deref(), Some("NoSuchBucketPolicy"));

    // A policy: anyone reads public/*, Bob's tenant lists and reads in/*, Ada's own key may
    // not delete under private/ (Deny wins over her owner role).
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[
        {{"Sid":"PublicRead","Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::shared/public/*"}},
        {{"Sid":"BobsTenant","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{bob_tenant}:root"}},"Action":["s3:ListBucket","s3:GetObject"],"Resource":["arn:aws:s3:::shared","arn:aws:s3:::shared/in/*"]}},
        {{"Sid":"KeepPrivate","Effect":"Deny","Principal":{{"AWS":"arn:aws:iam::{ada_tenant}:key/{ada_ak}"}},"Action":"s3:DeleteObject","Resource":"arn:aws:s3:::shared/private/*"}}]}}"#
    );
    ada_s3
        .put_bucket_policy()
        .bucket("shared")
        .policy(&policy)
        .send()
        .await
        .unwrap();
    let got = ada_s3
        .get_bucket_policy()
        .bucket("shared")
        .send()
        .await
        .unwrap();
    assert_eq!(got.policy(), Some(policy.as_str()));
    let st = ada_s3
        .get_bucket_policy_status()
        .bucket("shared")
        .send()
        .await
        .unwrap();
    assert_eq!(st.policy_status().and_then(|s| s.is_public()), Some(true));

    assert_eq!(anonymous_get(&api, "shared", "public/a.txt").await, 200);
    assert_eq!(anonymous_get(&api, "shared", "private/b.txt").await, 403);
    let listed = bob_s3
        .list_objects_v2()
        .bucket("shared")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count(), Some(3));
    let body = bob_s3
        .get_object()
        .bucket("shared")
        .key("in/c.txt")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(body.as_ref(), b"contents");
    let r = bob_s3
        .get_object()
        .bucket("shared")
        .key("private/b.txt")
        .send()
        .await;
    assert!(s3_code(&r).is_some(), "Bob read a private object");
    let r = bob_s3
        .put_object()
        .bucket("shared")
        .key("in/new.txt")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert!(s3_code(&r).is_some(), "Bob wrote into Ada's bucket");
    let r = ada_s3
        .delete_object()
        .bucket("shared")
        .key("private/b.txt")
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("AccessDenied"),
        "{}",
        s3_said(&r)
    );
    assert!(s3_said(&r).contains("bucket policy"), "{}", s3_said(&r));
    // The REST API decides alike: Bob reads in/c.txt there too, Ada cannot delete.
    let r = api
        .http
        .get(format!(
            "{}/storage/buckets/shared/objects/in/c.txt",
            api.base
        ))
        .bearer_auth(&bob_t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (s, v) = api
        .call(
            "DELETE",
            "/storage/buckets/shared/objects/private/b.txt",
            Some(&ada_t),
            None,
        )
        .await;
    // Ada's REST session is not the key the Deny names: allowed there.
    assert_eq!(s, 200, "{v}");

    // Conditions: reads of in/* only over TLS. The gateway itself speaks HTTP; a proxy on the
    // same host that terminated TLS says so with X-Forwarded-Proto.
    let tls_only = r#"{"Statement":[{"Effect":"Deny","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::shared/in/*","Condition":{"Bool":{"aws:SecureTransport":"false"}}}]}"#;
    let (s, v) = api
        .call(
            "PUT",
            "/storage/buckets/shared/policy",
            Some(&ada_t),
            Some(serde_json::from_str(tls_only).unwrap()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["is_public"], false);
    let r = ada_s3
        .get_object()
        .bucket("shared")
        .key("in/c.txt")
        .send()
        .await;
    assert_eq!(s3_code(&r).as_deref(), Some("AccessDenied"));
    let rest_get = |proto: Option<&'static str>| {
        let mut r = api
            .http
            .get(format!(
                "{}/storage/buckets/shared/objects/in/c.txt",
                api.base
            ))
            .bearer_auth(&ada_t);
        if let Some(p) = proto {
            r = r.header("x-forwarded-proto", p);
        }
        r.send()
    };
    assert_eq!(rest_get(None).await.unwrap().status().as_u16(), 403);
    assert_eq!(
        rest_get(Some("https")).await.unwrap().status().as_u16(),
        200
    );

    // A policy that denies everyone everything still lets the tenant's owner remove it.
    let lockout = r#"{"Statement":[{"Effect":"Deny","Principal":"*","Action":"s3:*","Resource":["arn:aws:s3:::shared","arn:aws:s3:::shared/*"]}]}"#;
    ada_s3
        .put_bucket_policy()
        .bucket("shared")
        .policy(lockout)
        .send()
        .await
        .unwrap();
    let r = ada_s3.list_objects_v2().bucket("shared").send().await;
    assert_eq!(s3_code(&r).as_deref(), Some("AccessDenied"));
    ada_s3
        .delete_bucket_policy()
        .bucket("shared")
        .send()
        .await
        .unwrap();
    ada_s3
        .list_objects_v2()
        .bucket("shared")
        .send()
        .await
        .unwrap();

    // The public access block.
    let r = ada_s3
        .get_public_access_block()
        .bucket("shared")
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("NoSuchPublicAccessBlockConfiguration")
    );
    assert_eq!(status_of(&r), 404);
    let public_read = r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::shared/*"}]}"#;
    ada_s3
        .put_bucket_policy()
        .bucket("shared")
        .policy(public_read)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_get(&api, "shared", "in/c.txt").await, 200);
    let block = |acls: bool, ignore: bool, policy: bool, restrict: bool| {
        PublicAccessBlockConfiguration::builder()
            .block_public_acls(acls)
            .ignore_public_acls(ignore)
            .block_public_policy(policy)
            .restrict_public_buckets(restrict)
            .build()
    };
    // RestrictPublicBuckets: the public policy no longer reaches outside the tenant.
    ada_s3
        .put_public_access_block()
        .bucket("shared")
        .public_access_block_configuration(block(false, false, false, true))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_get(&api, "shared", "in/c.txt").await, 403);
    ada_s3
        .get_object()
        .bucket("shared")
        .key("in/c.txt")
        .send()
        .await
        .unwrap();
    let got = ada_s3
        .get_public_access_block()
        .bucket("shared")
        .send()
        .await
        .unwrap();
    let c = got.public_access_block_configuration().unwrap();
    assert_eq!(
        (
            c.block_public_acls(),
            c.ignore_public_acls(),
            c.block_public_policy(),
            c.restrict_public_buckets()
        ),
        (Some(false), Some(false), Some(false), Some(true))
    );
    // BlockPublicPolicy: a public policy is refused, a private one is not.
    ada_s3
        .put_public_access_block()
        .bucket("shared")
        .public_access_block_configuration(block(true, true, true, false))
        .send()
        .await
        .unwrap();
    let r = ada_s3
        .put_bucket_policy()
        .bucket("shared")
        .policy(public_read)
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("AccessDenied"),
        "{}",
        s3_said(&r)
    );
    assert!(s3_said(&r).contains("BlockPublicPolicy"), "{}", s3_said(&r));
    ada_s3
        .put_bucket_policy()
        .bucket("shared")
        .policy(tls_only)
        .send()
        .await
        .unwrap();
    // BlockPublicAcls refuses a public ACL; IgnorePublicAcls makes an existing one private.
    let r = ada_s3
        .put_bucket_acl()
        .bucket("shared")
        .acl(BucketCannedAcl::PublicRead)
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("AccessDenied"),
        "{}",
        s3_said(&r)
    );
    ada_s3
        .put_public_access_block()
        .bucket("shared")
        .public_access_block_configuration(block(false, true, false, false))
        .send()
        .await
        .unwrap();
    ada_s3
        .put_bucket_acl()
        .bucket("shared")
        .acl(BucketCannedAcl::PublicRead)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_get(&api, "shared", "public/a.txt").await, 403);
    ada_s3
        .delete_public_access_block()
        .bucket("shared")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous_get(&api, "shared", "public/a.txt").await, 200);
    let (s, v) = api
        .call(
            "GET",
            "/storage/buckets/shared/public-access-block",
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!((s, v["configured"].clone()), (200, json!(false)), "{v}");

    // Changes are audited; Bob cannot touch Ada's policy.
    let r = bob_s3.delete_bucket_policy().bucket("shared").send().await;
    assert!(s3_code(&r).is_some());
    let (_, audit) = api.call("GET", "/audit/logs", Some(&ada_t), None).await;
    let text = audit.to_string();
    for action in [
        "s3:PutBucketPolicy",
        "s3:DeleteBucketPolicy",
        "s3:PutBucketPublicAccessBlock",
    ] {
        assert!(text.contains(action), "{action} not audited: {text}");
    }
}

fn status_of<T, E>(
    r: &Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
) -> u16 {
    match r {
        Ok(_) => 200,
        Err(e) => e.raw_response().map_or(0, |r| r.status().as_u16()),
    }
}

#[tokio::test]
async fn object_lock_over_the_rest_api() {
    let api = Api::start(&[]);
    let ada = first_admin(&api).await;
    let t = ada["access_token"].as_str().unwrap().to_owned();
    let (s, v) = api
        .call(
            "POST",
            "/storage/buckets",
            Some(&t),
            Some(json!({"name": "records"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // Object lock needs versioning first.
    let (s, v) = api
        .call(
            "PUT",
            "/storage/buckets/records/object-lock",
            Some(&t),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, _) = api
        .call(
            "PUT",
            "/storage/buckets/records/versioning",
            Some(&t),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = api
        .call(
            "PUT",
            "/storage/buckets/records/object-lock",
            Some(&t),
            Some(json!({"mode": "COMPLIANCE", "days": 30})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["enabled"], true);
    assert_eq!(
        v["default_retention"],
        json!({"mode": "COMPLIANCE", "days": 30})
    );
    let (s, v) = api
        .call(
            "PUT",
            "/storage/buckets/records/versioning",
            Some(&t),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    // A new object gets the default retention; nothing deletes its version.
    let r = api
        .http
        .put(format!(
            "{}/storage/buckets/records/objects/2026/ledger.csv",
            api.base
        ))
        .bearer_auth(&t)
        .body("a,b\n1,2\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let obj: Value = r.json().await.unwrap();
    let version = obj["version_id"].as_str().unwrap().to_owned();
    let (s, v) = api
        .call(
            "GET",
            "/storage/buckets/records/retention/2026/ledger.csv",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["mode"].as_str(), v["legal_hold"].as_bool()),
        (Some("COMPLIANCE"), Some(false))
    );
    assert_eq!(v["version_id"], json!(version));
    // COMPLIANCE cannot be shortened, not even with the bypass.
    let (s, v) = api
        .call(
            "PUT",
            "/storage/buckets/records/retention/2026/ledger.csv",
            Some(&t),
            Some(json!({"mode": "COMPLIANCE", "retain_until": "2030-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "PUT",
            "/storage/buckets/records/retention/2026/ledger.csv",
            Some(&t),
            Some(json!({"mode": "COMPLIANCE", "retain_until": "2029-01-01T00:00:00Z", "bypass_governance": true})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = api
        .call(
            "PUT",
            "/storage/buckets/records/legal-hold/2026/ledger.csv",
            Some(&t),
            Some(json!({"on": true})),
        )
        .await;
    assert_eq!((s, v["legal_hold"].clone()), (200, json!(true)), "{v}");
    let (s, v) = api
        .call(
            "GET",
            "/storage/buckets/records/retention/2026/ledger.csv",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(
        (s, v["retain_until"].as_str()),
        (200, Some("2030-01-01T00:00:00Z")),
        "{v}"
    );
    assert_eq!(v["legal_hold"], true);
    // A forced bucket delete stops at the locked version.
    let (s, v) = api
        .call(
            "DELETE",
            "/storage/buckets/records?force=true",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = api
        .call(
            "GET",
            "/storage/buckets/records/retention/2026/ledger.csv",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Malformed input.
    for body in [
        json!({"mode": "FOREVER", "retain_until": "2031-01-01T00:00:00Z"}),
        json!({"mode": "GOVERNANCE"}),
        json!({"mode": "GOVERNANCE", "retain_until": "next year"}),
    ] {
        let (s, v) = api
            .call(
                "PUT",
                "/storage/buckets/records/retention/2026/ledger.csv",
                Some(&t),
                Some(body),
            )
            .await;
        assert_eq!(s, 400, "{v}");
    }
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn bucket_acls_grants_and_ownership_controls() {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{
        AccessControlPolicy, BucketCannedAcl, Grant, Grantee, ObjectOwnership, OwnershipControls,
        OwnershipControlsRule, Permission, Type,
    };
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &ada_t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();
    let (_, tenants) = api.call("GET", "/tenants", Some(&bob_t), None).await;
    let bob_tenant = tenants["current"].as_str().unwrap().to_owned();
    let (_, tenants) = api.call("GET", "/tenants", Some(&ada_t), None).await;
    let ada_tenant = tenants["current"].as_str().unwrap().to_owned();
    let (_, ada_s3) = s3_key(&api, &ada_t).await;
    let (_, bob_s3) = s3_key(&api, &bob_t).await;
    ada_s3.create_bucket().bucket("acl").send().await.unwrap();
    ada_s3
        .put_object()
        .bucket("acl")
        .key("a.txt")
        .body(ByteStream::from_static(b"a"))
        .send()
        .await
        .unwrap();
    let bob_put = |key: &'static str| {
        bob_s3
            .put_object()
            .bucket("acl")
            .key(key)
            .body(ByteStream::from_static(b"from bob"))
            .send()
    };

    // Grants to Bob's tenant by header: READ lets him list, WRITE lets him write.
    assert!(s3_code(&bob_s3.list_objects_v2().bucket("acl").send().await).is_some());
    ada_s3
        .put_bucket_acl()
        .bucket("acl")
        .grant_read(format!("id=\"{bob_tenant}\""))
        .send()
        .await
        .unwrap();
    let listed = bob_s3.list_objects_v2().bucket("acl").send().await.unwrap();
    assert_eq!(listed.key_count(), Some(1));
    assert!(
        s3_code(&bob_put("bob.txt").await).is_some(),
        "READ let Bob write"
    );
    ada_s3
        .put_bucket_acl()
        .bucket("acl")
        .grant_read(format!("id=\"{bob_tenant}\""))
        .grant_write(format!("id=\"{bob_tenant}\""))
        .send()
        .await
        .unwrap();
    bob_put("bob.txt").await.unwrap();
    let acl = ada_s3.get_bucket_acl().bucket("acl").send().await.unwrap();
    assert_eq!(acl.owner().and_then(|o| o.id()), Some(ada_tenant.as_str()));
    let mut seen: Vec<(String, String)> = acl
        .grants()
        .iter()
        .map(|g| {
            (
                g.grantee().and_then(|e| e.id()).unwrap_or("").to_owned(),
                g.permission()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    let mut want = vec![
        (ada_tenant.clone(), "FULL_CONTROL".to_owned()),
        (bob_tenant.clone(), "READ".to_owned()),
        (bob_tenant.clone(), "WRITE".to_owned()),
    ];
    want.sort();
    assert_eq!(seen, want);
    // Bob may not read Ada's ACL (no READ_ACP) or change it.
    assert!(s3_code(&bob_s3.get_bucket_acl().bucket("acl").send().await).is_some());
    let r = bob_s3
        .put_bucket_acl()
        .bucket("acl")
        .acl(BucketCannedAcl::PublicReadWrite)
        .send()
        .await;
    assert!(s3_code(&r).is_some());

    // Canned ACLs: authenticated-read lets any signed caller list, not anonymous ones;
    // public-read-write lets anyone write.
    ada_s3
        .put_bucket_acl()
        .bucket("acl")
        .acl(BucketCannedAcl::AuthenticatedRead)
        .send()
        .await
        .unwrap();
    bob_s3.list_objects_v2().bucket("acl").send().await.unwrap();
    assert!(s3_code(&bob_put("again.txt").await).is_some());
    let anon_list = || async {
        api.http
            .get(format!("http://{}/acl?list-type=2", api.addr))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(anon_list().await, 403);
    ada_s3
        .put_bucket_acl()
        .bucket("acl")
        .acl(BucketCannedAcl::PublicReadWrite)
        .send()
        .await
        .unwrap();
    assert_eq!(anon_list().await, 200);
    let r = api
        .http
        .put(format!("http://{}/acl/anonymous.txt", api.addr))
        .body("dropped in")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());

    // An AccessControlPolicy body, and the refusals.
    let policy = AccessControlPolicy::builder()
        .grants(
            Grant::builder()
                .grantee(
                    Grantee::builder()
                        .r#type(Type::Group)
                        .uri("http://acs.amazonaws.com/groups/global/AllUsers")
                        .build()
                        .unwrap(),
                )
                .permission(Permission::Read)
                .build(),
        )
        .owner(aws_sdk_s3::types::Owner::builder().id(&ada_tenant).build())
        .build();
    ada_s3
        .put_bucket_acl()
        .bucket("acl")
        .access_control_policy(policy)
        .send()
        .await
        .unwrap();
    assert_eq!(anon_list().await, 200);
    let r = api
        .http
        .put(format!("http://{}/acl/anonymous2.txt", api.addr))
        .body("no")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = ada_s3
        .put_bucket_acl()
        .bucket("acl")
        .grant_read("emailAddress=\"bob@example.com\"")
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("UnresolvableGrantByEmailAddress")
    );
    let r = ada_s3
        .put_bucket_acl()
        .bucket("acl")
        .acl(BucketCannedAcl::Private)
        .grant_read(format!("id=\"{bob_tenant}\""))
        .send()
        .await;
    assert_eq!(s3_code(&r).as_deref(), Some("InvalidRequest"));
    let r = ada_s3
        .put_bucket_acl()
        .bucket("acl")
        .grant_read("id=\"not-a-tenant\"")
        .send()
        .await;
    assert_eq!(s3_code(&r).as_deref(), Some("InvalidArgument"));

    // Ownership controls: BucketOwnerEnforced needs a private ACL, then refuses grants.
    let controls = |o: ObjectOwnership| {
        OwnershipControls::builder()
            .rules(
                OwnershipControlsRule::builder()
                    .object_ownership(o)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    let r = ada_s3
        .get_bucket_ownership_controls()
        .bucket("acl")
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("OwnershipControlsNotFoundError")
    );
    let r = ada_s3
        .put_bucket_ownership_controls()
        .bucket("acl")
        .ownership_controls(controls(ObjectOwnership::BucketOwnerEnforced))
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("InvalidBucketAclWithObjectOwnership"),
        "{}",
        s3_said(&r)
    );
    ada_s3
        .put_bucket_acl()
        .bucket("acl")
        .acl(BucketCannedAcl::Private)
        .send()
        .await
        .unwrap();
    ada_s3
        .put_bucket_ownership_controls()
        .bucket("acl")
        .ownership_controls(controls(ObjectOwnership::BucketOwnerEnforced))
        .send()
        .await
        .unwrap();
    let r = ada_s3
        .put_bucket_acl()
        .bucket("acl")
        .grant_read(format!("id=\"{bob_tenant}\""))
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("AccessControlListNotSupported"),
        "{}",
        s3_said(&r)
    );
    let got = ada_s3
        .get_bucket_ownership_controls()
        .bucket("acl")
        .send()
        .await
        .unwrap();
    let rule = &got.ownership_controls().unwrap().rules()[0];
    assert_eq!(
        rule.object_ownership(),
        &ObjectOwnership::BucketOwnerEnforced
    );
    ada_s3
        .delete_bucket_ownership_controls()
        .bucket("acl")
        .send()
        .await
        .unwrap();
    // A bucket made with grants and an ownership setting.
    ada_s3
        .create_bucket()
        .bucket("acl2")
        .grant_read(format!("id=\"{bob_tenant}\""))
        .object_ownership(ObjectOwnership::ObjectWriter)
        .send()
        .await
        .unwrap();
    bob_s3
        .list_objects_v2()
        .bucket("acl2")
        .send()
        .await
        .unwrap();
    let got = ada_s3
        .get_bucket_ownership_controls()
        .bucket("acl2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.ownership_controls().unwrap().rules()[0].object_ownership(),
        &ObjectOwnership::ObjectWriter
    );
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn object_acls_grant_reads_and_follow_their_version() {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{
        BucketVersioningStatus, ObjectCannedAcl, ObjectOwnership, OwnershipControls,
        OwnershipControlsRule, VersioningConfiguration,
    };
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &ada_t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();
    let (_, tenants) = api.call("GET", "/tenants", Some(&bob_t), None).await;
    let bob_tenant = tenants["current"].as_str().unwrap().to_owned();
    let (_, tenants) = api.call("GET", "/tenants", Some(&ada_t), None).await;
    let ada_tenant = tenants["current"].as_str().unwrap().to_owned();
    let (_, ada_s3) = s3_key(&api, &ada_t).await;
    let (_, bob_s3) = s3_key(&api, &bob_t).await;
    ada_s3
        .create_bucket()
        .bucket("objacl")
        .send()
        .await
        .unwrap();
    let anon_get = |key: &'static str| {
        let url = format!("http://{}/objacl/{key}", api.addr);
        let http = api.http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };

    // A canned ACL on PUT: anyone reads that object, not its neighbours.
    ada_s3
        .put_object()
        .bucket("objacl")
        .key("open.txt")
        .acl(ObjectCannedAcl::PublicRead)
        .body(ByteStream::from_static(b"open"))
        .send()
        .await
        .unwrap();
    ada_s3
        .put_object()
        .bucket("objacl")
        .key("closed.txt")
        .body(ByteStream::from_static(b"closed"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon_get("open.txt").await, 200);
    assert_eq!(anon_get("closed.txt").await, 403);
    // Owners are the tenant's canonical id everywhere.
    let listed = ada_s3
        .list_objects_v2()
        .bucket("objacl")
        .fetch_owner(true)
        .send()
        .await
        .unwrap();
    for o in listed.contents() {
        assert_eq!(o.owner().and_then(|o| o.id()), Some(ada_tenant.as_str()));
    }
    let versions = ada_s3
        .list_object_versions()
        .bucket("objacl")
        .send()
        .await
        .unwrap();
    for v in versions.versions() {
        assert_eq!(v.owner().and_then(|o| o.id()), Some(ada_tenant.as_str()));
    }
    let up = ada_s3
        .create_multipart_upload()
        .bucket("objacl")
        .key("pending")
        .send()
        .await
        .unwrap();
    let uploads = ada_s3
        .list_multipart_uploads()
        .bucket("objacl")
        .send()
        .await
        .unwrap();
    assert_eq!(
        uploads.uploads()[0].owner().and_then(|o| o.id()),
        Some(ada_tenant.as_str())
    );
    let parts = ada_s3
        .list_parts()
        .bucket("objacl")
        .key("pending")
        .upload_id(up.upload_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        parts.owner().and_then(|o| o.id()),
        Some(ada_tenant.as_str())
    );
    assert!(parts.initiator().and_then(|i| i.id()).is_some());
    ada_s3
        .abort_multipart_upload()
        .bucket("objacl")
        .key("pending")
        .upload_id(up.upload_id().unwrap())
        .send()
        .await
        .unwrap();
    // x-amz-expected-bucket-owner: the right owner passes, another is refused.
    ada_s3
        .head_bucket()
        .bucket("objacl")
        .expected_bucket_owner(&ada_tenant)
        .send()
        .await
        .unwrap();
    let r = ada_s3
        .get_object()
        .bucket("objacl")
        .key("open.txt")
        .expected_bucket_owner(&bob_tenant)
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("AccessDenied"),
        "{}",
        s3_said(&r)
    );
    // x-amz-source-expected-bucket-owner: the same for a copy's source.
    let r = ada_s3
        .copy_object()
        .bucket("objacl")
        .key("copied.txt")
        .copy_source("objacl/open.txt")
        .expected_source_bucket_owner(&bob_tenant)
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("AccessDenied"),
        "{}",
        s3_said(&r)
    );
    ada_s3
        .copy_object()
        .bucket("objacl")
        .key("copied.txt")
        .copy_source("objacl/open.txt")
        .expected_source_bucket_owner(&ada_tenant)
        .send()
        .await
        .unwrap();
    let acl = ada_s3
        .get_object_acl()
        .bucket("objacl")
        .key("open.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(acl.owner().and_then(|o| o.id()), Some(ada_tenant.as_str()));
    assert_eq!(acl.grants().len(), 2);
    // A grant to Bob's tenant by PutObjectAcl (the public object he could read already).
    ada_s3
        .put_object_acl()
        .bucket("objacl")
        .key("closed.txt")
        .grant_read(format!("id=\"{bob_tenant}\""))
        .send()
        .await
        .unwrap();
    let body = bob_s3
        .get_object()
        .bucket("objacl")
        .key("closed.txt")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(body.as_ref(), b"closed");
    assert_eq!(anon_get("closed.txt").await, 403);
    assert!(
        s3_code(
            &bob_s3
                .get_object()
                .bucket("objacl")
                .key("open.txt")
                .send()
                .await
        )
        .is_none()
    );
    // Overwriting an object (unversioned) makes a new, private version.
    ada_s3
        .put_object()
        .bucket("objacl")
        .key("open.txt")
        .body(ByteStream::from_static(b"now private"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon_get("open.txt").await, 403);
    // Versioned: an ACL belongs to one version.
    ada_s3
        .put_bucket_versioning()
        .bucket("objacl")
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let v1 = ada_s3
        .put_object()
        .bucket("objacl")
        .key("doc")
        .acl(ObjectCannedAcl::PublicRead)
        .body(ByteStream::from_static(b"v1"))
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    ada_s3
        .put_object()
        .bucket("objacl")
        .key("doc")
        .body(ByteStream::from_static(b"v2"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon_get("doc").await, 403);
    let r = api
        .http
        .get(format!("http://{}/objacl/doc?versionId={v1}", api.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"v1");
    // Refusals: e-mail grantees, ACLs under BucketOwnerEnforced, a missing key.
    let r = ada_s3
        .put_object_acl()
        .bucket("objacl")
        .key("doc")
        .grant_read("emailAddress=\"x@example.com\"")
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("UnresolvableGrantByEmailAddress")
    );
    let r = ada_s3
        .get_object_acl()
        .bucket("objacl")
        .key("nothing")
        .send()
        .await;
    assert_eq!(s3_code(&r).as_deref(), Some("NoSuchKey"));
    ada_s3
        .put_bucket_ownership_controls()
        .bucket("objacl")
        .ownership_controls(
            OwnershipControls::builder()
                .rules(
                    OwnershipControlsRule::builder()
                        .object_ownership(ObjectOwnership::BucketOwnerEnforced)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let r = ada_s3
        .put_object()
        .bucket("objacl")
        .key("new")
        .acl(ObjectCannedAcl::PublicRead)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("AccessControlListNotSupported"),
        "{}",
        s3_said(&r)
    );
    ada_s3
        .put_object()
        .bucket("objacl")
        .key("new")
        .acl(ObjectCannedAcl::BucketOwnerFullControl)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn kms_keys_encrypt_objects_rotate_disable_and_stay_in_their_tenant() {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::ServerSideEncryption;
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &ada_t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();

    let (s, key) = api
        .call(
            "POST",
            "/kms/keys",
            Some(&ada_t),
            Some(json!({"name": "app-data", "description": "the app's objects"})),
        )
        .await;
    assert_eq!(s, 201, "{key}");
    let id = key["id"].as_str().unwrap().to_owned();
    assert_eq!(key["enabled"], true);
    assert_eq!(key["current_version"], 1);
    assert!(key.get("material").is_none() && !key.to_string().contains("sealed"));
    let arn = key["arn"].as_str().unwrap().to_owned();
    let (s, v) = api
        .call(
            "POST",
            "/kms/keys",
            Some(&ada_t),
            Some(json!({"name": "app-data"})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/kms/keys",
            Some(&ada_t),
            Some(json!({"name": "no spaces"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");

    let (_, ada_s3) = s3_key(&api, &ada_t).await;
    ada_s3.create_bucket().bucket("vault").send().await.unwrap();
    let put = |key_id: String, k: &'static str, body: &'static [u8]| {
        ada_s3
            .put_object()
            .bucket("vault")
            .key(k)
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(key_id)
            .body(ByteStream::from_static(body))
            .send()
    };
    // By id, by alias and by ARN.
    let r = put(id.clone(), "by-id", b"one").await.unwrap();
    assert_eq!(r.ssekms_key_id(), Some(arn.as_str()));
    put("alias/app-data".into(), "by-alias", b"two")
        .await
        .unwrap();
    put(arn.clone(), "by-arn", b"three").await.unwrap();
    let read = |k: &'static str| {
        let c = ada_s3.clone();
        async move {
            let r = c.get_object().bucket("vault").key(k).send().await;
            match r {
                Ok(o) => Ok(o.body.collect().await.unwrap().into_bytes().to_vec()),
                Err(e) => Err(s3_code::<(), _>(&Err(e)).unwrap()),
            }
        }
    };
    assert_eq!(read("by-alias").await.unwrap(), b"two");

    // Rotation: new objects use version 2; objects under version 1 still read.
    let (s, k) = api
        .call(
            "POST",
            &format!("/kms/keys/{id}/rotate"),
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(s, 200, "{k}");
    assert_eq!(k["current_version"], 2);
    put(id.clone(), "after-rotation", b"four").await.unwrap();
    assert_eq!(read("by-id").await.unwrap(), b"one");
    assert_eq!(read("after-rotation").await.unwrap(), b"four");

    // Disabled: neither writes nor reads under it.
    let (s, k) = api
        .call(
            "POST",
            &format!("/kms/keys/{id}/disable"),
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!((s, &k["enabled"]), (200, &json!(false)), "{k}");
    let r = put(id.clone(), "refused", b"x").await;
    assert_eq!(
        s3_code(&r).as_deref(),
        Some("KMS.DisabledException"),
        "{}",
        s3_said(&r)
    );
    assert_eq!(read("by-id").await.unwrap_err(), "KMS.DisabledException");
    let (s, _) = api
        .call(
            "POST",
            &format!("/kms/keys/{id}/enable"),
            Some(&ada_t),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(read("by-arn").await.unwrap(), b"three");

    // Another tenant neither sees nor uses the key.
    let (s, v) = api.call("GET", "/kms/keys", Some(&bob_t), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["keys"].as_array().unwrap().len(), 0, "{v}");
    let (s, _) = api
        .call("GET", &format!("/kms/keys/{id}"), Some(&bob_t), None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call(
            "POST",
            &format!("/kms/keys/{id}/disable"),
            Some(&bob_t),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (_, bob_s3) = s3_key(&api, &bob_t).await;
    bob_s3.create_bucket().bucket("bobs").send().await.unwrap();
    let r = bob_s3
        .put_object()
        .bucket("bobs")
        .key("k")
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id(id.clone())
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(s3_code(&r).as_deref(), Some("KMS.NotFoundException"));

    // Ada's list shows her key with its versions, and the default key S3 made for `aws:kms`
    // without a key id once it is used.
    ada_s3
        .put_object()
        .bucket("vault")
        .key("default-key")
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .body(ByteStream::from_static(b"d"))
        .send()
        .await
        .unwrap();
    let (_, v) = api.call("GET", "/kms/keys", Some(&ada_t), None).await;
    let mut names: Vec<&str> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["app-data", "aws/s3"], "{v}");
    // Every change is in the audit log.
    let (_, log) = api.call("GET", "/audit/logs", Some(&ada_t), None).await;
    let entries = log["entries"].as_array().unwrap();
    for action in [
        "POST /api/kms/keys",
        "POST /api/kms/keys/{id}/rotate",
        "POST /api/kms/keys/{id}/disable",
        "POST /api/kms/keys/{id}/enable",
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e["action"] == action && e["outcome"] == "success"),
            "no {action} in {log}"
        );
    }
}

#[tokio::test]
async fn bucket_owner_preferred_takes_objects_written_with_bucket_owner_full_control() {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{
        ObjectCannedAcl, ObjectOwnership, OwnershipControls, OwnershipControlsRule,
    };
    let api = Api::start(&[("CAIRN_API_AUTH_RATE_LIMIT", "1000")]);
    let ada = first_admin(&api).await;
    let ada_t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &ada_t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();
    let (_, t) = api.call("GET", "/tenants", Some(&ada_t), None).await;
    let ada_tenant = t["current"].as_str().unwrap().to_owned();
    let (_, t) = api.call("GET", "/tenants", Some(&bob_t), None).await;
    let bob_tenant = t["current"].as_str().unwrap().to_owned();
    let (_, ada_s3) = s3_key(&api, &ada_t).await;
    let (_, bob_s3) = s3_key(&api, &bob_t).await;
    ada_s3.create_bucket().bucket("inbox").send().await.unwrap();
    // Bob may write into Ada's bucket.
    ada_s3
        .put_bucket_acl()
        .bucket("inbox")
        .grant_write(format!("id={bob_tenant}"))
        .send()
        .await
        .unwrap();
    let owner_of = |key: &'static str| {
        let c = ada_s3.clone();
        async move {
            c.get_object_acl()
                .bucket("inbox")
                .key(key)
                .send()
                .await
                .map(|a| {
                    a.owner()
                        .and_then(|o| o.id())
                        .unwrap_or_default()
                        .to_owned()
                })
        }
    };
    // ObjectWriter (no setting): the writer keeps what it wrote with an ACL.
    bob_s3
        .put_object()
        .bucket("inbox")
        .key("written")
        .acl(ObjectCannedAcl::BucketOwnerFullControl)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(owner_of("written").await.unwrap(), bob_tenant);
    ada_s3
        .put_bucket_ownership_controls()
        .bucket("inbox")
        .ownership_controls(
            OwnershipControls::builder()
                .rules(
                    OwnershipControlsRule::builder()
                        .object_ownership(ObjectOwnership::BucketOwnerPreferred)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // BucketOwnerPreferred: with bucket-owner-full-control the bucket's owner owns it...
    bob_s3
        .put_object()
        .bucket("inbox")
        .key("preferred")
        .acl(ObjectCannedAcl::BucketOwnerFullControl)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(owner_of("preferred").await.unwrap(), ada_tenant);
    // ... with another ACL the writer still does.
    bob_s3
        .put_object()
        .bucket("inbox")
        .key("other-acl")
        .acl(ObjectCannedAcl::BucketOwnerRead)
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(owner_of("other-acl").await.unwrap(), bob_tenant);
}

#[tokio::test]
async fn queues_send_receive_ack_long_poll_fifo_dead_letters_and_tenants() {
    let api = Api::start(&[
        ("CAIRN_API_AUTH_RATE_LIMIT", "1000"),
        ("CAIRN_API_RATE_LIMIT", "0"),
    ]);
    let ada = first_admin(&api).await;
    let t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();
    let t = t.as_str();

    let (s, dead) = api
        .call(
            "POST",
            "/queues",
            Some(t),
            Some(json!({"name": "jobs-dead"})),
        )
        .await;
    assert_eq!(s, 201, "{dead}");
    let dead_id = dead["id"].as_str().unwrap().to_owned();
    let (s, q) = api
        .call(
            "POST",
            "/queues",
            Some(t),
            Some(json!({"name": "jobs", "visibility_timeout_seconds": 30})),
        )
        .await;
    assert_eq!(s, 201, "{q}");
    assert_eq!(q["settings"]["visibility_timeout_seconds"], 30);
    assert_eq!(q["messages"], 0);
    let id = q["id"].as_str().unwrap().to_owned();
    let path = |rest: &str| format!("/queues/{id}{rest}");
    let (s, v) = api
        .call("POST", "/queues", Some(t), Some(json!({"name": "jobs"})))
        .await;
    assert_eq!(s, 409, "{v}");

    // Bad input: a clear 4xx, nothing stored.
    for (body, what) in [
        (json!({"name": "bad name!"}), "name"),
        (json!({"name": "x.fifo"}), "fifo name on a standard queue"),
        (json!({"name": "y", "colour": "red"}), "unknown field"),
        (json!({"name": "z", "retention_seconds": 5}), "retention"),
        (
            json!({"name": "w", "dead_letter_queue": "nowhere", "max_receives": 2}),
            "unknown dead-letter queue",
        ),
    ] {
        let (s, v) = api.call("POST", "/queues", Some(t), Some(body)).await;
        assert_eq!(s, 400, "{what}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let big = "x".repeat(300 * 1024);
    let (s, v) = api
        .call(
            "POST",
            &path("/messages"),
            Some(t),
            Some(json!({"body": big})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api
        .call("GET", &path("/messages?count=11"), Some(t), None)
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api
        .call("GET", &path("/messages?wait=21"), Some(t), None)
        .await;
    assert_eq!(s, 400, "{v}");
    let (_, q) = api.call("GET", &path(""), Some(t), None).await;
    assert_eq!(q["messages"], 0, "{q}");
    let (_, all) = api.call("GET", "/queues", Some(t), None).await;
    assert_eq!(all["queues"].as_array().unwrap().len(), 2, "{all}");

    // Send, receive (hidden while in flight), redelivery, stale receipts, ack.
    let (s, sent) = api
        .call(
            "POST",
            &path("/messages"),
            Some(t),
            Some(json!({"body": "resize 42", "attributes": {"kind": "resize"}})),
        )
        .await;
    assert_eq!(s, 201, "{sent}");
    assert_eq!(sent["duplicate"], false);
    let receive = |query: &'static str| {
        let api = &api;
        let p = path(&format!("/messages{query}"));
        async move {
            let (s, v) = api.call("GET", &p, Some(t), None).await;
            assert_eq!(s, 200, "{v}");
            v["messages"].as_array().unwrap().clone()
        }
    };
    let got = receive("?count=10&visibility=0").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["body"], "resize 42");
    assert_eq!(got[0]["attributes"]["kind"], "resize");
    assert_eq!(got[0]["receive_count"], 1);
    let first = got[0]["receipt"].as_str().unwrap().to_owned();
    // Visibility 0: receivable again at once, with a new receipt.
    let got = receive("?count=10").await;
    assert_eq!(got[0]["receive_count"], 2, "{got:?}");
    let second = got[0]["receipt"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    // In flight for 30 s now: nothing to receive.
    assert!(receive("?count=10").await.is_empty());
    let (s, v) = api
        .call(
            "DELETE",
            &path(&format!("/messages/{first}")),
            Some(t),
            None,
        )
        .await;
    assert_eq!(s, 404, "a stale receipt acks nothing: {v}");
    let (s, v) = api
        .call(
            "POST",
            &path(&format!("/messages/{second}/visibility")),
            Some(t),
            Some(json!({"timeout_seconds": 600})),
        )
        .await;
    assert_eq!(s, 204, "{v}");
    let (s, _) = api
        .call(
            "DELETE",
            &path(&format!("/messages/{second}")),
            Some(t),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (_, q) = api.call("GET", &path(""), Some(t), None).await;
    assert_eq!(q["messages"], 0, "an acked message is gone: {q}");

    // Long polling: a receive waiting for up to 10 s gets a message sent after it began.
    let waiting = {
        let http = api.http.clone();
        let url = format!("{}{}", api.base, path("/messages?wait=10"));
        let t = t.to_owned();
        tokio::spawn(async move {
            let v: Value = http
                .get(url)
                .header("authorization", format!("Bearer {t}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (s, _) = api
        .call(
            "POST",
            &path("/messages"),
            Some(t),
            Some(json!({"body": "late"})),
        )
        .await;
    assert_eq!(s, 201);
    let v = waiting.await.unwrap();
    assert_eq!(v["messages"][0]["body"], "late", "{v}");
    let late = v["messages"][0]["receipt"].as_str().unwrap().to_owned();

    // Batch send and batch ack (a bad receipt is answered, the others acked).
    let (s, v) = api
        .call(
            "POST",
            &path("/messages"),
            Some(t),
            Some(json!({"messages": [{"body": "a"}, {"body": "b"}]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    let got = receive("?count=10").await;
    let mut receipts: Vec<String> = got
        .iter()
        .map(|m| m["receipt"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(receipts.len(), 2, "{got:?}");
    receipts.push(late);
    receipts.push("not-a-receipt".into());
    let (s, v) = api
        .call(
            "POST",
            &path("/ack"),
            Some(t),
            Some(json!({"receipts": receipts})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let acked: Vec<bool> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["acked"].as_bool().unwrap())
        .collect();
    assert_eq!(acked, vec![true, true, true, false]);

    // Dead letters: after two receives the third moves the message.
    let (s, v) = api
        .call(
            "PUT",
            &path(""),
            Some(t),
            Some(json!({"dead_letter_queue": "jobs-dead", "max_receives": 2})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["settings"]["dead_letter_queue"], dead_id.as_str());
    api.call(
        "POST",
        &path("/messages"),
        Some(t),
        Some(json!({"body": "poison"})),
    )
    .await;
    for n in 1..=2 {
        let got = receive("?visibility=0").await;
        assert_eq!(got[0]["receive_count"], n, "{got:?}");
    }
    assert!(receive("?visibility=0").await.is_empty());
    let (s, v) = api
        .call("GET", &format!("/queues/{dead_id}/messages"), Some(t), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["messages"][0]["body"], "poison", "{v}");

    // FIFO with content-based deduplication.
    let (s, f) = api
        .call(
            "POST",
            "/queues",
            Some(t),
            Some(json!({"name": "orders.fifo", "fifo": true, "content_based_deduplication": true})),
        )
        .await;
    assert_eq!(s, 201, "{f}");
    let fid = f["id"].as_str().unwrap().to_owned();
    let fpath = format!("/queues/{fid}/messages");
    let (s, v) = api
        .call("POST", &fpath, Some(t), Some(json!({"body": "no group"})))
        .await;
    assert_eq!(s, 400, "{v}");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, v) = api
            .call(
                "POST",
                &fpath,
                Some(t),
                Some(json!({"body": "order 1", "group": "customer-7"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        ids.push((v["id"].clone(), v["duplicate"].clone()));
    }
    assert_eq!(ids[0].0, ids[1].0);
    assert_eq!((&ids[0].1, &ids[1].1), (&json!(false), &json!(true)));

    // Another tenant sees nothing and touches nothing.
    let (_, theirs) = api.call("GET", "/queues", Some(&bob_t), None).await;
    assert!(theirs["queues"].as_array().unwrap().is_empty(), "{theirs}");
    for (method, p, body) in [
        ("GET", path(""), None),
        ("POST", path("/messages"), Some(json!({"body": "x"}))),
        ("GET", path("/messages"), None),
        ("POST", path("/purge"), None),
        ("DELETE", path(""), None),
    ] {
        let (s, v) = api.call(method, &p, Some(&bob_t), body).await;
        assert_eq!(s, 404, "{method} {p}: {v}");
    }

    // Metrics and the audit log.
    let metrics = api
        .http
        .get(format!("http://{}/metrics", api.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cairn_queue_messages{") && metrics.contains("queue=\"orders.fifo\""),
        "{metrics}"
    );
    assert!(metrics.contains("cairn_queue_operations_total{op=\"send\"}"));
    let (_, log) = api
        .call(
            "GET",
            "/audit/logs?action=POST%20/api/queues",
            Some(t),
            None,
        )
        .await;
    assert!(
        !log["entries"].as_array().unwrap().is_empty(),
        "queue creation is audited: {log}"
    );

    // Purge and delete.
    let (s, v) = api.call("POST", &path("/purge"), Some(t), None).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = api.call("DELETE", &path(""), Some(t), None).await;
    assert_eq!(s, 204);
    let (s, _) = api.call("GET", &path(""), Some(t), None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn topics_fan_out_to_queues_atomically_by_filter_policy() {
    let api = Api::start(&[
        ("CAIRN_API_AUTH_RATE_LIMIT", "1000"),
        ("CAIRN_API_RATE_LIMIT", "0"),
    ]);
    let ada = first_admin(&api).await;
    let t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();
    let t = t.as_str();
    let mut queues = Vec::new();
    for name in ["all", "big-orders", "refunds"] {
        let (s, q) = api
            .call("POST", "/queues", Some(t), Some(json!({"name": name})))
            .await;
        assert_eq!(s, 201, "{q}");
        queues.push(q["id"].as_str().unwrap().to_owned());
    }
    let (s, fifo) = api
        .call(
            "POST",
            "/queues",
            Some(t),
            Some(json!({"name": "f.fifo", "fifo": true})),
        )
        .await;
    assert_eq!(s, 201, "{fifo}");
    let (s, topic) = api
        .call("POST", "/topics", Some(t), Some(json!({"name": "orders"})))
        .await;
    assert_eq!(s, 201, "{topic}");
    let tid = topic["id"].as_str().unwrap().to_owned();
    let subscribe = |queue: &str, policy: Option<Value>| {
        let mut body = json!({"protocol": "queue", "queue": queue});
        if let Some(p) = policy {
            body["filter_policy"] = p;
        }
        body
    };
    for body in [
        subscribe("all", None),
        subscribe(
            "big-orders",
            Some(json!({"kind": ["order"], "amount": [{"numeric": [">", 100]}]})),
        ),
        subscribe(&queues[2], Some(json!({"kind": [{"prefix": "refund"}]}))),
    ] {
        let (s, v) = api
            .call(
                "POST",
                &format!("/topics/{tid}/subscriptions"),
                Some(t),
                Some(body),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    // What a subscription cannot be: a FIFO queue, a queue of nobody, a broken policy.
    for body in [
        subscribe(fifo["id"].as_str().unwrap(), None),
        subscribe("nowhere", None),
        subscribe("all", Some(json!({"kind": [{"between": [1, 2]}]}))),
        subscribe("all", Some(json!(["not", "an", "object"]))),
        json!({"protocol": "carrier-pigeon", "queue": "all"}),
    ] {
        let (s, v) = api
            .call(
                "POST",
                &format!("/topics/{tid}/subscriptions"),
                Some(t),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, 400, "{body}: {v}");
    }
    let publish = |body: &str, attrs: Value| json!({"body": body, "attributes": attrs});
    let (s, v) = api
        .call(
            "POST",
            &format!("/topics/{tid}/publish"),
            Some(t),
            Some(publish(
                "order 7",
                json!({"kind": "order", "amount": "250"}),
            )),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["delivered"].as_array().unwrap().len(), 2, "{v}");
    for (body, attrs) in [
        ("order 8", json!({"kind": "order", "amount": "20"})),
        ("refund 3", json!({"kind": "refund-partial"})),
    ] {
        let (s, v) = api
            .call(
                "POST",
                &format!("/topics/{tid}/publish"),
                Some(t),
                Some(publish(body, attrs)),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let bodies = |q: String| {
        let api = &api;
        async move {
            let (s, v) = api
                .call(
                    "GET",
                    &format!("/queues/{q}/messages?count=10"),
                    Some(t),
                    None,
                )
                .await;
            assert_eq!(s, 200, "{v}");
            let mut b: Vec<String> = v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["body"].as_str().unwrap().to_owned())
                .collect();
            b.sort();
            b
        }
    };
    assert_eq!(
        bodies(queues[0].clone()).await,
        vec!["order 7", "order 8", "refund 3"]
    );
    assert_eq!(bodies(queues[1].clone()).await, vec!["order 7"]);
    assert_eq!(bodies(queues[2].clone()).await, vec!["refund 3"]);
    let (_, shown) = api
        .call("GET", &format!("/topics/{tid}"), Some(t), None)
        .await;
    assert_eq!(shown["published"], 3, "{shown}");
    assert_eq!(shown["subscriptions"].as_array().unwrap().len(), 3);

    // Another tenant sees and touches nothing.
    let (_, theirs) = api.call("GET", "/topics", Some(&bob_t), None).await;
    assert!(theirs["topics"].as_array().unwrap().is_empty(), "{theirs}");
    let (s, _) = api
        .call(
            "POST",
            &format!("/topics/{tid}/publish"),
            Some(&bob_t),
            Some(publish("x", json!({}))),
        )
        .await;
    assert_eq!(s, 404);

    // Unsubscribe and delete.
    let sid = shown["subscriptions"][0]["id"].as_str().unwrap().to_owned();
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/topics/{tid}/subscriptions/{sid}"),
            Some(t),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = api
        .call("DELETE", &format!("/topics/{tid}"), Some(t), None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = api
        .call("GET", &format!("/topics/{tid}"), Some(t), None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn cron_jobs_fire_into_queues_pause_resume_and_refuse_bad_schedules() {
    let api = Api::start(&[
        ("CAIRN_API_AUTH_RATE_LIMIT", "1000"),
        ("CAIRN_API_RATE_LIMIT", "0"),
    ]);
    let ada = first_admin(&api).await;
    let t = ada["access_token"].as_str().unwrap().to_owned();
    let bob = register(&api, &t, "bob@example.com", "Bob").await;
    let bob_t = bob["access_token"].as_str().unwrap().to_owned();
    let t = t.as_str();
    let (s, q) = api
        .call("POST", "/queues", Some(t), Some(json!({"name": "ticks"})))
        .await;
    assert_eq!(s, 201, "{q}");
    let qid = q["id"].as_str().unwrap().to_owned();
    let job = |schedule: &str, tz: &str, target: Value| json!({"name": "tick", "schedule": schedule, "timezone": tz, "target": target});
    let to_queue = json!({"type": "queue", "queue": "ticks", "body": "tick"});
    for (body, what) in [
        (job("* * * *", "UTC", to_queue.clone()), "four fields"),
        (job("61 * * * *", "UTC", to_queue.clone()), "minute 61"),
        (
            job("* * * * *", "Mars/Olympus", to_queue.clone()),
            "unknown zone",
        ),
        (
            job(
                "* * * * *",
                "UTC",
                json!({"type": "http", "url": "http://example.com", "body": "x"}),
            ),
            "http target",
        ),
        (
            job(
                "* * * * *",
                "UTC",
                json!({"type": "queue", "queue": "nowhere", "body": "x"}),
            ),
            "unknown queue",
        ),
    ] {
        let (s, v) = api.call("POST", "/cron", Some(t), Some(body)).await;
        assert_eq!(s, 400, "{what}: {v}");
    }
    let (s, j) = api
        .call(
            "POST",
            "/cron",
            Some(t),
            Some(job("* * * * *", "Europe/Paris", to_queue.clone())),
        )
        .await;
    assert_eq!(s, 201, "{j}");
    assert!(j["next_at"].is_string(), "{j}");
    let id = j["id"].as_str().unwrap().to_owned();
    // Bob's tenant has no queue "ticks": his job cannot reach Ada's.
    let (s, v) = api
        .call(
            "POST",
            "/cron",
            Some(&bob_t),
            Some(job("* * * * *", "UTC", to_queue)),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = api
        .call("GET", &format!("/cron/{id}"), Some(&bob_t), None)
        .await;
    assert_eq!(s, 404);

    // The next minute's instant fires once, into the queue.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let runs = loop {
        let (s, v) = api
            .call("GET", &format!("/cron/{id}/runs"), Some(t), None)
            .await;
        assert_eq!(s, 200, "{v}");
        let runs = v["runs"].as_array().unwrap().clone();
        if !runs.is_empty() {
            break runs;
        }
        assert!(std::time::Instant::now() < deadline, "the job never fired");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_eq!(runs[0]["status"], "delivered", "{runs:?}");
    assert!(
        runs[0]["scheduled_at"].as_str().unwrap().ends_with(":00Z"),
        "{runs:?}"
    );
    let (_, got) = api
        .call(
            "GET",
            &format!("/queues/{qid}/messages?count=10"),
            Some(t),
            None,
        )
        .await;
    let msgs = got["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), runs.len(), "one message per firing: {got}");
    assert_eq!(msgs[0]["body"], "tick");
    assert_eq!(msgs[0]["attributes"]["cron-job"], "tick");

    // Pause, resume, delete.
    let (s, v) = api
        .call("POST", &format!("/cron/{id}/pause"), Some(t), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["paused"], true);
    assert!(v["next_at"].is_null());
    let (s, v) = api
        .call("POST", &format!("/cron/{id}/resume"), Some(t), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["next_at"].is_string(), "{v}");
    let (_, list) = api.call("GET", "/cron", Some(t), None).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
    let (s, _) = api
        .call("DELETE", &format!("/cron/{id}"), Some(t), None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = api.call("GET", &format!("/cron/{id}"), Some(t), None).await;
    assert_eq!(s, 404);
}
