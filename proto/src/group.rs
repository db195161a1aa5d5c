//! The master group as its callers see it: why a call to it failed, the consistency a query
//! asks for, and [`Leader`], which sends a call to the group's leader, following the hints
//! followers give and trying other masters while there is none. The master client
//! (`cairn-client`) and the chunkservers' heartbeats both call through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::search::{Answer, Move, Search, SearchTimes};
use crate::{Client, Rpc, RpcError};

/// A master's id in the Raft group.
pub type NodeId = u64;

/// Why a proposal or a linearizable query did not go through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader; the leader is {leader:?}")]
    NotLeader { leader: Option<(NodeId, String)> },
    /// Transient: no quorum answered right now (an election or a slow peer); retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
    /// The leader answered and cannot do it right now (too few live chunkservers for a write):
    /// asking another master will not help; retry later (a 503 with `Retry-After`).
    #[error("{0}")]
    TryLater(String),
}

/// A query's consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Confirmed with a quorum (openraft read-index) before reading: sees every write
    /// acknowledged before the query started.
    Linearizable,
    /// Read this node's state as it is (may lag the leader).
    Stale,
}

/// Finds and follows the leader of a master group.
#[derive(Clone, Debug)]
pub struct Leader {
    client: Client,
    masters: Vec<SocketAddr>,
    leader: Arc<parking_lot::Mutex<Option<SocketAddr>>>,
    /// Where the search for a leader starts when none is known: it moves on with every try,
    /// across calls, so an unreachable master early in the list is not tried first each time.
    rotation: Arc<AtomicUsize>,
    /// How long to keep looking for a leader (elections take seconds).
    pub patience: Duration,
}

impl Leader {
    pub fn new(client: Client, masters: Vec<SocketAddr>) -> Leader {
        Leader {
            client,
            masters,
            leader: Arc::new(parking_lot::Mutex::new(None)),
            rotation: Arc::new(AtomicUsize::new(0)),
            patience: Duration::from_secs(20),
        }
    }

    /// The RPC client calls go through (shared connections).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The masters this caller knows.
    pub fn masters(&self) -> &[SocketAddr] {
        &self.masters
    }

    /// The master to try next: the leader last seen or hinted, else the next in turn.
    /// `None` when no masters are configured.
    pub fn target(&self) -> Option<SocketAddr> {
        if let Some(l) = *self.leader.lock() {
            return Some(l);
        }
        if self.masters.is_empty() {
            return None;
        }
        let i = self.rotation.fetch_add(1, Ordering::Relaxed);
        Some(self.masters[i % self.masters.len()])
    }

    /// Remember the leader a master named (or forget it: `None` while an election runs).
    pub fn follow(&self, leader: Option<&(NodeId, String)>) -> Option<SocketAddr> {
        let hint = leader.and_then(|(_, a)| a.parse().ok());
        *self.leader.lock() = hint;
        hint
    }

    /// `addr` answered as the leader.
    pub fn found(&self, addr: SocketAddr) {
        *self.leader.lock() = Some(addr);
    }

    /// Forget the leader (it did not answer): the next call searches again.
    pub fn forget(&self) {
        *self.leader.lock() = None;
    }

    /// Whether a leader is known right now.
    pub fn known(&self) -> bool {
        self.leader.lock().is_some()
    }

    /// The timings of this caller's leader searches.
    pub fn times(&self) -> SearchTimes {
        SearchTimes {
            patience: self.patience,
            ..SearchTimes::default()
        }
    }

    /// Call a leader-only method `R`, following leader hints and asking other masters while
    /// the leader does not answer (up to `patience`; see [`crate::search`]).
    pub async fn call<R, T>(&self, req: &R::Request) -> Result<T, ProposeError>
    where
        R: Rpc<Response = Result<T, ProposeError>>,
    {
        self.search(|addr| {
            let client = self.client.clone();
            async move { Reply::from_call(client.call::<R>(addr, req).await) }
        })
        .await
    }

    /// Run one leader search: `send` makes the call to one master and says what came back.
    /// Calls may go to several masters at once; the first success wins and the leader is
    /// remembered for the next search. Giving up is [`ProposeError::Unavailable`] (retry later).
    pub async fn search<T, F, Fut>(&self, mut send: F) -> Result<T, ProposeError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = Reply<T>>,
    {
        use futures::StreamExt;
        let Some(first) = self.target() else {
            return Err(ProposeError::Failed("no masters configured".into()));
        };
        let mut search = Search::new(
            &self.masters,
            first,
            tokio::time::Instant::now().into_std(),
            self.times(),
        );
        let mut calls = futures::stream::FuturesUnordered::new();
        loop {
            let mut wake = None;
            for m in search.next(tokio::time::Instant::now().into_std()) {
                match m {
                    Move::Send(addr) => {
                        let call = send(addr);
                        calls.push(async move { (addr, call.await) });
                    }
                    Move::Wait(at) => wake = Some(tokio::time::Instant::from_std(at)),
                    Move::GiveUp(why) => {
                        self.forget();
                        return Err(ProposeError::Unavailable(why));
                    }
                }
            }
            let wake = wake.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                Some((addr, reply)) = calls.next(), if !calls.is_empty() => {
                    let now = tokio::time::Instant::now().into_std();
                    match reply {
                        Reply::Done(v) => {
                            self.found(addr);
                            return Ok(v);
                        }
                        Reply::Fatal(e) => return Err(e),
                        Reply::NotLeader(hint) => search.answered(now, addr, Answer::NotLeader(hint)),
                        Reply::Busy(why) => search.answered(now, addr, Answer::Busy(why)),
                        Reply::Unreachable(why) => {
                            search.answered(now, addr, Answer::Unreachable(why))
                        }
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// What one master's answer to a call means for a leader search.
#[derive(Debug)]
pub enum Reply<T> {
    /// The leader answered: the search is over.
    Done(T),
    /// Not the leader; the leader's address, if it knows one.
    NotLeader(Option<SocketAddr>),
    /// The leader cannot serve right now.
    Busy(String),
    /// The call did not get through.
    Unreachable(String),
    /// An answer no other master would change (a refusal, a bad request).
    Fatal(ProposeError),
}

impl<T> Reply<T> {
    /// Classify the result of a leader-only call.
    pub fn from_call(result: Result<Result<T, ProposeError>, RpcError>) -> Reply<T> {
        match result {
            Ok(Ok(v)) => Reply::Done(v),
            Ok(Err(e)) => Reply::from_refusal(e),
            Err(e) => Reply::from_rpc(e),
        }
    }

    /// Classify a master's refusal.
    pub fn from_refusal(e: ProposeError) -> Reply<T> {
        match e {
            ProposeError::NotLeader { leader } => {
                Reply::NotLeader(leader.and_then(|(_, a)| a.parse().ok()))
            }
            ProposeError::Unavailable(why) => Reply::Busy(why),
            e @ (ProposeError::Failed(_) | ProposeError::TryLater(_)) => Reply::Fatal(e),
        }
    }

    /// Classify a failed call.
    pub fn from_rpc(e: RpcError) -> Reply<T> {
        if e.is_retryable() {
            Reply::Unreachable(e.to_string())
        } else {
            Reply::Fatal(ProposeError::Failed(e.to_string()))
        }
    }
}
