//! End-to-end S3: a real `cairn serve` (and a real cluster of processes) driven by the
//! `aws-sdk-s3` client, plus raw HTTP for presigned URLs, CORS and malformed input.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketVersioningStatus, CompletedMultipartUpload, CompletedPart,
    CorsConfiguration, CorsRule, Delete, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleFilter, MetadataDirective, ObjectIdentifier, Tag, Tagging,
    VersioningConfiguration,
};
use cairn_tests::CairnProcess;

const BIN: &str = env!("CARGO_BIN_EXE_cairn");
const AK: &str = "CAIRNTESTROOTKEY0001";
const SK: &str = "test-root-secret-key-0123456789abcdefghij";

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

struct Server {
    process: CairnProcess,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

fn serve(extra: &[&str], env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    serve_in(dir, &data, extra, env)
}

/// `cairn serve` with its data folder at `data` (kept, with `dir`, as long as the server).
fn serve_in(dir: tempfile::TempDir, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    init();
    let data = data.to_str().unwrap();
    let mut args = vec![
        "serve",
        "--data",
        data,
        "--listen",
        "127.0.0.1:0",
        "--cluster-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut envs = vec![
        ("CAIRN_ROOT_ACCESS_KEY", AK),
        ("CAIRN_ROOT_SECRET_KEY", SK),
        ("CAIRN_LOG", "info,openraft=off"),
    ];
    envs.extend_from_slice(env);
    let mut process = CairnProcess::start(Path::new(BIN), &args, &envs, Path::new("/")).unwrap();
    let addr = process.wait_listening().unwrap();
    Server {
        process,
        addr,
        _dir: dir,
    }
}

fn client_with(addr: std::net::SocketAddr, ak: &str, sk: &str) -> Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(Credentials::new(ak, sk, None, None, "test"))
        .force_path_style(true)
        .build();
    Client::from_conf(conf)
}

fn client(addr: std::net::SocketAddr) -> Client {
    client_with(addr, AK, SK)
}

/// The S3 error code of a failed call (HEAD answers carry none: their status then).
fn code<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    r: Result<impl std::fmt::Debug, SdkError<E, R>>,
) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => match e.code() {
            Some(c) => c.to_owned(),
            None => format!("{e:?}"),
        },
    }
}

fn status<E, R: HasStatus>(r: &Result<impl std::fmt::Debug, SdkError<E, R>>) -> u16 {
    match r {
        Err(e) => e.raw_response().map_or(0, HasStatus::status),
        Ok(_) => 200,
    }
}

trait HasStatus {
    fn status(&self) -> u16;
}
impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

fn md5_hex(b: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Deterministic bytes (xorshift) so large bodies need no fixtures.
fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// A request signed with SigV4 (the root key) by hand, for bodies the SDK would not send.
fn signed_request(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Vec<u8>,
) -> reqwest::Request {
    signed_request_at(http, method, url, body, SystemTime::now())
}

fn signed_request_at(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Vec<u8>,
    time: SystemTime,
) -> reqwest::Request {
    use aws_sigv4::http_request::{
        PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
    };
    let identity = Credentials::new(AK, SK, None, None, "test").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let signable =
        SignableRequest::new(method, url, std::iter::empty(), SignableBody::Bytes(&body)).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = http
        .request(method.parse().unwrap(), url)
        .body(body.clone());
    for (k, v) in instructions.headers() {
        req = req.header(k, v);
    }
    req.build().unwrap()
}

async fn signed(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    http.execute(signed_request(http, method, url, body))
        .await
        .unwrap()
}

async fn wait_ready(addr: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    loop {
        if let Ok(r) = reqwest::get(format!("http://{addr}/ready")).await
            && r.status().as_u16() == 200
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_bytes(c: &Client, bucket: &str, key: &str) -> Vec<u8> {
    c.get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
        .to_vec()
}

#[tokio::test]
async fn buckets_objects_metadata_conditions_and_errors() {
    let s = serve(&[], &[]);
    wait_ready(s.addr).await;
    let c = client(s.addr);

    // Buckets.
    c.create_bucket().bucket("photos").send().await.unwrap();
    // In us-east-1 (the default region) creating a bucket you own again succeeds, as AWS's
    // legacy region answers; other regions say BucketAlreadyOwnedByYou.
    c.create_bucket().bucket("photos").send().await.unwrap();
    assert_eq!(
        code(c.create_bucket().bucket("Bad_Name").send().await),
        "InvalidBucketName"
    );
    assert_eq!(
        code(c.create_bucket().bucket("metrics").send().await),
        "InvalidBucketName"
    );
    c.head_bucket().bucket("photos").send().await.unwrap();
    assert_eq!(
        status(&c.head_bucket().bucket("nope-bucket").send().await),
        404
    );
    let names: Vec<String> = c
        .list_buckets()
        .send()
        .await
        .unwrap()
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_owned))
        .collect();
    assert_eq!(names, vec!["photos".to_string()]);
    let loc = c
        .get_bucket_location()
        .bucket("photos")
        .send()
        .await
        .unwrap();
    assert!(
        loc.location_constraint()
            .is_none_or(|l| l.as_str().is_empty())
    );

    // An object with metadata, headers and tags; ETag is the MD5.
    let body = b"hello, cairn".to_vec();
    let put = c
        .put_object()
        .bucket("photos")
        .key("a/hello.txt")
        .body(ByteStream::from(body.clone()))
        .content_type("text/plain")
        .content_disposition("attachment; filename=\"x.txt\"")
        .content_encoding("identity")
        .cache_control("max-age=60")
        .metadata("colour", "blue")
        .metadata("mood", "calm")
        .tagging("k1=v1&k2=v%202")
        .send()
        .await
        .unwrap();
    let etag = format!("\"{}\"", md5_hex(&body));
    assert_eq!(put.e_tag(), Some(etag.as_str()));
    let got = c
        .get_object()
        .bucket("photos")
        .key("a/hello.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(got.e_tag(), Some(etag.as_str()));
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(
        got.content_disposition(),
        Some("attachment; filename=\"x.txt\"")
    );
    assert_eq!(got.cache_control(), Some("max-age=60"));
    assert_eq!(got.content_length(), Some(body.len() as i64));
    assert_eq!(got.metadata().unwrap()["colour"], "blue");
    assert_eq!(got.tag_count(), Some(2));
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        body.as_slice()
    );
    let tags = c
        .get_object_tagging()
        .bucket("photos")
        .key("a/hello.txt")
        .send()
        .await
        .unwrap();
    let mut t: Vec<(String, String)> = tags
        .tag_set()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    t.sort();
    assert_eq!(
        t,
        vec![("k1".into(), "v1".into()), ("k2".into(), "v 2".into())]
    );

    // Response header overrides.
    let got = c
        .get_object()
        .bucket("photos")
        .key("a/hello.txt")
        .response_content_type("application/x-test")
        .response_cache_control("no-store")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("application/x-test"));
    assert_eq!(got.cache_control(), Some("no-store"));

    // HEAD.
    let head = c
        .head_object()
        .bucket("photos")
        .key("a/hello.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(body.len() as i64));
    assert_eq!(head.metadata().unwrap()["mood"], "calm");
    assert_eq!(
        status(&c.head_object().bucket("photos").key("missing").send().await),
        404
    );

    // Ranges.
    let r = c
        .get_object()
        .bucket("photos")
        .key("a/hello.txt")
        .range("bytes=0-4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.content_range(), Some("bytes 0-4/12"));
    assert_eq!(
        r.body.collect().await.unwrap().into_bytes().as_ref(),
        b"hello"
    );
    let r = c
        .get_object()
        .bucket("photos")
        .key("a/hello.txt")
        .range("bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.body.collect().await.unwrap().into_bytes().as_ref(),
        b"cairn"
    );
    let r = c
        .get_object()
        .bucket("photos")
        .key("a/hello.txt")
        .range("bytes=7-")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.body.collect().await.unwrap().into_bytes().as_ref(),
        b"cairn"
    );
    let bad = c
        .get_object()
        .bucket("photos")
        .key("a/hello.txt")
        .range("bytes=100-200")
        .send()
        .await;
    assert_eq!(status(&bad), 416);
    assert_eq!(code(bad), "InvalidRange");

    // Conditional reads.
    let r = c
        .get_object()
        .bucket("photos")
        .key("a/hello.txt")
        .if_none_match(&etag)
        .send()
        .await;
    assert_eq!(status(&r), 304);
    let r = c
        .get_object()
        .bucket("photos")
        .key("a/hello.txt")
        .if_match("\"0000\"")
        .send()
        .await;
    assert_eq!(status(&r), 412);
    c.get_object()
        .bucket("photos")
        .key("a/hello.txt")
        .if_match(&etag)
        .send()
        .await
        .unwrap();
    let future =
        aws_sdk_s3::primitives::DateTime::from(SystemTime::now() + Duration::from_secs(3600));
    let past =
        aws_sdk_s3::primitives::DateTime::from(SystemTime::now() - Duration::from_secs(3600));
    assert_eq!(
        status(
            &c.get_object()
                .bucket("photos")
                .key("a/hello.txt")
                .if_modified_since(future)
                .send()
                .await
        ),
        304
    );
    assert_eq!(
        status(
            &c.get_object()
                .bucket("photos")
                .key("a/hello.txt")
                .if_unmodified_since(past)
                .send()
                .await
        ),
        412
    );
    c.get_object()
        .bucket("photos")
        .key("a/hello.txt")
        .if_modified_since(past)
        .send()
        .await
        .unwrap();

    // Conditional PUT: create only if absent.
    let r = c
        .put_object()
        .bucket("photos")
        .key("a/hello.txt")
        .if_none_match("*")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(code(r), "PreconditionFailed");
    c.put_object()
        .bucket("photos")
        .key("a/new.txt")
        .if_none_match("*")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    let r = c
        .put_object()
        .bucket("photos")
        .key("a/new.txt")
        .if_match("\"ffff\"")
        .body(ByteStream::from_static(b"y"))
        .send()
        .await;
    assert_eq!(code(r), "PreconditionFailed");
    assert_eq!(get_bytes(&c, "photos", "a/new.txt").await, b"x");

    // Every checksum current SDKs send (as aws-chunked trailers or headers) is verified, kept,
    // and returned when asked for; a wrong one is refused and stores nothing.
    use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode};
    for (i, alg) in [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc32C,
        ChecksumAlgorithm::Crc64Nvme,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("sum/{}", alg.as_str());
        let data = pattern(100 + i as u64, 70_000);
        let put = c
            .put_object()
            .bucket("photos")
            .key(&key)
            .checksum_algorithm(alg.clone())
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        let sent = [
            put.checksum_crc32(),
            put.checksum_crc32_c(),
            put.checksum_crc64_nvme(),
            put.checksum_sha1(),
            put.checksum_sha256(),
        ];
        assert!(sent[i].is_some(), "{alg:?}: {put:?}");
        let got = c
            .get_object()
            .bucket("photos")
            .key(&key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        let back = [
            got.checksum_crc32(),
            got.checksum_crc32_c(),
            got.checksum_crc64_nvme(),
            got.checksum_sha1(),
            got.checksum_sha256(),
        ];
        assert_eq!(back[i], sent[i], "{alg:?}");
        assert_eq!(
            got.body.collect().await.unwrap().into_bytes().as_ref(),
            data.as_slice()
        );
    }
    let r = c
        .put_object()
        .bucket("photos")
        .key("sum/wrong")
        .checksum_crc32("AAAAAA==")
        .body(ByteStream::from_static(b"checked bytes"))
        .send()
        .await;
    assert_eq!(code(r), "BadDigest");
    assert_eq!(
        code(
            c.get_object()
                .bucket("photos")
                .key("sum/wrong")
                .send()
                .await
        ),
        "NoSuchKey"
    );

    // Content-MD5 is checked.
    let r = c
        .put_object()
        .bucket("photos")
        .key("bad-md5")
        .content_md5("AAAAAAAAAAAAAAAAAAAAAA==")
        .body(ByteStream::from_static(b"data"))
        .send()
        .await;
    assert_eq!(code(r), "BadDigest");
    assert_eq!(
        code(c.get_object().bucket("photos").key("bad-md5").send().await),
        "NoSuchKey"
    );

    // Unicode and special characters in keys.
    let keys = [
        "ünïcödé/日本語/файл.txt",
        "spaces in name.txt",
        "plus+and&amp=eq?q#hash%pct",
        "emoji-😀-key",
        "trailing/slash/",
        "a//double//slash",
    ];
    for (i, k) in keys.iter().enumerate() {
        c.put_object()
            .bucket("photos")
            .key(*k)
            .body(ByteStream::from(pattern(i as u64, 100 + i)))
            .send()
            .await
            .unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            get_bytes(&c, "photos", k).await,
            pattern(i as u64, 100 + i),
            "{k}"
        );
    }
    let listed: Vec<String> = c
        .list_objects_v2()
        .bucket("photos")
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    for k in keys {
        assert!(listed.contains(&k.to_owned()), "{k} not in {listed:?}");
    }

    // A large object goes through chunkservers; ranges across chunk boundaries read right.
    let big = pattern(7, 20 << 20);
    let put = c
        .put_object()
        .bucket("photos")
        .key("big.bin")
        .body(ByteStream::from(big.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(put.e_tag(), Some(format!("\"{}\"", md5_hex(&big)).as_str()));
    assert_eq!(get_bytes(&c, "photos", "big.bin").await, big);
    let r = c
        .get_object()
        .bucket("photos")
        .key("big.bin")
        .range("bytes=8388000-8390000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.body.collect().await.unwrap().into_bytes().as_ref(),
        &big[8_388_000..=8_390_000]
    );

    // CopyObject: metadata copied by default, replaced on request; self-copy needs a change.
    let cp = c
        .copy_object()
        .bucket("photos")
        .key("copy.txt")
        .copy_source("photos/a/hello.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        cp.copy_object_result().unwrap().e_tag(),
        Some(etag.as_str())
    );
    let got = c
        .head_object()
        .bucket("photos")
        .key("copy.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(got.metadata().unwrap()["colour"], "blue");
    c.copy_object()
        .bucket("photos")
        .key("copy2.txt")
        .copy_source("photos/big.bin")
        .metadata_directive(MetadataDirective::Replace)
        .metadata("fresh", "yes")
        .content_type("application/octet-stream")
        .send()
        .await
        .unwrap();
    let got = c
        .head_object()
        .bucket("photos")
        .key("copy2.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.metadata().unwrap().get("fresh").map(String::as_str),
        Some("yes")
    );
    assert!(got.metadata().unwrap().get("colour").is_none());
    assert_eq!(get_bytes(&c, "photos", "copy2.txt").await, big);
    let r = c
        .copy_object()
        .bucket("photos")
        .key("copy.txt")
        .copy_source("photos/copy.txt")
        .send()
        .await;
    assert_eq!(code(r), "InvalidRequest");
    let r = c
        .copy_object()
        .bucket("photos")
        .key("x")
        .copy_source("photos/nothing-here")
        .send()
        .await;
    assert_eq!(code(r), "NoSuchKey");
    // Deleting the source leaves the copy whole (shared chunks are reference counted).
    c.delete_object()
        .bucket("photos")
        .key("big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "photos", "copy2.txt").await, big);

    // Object and bucket tagging.
    c.put_object_tagging()
        .bucket("photos")
        .key("copy.txt")
        .tagging(
            Tagging::builder()
                .tag_set(Tag::builder().key("x").value("1").build().unwrap())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let t = c
        .get_object_tagging()
        .bucket("photos")
        .key("copy.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(t.tag_set().len(), 1);
    c.delete_object_tagging()
        .bucket("photos")
        .key("copy.txt")
        .send()
        .await
        .unwrap();
    assert!(
        c.get_object_tagging()
            .bucket("photos")
            .key("copy.txt")
            .send()
            .await
            .unwrap()
            .tag_set()
            .is_empty()
    );
    assert_eq!(
        code(c.get_bucket_tagging().bucket("photos").send().await),
        "NoSuchTagSet"
    );
    c.put_bucket_tagging()
        .bucket("photos")
        .tagging(
            Tagging::builder()
                .tag_set(Tag::builder().key("team").value("core").build().unwrap())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.get_bucket_tagging()
            .bucket("photos")
            .send()
            .await
            .unwrap()
            .tag_set()[0]
            .value(),
        "core"
    );
    c.delete_bucket_tagging()
        .bucket("photos")
        .send()
        .await
        .unwrap();

    // Missing things.
    assert_eq!(
        code(c.get_object().bucket("photos").key("nope").send().await),
        "NoSuchKey"
    );
    assert_eq!(
        code(c.get_object().bucket("no-bucket").key("k").send().await),
        "NoSuchBucket"
    );
    assert_eq!(
        code(
            c.put_object()
                .bucket("no-bucket")
                .key("k")
                .body(ByteStream::from_static(b"x"))
                .send()
                .await
        ),
        "NoSuchBucket"
    );

    // DeleteObjects, then the bucket empties and goes.
    assert_eq!(
        code(c.delete_bucket().bucket("photos").send().await),
        "BucketNotEmpty"
    );
    let all: Vec<String> = c
        .list_objects_v2()
        .bucket("photos")
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    let del = Delete::builder()
        .set_objects(Some(
            all.iter()
                .map(|k| ObjectIdentifier::builder().key(k).build().unwrap())
                .collect(),
        ))
        .build()
        .unwrap();
    let out = c
        .delete_objects()
        .bucket("photos")
        .delete(del)
        .send()
        .await
        .unwrap();
    assert_eq!(out.deleted().len(), all.len());
    assert!(out.errors().is_empty());
    assert_eq!(
        c.list_objects_v2()
            .bucket("photos")
            .send()
            .await
            .unwrap()
            .key_count(),
        Some(0)
    );
    c.delete_bucket().bucket("photos").send().await.unwrap();
    assert_eq!(
        code(c.delete_bucket().bucket("photos").send().await),
        "NoSuchBucket"
    );
}

#[tokio::test]
async fn auth_presigned_urls_anonymous_access_and_bad_input() {
    let s = serve(&[], &[]);
    wait_ready(s.addr).await;
    let c = client(s.addr);
    c.create_bucket().bucket("private").send().await.unwrap();
    c.put_object()
        .bucket("private")
        .key("doc.txt")
        .body(ByteStream::from_static(b"secret doc"))
        .send()
        .await
        .unwrap();

    // Wrong secret, unknown key.
    let wrong = client_with(s.addr, AK, "not-the-secret");
    assert_eq!(
        code(wrong.list_buckets().send().await),
        "SignatureDoesNotMatch"
    );
    let unknown = client_with(s.addr, "AKIDOESNOTEXIST00000", SK);
    assert_eq!(
        code(unknown.list_buckets().send().await),
        "InvalidAccessKeyId"
    );

    // Clock skew: a request signed an hour ago is refused (the SDK itself would correct its
    // clock from the answer and retry, so this one is signed by hand).
    let http = reqwest::Client::new();
    let req = signed_request_at(
        &http,
        "GET",
        &format!("http://{}/", s.addr),
        Vec::new(),
        SystemTime::now() - Duration::from_secs(3600),
    );
    let r = http.execute(req).await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("RequestTimeTooSkewed"));
    assert_eq!(
        signed(&http, "GET", &format!("http://{}/", s.addr), Vec::new())
            .await
            .status()
            .as_u16(),
        200
    );

    // Anonymous requests are refused, and every response carries a request id that the error
    // body repeats.
    let r = http
        .get(format!("http://{}/private/doc.txt", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let id = r.headers()["x-amz-request-id"].to_str().unwrap().to_owned();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("<Code>AccessDenied</Code>") && text.contains(&id),
        "{text}"
    );

    // Presigned GET and PUT, fetched with a plain HTTP client.
    let cfg = PresigningConfig::expires_in(Duration::from_secs(300)).unwrap();
    let p = c
        .get_object()
        .bucket("private")
        .key("doc.txt")
        .presigned(cfg.clone())
        .await
        .unwrap();
    let r = http.get(p.uri()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"secret doc");
    let p = c
        .put_object()
        .bucket("private")
        .key("up.txt")
        .presigned(cfg.clone())
        .await
        .unwrap();
    let mut req = http.put(p.uri()).body("uploaded by URL");
    for (k, v) in p.headers() {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    assert_eq!(get_bytes(&c, "private", "up.txt").await, b"uploaded by URL");
    // A tampered presigned URL is refused.
    let p = c
        .get_object()
        .bucket("private")
        .key("doc.txt")
        .presigned(cfg.clone())
        .await
        .unwrap();
    let tampered = p.uri().replace("doc.txt", "up.txt");
    let r = http.get(tampered).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("SignatureDoesNotMatch"));
    // An expired one too.
    let old = PresigningConfig::builder()
        .start_time(SystemTime::now() - Duration::from_secs(7200))
        .expires_in(Duration::from_secs(60))
        .build()
        .unwrap();
    let p = c
        .get_object()
        .bucket("private")
        .key("doc.txt")
        .presigned(old)
        .await
        .unwrap();
    assert_eq!(
        http.get(p.uri()).send().await.unwrap().status().as_u16(),
        403
    );

    // A public-read bucket serves anonymous reads, and only reads.
    c.create_bucket()
        .bucket("public")
        .acl(aws_sdk_s3::types::BucketCannedAcl::PublicRead)
        .send()
        .await
        .unwrap();
    c.put_object()
        .bucket("public")
        .key("index.html")
        .body(ByteStream::from_static(b"<h1>hi</h1>"))
        .content_type("text/html")
        .send()
        .await
        .unwrap();
    let r = http
        .get(format!("http://{}/public/index.html", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/html");
    let r = http
        .put(format!("http://{}/public/evil.html", s.addr))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = http
        .get(format!("http://{}/private/doc.txt", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let acl = c.get_bucket_acl().bucket("public").send().await.unwrap();
    assert_eq!(acl.grants().len(), 2);

    // Malformed XML in a signed request (a presigned URL signs no body).
    c.create_bucket().bucket("xml").send().await.unwrap();
    let up = c
        .create_multipart_upload()
        .bucket("xml")
        .key("k")
        .send()
        .await
        .unwrap();
    let url = format!(
        "http://{}/xml/k?uploadId={}",
        s.addr,
        up.upload_id().unwrap()
    );
    let r = signed(
        &http,
        "POST",
        &url,
        b"<CompleteMultipartUpload><Part>".to_vec(),
    )
    .await;
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("MalformedXML"));
    let r = signed(
        &http,
        "PUT",
        &format!("http://{}/xml?versioning", s.addr),
        b"not xml at all".to_vec(),
    )
    .await;
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("MalformedXML"));
    // A signed request whose body is not the one signed.
    let url = format!("http://{}/xml/tampered", s.addr);
    let mut req = signed_request(&http, "PUT", &url, b"original".to_vec());
    *req.body_mut() = Some(reqwest::Body::from("tampered"));
    let r = http.execute(req).await.unwrap();
    assert_eq!(r.status().as_u16(), 400, "{:?}", r.headers());
    let text = r.text().await.unwrap();
    assert!(
        text.contains("XAmzContentSHA256Mismatch") || text.contains("BadDigest"),
        "{text}"
    );
    assert_eq!(
        code(c.get_object().bucket("xml").key("tampered").send().await),
        "NoSuchKey"
    );
    // A body that claims more than 5 GiB is refused before any byte is stored.
    let p = c
        .put_object()
        .bucket("xml")
        .key("huge")
        .presigned(cfg.clone())
        .await
        .unwrap();
    let r = http
        .put(p.uri())
        .header("content-length", (6u64 << 30).to_string())
        .body("tiny")
        .send()
        .await;
    if let Ok(r) = r {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    // Oversize headers are refused with a 4xx, and the server keeps serving.
    let r = http
        .get(format!("http://{}/xml/k", s.addr))
        .header("x-amz-meta-big", "v".repeat(200_000))
        .send()
        .await;
    if let Ok(r) = r {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    // Garbage in the Authorization header.
    let r = http
        .get(format!("http://{}/xml", s.addr))
        .header("authorization", "AWS4-HMAC-SHA256 nonsense")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    assert_eq!(get_bytes(&c, "private", "doc.txt").await, b"secret doc");

    // Metrics count what happened.
    let m = http
        .get(format!("http://{}/metrics", s.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("cairn_requests_total{op=\"PUT object\",status=\"200\"}"),
        "{m}"
    );
    assert!(m.contains("cairn_request_seconds_bucket"));
    assert!(m.contains("cairn_bytes_in_total"));
    assert!(m.contains("cairn_chunks_under_replicated"));

    // The secret key is stored sealed: no file of the data folder (Raft log, state, chunks)
    // holds it in the clear.
    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(&s._dir.path().join("data"), &mut all);
    assert!(all.iter().any(|p| p.ends_with("raft-log.redb")));
    for p in all {
        let bytes = std::fs::read(&p).unwrap_or_default();
        assert!(
            !bytes.windows(SK.len()).any(|w| w == SK.as_bytes()),
            "{} holds the secret key in the clear",
            p.display()
        );
    }
}

#[tokio::test]
async fn versioning_delete_markers_and_suspension() {
    let s = serve(&[], &[]);
    wait_ready(s.addr).await;
    let c = client(s.addr);
    c.create_bucket().bucket("ver").send().await.unwrap();
    assert!(
        c.get_bucket_versioning()
            .bucket("ver")
            .send()
            .await
            .unwrap()
            .status()
            .is_none()
    );
    // Unversioned: version id "null" is not reported; overwrites replace.
    c.put_object()
        .bucket("ver")
        .key("k")
        .body(ByteStream::from_static(b"v0"))
        .send()
        .await
        .unwrap();
    c.put_bucket_versioning()
        .bucket("ver")
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.get_bucket_versioning()
            .bucket("ver")
            .send()
            .await
            .unwrap()
            .status(),
        Some(&BucketVersioningStatus::Enabled)
    );
    let v1 = c
        .put_object()
        .bucket("ver")
        .key("k")
        .body(ByteStream::from_static(b"v1"))
        .send()
        .await
        .unwrap();
    let v2 = c
        .put_object()
        .bucket("ver")
        .key("k")
        .body(ByteStream::from_static(b"v2"))
        .send()
        .await
        .unwrap();
    let (v1, v2) = (
        v1.version_id().unwrap().to_owned(),
        v2.version_id().unwrap().to_owned(),
    );
    assert_ne!(v1, v2);
    assert_eq!(get_bytes(&c, "ver", "k").await, b"v2");
    let old = c
        .get_object()
        .bucket("ver")
        .key("k")
        .version_id(&v1)
        .send()
        .await
        .unwrap();
    assert_eq!(old.version_id(), Some(v1.as_str()));
    assert_eq!(
        old.body.collect().await.unwrap().into_bytes().as_ref(),
        b"v1"
    );
    let null = c
        .get_object()
        .bucket("ver")
        .key("k")
        .version_id("null")
        .send()
        .await
        .unwrap();
    assert_eq!(
        null.body.collect().await.unwrap().into_bytes().as_ref(),
        b"v0"
    );

    // Delete stacks a marker; the key vanishes from listings but its versions remain.
    let d = c
        .delete_object()
        .bucket("ver")
        .key("k")
        .send()
        .await
        .unwrap();
    assert_eq!(d.delete_marker(), Some(true));
    let marker = d.version_id().unwrap().to_owned();
    assert_eq!(
        code(c.get_object().bucket("ver").key("k").send().await),
        "NoSuchKey"
    );
    assert_eq!(
        c.list_objects_v2()
            .bucket("ver")
            .send()
            .await
            .unwrap()
            .key_count(),
        Some(0)
    );
    let lv = c.list_object_versions().bucket("ver").send().await.unwrap();
    assert_eq!(lv.versions().len(), 3);
    assert_eq!(lv.delete_markers().len(), 1);
    assert_eq!(lv.delete_markers()[0].version_id(), Some(marker.as_str()));
    assert_eq!(lv.delete_markers()[0].is_latest(), Some(true));
    assert_eq!(
        code(
            c.get_object()
                .bucket("ver")
                .key("k")
                .version_id(&marker)
                .send()
                .await
        ),
        "MethodNotAllowed"
    );
    assert_eq!(
        code(
            c.get_object()
                .bucket("ver")
                .key("k")
                .version_id("0123456789abcdef0123456789abcdef")
                .send()
                .await
        ),
        "NoSuchVersion"
    );
    assert_eq!(
        code(
            c.get_object()
                .bucket("ver")
                .key("k")
                .version_id("garbage")
                .send()
                .await
        ),
        "InvalidArgument"
    );
    // Removing the marker brings the object back.
    c.delete_object()
        .bucket("ver")
        .key("k")
        .version_id(&marker)
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "ver", "k").await, b"v2");
    // Deleting a specific version removes just it.
    c.delete_object()
        .bucket("ver")
        .key("k")
        .version_id(&v2)
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "ver", "k").await, b"v1");

    // Versions page by key and version markers.
    for i in 0..3 {
        c.put_object()
            .bucket("ver")
            .key("p")
            .body(ByteStream::from(format!("p{i}").into_bytes()))
            .send()
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let (mut km, mut vm): (Option<String>, Option<String>) = (None, None);
    loop {
        let page = c
            .list_object_versions()
            .bucket("ver")
            .max_keys(2)
            .set_key_marker(km.clone())
            .set_version_id_marker(vm.clone())
            .send()
            .await
            .unwrap();
        for v in page.versions() {
            seen.push((
                v.key().unwrap().to_owned(),
                v.version_id().unwrap().to_owned(),
            ));
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        km = page.next_key_marker().map(str::to_owned);
        vm = page.next_version_id_marker().map(str::to_owned);
    }
    assert_eq!(seen.len(), 2 + 3, "{seen:?}");
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len());

    // Suspended: new writes take the null version, older versions stay.
    c.put_bucket_versioning()
        .bucket("ver")
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Suspended)
                .build(),
        )
        .send()
        .await
        .unwrap();
    c.put_object()
        .bucket("ver")
        .key("k")
        .body(ByteStream::from_static(b"s1"))
        .send()
        .await
        .unwrap();
    c.put_object()
        .bucket("ver")
        .key("k")
        .body(ByteStream::from_static(b"s2"))
        .send()
        .await
        .unwrap();
    let lv = c
        .list_object_versions()
        .bucket("ver")
        .prefix("k")
        .send()
        .await
        .unwrap();
    let ids: Vec<&str> = lv
        .versions()
        .iter()
        .filter_map(|v| v.version_id())
        .collect();
    assert_eq!(ids.iter().filter(|i| **i == "null").count(), 1, "{ids:?}");
    assert!(ids.contains(&v1.as_str()));
    assert_eq!(get_bytes(&c, "ver", "k").await, b"s2");
    // The bucket is not empty while versions remain.
    assert_eq!(
        code(c.delete_bucket().bucket("ver").send().await),
        "BucketNotEmpty"
    );
}

#[tokio::test]
async fn listing_v1_v2_delimiters_pages_and_url_encoding() {
    let s = serve(&[], &[]);
    wait_ready(s.addr).await;
    let c = client(s.addr);
    c.create_bucket().bucket("list").send().await.unwrap();
    let mut keys = Vec::new();
    for d in ["a", "b", "c"] {
        for i in 0..5 {
            keys.push(format!("{d}/{i:02}.txt"));
        }
    }
    keys.push("top1".into());
    keys.push("top2".into());
    keys.push("sp ace/x".into());
    for k in &keys {
        c.put_object()
            .bucket("list")
            .key(k)
            .body(ByteStream::from_static(b"."))
            .send()
            .await
            .unwrap();
    }
    keys.sort();

    // v2: everything, in order, paged by 4 with continuation tokens.
    let mut got = Vec::new();
    let mut token = None;
    loop {
        let page = c
            .list_objects_v2()
            .bucket("list")
            .max_keys(4)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        assert!(page.key_count().unwrap() <= 4);
        got.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        if page.is_truncated() != Some(true) {
            break;
        }
        token = page.next_continuation_token().map(str::to_owned);
    }
    assert_eq!(got, keys);

    // Delimiter: common prefixes roll up, and count toward max-keys across pages.
    let page = c
        .list_objects_v2()
        .bucket("list")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let prefixes: Vec<&str> = page
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(prefixes, vec!["a/", "b/", "c/", "sp ace/"]);
    let objects: Vec<&str> = page.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(objects, vec!["top1", "top2"]);
    let mut items = Vec::new();
    let mut token = None;
    loop {
        let page = c
            .list_objects_v2()
            .bucket("list")
            .delimiter("/")
            .max_keys(2)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        items.extend(
            page.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_owned)),
        );
        items.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        if page.is_truncated() != Some(true) {
            break;
        }
        token = page.next_continuation_token().map(str::to_owned);
    }
    items.sort();
    assert_eq!(items, vec!["a/", "b/", "c/", "sp ace/", "top1", "top2"]);

    // Prefix, prefix + delimiter, start-after.
    let page = c
        .list_objects_v2()
        .bucket("list")
        .prefix("b/")
        .send()
        .await
        .unwrap();
    assert_eq!(page.key_count(), Some(5));
    let page = c
        .list_objects_v2()
        .bucket("list")
        .prefix("b/0")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    assert_eq!(page.contents().len(), 5);
    let page = c
        .list_objects_v2()
        .bucket("list")
        .start_after("c/02.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(page.contents()[0].key(), Some("c/03.txt"));

    // v1 with markers.
    let mut got = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = c
            .list_objects()
            .bucket("list")
            .max_keys(5)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        let ks: Vec<String> = page
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        got.extend(ks.clone());
        if page.is_truncated() != Some(true) {
            break;
        }
        marker = page
            .next_marker()
            .map(str::to_owned)
            .or_else(|| ks.last().cloned());
    }
    assert_eq!(got, keys);

    // encoding-type=url (raw HTTP through a presigned URL, since the SDK decodes for us).
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/list?list-type=2&prefix=sp&encoding-type=url",
        s.addr
    );
    let text = signed(&http, "GET", &url, Vec::new())
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("<Key>sp%20ace%2Fx</Key>"), "{text}");
    // max-keys 0 and bad tokens.
    let page = c
        .list_objects_v2()
        .bucket("list")
        .max_keys(0)
        .send()
        .await
        .unwrap();
    assert_eq!(page.key_count(), Some(0));
    assert_eq!(
        code(
            c.list_objects_v2()
                .bucket("list")
                .continuation_token("zz")
                .send()
                .await
        ),
        "InvalidArgument"
    );
    assert_eq!(
        code(c.list_objects_v2().bucket("nobucket").send().await),
        "NoSuchBucket"
    );
}

async fn upload_part(
    c: &Client,
    b: &str,
    k: &str,
    id: &str,
    n: i32,
    data: Vec<u8>,
) -> CompletedPart {
    let r = c
        .upload_part()
        .bucket(b)
        .key(k)
        .upload_id(id)
        .part_number(n)
        .body(ByteStream::from(data))
        .send()
        .await
        .unwrap();
    CompletedPart::builder()
        .part_number(n)
        .e_tag(r.e_tag().unwrap())
        .build()
}

#[tokio::test]
async fn multipart_uploads_copies_and_errors() {
    let s = serve(&[], &[]);
    wait_ready(s.addr).await;
    let c = client(s.addr);
    c.create_bucket().bucket("mpu").send().await.unwrap();
    let up = c
        .create_multipart_upload()
        .bucket("mpu")
        .key("obj")
        .content_type("video/mp4")
        .metadata("m", "1")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap().to_owned();
    let parts_data = [
        pattern(1, 5 << 20),
        pattern(2, 5 << 20),
        pattern(3, 1 << 20),
    ];
    let mut parts = Vec::new();
    for (i, d) in parts_data.iter().enumerate() {
        parts.push(upload_part(&c, "mpu", "obj", &id, i as i32 + 1, d.clone()).await);
    }
    // Re-uploading a part replaces it.
    parts[2] = upload_part(&c, "mpu", "obj", &id, 3, parts_data[2].clone()).await;

    let lp = c
        .list_parts()
        .bucket("mpu")
        .key("obj")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts().len(), 3);
    assert_eq!(lp.parts()[1].size(), Some(5 << 20));
    let lp = c
        .list_parts()
        .bucket("mpu")
        .key("obj")
        .upload_id(&id)
        .max_parts(2)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts().len(), 2);
    assert_eq!(lp.is_truncated(), Some(true));
    let lu = c
        .list_multipart_uploads()
        .bucket("mpu")
        .send()
        .await
        .unwrap();
    assert_eq!(lu.uploads().len(), 1);
    assert_eq!(lu.uploads()[0].upload_id(), Some(id.as_str()));

    let complete = |ps: Vec<CompletedPart>| {
        c.complete_multipart_upload()
            .bucket("mpu")
            .key("obj")
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(ps))
                    .build(),
            )
            .send()
    };
    // Wrong ETag, wrong order, a small part that is not last.
    let mut wrong = parts.clone();
    wrong[1] = CompletedPart::builder()
        .part_number(2)
        .e_tag("\"00000000000000000000000000000000\"")
        .build();
    assert_eq!(code(complete(wrong).await), "InvalidPart");
    assert_eq!(
        code(complete(vec![parts[1].clone(), parts[0].clone()]).await),
        "InvalidPartOrder"
    );
    assert_eq!(
        code(
            complete(vec![
                parts[2].clone(),
                CompletedPart::builder()
                    .part_number(4)
                    .e_tag(parts[2].e_tag().unwrap())
                    .build()
            ])
            .await
        ),
        "InvalidPart"
    );
    let small = c
        .create_multipart_upload()
        .bucket("mpu")
        .key("small")
        .send()
        .await
        .unwrap();
    let sid = small.upload_id().unwrap();
    let p1 = upload_part(&c, "mpu", "small", sid, 1, vec![1u8; 1000]).await;
    let p2 = upload_part(&c, "mpu", "small", sid, 2, vec![2u8; 1000]).await;
    let r = c
        .complete_multipart_upload()
        .bucket("mpu")
        .key("small")
        .upload_id(sid)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(p1)
                .parts(p2)
                .build(),
        )
        .send()
        .await;
    assert_eq!(code(r), "EntityTooSmall");
    c.abort_multipart_upload()
        .bucket("mpu")
        .key("small")
        .upload_id(sid)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(
            c.list_parts()
                .bucket("mpu")
                .key("small")
                .upload_id(sid)
                .send()
                .await
        ),
        "NoSuchUpload"
    );

    // Complete: the ETag is the MD5 of the part MD5s, then -N.
    let done = complete(parts.clone()).await.unwrap();
    let mut cat = Vec::new();
    for p in &parts_data {
        use md5::Digest;
        cat.extend_from_slice(&md5::Md5::digest(p));
    }
    assert_eq!(
        done.e_tag(),
        Some(format!("\"{}-3\"", md5_hex(&cat)).as_str())
    );
    let whole: Vec<u8> = parts_data.concat();
    assert_eq!(get_bytes(&c, "mpu", "obj").await, whole);
    let head = c
        .head_object()
        .bucket("mpu")
        .key("obj")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("video/mp4"));
    assert_eq!(head.metadata().unwrap()["m"], "1");
    // partNumber reads one part.
    let p2 = c
        .get_object()
        .bucket("mpu")
        .key("obj")
        .part_number(2)
        .send()
        .await
        .unwrap();
    assert_eq!(p2.parts_count(), Some(3));
    assert_eq!(
        p2.body.collect().await.unwrap().into_bytes().as_ref(),
        parts_data[1].as_slice()
    );
    assert_eq!(
        status(
            &c.get_object()
                .bucket("mpu")
                .key("obj")
                .part_number(9)
                .send()
                .await
        ),
        416
    );
    // A part number outside 1..=10000 is no part number at all.
    let r = c
        .get_object()
        .bucket("mpu")
        .key("obj")
        .part_number(0)
        .send()
        .await;
    assert_eq!(code(r), "InvalidArgument");
    // An object not uploaded in parts is its own part 1, without a parts count.
    c.put_object()
        .bucket("mpu")
        .key("single")
        .body(ByteStream::from_static(b"one piece"))
        .send()
        .await
        .unwrap();
    let one = c
        .get_object()
        .bucket("mpu")
        .key("single")
        .part_number(1)
        .send()
        .await
        .unwrap();
    assert_eq!(one.parts_count(), None);
    assert_eq!(
        one.body.collect().await.unwrap().into_bytes().as_ref(),
        b"one piece"
    );
    let r = c
        .get_object()
        .bucket("mpu")
        .key("single")
        .part_number(2)
        .send()
        .await;
    assert_eq!((status(&r), code(r)), (416, "InvalidPartNumber".to_owned()));
    // The upload is gone once completed.
    assert_eq!(
        code(
            c.list_parts()
                .bucket("mpu")
                .key("obj")
                .upload_id(&id)
                .send()
                .await
        ),
        "NoSuchUpload"
    );
    assert!(
        c.list_multipart_uploads()
            .bucket("mpu")
            .send()
            .await
            .unwrap()
            .uploads()
            .is_empty()
    );
    assert_eq!(
        code(
            c.upload_part()
                .bucket("mpu")
                .key("obj")
                .upload_id(&id)
                .part_number(1)
                .body(ByteStream::from_static(b"x"))
                .send()
                .await
        ),
        "NoSuchUpload"
    );

    // UploadPartCopy with ranges, from a multipart source and an inline one.
    c.put_object()
        .bucket("mpu")
        .key("tiny")
        .body(ByteStream::from_static(b"0123456789"))
        .send()
        .await
        .unwrap();
    let up = c
        .create_multipart_upload()
        .bucket("mpu")
        .key("assembled")
        .send()
        .await
        .unwrap();
    let aid = up.upload_id().unwrap();
    let r1 = c
        .upload_part_copy()
        .bucket("mpu")
        .key("assembled")
        .upload_id(aid)
        .part_number(1)
        .copy_source("mpu/obj")
        .copy_source_range(format!("bytes={}-{}", 1 << 20, (7 << 20) - 1))
        .send()
        .await
        .unwrap();
    let r2 = c
        .upload_part_copy()
        .bucket("mpu")
        .key("assembled")
        .upload_id(aid)
        .part_number(2)
        .copy_source("mpu/tiny")
        .copy_source_range("bytes=2-5")
        .send()
        .await
        .unwrap();
    let bad = c
        .upload_part_copy()
        .bucket("mpu")
        .key("assembled")
        .upload_id(aid)
        .part_number(3)
        .copy_source("mpu/tiny")
        .copy_source_range("bytes=5-50")
        .send()
        .await;
    assert_eq!(code(bad), "InvalidRange");
    let expected: Vec<u8> = [&whole[1 << 20..7 << 20], b"2345".as_slice()].concat();
    let e1 = r1.copy_part_result().unwrap().e_tag().unwrap().to_owned();
    assert_eq!(e1, format!("\"{}\"", md5_hex(&whole[1 << 20..7 << 20])));
    c.complete_multipart_upload()
        .bucket("mpu")
        .key("assembled")
        .upload_id(aid)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(CompletedPart::builder().part_number(1).e_tag(e1).build())
                .parts(
                    CompletedPart::builder()
                        .part_number(2)
                        .e_tag(r2.copy_part_result().unwrap().e_tag().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    // The source can go; the assembled object keeps its shared chunks.
    c.delete_object()
        .bucket("mpu")
        .key("obj")
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "mpu", "assembled").await, expected);
    assert_eq!(
        code(
            c.abort_multipart_upload()
                .bucket("mpu")
                .key("x")
                .upload_id("not-an-id")
                .send()
                .await
        ),
        "NoSuchUpload"
    );
}

#[tokio::test]
async fn lifecycle_expiration_and_cors() {
    let s = serve(&[], &[("CAIRN_MASTER_LIFECYCLE_MS", "200")]);
    wait_ready(s.addr).await;
    let c = client(s.addr);
    c.create_bucket().bucket("life").send().await.unwrap();
    assert_eq!(
        code(
            c.get_bucket_lifecycle_configuration()
                .bucket("life")
                .send()
                .await
        ),
        "NoSuchLifecycleConfiguration"
    );
    for k in ["tmp/1", "tmp/2", "keep/1"] {
        c.put_object()
            .bucket("life")
            .key(k)
            .body(ByteStream::from(pattern(5, 40_000)))
            .send()
            .await
            .unwrap();
    }
    let rule = LifecycleRule::builder()
        .id("expire-tmp")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("tmp/").build())
        .expiration(
            LifecycleExpiration::builder()
                .date(aws_sdk_s3::primitives::DateTime::from_secs(1_577_836_800))
                .build(),
        )
        .build()
        .unwrap();
    c.put_bucket_lifecycle_configuration()
        .bucket("life")
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(rule)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let got = c
        .get_bucket_lifecycle_configuration()
        .bucket("life")
        .send()
        .await
        .unwrap();
    assert_eq!(got.rules().len(), 1);
    assert_eq!(got.rules()[0].id(), Some("expire-tmp"));
    // The master's lifecycle planner removes what the rule says, and only that.
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    loop {
        let keys: Vec<String> = c
            .list_objects_v2()
            .bucket("life")
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        if keys == vec!["keep/1".to_string()] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lifecycle never ran: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.delete_bucket_lifecycle()
        .bucket("life")
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(
            c.get_bucket_lifecycle_configuration()
                .bucket("life")
                .send()
                .await
        ),
        "NoSuchLifecycleConfiguration"
    );

    // CORS: configuration round trip, preflight, and headers on real requests.
    assert_eq!(
        code(c.get_bucket_cors().bucket("life").send().await),
        "NoSuchCORSConfiguration"
    );
    c.put_bucket_cors()
        .bucket("life")
        .cors_configuration(
            CorsConfiguration::builder()
                .cors_rules(
                    CorsRule::builder()
                        .allowed_origins("https://app.example")
                        .allowed_methods("GET")
                        .allowed_methods("PUT")
                        .allowed_headers("*")
                        .expose_headers("ETag")
                        .max_age_seconds(600)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.get_bucket_cors()
            .bucket("life")
            .send()
            .await
            .unwrap()
            .cors_rules()
            .len(),
        1
    );
    let http = reqwest::Client::new();
    let pre = |origin: &'static str, method: &'static str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("http://{}/life/keep/1", s.addr),
        )
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", "content-type")
        .send()
    };
    let r = pre("https://app.example", "PUT").await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-max-age"], "600");
    assert_eq!(
        pre("https://evil.example", "GET")
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        pre("https://app.example", "DELETE")
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    let p = c
        .get_object()
        .bucket("life")
        .key("keep/1")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let r = http
        .get(p.uri())
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-expose-headers"], "ETag");
    c.delete_bucket_cors().bucket("life").send().await.unwrap();
    assert_eq!(
        pre("https://app.example", "GET")
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    drop(s);
}

/// Anonymous resident memory of a process (RssAnon: heap and stacks, not the page cache of
/// mapped chunk files), bytes.
fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Sample `rss_anon` every 50 ms until dropped; the peak seen.
struct PeakSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakSampler {
    fn start(pid: u32) -> PeakSampler {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_anon(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        PeakSampler { peak, task }
    }
    fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Free bytes on the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: statvfs(3) writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut st) != 0 {
            return 0;
        }
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

/// A 5 GiB object in 50 parts of 100 MiB: stored and read back whole, while the server's
/// memory stays bounded (it never holds more than a few chunks of any one request).
#[tokio::test]
async fn five_gib_multipart_upload_with_bounded_memory() {
    const PART: usize = 100 << 20;
    const PARTS: usize = 50;
    // The object is really stored. Where the temp folder's disk cannot take it, it goes to a
    // tmpfs (in memory; mounting one needs root, as CI has), and only without either is the
    // test skipped, saying so.
    let free = free_bytes(&std::env::temp_dir());
    let dir = tempfile::tempdir().unwrap();
    let ram_dir = tempfile::tempdir().unwrap();
    let mut ram = None;
    let data = if free >= 12 << 30 {
        dir.path().join("data")
    } else {
        match cairn_tests::Tmpfs::mount(ram_dir.path(), "6g") {
            Ok(t) => {
                eprintln!(
                    "the temp folder has {} MiB free: the 5 GiB object goes to a 6 GiB tmpfs",
                    free >> 20
                );
                let data = t.path().join("data");
                ram = Some(t);
                data
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED five_gib_multipart_upload_with_bounded_memory: needs 12 GiB free in {}, has {} MiB, and no tmpfs ({e})",
                    std::env::temp_dir().display(),
                    free >> 20
                );
                return;
            }
        }
    };
    let s = serve_in(dir, &data, &[], &[]);
    wait_ready(s.addr).await;
    let c = client(s.addr);
    let sampler = PeakSampler::start(s.process.pid());
    c.create_bucket().bucket("huge").send().await.unwrap();
    let up = c
        .create_multipart_upload()
        .bucket("huge")
        .key("5gib")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap().to_owned();
    let part = |n: usize| pattern(1000 + n as u64, PART);
    let mut parts = Vec::new();
    let mut expect = blake3::Hasher::new();
    for n in 1..=PARTS {
        let data = part(n);
        expect.update(&data);
        parts.push(upload_part(&c, "huge", "5gib", &id, n as i32, data).await);
    }
    c.complete_multipart_upload()
        .bucket("huge")
        .key("5gib")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let head = c
        .head_object()
        .bucket("huge")
        .key("5gib")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some((PART * PARTS) as i64));
    // Stream it back and hash it without holding it.
    let mut body = c
        .get_object()
        .bucket("huge")
        .key("5gib")
        .send()
        .await
        .unwrap()
        .body;
    let mut got = blake3::Hasher::new();
    let mut n = 0u64;
    while let Some(chunk) = body.try_next().await.unwrap() {
        n += chunk.len() as u64;
        got.update(&chunk);
    }
    assert_eq!(n, (PART * PARTS) as u64);
    assert_eq!(got.finalize(), expect.finalize());
    // The whole process (master, chunkserver, gateway) held a bounded amount of memory: a few
    // chunks in flight per request, not the object (5 GiB) and not even one part (100 MiB)
    // per MiB moved.
    let peak = sampler.peak();
    assert!(peak > 0, "no memory samples");
    assert!(peak < 512 << 20, "peak anonymous RSS {} MiB", peak >> 20);
    eprintln!(
        "5 GiB multipart: server peak anonymous RSS {} MiB",
        peak >> 20
    );
    // The server goes before its tmpfs, if it has one.
    drop(s);
    drop(ram);
}

/// A cluster of processes: one master, three chunkservers, one gateway, R=3.
#[tokio::test]
async fn cluster_of_processes_with_r3_survives_a_chunkserver_loss() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bin = Path::new(BIN);
    let d = |n: &str| root.join(n).to_str().unwrap().to_owned();
    // Credentials: the master holds the CA; the others get issued folders.
    let (st, _, err) = cairn_tests::run(
        bin,
        &["cluster", "init", "--data", &d("m1"), "--name", "master-1"],
        &[],
        root,
    )
    .unwrap();
    assert!(st.success(), "{err}");
    for name in ["cs1", "cs2", "cs3", "gw"] {
        let out = root.join(name).join("tls");
        let (st, _, err) = cairn_tests::run(
            bin,
            &[
                "cluster",
                "issue-cert",
                "--data",
                &d("m1"),
                "--name",
                name,
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
            root,
        )
        .unwrap();
        assert!(st.success(), "{err}");
    }
    let quiet = ("CAIRN_LOG", "info,openraft=off");
    let mut master = CairnProcess::start(
        bin,
        &[
            "master",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data",
            &d("m1"),
            "--replication",
            "3",
            "--dead-after-ms",
            "1500",
        ],
        &[quiet],
        root,
    )
    .unwrap();
    let line = master.wait_for_line("master listening on quic://").unwrap();
    let maddr = line
        .split("quic://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let mut servers = Vec::new();
    for name in ["cs1", "cs2", "cs3"] {
        let mut p = CairnProcess::start(
            bin,
            &[
                "chunkserver",
                "--master",
                &maddr,
                "--listen",
                "127.0.0.1:0",
                "--data",
                &d(name),
                "--heartbeat-ms",
                "200",
            ],
            &[quiet],
            root,
        )
        .unwrap();
        p.wait_for_line("chunkserver listening").unwrap();
        servers.push(p);
    }
    let mut gw = CairnProcess::start(
        bin,
        &[
            "gateway",
            "--master",
            &maddr,
            "--listen",
            "127.0.0.1:0",
            "--data",
            &d("gw"),
        ],
        &[
            ("CAIRN_ROOT_ACCESS_KEY", AK),
            ("CAIRN_ROOT_SECRET_KEY", SK),
            quiet,
        ],
        root,
    )
    .unwrap();
    let addr = gw.wait_listening().unwrap();
    // Ready once every chunkserver has reported.
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    loop {
        let r = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
        let body: serde_json::Value = r.json().await.unwrap();
        if body["chunkservers_alive"] == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "chunkservers never reported: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = client(addr);
    c.create_bucket().bucket("rep").send().await.unwrap();
    let big = pattern(42, 12 << 20);
    c.put_object()
        .bucket("rep")
        .key("big")
        .body(ByteStream::from(big.clone()))
        .send()
        .await
        .unwrap();
    c.put_object()
        .bucket("rep")
        .key("small")
        .body(ByteStream::from_static(b"inline"))
        .send()
        .await
        .unwrap();
    let up = c
        .create_multipart_upload()
        .bucket("rep")
        .key("mp")
        .send()
        .await
        .unwrap();
    let uid = up.upload_id().unwrap();
    let p1 = upload_part(&c, "rep", "mp", uid, 1, pattern(1, 5 << 20)).await;
    let p2 = upload_part(&c, "rep", "mp", uid, 2, pattern(2, 3 << 20)).await;
    c.complete_multipart_upload()
        .bucket("rep")
        .key("mp")
        .upload_id(uid)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(p1)
                .parts(p2)
                .build(),
        )
        .send()
        .await
        .unwrap();
    // Every chunk is on all three servers: lose one (kill -9) and everything still reads.
    servers[1].kill().unwrap();
    assert_eq!(get_bytes(&c, "rep", "big").await, big);
    assert_eq!(get_bytes(&c, "rep", "small").await, b"inline");
    assert_eq!(
        get_bytes(&c, "rep", "mp").await,
        [pattern(1, 5 << 20), pattern(2, 3 << 20)].concat()
    );
    // A second gateway on the same cluster sees the same store (gateways hold no state).
    let mut gw2 = CairnProcess::start(
        bin,
        &[
            "gateway",
            "--master",
            &maddr,
            "--listen",
            "127.0.0.1:0",
            "--data",
            &d("gw"),
        ],
        &[quiet],
        root,
    )
    .unwrap();
    let addr2 = gw2.wait_listening().unwrap();
    assert_eq!(get_bytes(&client(addr2), "rep", "big").await, big);
    gw2.kill().unwrap();
    gw.kill().unwrap();
    for mut s in servers {
        let _ = s.kill();
    }
    master.kill().unwrap();
}

/// `cairn serve --chunkservers 3`: three in-process chunkservers, three replicas of every chunk.
#[tokio::test]
async fn serve_with_three_chunkservers_keeps_three_replicas() {
    let s = serve(&["--chunkservers", "3"], &[]);
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    let data = s._dir.path().join("data");
    let c = client(s.addr);
    // Ready once a chunkserver reports; writes need all three (R=3), so retry until they have.
    wait_ready(s.addr).await;
    loop {
        match c.create_bucket().bucket("three").send().await {
            Ok(_) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let big = pattern(3, 3 << 20);
    loop {
        match c
            .put_object()
            .bucket("three")
            .key("big")
            .body(ByteStream::from(big.clone()))
            .send()
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get_bytes(&c, "three", "big").await, big);
    // One chunk, one sealed replica file in each chunkserver's folder.
    let count = |dir: &Path| -> usize {
        let mut n = 0;
        if let Ok(subs) = std::fs::read_dir(dir) {
            for sub in subs.flatten() {
                if let Ok(files) = std::fs::read_dir(sub.path()) {
                    n += files
                        .flatten()
                        .filter(|f| f.file_name().to_string_lossy().ends_with(".chunk"))
                        .count();
                }
            }
        }
        n
    };
    for dir in [
        data.join("chunks"),
        data.join("chunkservers/2/chunks"),
        data.join("chunkservers/3/chunks"),
    ] {
        assert_eq!(count(&dir), 1, "{}", dir.display());
    }
    // R cannot exceed the chunkservers.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (st, _, err) = cairn_tests::run(
        Path::new(BIN),
        &[
            "serve",
            "--data",
            d,
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--chunkservers",
            "2",
            "--replication",
            "3",
        ],
        &[],
        Path::new("/"),
    )
    .unwrap();
    assert!(!st.success());
    assert!(
        err.contains("replication 3 needs at least 3 chunkservers"),
        "{err}"
    );
}

/// `--domain`: `BUCKET.DOMAIN` addresses a bucket (virtual-hosted style); path style keeps
/// working on every host.
#[tokio::test]
async fn virtual_hosted_style_requests() {
    let s = serve(&["--domain", "s3.cairn.test"], &[]);
    wait_ready(s.addr).await;
    let c = client(s.addr);
    c.create_bucket().bucket("pics").send().await.unwrap();
    let port = s.addr.port();
    let http = reqwest::Client::builder()
        .resolve("pics.s3.cairn.test", s.addr)
        .resolve("s3.cairn.test", s.addr)
        .build()
        .unwrap();
    let vhost = format!("http://pics.s3.cairn.test:{port}/dir/hello.txt");
    let r = signed(&http, "PUT", &vhost, b"virtual".to_vec()).await;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    assert_eq!(get_bytes(&c, "pics", "dir/hello.txt").await, b"virtual");
    let r = signed(&http, "GET", &vhost, Vec::new()).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"virtual");
    // Listing the bucket at its own host.
    let r = signed(
        &http,
        "GET",
        &format!("http://pics.s3.cairn.test:{port}/?list-type=2"),
        Vec::new(),
    )
    .await;
    let text = r.text().await.unwrap();
    assert!(text.contains("<Key>dir/hello.txt</Key>"), "{text}");
    // Path style on the bare domain, and on the address.
    let r = signed(
        &http,
        "GET",
        &format!("http://s3.cairn.test:{port}/pics/dir/hello.txt"),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    let r = signed(
        &http,
        "GET",
        &format!("http://{}/pics/dir/hello.txt", s.addr),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    // A bucket that does not exist, by host.
    let r = signed(
        &http,
        "GET",
        &format!("http://{}/nosuch/x", s.addr),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status().as_u16(), 404);
    // At a bucket's host every path is a key, even those the gateway serves itself elsewhere.
    for key in ["api/auth/me", "health", "metrics", "ready", "storage/x"] {
        let url = format!("http://pics.s3.cairn.test:{port}/{key}");
        let body = format!("object {key}").into_bytes();
        let r = signed(&http, "PUT", &url, body.clone()).await;
        assert_eq!(
            r.status().as_u16(),
            200,
            "{key}: {}",
            r.text().await.unwrap()
        );
        let r = signed(&http, "GET", &url, Vec::new()).await;
        assert_eq!(r.status().as_u16(), 200, "{key}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice(), "{key}");
        assert_eq!(get_bytes(&c, "pics", key).await, body, "{key}");
    }
    // The gateway's own routes stay on every other host.
    let r = http
        .get(format!("http://s3.cairn.test:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), r#"{"status":"ok"}"#);
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn object_lock_retention_legal_holds_and_governance_bypass() {
    use aws_sdk_s3::primitives::DateTime;
    use aws_sdk_s3::types::{
        DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockLegalHold,
        ObjectLockLegalHoldStatus, ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode,
        ObjectLockRule,
    };
    let s = serve(&[], &[]);
    wait_ready(s.addr).await;
    let c = client(s.addr);
    let in_secs = |n: i64| {
        DateTime::from_secs(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                + n,
        )
    };
    let put = |bucket: &'static str, key: &'static str| {
        c.put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from_static(b"kept for a while"))
    };

    // A bucket made without object lock refuses locks.
    c.create_bucket().bucket("plain").send().await.unwrap();
    let r = put("plain", "k")
        .object_lock_mode(ObjectLockMode::Governance)
        .object_lock_retain_until_date(in_secs(3600))
        .send()
        .await;
    assert_eq!(code(r), "InvalidRequest");
    let r = c
        .get_object_lock_configuration()
        .bucket("plain")
        .send()
        .await;
    assert_eq!(code(r), "ObjectLockConfigurationNotFoundError");

    // With object lock, versioning is on and cannot be suspended.
    c.create_bucket()
        .bucket("vault")
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let v = c
        .get_bucket_versioning()
        .bucket("vault")
        .send()
        .await
        .unwrap();
    assert_eq!(v.status(), Some(&BucketVersioningStatus::Enabled));
    let r = c
        .put_bucket_versioning()
        .bucket("vault")
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Suspended)
                .build(),
        )
        .send()
        .await;
    assert_eq!(code(r), "InvalidBucketState");
    let cfg = c
        .get_object_lock_configuration()
        .bucket("vault")
        .send()
        .await
        .unwrap();
    let cfg = cfg.object_lock_configuration().unwrap();
    assert_eq!(cfg.object_lock_enabled(), Some(&ObjectLockEnabled::Enabled));
    assert!(cfg.rule().is_none());

    // Bad lock headers.
    let r = put("vault", "k")
        .object_lock_mode(ObjectLockMode::Governance)
        .send()
        .await;
    assert_eq!(code(r), "InvalidArgument");
    let r = put("vault", "k")
        .object_lock_mode(ObjectLockMode::Governance)
        .object_lock_retain_until_date(in_secs(-60))
        .send()
        .await;
    assert_eq!(code(r), "InvalidArgument");

    // COMPLIANCE: the version stays, whoever asks; its retention only grows.
    let until = in_secs(3600);
    let v1 = put("vault", "c.txt")
        .object_lock_mode(ObjectLockMode::Compliance)
        .object_lock_retain_until_date(until)
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    let head = c
        .head_object()
        .bucket("vault")
        .key("c.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    assert_eq!(
        head.object_lock_retain_until_date().map(DateTime::secs),
        Some(until.secs())
    );
    assert_eq!(
        head.object_lock_legal_hold_status(),
        Some(&ObjectLockLegalHoldStatus::Off)
    );
    let del = |key: &'static str, version: &str, bypass: bool| {
        let mut d = c
            .delete_object()
            .bucket("vault")
            .key(key)
            .version_id(version);
        if bypass {
            d = d.bypass_governance_retention(true);
        }
        d.send()
    };
    let r = del("c.txt", &v1, false).await;
    assert_eq!(code(r), "AccessDenied");
    let r = del("c.txt", &v1, true).await;
    assert_eq!(code(r), "AccessDenied");
    // Deleting the key stacks a delete marker, which object lock allows.
    let marker = c
        .delete_object()
        .bucket("vault")
        .key("c.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(marker.delete_marker(), Some(true));
    let retention = |mode: ObjectLockRetentionMode, until: DateTime| {
        ObjectLockRetention::builder()
            .mode(mode)
            .retain_until_date(until)
            .build()
    };
    let r = c
        .put_object_retention()
        .bucket("vault")
        .key("c.txt")
        .version_id(&v1)
        .retention(retention(ObjectLockRetentionMode::Compliance, in_secs(60)))
        .bypass_governance_retention(true)
        .send()
        .await;
    assert_eq!(code(r), "AccessDenied");
    let later = in_secs(7200);
    c.put_object_retention()
        .bucket("vault")
        .key("c.txt")
        .version_id(&v1)
        .retention(retention(ObjectLockRetentionMode::Compliance, later))
        .send()
        .await
        .unwrap();
    let got = c
        .get_object_retention()
        .bucket("vault")
        .key("c.txt")
        .version_id(&v1)
        .send()
        .await
        .unwrap();
    let got = got.retention().unwrap();
    assert_eq!(got.mode(), Some(&ObjectLockRetentionMode::Compliance));
    assert_eq!(
        got.retain_until_date().map(DateTime::secs),
        Some(later.secs())
    );

    // GOVERNANCE: a delete takes the bypass header (and the permission, which the root key
    // has as the tenant's owner).
    let v2 = put("vault", "g.txt")
        .object_lock_mode(ObjectLockMode::Governance)
        .object_lock_retain_until_date(in_secs(3600))
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    let r = del("g.txt", &v2, false).await;
    assert_eq!(code(r), "AccessDenied");
    del("g.txt", &v2, true).await.unwrap();

    // A legal hold holds until it is lifted.
    let v3 = put("vault", "h.txt")
        .object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On)
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    let hold = c
        .get_object_legal_hold()
        .bucket("vault")
        .key("h.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        hold.legal_hold().and_then(|h| h.status()),
        Some(&ObjectLockLegalHoldStatus::On)
    );
    let r = del("h.txt", &v3, true).await;
    assert_eq!(code(r), "AccessDenied");
    c.put_object_legal_hold()
        .bucket("vault")
        .key("h.txt")
        .version_id(&v3)
        .legal_hold(
            ObjectLockLegalHold::builder()
                .status(ObjectLockLegalHoldStatus::Off)
                .build(),
        )
        .send()
        .await
        .unwrap();
    del("h.txt", &v3, false).await.unwrap();

    // A default retention reaches every new version, multipart ones included; a lock given
    // when an upload starts reaches the object it completes.
    c.put_object_lock_configuration()
        .bucket("vault")
        .object_lock_configuration(
            ObjectLockConfiguration::builder()
                .object_lock_enabled(ObjectLockEnabled::Enabled)
                .rule(
                    ObjectLockRule::builder()
                        .default_retention(
                            DefaultRetention::builder()
                                .mode(ObjectLockRetentionMode::Governance)
                                .days(1)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let cfg = c
        .get_object_lock_configuration()
        .bucket("vault")
        .send()
        .await
        .unwrap();
    let rule = cfg
        .object_lock_configuration()
        .and_then(|c| c.rule())
        .unwrap();
    assert_eq!(rule.default_retention().and_then(|d| d.days()), Some(1));
    put("vault", "d.txt").send().await.unwrap();
    let got = c
        .get_object_retention()
        .bucket("vault")
        .key("d.txt")
        .send()
        .await
        .unwrap();
    let until = got
        .retention()
        .and_then(|r| r.retain_until_date())
        .unwrap()
        .secs();
    let day_from_now = in_secs(86_400).secs();
    assert!(
        (day_from_now - 120..=day_from_now).contains(&until),
        "{until}"
    );
    let up = c
        .create_multipart_upload()
        .bucket("vault")
        .key("big.bin")
        .object_lock_mode(ObjectLockMode::Compliance)
        .object_lock_retain_until_date(in_secs(3600))
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let part = c
        .upload_part()
        .bucket("vault")
        .key("big.bin")
        .upload_id(id)
        .part_number(1)
        .body(ByteStream::from_static(b"one small last part"))
        .send()
        .await
        .unwrap();
    let done = c
        .complete_multipart_upload()
        .bucket("vault")
        .key("big.bin")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(
                    CompletedPart::builder()
                        .part_number(1)
                        .e_tag(part.e_tag().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let r = del("big.bin", done.version_id().unwrap(), true).await;
    assert_eq!(code(r), "AccessDenied");
    let head = c
        .head_object()
        .bucket("vault")
        .key("big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));

    // A retention that has run out no longer holds (the leader's clock decides).
    let v4 = put("vault", "short.txt")
        .object_lock_mode(ObjectLockMode::Compliance)
        .object_lock_retain_until_date(in_secs(2))
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    assert_eq!(code(del("short.txt", &v4, false).await), "AccessDenied");
    tokio::time::sleep(Duration::from_secs(3)).await;
    del("short.txt", &v4, false).await.unwrap();

    // The bucket cannot go while locked versions remain.
    let r = c.delete_bucket().bucket("vault").send().await;
    assert_eq!(code(r), "BucketNotEmpty");
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn aws_edges_paging_delimiters_encodings_tags_expiry_and_messages() {
    let s = serve(&[], &[]);
    wait_ready(s.addr).await;
    let c = client(s.addr);

    // ListBuckets pages with max-buckets and a continuation token, and filters by prefix.
    for b in ["page-a", "page-b", "page-c", "page-d", "page-e", "other"] {
        c.create_bucket().bucket(b).send().await.unwrap();
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let r = c
            .list_buckets()
            .prefix("page-")
            .max_buckets(2)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        assert!(r.buckets().len() <= 2);
        names.extend(
            r.buckets()
                .iter()
                .filter_map(|b| b.name().map(str::to_owned)),
        );
        assert_eq!(r.prefix(), Some("page-"));
        match r.continuation_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(names, ["page-a", "page-b", "page-c", "page-d", "page-e"]);
    assert_eq!(pages, 3);
    assert_eq!(
        code(c.list_buckets().max_buckets(0).send().await),
        "InvalidArgument"
    );
    assert_eq!(
        code(c.list_buckets().continuation_token("zz").send().await),
        "InvalidArgument"
    );
    let all = c.list_buckets().send().await.unwrap();
    assert_eq!(all.buckets().len(), 6);
    assert!(all.continuation_token().is_none());

    // An empty delimiter is no delimiter, and is not echoed.
    for k in ["a/1", "a/2", "b"] {
        c.put_object()
            .bucket("page-a")
            .key(k)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap();
    }
    let r = c
        .list_objects_v2()
        .bucket("page-a")
        .delimiter("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.delimiter(), None);
    assert_eq!(r.contents().len(), 3);
    assert!(r.common_prefixes().is_empty());
    let r = c
        .list_objects()
        .bucket("page-a")
        .delimiter("")
        .send()
        .await
        .unwrap();
    assert_eq!((r.delimiter(), r.contents().len()), (None, 3));

    // `aws-chunked` says how one request's body travelled: the object keeps the rest.
    c.put_object()
        .bucket("page-a")
        .key("zipped")
        .content_encoding("gzip, aws-chunked")
        .body(ByteStream::from_static(b"not really gzip"))
        .send()
        .await
        .unwrap();
    let h = c
        .head_object()
        .bucket("page-a")
        .key("zipped")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_encoding(), Some("gzip"));

    // Objects carry at most 10 tags.
    let tags = |n: usize| {
        (0..n)
            .map(|i| format!("k{i}=v{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    c.put_object()
        .bucket("page-a")
        .key("ten")
        .tagging(tags(10))
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    let r = c
        .put_object()
        .bucket("page-a")
        .key("eleven")
        .tagging(tags(11))
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(code(r), "BadRequest");
    let many: Vec<Tag> = (0..11)
        .map(|i| {
            Tag::builder()
                .key(format!("k{i}"))
                .value("v")
                .build()
                .unwrap()
        })
        .collect();
    let r = c
        .put_object_tagging()
        .bucket("page-a")
        .key("ten")
        .tagging(Tagging::builder().set_tag_set(Some(many)).build().unwrap())
        .send()
        .await;
    assert_eq!(code(r), "BadRequest");
    let got = c
        .get_object()
        .bucket("page-a")
        .key("ten")
        .send()
        .await
        .unwrap();
    assert_eq!(got.tag_count(), Some(10));

    // A presigned URL may live a week at most.
    let p = c
        .get_object()
        .bucket("page-a")
        .key("b")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let too_long = p.uri().replace("X-Amz-Expires=300", "X-Amz-Expires=604801");
    assert_ne!(too_long, p.uri());
    let r = http.get(&too_long).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("AuthorizationQueryParametersError") && text.contains("604800"),
        "{text}"
    );
    assert_eq!(
        http.get(p.uri()).send().await.unwrap().status().as_u16(),
        200
    );

    // Conditional deletes: If-Match on DeleteObject and ETags in DeleteObjects.
    let put = c
        .put_object()
        .bucket("page-a")
        .key("cond")
        .body(ByteStream::from_static(b"v1"))
        .send()
        .await
        .unwrap();
    let tag = put.e_tag().unwrap().to_owned();
    let r = c
        .delete_object()
        .bucket("page-a")
        .key("cond")
        .if_match("\"0123456789abcdef0123456789abcdef\"")
        .send()
        .await;
    assert_eq!(status(&r), 412);
    assert_eq!(code(r), "PreconditionFailed");
    c.delete_object()
        .bucket("page-a")
        .key("cond")
        .if_match(&tag)
        .send()
        .await
        .unwrap();
    let r = c
        .delete_object()
        .bucket("page-a")
        .key("cond")
        .if_match("*")
        .send()
        .await;
    assert_eq!(code(r), "NoSuchKey");
    let r = c
        .delete_objects()
        .bucket("page-a")
        .delete(
            Delete::builder()
                .objects(
                    ObjectIdentifier::builder()
                        .key("b")
                        .e_tag("\"ffffffffffffffffffffffffffffffff\"")
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.errors().len(), 1);
    assert_eq!(r.errors()[0].code(), Some("PreconditionFailed"));
    c.head_object()
        .bucket("page-a")
        .key("b")
        .send()
        .await
        .unwrap();

    // x-amz-expiration on PUT, HEAD and GET, from the bucket's lifecycle rules.
    c.put_bucket_lifecycle_configuration()
        .bucket("page-b")
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(
                    LifecycleRule::builder()
                        .id("tmp-week")
                        .status(ExpirationStatus::Enabled)
                        .filter(LifecycleRuleFilter::builder().prefix("tmp/").build())
                        .expiration(LifecycleExpiration::builder().days(7).build())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // Rule IDs are at most 255 characters and unique.
    let rule = |id: String| {
        LifecycleRule::builder()
            .id(id)
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("x/").build())
            .expiration(LifecycleExpiration::builder().days(1).build())
            .build()
            .unwrap()
    };
    for rules in [
        vec![rule("x".repeat(256))],
        vec![rule("same".into()), rule("same".into())],
    ] {
        let r = c
            .put_bucket_lifecycle_configuration()
            .bucket("page-b")
            .lifecycle_configuration(
                BucketLifecycleConfiguration::builder()
                    .set_rules(Some(rules))
                    .build()
                    .unwrap(),
            )
            .send()
            .await;
        assert_eq!(code(r), "InvalidArgument");
    }
    let put = c
        .put_object()
        .bucket("page-b")
        .key("tmp/scratch")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    let exp = put.expiration().unwrap_or_default().to_owned();
    assert!(
        exp.starts_with("expiry-date=\"") && exp.ends_with("rule-id=\"tmp-week\""),
        "{exp}"
    );
    let head = c
        .head_object()
        .bucket("page-b")
        .key("tmp/scratch")
        .send()
        .await
        .unwrap();
    assert!(
        head.expiration().is_some_and(|e| e.contains("tmp-week")),
        "{head:?}"
    );
    let kept = c
        .put_object()
        .bucket("page-b")
        .key("keep/this")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.expiration(), None);

    // GetObjectAttributes: the parts of a multipart object, a page at a time.
    let up = c
        .create_multipart_upload()
        .bucket("page-b")
        .key("parts")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let mut done = Vec::new();
    for n in 1..=3 {
        let body = if n < 3 {
            vec![b'p'; 5 * 1024 * 1024]
        } else {
            b"tail".to_vec()
        };
        let p = c
            .upload_part()
            .bucket("page-b")
            .key("parts")
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap();
        done.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(p.e_tag().unwrap())
                .build(),
        );
    }
    c.complete_multipart_upload()
        .bucket("page-b")
        .key("parts")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build(),
        )
        .send()
        .await
        .unwrap();
    use aws_sdk_s3::types::ObjectAttributes as A;
    let attrs = c
        .get_object_attributes()
        .bucket("page-b")
        .key("parts")
        .object_attributes(A::ObjectParts)
        .object_attributes(A::ObjectSize)
        .object_attributes(A::Etag)
        .object_attributes(A::StorageClass)
        .max_parts(2)
        .send()
        .await
        .unwrap();
    assert_eq!(attrs.object_size(), Some(10 * 1024 * 1024 + 4));
    assert!(
        attrs
            .e_tag()
            .is_some_and(|e| e.ends_with("-3") || e.ends_with("-3\""))
    );
    let parts = attrs.object_parts().unwrap();
    assert_eq!(parts.total_parts_count(), Some(3));
    assert_eq!(parts.is_truncated(), Some(true));
    assert_eq!(parts.parts().len(), 2);
    let next = parts.next_part_number_marker().unwrap();
    let rest = c
        .get_object_attributes()
        .bucket("page-b")
        .key("parts")
        .object_attributes(A::ObjectParts)
        .part_number_marker(next)
        .send()
        .await
        .unwrap();
    let rest = rest.object_parts().unwrap();
    assert_eq!(rest.parts().len(), 1);
    assert_eq!(rest.parts()[0].part_number(), Some(3));
    assert_eq!(rest.parts()[0].size(), Some(4));
    assert_eq!(rest.is_truncated(), Some(false));
    let r = c
        .get_object_attributes()
        .bucket("page-b")
        .key("missing")
        .object_attributes(A::Etag)
        .send()
        .await;
    assert_eq!(code(r), "NoSuchKey");

    // Every error says something.
    let unknown = client_with(s.addr, "AKIDOESNOTEXIST00000", SK);
    match unknown.list_buckets().send().await {
        Err(e) => {
            assert_eq!(e.code(), Some("InvalidAccessKeyId"));
            assert!(e.message().is_some_and(|m| !m.is_empty()), "{e:?}");
        }
        Ok(v) => panic!("{v:?}"),
    }
}

fn md5_of(b: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(b).into()
}

/// `n` bytes that repeat `marker` with a counter, so any 64-byte window of them names it.
fn marked(marker: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(format!("{marker}{i:08}|").as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

/// Whether any file under `dir` holds `needle`.
fn any_file_holds(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                return true;
            }
        }
    }
    false
}

async fn get_range(c: &Client, bucket: &str, key: &str, range: &str) -> Vec<u8> {
    c.get_object()
        .bucket(bucket)
        .key(key)
        .range(range)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
        .to_vec()
}

#[tokio::test]
async fn encrypted_objects_read_back_whole_by_range_and_part_and_no_file_holds_their_plaintext() {
    use aws_sdk_s3::types::ServerSideEncryption;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = serve_in(dir, &data, &[], &[]);
    let c = client(s.addr);
    wait_ready(s.addr).await;
    c.create_bucket().bucket("sse").send().await.unwrap();

    // A plain object, to show the scan below finds plaintext where there is some.
    let plain = marked("PLAIN-CONTROL-", 3 << 20);
    c.put_object()
        .bucket("sse")
        .key("plain")
        .body(ByteStream::from(plain.clone()))
        .send()
        .await
        .unwrap();

    // SSE-S3, through the chunkservers.
    let big = marked("SSE-S3-SECRET-", 3 * (1 << 20) + 12_345);
    let put = c
        .put_object()
        .bucket("sse")
        .key("big")
        .server_side_encryption(ServerSideEncryption::Aes256)
        .body(ByteStream::from(big.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.server_side_encryption(),
        Some(&ServerSideEncryption::Aes256)
    );
    // SSE-S3's ETag is the MD5 of the plaintext, as S3's.
    assert_eq!(put.e_tag().unwrap().trim_matches('"'), md5_hex(&big));
    let head = c
        .head_object()
        .bucket("sse")
        .key("big")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(big.len() as i64));
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::Aes256)
    );
    assert_eq!(get_bytes(&c, "sse", "big").await, big);
    // Ranges that start and end inside blocks, on block edges, and across many blocks.
    for (a, b) in [
        (0usize, 0usize),
        (1, 100),
        (65_535, 65_536),
        (65_536, 131_071),
        (100_000, 2_000_000),
        (big.len() - 10, big.len() - 1),
    ] {
        assert_eq!(
            get_range(&c, "sse", "big", &format!("bytes={a}-{b}")).await,
            big[a..=b],
            "range {a}-{b}"
        );
    }
    assert_eq!(
        get_range(&c, "sse", "big", "bytes=-70000").await,
        big[big.len() - 70_000..]
    );

    // A small SSE-S3 object lives inline in the metadata, sealed too.
    let small = marked("SSE-INLINE-SECRET-", 5_000);
    c.put_object()
        .bucket("sse")
        .key("small")
        .server_side_encryption(ServerSideEncryption::Aes256)
        .body(ByteStream::from(small.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "sse", "small").await, small);
    assert_eq!(
        get_range(&c, "sse", "small", "bytes=10-19").await,
        small[10..20]
    );

    // SSE-KMS multipart (the tenant's default key, made on first use), read by part and by
    // ranges across the part boundary.
    let part1 = marked("SSE-KMS-PART-ONE-", 5 << 20);
    let part2 = marked("SSE-KMS-PART-TWO-", 1_000_000);
    let up = c
        .create_multipart_upload()
        .bucket("sse")
        .key("kms")
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
    let key_arn = up.ssekms_key_id().unwrap().to_owned();
    assert!(key_arn.starts_with("arn:aws:kms:us-east-1:"), "{key_arn}");
    let id = up.upload_id().unwrap();
    let mut parts = Vec::new();
    for (n, body) in [(1, &part1), (2, &part2)] {
        let r = c
            .upload_part()
            .bucket("sse")
            .key("kms")
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .unwrap();
        // SSE-KMS ETags are not the MD5 of the data, as S3's are not.
        assert_ne!(r.e_tag().unwrap().trim_matches('"'), md5_hex(body));
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(r.e_tag().unwrap())
                .build(),
        );
    }
    let done = c
        .complete_multipart_upload()
        .bucket("sse")
        .key("kms")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        done.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
    let whole: Vec<u8> = [part1.clone(), part2.clone()].concat();
    assert_eq!(get_bytes(&c, "sse", "kms").await, whole);
    let p2 = c
        .get_object()
        .bucket("sse")
        .key("kms")
        .part_number(2)
        .send()
        .await
        .unwrap();
    assert_eq!(p2.ssekms_key_id(), Some(key_arn.as_str()));
    assert_eq!(
        p2.body.collect().await.unwrap().into_bytes().to_vec(),
        part2
    );
    let edge = part1.len();
    assert_eq!(
        get_range(
            &c,
            "sse",
            "kms",
            &format!("bytes={}-{}", edge - 5, edge + 70_000)
        )
        .await,
        whole[edge - 5..=edge + 70_000]
    );

    // A copy of an encrypted object to a plain one opens it (its bytes are then plaintext on
    // disk, as asked: so it has markers of its own); a copy of a KMS object to SSE-S3 seals
    // it again without moving a byte.
    let to_open = marked("COPY-OPENS-THIS-", 300_000);
    c.put_object()
        .bucket("sse")
        .key("to-open")
        .server_side_encryption(ServerSideEncryption::Aes256)
        .body(ByteStream::from(to_open.clone()))
        .send()
        .await
        .unwrap();
    c.copy_object()
        .bucket("sse")
        .key("opened")
        .copy_source("sse/to-open")
        .send()
        .await
        .unwrap();
    let opened = c
        .head_object()
        .bucket("sse")
        .key("opened")
        .send()
        .await
        .unwrap();
    assert_eq!(opened.server_side_encryption(), None);
    assert_eq!(get_bytes(&c, "sse", "opened").await, to_open);
    c.copy_object()
        .bucket("sse")
        .key("resealed")
        .copy_source("sse/kms")
        .server_side_encryption(ServerSideEncryption::Aes256)
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "sse", "resealed").await, whole);

    // GET and HEAD take no x-amz-server-side-encryption.
    let r = c
        .get_object()
        .bucket("sse")
        .key("big")
        .customize()
        .mutate_request(|r| {
            r.headers_mut()
                .insert("x-amz-server-side-encryption", "AES256");
        })
        .send()
        .await;
    assert_eq!(code(r), "InvalidArgument");
    let r = c
        .put_object()
        .bucket("sse")
        .key("x")
        .server_side_encryption(ServerSideEncryption::from("AES512"))
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(code(r), "InvalidArgument");

    // /metrics counts sealed writes and opened reads by type.
    let m = reqwest::get(format!("http://{}/metrics", s.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "cairn_sse_total{type=\"SSE-S3\",event=\"sealed\"}",
        "cairn_sse_total{type=\"SSE-S3\",event=\"opened\"}",
        "cairn_sse_total{type=\"SSE-KMS\",event=\"sealed\"}",
    ] {
        assert!(m.contains(line), "{line} missing from /metrics");
    }

    // Stop the server so every file is whole, then look for plaintext everywhere.
    drop(c);
    let Server { process, _dir, .. } = s;
    drop(process);
    assert!(
        any_file_holds(&data, b"PLAIN-CONTROL-00000042|"),
        "the scan must find a plain object's bytes"
    );
    for secret in [
        "SSE-S3-SECRET-00000042|",
        "SSE-S3-SECRET-00040000|",
        "SSE-INLINE-SECRET-00000042|",
        "SSE-KMS-PART-ONE-00000042|",
        "SSE-KMS-PART-TWO-00000042|",
    ] {
        assert!(
            !any_file_holds(&data, secret.as_bytes()),
            "{secret} is stored in plaintext under {}",
            data.display()
        );
    }
    drop(_dir);
}

#[tokio::test]
async fn customer_keys_are_needed_checked_and_never_stored() {
    use aws_sdk_s3::types::ServerSideEncryption;
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let key = [7u8; 32];
    let other = [9u8; 32];
    let (k, k_md5) = (b64(&key), b64(&md5_of(&key)));
    let (o, o_md5) = (b64(&other), b64(&md5_of(&other)));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = serve_in(dir, &data, &[], &[]);
    let c = client(s.addr);
    wait_ready(s.addr).await;
    c.create_bucket().bucket("ssec").send().await.unwrap();
    let body = marked("SSE-C-SECRET-", 200_000);
    let put = c
        .put_object()
        .bucket("ssec")
        .key("obj")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&k)
        .sse_customer_key_md5(&k_md5)
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(put.sse_customer_algorithm(), Some("AES256"));
    assert_eq!(put.sse_customer_key_md5(), Some(k_md5.as_str()));

    // Without the key: 400; another key: 403; HEAD the same.
    let r = c.get_object().bucket("ssec").key("obj").send().await;
    assert_eq!((status(&r), code(r)), (400, "InvalidRequest".into()));
    let r = c
        .get_object()
        .bucket("ssec")
        .key("obj")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&o)
        .sse_customer_key_md5(&o_md5)
        .send()
        .await;
    assert_eq!((status(&r), code(r)), (403, "AccessDenied".into()));
    let r = c.head_object().bucket("ssec").key("obj").send().await;
    assert_eq!(status(&r), 400);
    // A key whose MD5 is not the one sent, or a key of the wrong length.
    let r = c
        .get_object()
        .bucket("ssec")
        .key("obj")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&k)
        .sse_customer_key_md5(&o_md5)
        .send()
        .await;
    assert_eq!(code(r), "InvalidArgument");
    let r = c
        .put_object()
        .bucket("ssec")
        .key("short")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(b64(b"too short"))
        .sse_customer_key_md5(b64(&md5_of(b"too short")))
        .body(ByteStream::from_static(b"x"))
        .send()
        .await;
    assert_eq!(code(r), "InvalidArgument");
    // With the key: the object, whole and by range.
    let got = c
        .get_object()
        .bucket("ssec")
        .key("obj")
        .range("bytes=70000-140000")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&k)
        .sse_customer_key_md5(&k_md5)
        .send()
        .await
        .unwrap();
    assert_eq!(got.sse_customer_key_md5(), Some(k_md5.as_str()));
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        body[70_000..=140_000]
    );
    // Customer key headers on a plain object are refused.
    c.put_object()
        .bucket("ssec")
        .key("plain")
        .body(ByteStream::from_static(b"plain"))
        .send()
        .await
        .unwrap();
    let r = c
        .get_object()
        .bucket("ssec")
        .key("plain")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&k)
        .sse_customer_key_md5(&k_md5)
        .send()
        .await;
    assert_eq!(code(r), "InvalidRequest");

    // Copies: SSE-C to SSE-S3 needs the source's key; SSE-S3 to SSE-C under another key.
    let r = c
        .copy_object()
        .bucket("ssec")
        .key("as-s3")
        .copy_source("ssec/obj")
        .server_side_encryption(ServerSideEncryption::Aes256)
        .send()
        .await;
    assert_eq!(code(r), "InvalidRequest");
    c.copy_object()
        .bucket("ssec")
        .key("as-s3")
        .copy_source("ssec/obj")
        .copy_source_sse_customer_algorithm("AES256")
        .copy_source_sse_customer_key(&k)
        .copy_source_sse_customer_key_md5(&k_md5)
        .server_side_encryption(ServerSideEncryption::Aes256)
        .send()
        .await
        .unwrap();
    assert_eq!(get_bytes(&c, "ssec", "as-s3").await, body);
    c.copy_object()
        .bucket("ssec")
        .key("as-other")
        .copy_source("ssec/as-s3")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&o)
        .sse_customer_key_md5(&o_md5)
        .send()
        .await
        .unwrap();
    let got = c
        .get_object()
        .bucket("ssec")
        .key("as-other")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&o)
        .sse_customer_key_md5(&o_md5)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        body
    );

    // SSE-C multipart: each part brings the key; a part under another key is refused; a
    // part copied from an SSE-S3 object is sealed under the upload's key.
    let up = c
        .create_multipart_upload()
        .bucket("ssec")
        .key("mp")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&k)
        .sse_customer_key_md5(&k_md5)
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let part1 = marked("SSE-C-PART-", 5 << 20);
    let r = c
        .upload_part()
        .bucket("ssec")
        .key("mp")
        .upload_id(id)
        .part_number(1)
        .body(ByteStream::from(part1.clone()))
        .send()
        .await;
    assert_eq!(status(&r), 400);
    let r = c
        .upload_part()
        .bucket("ssec")
        .key("mp")
        .upload_id(id)
        .part_number(1)
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&o)
        .sse_customer_key_md5(&o_md5)
        .body(ByteStream::from(part1.clone()))
        .send()
        .await;
    assert_eq!(status(&r), 403);
    let p1 = c
        .upload_part()
        .bucket("ssec")
        .key("mp")
        .upload_id(id)
        .part_number(1)
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&k)
        .sse_customer_key_md5(&k_md5)
        .body(ByteStream::from(part1.clone()))
        .send()
        .await
        .unwrap();
    let p2 = c
        .upload_part_copy()
        .bucket("ssec")
        .key("mp")
        .upload_id(id)
        .part_number(2)
        .copy_source("ssec/as-s3")
        .copy_source_range("bytes=100-65636")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&k)
        .sse_customer_key_md5(&k_md5)
        .send()
        .await
        .unwrap();
    c.complete_multipart_upload()
        .bucket("ssec")
        .key("mp")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(
                    CompletedPart::builder()
                        .part_number(1)
                        .e_tag(p1.e_tag().unwrap())
                        .build(),
                )
                .parts(
                    CompletedPart::builder()
                        .part_number(2)
                        .e_tag(p2.copy_part_result().unwrap().e_tag().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let got = c
        .get_object()
        .bucket("ssec")
        .key("mp")
        .sse_customer_algorithm("AES256")
        .sse_customer_key(&k)
        .sse_customer_key_md5(&k_md5)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().to_vec(),
        [part1, body[100..=65_636].to_vec()].concat()
    );
    let r = c.get_object().bucket("ssec").key("mp").send().await;
    assert_eq!(code(r), "InvalidRequest");

    // The customer key is nowhere on disk, nor the plaintext.
    drop(c);
    let Server { process, _dir, .. } = s;
    drop(process);
    assert!(!any_file_holds(&data, &key), "the customer key is stored");
    assert!(!any_file_holds(&data, b"SSE-C-SECRET-00000042|"));
    assert!(!any_file_holds(&data, b"SSE-C-PART-00000042|"));
    drop(_dir);
}

#[tokio::test]
async fn bucket_default_encryption_applies_to_writes_without_headers() {
    use aws_sdk_s3::types::{
        ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
        ServerSideEncryptionRule,
    };
    let s = serve(&[], &[]);
    let c = client(s.addr);
    wait_ready(s.addr).await;
    c.create_bucket().bucket("enc").send().await.unwrap();
    let r = c.get_bucket_encryption().bucket("enc").send().await;
    assert_eq!(
        (status(&r), code(r)),
        (404, "ServerSideEncryptionConfigurationNotFoundError".into())
    );
    let config = |alg: ServerSideEncryption, key: Option<&str>| {
        ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(
                        ServerSideEncryptionByDefault::builder()
                            .sse_algorithm(alg)
                            .set_kms_master_key_id(key.map(str::to_owned))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .build()
            .unwrap()
    };
    c.put_bucket_encryption()
        .bucket("enc")
        .server_side_encryption_configuration(config(ServerSideEncryption::Aes256, None))
        .send()
        .await
        .unwrap();
    let got = c
        .get_bucket_encryption()
        .bucket("enc")
        .send()
        .await
        .unwrap();
    let rule = &got.server_side_encryption_configuration().unwrap().rules()[0];
    assert_eq!(
        rule.apply_server_side_encryption_by_default()
            .unwrap()
            .sse_algorithm(),
        &ServerSideEncryption::Aes256
    );
    let put = c
        .put_object()
        .bucket("enc")
        .key("a")
        .body(ByteStream::from_static(b"defaulted"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.server_side_encryption(),
        Some(&ServerSideEncryption::Aes256)
    );
    assert_eq!(get_bytes(&c, "enc", "a").await, b"defaulted");
    // A KMS key that does not exist is refused when the configuration names it.
    let r = c
        .put_bucket_encryption()
        .bucket("enc")
        .server_side_encryption_configuration(config(
            ServerSideEncryption::AwsKms,
            Some("alias/nope"),
        ))
        .send()
        .await;
    assert_eq!(code(r), "KMS.NotFoundException");
    c.put_bucket_encryption()
        .bucket("enc")
        .server_side_encryption_configuration(config(ServerSideEncryption::AwsKms, None))
        .send()
        .await
        .unwrap();
    let head = c
        .put_object()
        .bucket("enc")
        .key("b")
        .body(ByteStream::from_static(b"kms"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
    // A request's own headers win over the default.
    let plain_c = c
        .put_object()
        .bucket("enc")
        .key("c")
        .server_side_encryption(ServerSideEncryption::Aes256)
        .body(ByteStream::from_static(b"s3"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        plain_c.server_side_encryption(),
        Some(&ServerSideEncryption::Aes256)
    );
    c.delete_bucket_encryption()
        .bucket("enc")
        .send()
        .await
        .unwrap();
    let put = c
        .put_object()
        .bucket("enc")
        .key("d")
        .body(ByteStream::from_static(b"plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.server_side_encryption(), None);
    for k in ["a", "b", "c"] {
        assert!(!get_bytes(&c, "enc", k).await.is_empty());
    }
}

/// A browser form upload (POST object) to `bucket`: the policy document, signed with the
/// root key as SigV4 POST policies are, and the fields; the status and body.
async fn post_form(
    addr: std::net::SocketAddr,
    bucket: &str,
    policy: serde_json::Value,
    fields: &[(&str, &str)],
    file: Vec<u8>,
    sign_with: &str,
) -> (u16, String, Option<String>) {
    use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
    use base64::Engine;
    let now = SystemTime::now();
    let stamp = aws_sdk_s3::primitives::DateTime::from(now)
        .fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
        .unwrap()
        .replace(['-', ':'], "");
    let amz_date = format!("{}Z", &stamp[..15]);
    let day = &stamp[..8];
    let credential = format!("{AK}/{day}/us-east-1/s3/aws4_request");
    let mut policy = policy;
    let conditions = policy["conditions"].as_array_mut().unwrap();
    conditions.push(serde_json::json!({"x-amz-algorithm": "AWS4-HMAC-SHA256"}));
    conditions.push(serde_json::json!({"x-amz-credential": credential}));
    conditions.push(serde_json::json!({"x-amz-date": amz_date}));
    let encoded = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
    let key = generate_signing_key(sign_with, now, "us-east-1", "s3");
    let signature = calculate_signature(key, encoded.as_bytes());
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields {
        form = form.text((*k).to_owned(), (*v).to_owned());
    }
    form = form
        .text("x-amz-algorithm", "AWS4-HMAC-SHA256")
        .text("x-amz-credential", credential)
        .text("x-amz-date", amz_date)
        .text("policy", encoded)
        .text("x-amz-signature", signature)
        .part(
            "file",
            reqwest::multipart::Part::bytes(file).file_name("hello.txt"),
        );
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("http://{addr}/{bucket}"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, resp.text().await.unwrap(), location)
}

#[tokio::test]
async fn browser_form_uploads_follow_their_policy_document() {
    let s = serve(&[], &[]);
    let c = client(s.addr);
    wait_ready(s.addr).await;
    c.create_bucket().bucket("forms").send().await.unwrap();
    let in_an_hour =
        aws_sdk_s3::primitives::DateTime::from(SystemTime::now() + Duration::from_secs(3600))
            .fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
            .unwrap();
    let policy = |expiration: &str| {
        serde_json::json!({
            "expiration": expiration,
            "conditions": [
                {"bucket": "forms"},
                ["starts-with", "$key", "uploads/"],
                ["starts-with", "$Content-Type", "text/"],
                {"success_action_status": "201"},
                ["content-length-range", 1, 1000],
            ]
        })
    };
    let fields = |key: &'static str| {
        vec![
            ("key", key),
            ("Content-Type", "text/plain"),
            ("success_action_status", "201"),
        ]
    };
    let (status, body, _) = post_form(
        s.addr,
        "forms",
        policy(&in_an_hour),
        &fields("uploads/hello.txt"),
        b"hello from a form".to_vec(),
        SK,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("<Key>uploads/hello.txt</Key>"), "{body}");
    assert!(body.contains("<Bucket>forms</Bucket>"), "{body}");
    assert_eq!(
        get_bytes(&c, "forms", "uploads/hello.txt").await,
        b"hello from a form"
    );
    let head = c
        .head_object()
        .bucket("forms")
        .key("uploads/hello.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("text/plain"));

    // A key outside the policy's prefix, a body over its length range, a policy signed with
    // another secret, and an expired policy store nothing.
    let (status, body, _) = post_form(
        s.addr,
        "forms",
        policy(&in_an_hour),
        &fields("elsewhere/x.txt"),
        b"x".to_vec(),
        SK,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body, _) = post_form(
        s.addr,
        "forms",
        policy(&in_an_hour),
        &fields("uploads/big.txt"),
        vec![b'x'; 2000],
        SK,
    )
    .await;
    assert!(status == 400 || status == 403, "{status} {body}");
    let (status, body, _) = post_form(
        s.addr,
        "forms",
        policy(&in_an_hour),
        &fields("uploads/forged.txt"),
        b"x".to_vec(),
        "not-the-secret",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    let (status, body, _) = post_form(
        s.addr,
        "forms",
        policy("2020-01-01T00:00:00Z"),
        &fields("uploads/late.txt"),
        b"x".to_vec(),
        SK,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    for k in [
        "elsewhere/x.txt",
        "uploads/big.txt",
        "uploads/forged.txt",
        "uploads/late.txt",
    ] {
        let r = c.head_object().bucket("forms").key(k).send().await;
        assert_eq!(status_of_head(&r), 404, "{k} was stored");
    }

    // Encryption given as a form field applies as the header would.
    let mut sse_policy = policy(&in_an_hour);
    sse_policy["conditions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"x-amz-server-side-encryption": "AES256"}));
    let mut sse_fields = fields("uploads/sealed.txt");
    sse_fields.push(("x-amz-server-side-encryption", "AES256"));
    let (status, body, _) = post_form(
        s.addr,
        "forms",
        sse_policy,
        &sse_fields,
        b"sealed by a form".to_vec(),
        SK,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let head = c
        .head_object()
        .bucket("forms")
        .key("uploads/sealed.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256)
    );

    // success_action_redirect: 303 to the page, with the bucket, key and ETag.
    let mut redirect_policy = policy(&in_an_hour);
    redirect_policy["conditions"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c.get("success_action_status").is_none());
    redirect_policy["conditions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"success_action_redirect": "https://example.com/done"}));
    let (status, body, location) = post_form(
        s.addr,
        "forms",
        redirect_policy,
        &[
            ("key", "uploads/redirected.txt"),
            ("Content-Type", "text/plain"),
            ("success_action_redirect", "https://example.com/done"),
        ],
        b"redirected".to_vec(),
        SK,
    )
    .await;
    assert_eq!(status, 303, "{body}");
    let location = location.unwrap();
    assert!(
        location.starts_with("https://example.com/done?"),
        "{location}"
    );
    assert!(
        location.contains("key=uploads%2Fredirected.txt"),
        "{location}"
    );
    assert_eq!(
        get_bytes(&c, "forms", "uploads/redirected.txt").await,
        b"redirected"
    );
}

fn status_of_head<T: std::fmt::Debug, E>(
    r: &Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
) -> u16 {
    status(r)
}

/// A metadata value as S3 returns non-ASCII ones (RFC 2047, `=?UTF-8?B?...?=`), decoded.
fn rfc2047(v: &str) -> String {
    use base64::Engine;
    match v
        .strip_prefix("=?UTF-8?B?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b) => {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
        }
        None => v.to_owned(),
    }
}

#[tokio::test]
async fn unicode_user_metadata_is_kept_and_returned_as_s3_returns_it() {
    let s = serve(&[], &[]);
    let c = client(s.addr);
    wait_ready(s.addr).await;
    c.create_bucket().bucket("meta").send().await.unwrap();
    // Sent as raw UTF-8, and as RFC 2047 (which S3 decodes before storing).
    c.put_object()
        .bucket("meta")
        .key("k")
        .metadata("greeting", "Hello World\u{e9}")
        .metadata("mark", "=?UTF-8?B?4pyTIGTDqWrDoCB2dQ==?=")
        .metadata("plain", "ascii only")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap();
    for m in [
        c.head_object()
            .bucket("meta")
            .key("k")
            .send()
            .await
            .unwrap()
            .metadata()
            .unwrap()
            .clone(),
        c.get_object()
            .bucket("meta")
            .key("k")
            .send()
            .await
            .unwrap()
            .metadata()
            .unwrap()
            .clone(),
    ] {
        // Non-ASCII values come back RFC 2047-encoded (mail-safe), as S3 documents; ASCII
        // ones as they are.
        assert!(m["greeting"].starts_with("=?UTF-8?B?"), "{m:?}");
        assert_eq!(rfc2047(&m["greeting"]), "Hello World\u{e9}");
        assert_eq!(rfc2047(&m["mark"]), "\u{2713} d\u{e9}j\u{e0} vu");
        assert_eq!(m["plain"], "ascii only");
    }
}

fn b64(raw: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn unb64(v: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(v).unwrap()
}

/// CRC of `bytes` as S3 writes it: big-endian, base64.
fn crc_of(alg: crc_fast::CrcAlgorithm, width: usize, bytes: &[u8]) -> String {
    b64(&crc_fast::checksum(alg, bytes).to_be_bytes()[8 - width..])
}

#[tokio::test]
async fn multipart_checksums_composite_full_object_per_part_and_their_errors() {
    use aws_sdk_s3::config::RequestChecksumCalculation;
    use aws_sdk_s3::types::{
        ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, ObjectAttributes,
    };
    use crc_fast::CrcAlgorithm::{Crc32Iscsi, Crc32IsoHdlc, Crc64Nvme};
    let s = serve(&[], &[]);
    wait_ready(s.addr).await;
    let c = client(s.addr);
    // A client that sends no checksum it is not asked for.
    let bare = Client::from_conf(
        c.config()
            .to_builder()
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .build(),
    );
    c.create_bucket().bucket("sums").send().await.unwrap();

    // S3's combinations only.
    for (alg, kind) in [
        (ChecksumAlgorithm::Sha256, Some(ChecksumType::FullObject)),
        (ChecksumAlgorithm::Crc64Nvme, Some(ChecksumType::Composite)),
    ] {
        let mut r = c
            .create_multipart_upload()
            .bucket("sums")
            .key("bad")
            .checksum_algorithm(alg);
        if let Some(k) = kind {
            r = r.checksum_type(k);
        }
        assert_eq!(code(r.send().await), "InvalidRequest");
    }
    let r = c
        .create_multipart_upload()
        .bucket("sums")
        .key("bad")
        .checksum_type(ChecksumType::Composite)
        .send()
        .await;
    assert_eq!(code(r), "InvalidRequest");

    // Composite CRC32C: every part carries its checksum, the object's is the CRC32C of the
    // parts' CRC32Cs, "-N".
    let created = c
        .create_multipart_upload()
        .bucket("sums")
        .key("composite")
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.checksum_algorithm(),
        Some(&ChecksumAlgorithm::Crc32C)
    );
    assert_eq!(created.checksum_type(), Some(&ChecksumType::Composite));
    let id = created.upload_id().unwrap().to_owned();
    let p1 = pattern(71, 5 << 20);
    let p2 = pattern(72, 1000);
    let mut sums = Vec::new();
    let mut etags = Vec::new();
    for (n, data) in [(1, &p1), (2, &p2)] {
        let r = c
            .upload_part()
            .bucket("sums")
            .key("composite")
            .upload_id(&id)
            .part_number(n)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.checksum_crc32_c(),
            Some(crc_of(Crc32Iscsi, 4, data).as_str())
        );
        sums.push(r.checksum_crc32_c().unwrap().to_owned());
        etags.push(r.e_tag().unwrap().to_owned());
    }
    // Another algorithm, or none, for a part of a composite upload is refused and stores
    // nothing.
    let r = c
        .upload_part()
        .bucket("sums")
        .key("composite")
        .upload_id(&id)
        .part_number(3)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .body(ByteStream::from_static(b"three"))
        .send()
        .await;
    assert_eq!(code(r), "InvalidRequest");
    let r = bare
        .upload_part()
        .bucket("sums")
        .key("composite")
        .upload_id(&id)
        .part_number(3)
        .body(ByteStream::from_static(b"three"))
        .send()
        .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), Some("InvalidRequest"));
    assert!(e.message().unwrap_or_default().contains("null"), "{e:?}");
    // ListParts shows each part's checksum and the upload's settings.
    let listed = c
        .list_parts()
        .bucket("sums")
        .key("composite")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.checksum_algorithm(),
        Some(&ChecksumAlgorithm::Crc32C)
    );
    assert_eq!(listed.checksum_type(), Some(&ChecksumType::Composite));
    let listed_sums: Vec<_> = listed
        .parts()
        .iter()
        .map(|p| p.checksum_crc32_c().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(listed_sums, sums);
    let uploads = c
        .list_multipart_uploads()
        .bucket("sums")
        .send()
        .await
        .unwrap();
    let u = &uploads.uploads()[0];
    assert_eq!(u.key(), Some("composite"));
    assert_eq!(u.checksum_algorithm(), Some(&ChecksumAlgorithm::Crc32C));
    assert_eq!(u.checksum_type(), Some(&ChecksumType::Composite));
    let part = |n: usize, sum: Option<&str>| {
        let mut b = CompletedPart::builder()
            .part_number(n as i32 + 1)
            .e_tag(&etags[n]);
        if let Some(s) = sum {
            b = b.checksum_crc32_c(s);
        }
        b.build()
    };
    let complete = |parts: Vec<CompletedPart>| {
        c.complete_multipart_upload()
            .bucket("sums")
            .key("composite")
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
    };
    // A composite completion lists every part's checksum, and the right ones.
    let e = complete(vec![part(0, None), part(1, None)])
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidRequest"));
    assert!(
        e.message()
            .unwrap_or_default()
            .contains("missing for part 1"),
        "{e:?}"
    );
    let r = complete(vec![part(0, Some(&sums[1])), part(1, Some(&sums[1]))])
        .send()
        .await;
    assert_eq!(code(r), "InvalidPart");
    let r = complete(vec![part(0, Some(&sums[0])), part(1, Some(&sums[1]))])
        .checksum_crc32_c("AAAAAA==")
        .send()
        .await;
    assert_eq!(code(r), "BadDigest");
    let r = complete(vec![part(0, Some(&sums[0])), part(1, Some(&sums[1]))])
        .mpu_object_size(1)
        .send()
        .await;
    assert_eq!(code(r), "InvalidRequest");
    let r = complete(vec![part(0, Some(&sums[0])), part(1, Some(&sums[1]))])
        .checksum_type(ChecksumType::FullObject)
        .send()
        .await;
    assert_eq!(code(r), "InvalidRequest");
    let raw: Vec<u8> = sums.iter().flat_map(|s| unb64(s)).collect();
    let want = format!("{}-2", crc_of(Crc32Iscsi, 4, &raw));
    let done = complete(vec![part(0, Some(&sums[0])), part(1, Some(&sums[1]))])
        .mpu_object_size((p1.len() + p2.len()) as i64)
        .send()
        .await
        .unwrap();
    assert_eq!(done.checksum_crc32_c(), Some(want.as_str()));
    assert_eq!(done.checksum_type(), Some(&ChecksumType::Composite));
    // HEAD and GET report it when asked; a part read reports the part's (which the SDK
    // checks against the part's bytes).
    let head = c
        .head_object()
        .bucket("sums")
        .key("composite")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(head.checksum_crc32_c(), Some(want.as_str()));
    assert_eq!(head.checksum_type(), Some(&ChecksumType::Composite));
    let plain_head = c
        .head_object()
        .bucket("sums")
        .key("composite")
        .send()
        .await
        .unwrap();
    assert_eq!(plain_head.checksum_crc32_c(), None);
    let got = c
        .get_object()
        .bucket("sums")
        .key("composite")
        .part_number(2)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(got.checksum_crc32_c(), Some(sums[1].as_str()));
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), p2);
    let got = c
        .get_object()
        .bucket("sums")
        .key("composite")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(got.checksum_crc32_c(), Some(want.as_str()));
    let whole = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(whole.len(), p1.len() + p2.len());
    // GetObjectAttributes: the checksum, its type and each part's.
    let attrs = c
        .get_object_attributes()
        .bucket("sums")
        .key("composite")
        .object_attributes(ObjectAttributes::Checksum)
        .object_attributes(ObjectAttributes::ObjectParts)
        .send()
        .await
        .unwrap();
    let cs = attrs.checksum().unwrap();
    assert_eq!(cs.checksum_crc32_c(), Some(want.as_str()));
    assert_eq!(cs.checksum_type(), Some(&ChecksumType::Composite));
    let parts = attrs.object_parts().unwrap();
    assert_eq!(parts.total_parts_count(), Some(2));
    let part_sums: Vec<_> = parts
        .parts()
        .iter()
        .map(|p| p.checksum_crc32_c().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(part_sums, sums);

    // Full-object CRC64NVME (its default type): parts may come without checksums (the
    // gateway computes them); the object's is the CRC64NVME of all its bytes, which the SDK
    // checks on a whole GET.
    let created = c
        .create_multipart_upload()
        .bucket("sums")
        .key("full")
        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
        .send()
        .await
        .unwrap();
    assert_eq!(created.checksum_type(), Some(&ChecksumType::FullObject));
    let id = created.upload_id().unwrap().to_owned();
    let data = pattern(73, (10 << 20) + 12_345);
    let mut parts = Vec::new();
    for (i, piece) in data.chunks(5 << 20).enumerate() {
        let r = bare
            .upload_part()
            .bucket("sums")
            .key("full")
            .upload_id(&id)
            .part_number(i as i32 + 1)
            .body(ByteStream::from(piece.to_vec()))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(i as i32 + 1)
                .e_tag(r.e_tag().unwrap())
                .build(),
        );
    }
    let want = crc_of(Crc64Nvme, 8, &data);
    let done = c
        .complete_multipart_upload()
        .bucket("sums")
        .key("full")
        .upload_id(&id)
        .checksum_crc64_nvme(&want)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(done.checksum_crc64_nvme(), Some(want.as_str()));
    assert_eq!(done.checksum_type(), Some(&ChecksumType::FullObject));
    let got = c
        .get_object()
        .bucket("sums")
        .key("full")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(got.checksum_crc64_nvme(), Some(want.as_str()));
    assert_eq!(got.checksum_type(), Some(&ChecksumType::FullObject));
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        data
    );

    // A copied part gets the upload's checksum over the bytes copied.
    c.put_object()
        .bucket("sums")
        .key("source")
        .body(ByteStream::from(p1.clone()))
        .send()
        .await
        .unwrap();
    let id = c
        .create_multipart_upload()
        .bucket("sums")
        .key("copied")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    let copied = c
        .upload_part_copy()
        .bucket("sums")
        .key("copied")
        .upload_id(&id)
        .part_number(1)
        .copy_source("sums/source")
        .send()
        .await
        .unwrap();
    let result = copied.copy_part_result().unwrap();
    let part_sum = crc_of(Crc32IsoHdlc, 4, &p1);
    assert_eq!(result.checksum_crc32(), Some(part_sum.as_str()));
    let done = c
        .complete_multipart_upload()
        .bucket("sums")
        .key("copied")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(
                    CompletedPart::builder()
                        .part_number(1)
                        .e_tag(result.e_tag().unwrap())
                        .checksum_crc32(&part_sum)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let want = format!("{}-1", crc_of(Crc32IsoHdlc, 4, &unb64(&part_sum)));
    assert_eq!(done.checksum_crc32(), Some(want.as_str()));
}

#[tokio::test]
async fn lifecycle_filters_round_trip_as_written_and_expire_by_tags_and_size() {
    use aws_sdk_s3::types::{
        AbortIncompleteMultipartUpload, LifecycleRuleAndOperator, NoncurrentVersionExpiration,
    };
    let s = serve(&[], &[("CAIRN_MASTER_LIFECYCLE_MS", "200")]);
    wait_ready(s.addr).await;
    let c = client(s.addr);
    c.create_bucket().bucket("filters").send().await.unwrap();
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build().unwrap();
    let past = aws_sdk_s3::primitives::DateTime::from_secs(1_577_836_800);
    #[allow(deprecated)]
    let legacy = LifecycleRule::builder()
        .id("legacy-prefix")
        .status(ExpirationStatus::Enabled)
        .prefix("old/")
        .expiration(LifecycleExpiration::builder().days(30).build())
        .build()
        .unwrap();
    let rules = vec![
        legacy,
        LifecycleRule::builder()
            .id("by-tag")
            .status(ExpirationStatus::Enabled)
            .filter(
                LifecycleRuleFilter::builder()
                    .tag(tag("class", "scratch"))
                    .build(),
            )
            .expiration(LifecycleExpiration::builder().date(past).build())
            .build()
            .unwrap(),
        LifecycleRule::builder()
            .id("and")
            .status(ExpirationStatus::Disabled)
            .filter(
                LifecycleRuleFilter::builder()
                    .and(
                        LifecycleRuleAndOperator::builder()
                            .prefix("logs/")
                            .tags(tag("a", "1"))
                            .tags(tag("b", "2"))
                            .object_size_greater_than(10)
                            .object_size_less_than(1000)
                            .build(),
                    )
                    .build(),
            )
            .noncurrent_version_expiration(
                NoncurrentVersionExpiration::builder()
                    .noncurrent_days(3)
                    .newer_noncurrent_versions(2)
                    .build(),
            )
            .build()
            .unwrap(),
        LifecycleRule::builder()
            .id("big-uploads")
            .status(ExpirationStatus::Enabled)
            .filter(
                LifecycleRuleFilter::builder()
                    .object_size_greater_than(1 << 20)
                    .build(),
            )
            .abort_incomplete_multipart_upload(
                AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(2)
                    .build(),
            )
            .build()
            .unwrap(),
    ];
    let put_rules = |rules: Vec<LifecycleRule>| {
        c.put_bucket_lifecycle_configuration()
            .bucket("filters")
            .lifecycle_configuration(
                BucketLifecycleConfiguration::builder()
                    .set_rules(Some(rules))
                    .build()
                    .unwrap(),
            )
            .send()
    };
    put_rules(rules.clone()).await.unwrap();
    let got = c
        .get_bucket_lifecycle_configuration()
        .bucket("filters")
        .send()
        .await
        .unwrap();
    // Read back exactly as written: the older Prefix form, a single Filter condition, And.
    assert_eq!(got.rules(), rules.as_slice());

    // What S3 refuses.
    let one = |f: LifecycleRuleFilter, exp: LifecycleExpiration| {
        LifecycleRule::builder()
            .id("x")
            .status(ExpirationStatus::Enabled)
            .filter(f)
            .expiration(exp)
            .build()
            .unwrap()
    };
    let days = LifecycleExpiration::builder().days(1).build();
    let cases = [
        (
            one(
                LifecycleRuleFilter::builder()
                    .prefix("p/")
                    .tag(tag("k", "v"))
                    .build(),
                days.clone(),
            ),
            "MalformedXML",
        ),
        (
            one(
                LifecycleRuleFilter::builder().tag(tag("k", "v")).build(),
                LifecycleExpiration::builder()
                    .expired_object_delete_marker(true)
                    .build(),
            ),
            "InvalidRequest",
        ),
        (
            one(
                LifecycleRuleFilter::builder()
                    .and(
                        LifecycleRuleAndOperator::builder()
                            .object_size_greater_than(100)
                            .object_size_less_than(100)
                            .build(),
                    )
                    .build(),
                days.clone(),
            ),
            "InvalidRequest",
        ),
        (
            one(
                LifecycleRuleFilter::builder()
                    .and(
                        LifecycleRuleAndOperator::builder()
                            .tags(tag("k", "1"))
                            .tags(tag("k", "2"))
                            .build(),
                    )
                    .build(),
                days.clone(),
            ),
            "InvalidRequest",
        ),
    ];
    for (rule, want) in cases {
        assert_eq!(code(put_rules(vec![rule.clone()]).await), want, "{rule:?}");
    }
    // A refused configuration leaves the one in force.
    let got = c
        .get_bucket_lifecycle_configuration()
        .bucket("filters")
        .send()
        .await
        .unwrap();
    assert_eq!(got.rules().len(), 4);

    // x-amz-expiration and the planner follow the tags: only the tagged object goes.
    let tagged = c
        .put_object()
        .bucket("filters")
        .key("a")
        .tagging("class=scratch")
        .body(ByteStream::from_static(b"scratch"))
        .send()
        .await
        .unwrap();
    assert!(
        tagged.expiration().is_some_and(|e| e.contains("by-tag")),
        "{tagged:?}"
    );
    let plain = c
        .put_object()
        .bucket("filters")
        .key("b")
        .body(ByteStream::from_static(b"kept"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.expiration(), None);
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    loop {
        let keys: Vec<String> = c
            .list_objects_v2()
            .bucket("filters")
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        if keys == vec!["b".to_string()] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lifecycle never ran: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
