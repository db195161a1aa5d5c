//! A master node: the stores, openraft, and the RPCs peers and clients call, on one QUIC
//! endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::state::{Outcome, Registry, ServiceId, StateError, StateStore};
use cairn_engine::wire::WireOutcome;
use cairn_proto::{
    Consistency, NodeIdentity, ProposeError, RemoteError as WireError, Router, ServeOptions,
    TransportOptions,
};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};

use crate::batch::{GROUPS_IN_FLIGHT, WAITING_MAX, Waiting, run_groups};
use crate::log_store::LogStore;
use crate::network::{self, Network};
use crate::rpc::{
    AdminRequest, AdminRpc, ClientRequest, ClientRpc, ManyCommands, NodeStatus, ProposeManyRpc,
    StatusRpc,
};
use crate::state_machine::StateMachine;
use crate::types::{NodeId, Proposal, Raft};

/// Raft timing and compaction.
#[derive(Clone, Copy, Debug)]
pub struct RaftOptions {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and allow purging the log) after this many entries.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, for followers that are only a little behind.
    pub entries_kept_after_snapshot: u64,
    /// Size of the pieces a snapshot is streamed in.
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            // LAN timings. openraft elects after the leader lease (the maximum) plus the
            // node's timeout: a dead leader is replaced after 0.75-1 s of silence, while
            // seven heartbeats in a row must be lost before a live one is.
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(250),
            election_timeout_max: Duration::from_millis(500),
            snapshot_after_entries: 10_000,
            entries_kept_after_snapshot: 1_000,
            snapshot_chunk_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Endpoint(#[from] cairn_proto::EndpointError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("raft log store: {0}")]
    Log(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// Groups concurrent client commands into log entries (group commit above openraft, which
/// appends, commits and applies entry by entry).
async fn group_commit(raft: Raft, queue: tokio::sync::mpsc::Receiver<Waiting>) {
    run_groups(queue, GROUPS_IN_FLIGHT, move |group| {
        let raft = raft.clone();
        async move {
            let (commands, waiters): (Vec<Vec<u8>>, Vec<_>) = group.into_iter().unzip();
            let result = raft.client_write(Proposal(commands)).await;
            match result {
                Ok(r) => {
                    let mut outcomes = r.data.0.into_iter();
                    for w in waiters {
                        let o = outcomes.next().ok_or_else(|| {
                            ProposeError::Failed(
                                "the state machine returned too few outcomes".into(),
                            )
                        });
                        let _ = w.send(o);
                    }
                }
                Err(e) => {
                    let err = not_leader(&e).unwrap_or_else(|| ProposeError::Failed(e.to_string()));
                    for w in waiters {
                        let _ = w.send(Err(err.clone()));
                    }
                }
            }
        }
    })
    .await;
}

/// A running master node.
#[derive(Clone)]
pub struct RaftNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub raft: Raft,
    pub state: StateMachine,
    pub log: LogStore,
    registry: Arc<Registry>,
    endpoint: quinn::Endpoint,
    commands: tokio::sync::mpsc::Sender<Waiting>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The leader hint a follower answers with.
fn forward(f: &openraft::error::ForwardToLeader<NodeId, BasicNode>) -> ProposeError {
    ProposeError::NotLeader {
        leader: f
            .leader_id
            .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
    }
}

/// How long a membership change waits for the previous one to be committed.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(10);

/// Whether a membership change was refused because another is still being committed.
fn change_in_progress(e: &RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> bool {
    matches!(
        e.api_error(),
        Some(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_)
        ))
    )
}

fn not_leader(e: &RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Option<ProposeError> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Some(forward(f)),
        _ => None,
    }
}

impl RaftNode {
    /// Open the stores in `data`, start openraft, and serve on `listen` (QUIC, mutual TLS).
    /// `registry` builds the services (called twice: one registry applies, one answers queries).
    pub async fn start(
        id: NodeId,
        data: &Path,
        listen: SocketAddr,
        identity: &NodeIdentity,
        registry: impl Fn() -> Result<Registry, StateError>,
        options: RaftOptions,
    ) -> Result<RaftNode, NodeError> {
        Self::start_with_routes(id, data, listen, identity, registry, options, |_, r| r).await
    }

    /// [`RaftNode::start`], also serving the routes `extra` adds (services that run beside
    /// the log on the same endpoint, such as the data plane).
    pub async fn start_with_routes(
        id: NodeId,
        data: &Path,
        listen: SocketAddr,
        identity: &NodeIdentity,
        registry: impl Fn() -> Result<Registry, StateError>,
        options: RaftOptions,
        extra: impl FnOnce(&RaftNode, Router) -> Router,
    ) -> Result<RaftNode, NodeError> {
        let endpoint = cairn_proto::endpoint(listen, identity, &TransportOptions::default())?;
        let addr = endpoint
            .local_addr()
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        std::fs::create_dir_all(data)
            .map_err(|e| NodeError::Log(format!("create {}: {e}", data.display())))?;
        let log = LogStore::open(&data.join("raft-log.redb"))
            .map_err(|e| NodeError::Log(e.to_string()))?;
        let store = StateStore::open(data.join("state.redb"))?;
        let applying = registry()?;
        applying.init(&store)?;
        let state = StateMachine::new(store, applying)?;
        let config = Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: options.heartbeat.as_millis() as u64,
            election_timeout_min: options.election_timeout_min.as_millis() as u64,
            election_timeout_max: options.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_after_entries),
            max_in_snapshot_log_to_keep: options.entries_kept_after_snapshot,
            snapshot_max_chunk_size: options.snapshot_chunk_bytes,
            ..Config::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let raft = Raft::new(
            id,
            Arc::new(config),
            Network::new(endpoint.clone()),
            log.clone(),
            state.clone(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let (commands, queue) = tokio::sync::mpsc::channel(WAITING_MAX);
        tokio::spawn(group_commit(raft.clone(), queue));
        let node = RaftNode {
            commands,
            id,
            addr,
            raft: raft.clone(),
            state,
            log,
            registry: Arc::new(registry()?),
            endpoint: endpoint.clone(),
        };
        let router = extra(&node, node.routes(network::routes(Router::new(), raft)));
        tokio::spawn(cairn_proto::serve(
            endpoint,
            router,
            ServeOptions::default(),
        ));
        Ok(node)
    }

    fn routes(&self, router: Router) -> Router {
        let (a, b, c, d) = (self.clone(), self.clone(), self.clone(), self.clone());
        router
            .route::<ProposeManyRpc, _, _>(move |commands: ManyCommands| {
                let node = d.clone();
                async move {
                    let results = node.propose_many(commands.0).await;
                    Ok::<_, WireError>(results.into_iter().map(|r| r.map(WireOutcome)).collect())
                }
            })
            .route::<ClientRpc, _, _>(move |req| {
                let node = a.clone();
                async move { Ok::<_, WireError>(node.handle(req).await.map(WireOutcome)) }
            })
            .route::<StatusRpc, _, _>(move |()| {
                let node = b.clone();
                async move { Ok::<_, WireError>(node.status()) }
            })
            .route::<AdminRpc, _, _>(move |req| {
                let node = c.clone();
                async move { Ok::<_, WireError>(node.admin(req).await) }
            })
    }

    /// Make this node a one-node cluster if no cluster state exists yet (first start).
    pub async fn initialize_if_new(&self) -> Result<bool, NodeError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
        {
            return Ok(false);
        }
        let members = BTreeMap::from([(self.id, BasicNode::new(self.addr.to_string()))]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        Ok(true)
    }

    /// Commit one command envelope on this node (it must be the leader) and return the
    /// service's outcome. Concurrent commands are committed together in one log entry.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Outcome, ProposeError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.commands
            .send((command, done))
            .await
            .map_err(|_| ProposeError::Failed("node is shutting down".into()))?;
        outcome
            .await
            .map_err(|_| ProposeError::Failed("node is shutting down".into()))?
    }

    /// Confirm with a quorum, now, that this node leads (a read-index round); returns the
    /// term it leads in. A deposed leader that has not heard of its successor yet fails here:
    /// the other masters refuse its term.
    pub async fn confirm_leadership(&self) -> Result<u64, ProposeError> {
        self.raft.ensure_linearizable().await.map_err(|e| match e {
            RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)) => {
                forward(&f)
            }
            RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(q)) => {
                ProposeError::Unavailable(q.to_string())
            }
            other => ProposeError::Failed(other.to_string()),
        })?;
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(self.id) {
            Ok(m.current_term)
        } else {
            Err(ProposeError::NotLeader { leader: None })
        }
    }

    /// Answer a query from this node's state, after a read-index round if linearizable.
    pub async fn query(
        &self,
        service: ServiceId,
        payload: Vec<u8>,
        consistency: Consistency,
    ) -> Result<Outcome, ProposeError> {
        if consistency == Consistency::Linearizable {
            self.confirm_leadership().await?;
        }
        // Read in place: a query is one short redb read transaction over (mostly cached)
        // pages, cheaper than the thread hand-off a blocking task would cost per request.
        self.registry
            .query(self.state.store(), service, &payload)
            .map_err(|e| ProposeError::Failed(e.to_string()))
    }

    /// Commit several commands (they join the same group-commit queue); one result each.
    pub async fn propose_many(&self, commands: Vec<Vec<u8>>) -> Vec<Result<Outcome, ProposeError>> {
        let mut waiting = Vec::with_capacity(commands.len());
        for command in commands {
            let (done, outcome) = tokio::sync::oneshot::channel();
            if self.commands.send((command, done)).await.is_err() {
                break;
            }
            waiting.push(outcome);
        }
        let mut results = Vec::with_capacity(waiting.len());
        for w in waiting {
            results.push(
                w.await
                    .unwrap_or_else(|_| Err(ProposeError::Failed("node is shutting down".into()))),
            );
        }
        results
    }

    async fn handle(&self, req: ClientRequest) -> Result<Outcome, ProposeError> {
        match req {
            ClientRequest::Propose(p) => self.propose(p).await,
            ClientRequest::Query {
                service,
                payload,
                consistency,
            } => self.query(service, payload, consistency).await,
        }
    }

    /// A membership change. openraft refuses one while the previous change (two log entries,
    /// through a joint configuration) is still being committed; such a refusal is waited out
    /// for up to [`MEMBERSHIP_WAIT`] here, so that two changes asked back to back (`cairn admin
    /// cluster add-master` run twice) both succeed instead of the second failing at random.
    async fn admin(&self, req: AdminRequest) -> Result<(), ProposeError> {
        let deadline = tokio::time::Instant::now() + MEMBERSHIP_WAIT;
        loop {
            let result = match &req {
                AdminRequest::AddLearner { id, addr } => self
                    .raft
                    .add_learner(*id, BasicNode::new(addr.clone()), true)
                    .await
                    .map(|_| ()),
                AdminRequest::SetVoters(voters) => self
                    .raft
                    .change_membership(voters.clone(), false)
                    .await
                    .map(|_| ()),
            };
            match result {
                Err(e) if change_in_progress(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                r => {
                    return r.map_err(|e| {
                        not_leader(&e).unwrap_or_else(|| ProposeError::Failed(e.to_string()))
                    });
                }
            }
        }
    }

    /// This node's view of itself and the group.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let nodes = membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let replication = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        NodeStatus {
            id: self.id,
            addr: self.addr.to_string(),
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            voters,
            learners,
            nodes,
            replication,
        }
    }

    /// Stop Raft and the endpoint.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(cairn_proto::rpc::CLOSE_SHUTDOWN),
            b"shutdown",
        );
    }
}
