//! End-to-end data plane: one `cairn master` process and four `cairn chunkserver` processes on
//! loopback, driven by the real data client over mutual-TLS QUIC.
//!
//! Objects of awkward sizes are written with R=3 and read back BLAKE3-checked; a chunkserver is
//! killed with SIGKILL (reads go on, its chunks are re-replicated) and restarted (its surplus
//! replicas are removed); replicas are corrupted on disk (the read path and the scrubber find
//! them, they are replaced); deleted objects and abandoned writes are reclaimed after the grace
//! period (10 s here); the master is killed in the middle of a write (the object is complete or absent).
//!
//! Waits are liveness bounds; the times they took are printed, never asserted.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_client::{DataClient, DataError, MasterClient, Written};
use cairn_engine::state::TypedService;
use cairn_master::buckets::{
    BucketCommand, BucketQuery, BucketQueryResponse, BucketResponse, BucketService, Conditions,
    Content, ObjectData, ObjectMeta,
};
use cairn_proto::dataplane::{DataStatus, LocateRpc, Location};
use cairn_proto::{ChunkHandle, Consistency, NodeIdentity, TransportOptions};
use cairn_tests::{CairnProcess, run};

const BIN: &str = env!("CARGO_BIN_EXE_cairn");
const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;
/// Liveness bound for convergence waits.
const CONVERGE: Duration = Duration::from_secs(90);

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn cairn(args: &[&str], cwd: &Path) {
    let (status, out, err) = run(Path::new(BIN), args, &[], cwd).unwrap();
    assert!(status.success(), "cairn {args:?}: {out} {err}");
}

/// Deterministic incompressible bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

struct Cluster {
    root: PathBuf,
    master_addr: SocketAddr,
    master: CairnProcess,
    servers: BTreeMap<usize, (PathBuf, SocketAddr, Option<CairnProcess>)>,
}

impl Cluster {
    fn start_master(root: &Path, addr: SocketAddr) -> CairnProcess {
        let data = root.join("master");
        let mut p = CairnProcess::start(
            Path::new(BIN),
            &[
                "master",
                "--id",
                "1",
                "--listen",
                &addr.to_string(),
                "--data",
                data.to_str().unwrap(),
                "--replication",
                "3",
                "--dead-after-ms",
                "2000",
                "--gc-grace-ms",
                "10000",
            ],
            &[("CAIRN_MASTER_TICK_MS", "250")],
            root,
        )
        .unwrap();
        p.wait_for_line("master listening on quic://").unwrap();
        p
    }

    fn start_server(&mut self, i: usize) {
        let (data, addr, proc_slot) = self.servers.get_mut(&i).unwrap();
        let mut p = CairnProcess::start(
            Path::new(BIN),
            &[
                "chunkserver",
                "--master",
                &self.master_addr.to_string(),
                "--listen",
                &addr.to_string(),
                "--data",
                data.to_str().unwrap(),
                "--heartbeat-ms",
                "300",
                "--scrub-rate",
                "64MiB",
            ],
            &[],
            &self.root,
        )
        .unwrap();
        p.wait_for_line("chunkserver listening").unwrap();
        *proc_slot = Some(p);
    }

    /// Handles of the chunk files on server `i` (the store shards them by the handle's low byte).
    fn chunk_files(&self, i: usize) -> BTreeSet<u64> {
        let dir = self.servers[&i].0.join("chunks");
        let mut out = BTreeSet::new();
        for shard in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().into_string().unwrap_or_default();
                if let Some(h) = name
                    .strip_suffix(".chunk")
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                {
                    out.insert(h);
                }
            }
        }
        out
    }

    fn chunk_path(&self, i: usize, h: ChunkHandle) -> PathBuf {
        self.servers[&i]
            .0
            .join("chunks")
            .join(format!("{:02x}", h.0 & 0xff))
            .join(format!("{h}.chunk"))
    }

    /// Every WARN and ERROR line the processes logged.
    fn warnings(&self) -> String {
        let mut out = String::new();
        let procs = std::iter::once(("master".to_string(), Some(&self.master))).chain(
            self.servers
                .iter()
                .map(|(i, (_, _, p))| (format!("cs{i}"), p.as_ref())),
        );
        for (name, p) in procs {
            for line in p.map(|p| p.log()).unwrap_or_default().lines() {
                if line.contains(" WARN ") || line.contains(" ERROR ") {
                    out.push_str(&format!("{name}: {line}\n"));
                }
            }
        }
        out
    }

    fn server_with_addr(&self, addr: &str) -> usize {
        *self
            .servers
            .iter()
            .find(|(_, (_, a, _))| a.to_string() == addr)
            .unwrap()
            .0
    }
}

async fn status(client: &DataClient) -> DataStatus {
    client.status().await.unwrap()
}

/// Wait until `done` holds for the data-plane status; returns how long it took. On failure the
/// warnings of every process are shown.
async fn converge(
    client: &DataClient,
    cluster: &Cluster,
    what: &str,
    mut done: impl FnMut(&DataStatus) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let s = status(client).await;
        if done(&s) {
            return start.elapsed();
        }
        if start.elapsed() > CONVERGE {
            panic!(
                "{what}: not reached; status {s:#?}\nwarnings:\n{}",
                cluster.warnings()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The bucket every object of these tests lives in.
const BUCKET: &str = "data-plane";

/// A bucket-service command, committed (a refusal fails the test).
async fn bucket_command(client: &DataClient, cmd: &BucketCommand) -> BucketResponse {
    let outcome = client
        .master()
        .propose_typed::<BucketService>(cmd)
        .await
        .unwrap();
    BucketService::response(&outcome.unwrap()).unwrap()
}

async fn create_bucket(client: &DataClient) {
    let cmd = BucketCommand::CreateBucket {
        name: BUCKET.into(),
        owner: "data-plane-test".into(),
        public_read: false,
    };
    assert_eq!(bucket_command(client, &cmd).await, BucketResponse::Done);
}

/// Write `source` through chains, then commit it as `key`'s version, as the S3 gateway does.
async fn put_object(
    client: &DataClient,
    key: &str,
    source: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Written, DataError> {
    let written = client.put(source).await?;
    let cmd = BucketCommand::PutObject {
        bucket: BUCKET.into(),
        key: key.to_owned(),
        data: ObjectData {
            size: written.size,
            etag: format!("{:016x}", written.size),
            parts: Vec::new(),
            content: Content::Chunks(written.extents.clone()),
            meta: ObjectMeta::default(),
            tags: Vec::new(),
        },
        conditions: Conditions::default(),
    };
    let outcome = client.master().propose_typed::<BucketService>(&cmd).await?;
    outcome.map_err(DataError::Rejected)?;
    Ok(written)
}

/// Delete `key`; whether it existed.
async fn delete_object(client: &DataClient, key: &str) -> bool {
    let existed = stat(client, key).await.is_some();
    let cmd = BucketCommand::DeleteObject {
        bucket: BUCKET.into(),
        key: key.to_owned(),
        version: None,
    };
    match bucket_command(client, &cmd).await {
        BucketResponse::Deleted { marker: false, .. } => existed,
        other => panic!("unexpected response {other:?}"),
    }
}

/// An object's size and extents (linearizable).
async fn stat(client: &DataClient, key: &str) -> Option<Written> {
    let q = BucketService::encode_query(&BucketQuery::Object {
        bucket: BUCKET.into(),
        key: key.to_owned(),
        version: None,
    })
    .unwrap();
    let bytes = client
        .master()
        .query(BucketService::ID, q, Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    let version = match BucketService::query_response(&bytes).unwrap() {
        BucketQueryResponse::Object(Some(v)) => v?,
        other => panic!("unexpected response {other:?}"),
    };
    let data = version.data()?;
    let extents = match &data.content {
        Content::Chunks(e) => e.clone(),
        Content::Inline(_) | Content::Encrypted(_) => panic!("the data plane tests store chunks"),
    };
    Some(Written {
        size: data.size,
        extents,
    })
}

async fn put(client: &DataClient, key: &str, bytes: &[u8]) -> Written {
    let mut src = bytes;
    put_object(client, key, &mut src).await.unwrap()
}

async fn get(client: &DataClient, key: &str) -> Vec<u8> {
    let record = stat(client, key).await.unwrap();
    let mut out = Vec::new();
    client
        .read(&record.extents, 0, record.size, &mut out)
        .await
        .unwrap();
    out
}

fn live_replicas(s: &DataStatus) -> u64 {
    s.servers.iter().filter(|s| s.alive).map(|s| s.chunks).sum()
}

struct Setup {
    cluster: Cluster,
    master_addr: SocketAddr,
    master_client: MasterClient,
    endpoint: cairn_proto::Endpoint,
    client: DataClient,
    client_tls: PathBuf,
}

/// One master and four chunkservers under `root`, a client certificate, and a data client
/// once all four have reported.
async fn four_servers(root: &Path) -> Setup {
    let root = root.to_path_buf();
    let master_addr = free_udp();
    let master = Cluster::start_master(&root, master_addr);
    let master_data = root.join("master");
    let md = master_data.to_str().unwrap();
    let mut cluster = Cluster {
        root: root.clone(),
        master_addr,
        master,
        servers: BTreeMap::new(),
    };
    for i in 1..=4 {
        let data = root.join(format!("cs{i}"));
        let tls = data.join("tls");
        cairn(
            &[
                "cluster",
                "issue-cert",
                "--data",
                md,
                "--name",
                &format!("cs-{i}"),
                "--out",
                tls.to_str().unwrap(),
            ],
            &root,
        );
        cluster.servers.insert(i, (data, free_udp(), None));
        cluster.start_server(i);
    }
    let client_tls = root.join("client-tls");
    cairn(
        &[
            "cluster",
            "issue-cert",
            "--data",
            md,
            "--name",
            "client",
            "--out",
            client_tls.to_str().unwrap(),
        ],
        &root,
    );
    let identity = NodeIdentity::load(&client_tls).unwrap();
    let endpoint = cairn_proto::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &TransportOptions::default(),
    )
    .unwrap();
    let mut master_client = MasterClient::new(endpoint.clone(), vec![master_addr]);
    master_client.set_patience(Duration::from_secs(30));
    let client = DataClient::new(master_client.clone(), endpoint.clone());

    converge(&client, &cluster, "four chunkservers alive", |s| {
        s.servers.iter().filter(|s| s.alive).count() == 4
    })
    .await;
    create_bucket(&client).await;

    Setup {
        cluster,
        master_addr,
        master_client,
        endpoint,
        client,
        client_tls,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunkservers_store_heal_scrub_and_collect() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let Setup {
        mut cluster,
        master_addr,
        master_client,
        endpoint,
        client,
        client_tls,
    } = four_servers(&root).await;

    // `cairn admin status` lists the chunkservers and their capacity.
    let m = master_addr.to_string();
    let tls = client_tls.to_str().unwrap();
    let (ok, out, err) = run(
        Path::new(BIN),
        &["admin", "status", "--master", &m, "--tls", tls, "--json"],
        &[],
        &root,
    )
    .unwrap();
    assert!(ok.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let servers = v["data"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 4, "{v:#}");
    assert!(
        servers
            .iter()
            .all(|s| s["alive"] == true && s["info"]["capacity"].as_u64() > Some(0))
    );
    assert_eq!(v["data"]["under_replicated"], 0);
    let (ok, table, err) = run(
        Path::new(BIN),
        &["admin", "status", "--master", &m, "--tls", tls],
        &[],
        &root,
    )
    .unwrap();
    assert!(
        ok.success() && table.contains("chunkservers: 4 alive of 4"),
        "{table}{err}"
    );
    println!("{table}");

    // The four chunkservers share one disk: the objects below take 3 x 392 MiB, and a fourth
    // copy of a killed node's chunks is made while its own files stay. Say so plainly rather
    // than fail later on a "No space left on device" deep in a replication chain.
    let needed = 1700 * MIB as u64;
    let free = servers[0]["info"]["free"].as_u64().unwrap_or(0);
    assert!(
        free >= needed,
        "this test stores about {} MiB on the disk of {}, which has only {} MiB free",
        needed / MIB as u64,
        root.display(),
        free / MIB as u64
    );

    // Awkward sizes around the block (64 KiB) and chunk (64 MiB) boundaries.
    let sizes = [
        0,
        1,
        64 * KIB - 1,
        64 * KIB,
        64 * KIB + 1,
        64 * MIB - 1,
        64 * MIB,
        64 * MIB + 1,
        200 * MIB,
    ];
    let mut objects: BTreeMap<String, (Vec<u8>, Written)> = BTreeMap::new();
    for (i, &size) in sizes.iter().enumerate() {
        let key = format!("obj-{size}");
        let bytes = data(size, i as u64 + 1);
        let t = Instant::now();
        let written = put(&client, &key, &bytes).await;
        println!("put {size} bytes in {:?}", t.elapsed());
        assert_eq!(written.size, size as u64);
        assert_eq!(written.extents.len(), size.div_ceil(64 * MIB));
        objects.insert(key, (bytes, written));
    }
    let check_all = |client: DataClient, objects: BTreeMap<String, (Vec<u8>, Written)>| async move {
        for (key, (bytes, _)) in &objects {
            let back = get(&client, key).await;
            assert_eq!(back.len(), bytes.len(), "{key}");
            assert!(
                blake3::hash(&back) == blake3::hash(bytes),
                "{key}: content differs"
            );
        }
    };
    check_all(client.clone(), objects.clone()).await;
    // A range across the chunk boundary of the 200 MiB object.
    let big = &objects["obj-209715200"];
    let mut out = Vec::new();
    let (off, len) = (64 * MIB as u64 - 10, 20);
    client
        .read(&big.1.extents, off, len, &mut out)
        .await
        .unwrap();
    assert_eq!(out, big.0[off as usize..(off + len) as usize]);
    let live_chunks: u64 = objects.values().map(|(_, w)| w.extents.len() as u64).sum();
    converge(&client, &cluster, "every chunk on three servers", |s| {
        live_replicas(s) == 3 * live_chunks && s.under_replicated == 0
    })
    .await;

    // --- kill -9 a chunkserver holding part of the big object.
    let loc: Vec<Location> = master_client
        .call_leader::<LocateRpc, _>(&big.1.extents.iter().map(|e| e.handle).collect())
        .await
        .unwrap();
    let victim = cluster.server_with_addr(&loc[0].replicas[0].1);
    let before = cluster.chunk_files(victim);
    assert!(!before.is_empty());
    cluster
        .servers
        .get_mut(&victim)
        .unwrap()
        .2
        .as_mut()
        .unwrap()
        .kill()
        .unwrap();
    let killed = Instant::now();
    // Reads never fail meanwhile.
    check_all(client.clone(), objects.clone()).await;
    converge(&client, &cluster, "the killed server declared dead", |s| {
        s.servers.iter().filter(|s| s.alive).count() == 3
    })
    .await;
    converge(&client, &cluster, "re-replication after a kill", |s| {
        s.under_replicated == 0
            && s.lost == 0
            && s.copies_in_flight == 0
            && live_replicas(s) == 3 * live_chunks
    })
    .await;
    println!(
        "chunks back to 3 live replicas {:?} after the kill",
        killed.elapsed()
    );
    // The repair is in the leader's progress report: the killed server's replicas were copied
    // (each chunk it held, once), and nothing is left.
    let repair = client.repair().await.unwrap();
    println!("repair progress: {repair:?}");
    assert_eq!(repair.remaining_replicas, 0, "{repair:?}");
    assert_eq!(repair.remaining_bytes, 0, "{repair:?}");
    assert_eq!(repair.eta_secs, None, "{repair:?}");
    let lost_replicas = objects
        .values()
        .flat_map(|(_, w)| &w.extents)
        .filter(|e| before.contains(&e.handle.0))
        .count() as u64;
    assert!(
        lost_replicas > 0 && repair.copied_replicas >= lost_replicas && repair.copied_bytes > 0,
        "{lost_replicas} live replicas were on the killed server: {repair:?}"
    );
    check_all(client.clone(), objects.clone()).await;

    // --- restart it: its replicas are now surplus and are removed.
    cluster.start_server(victim);
    let t = Instant::now();
    converge(
        &client,
        &cluster,
        "surplus replicas removed after the restart",
        |s| {
            s.servers.iter().filter(|s| s.alive).count() == 4
                && live_replicas(s) == 3 * live_chunks
                && s.deletes_queued == 0
        },
    )
    .await;
    println!(
        "surplus replicas removed {:?} after the restart",
        t.elapsed()
    );

    // Let rebalancing settle first, so nothing but the scrubber reads the next replica.
    let mut calm = 0;
    converge(&client, &cluster, "a quiet cluster", |s| {
        if s.copies_in_flight == 0 && s.deletes_queued == 0 && s.under_replicated == 0 {
            calm += 1;
        } else {
            calm = 0;
        }
        calm >= 8
    })
    .await;
    // --- corruption found by the scrubber: a replica nobody reads.
    let mid = &objects["obj-65535"];
    let h2 = mid.1.extents[0].handle;
    let loc: Vec<Location> = master_client
        .call_leader::<LocateRpc, _>(&vec![h2])
        .await
        .unwrap();
    let other = cluster.server_with_addr(&loc[0].replicas.last().unwrap().1);
    flip(&cluster.chunk_path(other, h2), 8192 + 7);
    let p = cluster.servers[&other].2.as_ref().unwrap();
    assert!(
        wait_log(p, "scrubber found a corrupt block").await,
        "{}",
        p.log()
    );
    // --- corruption found by the read path: flip a byte in the first replica a reader tries.
    let small = &objects["obj-65537"];
    let h = small.1.extents[0].handle;
    let loc: Vec<Location> = master_client
        .call_leader::<LocateRpc, _>(&vec![h])
        .await
        .unwrap();
    let first = cluster.server_with_addr(&loc[0].replicas[0].1);
    flip(&cluster.chunk_path(first, h), 8192 + 100);
    // A fresh client: no replica is suspect, so it tries the master's order.
    let fresh = DataClient::new(master_client.clone(), endpoint.clone());
    assert_eq!(
        get(&fresh, "obj-65537").await,
        small.0,
        "a corrupt replica was served"
    );
    let p = cluster.servers[&first].2.as_ref().unwrap();
    assert!(
        wait_log(p, "corrupt block found while reading").await,
        "{}",
        p.log()
    );
    let t = Instant::now();
    // Both bad replicas are deleted, and each chunk is back on three servers.
    loop {
        let holders = |h: ChunkHandle| {
            (1..=4)
                .filter(|i| cluster.chunk_files(*i).contains(&h.0))
                .count()
        };
        if holders(h) == 3 && holders(h2) == 3 {
            break;
        }
        assert!(
            t.elapsed() < CONVERGE,
            "corrupt replicas not replaced: {h} on {:?}, {h2} on {:?} (bad ones were on {first} and {other}); warnings:\n{}",
            (1..=4)
                .filter(|i| cluster.chunk_files(*i).contains(&h.0))
                .collect::<Vec<_>>(),
            (1..=4)
                .filter(|i| cluster.chunk_files(*i).contains(&h2.0))
                .collect::<Vec<_>>(),
            cluster.warnings()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    converge(&client, &cluster, "corrupt replicas replaced", |s| {
        s.under_replicated == 0 && s.copies_in_flight == 0 && live_replicas(s) == 3 * live_chunks
    })
    .await;
    println!("corrupt replicas replaced in {:?}", t.elapsed());
    // Every replica now holds the right bytes where the flips were.
    for (hh, at, obj) in [(h, 100u64, &small.0), (h2, 7, &mid.0)] {
        for i in (1..=4).filter(|i| cluster.chunk_files(*i).contains(&hh.0)) {
            let mut b = [0u8; 1];
            use std::os::unix::fs::FileExt;
            std::fs::File::open(cluster.chunk_path(i, hh))
                .unwrap()
                .read_exact_at(&mut b, 8192 + at)
                .unwrap();
            assert_eq!(
                b[0], obj[at as usize],
                "chunk {hh} on server {i} is still corrupt"
            );
        }
    }
    check_all(client.clone(), objects.clone()).await;

    // --- garbage: a deleted object's chunks and an abandoned write's chunks are reclaimed.
    let gone: Vec<u64> = objects["obj-67108865"]
        .1
        .extents
        .iter()
        .map(|e| e.handle.0)
        .collect();
    assert!(delete_object(&client, "obj-67108865").await);
    objects.remove("obj-67108865");
    let abandoned = {
        let bytes = data(3 * MIB, 99);
        let mut src = bytes.as_slice();
        client.put(&mut src).await.unwrap()
    };
    let abandoned: Vec<u64> = abandoned.extents.iter().map(|e| e.handle.0).collect();
    let t = Instant::now();
    loop {
        let held: BTreeSet<u64> = (1..=4).flat_map(|i| cluster.chunk_files(i)).collect();
        if gone.iter().chain(&abandoned).all(|h| !held.contains(h)) {
            break;
        }
        assert!(t.elapsed() < CONVERGE, "garbage not reclaimed: {held:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "garbage reclaimed {:?} after the delete (grace 10 s)",
        t.elapsed()
    );
    check_all(client.clone(), objects.clone()).await;

    // --- the master is killed in the middle of a write: the object is complete or absent.
    let bytes = data(100 * MIB, 7);
    let writer = {
        let client = client.clone();
        let bytes = bytes.clone();
        tokio::spawn(async move {
            let mut src = bytes.as_slice();
            put_object(&client, "mid-failover", &mut src).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.master.kill().unwrap();
    cluster.master = Cluster::start_master(&root, master_addr);
    let result = writer.await.unwrap();
    println!(
        "write across a master restart: {:?}",
        result.as_ref().map(|w| w.size)
    );
    match stat(&client, "mid-failover").await {
        Some(record) => {
            assert_eq!(record.size, bytes.len() as u64);
            assert_eq!(get(&client, "mid-failover").await, bytes);
        }
        None => assert!(result.is_err(), "acknowledged but absent"),
    }
    check_all(client.clone(), objects.clone()).await;
}

fn flip(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0xFF;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}

async fn wait_log(p: &CairnProcess, needle: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < CONVERGE {
        if p.log().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// `cairn admin drain` moves every chunk off a chunkserver (reads go on, nothing new lands on
/// it), `decommission` refuses until it is empty and then retires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_chunkserver_gives_up_its_chunks_and_is_decommissioned() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let Setup {
        cluster,
        master_addr,
        master_client,
        client,
        client_tls,
        ..
    } = four_servers(&root).await;
    // With R = 3 on 4 servers, most servers hold most chunks.
    let mut objects = Vec::new();
    for i in 0..6u64 {
        let bytes = data(3 * MIB + i as usize * 1000, 100 + i);
        put(&client, &format!("obj-{i}"), &bytes).await;
        objects.push(bytes);
    }
    let s = status(&client).await;
    let victim = s.servers.iter().max_by_key(|s| s.chunks).unwrap().info.id;
    assert!(
        s.servers
            .iter()
            .find(|s| s.info.id == victim)
            .unwrap()
            .chunks
            > 0
    );
    let victim_hex = format!("{victim:016x}");
    let (m, tls) = (
        master_addr.to_string(),
        client_tls.to_str().unwrap().to_owned(),
    );
    let admin = |args: &[&str]| {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--master", &m, "--tls", &tls]);
        let (st, out, err) = run(Path::new(BIN), &all, &[], &root).unwrap();
        (st.success(), format!("{out}{err}"))
    };

    // Not drained yet: decommission is refused; unknown ids and bad ids too.
    let (ok, said) = admin(&["decommission", &victim_hex]);
    assert!(!ok && said.contains("not draining"), "{said}");
    let (ok, said) = admin(&["drain", "00000000000000ff"]);
    assert!(!ok && said.contains("no chunkserver"), "{said}");
    let (ok, said) = admin(&["drain", "not-hex"]);
    assert!(!ok && said.contains("not a chunkserver id"), "{said}");

    let (ok, said) = admin(&["drain", &victim_hex]);
    assert!(ok, "{said}");
    let (ok, said) = admin(&["decommission", &victim_hex]);
    assert!(!ok, "refused while it still holds chunks: {said}");
    // Within a planner tick the leader knows; from then on new objects never land on it.
    converge(&client, &cluster, "drain seen", |s| {
        s.servers.iter().any(|x| x.info.id == victim && x.draining)
    })
    .await;
    let fresh = data(2 * MIB, 999);
    let w = put(&client, "fresh", &fresh).await;
    let locs = master_client
        .call_leader::<LocateRpc, _>(&w.extents.iter().map(|e| e.handle).collect::<Vec<_>>())
        .await
        .unwrap();
    let on_victim = |l: &Location| l.replicas.iter().any(|(sid, _)| *sid == victim);
    assert!(!locs.iter().any(on_victim), "{locs:?}");
    let took = converge(&client, &cluster, "drained", |s| {
        let v = s.servers.iter().find(|x| x.info.id == victim).unwrap();
        v.draining
            && v.chunks == 0
            && s.under_replicated == 0
            && s.copies_in_flight == 0
            && s.servers
                .iter()
                .filter(|x| x.info.id != victim)
                .map(|x| x.chunks)
                .sum::<u64>()
                >= 3 * 7
    })
    .await;
    eprintln!("drained in {took:?}");
    for (i, bytes) in objects.iter().enumerate() {
        assert_eq!(&get(&client, &format!("obj-{i}")).await, bytes);
    }
    let (ok, table) = admin(&["status"]);
    assert!(table.contains("drained"), "{ok} {table}");
    let (ok, said) = admin(&["decommission", &victim_hex]);
    assert!(ok, "{said}");
    assert!(said.contains("retired"), "{said}");
    // Zones set by the operator show (and count for placement); rebalancing pauses and resumes.
    let other = status(&client)
        .await
        .servers
        .iter()
        .find(|s| s.info.id != victim)
        .unwrap()
        .info
        .id;
    let other_hex = format!("{other:016x}");
    let (ok, said) = admin(&["set-zone", &other_hex, "rack-7"]);
    assert!(ok, "{said}");
    let zone_of = |v: &serde_json::Value| {
        v["data"]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["info"]["id"] == other)
            .map(|s| s["info"]["zone"].clone())
            .unwrap()
    };
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (_, out) = admin(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if zone_of(&v) == "rack-7" {
            break;
        }
        assert!(Instant::now() < deadline, "zone never shown: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, said) = admin(&["set-zone", &other_hex, "bad zone!"]);
    assert!(!ok && said.contains("not a zone name"), "{said}");
    let (ok, said) = admin(&["set-zone", &other_hex, "--clear"]);
    assert!(ok, "{said}");
    for flag in ["--pause", "--resume"] {
        let (ok, said) = admin(&["rebalance", flag]);
        assert!(ok, "{said}");
    }
    let (ok, _) = admin(&["rebalance"]);
    assert!(!ok, "say which");

    // Its chunk files are gone from disk once the deletions ran.
    let idx = cluster.server_with_addr(
        &status(&client)
            .await
            .servers
            .iter()
            .find(|s| s.info.id == victim)
            .unwrap()
            .info
            .addr,
    );
    let deadline = Instant::now() + CONVERGE;
    while !cluster.chunk_files(idx).is_empty() {
        assert!(
            Instant::now() < deadline,
            "chunk files left on the drained server"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
