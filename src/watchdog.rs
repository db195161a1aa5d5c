//! A watchdog for the async runtime of a long-running role.
//!
//! A task that never awaits pins the worker it runs on, and on a small machine that is the whole
//! runtime: no timer fires, no socket is read, and the node looks alive to the kernel while it
//! does nothing. The fault suite met exactly that (a scrubber loop without an await). Any such
//! bug is fixed where it is; this is the net under them: a task on the runtime ticks a counter,
//! and a plain OS thread, which no runtime bug can stop, checks that the counter moves. When it
//! has not moved for [`STALL`] the process logs why and exits with status 70, so that its
//! supervisor restarts it: every acknowledged write is already on disk, and a restarted node
//! serves again, where a stalled one never would.
//!
//! A process stopped by a signal (SIGSTOP, a debugger) or a suspended machine is not a stall:
//! the watching thread is stopped too, and a gap in its own wakeups tells it so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the runtime may run no timer before the process is counted stalled.
pub const STALL: Duration = Duration::from_secs(30);
/// How often the runtime ticks and the watcher looks.
const INTERVAL: Duration = Duration::from_secs(1);

/// What the watcher concludes from one look. Pure, so it is tested without threads.
#[derive(Debug)]
pub struct Watch {
    stall: Duration,
    interval: Duration,
    /// The last tick count seen, and when it last changed (or when watching resumed).
    ticks: u64,
    moved_at: Instant,
    /// When the watcher last looked.
    looked_at: Instant,
}

impl Watch {
    pub fn new(now: Instant, stall: Duration, interval: Duration) -> Watch {
        Watch {
            stall,
            interval,
            ticks: 0,
            moved_at: now,
            looked_at: now,
        }
    }

    /// One look at the tick counter: `Some(how long)` when the runtime has been stalled past
    /// the limit.
    pub fn look(&mut self, now: Instant, ticks: u64) -> Option<Duration> {
        let since_look = now.saturating_duration_since(self.looked_at);
        self.looked_at = now;
        // The watcher itself did not run for a while: the whole process was stopped (or the
        // machine was). The runtime had no chance either; start counting again.
        if since_look > self.interval * 5 {
            self.ticks = ticks;
            self.moved_at = now;
            return None;
        }
        if ticks != self.ticks {
            self.ticks = ticks;
            self.moved_at = now;
            return None;
        }
        let still = now.saturating_duration_since(self.moved_at);
        (still >= self.stall).then_some(still)
    }
}

/// Watching stops when this is dropped: once the role's work has returned, the runtime's
/// own shutdown (which stops the ticker and waits for blocking tasks) is not a stall.
#[derive(Debug)]
pub struct Watching {
    off: Arc<AtomicBool>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.off.store(true, Ordering::Relaxed);
    }
}

/// Start watching the runtime `handle` belongs to; `role` names the process in the log.
pub fn start(handle: &tokio::runtime::Handle, role: &'static str) -> Watching {
    let off = Arc::new(AtomicBool::new(false));
    let watching = Watching { off: off.clone() };
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = ticks.clone();
    handle.spawn(async move {
        let mut every = tokio::time::interval(INTERVAL);
        loop {
            every.tick().await;
            ticker.fetch_add(1, Ordering::Relaxed);
        }
    });
    let spawned = std::thread::Builder::new()
        .name("cairn-watchdog".into())
        .spawn(move || {
            let mut watch = Watch::new(Instant::now(), STALL, INTERVAL);
            loop {
                std::thread::sleep(INTERVAL);
                if off.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(still) = watch.look(Instant::now(), ticks.load(Ordering::Relaxed)) {
                    tracing::error!(
                        role,
                        stalled_s = still.as_secs(),
                        "the async runtime has run nothing for {}s (a task that never yields?); \
                         exiting so that the {role} is restarted",
                        still.as_secs()
                    );
                    eprintln!(
                        "error: the {role}'s async runtime stalled for {}s; exiting (status 70)",
                        still.as_secs()
                    );
                    std::process::exit(70);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the runtime watchdog; running without it");
    }
    watching
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_runtime_that_ticks_is_never_stalled() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, 30 * S, S);
        for i in 1..200u32 {
            assert_eq!(w.look(t0 + i * S, u64::from(i)), None);
        }
    }

    #[test]
    fn a_runtime_that_stops_ticking_is_stalled_after_the_limit() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, 30 * S, S);
        assert_eq!(w.look(t0 + S, 1), None);
        for i in 2..31u32 {
            assert_eq!(w.look(t0 + i * S, 1), None, "{i}");
        }
        assert_eq!(w.look(t0 + 31 * S, 1), Some(30 * S));
        // A tick clears it.
        assert_eq!(w.look(t0 + 32 * S, 2), None);
    }

    #[test]
    fn a_stopped_process_is_not_a_stall() {
        let t0 = Instant::now();
        let mut w = Watch::new(t0, 30 * S, S);
        assert_eq!(w.look(t0 + S, 1), None);
        // SIGSTOP for two minutes: the watcher wakes first and sees no tick since.
        assert_eq!(w.look(t0 + 121 * S, 1), None);
        // The runtime resumes within the limit.
        assert_eq!(w.look(t0 + 122 * S, 1), None);
        assert_eq!(w.look(t0 + 123 * S, 2), None);
        // But a runtime that stays stuck after the pause is found, counted from the resume.
        for i in 124..153u32 {
            assert_eq!(w.look(t0 + i * S, 2), None, "{i}");
        }
        assert_eq!(w.look(t0 + 153 * S, 2), Some(30 * S));
    }
}
