//! `cairn-bench`: Cairn's load generator.
//!
//! `cairn-bench raft`: commands/s and commit latency (p50/p99) of the replicated log at several
//! client concurrencies, on a one-node and a three-node group of real master nodes (real redb
//! files, real mutual-TLS QUIC on loopback) in this process, printed beside the disk's own
//! fsync rate measured in the same run (4 KiB append + fdatasync loop).
//!
//! `cairn-bench raft-memory --keys N`: resident memory of a one-node master holding N keys.
//!
//! `cairn-bench queues`: send + receive + ack cycles through the queue service beside the raw
//! commit rate of the same group at the same concurrency.
//!
//! `cairn-bench s3 --endpoint URL`: S3 PUT/GET throughput, ops/s and latency against any S3
//! endpoint, beside a null endpoint (`cairn-bench null-server`) and the raw disk, the ceilings
//! measured in the same run with the same client.
//!
//! `cairn-bench data`: sequential write and read of one object through the data client, with
//! R=1 and R=3 (three chunkservers on this machine's one disk), beside raw disk write+fsync, raw
//! read and raw TCP loopback measured in the same run; and the process's peak RSS.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::MasterClient;
use cairn_engine::state::settings::{ClusterSettings, SettingsCommand};
use cairn_engine::state::{Registry, StateError, TypedService};
use cairn_proto::{ClusterCa, TransportOptions};
use cairn_raft::{AdminRequest, RaftNode, RaftOptions};
use clap::{Parser, Subcommand};

/// The same allocator as the `cairn` binary: glibc malloc cost ~10% of a master's CPU here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cairn-bench", about = "Cairn load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replicated-log throughput and latency against the disk's fsync rate.
    Raft {
        /// Seconds of load per (group, concurrency) point.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent clients (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        clients: Vec<usize>,
        /// Group sizes (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,3")]
        nodes: Vec<u64>,
        /// Folder for the nodes' data (default: the system temp folder).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Queue send + receive + ack cycles beside the raw commit rate, at each concurrency.
    Queues {
        /// Seconds of load per (group, concurrency) point, for each of the two loads.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, value_delimiter = ',', default_value = "1,32,256")]
        clients: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "1,3")]
        nodes: Vec<u64>,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Resident memory of a master after writing N keys: an in-process one-node master, or a
    /// running `cairn master` (`--master`, `--tls`, `--pid`), measured alone.
    RaftMemory {
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Concurrent writers.
        #[arg(long, default_value_t = 256)]
        clients: usize,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// QUIC address of a running master to write to instead.
        #[arg(long, requires_all = ["tls", "pid"])]
        master: Option<SocketAddr>,
        /// Folder with a certificate from that cluster's CA.
        #[arg(long)]
        tls: Option<std::path::PathBuf>,
        /// Process id of that master, whose RSS is reported.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// S3 load against any endpoint, beside a null endpoint and the raw disk (the ceilings).
    S3 {
        /// The S3 endpoint, e.g. http://127.0.0.1:9000.
        #[arg(long)]
        endpoint: String,
        #[arg(long, env = "AWS_ACCESS_KEY_ID")]
        access_key: String,
        #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
        secret_key: String,
        /// Bucket to use (created if missing).
        #[arg(long, default_value = "cairn-bench")]
        bucket: String,
        /// Size of the large objects.
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        large_size: u64,
        /// How many large objects.
        #[arg(long, default_value_t = 16)]
        large_count: usize,
        /// Large objects in flight.
        #[arg(long, default_value_t = 4)]
        large_concurrency: usize,
        /// Size of the small objects.
        #[arg(long, default_value = "4KiB", value_parser = parse_size)]
        small_size: u64,
        /// Small requests in flight (comma-separated: the small workloads run once at each).
        /// The targets sit at different points on 2 cores: a GET's p50 is lowest with few
        /// requests in flight, a durable PUT's rate is highest with many.
        #[arg(long, value_delimiter = ',', default_value = "2,32,64")]
        concurrency: Vec<usize>,
        /// Seconds of small PUTs, then of small GETs, at each concurrency.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Folder on the disk the endpoint stores to, for the raw-disk ceiling.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Print one JSON document instead of the table.
        #[arg(long)]
        json: bool,
        /// Skip the SSE-S3 runs (by default every workload also runs encrypted, reported
        /// against the same workload unencrypted).
        #[arg(long)]
        no_sse: bool,
    },
    /// A null S3 endpoint (answers GETs with bytes, drops PUTs): the client's ceiling.
    NullServer {
        #[arg(long, default_value = "127.0.0.1:9999")]
        listen: SocketAddr,
    },
    /// Data-plane throughput: 1 GiB write and read through the client at R=1 and R=3.
    Data {
        /// Object size (e.g. 1GiB).
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        size: u64,
        /// Replication factors to measure (comma-separated; three chunkservers run).
        #[arg(long, value_delimiter = ',', default_value = "1,3")]
        replication: Vec<u8>,
        /// Clients to measure, in this order (comma-separated): `remote` reaches every
        /// replica over QUIC; `in-process` runs beside the chunkservers as `cairn serve`'s
        /// gateway does (short-circuit chain head and local reads). Each object written after
        /// the first meets a disk still flushing the one before, so compare like with like:
        /// one client per run.
        #[arg(long, value_delimiter = ',', default_value = "remote,in-process")]
        clients: Vec<String>,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Repair: three chunkservers at R=3 hold `size` bytes; one is stopped and an empty one
    /// takes its place. Measures the time back to full replication and the copy rate, beside
    /// the raw disk write and one bare QUIC stream measured in the same run.
    Repair {
        /// Bytes stored before the replacement (e.g. 1GiB).
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        size: u64,
        /// Bytes per object written (each its own chunks).
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        object: u64,
        /// Copies into one server at once (`master.repair_copies_per_server`).
        #[arg(long, default_value_t = 8)]
        copies: u32,
        /// Unsynced bytes a chunk may gather before it is synced (`chunks.sync_batch_bytes`
        /// as the chunkservers use it; default as they do).
        #[arg(long, value_parser = parse_size)]
        sync_batch: Option<u64>,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?}")),
    };
    n.checked_mul(mult).ok_or_else(|| "too large".to_string())
}

/// Every service (the raft load uses only the settings service; the queue load its own).
fn registry() -> Result<Registry, StateError> {
    cairn_master::registry()
}

fn proposal(n: u64) -> Result<Vec<u8>, StateError> {
    let c = SettingsCommand::Set {
        key: format!("bench.key.{n}"),
        value: format!("value-{n}"),
    };
    let mut seed = [0u8; 16];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    Ok(ClusterSettings::command(&c, n, seed)?.encode())
}

/// 4 KiB appends, each followed by fdatasync, for `for_how_long`: the disk's sync rate.
fn fsync_rate(dir: &Path, for_how_long: Duration) -> std::io::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < for_how_long {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

/// Start an `n`-node group in `dir`; returns the nodes and a client.
async fn group(dir: &Path, n: u64) -> anyhow::Result<(Vec<RaftNode>, MasterClient)> {
    if n == 0 {
        anyhow::bail!("a group needs at least one node");
    }
    let ca = ClusterCa::create(&dir.join("ca"))?;
    let mut nodes = Vec::new();
    for id in 1..=n {
        let identity = ca.issue(&format!("node-{id}"), &[])?;
        let node = RaftNode::start(
            id,
            &dir.join(format!("node-{id}")),
            free_addr()?,
            &identity,
            registry,
            RaftOptions::default(),
        )
        .await?;
        nodes.push(node);
    }
    nodes[0].initialize_if_new().await?;
    let client_id = ca.issue("bench-client", &[])?;
    let ep = cairn_proto::endpoint(
        "127.0.0.1:0".parse()?,
        &client_id,
        &TransportOptions::default(),
    )?;
    let client = MasterClient::new(ep, vec![nodes[0].addr]);
    for node in &nodes[1..] {
        client
            .admin(AdminRequest::AddLearner {
                id: node.id,
                addr: node.addr.to_string(),
            })
            .await?;
    }
    if n > 1 {
        client
            .admin(AdminRequest::SetVoters((1..=n).collect::<BTreeSet<u64>>()))
            .await?;
    }
    Ok((nodes, client))
}

struct Point {
    commands: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: u64,
}

async fn load(client: &MasterClient, clients: usize, seconds: u64, first: u64) -> Point {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let n = first + (c as u64) * 1_000_000_000 + i;
                    i += 1;
                    let Ok(p) = proposal(n) else {
                        errors += 1;
                        continue;
                    };
                    let t = Instant::now();
                    match client.propose(p).await {
                        Ok(Ok(_)) => lat.push(t.elapsed()),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies.extend(l);
            errors += e;
        }
    }
    latencies.sort();
    Point {
        commands: latencies.len() as u64,
        elapsed: start.elapsed(),
        latencies,
        errors,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn raft(
    seconds: u64,
    clients: Vec<usize>,
    nodes: Vec<u64>,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let base = dir.unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base)?;
    let fsync = {
        let d = tmp.path().to_path_buf();
        tokio::task::spawn_blocking(move || fsync_rate(&d, Duration::from_secs(3))).await??
    };
    println!(
        "disk: {fsync:.0} fsyncs/s (4 KiB append + fdatasync, 3 s, {})",
        base.display()
    );
    println!();
    println!("| nodes | clients | commands/s | × fsync rate | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|---|");
    let mut next = 0u64;
    for n in nodes {
        let group_dir = tmp.path().join(format!("group-{n}"));
        let (group_nodes, client) = group(&group_dir, n).await?;
        for &c in &clients {
            // Warm up connections and the leader cache.
            let _ = load(&client, c.min(4), 1, next).await;
            next += 10_000_000_000_000;
            let p = load(&client, c, seconds, next).await;
            next += 10_000_000_000_000;
            let rate = p.commands as f64 / p.elapsed.as_secs_f64();
            println!(
                "| {n} | {c} | {rate:.0} | {:.1}× | {:.1} | {:.1} | {} |",
                rate / fsync,
                pct(&p.latencies, 0.50).as_secs_f64() * 1e3,
                pct(&p.latencies, 0.99).as_secs_f64() * 1e3,
                p.errors
            );
        }
        for node in &group_nodes {
            node.shutdown().await;
        }
    }
    Ok(())
}

fn rss_mib() -> Option<f64> {
    rss_of("self")
}

fn rss_of(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn raft_memory(
    keys: u64,
    clients: usize,
    dir: Option<std::path::PathBuf>,
    external: Option<(SocketAddr, std::path::PathBuf, u32)>,
) -> anyhow::Result<()> {
    let base = dir.unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base)?;
    let (nodes, client, measured) = match &external {
        None => {
            let (nodes, client) = group(tmp.path(), 1).await?;
            (nodes, client, "process RSS (master + client)".to_string())
        }
        Some((addr, tls, pid)) => {
            let identity = cairn_proto::NodeIdentity::load(tls)?;
            let ep = cairn_proto::endpoint(
                "127.0.0.1:0".parse()?,
                &identity,
                &TransportOptions::default(),
            )?;
            (
                Vec::new(),
                MasterClient::new(ep, vec![*addr]),
                format!("master (pid {pid}) RSS"),
            )
        }
    };
    let rss = || match &external {
        None => rss_mib(),
        Some((_, _, pid)) => rss_of(&pid.to_string()),
    };
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let per = keys.div_ceil(clients as u64);
    let tasks: Vec<_> = (0..clients as u64)
        .map(|c| {
            let client = client.clone();
            let written = written.clone();
            tokio::spawn(async move {
                for i in c * per..((c + 1) * per).min(keys) {
                    if let Ok(p) = proposal(i)
                        && let Ok(Ok(_)) = client.propose(p).await
                    {
                        written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut last = Instant::now();
    for t in tasks {
        while !t.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if last.elapsed() > Duration::from_secs(10) {
                last = Instant::now();
                eprintln!(
                    "{} keys written, RSS {:.0} MiB",
                    written.load(std::sync::atomic::Ordering::Relaxed),
                    rss_mib().unwrap_or(0.0)
                );
            }
        }
        let _ = t.await;
    }
    let n = written.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{n} keys in {:.0} s ({:.0} commands/s); {measured} {:.0} MiB",
        start.elapsed().as_secs_f64(),
        n as f64 / start.elapsed().as_secs_f64(),
        rss().unwrap_or(0.0)
    );
    for node in &nodes {
        node.shutdown().await;
    }
    Ok(())
}

mod data;
mod queues;
mod s3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Raft {
                seconds,
                clients,
                nodes,
                dir,
            } => raft(seconds, clients, nodes, dir).await,
            Command::Queues {
                seconds,
                clients,
                nodes,
                dir,
            } => queues::run(seconds, clients, nodes, dir).await,
            Command::Data {
                size,
                replication,
                clients,
                dir,
            } => data::run(size, replication, clients, dir).await,
            Command::Repair {
                size,
                object,
                copies,
                sync_batch,
                dir,
            } => data::repair(size, object, copies, sync_batch, dir).await,
            Command::S3 {
                endpoint,
                access_key,
                secret_key,
                bucket,
                large_size,
                large_count,
                large_concurrency,
                small_size,
                concurrency,
                seconds,
                dir,
                json,
                no_sse,
            } => {
                let load = s3::Load {
                    sse: !no_sse,
                    bucket,
                    large_size,
                    large_count,
                    large_concurrency,
                    small_size,
                    concurrency,
                    seconds,
                };
                s3::run(endpoint, access_key, secret_key, load, dir, json).await
            }
            Command::NullServer { listen } => s3::null_server(listen).await,
            Command::RaftMemory {
                keys,
                clients,
                dir,
                master,
                tls,
                pid,
            } => {
                let external = match (master, tls, pid) {
                    (Some(m), Some(t), Some(p)) => Some((m, t, p)),
                    _ => None,
                };
                raft_memory(keys, clients, dir, external).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
