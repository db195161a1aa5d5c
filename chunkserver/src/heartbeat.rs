//! Heartbeats: what this server reports to the master leader every interval (itself, its
//! replicas, what changed), and the tasks the leader answers with.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_engine::chunk::{ChunkError, ChunkInfo};
use cairn_proto::dataplane::{Heartbeat, HeartbeatRpc, Replica, ServerInfo, Task};

use crate::server::{Chunkserver, stored, wire};

/// Heartbeats between two full replica reports.
pub(crate) const FULL_REPORT_EVERY: u64 = 300;

impl Chunkserver {
    pub(crate) fn info(&self) -> ServerInfo {
        let (capacity, free) = match rustix::fs::statvfs(&self.inner.root) {
            Ok(s) => (
                s.f_blocks.saturating_mul(s.f_frsize),
                s.f_bavail.saturating_mul(s.f_frsize),
            ),
            Err(_) => (0, 0),
        };
        ServerInfo {
            id: self.inner.id,
            addr: self.me(),
            zone: self.inner.options.zone.clone(),
            capacity,
            free,
            load: self.inner.load.load(Ordering::Relaxed),
        }
    }

    /// The sealed chunks no transfer holds (a chunk being written or copied is neither
    /// reported nor scrubbed).
    pub(crate) fn settled(&self) -> Vec<ChunkInfo> {
        let busy = self.inner.busy.lock().clone();
        self.inner
            .store
            .list()
            .into_iter()
            .filter(|i| i.sealed && !busy.contains(&i.handle))
            .collect()
    }

    pub(crate) fn replicas(&self) -> HashMap<cairn_proto::ChunkHandle, Replica> {
        self.settled()
            .into_iter()
            .map(|i| {
                (
                    wire(i.handle),
                    Replica {
                        handle: wire(i.handle),
                        version: i.version,
                        len: i.len,
                        sealed: i.sealed,
                    },
                )
            })
            .collect()
    }

    pub(crate) fn since_start_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A chunkserver that serves chunks but no longer heartbeats is dead to the master while
    /// it looks alive to a supervisor. If the heartbeat loop panics, exit (status 70) so the
    /// supervisor restarts the process; if it stops finishing calls, say so every minute.
    pub(crate) async fn watch_heartbeats(&self, mut beats: tokio::task::JoinHandle<()>) {
        const STALL_MS: u64 = 30_000;
        let mut warned_at: Option<u64> = None;
        loop {
            tokio::select! {
                ended = &mut beats => {
                    if let Err(e) = ended
                        && e.is_panic()
                    {
                        tracing::error!(error = %e, "the heartbeat loop panicked; exiting so that the chunkserver is restarted");
                        std::process::exit(70);
                    }
                    return;
                }
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            let now = self.since_start_ms();
            let last = self.inner.last_beat_ms.load(Ordering::Relaxed);
            let stalled = now.saturating_sub(last);
            if stalled > STALL_MS && warned_at.is_none_or(|at| now.saturating_sub(at) >= 60_000) {
                warned_at = Some(now);
                tracing::warn!(
                    stalled_s = stalled / 1000,
                    "no heartbeat call has finished for a while (the masters unreachable, or the heartbeat loop stuck)"
                );
            }
        }
    }

    /// Report to the master group every interval and carry out what it answers.
    pub(crate) async fn heartbeats(&self) {
        let mut reported: Option<HashMap<cairn_proto::ChunkHandle, Replica>> = None;
        let mut beats: u64 = 0;
        // Heartbeats failed in a row: the first failure and every 20th after it are warned of.
        let mut failing: u64 = 0;
        loop {
            beats += 1;
            // A full report now and then repairs anything a lost reply left the master
            // believing (its map is soft state).
            if beats.is_multiple_of(FULL_REPORT_EVERY) {
                reported = None;
            }
            let mut now = self.replicas();
            let corrupt = std::mem::take(&mut *self.inner.corrupt.lock());
            let copies_failed = std::mem::take(&mut *self.inner.copies_failed.lock());
            // The master forgets a corrupt replica; if a fresh copy is here again by now, it
            // must be reported as new.
            let rereport = std::mem::take(&mut *self.inner.rereport.lock());
            if let Some(before) = reported.as_mut() {
                for h in corrupt.iter().chain(&rereport) {
                    before.remove(&wire(*h));
                }
            }
            let (full, replicas, removed) = match &reported {
                None => (true, now.values().copied().collect(), Vec::new()),
                Some(before) => (
                    false,
                    now.values()
                        .filter(|r| before.get(&r.handle) != Some(*r))
                        .copied()
                        .collect(),
                    before
                        .keys()
                        .filter(|h| !now.contains_key(h))
                        .copied()
                        .collect(),
                ),
            };
            let hb = Heartbeat {
                server: self.info(),
                full,
                replicas,
                removed,
                corrupt: corrupt.iter().copied().map(wire).collect(),
                copies_failed: copies_failed.iter().copied().map(wire).collect(),
            };
            let answer = self.inner.master.call::<HeartbeatRpc, _>(&hb).await;
            self.inner
                .last_beat_ms
                .store(self.since_start_ms(), Ordering::Relaxed);
            match answer {
                Ok(reply) => {
                    if failing > 0 {
                        tracing::info!(failed = failing, "heartbeats reach the leader again");
                    }
                    failing = 0;
                    // Fencing: a master of an older term than one already heard from was
                    // deposed; what it planned is not carried out.
                    let newest = self.inner.term.fetch_max(reply.term, Ordering::SeqCst);
                    if reply.term < newest {
                        if !reply.tasks.is_empty() {
                            tracing::warn!(
                                term = reply.term,
                                newest,
                                refused = reply.tasks.len(),
                                "refused instructions from a master of an older term"
                            );
                        }
                        reported = None;
                        tokio::time::sleep(self.inner.options.heartbeat).await;
                        continue;
                    }
                    if !reply.tasks.is_empty() {
                        tracing::info!(
                            term = reply.term,
                            tasks = reply.tasks.len(),
                            "carrying out the master's instructions"
                        );
                    }
                    // In order: deletions (quick) before copies, so a deletion never races a
                    // copy of the same chunk.
                    for task in reply.tasks {
                        if let Task::Delete { handle } = task {
                            // The master dropped it from its map when it planned this: a copy
                            // arriving later must be reported as new.
                            now.remove(&handle);
                            self.run_task(task).await;
                        } else {
                            let cs = self.clone();
                            tokio::spawn(async move { cs.run_task(task).await });
                        }
                    }
                    reported = if reply.full_report { None } else { Some(now) };
                    if reply.full_report {
                        continue;
                    }
                }
                Err(e) => {
                    if failing.is_multiple_of(20) {
                        tracing::warn!(error = %e, failed_in_a_row = failing + 1, "heartbeat failed");
                    } else {
                        tracing::debug!(error = %e, "heartbeat failed");
                    }
                    failing += 1;
                    self.inner.corrupt.lock().extend(corrupt);
                    self.inner.copies_failed.lock().extend(copies_failed);
                    reported = None;
                }
            }
            tokio::time::sleep(self.inner.options.heartbeat).await;
        }
    }

    pub(crate) async fn run_task(&self, task: Task) {
        match task {
            Task::Delete { handle } => {
                let handle = stored(handle);
                if self.inner.busy.lock().contains(&handle) {
                    return;
                }
                let inner = self.inner.clone();
                match tokio::task::spawn_blocking(move || inner.store.delete(handle)).await {
                    Ok(Ok(())) => tracing::info!(chunk = %handle, "replica deleted"),
                    Ok(Err(ChunkError::NotFound { .. })) => {}
                    Ok(Err(e)) => tracing::warn!(chunk = %handle, error = %e, "delete failed"),
                    Err(e) => tracing::warn!(chunk = %handle, error = %e, "delete failed"),
                }
            }
            Task::Copy {
                handle,
                version,
                from,
            } => match self.copy_from(stored(handle), version, &from).await {
                Ok(()) => {
                    tracing::info!(chunk = %handle, %from, "replica copied");
                    self.inner.rereport.lock().push(stored(handle));
                }
                Err(e) => {
                    tracing::warn!(chunk = %handle, %from, error = %e, "copy failed");
                    self.inner.copies_failed.lock().push(stored(handle));
                }
            },
        }
    }
}
