//! The master role (`cairn master`) and the operator's `cairn admin` commands.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_client::MasterClient;
use cairn_engine::state::TypedService;
use cairn_engine::state::settings::{ClusterSettings, SettingsCommand};
use cairn_master::planner::Limits;
use cairn_master::{DataOptions, DataPlane};
use cairn_proto::dataplane::{DataRepairRpc, DataStatus, DataStatusRpc, RepairProgress};
use cairn_proto::{NodeIdentity, TransportOptions};
use cairn_raft::{AdminRequest, NodeStatus, RaftNode, RaftOptions};

use crate::lock::DataLock;
use crate::output::Refused;

/// The data-plane settings in a configuration (`replication` when the config names none).
pub fn data_options(config: &crate::config::ServeConfig, replication: u8) -> DataOptions {
    DataOptions {
        replication: config.replication.unwrap_or(replication),
        write_replicas_min: config.write_replicas_min,
        dead_after: Duration::from_millis(config.dead_after_ms),
        tick: Duration::from_millis(config.tick_ms),
        chunk_size: config.chunks.chunk_size_max,
        limits: Limits {
            grace_ms: config.gc_grace_ms,
            copies_per_server: config.repair_copies_per_server,
            ..Limits::default()
        },
        lifecycle: Duration::from_millis(config.lifecycle_ms),
    }
}

/// Masters whose election windows differ (ids 1 to 5; id 6 shares id 1's window, and so on).
pub const ELECTION_SLOTS: u64 = 5;

/// The election timeout window of master `id`, for the setting `election`
/// (`master.election_timeout_ms`). openraft starts an election when a follower has heard
/// nothing from the leader for its lease (its maximum election timeout) plus its own election
/// timeout, drawn once, at start, between its minimum and maximum. Drawn from one shared
/// window, two survivors whose draws lay close stood for election together, split the vote,
/// and did so again on every retry with the same timeouts (a node that has seen a longer log
/// also waits twice the maximum more): 1 kill in 8 took three rounds and 3 s. So each id has a
/// window of its own, 0.6x the setting after the previous one and 0.4x wide: with 250 ms, id
/// 1 stands after 0.6-0.7 s without heartbeats, id 2 after 0.9-1.0 s, id 3 after 1.2-1.3 s,
/// at least 0.2 s apart, and the first survivor in id order wins alone.
pub fn election_window(election: Duration, id: u64) -> (Duration, Duration) {
    let slot = u32::try_from(id.saturating_sub(1) % ELECTION_SLOTS).unwrap_or(0);
    let min = election + election * 3 / 5 * slot;
    (min, min + election * 2 / 5)
}

/// Raft timing and compaction from the configuration (election windows: [`election_window`]).
/// The leader heartbeats every 2/5 of `master.election_timeout_ms`, so at least six
/// heartbeats in a row are lost before anyone stands for election.
pub fn raft_options(config: &crate::config::ServeConfig) -> RaftOptions {
    let election = Duration::from_millis(config.election_timeout_ms);
    let (election_timeout_min, election_timeout_max) = election_window(election, config.master_id);
    RaftOptions {
        heartbeat: election * 2 / 5,
        election_timeout_min,
        election_timeout_max,
        snapshot_after_entries: config.snapshot_after_entries,
        entries_kept_after_snapshot: (config.snapshot_after_entries / 10).max(10),
        ..RaftOptions::default()
    }
}

pub async fn start_node(
    id: u64,
    data: &Path,
    listen: SocketAddr,
    name: &str,
    options: RaftOptions,
    data_options: DataOptions,
) -> anyhow::Result<(RaftNode, DataPlane)> {
    let tls = data.join("tls");
    let created = cairn_proto::tls::ensure_identity(&tls, name).context("cluster credentials")?;
    if created {
        tracing::info!(dir = %tls.display(), "created a new cluster CA and node certificate");
    }
    let identity = NodeIdentity::load(&tls)?;
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
        raft_options(&config),
        data_options(&config, 3),
    )
    .await?;
    crate::signal::shutdown_signal().await;
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

/// How long `admin status` waits for one master's answer. Every master is asked at once, in
/// two rounds (the masters named, then every member they know of), so a member that is down
/// costs at most two of these, not a retry schedule per member.
const STATUS_ASK: Duration = Duration::from_millis(900);

/// One master's status, or why there is none within [`STATUS_ASK`].
async fn ask_status(
    client: &MasterClient,
    addr: SocketAddr,
) -> Result<Result<NodeStatus, cairn_proto::RpcError>, tokio::time::error::Elapsed> {
    tokio::time::timeout(STATUS_ASK, client.status(addr)).await
}

/// `cairn admin status`: every member's view, as a table or JSON.
pub async fn status(tls: &Path, masters: &[SocketAddr], json: bool) -> anyhow::Result<bool> {
    let client = admin_client(tls, masters)?;
    // Ask the given masters, then every member they know of, all at once.
    let mut addrs: BTreeSet<String> = masters.iter().map(|a| a.to_string()).collect();
    let first = futures::future::join_all(masters.iter().map(|m| ask_status(&client, *m))).await;
    for s in first.into_iter().flatten().flatten() {
        addrs.extend(s.nodes.values().cloned());
    }
    let answers = futures::future::join_all(addrs.iter().map(|addr| {
        let client = &client;
        async move {
            match addr.parse::<SocketAddr>() {
                Err(e) => Err(e),
                Ok(a) => Ok(ask_status(client, a).await),
            }
        }
    }))
    .await;
    let mut rows = Vec::new();
    for (addr, answer) in addrs.iter().zip(answers) {
        let row = match answer {
            Err(e) => Row {
                id: None,
                addr: addr.clone(),
                healthy: false,
                status: None,
                lag: None,
                error: Some(e.to_string()),
            },
            Ok(answer) => match answer {
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
        crate::say!(
            "ID   ADDRESS                STATE      TERM  LEADER   LAST LOG    APPLIED    LAG  HEALTH"
        );
        for r in &rows {
            let dash = || "-".to_string();
            let s = r.status.as_ref();
            crate::say!(
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
        crate::say!("group: {}", if healthy { "healthy" } else { "UNHEALTHY" });
    }
    let (data, repair) = if healthy {
        // A master of an older release has no repair progress to give: it is left out.
        let (d, r) = tokio::join!(
            client.call_leader::<DataStatusRpc, _>(&()),
            client.call_leader::<DataRepairRpc, _>(&())
        );
        (d.ok(), r.ok())
    } else {
        (None, None)
    };
    if json {
        let out = serde_json::json!({"healthy": healthy, "members": rows, "data": data, "repair": repair});
        crate::say!("{}", serde_json::to_string_pretty(&out)?);
    } else if let Some(d) = &data {
        print_data_status(d);
        if let Some(r) = &repair {
            crate::say!("{}", repair_line(r));
        }
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
    let group = group_status(&client, masters).await?;
    if group.voters.contains(&id) || group.learners.contains(&id) {
        let at = group.nodes.get(&id).map_or("", String::as_str);
        return Err(Refused(format!(
            "master {id} is already a member of the group (at {at}); nothing changed. \
             To move it, remove it first: cairn admin cluster remove-master --id {id}"
        ))
        .into());
    }
    if let Some((other, _)) = group
        .nodes
        .iter()
        .find(|(_, a)| a.parse::<SocketAddr>().ok() == Some(addr))
    {
        return Err(Refused(format!(
            "{addr} is already the address of master {other}; nothing changed"
        ))
        .into());
    }
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
    crate::say!("master {id} at {addr} added and promoted to voter");
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
    crate::say!("master {id} removed");
    Ok(())
}

/// A chunkserver id as `admin status` prints it.
fn server_id(s: &str) -> anyhow::Result<u64> {
    u64::from_str_radix(s.trim(), 16).with_context(|| {
        format!("{s:?} is not a chunkserver id (16 hex digits, from `cairn admin status`)")
    })
}

/// Commit one settings change.
async fn set_setting(client: &MasterClient, c: SettingsCommand) -> anyhow::Result<()> {
    let mut seed = [0u8; 16];
    rand::fill(&mut seed);
    let bytes = ClusterSettings::command(&c, cairn_master::dataplane::wall_ms(), seed)?.encode();
    match client.propose(bytes).await? {
        Ok(_) => Ok(()),
        Err(r) => bail!("refused: {}", r.message),
    }
}

async fn data_status(client: &MasterClient) -> anyhow::Result<DataStatus> {
    client
        .call_leader::<DataStatusRpc, _>(&())
        .await
        .context("data-plane status from the leader")
}

/// An admin client, the id of a chunkserver the leader knows, and the data-plane status.
async fn known_server(
    tls: &Path,
    masters: &[SocketAddr],
    server: &str,
) -> anyhow::Result<(MasterClient, u64, DataStatus)> {
    let id = server_id(server)?;
    let client = admin_client(tls, masters)?;
    let status = data_status(&client).await?;
    if !status.servers.iter().any(|s| s.info.id == id) {
        bail!("no chunkserver {id:016x} is known to the leader (see `cairn admin status`)");
    }
    Ok((client, id, status))
}

/// `cairn admin drain`: mark (or unmark) a chunkserver as draining.
pub async fn drain(
    tls: &Path,
    masters: &[SocketAddr],
    server: &str,
    cancel: bool,
) -> anyhow::Result<()> {
    let (client, id, _) = known_server(tls, masters, server).await?;
    let key = format!("{}{id:016x}", cairn_master::dataplane::DRAIN_PREFIX);
    if cancel {
        set_setting(&client, SettingsCommand::Delete { key }).await?;
        crate::say!("chunkserver {id:016x} takes chunks again");
    } else {
        set_setting(
            &client,
            SettingsCommand::Set {
                key,
                value: "1".into(),
            },
        )
        .await?;
        crate::say!(
            "chunkserver {id:016x} is draining: its chunks are being copied to the others (watch CHUNKS fall to 0 in `cairn admin status`)"
        );
    }
    Ok(())
}

/// `cairn admin set-zone`.
pub async fn set_zone(
    tls: &Path,
    masters: &[SocketAddr],
    server: &str,
    zone: Option<String>,
    clear: bool,
) -> anyhow::Result<()> {
    let (client, id, _) = known_server(tls, masters, server).await?;
    let key = format!("{}{id:016x}", cairn_master::dataplane::ZONE_PREFIX);
    match (zone, clear) {
        (_, true) => {
            set_setting(&client, SettingsCommand::Delete { key }).await?;
            crate::say!("chunkserver {id:016x} is in the zone it reports again");
        }
        (Some(z), false) => {
            let ok = !z.is_empty()
                && z.len() <= 64
                && z.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                bail!("{z:?} is not a zone name (1-64 letters, digits, '.', '_', '-')");
            }
            set_setting(
                &client,
                SettingsCommand::Set {
                    key,
                    value: z.clone(),
                },
            )
            .await?;
            crate::say!("chunkserver {id:016x} is in zone {z}");
        }
        (None, false) => bail!("name a zone, or pass --clear"),
    }
    Ok(())
}

/// `cairn admin rebalance --pause | --resume`.
pub async fn rebalance(tls: &Path, masters: &[SocketAddr], pause: bool) -> anyhow::Result<()> {
    let client = admin_client(tls, masters)?;
    let key = cairn_master::dataplane::REBALANCE_PAUSED.to_owned();
    if pause {
        set_setting(
            &client,
            SettingsCommand::Set {
                key,
                value: "1".into(),
            },
        )
        .await?;
        crate::say!("rebalancing paused (healing and drains go on)");
    } else {
        set_setting(&client, SettingsCommand::Delete { key }).await?;
        crate::say!("rebalancing resumed");
    }
    Ok(())
}

/// `cairn admin decommission`: retire a drained chunkserver.
pub async fn decommission(tls: &Path, masters: &[SocketAddr], server: &str) -> anyhow::Result<()> {
    let (client, id, status) = known_server(tls, masters, server).await?;
    let Some(s) = status.servers.iter().find(|s| s.info.id == id) else {
        bail!("chunkserver {id:016x} vanished from the leader's view");
    };
    if !s.draining {
        bail!("chunkserver {id:016x} is not draining: run `cairn admin drain {id:016x}` first");
    }
    if s.chunks > 0 || status.under_replicated > 0 || status.copies_in_flight > 0 {
        bail!(
            "chunkserver {id:016x} is not drained yet: it holds {} chunks; {} chunks are under-replicated and {} copies are running",
            s.chunks,
            status.under_replicated,
            status.copies_in_flight
        );
    }
    set_setting(
        &client,
        SettingsCommand::Set {
            key: format!("{}{id:016x}", cairn_master::dataplane::RETIRED_PREFIX),
            value: "1".into(),
        },
    )
    .await?;
    crate::say!(
        "chunkserver {id:016x} holds no chunk and is retired: stop it and remove its data folder"
    );
    Ok(())
}

/// The group as the first master that answers sees it.
async fn group_status(client: &MasterClient, masters: &[SocketAddr]) -> anyhow::Result<NodeStatus> {
    for m in masters {
        if let Ok(s) = client.status(*m).await {
            return Ok(s);
        }
    }
    bail!("no master answered at {masters:?}")
}

async fn current_voters(client: &MasterClient, masters: &[SocketAddr]) -> anyhow::Result<Vec<u64>> {
    Ok(group_status(client, masters).await?.voters)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / f64::from(1u32 << 20))
}

/// One line on re-replication and rebalancing: what is left, how fast it goes, when it ends.
pub fn repair_line(r: &RepairProgress) -> String {
    let done = format!(
        "{} replicas ({}) copied since this leader took over",
        r.copied_replicas,
        mib(r.copied_bytes as f64)
    );
    if r.remaining_replicas == 0 {
        return format!("repair: nothing to copy; {done}");
    }
    let rate = if r.bytes_per_sec > 0.0 {
        format!(
            "{}/s, {:.1} replicas/s",
            mib(r.bytes_per_sec),
            r.replicas_per_sec
        )
    } else {
        "no copy landed in the last 10 s".to_string()
    };
    let eta = r
        .eta_secs
        .map_or_else(|| "unknown".to_string(), |s| format!("~{s} s"));
    format!(
        "repair: {} replicas ({}) to copy, {} running; {rate}; done in {eta}; {done}",
        r.remaining_replicas,
        mib(r.remaining_bytes as f64),
        r.copies_running,
    )
}

fn print_data_status(d: &DataStatus) {
    crate::say!();
    crate::say!(
        "CHUNKSERVER       ADDRESS                ZONE       STATE   CHUNKS        DATA        FREE    CAPACITY  LOAD"
    );
    for s in &d.servers {
        crate::say!(
            "{:016x}  {:<22} {:<10} {:<7} {:>6} {:>11} {:>11} {:>11} {:>5}",
            s.info.id,
            s.info.addr,
            s.info.zone.as_deref().unwrap_or("-"),
            match (s.alive, s.draining, s.chunks) {
                (false, _, _) => "DEAD",
                (true, true, 0) => "drained",
                (true, true, _) => "drain",
                (true, false, _) => "alive",
            },
            s.chunks,
            gib(s.bytes),
            gib(s.info.free),
            gib(s.info.capacity),
            s.info.load,
        );
    }
    let alive = d.servers.iter().filter(|s| s.alive).count();
    crate::say!(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Masters 1 to 5 stand for election in windows of their own, at least 0.2x the setting
    /// apart counting openraft's lease (the window's maximum) before each.
    #[test]
    fn each_master_id_has_an_election_window_of_its_own() {
        let e = Duration::from_millis(250);
        let fire = |id| {
            let (min, max) = election_window(e, id);
            (max + min, max + max)
        };
        assert_eq!(
            election_window(e, 1),
            (Duration::from_millis(250), Duration::from_millis(350))
        );
        assert_eq!(
            fire(1),
            (Duration::from_millis(600), Duration::from_millis(700))
        );
        assert_eq!(
            fire(2),
            (Duration::from_millis(900), Duration::from_millis(1000))
        );
        for id in 1..ELECTION_SLOTS {
            assert!(fire(id + 1).0 >= fire(id).1 + e / 5, "{id}");
        }
        assert_eq!(election_window(e, 6), election_window(e, 1));
        assert_eq!(election_window(e, 0), election_window(e, 1));
    }

    #[test]
    fn the_repair_line_says_what_is_left_how_fast_and_when() {
        let idle = RepairProgress {
            copied_replicas: 3,
            copied_bytes: 3 << 20,
            ..RepairProgress::default()
        };
        assert_eq!(
            repair_line(&idle),
            "repair: nothing to copy; 3 replicas (3.0 MiB) copied since this leader took over"
        );
        let busy = RepairProgress {
            remaining_replicas: 12,
            remaining_bytes: 48 << 20,
            copies_running: 4,
            replicas_per_sec: 2.5,
            bytes_per_sec: f64::from(10u32 << 20),
            eta_secs: Some(5),
            copied_replicas: 0,
            copied_bytes: 0,
        };
        assert_eq!(
            repair_line(&busy),
            "repair: 12 replicas (48.0 MiB) to copy, 4 running; 10.0 MiB/s, 2.5 replicas/s; \
             done in ~5 s; 0 replicas (0.0 MiB) copied since this leader took over"
        );
        let stalled = RepairProgress {
            bytes_per_sec: 0.0,
            eta_secs: None,
            ..busy
        };
        assert!(repair_line(&stalled).contains("no copy landed in the last 10 s; done in unknown"));
    }
}
