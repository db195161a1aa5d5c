//! Bodies of the fuzz targets that need the whole `cairn` crate (`fuzz/fuzz_targets/config_file.rs`
//! and `s3_request.rs`), kept here so the ordinary test suite runs them too over generated
//! inputs. Each returns normally on any input and panics on a broken promise.
//!
//! `s3_request` sends every input through the real gateway of a real in-process node (a
//! one-master Raft group on redb, a chunkserver over QUIC, the S3 face through s3s), started
//! once per process in a temporary folder, exactly as `cairn serve` wires it. Three kinds of
//! input: raw HTTP request bytes (unsigned, so anonymous), a request signed with the root key
//! (so the fuzzer gets past SigV4 into the operations' own decoders: headers, queries, XML,
//! `aws-chunked` bodies), and a signed request with one byte of its signature material changed.
//! Promises: no answer is a 500 (the caller's mistake is a 4xx; 501 for an operation Cairn does
//! not implement and 503 for back-pressure are allowed), a changed signature is refused with a
//! 4xx, no request hangs, and an object no fuzzed request may reach stays byte for byte.

// A fuzz body reports a broken promise by panicking; this module is built only for the tests
// and for the fuzz crate (feature `fuzzing`), never into the `cairn` binary.
#![allow(clippy::panic)]

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use http::{Method, Request, StatusCode};

use crate::config::{Layers, parse_size};

/// Arbitrary bytes as a config file: the TOML layer, then resolving every key.
pub fn config_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut layers = Layers::default();
    if layers.text(&text, Path::new("fuzz.toml")).is_ok() {
        let _ = layers.resolve();
    }
    // A size that parses prints back to one that parses to the same number.
    if let Ok(n) = parse_size(&text) {
        assert_eq!(parse_size(&n.to_string()), Ok(n), "{text:?}");
    }
}

const AK: &str = "CAIRNFUZZROOTKEY0001";
const SK: &str = "fuzz-root-secret-key-0123456789abcdefghij";
/// The bucket signed requests are confined to.
const PLAYGROUND: &str = "fuzz";
/// A bucket and object no fuzzed request may change.
const KEPT_BUCKET: &str = "kept";
const KEPT_KEY: &str = "sentinel";
const KEPT_BODY: &[u8] = b"stored before the fuzzing began; must never change";
/// Longest any one request may take.
const REQUEST_MAX: Duration = Duration::from_secs(60);

struct Target {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    _node: Arc<crate::serve::Node>,
    _dir: tempfile::TempDir,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary folder: {e}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let data = dir.path().to_owned();
        let node = rt.block_on(async {
            let mut layers = Layers::default();
            let d = data.display().to_string();
            layers.flag("data", Some(&d));
            layers.flag("cluster.listen", Some("127.0.0.1:0"));
            let config = layers.resolve().unwrap_or_else(|e| panic!("config: {e}"));
            let node = crate::serve::Node::open(&data, &config)
                .await
                .unwrap_or_else(|e| panic!("node: {e:#}"));
            let mut tries = 0;
            while let Err(e) = cairn_api::auth::create_key(
                &node.gateway,
                AK,
                SK,
                cairn_master::keys::ROOT_OWNER,
                None,
            )
            .await
            {
                tries += 1;
                assert!(tries < 200, "root key: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Arc::new(node)
        });
        let router = crate::serve::router(node.clone());
        let t = Target {
            rt,
            router,
            _node: node,
            _dir: dir,
        };
        // The playground and the kept object, through the S3 face itself.
        for (method, path, body) in [
            (Method::PUT, format!("/{PLAYGROUND}"), Vec::new()),
            (Method::PUT, format!("/{KEPT_BUCKET}"), Vec::new()),
            (
                Method::PUT,
                format!("/{KEPT_BUCKET}/{KEPT_KEY}"),
                KEPT_BODY.to_vec(),
            ),
        ] {
            let mut tries = 0;
            loop {
                let req = signed(&method, &path, &[], body.clone(), None)
                    .unwrap_or_else(|| panic!("sign {path}"));
                let (status, _) = t.send(req);
                if status.is_success() {
                    break;
                }
                tries += 1;
                assert!(tries < 200, "{method} {path}: {status}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        t
    })
}

impl Target {
    fn send(&self, req: Request<Body>) -> (StatusCode, Vec<u8>) {
        use tower::ServiceExt;
        let router = self.router.clone();
        self.rt.block_on(async move {
            let work = async {
                let resp = router.oneshot(req).await.unwrap_or_else(|e| match e {});
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 30)
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                (status, body)
            };
            tokio::time::timeout(REQUEST_MAX, work)
                .await
                .unwrap_or_else(|_| panic!("a request did not finish in {REQUEST_MAX:?}"))
        })
    }
}

/// A request to `path` (with its query) signed with the root key (SigV4 in headers, as the
/// SDKs send it). `content_sha256` is the `x-amz-content-sha256` to sign (for streaming
/// bodies); by default the body's SHA-256. `None` when the pieces cannot form a request.
fn signed(
    method: &Method,
    path: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
    content_sha256: Option<&str>,
) -> Option<Request<Body>> {
    use aws_sigv4::http_request::{
        PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode, sign,
    };
    let url = format!("http://fuzz.localhost{path}");
    let identity = aws_credential_types::Credentials::new(AK, SK, None, None, "fuzz").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .ok()?
        .into();
    let signable_body = match content_sha256 {
        Some(h) => SignableBody::Precomputed(h.to_owned()),
        None => SignableBody::Bytes(&body),
    };
    let signable = SignableRequest::new(
        method.as_str(),
        &url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        signable_body,
    )
    .ok()?;
    let (instructions, _) = sign(signable, &params).ok()?.into_parts();
    let mut b = Request::builder()
        .method(method.clone())
        .uri(path)
        .header("host", "fuzz.localhost");
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    for (k, v) in instructions.headers() {
        b = b.header(k, v);
    }
    // As an HTTP/1.1 client sends it, unless the input says otherwise.
    if !headers.iter().any(|(k, _)| k == "content-length") {
        b = b.header("content-length", body.len());
    }
    b.body(Body::from(body)).ok()
}

/// A request as a structured input gives it.
struct Pieces {
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The pieces of a structured input: `METHOD\nPATH?QUERY\nName: value\n...\n\nBODY`.
fn pieces(data: &[u8]) -> Option<Pieces> {
    let mut rest = data;
    let mut line = || -> Option<String> {
        let at = rest.iter().position(|&b| b == b'\n')?;
        let l = String::from_utf8_lossy(&rest[..at]).into_owned();
        rest = &rest[at + 1..];
        Some(l)
    };
    let method = Method::from_bytes(line()?.trim().as_bytes()).ok()?;
    let path = line()?;
    let mut headers = Vec::new();
    loop {
        let l = line()?;
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let path = format!("/{PLAYGROUND}/{}", path.trim_start_matches('/'));
    Some(Pieces {
        method,
        path,
        headers,
        body: rest.to_vec(),
    })
}

/// Arbitrary bytes as an HTTP request to the S3 gateway of a real node (see the module).
pub fn s3_request(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let t = target();
    match mode % 3 {
        0 => {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(len)) = parsed.parse(data) else {
                return;
            };
            let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
                return;
            };
            let mut b = Request::builder().method(method).uri(path);
            for h in parsed.headers.iter() {
                b = b.header(h.name, h.value);
            }
            let Ok(req) = b.body(Body::from(data[len..].to_vec())) else {
                return;
            };
            let (status, body) = t.send(req);
            check(status, &body, "an unsigned request");
        }
        m => {
            let Some(Pieces {
                method,
                path,
                headers,
                body,
            }) = pieces(data)
            else {
                return;
            };
            let sha = headers
                .iter()
                .find(|(k, _)| k == "x-amz-content-sha256")
                .map(|(_, v)| v.clone());
            let headers: Vec<(String, String)> = headers
                .into_iter()
                .filter(|(k, _)| k != "x-amz-content-sha256" && k != "authorization")
                .collect();
            let Some(mut req) = signed(&method, &path, &headers, body, sha.as_deref()) else {
                return;
            };
            if m == 2 {
                // Change one byte of the signature, the date or the signed payload hash.
                let names = ["authorization", "x-amz-date", "x-amz-content-sha256"];
                let name = names[data.len() % names.len()];
                let Some(v) = req.headers().get(name).map(|v| v.as_bytes().to_vec()) else {
                    return;
                };
                let mut v = v;
                let at = v.len().saturating_sub(1 + data.len() % 7);
                let Some(c) = v.get_mut(at) else {
                    return;
                };
                *c = if *c == b'0' { b'1' } else { b'0' };
                let Ok(v) = http::HeaderValue::from_bytes(&v) else {
                    return;
                };
                req.headers_mut().insert(name, v);
                let (status, body) = t.send(req);
                check(status, &body, "a request with a changed signature");
                assert!(
                    status.is_client_error(),
                    "a request with a changed {name} was answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            } else {
                let (status, body) = t.send(req);
                check(status, &body, "a signed request");
            }
        }
    }
    // The kept object is untouched.
    let req = signed(
        &Method::GET,
        &format!("/{KEPT_BUCKET}/{KEPT_KEY}"),
        &[],
        Vec::new(),
        None,
    )
    .unwrap_or_else(|| panic!("sign the kept object's GET"));
    let (status, body) = t.send(req);
    assert_eq!(status, StatusCode::OK, "the kept object: {status}");
    assert_eq!(body, KEPT_BODY, "the kept object changed");
}

fn check(status: StatusCode, body: &[u8], what: &str) {
    assert!(
        !status.is_server_error()
            || status == StatusCode::NOT_IMPLEMENTED
            || status == StatusCode::SERVICE_UNAVAILABLE,
        "{what} was answered {status}: {}",
        String::from_utf8_lossy(body)
    );
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn config_seeds() -> Vec<Vec<u8>> {
        vec![
            b"data = \"/var/lib/cairn\"\nlisten = \"127.0.0.1:9000\"\n[chunks]\nsize_max = \"64MiB\"\n".to_vec(),
            b"[master]\nid = 1\nreplication = 3\ngc_grace_ms = 1000\n[gateway]\nmasters = \"10.0.0.1:7000,10.0.0.2:7000\"\n".to_vec(),
            b"64MiB".to_vec(),
            b"[shares]\nmax_links = 10\nmax_ttl = \"7d\"\n[images]\nmax_size = \"1GiB\"\n".to_vec(),
        ]
    }

    /// Structured S3 inputs (mode byte first) that reach the operations.
    fn s3_seeds() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = vec![
            b"\x00PUT /fuzz/anon HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            b"\x00GET /kept/sentinel HTTP/1.1\r\nHost: x\r\nAuthorization: AWS4-HMAC-SHA256 Credential=CAIRNFUZZROOTKEY0001/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n\r\n".to_vec(),
            b"\x00DELETE /kept/sentinel?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=CAIRNFUZZROOTKEY0001%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=00 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            b"\x01PUT\nobj\ncontent-type: text/plain\nx-amz-meta-a: b\n\nhello".to_vec(),
            b"\x01GET\nobj\nrange: bytes=1-3\n\n".to_vec(),
            b"\x01GET\n?list-type=2&prefix=o&delimiter=/&max-keys=2\n\n".to_vec(),
            b"\x01POST\n?delete\ncontent-md5: AAAAAAAAAAAAAAAAAAAAAA==\n\n<Delete><Object><Key>obj</Key></Object></Delete>".to_vec(),
            b"\x01POST\nmp?uploads\n\n".to_vec(),
            b"\x01POST\nmp?uploadId=abc\n\n<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"x\"</ETag></Part></CompleteMultipartUpload>".to_vec(),
            b"\x01PUT\ncopy\nx-amz-copy-source: /kept/sentinel\nx-amz-metadata-directive: REPLACE\n\n".to_vec(),
            b"\x01PUT\nstreamed\nx-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD\ncontent-encoding: aws-chunked\nx-amz-decoded-content-length: 5\n\n5;chunk-signature=00\r\nhello\r\n0;chunk-signature=00\r\n\r\n".to_vec(),
            b"\x01PUT\ntrailer\nx-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER\ncontent-encoding: aws-chunked\nx-amz-trailer: x-amz-checksum-crc32\nx-amz-decoded-content-length: 5\n\n5\r\nhello\r\n0\r\nx-amz-checksum-crc32: AAAAAA==\r\n\r\n".to_vec(),
            b"\x01PUT\n?lifecycle\n\n<LifecycleConfiguration><Rule><ID>r</ID><Status>Enabled</Status><Filter><Prefix>a</Prefix></Filter><Expiration><Days>1</Days></Expiration></Rule></LifecycleConfiguration>".to_vec(),
            b"\x02GET\nobj\n\n".to_vec(),
            b"\x02PUT\nobj2\n\nbody".to_vec(),
        ];
        // A credential date with a byte below '0': s3s's date parser overflowed on it in debug
        // builds (the profile setting in Cargo.toml).
        v.push(b"\x00GET /fuzz/x HTTP/1.1\r\nHost: x\r\nx-amz-date: 20260101T000000Z\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\nAuthorization: AWS4-HMAC-SHA256 Credential=CAIRNFUZZROOTKEY0001/2026 101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n\r\n".to_vec());
        v.push(b"\x01PUT\n?cors\n\n<CORSConfiguration><CORSRule><AllowedMethod>GET</AllowedMethod><AllowedOrigin>*</AllowedOrigin></CORSRule></CORSConfiguration>".to_vec());
        v
    }

    fn mutate(mut s: Vec<u8>, flips: &[(usize, u8)], cut: usize) -> Vec<u8> {
        for &(i, b) in flips {
            let n = s.len().max(1);
            if let Some(x) = s.get_mut(i % n) {
                *x ^= b;
            }
        }
        let keep = cut % (s.len() + 1) + s.len() / 2;
        s.truncate(keep);
        s
    }

    #[test]
    fn the_seeds_run() {
        for s in config_seeds() {
            super::config_file(&s);
        }
        for s in s3_seeds() {
            super::s3_request(&s);
        }
    }

    proptest! {
        #[test]
        fn fuzz_config_file_body(noise in proptest::collection::vec(any::<u8>(), 0..256), seed in 0usize..4, cut in any::<usize>(), flips in proptest::collection::vec(any::<(usize, u8)>(), 0..6)) {
            super::config_file(&noise);
            super::config_file(&mutate(config_seeds()[seed].clone(), &flips, cut));
        }

        #[test]
        fn fuzz_s3_request_body(noise in proptest::collection::vec(any::<u8>(), 0..256), seed in any::<usize>(), cut in any::<usize>(), flips in proptest::collection::vec(any::<(usize, u8)>(), 0..4)) {
            super::s3_request(&noise);
            let seeds = s3_seeds();
            let s = seeds[seed % seeds.len()].clone();
            // The mode byte stays, the rest is mutated.
            let mut m = vec![s[0]];
            m.extend(mutate(s[1..].to_vec(), &flips, cut));
            super::s3_request(&m);
        }
    }
}
