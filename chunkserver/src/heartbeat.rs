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
                Ok(mut reply) => {
                    if failing > 0 {
                        tracing::info!(failed = failing, "heartbeats reach the leader again");
                    }
                    failing = 0;
                    // Fencing: a master of an older term than one already heard from was
                    // deposed; what it planned is not carried out, and what it was told is
                    // sent again in full to the leader.
                    let newest = self.inner.term.fetch_max(reply.term, Ordering::SeqCst);
                    let stale = reply.term < newest;
                    if stale && !reply.tasks.is_empty() {
                        tracing::warn!(
                            term = reply.term,
                            newest,
                            refused = reply.tasks.len(),
                            "refused instructions from a master of an older term"
                        );
                        reply.tasks.clear();
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
                            cs.inner.copies_running.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(async move {
                                cs.run_task(task).await;
                                cs.inner.copies_running.fetch_sub(1, Ordering::SeqCst);
                                // Report it now: the master plans the next copy when it hears.
                                cs.inner.wake.notify_one();
                            });
                        }
                    }
                    reported = if reply.full_report || stale {
                        None
                    } else {
                        Some(now)
                    };
                    if reply.full_report && !stale {
                        continue;
                    }
                }
                Err(e) => {
                    failing += 1;
                    tracing::warn!(
                        error = %e,
                        failed_in_a_row = failing,
                        retry_in = ?retry_pause(self.inner.options.heartbeat, failing),
                        "heartbeat failed"
                    );
                    self.inner.corrupt.lock().extend(corrupt);
                    self.inner.copies_failed.lock().extend(copies_failed);
                    reported = None;
                }
            }
            let mut pause = retry_pause(self.inner.options.heartbeat, failing);
            if failing == 0 && self.inner.copies_running.load(Ordering::SeqCst) > 0 {
                pause = pause.min(BUSY_BEAT);
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.inner.wake.notified(), if failing == 0 => {}
            }
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

/// The pause before the next heartbeat after `failing` failures in a row: the interval, then
/// doubling up to the larger of the interval and 5 s, so a node that cannot reach the masters
/// (down, unreachable, or refusing its certificate) backs off instead of hammering them.
fn retry_pause(interval: Duration, failing: u64) -> Duration {
    if failing == 0 {
        return interval;
    }
    let cap = interval.max(RETRY_PAUSE_MAX);
    let doubled = interval.saturating_mul(1u32 << (failing - 1).min(16) as u32);
    doubled.min(cap)
}

/// The heartbeat interval while copies run (repair and rebalancing): finished copies are
/// reported at once anyway; this picks up the copies planned meanwhile.
const BUSY_BEAT: Duration = Duration::from_millis(200);

/// The longest pause between failed heartbeats.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_heartbeats_back_off_up_to_a_cap() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let pauses: Vec<Duration> = (0..6).map(|f| retry_pause(s(1), f)).collect();
        assert_eq!(pauses, vec![s(1), s(1), s(2), s(4), s(5), s(5)]);
        assert_eq!(retry_pause(ms(300), 3), ms(1200));
        assert_eq!(retry_pause(ms(300), 60), s(5));
        // An interval above the cap is kept.
        assert_eq!(retry_pause(s(10), 3), s(10));
    }
}
