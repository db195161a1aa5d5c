//! `cairn serve`: the all-in-one role: a one-master group, one or more chunkservers and the S3
//! gateway in one process on one data folder.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use cairn_chunkserver::Chunkserver;
use cairn_master::DataPlane;
use cairn_raft::RaftNode;
use serde_json::json;

use crate::config::ServeConfig;
use crate::lock::DataLock;

/// Everything the running process holds; the one place the roles are wired together.
#[derive(Debug)]
pub struct Node {
    /// The in-process master: a one-node Raft group (`DATA/master/`), the same code path as
    /// `cairn master`, with its data-plane service.
    pub master: RaftNode,
    pub plane: DataPlane,
    /// The in-process chunkserver (`DATA/chunks/`), reporting to the master over QUIC like any
    /// other.
    pub chunkserver: Chunkserver,
    /// More in-process chunkservers with `--chunkservers N` (`DATA/chunkservers/<i>/`).
    pub more_chunkservers: Vec<Chunkserver>,
    pub gateway: Arc<cairn_api::Gateway>,
}

impl Node {
    /// Start the in-process master, then the chunkserver (which recovers the chunk files a
    /// crash left behind).
    pub async fn open(data: &Path, config: &ServeConfig) -> anyhow::Result<Node> {
        let n = config.chunkservers;
        let replication = config.replication.unwrap_or(n.min(3));
        if replication > n {
            anyhow::bail!(
                "replication {replication} needs at least {replication} chunkservers; this serve runs {n} (--chunkservers)"
            );
        }
        let (master, plane) = crate::master::start_node(
            config.master_id,
            data,
            config.cluster_listen,
            "node-1",
            crate::master::raft_options(config),
            crate::master::data_options(config, replication),
        )
        .await?;
        let tls = data.join("tls");
        let identity = cairn_proto::NodeIdentity::load(&tls)?;
        // Data folders from before the gateway have a CA but no secrets key yet.
        if cairn_proto::ClusterCa::exists(&tls) {
            cairn_proto::SecretsKey::ensure(&tls).context("the cluster secrets key")?;
        }
        let mut options = crate::chunkserver::options(config);
        options.masters = vec![master.addr];
        options.listen = std::net::SocketAddr::new(config.cluster_listen.ip(), 0);
        let chunkserver = Chunkserver::start(data, &identity, options.clone())
            .await
            .with_context(|| format!("open chunk store in {}", data.display()))?;
        let mut more_chunkservers = Vec::new();
        for i in 2..=n {
            let dir = data.join("chunkservers").join(i.to_string());
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let cs = Chunkserver::start(&dir, &identity, options.clone())
                .await
                .with_context(|| format!("open chunk store in {}", dir.display()))?;
            more_chunkservers.push(cs);
        }
        let mut local = vec![chunkserver.clone()];
        local.extend(more_chunkservers.iter().cloned());
        let gateway = crate::gateway::build(
            &tls,
            config.gateway_cluster_bind,
            &[master.addr],
            Some(master.clone()),
            &local,
            crate::gateway::options(config),
            crate::gateway::smtp(config),
        )?;
        Ok(Node {
            master,
            plane,
            chunkserver,
            more_chunkservers,
            gateway,
        })
    }

    /// Flush and close the stores.
    pub async fn close(self) -> anyhow::Result<()> {
        for cs in self.more_chunkservers {
            cs.shutdown().await;
        }
        self.chunkserver.shutdown().await;
        self.master.shutdown().await;
        Ok(())
    }
}

async fn ready(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let checked = tokio::task::spawn_blocking(move || {
        let check = |r: Result<(), String>| match r {
            Ok(()) => json!({"status": "ok"}),
            Err(e) => json!({"status": "down", "error": e}),
        };
        let chunk = node.chunkserver.store().check().map_err(|e| e.to_string());
        let state = node.master.state.store().check().map_err(|e| e.to_string());
        let status = node.master.status();
        let master = match status.leader {
            Some(_) => Ok(()),
            None => Err(format!("no leader (state {}, term {})", status.state, status.term)),
        };
        let data = match node.plane.status() {
            Ok(d) if d.servers.iter().any(|s| s.alive) => Ok(()),
            Ok(_) => Err("no chunkserver has reported yet".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let all_ok = chunk.is_ok() && state.is_ok() && master.is_ok() && data.is_ok();
        (
            all_ok,
            json!({"chunk_store": check(chunk), "state_store": check(state), "master": check(master), "data_plane": check(data)}),
        )
    })
    .await;
    match checked {
        Ok((true, checks)) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "checks": checks})),
        ),
        Ok((false, checks)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "checks": checks})),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "error": "readiness check failed"})),
        ),
    }
}

/// The gateway's router (S3, `/health`, `/metrics`) with this process's fuller readiness
/// check (stores, master, data plane).
pub fn router(node: Arc<Node>) -> Router {
    cairn_api::router(node.gateway.clone(), Some(get(ready).with_state(node)))
}

pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let data = config.data.clone();
    std::fs::create_dir_all(&data)
        .with_context(|| format!("create data folder {}", data.display()))?;
    let lock = DataLock::acquire(&data)?;
    tracing::debug!(lock = %lock.path().display(), "data folder locked");
    let node = Arc::new(Node::open(&data, &config).await?);

    let (listener, addr) = crate::gateway::bind(config.listen).await?;
    let url = format!("http://{addr}");
    crate::gateway::ensure_root_key(&node.gateway, &url).await?;
    tracing::info!(data = %data.display(), "S3 endpoint listening on {url}");
    crate::gateway::serve_http(listener, router(node.clone())).await?;

    // Connection tasks drop their handles on the node just after the server returns: wait for
    // them (bounded), so the stores are closed by their owner, not at process exit.
    let mut node = node;
    let mut waited = 0;
    let node = loop {
        match Arc::try_unwrap(node) {
            Ok(n) => break Some(n),
            Err(shared) if waited < 500 => {
                node = shared;
                waited += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(shared) => {
                tracing::warn!("requests still hold the stores at shutdown; syncing them in place");
                for cs in &shared.more_chunkservers {
                    cs.shutdown().await;
                }
                shared.chunkserver.shutdown().await;
                shared.master.shutdown().await;
                break None;
            }
        }
    };
    if let Some(node) = node {
        node.close().await?;
    }
    drop(lock);
    tracing::info!("shutdown complete");
    Ok(())
}
