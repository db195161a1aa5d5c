//! `cairn serve`: the all-in-one role. Today it opens the engine's stores in the data folder and
//! serves health and readiness; later issues add the master, chunkserver and S3 gateway here.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use cairn_engine::chunk::ChunkStore;
use cairn_raft::RaftNode;
use serde_json::json;

use crate::config::ServeConfig;
use crate::lock::DataLock;

/// Everything the running process holds; the one place the roles are wired together.
#[derive(Debug)]
pub struct Node {
    /// Chunk files (`DATA/chunks/`).
    pub chunks: ChunkStore,
    /// The in-process master: a one-node Raft group (`DATA/master/`), the same code path as
    /// `cairn master`.
    pub master: RaftNode,
}

impl Node {
    /// Open the engine stores in `data`, recovering what a crash left behind, and start the
    /// in-process master.
    pub async fn open(data: &Path, config: &ServeConfig) -> anyhow::Result<Node> {
        let chunk_dir = data.join("chunks");
        let chunk_options = config.chunks;
        let (chunks, report) =
            tokio::task::spawn_blocking(move || ChunkStore::open(chunk_dir, chunk_options))
                .await?
                .with_context(|| format!("open chunk store in {}", data.display()))?;
        if report.is_clean() {
            tracing::info!(chunks = report.chunks, "chunk store open");
        } else {
            tracing::warn!(
                chunks = report.chunks,
                truncated = report.truncated.len(),
                quarantined = report.quarantined.len(),
                damaged_records = report.damaged_records.len(),
                "chunk store recovered damage (details above)"
            );
        }
        let master = crate::master::start_node(
            config.master_id,
            data,
            config.cluster_listen,
            "node-1",
            config.snapshot_after_entries,
        )
        .await?;
        Ok(Node { chunks, master })
    }

    /// Flush and close the stores.
    pub async fn close(self) -> anyhow::Result<()> {
        self.master.shutdown().await;
        tokio::task::spawn_blocking(move || self.chunks.close())
            .await?
            .context("sync chunk store")?;
        Ok(())
    }
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn ready(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let checked = tokio::task::spawn_blocking(move || {
        let check = |r: Result<(), String>| match r {
            Ok(()) => json!({"status": "ok"}),
            Err(e) => json!({"status": "down", "error": e}),
        };
        let chunk = node.chunks.check().map_err(|e| e.to_string());
        let state = node.master.state.store().check().map_err(|e| e.to_string());
        let status = node.master.status();
        let master = match status.leader {
            Some(_) => Ok(()),
            None => Err(format!("no leader (state {}, term {})", status.state, status.term)),
        };
        let all_ok = chunk.is_ok() && state.is_ok() && master.is_ok();
        (
            all_ok,
            json!({"chunk_store": check(chunk), "state_store": check(state), "master": check(master)}),
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

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no such route"})),
    )
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(not_found)
        .with_state(node)
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        }
        () = term => {}
    }
    tracing::info!("shutdown requested");
}

pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let data = config.data.clone();
    std::fs::create_dir_all(&data)
        .with_context(|| format!("create data folder {}", data.display()))?;
    let lock = DataLock::acquire(&data)?;
    tracing::debug!(lock = %lock.path().display(), "data folder locked");
    let node = Arc::new(Node::open(&data, &config).await?);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("read the bound address")?;
    tracing::info!(data = %data.display(), "listening on http://{addr}");

    axum::serve(listener, router(node.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server")?;

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
                shared.master.shutdown().await;
                shared.chunks.sync_all().context("sync chunk store")?;
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
