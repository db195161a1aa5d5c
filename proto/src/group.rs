//! The master group as its callers see it: why a call to it failed, the consistency a query
//! asks for, and [`Leader`], which sends a call to the group's leader, following the hints
//! followers give and trying other masters while there is none. The master client
//! (`cairn-client`) and the chunkservers' heartbeats both call through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Client, Rpc};

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

    /// Call a leader-only method `R`, following leader hints and trying other masters while
    /// there is no leader (up to `patience`).
    pub async fn call<R, T>(&self, req: &R::Request) -> Result<T, ProposeError>
    where
        R: Rpc<Response = Result<T, ProposeError>>,
    {
        if self.masters.is_empty() {
            return Err(ProposeError::Failed("no masters configured".into()));
        }
        let deadline = tokio::time::Instant::now() + self.patience;
        // Past the deadline, a master that names the leader still gets the call sent there
        // once: the time went on an unreachable master, and the leader is one step away.
        let mut last_chance = false;
        loop {
            let Some(target) = self.target() else {
                return Err(ProposeError::Failed("no masters configured".into()));
            };
            let late = tokio::time::Instant::now() >= deadline;
            match self.client.call::<R>(target, req).await {
                Ok(Ok(v)) => {
                    self.found(target);
                    return Ok(v);
                }
                Ok(Err(ProposeError::NotLeader { leader })) => {
                    let hint = self.follow(leader.as_ref());
                    if late && (last_chance || hint.is_none()) {
                        return Err(ProposeError::NotLeader { leader });
                    }
                    last_chance |= late;
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Ok(Err(ProposeError::Unavailable(_))) if !late => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) if e.is_retryable() && !late => self.forget(),
                Err(e) => {
                    // An unreachable leader is not tried first again by the next call.
                    if e.is_retryable() {
                        self.forget();
                    }
                    return Err(ProposeError::Failed(e.to_string()));
                }
            }
        }
    }
}
