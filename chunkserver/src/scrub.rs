//! The scrubber: every sealed chunk re-verified at a bounded rate; a corrupt replica is
//! dropped and reported.

use std::time::Duration;

use cairn_engine::chunk::ChunkError;

use crate::server::Chunkserver;

impl Chunkserver {
    /// Re-verify every sealed chunk at the configured rate, forever.
    pub(crate) async fn scrub(&self) {
        let rate = self.inner.options.scrub_rate.max(1);
        loop {
            // Only sealed chunks that no transfer holds. A pass that finds none must still
            // sleep: this loop once spun without an await while the store held only chunks
            // being written, which pinned a runtime worker (and the timers that worker
            // owned, the heartbeat's among them) until the process was restarted.
            let chunks = self.settled();
            if chunks.is_empty() {
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            for info in chunks {
                if self.inner.busy.lock().contains(&info.handle) {
                    tokio::task::yield_now().await;
                    continue;
                }
                let inner = self.inner.clone();
                let handle = info.handle;
                match tokio::task::spawn_blocking(move || inner.store.verify(handle)).await {
                    Ok(Err(ChunkError::Corrupt { block, .. })) => {
                        tracing::error!(chunk = %handle, block, "scrubber found a corrupt block");
                        self.drop_corrupt(handle).await;
                    }
                    Ok(Err(ChunkError::NotFound { .. })) | Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(chunk = %handle, error = %e, "scrub read failed"),
                    Err(e) => tracing::warn!(error = %e, "scrub task failed"),
                }
                let pause = Duration::from_secs_f64(info.len as f64 / rate as f64);
                tokio::time::sleep(pause.max(Duration::from_millis(1))).await;
            }
        }
    }
}
