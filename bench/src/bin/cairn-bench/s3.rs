//! `cairn-bench s3`: an S3 load generator for any endpoint, and `cairn-bench null-server`, the
//! ceiling it is measured against.
//!
//! On a 2-core machine the client costs as much as the server, so a bare ops/s figure says
//! little. Every run therefore measures, with the same client and settings:
//! - the endpoint under test;
//! - a null endpoint (`null-server`, started as a child process) that answers every GET with
//!   the bytes and drops every PUT without storing anything: the most this client can do;
//! - the raw disk (sequential write + fsync) in `--dir`: the most a durable store can do.
//!
//! and reports each figure as a ratio of its ceiling.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use bytes::Bytes;
use serde_json::json;

/// How the load is shaped.
#[derive(Clone, Debug)]
pub struct Load {
    pub bucket: String,
    pub large_size: u64,
    pub large_count: usize,
    pub large_concurrency: usize,
    pub small_size: u64,
    /// The small workloads run once at each of these concurrencies.
    pub concurrency: Vec<usize>,
    pub seconds: u64,
    /// Also run every workload with SSE-S3 (`x-amz-server-side-encryption: AES256`) against
    /// the endpoint, reported as a ratio of the same workload unencrypted.
    pub sse: bool,
}

fn client(endpoint: &str, ak: &str, sk: &str) -> Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(ak, sk, None, None, "cairn-bench"))
        .force_path_style(true)
        .build();
    Client::from_conf(conf)
}

fn body(size: u64, seed: u64) -> Bytes {
    let mut v = vec![0u8; size as usize];
    let mut x = seed | 1;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    Bytes::from(v)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One workload's result.
#[derive(Clone, Debug, Default)]
struct Figure {
    ops: u64,
    bytes: u64,
    secs: f64,
    /// Time to the response head, ms, sorted.
    ttfb: Vec<f64>,
    /// Whole response, ms, sorted.
    whole: Vec<f64>,
    errors: u64,
}

impl Figure {
    fn ops_s(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
    fn gib_s(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / f64::from(1u32 << 30)
    }
    fn json(&self) -> serde_json::Value {
        json!({
            "ops": self.ops, "errors": self.errors, "seconds": self.secs,
            "ops_per_s": self.ops_s(), "gib_per_s": self.gib_s(),
            "ttfb_ms_p50": percentile(&self.ttfb, 0.5), "ttfb_ms_p99": percentile(&self.ttfb, 0.99),
            "whole_ms_p50": percentile(&self.whole, 0.5), "whole_ms_p99": percentile(&self.whole, 0.99),
        })
    }
}

/// A progress line on stderr, rewritten in place.
fn progress(label: &str, done: u64, total: Option<u64>) {
    use std::io::Write;
    let mut e = std::io::stderr();
    let _ = match total {
        Some(t) => write!(e, "\r  {label}: {done}/{t}   "),
        None => write!(e, "\r  {label}: {done} ops   "),
    };
    let _ = e.flush();
}

/// `count` objects of `size` bytes, `conc` at a time; PUT then GET (`sse`: written with
/// SSE-S3, under keys of their own).
async fn large(c: &Client, l: &Load, label: &str, sse: bool) -> anyhow::Result<(Figure, Figure)> {
    let prefix = if sse { "sse-large" } else { "large" };
    let data = body(l.large_size, 42);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..l.large_concurrency {
        let (c, data, next, done, l) = (
            c.clone(),
            data.clone(),
            next.clone(),
            done.clone(),
            l.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= l.large_count as u64 {
                    return Ok::<_, anyhow::Error>(Instant::now());
                }
                c.put_object()
                    .bucket(&l.bucket)
                    .key(format!("{prefix}/{i}"))
                    .set_server_side_encryption(sse.then_some(ServerSideEncryption::Aes256))
                    .body(ByteStream::from(data.clone()))
                    .send()
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let total = l.large_count as u64;
    while tasks.iter().any(|t| !t.is_finished()) {
        progress(
            &format!("{label} large PUT"),
            done.load(Ordering::Relaxed),
            Some(total),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Timed to the last task's own finish, not to the progress loop's 200 ms ticks.
    let mut end = start;
    for t in tasks {
        end = end.max(t.await??);
    }
    let put = Figure {
        ops: total,
        bytes: total * l.large_size,
        secs: (end - start).as_secs_f64(),
        ..Figure::default()
    };
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..l.large_concurrency {
        let (c, next, done, l) = (c.clone(), next.clone(), done.clone(), l.clone());
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= l.large_count as u64 {
                    return Ok::<_, anyhow::Error>((bytes, Instant::now()));
                }
                let mut b = c
                    .get_object()
                    .bucket(&l.bucket)
                    .key(format!("{prefix}/{i}"))
                    .send()
                    .await?
                    .body;
                while let Some(chunk) = b.try_next().await? {
                    bytes += chunk.len() as u64;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while tasks.iter().any(|t| !t.is_finished()) {
        progress(
            &format!("{label} large GET"),
            done.load(Ordering::Relaxed),
            Some(total),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut bytes = 0;
    let mut end = start;
    for t in tasks {
        let (b, done_at) = t.await??;
        bytes += b;
        end = end.max(done_at);
    }
    anyhow::ensure!(
        bytes == total * l.large_size,
        "{label}: GET returned {bytes} bytes, wanted {}",
        total * l.large_size
    );
    let get = Figure {
        ops: total,
        bytes,
        secs: (end - start).as_secs_f64(),
        ..Figure::default()
    };
    eprintln!();
    Ok((put, get))
}

/// Small objects for `seconds` at `conc` requests in flight: PUT (fresh keys), then GET of
/// what was put.
async fn small(
    c: &Client,
    l: &Load,
    conc: usize,
    label: &str,
    sse: bool,
) -> anyhow::Result<(Figure, Figure)> {
    let data = body(l.small_size, 7);
    let prefix = if sse { "sse-small" } else { "small" };
    let run = |get: bool, keys: u64| {
        let (c, data, l) = (c.clone(), data.clone(), l.clone());
        async move {
            let next = Arc::new(AtomicU64::new(0));
            let done = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(l.seconds);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..conc {
                let (c, data, next, done, l) = (
                    c.clone(),
                    data.clone(),
                    next.clone(),
                    done.clone(),
                    l.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut f = Figure::default();
                    while Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let t0 = Instant::now();
                        let ok = if get {
                            let key = format!("{prefix}/c{conc}/{}", i % keys.max(1));
                            match c.get_object().bucket(&l.bucket).key(key).send().await {
                                Ok(r) => {
                                    f.ttfb.push(t0.elapsed().as_secs_f64() * 1e3);
                                    match r.body.collect().await {
                                        Ok(b) => {
                                            f.bytes += b.into_bytes().len() as u64;
                                            true
                                        }
                                        Err(_) => false,
                                    }
                                }
                                Err(_) => false,
                            }
                        } else {
                            c.put_object()
                                .bucket(&l.bucket)
                                .key(format!("{prefix}/c{conc}/{i}"))
                                .set_server_side_encryption(
                                    sse.then_some(ServerSideEncryption::Aes256),
                                )
                                .body(ByteStream::from(data.clone()))
                                .send()
                                .await
                                .is_ok()
                        };
                        if ok {
                            f.whole.push(t0.elapsed().as_secs_f64() * 1e3);
                            f.ops += 1;
                            if !get {
                                f.bytes += l.small_size;
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            f.errors += 1;
                        }
                    }
                    (f, Instant::now())
                }));
            }
            let what = if get { "small GET" } else { "small PUT" };
            let what = format!("{what} at concurrency {conc}");
            while tasks.iter().any(|t| !t.is_finished()) {
                progress(
                    &format!("{label} {what}"),
                    done.load(Ordering::Relaxed),
                    None,
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut all = Figure::default();
            let mut end = start;
            for t in tasks {
                let (f, done_at) = t.await?;
                end = end.max(done_at);
                all.ops += f.ops;
                all.bytes += f.bytes;
                all.errors += f.errors;
                all.ttfb.extend(f.ttfb);
                all.whole.extend(f.whole);
            }
            all.secs = (end - start).as_secs_f64();
            all.ttfb.sort_by(f64::total_cmp);
            all.whole.sort_by(f64::total_cmp);
            eprintln!();
            Ok::<_, anyhow::Error>(all)
        }
    };
    let put = run(false, 0).await?;
    let get = run(true, put.ops).await?;
    Ok((put, get))
}

/// Everything one endpoint did: the large PUT and GET, and a small PUT and GET at each
/// concurrency.
struct Measured {
    large_put: Figure,
    large_get: Figure,
    small: Vec<(usize, Figure, Figure)>,
}

async fn measure(c: &Client, l: &Load, label: &str, sse: bool) -> anyhow::Result<Measured> {
    match c.create_bucket().bucket(&l.bucket).send().await {
        Ok(_) => {}
        Err(e) => {
            use aws_sdk_s3::error::ProvideErrorMetadata;
            if e.code() != Some("BucketAlreadyOwnedByYou")
                && e.code() != Some("BucketAlreadyExists")
            {
                anyhow::bail!(
                    "{label}: create bucket {}: {}",
                    l.bucket,
                    e.message().unwrap_or(&format!("{e:?}"))
                );
            }
        }
    }
    let (large_put, large_get) = large(c, l, label, sse).await?;
    let mut small_figures = Vec::new();
    for &conc in &l.concurrency {
        let (put, get) = small(c, l, conc, label, sse).await?;
        small_figures.push((conc, put, get));
    }
    Ok(Measured {
        large_put,
        large_get,
        small: small_figures,
    })
}

/// Sequential writes of `size` bytes then one fdatasync: GiB/s.
fn raw_disk_write(dir: &std::path::Path, size: u64) -> std::io::Result<f64> {
    use std::io::Write;
    let path = dir.join("cairn-bench-disk-probe");
    let block = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    let mut left = size;
    while left > 0 {
        let n = left.min(1 << 20) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(size as f64 / secs / f64::from(1u32 << 30))
}

/// What any S3 server and this client must compute per byte of a signed single-part PUT, timed
/// on one thread over `size` bytes, as GiB/s for two cores doing nothing else: the server's MD5
/// (the ETag) and SHA-256 (the SigV4 payload hash it verifies) and the client's SHA-256 and
/// CRC32 (its signature and its default checksum) and the server's check of that CRC32. The
/// hashes are s3s's own, which the gateway uses. Storing, copying and moving the bytes come on
/// top, so a large PUT on this machine cannot beat this figure.
fn hashing_floor(size: u64) -> f64 {
    use s3s::crypto::{Checksum, Crc32, Md5, Sha256};
    let block = body(1 << 20, 7);
    let mut md5 = Md5::new();
    let mut sha_server = Sha256::new();
    let mut sha_client = Sha256::new();
    let mut crc_server = Crc32::new();
    let mut crc_client = Crc32::new();
    let start = Instant::now();
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        let b = &block[..n];
        md5.update(b);
        sha_server.update(b);
        sha_client.update(b);
        crc_server.update(b);
        crc_client.update(b);
        left -= n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box((
        md5.finalize(),
        sha_server.finalize(),
        sha_client.finalize(),
        crc_server.finalize(),
        crc_client.finalize(),
    ));
    2.0 * size as f64 / secs / f64::from(1u32 << 30)
}

/// Kill the child on every way out.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(
    endpoint: String,
    ak: String,
    sk: String,
    load: Load,
    dir: Option<PathBuf>,
    as_json: bool,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The null ceiling: this same binary, as a separate process.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let null_addr = listener.local_addr()?;
    drop(listener);
    let _null = Child(
        std::process::Command::new(std::env::current_exe()?)
            .args(["null-server", "--listen", &null_addr.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let null_url = format!("http://{null_addr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(null_addr).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the null server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    eprintln!("endpoint under test: {endpoint}");
    let target = measure(&client(&endpoint, &ak, &sk), &load, "target", false).await?;
    let sse = if load.sse {
        eprintln!("endpoint under test, SSE-S3: {endpoint}");
        Some(measure(&client(&endpoint, &ak, &sk), &load, "target SSE-S3", true).await?)
    } else {
        None
    };
    eprintln!("null ceiling: {null_url}");
    let nul = measure(&client(&null_url, "null", "null"), &load, "null", false).await?;
    let dir = dir.unwrap_or_else(std::env::temp_dir);
    let disk = raw_disk_write(&dir, load.large_size * load.large_count as u64)?;
    let floor = hashing_floor(1 << 30);

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    // (name, endpoint, unit, ceiling, what the ceiling is)
    let mut rows = vec![
        (
            "large PUT".to_owned(),
            target.large_put.gib_s(),
            "GiB/s",
            disk,
            "raw disk write+fsync",
        ),
        (
            "large GET".to_owned(),
            target.large_get.gib_s(),
            "GiB/s",
            nul.large_get.gib_s(),
            "null GET",
        ),
    ];
    for ((conc, put, get), (_, nput, nget)) in target.small.iter().zip(&nul.small) {
        rows.push((
            format!("small PUT c{conc}"),
            put.ops_s(),
            "ops/s",
            nput.ops_s(),
            "null PUT",
        ));
        rows.push((
            format!("small GET c{conc}"),
            get.ops_s(),
            "ops/s",
            nget.ops_s(),
            "null GET",
        ));
    }
    if let Some(e) = &sse {
        rows.push((
            "large PUT SSE".to_owned(),
            e.large_put.gib_s(),
            "GiB/s",
            target.large_put.gib_s(),
            "the same PUT unencrypted",
        ));
        rows.push((
            "large GET SSE".to_owned(),
            e.large_get.gib_s(),
            "GiB/s",
            target.large_get.gib_s(),
            "the same GET unencrypted",
        ));
        for ((conc, put, get), (_, pput, pget)) in e.small.iter().zip(&target.small) {
            rows.push((
                format!("small PUT SSE c{conc}"),
                put.ops_s(),
                "ops/s",
                pput.ops_s(),
                "the same PUT unencrypted",
            ));
            rows.push((
                format!("small GET SSE c{conc}"),
                get.ops_s(),
                "ops/s",
                pget.ops_s(),
                "the same GET unencrypted",
            ));
        }
    }
    let sse_errors = sse.as_ref().map_or(0, |e| {
        e.large_put.errors
            + e.large_get.errors
            + e.small
                .iter()
                .map(|(_, p, g)| p.errors + g.errors)
                .sum::<u64>()
    });
    let errors = sse_errors
        + target.large_put.errors
        + target.large_get.errors
        + target
            .small
            .iter()
            .map(|(_, p, g)| p.errors + g.errors)
            .sum::<u64>();
    if as_json {
        let mut out = serde_json::Map::new();
        out.insert(
            "large PUT".into(),
            json!({"target": target.large_put.json(), "null": nul.large_put.json()}),
        );
        out.insert(
            "large GET".into(),
            json!({"target": target.large_get.json(), "null": nul.large_get.json()}),
        );
        out.insert(
            "small".into(),
            json!(
                target
                    .small
                    .iter()
                    .zip(&nul.small)
                    .map(|((conc, put, get), (_, nput, nget))| json!({
                        "concurrency": conc,
                        "PUT": {"target": put.json(), "null": nput.json()},
                        "GET": {"target": get.json(), "null": nget.json()},
                    }))
                    .collect::<Vec<_>>()
            ),
        );
        if let Some(e) = &sse {
            out.insert(
                "sse_s3".into(),
                json!({
                    "large PUT": e.large_put.json(),
                    "large GET": e.large_get.json(),
                    "small": e.small.iter().map(|(conc, put, get)| json!({
                        "concurrency": conc, "PUT": put.json(), "GET": get.json(),
                    })).collect::<Vec<_>>(),
                }),
            );
        }
        out.insert("raw_disk_write_gib_per_s".into(), json!(disk));
        out.insert("hashing_floor_gib_per_s".into(), json!(floor));
        out.insert("errors".into(), json!(errors));
        out.insert(
            "ratios".into(),
            json!(
                rows.iter()
                    .map(|r| (r.0.clone(), ratio(r.1, r.3)))
                    .collect::<HashMap<_, _>>()
            ),
        );
        out.insert(
            "load".into(),
            json!({"large_size": load.large_size, "large_count": load.large_count, "large_concurrency": load.large_concurrency,
                   "small_size": load.small_size, "concurrency": load.concurrency, "seconds": load.seconds}),
        );
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    println!(
        "S3 load: {} x {} MiB (concurrency {}), {} B objects for {} s at each concurrency of {:?}",
        load.large_count,
        load.large_size >> 20,
        load.large_concurrency,
        load.small_size,
        load.seconds,
        load.concurrency
    );
    println!(
        "{:<20} {:>12} {:>14} {:>7}   ceiling",
        "workload", "endpoint", "ceiling", "ratio"
    );
    for (n, v, unit, c, what) in &rows {
        println!(
            "{n:<20} {v:>8.2} {unit:<5} {c:>8.2} {unit:<5} {:>6.1}%   {what}",
            100.0 * ratio(*v, *c)
        );
    }
    println!(
        "large PUT beside the other limits of this machine: null PUT {:.2} GiB/s ({:.1}%), S3 hashing alone on both cores {floor:.2} GiB/s ({:.1}%: MD5 + SHA-256 + CRC32 on the server, SHA-256 + CRC32 on the client)",
        nul.large_put.gib_s(),
        100.0 * ratio(target.large_put.gib_s(), nul.large_put.gib_s()),
        100.0 * ratio(target.large_put.gib_s(), floor),
    );
    for ((conc, put, get), (_, _, nget)) in target.small.iter().zip(&nul.small) {
        println!(
            "concurrency {conc}: small GET whole p50 {:.2} ms p99 {:.2} ms, TTFB p50 {:.2} ms (null: whole p50 {:.2} ms p99 {:.2} ms); small PUT whole p50 {:.2} ms p99 {:.2} ms",
            percentile(&get.whole, 0.5),
            percentile(&get.whole, 0.99),
            percentile(&get.ttfb, 0.5),
            percentile(&nget.whole, 0.5),
            percentile(&nget.whole, 0.99),
            percentile(&put.whole, 0.5),
            percentile(&put.whole, 0.99),
        );
    }
    println!("errors: {errors}");
    Ok(())
}

/// The null endpoint: PUT bodies are read and dropped (their sizes remembered), GETs answer
/// with that many bytes, in one piece when small. No signatures are checked and nothing is
/// stored: it is the ceiling of the client, not a server.
pub async fn null_server(listen: SocketAddr) -> anyhow::Result<()> {
    use axum::body::Body;
    use axum::extract::{Request, State};
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};

    type Sizes = Arc<parking_lot::Mutex<HashMap<String, u64>>>;
    static ZEROES: [u8; 1 << 20] = [0u8; 1 << 20];

    async fn handle(State(sizes): State<Sizes>, req: Request) -> Response {
        let path = req.uri().path().to_owned();
        let etag = [(header::ETAG, "\"00000000000000000000000000000000\"")];
        match *req.method() {
            axum::http::Method::PUT => {
                let mut body = req.into_body().into_data_stream();
                let mut n = 0u64;
                use futures::StreamExt;
                while let Some(Ok(b)) = body.next().await {
                    n += b.len() as u64;
                }
                sizes.lock().insert(path, n);
                (StatusCode::OK, etag).into_response()
            }
            axum::http::Method::GET | axum::http::Method::HEAD => {
                let Some(n) = sizes.lock().get(&path).copied() else {
                    return (StatusCode::NOT_FOUND, "").into_response();
                };
                if n <= ZEROES.len() as u64 {
                    let b = Bytes::from_static(&ZEROES[..n as usize]);
                    return (StatusCode::OK, etag, b).into_response();
                }
                let chunks = (0..n.div_ceil(ZEROES.len() as u64)).map(move |i| {
                    let len = (n - i * ZEROES.len() as u64).min(ZEROES.len() as u64) as usize;
                    Ok::<_, std::io::Error>(Bytes::from_static(&ZEROES[..len]))
                });
                let mut resp = Response::new(Body::from_stream(futures::stream::iter(chunks)));
                resp.headers_mut().insert(header::CONTENT_LENGTH, n.into());
                resp.headers_mut().insert(
                    header::ETAG,
                    header::HeaderValue::from_static("\"00000000000000000000000000000000\""),
                );
                resp
            }
            _ => (StatusCode::OK, etag).into_response(),
        }
    }

    let sizes: Sizes = Arc::default();
    let app = axum::Router::new().fallback(handle).with_state(sizes);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|t| {
        let _ = t.set_nodelay(true);
    });
    eprintln!("null S3 endpoint on http://{}", listen);
    axum::serve(listener, app).await?;
    Ok(())
}
