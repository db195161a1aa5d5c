//! `cairn-bench data`: the data plane against the machine's own limits, in one run.

use std::io::{Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cairn_chunkserver::{Chunkserver, ChunkserverOptions};
use cairn_client::{DataClient, MasterClient};
use cairn_master::DataOptions;
use cairn_proto::{ClusterCa, TransportOptions};
use cairn_raft::RaftOptions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

const MIB: usize = 1 << 20;

/// An endless source of incompressible bytes (a 4 MiB random block, each MiB of it stamped with
/// a counter) that holds no more than that block in memory.
struct Source {
    block: Vec<u8>,
    left: u64,
    at: usize,
    counter: u64,
}

impl Source {
    fn new(len: u64) -> Source {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let block = (0..4 * MIB)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Source {
            block,
            left: len,
            at: 0,
            counter: 0,
        }
    }
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64)
            .min(self.left)
            .min((self.block.len() - self.at) as u64) as usize;
        if n > 0 {
            let at = self.at;
            if at.is_multiple_of(MIB) {
                self.counter += 1;
                let c = self.counter.to_le_bytes();
                self.block[at..at + 8].copy_from_slice(&c);
            }
            buf.put_slice(&self.block[at..at + n]);
            self.at = (at + n) % self.block.len();
            self.left -= n as u64;
        }
        Poll::Ready(Ok(()))
    }
}

fn gib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / f64::from(1u32 << 30)
}

/// Sequential 1 MiB writes then one fdatasync; then reading the file back.
fn raw_disk(dir: &Path, size: u64) -> std::io::Result<(f64, f64)> {
    let path = dir.join("raw-disk-probe");
    let block = vec![0x5au8; MIB];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_data()?;
    let write = gib_s(size, start.elapsed());
    drop(f);
    let start = Instant::now();
    let mut f = std::fs::File::open(&path)?;
    let mut buf = vec![0u8; MIB];
    while f.read(&mut buf)? > 0 {}
    let read = gib_s(size, start.elapsed());
    std::fs::remove_file(&path)?;
    Ok((write, read))
}

/// `size` bytes over one loopback TCP connection in 1 MiB writes.
async fn raw_tcp(size: u64) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; MIB];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok::<_, std::io::Error>(got)
    });
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let block = vec![0xa5u8; MIB];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB as u64) as usize;
        s.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    drop(s);
    let got = receiver.await??;
    anyhow::ensure!(got == size, "TCP probe moved {got} of {size} bytes");
    Ok(gib_s(size, start.elapsed()))
}

/// `size` bytes over one stream between two Cairn QUIC endpoints (mutual TLS, Cairn's transport
/// settings) on loopback: the most the data plane's encrypted transport moves on this machine,
/// with no disk and no checksums. Every data-plane byte crosses at least one such stream.
async fn raw_quic(root: &Path, size: u64) -> anyhow::Result<f64> {
    let ca = ClusterCa::create(&root.join("quic-ca"))?;
    let options = TransportOptions::default();
    let local: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let server = cairn_proto::endpoint(local, &ca.issue("receiver", &[])?, &options)?;
    let addr = server.local_addr()?;
    let receiver = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .ok_or_else(|| anyhow::anyhow!("QUIC probe: no connection"))?
            .await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut got = 0u64;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            got += chunk.bytes.len() as u64;
        }
        send.write_all(&[1]).await?;
        send.finish()?;
        let _ = send.stopped().await;
        Ok::<_, anyhow::Error>(got)
    });
    let client = cairn_proto::endpoint(local, &ca.issue("sender", &[])?, &options)?;
    let conn = client
        .connect(addr, cairn_proto::tls::CLUSTER_SERVER_NAME)?
        .await?;
    let block = bytes::Bytes::from(vec![0xa5u8; MIB]);
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB as u64) as usize;
        send.write_chunk(block.slice(..n)).await?;
        left -= n as u64;
    }
    send.finish()?;
    let mut ack = [0u8; 1];
    recv.read_exact(&mut ack).await?;
    let elapsed = start.elapsed();
    let got = receiver.await??;
    anyhow::ensure!(got == size, "QUIC probe moved {got} of {size} bytes");
    conn.close(0u32.into(), b"done");
    Ok(gib_s(size, elapsed))
}

/// Wait until the master leader sees `n` chunkservers alive (at most 60 s).
async fn wait_alive(client: &DataClient, n: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(s) = client.status().await
            && s.servers.iter().filter(|s| s.alive).count() == n
        {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "{n} chunkservers never reported alive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Anonymous resident memory (heap, buffers) in MiB. Mapped chunk files (sealed chunks are read
/// through mmap) are page cache the kernel can drop at will, so they are left out.
fn anon_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("RssAnon:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Samples `anon_mib` every 20 ms; returns the peak when stopped.
fn sample_peak() -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<f64>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(anon_mib());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    });
    (stop, task)
}

pub async fn run(
    size: u64,
    replication: Vec<u8>,
    clients: Vec<String>,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    for c in &clients {
        anyhow::ensure!(
            c == "remote" || c == "in-process",
            "unknown client {c:?}: use remote, in-process or both"
        );
    }
    let base = dir.unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base)?;
    let root = tmp.path();
    let (disk_write, disk_read) = raw_disk(root, size)?;
    let tcp = raw_tcp(size).await?;
    let quic = raw_quic(root, size).await?;
    let gib = size as f64 / f64::from(1u32 << 30);
    println!(
        "Object: {gib:.2} GiB. Same run: raw disk write+fsync {disk_write:.2} GiB/s, raw read {disk_read:.2} GiB/s, raw TCP loopback {tcp:.2} GiB/s, raw QUIC stream (mutual TLS) {quic:.2} GiB/s.\n"
    );
    println!(
        "| R | client | write GiB/s | vs target base | write vs raw QUIC | read GiB/s | vs min(raw read, TCP) | read vs raw QUIC | peak anon RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in replication {
        let dir = root.join(format!("r{r}"));
        let ca = ClusterCa::create(&dir.join("ca"))?;
        let master_id = ca.issue("master", &[])?;
        let (node, _plane) = cairn_master::start(
            1,
            &dir.join("master"),
            "127.0.0.1:0".parse()?,
            &master_id,
            RaftOptions::default(),
            DataOptions {
                replication: r,
                ..DataOptions::default()
            },
        )
        .await?;
        node.initialize_if_new().await?;
        let mut servers = Vec::new();
        for i in 0..3 {
            let id = ca.issue(&format!("cs-{i}"), &[])?;
            let options = ChunkserverOptions {
                masters: vec![node.addr],
                heartbeat: Duration::from_millis(200),
                scrub_rate: 0,
                ..ChunkserverOptions::default()
            };
            servers.push(Chunkserver::start(&dir.join(format!("cs{i}")), &id, options).await?);
        }
        let client_id = ca.issue("client", &[])?;
        let ep = cairn_proto::endpoint(
            "127.0.0.1:0".parse()?,
            &client_id,
            &TransportOptions::default(),
        )?;
        let client = DataClient::new(MasterClient::new(ep.clone(), vec![node.addr]), ep);
        wait_alive(&client, 3).await?;
        // The same cluster, written and read by a client elsewhere (every hop QUIC) and by one
        // in the chunkservers' process, as `cairn serve`'s gateway is (the chain's first hop
        // and reads of local replicas short-circuit the transport).
        let in_process = servers
            .iter()
            .fold(client.clone(), |c, s| c.with_local(s.clone()));
        for label in &clients {
            let client = if label == "remote" {
                client.clone()
            } else {
                in_process.clone()
            };
            let (stop, peak) = sample_peak();
            let start = Instant::now();
            let written = client.put(&mut Source::new(size)).await?;
            let write = gib_s(size, start.elapsed());
            let start = Instant::now();
            let mut sink = tokio::io::sink();
            client
                .read(&written.extents, 0, written.size, &mut sink)
                .await?;
            let read = gib_s(size, start.elapsed());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let peak = peak.await.unwrap_or(0.0);
            let write_base = disk_write / f64::from(r);
            println!(
                "| {r} | {label} | {write:.2} | {:.0}% of raw write{} | {:.0}% | {read:.2} | {:.0}% | {:.0}% | {peak:.0} MiB |",
                100.0 * write / write_base,
                if r > 1 {
                    format!(" / {r}")
                } else {
                    String::new()
                },
                100.0 * write / quic,
                100.0 * read / disk_read.min(tcp),
                100.0 * read / quic,
            );
        }
        for s in &servers {
            s.shutdown().await;
        }
        node.shutdown().await;
    }
    println!(
        "\nPeak anonymous RSS is of this whole process: master, 3 chunkservers and the client. A remote client reaches every replica over QUIC; an in-process one (as `cairn serve`'s gateway) hands the chain's first replica its data on a channel and reads local replicas from their stores."
    );
    println!(
        "Raw QUIC is one stream between two of Cairn's endpoints in this process, no disk, no checksums: every data-plane byte crosses at least one such hop."
    );
    Ok(())
}

/// `cairn-bench repair`: how fast a three-chunkserver, R=3 cluster returns to full replication
/// after one server is replaced by an empty one, against the raw limits of the same run.
pub async fn repair(
    size: u64,
    object: u64,
    copies: u32,
    sync_batch: Option<u64>,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        object > 0 && size >= object,
        "--object must be between 1 byte and --size"
    );
    let base = dir.unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base)?;
    let root = tmp.path();
    let (disk_write, _) = raw_disk(root, size)?;
    let quic = raw_quic(root, size).await?;
    let limit = disk_write.min(quic);
    let ca = ClusterCa::create(&root.join("ca"))?;
    let options = DataOptions {
        replication: 3,
        limits: cairn_master::planner::Limits {
            copies_per_server: copies,
            ..cairn_master::planner::Limits::default()
        },
        ..DataOptions::default()
    };
    let (node, _plane) = cairn_master::start(
        1,
        &root.join("master"),
        "127.0.0.1:0".parse()?,
        &ca.issue("master", &[])?,
        RaftOptions::default(),
        options,
    )
    .await?;
    node.initialize_if_new().await?;
    let start_server = |i: usize| {
        let ca = &ca;
        let addr = node.addr;
        async move {
            let mut options = ChunkserverOptions {
                masters: vec![addr],
                scrub_rate: 0,
                ..ChunkserverOptions::default()
            };
            if let Some(bytes_max) = sync_batch {
                options.store.sync = cairn_engine::chunk::SyncPolicy::Batch { bytes_max };
            }
            let id = ca.issue(&format!("cs-{i}"), &[])?;
            anyhow::Ok(Chunkserver::start(&root.join(format!("cs{i}")), &id, options).await?)
        }
    };
    let mut servers = Vec::new();
    for i in 0..3 {
        servers.push(start_server(i).await?);
    }
    let ep = cairn_proto::endpoint(
        "127.0.0.1:0".parse()?,
        &ca.issue("client", &[])?,
        &TransportOptions::default(),
    )?;
    let client = DataClient::new(MasterClient::new(ep.clone(), vec![node.addr]), ep);
    wait_alive(&client, 3).await?;
    // Objects committed as the S3 gateway commits them: only live chunks are repaired.
    use cairn_master::buckets::{
        BucketCommand, BucketService, Conditions, Content, ObjectData, ObjectMeta,
    };
    let propose = |cmd: BucketCommand| {
        let client = client.clone();
        async move {
            client
                .master()
                .propose_typed::<BucketService>(&cmd)
                .await?
                .map_err(|r| anyhow::anyhow!("refused: {r}"))?;
            anyhow::Ok(())
        }
    };
    propose(BucketCommand::CreateBucket {
        name: "repair".into(),
        owner: "cairn-bench".into(),
        public_read: false,
    })
    .await?;
    let mut written = 0u64;
    let mut n_objects = 0;
    while written < size {
        let n = object.min(size - written);
        let w = client.put(&mut Source::new(n)).await?;
        propose(BucketCommand::PutObject {
            bucket: "repair".into(),
            key: format!("object-{n_objects}"),
            data: ObjectData {
                size: w.size,
                etag: format!("{:016x}", w.size),
                parts: Vec::new(),
                content: Content::Chunks(w.extents),
                meta: ObjectMeta::default(),
                tags: Vec::new(),
            },
            conditions: Conditions::default(),
        })
        .await?;
        written += n;
        n_objects += 1;
    }
    // Every chunk on all three (the acknowledgement says so) and reported to the master.
    let start = Instant::now();
    while !client
        .status()
        .await
        .is_ok_and(|s| s.servers.iter().all(|x| x.bytes >= size))
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "replicas never reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gib = size as f64 / f64::from(1u32 << 30);
    println!(
        "Stored: {gib:.2} GiB at R=3 on three chunkservers ({} MiB objects). Same run: raw disk write+fsync {disk_write:.2} GiB/s, raw QUIC stream (mutual TLS) {quic:.2} GiB/s.",
        object >> 20
    );
    // Replace the third server with an empty one.
    let gone = servers.remove(2);
    let gone_id = gone.id();
    let replaced = Instant::now();
    gone.shutdown().await;
    eprintln!("stopped a chunkserver after {:?}", replaced.elapsed());
    let new = start_server(3).await?;
    let new_id = new.id();
    let mut said = Instant::now();
    let mut first_copy: Option<Duration> = None;
    // When the leader declared the stopped server dead, and what the new one held then.
    let mut dead: Option<(Duration, u64)> = None;
    let mut peak_rate: f64 = 0.0;
    let done = loop {
        let (s, r) = tokio::join!(client.status(), client.repair());
        if let (Ok(s), Ok(r)) = (s, r) {
            if first_copy.is_none() && r.copies_running > 0 {
                first_copy = Some(replaced.elapsed());
            }
            peak_rate = peak_rate.max(r.bytes_per_sec);
            let on_new = s
                .servers
                .iter()
                .find(|x| x.info.id == new_id)
                .map_or(0, |x| x.bytes);
            if dead.is_none() && s.servers.iter().any(|x| x.info.id == gone_id && !x.alive) {
                dead = Some((replaced.elapsed(), on_new));
            }
            if on_new >= size && s.under_replicated == 0 && r.remaining_replicas == 0 {
                break replaced.elapsed();
            }
            if said.elapsed() >= Duration::from_secs(5) {
                said = Instant::now();
                eprintln!(
                    "{:>5.1} s: {} MiB on the new server; {} alive; {}",
                    replaced.elapsed().as_secs_f64(),
                    on_new >> 20,
                    s.servers.iter().filter(|x| x.alive).count(),
                    progress_line(&r)
                );
            }
        }
        anyhow::ensure!(
            replaced.elapsed() < Duration::from_secs(1800),
            "the cluster did not return to full replication in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = first_copy.unwrap_or_default();
    let (dead_at, held_then) = dead.unwrap_or((first, 0));
    let repairing = done.saturating_sub(dead_at);
    let rate = gib_s(size - held_then.min(size), repairing);
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| back to full replication after the replacement | {:.1} s |",
        done.as_secs_f64()
    );
    println!(
        "| first copy into the new server (a rebalancing move: the old one still counts as alive) | {:.1} s |",
        first.as_secs_f64()
    );
    println!(
        "| old server declared dead (`master.dead_after_ms`); the new one then held | {:.1} s; {} MiB |",
        dead_at.as_secs_f64(),
        held_then >> 20
    );
    println!(
        "| re-replication of the remaining {} MiB | {:.1} s |",
        (size - held_then.min(size)) >> 20,
        repairing.as_secs_f64()
    );
    println!(
        "| repair throughput | {rate:.3} GiB/s ({:.0}% of min(raw write, raw QUIC) = {limit:.2} GiB/s) |",
        100.0 * rate / limit
    );
    println!(
        "| peak rate the master reported (10 s window) | {:.3} GiB/s |",
        peak_rate / f64::from(1u32 << 30)
    );
    new.shutdown().await;
    for s in servers {
        s.shutdown().await;
    }
    node.shutdown().await;
    Ok(())
}

fn progress_line(r: &cairn_proto::dataplane::RepairProgress) -> String {
    format!(
        "{} replicas ({} MiB) left, {} running, {:.1} MiB/s",
        r.remaining_replicas,
        r.remaining_bytes >> 20,
        r.copies_running,
        r.bytes_per_sec / f64::from(1u32 << 20)
    )
}
