//! The leader search as pure logic: which masters a call goes to, and when, given the answers
//! so far and the time. No sockets and no clock of its own: [`Leader`](crate::Leader) drives it
//! with real calls, and unit tests drive it with a virtual clock.
//!
//! The rules:
//! - A call goes first to the leader last seen (or the next master in turn).
//! - A master that names another as leader sends the call there at once.
//! - A call that has not been answered within `suspect_after` makes its master a suspect (dead,
//!   or cut off). While every call in flight is with a suspect, every other master is asked too:
//!   a follower answers at once, naming the leader it knows. A follower that still names the
//!   suspect (its election timeout has not run out) is asked again after `recheck`; one that
//!   knows no leader (an election is running) after `pause`. So a new leader is found within
//!   one recheck of the first follower learning of it, not after a timeout on a dead address.
//! - An unreachable master rests `unreachable_pause` before it is tried again.
//! - At the deadline the search gives up, except that a hint to a master not yet tried is still
//!   followed once: the leader is one step away.
//!
//! Sending a call to two masters is safe: only a leader carries it out, and a proposal carried
//! out twice (an old leader's entry that commits after all, and the retry) applies once (the
//! state machine remembers each proposal's outcome).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The timings of a leader search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchTimes {
    /// How long to keep looking (elections take a second or two).
    pub patience: Duration,
    /// A call unanswered this long makes its master a suspect: the others are asked too.
    pub suspect_after: Duration,
    /// How soon a master that knew no leader is asked again.
    pub pause: Duration,
    /// How soon a master that named a suspect as leader is asked again.
    pub recheck: Duration,
    /// How soon an unreachable master is tried again.
    pub unreachable_pause: Duration,
}

impl Default for SearchTimes {
    fn default() -> Self {
        SearchTimes {
            patience: Duration::from_secs(20),
            suspect_after: Duration::from_millis(400),
            pause: Duration::from_millis(100),
            recheck: Duration::from_millis(150),
            unreachable_pause: Duration::from_secs(1),
        }
    }
}

/// What a master answered, other than success (which ends the search).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not the leader; the leader it knows, if any.
    NotLeader(Option<SocketAddr>),
    /// The leader, but it cannot serve right now (no quorum answered).
    Busy(String),
    /// The call failed on the way (no connection, a timeout, a lost connection).
    Unreachable(String),
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Move {
    /// Send the call to this master.
    Send(SocketAddr),
    /// Look again at this time (or as soon as an answer arrives).
    Wait(Instant),
    /// Stop: no leader answered in time; why.
    GiveUp(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    /// Not asked, or its rest is over.
    Idle,
    InFlight {
        since: Instant,
    },
    Resting {
        until: Instant,
    },
}

/// One call's search for the leader.
#[derive(Debug)]
pub struct Search {
    times: SearchTimes,
    deadline: Instant,
    /// Every master known, in the order given (hinted ones are added).
    order: Vec<SocketAddr>,
    asks: HashMap<SocketAddr, Ask>,
    suspects: Vec<SocketAddr>,
    /// Masters to send to at the next move (the first one, hinted leaders).
    now: Vec<SocketAddr>,
    /// Masters sent to so far.
    sent: Vec<SocketAddr>,
    /// Masters sent to past the deadline (on a hint).
    late: Vec<SocketAddr>,
    last: Option<String>,
}

impl Search {
    /// A search starting with `first`, among `masters`, at `now`.
    pub fn new(
        masters: &[SocketAddr],
        first: SocketAddr,
        now: Instant,
        times: SearchTimes,
    ) -> Search {
        let mut order = masters.to_vec();
        if !order.contains(&first) {
            order.insert(0, first);
        }
        Search {
            times,
            deadline: now + times.patience,
            asks: order.iter().map(|a| (*a, Ask::Idle)).collect(),
            order,
            suspects: Vec::new(),
            now: vec![first],
            sent: Vec::new(),
            late: Vec::new(),
            last: None,
        }
    }

    /// The moves to make now: masters to send to, then when to look again (or give up).
    pub fn next(&mut self, now: Instant) -> Vec<Move> {
        for addr in &self.order {
            let ask = self.asks.entry(*addr).or_insert(Ask::Idle);
            match *ask {
                Ask::InFlight { since }
                    if now >= since + self.times.suspect_after && !self.suspects.contains(addr) =>
                {
                    self.suspects.push(*addr);
                }
                Ask::Resting { until } if now >= until => *ask = Ask::Idle,
                _ => {}
            }
        }
        let mut sends: Vec<SocketAddr> = std::mem::take(&mut self.now);
        let not_in_flight =
            |a: &SocketAddr| !matches!(self.asks.get(a), Some(Ask::InFlight { .. }));
        sends.retain(not_in_flight);
        let late = now >= self.deadline;
        if late {
            // Only hints to masters not asked yet are followed now.
            sends.retain(|a| !self.sent.contains(a));
            self.late.extend(&sends);
        } else {
            let healthy_in_flight = self.order.iter().any(|a| {
                matches!(self.asks.get(a), Some(Ask::InFlight { .. })) && !self.suspects.contains(a)
            });
            if !healthy_in_flight && sends.is_empty() {
                sends.extend(
                    self.order
                        .iter()
                        .filter(|a| self.asks.get(a) == Some(&Ask::Idle)),
                );
            }
        }
        sends.dedup();
        for a in &sends {
            self.asks.insert(*a, Ask::InFlight { since: now });
            if !self.sent.contains(a) {
                self.sent.push(*a);
            }
        }
        let in_flight = self
            .asks
            .values()
            .any(|a| matches!(a, Ask::InFlight { .. }));
        let mut moves: Vec<Move> = sends.into_iter().map(Move::Send).collect();
        let late_in_flight = self
            .late
            .iter()
            .any(|a| matches!(self.asks.get(a), Some(Ask::InFlight { .. })));
        if late && moves.is_empty() && !late_in_flight {
            moves.push(Move::GiveUp(self.why(in_flight)));
            return moves;
        }
        let mut wake = if late { None } else { Some(self.deadline) };
        for (addr, ask) in &self.asks {
            let at = match *ask {
                Ask::InFlight { since } if !self.suspects.contains(addr) => {
                    since + self.times.suspect_after
                }
                Ask::Resting { until } => until,
                _ => continue,
            };
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        // Past the deadline with a hinted call in flight: its answer is what is awaited.
        moves.push(Move::Wait(wake.unwrap_or(now + self.times.suspect_after)));
        moves
    }

    /// `addr` answered `answer` at `now`.
    pub fn answered(&mut self, now: Instant, addr: SocketAddr, answer: Answer) {
        match answer {
            Answer::NotLeader(hint) => {
                self.suspects.retain(|a| *a != addr);
                let rest = match hint {
                    Some(leader) if leader != addr => {
                        if !self.asks.contains_key(&leader) {
                            self.order.push(leader);
                            self.asks.insert(leader, Ask::Idle);
                        }
                        // A hint is news: it ends a rest, unless that master is a suspect
                        // (followers name a dead leader until their election timeout).
                        let ask = self.asks.get(&leader).copied();
                        let resting_ok = matches!(ask, Some(Ask::Resting { .. }))
                            && !self.suspects.contains(&leader);
                        if ask == Some(Ask::Idle) || resting_ok {
                            self.now.push(leader);
                        }
                        self.last = Some(format!("{addr} names {leader} as the leader"));
                        self.times.recheck
                    }
                    _ => {
                        self.last =
                            Some(format!("{addr} knows no leader (an election is running)"));
                        self.times.pause
                    }
                };
                self.asks.insert(addr, Ask::Resting { until: now + rest });
            }
            Answer::Busy(why) => {
                self.suspects.retain(|a| *a != addr);
                self.last = Some(format!("{addr}: {why}"));
                self.asks.insert(
                    addr,
                    Ask::Resting {
                        until: now + self.times.pause,
                    },
                );
            }
            Answer::Unreachable(why) => {
                if !self.suspects.contains(&addr) {
                    self.suspects.push(addr);
                }
                self.last = Some(format!("{addr}: {why}"));
                self.asks.insert(
                    addr,
                    Ask::Resting {
                        until: now + self.times.unreachable_pause,
                    },
                );
            }
        }
    }

    fn why(&self, in_flight: bool) -> String {
        let waited = self.times.patience.as_secs_f64();
        match (&self.last, in_flight) {
            (Some(last), _) => format!("no master led within {waited:.1} s (last: {last})"),
            (None, true) => format!("no master answered within {waited:.1} s"),
            (None, false) => format!("no master led within {waited:.1} s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n as u8], 7070))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The sends among `moves`.
    fn sends(moves: &[Move]) -> Vec<SocketAddr> {
        moves
            .iter()
            .filter_map(|m| match m {
                Move::Send(a) => Some(*a),
                _ => None,
            })
            .collect()
    }

    fn wait(moves: &[Move]) -> Option<Instant> {
        moves.iter().find_map(|m| match m {
            Move::Wait(t) => Some(*t),
            _ => None,
        })
    }

    /// The leader is dead: its call hangs. After `suspect_after` the two followers are asked;
    /// while they still name the dead leader they are asked again every recheck, and the first
    /// one that names the new leader sends the call there. Nothing waits on the dead address's
    /// timeout.
    #[test]
    fn a_dead_leader_is_left_as_soon_as_a_follower_names_the_new_one() {
        let t0 = Instant::now();
        let times = SearchTimes::default();
        let masters = [addr(1), addr(2), addr(3)];
        let mut s = Search::new(&masters, addr(1), t0, times);
        let m = s.next(t0);
        assert_eq!(sends(&m), vec![addr(1)]);
        assert_eq!(wait(&m), Some(t0 + times.suspect_after));

        // Nothing happens before the suspicion.
        let m = s.next(t0 + ms(100));
        assert!(sends(&m).is_empty());

        let t1 = t0 + times.suspect_after;
        let m = s.next(t1);
        assert_eq!(sends(&m), vec![addr(2), addr(3)]);
        // The followers' election timeouts have not run out: they still name the dead leader.
        s.answered(t1 + ms(1), addr(2), Answer::NotLeader(Some(addr(1))));
        s.answered(t1 + ms(1), addr(3), Answer::NotLeader(Some(addr(1))));
        let m = s.next(t1 + ms(1));
        assert!(sends(&m).is_empty(), "{m:?}");
        assert_eq!(wait(&m), Some(t1 + ms(1) + times.recheck));

        // Rechecked: an election is running on one, the other already knows the winner.
        let t2 = t1 + ms(1) + times.recheck;
        let m = s.next(t2);
        assert_eq!(sends(&m), vec![addr(2), addr(3)]);
        s.answered(t2 + ms(1), addr(2), Answer::NotLeader(None));
        s.answered(t2 + ms(1), addr(3), Answer::NotLeader(Some(addr(2))));
        // addr(2) is resting after its "no leader" answer, but the hint is news: it goes now.
        let m = s.next(t2 + ms(1));
        assert_eq!(sends(&m), vec![addr(2)]);
        // The dead leader is never sent to again meanwhile: it is still in flight.
        assert!(!s.next(t2 + ms(2)).contains(&Move::Send(addr(1))));
    }

    /// A follower's hint is followed at once, without any suspicion or timeout.
    #[test]
    fn a_hint_is_followed_at_once() {
        let t0 = Instant::now();
        let mut s = Search::new(
            &[addr(1), addr(2), addr(3)],
            addr(2),
            t0,
            SearchTimes::default(),
        );
        assert_eq!(sends(&s.next(t0)), vec![addr(2)]);
        s.answered(t0 + ms(2), addr(2), Answer::NotLeader(Some(addr(3))));
        assert_eq!(sends(&s.next(t0 + ms(2))), vec![addr(3)]);
        // A leader known by address only (not in the configured list) is followed too.
        s.answered(t0 + ms(4), addr(3), Answer::NotLeader(Some(addr(9))));
        assert_eq!(sends(&s.next(t0 + ms(4))), vec![addr(9)]);
    }

    /// Every master is slow: each is asked once, then nothing is sent again until the patience
    /// runs out and the search gives up, saying so. No master is flooded.
    #[test]
    fn all_masters_slow_gives_up_at_the_deadline() {
        let t0 = Instant::now();
        let times = SearchTimes::default();
        let masters = [addr(1), addr(2), addr(3)];
        let mut s = Search::new(&masters, addr(1), t0, times);
        let mut sent = sends(&s.next(t0));
        let mut t = t0;
        let mut gave_up = None;
        while t < t0 + times.patience + ms(1) {
            t += ms(50);
            let m = s.next(t);
            sent.extend(sends(&m));
            if let Some(Move::GiveUp(why)) = m.last() {
                gave_up = Some((t, why.clone()));
                break;
            }
        }
        assert_eq!(sent, vec![addr(1), addr(2), addr(3)]);
        let (at, why) = gave_up.expect("the search gives up");
        assert!(at >= t0 + times.patience && at < t0 + times.patience + ms(100));
        assert!(why.contains("no master answered"), "{why}");
    }

    /// An unreachable master (its connection refused or timed out) is left for the others at
    /// once and tried again only after its pause; the leader the others name gets the call.
    #[test]
    fn an_unreachable_master_is_skipped_and_retried_later() {
        let t0 = Instant::now();
        let times = SearchTimes::default();
        let mut s = Search::new(&[addr(1), addr(2)], addr(1), t0, times);
        s.next(t0);
        s.answered(
            t0 + ms(3),
            addr(1),
            Answer::Unreachable("connection refused".into()),
        );
        let m = s.next(t0 + ms(3));
        assert_eq!(sends(&m), vec![addr(2)]);
        s.answered(t0 + ms(5), addr(2), Answer::NotLeader(None));
        // addr(1) rests a whole second; addr(2) is asked again after a pause.
        let m = s.next(t0 + ms(5) + times.pause);
        assert_eq!(sends(&m), vec![addr(2)]);
        s.answered(t0 + ms(200), addr(2), Answer::Busy("no quorum".into()));
        let m = s.next(t0 + ms(3) + times.unreachable_pause);
        assert_eq!(sends(&m), vec![addr(1), addr(2)]);
    }

    /// Past the deadline a hint to a master not asked yet is still followed, once; then the
    /// search gives up with the last thing it learned.
    #[test]
    fn a_late_hint_is_followed_once() {
        let t0 = Instant::now();
        let times = SearchTimes {
            patience: ms(300),
            ..SearchTimes::default()
        };
        let mut s = Search::new(&[addr(1), addr(2), addr(3)], addr(1), t0, times);
        s.next(t0);
        s.answered(t0 + ms(350), addr(1), Answer::NotLeader(Some(addr(3))));
        let m = s.next(t0 + ms(350));
        assert_eq!(sends(&m), vec![addr(3)]);
        s.answered(t0 + ms(360), addr(3), Answer::NotLeader(Some(addr(1))));
        let m = s.next(t0 + ms(360));
        match m.last() {
            Some(Move::GiveUp(why)) => assert!(why.contains("names"), "{why}"),
            other => panic!("expected to give up, got {other:?}"),
        }
    }
}
