//! Pacing of replica copies into this chunkserver: a shared schedule of when the next bytes
//! may be copied, at one rate while clients are reading or writing here and another while
//! they are not, so repair takes what the disk and network give when foreground traffic is
//! idle and yields to it under load. Pure (the caller passes the time), tested on a virtual
//! clock.

use std::time::{Duration, Instant};

/// How fast copies may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyRates {
    /// Bytes per second while no client transfer is running here; 0: as fast as they go.
    pub idle: u64,
    /// Bytes per second while client reads or writes are running here; 0: as fast as they go.
    pub busy: u64,
}

impl Default for CopyRates {
    fn default() -> Self {
        CopyRates {
            idle: 0,
            busy: 32 << 20,
        }
    }
}

/// One schedule for every copy running into this server (the rate is the server's, not each
/// copy's). A virtual-scheduling token bucket: each piece books the next free slot, and the
/// bucket does not fill while unused (a burst after a pause is one piece, not a second's worth).
#[derive(Debug, Default)]
pub struct Pacer {
    /// When the bytes booked so far will have gone at the rate they were booked at.
    next: Option<Instant>,
}

impl Pacer {
    /// Book `bytes` at `rate` bytes per second (0: unlimited) at `now`; returns how long to
    /// wait before copying them.
    pub fn book(&mut self, now: Instant, bytes: u64, rate: u64) -> Duration {
        if rate == 0 {
            self.next = None;
            return Duration::ZERO;
        }
        let start = self.next.filter(|n| *n > now).unwrap_or(now);
        let takes = Duration::from_secs_f64(bytes as f64 / rate as f64);
        self.next = Some(start + takes);
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Pieces booked back to back wait their turn at the rate: 10 MiB at 4 MiB/s take 2.5 s
    /// beyond the first piece's.
    #[test]
    fn pieces_wait_their_turn_at_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        let waits: Vec<Duration> = (0..10).map(|_| p.book(t0, MIB, 4 * MIB)).collect();
        assert_eq!(waits[0], Duration::ZERO);
        assert_eq!(waits[1], Duration::from_millis(250));
        assert_eq!(waits[9], Duration::from_millis(2250));
    }

    /// Two copies share the server's rate: their pieces interleave in one schedule.
    #[test]
    fn concurrent_copies_share_one_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        let a = p.book(t0, MIB, 2 * MIB);
        let b = p.book(t0, MIB, 2 * MIB);
        let a2 = p.book(t0, MIB, 2 * MIB);
        assert_eq!(
            (a, b, a2),
            (
                Duration::ZERO,
                Duration::from_millis(500),
                Duration::from_millis(1000)
            )
        );
    }

    /// An idle pacer stores no burst; unlimited means no wait and forgets the schedule.
    #[test]
    fn no_burst_after_a_pause_and_no_wait_when_unlimited() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        p.book(t0, MIB, MIB);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(p.book(later, MIB, MIB), Duration::ZERO);
        assert_eq!(p.book(later, MIB, MIB), Duration::from_secs(1));
        assert_eq!(p.book(later, 64 * MIB, 0), Duration::ZERO);
        assert_eq!(p.book(later, MIB, MIB), Duration::ZERO);
    }

    /// Switching to the busy rate slows the next pieces at once.
    #[test]
    fn the_busy_rate_takes_over_from_the_next_piece() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        let rates = CopyRates {
            idle: 100 * MIB,
            busy: MIB,
        };
        assert_eq!(p.book(t0, MIB, rates.idle), Duration::ZERO);
        assert_eq!(p.book(t0, MIB, rates.busy), Duration::from_millis(10));
        assert_eq!(p.book(t0, MIB, rates.busy), Duration::from_millis(1010));
    }
}
