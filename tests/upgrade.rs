//! Upgrades: a data folder written by the release before typed, versioned tables
//! (`tests/fixtures/data-before-typed-tables.tar.gz`, made by
//! `tests/fixtures/make-data-before-typed-tables.sh` with that release's binary) opens and
//! serves under this build: users, sessions, S3 and API keys, buckets, objects inline and in
//! chunks, and images are all there, new writes work, and a second start changes nothing.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use cairn_tests::CairnProcess;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_cairn");
const ROOT_AK: &str = "CAIRNFIXTUREROOTKEY1";
const ROOT_SK: &str = "fixture-root-secret";

fn serve(data: &Path) -> (CairnProcess, std::net::SocketAddr) {
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
            ("CAIRN_ROOT_ACCESS_KEY", ROOT_AK),
            ("CAIRN_ROOT_SECRET_KEY", ROOT_SK),
            ("CAIRN_LOG", "info,openraft=off"),
        ],
        Path::new("/"),
    )
    .unwrap();
    let addr = p.wait_listening().unwrap();
    (p, addr)
}

fn s3(addr: std::net::SocketAddr) -> Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(Credentials::new(ROOT_AK, ROOT_SK, None, None, "test"))
        .force_path_style(true)
        .build();
    Client::from_conf(conf)
}

/// The 200 KiB object the fixture stored in chunks.
fn large() -> Vec<u8> {
    (0..204_800u32).map(|i| (i * 7 % 251) as u8).collect()
}

async fn get(client: &Client, key: &str) -> Vec<u8> {
    // The master may still be electing itself after the start: retry for a while.
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    loop {
        match client.get_object().bucket("kept").key(key).send().await {
            Ok(o) => return o.body.collect().await.unwrap().to_vec(),
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => panic!("GET kept/{key}: {e:?}"),
        }
    }
}

async fn call(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method.parse().unwrap(), format!("http://{addr}/api{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The fixture's admin logs in; the access token.
async fn login(addr: std::net::SocketAddr, http: &reqwest::Client) -> String {
    let (status, login) = call(
        http,
        addr,
        "POST",
        "/auth/login",
        None,
        Some(json!({"email": "root@example.com", "password": "fixture-password-1"})),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    login["access_token"].as_str().unwrap().to_owned()
}

/// Everything the fixture holds, seen through S3 and REST.
async fn check_fixture(addr: std::net::SocketAddr, http: &reqwest::Client) -> String {
    let c = s3(addr);
    assert_eq!(
        get(&c, "small.txt").await,
        b"small object from the old release\n"
    );
    assert_eq!(get(&c, "large.bin").await, large());
    let token = login(addr, http).await;
    // The root key (adopted by the admin at setup) and the admin's own S3 key: records from
    // before versions, and from before tenants for the root key's first life.
    let (status, keys) = call(http, addr, "GET", "/s3-keys", Some(&token), None).await;
    assert_eq!(status, 200, "{keys}");
    let keys = keys["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().any(|k| k["access_key"] == ROOT_AK), "{keys:?}");
    for k in &keys {
        assert!(k["created_at"].as_str().unwrap().ends_with('Z'), "{k}");
    }
    let (status, api_keys) = call(http, addr, "GET", "/keys", Some(&token), None).await;
    assert_eq!(status, 200, "{api_keys}");
    assert_eq!(api_keys["keys"].as_array().unwrap().len(), 1, "{api_keys}");
    let (status, images) = call(http, addr, "GET", "/images", Some(&token), None).await;
    assert_eq!(status, 200, "{images}");
    let images = images["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["name"], "fixture image");
    // The audit log the old release wrote.
    let (status, log) = call(http, addr, "GET", "/audit/logs", Some(&token), None).await;
    assert_eq!(status, 200, "{log}");
    assert!(
        log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "POST /api/auth/setup"),
        "{log}"
    );
    token
}

#[tokio::test]
async fn a_data_folder_from_before_typed_tables_opens_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data-before-typed-tables.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "unpacking {}", fixture.display());
    let data = dir.path().join("data");
    let http = reqwest::Client::new();

    let (mut p, addr) = serve(&data);
    let token = check_fixture(addr, &http).await;
    // New writes beside the old records: an object, an S3 key, an image.
    let c = s3(addr);
    c.put_object()
        .bucket("kept")
        .key("new.txt")
        .body(ByteStream::from_static(b"written after the upgrade"))
        .send()
        .await
        .unwrap();
    let mut new_large = large();
    new_large.reverse();
    c.put_object()
        .bucket("kept")
        .key("new-large.bin")
        .body(ByteStream::from(new_large.clone()))
        .send()
        .await
        .unwrap();
    let (status, created) = call(&http, addr, "POST", "/s3-keys", Some(&token), None).await;
    assert_eq!(status, 201, "{created}");
    let (status, image) = call(
        &http,
        addr,
        "POST",
        "/images",
        Some(&token),
        Some(json!({"name": "after the upgrade"})),
    )
    .await;
    assert_eq!(status, 201, "{image}");
    p.signal(libc::SIGTERM).unwrap();
    assert!(p.wait().unwrap().success(), "{}", p.log());

    // A second start: the upgrade ran once; old and new records read alike.
    let (_p, addr) = serve(&data);
    let token = check_fixture_after(addr, &http).await;
    let c = s3(addr);
    assert_eq!(get(&c, "new.txt").await, b"written after the upgrade");
    assert_eq!(get(&c, "new-large.bin").await, new_large);
    // Deleting the old chunked object releases its chunk, whose record is from before
    // versions.
    c.delete_object()
        .bucket("kept")
        .key("large.bin")
        .send()
        .await
        .unwrap();
    assert!(
        c.get_object()
            .bucket("kept")
            .key("large.bin")
            .send()
            .await
            .is_err()
    );
    let (_, keys) = call(&http, addr, "GET", "/s3-keys", Some(&token), None).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 3, "{keys}");
    let (_, images) = call(&http, addr, "GET", "/images", Some(&token), None).await;
    assert_eq!(images["images"].as_array().unwrap().len(), 2, "{images}");
}

/// After the first start's writes: the old objects and a login still work.
async fn check_fixture_after(addr: std::net::SocketAddr, http: &reqwest::Client) -> String {
    let c = s3(addr);
    assert_eq!(get(&c, "large.bin").await, large());
    login(addr, http).await
}
