//! The master role (`cairn master`) and the operator's `cairn admin` commands.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_master::planner::Limits;
use cairn_master::protocol::{DataStatus, DataStatusRpc};
use cairn_master::{DataOptions, DataPlane};
use cairn_proto::{NodeIdentity, TransportOptions};
use cairn_raft::{AdminRequest, MasterClient, NodeStatus, RaftNode, RaftOptions};

use crate::lock::DataLock;

/// The data-plane settings in a configuration (`replication` when the config names none).
pub fn data_options(config: &crate::config::ServeConfig, replication: u8) -> DataOptions {
    DataOptions {
        replication: config.replication.unwrap_or(replication),
        dead_after: Duration::from_millis(config.dead_after_ms),
        tick: Duration::from_millis(config.tick_ms),
        chunk_size: config.chunks.chunk_size_max,
        limits: Limits {
            grace_ms: config.gc_grace_ms,
            ..Limits::default()
        },
        lifecycle: Duration::from_millis(config.lifecycle_ms),
    }
}

pub async fn start_node(
    id: u64,
    data: &Path,
    listen: SocketAddr,
    name: &str,
    snapshot_after_entries: u64,
    data_options: DataOptions,
) -> anyhow::Result<(RaftNode, DataPlane)> {
    let tls = data.join("tls");
    let created = cairn_proto::tls::ensure_identity(&tls, name).context("cluster credentials")?;
    if created {
        tracing::info!(dir = %tls.display(), "created a new cluster CA and node certificate");
    }
    let identity = NodeIdentity::load(&tls)?;
    let options = RaftOptions {
        snapshot_after_entries,
        entries_kept_after_snapshot: (snapshot_after_entries / 10).max(10),
        ..RaftOptions::default()
    };
    let (node, plane) = cairn_master::start(
        id,
        &data.join("master"),
        listen,
        &identity,
        options,
        data_options,
    )
    .await?;
    // The node holding the cluster CA starts the group; nodes with issued certificates wait to
    // be added (`cairn admin cluster add-master`).
    if cairn_proto::ClusterCa::exists(&tls) && node.initialize_if_new().await? {
        tracing::info!(id, addr = %node.addr, "initialised a new one-node master group");
    }
    tracing::info!(id, "master listening on quic://{}", node.addr);
    Ok((node, plane))
}

/// `cairn master`: run one master until SIGINT/SIGTERM.
pub async fn run(config: crate::config::ServeConfig) -> anyhow::Result<()> {
    let (id, data) = (config.master_id, config.data.clone());
    std::fs::create_dir_all(&data)
        .with_context(|| format!("create data folder {}", data.display()))?;
    let _lock = DataLock::acquire(&data)?;
    let name = format!("master-{id}");
    let (node, _plane) = start_node(
        id,
        &data,
        config.cluster_listen,
        &name,
        config.snapshot_after_entries,
        data_options(&config, 3),
    )
    .await?;
    crate::serve::shutdown_signal().await;
    node.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}

fn admin_client(tls: &Path, masters: &[SocketAddr]) -> anyhow::Result<MasterClient> {
    let identity = NodeIdentity::load(tls)
        .with_context(|| format!("admin credentials in {}", tls.display()))?;
    let endpoint = cairn_proto::endpoint(
        "127.0.0.1:0".parse().context("bind address")?,
        &identity,
        &TransportOptions::default(),
    )?;
    Ok(MasterClient::new(endpoint, masters.to_vec()))
}

/// One row of `cairn admin status`.
#[derive(Debug, serde::Serialize)]
struct Row {
    id: Option<u64>,
    addr: String,
    healthy: bool,
    #[serde(flatten)]
    status: Option<NodeStatus>,
    lag: Option<u64>,
    error: Option<String>,
}

/// `cairn admin status`: every member's view, as a table or JSON.
pub async fn status(tls: &Path, masters: &[SocketAddr], json: bool) -> anyhow::Result<bool> {
    let client = admin_client(tls, masters)?;
    // Ask the given masters, then every member they know of.
    let mut addrs: BTreeSet<String> = masters.iter().map(|a| a.to_string()).collect();
    for m in masters {
        if let Ok(s) = client.status(*m).await {
            addrs.extend(s.nodes.values().cloned());
        }
    }
    let mut rows = Vec::new();
    for addr in &addrs {
        let row = match addr.parse::<SocketAddr>() {
            Err(e) => Row {
                id: None,
                addr: addr.clone(),
                healthy: false,
                status: None,
                lag: None,
                error: Some(e.to_string()),
            },
            Ok(a) => match tokio::time::timeout(Duration::from_secs(2), client.status(a)).await {
                Ok(Ok(s)) => Row {
                    id: Some(s.id),
                    addr: addr.clone(),
                    healthy: s.leader.is_some(),
                    lag: None,
                    status: Some(s),
                    error: None,
                },
                Ok(Err(e)) => Row {
                    id: None,
                    addr: addr.clone(),
                    healthy: false,
                    status: None,
                    lag: None,
                    error: Some(e.to_string()),
                },
                Err(_) => Row {
                    id: None,
                    addr: addr.clone(),
                    healthy: false,
                    status: None,
                    lag: None,
                    error: Some("timed out".into()),
                },
            },
        };
        rows.push(row);
    }
    let leader_last = rows
        .iter()
        .filter_map(|r| r.status.as_ref())
        .find(|s| s.state == "leader")
        .and_then(|s| s.last_log_index);
    for r in &mut rows {
        if let (Some(s), Some(l)) = (&r.status, leader_last) {
            r.lag = Some(l.saturating_sub(s.applied_index.unwrap_or(0)));
        }
    }
    let healthy = leader_last.is_some() && rows.iter().all(|r| r.healthy);
    if !json {
        println!(
            "ID   ADDRESS                STATE      TERM  LEADER   LAST LOG    APPLIED    LAG  HEALTH"
        );
        for r in &rows {
            let dash = || "-".to_string();
            let s = r.status.as_ref();
            println!(
                "{:<4} {:<22} {:<9} {:>5} {:>7} {:>10} {:>10} {:>6}  {}",
                r.id.map_or_else(dash, |i| i.to_string()),
                r.addr,
                s.map_or("unreachable", |s| s.state.as_str()),
                s.map_or_else(dash, |s| s.term.to_string()),
                s.and_then(|s| s.leader)
                    .map_or_else(dash, |l| l.to_string()),
                s.and_then(|s| s.last_log_index)
                    .map_or_else(dash, |i| i.to_string()),
                s.and_then(|s| s.applied_index)
                    .map_or_else(dash, |i| i.to_string()),
                r.lag.map_or_else(dash, |l| l.to_string()),
                if r.healthy {
                    "ok".to_string()
                } else {
                    r.error.clone().unwrap_or_else(|| "no leader".into())
                },
            );
        }
        println!("group: {}", if healthy { "healthy" } else { "UNHEALTHY" });
    }
    let data = if healthy {
        client.call_leader::<DataStatusRpc, _>(&()).await.ok()
    } else {
        None
    };
    if json {
        let out = serde_json::json!({"healthy": healthy, "members": rows, "data": data});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if let Some(d) = &data {
        print_data_status(d);
    }
    Ok(healthy)
}

/// `cairn admin cluster add-master`: add as learner, wait for catch-up, then promote.
pub async fn add_master(
    tls: &Path,
    masters: &[SocketAddr],
    id: u64,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    let client = admin_client(tls, masters)?;
    client
        .admin(AdminRequest::AddLearner {
            id,
            addr: addr.to_string(),
        })
        .await
        .context("add learner")?;
    let voters = current_voters(&client, masters).await?;
    let mut new: BTreeSet<u64> = voters.into_iter().collect();
    new.insert(id);
    client
        .admin(AdminRequest::SetVoters(new))
        .await
        .context("promote to voter")?;
    println!("master {id} at {addr} added and promoted to voter");
    Ok(())
}

/// `cairn admin cluster remove-master`: demote and remove.
pub async fn remove_master(tls: &Path, masters: &[SocketAddr], id: u64) -> anyhow::Result<()> {
    let client = admin_client(tls, masters)?;
    let voters = current_voters(&client, masters).await?;
    if !voters.contains(&id) {
        bail!("master {id} is not a voter of this group (voters: {voters:?})");
    }
    let new: BTreeSet<u64> = voters.into_iter().filter(|v| *v != id).collect();
    if new.is_empty() {
        bail!("refusing to remove the last master");
    }
    client
        .admin(AdminRequest::SetVoters(new))
        .await
        .context("remove from voters")?;
    println!("master {id} removed");
    Ok(())
}

async fn current_voters(client: &MasterClient, masters: &[SocketAddr]) -> anyhow::Result<Vec<u64>> {
    for m in masters {
        if let Ok(s) = client.status(*m).await {
            return Ok(s.voters);
        }
    }
    bail!("no master answered at {masters:?}")
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn print_data_status(d: &DataStatus) {
    println!();
    println!(
        "CHUNKSERVER       ADDRESS                ZONE       STATE   CHUNKS        DATA        FREE    CAPACITY  LOAD"
    );
    for s in &d.servers {
        println!(
            "{:016x}  {:<22} {:<10} {:<7} {:>6} {:>11} {:>11} {:>11} {:>5}",
            s.info.id,
            s.info.addr,
            s.info.zone.as_deref().unwrap_or("-"),
            if s.alive { "alive" } else { "DEAD" },
            s.chunks,
            gib(s.bytes),
            gib(s.info.free),
            gib(s.info.capacity),
            s.info.load,
        );
    }
    let alive = d.servers.iter().filter(|s| s.alive).count();
    println!(
        "chunkservers: {alive} alive of {}; replication {}; chunks {}; under-replicated {}; lost {}; copies running {}; deletions queued {}",
        d.servers.len(),
        d.replication_default,
        d.chunks,
        d.under_replicated,
        d.lost,
        d.copies_in_flight,
        d.deletes_queued,
    );
}
