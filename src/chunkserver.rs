//! The chunkserver role (`cairn chunkserver`).

use std::time::Duration;

use anyhow::{Context, bail};
use cairn_chunkserver::{Chunkserver, ChunkserverOptions};
use cairn_proto::NodeIdentity;

use crate::config::ServeConfig;
use crate::lock::DataLock;

/// The chunkserver options in a configuration.
pub fn options(config: &ServeConfig) -> ChunkserverOptions {
    let store = config.chunks;
    ChunkserverOptions {
        listen: config.cluster_listen,
        masters: config.masters.clone(),
        zone: config.zone.clone(),
        heartbeat: Duration::from_millis(config.heartbeat_ms),
        scrub_rate: config.scrub_rate,
        copy_rates: cairn_chunkserver::CopyRates {
            idle: config.repair_rate,
            busy: config.repair_rate_busy,
        },
        store,
    }
}

/// `cairn chunkserver`: serve chunks until SIGINT/SIGTERM.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    if config.masters.is_empty() {
        bail!(
            "no master given: use --master ADDR (repeatable), CAIRN_CHUNKSERVER_MASTERS or chunkserver.masters"
        );
    }
    let data = config.data.clone();
    std::fs::create_dir_all(&data)
        .with_context(|| format!("create data folder {}", data.display()))?;
    let _lock = DataLock::acquire(&data)?;
    let tls = data.join("tls");
    let identity = NodeIdentity::load(&tls).with_context(|| {
        format!(
            "cluster credentials in {} (issue them on the CA holder with `cairn cluster issue-cert --name NAME --out DIR` and copy DIR to {})",
            tls.display(),
            tls.display()
        )
    })?;
    let cs = Chunkserver::start(&data, &identity, options(&config))
        .await
        .context("start chunkserver")?;
    crate::signal::shutdown_signal().await;
    cs.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}
