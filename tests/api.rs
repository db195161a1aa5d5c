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
    // Listed without its secret; the root key is not the user's.
    let (status, list) = api.call("GET", "/s3-keys", Some(&token), None).await;
    assert_eq!(status, 200);
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{list}");
    assert_eq!(keys[0]["access_key"], ak.as_str());
    assert!(keys[0].get("secret_key").is_none());
    assert_eq!(
        api.call(
            "DELETE",
            "/s3-keys/CAIRNAPITESTKEY00001",
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
    // Listed without the key itself, with its last use.
    let (_, list) = api.call("GET", "/keys", Some(&token), None).await;
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0].get("key").is_none());
    assert_eq!(keys[0]["scopes"], json!(["storage:read"]));
    assert!(keys[0]["last_used_at"].is_u64(), "{list}");
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
    assert!(short["expires_at"].is_u64());
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
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    // Request bodies carry their schemas.
    let login = &paths["/api/auth/login"]["post"]["requestBody"];
    assert!(login.to_string().contains("LoginBody"), "{login}");
}
